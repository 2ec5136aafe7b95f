"""Step time of MIMOAdamW against torch.optim.AdamW on an FSDP2-sharded late-fusion model, 2 gloo ranks (CPU).

    python benchmarks/bench_fsdp.py --quick     # CI-sized: checks the step against torch's, times a small model
    python benchmarks/bench_fsdp.py             # full preset: 3.7M parameters, sharded over 2 ranks

The model is a late-fusion MLP (two encoders of width ``width``, the uni-modal heads and the fusion head) whose
encoders and root are ``fully_shard``-ed over the 2 ranks, so every parameter is a DTensor and each rank holds
half of it. The gradients come from one backward of ``mimo_loss`` (FSDP2 reduce-scatters them), and only
``opt.step()`` is timed, on each rank, interleaved between the optimizers in rounds (the median of the rounds'
medians is reported; the slower rank's figure). torch's AdamW is timed with ``fused=True`` where it accepts the
sharded parameters on this device, and with ``foreach=True`` (its default there) in any case.

Before timing, two steps of each optimizer from the same state are compared with torch.optim.AdamW
(``foreach=False``) on every rank's shards: a mismatch beyond float32 rounding fails the run.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import BenchmarkRun, benchmark_parser

PRESETS = {
    "quick": {"width": 64, "input_dims": [64, 32], "min_run_time": 0.05, "rounds": 1},
    "full": {"width": 1024, "input_dims": [1024, 512], "min_run_time": 0.5, "rounds": 3},
}
WORLD = 2
LR = 1e-3
TOLERANCE = 1e-6  # max |x - reference| <= TOLERANCE * max |reference| per parameter, float32


def sharded_model(preset: dict):
    from torch.distributed.fsdp import fully_shard

    from mimo_ext.models import LateFusion, mlp_encoder

    torch.manual_seed(0)
    width = preset["width"]
    net = LateFusion([mlp_encoder(d, width, width) for d in preset["input_dims"]], width, 10)
    for encoder in net.encoders:
        fully_shard(encoder)
    fully_shard(net)
    return net


def fill_gradients(net, preset: dict, rank: int) -> None:
    import mimo_ext

    g = torch.Generator().manual_seed(rank)
    xs = [torch.randn(32, d, generator=g) for d in preset["input_dims"]]
    y = torch.randint(0, 10, (32,), generator=g)
    fused, uni = net(xs)
    f = torch.nn.functional.cross_entropy
    net.zero_grad()
    mimo_ext.mimo_loss(f(fused, y), [f(u, y) for u in uni]).backward()


def optimizers(net) -> dict:
    from mimo_ext.optim import MIMOAdamW

    made = {
        "MIMOAdamW.step()": lambda: MIMOAdamW(net.parameters(), lr=LR),
        "torch AdamW(foreach=True)": lambda: torch.optim.AdamW(net.parameters(), lr=LR, foreach=True),
    }
    try:
        probe = torch.optim.AdamW(net.parameters(), lr=LR, fused=True)
        probe.step()  # all grads are set: raises here when fused does not take these parameters
        made["torch AdamW(fused=True)"] = lambda: torch.optim.AdamW(net.parameters(), lr=LR, fused=True)
    except (RuntimeError, TypeError, NotImplementedError) as error:
        print(f"rank {dist.get_rank()}: torch AdamW(fused=True) refused the sharded parameters: {error}")
    return made


def check(preset: dict, rank: int) -> float:
    """Two steps of MIMOAdamW against torch.optim.AdamW(foreach=False) from the same state; the worst error."""
    runs = []
    for kind in ("mimo", "reference"):
        net = sharded_model(preset)
        fill_gradients(net, preset, rank)
        if kind == "mimo":
            from mimo_ext.optim import MIMOAdamW

            opt = MIMOAdamW(net.parameters(), lr=LR)
        else:
            opt = torch.optim.AdamW(net.parameters(), lr=LR, foreach=False)
        opt.step()
        opt.step()
        runs.append([p.to_local().detach().clone() for p in net.parameters()])
    worst = 0.0
    for ours, ref in zip(*runs, strict=True):
        if ref.numel():
            worst = max(worst, ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item())
    return worst


def time_steps(preset: dict, rank: int) -> tuple[dict, int]:
    net = sharded_model(preset)
    fill_gradients(net, preset, rank)
    made = optimizers(net)
    opts = {name: make() for name, make in made.items()}
    samples: dict[str, list[float]] = {name: [] for name in opts}
    for _ in range(preset["rounds"]):
        for name, opt in opts.items():
            opt.step()  # warm-up (state allocation on the first round)
            times = []
            deadline = time.perf_counter() + preset["min_run_time"]
            while time.perf_counter() < deadline or len(times) < 5:
                start = time.perf_counter()
                opt.step()
                times.append(time.perf_counter() - start)
            samples[name].append(statistics.median(times))
    numel = sum(p.to_local().numel() for p in net.parameters())
    return {name: statistics.median(values) for name, values in samples.items()}, numel


def worker(rank: int, preset_name: str, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        preset = PRESETS[preset_name]
        error = check(preset, rank)
        medians, numel = time_steps(preset, rank)
        gathered = [None] * WORLD
        dist.all_gather_object(gathered, {"error": error, "medians": medians, "numel": numel})
        if rank == 0:
            torch.save(gathered, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Done and saved: leave without the interpreter's teardown, where an FSDP2 rank on gloo can abort ("terminate
    # called without an active exception") under load after its work is complete.
    os._exit(0)


def main(argv=None) -> int:
    args = benchmark_parser(__doc__).parse_args(argv)
    bench = BenchmarkRun.start("fsdp", args, PRESETS)
    with tempfile.TemporaryDirectory() as tmp:
        rendezvous, gathered_path = os.path.join(tmp, "rendezvous"), os.path.join(tmp, "gathered.pt")
        mp.spawn(worker, args=(bench.preset_name, rendezvous, gathered_path), nprocs=WORLD)
        ranks = torch.load(gathered_path)
    worst = max(r["error"] for r in ranks)
    names = list(ranks[0]["medians"])
    slower = {name: max(r["medians"][name] for r in ranks) for name in names}
    total = sum(r["numel"] for r in ranks)
    print(f"FSDP2, {WORLD} gloo ranks, {total:,} parameters ({ranks[0]['numel']:,} on rank 0), 1 thread per rank")
    print(f"check: two steps against torch.optim.AdamW(foreach=False), worst relative error {worst:.2e}")
    print(f"  {'optimizer':<30} {'step ms (slower rank)':>22} {'MIMOAdamW speedup':>18}")
    ours = slower["MIMOAdamW.step()"]
    for name in names:
        speedup = "-" if name.startswith("MIMO") else f"{slower[name] / ours:.2f}x"
        print(f"  {name:<30} {slower[name] * 1e3:>22.3f} {speedup:>18}")
    bench.finish({"world": WORLD, "parameters": total, "check_error": worst, "step_seconds": slower})
    if worst > TOLERANCE:
        print(f"FAILED: MIMOAdamW differs from torch.optim.AdamW by {worst:.2e} > {TOLERANCE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
