"""Shared test fixtures: the device every op test runs on.

Every device-dependent test takes the ``device`` fixture and runs once per device: "cpu" always, "cuda" when a
GPU is visible and the library was built with its CUDA kernels, otherwise skipped with the reason shown in the
summary (pytest runs with -ra). ``MIMO_EXT_TEST_DEVICE=cuda`` turns that skip into a failure, so a GPU run
cannot pass by skipping; ``MIMO_EXT_TEST_DEVICE=cpu`` runs the CPU side only.
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


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    if request.param == "cuda":
        reason = cuda_unavailable_reason()
        if reason is not None:
            if REQUESTED_DEVICE == "cuda":
                pytest.fail(f"MIMO_EXT_TEST_DEVICE=cuda but {reason}")
            pytest.skip(f"CUDA test skipped: {reason}")
    return request.param
