"""Reliability under a perturbed sensor (mimo_ext.balance.robustness and compare's ``robustness`` entry): the
noise and the area against hand computation, the clean level against the fused metric, the worst case per seed,
determinism, regression, the table and the figure."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from mimo_ext.balance import compare
from mimo_ext.balance.evaluation import regression_metrics
from mimo_ext.balance.report import format_robustness_table, plot_robustness
from mimo_ext.balance.robustness import area_under, perturbation_curves, summarise_robustness

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = dict(seeds=[0, 1], epochs=1, batch_size=16, probe_steps=10, measure_memory=False)
LEVELS = (0.0, 0.5, 2.0)


def test_area_is_the_curves_mean_height():
    assert area_under([0.0, 1.0, 2.0], [1.0, 0.5, 0.5]) == pytest.approx(0.625)
    assert area_under([0.0, 0.5, 2.0], [0.8, 0.8, 0.8]) == pytest.approx(0.8)
    assert area_under([1.0], [0.3]) == 0.3


class SumOfModalities(nn.Module):
    """Predicts the sum of each modality's features times a weight: a regression model whose answer to noise can
    be written by hand."""

    def __init__(self, weights):
        super().__init__()
        self.weights = weights

    def forward(self, xs):
        return sum(w * x.sum(dim=1, keepdim=True) for w, x in zip(self.weights, xs, strict=True))


def test_noise_and_dropping_against_hand_computation():
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(13, 4, generator=gen), torch.randn(13, 7, generator=gen)]
    y = torch.randn(13, 1, generator=gen)
    stds = [torch.rand(4, generator=gen) + 0.5, torch.rand(7, generator=gen) + 0.5]
    model = SumOfModalities([1.0, -0.5])
    got = perturbation_curves(model, xs, y, stds=stds, levels=LEVELS, task="regression", fill=0.25, noise_seed=11)
    for m in range(2):
        noise = torch.randn(xs[m].shape, generator=torch.Generator().manual_seed(11 + m)) * stds[m]
        for i, level in enumerate(LEVELS):
            noisy = [x + level * noise if j == m else x for j, x in enumerate(xs)]
            want = regression_metrics(model(noisy), y)
            assert got["modalities"][m]["r2"][i] == pytest.approx(want["r2"], rel=1e-6)
            assert got["modalities"][m]["mae"][i] == pytest.approx(want["mae"], rel=1e-6)
        dropped = [torch.full_like(x, 0.25) if j == m else x for j, x in enumerate(xs)]
        assert got["modalities"][m]["dropped_r2"] == pytest.approx(regression_metrics(model(dropped), y)["r2"])
        auc = area_under(LEVELS, got["modalities"][m]["mae"])
        assert got["modalities"][m]["auc_mae"] == pytest.approx(auc)
    again = perturbation_curves(model, xs, y, stds=stds, levels=LEVELS, task="regression", fill=0.25, noise_seed=11)
    assert again == got  # seeded: deterministic
    other = perturbation_curves(model, xs, y, stds=stds, levels=LEVELS, task="regression", fill=0.25, noise_seed=12)
    assert other["modalities"][0]["r2"][1:] != got["modalities"][0]["r2"][1:]


def test_the_worst_case_is_taken_per_run_then_averaged():
    def run(a, b):
        return {"levels": [0.0, 1.0], "modalities": [
            {"acc": a, "dropped_acc": a[0] - 0.1, "auc_acc": area_under([0.0, 1.0], a)},
            {"acc": b, "dropped_acc": b[0] - 0.2, "auc_acc": area_under([0.0, 1.0], b)},
        ]}

    runs = [run([0.9, 0.5], [0.8, 0.7]), run([0.9, 0.8], [0.8, 0.4])]
    s = summarise_robustness(runs)
    assert s["worst"]["acc"] == pytest.approx([0.8, 0.45])  # per level: min of each run, then mean
    assert s["worst"]["auc_acc"] == pytest.approx(statistics.fmean([0.7, 0.6]))
    assert s["worst"]["dropped_acc"] == pytest.approx(0.6)
    assert s["modalities"][1]["acc"] == pytest.approx([0.8, 0.55]) and s["modalities"][0]["levels"] == [0.0, 1.0]


@pytest.mark.parametrize("fusion", ["late", "early"])
def test_compare_reports_robustness_with_the_clean_level_equal_to_fused(few_rows, fusion):
    r = compare(*few_rows, methods=["joint", "mimo"], fusion=fusion, robustness_levels=LEVELS, **QUICK)
    for result in r.values():
        rb = result["robustness"]
        assert rb["levels"] == list(LEVELS) and len(rb["modalities"]) == 2
        for seed_row in result["per_seed"]:
            runs = seed_row["robustness"]["modalities"]
            # Level 0 is the clean test set: the fused accuracy exactly.
            assert all(m["acc"][0] == seed_row["fused_acc"] for m in runs)
        for m in rb["modalities"]:
            assert set(m) >= {"levels", "acc", "acc_std", "dropped_acc", "dropped_acc_std", "auc_acc", "auc_acc_std"}
        per_run = [min(m["auc_acc"] for m in s["robustness"]["modalities"]) for s in result["per_seed"]]
        assert rb["worst"]["auc_acc"] == pytest.approx(statistics.fmean(per_run))
    again = compare(*few_rows, methods=["mimo"], fusion=fusion, robustness_levels=LEVELS, **QUICK)
    assert again["mimo"]["robustness"] == r["mimo"]["robustness"]


def test_compare_regression_robustness_has_r2_and_mae():
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(60, 3, generator=gen), torch.randn(60, 2, generator=gen)]
    y = xs[0][:, 0] + 0.5 * xs[1][:, 1]
    r = compare(xs, y, methods=["mimo"], task="regression", robustness_levels=LEVELS, **QUICK)["mimo"]
    m = r["robustness"]["modalities"][0]
    assert {"r2", "mae", "dropped_r2", "dropped_mae", "auc_r2", "auc_mae"} <= set(m)
    assert m["r2"][0] == pytest.approx(r["fused_r2"])
    worst = r["robustness"]["worst"]
    per_run = [max(x["dropped_mae"] for x in s["robustness"]["modalities"]) for s in r["per_seed"]]
    assert worst["dropped_mae"] == pytest.approx(statistics.fmean(per_run))  # the worst MAE is the largest
    assert "reliability" in format_robustness_table("diabetes-like", ["a", "b"], {"mimo": r})


def test_robustness_can_be_skipped_and_bad_levels_are_refused(few_rows, no_training):
    with pytest.raises(ValueError, match="robustness_levels must be strictly increasing"):
        compare(*few_rows, methods=["joint"], robustness_levels=[0.0, 2.0, 1.0], **QUICK)
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        compare(*few_rows, methods=["joint"], robustness_levels=[-1.0], **QUICK)


def test_no_robustness_entry_when_skipped(few_rows):
    r = compare(*few_rows, methods=["joint"], robustness_levels=None, **QUICK)
    assert r["joint"]["robustness"] is None and format_robustness_table("t", ["pix", "fou"], r) == ""


def test_table_and_figure(few_rows, tmp_path):
    r = compare(*few_rows, methods=["joint", "mimo"], robustness_levels=LEVELS, **QUICK)
    table = format_robustness_table("mfeat (pix + fou)", ["pix", "fou"], r)
    header = table.splitlines()[1]
    for column in ("worst auc", "worst @2", "worst drop", "auc:pix", "@2:fou", "drop:fou"):
        assert column in table, column
    assert header.startswith("method") and "Late fusion" in table
    assert plot_robustness(tmp_path / "r.png", {"mfeat": dict(modalities=["pix", "fou"], results=r)})
    assert (tmp_path / "r.png").stat().st_size > 0
