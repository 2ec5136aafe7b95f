"""Fused MIMO optimizers over flattened parameter buffers: :class:`MIMOSGD` and :class:`MIMOAdamW`.

Use them as torch.optim.SGD / AdamW. Feed them either per objective (``opt.backward(f0, [f1, ..., fM])`` then
``opt.step()``: the gradients are blended with the MIMO weights inside the fused step) or with one backward of
:func:`mimo_ext.mimo_loss` (then ``opt.step()``). See :mod:`mimo_ext.optim.base` for the details.
"""

from .adamw import MIMOAdamW
from .base import MIMOOptimizer, StepDiagnostics
from .reference import adamw_step_reference, sgd_step_reference
from .sgd import MIMOSGD

__all__ = ["MIMOAdamW", "MIMOOptimizer", "MIMOSGD", "StepDiagnostics", "adamw_step_reference", "sgd_step_reference"]
