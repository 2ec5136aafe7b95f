"""How a trained model is judged: fused accuracy; the masked accuracy of each modality (the model's accuracy with
only that modality present, the others filled: comparable across every fusion); for late fusion each uni-modal
head's accuracy; and a linear probe on each frozen encoder (late and attention fusion: the fair measure of how well
that encoder was trained, whatever its head saw). Regression: R^2 and MAE where classification has accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..masking import fill_missing, keep_only
from ..models import LateFusion

__all__ = [
    "METRICS",
    "accuracy",
    "evaluate",
    "evaluate_model",
    "linear_probe",
    "probe_accuracies",
    "regression_metrics",
    "standardize_like",
]

# task -> its metrics, the first the primary one; "worst" over modalities is the minimum except for "mae".
METRICS = {"classification": ("acc",), "regression": ("r2", "mae")}
LOWER_IS_BETTER = frozenset({"mae"})


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


def regression_metrics(pred: torch.Tensor, target: torch.Tensor, scale: torch.Tensor | None = None) -> dict:
    """``{"r2": ..., "mae": ...}`` of predictions ``[N, T]`` (or ``[N]``) against targets of the same shape.

    R^2 is ``1 - sum (y - y_hat)^2 / sum (y - mean y)^2`` per target column (the mean over these rows), averaged
    over the columns, as scikit-learn's ``r2_score``; it does not change when targets and predictions are
    standardised alike. MAE is the mean absolute error, per column times ``scale`` (the columns' standard deviations,
    to report standardised values in the target's units), averaged over the columns. NaN for no rows.
    """
    if len(target) == 0:
        return {"r2": math.nan, "mae": math.nan}
    pred, target = pred.double().reshape(len(pred), -1), target.double().reshape(len(target), -1)
    residual = (target - pred).square().sum(dim=0)
    total = (target - target.mean(dim=0)).square().sum(dim=0)
    r2 = 1 - residual / total
    mae = (target - pred).abs().mean(dim=0)
    if scale is not None:
        mae = mae * scale.double().reshape(-1)
    return {"r2": r2.mean().item(), "mae": mae.mean().item()}


def _metrics(output: torch.Tensor, target: torch.Tensor, task: str, scale: torch.Tensor | None) -> dict:
    if task == "regression":
        return regression_metrics(output, target, scale)
    return {"acc": accuracy(output, target) if len(target) else math.nan}


def _fused(output):
    # A late-fusion model returns (fused logits, [uni logits]); the others their output alone.
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    targets: torch.Tensor,
    *,
    task: str = "classification",
    present: Sequence[torch.Tensor] | None = None,
    fill: float = 0.0,
    scale: torch.Tensor | None = None,
) -> dict:
    """The model's metrics (:data:`METRICS` of the task) in eval mode:

    - ``fused``: on every row, missing modalities filled with ``fill``;
    - ``masked``: per modality m, with only m present (the others filled), on the rows that have m;
    - ``heads``: late fusion, per modality its uni-modal head on the rows that have m; None for other models.

    ``scale``: regression, the targets' standard deviations (MAE in the target's units).
    """
    was_training = model.training
    model.eval()
    try:
        # Separate forwards: the fused output is the plain forward's, bit for bit.
        filled = fill_missing(inputs, present, fill)
        full = model(filled)
        per_modality = [model(keep_only(filled, m, fill)) for m in range(len(filled))]
    finally:
        model.train(was_training)
    rows = [torch.ones(len(targets), dtype=torch.bool, device=targets.device)] * len(inputs)
    rows = list(present) if present is not None else rows
    masked = [_metrics(_fused(out)[r], targets[r], task, scale) for out, r in zip(per_modality, rows, strict=True)]
    result = {"fused": _metrics(_fused(full), targets, task, scale), "masked": masked, "heads": None}
    if isinstance(model, LateFusion):
        result["heads"] = [_metrics(z[r], targets[r], task, scale) for z, r in zip(full[1], rows, strict=True)]
    return result


@torch.no_grad()
def evaluate(model: LateFusion, inputs: Sequence[torch.Tensor], labels: torch.Tensor) -> tuple[float, list[float]]:
    """Fused accuracy and each uni-modal head's accuracy."""
    was_training = model.training
    model.eval()
    fused, uni = model(inputs)
    model.train(was_training)
    return accuracy(fused, labels), [accuracy(u, labels) for u in uni]


def standardize_like(
    train: torch.Tensor, test: torch.Tensor, train_present: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature standardisation of both tensors with the training rows' statistics (only the rows where
    ``train_present`` is True, when given)."""
    rows = train if train_present is None else train[train_present]
    mean = rows.mean(dim=0, keepdim=True)
    std = rows.std(dim=0, keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def linear_probe(
    train_feat: torch.Tensor,
    train_y: torch.Tensor,
    test_feat: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    steps: int = 200,
) -> float:
    """Test accuracy of an L2-regularised logistic regression fit by full-batch L-BFGS on frozen features.

    Zero init and a convex objective: the result depends on the features alone, not on any random state.
    """
    train_feat, test_feat = standardize_like(train_feat.double(), test_feat.double())
    weight = torch.zeros(train_feat.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # A small ridge keeps the optimum finite when the features separate the training classes.
        loss = F.cross_entropy(train_feat @ weight + bias, train_y) + 1e-3 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return accuracy(test_feat @ weight + bias, test_y)


@torch.no_grad()
def probe_accuracies(
    model: nn.Module,
    train: tuple[Sequence[torch.Tensor], torch.Tensor],
    test: tuple[Sequence[torch.Tensor], torch.Tensor],
    num_classes: int,
    steps: int = 200,
    *,
    train_present: Sequence[torch.Tensor] | None = None,
    test_present: Sequence[torch.Tensor] | None = None,
) -> list[float]:
    """A linear probe per modality on the model's frozen encoder features (``model.features``: late fusion's
    encoders, attention fusion's token encoders); with masks, each modality's probe trains and tests on the rows
    that have it (NaN where a side has none)."""
    was_training = model.training
    model.eval()
    train_feats = model.features(train[0])
    test_feats = model.features(test[0])
    model.train(was_training)
    out = []
    for m, (a, b) in enumerate(zip(train_feats, test_feats, strict=True)):
        ya, yb = train[1], test[1]
        if train_present is not None:
            a, ya = a[train_present[m]], ya[train_present[m]]
        if test_present is not None:
            b, yb = b[test_present[m]], yb[test_present[m]]
        out.append(linear_probe(a, ya, b, yb, num_classes, steps) if len(ya) and len(yb) else math.nan)
    return out
