"""The fused step operators' bad inputs: each a specific error naming the argument, raised before anything is
written, on every device; a tensor on another device, and a CPU tensor mixed into a CUDA call, refused by name."""

from __future__ import annotations

import re

import pytest
import torch

from python_tests.ops.calls import SGD_OPTIONS, Call, call_with, op_and_reference
from python_tests.optim_helpers import assert_bit_identical

OTHER_DEVICE = "meta"  # a device unlike the test's, that needs no GPU


def _sgd(c: Call, **changes) -> dict:
    """sgd_step_ arguments of ``c`` (by name) with some replaced."""
    assert c.algorithm == "sgd" and set(changes) <= set(c.arguments())
    return {**c.arguments(), **changes}


def _adamw(c: Call, **changes) -> dict:
    assert c.algorithm == "adamw" and set(changes) <= set(c.arguments())
    return {**c.arguments(), **changes}


def _strided(t):
    return torch.stack([t, t], dim=1)[:, 0]


# (id, algorithm, error type, message fragment, builder of the bad arguments from a fresh Call with n=10, K=2).
BAD_INPUTS = [
    ("coefficients-count", "sgd", ValueError, r"or pieces that cover param: the pieces' lengths sum to 20, param has "
     r"10",
     lambda c: _sgd(c, coefficients=c.coefficients[:1])),
    ("coefficients-count", "adamw", ValueError, r"one buffer of param's length per coefficient, or the same number of "
     r"pieces for each of the 3 coefficients; got 2 tensors",
     lambda c: _adamw(c, coefficients=torch.ones(3, device=c.param.device))),
    ("grads-length", "sgd", ValueError, r"grads\[1\] has 9 elements but another objective's gradient of the same "
     r"piece has 10",
     lambda c: _sgd(c, grads=[c.grads[0], c.grads[1][:9]])),
    ("grads-length", "adamw", ValueError, r"grads\[1\] has 10 elements but another objective's gradient of the same "
     r"piece has 11",
     lambda c: _adamw(c, grads=[torch.zeros(11, device=c.param.device), c.grads[1]])),
    ("grads-dtype", "sgd", TypeError, r"grads\[1\] must have the dtype of param",
     lambda c: _sgd(c, grads=[c.grads[0], c.grads[1].double()])),
    ("grads-dtype", "adamw", TypeError, r"grads\[0\] must have the dtype of param",
     lambda c: _adamw(c, grads=[c.grads[0].half(), c.grads[1]])),
    ("grads-strided", "sgd", ValueError, r"grads\[1\] must be contiguous",
     lambda c: _sgd(c, grads=[c.grads[0], _strided(c.grads[1])])),
    ("grads-strided", "adamw", ValueError, r"grads\[0\] must be contiguous",
     lambda c: _adamw(c, grads=[_strided(c.grads[0]), c.grads[1]])),
    ("grads-17", "sgd", ValueError, "grads may hold at most 16 buffers",
     lambda c: _sgd(c, grads=[c.grads[0]] * 17, coefficients=torch.ones(17, device=c.param.device))),
    ("grads-17", "adamw", ValueError, "grads may hold at most 16 buffers",
     lambda c: _adamw(c, grads=[c.grads[0]] * 17, coefficients=torch.ones(17, device=c.param.device))),
    ("grads-empty", "sgd", ValueError, "grads must hold at least one buffer",
     lambda c: _sgd(c, grads=[], coefficients=c.coefficients[:0])),
    ("grads-overlap-param", "sgd", ValueError, r"grads\[0\] overlaps param",
     lambda c: _sgd(c, grads=[c.param, c.grads[1]])),
    ("grads-overlap-state", "adamw", ValueError, r"grads\[1\] overlaps exp_avg_sq",
     lambda c: _adamw(c, grads=[c.grads[0], c.states[1]])),
    ("param-strided", "sgd", ValueError, "param must be contiguous",
     lambda c: _sgd(c, param=_strided(c.param))),
    ("param-2d", "adamw", ValueError, "param must be a 1-D buffer",
     lambda c: _adamw(c, param=c.param.view(2, 5))),
    ("param-int", "sgd", TypeError, "param must be float32, float64, float16 or bfloat16",
     lambda c: _sgd(c, param=c.param.int())),
    ("momentum-length", "sgd", ValueError, r"momentum_buffer must have the length of param \(10\), got 9",
     lambda c: _sgd(c, momentum_buffer=c.states[0][:9])),
    ("momentum-strided", "sgd", ValueError, "momentum_buffer must be contiguous",
     lambda c: _sgd(c, momentum_buffer=_strided(c.states[0]))),
    ("exp_avg-dtype", "adamw", TypeError, "exp_avg must have the dtype of param",
     lambda c: _adamw(c, exp_avg=c.states[0].double())),
    ("max_exp_avg_sq-length", "adamw", ValueError, "max_exp_avg_sq must have the length of param",
     lambda c: _adamw(c, max_exp_avg_sq=c.states[2][:3])),
    ("state-overlap", "adamw", ValueError, "exp_avg_sq overlaps exp_avg",
     lambda c: _adamw(c, exp_avg_sq=c.states[0])),
    ("lr-shape", "sgd", ValueError, "lr must hold a single value",
     lambda c: _sgd(c, lr=torch.ones(2, device=c.param.device))),
    ("lr-int", "adamw", TypeError, "lr must be a floating-point tensor",
     lambda c: _adamw(c, lr=torch.ones((), dtype=torch.int64, device=c.param.device))),
    ("step-dtype", "adamw", TypeError, "step must be a float32 tensor",
     lambda c: _adamw(c, step=c.step.double())),
    ("grad_scale-shape", "sgd", ValueError, "grad_scale must hold a single value",
     lambda c: _sgd(c, grad_scale=torch.ones(2, device=c.param.device))),
    ("found_inf-shape", "adamw", ValueError, "found_inf must hold a single value",
     lambda c: _adamw(c, found_inf=torch.zeros(3, device=c.param.device))),
    ("nesterov-no-momentum", "sgd", ValueError, "nesterov requires momentum > 0 and dampening == 0",
     lambda c: _sgd(c, momentum=0.0, nesterov=True)),
    ("nesterov-dampening", "sgd", ValueError, "nesterov requires momentum > 0 and dampening == 0",
     lambda c: _sgd(c, dampening=0.5, nesterov=True)),
    ("weight_decay-negative", "sgd", ValueError, "weight_decay must be finite and >= 0",
     lambda c: _sgd(c, weight_decay=-0.1)),
    ("momentum-nan", "sgd", ValueError, "momentum must be finite and >= 0",
     lambda c: _sgd(c, momentum=float("nan"))),
    ("beta1-one", "adamw", ValueError, r"beta1 must be in \[0, 1\)", lambda c: _adamw(c, beta1=1.0)),
    ("beta2-negative", "adamw", ValueError, r"beta2 must be in \[0, 1\)", lambda c: _adamw(c, beta2=-0.5)),
    ("eps-nan", "adamw", ValueError, "eps must be finite and >= 0", lambda c: _adamw(c, eps=float("nan"))),
]  # fmt: skip


def _fresh_call(algorithm, device):
    hyper = (
        SGD_OPTIONS["momentum-dampening-wd-maximize"][0]
        if algorithm == "sgd"
        else dict(beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, amsgrad=True, maximize=False)
    )
    return Call(algorithm, hyper, 2.0, 10, 2, torch.float32, device, 8.0, 0.0)


@pytest.mark.parametrize(
    "algorithm, error, match, build", [pytest.param(*case[1:], id=f"{case[1]}-{case[0]}") for case in BAD_INPUTS]
)
def test_bad_input_is_rejected_before_any_write(device, algorithm, error, match, build):
    call = _fresh_call(algorithm, device)
    op, _ = op_and_reference(algorithm)
    args = build(call)
    before = [t.clone() for t in call.tensors()]
    with pytest.raises(error, match=match):
        call_with(op, args)
    assert_bit_identical(before, call.tensors())


@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
@pytest.mark.parametrize("name", ["coefficients", "lr", "step", "grads"])
def test_tensor_on_another_device_is_rejected(device, algorithm, name):
    call = _fresh_call(algorithm, device)
    op, _ = op_and_reference(algorithm)
    build = _sgd if algorithm == "sgd" else _adamw
    moved = [g.to(OTHER_DEVICE) for g in call.grads] if name == "grads" else getattr(call, name).to(OTHER_DEVICE)
    before = [t.clone() for t in call.tensors()]
    with pytest.raises(ValueError, match="must be on the device of param"):
        call_with(op, build(call, **{name: moved}))
    assert_bit_identical(before, call.tensors())


# ---- a CPU tensor mixed into a CUDA call


def _cuda_call_with_cpu(algorithm, name):
    """A fresh CUDA call of ``algorithm`` (K = 2, grad_scale and found_inf given) with the tensor argument ``name``
    moved to the CPU, as (call, arguments)."""
    call = _fresh_call(algorithm, "cuda")
    build = _sgd if algorithm == "sgd" else _adamw
    if name.startswith("grads["):
        k = int(name[6])
        grads = list(call.grads)
        grads[k] = grads[k].cpu()
        return call, build(call, grads=grads)
    state_names = ["momentum_buffer"] if algorithm == "sgd" else ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    if name in state_names:
        return call, build(call, **{name: call.states[state_names.index(name)].cpu()})
    return call, build(call, **{name: getattr(call, name).cpu()})


CPU_MIXED = [
    (algorithm, name)
    for algorithm, names in [
        ("sgd", ["param", "momentum_buffer"]),
        ("adamw", ["param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
    ]
    for name in [*names, "grads[0]", "grads[1]", "coefficients", "lr", "step", "grad_scale", "found_inf"]
]


@pytest.mark.parametrize("algorithm, name", CPU_MIXED, ids=[f"{a}-{n}" for a, n in CPU_MIXED])
def test_cpu_tensor_in_a_cuda_call_is_rejected(cuda_device, algorithm, name):
    # Everything a step reads is read by the kernel on the device (lr, step, coefficients, found_inf included: no
    # host synchronisation), so a CPU tensor among CUDA ones, even a 0-dim one, must be refused by name before
    # anything is written. A CPU param makes every other tensor the misplaced one: the first is named.
    call, args = _cuda_call_with_cpu(algorithm, name)
    op, _ = op_and_reference(algorithm)
    if name == "param":
        first = "momentum_buffer" if algorithm == "sgd" else "exp_avg"
        match = rf"{first} must be on the device of param \(cpu\), got cuda:0"
    else:
        match = rf"{re.escape(name)} must be on the device of param \(cuda:0\), got cpu"
    before = [t.clone() for t in call.tensors()]
    with pytest.raises(ValueError, match=match):
        call_with(op, args)
    assert_bit_identical(before, call.tensors())
