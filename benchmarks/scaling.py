"""Scaling of the memory-bound kernels: time against length n and against the number of gradients K, with fitted
exponents, and a figure of time and GB/s against n.

    python benchmarks/scaling.py --quick        # CI-sized: checks and runs every size, small n
    python benchmarks/scaling.py                # full preset: n = 2^16 .. 2^26, K = 2 .. 8 at n = 2^24

Kernels: ``mimo_ext.blend_`` (K gradients into base, in place), the fused steps ``adamw_step_`` and ``sgd_step_``
(momentum) over K = 3 gradients, and a plain copy (the ceiling). Each result is checked against a float64
reference before it is timed. Fits, by least squares on the logarithms over the sizes where the buffers no longer
fit in the last-level cache (n >= 2^22 in the full preset):

- ``time ~ n^a``: a memory-bound kernel has a = 1 (twice the data, twice the time);
- ``time ~ (bytes moved)^b`` against K at fixed n: b = 1 when each extra gradient costs exactly its own bytes
  (the kernel reads K + 2 buffers for the blend, K + 4 for AdamW's step).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from common import BenchmarkRun, benchmark_parser, median_seconds

import mimo_ext

PRESETS = {
    "quick": {
        "lengths": [1 << 12, 1 << 14, 1 << 16],
        "fit_from": 1 << 12,
        "k_length": 1 << 14,
        "ks": [2, 3, 4],
        "min_run_time": 0.02,
    },
    "full": {
        "lengths": [1 << e for e in range(16, 27)],
        "fit_from": 1 << 22,
        "k_length": 1 << 24,
        "ks": [2, 3, 4, 6, 8],
        "min_run_time": 0.2,
    },
}
GAMMA = 0.7


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    """Slope of log y against log x by least squares."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


class Kernels:
    """The buffers of one (n, K) and a callable per kernel; ``check()`` compares each with float64 first."""

    def __init__(self, n: int, k: int, device: str) -> None:
        gen = torch.Generator().manual_seed(n + 31 * k)
        self.n, self.k = n, k
        self.grads = [torch.randn(n, generator=gen).to(device) for _ in range(k)]
        self.weights = torch.softmax(torch.randn(k, generator=gen), 0).to(device)
        self.base = torch.randn(n, generator=gen).to(device)
        self.param = torch.randn(n, generator=gen).to(device)
        self.states = [torch.zeros(n, device=device) for _ in range(2)]
        self.coefficients = torch.cat([torch.ones(1), GAMMA * self.weights[1:].cpu()]).to(device)
        self.lr = torch.tensor(1e-3, device=device)
        self.step = torch.zeros((), device=device)
        self.empty = torch.empty(0, device=device)
        self.dst = torch.empty(n, device=device)

    def blend(self):
        return mimo_ext.blend_(self.base, self.grads, self.weights, GAMMA)

    def adamw(self):
        m, v = self.states
        torch.ops.mimo_ext.adamw_step_(
            self.param,
            m,
            v,
            self.empty,
            self.grads,
            self.coefficients,
            self.lr,
            self.step,
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            weight_decay=0.01,
            amsgrad=False,
            maximize=False,
            compute_stats=False,
        )

    def sgd(self):
        torch.ops.mimo_ext.sgd_step_(
            self.param,
            self.states[0],
            self.grads,
            self.coefficients,
            self.lr,
            self.step,
            weight_decay=0.0,
            momentum=0.9,
            dampening=0.0,
            nesterov=False,
            maximize=False,
            compute_stats=False,
        )

    def copy(self):
        self.dst.copy_(self.base)

    def bytes_moved(self, kernel: str) -> int:
        buffers = {"blend": self.k + 2, "adamw": self.k + 6, "sgd": self.k + 4, "copy": 2}[kernel]
        return buffers * self.n * 4

    def check(self) -> None:
        """One call of each kernel against float64 from the same inputs (then the state is reset)."""
        base = self.base.double()
        expected = base + GAMMA * sum(w * g.double() for w, g in zip(self.weights.double(), self.grads, strict=True))
        torch.testing.assert_close(self.blend().double(), expected, rtol=1e-5, atol=1e-5)
        g = sum(c * g.double() for c, g in zip(self.coefficients.double(), self.grads, strict=True))
        p = self.param.double()
        m, v = 0.1 * g, 0.001 * g * g  # beta1 = 0.9, beta2 = 0.999, from zero state, step 1
        expected_p = p * (1 - 1e-3 * 0.01) - 1e-3 / 0.1 * m / ((v / 0.001).sqrt() + 1e-8)
        self.adamw()
        # The first AdamW step moves p by about lr * g / (|g| + eps): where |g| is tiny, the float32 rounding of
        # g moves that ratio by up to lr, so those few elements are left out of the comparison.
        conditioned = g.abs() > 1e-3
        torch.testing.assert_close(self.param.double()[conditioned], expected_p[conditioned], rtol=1e-5, atol=1e-6)
        self.step.zero_()
        self.states[0].zero_()
        start = self.param.clone()
        self.sgd()  # first step: the momentum buffer starts at g
        torch.testing.assert_close(self.param.double(), start.double() - 1e-3 * g, rtol=1e-5, atol=1e-6)
        self.copy()
        assert torch.equal(self.dst, self.base)


def run(preset: dict, device: str, threads: int) -> dict:
    kernels = ("copy", "blend", "adamw", "sgd")
    by_length = {name: [] for name in kernels}
    for n in preset["lengths"]:
        ks = Kernels(n, 3, device)
        ks.check()
        for name in kernels:
            seconds = median_seconds(getattr(ks, name), preset["min_run_time"], threads)
            by_length[name].append({"n": n, "seconds": seconds, "GB/s": ks.bytes_moved(name) / seconds / 1e9})
        print(f"n = {n:,}: checked and timed", flush=True)
    by_k = {name: [] for name in ("blend", "adamw")}
    for k in preset["ks"]:
        ks = Kernels(preset["k_length"], k, device)
        ks.check()
        for name in by_k:
            seconds = median_seconds(getattr(ks, name), preset["min_run_time"], threads)
            by_k[name].append({"K": k, "seconds": seconds, "bytes": ks.bytes_moved(name)})
        print(f"K = {k}: checked and timed", flush=True)
    fits = {}
    for name, rows in by_length.items():
        big = [r for r in rows if r["n"] >= preset["fit_from"]]
        fits[f"{name}: time ~ n^a"] = fit_exponent([r["n"] for r in big], [r["seconds"] for r in big])
    for name, rows in by_k.items():
        fits[f"{name}: time ~ bytes^b over K"] = fit_exponent([r["bytes"] for r in rows], [r["seconds"] for r in rows])
    return {"by_length": by_length, "by_k": by_k, "fits": fits}


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in result["by_length"].items():
        ns = [r["n"] for r in rows]
        ax_t.loglog(ns, [r["seconds"] * 1e3 for r in rows], marker="o", label=name)
        ax_b.semilogx(ns, [r["GB/s"] for r in rows], marker="o", label=name)
    ax_t.set_xlabel("n (float32 elements)")
    ax_t.set_ylabel("ms per call")
    ax_b.set_xlabel("n (float32 elements)")
    ax_b.set_ylabel("GB/s (bytes read + written)")
    for ax in (ax_t, ax_b):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__, device=True, threads=0, out_help="; the PNG is written beside it")
    args = parser.parse_args(argv)
    bench = BenchmarkRun.start("scaling", args, PRESETS)
    with torch.no_grad():
        result = run(bench.preset, args.device, args.threads)
    print(f"\n{'kernel':<8}" + "".join(f"{r['n']:>11}" for r in result["by_length"]["copy"]) + "   (GB/s)")
    for name, rows in result["by_length"].items():
        print(f"{name:<8}" + "".join(f"{r['GB/s']:>11.1f}" for r in rows))
    for name, value in result["fits"].items():
        print(f"{name:<32} {value:.3f}")
    record = bench.finish(result)
    png = bench.out.with_suffix(".png")
    plot(result, png, f"{record['machine']['cpu']}, {args.threads} thread(s), {args.device}")
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
