"""Metric definitions on hand-computed cases, and raydet's COCO figures against pycocotools on crowded images."""

import contextlib
import io

import numpy as np
import pytest

# a test dependency (pyproject's [test] extra): imported, not skipped, so a missing install fails loudly
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from raydet.detector import coco
from raydet.detector import metrics as M

SQUARE = [0.0, 0.0, 10.0, 10.0]  # area 100
FAR = [50.0, 50.0, 60.0, 60.0]  # IoU 0 with SQUARE
SCALARS = ("coco_map", "coco_map_50", "coco_map_75", "voc_map_50", "voc07_map_50")


def stats_of(images, num_classes=2):
    """images: [(gt_boxes, gt_labels, det_boxes, det_labels, det_scores[, gt_difficult])] -> merged MatchStats,
    ids 1, 2, ..."""
    total = M.MatchStats.empty(num_classes)
    for i, (gb, gl, db, dl, ds, *difficult) in enumerate(images):
        total = total + M.match_image(
            np.array(gb, float).reshape(-1, 4),
            np.array(gl, int),
            np.array(db, float).reshape(-1, 4),
            np.array(dl, int),
            np.array(ds, float),
            num_classes,
            image_id=i + 1,
            gt_difficult=difficult[0] if difficult else None,
        )
    return total


def scalars(stats):
    summary = M.detection_summary(stats)
    return {k: summary[k] for k in SCALARS}


def every(value):
    return dict.fromkeys(SCALARS, value)


def test_perfect_detections_score_one():
    # precision is tp / (tp + fp + eps) in pycocotools, so "1" is 1 - 1e-16: compare approximately
    s = stats_of(
        [
            ([SQUARE], [0], [SQUARE], [0], [0.9]),
            ([[5, 5, 25, 45], SQUARE], [1, 0], [SQUARE, [5, 5, 25, 45]], [0, 1], [0.3, 0.8]),
        ]
    )
    summary = M.detection_summary(s)
    assert scalars(s) == pytest.approx(every(1.0))
    assert [c["ground_truth"] for c in summary["per_class"]] == [2, 1]
    assert [c["recall50"] for c in summary["per_class"]] == [1.0, 1.0]
    np.testing.assert_array_equal(s.gt_per_class, [2, 1])
    np.testing.assert_array_equal(s.voc_gt_per_class, [2, 1])  # no difficult object


def test_no_detections_score_zero():
    s = stats_of([([SQUARE], [0], [], [], [])])
    summary = M.detection_summary(s)
    assert scalars(s) == every(0.0)
    assert summary["per_class"][0] == {"ap50": 0.0, "voc_ap50": 0.0, "recall50": 0.0, "ground_truth": 1}


def test_class_without_ground_truth_is_excluded():
    # class 0 perfect; class 1 has only a false positive and no ground truth: AP nan, left out of the mean
    s = stats_of([([SQUARE], [0], [SQUARE, FAR], [0, 1], [0.9, 0.95])])
    ap = M.average_precision(s, 0, "coco")
    assert ap[0] == pytest.approx(1.0) and np.isnan(ap[1])
    assert scalars(s) == pytest.approx(every(1.0))
    missing = M.detection_summary(s)["per_class"][1]
    assert np.isnan([missing["ap50"], missing["voc_ap50"], missing["recall50"]]).all()
    assert missing["ground_truth"] == 0


def test_no_ground_truth_at_all_is_nan():
    # pycocotools prints -1 here; raydet says nan (test_coco checks pycocotools' side)
    s = stats_of([([], [], [SQUARE], [0], [0.5])])
    assert all(np.isnan(v) for v in scalars(s).values())


def test_wrong_class_is_a_false_positive():
    # the box is perfect but labelled 1: class 0 gets no detection (AP 0), class 1 has no ground truth
    s = stats_of([([SQUARE], [0], [SQUARE], [1], [0.9])])
    assert scalars(s) == every(0.0)


def test_duplicate_detection_is_a_false_positive_and_11_point_differs_from_all_point():
    # GT A (image 1), GT B (image 2). In score order: d1 on A (TP), d2 on A again (FP), d3 on B (TP).
    # tp = [1, 1, 2], fp = [0, 1, 1] -> recall [.5, .5, 1], precision [1, .5, 2/3] -> monotone [1, 2/3, 2/3]
    # COCO: recall points 0.00..0.50 (51) read precision 1, 0.51..1.00 (50) read 2/3: (51 + 50 * 2/3) / 101
    # VOC all-point: 0.5 * 1 + 0.5 * 2/3 = 5/6 = 0.8333
    # VOC 11-point: t = 0 .. .5 (6 points) -> 1, t = .6 .. 1 (5 points) -> 2/3: (6 + 5 * 2/3) / 11 = 28/33 = 0.8485
    s = stats_of(
        [([SQUARE], [0], [SQUARE, SQUARE], [0, 0], [0.9, 0.8]), ([SQUARE], [0], [SQUARE], [0], [0.7])], num_classes=1
    )
    np.testing.assert_array_equal(s.tp[:, 0], [True, False, True])
    np.testing.assert_array_equal(s.voc_tp[:, 0], [True, False, True])
    np.testing.assert_allclose(M.average_precision(s, 0, "coco"), [(51 + 50 * 2 / 3) / 101])
    np.testing.assert_allclose(M.average_precision(s, 0, "voc"), [5 / 6])
    np.testing.assert_allclose(M.average_precision(s, 0, "voc07"), [28 / 33])


def test_iou_058_counts_at_two_thresholds_only():
    # det 10 x 5.8 inside a 10 x 10 GT: IoU = 58 / 100 = 0.58 -> a hit at 0.50 and 0.55, a miss at 0.60 .. 0.95
    # COCO mAP = (1 + 1 + 0 * 8) / 10 = 0.2; AP50 = 1; AP75 = 0; VOC (0.58 > 0.5) = 1 in both interpolations
    s = stats_of([([SQUARE], [0], [[0, 0, 10, 5.8]], [0], [0.9])], num_classes=1)
    np.testing.assert_array_equal(s.tp[0], [True, True] + [False] * 8)
    assert scalars(s) == pytest.approx(
        {"coco_map": 0.2, "coco_map_50": 1.0, "coco_map_75": 0.0, "voc_map_50": 1.0, "voc07_map_50": 1.0}
    )


def test_iou_exactly_half_counts_for_coco_not_voc():
    # IoU = 50 / 100 = 0.5 exactly in floating point: COCO needs IoU >= t, the VOC devkit needs IoU > 0.5
    s = stats_of([([SQUARE], [0], [[0, 0, 10, 5]], [0], [0.9])], num_classes=1)
    summary = M.detection_summary(s)
    assert summary["coco_map_50"] == pytest.approx(1.0)
    assert summary["voc_map_50"] == 0.0 and summary["voc07_map_50"] == 0.0
    assert summary["per_class"][0]["recall50"] == 1.0  # recall50 is COCO's matching
    assert s.tp[0, 0] and not s.voc_tp[0, 0] and not s.voc_ignored[0, 0]  # a VOC false positive


def test_voc_all_point_vs_11_point_vs_coco_101_point():
    # 3 GT (images 1-3). In score order: TP (.9), FP (.8), TP (.7), FP (.6); image 3's GT is never found.
    # recall [1/3, 1/3, 2/3, 2/3], precision [1, 1/2, 2/3, 1/2] -> monotone [1, 2/3, 2/3, 1/2]
    # VOC all-point: 1/3 * 1 + 1/3 * 2/3 + 1/3 * 0 = 5/9 = 0.5556
    # VOC 11-point: t = 0 .. .3 (4 points, 1/3 >= .3) -> 1; t = .4 .. .6 (3) -> 2/3; t = .7 .. 1 (4) -> 0:
    #       (4 + 3 * 2/3) / 11 = 6/11 = 0.5455
    # COCO: recall points 0.00..0.33 (34) -> 1, 0.34..0.66 (33) -> 2/3, 0.67..1.00 (34) unreached -> 0:
    #       (34 + 33 * 2/3) / 101 = 56 / 101 = 0.5545
    s = stats_of(
        [
            ([SQUARE], [0], [SQUARE, FAR], [0, 0], [0.9, 0.8]),
            ([SQUARE], [0], [SQUARE], [0], [0.7]),
            ([SQUARE], [0], [FAR], [0], [0.6]),
        ],
        num_classes=1,
    )
    np.testing.assert_allclose(M.average_precision(s, 0, "voc"), [5 / 9])
    np.testing.assert_allclose(M.average_precision(s, 0, "voc07"), [6 / 11])
    np.testing.assert_allclose(M.average_precision(s, 0, "coco"), [56 / 101])


def test_11_point_uses_the_devkits_recall_points():
    # 10 GT (one per image), 3 found at precision 1, 7 never: recall [.1, .2, .3]
    # voc_eval.py's points np.arange(0., 1.1, 0.1): t[3] = 0.30000000000000004 > 3/10, so only t = 0, .1, .2
    # reach precision 1 (t[1] = 0.1 and t[2] = 0.2 are exact), t = .3 .. 1 -> 0: 3/11 as the devkit computes
    # all-point: 0.3 * 1 = 0.3
    images = [
        ([SQUARE], [0], [SQUARE] if i < 3 else [], [0] if i < 3 else [], [0.9] if i < 3 else []) for i in range(10)
    ]
    s = stats_of(images, num_classes=1)
    np.testing.assert_allclose(M.average_precision(s, 0, "voc07"), [3 / 11])
    np.testing.assert_allclose(M.average_precision(s, 0, "voc"), [0.3])


def test_voc_ignores_detections_of_difficult_objects_coco_counts_them():
    # A = SQUARE difficult, B = FAR not. In score order: d1 = A exactly (IoU 1, A difficult -> ignored),
    # d2 = A again (ignored too: a difficult object is never marked detected, so no duplicate FP),
    # d3 = B exactly (TP), d4 = [0,0,10,4] (IoU 40 / 100 = .4 with A, not > .5 -> FP even though A is difficult).
    # VOC: npos = 1 (B); without d1, d2: tp [1, 1], fp [0, 1] -> recall [1, 1], precision [1, .5] -> AP 1 (both)
    #   (counting A would give 5/6; ignoring d1, d2 with npos 2 would give .5)
    # COCO counts A: d1 TP (A), d2 FP (A taken, IoU 0 with B), d3 TP (B), d4 FP
    #   recall [.5, .5, 1, 1], precision [1, .5, 2/3, .5] -> monotone [1, 2/3, 2/3, .5]: (51 + 50 * 2/3) / 101
    s = stats_of(
        [([SQUARE, FAR], [0, 0], [SQUARE, SQUARE, FAR, [0, 0, 10, 4]], [0] * 4, [0.9, 0.8, 0.7, 0.6], [True, False])],
        num_classes=1,
    )
    np.testing.assert_array_equal(s.voc_ignored[:, 0], [True, True, False, False])
    np.testing.assert_array_equal(s.voc_tp[:, 0], [False, False, True, False])
    np.testing.assert_array_equal(s.tp[:, 0], [True, False, True, False])
    np.testing.assert_array_equal(s.gt_per_class, [2])
    np.testing.assert_array_equal(s.voc_gt_per_class, [1])
    np.testing.assert_allclose(M.average_precision(s, 0, "voc"), [1.0])
    np.testing.assert_allclose(M.average_precision(s, 0, "voc07"), [1.0])
    np.testing.assert_allclose(M.average_precision(s, 0, "coco"), [(51 + 50 * 2 / 3) / 101])
    assert M.detection_summary(s)["per_class"][0]["ground_truth"] == 2


def test_voc_best_object_difficult_hides_a_non_difficult_one():
    # A = SQUARE difficult, B = [1,0,11,10] not. d = [.2,0,10.2,10]: IoU with A = 98 / 102 = .961, with B =
    # 92 / 108 = .852. The devkit only looks at the best (A, difficult): d is ignored and B is never found.
    # VOC: npos 1, no TP, no FP -> AP 0. COCO: d takes A (the highest IoU), B missed: AP50 = 51 / 101
    # (recall .5 at precision 1: points 0 .. .50) ... and a difficult-only class has VOC AP nan.
    s = stats_of(
        [([SQUARE, [1, 0, 11, 10], FAR], [0, 0, 1], [[0.2, 0, 10.2, 10], FAR], [0, 1], [0.9, 0.8], [True, False, True])]
    )
    assert s.voc_ignored[0, 0] and not s.voc_tp[0, 0]
    np.testing.assert_array_equal(s.voc_gt_per_class, [1, 0])
    np.testing.assert_allclose(M.average_precision(s, 0, "voc"), [0.0, np.nan])
    np.testing.assert_allclose(M.average_precision(s, 0, "coco"), [51 / 101, 1.0])
    per_class = M.detection_summary(s)["per_class"]
    assert per_class[0]["recall50"] == 0.5 and per_class[1]["recall50"] == 1.0
    assert np.isnan(per_class[1]["voc_ap50"]) and per_class[1]["ground_truth"] == 1


def test_coco_takes_the_free_ground_truth_voc_the_best_one():
    # GT A = [0,0,10,10], B = [2,0,12,10]. d1 = A exactly (IoU 1 with A). d2 = [.5,0,10.5,10]:
    # IoU with A = 95 / 105 = 0.905, with B = 85 / 115 = 0.739.
    # COCO: A is taken by d1, so d2 takes B where 0.739 >= t: TP at t = .50 .. .70 (5 thresholds), FP above.
    #   t <= .70: tp [1, 2] -> AP 1;  t >= .75: recall [.5, .5], precision [1, .5] -> 51 / 101
    #   mAP = (5 * 1 + 5 * 51 / 101) / 10; AP75 = 51 / 101; recall50 = 2 / 2
    # VOC: d2's best GT is A, already detected -> FP: recall [.5, .5], precision [1, .5] -> all-point AP = .5,
    #   11-point: t = 0 .. .5 (6 points) -> 1, the rest 0: 6 / 11
    s = stats_of([([SQUARE, [2, 0, 12, 10]], [0, 0], [SQUARE, [0.5, 0, 10.5, 10]], [0, 0], [0.9, 0.8])], num_classes=1)
    np.testing.assert_array_equal(s.tp[1], [True] * 5 + [False] * 5)
    assert scalars(s) == pytest.approx(
        {
            "coco_map": (5 + 5 * 51 / 101) / 10,
            "coco_map_50": 1.0,
            "coco_map_75": 51 / 101,
            "voc_map_50": 0.5,
            "voc07_map_50": 6 / 11,
        }
    )
    assert M.detection_summary(s)["per_class"][0]["recall50"] == 1.0


def test_coco_gives_an_iou_tie_to_the_later_ground_truth(tmp_path):
    # GT A = [0,0,10,10], B = [5,0,15,10]. d1 = [2.5,0,12.5,10]: IoU 75 / 125 = .6 with both (exactly equal).
    # d2 = [-1,0,9,10]: IoU with A = 90 / 110 = .818, with B = 40 / 160 = .25.
    # COCO (pycocotools replaces on >=): d1 takes B at t <= .6, so d2 takes A at t <= .8 -> tp[d2] at 7 thresholds
    #   t = .50 .. .60 (3): tp [1, 1] -> AP 1; t = .65 .. .80 (4): d1 FP, d2 TP: recall [0, .5], precision [0, .5]
    #   -> monotone .5 at points 0 .. .50 (51): 25.5 / 101; t = .85 .. .95: 0. mAP = (3 + 4 * 25.5 / 101) / 10
    #   (giving the tie to A would leave d2 only B at .25: an FP at t <= .6)
    # VOC (np.argmax: the first of equal IoUs): d1 -> A (TP), d2's best is A, taken -> FP
    gt, det = [SQUARE, [5, 0, 15, 10]], [[2.5, 0, 12.5, 10], [-1, 0, 9, 10]]
    s = stats_of([(gt, [0, 0], det, [0, 0], [0.9, 0.8])], num_classes=1)
    np.testing.assert_array_equal(s.tp[1], [True] * 7 + [False] * 3)
    np.testing.assert_array_equal(s.voc_tp[:, 0], [True, False])
    expected = (3 + 4 * 25.5 / 101) / 10
    assert M.detection_summary(s)["coco_map"] == pytest.approx(expected)
    dets = [{"image_id": 1, "box": np.array(b), "label": 0, "score": sc} for b, sc in zip(det, [0.9, 0.8], strict=True)]
    images = [{"file": "a.jpg", "width": 20, "height": 20, "boxes": np.array(gt), "labels": np.array([0, 0])}]
    assert pycocotools_eval(tmp_path, images, dets, ["a"]).stats[0] == pytest.approx(expected, abs=1e-12)


def test_coco_counts_only_the_best_100_detections_of_an_image():
    # 100 far-away boxes score above the one correct box: COCO never sees the correct one (AP 0, recall50 0);
    # VOC sees all 101: recall reaches 1 at precision 1/101 -> all-point AP = 1/101, and every 11-point t reads
    # the best precision at recall >= t, 1/101
    boxes = [[50 + i, 50, 60 + i, 60] for i in range(100)] + [SQUARE]
    scores = list(np.linspace(0.99, 0.5, 100)) + [0.1]
    s = stats_of([([SQUARE], [0], boxes, [0] * 101, scores)], num_classes=1)
    assert s.coco_counted.sum() == 100 and not s.coco_counted[-1]
    summary = M.detection_summary(s)
    assert summary["coco_map"] == 0.0 and summary["per_class"][0]["recall50"] == 0.0
    assert summary["voc_map_50"] == pytest.approx(1 / 101)
    assert summary["voc07_map_50"] == pytest.approx(1 / 101)


def test_merging_in_any_order_equals_computing_at_once():
    rng = np.random.default_rng(3)
    per_image = []
    for i in range(12):
        gb = np.sort(rng.uniform(0, 100, (3, 4)).reshape(3, 2, 2), axis=1).transpose(0, 2, 1).reshape(3, 4)
        db = gb + rng.normal(0, 4, gb.shape)
        db = np.concatenate([np.minimum(db[:, :2], db[:, 2:]), np.maximum(db[:, :2], db[:, 2:])], axis=1)
        per_image.append(
            M.match_image(
                gb,
                rng.integers(0, 3, 3),
                db,
                rng.integers(0, 3, 3),
                np.round(rng.uniform(0, 1, 3), 1),
                3,
                image_id=i + 1,
                gt_difficult=rng.random(3) < 0.2,
            )
        )
    at_once = sum(per_image)
    halves = sum(per_image[6:]) + sum(per_image[:6])  # batches may finish in any order
    shuffled = sum(per_image[j] for j in rng.permutation(12)) + M.MatchStats.empty(3)
    concatenated = M.MatchStats.concat([per_image[j] for j in rng.permutation(12)])
    expected = M.detection_summary(at_once)
    assert 0 < expected["coco_map"] < 1  # a case where ties and order could matter
    assert at_once.voc_ignored.any()  # and where difficult objects are in play
    for merged in (halves, shuffled, concatenated):
        np.testing.assert_equal(M.detection_summary(merged), expected)  # nan == nan here
        np.testing.assert_array_equal(merged.voc_gt_per_class, at_once.voc_gt_per_class)
    np.testing.assert_array_equal(halves.gt_per_class, at_once.gt_per_class)


def test_merging_refuses_mismatched_statistics():
    with pytest.raises(ValueError, match="3 and 2 classes"):
        M.MatchStats.empty(3) + M.MatchStats.empty(2)
    with pytest.raises(ValueError, match="at least one part"):
        M.MatchStats.concat([])
    with pytest.raises(TypeError):
        M.MatchStats.empty(2) + 1.5
    s = M.MatchStats.empty(2)
    assert (s + 0) is s and (0 + s) is s  # an empty batch's accumulator (0) merges as nothing
    with pytest.raises(ValueError, match="IoU thresholds"):
        M.MatchStats.empty(2) + M.MatchStats.empty(2, iou_thresholds=[0.5])
    with pytest.raises(ValueError, match="COCO's IoU thresholds"):
        M.detection_summary(M.MatchStats.empty(2, iou_thresholds=[0.5]))


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match=r"det_labels must be class indices in \[0, 2\), got \[5\]"):
        M.match_image(np.zeros((0, 4)), [], [SQUARE], [5], [0.5], 2)
    with pytest.raises(ValueError, match="gt_labels.*-1"):
        M.match_image([SQUARE], [-1], np.zeros((0, 4)), [], [], 2)  # padding rows must be removed first
    with pytest.raises(ValueError, match="finite"):
        M.match_image([SQUARE], [0], [SQUARE], [0], [np.nan], 2)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        M.match_image([[0, 0, 1]], [0], np.zeros((0, 4)), [], [], 2)
    with pytest.raises(ValueError, match=r"gt_difficult must be booleans or 0/1, got \[2\]"):
        M.match_image([SQUARE], [0], np.zeros((0, 4)), [], [], 2, gt_difficult=[2])
    with pytest.raises(ValueError, match=r"gt_difficult must have one flag per ground-truth box \(1\)"):
        M.match_image([SQUARE], [0], np.zeros((0, 4)), [], [], 2, gt_difficult=[0, 1])
    with pytest.raises(ValueError, match="'map'"):
        M.average_precision(M.MatchStats.empty(2), 0, "map")


def pycocotools_eval(tmp_path, images, dets, classes):
    """COCOeval (bbox) of raydet's COCO export of ``images`` / ``dets``, evaluated, accumulated, summarized."""
    coco.write_json(tmp_path / "gt.json", coco.ground_truth(images, classes))
    coco.write_json(tmp_path / "dt.json", coco.detections(dets, classes))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and its table
        gt = COCO(str(tmp_path / "gt.json"))
        ev = COCOeval(gt, gt.loadRes(str(tmp_path / "dt.json")), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def crowded_case(rng, n_images=20, n_classes=4, max_gt=30, max_det=150):
    """Seeded crowded images: ground truth in a few tight clusters (many overlapping objects), detections that
    jitter one object (sometimes with another class), sit between objects, or lie anywhere; scores rounded to 2
    decimals so many tie. Image 0's detections are all class 0, past COCO's 100 per image and class."""
    images, dets = [], []
    for i in range(n_images):
        w, h = (int(v) for v in rng.integers(200, 640, 2))
        g = int(rng.integers(0, max_gt + 1))
        centres = rng.uniform(0.2, 0.8, (4, 2))[rng.integers(0, 4, g)]
        half = rng.uniform(0.03, 0.15, (g, 2))
        cxy = np.clip(centres + rng.normal(0, 0.05, (g, 2)), half, 1 - half)
        gb = np.concatenate([cxy - half, cxy + half], axis=1) * [w, h, w, h]
        gl = rng.integers(0, n_classes - 1, g)  # the last class never has ground truth
        images.append(
            {
                "file": f"img_{i}.jpg",
                "width": w,
                "height": h,
                "boxes": gb,
                "labels": gl,
                "difficult": rng.random(g) < 0.15,
            }
        )
        d = max_det if i == 0 else int(rng.integers(0, max_det + 1))
        for _ in range(d):
            kind = rng.random()
            if g and kind < 0.7:
                j = rng.integers(g)
                box = gb[j] + rng.normal(0, 0.1, 4) * np.tile(gb[j, 2:] - gb[j, :2], 2)
                label = int(gl[j]) if rng.random() < 0.85 else int(rng.integers(n_classes))
            elif g and kind < 0.85:
                a, b = rng.integers(g, size=2)  # between two objects
                box = (gb[a] + gb[b]) / 2 + rng.normal(0, 2, 4)
                label = int(gl[a])
            else:
                p = rng.uniform(0, 0.7, 2) * [w, h]
                box = np.concatenate([p, p + rng.uniform(0.03, 0.3, 2) * [w, h]])
                label = int(rng.integers(n_classes))
            box = np.concatenate([np.minimum(box[:2], box[2:]), np.maximum(box[:2], box[2:])])
            dets.append(
                {
                    "image_id": coco.image_id(i),
                    "box": box,
                    "label": 0 if i == 0 else label,
                    "score": round(float(rng.uniform(0.01, 1)), 2),
                }
            )
    return images, dets


def raydet_stats(images, dets, n_classes):
    """Per-image statistics merged in a shuffled order, as batches from an actor pool arrive."""
    parts = []
    for i in np.random.default_rng(0).permutation(len(images)):
        img = images[i]
        mine = [d for d in dets if d["image_id"] == coco.image_id(i)]
        parts.append(
            M.match_image(
                img["boxes"],
                img["labels"],
                np.array([d["box"] for d in mine]).reshape(-1, 4),
                np.array([d["label"] for d in mine], int),
                [d["score"] for d in mine],
                n_classes,
                image_id=coco.image_id(i),
                gt_difficult=img["difficult"],
            )
        )
    return M.MatchStats.concat(parts)


def test_crowded_images_equal_pycocotools(tmp_path):
    # COCO counts difficult objects too, and the export (iscrowd 0 for every object) tells pycocotools the same
    rng = np.random.default_rng(11)
    classes = ["cat", "dog", "fox", "owl"]
    images, dets = crowded_case(rng)
    ev = pycocotools_eval(tmp_path, images, dets, classes)
    stats = raydet_stats(images, dets, len(classes))
    ours = M.detection_summary(stats)
    assert len(dets) > 1000 and (~stats.coco_counted).any()  # crowded, and past the 100-detection cap
    assert ours["coco_map"] == pytest.approx(ev.stats[0], abs=1e-12)
    assert ours["coco_map_50"] == pytest.approx(ev.stats[1], abs=1e-12)
    assert ours["coco_map_75"] == pytest.approx(ev.stats[2], abs=1e-12)
    # per class: precision (T, R, K, A, M) and recall (T, K, A, M) at IoU .5, area "all", maxDets 100; -1 = nan
    ref_ap50 = ev.eval["precision"][0, :, :, 0, 2].mean(axis=0)
    ref_recall50 = ev.eval["recall"][0, :, 0, 2]
    ap50 = np.array([c["ap50"] for c in ours["per_class"]])
    recall50 = np.array([c["recall50"] for c in ours["per_class"]])
    np.testing.assert_allclose(ap50, np.where(ref_ap50 < 0, np.nan, ref_ap50), rtol=0, atol=1e-12)
    np.testing.assert_allclose(recall50, np.where(ref_recall50 < 0, np.nan, ref_recall50), rtol=0, atol=1e-12)
    assert [c["ground_truth"] for c in ours["per_class"]] == [
        len(ev.cocoGt.getAnnIds(catIds=[coco.category_id(k)])) for k in range(len(classes))
    ]


def voc_eval_reference(images, dets, label, use_07):
    """A transcription of voc_eval.py's loop for one class (detections sorted once over all images; ignored ones
    kept in the sums with tp = fp = 0), with continuous IoU and 11-point recall points k / 10 as raydet."""
    recs = {
        coco.image_id(i): {
            "bbox": img["boxes"][img["labels"] == label],
            "difficult": img["difficult"][img["labels"] == label],
            "det": np.zeros(int(np.sum(img["labels"] == label)), bool),
        }
        for i, img in enumerate(images)
    }
    npos = sum(int(np.sum(~r["difficult"])) for r in recs.values())
    mine = [d for d in dets if d["label"] == label]  # listed by image id, then position: raydet's tie order
    order = np.argsort([-d["score"] for d in mine], kind="stable")
    tp, fp = np.zeros(len(mine)), np.zeros(len(mine))
    for k, d in enumerate(order):
        r, bb = recs[mine[d]["image_id"]], mine[d]["box"]
        ovmax = -np.inf
        if len(r["bbox"]):
            g = r["bbox"]
            iw = np.maximum(np.minimum(g[:, 2], bb[2]) - np.maximum(g[:, 0], bb[0]), 0)
            ih = np.maximum(np.minimum(g[:, 3], bb[3]) - np.maximum(g[:, 1], bb[1]), 0)
            inter = iw * ih
            overlaps = inter / ((bb[2] - bb[0]) * (bb[3] - bb[1]) + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]) - inter)
            ovmax, jmax = np.max(overlaps), np.argmax(overlaps)
        if ovmax > 0.5:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[k], r["det"][jmax] = 1, True
                else:
                    fp[k] = 1
        else:
            fp[k] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec, prec = tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        return sum((np.max(prec[rec >= t]) if np.sum(rec >= t) else 0.0) / 11 for t in np.arange(11) / 10)
    mrec, mpre = np.concatenate(([0.0], rec, [1.0])), np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def test_crowded_images_with_difficult_objects_equal_voc_eval():
    rng = np.random.default_rng(12)
    images, dets = crowded_case(rng)
    ours = M.detection_summary(raydet_stats(images, dets, 4))
    ref_all = [voc_eval_reference(images, dets, k, use_07=False) for k in range(3)]  # class 3 has no ground truth
    ref_07 = [voc_eval_reference(images, dets, k, use_07=True) for k in range(3)]
    np.testing.assert_allclose([c["voc_ap50"] for c in ours["per_class"]], ref_all + [np.nan], rtol=0, atol=1e-12)
    assert ours["voc_map_50"] == pytest.approx(np.mean(ref_all), abs=1e-12)
    assert ours["voc07_map_50"] == pytest.approx(np.mean(ref_07), abs=1e-12)
    assert ours["voc_map_50"] != ours["voc07_map_50"]
