"""Shared test fixtures: the device every op test runs on.

Every device-dependent test takes the ``device`` fixture and runs once per device: "cpu" always, "cuda" when a
GPU is visible and the library was built with its CUDA kernels, otherwise skipped with the reason shown in the
summary (pytest runs with -ra). ``MIMO_EXT_TEST_DEVICE=cuda`` turns that skip into a failure, so a GPU run
cannot pass by skipping; ``MIMO_EXT_TEST_DEVICE=cpu`` runs the CPU side only. Tests that mean something on CUDA
only (graph capture, CPU tensors mixed into a CUDA call) take ``cuda_device`` instead, which skips and fails the
same way (both go through ``require_device``).

Tests marked ``large`` (pyproject.toml) are skipped unless ``MIMO_EXT_LARGE_TESTS=1``.
"""

from __future__ import annotations

import os

import pytest
import torch

from mimo_ext._library import built_with_cuda

REQUESTED_DEVICE = os.environ.get("MIMO_EXT_TEST_DEVICE", "")
if REQUESTED_DEVICE not in ("", "cpu", "cuda"):
    raise pytest.UsageError(f"MIMO_EXT_TEST_DEVICE must be 'cpu' or 'cuda', got {REQUESTED_DEVICE!r}")

DEVICES = ["cpu"] if REQUESTED_DEVICE == "cpu" else ["cpu", "cuda"]


def cuda_unavailable_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    if not built_with_cuda():
        return "mimo_ext was built without its CUDA kernels"
    return None


def require_device(name: str) -> str:
    """Returns ``name`` when tests can run on that device; otherwise skips the calling test with the reason (shown by
    -ra), or fails it when MIMO_EXT_TEST_DEVICE asked for that device. Every test that needs CUDA goes through here
    (the ``device`` and ``cuda_device`` fixtures do), so that a GPU run cannot pass by skipping."""
    if name == "cuda":
        if REQUESTED_DEVICE == "cpu":
            pytest.skip("CUDA test skipped: MIMO_EXT_TEST_DEVICE=cpu")
        reason = cuda_unavailable_reason()
        if reason is not None:
            if REQUESTED_DEVICE == "cuda":
                pytest.fail(f"MIMO_EXT_TEST_DEVICE=cuda but {reason}")
            pytest.skip(f"CUDA test skipped: {reason}")
    return name


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return require_device(request.param)


@pytest.fixture
def cuda_device() -> str:
    """For tests that only mean something on CUDA (graph capture, CPU tensors mixed into a CUDA call): "cuda", or a
    visible skip without a GPU (a failure under MIMO_EXT_TEST_DEVICE=cuda)."""
    return require_device("cuda")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests, restored after it: on tiny tensors a second thread only adds
    synchronisation (costly on a loaded 2-core machine). Determinism across thread counts is tested separately
    (reliability/test_determinism.py). Modules take it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---- opt-in tests of very large buffers

LARGE_TESTS = os.environ.get("MIMO_EXT_LARGE_TESTS", "") == "1"


def pytest_runtest_setup(item) -> None:
    # A test marked `large` (registered in pyproject.toml) needs buffers of up to 2**31 elements and more (up to
    # 20 GiB of device memory, minutes on a CPU): skipped, visibly, unless asked for.
    if item.get_closest_marker("large") is not None and not LARGE_TESTS:
        pytest.skip("large test (up to 2**31 + 19 elements a buffer, up to 20 GiB): set MIMO_EXT_LARGE_TESTS=1 to run")
