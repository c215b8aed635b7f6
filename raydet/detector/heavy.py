"""The detector's deferred imports, the one place it imports TensorFlow: numpy users of raydet.detector (decoding,
metrics, targets, an int8 model's replica) must not load it."""

from __future__ import annotations

from types import ModuleType

from raydet.cluster.runtime import use_legacy_keras


def tf() -> ModuleType:
    """TensorFlow, imported with tf-keras as its Keras. Deferred: only building or training the network needs it."""
    use_legacy_keras()  # before TensorFlow loads; harmless if it already has with the variable set
    import tensorflow

    return tensorflow


def keras() -> ModuleType:
    """tf_keras (Keras 2: docs/STACK.md says why not Keras 3). Deferred: it loads TensorFlow."""
    use_legacy_keras()
    import tf_keras

    return tf_keras
