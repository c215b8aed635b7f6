"""Augmentations move every box with the pixels; expected values computed by hand in the comments."""

import numpy as np

from raydet import augment as A


def _image_with_box(size=10, box=(2, 3, 5, 7)):
    """Zeros with a 255 rectangle at pixel xyxy ``box`` (x0, y0, x1, y1), exclusive ends."""
    img = np.zeros((size, size, 3), np.float32)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 255.0
    return img


def test_hflip_boxes_and_pixels():
    img = _image_with_box()
    out, boxes = A.hflip(img, np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 1.0, 0.5]], np.float32))
    # x0' = 1 - 0.3 = 0.7, x1' = 1 - 0.1 = 0.9; y unchanged; the whole-width box stays whole
    np.testing.assert_allclose(boxes, [[0.7, 0.2, 0.9, 0.4], [0.0, 0.0, 1.0, 0.5]], atol=1e-6)
    # the rectangle at x 2..4 moves to x 10-5..10-2-1 = 5..7
    assert np.nonzero(out[4, :, 0])[0].tolist() == [5, 6, 7]


def test_crop_moves_clips_and_keeps_mostly_visible_boxes():
    img = _image_with_box(size=100, box=(20, 30, 50, 70))
    boxes = np.array([[0.2, 0.3, 0.5, 0.7],     # inside the window
                      [0.05, 0.4, 0.15, 0.5],   # 0.05..0.15 in x: 0.05 of its 0.1 width inside x >= 0.1 -> 50%: kept
                      [0.0, 0.0, 0.08, 0.08],   # entirely left of the window: dropped
                      [0.85, 0.85, 0.95, 0.95]],  # x 0.85..0.9 inside (window ends at 0.9): 25% -> dropped
                     np.float32)
    labels = np.array([0, 1, 2, 3])
    # window: top 10, left 10, 80 x 80 px -> x' = (x * 100 - 10) / 80
    out, moved, kept = A.crop_resize(img, boxes, labels, (10, 10, 80, 80))
    assert out.shape == (100, 100, 3)
    # box 0: (20-10)/80 = 0.125, (30-10)/80 = 0.25, (50-10)/80 = 0.5, (70-10)/80 = 0.75
    # box 1: x (5-10)/80 -> clipped 0, (15-10)/80 = 0.0625; y (40-10)/80 = 0.375, (50-10)/80 = 0.5
    np.testing.assert_allclose(moved, [[0.125, 0.25, 0.5, 0.75], [0.0, 0.375, 0.0625, 0.5]], atol=1e-6)
    assert kept.tolist() == [0, 1]
    # the rectangle now spans pixels 12.5..50 in x of the 100 px output (nearest 13..49 at least)
    row = out[50, :, 0]
    assert row[15] == 255 and row[45] == 255 and row[5] == 0 and row[60] == 0


def test_crop_window_stays_inside_and_respects_min_scale():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, height, width = A.crop_window(rng, 64, 0.6)
        assert 38 <= height <= 64 and 38 <= width <= 64  # floor(0.6 * 64) = 38
        assert 0 <= top <= 64 - height and 0 <= left <= 64 - width


def test_augment_keeps_labels_with_their_boxes():
    """Whatever augment draws, each kept box's centre pixel is its own rectangle's: the background (0) is the
    darkest value after any colour jitter, class 0 (100) is darker than class 1 (200)."""
    rng = np.random.default_rng(1)
    img = np.zeros((64, 64, 3), np.float32)
    img[8:24, 8:24] = 100.0  # class 0
    img[36:60, 30:58] = 200.0  # class 1
    boxes = np.array([[8, 8, 24, 24], [30, 36, 58, 60]], np.float32) / 64
    seen = set()
    for _ in range(50):
        out, b, l = A.augment(rng, img, boxes, np.array([0, 1]), crop_probability=1.0)
        assert out.dtype == np.float32 and out.shape == (64, 64, 3) and len(b) == len(l)
        centres = {}
        for box, label in zip(b, l):
            cx, cy = ((box[0] + box[2]) / 2 * 64).astype(int), ((box[1] + box[3]) / 2 * 64).astype(int)
            centres[int(label)] = out[cy, cx].mean()
            assert centres[int(label)] > out.mean(axis=2).min() + 1, (box, label)
        if len(centres) == 2:
            assert centres[0] < centres[1]
        seen.add(len(b))
    assert 2 in seen  # most crops keep both boxes


def test_empty_boxes_pass_through():
    img = _image_with_box()
    out, boxes, labels = A.augment(np.random.default_rng(0), img, np.zeros((0, 4), np.float32),
                                   np.zeros(0, np.int64))
    assert out.shape == img.shape and boxes.shape == (0, 4) and labels.shape == (0,)
