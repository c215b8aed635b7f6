"""raydet.cluster.runtime: Ray Data may use every CPU inside ``data_uses_every_cpu`` and gets its default back after."""

from __future__ import annotations

import numpy as np
import pytest


def _run_tasks(ray, folder: str, wait: bool) -> list[dict]:
    """Two one-block map_batches tasks; each reports the reservation setting its Ray Data execution ran with and,
    with ``wait``, whether the other task ran at the same time: it waits (up to 60 s, no CPU used) until both
    have started, so the answer is about overlap, not about how long anything took."""

    def task(batch: dict) -> dict:  # defined here so that cloudpickle ships it by value to the workers
        import os
        import time
        import uuid

        from ray.data import DataContext

        me = os.path.join(folder, f"running_{uuid.uuid4().hex}")
        open(me, "w").close()
        deadline, together = time.monotonic() + (60 if wait else 0), False
        while not together and time.monotonic() < deadline:
            together = sum(f.startswith("running_") for f in os.listdir(folder)) >= 2
            time.sleep(0.02)
        time.sleep(0.1)  # still running while the other looks
        os.remove(me)
        reserved = DataContext.get_current().op_resource_reservation_enabled
        return {"reserved": np.array([reserved]), "together": np.array([together])}

    rows = ray.data.range(2, override_num_blocks=2).map_batches(task, batch_size=None).take_all()
    return [{k: bool(v) for k, v in r.items()} for r in rows]


@pytest.mark.slow
def test_map_tasks_use_both_cpus_inside_the_block_and_the_default_comes_back(ray_local, tmp_path):
    """Ray Data's executions inside the block run without the per-operator reservation (the setting travels to
    every task), two map tasks do run at once on the two CPUs, and Ray's default is back after the block."""
    from ray.data import DataContext

    from raydet.cluster.runtime import data_uses_every_cpu

    default = DataContext.get_current().op_resource_reservation_enabled
    assert default is True  # Ray 2.60's default, which halves a one-stage map on 2 CPUs (the module says why)
    (tmp_path / "outside").mkdir()
    assert {r["reserved"] for r in _run_tasks(ray_local, str(tmp_path / "outside"), wait=False)} == {True}
    (tmp_path / "inside").mkdir()
    with data_uses_every_cpu():
        inside = _run_tasks(ray_local, str(tmp_path / "inside"), wait=True)
    assert [r["reserved"] for r in inside] == [False, False]
    assert all(r["together"] for r in inside), inside  # each task saw the other one running beside it
    assert DataContext.get_current().op_resource_reservation_enabled == default


@pytest.mark.slow
def test_the_setting_is_restored_when_the_block_raises(ray_local):
    from ray.data import DataContext

    from raydet.cluster.runtime import data_uses_every_cpu

    default = DataContext.get_current().op_resource_reservation_enabled
    with pytest.raises(RuntimeError, match="boom"):
        with data_uses_every_cpu():
            raise RuntimeError("boom")
    assert DataContext.get_current().op_resource_reservation_enabled == default


@pytest.mark.parametrize(
    "value, wanted", [("1", True), ("true", True), (" YES ", True), ("0", False), ("", False), ("no", False)]
)
def test_dashboard_only_when_asked_for(monkeypatch, value, wanted):
    from raydet.cluster.runtime import DASHBOARD_ENV, dashboard_wanted

    monkeypatch.setenv(DASHBOARD_ENV, value)
    assert dashboard_wanted() is wanted


def test_dashboard_off_by_default(monkeypatch):
    from raydet.cluster.runtime import DASHBOARD_ENV, dashboard_wanted

    monkeypatch.delenv(DASHBOARD_ENV, raising=False)
    assert not dashboard_wanted()


@pytest.mark.slow
def test_a_local_ray_started_by_raydet_gives_every_worker_tf_keras(tmp_path):
    # No runtime_env on a local Ray (it would throw away the prestarted workers): the variable must reach the
    # workers through the environment the raylet inherits from the driver, even when the shell did not set it.
    import os
    import subprocess
    import sys

    script = (
        "import ray\n"
        "from raydet.cluster.runtime import init_ray\n"
        "init_ray(num_cpus=1)\n"
        "print('WORKER', ray.get(ray.remote(lambda: __import__('os').environ.get('TF_USE_LEGACY_KERAS')).remote()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "RAY_ADDRESS")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "WORKER 1" in done.stdout
