import math

import numpy as np
import pytest

from raydet.detector.targets import build_targets, draw_gaussian, gaussian_radius


def test_gaussian_radius_by_hand():
    # h = w = 8, min_overlap 0.7; case 3 is the smallest:
    #   a3 = 4 * 0.7 = 2.8, b3 = -2 * 0.7 * 16 = -22.4, c3 = -0.3 * 64 = -19.2
    #   b3^2 - 4 a3 c3 = 501.76 + 215.04 = 716.8, sqrt = 26.77313; r3 = (-22.4 + 26.77313) / 2 = 2.18656
    #   (case 1: b1 = 16, c1 = 64 * 0.3 / 1.7 = 11.294, r1 = (16 + sqrt(256 - 45.18)) / 2 = 15.26;
    #    case 2: b2 = 32, c2 = 19.2, r2 = (32 + sqrt(1024 - 307.2)) / 2 = 29.39)
    assert gaussian_radius(8, 8) == pytest.approx(2.18656, abs=1e-5)
    # h = 4, w = 8: b3 = -2 * 0.7 * 12 = -16.8, c3 = -0.3 * 32 = -9.6, disc = 282.24 + 107.52 = 389.76,
    # sqrt = 19.74234, r3 = (19.74234 - 16.8) / 2 = 1.47117
    assert gaussian_radius(4, 8) == pytest.approx(1.47117, abs=1e-5)
    assert gaussian_radius(0, 0) == 0.0


# Gaussian of radius 1 (sigma 0.5): centre 1, one cell away exp(-2) = 0.1353353, diagonal exp(-4) = 0.0183156;
# the 3 x 3 window sums to 1 + 4 * 0.1353353 + 4 * 0.0183156 = 1.6146036, so the size weights are
# centre 0.6193470, one away 0.0838196, diagonal 0.0113437
W_CENTRE, W_SIDE, W_DIAG = 0.6193470, 0.0838196, 0.0113437


def test_one_box_centre_offsets_size_and_mask():
    # grid 16, box (0.1, 0.2, 0.5, 0.6): cx = 0.3 -> 4.8 cells -> ix 4, off_x 0.8;
    # cy = 0.4 -> 6.4 cells -> iy 6, off_y 0.4; w = h = 0.4 (6.4 cells, ceil 7: radius 1.913 -> r 1)
    heatmap, box_target = build_targets(np.array([[0.1, 0.2, 0.5, 0.6]]), np.array([2]), num_classes=3, grid=16)
    assert heatmap.shape == (16, 16, 3) and heatmap.dtype == np.float32
    assert box_target.shape == (16, 16, 6) and box_target.dtype == np.float32
    np.testing.assert_allclose(box_target[6, 4], [0.8, 0.4, 0.4, 0.4, 1.0, W_CENTRE], rtol=1e-5)
    assert box_target[..., 4].sum() == 1.0  # one mask cell
    # the size (and its weight) over the 3 x 3 Gaussian window, no offset or mask there
    np.testing.assert_allclose(box_target[6, 5], [0, 0, 0.4, 0.4, 0, W_SIDE], rtol=1e-5)
    np.testing.assert_allclose(box_target[7, 3], [0, 0, 0.4, 0.4, 0, W_DIAG], rtol=1e-5)
    np.testing.assert_allclose(box_target[..., 5].sum(), 1.0, rtol=1e-6)
    assert np.count_nonzero(box_target[..., 5]) == 9 and not box_target[:5].any() and not box_target[8:].any()
    assert heatmap[6, 4, 2] == 1.0
    assert not heatmap[..., :2].any()  # other classes empty


@pytest.mark.parametrize(
    "box, radius_cells",
    [
        # 8 x 8 cells on a 16 grid: radius 2.18656 (see above) -> r = 2, sigma = 5/6, 2 sigma^2 = 50/36
        ((0.25, 0.25, 0.75, 0.75), 2),
        # 4 x 4 cells: radius 1.09328 (half of the 8 x 8 one, the formula scales) -> r = 1, sigma = 0.5
        ((0.375, 0.375, 0.625, 0.625), 1),
    ],
)
def test_gaussian_values(box, radius_cells):
    heatmap, _ = build_targets(np.array([box]), np.array([0]), num_classes=1, grid=16)
    h = heatmap[..., 0]
    # centre 0.5 * 16 = 8 -> cell (8, 8)
    sigma = (2 * radius_cells + 1) / 6
    assert h[8, 8] == 1.0
    one_away = math.exp(-1 / (2 * sigma**2))  # r = 2: exp(-0.72) = 0.486752; r = 1: exp(-2) = 0.135335
    np.testing.assert_allclose([h[8, 9], h[8, 7], h[9, 8], h[7, 8]], one_away, rtol=1e-6)
    np.testing.assert_allclose(h[9, 9], math.exp(-2 / (2 * sigma**2)), rtol=1e-6)  # diagonal: d^2 = 2
    assert h[8, 8 + radius_cells + 1] == 0.0  # outside the (2r+1) window
    assert np.count_nonzero(h) == (2 * radius_cells + 1) ** 2


def test_gaussian_values_r2_literal():
    # same 8 x 8 box, written out: one cell away exp(-0.72) = 0.4867523, two cells exp(-2.88) = 0.0561348
    heatmap, _ = build_targets(np.array([[0.25, 0.25, 0.75, 0.75]]), np.array([0]), num_classes=1, grid=16)
    np.testing.assert_allclose(heatmap[8, 9:12, 0], [0.4867523, 0.0561348, 0.0], rtol=1e-6)


def test_two_classes_in_separate_channels():
    # grid 8: A (0, 0, .25, .25) class 0 -> centre 0.125 * 8 = 1 -> cell (1, 1), off 0, w = h = 0.25;
    # B (.5, .5, 1, 1) class 1 -> centre 0.75 * 8 = 6 -> cell (6, 6), off 0, w = h = 0.5
    boxes = np.array([[0.0, 0.0, 0.25, 0.25], [0.5, 0.5, 1.0, 1.0]])
    heatmap, box_target = build_targets(boxes, np.array([0, 1]), num_classes=2, grid=8)
    assert heatmap[1, 1, 0] == 1.0 and heatmap[1, 1, 1] == 0.0
    assert heatmap[6, 6, 1] == 1.0 and heatmap[6, 6, 0] == 0.0
    # both radius 1 (2 x 2 and 4 x 4 cells: 0.547 and 1.093, floored at 1)
    np.testing.assert_allclose(box_target[1, 1], [0, 0, 0.25, 0.25, 1, W_CENTRE], rtol=1e-5)
    np.testing.assert_allclose(box_target[6, 6], [0, 0, 0.5, 0.5, 1, W_CENTRE], rtol=1e-5)
    np.testing.assert_allclose(box_target[0, 2], [0, 0, 0.25, 0.25, 0, W_DIAG], rtol=1e-5)
    np.testing.assert_allclose(box_target[7, 6], [0, 0, 0.5, 0.5, 0, W_SIDE], rtol=1e-5)
    assert box_target[..., 4].sum() == 2.0
    np.testing.assert_allclose(box_target[..., 5].sum(), 2.0, rtol=1e-6)  # one per object


def test_shared_centre_smaller_box_wins_heatmap_is_max():
    # grid 10, both centred at 0.5 -> cell (5, 5), off 0. Given small first: objects go largest first anyway.
    # big: 6 x 6 cells, radius 1.63992 -> r 1, sigma 0.5 -> one cell away exp(-2) = 0.135335
    # small: 1 x 1 cell, radius 0.27332 -> floored at 1: the same 3 x 3 window, which it takes over
    boxes = np.array([[0.45, 0.45, 0.55, 0.55], [0.2, 0.2, 0.8, 0.8]])
    heatmap, box_target = build_targets(boxes, np.array([0, 0]), num_classes=1, grid=10)
    np.testing.assert_allclose(box_target[5, 5], [0, 0, 0.1, 0.1, 1, W_CENTRE], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(box_target[4:7, 4:7, 2:4], 0.1, rtol=1e-6)  # the small box's size everywhere
    assert box_target[..., 4].sum() == 1.0
    assert heatmap[5, 5, 0] == 1.0
    np.testing.assert_allclose(heatmap[5, 6, 0], math.exp(-2), rtol=1e-6)  # big's tail is not overwritten


def test_a_smaller_objects_gaussian_never_changes_a_bigger_ones_centre():
    # grid 10. big: 6 x 6 cells centred on cell (5, 5), r 1 (as above). small: 0.08 x 0.08 of the side centred at
    # (0.65, 0.55) -> cell (row 5, col 6), offset (0.5, 0.5), r floored at 1: its window, rows 4-6 x cols 5-7,
    # covers the big centre (one cell to its left). The big centre keeps the big box (decode reads it there);
    # the other shared cells take the small one's size and weight.
    boxes = np.array([[0.2, 0.2, 0.8, 0.8], [0.61, 0.51, 0.69, 0.59]])
    _, box_target = build_targets(boxes, np.array([0, 1]), num_classes=2, grid=10)
    np.testing.assert_allclose(box_target[5, 5], [0, 0, 0.6, 0.6, 1, W_CENTRE], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(box_target[5, 6], [0.5, 0.5, 0.08, 0.08, 1, W_CENTRE], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(box_target[4, 5], [0, 0, 0.08, 0.08, 0, W_DIAG], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(box_target[5, 4], [0, 0, 0.6, 0.6, 0, W_SIDE], rtol=1e-5, atol=1e-6)
    assert box_target[..., 4].sum() == 2.0
    # big keeps its centre and its left column: W_CENTRE + W_SIDE + 2 W_DIAG; small loses one side cell
    big = W_CENTRE + W_SIDE + 2 * W_DIAG
    np.testing.assert_allclose(box_target[..., 5].sum(), big + (1 - W_SIDE), rtol=1e-5)


def test_overlapping_gaussians_take_the_max_not_the_sum():
    # grid 16, two 8 x 8-cell boxes (r 2): A centred at cell (8, 8), B with x from 7/16 to 15/16 -> centre 11
    # cell (9, 8): A one away exp(-0.72) = 0.486752, B two away exp(-2.88) = 0.056135 -> max 0.486752
    # cell (10, 8): A two away, B one away -> 0.486752 (the sum would be 0.542887)
    boxes = np.array([[0.25, 0.25, 0.75, 0.75], [7 / 16, 0.25, 15 / 16, 0.75]])
    heatmap, _ = build_targets(boxes, np.array([0, 0]), num_classes=1, grid=16)
    np.testing.assert_allclose(heatmap[8, 8:12, 0], [1.0, 0.4867523, 0.4867523, 1.0], rtol=1e-6)


def test_box_touching_the_border():
    # grid 10, box (.99, .99, 1, 1): centre 0.995 * 10 = 9.95 -> cell 9 = grid - 1, off 0.95, w = h = 0.01
    # (the min(., grid - 1) clip only matters where cx * grid rounds up to grid)
    # Its 3 x 3 window is cut to rows and columns 8..9: 1 + 2 * 0.1353353 + 0.0183156 = 1.2889862, so the size
    # weights are 0.7758038 at the centre, 0.1049932 one away and 0.0142093 on the diagonal
    _, box_target = build_targets(np.array([[0.99, 0.99, 1.0, 1.0]]), np.array([0]), num_classes=1, grid=10)
    np.testing.assert_allclose(box_target[9, 9], [0.95, 0.95, 0.01, 0.01, 1, 0.7758038], rtol=1e-5)
    np.testing.assert_allclose(box_target[8:, 8:, 5], [[0.0142093, 0.1049932], [0.1049932, 0.7758038]], rtol=1e-5)
    assert np.count_nonzero(box_target[..., 5]) == 4


def test_draw_gaussian_clipped_at_the_borders():
    # 4 x 4 map, r 2 (sigma 5/6, 2 sigma^2 = 50/36): at the corner (3, 3) the window 1..5 is cut to 1..3;
    # (1, 1) is d^2 = 8 away -> exp(-8 * 36 / 50) = exp(-5.76) = 0.0031511; row/column 0 are 3 away -> 0
    h = np.zeros((4, 4), dtype=np.float32)
    assert draw_gaussian(h, 3, 3, 2) is h
    assert h[3, 3] == 1.0
    np.testing.assert_allclose([h[3, 2], h[1, 1]], [0.4867523, 0.0031511], rtol=1e-5)
    assert not h[0].any() and not h[:, 0].any()
    # at (0, 0) nothing wraps around to the far side
    h = np.zeros((4, 4), dtype=np.float32)
    draw_gaussian(h, 0, 0, 2)
    np.testing.assert_allclose(h[0, :], [1.0, 0.4867523, 0.0561348, 0.0], rtol=1e-6)
    assert not h[3].any() and not h[:, 3].any()


def test_draw_gaussian_keeps_the_max():
    h = np.full((3, 3), 0.5, dtype=np.float32)
    draw_gaussian(h, 1, 1, 1)  # r 1: one away exp(-2) = 0.135 < 0.5 stays 0.5; centre 1.0
    np.testing.assert_allclose(h, [[0.5, 0.5, 0.5], [0.5, 1.0, 0.5], [0.5, 0.5, 0.5]])


def test_zero_area_boxes_are_skipped():
    boxes = np.array([[0.5, 0.5, 0.5, 0.8], [0.2, 0.3, 0.6, 0.3]])  # zero width, zero height
    heatmap, box_target = build_targets(boxes, np.array([0, 1]), num_classes=2, grid=8)
    assert not heatmap.any() and not box_target.any()


def test_empty_input_gives_zeros():
    heatmap, box_target = build_targets(np.zeros((0, 4)), np.zeros(0, dtype=int), num_classes=3, grid=8)
    assert heatmap.shape == (8, 8, 3) and box_target.shape == (8, 8, 6)
    assert not heatmap.any() and not box_target.any()


@pytest.mark.parametrize(
    "boxes, labels, match",
    [
        (np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([3]), r"\[0, 3\), got \[3\]"),
        (np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([-1]), r"got \[-1\]"),
        (np.array([0.1, 0.1, 0.5, 0.5]), np.array([0]), r"\(4,\)"),
        (np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([0, 1]), r"\(2,\)"),
        (np.array([[0.1, 0.1, 1.5, 0.5]]), np.array([0]), "1.5"),
        (np.array([[0.6, 0.1, 0.5, 0.5]]), np.array([0]), "0.6"),
        (np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([0.5]), "0.5"),
    ],
)
def test_bad_inputs_are_named(boxes, labels, match):
    with pytest.raises(ValueError, match=match):
        build_targets(boxes, labels, num_classes=3, grid=8)


def test_bad_grid_named():
    with pytest.raises(ValueError, match="grid .* got 0"):
        build_targets(np.zeros((0, 4)), np.zeros(0), num_classes=3, grid=0)


def test_small_box_gets_the_radius_floor():
    # a 12 px platelet in a 160 px image, grid 40 (stride 4): 12 / 160 * 40 = 3 x 3 cells -> gaussian_radius(3, 3)
    # = 0.8199 -> int 0; the floor MIN_RADIUS = 1 gives sigma 0.5: one cell away exp(-1 / (2 * 0.25)) = exp(-2)
    x0 = 74 / 160
    heatmap, _ = build_targets(
        np.array([[x0, x0, x0 + 12 / 160, x0 + 12 / 160]]), np.array([0]), num_classes=1, grid=40
    )
    # centre (74 + 6) / 160 * 40 = 20 -> cell (20, 20)
    assert heatmap[20, 20, 0] == 1.0
    np.testing.assert_allclose(heatmap[20, [19, 21], 0], math.exp(-2), rtol=1e-6)
    np.testing.assert_allclose(heatmap[[19, 21], 20, 0], math.exp(-2), rtol=1e-6)
    assert np.count_nonzero(heatmap) == 9  # the 3 x 3 window of r = 1


def test_radius_takes_the_ceiling_of_the_box_in_cells():
    # 7.2 x 7.2 cells on a 16 grid: CenterNet's ceil -> gaussian_radius(8, 8) = 2.18656 -> r 2 (5 x 5 window);
    # without the ceil, gaussian_radius(7.2, 7.2) = 1.9679 -> r 1 (3 x 3)
    side = 7.2 / 16
    heatmap, _ = build_targets(
        np.array([[0.5 - side / 2, 0.5 - side / 2, 0.5 + side / 2, 0.5 + side / 2]]),
        np.array([0]),
        num_classes=1,
        grid=16,
    )
    assert np.count_nonzero(heatmap) == 25
