"""raydet.cluster.storage on a local folder and on a real S3-compatible server (moto, tests/conftest.py)."""

from __future__ import annotations

import os

import pytest
from printed import assert_printed_locations_exist, assert_short_clean_console

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


@pytest.mark.slow
def test_raydet_run_round_trips_through_s3(s3_bucket, s3_server, tmp_path):
    """`jobs/pipeline.py --data s3://... --out s3://...` (which is `raydet run`), then `raydet run` again and
    `raydet predict` with its model, against a real S3-compatible server: prepare reads the dataset from the bucket and
    writes PREP there, training checkpoints and writes RUN there, quantize and evaluate read and write it there, predict
    fetches its model from there; nothing lands on the local disk under a folder named "s3:"."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    from raydet.config import SynthConfig
    from raydet.ingest.synth import write_synthetic

    write_synthetic(SynthConfig(out=str(tmp_path / "data"), images=48, image_size=64, seed=3))
    storage.upload(tmp_path / "data", s3_bucket + "/data", storage.list_files(str(tmp_path / "data")))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYDET_VERBOSE")} | s3_server
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    flags = [
        "--data",
        s3_bucket + "/data",
        "--out",
        s3_bucket + "/out",
        "--epochs",
        "2",
        "--image-size",
        "32",
        "--workers",
        "1",
        "--backbone",
        "cnn",
    ]
    cmd = [sys.executable, "-m", "raydet.cli", "run", *flags]
    # the first time through jobs/pipeline.py, what `ray job submit` runs (the same flags as `raydet run`)
    job = [sys.executable, str(Path(__file__).parents[2] / "jobs" / "pipeline.py"), *flags]
    proc = subprocess.run(
        job, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert_short_clean_console(proc.stdout, epochs=2)  # what `raydet run` shows a user, bucket or not
    files = set(storage.list_files(s3_bucket + "/out"))
    evaluated = json.loads(storage.read_text(s3_bucket + "/out/runs/main/eval.json"))["eval"]
    assert {
        "pipeline.json",
        "prep/manifest.json",
        "runs/main/config.json",
        "runs/main/model.keras",
        "runs/main/history.jsonl",
        "runs/main/model_int8.tflite",
        f"runs/main/{evaluated}/report.json",
        f"runs/main/{evaluated}/report.html",
        f"runs/main/{evaluated}/coco/ground_truth.json",
    } <= files
    assert_printed_locations_exist(proc.stdout, s3_bucket, at_least=5)
    assert any(f.startswith("prep/train/") and f.endswith(".parquet") for f in files)
    manifest = json.loads(storage.read_text(s3_bucket + "/out/prep/manifest.json"))
    assert manifest["images_loaded"] == 48 and manifest["source"] == s3_bucket + "/data"
    history = storage.read_text(s3_bucket + "/out/runs/main/history.jsonl").splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [1, 2]
    report = json.loads(storage.read_text(f"{s3_bucket}/out/runs/main/{evaluated}/report.json"))
    assert set(report["models"]) == {"float", "int8"}
    # what the files hold, not only that they are there: the synthetic set's test split is round(48 * 0.2) = 10
    # images (seed 3), each evaluated by both models and listed in the COCO ground truth
    assert manifest["splits"] == {"train": 38, "test": 10}
    assert [report["models"][m]["images"] for m in ("float", "int8")] == [10, 10]
    truth = json.loads(storage.read_text(f"{s3_bucket}/out/runs/main/{evaluated}/coco/ground_truth.json"))
    assert len(truth["images"]) == 10
    config = json.loads(storage.read_text(s3_bucket + "/out/runs/main/config.json"))
    assert config["image_size"] == 32 and config["train"]["epochs"] == 2 and config["prep"] == s3_bucket + "/out/prep"
    # the int8 file in the bucket is a detector for that config: 32 px uint8 in, stride-4 maps of every class out
    from raydet.export.tflite import TFLiteModel

    int8 = tmp_path / "model_int8.tflite"
    int8.write_bytes(storage.read_bytes(s3_bucket + "/out/runs/main/model_int8.tflite"))
    out = TFLiteModel(str(int8)).predict(np.zeros((1, 32, 32, 3), np.uint8))
    assert out["heatmap"].shape == (1, 8, 8, len(config["classes"])) and out["boxes"].shape == (1, 8, 8, 4)
    page = storage.read_text(f"{s3_bucket}/out/runs/main/{evaluated}/report.html")
    assert f"{report['models']['int8']['coco_map_50']:.3f}" in page  # the page shows the report's AP50
    assert not list(Path(cwd).rglob("s3:*")), "a URI became a local folder"
    # a second run finds every stage done in the bucket: nothing is trained again
    again = subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600
    )
    assert again.returncode == 0, again.stdout[-4000:]
    assert "prepare: " in again.stdout and "matches, skipped" in again.stdout
    assert "has 2 of 2 epochs, skipped" in again.stdout and "quantize: int8 newer than" in again.stdout
    # the new eval was switched in by its pointer and the one it replaced is gone
    now = json.loads(storage.read_text(s3_bucket + "/out/runs/main/eval.json"))["eval"]
    assert now != evaluated and not storage.exists(f"{s3_bucket}/out/runs/main/{evaluated}")
    assert_printed_locations_exist(again.stdout, s3_bucket, at_least=5)
    # predict with the model in the bucket on local photos
    predicted = subprocess.run(
        [
            sys.executable,
            "-m",
            "raydet.cli",
            "predict",
            s3_bucket + "/out/runs/main",
            str(tmp_path / "data" / "JPEGImages"),
            "--out",
            str(tmp_path / "predicted"),
            "--model",
            "int8",
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert predicted.returncode == 0, predicted.stdout[-4000:]
    result = json.loads((tmp_path / "predicted" / "predictions.json").read_text())
    assert result["complete"] and len(result["images"]) == 48 and result["model"] == "int8"


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
