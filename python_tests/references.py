"""Plain-PyTorch float64 references of every op, and the tolerance rule used to compare with them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
BUFFER_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def smooth_max_reference(losses: torch.Tensor, mu: float) -> tuple[torch.Tensor, torch.Tensor]:
    """value = mu * logsumexp(l / mu), weights = softmax(l / mu) in float64; NaN rows where l holds NaN or +-Inf."""
    l64 = losses.detach().to(torch.float64).cpu()
    value = mu * torch.logsumexp(l64 / mu, dim=-1)
    weights = torch.softmax(l64 / mu, dim=-1)
    bad = ~torch.isfinite(l64).all(dim=-1)
    value[bad] = float("nan")
    weights[bad] = float("nan")
    return value, weights


def blend_reference(
    base: torch.Tensor, grads: Sequence[torch.Tensor], weights: torch.Tensor, gamma: float
) -> torch.Tensor:
    """base + gamma * sum_k weights[k] * grads[k] in float64."""
    out = base.detach().to(torch.float64).cpu().clone()
    w = weights.detach().to(torch.float64).cpu()
    for k, g in enumerate(grads):
        out += gamma * w[k] * g.detach().to(torch.float64).cpu()
    return out


def accumulation_eps(dtype: torch.dtype) -> float:
    """Machine epsilon of the type the kernels compute in for storage type ``dtype``."""
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


def assert_matches_reference(actual: torch.Tensor, reference: torch.Tensor, scale: float, terms: int = 4) -> None:
    """Compares a result in its storage dtype with a float64 reference of the same inputs.

    The tolerance comes from the reference's own error at that precision: twice the largest error of rounding the
    float64 reference to ``actual.dtype``, plus ``terms`` roundings of the accumulation type on the magnitude
    ``scale`` of the terms summed. It is never loosened to make a test pass.
    """
    assert actual.shape == reference.shape, (actual.shape, reference.shape)
    assert actual.dtype != torch.float64 or reference.dtype == torch.float64
    ref = reference.to(torch.float64).cpu()
    got = actual.to(torch.float64).cpu()
    assert torch.equal(got.isnan(), ref.isnan()), "NaN positions differ from the reference"
    finite = ~ref.isnan()
    if not finite.any():
        return
    rounding = (ref.to(actual.dtype).to(torch.float64) - ref)[finite].abs().max().item()
    tolerance = 2 * rounding + terms * accumulation_eps(actual.dtype) * scale
    error = (got - ref)[finite].abs().max().item()
    assert error <= tolerance, f"max error {error:.3e} exceeds tolerance {tolerance:.3e} ({actual.dtype})"
