"""Tiny data sets in the exact layouts the recipes read (real WAV files, JPEG frames, CSV and split files, ``.npy``
and ``.pkl`` arrays), for the tests and for a smoke run of the command without the real data::

    python -c "from mimo_ext.balance.recipes.fixtures import make_cremad; print(make_cremad('/tmp/cremad'))"
    python -m mimo_ext.balance.recipes cremad --root /tmp/cremad --tiny --epochs 1 --option image_size=32

It lives in the package rather than in the tests because it is the layouts' executable specification: the docs
point to it, and a user can compare their prepared folder with what it writes. Each class gets a signal of its own
(a tone in the audio, a colour in the frames), so a model can learn something in an epoch or two; everything is
drawn from a fixed seed.
"""

from __future__ import annotations

import pickle
import wave
from pathlib import Path

import numpy as np

from .ave import CLASSES as AVE_CLASSES
from .cremad import CLASSES as CREMAD_CLASSES
from .kinetics_sounds import CLASSES as KS_CLASSES

__all__ = ["make_ave", "make_avmnist", "make_cremad", "make_ks", "write_jpeg", "write_wav"]


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """Mono 16-bit PCM; ``samples`` in [-1, 1]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ints = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(ints.tobytes())


def write_jpeg(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(path, quality=95)


def tone(label: int, rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A class's tone (220 Hz times 1.25 per class) with a little noise."""
    t = np.arange(int(rate * seconds)) / rate
    return 0.5 * np.sin(2 * np.pi * 220 * 1.25**label * t) + 0.01 * rng.standard_normal(len(t))


def _frames(folder: Path, label: int, classes: int, count: int, rng: np.random.Generator, size: int = 24) -> None:
    hue = np.array([255 * label / classes, 255 * (1 - label / classes), 128.0])
    for i in range(count):
        image = np.clip(hue + 20 * rng.standard_normal((size, size, 3)), 0, 255)
        write_jpeg(folder / f"frame_{i + 1:05d}.jpg", image)


def _per_split(train: int, test: int):
    return (("train", train), ("test", test))


def make_cremad(root, train_per_class: int = 3, test_per_class: int = 1, rate: int = 16000, seed: int = 0) -> Path:
    """CREMA-D as OGM-GE reads it: ``train.csv`` / ``test.csv``, ``AudioWAV/<clip>.wav`` (16 kHz, as the data set's),
    ``Image-01-FPS/<clip>/frame_0000N.jpg`` (two frames per clip)."""
    root, rng, clip = Path(root), np.random.default_rng(seed), 1001
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in _per_split(train_per_class, test_per_class):
        rows = []
        for name, label in CREMAD_CLASSES.items():
            for _ in range(per_class):
                clip_name = f"{clip}_DFA_{name}_XX"
                clip += 1
                write_wav(root / "AudioWAV" / f"{clip_name}.wav", tone(label, rate, 0.6, rng), rate)
                _frames(root / "Image-01-FPS" / clip_name, label, len(CREMAD_CLASSES), 2, rng)
                rows.append(f"{clip_name},{name}\n")
        (root / f"{split}.csv").write_text("".join(rows))
    return root


def _spectrogram(label: int, rng: np.random.Generator, shape=(48, 16)) -> np.ndarray:
    spec = rng.standard_normal(shape).astype(np.float32) * 0.1
    spec[label % shape[0]] += 2.0  # the class's band
    return spec


def make_ks(root, train_per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> Path:
    """Kinetics-Sounds as BalanceBenchmark reads it: ``ks_train_overlap.txt`` / ``ks_test_overlap.txt`` ("<clip>
    <label>"), ``train_spec/`` and ``test_spec/`` (``<clip>.npy``), ``train-frames-1fps/train/`` and
    ``val-frames-1fps/test/`` (four frames per clip)."""
    root, rng = Path(root), np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    folders = {"train": ("train_spec", "train-frames-1fps/train"), "test": ("test_spec", "val-frames-1fps/test")}
    for split, per_class in _per_split(train_per_class, test_per_class):
        rows = []
        for label in range(KS_CLASSES):
            for k in range(per_class):
                name = f"clip{label:02d}{split[:2]}{k}_000010_000020"
                (root / folders[split][0]).mkdir(parents=True, exist_ok=True)
                np.save(root / folders[split][0] / f"{name}.npy", _spectrogram(label, rng))
                _frames(root / folders[split][1] / name, label, KS_CLASSES, 4, rng)
                rows.append(f"{name} {label}\n")
        (root / f"ks_{split}_overlap.txt").write_text("".join(rows))
    return root


def ave_class_names() -> list[str]:
    return [f"Event{i:02d}" for i in range(AVE_CLASSES)]


def make_ave(root, train_per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> Path:
    """AVE as OGM-GE reads it: ``stat.txt`` (the 28 class names), ``my_train.txt`` / ``my_test.txt`` ("<class>,<id>"),
    ``audio_spec/<id>.pkl`` (a pickled numpy spectrogram), ``visual/<id>/frame_0000N.jpg`` (three frames). The last
    training id is listed twice, with two classes (a video with two events): the loader must drop it."""
    root, rng = Path(root), np.random.default_rng(seed)
    names = ave_class_names()
    root.mkdir(parents=True, exist_ok=True)
    (root / "stat.txt").write_text("".join(f"{n}\n" for n in names))
    for split, per_class in _per_split(train_per_class, test_per_class):
        rows = []
        for label, cls in enumerate(names):
            for k in range(per_class):
                vid = f"v{label:02d}{split[:2]}{k}"
                (root / "audio_spec").mkdir(parents=True, exist_ok=True)
                with open(root / "audio_spec" / f"{vid}.pkl", "wb") as f:
                    pickle.dump(_spectrogram(label, rng), f)
                _frames(root / "visual" / vid, label, AVE_CLASSES, 3, rng)
                rows.append(f"{cls},{vid}\n")
        if split == "train":
            rows.append(f"{names[0]},{vid}\n")
        (root / f"my_{split}.txt").write_text("".join(rows))
    return root


def make_avmnist(root, train: int = 40, test: int = 20, seed: int = 0) -> Path:
    """AV-MNIST as MultiBench ships it: ``image/{train,test}_data.npy`` ([N, 784], 0..255), ``audio/..._data.npy``
    ([N, 112, 112], 0..255), ``{train,test}_labels.npy``."""
    root, rng = Path(root), np.random.default_rng(seed)
    (root / "image").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("test", test)):
        labels = np.arange(n) % 10
        image = rng.uniform(0, 60, (n, 784))
        audio = rng.uniform(0, 60, (n, 112, 112))
        for i, y in enumerate(labels):
            image[i, 78 * y : 78 * y + 78] = 255.0  # a class's stripe of pixels
            audio[i, 11 * y : 11 * y + 11] = 200.0  # a class's band
        np.save(root / "image" / f"{split}_data.npy", image.astype(np.float32))
        np.save(root / "audio" / f"{split}_data.npy", audio.astype(np.float32))
        np.save(root / f"{split}_labels.npy", labels.astype(np.int64))
    return root
