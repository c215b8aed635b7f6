"""Tune's deferred import, the one place it imports tf_keras (and so TensorFlow): the search's driver never needs it."""

from __future__ import annotations

from types import ModuleType

from raydet.cluster.runtime import use_legacy_keras


def keras() -> ModuleType:
    """tf_keras (Keras 2), for the callback a trial's Train workers make. Deferred: it loads TensorFlow, which only
    those workers need."""
    use_legacy_keras()  # before TensorFlow loads; harmless if it already has with the variable set
    import tf_keras

    return tf_keras
