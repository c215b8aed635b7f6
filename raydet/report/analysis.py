"""What the report shows beyond report.json, computed from the COCO files alone (numpy; no Ray, no TensorFlow).

In: ``RUN/eval/coco/ground_truth.json`` and ``detections_<model>.json`` (raydet.detector.coco's formats: bbox
``[xmin, ymin, w, h]`` in original pixels, each image's detections in score order), read by :func:`from_coco`
into one :class:`ImageResult` per image. Out:

- :func:`pr_curve`: a class's precision-recall curve at IoU 0.5 as pycocotools interpolates it (101 recall
  points), from raydet.detector.metrics' matching, so its mean *is* the class's AP50 in report.json;
- :func:`confusion_matrix`: true class (rows) against predicted class (columns), with a background row
  (detections on no object) and column (objects nobody found);
- :func:`ap_by_size`: COCO AP for small (area < 32\\ :sup:`2` px), medium (< 96\\ :sup:`2`) and large objects,
  areas in original pixels, with pycocotools' rules for objects and detections outside the range;
- :func:`image_scores`: each image's F1 at IoU 0.5 of its detections scoring >= 0.3, for the gallery's order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from raydet.detector import coco
from raydet.detector.boxes import iou_matrix, xywh_to_xyxy
from raydet.detector.metrics import (
    COCO_IOU_THRESHOLDS,
    COCO_MAX_DETS,
    COCO_RECALL_POINTS,
    MatchStats,
    average_precision,
    match_image,
    mean_over_classes,
    score_order,
)

# pycocotools' areaRng, in original pixels squared; both ends are inclusive there, so an area of exactly 32**2
# counts as small and as medium
SIZE_RANGES = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e5**2)}
IMAGE_IOU = 0.5  # per-image score, confusion matrix
IMAGE_SCORE = 0.3  # detections counted per image and in the confusion matrix (those the drawings show)


@dataclass(frozen=True, eq=False)
class ImageResult:
    """One test image: ``gt_boxes`` (G, 4) float64 xyxy original pixels, ``gt_labels`` (G,) int64, ``gt_areas``
    (G,) float64 (the COCO ``area``, pixels squared); ``det_boxes`` (D, 4) xyxy pixels, ``det_labels`` (D,) int64,
    ``det_scores`` (D,) float64, in the file's order (score order per image)."""

    image_id: int
    file: str
    width: int
    height: int
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_areas: np.ndarray
    det_boxes: np.ndarray
    det_labels: np.ndarray
    det_scores: np.ndarray


def _xyxy(bboxes: list) -> np.ndarray:
    return xywh_to_xyxy(np.asarray(bboxes, np.float64).reshape(-1, 4)) if bboxes else np.zeros((0, 4))


def from_coco(ground_truth: dict, detections: list[dict]) -> list[ImageResult]:
    """A COCO instances dict and a COCO results list -> one :class:`ImageResult` per image, by image id.
    Detections of an image keep the list's order; category ids become class indices (``coco.label_of``)."""
    gts: dict[int, list] = {im["id"]: [] for im in ground_truth["images"]}
    dets: dict[int, list] = {im["id"]: [] for im in ground_truth["images"]}
    for a in ground_truth["annotations"]:
        gts[a["image_id"]].append(a)
    for d in detections:
        if d["image_id"] not in dets:
            raise ValueError(f"detection for image id {d['image_id']}, which the ground truth does not list")
        dets[d["image_id"]].append(d)
    out = []
    for im in sorted(ground_truth["images"], key=lambda im: im["id"]):
        g, d = gts[im["id"]], dets[im["id"]]
        boxes = _xyxy([a["bbox"] for a in g])
        out.append(
            ImageResult(
                image_id=int(im["id"]),
                file=im["file_name"],
                width=int(im["width"]),
                height=int(im["height"]),
                gt_boxes=boxes,
                gt_labels=np.array([coco.label_of(a["category_id"]) for a in g], np.int64),
                gt_areas=np.array([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in g], np.float64),
                det_boxes=_xyxy([x["bbox"] for x in d]),
                det_labels=np.array([coco.label_of(x["category_id"]) for x in d], np.int64),
                det_scores=np.array([x["score"] for x in d], np.float64),
            )
        )
    return out


def match_all(images: list[ImageResult], num_classes: int) -> MatchStats:
    """Every image matched by :func:`raydet.detector.metrics.match_image` at COCO's ten IoU thresholds (no difficult
    flags: COCO files have none, and report.json's COCO figures count every object too)."""
    parts = [
        match_image(
            im.gt_boxes, im.gt_labels, im.det_boxes, im.det_labels, im.det_scores, num_classes, image_id=im.image_id
        )
        for im in images
    ]
    return MatchStats.concat(parts) if parts else MatchStats.empty(num_classes)


# ------------------------------------------------------------------------------------------ PR curves


def pr_curve(stats: MatchStats, label: int, iou_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class ``label``'s precision-recall curve at ``stats.iou_thresholds[iou_index]`` (IoU 0.5 by default) ->
    (recall (101,), precision (101,)): pycocotools' interpolated precision at the recall points 0, 0.01, ..., 1
    (0 past the highest recall reached). Its mean is the class's COCO AP (``average_precision``); all nan when
    the class has no ground truth."""
    n_gt = int(stats.gt_per_class[label])
    if n_gt == 0:
        return COCO_RECALL_POINTS.copy(), np.full(COCO_RECALL_POINTS.size, np.nan)
    recall, precision = _cumulative(stats, label, iou_index)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # the best precision at this recall or beyond
    idx = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
    curve = np.zeros(COCO_RECALL_POINTS.size)
    reached = idx < envelope.size
    curve[reached] = envelope[idx[reached]]
    return COCO_RECALL_POINTS.copy(), curve


def operating_point(
    stats: MatchStats, label: int, score_threshold: float = IMAGE_SCORE, iou_index: int = 0
) -> tuple[float, float] | None:
    """(recall, precision) of class ``label`` counting only detections scoring >= ``score_threshold``; None
    without ground truth or without such a detection."""
    if int(stats.gt_per_class[label]) == 0:
        return None
    recall, precision = _cumulative(stats, label, iou_index)
    # the curve runs best first, so the detections scoring >= the threshold are its first k points
    k = int(np.sum(stats.scores[(stats.labels == label) & stats.coco_counted] >= score_threshold))
    return (float(recall[k - 1]), float(precision[k - 1])) if k else None


def _cumulative(stats: MatchStats, label: int, iou_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision after each counted detection of ``label``, best first (pycocotools' order)."""
    order = score_order(stats)
    rows = order[(stats.labels[order] == label) & stats.coco_counted[order]]
    tp = np.cumsum(stats.tp[rows, iou_index], dtype=np.float64)
    fp = np.cumsum(~stats.tp[rows, iou_index], dtype=np.float64)
    return tp / stats.gt_per_class[label], tp / (tp + fp + np.spacing(1))


# ------------------------------------------------------------------------------------------ confusion matrix


def confusion_matrix(
    images: list[ImageResult], num_classes: int, iou_threshold: float = IMAGE_IOU, score_threshold: float = IMAGE_SCORE
) -> np.ndarray:
    """(C + 1, C + 1) int64 counts: row = true class, column = predicted class, index C = background.

    Per image, the detections scoring >= ``score_threshold`` are paired with objects of *any* class,
    pair by pair in order of IoU (highest first, each object and detection used once, IoU >= ``iou_threshold``):
    a pair counts at [its object's class, its detection's class]; an object left over counts at [class,
    background] (missed), a detection left over at [background, class] (a false detection). [background,
    background] stays 0.
    """
    m = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    bg = num_classes
    for im in images:
        keep = im.det_scores >= score_threshold
        det_labels = im.det_labels[keep]
        ious = iou_matrix(im.gt_boxes, im.det_boxes[keep])  # (G, D)
        g_idx, d_idx = np.nonzero(ious >= iou_threshold)
        order = np.argsort(-ious[g_idx, d_idx], kind="stable")
        free_g, free_d = np.ones(len(im.gt_labels), bool), np.ones(len(det_labels), bool)
        for g, d in zip(g_idx[order], d_idx[order], strict=True):
            if free_g[g] and free_d[d]:
                m[im.gt_labels[g], det_labels[d]] += 1
                free_g[g] = free_d[d] = False
        np.add.at(m, (im.gt_labels[free_g], bg), 1)
        np.add.at(m, (bg, det_labels[free_d]), 1)
    return m


# ------------------------------------------------------------------------------------------ AP by size


def ap_by_size(images: list[ImageResult], num_classes: int) -> dict[str, dict]:
    """COCO AP per object size -> ``{"small"|"medium"|"large": {"map", "ap50", "objects"}}``: ``map`` is
    mAP@[.5:.95] (pycocotools' APs/APm/APl), ``ap50`` the AP at IoU 0.5, both means over the classes with
    objects of that size (nan when none has), ``objects`` the ground-truth objects of that size.

    pycocotools' rules per size range (areas in original pixels squared, :data:`SIZE_RANGES`): objects outside
    the range are ignored; a detection takes an object in the range if it can, else may take an ignored one
    and is then ignored itself; an unmatched detection whose own box is outside the range is ignored too.
    """
    out = {}
    for name, (low, high) in SIZE_RANGES.items():
        parts = [_match_in_range(im, num_classes, low, high) for im in images]
        if parts:
            stats, ignored = MatchStats.concat([s for s, _ in parts]), np.concatenate([ig for _, ig in parts])
        else:
            stats, ignored = MatchStats.empty(num_classes), np.zeros((0, COCO_IOU_THRESHOLDS.size), bool)
        coco_ap = np.stack(
            [average_precision(_at_threshold(stats, ignored, t), 0) for t in range(COCO_IOU_THRESHOLDS.size)]
        )  # (T, C)
        out[name] = {
            "map": mean_over_classes(coco_ap.mean(axis=0)),
            "ap50": mean_over_classes(coco_ap[0]),
            "objects": int(stats.gt_per_class.sum()),
        }
    return out


def _outside(areas: np.ndarray, low: float, high: float) -> np.ndarray:
    return (areas < low) | (areas > high)


def _match_in_range(im: ImageResult, num_classes: int, low: float, high: float) -> tuple[MatchStats, np.ndarray]:
    """One image under one size range -> (its MatchStats at COCO's thresholds, counting only the objects in
    range, and an ignored mask (D, T): detections on ignored objects, or unmatched and outside the range)."""
    thr = COCO_IOU_THRESHOLDS
    n = len(im.det_scores)
    tp, ignored = np.zeros((n, thr.size), bool), np.zeros((n, thr.size), bool)
    top = np.zeros(n, bool)
    gt_ignored = _outside(im.gt_areas, low, high)
    det_areas = (im.det_boxes[:, 2] - im.det_boxes[:, 0]) * (im.det_boxes[:, 3] - im.det_boxes[:, 1])
    for c in np.unique(im.det_labels):
        rows = np.flatnonzero(im.det_labels == c)
        rows = rows[np.argsort(-im.det_scores[rows], kind="stable")][:COCO_MAX_DETS]
        top[rows] = True
        on_class = im.gt_labels == c
        hit, on_ignored = _matches_with_ignored(
            iou_matrix(im.det_boxes[rows], im.gt_boxes[on_class]), gt_ignored[on_class], thr
        )
        tp[rows] = hit
        ignored[rows] = on_ignored | (~hit & ~on_ignored & _outside(det_areas[rows], low, high)[:, None])
    counted = np.bincount(im.gt_labels[~gt_ignored], minlength=num_classes).astype(np.int64)
    zeros = np.zeros((n, thr.size), bool)
    stats = MatchStats(
        scores=im.det_scores,
        labels=im.det_labels,
        image_ids=np.full(n, im.image_id, np.int64),
        det_index=np.arange(n, dtype=np.int64),
        coco_counted=top,
        tp=tp,
        voc_tp=zeros,
        voc_ignored=zeros,
        gt_per_class=counted,
        voc_gt_per_class=counted,
        iou_thresholds=thr,
    )
    return stats, ignored


def _matches_with_ignored(ious: np.ndarray, gt_ignored: np.ndarray, thresholds: np.ndarray):
    """pycocotools' greedy matching of one image and class with ignored objects. ``ious`` (D, G), rows in score
    order; ``gt_ignored`` (G,) bool -> (true positive, matched an ignored object), each (D, T) bool.

    Each detection takes the free object with the highest IoU >= t among those in range, or, only if there is
    none, among the ignored ones (ties of IoU to the later object, as pycocotools)."""
    n_det, n_gt = ious.shape
    tp, on_ignored = np.zeros((n_det, thresholds.size), bool), np.zeros((n_det, thresholds.size), bool)
    if n_gt == 0:
        return tp, on_ignored
    limit = np.minimum(thresholds, 1 - 1e-10)[:, None]
    taken = np.zeros((thresholds.size, n_gt), bool)
    # a detection under the lowest threshold with every object takes none and changes nothing: skip it (most do)
    for d in np.flatnonzero((ious >= limit.min()).any(axis=1)):
        cand = ~taken & (ious[d][None, :] >= limit)  # (T, G)
        in_range = cand & ~gt_ignored[None, :]
        pool = np.where(in_range.any(axis=1, keepdims=True), in_range, cand)
        masked = np.where(pool, ious[d][None, :], -1.0)
        best = n_gt - 1 - np.argmax(masked[:, ::-1], axis=1)
        hit = pool.any(axis=1)
        tp[d] = hit & ~gt_ignored[best]
        on_ignored[d] = hit & gt_ignored[best]
        taken[np.flatnonzero(hit), best[hit]] = True
    return tp, on_ignored


def _at_threshold(stats: MatchStats, ignored: np.ndarray, t: int) -> MatchStats:
    """A size range's statistics at threshold ``t`` alone, its ignored detections (``ignored`` (D, T)) left out
    of the count, so ``average_precision`` takes them neither as true nor as false positives."""
    one = slice(t, t + 1)
    return replace(
        stats,
        coco_counted=stats.coco_counted & ~ignored[:, t],
        tp=stats.tp[:, one],
        voc_tp=stats.voc_tp[:, one],
        voc_ignored=stats.voc_ignored[:, one],
        iou_thresholds=stats.iou_thresholds[one],
    )


# ------------------------------------------------------------------------------------------ per image


@dataclass(frozen=True)
class ImageScore:
    """One image at IoU 0.5 and score 0.3: ``tp`` detections that found an object (class-aware, COCO's
    matching), ``fp`` the other detections, ``fn`` objects not found; ``f1 = 2 tp / (2 tp + fp + fn)``, 1.0 for an
    image with neither objects nor detections."""

    image_id: int
    tp: int
    fp: int
    fn: int

    @property
    def f1(self) -> float:
        wrong = self.fp + self.fn
        return 1.0 if self.tp + wrong == 0 else 2 * self.tp / (2 * self.tp + wrong)


def image_scores(
    images: list[ImageResult], stats: MatchStats, score_threshold: float = IMAGE_SCORE
) -> list[ImageScore]:
    """Each image's :class:`ImageScore`, worst first: lowest F1, then most errors (fp + fn), then image id.
    ``stats``: :func:`match_all` of ``images`` (its first threshold must be IoU 0.5)."""
    if stats.iou_thresholds[0] != IMAGE_IOU:
        raise ValueError(
            f"image_scores needs statistics whose first IoU threshold is {IMAGE_IOU}, got "
            f"{stats.iou_thresholds.tolist()}"
        )
    kept = stats.scores >= score_threshold
    ids = np.array([im.image_id for im in images], np.int64)
    by_id = np.argsort(ids)
    pos = by_id[np.searchsorted(ids[by_id], stats.image_ids[kept])]  # each kept detection's image
    found = np.bincount(pos, weights=stats.tp[kept, 0], minlength=len(ids)).astype(np.int64)
    shown = np.bincount(pos, minlength=len(ids))
    scores = [
        ImageScore(image_id=int(i), tp=int(t), fp=int(s - t), fn=int(len(im.gt_labels) - t))
        for i, t, s, im in zip(ids, found, shown, images, strict=True)
    ]
    return sorted(scores, key=lambda s: (s.f1, -(s.fp + s.fn), s.image_id))
