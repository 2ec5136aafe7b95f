"""The minimum-norm point of the convex hull of K gradients, from their Gram matrix (MGDA's subproblem).

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018, Section 3.2: find
``alpha`` on the simplex minimising ``|| sum_k alpha_k g_k ||^2 = alpha^T M alpha`` with ``M = G G^T``.

- K = 2: the closed form of their Algorithm 1, ``c = clamp((v22 - v12) / (v11 + v22 - 2 v12), 0, 1)``.
- K > 2, ``solver="wolfe"`` (default): Wolfe's min-norm-point algorithm (P. Wolfe, "Finding the nearest point in a
  polytope", Math. Programming 11, 1976), an active-set method that terminates with the exact minimiser after a
  few affine solves of size <= K + 1. Sener & Koltun use Frank-Wolfe, which only approaches the optimum (slowly
  when two gradients are nearly parallel: 1000 iterations can stay 1e-5 away); Wolfe's method gives their
  problem's exact answer, and is faster for the K (<= 16) of multi-modal training.
- K > 2, ``solver="frank_wolfe"``: the paper's Algorithm 2 as in their reference code
  (``MinNormSolver.find_min_norm_element_FW``): start at the best pair's solution, Frank-Wolfe steps with the
  K = 2 closed form as exact line search, stop when the weights move by less than ``tol`` (L1; default 1e-5) or
  after ``max_iter`` (default 250) iterations.

Differences from the reference code, deliberate: the K = 2 solution is clamped to exactly [0, 1] (theirs returns
0.999 / 0.001 at the ends, which is not the minimiser), and two identical gradients (zero denominator) get the
weights (0.5, 0.5) (any weights give the same point).

Everything works on the K x K Gram matrix only, on the host in float64 (one copy of K^2 numbers, no device work
per iteration).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["min_norm_2", "min_norm_weights"]

Solver = Literal["wolfe", "frank_wolfe"]
FRANK_WOLFE_MAX_ITER = 250
FRANK_WOLFE_TOL = 1e-5


def min_norm_2(v11: Tensor, v12: Tensor, v22: Tensor) -> Tensor:
    """Weight ``c`` on the first vector minimising ``|| c x1 + (1 - c) x2 ||^2``, from ``v11 = <x1, x1>``,
    ``v12 = <x1, x2>``, ``v22 = <x2, x2>`` (tensors of any matching shape, on any device: no host sync).

    ``c = clamp((v22 - v12) / (v11 + v22 - 2 v12), 0, 1)``, and 0.5 when ``x1 == x2``.
    """
    denom = v11 + v22 - 2 * v12
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, ((v22 - v12) / safe).clamp(0, 1), torch.full_like(denom, 0.5))


def _min_norm_2_float(v11: float, v12: float, v22: float) -> float:
    denom = v11 + v22 - 2 * v12
    if denom <= 0:
        return 0.5
    return min(max((v22 - v12) / denom, 0.0), 1.0)


def _best_pair(gram: np.ndarray) -> np.ndarray:
    k = gram.shape[0]
    best, weights = np.inf, np.full(k, 1.0 / k)
    for i in range(k):
        for j in range(i + 1, k):
            c = _min_norm_2_float(gram[i, i], gram[i, j], gram[j, j])
            value = c * c * gram[i, i] + 2 * c * (1 - c) * gram[i, j] + (1 - c) ** 2 * gram[j, j]
            if value < best:
                best, weights = value, np.zeros(k)
                weights[i], weights[j] = c, 1 - c
    return weights


def _frank_wolfe(gram: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    weights = _best_pair(gram)
    for _ in range(max_iter):
        m_alpha = gram @ weights
        t = int(np.argmin(m_alpha))  # the vertex with the most negative directional derivative
        c = _min_norm_2_float(float(weights @ m_alpha), float(m_alpha[t]), float(gram[t, t]))
        new = c * weights
        new[t] += 1 - c
        change = float(np.abs(new - weights).sum())
        weights = new
        if change < tol:
            break
    return weights


def _affine_minimiser(gram: np.ndarray, support: list[int]) -> np.ndarray:
    """Weights (summing to 1) of the min-norm point of the affine hull of the support's gradients: the KKT system
    ``[M_SS 1; 1^T 0] [mu; nu] = [0; 1]``, by least squares (minimum-norm solution when gradients coincide)."""
    r = len(support)
    kkt = np.zeros((r + 1, r + 1))
    kkt[:r, :r] = gram[np.ix_(support, support)]
    kkt[:r, r] = kkt[r, :r] = 1.0
    rhs = np.zeros(r + 1)
    rhs[r] = 1.0
    return np.linalg.lstsq(kkt, rhs, rcond=None)[0][:r]


def _wolfe(gram: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    k = gram.shape[0]
    diag = np.diag(gram)
    scale = max(float(diag.max()), np.finfo(np.float64).tiny)
    support = [int(np.argmin(diag))]
    weights = np.zeros(k)
    weights[support[0]] = 1.0
    for _ in range(max_iter):
        # Major cycle: stop when no gradient g_j has <x, g_j> < <x, x> (x the current point), else add the best.
        m_w = gram @ weights
        j = int(np.argmin(m_w))
        if float(weights @ m_w) - float(m_w[j]) <= tol * scale or j in support:
            break
        support.append(j)
        while True:
            # Minor cycle: move toward the affine minimiser of the support; drop the vertices that would go negative.
            mu = _affine_minimiser(gram, support)
            if (mu > 0).all():
                weights = np.zeros(k)
                weights[support] = mu
                break
            current = weights[support]
            negative = np.nonzero(mu <= 0)[0]
            denom = current[negative] - mu[negative]  # >= 0; 0 only for a new vertex whose mu is exactly 0
            ratios = np.where(denom > 0, current[negative] / np.where(denom > 0, denom, 1.0), 0.0)
            step = float(ratios.min())
            moved = current + step * (mu - current)
            moved[negative[np.argmin(ratios)]] = 0.0
            weights = np.zeros(k)
            weights[support] = np.maximum(moved, 0.0)
            support = [i for i in support if weights[i] > 0]
        if j not in support:  # the new vertex was dropped at once: no further progress in floating point
            break
    weights = np.maximum(weights, 0.0)
    return weights / weights.sum()


def min_norm_weights(
    gram: Tensor, *, solver: Solver = "wolfe", max_iter: int | None = None, tol: float | None = None
) -> Tensor:
    """Weights ``alpha`` (``[K]``, on the simplex) of the minimum-norm point of the convex hull of K gradients.

    Args:
        gram: ``[K, K]`` Gram matrix ``M[i, j] = <g_i, g_j>`` (symmetric positive semi-definite).
        solver: ``"wolfe"`` (exact, default) or ``"frank_wolfe"`` (the reference code's solver); see the module
            docstring. K <= 2 uses the closed form either way.
        max_iter: iteration limit (default 1000 major cycles for Wolfe, 250 for Frank-Wolfe).
        tol: Wolfe: stop when the duality gap ``<x, x> - min_j <x, g_j>`` is below ``tol * max_k ||g_k||^2``
            (default 1e-12); Frank-Wolfe: stop when the weights move by less than ``tol`` in L1 (default 1e-5).

    Returns:
        ``alpha`` with the dtype and device of ``gram``; ``sum_k alpha_k g_k`` is the min-norm point.

    Example:
        >>> min_norm_weights(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))  # g1 = (1, 0), g2 = (0, 2)
        tensor([0.8000, 0.2000])
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"gram must be a non-empty square matrix, got shape {tuple(gram.shape)}")
    if not gram.is_floating_point():
        raise TypeError(f"gram must be floating point, got {gram.dtype}")
    if solver not in ("wolfe", "frank_wolfe"):
        raise ValueError(f"solver must be 'wolfe' or 'frank_wolfe', got {solver!r}")
    k = gram.shape[0]
    host = gram.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(host).all():
        raise ValueError("gram has non-finite entries")
    if k == 1:
        weights = np.ones(1)
    elif k == 2:
        c = _min_norm_2_float(float(host[0, 0]), float(host[0, 1]), float(host[1, 1]))
        weights = np.array([c, 1 - c])
    elif solver == "wolfe":
        weights = _wolfe(host, 1000 if max_iter is None else max_iter, 1e-12 if tol is None else tol)
    else:
        weights = _frank_wolfe(
            host,
            FRANK_WOLFE_MAX_ITER if max_iter is None else max_iter,
            FRANK_WOLFE_TOL if tol is None else tol,
        )
    return torch.as_tensor(weights, dtype=torch.float64).to(gram.device, gram.dtype)
