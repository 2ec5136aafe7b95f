"""Property-based tests of the fused optimizer steps (hypothesis, profiles in hypothesis_profiles.py): the ops
sgd_step_ / adamw_step_ on random flat buffers, and MIMOSGD / MIMOAdamW over a few steps on random parameter shapes,
M, dtypes and hyperparameters (drawn, or a configuration of python_tests/optim_db.py), each against mimo_ext.optim's
plain-PyTorch reference steps, on every device (conftest's `device` fixture: inputs drawn on the CPU and copied to
the device, references run on the CPU).

The tolerance rule is python_tests/references.py's: the result must be within twice the error of the reference run
in the same storage dtype (the oracle) from the reference run in float64 (the truth), plus twice the rounding of the
truth to the storage dtype, plus a few roundings of the math type on the truth's magnitude."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mimo_ext
from mimo_ext.optim import MIMOSGD, MIMOAdamW, adamw_step_reference, sgd_step_reference
from python_tests.ops.calls import used_states
from python_tests.optim_db import OPTIM_DB
from python_tests.optim_helpers import linear_objective
from python_tests.references import (
    assert_within_reference_error,
    math_dtype,
    smooth_max_reference,
    statistics_tolerance,
)
from python_tests.reliability import hypothesis_profiles  # noqa: F401  (loads the settings profile before the tests are decorated)
from python_tests.reliability.property_data import dtypes, exponent_range, log_uniform, seeds, spread

# Magnitudes of gradients, parameters and coefficients per storage dtype, chosen so that every stored state stays
# finite: float16 gradients up to 10 (blended up to 50, squared 2500 < 65504), float32 / bfloat16 up to 1e12 (the
# squared norms in the statistics stay below 1e30), float64 up to 1e50.
GRAD_CAP = {torch.float16: (-4, 1), torch.bfloat16: (-12, 12), torch.float32: (-12, 12), torch.float64: (-50, 50)}
PARAM_CAP = {torch.float16: (-4, 3), torch.bfloat16: (-10, 10), torch.float32: (-10, 10), torch.float64: (-50, 50)}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


@st.composite
def sgd_options(draw):
    """sgd_step_'s hyperparameters (weight_decay, momentum, dampening, nesterov, maximize) by name, valid."""
    weight_decay = draw(st.sampled_from([0.0]) | log_uniform(-4, -1))
    momentum = draw(st.sampled_from([0.0, 0.9]) | st.floats(0.0, 0.99))
    nesterov = momentum > 0 and draw(st.booleans())
    dampening = 0.0 if nesterov else draw(st.sampled_from([0.0]) | st.floats(0.0, 0.9))
    maximize = draw(st.booleans())
    return dict(weight_decay=weight_decay, momentum=momentum, dampening=dampening, nesterov=nesterov, maximize=maximize)


@st.composite
def adamw_options(draw):
    """adamw_step_'s hyperparameters (beta1, beta2, eps, weight_decay, amsgrad, maximize) by name. beta2 >= 0.5
    bounds |m| / sqrt(v) after a step by beta1 / sqrt(beta2) + 1 / sqrt(1 - beta2) <= 102, so that float16
    parameters stay finite at lr <= 1."""
    beta1 = draw(st.sampled_from([0.0, 0.9]) | st.floats(0.0, 0.99))
    beta2 = draw(st.sampled_from([0.999]) | st.floats(0.5, 0.9999))
    eps = draw(log_uniform(-12, -3))
    weight_decay = draw(st.sampled_from([0.0]) | log_uniform(-4, -1))
    amsgrad, maximize = draw(st.booleans()), draw(st.booleans())
    return dict(beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)


# ---- the ops


class StepCall:
    """The arguments of one sgd_step_ / adamw_step_ call on random buffers of length n."""

    def __init__(self, algorithm, options, dtype, n, k, step, lr, grad_scale, found_inf, exponents, seed):
        generator = torch.Generator().manual_seed(seed)
        g_exp, p_exp = exponents
        self.algorithm, self.options = algorithm, options
        self.param = spread((n,), p_exp, generator).to(dtype)
        if algorithm == "sgd":
            self.states = [spread((n,), g_exp, generator).to(dtype)]
        else:
            # Adam-like state: v > 0 with magnitudes of g^2, |m| <= sqrt(v).
            v = spread((n,), (2 * g_exp[0], 2 * g_exp[1]), generator, positive=True)
            m = v.sqrt() * (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1)
            self.states = [m.to(dtype), v.to(dtype), (v * (1 + torch.rand(n, generator=generator))).to(dtype)]
        self.grads = [spread((n,), g_exp, generator).to(dtype) for _ in range(k)]
        coefficients = spread((k,), (-3, 0), generator, positive=True)
        coefficients[0] = 1.0
        self.coefficients = coefficients.float()
        self.lr = torch.tensor(lr, dtype=math_dtype(dtype))
        self.step = torch.tensor(float(step))
        self.grad_scale = None if grad_scale is None else torch.tensor(grad_scale)
        self.found_inf = None if found_inf is None else torch.tensor([found_inf])

    def as_float64(self) -> StepCall:
        """The same call in float64 (buffers, coefficients, lr): the truth."""
        other = StepCall.__new__(StepCall)
        other.__dict__.update(self.__dict__)
        other.param = self.param.double()
        other.states = [s.double() for s in self.states]
        other.grads = [g.double() for g in self.grads]
        other.coefficients = self.coefficients.double()
        other.lr = self.lr.double()
        other.step = self.step.clone()
        return other

    def clone(self) -> StepCall:
        other = StepCall.__new__(StepCall)
        other.__dict__.update(self.__dict__)
        other.param, other.step = self.param.clone(), self.step.clone()
        other.states = [s.clone() for s in self.states]
        return other

    def on(self, device) -> StepCall:
        """A copy of every tensor on ``device`` (a copy also on the CPU: the written ones are never shared)."""
        other = StepCall.__new__(StepCall)
        other.__dict__.update(self.__dict__)

        def copy(t):
            return None if t is None else t.clone().to(device)

        other.param, other.step, other.lr = copy(self.param), copy(self.step), copy(self.lr)
        other.states = [copy(s) for s in self.states]
        other.grads = [copy(g) for g in self.grads]
        other.coefficients = copy(self.coefficients)
        other.grad_scale, other.found_inf = copy(self.grad_scale), copy(self.found_inf)
        return other

    def run(self, fn):
        head = (self.param, *(self.states if self.algorithm == "adamw" else self.states[:1]))
        tail = (self.grads, self.coefficients, self.lr, self.step)
        scaling = dict(grad_scale=self.grad_scale, found_inf=self.found_inf)
        return fn(*head, *tail, **scaling, **self.options, compute_stats=True)


@st.composite
def step_calls(draw, algorithm):
    dtype = draw(dtypes)
    options = draw(sgd_options() if algorithm == "sgd" else adamw_options())
    exponents = (draw(exponent_range(dtype, GRAD_CAP[dtype])), draw(exponent_range(dtype, PARAM_CAP[dtype])))
    return StepCall(
        algorithm,
        options,
        dtype,
        n=draw(st.integers(0, 2000)),
        k=draw(st.integers(1, 5)),
        step=draw(st.sampled_from([0, 1]) | st.integers(2, 10000)),
        lr=draw(log_uniform(-5, 0)),
        grad_scale=draw(st.none() | st.integers(0, 16).map(lambda e: 2.0**e)),
        found_inf=draw(st.sampled_from([None, 0.0])),
        exponents=exponents,
        seed=draw(seeds),
    )


@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
@given(data=st.data())
def test_step_op_matches_reference(device, algorithm, data):
    call = data.draw(step_calls(algorithm)).on(device)
    op = torch.ops.mimo_ext.sgd_step_.default if algorithm == "sgd" else torch.ops.mimo_ext.adamw_step_.default
    reference = sgd_step_reference if algorithm == "sgd" else adamw_step_reference
    oracle, truth = call.on("cpu"), call.on("cpu").as_float64()
    grads_before = [g.clone() for g in call.grads]
    used = used_states(call.algorithm, call.options)
    unused_before = {s: call.states[s].clone() for s in range(len(call.states)) if s not in used}
    stats = call.run(op)
    oracle.run(reference)
    truth_stats = truth.run(reference)

    assert stats.device == call.param.device
    assert call.step.item() == truth.step.item()
    assert all(torch.equal(a, b) for a, b in zip(grads_before, call.grads, strict=True)), "a gradient was written"
    assert all(torch.equal(call.states[s], t) for s, t in unused_before.items()), "an unused state was written"
    assert_within_reference_error(call.param, truth.param, oracle.param, what="param")
    for s in used:
        assert_within_reference_error(call.states[s], truth.states[s], oracle.states[s], what=f"state {s}")
    error = (stats.double().cpu() - truth_stats).abs()
    tolerance = statistics_tolerance(truth.grads, truth.coefficients, truth.grad_scale, call.param.dtype)
    assert (error <= tolerance).all(), (stats, truth_stats)


# ---- the optimizers, over a few steps


# torch.optim's defaults of what an optim_db configuration may leave out (the lr is drawn).
TORCH_DEFAULTS = {
    "sgd": dict(weight_decay=0.0, momentum=0.0, dampening=0.0, nesterov=False, maximize=False),
    "adamw": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False),
}


@st.composite
def optimizer_runs(draw):
    dtype = draw(dtypes)
    # Half the runs take a configuration of optim_db (torch's defaults for what it leaves out), half draw every
    # hyperparameter.
    table = draw(st.none() | st.sampled_from(OPTIM_DB))
    algorithm = table.algorithm if table is not None else draw(st.sampled_from(["sgd", "adamw"]))
    shapes = draw(st.lists(st.lists(st.integers(0, 5), max_size=3).map(tuple), min_size=1, max_size=4))
    config = dict(
        lr=draw(log_uniform(-4, -1)),
        gamma=draw(st.sampled_from([0.0, 1.0]) | log_uniform(-2, 1)),
        mu=draw(log_uniform(-3, 1)),
    )
    if table is not None:
        config.update(TORCH_DEFAULTS[algorithm], **table.kwargs)
    elif algorithm == "sgd":
        config.update(draw(sgd_options()))
    else:
        options = draw(adamw_options())
        config.update(betas=(options.pop("beta1"), options.pop("beta2")), **options)
    m = draw(st.integers(1, 4))
    steps = draw(st.integers(1, 3))
    path = draw(st.sampled_from(["objectives", "single"]))
    exponents = (draw(exponent_range(dtype, GRAD_CAP[dtype])), draw(exponent_range(dtype, PARAM_CAP[dtype])))
    return dtype, algorithm, shapes, config, m, steps, path, exponents, draw(seeds)


def reference_step(algorithm, config, p, state, grads, coefficients, lr):
    """One reference step of one parameter (flat views), with its own state and step count."""
    flat = [g.reshape(-1) for g in grads]
    if algorithm == "sgd":
        sgd_step_reference(
            p.view(-1), state["momentum_buffer"].view(-1), flat, coefficients, lr, state["step"],
            weight_decay=config["weight_decay"], momentum=config["momentum"], dampening=config["dampening"],
            nesterov=config["nesterov"], maximize=config["maximize"], compute_stats=False,
        )  # fmt: skip
    else:
        beta1, beta2 = config["betas"]
        adamw_step_reference(
            p.view(-1), state["exp_avg"].view(-1), state["exp_avg_sq"].view(-1), state["max_exp_avg_sq"].view(-1),
            flat, coefficients, lr, state["step"], beta1=beta1, beta2=beta2, eps=config["eps"],
            weight_decay=config["weight_decay"], amsgrad=config["amsgrad"], maximize=config["maximize"],
            compute_stats=False,
        )  # fmt: skip


class PerParameterReference:
    """The reference steps applied to each parameter on its own, in ``dtype`` (the oracle) or float64 (the truth)."""

    def __init__(self, algorithm, config, init, dtype):
        self.algorithm, self.config, self.dtype = algorithm, config, dtype
        self.params = [p.to(dtype).clone() for p in init]  # .to() of the same dtype would share the tensor
        names = ["momentum_buffer"] if algorithm == "sgd" else ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
        self.state = [{name: torch.zeros_like(p) for name in names} for p in self.params]
        for s in self.state:
            s["step"] = torch.zeros((), dtype=torch.float32)

    def step(self, grads, coefficients):
        """grads: [k][param] in the storage dtype."""
        lr = torch.tensor(self.config["lr"], dtype=math_dtype(self.dtype))
        for i, (p, s) in enumerate(zip(self.params, self.state, strict=True)):
            if p.numel():
                grads_i = [g[i].to(self.dtype) for g in grads]
                reference_step(self.algorithm, self.config, p, s, grads_i, coefficients, lr)


@given(optimizer_runs())
@hypothesis_profiles.examples(0.5)
def test_optimizer_matches_per_parameter_reference(device, run):
    dtype, algorithm, shapes, config, m, steps, path, (g_exp, p_exp), seed = run
    generator = torch.Generator().manual_seed(seed)
    init = [spread(s, p_exp, generator).to(dtype) for s in shapes]
    params = [torch.nn.Parameter(p.clone().to(device)) for p in init]
    cls = MIMOSGD if algorithm == "sgd" else MIMOAdamW
    opt = cls(params, **config)
    acc = math_dtype(dtype)
    oracle = PerParameterReference(algorithm, config, init, dtype)
    truth = PerParameterReference(algorithm, config, [p.double() for p in init], torch.float64)
    k = m + 1 if path == "objectives" else 1
    for _ in range(steps):
        grads = [[spread(s, g_exp, generator).to(dtype) for s in shapes] for _ in range(k)]
        losses = 0.1 + 3 * torch.rand(m, generator=generator)
        objectives = [
            linear_objective(
                params, [g.to(device) for g in grads[j]], (losses[j - 1] if j else torch.tensor(1.0)).to(device)
            )
            for j in range(k)
        ]
        opt.zero_grad()
        if path == "objectives":
            opt.backward(objectives[0], objectives[1:])
            # As the optimizer forms them: weights in float64 from smooth_max (on the device), times gamma in the
            # math type.
            weights = mimo_ext.smooth_max(losses.double().to(device), config["mu"])[1].cpu()
            library = torch.cat([torch.ones(1, dtype=acc), weights.to(acc) * config["gamma"]])
            exact_weights = smooth_max_reference(losses.double(), config["mu"])[1]
            exact = torch.cat([torch.ones(1, dtype=torch.float64), config["gamma"] * exact_weights])
        else:
            objectives[0].backward()
            library, exact = torch.ones(1, dtype=acc), torch.ones(1, dtype=torch.float64)
        opt.step()
        oracle.step(grads, library)
        truth.step(grads, exact)
    names = opt._state_names(opt.param_groups[0])
    for i, p in enumerate(params):
        what = f"param {i} {tuple(p.shape)}"
        assert_within_reference_error(p.detach(), truth.params[i], oracle.params[i], what=what)
        for name in names:
            state = opt.state[p][name]
            assert_within_reference_error(state, truth.state[i][name], oracle.state[i][name], what=f"{what} {name}")
