"""Hypothesis strategies shared by the property-based tests: dtypes, magnitudes spanning many orders, odd sizes,
and tensors drawn from a seeded torch.Generator (hypothesis draws the seed and the ranges, so a failing example is
reproduced exactly by its printed arguments)."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Decimal exponents of the magnitudes a tensor of each dtype may hold in these tests: float16 down into its
# subnormals (below 6.1e-5) and up to 1e3 (room for the sums below 65504); the others across most of their range,
# kept far enough from overflow that squares and sums of a few terms stay finite in float32 math.
EXPONENTS = {
    torch.float16: (-7, 3),
    torch.bfloat16: (-30, 30),
    torch.float32: (-30, 30),
    torch.float64: (-100, 100),
}

dtypes = st.sampled_from(DTYPES)
seeds = st.integers(0, 2**31 - 1)


def log_uniform(low: float, high: float) -> st.SearchStrategy[float]:
    """Positive floats whose decimal exponent is uniform in [low, high] (hypothesis shrinks towards 10**low)."""
    return st.floats(low, high).map(lambda e: 10.0**e)


@st.composite
def exponent_range(draw, dtype: torch.dtype, cap: tuple[float, float] | None = None) -> tuple[float, float]:
    """A sub-range [lo, hi] of the dtype's exponents (within ``cap`` when given): narrow or spanning them all."""
    low, high = EXPONENTS[dtype]
    if cap is not None:
        low, high = max(low, cap[0]), min(high, cap[1])
    lo = draw(st.integers(math.ceil(low), math.floor(high)))
    hi = draw(st.integers(lo, math.floor(high)))
    return float(lo), float(hi)


def spread(shape, exponents: tuple[float, float], generator: torch.Generator, *, positive=False) -> torch.Tensor:
    """float64 values of random sign whose magnitudes are log-uniform over 10**exponents (each element its own)."""
    lo, hi = exponents
    magnitude = 10.0 ** (lo + (hi - lo) * torch.rand(shape, generator=generator, dtype=torch.float64))
    if positive:
        return magnitude
    sign = torch.randint(0, 2, shape, generator=generator).to(torch.float64) * 2 - 1
    return sign * magnitude
