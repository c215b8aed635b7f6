"""Training's deferred imports, the one place it imports Ray Train's TensorFlow trainer and Ray Train's two private
modules (TensorFlow and tf_keras come from raydet.detector.heavy): the driver's modules import without TensorFlow,
which loads where a model is fitted or written."""

from __future__ import annotations

from types import ModuleType

from raydet.cluster.runtime import use_legacy_keras
from raydet.detector.heavy import keras, tf  # TensorFlow and tf_keras are imported in raydet.detector.heavy alone

__all__ = ["keras", "tensorflow_framework", "tensorflow_trainer", "tf", "train_context"]


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


def tensorflow_framework():
    """Ray Train's private ``TrainingFramework.TENSORFLOW``, which names the framework of a run on Ray's dashboard
    (raydet.train.backend); None on a Ray without it, as for any ``BackendConfig``."""
    try:
        from ray.train.v2._internal.util import TrainingFramework
    except ImportError:
        return None
    return TrainingFramework.TENSORFLOW
