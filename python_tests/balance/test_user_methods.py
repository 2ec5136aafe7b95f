"""The harness open to the user's own methods: a class, an instance, a dotted path or a MethodSpec passed to
compare, sweep and the command line (the methods in user_methods.py, written as a new user would, outside
mimo_ext); one method several times with different options in one interleaved call."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from mimo_ext.balance import METHODS, MethodSpec, compare, sweep
from mimo_ext.balance.methods.spec import import_method, parse_method_argument

from . import user_methods
from .user_methods import INSTANCE, HalfUniform, UPGradLike, upgrad_coefficients

cli = importlib.import_module("mimo_ext.balance.__main__")

QUICK = dict(seeds=[0], epochs=1, batch_size=16, probe_steps=10, measure_memory=False)
PATH = "python_tests.balance.user_methods"


def accuracies(r: dict) -> dict:
    return {k: r[k] for k in ("fused_acc", "probe_acc", "head_acc", "masked_acc", "curves")}


def test_upgrad_coefficients_agree_with_the_dual_cone():
    # Orthogonal gradients: each is already in the dual cone, so UPGrad averages them (coefficients 1/2).
    assert torch.allclose(upgrad_coefficients(torch.diag(torch.tensor([1.0, 4.0]))), torch.tensor([0.5, 0.5]).double())
    # Conflicting gradients: the combination has a non-negative inner product with every gradient.
    g = torch.tensor([[1.0, 0.0], [-0.9, 0.5], [0.2, 1.0]], dtype=torch.float64)
    combined = upgrad_coefficients(g @ g.T) @ g
    assert (g @ combined >= -1e-9).all()


def test_a_user_class_trains_like_the_registered_method_it_equals(few_rows):
    # HalfUniform(scale=1) forms uniform's gradient: same numbers, without touching METHODS.
    before = dict(METHODS)
    r = compare(*few_rows, methods=["uniform", MethodSpec(HalfUniform, {"scale": 1.0}, label="mine")], **QUICK)
    assert list(r) == ["uniform", "mine"] and METHODS == before
    assert accuracies(r["mine"]) == accuracies(r["uniform"])
    assert r["mine"]["settings"]["method_options"] == {"scale": 1.0, "method": f"{PATH}:HalfUniform"}


@pytest.mark.parametrize(
    "entry, label",
    [
        (UPGradLike, "upgrad"),  # a class with a name attribute
        (HalfUniform, "HalfUniform"),  # a class without one: its class name
        (f"{PATH}:UPGradLike", "upgrad"),
        (f"{PATH}.HalfUniform", "HalfUniform"),
        (INSTANCE, "HalfUniform"),
    ],
)
def test_compare_takes_classes_paths_and_instances(few_rows, entry, label):
    r = compare(*few_rows, methods=[entry], **QUICK)
    assert list(r) == [label] and 0.0 <= r[label]["fused_acc"] <= 1.0
    assert INSTANCE.calls == 0  # an instance is copied for each run, so no state carries over


def test_one_method_several_times_in_one_interleaved_call(few_rows):
    lines = []
    specs = [MethodSpec("mimo", {"gamma": 0.5}), MethodSpec("mimo", {"gamma": 2.0}), "mimo"]
    together = compare(*few_rows, methods=specs, **dict(QUICK, seeds=[0, 1]), progress=lines.append)
    labels = ["mimo gamma=0.5", "mimo gamma=2", "mimo"]
    assert list(together) == labels
    assert [line.split(":")[0] for line in lines] == [f"{m} seed {s}" for s in (0, 1) for m in labels]
    for spec, label in zip(specs[:2], labels, strict=False):
        alone = compare(*few_rows, methods=["mimo"], method_options={"mimo": spec.options}, **dict(QUICK, seeds=[0, 1]))
        assert accuracies(together[label]) == accuracies(alone["mimo"])
    assert together[labels[0]]["curves"] != together[labels[1]]["curves"]


@pytest.mark.parametrize(
    "methods, options, error, match",
    [
        ([MethodSpec("mimo", {"gamma": 1.0}, "a"), MethodSpec("mimo", {"gamma": 2.0}, "a")], {}, ValueError,
         r"duplicate method name\(s\) \['a'\].*distinct label"),
        (["mimo", MethodSpec("mimo")], {}, ValueError, r"duplicate method name\(s\) \['mimo'\]"),
        ([f"{PATH}:Nope"], {}, ValueError, "has no attribute 'Nope'"),
        (["no_such_module_xyz:Thing"], {}, ValueError, "cannot import module 'no_such_module_xyz'"),
        ([f"{PATH}:upgrad_coefficients"], {}, ValueError, "not a mimo_ext.balance.BalanceMethod"),
        ([MethodSpec(HalfUniform, {"scale": -1.0})], {}, ValueError, "scale must be >= 0"),
        (["joint"], {"method_options": {"mimoo": {}}}, ValueError, r"method_options names \['mimoo'\]"),
        ([42], {}, TypeError, "a method must be a registered name"),
    ],
)
def test_bad_methods_fail_before_training(few_rows, no_training, methods, options, error, match):
    with pytest.raises(error, match=match):
        compare(*few_rows, methods=methods, **QUICK, **options)


def test_an_instance_takes_no_options():
    with pytest.raises(ValueError, match="is an instance: give options to its class"):
        MethodSpec(INSTANCE, {"scale": 1.0})


def test_sweep_a_user_class_with_baselines_interleaved(few_rows):
    lines = []
    points = sweep(*few_rows, HalfUniform, {"scale": [0.0, 1.0]}, baselines=["uniform"], **QUICK,
                   progress=lines.append)
    assert [p["params"] for p in points] == [{"scale": 0.0}, {"scale": 1.0}, {}]
    assert [p["method"] for p in points] == ["HalfUniform", "HalfUniform", "uniform"] and points[2]["baseline"]
    assert [line.split(":")[0] for line in lines] == [
        "HalfUniform [scale=0] seed 0", "HalfUniform [scale=1] seed 0", "uniform seed 0"
    ]
    assert accuracies(points[1]) == accuracies(points[2])  # scale 1 is uniform


def test_parse_method_argument():
    spec = parse_method_argument(f"{PATH}:HalfUniform@scale=0.25")
    assert spec.label == f"{PATH}:HalfUniform@scale=0.25" and spec.options == {"scale": 0.25}
    assert parse_method_argument("mimo@schedule=increasing,gamma=2").options == {"schedule": "increasing", "gamma": 2}
    for bad, match in (("mimo@gamma", "expected NAME@key=value"), ("mimo@gamma=1,gamma=2", "given twice")):
        with pytest.raises(ValueError, match=match):
            parse_method_argument(bad)
    assert import_method(f"{PATH}:UPGradLike") is user_methods.UPGradLike


def test_cli_takes_a_dotted_path_and_one_method_twice(tmp_path, capsys):
    argv = ["--datasets", "mfeat", "--seeds", "0", "--epochs", "1", "--out", str(tmp_path), "--methods"]
    methods = [f"{PATH}:UPGradLike", "mimo@gamma=2", "mimo"]
    assert cli.main([*argv, *methods]) == 0
    results = json.loads((tmp_path / "balance.json").read_text())["datasets"]["mfeat (pix + fou)"]["results"]
    assert list(results) == ["upgrad", "mimo@gamma=2", "mimo"]
    assert results["mimo@gamma=2"]["settings"]["method_options"] == {"gamma": 2}
    assert "mimo@gamma=2" in capsys.readouterr().out


@pytest.mark.parametrize(
    "methods, match",
    [
        (["mimo", "mimo"], "argument --methods: repeated: mimo"),
        (["mimo@gama=2"], "argument --methods: .*unexpected keyword argument 'gama'"),
        (["pkg_that_is_not_there:X"], "argument --methods: .*cannot import module"),
    ],
)
def test_cli_refuses_bad_methods_naming_the_argument(tmp_path, capsys, methods, match):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--out", str(tmp_path), "--methods", *methods])
    assert exit_info.value.code == 2
    assert __import__("re").search(match, capsys.readouterr().err)
