"""Late-fusion models: one encoder per modality, a uni-modal head per modality, a fusion head on all features.

MIMO needs the uni-modal heads: their losses ``f_m`` are what the smoothed max balances.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "LateFusion",
    "LateFusionMLP",
    "cnn1d_encoder",
    "cnn2d_encoder",
    "default_encoder",
    "late_fusion_for",
    "mlp_encoder",
]


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


def cnn1d_encoder(channels: int, feature_dim: int, width: int = 32) -> nn.Sequential:
    """Two 1-D convolutions over time, global average pooling, a linear map: for ``[channels, length]`` sequences
    such as MFCC frames."""
    return nn.Sequential(
        nn.Conv1d(channels, width, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(width, feature_dim),
        nn.ReLU(),
    )


def cnn2d_encoder(channels: int, height: int, width: int, feature_dim: int, filters: int = 16) -> nn.Sequential:
    """A small CNN for ``[channels, height, width]`` images: two 3x3 convolutions (with 2x2 pooling after each when
    the image is at least 16 pixels high), pooled to 4x4, then a linear map."""
    pool = height >= 16 and width >= 16
    layers: list[nn.Module] = [nn.Conv2d(channels, filters, 3, padding=1), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Conv2d(filters, 2 * filters, 3, padding=1), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2 * filters * 16, feature_dim), nn.ReLU()]
    return nn.Sequential(*layers)


def default_encoder(sample_shape: Sequence[int], feature_dim: int = 32, hidden: int = 64) -> nn.Module:
    """The encoder for one sample of a modality, chosen by its shape: ``[D]`` an MLP, ``[C, L]`` a 1-D CNN,
    ``[C, H, W]`` a small 2-D CNN."""
    shape = tuple(int(d) for d in sample_shape)
    if len(shape) == 1:
        return mlp_encoder(shape[0], hidden, feature_dim)
    if len(shape) == 2:
        return cnn1d_encoder(shape[0], feature_dim)
    if len(shape) == 3:
        return cnn2d_encoder(*shape, feature_dim)
    raise ValueError(f"no default encoder for samples of shape {list(shape)}: pass encoders= (1 to 3 dimensions)")


def late_fusion_for(
    modalities: Sequence[torch.Tensor],
    num_classes: int,
    encoders: Sequence[nn.Module] | None = None,
    feature_dim: int = 32,
) -> LateFusion:
    """A :class:`LateFusion` model for the given modality tensors (one row per sample): the given encoders (each
    must output ``[batch, feature_dim]``), or :func:`default_encoder` for each modality's sample shape.

    Example:
        >>> model = late_fusion_for([torch.zeros(5, 7), torch.zeros(5, 13, 32), torch.zeros(5, 1, 8, 8)], 10)
        >>> fused, uni = model([torch.zeros(2, 7), torch.zeros(2, 13, 32), torch.zeros(2, 1, 8, 8)])
        >>> tuple(fused.shape), [tuple(u.shape) for u in uni]
        ((2, 10), [(2, 10), (2, 10), (2, 10)])
    """
    if encoders is None:
        encoders = [default_encoder(x.shape[1:], feature_dim) for x in modalities]
    elif len(encoders) != len(modalities):
        raise ValueError(f"got {len(encoders)} encoders for {len(modalities)} modalities")
    return LateFusion(encoders, feature_dim, num_classes)
