"""mimo_ext.balance.compare on tiny runs: its results' fields, seeds and settings, its bad-input errors; with early
and attention fusion, with missing modalities (present masks) and for regression on tiny synthetic sets (a few
epochs); the regression metrics against hand computation."""

from __future__ import annotations

import importlib
import math
import os
import statistics
import warnings

import numpy as np
import pytest
import torch

from mimo_ext.balance.compare import compare
from mimo_ext.balance.evaluation import evaluate_model, regression_metrics
from mimo_ext.balance.methods import METHODS
from mimo_ext.balance.report import format_table
from mimo_ext.datasets import load_mfeat
from mimo_ext.models import early_fusion_for

compare_module = importlib.import_module("mimo_ext.balance.compare")  # the package's `compare` is the function

# One quick run: one epoch, a short probe, no memory measurement.
QUICK = dict(seeds=[0], epochs=1, batch_size=16, probe_steps=10, measure_memory=False)
ACCURACIES = ("fused_acc", "head_acc", "probe_acc", "worst_head_acc", "worst_probe_acc", "curves")


@pytest.fixture(scope="module")
def tiny_mfeat():
    xs, y = load_mfeat(("pix", "fou"))
    keep = torch.arange(0, 2000, 8)  # 250 rows, 25 per class
    return [x[keep] for x in xs], y[keep]


def accuracies(result: dict) -> dict:
    """The deterministic part of one method's result (times, memory and the machine's load vary)."""
    return {k: result[k] for k in ACCURACIES} | {
        "per_seed": [{k: v for k, v in s.items() if k != "step_time_s"} for s in result["per_seed"]]
    }


def test_compare_tiny_run_returns_the_documented_fields(tiny_mfeat):
    xs, y = tiny_mfeat
    results = compare(xs, y, methods=["joint", "mimo"], seeds=[0, 1], epochs=2, batch_size=32, probe_steps=20)
    assert list(results) == ["joint", "mimo"]
    for r in results.values():
        assert 0.0 <= r["fused_acc"] <= 1.0 and r["fused_acc_std"] >= 0.0
        assert len(r["probe_acc"]) == len(r["head_acc"]) == 2
        assert all(0.0 <= a <= 1.0 for a in r["probe_acc"] + r["head_acc"])
        assert r["step_time_s"] > 0
        split = r["step_time_split_s"]
        assert set(split) == {"forward", "backward", "weighting", "optimizer"}
        assert sum(split.values()) <= r["step_time_s"] * 1.05
        assert len(r["curves"]["fused"]) == 2 and len(r["curves"]["head"]) == 2
        assert [s["seed"] for s in r["per_seed"]] == [0, 1]
        assert r["peak_memory_bytes"] is None or r["peak_memory_bytes"] > 0
        assert isinstance(r["fused_acc"], float) and all(isinstance(a, float) for a in r["probe_acc"])
        assert_worst_modality_fields(r)
    # Same split, model, init and batches: two runs of one method and seed agree exactly.
    again = compare(xs, y, methods=["joint"], seeds=[0], epochs=2, batch_size=32, probe_steps=20)
    assert again["joint"]["per_seed"][0]["fused_acc"] == results["joint"]["per_seed"][0]["fused_acc"]
    assert_worst_modality_fields(again["joint"])
    assert again["joint"]["worst_probe_acc_std"] == again["joint"]["worst_head_acc_std"] == 0.0  # one seed


def assert_worst_modality_fields(r: dict) -> None:
    """Per seed the minimum over modalities, then mean and sample std over seeds, recomputed by hand."""
    for kind in ("head", "probe"):
        per_seed = [min(s[f"{kind}_acc"]) for s in r["per_seed"]]
        assert [s[f"worst_{kind}_acc"] for s in r["per_seed"]] == per_seed
        assert r[f"worst_{kind}_acc"] == pytest.approx(sum(per_seed) / len(per_seed), abs=1e-12)
        std = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
        assert r[f"worst_{kind}_acc_std"] == pytest.approx(std, abs=1e-12)


def test_compare_interleaves_seeds_and_matches_each_method_run_alone(few_rows):
    # ogm_ge and pcgrad draw random numbers while training: each run must seed itself for the order not to matter.
    names = ["ogm_ge", "pcgrad", "mimo"]
    lines = []
    together = compare(*few_rows, methods=names, **dict(QUICK, seeds=[0, 1], epochs=2), progress=lines.append)
    assert [line.split(":")[0] for line in lines] == [f"{m} seed {s}" for s in (0, 1) for m in names]
    for name in names:
        alone = compare(*few_rows, methods=[name], **dict(QUICK, seeds=[0, 1], epochs=2))
        assert accuracies(together[name]) == accuracies(alone[name]), name
        assert_worst_modality_fields(together[name])


@pytest.mark.parametrize(
    "before, after, busy",
    [
        # Offsets from the limit: cores - threads + 0.5 before the runs, and that plus the runs' own threads after.
        (-0.1, -0.1, False),
        (0.1, -0.1, True),
        (-0.1, 0.1, True),
        (None, None, False),  # no load average on this system
    ],
)
def test_compare_settings_record_what_the_times_were_measured_under(few_rows, monkeypatch, before, after, busy):
    cores, threads = os.cpu_count(), torch.get_num_threads()
    limit = cores - threads + 0.5
    loads = iter([(before, limit), (after, limit + threads)])

    def getloadavg():
        offset, base = next(loads)
        if offset is None:
            raise OSError("no load average")
        return (base + offset, 0.25, 0.125)

    monkeypatch.setattr(os, "getloadavg", getloadavg)
    results = compare(*few_rows, methods=["joint", "mimo"], **QUICK)
    for r in results.values():
        settings = r["settings"]
        assert settings["threads"] == threads and settings["cpu_count"] == cores
        for key, offset, base in (("load_before", before, limit), ("load_after", after, limit + threads)):
            assert settings[key] == (None if offset is None else [base + offset, 0.25, 0.125])
        assert settings["busy"] is busy
        assert settings["epochs"] == 1 and settings["method_options"] == {}  # the existing keys stay
    with pytest.raises(StopIteration):
        next(loads)  # read once before the first run and once after the last, not per method


def as_numpy(xs, y, dtype=np.float32):
    return [x.numpy().astype(dtype) for x in xs], y.numpy().astype(np.int32)


@pytest.mark.parametrize(
    "convert, named",
    [
        (lambda xs, y: ([xs[0], xs[1].double()], y), ["modalities[1] (float64)"]),
        (lambda xs, y: ([x.double() for x in xs], y), ["modalities[0] (float64)", "modalities[1] (float64)"]),
        (lambda xs, y: as_numpy(xs, y), []),
        (lambda xs, y: as_numpy(xs, y, np.float64), ["modalities[0] (float64)", "modalities[1] (float64)"]),
        (lambda xs, y: ([xs[0].numpy(), xs[1].half()], torch.from_numpy(y.numpy())), ["modalities[1] (float16)"]),
    ],
)
def test_compare_trains_other_dtypes_and_numpy_in_float32(few_rows, convert, named):
    xs, y = convert(*few_rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = compare(xs, y, methods=["joint"], **QUICK)
    assert [str(w.message) for w in caught] == (
        [f"{', '.join(named)} converted to float32: the models train in float32"] if named else []
    )
    assert all(w.filename == __file__ for w in caught)  # stacklevel=2: the warning points at the caller
    # The same as converting by hand first (float16 values stay rounded: the conversion is exact, not a refit).
    by_hand = [torch.as_tensor(x).float() for x in xs], torch.as_tensor(y).long()
    assert accuracies(results["joint"]) == accuracies(compare(*by_hand, methods=["joint"], **QUICK)["joint"])


def test_compare_warns_once_for_training_and_test_data(few_rows):
    xs, y = few_rows
    test = ([xs[0][:10].double(), xs[1][:10]], y[:10].numpy())
    with pytest.warns(UserWarning) as caught:
        compare([xs[0], xs[1].double()], y, methods=["joint"], test=test, **QUICK)
    assert len(caught) == 1
    assert str(caught[0].message).startswith("modalities[1] (float64), test modalities[0] (float64) converted")


def with_value(x: torch.Tensor, row: int, column: int, value: float) -> torch.Tensor:
    x = x.clone()
    x.view(len(x), -1)[row, column] = value
    return x


@pytest.mark.parametrize(
    "which, modality, row, value, match",
    [
        ("train", 1, 17, math.nan, r"^modalities\[1\] has a non-finite value \(nan\) in row 17$"),
        ("train", 0, 0, math.inf, r"^modalities\[0\] has a non-finite value \(inf\) in row 0$"),
        ("train", 1, 49, -math.inf, r"^modalities\[1\] has a non-finite value \(-inf\) in row 49$"),
        ("numpy", 0, 3, math.nan, r"^modalities\[0\] has a non-finite value \(nan\) in row 3$"),
        ("test", 1, 4, math.nan, r"^test modalities\[1\] has a non-finite value \(nan\) in row 4$"),
        ("float64", 0, 8, 1e300, r"^modalities\[0\] has a value \(1e\+300\) beyond float32's range in row 8$"),
    ],
)
def test_compare_refuses_non_finite_values(few_rows, no_training, which, modality, row, value, match):
    xs, y = [x.clone() for x in few_rows[0]], few_rows[1]
    test = None
    if which == "test":
        test = ([x[:10] for x in xs], y[:10])
        test[0][modality] = with_value(test[0][modality], row, 5, value)
    else:
        if which == "float64":
            xs[modality] = xs[modality].double()
        xs[modality] = with_value(xs[modality], row, 5, value)
        # A second bad value further on: the message names the first bad row.
        xs[modality] = with_value(xs[modality], min(row + 1, len(y) - 1), 0, value)
        if which == "numpy":
            xs[modality] = xs[modality].numpy()
    with pytest.raises(ValueError, match=match):
        compare(xs, y, methods=["joint"], test=test, **QUICK)


def test_compare_refuses_a_bad_method_option_before_any_method_trains(few_rows, no_training):
    with pytest.raises(ValueError, match="mu must be finite and > 0, got -1"):
        compare(*few_rows, methods=["joint", "mimo"], method_options={"mimo": {"mu": -1}}, **QUICK)


def test_compare_refuses_duplicate_methods(few_rows, no_training):
    with pytest.raises(ValueError, match=r"duplicate method name\(s\) \['mimo', 'joint'\]"):
        compare(*few_rows, methods=["mimo", "joint", "uniform", "joint", "mimo", "mimo"], **QUICK)


def test_compare_refuses_duplicate_seeds(few_rows, no_training):
    with pytest.raises(ValueError, match=r"duplicate seed\(s\) \[1\]"):
        compare(*few_rows, methods=["joint"], **dict(QUICK, seeds=[1, 0, 1]))


def test_compare_mimo_and_mimo_fused_train_alike(tiny_mfeat):
    # The fused optimizer path and the single-backward path form the same MIMO direction.
    xs, y = tiny_mfeat
    r = compare(
        xs, y, methods=["mimo", "mimo_fused"], seeds=[0], epochs=2, batch_size=32, probe_steps=20, measure_memory=False
    )
    assert r["mimo"]["fused_acc"] == pytest.approx(r["mimo_fused"]["fused_acc"], abs=0.02)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda xs, y: (xs[:1], y), "at least 2 modalities"),
        (lambda xs, y: ([xs[0], xs[1][:-1]], y), r"modalities\[1\] has 249 rows but labels has 250"),
        (lambda xs, y: (xs, y - 1), "labels must be in"),
        (lambda xs, y: (xs, y.float()), "labels must be a 1-D integer tensor"),
        (lambda xs, y: (xs, y.numpy().astype(np.float64)), "labels must be a 1-D integer tensor or numpy array"),
        (lambda xs, y: ([xs[0], xs[1].numpy().astype(np.int64)], y), r"modalities\[1\] must be floating point"),
    ],
)
def test_compare_bad_input(tiny_mfeat, no_training, make, match):
    xs, y = make(*tiny_mfeat)
    with pytest.raises(ValueError, match=match):
        compare(xs, y, methods=["joint"], seeds=[0], epochs=1)


def test_compare_labels_beyond_num_classes(tiny_mfeat):
    xs, y = tiny_mfeat
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\)"):
        compare(xs, y, methods=["joint"], seeds=[0], epochs=1, num_classes=5)


def test_compare_unknown_method(tiny_mfeat):
    with pytest.raises(ValueError, match="unknown method.*'nope'"):
        compare(*tiny_mfeat, methods=["joint", "nope"], seeds=[0], epochs=1)


# --- early and attention fusion, missing modalities, regression -----------------------------------------------


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


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("fusion", ["early", "attention"])
def test_every_method_runs_on_every_fusion(fusion):
    xs, y = synthetic(n=30)
    r = compare(xs, y, methods=list(METHODS), fusion=fusion, **QUICK)
    assert list(r) == list(METHODS)
    assert all(0 <= v["fused_acc"] <= 1 and v["step_time_s"] > 0 for v in r.values())
    # mimo and mimo_fused form the same direction, through autograd and through the fused optimizer.
    assert r["mimo"]["fused_acc"] == pytest.approx(r["mimo_fused"]["fused_acc"], abs=0.07)


@pytest.mark.usefixtures("one_thread")
def test_attention_fusion_runs_are_reproducible():
    xs, y = synthetic()
    a = compare(xs, y, methods=["mimo"], fusion="attention", **QUICK)["mimo"]
    b = compare(xs, y, methods=["mimo"], fusion="attention", **QUICK)["mimo"]
    assert a["per_seed"][0]["masked_acc"] == b["per_seed"][0]["masked_acc"] and a["fused_acc"] == b["fused_acc"]


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
def test_missing_rows_with_an_explicit_test_set():
    xs, y = synthetic(n=80)
    present = [torch.ones(60, dtype=torch.bool), torch.arange(60) % 3 != 0]
    test_present = [torch.arange(20) % 2 == 0, torch.ones(20, dtype=torch.bool)]
    test = ([x[60:] for x in xs], y[60:])
    r = compare(
        [x[:60] for x in xs], y[:60], methods=["mimo"], test=test, present=present, test_present=test_present, **QUICK
    )
    assert r["mimo"]["settings"]["present_rows"] == {"train": [60, 40], "test": [10, 20]}


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
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
