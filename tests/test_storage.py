"""raydet.storage on a local folder and on a real S3-compatible server (moto, tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

from raydet import storage


def test_locations_are_normalized(tmp_path):
    assert storage.normalize("s3://bucket/prep/") == "s3://bucket/prep"
    assert storage.normalize(f"file://{tmp_path}/a%20b") == f"{tmp_path}/a b"  # file:// URIs are local paths
    assert storage.normalize("rel/dir") == os.path.abspath("rel/dir")
    assert storage.join("s3://bucket/runs/", "main", "model.keras") == "s3://bucket/runs/main/model.keras"
    assert storage.is_uri("gs://b/x") and not storage.is_uri(f"file://{tmp_path}") and not storage.is_uri("/x")


def test_a_bad_uri_is_named():
    with pytest.raises(ValueError, match="nosuchscheme://x"):
        storage.resolve("nosuchscheme://x/y")


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket") + "/root"


def test_files_round_trip(root, tmp_path):
    assert storage.kind(root) == "none" and storage.list_files(root) == []
    storage.write_text(storage.join(root, "a", "x.json"), '{"k": 1}')
    storage.write_bytes(storage.join(root, "b.bin"), b"\x00\x01")
    assert storage.kind(root) == "dir" and storage.kind(storage.join(root, "b.bin")) == "file"
    assert storage.read_text(storage.join(root, "a", "x.json")) == '{"k": 1}'
    assert storage.list_files(root) == ["a/x.json", "b.bin"]
    storage.move(storage.join(root, "a"), storage.join(root, "c"))
    assert storage.list_files(root) == ["b.bin", "c/x.json"]
    with pytest.raises(FileNotFoundError, match="no file at .*missing"):
        storage.read_bytes(storage.join(root, "missing"))
    storage.delete_dir(storage.join(root, "c"))
    assert storage.list_files(root) == ["b.bin"]


def test_local_copy_sends_back_only_new_or_changed_files(s3_bucket):
    run = s3_bucket + "/run"
    storage.write_text(run + "/config.json", "{}")
    storage.write_text(run + "/big.bin", "not fetched")
    with storage.local_copy(run, fetch=["config.json", "absent.json"]) as local:
        assert sorted(p.name for p in local.iterdir()) == ["config.json"]  # only what was asked for, if present
        (local / "eval").mkdir()
        (local / "eval" / "report.json").write_text("[]")
    assert storage.list_files(run) == ["big.bin", "config.json", "eval/report.json"]
    assert not local.exists()  # the temporary copy is gone
    with pytest.raises(RuntimeError), storage.local_copy(run) as local:
        (local / "half.json").write_text("{")
        raise RuntimeError("the command failed")
    assert "half.json" not in storage.list_files(run)  # a failed command sends nothing back


def test_local_copy_of_a_local_folder_is_the_folder(tmp_path):
    with storage.local_copy(str(tmp_path)) as local:
        assert local == tmp_path


def test_local_copy_of_a_missing_uri_is_refused(s3_bucket):
    with pytest.raises(FileNotFoundError, match=f"{s3_bucket}/nothing does not exist"):
        with storage.local_copy(s3_bucket + "/nothing"):
            pass
