"""Very large buffers, only when asked (marker ``large``; skipped unless MIMO_EXT_LARGE_TESTS=1, see conftest.py):

- blend, blend_ and adamw_step_ on 2**31 + 19 elements of float16 / bfloat16 (beyond int32 indexing: 4 GiB a
  buffer, 16 to 20 GiB a test), checked on samples: the first and last elements, those around index 2**31 (byte
  offset 2**32) and random ones, each against the float64 reference computed on those samples only. The inputs
  repeat a random chunk of a prime length, so the value at any index is known without a second buffer.
- blend, blend_ and both step ops on 2**23 + 3 elements (many passes of the CUDA grid-stride loops) at element
  offsets 0..3 (the vector and the element-wise paths), checked whole against the usual references.

They run on CUDA (about 20 GiB of free device memory). On the CPU they take minutes and tens of GB, so they run
there only with MIMO_EXT_LARGE_TESTS_CPU=1 as well, and only when the machine has the memory free (MemAvailable);
otherwise they are skipped saying so."""

from __future__ import annotations

import os

import pytest
import torch

import mimo_ext
from mimo_ext.optim import adamw_step_reference
from python_tests.ops.calls import (
    ADAMW_OPTIONS,
    SGD_OPTIONS,
    Call,
    check_blend,
    check_step_against_reference,
    op_and_reference,
    random_buffers,
    with_offsets,
)
from python_tests.references import HALF_DTYPES, assert_within_reference_error, blend_reference

pytestmark = pytest.mark.large

LARGE_ON_CPU = os.environ.get("MIMO_EXT_LARGE_TESTS_CPU", "") == "1"

HUGE = (1 << 31) + 19  # beyond int32 element (and, for 2-byte types, uint32 byte) indexing, with an odd tail
PERIOD = 1_000_003  # a prime: no vector width, block or grid stride divides it
SAMPLE_SPAN = 4096


def available_bytes(device: str) -> int:
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.fixture
def large_device(device) -> str:
    """conftest's device, the CPU only with MIMO_EXT_LARGE_TESTS_CPU=1 (minutes and tens of GB there)."""
    if device == "cpu" and not LARGE_ON_CPU:
        pytest.skip("large tests run on CUDA; MIMO_EXT_LARGE_TESTS_CPU=1 runs them on the CPU too (tens of GB)")
    return device


def require_memory(device: str, needed: int) -> None:
    have = available_bytes(device)
    if have < needed * 5 // 4:
        pytest.skip(f"needs about {needed / 2**30:.0f} GiB free on {device}, {have / 2**30:.1f} GiB available")


def tiled(n: int, dtype, device, seed: int, *, positive=False) -> tuple[torch.Tensor, torch.Tensor]:
    """A buffer of n elements on ``device`` repeating a random chunk of PERIOD values (in ``dtype``), and the chunk
    (on the CPU): element i is chunk[i % PERIOD]."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand if positive else torch.randn
    chunk = values(PERIOD, generator=generator, dtype=torch.float64).to(dtype)
    out = torch.empty(n, dtype=dtype, device=device)
    q, r = divmod(n, PERIOD)
    device_chunk = chunk.to(device)
    out[: q * PERIOD].view(q, PERIOD).copy_(device_chunk.expand(q, PERIOD))
    out[q * PERIOD :].copy_(device_chunk[:r])
    return out, chunk


def sample_indices(n: int) -> torch.Tensor:
    """Sorted unique indices: the first and last SAMPLE_SPAN, SAMPLE_SPAN on each side of 2**31 (and of 2**32 when
    n is beyond it), and 65536 random ones."""
    parts = [torch.arange(0, SAMPLE_SPAN), torch.arange(n - SAMPLE_SPAN, n)]
    for boundary in (1 << 31, 1 << 32):
        if n > boundary:
            parts.append(torch.arange(boundary - SAMPLE_SPAN, min(n, boundary + SAMPLE_SPAN)))
    parts.append(torch.randint(0, n, (1 << 16,), generator=torch.Generator().manual_seed(n)))
    return torch.unique(torch.cat(parts))


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_blend_beyond_int32_indexing(large_device, dtype):
    device = large_device
    require_memory(device, 4 * HUGE * 2)  # base, two grads, out
    k, gamma = 2, 0.9
    base, base_chunk = tiled(HUGE, dtype, device, seed=1)
    grads, grad_chunks = zip(*[tiled(HUGE, dtype, device, seed=2 + j) for j in range(k)], strict=True)
    weights = torch.tensor([0.7, -1.3], device=device)
    idx = sample_indices(HUGE)
    period_idx = idx % PERIOD
    idx_device = idx.to(device)

    # Terms summed: base and K products, each of at most 5 (normal samples) times |gamma * w_k|.
    scale = 5.0 * (1 + gamma * weights.abs().sum().item())
    out = mimo_ext.blend(base, list(grads), weights, gamma)
    reference = blend_reference(base_chunk[period_idx], [c[period_idx] for c in grad_chunks], weights, gamma)
    assert_within_reference_error(out[idx_device], reference, scale=scale, terms=2 * k + 2)
    del out

    # In place, base among the grads: base + gamma * (w0 g0 + w1 base).
    mimo_ext.blend_(base, [grads[0], base], weights, gamma)
    sampled = [grad_chunks[0][period_idx], base_chunk[period_idx]]
    reference = blend_reference(base_chunk[period_idx], sampled, weights, gamma)
    assert_within_reference_error(base[idx_device], reference, scale=scale, terms=2 * k + 2)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_adamw_step_beyond_int32_indexing(large_device, dtype):
    device = large_device
    require_memory(device, 5 * HUGE * 2)  # param, exp_avg, exp_avg_sq, two grads
    k, n = 2, HUGE
    hyper = dict(beta1=0.875, beta2=0.9990234375, eps=1e-8, weight_decay=0.01, amsgrad=False, maximize=False)
    param, param_chunk = tiled(n, dtype, device, seed=11)
    exp_avg, exp_avg_chunk = tiled(n, dtype, device, seed=12)
    exp_avg_sq, exp_avg_sq_chunk = tiled(n, dtype, device, seed=13, positive=True)
    grads, grad_chunks = zip(*[tiled(n, dtype, device, seed=14 + j) for j in range(k)], strict=True)
    coefficients = torch.tensor([1.0, 0.6], device=device)
    lr, step = torch.tensor(0.05, device=device), torch.tensor(3.0, device=device)
    grad_scale, found_inf = torch.tensor(4.0, device=device), torch.zeros(1, device=device)
    unused = torch.empty(0, dtype=dtype, device=device)
    stats = torch.ops.mimo_ext.adamw_step_(
        param, exp_avg, exp_avg_sq, unused, list(grads), coefficients, lr, step,
        grad_scale=grad_scale, found_inf=found_inf, **hyper, compute_stats=True,
    )  # fmt: skip
    assert step.item() == 4.0

    # The update is element-wise: the references on the sampled elements alone give those elements' results.
    idx = sample_indices(n)
    p_idx = idx % PERIOD
    idx_device = idx.to(device)

    def sampled_reference(acc):
        convert = (lambda t: t.to(acc)) if acc == torch.float64 else (lambda t: t.clone())
        p, m, v = (convert(c[p_idx]) for c in (param_chunk, exp_avg_chunk, exp_avg_sq_chunk))
        g = [convert(c[p_idx]) for c in grad_chunks]
        c = coefficients.cpu().to(acc if acc == torch.float64 else torch.float32)
        lr_ = lr.cpu().to(acc if acc == torch.float64 else torch.float32)
        scaling = dict(grad_scale=grad_scale.cpu(), found_inf=found_inf.cpu())
        adamw_step_reference(p, m, v, p.new_empty(0), g, c, lr_, torch.tensor(3.0), **scaling, **hyper)
        return p, m, v

    oracle, truth = sampled_reference(dtype), sampled_reference(torch.float64)
    names, buffers = ["param", "exp_avg", "exp_avg_sq"], [param, exp_avg, exp_avg_sq]
    for name, got, o, t in zip(names, buffers, oracle, truth, strict=True):
        assert_within_reference_error(got[idx_device].cpu(), t, o, what=name)

    # The statistics sum all n elements: their float64 truth follows from the chunk, repeated q times plus r values.
    q, r = divmod(n, PERIOD)
    raw = [c.double() for c in grad_chunks]
    c64 = coefficients.double().cpu() / grad_scale.item()
    blended = c64[0] * raw[0] + c64[1] * raw[1]
    blended_magnitude = c64[0].abs() * raw[0].abs() + c64[1].abs() * raw[1].abs()

    def total(x):
        return q * x.sum() + x[:r].sum()

    inv2 = 1.0 / grad_scale.item() ** 2
    truth_stats = torch.stack(
        [total(raw[0] ** 2) * inv2, total(raw[1] ** 2) * inv2, total(raw[0] * raw[1]) * inv2, total(blended**2)]
    )
    magnitudes = torch.stack(
        [
            total(raw[0] ** 2) * inv2,
            total(raw[1] ** 2) * inv2,
            total((raw[0] * raw[1]).abs()) * inv2,
            total(blended_magnitude**2),
        ]
    )
    # references.statistics_tolerance's rule (n + 2K + 4 roundings of the summed magnitudes), evaluated from the
    # periodic chunk: the 2**31-element buffers are never materialised in float64.
    tolerance = magnitudes * (n + 2 * k + 4) * torch.finfo(torch.float32).eps
    assert torch.isfinite(stats).all()
    assert ((stats.cpu().double() - truth_stats).abs() <= tolerance).all(), (stats, truth_stats)


# ---- many passes of the grid, at every alignment

# 8M elements: 8 passes of float32 vectors on a 132-SM GPU, 4 of bfloat16 vectors, 31 of the element-wise path.
MANY_PASSES = (1 << 23) + 3
# Offsets 0..3 elements: aligned, and 2, 4 or 6 bytes (halves), 4, 8 or 12 (float32) off 16 bytes; float64 at 0, 1.
ALIGNMENT_CASES = [(torch.float32, o) for o in range(4)] + [(torch.bfloat16, o) for o in range(4)]
ALIGNMENT_CASES += [(torch.float64, 0), (torch.float64, 1)]


@pytest.mark.parametrize("dtype, offset", ALIGNMENT_CASES, ids=[f"{d}-offset={o}" for d, o in ALIGNMENT_CASES])
def test_blend_many_grid_passes_at_every_alignment(large_device, dtype, offset):
    device = large_device
    require_memory(device, 6 * MANY_PASSES * 8)
    base, grads, weights = random_buffers(MANY_PASSES, 3, dtype, device, offset=offset, seed=offset)
    assert (base.data_ptr() % 16 == 0) == (offset * base.element_size() % 16 == 0)
    before = base.clone()
    check_blend(mimo_ext.blend(base, grads, weights, 0.6), base, grads, weights, 0.6)
    mimo_ext.blend_(base, [grads[0], base, grads[2]], weights, 0.6)
    check_blend(base, before, [grads[0], before, grads[2]], weights, 0.6)


STEP_ALIGNMENT_CASES = [(torch.float32, o) for o in range(4)] + [(torch.bfloat16, 0), (torch.bfloat16, 1)]


@pytest.mark.parametrize(
    "dtype, offset", STEP_ALIGNMENT_CASES, ids=[f"{d}-offset={o}" for d, o in STEP_ALIGNMENT_CASES]
)
@pytest.mark.parametrize("algorithm", ["sgd", "adamw"])
def test_step_op_many_grid_passes_at_every_alignment(large_device, algorithm, dtype, offset):
    device = large_device
    require_memory(device, 10 * MANY_PASSES * 8)
    op, reference = op_and_reference(algorithm)
    hyper, step = (
        SGD_OPTIONS["momentum-dampening-wd-maximize"] if algorithm == "sgd" else ADAMW_OPTIONS["amsgrad-maximize"]
    )
    call = Call(algorithm, hyper, step, MANY_PASSES, 3, dtype, device, 1024.0, 0.0, seed=offset)
    call = with_offsets(call, offset, [offset] * len(call.states), [offset] * 3)
    check_step_against_reference(call, op, reference, algorithm, hyper, step, MANY_PASSES)
