"""The fusion models: late fusion (LateFusionMLP, the default encoder by input shape, late_fusion_for), early and
attention fusion: shapes, the constructor conventions they share, and which parameters serve which modality."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mimo_ext.models import (
    FUSIONS,
    AttentionFusion,
    EarlyFusion,
    LateFusion,
    LateFusionMLP,
    attention_fusion_for,
    default_encoder,
    early_fusion_for,
    fusion_model_for,
    late_fusion_for,
)

MIXED = [torch.randn(4, 6), torch.randn(4, 13, 32), torch.randn(4, 1, 8, 8)]


@pytest.mark.parametrize("dims", [(5, 7), (5, 7, 3)])
def test_late_fusion_output_and_feature_shapes(dims):
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


def test_early_fusion_concatenates_flattened_inputs_into_one_network():
    model = early_fusion_for(MIXED, num_classes=5, hidden=16, feature_dim=8)
    assert isinstance(model, EarlyFusion) and model.num_modalities == 3
    assert model.input_dims == [6, 13 * 32, 64]
    assert model.network[0].in_features == 6 + 13 * 32 + 64
    assert model(MIXED).shape == (4, 5)
    assert model.input_columns() == [slice(0, 6), slice(6, 422), slice(422, 486)]
    # The forward is the network on the concatenation, then the head.
    flat = torch.cat([x.flatten(1) for x in MIXED], 1)
    torch.testing.assert_close(model(MIXED), model.head(model.network(flat)))


def test_early_fusion_takes_a_network():
    network = nn.Sequential(nn.Linear(6 + 416 + 64, 12), nn.Tanh())
    model = early_fusion_for(MIXED, 3, network=network, feature_dim=12)
    assert model.network is network and model(MIXED).shape == (4, 3)


def test_attention_fusion_one_token_per_modality():
    model = attention_fusion_for(MIXED, num_classes=5, feature_dim=16, heads=2)
    assert isinstance(model, AttentionFusion) and model.num_modalities == 3
    tokens = model.features(MIXED)
    assert [t.shape for t in tokens] == [(4, 16)] * 3
    assert model.modality_embedding.shape == (3, 16)
    assert model(MIXED).shape == (4, 5)
    # Each sample's output depends on its own row only (no dropout, no batch statistics): the masked losses'
    # stacked forward relies on it.
    torch.testing.assert_close(model([x[:1] for x in MIXED]), model(MIXED)[:1])


def test_attention_fusion_mixes_modalities():
    model = attention_fusion_for(MIXED[:2], 3, feature_dim=8, heads=2)
    changed = [MIXED[0], MIXED[1] + 1.0]
    # Changing modality 1 moves the output: the head reads both tokens through the attention.
    assert not torch.allclose(model(MIXED[:2]), model(changed))


def test_attention_fusion_checks():
    with pytest.raises(ValueError, match="divisible by heads"):
        attention_fusion_for(MIXED, 3, feature_dim=10, heads=4)
    with pytest.raises(ValueError, match="got 1 encoders for 3 modalities"):
        attention_fusion_for(MIXED, 3, encoders=[nn.Linear(6, 32)])
    with pytest.raises(ValueError, match="at least 2 modalities"):
        AttentionFusion([nn.Linear(6, 8)], 8, 3)
    with pytest.raises(ValueError, match="expected 3 modality inputs"):
        attention_fusion_for(MIXED, 3)(MIXED[:2])


def test_early_fusion_checks():
    with pytest.raises(ValueError, match="at least 2 modalities"):
        early_fusion_for(MIXED[:1], 3)
    with pytest.raises(ValueError, match="expected 3 modality inputs"):
        early_fusion_for(MIXED, 3)(MIXED[:2])


@pytest.mark.parametrize("fusion, cls", [("late", LateFusion), ("early", EarlyFusion), ("attention", AttentionFusion)])
def test_fusion_model_for_builds_each_fusion(fusion, cls):
    model = fusion_model_for(fusion, MIXED, 7)
    assert isinstance(model, cls) and list(FUSIONS) == ["late", "early", "attention"]
    out = model(MIXED)
    fused = out[0] if fusion == "late" else out
    assert fused.shape == (4, 7)


def test_fusion_model_for_refuses_what_does_not_apply():
    with pytest.raises(ValueError, match="fusion must be one of"):
        fusion_model_for("middle", MIXED, 3)
    with pytest.raises(ValueError, match="early fusion has one network"):
        fusion_model_for("early", MIXED, 3, encoders=[nn.Identity()] * 3)
