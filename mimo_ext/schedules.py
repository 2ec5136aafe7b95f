"""Penalty schedules for MIMO's gamma and mu, in the manner of ``torch.optim.lr_scheduler``.

A schedule holds gamma and mu as one-element tensors on the training device. Given an optimizer, it puts those
tensors into every param group (``group["gamma"]``, ``group["mu"]``: the fused MIMO optimizers take one-element
tensors as hyperparameters), and :func:`mimo_ext.mimo_loss` takes the same tensors, so the loss and the optimizer
read one source of truth. ``schedule.step()`` (after ``optimizer.step()``, as an lr scheduler) writes the next
step's values into the tensors in place: the values are computed on the host from the step count (never read back
from the device, so no host synchronisation on CUDA) and written with ``fill_``; a ``torch.compile``-d loss or step
sees the same tensor objects every step, so nothing is recompiled.

Why schedules (docs/balance.md derives them): MIMO's problem is lexicographic, the worst uni-modal loss first and
the fusion loss second. ``f0 + gamma * max_m f_m`` approaches it as gamma grows (a sequential penalty method), and
the smoothed max ``S_mu`` approaches the max as mu shrinks (``max <= S_mu <= max + mu log M``); keeping the
smoothing error of the penalised objective, ``gamma * mu * log M``, fixed while gamma grows couples them:
``mu_t = mu_0 * gamma_0 / gamma_t``. :class:`IncreasingPenalty` is that path; its growth factor and shape (geometric
in training progress) are chosen, not derived. :class:`WarmupPenalty` ramps gamma up from 0 (a chosen, practical
variant); :class:`ConstantPenalty` is the fixed gamma and mu of :func:`mimo_loss`'s defaults.

Example:
    >>> from mimo_ext.optim import MIMOSGD
    >>> model = torch.nn.Linear(3, 2)
    >>> opt = MIMOSGD(model.parameters(), lr=0.1)
    >>> schedule = IncreasingPenalty(opt, total_steps=4, gamma=1.0, mu=0.2, growth=4.0)
    >>> opt.param_groups[0]["gamma"] is schedule.gamma
    True
    >>> values = []
    >>> for _ in range(4):
    ...     values.append((round(schedule.gamma.item(), 3), round(schedule.mu.item(), 3)))
    ...     schedule.step()
    >>> values
    [(1.0, 0.2), (1.414, 0.141), (2.0, 0.1), (2.828, 0.071)]
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod

import torch

from .objective import DEFAULT_MU

__all__ = [
    "SCHEDULES",
    "ConstantPenalty",
    "IncreasingPenalty",
    "PenaltySchedule",
    "WarmupPenalty",
    "make_schedule",
]


def _check_number(name: str, value, *, minimum: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be finite and {'>' if strict else '>='} {minimum:g}, got {value}")
    return float(value)


class PenaltySchedule(ABC):
    """gamma and mu as functions of the training step, held in one-element tensors (``schedule.gamma``,
    ``schedule.mu``) that the optimizer's param groups and :func:`mimo_ext.mimo_loss` share.

    Args:
        optimizer: optional; every param group's ``gamma`` and ``mu`` become this schedule's tensors (a fused
            :class:`~mimo_ext.optim.MIMOOptimizer`: its per-objective path blends with them). One gamma and mu for
            all groups: the loss has one.
        total_steps: the number of training steps (``step()`` calls) the schedule spans; after it the values stay at
            their final ones.
        gamma, mu: the base values (the schedule's own meaning, see each class), gamma >= 0, mu > 0.
        device: where the tensors live; default the optimizer's first parameter's device, else the CPU.
        dtype: of the tensors (default float32).

    ``last_step`` counts the ``step()`` calls; :meth:`values` gives the (gamma, mu) of any step, on the host.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        total_steps: int,
        gamma: float = 1.0,
        mu: float = DEFAULT_MU,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be floating point, got {dtype}")
        self.total_steps = total_steps
        self.base_gamma = _check_number("gamma", gamma, minimum=0.0, strict=False)
        self.base_mu = _check_number("mu", mu, minimum=0.0, strict=True)
        if device is None and optimizer is not None:
            device = next((p.device for g in optimizer.param_groups for p in g["params"]), None)
        device = torch.device(device if device is not None else "cpu")
        self.gamma = torch.empty(1, device=device, dtype=dtype)
        self.mu = torch.empty(1, device=device, dtype=dtype)
        self.last_step = 0
        self._write()
        self.optimizer = optimizer
        if optimizer is not None:
            for group in optimizer.param_groups:
                if "gamma" not in group or "mu" not in group:
                    raise TypeError(
                        f"optimizer {type(optimizer).__name__} has no gamma / mu in its param groups: a penalty "
                        "schedule drives a mimo_ext.optim.MIMOOptimizer (MIMOSGD, MIMOAdamW)"
                    )
            self._bind()

    def _bind(self) -> None:
        """Points every param group at this schedule's tensors, again after ``optimizer.load_state_dict``, which
        puts the checkpoint's copies in their place (a resumed run would otherwise blend with frozen values)."""
        if self.optimizer is None:
            return
        for group in self.optimizer.param_groups:
            if group["gamma"] is not self.gamma or group["mu"] is not self.mu:
                group["gamma"], group["mu"] = self.gamma, self.mu

    @abstractmethod
    def _values_at(self, progress: float) -> tuple[float, float]:
        """(gamma, mu) at ``progress`` = step / total_steps in [0, 1]."""

    def values(self, step: int | None = None) -> tuple[float, float]:
        """(gamma, mu) of ``step`` (default the current one), as host floats."""
        step = self.last_step if step is None else step
        return self._values_at(min(max(step, 0), self.total_steps) / self.total_steps)

    def step(self) -> None:
        """Advances one training step: writes its gamma and mu into the tensors, in place."""
        self.last_step += 1
        self._write()
        self._bind()

    def _write(self) -> None:
        gamma, mu = self.values()
        if not (math.isfinite(gamma) and gamma >= 0 and math.isfinite(mu) and mu > 0):
            raise ValueError(f"{type(self).__name__} gave gamma={gamma}, mu={mu} at step {self.last_step}")
        # fill_ with a host number launches a fill on the device: no synchronisation, same tensor objects.
        self.gamma.fill_(gamma)
        self.mu.fill_(mu)

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_step = int(state_dict["last_step"])
        self._write()
        self._bind()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(total_steps={self.total_steps}, gamma={self.base_gamma}, mu={self.base_mu})"


class ConstantPenalty(PenaltySchedule):
    """gamma and mu fixed (what :func:`mimo_ext.mimo_loss` does with float arguments)."""

    def _values_at(self, progress: float) -> tuple[float, float]:
        return self.base_gamma, self.base_mu


class WarmupPenalty(PenaltySchedule):
    """gamma rises linearly from 0 to ``gamma`` over the first ``warmup`` fraction of training, then stays; mu fixed.

    Chosen, not derived: the start of the penalty path at gamma 0 (joint training), as a learning-rate warm-up,
    so that the first steps, where which modality is worst is decided by the initialisation, train the fusion.

    Args:
        warmup: the fraction of ``total_steps`` the ramp takes, in (0, 1] (default 0.2).
    """

    def __init__(self, optimizer=None, *, warmup: float = 0.2, **kwargs) -> None:
        self.warmup = _check_number("warmup", warmup, minimum=0.0, strict=True)
        if self.warmup > 1:
            raise ValueError(f"warmup must be a fraction of training in (0, 1], got {warmup}")
        super().__init__(optimizer, **kwargs)

    def _values_at(self, progress: float) -> tuple[float, float]:
        return self.base_gamma * min(1.0, progress / self.warmup), self.base_mu


class IncreasingPenalty(PenaltySchedule):
    """gamma grows geometrically from ``gamma`` to ``gamma * growth`` over training, and mu shrinks so that
    ``gamma_t * mu_t`` stays ``gamma * mu``: ``gamma_t = gamma * growth ** p``, ``mu_t = mu / growth ** p`` at
    progress ``p = step / total_steps``.

    Derived (docs/balance.md): the penalty grows towards the lexicographic limit and the smoothing error of the
    penalised objective (at most ``gamma_t * mu_t * log M``) stays fixed. Chosen: the factor ``growth`` and the
    geometric shape.

    Args:
        growth: gamma's final / initial ratio, >= 1 (default 4; 1 is the constant schedule).
    """

    def __init__(self, optimizer=None, *, growth: float = 4.0, **kwargs) -> None:
        self.growth = _check_number("growth", growth, minimum=1.0, strict=False)
        super().__init__(optimizer, **kwargs)

    def _values_at(self, progress: float) -> tuple[float, float]:
        factor = self.growth**progress
        return self.base_gamma * factor, self.base_mu / factor


SCHEDULES: dict[str, type[PenaltySchedule]] = {
    "constant": ConstantPenalty,
    "warmup": WarmupPenalty,
    "increasing": IncreasingPenalty,
}


def make_schedule(name: str, optimizer: torch.optim.Optimizer | None = None, **kwargs) -> PenaltySchedule:
    """The schedule registered as ``name`` (:data:`SCHEDULES`: constant, warmup, increasing), built with
    ``optimizer`` and ``kwargs`` (``total_steps``, ``gamma``, ``mu``, and the schedule's own options)."""
    cls = SCHEDULES.get(name)
    if cls is None:
        raise ValueError(f"unknown penalty schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    return cls(optimizer, **kwargs)
