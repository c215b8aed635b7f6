"""raydet.cluster.nodes: a local path must be the same folder on every node; checked with one pinned task per node.

The multi-node cases inject the node list and the probe results (one problem or None per node), so the message
is checked word for word without a second machine; the real probe runs on the local one-node Ray.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raydet.cluster.nodes import MARKER_PREFIX, Node, alive_nodes, check_visible, local_path, path_problem, probe_nodes

THREE = [Node("a1" * 14, "10.0.0.4"), Node("b2" * 14, "10.0.0.5"), Node("c3" * 14, "10.0.0.6")]


def _no_probe(nodes, path, marker):
    raise AssertionError("no task should run")


def test_local_path_strips_file_and_leaves_buckets_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert local_path("file:///data/prep") == "/data/prep"
    assert local_path("prep") == str(tmp_path / "prep")  # relative to the driver: the nodes get it absolute
    assert local_path("s3://bucket/prep") is None
    assert local_path("gs://bucket/prep") is None


def test_path_problem_for_reading_only_needs_the_path(tmp_path):
    assert path_problem(str(tmp_path / "missing"), None) == "no such file or folder"
    assert path_problem(str(tmp_path), None) is None


def test_path_problem_for_writing_needs_the_drivers_marker(tmp_path):
    # Another machine's /data/prep: a folder of that name, but the driver's marker is not in it.
    assert path_problem(str(tmp_path), "m") == (
        "a folder of that name exists, but not the driver's: a file the driver wrote there is missing"
    )
    (tmp_path / "m").write_text("x")
    assert path_problem(str(tmp_path), "m") is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_path_problem_for_writing_needs_a_writable_folder(tmp_path):
    (tmp_path / "m").write_text("x")
    tmp_path.chmod(0o500)
    try:
        assert path_problem(str(tmp_path), "m") == "the folder is not writable"
    finally:
        tmp_path.chmod(0o700)


@pytest.mark.slow
def test_one_node_returns_at_once_without_tasks(ray_local, tmp_path):
    assert len(alive_nodes()) == 1
    check_visible(str(tmp_path / "missing"), write=False, what="PREP", probe=_no_probe)
    check_visible(str(tmp_path / "new"), write=True, what="--out", probe=_no_probe)
    assert not (tmp_path / "new").exists()  # nothing written either


def test_bucket_uris_are_not_checked():
    check_visible("s3://bucket/prep", write=True, what="--out", nodes=THREE, probe=_no_probe)


def test_a_node_that_cannot_see_the_path_is_named_with_what_to_do():
    probe = lambda nodes, path, marker: [None, "no such file or folder", None]  # noqa: E731
    with pytest.raises(ValueError) as err:
        check_visible("/data/voc", write=False, what="data", nodes=THREE, probe=probe)
    assert str(err.value) == (
        "data /data/voc is not visible from node 10.0.0.5 (no such file or folder; node "
        "b2b2b2b2): use shared storage mounted at /data/voc on every node (e.g. NFS) or a "
        "bucket URI (s3://..., gs://...)"
    )


def test_several_blind_nodes_are_all_named_and_counted():
    probe = lambda nodes, path, marker: ["no such file or folder", None, "no answer in 60 s"]  # noqa: E731
    with pytest.raises(ValueError) as err:
        check_visible("file:///data/voc", write=False, what="data", nodes=THREE, probe=probe)
    assert str(err.value) == (
        "data file:///data/voc is not visible from 2 of 3 nodes: 10.0.0.4 (no such file or "
        "folder; node a1a1a1a1); 10.0.0.6 (no answer in 60 s; node c3c3c3c3): use shared "
        "storage mounted at /data/voc on every node (e.g. NFS) or a bucket URI (s3://..., "
        "gs://...)"
    )


def test_writing_creates_the_folder_and_the_nodes_look_for_the_drivers_marker(tmp_path):
    out = tmp_path / "runs" / "prep"
    seen = []

    def probe(nodes, path, marker):
        # The nodes look while the marker is there; on this machine path_problem finds it.
        seen.append((path, marker, sorted(p.name for p in Path(path).iterdir())))
        return [path_problem(path, marker) for _ in nodes]

    check_visible(str(out), write=True, what="--out", nodes=THREE[:2], probe=probe)
    [(path, marker, listed)] = seen
    assert path == str(out) and marker.startswith(MARKER_PREFIX) and listed == [marker]
    assert list(out.iterdir()) == []  # the marker is removed again


def test_the_marker_is_removed_when_a_node_is_blind(tmp_path):
    probe = lambda nodes, path, marker: [None, path_problem(str(tmp_path / "elsewhere"), marker)]  # noqa: E731
    with pytest.raises(ValueError, match=r"--out .* is not visible from node 10.0.0.5 \(no such file or folder"):
        check_visible(str(tmp_path), write=True, what="--out", nodes=THREE[:2], probe=probe)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_real_probe_runs_pinned_to_the_node(ray_local, tmp_path):
    nodes = alive_nodes()
    (tmp_path / "m").write_text("x")
    assert probe_nodes(nodes, str(tmp_path), "m") == [None]
    assert probe_nodes(nodes, str(tmp_path / "missing"), None) == ["no such file or folder"]
    # A node id that is not in the cluster: soft=False cannot place the task, and the node is reported.
    [problem] = probe_nodes([Node("12" * 28, "10.9.9.9")], str(tmp_path), None, timeout_s=20)
    assert problem.startswith("the check failed there: TaskUnschedulableError"), problem
