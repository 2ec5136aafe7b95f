"""What fuzzing the argument checks found (fuzz/fuzz_checks.py), each with the
fuzzer's reproducer, so that a fix stays fixed. The fuzzer ran on the CPU, but every finding is about the meaning of
a call (argument checks, NaN and Inf propagation, a skipped step), which is the same on every device: each test runs
on every device (conftest's `device` fixture)."""

from __future__ import annotations

import math

import pytest
import torch

import mimo_ext
from mimo_ext.optim.reference import sgd_step_reference

ops = torch.ops.mimo_ext


def sgd(param, buf, grads, coefficients, lr, step, momentum=0.0):
    # Every tensor on param's device (the reproducers are written with CPU tensors).
    d = param.device
    buf, grads, coefficients, lr, step = buf.to(d), [g.to(d) for g in grads], coefficients.to(d), lr.to(d), step.to(d)
    return ops.sgd_step_(param, buf, grads, coefficients, lr, step, momentum=momentum)


@pytest.mark.parametrize("alias", ["coefficients", "lr", "step"])
def test_a_per_step_tensor_sharing_memory_with_param_is_refused(device, alias):
    # The kernel re-read coefficients in every block while writing param: p[0] got one update, p[1024:] another.
    p = torch.ones(4096, device=device)
    args = {"coefficients": torch.ones(1), "lr": torch.tensor(0.5), "step": torch.tensor(0.0)}
    args = {name: t.to(device) for name, t in args.items()}
    args[alias] = p[:1] if alias == "coefficients" else p[7:8].view(())
    before = p.clone()
    with pytest.raises(ValueError, match=f"{alias} overlaps param, which is written in place"):
        sgd(p, torch.zeros(4096), [torch.ones(4096)], args["coefficients"], args["lr"], args["step"])
    assert torch.equal(p, before)


def test_grad_scale_or_found_inf_sharing_memory_with_a_state_is_refused(device):
    p, buf = torch.ones(64, device=device), torch.zeros(64, device=device)
    with pytest.raises(ValueError, match="found_inf overlaps momentum_buffer"):
        ops.sgd_step_(
            p,
            buf,
            [torch.ones(64, device=device)],
            torch.ones(1, device=device),
            torch.tensor(0.1, device=device),
            torch.tensor(0.0, device=device),
            found_inf=buf[3:4],
            momentum=0.9,
        )
    with pytest.raises(ValueError, match="grads\\[0\\] overlaps step"):
        g = torch.ones(64, device=device)
        ops.sgd_step_(
            p,
            buf,
            [g],
            torch.ones(1, device=device),
            torch.tensor(0.1, device=device),
            g[5:6].view(()),
            momentum=0.9,
        )


def test_blend_in_place_refuses_weights_inside_base(device):
    base = torch.ones(8, device=device)
    before = base.clone()
    with pytest.raises(ValueError, match="weights overlaps base"):
        mimo_ext.blend_(base, [torch.ones(8, device=device)], base[2:3], 1.0)
    assert torch.equal(base, before)


def test_sgd_first_step_never_reads_the_momentum_buffer(device):
    # 0 * Inf was NaN: torch.optim.SGD sets the buffer to g on its first step, whatever it held.
    param, buf = torch.tensor([1.0, 2.0], device=device), torch.tensor([math.inf, math.nan], device=device)
    grad = torch.tensor([0.5, -0.25])
    sgd(param, buf, [grad], torch.ones(1), torch.tensor(0.1), torch.tensor(0.0), momentum=0.9)
    param, buf = param.cpu(), buf.cpu()
    expected_param, expected_buf = torch.tensor([1.0, 2.0]), torch.tensor([math.inf, math.nan])
    sgd_step_reference(
        expected_param,
        expected_buf,
        [grad],
        torch.ones(1),
        torch.tensor(0.1),
        torch.tensor(0.0),
        momentum=0.9,
    )
    assert torch.equal(param, expected_param) and torch.equal(param, torch.tensor([0.95, 2.025]))
    assert torch.equal(buf, grad) and torch.equal(expected_buf, grad)


def test_amsgrad_keeps_a_nan_in_the_running_maximum(device):
    # As torch.maximum does (torch.optim.AdamW): a > b ? a : b alone replaced the NaN.
    p, m, v = torch.ones(3, device=device), torch.zeros(3, device=device), torch.zeros(3, device=device)
    vmax = torch.tensor([math.nan, 0.0, 0.0], device=device)
    ops.adamw_step_(
        p,
        m,
        v,
        vmax,
        [torch.ones(3, device=device)],
        torch.ones(1, device=device),
        torch.tensor(1e-3, device=device),
        torch.tensor(0.0, device=device),
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.0,
        amsgrad=True,
    )
    assert vmax[0].isnan() and p[0].isnan()
    assert torch.isfinite(vmax[1:]).all() and torch.isfinite(p[1:]).all()


def test_smooth_max_backward_refuses_non_float_tensors(device):
    with pytest.raises(TypeError, match="smooth_max_backward: weights must be float32"):
        ops.smooth_max_backward(torch.zeros(1, device=device), torch.zeros(1, 3, dtype=torch.int64, device=device))
    with pytest.raises(TypeError, match="smooth_max_backward: grad_value must be float32"):
        ops.smooth_max_backward(torch.zeros(1, dtype=torch.int32, device=device), torch.zeros(1, 3, device=device))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda d: mimo_ext.smooth_max(None, 1.0), "losses"),
        (lambda d: mimo_ext.blend(None, [torch.ones(2, device=d)], torch.ones(1, device=d), 1.0), "base"),
        (lambda d: mimo_ext.blend(torch.ones(2, device=d), [torch.ones(2, device=d)], None, 1.0), "weights"),
        (lambda d: mimo_ext.blend_(torch.ones(2, device=d), [torch.ones(2, device=d)], 0.5, 1.0), "weights"),
    ],
    ids=["smooth_max-losses", "blend-base", "blend-weights", "blend_-weights"],
)
def test_the_wrappers_name_a_missing_tensor(device, call, name):
    with pytest.raises(TypeError, match=f"{name} must be a tensor, got"):
        call(device)


@pytest.mark.parametrize("grad_scale", [0.0, 1e-30])
def test_a_skipped_step_returns_zero_statistics_whatever_the_grad_scale(device, grad_scale):
    # 1 / grad_scale^2 is Inf in float32 here; the zeros of a skipped step were multiplied by it (NaN).
    param = torch.ones(4, device=device)
    stats = ops.sgd_step_(
        param,
        torch.zeros(4, device=device),
        [torch.ones(4, device=device)],
        torch.ones(1, device=device),
        torch.tensor(0.1, device=device),
        torch.tensor(1.0, device=device),
        grad_scale=torch.tensor(grad_scale, device=device),
        found_inf=torch.tensor([1.0], device=device),
        compute_stats=True,
    )
    assert torch.equal(stats.cpu(), torch.zeros(2)) and torch.equal(param.cpu(), torch.ones(4))


@pytest.mark.parametrize("op", ["sgd", "adamw"])
@pytest.mark.parametrize("found_inf", [1.1219073349207099e-301, 5e-324, -1e-320, math.nan])
def test_a_nonzero_found_inf_below_the_math_dtype_skips_the_step(device, op, found_inf):
    # found_inf = 1.12e-301 in float64 with bfloat16 buffers: converted to the float32 math dtype it became 0, so the
    # kernel stepped (param -2.33 -> -1.67e6 after maximize with a huge gradient) while the step count, read from
    # the float64 tensor, said skipped. Nonzero in found_inf's own dtype must skip both.
    param = torch.tensor([-2.328125, 1.5, 0.25], dtype=torch.bfloat16, device=device)
    states = [torch.zeros(3, dtype=torch.bfloat16, device=device) for _ in range(3)]
    grads = [torch.tensor([-9.0e7, 3.0, -4.0], dtype=torch.bfloat16, device=device)]
    tensors = dict(
        coefficients=torch.tensor([379.0], device=device),
        lr=torch.tensor(0.05, device=device),
        step=torch.tensor(0.0, device=device),
        grad_scale=torch.tensor(1024.0, device=device),
        found_inf=torch.tensor(found_inf, dtype=torch.float64, device=device),
    )
    before = [t.clone() for t in [param, *states]]
    t = tensors
    if op == "sgd":
        stats = ops.sgd_step_(
            param,
            states[0],
            grads,
            t["coefficients"],
            t["lr"],
            t["step"],
            grad_scale=t["grad_scale"],
            found_inf=t["found_inf"],
            maximize=True,
            compute_stats=True,
        )
    else:
        stats = ops.adamw_step_(
            param,
            states[0],
            states[1],
            states[2],
            grads,
            t["coefficients"],
            t["lr"],
            t["step"],
            grad_scale=t["grad_scale"],
            found_inf=t["found_inf"],
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            weight_decay=0.01,
            amsgrad=True,
            maximize=True,
            compute_stats=True,
        )
    for got, want in zip([param, *states], before, strict=True):
        assert torch.equal(got, want)
    assert t["step"].item() == 0.0
    assert torch.equal(stats.cpu(), torch.zeros(2))


def step_call(op: str, device: str, **replace):
    """A valid sgd_step_ / adamw_step_ call on `device` as (function, keyword arguments), with some replaced."""
    n = 5
    args = dict(
        param=torch.ones(n, device=device),
        grads=[torch.full((n,), 0.5, device=device)],
        coefficients=torch.ones(1, device=device),
        lr=torch.tensor(0.1, device=device),
        step=torch.tensor(0.0, device=device),
        grad_scale=None,
        found_inf=None,
    )
    if op == "sgd_step_":
        args.update(
            momentum_buffer=torch.zeros(n, device=device), weight_decay=0.0, momentum=0.9, dampening=0.0, nesterov=False
        )
    else:
        args.update(
            exp_avg=torch.zeros(n, device=device),
            exp_avg_sq=torch.zeros(n, device=device),
            max_exp_avg_sq=torch.zeros(n, device=device),
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            amsgrad=True,
        )
    args.update(maximize=False, compute_stats=False)
    args.update(replace)
    return getattr(ops, op).default, args


NONE_CALLS = [
    ("smooth_max", "losses", lambda d: ops.smooth_max.default(None, 1.0)),
    ("smooth_max_backward", "grad_value", lambda d: ops.smooth_max_backward.default(None, torch.ones(3, device=d))),
    ("smooth_max_backward", "weights", lambda d: ops.smooth_max_backward.default(torch.ones((), device=d), None)),
    ("blend", "base", lambda d: ops.blend.default(None, [torch.ones(2, device=d)], torch.ones(1, device=d), 1.0)),
    ("blend", "weights", lambda d: ops.blend.default(torch.ones(2, device=d), [torch.ones(2, device=d)], None, 1.0)),
    ("blend_", "base", lambda d: ops.blend_.default(None, [torch.ones(2, device=d)], torch.ones(1, device=d), 1.0)),
]
for _op in ("sgd_step_", "adamw_step_"):
    _names = ["param", "coefficients", "lr", "step"]
    _names += ["momentum_buffer"] if _op == "sgd_step_" else ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    for _name in _names:
        NONE_CALLS.append((_op, _name, lambda d, o=_op, n=_name: (lambda f, a: f(**a))(*step_call(o, d, **{n: None}))))


@pytest.mark.parametrize("where", ["kernel", "meta"])
@pytest.mark.parametrize(("op", "name", "call"), NONE_CALLS, ids=[f"{o}-{n}" for o, n, _ in NONE_CALLS])
def test_none_for_a_tensor_is_refused_by_name_through_torch_ops(device, where, op, name, call):
    # Reached the kernels as an undefined tensor: "tensor does not have a device" or "got UNKNOWN_SCALAR" on a
    # device, an AttributeError in the fake (meta) implementations.
    with pytest.raises(TypeError, match=f"mimo_ext.{op}: {name} must be a tensor, got None"):
        call("meta" if where == "meta" else device)


WRITTEN = {
    "sgd_step_": ["param", "momentum_buffer", "step"],
    "adamw_step_": ["param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"],
}


@pytest.mark.parametrize(("op", "name"), [(o, n) for o, names in WRITTEN.items() for n in names])
def test_a_written_tensor_requiring_grad_is_refused_by_name(device, op, name):
    # step requiring grad met autograd's "a leaf Variable that requires grad is being used in an in-place
    # operation", which names no argument, while param requiring grad got this op's own message.
    fn, args = step_call(op, device)
    args[name] = args[name].clone().requires_grad_()
    before = {k: v.detach().clone() for k, v in args.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError, match=f"mimo_ext.{op}: {name} requires grad, but this op is not differentiable"):
        fn(**args)
    for k, v in before.items():
        assert torch.equal(args[k].detach(), v), k
    with torch.no_grad():  # where optimizers step: accepted
        fn(**args)
    assert args["step"].item() == 1.0


def test_in_place_ops_bump_the_version_of_what_they_write(device):
    # As an in-place ATen op does: a tensor autograd saved and blend_ or a step then overwrote is detected at
    # backward instead of giving a silently wrong gradient.
    x = torch.ones(4, device=device, requires_grad=True)
    base = torch.ones(4, device=device)
    y = (x * base).sum()
    with torch.no_grad():
        ops.blend_(base, [torch.ones(4, device=device)], torch.ones(1, device=device), 1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    fn, args = step_call("adamw_step_", device)
    versions = {k: v._version for k, v in args.items() if isinstance(v, torch.Tensor)}
    fn(**args)
    for k, v in versions.items():
        assert args[k]._version == v + (k in WRITTEN["adamw_step_"]), k
    fn, args = step_call("sgd_step_", device, lr=torch.tensor([0.1, 0.2], device=device))
    versions = {k: v._version for k, v in args.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError, match="lr must hold a single value"):
        fn(**args)
    assert all(args[k]._version == v for k, v in versions.items())  # rejected: nothing written, no bump


def test_an_inference_tensor_written_outside_inference_mode_stays_accepted(device):
    # Inference tensors have no version counter; bumping one throws, after the kernel wrote. Such a call was
    # accepted before the version bump existed and still is, with the kernel's result.
    with torch.inference_mode():
        base = torch.ones(4, device=device)
    ops.blend_(base, [torch.full((4,), 2.0, device=device)], torch.ones(1, device=device), 0.5)
    assert torch.equal(base.cpu(), torch.full((4,), 2.0))
