"""Video frames for the recipes: which frames of a clip to read, and the image transforms of the public code
(torchvision's, written here with Pillow and torch; torchvision is not a dependency).

All of OGM-GE, MMPareto and BalanceBenchmark (``dataset/CramedDataset.py``, ``code/dataset/av_dataset.py``,
``balancemm/datasets/KS_dataset.py``) train with ``RandomResizedCrop(224)`` (scale 0.08 to 1, aspect ratio 3/4 to
4/3), ``RandomHorizontalFlip()``, ``ToTensor()`` and ImageNet's ``Normalize``, and test with ``Resize((224, 224))``
and the same normalisation; the frames of a clip are stacked as ``[3, T, H, W]``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .layout import LayoutError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "FrameTransform", "pick_frames", "read_frames"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pick_frames(count: int, take: int, train: bool, rng: random.Random) -> list[int]:
    """Indices of ``take`` frames out of ``count``: the frames split into ``take`` equal segments (the last one
    absorbing the remainder), one frame per segment, drawn at random in training and the middle one in testing (the
    segment rule of MMPareto's and BalanceBenchmark's loaders). Fewer frames than ``take``: frames repeat."""
    if count < 1:
        raise ValueError("a clip needs at least one frame")
    out = []
    for i in range(take):
        start = i * count // take
        stop = max((i + 1) * count // take, start + 1)
        out.append(min(rng.randrange(start, stop) if train else (start + stop - 1) // 2, count - 1))
    return out


def _random_resized_crop_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` with scale (0.08, 1) and ratio (3/4, 4/3): ten tries at a box
    of random area and aspect ratio, else the central crop at the nearest allowed ratio. ``(left, top, w, h)``."""
    area = width * height
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < 3 / 4:
        w, h = width, int(round(width / (3 / 4)))
    elif in_ratio > 4 / 3:
        h, w = height, int(round(height * (4 / 3)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class FrameTransform:
    """One frame to a normalised ``[3, size, size]`` tensor: training, random resized crop and random horizontal
    flip; testing, a plain resize. Bilinear resampling (torchvision's default for PIL images)."""

    def __init__(self, size: int = 224, train: bool = True) -> None:
        self.size, self.train = size, train
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __call__(self, image, rng: random.Random) -> torch.Tensor:
        from PIL import Image

        image = image.convert("RGB")
        if self.train:
            left, top, w, h = _random_resized_crop_box(*image.size, rng)
            image = image.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))
            if rng.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            image = image.resize((self.size, self.size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - self.mean) / self.std


def read_frames(paths: Sequence[Path], transform: FrameTransform, rng: random.Random) -> torch.Tensor:
    """The frames at ``paths``, transformed, stacked as ``[3, T, size, size]``."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for path in paths:
        try:
            with Image.open(path) as image:
                out.append(transform(image, rng))
        except (UnidentifiedImageError, OSError) as e:
            raise LayoutError(f"{path}: not a readable image ({e})") from None
    return torch.stack(out, dim=1)
