"""Augmentations that move every box with its image: each function takes and returns the image AND its boxes.

numpy and OpenCV only (no TensorFlow): the training input pipeline calls them per image, then builds the heads'
targets from the moved boxes (raydet.targets). Images are (S, S, 3) float32 pixel values 0..255; boxes are
(K, 4) float xyxy normalized to [0, 1] with their (K,) labels, real rows only (no padding).
"""

from __future__ import annotations

import cv2
import numpy as np

from raydet.boxes import area

MIN_VISIBLE = 0.5  # a crop keeps a box when at least this fraction of its area stays inside the crop


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right: x -> 1 - x, so (x0, y0, x1, y1) -> (1 - x1, y0, 1 - x0, y1)."""
    flipped = np.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], axis=1) \
        if len(boxes) else boxes
    return np.ascontiguousarray(image[:, ::-1]), flipped.astype(boxes.dtype, copy=False)


def crop_window(rng: np.random.Generator, size: int, min_scale: float) -> tuple[int, int, int, int]:
    """A random pixel window (top, left, height, width) of an S x S image, each side ``min_scale``..1 of S
    (drawn independently: scale, aspect and translation jitter in one)."""
    height, width = (int(v) for v in np.floor(rng.uniform(min_scale, 1.0, 2) * size).clip(1, size))
    top = int(rng.integers(0, size - height + 1))
    left = int(rng.integers(0, size - width + 1))
    return top, left, height, width


def crop_resize(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, window: tuple[int, int, int, int],
                min_visible: float = MIN_VISIBLE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut the pixel window (top, left, height, width) out of the image and resize it back to (S, S).

    Boxes (K, 4) xyxy normalized are mapped into the window, x' = (x * S - left) / width (y likewise), and
    clipped to [0, 1]; a box keeps its place only when at least ``min_visible`` of its area is inside the
    window (the others are mostly outside and dropped, with their labels). Returns (image, boxes, labels).
    """
    top, left, height, width = window
    size = image.shape[0]
    crop = image[top:top + height, left:left + width]
    out = cv2.resize(crop, (image.shape[1], size), interpolation=cv2.INTER_LINEAR)
    if not len(boxes):
        return out, boxes, labels
    offset = np.array([left, top, left, top], np.float64) / size
    scale = np.array([width, height, width, height], np.float64) / size
    moved = (boxes.astype(np.float64) - offset) / scale
    clipped = moved.clip(0.0, 1.0)
    before = area(moved)
    keep = (before > 0) & (area(clipped) >= min_visible * before)
    return out, clipped[keep].astype(boxes.dtype), labels[keep]


def color_jitter(rng: np.random.Generator, image: np.ndarray, brightness: float = 32.0, contrast: float = 0.3,
                 saturation: float = 0.3) -> np.ndarray:
    """Random brightness (+-``brightness`` of 255), contrast and saturation (each +-fraction), clipped to 0..255."""
    mean = image.mean()
    image = (image - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean + rng.uniform(-brightness, brightness)
    grey = image.mean(axis=2, keepdims=True)
    image = grey + (image - grey) * rng.uniform(1 - saturation, 1 + saturation)
    return np.clip(image, 0.0, 255.0, out=image)


def augment(rng: np.random.Generator, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
            crop_probability: float = 0.5, min_scale: float = 0.6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training recipe: a random flip, a random crop (resized back) ``crop_probability`` of the time, colour
    jitter. ``image`` (S, S, 3) uint8 or float; returns (float32 image, boxes, labels)."""
    image = image.astype(np.float32)
    if rng.random() < 0.5:
        image, boxes = hflip(image, boxes)
    if rng.random() < crop_probability:
        image, boxes, labels = crop_resize(image, boxes, labels, crop_window(rng, image.shape[0], min_scale))
    return color_jitter(rng, image), boxes, labels
