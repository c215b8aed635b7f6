"""Is a local path the same folder on every node of the cluster?

A local ``--out /data/prep`` on a multi-node cluster is a different, private folder on each machine unless shared
storage is mounted there: shards written by a worker on one node are missing on the others, and the driver's
manifest names files no one else can read. ``check_visible`` finds that out before any work starts, with one
tiny Ray task pinned to each alive node (``NodeAffinitySchedulingStrategy(soft=False)``).

URIs (``s3://``, ``gs://``...) are every node's by construction and are not checked; ``file://`` is a local path.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raydet.errors import UserError

MARKER_PREFIX = ".raydet-visible-"
PROBE_TIMEOUT_S = 60.0  # a node whose probe has not answered by then is reported, not waited for


@dataclass(frozen=True)
class Node:
    """One alive Ray node: its hex id (what NodeAffinitySchedulingStrategy takes) and its IP address."""

    node_id: str
    ip: str


def local_path(path: str) -> str | None:
    """``path`` as a folder on this machine's disk (``file://`` stripped), or None for another URI scheme."""
    if path.startswith("file://"):
        return path[len("file://") :] or "/"
    return None if "://" in path else os.path.abspath(path)


def alive_nodes() -> list[Node]:
    """The cluster's alive nodes, from ``ray.nodes()`` (Ray must be initialized)."""

    return [Node(n["NodeID"], n["NodeManagerAddress"]) for n in ray.nodes() if n.get("Alive")]


def path_problem(path: str, marker: str | None) -> str | None:
    """What is wrong with ``path`` on the machine this runs on, or None when nothing is.

    ``marker``: the name of a file the driver wrote into ``path``, which must be seen here, and ``path`` must be
    writable here; None: ``path`` must only exist.
    """
    folder = Path(path)
    if not folder.exists():
        return "no such file or folder"
    if marker is None:
        return None
    if not (folder / marker).exists():
        return "a folder of that name exists, but not the driver's: a file the driver wrote there is missing"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "the folder is not writable"
    return None


def probe_nodes(
    nodes: Sequence[Node], path: str, marker: str | None, timeout_s: float = PROBE_TIMEOUT_S
) -> list[str | None]:
    """``path_problem(path, marker)`` run on each of ``nodes`` (one task pinned to each, no CPU reserved, so a
    busy node answers too); a task that fails or is not done in ``timeout_s`` is a problem of its node."""

    task = ray.remote(num_cpus=0, max_retries=0)(path_problem)
    refs = [
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)).remote(path, marker)
        for n in nodes
    ]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    done = set(ready)
    problems = []
    for ref in refs:
        if ref not in done:
            problems.append(f"no answer in {timeout_s:g} s")
            ray.cancel(ref, force=True)
            continue
        try:
            problems.append(ray.get(ref))
        except Exception as exc:  # a node that died or cannot start a worker: report it, do not hide it
            problems.append(f"the check failed there: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    return problems


def check_visible(
    path: str,
    *,
    write: bool,
    what: str,
    nodes: Sequence[Node] | None = None,
    probe: Callable[[Sequence[Node], str, str | None], list] = probe_nodes,
) -> None:
    """Raise ValueError unless the local ``path`` is the same folder on every alive node of the Ray cluster.

    ``write``: the command writes there (the folder is created here if missing, a marker file written by this
    driver must be seen, and the folder be writable, on every node); else it reads, and ``path`` must exist on
    every node. ``what`` names the argument in the message (``"--out"``). URIs other than ``file://`` and a
    one-node cluster return at once, without any task. ``nodes`` and ``probe`` (``probe_nodes``'s signature:
    nodes, path, marker name or None -> one problem or None per node) are the cluster's, and can be given for
    tests. Ray must be initialized when ``nodes`` is not given.
    """
    local = local_path(path)
    if local is None:
        return
    nodes = alive_nodes() if nodes is None else list(nodes)
    if len(nodes) <= 1:
        return
    marker = f"{MARKER_PREFIX}{uuid.uuid4().hex}" if write else None
    if marker:
        Path(local).mkdir(parents=True, exist_ok=True)
        (Path(local) / marker).write_text("written by the raydet driver to check that every node sees this folder\n")
    try:
        problems = probe(nodes, local, marker)
    finally:
        if marker:
            (Path(local) / marker).unlink(missing_ok=True)
    blind = [(n, p) for n, p in zip(nodes, problems, strict=True) if p]
    if blind:
        raise UserError(not_visible_message(path, what, blind, len(nodes)))


def not_visible_message(path: str, what: str, blind: Sequence[tuple[Node, str]], n_nodes: int) -> str:
    """The error for ``blind`` ((node, problem) pairs) out of ``n_nodes`` nodes, with what to do instead."""
    where = "; ".join(f"{n.ip} ({p}; node {n.node_id[:8]})" for n, p in blind)
    nodes = "node" if len(blind) == 1 else f"{len(blind)} of {n_nodes} nodes:"
    return (
        f"{what} {path} is not visible from {nodes} {where}: use shared storage mounted at "
        f"{local_path(path) or path} on every node (e.g. NFS) or a bucket URI (s3://..., gs://...)"
    )
