"""Quantization-aware training (tensorflow-model-optimization) and its export to ``RUN/model_qat.tflite``.

What tfmot needs from the network (docs/STACK.md):
- tfmot refuses ``Rescaling`` ("Layer rescaling is not supported"): it is annotated with
  ``RescalingQuantizeConfig``: no weights to quantize, but its output gets an 8-bit range measured in
  training, like the input (a config that quantizes nothing loses the rescale in the int8 file; see the class).
- tfmot folds BatchNormalization only when it directly follows a convolution (or Dense) with linear
  activation; Conv -> MaxPool -> BN is refused deep inside tfmot. :func:`apply_qat` checks this first and
  names the offending layers; ``raydet.detector.model.build_model`` puts every BN right after a Conv without bias.

Loading: a QAT model saved in the native ``.keras`` zip format (what training writes to ``model_qat.keras``) does
not load back with ``load_model`` (tf-keras 2.21 + tfmot 0.8.1: ``QuantizeLayer`` is built twice on load and the
wrappers list their variables differently, "expected 5 variables, but received 3"). :func:`load_qat_model`
therefore rebuilds the same network and loads the weights into it; an HDF5 file (tf-keras reads a non-zip
``.keras`` file as HDF5) loads as it is.

Usage in training (``raydet train --qat``), on every worker, inside ``strategy.scope()``::

    model = apply_qat(build_model(model_cfg))        # or a float model loaded with --init-from
    compile_model(model, ...); model.fit(...)
    model.save(path, save_format="keras_v3")         # EVERY worker: reading synced variables is collective
    export_qat_tflite(RUN)                           # on the driver -> RUN/model_qat.tflite
"""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import numpy as np

from raydet.config import ModelConfig
from raydet.detector.model import build_model
from raydet.errors import UserError, UserFileNotFoundError
from raydet.export import heavy
from raydet.export.quantize import require_model
from raydet.export.run import Run

# (class name of the layer feeding a BatchNormalization) that tfmot's default 8-bit transforms fold.
_BN_FOLDABLE = ("Conv2D", "DepthwiseConv2D", "Dense")


def _rescaling_config_class():
    """The QuantizeConfig class for Rescaling (built lazily: tfmot must not load at import time)."""
    global _RESCALING_CONFIG
    if _RESCALING_CONFIG is None:
        qk = heavy.tfmot().quantization.keras

        # The name must be unique: tfmot's quantize_scope already maps "NoOpQuantizeConfig" to its own class,
        # which would silently replace ours when quantize_apply round-trips the config.
        class RescalingQuantizeConfig(qk.QuantizeConfig):
            """For Rescaling, which tfmot does not support: no weights; the output gets a measured range.

            Quantizing nothing (no output quantizer either) trains fine in Keras, but the TFLite converter
            then drops the rescale and feeds the first convolution the raw 0..255 input at scale 1, and the
            int8 file does not agree with Keras (docs/STACK.md). With the output range the converter keeps the
            rescale and the file agrees with Keras.
            """

            def get_weights_and_quantizers(self, layer):
                return []

            def get_activations_and_quantizers(self, layer):
                return []

            def set_quantize_weights(self, layer, quantize_weights):
                pass

            def set_quantize_activations(self, layer, quantize_activations):
                pass

            def get_output_quantizers(self, layer):
                # min/max over everything seen, as tfmot's own input layer: exactly [0, 1] after one batch.
                # A moving average starts at [-6, 6] and moves slowly (decay 0.999), so a short fine-tune
                # would leave the 0..1 pixels only ~23 of the 256 levels.
                return [
                    qk.quantizers.AllValuesQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)
                ]

            def get_config(self):
                return {}

        _RESCALING_CONFIG = RescalingQuantizeConfig
    return _RESCALING_CONFIG


_RESCALING_CONFIG = None


def rescaling_quantize_config():
    """A fresh ``RescalingQuantizeConfig`` (see :func:`_rescaling_config_class`)."""
    return _rescaling_config_class()()


def qat_scope():
    """The custom-object scope a QAT model is deserialized in (tfmot's wrappers + RescalingQuantizeConfig)."""
    cls = _rescaling_config_class()
    return heavy.tfmot().quantization.keras.quantize_scope({cls.__name__: cls})


def check_qat_compatible(model) -> None:
    """Raise ValueError naming every BatchNormalization tfmot cannot fold (not right after a linear conv)."""
    bad = []
    for layer in model.layers:
        if type(layer).__name__ not in ("BatchNormalization", "SyncBatchNormalization"):
            continue
        inbound = [node.inbound_layers for node in layer.inbound_nodes]
        feeders = [f for group in inbound for f in (group if isinstance(group, list) else [group])]
        ok = (
            len(feeders) == 1
            and type(feeders[0]).__name__ in _BN_FOLDABLE
            and feeders[0].get_config().get("activation", "linear") == "linear"
        )
        if not ok:
            names = ", ".join(f"{f.name} ({type(f).__name__})" for f in feeders) or "nothing"
            bad.append(f"{layer.name} follows {names}")
    if bad:
        raise ValueError(
            "quantization-aware training needs every BatchNormalization directly after a convolution or Dense "
            f"layer without activation, so it can be folded into it; not so for: {'; '.join(bad)}. "
            "Use the order Conv(no bias) -> BatchNorm -> ReLU -> MaxPool (raydet.detector.model.build_model does)."
        )


def apply_qat(model):
    """A float tf-keras model -> its quantization-aware copy (tfmot default 8-bit scheme), weights kept.

    Call inside the distribution strategy's scope: the copy creates new variables. Input and outputs keep
    their names (``image``; ``heatmap``, ``boxes``), so the same losses, metrics and logs apply.
    Raises ValueError if the model has BatchNormalization that tfmot cannot fold (see module docstring).
    """
    tf_keras = heavy.keras()
    check_qat_compatible(model)
    qk = heavy.tfmot().quantization.keras

    def annotate(layer):
        # tfmot's documented pattern: annotate the original layers; quantize_apply clones them with weights.
        if isinstance(layer, tf_keras.layers.Rescaling):
            return qk.quantize_annotate_layer(layer, quantize_config=rescaling_quantize_config())
        return qk.quantize_annotate_layer(layer)

    annotated = tf_keras.models.clone_model(model, clone_function=annotate)
    with qat_scope():
        quantized = qk.quantize_apply(annotated)
    # quantize_apply names each wrapper "quant_<layer>"; give the output layers their own names back so
    # Keras logs, compile() dicts and the TFLite signature say heatmap/boxes as for the float model.
    renamed = {}
    for name in model.output_names:
        wrapper = quantized.get_layer(f"quant_{name}")
        wrapper._name = name  # Keras has no public rename; the inner layer keeps the same name
        renamed[name] = wrapper.output
    outputs = {name: renamed[name] for name in _output_keys(model)}
    return tf_keras.Model(quantized.inputs, outputs, name=f"{model.name}_qat")


def calibrate_ranges(qat_model, images) -> int:
    """Set every moving-average activation range of a fresh QAT model (``apply_qat``) to the min/max it sees on
    ``images`` (n, S, S, 3) 0..255 in one forward pass; BatchNorm statistics are left as they were. -> the
    number of ranges set.

    tfmot starts those ranges at [-6, 6] and moves them by an exponential average of decay 0.999 per training
    step, so a fine-tune of a few hundred steps keeps them near [-6, 6]: outputs beyond are clipped (the linear
    bottlenecks of efficientnet_lite0 reach past 6) and small ones get a few of the 256 levels (docs/TRAINING.md
    has the measured loss). One pass with decay 0 sets them to the batch's min/max instead.
    """
    quant_ops = heavy.quant_ops()  # private tfmot API (raydet.export.heavy says why)
    stats = [v for v in qat_model.variables if "moving_mean" in v.name or "moving_variance" in v.name]
    saved = [v.numpy() for v in stats]
    ranges = [
        v
        for v in qat_model.non_trainable_variables
        if v.name.split("/")[-1].startswith(("output_min", "post_activation_min", "pre_activation_min"))
    ]
    original = quant_ops.MovingAvgQuantize

    def without_decay(*args, **kwargs):
        return original(*args, **{**kwargs, "ema_decay": 0.0})

    quant_ops.MovingAvgQuantize = without_decay
    try:
        qat_model(np.asarray(images, np.float32), training=True)
    finally:
        quant_ops.MovingAvgQuantize = original
        for v, value in zip(stats, saved, strict=True):
            v.assign(value)
    return len(ranges)


def _output_keys(model) -> list[str]:
    """The keys of a dict-output model, in its declared order."""
    if not isinstance(model.output, dict):
        raise ValueError(f"expected a model with dict outputs (heatmap, boxes), got {type(model.output).__name__}")
    return list(model.output)


def load_qat_model(path: str | os.PathLike, model_config=None):
    """Load a QAT model, uncompiled.

    HDF5 loads as it is. A native ``.keras`` zip (what training writes) cannot be deserialized
    (module docstring), but its weights load by position into the same construction,
    ``apply_qat(build_model(model_config))``; ``model_config`` (a :class:`raydet.config.ModelConfig`) is
    then required.
    """
    tf_keras = heavy.keras()
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"no QAT model at {path}")
    if zipfile.is_zipfile(path):
        if model_config is None:
            raise UserError(
                f"{path} is a native .keras zip, which does not deserialize with tfmot wrappers; "
                "pass the run's ModelConfig (RUN/config.json's model fields) to rebuild it"
            )

        model = apply_qat(build_model(model_config))
        model.load_weights(str(path))
        return model
    with qat_scope():
        return tf_keras.models.load_model(str(path), compile=False)


def convert_qat(model) -> bytes:
    """A QAT tf-keras model -> ``.tflite`` bytes: int8 weights and activations, uint8 input, float32 outputs."""
    tf = heavy.tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # the fake-quant ranges learned in training
    converter.inference_input_type = tf.uint8  # pixels 0..255 in, like the PTQ int8 file
    return converter.convert()


def export_qat_tflite(run_dir: str | os.PathLike) -> str:
    """``RUN/model_qat.keras`` -> ``RUN/model_qat.tflite``; returns the path written.

    FileNotFoundError names what the run holds if the QAT model is missing. A native-zip model file is
    rebuilt from ``RUN/config.json``'s ``model`` fields (see :func:`load_qat_model`).
    """

    src = require_model(run_dir, Run.QAT_MODEL)
    fields = Run(run_dir).read_config(missing_ok=True).get("model")
    start = time.perf_counter()
    data = convert_qat(load_qat_model(src, ModelConfig(**fields) if fields else None))
    out = Run(run_dir).model("qat")
    out.write_bytes(data)
    print(f"wrote {out} ({len(data):,} bytes, {time.perf_counter() - start:.1f} s)", flush=True)
    return str(out)
