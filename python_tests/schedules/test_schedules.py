"""Penalty schedules (mimo_ext.schedules): their values against the formulas by hand; one source of truth for
mimo_loss and both fused optimizers (MIMOSGD, MIMOAdamW), checked against a float64 reference written here; no
recompilation under torch.compile and no host synchronisation on CUDA (those tests run where a GPU is and skip
visibly otherwise)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mimo_ext
from mimo_ext.optim import MIMOSGD, MIMOAdamW
from mimo_ext.schedules import SCHEDULES, ConstantPenalty, IncreasingPenalty, WarmupPenalty, make_schedule

pytestmark = pytest.mark.usefixtures("one_thread")

TOTAL = 5


def expected(name: str, step: int, gamma: float, mu: float, **options) -> tuple[float, float]:
    """The schedules' definitions, written out independently of the module."""
    p = min(step, TOTAL) / TOTAL
    if name == "constant":
        return gamma, mu
    if name == "warmup":
        return gamma * min(1.0, p / options.get("warmup", 0.2)), mu
    growth = options.get("growth", 4.0)
    return gamma * growth**p, mu * growth**-p


CASES = [("constant", {}), ("warmup", {"warmup": 0.4}), ("increasing", {"growth": 8.0})]


@pytest.mark.parametrize("name, options", CASES)
def test_values_follow_the_definitions_and_stay_after_the_end(name, options):
    schedule = make_schedule(name, total_steps=TOTAL, gamma=0.7, mu=0.3, **options)
    gamma_tensor, mu_tensor = schedule.gamma, schedule.mu
    for step in range(TOTAL + 3):
        g, m = expected(name, step, 0.7, 0.3, **options)
        assert schedule.last_step == step
        assert schedule.gamma.item() == pytest.approx(g, rel=1e-6) and schedule.mu.item() == pytest.approx(m, rel=1e-6)
        assert schedule.values(step) == pytest.approx((g, m), rel=1e-12)
        schedule.step()
    assert schedule.gamma is gamma_tensor and schedule.mu is mu_tensor  # written in place


def test_increasing_keeps_gamma_times_mu_fixed():
    s = IncreasingPenalty(total_steps=10, gamma=0.5, mu=0.2, growth=16.0)
    products = [math.prod(s.values(t)) for t in range(11)]
    assert products == pytest.approx([0.1] * 11, rel=1e-12) and s.values(10)[0] == pytest.approx(8.0)


def test_state_dict_resumes_the_step():
    a = WarmupPenalty(total_steps=TOTAL, gamma=2.0, warmup=0.5)
    for _ in range(2):
        a.step()
    b = WarmupPenalty(total_steps=TOTAL, gamma=2.0, warmup=0.5)
    b.load_state_dict(a.state_dict())
    assert b.last_step == 2 and b.gamma.item() == pytest.approx(1.6)


@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
def test_a_resumed_optimizer_follows_the_schedule_again(algorithm):
    """The usual resume order (optimizer, schedule, then both load_state_dict): the optimizer's load puts the
    checkpoint's gamma/mu tensors in its groups; the schedule's next write must reach the optimizer again."""
    params = [torch.zeros(3, requires_grad=True)]
    opt = make_optimizer(algorithm, params)
    schedule = IncreasingPenalty(opt, total_steps=TOTAL, gamma=0.5)
    for _ in range(2):
        schedule.step()
    saved_opt, saved_schedule = opt.state_dict(), schedule.state_dict()
    resumed = make_optimizer(algorithm, params)
    resumed_schedule = IncreasingPenalty(resumed, total_steps=TOTAL, gamma=0.5)
    resumed.load_state_dict(saved_opt)
    resumed_schedule.load_state_dict(saved_schedule)
    for _ in range(2):
        schedule.step()
        resumed_schedule.step()
    for group in resumed.param_groups:
        assert group["gamma"] is resumed_schedule.gamma and group["mu"] is resumed_schedule.mu
    assert resumed_schedule.gamma.item() == schedule.gamma.item() == pytest.approx(schedule.values()[0])
    assert resumed.param_groups[0]["gamma"].item() == opt.param_groups[0]["gamma"].item()


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: make_schedule("cosine", total_steps=3), ValueError, "unknown penalty schedule 'cosine'"),
        (lambda: ConstantPenalty(total_steps=0), ValueError, "total_steps must be an int >= 1"),
        (lambda: ConstantPenalty(total_steps=3, mu=0.0), ValueError, "mu must be finite and > 0"),
        (lambda: ConstantPenalty(total_steps=3, gamma=-1.0), ValueError, "gamma must be finite and >= 0"),
        (lambda: WarmupPenalty(total_steps=3, warmup=1.5), ValueError, "warmup must be a fraction"),
        (lambda: IncreasingPenalty(total_steps=3, growth=0.5), ValueError, "growth must be finite and >= 1"),
        (lambda: ConstantPenalty(torch.optim.SGD([torch.zeros(1, requires_grad=True)]), total_steps=3), TypeError,
         "no gamma / mu in its param groups"),
    ],
)
def test_bad_arguments_name_themselves(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_every_schedule_is_registered():
    assert set(SCHEDULES) == {"constant", "warmup", "increasing"}


# ---- one source of truth: mimo_loss and both optimizers against a hand reference


def problem(device: str, seed: int = 0):
    """A tiny late-fusion-like problem: shared weights W, three quadratic-ish losses of odd sizes."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    data = [torch.randn(7, 5, generator=gen, dtype=torch.float64) for _ in range(3)]
    targets = [torch.randn(7, 3, generator=gen, dtype=torch.float64) for _ in range(3)]

    def losses(weight):
        return [F.mse_loss(x.to(weight.device) @ weight, t.to(weight.device)) * (k + 1) for k, (x, t) in
                enumerate(zip(data, targets, strict=True))]

    return w.to(device), losses


def reference_run(name, options, w, losses, steps, algorithm):
    """Float64, by hand: d = g0 + gamma_t * sum_m softmax(f / mu_t)_m g_m, then SGD or AdamW (torch's formulas)."""
    w = w.detach().cpu().clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    lr, betas, eps, wd = 0.05, (0.9, 0.999), 1e-8, 0.01
    for t in range(steps):
        gamma, mu = expected(name, t, 0.8, 0.5, **options)
        weight = w.clone().requires_grad_(True)
        f = losses(weight)
        grads = [torch.autograd.grad(fk, weight)[0] for fk in f]
        wts = torch.softmax(torch.stack([fk.detach() for fk in f[1:]]) / mu, dim=0)
        d = grads[0] + gamma * sum(wk * g for wk, g in zip(wts, grads[1:], strict=True))
        if algorithm == "sgd":
            w = w - lr * d
        else:
            w = w * (1 - lr * wd)
            m = betas[0] * m + (1 - betas[0]) * d
            v = betas[1] * v + (1 - betas[1]) * d * d
            mhat, vhat = m / (1 - betas[0] ** (t + 1)), v / (1 - betas[1] ** (t + 1))
            w = w - lr * mhat / (vhat.sqrt() + eps)
    return w


def make_optimizer(algorithm, params):
    if algorithm == "sgd":
        return MIMOSGD(params, lr=0.05)
    return MIMOAdamW(params, lr=0.05, weight_decay=0.01)


@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
@pytest.mark.parametrize("name, options", CASES)
def test_optimizers_blend_with_the_schedule(device, algorithm, name, options):
    w0, losses = problem(device)
    weight = torch.nn.Parameter(w0.clone())
    opt = make_optimizer(algorithm, [weight])
    schedule = make_schedule(name, opt, total_steps=TOTAL, gamma=0.8, mu=0.5, dtype=torch.float64, **options)
    assert all(g["gamma"] is schedule.gamma and g["mu"] is schedule.mu for g in opt.param_groups)
    assert schedule.gamma.device.type == device
    for _ in range(TOTAL + 1):
        opt.zero_grad()
        f = losses(weight)
        opt.backward(f[0], f[1:])
        opt.step()
        schedule.step()
    reference = reference_run(name, options, w0, losses, TOTAL + 1, algorithm)
    torch.testing.assert_close(weight.detach().cpu(), reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
@pytest.mark.parametrize("name, options", CASES)
def test_mimo_loss_with_the_schedules_tensors_matches_the_optimizer_path(device, algorithm, name, options):
    # mimo_loss's one backward under the same schedule tensors gives the same direction: a plain (non-MIMO) step of
    # the same algorithm then lands on the same reference.
    w0, losses = problem(device)
    weight = torch.nn.Parameter(w0.clone())
    if algorithm == "sgd":
        opt = torch.optim.SGD([weight], lr=0.05)
    else:
        opt = torch.optim.AdamW([weight], lr=0.05, weight_decay=0.01)
    schedule = make_schedule(name, total_steps=TOTAL, gamma=0.8, mu=0.5, device=device, dtype=torch.float64,
                             **options)
    for _ in range(TOTAL + 1):
        f = losses(weight)
        opt.zero_grad()
        mimo_ext.mimo_loss(f[0], f[1:], gamma=schedule.gamma, mu=schedule.mu).backward()
        opt.step()
        schedule.step()
    reference = reference_run(name, options, w0, losses, TOTAL + 1, algorithm)
    torch.testing.assert_close(weight.detach().cpu(), reference, rtol=1e-10, atol=1e-12)


def test_mimo_loss_tensor_and_float_hyperparameters_agree(device):
    f0 = torch.tensor(0.3, dtype=torch.float64, device=device)
    uni = torch.tensor([0.9, 1.4, 0.2], dtype=torch.float64, device=device, requires_grad=True)
    (a,) = torch.autograd.grad(mimo_ext.mimo_loss(f0, uni, 1.7, 0.23), uni)
    gamma = torch.tensor([1.7], dtype=torch.float64, device=device)
    mu = torch.tensor([0.23], dtype=torch.float64, device=device)
    value = mimo_ext.mimo_loss(f0, uni, gamma, mu)
    (b,) = torch.autograd.grad(value, uni)
    assert value.dim() == 0
    torch.testing.assert_close(value, mimo_ext.mimo_loss(f0, uni, 1.7, 0.23))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(b, 1.7 * torch.softmax(uni.detach() / 0.23, 0))


def test_compiled_loss_is_not_recompiled_as_the_schedule_moves(device):
    torch._dynamo.reset()
    schedule = IncreasingPenalty(total_steps=TOTAL, gamma=0.5, mu=0.4, growth=4.0, device=device)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def loss(f0, uni, gamma, mu):
        return mimo_ext.mimo_loss(f0, uni, gamma, mu)

    f0 = torch.tensor(0.2, device=device)
    uni = torch.tensor([0.5, 1.5], device=device)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(TOTAL):
            g, m = schedule.values()
            torch.testing.assert_close(loss(f0, uni, schedule.gamma, schedule.mu), mimo_ext.mimo_loss(f0, uni, g, m))
            schedule.step()


def test_schedule_step_and_the_optimizer_step_do_not_synchronise(cuda_device):
    w0, losses = problem(cuda_device)
    weight = torch.nn.Parameter(w0.clone())
    opt = MIMOAdamW([weight], lr=0.05)
    schedule = IncreasingPenalty(opt, total_steps=TOTAL, gamma=0.8, mu=0.5)
    f = losses(weight)
    opt.backward(f[0], f[1:])
    opt.step()  # first step: lazy state set up outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        schedule.step()
        f = losses(weight)
        value = mimo_ext.mimo_loss(f[0], f[1:], schedule.gamma, schedule.mu)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert value.device.type == "cuda"
