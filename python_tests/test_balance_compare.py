"""mimo_ext.balance.compare on tiny runs, its bad-input errors, and the main command end to end."""

from __future__ import annotations

import json

import pytest
import torch

from mimo_ext.balance.__main__ import main
from mimo_ext.balance.compare import compare
from mimo_ext.datasets import load_mfeat


@pytest.fixture(scope="module")
def tiny_mfeat():
    xs, y = load_mfeat(("pix", "fou"))
    keep = torch.arange(0, 2000, 8)  # 250 rows, 25 per class
    return [x[keep] for x in xs], y[keep]


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
    # Same split, model, init and batches: two runs of one method and seed agree exactly.
    again = compare(xs, y, methods=["joint"], seeds=[0], epochs=2, batch_size=32, probe_steps=20)
    assert again["joint"]["per_seed"][0]["fused_acc"] == results["joint"]["per_seed"][0]["fused_acc"]


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
    ],
)
def test_compare_bad_input(tiny_mfeat, make, match):
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
