"""Determinism: every op of op_db in every dtype (each of its samples, the step ops' statistics included) and every
optimizer configuration of optim_db on both paths (diagnostics included) give bit-identical outputs run after run on
the same device (CPU and CUDA), across CPU thread counts (1, 2 and 3: an uneven split of the chunks), and in a fresh
process. On the CPU the buffers are longer than three CPU chunks (16384 elements each) so that the parallel loops
and the per-chunk sums of the step statistics really split the work; on CUDA they are longer than one pass of the
grid-stride loops (at most one wave of #SMs x 2048 threads, 16 bytes each per pass: about 1.1M floats on a 132-SM
GPU), so that every thread loops and the per-block partial statistics are summed over many blocks."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mimo_ext
from python_tests.op_db import OP_DB
from python_tests.optim_db import OPTIM_DB
from python_tests.optim_helpers import bits, linear_objective, threads

N = (1 << 17) + 7  # eight chunks of the CPU kernels' parallel grain; smooth_max's rows over four of its chunks
N_CUDA = (1 << 22) + 7  # several passes of the CUDA grid-stride loops, with a tail
THREAD_COUNTS = [1, 2, 3]
PATHS = ["objectives", "single"]


def length(device) -> int:
    return N_CUDA if torch.device(device).type == "cuda" else N


def op_case(op, dtype):
    """Every output and written argument of ``op`` on each of its samples of length(device) in ``dtype``."""

    def run(device):
        out = []
        for args in op.sample_inputs(device, dtype, length(device), 1):
            out += [t for t in op.outputs(args, op.op(**args)).values() if isinstance(t, torch.Tensor)]
        return out

    return run


def _randn(*shape, seed, device):
    # Drawn on the device itself (its generator is as reproducible as the CPU's).
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(*shape, generator=generator, device=device)


def optimizer_steps(device, config, path):
    """Three steps on a 50,250-element bucket with diagnostics on; returns parameters, state and diagnostics."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(200, 250).to(device)
    params = list(layer.parameters())
    opt = config.mimo(params, diagnostics=True)
    out = []
    for step in range(3):
        grads = [
            [_randn(*p.shape, seed=100 * step + 10 * k + i, device=device) for i, p in enumerate(params)]
            for k in range(3)
        ]
        objectives = [
            linear_objective(params, g, torch.tensor(0.2 + 0.3 * k, device=device)) for k, g in enumerate(grads)
        ]
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


# Every op of op_db in every dtype it supports, and every optimizer configuration of optim_db on both paths.
CASES = {f"{op.name}-{str(dtype).removeprefix('torch.')}": op_case(op, dtype) for op in OP_DB for dtype in op.dtypes}
CASES |= {
    f"{config.name}-{path}": lambda d, config=config, path=path: optimizer_steps(d, config, path)
    for config in OPTIM_DB
    for path in PATHS
}


def digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((t.dtype, tuple(t.shape), t.device.type)).encode())
        h.update(bits(t).numpy().tobytes())
    return h.hexdigest()


def digests(num_threads: int, device: str = "cpu") -> dict[str, str]:
    with threads(num_threads):
        return {name: digest(case(device)) for name, case in CASES.items()}


def assert_all_bit_identical(name: str, results: list[list[torch.Tensor]], labels: list[str]) -> None:
    first = results[0]
    for label, other in zip(labels[1:], results[1:], strict=True):
        assert len(other) == len(first)
        for i, (a, b) in enumerate(zip(first, other, strict=True)):
            assert a.device == b.device and a.dtype == b.dtype and a.shape == b.shape, (name, i)
            assert torch.equal(bits(a), bits(b)), f"{name}: output {i} differs between {labels[0]} and {label}"


@pytest.mark.parametrize("name", CASES)
def test_bit_identical_run_after_run(device, name):
    # Three runs in the same process on the same device (one thread on the CPU: the thread counts are the next
    # test's). On CUDA also a run on another stream: the kernels must not depend on the stream they are queued on.
    with threads(1):
        results = [CASES[name](device) for _ in range(3)]
        labels = ["run 1", "run 2", "run 3"]
        if device == "cuda":
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                results.append(CASES[name](device))
            torch.cuda.current_stream().wait_stream(stream)
            torch.cuda.synchronize()
            labels.append("a run on a side stream")
    assert_all_bit_identical(name, results, labels)


@pytest.mark.parametrize("name", CASES)
def test_bit_identical_across_thread_counts(name):
    # CPU only: the thread count splits the CPU kernels' work (and the chunks of the step statistics); it means
    # nothing to a CUDA kernel, whose launch shape depends on the GPU alone (run_after_run covers CUDA).
    results = []
    for count in THREAD_COUNTS:
        with threads(count):
            results.append(CASES[name]("cpu"))
    assert_all_bit_identical(name, results, [f"{c} threads" for c in THREAD_COUNTS])


def test_thread_count_is_restored_after_a_failure():
    before = torch.get_num_threads()
    with pytest.raises(ValueError), threads(before + 1):
        mimo_ext.blend(torch.ones(3), [], torch.ones(0), 1.0)
    assert torch.get_num_threads() == before


@pytest.mark.gpu_slow  # a new interpreter, with its own CUDA context
def test_a_fresh_process_gives_the_same_bits(device):
    # Nothing depends on addresses, uninitialised memory or process state: a new interpreter (2 threads) reproduces
    # this one's results (1 thread) bit for bit, on the same device.
    root = Path(__file__).resolve().parents[2]
    code = (
        "import json, sys; sys.path[:0] = [sys.argv[1]]; import python_tests.reliability.test_determinism as t; "
        "print(json.dumps([t.mimo_ext.__file__, t.digests(2, sys.argv[2])]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run(
        [sys.executable, "-c", code, str(root), device],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    module, child_digests = json.loads(child.stdout.strip().splitlines()[-1])
    assert module == mimo_ext.__file__, "the child imported another build of mimo_ext"
    assert child_digests == digests(1, device)


def test_no_cuda_kernel_uses_atomics():
    # On CUDA, reproducibility rests on the same rule as on the CPU: no atomics (their order of arrival varies from
    # run to run); reductions go through per-block partials summed in a fixed order. The CUDA kernels cannot run
    # here, so this reads their sources: a kernel that starts using an atomic must say so and change this test.
    cuda_dir = Path(__file__).resolve().parents[2] / "csrc" / "cuda"
    sources = sorted(cuda_dir.glob("*.cu")) + sorted(cuda_dir.glob("*.cuh"))
    assert sources, f"no CUDA sources found in {cuda_dir}"
    for path in sources:
        code = "\n".join(line.split("//")[0] for line in path.read_text().splitlines())  # comments may mention them
        # Host-side std::atomic (e.g. a per-device cache of launch shapes read by concurrent host threads) orders
        # nothing on the GPU and cannot appear in device code: allowed. Any other atomic (atomicAdd, atomicCAS,
        # cuda::atomic_ref, ...) is not.
        device_code = re.sub(r"#include\s*<atomic>|(?<![:\w])std::atomic\b", "", code)
        assert "atomic" not in device_code.lower(), f"{path.name} uses an atomic operation"
