"""Augmentations move every box with the pixels; expected values computed by hand in the comments."""

import numpy as np
import pytest

from raydet.config import AugmentConfig
from raydet.detector import augment as A

STILL = dict(scale=0.0, translate=0.0, hflip=0.0, mosaic=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)  # no-op recipe


class Draws:
    """A stand-in generator whose ``uniform`` returns the given values in turn (the draws injected)."""

    def __init__(self, *values):
        self.values = list(values)

    def uniform(self, low, high, size=None):
        return self.values.pop(0)


def _image_with_box(size=10, box=(2, 3, 5, 7), dtype=np.float32):
    """Zeros with a 255 rectangle at pixel xyxy ``box`` (x0, y0, x1, y1), exclusive ends."""
    img = np.zeros((size, size, 3), dtype)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 255
    return img


def _pixel_box(img) -> list[float]:
    """The normalized xyxy box around the image's non-zero pixels."""
    rows, cols = np.nonzero(img[..., 0])
    return [
        cols.min() / img.shape[1],
        rows.min() / img.shape[0],
        (cols.max() + 1) / img.shape[1],
        (rows.max() + 1) / img.shape[0],
    ]


def test_hflip_boxes_and_pixels():
    img = _image_with_box()
    out, boxes = A.hflip(img, np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 1.0, 0.5]], np.float32))
    # x0' = 1 - 0.3 = 0.7, x1' = 1 - 0.1 = 0.9; y unchanged; the whole-width box stays whole
    np.testing.assert_allclose(boxes, [[0.7, 0.2, 0.9, 0.4], [0.0, 0.0, 1.0, 0.5]], atol=1e-6)
    # the rectangle at x 2..4 moves to x 10-5..10-2-1 = 5..7
    assert np.nonzero(out[4, :, 0])[0].tolist() == [5, 6, 7]


def test_vflip_boxes_and_pixels():
    img = _image_with_box(box=(2, 1, 5, 4))
    out, boxes = A.vflip(img, np.array([[0.2, 0.1, 0.5, 0.4]], np.float32))
    # y0' = 1 - 0.4 = 0.6, y1' = 1 - 0.1 = 0.9; x unchanged
    np.testing.assert_allclose(boxes, [[0.2, 0.6, 0.5, 0.9]], atol=1e-6)
    # rows 1..3 move to rows 9-3..9-1 = 6..8
    assert np.nonzero(out[:, 3, 0])[0].tolist() == [6, 7, 8]
    np.testing.assert_allclose(_pixel_box(out), boxes[0], atol=1e-6)


def test_rot90_boxes_and_pixels_every_quarter_turn():
    img = _image_with_box(box=(1, 2, 3, 4))  # box (0.1, 0.2, 0.3, 0.4)
    box = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
    # one turn counter-clockwise: (x0, y0, x1, y1) -> (y0, 1 - x1, y1, 1 - x0) = (0.2, 0.7, 0.4, 0.9);
    # two: (1 - x1, 1 - y1, 1 - x0, 1 - y0) = (0.7, 0.6, 0.9, 0.8);
    # three: (1 - y1, x0, 1 - y0, x1) = (0.6, 0.1, 0.8, 0.3)
    expected = [[0.1, 0.2, 0.3, 0.4], [0.2, 0.7, 0.4, 0.9], [0.7, 0.6, 0.9, 0.8], [0.6, 0.1, 0.8, 0.3]]
    for k in range(4):
        out, boxes = A.rot90(img, box, k)
        np.testing.assert_allclose(boxes, [expected[k]], atol=1e-6, err_msg=f"k={k}")
        np.testing.assert_allclose(_pixel_box(out), expected[k], atol=1e-6, err_msg=f"k={k}")
        np.testing.assert_array_equal(out, np.rot90(img, k))
    # one turn's rectangle: rows 10 * 0.7..0.9 = 7, 8 and columns 2, 3
    assert np.argwhere(A.rot90(img, box, 1)[0][..., 0]).tolist() == [[7, 2], [7, 3], [8, 2], [8, 3]]


def test_hsv_keeps_shape_and_dtype_and_is_the_identity_without_gains():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    for image in (img, img.astype(np.float32)):
        out = A.hsv_jitter(rng, image, 0.015, 0.7, 0.4)
        assert out.shape == image.shape and out.dtype == image.dtype
        np.testing.assert_array_equal(A.hsv_jitter(rng, image, 0.0, 0.0, 0.0), image)


def test_hsv_gains_shift_hue_around_the_circle_and_scale_value():
    grey = np.full((2, 2, 3), 100, np.uint8)
    # value gain 1 + 0.5 * 0.4 = 1.2: grey 100 -> 120 (no saturation: stays grey)
    assert A.hsv_jitter(Draws(np.array([0.0, 0.0, 0.5])), grey, 0.0, 0.0, 0.4).tolist() == [[[120] * 3] * 2] * 2
    green = np.zeros((2, 2, 3), np.uint8)
    green[..., 1] = 255
    # green is hue 60 (120 deg / 2); shift -1 * 0.5 * 180 = -90 -> -30, wrapped at 180 -> 150 (300 deg): magenta
    out = A.hsv_jitter(Draws(np.array([-1.0, 0.0, 0.0])), green, 0.5, 0.0, 0.0)
    assert out[0, 0].tolist() == [255, 0, 255]


def test_affine_matrix_zooms_about_the_centre_then_shifts():
    # zoom 0.5, shift 0.5 * 100 = 50: x' = 0.5 * (x - 50) + 50 = 0.5 x + 25
    np.testing.assert_allclose(
        A.affine_matrix(Draws(0.5, np.array([0.5, 0.5])), 100, 0.5, 0.1), [[0.5, 0, 25], [0, 0.5, 25]]
    )
    # a 200 px mosaic canvas into 100 px at zoom 1, shift (0.4 * 100, 0.6 * 100): x' = x - 100 + 40 = x - 60,
    # y' = y - 100 + 60 = y - 40 (the centred 100 px window, moved)
    np.testing.assert_allclose(
        A.affine_matrix(Draws(1.0, np.array([0.4, 0.6])), 100, 0.5, 0.1, in_size=200), [[1, 0, -60], [0, 1, -40]]
    )
    rng = np.random.default_rng(0)
    drawn = np.array([A.affine_matrix(rng, 100, 0.5, 0.1) for _ in range(200)])
    zoom, shift = drawn[:, 0, 0], drawn[:, :, 2] + drawn[:, :1, 0] * 50  # t = m[:, 2] + zoom * 50
    assert np.all(drawn[:, 1, 1] == zoom) and not drawn[:, [0, 1], [1, 0]].any()
    assert 0.5 <= zoom.min() < 0.6 and 1.4 < zoom.max() <= 1.5  # uniform in [1 - 0.5, 1 + 0.5]
    assert 40 <= shift.min() < 42 and 58 < shift.max() <= 60  # uniform in [(0.5 - 0.1) 100, (0.5 + 0.1) 100]


def test_zoom_out_maps_boxes_pads_grey_and_drops_boxes_under_the_pixel_floor():
    img = _image_with_box(size=100, box=(20, 20, 60, 60), dtype=np.uint8)
    boxes = np.array(
        [
            [0.2, 0.2, 0.6, 0.6],
            [0.9, 0.0, 1.0, 1.0],  # 10 px wide -> 5 px: kept
            [0.0, 0.0, 0.03, 0.5],
        ],  # 3 px wide -> 1.5 px < 2: dropped
        np.float32,
    )
    # zoom 0.5 about the centre: x' = 0.5 * (x - 50) + 50 = 0.5 x + 25 (y likewise); the image lands on 25..75
    matrix = np.array([[0.5, 0, 25], [0, 0.5, 25]])
    out, moved, labels = A.warp(img, boxes, np.array([0, 1, 2]), matrix, 100, 0.5, 2.0)
    # box 0: 0.5 * 20 + 25 = 35, 0.5 * 60 + 25 = 55 -> 0.35, 0.55
    # box 1: x 0.5 * 90 + 25 = 70, 0.5 * 100 + 25 = 75; y 25, 75 -> (0.7, 0.25, 0.75, 0.75)
    np.testing.assert_allclose(moved, [[0.35, 0.35, 0.55, 0.55], [0.7, 0.25, 0.75, 0.75]], atol=1e-6)
    assert labels.tolist() == [0, 1] and out.dtype == np.uint8 and out.shape == (100, 100, 3)
    assert out[10, 10].tolist() == [114] * 3 and out[50, 24, 0] == 114 and out[50, 80, 0] == 114  # padding
    assert out[30, 30, 0] == 0 and out[50, 26, 0] == 0  # the image's black, inside 25..75
    np.testing.assert_allclose(_pixel_box(np.where(out == 255, out, 0)), [0.35, 0.35, 0.55, 0.55])


def test_zoom_in_clips_and_drops_a_mostly_outside_box():
    img = _image_with_box(size=100, box=(30, 30, 50, 50))
    boxes = np.array(
        [
            [0.3, 0.3, 0.5, 0.5],
            [0.22, 0.4, 0.3, 0.6],  # x -6..10 after the zoom: 10 / 16 = 62% inside: kept
            [0.15, 0.4, 0.3, 0.6],
        ],  # x -20..10: 10 / 30 = 33% inside: dropped
        np.float32,
    )
    # zoom 2 about the centre: x' = 2 * (x - 50) + 50 = 2 x - 50
    out, moved, labels = A.warp(
        img, boxes, np.array([0, 1, 2]), np.array([[2.0, 0, -50], [0, 2.0, -50]]), 100, 0.5, 2.0
    )
    # box 0: 2 * 30 - 50 = 10, 2 * 50 - 50 = 50; box 1: x clipped 0, 2 * 30 - 50 = 10, y 2 * 40 - 50 = 30, 70
    np.testing.assert_allclose(moved, [[0.1, 0.1, 0.5, 0.5], [0.0, 0.3, 0.1, 0.7]], atol=1e-6)
    assert labels.tolist() == [0, 1]
    assert out[30, 12, 0] == 255 and out[30, 48, 0] == 255 and out[30, 8, 0] == 0 and out[30, 52, 0] == 0
    # the edges blend symmetrically: output pixel 9's centre 9.5 comes from x = (9.5 + 50) / 2 = 29.75, a quarter
    # of the way from pixel 29's centre (0) to pixel 30's (255): 64; pixel 10 from 30.25: 191; pixel 49 from 49.75:
    # 191; pixel 50 from 50.25: 64
    np.testing.assert_allclose(out[30, [9, 10, 49, 50], 0], [63.75, 191.25, 191.25, 63.75], atol=1)
    with pytest.raises(ValueError, match="zoom and a shift"):
        A.warp(img, boxes, np.array([0, 1, 2]), np.array([[0.0, 1, 0], [1, 0.0, 0]]), 100, 0.5, 2.0)


def _mosaic_inputs():
    """Four 100 px images filled 10, 20, 30, 40 and their boxes, labels 0..6."""
    images = [np.full((100, 100, 3), v, np.uint8) for v in (10, 20, 30, 40)]
    boxes = [
        np.array([[0.5, 0.2, 0.7, 0.4], [0.3, 0.5, 0.6, 0.6], [0.0, 0.0, 0.3, 0.2]], np.float32),
        np.array([[0.1, 0.1, 0.2, 0.2]], np.float32),
        np.array([[0.5, 0.5, 0.6, 0.8], [0.5, 0.6, 0.6, 0.95]], np.float32),
        np.array([[0.0, 0.0, 0.5, 0.5]], np.float32),
    ]
    labels = [np.array([0, 1, 2]), np.array([3]), np.array([4, 5]), np.array([6])]
    return images, boxes, labels


# centre (60, 130) on the 200 px canvas: tiles' top-left corners (left, top) are (60-100, 130-100) = (-40, 30),
# (60, 30), (-40, 130), (60, 130); box x' = x * 100 + left, y' = y * 100 + top, then / 200
MOSAIC_BOXES = [
    [10 / 200, 50 / 200, 30 / 200, 70 / 200],  # tile 0: x 50-40, 70-40; y 20+30, 40+30
    [0.0, 80 / 200, 20 / 200, 90 / 200],  # tile 0: x 30-40 = -10 cut at the canvas edge (20/30 stays)
    # tile 0's (0, 0, 0.3, 0.2): x -40..-10, all outside: dropped
    [70 / 200, 40 / 200, 80 / 200, 50 / 200],  # tile 1: x 10+60, 20+60; y 10+30, 20+30
    [10 / 200, 180 / 200, 20 / 200, 1.0],  # tile 2: x 50-40, 60-40; y 50+130, 80+130 = 210 cut at
    # 200: 20/30 stays
    # tile 2's second box: y 190..225, 10/35 stays: dropped
    [60 / 200, 130 / 200, 110 / 200, 180 / 200],
]  # tile 3: x 0+60, 50+60; y 0+130, 50+130


def test_mosaic_at_places_the_tiles_around_the_centre_and_moves_every_box():
    images, boxes, labels = _mosaic_inputs()
    canvas, moved, kept = A.mosaic_at(images, boxes, labels, 100, 60, 130, 0.5)
    assert canvas.shape == (200, 200, 3) and canvas.dtype == np.uint8
    np.testing.assert_allclose(moved, MOSAIC_BOXES, atol=1e-6)
    assert kept.tolist() == [0, 1, 3, 4, 6]
    # tile 0 covers x 0..59, y 30..129; tile 1 x 60..159; tiles 2, 3 y 130..199; grey above y 30 and right of x 160
    assert [canvas[50, 59, 0], canvas[50, 60, 0], canvas[130, 10, 0], canvas[199, 159, 0]] == [10, 20, 30, 40]
    assert canvas[29, 10, 0] == 114 and canvas[50, 160, 0] == 114 and canvas[150, 199, 0] == 114


def test_mosaic_draws_its_centre_in_the_middle_half():
    images, boxes, labels = _mosaic_inputs()
    # drawn (60.7, 130.2) -> the pixel centre (60, 130)
    canvas, moved, kept = A.mosaic(Draws(np.array([60.7, 130.2])), images, boxes, labels, 100, 0.5)
    np.testing.assert_allclose(moved, MOSAIC_BOXES, atol=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(50):
        canvas = A.mosaic(rng, images, boxes, labels, 100, 0.5)[0]
        # the centre in [50, 150): every tile shows at least 50 x 50 of its image
        for value in (10, 20, 30, 40):
            assert (canvas[..., 0] == value).sum() >= 50 * 50


def _two_class_images(n, size=64):
    """``n`` images with a class-0 rectangle (value 60) and a class-1 rectangle (value 120) at varying places."""
    images, boxes, labels = [], [], []
    for i in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        a, b = 4 + 3 * i, 34 - 2 * i
        img[a : a + 16, a + 2 : a + 18] = 60
        img[b : b + 24, 30:58] = 120
        images.append(img)
        boxes.append(np.array([[a + 2, a, a + 18, a + 16], [30, b, 58, b + 24]], np.float32) / size)
        labels.append(np.array([0, 1]))
    return images, boxes, labels


def test_augment_batch_keeps_each_label_with_its_own_box():
    """Whatever is drawn, a kept box's centre pixel is its own rectangle's: grey pixels under one value gain g
    (0.6..1.4, so 120 g stays under 255), so class 0's centres are all 60 g and class 1's 120 g (twice as bright)."""
    images, boxes, labels = _two_class_images(3)
    cfg = AugmentConfig(vflip=0.5, rot90=0.5, min_box_px=6.0)
    rng = np.random.default_rng(1)
    most = 0
    for _ in range(30):
        outs, out_boxes, out_labels = A.augment_batch(rng, images, boxes, labels, cfg, use_mosaic=True)
        for out, b, lab in zip(outs, out_boxes, out_labels, strict=True):
            assert out.dtype == np.float32 and out.shape == (64, 64, 3) and len(b) == len(lab)
            centres = {0: [], 1: []}
            for box, label in zip(b, lab, strict=True):
                cx, cy = int((box[0] + box[2]) / 2 * 64), int((box[1] + box[3]) / 2 * 64)
                centres[int(label)].append(out[cy, cx, 0])
            for values in centres.values():
                assert np.ptp(values or [0]) <= 3, centres  # one value per class
            if centres[0] and centres[1]:
                assert abs(centres[1][0] - 2 * centres[0][0]) <= 4, centres
            most = max(most, len(b))
    assert most > 2  # mosaics brought other images' boxes in


def test_augment_batch_is_deterministic_and_a_batch_of_one_mosaics_itself():
    images, boxes, labels = _two_class_images(4)
    one = A.augment_batch(np.random.default_rng(5), images, boxes, labels, AugmentConfig())
    two = A.augment_batch(np.random.default_rng(5), images, boxes, labels, AugmentConfig())
    for a, b in zip(one, two, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    # no zoom or shift: the centred 64 px window of the canvas holds the mosaic's centre, where every tile shows;
    # with 4 images of 4 values, each output shows its own value and others from the batch
    flat = [np.full((64, 64, 3), 50 * (i + 1), np.uint8) for i in range(4)]
    empty = [np.zeros((0, 4), np.float32)] * 4
    outs, _, _ = A.augment_batch(
        np.random.default_rng(0), flat, empty, [np.zeros(0, int)] * 4, AugmentConfig(**{**STILL, "mosaic": 1.0})
    )
    for i, out in enumerate(outs):
        values = set(np.unique(out[..., 0]).tolist()) - {114.0}
        assert 50 * (i + 1) in values and len(values) >= 2, (i, values)
    # a batch of 1 at zoom 0.5, no shift: the whole 128 px canvas of 4 copies lands in 64 px, so 4 copies of each box
    cfg = AugmentConfig(**{**STILL, "mosaic": 1.0})
    rng = Draws(np.array([64.0, 64.0]), 0.5, np.array([0.5, 0.5]))
    rng.random = lambda: 0.0  # mosaic and flip draws: mosaic yes (0 < 1), flips no (0 < 0 is False)
    rng.integers = lambda low, high, n: np.zeros(n, int)  # the other 3 tiles: index 0 of others = [0], itself
    (out,), (b,), (lab,) = A.augment_batch(rng, images[:1], boxes[:1], labels[:1], cfg)
    assert sorted(lab.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]
    # the first copy's class-0 box (6, 4, 22, 20) / 64 px: on the canvas as is (tile 0 ends at the centre 64),
    # then x' = 0.5 x: (3, 2, 11, 10) / 64
    np.testing.assert_allclose(b[0], np.array([3, 2, 11, 10]) / 64, atol=1e-6)


def test_augment_without_mosaic_and_with_empty_boxes():
    img = _image_with_box()
    out, boxes, labels = A.augment(
        np.random.default_rng(0), img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), AugmentConfig()
    )
    assert out.shape == img.shape and out.dtype == np.float32 and boxes.shape == (0, 4) and labels.shape == (0,)
    # the no-op recipe returns the image and boxes as they came
    box = np.array([[0.2, 0.3, 0.5, 0.7]], np.float32)
    out, boxes, labels = A.augment(np.random.default_rng(0), img, box, np.array([1]), AugmentConfig(**STILL))
    np.testing.assert_array_equal(out, img)
    np.testing.assert_allclose(boxes, box)


@pytest.mark.parametrize(
    "field, value",
    [
        ("hflip", 1.5),
        ("mosaic", -0.1),
        ("scale", 1.0),
        ("translate", -0.1),
        ("hsv_v", 1.0),
        ("min_visible", 0.0),
        ("min_visible", 1.5),
        ("min_box_px", -1.0),
        ("vflip", float("nan")),
    ],
)
def test_augment_config_names_the_bad_value(field, value):
    with pytest.raises(ValueError, match=rf"augmentation\.{field} .*{value!r}"):
        AugmentConfig(**{field: value})
