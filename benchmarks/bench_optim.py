"""Microbenchmark of the fused MIMO optimizer steps against the strongest stock PyTorch paths, measured in one run.

    python benchmarks/bench_optim.py --quick      # CI-sized: checks every path, times small sizes
    python benchmarks/bench_optim.py              # full preset: 1M, 16M, 64M parameters, two ResNet-18s
    python benchmarks/bench_optim.py --no-compile # without torch.compile of blend + update (slow to compile)
    python benchmarks/bench_optim.py --device cuda
    python benchmarks/bench_optim.py --device cuda --lengths 16777216 --model-width 32 --rounds 1  # one short run

Every path gets the same K = 3 per-objective gradients (g0 of the fusion loss, g1 and g2 of two uni-modal
losses) and the same MIMO weights w. The fused step blends ``g0 + gamma * (w1 g1 + w2 g2)`` inside the update;
the stock paths blend first (eager torch ops, or mimo_ext.blend) and then call torch.optim.AdamW / SGD with
fused=True or foreach=True. Two cases:

- one flat buffer: the operators ``torch.ops.mimo_ext.adamw_step_`` / ``sgd_step_`` called directly;
- a late-fusion model (two ResNet-18 encoders, image and audio, plus a fusion and two uni-modal heads): the whole
  ``MIMOAdamW`` / ``MIMOSGD.step()`` on its per-objective path, its flat gradient buffers filled directly (a real
  ``opt.backward`` is too slow to time here); the stock optimizers get the blended gradient as ``.grad``.

Before timing, two steps of every path from the same state are compared with a float64 reference (parameters and
every state buffer). GB/s counts the bytes the fused step must move: read parameter, state and the K gradients,
write parameter and state (state: 2 buffers for AdamW, 1 for SGD with momentum), for every path alike. The copy
bandwidth of the same run is the reference ceiling (on one thread a kernel that streams several buffers can beat a
one-stream copy, so "of copy" may exceed 1 there). Paths are timed in interleaved rounds (the reported time is the
median of the rounds' medians), so background load spreads over all of them. On a machine shared with other work,
time with --threads 1: with every core asked for, a thread that loses its core stalls the others at each barrier.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from common import BenchmarkRun, benchmark_parser, copy_bandwidth, interleaved_rounds, resnet18_shapes

import mimo_ext
from mimo_ext.optim import MIMOSGD, MIMOAdamW
from mimo_ext.optim.objectives import PendingObjectives

PRESETS = {
    "quick": {"lengths": [1 << 16, 1 << 18], "model_width": 8, "min_run_time": 0.05, "rounds": 1},
    "full": {"lengths": [1 << 20, 1 << 24, 1 << 26], "model_width": 64, "min_run_time": 0.3, "rounds": 3},
}

K = 3  # g0 (fusion loss) and two uni-modal gradients
GAMMA = 0.7
MU = 0.1
UNI_LOSSES = [0.62, 0.55]  # the uni-modal losses whose softmax(f / mu) weights the blend
NUM_CLASSES = 100
CHECK_STEPS = 2  # steps compared with the reference: SGD's momentum buffer starts at step 1, is used from step 2
TOLERANCE = 1e-6  # max |x - reference| <= TOLERANCE * max |reference|, per tensor, in float32

ALGORITHMS = {
    "adamw": {
        "hyper": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
        "states": ("exp_avg", "exp_avg_sq"),
        "stock": torch.optim.AdamW,
        "ours": MIMOAdamW,
        "stock_name": "AdamW",
    },
    "sgd": {
        "hyper": {"lr": 1e-2, "momentum": 0.9, "dampening": 0.0, "weight_decay": 1e-4},
        "states": ("momentum_buffer",),
        "stock": torch.optim.SGD,
        "ours": MIMOSGD,
        "stock_name": "SGD",
    },
}


@dataclass
class Candidate:
    """One way to take an optimizer step: ``step()`` advances it in place, ``result()`` gives its flat parameter
    and state buffers (in the algorithm's state order)."""

    name: str
    step: Callable[[], object]
    result: Callable[[], list[torch.Tensor]]


def late_fusion_shapes(width: int) -> list[tuple[int, ...]]:
    """An audio-visual late-fusion model: an image ResNet-18 (3 channels), an audio-spectrogram ResNet-18 (1
    channel), a fusion head on the concatenated features and one uni-modal head per encoder."""
    features = 8 * width
    heads = [(NUM_CLASSES, 2 * features), (NUM_CLASSES,)] + [(NUM_CLASSES, features), (NUM_CLASSES,)] * 2
    return resnet18_shapes(3, width) + resnet18_shapes(1, width) + heads


def bytes_per_step(n: int, element_size: int, num_states: int) -> int:
    """Bytes the fused step moves: read parameter, state and K gradients; write parameter and state."""
    return n * element_size * (2 * (1 + num_states) + K)


# ---- the float64 reference


@torch.no_grad()
def reference(algorithm: str, param: torch.Tensor, grads: list[torch.Tensor], weights: torch.Tensor, steps: int):
    """Parameter and state after ``steps`` steps of blend + update in float64 (the formulas of the torch.optim
    docs, written out here, independent of both the stock and the fused implementation)."""
    hp = ALGORITHMS[algorithm]["hyper"]
    w = weights.double()
    g = grads[0].double() + GAMMA * (w[0] * grads[1].double() + w[1] * grads[2].double())
    p = param.double()
    lr, wd = hp["lr"], hp["weight_decay"]
    if algorithm == "adamw":
        beta1, beta2 = hp["betas"]
        m, v = torch.zeros_like(p), torch.zeros_like(p)
        for t in range(1, steps + 1):
            p.mul_(1 - lr * wd)
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = v.sqrt().div_((1 - beta2**t) ** 0.5).add_(hp["eps"])
            p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
            del denom
        return [p, m, v]
    buf = None
    for _ in range(steps):
        d = g + wd * p
        buf = d if buf is None else buf.mul_(hp["momentum"]).add_(d, alpha=1 - hp["dampening"])
        p.add_(buf, alpha=-lr)
        del d
    return [p, buf]


def check(path: Candidate, expected: list[torch.Tensor], algorithm: str) -> dict[str, float]:
    """Runs CHECK_STEPS steps of the path and compares its parameter and every state buffer with the reference;
    returns the relative error of each (max |x - ref| / max |ref|), raising when one is beyond TOLERANCE."""
    for _ in range(CHECK_STEPS):
        path.step()
    errors = {}
    for name, got, want in zip(("param", *ALGORITHMS[algorithm]["states"]), path.result(), expected, strict=True):
        scale = max(want.abs().max().item(), torch.finfo(torch.float64).tiny)
        error = errors[name] = (got.double() - want).abs().max().item() / scale
        if not error <= TOLERANCE:
            raise AssertionError(f"{path.name}: {name} differs from the float64 reference by {error:.2e} (relative)")
    return errors


# ---- the paths


def make_blends(weights: torch.Tensor) -> dict[str, Callable[[list[torch.Tensor]], torch.Tensor]]:
    """Stock ways to blend: the eager expression of the issue, and mimo_ext.blend (one pass, no temporaries)."""
    w1, w2 = weights[0], weights[1]

    def eager(g):
        return g[0] + GAMMA * (w1 * g[1] + w2 * g[2])

    def fused_blend(g):
        return mimo_ext.blend(g[0], g[1:], weights, GAMMA)

    return {"eager blend": eager, "mimo_ext.blend": fused_blend}


def stock_paths(
    algorithm: str,
    initial: list[torch.Tensor],
    grads: list[torch.Tensor],
    weights: torch.Tensor,
    compile_too: bool,
) -> list[Candidate]:
    """Blend + torch.optim step, for each blend and each implementation (fused, foreach), over parameters shaped
    like ``initial`` whose .grad are views of the blended flat buffer (one blend over all parameters)."""
    spec = ALGORITHMS[algorithm]
    names = spec["states"]
    numels = [t.numel() for t in initial]
    paths = []

    def make(implementation: str):
        params = [torch.nn.Parameter(t.detach().clone()) for t in initial]
        opt = spec["stock"](params, **spec["hyper"], **{implementation: True})
        return params, opt

    def result_of(params, opt):
        def result():
            flat = [torch.cat([p.detach().reshape(-1) for p in params])]
            return flat + [torch.cat([opt.state[p][s].reshape(-1) for p in params]) for s in names]

        return result

    for blend_name, blend in make_blends(weights).items():
        for implementation in ("fused", "foreach"):
            params, opt = make(implementation)

            def step(params=params, opt=opt, blend=blend):
                for p, g in zip(params, blend(grads).split(numels), strict=True):
                    p.grad = g.view(p.shape)
                opt.step()

            label = f"{blend_name} + {spec['stock_name']}({implementation}=True)"
            paths.append(Candidate(label, step, result_of(params, opt)))
    if compile_too:
        torch._dynamo.reset()  # each case compiles afresh (no recompilation limit, no dynamic shapes)
        params, opt = make("foreach")
        flat_grad = torch.zeros_like(grads[0])
        for p, g in zip(params, flat_grad.split(numels), strict=True):
            p.grad = g.view(p.shape)
        eager = make_blends(weights)["eager blend"]

        @torch.compile
        def compiled_step():
            flat_grad.copy_(eager(grads))
            opt.step()

        label = f"torch.compile(blend + {spec['stock_name']}(foreach=True).step)"
        paths.append(Candidate(label, compiled_step, result_of(params, opt)))
    return paths


def compiled_update_path(
    algorithm: str, initial: torch.Tensor, grads: list[torch.Tensor], weights: torch.Tensor
) -> Candidate:
    """torch.compile of the blend and the update written out over one flat buffer: what inductor makes of the
    whole step when nothing stops it from fusing (torch.optim's step() has a graph break at its start, so compiling
    blend + opt.step() compiles the blend and the update separately)."""
    hp = ALGORITHMS[algorithm]["hyper"]
    param = initial.clone()
    states = [torch.zeros_like(param) for _ in ALGORITHMS[algorithm]["states"]]
    step_count = torch.zeros((), device=param.device)
    lr, wd = hp["lr"], hp["weight_decay"]
    torch._dynamo.reset()

    if algorithm == "adamw":
        beta1, beta2 = hp["betas"]

        @torch.compile
        @torch.no_grad()
        def step():
            m, v = states
            g = grads[0] + GAMMA * (weights[0] * grads[1] + weights[1] * grads[2])
            step_count.add_(1)
            param.mul_(1 - lr * wd)
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = v.sqrt() / (1 - beta2**step_count).sqrt() + hp["eps"]
            param.sub_(lr / (1 - beta1**step_count) * m / denom)
    else:

        @torch.compile
        @torch.no_grad()
        def step():
            (buf,) = states
            g = grads[0] + GAMMA * (weights[0] * grads[1] + weights[1] * grads[2])
            d = g + wd * param
            buf.copy_(torch.where(step_count == 0, d, hp["momentum"] * buf + (1 - hp["dampening"]) * d))
            param.sub_(lr * buf)
            step_count.add_(1)

    return Candidate("torch.compile(blend + update, written out)", step, lambda: [param, *states])


def fused_op_path(algorithm: str, initial: torch.Tensor, grads: list[torch.Tensor], weights: torch.Tensor) -> Candidate:
    """The fused operator on one flat buffer, called directly (what the optimizer calls per bucket)."""
    hp = ALGORITHMS[algorithm]["hyper"]
    param = initial.clone()
    states = [torch.zeros_like(param) for _ in ALGORITHMS[algorithm]["states"]]
    coefficients = torch.cat([torch.ones(1, device=param.device), GAMMA * weights]).float()
    lr = torch.tensor(hp["lr"], device=param.device)
    step_count = torch.zeros((), device=param.device)
    if algorithm == "adamw":
        beta1, beta2 = hp["betas"]
        empty = param.new_empty(0)

        def step():
            torch.ops.mimo_ext.adamw_step_(
                param, states[0], states[1], empty, grads, coefficients, lr, step_count,
                beta1=beta1, beta2=beta2, eps=hp["eps"], weight_decay=hp["weight_decay"], amsgrad=False,
                maximize=False, compute_stats=False,
            )  # fmt: skip
    else:

        def step():
            torch.ops.mimo_ext.sgd_step_(
                param, states[0], grads, coefficients, lr, step_count,
                weight_decay=hp["weight_decay"], momentum=hp["momentum"], dampening=hp["dampening"], nesterov=False,
                maximize=False, compute_stats=False,
            )  # fmt: skip

    return Candidate(f"mimo_ext {algorithm}_step_ (fused, K={K})", step, lambda: [param, *states])


def mimo_optimizer_path(
    algorithm: str, initial: list[torch.Tensor], grads: list[torch.Tensor], uni_losses: torch.Tensor
) -> Candidate:
    """The whole MIMO optimizer's step on its per-objective path: the flat gradient buffers are filled as
    ``opt.backward`` would, and the pending objectives are set as it would leave them."""
    spec = ALGORITHMS[algorithm]
    params = [torch.nn.Parameter(t.detach().clone()) for t in initial]
    opt = spec["ours"](params, **spec["hyper"], gamma=GAMMA, mu=MU)
    (bucket,) = opt._buckets[0]
    for k, g in enumerate(grads):
        bucket.grad_buffer(k).copy_(g)
    pending = PendingObjectives(
        uni_loss_sum=uni_losses, calls=1, reached={id(bucket): [True] * len(params)}, num_objectives=K, loss_scale=None
    )

    def step():
        opt._pending = pending
        opt.step()

    def result():
        return [bucket.param_buffer] + [bucket.state[s] for s in spec["states"]]

    return Candidate(f"{spec['ours'].__name__}.step() (per-objective, K={K})", step, result)


# ---- one case


def run_case(
    case: str,
    kind: str,
    algorithm: str,
    shapes: list[tuple[int, ...]],
    device: str,
    preset: dict,
    args: argparse.Namespace,
) -> dict:
    spec = ALGORITHMS[algorithm]
    numels = [torch.Size(s).numel() for s in shapes]
    n = sum(numels)
    generator = torch.Generator().manual_seed(0)
    initial_flat = torch.randn(n, generator=generator).to(device)
    grads = [torch.randn(n, generator=generator).to(device) for _ in range(K)]
    uni_losses = torch.tensor(UNI_LOSSES, device=device)
    weights = torch.softmax(uni_losses / MU, 0)
    # Keep the blended gradient at least 0.1 away from zero: where the objectives' gradients nearly cancel, AdamW's
    # update (about lr * g / |g|) turns on the float32 rounding of the blend, which differs between the paths and
    # the float64 reference. The timings do not depend on the values.
    blended = grads[0] + GAMMA * (weights[0] * grads[1] + weights[1] * grads[2])
    grads[0].add_(torch.where(blended >= 0, 0.1, -0.1))
    del blended
    initial = [t.view(s) for t, s in zip(initial_flat.split(numels), shapes, strict=True)]

    if kind == "one buffer":
        ours = fused_op_path(algorithm, initial_flat, grads, weights)
    else:
        ours = mimo_optimizer_path(algorithm, initial, grads, uni_losses)
    paths = [ours, *stock_paths(algorithm, initial, grads, weights, args.compile)]
    if args.compile and kind == "one buffer":
        paths.append(compiled_update_path(algorithm, initial_flat, grads, weights))

    expected = reference(algorithm, initial_flat, grads, weights, CHECK_STEPS)
    errors = {p.name: check(p, expected, algorithm) for p in paths}
    del expected

    steps = {p.name: p.step for p in paths}
    seconds, rounds = interleaved_rounds(steps, preset["rounds"], preset["min_run_time"], args.threads)
    moved = bytes_per_step(n, initial_flat.element_size(), len(spec["states"]))
    ours_seconds = seconds[ours.name]
    return {
        "case": case,
        "algorithm": algorithm,
        "n": n,
        "tensors": len(shapes),
        "K": K,
        "bytes_per_step": moved,
        "ours": ours.name,
        "seconds": seconds,
        "seconds_per_round": rounds,
        "GB/s": {name: moved / t / 1e9 for name, t in seconds.items()},
        "speedup_vs": {name: t / ours_seconds for name, t in seconds.items() if name != ours.name},
        "relative_error_after_check": errors,
    }


def print_row(r: dict, ceiling: float) -> None:
    case = f"{r['case']}, {r['algorithm']}, n={r['n']:,}"
    if r["tensors"] > 1:
        case += f" in {r['tensors']} tensors"
    print(f"\n{case}  ({r['bytes_per_step'] / 1e6:.0f} MB moved per fused step)")
    print(f"  {'path':<54}{'ms':>10}{'GB/s':>8}{'of copy':>9}{'ours speedup':>14}")
    for name, t in r["seconds"].items():
        gbps = r["GB/s"][name]
        speedup = f"{r['speedup_vs'][name]:.2f}x" if name in r["speedup_vs"] else "-"
        print(f"  {name:<54}{t * 1e3:>10.2f}{gbps:>8.1f}{gbps / ceiling:>9.2f}{speedup:>14}")


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__, device=True, threads=0, rounds=True)
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time torch.compile of blend + stock update (default: on in the full preset, off in --quick)",
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="flat buffer lengths (default: preset's)")
    parser.add_argument("--model-width", type=int, default=None, help="ResNet-18 base width (default: preset's)")
    args = parser.parse_args(argv)
    bench = BenchmarkRun.start("optim", args, PRESETS, overrides=("rounds", "lengths", "model_width"))
    preset = bench.preset
    if args.compile is None:
        args.compile = not args.quick
    copy_length = max(preset["lengths"])
    copy_before = copy_bandwidth(copy_length, args.device, preset["min_run_time"], args.threads)
    model = late_fusion_shapes(preset["model_width"])
    cases = [("one buffer", "one buffer", [(n,)]) for n in preset["lengths"]]
    cases.append((f"late fusion, 2 ResNet-18 (width {preset['model_width']})", "model", model))
    rows = []
    for case, kind, shapes in cases:
        for algorithm in ALGORITHMS:
            rows.append(run_case(case, kind, algorithm, shapes, args.device, preset, args))
            print(f"checked and timed: {case}, {algorithm}", flush=True)
            gc.collect()
    copy_after = copy_bandwidth(copy_length, args.device, preset["min_run_time"], args.threads)
    ceiling = max(copy_before, copy_after)
    for row in rows:
        row["ours_fraction_of_copy"] = row["GB/s"][row["ours"]] / ceiling
        print_row(row, ceiling)
    print(
        f"\ncopy bandwidth (float32, n={copy_length:,}, {args.threads} thread(s)): {copy_before:.1f} GB/s before the "
        f"cases, {copy_after:.1f} GB/s after; 'of copy' is relative to the larger"
    )
    bench.finish(
        {
            "device": args.device,
            "copy_GB/s": ceiling,
            "copy_GB/s_before": copy_before,
            "copy_GB/s_after": copy_after,
            "K": K,
            "gamma": GAMMA,
            "mu": MU,
            "hyperparameters": {name: spec["hyper"] for name, spec in ALGORITHMS.items()},
            "check": {"steps": CHECK_STEPS, "relative_tolerance": TOLERANCE, "reference": "float64"},
            "results": rows,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
