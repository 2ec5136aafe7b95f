"""What the op tests share with each other and with reliability/test_large_buffers.py: blend's random buffers and
its check against the reference; for the fused step ops, the option sets, a Call holding one call's arguments, the
schema's way of calling the op or its reference, and the check of one call against the reference in the storage
dtype and in float64; a tiny late-fusion model whose losses feed mimo_loss."""

from __future__ import annotations

import torch
from torch import nn

from mimo_ext.optim import adamw_step_reference, sgd_step_reference
from python_tests.references import assert_within_reference_error, blend_reference, statistics_tolerance

# ---- blend


def random_buffers(n, k, dtype, device, offset=0, seed=0):
    """base and k grads of length n; offset > 0 makes them views that start `offset` elements into their storage
    (so not 16-byte aligned)."""
    generator = torch.Generator().manual_seed(seed)

    def make():
        full = torch.randn(n + offset, generator=generator, dtype=torch.float64).to(dtype).to(device)
        return full[offset:]

    base = make()
    grads = [make() for _ in range(k)]
    weights = torch.softmax(torch.randn(k, generator=generator, dtype=torch.float64), 0).float().to(device)
    return base, grads, weights


def check_blend(out, base, grads, weights, gamma):
    reference = blend_reference(base, grads, weights, gamma)
    # Terms summed: base and K products of magnitude about |g| * |gamma * w_k|, each at most a few units.
    scale = 5.0 * (1 + abs(gamma))
    assert_within_reference_error(out, reference, scale=scale, terms=2 * len(grads) + 2)


# ---- the fused step ops

# (grad_scale, found_inf): not given, given, found_inf 0 (step runs) or 1 (step skipped).
SCALING = [(None, None), (1024.0, None), (None, 0.0), (1024.0, 0.0), (None, 1.0), (1024.0, 1.0)]

# Option sets: the hyperparameters (keyword arguments), plus the step count the buffers are at. The betas are
# float32 numbers (1 - 2^-k) so that these tests measure the kernels, not the rounding of the hyperparameters,
# which test_step_ops.test_adamw_beta2_close_to_one_in_float32 measures.
SGD_OPTIONS = {
    "momentum-dampening-wd-maximize": (
        dict(weight_decay=0.01, momentum=0.9, dampening=0.1, nesterov=False, maximize=True),
        3.0,
    ),
    "nesterov-first-step": (dict(weight_decay=0.0, momentum=0.9, dampening=0.0, nesterov=True, maximize=False), 0.0),
    "no-momentum-wd": (dict(weight_decay=0.05, momentum=0.0, dampening=0.0, nesterov=False, maximize=False), 5.0),
}
ADAMW_OPTIONS = {
    "wd-first-step": (
        dict(beta1=0.875, beta2=0.9990234375, eps=1e-8, weight_decay=0.01, amsgrad=False, maximize=False),
        0.0,
    ),
    "amsgrad-maximize": (dict(beta1=0.5, beta2=0.75, eps=1e-3, weight_decay=0.0, amsgrad=True, maximize=True), 4.0),
}


def op_and_reference(algorithm):
    if algorithm == "sgd":
        return torch.ops.mimo_ext.sgd_step_.default, sgd_step_reference
    return torch.ops.mimo_ext.adamw_step_.default, adamw_step_reference


def state_count(algorithm):
    return 1 if algorithm == "sgd" else 3


class Call:
    """The arguments of one step call: buffers of length n in ``dtype``, K gradient buffers (scaled by grad_scale
    when given), coefficients [1, positive...], lr, step and the options."""

    def __init__(self, algorithm, options, step, n, k, dtype, device, grad_scale=None, found_inf=None, seed=0):
        generator = torch.Generator().manual_seed(seed)

        def randn(scale=1.0):
            return (scale * torch.randn(n, generator=generator, dtype=torch.float64)).to(dtype).to(device)

        self.algorithm = algorithm
        self.param = randn()
        if algorithm == "sgd":
            self.states = [randn()]
        else:
            exp_avg_sq = torch.rand(n, generator=generator, dtype=torch.float64)
            self.states = [randn(0.1), exp_avg_sq.to(dtype).to(device), (1.5 * exp_avg_sq).to(dtype).to(device)]
        scale = 1.0 if grad_scale is None else grad_scale
        self.grads = [randn(scale) for _ in range(k)]
        coefficients = torch.rand(k, generator=generator, dtype=torch.float64) + 0.1
        coefficients[0] = 1.0
        self.coefficients = coefficients.float().to(device)
        lr_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.lr = torch.tensor(0.05, dtype=lr_dtype, device=device)
        self.step = torch.tensor(step, dtype=torch.float32, device=device)
        self.grad_scale = None if grad_scale is None else torch.tensor(grad_scale, device=device)
        self.found_inf = None if found_inf is None else torch.tensor([found_inf], device=device)
        self.options = options

    def tensors(self) -> list[torch.Tensor]:
        """Everything the call may write (param, states, step) and everything it reads."""
        return [self.param, *self.states, self.step, *self.grads, self.coefficients, self.lr]

    def clone(self, dtype=None, device=None) -> Call:
        """A copy of every tensor, optionally on ``device``; with dtype=torch.float64 (the truth), the buffers,
        coefficients and lr become float64 (step, grad_scale and found_inf keep their dtype)."""
        other = Call.__new__(Call)
        other.__dict__.update(self.__dict__)

        def copy(t, convert=False):
            if t is None:
                return None
            t = t.detach().clone().to(device or t.device)
            return t.to(dtype) if convert and dtype is not None else t

        other.param = copy(self.param, True)
        other.states = [copy(s, True) for s in self.states]
        other.grads = [copy(g, True) for g in self.grads]
        other.coefficients = copy(self.coefficients, True)
        other.lr = copy(self.lr, True)
        other.step = copy(self.step)
        other.grad_scale = copy(self.grad_scale)
        other.found_inf = copy(self.found_inf)
        return other

    def arguments(self, compute_stats=True) -> dict:
        """Every argument of the call by name, in the schema's order."""
        if self.algorithm == "sgd":
            states = {"momentum_buffer": self.states[0]}
        else:
            states = dict(zip(["exp_avg", "exp_avg_sq", "max_exp_avg_sq"], self.states, strict=True))
        return {
            "param": self.param, **states, "grads": self.grads, "coefficients": self.coefficients, "lr": self.lr,
            "step": self.step, "grad_scale": self.grad_scale, "found_inf": self.found_inf, **self.options,
            "compute_stats": compute_stats,
        }  # fmt: skip

    def run(self, fn, compute_stats=True) -> torch.Tensor:
        return call_with(fn, self.arguments(compute_stats))


def split_arguments(arguments: dict) -> tuple[tuple, dict]:
    """The schema's positional arguments (the tensors before grad_scale) and its keyword-only ones."""
    names = list(arguments)
    cut = names.index("grad_scale")
    return tuple(arguments[name] for name in names[:cut]), {name: arguments[name] for name in names[cut:]}


def call_with(fn, arguments: dict):
    """Calls the op or its reference as the schema takes the arguments: tensors positionally, the rest by keyword."""
    args, kwargs = split_arguments(arguments)
    return fn(*args, **kwargs)


def used_states(algorithm, options) -> list[int]:
    """Indices of the state buffers the options use (the others must not be touched)."""
    if algorithm == "sgd":
        return [0] if options["momentum"] != 0 else []
    return [0, 1, 2] if options["amsgrad"] else [0, 1]


def realigned(t: torch.Tensor, offset: int) -> torch.Tensor:
    """A copy of the 1-D ``t`` in a view starting ``offset`` elements into a fresh (16-byte aligned) buffer."""
    storage = torch.empty(t.numel() + offset + 3, dtype=t.dtype, device=t.device)
    view = storage[offset : offset + t.numel()]
    view.copy_(t)
    return view


def with_offsets(call: Call, param: int, states: list[int], grads: list[int]) -> Call:
    """``call`` with param, each state and each gradient buffer moved to views at these element offsets."""
    call.param = realigned(call.param, param)
    call.states = [realigned(s, o) for s, o in zip(call.states, states, strict=True)]
    call.grads = [realigned(g, o) for g, o in zip(call.grads, grads, strict=True)]
    return call


def check_step_against_reference(call: Call, op, reference, algorithm, hyper, step, n):
    """Runs ``call`` through ``op`` and its clones through the reference (in the storage dtype and in float64), and
    compares parameter, used states, step count and statistics (the rules of test_op_matches_reference)."""
    k = len(call.grads)
    grads_before = [g.clone() for g in call.grads]
    ref, truth = call.clone(device="cpu"), call.clone(dtype=torch.float64, device="cpu")
    stats = call.run(op)
    ref.run(reference)
    truth_stats = truth.run(reference)
    acc = torch.float64 if call.param.dtype == torch.float64 else torch.float32
    assert stats.dtype == acc and stats.shape == (2 * k,) and stats.device == call.param.device
    assert call.step.item() == step + 1
    assert all(torch.equal(a, b) for a, b in zip(grads_before, call.grads, strict=True)), "a gradient was written"
    assert_within_reference_error(call.param.cpu(), truth.param, ref.param, what="param")
    for s in used_states(algorithm, hyper):
        assert_within_reference_error(call.states[s].cpu(), truth.states[s], ref.states[s], what=f"state {s}")
    tolerance = statistics_tolerance(truth.grads, truth.coefficients, truth.grad_scale, call.param.dtype)
    assert ((stats.cpu().double() - truth_stats).abs() <= tolerance).all(), (stats, truth_stats, tolerance)


# ---- a tiny late-fusion model for mimo_loss


class TinyLateFusion(nn.Module):
    """Two encoders, a uni-modal head each, and a fusion head on the concatenated features."""

    def __init__(self, dims=(5, 3), features=4, classes=3):
        super().__init__()
        self.encoders = nn.ModuleList(nn.Sequential(nn.Linear(d, features), nn.Tanh()) for d in dims)
        self.heads = nn.ModuleList(nn.Linear(features, classes) for _ in dims)
        self.fusion = nn.Linear(features * len(dims), classes)

    def forward(self, inputs):
        features = [encoder(x) for encoder, x in zip(self.encoders, inputs, strict=True)]
        return self.fusion(torch.cat(features, dim=-1)), [head(f) for head, f in zip(self.heads, features, strict=True)]


def batch(dtype, device, n=6, dims=(5, 3), seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(n, d, generator=generator, dtype=dtype).to(device) for d in dims]
    labels = torch.randint(0, 3, (n,), generator=generator).to(device)
    return inputs, labels


def losses_of(model, inputs, labels):
    fused, uni = model(inputs)
    f0 = nn.functional.cross_entropy(fused, labels)
    return f0, [nn.functional.cross_entropy(logits, labels) for logits in uni]
