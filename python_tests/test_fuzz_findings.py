"""Regression tests for what fuzzing the argument checks found (SANITIZERS.md, "Findings"), each with the
fuzzer's reproducer, so that a fix stays fixed."""

from __future__ import annotations

import math

import pytest
import torch

import mimo_ext
from mimo_ext.optim.reference import sgd_step_reference

ops = torch.ops.mimo_ext


def sgd(param, buf, grads, coefficients, lr, step, momentum=0.0):
    return ops.sgd_step_(param, buf, grads, coefficients, lr, step, None, None, 0.0, momentum, 0.0, False, False, False)


@pytest.mark.parametrize("alias", ["coefficients", "lr", "step"])
def test_a_per_step_tensor_sharing_memory_with_param_is_refused(alias):
    # The kernel re-read coefficients in every block while writing param: p[0] got one update, p[1024:] another.
    p = torch.ones(4096)
    args = {"coefficients": torch.ones(1), "lr": torch.tensor(0.5), "step": torch.tensor(0.0)}
    args[alias] = p[:1] if alias == "coefficients" else p[7:8].view(())
    before = p.clone()
    with pytest.raises(ValueError, match=f"{alias} overlaps param, which is written in place"):
        sgd(p, torch.zeros(4096), [torch.ones(4096)], args["coefficients"], args["lr"], args["step"])
    assert torch.equal(p, before)


def test_grad_scale_or_found_inf_sharing_memory_with_a_state_is_refused():
    p, buf = torch.ones(64), torch.zeros(64)
    with pytest.raises(ValueError, match="found_inf overlaps momentum_buffer"):
        ops.sgd_step_(
            p,
            buf,
            [torch.ones(64)],
            torch.ones(1),
            torch.tensor(0.1),
            torch.tensor(0.0),
            None,
            buf[3:4],
            0.0,
            0.9,
            0.0,
            False,
            False,
            False,
        )
    with pytest.raises(ValueError, match="grads\\[0\\] overlaps step"):
        g = torch.ones(64)
        ops.sgd_step_(
            p,
            buf,
            [g],
            torch.ones(1),
            torch.tensor(0.1),
            g[5:6].view(()),
            None,
            None,
            0.0,
            0.9,
            0.0,
            False,
            False,
            False,
        )


def test_blend_in_place_refuses_weights_inside_base():
    base = torch.ones(8)
    before = base.clone()
    with pytest.raises(ValueError, match="weights overlaps base"):
        mimo_ext.blend_(base, [torch.ones(8)], base[2:3], 1.0)
    assert torch.equal(base, before)


def test_sgd_first_step_never_reads_the_momentum_buffer():
    # 0 * Inf was NaN: torch.optim.SGD sets the buffer to g on its first step, whatever it held.
    param, buf = torch.tensor([1.0, 2.0]), torch.tensor([math.inf, math.nan])
    grad = torch.tensor([0.5, -0.25])
    sgd(param, buf, [grad], torch.ones(1), torch.tensor(0.1), torch.tensor(0.0), momentum=0.9)
    expected_param, expected_buf = torch.tensor([1.0, 2.0]), torch.tensor([math.inf, math.nan])
    sgd_step_reference(
        expected_param,
        expected_buf,
        [grad],
        torch.ones(1),
        torch.tensor(0.1),
        torch.tensor(0.0),
        None,
        None,
        0.0,
        0.9,
        0.0,
        False,
        False,
        False,
    )
    assert torch.equal(param, expected_param) and torch.equal(param, torch.tensor([0.95, 2.025]))
    assert torch.equal(buf, grad) and torch.equal(expected_buf, grad)


def test_amsgrad_keeps_a_nan_in_the_running_maximum():
    # As torch.maximum does (torch.optim.AdamW): a > b ? a : b alone replaced the NaN.
    p, m, v = torch.ones(3), torch.zeros(3), torch.zeros(3)
    vmax = torch.tensor([math.nan, 0.0, 0.0])
    ops.adamw_step_(
        p,
        m,
        v,
        vmax,
        [torch.ones(3)],
        torch.ones(1),
        torch.tensor(1e-3),
        torch.tensor(0.0),
        None,
        None,
        0.9,
        0.999,
        1e-8,
        0.0,
        True,
        False,
        False,
    )
    assert vmax[0].isnan() and p[0].isnan()
    assert torch.isfinite(vmax[1:]).all() and torch.isfinite(p[1:]).all()


def test_smooth_max_backward_refuses_non_float_tensors():
    with pytest.raises(TypeError, match="smooth_max_backward: weights must be float32"):
        ops.smooth_max_backward(torch.zeros(1), torch.zeros(1, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="smooth_max_backward: grad_value must be float32"):
        ops.smooth_max_backward(torch.zeros(1, dtype=torch.int32), torch.zeros(1, 3))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: mimo_ext.smooth_max(None, 1.0), "losses"),
        (lambda: mimo_ext.blend(None, [torch.ones(2)], torch.ones(1), 1.0), "base"),
        (lambda: mimo_ext.blend(torch.ones(2), [torch.ones(2)], None, 1.0), "weights"),
        (lambda: mimo_ext.blend_(torch.ones(2), [torch.ones(2)], 0.5, 1.0), "weights"),
    ],
)
def test_the_wrappers_name_a_missing_tensor(call, name):
    with pytest.raises(TypeError, match=f"{name} must be a tensor, got"):
        call()


@pytest.mark.parametrize("grad_scale", [0.0, 1e-30])
def test_a_skipped_step_returns_zero_statistics_whatever_the_grad_scale(grad_scale):
    # 1 / grad_scale^2 is Inf in float32 here; the zeros of a skipped step were multiplied by it (NaN).
    param = torch.ones(4)
    stats = ops.sgd_step_(
        param,
        torch.zeros(4),
        [torch.ones(4)],
        torch.ones(1),
        torch.tensor(0.1),
        torch.tensor(1.0),
        torch.tensor(grad_scale),
        torch.tensor([1.0]),
        0.0,
        0.0,
        0.0,
        False,
        False,
        True,
    )
    assert torch.equal(stats, torch.zeros(2)) and torch.equal(param, torch.ones(4))
