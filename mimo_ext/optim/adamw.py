"""MIMOAdamW: torch.optim.AdamW's update, fed the MIMO blend of the objectives' gradients, in one fused pass."""

from __future__ import annotations

import numbers

import torch

from .arguments import ARGUMENT_DOCS, check_scalar_or_tensor
from .base import MIMOOptimizer

__all__ = ["MIMOAdamW"]


class MIMOAdamW(MIMOOptimizer):
    __doc__ = """AdamW (decoupled weight decay, optional AMSGrad) over flat parameter buffers, called as
    ``torch.optim.AdamW``, that blends the per-objective gradients with the MIMO weights in the same pass.

    Args:
        params: parameters or param groups; each group may set lr, betas, eps, weight_decay, amsgrad, maximize,
            gamma and mu (and torch.optim.AdamW's other keys; ``decoupled_weight_decay=False`` raises ValueError:
            Adam's L2 weight decay is not implemented).
            {flat_buffers}
        {lr}
        betas, eps, weight_decay, amsgrad, maximize: as in ``torch.optim.AdamW``.
        {foreach_fused}
        capturable: accepted and stored likewise; the step is always capturable (it never synchronises with the
            host, and can be captured in a CUDA graph), whatever its value.
        {mimo}

    The step count is kept per parameter, as in torch.optim (see docs/optimizers.md, "Step counts, per parameter"),
    as float32 device tensors, so the bias correction needs no host value.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> opt = MIMOAdamW(model.parameters(), lr=1e-2)
        >>> loss = model(torch.randn(4, 3)).pow(2).mean()
        >>> loss.backward()
        >>> opt.step()
    """.format(**ARGUMENT_DOCS)

    # As torch.optim.Adam's __setstate__ fills a loaded group that lacks them; AdamW then forces decoupling on.
    _torch_group_defaults = {"foreach": None, "capturable": False, "differentiable": False, "fused": None}
    _torch_group_forced = {"decoupled_weight_decay": True}
    _float_hyperparameters = ("eps", "weight_decay")

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
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
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            # torch.optim.AdamW's flags, stored as it stores them (each then loads the other's state_dict).
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            gamma=gamma,
            mu=mu,
        )
        super().__init__(params, defaults, diagnostics=diagnostics, sync=sync, process_group=process_group)

    def _check_algorithm(self, group: dict) -> None:
        if not group.get("decoupled_weight_decay", True):
            # torch.optim.AdamW honours a param group's decoupled_weight_decay=False (Adam's L2 weight decay, added
            # to the gradient); the fused kernel implements the decoupled decay only.
            raise ValueError(
                f"{type(self).__name__}: decoupled_weight_decay=False (Adam's L2 weight decay) is not supported: "
                "the fused step implements AdamW's decoupled weight decay only"
            )
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair of floats, got {betas!r}")
        for i, beta in enumerate(betas):
            if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 <= beta < 1.0:
                raise ValueError(f"betas[{i}] must be in [0, 1), got {beta!r}")
        check_scalar_or_tensor("eps", group["eps"], minimum=0.0)
        check_scalar_or_tensor("weight_decay", group["weight_decay"], minimum=0.0)

    def _check_gradient(self, grad: torch.Tensor) -> None:
        if grad.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients, as torch.optim.AdamW")

    def _state_names(self, group: dict) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _call_step(self, group, param, states, grads, coefficients, lr, step, grad_scale, found_inf, compute_stats):
        beta1, beta2 = group["betas"]
        return torch.ops.mimo_ext.adamw_step_.default(
            param,
            states["exp_avg"],
            states["exp_avg_sq"],
            states.get("max_exp_avg_sq", param.new_empty(0)),
            grads,
            coefficients,
            lr,
            step,
            grad_scale=grad_scale,
            found_inf=found_inf,
            beta1=float(beta1),
            beta2=float(beta2),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            amsgrad=bool(group["amsgrad"]),
            maximize=bool(group["maximize"]),
            compute_stats=compute_stats,
        )
