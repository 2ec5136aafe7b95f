"""Multi-modal models, each called as ``model(list_of_modality_tensors)``:

- :class:`LateFusion` (:func:`late_fusion_for`): one encoder per modality, a uni-modal head per modality, a fusion
  head on all features; its uni-modal heads give MIMO's losses ``f_m`` directly.
- :class:`EarlyFusion` (:func:`early_fusion_for`): the modalities flattened and concatenated, one network on them.
- :class:`AttentionFusion` (:func:`attention_fusion_for`): one token per modality from a small encoder, a small
  transformer encoder over the tokens (with a learned modality embedding), a head on the pooled tokens.

The last two have no uni-modal heads: their ``f_m`` come from masking (:func:`mimo_ext.masked_losses`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "FUSIONS",
    "AttentionFusion",
    "EarlyFusion",
    "LateFusion",
    "LateFusionMLP",
    "attention_fusion_for",
    "cnn1d_encoder",
    "cnn2d_encoder",
    "default_encoder",
    "early_fusion_for",
    "fusion_model_for",
    "late_fusion_for",
    "mlp_encoder",
]


class LateFusion(nn.Module):
    """Late fusion over arbitrary encoders, each mapping its modality to a ``(batch, feature_dim)`` tensor.

    Subclasses only build the encoders; the heads and the forward pass live here.
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


def _check_inputs(inputs: Sequence[torch.Tensor], expected: int) -> None:
    if len(inputs) != expected:
        raise ValueError(f"expected {expected} modality inputs, got {len(inputs)}")


class EarlyFusion(nn.Module):
    """Early fusion: each modality's sample flattened, all of them concatenated into one vector, one network on it
    (``[batch, feature_dim]`` out), then a linear head. Every parameter serves every modality.

    Attributes:
        input_dims: each modality's flattened size, in input order (the concatenation's column blocks).
    """

    def __init__(self, input_dims: Sequence[int], network: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        if len(input_dims) < 2:
            raise ValueError(f"early fusion needs at least 2 modalities, got input_dims={list(input_dims)}")
        self.input_dims = [int(d) for d in input_dims]
        self.network = network
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def num_modalities(self) -> int:
        return len(self.input_dims)

    def input_columns(self) -> list[slice]:
        """Modality m's columns of the concatenated input, for each m."""
        out, start = [], 0
        for d in self.input_dims:
            out.append(slice(start, start + d))
            start += d
        return out

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Returns the logits (or regression outputs), ``[batch, num_classes]``."""
        _check_inputs(inputs, self.num_modalities)
        return self.head(self.network(torch.cat([x.flatten(1) for x in inputs], dim=1)))


class AttentionFusion(nn.Module):
    """Attention fusion: encoder m maps modality m to one token (``[batch, feature_dim]``); a learned embedding of
    each modality is added to its token; a small pre-norm transformer encoder (self-attention over the M tokens, no
    dropout) mixes them; the tokens are mean-pooled, layer-normalised and a linear head reads them out.

    Args:
        encoders: one per modality, each ending in ``feature_dim`` features.
        feature_dim: the token width (divisible by ``heads``).
        num_classes: outputs of the head.
        layers: transformer encoder layers (default 1).
        heads: attention heads (default 4).
    """

    def __init__(
        self, encoders: Sequence[nn.Module], feature_dim: int, num_classes: int, layers: int = 1, heads: int = 4
    ) -> None:
        super().__init__()
        if len(encoders) < 2:
            raise ValueError(f"attention fusion needs at least 2 modalities, got {len(encoders)}")
        if feature_dim % heads:
            raise ValueError(f"feature_dim ({feature_dim}) must be divisible by heads ({heads})")
        self.encoders = nn.ModuleList(encoders)
        self.modality_embedding = nn.Parameter(0.02 * torch.randn(len(encoders), feature_dim))
        layer = nn.TransformerEncoderLayer(
            feature_dim, heads, dim_feedforward=2 * feature_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def num_modalities(self) -> int:
        return len(self.encoders)

    def features(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each modality's token before the transformer (its encoder's output), in input order."""
        _check_inputs(inputs, self.num_modalities)
        return [encoder(x) for encoder, x in zip(self.encoders, inputs, strict=True)]

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Returns the logits (or regression outputs), ``[batch, num_classes]``."""
        tokens = torch.stack(self.features(inputs), dim=1) + self.modality_embedding
        return self.head(self.norm(self.transformer(tokens).mean(dim=1)))


def early_fusion_for(
    modalities: Sequence[torch.Tensor],
    num_classes: int,
    network: nn.Module | None = None,
    feature_dim: int = 32,
    hidden: int = 128,
) -> EarlyFusion:
    """An :class:`EarlyFusion` model for the given modality tensors (one row per sample, any sample shape: each is
    flattened): the given ``network`` (from the concatenated flat inputs to ``[batch, feature_dim]``) or an MLP
    (:func:`mlp_encoder` with ``hidden`` units).

    Example:
        >>> model = early_fusion_for([torch.zeros(5, 7), torch.zeros(5, 13, 32), torch.zeros(5, 1, 8, 8)], 10)
        >>> tuple(model([torch.zeros(2, 7), torch.zeros(2, 13, 32), torch.zeros(2, 1, 8, 8)]).shape)
        (2, 10)
    """
    dims = [math.prod(x.shape[1:]) for x in modalities]
    if network is None:
        network = mlp_encoder(sum(dims), hidden, feature_dim)
    return EarlyFusion(dims, network, feature_dim, num_classes)


def attention_fusion_for(
    modalities: Sequence[torch.Tensor],
    num_classes: int,
    encoders: Sequence[nn.Module] | None = None,
    feature_dim: int = 32,
    layers: int = 1,
    heads: int = 4,
) -> AttentionFusion:
    """An :class:`AttentionFusion` model for the given modality tensors: the given encoders (each must output
    ``[batch, feature_dim]``), or :func:`default_encoder` for each modality's sample shape, as in
    :func:`late_fusion_for`.

    Example:
        >>> model = attention_fusion_for([torch.zeros(5, 7), torch.zeros(5, 13, 32)], 10)
        >>> tuple(model([torch.zeros(2, 7), torch.zeros(2, 13, 32)]).shape)
        (2, 10)
    """
    if encoders is None:
        encoders = [default_encoder(x.shape[1:], feature_dim) for x in modalities]
    elif len(encoders) != len(modalities):
        raise ValueError(f"got {len(encoders)} encoders for {len(modalities)} modalities")
    return AttentionFusion(encoders, feature_dim, num_classes, layers=layers, heads=heads)


# fusion name -> its model builder, each called as builder(modalities, num_classes, ...).
FUSIONS = {"late": late_fusion_for, "early": early_fusion_for, "attention": attention_fusion_for}


def fusion_model_for(
    fusion: str,
    modalities: Sequence[torch.Tensor],
    num_classes: int,
    encoders: Sequence[nn.Module] | None = None,
    feature_dim: int = 32,
) -> nn.Module:
    """The model of the named fusion (:data:`FUSIONS`) for the given modality tensors. ``encoders`` (per modality)
    apply to late and attention fusion; early fusion has one network and refuses them."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {list(FUSIONS)}, got {fusion!r}")
    if fusion == "early":
        if encoders is not None:
            raise ValueError("early fusion has one network over the concatenated inputs, not per-modality encoders")
        return early_fusion_for(modalities, num_classes, feature_dim=feature_dim)
    return FUSIONS[fusion](modalities, num_classes, encoders, feature_dim)
