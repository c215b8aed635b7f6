"""Detection metrics on numpy arrays: class accuracy, mean IoU, VOC AP@0.5 and COCO mAP. No Ray, no TensorFlow.

Every metric is computed in two steps so that evaluation can be spread over Ray actors:

1. per image (or per batch of images), on a worker: :func:`match_image` / :func:`class_box_stats` turn ground truth
   and detections into partial statistics (:class:`MatchStats`, :class:`ClassBoxStats`) that merge with ``+``
   (or :meth:`MatchStats.concat` for many parts) in any order; each image must be matched in exactly one call;
2. on the driver: the merged statistics are finished by :func:`average_precision` / :func:`detection_summary`
   (and ``ClassBoxStats.accuracy`` / ``.mean_iou``).

Conventions (decided here, documented once):

- Boxes are ``(N, 4)`` xyxy in any units shared by ground truth and detections (pixels or normalized); IoU is
  :func:`raydet.boxes.iou_matrix`: continuous coordinates, no VOC ``+1`` pixel. That is exactly pycocotools' bbox
  IoU on the ``[x, y, w, h]`` boxes that :mod:`raydet.coco` exports (``w = xmax - xmin``, no +/-1 shift).
- COCO mAP@[.5:.95] and AP50 follow pycocotools' ``COCOeval`` (bbox, areaRng "all", maxDets 100): per class,
  the top 100 detections of each image by score; each detection, in score order, takes the unmatched ground truth
  with the highest IoU >= t (ties of IoU go to the later ground truth, as pycocotools); precision made monotone and
  read at 101 recall points; classes without ground truth are excluded from the mean (pycocotools' ``-1``); with no
  ground truth at all the summary is ``nan`` where pycocotools prints ``-1``. Detection ties of score are ordered
  by image id, then by position in the image's list, which is the order pycocotools sees for the exported files.
- VOC AP@0.5 follows the VOC devkit (2010+, all-point interpolation): each detection, in score order, looks at the
  ground truth with the highest IoU (matched or not); it is a true positive only if that IoU > 0.5 (strictly) and
  that ground truth was not taken yet. Unlike COCO, there is no 100-detection cap.
- ``difficult``: the PREP Parquet (docs/FORMATS.md) carries no difficult flag, so every ground-truth object that
  ingestion kept counts, as in COCO: finding it is a true positive, missing it costs recall. Both metrics therefore
  see the same ground truth, and the exported COCO files give pycocotools the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from raydet.boxes import area, iou, iou_matrix

# Built with the same expressions as pycocotools' Params so the float values are bit-identical.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
COCO_RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1)
COCO_MAX_DETS = 100  # pycocotools' largest maxDets, the one its headline mAP uses


@dataclass(eq=False)
class MatchStats:
    """Partial detection statistics of some images; ``a + b`` merges them (concatenation and sums).

    One row per detection (``D`` rows), one column per IoU threshold (``T`` columns):
    ``scores`` (D,) float64; ``labels`` (D,) int64 class indices; ``image_ids`` (D,) int64 and ``det_index`` (D,)
    int64, the detection's position in its image's list (both only order ties of score, as pycocotools does);
    ``coco_counted`` (D,) bool, False for detections past the 100 best of their image and class (COCO drops them);
    ``tp`` (D, T) bool, true positive under COCO's matching at ``iou_thresholds[t]``; ``voc_tp`` (D, T) bool, true
    positive under the VOC devkit's matching; ``gt_per_class`` (C,) int64 ground-truth objects per class;
    ``iou_thresholds`` (T,) float64.
    """

    scores: np.ndarray
    labels: np.ndarray
    image_ids: np.ndarray
    det_index: np.ndarray
    coco_counted: np.ndarray
    tp: np.ndarray
    voc_tp: np.ndarray
    gt_per_class: np.ndarray
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
        return cls(scores=np.zeros(d), labels=np.zeros(d, np.int64), image_ids=np.zeros(d, np.int64),
                   det_index=np.zeros(d, np.int64), coco_counted=np.zeros(d, bool),
                   tp=np.zeros((d, thr.size), bool), voc_tp=np.zeros((d, thr.size), bool),
                   gt_per_class=np.zeros(num_classes, np.int64), iou_thresholds=thr)

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
                raise ValueError(f"cannot merge statistics at IoU thresholds {first.iou_thresholds} and "
                                 f"{other.iou_thresholds}")

        def cat(field: str) -> np.ndarray:
            return np.concatenate([getattr(p, field) for p in parts])

        return cls(scores=cat("scores"), labels=cat("labels"), image_ids=cat("image_ids"),
                   det_index=cat("det_index"), coco_counted=cat("coco_counted"), tp=cat("tp"), voc_tp=cat("voc_tp"),
                   gt_per_class=np.sum([p.gt_per_class for p in parts], axis=0, dtype=np.int64),
                   iou_thresholds=first.iou_thresholds)

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


def _voc_matches(ious: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The VOC devkit's matching of one image and class. ``ious`` (D, G), rows in score order -> (D, T) bool."""
    n_det, n_gt = ious.shape
    tp = np.zeros((n_det, thresholds.size), bool)
    if n_gt == 0:
        return tp
    detected = np.zeros((thresholds.size, n_gt), bool)
    for d in range(n_det):
        j = int(np.argmax(ious[d]))  # the best ground truth, taken or not: a duplicate is a false positive
        hit = (ious[d, j] > thresholds) & ~detected[:, j]
        tp[d] = hit
        detected[hit, j] = True
    return tp


def match_image(gt_boxes: np.ndarray, gt_labels: np.ndarray, det_boxes: np.ndarray, det_labels: np.ndarray,
                det_scores: np.ndarray, num_classes: int, iou_thresholds: np.ndarray = COCO_IOU_THRESHOLDS,
                image_id: int = 0) -> MatchStats:
    """Match one image's detections to its ground truth, per class.

    ``gt_boxes`` (G, 4) and ``det_boxes`` (D, 4) xyxy in the same units (pixels or normalized; padding rows must
    be removed first); ``gt_labels`` (G,) and ``det_labels`` (D,) class indices in ``[0, num_classes)``;
    ``det_scores`` (D,) confidences. ``image_id`` must be unique per image: it orders detections of equal score
    (use the id :func:`raydet.coco.ground_truth` gives the image to agree with pycocotools on ties).
    Returns the image's :class:`MatchStats` with one row per detection, in the order given.
    """
    thr = _check_thresholds(iou_thresholds)
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes!r}")
    gt = _check_boxes(gt_boxes, "gt_boxes")
    det = _check_boxes(det_boxes, "det_boxes")
    gl = _check_labels(gt_labels, len(gt), num_classes, "gt_labels")
    dl = _check_labels(det_labels, len(det), num_classes, "det_labels")
    scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    if scores.shape != (len(det),) or not np.all(np.isfinite(scores)):
        raise ValueError(f"det_scores must be {len(det)} finite values, got {np.asarray(det_scores).tolist()}")

    tp = np.zeros((len(det), thr.size), bool)
    voc_tp = np.zeros((len(det), thr.size), bool)
    counted = np.zeros(len(det), bool)
    for c in np.unique(dl):
        # 1. this class's detections by score, stable on ties (pycocotools sorts with mergesort)
        rows = np.flatnonzero(dl == c)
        rows = rows[np.argsort(-scores[rows], kind="stable")]
        ious = iou_matrix(det[rows], gt[gl == c])
        # 2. VOC sees every detection; COCO only the best COCO_MAX_DETS of the image and class
        voc_tp[rows] = _voc_matches(ious, thr)
        top = rows[:COCO_MAX_DETS]
        counted[top] = True
        tp[top] = _coco_matches(ious[:COCO_MAX_DETS], thr)
    n = len(det)
    return MatchStats(scores=scores, labels=dl, image_ids=np.full(n, int(image_id), np.int64),
                      det_index=np.arange(n, dtype=np.int64), coco_counted=counted, tp=tp, voc_tp=voc_tp,
                      gt_per_class=np.bincount(gl, minlength=num_classes).astype(np.int64), iou_thresholds=thr)


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


def _voc_ap(tp: np.ndarray, n_gt: int) -> float:
    """All-point interpolated AP (VOC2010+ devkit); rows already in score order."""
    tp_sum = np.cumsum(tp, dtype=np.float64)
    fp_sum = np.cumsum(~tp, dtype=np.float64)
    recall = np.concatenate([[0.0], tp_sum / n_gt, [1.0]])
    precision = np.concatenate([[0.0], tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def average_precision(stats: MatchStats, iou_index: int = 0, method: str = "coco") -> np.ndarray:
    """Per-class AP at ``stats.iou_thresholds[iou_index]`` -> (C,) float64, ``nan`` for classes without ground truth.

    ``method="coco"``: pycocotools' matching and 101-point interpolation; ``"voc"``: the VOC devkit's matching and
    all-point interpolation.
    """
    if method not in ("coco", "voc"):
        raise ValueError(f"method must be 'coco' or 'voc', got {method!r}")
    if not -stats.iou_thresholds.size <= iou_index < stats.iou_thresholds.size:
        raise ValueError(f"iou_index {iou_index!r} out of range for {stats.iou_thresholds.size} thresholds")
    # score descending; ties by image, then by position in the image (pycocotools' order of the exported files)
    order = np.lexsort((stats.det_index, stats.image_ids, -stats.scores))
    labels = stats.labels[order]
    ap = np.full(stats.num_classes, np.nan)
    for c in range(stats.num_classes):
        n_gt = int(stats.gt_per_class[c])
        if n_gt == 0:
            continue
        rows = order[labels == c]
        if method == "coco":
            tp = stats.tp[rows, iou_index]
            ap[c] = _coco_ap(tp, stats.coco_counted[rows] & ~tp, n_gt)
        else:
            ap[c] = _voc_ap(stats.voc_tp[rows, iou_index], n_gt)
    return ap


def _mean_over_classes(per_class: np.ndarray) -> float:
    # classes without ground truth are nan and excluded, as pycocotools excludes its -1 entries
    valid = per_class[~np.isnan(per_class)]
    return float(valid.mean()) if valid.size else float("nan")


def detection_summary(stats: MatchStats) -> dict[str, float]:
    """Finished detection metrics: ``coco_map`` (mAP@[.5:.95]), ``coco_map_50`` (COCO AP at IoU 0.5) and
    ``voc_map_50`` (VOC AP@0.5), each the mean over classes that have ground truth; ``nan`` when none has.
    ``stats`` must be at COCO's ten thresholds (the default of :func:`match_image`)."""
    if not np.array_equal(stats.iou_thresholds, COCO_IOU_THRESHOLDS):
        raise ValueError(f"detection_summary needs COCO's IoU thresholds {COCO_IOU_THRESHOLDS.tolist()}, "
                         f"got {stats.iou_thresholds.tolist()}")
    coco = np.stack([average_precision(stats, t, "coco") for t in range(COCO_IOU_THRESHOLDS.size)])  # (T, C)
    return {"coco_map": _mean_over_classes(coco.mean(axis=0)),
            "coco_map_50": _mean_over_classes(coco[0]),
            "voc_map_50": _mean_over_classes(average_precision(stats, 0, "voc"))}


@dataclass(frozen=True)
class ClassBoxStats:
    """Partial single-box statistics of some images; ``a + b`` sums them.

    ``correct``: images whose predicted class is the class of their largest ground-truth object; ``iou_sum``: sum
    over images of the IoU of the predicted box with the best-matching ground-truth box; ``hits_50``: images where
    that IoU is >= 0.5; ``images``: images with at least one ground-truth object (the denominator);
    ``no_ground_truth``: images without any, left out of every figure.
    """

    correct: int = 0
    iou_sum: float = 0.0
    hits_50: int = 0
    images: int = 0
    no_ground_truth: int = 0

    def __add__(self, other: ClassBoxStats) -> ClassBoxStats:
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self  # the start of sum()
        if not isinstance(other, ClassBoxStats):
            return NotImplemented
        return ClassBoxStats(self.correct + other.correct, self.iou_sum + other.iou_sum,
                             self.hits_50 + other.hits_50, self.images + other.images,
                             self.no_ground_truth + other.no_ground_truth)

    __radd__ = __add__

    @property
    def accuracy(self) -> float:
        """Class accuracy against the largest object; nan without images."""
        return self.correct / self.images if self.images else float("nan")

    @property
    def mean_iou(self) -> float:
        """Mean IoU of the predicted box with the best-matching ground-truth box; nan without images."""
        return self.iou_sum / self.images if self.images else float("nan")

    @property
    def hit_rate_50(self) -> float:
        """Fraction of images whose predicted box has IoU >= 0.5 with some ground-truth box; nan without images."""
        return self.hits_50 / self.images if self.images else float("nan")


def class_box_stats(gt_boxes: np.ndarray, gt_labels: np.ndarray, pred_boxes: np.ndarray,
                    pred_labels: np.ndarray) -> ClassBoxStats:
    """Single-box statistics of a batch of N images, one prediction per image.

    ``gt_boxes`` (N, K, 4) xyxy and ``gt_labels`` (N, K), padded with label -1 as in the PREP Parquet (a (N, 4) /
    (N,) pair means one object per image); ``pred_boxes`` (N, 4) xyxy in the same units; ``pred_labels`` (N,).
    The class target is each image's largest object (by area, the first of equal areas); the box is scored against
    whichever ground-truth box it overlaps most, any class.
    """
    gb = np.asarray(gt_boxes, dtype=np.float64)
    gl = np.asarray(gt_labels)
    if gb.ndim == 2:
        gb, gl = gb[:, None, :], gl.reshape(-1, 1)
    pb = np.asarray(pred_boxes, dtype=np.float64)
    pl = np.asarray(pred_labels).reshape(-1)
    n = pb.shape[0] if pb.ndim == 2 else -1
    if gb.ndim != 3 or gb.shape[-1] != 4 or gl.shape != gb.shape[:2] or pb.shape != (n, 4) \
            or gb.shape[0] != n or pl.shape != (n,):
        raise ValueError(f"expected gt_boxes (N, K, 4), gt_labels (N, K), pred_boxes (N, 4), pred_labels (N,); got "
                         f"{np.shape(gt_boxes)}, {np.shape(gt_labels)}, {np.shape(pred_boxes)}, "
                         f"{np.shape(pred_labels)}")
    valid = gl >= 0  # (N, K)
    has_gt = valid.any(axis=1)
    # 1. class target: the largest valid object of each image
    areas = np.where(valid, area(gb), -1.0)
    largest = np.argmax(areas, axis=1)
    target = gl[np.arange(n), largest]
    correct = int(np.sum(has_gt & (pl == target)))
    # 2. box: IoU with the best-matching valid ground-truth box
    ious = iou(np.broadcast_to(pb[:, None, :], gb.shape), gb)  # (N, K)
    best = np.where(valid, ious, 0.0).max(axis=1, initial=0.0)[has_gt]
    return ClassBoxStats(correct=correct, iou_sum=float(best.sum()), hits_50=int(np.sum(best >= 0.5)),
                         images=int(has_gt.sum()), no_ground_truth=int(n - has_gt.sum()))
