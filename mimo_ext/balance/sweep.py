"""``sweep``: one method's results over a grid of its options (e.g. MIMO's ``gamma`` and ``mu``), each setting a
:func:`~mimo_ext.balance.compare` run; and ``pareto_front``: the settings no other setting beats on two measures at
once (say fused accuracy against the weakest modality's probe accuracy).
"""

from __future__ import annotations

import inspect
import itertools
import math
import types
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from .compare import _checked_inputs, compare
from .methods.spec import MethodLike, MethodSpec, as_spec

__all__ = ["DEFAULT_GRID", "pareto_front", "sweep"]

# MIMO's smoothed-max weight and temperature around their defaults (gamma 1, mu 0.1): half, same and double.
DEFAULT_GRID: Mapping[str, Sequence[float]] = types.MappingProxyType({"gamma": (0.5, 1.0, 2.0), "mu": (0.05, 0.1, 0.2)})

# compare's keyword options; its other arguments sweep sets itself (the data, one method, seeds and epochs).
_SET_BY_SWEEP = ("modalities", "labels", "methods", "seeds", "epochs")
_COMPARE_OPTIONS = frozenset(inspect.signature(compare).parameters).difference(_SET_BY_SWEEP)


def _grid_settings(grid: Mapping[str, Sequence]) -> list[dict]:
    """The cartesian product of the grid's lists, one dict per setting: keys in the grid's order, the last key
    varying fastest."""
    if not isinstance(grid, Mapping):
        raise TypeError(f"grid must be a dict of option name -> list of values, got {type(grid).__name__}")
    if not grid:
        raise ValueError("grid must not be empty")
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise TypeError(f"grid[{key!r}] must be a list of values, got {type(values).__name__}")
        if len(values) == 0:
            raise ValueError(f"grid[{key!r}] is empty")
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def _check_compare_options(compare_options: dict) -> None:
    unknown = sorted(set(compare_options) - _COMPARE_OPTIONS)
    if unknown:
        raise TypeError(
            f"sweep got option(s) {unknown} that compare does not take; choose from {sorted(_COMPARE_OPTIONS)}"
        )


def sweep(
    modalities: Sequence[torch.Tensor | np.ndarray],
    labels: torch.Tensor | np.ndarray,
    method: MethodLike = "mimo",
    grid: Mapping[str, Sequence] = DEFAULT_GRID,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 30,
    *,
    baselines: Sequence[MethodLike] = (),
    **compare_options,
) -> list[dict]:
    """Runs ``method`` once per setting of the grid, all settings (and ``baselines``) in one interleaved
    :func:`~mimo_ext.balance.compare` call: for each seed every setting in turn, so that a slow spell of the machine
    falls on all of them alike and their times compare.

    Everything is checked before any training: the inputs as :func:`compare` checks them (and converted once,
    with one warning), the method, the grid (a non-empty dict of non-empty lists), the compare options,
    and every setting, by building the method with it (so a key the method does not take, or a bad value,
    fails with the method's own error).

    Args:
        modalities, labels, seeds, epochs: as for :func:`compare`.
        method: anything :func:`compare` takes as a method: a name from :data:`mimo_ext.balance.methods.METHODS`, a
            :class:`~mimo_ext.balance.BalanceMethod` subclass, a dotted path, or a
            :class:`~mimo_ext.balance.MethodSpec` (whose options are the base of every setting).
        grid: option name -> values. The points are the cartesian product, in the grid's key order with the last
            key varying fastest. Default :data:`DEFAULT_GRID` (MIMO's ``gamma`` x ``mu``, 9 points). Values may be
            anything the method takes (numbers, schedule names such as ``"increasing"``).
        baselines: methods to run in the same interleaved call, for comparison (as :func:`compare`'s ``methods``).
        **compare_options: passed to the :func:`compare` call (``test``, ``batch_size``, ``progress``, ...).
            ``method_options[method]``, if given, is the base that each setting's values override.

    Returns:
        One dict per setting, in grid order: ``method`` (its name); ``params`` (that setting, e.g. ``{"gamma": 0.5,
        "mu": 0.1}``); and every field :func:`compare` returns for the method (``fused_acc``, ``fused_acc_std``,
        ``probe_acc``, ``worst_probe_acc``, ``step_time_s``, ``settings``, ... see its docstring), where
        ``settings["method_options"]`` holds the options the method actually ran with. Then one dict per baseline,
        with ``method`` its label, ``params`` empty and ``baseline`` True.
    """
    _check_compare_options(compare_options)
    modalities, labels, test, converted, present, test_present = _checked_inputs(
        modalities,
        labels,
        compare_options.get("test"),
        compare_options.get("num_classes"),
        task=compare_options.get("task", "classification"),
        present=compare_options.get("present"),
        test_present=compare_options.get("test_present"),
    )
    if converted:
        warnings.warn(converted, stacklevel=2)
    if isinstance(method, str) and ":" not in method and "." not in method:
        from .methods import METHODS

        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    given = compare_options.pop("method_options", None) or {}
    base_spec = as_spec(method)
    base = {**base_spec.options, **given.get(base_spec.label, {}), **given.get(base_spec.name, {})}
    settings = _grid_settings(grid)
    specs = []
    for params in settings:
        # Built only to be checked: a key the method does not take, or a bad value, fails here with the method's
        # own error, before the first point trains.
        spec = MethodSpec(base_spec.method, {**base, **params}, _point_label(base_spec.name, params))
        spec.build()
        specs.append(spec)
    if test is not None:
        compare_options = dict(compare_options, test=test)
    if present is not None or test_present is not None:
        compare_options = dict(compare_options, present=present, test_present=test_present)
    # Options of the baselines go on to compare; those of a method that is not run are not compare's concern here.
    baseline_keys = {k for b in baselines for k in (as_spec(b).label, as_spec(b).name)}
    baseline_options = {k: v for k, v in given.items() if k in baseline_keys}
    results = compare(
        modalities,
        labels,
        [*specs, *baselines],
        seeds,
        epochs,
        method_options=baseline_options or None,
        **compare_options,
    )
    points = [
        {"method": base_spec.name, "params": dict(params), **results[spec.label]}
        for params, spec in zip(settings, specs, strict=True)
    ]
    labels_of_points = {spec.label for spec in specs}
    points += [
        {"method": label, "params": {}, "baseline": True, **r}
        for label, r in results.items()
        if label not in labels_of_points
    ]
    return points


def _point_label(name: str, params: dict) -> str:
    parts = [f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in params.items()]
    return f"{name} [{' '.join(parts)}]"


def _value(point: dict, measure: str | Callable[[dict], float], axis: str, index: int) -> float:
    raw = measure(point) if callable(measure) else point[measure]
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise TypeError(
            f"pareto_front: {axis} of point {index} is {type(raw).__name__}, not a number; for a per-modality "
            f"list pass a callable, e.g. lambda p: p['probe_acc'][1]"
        )
    return float(raw)


def pareto_front(
    points: Sequence[dict], x: str | Callable[[dict], float], y: str | Callable[[dict], float]
) -> list[dict]:
    """The points no other point beats on both measures (larger is better for both), sorted by ``x`` ascending.

    Args:
        points: dicts, e.g. from :func:`sweep`.
        x, y: each a key of the point dicts holding a number (``"fused_acc"``, ``"worst_probe_acc"``) or a
            callable taking a point and returning a number.

    Returns:
        The non-dominated points themselves (not copies). A point is dominated when another is >= on both
        measures and > on at least one; points with identical ``x`` and ``y`` do not dominate each other, so all
        of them are kept. A point whose ``x`` or ``y`` is NaN is never on the front (and dominates nothing).
        Points with equal ``x`` keep their input order.
    """
    values = [(_value(p, x, "x", i), _value(p, y, "y", i)) for i, p in enumerate(points)]
    finite = [(v, p) for v, p in zip(values, points, strict=True) if not (math.isnan(v[0]) or math.isnan(v[1]))]

    def dominated(a: tuple[float, float]) -> bool:
        return any(b[0] >= a[0] and b[1] >= a[1] and b != a for b, _ in finite)

    front = [(v, p) for v, p in finite if not dominated(v)]
    return [p for _, p in sorted(front, key=lambda vp: vp[0][0])]
