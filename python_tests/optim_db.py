"""The table of optimizer configurations the optimizer and reliability suites iterate (PyTorch's optim_db idea):
each names our class, torch.optim's class and the constructor keywords both take, so that a configuration added
here is run by every suite that iterates the table (the user scenarios against torch.optim, both gradient paths,
determinism, the optimizer property)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mimo_ext.optim import MIMOSGD, MIMOAdamW, MIMOOptimizer


@dataclass(frozen=True)
class OptimConfig:
    """One optimizer configuration: our class, torch's class and the keywords both are built with."""

    name: str
    mimo_cls: type[MIMOOptimizer]
    torch_cls: type[torch.optim.Optimizer]
    kwargs: dict = field(default_factory=dict)

    @property
    def algorithm(self) -> str:
        return "sgd" if self.mimo_cls is MIMOSGD else "adamw"

    def mimo(self, params, **extra) -> MIMOOptimizer:
        """Our optimizer with this configuration (``extra``: gamma, mu, diagnostics, ...)."""
        return self.mimo_cls(params, **self.kwargs, **extra)

    def torch(self, params, **extra) -> torch.optim.Optimizer:
        """torch.optim's optimizer with this configuration, on its plain per-tensor loop (the reference)."""
        return self.torch_cls(params, foreach=False, **self.kwargs, **extra)


OPTIM_DB = [
    OptimConfig("adamw-default", MIMOAdamW, torch.optim.AdamW),
    OptimConfig("adamw-amsgrad-wd", MIMOAdamW, torch.optim.AdamW, {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    OptimConfig("adamw-maximize", MIMOAdamW, torch.optim.AdamW, {"lr": 0.01, "maximize": True}),
    OptimConfig("adamw-betas-eps", MIMOAdamW, torch.optim.AdamW, {"lr": 0.02, "betas": (0.8, 0.95), "eps": 1e-6}),
    OptimConfig("sgd-plain", MIMOSGD, torch.optim.SGD, {"lr": 0.1}),
    OptimConfig("sgd-momentum-wd", MIMOSGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    OptimConfig("sgd-nesterov", MIMOSGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    OptimConfig("sgd-dampening", MIMOSGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.8, "dampening": 0.3}),
]
CONFIGS = {config.name: config for config in OPTIM_DB}

# One configuration per algorithm with every state buffer in use (momentum; exp_avg, exp_avg_sq and
# max_exp_avg_sq) and weight decay: for the tests that need "an SGD and an AdamW" rather than the whole table.
OPTIMIZERS = {"sgd": CONFIGS["sgd-momentum-wd"], "adamw": CONFIGS["adamw-amsgrad-wd"]}
