"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...models import LateFusion
from .base import (
    BalanceMethod,
    BatchOutputs,
    PhaseTimer,
    StepTimes,
    deposit_grads,
    split_parameters,
    train_uni_heads_detached,
)

__all__ = ["OgmGe", "ogm_coefficients", "ogm_scores"]

DEFAULT_ALPHA = 0.1


@torch.no_grad()
def ogm_scores(model: LateFusion, out: BatchOutputs) -> Tensor:
    """``[M]`` confidence of each modality's share of the fused prediction, summed over the batch.

    The fusion head is linear over the concatenated features, so its logits split into per-modality
    contributions ``h_m @ W_m^T + b / M`` (``W_m``: the weight columns of modality m's block), which add up to the
    fused logits. ``score_m = sum_i softmax(contribution_m)_i[y_i]`` (Peng et al., Eq. 8; the official code's
    ``out_a`` / ``out_v``, where ``b / 2`` is ``b / M`` for M = 2).
    """
    head = model.fusion_head
    bias = head.bias / len(out.features) if head.bias is not None else None
    scores, start = [], 0
    for h in out.features:
        h = h.detach()
        stop = start + h.shape[1]
        logits = h @ head.weight[:, start:stop].T
        if bias is not None:
            logits = logits + bias
        probs = logits.softmax(dim=1)
        scores.append(probs.gather(1, out.labels.view(-1, 1)).sum())
        start = stop
    if start != head.weight.shape[1]:
        raise ValueError(f"features have {start} columns in all but the fusion head takes {head.weight.shape[1]}")
    return torch.stack(scores)


def ogm_coefficients(scores: Tensor, alpha: float) -> Tensor:
    """``[M]`` modulation coefficients from the modalities' scores.

    Paper (Peng et al., CVPR 2022, Eq. 9-10) and official code, for two modalities: ``rho_u = s_u / s_other`` and
    ``k_u = 1 - tanh(alpha * rho_u)`` if ``rho_u > 1``, else 1. Generalised to M > 2 one-vs-others:
    ``rho_m = s_m / mean_{j != m} s_j`` (for M = 2 exactly the paper's ratio).

    Note ``tanh(alpha * rho)``, not ``tanh(alpha * (rho - 1))``: as in the paper and the official code
    (``1 - tanh(alpha * relu(ratio))``), the coefficient jumps from 1 to ``1 - tanh(alpha)`` as ``rho`` crosses 1.
    At an exact tie (``rho = 1``) nothing is modulated (the paper's "else" branch; the official code would
    modulate audio there, an asymmetry of its if/else).
    """
    m = scores.numel()
    if m < 2:
        raise ValueError(f"OGM needs at least 2 modalities, got {m} scores")
    others = (scores.sum() - scores) / (m - 1)
    ratio = scores / others.clamp_min(torch.finfo(scores.dtype).tiny)
    return torch.where(ratio > 1, 1 - torch.tanh(alpha * ratio), torch.ones_like(ratio))


class OgmGe(BalanceMethod):
    """OGM-GE (Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient Modulation", CVPR 2022;
    official code github.com/GeWu-Lab/OGM-GE_CVPR2022, ``main.py``).

    One backward pass of the fusion loss f0; then, per modality, the gradient of every parameter of encoder m is
    multiplied by ``k_m`` (:func:`ogm_coefficients` of :func:`ogm_scores`): the modality whose share of the fused
    prediction is most confident is slowed down. With GE, Gaussian noise is added as in the official code,
    ``grad <- grad * k_m + N(0, (std(grad) + 1e-8)^2)``, with ``std`` the (unbiased) standard deviation of that
    parameter's unmodulated gradient, for every modality (k = 1 included). The fusion head gets ``grad f0``
    unchanged; the uni-modal heads are trained on detached features (:func:`~.base.train_uni_heads_detached`).

    Choices where the official code is specific to its ResNet audio-visual models:

    - It modulates only 4-D gradients (convolution kernels). Here every parameter of encoder m is modulated: the
      encoders here may have no convolutions at all (MLP encoders), and the method's intent is to slow the whole
      encoder of the dominant modality.
    - Modulation runs only during its window of epochs (default: epochs 0 to 50 of 100). Here it runs when
      ``model.training`` is true and the attribute :attr:`modulate` is true; a training loop sets
      ``method.modulate = False`` to end the window. Otherwise the method is plain joint training.

    Args:
        alpha: modulation strength; default 0.1, the README's "default modulation setting" (its Tips recommend 0.1
            for VGGSound and 0.8 for CREMA-D; the paper tunes it per dataset).
        ge: add the generalisation-enhancement noise (False: OGM alone, ``grad * k_m`` exactly).
        generator: random generator for the noise, on the parameters' device (None: the global one).

    After each call, ``last_scores`` and ``last_coefficients`` hold the ``[M]`` scores and coefficients used
    (None when modulation was off).
    """

    name = "ogm_ge"
    uses_uni_losses = False

    def __init__(self, alpha: float = DEFAULT_ALPHA, ge: bool = True, generator: torch.Generator | None = None) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.ge = bool(ge)
        self.generator = generator
        self.modulate = True
        self.last_scores: Tensor | None = None
        self.last_coefficients: Tensor | None = None

    def backward(self, model: LateFusion, out: BatchOutputs, optimizer: torch.optim.Optimizer) -> StepTimes:
        timer = PhaseTimer(out.fusion_loss.device)
        active = self.modulate and model.training
        self.last_scores = self.last_coefficients = None
        if not active:
            with timer.backward():
                train_uni_heads_detached(model, out)
                out.fusion_loss.backward()
            return timer.times()
        split = split_parameters(model)
        encoders = split.encoders
        params = [p for enc in encoders for p in enc] + split.fusion_head
        with timer.backward():
            train_uni_heads_detached(model, out)
            grads = list(torch.autograd.grad(out.fusion_loss, params, allow_unused=True, materialize_grads=False))
        with timer.weighting():
            scores = ogm_scores(model, out)
            coefficients = ogm_coefficients(scores, self.alpha)
            index = 0
            for m, enc in enumerate(encoders):
                for _ in enc:
                    g = grads[index]
                    if g is not None:
                        grads[index] = self._modulate(g, coefficients[m])
                    index += 1
            deposit_grads(params, grads)
            self.last_scores, self.last_coefficients = scores, coefficients
        return timer.times()

    def _modulate(self, grad: Tensor, k: Tensor) -> Tensor:
        out = grad * k.to(grad.dtype)
        if self.ge:
            std = grad.std() if grad.numel() > 1 else grad.new_zeros(())
            noise = torch.randn(grad.shape, generator=self.generator, device=grad.device, dtype=grad.dtype)
            out = out + noise * (std + 1e-8)
        return out
