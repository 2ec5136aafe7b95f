"""Mutation check: plants one small bug at a time in the library and requires the test suite to fail on each.

A suite that still passes with a bug planted cannot see that bug. Each mutant below is one textual change to one
source file (a coefficient off by 1e-4, a dropped term, a check removed, a state field mapped wrong, ...); the
script applies it, rebuilds the CPU library when a C++ file changed, runs the tests named by the mutant's globs
with -x, and restores the file. A mutant is "caught" when pytest fails. Run from a checkout that nothing else is
using (it rewrites files and mimo_ext/_C*.so in place):

    MIMO_EXT_FORCE_CPU=1 python .ci/mutants.py            # all mutants
    python .ci/mutants.py --only blend_coefficient         # one

The globs are recursive under python_tests/, so a mutant names the tests that should see it by what they test,
whatever folder holds them. Exit status 1 if any mutant survives. Not part of .ci/run: it rebuilds the CPU
library once per C++ mutant (minutes each on two cores).
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    find: str  # must occur exactly once
    replace: str
    tests: tuple[str, ...]  # globs under python_tests/, recursive


MUTANTS = [
    # The math headers and kernels the CPU build runs (a CUDA-only mutant needs a GPU to be seen).
    Mutant(
        "blend_coefficient",
        "csrc/blend_math.h",
        "return gamma * weight;",
        "return gamma * weight * acc_t(1.0001);",
        ("**/test_*blend*.py",),
    ),
    # The CPU kernel's own pass (smooth_max_math.h's running sum is the CUDA kernel's: no CPU test reaches it).
    Mutant(
        "smooth_max_row_sum",
        "csrc/cpu/smooth_max_cpu.cpp",
        "sum += s.diff[r * m + i];",
        "sum += s.diff[r * m + i] * acc_t(1.0001);",
        ("**/test_*smooth_max*.py",),
    ),
    Mutant(
        "adamw_eps",
        "csrc/optim_math.h",
        "param -= s.step_size * exp_avg / (sqrt_(second) / s.bias_correction2_sqrt + eps);",
        "param -= s.step_size * exp_avg / (sqrt_(second) / s.bias_correction2_sqrt + 2 * eps);",
        ("**/test_*optim*ops*.py", "**/test_*step_ops*.py"),
    ),
    # An argument check removed: the call must then be refused elsewhere or the bad-input suite fails.
    Mutant(
        "blend_gamma_check",
        "csrc/checks.cpp",
        "TORCH_CHECK_VALUE(std::isfinite(gamma), op,",
        "TORCH_CHECK_VALUE(true || std::isfinite(gamma), op,",
        ("**/test_*bad_input*.py",),
    ),
    # The Python layer.
    Mutant(
        "mimo_loss_gamma",
        "mimo_ext/objective.py",
        "return f0 + gamma * value",
        "return f0 + gamma * 1.0001 * value",
        ("**/test_*mimo_loss*.py",),
    ),
    Mutant(
        "masked_mean_denominator",
        "mimo_ext/masking.py",
        "kept.sum() / mask.sum().clamp_min(1).to(losses.dtype)",
        "kept.sum() / max(mask.numel(), 1)",
        ("**/test_*mask*.py", "**/test_*missing*.py"),
    ),
    Mutant(
        "amp_unscale_g0",
        "mimo_ext/optim/amp.py",
        "grad_scale.to(device, dtype).reshape(1).reciprocal()",
        "grad_scale.to(device, dtype).reshape(1)",
        ("test_optim_*.py", "optim/**/test_*.py"),
    ),
    # A class split off by a partial step must get its own count; sharing it advances both.
    Mutant(
        "step_count_split_shares",
        "mimo_ext/optim/step_counts.py",
        "partial[cls] = self._new_class(self.counts[cls].clone())",
        "partial[cls] = self._new_class(self.counts[cls])",
        ("test_optim_*.py", "optim/**/test_*.py"),
    ),
]


def run(cmd: list[str], **kwargs) -> int:
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, **kwargs).returncode


def rebuild() -> None:
    env = dict(os.environ, MIMO_EXT_FORCE_CPU=os.environ.get("MIMO_EXT_FORCE_CPU", "1"))
    cmd = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
    if subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        raise SystemExit("mutants: the build failed")


def test_files(globs: tuple[str, ...]) -> list[str]:
    files = sorted({f for g in globs for f in glob.glob(str(ROOT / "python_tests" / g), recursive=True)})
    if not files:
        raise SystemExit(f"mutants: no test file matches {globs}")
    return [os.path.relpath(f, ROOT) for f in files]


def check(mutant: Mutant) -> bool:
    source = ROOT / mutant.path
    original = source.read_text()
    if original.count(mutant.find) != 1:
        raise SystemExit(f"mutants: {mutant.name}: {mutant.find!r} occurs {original.count(mutant.find)} times")
    native = not mutant.path.endswith(".py")
    source.write_text(original.replace(mutant.find, mutant.replace))
    try:
        if native:
            rebuild()
        start = time.time()
        rc = run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *test_files(mutant.tests)],
            stdout=subprocess.DEVNULL,
        )
        caught = rc == 1  # 1: tests failed; anything else (collection error, interrupted) is not a catch
        print(f"{mutant.name}: {'caught' if caught else f'SURVIVED (pytest exit {rc})'} in {time.time() - start:.0f} s")
        return caught
    finally:
        source.write_text(original)
        if native:
            rebuild()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="names of the mutants to run (default: all)")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    survived = [m.name for m in chosen if not check(m)]
    summary = f"mutants: {len(chosen) - len(survived)} of {len(chosen)} caught"
    print(summary + (f"; survived: {survived}" if survived else ""))
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
