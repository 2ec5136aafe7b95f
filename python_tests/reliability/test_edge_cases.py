"""Numerical edge cases with defined behaviour: non-finite losses and gradients, mu at both ends of its range, ties,
M = 1, subnormals, overflow at the store, tensor hyperparameters. Each test checks one statement of the edge-case
table of docs/reliability.md (E1..E12, named in the test's docstring), exactly where the behaviour is exact."""

from __future__ import annotations

import math

import pytest
import torch

import mimo_ext
from mimo_ext.optim import MIMOSGD
from python_tests.optim_db import CONFIGS
from python_tests.optim_helpers import bits, make_batch, make_model, objectives, snapshot, train_step
from python_tests.references import blend_reference, smooth_max_reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
NAN, INF = math.nan, math.inf


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


def ids(dtype):
    return str(dtype).removeprefix("torch.")


# ---- smooth_max and mimo_loss


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("bad", [NAN, INF, -INF], ids=["nan", "+inf", "-inf"])
def test_non_finite_loss_makes_its_row_nan_and_only_its_row(device, dtype, bad):
    """E1: a row holding NaN, +Inf or -Inf gives NaN for its value and all its weights; other rows are bit-identical
    to the result of those rows alone."""
    losses = torch.tensor([[0.3, 1.2, 0.7], [0.5, bad, 0.1], [2.0, 2.0, -1.0]], dtype=dtype, device=device)
    value, weights = mimo_ext.smooth_max(losses, 0.2)
    assert value[1].isnan() and weights[1].isnan().all()
    good = losses[[0, 2]]
    alone_value, alone_weights = mimo_ext.smooth_max(good, 0.2)
    assert torch.equal(bits(value[[0, 2]]), bits(alone_value))
    assert torch.equal(bits(weights[[0, 2]]), bits(alone_weights))


@pytest.mark.parametrize("bad", [NAN, INF], ids=["nan", "inf"])
def test_non_finite_unimodal_loss_makes_mimo_loss_nan(bad):
    """E2: a non-finite uni-modal loss gives a NaN mimo_loss, NaN gradients for every uni-modal loss, and 1 for f0."""
    f0 = torch.tensor(0.5, requires_grad=True)
    f = torch.tensor([0.2, bad, 0.9], requires_grad=True)
    loss = mimo_ext.mimo_loss(f0, f, gamma=0.5, mu=0.1)
    loss.backward()
    assert loss.isnan() and f.grad.isnan().all() and f0.grad.item() == 1.0


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("mu", [1e-300, 1e-50, 1e-30])
def test_tiny_mu_is_the_hard_max_with_ties_shared(device, dtype, mu):
    """E5: mu -> 0 (even below the math type's range, where it becomes 0) gives exactly the hard max: the value is the
    largest loss, the weights are 1 / (number of tied maxima) on the maxima and exactly 0 elsewhere."""
    losses = torch.tensor([[1.0, 3.0, 3.0, 2.0], [-4.0, -5.0, -6.0, -7.0]], dtype=dtype, device=device)
    value, weights = mimo_ext.smooth_max(losses, mu)
    expected = torch.tensor([[0.0, 0.5, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=dtype)
    assert torch.equal(value.cpu(), torch.tensor([3.0, -4.0], dtype=dtype))
    assert torch.equal(weights.cpu(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=ids)
def test_huge_mu_gives_uniform_weights_and_value_mean_plus_mu_log_m(device, dtype):
    """E6: mu -> infinity gives weights exactly equal to each other (1/M rounded once) and value
    mean + mu * log M, up to the rounding of mu and of the result. (In float16 a mu large enough for equal weights
    puts the value beyond 65504: the next test.)"""
    losses = torch.tensor([1.0, 3.0, 2.5, 2.0, 0.5], dtype=dtype, device=device)
    mu = 1e30
    value, weights = mimo_ext.smooth_max(losses, mu)
    assert (weights == weights[0]).all()
    assert weights[0].item() == torch.tensor(1 / 5, dtype=dtype).item()
    expected = mu * math.log(5) + losses.double().mean().item()
    assert abs(value.item() - expected) <= 4 * torch.finfo(dtype).eps * expected


@pytest.mark.parametrize("dtype, mu", [(torch.float16, 1e5), (torch.bfloat16, 1e300), (torch.float32, 1e300)])
def test_value_beyond_the_dtype_range_is_inf_with_finite_weights(device, dtype, mu):
    """E6, E11: when mu * log M (or the value) exceeds the output dtype's range, the value is +Inf and the weights
    stay finite (uniform); a float mu beyond the math type's range is clamped to its largest finite value first."""
    value, weights = mimo_ext.smooth_max(torch.tensor([1.0, 2.0, 3.0], dtype=dtype, device=device), mu)
    assert value.item() == INF
    assert (weights == weights[0]).all() and weights[0].item() == torch.tensor(1 / 3, dtype=dtype).item()


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_equal_losses_share_the_weight_exactly(device, dtype):
    """E7: equal losses get bit-identical weights (1/M rounded once); value = loss + mu * log M."""
    value, weights = mimo_ext.smooth_max(torch.full((2, 7), 0.75, dtype=dtype, device=device), 0.1)
    assert (weights == weights[0, 0]).all() and weights[0, 0].item() == torch.tensor(1 / 7, dtype=dtype).item()
    expected = 0.75 + 0.1 * math.log(7)
    assert (value.double() - expected).abs().max().item() <= 2 * torch.finfo(dtype).eps * expected


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("mu", [1e-30, 0.1, 1e30])
def test_one_modality_is_the_identity(device, dtype, mu):
    """E8: M = 1 gives value == the loss bit for bit and weight exactly 1, for any mu; the gradient is the incoming
    gradient unchanged."""
    losses = torch.tensor([[0.7], [-3.5], [1e4]], dtype=dtype, device=device, requires_grad=True)
    value, weights = mimo_ext.smooth_max(losses, mu)
    assert torch.equal(value.detach(), losses.detach()[:, 0]) and torch.equal(weights, torch.ones_like(weights))
    upstream = torch.tensor([0.25, -2.0, 3.0], dtype=dtype, device=device)
    value.backward(upstream)
    assert torch.equal(losses.grad[:, 0], upstream)


# ---- denormals: no flush to zero


@pytest.mark.parametrize("dtype, tiny", [(torch.float32, 1e-40), (torch.float64, 1e-310), (torch.float16, 1e-7)])
def test_subnormal_inputs_give_the_ieee_result(device, dtype, tiny):
    """E9: subnormal inputs are not flushed to zero: blend of subnormals is exact (sums of subnormals are exact),
    smooth_max with a subnormal mu matches the float64 reference, and a step with a subnormal gradient moves the
    parameter by exactly that much."""
    small = torch.tensor([tiny, 3 * tiny, -2 * tiny], dtype=dtype, device=device)
    assert (small != 0).all() and (small.abs() < torch.finfo(dtype).tiny).all(), "the inputs must be subnormal"
    out = mimo_ext.blend(small, [small, small], torch.tensor([1.0, -2.0], device=device), 1.0)
    assert torch.equal(out, small - small), "base + g - 2 g of the same subnormals"
    out = mimo_ext.blend(small, [small], torch.ones(1, device=device), 1.0)
    assert torch.equal(out.cpu(), (2 * small.double()).to(dtype).cpu())
    if dtype != torch.float16:  # float16 math is float32, where these values are normal: nothing to show
        value, weights = mimo_ext.smooth_max(small, float(small[0]))
        ref_value, ref_weights = smooth_max_reference(small, float(small[0]))
        eps = torch.finfo(dtype).eps
        assert torch.allclose(weights.cpu().double(), ref_weights, rtol=8 * eps, atol=0)
        # A subnormal result has an absolute precision of the smallest subnormal, smallest_normal * eps.
        tolerance = 8 * torch.finfo(dtype).smallest_normal * eps + 4 * eps * ref_value.abs().item()
        assert (value.cpu().double() - ref_value).abs().item() <= tolerance
    param, buf = torch.zeros(3, dtype=dtype, device=device), torch.zeros(3, dtype=dtype, device=device)
    lr = torch.ones((), dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device)
    step = torch.zeros((), device=device)
    coefficients = torch.ones(1, device=device)
    options = dict(weight_decay=0.0, momentum=0.0, compute_stats=False)
    torch.ops.mimo_ext.sgd_step_(param, buf, [small], coefficients, lr, step, **options)
    assert torch.equal(param, -small)


# ---- half-precision overflow of the blend


@pytest.mark.parametrize("in_place", [False, True], ids=["blend", "blend_"])
def test_float16_blend_rounds_once_and_saturates_to_inf(device, in_place):
    """E10: blend accumulates in float32 and rounds once, to nearest, at the float16 store: a result of 65520 or more
    (the halfway point above 65504) becomes +Inf, one below it 65504; -Inf likewise; an intermediate sum beyond
    65504 that the later terms bring back into range is exact (no float16 rounding in between)."""
    f16 = dict(dtype=torch.float16, device=device)
    base = torch.tensor([60000.0, 65504, 65504, 65504, -65504, 60000], **f16)
    g1 = torch.tensor([60000.0, 15, 16, 8, -16, 60000], **f16)
    g2 = torch.tensor([0.0, 0, 0, 0, 0, 60000], **f16)
    expected = torch.tensor([INF, 65504, INF, 65504, -INF, 60000 + 60000], dtype=torch.float16)
    weights = torch.tensor([[1.0, 0.0]] * 5 + [[1.0, -1.0]], device=device)
    # One call per element pattern (the weights are per call): the last element uses weights (1, -1).
    for i in range(6):
        b = base[i : i + 1].clone()
        args = (b, [g1[i : i + 1], g2[i : i + 1]], weights[i], 1.0)
        out = mimo_ext.blend_(*args) if in_place else mimo_ext.blend(*args)
        want = expected[i] if i < 5 else torch.tensor(60000.0, dtype=torch.float16)
        assert torch.equal(out.cpu()[0], want), (i, out, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_blend_overflow_beyond_float32_range_is_inf(device, dtype):
    """E10: bfloat16 and float32 share float32's range: 3e38 + 3e38 is +Inf (IEEE), never NaN."""
    big = torch.tensor([3e38, -3e38], dtype=dtype, device=device)
    out = mimo_ext.blend(big, [big], torch.ones(1, device=device), 1.0)
    assert torch.equal(out.cpu(), torch.tensor([INF, -INF], dtype=dtype))
    assert torch.equal(mimo_ext.blend(big, [big], torch.ones(1, device=device), 1.0).cpu(), out.cpu())
    reference = blend_reference(big, [big], torch.ones(1), 1.0)
    assert torch.equal(reference.to(dtype), out.cpu())


# ---- non-finite gradients and losses in the optimizers


@pytest.mark.parametrize("name", CONFIGS)
def test_inf_gradient_without_a_scaler_is_applied_elementwise(name):
    """E3: without a grad scaler a non-finite gradient is applied as IEEE arithmetic (as torch.optim does): the
    elements it touches become non-finite, every other element is bit-identical to a run where they were 0."""
    results = []
    for poison in [INF, 0.0]:
        p = torch.nn.Parameter(torch.linspace(-1, 1, 9))
        opt = CONFIGS[name].mimo([p])
        g = torch.linspace(0.5, -0.5, 9)
        g[4] = poison
        (p * g).sum().backward()
        opt.step()
        results.append(p.detach().clone())
    poisoned, clean = results
    assert not torch.isfinite(poisoned[4])
    keep = torch.arange(9) != 4
    assert torch.equal(bits(poisoned[keep]), bits(clean[keep]))


@pytest.mark.parametrize("cause", ["inf-gradient", "nan-unimodal-loss", "inf-unimodal-loss"])
@pytest.mark.parametrize("path", ["objectives", "single"])
@pytest.mark.parametrize("name", CONFIGS)
def test_grad_scaler_skips_a_non_finite_step_and_writes_nothing(name, path, cause):
    """E4: with a GradScaler, a non-finite gradient or a non-finite uni-modal loss (whose weights are NaN) on
    either path makes scaler.step skip the step: parameters, state and step counts are bit-identical, and the
    scale is halved."""
    model = make_model()
    opt = CONFIGS[name].mimo(model.parameters())
    train_step(model, opt, 0, path)
    before = snapshot(opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    inputs, labels = make_batch(1)
    if cause == "inf-gradient":
        inputs[1][0, 0] = INF
    opt.zero_grad()
    f0, fs = objectives(model, inputs, labels)
    if cause != "inf-gradient":
        fs[1] = fs[1] + (NAN if cause == "nan-unimodal-loss" else INF)  # the value only: its gradient is finite
    if path == "objectives":
        opt.backward(f0, fs, grad_scaler=scaler)
    else:
        scaler.scale(mimo_ext.mimo_loss(f0, fs)).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**9
    after = snapshot(opt)
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(before, after, strict=True))


def test_nan_lr_tensor_is_not_read_by_the_op_but_is_refused_by_the_optimizer():
    """E12: the step ops never read tensor hyperparameters on the host (no synchronisation), so a NaN lr tensor
    gives NaN parameters, as torch's fused optimizers do; the optimizer classes check a float or CPU-tensor lr at
    construction and at every step, before writing anything."""
    param = torch.ones(4)
    args = ([torch.ones(4)], torch.ones(1), torch.tensor(NAN), torch.zeros(()))
    torch.ops.mimo_ext.sgd_step_(param, torch.zeros(4), *args, weight_decay=0.0, momentum=0.0, compute_stats=False)
    assert param.isnan().all()
    p = torch.nn.Parameter(torch.ones(4))
    lr = torch.tensor(0.1)
    opt = MIMOSGD([p], lr=lr)
    p.sum().backward()
    lr.fill_(NAN)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(4))
