"""How a trained late-fusion model is judged: fused accuracy, each uni-modal head's accuracy, and a linear probe
on each frozen encoder (the fair measure of how well that encoder was trained, whatever its head saw)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..models import LateFusion

__all__ = ["accuracy", "evaluate", "linear_probe", "probe_accuracies", "standardize_like"]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


@torch.no_grad()
def evaluate(model: LateFusion, inputs: Sequence[torch.Tensor], labels: torch.Tensor) -> tuple[float, list[float]]:
    """Fused accuracy and each uni-modal head's accuracy."""
    was_training = model.training
    model.eval()
    fused, uni = model(inputs)
    model.train(was_training)
    return accuracy(fused, labels), [accuracy(u, labels) for u in uni]


def standardize_like(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature standardisation of both tensors with the training rows' statistics."""
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, keepdim=True).clamp_min(1e-6)
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
    model: LateFusion,
    train: tuple[Sequence[torch.Tensor], torch.Tensor],
    test: tuple[Sequence[torch.Tensor], torch.Tensor],
    num_classes: int,
    steps: int = 200,
) -> list[float]:
    """A linear probe per modality on the model's frozen encoder features."""
    was_training = model.training
    model.eval()
    train_feats = model.features(train[0])
    test_feats = model.features(test[0])
    model.train(was_training)
    return [
        linear_probe(a, train[1], b, test[1], num_classes, steps) for a, b in zip(train_feats, test_feats, strict=True)
    ]
