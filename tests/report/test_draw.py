"""Drawings: the boxes land on the right pixels in the right colours, sheets have the right shape, PNGs open."""

import numpy as np
import pytest
from PIL import Image

from raydet.report import draw

GREY = 128


def grey(h, w):
    return np.full((h, w, 3), GREY, np.uint8)


def test_box_edges_have_the_box_colour_and_the_rest_is_untouched():
    img = grey(200, 200)
    out = draw.draw_detections(img, [[20, 20, 120, 120]], ["a"], [[60, 100, 180, 180]], ["b"], [0.93], scale=1)
    assert out.shape == img.shape and out is not img
    assert (img == GREY).all()  # the input is not drawn on
    # 200 px: line width round(200 / 200) = 1 for predictions, 2 for ground truth (OpenCV: x - 1 .. x + 1).
    # Left edge of the GT box, midway (its label sits at the bottom)
    assert tuple(out[70, 19]) == tuple(out[70, 20]) == tuple(out[70, 21]) == draw.GT_COLOR
    # right and bottom edges of the prediction (its label sits above the top edge)
    assert tuple(out[140, 180]) == draw.PRED_COLOR
    assert tuple(out[180, 120]) == draw.PRED_COLOR
    # just inside and outside the edges, and far corners, keep the original grey
    for y, x in [(70, 22), (70, 18), (140, 179), (140, 181), (195, 5), (5, 195)]:
        assert tuple(out[y, x]) == (GREY,) * 3, (y, x)
    # the prediction's label, "b 0.93" on a red background, sits just above its top edge at x = 60
    above = out[100 - 8, 60:100]
    assert (above == draw.PRED_COLOR).all(axis=1).any()
    assert (above != draw.PRED_COLOR).any(axis=1).any()  # and has text on it


def test_small_images_are_upscaled_before_drawing():
    img = grey(64, 48)
    assert draw.drawing_scale(64, 48) == 8  # ceil(384 / 48)
    out = draw.draw_detections(img, [[4, 8, 40, 56]], ["a"], [], [], [])
    # 48 x 64 becomes 384 x 512, boxes follow: x 4 -> 32, y 8 -> 64, 56 -> 448;
    # line width round(384 / 200) = 2, ground truth 4: OpenCV covers x 30 .. 34
    assert out.shape == (512, 384, 3)
    assert all(tuple(out[200, x]) == draw.GT_COLOR for x in range(30, 35))
    assert tuple(out[200, 29]) == tuple(out[200, 35]) == (GREY,) * 3
    assert draw.drawing_scale(500, 800) == 1


def test_grayscale_input_is_drawn_in_colour():
    out = draw.draw_detections(np.full((100, 100), 7, np.uint8), [[10, 10, 90, 90]], ["a"], [], [], [], scale=1)
    assert out.shape == (100, 100, 3) and tuple(out[50, 10]) == draw.GT_COLOR


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="uint8"):
        draw.draw_detections(np.zeros((10, 10, 3), np.float32), [], [], [], [], [])
    with pytest.raises(ValueError, match="1 boxes but 2 names"):
        draw.draw_detections(grey(10, 10), [[0, 0, 5, 5]], ["a", "b"], [], [], [])
    with pytest.raises(ValueError, match="2 scores for 1 boxes"):
        draw.draw_detections(grey(10, 10), [], [], [[0, 0, 5, 5]], ["a"], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least one image"):
        draw.contact_sheet([])
    with pytest.raises(ValueError, match="1 captions for 2 images"):
        draw.contact_sheet([grey(8, 8)] * 2, captions=["x"])


def test_contact_sheet_shape_and_fitting():
    images = [grey(64, 64), grey(30, 90), grey(200, 100), grey(10, 10), grey(64, 64)]
    sheet = draw.contact_sheet(images, columns=3, tile=64, captions=["one", "", "three", "four", "five"])
    # 5 images in 3 columns: 2 rows -> (2 * 64, 3 * 64)
    assert sheet.shape == (128, 192, 3) and sheet.dtype == np.uint8
    # the 30 x 90 image fits as 21 x 64 (64 / 90 = 0.711), centred: rows 21..42 grey, above it background
    assert tuple(sheet[32, 64 + 32]) == (GREY,) * 3 and tuple(sheet[5, 64 + 32]) == draw._BACKGROUND
    assert tuple(sheet[64 + 32, 128 + 32]) == draw._BACKGROUND  # the sixth cell is empty
    # fewer images than columns: one row of just those
    assert draw.contact_sheet([grey(8, 8)] * 2, columns=4, tile=32).shape == (32, 64, 3)


def test_write_png_round_trip_unicode_path(tmp_path):
    img = grey(20, 30)
    img[0, 0] = (255, 0, 0)  # red stays red: RGB in, RGB out
    path = draw.write_png(tmp_path / "dossier" / "détections_图.png", img)
    with Image.open(path) as png:
        assert png.size == (30, 20) and png.mode == "RGB"
        back = np.asarray(png)
    np.testing.assert_array_equal(back, img)


def test_every_prediction_of_an_image_is_drawn_with_its_own_label():
    img = grey(200, 200)
    boxes = [[10, 40, 60, 90], [100, 40, 150, 90], [60, 130, 190, 190]]
    out = draw.draw_detections(img, [], [], boxes, ["cat", "dog", "cat"], [0.9, 0.8, 0.4], scale=1)
    for x0, y0, _x1, y1 in boxes:
        # each box's left edge, at mid-height, in the prediction colour
        assert tuple(out[(y0 + y1) // 2, x0]) == draw.PRED_COLOR
        # and its own label on a red background just above its top edge (8 px up, over the box's first 30 px)
        above = out[y0 - 8, x0 : x0 + 30]
        assert (above == draw.PRED_COLOR).all(axis=1).any() and (above != draw.PRED_COLOR).any(axis=1).any()
    assert tuple(out[65, 80]) == (GREY,) * 3  # between the first two boxes nothing is drawn


@pytest.mark.parametrize("h,w", [(1, 1000), (1000, 1), (1, 65535), (3, 10**7), (10**7, 1), (20_000, 20_000)])
def test_drawings_are_capped_in_pixels_whatever_the_aspect(h, w):
    s = draw.drawing_scale(h, w)
    out_h, out_w = draw.drawing_size(h, w, s)
    assert 1 <= out_h and 1 <= out_w and out_h * out_w <= draw.MAX_DRAW_PIXELS
    assert h * w * s * s <= draw.MAX_DRAW_PIXELS * 1.0001  # the factor itself respects the cap
    assert (out_w >= out_h) == (w >= h)


def test_a_scale_asked_for_is_still_held_to_the_cap():
    out = draw.draw_detections(grey(2, 3000), [[0, 0, 3000, 2]], ["a"], [], [], [], scale=384)
    assert out.shape[0] * out.shape[1] <= draw.MAX_DRAW_PIXELS and out.shape[1] > out.shape[0]
