"""Every balancing method on models without uni-modal heads (early and attention fusion, f_m from masking), each
method's gradient against a reference built from torch.autograd.grad; forward_batch's masked and present-mask
paths; the parameter split and the per-modality parameters of each fusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mimo_ext
from mimo_ext.balance.methods import METHODS, forward_batch, make_method
from mimo_ext.balance.methods.base import modality_parameters, split_parameters
from mimo_ext.balance.methods.min_norm import min_norm_weights
from mimo_ext.masking import keep_only
from mimo_ext.models import EarlyFusion, attention_fusion_for, early_fusion_for, late_fusion_for
from mimo_ext.optim import MIMOSGD
from python_tests.references import smooth_max_weights

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


def setup(kind: str, seed: int = 0, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(n, 5, generator=g, dtype=DT), torch.randn(n, 2, 3, generator=g, dtype=DT)]
    labels = torch.randint(0, 4, (n,), generator=g)
    torch.manual_seed(seed)
    if kind == "early":
        model = early_fusion_for(inputs, 4, hidden=6, feature_dim=4)
    else:
        model = attention_fusion_for(inputs, 4, feature_dim=4, heads=2)
    return model.to(DT), inputs, labels


def params_of(model):
    return [p for p in model.parameters() if p.requires_grad]


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def objective_rows(model, inputs, labels):
    """[K, P]: each objective's gradient (f0, then the masked f_m) over every parameter, from separate forwards."""
    params = params_of(model)
    f0 = F.cross_entropy(model(inputs), labels)
    fs = [F.cross_entropy(model(keep_only(inputs, m)), labels) for m in range(len(inputs))]
    return torch.stack([flat(torch.autograd.grad(f, params)) for f in [f0, *fs]]), f0, fs


def run(method, model, inputs, labels, optimizer=None):
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad(set_to_none=True)
    out = forward_batch(model, inputs, labels, uni_losses=method.uses_uni_losses)
    method.backward(model, out, optimizer)
    return out


def grad_of(model):
    return flat([p.grad for p in params_of(model)])


KINDS = ["early", "attention"]


@pytest.mark.parametrize("kind", KINDS)
def test_forward_batch_masks_models_without_heads(kind):
    model, inputs, labels = setup(kind)
    out = forward_batch(model, inputs, labels)
    assert out.features is None and out.num_modalities == 2
    f0, f = mimo_ext.masked_losses(model, inputs, labels, F.cross_entropy, batched=False)
    torch.testing.assert_close(out.fusion_loss, f0)
    torch.testing.assert_close(torch.stack(out.uni_losses), torch.stack(f))
    torch.testing.assert_close(out.fused_logits, model(inputs))
    torch.testing.assert_close(out.uni_logits[1], model(keep_only(inputs, 1)))
    # Methods that do not optimise f_m: one forward, no masked losses.
    plain = forward_batch(model, inputs, labels, uni_losses=False)
    assert plain.uni_losses == [] and plain.uni_logits == []
    torch.testing.assert_close(plain.fusion_loss, f0)


def test_forward_batch_present_masks_on_late_fusion():
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(6, 5, generator=g, dtype=DT), torch.randn(6, 3, generator=g, dtype=DT)]
    labels = torch.randint(0, 3, (6,), generator=g)
    model = late_fusion_for(inputs, 3, feature_dim=4).to(DT)
    present = [torch.tensor([1, 1, 1, 0, 0, 1]).bool(), torch.zeros(6, dtype=torch.bool)]
    nan_inputs = [x.clone() for x in inputs]
    nan_inputs[0][~present[0]] = float("nan")
    nan_inputs[1][:] = float("nan")
    out = forward_batch(model, nan_inputs, labels, present=present)
    filled = [torch.where(p.view(-1, 1), x, 0.0) for x, p in zip(inputs, present, strict=True)]
    fused, uni = model(filled)
    rows = present[0] | present[1]
    torch.testing.assert_close(out.fusion_loss, F.cross_entropy(fused[rows], labels[rows]))
    torch.testing.assert_close(out.uni_losses[0], F.cross_entropy(uni[0][present[0]], labels[present[0]]))
    assert out.uni_losses[1].item() == 0.0  # no row has modality 1: a zero that adds nothing
    loss = mimo_ext.mimo_loss(out.fusion_loss, out.uni_losses)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("kind", KINDS)
def test_everything_is_shared_without_heads(kind):
    model, inputs, labels = setup(kind)
    split = split_parameters(model)
    assert split.encoders == [] and split.fusion_head == [] and split.uni_heads == [[], []]
    assert [id(p) for p in split.shared] == [id(p) for p in params_of(model)]
    assert [objectives for _, objectives in split.blocks()] == [(0, 1, 2)]
    with pytest.raises(ValueError, match="pass num_modalities"):
        split_parameters(nn.Linear(3, 2))
    assert split_parameters(nn.Linear(3, 2), num_modalities=3).num_modalities == 3


@pytest.mark.parametrize("kind", KINDS)
def test_single_backward_methods_match_autograd_of_their_loss(kind):
    model, inputs, labels = setup(kind)
    params = params_of(model)
    rows, f0, fs = objective_rows(model, inputs, labels)
    w = smooth_max_weights(torch.stack(fs).detach(), 0.2)
    expected = {
        "joint": rows[0],
        "uniform": rows.sum(0),
        "mimo": rows[0] + 0.7 * (w @ rows[1:]),
    }
    for name, want in expected.items():
        method = make_method(name, gamma=0.7, mu=0.2) if name == "mimo" else make_method(name)
        out = run(method, model, inputs, labels)
        assert (out.uni_losses == []) == (name == "joint")
        torch.testing.assert_close(grad_of(model), want, msg=lambda m, name=name: f"{name}: {m}")
        assert len(params) == len([p for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("kind", KINDS)
def test_mimo_fused_equals_mimo_without_heads(kind):
    (model_a, inputs, labels), (model_b, _, _) = setup(kind), setup(kind)
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.05)
    opt_b = MIMOSGD(model_b.parameters(), lr=0.05, gamma=0.7, mu=0.2)
    mimo, fused = make_method("mimo", gamma=0.7, mu=0.2), make_method("mimo_fused", gamma=0.7, mu=0.2)
    for _ in range(2):
        for method, model, opt in ((mimo, model_a, opt_a), (fused, model_b, opt_b)):
            run(method, model, inputs, labels, opt)
            opt.step()
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["mgda", "pcgrad", "cagrad"])
def test_gram_methods_combine_every_parameter(kind, name):
    model, inputs, labels = setup(kind)
    rows, _, _ = objective_rows(model, inputs, labels)
    method = make_method(name, generator=torch.Generator().manual_seed(3)) if name == "pcgrad" else make_method(name)
    run(method, model, inputs, labels)
    coefficients = method.last_weights if name == "mgda" else method.last_coefficients
    assert coefficients.shape == (3,)
    torch.testing.assert_close(grad_of(model), coefficients.to(DT) @ rows)
    if name == "mgda":
        gram = (rows @ rows.T).to(torch.float64)
        torch.testing.assert_close(coefficients, min_norm_weights(gram), atol=1e-7, rtol=0)


def mmpareto_reference(rows: torch.Tensor, spans, boost=1.5) -> torch.Tensor:
    k = rows.shape[0]
    gram = rows @ rows.T
    norms = gram.diagonal().sqrt()
    cos = gram / torch.outer(norms, norms)
    agree = all(cos[i, j] > 0 for i in range(k) for j in range(k) if i != j)
    a = torch.full((k,), 1.0 / k, dtype=DT) if agree else min_norm_weights(gram)
    direction = k * (a @ rows)
    total = rows.sum(0)
    out = direction.clone()
    for lo, hi in spans:
        new, want = direction[lo:hi], total[lo:hi]
        factor = want.norm() / new.norm() if 0 < new.norm() < want.norm() else 1.0
        out[lo:hi] = new * factor * boost
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mmpareto_on_one_shared_block_of_all_objectives(kind, seed):
    model, inputs, labels = setup(kind, seed=seed)
    rows, _, _ = objective_rows(model, inputs, labels)
    spans, start = [], 0
    for p in params_of(model):
        spans.append((start, start + p.numel()))
        start += p.numel()
    method = make_method("mmpareto")
    run(method, model, inputs, labels)
    torch.testing.assert_close(grad_of(model), mmpareto_reference(rows, spans))
    assert method.last_cosines.shape == (3, 3) and method.last_weights.shape == (3,)


def test_mmpareto_many_objectives_reduces_to_the_sum_when_they_agree():
    rows = torch.tensor([[1.0, 0.5], [0.8, 0.1], [0.2, 0.9]], dtype=DT)
    out = torch.empty(2, dtype=DT)
    make_method("mmpareto")._many(rows, out)
    torch.testing.assert_close(out, rows.sum(0))
    conflicting = torch.tensor([[1.0, 0.0], [-1.0, 0.2], [0.0, 1.0]], dtype=DT)
    cos, a = make_method("mmpareto")._many(conflicting, out)
    torch.testing.assert_close(a, min_norm_weights(conflicting @ conflicting.T))
    torch.testing.assert_close(out, 3 * a @ conflicting)


def test_ogm_on_attention_fusion_modulates_each_token_encoder():
    model, inputs, labels = setup("attention")
    rows, _, _ = objective_rows(model, inputs, labels)
    method = make_method("ogm_ge", alpha=0.5, ge=False)
    model.train()
    run(method, model, inputs, labels)
    with torch.no_grad():
        expected_scores = torch.stack(
            [model(keep_only(inputs, m)).softmax(1)[torch.arange(8), labels].sum() for m in range(2)]
        )
    torch.testing.assert_close(method.last_scores, expected_scores)
    k = method.last_coefficients
    scale = []
    for p in params_of(model):
        owner = [m for m, enc in enumerate(model.encoders) if any(p is q for q in enc.parameters())]
        scale.append(torch.full((p.numel(),), k[owner[0]].item() if owner else 1.0, dtype=DT))
    torch.testing.assert_close(grad_of(model), rows[0] * torch.cat(scale))


def test_ogm_on_early_fusion_modulates_the_first_layer_columns():
    model, inputs, labels = setup("early", seed=1)
    rows, _, _ = objective_rows(model, inputs, labels)
    method = make_method("ogm_ge", alpha=2.0, ge=False)
    run(method, model, inputs, labels)
    k = method.last_coefficients
    assert (k < 1).sum().item() == 1  # the more confident modality is slowed
    first = model.network[0].weight
    expected = rows[0].clone()
    start = 0
    for p in params_of(model):
        if p is first:
            block = expected[start : start + p.numel()].view_as(p)
            block[:, :5] *= k[0]
            block[:, 5:] *= k[1]
        start += p.numel()
    torch.testing.assert_close(grad_of(model), expected)


def test_ogm_ge_noise_on_column_blocks_uses_the_block_std():
    model, inputs, labels = setup("early")
    rows, _, _ = objective_rows(model, inputs, labels)
    method = make_method("ogm_ge", alpha=0.3, generator=torch.Generator().manual_seed(5))
    run(method, model, inputs, labels)
    k = method.last_coefficients
    g = rows[0][: model.network[0].weight.numel()].view_as(model.network[0].weight)
    generator = torch.Generator().manual_seed(5)
    expected = g.clone()
    for m, cols in enumerate(model.input_columns()):
        part = g[:, cols]
        noise = torch.randn(part.shape, generator=generator, dtype=DT) * (part.std() + 1e-8)
        expected[:, cols] = part * k[m] + noise
    torch.testing.assert_close(model.network[0].weight.grad, expected)


def test_ogm_refuses_models_without_per_modality_parameters():
    model, inputs, labels = setup("early")
    custom = EarlyFusion(model.input_dims, nn.Sequential(nn.Tanh(), nn.Linear(11, 4)), 4, 4).to(DT)
    with pytest.raises(ValueError, match="early fusion: no per-modality parameters"):
        run(make_method("ogm_ge"), custom, inputs, labels)

    class Plain(nn.Module):
        num_modalities = 2

        def __init__(self):
            super().__init__()
            self.net = nn.Linear(11, 4)

        def forward(self, xs):
            return self.net(torch.cat([x.flatten(1) for x in xs], 1))

    with pytest.raises(ValueError, match="Plain: no per-modality parameters known"):
        modality_parameters(Plain())
    # The other methods need nothing but the masked losses: they run on any model.
    plain = Plain().to(DT)
    for name in ("uniform", "mgda", "mmpareto", "mimo"):
        run(make_method(name), plain, inputs, labels)
        assert all(torch.isfinite(p.grad).all() for p in plain.parameters())


@pytest.mark.parametrize("name", [n for n in METHODS if n != "mimo_fused"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_method_trains_without_heads_and_with_missing_rows(kind, name):
    model, inputs, labels = setup(kind, n=12)
    present = [torch.ones(12, dtype=torch.bool), torch.tensor([True, False] * 6)]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    method = make_method(name)
    for _ in range(2):
        opt.zero_grad()
        out = forward_batch(model, inputs, labels, present=present, uni_losses=method.uses_uni_losses)
        method.backward(model, out, opt)
        assert all(torch.isfinite(p.grad).all() for p in params_of(model))
        opt.step()
    assert all(np.isfinite(p.detach().numpy()).all() for p in model.parameters())
    assert not math.isnan(out.fusion_loss.item())
