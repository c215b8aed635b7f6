"""Drawings of detections with OpenCV: boxes with labels, contact sheets, PNG files. No Ray, no TensorFlow.

Images are RGB ``(H, W, 3)`` uint8 everywhere here; the conversion to OpenCV's BGR happens only in
:func:`write_png`. Ground truth is drawn in green, predictions in red on top of it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

GT_COLOR = (0, 200, 0)  # RGB
PRED_COLOR = (230, 0, 0)  # RGB
MIN_SIDE = 384  # smaller images are upscaled first: a 64 px image has no room for legible text
# A drawing has at most this many pixels, whatever the image's aspect (6 MB of RGB, a few MB of PNG): the
# upscale for MIN_SIDE stops there, and larger images are shrunk to it. A 1000 x 1 strip upscaled to 384 px
# high would otherwise be 147 megapixels; a 100-megapixel photo is drawn at 2 megapixels.
MAX_DRAW_PIXELS = 2_000_000
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BACKGROUND = (40, 40, 40)  # contact-sheet tiles' padding, RGB


def _check_image(image: np.ndarray, name: str = "image_rgb") -> np.ndarray:
    img = np.asarray(image)
    if (
        img.dtype != np.uint8
        or img.ndim not in (2, 3)
        or (img.ndim == 3 and img.shape[2] not in (1, 3))
        or img.shape[0] < 1
        or img.shape[1] < 1
    ):
        raise ValueError(f"{name} must be an (H, W, 3) uint8 RGB image, got {img.dtype} {img.shape}")
    if img.ndim == 2 or img.shape[2] == 1:  # grayscale: the drawing itself is in colour
        img = cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2RGB)
    return img


def drawing_scale(height: int, width: int, min_side: int = MIN_SIDE, max_pixels: int = MAX_DRAW_PIXELS) -> float:
    """Factor :func:`draw_detections` scales an ``height`` x ``width`` image by: the integer that brings the shorter
    side to at least ``min_side`` (1 for large images), lowered (to a fraction if need be) so that the drawing has
    at most ``max_pixels`` pixels."""
    h, w = max(1, int(height)), max(1, int(width))
    up = max(1, math.ceil(min_side / min(h, w)))
    if h * w * up * up <= max_pixels:
        return up
    return math.sqrt(max_pixels / (h * w))


def drawing_size(height: int, width: int, scale: float, max_pixels: int = MAX_DRAW_PIXELS) -> tuple[int, int]:
    """(height, width) of the drawing of an ``height`` x ``width`` image at ``scale``: at least 1 px a side and at
    most ``max_pixels`` pixels (a side rounded up to 1 px gives the other side less, so a 10^8 x 1 strip is drawn
    at most ``max_pixels`` long)."""
    out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
    if out_h * out_w > max_pixels:
        if out_h <= out_w:
            out_h = min(out_h, max(1, math.isqrt(max_pixels)))
            out_w = max(1, min(out_w, max_pixels // out_h))
        else:
            out_w = min(out_w, max(1, math.isqrt(max_pixels)))
            out_h = max(1, min(out_h, max_pixels // out_w))
    return out_h, out_w


def _label_box(
    img: np.ndarray, text: str, x: int, y: int, color, font_scale: float, thickness: int, below: bool = False
) -> None:
    """Text on a filled rectangle of ``color``, above the point (x, y) (below it if ``below`` or no room)."""
    (tw, th), base = cv2.getTextSize(text, _FONT, font_scale, thickness)
    pad = max(2, thickness)
    h, w = img.shape[:2]
    box_h = th + base + 2 * pad
    top = y if below or y - box_h < 0 else y - box_h
    top = min(max(0, top), max(0, h - box_h))
    left = min(max(0, x), max(0, w - tw - 2 * pad))
    cv2.rectangle(img, (left, top), (left + tw + 2 * pad, top + box_h), color, cv2.FILLED)
    # black text on light fills, white on dark ones (ITU-R BT.601 luma)
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
    cv2.putText(img, text, (left + pad, top + pad + th), _FONT, font_scale, ink, thickness, cv2.LINE_AA)


def _boxes(boxes, n_names: int, name: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
    if len(arr) != n_names:
        raise ValueError(f"{name}: {len(arr)} boxes but {n_names} names")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds non-finite coordinates: {arr.tolist()}")
    return arr


def draw_detections(
    image_rgb: np.ndarray,
    gt_boxes: np.ndarray,
    gt_names: Sequence[str],
    pred_boxes: np.ndarray,
    pred_names: Sequence[str],
    pred_scores: Sequence[float],
    scale: float | None = None,
) -> np.ndarray:
    """A drawn copy of ``image_rgb`` (H, W, 3) uint8: ground truth in green with its class name, predictions in red
    with ``"name 0.93"``, each label on a filled background.

    ``gt_boxes`` (G, 4) and ``pred_boxes`` (P, 4) are xyxy in this image's pixels. The copy is scaled by
    ``scale`` first (default :func:`drawing_scale`: the shorter side brought to at least ``MIN_SIDE``, the whole
    kept under ``MAX_DRAW_PIXELS``), so the result is :func:`drawing_size` (about H * scale, W * scale; never
    more than ``MAX_DRAW_PIXELS`` pixels, whatever ``scale`` asks); line width and text size follow its size.
    """
    img = _check_image(image_rgb)
    gt = _boxes(gt_boxes, len(gt_names), "gt_boxes")
    pred = _boxes(pred_boxes, len(pred_names), "pred_boxes")
    if len(pred_scores) != len(pred):
        raise ValueError(f"pred_scores: {len(pred_scores)} scores for {len(pred)} boxes")
    s = drawing_scale(*img.shape[:2]) if scale is None else float(scale)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    out_h, out_w = drawing_size(img.shape[0], img.shape[1], s)
    if (out_h, out_w) == img.shape[:2]:
        out = img.copy()
    else:  # INTER_AREA shrinks without aliasing; enlarging keeps edges crisp with INTER_LINEAR
        shrink = out_h <= img.shape[0] and out_w <= img.shape[1]
        out = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    sx, sy = out_w / img.shape[1], out_h / img.shape[0]  # per axis: a side held at 1 px scales apart
    side = min(out.shape[:2])
    thickness = max(1, round(side / 200))
    font_scale = max(0.45, side / 640)
    text_thickness = max(1, round(font_scale * 1.5))

    def corners(box):
        box = np.clip(np.asarray(box, dtype=np.float64) * (sx, sy, sx, sy), -1, max(out_w, out_h) + 1)
        x0, y0, x1, y1 = box.round().astype(int)
        return (x0, y0), (x1, y1)

    # 1. every box first, then the labels, so a label is never crossed by another box's line
    # ground truth twice as thick, so it still shows around a prediction drawn right on top of it
    for box in gt:
        cv2.rectangle(out, *corners(box), GT_COLOR, 2 * thickness, cv2.LINE_8)
    for box in pred:
        cv2.rectangle(out, *corners(box), PRED_COLOR, thickness, cv2.LINE_8)
    # 2. ground-truth names inside the box's bottom-left, predictions above the box: they rarely collide
    for box, name in zip(gt, gt_names, strict=True):
        (x0, _), (_, y1) = corners(box)
        (_, th), base = cv2.getTextSize(str(name), _FONT, font_scale, text_thickness)
        _label_box(
            out,
            str(name),
            x0,
            y1 - th - base - 2 * max(2, text_thickness),
            GT_COLOR,
            font_scale,
            text_thickness,
            below=True,
        )
    for box, name, score in zip(pred, pred_names, pred_scores, strict=True):
        (x0, y0), _ = corners(box)
        _label_box(out, f"{name} {float(score):.2f}", x0, y0, PRED_COLOR, font_scale, text_thickness)
    return out


def contact_sheet(
    images: Sequence[np.ndarray], columns: int = 4, tile: int = 256, captions: Sequence[str] | None = None
) -> np.ndarray:
    """Images side by side: each fitted (aspect kept) into a ``tile`` x ``tile`` cell on a dark background, with an
    optional caption along the cell's bottom. ``min(columns, len(images))`` columns and as many rows as needed:
    the result is (rows * tile, cols * tile, 3) uint8 RGB."""
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if columns < 1 or tile < 16:
        raise ValueError(f"columns must be >= 1 and tile >= 16 pixels, got columns={columns!r}, tile={tile!r}")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    cols = min(columns, len(images))
    rows = math.ceil(len(images) / cols)
    sheet = np.full((rows * tile, cols * tile, 3), _BACKGROUND, np.uint8)
    for i, image in enumerate(images):
        img = _check_image(image, f"images[{i}]")
        f = tile / max(img.shape[:2])
        h, w = max(1, round(img.shape[0] * f)), max(1, round(img.shape[1] * f))
        # INTER_AREA shrinks without aliasing; enlarging keeps the drawn lines crisp with INTER_LINEAR
        interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
        cell = sheet[(i // cols) * tile : (i // cols + 1) * tile, (i % cols) * tile : (i % cols + 1) * tile]
        top, left = (tile - h) // 2, (tile - w) // 2
        cell[top : top + h, left : left + w] = cv2.resize(img, (w, h), interpolation=interp)
        if captions is not None and captions[i]:
            _caption(cell, str(captions[i]))
    return sheet


def _caption(cell: np.ndarray, text: str) -> None:
    """Caption along the bottom of a tile, shrunk to fit its width."""
    font_scale, thickness = max(0.35, cell.shape[1] / 640), 1
    (tw, th), base = cv2.getTextSize(text, _FONT, font_scale, thickness)
    if tw > cell.shape[1] - 8:
        font_scale *= (cell.shape[1] - 8) / tw
        (tw, th), base = cv2.getTextSize(text, _FONT, font_scale, thickness)
    strip = th + base + 6
    cell[-strip:] = (cell[-strip:] * 0.35).astype(np.uint8)  # darken rather than hide what is under it
    cv2.putText(cell, text, (4, cell.shape[0] - base - 3), _FONT, font_scale, (255, 255, 255), thickness, cv2.LINE_AA)


def encode_png(image_rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 RGB image -> the bytes of its PNG file."""
    img = _check_image(image_rgb)
    ok, data = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {img.shape} image as PNG")
    return data.tobytes()


def write_png(path: str | os.PathLike, image_rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 RGB image as PNG, creating folders. Encoded in memory and written by Python, so
    any Unicode path works (``cv2.imwrite`` cannot open non-ASCII paths on Windows). Returns the path."""
    data = encode_png(image_rgb)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
