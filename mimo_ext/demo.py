"""Joint training vs MIMO on real multi-view data (mfeat), same model, init, batches and optimizer.

Run ``python -m mimo_ext.demo``. It prints, for each method, the fused test accuracy, each modality's uni-modal
head accuracy, and each modality's linear-probe accuracy (a logistic regression fit on the frozen encoder
features of the training split). The probe is the fair measure of how well an encoder was trained: MIMO should
raise it for the weak view (``fou``), which joint training leaves under-trained next to the dominant ``pix``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .datasets import load_mfeat, standardize, train_test_split
from .models import LateFusionMLP
from .objective import DEFAULT_MU, mimo_loss

__all__ = ["METHODS", "Config", "Result", "evaluate", "linear_probe", "main", "run", "train"]

METHODS = ("joint", "mimo")
NUM_CLASSES = 10


@dataclass(frozen=True)
class Config:
    """Settings shared by both methods, so the only difference between them is the loss."""

    views: tuple[str, ...] = ("pix", "fou")
    epochs: int = 30
    seed: int = 0
    mu: float = DEFAULT_MU
    gamma: float = 1.0
    lr: float = 1e-3
    batch_size: int = 64
    hidden: int = 64
    feature_dim: int = 32
    test_fraction: float = 0.2
    probe_steps: int = 200


@dataclass
class Result:
    """Test accuracies of one trained model, per modality lists in view order."""

    fused: float
    uni: list[float] = field(default_factory=list)
    probe: list[float] = field(default_factory=list)


Split = tuple[list[torch.Tensor], torch.Tensor]


def load_split(cfg: Config) -> tuple[Split, Split]:
    """mfeat views split by ``cfg.seed``, each view standardized with training-split statistics."""
    xs, y = load_mfeat(cfg.views)
    train_idx, test_idx = train_test_split(len(y), cfg.test_fraction, cfg.seed)
    pairs = [standardize(x[train_idx], x[test_idx]) for x in xs]
    return ([p[0] for p in pairs], y[train_idx]), ([p[1] for p in pairs], y[test_idx])


def train(model: LateFusionMLP, method: str, data: Split, cfg: Config) -> LateFusionMLP:
    """Train ``model`` in place with Adam on shuffled mini-batches, the batch order fixed by ``cfg.seed``.

    ``joint``: the fusion cross-entropy ``f0`` trains encoders and fusion head. Its uni-modal heads learn on
    detached features, so they report what each encoder supports (an online probe) without sending any gradient
    into the encoders; with Adam's per-parameter updates the rest of the model moves exactly as under ``f0`` alone.
    ``mimo``: ``mimo_loss(f0, [f_m], gamma, mu)`` trains everything, heads and encoders.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    xs, y = data
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # Same generator seed for both methods: identical batches, so the loss is the only difference.
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _ in range(cfg.epochs):
        for batch in torch.randperm(len(y), generator=generator).split(cfg.batch_size):
            inputs, target = [x[batch] for x in xs], y[batch]
            feats = model.features(inputs)
            f0 = F.cross_entropy(model.fusion_head(torch.cat(feats, dim=1)), target)
            if method == "joint":
                uni = [F.cross_entropy(h(f.detach()), target) for h, f in zip(model.uni_heads, feats, strict=True)]
                loss = f0 + sum(uni)
            else:
                uni = [F.cross_entropy(h(f), target) for h, f in zip(model.uni_heads, feats, strict=True)]
                loss = mimo_loss(f0, uni, gamma=cfg.gamma, mu=cfg.mu)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == y).float().mean().item()


@torch.no_grad()
def evaluate(model: LateFusionMLP, data: Split) -> tuple[float, list[float]]:
    """Fused accuracy and each uni-modal head's accuracy on ``data``."""
    model.eval()
    xs, y = data
    fused, uni = model(xs)
    return _accuracy(fused, y), [_accuracy(logits, y) for logits in uni]


def linear_probe(
    train_feat: torch.Tensor, train_y: torch.Tensor, test_feat: torch.Tensor, test_y: torch.Tensor, steps: int = 200
) -> float:
    """Test accuracy of an L2-regularized logistic regression fit by full-batch L-BFGS on frozen features.

    Zero init and a convex objective: the result depends on the features alone, not on any random state.
    """
    train_feat, test_feat = standardize(train_feat, test_feat)
    weight = torch.zeros(train_feat.shape[1], NUM_CLASSES, requires_grad=True)
    bias = torch.zeros(NUM_CLASSES, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # A small ridge keeps the optimum finite when the features separate the training classes.
        loss = F.cross_entropy(train_feat @ weight + bias, train_y) + 1e-3 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return _accuracy(test_feat @ weight + bias, test_y)


def run(cfg: Config) -> dict[str, Result]:
    """Train one model per method from the same init and measure it; returns ``{method: Result}``."""
    train_data, test_data = load_split(cfg)
    input_dims = [x.shape[1] for x in train_data[0]]
    results: dict[str, Result] = {}
    for method in METHODS:
        torch.manual_seed(cfg.seed)  # identical initial weights for every method
        model = LateFusionMLP(input_dims, NUM_CLASSES, hidden=cfg.hidden, feature_dim=cfg.feature_dim)
        train(model, method, train_data, cfg)
        fused, uni = evaluate(model, test_data)
        with torch.no_grad():
            model.eval()
            train_feats, test_feats = model.features(train_data[0]), model.features(test_data[0])
        probe = [
            linear_probe(a, train_data[1], b, test_data[1], cfg.probe_steps)
            for a, b in zip(train_feats, test_feats, strict=True)
        ]
        results[method] = Result(fused, uni, probe)
    return results


def format_table(cfg: Config, results: dict[str, Result]) -> str:
    """The results as a plain-text table, one row per method."""
    columns = ["fused"] + [f"uni:{v}" for v in cfg.views] + [f"probe:{v}" for v in cfg.views]
    lines = ["method " + " ".join(f"{c:>10}" for c in columns)]
    for method, r in results.items():
        lines.append(f"{method:<6} " + " ".join(f"{a:>10.4f}" for a in [r.fused, *r.uni, *r.probe]))
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(prog="python -m mimo_ext.demo", description=__doc__.splitlines()[0])
    p.add_argument("--views", nargs="+", default=list(d.views), help="mfeat views, at least two (default: pix fou)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--seed", type=int, default=d.seed, help="split, init and batch-order seed")
    p.add_argument("--mu", type=float, default=d.mu, help="smoothed-max temperature")
    p.add_argument("--gamma", type=float, default=d.gamma, help="weight of the smoothed max")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    a = p.parse_args(argv)
    if len(a.views) < 2:
        p.error("--views needs at least two views")
    return Config(
        views=tuple(a.views), epochs=a.epochs, seed=a.seed, mu=a.mu, gamma=a.gamma, lr=a.lr, batch_size=a.batch_size
    )


def main(argv: Sequence[str] | None = None) -> None:
    cfg = _parse(argv)
    print(
        f"mfeat views={','.join(cfg.views)} split={1 - cfg.test_fraction:.0%}/{cfg.test_fraction:.0%} seed={cfg.seed}"
        f" | MLP hidden={cfg.hidden} feature_dim={cfg.feature_dim} | Adam lr={cfg.lr} batch={cfg.batch_size}"
        f" epochs={cfg.epochs} | mimo: gamma={cfg.gamma} mu={cfg.mu} | probe: L-BFGS {cfg.probe_steps} iters"
        f" | threads={torch.get_num_threads()}"
    )
    start = time.perf_counter()
    results = run(cfg)
    print(format_table(cfg, results))
    print("joint: uni heads fit on detached features (no gradient into encoders); probe = frozen-feature logreg")
    print(f"({time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    main()
