"""Late-fusion models: one encoder per modality, a uni-modal head per modality, a fusion head on all features.

MIMO needs the uni-modal heads: their losses ``f_m`` are what the smoothed max balances.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LateFusion", "LateFusionMLP", "mlp_encoder"]


class LateFusion(nn.Module):
    """Late fusion over arbitrary encoders, each mapping its modality to a ``(batch, feature_dim)`` tensor.

    Subclasses (MLP now, CNN encoders later) only build the encoders; the heads and the forward pass live here.
    """

    def __init__(self, encoders: Sequence[nn.Module], feature_dim: int, num_classes: int) -> None:
        super().__init__()
        if len(encoders) < 2:
            raise ValueError(f"late fusion needs at least 2 modalities, got {len(encoders)}")
        self.encoders = nn.ModuleList(encoders)
        self.uni_heads = nn.ModuleList(nn.Linear(feature_dim, num_classes) for _ in encoders)
        self.fusion_head = nn.Linear(len(encoders) * feature_dim, num_classes)

    @property
    def num_modalities(self) -> int:
        return len(self.encoders)

    def features(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each modality's encoder output, in input order."""
        if len(inputs) != self.num_modalities:
            raise ValueError(f"expected {self.num_modalities} modality inputs, got {len(inputs)}")
        return [encoder(x) for encoder, x in zip(self.encoders, inputs, strict=True)]

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns ``(fusion_logits, [uni_logits_m for each modality m])``."""
        feats = self.features(inputs)
        uni_logits = [head(f) for head, f in zip(self.uni_heads, feats, strict=True)]
        return self.fusion_head(torch.cat(feats, dim=1)), uni_logits


def mlp_encoder(input_dim: int, hidden: int, feature_dim: int) -> nn.Sequential:
    """Linear-ReLU-Linear-ReLU: a two-layer encoder for a vector modality."""
    return nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, feature_dim), nn.ReLU())


class LateFusionMLP(LateFusion):
    """:class:`LateFusion` with an MLP encoder per modality (vector features such as the mfeat views)."""

    def __init__(self, input_dims: Sequence[int], num_classes: int, hidden: int = 64, feature_dim: int = 32) -> None:
        if len(input_dims) < 2:
            raise ValueError(f"late fusion needs at least 2 modalities, got input_dims={list(input_dims)}")
        super().__init__([mlp_encoder(d, hidden, feature_dim) for d in input_dims], feature_dim, num_classes)
