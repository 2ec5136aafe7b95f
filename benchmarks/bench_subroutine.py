"""Microbenchmark of the per-step weighting subroutine: MIMO against MGDA, MMPareto, PCGrad and CAGrad.

    python benchmarks/bench_subroutine.py --quick     # CI-sized: checks every form, times n = 2^16, 2^18
    python benchmarks/bench_subroutine.py             # full preset: K = 3, 4, 6; n = 1M, 4M, 16M, 64M
    python benchmarks/bench_subroutine.py --ks 3 --lengths 1048576 16777216 --min-run-time 0.2 --rounds 1

Every method gets the same K per-objective gradients G (``[K, n]``, float32), laid out as
:func:`mimo_ext.balance.methods.gradients.objective_gradients` lays them out for a late-fusion model: row 0 (the
fusion loss f0) covers all n encoder parameters, row m (uni-modal loss f_m) is zero outside encoder m's block (the
n parameters split into M = K - 1 equal blocks, each cut into the parameter tensors of the widest ResNet-18 encoder
that fits it: about 62 tensors of very unequal sizes).
Row m also carries a component along row 0 (sign alternating with m), so that the objectives conflict and the
conflict branches of PCGrad / MMPareto are taken. Each subroutine turns G (and, for MIMO, the K losses) into the
combined gradient g (a flat ``[n]`` buffer). Only the weighting is timed: no backward pass, no optimizer step.

- MIMO: ``w = smooth_max(losses[1:], mu)[1]``; ``blend_(g0, G[1:], w, gamma)`` in place into g0's buffer, as the
  library's per-objective path does: one pass over G, no host work.
- MGDA, PCGrad, CAGrad, MMPareto, each in two forms:
  "published": what the authors' public code does per step (per-parameter-tensor Python loops, gradient clones,
  ``.item()`` / Python branches on device scalars, host-side solvers); each function says which code it follows
  and what was simplified;
  "fast": flat buffers, one fused Gram matmul (per tensor for MMPareto, whose rescaling is per tensor), the K x K
  (or 2 x 2) solver in float64 as the library does it, and one combination pass ``coefficients @ G``.
Every form writes into a preallocated output buffer (see ``Problem``).

Before timing, all forms of a method are checked to give the same g, and MIMO's g is checked against
``G[0] + gamma * sum_m w_m G[m]`` computed in float64 (``allclose`` with rtol 1e-4 and an absolute floor of
1e-5 * max |g|, for the elements where the terms cancel). The ratio column is each time over MIMO's time at the same
K and n. On a shared machine time with --threads 1 (the default).
"""

from __future__ import annotations

import gc
import math
import sys
from collections.abc import Callable

import torch
from common import BenchmarkRun, benchmark_parser, interleaved_rounds, resnet18_shapes

import mimo_ext
from mimo_ext.balance.methods.cagrad import DEFAULT_C, cagrad_coefficients, cagrad_dual_weights
from mimo_ext.balance.methods.min_norm import min_norm_2, min_norm_weights
from mimo_ext.balance.methods.mmpareto import DEFAULT_BOOST
from mimo_ext.balance.methods.pcgrad import pcgrad_coefficients

PRESETS = {
    "quick": {"ks": [3, 4, 6], "lengths": [1 << 16, 1 << 18], "min_run_time": 0.05, "rounds": 1},
    "full": {"ks": [3, 4, 6], "lengths": [1 << 20, 1 << 22, 1 << 24, 1 << 26], "min_run_time": 0.2, "rounds": 2},
}

GAMMA = 0.7
MU = 0.1
RTOL = 1e-4
ATOL_FRACTION = 1e-5  # absolute floor of the comparisons, relative to max |expected|
PCGRAD_SEED = 0


class Problem:
    """The inputs shared by every subroutine at one (K, n)."""

    def __init__(self, k: int, n: int) -> None:
        self.k, self.n = k, n
        m = k - 1
        generator = torch.Generator().manual_seed(k * 1000003 + n)
        g = torch.randn(k, n, generator=generator)
        edges = [n * i // m for i in range(m + 1)]
        self.blocks = list(zip(edges[:-1], edges[1:], strict=True))
        for i, (lo, hi) in enumerate(self.blocks, start=1):
            sign = -1.0 if i % 2 else 1.0
            g[i, :lo] = 0
            g[i, hi:] = 0
            g[i, lo:hi].add_(g[0, lo:hi], alpha=sign * (0.3 + 0.1 * i))
        self.G = g.contiguous()
        self.losses = torch.rand(k, generator=generator) + 0.5
        # Parameter tensors: each block (one encoder) cut like a ResNet-18 of the width that fits it.
        self.spans = [span for lo, hi in self.blocks for span in resnet_spans(lo, hi)]
        # Per-objective lists of per-tensor gradients ("param.grad" of each objective), views of G.
        self.per_tensor = [[self.G[t, lo:hi] for lo, hi in self.spans] for t in range(k)]
        # Every form writes its combined gradient into a buffer that exists before the call, as an optimizer's
        # gradient buffer does: allocating 4n bytes per call would time the allocator (at 16M, freshly mapped and
        # zeroed pages) rather than the subroutine. The published forms write per tensor into views of `out`;
        # MIMO blends in place into its own copy of g0, as the library's per-objective path does.
        self.out = torch.empty(n)
        self.out_views = [self.out[lo:hi] for lo, hi in self.spans]
        self.mimo_g0 = self.G[0].clone()


def resnet_spans(lo: int, hi: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` cut into the parameter tensors of a ResNet-18 encoder (3 input channels) of the largest width
    whose parameters fit, in the model's order; what is left over becomes one last tensor (the encoder's head).
    About 62 tensors of very unequal sizes (batch-norm vectors of a few hundred elements beside 3x3 convolutions of
    millions), which is what the per-tensor loops of the published forms walk in a real model."""
    size = hi - lo
    width = 1
    while sum(math.prod(s) for s in resnet18_shapes(3, width + 1)) <= size:
        width += 1
    sizes = [math.prod(s) for s in resnet18_shapes(3, width)]
    sizes = [x for x in sizes if x <= size] if sum(sizes) > size else sizes  # tiny blocks (quick preset)
    spans, start = [], lo
    for x in sizes:
        if start + x > hi:
            break
        spans.append((start, start + x))
        start += x
    if start < hi:
        spans.append((start, hi))
    return spans


def gram(g: torch.Tensor, block: int = 1 << 16) -> torch.Tensor:
    """``[K, K]`` float64 Gram matrix of the rows of ``g`` in one pass: float32 matmuls over blocks of ``block``
    columns (one batched matmul), summed in float64. A single float32 matmul over n = 16M columns accumulates long
    enough to move the solvers' coefficients by about 1e-4; blocking keeps the sums short."""
    k, n = g.shape
    q = n // block
    parts = []
    if q:
        body = g[:, : q * block].reshape(k, q, block).transpose(0, 1)  # [q, K, block], a view
        parts.append(torch.bmm(body, body.transpose(1, 2)).double().sum(0))
    if n > q * block:
        tail = g[:, q * block :]
        parts.append((tail @ tail.T).double())
    return sum(parts)


def dot64(a: torch.Tensor, b: torch.Tensor, block: int = 1 << 16) -> torch.Tensor:
    """``<a, b>`` as float32 dot products over blocks of ``block`` elements summed in float64 (see :func:`gram`)."""
    q = a.numel() // block
    total = (a[: q * block].view(q, 1, block) @ b[: q * block].view(q, block, 1)).double().sum()
    return total + torch.dot(a[q * block :], b[q * block :]).double()


def combine(coefficients: torch.Tensor, p: Problem) -> torch.Tensor:
    """``coefficients @ G`` into the preallocated ``p.out``: one pass over G."""
    torch.mm(coefficients.float().view(1, -1), p.G, out=p.out.view(1, -1))
    return p.out


# ---- MIMO


def mimo(p: Problem) -> torch.Tensor:
    """Weights, then one in-place blend pass into g0's buffer (the library's ``opt.backward`` path). Timing
    calls it repeatedly on the same buffer; its values then drift, which changes nothing in the time."""
    w = mimo_ext.smooth_max(p.losses[1:], MU)[1]
    return mimo_ext.blend_(p.mimo_g0, list(p.G[1:]), w, GAMMA)


def mimo_reference(p: Problem) -> torch.Tensor:
    w = torch.softmax(p.losses[1:].double() / MU, 0)
    g = p.G.double()
    return g[0] + GAMMA * (w @ g[1:])


# ---- MGDA


def mgda_published(p: Problem) -> torch.Tensor:
    """After Sener & Koltun's code (github.com/isl-org/MultiObjectiveOptimization, ``train_multi_task.py`` and
    ``min_norm_solvers.py``): each objective's gradients are cloned per parameter tensor into a list
    (``grads[t].append(param.grad.data.clone())``); ``MinNormSolver._min_norm_2d`` fills the dot products pair by
    pair with a Python loop over the tensors, one host scalar per tensor (``torch.mul(a, b).sum().data[0]``, now
    ``.item()``); the solver runs on the host. Simplified: the solver is the library's exact Wolfe solver on the
    float64 Gram matrix (theirs is Frank-Wolfe in numpy, a similar host cost, but only approximately converged),
    and the combination ``sum_t alpha_t g_t`` is a per-tensor loop (their code backpropagates the alpha-weighted
    loss a second time instead, which is not part of this subroutine)."""
    k = p.k
    grads = [[g.clone() for g in p.per_tensor[t]] for t in range(k)]
    dps = {}
    for i in range(k):
        for j in range(i, k):
            dot = 0.0
            for a, b in zip(grads[i], grads[j], strict=True):
                dot += torch.mul(a, b).sum().item()
            dps[(i, j)] = dps[(j, i)] = dot
    gram = torch.tensor([[dps[(i, j)] for j in range(k)] for i in range(k)], dtype=torch.float64)
    alpha = min_norm_weights(gram).tolist()
    for idx, out in enumerate(p.out_views):
        torch.mul(grads[0][idx], alpha[0], out=out)
        for t in range(1, k):
            out.add_(grads[t][idx], alpha=alpha[t])
    return p.out


def mgda_fast(p: Problem) -> torch.Tensor:
    alpha = min_norm_weights(gram(p.G))
    return combine(alpha, p)


# ---- PCGrad


def pcgrad_published(p: Problem) -> torch.Tensor:
    """After the PyTorch port cited by the paper's authors (github.com/WeiChengTseng/Pytorch-PCGrad,
    ``pcgrad.py``): ``_retrieve_grad`` clones each objective's per-parameter gradients and ``_flatten_grad``
    concatenates them; ``_project_conflicting`` deep-copies the flat gradients, and for each g_i visits the others
    in a random order, computing ``torch.dot(g_i, g_j)`` and branching on its sign in Python (a host sync per
    pair), projecting on the full flat vectors; the sum is split back per parameter (``_unflatten_grad``).
    Simplified: the random order skips g_i itself (the port shuffles all K, including i, whose dot product is
    almost always positive) and is drawn from the same generator as :func:`pcgrad_coefficients`, so that both
    forms take the same steps; the dot products are accumulated in float64 over blocks (:func:`dot64`; a
    float32 ``torch.dot`` over 16M elements is off by about 1e-4)."""
    k = p.k
    grads = [torch.cat([g.clone() for g in p.per_tensor[t]]) for t in range(k)]
    pc_grads = [g.clone() for g in grads]
    generator = torch.Generator().manual_seed(PCGRAD_SEED)
    for i in range(k):
        others = [j for j in range(k) if j != i]
        g_i = pc_grads[i]
        for n in torch.randperm(len(others), generator=generator).tolist():
            g_j = grads[others[n]]
            dot = dot64(g_i, g_j)  # theirs: torch.dot(g_i, g_j)
            if dot < 0:
                g_i -= (dot / dot64(g_j, g_j)).float() * g_j  # theirs: dot * g_j / g_j.norm() ** 2
    merged = torch.stack(pc_grads).sum(dim=0)
    for out, piece in zip(p.out_views, merged.split([hi - lo for lo, hi in p.spans]), strict=True):
        out.copy_(piece)
    return p.out


def pcgrad_fast(p: Problem) -> torch.Tensor:
    generator = torch.Generator().manual_seed(PCGRAD_SEED)
    coefficients = pcgrad_coefficients(gram(p.G), generator)
    return combine(coefficients, p)


# ---- CAGrad


def cagrad_published(p: Problem) -> torch.Tensor:
    """After the authors' code (github.com/Cranial-XIX/CAGrad, ``nyuv2/model_segnet_mt.py``: ``grad2vec``,
    ``cagrad``, ``overwrite_grad``): each objective's per-parameter gradients are copied, tensor by tensor, into
    column t of an ``[n, K]`` matrix; ``GG = grads.t().mm(grads).cpu()``; the dual weights are solved on the host
    (scipy SLSQP there); ``gw = (grads * w).sum(1)`` and its norm on the device, read back for ``lambda``;
    ``g = grads.mean(1) + lambda * gw``, rescaled by ``1 + c^2`` and multiplied by K, written back per parameter.
    Simplified: the dual weights come from the library's solver (same minimiser as SLSQP); ``lambda`` is the
    library's ``c ||g_0|| / ||g_w||`` without the reference's 1e-4 guards; ``GG`` is summed in float64 over
    row blocks of at most 2^16 and ``||g_w||`` accumulated in float64 (their single float32 ``mm`` and ``norm`` over
    n = 1M..16M rows accumulate errors that move the coefficients by about 1e-4, beyond the check's tolerance; the
    passes over memory are the same). All so that both forms agree."""
    k = p.k
    grads = torch.empty(p.n, k)
    for t in range(k):
        for (lo, hi), g in zip(p.spans, p.per_tensor[t], strict=True):
            grads[lo:hi, t].copy_(g)
    rows = [(s, min(s + (1 << 16), hi)) for lo, hi in p.spans for s in range(lo, hi, 1 << 16)]
    gg = sum(grads[lo:hi].t().mm(grads[lo:hi]).double() for lo, hi in rows)  # theirs: grads.t().mm(grads)
    w = cagrad_dual_weights(gg, DEFAULT_C)
    gw = (grads * w.float().view(1, -1)).sum(1)
    gw_norm = torch.linalg.vector_norm(gw, dtype=torch.float64).item()
    g0_norm = max(float(gg.mean()), 0.0) ** 0.5
    lam = DEFAULT_C * g0_norm / gw_norm if gw_norm > 0 else 0.0
    g = (grads.mean(1) + lam * gw) / (1 + DEFAULT_C**2) * k
    for out, piece in zip(p.out_views, g.split([hi - lo for lo, hi in p.spans]), strict=True):
        out.copy_(piece)
    return p.out


def cagrad_fast(p: Problem) -> torch.Tensor:
    coefficients, _ = cagrad_coefficients(gram(p.G), DEFAULT_C)
    return combine(coefficients, p)


# ---- MMPareto


def mmpareto_published(p: Problem) -> torch.Tensor:
    """After the authors' code (github.com/GeWu-Lab/MMPareto_ICML2024, ``code/MMPareto.py``): per modality, the
    gradients of the fused loss and of the uni-modal loss are cloned per parameter into dicts; the cosine is taken
    over their concatenations and branched on in Python (``if this_cos > 0``); when they conflict,
    ``MinNormSolver.find_min_norm_element`` runs on the two per-parameter lists (per-tensor dot products, one host
    scalar each); then a per-parameter loop builds ``2 a_mm g_mm + 2 a_u g_u``, compares its norm with that of the
    summed gradient (``diff = three_norm / new_norm; if diff > 1``, a host sync per tensor) and multiplies by
    gamma = 1.5. Simplified: the summed gradient ``g_mm + g_u`` is formed per tensor here (their code reads it
    from ``param.grad`` after backpropagating ``f0 + sum_m f_m``); the two-vector solver is the clamped closed form
    (theirs returns 0.999 / 0.001 at the ends)."""
    for m, (lo, hi) in enumerate(p.blocks, start=1):
        idx = [i for i, (a, _) in enumerate(p.spans) if lo <= a < hi]
        both = {i: p.per_tensor[0][i].clone() for i in idx}
        uni = {i: p.per_tensor[m][i].clone() for i in idx}
        vec_mm = torch.cat([both[i].flatten() for i in idx])
        vec_u = torch.cat([uni[i].flatten() for i in idx])
        cos = torch.nn.functional.cosine_similarity(vec_mm, vec_u, dim=0)
        if cos > 0:
            k_mm, k_u = 0.5, 0.5
        else:
            v11 = v12 = v22 = 0.0
            for i in idx:
                v11 += torch.mul(both[i], both[i]).sum().item()
                v12 += torch.mul(both[i], uni[i]).sum().item()
                v22 += torch.mul(uni[i], uni[i]).sum().item()
            k_mm = float(min_norm_2(*(torch.tensor(v, dtype=torch.float64) for v in (v11, v12, v22))))
            k_u = 1.0 - k_mm
        for i in idx:
            three_norm = torch.norm(both[i] + uni[i])
            new_grad = 2 * k_mm * both[i] + 2 * k_u * uni[i]
            new_norm = torch.norm(new_grad)
            diff = three_norm / new_norm
            if diff > 1:
                p.out_views[i].copy_(diff * new_grad * DEFAULT_BOOST)
            else:
                p.out_views[i].copy_(new_grad * DEFAULT_BOOST)
    return p.out


def mmpareto_fast(p: Problem) -> torch.Tensor:
    """MMPareto on flat buffers without a host sync: per block, the two rows' 2 x 2 Gram matrix per parameter
    tensor (a small matmul per tensor, reading both rows once) gives the block's cosine and min-norm weights and
    each tensor's two norms (``||2a g_mm + 2(1-a) g_u||^2`` and ``||g_mm + g_u||^2`` from the Gram entries); one
    multiply and one multiply-add per tensor then write ``c_mm g_mm + c_u g_u`` (coefficients stay on the device)."""
    out = p.out
    tiny = torch.finfo(torch.float32).tiny
    for m, (lo, hi) in enumerate(p.blocks, start=1):
        spans = [(a, b) for a, b in p.spans if lo <= a < hi]
        grams = torch.stack([p.G[0 : m + 1 : m, a:b] @ p.G[0 : m + 1 : m, a:b].T for a, b in spans])  # [T, 2, 2]
        s11, s12, s22 = grams[:, 0, 0], grams[:, 0, 1], grams[:, 1, 1]
        v11, v12, v22 = s11.sum(), s12.sum(), s22.sum()
        cos = v12 / (v11.sqrt() * v22.sqrt()).clamp_min(tiny)
        a = torch.where(cos > 0, torch.full_like(cos, 0.5), min_norm_2(v11, v12, v22))
        b = 1 - a
        new_norm = (4 * (a * a * s11 + 2 * a * b * s12 + b * b * s22)).clamp_min(0).sqrt()
        sum_norm = (s11 + 2 * s12 + s22).clamp_min(0).sqrt()
        grow = (new_norm > 0) & (sum_norm > new_norm)
        factor = torch.where(grow, sum_norm / new_norm.clamp_min(tiny), 1.0) * DEFAULT_BOOST
        c_mm, c_u = 2 * a * factor, 2 * b * factor
        for i, (start, stop) in enumerate(spans):
            torch.mul(p.G[0, start:stop], c_mm[i], out=out[start:stop])
            out[start:stop].addcmul_(p.G[m, start:stop], c_u[i])
    return out


METHODS: dict[str, dict[str, Callable[[Problem], torch.Tensor]]] = {
    "MIMO": {"fused": mimo},
    "MGDA": {"published": mgda_published, "fast": mgda_fast},
    "MMPareto": {"published": mmpareto_published, "fast": mmpareto_fast},
    "PCGrad": {"published": pcgrad_published, "fast": pcgrad_fast},
    "CAGrad": {"published": cagrad_published, "fast": cagrad_fast},
}


def assert_close(got: torch.Tensor, expected: torch.Tensor, label: str) -> float:
    """Raises unless ``got`` matches ``expected`` (allclose, rtol RTOL, atol ATOL_FRACTION * max |expected|);
    returns the largest relative error (max |got - expected| / max |expected|)."""
    expected = expected.double()
    got = got.double()
    scale = max(expected.abs().max().item(), torch.finfo(torch.float64).tiny)
    if not torch.allclose(got, expected, rtol=RTOL, atol=ATOL_FRACTION * scale):
        error = ((got - expected).abs() / (expected.abs() + ATOL_FRACTION * scale)).max().item()
        raise AssertionError(f"{label}: differs from the expected g (max |diff| / (|expected| + atol) = {error:.2e})")
    return (got - expected).abs().max().item() / scale


def check(p: Problem) -> dict[str, float]:
    p.mimo_g0.copy_(p.G[0])
    errors = {"MIMO/fused vs float64": assert_close(mimo(p), mimo_reference(p), f"MIMO, K={p.k}, n={p.n}")}
    for method, forms in METHODS.items():
        if method == "MIMO":
            continue
        results = {form: fn(p).clone() for form, fn in forms.items()}
        expected = results["fast"]
        if not expected.abs().max() > 0:
            raise AssertionError(f"{method}: zero combined gradient")
        for form, got in results.items():
            if form != "fast":
                label = f"{method}/{form} vs fast, K={p.k}, n={p.n}"
                errors[f"{method}/{form} vs fast"] = assert_close(got, expected, label)
    return errors


def run_case(k: int, n: int, preset: dict, threads: int) -> list[dict]:
    p = Problem(k, n)
    errors = check(p)
    forms = [(method, form, fn) for method, fs in METHODS.items() for form, fn in fs.items()]
    calls = {(method, form): (lambda fn=fn: fn(p)) for method, form, fn in forms}
    seconds, rounds = interleaved_rounds(calls, preset["rounds"], preset["min_run_time"], threads)
    mimo_seconds = seconds[("MIMO", "fused")]
    rows = []
    for (method, form), t in seconds.items():
        rows.append(
            {
                "method": method,
                "form": form,
                "K": k,
                "n": n,
                "tensors": len(p.spans),
                "seconds": t,
                "seconds_per_round": rounds[(method, form)],
                "ratio_to_mimo": t / mimo_seconds,
            }
        )
    rows[0]["check_errors"] = errors
    return rows


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__, threads=1, rounds=True)
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="numbers of objectives (default: preset's)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="gradient lengths n (default: preset's)")
    parser.add_argument("--min-run-time", type=float, default=None, help="seconds per measurement (default: preset's)")
    args = parser.parse_args(argv)
    bench = BenchmarkRun.start("subroutine", args, PRESETS, overrides=("ks", "lengths", "min_run_time", "rounds"))
    preset = bench.preset
    if any(k < 2 for k in preset["ks"]):
        parser.error("K must be at least 2 (f0 and one uni-modal loss)")
    rows = []
    with torch.no_grad():
        for k in preset["ks"]:
            for n in preset["lengths"]:
                rows += run_case(k, n, preset, args.threads)
                print(f"checked and timed: K={k}, n={n:,}", flush=True)
                gc.collect()
    print(f"\n{'method':<10}{'form':<11}{'K':>3}{'n':>12}{'tensors':>9}{'ms':>11}{'ratio':>9}")
    for r in rows:
        print(
            f"{r['method']:<10}{r['form']:<11}{r['K']:>3}{r['n']:>12,}{r['tensors']:>9}"
            f"{r['seconds'] * 1e3:>11.3f}{r['ratio_to_mimo']:>8.1f}x"
        )
    bench.finish(
        {
            "gamma": GAMMA,
            "mu": MU,
            "cagrad_c": DEFAULT_C,
            "mmpareto_boost": DEFAULT_BOOST,
            "check": {"rtol": RTOL, "atol_fraction_of_max": ATOL_FRACTION, "mimo_reference": "float64"},
            "results": rows,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
