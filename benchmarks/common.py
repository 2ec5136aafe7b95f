"""What every benchmark shares: the machine's description, timing, and the JSON record."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch
import torch.utils.benchmark as tbench


def machine() -> dict:
    """The machine a result was measured on (it travels with every figure)."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    return info


def median_seconds(fn, min_run_time: float) -> float:
    """Median time of one call of ``fn``, by torch.utils.benchmark (warm-up, and CUDA synchronisation)."""
    fn()  # warm-up: first-call allocations, lazy initialisation
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
