"""mimo_ext.blend and mimo_ext.blend_ against the float64 plain-PyTorch reference."""

from __future__ import annotations

import pytest
import torch
from reference import BUFFER_DTYPES, assert_matches_reference, blend_reference

import mimo_ext

# 0, below and around the vector widths (4 floats, 8 halves), odd, and large enough to split between threads.
LENGTHS = [0, 1, 3, 7, 8, 9, 1023, 4097, (1 << 17) + 5]
KS = [1, 2, 3, 5, 17]  # 17: more buffers than one CUDA launch takes


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


def check(out, base, grads, weights, gamma):
    reference = blend_reference(base, grads, weights, gamma)
    # Terms summed: base and K products of magnitude about |g| * |gamma * w_k|, each at most a few units.
    scale = 5.0 * (1 + abs(gamma))
    assert_matches_reference(out, reference, scale=scale, terms=2 * len(grads) + 2)


@pytest.mark.parametrize("dtype", BUFFER_DTYPES, ids=str)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("k", KS)
def test_out_of_place_matches_reference(device, dtype, n, k):
    base, grads, weights = random_buffers(n, k, dtype, device)
    base_before = base.clone()
    out = mimo_ext.blend(base, grads, weights, 0.7)
    assert out.dtype == dtype and out.device == base.device and out.shape == base.shape
    assert out.data_ptr() != base.data_ptr() or n == 0
    assert torch.equal(base, base_before)
    check(out, base, grads, weights, 0.7)


@pytest.mark.parametrize("dtype", BUFFER_DTYPES, ids=str)
@pytest.mark.parametrize("n", [0, 9, 4097, (1 << 17) + 5])
@pytest.mark.parametrize("k", [1, 3, 17])
def test_in_place_matches_reference(device, dtype, n, k):
    base, grads, weights = random_buffers(n, k, dtype, device)
    before = base.clone()
    result = mimo_ext.blend_(base, grads, weights, 1.3)
    assert result is base
    check(base, before, grads, weights, 1.3)


@pytest.mark.parametrize("dtype", BUFFER_DTYPES, ids=str)
@pytest.mark.parametrize("offset", [1, 3])
@pytest.mark.parametrize("n", [5, 33, 4099])
def test_unaligned_buffers(device, dtype, offset, n):
    base, grads, weights = random_buffers(n, 3, dtype, device, offset=offset)
    assert base.data_ptr() % 16 != 0
    check(mimo_ext.blend(base, grads, weights, 0.5), base, grads, weights, 0.5)
    before = base.clone()
    mimo_ext.blend_(base, grads, weights, 0.5)
    check(base, before, grads, weights, 0.5)


@pytest.mark.parametrize("k", [2, 17])
def test_in_place_with_base_among_grads(device, k):
    # A grads buffer that is base itself is read before it is written, also when K needs several CUDA passes.
    base, grads, weights = random_buffers(1001, k, torch.float32, device)
    grads[0] = base
    grads[-1] = base
    before = base.clone()
    reference = blend_reference(before, [before if g is base else g for g in grads], weights, 0.9)
    mimo_ext.blend_(base, grads, weights, 0.9)
    assert_matches_reference(base, reference, scale=10.0, terms=2 * k + 2)


@pytest.mark.parametrize("weight_dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_weights_of_another_float_dtype(device, weight_dtype):
    base, grads, weights = random_buffers(100, 3, torch.float32, device)
    weights = weights.to(weight_dtype)
    check(mimo_ext.blend(base, grads, weights, 1.0), base, grads, weights, 1.0)


def test_non_contiguous_weights(device):
    base, grads, _ = random_buffers(50, 3, torch.float32, device)
    weights = torch.tensor([0.1, 9.0, 0.2, 9.0, 0.7, 9.0], device=device)[::2]
    check(mimo_ext.blend(base, grads, weights, 1.0), base, grads, weights, 1.0)


def test_deterministic(device):
    base, grads, weights = random_buffers((1 << 17) + 5, 3, torch.float32, device)
    first = mimo_ext.blend(base, grads, weights, 0.3)
    for _ in range(3):
        assert torch.equal(mimo_ext.blend(base, grads, weights, 0.3), first)


def test_half_overflow_saturates_to_inf(device):
    # Computed in float32 and rounded once: a sum beyond float16's range becomes Inf, as a float16 add would.
    base = torch.full((9,), 60000.0, dtype=torch.float16, device=device)
    grads = [torch.full((9,), 60000.0, dtype=torch.float16, device=device)]
    out = mimo_ext.blend(base, grads, torch.ones(1, device=device), 1.0)
    assert torch.isinf(out).all()


@pytest.mark.parametrize("dtype", BUFFER_DTYPES, ids=str)
def test_opcheck(device, dtype):
    base, grads, weights = random_buffers(37, 3, dtype, device)
    torch.library.opcheck(torch.ops.mimo_ext.blend.default, (base, grads, weights, 0.5))
    torch.library.opcheck(torch.ops.mimo_ext.blend_.default, (base.clone(), grads, weights, 0.5))


OTHER_DEVICE = "meta"  # a device unlike the test's, that needs no GPU

# (id, error type, message fragment, builder): each builder turns fresh (base, grads, weights), 10 elements and
# K = 2, into the bad arguments of one call.
BAD_INPUTS = [
    ("gamma-nan", ValueError, "gamma must be finite", lambda b, g, w: (b, g, w, float("nan"))),
    ("gamma-inf", ValueError, "gamma must be finite", lambda b, g, w: (b, g, w, float("inf"))),
    ("gamma-tensor", TypeError, "gamma must be a Python float", lambda b, g, w: (b, g, w, torch.tensor(1.0))),
    ("weights-short", ValueError, r"one entry per grads buffer \(2\)", lambda b, g, w: (b, g, w[:1], 1.0)),
    ("weights-2d", ValueError, "weights must be 1-D", lambda b, g, w: (b, g, w.view(1, 2), 1.0)),
    ("weights-int", TypeError, "weights must be a floating-point", lambda b, g, w: (b, g, w.long(), 1.0)),
    ("weights-device", ValueError, "weights must be on the device", lambda b, g, w: (b, g, w.to(OTHER_DEVICE), 1.0)),
    ("grads-empty", ValueError, "grads must hold at least one", lambda b, g, w: (b, [], w[:0], 1.0)),
    ("grads-tensor", TypeError, "grads must be a sequence of tensors", lambda b, g, w: (b, g[0], w, 1.0)),
    ("grads-item", TypeError, r"grads\[1\] must be a tensor", lambda b, g, w: (b, [g[0], 1.0], w, 1.0)),
    (
        "grads-length",
        ValueError,
        r"grads\[1\] must have the length of base \(10\), got 9",
        lambda b, g, w: (b, [g[0], g[1][:9]], w, 1.0),
    ),
    (
        "grads-dtype",
        TypeError,
        r"grads\[0\] must have the dtype of base",
        lambda b, g, w: (b, [g[0].double(), g[1]], w, 1.0),
    ),
    (
        "grads-device",
        ValueError,
        r"grads\[1\] must be on the device of base",
        lambda b, g, w: (b, [g[0], g[1].to(OTHER_DEVICE)], w, 1.0),
    ),
    ("grads-2d", ValueError, r"grads\[0\] must be a 1-D buffer", lambda b, g, w: (b, [g[0].view(2, 5), g[1]], w, 1.0)),
    (
        "grads-strided",
        ValueError,
        r"grads\[1\] must be contiguous",
        lambda b, g, w: (b, [g[0], torch.cat([g[1], g[1]])[::2]], w, 1.0),
    ),
    (
        "base-int",
        TypeError,
        "base must be float32, float64, float16 or bfloat16",
        lambda b, g, w: (b.int(), [x.int() for x in g], w, 1.0),
    ),
    ("base-2d", ValueError, "base must be a 1-D buffer", lambda b, g, w: (b.view(2, 5), g, w, 1.0)),
    ("base-strided", ValueError, "base must be contiguous", lambda b, g, w: (torch.cat([b, b])[::2], g, w, 1.0)),
]


@pytest.mark.parametrize("in_place", [False, True], ids=["blend", "blend_"])
@pytest.mark.parametrize("error, match, build", [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS])
def test_bad_input_is_rejected_before_any_write(device, in_place, error, match, build):
    base, grads, weights = random_buffers(10, 2, torch.float32, device)
    args = build(base, grads, weights)
    snapshot = [t.clone() for t in [base, *grads, weights]]
    with pytest.raises(error, match=match):
        (mimo_ext.blend_ if in_place else mimo_ext.blend)(*args)
    for before, after in zip(snapshot, [base, *grads, weights], strict=True):
        assert torch.equal(before, after)


def test_partial_overlap_in_place_is_rejected(device):
    storage = torch.randn(20, device=device)
    base, shifted = storage[:10], storage[1:11]
    before = storage.clone()
    with pytest.raises(ValueError, match=r"grads\[0\] partially overlaps base"):
        mimo_ext.blend_(base, [shifted], torch.ones(1, device=device), 1.0)
    assert torch.equal(storage, before)
