"""mimo_ext.blend and mimo_ext.blend_ against the float64 plain-PyTorch reference."""

from __future__ import annotations

import pytest
import torch

import mimo_ext
from python_tests.ops.calls import check_blend, random_buffers
from python_tests.references import FLOAT_DTYPES, assert_within_reference_error, blend_reference, smooth_max_reference

# 0, below and around the vector widths (4 floats, 8 halves), odd, and large enough to split between threads.
LENGTHS = [0, 1, 3, 7, 8, 9, 1023, 4097, (1 << 17) + 5]
KS = [1, 2, 3, 5, 17]  # 17: more buffers than one CUDA launch takes


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("k", KS)
def test_out_of_place_matches_reference(device, dtype, n, k):
    base, grads, weights = random_buffers(n, k, dtype, device)
    base_before = base.clone()
    out = mimo_ext.blend(base, grads, weights, 0.7)
    assert out.dtype == dtype and out.device == base.device and out.shape == base.shape
    assert out.data_ptr() != base.data_ptr() or n == 0
    assert torch.equal(base, base_before)
    check_blend(out, base, grads, weights, 0.7)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("n", [0, 9, 4097, (1 << 17) + 5])
@pytest.mark.parametrize("k", [1, 3, 17])
def test_in_place_matches_reference(device, dtype, n, k):
    base, grads, weights = random_buffers(n, k, dtype, device)
    before = base.clone()
    result = mimo_ext.blend_(base, grads, weights, 1.3)
    assert result is base
    check_blend(base, before, grads, weights, 1.3)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("offset", [1, 3])
@pytest.mark.parametrize("n", [5, 33, 4099])
def test_unaligned_buffers(device, dtype, offset, n):
    base, grads, weights = random_buffers(n, 3, dtype, device, offset=offset)
    assert base.data_ptr() % 16 != 0
    check_blend(mimo_ext.blend(base, grads, weights, 0.5), base, grads, weights, 0.5)
    before = base.clone()
    mimo_ext.blend_(base, grads, weights, 0.5)
    check_blend(base, before, grads, weights, 0.5)


@pytest.mark.parametrize("k", [2, 17])
def test_in_place_with_base_among_grads(device, k):
    # A grads buffer that is base itself is read before it is written, also when K needs several CUDA passes.
    base, grads, weights = random_buffers(1001, k, torch.float32, device)
    grads[0] = base
    grads[-1] = base
    before = base.clone()
    reference = blend_reference(before, [before if g is base else g for g in grads], weights, 0.9)
    mimo_ext.blend_(base, grads, weights, 0.9)
    assert_within_reference_error(base, reference, scale=10.0, terms=2 * k + 2)


@pytest.mark.parametrize("weight_dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_weights_of_another_float_dtype(device, weight_dtype):
    base, grads, weights = random_buffers(100, 3, torch.float32, device)
    weights = weights.to(weight_dtype)
    check_blend(mimo_ext.blend(base, grads, weights, 1.0), base, grads, weights, 1.0)


def test_non_contiguous_weights(device):
    base, grads, _ = random_buffers(50, 3, torch.float32, device)
    weights = torch.tensor([0.1, 9.0, 0.2, 9.0, 0.7, 9.0], device=device)[::2]
    check_blend(mimo_ext.blend(base, grads, weights, 1.0), base, grads, weights, 1.0)


def test_repeated_calls_are_bit_identical(device):
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


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_opcheck_of_blend_and_blend_(device, dtype):
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


# ---- alignment: views that start 1..3 elements into their storage take the element-wise path


def realigned(t: torch.Tensor, offset: int) -> torch.Tensor:
    """A copy of the 1-D ``t`` in a view that starts ``offset`` elements into a fresh buffer of its device (whose
    storage is allocated 16-byte aligned on every device), so not 16-byte aligned unless offset * itemsize is."""
    storage = torch.empty(t.numel() + offset + 3, dtype=t.dtype, device=t.device)
    view = storage[offset : offset + t.numel()]
    view.copy_(t)
    return view


def is_aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0


# Which buffers start off a 16-byte boundary, by name: "base" and "grads[k]" (K = 3). "mixed": each at its own offset.
ALIGNMENT_PATTERNS = {
    "all": lambda o: {"base": o, "grads": [o, o, o]},
    "base-only": lambda o: {"base": o, "grads": [0, 0, 0]},
    "one-grad": lambda o: {"base": 0, "grads": [0, o, 0]},
    "last-grad": lambda o: {"base": 0, "grads": [0, 0, o]},
    "mixed": lambda o: {"base": o, "grads": [0, (o % 3) + 1, o]},
}


@pytest.mark.parametrize("in_place", [False, True], ids=["blend", "blend_"])
@pytest.mark.parametrize("pattern", ALIGNMENT_PATTERNS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_misaligned_and_mixed_alignment(device, dtype, pattern, in_place):
    # The vector path (16 bytes per thread and step on CUDA) needs every buffer aligned; one misaligned buffer sends
    # the whole call down the element-wise path, which must give the same result. Offsets 1..3 elements (those that
    # are a multiple of 16 bytes, e.g. 2 float64, are aligned and skipped).
    for offset in (1, 2, 3):
        offsets = ALIGNMENT_PATTERNS[pattern](offset)
        if all(o * torch.finfo(dtype).bits // 8 % 16 == 0 for o in [offsets["base"], *offsets["grads"]]):
            continue
        for n in (33, 4099):
            base, grads, weights = random_buffers(n, 3, dtype, device, seed=offset)
            base = realigned(base, offsets["base"])
            grads = [realigned(g, o) for g, o in zip(grads, offsets["grads"], strict=True)]
            assert not all(is_aligned(t) for t in [base, *grads])
            before = base.clone()
            if in_place:
                assert mimo_ext.blend_(base, grads, weights, 0.8) is base
                check_blend(base, before, grads, weights, 0.8)
            else:
                check_blend(mimo_ext.blend(base, grads, weights, 0.8), base, grads, weights, 0.8)
                assert torch.equal(base, before)


# ---- beyond one pass of the grid


# The CUDA kernels loop over the buffer with a grid of at most one wave (#SMs x at most 2048 resident threads, in
# blocks of 256), 16 bytes per thread and pass (4 floats, 8 halves): at most about 1.1M floats per pass on a 132-SM
# GPU, 270K on the element-wise path. 2**22 + 7 elements take several passes and leave an
# odd tail after the last full vector.
BEYOND_ONE_PASS = (1 << 22) + 7


def beyond_one_pass_cases(device):
    """(dtype, offset) cases at that size: on the CPU float32 only (its kernels have no grid; this keeps the run
    short); on CUDA every dtype, aligned, and float32 also through the element-wise path (offset 1)."""
    if device != "cuda":
        return [(torch.float32, 0)]
    return [(dtype, 0) for dtype in FLOAT_DTYPES] + [(torch.float32, 1), (torch.float16, 1)]


@pytest.mark.parametrize("in_place", [False, True], ids=["blend", "blend_"])
def test_beyond_one_grid_pass(device, in_place):
    for dtype, offset in beyond_one_pass_cases(device):
        base, grads, weights = random_buffers(BEYOND_ONE_PASS, 3, dtype, device, offset=offset, seed=7)
        before = base.clone()
        if in_place:
            mimo_ext.blend_(base, grads, weights, 1.1)
            check_blend(base, before, grads, weights, 1.1)
        else:
            out = mimo_ext.blend(base, grads, weights, 1.1)
            check_blend(out, base, grads, weights, 1.1)
            assert torch.equal(base, before)


# ---- many grads: more than one CUDA launch takes (16), in the half types and with base among them


@pytest.mark.parametrize("n", [9, 4099, (1 << 17) + 5])
@pytest.mark.parametrize("in_place", [False, True], ids=["blend", "blend_"])
@pytest.mark.parametrize("k", [17, 33])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_many_grads_in_half_types_match_reference(device, dtype, k, in_place, n):
    # Computed in float32 over all K grads and rounded once to the half type: against the float64 reference
    # rounded once (assert_matches_reference), whatever the number of grads.
    base, grads, weights = random_buffers(n, k, dtype, device, seed=k)
    before = base.clone()
    if in_place:
        mimo_ext.blend_(base, grads, weights, 1.3)
        check_blend(base, before, grads, weights, 1.3)
    else:
        check_blend(mimo_ext.blend(base, grads, weights, 1.3), base, grads, weights, 1.3)


# Values whose float sum depends on the order of the terms, so that a kernel summing in another order (or rounding
# to the storage type between groups of grads) gives other bits. Per element: base and most grads are small
# multiples of SMALL; grads BIG_FIRST and BIG_LAST (weight 1) hold +B and -B, B a multiple of BIG, which cancel
# exactly. Between them the running sum is about B, whose spacing in the math type (float32: 2^-9 at 2^14; float64:
# 2^-38) rounds the small terms added there (SMALL is an eighth of that spacing, the terms up to 14 SMALL), while
# those after are kept exactly: the rounded result depends on which terms come between the big ones, and in what
# order. Every
# product weight * value is exact (weights are powers of two, values have few significant bits), so a fused
# multiply-add and a separate multiply and add give the same bits: the result in the documented order
# (acc = base; acc += (gamma * w_k) * g_k for k = 0..K-1, in float32 or float64; rounded once at the store) is
# fully determined, and computed here with the same float operations on the CPU.
BIG = 2.0**14  # +-1..3 BIG fits float16 (65504)
SMALL = {torch.float64: 2.0**-41}  # others (float32 math): 2^-12
ORDER_WEIGHTS = [0.25, 0.5, 1.0, 2.0]


def order_sensitive_buffers(n, k, dtype, device, base_positions, big_last, seed):
    """base, grads (K buffers; those at base_positions are base itself) and weights as described above, the big
    grads at positions 1 and big_last."""
    assert 1 < big_last < k
    generator = torch.Generator().manual_seed(seed)
    small = SMALL.get(dtype, 2.0**-12)

    def smalls():
        sign = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64) * 2 - 1
        return sign * torch.randint(1, 8, (n,), generator=generator, dtype=torch.float64) * small

    big_first = 1
    big = (torch.randint(0, 2, (n,), generator=generator) * 2 - 1) * torch.randint(1, 4, (n,), generator=generator)
    big = big.to(torch.float64) * BIG
    base = smalls().to(dtype).to(device)
    grads = []
    for j in range(k):
        if j in base_positions:
            assert j not in (big_first, big_last)
            grads.append(base)
        elif j == big_first:
            grads.append(big.to(dtype).to(device))
        elif j == big_last:
            grads.append((-big).to(dtype).to(device))
        else:
            grads.append(smalls().to(dtype).to(device))
    choice = torch.randint(0, len(ORDER_WEIGHTS), (k,), generator=generator)
    weights = torch.tensor([ORDER_WEIGHTS[i] for i in choice], dtype=torch.float64)
    weights[big_first] = weights[big_last] = 1.0
    return base, grads, weights.float().to(device)


def blend_in_given_order(base, grads, weights, gamma) -> torch.Tensor:
    """The documented evaluation, on the CPU: acc = base, then acc += (gamma * w_k) * g_k for k = 0, 1, ..., K-1 in the
    math type (float64 for float64, float32 otherwise), rounded once to base's dtype."""
    acc_dtype = torch.float64 if base.dtype == torch.float64 else torch.float32
    acc = base.detach().cpu().to(acc_dtype)
    coefficients = torch.tensor(gamma, dtype=acc_dtype) * weights.detach().cpu().to(acc_dtype)
    for c, g in zip(coefficients, grads, strict=True):
        acc = acc + c * g.detach().cpu().to(acc_dtype)
    return acc.to(base.dtype)


def base_positions_for(k: int, copies: int, big_last: int) -> list[int]:
    """``copies`` positions among 0..K-1 for base itself, spread evenly before, between and after the big grads."""
    free = [j for j in range(k) if j not in (1, big_last)]
    if not copies:
        return []
    assert copies <= len(free)
    positions = [free[round((i + 0.5) * len(free) / copies - 0.5)] for i in range(copies)]
    assert len(set(positions)) == copies
    return positions


# (K, copies of base among the grads, position of -B). Up to 16 copies of base fit one CUDA launch, 17 and more do
# not; -B at 16 (K = 17) or beyond makes the running sum after the first 16 grads about B, which a store to a half
# type between launches would round.
ORDER_CASES = [
    (3, 0, 2),
    (5, 1, 3),
    (17, 0, 15),
    (17, 0, 16),
    (17, 2, 15),
    (17, 2, 16),
    (33, 0, 31),
    (33, 16, 31),
    (33, 17, 31),
    (33, 20, 31),
    (33, 20, 20),
    (20, 18, 18),
]


@pytest.mark.parametrize("in_place", [False, True], ids=["blend", "blend_"])
@pytest.mark.parametrize(
    "k, copies, big_last", ORDER_CASES, ids=[f"K={k}-base_copies={c}-big_at_1_and_{b}" for k, c, b in ORDER_CASES]
)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_sum_is_in_the_order_given_and_rounded_once(device, dtype, k, copies, big_last, in_place):
    # blend_ accepts base itself among its grads any number of times (each element is read before it is written),
    # and every call sums the grads in the order given, in the math type, rounding once at the store.
    n = 4099
    positions = base_positions_for(k, copies, big_last)
    base, grads, weights = order_sensitive_buffers(n, k, dtype, device, positions, big_last, seed=100 * k + copies)
    before = base.clone()
    given = [before if j in positions else g for j, g in enumerate(grads)]
    expected = blend_in_given_order(before, given, weights, 1.0)
    # The data really is order-sensitive: summing the same terms in another order gives other bits.
    reordered = [given[j] for j in positions] + [g for j, g in enumerate(given) if j not in positions]
    reordered_weights = torch.cat([weights[positions], weights[[j for j in range(k) if j not in positions]]])
    if positions:
        assert not torch.equal(blend_in_given_order(before, reordered, reordered_weights, 1.0), expected)
    assert not torch.equal(blend_in_given_order(before, given[::-1], weights.flip(0), 1.0), expected)

    if in_place:
        assert mimo_ext.blend_(base, grads, weights, 1.0) is base
        out = base
    else:
        out = mimo_ext.blend(base, grads, weights, 1.0)
        assert torch.equal(base, before)
    assert out.dtype == dtype
    mismatch = (out.cpu() != expected).nonzero()
    assert mismatch.numel() == 0, (
        f"{mismatch.numel()} of {n} elements differ from the sum in the given order, rounded once; first at "
        f"{mismatch[0].item()}: got {out[mismatch[0]].item()!r}, expected {expected[mismatch[0]].item()!r}"
    )
    # And, as every blend, within the float64 reference's tolerance (terms of magnitude up to 3 BIG).
    reference = blend_reference(before, given, weights, 1.0)
    assert_within_reference_error(out, reference, scale=2 * 3 * BIG, terms=2 * k + 2)


# ---- CUDA graphs


def test_cuda_graph_capture_of_smooth_max_blend_and_blend_(cuda_device):
    # smooth_max gives the weights on the device; blend and blend_ read them there: the three ops are captured in
    # one graph, replayed with new inputs copied into the static tensors, and compared with the eager calls (the
    # same kernels: bit for bit) and with the float64 references. K = 3 and K = 17 (two launches of the CUDA blend).
    device = cuda_device
    n, mu, gamma = 4099, 0.5, 0.7
    static = {
        "losses3": torch.zeros(3, device=device),
        "losses17": torch.zeros(17, device=device),
        "base": torch.zeros(n, device=device),
        "base_": torch.zeros(n, device=device),
        "grads": [torch.zeros(n, device=device) for _ in range(17)],
    }

    def fill(step):
        generator = torch.Generator().manual_seed(step)
        for name in ("losses3", "losses17", "base", "base_"):
            static[name].copy_(torch.randn(static[name].shape, generator=generator))
        for g in static["grads"]:
            g.copy_(torch.randn(n, generator=generator))

    def ops(s):
        _, w3 = mimo_ext.smooth_max(s["losses3"], mu)
        _, w17 = mimo_ext.smooth_max(s["losses17"], mu)
        out3 = mimo_ext.blend(s["base"], s["grads"][:3], w3, gamma)
        out17 = mimo_ext.blend(s["base"], s["grads"], w17, gamma)
        # In place, with base itself among the grads (the first and the last).
        in_place = [s["base_"], *s["grads"][1:3], s["base_"]]
        mimo_ext.blend_(s["base_"], in_place, torch.cat([w3, w3[:1]]), gamma)
        return w3, w17, out3, out17

    fill(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            ops(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ops(static)
    for step in range(1, 5):
        fill(step)
        inputs = {k: ([g.clone() for g in v] if isinstance(v, list) else v.clone()) for k, v in static.items()}
        graph.replay()
        torch.cuda.synchronize()
        eager = ops(inputs)
        for name, got, want in zip(["w3", "w17", "out3", "out17"], captured, eager, strict=True):
            assert torch.equal(got, want), f"replay {step}: {name} differs from the eager call"
        assert torch.equal(static["base_"], inputs["base_"]), f"replay {step}: blend_ differs from the eager call"
        w3_ref = smooth_max_reference(static["losses3"], mu)[1]
        w17_ref = smooth_max_reference(static["losses17"], mu)[1]
        assert_within_reference_error(captured[0], w3_ref, scale=1.0, terms=8 + 3)
        assert_within_reference_error(captured[1], w17_ref, scale=1.0, terms=8 + 17)
        before = inputs["base"]
        check_blend(captured[2], before, static["grads"][:3], captured[0], gamma)
        check_blend(captured[3], before, static["grads"], captured[1], gamma)


# ---- a CPU tensor mixed into a CUDA call


@pytest.mark.parametrize("in_place", [False, True], ids=["blend", "blend_"])
@pytest.mark.parametrize(
    "moved, match",
    [
        ("weights", r"weights must be on the device of base \(cuda:0\), got cpu"),
        ("grads[0]", r"grads\[0\] must be on the device of base \(cuda:0\), got cpu"),
        ("grads[1]", r"grads\[1\] must be on the device of base \(cuda:0\), got cpu"),
        ("base", r"grads\[0\] must be on the device of base \(cpu\), got cuda:0"),
    ],
)
def test_cpu_tensor_in_a_cuda_call_is_rejected(cuda_device, in_place, moved, match):
    # The weights are read by the kernel on the device (never on the host): a CPU one must be refused, by name,
    # before anything is written, as must a CPU buffer among CUDA ones.
    base, grads, weights = random_buffers(10, 2, torch.float32, cuda_device)
    if moved == "weights":
        weights = weights.cpu()
    elif moved == "base":
        base = base.cpu()
    else:
        k = int(moved[6])
        grads[k] = grads[k].cpu()
    snapshot = [t.clone() for t in [base, *grads, weights]]
    with pytest.raises(ValueError, match=match):
        (mimo_ext.blend_ if in_place else mimo_ext.blend)(base, grads, weights, 1.0)
    for before, after in zip(snapshot, [base, *grads, weights], strict=True):
        assert torch.equal(before, after)
