"""Each recipe's loader on a fixture in the exact layout, against what was written there (labels, clip count,
frames, values), and its error on a broken folder, raised while indexing (before any training)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from mimo_ext.balance.recipes import RECIPES, LayoutError
from mimo_ext.balance.recipes.fixtures import ave_class_names, make_ave, make_avmnist, make_cremad, make_ks

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors

SMALL = dict(image_size=16)


def load(name, root, **options):
    return RECIPES[name].load(root, dict(RECIPES[name].options, **SMALL, **options))


def test_cremad_labels_frames_and_spectrograms(tmp_path):
    root = make_cremad(tmp_path, train_per_class=2, test_per_class=1)
    train, test = load("cremad", root)
    assert (len(train), len(test)) == (12, 6)
    # Rows are written class by class in the order NEU HAP SAD FEA DIS ANG: OGM-GE's class_dict maps them to 0..5.
    assert train.labels == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert test.labels == [0, 1, 2, 3, 4, 5]
    first = (root / "train.csv").read_text().splitlines()[0].split(",")[0]
    assert train.clips[0].audio == root / "AudioWAV" / f"{first}.wav"
    assert len(train.clips[0].frames) == 2
    (spec, frames), label = test[3]
    assert spec.shape == (257, 188) and frames.shape == (3, 1, 16, 16) and label == 3
    # The FEA clip's tone is 220 * 1.25**3 Hz: its spectrogram peaks there.
    assert int(spec.mean(dim=1).argmax()) == round(220 * 1.25**3 / (22050 / 512))


def test_ks_labels_and_three_frames(tmp_path):
    root = make_ks(tmp_path, train_per_class=1, test_per_class=1)
    train, test = load("ks", root)
    assert len(train) == len(test) == 31
    assert train.labels == list(range(31))
    (spec, frames), label = test[5]
    expected = np.load(test.clips[5].audio)
    assert torch.equal(spec, torch.from_numpy(expected)) and frames.shape == (3, 3, 16, 16) and label == 5


def test_ave_sorted_class_index_and_duplicate_ids_dropped(tmp_path):
    root = make_ave(tmp_path, train_per_class=2, test_per_class=1)
    # Reverse the class list: the label is the index in the sorted names, whatever the file's order.
    (root / "stat.txt").write_text("".join(f"{n}\n" for n in reversed(ave_class_names())))
    train, test = load("ave", root)
    # The fixture lists its last training id twice: dropped, as OGM-GE drops it.
    assert (len(train), len(test)) == (2 * 28 - 1, 28)
    assert train.labels == [y for y in range(28) for _ in range(2)][:-1]
    (spec, frames), label = train[0]
    with open(train.clips[0].audio, "rb") as f:
        assert torch.equal(spec, torch.from_numpy(pickle.load(f)))
    assert frames.shape == (3, 3, 16, 16) and label == 0


def test_avmnist_values_scaled_as_multibench(tmp_path):
    root = make_avmnist(tmp_path, train=20, test=10)
    train, test = load("avmnist", root)
    assert (len(train), len(test)) == (20, 10)
    (image, audio), label = train[7]
    raw_image = np.load(root / "image" / "train_data.npy")[7]
    raw_audio = np.load(root / "audio" / "train_data.npy")[7]
    torch.testing.assert_close(image, torch.from_numpy(raw_image.reshape(1, 28, 28) / 255.0).float())
    torch.testing.assert_close(audio, torch.from_numpy(raw_audio[None] / 255.0).float())
    assert label == int(np.load(root / "train_labels.npy")[7]) == 7


def _first_line_field(path, index):
    return path.read_text().splitlines()[0].replace(" ", ",").split(",")[index]


def _break_cremad_missing_clip(root):
    (root / "AudioWAV" / f"{_first_line_field(root / 'test.csv', 0)}.wav").unlink()
    return (
        r"AudioWAV/1019_DFA_NEU_XX\.wav: the audio file is missing "
        r"\(clip '1019_DFA_NEU_XX', listed in .*test\.csv, line 1\)"
    )


def _break_cremad_truncated(root):
    path = root / "AudioWAV" / "1001_DFA_NEU_XX.wav"
    path.write_bytes(path.read_bytes()[:300])
    return r"1001_DFA_NEU_XX\.wav: truncated WAV, the header declares \d+ bytes of samples but the file has 300"


def _break_cremad_label(root):
    with open(root / "train.csv", "a") as f:
        f.write("1001_DFA_NEU_XX,BOR\n")
    return r"train\.csv, line 19: unknown label 'BOR' \(expected one of \['NEU', 'HAP', 'SAD', 'FEA', 'DIS', 'ANG'\]\)"


def _break_ks_label(root):
    with open(root / "ks_test_overlap.txt", "a") as f:
        f.write("clip00te0_000010_000020 31\n")
    return r"ks_test_overlap\.txt, line 32: unknown label 31 \(expected 0 to 30\)"


def _break_ks_frames(root):
    for frame in sorted((root / "train-frames-1fps/train/clip03tr0_000010_000020").iterdir())[:2]:
        frame.unlink()
    return r"clip03tr0_000010_000020: the clip's frame folder has 2 frame image\(s\), at least 3 needed"


def _break_ave_missing_frames(root):
    for frame in (root / "visual" / "v05te0").iterdir():
        frame.unlink()
    (root / "visual" / "v05te0").rmdir()
    return r"visual/v05te0: the clip's frame folder is missing \(expected a folder\) \(clip 'v05te0', listed in"


def _break_ave_label(root):
    with open(root / "my_test.txt", "a") as f:
        f.write("Dancing,v00te0\n")
    return r"my_test\.txt, line 29: unknown label 'Dancing' \(not in the class list\)"


def _break_avmnist_rows(root):
    labels = np.load(root / "test_labels.npy")
    np.save(root / "test_labels.npy", labels[:-1])
    return r"the test arrays disagree on the number of rows: images 10, audio 10, labels 9"


def _break_avmnist_label(root):
    labels = np.load(root / "train_labels.npy")
    labels[3] = 10
    np.save(root / "train_labels.npy", labels)
    return r"train_labels\.npy: label 10 is outside \[0, 10\)"


FIXTURES = {"cremad": make_cremad, "ks": make_ks, "ave": make_ave, "avmnist": make_avmnist}
SIZES = {"cremad": dict(train_per_class=3, test_per_class=1), "ks": dict(train_per_class=1, test_per_class=1),
         "ave": dict(train_per_class=1, test_per_class=1), "avmnist": dict(train=20, test=10)}


@pytest.mark.parametrize(
    "name,breaker",
    [
        ("cremad", _break_cremad_missing_clip),
        ("cremad", _break_cremad_truncated),
        ("cremad", _break_cremad_label),
        ("ks", _break_ks_label),
        ("ks", _break_ks_frames),
        ("ave", _break_ave_missing_frames),
        ("ave", _break_ave_label),
        ("avmnist", _break_avmnist_rows),
        ("avmnist", _break_avmnist_label),
    ],
)
def test_bad_layout_is_named(tmp_path, name, breaker):
    root = FIXTURES[name](tmp_path, **SIZES[name])
    message = breaker(root)
    with pytest.raises(LayoutError, match=message):
        load(name, root)


def test_skip_missing_mimics_the_public_loaders(tmp_path):
    root = make_cremad(tmp_path, train_per_class=2, test_per_class=1)
    (root / "AudioWAV" / "1001_DFA_NEU_XX.wav").unlink()
    train, _ = load("cremad", root, skip_missing="true")
    assert len(train) == 11 and train.labels[0] == 0


def test_a_missing_root_folder_is_named(tmp_path):
    with pytest.raises(LayoutError, match=r"nowhere: the CREMA-D folder is missing"):
        load("cremad", tmp_path / "nowhere")


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    """The augmentation draws from (seed, epoch, index) and the order from the loader's generator: two workers load
    exactly what the main process loads."""
    from torch.utils.data import DataLoader

    train, _ = load("cremad", make_cremad(tmp_path, train_per_class=1, test_per_class=1))
    train.set_epoch(3)

    def batches(workers):
        loader = DataLoader(train, 4, shuffle=True, generator=torch.Generator().manual_seed(5), num_workers=workers)
        return [(a, v, y) for (a, v), y in loader]

    for (a0, v0, y0), (a2, v2, y2) in zip(batches(0), batches(2), strict=True):
        assert torch.equal(a0, a2) and torch.equal(v0, v2) and torch.equal(y0, y2)
    frames_at_3 = train[0][0][1]
    train.set_epoch(4)
    assert not torch.equal(train[0][0][1], frames_at_3)  # another epoch, another crop of the same clip
