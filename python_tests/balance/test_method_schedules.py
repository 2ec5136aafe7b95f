"""Penalty schedules in the balancing methods (``mimo`` and ``mimo_fused``'s ``schedule=`` option), compare's method
options and sweep: each step's gamma and mu are the schedule's, checked against a loop written by hand."""

from __future__ import annotations

import pytest
import torch

import mimo_ext
from mimo_ext.balance import MethodSpec, compare, forward_batch, make_method, sweep
from mimo_ext.models import LateFusionMLP
from mimo_ext.schedules import IncreasingPenalty, WarmupPenalty

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = dict(seeds=[0], epochs=2, batch_size=16, probe_steps=10, measure_memory=False, robustness_levels=None)
STEPS = 4


def batches():
    gen = torch.Generator().manual_seed(0)
    return [([torch.randn(9, 5, generator=gen), torch.randn(9, 3, generator=gen)], torch.randint(0, 4, (9,),
                                                                                                  generator=gen))
            for _ in range(STEPS)]


def train(method_name: str, options: dict, optimizer_of) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = LateFusionMLP([5, 3], num_classes=4)
    method = make_method(method_name, **options)
    opt = optimizer_of(method, model)
    method.start(opt, STEPS)
    for inputs, y in batches():
        opt.zero_grad()
        method.backward(model, forward_batch(model, inputs, y), opt)
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def by_hand(schedule) -> list[torch.Tensor]:
    """The same training with mimo_loss given each step's gamma and mu as host floats."""
    torch.manual_seed(0)
    model = LateFusionMLP([5, 3], num_classes=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step, (inputs, y) in enumerate(batches()):
        gamma, mu = schedule.values(step)
        opt.zero_grad()
        out = forward_batch(model, inputs, y)
        mimo_ext.mimo_loss(out.fusion_loss, out.uni_losses, gamma, mu).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def sgd(method, model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


def fused_sgd(method, model):
    return mimo_ext.optim.MIMOSGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize(
    "options, schedule",
    [
        ({"schedule": "increasing", "growth": 8.0, "gamma": 0.5, "mu": 0.3},
         IncreasingPenalty(total_steps=STEPS, gamma=0.5, mu=0.3, growth=8.0)),
        ({"schedule": "warmup", "warmup": 0.5, "gamma": 2.0}, WarmupPenalty(total_steps=STEPS, gamma=2.0, warmup=0.5)),
    ],
)
@pytest.mark.parametrize("name, optimizer_of", [("mimo", sgd), ("mimo_fused", fused_sgd)])
def test_each_step_uses_the_schedules_values(name, optimizer_of, options, schedule):
    got = train(name, options, optimizer_of)
    want = by_hand(schedule)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    constant = by_hand(IncreasingPenalty(total_steps=STEPS, gamma=options["gamma"], mu=options.get("mu", 0.1),
                                         growth=1.0))
    assert any(not torch.allclose(a, b) for a, b in zip(got, constant, strict=True))  # the schedule mattered


def test_a_schedule_needs_the_runs_length():
    model = LateFusionMLP([5, 3], num_classes=4)
    method = make_method("mimo", schedule="increasing")
    inputs, y = batches()[0]
    with pytest.raises(RuntimeError, match="needs the run's length: call method.start"):
        method.backward(model, forward_batch(model, inputs, y), sgd(method, model))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"schedule": "cosine"}, "unknown penalty schedule 'cosine'"),
        ({"schedule": "warmup", "growth": 2.0}, "unexpected keyword argument 'growth'"),
        ({"schedule": "increasing", "growth": 0.5}, "growth must be finite and >= 1"),
    ],
)
def test_bad_schedule_options_fail_when_the_method_is_built(options, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make_method("mimo", **options)


def test_compare_and_sweep_take_schedules(few_rows):
    specs = [MethodSpec("mimo", {"schedule": s}) for s in ("constant", "warmup", "increasing")]
    r = compare(*few_rows, methods=["mimo", *specs, MethodSpec("mimo_fused", {"schedule": "increasing"})], **QUICK)
    assert r["mimo schedule=constant"]["curves"] == r["mimo"]["curves"]  # the constant schedule is today's MIMO
    assert r["mimo schedule=increasing"]["curves"] != r["mimo"]["curves"]
    fused = r["mimo_fused schedule=increasing"]["fused_acc"]
    assert fused == pytest.approx(r["mimo schedule=increasing"]["fused_acc"], abs=0.05)
    points = sweep(*few_rows, "mimo", {"schedule": ["constant", "increasing"], "gamma": [1.0]}, **QUICK)
    assert [p["params"] for p in points] == [{"schedule": "constant", "gamma": 1.0}, {"schedule": "increasing",
                                                                                      "gamma": 1.0}]
    assert points[1]["curves"] == r["mimo schedule=increasing"]["curves"]
