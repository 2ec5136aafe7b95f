"""AVE (Tian et al., ECCV 2018, Audio-Visual Event localisation): 4,143 10-s videos of 28 event classes; audio + video
frames, classified per video.

Layout (OGM-GE's ``dataset/dataset.py``, github.com/GeWu-Lab/OGM-GE_CVPR2022, its ``AVE`` branch; paths relative to
ROOT, each changeable with ``--option KEY=PATH``)::

    classes    = stat.txt         one class name per line (the first comma-separated field); label = its index
                                  in the sorted names
    train_list = my_train.txt     rows "<class name>,<video id>[,...]"
    test_list  = my_test.txt
    audio      = audio_spec       <video id>.pkl: the pickled spectrogram array of OGM-GE's preprocessing (read
                                  with an unpickler that builds numpy arrays only); ``--option audio=npy`` or
                                  ``audio=wav`` read <video id>.npy / .wav instead
    frames     = visual           <video id>/frame_0000N.jpg

A video id listed more than once in a split file is dropped, as OGM-GE's loader drops it (AVE videos with several
events; it toggles the id in and out, which drops ids listed twice). Frames: three per clip (OGM-GE's
``pick_num = 3``), by the segment rule of :func:`~.frames.pick_frames` (OGM-GE reads the first frame of each third
in training and testing alike). WAV input (our option): the log spectrogram of :mod:`.audio` over 10 s at 22,050 Hz.

Training settings: OGM-GE's ``main.py`` defaults (its ``--dataset AVE``): SGD, lr 1e-3, momentum 0.9, weight decay
1e-4, StepLR step 70 factor 0.1, batch 64, 100 epochs.

Paper: MIMO reports 73.69% fused accuracy on AVE (arXiv 2511.06686; not verified here).
"""

from __future__ import annotations

import collections
from pathlib import Path

from .audio import SpectrogramSpec
from .clips import AudioReader, clip_splits
from .layout import LayoutError, read_rows, require_dir
from .networks import two_stream_resnet18
from .recipe import PaperResult, Recipe, Settings

__all__ = ["RECIPE"]

CLASSES = 28
OPTIONS = dict(
    classes="stat.txt",
    train_list="my_train.txt",
    test_list="my_test.txt",
    audio_dir="audio_spec",
    frames_dir="visual",
    frames=3,
    image_size=224,
    audio="pkl",
    skip_missing=False,
    seed=0,
)


def class_names(path: Path) -> list[str]:
    names = sorted(fields[0] for _, fields in read_rows(path, "the class list", 1))
    repeated = [n for n, c in collections.Counter(names).items() if c > 1]
    if repeated:
        raise LayoutError(f"{path}: class {repeated[0]!r} is listed more than once")
    if len(names) != CLASSES:
        raise LayoutError(f"{path}: AVE has {CLASSES} classes, the class list names {len(names)}")
    return names


def _rows(path: Path, classes: list[str]):
    rows = read_rows(path, "the split file", 2)
    counts = collections.Counter(fields[1] for _, fields in rows)
    index = {name: i for i, name in enumerate(classes)}
    for number, fields in rows:
        if fields[0] not in index:
            raise LayoutError(f"{path}, line {number}: unknown label {fields[0]!r} (not in the class list)")
        if counts[fields[1]] == 1:
            yield fields[1], index[fields[0]], f"{path}, line {number}"


def load(root: Path, options: dict):
    root = require_dir(Path(root), "the AVE folder")
    classes = class_names(root / options["classes"])
    audio = require_dir(root / options["audio_dir"], "the audio folder")
    frames = require_dir(root / options["frames_dir"], "the frame folder")
    splits = [(_rows(root / options[f"{s}_list"], classes), audio, frames, root / options[f"{s}_list"])
              for s in ("train", "test")]
    reader = AudioReader(options["audio"], SpectrogramSpec(seconds=10.0, tile=1))
    return clip_splits(splits, reader, options, min_frames=int(options["frames"]))


RECIPE = Recipe(
    name="ave",
    title="AVE",
    modalities=("audio", "visual"),
    classes=CLASSES,
    settings=Settings(epochs=100, batch_size=64, lr=1e-3, momentum=0.9, weight_decay=1e-4, lr_step=70, lr_gamma=0.1),
    paper=PaperResult(73.69, "fused_acc", "fused accuracy"),
    load=load,
    encoders=two_stream_resnet18,
    options=OPTIONS,
)
