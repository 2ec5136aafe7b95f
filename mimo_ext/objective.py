"""The MIMO objective: the smoothed max over uni-modal losses (SmoothMax.apply), and the loss."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from . import ops
from .distributed import all_reduce_mean, resolve_group

__all__ = ["DEFAULT_MU", "SmoothMax", "mimo_loss"]

# Temperature of the smoothed max. The paper's reference code is not public here; 0.1 is our choice: for
# cross-entropy losses (order 0.1 to 2) it puts most of the weight on the worst modality when losses differ by
# a few tenths (the lexicographic intent), while staying smooth when they are close.
DEFAULT_MU = 0.1


class SmoothMax:
    """The smoothed max, called the way an autograd Function is: ``value, weights = SmoothMax.apply(losses, mu)``
    is ``torch.ops.mimo_ext.smooth_max(losses, mu)``.

    The operator carries its own autograd, registered in C++ (csrc/smooth_max_autograd.cpp): the gradient of
    ``value`` with respect to ``losses`` is ``weights`` times the incoming gradient, first order only (a second
    derivative raises); ``weights`` is not differentiable. :func:`mimo_ext.smooth_max` is the same operator with
    its arguments checked in Python first.
    """

    @staticmethod
    def apply(losses: torch.Tensor, mu: float) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ops.mimo_ext.smooth_max.default(losses, mu)


def mimo_loss(
    f0: torch.Tensor,
    uni_losses: Sequence[torch.Tensor] | torch.Tensor,
    gamma: float | torch.Tensor = 1.0,
    mu: float | torch.Tensor = DEFAULT_MU,
    *,
    sync: bool | None = None,
    process_group=None,
) -> torch.Tensor:
    """The MIMO training loss ``f0 + gamma * mu * log(sum_m exp(f_m / mu))``.

    Its gradient is the MIMO direction ``grad f0 + gamma * sum_m w_m grad f_m`` with ``w = softmax(f / mu)``,
    so one ``backward()`` trains a late-fusion model the MIMO way.

    Args:
        f0: the fusion loss, a scalar tensor.
        uni_losses: the M >= 1 uni-modal losses, a sequence of scalar tensors or a 1-D tensor.
        gamma: weight of the smoothed max, finite and >= 0: a float, or a one-element floating tensor (a
            :class:`mimo_ext.schedules.PenaltySchedule`'s ``gamma``, shared with the optimizer).
        mu: temperature, finite and > 0 (default :data:`DEFAULT_MU`); a float or a one-element floating tensor.
            A tensor's value is checked only on the CPU (reading a device tensor would synchronise), and it is
            never read on the host: the loss is ``mu * S_1(f / mu)``, the same op at temperature 1, so a schedule
            that changes the tensor in place needs no recompilation under ``torch.compile``.
        sync: under torch.distributed, take the weights from the uni-modal losses averaged over the ranks (one
            all-reduce of M values on the device), so that with DistributedDataParallel the averaged gradient is
            the MIMO direction of the global batch. Default: on when torch.distributed is initialised with more
            than one rank; False turns it off (see :mod:`mimo_ext.distributed`).
        process_group: the group to average over (default: the world).

    Example:
        >>> f0, f1, f2 = torch.tensor(0.5), torch.tensor(1.0), torch.tensor(0.2)
        >>> round(mimo_loss(f0, [f1, f2], gamma=1.0, mu=0.1).item(), 4)
        1.5
    """
    gamma = _check_hyperparameter(gamma, "gamma", lambda v: v >= 0, "finite and >= 0")
    mu = _check_hyperparameter(mu, "mu", lambda v: v > 0, "finite and > 0")
    if not isinstance(f0, torch.Tensor) or f0.dim() != 0:
        raise ValueError(f"f0 must be a scalar (0-dim) tensor, got {_describe(f0)}")
    losses = _stack_losses(uni_losses)
    group = resolve_group(sync, process_group)
    if group is None:
        return f0 + gamma * _smooth_max(losses, mu)[0]
    # Global weights w from the ranks' mean losses; the local gradient is gamma * sum_m w_m grad f_m, so DDP's
    # gradient average is the global MIMO direction. The value is f0 + gamma * S_mu(global losses).
    value, weights = _smooth_max(all_reduce_mean(losses.detach(), group), mu)
    return f0 + gamma * (value + (weights * (losses - losses.detach())).sum())


def _smooth_max(losses: torch.Tensor, mu: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(mu, torch.Tensor):
        # S_mu(f) = mu * S_1(f / mu), with the same weights softmax(f / mu); mu is never read on the host.
        value, weights = ops.smooth_max(losses / mu, 1.0)
        return mu * value, weights
    return ops.smooth_max(losses, float(mu))


def _stack_losses(uni_losses: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    if isinstance(uni_losses, torch.Tensor):
        if uni_losses.dim() != 1 or uni_losses.numel() == 0:
            raise ValueError(f"uni_losses must be a non-empty 1-D tensor, got shape {tuple(uni_losses.shape)}")
        return uni_losses
    if not isinstance(uni_losses, Sequence) or len(uni_losses) == 0:
        raise ValueError(f"uni_losses must be a non-empty sequence of scalar tensors, got {_describe(uni_losses)}")
    for m, loss in enumerate(uni_losses):
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(f"uni_losses[{m}] must be a scalar (0-dim) tensor, got {_describe(loss)}")
    return torch.stack(list(uni_losses))


def _check_hyperparameter(value, name: str, ok, requirement: str):
    """The value as the loss uses it: a float, or a one-element floating tensor as a 0-dim view (its value checked
    on the CPU only: reading a device tensor would synchronise)."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() or value.numel() != 1:
            raise ValueError(
                f"{name} must be a float or a one-element floating tensor, got a {value.dtype} tensor of shape "
                f"{tuple(value.shape)}"
            )
        if value.device.type == "cpu" and not torch.compiler.is_compiling():
            _check_hyperparameter(value.item(), name, ok, requirement)
        return value.reshape(())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a Python float or a one-element tensor, got {type(value).__name__}")
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name} must be {requirement}, got {value}")
    return value


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    return type(x).__name__
