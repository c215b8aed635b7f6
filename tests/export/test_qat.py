"""raydet.export.qat: quantization-aware training on raydet.detector.model's network, save/load, export to int8
.tflite."""

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


def _qat_worker_loop(config):
    """One Ray Train worker: the QAT model built inside MultiWorkerMirroredStrategy's scope, a short fit."""
    import ray.train
    import tensorflow as tf
    import tf_keras

    from raydet.detector.model import build_model, compile_model
    from raydet.export.qat import apply_qat
    from raydet.train.inputs import BatchMaker

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = apply_qat(build_model(_model_config()))
        compile_model(model, tf_keras.optimizers.Adam(1e-3))
    images, heatmap, box_target = BatchMaker(synthetic(128, seed=0), 3, 8)(np.arange(128))
    ds = tf.data.Dataset.from_tensor_slices((images, {"heatmap": heatmap, "boxes": box_target}))
    history = model.fit(ds.batch(32), epochs=2, verbose=0)
    weights = model.get_weights()  # every worker reads: synced variables are read collectively
    rank = ray.train.get_context().get_world_rank()
    # Every rank saves: reading the quantizers' synced variables is a collective op, so rank 0 alone
    # would wait for rank 1 forever.
    name = "model_qat.keras" if rank == 0 else f"rank{rank}_qat.keras"
    model.save(str(Path(config["run"]) / name), save_format="keras_v3")  # as raydet.train.worker saves it
    # Result.metrics only holds rank 0's report (and none without a checkpoint): each rank writes its own
    checksum = float(sum(np.abs(w.astype(np.float64)).sum() for w in weights))
    Path(config["run"], f"rank{rank}.json").write_text(
        json.dumps({"loss": history.history["loss"][-1], "checksum": checksum})
    )


@pytest.mark.slow
def test_qat_trains_with_two_workers_and_exports(ray_local, tmp_path):
    """Two workers: one hides distribution bugs (docs/STACK.md). Both end with the same weights; export runs."""
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from raydet.cluster.runtime import runtime_env
    from raydet.export.qat import export_qat_tflite
    from raydet.export.tflite import TFLiteModel

    # the workers cannot import this test module: ship it (and its helpers) by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.cloudpickle.register_pickle_by_value(quant_helpers)
    ray.cloudpickle.register_pickle_by_value(prep_helpers)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": dataclasses.asdict(_model_config())}))
    trainer = TensorflowTrainer(
        _qat_worker_loop,
        train_loop_config={"run": str(run)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="qat2", worker_runtime_env=runtime_env()),
    )
    result = trainer.fit()
    assert result.error is None, result.error
    ranks = [json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(np.isfinite(r["loss"]) for r in ranks), ranks
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-6), ranks  # replicas stayed in sync
    out = TFLiteModel(export_qat_tflite(run)).predict(synthetic(4, seed=3)["image"])
    assert out["heatmap"].shape == (4, 8, 8, 3) and np.all(np.isfinite(out["boxes"]))


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
