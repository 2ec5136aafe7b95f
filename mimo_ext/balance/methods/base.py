"""The interface every balancing method implements, and the helpers they share.

Any fusion: a :class:`~mimo_ext.models.LateFusion` model gives the uni-modal losses ``f_m`` from its uni-modal heads;
any other model (early fusion, attention fusion, anything called as ``model(list_of_modality_tensors)``) gets them
by masking (:func:`mimo_ext.masked_losses`: the model's loss with every modality but m filled), in
:func:`forward_batch`. Every method then works on ``(f0, [f_m])`` as it is, whatever made them.

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
  code. In a model without uni-modal heads every parameter is shared: the masked f_m runs through the whole
  model (a filled modality still passes through its encoder), so every objective reaches every parameter and
  there are no task-specific ones (:class:`ParameterSplit`).
- **Uni-modal heads of methods that do not optimise f_m** (``uses_uni_losses = False``: joint, OGM-GE) are still
  trained, on their own loss with the encoder features detached: they then measure what each encoder's features
  support, the same way for every method, without sending any gradient into the encoders. Models without
  uni-modal heads have nothing to train there, and :func:`forward_batch` skips their masked forwards for these
  methods (``uni_losses=False``): joint training costs one forward.
- **Timing.** ``time.perf_counter()``, after ``torch.cuda.synchronize()`` when the losses live on a GPU.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...masking import LossFn, fill_missing, masked_mean, masked_outputs_and_losses, per_sample_losses
from ...models import AttentionFusion, EarlyFusion, LateFusion

__all__ = [
    "BalanceMethod",
    "BatchOutputs",
    "ParameterSplit",
    "PhaseTimer",
    "StepTimes",
    "deposit_grads",
    "forward_batch",
    "modality_parameters",
    "split_parameters",
    "synchronize",
    "train_uni_heads_detached",
]


@dataclass
class BatchOutputs:
    """One batch through a multi-modal model, with its losses.

    Attributes:
        features: a :class:`~mimo_ext.models.LateFusion` model's encoder outputs ``h_m``, ``[batch,
            feature_dim_m]``, attached to the graph; None for other models.
        fused_logits: the model's output on the whole inputs (late fusion: the fusion head's logits).
        uni_logits: late fusion: ``uni_heads[m](h_m)`` for each modality; other models: the model's output with
            only modality m present (the masked forwards), or ``[]`` when they were not computed.
        labels: the targets (class labels, or regression targets).
        fusion_loss: ``f0``, the loss of the fused output (a 0-dim tensor).
        uni_losses: ``f_m``, each modality's uni-modal loss (late fusion: of its head; other models: masked), or
            ``[]`` when they were not computed.
        inputs: the inputs as the model saw them (missing rows filled).
        present: per modality an ``[N]`` bool mask (False: the row lacks it), or None when every row has all.
        loss_fn: the loss (``loss_fn(output, target, reduction=...)``, :mod:`mimo_ext.masking`'s contract).
        fill: the value that stood in for missing and masked modalities.
    """

    features: list[Tensor] | None
    fused_logits: Tensor
    uni_logits: list[Tensor]
    labels: Tensor
    fusion_loss: Tensor
    uni_losses: list[Tensor]
    inputs: list[Tensor] = field(default_factory=list)
    present: list[Tensor] | None = None
    loss_fn: LossFn = F.cross_entropy
    fill: float = 0.0

    @property
    def num_modalities(self) -> int:
        return len(self.features) if self.features is not None else len(self.inputs)


def forward_batch(
    model: nn.Module,
    inputs: Sequence[Tensor],
    labels: Tensor,
    *,
    loss_fn: LossFn = F.cross_entropy,
    present: Sequence[Tensor] | None = None,
    fill: float = 0.0,
    uni_losses: bool = True,
) -> BatchOutputs:
    """Runs ``model`` on one batch and computes the losses f0 (fused) and f_m (uni-modal).

    A :class:`~mimo_ext.models.LateFusion` model: f_m from its uni-modal heads. Any other model: f_m by masking
    (:func:`mimo_ext.masking.masked_outputs_and_losses`, one stacked forward of the M + 1 input sets), or not at all
    with ``uni_losses=False`` (one forward; for the methods that do not optimise f_m).

    Args:
        loss_fn: called as ``loss_fn(output, target)`` for a mean loss, and with ``reduction="none"`` for per-sample
            losses (under ``present``, and for the masked losses); default cross-entropy.
        present: optional ``[N]`` bool mask per modality: missing rows are filled with ``fill``; f0 averages over the
            rows with any modality, f_m over the rows with modality m (zero, with zero gradient, when none has it).
    """
    filled = fill_missing(inputs, present, fill)
    any_present = torch.stack(list(present)).any(dim=0) if present is not None else None
    common = dict(inputs=filled, present=None if present is None else list(present), loss_fn=loss_fn, fill=fill)

    def loss(output: Any, mask: Tensor | None) -> Tensor:
        if present is None:
            return loss_fn(output, labels)
        return masked_mean(per_sample_losses(loss_fn, output, labels), mask)

    if isinstance(model, LateFusion):
        features = model.features(filled)
        uni_logits = [head(h) for head, h in zip(model.uni_heads, features, strict=True)]
        fused_logits = model.fusion_head(torch.cat(features, dim=1))
        masks = list(present) if present is not None else [None] * len(features)
        return BatchOutputs(
            features=features,
            fused_logits=fused_logits,
            uni_logits=uni_logits,
            labels=labels,
            fusion_loss=loss(fused_logits, any_present),
            uni_losses=[loss(z, mask) for z, mask in zip(uni_logits, masks, strict=True)],
            **common,
        )
    if not uni_losses:
        fused = model(filled)
        return BatchOutputs(None, fused, [], labels, loss(fused, any_present), [], **common)
    fused, per_modality, f0, f = masked_outputs_and_losses(model, filled, labels, loss_fn, fill=fill, present=present)
    return BatchOutputs(None, fused, per_modality, labels, f0, f, **common)


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
    """A way to turn a multi-modal model's losses (f0, f_1..f_M) into one gradient.

    Class attributes:
        name: the registry name (``mimo_ext.balance.methods.METHODS``); a user's method may leave it out (its class
            name labels its results).
        uses_uni_losses: whether the uni-modal losses f_m are objectives of the encoders (False: only f0 trains
            the encoders; the uni-modal heads then learn on detached features). Default True.

    A user's method needs only ``backward``; the harness (:func:`~mimo_ext.balance.compare`) also calls
    :meth:`make_optimizer` and :meth:`start` once per run, which a method overrides when it brings its own optimizer
    or needs to know the run's length (a penalty schedule).
    """

    name: ClassVar[str]
    uses_uni_losses: ClassVar[bool] = True

    @abstractmethod
    def backward(self, model: nn.Module, out: BatchOutputs, optimizer: torch.optim.Optimizer) -> StepTimes:
        """Runs the backward passes the method needs and leaves the combined gradient in ``.grad`` of the model's
        parameters (accumulated onto zeroed/None grads: the caller calls ``optimizer.zero_grad()`` before), ready
        for ``optimizer.step()``."""

    def make_optimizer(self, params: list[Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer | None:
        """The optimizer this method needs (e.g. a fused MIMO optimizer), or None for the harness's default
        (AdamW)."""
        return None

    def start(self, optimizer: torch.optim.Optimizer, total_steps: int) -> None:  # noqa: B027 (optional hook)
        """Called once before a run's first step with its optimizer and number of steps; nothing by default."""

    def resume(self, steps_done: int) -> None:  # noqa: B027 (optional hook)
        """Called after :meth:`start` when a run resumes from a checkpoint after ``steps_done`` steps (and after the
        optimizer's state is loaded), so that what depends on the step count (a penalty schedule) goes on from
        there; nothing by default."""

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith(("_", "last_")))
        return f"{type(self).__name__}({options})"


@dataclass
class ParameterSplit:
    """The trainable parameters of a multi-modal model by role.

    Late fusion: ``encoders`` (per modality), ``fusion_head``, ``uni_heads`` (per modality); ``shared`` empty.
    Any other model: every trainable parameter in ``shared`` (each objective, the masked f_m included, reaches all
    of them), the other fields empty (``uni_heads`` holds one empty list per modality).
    """

    encoders: list[list[Tensor]]
    fusion_head: list[Tensor]
    uni_heads: list[list[Tensor]]
    shared: list[Tensor] = field(default_factory=list)

    @property
    def heads(self) -> list[Tensor]:
        return self.fusion_head + [p for head in self.uni_heads for p in head]

    @property
    def num_modalities(self) -> int:
        return len(self.uni_heads)

    def blocks(self) -> list[tuple[list[Tensor], tuple[int, ...]]]:
        """The shared parameters in groups, each with the objectives that reach it (0: f0, m: f_m): late fusion,
        encoder m reached by f0 and f_m; any other model, one group of all parameters reached by all objectives."""
        if self.encoders:
            return [(enc, (0, m + 1)) for m, enc in enumerate(self.encoders)]
        return [(self.shared, tuple(range(self.num_modalities + 1)))]

    def own(self, objective: int) -> list[Tensor]:
        """The task-specific parameters of objective k (0: the fusion head; m: uni-modal head m)."""
        return self.fusion_head if objective == 0 else self.uni_heads[objective - 1]


def _trainable(module: torch.nn.Module) -> list[Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


def split_parameters(model: nn.Module, num_modalities: int | None = None) -> ParameterSplit:
    """The model's trainable parameters by role (:class:`ParameterSplit`).

    Args:
        num_modalities: for a model other than late fusion, M (default: ``model.num_modalities``).

    Raises ValueError if a late-fusion model has trainable parameters outside its encoders and heads (the methods
    would not know which objectives they serve), or if M is unknown.
    """
    if not isinstance(model, LateFusion):
        count = num_modalities if num_modalities is not None else getattr(model, "num_modalities", None)
        if count is None:
            raise ValueError(f"pass num_modalities: {type(model).__name__} does not say how many modalities it has")
        return ParameterSplit([], [], [[] for _ in range(count)], _trainable(model))
    split = ParameterSplit(
        encoders=[_trainable(e) for e in model.encoders],
        fusion_head=_trainable(model.fusion_head),
        uni_heads=[_trainable(h) for h in model.uni_heads],
    )
    known = {id(p) for group in (*split.encoders, split.fusion_head, *split.uni_heads) for p in group}
    others = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in known]
    if others:
        raise ValueError(
            f"trainable parameters outside the encoders and heads are not supported: {others[:5]}"
            + (" ..." if len(others) > 5 else "")
        )
    return split


# Where a modality-specific gradient lives: a parameter and the index of its part that serves that modality
# (``...``: all of it).
ModalityPart = tuple[Tensor, Any]


def modality_parameters(model: nn.Module) -> list[list[ModalityPart]]:
    """Per modality, the parameters (or parts of them) that read that modality alone, for methods that act on each
    modality's own parameters (OGM-GE): late and attention fusion, encoder m; early fusion, the columns of the
    network's first linear layer that read modality m (the only parameters of early fusion that see one modality).

    Raises:
        ValueError: a model with no per-modality parameters that can be told apart (an early-fusion network that
            does not start with a linear layer over the concatenated inputs, or any other model), naming it.
    """
    if isinstance(model, (LateFusion, AttentionFusion)):
        return [[(p, ...) for p in _trainable(encoder)] for encoder in model.encoders]
    if isinstance(model, EarlyFusion):
        first = model.network[0] if isinstance(model.network, nn.Sequential) and len(model.network) else None
        if isinstance(first, nn.Linear) and first.in_features == sum(model.input_dims):
            if not first.weight.requires_grad:
                return [[] for _ in model.input_dims]
            return [[(first.weight, (slice(None), cols))] for cols in model.input_columns()]
        raise ValueError(
            "early fusion: no per-modality parameters to act on, its network does not start with a linear layer over "
            "the concatenated inputs"
        )
    raise ValueError(
        f"{type(model).__name__}: no per-modality parameters known (late, early and attention fusion have them)"
    )


def deposit_grads(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Accumulates ``grads`` into ``params[i].grad`` through autograd (as a backward pass would: gradient hooks
    fire, an existing ``.grad`` is added to in place). A None gradient leaves its parameter untouched."""
    pairs = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
    if pairs:
        torch.autograd.backward([p for p, _ in pairs], [g.to(p.dtype) for p, g in pairs])


def train_uni_heads_detached(model: nn.Module, out: BatchOutputs, *, retain_graph: bool = False) -> None:
    """Accumulates into the uni-modal heads the gradient of ``sum_m f_m`` with respect to the heads alone.

    This equals the gradient of ``sum_m loss(uni_heads[m](h_m.detach()), y)``: a head's gradient does not depend on
    whether its input is detached. Restricting the pass to the heads (``inputs=``) sends nothing into the encoders
    and needs no second forward pass of the heads. A model without uni-modal heads: nothing to do.
    """
    if not isinstance(model, LateFusion):
        return
    heads = [p for head in model.uni_heads for p in head.parameters() if p.requires_grad]
    losses = [f for f in out.uni_losses if f.requires_grad]
    if heads and losses:
        torch.autograd.backward(torch.stack(losses).sum(), inputs=heads, retain_graph=retain_graph)
