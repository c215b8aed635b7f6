"""Box helpers on numpy arrays. No Ray, no TensorFlow.

Formats, named everywhere a box crosses a boundary:
- ``xyxy``: ``(..., 4)`` as ``(xmin, ymin, xmax, ymax)``;
- ``xywh``: ``(..., 4)`` as ``(xmin, ymin, width, height)`` (COCO's ``bbox``);
- *normalized*: coordinates divided by the image width/height, in ``[0, 1]``; *pixel*: in image pixels.
Pixel boxes here are continuous (no VOC ``+1`` convention): a box from 10 to 20 is 10 pixels wide.
"""

from __future__ import annotations

import numpy as np


def _as_boxes(boxes: np.ndarray, name: str = "boxes") -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.shape[-1:] != (4,):
        raise ValueError(f"{name} must have shape (..., 4), got {arr.shape}")
    return arr


def area(boxes_xyxy: np.ndarray) -> np.ndarray:
    """``(..., 4)`` xyxy -> ``(...,)`` areas; inverted boxes have area 0."""
    b = _as_boxes(boxes_xyxy)
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def xyxy_to_xywh(boxes_xyxy: np.ndarray) -> np.ndarray:
    b = _as_boxes(boxes_xyxy)
    return np.concatenate([b[..., :2], b[..., 2:] - b[..., :2]], axis=-1)


def xywh_to_xyxy(boxes_xywh: np.ndarray) -> np.ndarray:
    b = _as_boxes(boxes_xywh)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], axis=-1)


def _check_size(width: float, height: float) -> None:
    if not (width > 0 and height > 0):
        raise ValueError(
            f"image width and height must be positive to convert relative boxes, got {width!r} x {height!r}"
        )


def normalize_xyxy(boxes_xyxy_pixel: np.ndarray, width: float, height: float) -> np.ndarray:
    """Pixel xyxy -> normalized xyxy for an image of ``width`` x ``height`` pixels."""
    _check_size(width, height)
    return _as_boxes(boxes_xyxy_pixel) / np.array([width, height, width, height], dtype=np.float64)


def denormalize_xyxy(boxes_xyxy_norm: np.ndarray, width: float, height: float) -> np.ndarray:
    """Normalized xyxy -> pixel xyxy for an image of ``width`` x ``height`` pixels."""
    _check_size(width, height)
    return _as_boxes(boxes_xyxy_norm) * np.array([width, height, width, height], dtype=np.float64)


def clip(boxes_xyxy: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip xyxy boxes to ``[0, width] x [0, height]`` (use 1, 1 for normalized boxes)."""
    b = _as_boxes(boxes_xyxy)
    return np.stack(
        [
            np.clip(b[..., 0], 0, width),
            np.clip(b[..., 1], 0, height),
            np.clip(b[..., 2], 0, width),
            np.clip(b[..., 3], 0, height),
        ],
        axis=-1,
    )


def iou_matrix(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """``(N, 4)`` and ``(M, 4)`` xyxy (same units) -> ``(N, M)`` intersection over union; 0 where the union is 0."""
    a = _as_boxes(a_xyxy, "a").reshape(-1, 4)
    b = _as_boxes(b_xyxy, "b").reshape(-1, 4)
    # one (N, M) array per side, not (N, M, 2) pairs: on the 100 x 100 boxes of NMS the strided pairs cost 4x more
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
