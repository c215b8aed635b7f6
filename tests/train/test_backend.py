"""raydet.train.backend: the TF_CONFIG each worker gets (computed by hand), a free port on this node, and the point of
the module: Ray Train's controller unpickles this backend config without importing TensorFlow."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys

from raydet.train.backend import TFConfigBackend, _TFConfigBackend, set_tf_config, worker_address


def test_tf_config_names_every_worker_and_this_ones_index(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    set_tf_config(["10.0.0.1:5000", "10.0.0.2:6000"], 1)
    assert json.loads(os.environ["TF_CONFIG"]) == {
        "cluster": {"worker": ["10.0.0.1:5000", "10.0.0.2:6000"]},
        "task": {"type": "worker", "index": 1},
    }
    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"


def test_worker_address_is_this_node_and_a_port_free_to_bind():
    import ray

    host, port = worker_address().rsplit(":", 1)
    assert host == ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", int(port)))  # free: MultiWorkerMirroredStrategy's server can take it


def test_the_controller_unpickles_the_config_without_tensorflow():
    """What Ray Train's controller does with the trainer's backend config, in a fresh interpreter: no TensorFlow
    import (Ray's own TensorflowConfig imports it there)."""
    config = TFConfigBackend()
    assert config.backend_cls is _TFConfigBackend and config.framework.value == "tensorflow"
    code = (
        "import pickle, sys; config = pickle.loads(sys.stdin.buffer.read()); "
        "print(type(config).__name__, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(config), capture_output=True, timeout=120, check=True
    )
    assert out.stdout.decode().split() == ["TFConfigBackend", "False"]
