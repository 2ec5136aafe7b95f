"""Determinism (issue 7, item 4): every op and both optimizer steps, statistics and diagnostics included, give
bit-identical outputs run after run, across CPU thread counts (1, 2 and 3: an uneven split of the chunks), and in a
fresh process. The buffers are longer than three CPU chunks (16384 elements each) so that the parallel loops and
the per-chunk sums of the step statistics really split the work."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from optim_helpers import bits, linear_objective, threads

import mimo_ext
from mimo_ext.optim import MIMOSGD, MIMOAdamW

N = 3 * 16384 + 7  # four chunks of the CPU step kernel and of the blend's parallel grain
THREAD_COUNTS = [1, 2, 3]


def _randn(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def smooth_max_forward_backward():
    losses = _randn(40000, 5, seed=1).requires_grad_()  # rows split across threads (grain 32768 / M rows)
    value, weights = mimo_ext.smooth_max(losses, 0.3)
    value.backward(_randn(40000, seed=2))
    return [value, weights, losses.grad]


def blend_out_of_place(dtype=torch.float32):
    base = _randn(N, seed=3, dtype=dtype)
    grads = [_randn(N, seed=4 + k, dtype=dtype) for k in range(3)]
    return [mimo_ext.blend(base, grads, torch.tensor([0.2, -1.5, 0.7]), 0.9)]


def blend_in_place():
    base = _randn(N, seed=3)
    grads = [base, _randn(N, seed=5)]  # base among the grads
    return [mimo_ext.blend_(base, grads, torch.tensor([0.5, 2.0]), 1.1)]


def step_op(algorithm, dtype):
    param, state = _randn(N, seed=10, dtype=dtype), [_randn(N, seed=11 + s, dtype=dtype).abs() for s in range(3)]
    grads = [_randn(N, seed=20 + k, dtype=dtype) * 1024 for k in range(3)]
    coefficients, lr, step = torch.tensor([1.0, 0.3, 0.6]), torch.tensor(0.01), torch.tensor(4.0)
    scaling = (torch.tensor(1024.0), torch.zeros(1))
    if algorithm == "sgd":
        stats = torch.ops.mimo_ext.sgd_step_(
            param, state[0], grads, coefficients, lr, step, *scaling, 0.01, 0.9, 0.1, False, True, True
        )
    else:
        stats = torch.ops.mimo_ext.adamw_step_(
            param, *state, grads, coefficients, lr, step, *scaling, 0.9, 0.999, 1e-8, 0.01, True, False, True
        )
    return [stats, param, *state, step]


def optimizer_steps(cls, path):
    """Three steps on a 50,250-element bucket with diagnostics on; returns parameters, state and diagnostics."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(200, 250)
    params = list(layer.parameters())
    opt = cls(params, lr=0.01, diagnostics=True)
    out = []
    for step in range(3):
        grads = [[_randn(*p.shape, seed=100 * step + 10 * k + i) for i, p in enumerate(params)] for k in range(3)]
        objectives = [linear_objective(params, g, torch.tensor(0.2 + 0.3 * k)) for k, g in enumerate(grads)]
        opt.zero_grad()
        if path == "objectives":
            opt.backward(objectives[0], objectives[1:])
        else:
            mimo_ext.mimo_loss(objectives[0], objectives[1:]).backward()
        opt.step()
        d = opt.last_diagnostics
        out += [d.grad_norms, d.cosines, d.grad_norm] + ([d.weights] if d.weights is not None else [])
    for p in params:
        out += [p.detach()] + [v for v in opt.state[p].values() if isinstance(v, torch.Tensor)]
    return out


CASES = {
    "smooth_max+backward": smooth_max_forward_backward,
    "blend-float32": blend_out_of_place,
    "blend-float16": lambda: blend_out_of_place(torch.float16),
    "blend_": blend_in_place,
    "sgd_step_-float32": lambda: step_op("sgd", torch.float32),
    "adamw_step_-float32": lambda: step_op("adamw", torch.float32),
    "adamw_step_-bfloat16": lambda: step_op("adamw", torch.bfloat16),
    "MIMOSGD-objectives": lambda: optimizer_steps(MIMOSGD, "objectives"),
    "MIMOAdamW-objectives": lambda: optimizer_steps(MIMOAdamW, "objectives"),
    "MIMOAdamW-single": lambda: optimizer_steps(MIMOAdamW, "single"),
}


def digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(bits(t).numpy().tobytes())
    return h.hexdigest()


def digests(num_threads: int) -> dict[str, str]:
    with threads(num_threads):
        return {name: digest(case()) for name, case in CASES.items()}


@pytest.mark.parametrize("name", CASES)
def test_bit_identical_across_runs_and_thread_counts(name):
    results = []
    for count in [*THREAD_COUNTS, 1]:  # 1 again: run after run in the same process
        with threads(count):
            results.append(CASES[name]())
    first = results[0]
    for count, other in zip([*THREAD_COUNTS[1:], 1], results[1:], strict=True):
        assert len(other) == len(first)
        for i, (a, b) in enumerate(zip(first, other, strict=True)):
            assert torch.equal(bits(a), bits(b)), f"{name}: output {i} differs between 1 and {count} threads"


def test_thread_count_is_restored_after_a_failure():
    before = torch.get_num_threads()
    with pytest.raises(ValueError), threads(before + 1):
        mimo_ext.blend(torch.ones(3), [], torch.ones(0), 1.0)
    assert torch.get_num_threads() == before


def test_a_fresh_process_gives_the_same_bits():
    # Nothing depends on addresses, uninitialised memory or process state: a new interpreter (2 threads) reproduces
    # this one's results (1 thread) bit for bit.
    here = Path(__file__).parent
    code = (
        "import json, sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import test_determinism as t; "
        "print(json.dumps([t.mimo_ext.__file__, t.digests(2)]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run(
        [sys.executable, "-c", code, str(here), str(here.parent)], capture_output=True, text=True, env=env, check=True
    )
    module, child_digests = json.loads(child.stdout.strip().splitlines()[-1])
    assert module == mimo_ext.__file__, "the child imported another build of mimo_ext"
    assert child_digests == digests(1)


def test_no_cuda_kernel_uses_atomics():
    # On CUDA, reproducibility rests on the same rule as on the CPU: no atomics (their order of arrival varies from
    # run to run); reductions go through per-block partials summed in a fixed order. The CUDA kernels cannot run
    # here, so this reads their sources: a kernel that starts using an atomic must say so and change this test.
    cuda_dir = Path(__file__).parent.parent / "csrc" / "cuda"
    sources = sorted(cuda_dir.glob("*.cu")) + sorted(cuda_dir.glob("*.cuh"))
    assert sources, f"no CUDA sources found in {cuda_dir}"
    for path in sources:
        code = "\n".join(line.split("//")[0] for line in path.read_text().splitlines())  # comments may mention them
        assert "atomic" not in code.lower(), f"{path.name} uses an atomic operation"
