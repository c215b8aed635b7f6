"""COCO export, and raydet's COCO mAP against pycocotools on the exported files."""

import json

import numpy as np
import pytest

# a test dependency (pyproject's [test] extra): imported, not skipped, so a missing install fails loudly
from raydet.detector import coco
from raydet.detector import metrics as M


def test_ground_truth_layout():
    gt = coco.ground_truth(
        [
            {
                "file": "JPEGImages/a.jpg",
                "width": 200,
                "height": 100,
                "boxes": np.array([[10.5, 20, 30.5, 60]], np.float32),
                "labels": np.array([1], np.int32),
            },
            {"file": "b.jpg", "width": 50, "height": 40, "boxes": np.zeros((0, 4)), "labels": []},
        ],
        ["cat", "dog"],
    )
    assert gt["images"] == [
        {"id": 1, "file_name": "JPEGImages/a.jpg", "width": 200, "height": 100},
        {"id": 2, "file_name": "b.jpg", "width": 50, "height": 40},
    ]
    # xyxy (10.5, 20, 30.5, 60) -> xywh (10.5, 20, 20, 40), area 20 * 40 = 800; label 1 -> category 2
    assert gt["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [10.5, 20.0, 20.0, 40.0], "area": 800.0, "iscrowd": 0}
    ]
    assert [(c["id"], c["name"]) for c in gt["categories"]] == [(1, "cat"), (2, "dog")]
    assert coco.label_of(coco.category_id(1)) == 1


def test_detections_layout_and_explicit_image_ids():
    gt = coco.ground_truth(
        [{"id": 7, "file": "a.jpg", "width": 10, "height": 10, "boxes": [[0, 0, 5, 5]], "labels": [0]}], ["cat"]
    )
    assert gt["images"][0]["id"] == 7 and gt["annotations"][0]["image_id"] == 7
    dt = coco.detections(
        [{"image_id": 7, "box": np.array([1, 2, 4, 8], np.float32), "label": np.int64(0), "score": np.float32(0.5)}],
        ["cat"],
    )
    assert dt == [{"image_id": 7, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.5}]


def test_bad_values_name_the_image():
    with pytest.raises(ValueError, match=r"a\.jpg: box must be .* got \[30\.0, 0\.0, 10\.0, 5\.0\]"):
        coco.ground_truth(
            [{"file": "a.jpg", "width": 40, "height": 40, "boxes": [[30, 0, 10, 5]], "labels": [0]}], ["cat"]
        )
    with pytest.raises(ValueError, match=r"a\.jpg: label must be a class index in \[0, 1\), got 3"):
        coco.ground_truth(
            [{"file": "a.jpg", "width": 40, "height": 40, "boxes": [[0, 0, 1, 1]], "labels": [3]}], ["cat"]
        )
    with pytest.raises(ValueError, match="b.jpg: image id 2 used twice"):
        # an explicit id that collides with the next image's default id (position + 1 = 2)
        coco.ground_truth(
            [
                {"id": 2, "file": "a.jpg", "width": 1, "height": 1, "boxes": [], "labels": []},
                {"file": "b.jpg", "width": 1, "height": 1, "boxes": [], "labels": []},
            ],
            ["cat"],
        )
    with pytest.raises(ValueError, match=r"prediction #0 .*score must be finite"):
        coco.detections([{"image_id": 1, "box": [0, 0, 1, 1], "label": 0, "score": float("nan")}], ["cat"])


def test_write_json_unicode_path_numpy_values_and_no_nan(tmp_path):
    path = coco.write_json(tmp_path / "sub" / "résultats_图.json", {"n": np.int64(3), "a": np.arange(2)})
    assert json.loads(path.read_text(encoding="utf-8")) == {"n": 3, "a": [0, 1]}
    with pytest.raises(ValueError):
        coco.write_json(tmp_path / "nan.json", {"x": float("nan")})  # not standard JSON: refused
    assert not (tmp_path / "nan.json").exists()


def random_case(rng, n_images, n_classes, max_gt, max_det, score_decimals):
    """Seeded images (pixel sizes, GT boxes) and detections near the GT, with misses, wrong classes and
    far-away boxes. Rounded scores make ties, where the order pycocotools reads the files in decides."""
    images, dets = [], []
    for i in range(n_images):
        w, h = (int(v) for v in rng.integers(80, 500, 2))
        g = int(rng.integers(0, max_gt + 1))
        xy = rng.uniform(0, 0.6, (g, 2)) * [w, h]
        gb = np.concatenate([xy, xy + rng.uniform(0.05, 0.4, (g, 2)) * [w, h]], axis=1)
        gl = rng.integers(0, n_classes - 1, g)  # the last class never has ground truth
        images.append({"file": f"img_{i}.jpg", "width": w, "height": h, "boxes": gb, "labels": gl})
        d = int(rng.integers(0 if max_det > 1 else 1, max_det + 1))
        for _ in range(d):
            if g and rng.random() < 0.75:
                j = rng.integers(g)
                box = gb[j] + rng.normal(0, 0.08, 4) * np.tile(gb[j, 2:] - gb[j, :2], 2)  # IoU spread over .3-1
                label = int(gl[j]) if rng.random() < 0.85 else int(rng.integers(n_classes))
            else:
                p = rng.uniform(0, 0.6, 2) * [w, h]
                box = np.concatenate([p, p + rng.uniform(0.05, 0.3, 2) * [w, h]])
                label = int(rng.integers(n_classes))
            box = np.concatenate([np.minimum(box[:2], box[2:]), np.maximum(box[:2], box[2:])])
            dets.append(
                {
                    "image_id": coco.image_id(i),
                    "box": box,
                    "label": label,
                    "score": round(float(rng.uniform(0.01, 1)), score_decimals),
                }
            )
    return images, dets


def raydet_summary(images, dets, n_classes):
    """Per-image statistics merged in a shuffled order, as batches from an actor pool arrive."""
    stats = M.MatchStats.empty(n_classes)
    for i in np.random.default_rng(0).permutation(len(images)):
        img = images[i]
        mine = [d for d in dets if d["image_id"] == coco.image_id(i)]
        stats = stats + M.match_image(
            img["boxes"],
            img["labels"],
            np.array([d["box"] for d in mine]).reshape(-1, 4),
            np.array([d["label"] for d in mine], int),
            [d["score"] for d in mine],
            n_classes,
            image_id=coco.image_id(i),
        )
    return M.detection_summary(stats)


def pycocotools_stats(tmp_path, images, dets, classes):
    from test_metrics import pycocotools_eval

    return pycocotools_eval(tmp_path, images, dets, classes).stats


@pytest.mark.parametrize(
    "max_det, score_decimals",
    [(6, 1), (6, 6), (1, 2)],
    ids=["several-per-image-tied-scores", "several-per-image", "one-per-image"],
)
def test_coco_map_equals_pycocotools(tmp_path, max_det, score_decimals):
    rng = np.random.default_rng(max_det * 10 + score_decimals)
    classes = ["cat", "dog", "fox", "owl"]
    images, dets = random_case(rng, 50, len(classes), max_gt=4, max_det=max_det, score_decimals=score_decimals)
    ours = raydet_summary(images, dets, len(classes))
    ref = pycocotools_stats(tmp_path, images, dets, classes)
    assert 0.05 < ref[0] < 0.95 and 0.05 < ref[1] < 0.95  # neither trivial nor degenerate
    # the issue asks for 0.005; the computation is the same, so they agree to rounding
    assert ours["coco_map"] == pytest.approx(ref[0], abs=1e-9)
    assert ours["coco_map_50"] == pytest.approx(ref[1], abs=1e-9)


def test_coco_map_equals_pycocotools_past_100_detections(tmp_path):
    # one crowded image with 130 detections of one class: both keep only the best 100
    rng = np.random.default_rng(7)
    images, dets = random_case(rng, 5, 2, max_gt=3, max_det=3, score_decimals=3)
    gb = np.array([[10, 10, 60, 60], [100, 100, 150, 170]], float)
    images.append({"file": "crowded.jpg", "width": 300, "height": 300, "boxes": gb, "labels": np.array([0, 0])})
    for k in range(130):
        box = gb[k % 2] + rng.normal(0, 6, 4)
        dets.append(
            {
                "image_id": coco.image_id(5),
                "box": np.concatenate([box[:2], np.maximum(box[2:], box[:2] + 1)]),
                "label": 0,
                "score": round(float(rng.uniform(0, 1)), 3),
            }
        )
    ref = pycocotools_stats(tmp_path, images, dets, ["a", "b"])
    ours = raydet_summary(images, dets, 2)
    assert ours["coco_map"] == pytest.approx(ref[0], abs=1e-9)
    assert ours["coco_map_50"] == pytest.approx(ref[1], abs=1e-9)


def test_no_ground_truth_pycocotools_minus_one_is_our_nan(tmp_path):
    images = [{"file": "a.jpg", "width": 20, "height": 20, "boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)}]
    dets = [{"image_id": 1, "box": [0, 0, 5, 5], "label": 0, "score": 0.5}]
    ref = pycocotools_stats(tmp_path, images, dets, ["a"])
    assert ref[0] == -1 and ref[1] == -1
    assert np.isnan(raydet_summary(images, dets, 1)["coco_map"])
