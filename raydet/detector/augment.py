"""Augmentations that move every box with its image: each function takes and returns the image AND its boxes (and
labels, where boxes can be dropped), so they cannot drift apart.

numpy and OpenCV only (no TensorFlow): the training input pipeline calls them per image, then builds the heads'
targets from the moved boxes (raydet.detector.targets). Images are (S, S, 3) RGB pixel values 0..255, uint8 or float32
in (uint8 is faster: the pipeline keeps it until ``augment`` returns float32); boxes are (K, 4) float xyxy
normalized to [0, 1] with their (K,) int labels, real rows only (no padding). Box coordinates are continuous:
pixel i spans [i, i + 1].

The recipe (``augment_batch``) is Ultralytics' for small data sets: a 4-image ``mosaic``, a random zoom and shift
(``affine_matrix`` + ``warp``: one warpAffine per image), flips and quarter turns, HSV jitter through lookup tables.
"""

from __future__ import annotations

import cv2
import numpy as np

from raydet.config import AugmentConfig
from raydet.detector.boxes import area

PAD = 114  # Ultralytics' grey for pixels no image covers (mosaic canvas, zoomed-out borders)


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right: x -> 1 - x, so (x0, y0, x1, y1) -> (1 - x1, y0, 1 - x0, y1)."""
    flipped = (
        np.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], axis=1) if len(boxes) else boxes
    )
    # cv2.flip: 0.01 ms at 224 px against 0.5 ms for numpy's copy of a reversed view
    return cv2.flip(image, 1), flipped.astype(boxes.dtype, copy=False)


def vflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror top-bottom: y -> 1 - y, so (x0, y0, x1, y1) -> (x0, 1 - y1, x1, 1 - y0)."""
    flipped = (
        np.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], axis=1) if len(boxes) else boxes
    )
    return cv2.flip(image, 0), flipped.astype(boxes.dtype, copy=False)


def rot90(image: np.ndarray, boxes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` quarter turns counter-clockwise, as ``np.rot90(image, k)``. One turn sends output pixel (row i, col j)
    to input (row j, col S-1-i), i.e. a point (x, y) -> (y, 1 - x): (x0, y0, x1, y1) -> (y0, 1 - x1, y1, 1 - x0)."""
    k %= 4
    for _ in range(k if len(boxes) else 0):
        boxes = np.stack([boxes[:, 1], 1.0 - boxes[:, 2], boxes[:, 3], 1.0 - boxes[:, 0]], axis=1).astype(boxes.dtype)
    turns = (None, cv2.ROTATE_90_COUNTERCLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_CLOCKWISE)
    return (image.copy() if k == 0 else cv2.rotate(image, turns[k])), boxes


def hsv_jitter(rng: np.random.Generator, image: np.ndarray, h: float, s: float, v: float) -> np.ndarray:
    """Ultralytics' augment_hsv: hue shifted by up to +-``h`` of the colour circle, saturation and value scaled by
    1 +- ``s`` and 1 +- ``v``, on OpenCV's uint8 HSV through one lookup table (cheap: no float image).

    ``image`` (S, S, 3) RGB, uint8 or float 0..255 -> the same shape and dtype. Gains all 0: returned as it is
    (a uint8 HSV round trip is not exact) and nothing drawn.
    """
    if not (h or s or v):
        return image
    gains = rng.uniform(-1, 1, 3) * (h, s, v)
    pixels = image if image.dtype == np.uint8 else np.clip(image, 0, 255).round().astype(np.uint8)
    x = np.arange(256, dtype=np.float64)
    lut = (
        np.stack(
            [
                (x + gains[0] * 180) % 180,  # OpenCV's uint8 hue is degrees / 2, 0..179: it wraps at 180
                np.clip(x * (1 + gains[1]), 0, 255),
                np.clip(x * (1 + gains[2]), 0, 255),
            ],
            axis=1,
        )
        .astype(np.uint8)
        .reshape(256, 1, 3)
    )
    out = cv2.cvtColor(cv2.LUT(cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV), lut), cv2.COLOR_HSV2RGB)
    return out if image.dtype == np.uint8 else out.astype(image.dtype)


def affine_matrix(
    rng: np.random.Generator, size: int, scale: float, translate: float, in_size: int | None = None
) -> np.ndarray:
    """A random zoom about the centre plus a shift, as a 2x3 matrix on continuous pixel coordinates: a point x of
    an ``in_size`` (default ``size``) square image -> z * (x - in_size / 2) + t in the ``size`` output, with z
    uniform in [1 - scale, 1 + scale] (both axes) and t uniform in [(0.5 - translate) size, (0.5 + translate) size]
    per axis. An in_size of 2S (a mosaic canvas) and z = 1 is Ultralytics' centred S window (border -S/2)."""
    in_size = size if in_size is None else in_size
    zoom = rng.uniform(1 - scale, 1 + scale)
    tx, ty = rng.uniform(0.5 - translate, 0.5 + translate, 2) * size
    return np.array([[zoom, 0.0, tx - zoom * in_size / 2], [0.0, zoom, ty - zoom * in_size / 2]])


def _visible(moved: np.ndarray, clipped: np.ndarray, min_visible: float) -> np.ndarray:
    """Which boxes keep their place: at least ``min_visible`` of the area they had before the clip stays."""
    before = area(moved)
    return (before > 0) & (area(clipped) >= min_visible * before)


def warp(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    matrix: np.ndarray,
    out_size: int,
    min_visible: float,
    min_box_px: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``image`` (S, S, 3) through the zoom + shift ``matrix`` (``affine_matrix``: no rotation or shear, so box
    corners map exactly) into an (out_size, out_size, 3) image of the same dtype: bilinear, uncovered pixels ``PAD``.

    Boxes (K, 4) normalized to S -> normalized to out_size, clipped to [0, 1]; kept (with their labels) when at
    least ``min_visible`` of their area stays in the output and both sides span ``min_box_px`` output pixels.
    Returns (image, boxes, labels).
    """
    if matrix[0, 1] or matrix[1, 0] or not (matrix[0, 0] > 0 and matrix[1, 1] > 0):
        raise ValueError(f"warp maps boxes only through a positive zoom and a shift, got {matrix.tolist()}")
    # OpenCV indexes pixel centres (u = x - 0.5): u' = z u + b + (z - 1) / 2 for x' = z x + b
    pixel_centres = matrix.copy()
    pixel_centres[:, 2] += (matrix[[0, 1], [0, 1]] - 1) / 2
    out = cv2.warpAffine(
        image,
        pixel_centres,
        (out_size, out_size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(PAD, PAD, PAD),
    )
    if not len(boxes):
        return out, boxes, labels
    zoom = np.array([matrix[0, 0], matrix[1, 1]] * 2)
    shift = np.array([matrix[0, 2], matrix[1, 2]] * 2)
    moved = (boxes.astype(np.float64) * image.shape[0] * zoom + shift) / out_size
    clipped = moved.clip(0.0, 1.0)
    sides = (clipped[:, 2:] - clipped[:, :2]) * out_size
    keep = _visible(moved, clipped, min_visible) & (sides >= min_box_px).all(axis=1)
    return out, clipped[keep].astype(boxes.dtype), labels[keep]


def mosaic_at(
    images, boxes_list, labels_list, size: int, xc: int, yc: int, min_visible: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ultralytics' load_mosaic with its centre given: four (S, S, 3) images on a (2S, 2S, 3) canvas of ``PAD``,
    top-left, top-right, bottom-left, bottom-right, each touching the centre (xc, yc) (pixels, in [S/2, 3S/2])
    and cut where the canvas ends.

    Each image's boxes (K, 4) normalized to S move to the canvas (x * S + the tile's left edge; y likewise),
    are clipped to the tile's visible part and kept when at least ``min_visible`` of their area stays.
    Returns (canvas, boxes (N, 4) normalized to 2S, labels (N,)); the canvas has the images' dtype.
    """
    canvas = np.full((2 * size, 2 * size, 3), PAD, np.result_type(*images))
    out_boxes, out_labels = [], []
    for tile, (image, boxes, labels) in enumerate(zip(images, boxes_list, labels_list, strict=True)):
        left = xc - size if tile in (0, 2) else xc  # the left column ends at xc, the right one starts there
        top = yc - size if tile in (0, 1) else yc
        x0, y0 = max(left, 0), max(top, 0)  # the tile's visible part of the canvas
        x1, y1 = min(left + size, 2 * size), min(top + size, 2 * size)
        canvas[y0:y1, x0:x1] = image[y0 - top : y1 - top, x0 - left : x1 - left]
        moved = boxes.astype(np.float64) * size + (left, top, left, top)
        clipped = moved.clip((x0, y0, x0, y0), (x1, y1, x1, y1))
        keep = _visible(moved, clipped, min_visible)
        out_boxes.append(clipped[keep] / (2 * size))
        out_labels.append(labels[keep])
    dtype = boxes_list[0].dtype
    return canvas, np.concatenate(out_boxes).astype(dtype).reshape(-1, 4), np.concatenate(out_labels)


def mosaic(
    rng: np.random.Generator, images, boxes_list, labels_list, size: int, min_visible: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mosaic_at`` with the centre drawn as Ultralytics does, each coordinate uniform in [S/2, 3S/2): every
    tile shows at least a quarter of its image. Returns (2S canvas, boxes normalized to 2S, labels)."""
    xc, yc = (int(c) for c in rng.uniform(size / 2, 3 * size / 2, 2))
    return mosaic_at(images, boxes_list, labels_list, size, xc, yc, min_visible)


def augment(
    rng: np.random.Generator,
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    cfg: AugmentConfig,
    out_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image (or mosaic canvas): a random zoom and shift into ``out_size`` (default its own side; a 2S
    canvas's zoom is relative to the canvas, so objects keep their scale on average), then flips, quarter turns
    and HSV jitter, as ``cfg`` says. ``image`` (S, S, 3) uint8 or float 0..255; returns (float32 image, boxes,
    labels). The flips come after the warp: on S x S pixels, not on a 2S canvas."""
    size = image.shape[0]
    out_size = out_size or size
    matrix = affine_matrix(rng, out_size, cfg.scale, cfg.translate, in_size=size)
    image, boxes, labels = warp(image, boxes, labels, matrix, out_size, cfg.min_visible, cfg.min_box_px)
    if rng.random() < cfg.hflip:
        image, boxes = hflip(image, boxes)
    if rng.random() < cfg.vflip:
        image, boxes = vflip(image, boxes)
    if rng.random() < cfg.rot90:
        image, boxes = rot90(image, boxes, int(rng.integers(1, 4)))
    image = hsv_jitter(rng, image, cfg.hsv_h, cfg.hsv_s, cfg.hsv_v)
    return image.astype(np.float32), boxes, labels


def augment_batch(
    rng: np.random.Generator, images, boxes_list, labels_list, cfg: AugmentConfig, use_mosaic: bool = True
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """A batch of (S, S, 3) images with their boxes and labels -> lists of (float32 image, boxes, labels), each
    image through ``augment``. With ``use_mosaic``, each one is first, ``cfg.mosaic`` of the time, the top-left
    tile of a ``mosaic`` with 3 others drawn from the batch (with replacement; a batch of 1: itself 4 times).
    Deterministic given ``rng``."""
    out_images, out_boxes, out_labels = [], [], []
    for i, (image, boxes, labels) in enumerate(zip(images, boxes_list, labels_list, strict=True)):
        size = image.shape[0]
        if use_mosaic and rng.random() < cfg.mosaic:
            others = [j for j in range(len(images)) if j != i] or [i]
            picks = [i] + [others[j] for j in rng.integers(0, len(others), 3)]
            image, boxes, labels = mosaic(
                rng,
                [images[j] for j in picks],
                [boxes_list[j] for j in picks],
                [labels_list[j] for j in picks],
                size,
                cfg.min_visible,
            )
        image, boxes, labels = augment(rng, image, boxes, labels, cfg, out_size=size)
        out_images.append(image)
        out_boxes.append(boxes)
        out_labels.append(labels)
    return out_images, out_boxes, out_labels
