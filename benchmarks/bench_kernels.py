"""Microbenchmarks of the mimo_ext kernels against the strongest stock PyTorch paths, measured in one run.

    python benchmarks/bench_kernels.py --quick      # CI-sized: checks every result, times small sizes
    python benchmarks/bench_kernels.py              # full preset
    python benchmarks/bench_kernels.py --device cuda

Every candidate is checked against a float64 reference before it is timed. Memory-bound kernels are reported in
GB/s (bytes read plus written, counted once) and as a fraction of a plain device copy measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from common import copy_bandwidth, machine, median_seconds, write_json

import mimo_ext

PRESETS = {
    "quick": {"lengths": [1 << 16, 1 << 18], "ks": [2, 3], "rows": [1, 4096], "min_run_time": 0.05},
    "full": {
        "lengths": [1 << 16, 1 << 20, 1 << 24, 1 << 26],
        "ks": [2, 3, 4, 6],
        "rows": [1, 1 << 16, 1 << 20],
        "min_run_time": 0.5,
    },
}


def blend_candidates(base, grads, weights, gamma):
    """name -> callable returning base + gamma * sum_k w_k g_k; the eager ones are the usual ways to write it."""

    def eager_expression():
        acc = weights[0] * grads[0]
        for k in range(1, len(grads)):
            acc = acc + weights[k] * grads[k]
        return base + gamma * acc

    def eager_addcmul():
        scaled = weights * gamma
        out = base.clone()
        for k in range(len(grads)):
            out.addcmul_(grads[k], scaled[k])
        return out

    def eager_stack():
        return base + gamma * (torch.stack(grads) * weights[:, None]).sum(0)

    return {
        "mimo_ext.blend": lambda: mimo_ext.blend(base, grads, weights, gamma),
        "eager expression": eager_expression,
        "eager addcmul_": eager_addcmul,
        "eager stack": eager_stack,
    }


def bench_blend(device: str, preset: dict, ceiling: float, compile_too: bool) -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for k in preset["ks"]:
            for n in preset["lengths"]:
                base = torch.randn(n, device=device).to(dtype)
                grads = [torch.randn(n, device=device).to(dtype) for _ in range(k)]
                weights = torch.softmax(torch.randn(k, device=device), 0)
                gamma = 0.7
                candidates = blend_candidates(base, grads, weights, gamma)
                if compile_too:
                    compiled = torch.compile(candidates["eager expression"])
                    candidates["torch.compile expression"] = compiled
                reference = base.double() + gamma * sum(weights[i].double() * grads[i].double() for i in range(k))
                bytes_moved = (k + 2) * base.nbytes
                times = {}
                for name, fn in candidates.items():
                    error = (fn().double() - reference).abs().max().item()
                    limit = 1e-5 if dtype == torch.float32 else 3e-2
                    if not error <= limit * (1 + reference.abs().max().item()):
                        raise AssertionError(f"blend check failed for {name}: error {error:.3e}")
                    times[name] = median_seconds(fn, preset["min_run_time"])
                best_stock = min(t for name, t in times.items() if not name.startswith("mimo_ext"))
                ours = times["mimo_ext.blend"]
                gbps = bytes_moved / ours / 1e9
                rows.append(
                    {
                        "op": "blend",
                        "dtype": str(dtype).removeprefix("torch."),
                        "K": k,
                        "n": n,
                        "seconds": times,
                        "GB/s": gbps,
                        "fraction_of_copy": gbps / ceiling,
                        "speedup_vs_best_stock": best_stock / ours,
                    }
                )
    return rows


def bench_smooth_max(device: str, preset: dict) -> list[dict]:
    rows = []
    for batch in preset["rows"]:
        for m in (3, 6):
            losses = torch.randn(batch, m, device=device, dtype=torch.float32)
            if batch == 1:
                losses = losses[0]
            mu = 0.1

            def stock(losses=losses, mu=mu):
                return mu * torch.logsumexp(losses / mu, -1), torch.softmax(losses / mu, -1)

            def ours(losses=losses, mu=mu):
                return mimo_ext.smooth_max(losses, mu)

            ref_value, ref_weights = (t.double() for t in stock())
            value, weights = ours()
            assert torch.allclose(value.double(), ref_value, rtol=1e-5, atol=1e-6)
            assert torch.allclose(weights.double(), ref_weights, rtol=1e-5, atol=1e-6)
            t_ours = median_seconds(ours, preset["min_run_time"])
            t_stock = median_seconds(stock, preset["min_run_time"])
            rows.append(
                {
                    "op": "smooth_max",
                    "shape": list(losses.shape),
                    "seconds": {"mimo_ext.smooth_max": t_ours, "torch logsumexp+softmax": t_stock},
                    "speedup_vs_stock": t_stock / t_ours,
                }
            )
    return rows


def print_table(ceiling: float, rows: list[dict]) -> None:
    print(f"copy bandwidth (float32, same run): {ceiling:.1f} GB/s")
    print(
        f"{'op':<11}{'dtype':<10}{'K':>3}{'n':>11}{'ours us':>10}{'best stock us':>15}{'GB/s':>8}{'of copy':>9}"
        f"{'speedup':>9}"
    )
    for r in rows:
        if r["op"] == "blend":
            stock = min(t for name, t in r["seconds"].items() if not name.startswith("mimo_ext"))
            print(
                f"{'blend':<11}{r['dtype']:<10}{r['K']:>3}{r['n']:>11}{r['seconds']['mimo_ext.blend'] * 1e6:>10.1f}"
                f"{stock * 1e6:>15.1f}{r['GB/s']:>8.1f}{r['fraction_of_copy']:>9.2f}{r['speedup_vs_best_stock']:>9.2f}"
            )
        else:
            print(
                f"{'smooth_max':<11}{'float32':<10}{'':>3}{str(r['shape']):>11}"
                f"{r['seconds']['mimo_ext.smooth_max'] * 1e6:>10.1f}"
                f"{r['seconds']['torch logsumexp+softmax'] * 1e6:>15.1f}{'':>8}{'':>9}{r['speedup_vs_stock']:>9.2f}"
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized preset")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the blend expression")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    preset_name = "quick" if args.quick else "full"
    preset = PRESETS[preset_name]
    ceiling = copy_bandwidth(max(preset["lengths"]), args.device, preset["min_run_time"], torch.get_num_threads())
    rows = bench_blend(args.device, preset, ceiling, args.compile) + bench_smooth_max(args.device, preset)
    print_table(ceiling, rows)
    out = args.out or Path(__file__).parent / "results" / f"kernels_{args.device}_{preset_name}.json"
    write_json(
        out, {"machine": machine(), "preset": preset_name, "device": args.device, "copy_GB/s": ceiling, "results": rows}
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
