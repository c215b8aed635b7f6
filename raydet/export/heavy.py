"""Export's deferred imports, the one place it imports tensorflow-model-optimization and LiteRT (TensorFlow and
tf_keras come from raydet.detector.heavy): checking a model file needs none of them, and a ``.tflite`` runner (an
int8 serve replica or evaluation actor) must load LiteRT alone, never TensorFlow."""

from __future__ import annotations

from types import ModuleType

from raydet.cluster.runtime import use_legacy_keras
from raydet.detector.heavy import keras, tf  # TensorFlow and tf_keras are imported in raydet.detector.heavy alone

__all__ = ["keras", "litert_interpreter", "quant_ops", "tf", "tfmot"]


def tfmot() -> ModuleType:
    """tensorflow_model_optimization, for quantization-aware training. Deferred: it loads TensorFlow."""
    use_legacy_keras()  # tfmot works on tf-keras models only; set before TensorFlow loads
    import tensorflow_model_optimization

    return tensorflow_model_optimization


def quant_ops() -> ModuleType:
    """tfmot's private ``quant_ops`` module (raydet.export.qat.calibrate_ranges). Deferred: it loads TensorFlow."""
    use_legacy_keras()
    # Private tfmot API, here only: its MovingAverageQuantizer passes the fixed decay to this module function at
    # call time, and no public setting changes it.
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    return quant_ops


def litert_interpreter() -> type:
    """LiteRT's ``Interpreter`` class, which runs ``.tflite`` files without TensorFlow. Deferred: only a ``.tflite``
    file needs it."""
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter
