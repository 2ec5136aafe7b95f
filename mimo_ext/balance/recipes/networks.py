"""The literature's networks for the recipes, written here and trained from scratch (no pretrained weights: none
can be downloaded, and the public code trains from scratch too).

- :class:`ResNet18`: the ResNet-18 of OGM-GE's ``models/backbone.py`` (github.com/GeWu-Lab/OGM-GE_CVPR2022): a
  7x7/2 stem convolution (1 input channel for the audio spectrogram, 3 for RGB frames), 3x3/2 max pooling, four
  stages of two basic blocks (64, 128, 256, 512 channels; stride 2 from the second stage), no classifier; Kaiming
  normal (fan-out) convolutions, batch-norm weights drawn from N(1, 0.02), biases 0.
- :class:`AudioEncoder`: the spectrogram ``[1, F, T]`` through the ResNet, global average pooling: 512 features.
- :class:`VisualEncoder`: frames ``[3, T, H, W]``, each through the ResNet (as a batch of ``B * T`` images), then
  average pooling over time and space (OGM-GE's ``adaptive_avg_pool3d``): 512 features.
- :class:`LeNet`: MultiBench's LeNet for AV-MNIST (``unimodals/common_models.py`` of github.com/pliang279/MultiBench):
  a 5x5 convolution, then ``additional_layers`` 3x3 convolutions doubling the channels, each followed by batch norm,
  ReLU and 2x2 max pooling; the image encoder is ``LeNet(1, 6, 3)`` (48 features), the audio ``LeNet(1, 6, 5)``
  (192 features), as in its AV-MNIST examples.
- Fusion heads (OGM-GE's ``models/fusion_modules.py``): ``concat`` (one linear layer on the concatenated features),
  ``sum`` (one linear layer per modality, summed), ``film`` (the first modality's features give a scale and shift
  of the second's, then a linear layer) and ``gated`` (a sigmoid gate from the first modality multiplies the
  second's projection, then a linear layer). Each takes the concatenated features, so the balancing methods see
  the usual late-fusion model (:class:`mimo_ext.models.LateFusion`: encoders, uni-modal heads, fusion head).

``width`` (the channels of the first stage, 64 in the papers) and ``blocks`` (per stage, 2 in ResNet-18) exist for
the tests' tiny encoders, which take the same code path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...models import LateFusion

__all__ = [
    "FUSION_HEADS",
    "AudioEncoder",
    "LeNet",
    "RecipeModel",
    "ResNet18",
    "VisualEncoder",
    "fusion_head",
    "two_stream_resnet18",
]


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """ResNet-18 without its classifier, ``[B, in_channels, H, W]`` to ``[B, 8 * width, H / 32, W / 32]``."""

    def __init__(self, in_channels: int, width: int = 64, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, inplanes = [], width
        for i in range(4):
            planes = width * 2**i
            layers = [BasicBlock(inplanes, planes, 1 if i == 0 else 2)]
            layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            inplanes = planes
        self.stages = nn.Sequential(*stages)
        self.out_features = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, mean=1.0, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class AudioEncoder(nn.Module):
    """A spectrogram ``[B, F, T]`` (or ``[B, 1, F, T]``) to ``[B, 8 * width]`` features."""

    def __init__(self, width: int = 64, blocks: int = 2) -> None:
        super().__init__()
        self.net = ResNet18(1, width, blocks)
        self.out_features = self.net.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.net(x).mean(dim=(2, 3))


class VisualEncoder(nn.Module):
    """Frames ``[B, 3, T, H, W]`` to ``[B, 8 * width]`` features, averaged over frames and space."""

    def __init__(self, width: int = 64, blocks: int = 2) -> None:
        super().__init__()
        self.net = ResNet18(3, width, blocks)
        self.out_features = self.net.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.net(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        return y.view(b, t, *y.shape[1:]).mean(dim=(1, 3, 4))


class LeNet(nn.Module):
    """MultiBench's LeNet: ``[B, in_channels, H, W]`` (or ``[B, H, W]``) to ``[B, channels * 2**additional_layers]``
    (the last map is pooled to 1x1 for inputs of 28x28 with 3 extra layers or 112x112 with 5; averaged otherwise)."""

    def __init__(self, in_channels: int, channels: int, additional_layers: int) -> None:
        super().__init__()
        convs = [nn.Conv2d(in_channels, channels, 5, padding=2, bias=False)]
        norms = [nn.BatchNorm2d(channels)]
        for i in range(additional_layers):
            convs.append(nn.Conv2d(channels * 2**i, channels * 2 ** (i + 1), 3, padding=1, bias=False))
            norms.append(nn.BatchNorm2d(channels * 2 ** (i + 1)))
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        self.out_features = channels * 2**additional_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.max_pool2d(F.relu(norm(conv(x))), 2) if min(x.shape[-2:]) >= 2 else F.relu(norm(conv(x)))
        return x.mean(dim=(2, 3))


class _Split(nn.Module):
    """A head over the concatenated features that needs each modality's block."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = list(dims)

    def blocks(self, h: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(h, self.dims, dim=1))


class SumHead(_Split):
    """``sum_m fc_m(h_m)``. ``weight`` and ``bias`` are those of the equivalent linear layer on the concatenated
    features (the per-modality weights side by side, the biases summed), so OGM-GE's split of the fused logits into
    per-modality shares applies as it does to ``concat``."""

    def __init__(self, dims: Sequence[int], classes: int) -> None:
        super().__init__(dims)
        self.fcs = nn.ModuleList(nn.Linear(d, classes) for d in dims)

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([fc.weight for fc in self.fcs], dim=1)

    @property
    def bias(self) -> torch.Tensor:
        return torch.stack([fc.bias for fc in self.fcs]).sum(dim=0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return sum(fc(x) for fc, x in zip(self.fcs, self.blocks(h), strict=True))


class FiLMHead(_Split):
    """FiLM (Perez et al., 2018) as OGM-GE writes it: ``fc_out(gamma(h_0) * h_1 + beta(h_0))``."""

    def __init__(self, dims: Sequence[int], classes: int) -> None:
        super().__init__(dims)
        if len(dims) != 2:
            raise ValueError(f"film fusion takes 2 modalities, got {len(dims)}")
        self.fc = nn.Linear(dims[0], 2 * dims[1])
        self.fc_out = nn.Linear(dims[1], classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x, y = self.blocks(h)
        gamma, beta = self.fc(x).chunk(2, dim=1)
        return self.fc_out(gamma * y + beta)


class GatedHead(_Split):
    """Gated fusion (Kiela et al., 2018) as OGM-GE writes it: ``fc_out(sigmoid(fc_x(h_0)) * fc_y(h_1))``."""

    def __init__(self, dims: Sequence[int], classes: int, hidden: int = 512) -> None:
        super().__init__(dims)
        if len(dims) != 2:
            raise ValueError(f"gated fusion takes 2 modalities, got {len(dims)}")
        self.fc_x, self.fc_y = nn.Linear(dims[0], hidden), nn.Linear(dims[1], hidden)
        self.fc_out = nn.Linear(hidden, classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x, y = self.blocks(h)
        return self.fc_out(torch.sigmoid(self.fc_x(x)) * self.fc_y(y))


FUSION_HEADS = ("concat", "sum", "film", "gated")
# Heads whose logits split into per-modality shares (OGM-GE's confidence needs that split).
LINEAR_HEADS = frozenset({"concat", "sum"})


def fusion_head(name: str, dims: Sequence[int], classes: int) -> nn.Module:
    if name == "concat":
        return nn.Linear(sum(dims), classes)
    if name == "sum":
        return SumHead(dims, classes)
    if name == "film":
        return FiLMHead(dims, classes)
    if name == "gated":
        return GatedHead(dims, classes)
    raise ValueError(f"fusion must be one of {list(FUSION_HEADS)}, got {name!r}")


class RecipeModel(LateFusion):
    """Late fusion over encoders of different output sizes: encoder m (``out_features`` attribute), a linear
    uni-modal head per modality, and the named fusion head over the concatenated features."""

    def __init__(self, encoders: Sequence[nn.Module], classes: int, fusion: str = "concat") -> None:
        dims = [int(e.out_features) for e in encoders]
        super().__init__(encoders, dims[0], classes)
        self.uni_heads = nn.ModuleList(nn.Linear(d, classes) for d in dims)
        self.fusion_head = fusion_head(fusion, dims, classes)
        self.fusion = fusion


def two_stream_resnet18(tiny: bool = False) -> list[nn.Module]:
    """The audio-visual recipes' encoders: audio ResNet-18, visual ResNet-18 (``tiny``: 4 channels in the first stage
    and one block per stage, the tests' stand-in through the same code)."""
    width, blocks = (4, 1) if tiny else (64, 2)
    return [AudioEncoder(width, blocks), VisualEncoder(width, blocks)]
