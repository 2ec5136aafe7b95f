"""Training every balancing method on a recipe under identical settings: the recipe's data (checked before any
training), its networks, its published optimizer and schedule; per epoch the test accuracy of the fused model, of
each uni-modal head and with each modality alone; a checkpoint per run and epoch, from which ``resume`` continues.

The per-step work and its timing (forward, backward, weighting, optimizer step) are the main harness's
(:mod:`mimo_ext.balance.compare`), and the results have its fields, so its tables, JSON and figure apply as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ...masking import keep_only
from ...optim import MIMOSGD
from ..compare import _busy, _load_average, _summarise, _Timer, _train_step, repeated_values
from ..methods import METHODS, make_method
from .networks import FUSION_HEADS, LINEAR_HEADS, RecipeModel
from .recipe import Recipe

__all__ = ["RunConfig", "run_recipe"]

Progress = Callable[[str], None]


@dataclasses.dataclass
class RunConfig:
    """Everything a recipe run is trained with; the defaults of the optimizer fields are the recipe's settings
    (:meth:`from_recipe`)."""

    recipe: Recipe
    root: Path
    methods: Sequence[str]
    seeds: Sequence[int]
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    lr_step: int | None
    lr_gamma: float
    fusion: str = "concat"
    device: str = "cpu"
    amp: bool = True
    workers: int = 0
    tiny: bool = False
    out: Path | None = None
    resume: bool = False
    options: dict = dataclasses.field(default_factory=dict)
    method_options: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_recipe(cls, recipe: Recipe, root: Path, methods: Sequence[str], seeds: Sequence[int], **overrides):
        s = recipe.settings
        fields = dict(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, momentum=s.momentum,
                      weight_decay=s.weight_decay, lr_step=s.lr_step, lr_gamma=s.lr_gamma)
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(recipe=recipe, root=Path(root), methods=list(methods), seeds=list(seeds), **fields)


def check_config(c: RunConfig) -> None:
    """Every argument checked before the data is read (ValueError naming it)."""
    unknown = [m for m in c.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    if not c.methods or not c.seeds:
        raise ValueError("methods and seeds must not be empty")
    for what, values in (("method", c.methods), ("seed", c.seeds)):
        if repeated_values(values):
            raise ValueError(f"duplicate {what}(s) {repeated_values(values)}: each must be listed once")
    if c.fusion not in FUSION_HEADS:
        raise ValueError(f"fusion must be one of {list(FUSION_HEADS)}, got {c.fusion!r}")
    if "ogm_ge" in c.methods and c.fusion not in LINEAR_HEADS:
        raise ValueError(
            f"ogm_ge splits the fused logits into per-modality shares, which needs a linear fusion head "
            f"({sorted(LINEAR_HEADS)}); fusion={c.fusion!r} has none: drop ogm_ge or pick another fusion"
        )
    if c.epochs < 1 or c.batch_size < 1 or (c.lr_step is not None and c.lr_step < 1):
        raise ValueError(f"epochs, batch_size and lr_step must be >= 1, got {c.epochs}, {c.batch_size}, {c.lr_step}")
    unknown = sorted(set(c.options) - set(c.recipe.options))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {c.recipe.name}; it has {sorted(c.recipe.options)}")
    for name in c.methods:
        make_method(name, **c.method_options.get(name, {}))  # a bad option fails now, not after other methods trained


def _optimizer(name: str, model: torch.nn.Module, c: RunConfig, options: dict) -> torch.optim.Optimizer:
    common = dict(lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    if name == "mimo_fused":  # the same SGD, fused with MIMO's blend
        blend = {k: options[k] for k in ("gamma", "mu") if k in options}
        return MIMOSGD(model.parameters(), **common, **blend)
    return torch.optim.SGD(model.parameters(), **common)


def _loader(dataset: Dataset, c: RunConfig, shuffle: bool, generator: torch.Generator | None) -> DataLoader:
    # A last batch of one row would break batch norm in training mode: drop it (only then).
    drop_last = shuffle and len(dataset) % c.batch_size == 1
    cuda = torch.device(c.device).type == "cuda"
    return DataLoader(dataset, c.batch_size, shuffle=shuffle, generator=generator, num_workers=c.workers,
                      pin_memory=cuda, drop_last=drop_last)


def _autocast(c: RunConfig):
    device = torch.device(c.device)
    if c.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to(inputs, device):
    return [x.to(device, non_blocking=True) for x in inputs]


@torch.no_grad()
def evaluate_loader(model: RecipeModel, loader: DataLoader, c: RunConfig) -> dict:
    """Test accuracy of the fused output, of each uni-modal head, and of the model with only modality m present
    (the others filled with 0), in eval mode; the fields of :func:`mimo_ext.balance.evaluation.evaluate_model`."""
    device, m = torch.device(c.device), model.num_modalities
    model.eval()
    fused = torch.zeros((), dtype=torch.long, device=device)
    heads = torch.zeros(m, dtype=torch.long, device=device)
    masked = torch.zeros(m, dtype=torch.long, device=device)
    n = 0
    for inputs, y in loader:
        inputs, y = _to(inputs, device), y.to(device, non_blocking=True)
        with _autocast(c):
            out, uni = model(inputs)
            alone = [model(keep_only(inputs, k))[0] for k in range(m)]
        fused += (out.argmax(1) == y).sum()
        heads += torch.stack([(z.argmax(1) == y).sum() for z in uni])
        masked += torch.stack([(z.argmax(1) == y).sum() for z in alone])
        n += len(y)
    model.train()
    return {
        "fused": {"acc": fused.item() / n},
        "heads": [{"acc": v / n} for v in heads.tolist()],
        "masked": [{"acc": v / n} for v in masked.tolist()],
    }


def _checkpoint_path(c: RunConfig, name: str, seed: int) -> Path | None:
    return None if c.out is None else c.out / "checkpoints" / f"{c.recipe.name}_{name}_seed{seed}.pt"


def _train_run(name: str, seed: int, c: RunConfig, train: Dataset, test: Dataset, progress: Progress | None) -> dict:
    """One method from one seed: per-epoch test metrics, step times, peak memory (CUDA); resumes from its checkpoint
    when ``c.resume`` and one exists (a finished run is not trained again)."""
    device = torch.device(c.device)
    torch.manual_seed(seed)
    options = dict(c.method_options.get(name, {}))
    model = RecipeModel(c.recipe.encoders(c.tiny), c.recipe.classes, c.fusion).to(device)
    method = make_method(name, **options)
    optimizer = _optimizer(name, model, c, options)
    # No schedule: a StepLR that never fires keeps one code path (and one checkpoint format).
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, c.lr_step or c.epochs + 1, c.lr_gamma)
    steps_per_epoch = len(_loader(train, c, True, None))
    method.start(optimizer, c.epochs * steps_per_epoch)  # e.g. a penalty schedule over the whole run
    timer, curves, start = _Timer(), [], 0
    path = _checkpoint_path(c, name, seed)
    if c.resume and path is not None and path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["epochs"] != c.epochs:
            raise ValueError(
                f"{path}: a checkpoint of a {state['epochs']}-epoch run cannot resume a {c.epochs}-epoch run"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        vars(timer).update(state["timer"])
        curves, start = state["curves"], state["epoch"] + 1
        method.resume(start * steps_per_epoch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    test_loader = _loader(test, c, False, None)
    for epoch in range(start, c.epochs):
        if hasattr(method, "modulate"):  # OGM-GE modulates in the first half (its code: epochs 0 to 50 of 100)
            method.modulate = epoch <= c.epochs // 2
        train.set_epoch(epoch)
        # The batch order is a function of (seed, epoch): a resumed run sees the batches it would have seen.
        order = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        for inputs, y in _loader(train, c, True, order):
            with _autocast(c):
                _train_step(model, method, optimizer, _to(inputs, device), y.to(device, non_blocking=True), device,
                            timer)
        scheduler.step()
        curves.append(evaluate_loader(model, test_loader, c))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            state = dict(epoch=epoch, epochs=c.epochs, model=model.state_dict(), optimizer=optimizer.state_dict(),
                         scheduler=scheduler.state_dict(), rng=torch.get_rng_state(), timer=vars(timer),
                         curves=curves)
            if device.type == "cuda":  # OGM-GE's noise draws from the device's generator
                state["cuda_rng"] = torch.cuda.get_rng_state(device)
            torch.save(state, path.with_suffix(".tmp"))
            os.replace(path.with_suffix(".tmp"), path)  # never a half-written checkpoint
        if progress is not None:
            progress(f"{name} seed {seed} epoch {epoch + 1}/{c.epochs}: fused {curves[-1]['fused']['acc']:.3f}")
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" and start < c.epochs else None
    return dict(seed=seed, metrics=curves[-1], probes=None, robustness=None, timer=timer, curves=curves, peak=peak)


def run_recipe(c: RunConfig, progress: Progress | None = None) -> dict[str, dict]:
    """Trains each method of ``c.methods`` from each seed on the recipe's data and returns, per method, the fields
    of :func:`mimo_ext.balance.compare` (mean and spread over seeds of the fused, per-head and masked accuracies,
    step times, curves, per-seed values, settings), without linear probes; ``peak_memory_bytes`` is the run's peak
    on CUDA (None on the CPU). Raises :class:`~.layout.LayoutError` (a ValueError) for a broken data folder and
    ValueError for a bad argument, both before any training."""
    check_config(c)
    options = dict(c.recipe.options, **c.options)
    train, test = c.recipe.load(c.root, options)
    s = c.recipe.settings
    settings = dict(
        recipe=c.recipe.name,
        optimizer=f"SGD momentum {c.momentum} (mimo_fused: MIMOSGD)",
        lr=c.lr,
        weight_decay=c.weight_decay,
        schedule=f"StepLR step {c.lr_step} factor {c.lr_gamma}" if c.lr_step else "constant",
        epochs=c.epochs,
        batch_size=c.batch_size,
        published=f"{s.epochs} epochs, batch {s.batch_size}, lr {s.lr}",
        encoders="tiny (tests)" if c.tiny else "paper",
        fusion=c.fusion,
        seeds=list(c.seeds),
        train_rows=len(train),
        test_rows=len(test),
        num_classes=c.recipe.classes,
        device=str(c.device),
        amp="bf16" if c.amp and torch.device(c.device).type == "cuda" else "off",
    )
    threads, load_before = torch.get_num_threads(), _load_average()
    runs: dict[str, list[dict]] = {name: [] for name in c.methods}
    for seed in c.seeds:
        for name in c.methods:
            runs[name].append(_train_run(name, seed, c, train, test, progress))
    load_after, cores = _load_average(), os.cpu_count()
    settings.update(threads=threads, cpu_count=cores, load_before=load_before, load_after=load_after,
                    busy=_busy(load_before, load_after, threads, cores))
    return {name: _summarise(runs[name], settings, dict(c.method_options.get(name, {}))) for name in c.methods}
