"""The interface every balancing method implements, and the helpers they share.

A method turns one batch's losses into gradients: ``method.backward(model, out, optimizer)`` runs the backward
passes it needs and leaves the combined gradient in ``.grad``, ready for ``optimizer.step()``. It returns how long
it spent in backward passes and in its own weighting subroutine (:class:`StepTimes`), so methods can be compared
by cost as well as by result.

Conventions shared by all methods:

- **Accumulation.** Gradients are accumulated onto ``.grad`` exactly as ``loss.backward()`` would (the caller
  zeroes them first). Gradients a method computes itself are written through autograd
  (:func:`deposit_grads`), so gradient hooks fire and optimizers that watch them (the fused MIMO optimizers record
  which parameters a backward reached) see an ordinary backward. A parameter no objective reaches keeps
  ``.grad`` None.
- **Shared and task-specific parameters.** In late fusion the encoders are the parameters the objectives share
  (encoder m serves f0 and f_m); the fusion head serves f0 alone and uni-modal head m serves f_m alone. The
  multi-objective methods (MGDA, PCGrad, CAGrad, MMPareto) combine gradients over the encoders only; every head
  gets the plain gradient of its own loss, as in Sener & Koltun's Algorithm 2 and the CAGrad / MMPareto reference
  code.
- **Uni-modal heads of methods that do not optimise f_m** (``uses_uni_losses = False``: joint, OGM-GE) are still
  trained, on their own loss with the encoder features detached: they then measure what each encoder's features
  support, the same way for every method, without sending any gradient into the encoders.
- **Timing.** ``time.perf_counter()``, after ``torch.cuda.synchronize()`` when the losses live on a GPU.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ...models import LateFusion

__all__ = [
    "BalanceMethod",
    "BatchOutputs",
    "ParameterSplit",
    "PhaseTimer",
    "StepTimes",
    "deposit_grads",
    "forward_batch",
    "split_parameters",
    "synchronize",
    "train_uni_heads_detached",
]


@dataclass
class BatchOutputs:
    """One batch through a :class:`~mimo_ext.models.LateFusion` model, with its losses.

    Attributes:
        features: each encoder's output ``h_m``, ``[batch, feature_dim_m]``, attached to the graph.
        fused_logits: the fusion head's logits.
        uni_logits: ``uni_heads[m](h_m)`` for each modality.
        labels: the class labels.
        fusion_loss: ``f0``, the loss of the fused logits (a 0-dim tensor).
        uni_losses: ``f_m``, the loss of each modality's uni-modal logits.
    """

    features: list[Tensor]
    fused_logits: Tensor
    uni_logits: list[Tensor]
    labels: Tensor
    fusion_loss: Tensor
    uni_losses: list[Tensor]

    @property
    def num_modalities(self) -> int:
        return len(self.features)


def forward_batch(model: LateFusion, inputs: Sequence[Tensor], labels: Tensor) -> BatchOutputs:
    """Runs ``model`` on one batch and computes the cross-entropy losses f0 (fused) and f_m (uni-modal)."""
    features = model.features(inputs)
    uni_logits = [head(h) for head, h in zip(model.uni_heads, features, strict=True)]
    fused_logits = model.fusion_head(torch.cat(features, dim=1))
    return BatchOutputs(
        features=features,
        fused_logits=fused_logits,
        uni_logits=uni_logits,
        labels=labels,
        fusion_loss=F.cross_entropy(fused_logits, labels),
        uni_losses=[F.cross_entropy(z, labels) for z in uni_logits],
    )


@dataclass
class StepTimes:
    """Seconds one ``backward`` call spent in each phase.

    Attributes:
        backward_s: in backward passes (autograd).
        weighting_s: in the method's weighting subroutine: computing the weights, projections or modulation
            coefficients, and applying them to the gradients.
    """

    backward_s: float
    weighting_s: float

    @property
    def total_s(self) -> float:
        return self.backward_s + self.weighting_s


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (CUDA), so a host clock read afterwards measures it. No-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Accumulates wall-clock time per phase (``backward`` / ``weighting``), synchronising the device at the start
    and end of each phase so that asynchronous GPU work is charged to the phase that queued it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.backward_s = 0.0
        self.weighting_s = 0.0

    @contextmanager
    def _phase(self, attribute: str) -> Iterator[None]:
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            setattr(self, attribute, getattr(self, attribute) + time.perf_counter() - start)

    def backward(self) -> AbstractContextManager[None]:
        return self._phase("backward_s")

    def weighting(self) -> AbstractContextManager[None]:
        return self._phase("weighting_s")

    def times(self) -> StepTimes:
        return StepTimes(backward_s=self.backward_s, weighting_s=self.weighting_s)


class BalanceMethod(ABC):
    """A way to turn a late-fusion model's losses (f0, f_1..f_M) into one gradient.

    Class attributes:
        name: the registry name (``mimo_ext.balance.methods.METHODS``).
        uses_uni_losses: whether the uni-modal losses f_m are objectives of the encoders (False: only f0 trains
            the encoders; the uni-modal heads then learn on detached features).
    """

    name: ClassVar[str]
    uses_uni_losses: ClassVar[bool]

    @abstractmethod
    def backward(self, model: LateFusion, out: BatchOutputs, optimizer: torch.optim.Optimizer) -> StepTimes:
        """Runs the backward passes the method needs and leaves the combined gradient in ``.grad`` of the model's
        parameters (accumulated onto zeroed/None grads: the caller calls ``optimizer.zero_grad()`` before), ready
        for ``optimizer.step()``."""

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith(("_", "last_")))
        return f"{type(self).__name__}({options})"


@dataclass
class ParameterSplit:
    """The trainable parameters of a late-fusion model by role."""

    encoders: list[list[Tensor]]
    fusion_head: list[Tensor]
    uni_heads: list[list[Tensor]]

    @property
    def heads(self) -> list[Tensor]:
        return self.fusion_head + [p for head in self.uni_heads for p in head]


def split_parameters(model: LateFusion) -> ParameterSplit:
    """The model's trainable parameters as encoders (per modality), fusion head and uni-modal heads.

    Raises ValueError if the model has trainable parameters elsewhere: the methods would not know which
    objectives they serve.
    """

    def trainable(module: torch.nn.Module) -> list[Tensor]:
        return [p for p in module.parameters() if p.requires_grad]

    split = ParameterSplit(
        encoders=[trainable(e) for e in model.encoders],
        fusion_head=trainable(model.fusion_head),
        uni_heads=[trainable(h) for h in model.uni_heads],
    )
    known = {id(p) for group in (*split.encoders, split.fusion_head, *split.uni_heads) for p in group}
    others = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in known]
    if others:
        raise ValueError(
            f"trainable parameters outside the encoders and heads are not supported: {others[:5]}"
            + (" ..." if len(others) > 5 else "")
        )
    return split


def deposit_grads(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Accumulates ``grads`` into ``params[i].grad`` through autograd (as a backward pass would: gradient hooks
    fire, an existing ``.grad`` is added to in place). A None gradient leaves its parameter untouched."""
    pairs = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
    if pairs:
        torch.autograd.backward([p for p, _ in pairs], [g.to(p.dtype) for p, g in pairs])


def train_uni_heads_detached(model: LateFusion, out: BatchOutputs, *, retain_graph: bool = False) -> None:
    """Accumulates into the uni-modal heads the gradient of ``sum_m f_m`` with respect to the heads alone.

    This equals the gradient of ``sum_m loss(uni_heads[m](h_m.detach()), y)``: a head's gradient does not depend on
    whether its input is detached. Restricting the pass to the heads (``inputs=``) sends nothing into the encoders
    and needs no second forward pass of the heads.
    """
    heads = [p for head in model.uni_heads for p in head.parameters() if p.requires_grad]
    losses = [f for f in out.uni_losses if f.requires_grad]
    if heads and losses:
        torch.autograd.backward(torch.stack(losses).sum(), inputs=heads, retain_graph=retain_graph)
