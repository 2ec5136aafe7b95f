"""mimo_loss: its value, and its gradient against the MIMO direction assembled from separate gradients."""

from __future__ import annotations

import math

import pytest
import torch

import mimo_ext
from python_tests.ops.calls import TinyLateFusion, batch, losses_of
from python_tests.references import smooth_max_weights


@pytest.mark.parametrize("gamma, mu", [(1.0, 0.1), (0.5, 1.0), (2.0, 0.02)])
def test_gradient_is_the_mimo_direction(device, gamma, mu):
    torch.manual_seed(0)
    model = TinyLateFusion().to(device=device, dtype=torch.float64)
    inputs, labels = batch(torch.float64, device)
    params = list(model.parameters())

    f0, uni = losses_of(model, inputs, labels)
    grads_mimo = torch.autograd.grad(mimo_ext.mimo_loss(f0, uni, gamma=gamma, mu=mu), params)

    # The direction assembled by hand: grad f0 + gamma * sum_m softmax(f / mu)_m grad f_m.
    f0, uni = losses_of(model, inputs, labels)
    w = smooth_max_weights(torch.stack(uni).detach(), mu)
    separate = [torch.autograd.grad(f, params, retain_graph=True, allow_unused=True) for f in [f0, *uni]]
    for i, p in enumerate(params):
        expected = torch.zeros_like(p)
        for k, grads in enumerate(separate):
            if grads[i] is not None:
                expected += (1.0 if k == 0 else gamma * w[k - 1]) * grads[i]
        torch.testing.assert_close(grads_mimo[i], expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("form", ["list", "tensor"])
def test_value_is_f0_plus_gamma_times_the_smooth_max(device, form):
    f0 = torch.tensor(0.3, dtype=torch.float64, device=device)
    uni = [torch.tensor(v, dtype=torch.float64, device=device) for v in (1.0, 0.4, 0.9)]
    given = uni if form == "list" else torch.stack(uni)
    expected = 0.3 + 1.5 * 0.2 * math.log(sum(math.exp(v / 0.2) for v in (1.0, 0.4, 0.9)))
    assert mimo_ext.mimo_loss(f0, given, gamma=1.5, mu=0.2).item() == pytest.approx(expected, rel=1e-14)


def test_gamma_zero_is_the_fusion_loss(device):
    f0 = torch.tensor(0.7, device=device, requires_grad=True)
    uni = torch.tensor([1.0, 2.0], device=device, requires_grad=True)
    loss = mimo_ext.mimo_loss(f0, uni, gamma=0.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.7)
    assert torch.equal(uni.grad, torch.zeros(2, device=device))


def test_nan_loss_propagates(device):
    uni = torch.tensor([1.0, float("nan")], device=device)
    assert mimo_ext.mimo_loss(torch.tensor(0.1, device=device), uni).isnan()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"mu": 0.0}, ValueError, "mu must be finite and > 0"),
        ({"mu": float("nan")}, ValueError, "mu must be finite and > 0"),
        ({"gamma": -0.1}, ValueError, "gamma must be finite and >= 0"),
        ({"gamma": float("inf")}, ValueError, "gamma must be finite and >= 0"),
        ({"gamma": torch.ones(2)}, ValueError, "gamma must be a float or a one-element floating tensor"),
        ({"mu": torch.tensor([0.0])}, ValueError, "mu must be finite and > 0"),
        ({"f0": torch.zeros(2)}, ValueError, "f0 must be a scalar"),
        ({"uni_losses": []}, ValueError, "uni_losses must be a non-empty sequence"),
        ({"uni_losses": [torch.zeros(2)]}, ValueError, r"uni_losses\[0\] must be a scalar"),
        ({"uni_losses": torch.zeros(2, 2)}, ValueError, "uni_losses must be a non-empty 1-D tensor"),
        ({"uni_losses": 1.0}, ValueError, "uni_losses must be a non-empty sequence"),
    ],
    ids=[
        "mu=0",
        "mu=nan",
        "gamma<0",
        "gamma=inf",
        "gamma-two-elements",
        "mu-tensor-zero",
        "f0-vector",
        "no-losses",
        "loss-vector",
        "losses-2d",
        "losses-float",
    ],
)
def test_bad_input_raises_naming_the_argument(kwargs, error, match):
    args = {"f0": torch.tensor(0.0), "uni_losses": [torch.tensor(1.0), torch.tensor(2.0)]} | kwargs
    with pytest.raises(error, match=match):
        mimo_ext.mimo_loss(**args)
