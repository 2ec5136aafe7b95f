"""PCGrad: project away the conflicting components between the objectives' gradients, then sum."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import BalanceMethod, BatchOutputs, StepTimes
from .gradients import combine_by_gram

__all__ = ["PCGrad", "pcgrad_coefficients"]


def pcgrad_coefficients(gram: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``[K]`` coefficients ``c`` such that ``sum_k c_k g_k`` is PCGrad's combined gradient.

    PCGrad (Yu et al., Algorithm 1): for each i, ``g_i^PC = g_i``; for each j != i in a random order,
    if ``<g_i^PC, g_j> < 0`` then ``g_i^PC -= <g_i^PC, g_j> / ||g_j||^2 * g_j`` (projection onto the normal plane of
    the original ``g_j``); the result is ``sum_i g_i^PC``. Every ``g_i^PC`` stays a combination of the original
    gradients, so the whole procedure runs on the K x K Gram matrix (float64, host): the inner products are
    ``<g_i^PC, g_j> = c_i^T M[:, j]``. A zero ``g_j`` conflicts with nothing.

    Args:
        gram: ``[K, K]`` Gram matrix of the gradients.
        generator: CPU generator for the random orders (one permutation of the others per i).
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square matrix, got shape {tuple(gram.shape)}")
    k = gram.shape[0]
    m = gram.detach().to("cpu", torch.float64)
    coefficients = torch.eye(k, dtype=torch.float64)
    for i in range(k):
        others = [j for j in range(k) if j != i]
        order = torch.randperm(len(others), generator=generator).tolist() if others else []
        c = coefficients[i]
        for n in order:
            j = others[n]
            dot = float(c @ m[:, j])
            norm2 = float(m[j, j])
            if dot < 0 and norm2 > 0:
                c[j] -= dot / norm2
    return coefficients.sum(dim=0).to(gram.device, gram.dtype)


class PCGrad(BalanceMethod):
    """PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020) over the K = M + 1 objectives.

    The objectives' encoder gradients (:func:`~.gradients.objective_gradients`) are combined by
    :func:`pcgrad_coefficients` and summed (the paper's ``g = sum_i g_i^PC``; some re-implementations average
    instead, which only rescales the step). Heads get their own objective's gradient (task-specific parameters).
    Without uni-modal heads (early, attention fusion) the f_m are the masked losses (:func:`mimo_ext.masked_losses`);
    every parameter is shared, so the projections run over all of them.

    Args:
        generator: CPU ``torch.Generator`` for the random projection orders (None: the global generator).

    After each call ``last_coefficients`` holds the ``[K]`` coefficients (float64, host).
    """

    name = "pcgrad"
    uses_uni_losses = True

    def __init__(self, generator: torch.Generator | None = None) -> None:
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(
                f"generator must be a CPU generator (the projections run on the host), got {generator.device}"
            )
        self.generator = generator
        self.last_coefficients: Tensor | None = None

    def backward(self, model: torch.nn.Module, out: BatchOutputs, optimizer: torch.optim.Optimizer) -> StepTimes:
        times, self.last_coefficients = combine_by_gram(
            model, out, lambda gram: pcgrad_coefficients(gram, self.generator)
        )
        return times
