"""raydet.quantize (PTQ to .tflite) and raydet.tflite (running any .tflite through LiteRT)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raydet.config import QuantizeConfig
from quant_helpers import ap50, synthetic, train_small_model


def _write_prep(prep, images: np.ndarray) -> None:
    """PREP/train/part.parquet with the ``image`` tensor column as `raydet prepare` writes it (Ray's tensor type)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.data.extensions import ArrowTensorArray

    (prep / "train").mkdir(parents=True)
    pq.write_table(pa.table({"image": ArrowTensorArray.from_numpy(images)}), prep / "train" / "part.parquet")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A RUN folder with a small trained float model, its PREP (train images for calibration) and test data."""
    import ray

    from raydet.runtime import runtime_env

    if not ray.is_initialized():  # the same local 2-CPU Ray as the ray_local fixture
        ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=runtime_env())
    root = tmp_path_factory.mktemp("quant")
    images, labels, boxes = synthetic(800, seed=0)
    model = train_small_model(images, labels, boxes)
    prep, run = root / "prep", root / "run"
    _write_prep(prep, images[:100])
    run.mkdir()
    model.save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"classes": ["red", "green", "blue"], "image_size": 32,
                                                 "prep": str(prep)}))
    test = synthetic(200, seed=1)
    return {"run": run, "prep": prep, "model": model, "test": test}


@pytest.fixture(scope="module")
def quantized(trained_run):
    from raydet.quantize import quantize

    return quantize(QuantizeConfig(run=str(trained_run["run"]), calibration_images=64))


def test_quantize_and_dequantize_by_hand():
    from raydet.tflite import _dequantize, _quantize

    # round(x / 0.5 + 10): 0 -> 10, 100 -> 210, 200 -> 410 clipped to 255 (uint8)
    assert _quantize(np.array([0.0, 100.0, 200.0]), np.uint8, 0.5, 10).tolist() == [10, 210, 255]
    # int8: round(-300 / 2 + 0) = -150 clipped to -128; round(3 / 2) = round(1.5) = 2 (half to even)
    assert _quantize(np.array([-300.0, 3.0]), np.int8, 2.0, 0).tolist() == [-128, 2]
    # (q - zp) * scale: (12 - 10) * 0.25 = 0.5
    assert _dequantize(np.array([12], np.int8), 0.25, 10).tolist() == [0.5]


def test_missing_model_names_what_the_run_holds(tmp_path, capsys):
    from raydet.cli import main
    from raydet.quantize import quantize

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "history.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match=r"model\.keras.*holds config\.json, history\.jsonl"):
        quantize(QuantizeConfig(run=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        quantize(QuantizeConfig(run=str(tmp_path / "nope")))
    assert main(["quantize", str(tmp_path), "--mode", "int8"]) == 1
    assert "model.keras" in capsys.readouterr().err


def test_bad_mode_is_refused_before_any_work():
    with pytest.raises(ValueError, match="int4"):
        QuantizeConfig(run="x", modes=("int4",))


def test_every_mode_converts_and_runs_through_litert(trained_run, quantized, capsys):
    from raydet.quantize import tflite_path
    from raydet.tflite import TFLiteModel

    run = trained_run["run"]
    assert set(quantized) == {"dynamic", "float16", "int8"}
    images = trained_run["test"][0][:16]
    for mode in ("float32", "dynamic", "float16", "int8"):
        model = TFLiteModel(str(tflite_path(run, mode)))
        out = model.predict(images)
        assert out["class_logits"].shape == (16, 3) and out["boxes"].shape == (16, 4), mode
        assert out["class_logits"].dtype == np.float32 and out["boxes"].dtype == np.float32, mode
        assert model.input_dtype == (np.uint8 if mode == "int8" else np.float32), mode
    sizes = {mode: tflite_path(run, mode).stat().st_size for mode in ("float32", "dynamic", "float16", "int8")}
    # int8 and dynamic store 1 byte per weight instead of 4; float16 2 instead of 4 (plus graph overhead)
    assert sizes["int8"] < 0.5 * sizes["float32"], sizes
    assert sizes["dynamic"] < 0.5 * sizes["float32"], sizes
    assert sizes["float16"] < 0.7 * sizes["float32"], sizes


def test_size_table_lists_every_file(trained_run, quantized):
    from raydet.quantize import format_size_table, size_rows

    rows = size_rows(trained_run["run"], trained_run["model"])
    assert [r["name"] for r in rows] == ["float (.keras)", "float32", "dynamic", "float16", "int8"]
    assert rows[1]["vs_float32"] == 1.0
    weights = trained_run["model"].count_params() * 4
    assert rows[-1]["vs_weights"] == pytest.approx(rows[-1]["bytes"] / weights)
    assert "| int8 | model_int8.tflite |" in format_size_table(rows, weights)


def test_float_tflite_matches_keras_and_quantized_models_stay_close(trained_run, quantized):
    from raydet.quantize import tflite_path
    from raydet.tflite import TFLiteModel

    images, labels, boxes = trained_run["test"]
    keras_out = trained_run["model"].predict(images.astype(np.float32), verbose=0)
    outs = {mode: TFLiteModel(str(tflite_path(trained_run["run"], mode)), batch_size=32).predict(images)
            for mode in ("float32", "dynamic", "float16", "int8")}
    for name in ("class_logits", "boxes"):
        np.testing.assert_allclose(outs["float32"][name], keras_out[name], atol=1e-3, rtol=1e-3)
    float_ap = ap50(keras_out, labels, boxes)
    assert float_ap > 0.8, float_ap  # the small model did learn, so the comparison means something
    for mode in ("dynamic", "float16", "int8"):
        agree = np.mean(outs[mode]["class_logits"].argmax(1) == keras_out["class_logits"].argmax(1))
        assert agree >= 0.95, (mode, agree)
        assert np.abs(outs[mode]["boxes"] - keras_out["boxes"]).mean() < 0.02, mode
        assert ap50(outs[mode], labels, boxes) >= float_ap - 0.03, mode


def test_int8_takes_raw_uint8_pixels(trained_run, quantized):
    from raydet.quantize import tflite_path
    from raydet.tflite import TFLiteModel

    model = TFLiteModel(str(tflite_path(trained_run["run"], "int8")))
    scale, zero_point = model._input["quantization"]
    assert model.input_dtype == np.uint8 and zero_point == 0 and abs(scale - 1.0) < 0.05, (scale, zero_point)
    images = trained_run["test"][0][:4]
    # uint8 and the same pixels as float give the same answer
    np.testing.assert_array_equal(model.predict(images)["boxes"], model.predict(images.astype(np.float32))["boxes"])


def test_tflite_model_batches_and_refuses_wrong_shapes(trained_run, quantized):
    from raydet.quantize import tflite_path
    from raydet.tflite import TFLiteModel

    path = str(tflite_path(trained_run["run"], "int8"))
    images = trained_run["test"][0][:5]
    one, three = TFLiteModel(path, batch_size=1), TFLiteModel(path, batch_size=3)  # 3 -> chunks of 3 and 2
    for name in ("class_logits", "boxes"):
        np.testing.assert_allclose(one.predict(images)[name], three.predict(images)[name], atol=1e-6)
    empty = one.predict(images[:0])
    assert empty["class_logits"].shape == (0, 3) and empty["boxes"].shape == (0, 4)
    with pytest.raises(ValueError, match=r"\(N, 32, 32, 3\).*\(2, 16, 16, 3\)"):
        one.predict(np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="nope.tflite"):
        TFLiteModel(str(trained_run["run"] / "nope.tflite"))
    with pytest.raises(ValueError, match="batch_size"):
        TFLiteModel(path, batch_size=0)


def test_calibration_at_the_wrong_size_is_refused(trained_run):
    from raydet.quantize import calibration_images

    assert calibration_images(trained_run["prep"], 7, image_size=32).shape == (7, 32, 32, 3)
    with pytest.raises(ValueError, match="32x32 but the model takes 64x64"):
        calibration_images(trained_run["prep"], 7, image_size=64)
    with pytest.raises(FileNotFoundError, match="train"):
        calibration_images(trained_run["run"], 7)
