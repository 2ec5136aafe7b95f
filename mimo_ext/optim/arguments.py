"""What MIMOSGD and MIMOAdamW share about their arguments: the checks of the hyperparameters and of torch.optim's
flags, and the text of the arguments' documentation (each optimizer's docstring adds only its own arguments)."""

from __future__ import annotations

import math
import numbers
import textwrap

import torch


def check_scalar_or_tensor(name: str, value, *, minimum: float, strict: bool = False) -> None:
    """A hyperparameter given as a float, or as a one-element floating tensor (e.g. a device tensor for CUDA graph
    capture). A float must be finite and >= minimum (> when strict); a tensor's value is checked only on the CPU,
    where that does not synchronise."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() or value.numel() != 1:
            raise ValueError(
                f"{name} must be a float or a one-element floating tensor, got {value.dtype} "
                f"tensor of shape {tuple(value.shape)}"
            )
        if value.device.type != "cpu":
            return
        value = value.item()
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not is_real or not math.isfinite(value) or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {minimum}, got {value!r}")


def check_mimo_hyperparameters(name: str, group: dict) -> None:
    """The checks every param group passes: lr, gamma and mu, and differentiable (``name``: the optimizer's)."""
    check_scalar_or_tensor("lr", group["lr"], minimum=0.0)
    check_scalar_or_tensor("gamma", group["gamma"], minimum=0.0)
    check_scalar_or_tensor("mu", group["mu"], minimum=0.0, strict=True)
    if group.get("differentiable", False):
        raise ValueError(_differentiable_message(name))


def check_floats(group: dict, names: tuple[str, ...]) -> None:
    """The algorithm's own hyperparameters are host floats: the kernels take them as scalar arguments."""
    for name in names:
        if isinstance(group[name], torch.Tensor):
            raise ValueError(f"{name} must be a float (only lr, gamma and mu may be tensors)")


def check_torch_flags(name: str, defaults: dict) -> None:
    """torch.optim's constructor checks, before the parameters are read and anything is built, with torch.optim's
    exception types and messages: those of torch.optim.AdamW (a ``defaults`` with betas) or SGD (with momentum) on
    the constructor's hyperparameters, then those of foreach / fused / differentiable. The stricter checks of every
    param group (check_mimo_hyperparameters and each optimizer's own) follow when the groups are added."""
    if "betas" in defaults:
        _check_like_torch_adam(defaults)
    elif "momentum" in defaults:
        _check_like_torch_sgd(defaults)
    if defaults.get("fused") and defaults.get("differentiable", False):
        raise RuntimeError("`fused` does not support `differentiable`")  # torch.optim's error, word for word
    if defaults.get("fused") and defaults.get("foreach"):
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")  # torch.optim's error, word for word
    if defaults.get("differentiable", False):
        raise ValueError(_differentiable_message(name))


# The two functions below are torch.optim.Adam's and SGD's constructor checks (torch 2.14), in their order and
# wording, so that a bad argument raises what torch.optim raises. The comparisons are torch's too: what they let
# through (e.g. SGD's `lr < 0.0` a NaN lr) is refused by the per-group checks afterwards, with our messages.


def _check_like_torch_adam(defaults: dict) -> None:
    lr, eps, betas, weight_decay = defaults["lr"], defaults["eps"], defaults["betas"], defaults["weight_decay"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        return  # torch.optim fails on it by accident (IndexError, TypeError); ours names it ("a pair of floats")
    foreach, capturable = defaults.get("foreach"), defaults.get("capturable", False)
    if isinstance(lr, torch.Tensor):
        if foreach and not capturable:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    for i in (0, 1):
        if not 0.0 <= betas[i] < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    floats = isinstance(betas[0], float) and isinstance(betas[1], float)
    if not (floats or (isinstance(betas[0], torch.Tensor) and isinstance(betas[1], torch.Tensor))):
        raise ValueError("betas must be either both floats or both Tensors")
    for i in (0, 1):
        if isinstance(betas[i], torch.Tensor):
            if not capturable and foreach:
                raise ValueError(f"betas[{i}] as a Tensor is not supported for capturable=False and foreach=True")
            if betas[i].numel() != 1:
                raise ValueError(f"Tensor betas[{i}] must be 1-element")


def _check_like_torch_sgd(defaults: dict) -> None:
    lr, momentum, weight_decay = defaults["lr"], defaults["momentum"], defaults["weight_decay"]
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if lr < 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if momentum < 0.0:
        raise ValueError(f"Invalid momentum value: {momentum}")
    if weight_decay < 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if defaults["nesterov"] and (momentum <= 0 or defaults["dampening"] != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")


def _differentiable_message(name: str) -> str:
    return (
        f"{name}: differentiable=True is not supported: the fused step updates the flat buffers in place under "
        "torch.no_grad(), so no gradient flows through it (use torch.optim's optimizer with differentiable=True to "
        "differentiate through an optimizer step)"
    )


def _entries(text: str) -> str:
    """Args entries written flush left (continuation lines indented by 4), as they stand in a class docstring's Args
    section: the first line goes where the placeholder is, the others are indented to match."""
    return textwrap.indent(textwrap.dedent(text).strip(), " " * 8).lstrip()


# The documentation of the shared arguments, for str.format into each optimizer's docstring.
ARGUMENT_DOCS = {
    "flat_buffers": "The parameters are moved into flat buffers (they become views; see :mod:`mimo_ext.optim.base`).",
    "lr": "lr: learning rate, a float or a one-element tensor (on the parameters' device for CUDA graph capture).",
    "foreach_fused": _entries(
        """
        foreach, fused: accepted for drop-in compatibility and stored in the param groups as torch.optim stores
            them; the step is always one fused pass per bucket, whatever their values (``fused=True`` together
            with ``foreach=True`` raises torch.optim's RuntimeError).
        """
    ),
    "mimo": _entries(
        """
        differentiable: only False; True raises ValueError (the fused step is not differentiable).
        gamma: weight of the smoothed max of the uni-modal losses (float or tensor), >= 0.
        mu: temperature of the smoothed max (float or tensor), > 0.
        diagnostics: compute :class:`StepDiagnostics` in the step's pass (``opt.last_diagnostics``).
        sync, process_group: under torch.distributed (default: when initialised with more than one rank), the
            per-objective path takes the weights from the ranks' mean losses and all-reduces the blended gradient
            once per bucket; use it on a model that is not wrapped in DistributedDataParallel (see
            docs/distributed.md).
        """
    ),
}
