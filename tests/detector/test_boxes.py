import numpy as np
import pytest

from raydet.detector import boxes as B


def test_area_and_inverted_box():
    # (10,20)-(30,60): 20 x 40 = 800; an inverted box has no area
    np.testing.assert_allclose(B.area(np.array([[10, 20, 30, 60], [30, 0, 10, 5]])), [800.0, 0.0])


def test_xyxy_xywh_round_trip():
    xyxy = np.array([[10.0, 20.0, 30.0, 60.0]])
    np.testing.assert_allclose(B.xyxy_to_xywh(xyxy), [[10, 20, 20, 40]])
    np.testing.assert_allclose(B.xywh_to_xyxy(B.xyxy_to_xywh(xyxy)), xyxy)


def test_normalize_denormalize():
    # 200 x 100 image: x / 200, y / 100
    norm = B.normalize_xyxy(np.array([50, 25, 150, 75]), width=200, height=100)
    np.testing.assert_allclose(norm, [0.25, 0.25, 0.75, 0.75])
    np.testing.assert_allclose(B.denormalize_xyxy(norm, 200, 100), [50, 25, 150, 75])


def test_relative_conversion_needs_a_size():
    with pytest.raises(ValueError, match="0 x 100"):
        B.normalize_xyxy(np.array([0, 0, 1, 1]), width=0, height=100)


def test_wrong_shape_names_it():
    with pytest.raises(ValueError, match=r"\(3,\)"):
        B.area(np.array([1, 2, 3]))


def test_clip():
    np.testing.assert_allclose(B.clip(np.array([-5, 10, 120, 90]), 100, 80), [0, 10, 100, 80])


def test_iou_matrix_by_hand():
    a = np.array([[0, 0, 100, 100]])
    b = np.array([[1, 1, 101, 101], [50, 0, 150, 100], [200, 200, 300, 300]])
    # iou = 9801 / (2*10000 - 9801) = 0.961; 5000 / 15000 = 0.333; disjoint = 0
    np.testing.assert_allclose(B.iou_matrix(a, b), [[9801 / 10199, 1 / 3, 0.0]], rtol=1e-9)


def test_iou_matrix_of_zero_area_boxes_is_zero():
    a = np.array([[0, 0, 10, 10], [5, 5, 5, 5]])
    # identical boxes -> 1; two zero-area boxes -> union 0 -> 0 (not nan)
    np.testing.assert_allclose(B.iou_matrix(a, a), [[1.0, 0.0], [0.0, 0.0]])


def test_iou_matrix_empty():
    assert B.iou_matrix(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)
