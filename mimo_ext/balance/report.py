"""Readable output of a comparison: a text table, a JSON file and a PNG figure."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["format_table", "machine_info", "plot", "write_json"]


def format_table(title: str, names: Sequence[str], results: dict[str, dict]) -> str:
    """One row per method: fused accuracy (mean +- std over seeds), per-modality head and probe accuracy, time per
    step with its weighting share, step time relative to ``joint``, and peak memory."""
    head_cols = [f"head:{n}" for n in names]
    probe_cols = [f"probe:{n}" for n in names]
    columns = ["fused", *head_cols, *probe_cols, "ms/step", "weight ms", "x joint", "peak MB"]
    width = max(14, *(len(c) + 2 for c in columns))
    lines = [title, f"{'method':<11}" + "".join(f"{c:>{width}}" for c in columns)]
    joint = results.get("joint", {}).get("step_time_s")
    for method, r in results.items():
        cells = [f"{r['fused_acc']:.3f}+-{r['fused_acc_std']:.3f}"]
        cells += [f"{a:.3f}" for a in r["head_acc"]]
        cells += [f"{a:.3f}+-{s:.3f}" for a, s in zip(r["probe_acc"], r["probe_acc_std"], strict=True)]
        cells += [f"{1e3 * r['step_time_s']:.2f}", f"{1e3 * r['step_time_split_s']['weighting']:.2f}"]
        cells += [f"{r['step_time_s'] / joint:.2f}" if joint else "-"]
        peak = r.get("peak_memory_bytes")
        cells += [f"{peak / 2**20:.2f}" if peak is not None else "-"]
        lines.append(f"{method:<11}" + "".join(f"{c:>{width}}" for c in cells))
    settings = next(iter(results.values()))["settings"]
    held = ", ".join(f"{k}={v}" for k, v in settings.items() if k != "method_options")
    lines.append(f"Same for every method: {held}")
    return "\n".join(lines)


def machine_info() -> dict:
    info = dict(
        python=platform.python_version(),
        torch=torch.__version__,
        cpu=platform.processor() or platform.machine(),
        threads=torch.get_num_threads(),
    )
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))


def plot(path: Path, datasets: dict[str, dict]) -> bool:
    """Per data set: each modality's head accuracy over epochs per method, and fused accuracy against step time.
    Returns False (and draws nothing) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = len(datasets)
    cols = 1 + max(len(d["modalities"]) for d in datasets.values())
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for row, (dataset, d) in enumerate(datasets.items()):
        results = d["results"]
        for m, modality in enumerate(d["modalities"]):
            ax = axes[row][m]
            for method, r in results.items():
                curve = r["curves"]["head"][m]
                ax.plot(range(1, len(curve) + 1), curve, label=method, lw=2.2 if method.startswith("mimo") else 1.0)
            ax.set_title(f"{modality}: head test accuracy", fontsize=10)
            if m == 0:
                ax.set_ylabel(dataset.split(" (")[0])
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        ax = axes[row][len(d["modalities"])]
        for method, r in results.items():
            ax.errorbar(1e3 * r["step_time_s"], r["fused_acc"], yerr=r["fused_acc_std"], fmt="o", capsize=3)
            ax.annotate(
                method, (1e3 * r["step_time_s"], r["fused_acc"]), fontsize=8, xytext=(3, 3), textcoords="offset points"
            )
        ax.set_xlabel("ms per training step")
        ax.set_title("fused accuracy vs time per step", fontsize=10)
        ax.grid(alpha=0.3)
        for unused in axes[row][len(d["modalities"]) + 1 :]:
            unused.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
