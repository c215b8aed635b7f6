"""raydet.evaluate: report keys and ranges, every image counted once (also when an actor is killed), COCO files
that pycocotools loads and agrees with, drawings, refusals before any work."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from raydet.config import EvaluateConfig, ModelConfig
from raydet.evaluate import REPORT_KEYS, decode_predictions, evaluate, require_models

CLASSES = ["red", "blue"]
SIZE = 32  # PREP image side
N_TEST = 40


def _scene(rng, k: int, width: int, height: int):
    """A noisy width x height image with one filled rectangle of class k; returns (rgb, box pixel xyxy).
    The rectangles are large (each side within a sixth of the border), so a briefly fit model reaches IoU > 0.5."""
    img = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    x0, y0 = int(rng.integers(0, width // 6)), int(rng.integers(0, height // 6))
    x1, y1 = width - int(rng.integers(0, width // 6)), height - int(rng.integers(0, height // 6))
    img[y0:y1, x0:x1] = (220, 30, 30) if k == 0 else (30, 30, 220)
    return img, np.array([x0, y0, x1, y1], np.float32)


def make_prep(root, n: int = N_TEST, seed: int = 0):
    """A dataset folder of PNGs (64 x 48, not square, so pixel conversion is exercised) and a PREP folder
    (docs/FORMATS.md: test split Parquet + manifest) holding them at SIZE px."""
    import ray
    from PIL import Image

    rng = np.random.default_rng(seed)
    data, prep = root / "data", root / "prep"
    data.mkdir(parents=True)
    rows = []
    for i in range(n):
        width, height = 64, 48
        k = i % 2
        img, box = _scene(rng, k, width, height)
        Image.fromarray(img).save(data / f"img_{i:03d}.png")
        boxes = np.zeros((2, 4), np.float32)  # K = 2: one real object + one padding row
        boxes[0] = box / [width, height, width, height]
        rows.append({"file": f"img_{i:03d}.png",
                     "image": np.asarray(Image.fromarray(img).resize((SIZE, SIZE), Image.BILINEAR)),
                     "boxes": boxes, "labels": np.array([k, -1], np.int32), "num_objects": np.int32(1),
                     "width": np.int32(width), "height": np.int32(height)})
    ray.data.from_items(rows).repartition(2).write_parquet(str(prep / "test"))
    manifest = {"classes": CLASSES, "image_size": SIZE, "max_objects": 2, "splits": {"train": 0, "test": n},
                "source": str(data)}
    (prep / "manifest.json").write_text(json.dumps(manifest))
    return data, prep, rows


def make_run(root, rows):
    """A RUN folder: a small build_model() float model fit briefly on the rows themselves (so AP is not 0 and the
    comparison with pycocotools means something) and its full-integer int8 TFLite file."""
    import tf_keras

    from raydet.model import build_model, compile_model
    from raydet.quantize import convert

    run = root / "run"
    run.mkdir()
    tf_keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(num_classes=len(CLASSES), image_size=SIZE, width=8, depth=3, head_units=32,
                                    dropout=0.0))
    compile_model(model, tf_keras.optimizers.Adam(3e-3), box_weight=5.0, giou_weight=1.0)
    images = np.stack([r["image"] for r in rows]).astype(np.float32)
    targets = {"class_logits": np.array([r["labels"][0] for r in rows]),
               "boxes": np.stack([r["boxes"][0] for r in rows])}
    model.fit(images, targets, epochs=8, batch_size=8, verbose=0)  # enough for the class head
    # The box head needs far longer from scratch; make it predict the mean box (zero kernel, sigmoid^-1 bias):
    # on these large rectangles that box overlaps each one by IoU ~0.6-0.9, so AP differs across thresholds.
    head = model.get_layer("boxes")
    mean = targets["boxes"].mean(axis=0)
    head.set_weights([np.zeros_like(head.get_weights()[0]), np.log(mean / (1.0 - mean))])
    model.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"classes": CLASSES, "image_size": SIZE}))
    (run / "model_int8.tflite").write_bytes(convert(model, "int8", np.stack([r["image"] for r in rows])))
    return run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import ray

    from raydet.runtime import runtime_env

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=runtime_env())
    root = tmp_path_factory.mktemp("evaluate")
    data, prep, rows = make_prep(root)
    run = make_run(root, rows)
    return {"root": root, "data": data, "prep": prep, "run": run, "rows": rows}


def test_decode_predictions_by_hand():
    # logits (0, ln 3): softmax = (1/4, 3/4) -> class 1, score 0.75
    # box (0.1, 0.2, 0.5, 0.6) on 200 x 100 px -> (20, 20, 100, 60); an inverted box (0.5, 0.6, 0.1, 0.2) is
    # reordered to the same box; 1.02 (a quantization step past the sigmoid's range) is clipped to 200
    logits = np.array([[0.0, math.log(3.0)], [2.0, 0.0], [0.0, 0.0]])
    boxes = np.array([[0.1, 0.2, 0.5, 0.6], [0.5, 0.6, 0.1, 0.2], [0.0, 0.0, 1.02, 1.0]])
    labels, scores, px = decode_predictions(logits, boxes, np.array([200.0] * 3), np.array([100.0] * 3))
    assert labels.tolist() == [1, 0, 0]  # a tie goes to the first class (argmax)
    np.testing.assert_allclose(scores, [0.75, math.e**2 / (math.e**2 + 1), 0.5])
    np.testing.assert_allclose(px, [[20, 20, 100, 60], [20, 20, 100, 60], [0, 0, 200, 100]])


def test_missing_model_names_existing_ones(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"x")
    (tmp_path / "model_int8.tflite").write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as err:
        require_models(tmp_path, ("float", "dynamic", "qat"))
    msg = str(err.value)
    assert "dynamic, qat not found" in msg and "this run has: float, int8" in msg
    assert require_models(tmp_path, ("int8",)) == {"int8": tmp_path / "model_int8.tflite"}


def test_evaluate_refuses_before_ray_starts(tmp_path):
    import ray

    started = ray.is_initialized()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.keras").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="this run has: float"):
        evaluate(EvaluateConfig(run=str(tmp_path / "run"), data=str(tmp_path / "prep"), models=("float", "int8")))
    with pytest.raises(FileNotFoundError, match="manifest"):
        evaluate(EvaluateConfig(run=str(tmp_path / "run"), data=str(tmp_path / "prep"), models=("float",)))
    assert ray.is_initialized() == started  # refused before any Ray start


def test_evaluate_report_coco_and_drawings(setup):
    from PIL import Image
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_dir = setup["root"] / "coco"
    cfg = EvaluateConfig(run=str(setup["run"]), data=str(setup["prep"]), models=("float", "int8"), actors=2,
                         batch_size=8, coco_out=str(coco_dir), draw=5)
    report = evaluate(cfg)

    # 1. report.json: every key, sane ranges, each test image exactly once
    on_disk = json.loads((setup["run"] / "eval" / "report.json").read_text())
    assert set(on_disk["models"]) == {"float", "int8"}
    for name, m in on_disk["models"].items():
        assert set(m) == set(REPORT_KEYS)
        assert m["images"] == N_TEST
        for key in ("class_accuracy", "mean_iou", "voc_map_50", "coco_map", "coco_map_50"):
            assert 0.0 <= m[key] <= 1.0, (name, key, m[key])
        assert m["coco_map"] <= m["coco_map_50"] + 1e-9
        assert m["images_per_s"] > 0 and 0 < m["latency_ms_p50"] <= m["latency_ms_p95"]
        assert m["size_bytes"] > 0
    assert on_disk["models"]["int8"]["size_bytes"] < on_disk["models"]["float"]["size_bytes"]
    assert report["models"]["float"]["images"] == N_TEST
    assert report["actor_processes"] == {"float": 2, "int8": 2}  # both actors got batches
    md = (setup["run"] / "eval" / "report.md").read_text()
    assert "| float |" in md and "| int8 |" in md

    # 2. COCO files load, file names are the Parquet `file` column, and pycocotools agrees with our mAP
    gt = COCO(str(coco_dir / "ground_truth.json"))
    assert sorted(img["file_name"] for img in gt.dataset["images"]) == [r["file"] for r in setup["rows"]]
    for name in ("float", "int8"):
        dets = json.loads((coco_dir / f"detections_{name}.json").read_text())
        assert len(dets) == N_TEST
        x, y, w, h = dets[0]["bbox"]
        assert w >= 0 and h >= 0 and x + w <= 64 + 1e-6 and y + h <= 48 + 1e-6  # original pixels, not normalized
        ev = COCOeval(gt, gt.loadRes(str(coco_dir / f"detections_{name}.json")), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        ours = report["models"][name]
        assert ours["coco_map_50"] > 0.1  # the fit model finds boxes, so the agreement below is not 0 == 0
        # pycocotools prints -1 where a metric is undefined; ours then is nan, never the case here (2 classes)
        assert abs(ev.stats[0] - ours["coco_map"]) <= 0.005
        assert abs(ev.stats[1] - ours["coco_map_50"]) <= 0.005

    # 3. drawings: 5 per model, drawn at least at draw.MIN_SIDE, and the contact sheets open
    images = setup["run"] / "eval" / "images"
    for name in ("float", "int8"):
        drawn = sorted(images.glob(f"{name}_*.png"))
        assert len(drawn) == 5
        with Image.open(drawn[0]) as im:
            assert im.size[0] / im.size[1] == pytest.approx(64 / 48)  # original aspect, not the square PREP
        with Image.open(images / f"contact_sheet_{name}.png") as sheet:
            sheet.load()
            assert sheet.size == (4 * 256, 2 * 256)  # 5 tiles of 256 px in 4 columns -> 2 rows


def test_killed_actor_is_restarted_and_no_batch_is_lost(setup, monkeypatch):
    marker = setup["root"] / "crashed"
    monkeypatch.setenv("RAYDET_TEST_CRASH_ONCE", str(marker))
    cfg = EvaluateConfig(run=str(setup["run"]), data=str(setup["prep"]), models=("int8",), actors=2,
                         batch_size=8, draw=0)
    report = evaluate(cfg)
    assert marker.exists()  # an actor really died (it wrote its pid, then os._exit(1))
    assert int(marker.read_text()) > 0
    assert report["models"]["int8"]["images"] == N_TEST  # 5 batches of 8: none lost, none counted twice
    assert report["actor_processes"]["int8"] >= 2


def test_too_many_actors_for_the_cluster(setup):
    cfg = EvaluateConfig(run=str(setup["run"]), data=str(setup["prep"]), models=("int8",), actors=2, threads=2,
                         draw=0)
    with pytest.raises(ValueError, match="needs 4 CPUs"):
        evaluate(cfg)


def test_batch_plan_sizes_calls_by_pixels_and_keeps_every_actor_busy():
    from raydet.evaluate import batch_plan

    # 64 px: 24 MiB / (64 * 64 * 3) = 2048 -> capped at 512; 24,000 images -> ceil(24000 / 512) = 47 calls
    assert batch_plan(24_000, 64, 2) == (47, 511)  # 47 blocks of ceil(24000 / 47) = 511 rows
    # 224 px: 25,165,824 // 150,528 = 167 per call; 600 images -> 4 calls of 150
    assert batch_plan(600, 224, 2) == (4, 150)
    # 600 test images at 64 px would be 2 calls of 512: raised to 2 per actor so neither of 2 actors idles
    assert batch_plan(600, 64, 2) == (4, 150)
    # an explicit --batch-size wins; fewer rows than 2 per actor -> one row per block
    assert batch_plan(100, 64, 1, batch_size=30) == (4, 25)
    assert batch_plan(3, 64, 2) == (3, 1)
    # huge images: never fewer than 16 per call
    assert batch_plan(1000, 2048, 1) == (63, 16)
