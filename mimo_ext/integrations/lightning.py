"""Lightning (``lightning.pytorch``): :class:`MIMOCallback` makes ``gradient_clip_val`` work with the MIMO optimizers
under mixed precision (``precision="bf16-mixed"`` / ``"16-mixed"``), as with torch.optim.AdamW.

Lightning refuses to clip for an optimizer whose ``_step_supports_amp_scaling`` is set ("does not allow for gradient
clipping because it performs unscaling of gradients internally"), even under bf16 where no GradScaler exists. The
MIMO optimizers set it so that a plain ``torch.amp.GradScaler`` hands the step the scale (the fused step unscales in
its pass). The callback turns it off for the fit's MIMO optimizers: a GradScaler then unscales ``.grad`` before the
step, as for torch.optim.AdamW, so Lightning can clip between the two. See docs/integrations.md.
"""

from __future__ import annotations

from lightning.pytorch import Callback

from ..optim import MIMOOptimizer
from ..optim.amp import set_step_unscales
from .wrappers import unwrap_optimizer

__all__ = ["MIMOCallback"]


class MIMOCallback(Callback):
    """``Trainer(..., callbacks=[MIMOCallback()])``: Lightning's precision plugins unscale and clip the MIMO
    optimizers' gradients as they do torch.optim's (the optimizers are otherwise unchanged)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        # After strategy.setup, so configure_optimizers has run; before the first step and any checkpoint restore.
        for optimizer in trainer.optimizers:
            try:
                optimizer = unwrap_optimizer(optimizer)
            except TypeError:
                continue  # another optimizer of the module
            if isinstance(optimizer, MIMOOptimizer):
                set_step_unscales(optimizer, False)
