"""Typed wrappers over the torch.ops.mimo_ext operators, and their fake (meta) implementations.

The schemas live in csrc/ops.cpp; the kernels in csrc/cpu and csrc/cuda, smooth_max's autograd in
csrc/smooth_max_autograd.cpp, and the step ops' kernel for devices without a compiled one in
mimo_ext/optim/reference.py. Validation happens in C++ (one place, the same message on every device); the
wrappers here only turn Python arguments into the schema's types.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

__all__ = ["adamw_step_", "blend", "blend_", "sgd_step_", "smooth_max"]


def smooth_max(losses: torch.Tensor, mu: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed maximum over the last dimension, and its softmax weights.

    Args:
        losses: tensor of shape ``[..., M]``, M >= 1; float32, float64, float16 or bfloat16 (half types are
            computed in float32).
        mu: temperature, finite and > 0. Small mu approaches the hard max, large mu the mean plus mu * log M.

    Returns:
        ``(value, weights)``: ``value = mu * logsumexp(losses / mu, -1)`` of shape ``[...]`` and
        ``weights = softmax(losses / mu, -1)`` of shape ``[..., M]``, both in the dtype of ``losses``. ``value``
        is differentiable with respect to ``losses`` (its gradient is ``weights``); ``weights`` is not.
        A row holding NaN or +-Inf gives NaN for its value and all its weights.

    Example:
        >>> value, weights = smooth_max(torch.tensor([1.0, 2.0, 3.0]), mu=1.0)
        >>> round(value.item(), 4), weights.argmax().item()
        (3.4076, 2)
    """
    return torch.ops.mimo_ext.smooth_max.default(_as_tensor(losses, "losses"), _as_float(mu, "mu"))


def blend(base: torch.Tensor, grads: Sequence[torch.Tensor], weights: torch.Tensor, gamma: float) -> torch.Tensor:
    """Returns ``base + gamma * sum_k weights[k] * grads[k]`` over flattened buffers.

    Args:
        base: 1-D contiguous buffer, float32, float64, float16 or bfloat16 (half types are computed in float32).
        grads: K >= 1 buffers of the dtype, device and length of ``base``.
        weights: 1-D tensor of K floating-point values on the device of ``base``. It is read by the kernel, never
            on the host, so the call does not synchronise and can be captured in a CUDA graph.
        gamma: finite float.

    Example:
        >>> g0, g1 = torch.ones(3), torch.arange(3.0)
        >>> blend(g0, [g1], torch.tensor([0.5]), gamma=2.0)
        tensor([1., 2., 3.])
    """
    return torch.ops.mimo_ext.blend.default(
        _as_tensor(base, "base"), _as_tensor_list(grads), _as_tensor(weights, "weights"), _as_float(gamma, "gamma")
    )


def blend_(base: torch.Tensor, grads: Sequence[torch.Tensor], weights: torch.Tensor, gamma: float) -> torch.Tensor:
    """In-place :func:`blend`: writes ``base + gamma * sum_k weights[k] * grads[k]`` into ``base``, returns it.

    A ``grads`` buffer may be ``base`` itself, but not a view that partially overlaps it.
    """
    torch.ops.mimo_ext.blend_.default(
        _as_tensor(base, "base"), _as_tensor_list(grads), _as_tensor(weights, "weights"), _as_float(gamma, "gamma")
    )
    return base


def smooth_max_backward(grad_value: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The gradient of :func:`smooth_max`'s value with respect to the losses: ``grad_value[..., None] * weights``."""
    return torch.ops.mimo_ext.smooth_max_backward.default(grad_value, weights)


def sgd_step_(
    param: torch.Tensor,
    momentum_buffer: torch.Tensor,
    grads: Sequence[torch.Tensor],
    coefficients: torch.Tensor,
    lr: torch.Tensor,
    step: torch.Tensor,
    *,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    compute_stats: bool = False,
) -> torch.Tensor:
    """One fused torch.optim.SGD step of the 1-D buffer ``param`` on the gradient
    ``sum_k coefficients[k] * grads[k] / grad_scale``, in place (param, momentum_buffer, then ``step += 1``).

    The hyperparameters are torch.optim.SGD's, with its defaults. ``lr``, ``step`` (float32), ``coefficients``,
    ``grad_scale`` and ``found_inf`` are tensors on the device of ``param``, read there, never on the host; a nonzero
    ``found_inf`` skips the step (nothing is written). ``momentum_buffer`` is neither read nor written when
    ``momentum == 0``, and is started at the gradient when ``step == 0``. Returns the gradient statistics
    ``[|g_k|^2 for each k, <g_0, g_k> for k >= 1, |g|^2]`` when ``compute_stats``, else an empty tensor.

    With one coefficient, ``grads`` may also be one gradient in pieces: the gradients of consecutive slices of
    ``param`` in order (dense, contiguous, any shapes, lengths summing to its length), e.g. autograd's own ``.grad``
    tensors of the parameters those slices are; nothing is copied.

    Example:
        >>> param, buf, step = torch.ones(3), torch.zeros(3), torch.zeros(())
        >>> stats = sgd_step_(param, buf, [torch.ones(3)], torch.ones(1), torch.tensor(0.5), step, momentum=0.9)
        >>> param, step
        (tensor([0.5000, 0.5000, 0.5000]), tensor(1.))
    """
    return torch.ops.mimo_ext.sgd_step_.default(
        param, momentum_buffer, grads, coefficients, lr, step, grad_scale=grad_scale, found_inf=found_inf,
        weight_decay=weight_decay, momentum=momentum, dampening=dampening, nesterov=nesterov, maximize=maximize,
        compute_stats=compute_stats,
    )  # fmt: skip


def adamw_step_(
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor,
    grads: Sequence[torch.Tensor],
    coefficients: torch.Tensor,
    lr: torch.Tensor,
    step: torch.Tensor,
    *,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    amsgrad: bool = False,
    maximize: bool = False,
    compute_stats: bool = False,
) -> torch.Tensor:
    """One fused torch.optim.AdamW step of the 1-D buffer ``param`` on the gradient
    ``sum_k coefficients[k] * grads[k] / grad_scale``, in place (param, exp_avg, exp_avg_sq, max_exp_avg_sq with
    ``amsgrad``, then ``step += 1``).

    The hyperparameters are torch.optim.AdamW's, with its defaults; the tensors and the statistics are as in
    :func:`sgd_step_`. ``max_exp_avg_sq`` is neither read nor written without ``amsgrad`` (an empty tensor will do).

    Example:
        >>> param, m, v, step = torch.ones(3), torch.zeros(3), torch.zeros(3), torch.zeros(())
        >>> stats = adamw_step_(param, m, v, torch.empty(0), [torch.ones(3)], torch.ones(1), torch.tensor(0.1), step)
        >>> param, step
        (tensor([0.8990, 0.8990, 0.8990]), tensor(1.))
    """
    return torch.ops.mimo_ext.adamw_step_.default(
        param, exp_avg, exp_avg_sq, max_exp_avg_sq, grads, coefficients, lr, step, grad_scale=grad_scale,
        found_inf=found_inf, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
        maximize=maximize, compute_stats=compute_stats,
    )  # fmt: skip


def _as_float(value: float, name: str) -> float:
    # A tensor here would need a host synchronisation to become the schema's float: refuse it instead.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    return float(value)


def _as_tensor(value: torch.Tensor, name: str) -> torch.Tensor:
    # None or a number reaching the operator gives messages that name no argument ("tensor does not have a device").
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    return value


def _as_tensor_list(grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(grads, torch.Tensor) or not isinstance(grads, Sequence):
        raise TypeError(f"grads must be a sequence of tensors, got {type(grads).__name__}")
    for k, g in enumerate(grads):
        if not isinstance(g, torch.Tensor):
            raise TypeError(f"grads[{k}] must be a tensor, got {type(g).__name__}")
    return list(grads)


# Fake implementations: shapes and dtypes only, for torch.compile and FakeTensor tracing.


@torch.library.register_fake("mimo_ext::smooth_max")
def _smooth_max_fake(losses: torch.Tensor, mu: float) -> tuple[torch.Tensor, torch.Tensor]:
    _check_given("mimo_ext.smooth_max", {"losses": losses})
    torch._check(losses.dim() >= 1, lambda: "mimo_ext.smooth_max: losses must have at least 1 dimension")
    return losses.new_empty(losses.shape[:-1]), torch.empty_like(losses, memory_format=torch.contiguous_format)


def _check_given(op: str, named: dict) -> None:
    # As the C++ checks do (check_given): a None for a Tensor argument, named, before anything reads it.
    for name, t in named.items():
        if t is None:
            raise TypeError(f"{op}: {name} must be a tensor, got None")


def _check_blend_devices(op: str, base: torch.Tensor, grads: list[torch.Tensor], weights: torch.Tensor) -> None:
    # The C++ kernels check everything; this check is repeated here because the dispatcher sends a call that mixes
    # meta tensors with real ones to this fake implementation, where it would otherwise pass unnoticed.
    _check_given(op, {"base": base, **{f"grads[{k}]": g for k, g in enumerate(grads)}, "weights": weights})
    for k, g in enumerate(grads):
        if g.device != base.device:
            raise ValueError(f"{op}: grads[{k}] must be on the device of base ({base.device}), got {g.device}")
    if weights.device != base.device:
        raise ValueError(f"{op}: weights must be on the device of base ({base.device}), got {weights.device}")


@torch.library.register_fake("mimo_ext::blend")
def _blend_fake(base: torch.Tensor, grads: list[torch.Tensor], weights: torch.Tensor, gamma: float) -> torch.Tensor:
    _check_blend_devices("mimo_ext.blend", base, grads, weights)
    return torch.empty_like(base)


@torch.library.register_fake("mimo_ext::blend_")
def _blend_inplace_fake(base: torch.Tensor, grads: list[torch.Tensor], weights: torch.Tensor, gamma: float) -> None:
    _check_blend_devices("mimo_ext.blend_", base, grads, weights)
    return None


def _step_stats_fake(op: str, param: torch.Tensor, named: dict, grads: list[torch.Tensor], compute_stats: bool):
    # As in _check_blend_devices: a call mixing meta and real tensors lands here and must not pass unnoticed.
    optional = ("grad_scale", "found_inf")
    _check_given(op, {"param": param, **{n: t for n, t in named.items() if n not in optional}})
    _check_given(op, {f"grads[{k}]": g for k, g in enumerate(grads)})
    for name, t in [*named.items(), *((f"grads[{k}]", g) for k, g in enumerate(grads))]:
        if t is not None and t.device != param.device:
            raise ValueError(f"{op}: {name} must be on the device of param ({param.device}), got {t.device}")
    acc = torch.float64 if param.dtype == torch.float64 else torch.float32
    # K is the number of coefficients: grads may also be one gradient in pieces (csrc/checks.h, is_segmented).
    k = named["coefficients"].numel()
    return param.new_empty(2 * k if compute_stats else 0, dtype=acc)


@torch.library.register_fake("mimo_ext::sgd_step_")
def _sgd_step_fake(
    param: torch.Tensor,
    momentum_buffer: torch.Tensor,
    grads: list[torch.Tensor],
    coefficients: torch.Tensor,
    lr: torch.Tensor,
    step: torch.Tensor,
    *,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    compute_stats: bool = False,
) -> torch.Tensor:
    named = dict(
        momentum_buffer=momentum_buffer,
        coefficients=coefficients,
        lr=lr,
        step=step,
        grad_scale=grad_scale,
        found_inf=found_inf,
    )
    return _step_stats_fake("mimo_ext.sgd_step_", param, named, grads, compute_stats)


@torch.library.register_fake("mimo_ext::adamw_step_")
def _adamw_step_fake(
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    max_exp_avg_sq: torch.Tensor,
    grads: list[torch.Tensor],
    coefficients: torch.Tensor,
    lr: torch.Tensor,
    step: torch.Tensor,
    *,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    amsgrad: bool = False,
    maximize: bool = False,
    compute_stats: bool = False,
) -> torch.Tensor:
    named = dict(
        exp_avg=exp_avg,
        exp_avg_sq=exp_avg_sq,
        max_exp_avg_sq=max_exp_avg_sq,
        coefficients=coefficients,
        lr=lr,
        step=step,
        grad_scale=grad_scale,
        found_inf=found_inf,
    )
    return _step_stats_fake("mimo_ext.adamw_step_", param, named, grads, compute_stats)


# The autograd kernel of smooth_max is registered in C++ (csrc/smooth_max_autograd.cpp): the derivative is written
# once, there, and a training step pays no Python for it. smooth_max_backward is CompositeImplicitAutograd (an
# aten::mul), so tracing and fake tensors see through it.
