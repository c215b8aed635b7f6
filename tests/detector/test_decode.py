import numpy as np
import pytest

from raydet.detector.decode import NMS_IOU, Detections, decode, find_peaks, nms, to_pixels
from raydet.detector.targets import build_targets


def _maps(grid=8, classes=2):
    return np.zeros((1, grid, grid, classes), np.float32), np.zeros((1, grid, grid, 4), np.float32)


def test_two_peaks_of_different_classes():
    heatmap, boxes = _maps()
    heatmap[0, 2, 3, 0], boxes[0, 2, 3] = 0.9, [0.5, 0.25, 0.25, 0.125]
    heatmap[0, 5, 6, 1], boxes[0, 5, 6] = 0.8, [0.0, 0.5, 0.5, 0.25]
    (det,) = decode(heatmap, boxes)
    # cell (y 2, x 3): cx = (3 + 0.5) / 8 = 0.4375, cy = (2 + 0.25) / 8 = 0.28125, w/2 = 0.125, h/2 = 0.0625
    #   -> (0.3125, 0.21875, 0.5625, 0.34375)
    # cell (y 5, x 6): cx = 6 / 8 = 0.75, cy = 5.5 / 8 = 0.6875, w/2 = 0.25, h/2 = 0.125
    #   -> (0.5, 0.5625, 1.0, 0.8125)
    np.testing.assert_allclose(det.boxes, [[0.3125, 0.21875, 0.5625, 0.34375], [0.5, 0.5625, 1.0, 0.8125]])
    np.testing.assert_array_equal(det.labels, [0, 1])
    np.testing.assert_allclose(det.scores, [0.9, 0.8], rtol=1e-7)
    assert det.boxes.dtype == np.float64 and det.labels.dtype == np.int64 and det.scores.dtype == np.float64
    assert len(det) == 2


def test_find_peaks_rule():
    h = np.array([[0.1, 0.5, 0.5, 0.2], [0.1, 0.2, 0.3, 0.2], [0.9, 0.1, 0.2, 0.8]], np.float32)[None, :, :, None]
    # (0, 1): >= its neighbours, > its left 0.1 -> peak; (0, 2) equals its left neighbour -> not;
    # (2, 0) 0.9 and (2, 3) 0.8 are above all their neighbours -> peaks; every other cell has a bigger neighbour
    want = np.zeros((3, 4), bool)
    want[0, 1] = want[2, 0] = want[2, 3] = True
    np.testing.assert_array_equal(find_peaks(h)[0, :, :, 0], want)


def test_adjacent_lower_neighbours_are_not_peaks_other_class_is():
    heatmap, boxes = _maps()
    heatmap[0, 4, 4, 0] = 0.9
    heatmap[0, 4, 5, 0] = 0.7  # right neighbour, lower -> suppressed
    heatmap[0, 5, 5, 0] = 0.6  # diagonal neighbour, lower -> suppressed
    heatmap[0, 4, 5, 1] = 0.5  # same cell as the 0.7 but class 1: a peak of its own channel
    (det,) = decode(heatmap, boxes)
    np.testing.assert_allclose(det.scores, [0.9, 0.5], rtol=1e-7)
    np.testing.assert_array_equal(det.labels, [0, 1])


def test_plateau_gives_one_detection():
    heatmap, boxes = _maps(classes=1)
    heatmap[0, 3, 3:5, 0] = 0.5  # horizontal pair
    heatmap[0, 6:8, 1, 0] = 0.25  # vertical pair
    boxes[0, 3, 3] = [0.0, 0.0, 0.25, 0.25]
    (det,) = decode(heatmap, boxes)
    np.testing.assert_allclose(det.scores, [0.5, 0.25])
    # the first cell in raster order survives: (y 3, x 3): cx = cy = 3 / 8 = 0.375, +-0.125
    np.testing.assert_allclose(det.boxes[0], [0.25, 0.25, 0.5, 0.5])


def test_score_threshold_is_inclusive():
    heatmap, boxes = _maps(classes=1)
    heatmap[0, 1, 1, 0], heatmap[0, 1, 4, 0], heatmap[0, 4, 1, 0] = 0.5, 0.25, 0.125
    (det,) = decode(heatmap, boxes, score_threshold=0.25)
    np.testing.assert_allclose(det.scores, [0.5, 0.25])
    (det,) = decode(heatmap, boxes, score_threshold=0.6)
    assert det.boxes.shape == (0, 4) and det.labels.shape == (0,) and det.scores.shape == (0,)


def test_top_k_cuts_and_ties_go_by_flat_index():
    heatmap, boxes = _maps(classes=1)
    # flat index (y * 8 + x) * 1: (0, 0) -> 0, (0, 4) -> 4, (4, 0) -> 32, (4, 4) -> 36
    heatmap[0, 0, 0, 0], heatmap[0, 0, 4, 0], heatmap[0, 4, 0, 0], heatmap[0, 4, 4, 0] = 0.5, 0.5, 0.5, 0.75
    boxes[0, :, :, 0] = np.arange(8)[None, :] / 8  # off_x = x / 8 tells the cells apart
    (det,) = decode(heatmap, boxes, top_k=2)
    # 0.75 first, then of the three 0.5s the lowest flat index (0, 0); top_k=3 adds (0, 4)
    np.testing.assert_allclose(det.scores, [0.75, 0.5])
    # cx = (x + x / 8) / 8: (4, 4) -> 4.5 / 8 = 0.5625; (0, 0) -> 0
    np.testing.assert_allclose(det.boxes[:, 0], [0.5625, 0.0])
    (det,) = decode(heatmap, boxes, top_k=3)
    np.testing.assert_allclose(det.boxes[:, 0], [0.5625, 0.0, 0.5625])


def test_boxes_past_the_border_are_clipped():
    heatmap, boxes = _maps(grid=4, classes=1)
    heatmap[0, 0, 0, 0], boxes[0, 0, 0] = 0.9, [0.0, 0.0, 0.5, 0.5]
    heatmap[0, 3, 3, 0], boxes[0, 3, 3] = 0.8, [0.5, 0.5, 1.0, 1.0]
    (det,) = decode(heatmap, boxes)
    # (0, 0): cx = cy = 0 -> (-0.25, -0.25, 0.25, 0.25) -> (0, 0, 0.25, 0.25)
    # (3, 3): cx = cy = 3.5 / 4 = 0.875 -> (0.375, 0.375, 1.375, 1.375) -> (0.375, 0.375, 1, 1)
    np.testing.assert_allclose(det.boxes, [[0, 0, 0.25, 0.25], [0.375, 0.375, 1, 1]])


def _nms_maps():
    heatmap, boxes = _maps()
    # A: cell (y 3, x 3) class 0, off (0.75, 0.5), w = 0.625, h = 0.5 -> cx = 3.75 / 8 = 0.46875, cy = 0.4375
    #    -> x 0.15625..0.78125, y 0.1875..0.6875
    # B: cell (y 3, x 5) class 0, off (0.25, 0.5), same size -> cx = 5.25 / 8 = 0.65625 -> x 0.34375..0.96875
    #    IoU(A, B) = (0.78125 - 0.34375) / (0.96875 - 0.15625) = 0.4375 / 0.8125 = 7/13 = 0.538
    # C: cell (y 3, x 3) class 1: A's box (IoU 1) but another class
    heatmap[0, 3, 3, 0], boxes[0, 3, 3] = 0.9, [0.75, 0.5, 0.625, 0.5]
    heatmap[0, 3, 5, 0], boxes[0, 3, 5] = 0.8, [0.25, 0.5, 0.625, 0.5]
    heatmap[0, 3, 3, 1] = 0.7
    return heatmap, boxes


def test_nms_drops_same_class_keeps_other_class():
    heatmap, boxes = _nms_maps()
    (det,) = decode(heatmap, boxes)
    np.testing.assert_allclose(det.scores, [0.9, 0.8, 0.7], rtol=1e-7)  # 7/13 <= 0.7, the default: all stay
    (det,) = decode(heatmap, boxes, nms_iou=0.5)  # 7/13 > 0.5: B goes; C is class 1 and stays
    np.testing.assert_allclose(det.scores, [0.9, 0.7], rtol=1e-7)
    np.testing.assert_array_equal(det.labels, [0, 1])
    np.testing.assert_allclose(det.boxes, [[0.15625, 0.1875, 0.78125, 0.6875]] * 2)
    (det,) = decode(heatmap, boxes, nms_iou=0.6)  # 7/13 <= 0.6: all stay
    assert len(det) == 3


def test_default_nms_drops_a_duplicate_box_of_a_large_object():
    heatmap, boxes = _maps()
    # two peaks of class 0 two cells apart, both w = 1, h = 0.5, off_y 0.5 -> y 0.1875..0.6875
    # A (y 3, x 3) 0.9, off_x 0.5: cx = 3.5 / 8 = 0.4375 -> x -0.0625..0.9375, clipped to 0..0.9375
    # B (y 3, x 5) 0.8, off_x 0: cx = 5 / 8 = 0.625 -> x 0.125..1.125, clipped to 0.125..1
    # same heights: IoU = (0.9375 - 0.125) / (1 - 0) = 0.8125 > 0.7: B is A's duplicate
    heatmap[0, 3, 3, 0], boxes[0, 3, 3] = 0.9, [0.5, 0.5, 1.0, 0.5]
    heatmap[0, 3, 5, 0], boxes[0, 3, 5] = 0.8, [0.0, 0.5, 1.0, 0.5]
    assert NMS_IOU == 0.7
    (det,) = decode(heatmap, boxes)
    np.testing.assert_allclose(det.scores, [0.9], rtol=1e-7)
    np.testing.assert_allclose(det.boxes, [[0, 0.1875, 0.9375, 0.6875]])
    for kept in (decode(heatmap, boxes, nms_iou=None), decode(heatmap, boxes, nms_iou=0.85)):
        np.testing.assert_allclose(kept[0].scores, [0.9, 0.8], rtol=1e-7)


def test_nms_function():
    b = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [20, 20, 30, 30]], float)
    scores = np.array([0.5, 0.9, 0.8, 0.4])
    labels = np.array([0, 0, 1, 0])
    # box 1 (0.9) suppresses box 0 (IoU 90 / 110 = 0.82, same class); box 2 is class 1; box 3 is disjoint
    np.testing.assert_array_equal(nms(b, scores, labels, 0.5), [1, 2, 3])
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5).size == 0


def test_round_trip_targets_to_detections():
    boxes = np.array(
        [
            [0.1, 0.2, 0.5, 0.6],  # centre (0.3, 0.4)   -> cell x 4,  y 6
            [0.55, 0.1, 0.95, 0.4],  # centre (0.75, 0.25) -> cell x 12, y 4
            [0.6, 0.6, 0.9, 0.95],  # centre (0.75, 0.775) -> cell x 12, y 12
            [0.2, 0.7, 0.3, 0.8],
        ]
    )  # centre (0.25, 0.75) -> cell x 4,  y 12
    labels = np.array([0, 1, 0, 2])
    heatmap, box_target = build_targets(boxes, labels, num_classes=3, grid=16)
    (det,) = decode(heatmap[None], box_target[None, ..., :4])
    # all scores 1.0, so ordered by flat index (y * 16 + x) * 3 + c: rows 1 (y 4), 0 (y 6), 3 (y 12, x 4), 2
    order = [1, 0, 3, 2]
    np.testing.assert_array_equal(det.scores, [1.0] * 4)
    np.testing.assert_array_equal(det.labels, labels[order])
    np.testing.assert_allclose(det.boxes, boxes[order], atol=1e-6)


def test_batch_gives_one_detections_per_image():
    heatmap, boxes = np.zeros((3, 4, 4, 1), np.float32), np.zeros((3, 4, 4, 4), np.float32)
    heatmap[1, 2, 2, 0] = 0.5
    dets = decode(heatmap, boxes)
    assert [len(d) for d in dets] == [0, 1, 0]


@pytest.mark.parametrize(
    "hm_shape, box_shape, match",
    [
        ((1, 8, 8, 2), (1, 4, 4, 4), r"\(1, 8, 8, 4\).*\(1, 4, 4, 4\)"),
        ((1, 8, 8, 2), (1, 8, 8, 5), r"\(1, 8, 8, 5\)"),
        ((8, 8, 2), (8, 8, 4), r"\(8, 8, 2\)"),
    ],
)
def test_mismatched_shapes_are_named(hm_shape, box_shape, match):
    with pytest.raises(ValueError, match=match):
        decode(np.zeros(hm_shape), np.zeros(box_shape))


def test_bad_options_are_named():
    heatmap, boxes = _maps()
    with pytest.raises(ValueError, match="top_k .* got 0"):
        decode(heatmap, boxes, top_k=0)
    with pytest.raises(ValueError, match="nms_iou .* got 1.5"):
        decode(heatmap, boxes, nms_iou=1.5)


def test_detections_holds_float64_boxes_int64_labels_whatever_it_is_given():
    # an empty list of boxes is (0, 4); float32 scores and float labels are widened / cast (COCO json and the
    # metrics index classes by label)
    empty = Detections(boxes=[], labels=[], scores=[])
    assert empty.boxes.shape == (0, 4) and len(empty) == 0
    det = Detections(boxes=np.array([0.1, 0.2, 0.3, 0.4], np.float32), labels=[1.0], scores=np.float32([0.5]))
    assert det.boxes.shape == (1, 4) and det.boxes.dtype == np.float64 and len(det) == 1
    assert det.labels.dtype == np.int64 and det.labels.tolist() == [1]
    assert det.scores.dtype == np.float64 and det.scores.tolist() == [0.5]
    with pytest.raises(ValueError, match=r"\(1, 4\), \(0,\)"):
        Detections(boxes=np.zeros((1, 4)), labels=np.zeros(0), scores=np.zeros(1))


def test_to_pixels():
    # 200 x 100 image: x * 200, y * 100
    np.testing.assert_allclose(to_pixels(np.array([[0.5, 0.25, 1.0, 0.75]]), 200, 100), [[100, 25, 200, 75]])


def test_many_ties_come_in_flat_index_order():
    # 64 peaks on every other cell of a 16 grid, class 0: score 0.75 on even x // 2, else 0.5. Expected order:
    # the 32 cells of score 0.75, then the 0.5 ones, each group in flat index (y * 16 + x) order; top_k 60
    # cuts the 0.5 group after its first 28
    heatmap, boxes = np.zeros((1, 16, 16, 1), np.float32), np.zeros((1, 16, 16, 4), np.float32)
    ys, xs = (a.reshape(-1) for a in np.meshgrid(np.arange(0, 16, 2), np.arange(0, 16, 2), indexing="ij"))
    high = xs // 2 % 2 == 0
    heatmap[0, ys, xs, 0] = np.where(high, 0.75, 0.5)
    boxes[0, ..., 0] = np.arange(16)[None, :] / 16  # off_x = x / 16 so that cx names the cell
    boxes[0, ..., 1] = np.arange(16)[:, None] / 16  # off_y = y / 16
    (det,) = decode(heatmap, boxes, top_k=60)
    want = np.concatenate([np.flatnonzero(high), np.flatnonzero(~high)[:28]])
    # cx = (x + x / 16) / 16 = x * 17 / 256, same for y
    np.testing.assert_allclose(det.boxes[:, 0], xs[want] * 17 / 256)
    np.testing.assert_allclose(det.boxes[:, 1], ys[want] * 17 / 256)
    np.testing.assert_allclose(det.scores, [0.75] * 32 + [0.5] * 28)
