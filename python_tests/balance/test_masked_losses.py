"""mimo_ext.masked_losses: values and gradients against a plain-PyTorch loop of M + 1 separate forwards (float64),
the present-mask semantics (the empty-modality case included), batched against unbatched, and training with it
through mimo_loss and the fused optimizers' per-objective path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mimo_ext
from mimo_ext.masking import fill_missing, keep_only, masked_mean, masked_outputs
from mimo_ext.models import attention_fusion_for, early_fusion_for, late_fusion_for
from mimo_ext.optim import MIMOSGD
from python_tests.references import smooth_max_weights

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


def data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, 5, generator=g, dtype=DT), torch.randn(n, 3, 4, generator=g, dtype=DT)]
    return xs, torch.randint(0, 3, (n,), generator=g)


def build(kind: str, xs):
    torch.manual_seed(0)
    if kind == "early":
        return early_fusion_for(xs, 3, hidden=8, feature_dim=4).to(DT)
    if kind == "attention":
        return attention_fusion_for(xs, 3, feature_dim=8, heads=2).to(DT)
    late = late_fusion_for(xs, 3, feature_dim=4).to(DT)
    return late  # its output is a tuple (fused, uni): the loss reads the fused logits


def late_ce(out, y, reduction="mean"):
    return F.cross_entropy(out[0], y, reduction=reduction)


def loss_for(kind: str):
    return late_ce if kind == "late" else F.cross_entropy


def reference(model, xs, y, loss, fill=0.0, present=None):
    """M + 1 separate forwards, written out: the full inputs (missing rows filled), then each modality alone;
    f0 over the rows with any modality, f_m over the rows with modality m."""
    n = len(y)
    present = present or [torch.ones(n, dtype=torch.bool) for _ in xs]
    full = []
    for x, mask in zip(xs, present, strict=True):
        x = x.clone()
        x[~mask] = fill
        full.append(x)
    any_row = torch.stack(present).any(0)
    per = loss(model(full), y, reduction="none")
    f0 = per[any_row].sum() / max(int(any_row.sum()), 1)
    f = []
    for m in range(len(xs)):
        alone = [x if j == m else torch.full_like(x, fill) for j, x in enumerate(full)]
        per = loss(model(alone), y, reduction="none")
        kept = present[m]
        f.append(per[kept].sum() / max(int(kept.sum()), 1))
    return f0, f


def grads(model, value):
    params = [p for p in model.parameters() if p.requires_grad]
    out = torch.autograd.grad(value, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, out, strict=True)]


def assert_same(model, got, want):
    (g0, gf), (w0, wf) = got, want
    torch.testing.assert_close(g0, w0)
    torch.testing.assert_close(torch.stack(gf), torch.stack(wf))
    # Every objective's gradient over every parameter, and a random combination of them.
    for a, b in zip([g0, *gf], [w0, *wf], strict=True):
        for ga, gb in zip(grads(model, a), grads(model, b), strict=True):
            torch.testing.assert_close(ga, gb)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("kind", ["early", "attention", "late"])
def test_values_and_gradients_match_separate_forwards(kind, batched):
    xs, y = data()
    model = build(kind, xs)
    got = mimo_ext.masked_losses(model, xs, y, loss_for(kind), batched=batched)
    assert_same(model, got, reference(model, xs, y, loss_for(kind)))


@pytest.mark.parametrize("batched", [True, False])
def test_fill_value_is_what_stands_in(batched):
    xs, y = data()
    model = build("early", xs)
    got = mimo_ext.masked_losses(model, xs, y, F.cross_entropy, fill=-1.5, batched=batched)
    assert_same(model, got, reference(model, xs, y, F.cross_entropy, fill=-1.5))


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("kind", ["early", "attention"])
def test_present_masks_fill_missing_rows_and_average_over_present_ones(kind, batched):
    xs, y = data(n=8)
    present = [torch.tensor([1, 1, 0, 1, 0, 1, 1, 1], dtype=torch.bool), torch.tensor([1, 0, 1, 1, 1, 0, 0, 1]).bool()]
    # Missing values may be anything: NaN must not leak into any loss or gradient.
    nan_xs = [x.clone() for x in xs]
    for x, mask in zip(nan_xs, present, strict=True):
        x[~mask] = float("nan")
    model = build(kind, xs)
    got = mimo_ext.masked_losses(model, nan_xs, y, F.cross_entropy, present=present, batched=batched)
    assert_same(model, got, reference(model, xs, y, F.cross_entropy, present=present))
    for value in [got[0], *got[1]]:
        assert all(torch.isfinite(g).all() for g in grads(model, value))


def test_present_f_m_by_hand():
    # A model whose per-row loss is known: the output is the row's sum of inputs, the loss that output itself.
    xs = [torch.tensor([[1.0], [2.0], [3.0]], dtype=DT), torch.tensor([[10.0], [20.0], [30.0]], dtype=DT)]
    present = [torch.tensor([True, False, True]), torch.tensor([True, True, False])]

    def model(inputs):
        return inputs[0] + inputs[1]

    def loss(out, y, reduction):
        return out.squeeze(1)

    f0, (f1, f2) = mimo_ext.masked_losses(model, xs, torch.zeros(3), loss, present=present)
    # Full forward, missing filled with 0: rows 11, 20, 3. Modality 0 alone on its rows 0 and 2: 1, 3.
    # Modality 1 alone on its rows 0 and 1: 10, 20.
    assert f0.item() == pytest.approx((11 + 20 + 3) / 3)
    assert f1.item() == pytest.approx((1 + 3) / 2)
    assert f2.item() == pytest.approx((10 + 20) / 2)


@pytest.mark.parametrize("batched", [True, False])
def test_modality_missing_from_the_whole_batch_contributes_nothing(batched):
    xs, y = data()
    model = build("attention", xs)
    present = [torch.ones(6, dtype=torch.bool), torch.zeros(6, dtype=torch.bool)]
    f0, (f1, f2) = mimo_ext.masked_losses(model, xs, y, F.cross_entropy, present=present, batched=batched)
    assert f2.item() == 0.0 and f2.requires_grad
    assert all((g == 0).all() for g in grads(model, f2))
    # The MIMO loss and its gradient stay finite; f2's zero gradient adds nothing to the update.
    loss = mimo_ext.mimo_loss(f0, [f1, f2])
    assert torch.isfinite(loss)
    total = grads(model, loss)
    assert all(torch.isfinite(g).all() for g in total)
    w = smooth_max_weights(torch.stack([f1, f2]).detach(), mimo_ext.DEFAULT_MU)
    expected = [a + w[0] * b for a, b in zip(grads(model, f0), grads(model, f1), strict=True)]
    for a, b in zip(total, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_no_modality_present_in_any_row_gives_zeros_not_nan():
    xs, y = data()
    model = build("early", xs)
    none = [torch.zeros(6, dtype=torch.bool)] * 2
    f0, f = mimo_ext.masked_losses(model, xs, y, F.cross_entropy, present=none)
    assert [v.item() for v in [f0, *f]] == [0.0, 0.0, 0.0]


class BatchNormModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, inputs):
        return self.head(self.norm(torch.cat([inputs[0], inputs[1].flatten(1)], 1)[:, :8]))


def test_batch_norm_in_training_mode_runs_separate_forwards_by_default():
    xs, y = data()
    torch.manual_seed(0)
    model = BatchNormModel().to(DT)
    default = mimo_ext.masked_losses(model, xs, y, F.cross_entropy)
    separate = mimo_ext.masked_losses(model, xs, y, F.cross_entropy, batched=False)
    stacked = mimo_ext.masked_losses(model, xs, y, F.cross_entropy, batched=True)
    torch.testing.assert_close(torch.stack([default[0], *default[1]]), torch.stack([separate[0], *separate[1]]))
    # Stacked, the batch statistics include the filled copies: a different loss, as the docstring says.
    assert not torch.allclose(torch.stack([stacked[0], *stacked[1]]), torch.stack([separate[0], *separate[1]]))
    model.eval()  # running statistics: rows are independent again, and the batched forward is the default
    torch.testing.assert_close(
        torch.stack(list(mimo_ext.masked_losses(model, xs, y, F.cross_entropy)[1])),
        torch.stack(list(mimo_ext.masked_losses(model, xs, y, F.cross_entropy, batched=False)[1])),
    )


def test_nested_outputs_and_regression_targets():
    xs, _ = data()
    target = torch.randn(6, 2, dtype=DT)
    torch.manual_seed(0)
    net = nn.Linear(17, 2).to(DT)

    def model(inputs):
        z = net(torch.cat([inputs[0], inputs[1].flatten(1)], 1))
        return {"pred": z, "aux": [z * 2]}

    def loss(out, t, reduction):
        return F.mse_loss(out["pred"], t, reduction=reduction) + 0 * out["aux"][0].sum()

    batched = mimo_ext.masked_losses(model, xs, target, loss)
    separate = mimo_ext.masked_losses(model, xs, target, loss, batched=False)
    cases = [xs, keep_only(xs, 0), keep_only(xs, 1)]
    want = [F.mse_loss(net(torch.cat([a, b.flatten(1)], 1)), target) for a, b in cases]
    torch.testing.assert_close(torch.stack([batched[0], *batched[1]]), torch.stack(want))
    torch.testing.assert_close(torch.stack([separate[0], *separate[1]]), torch.stack(want))


def test_masked_outputs_and_helpers():
    xs, _ = data()
    present = [torch.tensor([True, False] * 3), torch.ones(6, dtype=torch.bool)]
    filled = fill_missing(xs, present, 2.0)
    assert (filled[0][1] == 2.0).all() and torch.equal(filled[0][0], xs[0][0]) and filled[1] is not xs[1]
    alone = keep_only(xs, 1, 0.0, present)
    assert (alone[0] == 0).all() and torch.equal(alone[1], xs[1])
    model = build("early", xs)
    full, per = masked_outputs(model, xs, present=present)
    torch.testing.assert_close(full, model(fill_missing(xs, present, 0.0)))
    torch.testing.assert_close(per[0], model(keep_only(xs, 0, 0.0, present)))
    assert masked_mean(torch.tensor([1.0, 5.0]), torch.tensor([False, True])).item() == 5.0


def test_trains_through_mimo_loss_and_the_per_objective_path_alike():
    """opt.backward(f0, f) (one backward per objective, blended in the fused step) and one backward of mimo_loss
    give the same update on a model without uni-modal heads."""
    xs, y = data(n=12)
    loss = F.cross_entropy
    models = [build("attention", xs) for _ in range(2)]
    opts = [MIMOSGD(m.parameters(), lr=0.1, gamma=1.0, mu=0.1) for m in models]
    for _ in range(3):
        f0, f = mimo_ext.masked_losses(models[0], xs, y, loss)
        opts[0].zero_grad()
        opts[0].backward(f0, f)
        opts[0].step()
        f0, f = mimo_ext.masked_losses(models[1], xs, y, loss)
        opts[1].zero_grad()
        mimo_ext.mimo_loss(f0, f, gamma=1.0, mu=0.1).backward()
        opts[1].step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_training_lowers_every_masked_loss():
    xs, y = data(n=32, seed=1)
    model = build("early", xs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = torch.stack(list(mimo_ext.masked_losses(model, xs, y, F.cross_entropy)[1])).detach()
    for _ in range(30):
        opt.zero_grad()
        mimo_ext.mimo_loss(*mimo_ext.masked_losses(model, xs, y, F.cross_entropy)).backward()
        opt.step()
    after = torch.stack(list(mimo_ext.masked_losses(model, xs, y, F.cross_entropy)[1])).detach()
    assert (after < before).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(present=[torch.ones(6)] * 2), r"present\[0\] must be a bool tensor of shape \[6\]"),
        (dict(present=[torch.ones(6, dtype=torch.bool)]), "present must be a list of 2 bool tensors"),
        (dict(fill=float("nan")), "fill must be a finite number"),
        (dict(fill=True), "fill must be a finite number"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, match):
    xs, y = data()
    with pytest.raises(ValueError, match=match):
        mimo_ext.masked_losses(build("early", xs), xs, y, F.cross_entropy, **kwargs)


def test_loss_contract_and_shapes_are_checked():
    xs, y = data()
    model = build("early", xs)
    with pytest.raises(ValueError, match="must return one loss per sample"):
        mimo_ext.masked_losses(model, xs, y, lambda out, t, reduction: F.cross_entropy(out, t))
    with pytest.raises(ValueError, match="same number of rows"):
        mimo_ext.masked_losses(model, [xs[0], xs[1][:4]], y, F.cross_entropy)
    with pytest.raises(ValueError, match="one row per sample"):
        mimo_ext.masked_losses(model, xs, y[:3], F.cross_entropy)
    with pytest.raises(ValueError, match="no rows"):
        mimo_ext.masked_losses(model, [x[:0] for x in xs], y[:0], F.cross_entropy)
    with pytest.raises(TypeError, match="list of tensors"):
        mimo_ext.masked_losses(model, xs[0], y, F.cross_entropy)
