"""Joint training: the fusion loss alone trains the encoders (the imbalanced baseline)."""

from __future__ import annotations

import torch

from .base import BalanceMethod, BatchOutputs, PhaseTimer, StepTimes, train_uni_heads_detached

__all__ = ["Joint"]


class Joint(BalanceMethod):
    """Joint training on the fusion loss ``f0`` only: the usual late-fusion baseline, whose dominant modality
    starves the others of gradient (Peng et al., CVPR 2022; Wei & Hu, ICML 2024, call it "joint training").

    The encoders and the fusion head get ``grad f0``. The uni-modal heads are trained on
    ``sum_m f_m`` with the features detached (:func:`~.base.train_uni_heads_detached`): they report what each
    encoder supports, the same way for every method, and send no gradient into the encoders.

    Without uni-modal heads (early, attention fusion): ``grad f0`` for every parameter, from one forward (no
    masked losses are computed: they would train nothing).
    """

    name = "joint"
    uses_uni_losses = False

    def backward(self, model: torch.nn.Module, out: BatchOutputs, optimizer: torch.optim.Optimizer) -> StepTimes:
        timer = PhaseTimer(out.fusion_loss.device)
        with timer.backward():
            train_uni_heads_detached(model, out)
            out.fusion_loss.backward()
        return timer.times()
