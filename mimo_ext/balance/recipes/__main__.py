"""``python -m mimo_ext.balance.recipes NAME --root DIR``: every balancing method (or ``--methods``) trained on a
benchmark under identical settings, the published ones by default; the main command's table, JSON and figure, and
the MIMO paper's number beside ours. ``--help`` lists the options; docs/benchmarks.md the data preparation."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ..__main__ import ProgressBar
from ..compare import DEFAULT_METHODS
from ..report import format_table, machine_info, plot, write_json
from . import RECIPES
from .layout import LayoutError
from .networks import FUSION_HEADS
from .recipe import PAPER, Recipe
from .runner import RunConfig, run_recipe


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mimo_ext.balance.recipes",
        description="Train the balancing methods on a benchmark data set prepared as the public code prepares it.",
    )
    p.add_argument("recipe", choices=sorted(RECIPES), help="the benchmark")
    p.add_argument("--root", type=Path, required=True, help="the data set's folder (docs/benchmarks.md)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help="default: every method")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, help="default: the published number")
    p.add_argument("--batch-size", type=int, help="default: the published one")
    p.add_argument("--lr", type=float, help="default: the published one")
    p.add_argument("--fusion", choices=FUSION_HEADS, default="concat")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="on CUDA, train in float32 (default: bf16 AMP)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    p.add_argument("--option", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="a layout variant of the recipe (e.g. fps=2, audio=npy, train_list=my_train.txt); "
                        "docs/benchmarks.md lists each recipe's")
    p.add_argument("--method-option", type=_key_value, action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="e.g. ogm_ge.alpha=0.8, mimo.mu=0.1")
    p.add_argument("--out", type=Path, default=Path("recipe_results"), help="tables, JSON, figure, checkpoints")
    p.add_argument("--resume", action="store_true", help="continue each run from its checkpoint in --out")
    p.add_argument("--tiny", action="store_true", help="tiny encoders (tests and smoke runs; same code path)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    return p


def _method_options(p: argparse.ArgumentParser, items) -> dict:
    out: dict[str, dict] = {}
    for key, value in items:
        method, sep, option = key.partition(".")
        if not sep or not option:
            p.error(f"--method-option expects METHOD.KEY=VALUE, got {key}={value}")
        out.setdefault(method, {})[option] = _number(value)
    return out


def paper_note(recipe: Recipe, results: dict[str, dict]) -> str:
    """The MIMO paper's number and ours, for every method, in percent."""
    ref = recipe.paper

    def ours(r: dict) -> float:
        value = r[ref.metric]
        return 100 * (value[ref.modality] if ref.modality is not None else value)

    cells = ", ".join(f"{name} {ours(r):.2f}" for name, r in results.items())
    return f"{PAPER} reports {ref.value:.2f} ({ref.label}) on {recipe.title}; this run's {ref.label}: {cells}"


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = RECIPES[args.recipe]
    config = RunConfig.from_recipe(
        recipe, args.root, args.methods, args.seeds,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, fusion=args.fusion, device=args.device,
        amp=args.amp, workers=args.workers, tiny=args.tiny, out=args.out, resume=args.resume,
        options=dict(args.option), method_options=_method_options(p, args.method_option),
    )
    bar = ProgressBar(len(args.methods) * len(args.seeds) * config.epochs)
    try:
        results = run_recipe(config, lambda message: bar(f"{recipe.name} {message}"))
    except (LayoutError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    title = f"{recipe.title} ({' + '.join(recipe.modalities)}), {args.fusion} fusion"
    print()
    print(format_table(title, recipe.modalities, results))
    print(paper_note(recipe, results))
    report = {title: dict(modalities=list(recipe.modalities), fusion=args.fusion, task="classification",
                          results=results)}
    json_path, png_path = args.out / f"recipe_{recipe.name}.json", args.out / f"recipe_{recipe.name}.png"
    write_json(json_path, dict(machine=machine_info(), args=vars(args) | {"root": str(args.root), "out": str(args.out)},
                               paper=dict(source=PAPER, value=recipe.paper.value, label=recipe.paper.label),
                               datasets=report))
    drew = plot(png_path, report)
    print(f"wrote {json_path}" + (f" and {png_path}" if drew else " (no figure: matplotlib is not installed)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
