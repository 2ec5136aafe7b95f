"""Frame choice and transforms of the recipes against values computed by hand."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mimo_ext.balance.recipes.frames import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrameTransform,
    _random_resized_crop_box,
    pick_frames,
)

# Pillow reads the frames; an environment without it (the GPU rehearsal's bare one) skips this module.
Image = pytest.importorskip("PIL.Image")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors


def test_pick_frames_test_mode_takes_each_segments_middle():
    assert pick_frames(10, 3, False, random.Random(0)) == [1, 4, 7]  # segments 0-2, 3-5, 6-9
    assert pick_frames(1, 1, False, random.Random(0)) == [0]
    assert pick_frames(2, 3, False, random.Random(0)) == [0, 0, 1]  # fewer frames than asked: repeats


def test_pick_frames_train_mode_stays_in_its_segment():
    for seed in range(50):
        picked = pick_frames(10, 3, True, random.Random(seed))
        assert 0 <= picked[0] <= 2 and 3 <= picked[1] <= 5 and 6 <= picked[2] <= 9


@pytest.mark.parametrize("train", [False, True])
def test_a_plain_colour_frame_normalises_to_imagenet_values(train):
    colour = (200, 40, 90)
    image = Image.new("RGB", (37, 23), colour)
    x = FrameTransform(16, train)(image, random.Random(3))
    expected = (torch.tensor(colour) / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert x.shape == (3, 16, 16)
    torch.testing.assert_close(x, expected.view(3, 1, 1).expand(3, 16, 16), rtol=0, atol=1e-6)


def test_test_transform_is_a_resize_and_train_transform_is_reproducible():
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    ours = FrameTransform(10, train=False)(image, random.Random(0))
    resized = np.asarray(image.resize((10, 10), Image.BILINEAR), dtype=np.float32) / 255.0
    ref = (torch.from_numpy(resized).permute(2, 0, 1) - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(3, 1, 1)
    torch.testing.assert_close(ours, ref)
    a = FrameTransform(10, train=True)(image, random.Random(7))
    b = FrameTransform(10, train=True)(image, random.Random(7))
    assert torch.equal(a, b)


def test_random_resized_crop_boxes_lie_inside_and_respect_area_and_ratio():
    for seed in range(200):
        left, top, w, h = _random_resized_crop_box(64, 48, random.Random(seed))
        assert 0 <= left and left + w <= 64 and 0 <= top and top + h <= 48
        if (w, h) != (64, 48):  # not the fallback
            assert 0.08 * 64 * 48 * 0.9 <= w * h <= 64 * 48
            assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
