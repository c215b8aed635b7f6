"""raydet.cluster.resources: bundles packed per node, a fixed cluster refused at once, an autoscaler asked and waited
for.

The waiting and timeout logic runs for real against a fake cloud: a clock that only moves when the code sleeps,
nodes that join some (fake) seconds after the request, and the requests recorded. The refusals, and train's and
evaluate's wiring (the real ``request_resources`` on a local Ray), run against the tests' local 2-CPU Ray.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from prep_helpers import make_prep

from raydet.cluster import resources as R
from raydet.config import EvaluateConfig, TrainConfig

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"
GPU_WORKER = {"CPU": 1.0, "GPU": 1}  # raydet.train.driver.resources_per_worker of a --gpu run
G5 = {"CPU": 4, "GPU": 1}  # cluster.yaml's ray.worker.gpu
HEAD = {"CPU": 4}  # cluster.yaml's head (m5.xlarge)


def cluster_yaml_autoscaler() -> R.Autoscaler:
    return R.autoscaler_from_config(yaml.safe_load(CLUSTER_YAML.read_text()), "cluster.yaml")


class FakeCloud:
    """The head, and nodes that join ``after`` (fake) seconds past the first request; a clock that only the sleeps
    move; every request with the time it was made."""

    def __init__(self, joins: list[tuple[float, dict]]):
        self.now, self.joins, self.requests, self.lines = 0.0, joins, [], []

    def nodes(self) -> list[dict]:
        asked = self.requests[0][0] if self.requests else None
        return [HEAD] + [node for after, node in self.joins if asked is not None and self.now >= asked + after]

    def request(self, bundles: list[dict]) -> None:
        self.requests.append((self.now, bundles))

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def hooks(self) -> dict:
        return {
            "read_nodes": self.nodes,
            "request": self.request,
            "clock": lambda: self.now,
            "sleep": self.sleep,
            "report": self.lines.append,
        }


# ------------------------------------------------------------------------------------------- reading the config
def test_cluster_yaml_is_read_as_its_autoscaler(tmp_path, monkeypatch):
    scaler = cluster_yaml_autoscaler()
    # the head type (no max_workers: Ray's default for it is 0) launches nothing; the GPU type up to 4
    assert scaler.node_types == (R.NodeType("ray.worker.gpu", G5, 4.0),)
    assert scaler.max_nodes == 4.0
    # `ray up` writes the filled-in config as JSON to the head's ~/ray_bootstrap_config.yaml
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(json.dumps(yaml.safe_load(CLUSTER_YAML.read_text())))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert R.read_autoscaler("auto", path).node_types == scaler.node_types
    assert R.read_autoscaler(None, path) is None  # raydet started a local Ray: nobody scales it
    assert R.read_autoscaler("local", path) is None
    assert R.read_autoscaler("auto", tmp_path / "absent.yaml") is None
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # inside `ray job submit`
    assert R.read_autoscaler(None, path) is not None


def test_node_type_defaults_follow_ray():
    config = {
        "max_workers": 3,
        "head_node_type": "h",
        "available_node_types": {
            "h": {"resources": {"CPU": 2}},
            "w": {"resources": {"CPU": 8}},
            "off": {"resources": {"CPU": 8}, "max_workers": 0},
        },
    }
    scaler = R.autoscaler_from_config(config, "c")
    assert scaler.node_types == (R.NodeType("w", {"CPU": 8}, 3.0),)  # w: the global max; h and off: none
    assert R.autoscaler_from_config({}, "c") == R.Autoscaler(node_types=None, max_nodes=float("inf"), source="c")


# ------------------------------------------------------------------------------------------- packing
def test_each_bundle_must_fit_on_one_node():
    # 4 CPUs in all, but after one 2-CPU bundle the 3-CPU node has 1 left
    assert not R.fits([{"CPU": 2}] * 2, [{"CPU": 3}, {"CPU": 1}])
    assert (
        R.shortfall([{"CPU": 2}] * 2, [{"CPU": 3}, {"CPU": 1}])
        == "needs 2 x (2 CPUs), each on one node, but the nodes have 3 CPUs; 1 CPU"
    )
    assert R.fits([{"CPU": 2}] * 2, [{"CPU": 4}]) and R.shortfall([{"CPU": 2}] * 2, [{"CPU": 4}]) is None
    # a GPU on a node without a free CPU does not hold a 1 CPU + 1 GPU worker
    assert not R.fits([GPU_WORKER], [{"CPU": 4}, {"GPU": 1}])
    assert R.fits([GPU_WORKER], [HEAD, G5])
    # largest first: the 3-CPU bundle takes the 3-CPU node, the 1-CPU one the other (in the given order it would not)
    assert R.fits([{"CPU": 1}, {"CPU": 3}], [{"CPU": 3}, {"CPU": 1}])
    assert R.fits([], [])


def test_shortfall_names_every_missing_total():
    # 3 workers of 1 CPU + 1 GPU on one 2-CPU node: 3 > 2 CPUs and 3 > 0 GPUs
    assert R.shortfall([GPU_WORKER] * 3, [{"CPU": 2}]) == "needs 3 CPUs, 3 GPUs, but the cluster has 2 CPUs, 0 GPUs"
    assert R.shortfall([{"CPU": 0.5, "GPU": 1}] * 3, [{"CPU": 2}]) == "needs 3 GPUs, but the cluster has 0 GPUs"


def test_what_the_autoscaler_can_never_launch():
    scaler = cluster_yaml_autoscaler()
    assert R.never_fits([GPU_WORKER] * 4, [HEAD], scaler) is None  # 0 + 4 x 1 GPU = 4
    # 5 > 0 + 4 x 1 GPU
    assert R.never_fits([GPU_WORKER] * 5, [HEAD], scaler) == (
        "needs 5 GPUs, but the cluster has 0 and its autoscaler can add at most 4 "
        "(ray.worker.gpu: 4 CPUs, 1 GPU each, at most 4; worker nodes in all: at most 4)"
    )
    assert R.never_fits([{"CPU": 8, "GPU": 1}], [HEAD], scaler).startswith(
        "needs 1 x (8 CPUs, 1 GPU) on one node, but no node has that and no node type its autoscaler can launch does"
    )
    # the overall limit: 4 nodes in all, the richest type first -> 3 x 8 + 1 x 2 = 26 CPUs
    two = R.Autoscaler(
        node_types=(R.NodeType("big", {"CPU": 8}, 3), R.NodeType("small", {"CPU": 2}, 3)), max_nodes=4, source="c"
    )
    assert R.never_fits([{"CPU": 1}] * 26, [], two) is None
    assert "needs 27 CPUs, but the cluster has 0 and its autoscaler can add at most 26" in R.never_fits(
        [{"CPU": 1}] * 27, [], two
    )
    # node types whose resources the config leaves out: nothing can be ruled out
    unknown = R.Autoscaler(node_types=(R.NodeType("w", {}, 4),), max_nodes=4, source="c")
    assert R.never_fits([{"GPU": 100}], [], unknown) is None


# ------------------------------------------------------------------------------------------- waiting (fake cloud)
def test_waits_for_the_autoscaler_until_the_nodes_join():
    cloud = FakeCloud(joins=[(40, G5), (95, G5)])  # one GPU node 40 s after the request, the second at 95 s
    waited = R.ensure_resources(
        [GPU_WORKER] * 2, what="--workers 2 --gpu", timeout_s=900, autoscaler=cluster_yaml_autoscaler(), **cloud.hooks()
    )
    # looks every 5 s: 5, 10, ..., 95; a line at 30, 60 and 90 s
    assert waited == 95 and cloud.now == 95
    assert cloud.requests == [(0, [GPU_WORKER] * 2), (95, [])]  # asked once, withdrawn once there
    assert cloud.lines == [
        "--workers 2 --gpu needs 2 CPUs, 2 GPUs; 0 of 2 GPUs in the cluster: asked the autoscaler (cluster.yaml), "
        "waiting up to 900 s",
        "--workers 2 --gpu: waiting for the autoscaler: 0 of 2 GPUs in the cluster after 30 s (timeout 900 s)",
        "--workers 2 --gpu: waiting for the autoscaler: 1 of 2 GPUs in the cluster after 60 s (timeout 900 s)",
        "--workers 2 --gpu: waiting for the autoscaler: 1 of 2 GPUs in the cluster after 90 s (timeout 900 s)",
        "--workers 2 --gpu: the cluster holds it after 95 s",
    ]


def test_timeout_names_what_is_missing_and_withdraws_the_request():
    cloud = FakeCloud(joins=[(40, G5)])  # the second GPU node never comes (spot capacity, say)
    with pytest.raises(
        ValueError,
        match=r"--workers 2 --gpu: the autoscaler did not make room within 42 s "
        r"\(--resource-timeout\): 1 of 2 GPUs in the cluster",
    ):
        R.ensure_resources(
            [GPU_WORKER] * 2,
            what="--workers 2 --gpu",
            timeout_s=42,
            autoscaler=cluster_yaml_autoscaler(),
            **cloud.hooks(),
        )
    # sleeps of 5 s to 40 s, then the 2 s left: it gives up at the timeout, not a poll later
    assert cloud.now == 42
    assert cloud.requests == [(0, [GPU_WORKER] * 2), (42, [])]
    assert len(cloud.lines) == 2  # the start and the 30 s line


def test_nothing_is_asked_when_it_fits_or_never_can():
    cloud = FakeCloud(joins=[(0, G5)])
    assert (
        R.ensure_resources([{"CPU": 4}], what="w", timeout_s=900, autoscaler=cluster_yaml_autoscaler(), **cloud.hooks())
        == 0.0
    )  # the head holds it
    assert (cloud.requests, cloud.lines, cloud.now) == ([], [], 0)
    with pytest.raises(ValueError, match="needs 5 GPUs, but the cluster has 0 and its autoscaler can add at most 4"):
        R.ensure_resources(
            [GPU_WORKER] * 5,
            what="--workers 5 --gpu",
            timeout_s=900,
            autoscaler=cluster_yaml_autoscaler(),
            **cloud.hooks(),
        )
    assert (cloud.requests, cloud.now) == ([], 0)  # refused before asking, without waiting


# ------------------------------------------------------------------------------------------- a real local Ray
def test_fixed_cluster_refuses_at_once_with_the_numbers(ray_local, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    scaler = R.read_autoscaler(None)
    assert scaler is None  # the tests' own Ray has no autoscaler
    asked = []
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"^--workers 3 --gpu needs 3 GPUs, but the cluster has 0 GPUs$"):
        R.ensure_resources(
            [{"CPU": 0.5, "GPU": 1}] * 3,
            what="--workers 3 --gpu",
            timeout_s=900,
            autoscaler=scaler,
            request=asked.append,
        )
    with pytest.raises(ValueError, match=r"^--actors 1 x --threads 4 needs 4 CPUs, but the cluster has 2 CPUs$"):
        R.ensure_resources(
            [{"CPU": 4}], what="--actors 1 x --threads 4", timeout_s=900, autoscaler=scaler, request=asked.append
        )
    assert asked == [] and time.monotonic() - start < 5  # at once: no wait for the 900 s


def test_train_refuses_four_cpus_for_one_worker_before_training(ray_local, tmp_path, monkeypatch):
    from raydet.train.driver import train

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = TrainConfig(
        prep=str(make_prep(tmp_path / "prep")),
        out=str(tmp_path / "runs"),
        name="run",
        workers=1,
        cpus_per_worker=4,
        epochs=1,
        batch_size=16,
        backbone="cnn",
        width=8,
        depth=3,
    )
    with pytest.raises(ValueError, match=r"--workers 1 x --cpus-per-worker 4 = 4 CPUs, but the cluster has 2 CPUs"):
        train(cfg)
    assert not (tmp_path / "runs").exists()  # refused before the run folder, let alone Ray Train


@pytest.fixture
def bootstrap_config(tmp_path, monkeypatch):
    """cluster.yaml where `ray up` puts it on the head, so the local Ray reads as an autoscaling cluster."""
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(json.dumps(yaml.safe_load(CLUSTER_YAML.read_text())))
    monkeypatch.setattr(R, "BOOTSTRAP_CONFIG", str(path))
    return path


def test_train_on_an_autoscaling_cluster_asks_for_one_gpu_and_times_out(ray_local, tmp_path, bootstrap_config, capsys):
    from raydet.train.driver import train

    # address "auto": Ray is up already (init_ray does nothing); the real request_resources goes to the local Ray,
    # whose autoscaler mirrors its one node and launches nothing, so the wait runs out
    cfg = TrainConfig(
        prep=str(make_prep(tmp_path / "prep")),
        out=str(tmp_path / "runs"),
        name="run",
        use_gpu=True,
        epochs=1,
        batch_size=16,
        backbone="cnn",
        width=8,
        depth=3,
        address="auto",
        resource_timeout_s=1,
    )
    with pytest.raises(
        ValueError,
        match=r"--workers 1 x --cpus-per-worker 1 --gpu: the autoscaler did not make room "
        r"within 1 s \(--resource-timeout\): 0 of 1 GPU in the cluster",
    ):
        train(cfg)
    out = capsys.readouterr().out
    assert "no GPU node in the cluster yet: training with 1 worker and 1 GPU" in out
    assert f"asked the autoscaler ({bootstrap_config}), waiting up to 1 s" in out
    assert not (tmp_path / "runs").exists()


def test_evaluate_actors_wait_on_an_autoscaling_cluster(ray_local, bootstrap_config):
    from raydet.evaluate.pool import check_actor_resources

    def cfg(**kw):
        return EvaluateConfig(run="r", data="d", address="auto", resource_timeout_s=1, **kw)

    check_actor_resources(cfg(actors=2, threads=1))  # 2 CPUs: the local node holds them
    with pytest.raises(
        ValueError,
        match=r"--actors 3 x --threads 1: the autoscaler did not make room within 1 s "
        r"\(--resource-timeout\): 2 of 3 CPUs in the cluster",
    ):
        check_actor_resources(cfg(actors=3, threads=1))
    with pytest.raises(ValueError, match=r"--actors 1 x --threads 8 needs 1 x \(8 CPUs\) on one node"):
        check_actor_resources(cfg(actors=1, threads=8))  # a g5.xlarge has 4: refused at once


# ------------------------------------------------------------------------------------------- the setting
@pytest.mark.parametrize(
    "make,match",
    [
        (
            lambda: TrainConfig(prep="p", out="o", name="n", resource_timeout_s=0),
            "--resource-timeout .* positive, got 0",
        ),
        (
            lambda: EvaluateConfig(run="r", data="d", resource_timeout_s=-5.0),
            "--resource-timeout .* positive, got -5.0",
        ),
        (lambda: EvaluateConfig(run="r", data="d", resource_timeout_s=float("nan")), "got nan"),
    ],
)
def test_bad_timeout_is_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_timeout_flag():
    from raydet import cli

    def parse(argv):
        return cli.config_from_args(cli.get_args_parser().parse_args(argv))

    assert parse(["train", "p", "--out", "o", "--name", "n"]).resource_timeout_s == 900
    assert parse(["train", "p", "--out", "o", "--name", "n", "--resource-timeout", "60"]).resource_timeout_s == 60
    assert parse(["evaluate", "r", "--data", "d", "--resource-timeout", "30"]).resource_timeout_s == 30
