"""MMPareto: per encoder, equal weights when the fused and uni-modal gradients agree, MGDA weights when they
conflict, with the magnitude kept and boosted."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import BalanceMethod, BatchOutputs, PhaseTimer, StepTimes
from .gradients import objective_gradients
from .min_norm import min_norm_2, min_norm_weights

__all__ = ["MMPareto"]

DEFAULT_BOOST = 1.5


class MMPareto(BalanceMethod):
    """MMPareto (Wei & Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance", ICML 2024;
    official code github.com/GeWu-Lab/MMPareto_ICML2024, ``code/MMPareto.py``), for M modalities.

    Per encoder m, with ``g_mm`` and ``g_u`` the gradients of f0 and f_m with respect to encoder m (one backward
    pass per objective, :func:`~.gradients.objective_gradients`):

    1. weights ``(a_mm, a_u) = (0.5, 0.5)`` if ``cos(g_mm, g_u) > 0``, else the min-norm (MGDA) weights of the two
       (closed form, :func:`~.min_norm.min_norm_2`); the cosine is over the whole encoder, as in the code;
    2. direction ``g = 2 a_mm g_mm + 2 a_u g_u`` (so agreeing gradients give ``g_mm + g_u``, the uniform
       baseline's gradient);
    3. magnitude, per parameter tensor as in the code: where ``||g_mm + g_u|| > ||g||`` (restricted to the tensor),
       ``g`` is scaled up to ``||g_mm + g_u||`` (the uniform baseline's gradient, which the code computes as the
       gradient of ``f0 + sum_m f_m``); it is never scaled down (the code's ``if diff > 1``). This restores the
       magnitude that the conflicting-case convex combination loses;
    4. the result is multiplied by ``boost`` (the code's ``gamma = 1.5``, a fixed magnitude enhancement).

    The fusion head gets ``grad f0`` and uni-modal head m gets ``grad f_m``, unweighted (the code backpropagates
    ``f0 + sum_m f_m`` and skips the heads when rewriting gradients).

    Models without uni-modal heads (early, attention fusion): the f_m are the masked losses
    (:func:`mimo_ext.masked_losses`), and every parameter is shared by all K = M + 1 objectives, so the rule above
    runs once, over all parameters, on the K gradients instead of per encoder on two: equal weights ``1/K`` when
    every pair of them agrees (all cosines > 0), else the min-norm (MGDA) weights of the K (Wolfe's exact solver, on
    the host); direction ``K * sum_k a_k g_k`` (the sum of the gradients when they agree); per parameter tensor
    never below ``||sum_k g_k||``; times ``boost``. For K = 2 this is exactly the rule above.

    Differences from the code, both deliberate: the two-gradient MGDA weights are the exact minimiser clamped to
    [0, 1] (the code's solver returns 0.999 / 0.001 at the ends); where a tensor's combined gradient is exactly zero
    it stays zero (the code divides by its zero norm). Everything runs on the device without host synchronisation.

    Args:
        boost: the final multiplier (default 1.5).

    After each call ``last_cosines`` (``[M]``) and ``last_weights`` (``[M, 2]``: ``a_mm, a_u`` per modality) hold
    what was used (device tensors); without uni-modal heads ``last_cosines`` is the ``[K, K]`` cosine matrix and
    ``last_weights`` the ``[K]`` weights.
    """

    name = "mmpareto"
    uses_uni_losses = True

    def __init__(self, boost: float = DEFAULT_BOOST) -> None:
        if isinstance(boost, bool) or not isinstance(boost, (int, float)) or not math.isfinite(boost) or boost < 0:
            raise ValueError(f"boost must be a finite number >= 0, got {boost!r}")
        self.boost = float(boost)
        self.last_cosines: Tensor | None = None
        self.last_weights: Tensor | None = None

    def backward(self, model: torch.nn.Module, out: BatchOutputs, optimizer: torch.optim.Optimizer) -> StepTimes:
        timer = PhaseTimer(out.fusion_loss.device)
        with timer.backward():
            grads = objective_gradients(model, out)
        with timer.weighting():
            combined = torch.empty_like(grads.matrix[0])
            spans = grads.spans()
            cosines, weights = [], []
            for (start, stop), objectives in zip(grads.blocks, grads.block_objectives, strict=True):
                rows = grads.matrix[list(objectives), start:stop]
                if len(objectives) == 2:
                    cos, a = self._two(rows, combined[start:stop])
                else:
                    cos, a = self._many(rows, combined[start:stop])
                # Per parameter tensor: magnitude never below that of the gradients' sum, then the boost.
                for lo, hi in spans:
                    if not start <= lo < stop:
                        continue
                    new = combined[lo:hi]
                    new_norm = torch.linalg.vector_norm(new)
                    sum_norm = torch.linalg.vector_norm(grads.matrix[list(objectives), lo:hi].sum(dim=0))
                    grow = (new_norm > 0) & (sum_norm > new_norm)
                    factor = torch.where(grow, sum_norm / new_norm.clamp_min(torch.finfo(new_norm.dtype).tiny), 1.0)
                    new.mul_(factor * self.boost)
                cosines.append(cos)
                weights.append(a)
            grads.apply(combined)
            single = len(grads.blocks) == 1 and len(grads.block_objectives[0]) > 2
            self.last_cosines = cosines[0] if single else torch.stack(cosines)
            self.last_weights = weights[0] if single else torch.stack(weights)
        return timer.times()

    @staticmethod
    def _two(rows: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        """The two-objective rule (late fusion's encoder m: f0 and f_m), written into ``out``; returns the cosine
        and ``(a_mm, a_u)``. No host synchronisation."""
        g_mm, g_u = rows[0], rows[1]
        v11, v12, v22 = g_mm @ g_mm, g_mm @ g_u, g_u @ g_u
        cos = v12 / (v11.sqrt() * v22.sqrt()).clamp_min(torch.finfo(v12.dtype).tiny)
        a_mm = torch.where(cos > 0, torch.full_like(cos, 0.5), min_norm_2(v11, v12, v22))
        torch.add(2 * a_mm * g_mm, 2 * (1 - a_mm) * g_u, out=out)
        return cos, torch.stack([a_mm, 1 - a_mm])

    @staticmethod
    def _many(rows: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        """The K-objective rule (one block shared by all objectives), written into ``out``; returns the ``[K, K]``
        cosines and the ``[K]`` weights."""
        k = rows.shape[0]
        gram = rows @ rows.T
        norms = gram.diagonal().sqrt()
        cos = gram / (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(gram.dtype).tiny)
        off_diagonal = ~torch.eye(k, dtype=torch.bool, device=gram.device)
        if bool((cos[off_diagonal] > 0).all()):
            a = torch.full((k,), 1.0 / k, dtype=rows.dtype, device=rows.device)
        else:
            a = min_norm_weights(gram.to("cpu", torch.float64)).to(rows.device, rows.dtype)
        out.copy_((k * a) @ rows)
        return cos, a
