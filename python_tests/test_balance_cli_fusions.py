"""The main command's fusion, missing-modality and regression options: argument errors before any training, the
data they load, what they hand to compare, and tiny real runs."""

from __future__ import annotations

import json

import pytest
import torch

import mimo_ext.balance.__main__ as cli
from mimo_ext.balance import compare


@pytest.fixture
def no_training(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("training or data loading started before the arguments were checked")

    monkeypatch.setattr(cli, "compare", boom)
    monkeypatch.setattr(cli, "_load", boom)


@pytest.mark.parametrize(
    "argv, name",
    [
        (["--fusion", "middle"], "--fusion"),
        (["--fusion", "late", "late"], "--fusion"),
        (["--fusion"], "--fusion"),
        (["--missing", "fou"], "--missing"),
        (["--missing", "fou=x"], "--missing"),
        (["--missing", "fou=1"], "--missing"),
        (["--missing", "fou=-0.1"], "--missing"),
        (["--missing", "fou=0.3", "fou=0.2"], "--missing"),
        (["--missing", "video=0.3"], "--missing"),  # no default data set has a modality named video
        (["--datasets", "mfeat", "--missing", "image=0.3"], "--missing"),
        (["--regression-loss", "l1"], "--regression-loss"),
        (["--sweep", "gamma=1,2", "--fusion", "early"], "--sweep"),
        (["--sweep", "gamma=1,2", "--missing", "fou=0.3"], "--sweep"),
        (["--sweep", "gamma=1,2", "--datasets", "diabetes"], "--sweep"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(argv, name, tmp_path, capsys, no_training):
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {name}" in err and "Traceback" not in err


def test_defaults_stay_late_and_complete(tmp_path):
    _, args = cli._parse(["--out", str(tmp_path)])
    assert args.fusion == ["late"] and args.missing == {} and args.regression_loss == "mse"
    _, args = cli._parse(["--out", str(tmp_path), "--fusion", "early", "attention", "--missing", "fou=0.3"])
    assert args.fusion == ["early", "attention"] and args.missing == {"fou": 0.3}


def test_load_with_missing_rows():
    mfeat = cli._load("mfeat", ["pix", "fou"], {"fou": 0.3, "image": 0.3})  # image is not an mfeat view: ignored
    assert mfeat["present"][0].all() and int((~mfeat["present"][1]).sum()) == 600 and mfeat["test_present"] is None
    av = cli._load("av-digits-mini", [], {"image": 0.3})
    for masks, (xs, _) in ((av["present"], (av["xs"], av["y"])), (av["test_present"], av["test"])):
        assert masks[1].all() and int((~masks[0]).sum()) == round(0.3 * len(xs[0]))
    diabetes = cli._load("diabetes", [], {"serum": 0.25})
    assert diabetes["task"] == "regression" and diabetes["names"] == ["vitals", "serum"]
    assert int((~diabetes["present"][1]).sum()) == round(0.25 * 442)
    again = cli._load("diabetes", [], {"serum": 0.25})
    assert torch.equal(again["present"][1], diabetes["present"][1])  # seeded: the same rows every run


def test_titles_name_the_fusion_and_the_missing_rows():
    assert cli._title("mfeat", ["pix", "fou"]) == "mfeat (pix + fou)"
    assert cli._title("mfeat", ["pix", "fou"], "attention", {"fou": 0.3, "image": 0.3}) == (
        "mfeat (pix + fou), attention fusion, 30% of fou missing"
    )


def test_each_data_set_runs_on_each_fusion(tmp_path, capsys, monkeypatch):
    calls = []

    def fake_compare(xs, y, methods, seeds, epochs, **kwargs):
        calls.append(dict(kwargs, n=len(y)))
        return compare(xs, y, methods, seeds, 1, **dict(kwargs, probe_steps=5, measure_memory=False))

    monkeypatch.setattr(cli, "compare", fake_compare)
    argv = ["--datasets", "mfeat", "diabetes", "--fusion", "early", "attention", "--missing", "fou=0.3"]
    argv += ["--methods", "joint", "mimo", "--seeds", "0", "--epochs", "1", "--regression-loss", "huber"]
    assert cli.main([*argv, "--out", str(tmp_path)]) == 0
    assert [(c["fusion"], c["task"]) for c in calls] == [
        ("early", "classification"),
        ("attention", "classification"),
        ("early", "regression"),
        ("attention", "regression"),
    ]
    assert all(c["regression_loss"] == "huber" for c in calls)
    assert int((~calls[0]["present"][1]).sum()) == 600 and calls[2]["present"] is None
    out = capsys.readouterr().out
    assert "mfeat (pix + fou), early fusion, 30% of fou missing" in out and "worst masked" in out
    assert "diabetes (vitals + serum), attention fusion" in out and "fused R^2" in out
    assert "Rows that have each modality" in out
    payload = json.loads((tmp_path / "balance.json").read_text())
    titles = list(payload["datasets"])
    assert len(titles) == 4 and payload["datasets"][titles[2]]["task"] == "regression"
    assert payload["args"]["fusion"] == ["early", "attention"] and payload["args"]["missing"] == {"fou": 0.3}
    assert (tmp_path / "balance.png").stat().st_size > 10_000
