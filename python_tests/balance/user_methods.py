"""Methods a user would write outside mimo_ext, to plug into compare, sweep and the command line as a new user
would: by class, instance, dotted path or MethodSpec, without touching METHODS."""

from __future__ import annotations

import torch
from torch import Tensor

from mimo_ext.balance import BalanceMethod, StepTimes, combine_by_gram


def upgrad_coefficients(gram: Tensor, iterations: int = 300) -> Tensor:
    """UPGrad's (Quinton & Rey, 2024) K coefficients for the Gram matrix ``G`` of K gradients: the mean over i of
    ``argmin_{v >= e_i} v^T G v`` (each gradient projected onto the dual cone of all of them), the QPs solved by
    projected gradient descent in float64, which is enough for K of a few."""
    g = gram.to(torch.float64)
    scale = float(torch.linalg.eigvalsh(g).max().clamp_min(1e-30))
    k = g.shape[0]
    total = torch.zeros(k, dtype=torch.float64)
    for i in range(k):
        floor = torch.zeros(k, dtype=torch.float64)
        floor[i] = 1.0
        v = floor.clone()
        for _ in range(iterations):
            v = torch.maximum(floor, v - (g @ v) / scale)
        total += v
    return total / k


class UPGradLike(BalanceMethod):
    """UPGrad over the M + 1 objectives' encoder gradients, heads on their own loss (as the library's MGDA)."""

    name = "upgrad"

    def __init__(self, iterations: int = 300) -> None:
        self.iterations = iterations

    def backward(self, model, out, optimizer):
        times, _ = combine_by_gram(model, out, lambda gram: upgrad_coefficients(gram, self.iterations))
        return times


class HalfUniform(BalanceMethod):
    """f0 + scale * sum_m f_m, with no ``name`` attribute (its class name labels it)."""

    def __init__(self, scale: float = 0.5) -> None:
        if scale < 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        self.scale = scale
        self.calls = 0  # state: each run must start from a fresh copy

    def backward(self, model, out, optimizer):
        self.calls += 1
        (out.fusion_loss + self.scale * torch.stack(out.uni_losses).sum()).backward()
        return StepTimes(0.0, 0.0)


INSTANCE = HalfUniform(0.25)
