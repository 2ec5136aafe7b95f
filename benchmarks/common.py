"""What every benchmark shares: its command line, the machine's description, timing, and the JSON record."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.utils.benchmark as tbench

import mimo_ext  # noqa: F401  (registers torch.ops.mimo_ext)


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
        # The instruction set of mimo_ext's CPU kernels in this process (csrc/cpu/cpu_isa.h).
        "mimo_ext_cpu_isa": torch.ops.mimo_ext.cpu_isa(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    return info


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other work on the machine makes timings noisy), if known."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def median_seconds(fn, min_run_time: float, num_threads: int = 1) -> float:
    """Median time of one call of ``fn``, by torch.utils.benchmark (warm-up, and CUDA synchronisation).

    ``num_threads`` is the intra-op thread count during the measurement (torch.utils.benchmark's default is 1,
    whatever torch.get_num_threads() says)."""
    fn()  # warm-up: first-call allocations, lazy initialisation
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=num_threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def interleaved_rounds(
    fns: dict[Hashable, Callable[[], object]], rounds: int, min_run_time: float, threads: int
) -> tuple[dict, dict]:
    """Times each callable once per round, in turn, for ``rounds`` rounds, so that background load spreads over all
    of them: ``(median of each one's round times, its round times)``, both keyed as ``fns``."""
    per_round: dict = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            per_round[key].append(median_seconds(fn, min_run_time, threads))
    return {key: statistics.median(times) for key, times in per_round.items()}, per_round


def copy_bandwidth(n: int, device: str, min_run_time: float, threads: int) -> float:
    """GB/s of a float32 copy of n elements (read + write): the ceiling for memory-bound steps. The best of three
    medians, as background load only ever slows a copy down."""
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    seconds = min(median_seconds(lambda: dst.copy_(src), min_run_time, threads) for _ in range(3))
    return 2 * src.nbytes / seconds / 1e9


def resnet18_shapes(in_channels: int, width: int = 64) -> list[tuple[int, ...]]:
    """Parameter shapes of a torchvision ResNet-18 without its classifier (11,176,512 parameters for 3 input
    channels): conv1 and bn1, then four stages of two basic blocks (two 3x3 convs, each with a batch norm), the
    first block of stages 2-4 with a strided 1x1 downsampling conv and batch norm."""
    shapes = [(width, in_channels, 7, 7), (width,), (width,)]
    inplanes = width
    for stage in range(4):
        planes = width << stage
        for block in range(2):
            shapes += [(planes, inplanes, 3, 3), (planes,), (planes,), (planes, planes, 3, 3), (planes,), (planes,)]
            if block == 0 and stage > 0:
                shapes += [(planes, inplanes, 1, 1), (planes,), (planes,)]
            inplanes = planes
    return shapes


def benchmark_parser(
    doc: str,
    *,
    device: bool = False,
    threads: int | None = None,
    quick_help: str = "CI-sized preset",
    rounds: bool = False,
    out_help: str = "",
) -> argparse.ArgumentParser:
    """The options every benchmark takes (--quick, --out), with --device where it runs on CUDA too, --threads where
    it times on several (``threads``: the default; 0 for torch's intra-op thread count) and --rounds where it times
    in interleaved rounds (see interleaved_rounds)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    if device:
        parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    if threads == 0:
        help_text = "intra-op threads to time with"
        parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help=help_text)
    elif threads is not None:
        help_text = f"intra-op threads to time with (default {threads})"
        parser.add_argument("--threads", type=int, default=threads, help=help_text)
    if rounds:
        parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default: preset's)")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON file (default: benchmarks/results/...){out_help}")
    return parser


@dataclass
class BenchmarkRun:
    """One run of a benchmark as its command line set it: the size preset (``--quick`` or full, with the options
    that override a preset's entry), the timing threads, the device, the JSON file, and the load average before."""

    preset_name: str
    preset: dict
    threads: int
    device: str
    out: Path
    load_before: list[float] | None

    @classmethod
    def start(
        cls, benchmark: str, args: argparse.Namespace, presets: dict, overrides: Sequence[str] = ()
    ) -> BenchmarkRun:
        """Reads the run's settings from ``args`` (an override left None keeps the preset's value), sets torch's
        intra-op threads to the timing threads where the benchmark has --threads, and reads the load average."""
        preset_name = "quick" if args.quick else "full"
        preset = dict(presets[preset_name])
        for key in overrides:
            if getattr(args, key) is not None:
                preset[key] = getattr(args, key)
        threads = getattr(args, "threads", None)
        if threads is not None:
            torch.set_num_threads(threads)
        device = getattr(args, "device", "cpu")
        out = args.out or Path(__file__).parent / "results" / f"{benchmark}_{device}_{preset_name}.json"
        return cls(preset_name, preset, threads or 1, device, out, load_average())

    def finish(self, fields: dict) -> dict:
        """Reads the load average after, prints it, and writes the JSON record: the header of every benchmark
        (run_header) then ``fields``. Returns the record."""
        load_after = load_average()
        loads = f"load average (1, 5, 15 min) before: {self.load_before}, after: {load_after}"
        print(f"\n{self.threads} thread(s); {loads}")
        record = {**run_header(self.threads, self.load_before, load_after, self.preset_name, self.preset), **fields}
        write_json(self.out, record)
        print(f"wrote {self.out}")
        return record


def run_header(threads: int, load_before, load_after, preset_name: str, preset: dict) -> dict:
    """The fields every benchmark's JSON starts with: the machine, the timing threads, the load around the run and
    the size preset."""
    return {
        "machine": machine(),
        "timing_threads": threads,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "preset": preset_name,
        "preset_settings": preset,
    }


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
