"""python -m mimo_ext.balance: every balancing method on real multi-modal data, identical settings, 3 seeds.

Defaults: mfeat ``pix`` + ``fou`` (a strong and a weak view of the same digits) and AV-digits-mini (8x8 digit
images with their leading principal components removed, paired with spoken digits). Prints one table per data
set (fused accuracy, the worst modality's accuracy, per-modality accuracy, time per step, memory) and writes
``<out>/balance.json`` (every number, the settings and the machine) and ``<out>/balance.png`` (fused accuracy
against worst-modality probe accuracy and against time per step, and per-modality head accuracy over epochs).
Other data sets by name (``--datasets``, see :data:`DATASETS`): ``mfeat-all`` (all six views), ``av-digits`` (MNIST
size), ``av-digits-noisy`` (the audio degraded instead of the image) and ``diabetes`` (regression: vitals + blood
serum). ``--fusion late early attention`` runs each data set on each fusion (default: late only);
``--missing fou=0.3`` drops a modality from that fraction of the rows (seeded) and trains and tests with the masks.

``--sweep gamma=0.5,1,2 mu=0.05,0.1,0.2`` instead runs :func:`mimo_ext.balance.sweep` over that grid (of
``--sweep-method``, default mimo) on each data set, plus the ``--methods`` for comparison, and prints and draws
the points with their Pareto front (worst-modality probe accuracy against fused accuracy): ``<out>/sweep.json``
and ``<out>/sweep_<dataset>.png``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..datasets import MFEAT_VIEWS, drop_rows, load_mfeat
from ..models import FUSIONS
from .compare import DEFAULT_METHODS, REGRESSION_LOSSES, compare, repeated_values
from .data import DIABETES_MODALITIES, load_av_digits, load_diabetes
from .methods import METHODS
from .methods.spec import MethodSpec, parse_method_argument
from .report import (
    format_robustness_table,
    sweep_worst_key,
    format_sweep_table,
    format_table,
    machine_info,
    plot,
    plot_robustness,
    plot_sweep,
    write_json,
)
from .robustness import DEFAULT_NOISE_LEVELS, check_levels
from .sweep import pareto_front, sweep

# AV-digits-noisy's audio noise, in units of each standardised MFCC coefficient's std: at 2.0 a logistic regression
# on the raw audio drops from 0.97 to 0.73 test accuracy (0.79 for av-digits-mini's PCA-degraded image), so the
# audio is about as weak there as the image is in av-digits-mini; at 1.0 it still reached 0.94.
NOISY_AUDIO_STD = 2.0

# name -> what it is; every name is runnable with --datasets NAME.
DATASETS: dict[str, str] = {
    "mfeat": "UCI mfeat, the views given by --views (default pix + fou: a strong and a weak view of 2,000 digits)",
    "mfeat-all": "UCI mfeat, all six views (M = 6, of unequal difficulty: the setting worst-modality-first is for)",
    "av-digits-mini": "8x8 digit images with their 8 leading principal components removed (the weak side) + spoken "
    "digits",
    "av-digits": "the same at MNIST size (10,000 28x28 images)",
    "av-digits-noisy": f"AV-digits-mini with the clean image and the audio degraded instead (Gaussian noise of "
    f"{NOISY_AUDIO_STD:g} x each MFCC coefficient's std)",
    "diabetes": "regression: scikit-learn's diabetes data, 442 patients, vitals (age, sex, BMI, blood pressure) + six "
    "blood-serum measurements, target disease progression (R^2, MAE)",
}
REGRESSION_DATASETS = frozenset({"diabetes"})
MISSING_SEED = 0  # the seed of the rows --missing drops (the same rows in every run)


def modality_names(dataset: str, views: Sequence[str]) -> list[str]:
    """The modalities of a data set named in DATASETS, in order."""
    if dataset == "mfeat":
        return list(views)
    if dataset == "mfeat-all":
        return list(MFEAT_VIEWS)
    if dataset == "diabetes":
        return list(DIABETES_MODALITIES)
    return ["image", "audio"]


DEFAULT_DATASETS = ("mfeat", "av-digits-mini")
SWEEP_BASELINES = ("joint", "uniform", "mmpareto")


class ProgressBar:
    """A one-line progress bar on stderr (a line per update when stderr is not a terminal)."""

    def __init__(self, total: int, width: int = 30) -> None:
        self.total, self.done, self.width = max(total, 1), 0, width
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def __call__(self, message: str) -> None:
        self.done += 1
        filled = self.width * min(self.done, self.total) // self.total
        line = (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
            f"{time.perf_counter() - self.start:5.0f}s  {message}"
        )
        print(("\r" + line.ljust(100)) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
        if self.tty and self.done == self.total:
            print(file=sys.stderr)


def _load(dataset: str, views: Sequence[str], missing: dict[str, float] | None = None) -> dict:
    """A data set named in DATASETS: its modality names, modalities, labels, explicit test set (or None), present
    masks of both (None without ``missing``; only the names it has apply) and task."""
    names = modality_names(dataset, views)
    missing = {k: v for k, v in (missing or {}).items() if k in names} or None
    out = dict(names=names, test=None, present=None, test_present=None, task="classification")
    if dataset in ("mfeat", "mfeat-all"):
        loaded = load_mfeat(names, missing=missing, missing_seed=MISSING_SEED)
        out.update(xs=loaded[0], y=loaded[1], present=loaded[2] if missing else None)
        return out
    if dataset == "diabetes":
        xs, y, _ = load_diabetes()
        present = None
        if missing:
            xs, present = drop_rows(xs, names, missing, torch.Generator().manual_seed(MISSING_SEED))
        out.update(xs=xs, y=y, present=present, task="regression")
        return out
    options = dict(missing=missing, seed=MISSING_SEED)
    if dataset == "av-digits-noisy":
        train, test = load_av_digits("mini", degrade="audio_noise", noise_std=NOISY_AUDIO_STD, **options)
    else:
        train, test = load_av_digits("mini" if dataset == "av-digits-mini" else "mnist", **options)
    out.update(xs=train.modalities, y=train.labels, test=(test.modalities, test.labels))
    out.update(present=train.present, test_present=test.present)
    return out


# Argument types: a bad value is an argparse error naming the option (exit code 2, no traceback).
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text}")
    return value


def _sweep_axis(text: str) -> tuple[str, list]:
    """``"gamma=0.5,1,2"`` -> ``("gamma", [0.5, 1.0, 2.0])``."""
    key, sep, values = text.partition("=")
    if not sep or not key.isidentifier() or not values:
        raise argparse.ArgumentTypeError(f"expected KEY=V1,V2,... (e.g. gamma=0.5,1,2), got {text!r}")
    parsed: list = []
    for v in values.split(","):
        try:
            number = float(v)
        except ValueError:
            if not v.isidentifier():  # a name, such as a schedule's (schedule=constant,increasing)
                raise argparse.ArgumentTypeError(f"{key}: {v!r} is neither a number nor a name (in {text!r})") from None
            parsed.append(v)
            continue
        if not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"{key}: {v!r} is not finite (in {text!r})")
        parsed.append(number)
    if len(set(parsed)) != len(parsed):
        raise argparse.ArgumentTypeError(f"{key}: a value is repeated (in {text!r})")
    return key, parsed


def _missing_item(text: str) -> tuple[str, float]:
    """``"fou=0.3"`` -> ``("fou", 0.3)``."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected MODALITY=FRACTION (e.g. fou=0.3), got {text!r}")
    try:
        fraction = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: {value!r} is not a number (in {text!r})") from None
    if not 0 <= fraction < 1:
        raise argparse.ArgumentTypeError(f"{name}: the fraction must be in [0, 1), got {value}")
    return name, fraction


def _method_argument(text: str) -> MethodSpec:
    """A method of --methods / --sweep-method (:func:`~.methods.spec.parse_method_argument`), built once so that
    an unknown name, a bad path or a bad option is an argparse error naming it."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # `python -m` puts the current folder first; a console script may not
    try:
        spec = parse_method_argument(text)
        spec.build()
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return spec


def _as_compare_methods(specs: Sequence[MethodSpec]) -> list:
    """The methods as compare takes them: a registered name given alone as its name, anything else as its spec."""
    return [s.method if s.label == s.method and not s.options else s for s in specs]


def _check_writable(folder: Path) -> str | None:
    """None when files can be created in ``folder`` (created if missing), else why not."""
    probe = folder / f".write_probe_{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mimo_ext.balance",
        description="Every balancing method on real multi-modal data, identical settings, 3 seeds; or, with "
        "--sweep, one method over a grid of its options, with its Pareto front.",
        epilog="data sets (--datasets):\n"
        + "\n".join(
            textwrap.fill(what, 100, initial_indent=f"  {name:<17}", subsequent_indent=" " * 19, break_on_hyphens=False)
            for name, what in DATASETS.items()
        )
        + "\n\nexamples:\n"
        "  python -m mimo_ext.balance                                    # the main command (default data sets)\n"
        "  python -m mimo_ext.balance --datasets mfeat-all av-digits-noisy\n"
        "  python -m mimo_ext.balance --sweep gamma=0.5,1,2 mu=0.05,0.1,0.2 --datasets mfeat\n"
        "  python -m mimo_ext.balance --fusion early attention --methods joint uniform mmpareto mimo\n"
        "  python -m mimo_ext.balance --fusion attention --missing fou=0.3 image=0.3  # 30% of the weak side missing\n"
        "  python -m mimo_ext.balance --datasets diabetes --fusion late early attention  # regression",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        default=list(DEFAULT_DATASETS),
        choices=list(DATASETS),
        metavar="NAME",
        help=f"data sets by name, listed below (default: {' '.join(DEFAULT_DATASETS)})",
    )
    p.add_argument(
        "--views",
        nargs="+",
        default=["pix", "fou"],
        choices=list(MFEAT_VIEWS),
        metavar="VIEW",
        help=f"views for --datasets mfeat, at least 2, any of {' '.join(MFEAT_VIEWS)} (default: pix fou; mfeat-all "
        "uses all six)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        type=_method_argument,
        metavar="METHOD",
        help=f"balancing methods, any of {', '.join(sorted(METHODS))}, or your own BalanceMethod subclass by dotted "
        "path (pkg.mod:Class or pkg.mod.Class, importable from the current directory); each optionally with options, "
        "NAME@key=value,key=value (e.g. mimo@gamma=2,schedule=increasing), so one method may appear several times "
        f"with different options (default: {' '.join(DEFAULT_METHODS)}; with --sweep, the methods to compare the "
        f"sweep with, default: {' '.join(SWEEP_BASELINES)})",
    )
    p.add_argument(
        "--fusion",
        nargs="+",
        default=["late"],
        choices=list(FUSIONS),
        metavar="FUSION",
        help="model fusions, any of late (uni-modal heads), early (concatenated inputs, one network), attention "
        "(a token per modality, a transformer encoder over them); each data set runs on each; without uni-modal "
        "heads the methods get masked uni-modal losses (default: late)",
    )
    p.add_argument(
        "--missing",
        nargs="+",
        type=_missing_item,
        default=[],
        metavar="MODALITY=FRACTION",
        help="drop that modality from that fraction of the rows (drawn at random, seed 0), in every data set that "
        "has a modality of that name; training and test then use the masks, e.g. fou=0.3 image=0.3",
    )
    p.add_argument(
        "--regression-loss",
        default="mse",
        choices=list(REGRESSION_LOSSES),
        help="the loss of the regression data sets (default: mse)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per seed (default: 0 1 2)")
    p.add_argument("--epochs", type=_positive_int, default=30, help="default: 30")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="default: 64")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("balance_results"),
        help="folder for the JSON and PNG files, created if missing; checked for writing before any training "
        "(default: balance_results)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch CPU threads (default: 1; these models are small, and a larger thread pool synchronises on every "
        "tiny op: on a busy two-core machine that made a training step tens of times slower than one thread)",
    )
    p.add_argument(
        "--noise-levels",
        nargs="+",
        type=float,
        default=list(DEFAULT_NOISE_LEVELS),
        metavar="LEVEL",
        help="reliability under a perturbed sensor: after training, each modality in turn gets Gaussian noise of "
        "these levels x each feature's training std (seeded), and is dropped; tables, JSON and robustness.png "
        f"(default: {' '.join(map(str, DEFAULT_NOISE_LEVELS))})",
    )
    p.add_argument("--no-robustness", action="store_true", help="skip that evaluation")
    p.add_argument(
        "--sweep",
        nargs="+",
        type=_sweep_axis,
        metavar="KEY=V1,V2",
        help="sweep a grid of --sweep-method's options instead of comparing methods, e.g. gamma=0.5,1,2 "
        "mu=0.05,0.1,0.2 (every combination; numeric values)",
    )
    p.add_argument(
        "--sweep-method",
        default=None,
        type=_method_argument,
        metavar="METHOD",
        help="the method whose options --sweep varies, as in --methods (default: mimo)",
    )
    return p


def _parse(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parsed and checked arguments: every error here is an argparse error (exit code 2), before any training."""
    p = _parser()
    args = p.parse_args(argv)
    if args.methods is None:
        args.methods = [MethodSpec(m) for m in (SWEEP_BASELINES if args.sweep else DEFAULT_METHODS)]
    for option, values in (
        ("--datasets", args.datasets),
        ("--views", args.views),
        ("--methods", [m.label for m in args.methods]),
        ("--seeds", args.seeds),
    ):
        dup = repeated_values(values)
        if dup:
            p.error(f"argument {option}: repeated: {' '.join(map(str, dup))}")
    if "mfeat" in args.datasets and len(args.views) < 2:
        p.error("argument --views: mfeat needs at least 2 views")
    dup = repeated_values(args.fusion)
    if dup:
        p.error(f"argument --fusion: repeated: {' '.join(dup)}")
    dup = repeated_values([name for name, _ in args.missing])
    if dup:
        p.error(f"argument --missing: modality given twice: {' '.join(dup)}")
    known = {n for dataset in args.datasets for n in modality_names(dataset, args.views)}
    unknown = [name for name, _ in args.missing if name not in known]
    if unknown:
        p.error(
            f"argument --missing: no data set among {' '.join(args.datasets)} has a modality named "
            f"{' '.join(unknown)} (they have: {' '.join(sorted(known))})"
        )
    args.missing = dict(args.missing)
    try:
        args.noise_levels = None if args.no_robustness else list(check_levels(args.noise_levels))
    except ValueError as e:
        p.error(f"argument --noise-levels: {e}")
    if args.sweep:
        if args.missing or REGRESSION_DATASETS.intersection(args.datasets):
            p.error("argument --sweep: runs on classification data sets and complete data only")
        args.sweep_method = args.sweep_method or MethodSpec("mimo")
        keys = [k for k, _ in args.sweep]
        dup = repeated_values(keys)
        if dup:
            p.error(f"argument --sweep: key given twice: {' '.join(dup)}")
        # Every combination must build the method: unknown keys and out-of-range values fail here, not mid-sweep.
        grid = dict(args.sweep)
        for combo in itertools.product(*grid.values()):
            options = dict(zip(grid, combo, strict=True))
            try:
                args.sweep_method.build(**options)
            except (TypeError, ValueError) as e:
                p.error(f"argument --sweep: {args.sweep_method.label} does not accept {options}: {e}")
    elif args.sweep_method is not None:
        p.error("argument --sweep-method: only meaningful with --sweep")
    problem = _check_writable(args.out)
    if problem is not None:
        p.error(f"argument --out: cannot write to {args.out}: {problem}")
    return p, args


def _load_all(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, tuple]:
    # Every data set up front, so that a missing data package fails before any training.
    loaded = {}
    for dataset in args.datasets:
        try:
            loaded[dataset] = _load(dataset, args.views, args.missing)
        except ImportError as e:
            p.error(f"argument --datasets: {dataset}: {e}")
    return loaded


def _title(dataset: str, names: Sequence[str], fusion: str = "late", missing: dict[str, float] | None = None) -> str:
    """``"mfeat (pix + fou)"``, then the fusion unless late and the missing modalities, e.g. ``"mfeat (pix + fou),
    attention fusion, 30% of fou missing"``."""
    title = f"{dataset} ({' + '.join(names)})"
    if fusion != "late":
        title += f", {fusion} fusion"
    dropped = [f"{100 * f:g}% of {n}" for n, f in (missing or {}).items() if n in names and f > 0]
    if dropped:
        title += f", {' and '.join(dropped)} missing"
    return title


def _run_compare(args, loaded, progress: Callable[[str, str], None]) -> int:
    report: dict[str, dict] = {}
    tables = []
    for dataset, d in loaded.items():
        for fusion in args.fusion:
            title = _title(dataset, d["names"], fusion, args.missing)
            results = compare(
                d["xs"],
                d["y"],
                _as_compare_methods(args.methods),
                args.seeds,
                args.epochs,
                fusion=fusion,
                task=d["task"],
                present=d["present"],
                test=d["test"],
                test_present=d["test_present"],
                regression_loss=args.regression_loss,
                batch_size=args.batch_size,
                lr=args.lr,
                robustness_levels=args.noise_levels,
                progress=lambda msg, d=dataset, f=fusion: progress(d if f == "late" else f"{d} {f}", msg),
            )
            report[title] = dict(modalities=d["names"], fusion=fusion, task=d["task"], results=results)
            tables.append(format_table(title, d["names"], results))
            robustness = format_robustness_table(title, d["names"], results)
            if robustness:
                tables.append(robustness)
    print()
    for table in tables:
        print(table + "\n")
    write_json(
        args.out / "balance.json",
        dict(machine=machine_info(), args=_args_json(args), datasets=report),
    )
    drawers = ((args.out / "balance.png", plot), (args.out / "robustness.png", plot_robustness))
    figures = [path for path, draw in drawers if draw(path, report)]
    print(
        f"wrote {args.out / 'balance.json'}"
        + (f" and {', '.join(map(str, figures))}" if figures else " (no figure: matplotlib is not installed)")
    )
    return 0


def _run_sweep(args, loaded, progress: Callable[[str, str], None]) -> int:
    grid = dict(args.sweep)
    report: dict[str, dict] = {}
    tables, figures = [], []
    for dataset, d in loaded.items():
        names, xs, y = d["names"], d["xs"], d["y"]
        for fusion in args.fusion:
            options = dict(
                test=d["test"],
                batch_size=args.batch_size,
                lr=args.lr,
                robustness_levels=args.noise_levels,
                fusion=fusion,
            )
            # The sweep's points and the comparison methods in one interleaved call: their times compare.
            everything = sweep(
                xs,
                y,
                method=args.sweep_method,
                grid=grid,
                seeds=args.seeds,
                epochs=args.epochs,
                baselines=_as_compare_methods(args.methods),
                progress=lambda msg, d=dataset, f=fusion: progress(d if f == "late" else f"{d} {f}", msg),
                **options,
            )
            points = [p for p in everything if not p.get("baseline")]
            baselines = {p["method"]: p for p in everything if p.get("baseline")}
            worst = sweep_worst_key(points)
            front = pareto_front(points, x=worst, y="fused_acc")
            name = _title(dataset, names, fusion)
            title = f"{name}: {args.sweep_method.label} over {' x '.join(grid)}"
            report[name] = dict(
                modalities=names,
                fusion=fusion,
                method=args.sweep_method.label,
                grid=grid,
                points=points,
                front=[p["params"] for p in front],
                front_measures=[worst, "fused_acc"],
                baselines=baselines,
            )
            tables.append(format_sweep_table(title, points, front, baselines))
            suffix = "" if fusion == "late" else f"_{fusion}"
            path = args.out / f"sweep_{dataset}{suffix}.png"
            if plot_sweep(path, title, points, front, baselines, x_key=worst):
                figures.append(path)
    print()
    for table in tables:
        print(table + "\n")
    write_json(args.out / "sweep.json", dict(machine=machine_info(), args=_args_json(args), datasets=report))
    print(
        f"wrote {args.out / 'sweep.json'}"
        + (f" and {', '.join(map(str, figures))}" if figures else " (no figures: matplotlib is not installed)")
    )
    return 0


def _args_json(args: argparse.Namespace) -> dict:
    out = vars(args) | {"out": str(args.out), "methods": [m.label for m in args.methods]}
    if args.sweep_method is not None:
        out["sweep_method"] = args.sweep_method.label
    if args.sweep:
        out["sweep"] = dict(args.sweep)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p, args = _parse(argv)
    # These models are small: one thread avoids the synchronisation cost of torch's thread pool on every tiny op,
    # which on a busy two-core machine made a training step tens of times slower than single-threaded.
    torch.set_num_threads(args.threads)
    loaded = _load_all(p, args)

    points = math.prod(len(v) for _, v in args.sweep) if args.sweep else 0
    runs_per_dataset = (len(args.methods) + points) * len(args.fusion)
    bar = ProgressBar(len(args.datasets) * runs_per_dataset * len(args.seeds))

    def progress(dataset: str, message: str) -> None:
        bar(f"{dataset} {message}")

    return (_run_sweep if args.sweep else _run_compare)(args, loaded, progress)


if __name__ == "__main__":
    sys.exit(main())
