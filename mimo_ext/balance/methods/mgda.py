"""MGDA: the minimum-norm convex combination of the objectives' gradients (a common descent direction)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import BalanceMethod, BatchOutputs, StepTimes
from .gradients import combine_by_gram
from .min_norm import Solver, min_norm_weights

__all__ = ["Mgda"]


class Mgda(BalanceMethod):
    """MGDA (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018), exact variant
    over the shared parameters.

    The K = M + 1 objectives (f0, f_1..f_M) each get a backward pass (:func:`~.gradients.objective_gradients`);
    their gradients over the encoders are combined as ``sum_k alpha_k g_k`` with ``alpha`` the min-norm weights of
    their Gram matrix (:func:`~.min_norm.min_norm_weights`: closed form for K = 2, else Wolfe's exact
    min-norm-point algorithm, or the paper's Frank-Wolfe with ``solver="frank_wolfe"``).

    Choices:

    - Exact MGDA over the encoder parameters, not MGDA-UB (the paper's cheaper bound through a shared
      representation): late fusion has no single shared representation (each encoder is shared by f0 and one f_m).
    - No gradient normalisation (their code offers it as an option, ``normalization_type``).
    - Heads get their own objective's plain gradient, as in the paper's Algorithm 2 (task-specific parameters step
      on ``grad L^t``). Their code instead backpropagates ``sum_t alpha_t L^t``, which also scales the heads by
      ``alpha_t`` (the fusion head would step on ``alpha_0 grad f0`` only); we follow the paper.
    - Without uni-modal heads (early, attention fusion) the f_m are the masked losses (:func:`mimo_ext.masked_losses`)
      and every parameter is shared by all K objectives: MGDA over all parameters, no heads of their own.

    Args:
        solver: ``"wolfe"`` (exact; default) or ``"frank_wolfe"`` (the reference code's solver and settings).

    After each call ``last_weights`` holds ``alpha`` (``[K]``, float64 on the host).
    """

    name = "mgda"
    uses_uni_losses = True

    def __init__(self, solver: Solver = "wolfe") -> None:
        if solver not in ("wolfe", "frank_wolfe"):
            raise ValueError(f"solver must be 'wolfe' or 'frank_wolfe', got {solver!r}")
        self.solver = solver
        self.last_weights: Tensor | None = None

    def backward(self, model: torch.nn.Module, out: BatchOutputs, optimizer: torch.optim.Optimizer) -> StepTimes:
        times, self.last_weights = combine_by_gram(model, out, lambda gram: min_norm_weights(gram, solver=self.solver))
        return times
