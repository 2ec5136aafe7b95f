"""Microbenchmarks of the mimo_ext kernels (blend, smooth max) against the strongest stock PyTorch paths, in one run.

    python benchmarks/bench_kernels.py --quick             # CI-sized: checks every result, times small sizes
    python benchmarks/bench_kernels.py                     # full preset (torch.compile included)
    python benchmarks/bench_kernels.py --threads 2 --device cuda

Every candidate is checked against a float64 reference before it is timed. The blend is measured two ways:

- "in place": the result overwrites ``base`` (``mimo_ext.blend_``, what the optimizers' per-objective path does),
  against eager in-place multiply-adds, ``torch._foreach_mul``, and ``torch.compile`` of the in-place expression.
  Nothing is allocated, so this is the kernel's memory traffic: (K + 2) buffers of n elements (read base and the
  K gradients, write base), reported in GB/s and as a fraction of a plain device copy measured in the same run.
- "new output": the result is a new tensor (``mimo_ext.blend``) against the eager expression
  ``base + gamma * (w0 * g0 + ...)``, ``torch.stack(grads).mul(w[:, None]).sum(0)`` and ``torch.compile`` of the
  expression. Above glibc's mmap threshold (32 MB) every new output is a freshly mapped, zero-filled region, so at
  large n every candidate here also pays the page faults: the speedups are what a caller gets, not kernel speed.

Candidates are timed in interleaved rounds (median of the rounds' medians) so background load spreads over all;
``--rounds N`` raises their number, and each round's ratio to torch.compile is recorded (a paired comparison: its
spread over the rounds is the machine's noise on that ratio).
torch.compile is compiled once per (K, dtype, form) with a dynamic length.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
from common import BenchmarkRun, benchmark_parser, copy_bandwidth, interleaved_rounds, median_seconds

import mimo_ext

PRESETS = {
    "quick": {"lengths": [1 << 16, 1 << 18], "ks": [2, 3], "rows": [1, 4096], "min_run_time": 0.02, "rounds": 1},
    "full": {
        "lengths": [1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 26],
        "ks": [2, 3, 4, 6],
        "rows": [1, 1 << 10, 1 << 16, 1 << 20],
        "min_run_time": 0.2,
        "rounds": 2,
    },
}
GAMMA = 0.7
MU = 0.1
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float64: 1e-12}


def _scaled_sum_in_place(base, grads, weights, gamma):
    """The eager in-place expression (also what torch.compile gets): base += gamma * w_k * g_k for each k."""
    coefficients = weights * gamma
    for k, g in enumerate(grads):
        base.addcmul_(g, coefficients[k])
    return base


def _expression(base, grads, weights, gamma):
    acc = weights[0] * grads[0]
    for k in range(1, len(grads)):
        acc = acc + weights[k] * grads[k]
    return base + gamma * acc


_COMPILED: dict[tuple, Callable] = {}


def compiled(form: str, k: int, dtype: torch.dtype, device: str) -> Callable:
    key = (form, k, dtype, device)
    if key not in _COMPILED:
        fn = _scaled_sum_in_place if form == "in place" else _expression
        _COMPILED[key] = torch.compile(fn, dynamic=True)
    return _COMPILED[key]


def blend_candidates(form: str, base, grads, weights, with_compile: bool) -> dict[str, Callable[[], torch.Tensor]]:
    """name -> callable. In place, every candidate overwrites the same ``base`` on each call (its values drift
    over the timing loop, which changes nothing in the time); the check is made on a fresh copy first."""
    k = len(grads)
    if form == "in place":

        def foreach():
            scaled = torch._foreach_mul(grads, list((weights * GAMMA).unbind()))
            for s in scaled:
                base.add_(s)
            return base

        candidates = {
            "mimo_ext.blend_": lambda: mimo_ext.blend_(base, grads, weights, GAMMA),
            "eager addcmul_": lambda: _scaled_sum_in_place(base, grads, weights, GAMMA),
            "eager _foreach_mul": foreach,
        }
        if with_compile:
            fn = compiled(form, k, base.dtype, base.device.type)
            candidates["torch.compile"] = lambda: fn(base, grads, weights, GAMMA)
    else:
        candidates = {
            "mimo_ext.blend": lambda: mimo_ext.blend(base, grads, weights, GAMMA),
            "eager expression": lambda: _expression(base, grads, weights, GAMMA),
            "eager stack": lambda: base + GAMMA * (torch.stack(grads) * weights[:, None].to(base.dtype)).sum(0),
        }
        if with_compile:
            fn = compiled(form, k, base.dtype, base.device.type)
            candidates["torch.compile"] = lambda: fn(base, grads, weights, GAMMA)
    return candidates


def check_blend(name: str, fn: Callable, base: torch.Tensor, original: torch.Tensor, reference: torch.Tensor) -> None:
    base.copy_(original)
    error = (fn().double() - reference).abs().max().item()
    base.copy_(original)
    limit = TOLERANCE[base.dtype] * (1 + reference.abs().max().item())
    if not error <= limit:
        raise AssertionError(f"blend check failed for {name} ({base.dtype}, n={base.numel()}): error {error:.3e}")


def bench_blend(device: str, preset: dict, ceiling: float, with_compile: bool, threads: int) -> list[dict]:
    rows = []
    for form in ("in place", "new output"):
        for dtype in (torch.float32, torch.bfloat16):
            for k in preset["ks"]:
                for n in preset["lengths"]:
                    generator = torch.Generator().manual_seed(n + k)
                    original = torch.randn(n, generator=generator).to(device, dtype)
                    base = original.clone()
                    grads = [torch.randn(n, generator=generator).to(device, dtype) for _ in range(k)]
                    weights = torch.softmax(torch.randn(k, generator=generator), 0).to(device)
                    reference = original.double() + GAMMA * sum(
                        weights[i].double() * grads[i].double() for i in range(k)
                    )
                    candidates = blend_candidates(form, base, grads, weights, with_compile)
                    for name, fn in candidates.items():
                        check_blend(name, fn, base, original, reference)
                    times, rounds = interleaved_rounds(candidates, preset["rounds"], preset["min_run_time"], threads)
                    ours_name = next(name for name in times if name.startswith("mimo_ext"))
                    ours = times[ours_name]
                    # Each round times every candidate back to back, so one round's ratio is a paired comparison;
                    # their spread says how far this machine's noise reaches.
                    compile_ratios = (
                        [c / o for c, o in zip(rounds["torch.compile"], rounds[ours_name], strict=True)]
                        if "torch.compile" in rounds
                        else None
                    )
                    eager = min(t for name, t in times.items() if name.startswith("eager"))
                    gbps = (k + 2) * base.nbytes / ours / 1e9
                    rows.append(
                        {
                            "op": "blend",
                            "form": form,
                            "dtype": str(dtype).removeprefix("torch."),
                            "K": k,
                            "n": n,
                            "seconds": times,
                            "GB/s": gbps,
                            "fraction_of_copy": gbps / ceiling,
                            "speedup_vs_best_eager": eager / ours,
                            "speedup_vs_compile": times["torch.compile"] / ours if "torch.compile" in times else None,
                            "speedup_vs_compile_per_round": compile_ratios,
                            "round_seconds": rounds,
                        }
                    )
                    print(f"blend {form}, {dtype}, K={k}, n={n:,}: checked and timed", flush=True)
    return rows


def bench_smooth_max(device: str, preset: dict, threads: int) -> list[dict]:
    """Forward (value and weights) and forward + backward (d sum(value) / d losses) of the smooth max over the
    last dimension, against ``mu * logsumexp(x / mu)`` with ``softmax(x / mu)`` (the autograd of logsumexp
    gives the backward)."""
    rows = []
    for batch in preset["rows"]:
        for m in (3, 6):
            shape = (m,) if batch == 1 else (batch, m)
            losses = torch.rand(shape, device=device) * 3

            def stock_forward(x=losses):
                return MU * torch.logsumexp(x / MU, -1), torch.softmax(x / MU, -1)

            def ours_forward(x=losses):
                return mimo_ext.smooth_max(x, MU)

            leaf_ours = losses.clone().requires_grad_()
            leaf_stock = losses.clone().requires_grad_()

            def ours_backward(x=leaf_ours):
                x.grad = None
                mimo_ext.smooth_max(x, MU)[0].sum().backward()
                return x.grad

            def stock_backward(x=leaf_stock):
                x.grad = None
                (MU * torch.logsumexp(x / MU, -1)).sum().backward()
                return x.grad

            x64 = losses.double()
            ref_value, ref_weights = MU * torch.logsumexp(x64 / MU, -1), torch.softmax(x64 / MU, -1)
            for got, want in ((ours_forward(), (ref_value, ref_weights)), (stock_forward(), (ref_value, ref_weights))):
                for a, b in zip(got, want, strict=True):
                    torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)
            for fn in (ours_backward, stock_backward):
                torch.testing.assert_close(fn().double(), ref_weights, rtol=1e-5, atol=1e-6)
            times = {}
            for name, fn in (
                ("mimo_ext forward", ours_forward),
                ("stock forward", stock_forward),
                ("mimo_ext forward+backward", ours_backward),
                ("stock forward+backward", stock_backward),
            ):
                times[name] = median_seconds(fn, preset["min_run_time"], threads)
            rows.append(
                {
                    "op": "smooth_max",
                    "shape": list(shape),
                    "seconds": times,
                    "speedup_forward": times["stock forward"] / times["mimo_ext forward"],
                    "speedup_forward_backward": times["stock forward+backward"] / times["mimo_ext forward+backward"],
                }
            )
    return rows


def print_tables(ceiling: float, rows: list[dict]) -> None:
    print(f"\ncopy bandwidth (float32, same run): {ceiling:.1f} GB/s")
    print(
        f"{'blend':<11}{'dtype':<10}{'K':>3}{'n':>11}{'ours us':>10}{'eager us':>10}{'compile us':>12}{'GB/s':>7}"
        f"{'of copy':>8}{'x eager':>8}{'x compile':>10}"
    )
    for r in rows:
        if r["op"] != "blend":
            continue
        t = r["seconds"]
        ours = next(v for name, v in t.items() if name.startswith("mimo_ext"))
        eager = min(v for name, v in t.items() if name.startswith("eager"))
        comp = t.get("torch.compile")
        comp_text = f"{comp * 1e6:>12.1f}" if comp else f"{'-':>12}"
        x_comp = f"{r['speedup_vs_compile']:>10.2f}" if comp else f"{'-':>10}"
        per_round = r.get("speedup_vs_compile_per_round") or []
        spread = f"  rounds {min(per_round):.2f}-{max(per_round):.2f}" if len(per_round) > 1 else ""
        print(
            f"{r['form']:<11}{r['dtype']:<10}{r['K']:>3}{r['n']:>11}{ours * 1e6:>10.1f}{eager * 1e6:>10.1f}{comp_text}"
            f"{r['GB/s']:>7.1f}{r['fraction_of_copy']:>8.2f}{r['speedup_vs_best_eager']:>8.2f}{x_comp}{spread}"
        )
    print(f"\n{'smooth_max':<14}{'fwd us':>9}{'stock':>9}{'x':>7}{'fwd+bwd us':>12}{'stock':>9}{'x':>7}")
    for r in rows:
        if r["op"] != "smooth_max":
            continue
        t = r["seconds"]
        print(
            f"{str(r['shape']):<14}{t['mimo_ext forward'] * 1e6:>9.1f}{t['stock forward'] * 1e6:>9.1f}"
            f"{r['speedup_forward']:>7.2f}{t['mimo_ext forward+backward'] * 1e6:>12.1f}"
            f"{t['stock forward+backward'] * 1e6:>9.1f}{r['speedup_forward_backward']:>7.2f}"
        )


def main(argv=None) -> int:
    quick_help = "CI-sized preset (no torch.compile unless --compile)"
    parser = benchmark_parser(__doc__, device=True, threads=0, rounds=True, quick_help=quick_help)
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time torch.compile too (default: on in the full preset, off in --quick)",
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="blend lengths (default: preset's)")
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="blend K values (default: preset's)")
    args = parser.parse_args(argv)
    bench = BenchmarkRun.start("kernels", args, PRESETS, overrides=("lengths", "ks", "rounds"))
    preset = bench.preset
    with_compile = (not args.quick) if args.compile is None else args.compile
    ceiling = copy_bandwidth(max(preset["lengths"]), args.device, preset["min_run_time"], args.threads)
    rows = bench_blend(args.device, preset, ceiling, with_compile, args.threads)
    rows += bench_smooth_max(args.device, preset, args.threads)
    print_tables(ceiling, rows)
    bench.finish({"device": args.device, "torch_compile": with_compile, "copy_GB/s": ceiling, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
