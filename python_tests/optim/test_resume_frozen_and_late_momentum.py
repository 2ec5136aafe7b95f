"""Resume when the first resumed step skips a parameter, frozen parameters, and
momentum switched on after the first step. Each compares with torch.optim or with an uninterrupted run."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from mimo_ext.optim import MIMOSGD, MIMOAdamW

XS = [torch.randn(8, 4, generator=torch.Generator().manual_seed(s)) for s in range(6)]
# Which of the two layers each step reaches: layer 1 is skipped on step 3, the first step after the resume.
USE = [[0, 1], [0, 1], [0, 1], [0], [0, 1], [0, 1]]


def _model() -> torch.nn.ModuleList:
    torch.manual_seed(0)
    return torch.nn.ModuleList([torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)])


def _train(model, opt, steps) -> None:
    for s in steps:
        opt.zero_grad()
        sum(model[i](XS[s]).pow(2).mean() for i in USE[s]).backward()
        opt.step()


@pytest.mark.parametrize(
    "cls, kwargs", [(MIMOSGD, dict(lr=0.1, momentum=0.9, dampening=0.3)), (MIMOAdamW, dict(lr=0.01))]
)
def test_resume_is_bit_identical_when_the_first_resumed_step_skips_a_parameter(cls, kwargs):
    whole = _model()
    _train(whole, cls(whole.parameters(), **kwargs), range(6))

    first = _model()
    opt = cls(first.parameters(), **kwargs)
    _train(first, opt, range(3))
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = _model()
    resumed.load_state_dict(saved["model"])
    opt = cls(resumed.parameters(), **kwargs)
    opt.load_state_dict(saved["opt"])
    _train(resumed, opt, range(3, 6))
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_frozen_parameters_are_accepted_and_left_alone():
    model = torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    bias = model.bias.detach().clone()
    opt = MIMOAdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert torch.equal(model.bias, bias)
    extra = torch.nn.Linear(3, 2)
    extra.weight.requires_grad_(False)
    opt.add_param_group({"params": list(extra.parameters())})
    opt.zero_grad()
    (model(torch.randn(4, 3)).sum() + extra(torch.randn(4, 3)).sum()).backward()
    opt.step()
    assert len(opt.param_groups) == len(opt._buckets) == 2


def test_sgd_momentum_switched_on_later_starts_its_buffer_at_the_gradient():
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))

    def run(cls):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        opt = cls(model.parameters(), lr=0.1, momentum=0.0, dampening=0.5)
        for step in range(3):
            if step == 1:
                opt.param_groups[0]["momentum"] = 0.9
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        return copy.deepcopy(model.weight.detach())

    torch.testing.assert_close(run(MIMOSGD), run(torch.optim.SGD), rtol=1e-6, atol=1e-7)
