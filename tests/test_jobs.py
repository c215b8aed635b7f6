"""`ray job submit` of jobs/*.py to a Ray head this test starts and owns (token auth, own ports, own temp dir).

The head runs under ``setsid`` so that it and everything it starts form one process group, which the
fixture ends (TERM, then KILL) without touching any other Ray on the machine (docs/STACK.md, "Ray").
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raydet import runtime

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A `ray start --head` of 2 CPUs with token auth; yields (dashboard URL, env for the `ray` CLI)."""
    tmp = tmp_path_factory.mktemp("head")
    # Short temp dir: Ray's socket paths must stay under 107 characters.
    temp_dir = Path("/tmp") / f"rdj{os.getpid()}"
    gcs, dash, client, agent = _free_ports(4)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
               TF_USE_LEGACY_KERAS="1")
    # The job's `python` is looked up on the head's PATH: make it this interpreter, as an activated venv would.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    log = open(tmp / "head.log", "w")
    head = subprocess.Popen(
        ["setsid", RAY, "start", "--head", "--block", "--num-cpus", "2", "--port", str(gcs),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
         "--dashboard-agent-listen-port", str(agent), "--temp-dir", str(temp_dir), "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if head.poll() is not None:
                pytest.fail(f"ray start --head exited {head.returncode}: {(tmp / 'head.log').read_text()[-3000:]}")
            probe = subprocess.run([RAY, "job", "list", "--address", url], env=env, capture_output=True, text=True)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the head did not answer `ray job list` in 120 s: {probe.stderr[-2000:]}")
            time.sleep(2)
        yield url, env
    finally:
        # setsid made the head a group leader: its pid is the group id of everything it started.
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def submit(ray_head, *entrypoint: str, runtime_env: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir .` from the repository root; waits for the job and returns the CLI's output."""
    url, env = ray_head
    cmd = [RAY, "job", "submit", "--address", url, "--working-dir", "."]
    if runtime_env:
        cmd += ["--runtime-env", "jobs/runtime_env.yaml"]
    return subprocess.run(cmd + ["--", *entrypoint], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_driver_runtime_env_leaves_out_what_the_job_sets(monkeypatch):
    # Ray refuses a ray.init runtime_env that repeats a job env var, even with the same value.
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert runtime.driver_runtime_env() == {"env_vars": {"TF_USE_LEGACY_KERAS": "1"}}
    job = {"runtime_env": {"working_dir": "gcs://x.zip", "env_vars": {"TF_USE_LEGACY_KERAS": "1"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert runtime.driver_runtime_env() == {}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://x.zip"}}))
    assert runtime.driver_runtime_env() == {"env_vars": {"TF_USE_LEGACY_KERAS": "1"}}


# Inside the job: connect the way every raydet command does, then ask a remote task what it sees.
PROBE = """
import os, ray
from raydet.runtime import init_ray
init_ray(None)
@ray.remote
def probe():
    import raydet
    here = set(os.listdir("."))  # the worker runs in the uploaded working dir
    return os.environ.get("TF_USE_LEGACY_KERAS"), {"raydet", "jobs"} <= here, bool({".venv", ".git"} & here)
print("PROBE", ray.get(probe.remote()))
"""


@pytest.mark.slow
@pytest.mark.parametrize("with_runtime_env", [True, False], ids=["runtime_env_yaml", "working_dir_only"])
def test_job_workers_get_legacy_keras_and_no_big_folders(ray_head, with_runtime_env):
    proc = submit(ray_head, "python", "-c", PROBE, runtime_env=with_runtime_env, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # TF_USE_LEGACY_KERAS reaches the worker either from the yaml or from init_ray; the package is uploaded,
    # .venv and .git are not.
    assert "PROBE ('1', True, False)" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.slow
def test_pipeline_job_succeeds_and_writes_its_report(ray_head, tmp_path):
    out = tmp_path / "out"
    proc = submit(ray_head, "python", "jobs/pipeline.py", "--out", str(out), "--images", "64", "--image-size", "32",
                  "--epochs", "1", "--workers", "1", "--batch-size", "16", timeout=540)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    report = json.loads((out / "runs" / "main" / "eval" / "report.json").read_text())
    assert set(report["models"]) == {"float", "int8"}
    assert report["models"]["int8"]["images"] > 0
    assert "AP50" in proc.stdout  # the results table was printed by the job
