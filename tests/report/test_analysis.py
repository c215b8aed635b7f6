"""raydet.report.analysis on cases built by hand (boxes xyxy in original pixels): the confusion matrix, AP by object
size, the PR curve and the per-image score; pycocotools agrees on the size APs."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from raydet.detector import coco
from raydet.detector.metrics import average_precision
from raydet.report import analysis as A


def _images(scenes, classes):
    """[(width, height, [(box, label)], [(box, label, score)])] -> (COCO ground truth, COCO detections)."""
    gt_images, predictions = [], []
    for i, (w, h, truth, dets) in enumerate(scenes):
        gt_images.append(
            {
                "file": f"im{i}.png",
                "width": w,
                "height": h,
                "boxes": np.array([b for b, _ in truth], float).reshape(-1, 4),
                "labels": np.array([lab for _, lab in truth], int),
            }
        )
        predictions += [{"image_id": coco.image_id(i), "box": b, "label": lab, "score": s} for b, lab, s in dets]
    return coco.ground_truth(gt_images, classes), coco.detections(predictions, classes)


def test_from_coco_reads_boxes_back_in_pixels():
    gt, dets = _images([(64, 48, [([5.6, 4.2, 18.4, 13.8], 1)], [([5, 4, 18, 14], 0, 0.9)])], ["a", "b"])
    (im,) = A.from_coco(gt, dets)
    np.testing.assert_allclose(im.gt_boxes, [[5.6, 4.2, 18.4, 13.8]])
    assert im.gt_areas[0] == pytest.approx(12.8 * 9.6)  # COCO's area: w * h in pixels
    assert im.gt_labels.tolist() == [1] and im.det_labels.tolist() == [0] and im.det_scores.tolist() == [0.9]
    assert (im.image_id, im.file, im.width, im.height) == (1, "im0.png", 64, 48)


# Confusion matrix: classes cat (0), dog (1); background is index 2.
CAT, DOG = 0, 1
CONFUSION_SCENES = [
    (
        200,
        200,
        [([0, 0, 20, 20], CAT), ([50, 50, 90, 90], DOG), ([100, 100, 200, 200], CAT)],
        [
            ([0, 0, 20, 20], CAT, 0.9),  # on the cat: [cat, cat]
            ([50, 50, 90, 90], CAT, 0.8),  # on the dog, says cat: [dog, cat]
            ([100, 100, 200, 200], DOG, 0.7),  # on the big cat, says dog: [cat, dog]
            ([150, 0, 190, 40], DOG, 0.5),  # on nothing: [background, dog]
            ([0, 0, 20, 20], CAT, 0.2),
        ],
    ),  # under score 0.3: not counted
    (100, 100, [([10, 10, 40, 40], DOG)], []),  # nobody finds the dog: [dog, background]
    # one cat detection between a cat E and a dog F: IoU with E [0,0,40,40]: 28 * 40 / (3200 - 1120) = 0.538,
    # with F [20,0,60,40]: 32 * 40 / (3200 - 1280) = 0.667 -> paired with the dog F: [dog, cat]; E: [cat, bg]
    (100, 100, [([0, 0, 40, 40], CAT), ([20, 0, 60, 40], DOG)], [([12, 0, 52, 40], CAT, 0.9)]),
]


def test_confusion_matrix_by_hand():
    gt, dets = _images(CONFUSION_SCENES, ["cat", "dog"])
    m = A.confusion_matrix(A.from_coco(gt, dets), 2)
    #                        predicted: cat dog background
    assert m.tolist() == [
        [1, 1, 1],  # true cat: found, called dog, missed (E)
        [2, 0, 1],  # true dog: called cat twice, missed once
        [0, 1, 0],
    ]  # background: one dog detection on nothing
    # a higher score threshold drops the 0.5 and 0.7 detections: the big cat is missed, no background detection
    m7 = A.confusion_matrix(A.from_coco(gt, dets), 2, score_threshold=0.75)
    assert m7.tolist() == [[1, 0, 2], [2, 0, 1], [0, 0, 0]]


def test_confusion_matrix_of_nothing_is_zero():
    gt, dets = _images([(10, 10, [], [])], ["cat"])
    assert A.confusion_matrix(A.from_coco(gt, dets), 1).tolist() == [[0, 0], [0, 0]]


# AP by size, one class. Areas: s 20 x 20 = 400 (small), m 50 x 50 = 2500 (medium), l 120 x 120 = 14400 (large).
S_BOX, M_BOX, L_BOX, STRAY = [0, 0, 20, 20], [100, 100, 150, 150], [0, 150, 120, 270], [200, 0, 230, 30]
SIZE_SCENE = (
    300,
    300,
    [(S_BOX, 0), (M_BOX, 0), (L_BOX, 0)],
    [(L_BOX, 0, 0.9), (STRAY, 0, 0.8), (S_BOX, 0, 0.7), (M_BOX, 0, 0.6)],
)  # STRAY: 900 px², on nothing


def _pycocotools_stats(gt, dets, tmp_path) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO(str(tmp_path / "gt.json"))
        ev = COCOeval(g, g.loadRes(str(tmp_path / "dt.json")), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_ap_by_size_by_hand(tmp_path):
    gt, dets = _images([SIZE_SCENE], ["a"])
    sizes = A.ap_by_size(A.from_coco(gt, dets), 1)
    # small: only s counts; the detections on m and l are ignored (they took ignored objects), STRAY (900 px²,
    #   in range, on nothing) is a false positive before s's true positive: precision 1/2 at recall 1 -> AP 0.5
    #   at every IoU (the boxes are exact)
    assert sizes["small"] == pytest.approx({"map": 0.5, "ap50": 0.5, "objects": 1})
    # medium: only m counts; STRAY is outside the range and unmatched -> ignored; m found -> AP 1
    # large: l found first -> AP 1
    assert sizes["medium"] == pytest.approx({"map": 1.0, "ap50": 1.0, "objects": 1})
    assert sizes["large"] == pytest.approx({"map": 1.0, "ap50": 1.0, "objects": 1})
    assert _pycocotools_stats(gt, dets, tmp_path)[3:6] == pytest.approx([0.5, 1.0, 1.0], abs=1e-12)


def test_a_detection_takes_the_object_in_range_over_a_closer_ignored_one(tmp_path):
    # t [0,0,30,30] 900 px² (small), v [0,0,34,34] 1156 px² (medium); the detection [0,0,33,33] is 1089 px²
    # (medium); IoU with t 900 / 1089 = 0.826, with v 1089 / 1156 = 0.942
    gt, dets = _images([(100, 100, [([0, 0, 30, 30], 0), ([0, 0, 34, 34], 0)], [([0, 0, 33, 33], 0, 0.9)])], ["a"])
    sizes = A.ap_by_size(A.from_coco(gt, dets), 1)
    # small: IoU .50-.80 (7 thresholds) it takes t, not the closer but ignored v -> AP 1; at .85 and .90 only v
    #   is close enough -> ignored, t missed -> AP 0; at .95 nothing matches and it is outside the range -> AP 0
    assert sizes["small"] == pytest.approx({"map": 0.7, "ap50": 1.0, "objects": 1})
    # medium: takes v at .50-.90 (9 thresholds); at .95 it is a false positive of medium size -> AP 0
    assert sizes["medium"] == pytest.approx({"map": 0.9, "ap50": 1.0, "objects": 1})
    assert np.isnan(sizes["large"]["map"]) and sizes["large"]["objects"] == 0  # no large object: no AP
    assert _pycocotools_stats(gt, dets, tmp_path)[3:5] == pytest.approx([0.7, 0.9], abs=1e-12)


def test_ap_by_size_agrees_with_pycocotools_on_random_scenes(tmp_path):
    rng = np.random.default_rng(3)
    scenes = []
    for _ in range(40):
        truth, found = [], []
        for _ in range(int(rng.integers(0, 5))):
            side = float(rng.choice([12, 31, 32, 33, 60, 95, 96, 97, 140]))  # around both boundaries
            x, y = rng.uniform(0, 300 - side, 2)
            box, label = [x, y, x + side, y + side * rng.uniform(0.7, 1)], int(rng.integers(2))
            truth.append((box, label))
            for _ in range(int(rng.integers(0, 3))):
                found.append(
                    (
                        list(np.array(box) + rng.normal(0, 3, 4).clip(-2, 2)),
                        label if rng.random() < 0.8 else 1 - label,
                        float(rng.random()),
                    )
                )
        found.sort(key=lambda d: -d[2])
        scenes.append((300, 300, truth, found))
    gt, dets = _images(scenes, ["a", "b"])
    sizes = A.ap_by_size(A.from_coco(gt, dets), 2)
    ours = [sizes[k]["map"] for k in ("small", "medium", "large")]
    assert _pycocotools_stats(gt, dets, tmp_path)[3:6] == pytest.approx(ours, abs=1e-12)


def test_pr_curve_mean_is_the_ap_and_the_point_is_at_score_threshold():
    gt, dets = _images([SIZE_SCENE], ["a"])
    stats = A.match_all(A.from_coco(gt, dets), 1)
    recall, precision = A.pr_curve(stats, 0)
    # by score: TP (l), FP (STRAY), TP (s), TP (m); 3 objects: precision 1, 1/2, 2/3, 3/4 at recall 1/3, 1/3,
    # 2/3, 1 -> best from the right: 1, 3/4, 3/4, 3/4; recall points 0..0.33 (34) read 1, 0.34..1 (67) read 3/4
    assert recall.shape == precision.shape == (101,)
    np.testing.assert_allclose(precision[:34], 1.0)
    np.testing.assert_allclose(precision[34:], 0.75)
    assert precision.mean() == pytest.approx((34 + 67 * 0.75) / 101)
    assert precision.mean() == pytest.approx(average_precision(stats)[0], abs=1e-15)
    # at score >= 0.65 three detections count: 2 TP of 3 objects, precision 2/3
    assert A.operating_point(stats, 0, 0.65) == pytest.approx((2 / 3, 2 / 3))
    assert A.operating_point(stats, 0, 0.95) is None


def test_image_scores_put_the_worst_image_first():
    gt, dets = _images(CONFUSION_SCENES, ["cat", "dog"])
    images = A.from_coco(gt, dets)
    ranked = A.image_scores(images, A.match_all(images, 2))
    # image 1: at score >= 0.3, d1 finds the cat (tp 1); d2, d3, d4 are wrong (fp 3); dog and big cat missed
    #   (fn 2): F1 = 2 / (2 + 5) = 0.286. image 2: one object missed: F1 0, 1 error. image 3: the cat detection
    #   is over the cat E at IoU 0.538 >= 0.5 (class-aware matching): tp 1, fn 1 (the dog): F1 2 / 3.
    assert [(s.image_id, s.tp, s.fp, s.fn) for s in ranked] == [(2, 0, 0, 1), (1, 1, 3, 2), (3, 1, 0, 1)]
    assert [s.f1 for s in ranked] == pytest.approx([0.0, 2 / 7, 2 / 3])
    assert A.ImageScore(image_id=9, tp=0, fp=0, fn=0).f1 == 1.0  # nothing there, nothing found: perfect
