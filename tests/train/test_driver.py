"""Ray Train: two synchronous workers, resume, a worker killed mid-epoch, and the refusals.

Small data (tests/prep_helpers.py: 128 + 64 rows of 32 px, several objects each, in the PREP schema of
docs/FORMATS.md) and a tiny network, so the whole file runs in a few minutes on 2 CPUs. Two runs of two workers are
shared by most tests: ``memory_run`` holds the train split in memory and computes in mixed_bfloat16,
``streamed_run`` streams it from Ray Data in float32 and has a worker killed in epoch 2 (the restart, which costs a
worker group start, is in that run only). Each run costs a Ray Train start, so a test adds one only for what the
two cannot show.
"""

import json
import math
import os
import time
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
import worker_hooks
from prep_helpers import make_prep

from raydet.config import TrainConfig
from raydet.ingest.prep import Prep
from raydet.train.driver import check_resources, resources_per_worker, train, worker_layout

SIZE = 32
# AP50 on the test split (64 rows of tests/prep_helpers.make_prep), measured: an untrained network scores
# 0.0003-0.0043 (5 seeds); the 2-epoch runs below reached, in float32, 0.244 and 0.186 in memory with a worker killed
# in epoch 2 (two runs), 0.244 without, and 0.175, 0.129 and 0.134 streamed with the kill; memory_run in
# mixed_bfloat16 reached 0.221 (one run, 2026-12-08). A run that learnt nothing stays under this:
LEARNT_IN_2_EPOCHS = 0.05
MEMORY_PRECISION = "mixed_bfloat16"  # memory_run's (16-bit compute); streamed_run keeps the CPU default, float32


def _cfg(prep, out, **kw):
    base = dict(
        prep=str(prep),
        out=str(out),
        name="run",
        workers=2,
        epochs=2,
        batch_size=16,
        backbone="cnn",
        width=8,
        depth=3,
        lr=3e-3,
    )
    base.setdefault("cpus_per_worker", 1.0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return make_prep(tmp_path_factory.mktemp("prep"))


@pytest.fixture(scope="module")
def memory_run(prep, tmp_path_factory):
    """Two workers, 2 epochs, gradients clipped, the train split held in memory, computing in mixed_bfloat16; no
    worker killed (streamed_run has the kill and the restart)."""
    import ray

    from raydet.cluster.runtime import runtime_env

    tmp = tmp_path_factory.mktemp("runs")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=runtime_env())
    worker_hooks.register()
    # clipped: the replicas must stay identical with clipping too (it runs after the all-reduce)
    cfg = _cfg(prep, tmp / "runs", clip_norm=0.5, precision=MEMORY_PRECISION)
    summary = train(cfg, callbacks=(worker_hooks.write_checksums(str(tmp)),))
    return tmp, summary


def record_files(folder: str):
    """A factory: each worker records, in order, the ``file`` of every train row its streamed input reads (it
    wraps raydet.train.inputs.arrays_of in its own process: raydet has no hook for this) and after each epoch writes
    ``files_r<rank>_<pid>.json``: ``{"started": unix time of the factory call, "files": [...]}``."""

    def factory(rank: int, world: int, steps: int):
        import json
        import os
        import time
        from pathlib import Path

        import tf_keras

        import raydet.train.inputs as inputs

        seen, original, started = [], inputs.arrays_of, time.time()

        def recording(batch):
            seen.extend(str(f) for f in batch.get("file", ()) if str(f).startswith("train"))
            return original(batch)

        inputs.arrays_of = recording

        class Record(tf_keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                Path(folder, f"files_r{rank}_{os.getpid()}.json").write_text(
                    json.dumps({"started": started, "files": list(seen)})
                )

        return Record()

    return factory


@pytest.fixture(scope="module")
def streamed_run(prep, tmp_path_factory):
    """memory_run's run in float32 (the CPU default) with the train split streamed from Ray Data
    (--memory-budget-gb 0): two workers of 1 CPU hold both CPUs, so the read tasks reserve none; the last worker
    os._exit(1)s halfway through epoch 2 (once), so Ray Train restarts the worker group from the epoch 1
    checkpoint."""
    import sys

    import ray

    from raydet.cluster.runtime import runtime_env

    tmp = tmp_path_factory.mktemp("streamed")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env=runtime_env())
    worker_hooks.register()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # record_files travels by value too
    started = time.time()
    summary = train(
        _cfg(prep, tmp / "runs", clip_norm=0.5, memory_budget_gb=0),
        callbacks=(
            worker_hooks.fail_once(str(tmp / "killed.txt")),
            worker_hooks.write_checksums(str(tmp)),
            record_files(str(tmp)),
        ),
    )
    return tmp, summary, time.time() - started


@pytest.mark.slow
def test_streamed_run_survives_a_killed_worker_with_each_epoch_once(streamed_run, prep):
    tmp, summary, seconds = streamed_run
    assert "killed rank 1 at epoch 2" in (tmp / "killed.txt").read_text()  # the hook really fired
    history = _history(tmp / "runs" / "run")
    assert [row["epoch"] for row in history] == [1, 2]
    assert summary.model_path.endswith("run/model.keras")
    assert json.loads((tmp / "runs" / "run" / "config.json").read_text())["train"]["memory_budget_gb"] == 0
    # the restarted run trained on: its loss fell, and the saved model finds rectangles no untrained one does
    # (its AP50 by pycocotools is the history's)
    import tf_keras

    model = tf_keras.models.load_model(tmp / "runs" / "run" / "model.keras", compile=False)
    ap50 = _pycocotools_ap50(model, _test_arrays(prep))
    print(f"streamed run: loss {history[0]['loss']:.3f} -> {history[1]['loss']:.3f}, AP50 {ap50:.3f}")
    assert history[1]["loss"] < history[0]["loss"]
    assert history[-1]["val_ap50"] == pytest.approx(ap50, abs=1e-6)
    assert ap50 > LEARNT_IN_2_EPOCHS, ap50
    sums = [json.loads((tmp / f"rank{r}.json").read_text())["sha256"] for r in (0, 1)]
    assert sums[0] == sums[1]  # the replicas stayed identical
    print(f"streamed run with a restart: {seconds:.0f} s")


@pytest.mark.slow
def test_streamed_workers_read_disjoint_halves_of_the_train_split_each_pass(streamed_run):
    """Each attempt (the first, and the restart after the kill) streams one pass per epoch: 128 // 2 = 64 rows per
    worker, 64 // 8 = 8 steps, no remainder. In each attempt's first pass the two workers' rows are disjoint,
    none twice, and together every one of the 128 train rows."""
    tmp, _, _ = streamed_run
    records = {0: [], 1: []}
    for path in tmp.glob("files_r*.json"):  # files_r<rank>_<pid>.json, one per worker process
        records[int(path.name.split("_")[1][1:])].append(json.loads(path.read_text()))
    attempts = [sorted(records[r], key=lambda rec: rec["started"]) for r in (0, 1)]
    assert len(attempts[0]) == len(attempts[1]) == 2, records  # the kill restarted both workers once
    everything = {f"train_{i:04d}.png" for i in range(128)}
    for first, second in zip(*attempts, strict=True):
        a, b = first["files"][:64], second["files"][:64]
        assert len(set(a)) == len(set(b)) == 64
        assert not set(a) & set(b) and set(a) | set(b) == everything


@pytest.mark.slow
def test_streamed_results_look_like_the_in_memory_ones(streamed_run, memory_run):
    """The same run (2 epochs) in memory in mixed_bfloat16 and streamed in float32 (with a worker killed in epoch 2
    and the group restarted from the epoch 1 checkpoint): the same epochs and metrics, and both learn alike: they see
    the rows in other orders and compute at other precisions, so their figures are not equal, but each epoch's loss
    falls and the losses are close."""
    memory, streamed = _history(memory_run[0] / "runs" / "run"), _history(streamed_run[0] / "runs" / "run")
    assert [r["epoch"] for r in memory] == [r["epoch"] for r in streamed]
    assert set(memory[-1]) == set(streamed[-1])
    for run in (memory, streamed):
        assert run[1]["loss"] < run[0]["loss"] and run[-1]["val_ap50"] > LEARNT_IN_2_EPOCHS, run
    # measured when both were float32: loss 4.358 in memory / 4.313 streamed (1% apart), val_loss 3.884 / 3.652
    # (6%); AP50 0.244 / 0.175, but the in-memory run alone gave 0.244 and 0.186 on two runs (the kill lands at
    # another point of the asynchronous checkpoint upload), so AP50 is only held to LEARNT_IN_2_EPOCHS above; with
    # memory_run in mixed_bfloat16 this test passed in each run of 2026-12-08 (AP50 0.221 / 0.134)
    for key, rel in (("loss", 0.15), ("val_loss", 0.25)):
        assert streamed[-1][key] == pytest.approx(memory[-1][key], rel=rel), (key, memory[-1], streamed[-1])


def _history(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def _test_arrays(prep):
    """The test split read back with plain pyarrow, as raydet.train.inputs arrays."""
    from raydet.ingest.shards import image_array

    tables = [pq.read_table(p) for p in sorted((prep / "test").glob("*.parquet"))]
    cols = {
        c: np.concatenate([np.stack(t.column(c).to_numpy(zero_copy_only=False)) for t in tables])
        for c in ("boxes", "labels", "num_objects")
    }
    return {
        "image": np.concatenate([image_array(t) for t in tables]),
        "boxes": cols["boxes"].reshape(len(cols["labels"]), -1, 4).astype(np.float32),
        "labels": cols["labels"].astype(np.int32),
        "num_objects": cols["num_objects"].astype(np.int32),
        "difficult": np.zeros(cols["labels"].shape, bool),
    }


@pytest.mark.slow
def test_the_model_learns_in_bfloat16_and_saves_float32_that_quantizes(memory_run, prep):
    """The model LEARNS: the saved model.keras of memory_run (two workers, 2 epochs, mixed_bfloat16) scores far above
    an untrained network of the same shape on the test split, by pycocotools, and val_ap50 of the last epoch is that
    figure (decoded as evaluation decodes: the epoch line tells the truth). Trained in 16-bit compute, model.keras is
    the float32 export copy, and int8 export works from it as from any run. (float32 training learns in
    streamed_run.)"""
    import tf_keras

    from raydet.detector.model import build_model
    from raydet.export.quantize import convert
    from raydet.export.tflite import TFLiteModel
    from raydet.train.driver import model_config

    tmp, _ = memory_run
    run = tmp / "runs" / "run"
    last = _history(run)[-1]
    arrays = _test_arrays(prep)
    tf_keras.utils.set_random_seed(0)
    cfg = _cfg(prep, tmp / "runs", precision=MEMORY_PRECISION)
    untrained = _pycocotools_ap50(build_model(model_config(cfg, Prep(prep).read_manifest())), arrays)
    model = tf_keras.models.load_model(run / "model.keras", compile=False)
    ap50 = _pycocotools_ap50(model, arrays)
    print(f"in-memory bfloat16 run: AP50 untrained {untrained:.4f}, trained {ap50:.3f}, history {last['val_ap50']:.3f}")
    assert untrained < 0.01 and ap50 > LEARNT_IN_2_EPOCHS, (untrained, ap50)
    assert last["val_ap50"] == pytest.approx(ap50, abs=1e-6)
    assert 0 < last["val_map"] < last["val_ap50"]  # mAP@[.5:.95] is below AP50
    assert math.isfinite(last["val_heatmap_loss"]) and math.isfinite(last["val_box_loss"])
    assert json.loads((run / "config.json").read_text())["train"]["precision"] == MEMORY_PRECISION
    assert {layer.compute_dtype for layer in model.layers} == {"float32"}
    (tmp / "int8.tflite").write_bytes(convert(model, "int8", arrays["image"][:16]))  # what `raydet quantize` runs
    out = TFLiteModel(str(tmp / "int8.tflite")).predict(np.zeros((2, SIZE, SIZE, 3), np.float32))
    assert out["heatmap"].shape == (2, 8, 8, 2) and np.isfinite(out["boxes"]).all()


def _pycocotools_ap50(model, arrays: dict) -> float:
    """COCO AP50 of ``model`` on ``arrays`` (the test split) by pycocotools, not by raydet's metrics: outputs decoded
    with raydet.detector.decode (as evaluation decodes), boxes scaled to SIZE pixels."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from raydet.detector.decode import decode

    out = model(arrays["image"].astype(np.float32), training=False)
    found = decode(out["heatmap"].numpy(), out["boxes"].numpy())
    images, annotations, results = [], [], []
    for i, det in enumerate(found):
        images.append({"id": i + 1, "width": SIZE, "height": SIZE})
        for box, label in zip(arrays["boxes"][i][: arrays["num_objects"][i]], arrays["labels"][i], strict=False):
            x0, y0, x1, y1 = (float(v) * SIZE for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
        for box, label, score in zip(det.boxes, det.labels, det.scores, strict=True):
            x0, y0, x1, y1 = (float(v) * SIZE for v in box)
            results.append(
                {"image_id": i + 1, "category_id": int(label) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}
            )
    if not results:
        return 0.0
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1}, {"id": 2}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1])


def _scalars(folder):
    """The scalars of each TensorBoard event file of ``folder`` (one file per writer, i.e. per process that
    wrote): [{tag: [(step, value), ...]}, ...] in file order."""
    import tensorflow as tf

    files = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        found: dict[str, list[tuple[int, float]]] = {}
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
        files.append(found)
    return files


@pytest.mark.slow
def test_curves_png_and_tensorboard_scalars_from_rank_0(memory_run, streamed_run):
    """curves.png, and rank 0's TensorBoard scalars: one event file per attempt of rank 0, never one per worker (the
    in-memory run has one attempt, the streamed run two: the kill restarts the group once)."""
    from PIL import Image

    for tmp, attempts in ((memory_run[0], (1,)), (streamed_run[0], (1, 2))):
        run = tmp / "runs" / "run"
        history = _history(run)
        with Image.open(run / "curves.png") as im:
            assert im.size == (1200, 340)  # raydet.report.plots.training_curves
        files = [f for f in _scalars(run / "tensorboard") if f]
        # each attempt writes each epoch once, and where a restart trained an epoch again (its checkpoint was not
        # in yet) the later value is the one history.jsonl holds
        assert len(files) in attempts, (run, len(files))
        for tag in ("loss", "val_loss", "val_ap50", "val_map", "lr"):
            last: dict[int, float] = {}
            for f in files:
                steps = [step for step, _ in f[tag]]
                assert steps == sorted(set(steps)), (tag, steps)
                last.update(f[tag])
            assert sorted(last) == [row["epoch"] for row in history], tag
            got = [last[row["epoch"]] for row in history]
            assert got == pytest.approx([row[tag] for row in history], rel=1e-6), tag


@pytest.mark.slow
def test_two_workers_hold_the_same_weights(memory_run, streamed_run):
    """The replicas' weights and their EMA (on by default) are the same on both workers at the end, in the
    in-memory run and in the streamed run after its restart; the EMA is an average, not the raw weights."""
    for tmp in (memory_run[0], streamed_run[0]):
        sums = [json.loads((tmp / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert sums[0]["sha256"] == sums[1]["sha256"], tmp
        assert sums[0]["ema_sha256"] == sums[1]["ema_sha256"], tmp
        assert sums[0]["ema_sha256"] != sums[0]["raw_sha256"], tmp


@pytest.mark.slow
def test_config_json_records_the_resolved_recipe(streamed_run):
    from dataclasses import asdict

    from raydet.config import AugmentConfig

    tmp, _, _ = streamed_run
    train = json.loads((tmp / "runs" / "run" / "config.json").read_text())["train"]
    # _cfg sets 2 epochs (and streamed_run the memory budget); the rest are the defaults, resolved: checkpoint every
    # epoch of 2, warm-up clamped to 2
    assert (train["epochs"], train["checkpoint_every"], train["warmup_epochs"]) == (2, 1, 2.0)
    assert (train["ema_decay"], train["augment"], train["close_mosaic"]) == (0.99, True, 10)
    assert train["precision"] == "float32"  # no --gpu: float32, not mixed_float16
    assert train["augmentation"] == asdict(AugmentConfig())


@pytest.mark.slow
def test_model_file_loads_as_the_contract_says(memory_run):
    import tf_keras

    tmp, _ = memory_run
    model = tf_keras.models.load_model(tmp / "runs" / "run" / "model.keras", compile=False)
    out = model(np.zeros((3, SIZE, SIZE, 3), np.float32))
    assert out["heatmap"].shape == (3, 8, 8, 2) and out["boxes"].shape == (3, 8, 8, 4)  # stride 4: 32 / 4 = 8
    config = json.loads((tmp / "runs" / "run" / "config.json").read_text())
    assert config["classes"] == ["red", "green"] and config["image_size"] == SIZE and config["model"]["width"] == 8
    assert config["train"]["clip_norm"] == 0.5


@pytest.mark.slow
def test_rerun_with_more_epochs_trains_only_the_new_one(memory_run, prep):
    tmp, _ = memory_run
    before = _history(tmp / "runs" / "run")
    summary = train(_cfg(prep, tmp / "runs", epochs=3, clip_norm=0.5, precision=MEMORY_PRECISION))
    after = _history(tmp / "runs" / "run")
    assert summary.trained_epochs == 1
    assert [row["epoch"] for row in after] == [1, 2, 3]
    assert after[:2] == before  # the old epochs are kept as they were, not retrained


@pytest.mark.slow
def test_init_from_a_relative_run_folder(memory_run, prep, monkeypatch):
    """`--init-from runs/x` as typed in a shell: the Ray Train workers run elsewhere, so it must reach them whole."""
    tmp, _ = memory_run
    monkeypatch.chdir(tmp)
    import tf_keras

    # lr ~0: the warm run's weights stay those it started from, so they show where it started
    summary = train(
        _cfg(prep, tmp / "runs", name="warm", workers=1, epochs=1, init_from="runs/run", lr=1e-12, warmup_epochs=0)
    )
    assert summary.trained_epochs == 1
    config = json.loads((tmp / "runs" / "warm" / "config.json").read_text())
    assert config["train"]["init_from"] == str(tmp / "runs" / "run")
    source = tf_keras.models.load_model(tmp / "runs" / "run" / "model.keras", compile=False)
    warm = tf_keras.models.load_model(tmp / "runs" / "warm" / "model.keras", compile=False)
    for name in ("block0_conv", "neck_s4_smooth_conv", "heatmap", "boxes"):
        for a, b in zip(source.get_layer(name).get_weights(), warm.get_layer(name).get_weights(), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_init_from_a_run_without_a_backbone_is_refused(prep, tmp_path):
    """A RUN whose config.json names no backbone (here the single-box network's) cannot start this one: say so,
    before Ray starts."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.keras").write_bytes(b"")
    (old / "config.json").write_text(
        json.dumps(
            {"model": {"num_classes": 2, "image_size": 32, "width": 8, "depth": 3, "head_units": 128, "dropout": 0.2}}
        )
    )
    with pytest.raises(ValueError, match="config.json: 'model' must be an object naming its backbone"):
        train(_cfg(prep, tmp_path / "runs", init_from=str(old)))


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_the_epoch(prep, tmp_path, ray_local, monkeypatch):
    import raydet.train.driver as driver

    with pytest.raises(ValueError, match=r"non-finite \(.+\) at epoch 1 of .*another --name"):
        train(_cfg(prep, tmp_path, workers=1, epochs=2, lr=1e20))
    run = tmp_path / "run"
    assert json.loads((run / "stopped.json").read_text())["epoch"] == 1
    assert _history(run) == []  # no good epoch
    # run again: refused before Ray Train starts, naming the stop (its checkpoint holds no weights to go on from)
    monkeypatch.setattr(driver, "_fit", lambda *args: pytest.fail("Ray Train started on a stopped run"))
    with pytest.raises(ValueError, match=r"run stopped at epoch 1: its loss became non-finite \(.+\)"):
        train(_cfg(prep, tmp_path, workers=1, epochs=2, lr=1e-3))


def test_bad_prep_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "manifest.json")):
        train(_cfg(tmp_path, tmp_path / "runs"))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Prep(tmp_path).read_manifest()
    (tmp_path / "manifest.json").write_text(json.dumps({"classes": ["a"], "image_size": 32}))
    with pytest.raises(FileNotFoundError, match="no Parquet shards"):
        Prep(tmp_path).read_manifest()
    (tmp_path / "manifest.json").write_text(json.dumps({"classes": [], "image_size": 32}))
    with pytest.raises(ValueError, match=r"'classes' must be a non-empty list, got \[\]"):
        Prep(tmp_path).read_manifest()


def test_shards_that_disagree_with_the_manifest_are_refused(tmp_path):
    prep = make_prep(tmp_path / "prep", n_train=8, n_test=4)
    assert Prep(prep).read_manifest()["splits"] == {"train": 8, "test": 4}  # 2 shards of 4 rows each agree
    (prep / "train" / "part-0000001.parquet").unlink()  # half the train split went missing in a copy
    with pytest.raises(ValueError, match=r"prep/train: its shards hold 4 rows but .*manifest.json counted 8"):
        Prep(prep).read_manifest()


def test_resource_check_names_the_numbers():
    cpu_cluster = {"CPU": 2.0}
    with pytest.raises(ValueError, match="3 x --cpus-per-worker 1 = 3 CPUs, but the cluster has 2 CPUs"):
        check_resources(TrainConfig(prep="p", out="o", name="n", workers=3, cpus_per_worker=1.0), cpu_cluster, [2.0])
    with pytest.raises(ValueError, match="needs 2 GPUs .* but the cluster has 0 GPUs"):
        check_resources(
            TrainConfig(prep="p", out="o", name="n", workers=2, cpus_per_worker=1.0, use_gpu=True), cpu_cluster, [2.0]
        )
    with pytest.raises(ValueError, match="--cpus-per-worker 4 is more than the largest node has \\(2 CPUs\\)"):
        check_resources(
            TrainConfig(prep="p", out="o", name="n", workers=1, cpus_per_worker=4), {"CPU": 8.0}, [2.0, 2.0, 2.0, 2.0]
        )
    check_resources(
        TrainConfig(prep="p", out="o", name="n", workers=2, cpus_per_worker=1.0, use_gpu=True),
        {"CPU": 2, "GPU": 2},
        [2.0],
    )
    assert resources_per_worker(
        TrainConfig(prep="p", out="o", name="n", workers=1, cpus_per_worker=1.0, use_gpu=True)
    ) == {"CPU": 1.0, "GPU": 1}
    assert resources_per_worker(TrainConfig(prep="p", out="o", name="n", workers=2, cpus_per_worker=1.0)) == {
        "CPU": 1.0
    }


def test_default_layout_is_one_worker_per_node_or_gpu():
    auto = TrainConfig(prep="p", out="o", name="n")
    assert worker_layout(auto, [2.0], 0) == (1, 2.0)  # a 2-core laptop: one worker with both cores
    assert worker_layout(auto, [8.0, 4.0, 4.0], 0) == (3, 4.0)  # one per node, the smallest node's CPUs
    gpu = TrainConfig(prep="p", out="o", name="n", use_gpu=True)
    assert worker_layout(gpu, [8.0, 8.0], 4) == (4, 1.0)  # one per GPU
    assert worker_layout(gpu, [8.0], 0) == (1, 1.0)  # none yet (an autoscaler may add one): ask for one
    given = TrainConfig(prep="p", out="o", name="n", workers=2)
    assert worker_layout(given, [2.0], 0) == (2, 1.0)


@pytest.mark.slow
def test_too_many_workers_or_gpus_refused_on_the_real_cluster(prep, tmp_path, ray_local):
    # ray_local has 2 CPUs and no GPU; refused before Ray Train starts (it would wait forever)
    with pytest.raises(ValueError, match="= 3 CPUs, but the cluster has 2 CPUs"):
        train(_cfg(prep, tmp_path, workers=3))
    with pytest.raises(ValueError, match="needs 1 GPUs .* has 0 GPUs"):
        train(_cfg(prep, tmp_path, workers=1, use_gpu=True))


def test_schedule_resolved_from_the_train_split(capsys):
    from raydet.train.driver import resolve_schedule

    cfg = TrainConfig(prep="p", out="o", name="n", workers=1, cpus_per_worker=2.0, batch_size=16)
    # 158 photos / 16 = 9 steps an epoch: ceil(TARGET_STEPS 1000 / 9) = 112 epochs; 10 checkpoints: every 12
    got = resolve_schedule(cfg, 158)
    assert (got.epochs, got.checkpoint_every, got.warmup_epochs) == (112, 12, 3.0)
    assert "112 epochs of 9 steps (auto" in capsys.readouterr().out
    # two workers x 8: (158 // 2) // 8 = 9 steps, the same schedule
    assert resolve_schedule(replace(cfg, workers=2, cpus_per_worker=1.0), 158).epochs == 112
    # given epochs stay; the warm-up is clamped to a 2-epoch run, which checkpoints every epoch
    got = resolve_schedule(replace(cfg, epochs=2, checkpoint_every=None), 158)
    assert (got.epochs, got.checkpoint_every, got.warmup_epochs) == (2, 1, 2.0)
    assert resolve_schedule(replace(cfg, epochs=30, checkpoint_every=50), 158).checkpoint_every == 30


def test_ray_train_polls_every_half_second_during_fit_unless_the_user_chose(monkeypatch):
    """Ray Train passes RAY_TRAIN_HEALTH_CHECK_INTERVAL_S from the driver's environment to its controller: set for the
    fit (its 2 s default made every run wait up to 2 s more for its end), then gone; a user's value is kept."""
    from raydet.train.driver import _polled_often

    name = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    monkeypatch.delenv(name, raising=False)
    with _polled_often():
        assert os.environ[name] == "0.5"
    assert name not in os.environ
    monkeypatch.setenv(name, "3")
    with _polled_often():
        assert os.environ[name] == "3"
    assert os.environ[name] == "3"
