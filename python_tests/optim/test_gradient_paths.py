"""The two ways to feed MIMOSGD / MIMOAdamW: per objective (opt.backward(f0, fs); opt.step()) and one backward of
mimo_loss (opt.step() with .grad). Both give the same update; parameters no objective reaches are left alone; a
parameter only a uni-modal loss reaches moves by gamma * w_m * g_m; the diagnostics are right."""

from __future__ import annotations

import pytest
import torch

import mimo_ext
from mimo_ext.optim import MIMOSGD, MIMOAdamW
from python_tests.optim_db import CONFIGS, OPTIMIZERS
from python_tests.optim_helpers import (
    assert_bit_identical,
    clone_model,
    make_batch,
    make_model,
    objectives,
    snapshot,
    train_step,
)
from python_tests.references import smooth_max_weights

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


@pytest.mark.parametrize("input_dims", [(5, 4), (5, 4, 3)], ids=["M=2", "M=3"])
@pytest.mark.parametrize("name", CONFIGS)
def test_per_objective_path_equals_single_backward(device, name, input_dims):
    gamma, mu = 0.8, 0.2
    model_a = make_model(input_dims, device=device)
    model_b = clone_model(model_a)
    opt_a = CONFIGS[name].mimo(model_a.parameters(), gamma=gamma, mu=mu)
    opt_b = CONFIGS[name].mimo(model_b.parameters(), gamma=gamma, mu=mu)
    initial = [p.detach().clone() for p in model_a.parameters()]
    for step in range(5):
        train_step(model_a, opt_a, step, "objectives", gamma=gamma, mu=mu, input_dims=input_dims)
        train_step(model_b, opt_b, step, "single", gamma=gamma, mu=mu, input_dims=input_dims)
        for p_a, p_b in zip(model_a.parameters(), model_b.parameters(), strict=True):
            torch.testing.assert_close(p_a, p_b)
    for p, p0 in zip(model_a.parameters(), initial, strict=True):
        assert not torch.equal(p, p0), "a parameter did not move"
    for p_a, p_b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        for key in opt_b.state[p_b]:
            torch.testing.assert_close(opt_a.state[p_a][key], opt_b.state[p_b][key])


def test_per_objective_path_leaves_grad_as_g0(device):
    # After opt.backward, .grad of a reached parameter is its fusion-loss gradient (the slice of g0's buffer).
    model = make_model(device=device, dtype=torch.float64)
    opt = MIMOSGD(model.parameters(), lr=0.1)
    inputs, labels = make_batch(0, dtype=torch.float64, device=device)
    f0, fs = objectives(model, inputs, labels)
    expected = torch.autograd.grad(f0, list(model.parameters()), retain_graph=True, allow_unused=True)
    opt.backward(f0, fs)
    for p, g in zip(model.parameters(), expected, strict=True):
        if g is None:  # a uni-modal head: reached by its f_m only
            assert torch.equal(p.grad, torch.zeros_like(p))
        else:
            torch.testing.assert_close(p.grad, g, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("path", ["objectives", "single"])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_unreached_parameters_are_unchanged(device, name, path):
    # A parameter no objective ever reaches (in the middle of the bucket) and one reached only on the first steps:
    # with weight decay and momentum, both stay bit-identical, parameter and state, while they are not reached.
    # The reached parameters (several runs of the bucket) are updated as by an optimizer without the others.
    model = make_model(device=device)
    twin = clone_model(model)
    never = torch.nn.Parameter(torch.randn(3, 2, device=device))
    sometimes = torch.nn.Parameter(torch.randn(4, device=device))
    params = list(model.encoders.parameters()) + [never, sometimes] + list(model.uni_heads.parameters())
    params += list(model.fusion_head.parameters())
    opt = OPTIMIZERS[name].mimo(params)
    twin_params = list(twin.encoders.parameters()) + list(twin.uni_heads.parameters())
    twin_opt = OPTIMIZERS[name].mimo(twin_params + list(twin.fusion_head.parameters()))
    never_before = [never.detach().clone()] + [v.clone() for k, v in opt.state[never].items() if k != "step"]
    for step in range(5):
        for m, o, extra in ((model, opt, True), (twin, twin_opt, False)):
            inputs, labels = make_batch(step, device=device)
            o.zero_grad()
            f0, fs = objectives(m, inputs, labels)
            if extra and step < 2:
                f0 = f0 + (sometimes**2).sum()
            if extra and step == 2:
                sometimes_before = snapshot_of(opt, sometimes)
            if path == "objectives":
                o.backward(f0, fs)
            else:
                mimo_ext.mimo_loss(f0, fs).backward()
            o.step()
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(p, q)
    assert_bit_identical(never_before, [never.detach()] + [v for k, v in opt.state[never].items() if k != "step"])
    assert_bit_identical(sometimes_before, snapshot_of(opt, sometimes))
    # ... and it did move, with nonzero state, while it was reached.
    assert opt.state[sometimes] and any(v.abs().sum() > 0 for k, v in opt.state[sometimes].items() if k != "step")


def snapshot_of(opt, p) -> list[torch.Tensor]:
    return [p.detach().clone()] + [v.clone() for k, v in sorted(opt.state[p].items()) if k != "step"]


@pytest.mark.parametrize("path", ["objectives", "single"])
def test_parameter_reached_only_by_a_unimodal_loss(device, path):
    # A uni-modal head is reached by its own f_m only: SGD moves it by lr * gamma * w_m * g_m.
    gamma, mu, lr = 1.5, 0.3, 0.5
    model = make_model((5, 4, 3), dtype=torch.float64, device=device)
    opt = MIMOSGD(model.parameters(), lr=lr, gamma=gamma, mu=mu)
    inputs, labels = make_batch(0, (5, 4, 3), dtype=torch.float64, device=device)
    f0, fs = objectives(model, inputs, labels)
    w = smooth_max_weights(torch.stack(fs).detach(), mu)
    before = [[p.detach().clone() for p in head.parameters()] for head in model.uni_heads]
    heads = list(model.uni_heads)
    grads = [torch.autograd.grad(f, list(h.parameters()), retain_graph=True) for f, h in zip(fs, heads, strict=True)]
    if path == "objectives":
        opt.backward(f0, fs)
    else:
        mimo_ext.mimo_loss(f0, fs, gamma=gamma, mu=mu).backward()
    opt.step()
    for m, head in enumerate(model.uni_heads):
        for p, p0, g in zip(head.parameters(), before[m], grads[m], strict=True):
            # The MIMO weights are float32 on the per-objective path: float32 accuracy.
            torch.testing.assert_close(p - p0, -lr * gamma * w[m] * g, rtol=1e-6, atol=1e-12)
    assert w.max() - w.min() > 0.05, "the weights should differ between modalities for the test to be meaningful"


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_diagnostics_per_objective(device, name):
    gamma, mu = 0.9, 0.25
    model = make_model((5, 4, 3), dtype=torch.float64, device=device)
    # Two param groups (encoders; heads), so the statistics are summed over buckets.
    groups = [{"params": list(model.encoders.parameters())}]
    groups.append({"params": list(model.uni_heads.parameters()) + list(model.fusion_head.parameters())})
    opt = OPTIMIZERS[name].mimo(groups, gamma=gamma, mu=mu, diagnostics=True)
    params = [p for group in groups for p in group["params"]]
    for step in range(2):
        inputs, labels = make_batch(step, (5, 4, 3), dtype=torch.float64, device=device)
        opt.zero_grad()
        f0, fs = objectives(model, inputs, labels)
        separate = []
        for f in [f0, *fs]:
            g = torch.autograd.grad(f, params, retain_graph=True, allow_unused=True)
            g = [x if x is not None else torch.zeros_like(p) for x, p in zip(g, params, strict=True)]
            separate.append(torch.cat([x.reshape(-1) for x in g]))
        w = smooth_max_weights(torch.stack(fs).detach(), mu)
        opt.backward(f0, fs)
        opt.step()
        d = opt.last_diagnostics
        assert d is not None
        # Weights: float32 (computed from the float32 losses).
        torch.testing.assert_close(d.weights.double().cpu(), w.cpu(), rtol=1e-6, atol=1e-7)
        norms = torch.stack([g.norm() for g in separate])
        cosines = torch.stack([separate[0].dot(g) / (separate[0].norm() * g.norm()) for g in separate[1:]])
        assert d.grad_norms.shape == (4,) and d.cosines.shape == (3,)
        torch.testing.assert_close(d.grad_norms.cpu(), norms.cpu(), rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(d.cosines.cpu(), cosines.cpu(), rtol=1e-10, atol=1e-12)
        blended = separate[0] + gamma * sum(w[m] * separate[m + 1] for m in range(3))
        torch.testing.assert_close(d.grad_norm.cpu(), blended.norm().cpu(), rtol=1e-6, atol=0)


def test_diagnostics_single_backward(device):
    model = make_model(dtype=torch.float64, device=device)
    opt = MIMOAdamW(model.parameters(), diagnostics=True)
    inputs, labels = make_batch(0, dtype=torch.float64, device=device)
    f0, fs = objectives(model, inputs, labels)
    loss = mimo_ext.mimo_loss(f0, fs)
    g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)])
    loss.backward()
    opt.step()
    d = opt.last_diagnostics
    assert d.weights is None and d.cosines.numel() == 0 and d.grad_norms.shape == (1,)
    torch.testing.assert_close(d.grad_norms.cpu(), g.norm().reshape(1).cpu(), rtol=1e-12, atol=0)
    torch.testing.assert_close(d.grad_norm.cpu(), g.norm().cpu(), rtol=1e-12, atol=0)
    # Off: no diagnostics.
    opt.diagnostics = False
    opt.step()
    assert opt.last_diagnostics is None


def test_per_objective_path_is_float64_accurate_for_float64_models(device):
    # lr = 0.5 is a float32 number, so only the MIMO weights can make the paths differ.
    model_a = make_model((5, 4, 3), dtype=torch.float64, device=device)
    model_b = clone_model(model_a)
    opt_a = MIMOSGD(model_a.parameters(), lr=0.5, mu=0.1)
    opt_b = MIMOSGD(model_b.parameters(), lr=0.5, mu=0.1)
    train_step(model_a, opt_a, 0, "objectives", input_dims=(5, 4, 3))
    train_step(model_b, opt_b, 0, "single", input_dims=(5, 4, 3))
    for p_a, p_b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(p_a, p_b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_float_lr_is_exact_for_float64_parameters(device, name):
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64, device=device))
    q = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64, device=device))
    if name == "sgd":
        opt, ref = MIMOSGD([p], lr=0.1), torch.optim.SGD([q], lr=0.1, foreach=False)
    else:
        opt, ref = MIMOAdamW([p], lr=0.1), torch.optim.AdamW([q], lr=0.1, foreach=False)
    p.grad = torch.ones_like(p)
    q.grad = torch.ones_like(q)
    opt.step()
    ref.step()
    torch.testing.assert_close(p, q, rtol=1e-15, atol=1e-16)


def test_sgd_dampening_parameter_first_reached_later(device):
    a, b = (torch.nn.Parameter(torch.zeros(3, device=device)) for _ in range(2))
    a_ref, b_ref = (torch.nn.Parameter(torch.zeros(3, device=device)) for _ in range(2))
    opt = MIMOSGD([a, b], lr=1.0, momentum=0.9, dampening=0.5)
    ref = torch.optim.SGD([a_ref, b_ref], lr=1.0, momentum=0.9, dampening=0.5, foreach=False)
    for step in range(2):
        opt.zero_grad()
        ref.zero_grad()
        a.grad = torch.ones(3, device=device)
        a_ref.grad = torch.ones(3, device=device)
        if step == 1:  # b is reached from the second step on
            b.grad = torch.ones(3, device=device)
            b_ref.grad = torch.ones(3, device=device)
        opt.step()
        ref.step()
    torch.testing.assert_close(a, a_ref)
    torch.testing.assert_close(b, b_ref)
    torch.testing.assert_close(opt.state[b]["momentum_buffer"], ref.state[b_ref]["momentum_buffer"])


@pytest.mark.parametrize("name", CONFIGS)
def test_step_without_any_backward_changes_nothing(device, name):
    model = make_model(device=device)
    opt = CONFIGS[name].mimo(model.parameters())
    before = snapshot(opt)
    opt.step()
    opt.zero_grad()
    opt.step()
    assert_bit_identical(before, snapshot(opt))
