"""Shared fixtures. Tests run on CPU with a local Ray of 2 CPUs, as on a user's laptop and in CI.

A test that starts Ray (``ray.init``, Ray Data, Ray Train, Serve, Tune, a ``ray start`` or a raydet command in a
subprocess) or otherwise takes seconds is marked ``slow``, so ``pytest -m "not slow"`` is a unit loop of a few
minutes. Two checks keep it so: ``ray_local`` refuses a test without the mark, and a test without it that leaves
Ray running in this process fails naming the mark.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

RACCOON = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "raccoon"


def pytest_configure(config):
    # tf-keras (Keras 2) in this process and, through the runtime env, in every Ray worker.
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray Train's controller looks at its workers every 2 s: it notices a finished or killed worker up to 2 s late.
    # The suite runs some 20 short trainings; polling every 0.5 s spares their waits and changes nothing else.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


_RAY_BEFORE = pytest.StashKey[bool]()  # whether Ray was running when the test's setup began


def _ray_running() -> bool:
    ray = sys.modules.get("ray")  # never imported: not running (and importing it here would cost seconds)
    return ray is not None and ray.is_initialized()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    item.stash[_RAY_BEFORE] = _ray_running()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    if item.get_closest_marker("slow") is None and not item.stash[_RAY_BEFORE] and _ray_running():
        pytest.fail(f"{item.nodeid} started Ray: mark it @pytest.mark.slow", pytrace=False)
    return result


@pytest.fixture
def ray_local(request):
    """A local Ray with 2 CPUs, shared by the tests that use it; a test that needs another Ray shuts it down.
    Only for tests marked slow."""
    import ray

    if request.node.get_closest_marker("slow") is None:
        pytest.fail(f"{request.node.nodeid} uses ray_local: mark it @pytest.mark.slow", pytrace=False)

    from raydet.cluster.runtime import runtime_env

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=runtime_env())
    yield ray


@pytest.fixture(scope="session")
def small_float_model():
    """raydet.detector.model's network at 32 px trained in this process on tests/quant_helpers.py's set (seeded:
    the same model every run), once per session: test_quantize's RUN and test_qat's --init-from. apply_qat,
    quantize and save copy it; no test changes it."""
    from quant_helpers import synthetic, train_small_model

    return train_small_model(synthetic(800, seed=0))


@pytest.fixture
def raccoon_dir() -> Path:
    if not RACCOON.is_dir():
        pytest.skip(f"real photos not found at {RACCOON}")
    return RACCOON


@pytest.fixture(scope="session")
def s3_server() -> dict:
    """A real S3-compatible server (moto's, in a thread on 127.0.0.1) for the session -> the standard AWS
    environment variables that point pyarrow (and a raydet subprocess) at it."""
    server_mod = pytest.importorskip(
        "moto.server", reason="moto[server] is a test dependency (pip install -e '.[test]')"
    )
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch) -> str:
    """A fresh empty bucket on ``s3_server``, this process's AWS environment pointed at it -> ``s3://<bucket>``."""
    import uuid

    import pyarrow.fs as pafs

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    bucket = f"raydet-{uuid.uuid4().hex[:12]}"
    pafs.S3FileSystem(
        endpoint_override=s3_server["AWS_ENDPOINT_URL"],
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        allow_bucket_creation=True,
    ).create_dir(bucket)
    return f"s3://{bucket}"
