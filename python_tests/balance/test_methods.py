"""The balancing methods (mimo_ext.balance.methods): solvers in closed form or against brute force, each method's
gradient against a reference built from torch.autograd.grad, and the shared interface."""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mimo_ext
from mimo_ext.balance import methods
from mimo_ext.balance.methods import METHODS, BatchOutputs, StepTimes, forward_batch, make_method, min_norm, spec
from mimo_ext.balance.methods.cagrad import cagrad_coefficients, cagrad_dual_weights
from mimo_ext.balance.methods.min_norm import min_norm_2, min_norm_weights
from mimo_ext.balance.methods.ogm_ge import ogm_coefficients, ogm_scores
from mimo_ext.balance.methods.pcgrad import pcgrad_coefficients
from mimo_ext.models import LateFusionMLP
from mimo_ext.optim import MIMOSGD

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


def tiny_setup(seed: int = 0, dims=(5, 3), dtype=torch.float64):
    torch.manual_seed(seed)
    model = LateFusionMLP(list(dims), num_classes=4, hidden=6, feature_dim=4).to(dtype)
    inputs = [torch.randn(8, d, dtype=dtype) for d in dims]
    labels = torch.randint(0, 4, (8,))
    return model, inputs, labels


def encoder_params(model) -> list[list[torch.Tensor]]:
    return [list(e.parameters()) for e in model.encoders]


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def reference_grads(model, inputs, labels):
    """Per objective (f0, f1..fM), its gradient over the concatenated encoder parameters (zeros where it does not
    reach), plus each head's own gradient."""
    out = forward_batch(model, inputs, labels)
    enc = [p for ps in encoder_params(model) for p in ps]
    rows = []
    for f in [out.fusion_loss, *out.uni_losses]:
        grads = torch.autograd.grad(f, enc, retain_graph=True, allow_unused=True)
        rows.append(flat([torch.zeros_like(p) if g is None else g for p, g in zip(enc, grads, strict=True)]))
    fusion = torch.autograd.grad(out.fusion_loss, list(model.fusion_head.parameters()), retain_graph=True)
    uni = [
        torch.autograd.grad(f, list(h.parameters()), retain_graph=True)
        for f, h in zip(out.uni_losses, model.uni_heads, strict=True)
    ]
    return torch.stack(rows), fusion, uni


def run_method(method, model, inputs, labels, optimizer=None):
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad(set_to_none=True)
    times = method.backward(model, forward_batch(model, inputs, labels), optimizer)
    return times


def assert_heads_own_grads(model, fusion, uni):
    for p, g in zip(model.fusion_head.parameters(), fusion, strict=True):
        torch.testing.assert_close(p.grad, g)
    for head, grads in zip(model.uni_heads, uni, strict=True):
        for p, g in zip(head.parameters(), grads, strict=True):
            torch.testing.assert_close(p.grad, g)


def encoder_grad(model) -> torch.Tensor:
    return flat([p.grad for ps in encoder_params(model) for p in ps])


def exact_min_norm(gram: np.ndarray) -> tuple[float, np.ndarray]:
    """Brute force over the simplex's faces: the affine minimiser of every support, the best feasible one."""
    k = gram.shape[0]
    best = (math.inf, None)
    for r in range(1, k + 1):
        for support in itertools.combinations(range(k), r):
            s = list(support)
            kkt = np.zeros((r + 1, r + 1))
            kkt[:r, :r] = gram[np.ix_(s, s)]
            kkt[:r, r] = kkt[r, :r] = 1
            rhs = np.zeros(r + 1)
            rhs[r] = 1
            w_s = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:r]
            if (w_s >= -1e-12).all() and abs(w_s.sum() - 1) < 1e-9:
                w = np.zeros(k)
                w[s] = w_s
                if w @ gram @ w < best[0]:
                    best = (float(w @ gram @ w), w)
    return best


def simplex_grid(n: int) -> np.ndarray:
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = i + j <= n
    return np.stack([i[keep], j[keep], n - i[keep] - j[keep]], axis=1) / n


# ---- min-norm solver


@pytest.mark.parametrize("solver", ["wolfe", "frank_wolfe"])
def test_min_norm_orthogonal_pair_is_inverse_square_norms(solver):
    gram = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)  # g1 = (1, 0), g2 = (0, 2)
    torch.testing.assert_close(min_norm_weights(gram, solver=solver), torch.tensor([0.8, 0.2], dtype=torch.float64))
    # Three orthogonal gradients: alpha_k proportional to 1 / ||g_k||^2.
    gram3 = torch.diag(torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64))
    expected = torch.tensor([1.0, 0.25, 4.0], dtype=torch.float64) / 5.25
    tol = {"wolfe": 1e-12, "frank_wolfe": 1e-3}[solver]
    torch.testing.assert_close(min_norm_weights(gram3, solver=solver), expected, atol=tol, rtol=0)


@pytest.mark.parametrize("solver", ["wolfe", "frank_wolfe"])
@pytest.mark.parametrize("k", [2, 3])
def test_min_norm_identical_gradients_give_that_gradient(solver, k):
    g = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64).repeat(k, 1)
    alpha = min_norm_weights(g @ g.T, solver=solver)
    assert (alpha >= 0).all() and alpha.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(alpha @ g, g[0])


def test_min_norm_opposite_gradients_reach_zero():
    g = torch.tensor([[1.0, 2.0], [-0.5, -1.0]], dtype=torch.float64)
    alpha = min_norm_weights(g @ g.T)
    torch.testing.assert_close(alpha, torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(alpha @ g, torch.zeros(2, dtype=torch.float64), atol=1e-15, rtol=0)


def test_min_norm_three_gradients_against_simplex_grid():
    grid = simplex_grid(200)
    generator = torch.Generator().manual_seed(0)
    for trial in range(6):
        g = torch.randn(3, 2 + trial, generator=generator, dtype=torch.float64)
        if trial == 4:
            g[1] = g[0] + 1e-3 * torch.randn(g.shape[1], generator=generator, dtype=torch.float64)  # nearly parallel
        gram = (g @ g.T).numpy()
        grid_values = np.einsum("nk,kl,nl->n", grid, gram, grid)
        exact_value, exact_w = exact_min_norm(gram)
        wolfe = min_norm_weights(torch.from_numpy(gram)).numpy()
        assert wolfe @ gram @ wolfe <= grid_values.min() + 1e-12
        assert wolfe @ gram @ wolfe == pytest.approx(exact_value, rel=1e-9, abs=1e-12)
        fw = min_norm_weights(torch.from_numpy(gram), solver="frank_wolfe").numpy()
        assert fw @ gram @ fw <= grid_values.min() + 1e-3 * gram.diagonal().max()


def test_min_norm_wolfe_is_exact_on_random_and_degenerate_sets():
    rng = np.random.default_rng(1)
    for trial in range(60):
        k, p = int(rng.integers(3, 7)), int(rng.integers(1, 8))
        g = rng.standard_normal((k, p))
        if trial % 3 == 0:
            g[2] = g[0]  # duplicate
        if trial % 4 == 0:
            g[1] = -2 * g[0]  # opposite
        gram = g @ g.T
        w = min_norm_weights(torch.from_numpy(gram)).numpy()
        assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
        assert w @ gram @ w <= exact_min_norm(gram)[0] + 1e-12 * gram.diagonal().max()


def test_min_norm_2_tensor_matches_closed_form_without_sync():
    v11, v12, v22 = (
        torch.tensor([1.0, 1.0, 2.0, 1.0]),
        torch.tensor([0.0, 2.0, -1.0, 1.0]),
        torch.tensor([4.0, 9.0, 3.0, 1.0]),
    )
    torch.testing.assert_close(min_norm_2(v11, v12, v22), torch.tensor([0.8, 1.0, 4 / 7, 0.5]))


def test_min_norm_rejects_bad_gram():
    with pytest.raises(ValueError, match="square"):
        min_norm_weights(torch.ones(2, 3))
    with pytest.raises(ValueError, match="non-finite"):
        min_norm_weights(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="solver"):
        min_norm_weights(torch.eye(3), solver="sgd")


# ---- PCGrad and CAGrad on explicit gradients


def test_pcgrad_two_conflicting_gradients():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)  # <g1, g2> = -1
    coefficients = pcgrad_coefficients(g @ g.T, torch.Generator().manual_seed(0))
    # g1 - (-1 / 2) g2 = (0.5, 0.5); g2 - (-1 / 1) g1 = (0, 1); sum (0.5, 1.5).
    torch.testing.assert_close(coefficients @ g, torch.tensor([0.5, 1.5], dtype=torch.float64))


def test_pcgrad_without_conflict_is_the_sum_and_order_is_seedable():
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(pcgrad_coefficients(g @ g.T) @ g, g.sum(0))
    conflicting = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gram = conflicting @ conflicting.T
    a = pcgrad_coefficients(gram, torch.Generator().manual_seed(7))
    b = pcgrad_coefficients(gram, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_pcgrad_projection_matches_vector_algorithm():
    g = torch.randn(4, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    coefficients = pcgrad_coefficients(g @ g.T, torch.Generator().manual_seed(11))
    generator = torch.Generator().manual_seed(11)  # same order draws as the implementation
    total = torch.zeros(6, dtype=torch.float64)
    for i in range(4):
        others = [j for j in range(4) if j != i]
        gi = g[i].clone()
        for n in torch.randperm(3, generator=generator).tolist():
            gj = g[others[n]]
            if gi @ gj < 0:
                gi = gi - (gi @ gj) / (gj @ gj) * gj
        total += gi
    torch.testing.assert_close(coefficients @ g, total)


def test_cagrad_c0_is_the_average_gradient():
    g = torch.randn(3, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    coefficients, _ = cagrad_coefficients(g @ g.T, c=0.0, match_sum=False)
    torch.testing.assert_close(coefficients @ g, g.mean(0))
    summed, _ = cagrad_coefficients(g @ g.T, c=0.0)  # default: the reference code's "match the sum loss"
    torch.testing.assert_close(summed @ g, g.sum(0))


def test_cagrad_dual_against_simplex_grid_and_update_formula():
    grid = simplex_grid(200)
    generator = torch.Generator().manual_seed(4)
    c = 0.5
    for trial in range(4):
        g = torch.randn(3, 4, generator=generator, dtype=torch.float64)
        if trial == 3:
            g[2] = g[0] + 1e-3 * torch.randn(4, generator=generator, dtype=torch.float64)
        gram = (g @ g.T).numpy()
        g0 = g.mean(0).numpy()
        radius = c * np.linalg.norm(g0)

        g_np = g.numpy()

        def dual(w, g_np=g_np, g0=g0, radius=radius):
            gw = w @ g_np
            return gw @ g0 + radius * np.linalg.norm(gw)

        w = cagrad_dual_weights(torch.from_numpy(gram), c).numpy()
        assert dual(w) <= min(dual(v) for v in grid) + 1e-9
        coefficients, _ = cagrad_coefficients(torch.from_numpy(gram), c, match_sum=False)
        gw = w @ g.numpy()
        expected = (g0 + radius / np.linalg.norm(gw) * gw) / (1 + c * c)
        np.testing.assert_allclose((coefficients @ g).numpy(), expected, rtol=1e-6, atol=1e-9)
        # CAGrad's guarantee: the update improves the worst objective at least as much as the average gradient.
        d = expected * (1 + c * c)
        assert (g.numpy() @ d).min() >= (g.numpy() @ g0).min() - 1e-9


# ---- OGM-GE


def test_ogm_coefficients_hand_computed():
    alpha = 0.5
    k = ogm_coefficients(torch.tensor([3.0, 1.0], dtype=torch.float64), alpha)  # ratios 3 and 1/3
    torch.testing.assert_close(k, torch.tensor([1 - math.tanh(1.5), 1.0], dtype=torch.float64))
    k3 = ogm_coefficients(torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64), alpha)  # ratios 2, 2/3, 2/3
    torch.testing.assert_close(k3, torch.tensor([1 - math.tanh(1.0), 1.0, 1.0], dtype=torch.float64))
    tie = ogm_coefficients(torch.tensor([1.5, 1.5]), alpha)
    torch.testing.assert_close(tie, torch.ones(2))


def test_ogm_scores_split_the_linear_fusion_head():
    model, inputs, labels = tiny_setup()
    out = forward_batch(model, inputs, labels)
    scores = ogm_scores(model, out)
    w, b = model.fusion_head.weight, model.fusion_head.bias
    h0, h1 = (h.detach() for h in out.features)
    shares = [h0 @ w[:, :4].T + b / 2, h1 @ w[:, 4:].T + b / 2]
    torch.testing.assert_close(shares[0] + shares[1], out.fused_logits.detach())
    expected = [s.softmax(1)[torch.arange(8), labels].sum() for s in shares]
    torch.testing.assert_close(scores, torch.stack(expected))


def test_ogm_without_ge_scales_the_fusion_gradient_exactly():
    model, inputs, labels = tiny_setup()
    rows, fusion, uni = reference_grads(model, inputs, labels)
    method = make_method("ogm_ge", alpha=0.3, ge=False)
    model.train()
    run_method(method, model, inputs, labels)
    k, scores = method.last_coefficients, method.last_scores
    ratio = scores / scores.flip(0)
    torch.testing.assert_close(k, torch.where(ratio > 1, 1 - torch.tanh(0.3 * ratio), torch.ones_like(ratio)))
    assert (k < 1).sum().item() == 1
    sizes = [sum(p.numel() for p in ps) for ps in encoder_params(model)]
    scale = torch.cat([k[m].expand(n) for m, n in enumerate(sizes)])
    torch.testing.assert_close(encoder_grad(model), rows[0] * scale, rtol=0, atol=0)
    assert_heads_own_grads(model, fusion, uni)  # fusion head: grad f0; uni heads: their own (detached) losses


def test_ogm_dominant_modality_is_slowed():
    model, inputs, labels = tiny_setup(seed=1)
    with torch.no_grad():  # make modality 0's share of the fused logits confident and right
        model.fusion_head.weight[:, :4] *= 0
        model.fusion_head.bias.zero_()
        model.encoders[0][2].weight.zero_()
        model.encoders[0][2].bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0], dtype=torch.float64))
        model.fusion_head.weight[:, 0] = 0
        model.fusion_head.weight[0, 0] = 1.0
    labels = torch.zeros(8, dtype=torch.long)
    method = make_method("ogm_ge", ge=False)
    run_method(method, model, inputs, labels)
    k = method.last_coefficients
    assert method.last_scores[0] > method.last_scores[1]
    assert k[0].item() == pytest.approx(1 - math.tanh(0.1 * (method.last_scores[0] / method.last_scores[1]).item()))
    assert k[1].item() == 1.0


def test_ogm_ge_noise_is_the_official_rule_and_seedable():
    model, inputs, labels = tiny_setup()
    rows, _, _ = reference_grads(model, inputs, labels)
    method = make_method("ogm_ge", alpha=0.3, generator=torch.Generator().manual_seed(5))
    run_method(method, model, inputs, labels)
    k = method.last_coefficients
    generator = torch.Generator().manual_seed(5)
    start = 0
    for m, ps in enumerate(encoder_params(model)):
        for p in ps:
            g = rows[0, start : start + p.numel()].view_as(p)
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype) * (g.std() + 1e-8)
            torch.testing.assert_close(p.grad, g * k[m] + noise)
            start += p.numel()


def test_ogm_is_plain_joint_outside_training_or_window():
    model, inputs, labels = tiny_setup()
    rows, fusion, uni = reference_grads(model, inputs, labels)
    method = make_method("ogm_ge")
    method.modulate = False
    run_method(method, model, inputs, labels)
    torch.testing.assert_close(encoder_grad(model), rows[0])
    assert method.last_coefficients is None
    method.modulate = True
    model.eval()
    run_method(method, model, inputs, labels)
    torch.testing.assert_close(encoder_grad(model), rows[0])


# ---- single-backward methods against autograd


def test_joint_uniform_mimo_match_autograd_of_their_loss():
    model, inputs, labels = tiny_setup()
    params = list(model.parameters())

    def joint_loss(out):
        detached = [F.cross_entropy(h(f.detach()), labels) for h, f in zip(model.uni_heads, out.features, strict=True)]
        return out.fusion_loss + sum(detached)

    losses = {
        "joint": joint_loss,
        "uniform": lambda out: out.fusion_loss + sum(out.uni_losses),
        "mimo": lambda out: mimo_ext.mimo_loss(out.fusion_loss, out.uni_losses, gamma=0.7, mu=0.2),
    }
    for name, loss in losses.items():
        expected = torch.autograd.grad(loss(forward_batch(model, inputs, labels)), params)
        method = make_method(name, gamma=0.7, mu=0.2) if name == "mimo" else make_method(name)
        run_method(method, model, inputs, labels)
        for p, g in zip(params, expected, strict=True):
            torch.testing.assert_close(p.grad, g, msg=lambda m, name=name: f"{name}: {m}")


def test_mimo_fused_update_equals_mimo_with_torch_sgd():
    model_a, inputs, labels = tiny_setup(dtype=torch.float32)
    model_b, _, _ = tiny_setup(dtype=torch.float32)
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.05, momentum=0)
    opt_b = MIMOSGD(model_b.parameters(), lr=0.05, momentum=0, gamma=0.7, mu=0.2)
    mimo, fused = make_method("mimo", gamma=0.7, mu=0.2), make_method("mimo_fused", gamma=0.7, mu=0.2)
    for _ in range(2):
        for method, model, opt in ((mimo, model_a, opt_a), (fused, model_b, opt_b)):
            run_method(method, model, inputs, labels, opt)
            opt.step()
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_mimo_fused_requires_a_mimo_optimizer_with_its_settings():
    model, inputs, labels = tiny_setup()
    with pytest.raises(TypeError, match="MIMOOptimizer.*SGD"):
        run_method(make_method("mimo_fused"), model, inputs, labels)
    optimizer = MIMOSGD(model.parameters(), lr=0.1, mu=0.3)
    with pytest.raises(ValueError, match="mu=0.2 but the optimizer's param group 0 has mu=0.3"):
        run_method(make_method("mimo_fused", mu=0.2), model, inputs, labels, optimizer)


# ---- multi-objective methods on a tiny late-fusion model


def test_mgda_is_the_min_norm_combination_over_the_encoders():
    model, inputs, labels = tiny_setup(dims=(5, 3, 4))
    rows, fusion, uni = reference_grads(model, inputs, labels)
    method = make_method("mgda")
    run_method(method, model, inputs, labels)
    value, alpha = exact_min_norm((rows @ rows.T).numpy())
    torch.testing.assert_close(method.last_weights, torch.from_numpy(alpha), atol=1e-7, rtol=0)
    torch.testing.assert_close(encoder_grad(model), torch.from_numpy(alpha) @ rows, atol=1e-9, rtol=1e-6)
    assert encoder_grad(model).square().sum().item() == pytest.approx(value, rel=1e-6)
    assert_heads_own_grads(model, fusion, uni)


def test_mgda_stops_the_encoders_when_an_objective_is_stationary():
    # A uni-modal head with zero weights gives f_1 a zero gradient over the encoders: the min-norm point of the
    # hull is then 0 (the model is Pareto-stationary), so MGDA leaves the encoders alone.
    model, inputs, labels = tiny_setup()
    with torch.no_grad():
        model.uni_heads[0].weight.zero_()
    method = make_method("mgda")
    run_method(method, model, inputs, labels)
    torch.testing.assert_close(method.last_weights, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    assert encoder_grad(model).abs().max().item() == 0.0
    assert model.uni_heads[0].weight.grad.abs().sum() > 0  # the head itself still learns


def test_pcgrad_and_cagrad_methods_combine_the_encoder_gradients():
    model, inputs, labels = tiny_setup(dims=(5, 3, 4))
    rows, fusion, uni = reference_grads(model, inputs, labels)
    gram = rows @ rows.T
    pc = make_method("pcgrad", generator=torch.Generator().manual_seed(0))
    run_method(pc, model, inputs, labels)
    expected = pcgrad_coefficients(gram, torch.Generator().manual_seed(0)) @ rows
    torch.testing.assert_close(encoder_grad(model), expected)
    assert_heads_own_grads(model, fusion, uni)
    ca = make_method("cagrad", c=0.4)
    run_method(ca, model, inputs, labels)
    torch.testing.assert_close(encoder_grad(model), cagrad_coefficients(gram, 0.4)[0] @ rows)
    assert_heads_own_grads(model, fusion, uni)


def test_mmpareto_known_configuration():
    # Uni-modal head 0 copies modality 0's block of the fusion head, head 1 is the negated block of modality 1:
    # f0 and f_0 then pull encoder 0 the same way (cos > 0: equal weights), f0 and f_1 pull encoder 1 apart.
    model, inputs, labels = tiny_setup(seed=2)
    with torch.no_grad():
        model.uni_heads[0].weight.copy_(model.fusion_head.weight[:, :4])
        model.uni_heads[1].weight.copy_(-model.fusion_head.weight[:, 4:])
        for head in model.uni_heads:
            head.bias.copy_(model.fusion_head.bias)
    rows, fusion, uni = reference_grads(model, inputs, labels)
    method = make_method("mmpareto")
    run_method(method, model, inputs, labels)
    sizes = [sum(p.numel() for p in ps) for ps in encoder_params(model)]
    blocks = [(0, sizes[0]), (sizes[0], sizes[0] + sizes[1])]
    cos = [F.cosine_similarity(rows[0, a:b], rows[m + 1, a:b], dim=0) for m, (a, b) in enumerate(blocks)]
    assert cos[0] > 0 > cos[1]
    torch.testing.assert_close(method.last_cosines, torch.stack(cos))
    # Encoder 0: agreeing, so (0.5, 0.5): 2 * 0.5 * (g_mm + g_u), its own norm, times 1.5.
    a, b = blocks[0]
    torch.testing.assert_close(encoder_grad(model)[a:b], 1.5 * (rows[0, a:b] + rows[1, a:b]))
    # Encoder 1: conflicting, so the two-gradient MGDA weights; per tensor raised to ||g_mm + g_u|| if smaller.
    a, b = blocks[1]
    g_mm, g_u = rows[0, a:b], rows[2, a:b]
    c = min_norm_weights(torch.stack([g_mm, g_u]) @ torch.stack([g_mm, g_u]).T)
    torch.testing.assert_close(method.last_weights[1], c)
    direction = 2 * c[0] * g_mm + 2 * c[1] * g_u
    start = a
    for p in encoder_params(model)[1]:
        sl = slice(start - a, start - a + p.numel())
        new, total = direction[sl], (g_mm + g_u)[sl]
        factor = total.norm() / new.norm() if total.norm() > new.norm() else 1.0
        torch.testing.assert_close(p.grad.reshape(-1), 1.5 * factor * new)
        start += p.numel()
    assert_heads_own_grads(model, fusion, uni)


# ---- the interface, for every method


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_leaves_finite_encoder_grads_and_times(name):
    model, inputs, labels = tiny_setup(dims=(5, 3, 4), dtype=torch.float32)
    optimizer = MIMOSGD(model.parameters(), lr=0.1) if name == "mimo_fused" else None
    method = make_method(name)
    assert method.name == name and isinstance(method.uses_uni_losses, bool)
    times = run_method(method, model, inputs, labels, optimizer)
    assert isinstance(times, StepTimes)
    for value in (times.backward_s, times.weighting_s):
        assert isinstance(value, float) and value >= 0 and math.isfinite(value)
    assert times.backward_s > 0
    for ps in encoder_params(model):
        for p in ps:
            assert p.grad is not None and torch.isfinite(p.grad).all()
    if name in ("mimo", "mimo_fused", "joint", "uniform"):
        assert times.weighting_s == 0.0


@pytest.mark.parametrize("name", [n for n in METHODS if n != "mimo_fused"])
def test_methods_accumulate_like_backward_and_drive_fused_optimizers(name):
    # Two calls without zero_grad add up (as two loss.backward() would); and since gradients are written through
    # autograd, a fused MIMO optimizer's single-gradient path sees them like an ordinary backward.
    model, inputs, labels = tiny_setup()
    options = {"ge": False} if name == "ogm_ge" else {}
    method = make_method(name, **options)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run_method(method, model, inputs, labels, optimizer)
    once = [p.grad.clone() for p in model.parameters()]
    method.backward(model, forward_batch(model, inputs, labels), optimizer)
    for p, g in zip(model.parameters(), once, strict=True):
        torch.testing.assert_close(p.grad, 2 * g)

    model_a, _, _ = tiny_setup(dtype=torch.float32)
    model_b, _, _ = tiny_setup(dtype=torch.float32)
    inputs32 = [x.float() for x in inputs]
    for model, optimizer in (
        (model_a, torch.optim.SGD(model_a.parameters(), lr=0.1)),
        (model_b, MIMOSGD(model_b.parameters(), lr=0.1)),
    ):
        run_method(make_method(name, **options), model, inputs32, labels, optimizer)
        optimizer.step()
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_make_method_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown balancing method 'nope'.*joint, uniform, ogm_ge, mgda"):
        make_method("nope")
    assert make_method("cagrad", c=0.2).c == 0.2
    assert list(METHODS) == [
        "joint",
        "uniform",
        "ogm_ge",
        "mgda",
        "pcgrad",
        "cagrad",
        "mmpareto",
        "mimo",
        "mimo_fused",
    ]
    with pytest.raises(ValueError, match="alpha"):
        make_method("ogm_ge", alpha=-1.0)


def test_batch_outputs_from_forward_batch():
    model, inputs, labels = tiny_setup()
    out = forward_batch(model, inputs, labels)
    assert isinstance(out, BatchOutputs) and out.num_modalities == 2
    fused, uni = model(inputs)
    torch.testing.assert_close(out.fused_logits, fused)
    torch.testing.assert_close(out.fusion_loss, F.cross_entropy(fused, labels))
    for z, u, f in zip(out.uni_logits, uni, out.uni_losses, strict=True):
        torch.testing.assert_close(z, u)
        torch.testing.assert_close(f, F.cross_entropy(u, labels))


@pytest.mark.parametrize("module", [methods, min_norm, spec], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    results = doctest.testmod(module, extraglobs={"torch": torch})
    assert results.attempted > 0 and results.failed == 0
