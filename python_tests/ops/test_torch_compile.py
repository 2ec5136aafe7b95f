"""torch.compile(fullgraph=True) traces a late-fusion training step with mimo_loss and the blend ops."""

from __future__ import annotations

import copy

import pytest
import torch

import mimo_ext
from python_tests.ops.calls import TinyLateFusion, batch, losses_of

# A cold Inductor/Triton compile per test on CUDA: .ci/gpu runs these after the fast tests.
pytestmark = pytest.mark.gpu_slow


def loss_fn(model, inputs, labels):
    f0, uni = losses_of(model, inputs, labels)
    return mimo_ext.mimo_loss(f0, uni, gamma=1.0, mu=0.2)


def train(model, step_loss, steps=3):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for step in range(steps):
        inputs, labels = batch(torch.float32, next(model.parameters()).device, seed=step)
        optimizer.zero_grad()
        loss = step_loss(model, inputs, labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def test_compiled_training_step_matches_eager(device):
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager_model = TinyLateFusion().to(device)
    compiled_model = copy.deepcopy(eager_model)
    eager_losses = train(eager_model, loss_fn)
    compiled_losses = train(compiled_model, torch.compile(loss_fn, fullgraph=True))
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-5, atol=1e-6)
    for p_compiled, p_eager in zip(compiled_model.parameters(), eager_model.parameters(), strict=True):
        torch.testing.assert_close(p_compiled, p_eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("in_place", [False, True])
def test_compiled_blend_matches_eager(device, in_place):
    torch._dynamo.reset()

    def step(base, g0, g1, losses):
        _, weights = mimo_ext.smooth_max(losses, 0.5)
        if in_place:
            return mimo_ext.blend_(base.clone(), [g0, g1], weights, 2.0)
        return mimo_ext.blend(base, [g0, g1], weights, 2.0)

    generator = torch.Generator().manual_seed(0)
    args = [torch.randn(1001, generator=generator).to(device) for _ in range(3)]
    args.append(torch.tensor([0.3, 0.9], device=device))
    torch.testing.assert_close(torch.compile(step, fullgraph=True)(*args), step(*args), rtol=0, atol=0)
