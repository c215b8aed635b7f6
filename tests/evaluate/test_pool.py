"""raydet.evaluate.pool with the hand-set detector of tests/handset.py: several objects of both classes per image, AP
computed by hand and by pycocotools from the written COCO files, every detection in the COCO file, drawings that
honour the draw threshold, an actor killed mid-run, foreign runs and bad inputs refused before Ray starts."""

from __future__ import annotations

import json
from pathlib import Path

import handset as H
import numpy as np
import pytest
import worker_hooks
from printed import assert_printed_locations_exist

from raydet.config import EvaluateConfig
from raydet.errors import UserError
from raydet.evaluate.pool import REPORT_KEYS, evaluate
from raydet.export.runner import require_models

WIDTH, HEIGHT = 64, 48  # original image size of every PREP row (not square: pixel conversion is exercised)
A, A2, B = H.Obj(1, 1, 0, 5, 1), H.Obj(6, 1, 0, 4, 1), H.Obj(5, 2, 1, 4, 2)  # image 0: red, red, blue
C, D = H.Obj(2, 5, 0, 3, 2), H.Obj(6, 6, 0, 2, 1)  # image 1: red (score 0.7685), red (0.2315, below 0.3)
E = H.Obj(4, 4, 1, 5, 1)  # image 2 (no ground truth): blue, a false positive
DX = 0.0776  # C's ground truth is C's box moved right by DX: IoU (0.4 - DX) / (0.4 + DX) = 0.3224 / 0.4776 = 0.675
F_BOX, G_BOX = [0.05, 0.05, 0.30, 0.30], [0.60, 0.05, 0.90, 0.35]  # image 1: blue objects nobody finds (G difficult)
SCENES = [  # file, painted objects, ground truth [(box xyxy normalized, label, difficult)]
    ("img_0.png", [A, A2, B], [(H.box(A), 0, 0), (H.box(A2), 0, 0), (H.box(B), 1, 0)]),
    ("img_1.png", [C, D], [(H.box(C) + [DX, 0, DX, 0], 0, 0), (F_BOX, 1, 0), (G_BOX, 1, 1)]),
    ("img_2.png", [E], []),
]
# By hand (raydet.detector.metrics' / pycocotools' rules), detections by score:
# red: GT 3; A 0.9975 TP, A2 0.9734 TP, C 0.7685 TP at IoU t <= 0.65 (IoU 0.675) else FP, D 0.2315 FP.
#   t in .50-.65 (4 thresholds): recall reaches 1 at precision 1 -> AP 1. t in .70-.95 (6): recall stops at 2/3
#   with precision 1 -> the 101 recall points 0, .01, ..., .66 (67 of them) read 1 -> AP 67/101.
#   VOC (IoU > 0.5): TP TP TP FP -> AP 1, 11-point 1.
# blue: GT 3 for COCO (B, F and the difficult G count); E 0.9975 FP, B 0.9734 TP at every t: recall [0, 1/3],
#   precision [0, 1/2], made monotone [1/2, 1/2] -> the points 0 .. .33 (34) read 1/2 -> AP 17/101 at every t.
#   VOC ignores G: npos 2, recall [0, 1/2], precision [0, 1/2] -> all-point AP 1/2 * 1/2 = 0.25; 11-point: the
#   points 0 .. 0.5 (6 of 11) read 1/2 -> 3/11.
RED_MAP = (4 + 6 * 67 / 101) / 10
EXPECTED = {
    "coco_map": (RED_MAP + 17 / 101) / 2,
    "coco_map_50": (1 + 17 / 101) / 2,
    "coco_map_75": (67 / 101 + 17 / 101) / 2,
    "voc_map_50": (1 + 0.25) / 2,
    "voc07_map_50": (1 + 3 / 11) / 2,
    "detections_per_image": 6 / 3,
    "images": 3,
}  # 3 + 2 + 1 detections with score >= 0.01
PER_CLASS = [
    {"class": "red", "ap50": 1.0, "voc_ap50": 1.0, "recall50": 1.0, "ground_truth": 3},
    {"class": "blue", "ap50": 17 / 101, "voc_ap50": 0.25, "recall50": 1 / 3, "ground_truth": 3},
]


def make_prep(root):
    """A PREP folder (docs/FORMATS.md): test split in two shards written by raydet.ingest.shards.write_shard, K = 3."""
    from raydet.ingest.shards import write_shard

    prep = root / "prep"
    (prep / "test").mkdir(parents=True)
    rows = []
    for file, objects, truth in SCENES:
        boxes, labels, difficult = np.zeros((3, 4), np.float32), np.full(3, -1, np.int32), np.zeros(3, np.uint8)
        for k, (b, label, hard) in enumerate(truth):
            boxes[k], labels[k], difficult[k] = b, label, hard
        rows.append(
            {
                "file": file,
                "image": H.paint(objects),
                "boxes": boxes,
                "labels": labels,
                "difficult": difficult,
                "num_objects": len(truth),
                "width": WIDTH,
                "height": HEIGHT,
            }
        )
    write_shard(str(prep / "test" / "part-00000.parquet"), rows[:2])
    write_shard(str(prep / "test" / "part-00001.parquet"), rows[2:])
    (prep / "manifest.json").write_text(
        json.dumps(
            {"classes": H.CLASSES, "image_size": H.SIZE, "max_objects": 3, "splits": {"train": 0, "test": len(rows)}}
        )
    )
    return prep


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    return {"root": root, "prep": make_prep(root), "run": H.write_run(root / "run")}


def test_missing_model_names_existing_ones(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"x")
    (tmp_path / "model_int8.tflite").write_bytes(b"x")
    with pytest.raises(FileNotFoundError) as err:
        require_models(tmp_path, ("float", "dynamic", "qat"))
    msg = str(err.value)
    assert "dynamic, qat not found" in msg and "this run has: float, int8" in msg
    assert require_models(tmp_path, ("int8",)) == {"int8": tmp_path / "model_int8.tflite"}


def test_evaluate_refuses_before_ray_starts(tmp_path, setup):
    import ray

    started = ray.is_initialized()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.keras").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="this run has: float"):
        evaluate(EvaluateConfig(run=str(tmp_path / "run"), data=str(tmp_path / "prep"), models=("float", "int8")))
    old = H.write_old_run(tmp_path / "old")
    with pytest.raises(UserError, match="config.json: 'model' must be an object naming its backbone"):
        evaluate(EvaluateConfig(run=str(old), data=str(setup["prep"]), models=("float",)))
    with pytest.raises(FileNotFoundError, match="manifest"):
        evaluate(EvaluateConfig(run=str(setup["run"]), data=str(tmp_path / "prep"), models=("float",)))
    assert ray.is_initialized() == started  # refused before any Ray start


def _pycocotools_stats(gt_path, det_path) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(gt_path))
    ev = COCOeval(gt, gt.loadRes(str(det_path)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


@pytest.mark.slow
def test_evaluate_report_coco_and_drawings(setup, ray_local):
    from PIL import Image

    from raydet.report import draw

    coco_dir = setup["root"] / "coco"
    cfg = EvaluateConfig(
        run=str(setup["run"]),
        data=str(setup["prep"]),
        models=("float", "int8"),
        actors=2,
        batch_size=1,
        coco_out=str(coco_dir),
        draw=3,
    )
    report = evaluate(cfg)

    # 1. report.json: the metrics computed by hand above, for the float model and (its errors are ~1e-3 of a
    #    box and of a score, far from every IoU threshold and score tie here) the int8 one
    on_disk = json.loads((setup["run"] / "eval" / "report.json").read_text())
    assert on_disk["models"] == report["models"]
    for name in ("float", "int8"):
        m = on_disk["models"][name]
        assert list(m) == list(REPORT_KEYS)
        for key, value in EXPECTED.items():
            assert m[key] == pytest.approx(value, abs=1e-12), (name, key)
        assert m["per_class"] == [pytest.approx(c, abs=1e-12) for c in PER_CLASS], name
    md = (setup["run"] / "eval" / "report.md").read_text()
    assert "| float |" in md and "| int8 |" in md
    assert "| blue | 3 | 0.168 | 0.333 | 0.168 | 0.333 |" in md  # per-class table: 17/101 = 0.168, 1/3

    # 2. COCO files: every detection (score >= 0.01, D's 0.23 included), boxes in original pixels, and
    #    pycocotools' stats from them equal the report's
    gt = json.loads((coco_dir / "ground_truth.json").read_text())
    assert [im["file_name"] for im in gt["images"]] == ["img_0.png", "img_1.png", "img_2.png"]  # ids 1, 2, 3
    for name in ("float", "int8"):
        dets = json.loads((coco_dir / f"detections_{name}.json").read_text())
        assert [d["image_id"] for d in dets] == [1, 1, 1, 2, 2, 3]
        assert [d["category_id"] for d in dets] == [1, 1, 2, 1, 1, 2]  # A, A2, B | C, D | E (label + 1)
        # A: (0.0875, 0.0875, 0.2875, 0.2875) on 64 x 48 -> x 5.6, y 4.2, w 0.2 * 64 = 12.8, h 0.2 * 48 = 9.6
        np.testing.assert_allclose(dets[0]["bbox"], [5.6, 4.2, 12.8, 9.6], atol=1e-4 if name == "float" else 0.05)
        assert dets[4]["score"] == pytest.approx(H.score(2), abs=1e-6 if name == "float" else 0.01)
        stats = _pycocotools_stats(coco_dir / "ground_truth.json", coco_dir / f"detections_{name}.json")
        ours = report["models"][name]
        assert stats[:3] == pytest.approx([ours["coco_map"], ours["coco_map_50"], ours["coco_map_75"]], abs=1e-9)

    # 3. report.html, built from those files: the blue PR curve's area is report.json's AP50, 17/101
    from raydet.report import analysis

    assert (setup["run"] / "eval" / "report.html").is_file() and report["coco_dir"] == str(coco_dir.absolute())
    dets = json.loads((coco_dir / "detections_int8.json").read_text())
    _, precision = analysis.pr_curve(analysis.match_all(analysis.from_coco(gt, dets), 2), 1)
    assert precision.mean() == pytest.approx(on_disk["models"]["int8"]["per_class"][1]["ap50"], abs=1e-12)
    assert precision.mean() == pytest.approx(17 / 101, abs=1e-12)

    # 4. drawings: 3 per model at 8x (ceil(384 / 48)) of 64 x 48 -> 512 x 384; each detection scoring >= 0.3 is
    #    drawn, D (0.23) is not
    images = setup["run"] / "eval" / "images"
    for name in ("float", "int8"):
        assert len(list(images.glob(f"{name}_*.png"))) == 3
        with Image.open(images / f"{name}_000_img_0.png") as im:
            first = np.asarray(im.convert("RGB"))
        with Image.open(images / f"{name}_001_img_1.png") as im:
            second = np.asarray(im.convert("RGB"))
        assert first.shape == (384, 512, 3)
        # A's left edge: x 0.0875 * 512 = 44.8 -> 45, at mid-height y 0.1875 * 384 = 72
        assert tuple(first[72, 45]) == draw.PRED_COLOR
        # C's left edge: x 0.1125 * 512 = 57.6 -> 58, y 0.6875 * 384 = 264; D's: x 0.7125 * 512 = 364.8 -> 365,
        # y 0.8125 * 384 = 312, black: nothing drawn there
        assert tuple(second[264, 58]) == draw.PRED_COLOR
        assert tuple(second[312, 365]) == (0, 0, 0)
        with Image.open(images / f"contact_sheet_{name}.png") as sheet:
            assert sheet.size == (3 * 256, 256)  # 3 tiles of 256 px in one row


def test_drawings_keep_the_detections_at_or_above_the_draw_threshold(tmp_path, monkeypatch):
    """draw_examples hands draw_detections each image's detections scoring >= 0.3 (raydet.evaluate.outputs'
    DRAW_SCORE_THRESHOLD), at exactly 0.3 included, in order, with their class names, and counts them in the
    caption; the ground truth in original pixels."""
    from raydet.evaluate.outputs import ImageDetections, ModelResult, draw_examples
    from raydet.report import draw

    seen, recorded_captions = [], []
    real_sheet = draw.contact_sheet

    def record(image, gt_boxes, gt_names, boxes, names, scores):
        seen.append({"gt": np.asarray(gt_boxes).tolist(), "boxes": np.asarray(boxes).tolist(), "names": list(names)})
        seen[-1]["scores"] = list(scores)
        return image

    def sheet(images, columns=4, tile=256, captions=None):
        recorded_captions.extend(captions)
        return real_sheet(images, columns=columns, tile=tile, captions=captions)

    monkeypatch.setattr(draw, "draw_detections", record)
    monkeypatch.setattr(draw, "contact_sheet", sheet)
    row = {
        "file": "a.png",
        "image": np.zeros((8, 8, 3), np.uint8),
        "boxes": np.array([[0.25, 0.5, 0.75, 1.0], [0, 0, 0, 0]], np.float32),  # one object + padding
        "labels": np.array([1, -1]),
        "num_objects": 1,
        "width": 40,
        "height": 20,
    }
    scores = np.array([0.9, 0.3, 0.2999])
    boxes = np.array([[0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 6, 6]], np.float64)
    result = ModelResult("int8", {}, [ImageDetections("a.png", 1, boxes, np.array([1, 0, 1]), scores)])
    draw_examples(tmp_path, [row], {"int8": result}, ["red", "blue"], source=None)
    assert seen == [
        {
            "gt": [[10.0, 10.0, 30.0, 20.0]],  # (0.25, 0.5, 0.75, 1.0) x (40, 20)
            "boxes": [[0, 0, 4, 4], [1, 1, 5, 5]],  # 0.9 and 0.3 kept, 0.2999 not
            "names": ["blue", "red"],
            "scores": [0.9, 0.3],
        }
    ]
    assert recorded_captions == ["a: 2 found, 1 true"]
    assert (tmp_path / "int8_000_a.png").is_file() and (tmp_path / "contact_sheet_int8.png").is_file()


@pytest.mark.slow
def test_killed_actor_is_restarted_and_every_image_is_counted_once(setup, ray_local):
    marker = setup["root"] / "crashed"
    worker_hooks.register()
    coco_dir = setup["root"] / "coco_crash"
    cfg = EvaluateConfig(
        run=str(setup["run"]),
        data=str(setup["prep"]),
        models=("int8",),
        actors=2,
        batch_size=1,
        draw=0,
        coco_out=str(coco_dir),
    )
    report = evaluate(cfg, predictor=worker_hooks.crash_once_predictor(str(marker)))
    crashed_pid = int(marker.read_text())  # an actor really died: it wrote its pid, then os._exit(1)
    # the dead process returned nothing; its batch was run again by a restarted (or the other) actor
    assert crashed_pid not in report["actor_pids"]["int8"]
    # each image's detections are in the COCO file exactly once: 3, 2 and 1 (a lost batch drops an image, a
    # batch counted twice doubles one)
    dets = json.loads((coco_dir / "detections_int8.json").read_text())
    assert [d["image_id"] for d in dets] == [1, 1, 1, 2, 2, 3]
    m = report["models"]["int8"]
    assert m["images"] == 3 and m["coco_map_50"] == pytest.approx(EXPECTED["coco_map_50"], abs=1e-12)


@pytest.mark.slow
def test_a_failed_drawing_keeps_report_and_coco_files(setup, ray_local, monkeypatch, capsys):
    from raydet.report import draw

    def broken(*args, **kwargs):
        raise RuntimeError("no ink")

    monkeypatch.setattr(draw, "draw_detections", broken)
    out = setup["root"] / "run_broken_draw"
    H.write_run(out)
    report = evaluate(
        EvaluateConfig(run=str(out), data=str(setup["prep"]), models=("int8",), actors=1, batch_size=2, draw=2)
    )  # no coco_out: RUN/eval/coco
    printed = capsys.readouterr().out
    assert "drawings failed (RuntimeError: no ink)" in printed
    assert json.loads((out / "eval" / "report.json").read_text())["models"] == report["models"]
    assert len(json.loads((out / "eval" / "coco" / "detections_int8.json").read_text())) == 6
    assert not list((out / "eval").glob("images/*.png"))
    # report.html draws its gallery with the same (broken) function: the page says so, its figures stand
    page = (out / "eval" / "report.html").read_text()
    assert "no gallery: drawing failed (RuntimeError: no ink)" in page and "precision-recall" in page


@pytest.mark.slow
def test_a_failed_evaluate_leaves_the_previous_eval_folder_whole(setup, ray_local, monkeypatch):
    import raydet.evaluate.pool as E

    out = setup["root"] / "run_atomic_eval"
    H.write_run(out)
    cfg = EvaluateConfig(run=str(out), data=str(setup["prep"]), models=("int8",), actors=1, batch_size=2, draw=1)
    evaluate(cfg)
    before = {p.relative_to(out): p.read_bytes() for p in (out / "eval").rglob("*") if p.is_file()}
    assert Path("eval/report.json") in before and Path("eval/coco/detections_int8.json") in before

    def disk_full(coco_dir, *args, **kwargs):  # dies half-way through the COCO files
        coco_dir.mkdir(parents=True, exist_ok=True)
        (coco_dir / "ground_truth.json").write_text('{"images": [')
        raise OSError("No space left on device")

    monkeypatch.setattr(E, "write_coco", disk_full)
    with pytest.raises(OSError, match="No space left"):
        evaluate(cfg)
    after = {p.relative_to(out): p.read_bytes() for p in (out / "eval").rglob("*") if p.is_file()}
    assert after == before  # the previous evaluation, every file as it was
    assert [p.name for p in out.iterdir() if p.name.startswith(".eval")] == []  # no staging folder left


@pytest.mark.slow
def test_too_many_actors_for_the_cluster(setup, ray_local):
    cfg = EvaluateConfig(run=str(setup["run"]), data=str(setup["prep"]), models=("int8",), actors=2, threads=2, draw=0)
    with pytest.raises(ValueError, match="needs 4 CPUs"):
        evaluate(cfg)


@pytest.mark.slow
def test_read_eval_split_reads_once_in_one_block_per_call_and_keeps_no_pixels_in_the_truth(setup, ray_local, tmp_path):
    """3 test rows, 2 actors: batch_plan gives 3 blocks of 1 row; the blocks are in Ray's object store, so they
    map again after the files are gone (every model reuses them); ground truth sorted by file, without images."""
    import shutil

    from raydet.evaluate.pool import read_eval_split

    prep = tmp_path / "prep"
    shutil.copytree(setup["prep"], prep)
    ds, gt_rows, image_ids, rows = read_eval_split(str(prep), "test", H.SIZE, actors=2)
    assert rows == 1 and ds.num_blocks() == 3
    assert [r["file"] for r in gt_rows] == ["img_0.png", "img_1.png", "img_2.png"]
    assert "image" not in gt_rows[0] and gt_rows[1]["difficult"].tolist() == [0, 0, 1]  # G is difficult
    assert image_ids == {"img_0.png": 1, "img_1.png": 2, "img_2.png": 3}
    shutil.rmtree(prep)
    again = ds.map_batches(lambda b: {"file": b["file"]}).take_all()
    assert sorted(r["file"] for r in again) == [r["file"] for r in gt_rows]


@pytest.mark.slow
def test_every_path_evaluate_prints_exists_once_it_ends(setup, ray_local, capsys):
    """The COCO files, report.html and the drawings are written into RUN/.eval-staging-<id> and swapped in at the
    end: the messages name where they end up, never the staging folder."""
    out = setup["root"] / "run_printed_paths"
    H.write_run(out)
    evaluate(EvaluateConfig(run=str(out), data=str(setup["prep"]), models=("int8",), actors=1, batch_size=2, draw=1))
    printed = capsys.readouterr().out
    assert f"in {out / 'eval' / 'coco'}" in printed and ".eval-staging-" not in printed
    assert_printed_locations_exist(printed, str(out), at_least=3)


def test_coco_files_of_a_bucket_run_are_placed_without_a_current_directory(tmp_path, monkeypatch):
    """RUN/eval/coco of a bucket RUN is written in the stage and recorded as "coco", also where the current
    directory has been deleted (a Ray job's working dir cleaned up by its node)."""
    from raydet.evaluate.pool import coco_target

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    stage = tmp_path / "stage"
    assert coco_target(EvaluateConfig(run="s3://b/runs/main", data="s3://b/prep"), stage) == (stage / "coco", "coco")
    custom = EvaluateConfig(run="s3://b/runs/main", data="s3://b/prep", coco_out="s3://b/runs/main/eval/c/d")
    assert coco_target(custom, stage) == (stage / "c" / "d", "c/d")
