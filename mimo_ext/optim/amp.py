"""Loss scaling (torch.amp.GradScaler) for the fused MIMO optimizers, in one place.

The gradients the step reads may be scaled: g0 (``.grad``) by the scale GradScaler hands the step as
``grad_scale`` (None when ``scaler.unscale_(opt)`` already unscaled it in place), and on the per-objective path
each uni-modal gradient g_m by the scale ``opt.backward(..., grad_scaler=...)`` multiplied its loss by. Here those
become one unscale factor per gradient buffer, multiplied into the step's coefficients: the kernels are called
without ``grad_scale`` (only ``found_inf``), and their gradient statistics, which are of the raw buffers, are
rescaled by the same factors.
"""

from __future__ import annotations

import torch

__all__ = [
    "flag_non_finite",
    "rescale_stats",
    "scaler_unscaled",
    "set_step_unscales",
    "step_unscales",
    "unscale_factors",
]


def step_unscales(optimizer) -> bool:
    """The optimizer's ``_step_supports_amp_scaling``: True (the default), GradScaler.step hands the step
    ``grad_scale`` and ``found_inf`` and the step unscales in its fused pass (no pass of its own over ``.grad``);
    False, GradScaler.step unscales ``.grad`` in place first (``scaler.unscale_``), as for torch.optim.AdamW.

    Frameworks that clip between ``scaler.unscale_`` and ``scaler.step`` read True as "this optimizer unscales
    internally, so clipping is impossible" (Lightning's mixed-precision plugins refuse ``gradient_clip_val`` then,
    also under bf16 where no scaler exists); mimo_ext.integrations turns it off for them. Kept on the host state,
    which wrappers that copy the optimizer's ``__dict__`` (Lightning's LightningOptimizer) share."""
    return getattr(optimizer._host, "step_unscales", True)


def set_step_unscales(optimizer, value: bool) -> None:
    optimizer._host.step_unscales = bool(value)


def unscale_factors(
    num_objectives: int,
    grad_scale: torch.Tensor | None,
    loss_scale: torch.Tensor | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """``[K]`` factors that unscale gradient buffer k (1 / grad_scale for g0, 1 / loss_scale for g_m, m >= 1), or
    None when nothing is scaled. On the device: nothing is synchronised."""
    if grad_scale is None and loss_scale is None:
        return None
    one = torch.ones(1, device=device, dtype=dtype)
    first = one if grad_scale is None else grad_scale.to(device, dtype).reshape(1).reciprocal()
    if num_objectives == 1:
        return first
    rest = one if loss_scale is None else loss_scale.to(device, dtype).reshape(1).reciprocal()
    return torch.cat([first, rest.expand(num_objectives - 1)])


def rescale_stats(stats: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """The kernel's statistics of the raw buffers (``[|g_k|^2 for each k, <g_0, g_m> for m >= 1, |g|^2]``) as
    statistics of the unscaled gradients; ``|g|^2`` is already of the unscaled blend (the coefficients hold the
    factors). A skipped step's zeros stay zero even where a factor is not finite (0 * Inf would be NaN)."""
    u = factors.to(stats.device, stats.dtype)
    one = torch.ones(1, device=stats.device, dtype=stats.dtype)
    scale = torch.cat([u * u, u[0] * u[1:], one])
    return torch.where(stats == 0, stats, stats * scale)


def scaler_unscaled(scaler: torch.amp.GradScaler | None, optimizer) -> bool:
    """Whether ``scaler.unscale_(optimizer)`` has run since its last update (g0, i.e. .grad, is then unscaled).
    GradScaler keeps this in its per-optimizer state; its stage enum has been named so since torch 1.6."""
    if scaler is None:
        return False
    state = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer))
    return state is not None and getattr(state.get("stage"), "name", None) == "UNSCALED"


def flag_non_finite(bucket, num_objectives: int, uni_losses: torch.Tensor) -> None:
    """GradScaler inspects ``.grad`` only, i.e. g0's buffer. A non-finite value in another objective's buffer is
    carried into g0 (a NaN in its first reached element) so the scaler sees it, skips the step and backs off. So is
    a non-finite uni-modal loss: it makes the MIMO weights NaN, and the step would write NaN into every parameter
    although each gradient was finite (the single-backward path gets NaN gradients from the same loss, which the
    scaler catches)."""
    first = next((i for i, hit in enumerate(bucket.touched) if hit and bucket.numels[i] > 0), None)
    if first is None or num_objectives < 2:
        return
    flag = torch.zeros(1, device=bucket.device, dtype=torch.float32)
    torch._amp_foreach_non_finite_check_and_unscale_(
        bucket.grad_buffers[1:num_objectives], flag, torch.ones(1, device=bucket.device)
    )
    losses_bad = ~torch.isfinite(uni_losses).all()
    flag = torch.maximum(flag, losses_bad.to(bucket.device, torch.float32).reshape(1))
    start = bucket.offsets[first]
    g0 = bucket.grad_buffers[0][start : start + 1]
    g0.add_(torch.where(flag > 0, float("nan"), 0.0).to(g0.dtype))
