"""The ``BackendConfig`` raydet gives ``TensorflowTrainer``: the same ``TF_CONFIG`` on each worker as Ray Train's
own ``TensorflowConfig``, from a module that does not import TensorFlow.

Ray Train's controller actor unpickles the trainer's backend config; unpickling ``TensorflowConfig`` runs
``ray.train.tensorflow``'s ``__init__``, which imports TensorFlow in the controller, before any worker starts,
although the controller never uses it. The workers still import it, where the model is fitted (docs/TRAINING.md,
"Around the steps", has what this saves).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

import ray
from ray.train.backend import Backend, BackendConfig

from raydet.cluster.runtime import use_legacy_keras
from raydet.train import heavy


def worker_address() -> str:
    """``host:port`` of a free port on this worker's node (``[host]:port`` for IPv6), for MultiWorkerMirroredStrategy's
    gRPC server."""
    ip = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"


def set_tf_config(addresses: list[str], index: int) -> None:
    """This worker's ``TF_CONFIG``: every worker's address, and this one's ``index`` (its world rank)."""
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})
    use_legacy_keras()


class _TFConfigBackend(Backend):
    def on_start(self, worker_group, backend_config) -> None:
        addresses = worker_group.execute(worker_address)
        ray.get([worker_group.execute_single_async(i, set_tf_config, addresses, i) for i in range(len(addresses))])


@dataclass
class TFConfigBackend(BackendConfig):
    """Sets ``TF_CONFIG`` on each worker before the training function runs, as ``TensorflowConfig`` does."""

    @property
    def backend_cls(self):
        return _TFConfigBackend

    @property
    def framework(self):
        return heavy.tensorflow_framework()
