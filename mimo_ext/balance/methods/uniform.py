"""Uniform weighting: the fusion loss plus every uni-modal loss, each with weight one."""

from __future__ import annotations

import torch

from .base import BalanceMethod, BatchOutputs, PhaseTimer, StepTimes

__all__ = ["Uniform"]


class Uniform(BalanceMethod):
    """One backward pass of ``f0 + sum_m f_m``: the uni-modal losses as fixed, equally weighted auxiliary
    objectives (the "uniform baseline" of Wei & Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal
    Assistance", ICML 2024, Section 3, and of their ``uniform_baseline.py``).

    Without uni-modal heads (early, attention fusion) the f_m are the masked losses (:func:`mimo_ext.masked_losses`).
    """

    name = "uniform"
    uses_uni_losses = True

    def backward(self, model: torch.nn.Module, out: BatchOutputs, optimizer: torch.optim.Optimizer) -> StepTimes:
        timer = PhaseTimer(out.fusion_loss.device)
        with timer.backward():
            (out.fusion_loss + torch.stack(out.uni_losses).sum()).backward()
        return timer.times()
