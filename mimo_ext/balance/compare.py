"""``compare``: train the same late-fusion model with several balancing methods under identical settings and
report accuracy (fused, per uni-modal head, per linear probe), time per step (forward, backward, weighting
subroutine, optimizer step) and peak memory, as means over seeds.

Identical settings for every method: the same split, preprocessing (per-feature standardisation with the training
rows' statistics), model and initialisation per seed, batches per seed, optimizer (AdamW with ``fused=True``;
``mimo_fused`` uses :class:`mimo_ext.optim.MIMOAdamW`, the same algorithm fused with the blend), learning rate,
weight decay and epochs. Only the way the gradient is formed differs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

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


def _check_data(modalities: Sequence[torch.Tensor], labels: torch.Tensor, what: str, num_classes: int | None) -> None:
    if isinstance(modalities, torch.Tensor) or not isinstance(modalities, Sequence):
        raise TypeError(
            f"{what}modalities must be a list of tensors (one per modality), got {type(modalities).__name__}"
        )
    if len(modalities) < 2:
        raise ValueError(f"{what}modalities must hold at least 2 modalities (late fusion), got {len(modalities)}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{what}labels must be a 1-D integer tensor, got {labels!r:.80}")
    for m, x in enumerate(modalities):
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError(f"{what}modalities[{m}] must be a tensor with one row per sample, got {x!r:.80}")
        if len(x) != len(labels):
            raise ValueError(f"{what}modalities[{m}] has {len(x)} rows but labels has {len(labels)}")
        if not x.is_floating_point():
            raise ValueError(f"{what}modalities[{m}] must be floating point, got {x.dtype}")
    if len(labels) == 0:
        raise ValueError(f"{what}labels is empty")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise ValueError(f"{what}labels must be in {bound}, got values from {low} to {high}")


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


def compare(
    modalities: Sequence[torch.Tensor],
    labels: torch.Tensor,
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 30,
    *,
    test: tuple[Sequence[torch.Tensor], torch.Tensor] | None = None,
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

    Args:
        modalities: one tensor per modality (M >= 2), one row per sample: ``[N, D]`` vectors (MLP encoder),
            ``[N, C, L]`` sequences (1-D CNN) or ``[N, C, H, W]`` images (small CNN), unless ``encoders`` is given.
        labels: ``[N]`` integer class labels in ``[0, num_classes)``.
        methods: names from :data:`mimo_ext.balance.methods.METHODS`.
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
        A dict keyed by method name. Each entry holds ``fused_acc`` and ``fused_acc_std`` (test accuracy, mean
        and sample standard deviation over seeds); ``head_acc``, ``head_acc_std``, ``probe_acc``, ``probe_acc_std``
        (one float per modality: the uni-modal head's accuracy, and a linear probe's on the frozen encoder
        features); ``step_time_s`` (mean seconds per training step) and ``step_time_split_s`` (``forward``,
        ``backward``, ``weighting``, ``optimizer``); ``peak_memory_bytes`` (one step, above the memory held before
        it; None when not measured); ``curves`` (per epoch, means over seeds: ``fused`` and per modality ``head``
        test accuracy); ``per_seed`` (the per-run numbers); ``settings`` (everything that was held equal).
    """
    _check_data(modalities, labels, "", num_classes)
    if test is not None:
        _check_data(test[0], test[1], "test ", num_classes)
        if len(test[0]) != len(modalities):
            raise ValueError(f"test has {len(test[0])} modalities but modalities has {len(modalities)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    if not methods or not seeds:
        raise ValueError("methods and seeds must not be empty")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    classes = num_classes if num_classes is not None else int(labels.max()) + 1
    method_options = method_options or {}
    device = torch.device(device)
    train, test_split = prepare_split(modalities, labels, test, test_fraction, split_seed)
    train_x = [x.to(device) for x in train[0]]
    train_y = train[1].to(device)
    test_x = [x.to(device) for x in test_split[0]]
    test_y = test_split[1].to(device)
    n = len(train_y)
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
        train_rows=n,
        test_rows=len(test_y),
        num_classes=classes,
        device=str(device),
    )

    results: dict[str, dict] = {}
    for name in methods:
        options = dict(method_options.get(name, {}))
        runs = []
        for seed in seeds:
            torch.manual_seed(seed)
            model = late_fusion_for(train_x, classes, list(encoders()) if encoders else None, feature_dim).to(device)
            method = make_method(name, **options)
            optimizer = _make_optimizer(name, model, lr, weight_decay, options)
            order = torch.Generator().manual_seed(seed)
            timer = _Timer()
            curve_fused, curve_heads = [], []
            model.train()
            for _ in range(epochs):
                perm = torch.randperm(n, generator=order).to(device)
                for start in range(0, n, batch_size):
                    idx = perm[start : start + batch_size]
                    _train_step(model, method, optimizer, [x[idx] for x in train_x], train_y[idx], device, timer)
                fused, heads = evaluate(model, test_x, test_y)
                curve_fused.append(fused)
                curve_heads.append(heads)
            fused, heads = evaluate(model, test_x, test_y)
            probes = probe_accuracies(model, (train_x, train_y), (test_x, test_y), classes, probe_steps)
            peak = None
            if measure_memory and seed == seeds[0]:
                batch = [x[:batch_size] for x in train_x], train_y[:batch_size]
                step = functools.partial(_train_step, model, method, optimizer, *batch, device, None)
                peak = _peak_step_memory(step, device)
            runs.append(
                dict(
                    seed=seed,
                    fused_acc=fused,
                    head_acc=heads,
                    probe_acc=probes,
                    timer=timer,
                    curve_fused=curve_fused,
                    curve_heads=curve_heads,
                    peak=peak,
                )
            )
            if progress is not None:
                progress(f"{name} seed {seed}: fused {fused:.3f}")
        results[name] = _summarise(runs, settings, options)
    return results


def _summarise(runs: list[dict], settings: dict, options: dict) -> dict:
    m = len(runs[0]["head_acc"])
    fused, fused_std = _mean_std([r["fused_acc"] for r in runs])
    heads = [_mean_std([r["head_acc"][i] for r in runs]) for i in range(m)]
    probes = [_mean_std([r["probe_acc"][i] for r in runs]) for i in range(m)]
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
                step_time_s=r["timer"].total / max(r["timer"].steps, 1),
            )
            for r in runs
        ],
        settings=dict(settings, method_options=options),
    )
