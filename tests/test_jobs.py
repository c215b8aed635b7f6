"""`ray job submit` of jobs/*.py to a Ray head this test starts and owns (token auth, own ports, own temp dir; for
the whole pipeline, a head and a second node, so that training spreads over two nodes, with its data and output in
a bucket on a local S3-compatible server), and raydet commands run
with ``--address`` against another head whose Python cannot import the repository's raydet (the code must travel
as ``py_modules``).

Each head runs under ``setsid`` so that it and everything it starts form one process group, which the
fixture ends (TERM, then KILL) without touching any other Ray on the machine (docs/STACK.md, "Ray").
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from printed import assert_no_internal_lines, assert_printed_locations_exist, assert_short_clean_console

from raydet.cluster import runtime

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


def _ray_start(tmp: Path, log_name: str, env: dict, *args: str) -> subprocess.Popen:
    """`ray start --block ARGS --disable-usage-stats` under setsid, in ``tmp``, its output in tmp/LOG_NAME."""
    with open(tmp / log_name, "w") as log:  # the process keeps its own copy of the descriptor
        return subprocess.Popen(
            ["setsid", RAY, "start", "--block", *args, "--disable-usage-stats"],
            # No 30 s drain on SIGTERM (Ray 2.60's default, for Serve): the test's nodes have nothing to hand over.
            env=dict(env, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0"),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )


def _temp_dir(name: str) -> Path:
    """/tmp/NAME<this pid>: short, as Ray's socket paths must stay under 107 characters."""
    return Path("/tmp") / f"{name}{os.getpid()}"


def _start_head(tmp: Path, name: str, env: dict, *args: str, cpus: int = 2) -> tuple[subprocess.Popen, str, Path]:
    """`ray start --head --block ARGS` of ``cpus`` CPUs under setsid, its log in tmp/head.log, its temp dir
    /tmp/NAME<this pid>; returns (process, GCS address, temp dir)."""
    temp_dir = _temp_dir(name)
    gcs, client, agent = _free_ports(3)
    head = _ray_start(
        tmp,
        "head.log",
        env,
        *("--head", "--num-cpus", str(cpus), "--port", str(gcs), "--ray-client-server-port", str(client)),
        *("--dashboard-agent-listen-port", str(agent), "--temp-dir", str(temp_dir), *args),
    )
    return head, f"127.0.0.1:{gcs}", temp_dir


def _start_node(tmp: Path, gcs: str, env: dict, temp_dir: Path) -> subprocess.Popen:
    """`ray start --address GCS --block` of 1 CPU under setsid: one more node of the head's cluster, on this
    machine, on ports and in a temp dir of its own; its log in tmp/node.log."""
    [agent] = _free_ports(1)
    return _ray_start(
        tmp,
        "node.log",
        env,
        *("--address", gcs, "--num-cpus", "1", "--dashboard-agent-listen-port", str(agent)),
        *("--temp-dir", str(temp_dir)),
    )


def _wait_for_head(head: subprocess.Popen, tmp: Path, ready, what: str, timeout: float = 120) -> None:
    """Poll ``ready()`` every 2 s until true; fail with the head's log if it exits or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        if head.poll() is not None:
            pytest.fail(f"ray start --head exited {head.returncode}: {(tmp / 'head.log').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"the head did not {what} in {timeout:g} s: {(tmp / 'head.log').read_text()[-3000:]}")
        time.sleep(2)


def _stop_head(head: subprocess.Popen, temp_dir: Path | None) -> None:
    """End the head (or node) and everything it started (setsid made it a group leader, its pid is the group id),
    then remove ``temp_dir`` unless it is None. KILL after 5 s of TERM: the head without a dashboard took 11 s to
    end on TERM alone, and its files are removed here anyway."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            break
        try:
            head.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _head_env(**extra: str) -> dict:
    """This environment with token auth, tf-keras, this interpreter first on PATH and no RAY_ADDRESS."""
    env = dict(
        os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), TF_USE_LEGACY_KERAS="1", **extra
    )
    # The job's `python` is looked up on the head's PATH: make it this interpreter, as an activated venv would.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    return env


def _answers_job_list(url: str, env: dict) -> bool:
    return subprocess.run([RAY, "job", "list", "--address", url], env=env, capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A `ray start --head` of 2 CPUs with token auth; yields (dashboard URL, env for the `ray` CLI)."""
    tmp = tmp_path_factory.mktemp("head")
    env = _head_env()
    [dash] = _free_ports(1)
    head, _, temp_dir = _start_head(tmp, "rdj", env, "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash))
    url = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_head(head, tmp, lambda: _answers_job_list(url, env), "answer `ray job list`")
        yield url, env
    finally:
        _stop_head(head, temp_dir)


TWO_NODE_NAMES = ("rd2", "rd2n")  # temp dir names of two_node_head's head and second node (see _temp_dir)


@pytest.fixture(scope="module")
def two_node_head(tmp_path_factory, s3_server):
    """A head of 1 CPU with token auth and a second node of 1 CPU joined to it, both on this machine, each with its
    own temp dir (so each node's log monitor forwards only its own workers' lines, as on two machines), and both
    given ``s3_server``'s AWS environment (as a cluster's nodes have their bucket's credentials); yields
    (dashboard URL, env for the `ray` CLI), as ``ray_head``."""
    tmp = tmp_path_factory.mktemp("two")
    env = _head_env(**s3_server)
    [dash] = _free_ports(1)
    head, gcs, temp_dir = _start_head(
        tmp, TWO_NODE_NAMES[0], env, "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), cpus=1
    )
    url, node, node_dir = f"http://127.0.0.1:{dash}", None, _temp_dir(TWO_NODE_NAMES[1])

    def two_nodes() -> bool:
        status = subprocess.run([RAY, "status", "--address", gcs], env=env, capture_output=True, text=True)
        return status.returncode == 0 and status.stdout.count("node_") >= 2

    try:
        _wait_for_head(head, tmp, lambda: _answers_job_list(url, env), "answer `ray job list`")
        node = _start_node(tmp, gcs, env, node_dir)
        _wait_for_head(head, tmp, two_nodes, "count two nodes in `ray status`")
        yield url, env
    finally:
        if node is not None:
            _stop_head(node, node_dir)
        _stop_head(head, temp_dir)


def submit(ray_head, *entrypoint: str, runtime_env: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir .` from the repository root; waits for the job and returns the CLI's output."""
    url, env = ray_head
    cmd = [RAY, "job", "submit", "--address", url, "--working-dir", "."]
    if runtime_env:
        cmd += ["--runtime-env", "jobs/runtime_env.yaml"]
    return subprocess.run(cmd + ["--", *entrypoint], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _in_job(monkeypatch, **job_runtime_env) -> None:
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": job_runtime_env}))


CODE = {"py_modules": [str(REPO / "raydet")], "excludes": runtime.PACKAGE_EXCLUDES}
KERAS = {"env_vars": {"TF_USE_LEGACY_KERAS": "1"}}


def test_outside_a_job_the_driver_ships_the_code_and_the_keras_switch(monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert runtime.driver_runtime_env() == {**KERAS, **CODE}
    json.dumps(runtime.driver_runtime_env())  # plain JSON: Ray Client and the job API take it as it is


def test_driver_runtime_env_leaves_out_what_the_job_sets(monkeypatch):
    # Ray refuses a ray.init runtime_env that repeats a job's field or env var, even with the same value.
    monkeypatch.chdir(REPO)  # a job's driver runs in its unpacked working dir, which holds the raydet it imported
    _in_job(monkeypatch, working_dir="gcs://x.zip", env_vars={"TF_USE_LEGACY_KERAS": "1"})
    assert runtime.driver_runtime_env() == {}
    _in_job(monkeypatch, working_dir="gcs://x.zip")
    assert runtime.driver_runtime_env() == KERAS


def test_a_job_whose_working_dir_lacks_raydet_gets_it_shipped(monkeypatch, tmp_path):
    # `ray job submit --working-dir configs/`: the driver runs in tmp_path, raydet came from elsewhere.
    monkeypatch.chdir(tmp_path)
    _in_job(monkeypatch, working_dir="gcs://x.zip")
    assert runtime.driver_runtime_env() == {**KERAS, **CODE}
    # The job's own excludes (jobs/runtime_env.yaml has some) cannot be named twice: they apply to our upload.
    _in_job(monkeypatch, working_dir="gcs://x.zip", excludes=[".git/"])
    assert runtime.driver_runtime_env() == {**KERAS, "py_modules": CODE["py_modules"]}


def test_a_job_with_its_own_py_modules_keeps_them(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _in_job(monkeypatch, py_modules=["gcs://raydet.zip"])
    assert runtime.driver_runtime_env() == KERAS


def test_the_shipped_package_leaves_junk_out_and_stays_small(tmp_path):
    from ray._private.runtime_env.packaging import create_package

    # A copy of the package with what a driver's folder may hold beside the code.
    pkg = tmp_path / "raydet"
    shutil.copytree(REPO / "raydet", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "boxes.cpython-311.pyc").write_bytes(b"\0" * 1000)
    (pkg / "stray.pyc").write_bytes(b"\0")
    (pkg / "raydet.egg-info").mkdir()
    (pkg / "raydet.egg-info" / "PKG-INFO").write_text("x")
    zipped = tmp_path / "pkg.zip"
    # What upload_py_modules_if_needed does with our fields (include_parent_dir: the zip holds raydet/...).
    create_package(
        str(pkg),
        zipped,
        include_gitignore=True,
        include_parent_dir=True,
        excludes=runtime.code_runtime_env()["excludes"],
    )
    names = zipfile.ZipFile(zipped).namelist()
    assert "raydet/__init__.py" in names and "raydet/cluster/runtime.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "egg-info" in n], names
    # Measured: 457 KB for the 42 files of the package (Ray's zip stores them uncompressed).
    assert zipped.stat().st_size < 1_000_000, zipped.stat().st_size


@pytest.mark.slow
def test_serve_job_deploys_an_application_that_outlives_the_job(ray_head, tmp_path):
    """jobs/serve.py: the job deploys raydet serve (--detach) and ends; the application answers on the head."""
    import http.client
    import io

    import handset as H
    import numpy as np
    from PIL import Image

    run = H.write_run(tmp_path / "run")
    [port] = _free_ports(1)
    proc = submit(ray_head, "python", "jobs/serve.py", str(run), "--port", str(port))
    assert proc.returncode == 0 and "succeeded" in proc.stdout, proc.stdout + proc.stderr
    assert f"POST http://127.0.0.1:{port}/detect" in proc.stdout
    buf = io.BytesIO()
    Image.fromarray(H.paint([H.Obj(1, 1, 0, 5, 1)])).save(buf, "PNG")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/detect", body=buf.getvalue())
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    assert resp.status == 200 and [d["class"] for d in answer["detections"]] == ["red"]
    np.testing.assert_allclose(answer["detections"][0]["box"], H.box(H.Obj(1, 1, 0, 5, 1)) * 32, atol=0.5)
    # `serve shutdown` (what the README says stops it) against the head's dashboard
    url, env = ray_head
    done = subprocess.run(
        [str(Path(RAY).with_name("serve")), "shutdown", "-y", "--address", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# Inside the job: connect the way every raydet command does, then ask a remote task what it sees.
PROBE = """
import os, ray
from raydet.cluster.runtime import init_ray
init_ray(None)
@ray.remote
def probe():
    import raydet
    here = set(os.listdir("."))  # the worker runs in the uploaded working dir
    return os.environ.get("TF_USE_LEGACY_KERAS"), {"raydet", "jobs"} <= here, bool({".venv", ".git"} & here)
print("PROBE", ray.get(probe.remote()))
from raydet.cluster.runtime import driver_runtime_env  # the job's working dir carries raydet: not shipped a second time
print("SHIPS_AGAIN", "py_modules" in driver_runtime_env())
"""


@pytest.mark.slow
@pytest.mark.parametrize("with_runtime_env", [True, False], ids=["runtime_env_yaml", "working_dir_only"])
def test_job_workers_get_legacy_keras_and_no_big_folders(ray_head, with_runtime_env):
    proc = submit(ray_head, "python", "-c", PROBE, runtime_env=with_runtime_env, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # TF_USE_LEGACY_KERAS reaches the worker either from the yaml or from init_ray; the package is uploaded,
    # .venv and .git are not.
    assert "PROBE ('1', True, False)" in proc.stdout, proc.stdout[-3000:]
    assert "SHIPS_AGAIN False" in proc.stdout, proc.stdout[-3000:]


def _job_lines(printed: str) -> str:
    """The job's part of what `ray job submit` printed: the lines after the CLI's "Tailing logs until the job
    exits" up to its closing block (a dashed line, "Job '...' succeeded", a dashed line)."""
    lines = printed.splitlines()
    starts = [i for i, line in enumerate(lines) if "Tailing logs until the job exits" in line]
    ends = [i for i, line in enumerate(lines) if "Job 'raysubmit_" in line and "succeeded" in line]
    assert starts and ends and starts[0] < ends[-1] - 1, printed[-3000:]
    return "\n".join(lines[starts[0] + 1 : ends[-1] - 1])


@pytest.mark.slow
def test_pipeline_job_on_two_nodes_trains_across_them_through_a_bucket(two_node_head, s3_bucket, tmp_path):
    """jobs/pipeline.py by `ray job submit` to a cluster of two 1-CPU nodes, its data and its output in a bucket
    (a real S3-compatible server): every stage runs, reading and writing only there; each test image is evaluated
    once by each model; every location the job printed exists; its console is raydet's short one; prepare parsed
    and decoded on both nodes and the two Ray Train workers ran one on each. Then, from this machine, `raydet run`
    again finds every stage done in the bucket, and `raydet predict` runs the bucket's int8 model on local photos.
    """
    from raydet.cluster import storage
    from raydet.config import SynthConfig
    from raydet.export.tflite import TFLiteModel
    from raydet.ingest.synth import write_synthetic

    write_synthetic(SynthConfig(out=str(tmp_path / "data"), images=64, image_size=64, seed=3))
    storage.upload(tmp_path / "data", s3_bucket + "/data", storage.list_files(str(tmp_path / "data")))
    out = s3_bucket + "/out"
    flags = ["--data", s3_bucket + "/data", "--out", out, "--image-size", "32", "--epochs", "2"]
    flags += ["--workers", "2", "--batch-size", "16", "--backbone", "cnn"]
    proc = submit(two_node_head, "python", "jobs/pipeline.py", *flags, timeout=540)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    assert_short_clean_console(_job_lines(proc.stdout), epochs=2)  # what `raydet run` shows, job or not
    assert "AP50" in proc.stdout  # the results table was printed by the job
    files = set(storage.list_files(out))
    evaluated = json.loads(storage.read_text(out + "/runs/main/eval.json"))["eval"]
    assert {
        "pipeline.json",
        "prep/manifest.json",
        "runs/main/config.json",
        "runs/main/model.keras",
        "runs/main/model_int8.tflite",
        f"runs/main/{evaluated}/report.html",
    } <= files
    assert any(f.startswith("prep/train/") and f.endswith(".parquet") for f in files)
    assert_printed_locations_exist(proc.stdout, s3_bucket, at_least=8)
    manifest = json.loads(storage.read_text(out + "/prep/manifest.json"))
    assert manifest["images_loaded"] == 64 and manifest["source"] == s3_bucket + "/data"
    # the synthetic set's test split: round(64 * test_fraction 0.2) = 13 images, each evaluated once by each model
    # and listed in the COCO ground truth
    assert manifest["splits"] == {"train": 51, "test": 13}
    report = json.loads(storage.read_text(f"{out}/runs/main/{evaluated}/report.json"))
    assert set(report["models"]) == {"float", "int8"}
    assert [report["models"][m]["images"] for m in ("float", "int8")] == [13, 13]
    truth = json.loads(storage.read_text(f"{out}/runs/main/{evaluated}/coco/ground_truth.json"))
    assert len(truth["images"]) == 13
    history = storage.read_text(out + "/runs/main/history.jsonl").splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [1, 2]
    config = json.loads(storage.read_text(out + "/runs/main/config.json"))
    assert config["image_size"] == 32 and config["train"]["epochs"] == 2 and config["prep"] == out + "/prep"
    drawn = [f.rsplit("/", 1)[-1] for f in files if f.startswith(f"runs/main/{evaluated}/images/")]
    for model in ("float", "int8"):  # each of the 13 (fewer than --draw's 16) and a contact sheet, per model
        assert len([name for name in drawn if name.startswith(f"{model}_")]) == 13, drawn
        assert f"contact_sheet_{model}.png" in drawn, drawn
    page = storage.read_text(f"{out}/runs/main/{evaluated}/report.html")
    assert f"{report['models']['int8']['coco_map_50']:.3f}" in page  # the page shows the report's AP50
    # the int8 file in the bucket is a detector for that config: 32 px uint8 in, stride-4 maps of every class out
    (tmp_path / "model_int8.tflite").write_bytes(storage.read_bytes(out + "/runs/main/model_int8.tflite"))
    maps = TFLiteModel(str(tmp_path / "model_int8.tflite")).predict(np.zeros((1, 32, 32, 3), np.uint8))
    assert maps["heatmap"].shape == (1, 8, 8, len(config["classes"])) and maps["boxes"].shape == (1, 8, 8, 4)
    # Where Ray Train's workers ran, from the cluster's state API: one per node (1 CPU per node, 1 CPU per
    # worker). A worker group that Ray Train restarted (FailureConfig; on a loaded machine a health check can
    # time out) adds two more actors, again one per node, so every node hosts the same number of them.
    per_node = _train_workers_per_node(two_node_head)
    assert sum(per_node.values()) >= 2 and sum(per_node.values()) % 2 == 0, per_node
    assert len(per_node) == 2 and len(set(per_node.values())) == 1, per_node
    # prepare's Ray Data tasks parsed and decoded on both nodes too (the manifest records where each ran)
    assert manifest["stats"]["cpus"] == 2
    for stage in ("parse", "decode"):
        assert set(manifest["stats"]["nodes"][stage]) == set(per_node), (stage, manifest["stats"]["nodes"])
    # the job ran in a working dir under the nodes' temp dirs: no URI became a local folder there
    assert not [p for name in TWO_NODE_NAMES for p in _temp_dir(name).rglob("s3:*")], "a URI became a local folder"
    _again_from_here(flags, out, evaluated, tmp_path)


def _train_workers_per_node(cluster) -> Counter:
    """How many RayTrainWorker actors the cluster's state API lists on each node id."""
    url, env = cluster
    listed = subprocess.run(
        [RAY, "list", "actors", "--address", url, "--filter", "class_name=RayTrainWorker", "--detail"]
        + ["--format", "json", "--limit", "100"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    return Counter(actor["node_id"] for actor in json.loads(listed.stdout))


def _again_from_here(flags: list[str], out: str, evaluated: str, tmp_path: Path) -> None:
    """`raydet run FLAGS` on a local Ray finds every stage in the bucket done, evaluate too (its report, which
    RUN/eval.json points at, is of the same models and settings: the table is printed from it); `raydet predict`
    with the bucket's int8 model writes every local photo's detections; no URI becomes a local folder."""
    from raydet.cluster import storage

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYDET_VERBOSE")}  # AWS_*: s3_bucket's
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    def raydet(*args: str, timeout: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "raydet.cli", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )

    again = raydet("run", *flags, timeout=600)
    assert again.returncode == 0, again.stdout[-4000:]
    assert "prepare: " in again.stdout and "matches, skipped" in again.stdout
    assert "has 2 of 2 epochs, skipped" in again.stdout and "quantize: int8 newer than" in again.stdout
    assert f"evaluate: {out}/runs/main/{evaluated}/report.json is of these models and settings, skipped" in again.stdout
    assert_no_internal_lines(again.stdout)
    assert json.loads(storage.read_text(out + "/runs/main/eval.json"))["eval"] == evaluated
    assert "AP50" in again.stdout  # the results table, from that report
    assert_printed_locations_exist(again.stdout, out, at_least=5)
    images = str(tmp_path / "data" / "JPEGImages")
    predicted = raydet(
        "predict", out + "/runs/main", images, "--out", str(tmp_path / "pred"), "--model", "int8", timeout=300
    )
    assert predicted.returncode == 0, predicted.stdout[-4000:]
    result = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert result["complete"] and len(result["images"]) == 64 and result["model"] == "int8"
    assert not list(cwd.rglob("s3:*")), "a URI became a local folder"


# The sitecustomize of a head whose Python cannot import the repository's raydet, as on a cluster where raydet is
# not installed. The venv's editable install maps `raydet` to the repository with a sys.meta_path finder
# (__editable___raydet_0_1_0_finder.py, installed by a .pth), and Ray puts the driver's folder on the workers'
# sys.path; this finder, first on sys.meta_path, looks on sys.path without the repository and without the editable
# finder, so only a copy that lives elsewhere (the py_modules Ray unpacks) imports. Each lookup is logged.
BLOCKER = """
import os, sys
from importlib.machinery import PathFinder

_REPO = os.environ["RAYDET_TEST_REPO"]


class _NoRepositoryRaydet:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "raydet":
            return None
        entries = [p for p in sys.path if os.path.realpath(p or ".") != _REPO and "__editable__" not in p]
        spec = PathFinder.find_spec(name, entries)
        if spec is not None and spec.origin.startswith(_REPO + os.sep):
            spec = None
        with open(os.environ["RAYDET_TEST_IMPORT_LOG"], "a") as log:
            log.write(f"{os.getpid()} {spec.origin if spec else 'BLOCKED'} {sys.argv[0]}\\n")
        if spec is None:
            raise ModuleNotFoundError("No module named 'raydet' (blocked by tests/test_jobs.py)", name=name)
        return spec

    @staticmethod
    def invalidate_caches():
        pass


sys.meta_path.insert(0, _NoRepositoryRaydet)
"""


@pytest.fixture(scope="module")
def head_without_raydet(tmp_path_factory):
    """A head (no dashboard) whose processes cannot import the repository's raydet; yields (GCS address, env for
    drivers without the blocker, the import log, the head's temp dir)."""
    tmp = tmp_path_factory.mktemp("blocked")
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(BLOCKER)
    log = tmp / "imports.log"
    log.touch()
    env = _head_env(RAYDET_TEST_REPO=str(REPO), RAYDET_TEST_IMPORT_LOG=str(log))
    head, address, temp_dir = _start_head(
        tmp, "rdb", dict(env, PYTHONPATH=str(tmp / "site")), "--include-dashboard", "false"
    )
    try:
        _wait_for_head(head, tmp, lambda: "Ray runtime started" in (tmp / "head.log").read_text(), "start")
        yield address, env, log, temp_dir
    finally:
        _stop_head(head, temp_dir)


def _worker_imports(log: Path, since: int) -> list[tuple[str, str]]:
    """(origin or BLOCKED, process) of each `import raydet` logged by a Ray worker after byte ``since``."""
    lines = log.read_text()[since:].splitlines()
    return [
        (origin, proc)
        for _pid, origin, proc in (line.split(" ", 2) for line in lines)
        if proc.endswith("default_worker.py")
    ]


BARE_DRIVER = """
import ray, sys
ray.init(address=sys.argv[1])  # no runtime_env: what raydet did before it shipped itself
def try_import():
    try:
        import raydet
        return raydet.__file__
    except ImportError as exc:
        return type(exc).__name__
print("BARE", ray.get(ray.remote(try_import).remote()))
"""


@pytest.mark.slow
def test_the_blocked_head_cannot_import_raydet_without_py_modules(head_without_raydet):
    address, env, log, _ = head_without_raydet
    since = log.stat().st_size
    # From the repository root: Ray adds the driver's folder to the workers' sys.path, the blocker refuses it too.
    done = subprocess.run(
        [sys.executable, "-c", BARE_DRIVER, address], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "BARE ModuleNotFoundError" in done.stdout, done.stdout[-2000:]
    assert [origin for origin, _ in _worker_imports(log, since)] == ["BLOCKED"]  # and nothing else imported it


# Every kind of process raydet starts, on a cluster without raydet: a plain task, an actor created by a task with
# raydet's runtime_env() (as the Ray Train controller creates its workers), and a Ray Train worker given
# train.py's worker_runtime_env (runtime_env() plus env vars). Each reports where raydet came from.
INHERIT_DRIVER = """
import sys, ray
from raydet.cluster import runtime
runtime.init_ray(sys.argv[1])

def where():
    import raydet
    return raydet.__file__

@ray.remote
class Worker:
    def where(self):
        return where()

@ray.remote
def controller():
    worker = Worker.options(runtime_env=runtime.runtime_env()).remote()
    return ray.get(worker.where.remote())

def loop(config):
    open(config["out"], "w").write(where())

from ray.train import RunConfig, ScalingConfig
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
env = runtime.runtime_env()
env["env_vars"]["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"
DataParallelTrainer(loop, train_loop_config={"out": sys.argv[2] + "/train.txt"},
                    scaling_config=ScalingConfig(num_workers=1),
                    run_config=RunConfig(storage_path=sys.argv[2], worker_runtime_env=env)).fit()
print("TASK", ray.get(ray.remote(where).remote()))
print("ACTOR", ray.get(controller.remote()))
print("TRAIN", open(sys.argv[2] + "/train.txt").read())
"""


@pytest.mark.slow
def test_tasks_actors_and_train_workers_import_the_shipped_raydet(head_without_raydet, tmp_path):
    address, env, log, temp_dir = head_without_raydet
    done = subprocess.run(
        [sys.executable, "-c", INHERIT_DRIVER, address, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for kind in ("TASK", "ACTOR", "TRAIN"):
        [origin] = [line.split(" ", 1)[1] for line in done.stdout.splitlines() if line.startswith(kind + " ")]
        assert _shipped(origin, temp_dir), f"{kind}: raydet from {origin}, not from the py_modules Ray unpacked"


def _shipped(origin: str, temp_dir: Path) -> bool:
    """Whether ``origin`` (a raydet/__init__.py) is a py_modules copy Ray unpacked under ``temp_dir``."""
    return (
        origin.startswith(f"{temp_dir}/session_")
        and "/runtime_resources/py_modules_files/" in origin
        and origin.endswith("/raydet/__init__.py")
    )


@pytest.mark.slow
def test_raydet_prepare_runs_on_a_cluster_without_raydet(head_without_raydet, tmp_path):
    from raydet.config import SynthConfig
    from raydet.ingest.synth import write_synthetic

    address, env, log, temp_dir = head_without_raydet
    write_synthetic(SynthConfig(out=str(tmp_path / "voc"), images=8, image_size=32))
    since = log.stat().st_size
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("raydet")),
            "prepare",
            str(tmp_path / "voc"),
            "--out",
            str(tmp_path / "prep"),
            "--image-size",
            "32",
            "--address",
            address,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert json.loads((tmp_path / "prep" / "manifest.json").read_text())["images_loaded"] == 8
    imports = _worker_imports(log, since)
    # Ray Data's parse and decode tasks imported raydet, every time from the uploaded copy.
    assert imports and all(_shipped(origin, temp_dir) for origin, _ in imports), imports
