"""CAGrad: the update that maximises the worst objective's improvement within a ball around the average gradient."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .base import BalanceMethod, BatchOutputs, StepTimes
from .gradients import combine_by_gram

__all__ = ["CAGrad", "cagrad_coefficients", "cagrad_dual_weights"]

DEFAULT_C = 0.5


def _project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the probability simplex (sort-based; Duchi et al., ICML 2008)."""
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1.0
    ks = np.arange(1, v.size + 1)
    rho = np.nonzero(u - cumulative / ks > 0)[0][-1]
    return np.maximum(v - cumulative[rho] / (rho + 1.0), 0.0)


def cagrad_dual_weights(gram: Tensor, c: float = DEFAULT_C, *, max_iter: int = 300, tol: float = 1e-12) -> Tensor:
    """The dual weights ``w`` of CAGrad: the minimiser over the simplex of
    ``F(w) = <g_w, g_0> + sqrt(phi) * ||g_w||`` with ``g_w = sum_k w_k g_k``, ``g_0`` the average gradient and
    ``sqrt(phi) = c * ||g_0||`` (Liu et al., the dual of their Eq. 4; their code minimises the same ``objfn`` with
    scipy's SLSQP from ``w = 1/K``).

    Solved here without scipy: accelerated projected gradient (FISTA with backtracking and a restart whenever ``F``
    increases; simplex projection of Duchi et al., ICML 2008) from ``w = 1/K``, on the Gram matrix scaled to unit
    mean diagonal (same minimiser), in float64 on the host. It stops after 3 consecutive iterations that lower
    ``F`` by less than ``tol`` (relative), or after ``max_iter``. ``F`` is convex, so this is the global minimum;
    the tests check it against a grid search of the simplex.

    Returns ``w`` (``[K]``) with the dtype and device of ``gram``.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"gram must be a non-empty square matrix, got shape {tuple(gram.shape)}")
    k = gram.shape[0]
    a = gram.detach().to("cpu", torch.float64).numpy()
    uniform = np.full(k, 1.0 / k)
    if not np.isfinite(a).all():
        raise ValueError("gram has non-finite entries")
    scale = float(np.mean(np.diag(a)))
    if scale <= 0 or k == 1:
        return torch.as_tensor(uniform).to(gram.device, gram.dtype)
    a = a / scale
    a_b = a @ uniform  # <g_k, g_0> for each k
    radius = c * math.sqrt(max(float(uniform @ a_b), 0.0))
    eps = 1e-12  # keeps the gradient finite where g_w = 0 (scaled units)

    def value_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        a_w = a @ w
        norm = math.sqrt(max(float(w @ a_w), 0.0) + eps)
        return float(w @ a_b) + radius * norm, a_b + (radius / norm) * a_w

    x, y, t = uniform, uniform, 1.0
    f_x = value_and_grad(x)[0]
    lipschitz, small = 1.0, 0
    for _ in range(max_iter):
        f_y, g_y = value_and_grad(y)
        while True:
            candidate = _project_simplex(y - g_y / lipschitz)
            delta = candidate - y
            f_new = value_and_grad(candidate)[0]
            if f_new <= f_y + float(g_y @ delta) + 0.5 * lipschitz * float(delta @ delta) + 1e-15:
                break
            lipschitz *= 2.0
        if f_new > f_x:  # momentum overshot: restart from the best point
            y, t = x, 1.0
            continue
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = candidate + ((t - 1.0) / t_next) * (candidate - x)
        small = small + 1 if f_x - f_new <= tol * max(1.0, abs(f_new)) else 0
        x, f_x, t = candidate, f_new, t_next
        lipschitz *= 0.9
        if small >= 3:
            break
    return torch.as_tensor(x).to(gram.device, gram.dtype)


def cagrad_coefficients(
    gram: Tensor, c: float = DEFAULT_C, rescale: bool = True, match_sum: bool = True
) -> tuple[Tensor, Tensor]:
    """``([K] coefficients, [K] dual weights)``: ``sum_k coefficient_k g_k`` is CAGrad's update direction.

    With ``w`` from :func:`cagrad_dual_weights`, the paper's update (Algorithm 1) is
    ``d = g_0 + (sqrt(phi) / ||g_w||) g_w``, ``sqrt(phi) = c ||g_0||``, ``g_0`` the average gradient. As in the
    reference code (``cagrad()`` then ``overwrite_grad()`` in ``nyuv2/``):

    - ``rescale``: divide by ``1 + c^2`` (their default ``rescale=1``; False is their ``rescale=0``);
    - ``match_sum``: multiply by K, "to match the sum loss", so that with ``c = 0`` the update is the gradient of
      ``sum_k f_k`` (the uniform baseline) and learning rates are comparable; False keeps the paper's average.

    In coefficients: ``(1/K + lambda * w) * (K if match_sum) / (1 + c^2 if rescale)`` with
    ``lambda = c ||g_0|| / ||g_w||`` (0 when ``g_w = 0``, where the reference adds 1e-8 to the denominator instead).
    """
    k = gram.shape[0]
    host = gram.detach().to("cpu", torch.float64)
    w = cagrad_dual_weights(host, c).to(torch.float64)
    g0_norm = math.sqrt(max(float(host.mean()), 0.0))
    gw_norm = math.sqrt(max(float(w @ host @ w), 0.0))
    lam = c * g0_norm / gw_norm if gw_norm > 0 else 0.0
    coefficients = torch.full((k,), 1.0 / k, dtype=torch.float64) + lam * w
    if rescale:
        coefficients = coefficients / (1 + c * c)
    if match_sum:
        coefficients = coefficients * k
    return coefficients.to(gram.device, gram.dtype), w.to(gram.device, gram.dtype)


class CAGrad(BalanceMethod):
    """CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021; reference
    code github.com/Cranial-XIX/CAGrad, ``cagrad()`` in ``nyuv2/``) over the K = M + 1 objectives.

    The objectives' encoder gradients (:func:`~.gradients.objective_gradients`) are combined by
    :func:`cagrad_coefficients`; heads get their own objective's gradient (task-specific parameters, as in the
    reference code, where only the shared modules receive the CAGrad direction).

    Args:
        c: radius of the ball around the average gradient, relative to its norm (default 0.5, the default of the
            reference ``cagrad(grads, alpha=0.5, rescale=1)``; their NYUv2 script runs 0.4). 0 gives the average
            gradient (times K with ``match_sum``).
        rescale: divide the update by ``1 + c^2`` (the reference code's default).
        match_sum: multiply the update by K as the reference code does, so that ``c = 0`` gives the uniform
            baseline's gradient ``sum_k g_k`` (False: the paper's average-gradient scale).

    Without uni-modal heads (early, attention fusion) the f_m are the masked losses (:func:`mimo_ext.masked_losses`);
    every parameter is shared, so the direction is formed over all of them.

    After each call ``last_weights`` holds the dual weights ``w`` and ``last_coefficients`` the ``[K]``
    coefficients (float64, host).
    """

    name = "cagrad"
    uses_uni_losses = True

    def __init__(self, c: float = DEFAULT_C, rescale: bool = True, match_sum: bool = True) -> None:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0:
            raise ValueError(f"c must be a finite number >= 0, got {c!r}")
        self.c = float(c)
        self.rescale = bool(rescale)
        self.match_sum = bool(match_sum)
        self.last_weights: Tensor | None = None
        self.last_coefficients: Tensor | None = None

    def backward(self, model: torch.nn.Module, out: BatchOutputs, optimizer: torch.optim.Optimizer) -> StepTimes:
        def solve(gram: Tensor) -> Tensor:
            coefficients, self.last_weights = cagrad_coefficients(gram, self.c, self.rescale, self.match_sum)
            return coefficients

        times, self.last_coefficients = combine_by_gram(model, out, solve)
        return times
