"""The Hugging Face Trainer (``transformers``): :class:`MIMOTrainer` adds the per-objective path to it.

The Trainer's own path already works with a MIMO optimizer (``optimizers=(MIMOAdamW(...), scheduler)`` or
``optimizer_cls_and_kwargs``): one ``loss.backward()``, e.g. of ``mimo_loss``. The per-objective path does not: the
Trainer calls ``accelerator.backward(loss)`` on one loss, wraps the optimizer in accelerate's AcceleratedOptimizer
(which has no ``backward``), and clips ``.grad`` with ``torch.nn.utils.clip_grad_norm_`` (its default
``max_grad_norm=1.0``), which on the per-objective path would scale g0 alone (the step then refuses). See
docs/integrations.md.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers import Trainer

from .wrappers import unwrap_optimizer

__all__ = ["MIMOTrainer"]


class MIMOTrainer(Trainer):
    """A ``transformers.Trainer`` that feeds a MIMO optimizer per objective when the model's output holds the
    uni-modal losses: ``loss`` (f0, the fusion loss) and ``uni_losses`` (a 1-D tensor or a sequence of 0-dim
    tensors) in the output mapping. Each training step then calls ``opt.backward(f0, uni_losses)`` on the MIMO
    optimizer inside the Trainer's wrapper, and the Trainer's clipping (``max_grad_norm``) and gradient norm use
    ``opt.clip_grad_norm_`` (the blended gradient's norm). An output without ``uni_losses`` takes the Trainer's own
    path unchanged. Everything else (accumulation, bf16 / fp16, schedulers, checkpoints and resuming) is the
    Trainer's.

    Gradient accumulation: the Trainer divides f0 by the number of accumulation steps for its backward; the
    uni-modal losses' gradients are divided likewise while their values, which set the MIMO weights, are not."""

    uni_losses_key = "uni_losses"

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        uni = outputs.get(self.uni_losses_key) if isinstance(outputs, Mapping) else None
        if model.training and uni is not None:
            self._mimo_objectives = (loss, uni)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._mimo_objectives = None
        accelerator = self.accelerator
        own = accelerator.__dict__.get("backward")
        trainer_backward = accelerator.backward
        # The Trainer's training_step ends in accelerator.backward(loss): on the per-objective path that call
        # becomes opt.backward(f0, uni_losses), everything before it (context managers, the loss scaling for
        # accumulation) staying the Trainer's.
        accelerator.backward = lambda loss, **kwargs: self._mimo_backward(trainer_backward, loss, **kwargs)
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            if own is None:
                del accelerator.backward
            else:
                accelerator.backward = own
            self._mimo_per_objective = self._mimo_objectives is not None

    def _mimo_backward(self, trainer_backward, loss: torch.Tensor, **kwargs) -> None:
        objectives = getattr(self, "_mimo_objectives", None)
        if objectives is None:
            trainer_backward(loss, **kwargs)
            return
        f0, uni = objectives
        # `loss` is f0 itself, or f0 divided by the accumulation steps (a new tensor).
        steps = 1 if loss is f0 else self.current_gradient_accumulation_steps
        uni = [_gradient_divided(f, steps) for f in (uni.unbind() if isinstance(uni, torch.Tensor) else uni)]
        unwrap_optimizer(self.optimizer).backward(loss, uni, grad_scaler=getattr(self.accelerator, "scaler", None))

    def _clip_grad_norm(self, model):
        if getattr(self, "_mimo_per_objective", False):
            return unwrap_optimizer(self.optimizer).clip_grad_norm_(self.args.max_grad_norm)
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None and getattr(self, "_mimo_per_objective", False):
            # The Trainer measures (for its logs) with accelerate's clip_grad_norm_(..., inf): the norm of .grad, which
            # is g0 alone on this path. The norm of the blended gradient the step uses instead (a factor of 1).
            grad_norm = unwrap_optimizer(self.optimizer).clip_grad_norm_(float("inf"))
        return super()._get_grad_norm(model, grad_norm=grad_norm)


def _gradient_divided(loss: torch.Tensor, steps: int) -> torch.Tensor:
    """``loss``'s value with its gradient divided by ``steps`` (the value is exactly the loss's: x - x is 0)."""
    if steps == 1:
        return loss
    value = loss.detach()
    return value + (loss - value) / steps
