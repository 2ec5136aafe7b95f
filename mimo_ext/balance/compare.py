"""``compare``: train the same model (late, early or attention fusion) with several balancing methods under
identical settings and report accuracy (fused, per modality masked, per uni-modal head and per linear probe where
the model has them; R^2 and MAE for regression), reliability with one modality perturbed at test time
(:mod:`.robustness`), time per step (forward, backward, weighting subroutine, optimizer
step) and peak memory, as means over seeds.

Identical settings for every method: the same split, preprocessing (per-feature standardisation with the training
rows' statistics), model and initialisation per seed, batches per seed, optimizer (AdamW with ``fused=True``;
``mimo_fused`` uses :class:`mimo_ext.optim.MIMOAdamW`, the same algorithm fused with the blend), learning rate,
weight decay and epochs. Only the way the gradient is formed differs.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..datasets import stratified_split, train_test_split
from ..models import FUSIONS, attention_fusion_for, early_fusion_for, late_fusion_for
from .evaluation import LOWER_IS_BETTER, METRICS, evaluate_model, probe_accuracies, standardize_like
from .methods.base import BalanceMethod, forward_batch
from .methods.spec import MethodLike, MethodSpec, as_spec, registered_methods
from .robustness import DEFAULT_NOISE_LEVELS, check_levels, perturbation_curves, summarise_robustness

__all__ = ["DEFAULT_METHODS", "compare", "prepare_split"]

DEFAULT_METHODS = ("joint", "uniform", "ogm_ge", "mmpareto", "mgda", "pcgrad", "cagrad", "mimo", "mimo_fused")
TASKS = tuple(METRICS)
# regression_loss -> the loss (torch.nn.functional's, called with reduction= as mimo_ext.masking's contract says).
REGRESSION_LOSSES = {"mse": F.mse_loss, "huber": F.huber_loss}

Split = tuple[list[torch.Tensor], torch.Tensor]
Progress = Callable[[str], None]


def _from_numpy(x):
    """A tensor for a numpy array of numbers (copied where numpy forbids sharing its memory: read-only or
    negative strides); anything else unchanged, for the checks to name."""
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "biufc":
        return x
    return torch.from_numpy(np.ascontiguousarray(x) if x.flags.writeable else x.copy())


def _first_non_finite(x: torch.Tensor) -> tuple[int, float] | None:
    """(row, value) of the first NaN or infinity in row-major order, or None when every value is finite."""
    bad = ~torch.isfinite(x.flatten(1))
    rows = bad.any(dim=1).nonzero()
    if len(rows) == 0:
        return None
    row = int(rows[0])
    return row, x.flatten(1)[row][bad[row]][0].item()


def _check_finite(x: torch.Tensor, original: torch.Tensor, name: str) -> None:
    found = _first_non_finite(original)
    if found is not None:
        raise ValueError(f"{name} has a non-finite value ({found[1]}) in row {found[0]}")
    # A float64 value beyond float32's range (about 3.4e38) turns into an infinity when converted.
    found = _first_non_finite(x) if x is not original else None
    if found is not None:
        value = original.flatten(1)[found[0]][~torch.isfinite(x.flatten(1)[found[0]])][0].item()
        raise ValueError(f"{name} has a value ({value}) beyond float32's range in row {found[0]}")


def _checked_present(present, n: int, count: int, what: str) -> list[torch.Tensor] | None:
    if present is None:
        return None
    if isinstance(present, (torch.Tensor, np.ndarray)) or not isinstance(present, Sequence) or len(present) != count:
        raise ValueError(f"{what}present must be a list of {count} bool masks (one per modality), got {present!r:.80}")
    masks = []
    for m, mask in enumerate(present):
        mask = _from_numpy(mask)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (n,):
            raise ValueError(f"{what}present[{m}] must be a bool tensor or array of shape [{n}], got {mask!r:.80}")
        masks.append(mask.cpu())
    return masks


def _checked_data(
    modalities: Sequence,
    labels,
    what: str,
    num_classes: int | None,
    task: str = "classification",
    present=None,
) -> tuple[list[torch.Tensor], torch.Tensor, list[str], list[torch.Tensor] | None]:
    """The data as training sees it (modalities float32, labels int64 or, for regression, float32 targets
    ``[N, T]``, numpy arrays as tensors, missing rows zeroed), after checking it; for the warning, the modalities
    whose dtype was changed (e.g. ``"modalities[0] (float64)"``); and the present masks (checked, on the CPU)."""
    if isinstance(modalities, (torch.Tensor, np.ndarray)) or not isinstance(modalities, Sequence):
        raise TypeError(
            f"{what}modalities must be a list of tensors or numpy arrays (one per modality), "
            f"got {type(modalities).__name__}"
        )
    if len(modalities) < 2:
        raise ValueError(f"{what}modalities must hold at least 2 modalities (late fusion), got {len(modalities)}")
    labels = _from_numpy(labels)
    if task == "regression":
        if (
            not isinstance(labels, torch.Tensor)
            or labels.dim() not in (1, 2)
            or labels.is_complex()
            or labels.dtype == torch.bool
        ):
            raise ValueError(f"{what}labels (regression targets) must be a 1-D or 2-D real tensor, got {labels!r:.80}")
        labels = labels.float().reshape(len(labels), -1)
        found = _first_non_finite(labels) if len(labels) else None
        if found is not None:
            raise ValueError(f"{what}labels has a non-finite value ({found[1]}) in row {found[0]}")
    else:
        if (
            not isinstance(labels, torch.Tensor)
            or labels.dim() != 1
            or labels.is_floating_point()
            or labels.is_complex()
        ):
            raise ValueError(f"{what}labels must be a 1-D integer tensor or numpy array, got {labels!r:.80}")
        labels = labels.long()
    present = _checked_present(present, len(labels), len(modalities), what)
    xs, converted = [], []
    for m, x in enumerate(modalities):
        x = _from_numpy(x)
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError(
                f"{what}modalities[{m}] must be a tensor or numpy array with one row per sample, got {x!r:.80}"
            )
        if len(x) != len(labels):
            raise ValueError(f"{what}modalities[{m}] has {len(x)} rows but labels has {len(labels)}")
        if not x.is_floating_point():
            raise ValueError(f"{what}modalities[{m}] must be floating point, got {x.dtype}")
        if present is not None:
            # Missing rows may hold anything (the loaders put NaN there): they are never read.
            x = torch.where(present[m].to(x.device).view(-1, *([1] * (x.dim() - 1))), x, 0.0)
        # The models are float32; float64 input would fail inside nn.Linear ("mat1 and mat2 must have the same
        # dtype"), so convert, and let the caller say so.
        x32 = x.float()
        if x.dtype != torch.float32:
            converted.append(f"{what}modalities[{m}] ({str(x.dtype).removeprefix('torch.')})")
        _check_finite(x32, x, f"{what}modalities[{m}]")
        xs.append(x32)
    if len(labels) == 0:
        raise ValueError(f"{what}labels is empty")
    if task != "regression":
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (num_classes is not None and high >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            raise ValueError(f"{what}labels must be in {bound}, got values from {low} to {high}")
    return xs, labels, converted, present


TestSet = tuple[Sequence[torch.Tensor], torch.Tensor]


def _checked_inputs(
    modalities: Sequence,
    labels,
    test: TestSet | None,
    num_classes: int | None,
    *,
    task: str = "classification",
    present=None,
    test_present=None,
) -> tuple[list[torch.Tensor], torch.Tensor, TestSet | None, str | None, list | None, list | None]:
    """Training and test data checked and converted as :func:`compare` trains on them (see its docstring), the
    warning to give when a dtype was converted (None when none was), and the present masks of both (None when not
    given). Raises before any training."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    if test_present is not None and test is None:
        raise ValueError("test_present describes an explicit test set: pass test= too (or put the masks in present=)")
    modalities, labels, converted, present = _checked_data(modalities, labels, "", num_classes, task, present)
    if test is not None:
        test_x, test_y, test_converted, test_present = _checked_data(
            test[0], test[1], "test ", num_classes, task, test_present
        )
        if len(test_x) != len(modalities):
            raise ValueError(f"test has {len(test_x)} modalities but modalities has {len(modalities)}")
        if task == "regression" and test_y.shape[1] != labels.shape[1]:
            raise ValueError(f"test labels have {test_y.shape[1]} target columns but labels have {labels.shape[1]}")
        test, converted = (test_x, test_y), converted + test_converted
    warning = None
    if converted:
        warning = f"{', '.join(converted)} converted to float32: the models train in float32"
    return modalities, labels, test, warning, present, test_present


@dataclasses.dataclass
class _Prepared:
    """The split, standardised, with its masks (None: every row has every modality) and, for regression, the
    targets' training mean and standard deviation per column (the targets are standardised with them)."""

    train: Split
    test: Split
    train_present: list[torch.Tensor] | None = None
    test_present: list[torch.Tensor] | None = None
    target_mean: torch.Tensor | None = None
    target_std: torch.Tensor | None = None


def _prepare(
    modalities: Sequence[torch.Tensor],
    labels: torch.Tensor,
    test: TestSet | None,
    test_fraction: float,
    split_seed: int,
    *,
    task: str = "classification",
    present: Sequence[torch.Tensor] | None = None,
    test_present: Sequence[torch.Tensor] | None = None,
    fill: float = 0.0,
) -> _Prepared:
    """The train/test split (unless ``test`` is given: classification stratified by class, regression at random,
    drawn from split_seed), every modality standardised per feature by the statistics of the training rows that
    have it, missing rows set to ``fill``; regression targets standardised per column by the training rows'."""
    if test is None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        if task == "regression":
            tr, te = train_test_split(len(labels), test_fraction, split_seed)
        else:
            tr, te = stratified_split(labels, test_fraction, torch.Generator().manual_seed(split_seed))
        train = ([x[tr] for x in modalities], labels[tr])
        test = ([x[te] for x in modalities], labels[te])
        if present is not None:
            present, test_present = [p[tr] for p in present], [p[te] for p in present]
    else:
        train = (list(modalities), labels)
    if present is not None:
        for m, mask in enumerate(present):
            if int(mask.sum()) < 2:
                raise ValueError(f"modalities[{m}] is present in {int(mask.sum())} training rows: at least 2 needed")
    train_x, test_x = [], []
    for m, (a, b) in enumerate(zip(train[0], test[0], strict=True)):
        a, b = standardize_like(a, b, None if present is None else present[m])
        if present is not None:
            a = torch.where(present[m].view(-1, *([1] * (a.dim() - 1))), a, fill)
        if test_present is not None:
            b = torch.where(test_present[m].view(-1, *([1] * (b.dim() - 1))), b, fill)
        train_x.append(a)
        test_x.append(b)
    prepared = _Prepared((train_x, train[1]), (test_x, test[1]), present, test_present)
    if task == "regression":
        mean, std = train[1].mean(dim=0), train[1].std(dim=0).clamp_min(1e-12)
        prepared.train = (train_x, (train[1] - mean) / std)
        prepared.test = (test_x, (test[1] - mean) / std)
        prepared.target_mean, prepared.target_std = mean, std
    return prepared


def prepare_split(
    modalities: Sequence[torch.Tensor],
    labels: torch.Tensor,
    test: tuple[Sequence[torch.Tensor], torch.Tensor] | None,
    test_fraction: float,
    split_seed: int,
) -> tuple[Split, Split]:
    """The train/test split (stratified by class, drawn from split_seed, unless ``test`` is given) with every
    modality standardised per feature by the training rows' statistics."""
    prepared = _prepare(modalities, labels, test, test_fraction, split_seed)
    return prepared.train, prepared.test


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timer:
    """Sums of the per-step time split, in seconds."""

    def __init__(self) -> None:
        self.forward = self.backward = self.weighting = self.optimizer = self.total = 0.0
        self.steps = 0


def _train_step(model, method, optimizer, inputs, y, device, timer: _Timer | None, present=None, data=None) -> None:
    _sync(device)
    t0 = time.perf_counter()
    if data is None:
        out = forward_batch(model, inputs, y, uni_losses=method.uses_uni_losses)
    else:
        out = forward_batch(
            model, inputs, y, loss_fn=data.loss_fn, present=present, fill=data.fill, uni_losses=method.uses_uni_losses
        )
    _sync(device)
    t1 = time.perf_counter()
    optimizer.zero_grad()
    times = method.backward(model, out, optimizer)
    _sync(device)
    t2 = time.perf_counter()
    optimizer.step()
    _sync(device)
    t3 = time.perf_counter()
    if timer is not None:
        timer.forward += t1 - t0
        timer.backward += times.backward_s
        timer.weighting += times.weighting_s
        timer.optimizer += t3 - t2
        timer.total += t3 - t0
        timer.steps += 1


@contextlib.contextmanager
def _quiet_native_stderr():
    # The profiler's native library prints start/stop lines on file descriptor 2; keep the report clean.
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _peak_step_memory(step: Callable[[], None], device: torch.device) -> int:
    """Bytes allocated at the peak of one training step, above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    # CPU: replay the allocations and frees the profiler recorded, in order, and take the running maximum.
    with (
        _quiet_native_stderr(),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        step()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    running = peak = 0
    for e in events:
        running += e.self_cpu_memory_usage
        peak = max(peak, running)
    return int(peak)


def _make_optimizer(method: BalanceMethod, model: nn.Module, lr: float, weight_decay: float):
    params = list(model.parameters())
    own = method.make_optimizer(params, lr, weight_decay)
    if own is not None:
        return own
    # fused=True: torch's one-kernel AdamW (CPU and CUDA), the fastest stock form; the default for-loop form costs
    # a few Python-level ops per parameter tensor, time that every method would pay alike.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, or None where the system has none (Windows) or cannot tell."""
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def _busy(load_before: list[float] | None, load_after: list[float] | None, threads: int, cores: int | None) -> bool:
    """Whether other processes competed for the cores while the methods ran, which makes the times suspect.

    The run itself keeps ``threads`` cores busy; the other ``cores - threads`` are free for everyone else. Other
    processes' 1-minute load above that (plus 0.5, so that a short blip does not count), before or after the runs,
    means runnable processes were waiting for cores. The load after the runs includes the runs' own ``threads``,
    so those are subtracted from it. Unknown loads or core count count as not busy.
    """
    if cores is None:
        return False
    limit = cores - threads + 0.5
    others = [load_before[0] if load_before else None, load_after[0] - threads if load_after else None]
    return any(load is not None and load > limit for load in others)


def repeated_values(names: Sequence) -> list:
    """The values that occur more than once, in order of first occurrence (also the CLI's check of its lists)."""
    counts = collections.Counter(names)
    return [n for n in dict.fromkeys(names) if counts[n] > 1]


@dataclasses.dataclass
class _Data:
    """The prepared split on the device, shared by every run."""

    train_x: list[torch.Tensor]
    train_y: torch.Tensor
    test_x: list[torch.Tensor]
    test_y: torch.Tensor
    classes: int
    device: torch.device
    task: str = "classification"
    loss_fn: Callable = F.cross_entropy
    fill: float = 0.0
    train_present: list[torch.Tensor] | None = None
    test_present: list[torch.Tensor] | None = None
    target_std: torch.Tensor | None = None
    train_std: list[torch.Tensor] | None = None


@dataclasses.dataclass
class _Build:
    """What every run is built and trained with."""

    encoders: Callable[[], Sequence[nn.Module]] | None
    feature_dim: int
    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    probe_steps: int
    fusion: str = "late"
    robustness_levels: tuple[float, ...] | None = None
    noise_seed: int = 0


def _model(build: _Build, data: _Data) -> nn.Module:
    encoders = list(build.encoders()) if build.encoders else None
    if build.fusion == "early":
        return early_fusion_for(data.train_x, data.classes, feature_dim=build.feature_dim)
    builder = attention_fusion_for if build.fusion == "attention" else late_fusion_for
    return builder(data.train_x, data.classes, encoders, build.feature_dim)


def _on_test_set(data: _Data) -> dict:
    """How the test set is scored: the task, its masks, the fill and the targets' scale (regression)."""
    return dict(task=data.task, present=data.test_present, fill=data.fill, scale=data.target_std)


def _evaluate(model: nn.Module, data: _Data) -> dict:
    return evaluate_model(model, data.test_x, data.test_y, **_on_test_set(data))


def _run(spec: MethodSpec, seed: int, data: _Data, build: _Build, measure_memory: bool) -> dict:
    """One method trained from one seed: its metrics, curves, step times and (if asked) peak step memory."""
    # Everything random in the run draws from this seed (init, method randomness) or from `order` (batches), so
    # the run's numbers do not depend on which runs came before it.
    torch.manual_seed(seed)
    device, n = data.device, len(data.train_y)
    model = _model(build, data).to(device)
    method = spec.build()
    optimizer = _make_optimizer(method, model, build.lr, build.weight_decay)
    method.start(optimizer, build.epochs * -(-n // build.batch_size))
    order = torch.Generator().manual_seed(seed)
    timer = _Timer()
    curves = []
    model.train()

    def rows(masks, idx):
        return None if masks is None else [p[idx] for p in masks]

    for _ in range(build.epochs):
        perm = torch.randperm(n, generator=order).to(device)
        for start in range(0, n, build.batch_size):
            idx = perm[start : start + build.batch_size]
            inputs, present = [x[idx] for x in data.train_x], rows(data.train_present, idx)
            _train_step(model, method, optimizer, inputs, data.train_y[idx], device, timer, present, data)
        curves.append(_evaluate(model, data))
    metrics = _evaluate(model, data)
    probes = None
    if data.task == "classification" and hasattr(model, "features"):
        probes = probe_accuracies(
            model,
            (data.train_x, data.train_y),
            (data.test_x, data.test_y),
            data.classes,
            build.probe_steps,
            train_present=data.train_present,
            test_present=data.test_present,
        )
    robustness = None
    if build.robustness_levels is not None:
        robustness = perturbation_curves(
            model,
            data.test_x,
            data.test_y,
            stds=data.train_std,
            levels=build.robustness_levels,
            noise_seed=build.noise_seed,
            **_on_test_set(data),
        )
    peak = None
    if measure_memory:
        first = torch.arange(min(build.batch_size, n), device=device)
        batch = [x[first] for x in data.train_x], data.train_y[first]
        step = functools.partial(
            _train_step, model, method, optimizer, *batch, device, None, rows(data.train_present, first), data
        )
        peak = _peak_step_memory(step, device)
    return dict(seed=seed, metrics=metrics, probes=probes, timer=timer, curves=curves, peak=peak, robustness=robustness)


def compare(
    modalities: Sequence[torch.Tensor | np.ndarray],
    labels: torch.Tensor | np.ndarray,
    methods: Sequence[MethodLike] = DEFAULT_METHODS,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 30,
    *,
    fusion: str = "late",
    task: str = "classification",
    present: Sequence[torch.Tensor | np.ndarray] | None = None,
    test: tuple[Sequence[torch.Tensor | np.ndarray], torch.Tensor | np.ndarray] | None = None,
    test_present: Sequence[torch.Tensor | np.ndarray] | None = None,
    num_classes: int | None = None,
    encoders: Callable[[], Sequence[nn.Module]] | None = None,
    method_options: dict[str, dict] | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    feature_dim: int = 32,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    probe_steps: int = 200,
    regression_loss: str = "mse",
    fill: float = 0.0,
    measure_memory: bool = True,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    robustness_levels: Sequence[float] | None = DEFAULT_NOISE_LEVELS,
    noise_seed: int = 0,
) -> dict[str, dict]:
    """Trains a model of the given fusion with each method and seed under identical settings and reports the
    results.

    Every method runs on every fusion. Late fusion takes the uni-modal losses f_m from its uni-modal heads; early
    and attention fusion have none, and the methods that need f_m get the masked losses
    (:func:`mimo_ext.masked_losses`: the model's loss with every modality but m filled with ``fill``, 0 after the
    standardisation here); joint training and OGM-GE, which never optimise f_m, run one forward. What each method
    does without uni-modal heads is in its docstring (:mod:`mimo_ext.balance.methods`). The comparable measure of how
    well each modality was learned, for every fusion, is ``masked_acc``: the model's test accuracy with only that
    modality present.

    Every input is checked before any training. Tensors and numpy arrays are accepted; the models train in
    float32, so modalities of another floating dtype (float64, say) are converted, with one warning per call
    naming them. NaN or infinite values are refused (the ValueError names the modality and the first bad row;
    rows marked missing in ``present`` are not read), as are duplicate method names.

    The runs are interleaved: for each seed, every method in turn, so that a slow spell of the machine falls on
    all methods alike rather than on the ones that happened to run during it. Each run seeds itself (model
    init, batch order, method randomness from ``torch.manual_seed(seed)``), so the accuracies are those of
    running each method alone.

    Args:
        modalities: one tensor or numpy array per modality (M >= 2), one row per sample: ``[N, D]`` vectors (MLP
            encoder), ``[N, C, L]`` sequences (1-D CNN) or ``[N, C, H, W]`` images (small CNN), unless
            ``encoders`` is given (early fusion flattens each sample and concatenates them).
        labels: ``[N]`` integer class labels in ``[0, num_classes)`` (tensor or numpy array); for regression
            ``[N]`` or ``[N, T]`` real targets.
        methods: each a name from :data:`mimo_ext.balance.methods.METHODS`, the user's own
            :class:`~mimo_ext.balance.BalanceMethod` subclass (built per run) or instance (deep-copied per run), a
            dotted path to one (``"pkg.mod:Class"`` or ``"pkg.mod.Class"``), or a
            :class:`~mimo_ext.balance.MethodSpec` (any of these with options and a label). Results are keyed by label
            (a name's is the name; a class's its ``name`` attribute or class name); labels must be distinct, so the
            same method runs several times, interleaved, as specs with different options, e.g.
            ``[MethodSpec("mimo", {"gamma": 0.5}), MethodSpec("mimo", {"gamma": 2})]`` (labels ``"mimo gamma=0.5"``
            and ``"mimo gamma=2"``).
        seeds: one training run per seed and method (initialisation, batch order, method randomness).
        epochs: passes over the training split.
        fusion: ``"late"`` (:func:`~mimo_ext.models.late_fusion_for`), ``"early"``
            (:func:`~mimo_ext.models.early_fusion_for`) or ``"attention"``
            (:func:`~mimo_ext.models.attention_fusion_for`).
        task: ``"classification"`` (cross-entropy; accuracy) or ``"regression"`` (float targets, standardised per
            column with the training rows' statistics; ``regression_loss``; R^2 and MAE where classification has
            accuracy, MAE in the targets' units; a random instead of a stratified split; no linear probes).
        present: optional, one ``[N]`` bool mask per modality (False: the row lacks that modality; its values are
            never read). Training and test use them: missing inputs are filled, f0 averages over the rows with any
            modality and each f_m over the rows with modality m; standardisation uses the rows present; the test
            metrics of modality m (masked, head, probe) are over the test rows that have it, the fused ones over all
            test rows with the missing inputs filled. ``settings["present_rows"]`` counts the rows per modality.
        test: an explicit ``(modalities, labels)`` test set; otherwise a ``test_fraction`` split (stratified for
            classification) drawn from ``split_seed`` (the same for every seed and method).
        test_present: with ``test``, its masks (as ``present``).
        num_classes: default ``labels.max() + 1`` (classification only).
        encoders: a factory returning fresh encoder modules (one per modality, each ending in ``feature_dim``
            features), called once per run; late and attention fusion (early fusion has one network).
        method_options: per method label (a plain name is its own label), keyword options for it (e.g.
            ``{"mimo": {"mu": 0.05}}``), over a spec's own options; a key that is no method's label or name is
            refused.
        regression_loss: ``"mse"`` (default) or ``"huber"`` (delta 1, on the standardised targets).
        fill: the value that stands in for missing and masked modalities (0: the training mean of every feature).
        measure_memory: measure each method's peak memory on one extra step after its first seed.
        progress: called with a short line after each run (the main command draws its progress bar with it).
        robustness_levels: noise levels, in units of each feature's training standard deviation, at which each
            trained model is tested with one modality perturbed (:mod:`mimo_ext.balance.robustness`; default
            :data:`~mimo_ext.balance.robustness.DEFAULT_NOISE_LEVELS`, 0 to 2); None skips the evaluation.
        noise_seed: the seed of that noise (the same noise for every method and seed: paired, deterministic).

    Returns:
        A dict keyed by method label, in the order of ``methods``. Each entry holds, with ``acc`` standing for each
        metric of the task (classification ``acc``; regression ``r2`` and ``mae``, each with the same keys):

        - ``fused_acc``, ``fused_acc_std``: fused test accuracy, mean and sample standard deviation over seeds
          (every ``_std`` is 0.0 for a single seed).
        - ``masked_acc``, ``masked_acc_std``: one float per modality: the test accuracy with only that modality
          present (every fusion).
        - ``head_acc``, ``head_acc_std`` (late fusion; None otherwise), ``probe_acc``, ``probe_acc_std``
          (classification with late or attention fusion; None otherwise): one float per modality: the uni-modal
          head's test accuracy, and a linear probe's on the frozen encoder features.
        - ``worst_masked_acc``, ``worst_head_acc``, ``worst_probe_acc`` (each with ``_std``; None where the
          per-modality values are): per seed the worst value over the modalities (the weakest modality of that
          run: the lowest, the highest for ``mae``), then mean and sample standard deviation over seeds. Not the
          minimum of the per-modality means: the weakest modality may differ between seeds.
        - ``step_time_s``: mean seconds per training step, and ``step_time_split_s``: its ``forward``,
          ``backward``, ``weighting`` and ``optimizer`` parts.
        - ``peak_memory_bytes``: one step, above the memory held before it; None when not measured.
        - ``curves``: per epoch, means over seeds of the task's first metric (accuracy, R^2): ``fused``, and per
          modality ``masked`` and (late fusion) ``head``.
        - ``robustness`` (None with ``robustness_levels=None``): reliability under a perturbed sensor
          (:func:`~mimo_ext.balance.robustness.summarise_robustness`): ``levels``; per modality (``modalities``,
          in input order) the levels, the metric at each (``acc``, ``acc_std``; regression ``r2`` and ``mae``), with
          the modality dropped (``dropped_acc``) and the area under the curve (``auc_acc``, the curve's mean
          height); and ``worst``: per run the worst over modalities (per level, area, dropped), then mean and std.
          The dropped modality is filled with ``fill``, as for ``masked_acc`` (see the note there on late fusion).
        - ``per_seed``: per run ``seed``, every ``fused_*``, ``masked_*``, ``head_*``, ``worst_*`` and
          ``probe_acc`` value, ``step_time_s`` and ``robustness`` (that run's curves).
        - ``settings``: everything that was held equal (optimizer, lr, epochs, split, ``fusion``, ``task``, ...,
          with masks ``present_rows``: per side the rows that have each modality, and the rows in all), the
          method's ``method_options``, and what the times were measured under, the same for every method:
          ``threads`` (``torch.get_num_threads()``), ``cpu_count`` (``os.cpu_count()``), ``load_before`` and
          ``load_after`` (the 1/5/15-minute load averages before the first run and after the last, None where
          unavailable) and ``busy``: True when either 1-minute load exceeds ``cpu_count - threads + 0.5``, i.e.
          other processes competed for the cores, so the times are suspect.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {list(FUSIONS)}, got {fusion!r}")
    if fusion == "early" and encoders is not None:
        raise ValueError("encoders= does not apply to fusion='early' (one network over the concatenated inputs)")
    if regression_loss not in REGRESSION_LOSSES:
        raise ValueError(f"regression_loss must be one of {list(REGRESSION_LOSSES)}, got {regression_loss!r}")
    if task == "regression" and num_classes is not None:
        raise ValueError("num_classes is for classification; regression predicts one output per target column")
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not math.isfinite(fill):
        raise ValueError(f"fill must be a finite number, got {fill!r}")
    modalities, labels, test, converted, present, test_present = _checked_inputs(
        modalities, labels, test, num_classes, task=task, present=present, test_present=test_present
    )
    if converted:
        warnings.warn(converted, stacklevel=2)
    if not methods or not seeds:
        raise ValueError("methods and seeds must not be empty")
    duplicates = repeated_values(seeds)
    if duplicates:
        raise ValueError(f"duplicate seed(s) {duplicates}: each seed must be listed once")
    levels = check_levels(robustness_levels) if robustness_levels is not None else None
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if task == "regression":
        classes = labels.shape[1]
    else:
        classes = num_classes if num_classes is not None else int(labels.max()) + 1
    specs = _method_specs(methods, method_options or {})
    device = torch.device(device)
    prepared = _prepare(
        modalities,
        labels,
        test,
        test_fraction,
        split_seed,
        task=task,
        present=present,
        test_present=test_present,
        fill=float(fill),
    )

    def on_device(masks):
        return None if masks is None else [p.to(device) for p in masks]

    data = _Data(
        train_x=[x.to(device) for x in prepared.train[0]],
        train_y=prepared.train[1].to(device),
        test_x=[x.to(device) for x in prepared.test[0]],
        test_y=prepared.test[1].to(device),
        classes=classes,
        device=device,
        task=task,
        loss_fn=REGRESSION_LOSSES[regression_loss] if task == "regression" else F.cross_entropy,
        fill=float(fill),
        train_present=on_device(prepared.train_present),
        test_present=on_device(prepared.test_present),
        target_std=None if prepared.target_std is None else prepared.target_std.to(device),
        train_std=_feature_stds(prepared.train[0], prepared.train_present),
    )
    settings = dict(
        optimizer="AdamW, fused=True (mimo_fused: MIMOAdamW)",
        lr=lr,
        weight_decay=weight_decay,
        epochs=epochs,
        batch_size=batch_size,
        feature_dim=feature_dim,
        preprocessing="per-feature standardisation (train stats)",
        split="explicit test set" if test is not None else f"stratified {test_fraction} test, split_seed {split_seed}",
        seeds=list(seeds),
        train_rows=len(data.train_y),
        test_rows=len(data.test_y),
        num_classes=classes,
        device=str(device),
    )
    # Keys added for fusions, tasks and masks only where they differ from the late-fusion classification defaults,
    # so that the settings line of a plain run reads as before.
    if fusion != "late":
        settings.update(fusion=fusion, fill=float(fill))
    if task == "regression":
        del settings["num_classes"]
        settings.update(
            task=task,
            targets=classes,
            loss=regression_loss,
            preprocessing="per-feature standardisation, targets standardised (train stats)",
            split="explicit test set" if test is not None else f"random {test_fraction} test, split_seed {split_seed}",
        )
    if present is not None or test_present is not None:
        settings["fill"] = float(fill)
        settings["present_rows"] = {
            side: [int(p.sum()) for p in masks] if masks is not None else [len(y)] * len(modalities)
            for side, masks, y in (
                ("train", prepared.train_present, data.train_y),
                ("test", prepared.test_present, data.test_y),
            )
        }
    build = _Build(
        encoders, feature_dim, lr, weight_decay, batch_size, epochs, probe_steps, fusion, levels, int(noise_seed)
    )

    threads, load_before = torch.get_num_threads(), _load_average()
    runs: dict[str, list[dict]] = {spec.label: [] for spec in specs}
    primary = METRICS[task][0]
    for seed in seeds:
        for spec in specs:
            run = _run(spec, seed, data, build, measure_memory and seed == seeds[0])
            runs[spec.label].append(run)
            if progress is not None:
                progress(f"{spec.label} seed {seed}: fused {run['metrics']['fused'][primary]:.3f}")
    load_after, cores = _load_average(), os.cpu_count()
    settings.update(
        threads=threads,
        cpu_count=cores,
        load_before=load_before,
        load_after=load_after,
        busy=_busy(load_before, load_after, threads, cores),
    )
    return {spec.label: _summarise(runs[spec.label], settings, _options_record(spec), task) for spec in specs}


def _method_specs(methods: Sequence[MethodLike], method_options: dict[str, dict]) -> list[MethodSpec]:
    """Each entry of ``methods`` as a :class:`MethodSpec` with its ``method_options`` (keyed by label, or by name),
    built once to be checked: an unknown name, a bad path or a bad option fails before any method trains."""
    if isinstance(methods, (str, MethodSpec, BalanceMethod, type)):
        raise TypeError(f"methods must be a list of methods, got {methods!r:.80}")
    registered = registered_methods()
    unknown = [m for m in methods if isinstance(m, str) and m not in registered and not set(m) & set(".:")]
    if unknown:
        raise ValueError(
            f"unknown method(s) {unknown}; choose from {sorted(registered)}, or give a class, an instance or a "
            "dotted path 'pkg.module:Class'"
        )
    specs = []
    for entry in methods:
        key = entry.label if isinstance(entry, MethodSpec) else entry if isinstance(entry, str) else None
        spec = as_spec(entry, method_options.get(key) if key is not None else None)
        spec.build()
        specs.append(spec)
    duplicates = repeated_values([s.label for s in specs])
    if duplicates:
        raise ValueError(
            f"duplicate method name(s) {duplicates}: each label must be listed once; to run one method with "
            "different options, give each a MethodSpec(method, options, label=...) (a distinct label)"
        )
    unused = sorted(set(method_options) - {s.label for s in specs} - {s.name for s in specs})
    if unused:
        raise ValueError(f"method_options names {unused}, which is not among the methods {[s.label for s in specs]}")
    return specs


def _options_record(spec: MethodSpec) -> dict:
    """The options the method ran with, for the settings (a user's class or instance is named by its path)."""
    record = dict(spec.options)
    if not (isinstance(spec.method, str) and spec.method == spec.name):
        resolved = spec.resolve()
        cls = resolved if isinstance(resolved, type) else type(resolved)
        record["method"] = f"{cls.__module__}:{cls.__qualname__}"
    return record


def _feature_stds(train_x: Sequence[torch.Tensor], present: Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
    """Per modality, the per-feature standard deviation of its training rows (those that have it): the unit of
    the robustness evaluation's noise."""
    out = []
    for m, x in enumerate(train_x):
        rows = x if present is None else x[present[m]]
        out.append(rows.std(dim=0) if len(rows) > 1 else torch.ones_like(x[0]))
    return out


def _worst(values: Sequence[float], metric: str) -> float:
    return max(values) if metric in LOWER_IS_BETTER else min(values)


def _per_modality(runs: list[dict], values: Callable[[dict], list[float] | None], metric: str, key: str) -> dict:
    """``{key: means, key_std: stds, worst_key: ..., worst_key_std: ...}`` over the runs' per-modality values (all
    None when the runs have none)."""
    if values(runs[0]) is None:
        return {key: None, f"{key}_std": None, f"worst_{key}": None, f"worst_{key}_std": None}
    m = len(values(runs[0]))
    stats = [_mean_std([values(r)[i] for r in runs]) for i in range(m)]
    worst, worst_std = _mean_std([_worst(values(r), metric) for r in runs])
    return {
        key: [v[0] for v in stats],
        f"{key}_std": [v[1] for v in stats],
        f"worst_{key}": worst,
        f"worst_{key}_std": worst_std,
    }


def _summarise(runs: list[dict], settings: dict, options: dict, task: str = "classification") -> dict:
    summary: dict = {}
    per_seed: list[dict] = [dict(seed=r["seed"]) for r in runs]
    for metric in METRICS[task]:
        fused, fused_std = _mean_std([r["metrics"]["fused"][metric] for r in runs])
        summary[f"fused_{metric}"], summary[f"fused_{metric}_std"] = fused, fused_std
        for kind in ("masked", "head"):
            source = "heads" if kind == "head" else kind

            def values(r, source=source, metric=metric):
                parts = r["metrics"][source]
                return None if parts is None else [p[metric] for p in parts]

            summary.update(_per_modality(runs, values, metric, f"{kind}_{metric}"))
            for row, r in zip(per_seed, runs, strict=True):
                v = values(r)
                row[f"{kind}_{metric}"] = v
                row[f"worst_{kind}_{metric}"] = None if v is None else _worst(v, metric)
        for row, r in zip(per_seed, runs, strict=True):
            row[f"fused_{metric}"] = r["metrics"]["fused"][metric]
    summary.update(_per_modality(runs, lambda r: r["probes"], "acc", "probe_acc"))
    for row, r in zip(per_seed, runs, strict=True):
        row["probe_acc"] = r["probes"]
        row["worst_probe_acc"] = None if r["probes"] is None else min(r["probes"])
        row["step_time_s"] = r["timer"].total / max(r["timer"].steps, 1)
        row["robustness"] = r["robustness"]
    steps = sum(r["timer"].steps for r in runs)
    split = {
        part: sum(getattr(r["timer"], part) for r in runs) / steps
        for part in ("forward", "backward", "weighting", "optimizer")
    }
    primary = METRICS[task][0]
    epochs = len(runs[0]["curves"])

    def curve(kind: str) -> list[list[float]] | None:
        if runs[0]["curves"][0][kind] is None:
            return None
        m = len(runs[0]["curves"][0][kind])
        return [
            [statistics.fmean(r["curves"][e][kind][i][primary] for r in runs) for e in range(epochs)] for i in range(m)
        ]

    curves = dict(fused=[statistics.fmean(r["curves"][e]["fused"][primary] for r in runs) for e in range(epochs)])
    curves.update(head=curve("heads"), masked=curve("masked"))
    robust = runs[0]["robustness"] is not None
    summary.update(
        robustness=summarise_robustness([r["robustness"] for r in runs], task) if robust else None,
        step_time_s=sum(r["timer"].total for r in runs) / steps,
        step_time_split_s=split,
        peak_memory_bytes=runs[0]["peak"],
        curves=curves,
        per_seed=per_seed,
        settings=dict(settings, method_options=options),
    )
    return summary
