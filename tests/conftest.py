"""Shared fixtures. Tests run on CPU with a local Ray of 2 CPUs, as on a user's laptop and in CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

RACCOON = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "raccoon"


def pytest_configure(config):
    # tf-keras (Keras 2) in this process and, through the runtime env, in every Ray worker.
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture
def ray_local():
    """A local Ray with 2 CPUs, shared by the tests that use it; a test that needs another Ray shuts it down."""
    import ray

    from raydet.runtime import runtime_env

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=runtime_env())
    yield ray


@pytest.fixture
def raccoon_dir() -> Path:
    if not RACCOON.is_dir():
        pytest.skip(f"real photos not found at {RACCOON}")
    return RACCOON
