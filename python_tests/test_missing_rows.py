"""The missing-rows option of the loaders (mfeat, AV-digits): seeded, the right fraction, NaN where dropped, and
nothing else changed."""

from __future__ import annotations

import pytest
import torch

from mimo_ext.balance.data import load_av_digits
from mimo_ext.datasets import drop_rows, load_mfeat


def test_drop_rows_drops_the_fraction_seeded():
    xs = [torch.randn(50, 3), torch.randn(50, 2, 2)]
    out, present = drop_rows(xs, ["a", "b"], {"b": 0.3}, torch.Generator().manual_seed(1))
    assert present[0].all() and int((~present[1]).sum()) == 15
    assert out[0] is xs[0]
    assert torch.isnan(out[1][~present[1]]).all() and torch.equal(out[1][present[1]], xs[1][present[1]])
    assert not torch.isnan(xs[1]).any()  # the input is not modified
    again = drop_rows(xs, ["a", "b"], {"b": 0.3}, torch.Generator().manual_seed(1))[1]
    other = drop_rows(xs, ["a", "b"], {"b": 0.3}, torch.Generator().manual_seed(2))[1]
    assert torch.equal(again[1], present[1]) and not torch.equal(other[1], present[1])


def test_drop_rows_rounds_and_accepts_zero():
    xs = [torch.randn(7, 1), torch.randn(7, 1)]
    _, present = drop_rows(xs, ["a", "b"], {"a": 0.5, "b": 0.0}, torch.Generator().manual_seed(0))
    assert int((~present[0]).sum()) == round(3.5) and present[1].all()


@pytest.mark.parametrize(
    "missing, match",
    [
        ({"c": 0.1}, r"missing names modalities \['c'\]"),
        ({"a": 1.0}, r"missing\['a'\] must be a fraction in \[0, 1\)"),
        ({"a": -0.1}, "must be a fraction"),
        ({"a": True}, "must be a fraction"),
    ],
)
def test_drop_rows_checks_its_arguments(missing, match):
    with pytest.raises(ValueError, match=match):
        drop_rows([torch.zeros(4, 1)] * 2, ["a", "b"], missing, torch.Generator())


def test_mfeat_missing_option():
    xs, y, present = load_mfeat(("pix", "fou"), missing={"fou": 0.3}, missing_seed=5)
    clean, clean_y = load_mfeat(("pix", "fou"))
    assert torch.equal(y, clean_y) and torch.equal(xs[0], clean[0]) and present[0].all()
    assert int((~present[1]).sum()) == 600
    assert torch.isnan(xs[1][~present[1]]).all() and torch.equal(xs[1][present[1]], clean[1][present[1]])
    assert torch.equal(load_mfeat(("pix", "fou"), missing={"fou": 0.3}, missing_seed=5)[2][1], present[1])
    assert not torch.equal(load_mfeat(("pix", "fou"), missing={"fou": 0.3}, missing_seed=6)[2][1], present[1])
    with pytest.raises(ValueError, match="not among"):
        load_mfeat(("pix", "fou"), missing={"kar": 0.3})


def test_av_digits_missing_option_drops_per_split_and_keeps_the_pairing():
    train, test = load_av_digits("mini", missing={"image": 0.3}, seed=2)
    clean_train, clean_test = load_av_digits("mini", seed=2)
    assert clean_train.present is None
    for split, clean in ((train, clean_train), (test, clean_test)):
        image, audio = split.present
        assert audio.all() and int((~image).sum()) == round(0.3 * len(split.labels))
        assert torch.equal(split.labels, clean.labels)  # same split and pairing
        assert torch.equal(split.modalities[1], clean.modalities[1])
        assert torch.isnan(split.modalities[0][~image]).all()
        assert torch.equal(split.modalities[0][image], clean.modalities[0][image])
    again = load_av_digits("mini", missing={"image": 0.3}, seed=2)[0]
    assert torch.equal(again.present[0], train.present[0])
    with pytest.raises(ValueError, match="not among"):
        load_av_digits("mini", missing={"video": 0.3})
