"""MIMO through the fused optimizers: per-objective backward passes, blended inside ``optimizer.step()``."""

from __future__ import annotations

import torch

from ...objective import DEFAULT_MU
from ...optim import MIMOAdamW, MIMOOptimizer
from .base import BalanceMethod, BatchOutputs, PhaseTimer, StepTimes
from .mimo import check_gamma_mu, first_device, schedule_of

__all__ = ["MimoFused"]


class MimoFused(BalanceMethod):
    """MIMO (Fernando et al., arXiv 2511.06686) on the per-objective path of :class:`mimo_ext.optim.MIMOOptimizer`
    (``MIMOSGD`` / ``MIMOAdamW``): ``optimizer.backward(f0, [f_m])`` runs one backward pass per objective, each
    into its own flat gradient buffer, and the next ``optimizer.step()`` blends them as
    ``g0 + gamma * sum_m softmax(f / mu)_m g_m`` inside the fused update (gamma and mu are the optimizer's).

    ``weighting_s`` is 0: there is no separate weighting subroutine; the weights and the blend are computed in the
    optimizer step's single pass over the parameters (time the step to see that cost).

    Note: the optimizer's ``backward`` writes the gradients (it zeroes its buffers first); after it, ``.grad`` of
    each reached parameter is its slice of g0's buffer, not the blended gradient, which exists only inside
    ``step()``.

    Args:
        gamma, mu: optional; the optimizer holds the blend's gamma and mu (per param group). When given, ``backward``
            checks that every param group uses these values (ValueError otherwise), so that
            ``make_method("mimo_fused", gamma=..., mu=...)`` states the same settings as ``make_method("mimo", ...)``
            and cannot silently disagree with the optimizer.

        schedule, warmup, growth: as for :class:`~.mimo.Mimo`; the schedule's tensors become every param group's
            gamma and mu in :meth:`start` (the optimizer reads them in ``step()``, with no host synchronisation).

    Without uni-modal heads (early, attention fusion) the f_m are the masked losses (:func:`mimo_ext.masked_losses`);
    each objective's backward then reaches every parameter.

    Raises:
        TypeError: from ``backward`` when ``optimizer`` is not a ``MIMOOptimizer``.
    """

    name = "mimo_fused"
    uses_uni_losses = True

    def __init__(
        self,
        gamma: float | None = None,
        mu: float | None = None,
        schedule: str = "constant",
        warmup: float | None = None,
        growth: float | None = None,
    ) -> None:
        check_gamma_mu(1.0 if gamma is None else gamma, 1.0 if mu is None else mu)
        self.gamma = None if gamma is None else float(gamma)
        self.mu = None if mu is None else float(mu)
        self.schedule = schedule
        base_gamma = 1.0 if gamma is None else float(gamma)
        self._penalty = schedule_of(base_gamma, DEFAULT_MU if mu is None else float(mu), schedule, warmup, growth)

    def start(self, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        if self._penalty is not None:
            self._penalty.start(optimizer, total_steps, first_device(optimizer))

    def resume(self, steps_done: int) -> None:
        if self._penalty is not None:
            self._penalty.resume(steps_done)

    def make_optimizer(self, params: list[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """:class:`~mimo_ext.optim.MIMOAdamW` with this method's gamma and mu (default 1 and ``DEFAULT_MU``)."""
        gamma = 1.0 if self.gamma is None else self.gamma
        mu = DEFAULT_MU if self.mu is None else self.mu
        return MIMOAdamW(params, lr=lr, weight_decay=weight_decay, gamma=gamma, mu=mu)

    def backward(self, model: torch.nn.Module, out: BatchOutputs, optimizer: torch.optim.Optimizer) -> StepTimes:
        if not isinstance(optimizer, MIMOOptimizer):
            raise TypeError(
                "mimo_fused needs a mimo_ext.optim.MIMOOptimizer (MIMOSGD or MIMOAdamW), got "
                f"{type(optimizer).__name__}"
            )
        if self._penalty is not None:
            self._penalty.advance(self.name)
        for name, value in (("gamma", self.gamma), ("mu", self.mu)):
            if value is None or self._penalty is not None:
                continue
            for i, group in enumerate(optimizer.param_groups):
                held = group[name]
                if isinstance(held, torch.Tensor) or float(held) != value:
                    raise ValueError(
                        f"mimo_fused was given {name}={value} but the optimizer's param group {i} has {name}={held!r}"
                    )
        timer = PhaseTimer(out.fusion_loss.device)
        with timer.backward():
            optimizer.backward(out.fusion_loss, out.uni_losses)
        return timer.times()
