"""Kinetics-Sounds (Arandjelovic & Zisserman, 2017): 31 action classes of Kinetics whose sound is informative;
10-s clips, audio + video frames.

Layout (BalanceBenchmark's ``balancemm/datasets/KS_dataset.py``, github.com/GeWu-Lab/BalanceBenchmark, and the
``KS_2023`` folder its comments name; every path below can be changed with ``--option KEY=PATH``, relative to ROOT)::

    train_list = ks_train_overlap.txt         rows "<clip> ... <label>": the clip name first, the class index
    test_list  = ks_test_overlap.txt          (0..30) last, separated by spaces or commas (OGM-GE's my_train.txt
                                              form "<clip>,10,<label>" reads the same)
    train_audio = train_spec, test_audio = test_spec          <clip>.npy: the precomputed spectrogram (the fbank of
                                              OGM-GE's data/KineticSound/process_audio.py: 128 Kaldi mel bins, 10 ms
                                              shift, 1,024 frames); ``--option audio=wav`` reads <clip>.wav instead
    train_frames = train-frames-1fps/train, test_frames = val-frames-1fps/test   <clip>/frame_0000N.jpg at 1 fps

Frames: three per clip, by the segment rule (random within each third in training, the middle in testing), as
BalanceBenchmark's ``pick_num = 3``; a clip needs at least 3 frames (BalanceBenchmark skips clips with 3 or fewer).
WAV input (our option, not in that code): the log spectrogram of :mod:`.audio` over the whole 10 s at 22,050 Hz.

Training settings: OGM-GE's ``main.py`` defaults, which it applies to every data set it names (KineticSound
included): SGD, lr 1e-3, momentum 0.9, weight decay 1e-4, StepLR step 70 factor 0.1, batch 64, 100 epochs (what
each later paper used on KS is as reported there, not verified here).

Paper: MIMO reports 69.6% fused accuracy on Kinetics-Sounds (arXiv 2511.06686; not verified here).
"""

from __future__ import annotations

from pathlib import Path

from .audio import SpectrogramSpec
from .clips import AudioReader, clip_splits
from .layout import LayoutError, read_rows, require_dir
from .networks import two_stream_resnet18
from .recipe import PaperResult, Recipe, Settings

__all__ = ["RECIPE"]

CLASSES = 31
OPTIONS = dict(
    train_list="ks_train_overlap.txt",
    test_list="ks_test_overlap.txt",
    train_audio="train_spec",
    test_audio="test_spec",
    train_frames="train-frames-1fps/train",
    test_frames="val-frames-1fps/test",
    frames=3,
    image_size=224,
    audio="npy",
    skip_missing=False,
    seed=0,
)


def indexed_rows(path: Path, classes: int):
    """``(clip, label, where)`` of a split file whose rows hold the clip name first and the class index last."""
    for number, fields in read_rows(path, "the split file", 2):
        try:
            label = int(fields[-1])
        except ValueError:
            raise LayoutError(f"{path}, line {number}: the label {fields[-1]!r} is not a class index") from None
        if not 0 <= label < classes:
            raise LayoutError(f"{path}, line {number}: unknown label {label} (expected 0 to {classes - 1})")
        yield fields[0], label, f"{path}, line {number}"


def load(root: Path, options: dict):
    root = require_dir(Path(root), "the Kinetics-Sounds folder")
    splits = []
    for s in ("train", "test"):
        listed = root / options[f"{s}_list"]
        audio = require_dir(root / options[f"{s}_audio"], f"the {s} audio folder")
        frames = require_dir(root / options[f"{s}_frames"], f"the {s} frame folder")
        splits.append((indexed_rows(listed, CLASSES), audio, frames, listed))
    reader = AudioReader(options["audio"], SpectrogramSpec(seconds=10.0, tile=1))
    return clip_splits(splits, reader, options, min_frames=int(options["frames"]))


RECIPE = Recipe(
    name="ks",
    title="Kinetics-Sounds",
    modalities=("audio", "visual"),
    classes=CLASSES,
    settings=Settings(epochs=100, batch_size=64, lr=1e-3, momentum=0.9, weight_decay=1e-4, lr_step=70, lr_gamma=0.1),
    paper=PaperResult(69.6, "fused_acc", "fused accuracy"),
    load=load,
    encoders=two_stream_resnet18,
    options=OPTIONS,
)
