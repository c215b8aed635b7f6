"""Augmentations move boxes with the pixels; expected values computed by hand in the comments."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from raydet import augment as A  # noqa: E402


def _image_with_box(size=10, box=(2, 3, 5, 7)):
    """Zeros with a 255 rectangle at pixel xyxy ``box`` (x0, y0, x1, y1), exclusive ends."""
    img = np.zeros((size, size, 3), np.float32)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 255.0
    return tf.constant(img)


def test_hflip_boxes_and_pixels():
    img = _image_with_box()
    out, boxes = A.hflip(img, tf.constant([[0.1, 0.2, 0.3, 0.4]]))
    # x0' = 1 - 0.3 = 0.7, x1' = 1 - 0.1 = 0.9; y unchanged
    np.testing.assert_allclose(boxes.numpy(), [[0.7, 0.2, 0.9, 0.4]], atol=1e-6)
    # the rectangle at x 2..4 moves to x 10-5..10-2-1 = 5..7
    cols = np.nonzero(out.numpy()[4, :, 0])[0]
    assert cols.tolist() == [5, 6, 7]


def test_crop_resize_maps_boxes_by_hand():
    img = _image_with_box(size=100, box=(20, 30, 50, 70))
    # window top=10, left=20, 50 x 50 pixels
    out, boxes = A.crop_resize(img, tf.constant([[0.2, 0.3, 0.5, 0.7]]), (10, 20, 50, 50))
    # x0' = (20 - 20) / 50 = 0.0, y0' = (30 - 10) / 50 = 0.4, x1' = (50 - 20) / 50 = 0.6, y1' = (70 - 10) / 50 = 1.2 -> 1.0
    np.testing.assert_allclose(boxes.numpy(), [[0.0, 0.4, 0.6, 1.0]], atol=1e-6)
    assert out.shape == (100, 100, 3)
    # pixels follow: the window's pixel (x=10, y=30) is inside the rectangle, resized x2 -> output (60, 20)... check a
    # point well inside: box centre x 0.3*100=30, y 0.7*100=70 in the output is lit; x 80 (outside 0..60) is dark.
    assert out.numpy()[70, 30, 0] > 200 and out.numpy()[70, 80, 0] < 1


def test_random_crop_always_keeps_the_box():
    img = _image_with_box(size=64)
    box = tf.constant([[0.3, 0.2, 0.6, 0.5]])
    tf.random.set_seed(1)
    for _ in range(30):
        window = A.random_crop_window(64, box, min_scale=0.6).numpy()
        top, left, h, w = window.tolist()
        # the box spans x 19.2..38.4 -> 19..39 px and y 12.8..32 -> 12..32 px; each side at least ceil(0.6*64) = 39
        assert 0 <= left <= 19 and left + w >= 39 and left + w <= 64 and w >= 39
        assert 0 <= top <= 12 and top + h >= 32 and top + h <= 64 and h >= 39
        _, out_box = A.random_crop(img, box)
        b = out_box.numpy()[0]
        assert 0.0 <= b[0] < b[2] <= 1.0 and 0.0 <= b[1] < b[3] <= 1.0


def test_color_jitter_keeps_boxes_and_range():
    img = _image_with_box()
    box = tf.constant([[0.1, 0.2, 0.3, 0.4]])
    out, out_box = A.color_jitter(img, box)
    np.testing.assert_array_equal(out_box.numpy(), box.numpy())
    assert out.dtype == tf.float32 and float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 255


def test_augment_in_a_tf_data_map():
    images = np.zeros((4, 32, 32, 3), np.float32)
    boxes = np.tile(np.float32([[0.25, 0.25, 0.75, 0.5]]), (4, 1, 1))
    ds = tf.data.Dataset.from_tensor_slices((images, boxes)).map(A.augment).batch(4)
    out_images, out_boxes = next(iter(ds))
    assert out_images.shape == (4, 32, 32, 3) and out_boxes.shape == (4, 1, 4)
    b = out_boxes.numpy()[:, 0]
    # widths stay positive and boxes inside the image whatever the random draw
    assert (b[:, 2] > b[:, 0]).all() and (b >= 0).all() and (b <= 1).all()
