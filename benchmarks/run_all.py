"""Runs every benchmark with one size preset; each checks its results before timing and writes its JSON.

    python benchmarks/run_all.py --quick --out-dir build/bench     # CI: correctness and that everything runs
    python benchmarks/run_all.py --threads 2                       # full preset, into benchmarks/results/
    python benchmarks/run_all.py --device cuda --only kernels optim

The quick preset asserts no timing: CI machines are shared and their figures are not reported. A benchmark that
fails its check fails the run (exit status 1), after the others have run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
# name -> (script, whether it takes --device, whether it takes --threads)
BENCHMARKS = {
    "kernels": ("bench_kernels.py", True, True),
    "optim": ("bench_optim.py", True, True),
    "subroutine": ("bench_subroutine.py", False, True),
    "step": ("bench_step.py", False, True),
    "whole_step": ("bench_whole_step.py", True, True),
    "scaling": ("scaling.py", True, True),
    "fsdp": ("bench_fsdp.py", False, False),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized preset")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads to time with (default: each's)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None, help="a subset to run")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the JSON files go (default: results/)")
    args = parser.parse_args(argv)
    preset = "quick" if args.quick else "full"
    failed = []
    for name in args.only or BENCHMARKS:
        script, takes_device, takes_threads = BENCHMARKS[name]
        if args.device != "cpu" and not takes_device:
            print(f"== {name}: CPU only, skipped for --device {args.device}", flush=True)
            continue
        command = [sys.executable, str(HERE / script)]
        if args.quick:
            command.append("--quick")
        if takes_device:
            command += ["--device", args.device]
        if takes_threads and args.threads is not None:
            command += ["--threads", str(args.threads)]
        if args.out_dir is not None:
            command += ["--out", str(args.out_dir.resolve() / f"{name}_{args.device}_{preset}.json")]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        start = time.monotonic()
        rc = subprocess.call(command, cwd=HERE)
        print(f"== {name}: exit {rc} after {time.monotonic() - start:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
