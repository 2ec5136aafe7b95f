"""Gradient accumulation and gradient clipping on the per-objective path (opt.backward), against plain PyTorch.

The per-objective path keeps one gradient buffer per objective; .grad is objective 0's. These tests pin that
buffers accumulate over opt.backward calls and other losses' backward passes (zeroed by zero_grad only), that the
weights come from the mean of the calls' uni-modal losses, and that opt.clip_grad_norm_ clips the blended gradient
exactly as torch.nn.utils.clip_grad_norm_ clips the single backward's .grad.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mimo_ext
from mimo_ext.optim import MIMOSGD, MIMOAdamW
from python_tests.references import smooth_max_weights

GAMMA, MU = 0.7, 0.5
TOL = 2e-6  # float32 rounding of a few ops on values of order 1


class Net(nn.Module):
    """A late-fusion toy: a shared trunk, a fusion head and two uni-modal heads."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(4, 6)
        self.fused = nn.Linear(6, 1)
        self.uni = nn.ModuleList([nn.Linear(6, 1), nn.Linear(6, 1)])

    def losses(self, x, y):
        h = torch.tanh(self.trunk(x))
        f0 = ((self.fused(h).squeeze(-1) - y) ** 2).mean()
        return f0, [((head(h).squeeze(-1) - y) ** 2).mean() for head in self.uni]

    def aux(self, x):
        return 0.3 * (self.trunk(x) ** 2).mean()  # reaches the trunk only


def batch(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randn(n, generator=g)


def make(opt_cls, **kw):
    torch.manual_seed(0)
    model = Net()
    ref = copy.deepcopy(model)
    return model, opt_cls(model.parameters(), gamma=GAMMA, mu=MU, **kw), ref


def err(model, ref):
    return max((p - q).abs().max().item() for p, q in zip(model.parameters(), ref.parameters(), strict=True))


def reference_direction(model, batches):
    """g0_sum + gamma * sum_m softmax(mean losses / mu)_m * g_m_sum, by torch.autograd.grad."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    uni_sum, sums = 0, None
    for x, y in batches:
        f0, uni = model.losses(x, y)
        grads = [torch.autograd.grad(f, params, allow_unused=True, retain_graph=True) for f in (f0, *uni)]
        grads = [[torch.zeros_like(p) if g is None else g for g, p in zip(gs, params, strict=True)] for gs in grads]
        sums = (
            grads
            if sums is None
            else [[a + b for a, b in zip(s, g, strict=True)] for s, g in zip(sums, grads, strict=True)]
        )
        uni_sum = uni_sum + torch.stack([f.detach() for f in uni])
    w = smooth_max_weights(uni_sum / len(batches), MU)
    for i in range(len(params)):
        total[i] = sums[0][i] + GAMMA * sum(w[m] * sums[m + 1][i] for m in range(len(w)))
    return total


def plain_opt(opt_cls, ref, **kw):
    torch_cls = {MIMOSGD: torch.optim.SGD, MIMOAdamW: torch.optim.AdamW}[opt_cls]
    return torch_cls(ref.parameters(), **kw)


# ---- accumulation


def test_two_identical_calls_double_the_sgd_update():
    one, opt1, _ = make(MIMOSGD, lr=0.1)
    two, opt2, _ = make(MIMOSGD, lr=0.1)
    before = [p.detach().clone() for p in one.parameters()]
    x, y = batch(1)
    opt1.zero_grad()
    opt1.backward(*one.losses(x, y))
    opt1.step()
    opt2.zero_grad()
    opt2.backward(*two.losses(x, y))
    opt2.backward(*two.losses(x, y))
    opt2.step()
    for p0, p1, p2 in zip(before, one.parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(p2 - p0, 2 * (p1 - p0), rtol=0, atol=TOL)


@pytest.mark.parametrize("opt_cls", [MIMOSGD, MIMOAdamW])
def test_two_micro_batches_use_summed_gradients_and_mean_loss_weights(opt_cls):
    kw = {"lr": 0.05, "weight_decay": 0.01}
    model, opt, ref = make(opt_cls, **kw)
    torch_opt = plain_opt(opt_cls, ref, **kw)
    batches = [batch(1), batch(2)]
    for _ in range(2):
        opt.zero_grad()
        for x, y in batches:
            opt.backward(*model.losses(x, y))
        opt.step()
        direction = reference_direction(ref, batches)
        for p, g in zip(ref.parameters(), direction, strict=True):
            p.grad = g
        torch_opt.step()
        assert err(model, ref) < TOL


@pytest.mark.parametrize("opt_cls", [MIMOSGD, MIMOAdamW])
@pytest.mark.parametrize("where", ["before", "after", "both"])
def test_auxiliary_loss_counted_once_in_g0(opt_cls, where):
    kw = {"lr": 0.05}
    model, opt, ref = make(opt_cls, **kw)
    torch_opt = plain_opt(opt_cls, ref, **kw)
    x, y = batch(3)
    for _ in range(2):
        opt.zero_grad()
        if where in ("before", "both"):
            model.aux(x).backward()
        opt.backward(*model.losses(x, y))
        if where in ("after", "both"):
            model.aux(x).backward()
        opt.step()
        direction = reference_direction(ref, [(x, y)])
        aux = torch.autograd.grad(ref.aux(x), list(ref.parameters()), allow_unused=True)
        times = 2 if where == "both" else 1
        for p, g, a in zip(ref.parameters(), direction, aux, strict=True):
            p.grad = g + times * a if a is not None else g
        torch_opt.step()
        assert err(model, ref) < TOL


def test_auxiliary_loss_on_a_parameter_no_objective_reaches():
    # The aux loss reaches a parameter the objectives do not: its .grad is created anew (it was None after
    # opt.backward) and must still be stepped.
    model, opt, ref = make(MIMOSGD, lr=0.1)
    extra = nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": [extra]})
    x, y = batch(4)
    opt.zero_grad()
    opt.backward(*model.losses(x, y))
    (extra**2).sum().backward()
    opt.step()
    torch.testing.assert_close(extra.detach(), torch.full((3,), 0.8))


def test_mismatched_number_of_objectives_raises():
    model, opt, _ = make(MIMOSGD, lr=0.1)
    x, y = batch(1)
    opt.zero_grad()
    f0, uni = model.losses(x, y)
    opt.backward(f0, uni)
    f0, uni = model.losses(x, y)
    with pytest.raises(ValueError, match="zero_grad"):
        opt.backward(f0, uni[:1])
    opt.zero_grad()
    opt.backward(f0, uni[:1])  # fine after zero_grad


# ---- clipping


def single_and_per_objective(opt_cls, max_norm, steps=2, **kw):
    """Runs the single-backward path with torch's clip and the per-objective path with opt.clip_grad_norm_."""
    a, opt_a, _ = make(opt_cls, **kw)
    b, opt_b, _ = make(opt_cls, **kw)
    norms = []
    for s in range(steps):
        x, y = batch(10 + s)
        opt_a.zero_grad()
        f0, uni = a.losses(x, y)
        mimo_ext.mimo_loss(f0, uni, GAMMA, MU).backward()
        n_a = torch.nn.utils.clip_grad_norm_(a.parameters(), max_norm)
        opt_a.step()
        opt_b.zero_grad()
        opt_b.backward(*b.losses(x, y))
        n_b = opt_b.clip_grad_norm_(max_norm)
        opt_b.step()
        norms.append((n_a.item(), n_b.item()))
    return a, b, norms


@pytest.mark.parametrize("opt_cls", [MIMOSGD, MIMOAdamW])
@pytest.mark.parametrize("max_norm", [0.1, 100.0])  # active, inactive
def test_clip_matches_torch_on_the_single_backward(opt_cls, max_norm):
    a, b, norms = single_and_per_objective(opt_cls, max_norm, lr=0.05, weight_decay=0.01)
    for n_a, n_b in norms:
        assert abs(n_a - n_b) <= TOL * max(1.0, n_a)
        assert (n_a > max_norm) == (max_norm == 0.1)
    assert err(a, b) < TOL


def test_clip_on_the_single_backward_is_torchs():
    model, opt, ref = make(MIMOSGD, lr=0.1)
    torch_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    x, y = batch(5)
    for m, o in ((model, opt), (ref, torch_opt)):
        o.zero_grad()
        mimo_ext.mimo_loss(*m.losses(x, y), GAMMA, MU).backward()
    n = opt.clip_grad_norm_(0.2)
    n_ref = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.2)
    opt.step()
    torch_opt.step()
    assert n.item() == n_ref.item()
    assert err(model, ref) == 0.0


def test_torch_clip_after_opt_backward_raises():
    model, opt, _ = make(MIMOSGD, lr=0.1)
    x, y = batch(1)
    opt.zero_grad()
    opt.backward(*model.losses(x, y))
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
    with pytest.raises(ValueError, match="clip_grad_norm_"):
        opt.step()


def test_in_place_grad_write_after_opt_backward_raises():
    model, opt, _ = make(MIMOAdamW, lr=0.1)
    x, y = batch(1)
    opt.zero_grad()
    opt.backward(*model.losses(x, y))
    next(model.parameters()).grad.mul_(0.5)
    with pytest.raises(ValueError, match="in place"):
        opt.backward(*model.losses(x, y))


def test_views_share_the_buffer_version_counter():
    buffer = torch.zeros(10)
    view = buffer[2:8].view(2, 3)
    before = buffer._version
    view.add_(1)
    assert view._base is buffer and buffer._version == before + 1


def test_other_backward_passes_do_not_trip_the_guard():
    model, opt, _ = make(MIMOSGD, lr=0.1)
    x, y = batch(1)
    opt.zero_grad()
    opt.backward(*model.losses(x, y))
    model.aux(x).backward()
    model.aux(x).backward()
    opt.backward(*model.losses(x, y))
    model.aux(x).backward()
    opt.clip_grad_norm_(1.0)
    model.aux(x).backward()
    opt.step()


@pytest.mark.parametrize("unscale_first", [False, True])
def test_clip_with_grad_scaler_clips_the_unscaled_blended_gradient(unscale_first):
    a, opt_a, _ = make(MIMOSGD, lr=0.1)
    b, opt_b, _ = make(MIMOSGD, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x, y = batch(7)
    opt_a.zero_grad()
    opt_a.backward(*a.losses(x, y))
    n_a = opt_a.clip_grad_norm_(0.1)
    opt_a.step()
    opt_b.zero_grad()
    opt_b.backward(*b.losses(x, y), grad_scaler=scaler)
    if unscale_first:
        scaler.unscale_(opt_b)
    n_b = opt_b.clip_grad_norm_(0.1)
    scaler.step(opt_b)
    scaler.update()
    assert abs(n_a.item() - n_b.item()) <= TOL * n_a.item()
    assert err(a, b) < TOL
