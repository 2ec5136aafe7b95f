"""The whole training step (forward, backward passes, weighting, optimizer step) of MIMO against the baselines.

    python benchmarks/bench_step.py --quick       # CI-sized: a small model, every method runs and is checked
    python benchmarks/bench_step.py               # full preset: a late-fusion MLP with about 4.7M parameters

bench_subroutine.py times the weighting alone on given gradients; here each method also pays for the gradients it
needs: MIMO one backward pass of ``mimo_loss`` (``mimo``) or one per objective blended in the fused optimizer
(``mimo_fused``), MGDA / PCGrad / CAGrad / MMPareto one backward per objective (K = M + 1) plus their weighting,
``joint`` one backward of the fusion loss (the floor). Every method is the library's own
(``mimo_ext.balance.methods``, the same code that ``python -m mimo_ext.balance`` compares), on the same model,
batch and optimizer (AdamW; ``mimo_fused`` on MIMOAdamW). Check before timing: one step of each method from the
same initial model must change the parameters and leave them finite, and ``mimo`` and ``mimo_fused`` must take the
same step (they compute the same direction).
"""

from __future__ import annotations

import copy
import statistics
import sys
import time

import torch
from common import BenchmarkRun, benchmark_parser

from mimo_ext.balance.methods import forward_batch, make_method
from mimo_ext.models import LateFusionMLP
from mimo_ext.optim import MIMOAdamW

PRESETS = {
    "quick": {"input_dims": [40, 24], "hidden": 64, "feature_dim": 32, "batch": 32, "steps": 5, "rounds": 1},
    "full": {"input_dims": [1024, 1024], "hidden": 1536, "feature_dim": 512, "batch": 64, "steps": 30, "rounds": 3},
}
METHOD_NAMES = ["joint", "mimo", "mimo_fused", "mgda", "pcgrad", "cagrad", "mmpareto"]
NUM_CLASSES = 10
LR = 1e-3


def make_optimizer(method: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if method == "mimo_fused":
        return MIMOAdamW(model.parameters(), lr=LR)
    return torch.optim.AdamW(model.parameters(), lr=LR)


class Run:
    """One method's model, optimizer and batch; ``step()`` is one whole training step."""

    def __init__(self, name: str, model: torch.nn.Module, inputs, labels) -> None:
        self.name = name
        self.model = copy.deepcopy(model)
        self.method = make_method(name)
        self.optimizer = make_optimizer(name, self.model)
        self.inputs, self.labels = inputs, labels

    def step(self) -> None:
        out = forward_batch(self.model, self.inputs, self.labels)
        self.optimizer.zero_grad()
        self.method.backward(self.model, out, self.optimizer)
        self.optimizer.step()


def check(runs: list[Run], initial: torch.nn.Module) -> None:
    before = torch.cat([p.detach().flatten() for p in initial.parameters()])
    after = {}
    for run in runs:
        run.step()
        flat = torch.cat([p.detach().flatten() for p in run.model.parameters()])
        if not torch.isfinite(flat).all() or torch.equal(flat, before):
            raise AssertionError(f"{run.name}: the step left non-finite or unchanged parameters")
        after[run.name] = flat
    if "mimo" in after and "mimo_fused" in after:
        # One AdamW step moves each parameter by about lr * g / (|g| + eps): where |g| is near eps the rounding
        # of g (one backward of mimo_loss against per-objective passes blended in the step) moves that ratio, so
        # the parameters are compared to within 5% of the step size lr.
        torch.testing.assert_close(after["mimo_fused"], after["mimo"], rtol=0, atol=0.05 * LR)


def main(argv=None) -> int:
    args = benchmark_parser(__doc__, threads=1).parse_args(argv)
    bench = BenchmarkRun.start("step", args, PRESETS)
    preset = bench.preset
    torch.manual_seed(0)
    model = LateFusionMLP(preset["input_dims"], NUM_CLASSES, hidden=preset["hidden"], feature_dim=preset["feature_dim"])
    n = sum(p.numel() for p in model.parameters())
    inputs = [torch.randn(preset["batch"], d) for d in preset["input_dims"]]
    labels = torch.randint(0, NUM_CLASSES, (preset["batch"],))
    check([Run(name, model, inputs, labels) for name in METHOD_NAMES], model)
    runs = [Run(name, model, inputs, labels) for name in METHOD_NAMES]
    for run in runs:
        run.step()  # warm-up: optimizer state, first-call allocations
    rounds: dict[str, list[float]] = {run.name: [] for run in runs}
    for _ in range(preset["rounds"]):  # interleaved rounds: background load spreads over every method
        for run in runs:
            times = []
            for _ in range(preset["steps"]):
                start = time.perf_counter()
                run.step()
                times.append(time.perf_counter() - start)
            rounds[run.name].append(statistics.median(times))
    seconds = {name: statistics.median(ts) for name, ts in rounds.items()}
    print(f"\nlate-fusion MLP, {n:,} parameters, batch {preset['batch']}, {args.threads} thread(s)")
    print(f"{'method':<12}{'ms/step':>9}{'x joint':>9}{'x mimo':>8}")
    for name, t in seconds.items():
        print(f"{name:<12}{t * 1e3:>9.2f}{t / seconds['joint']:>9.2f}{t / seconds['mimo']:>8.2f}")
    bench.finish(
        {
            "parameters": n,
            "seconds_per_step": seconds,
            "seconds_per_round": rounds,
            "ratio_to_mimo": {name: t / seconds["mimo"] for name, t in seconds.items()},
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
