"""Property-based tests of the ops (hypothesis, profiles in hypothesis_profiles.py): smooth_max forward and backward,
blend, blend_ and mimo_loss on random shapes, M, K, dtypes, mu, gamma and values spanning many orders of magnitude,
each against the float64 reference of python_tests/references.py on the very same (rounded) inputs, on every device
(conftest's `device` fixture: the inputs are drawn on the CPU and copied to the device, the references computed on
the CPU copies); and every op of python_tests/op_db.py on its samples at drawn odd lengths, dtypes and seeds.

Tolerances (derivations beside each test) are per element: twice the error of rounding the float64 reference to the
storage dtype, plus a count of roundings of the math type (float32, or float64 for float64) on the sum of the
magnitudes that make up that element (references.reference_tolerance with elementwise=True)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mimo_ext
from python_tests.op_db import OP_DB, run_and_check
from python_tests.references import assert_within_tolerance, blend_reference, reference_tolerance, smooth_max_reference
from python_tests.reliability import hypothesis_profiles  # noqa: F401  (loads the settings profile before the tests are decorated)
from python_tests.reliability.property_data import DTYPES, dtypes, exponent_range, log_uniform, seeds, spread


@st.composite
def smooth_max_cases(draw):
    dtype = draw(dtypes)
    batch = draw(st.lists(st.integers(1, 5), max_size=2))
    m = draw(st.integers(1, 17))
    mu = draw(log_uniform(-6, 6))
    return dtype, (*batch, m), mu, draw(exponent_range(dtype)), draw(seeds)


def smooth_max_tolerances(losses64: torch.Tensor, mu: float, dtype: torch.dtype, value_ref, weights_ref):
    """value = max + mu * log(sum_i exp((l_i - max) / mu)). Each (l_i - max) / mu carries a relative error of a few
    eps (mu itself is rounded to the math type), which moves the value by at most eps * (max - min) and each weight by
    at most eps * max_x(x exp(-x)) < eps; the sum S in [1, M] of M exponentials carries M roundings, which move
    mu * log S by mu * M * eps and the weights by M * eps relative; max itself by eps * |max|."""
    m = losses64.shape[-1]
    top = losses64.max(-1).values
    value_scale = top.abs() + (top - losses64.min(-1).values) + mu * (math.log(m) + 1)
    value_tol = reference_tolerance(value_ref, dtype, terms=m + 8, scale=value_scale, elementwise=True)
    weights_tol = reference_tolerance(
        weights_ref, dtype, terms=2 * m + 8, scale=torch.ones_like(weights_ref), elementwise=True
    )
    return value_tol, weights_tol


@given(smooth_max_cases())
def test_smooth_max_forward_and_backward(device, case):
    dtype, shape, mu, exponents, seed = case
    generator = torch.Generator().manual_seed(seed)
    losses = spread(shape, exponents, generator).to(dtype)
    losses64 = losses.double()
    value_ref, weights_ref = smooth_max_reference(losses64, mu)
    value_tol, weights_tol = smooth_max_tolerances(losses64, mu, dtype, value_ref, weights_ref)

    leaf = losses.clone().to(device).requires_grad_()
    value, weights = mimo_ext.smooth_max(leaf, mu)
    assert value.device == weights.device == leaf.device
    assert value.dtype == weights.dtype == dtype and value.shape == shape[:-1] and weights.shape == shape
    assert_within_tolerance(value, value_ref, value_tol, "value")
    assert_within_tolerance(weights, weights_ref, weights_tol, "weights")

    # Backward: grad = grad_value[..., None] * weights, where weights is the stored (rounded) output, so the
    # gradient's error is |grad_value| times the weights' tolerance, plus the rounding of the product.
    grad_value = spread(shape[:-1], exponents, generator).to(dtype)
    value.backward(grad_value.to(device))
    g64 = grad_value.double()[..., None]
    grad_ref = g64 * weights_ref
    grad_tol = (
        reference_tolerance(grad_ref, dtype, terms=2, scale=grad_ref.abs(), elementwise=True) + g64.abs() * weights_tol
    )
    assert_within_tolerance(leaf.grad, grad_ref, grad_tol, "grad")


@st.composite
def blend_cases(draw):
    dtype = draw(dtypes)
    n = draw(st.integers(0, 2500))
    k = draw(st.integers(1, 6))
    # float16 results must stay below 65504: values up to 1e2, |w|, |gamma| up to 10 and K <= 6 keep the sum there.
    cap = (-7, 2) if dtype == torch.float16 else None
    value_exponents = [draw(exponent_range(dtype, cap)) for _ in range(k + 1)]
    gamma = draw(st.sampled_from([0.0, 1.0]) | log_uniform(-3, 1)) * draw(st.sampled_from([1.0, -1.0]))
    weight_dtype = draw(st.sampled_from(DTYPES))
    return dtype, n, k, value_exponents, gamma, weight_dtype, draw(seeds)


def blend_inputs(case, device):
    dtype, n, k, value_exponents, gamma, weight_dtype, seed = case
    generator = torch.Generator().manual_seed(seed)
    base = spread((n,), value_exponents[0], generator).to(dtype)
    grads = [spread((n,), e, generator).to(dtype) for e in value_exponents[1:]]
    weights = spread((k,), (-3, 1), generator).to(weight_dtype)
    return base.to(device), [g.to(device) for g in grads], weights.to(device), gamma


def blend_tolerance(base, grads, weights, gamma, reference):
    """acc = base; acc += (gamma * w_k) * g_k for each k, in the math type: gamma and w_k are rounded to it, their
    product and each multiply-add round once more, so each term carries at most K + 4 roundings of its own
    magnitude, and base K; 2K + 6 roundings of the sum of all magnitudes bound that."""
    k = len(grads)
    scale = base.double().cpu().abs()
    for w, g in zip(weights.double().cpu(), grads, strict=True):
        scale = scale + abs(gamma) * w.abs() * g.double().cpu().abs()
    return reference_tolerance(reference, base.dtype, terms=2 * k + 6, scale=scale, elementwise=True)


@given(blend_cases())
def test_blend_out_of_place(device, case):
    base, grads, weights, gamma = blend_inputs(case, device)
    inputs = [t.clone() for t in [base, *grads, weights]]
    reference = blend_reference(base, grads, weights, gamma)
    out = mimo_ext.blend(base, grads, weights, gamma)
    assert out.dtype == base.dtype and out.shape == base.shape and out.device == base.device
    assert_within_tolerance(out, reference, blend_tolerance(base, grads, weights, gamma, reference), "blend")
    assert all(torch.equal(a, b) for a, b in zip(inputs, [base, *grads, weights], strict=True)), "an input changed"


@given(blend_cases(), st.booleans())
def test_blend_in_place_matches_the_reference(device, case, base_among_grads):
    base, grads, weights, gamma = blend_inputs(case, device)
    if base_among_grads:
        grads[0] = base  # allowed: each element is read before it is written
    reference = blend_reference(base, grads, weights, gamma)
    tolerance = blend_tolerance(base, grads, weights, gamma, reference)
    others = [g.clone() for g in grads[int(base_among_grads) :]]
    returned = mimo_ext.blend_(base, grads, weights, gamma)
    assert returned is base
    assert_within_tolerance(base, reference, tolerance, "blend_")
    assert all(torch.equal(a, b) for a, b in zip(others, grads[int(base_among_grads) :], strict=True))


@st.composite
def mimo_loss_cases(draw):
    dtype = draw(dtypes)
    m = draw(st.integers(1, 8))
    gamma = draw(st.sampled_from([0.0]) | log_uniform(-3, 2))
    mu = draw(log_uniform(-4, 3))
    # Cross-entropy-like losses: positive, from tiny to large.
    exponents = draw(exponent_range(dtype, (-6, 3)))
    return dtype, m, gamma, mu, exponents, draw(seeds)


@given(mimo_loss_cases(), st.booleans())
def test_mimo_loss_value_and_gradient(device, case, as_tensor):
    """value = f0 + gamma * S_mu(f); d/df0 = 1 and d/df = gamma * softmax(f / mu). The value sums f0 and gamma times
    the smooth max in the losses' dtype: the smooth max's tolerance times gamma, plus two roundings of the sum."""
    dtype, m, gamma, mu, exponents, seed = case
    generator = torch.Generator().manual_seed(seed)
    f0 = spread((), exponents, generator, positive=True).to(dtype).to(device).requires_grad_()
    f = spread((m,), exponents, generator, positive=True).to(dtype).to(device).requires_grad_()
    loss = mimo_ext.mimo_loss(f0, f if as_tensor else list(f.unbind()), gamma=gamma, mu=mu)
    loss.backward()

    assert loss.device == f0.device
    f64, f0_64 = f.detach().double().cpu(), f0.detach().double().cpu()
    value_ref, weights_ref = smooth_max_reference(f64, mu)
    value_tol, weights_tol = smooth_max_tolerances(f64, mu, dtype, value_ref, weights_ref)
    total = f0_64 + gamma * value_ref
    scale = f0_64.abs() + gamma * value_ref.abs()
    tol = reference_tolerance(total, dtype, terms=4, scale=scale, elementwise=True) + gamma * value_tol
    # gamma * value is rounded to the dtype before the sum: one more rounding of gamma * |value| in that dtype.
    tol = tol + torch.finfo(dtype).eps * gamma * value_ref.abs()
    assert_within_tolerance(loss, total, tol, "mimo_loss")
    assert f0.grad.item() == 1.0
    # Autograd hands smooth_max's backward gamma as a tensor of the losses' dtype: gamma is rounded to it first.
    grad_ref = gamma * weights_ref
    grad_tol = (
        reference_tolerance(grad_ref, dtype, terms=4, scale=grad_ref.abs(), elementwise=True) + gamma * weights_tol
    )
    grad_tol = grad_tol + torch.finfo(dtype).eps * grad_ref.abs()
    assert_within_tolerance(f.grad, grad_ref, grad_tol, "d loss / d f")


# ---- every op of the table


@pytest.mark.parametrize("op", OP_DB, ids=lambda op: op.name)
@given(data=st.data(), n=st.integers(0, 1500).map(lambda i: 2 * i + 1), seed=seeds)
def test_every_op_of_the_table_matches_its_reference(device, op, data, n, seed):
    # op_db's samples (odd lengths, drawn dtype and seed), each output within the one rule of its reference: an op
    # added to the table is checked here without a property of its own.
    dtype = data.draw(st.sampled_from(op.dtypes), label="dtype")
    for args in op.sample_inputs(device, dtype, n, seed):
        run_and_check(op, args)
