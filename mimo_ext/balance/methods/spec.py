"""What :func:`~mimo_ext.balance.compare`, :func:`~mimo_ext.balance.sweep` and the command line accept as a method:
a registered name, the user's own :class:`~.base.BalanceMethod` subclass or instance, a dotted path to one
(``pkg.mod:Class`` or ``pkg.mod.Class``), or a :class:`MethodSpec` (any of these with options and a label, so that
the same method can run several times with different options in one interleaved call).

Example:
    >>> spec = MethodSpec("mimo", {"gamma": 2.0})
    >>> spec.label, type(spec.build()).__name__
    ('mimo gamma=2', 'Mimo')
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any, Union

from .base import BalanceMethod

__all__ = ["MethodLike", "MethodSpec", "as_spec", "import_method", "parse_method_argument", "registered_methods"]


def registered_methods() -> dict[str, type[BalanceMethod]]:
    from . import METHODS  # the registry lives in the package, which imports this module

    return METHODS


def import_method(path: str) -> type[BalanceMethod] | BalanceMethod:
    """The class (or instance) a dotted path names: ``"pkg.mod:Class"`` (``Class`` may itself be dotted, e.g.
    ``Outer.Inner``) or ``"pkg.mod.Class"``.

    Raises:
        ValueError: the path is malformed, its module cannot be imported, it has no such attribute, or the attribute
            is neither a BalanceMethod subclass nor an instance (the message names the path).
    """
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(
            f"unknown method {path!r}: neither a registered name ({', '.join(registered_methods())}) nor a dotted "
            "path 'pkg.module:Class'"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"method {path!r}: cannot import module {module_name!r}: {e}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"method {path!r}: {getattr(target, '__name__', target)!r} has no attribute {part!r}")
        target = getattr(target, part)
    if not (isinstance(target, BalanceMethod) or (isinstance(target, type) and issubclass(target, BalanceMethod))):
        raise ValueError(
            f"method {path!r} is {target!r}, not a mimo_ext.balance.BalanceMethod subclass or instance"
        )
    return target


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A method with its options and the label its results go under.

    Args:
        method: a registered name (:data:`~mimo_ext.balance.methods.METHODS`), a :class:`BalanceMethod` subclass
            (built with ``options`` for every run), an instance (deep-copied for every run, so that no state
            carries over between runs; ``options`` must then be empty) or a dotted path to either.
        options: keyword arguments of the method's constructor.
        label: the key of its results; default the name (a registered name, or the class's ``name`` attribute,
            or the class name), followed by the options (``"mimo gamma=2 mu=0.05"``) when there are any.
    """

    method: Any
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    label: str | None = None

    def __post_init__(self) -> None:
        resolved = self.resolve()
        if isinstance(resolved, BalanceMethod) and self.options:
            raise ValueError(f"method {self.method!r} is an instance: give options to its class instead")
        if not isinstance(self.options, Mapping):
            raise TypeError(f"options of {self.method!r} must be a dict, got {type(self.options).__name__}")
        if self.label is None:
            object.__setattr__(self, "label", _default_label(self.name, self.options))
        elif not isinstance(self.label, str) or not self.label:
            raise ValueError(f"label must be a non-empty string, got {self.label!r}")

    def resolve(self) -> type[BalanceMethod] | BalanceMethod:
        """The class or instance ``method`` stands for."""
        method = self.method
        if isinstance(method, str):
            found = registered_methods().get(method)
            return found if found is not None else import_method(method)
        if isinstance(method, BalanceMethod) or (isinstance(method, type) and issubclass(method, BalanceMethod)):
            return method
        raise TypeError(
            f"a method must be a registered name, a dotted path, a BalanceMethod subclass or instance, or a "
            f"MethodSpec; got {method!r:.80}"
        )

    @property
    def name(self) -> str:
        """The registered name, or the method's ``name`` attribute, or its class name."""
        if isinstance(self.method, str) and self.method in registered_methods():
            return self.method
        resolved = self.resolve()
        cls = resolved if isinstance(resolved, type) else type(resolved)
        return getattr(cls, "name", None) or cls.__name__

    def build(self, **extra) -> BalanceMethod:
        """A fresh method for one run: the class built with the options (then ``extra``), or a deep copy of the
        instance."""
        resolved = self.resolve()
        if isinstance(resolved, BalanceMethod):
            return copy.deepcopy(resolved)
        return resolved(**{**self.options, **extra})

    def with_options(self, label: str | None = None, **options) -> MethodSpec:
        """The same method with ``options`` over its own (and the given label, or the default one)."""
        return MethodSpec(self.method, {**self.options, **options}, label)


MethodLike = Union[str, type, BalanceMethod, MethodSpec]


def _default_label(name: str, options: Mapping[str, Any]) -> str:
    if not options:
        return name
    parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in options.items()]
    return f"{name} {' '.join(parts)}"


def as_spec(method: MethodLike, options: Mapping[str, Any] | None = None) -> MethodSpec:
    """A :class:`MethodSpec` for anything :func:`compare` accepts as a method; ``options`` (from ``method_options``)
    go over a spec's own and keep its label unless it had none."""
    if isinstance(method, MethodSpec):
        if not options:
            return method
        return MethodSpec(method.method, {**method.options, **options}, method.label)
    spec = MethodSpec(method)
    # A plain entry keeps its plain label (its name) even with method_options, as compare always did.
    return MethodSpec(method, dict(options or {}), spec.label)


def parse_method_argument(text: str) -> MethodSpec:
    """The command line's form of a method: ``NAME`` or ``pkg.mod:Class``, optionally followed by
    ``@key=value,key=value`` options (numbers where they parse as numbers, else strings); the label is the text.

    >>> parse_method_argument("mimo@gamma=2,schedule=increasing").options
    {'gamma': 2, 'schedule': 'increasing'}
    """
    method, sep, rest = text.partition("@")
    options: dict[str, Any] = {}
    if sep:
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.isidentifier() or not value:
                raise ValueError(f"method {text!r}: expected NAME@key=value,key=value, got the item {item!r}")
            if key in options:
                raise ValueError(f"method {text!r}: option {key!r} given twice")
            options[key] = _number_or_text(value)
    return MethodSpec(method, options, text)


def _number_or_text(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value
