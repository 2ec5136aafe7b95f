"""The whole training step (zero_grad, forward, backward, optimizer step) of MIMOAdamW against torch's AdamW.

    python benchmarks/bench_whole_step.py --quick                 # CI-sized: small models, every variant checked
    python benchmarks/bench_whole_step.py --threads 1             # full: ~21M MLP, ~10M conv net, ~20M attention
    python benchmarks/bench_whole_step.py --device cuda
    python benchmarks/bench_whole_step.py --variants mimo --rounds 16 --steps 1   # fused against mimo, paired

The kernel and optimizer benchmarks time the step alone; a user sees the whole step, where gradient handling
(zero-filling, accumulating into an existing ``.grad``) costs more than the step itself. Every variant trains the
same model (a copy) on the same batch with the same loss, ``mimo_loss(f0, [f1, f2])``:

- ``fused``: ``torch.optim.AdamW(fused=True)``, the reference (ratio 1.00);
- ``foreach``: ``torch.optim.AdamW(foreach=True)``;
- ``compiled``: ``torch.optim.AdamW(foreach=True)`` with its ``step`` compiled by ``torch.compile`` (full preset);
- ``mimo``: ``MIMOAdamW``, one backward of ``mimo_loss`` (the single path);
- ``mimo_per_obj``: ``MIMOAdamW``, ``opt.backward(f0, [f1, f2])`` (one backward per objective, blended in the step);
- ``floor_per_obj``: the per-objective path's floor: plain autograd runs the same K = 3 backward passes, each into
  fresh gradients kept per objective, then ``AdamW(fused=True)`` steps on g0 (the blend, which MIMO's step fuses,
  not counted): the backward work any per-objective method must do.

Timing: warm-up steps, then interleaved rounds (each variant a few steps per round, so background load spreads over
all), median over every timed step. Memory beside each time: on CUDA the peak allocated during a step; on the CPU
(no allocator statistics) the bytes held between steps by parameters, gradients, optimizer state and flat buffers
(distinct storages). Before timing, one step of ``mimo`` and ``mimo_per_obj`` from the same model must match
``fused`` (the same update, to within a fraction of lr).
"""

from __future__ import annotations

import copy
import statistics
import sys
import time

import torch
from common import BenchmarkRun, benchmark_parser
from torch import nn
from torch.nn import functional as F

from mimo_ext import mimo_loss
from mimo_ext.models import AttentionFusion, LateFusion, mlp_encoder
from mimo_ext.optim import MIMOAdamW

NUM_CLASSES = 10
LR = 1e-3
VARIANTS = ["fused", "foreach", "compiled", "mimo", "mimo_per_obj", "floor_per_obj"]
PRESETS = {
    "quick": {
        "mlp": {"input": 24, "hidden": 48, "feature": 32, "fusion_hidden": 40},
        "conv": {"size": 8, "width": 8, "feature": 16},
        "attention": {"input": 20, "hidden": 32, "feature": 16, "layers": 1},
        "batch": 8,
        "warmup": 1,
        "rounds": 2,
        "steps": 2,
        "compile": False,
    },
    "full": {
        # 21.0M: encoders 1024 -> 2048 -> 2048, fusion head 4096 -> 2048 -> 10 (the model).
        "mlp": {"input": 1024, "hidden": 2048, "feature": 2048, "fusion_hidden": 2048},
        # ~10M: three convolutions and a linear map per 3x32x32 image modality.
        "conv": {"size": 32, "width": 64, "feature": 1152},
        # ~20M: MLP encoders to 512-wide tokens, five pre-norm transformer layers.
        "attention": {"input": 1024, "hidden": 3072, "feature": 512, "layers": 5},
        "batch": 64,
        "warmup": 2,
        "rounds": 4,
        "steps": 2,
        "compile": True,
    },
}


class UniHeads(nn.Module):
    """A fusion model's outputs as ``(fusion_logits, [uni_logits_m])``: the late-fusion models have uni-modal heads;
    the attention model gets one linear head per modality token (its encoders' outputs)."""

    def __init__(self, model: nn.Module, heads: list[nn.Module] | None = None) -> None:
        super().__init__()
        self.model = model
        self.heads = nn.ModuleList(heads or [])

    def forward(self, inputs):
        if isinstance(self.model, LateFusion):
            return self.model(inputs)
        feats = self.model.features(inputs)
        tokens = torch.stack(feats, dim=1) + self.model.modality_embedding
        m = self.model
        logits = m.head(m.norm(m.transformer(tokens).mean(dim=1)))
        return logits, [head(f) for head, f in zip(self.heads, feats, strict=True)]


def conv_encoder(width: int, feature: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(4 * width * 16, feature),
        nn.ReLU(),
    )


def build(family: str, preset: dict, device: str) -> tuple[nn.Module, list[torch.Tensor], torch.Tensor]:
    """The model, its two modality inputs and the labels."""
    s = preset[family]
    batch = preset["batch"]
    if family == "mlp":
        encoders = [mlp_encoder(s["input"], s["hidden"], s["feature"]) for _ in range(2)]
        model = LateFusion(encoders, s["feature"], NUM_CLASSES)
        model.fusion_head = nn.Sequential(
            nn.Linear(2 * s["feature"], s["fusion_hidden"]), nn.ReLU(), nn.Linear(s["fusion_hidden"], NUM_CLASSES)
        )
        model = UniHeads(model)
        inputs = [torch.randn(batch, s["input"]) for _ in range(2)]
    elif family == "conv":
        encoders = [conv_encoder(s["width"], s["feature"]) for _ in range(2)]
        model = UniHeads(LateFusion(encoders, s["feature"], NUM_CLASSES))
        inputs = [torch.randn(batch, 3, s["size"], s["size"]) for _ in range(2)]
    else:
        encoders = [mlp_encoder(s["input"], s["hidden"], s["feature"]) for _ in range(2)]
        inner = AttentionFusion(encoders, s["feature"], NUM_CLASSES, layers=s["layers"], heads=4)
        model = UniHeads(inner, [nn.Linear(s["feature"], NUM_CLASSES) for _ in range(2)])
        inputs = [torch.randn(batch, s["input"]) for _ in range(2)]
    labels = torch.randint(0, NUM_CLASSES, (batch,))
    return model.to(device), [x.to(device) for x in inputs], labels.to(device)


class Variant:
    """One variant's model copy and optimizer; ``step()`` is one whole training step."""

    def __init__(self, name: str, model: nn.Module, inputs, labels) -> None:
        self.name = name
        self.model = copy.deepcopy(model)
        self.inputs, self.labels = inputs, labels
        params = list(self.model.parameters())
        if name.startswith("mimo"):
            self.opt = MIMOAdamW(params, lr=LR)
        elif name == "foreach" or name == "compiled":
            self.opt = torch.optim.AdamW(params, lr=LR, foreach=True)
        else:
            self.opt = torch.optim.AdamW(params, lr=LR, fused=True)
        self.optimizer_step = torch.compile(self.opt.step) if name == "compiled" else self.opt.step
        self.params = params

    def losses(self):
        fusion, uni = self.model(self.inputs)
        return F.cross_entropy(fusion, self.labels), [F.cross_entropy(u, self.labels) for u in uni]

    def step(self) -> None:
        self.opt.zero_grad()
        f0, uni = self.losses()
        if self.name == "mimo_per_obj":
            self.opt.backward(f0, uni)
        elif self.name == "floor_per_obj":
            # K plain backward passes, each into fresh gradients (autograd's cheapest form: its AccumulateGrad
            # steals the computed tensor), kept per objective; then the step on g0.
            objectives = [f0, *uni]
            grads = []
            for k, f in enumerate(objectives):
                for p in self.params:
                    p.grad = None
                torch.autograd.backward(f, retain_graph=k + 1 < len(objectives), inputs=self.params)
                grads.append([p.grad for p in self.params])
            for p, g in zip(self.params, grads[0], strict=True):
                p.grad = g
        else:
            mimo_loss(f0, uni).backward()
        self.optimizer_step()


def held_bytes(variant: Variant) -> int:
    """Bytes of memory held by parameters, gradients (every objective's), optimizer state and MIMO's flat buffers:
    the union of their address ranges (a parameter's storage is an alias inside MIMO's flat buffer, counted once)."""
    tensors = [*variant.params, *(p.grad for p in variant.params if p.grad is not None)]
    for state in variant.opt.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    for buckets in getattr(variant.opt, "_buckets", []):
        for bucket in buckets:
            tensors += [*bucket.grad_buffers, *bucket.state.values()]
            # the per-objective path's other objectives' gradients, kept (as .grad is) until zero_grad
            tensors += [g for gs in (bucket.pieces or []) for g in gs if g is not None]
            if bucket.param_buffer is not None:
                tensors.append(bucket.param_buffer)
    ranges = sorted({(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors})
    total, end = 0, 0
    for start, size in ranges:
        stop = start + size
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def check(model: nn.Module, inputs, labels) -> None:
    """One step of the MIMO variants from the same model takes torch's fused AdamW step on mimo_loss."""
    runs = {name: Variant(name, model, inputs, labels) for name in ("fused", "mimo", "mimo_per_obj")}
    for run in runs.values():
        run.step()
    reference = torch.cat([p.detach().flatten() for p in runs["fused"].params])
    for name in ("mimo", "mimo_per_obj"):
        got = torch.cat([p.detach().flatten() for p in runs[name].params])
        # One AdamW step moves each parameter by about lr * g / (|g| + eps): where |g| is near eps the rounding of g
        # (one backward against K, blended in the step) moves that ratio by up to lr. So: every parameter within
        # one step size lr, and all but one in a million within 5% of it.
        diff = (got - reference).abs()
        off = (diff > 0.05 * LR).double().mean().item()
        if diff.max().item() > LR or off > 1e-6:
            raise AssertionError(f"{name}: max difference {diff.max().item():.3g}, {off:.2g} of them beyond 5% of lr")


def time_family(family: str, preset: dict, device: str, variants: list[str]) -> dict:
    torch.manual_seed(0)
    model, inputs, labels = build(family, preset, device)
    check(model, inputs, labels)
    names = [n for n in variants if n != "compiled" or preset["compile"]]
    runs = [Variant(name, model, inputs, labels) for name in names]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for run in runs:
        for _ in range(preset["warmup"]):
            run.step()
    times: dict[str, list[float]] = {run.name: [] for run in runs}
    peaks: dict[str, int] = {}
    for _ in range(preset["rounds"]):
        for run in runs:
            if device == "cuda":
                sync()
                torch.cuda.reset_peak_memory_stats()
            for _ in range(preset["steps"]):
                sync()
                start = time.perf_counter()
                run.step()
                sync()
                times[run.name].append(time.perf_counter() - start)
            peak = torch.cuda.max_memory_allocated() if device == "cuda" else held_bytes(run)
            peaks[run.name] = max(peaks.get(run.name, 0), peak)
    seconds = {name: statistics.median(ts) for name, ts in times.items()}
    # Paired: each round's median against fused's in the same round, then the median over rounds (background load
    # that changes between rounds cancels).
    steps = preset["steps"]
    per_round = {
        name: [statistics.median(ts[r * steps : (r + 1) * steps]) for r in range(preset["rounds"])]
        for name, ts in times.items()
    }
    paired = {
        name: statistics.median(t / f for t, f in zip(rs, per_round["fused"], strict=True))
        for name, rs in per_round.items()
    }
    n = sum(p.numel() for p in model.parameters())
    memory = "peak MB" if device == "cuda" else "held MB"
    print(f"\n{family}: {n / 1e6:.1f}M parameters, batch {preset['batch']}")
    print(f"{'variant':<15}{'ms/step':>9}{'x fused':>9}{'paired':>8}{memory:>10}")
    for name, t in seconds.items():
        ratio = t / seconds["fused"]
        print(f"{name:<15}{t * 1e3:>9.2f}{ratio:>9.3f}{paired[name]:>8.3f}{peaks[name] / 2**20:>10.1f}")
    return {
        "parameters": n,
        "seconds_per_step": seconds,
        "ratio_to_fused": {name: t / seconds["fused"] for name, t in seconds.items()},
        "paired_ratio_to_fused": paired,
        "memory_bytes": peaks,
        "memory_kind": "cuda peak allocated" if device == "cuda" else "held between steps",
        "seconds_all": times,
    }


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__, device=True, threads=1, rounds=True)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant per round (preset's)")
    parser.add_argument("--models", nargs="+", choices=["mlp", "conv", "attention"], default=None)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=None, help="a subset (fused always runs)")
    args = parser.parse_args(argv)
    bench = BenchmarkRun.start("whole_step", args, PRESETS, overrides=("rounds", "steps"))
    if bench.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    families = args.models or ["mlp", "conv", "attention"]
    variants = ["fused", *(v for v in args.variants if v != "fused")] if args.variants else VARIANTS
    results = {family: time_family(family, bench.preset, bench.device, variants) for family in families}
    bench.finish({"models": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
