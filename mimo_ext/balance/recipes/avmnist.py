"""AV-MNIST (Vielzeuf et al., 2018, as packaged by MultiBench, Liang et al., NeurIPS 2021 datasets track): MNIST
digits paired with spoken digits; 60,000 training and 10,000 test pairs, 10 classes.

Layout (MultiBench's ``datasets/avmnist/get_data.py``, github.com/pliang279/MultiBench; the ``avmnist`` folder of
its archive)::

    ROOT/image/train_data.npy, ROOT/image/test_data.npy   [N, 784] or [N, 28, 28], pixel values 0..255
    ROOT/audio/train_data.npy, ROOT/audio/test_data.npy   [N, 112, 112] spectrograms, values 0..255
    ROOT/train_labels.npy, ROOT/test_labels.npy           [N] integer digits 0..9

Preprocessing as ``get_data.py``'s defaults: both modalities divided by 255, the image reshaped to 28x28, a channel
axis added. Networks: MultiBench's AV-MNIST late-fusion example (``examples/multimedia/avmnist_simple_late_fusion.py``):
``LeNet(1, 6, 3)`` on the image (48 features) and ``LeNet(1, 6, 5)`` on the audio (192 features), concatenated.
That example's head is an MLP (240-100-10); here the fusion head is the linear concat head of every recipe, so that
each balancing method (OGM-GE's per-modality split of the logits included) runs on the same model.

Training settings, from that example: SGD, lr 0.1, weight decay 1e-4, batch size 40 (``get_dataloader``'s default);
epochs 30 and no momentum or schedule (as we read the example; not verified here). MultiBench keeps part of the
training rows for validation; here every training row trains and the test split is reported, as in the
audio-visual recipes.

Paper: MIMO reports 42.21% audio accuracy on AV-MNIST (arXiv 2511.06686; here compared with the audio uni-modal
head's accuracy; not verified here which accuracy the paper's figure is).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .layout import LayoutError, check_labels, require_dir, require_file
from .networks import LeNet
from .recipe import PaperResult, Recipe, Settings

__all__ = ["RECIPE", "ArrayPairs"]

CLASSES = 10
OPTIONS = dict(seed=0)


class ArrayPairs(Dataset):
    """``((image [1, 28, 28], audio [1, 112, 112]), label)`` rows of AV-MNIST's arrays, scaled to [0, 1]."""

    def __init__(self, image: np.ndarray, audio: np.ndarray, labels: np.ndarray) -> None:
        self.image, self.audio, self.labels_array = image, audio, labels

    def set_epoch(self, epoch: int) -> None:
        """No augmentation: the epoch changes nothing (the runner calls it on every dataset)."""

    @property
    def labels(self) -> list[int]:
        return [int(y) for y in self.labels_array]

    def __len__(self) -> int:
        return len(self.labels_array)

    def __getitem__(self, index: int):
        image = torch.from_numpy(np.asarray(self.image[index], dtype=np.float32).reshape(1, 28, 28) / 255.0)
        audio = torch.from_numpy(np.asarray(self.audio[index], dtype=np.float32)[None] / 255.0)
        return (image, audio), int(self.labels_array[index])


def _array(path: Path, what: str) -> np.ndarray:
    require_file(path, what)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise LayoutError(f"{path}: {what} is not a readable .npy array ({e})") from None


def _split(root: Path, split: str) -> ArrayPairs:
    image = _array(root / "image" / f"{split}_data.npy", f"the {split} images")
    audio = _array(root / "audio" / f"{split}_data.npy", f"the {split} audio")
    labels_path = root / f"{split}_labels.npy"
    labels = np.asarray(_array(labels_path, f"the {split} labels"))
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise LayoutError(
            f"{labels_path}: expected a 1-D integer array, got {labels.dtype} of shape {list(labels.shape)}"
        )
    if image.shape[1:] not in ((784,), (28, 28)):
        raise LayoutError(f"{root / 'image' / f'{split}_data.npy'}: expected rows of 784 or 28x28, got "
                          f"{list(image.shape)}")
    if audio.shape[1:] != (112, 112):
        raise LayoutError(f"{root / 'audio' / f'{split}_data.npy'}: expected rows of 112x112, got {list(audio.shape)}")
    if not len(image) == len(audio) == len(labels):
        raise LayoutError(f"{root}: the {split} arrays disagree on the number of rows: images {len(image)}, audio "
                          f"{len(audio)}, labels {len(labels)}")
    check_labels(labels_path, labels.tolist(), CLASSES)
    return ArrayPairs(image, audio, labels)


def load(root: Path, options: dict):
    root = require_dir(Path(root), "the AV-MNIST folder")
    require_dir(root / "image", "the image folder")
    require_dir(root / "audio", "the audio folder")
    return _split(root, "train"), _split(root, "test")


def encoders(tiny: bool):
    channels = 2 if tiny else 6
    return [LeNet(1, channels, 3), LeNet(1, channels, 5)]


RECIPE = Recipe(
    name="avmnist",
    title="AV-MNIST",
    modalities=("image", "audio"),
    classes=CLASSES,
    settings=Settings(epochs=30, batch_size=40, lr=0.1, momentum=0.0, weight_decay=1e-4, lr_step=None),
    paper=PaperResult(42.21, "head_acc", "audio accuracy", modality=1),
    load=load,
    encoders=encoders,
    options=OPTIONS,
)
