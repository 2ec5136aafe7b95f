"""compare with early and attention fusion, with missing modalities (present masks) and for regression, on tiny
synthetic sets (a few epochs); the regression metrics against hand computation; the diabetes loader."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mimo_ext.balance import compare
from mimo_ext.balance.data import DIABETES_MODALITIES, load_diabetes
from mimo_ext.balance.evaluation import evaluate_model, regression_metrics
from mimo_ext.balance.methods import METHODS
from mimo_ext.balance.report import format_table
from mimo_ext.models import early_fusion_for

QUICK = dict(seeds=[0], epochs=1, batch_size=16, probe_steps=10, measure_memory=False)


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def synthetic(n=60, classes=3, seed=0):
    """A strong modality (the class, one-hot, plus noise) and a weak one (a noisier, smaller signal)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    strong = torch.nn.functional.one_hot(y, 4).float() * 2 + 0.3 * torch.randn(n, 4, generator=g)
    weak = torch.nn.functional.one_hot(y, 3).float() * 0.7 + torch.randn(n, 3, generator=g)
    return [strong, weak], y


def regression_data(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g)
    target = 3 * a[:, 0] - 2 * b[:, 1] + 0.1 * torch.randn(n, generator=g) + 50
    return [a, b], target


@pytest.mark.parametrize("fusion", ["late", "early", "attention"])
def test_every_fusion_reports_masked_accuracy(fusion):
    xs, y = synthetic()
    r = compare(xs, y, methods=["joint", "mimo"], fusion=fusion, **dict(QUICK, seeds=[0, 1], epochs=2))
    for result in r.values():
        assert len(result["masked_acc"]) == 2 and all(0 <= a <= 1 for a in result["masked_acc"])
        per_seed_worst = [min(s["masked_acc"]) for s in result["per_seed"]]
        assert result["worst_masked_acc"] == pytest.approx(sum(per_seed_worst) / 2)
        assert [s["worst_masked_acc"] for s in result["per_seed"]] == per_seed_worst
        assert len(result["curves"]["masked"]) == 2 and len(result["curves"]["masked"][0]) == 2
        assert (result["head_acc"] is None) == (fusion != "late")
        assert (result["probe_acc"] is None) == (fusion == "early")  # probes need per-modality encoders
        assert (result["curves"]["head"] is None) == (fusion != "late")
        assert result["settings"].get("fusion", "late") == fusion
    text = format_table("synthetic", ["strong", "weak"], r)
    assert "worst masked" in text and "masked:weak" in text
    assert ("head:weak" in text) == (fusion == "late")


@pytest.mark.parametrize("fusion", ["early", "attention"])
def test_every_method_runs_on_every_fusion(fusion):
    xs, y = synthetic(n=30)
    r = compare(xs, y, methods=list(METHODS), fusion=fusion, **QUICK)
    assert list(r) == list(METHODS)
    assert all(0 <= v["fused_acc"] <= 1 and v["step_time_s"] > 0 for v in r.values())
    # mimo and mimo_fused form the same direction, through autograd and through the fused optimizer.
    assert r["mimo"]["fused_acc"] == pytest.approx(r["mimo_fused"]["fused_acc"], abs=0.07)


def test_attention_fusion_runs_are_reproducible():
    xs, y = synthetic()
    a = compare(xs, y, methods=["mimo"], fusion="attention", **QUICK)["mimo"]
    b = compare(xs, y, methods=["mimo"], fusion="attention", **QUICK)["mimo"]
    assert a["per_seed"][0]["masked_acc"] == b["per_seed"][0]["masked_acc"] and a["fused_acc"] == b["fused_acc"]


def test_masked_accuracy_is_the_model_with_one_modality(monkeypatch):
    xs, y = synthetic()
    model = early_fusion_for(xs, 3)
    present = [torch.ones(60, dtype=torch.bool), torch.arange(60) % 2 == 0]
    m = evaluate_model(model, xs, y, present=present)
    with torch.no_grad():
        alone = model([torch.zeros_like(xs[0]), xs[1]])[present[1]].argmax(1)
        filled = model([xs[0], torch.where(present[1].view(-1, 1), xs[1], 0.0)]).argmax(1)
    assert m["masked"][1]["acc"] == pytest.approx((alone == y[present[1]]).float().mean().item())
    assert m["fused"]["acc"] == pytest.approx((filled == y).float().mean().item())
    assert m["heads"] is None


@pytest.mark.parametrize("fusion", ["late", "attention"])
def test_missing_rows_train_and_test_with_their_masks(fusion):
    xs, y = synthetic(n=80)
    present = [torch.ones(80, dtype=torch.bool), torch.rand(80, generator=torch.Generator().manual_seed(1)) > 0.3]
    xs[1] = xs[1].clone()
    xs[1][~present[1]] = float("nan")  # never read
    r = compare(xs, y, methods=["joint", "mimo", "ogm_ge"], fusion=fusion, present=present, **QUICK)
    settings = r["mimo"]["settings"]
    rows = settings["present_rows"]
    assert rows["train"][0] == settings["train_rows"] and rows["test"][0] == settings["test_rows"]
    assert rows["train"][1] + rows["test"][1] == int(present[1].sum())
    assert all(math.isfinite(v["fused_acc"]) and all(map(math.isfinite, v["masked_acc"])) for v in r.values())
    assert "Rows that have each modality: train strong" in format_table("t", ["strong", "weak"], r)


def test_missing_rows_with_an_explicit_test_set():
    xs, y = synthetic(n=80)
    present = [torch.ones(60, dtype=torch.bool), torch.arange(60) % 3 != 0]
    test_present = [torch.arange(20) % 2 == 0, torch.ones(20, dtype=torch.bool)]
    test = ([x[60:] for x in xs], y[60:])
    r = compare(
        [x[:60] for x in xs], y[:60], methods=["mimo"], test=test, present=present, test_present=test_present, **QUICK
    )
    assert r["mimo"]["settings"]["present_rows"] == {"train": [60, 40], "test": [10, 20]}


def test_present_errors_name_the_argument():
    xs, y = synthetic()
    with pytest.raises(ValueError, match=r"present\[1\] must be a bool tensor or array of shape \[60\]"):
        compare(xs, y, methods=["joint"], present=[torch.ones(60, dtype=torch.bool), torch.ones(60)], **QUICK)
    with pytest.raises(ValueError, match="present must be a list of 2 bool masks"):
        compare(xs, y, methods=["joint"], present=[torch.ones(60, dtype=torch.bool)], **QUICK)
    with pytest.raises(ValueError, match="test_present describes an explicit test set"):
        compare(xs, y, methods=["joint"], test_present=[torch.ones(60, dtype=torch.bool)] * 2, **QUICK)
    # NaN in a row marked present is still refused, with its row.
    bad = [xs[0], xs[1].clone()]
    bad[1][7, 0] = float("nan")
    present = [torch.ones(60, dtype=torch.bool), torch.arange(60) != 3]
    with pytest.raises(ValueError, match=r"modalities\[1\] has a non-finite value \(nan\) in row 7"):
        compare(bad, y, methods=["joint"], present=present, **QUICK)
    with pytest.raises(ValueError, match=r"modalities\[1\] is present in 1 training rows"):
        compare(xs, y, methods=["joint"], present=[present[0], torch.arange(60) == 0], **QUICK)


def test_bad_fusion_and_task_arguments():
    xs, y = synthetic()
    with pytest.raises(ValueError, match="fusion must be one of"):
        compare(xs, y, methods=["joint"], fusion="middle", **QUICK)
    with pytest.raises(ValueError, match="task must be one of"):
        compare(xs, y, methods=["joint"], task="ranking", **QUICK)
    with pytest.raises(ValueError, match="encoders= does not apply to fusion='early'"):
        compare(xs, y, methods=["joint"], fusion="early", encoders=lambda: [], **QUICK)
    with pytest.raises(ValueError, match="regression_loss must be one of"):
        compare(xs, y.float(), methods=["joint"], task="regression", regression_loss="l1", **QUICK)
    with pytest.raises(ValueError, match="num_classes is for classification"):
        compare(xs, y.float(), methods=["joint"], task="regression", num_classes=3, **QUICK)
    with pytest.raises(ValueError, match="fill must be a finite number"):
        compare(xs, y, methods=["joint"], fill=math.inf, **QUICK)
    with pytest.raises(ValueError, match=r"labels has a non-finite value \(nan\) in row 2"):
        compare(xs, torch.where(torch.arange(60) == 2, math.nan, 1.0), methods=["joint"], task="regression", **QUICK)


@pytest.mark.parametrize("fusion", ["late", "early", "attention"])
def test_regression_reports_r2_and_mae(fusion):
    xs, target = regression_data()
    r = compare(xs, target, methods=["joint", "mimo", "mmpareto", "ogm_ge"], fusion=fusion, task="regression", **QUICK)
    for result in r.values():
        assert "fused_acc" not in result and "masked_acc" not in result
        assert math.isfinite(result["fused_r2"]) and result["fused_mae"] > 0
        assert len(result["masked_r2"]) == len(result["masked_mae"]) == 2
        seed = result["per_seed"][0]
        assert seed["worst_masked_mae"] == max(seed["masked_mae"])  # worst MAE: the largest
        assert seed["worst_masked_r2"] == min(seed["masked_r2"])
        assert result["probe_acc"] is None
        assert (result["head_r2"] is None) == (fusion != "late")
        assert result["settings"]["task"] == "regression" and result["settings"]["loss"] == "mse"
    text = format_table("synthetic regression", ["a", "b"], r)
    assert "fused R^2" in text and "worst masked MAE" in text and "masked R^2:b" in text


def test_regression_learns_and_reports_mae_in_target_units():
    xs, target = regression_data(n=200)
    r = compare(xs, target, methods=["uniform"], task="regression", epochs=40, seeds=[0], measure_memory=False)
    # Target std is about 3.6 around 50: a fit that learned anything is far below the std in MAE.
    assert r["uniform"]["fused_r2"] > 0.8 and r["uniform"]["fused_mae"] < 1.5
    huber = compare(xs, target, methods=["uniform"], task="regression", regression_loss="huber", **QUICK)
    assert huber["uniform"]["settings"]["loss"] == "huber"
    two_targets = torch.stack([target, -target], 1)
    both = compare(xs, two_targets.numpy(), methods=["mimo"], task="regression", **QUICK)["mimo"]
    assert both["settings"]["targets"] == 2 and math.isfinite(both["fused_r2"])


def test_regression_metrics_by_hand():
    target = torch.tensor([1.0, 2.0, 3.0, 6.0])
    pred = torch.tensor([1.5, 2.0, 2.0, 5.0])
    # SS_res = 0.25 + 0 + 1 + 1 = 2.25; mean 3, SS_tot = 4 + 1 + 0 + 9 = 14; MAE = (0.5 + 0 + 1 + 1) / 4.
    m = regression_metrics(pred, target)
    assert m["r2"] == pytest.approx(1 - 2.25 / 14) and m["mae"] == pytest.approx(0.625)
    # Standardised values and their scale: R^2 unchanged, MAE back in the target's units.
    scaled = regression_metrics(pred / 2, target / 2, scale=torch.tensor([2.0]))
    assert scaled["r2"] == pytest.approx(m["r2"]) and scaled["mae"] == pytest.approx(0.625)
    # Several columns: the mean of the columns' R^2 and MAE, as sklearn's uniform average.
    two = regression_metrics(torch.stack([pred, target], 1), torch.stack([target, target], 1))
    assert two["r2"] == pytest.approx((1 - 2.25 / 14 + 1) / 2) and two["mae"] == pytest.approx(0.3125)
    assert all(math.isnan(v) for v in regression_metrics(pred[:0], target[:0]).values())
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y, p = rng.normal(size=(30, 2)), rng.normal(size=(30, 2))
    ours = regression_metrics(torch.from_numpy(p), torch.from_numpy(y))
    assert ours["r2"] == pytest.approx(sklearn_metrics.r2_score(y, p))
    assert ours["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(y, p))


def test_diabetes_is_two_measurement_sources():
    pytest.importorskip("sklearn")
    xs, target, names = load_diabetes()
    assert names == ["vitals", "serum"] == list(DIABETES_MODALITIES)
    assert [tuple(x.shape) for x in xs] == [(442, 4), (442, 6)] and target.shape == (442,)
    assert target.min() == 25 and target.max() == 346
    assert set(xs[0][:, 1].tolist()) == {1.0, 2.0}  # sex, raw (not scaled)
