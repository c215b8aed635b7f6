"""Augmentations that keep boxes true: each function takes and returns an image AND its boxes together.

Images are (S, S, 3) float32 pixel values 0..255; boxes are (K, 4) float32 xyxy normalized to [0, 1],
real rows only (strip the PREP padding first: a zero padding row would be moved like a real box).
Everything is TensorFlow ops, so the functions run inside a ``tf.data`` map (graph mode).
"""

from __future__ import annotations

from raydet.runtime import use_legacy_keras


def _tf():
    use_legacy_keras()
    import tensorflow as tf

    return tf


def hflip(image, boxes):
    """Mirror left-right: x -> 1 - x, so (x0, y0, x1, y1) -> (1 - x1, y0, 1 - x0, y1)."""
    tf = _tf()
    x0, y0, x1, y1 = tf.unstack(boxes, axis=-1)
    return tf.image.flip_left_right(image), tf.stack([1.0 - x1, y0, 1.0 - x0, y1], axis=-1)


def crop_resize(image, boxes, window):
    """Cut the pixel window (top, left, height, width) out of the image and resize it back to (S, S).

    Boxes (K, 4) xyxy normalized are mapped into the window and clipped to [0, 1]:
    x' = (x * S - left) / width, y' = (y * S - top) / height.
    """
    tf = _tf()
    top, left, height, width = (tf.cast(v, tf.int32) for v in tf.unstack(tf.convert_to_tensor(window)))
    size = tf.shape(image)[:2]
    crop = tf.image.crop_to_bounding_box(image, top, left, height, width)
    out = tf.image.resize(crop, size, method="bilinear")
    side = tf.cast(size, tf.float32)  # (H, W)
    f = lambda v: tf.cast(v, tf.float32)  # noqa: E731
    offset = tf.stack([f(left) / side[1], f(top) / side[0]] * 2)
    scale = tf.stack([f(width) / side[1], f(height) / side[0]] * 2)
    return out, tf.clip_by_value((boxes - offset) / scale, 0.0, 1.0)


def random_crop_window(image_size, boxes, min_scale: float = 0.6, seed=None):
    """A random pixel window (top, left, height, width), each side ``min_scale``..1 of the image, that
    contains every box in (K, 4) xyxy normalized: scale and translate jitter in one.
    """
    tf = _tf()
    s = tf.cast(image_size, tf.float32)
    lo = tf.reduce_min(boxes[:, :2], axis=0) * s  # (x, y) pixel corner of the boxes' union
    hi = tf.reduce_max(boxes[:, 2:], axis=0) * s
    lo_px = tf.floor(tf.clip_by_value(lo, 0.0, s))
    hi_px = tf.math.ceil(tf.clip_by_value(hi, 0.0, s))
    u = tf.random.uniform([4], seed=seed)
    # side: at least min_scale of the image and at least the union, at most the image.
    min_side = tf.maximum(tf.math.ceil(min_scale * s), hi_px - lo_px)
    side = tf.floor(min_side + u[:2] * (s - min_side + 1.0))
    side = tf.minimum(side, s)
    # start: the window must cover [lo_px, hi_px] and stay inside [0, s].
    start_min = tf.maximum(0.0, hi_px - side)
    start_max = tf.minimum(lo_px, s - side)
    start = tf.floor(start_min + u[2:] * (start_max - start_min + 1.0))
    start = tf.minimum(start, start_max)
    return tf.cast(tf.stack([start[1], start[0], side[1], side[0]]), tf.int32)


def random_crop(image, boxes, min_scale: float = 0.6):
    """Scale/translate jitter: a random crop that keeps every box whole, resized back to (S, S)."""
    tf = _tf()
    window = random_crop_window(tf.shape(image)[0], boxes, min_scale)
    return crop_resize(image, boxes, window)


def color_jitter(image, boxes, brightness: float = 32.0, contrast: float = 0.3, saturation: float = 0.3):
    """Random brightness (+-``brightness`` of 255), contrast and saturation; boxes pass through unchanged."""
    tf = _tf()
    image = tf.image.random_brightness(image, brightness)
    image = tf.image.random_contrast(image, 1.0 - contrast, 1.0 + contrast)
    image = tf.image.random_saturation(image, 1.0 - saturation, 1.0 + saturation)
    return tf.clip_by_value(image, 0.0, 255.0), boxes


def random_hflip(image, boxes):
    """``hflip`` with probability 1/2."""
    tf = _tf()
    return tf.cond(tf.random.uniform([]) < 0.5, lambda: hflip(image, boxes), lambda: (image, boxes))


def augment(image, boxes, crop_probability: float = 0.5):
    """The training recipe: random flip, a box-keeping crop half the time, colour jitter."""
    tf = _tf()
    image, boxes = random_hflip(image, boxes)
    image, boxes = tf.cond(tf.random.uniform([]) < crop_probability,
                           lambda: random_crop(image, boxes), lambda: (image, boxes))
    return color_jitter(image, boxes)
