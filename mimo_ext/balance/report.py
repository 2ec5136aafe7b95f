"""Readable output of a comparison or a sweep: text tables, a JSON file and PNG figures.

Every table and figure shows the worst modality's accuracy next to the fused accuracy: MIMO's claim is that it
trains the worst modality first, and the fused accuracy alone hides that (one strong modality can carry it).
Accuracies print as ``mean+-std`` over seeds, or the mean alone when there was one seed (no spread to show).
Under each table: the thread count, the machine's load before and after the runs, and a warning when the machine
was busy with other work (step times are then not reliable; accuracies do not depend on timing).
"""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = [
    "format_robustness_table",
    "format_sweep_table",
    "format_table",
    "machine_info",
    "machine_note",
    "param_label",
    "plot",
    "plot_robustness",
    "plot_sweep",
    "write_json",
]

# Settings that describe the machine during the runs rather than the training: reported by machine_note.
MACHINE_SETTINGS = ("threads", "load_before", "load_after", "cpu_count", "busy")
# Above this many characters, format_table moves the per-modality columns into a block of their own.
MAX_WIDTH = 150
BUSY_NOTE = (
    "NOTE: the machine was busy with other work during these runs: step times (ms/step, weight ms, x joint) are "
    "not reliable; accuracies do not depend on timing."
)


def _seeds(r: dict) -> int:
    return len(r.get("per_seed") or ()) or len(r["settings"].get("seeds", ())) or 1


def _acc(mean: float, std: float, seeds: int) -> str:
    # One seed has no spread: print the mean alone rather than a meaningless "+-0.000".
    return f"{mean:.3f}" if seeds < 2 else f"{mean:.3f}+-{std:.3f}"


def _render(labels: Sequence[str], label_header: str, columns: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """Rows of a text table: a left-aligned label column, then right-aligned columns fitted to their content."""
    lw = max(len(label_header), *(len(x) for x in labels)) + 2
    widths = [max(len(h), *(len(c) for c in cells)) + 2 for h, cells in columns]
    lines = [f"{label_header:<{lw}}" + "".join(f"{h:>{w}}" for (h, _), w in zip(columns, widths, strict=True))]
    for i, label in enumerate(labels):
        lines.append(f"{label:<{lw}}" + "".join(f"{c[i]:>{w}}" for (_, c), w in zip(columns, widths, strict=True)))
    return lines


def _blocks(labels: Sequence[str], groups: Sequence[Sequence[tuple[str, Sequence[str]]]]) -> list[list[str]]:
    """The column groups as one table when it fits in :data:`MAX_WIDTH` characters; else the first group alone,
    then the others, each joining the previous block when that still fits and split by column when it is too wide
    alone. Each block repeats the label column."""

    def fits(columns) -> bool:
        return max(len(line) for line in _render(labels, "method", columns)) <= MAX_WIDTH

    one = [c for g in groups for c in g]
    if fits(one):
        return [_render(labels, "method", one)]
    blocks: list[list] = [list(groups[0])]
    for group in groups[1:]:
        if len(blocks) > 1 and fits(blocks[-1] + list(group)):
            blocks[-1] += group
            continue
        blocks.append([])
        for column in group:
            if blocks[-1] and not fits(blocks[-1] + [column]):
                blocks.append([])
            blocks[-1].append(column)
    return [_render(labels, "method", b) for b in blocks]


def _time_columns(rows: Sequence[dict], joint: float | None) -> list[tuple[str, list[str]]]:
    return [
        ("ms/step", [f"{1e3 * r['step_time_s']:.2f}" for r in rows]),
        ("x joint", [f"{r['step_time_s'] / joint:.2f}" if joint else "-" for r in rows]),
    ]


def _has(rows: Sequence[dict], key: str) -> bool:
    return all(r.get(key) is not None for r in rows)


def _fmt(value: float, metric: str) -> str:
    if value != value:  # NaN: no rows to measure on
        return "-"
    return f"{value:.2f}" if metric == "mae" else f"{value:.3f}"


def _stat(mean: float, std: float, seeds: int, metric: str) -> str:
    if metric != "mae":
        return _acc(mean, std, seeds) if mean == mean else "-"
    return _fmt(mean, metric) if seeds < 2 or mean != mean else f"{mean:.2f}+-{std:.2f}"


def _task(rows: Sequence[dict]) -> str:
    return rows[0].get("settings", {}).get("task", "classification")


def _label(kind: str, metric: str) -> str:
    # Classification keeps the short names ("fused", "worst probe", "probe:pix"); regression names the metric.
    return kind if metric == "acc" else f"{kind} {metric.upper().replace('R2', 'R^2')}"


def present_rows_note(settings: dict, names: Sequence[str]) -> list[str]:
    """One line with the rows that have each modality, per side (when the data had missing modalities)."""
    counts = settings.get("present_rows")
    if not counts:
        return []
    total = {"train": settings.get("train_rows"), "test": settings.get("test_rows")}
    sides = [
        f"{side} " + ", ".join(f"{n} {c} of {total[side]}" for n, c in zip(names, counts[side], strict=True))
        for side in ("train", "test")
        if side in counts
    ]
    return ["Rows that have each modality: " + "; ".join(sides)]


def format_table(title: str, names: Sequence[str], results: dict[str, dict]) -> str:
    """One row per method: fused accuracy, the worst modality's masked, probe and head accuracy (each the worst over
    modalities per seed, then mean+-std over seeds; probe and head where the model has them), per-modality masked,
    probe and head accuracy, time per step with its weighting share, step time relative to ``joint``, and peak
    memory; then the settings held equal, the rows per modality when some were missing, and :func:`machine_note`.
    Regression results show R^2 and MAE where classification shows accuracy. A table wider than :data:`MAX_WIDTH`
    puts the per-modality columns in blocks of their own."""
    methods = list(results)
    rows = [results[m] for m in methods]
    joint = results.get("joint", {}).get("step_time_s")
    metrics = ("r2", "mae") if _task(rows) == "regression" else ("acc",)
    summary, per_modality = [], []
    for metric in metrics:
        key = f"fused_{metric}"
        summary.append((_label("fused", metric), [_stat(r[key], r[f"{key}_std"], _seeds(r), metric) for r in rows]))
    for kind in ("masked", "probe", "head"):
        for metric in metrics if kind != "probe" else ("acc",):
            key = f"worst_{kind}_{metric}"
            if kind == "head" and metric == "mae" or not _has(rows, key):
                continue
            cells = [_stat(r[key], r[f"{key}_std"], _seeds(r), metric) for r in rows]
            summary.append((_label(f"worst {kind}", metric), cells))
    for kind in ("masked", "probe", "head"):
        for metric in metrics if kind != "probe" else ("acc",):
            key = f"{kind}_{metric}"
            if kind == "head" and metric == "mae" or not _has(rows, key):
                continue
            per_modality.append([])
            for i, n in enumerate(names):
                if kind == "head":  # the heads' spread is in the JSON; the table keeps them short
                    cells = [_fmt(r[key][i], metric) for r in rows]
                else:
                    cells = [_stat(r[key][i], r[f"{key}_std"][i], _seeds(r), metric) for r in rows]
                per_modality[-1].append((f"{_label(kind, metric)}:{n}", cells))
    timing = _time_columns(rows, joint)
    timing.insert(1, ("weight ms", [f"{1e3 * r['step_time_split_s']['weighting']:.2f}" for r in rows]))
    peaks = [r.get("peak_memory_bytes") for r in rows]
    timing.append(("peak MB", [f"{p / 2**20:.2f}" if p is not None else "-" for p in peaks]))

    lines = [title]
    for i, block in enumerate(_blocks(methods, [summary + timing, *per_modality])):
        lines += ([] if i == 0 else ["per modality:"]) + block
    settings = rows[0]["settings"]
    held = ", ".join(
        f"{k}={v}"
        for k, v in settings.items()
        if k not in ("method_options", "present_rows") and k not in MACHINE_SETTINGS
    )
    lines.append(f"Same for every method: {held}")
    if any(key.startswith("worst masked") for key, _ in summary):
        lines.append(MASKED_NOTE if any(_late(r) for r in rows) else MASKED_NOTE.split(";")[0] + ".")
    lines += present_rows_note(settings, names)
    lines += machine_note(rows)
    return "\n".join(lines)


def _level(x: float) -> str:
    return f"{x:g}"


def format_robustness_table(title: str, names: Sequence[str], results: dict[str, dict]) -> str:
    """Reliability under a perturbed sensor (compare's ``robustness``), one row per method: the worst modality's
    area under the metric-against-noise curve, its metric at the largest noise level and with it dropped (each the
    worst over modalities per seed, then mean+-std), then per modality the same three. Regression: R^2 (the MAE
    curves are in the JSON). Methods run without the evaluation are left out; "" when none has it."""
    methods = [m for m, r in results.items() if r.get("robustness")]
    if not methods:
        return ""
    rows = [results[m] for m in methods]
    metric = "r2" if _task(rows) == "regression" else "acc"
    levels = rows[0]["robustness"]["levels"]
    top = _level(levels[-1])

    def cells(get) -> list[str]:
        return [_stat(*get(r["robustness"]), _seeds(r), metric) for r in rows]

    summary = [
        ("worst auc", cells(lambda rb: (rb["worst"][f"auc_{metric}"], rb["worst"][f"auc_{metric}_std"]))),
        (f"worst @{top}", cells(lambda rb: (rb["worst"][metric][-1], rb["worst"][f"{metric}_std"][-1]))),
        ("worst drop", cells(lambda rb: (rb["worst"][f"dropped_{metric}"], rb["worst"][f"dropped_{metric}_std"]))),
    ]
    per_modality = []
    for i, n in enumerate(names):
        per_modality.append(
            [
                (f"auc:{n}", cells(lambda rb, i=i: (rb["modalities"][i][f"auc_{metric}"],
                                                    rb["modalities"][i][f"auc_{metric}_std"]))),
                (f"@{top}:{n}", cells(lambda rb, i=i: (rb["modalities"][i][metric][-1],
                                                       rb["modalities"][i][f"{metric}_std"][-1]))),
                (f"drop:{n}", cells(lambda rb, i=i: (rb["modalities"][i][f"dropped_{metric}"],
                                                     rb["modalities"][i][f"dropped_{metric}_std"]))),
            ]
        )
    unit = "R^2" if metric == "r2" else "accuracy"
    lines = [f"{title}: reliability with one modality perturbed at test time ({unit})"]
    for i, block in enumerate(_blocks(methods, [summary, *per_modality])):
        lines += ([] if i == 0 else ["per modality:"]) + block
    lines.append(
        f"Noise: Gaussian on one modality, levels {', '.join(map(_level, levels))} x each feature's training std "
        f"(seeded, the same for every method). auc: mean {unit} over the levels (area under the curve / range); "
        f"@{top}: at the largest level; drop: the modality filled as the masked losses fill it. worst: per seed the "
        "worst modality, then mean over seeds."
    )
    if all(_late(r) for r in rows):
        lines.append(LATE_FUSION_DROP_NOTE)
    return "\n".join(lines)


def _late(r: dict) -> bool:
    return r.get("head_acc") is not None or r.get("head_r2") is not None


# Masked accuracy and the dropped-modality column fill a modality's inputs. Only a model trained on filled inputs
# (early and attention fusion under the methods that use masked losses) has seen such inputs; late fusion's fusion
# head never has, so there the number measures the model's reaction to a lost sensor, not how well the modality
# was learned (that is the probe's and the head's job).
MASKED_NOTE = (
    "masked: the fused output with only that modality present (others filled). The measure of how well a modality "
    "was learned under early and attention fusion (the masked-loss methods train on such inputs); under late fusion "
    "the fusion head never saw a filled modality, so masked can fall below the majority-class rate: read probe and "
    "head there."
)
LATE_FUSION_DROP_NOTE = (
    "Late fusion: its fusion head never saw a filled modality in training, so 'drop' measures the deployed model's "
    "reaction to a lost sensor (what reliability asks), not how well the other modalities were learned."
)


def param_label(params: dict) -> str:
    """``{"gamma": 0.5, "mu": 0.1}`` -> ``"gamma=0.5 mu=0.1"``."""
    return " ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in params.items())


def _same_point(a: dict, b: dict) -> bool:
    return a.get("method") == b.get("method") and a.get("params") == b.get("params")


def sweep_worst_key(points: Sequence[dict]) -> str:
    """The worst-modality measure a sweep's front uses: the probe where the model has probes (late fusion), else
    the masked accuracy (early fusion)."""
    return "worst_probe_acc" if _has(points, "worst_probe_acc") else "worst_masked_acc"


def format_sweep_table(
    title: str, points: Sequence[dict], front: Sequence[dict], baselines: dict[str, dict] | None = None
) -> str:
    """One row per sweep point (numbered as in :func:`plot_sweep`, with its parameters), then one per comparison
    method: fused accuracy, worst-modality probe and head accuracy (without probes, e.g. early fusion: masked
    accuracy), the worst modality's robustness area (when evaluated), time per step (and relative to ``joint`` when
    it is among the comparison methods); ``*`` marks the points on the Pareto front (worst-modality accuracy against
    fused accuracy, both larger-better); then :func:`machine_note`."""
    baselines = baselines or {}
    rows = list(points) + list(baselines.values())
    # Numbered as in plot_sweep's figure.
    labels = [f"{i + 1:>2} {param_label(p['params'])}" for i, p in enumerate(points)]
    labels += [f"   {m} (default)" for m in baselines]
    joint = baselines.get("joint", {}).get("step_time_s")
    worst = sweep_worst_key(rows)
    columns = [
        ("front", ["*" if any(_same_point(p, f) for f in front) else "" for p in points] + [""] * len(baselines)),
        ("fused", [_acc(r["fused_acc"], r["fused_acc_std"], _seeds(r)) for r in rows]),
    ]
    for key, header in (("worst_probe_acc", "worst probe"), ("worst_head_acc", "worst head"),
                        ("worst_masked_acc", "worst masked")):
        if _has(rows, key) and (key != "worst_masked_acc" or worst == key):
            columns.append((header, [_acc(r[key], r[f"{key}_std"], _seeds(r)) for r in rows]))
    if all(r.get("robustness") for r in rows):
        columns.append(
            ("worst auc", [_acc(r["robustness"]["worst"]["auc_acc"], r["robustness"]["worst"]["auc_acc_std"],
                                _seeds(r)) for r in rows])
        )
    columns += _time_columns(rows, joint)
    lines = [title, *_render(labels, " # params / method", columns)]
    lines.append(
        f"* on the sweep's Pareto front ({worst.replace('_acc', '').replace('_', ' ')} against fused accuracy): no "
        "other sweep point is as good on both and better on one"
    )
    if any(c[0] == "worst auc" for c in columns):
        lines.append("worst auc: the worst modality's mean accuracy over the test-time noise levels (robustness)")
    lines += machine_note(rows)
    return "\n".join(lines)


def _load(triple: Sequence[float] | None) -> str:
    return "/".join(f"{x:.2f}" for x in triple) if triple else "n/a"


def machine_note(results: Sequence[dict]) -> list[str]:
    """Lines for under a table: threads, CPUs and load averages (1/5/15 min) before and after, from the results'
    ``settings``; plus :data:`BUSY_NOTE` when any result says the machine was busy."""
    if not results:
        return []
    settings = [r.get("settings", {}) for r in results]
    first = settings[0]
    if not any(k in first for k in MACHINE_SETTINGS):
        return []
    threads, cpus = first.get("threads"), first.get("cpu_count")
    # Several compare/sweep calls (a sweep and its comparison methods): the load before the first and after the last.
    before = next((s.get("load_before") for s in settings if s.get("load_before")), None)
    after = next((s.get("load_after") for s in reversed(settings) if s.get("load_after")), None)
    lines = [
        f"Machine: {threads if threads is not None else '?'} torch thread(s) on "
        f"{cpus if cpus is not None else '?'} CPU(s); load average (1/5/15 min) {_load(before)} before, "
        f"{_load(after)} after"
    ]
    if any(s.get("busy") for s in settings):
        lines.append(BUSY_NOTE)
    return lines


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


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save_figure(plt, fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _is_mimo(method: str) -> bool:
    return method.startswith("mimo")


def _method_points(ax, results: dict[str, dict], x, xerr, y: str = "fused_acc") -> None:
    """Each method as a point with error bars (std over seeds), MIMO's larger, labelled by name."""
    for method, r in results.items():
        ax.errorbar(
            x(r),
            r[y],
            xerr=xerr(r) if xerr else None,
            yerr=r[f"{y}_std"],
            fmt="D" if _is_mimo(method) else "o",
            ms=7 if _is_mimo(method) else 5,
            capsize=3,
        )
        ax.annotate(
            method,
            (x(r), r[y]),
            fontsize=8,
            fontweight="bold" if _is_mimo(method) else "normal",
            xytext=(3, 3),
            textcoords="offset points",
        )


def _axes_of(results: dict[str, dict]) -> tuple[str, str, str, str, str]:
    """(fused key, worst-modality key, its name, curve key, curve name) for the results' task and model: late
    fusion, the probe and the heads as before; other fusions, the masked accuracy (the measure that compares across
    fusions); R^2 for regression."""
    rows = list(results.values())
    metric = "r2" if _task(rows) == "regression" else "acc"
    unit = "R^2" if metric == "r2" else "accuracy"
    late = all(r["curves"].get("head") is not None for r in rows)
    probes = late and metric == "acc" and _has(rows, "worst_probe_acc")
    worst = "worst_probe_acc" if probes else f"worst_masked_{metric}"
    worst_name = f"worst-modality {'probe' if worst.startswith('worst_probe') else 'masked'} {unit}"
    curve = "head" if late else "masked"
    return f"fused_{metric}", worst, worst_name, curve, f"{curve} test {unit}"


def plot(path: Path, datasets: dict[str, dict]) -> bool:
    """Per data set: fused accuracy against the worst modality's probe accuracy (up and to the right is better;
    MIMO's claim is a move to the right at no cost upwards), fused accuracy against step time, and each modality's
    head accuracy over epochs per method. Without probes (early fusion, regression) the worst modality's masked
    accuracy (R^2) stands in, and without heads its masked accuracy over epochs. Returns False (and draws nothing)
    when matplotlib is not installed."""
    plt = _pyplot()
    if plt is None:
        return False
    robust = {name: _has_robustness(d["results"]) for name, d in datasets.items()}
    panels = {name: 2 + len(d["modalities"]) + robust[name] for name, d in datasets.items()}
    cols = min(4, max(panels.values()))
    rows_of = {name: -(-n // cols) for name, n in panels.items()}
    fig, axes = plt.subplots(
        sum(rows_of.values()), cols, figsize=(4.2 * cols, 3.4 * sum(rows_of.values())), squeeze=False
    )
    first_row = 0
    legend_ax = None
    for dataset, d in datasets.items():
        results = d["results"]
        fused, worst, worst_name, curve_key, curve_name = _axes_of(results)
        fused_name = "fused R^2" if fused == "fused_r2" else "fused accuracy"
        cells = [axes[first_row + i // cols][i % cols] for i in range(rows_of[dataset] * cols)]
        short = re.sub(r" \(.*?\)", "", dataset)  # "mfeat (pix + fou), early fusion" -> "mfeat, early fusion"

        ax = cells[0]
        _method_points(ax, results, lambda r, w=worst: r[w], lambda r, w=worst: r[f"{w}_std"], y=fused)
        ax.set_xlabel(worst_name)
        ax.set_ylabel(f"{short}\n{fused_name}")
        ax.set_title(f"{fused_name} vs worst modality (up, right: better)", fontsize=10)
        ax.grid(alpha=0.3)

        ax = cells[1]
        _method_points(ax, results, lambda r: 1e3 * r["step_time_s"], None, y=fused)
        ax.set_xlabel("ms per training step")
        ax.set_title(f"{fused_name} vs time per step", fontsize=10)
        ax.grid(alpha=0.3)

        for m, modality in enumerate(d["modalities"]):
            ax = cells[2 + m]
            for method, r in results.items():
                curve = r["curves"][curve_key][m]
                ax.plot(
                    range(1, len(curve) + 1),
                    curve,
                    label=method,
                    lw=2.2 if _is_mimo(method) else 1.0,
                    marker="o" if len(curve) == 1 else None,  # one epoch: a point, not an invisible line
                )
            sep = "\n" if "," in short else ", "  # a title with the fusion or the missing rows in it: two lines
            ax.set_title(f"{short}{sep}{modality}: {curve_name}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            legend_ax = legend_ax or ax
        if robust[dataset]:
            _robustness_panel(cells[2 + len(d["modalities"])], results, None, short)
        for unused in cells[panels[dataset] :]:
            unused.axis("off")
        first_row += rows_of[dataset]
    if legend_ax is not None:
        legend_ax.legend(fontsize=7)
    _save_figure(plt, fig, path)
    return True


def _has_robustness(results: dict[str, dict]) -> bool:
    return all(r.get("robustness") for r in results.values())


def _robustness_panel(ax, results: dict[str, dict], modality: int | None, title: str) -> None:
    """Each method's metric against the noise level on one modality (``None``: per level the worst modality, per
    seed then mean), with the modality dropped drawn one step right of the largest level ("drop")."""
    metric = "r2" if _task(list(results.values())) == "regression" else "acc"
    levels = None
    for method, r in results.items():
        rb = r["robustness"]
        levels = rb["levels"]
        part = rb["worst"] if modality is None else rb["modalities"][modality]
        width = 2.2 if _is_mimo(method) else 1.0
        line = ax.errorbar(levels, part[metric], yerr=part[f"{metric}_std"], lw=width, capsize=2, label=method)
        step = (levels[-1] - levels[0]) / max(len(levels) - 1, 1) or 0.5
        ax.errorbar(
            [levels[-1] + step], [part[f"dropped_{metric}"]], yerr=[part[f"dropped_{metric}_std"]],
            fmt="D" if _is_mimo(method) else "o", color=line[0].get_color(), capsize=2,
        )
    if levels is not None:
        step = (levels[-1] - levels[0]) / max(len(levels) - 1, 1) or 0.5
        ax.set_xticks([*levels, levels[-1] + step], [*map(_level, levels), "drop"], fontsize=7)
    unit = "R^2" if metric == "r2" else "accuracy"
    which = "worst modality" if modality is None else "that modality"
    ax.set_title(f"{title}\n{unit}, noise on {which} (x feature std)", fontsize=10)
    ax.set_xlabel("noise level / dropped")
    ax.grid(alpha=0.3)


def plot_robustness(path: Path, datasets: dict[str, dict]) -> bool:
    """Per data set a row: the worst modality's metric against the noise level, then each modality's, one line per
    method, the dropped modality at the right ("drop"). Returns False (and draws nothing) when matplotlib is not
    installed or no result has a robustness evaluation."""
    plt = _pyplot()
    shown = {name: d for name, d in datasets.items() if _has_robustness(d["results"])}
    if plt is None or not shown:
        return False
    cols = 1 + max(len(d["modalities"]) for d in shown.values())
    fig, axes = plt.subplots(len(shown), cols, figsize=(4.2 * cols, 3.6 * len(shown)), squeeze=False)
    for row, (dataset, d) in enumerate(shown.items()):
        short = re.sub(r" \(.*?\)", "", dataset)
        _robustness_panel(axes[row][0], d["results"], None, short)
        for m, name in enumerate(d["modalities"]):
            _robustness_panel(axes[row][1 + m], d["results"], m, f"{short}: {name}")
        for unused in axes[row][1 + len(d["modalities"]) :]:
            unused.axis("off")
    axes[0][0].legend(fontsize=7)
    _save_figure(plt, fig, path)
    return True


def plot_sweep(
    path: Path,
    title: str,
    points: Sequence[dict],
    front: Sequence[dict],
    baselines: dict[str, dict] | None = None,
    *,
    x_key: str = "worst_probe_acc",
) -> bool:
    """Fused accuracy against the worst modality's probe accuracy (``x_key``: another worst-modality measure, e.g.
    ``"worst_masked_acc"`` for early fusion): every sweep point (numbered, with a key to its
    parameters beside the axes) with its spread over seeds, the Pareto front marked and connected, and the
    comparison methods on the same axes. Returns False (and draws nothing) when matplotlib is not installed."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(10, 5.5))
    method = points[0]["method"] if points else "sweep"
    on_front = [any(_same_point(p, f) for f in front) for p in points]
    # Every sweep point with its spread over seeds (thin, grey), the front on top in red and connected.
    if points:
        ax.errorbar(
            [p[x_key] for p in points],
            [p["fused_acc"] for p in points],
            xerr=[p[f"{x_key}_std"] for p in points],
            yerr=[p["fused_acc_std"] for p in points],
            fmt="o",
            color="0.55",
            ms=5,
            lw=0.6,
            capsize=2,
            label=f"{method} sweep",
        )
    ordered = sorted(front, key=lambda p: p[x_key])
    if ordered:
        ax.plot(
            [p[x_key] for p in ordered],
            [p["fused_acc"] for p in ordered],
            "-o",
            color="tab:red",
            ms=7,
            lw=1.5,
            label=f"{method} sweep: Pareto front",
        )
    # Each point numbered (red on the front); the key beside the axes gives each number's parameters, which as
    # labels on the points would overlap wherever points are close.
    for i, (p, f) in enumerate(zip(points, on_front, strict=True)):
        ax.annotate(
            str(i + 1),
            (p[x_key], p["fused_acc"]),
            fontsize=8,
            fontweight="bold" if f else "normal",
            color="tab:red" if f else "0.3",
            xytext=(4, 4),
            textcoords="offset points",
        )
    key = [
        f"{i + 1:>2}{'*' if f else ' '} {param_label(p['params'])}"
        for i, (p, f) in enumerate(zip(points, on_front, strict=True))
    ]
    ax.text(
        1.02,
        1.0,
        f"{method} sweep\n(* on the front)\n\n" + "\n".join(key),
        transform=ax.transAxes,
        va="top",
        fontsize=8,
        family="monospace",
    )
    markers = "s^vP*Xhd<>"
    for i, (name, r) in enumerate((baselines or {}).items()):
        ax.errorbar(
            r[x_key],
            r["fused_acc"],
            xerr=r[f"{x_key}_std"],
            yerr=r["fused_acc_std"],
            fmt=markers[i % len(markers)],
            ms=8,
            capsize=3,
            label=f"{name} (default)",
        )
    ax.set_xlabel(f"{x_key.replace('_', ' ')} (larger is better)")
    ax.set_ylabel("fused accuracy (larger is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save_figure(plt, fig, path)
    return True
