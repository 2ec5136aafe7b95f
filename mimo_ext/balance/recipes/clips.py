"""Indexing the clips of an audio-visual data set: each listed clip's audio file and frame folder checked (present,
readable header, enough frames) while the split file is read, so that a broken folder fails before training."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from .audio import SpectrogramSpec, check_spectrogram_file, check_wav, load_spectrogram_file, read_wav
from .layout import LayoutError, frame_files
from .recipe import Clip, ClipDataset

__all__ = ["AUDIO_FORMATS", "AudioReader", "clip_splits", "index_clips", "option_bool"]

# How a recipe's audio folder holds each clip: a WAV file (turned into a spectrogram here) or a spectrogram the
# public preprocessing already computed (.npy: BalanceBenchmark's Kinetics-Sounds; .pkl: OGM-GE's AVE).
AUDIO_FORMATS = ("wav", "npy", "pkl")


class AudioReader:
    """An audio path to its spectrogram tensor ``[F, T]`` (a class rather than a closure: DataLoader workers may need
    to pickle it)."""

    def __init__(self, form: str, spec: SpectrogramSpec) -> None:
        if form not in AUDIO_FORMATS:
            raise ValueError(f"audio format must be one of {list(AUDIO_FORMATS)}, got {form!r}")
        self.form, self.spec = form, spec

    def __call__(self, path: Path) -> torch.Tensor:
        if self.form == "wav":
            return self.spec(*read_wav(path))
        return torch.from_numpy(np.ascontiguousarray(load_spectrogram_file(path)))

    def check(self, path: Path) -> None:
        if self.form == "wav":
            check_wav(path)
        else:
            check_spectrogram_file(path)


def option_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes"):
        return True
    if str(value).lower() in ("0", "false", "no"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {value!r}")


def index_clips(
    rows: Iterable[tuple[str, int, str]],
    audio_dir: Path,
    frame_dir: Path,
    reader: AudioReader,
    min_frames: int,
    skip_missing: bool,
) -> tuple[list[Clip], int]:
    """The clips of ``rows`` (``(clip name, label, where it was listed)``): audio at ``audio_dir/<name>.<form>``,
    frames in ``frame_dir/<name>/`` (at least ``min_frames``). A clip whose audio file or frame folder is absent raises
    :class:`LayoutError`, or is skipped with ``skip_missing`` (the public loaders skip such rows silently); a present
    but malformed file always raises. Returns the clips and the number skipped."""
    clips, skipped = [], 0
    for name, label, where in rows:
        audio = audio_dir / f"{name}.{reader.form}"
        folder = frame_dir / name
        if skip_missing and not (audio.is_file() and folder.is_dir()):
            skipped += 1
            continue
        try:
            reader.check(audio)
            paths = frame_files(folder, "the clip's frame folder", min_frames)
        except LayoutError as e:
            raise LayoutError(f"{e} (clip {name!r}, listed in {where})") from None
        clips.append(Clip(audio, tuple(paths), label))
    return clips, skipped


def clip_splits(
    splits: Iterable[tuple[Iterable[tuple[str, int, str]], Path, Path, Path]],
    reader: AudioReader,
    options: dict,
    min_frames: int = 1,
) -> tuple[ClipDataset, ClipDataset]:
    """The train and test :class:`ClipDataset` of ``splits`` (``(rows, audio folder, frame folder, split file)``,
    train first), indexed by :func:`index_clips` with the recipe's ``options`` (``frames``, ``image_size``,
    ``skip_missing``, ``seed``)."""
    out = []
    for i, (rows, audio_dir, frame_dir, listed_in) in enumerate(splits):
        clips, _ = index_clips(rows, audio_dir, frame_dir, reader, min_frames, option_bool(options["skip_missing"]))
        if not clips:
            raise LayoutError(f"{listed_in}: none of the listed clips was found")
        train = i == 0
        out.append(
            ClipDataset(clips, reader, int(options["frames"]), int(options["image_size"]), train, int(options["seed"]))
        )
    train, test = out
    return train, test
