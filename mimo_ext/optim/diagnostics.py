"""What the fused step measures about the gradients it used (``diagnostics=True``): :class:`StepDiagnostics`.

Its own module: base.py (which makes it) and objectives.py (whose host state holds the last one) both import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["StepDiagnostics", "diagnostics_from_stats"]


@dataclass
class StepDiagnostics:
    """Gradient statistics of the last step, as device tensors (reading them synchronises; the step does not).

    Attributes:
        weights: ``softmax(f / mu)`` over the M uni-modal losses (of the first param group), or None on the
            single-backward path, where the optimizer does not see the losses.
        grad_norms: ``[K]`` norm of each objective's gradient (K = M + 1 on the per-objective path, 1 otherwise).
        cosines: ``[M]`` cosine between the fusion gradient g0 and each uni-modal gradient g_m (empty for K = 1).
        grad_norm: norm of the blended gradient the update used.
    """

    weights: torch.Tensor | None
    grad_norms: torch.Tensor
    cosines: torch.Tensor
    grad_norm: torch.Tensor


def diagnostics_from_stats(stats: torch.Tensor, weights: torch.Tensor | None) -> StepDiagnostics:
    """The diagnostics from the summed statistics of the step kernels (step_entry.h's layout, K = len / 2)."""
    k = stats.numel() // 2
    norms = stats[:k].clamp_min(0).sqrt()
    dots = stats[k : 2 * k - 1]
    cosines = dots / (norms[0] * norms[1:]).clamp_min(torch.finfo(torch.float64).tiny)
    return StepDiagnostics(weights=weights, grad_norms=norms, cosines=cosines, grad_norm=stats[-1].clamp_min(0).sqrt())
