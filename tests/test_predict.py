"""raydet.predict: drawn copies and predictions.json in original pixels; bad files reported, the rest processed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from raydet.config import ModelConfig, PredictConfig
from raydet.predict import collect_images, predict

SIZE = 32
CLASSES = ["cat", "dog"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A RUN whose float model answers the same for every image: class logits (0, ln 3) -> "dog" with softmax
    score 3 / (1 + 3) = 0.75, and box sigmoid(logit(b)) = b = (0.25, 0.25, 0.75, 0.75) normalized xyxy
    (zero kernels, the answers in the biases); plus its int8 file."""
    import tf_keras

    from raydet.model import build_model
    from raydet.quantize import convert

    run = tmp_path_factory.mktemp("predict") / "run"
    run.mkdir()
    tf_keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(num_classes=2, image_size=SIZE, width=8, depth=3, head_units=16))
    for name, bias in (("class_logits", [0.0, math.log(3.0)]), ("boxes", np.log(np.array([1, 1, 3, 3]) / [3, 3, 1, 1]))):
        layer = model.get_layer(name)
        layer.set_weights([np.zeros_like(layer.get_weights()[0]), np.asarray(bias, np.float32)])
    model.save(run / "model.keras")
    rng = np.random.default_rng(0)
    calibration = rng.integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8)
    (run / "model_int8.tflite").write_bytes(convert(model, "int8", calibration))
    (run / "config.json").write_text(json.dumps({"classes": CLASSES, "image_size": SIZE}))
    return run


def _inputs(root):
    """Two good images (80 x 40 PNG, 60 x 60 JPEG in a subfolder), an empty file, garbage bytes, a truncated JPEG."""
    folder = root / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(np.full((40, 80, 3), 128, np.uint8)).save(folder / "wide.png")
    Image.fromarray(np.full((60, 60, 3), 90, np.uint8)).save(folder / "sub" / "square.jpg", quality=90)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "garbage.png").write_bytes(b"not an image at all")
    good = (folder / "sub" / "square.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(good[: len(good) // 3])
    return folder


def test_collect_images_recurses_sorted_and_reports_missing(tmp_path):
    folder = _inputs(tmp_path)
    (folder / "notes.txt").write_text("not an image suffix, ignored in a folder")
    files, skipped = collect_images([str(folder), str(folder / "wide.png"), str(tmp_path / "nope")])
    assert [f.relative_to(folder).as_posix() for f in files] == [
        "cut.jpg", "empty.jpg", "garbage.png", "sub/square.jpg", "wide.png"]  # wide.png named twice: once
    assert skipped == [{"file": str(tmp_path / "nope"), "reason": "no such file or folder"}]


@pytest.mark.parametrize("model, tol", [("float", 1e-3), ("int8", 1.0)])
def test_predict_draws_good_images_and_reports_bad_ones(run_dir, tmp_path, model, tol):
    from raydet import draw

    folder = _inputs(tmp_path)
    out = tmp_path / "out"
    report = predict(PredictConfig(run=str(run_dir), paths=(str(folder),), out=str(out), model=model))

    # 1. bad files are reported with a reason naming what is wrong; the good ones are processed
    reasons = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"empty.jpg", "garbage.png", "cut.jpg"}
    assert "empty" in reasons["empty.jpg"] and "not a recognised image" in reasons["garbage.png"]
    assert "truncated" in reasons["cut.jpg"].lower()
    on_disk = json.loads((out / "predictions.json").read_text())
    assert on_disk == report
    by_name = {img["output"]: img for img in on_disk["images"]}
    assert set(by_name) == {"wide.png", "square.png"}

    # 2. boxes in original pixels: (0.25, 0.25, 0.75, 0.75) * (80, 40, 80, 40) = (20, 10, 60, 30);
    #    on 60 x 60: (15, 15, 45, 45); class "dog", score 0.75 (int8: within a quantization step or two)
    wide, square = by_name["wide.png"], by_name["square.png"]
    assert (wide["width"], wide["height"]) == (80, 40)
    (det,) = wide["detections"]
    assert det["class"] == "dog" and det["label"] == 1
    assert det["score"] == pytest.approx(0.75, abs=0.02 if model == "int8" else 1e-6)
    np.testing.assert_allclose(det["box"], [20, 10, 60, 30], atol=tol)
    np.testing.assert_allclose(square["detections"][0]["box"], [15, 15, 45, 45], atol=tol)

    # 3. the drawing: 80 x 40 is upscaled by ceil(384 / 40) = 10 to 800 x 400; the box's left edge runs along
    #    x = 20 * 10 = 200 from y = 100 to 300, in the prediction colour; the image's middle stays grey
    with Image.open(out / "wide.png") as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape == (400, 800, 3)
    x = int(round(det["box"][0] * 10))
    assert tuple(pixels[200, x]) == draw.PRED_COLOR
    assert tuple(pixels[200, 400]) == (128, 128, 128)


def test_score_threshold_drops_the_detection_but_keeps_the_image(run_dir, tmp_path):
    folder = _inputs(tmp_path)
    report = predict(PredictConfig(run=str(run_dir), paths=(str(folder / "wide.png"),), out=str(tmp_path / "o"),
                                   model="float", score_threshold=0.8))  # 0.75 < 0.8
    assert [img["detections"] for img in report["images"]] == [[]]
    assert (tmp_path / "o" / "wide.png").is_file()


def test_missing_model_names_the_existing_ones(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="this run has: float, int8"):
        predict(PredictConfig(run=str(run_dir), paths=(str(tmp_path),), out=str(tmp_path / "o"), model="dynamic"))
