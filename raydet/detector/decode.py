"""Decode the dense heads into detections, on numpy arrays. No Ray, no TensorFlow.

The one decoder used by every model and consumer. Inputs are the model contract's outputs:
``heatmap`` ``(N, G, G, C)`` class scores and ``boxes`` ``(N, G, G, 4)`` channels ``[off_x, off_y, w, h]``
(offset of the centre inside its cell in cell units, width / height normalized by the image side).
Arrays are indexed ``[n, y, x, c]``; the flat index of a cell is its raster position in ``(y, x, c)`` order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raydet.detector.boxes import denormalize_xyxy, iou_matrix

TOP_K = 100  # detections per image at most, by default: COCO's maxDets
# Class-wise box NMS after the peaks: a large object can leave two peaks more than a cell apart, and the second
# box is a duplicate that COCO counts as a false positive. 0.7 is Ultralytics' default; its effect on the shared
# sets is in docs/TRAINING.md (it never lowered AP there).
NMS_IOU = 0.7


@dataclass(frozen=True, eq=False)
class Detections:
    """One image's detections, sorted by score descending (ties by flat index of the peak).

    ``boxes`` ``(D, 4)`` float64 xyxy normalized, ``labels`` ``(D,)`` int64, ``scores`` ``(D,)`` float64.
    """

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    def __post_init__(self):
        b = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        lab = np.asarray(self.labels, dtype=np.int64)
        s = np.asarray(self.scores, dtype=np.float64)
        if lab.shape != (b.shape[0],) or s.shape != (b.shape[0],):
            raise ValueError(
                f"Detections needs (D, 4) boxes, (D,) labels and scores, got {b.shape}, {lab.shape}, {s.shape}"
            )
        for name, value in (("boxes", b), ("labels", lab), ("scores", s)):
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _as_float(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a if np.issubdtype(a.dtype, np.floating) else a.astype(np.float64)


def find_peaks(heatmap: np.ndarray) -> np.ndarray:
    """``(N, H, W, C)`` scores -> ``(N, H, W, C)`` bool mask of peaks, per class channel.

    A cell is a peak when it is >= all 8 neighbours (the 3x3 max-pool test) and strictly > the 4 neighbours
    that come before it in raster order (up-left, up, up-right, left). Of two or more equal adjacent maxima
    only the first in raster order survives, so a plateau of two cells, or any plateau whose cells each have
    an earlier neighbour in it, gives one peak. Cells outside the map count as -inf.
    """
    h = _as_float(heatmap)
    if h.ndim != 4:
        raise ValueError(f"heatmap must have shape (N, H, W, C), got {h.shape}")
    rows, cols = h.shape[1:3]
    p = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    peak = np.ones(h.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            neighbour = p[:, 1 + dy : 1 + dy + rows, 1 + dx : 1 + dx + cols]
            earlier = dy < 0 or (dy == 0 and dx < 0)
            peak &= (h > neighbour) if earlier else (h >= neighbour)
    return peak


def _top_k(flat_idx: np.ndarray, scores: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``top_k`` best of ``flat_idx`` (ascending) by score, ties by flat index; sorted by score desc."""
    if flat_idx.size > top_k:
        kth = np.partition(scores, flat_idx.size - top_k)[flat_idx.size - top_k]
        keep = scores > kth
        ties = np.flatnonzero(scores == kth)[: top_k - int(keep.sum())]
        keep[ties] = True
        flat_idx, scores = flat_idx[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    return flat_idx[order], scores[order]


def _cell_boxes(boxes_map: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Gather ``[off_x, off_y, w, h]`` of ``(H, W, 4)`` at cells ``(ys, xs)`` -> ``(D, 4)`` xyxy normalized, clipped."""
    rows, cols = boxes_map.shape[:2]
    off_x, off_y, w, h = boxes_map[ys, xs].astype(np.float64).T
    cx, cy = (xs + off_x) / cols, (ys + off_y) / rows
    return np.clip(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1), 0.0, 1.0)


def nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> np.ndarray:
    """Class-wise greedy NMS: ``(D, 4)`` xyxy boxes, ``(D,)`` scores and labels -> indices kept, best first.

    A box is dropped when its IoU with a kept box of the same label is > ``iou``; ties by index.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s, lab = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if s.shape != (b.shape[0],) or lab.shape != (b.shape[0],):
        raise ValueError(f"nms needs (D, 4) boxes, (D,) scores and labels, got {b.shape}, {s.shape}, {lab.shape}")
    if not 0 <= iou <= 1:
        raise ValueError(f"nms iou must be in [0, 1], got {iou!r}")
    over = (iou_matrix(b, b) > iou) & (lab[:, None] == lab[None, :])
    np.fill_diagonal(over, False)
    order = np.argsort(-s, kind="stable")
    suppressed = np.zeros(b.shape[0], dtype=bool)
    # Only a box that overlaps another can suppress or be suppressed, and the greedy pass needs only those: most of
    # decode's 100 peaks overlap nothing, and a Python loop over all of them cost more than the model's int8 call.
    for i in order[over[order].any(axis=1)].tolist():
        if not suppressed[i]:
            suppressed |= over[i]  # ``over`` is symmetric: a box kept here is never suppressed by a later one
    return order[~suppressed[order]].astype(np.int64)


def _check_decode_args(heatmap, boxes, top_k, score_threshold, nms_iou) -> tuple[np.ndarray, np.ndarray]:
    h, b = _as_float(heatmap), _as_float(boxes)
    if h.ndim != 4:
        raise ValueError(f"heatmap must have shape (N, G, G, C), got {h.shape}")
    if b.ndim != 4 or b.shape[3] != 4 or b.shape[:3] != h.shape[:3]:
        raise ValueError(f"boxes must have shape {h.shape[:3] + (4,)} to match heatmap {h.shape}, got {b.shape}")
    if not (isinstance(top_k, (int, np.integer)) and top_k >= 1):
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if not np.isfinite(score_threshold):
        raise ValueError(f"score_threshold must be finite, got {score_threshold!r}")
    if nms_iou is not None and not 0 <= nms_iou <= 1:
        raise ValueError(f"nms_iou must be None or in [0, 1], got {nms_iou!r}")
    return h, b


def decode(
    heatmap, boxes, *, top_k: int = TOP_K, score_threshold: float = 0.01, nms_iou: float | None = NMS_IOU
) -> list[Detections]:
    """``heatmap`` ``(N, G, G, C)`` and ``boxes`` ``(N, G, G, 4)`` -> one :class:`Detections` per image.

    Per image: the peaks of :func:`find_peaks` with score >= ``score_threshold``, the ``top_k`` best over all
    classes; box ``cx = (ix + off_x) / G``, ``cy = (iy + off_y) / G``,
    ``xyxy = (cx - w/2, cy - h/2, cx + w/2, cy + h/2)`` clipped to [0, 1] (normalized); then class-wise
    greedy NMS at IoU ``nms_iou`` (default :data:`NMS_IOU`; None: none). Sorted by score descending, ties by
    flat index.
    """
    h, b = _check_decode_args(heatmap, boxes, top_k, score_threshold, nms_iou)
    rows, cols, classes = h.shape[1:]
    candidates = find_peaks(h) & (h >= score_threshold)
    out: list[Detections] = []
    for n in range(h.shape[0]):
        flat = h[n].reshape(-1)
        idx = np.flatnonzero(candidates[n].reshape(-1))
        idx, scores = _top_k(idx, flat[idx], top_k)
        ys, xs, labels = np.unravel_index(idx, (rows, cols, classes))
        det_boxes = _cell_boxes(b[n], ys, xs)
        if nms_iou is not None:
            keep = nms(det_boxes, scores, labels, nms_iou)
            det_boxes, scores, labels = det_boxes[keep], scores[keep], labels[keep]
        out.append(Detections(boxes=det_boxes, labels=labels, scores=scores))
    return out


def to_pixels(boxes_norm: np.ndarray, width: float, height: float) -> np.ndarray:
    """``(D, 4)`` xyxy normalized -> ``(D, 4)`` float64 xyxy pixels for a ``width`` x ``height`` image."""
    return denormalize_xyxy(boxes_norm, width, height)
