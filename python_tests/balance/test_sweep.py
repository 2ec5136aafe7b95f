"""mimo_ext.balance.sweep (one method over a grid of its options) and pareto_front."""

from __future__ import annotations

import importlib
import math
import random
import warnings

import pytest
import torch

from mimo_ext.balance import compare, pareto_front, sweep

sweep_module = importlib.import_module("mimo_ext.balance.sweep")  # the package's `sweep` is the function
compare_module = importlib.import_module("mimo_ext.balance.compare")

QUICK = dict(seeds=[0], epochs=1, batch_size=16, probe_steps=10, measure_memory=False)
VARYING = {"step_time_s", "step_time_split_s", "peak_memory_bytes"}  # times, memory and the machine's load vary
LOAD = {"load_before", "load_after", "busy"}


@pytest.fixture
def fake_compare(monkeypatch):
    """Replaces the compare that sweep calls by one that records its arguments and returns a numbered result."""
    calls = []

    def fake(modalities, labels, methods, seeds, epochs, **options):
        calls.append(dict(modalities=modalities, labels=labels, methods=methods, seeds=seeds, epochs=epochs) | options)
        return {
            m.label: {"fused_acc": float(i + 1), "settings": {"method_options": dict(m.options)}}
            for i, m in enumerate(methods)
        }

    monkeypatch.setattr(sweep_module, "compare", fake)
    return calls


def deterministic(point: dict) -> dict:
    kept = {k: v for k, v in point.items() if k not in VARYING}
    kept["settings"] = {k: v for k, v in point["settings"].items() if k not in LOAD}
    kept["per_seed"] = [{k: v for k, v in s.items() if k != "step_time_s"} for s in point["per_seed"]]
    return kept


def test_sweep_points_are_the_compare_runs_of_each_setting(few_rows):
    lines = []
    grid = {"gamma": [0.5, 2.0], "mu": [0.3]}
    points = sweep(*few_rows, "mimo", grid, **QUICK, progress=lines.append)
    assert [p["params"] for p in points] == [{"gamma": 0.5, "mu": 0.3}, {"gamma": 2.0, "mu": 0.3}]
    assert [p["method"] for p in points] == ["mimo", "mimo"]
    # One interleaved compare call: each point's runs labelled by its setting.
    assert [line.split(":")[0] for line in lines] == ["mimo [gamma=0.5 mu=0.3] seed 0", "mimo [gamma=2 mu=0.3] seed 0"]
    for point in points:
        direct = compare(*few_rows, methods=["mimo"], method_options={"mimo": point["params"]}, **QUICK)["mimo"]
        assert set(point) == {"method", "params"} | set(direct)
        assert {"fused_acc", "fused_acc_std", "probe_acc", "worst_probe_acc", "step_time_s"} <= set(point)
        assert deterministic(point) == {"method": "mimo", "params": point["params"]} | deterministic(direct)
        assert point["settings"]["method_options"] == point["params"]
    # gamma changes the training: the two points are not one run reported twice.
    assert points[0]["curves"] != points[1]["curves"]


def test_sweep_runs_the_cartesian_product_over_base_options(few_rows, fake_compare):
    def progress(line):
        pass

    test = (few_rows[0], few_rows[1])
    base = {"mimo": {"gamma": 9.0, "mu": 0.3}, "joint": {}}
    grid = {"gamma": [0.5, 1.0, 2.0], "mu": (0.05, 0.2)}
    points = sweep(
        *few_rows, "mimo", grid, seeds=(1, 2), epochs=3, batch_size=8, test=test, progress=progress, method_options=base
    )
    settings = [{"gamma": g, "mu": m} for g in (0.5, 1.0, 2.0) for m in (0.05, 0.2)]  # the last key varies fastest
    assert [p["params"] for p in points] == settings
    assert [p["fused_acc"] for p in points] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    (call,) = fake_compare  # every setting in one interleaved call
    assert [dict(m.options) for m in call["methods"]] == settings
    assert [m.method for m in call["methods"]] == ["mimo"] * 6
    assert call["method_options"] is None  # joint's options: joint is not run
    assert call["seeds"] == (1, 2) and call["epochs"] == 3
    assert call["batch_size"] == 8 and call["progress"] is progress
    assert call["test"][0][0] is test[0][0] and torch.equal(call["labels"], few_rows[1])
    # A base option the grid does not set stays.
    sweep(*few_rows, "mimo", {"gamma": [0.5]}, method_options=base)
    assert dict(fake_compare[-1]["methods"][0].options) == {"gamma": 0.5, "mu": 0.3}


def test_sweep_default_grid_is_mimo_gamma_by_mu(few_rows, fake_compare):
    points = sweep(*few_rows)
    assert len(points) == 9 and points[0]["params"] == {"gamma": 0.5, "mu": 0.05}
    assert fake_compare[0]["seeds"] == (0, 1, 2) and fake_compare[0]["epochs"] == 30


def test_sweep_converts_float64_once_with_one_warning(few_rows, fake_compare):
    xs, y = few_rows
    test = ([x[:10].double() for x in xs], y[:10].numpy())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sweep([xs[0].double(), xs[1]], y.numpy(), "mimo", {"gamma": [0.5, 1.0, 2.0]}, test=test)
    assert [str(w.message) for w in caught] == [
        "modalities[0] (float64), test modalities[0] (float64), test modalities[1] (float64) converted to float32: "
        "the models train in float32"
    ]
    assert caught[0].filename == __file__
    for call in fake_compare:
        assert all(x.dtype == torch.float32 for x in call["modalities"] + call["test"][0])
        assert call["labels"].dtype == call["test"][1].dtype == torch.int64


def with_nan(x: torch.Tensor, row: int) -> torch.Tensor:
    x = x.clone()
    x[row, 2] = math.nan
    return x


@pytest.mark.parametrize(
    "args, options, error, match",
    [
        (("nope", {"gamma": [1.0]}), {}, ValueError, "unknown method 'nope'"),
        (("mimo", {}), {}, ValueError, "grid must not be empty"),
        (("mimo", {"gamma": [1.0], "mu": []}), {}, ValueError, r"grid\['mu'\] is empty"),
        (("mimo", [("gamma", [1.0])]), {}, TypeError, "grid must be a dict"),
        (("mimo", {"gamma": 1.0}), {}, TypeError, r"grid\['gamma'\] must be a list"),
        (("mimo", {"gama": [1.0]}), {}, TypeError, "unexpected keyword argument 'gama'"),
        (("mimo", {"gamma": [1.0, -1.0]}), {}, ValueError, "gamma must be finite and >= 0, got -1.0"),
        (("mimo_fused", {"mu": [0.1, 0.0]}), {}, ValueError, "mu must be finite and > 0, got 0.0"),
        (("joint", sweep_module.DEFAULT_GRID), {}, TypeError, r"Joint\(\) takes no arguments"),
        (("mimo", {"gamma": [1.0]}), {"method_options": {"mimo": {"tau": 1}}}, TypeError, "'tau'"),
        (("mimo", {"gamma": [1.0]}), {"methods": ["mimo"]}, TypeError, r"option\(s\) \['methods'\]"),
        (("mimo", {"gamma": [1.0]}), {"batchsize": 8}, TypeError, r"option\(s\) \['batchsize'\]"),
    ],
)
def test_sweep_refuses_bad_settings_before_training(few_rows, no_training, args, options, error, match):
    with pytest.raises(error, match=match):
        sweep(*few_rows, *args, **options)


@pytest.mark.parametrize(
    "bad, match",
    [
        ("train", r"^modalities\[1\] has a non-finite value \(nan\) in row 7$"),
        ("test", r"^test modalities\[0\] has a non-finite value \(nan\) in row 3$"),
    ],
)
def test_sweep_refuses_non_finite_inputs_before_training(few_rows, no_training, bad, match):
    xs, y = few_rows
    test = ([with_nan(xs[0][:10], 3), xs[1][:10]], y[:10]) if bad == "test" else None
    if bad == "train":
        xs = [xs[0], with_nan(xs[1], 7)]
    with pytest.raises(ValueError, match=match):
        sweep(xs, y, "mimo", {"gamma": [1.0]}, test=test)


# ---- pareto_front


def pt(name: str, x: float, y: float, **extra) -> dict:
    return {"name": name, "fused_acc": x, "worst_probe_acc": y, **extra}


def names(points: list[dict]) -> list[str]:
    return [p["name"] for p in points]


def test_pareto_front_of_hand_made_points():
    points = [
        pt("a", 0.1, 0.9),
        pt("b", 0.5, 0.5),
        pt("c", 0.5, 0.4),  # b is better on y at the same x
        pt("d", 0.9, 0.1),
        pt("e", 0.05, 0.9),  # a is better on x at the same y
        pt("f", 0.4, 0.4),  # b is better on both
        pt("g", 0.9, 0.1),  # the same as d: both kept, in input order
    ]
    front = pareto_front(points, "fused_acc", "worst_probe_acc")
    assert names(front) == ["a", "b", "d", "g"]
    assert front[1] is points[1]  # the points themselves
    assert names(pareto_front(points[::-1], "fused_acc", "worst_probe_acc")) == ["a", "b", "g", "d"]
    assert pareto_front([], "fused_acc", "worst_probe_acc") == []
    assert names(pareto_front([pt("only", 0.0, 0.0)], "fused_acc", "worst_probe_acc")) == ["only"]


def test_pareto_front_with_callables():
    # The second modality's probe against speed (a shorter step is better, so negate it).
    points = [
        pt("slow-good", 0, 0, probe_acc=[0.9, 0.8], step_time_s=0.004),
        pt("fast-poor", 0, 0, probe_acc=[0.9, 0.6], step_time_s=0.001),
        pt("slow-poor", 0, 0, probe_acc=[0.95, 0.6], step_time_s=0.003),
        pt("fast-good", 0, 0, probe_acc=[0.5, 0.7], step_time_s=0.002),
    ]
    front = pareto_front(points, lambda p: -p["step_time_s"], lambda p: p["probe_acc"][1])
    assert names(front) == ["slow-good", "fast-good", "fast-poor"]


def test_pareto_front_leaves_out_nan_points():
    points = [pt("a", 0.2, 0.8), pt("nan-x", math.nan, 1.0), pt("b", 0.8, 0.2), pt("nan-y", 1.0, math.nan)]
    assert names(pareto_front(points, "fused_acc", "worst_probe_acc")) == ["a", "b"]
    # A NaN point dominates nothing: c would be dominated by (1.0, 1.0) if NaN counted as large.
    points = [pt("c", 0.5, 0.5), pt("nan", math.nan, math.nan)]
    assert names(pareto_front(points, "fused_acc", "worst_probe_acc")) == ["c"]
    assert pareto_front([pt("nan", math.nan, 0.5)], "fused_acc", "worst_probe_acc") == []


def test_pareto_front_refuses_a_list_valued_key():
    with pytest.raises(TypeError, match=r"x of point 0 is list, not a number.*lambda p"):
        pareto_front([{"probe_acc": [0.5, 0.6], "fused_acc": 0.7}], "probe_acc", "fused_acc")


def test_pareto_front_matches_a_plain_definition_on_random_points():
    rng = random.Random(0)
    for _ in range(300):
        # Few distinct values: many ties on x, on y, and on both.
        points = [pt(str(i), rng.randint(0, 4), rng.randint(0, 4)) for i in range(rng.randint(0, 12))]
        expected = []
        for p in points:
            px, py = p["fused_acc"], p["worst_probe_acc"]
            better_x = [q["worst_probe_acc"] for q in points if q["fused_acc"] > px]
            at_least_x = [q["worst_probe_acc"] for q in points if q["fused_acc"] >= px]
            # Dominated: someone strictly right and not lower, or someone not left and strictly higher.
            if not (any(v >= py for v in better_x) or any(v > py for v in at_least_x)):
                expected.append(p)
        expected.sort(key=lambda p: p["fused_acc"])
        assert names(pareto_front(points, "fused_acc", "worst_probe_acc")) == names(expected)
