"""CenterNet training targets on numpy arrays. No Ray, no TensorFlow.

Per image, from ``(K, 4)`` xyxy normalized boxes and ``(K,)`` int class labels:

- ``heatmap`` ``(grid, grid, C)`` float32: one Gaussian per object at its centre cell in its class channel,
  element-wise max where Gaussians overlap, exactly 1.0 at each centre cell;
- ``box_target`` ``(grid, grid, 6)`` float32, channels ``[off_x, off_y, w, h, mask, size_weight]``: at each
  object's centre cell the sub-cell offset of the centre (cell units) and mask 1; over the object's Gaussian (the
  heatmap's window) its width / height (normalized by the image side) and a size weight, the Gaussian divided by
  its sum, so an object's size weights add up to 1, or less where a smaller object takes some of its cells
  (TTFNet's Gaussian-area regression); zeros elsewhere. Every centre cell holds its own object's box.

Arrays are indexed ``[y, x]`` (row = cell ``iy``, column = cell ``ix``), as the model's outputs.
"""

from __future__ import annotations

import math
import operator
from functools import lru_cache

import numpy as np

from raydet.detector.boxes import area

# Smallest Gaussian radius in cells. CenterNet's radius is under 1 for boxes under ~3.7 cells (~15 input px at
# stride 4), which left a one-cell peak whose neighbours took the full negative loss; a floor of 1 gives every
# object a 3 x 3 peak (neighbours exp(-2) = 0.135), so a near miss of one cell costs little (docs/TRAINING.md).
MIN_RADIUS = 1
BOX_TARGET_CHANNELS = 6  # [off_x, off_y, w, h, mask, size_weight]


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius (in cells) for a box of ``height`` x ``width`` cells.

    The smallest of the three CornerNet/CenterNet cases (both corners shifted inwards, outwards, or one each)
    so that a box whose corners move by the radius still has IoU >= ``min_overlap`` with the true box.
    The quadratics are solved as in the reference code, ``r = (b + sqrt(b^2 - 4ac)) / 2``.
    """
    if not (height >= 0 and width >= 0):
        raise ValueError(f"box height and width must be >= 0 cells, got {height!r} x {width!r}")
    if not 0 < min_overlap < 1:
        raise ValueError(f"min_overlap must be in (0, 1), got {min_overlap!r}")
    size, prod = height + width, height * width
    b1, c1 = size, prod * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 * b1 - 4 * c1)) / 2
    b2, c2 = 2 * size, (1 - min_overlap) * prod
    r2 = (b2 + math.sqrt(b2 * b2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * size, (min_overlap - 1) * prod
    r3 = (b3 + math.sqrt(b3 * b3 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


@lru_cache(maxsize=64)
def _gaussian_kernel(radius: int) -> np.ndarray:
    """``(2r+1, 2r+1)`` float32 ``exp(-(dx^2 + dy^2) / (2 sigma^2))``, sigma = (2r+1)/6, 1.0 at the centre."""
    sigma = (2 * radius + 1) / 6
    d = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma * sigma)).astype(np.float32)
    kernel.setflags(write=False)
    return kernel


def _window(shape: tuple[int, int], cx: int, cy: int, r: int) -> tuple[slice, slice, slice, slice]:
    """The ``(2r+1) x (2r+1)`` window around cell ``(cx, cy)`` clipped to a ``shape`` map: (rows, cols) of the map
    and (rows, cols) of the kernel."""
    h, w = shape
    left, right = min(cx, r), min(w - cx, r + 1)
    top, bottom = min(cy, r), min(h - cy, r + 1)
    return (
        slice(cy - top, cy + bottom),
        slice(cx - left, cx + right),
        slice(r - top, r + bottom),
        slice(r - left, r + right),
    )


def draw_gaussian(heatmap_2d: np.ndarray, cx: int, cy: int, radius: int) -> np.ndarray:
    """Draw a Gaussian peak into ``heatmap_2d`` ``(H, W)`` in place (element-wise max) and return it.

    Centre at cell column ``cx``, row ``cy`` with value 1.0; sigma = (2 * radius + 1) / 6; only the
    ``(2r+1) x (2r+1)`` window around the centre is touched, clipped at the borders.
    """
    if heatmap_2d.ndim != 2:
        raise ValueError(f"heatmap_2d must be 2-D (H, W), got shape {heatmap_2d.shape}")
    h, w = heatmap_2d.shape
    cx, cy, r = operator.index(cx), operator.index(cy), operator.index(radius)
    if not (0 <= cx < w and 0 <= cy < h):
        raise ValueError(f"centre cell (cx={cx!r}, cy={cy!r}) is outside the {h} x {w} heatmap")
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {radius!r}")
    rows, cols, krows, kcols = _window((h, w), cx, cy, r)
    window = heatmap_2d[rows, cols]
    np.maximum(window, _gaussian_kernel(r)[krows, kcols], out=window)
    return heatmap_2d


def _check_sizes(num_classes: int, grid: int) -> None:
    if not (isinstance(grid, (int, np.integer)) and grid >= 1):
        raise ValueError(f"grid must be a positive int, got {grid!r}")
    if not (isinstance(num_classes, (int, np.integer)) and num_classes >= 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")


def _check_inputs(boxes, labels, num_classes: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to ``(K, 4)`` float64 xyxy normalized boxes and ``(K,)`` int64 labels."""
    _check_sizes(num_classes, grid)
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (K, 4) xyxy normalized, got {b.shape}")
    raw = np.asarray(labels)
    if raw.shape != (b.shape[0],):
        raise ValueError(f"labels must have shape ({b.shape[0]},) to match boxes, got {raw.shape}")
    lab = raw.astype(np.int64)
    if np.any(lab != raw):
        raise ValueError(f"labels must be integers, got {raw[lab != raw][:5].tolist()}")
    bad = (lab < 0) | (lab >= num_classes)
    if bad.any():
        raise ValueError(f"labels must be in [0, {num_classes}), got {lab[bad][:5].tolist()}")
    bad = ~np.all(np.isfinite(b) & (b >= 0) & (b <= 1), axis=1) | (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if bad.any():
        raise ValueError(f"boxes must be xyxy normalized in [0, 1] with x0 <= x1, y0 <= y1, got {b[bad][:3].tolist()}")
    return b, lab


def build_targets(boxes, labels, num_classes: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """One image's targets: ``(K, 4)`` xyxy normalized boxes (real rows only), ``(K,)`` int labels ->
    ``heatmap`` ``(grid, grid, num_classes)`` float32 and ``box_target`` ``(grid, grid, 6)`` float32.

    Centre cell ``ix = min(floor(cx * grid), grid - 1)`` (same for y); ``off_x = cx * grid - ix``;
    ``w = x1 - x0``, ``h = y1 - y0``; Gaussian radius ``max(MIN_RADIUS, int(gaussian_radius(ceil(h), ceil(w))))``
    with h, w in cells (CenterNet's ceil, raydet's floor).
    The size weights are the object's Gaussian over its window clipped to the map, divided by their sum.
    Zero-width or zero-height boxes are skipped. Objects go largest first, so where two Gaussians overlap the
    smaller object's size and weight are kept; then every centre cell gets its own object's offset, size, mask and
    weight (a smaller object's Gaussian never changes the box decode reads at a bigger one's centre), the smaller
    object's where two share a centre. The heatmap is the element-wise max.
    """
    b, lab = _check_inputs(boxes, labels, num_classes, grid)
    heatmap = np.zeros((grid, grid, num_classes), dtype=np.float32)
    box_target = np.zeros((grid, grid, BOX_TARGET_CHANNELS), dtype=np.float32)
    centres = []
    for i in np.argsort(-area(b), kind="stable"):
        x0, y0, x1, y1 = b[i].tolist()
        w, h = x1 - x0, y1 - y0
        if w <= 0 or h <= 0:
            continue
        gx, gy = (x0 + x1) / 2 * grid, (y0 + y1) / 2 * grid
        ix, iy = min(int(gx), grid - 1), min(int(gy), grid - 1)
        radius = max(MIN_RADIUS, int(gaussian_radius(math.ceil(h * grid), math.ceil(w * grid))))
        draw_gaussian(heatmap[:, :, lab[i]], ix, iy, radius)
        rows, cols, krows, kcols = _window((grid, grid), ix, iy, radius)
        weights = _gaussian_kernel(radius)[krows, kcols]
        weights = weights / weights.sum()
        box_target[rows, cols, 2:4] = (w, h)
        box_target[rows, cols, 5] = weights
        centres.append((iy, ix, (gx - ix, gy - iy, w, h, 1.0, weights[iy - rows.start, ix - cols.start])))
    for iy, ix, centre in centres:
        box_target[iy, ix] = centre
    return heatmap, box_target
