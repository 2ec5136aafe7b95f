"""Plain-PyTorch references of the ops, and the one tolerance rule every comparison with them uses (the tests, the
property tests and fuzz/fuzz_checks.py alike).

The references take the inputs as the kernels see them (already rounded to their storage dtype) and compute in a
given dtype: float64 for the truth, or the storage dtype / math dtype for a same-precision oracle. Hyperparameters
are read as the kernels read them: mu and the blend weights in the math dtype (float32, or float64 for float64
data). The references of the fused step ops are the library's own (mimo_ext.optim.sgd_step_reference and
adamw_step_reference, the ops' fallback kernels), not copied here.

The tolerance rule (flash-attention's): a result in a storage dtype must be within

    2 * (the oracle's own error) + 2 * (the error of rounding the truth to the storage dtype) + terms * eps * scale

of the truth, where the oracle is the same computation in the storage precision (its own error is 0 when there is
none), eps the math dtype's machine epsilon, ``terms`` the count of roundings of the math dtype the computation makes
on terms of magnitude up to ``scale``. It is never loosened to make a test pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
HALF_DTYPES = [torch.float16, torch.bfloat16]


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in for storage dtype ``dtype``: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def math_eps(dtype: torch.dtype) -> float:
    """Machine epsilon of the math dtype of storage dtype ``dtype``."""
    return torch.finfo(math_dtype(dtype)).eps


# ---- the references


def smooth_max_reference(
    losses: torch.Tensor, mu: float, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """value = mu * logsumexp(l / mu) and weights = softmax(l / mu) over the last dimension, computed in ``dtype`` on
    the CPU; mu as the kernels read it (in the math dtype of ``losses``: clamped to its largest finite value, and 0,
    the hard max with ties sharing the weight, where it underflows); NaN rows where a loss is NaN or +-Inf."""
    mu_seen = torch.tensor(min(mu, torch.finfo(math_dtype(losses.dtype)).max), dtype=math_dtype(losses.dtype)).item()
    l = losses.detach().cpu().to(dtype)  # noqa: E741
    top = l.amax(-1, keepdim=True)
    if mu_seen == 0:
        ties = (l == top).to(dtype)
        weights = ties / ties.sum(-1, keepdim=True)
        value = top.squeeze(-1)
    else:
        # Shifted by the row's max before dividing by mu: l / mu alone overflows for a tiny mu.
        e = torch.exp((l - top) / mu_seen)
        total = e.sum(-1, keepdim=True)
        value = (top + mu_seen * torch.log(total)).squeeze(-1)
        weights = e / total
    bad = ~torch.isfinite(l).all(dim=-1)
    value = torch.where(bad, torch.full_like(value, math.nan), value)
    weights = torch.where(bad.unsqueeze(-1), torch.full_like(weights, math.nan), weights)
    return value, weights


def smooth_max_weights(losses: torch.Tensor, mu: float) -> torch.Tensor:
    """The MIMO weights softmax(losses / mu) over the last dimension (smooth_max_reference's weights), in the dtype
    and on the device of ``losses``: for the tests that assemble the MIMO direction by hand."""
    return smooth_max_reference(losses, mu)[1].to(losses.device, losses.dtype)


def smooth_max_backward_reference(
    grad_value: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """d value / d losses times the incoming gradient: weights * grad_value[..., None], in ``dtype`` on the CPU."""
    return weights.detach().cpu().to(dtype) * grad_value.detach().cpu().to(dtype).unsqueeze(-1)


def blend_reference(
    base: torch.Tensor,
    grads: Sequence[torch.Tensor],
    weights: torch.Tensor,
    gamma: float,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """base + gamma * sum_k weights[k] * grads[k], computed in ``dtype`` on the CPU, with the weights read in the
    math dtype of ``base`` (as the kernels read them)."""
    w = weights.detach().cpu().to(math_dtype(base.dtype)).to(dtype)
    out = base.detach().cpu().to(dtype).clone()
    for k, g in enumerate(grads):
        out = out + (torch.tensor(gamma, dtype=dtype) * w[k]) * g.detach().cpu().to(dtype)
    return out


# ---- the tolerance rule


def reference_tolerance(
    truth: torch.Tensor,
    dtype: torch.dtype,
    *,
    terms: float,
    scale: float | torch.Tensor | None = None,
    oracle: torch.Tensor | None = None,
    elementwise: bool = False,
) -> float | torch.Tensor:
    """The tolerance of a result stored in ``dtype`` against the float64 ``truth`` (the module's rule): twice the
    largest error of ``oracle`` (None: 0), plus twice the error of rounding the truth to ``dtype``, plus ``terms``
    roundings of the math dtype on ``scale`` (None: the largest finite |truth|).

    ``elementwise``: the rounding is each element's own and ``scale`` may be a tensor of each element's magnitude
    (the sum of the magnitudes of the terms that make it up), which gives a tensor of tolerances; otherwise the
    rounding is the largest over the tensor and the tolerance one number. Elements where the truth or the oracle is
    not finite, or the truth is beyond ``dtype``'s range, do not count (reference_mismatches judges them)."""
    t = truth.detach().cpu().double()
    stored = t.to(dtype).double()
    representable = torch.isfinite(t) & torch.isfinite(stored)
    rounding = torch.where(representable, (stored - t).abs(), torch.zeros_like(t))
    own = 0.0
    if oracle is not None:
        o = oracle.detach().cpu().double()
        both = torch.isfinite(t) & torch.isfinite(o)
        own = (o - t)[both].abs().max().item() if both.any() else 0.0
    if scale is None:
        finite = t[torch.isfinite(t)]
        scale = finite.abs().max().item() if finite.numel() else 0.0
    if not elementwise:
        rounding = rounding.max().item() if rounding.numel() else 0.0
    return 2 * own + 2 * rounding + terms * math_eps(dtype) * scale


def reference_mismatches(
    actual: torch.Tensor,
    truth: torch.Tensor,
    tolerance: float | torch.Tensor,
    oracle: torch.Tensor | None = None,
) -> str | None:
    """None when ``actual`` (a storage dtype) agrees with the float64 ``truth`` element by element; otherwise why not.

    Where the truth is finite: within ``tolerance``; where it is beyond the storage dtype's range, saturated (+-Inf or
    the largest finite value, of the truth's sign); where the oracle is not finite there, the storage
    precision itself cannot reach the truth (an overflow, or a hyperparameter beyond the math dtype's range) and no
    value is judged. Where the truth is NaN or +-Inf (NaN or Inf inputs, or a float64 overflow): the same as the
    truth, or as the oracle."""
    if tuple(actual.shape) != tuple(truth.shape):
        return f"shape {tuple(actual.shape)}, expected {tuple(truth.shape)}"
    if actual.numel() == 0:
        return None
    a = actual.detach().cpu().double()
    t = truth.detach().cpu().double()
    finite_t = torch.isfinite(t)
    beyond = finite_t & ~torch.isfinite(t.to(actual.dtype).double())
    saturated = (a.abs() >= torch.finfo(actual.dtype).max) & (a.sign() == t.sign())
    close = torch.where(beyond, saturated, (a - t).abs() <= tolerance)
    like = (a.isnan() & t.isnan()) | (a == t)
    if oracle is not None:
        o = oracle.detach().cpu().double()
        close |= ~torch.isfinite(o)
        like |= (a.isnan() & o.isnan()) | (a == o)
    bad = ~torch.where(finite_t, close, like)
    if not bad.any():
        return None
    i = int(bad.flatten().nonzero()[0, 0])
    limit = tolerance.flatten()[i].item() if isinstance(tolerance, torch.Tensor) else tolerance
    at = lambda x: x.flatten()[i].item()  # noqa: E731
    return (
        f"{int(bad.sum())} of {bad.numel()} elements off, first at flat index {i}: got {at(a)!r}, float64 reference "
        f"{at(t)!r}"
        + ("" if oracle is None else f", reference in {actual.dtype} {at(o)!r}")
        + f", tolerance {limit:.3e}"
    )


def within_reference_error(
    actual: torch.Tensor,
    truth: torch.Tensor,
    oracle: torch.Tensor | None = None,
    *,
    terms: float = 8,
    scale: float | None = None,
) -> str | None:
    """The rule applied: reference_mismatches with reference_tolerance (None when ``actual`` passes; otherwise why
    not)."""
    if actual.numel() == 0:
        return reference_mismatches(actual, truth, 0.0, oracle)
    tolerance = reference_tolerance(truth, actual.dtype, terms=terms, scale=scale, oracle=oracle)
    return reference_mismatches(actual, truth, tolerance, oracle)


def assert_within_tolerance(actual: torch.Tensor, truth: torch.Tensor, tolerance, what: str = "") -> None:
    """Asserts reference_mismatches finds nothing, with a tolerance from reference_tolerance (elementwise ones
    composed by the property tests)."""
    why = reference_mismatches(actual, truth, tolerance)
    assert why is None, f"{what}: {why} ({actual.dtype})"


def assert_within_reference_error(
    actual: torch.Tensor,
    truth: torch.Tensor,
    oracle: torch.Tensor | None = None,
    *,
    terms: float = 8,
    scale: float | None = None,
    what: str = "",
) -> None:
    """The tests' form of the rule: within_reference_error passes, and, the tests' inputs being chosen so that the
    oracle stays finite, the result is finite wherever the truth is finite and within the storage dtype's range."""
    if oracle is not None:
        assert actual.dtype == oracle.dtype and actual.shape == oracle.shape, (what, actual, oracle)
    why = within_reference_error(actual, truth, oracle, terms=terms, scale=scale)
    assert why is None, f"{what}: {why} ({actual.dtype})"
    if actual.numel():
        t = truth.detach().cpu().double()
        representable = torch.isfinite(t) & torch.isfinite(t.to(actual.dtype))
        finite = torch.isfinite(actual.detach().cpu())
        assert finite[representable].all(), f"{what}: non-finite values where the reference is finite"


def statistics_tolerance(
    grads: Sequence[torch.Tensor],
    coefficients: torch.Tensor,
    grad_scale: torch.Tensor | float | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The rule's ``terms * eps * scale`` for the step ops' statistics ([|g_k|^2..., g_0 . g_k..., |blend|^2], of the
    unscaled gradients): each sums n products in the math dtype of ``dtype``, so n + 2K + 4 roundings of the sum of
    the magnitudes of its terms (recursive or blocked summation); per statistic."""
    g = [x.detach().double().cpu().abs() for x in grads]
    c = coefficients.detach().double().cpu().abs()
    inv = 1.0 if grad_scale is None else 1.0 / float(grad_scale)
    squares = [(x * x).sum() * inv * inv for x in g]
    dots = [(g[0] * x).sum() * inv * inv for x in g[1:]]
    blended = sum(ck * x for ck, x in zip(c, g, strict=True)) * inv
    magnitudes = torch.stack([*squares, *dots, (blended * blended).sum()])
    return magnitudes * (g[0].numel() + 2 * len(g) + 4) * math_eps(dtype)
