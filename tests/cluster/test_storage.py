"""raydet.cluster.storage on a local folder and on a real S3-compatible server (moto, tests/conftest.py). A whole
`raydet run` through a bucket, and `raydet predict` from one, run in tests/test_jobs.py (the two-node job)."""

from __future__ import annotations

import os

import pytest

from raydet.cluster import storage


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


def test_files_are_listed_from_a_folder_since_deleted(root, tmp_path, monkeypatch):
    """A Ray job's working dir can be removed under it (by its node's clean-up): listing a bucket or a folder must
    not need the current directory."""
    storage.write_text(storage.join(root, "a", "x.json"), "{}")
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert storage.list_files(root) == ["a/x.json"]


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


def test_a_bucket_eval_cut_short_leaves_the_previous_one_readable(s3_bucket, tmp_path, monkeypatch):
    """RUN/eval in a bucket is uploaded under a new prefix and switched in by RUN/eval.json: an upload that fails
    half-way leaves the pointer and the previous eval whole; a finished one replaces it and deletes the old."""
    import pytest

    from raydet.evaluate.outputs import eval_dir, publish_eval

    run = s3_bucket + "/run"
    for name, version in (("first", "1"), ("second", "2")):
        (tmp_path / name / "coco").mkdir(parents=True)
        (tmp_path / name / "report.json").write_text(version)
        (tmp_path / name / "coco" / "ground_truth.json").write_text(version)
    assert eval_dir(run) == run + "/eval"  # never evaluated: the plain name
    first = publish_eval(tmp_path / "first", run, "a1")
    assert eval_dir(run) == first == run + "/eval-a1"

    real_copy, copied = storage._copy_file, []

    def cut(*args):
        if copied:
            raise ConnectionError("network gone")
        copied.append(args)
        real_copy(*args)

    monkeypatch.setattr(storage, "_copy_file", cut)
    with pytest.raises(ConnectionError):
        publish_eval(tmp_path / "second", run, "b2")
    assert eval_dir(run) == first and storage.read_text(first + "/report.json") == "1"
    assert storage.read_text(first + "/coco/ground_truth.json") == "1"
    monkeypatch.setattr(storage, "_copy_file", real_copy)
    second = publish_eval(tmp_path / "second", run, "b3")
    assert eval_dir(run) == second and storage.read_text(second + "/report.json") == "2"
    assert not storage.exists(first)


def test_the_pipeline_job_takes_a_bucket_out_and_prepare_leases_and_commits_there(s3_bucket, tmp_path):
    """jobs/pipeline.py's --out check passes a URI (PurePosixPath('s3://b/x') is not absolute); prepare's lease
    and commit work in the bucket: a second writer is refused while the first holds it."""
    import importlib.util
    import json
    from pathlib import Path

    import pytest

    from raydet.ingest import prep as prep_out

    spec = importlib.util.spec_from_file_location("pipeline_job", Path(__file__).parents[2] / "jobs" / "pipeline.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    job.check_out(["--out", s3_bucket + "/out"])  # no SystemExit
    job.check_out(["--out", "/mnt/efs/out"])
    with pytest.raises(SystemExit, match="relative"):
        job.check_out(["--out", "raydet-out"])

    out = prep_out.open_out(s3_bucket + "/out/prep")
    assert prep_out.LEASE in storage.list_files(s3_bucket + "/out/prep")
    with pytest.raises(prep_out.LeaseHeld, match=r"pid \d+, since"):
        prep_out.open_out(s3_bucket + "/out/prep")
    storage.write_text(storage.join(s3_bucket, "out/prep", out.stage.rsplit("/", 1)[1], "train/part-0.parquet"), "x")
    prep_out.commit(out, {"new": True})
    assert storage.list_files(s3_bucket + "/out/prep") == ["manifest.json", "train/part-0.parquet"]
    assert json.loads(storage.read_text(s3_bucket + "/out/prep/manifest.json")) == {"new": True}


def test_gallery_reads_a_prep_and_its_dataset_in_a_bucket(s3_bucket, tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from raydet.ingest.shards import write_shard
    from raydet.report import gallery

    image = np.zeros((16, 16, 3), np.uint8)
    row = {
        "file": "a.png",
        "image": image,
        "boxes": np.zeros((1, 4), np.float32),
        "labels": np.full(1, -1, np.int32),
        "difficult": np.zeros(1, np.uint8),
        "num_objects": 0,
        "width": 20,
        "height": 10,
    }
    (tmp_path / "prep" / "test").mkdir(parents=True)
    write_shard(str(tmp_path / "prep" / "test" / "part-0.parquet"), [row])
    storage.upload(tmp_path / "prep", s3_bucket + "/prep", ["test/part-0.parquet"])
    rows = gallery.rows_by_file(s3_bucket + "/prep", "test", {"a.png"})
    assert set(rows) == {"a.png"} and rows["a.png"]["image"].shape == (16, 16, 3)
    original = np.full((10, 20, 3), 77, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(original).save(buf, "PNG")
    storage.write_bytes(s3_bucket + "/data/a.png", buf.getvalue())
    assert (gallery.original_image(s3_bucket + "/data", rows["a.png"]) == original).all()  # the dataset's own file
