"""MIMO through autograd: one backward pass of the smoothed-max objective."""

from __future__ import annotations

import math

import torch

from ...objective import DEFAULT_MU, mimo_loss
from ...schedules import SCHEDULES, PenaltySchedule, make_schedule
from .base import BalanceMethod, BatchOutputs, PhaseTimer, StepTimes

__all__ = ["Mimo", "ScheduledPenalty"]


def check_gamma_mu(gamma: float, mu: float) -> None:
    """ValueError unless gamma is finite and >= 0 and mu finite and > 0 (TypeError for non-numbers)."""
    for name, value in (("gamma", gamma), ("mu", mu)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be finite and >= 0, got {gamma}")
    if not (math.isfinite(mu) and mu > 0):
        raise ValueError(f"mu must be finite and > 0, got {mu}")


class ScheduledPenalty:
    """The penalty schedule a MIMO method runs with: its name and options (checked at once), built by
    :meth:`start` for a run's length, and advanced by :meth:`advance` at the start of every backward after the
    first, so that a step's backward and ``optimizer.step()`` both see that step's values."""

    def __init__(self, name: str, gamma: float, mu: float, options: dict) -> None:
        if name not in SCHEDULES:
            raise ValueError(f"unknown penalty schedule {name!r}; choose from {', '.join(SCHEDULES)}")
        self.name, self.gamma, self.mu, self.options = name, gamma, mu, options
        make_schedule(name, total_steps=1, gamma=gamma, mu=mu, **options)  # a bad option fails now
        self.schedule: PenaltySchedule | None = None
        self._fresh = False

    def start(self, optimizer: torch.optim.Optimizer | None, total_steps: int, device: torch.device) -> None:
        self.schedule = make_schedule(
            self.name, optimizer, total_steps=total_steps, gamma=self.gamma, mu=self.mu, device=device, **self.options
        )
        self._fresh = True

    def resume(self, steps_done: int) -> None:
        """After :meth:`start`, for a run resumed after ``steps_done`` steps: the next backward takes step
        ``steps_done``'s values, as the uninterrupted run's did."""
        if self.schedule is not None and steps_done > 0:
            self.schedule.load_state_dict({"last_step": steps_done - 1})
            self._fresh = False

    def advance(self, method: str) -> PenaltySchedule:
        if self.schedule is None:
            raise RuntimeError(
                f"{method} with schedule={self.name!r} needs the run's length: call method.start(optimizer, "
                "total_steps) before the first backward (compare does)"
            )
        if not self._fresh:
            self.schedule.step()
        self._fresh = False
        return self.schedule


def schedule_of(gamma: float, mu: float, schedule: str, warmup: float | None, growth: float | None):
    """The ScheduledPenalty for a MIMO method's options, or None for the constant schedule with no options (floats,
    exactly as before schedules existed)."""
    options = {k: v for k, v in (("warmup", warmup), ("growth", growth)) if v is not None}
    if schedule == "constant" and not options:
        return None
    return ScheduledPenalty(schedule, gamma, mu, options)


def first_device(optimizer: torch.optim.Optimizer) -> torch.device:
    return next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))


class Mimo(BalanceMethod):
    """MIMO (Fernando et al., "Mitigating Modality Imbalance in Multi-modal Learning via Multi-objective
    Optimization", arXiv 2511.06686): one backward pass of
    ``mimo_loss(f0, [f_m], gamma, mu) = f0 + gamma * mu * log(sum_m exp(f_m / mu))``, whose gradient is
    ``grad f0 + gamma * sum_m softmax(f / mu)_m grad f_m``.

    ``weighting_s`` is 0: the smoothed max and its weights are part of the graph, so their (tiny) cost is inside
    the backward pass, which is the point of the method.

    Args:
        gamma: weight of the smoothed max (>= 0); with a schedule, its base value.
        mu: its temperature (> 0), default :data:`mimo_ext.DEFAULT_MU`; with a schedule, its base value.
        schedule: ``"constant"`` (default), ``"warmup"`` or ``"increasing"`` (:mod:`mimo_ext.schedules`): gamma and
            mu over the run, which :meth:`start` (called by compare) sizes to the run's number of steps.
        warmup: WarmupPenalty's ramp, a fraction of training (schedule ``"warmup"`` only).
        growth: IncreasingPenalty's final / initial gamma (schedule ``"increasing"`` only).

    Without uni-modal heads (early, attention fusion) the f_m are the masked losses (:func:`mimo_ext.masked_losses`):
    the same one backward, through the stacked forward of the M + 1 input sets.
    """

    name = "mimo"
    uses_uni_losses = True

    def __init__(
        self,
        gamma: float = 1.0,
        mu: float = DEFAULT_MU,
        schedule: str = "constant",
        warmup: float | None = None,
        growth: float | None = None,
    ) -> None:
        check_gamma_mu(gamma, mu)
        self.gamma = float(gamma)
        self.mu = float(mu)
        self.schedule = schedule
        self._penalty = schedule_of(self.gamma, self.mu, schedule, warmup, growth)

    def start(self, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        if self._penalty is not None:
            self._penalty.start(None, total_steps, first_device(optimizer))

    def resume(self, steps_done: int) -> None:
        if self._penalty is not None:
            self._penalty.resume(steps_done)

    def backward(self, model: torch.nn.Module, out: BatchOutputs, optimizer: torch.optim.Optimizer) -> StepTimes:
        gamma, mu = self.gamma, self.mu
        if self._penalty is not None:
            penalty = self._penalty.advance(self.name)
            gamma, mu = penalty.gamma, penalty.mu
        timer = PhaseTimer(out.fusion_loss.device)
        with timer.backward():
            mimo_loss(out.fusion_loss, out.uni_losses, gamma=gamma, mu=mu).backward()
        return timer.times()
