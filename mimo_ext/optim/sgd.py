"""MIMOSGD: torch.optim.SGD's update, fed the MIMO blend of the objectives' gradients, in one fused pass."""

from __future__ import annotations

import math

import torch

from .arguments import ARGUMENT_DOCS, check_scalar_or_tensor
from .base import MIMOOptimizer

__all__ = ["MIMOSGD"]


class MIMOSGD(MIMOOptimizer):
    __doc__ = """SGD (momentum, dampening, Nesterov, L2 weight decay) over flat parameter buffers, called as
    ``torch.optim.SGD``, that blends the per-objective gradients with the MIMO weights in the same pass.

    Args:
        params: parameters or param groups; each group may set lr, momentum, dampening, weight_decay, nesterov,
            maximize, gamma and mu.
            {flat_buffers}
        {lr}
        momentum, dampening, weight_decay, nesterov, maximize: as in ``torch.optim.SGD``.
        {foreach_fused}
        {mimo}

    The step never synchronises with the host and can be captured in a CUDA graph (torch.optim.SGD has no
    ``capturable`` argument, nor has this one).

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> opt = MIMOSGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> x = torch.randn(4, 3)
        >>> f0, f1, f2 = model(x).pow(2).mean(), model(x)[:, 0].mean(), model(x)[:, 1].mean()
        >>> opt.backward(f0, [f1, f2])
        >>> opt.step()
    """.format(**ARGUMENT_DOCS)

    # As torch.optim.SGD's __setstate__ fills a loaded group that lacks them.
    _torch_group_defaults = {"foreach": None, "differentiable": False, "fused": False}
    _float_hyperparameters = ("momentum", "weight_decay", "dampening")

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        gamma: float | torch.Tensor | None = None,
        mu: float | torch.Tensor | None = None,
        diagnostics: bool = False,
        sync: bool | None = None,
        process_group=None,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            # torch.optim.SGD's flags, stored as it stores them (each then loads the other's state_dict).
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
            gamma=gamma,
            mu=mu,
        )
        super().__init__(params, defaults, diagnostics=diagnostics, sync=sync, process_group=process_group)

    def _check_algorithm(self, group: dict) -> None:
        for name in ("momentum", "weight_decay"):
            check_scalar_or_tensor(name, group[name], minimum=0.0)
        if isinstance(group["dampening"], bool) or not math.isfinite(group["dampening"]):
            raise ValueError(f"dampening must be a finite number, got {group['dampening']!r}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "nesterov momentum requires momentum > 0 and dampening == 0, got momentum "
                f"{group['momentum']} and dampening {group['dampening']}"
            )

    def _restarts_with(self, new_state: list[str]) -> bool:
        return "momentum_buffer" in new_state

    def _state_names(self, group: dict) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _call_step(self, group, param, states, grads, coefficients, lr, step, grad_scale, found_inf, compute_stats):
        return torch.ops.mimo_ext.sgd_step_.default(
            param,
            states.get("momentum_buffer", param.new_empty(0)),
            grads,
            coefficients,
            lr,
            step,
            grad_scale=grad_scale,
            found_inf=found_inf,
            weight_decay=float(group["weight_decay"]),
            momentum=float(group["momentum"]),
            dampening=float(group["dampening"]),
            nesterov=bool(group["nesterov"]),
            maximize=bool(group["maximize"]),
            compute_stats=compute_stats,
        )
