"""Reliability under perturbed sensors: how a trained model's test metric degrades when one modality is noisy or
lost, at test time.

For each modality m, the test inputs with additive Gaussian noise on m alone, ``x_m + level * std_m * eps`` at each
noise level (``std_m``: the per-feature standard deviation of m's training rows, so a level is a signal-to-noise
ratio that means the same for every modality and feature; ``eps`` drawn once per modality from a seeded generator
and scaled for every level, so the curves are deterministic, paired across methods and seeds, and smooth in the
level), and with m dropped (filled with ``fill``, as the masked losses fill it). Per modality: the metric at each
level, with m dropped, and the area under the metric-against-level curve, normalised by the levels' range (the
curve's mean height: 1 for a classifier that noise never fools). The worst case over modalities is taken per run
(the modality the model leans on most may differ between seeds), then averaged over runs.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch
from torch import nn

from ..masking import fill_missing
from .evaluation import LOWER_IS_BETTER, METRICS, _fused, _metrics

__all__ = ["DEFAULT_NOISE_LEVELS", "area_under", "perturbation_curves", "summarise_robustness"]

# Noise levels in units of each feature's training standard deviation: 0 (clean) to 2 (noise twice the signal).
DEFAULT_NOISE_LEVELS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    """The noise levels as floats: a non-empty, strictly increasing list of finite numbers >= 0."""
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or len(levels) == 0:
        raise ValueError(f"robustness_levels must be a non-empty list of noise levels, got {levels!r:.80}")
    out = []
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 <= level < float("inf"):
            raise ValueError(f"robustness_levels must hold finite numbers >= 0, got {level!r}")
        out.append(float(level))
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"robustness_levels must be strictly increasing, got {list(levels)}")
    return tuple(out)


def area_under(levels: Sequence[float], values: Sequence[float]) -> float:
    """The trapezoid area under ``values`` against ``levels``, divided by the levels' range (the value itself for
    a single level): the curve's mean height."""
    if len(levels) == 1:
        return float(values[0])
    area = sum((b - a) * (u + v) / 2 for a, b, u, v in zip(levels, levels[1:], values, values[1:]))
    return float(area / (levels[-1] - levels[0]))


@torch.no_grad()
def perturbation_curves(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    targets: torch.Tensor,
    *,
    stds: Sequence[torch.Tensor],
    levels: Sequence[float] = DEFAULT_NOISE_LEVELS,
    task: str = "classification",
    fill: float = 0.0,
    present: Sequence[torch.Tensor] | None = None,
    scale: torch.Tensor | None = None,
    noise_seed: int = 0,
) -> dict:
    """One trained model's metrics with each modality perturbed (see the module docstring), in eval mode.

    Args:
        stds: per modality, the per-feature standard deviation of its training rows (shaped like one row).
        present: optional masks: noise goes only on the rows that have the modality; all rows are scored, missing
            inputs filled, as the fused metric is.
        noise_seed: the seed of the noise (modality m draws from ``noise_seed + m``).

    Returns:
        ``{"levels": [...], "modalities": [per modality {metric: [value per level], "dropped_" + metric: value,
        "auc_" + metric: area}]}`` for each metric of the task (:data:`~.evaluation.METRICS`).
    """
    levels = check_levels(levels)
    metrics = METRICS[task]
    was_training = model.training
    model.eval()
    try:
        filled = fill_missing(inputs, present, fill)
        per_modality = []
        for m, x in enumerate(filled):
            generator = torch.Generator().manual_seed(noise_seed + m)
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * stds[m].to(x)
            if present is not None:
                noise = noise * present[m].view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
            curve = []
            for level in levels:
                noisy = [x + level * noise if j == m else other for j, other in enumerate(filled)]
                curve.append(_metrics(_fused(model(noisy)), targets, task, scale))
            dropped = [torch.full_like(x, fill) if j == m else other for j, other in enumerate(filled)]
            lost = _metrics(_fused(model(dropped)), targets, task, scale)
            entry = {}
            for metric in metrics:
                values = [c[metric] for c in curve]
                entry[metric] = values
                entry[f"dropped_{metric}"] = lost[metric]
                entry[f"auc_{metric}"] = area_under(levels, values)
            per_modality.append(entry)
    finally:
        model.train(was_training)
    return {"levels": list(levels), "modalities": per_modality}


def _worst(values: Sequence[float], metric: str) -> float:
    return max(values) if metric in LOWER_IS_BETTER else min(values)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise_robustness(runs: Sequence[dict], task: str = "classification") -> dict:
    """Means and sample standard deviations over runs (seeds) of :func:`perturbation_curves`' results.

    Returns:
        ``{"levels", "modalities": [per modality {"levels", metric, metric_std (per level), "dropped_" + metric (+
        "_std"), "auc_" + metric (+ "_std")}], "worst": {metric (per level), "auc_" + metric, "dropped_" + metric,
        each with "_std"}}``: the worst over modalities per run (the lowest; the highest for MAE), then mean and
        std over runs.
    """
    levels = runs[0]["levels"]
    count = len(runs[0]["modalities"])
    modalities = []
    for m in range(count):
        entry: dict = {"levels": list(levels)}
        for metric in METRICS[task]:
            per_level = [_mean_std([r["modalities"][m][metric][i] for r in runs]) for i in range(len(levels))]
            entry[metric] = [v[0] for v in per_level]
            entry[f"{metric}_std"] = [v[1] for v in per_level]
            for key in (f"dropped_{metric}", f"auc_{metric}"):
                entry[key], entry[f"{key}_std"] = _mean_std([r["modalities"][m][key] for r in runs])
        modalities.append(entry)
    worst: dict = {}
    for metric in METRICS[task]:
        per_level = [
            _mean_std([_worst([mod[metric][i] for mod in r["modalities"]], metric) for r in runs])
            for i in range(len(levels))
        ]
        worst[metric] = [v[0] for v in per_level]
        worst[f"{metric}_std"] = [v[1] for v in per_level]
        for key in (f"dropped_{metric}", f"auc_{metric}"):
            per_run = [_worst([mod[key] for mod in r["modalities"]], metric) for r in runs]
            worst[key], worst[f"{key}_std"] = _mean_std(per_run)
    return {"levels": list(levels), "modalities": modalities, "worst": worst}
