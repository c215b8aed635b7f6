"""raydet.export.qat: quantization-aware training on raydet.detector.model's network, save/load, export to int8
.tflite, and `raydet train --qat` with two Ray Train workers."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import prep_helpers
import pytest
import quant_helpers
from quant_helpers import ap50, synthetic, train_small_model

# The largest |model_qat.tflite - Keras QAT model| output allowed, test_train_qat_with_two_workers_...: measured
# 0.0048 (heatmap) and 0.0087 (boxes), one to two of the 256 int8 output levels of [0, 1]; a file that lost the
# rescale (raydet.export.qat's RescalingQuantizeConfig without its output quantizer) was 0.030 off in the heatmap
# after this one-epoch run (a longer one drifts further: raydet.export.qat says why).
QAT_TFLITE_TOLERANCE = {"heatmap": 0.015, "boxes": 0.03}


def _model_config():
    return quant_helpers.model_config()


@pytest.fixture(scope="module")
def float_model(small_float_model):
    """raydet.detector.model's network, trained in float for a few seconds (the --init-from of a QAT fine-tune);
    test_quantize's model too (tests/conftest.py), trained once."""
    return small_float_model


@pytest.fixture(scope="module")
def qat_run(float_model, tmp_path_factory):
    """A RUN folder after a QAT fine-tune: model_qat.keras (HDF5), config.json, model_qat.tflite."""
    from raydet.export.qat import apply_qat, export_qat_tflite

    model = train_small_model(synthetic(800, seed=0), epochs=3, model=apply_qat(float_model))
    run = tmp_path_factory.mktemp("qat") / "run"
    run.mkdir()
    model.save(str(run / "model_qat.keras"), save_format="h5", include_optimizer=False)  # HDF5 under .keras
    (run / "config.json").write_text(json.dumps({"model": dataclasses.asdict(_model_config())}))
    return {"run": run, "model": model, "tflite": export_qat_tflite(run)}


@pytest.mark.slow
def test_apply_qat_wraps_the_network_and_keeps_names_and_weights(float_model):
    from raydet.export.qat import apply_qat

    qat = apply_qat(float_model)
    assert qat.input_names == ["image"]
    assert sorted(qat.output_names) == ["boxes", "heatmap"]
    kinds = {layer.name: type(layer).__name__ for layer in qat.layers}
    assert kinds["quant_block0_conv"] == "QuantizeWrapperV2" and kinds["heatmap"] == "QuantizeWrapperV2"
    assert kinds["quant_neck_s4_up"] == "QuantizeWrapperV2" and kinds["quant_neck_s4_add"] == "QuantizeWrapperV2"
    # Rescaling carries raydet's config: no weight quantizer, one output quantizer (its range variables)
    rescale = qat.get_layer("quant_rescale")
    assert type(rescale.quantize_config).__name__ == "RescalingQuantizeConfig"
    assert rescale.quantize_config.get_weights_and_quantizers(rescale.layer) == []
    assert sorted(w.name.split("/")[-1] for w in rescale.weights) == [
        "optimizer_step:0",
        "output_max:0",
        "output_min:0",
    ]
    # the float weights carried over (conv0's kernel, the class head's kernel)
    for wrapper, name in (("quant_block0_conv", "block0_conv"), ("heatmap", "heatmap")):
        kernel = [w for w in qat.get_layer(wrapper).weights if w.name.endswith("/kernel:0")]
        assert len(kernel) == 1, [w.name for w in qat.get_layer(wrapper).weights]
        np.testing.assert_array_equal(kernel[0].numpy(), float_model.get_layer(name).kernel.numpy())


@pytest.mark.slow
def test_plain_tfmot_refuses_rescaling(float_model):
    """Why apply_qat exists: tfmot's one-call quantize_model rejects the network's Rescaling layer."""
    import tensorflow_model_optimization as tfmot

    with pytest.raises(RuntimeError, match="rescale.*not supported"):
        tfmot.quantization.keras.quantize_model(float_model)


def test_batchnorm_after_pooling_is_refused_with_the_layer_named():
    """Conv -> MaxPool -> BN: an order tfmot cannot fold."""
    import tf_keras as keras

    from raydet.export.qat import apply_qat

    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.BatchNormalization(name="bn_after_pool")(x)
    model = keras.Model(
        inputs,
        {
            "heatmap": keras.layers.Conv2D(3, 1, activation="sigmoid", name="heatmap")(x),
            "boxes": keras.layers.Conv2D(4, 1, activation="sigmoid", name="boxes")(x),
        },
    )
    with pytest.raises(ValueError, match=r"bn_after_pool follows pool \(MaxPooling2D\).*Conv\(no bias\) -> BatchNorm"):
        apply_qat(model)


@pytest.mark.slow
def test_qat_model_trains_saves_and_loads_exactly(qat_run):
    from raydet.export.qat import load_qat_model

    images = synthetic(16, seed=2)["image"].astype(np.float32)
    loaded = load_qat_model(qat_run["run"] / "model_qat.keras")
    ref, out = qat_run["model"].predict(images, verbose=0), loaded.predict(images, verbose=0)
    for name in ("heatmap", "boxes"):
        np.testing.assert_array_equal(out[name], ref[name])


@pytest.mark.slow
def test_export_is_full_int8_with_uint8_input(qat_run):
    from raydet.export.tflite import TFLiteModel

    model = TFLiteModel(qat_run["tflite"])
    assert model.input_dtype == np.uint8
    interpreter = model._interpreter
    tensors = interpreter.get_tensor_details()
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED"):
            # activations in and weights: int8 (not float kernels run in float)
            assert tensors[op["inputs"][0]]["dtype"] == np.int8, op
            assert tensors[op["inputs"][1]]["dtype"] == np.int8, op
    out = model.predict(synthetic(4, seed=2)["image"])
    assert out["heatmap"].shape == (4, 8, 8, 3) and out["boxes"].shape == (4, 8, 8, 4)


@pytest.mark.slow
def test_qat_tflite_keeps_the_keras_answers_and_float_ap(qat_run, float_model):
    from test_quantize import assert_same_detections

    from raydet.export.tflite import TFLiteModel

    test = synthetic(200, seed=1)
    keras_out = qat_run["model"].predict(test["image"].astype(np.float32), verbose=0)
    lite_out = TFLiteModel(qat_run["tflite"], batch_size=32).predict(test["image"])
    assert_same_detections(keras_out, lite_out, "qat")
    float_ap = ap50(float_model.predict(test["image"].astype(np.float32), verbose=0), test)
    assert float_ap > 0.8, float_ap
    assert ap50(lite_out, test) >= float_ap - 0.02  # QAT loses at most 0.02 AP50


@pytest.mark.slow
def test_a_native_keras_zip_is_rebuilt_from_the_run_config(qat_run, tmp_path):
    """What `model.save("model_qat.keras")` writes: load_model cannot read it back, export still can."""
    from raydet.export.qat import export_qat_tflite, load_qat_model
    from raydet.export.tflite import TFLiteModel

    run = tmp_path / "run"
    run.mkdir()
    qat_run["model"].save(run / "model_qat.keras")  # native zip format
    with pytest.raises(ValueError, match="native .keras zip"):
        load_qat_model(run / "model_qat.keras")
    (run / "config.json").write_text((qat_run["run"] / "config.json").read_text())
    images = synthetic(8, seed=3)["image"]
    rebuilt = TFLiteModel(export_qat_tflite(run)).predict(images)
    reference = TFLiteModel(qat_run["tflite"]).predict(images)
    for name in ("heatmap", "boxes"):
        np.testing.assert_array_equal(rebuilt[name], reference[name])


def test_export_without_a_qat_model_names_what_exists(tmp_path):
    from raydet.export.qat import export_qat_tflite

    (tmp_path / "model.keras").write_text("")
    with pytest.raises(FileNotFoundError, match=r"model_qat\.keras.*holds model\.keras"):
        export_qat_tflite(tmp_path)


def keras_outputs_at_the_end(images: np.ndarray, folder: str):
    """A worker callback factory (raydet.train.driver.train's ``callbacks``): after the last epoch every rank runs
    its live Keras QAT model on ``images`` (all ranks: reading the quantizers' synced variables is collective);
    rank 0 writes the outputs to ``folder/keras_out.npz``, each rank the sha256 of its weights to rank<r>.json."""

    def factory(rank: int, world: int, steps: int):
        import hashlib
        import json

        import numpy as np
        import tf_keras

        class Outputs(tf_keras.callbacks.Callback):
            def on_train_end(self, logs=None):
                out = self.model(images.astype(np.float32), training=False)
                weights = self.model.get_weights()
                digest = hashlib.sha256(b"".join(w.tobytes() for w in weights)).hexdigest()
                Path(folder, f"rank{rank}.json").write_text(json.dumps({"sha256": digest}))
                if rank == 0:
                    np.savez(Path(folder, "keras_out.npz"), **{k: v.numpy() for k, v in out.items()})

        return Outputs()

    return factory


@pytest.mark.slow
def test_train_qat_with_two_workers_writes_a_tflite_that_agrees_with_the_keras_qat_model(ray_local, tmp_path):
    """The production path of `raydet train --qat`: raydet.train.driver.train with TrainConfig(qat=True) and two Ray
    Train workers (one hides distribution bugs: docs/STACK.md) ends with RUN/model_qat.keras and the driver's
    export RUN/model_qat.tflite, whose int8 outputs are those of the Keras QAT model the workers trained."""
    import ray.cloudpickle

    from raydet.config import ModelConfig, TrainConfig
    from raydet.export.qat import load_qat_model
    from raydet.export.tflite import TFLiteModel
    from raydet.train.driver import train

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the callback travels by value
    prep = prep_helpers.make_prep(tmp_path / "prep", n_train=32, n_test=16, classes=3)
    images = synthetic(16, seed=5)["image"]
    cfg = TrainConfig(
        prep=str(prep),
        out=str(tmp_path / "runs"),
        name="qat",
        workers=2,
        cpus_per_worker=1.0,
        epochs=1,
        batch_size=16,
        backbone="cnn",
        width=8,
        depth=3,
        lr=3e-3,
        qat=True,
    )
    summary = train(cfg, callbacks=(keras_outputs_at_the_end(images, str(tmp_path)),))
    run = tmp_path / "runs" / "qat"
    assert summary.model_path == str(run / "model_qat.keras") and (run / "model_qat.tflite").is_file()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # the replicas (weights and quantizer ranges) stayed in sync

    live = dict(np.load(tmp_path / "keras_out.npz"))  # the trained model in the worker, before any save
    # model_qat.keras (a native zip: rebuilt from config.json's model fields) holds that model
    mcfg = ModelConfig(**json.loads((run / "config.json").read_text())["model"])
    saved = load_qat_model(run / "model_qat.keras", mcfg).predict(images.astype(np.float32), verbose=0)
    lite = TFLiteModel(str(run / "model_qat.tflite"))
    assert lite.input_dtype == np.uint8  # full int8, uint8 in
    lite_out = lite.predict(images)
    for name in ("heatmap", "boxes"):
        np.testing.assert_allclose(saved[name], live[name], atol=1e-5)
        err = np.abs(lite_out[name] - live[name]).max()
        print(f"{name}: largest |tflite - keras| {err:.4f}")
        assert err < QAT_TFLITE_TOLERANCE[name], (name, err)


@pytest.mark.slow
def test_calibration_sets_activation_ranges_from_one_pass_and_keeps_bn_statistics(float_model):
    """A fresh QAT model's ranges start at [-6, 6]; one calibration pass sets them to what the layers output
    (the heatmap's pre-sigmoid range then spans exactly the sigmoid outputs of that pass), BN stays."""
    from raydet.export.qat import apply_qat, calibrate_ranges

    q = apply_qat(float_model)
    layer = q.get_layer("heatmap")
    low, high = (
        next(v for v in layer.non_trainable_variables if v.name.endswith(f"pre_activation_{k}:0"))
        for k in ("min", "max")
    )
    assert (low.numpy(), high.numpy()) == (-6.0, 6.0)  # tfmot's start
    stats = {v.name: v.numpy() for v in q.variables if "moving_" in v.name}
    images = synthetic(16, seed=3)["image"]
    assert calibrate_ranges(q, images) > 10
    for v in q.variables:
        if v.name in stats:
            np.testing.assert_array_equal(v.numpy(), stats[v.name])
    heat = q(images.astype(np.float32), training=True)["heatmap"].numpy()  # (this pass moves BN statistics)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    # the output is itself quantized to 256 levels of [low, high] before the sigmoid: within a level's effect
    assert sigmoid(low.numpy()) == pytest.approx(heat.min(), abs=0.01)
    assert sigmoid(high.numpy()) == pytest.approx(heat.max(), abs=0.01)
