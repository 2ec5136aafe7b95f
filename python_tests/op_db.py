"""The table of public ops the reliability suites iterate (PyTorch's op_db / OpInfo idea): one entry per op, with
its callable, the dtypes it supports, the arguments it writes, a generator of valid sample inputs over odd sizes,
its float64 reference (python_tests/references.py, or the library's reference steps), the tolerance of each output
under the one rule, and its bad inputs. The bad-input matrix, the determinism suite and the op property run every
entry, so an op added here is covered by all three.

Arguments are dicts by name, in the schema's order; every op is called with keywords (``op.op(**args)``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import mimo_ext
from mimo_ext import ops
from mimo_ext.optim import adamw_step_reference, sgd_step_reference
from python_tests.references import (
    FLOAT_DTYPES,
    assert_within_reference_error,
    blend_reference,
    math_dtype,
    smooth_max_backward_reference,
    smooth_max_reference,
)

NAN, INF = math.nan, math.inf
META = "meta"  # a device other than the CPU that needs no GPU


@dataclass(frozen=True)
class ErrorInput:
    """A bad call: ``change`` turns a valid sample's arguments into bad ones; the op must raise ``error`` with a
    message matching ``pattern`` (which names the argument) and write nothing."""

    id: str
    error: type[Exception]
    pattern: str
    change: Callable[[dict], dict]


@dataclass(frozen=True)
class OpInfo:
    """One public op. ``sample_inputs(device, dtype, n, seed)`` gives valid argument dicts whose buffers hold about
    ``n`` elements; ``reference(args, dtype)`` the expected outputs by name ("result", or "value" and "weights",
    and each written argument) computed in ``dtype`` (float64: the truth; None: the storage dtype, the oracle);
    ``tolerance(args)`` maps each output compared to (terms, scale) of references.reference_tolerance (scale None:
    the largest |truth|); ``uses_oracle``: the comparison takes the storage-dtype reference as its oracle."""

    name: str
    op: Callable
    dtypes: tuple[torch.dtype, ...]
    writes: tuple[str, ...]
    result_names: tuple[str, ...]
    sample_inputs: Callable[[str, torch.dtype, int, int], list[dict]]
    reference: Callable[[dict, torch.dtype | None], dict[str, torch.Tensor]]
    tolerance: Callable[[dict], dict[str, tuple[float, float | None]]]
    error_inputs: tuple[ErrorInput, ...] = field(default=())
    uses_oracle: bool = False

    def outputs(self, args: dict, result) -> dict[str, torch.Tensor]:
        """The result(s) by name and every argument the op writes."""
        results = result if isinstance(result, tuple) else (result,)
        named = dict(zip(self.result_names, results, strict=True)) if self.result_names else {}
        return named | {name: args[name] for name in self.writes}


def _draw(generator, shape, dtype, device, scale=1.0):
    """float64 normal values rounded to ``dtype`` (the reference sees exactly what the kernel sees), drawn on the
    device by the sample's generator (so that large samples are quick to make on a GPU)."""
    return (scale * torch.randn(shape, generator=generator, dtype=torch.float64, device=device)).to(dtype)


def _strided(t):
    return torch.stack([t, t], dim=1)[:, 0]


def _with(args: dict, **changes) -> dict:
    return {**args, **changes}


# ---- smooth_max and its backward


def _smooth_max_samples(device, dtype, n, seed):
    # Short rows (M = 5: many rows a thread or a block) and long ones (M = 1000: a CUDA warp per row).
    g = torch.Generator(device=device).manual_seed(seed)
    return [
        dict(losses=_draw(g, (max(1, n // 5), 5), dtype, device), mu=0.3),
        dict(losses=_draw(g, (max(1, n // 1000), 1000), dtype, device, scale=3.0), mu=1.5),
    ]


def _smooth_max_reference(args, dtype):
    value, weights = smooth_max_reference(args["losses"], args["mu"], dtype or math_dtype(args["losses"].dtype))
    return dict(value=value, weights=weights)


def _smooth_max_tolerance(args):
    # value = max + mu * log(sum): errors on |max| and on mu * log M (log 1000 < 8); the weights: M + 8 roundings.
    magnitude = args["losses"].abs().max().item()
    return dict(value=(8, magnitude + args["mu"] * 8), weights=(8 + args["losses"].shape[-1], 1.0))


SMOOTH_MAX_ERRORS = (
    ErrorInput("losses-int64", TypeError, "losses must be float32", lambda a: _with(a, losses=a["losses"].long())),
    ErrorInput(
        "losses-0dim", ValueError, "losses must have at least 1 dimension", lambda a: _with(a, losses=a["losses"][0, 0])
    ),
    ErrorInput("losses-M0", ValueError, "losses must have M >= 1", lambda a: _with(a, losses=a["losses"][:, :0])),
    ErrorInput("mu-nan", ValueError, "mu must be finite and > 0", lambda a: _with(a, mu=NAN)),
    ErrorInput("mu-zero", ValueError, "mu must be finite and > 0", lambda a: _with(a, mu=0.0)),
    ErrorInput("mu-tensor", TypeError, "mu must be a Python float", lambda a: _with(a, mu=torch.tensor(1.0))),
)


def _smooth_max_backward_samples(device, dtype, n, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    rows = max(1, n // 5)
    weights = torch.softmax(torch.randn(rows, 5, generator=g, dtype=torch.float64, device=device), -1).to(dtype)
    return [dict(grad_value=_draw(g, (rows,), dtype, device), weights=weights)]


SMOOTH_MAX_BACKWARD_ERRORS = (
    ErrorInput(
        "grad_value-shape",
        ValueError,
        "grad_value must have the shape of weights",
        lambda a: _with(a, grad_value=a["weights"][0]),
    ),
)


# ---- blend and blend_


def _blend_samples(device, dtype, n, seed):
    # K = 3 (one pass) and K = 33 (the partial sums of K > 16).
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for k in (3, 33):
        base = _draw(g, (n,), dtype, device)
        grads = [_draw(g, (n,), dtype, device) for _ in range(k)]
        weights = torch.softmax(torch.randn(k, generator=g, dtype=torch.float64, device=device), 0).float()
        out.append(dict(base=base, grads=grads, weights=weights, gamma=0.9))
    return out


def _blend_in_place_samples(device, dtype, n, seed):
    # Also with base itself among the grads (read and written by the same pass).
    g = torch.Generator(device=device).manual_seed(seed + 1)
    base = _draw(g, (n,), dtype, device)
    with_base = dict(
        base=base, grads=[base, _draw(g, (n,), dtype, device)], weights=torch.tensor([0.5, 2.0]).to(device), gamma=1.1
    )
    return [*_blend_samples(device, dtype, n, seed), with_base]


def _blend_reference(written):
    def reference(args, dtype):
        base = args["base"]
        result = blend_reference(base, args["grads"], args["weights"], args["gamma"], dtype or math_dtype(base.dtype))
        return {written: result}

    return reference


def _blend_tolerance(written):
    def tolerance(args):
        # base and K products gamma * w_k * g_k: 2K + 2 roundings of the largest sum of magnitudes.
        w = args["weights"].detach().double().cpu().abs()
        magnitude = args["base"].detach().double().cpu().abs()
        for k, g in enumerate(args["grads"]):
            magnitude = magnitude + abs(args["gamma"]) * w[k] * g.detach().double().cpu().abs()
        return {written: (2 * len(args["grads"]) + 2, magnitude.max().item() if magnitude.numel() else 0.0)}

    return tolerance


def _grads_with(a, index, value):
    grads = list(a["grads"])
    grads[index] = value
    return grads


BLEND_ERRORS = (
    ErrorInput(
        "base-int",
        TypeError,
        "base must be float32",
        lambda a: _with(a, base=a["base"].int(), grads=[g.int() for g in a["grads"]]),
    ),
    ErrorInput("base-2d", ValueError, "base must be a 1-D buffer", lambda a: _with(a, base=a["base"].view(2, 5))),
    ErrorInput(
        "base-non-contiguous", ValueError, "base must be contiguous", lambda a: _with(a, base=_strided(a["base"]))
    ),
    ErrorInput(
        "grads-meta-device",
        ValueError,
        r"grads\[1\] must be on the device of base",
        lambda a: _with(a, grads=_grads_with(a, 1, a["grads"][1].to(META))),
    ),
    ErrorInput(
        "weights-meta-device",
        ValueError,
        "weights must be on the device of base",
        lambda a: _with(a, weights=a["weights"].to(META)),
    ),
    ErrorInput(
        "grads-length",
        ValueError,
        r"grads\[1\] must have the length of base \(10\), got 9",
        lambda a: _with(a, grads=_grads_with(a, 1, a["grads"][1][:9])),
    ),
    ErrorInput(
        "grads-dtype",
        TypeError,
        r"grads\[0\] must have the dtype of base",
        lambda a: _with(a, grads=_grads_with(a, 0, a["grads"][0].double())),
    ),
    ErrorInput(
        "grads-non-contiguous",
        ValueError,
        r"grads\[1\] must be contiguous",
        lambda a: _with(a, grads=_grads_with(a, 1, _strided(a["grads"][1]))),
    ),
    ErrorInput(
        "grads-empty",
        ValueError,
        "grads must hold at least one buffer",
        lambda a: _with(a, grads=[], weights=a["weights"][:0]),
    ),
    ErrorInput(
        "grads-a-tensor", TypeError, "grads must be a sequence of tensors", lambda a: _with(a, grads=a["grads"][0])
    ),
    ErrorInput(
        "grads-item-float", TypeError, r"grads\[1\] must be a tensor", lambda a: _with(a, grads=_grads_with(a, 1, 1.0))
    ),
    ErrorInput(
        "weights-count",
        ValueError,
        r"weights must be 1-D with one entry per grads buffer \(3\)",
        lambda a: _with(a, weights=a["weights"][:1]),
    ),
    ErrorInput(
        "weights-int",
        TypeError,
        "weights must be a floating-point tensor",
        lambda a: _with(a, weights=a["weights"].long()),
    ),
    ErrorInput("gamma-nan", ValueError, "gamma must be finite", lambda a: _with(a, gamma=NAN)),
    ErrorInput("gamma-inf", ValueError, "gamma must be finite", lambda a: _with(a, gamma=INF)),
    ErrorInput("gamma-tensor", TypeError, "gamma must be a Python float", lambda a: _with(a, gamma=torch.tensor(1.0))),
    ErrorInput(
        "base-requires-grad", ValueError, "base requires grad", lambda a: _with(a, base=a["base"].requires_grad_())
    ),
    ErrorInput(
        "weights-requires-grad",
        ValueError,
        "weights requires grad",
        lambda a: _with(a, weights=a["weights"].requires_grad_()),
    ),
)
BLEND_IN_PLACE_ERRORS = (
    *BLEND_ERRORS,
    ErrorInput(
        "grads-partially-overlap-base",
        ValueError,
        r"grads\[0\] partially overlaps base",
        lambda a: _with(a, base=a["base"][:8], grads=[a["base"][1:9], *(g[:8] for g in a["grads"][1:])]),
    ),
)


# ---- the fused step ops


def _step_samples(algorithm):
    def samples(device, dtype, n, seed):
        # Plain (K = 2, no scaling) and with every option in use (K = 3, grad_scale, found_inf = 0, weight decay,
        # SGD's dampening and maximize, AdamW's amsgrad).
        g = torch.Generator(device=device).manual_seed(seed)
        out = []
        for k, scaled in ((2, False), (3, True)):
            scale = 1024.0 if scaled else 1.0
            args = dict(param=_draw(g, (n,), dtype, device))
            if algorithm == "sgd":
                args["momentum_buffer"] = _draw(g, (n,), dtype, device)
            else:
                args["exp_avg"] = _draw(g, (n,), dtype, device, scale=0.1)
                exp_avg_sq = torch.rand(n, generator=g, dtype=torch.float64, device=device)
                args["exp_avg_sq"] = exp_avg_sq.to(dtype).to(device)
                args["max_exp_avg_sq"] = (1.5 * exp_avg_sq).to(dtype).to(device)
            coefficients = torch.rand(k, generator=g, dtype=torch.float64, device=device) + 0.1
            coefficients[0] = 1.0
            args |= dict(
                grads=[_draw(g, (n,), dtype, device, scale=scale) for _ in range(k)],
                coefficients=coefficients.float().to(device),
                lr=torch.tensor(0.01, dtype=math_dtype(dtype), device=device),
                step=torch.tensor(3.0, device=device),
                grad_scale=torch.tensor(scale, device=device) if scaled else None,
                found_inf=torch.zeros(1, device=device) if scaled else None,
            )
            if algorithm == "sgd":
                args |= dict(
                    weight_decay=0.01 if scaled else 0.0,
                    momentum=0.9,
                    dampening=0.1 if scaled else 0.0,
                    nesterov=False,
                    maximize=scaled,
                )
            else:
                args |= dict(
                    beta1=0.875, beta2=0.9990234375, eps=1e-8, weight_decay=0.01, amsgrad=scaled, maximize=False
                )
            out.append(dict(args, compute_stats=True))
        return out

    return samples


STEP_WRITES = {
    "sgd": ("param", "momentum_buffer", "step"),
    "adamw": ("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"),
}


def _step_reference(algorithm):
    reference = sgd_step_reference if algorithm == "sgd" else adamw_step_reference
    converted = ("param", "momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "coefficients", "lr")

    def run(args, dtype):
        # The library's reference step on copies: in float64 the buffers, coefficients and lr (the truth); step,
        # grad_scale and found_inf keep their dtype.
        copies = {}
        for name, value in args.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().clone()
                value = value.to(dtype) if dtype is not None and name in converted else value
            elif isinstance(value, list):
                value = [x.detach().cpu().clone().to(dtype or x.dtype) for x in value]
            copies[name] = value
        reference(**copies)
        return {name: copies[name] for name in STEP_WRITES[algorithm]}

    return run


def _step_tolerance(algorithm):
    # The buffers: 8 roundings on the truth's magnitude beyond the oracle's own error; the step count: exact.
    return lambda args: {name: (0 if name == "step" else 8, None) for name in STEP_WRITES[algorithm]}


def _step_errors(algorithm):
    common = (
        ErrorInput(
            "param-requires-grad",
            ValueError,
            "param requires grad",
            lambda a: _with(a, param=a["param"].requires_grad_()),
        ),
        ErrorInput(
            "grads-view-of-param",
            ValueError,
            r"grads\[0\] overlaps param",
            lambda a: _with(a, grads=[a["param"][:], a["grads"][1]]),
        ),
        ErrorInput(
            "lr-meta-device", ValueError, "lr must be on the device of param", lambda a: _with(a, lr=a["lr"].to(META))
        ),
        ErrorInput(
            "step-float64", TypeError, "step must be a float32 tensor", lambda a: _with(a, step=a["step"].double())
        ),
        ErrorInput(
            "17-grads",
            ValueError,
            "grads may hold at most 16 buffers",
            lambda a: _with(a, grads=[a["grads"][0]] * 17, coefficients=torch.ones(17)),
        ),
        ErrorInput(
            "coefficients-count",
            ValueError,
            # one coefficient for two buffers: read as one gradient in pieces, which do not tile param
            r"one buffer of param's length per coefficient, or pieces that cover param",
            lambda a: _with(a, coefficients=a["coefficients"][:1]),
        ),
        ErrorInput(
            "weight_decay-nan", ValueError, "weight_decay must be finite and >= 0", lambda a: _with(a, weight_decay=NAN)
        ),
    )
    if algorithm == "sgd":
        return (
            *common,
            ErrorInput(
                "momentum_buffer-non-contiguous",
                ValueError,
                "momentum_buffer must be contiguous",
                lambda a: _with(a, momentum_buffer=_strided(a["momentum_buffer"])),
            ),
            ErrorInput("dampening-inf", ValueError, "dampening must be finite", lambda a: _with(a, dampening=INF)),
        )
    return (
        *common,
        ErrorInput(
            "exp_avg-requires-grad",
            ValueError,
            "exp_avg requires grad",
            lambda a: _with(a, exp_avg=a["exp_avg"].requires_grad_()),
        ),
        ErrorInput(
            "exp_avg-aliases-param", ValueError, "exp_avg overlaps param", lambda a: _with(a, exp_avg=a["param"])
        ),
        ErrorInput(
            "grads-overlap-exp_avg_sq",
            ValueError,
            r"grads\[1\] overlaps exp_avg_sq",
            lambda a: _with(a, grads=[a["grads"][0], a["exp_avg_sq"]]),
        ),
        ErrorInput("beta1-nan", ValueError, r"beta1 must be in \[0, 1\)", lambda a: _with(a, beta1=NAN)),
        ErrorInput("eps-inf", ValueError, "eps must be finite and >= 0", lambda a: _with(a, eps=INF)),
    )


# ---- mimo_loss


def _mimo_loss_samples(device, dtype, n, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    return [
        dict(f0=_draw(g, (), dtype, device), uni_losses=_draw(g, (m,), dtype, device).abs(), gamma=gamma, mu=mu)
        for m, gamma, mu in ((3, 1.0, 0.1), (max(2, min(n, 1000)), 0.7, 2.0))
    ]


def _mimo_loss_reference(args, dtype):
    # The oracle (dtype None) composes as the op does: the smooth max rounded to the storage dtype, then
    # f0 + gamma * value in the storage dtype.
    f0, losses = args["f0"].detach().cpu(), args["uni_losses"]
    value, _ = smooth_max_reference(losses, args["mu"], dtype or math_dtype(losses.dtype))
    if dtype is None:
        return dict(result=f0 + args["gamma"] * value.to(losses.dtype))
    return dict(result=f0.to(dtype) + args["gamma"] * value)


def _mimo_loss_tolerance(args):
    # f0 + gamma * (max + mu * log(sum)): the smooth max's roundings and two more, on the terms' magnitudes.
    magnitude = args["uni_losses"].abs().max().item() + args["mu"] * 8
    return dict(result=(12, abs(args["f0"].item()) + args["gamma"] * magnitude))


MIMO_LOSS_ERRORS = (
    ErrorInput("gamma-nan", ValueError, "gamma must be finite and >= 0", lambda a: _with(a, gamma=NAN)),
    ErrorInput("mu-negative", ValueError, "mu must be finite and > 0", lambda a: _with(a, mu=-1.0)),
    ErrorInput(
        "f0-vector", ValueError, r"f0 must be a scalar \(0-dim\) tensor", lambda a: _with(a, f0=a["uni_losses"])
    ),
    ErrorInput(
        "uni_losses-empty", ValueError, "uni_losses must be a non-empty sequence", lambda a: _with(a, uni_losses=[])
    ),
    ErrorInput(
        "uni_losses-2d",
        ValueError,
        "uni_losses must be a non-empty 1-D tensor",
        lambda a: _with(a, uni_losses=a["uni_losses"].view(1, -1)),
    ),
)


# ---- the table

OP_DB = [
    OpInfo(
        name="smooth_max", op=mimo_ext.smooth_max, dtypes=tuple(FLOAT_DTYPES), writes=(),
        result_names=("value", "weights"), sample_inputs=_smooth_max_samples, reference=_smooth_max_reference,
        tolerance=_smooth_max_tolerance, error_inputs=SMOOTH_MAX_ERRORS,
    ),
    OpInfo(
        name="smooth_max_backward", op=ops.smooth_max_backward, dtypes=tuple(FLOAT_DTYPES), writes=(),
        result_names=("result",), sample_inputs=_smooth_max_backward_samples,
        reference=lambda a, dtype: dict(
            result=smooth_max_backward_reference(a["grad_value"], a["weights"], dtype or a["weights"].dtype)
        ),
        tolerance=lambda a: dict(result=(2, None)), error_inputs=SMOOTH_MAX_BACKWARD_ERRORS,
    ),
    OpInfo(
        name="blend", op=mimo_ext.blend, dtypes=tuple(FLOAT_DTYPES), writes=(), result_names=("result",),
        sample_inputs=_blend_samples, reference=_blend_reference("result"), tolerance=_blend_tolerance("result"),
        error_inputs=BLEND_ERRORS,
    ),
    OpInfo(
        name="blend_", op=mimo_ext.blend_, dtypes=tuple(FLOAT_DTYPES), writes=("base",), result_names=(),
        sample_inputs=_blend_in_place_samples, reference=_blend_reference("base"), tolerance=_blend_tolerance("base"),
        error_inputs=BLEND_IN_PLACE_ERRORS,
    ),
    OpInfo(
        name="sgd_step_", op=torch.ops.mimo_ext.sgd_step_.default, dtypes=tuple(FLOAT_DTYPES),
        writes=STEP_WRITES["sgd"], result_names=("stats",), sample_inputs=_step_samples("sgd"),
        reference=_step_reference("sgd"), tolerance=_step_tolerance("sgd"), error_inputs=_step_errors("sgd"),
        uses_oracle=True,
    ),
    OpInfo(
        name="adamw_step_", op=torch.ops.mimo_ext.adamw_step_.default, dtypes=tuple(FLOAT_DTYPES),
        writes=STEP_WRITES["adamw"], result_names=("stats",), sample_inputs=_step_samples("adamw"),
        reference=_step_reference("adamw"), tolerance=_step_tolerance("adamw"), error_inputs=_step_errors("adamw"),
        uses_oracle=True,
    ),
    OpInfo(
        name="mimo_loss", op=mimo_ext.mimo_loss, dtypes=tuple(FLOAT_DTYPES), writes=(), result_names=("result",),
        sample_inputs=_mimo_loss_samples, reference=_mimo_loss_reference, tolerance=_mimo_loss_tolerance,
        error_inputs=MIMO_LOSS_ERRORS, uses_oracle=True,
    ),
]  # fmt: skip
OPS = {op.name: op for op in OP_DB}


def run_and_check(op: OpInfo, args: dict) -> dict[str, torch.Tensor]:
    """Runs ``op`` on ``args`` and asserts that every output its tolerance names is within the one rule of its
    reference (computed before the call, which may write its arguments). Returns the outputs."""
    truth = op.reference(args, torch.float64)
    oracle = op.reference(args, None) if op.uses_oracle else {}
    outputs = op.outputs(args, op.op(**args))
    for name, (terms, scale) in op.tolerance(args).items():
        same_precision = oracle[name].to(outputs[name].dtype) if name in oracle else None
        what = f"{op.name} {name}"
        assert_within_reference_error(outputs[name], truth[name], same_precision, terms=terms, scale=scale, what=what)
    return outputs
