"""MIMO through autograd: one backward pass of the smoothed-max objective."""

from __future__ import annotations

import math

import torch

from ...objective import DEFAULT_MU, mimo_loss
from .base import BalanceMethod, BatchOutputs, PhaseTimer, StepTimes

__all__ = ["Mimo"]


def check_gamma_mu(gamma: float, mu: float) -> None:
    """ValueError unless gamma is finite and >= 0 and mu finite and > 0 (TypeError for non-numbers)."""
    for name, value in (("gamma", gamma), ("mu", mu)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be finite and >= 0, got {gamma}")
    if not (math.isfinite(mu) and mu > 0):
        raise ValueError(f"mu must be finite and > 0, got {mu}")


class Mimo(BalanceMethod):
    """MIMO (Fernando et al., "Mitigating Modality Imbalance in Multi-modal Learning via Multi-objective
    Optimization", arXiv 2511.06686): one backward pass of
    ``mimo_loss(f0, [f_m], gamma, mu) = f0 + gamma * mu * log(sum_m exp(f_m / mu))``, whose gradient is
    ``grad f0 + gamma * sum_m softmax(f / mu)_m grad f_m``.

    ``weighting_s`` is 0: the smoothed max and its weights are part of the graph, so their (tiny) cost is inside
    the backward pass, which is the point of the method.

    Args:
        gamma: weight of the smoothed max (>= 0).
        mu: its temperature (> 0), default :data:`mimo_ext.DEFAULT_MU`.

    Without uni-modal heads (early, attention fusion) the f_m are the masked losses (:func:`mimo_ext.masked_losses`):
    the same one backward, through the stacked forward of the M + 1 input sets.
    """

    name = "mimo"
    uses_uni_losses = True

    def __init__(self, gamma: float = 1.0, mu: float = DEFAULT_MU) -> None:
        check_gamma_mu(gamma, mu)
        self.gamma = float(gamma)
        self.mu = float(mu)

    def backward(self, model: torch.nn.Module, out: BatchOutputs, optimizer: torch.optim.Optimizer) -> StepTimes:
        timer = PhaseTimer(out.fusion_loss.device)
        with timer.backward():
            mimo_loss(out.fusion_loss, out.uni_losses, gamma=self.gamma, mu=self.mu).backward()
        return timer.times()
