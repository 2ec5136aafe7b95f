"""Memory: 10,000 optimizer steps do not grow the process (resident set on the CPU, allocated
device memory on CUDA), and the fused step allocates no temporary of parameter size, on every device.

How the second is measured: on the CPU, torch.profiler with profile_memory=True records every allocation the CPU
allocator makes while it runs (the allocator reports each one to the profiler), so the largest allocation during
opt.step() is an exact figure, not a sample; on CUDA, the caching allocator's own count (torch.cuda.memory_allocated
and max_memory_allocated) gives the peak of device memory in use during the step above its level before. A positive
control shows each measurement sees parameter-size temporaries: the plain-PyTorch reference step, which computes
with whole-buffer temporaries, is measured the same way."""

from __future__ import annotations

import ctypes
import gc
import os

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import mimo_ext
from mimo_ext.optim import adamw_step_reference
from python_tests.optim_db import OPTIMIZERS

STEPS = 10_000
WARMUP = 500
# Resident-set growth allowed over the 10,000 steps, after the warm-up: allocator and interpreter noise (measured
# at 0.1 to 0.2 MiB on this machine). A leak of one small tensor per step (its Python object and storage, a few
# hundred bytes) would add several MiB; one of a parameter-size buffer, 10,000 times the model (8 MiB here).
RSS_SLACK = 2 * 2**20


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


def resident_bytes() -> int:
    """The resident set, after handing the C heap's free pages back to the system: memory freed by earlier tests
    stays resident in glibc's arenas and would otherwise absorb (and hide) a leak's growth."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


try:
    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.malloc_trim  # noqa: B018  (glibc only)
except (OSError, AttributeError):
    _LIBC = None


def memory_in_use(device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    return resident_bytes()


@pytest.mark.gpu_slow  # 10,500 steps, each a few launches
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_ten_thousand_steps_do_not_grow_memory(device, name):
    """Both ways of feeding gradients alternate (per-objective backward, then one backward of mimo_loss), with
    diagnostics on, so every code path of a step runs 5,000 times."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(device)
    opt = OPTIMIZERS[name].mimo(model.parameters(), diagnostics=True)
    inputs = torch.randn(4, 8, device=device)

    def step(i):
        opt.zero_grad()
        y = model(inputs)
        f0, fs = (y * y).mean(), [y[:, 0].mean(), y[:, 1].mean()]
        if i % 2:
            opt.backward(f0, fs)
        else:
            mimo_ext.mimo_loss(f0, fs).backward()
        opt.step()

    for i in range(WARMUP):
        step(i)
    before = memory_in_use(device)
    for i in range(STEPS):
        step(i)
    growth = memory_in_use(device) - before
    print(f"{name} on {device}: memory growth over {STEPS} steps after {WARMUP} warm-up steps: {growth} bytes")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    limit = 0 if device == "cuda" else RSS_SLACK  # the CUDA caching allocator's count is exact
    assert growth <= limit, f"memory grew by {growth / 2**20:.2f} MiB over {STEPS} steps"


def largest_allocation(fn) -> int:
    """The largest single CPU allocation made while ``fn`` runs (bytes)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), default=0)


def peak_extra_cuda_memory(fn) -> int:
    """How far device memory in use rose above its level before ``fn`` while ``fn`` ran (bytes): the CUDA caching
    allocator counts every block it hands out (torch.cuda.max_memory_allocated), so this is exact, and at least the
    size of any single temporary."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def step_temporaries(device: str, fn) -> int:
    """On the CPU the largest single allocation made while ``fn`` runs, on CUDA the peak of the memory in use above
    where it was (every temporary at once: at least the largest)."""
    return peak_extra_cuda_memory(fn) if device == "cuda" else largest_allocation(fn)


def allowed_step_temporaries(device: str, k: int) -> int:
    """What a step may allocate: the coefficients, lr, statistics and step-count copies, a few dozen bytes each. On
    CUDA the allocator rounds each to 512 bytes, and the statistics add per-block partial sums: 2K float32 values
    for each block of a grid of at most one wave (launch_utils.cuh: #SMs x resident blocks of 256 threads per SM),
    25 KiB for K = 3 on a 132-SM GPU, far below the 4 MiB of a parameter-size temporary."""
    if device != "cuda":
        return 1024
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    max_blocks = props.multi_processor_count * (props.max_threads_per_multi_processor // 256)
    return max_blocks * 2 * k * 4 + 64 * 512


N = 1 << 20  # 4 MiB of float32 parameters: any temporary of parameter size is unmistakable


@pytest.mark.parametrize("path", ["objectives", "single"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fused_step_allocates_no_parameter_size_temporary(device, name, path):
    p = torch.nn.Parameter(torch.randn(N, device=device))
    opt = OPTIMIZERS[name].mimo([p], diagnostics=True)
    for _ in range(2):  # the second step is measured: state and gradient buffers exist by then
        opt.zero_grad()
        if path == "objectives":
            opt.backward(p.sum(), [(2 * p).sum(), p.mean()])
        else:
            (3 * p).sum().backward()
        largest = step_temporaries(device, opt.step)
    k = 3 if path == "objectives" else 1
    allowed = allowed_step_temporaries(device, k)
    print(f"{name}, {path} on {device}: step temporaries {largest} bytes (allowed {allowed}), parameters {4 * N} bytes")
    assert largest <= allowed, f"the step allocated {largest} bytes ({4 * N} bytes of parameters)"
    assert 8 * allowed < 4 * N  # the bound is far below a parameter-size temporary


def test_the_measurement_sees_parameter_size_temporaries(device):
    # Positive control: the reference step computes with whole-buffer temporaries, and the measurement reports them.
    param, grad = torch.randn(N, device=device), torch.randn(N, device=device)
    state = [torch.zeros(N, device=device) for _ in range(3)]
    args = (param, *state, [grad], torch.ones(1, device=device), torch.tensor(1e-3, device=device))
    args += (torch.zeros((), device=device),)
    options = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=True, compute_stats=False)
    largest = step_temporaries(device, lambda: adamw_step_reference(*args, **options))
    print(f"reference step on {device}: temporaries {largest} bytes, parameters {4 * N} bytes")
    assert largest >= 4 * N
