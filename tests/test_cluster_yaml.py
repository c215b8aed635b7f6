"""cluster.yaml passes Ray's own cluster-config validation (no cloud calls) and keeps the promises it makes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_valid_against_rays_schema_and_validator(cluster):
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)  # the file as written
    validate_config(prepare_config(cluster))  # as `ray up` sees it: merged with the AWS defaults


def test_schema_check_can_fail(cluster):
    # The same validator rejects a broken copy (a worker type without resources), so the test above means something.
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = json.loads(json.dumps(cluster))
    del broken["available_node_types"]["ray.worker.gpu"]["resources"]
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_cpu_head_and_gpu_workers_that_scale_to_zero(cluster):
    assert cluster["provider"]["type"] == "aws"
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert "GPU" not in head["resources"] and not head["node_config"]["InstanceType"].startswith(("g", "p"))
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    gpu = [t for t in workers if t["resources"].get("GPU", 0) >= 1]
    assert gpu, "no GPU worker type"
    assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu)


def _commands(cluster) -> str:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    return "\n".join(c for k in keys for c in cluster.get(k, []))


def test_token_auth_on_every_node_and_no_open_dashboard(cluster):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cluster[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    # The token file reaches every node at Ray's default path.
    assert "~/.ray/auth_token" in cluster["file_mounts"]
    commands = _commands(cluster)
    assert "0.0.0.0" not in commands  # the dashboard binds to the head's loopback, reached by `ray dashboard`
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1", commands)
    # No inbound rule beyond the two Ray adds itself (SSH, intra-cluster): no open dashboard or client port.
    assert cluster["provider"]["security_group"]["IpPermissions"] == []


def test_installs_raydet_and_mounts_shared_storage(cluster):
    commands = _commands(cluster)
    assert "~/raydet" in cluster["file_mounts"] and cluster["file_mounts"]["~/raydet"] == "."
    assert re.search(r"pip install .*~/raydet", commands)
    assert "mount -t nfs4" in commands and "/mnt/efs" in commands  # checkpoints live on EFS, not a node's disk
    assert "TF_USE_LEGACY_KERAS=1" in commands
