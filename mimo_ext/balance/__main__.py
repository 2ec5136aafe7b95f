"""python -m mimo_ext.balance: every balancing method on real multi-modal data, identical settings, 3 seeds.

Defaults: mfeat ``pix`` + ``fou`` (a strong and a weak view of the same digits) and AV-digits-mini (8x8 digit
images with their leading principal components removed, paired with spoken digits). Prints one table per data
set and writes ``<out>/balance.json`` (every number, the settings and the machine) and ``<out>/balance.png``
(per-modality head accuracy over epochs per method, and fused accuracy against time per step).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..datasets import MFEAT_VIEWS, load_mfeat
from .compare import DEFAULT_METHODS, compare
from .data import load_av_digits
from .methods import METHODS
from .report import format_table, machine_info, plot, write_json

DATASETS = ("mfeat", "av-digits-mini", "av-digits")


class ProgressBar:
    """A one-line progress bar on stderr (a line per update when stderr is not a terminal)."""

    def __init__(self, total: int, width: int = 30) -> None:
        self.total, self.done, self.width = total, 0, width
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def __call__(self, message: str) -> None:
        self.done += 1
        filled = self.width * self.done // self.total
        line = (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
            f"{time.perf_counter() - self.start:5.0f}s  {message}"
        )
        print(("\r" + line.ljust(100)) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
        if self.tty and self.done == self.total:
            print(file=sys.stderr)


def _load(dataset: str, views: Sequence[str]):
    if dataset == "mfeat":
        xs, y = load_mfeat(views)
        return list(views), xs, y, None
    train, test = load_av_digits("mini" if dataset == "av-digits-mini" else "mnist")
    return train.names, train.modalities, train.labels, (test.modalities, test.labels)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mimo_ext.balance", description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["mfeat", "av-digits-mini"], choices=DATASETS)
    p.add_argument("--views", nargs="+", default=["pix", "fou"], choices=sorted(MFEAT_VIEWS), help="mfeat views")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=sorted(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", type=Path, default=Path("balance_results"), help="folder for balance.json/.png")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: see below)")
    args = p.parse_args(argv)
    # These models are small: one thread avoids the synchronisation cost of torch's thread pool on every tiny op,
    # which on a busy two-core machine made a training step tens of times slower than single-threaded.
    torch.set_num_threads(args.threads)
    if len(args.views) < 2:
        p.error("--views needs at least 2 views")

    total = len(args.datasets) * len(args.methods) * len(args.seeds)
    bar = ProgressBar(total)
    report: dict[str, dict] = {}
    tables = []
    for dataset in args.datasets:
        names, xs, y, test = _load(dataset, args.views)
        title = f"{dataset} ({' + '.join(names)})"
        results = compare(
            xs,
            y,
            args.methods,
            args.seeds,
            args.epochs,
            test=test,
            batch_size=args.batch_size,
            lr=args.lr,
            progress=lambda msg, d=dataset: bar(f"{d} {msg}"),
        )
        report[title] = dict(modalities=names, results=results)
        tables.append(format_table(title, names, results))
    print()
    for table in tables:
        print(table + "\n")
    write_json(
        args.out / "balance.json",
        dict(machine=machine_info(), args=vars(args) | {"out": str(args.out)}, datasets=report),
    )
    drew = plot(args.out / "balance.png", report)
    print(
        f"wrote {args.out / 'balance.json'}"
        + (f" and {args.out / 'balance.png'}" if drew else " (no figure: matplotlib is not installed)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
