"""``compare``: train the same late-fusion model with several balancing methods under identical settings and
report accuracy (fused, per uni-modal head, per linear probe), time per step (forward, backward, weighting
subroutine, optimizer step) and peak memory, as means over seeds.

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
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..datasets import stratified_split
from ..models import late_fusion_for
from ..optim import MIMOAdamW
from .evaluation import evaluate, probe_accuracies, standardize_like
from .methods import METHODS, make_method
from .methods.base import forward_batch

__all__ = ["DEFAULT_METHODS", "compare", "prepare_split"]

DEFAULT_METHODS = ("joint", "uniform", "ogm_ge", "mmpareto", "mgda", "pcgrad", "cagrad", "mimo", "mimo_fused")

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


def _checked_data(
    modalities: Sequence, labels, what: str, num_classes: int | None
) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    """The data as training sees it (modalities float32, labels int64, numpy arrays as tensors), after checking
    it; and, for the warning, the modalities whose dtype was changed (e.g. ``"modalities[0] (float64)"``)."""
    if isinstance(modalities, (torch.Tensor, np.ndarray)) or not isinstance(modalities, Sequence):
        raise TypeError(
            f"{what}modalities must be a list of tensors or numpy arrays (one per modality), "
            f"got {type(modalities).__name__}"
        )
    if len(modalities) < 2:
        raise ValueError(f"{what}modalities must hold at least 2 modalities (late fusion), got {len(modalities)}")
    labels = _from_numpy(labels)
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{what}labels must be a 1-D integer tensor or numpy array, got {labels!r:.80}")
    labels = labels.long()
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
        # The models are float32; float64 input would fail inside nn.Linear ("mat1 and mat2 must have the same
        # dtype"), so convert, and let the caller say so.
        x32 = x.float()
        if x32 is not x:
            converted.append(f"{what}modalities[{m}] ({str(x.dtype).removeprefix('torch.')})")
        _check_finite(x32, x, f"{what}modalities[{m}]")
        xs.append(x32)
    if len(labels) == 0:
        raise ValueError(f"{what}labels is empty")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise ValueError(f"{what}labels must be in {bound}, got values from {low} to {high}")
    return xs, labels, converted


TestSet = tuple[Sequence[torch.Tensor], torch.Tensor]


def _checked_inputs(
    modalities: Sequence, labels, test: TestSet | None, num_classes: int | None
) -> tuple[list[torch.Tensor], torch.Tensor, TestSet | None, str | None]:
    """Training and test data checked and converted as :func:`compare` trains on them (see its docstring), and
    the warning to give when a dtype was converted (None when none was). Raises before any training."""
    modalities, labels, converted = _checked_data(modalities, labels, "", num_classes)
    if test is not None:
        test_x, test_y, test_converted = _checked_data(test[0], test[1], "test ", num_classes)
        if len(test_x) != len(modalities):
            raise ValueError(f"test has {len(test_x)} modalities but modalities has {len(modalities)}")
        test, converted = (test_x, test_y), converted + test_converted
    warning = None
    if converted:
        warning = f"{', '.join(converted)} converted to float32: the models train in float32"
    return modalities, labels, test, warning


def prepare_split(
    modalities: Sequence[torch.Tensor],
    labels: torch.Tensor,
    test: tuple[Sequence[torch.Tensor], torch.Tensor] | None,
    test_fraction: float,
    split_seed: int,
) -> tuple[Split, Split]:
    """The train/test split (stratified by class, drawn from split_seed, unless ``test`` is given) with every
    modality standardised per feature by the training rows' statistics."""
    if test is None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        tr, te = stratified_split(labels, test_fraction, torch.Generator().manual_seed(split_seed))
        train = ([x[tr] for x in modalities], labels[tr])
        test = ([x[te] for x in modalities], labels[te])
    else:
        train = (list(modalities), labels)
    pairs = [standardize_like(a, b) for a, b in zip(train[0], test[0], strict=True)]
    return ([a for a, _ in pairs], train[1]), ([b for _, b in pairs], test[1])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timer:
    """Sums of the per-step time split, in seconds."""

    def __init__(self) -> None:
        self.forward = self.backward = self.weighting = self.optimizer = self.total = 0.0
        self.steps = 0


def _train_step(model, method, optimizer, inputs, y, device, timer: _Timer | None) -> None:
    _sync(device)
    t0 = time.perf_counter()
    out = forward_batch(model, inputs, y)
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


def _make_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float, options: dict):
    if name == "mimo_fused":
        return MIMOAdamW(
            model.parameters(),
            lr=lr,
            weight_decay=weight_decay,
            gamma=options.get("gamma", 1.0),
            **({"mu": options["mu"]} if "mu" in options else {}),
        )
    # fused=True: torch's one-kernel AdamW (CPU and CUDA), the fastest stock form; the default for-loop form costs
    # a few Python-level ops per parameter tensor, time that every method would pay alike.
    params = list(model.parameters())
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


def _run(name: str, seed: int, options: dict, data: _Data, build: _Build, measure_memory: bool) -> dict:
    """One method trained from one seed: its accuracies, curves, step times and (if asked) peak step memory."""
    # Everything random in the run draws from this seed (init, method randomness) or from `order` (batches), so
    # the run's numbers do not depend on which runs came before it.
    torch.manual_seed(seed)
    device, n = data.device, len(data.train_y)
    encoders = list(build.encoders()) if build.encoders else None
    model = late_fusion_for(data.train_x, data.classes, encoders, build.feature_dim).to(device)
    method = make_method(name, **options)
    optimizer = _make_optimizer(name, model, build.lr, build.weight_decay, options)
    order = torch.Generator().manual_seed(seed)
    timer = _Timer()
    curve_fused, curve_heads = [], []
    model.train()
    for _ in range(build.epochs):
        perm = torch.randperm(n, generator=order).to(device)
        for start in range(0, n, build.batch_size):
            idx = perm[start : start + build.batch_size]
            _train_step(model, method, optimizer, [x[idx] for x in data.train_x], data.train_y[idx], device, timer)
        fused, heads = evaluate(model, data.test_x, data.test_y)
        curve_fused.append(fused)
        curve_heads.append(heads)
    fused, heads = evaluate(model, data.test_x, data.test_y)
    probes = probe_accuracies(
        model, (data.train_x, data.train_y), (data.test_x, data.test_y), data.classes, build.probe_steps
    )
    peak = None
    if measure_memory:
        batch = [x[: build.batch_size] for x in data.train_x], data.train_y[: build.batch_size]
        step = functools.partial(_train_step, model, method, optimizer, *batch, device, None)
        peak = _peak_step_memory(step, device)
    return dict(
        seed=seed,
        fused_acc=fused,
        head_acc=heads,
        probe_acc=probes,
        timer=timer,
        curve_fused=curve_fused,
        curve_heads=curve_heads,
        peak=peak,
    )


def compare(
    modalities: Sequence[torch.Tensor | np.ndarray],
    labels: torch.Tensor | np.ndarray,
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 30,
    *,
    test: tuple[Sequence[torch.Tensor | np.ndarray], torch.Tensor | np.ndarray] | None = None,
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
    measure_memory: bool = True,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> dict[str, dict]:
    """Trains a late-fusion model with each method and seed under identical settings and reports the results.

    Every input is checked before any training. Tensors and numpy arrays are accepted; the models train in
    float32, so modalities of another floating dtype (float64, say) are converted, with one warning per call
    naming them. NaN or infinite values are refused (the ValueError names the modality and the first bad row),
    as are duplicate method names.

    The runs are interleaved: for each seed, every method in turn, so that a slow spell of the machine falls on
    all methods alike rather than on the ones that happened to run during it. Each run seeds itself (model
    init, batch order, method randomness from ``torch.manual_seed(seed)``), so the accuracies are those of
    running each method alone.

    Args:
        modalities: one tensor or numpy array per modality (M >= 2), one row per sample: ``[N, D]`` vectors (MLP
            encoder), ``[N, C, L]`` sequences (1-D CNN) or ``[N, C, H, W]`` images (small CNN), unless
            ``encoders`` is given.
        labels: ``[N]`` integer class labels in ``[0, num_classes)`` (tensor or numpy array).
        methods: names from :data:`mimo_ext.balance.methods.METHODS`, each at most once.
        seeds: one training run per seed and method (initialisation, batch order, method randomness).
        epochs: passes over the training split.
        test: an explicit ``(modalities, labels)`` test set; otherwise a stratified ``test_fraction`` split drawn
            from ``split_seed`` (the same for every seed and method).
        num_classes: default ``labels.max() + 1``.
        encoders: a factory returning fresh encoder modules (one per modality, each ending in ``feature_dim``
            features), called once per run.
        method_options: per method name, keyword options for it (e.g. ``{"mimo": {"mu": 0.05}}``).
        measure_memory: measure each method's peak memory on one extra step after its first seed.
        progress: called with a short line after each run (the main command draws its progress bar with it).

    Returns:
        A dict keyed by method name, in the order of ``methods``. Each entry holds:

        - ``fused_acc``, ``fused_acc_std``: fused test accuracy, mean and sample standard deviation over seeds
          (every ``_std`` is 0.0 for a single seed).
        - ``head_acc``, ``head_acc_std``, ``probe_acc``, ``probe_acc_std``: one float per modality: the
          uni-modal head's test accuracy, and a linear probe's on the frozen encoder features.
        - ``worst_head_acc``, ``worst_head_acc_std``, ``worst_probe_acc``, ``worst_probe_acc_std``: per seed the
          lowest accuracy over the modalities (the weakest modality of that run), then mean and sample standard
          deviation over seeds. Not the minimum of ``head_acc``/``probe_acc``: the weakest modality may differ
          between seeds.
        - ``step_time_s``: mean seconds per training step, and ``step_time_split_s``: its ``forward``,
          ``backward``, ``weighting`` and ``optimizer`` parts.
        - ``peak_memory_bytes``: one step, above the memory held before it; None when not measured.
        - ``curves``: per epoch, means over seeds: ``fused`` and per modality ``head`` test accuracy.
        - ``per_seed``: per run ``seed``, ``fused_acc``, ``head_acc``, ``probe_acc``, ``worst_head_acc``,
          ``worst_probe_acc`` and ``step_time_s``.
        - ``settings``: everything that was held equal (optimizer, lr, epochs, split, ...), the method's
          ``method_options``, and what the times were measured under, the same for every method: ``threads``
          (``torch.get_num_threads()``), ``cpu_count`` (``os.cpu_count()``), ``load_before`` and ``load_after``
          (the 1/5/15-minute load averages before the first run and after the last, None where unavailable)
          and ``busy``: True when either 1-minute load exceeds ``cpu_count - threads + 0.5``, i.e. other
          processes competed for the cores, so the times are suspect.
    """
    modalities, labels, test, converted = _checked_inputs(modalities, labels, test, num_classes)
    if converted:
        warnings.warn(converted, stacklevel=2)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    duplicates = repeated_values(methods)
    if duplicates:
        raise ValueError(f"duplicate method name(s) {duplicates}: each method must be listed once")
    if not methods or not seeds:
        raise ValueError("methods and seeds must not be empty")
    duplicates = repeated_values(seeds)
    if duplicates:
        raise ValueError(f"duplicate seed(s) {duplicates}: each seed must be listed once")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    classes = num_classes if num_classes is not None else int(labels.max()) + 1
    method_options = method_options or {}
    device = torch.device(device)
    train, test_split = prepare_split(modalities, labels, test, test_fraction, split_seed)
    data = _Data(
        train_x=[x.to(device) for x in train[0]],
        train_y=train[1].to(device),
        test_x=[x.to(device) for x in test_split[0]],
        test_y=test_split[1].to(device),
        classes=classes,
        device=device,
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
    options = {name: dict(method_options.get(name, {})) for name in methods}
    for name in methods:
        make_method(name, **options[name])  # a bad option fails now, not after the methods before it trained
    build = _Build(encoders, feature_dim, lr, weight_decay, batch_size, epochs, probe_steps)

    threads, load_before = torch.get_num_threads(), _load_average()
    runs: dict[str, list[dict]] = {name: [] for name in methods}
    for seed in seeds:
        for name in methods:
            run = _run(name, seed, options[name], data, build, measure_memory and seed == seeds[0])
            runs[name].append(run)
            if progress is not None:
                progress(f"{name} seed {seed}: fused {run['fused_acc']:.3f}")
    load_after, cores = _load_average(), os.cpu_count()
    settings.update(
        threads=threads,
        cpu_count=cores,
        load_before=load_before,
        load_after=load_after,
        busy=_busy(load_before, load_after, threads, cores),
    )
    return {name: _summarise(runs[name], settings, options[name]) for name in methods}


def _summarise(runs: list[dict], settings: dict, options: dict) -> dict:
    m = len(runs[0]["head_acc"])
    fused, fused_std = _mean_std([r["fused_acc"] for r in runs])
    heads = [_mean_std([r["head_acc"][i] for r in runs]) for i in range(m)]
    probes = [_mean_std([r["probe_acc"][i] for r in runs]) for i in range(m)]
    worst_head, worst_head_std = _mean_std([min(r["head_acc"]) for r in runs])
    worst_probe, worst_probe_std = _mean_std([min(r["probe_acc"]) for r in runs])
    steps = sum(r["timer"].steps for r in runs)
    split = {
        part: sum(getattr(r["timer"], part) for r in runs) / steps
        for part in ("forward", "backward", "weighting", "optimizer")
    }
    epochs = len(runs[0]["curve_fused"])
    return dict(
        fused_acc=fused,
        fused_acc_std=fused_std,
        head_acc=[h[0] for h in heads],
        head_acc_std=[h[1] for h in heads],
        probe_acc=[p[0] for p in probes],
        probe_acc_std=[p[1] for p in probes],
        worst_head_acc=worst_head,
        worst_head_acc_std=worst_head_std,
        worst_probe_acc=worst_probe,
        worst_probe_acc_std=worst_probe_std,
        step_time_s=sum(r["timer"].total for r in runs) / steps,
        step_time_split_s=split,
        peak_memory_bytes=runs[0]["peak"],
        curves=dict(
            fused=[statistics.fmean(r["curve_fused"][e] for r in runs) for e in range(epochs)],
            head=[[statistics.fmean(r["curve_heads"][e][i] for r in runs) for e in range(epochs)] for i in range(m)],
        ),
        per_seed=[
            dict(
                seed=r["seed"],
                fused_acc=r["fused_acc"],
                head_acc=r["head_acc"],
                probe_acc=r["probe_acc"],
                worst_head_acc=min(r["head_acc"]),
                worst_probe_acc=min(r["probe_acc"]),
                step_time_s=r["timer"].total / max(r["timer"].steps, 1),
            )
            for r in runs
        ],
        settings=dict(settings, method_options=options),
    )
