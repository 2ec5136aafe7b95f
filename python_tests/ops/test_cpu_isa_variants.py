"""The CPU kernels' instruction-set variants (csrc/cpu/cpu_isa.h) give bit-identical results.

Each variant is chosen once per process (MIMO_EXT_CPU_ISA lowers the choice), so every variant runs in a
subprocess that hashes the outputs of blend, of smooth_max and of both fused steps (every dtype, statistics on,
odd length over several parallel chunks); all hashes must agree with the baseline's.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import mimo_ext
from python_tests.references import assert_within_tolerance, reference_tolerance

SCRIPT = r"""
import hashlib, torch, mimo_ext
ops = torch.ops.mimo_ext
torch.manual_seed(0)
outputs = []
for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
    n = 3 * 16384 + 77
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    base = torch.randn(n).to(dtype)
    grads = [torch.randn(n).to(dtype) for _ in range(3)]
    outputs.append(mimo_ext.blend(base, grads, torch.rand(3), 0.7))
    for rows, m in ((30001, 3), (4099, 7), (5, 11), (3, 2049)):  # fixed widths, blocks, tasks; a long row
        losses = (torch.randn(rows, m) * 2).to(dtype)
        losses[::977, 1] = float("nan")
        for mu in (0.1, 1e-60):  # 1e-60: zero in float32, the hard max
            outputs += list(mimo_ext.smooth_max(losses, mu))
    coefficients = torch.tensor([1.0, 0.3, 0.2], dtype=acc)
    lr = torch.tensor(1e-3, dtype=acc)
    for algorithm in ("adamw", "sgd"):
        p, m, v, vmax = (torch.randn(n).to(dtype) for _ in range(4))
        v, vmax = v.abs(), vmax.abs()
        step = torch.zeros((), dtype=torch.float32)
        for _ in range(3):
            if algorithm == "adamw":
                stats = ops.adamw_step_(p, m, v, vmax, grads, coefficients, lr, step, beta1=0.9, beta2=0.999,
                                        eps=1e-8, weight_decay=0.01, amsgrad=True, compute_stats=True)
            else:
                stats = ops.sgd_step_(p, m, grads, coefficients, lr, step, weight_decay=1e-4, momentum=0.9,
                                      dampening=0.1, compute_stats=True)
        outputs += [p, m, v, vmax, stats]
digest = hashlib.sha256()
for t in outputs:
    digest.update(t.contiguous().view(torch.uint8).numpy().tobytes())
print(ops.cpu_isa(), digest.hexdigest())
"""


def run_with(isa: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MIMO_EXT_CPU_ISA=isa)
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)


def test_every_supported_variant_gives_the_baseline_bits():
    results = {}
    for isa in ("baseline", "avx2", "avx512"):
        done = run_with(isa)
        if done.returncode != 0:
            # Only an instruction set this CPU lacks may be refused, and then with a message that says so.
            assert "does not support" in done.stderr, done.stderr[-2000:]
            continue
        chosen, digest = done.stdout.split()[-2:]
        assert chosen == isa
        results[isa] = digest
    assert "baseline" in results
    if len(results) == 1:
        pytest.skip("this CPU has no AVX2: only the baseline variant could run")
    assert len(set(results.values())) == 1, results


def test_unknown_instruction_set_name_is_refused():
    done = run_with("sse9")
    assert done.returncode != 0
    assert "MIMO_EXT_CPU_ISA must be baseline, avx2 or avx512, got 'sse9'" in done.stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("algorithm", ["adamw", "amsgrad", "sgd", "nesterov"])
def test_one_loop_and_blocked_paths_give_the_same_bits(dtype, k, algorithm):
    """Without statistics and with K <= 4 the CPU step blends and updates in one loop over all buffers; with
    statistics (or K > 4) it blends into L1 blocks first. Both must give the same bits (same operations, same
    order), so asking for diagnostics never changes a training run."""
    n = 2 * 16384 + 333
    gen = torch.Generator().manual_seed(k)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    grads = [torch.randn(n, generator=gen).to(dtype) for _ in range(k)]
    coefficients = torch.rand(k, generator=gen, dtype=acc)
    initial = [torch.randn(n, generator=gen).abs().to(dtype) for _ in range(4)]
    results = []
    for stats in (False, True):
        p, s0, s1, s2 = (t.clone() for t in initial)
        step = torch.zeros(())
        for _ in range(3):
            if algorithm in ("adamw", "amsgrad"):
                torch.ops.mimo_ext.adamw_step_(
                    p,
                    s0,
                    s1,
                    s2 if algorithm == "amsgrad" else torch.empty(0, dtype=dtype),
                    grads,
                    coefficients,
                    torch.tensor(1e-2, dtype=acc),
                    step,
                    beta1=0.9,
                    beta2=0.999,
                    eps=1e-8,
                    weight_decay=0.01,
                    amsgrad=algorithm == "amsgrad",
                    maximize=False,
                    compute_stats=stats,
                )
            else:
                torch.ops.mimo_ext.sgd_step_(
                    p,
                    s0,
                    grads,
                    coefficients,
                    torch.tensor(1e-2, dtype=acc),
                    step,
                    weight_decay=1e-4,
                    momentum=0.9,
                    dampening=0.0 if algorithm == "nesterov" else 0.1,
                    nesterov=algorithm == "nesterov",
                    maximize=False,
                    compute_stats=stats,
                )
        results.append([p, s0, s1, s2])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 4, 5, 8, 9, 13])
def test_every_blend_loop_path_matches_float64(dtype, k):
    """The CPU blend reads up to 8 gradients in one loop and more in groups of 4 over L1 blocks: both paths, in
    place and into a new output, against float64 (one rounding at the store), and in place == new output."""
    n = 16384 + 4095  # a whole parallel task and a partial one, and a partial block
    gen = torch.Generator().manual_seed(100 + k)
    base = torch.randn(n, generator=gen).to(dtype)
    grads = [torch.randn(n, generator=gen).to(dtype) for _ in range(k)]
    weights = torch.randn(k, generator=gen)
    out = mimo_ext.blend(base, grads, weights, 0.7)
    expected = base.double() + sum(0.7 * w.double() * g.double() for w, g in zip(weights, grads, strict=True))
    terms = [0.7 * abs(w.item()) * g.double().abs() for w, g in zip(weights, grads, strict=True)]
    magnitude = base.double().abs() + sum(terms)  # k + 1 roundings of the math dtype on it, then one at the store
    tolerance = reference_tolerance(expected, dtype, terms=k + 1, scale=magnitude, elementwise=True)
    assert_within_tolerance(out, expected, tolerance, what=f"K={k}")
    in_place = base.clone()
    mimo_ext.blend_(in_place, grads, weights, 0.7)
    assert torch.equal(in_place, out)
