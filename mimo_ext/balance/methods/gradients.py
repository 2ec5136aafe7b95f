"""Per-objective gradients over the shared parameters, for the multi-objective methods.

:func:`objective_gradients` runs one backward pass per objective (f0, f_1, ..., f_M) and gathers each objective's
gradient with respect to the shared parameters into one row of a ``[K, P]`` matrix (K = M + 1 objectives, P shared
parameters, in the order of :meth:`~.base.ParameterSplit.blocks`).

- Late fusion: the shared parameters are the encoders, one block per modality, concatenated in ``model.encoders``
  order. f0 reaches every encoder; f_m reaches encoder m only, so row m is zero outside encoder m's block. Each pass
  also returns the gradient of its objective with respect to that objective's own head (fusion head for f0,
  uni-modal head m for f_m); those are task-specific parameters and are written unchanged by
  :meth:`ObjectiveGradients.apply`.
- Any other model (f_m from masking): one block, every trainable parameter, reached by every objective; no heads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import BatchOutputs, PhaseTimer, StepTimes, deposit_grads, split_parameters

__all__ = ["ObjectiveGradients", "objective_gradients"]


@dataclass
class ObjectiveGradients:
    """Each objective's gradient over the encoders, and the heads' own gradients.

    Attributes:
        matrix: ``[K, P]``: row 0 the gradient of f0, row m that of f_m, over the concatenated encoder parameters
            (float32, or float64 for float64 parameters).
        params: the encoder parameters, in column order.
        reached: per shared parameter, whether any objective reached it (unreached ones keep ``.grad`` None).
        blocks: per block of shared parameters (late fusion: per modality m, encoder m), its ``(start, stop)``
            column range.
        block_objectives: per block, the objectives that reach it (0: f0, m: f_m): ``(0, m)`` for encoder m in late
            fusion; all K for the single block of other models.
        head_params: the fusion head's then each uni-modal head's parameters (none without heads).
        head_grads: their gradients, each from its own objective (None where not reached).
    """

    matrix: Tensor
    params: list[Tensor]
    reached: list[bool]
    blocks: list[tuple[int, int]]
    head_params: list[Tensor]
    head_grads: list[Tensor | None]
    block_objectives: list[tuple[int, ...]] | None = None

    def gram(self) -> Tensor:
        """``[K, K]`` inner products of the objectives' encoder gradients."""
        return self.matrix @ self.matrix.T

    def spans(self) -> list[tuple[int, int]]:
        """Per encoder parameter, its ``(start, stop)`` column range."""
        out, start = [], 0
        for p in self.params:
            out.append((start, start + p.numel()))
            start += p.numel()
        return out

    def views(self, flat: Tensor) -> list[Tensor]:
        """``flat`` (``[P]``, in column order) split into one view per encoder parameter, shaped like it."""
        return [flat[lo:hi].view_as(p) for p, (lo, hi) in zip(self.params, self.spans(), strict=True)]

    def apply(self, encoder_grad: Tensor) -> None:
        """Accumulates ``encoder_grad`` (``[P]``, over the shared parameters) into their ``.grad`` (reached
        parameters only) and each head's own gradient into the heads' ``.grad``."""
        grads = [g if hit else None for g, hit in zip(self.views(encoder_grad), self.reached, strict=True)]
        deposit_grads(self.params + self.head_params, grads + self.head_grads)


def objective_gradients(model: nn.Module, out: BatchOutputs) -> ObjectiveGradients:
    """One backward pass per objective (``torch.autograd.grad`` with ``retain_graph`` for all but the last),
    gathered as described in the module docstring. Nothing is written to ``.grad``."""
    split = split_parameters(model, out.num_modalities)
    if len(out.uni_losses) != split.num_modalities:
        raise ValueError(f"got {len(out.uni_losses)} uni-modal losses for {split.num_modalities} modalities")
    groups = split.blocks()
    params = [p for group, _ in groups for p in group]
    if not params:
        raise ValueError("the model's shared parameters (encoders) have no trainable parameters")
    blocks, start = [], 0
    for group, _ in groups:
        stop = start + sum(p.numel() for p in group)
        blocks.append((start, stop))
        start = stop
    dtype = torch.float64 if params[0].dtype == torch.float64 else torch.float32
    losses = [out.fusion_loss, *out.uni_losses]
    num_objectives = len(losses)
    matrix = torch.zeros(num_objectives, start, dtype=dtype, device=params[0].device)
    reached = [False] * len(params)
    head_params: list[Tensor] = []
    head_grads: list[Tensor | None] = []
    first_index = {id(p): i for i, p in enumerate(params)}
    for k, loss in enumerate(losses):
        # The blocks this objective reaches, each with its column offset.
        reach = [(group, blocks[b][0]) for b, (group, objectives) in enumerate(groups) if k in objectives]
        shared = [p for group, _ in reach for p in group]
        head = split.own(k)
        head_params += head
        if not loss.requires_grad:
            head_grads += [None] * len(head)
            continue
        grads = torch.autograd.grad(
            loss, shared + head, retain_graph=k + 1 < num_objectives, allow_unused=True, materialize_grads=False
        )
        shared_grads, head_grads_k = grads[: len(shared)], grads[len(shared) :]
        head_grads += list(head_grads_k)
        index = 0
        for group, offset in reach:
            column = offset
            for p in group:
                g = shared_grads[index]
                if g is not None:
                    matrix[k, column : column + p.numel()].copy_(g.reshape(-1))
                    reached[first_index[id(p)]] = True
                column += p.numel()
                index += 1
    return ObjectiveGradients(
        matrix, params, reached, blocks, head_params, head_grads, [objectives for _, objectives in groups]
    )


def combine_by_gram(model: nn.Module, out: BatchOutputs, solve: Callable[[Tensor], Tensor]) -> tuple[StepTimes, Tensor]:
    """The shape MGDA, PCGrad and CAGrad share: per-objective gradients (backward time), then their K x K Gram
    matrix in float64 on the host, the K coefficients ``solve`` returns for it, and the combined gradient
    ``coefficients @ G`` written into ``.grad`` (weighting time). Returns the times and the coefficients."""
    timer = PhaseTimer(out.fusion_loss.device)
    with timer.backward():
        grads = objective_gradients(model, out)
    with timer.weighting():
        coefficients = solve(grads.gram().to("cpu", torch.float64))
        grads.apply(coefficients.to(grads.matrix.device, grads.matrix.dtype) @ grads.matrix)
    return timer.times(), coefficients
