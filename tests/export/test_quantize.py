"""raydet.export.quantize (PTQ to .tflite) and raydet.export.tflite (running any .tflite through LiteRT)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prep_helpers import make_prep
from quant_helpers import ap50, synthetic, train_small_model

from raydet.config import QuantizeConfig


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A RUN folder with a small trained float model, its PREP (train images for calibration) and test data."""
    import ray

    from raydet.cluster.runtime import runtime_env

    if not ray.is_initialized():  # the same local 2-CPU Ray as the ray_local fixture
        ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=runtime_env())
    root = tmp_path_factory.mktemp("quant")
    model = train_small_model(synthetic(800, seed=0))
    prep, run = make_prep(root / "prep", n_train=100, n_test=8, classes=3), root / "run"
    run.mkdir()
    model.save(run / "model.keras")
    (run / "config.json").write_text(
        json.dumps({"classes": ["red", "green", "blue"], "image_size": 32, "prep": str(prep)})
    )
    test = synthetic(200, seed=1)
    return {"run": run, "prep": prep, "model": model, "test": test}


@pytest.fixture(scope="module")
def quantized(trained_run):
    from raydet.export.quantize import quantize

    return quantize(QuantizeConfig(run=str(trained_run["run"]), calibration_images=64))


def test_quantize_and_dequantize_by_hand():
    from raydet.export.tflite import _dequantize, _quantize

    # round(x / 0.5 + 10): 0 -> 10, 100 -> 210, 200 -> 410 clipped to 255 (uint8)
    assert _quantize(np.array([0.0, 100.0, 200.0]), np.uint8, 0.5, 10).tolist() == [10, 210, 255]
    # int8: round(-300 / 2 + 0) = -150 clipped to -128; round(3 / 2) = round(1.5) = 2 (half to even)
    assert _quantize(np.array([-300.0, 3.0]), np.int8, 2.0, 0).tolist() == [-128, 2]
    # (q - zp) * scale: (12 - 10) * 0.25 = 0.5
    assert _dequantize(np.array([12], np.int8), 0.25, 10).tolist() == [0.5]


def test_missing_model_names_what_the_run_holds(tmp_path, capsys):
    from raydet.cli import main
    from raydet.export.quantize import quantize

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "history.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match=r"model\.keras.*holds config\.json, history\.jsonl"):
        quantize(QuantizeConfig(run=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        quantize(QuantizeConfig(run=str(tmp_path / "nope")))
    assert main(["quantize", str(tmp_path), "--mode", "int8"]) == 2
    assert "model.keras" in capsys.readouterr().err


def test_bad_mode_is_refused_before_any_work():
    with pytest.raises(ValueError, match="int4"):
        QuantizeConfig(run="x", modes=("int4",))


def test_every_mode_converts_and_runs_through_litert(trained_run, quantized, capsys):
    from raydet.export.run import Run
    from raydet.export.tflite import TFLiteModel

    run = trained_run["run"]
    assert set(quantized) == {"dynamic", "float16", "int8"}
    images = trained_run["test"]["image"][:16]
    for mode in ("float32", "dynamic", "float16", "int8"):
        model = TFLiteModel(str(Run(run).model(mode)))
        out = model.predict(images)
        assert out["heatmap"].shape == (16, 8, 8, 3) and out["boxes"].shape == (16, 8, 8, 4), mode
        assert out["heatmap"].dtype == np.float32 and out["boxes"].dtype == np.float32, mode
        assert model.input_dtype == (np.uint8 if mode == "int8" else np.float32), mode
    sizes = {mode: Run(run).model(mode).stat().st_size for mode in ("float32", "dynamic", "float16", "int8")}
    # int8 and dynamic store 1 byte per weight instead of 4; float16 2 instead of 4 (plus graph overhead)
    assert sizes["int8"] < 0.5 * sizes["float32"], sizes
    assert sizes["dynamic"] < 0.5 * sizes["float32"], sizes
    assert sizes["float16"] < 0.7 * sizes["float32"], sizes


def test_size_table_lists_every_file(trained_run, quantized):
    from raydet.export.quantize import format_size_table, size_rows

    rows = size_rows(trained_run["run"], trained_run["model"])
    assert [r["name"] for r in rows] == ["float (.keras)", "float32", "dynamic", "float16", "int8"]
    assert rows[1]["vs_float32"] == 1.0
    weights = trained_run["model"].count_params() * 4
    assert rows[-1]["vs_weights"] == pytest.approx(rows[-1]["bytes"] / weights)
    assert "| int8 | model_int8.tflite |" in format_size_table(rows, weights)


def test_float_tflite_matches_keras_and_quantized_models_stay_close(trained_run, quantized):
    from raydet.export.run import Run
    from raydet.export.tflite import TFLiteModel

    test = trained_run["test"]
    keras_out = trained_run["model"].predict(test["image"].astype(np.float32), verbose=0)
    outs = {
        mode: TFLiteModel(str(Run(trained_run["run"]).model(mode)), batch_size=32).predict(test["image"])
        for mode in ("float32", "dynamic", "float16", "int8")
    }
    for name in ("heatmap", "boxes"):
        np.testing.assert_allclose(outs["float32"][name], keras_out[name], atol=1e-3, rtol=1e-3)
    float_ap = ap50(keras_out, test)
    assert float_ap > 0.8, float_ap  # the small model did learn, so the comparison means something
    for mode in ("dynamic", "float16", "int8"):
        assert ap50(outs[mode], test) >= float_ap - 0.03, mode
        assert_same_detections(keras_out, outs[mode], mode)


def assert_same_detections(keras_out: dict, tflite_out: dict, mode: str, box_tol: float = 0.03) -> None:
    """The decoded detections above 0.3 agree: the same classes at the same places, each box within ``box_tol``
    of the image side (one int8 step of a sigmoid is 1/256 = 0.004), on at least 95% of the images."""
    from raydet.detector.decode import decode

    same = 0
    pairs = list(
        zip(
            decode(keras_out["heatmap"], keras_out["boxes"], score_threshold=0.3),
            decode(tflite_out["heatmap"], tflite_out["boxes"], score_threshold=0.3),
            strict=True,
        )
    )
    for k, q in pairs:
        if len(k) != len(q):
            continue
        order_k, order_q = np.lexsort(k.boxes.T[::-1]), np.lexsort(q.boxes.T[::-1])  # by x0, then y0, ...
        same += bool(
            np.array_equal(k.labels[order_k], q.labels[order_q])
            and np.abs(k.boxes[order_k] - q.boxes[order_q]).max(initial=0.0) <= box_tol
        )
    assert same >= 0.95 * len(pairs), (mode, same, len(pairs))


def test_the_trained_model_finds_several_objects_of_different_classes(trained_run):
    """An image with a red and a green rectangle (and one with three objects): every one found, none extra."""
    from raydet.detector.boxes import iou_matrix
    from raydet.detector.decode import decode

    test = trained_run["test"]
    found = 0
    for i in np.flatnonzero(test["num_objects"] >= 2)[:20]:
        n = test["num_objects"][i]
        out = trained_run["model"].predict(test["image"][i : i + 1].astype(np.float32), verbose=0)
        (det,) = decode(out["heatmap"], out["boxes"], score_threshold=0.3)
        ious = iou_matrix(det.boxes, test["boxes"][i, :n])
        ok = (
            len(det) == n
            and (ious.max(axis=0) >= 0.5).all()
            and np.array_equal(det.labels[ious.argmax(axis=0)], test["labels"][i, :n])
        )
        found += bool(ok)
    assert len(set(test["labels"][test["num_objects"] >= 2, 0])) > 1  # images of several classes were tried
    assert found >= 16, found  # at least 16 of the 20 crowded images exactly right


def test_int8_takes_raw_uint8_pixels(trained_run, quantized):
    from raydet.export.quantize import calibration_images
    from raydet.export.run import Run
    from raydet.export.tflite import TFLiteModel

    model = TFLiteModel(str(Run(trained_run["run"]).model("int8")))
    scale, zero_point = model._input["quantization"]
    # the input range is the calibration images' 0..max: one uint8 step per max / 255 pixel values
    brightest = int(calibration_images(trained_run["prep"], 64).max())
    assert model.input_dtype == np.uint8 and zero_point == 0, (scale, zero_point)
    assert scale == pytest.approx(brightest / 255, rel=0.01), (scale, brightest)
    images = trained_run["test"]["image"][:4]
    # uint8 and the same pixels as float give the same answer
    np.testing.assert_array_equal(model.predict(images)["boxes"], model.predict(images.astype(np.float32))["boxes"])


def test_tflite_model_batches_and_refuses_wrong_shapes(trained_run, quantized):
    from raydet.export.run import Run
    from raydet.export.tflite import TFLiteModel

    path = str(Run(trained_run["run"]).model("int8"))
    images = trained_run["test"]["image"][:5]
    one, three = TFLiteModel(path, batch_size=1), TFLiteModel(path, batch_size=3)  # 3 -> chunks of 3 and 2
    for name in ("heatmap", "boxes"):
        np.testing.assert_allclose(one.predict(images)[name], three.predict(images)[name], atol=1e-6)
    empty = one.predict(images[:0])
    assert empty["heatmap"].shape == (0, 8, 8, 3) and empty["boxes"].shape == (0, 8, 8, 4)
    with pytest.raises(ValueError, match=r"\(N, 32, 32, 3\).*\(2, 16, 16, 3\)"):
        one.predict(np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="nope.tflite"):
        TFLiteModel(str(trained_run["run"] / "nope.tflite"))
    with pytest.raises(ValueError, match="batch_size"):
        TFLiteModel(path, batch_size=0)


def test_calibration_at_the_wrong_size_is_refused(trained_run):
    from raydet.export.quantize import calibration_images

    assert calibration_images(trained_run["prep"], 7, image_size=32).shape == (7, 32, 32, 3)
    with pytest.raises(ValueError, match="32x32 but the model takes 64x64"):
        calibration_images(trained_run["prep"], 7, image_size=64)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        calibration_images(trained_run["run"], 7)
