"""The optimizer inside the wrappers training frameworks put around it (no framework is imported here)."""

from __future__ import annotations

from torch.optim import Optimizer

from ..optim import MIMOOptimizer

__all__ = ["unwrap_optimizer"]

# The attribute under which each wrapper keeps the optimizer it wraps: accelerate's AcceleratedOptimizer (the
# Hugging Face Trainer's self.optimizer) and Lightning's LightningOptimizer.
_WRAPPED = ("optimizer", "_optimizer")


def unwrap_optimizer(optimizer) -> MIMOOptimizer:
    """The MIMO optimizer ``optimizer`` is or wraps (through wrappers of wrappers); TypeError when there is none.

    Needed where a wrapper hides the optimizer's own methods: accelerate's AcceleratedOptimizer forwards step and
    zero_grad but not ``backward`` / ``clip_grad_norm_``. (Lightning's LightningOptimizer subclasses the optimizer's
    class, so ``self.optimizers().backward(f0, f)`` works as it is.)"""
    current = optimizer
    for _ in range(8):  # a bound, not a limit met in practice: wrappers are one or two deep
        inner = next(
            (getattr(current, name) for name in _WRAPPED if isinstance(getattr(current, name, None), Optimizer)), None
        )
        if inner is None:
            break
        current = inner
    if not isinstance(current, MIMOOptimizer):
        raise TypeError(f"expected a mimo_ext optimizer or a wrapper of one, got {type(optimizer).__name__}")
    return current
