"""Plain PyTorch implementations of the fused step operators: the test oracle, and the operators' kernel on devices
that have no compiled one.

Each function takes the same arguments as its operator (``torch.ops.mimo_ext.sgd_step_`` /
``adamw_step_``, see csrc/ops.cpp), keyword-only from ``grad_scale`` on with the same defaults, and has the same
effect: it blends the gradient buffers, updates parameter and state in place in the math dtype (float32 for half
types, float64 for float64), advances ``step``, and returns the gradient statistics. Unlike the operators it reads
``found_inf`` on the host, so it synchronises and cannot be captured in a CUDA graph.

Both are registered below as the operators' CompositeExplicitAutograd kernels: the dispatcher prefers a device's
own kernel (CPU and CUDA have compiled ones; meta tensors take the fake implementations of mimo_ext.ops), so they
run on the other devices (MPS, XPU, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["adamw_step_reference", "sgd_step_reference"]


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _whole(grads: Sequence[torch.Tensor], coefficients: torch.Tensor, param: torch.Tensor) -> list[torch.Tensor]:
    """The K flat gradient buffers. ``grads`` may also be in pieces (csrc/checks.h, is_segmented): the gradients of
    consecutive slices of param, any shapes, objective-major (``grads[k * P + j]``), an empty tensor where an
    objective has none (zeros); joined here."""
    k_count = coefficients.numel()
    if len(grads) == k_count and all(g.dim() == 1 and g.numel() == param.numel() for g in grads):
        return list(grads)
    pieces = len(grads) // k_count
    lengths = [max(grads[k * pieces + j].numel() for k in range(k_count)) for j in range(pieces)]
    return [
        torch.cat(
            [
                g.reshape(-1) if g.numel() else param.new_zeros(n)
                for g, n in zip(grads[k * pieces : (k + 1) * pieces], lengths, strict=True)
            ]
            or [param.new_zeros(0)]
        )
        for k in range(k_count)
    ]


def _blend(grads, coefficients, grad_scale, acc) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    coefficients = coefficients.to(acc)
    if grad_scale is not None:
        coefficients = coefficients / grad_scale.to(acc).reshape(1)
    raw = [g.to(acc) for g in grads]
    blended = torch.zeros_like(raw[0])
    for c, g in zip(coefficients, raw, strict=True):
        blended = blended + c * g
    return blended, raw, coefficients


def _stats(raw, blended, grad_scale, acc, compute_stats) -> torch.Tensor:
    if not compute_stats:
        return torch.empty(0, dtype=acc, device=blended.device)
    squares = [g.dot(g) for g in raw]
    dots = [raw[0].dot(g) for g in raw[1:]]
    stats = torch.stack(squares + dots + [blended.dot(blended)])
    if grad_scale is not None:
        inv = 1 / grad_scale.to(acc).reshape(())
        stats[:-1] *= inv * inv
    return stats


def _skipped(found_inf) -> bool:
    return found_inf is not None and bool(found_inf.reshape(()).item() != 0)


def sgd_step_reference(
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
    acc = _math_dtype(param.dtype)
    grads = _whole(grads, coefficients, param)
    if _skipped(found_inf):
        return torch.zeros(2 * len(grads) if compute_stats else 0, dtype=acc, device=param.device)
    g, raw, _ = _blend(grads, coefficients, grad_scale, acc)
    stats = _stats(raw, g, grad_scale, acc, compute_stats)
    p = param.to(acc)
    lr_value = lr.to(acc).reshape(())
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * p
    if momentum != 0:
        if step.item() == 0:
            buf = g.clone()
        else:
            buf = momentum * momentum_buffer.to(acc) + (1 - dampening) * g
        momentum_buffer.copy_(buf)
        g = g + momentum * buf if nesterov else buf
    param.copy_(p - lr_value * g)
    step.add_(1)
    return stats


def adamw_step_reference(
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
    acc = _math_dtype(param.dtype)
    grads = _whole(grads, coefficients, param)
    if _skipped(found_inf):
        return torch.zeros(2 * len(grads) if compute_stats else 0, dtype=acc, device=param.device)
    g, raw, _ = _blend(grads, coefficients, grad_scale, acc)
    stats = _stats(raw, g, grad_scale, acc, compute_stats)
    if maximize:
        g = -g
    lr_value = lr.to(acc).reshape(())
    t = step.to(acc).reshape(()) + 1
    p = param.to(acc) * (1 - lr_value * weight_decay)
    m = beta1 * exp_avg.to(acc) + (1 - beta1) * g
    v = beta2 * exp_avg_sq.to(acc) + (1 - beta2) * g * g
    second = v
    if amsgrad:
        second = torch.maximum(max_exp_avg_sq.to(acc), v)
        max_exp_avg_sq.copy_(second)
    step_size = lr_value / (1 - beta1**t)
    denom = second.sqrt() / (1 - beta2**t).sqrt() + eps
    param.copy_(p - step_size * m / denom)
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    step.add_(1)
    return stats


torch.library.impl("mimo_ext::sgd_step_", "CompositeExplicitAutograd", sgd_step_reference)
torch.library.impl("mimo_ext::adamw_step_", "CompositeExplicitAutograd", adamw_step_reference)
