"""CREMA-D (Cao et al., 2014): 7,442 clips of 91 actors speaking with one of six emotions; audio + one face frame.

Layout (OGM-GE's ``dataset/CramedDataset.py``, github.com/GeWu-Lab/OGM-GE_CVPR2022, the one MMPareto and
BalanceBenchmark reuse)::

    ROOT/train.csv, ROOT/test.csv   rows "clip,LABEL", e.g. "1001_DFA_ANG_XX,ANG" (OGM-GE ships both files)
    ROOT/AudioWAV/<clip>.wav        the data set's own WAV files
    ROOT/Image-01-FPS/<clip>/*.jpg  frames extracted at 1 fps (OGM-GE's video2frame-1fps.py)

Labels: ``NEU HAP SAD FEA DIS ANG`` to 0..5 (OGM-GE's ``class_dict``). Audio: OGM-GE's log spectrogram (22,050 Hz,
3 s, ``n_fft`` 512, hop 353; :mod:`.audio`). Frames: one per clip (OGM-GE's ``--fps 1``), the transforms of
:mod:`.frames`. Model: the two ResNet-18 streams and the concat fusion head (OGM-GE's defaults).

Training settings, from OGM-GE's ``main.py`` defaults: SGD, lr 1e-3, momentum 0.9, weight decay 1e-4, StepLR with step
70 and factor 0.1, batch size 64, 100 epochs. Differences from that code: a clip listed in a CSV whose WAV or frame
folder is absent is an error here (OGM-GE skips it silently; ``--option skip_missing=true`` does the same), and
frames are picked from the sorted file names by the segment rule of :func:`~.frames.pick_frames` (OGM-GE draws
indices but then reads the first ``fps`` names of ``os.listdir``).

Paper: MIMO reports 75.96% fused accuracy on CREMA-D (arXiv 2511.06686, its main table; not verified here).
"""

from __future__ import annotations

from pathlib import Path

from .audio import SpectrogramSpec
from .clips import AudioReader, clip_splits
from .layout import LayoutError, read_rows, require_dir
from .networks import two_stream_resnet18
from .recipe import PaperResult, Recipe, Settings

__all__ = ["CLASSES", "RECIPE"]

CLASSES = {"NEU": 0, "HAP": 1, "SAD": 2, "FEA": 3, "DIS": 4, "ANG": 5}
OPTIONS = dict(fps=1, frames=1, image_size=224, audio="wav", skip_missing=False, seed=0)


def _rows(path: Path):
    for number, fields in read_rows(path, "the split file", 2):
        label = fields[1].upper()
        if label not in CLASSES:
            raise LayoutError(f"{path}, line {number}: unknown label {fields[1]!r} (expected one of {list(CLASSES)})")
        yield fields[0], CLASSES[label], f"{path}, line {number}"


def load(root: Path, options: dict):
    root = require_dir(Path(root), "the CREMA-D folder")
    audio_dir = require_dir(root / "AudioWAV", "the audio folder AudioWAV")
    frame_dir = require_dir(root / f"Image-{int(options['fps']):02d}-FPS", "the frame folder")
    reader = AudioReader(options["audio"], SpectrogramSpec())
    splits = [(_rows(root / f"{s}.csv"), audio_dir, frame_dir, root / f"{s}.csv") for s in ("train", "test")]
    return clip_splits(splits, reader, options)


RECIPE = Recipe(
    name="cremad",
    title="CREMA-D",
    modalities=("audio", "visual"),
    classes=6,
    settings=Settings(epochs=100, batch_size=64, lr=1e-3, momentum=0.9, weight_decay=1e-4, lr_step=70, lr_gamma=0.1),
    paper=PaperResult(75.96, "fused_acc", "fused accuracy"),
    load=load,
    encoders=two_stream_resnet18,
    options=OPTIONS,
)
