"""Uni-modal losses for any fusion model, by masking modalities: ``f_m`` is the model's loss with every modality but m
replaced by a fill value. With them MIMO (and every balancing method built on ``(f0, [f_m])``) trains models that
have no uni-modal heads: early fusion, attention fusion, anything called as ``model(list_of_modality_tensors)``.

The loss contract, the same everywhere here: ``loss_fn(output, target, reduction="none")`` returns one loss per
sample, ``[N]`` or ``[N, ...]`` (averaged over the trailing dimensions). ``torch.nn.functional.cross_entropy``,
``mse_loss``, ``huber_loss``, ``l1_loss`` and ``binary_cross_entropy_with_logits`` all work as they are; a loss module
(``nn.CrossEntropyLoss()``) does not take ``reduction=`` in its call: wrap it, e.g.
``lambda out, y, reduction: F.cross_entropy(out, y, reduction=reduction)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "LossFn",
    "fill_missing",
    "keep_only",
    "masked_losses",
    "masked_mean",
    "masked_outputs",
    "masked_outputs_and_losses",
    "per_sample_losses",
]

LossFn = Callable[..., Tensor]


def _check(inputs: Sequence[Tensor], present: Sequence[Tensor] | None, fill: float) -> int:
    """Validates the shared arguments; returns the number of rows N."""
    if isinstance(inputs, Tensor) or not isinstance(inputs, Sequence) or len(inputs) == 0:
        raise TypeError(f"inputs must be a non-empty list of tensors, one per modality, got {type(inputs).__name__}")
    for m, x in enumerate(inputs):
        if not isinstance(x, Tensor) or x.dim() < 1:
            raise TypeError(f"inputs[{m}] must be a tensor with one row per sample, got {x!r:.80}")
    n = inputs[0].shape[0]
    sizes = [x.shape[0] for x in inputs]
    if any(s != n for s in sizes):
        raise ValueError(f"every modality needs the same number of rows, got {sizes}")
    if isinstance(fill, bool) or not isinstance(fill, numbers.Real) or not math.isfinite(fill):
        raise ValueError(f"fill must be a finite number, got {fill!r}")
    if present is not None:
        if isinstance(present, Tensor) or not isinstance(present, Sequence) or len(present) != len(inputs):
            raise ValueError(
                f"present must be a list of {len(inputs)} bool tensors (one per modality), got {present!r:.80}"
            )
        for m, (mask, x) in enumerate(zip(present, inputs, strict=True)):
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (n,):
                raise ValueError(f"present[{m}] must be a bool tensor of shape [{n}], got {mask!r:.80}")
            if mask.device != x.device:
                raise ValueError(f"present[{m}] is on {mask.device} but inputs[{m}] on {x.device}")
    return n


def _rows(mask: Tensor, x: Tensor) -> Tensor:
    """``mask`` ([N]) shaped to broadcast over ``x``'s rows."""
    return mask.view(-1, *([1] * (x.dim() - 1)))


def fill_missing(inputs: Sequence[Tensor], present: Sequence[Tensor] | None, fill: float = 0.0) -> list[Tensor]:
    """``inputs`` with every missing row (``present[m][i]`` False) replaced by ``fill``; unchanged without
    ``present``. Missing rows may hold anything, NaN included: ``torch.where`` never reads them into the result."""
    _check(inputs, present, fill)
    if present is None:
        return list(inputs)
    return [torch.where(_rows(mask, x), x, fill) for x, mask in zip(inputs, present, strict=True)]


def keep_only(
    inputs: Sequence[Tensor], m: int, fill: float = 0.0, present: Sequence[Tensor] | None = None
) -> list[Tensor]:
    """The inputs with every modality but ``m`` replaced by ``fill`` (and modality m's missing rows too)."""
    filled = fill_missing(inputs, present, fill)
    if not -len(filled) <= m < len(filled):
        raise IndexError(f"modality index {m} out of range for {len(filled)} modalities")
    m %= len(filled)
    return [x if j == m else torch.full_like(x, fill) for j, x in enumerate(filled)]


def _has_batch_statistics(model: Any) -> bool:
    """Whether a row's output depends on the other rows of the batch: batch norm in training mode."""
    return isinstance(model, nn.Module) and any(
        isinstance(module, _BatchNorm) and module.training for module in model.modules()
    )


def _split(output: Any, chunks: int) -> list[Any]:
    """``output`` (a tensor, or a tuple / list / dict of them, nested) cut into ``chunks`` equal parts along the
    batch dimension."""
    if isinstance(output, Tensor):
        if output.dim() == 0 or output.shape[0] % chunks:
            raise ValueError(
                f"the model's output of shape {tuple(output.shape)} has no batch dimension to split into {chunks} "
                "forwards: use batched=False"
            )
        return list(output.chunk(chunks))
    if isinstance(output, (tuple, list)):
        parts = [_split(o, chunks) for o in output]
        return [type(output)(p[k] for p in parts) for k in range(chunks)]
    if isinstance(output, dict):
        parts = {key: _split(o, chunks) for key, o in output.items()}
        return [{key: p[k] for key, p in parts.items()} for k in range(chunks)]
    raise TypeError(f"cannot split a model output of type {type(output).__name__}: use batched=False")


def masked_outputs(
    model: Callable[[list[Tensor]], Any],
    inputs: Sequence[Tensor],
    *,
    fill: float = 0.0,
    present: Sequence[Tensor] | None = None,
    batched: bool | None = None,
) -> tuple[Any, list[Any]]:
    """The model's output on the inputs (missing rows filled) and, for each modality m, on the inputs with only m
    kept (:func:`keep_only`): ``(output, [output_1, ..., output_M])``. See :func:`masked_losses` for ``batched``."""
    _check(inputs, present, fill)
    full = fill_missing(inputs, present, fill)
    count = len(full)
    if batched is None:
        batched = not _has_batch_statistics(model)
    if not batched:
        return model(full), [model(keep_only(full, m, fill)) for m in range(count)]
    parts = _split(model(_stacked(full, fill)), count + 1)
    return parts[0], parts[1:]


def _stacked(full: Sequence[Tensor], fill: float) -> list[Tensor]:
    """M + 1 copies of the batch along the batch dimension: copy 0 whole, copy 1 + m with only modality m kept."""
    out = []
    for j, x in enumerate(full):
        blank = torch.full_like(x, fill)
        out.append(torch.cat([x] + [x if m == j else blank for m in range(len(full))]))
    return out


def per_sample_losses(loss_fn: LossFn, output: Any, target: Tensor) -> Tensor:
    """``loss_fn(output, target, reduction="none")`` as ``[N]`` (trailing dimensions averaged), checked against the
    contract in the module docstring."""
    losses = loss_fn(output, target, reduction="none")
    n = target.shape[0]
    if not isinstance(losses, Tensor) or losses.dim() == 0 or losses.shape[0] != n:
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(
            f"loss_fn(output, target, reduction='none') must return one loss per sample ([{n}] or [{n}, ...]), got "
            f"{shape}"
        )
    return losses.flatten(1).mean(dim=1) if losses.dim() > 1 else losses


def masked_mean(losses: Tensor, mask: Tensor | None) -> Tensor:
    """The mean of ``losses`` ([N]) over the rows where ``mask`` is True (all rows without a mask). With no such row
    the result is a zero that is still a function of ``losses`` (its gradient is zero): it adds nothing to a
    gradient, and is never NaN. No host synchronisation."""
    if mask is None:
        return losses.mean()
    kept = torch.where(mask, losses, torch.zeros((), dtype=losses.dtype, device=losses.device))
    return kept.sum() / mask.sum().clamp_min(1).to(losses.dtype)


def masked_losses(
    model: Callable[[list[Tensor]], Any],
    inputs: Sequence[Tensor],
    target: Tensor,
    loss_fn: LossFn,
    *,
    fill: float = 0.0,
    present: Sequence[Tensor] | None = None,
    batched: bool | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """The fusion loss and the uni-modal losses of any multi-modal model, by masking: ``(f0, [f_1, ..., f_M])``.

    ``f0 = loss_fn(model(inputs), target)`` (mean over the rows), and ``f_m`` is the same loss with every modality
    but m replaced by ``fill``: how well the model predicts from modality m alone. Everything stays differentiable,
    so ``mimo_ext.mimo_loss(*masked_losses(...)).backward()`` and ``opt.backward(*masked_losses(...))`` (the fused
    optimizers' per-objective path) train any fusion model the MIMO way.

    Args:
        model: called as ``model(list_of_modality_tensors)``; its output (a tensor, or a tuple / list / dict of
            tensors) goes to ``loss_fn`` as it is.
        inputs: one tensor per modality, ``[N, ...]`` each.
        target: ``[N, ...]``, passed to ``loss_fn``.
        loss_fn: ``loss_fn(output, target, reduction="none")`` returning per-sample losses (module docstring), e.g.
            ``torch.nn.functional.cross_entropy`` or ``mse_loss``.
        fill: the value that stands in for a masked (or missing) modality. After per-feature standardisation pick
            0.0 (the default): it is each feature's training mean, an input that looks like an average sample
            and carries no evidence for any class or value. On raw inputs, use a value that is neutral on their scale
            (e.g. each feature's mean, after shifting it to 0).
        present: optional, one ``[N]`` bool tensor per modality (False: that modality is missing for that row; its
            values are never read, NaN is fine). Missing inputs are filled in every forward, ``f0`` included; ``f0``
            averages over the rows with at least one modality present, and ``f_m`` over the rows that have modality m.
            A batch without any row that has modality m gives ``f_m = 0`` with a zero gradient (it adds nothing to
            the update, and is never NaN; in ``mimo_loss`` its zero still enters the softmax, as the lowest loss,
            with the least weight).
        batched: True computes the M + 1 forwards as one forward over M + 1 stacked copies of the batch (the full
            inputs, then each modality alone): one call of the model and of ``loss_fn``, the fastest on small
            models, at M + 1 times one forward's activation memory. It gives the separate forwards' results only if
            the model treats rows independently: batch norm in training mode normalises over all the copies (the
            filled ones included), and any layer that mixes rows does the same, so there pass False (M + 1 separate
            forwards; also for a model whose output has no batch dimension first). Dropout is fine either way (each
            row draws its own mask). None (default): batched, unless the model has a batch-norm layer in training
            mode.

    Returns:
        ``(f0, [f_1, ..., f_M])``, 0-dim tensors.

    Example:
        >>> import torch.nn.functional as F
        >>> from mimo_ext.models import early_fusion_for
        >>> xs, y = [torch.randn(8, 5), torch.randn(8, 3)], torch.randint(0, 4, (8,))
        >>> model = early_fusion_for(xs, num_classes=4)
        >>> f0, f = masked_losses(model, xs, y, F.cross_entropy)
        >>> loss = mimo_ext.mimo_loss(f0, f)
        >>> loss.backward()
        >>> len(f), f0.dim()
        (2, 0)
    """
    _, _, f0, f = masked_outputs_and_losses(model, inputs, target, loss_fn, fill=fill, present=present, batched=batched)
    return f0, f


def masked_outputs_and_losses(
    model: Callable[[list[Tensor]], Any],
    inputs: Sequence[Tensor],
    target: Tensor,
    loss_fn: LossFn,
    *,
    fill: float = 0.0,
    present: Sequence[Tensor] | None = None,
    batched: bool | None = None,
) -> tuple[Any, list[Any], Tensor, list[Tensor]]:
    """:func:`masked_losses` with the outputs it computed them from: ``(output, [output_1..output_M], f0,
    [f_1..f_M])``, the outputs as :func:`masked_outputs` gives them (slices of the one stacked output when
    batched)."""
    n = _check(inputs, present, fill)
    if not isinstance(target, Tensor) or target.dim() == 0 or target.shape[0] != n:
        raise ValueError(f"target must be a tensor with one row per sample ({n}), got {target!r:.80}")
    if n == 0:
        raise ValueError("inputs have no rows: the losses of an empty batch are undefined")
    count = len(inputs)
    any_present = None
    if present is not None:
        any_present = torch.stack(list(present)).any(dim=0)
    masks = [any_present] + (list(present) if present is not None else [None] * count)
    if batched is None:
        batched = not _has_batch_statistics(model)
    if batched:
        output = model(_stacked(fill_missing(inputs, present, fill), fill))
        stacked_target = target.repeat(count + 1, *([1] * (target.dim() - 1)))
        losses = per_sample_losses(loss_fn, output, stacked_target).view(count + 1, n)
        values = [masked_mean(losses[k], masks[k]) for k in range(count + 1)]
        parts = _split(output, count + 1)
        full, per_modality = parts[0], parts[1:]
    else:
        full, per_modality = masked_outputs(model, inputs, fill=fill, present=present, batched=False)
        values = [
            masked_mean(per_sample_losses(loss_fn, out, target), mask)
            for out, mask in zip([full, *per_modality], masks, strict=True)
        ]
    return full, per_modality, values[0], values[1:]
