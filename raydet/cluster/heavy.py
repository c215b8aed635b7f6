"""The deferred imports of raydet.cluster.runtime, the one place the cluster package defers Ray: every package
imports ``runtime`` (for ``use_legacy_keras``), and most of them must not load Ray with it."""

from __future__ import annotations

from types import ModuleType


def ray() -> ModuleType:
    """Ray. Deferred: only connecting to (or starting) Ray needs it."""
    import ray

    return ray


def data_context() -> type:
    """Ray Data's ``DataContext`` class. Deferred: it loads Ray (and Ray Data)."""
    from ray.data import DataContext

    return DataContext
