"""What a recipe is (:class:`Recipe`: a data set's layout, its networks, its published training settings and the
MIMO paper's number) and the dataset every audio-visual recipe reads through (:class:`ClipDataset`)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .frames import FrameTransform, pick_frames, read_frames

__all__ = ["Clip", "ClipDataset", "PaperResult", "Recipe", "Settings", "sample_rng"]

# MIMO, arXiv 2511.06686 (the paper this library implements), its table of accuracies.
PAPER = "MIMO (arXiv 2511.06686)"


@dataclasses.dataclass(frozen=True)
class PaperResult:
    """The paper's reported number: ``value`` (percent) of ``metric`` (a key of the results: ``fused_acc``, or
    ``head_acc`` / ``masked_acc`` with ``modality``), described as ``label``."""

    value: float
    metric: str
    label: str
    modality: int | None = None


@dataclasses.dataclass(frozen=True)
class Settings:
    """The published training settings of a benchmark (each recipe's docstring cites their source)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    lr_step: int | None  # StepLR: the learning rate is multiplied by lr_gamma every lr_step epochs (None: constant)
    lr_gamma: float = 1.0


@dataclasses.dataclass(frozen=True)
class Clip:
    """One sample of an audio-visual data set: its audio file, its frame images (sorted), its class."""

    audio: Path
    frames: tuple[Path, ...]
    label: int


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The random source of one sample's augmentation: a function of (seed, epoch, index) only, so the batches do
    not depend on the number of workers or on which worker loads a sample, and a resumed run sees the same data."""
    return random.Random(f"{seed}/{epoch}/{index}")


class ClipDataset(Dataset):
    """Audio-visual clips as ``((spectrogram [F, T], frames [3, T_v, size, size]), label)``.

    ``audio`` turns an audio path into the spectrogram tensor. Frames: ``frames`` per clip chosen by
    :func:`~.frames.pick_frames`, transformed by :class:`~.frames.FrameTransform`. Call :meth:`set_epoch` before each
    epoch (the augmentation draws from the seed, the epoch and the sample's index).
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        audio: Callable[[Path], torch.Tensor],
        frames: int,
        image_size: int,
        train: bool,
        seed: int = 0,
    ) -> None:
        self.clips, self.audio, self.frames, self.train = list(clips), audio, frames, train
        self.transform = FrameTransform(image_size, train)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def labels(self) -> list[int]:
        return [c.label for c in self.clips]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int):
        clip = self.clips[index]
        rng = sample_rng(self.seed, self.epoch, index)
        chosen = [clip.frames[i] for i in pick_frames(len(clip.frames), self.frames, self.train, rng)]
        return (self.audio(clip.audio), read_frames(chosen, self.transform, rng)), clip.label


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A benchmark: ``load(root, options)`` checks the folder and returns ``(train, test)`` datasets (raising
    :class:`~.layout.LayoutError` before any training), ``encoders(tiny)`` builds fresh encoders (one per modality,
    in the datasets' order), ``settings`` are the published ones, ``paper`` the MIMO paper's number, ``options`` the
    layout variants ``--option KEY=VALUE`` may change (with their defaults)."""

    name: str
    title: str
    modalities: tuple[str, ...]
    classes: int
    settings: Settings
    paper: PaperResult
    load: Callable[[Path, dict], tuple[Dataset, Dataset]]
    encoders: Callable[[bool], list[torch.nn.Module]]
    options: dict = dataclasses.field(default_factory=dict)
    method_options: dict = dataclasses.field(default_factory=dict)
