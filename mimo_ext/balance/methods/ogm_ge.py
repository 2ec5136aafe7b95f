"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...masking import keep_only, per_sample_losses
from ...models import LateFusion
from .base import (
    BalanceMethod,
    BatchOutputs,
    PhaseTimer,
    StepTimes,
    deposit_grads,
    modality_parameters,
    split_parameters,
    train_uni_heads_detached,
)

__all__ = ["OgmGe", "ogm_coefficients", "ogm_scores"]

DEFAULT_ALPHA = 0.1


@torch.no_grad()
def ogm_scores(model: torch.nn.Module, out: BatchOutputs) -> Tensor:
    """``[M]`` confidence of each modality's share of the fused prediction, summed over the batch.

    Late fusion: the fusion head is linear over the concatenated features, so its logits split into per-modality
    contributions ``h_m @ W_m^T + b / M`` (``W_m``: the weight columns of modality m's block), which add up to the
    fused logits. ``score_m = sum_i softmax(contribution_m)_i[y_i]`` (Peng et al., Eq. 8; the official code's
    ``out_a`` / ``out_v``, where ``b / 2`` is ``b / M`` for M = 2).

    Other models (no linear fusion head to split): modality m's share is the model's output with only modality m
    present (the masked forward of :func:`mimo_ext.masked_losses`, here without gradient), scored the same way.

    Losses other than cross-entropy (regression): ``score_m = sum_i exp(-loss_i(share_m))``, with ``loss_i`` the
    per-sample loss; for cross-entropy that is exactly the probability of the true class, so it is the same score.
    With ``out.present``, the sum runs over the rows that have modality m.
    """
    labels = out.labels
    if isinstance(model, LateFusion):
        head = model.fusion_head
        bias = head.bias / len(out.features) if head.bias is not None else None
        shares, start = [], 0
        for h in out.features:
            h = h.detach()
            stop = start + h.shape[1]
            logits = h @ head.weight[:, start:stop].T
            if bias is not None:
                logits = logits + bias
            shares.append(logits)
            start = stop
        if start != head.weight.shape[1]:
            raise ValueError(f"features have {start} columns in all but the fusion head takes {head.weight.shape[1]}")
    else:
        shares = [model(keep_only(out.inputs, m, out.fill)) for m in range(out.num_modalities)]
    scores = []
    for m, share in enumerate(shares):
        if out.loss_fn is F.cross_entropy:
            confidence = share.softmax(dim=1).gather(1, labels.view(-1, 1))
        else:
            confidence = torch.exp(-per_sample_losses(out.loss_fn, share, labels)).view(-1, 1)
        if out.present is not None:
            confidence = torch.where(out.present[m].view(-1, 1), confidence, 0.0)
        scores.append(confidence.sum())
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

    Other fusions (no uni-modal heads; OGM-GE never optimises f_m, so it needs no masked losses for training):
    the scores come from masked forwards (:func:`ogm_scores`, M extra forwards without gradient, timed as the
    weighting subroutine), and ``k_m`` modulates the parameters that read modality m alone
    (:func:`~.base.modality_parameters`): attention fusion, token encoder m; early fusion, the columns of the first
    linear layer that read modality m (its only modality-specific parameters; the GE noise's std is that column
    block's). Everything else (the transformer, the rest of the network, the heads) gets ``grad f0`` unchanged. A
    model without such parameters raises ValueError naming it.

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

    def backward(self, model: torch.nn.Module, out: BatchOutputs, optimizer: torch.optim.Optimizer) -> StepTimes:
        timer = PhaseTimer(out.fusion_loss.device)
        active = self.modulate and model.training
        self.last_scores = self.last_coefficients = None
        if not active:
            with timer.backward():
                train_uni_heads_detached(model, out)
                out.fusion_loss.backward()
            return timer.times()
        parts = modality_parameters(model)
        if isinstance(model, LateFusion):
            split = split_parameters(model)
            params = [p for enc in split.encoders for p in enc] + split.fusion_head
        else:
            params = [p for p in model.parameters() if p.requires_grad]
        with timer.backward():
            train_uni_heads_detached(model, out)
            grads = list(torch.autograd.grad(out.fusion_loss, params, allow_unused=True, materialize_grads=False))
        with timer.weighting():
            scores = ogm_scores(model, out)
            coefficients = ogm_coefficients(scores, self.alpha)
            position = {id(p): i for i, p in enumerate(params)}
            # Parameters modulated in parts (early fusion's first layer, a column block per modality): their
            # gradient is copied once, then each part rewritten in place from its unmodulated values.
            for i in {position[id(p)] for modality_parts in parts for p, index in modality_parts if index is not ...}:
                if grads[i] is not None:
                    grads[i] = grads[i].clone()
            for m, modality_parts in enumerate(parts):
                for p, index in modality_parts:
                    i = position[id(p)]
                    g = grads[i]
                    if g is None:
                        continue
                    if index is Ellipsis:
                        grads[i] = self._modulate(g, coefficients[m])
                    else:
                        g[index] = self._modulate(g[index], coefficients[m])
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
