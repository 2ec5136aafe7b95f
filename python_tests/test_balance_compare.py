"""mimo_ext.balance.compare on tiny runs, its bad-input errors, and the main command end to end."""

from __future__ import annotations

import importlib
import json
import math
import os
import statistics
import warnings

import numpy as np
import pytest
import torch

from mimo_ext.balance.__main__ import main
from mimo_ext.balance.compare import compare
from mimo_ext.datasets import load_mfeat

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


def test_main_command_writes_table_json_and_figure(tmp_path, capsys):
    rc = main(
        ["--datasets", "mfeat", "--methods", "joint", "mimo", "--seeds", "0", "--epochs", "1", "--out", str(tmp_path)]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "mfeat (pix + fou)" in out and "probe:fou" in out and "Same for every method" in out
    payload = json.loads((tmp_path / "balance.json").read_text())
    results = payload["datasets"]["mfeat (pix + fou)"]["results"]
    assert set(results) == {"joint", "mimo"} and "torch" in payload["machine"]
    assert (tmp_path / "balance.png").stat().st_size > 10_000
