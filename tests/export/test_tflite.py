"""raydet.export.tflite and raydet.export.runner: the int8 .tflite of the hand-set detector (tests/handset.py) decodes
to the Keras model's detections within a stated tolerance, the runner's outputs and timings, model file names, a RUN
whose config.json or model files are not raydet's refused."""

from __future__ import annotations

import json

import handset as H
import numpy as np
import pytest

from raydet.detector.decode import decode
from raydet.errors import UserError
from raydet.export.run import Run
from raydet.export.runner import ModelRunner, check_model_file, check_run

# int8 tolerance after decoding: a box coordinate within 0.002 of the image side (the boxes output is quantized
# in steps of ~1/256 over [0, 1]; 0.002 is a sixteenth of a cell at G = 8), a score within 0.01 (the sigmoid
# output's step is 1/256 and its input's ~0.1 logit)
BOX_TOL, SCORE_TOL = 0.002, 0.01
SCENE = [
    H.Obj(1, 1, 0, 5, 1),
    H.Obj(6, 1, 0, 4, 1),
    H.Obj(5, 2, 1, 4, 2),
    H.Obj(2, 5, 0, 3, 2),
    H.Obj(6, 6, 1, 1, 5),
]  # the last: score sigmoid(-3.6) = 0.0266, kept at decode's default 0.01


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return H.write_run(tmp_path_factory.mktemp("tflite") / "run")


def test_model_file_names(tmp_path):
    assert Run(tmp_path).model("float") == tmp_path / "model.keras"
    assert Run(tmp_path).model("int8") == tmp_path / "model_int8.tflite"
    assert Run(tmp_path).model("float32") == tmp_path / "model_float32.tflite"
    with pytest.raises(ValueError, match="unknown model 'int4'"):
        Run(tmp_path).model("int4")


def test_keras_model_gives_the_hand_computed_detections(run):
    outputs, seconds = ModelRunner(run / "model.keras").predict(H.paint(SCENE)[None])
    (det,) = decode(outputs["heatmap"], outputs["boxes"])
    boxes, labels, scores = H.expected(SCENE)
    np.testing.assert_allclose(det.boxes, boxes, atol=1e-6)
    assert det.labels.tolist() == labels.tolist() == [0, 0, 1, 0, 1]
    np.testing.assert_allclose(det.scores, scores, atol=1e-6)
    assert seconds.shape == (1,)


def test_int8_tflite_decodes_like_the_keras_model(run):
    from raydet.export.tflite import TFLiteModel

    images = np.concatenate([H.paint(SCENE)[None], H.calibration_images()])  # 6 scenes, 0 to 16 objects each
    keras_out, _ = ModelRunner(run / "model.keras").predict(images)
    lite = TFLiteModel(str(run / "model_int8.tflite"), batch_size=4)
    assert lite.input_dtype == np.uint8
    lite_out = lite.predict(images)
    assert {k: v.dtype for k, v in lite_out.items()} == {"heatmap": np.float32, "boxes": np.float32}
    found = []
    for k, lt in zip(
        decode(keras_out["heatmap"], keras_out["boxes"]), decode(lite_out["heatmap"], lite_out["boxes"]), strict=True
    ):
        assert lt.labels.tolist() == k.labels.tolist()  # the same objects, in the same order
        np.testing.assert_allclose(lt.boxes, k.boxes, atol=BOX_TOL)
        np.testing.assert_allclose(lt.scores, k.scores, atol=SCORE_TOL)
        found.append(len(k))
    assert found == [5, 16, 9, 16, 9, 0]  # every painted object, nothing on black


def test_tflite_runner_times_each_image_and_reports_its_shapes(run, monkeypatch):
    import types

    import raydet.export.runner as runner_module
    from raydet.export.tflite import TFLiteModel

    lite = TFLiteModel(str(run / "model_int8.tflite"))
    assert lite.output_shapes == {"heatmap": (-1, 8, 8, 2), "boxes": (-1, 8, 8, 4)}
    assert lite.num_classes == 2 and lite.image_size == 32
    empty = lite.predict(np.zeros((0, 32, 32, 3), np.uint8))
    assert empty["heatmap"].shape == (0, 8, 8, 2) and empty["boxes"].shape == (0, 8, 8, 4)
    runner = ModelRunner(run / "model_int8.tflite")
    assert (runner.grid, runner.num_classes, runner.image_size) == (8, 2, 32)
    # a clock that moves only inside the interpreter's call: image i takes (i + 1) * 10 ms
    now, calls, real = [0.0], [], runner._tflite.predict

    def timed(batch):
        calls.append(len(batch))
        now[0] += 0.01 * len(calls)
        return real(batch)

    monkeypatch.setattr(runner_module, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(runner._tflite, "predict", timed)
    images = np.stack([H.paint(SCENE), np.zeros_like(H.paint(SCENE)), H.paint(SCENE)])
    outputs, seconds = runner.predict(images)
    assert outputs["heatmap"].shape == (3, 8, 8, 2)
    # one call per image, each timed on its own (a per-batch time would read [0.02] * 3 or [0.06] * 3)
    assert calls == [1, 1, 1] and seconds.tolist() == pytest.approx([0.01, 0.02, 0.03], abs=1e-12)
    # and the outputs are each image's, in order: the black image's heatmap is another
    np.testing.assert_array_equal(outputs["heatmap"][0], outputs["heatmap"][2])
    assert not np.array_equal(outputs["heatmap"][0], outputs["heatmap"][1])
    with pytest.raises(ValueError, match=r"takes \(N, 32, 32, 3\) images, got \(1, 16, 16, 3\)"):
        runner.predict(np.zeros((1, 16, 16, 3), np.uint8))


def test_a_run_that_is_not_raydets_is_refused(tmp_path):
    old = H.write_old_run(tmp_path / "old")  # a single-box network: outputs class_logits and boxes
    # 1. by its config.json: a "model" without a backbone
    with pytest.raises(UserError, match="config.json: 'model' must be an object naming its backbone"):
        check_run(old)
    # 2. by its model's outputs, also without the config's help, when checked and when loaded
    config = json.loads((old / "config.json").read_text())
    del config["model"]
    (old / "config.json").write_text(json.dumps(config))
    for refuse in (
        check_run,
        lambda _: check_model_file(old / "model.keras"),
        lambda _: ModelRunner(old / "model.keras"),
    ):
        with pytest.raises(UserError, match=r"outputs \['boxes', 'class_logits'\]: not a raydet model"):
            refuse(old)


def test_a_tflite_without_heatmap_is_refused(tmp_path):
    import tf_keras

    old = H.write_old_run(tmp_path / "old")
    model = tf_keras.models.load_model(old / "model.keras", compile=False)
    (old / "model_int8.tflite").write_bytes(H.int8_tflite(model, H.calibration_images()))
    with pytest.raises(UserError, match=r"model_int8.tflite has outputs \['boxes', 'class_logits'\]"):
        ModelRunner(old / "model_int8.tflite")


def test_new_run_passes_check_run(run):
    check_run(run)  # config.json with a backbone, outputs heatmap and boxes: nothing raised


def test_runner_takes_raydet_models_build_model(tmp_path):
    from raydet.config import ModelConfig
    from raydet.detector.model import OUTPUT_STRIDE, build_model

    # a tiny untrained network of the real architecture: 64 px -> G = 64 / 4 = 16, 3 classes
    model = build_model(ModelConfig(num_classes=3, image_size=64, width=8, depth=3, neck_width=16, head_width=16))
    model.save(tmp_path / "model.keras")
    runner = ModelRunner(tmp_path / "model.keras")
    assert (runner.image_size, runner.grid, runner.num_classes) == (64, 64 // OUTPUT_STRIDE, 3)
    outputs, seconds = runner.predict(np.zeros((2, 64, 64, 3), np.uint8))
    assert outputs["heatmap"].shape == (2, 16, 16, 3) and outputs["boxes"].shape == (2, 16, 16, 4)
    assert seconds.shape == (2,)
    check_run(tmp_path)  # no config.json, outputs heatmap and boxes: accepted
