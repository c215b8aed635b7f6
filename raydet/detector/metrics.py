"""Detection metrics on numpy arrays: VOC AP@0.5 (all-point and 11-point), COCO mAP, per-class recall. No Ray, no
TensorFlow.

Every metric is computed in two steps so that evaluation can be spread over Ray actors:

1. per image (or per batch of images), on a worker: :func:`match_image` turns ground truth and detections into
   partial statistics (:class:`MatchStats`) that merge with ``+`` (or :meth:`MatchStats.concat` for many parts) in
   any order; each image must be matched in exactly one call;
2. on the driver: the merged statistics are finished by :func:`average_precision` / :func:`detection_summary`.

Conventions (decided here, documented once):

- Boxes are ``(N, 4)`` xyxy in any units shared by ground truth and detections (pixels or normalized); IoU is
  :func:`raydet.detector.boxes.iou_matrix`: continuous coordinates, no VOC ``+1`` pixel. That is exactly pycocotools'
  bbox IoU on the ``[x, y, w, h]`` boxes that :mod:`raydet.detector.coco` exports (``w = xmax - xmin``, no +/-1 shift).
- Detection ties of score are ordered by image id, then by position in the image's list, in every metric: that is
  the order pycocotools sees for the exported files.
- COCO mAP@[.5:.95], AP50 and AP75 follow pycocotools' ``COCOeval`` (bbox, areaRng "all", maxDets 100): per class,
  the top 100 detections of each image by score; each detection, in score order, takes the unmatched ground truth
  with the highest IoU >= t (ties of IoU go to the later ground truth, as pycocotools); precision made monotone and
  read at 101 recall points; classes without ground truth are excluded from the mean (pycocotools' ``-1``); with no
  ground truth at all the summary is ``nan`` where pycocotools prints ``-1``.
- VOC AP follows the VOC devkit (``voc_eval.py``): per class, each detection in score order looks at the ground
  truth of its class with the highest IoU (taken or not, difficult or not; the first of equal IoUs); if that IoU
  is > t (strictly): a difficult object makes the detection *ignored* (neither true nor false positive), otherwise
  it is a true positive if the object was not detected yet (which marks it) and a false positive if it was; an IoU
  <= t is a false positive. Recall counts only non-difficult objects. There is no 100-detection cap.
  ``"voc"`` is all-point interpolation (VOC2010+), ``"voc07"`` the 11-point one (VOC2007): the mean over
  ``t`` in the devkit's ``np.arange(0., 1.1, 0.1)``, of the highest precision at recall >= t (0 if never reached).
  Those are the devkit's own float values (0.30000000000000004, not 0.3; also at 0.6 and 0.7), so a recall of
  exactly 3/10 misses the 0.3 point, as it does in voc_eval.py.
- ``difficult`` (``gt_difficult`` of :func:`match_image`, the PREP ``difficult`` column) only changes VOC. COCO
  counts every object, difficult included: finding it is a true positive, missing it costs recall. The COCO export
  (:mod:`raydet.detector.coco`) gives every object ``iscrowd 0``, so pycocotools sees the same ground truth as raydet's
  COCO metrics and agrees with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raydet.detector.boxes import iou_matrix

# Built with the same expressions as pycocotools' Params so the float values are bit-identical.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
COCO_RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1)
COCO_MAX_DETS = 100  # pycocotools' largest maxDets, the one its headline mAP uses
VOC07_RECALL_POINTS = np.arange(0.0, 1.1, 0.1)  # voc_eval.py's points, float values included
AP_METHODS = ("coco", "voc", "voc07")


@dataclass(eq=False)
class MatchStats:
    """Partial detection statistics of some images; ``a + b`` merges them (concatenation and sums).

    One row per detection (``D`` rows), one column per IoU threshold (``T`` columns):
    ``scores`` (D,) float64; ``labels`` (D,) int64 class indices; ``image_ids`` (D,) int64 and ``det_index`` (D,)
    int64, the detection's position in its image's list (both only order ties of score, as pycocotools does);
    ``coco_counted`` (D,) bool, False for detections past the 100 best of their image and class (COCO drops them);
    ``tp`` (D, T) bool, true positive under COCO's matching at ``iou_thresholds[t]``; ``voc_tp`` (D, T) bool, true
    positive under the VOC devkit's matching; ``voc_ignored`` (D, T) bool, detections the VOC devkit ignores (their
    best object is difficult); a VOC false positive is neither; ``gt_per_class`` (C,) int64 ground-truth objects
    per class (all, as COCO counts them); ``voc_gt_per_class`` (C,) int64 the non-difficult ones (VOC's npos);
    ``iou_thresholds`` (T,) float64.
    """

    scores: np.ndarray
    labels: np.ndarray
    image_ids: np.ndarray
    det_index: np.ndarray
    coco_counted: np.ndarray
    tp: np.ndarray
    voc_tp: np.ndarray
    voc_ignored: np.ndarray
    gt_per_class: np.ndarray
    voc_gt_per_class: np.ndarray
    iou_thresholds: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.gt_per_class.shape[0])

    @classmethod
    def empty(cls, num_classes: int, iou_thresholds: np.ndarray = COCO_IOU_THRESHOLDS) -> MatchStats:
        """Statistics of no image: the neutral element of ``+``."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes!r}")
        thr = _check_thresholds(iou_thresholds)
        d = 0
        return cls(
            scores=np.zeros(d),
            labels=np.zeros(d, np.int64),
            image_ids=np.zeros(d, np.int64),
            det_index=np.zeros(d, np.int64),
            coco_counted=np.zeros(d, bool),
            tp=np.zeros((d, thr.size), bool),
            voc_tp=np.zeros((d, thr.size), bool),
            voc_ignored=np.zeros((d, thr.size), bool),
            gt_per_class=np.zeros(num_classes, np.int64),
            voc_gt_per_class=np.zeros(num_classes, np.int64),
            iou_thresholds=thr,
        )

    @classmethod
    def concat(cls, parts: Sequence[MatchStats]) -> MatchStats:
        """Merge many partial statistics at once (linear time; ``sum(parts)`` copies the growing arrays each step).
        At least one part; all of the same classes and thresholds."""
        if not parts:
            raise ValueError("MatchStats.concat needs at least one part (use MatchStats.empty for none)")
        first = parts[0]
        for other in parts[1:]:
            if other.num_classes != first.num_classes:
                raise ValueError(f"cannot merge statistics of {first.num_classes} and {other.num_classes} classes")
            if not np.array_equal(other.iou_thresholds, first.iou_thresholds):
                raise ValueError(
                    f"cannot merge statistics at IoU thresholds {first.iou_thresholds} and {other.iou_thresholds}"
                )

        def cat(field: str) -> np.ndarray:
            return np.concatenate([getattr(p, field) for p in parts])

        def total(field: str) -> np.ndarray:
            return np.sum([getattr(p, field) for p in parts], axis=0, dtype=np.int64)

        return cls(
            scores=cat("scores"),
            labels=cat("labels"),
            image_ids=cat("image_ids"),
            det_index=cat("det_index"),
            coco_counted=cat("coco_counted"),
            tp=cat("tp"),
            voc_tp=cat("voc_tp"),
            voc_ignored=cat("voc_ignored"),
            gt_per_class=total("gt_per_class"),
            voc_gt_per_class=total("voc_gt_per_class"),
            iou_thresholds=first.iou_thresholds,
        )

    def __add__(self, other: MatchStats) -> MatchStats:
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self  # 0 is the start of sum() and of a loop's accumulator, whichever side it is on
        if not isinstance(other, MatchStats):
            return NotImplemented
        return MatchStats.concat([self, other])

    __radd__ = __add__  # merging is order-free: the final sort decides the order


def _check_thresholds(iou_thresholds) -> np.ndarray:
    thr = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    if thr.size == 0 or not np.all((thr > 0) & (thr <= 1)):
        raise ValueError(f"iou_thresholds must be a non-empty list of values in (0, 1], got {iou_thresholds!r}")
    return thr


def _check_labels(labels, n: int, num_classes: int, name: str) -> np.ndarray:
    arr = np.asarray(labels).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have one label per box ({n}), got shape {np.shape(labels)}")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{name} must be class indices in [0, {num_classes}), got {arr.tolist()}")
    return arr.astype(np.int64)


def _check_difficult(gt_difficult, n: int) -> np.ndarray:
    if gt_difficult is None:
        return np.zeros(n, bool)
    arr = np.asarray(gt_difficult).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(
            f"gt_difficult must have one flag per ground-truth box ({n}), got shape {np.shape(gt_difficult)}"
        )
    flags = arr.dtype == bool or np.issubdtype(arr.dtype, np.integer)
    if arr.size and not (flags and np.all((arr == 0) | (arr == 1))):
        raise ValueError(f"gt_difficult must be booleans or 0/1, got {arr.tolist()}")
    return arr.astype(bool)


def _check_boxes(boxes, name: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) xyxy, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds non-finite coordinates: {arr.tolist()}")
    return arr


def _coco_matches(ious: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """pycocotools' greedy matching of one image and class. ``ious`` (D, G), rows in score order -> (D, T) bool."""
    n_det, n_gt = ious.shape
    tp = np.zeros((n_det, thresholds.size), bool)
    if n_gt == 0:
        return tp
    limit = np.minimum(thresholds, 1 - 1e-10)[:, None]  # pycocotools caps the threshold the same way
    taken = np.zeros((thresholds.size, n_gt), bool)
    for d in range(n_det):
        cand = ~taken & (ious[d][None, :] >= limit)  # (T, G)
        masked = np.where(cand, ious[d][None, :], -1.0)
        # the highest IoU wins; among equal IoUs the later ground truth (pycocotools replaces on >=)
        best = n_gt - 1 - np.argmax(masked[:, ::-1], axis=1)
        hit = cand.any(axis=1)
        tp[d] = hit
        taken[np.flatnonzero(hit), best[hit]] = True
    return tp


def _voc_matches(ious: np.ndarray, difficult: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The VOC devkit's matching of one image and class. ``ious`` (D, G), rows in score order; ``difficult`` (G,)
    bool -> (true positive, ignored), each (D, T) bool."""
    n_det, n_gt = ious.shape
    tp = np.zeros((n_det, thresholds.size), bool)
    ignored = np.zeros((n_det, thresholds.size), bool)
    if n_gt == 0:
        return tp, ignored
    detected = np.zeros((thresholds.size, n_gt), bool)
    for d in range(n_det):
        j = int(np.argmax(ious[d]))  # the best ground truth, taken or not: a duplicate is a false positive
        over = ious[d, j] > thresholds  # (T,)
        if difficult[j]:
            ignored[d] = over  # a difficult object is never marked detected: every detection on it is ignored
            continue
        hit = over & ~detected[:, j]
        tp[d] = hit
        detected[hit, j] = True
    return tp, ignored


def match_image(
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    det_boxes: np.ndarray,
    det_labels: np.ndarray,
    det_scores: np.ndarray,
    num_classes: int,
    iou_thresholds: np.ndarray = COCO_IOU_THRESHOLDS,
    image_id: int = 0,
    gt_difficult: np.ndarray | None = None,
) -> MatchStats:
    """Match one image's detections to its ground truth, per class, under COCO's and the VOC devkit's rules.

    ``gt_boxes`` (G, 4) and ``det_boxes`` (D, 4) xyxy in the same units (pixels or normalized; padding rows must
    be removed first); ``gt_labels`` (G,) and ``det_labels`` (D,) class indices in ``[0, num_classes)``;
    ``det_scores`` (D,) confidences; ``gt_difficult`` (G,) bool (or 0/1), ``None`` for no difficult object (it
    only changes VOC, see the module docstring). ``image_id`` must be unique per image: it orders detections of
    equal score (use the id :func:`raydet.detector.coco.ground_truth` gives the image to agree with pycocotools on
    ties). Returns the image's :class:`MatchStats` with one row per detection, in the order given.
    """
    thr = _check_thresholds(iou_thresholds)
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes!r}")
    gt = _check_boxes(gt_boxes, "gt_boxes")
    det = _check_boxes(det_boxes, "det_boxes")
    gl = _check_labels(gt_labels, len(gt), num_classes, "gt_labels")
    dl = _check_labels(det_labels, len(det), num_classes, "det_labels")
    difficult = _check_difficult(gt_difficult, len(gt))
    scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    if scores.shape != (len(det),) or not np.all(np.isfinite(scores)):
        raise ValueError(f"det_scores must be {len(det)} finite values, got {np.asarray(det_scores).tolist()}")

    n = len(det)
    tp, voc_tp, voc_ignored = (np.zeros((n, thr.size), bool) for _ in range(3))
    counted = np.zeros(n, bool)
    for c in np.unique(dl):
        # 1. this class's detections by score, stable on ties (pycocotools sorts with mergesort)
        rows = np.flatnonzero(dl == c)
        rows = rows[np.argsort(-scores[rows], kind="stable")]
        ious = iou_matrix(det[rows], gt[gl == c])
        # 2. VOC sees every detection; COCO only the best COCO_MAX_DETS of the image and class
        voc_tp[rows], voc_ignored[rows] = _voc_matches(ious, difficult[gl == c], thr)
        top = rows[:COCO_MAX_DETS]
        counted[top] = True
        tp[top] = _coco_matches(ious[:COCO_MAX_DETS], thr)
    return MatchStats(
        scores=scores,
        labels=dl,
        image_ids=np.full(n, int(image_id), np.int64),
        det_index=np.arange(n, dtype=np.int64),
        coco_counted=counted,
        tp=tp,
        voc_tp=voc_tp,
        voc_ignored=voc_ignored,
        gt_per_class=np.bincount(gl, minlength=num_classes).astype(np.int64),
        voc_gt_per_class=np.bincount(gl[~difficult], minlength=num_classes).astype(np.int64),
        iou_thresholds=thr,
    )


def _coco_ap(tp: np.ndarray, fp: np.ndarray, n_gt: int) -> float:
    """101-point interpolated AP exactly as pycocotools' ``accumulate``; rows already in score order."""
    tp_sum = np.cumsum(tp, dtype=np.float64)
    fp_sum = np.cumsum(fp, dtype=np.float64)
    recall = tp_sum / n_gt
    precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone from the right
    idx = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
    q = np.zeros(COCO_RECALL_POINTS.size)
    ok = idx < precision.size  # recall points never reached keep precision 0
    q[ok] = precision[idx[ok]]
    return float(q.mean())


def _voc_curve(tp: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision after each detection, as the VOC devkit; ``tp`` (D,) bool in score order, ignored
    detections already removed."""
    tp_sum = np.cumsum(tp, dtype=np.float64)
    fp_sum = np.cumsum(~tp, dtype=np.float64)
    return tp_sum / n_gt, tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps)


def _voc_ap(tp: np.ndarray, n_gt: int) -> float:
    """All-point interpolated AP (VOC2010+ devkit): the area under the monotone precision-recall curve."""
    recall, precision = _voc_curve(tp, n_gt)
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.maximum.accumulate(np.concatenate([[0.0], precision, [0.0]])[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def _voc07_ap(tp: np.ndarray, n_gt: int) -> float:
    """11-point interpolated AP (VOC2007): mean over ``VOC07_RECALL_POINTS`` of the best precision at recall >= t."""
    recall, precision = _voc_curve(tp, n_gt)
    best = [precision[recall >= t].max(initial=0.0) for t in VOC07_RECALL_POINTS]
    return float(np.mean(best))


def average_precision(stats: MatchStats, iou_index: int = 0, method: str = "coco") -> np.ndarray:
    """Per-class AP at ``stats.iou_thresholds[iou_index]`` -> (C,) float64, ``nan`` for classes without ground truth
    (for the VOC methods: without a non-difficult object).

    ``method="coco"``: pycocotools' matching and 101-point interpolation; ``"voc"``: the VOC devkit's matching and
    all-point interpolation (VOC2010+); ``"voc07"``: the same matching, 11-point interpolation (VOC2007). The VOC
    methods drop ignored detections (on difficult objects) before the cumulative sums.
    """
    if method not in AP_METHODS:
        raise ValueError(f"method must be one of {AP_METHODS}, got {method!r}")
    if not -stats.iou_thresholds.size <= iou_index < stats.iou_thresholds.size:
        raise ValueError(f"iou_index {iou_index!r} out of range for {stats.iou_thresholds.size} thresholds")
    order = score_order(stats)
    labels = stats.labels[order]
    n_gts = stats.gt_per_class if method == "coco" else stats.voc_gt_per_class
    ap = np.full(stats.num_classes, np.nan)
    for c in range(stats.num_classes):
        n_gt = int(n_gts[c])
        if n_gt == 0:
            continue
        rows = order[labels == c]
        if method == "coco":
            tp = stats.tp[rows, iou_index]
            ap[c] = _coco_ap(tp, stats.coco_counted[rows] & ~tp, n_gt)
        else:
            rows = rows[~stats.voc_ignored[rows, iou_index]]
            ap[c] = (_voc_ap if method == "voc" else _voc07_ap)(stats.voc_tp[rows, iou_index], n_gt)
    return ap


def score_order(stats: MatchStats) -> np.ndarray:
    """Indices of ``stats``' detections in the order AP accumulates them: score descending; ties by image, then by
    position in the image (pycocotools' order of the exported files). Every curve of the same detections must use
    it, or tied scores would trace another curve."""
    return np.lexsort((stats.det_index, stats.image_ids, -stats.scores))


def mean_over_classes(per_class: np.ndarray) -> float:
    """Mean of per-class values over the classes that have ground truth (nan entries left out); nan if none."""
    # classes without ground truth are nan and excluded, as pycocotools excludes its -1 entries
    valid = per_class[~np.isnan(per_class)]
    return float(valid.mean()) if valid.size else float("nan")


def _coco_recall(stats: MatchStats, iou_index: int) -> np.ndarray:
    """(C,) fraction of each class's objects matched under COCO's rules (top 100 per image and class); nan
    without ground truth."""
    found = np.bincount(stats.labels[stats.tp[:, iou_index]], minlength=stats.num_classes)  # tp implies counted
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(stats.gt_per_class > 0, found / stats.gt_per_class, np.nan)


def detection_summary(stats: MatchStats) -> dict[str, Any]:
    """Finished detection metrics, each mean over the classes that have ground truth (``nan`` when none has):
    ``coco_map`` (mAP@[.5:.95]), ``coco_map_50`` and ``coco_map_75`` (COCO AP at IoU 0.5 / 0.75), ``voc_map_50``
    (VOC AP@0.5, all-point) and ``voc07_map_50`` (11-point); and ``per_class``, one dict per class with ``ap50``
    (COCO AP at 0.5), ``voc_ap50`` (all-point), ``recall50`` (COCO matching at IoU 0.5, top 100 detections per image
    and class) as floats, ``nan`` without ground truth, and ``ground_truth`` (int, all objects, difficult included).
    ``stats`` must be at COCO's ten thresholds (the default of :func:`match_image`)."""
    if not np.array_equal(stats.iou_thresholds, COCO_IOU_THRESHOLDS):
        raise ValueError(
            f"detection_summary needs COCO's IoU thresholds {COCO_IOU_THRESHOLDS.tolist()}, "
            f"got {stats.iou_thresholds.tolist()}"
        )
    coco = np.stack([average_precision(stats, t, "coco") for t in range(COCO_IOU_THRESHOLDS.size)])  # (T, C)
    at_75 = int(np.flatnonzero(COCO_IOU_THRESHOLDS == 0.75)[0])  # an exact match, as pycocotools' summarize
    voc = average_precision(stats, 0, "voc")
    recall = _coco_recall(stats, 0)
    per_class = [
        {
            "ap50": float(coco[0, c]),
            "voc_ap50": float(voc[c]),
            "recall50": float(recall[c]),
            "ground_truth": int(stats.gt_per_class[c]),
        }
        for c in range(stats.num_classes)
    ]
    return {
        "coco_map": mean_over_classes(coco.mean(axis=0)),
        "coco_map_50": mean_over_classes(coco[0]),
        "coco_map_75": mean_over_classes(coco[at_75]),
        "voc_map_50": mean_over_classes(voc),
        "voc07_map_50": mean_over_classes(average_precision(stats, 0, "voc07")),
        "per_class": per_class,
    }
