"""Training's deferred imports, the one place it imports TensorFlow (with tf_keras and Ray Train's TensorFlow
trainer) and Ray Train's one private module: the driver's modules import without TensorFlow, which loads where a
model is fitted or written."""

from __future__ import annotations

from types import ModuleType

from raydet.cluster.runtime import use_legacy_keras


def tf() -> ModuleType:
    """TensorFlow, imported with tf-keras as its Keras. Deferred: only a worker (or the driver writing TensorBoard
    scalars) needs it."""
    use_legacy_keras()  # before TensorFlow loads; harmless if it already has with the variable set
    import tensorflow

    return tensorflow


def keras() -> ModuleType:
    """tf_keras (Keras 2: docs/STACK.md says why not Keras 3). Deferred: it loads TensorFlow."""
    use_legacy_keras()
    import tf_keras

    return tf_keras


def tensorflow_trainer() -> type:
    """Ray Train's ``TensorflowTrainer`` class. Deferred: ``ray.train.tensorflow`` loads TensorFlow."""
    use_legacy_keras()
    from ray.train.tensorflow import TensorflowTrainer

    return TensorflowTrainer


def train_context() -> ModuleType | None:
    """Ray Train's private ``ray.train.v2._internal.execution.context`` module, whose logger (named after its file)
    logs every report (raydet.train.worker._quiet_worker_logs); None on a Ray without it. Deferred: it is private
    and may be missing."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: its lines stay
        return None
    return context
