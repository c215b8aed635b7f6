"""Metric definitions on hand-computed cases. The pycocotools cross-check lives in test_coco.py."""

import numpy as np
import pytest

from raydet import metrics as M

SQUARE = [0.0, 0.0, 10.0, 10.0]  # area 100


def stats_of(images, num_classes=2):
    """images: [(gt_boxes, gt_labels, det_boxes, det_labels, det_scores)] -> merged MatchStats, ids 1, 2, ..."""
    total = M.MatchStats.empty(num_classes)
    for i, (gb, gl, db, dl, ds) in enumerate(images):
        total = total + M.match_image(np.array(gb, float).reshape(-1, 4), np.array(gl, int),
                                      np.array(db, float).reshape(-1, 4), np.array(dl, int), np.array(ds, float),
                                      num_classes, image_id=i + 1)
    return total


def test_perfect_detections_score_one():
    # precision is tp / (tp + fp + eps) in pycocotools, so "1" is 1 - 1e-16: compare approximately
    s = stats_of([([SQUARE], [0], [SQUARE], [0], [0.9]),
                  ([[5, 5, 25, 45], SQUARE], [1, 0], [SQUARE, [5, 5, 25, 45]], [0, 1], [0.3, 0.8])])
    assert M.detection_summary(s) == pytest.approx({"coco_map": 1.0, "coco_map_50": 1.0, "voc_map_50": 1.0})
    np.testing.assert_array_equal(s.gt_per_class, [2, 1])


def test_no_detections_score_zero():
    s = stats_of([([SQUARE], [0], [], [], [])])
    assert M.detection_summary(s) == {"coco_map": 0.0, "coco_map_50": 0.0, "voc_map_50": 0.0}


def test_class_without_ground_truth_is_excluded():
    # class 0 perfect; class 1 has only a false positive and no ground truth: AP nan, left out of the mean
    s = stats_of([([SQUARE], [0], [SQUARE, [50, 50, 60, 60]], [0, 1], [0.9, 0.95])])
    ap = M.average_precision(s, 0, "coco")
    assert ap[0] == pytest.approx(1.0) and np.isnan(ap[1])
    assert M.detection_summary(s) == pytest.approx({"coco_map": 1.0, "coco_map_50": 1.0, "voc_map_50": 1.0})


def test_no_ground_truth_at_all_is_nan():
    # pycocotools prints -1 here; raydet says nan (test_coco checks pycocotools' side)
    s = stats_of([([], [], [SQUARE], [0], [0.5])])
    assert all(np.isnan(v) for v in M.detection_summary(s).values())


def test_wrong_class_is_a_false_positive():
    # the box is perfect but labelled 1: class 0 gets no detection (AP 0), class 1 has no ground truth
    s = stats_of([([SQUARE], [0], [SQUARE], [1], [0.9])])
    assert M.detection_summary(s) == {"coco_map": 0.0, "coco_map_50": 0.0, "voc_map_50": 0.0}


def test_duplicate_detection_is_a_false_positive():
    # GT A (image 1), GT B (image 2). In score order: d1 on A (TP), d2 on A again (FP), d3 on B (TP).
    # tp = [1, 1, 2], fp = [0, 1, 1] -> recall [.5, .5, 1], precision [1, .5, 2/3] -> monotone [1, 2/3, 2/3]
    # COCO: recall points 0.00..0.50 (51) read precision 1, 0.51..1.00 (50) read 2/3: (51 + 50 * 2/3) / 101
    # VOC: 0.5 * 1 + 0.5 * 2/3 = 5/6
    s = stats_of([([SQUARE], [0], [SQUARE, SQUARE], [0, 0], [0.9, 0.8]),
                  ([SQUARE], [0], [SQUARE], [0], [0.7])], num_classes=1)
    np.testing.assert_array_equal(s.tp[:, 0], [True, False, True])
    np.testing.assert_allclose(M.average_precision(s, 0, "coco"), [(51 + 50 * 2 / 3) / 101])
    np.testing.assert_allclose(M.average_precision(s, 0, "voc"), [5 / 6])


def test_iou_058_counts_at_two_thresholds_only():
    # det 10 x 5.8 inside a 10 x 10 GT: IoU = 58 / 100 = 0.58 -> a hit at 0.50 and 0.55, a miss at 0.60 .. 0.95
    # COCO mAP = (1 + 1 + 0 * 8) / 10 = 0.2; AP50 = 1; VOC (0.58 > 0.5) = 1
    s = stats_of([([SQUARE], [0], [[0, 0, 10, 5.8]], [0], [0.9])], num_classes=1)
    np.testing.assert_array_equal(s.tp[0], [True, True] + [False] * 8)
    assert M.detection_summary(s) == pytest.approx({"coco_map": 0.2, "coco_map_50": 1.0, "voc_map_50": 1.0})


def test_iou_exactly_half_counts_for_coco_not_voc():
    # IoU = 50 / 100 = 0.5: COCO needs IoU >= t, the VOC devkit needs IoU > 0.5
    s = stats_of([([SQUARE], [0], [[0, 0, 10, 5]], [0], [0.9])], num_classes=1)
    summary = M.detection_summary(s)
    assert summary["coco_map_50"] == pytest.approx(1.0) and summary["voc_map_50"] == 0.0


def test_voc_all_point_vs_coco_101_point():
    # 3 GT (images 1-3). In score order: TP (.9), FP (.8), TP (.7), FP (.6); image 3's GT is never found.
    # recall [1/3, 1/3, 2/3, 2/3], precision [1, 1/2, 2/3, 1/2] -> monotone [1, 2/3, 2/3, 1/2]
    # VOC all-point: 1/3 * 1 + 1/3 * 2/3 + 1/3 * 0 = 5/9 = 0.5556
    # COCO: recall points 0.00..0.33 (34) -> 1, 0.34..0.66 (33) -> 2/3, 0.67..1.00 (34) unreached -> 0:
    #       (34 + 33 * 2/3) / 101 = 56 / 101 = 0.5545
    far = [50, 50, 60, 60]
    s = stats_of([([SQUARE], [0], [SQUARE, far], [0, 0], [0.9, 0.8]),
                  ([SQUARE], [0], [SQUARE], [0], [0.7]),
                  ([SQUARE], [0], [far], [0], [0.6])], num_classes=1)
    np.testing.assert_allclose(M.average_precision(s, 0, "voc"), [5 / 9])
    np.testing.assert_allclose(M.average_precision(s, 0, "coco"), [56 / 101])


def test_coco_takes_the_free_ground_truth_voc_the_best_one():
    # GT A = [0,0,10,10], B = [2,0,12,10]. d1 = A exactly (IoU 1 with A). d2 = [.5,0,10.5,10]:
    # IoU with A = 95 / 105 = 0.905, with B = 85 / 115 = 0.739.
    # COCO: A is taken by d1, so d2 takes B where 0.739 >= t: TP at t = .50 .. .70 (5 thresholds), FP above.
    #   t <= .70: tp [1, 2] -> AP 1;  t >= .75: recall [.5, .5], precision [1, .5] -> 51 / 101
    #   mAP = (5 * 1 + 5 * 51 / 101) / 10
    # VOC: d2's best GT is A, already detected -> FP: recall [.5, .5], precision [1, .5] -> AP = .5
    s = stats_of([([SQUARE, [2, 0, 12, 10]], [0, 0], [SQUARE, [0.5, 0, 10.5, 10]], [0, 0], [0.9, 0.8])],
                 num_classes=1)
    np.testing.assert_array_equal(s.tp[1], [True] * 5 + [False] * 5)
    assert M.detection_summary(s) == pytest.approx(
        {"coco_map": (5 + 5 * 51 / 101) / 10, "coco_map_50": 1.0, "voc_map_50": 0.5})


def test_coco_counts_only_the_best_100_detections_of_an_image():
    # 100 far-away boxes score above the one correct box: COCO never sees the correct one (AP 0);
    # VOC sees all 101: recall reaches 1 at precision 1/101 -> AP = 1/101
    boxes = [[50 + i, 50, 60 + i, 60] for i in range(100)] + [SQUARE]
    scores = list(np.linspace(0.99, 0.5, 100)) + [0.1]
    s = stats_of([([SQUARE], [0], boxes, [0] * 101, scores)], num_classes=1)
    assert s.coco_counted.sum() == 100 and not s.coco_counted[-1]
    summary = M.detection_summary(s)
    assert summary["coco_map"] == 0.0
    assert summary["voc_map_50"] == pytest.approx(1 / 101)


def test_merging_in_any_order_equals_computing_at_once():
    rng = np.random.default_rng(3)
    per_image = []
    for i in range(12):
        gb = np.sort(rng.uniform(0, 100, (3, 4)).reshape(3, 2, 2), axis=1).transpose(0, 2, 1).reshape(3, 4)
        db = gb + rng.normal(0, 4, gb.shape)
        db = np.concatenate([np.minimum(db[:, :2], db[:, 2:]), np.maximum(db[:, :2], db[:, 2:])], axis=1)
        per_image.append(M.match_image(gb, rng.integers(0, 3, 3), db, rng.integers(0, 3, 3),
                                       np.round(rng.uniform(0, 1, 3), 1), 3, image_id=i + 1))
    at_once = sum(per_image)
    halves = sum(per_image[6:]) + sum(per_image[:6])  # batches may finish in any order
    shuffled = sum(per_image[j] for j in rng.permutation(12)) + M.MatchStats.empty(3)
    concatenated = M.MatchStats.concat([per_image[j] for j in rng.permutation(12)])
    expected = M.detection_summary(at_once)
    assert 0 < expected["coco_map"] < 1  # a case where ties and order could matter
    assert M.detection_summary(halves) == expected
    assert M.detection_summary(shuffled) == expected
    assert M.detection_summary(concatenated) == expected
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
    with pytest.raises(ValueError, match="'map'"):
        M.average_precision(M.MatchStats.empty(2), 0, "map")


def test_class_box_stats_uses_largest_object_for_class_and_best_box_for_iou():
    pad = [0, 0, 0, 0]
    gt_boxes = np.array([[[0, 0, 50, 50], [60, 60, 70, 70], pad],  # largest (2500) is class 1; small one class 0
                         [SQUARE, pad, pad],
                         [pad, pad, pad]], float)  # no ground truth: left out
    gt_labels = np.array([[1, 0, -1], [0, -1, -1], [-1, -1, -1]])
    # image 1: class 1 = largest's class (correct); box = the small object exactly -> best IoU 1
    # image 2: class 1 is wrong; box [0,0,10,5] -> IoU 50 / 100 = 0.5
    pred_boxes = np.array([[60, 60, 70, 70], [0, 0, 10, 5], SQUARE], float)
    s = M.class_box_stats(gt_boxes, gt_labels, pred_boxes, np.array([1, 1, 0]))
    assert s == M.ClassBoxStats(correct=1, iou_sum=1.5, hits_50=2, images=2, no_ground_truth=1)
    assert (s.accuracy, s.mean_iou, s.hit_rate_50) == (0.5, 0.75, 1.0)
    # (N, 4) ground truth = one object per image; merging sums
    one = M.class_box_stats(np.array([SQUARE]), np.array([0]), np.array([[0, 0, 10, 5]]), np.array([0]))
    merged = sum([s, one])
    assert (merged.correct, merged.images, merged.iou_sum) == (2, 3, 2.0)
    assert np.isnan(M.ClassBoxStats().accuracy)


def test_class_box_stats_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"pred_boxes \(N, 4\)"):
        M.class_box_stats(np.zeros((2, 1, 4)), np.zeros((2, 1), int), np.zeros((3, 4)), np.zeros(3, int))
