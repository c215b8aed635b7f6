"""What ``raydet evaluate`` writes besides report.html: ``report.json`` and ``report.md``, the COCO files, the
drawn example images and contact sheets; and the per-image results they are made from (:class:`ImageDetections`,
:class:`ModelResult`); where RUN/eval is in a bucket (:func:`eval_dir`, :func:`publish_eval`). No Ray: the driver
calls these on results the actors sent back."""

from __future__ import annotations

import json
import math
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raydet.cluster import storage
from raydet.cluster.sizes import format_size
from raydet.detector import coco
from raydet.detector.boxes import denormalize_xyxy
from raydet.errors import UserError
from raydet.export.run import Run
from raydet.report import draw
from raydet.report.gallery import original_image

REPORT_JSON = "report.json"  # the eval folder's figures (report.md and report.html are drawn from the same dict)
DRAW_SCORE_THRESHOLD = 0.3  # detections drawn on the example images and contact sheets


# A bucket cannot rename a folder: RUN/eval there is written under a new prefix, RUN/eval-<id>, and switched in by
# one small write of RUN/eval.json (an object PUT is atomic), which readers follow (:func:`eval_dir`). An upload
# cut short leaves the pointer, so the previous eval, as they were (the names: raydet.export.run.Run).
def eval_dir(run: str | os.PathLike) -> str:
    """Where ``run``'s evaluation is: ``RUN/eval`` for a local run; in a bucket the prefix RUN/eval.json names
    (``RUN/eval`` when there is no pointer: a run evaluated before pointers, or never)."""
    pointer = Run(run).file(Run.EVAL_POINTER)
    if not storage.is_uri(run) or storage.kind(pointer) != "file":
        return Run(run).file(Run.EVAL)
    name = json.loads(storage.read_text(pointer))["eval"]
    if not name.startswith(Run.EVAL_PREFIX) or "/" in name:
        raise UserError(f"{pointer}: names {name!r}, not an {Run.EVAL_PREFIX}<id> folder of the run")
    return storage.join(run, name)


def published_dir(run: str | os.PathLike, run_id: str) -> str:
    """Where evaluate ``run_id``'s RUN/eval ends up: ``RUN/eval`` for a local run, ``RUN/eval-<run_id>`` in a
    bucket (:func:`publish_eval`)."""
    return storage.join(run, f"{Run.EVAL_PREFIX}{run_id}" if storage.is_uri(run) else Run.EVAL)


def publish_eval(local_eval: Path, run: str, run_id: str) -> str:
    """Upload ``local_eval`` to ``run``/eval-``run_id`` (a URI), point RUN/eval.json at it, then delete the eval
    it replaces; returns the new location. Until the pointer is written readers see the previous eval whole."""
    previous, target = eval_dir(run), published_dir(run, run_id)
    storage.upload(local_eval, target, sorted(storage.list_files(str(local_eval))))
    storage.write_text(Run(run).file(Run.EVAL_POINTER), json.dumps({"eval": posixpath.basename(target)}) + "\n")
    storage.delete_dir(previous)
    return target


@dataclass(frozen=True, eq=False)
class ImageDetections:
    """One image's detections, best first: ``boxes`` (D, 4) float64 xyxy original pixels, ``labels`` (D,) int64,
    ``scores`` (D,) float64; ``file`` (the PREP ``file``) and ``image_id`` (its COCO id)."""

    file: str
    image_id: int
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray


def ground_truth_pixels(boxes_norm: np.ndarray, labels: np.ndarray, num_objects: int, width: int, height: int):
    """One PREP row's padded ``boxes`` (K, 4) normalized xyxy and ``labels`` (K,) -> the real (G, 4) float64
    pixel xyxy boxes and (G,) int64 labels (padding rows dropped)."""

    n = int(num_objects)
    return denormalize_xyxy(np.asarray(boxes_norm)[:n], width, height), np.asarray(labels)[:n].astype(np.int64)


@dataclass
class ModelResult:
    """One model's finished figures (``report``: the REPORT_KEYS) and its per-image detections (by image id)."""

    name: str
    report: dict
    images: list[ImageDetections] = field(default_factory=list)
    actor_pids: set[int] = field(default_factory=set)  # the processes that produced results (a restart adds one)


def write_report(out: Path, report: dict, show_table: bool = True) -> None:
    """``out/report.json`` (NaN written as null) and ``out/report.md`` (models table, per-class table); prints
    the models table when ``show_table``."""

    coco.write_json(out / REPORT_JSON, _json_safe(report))
    table = format_table(report["models"])
    (out / "report.md").write_text(_markdown(report, table, format_class_table(report["models"], report["classes"])))
    if show_table:
        print(table, flush=True)


def _json_safe(obj):
    """NaN (a metric without ground truth) -> None, since standard JSON has no NaN."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


_MD_SPECIAL = set("\\|<>*_`[]$&~")  # escaped in report.md; $: GitHub reads $..$ as math, &: an entity, ~: strike


def md_text(value) -> str:
    """Text from data (a class, model or file name, a path) for one Markdown table cell or line, shown literally:
    each character of ``\\ | < > * _ ` [ ] $ & ~`` gets a backslash (so a ``|`` does not split a table cell and
    ``<b>`` is not HTML), line breaks become spaces (a row stays one line)."""
    text = " ".join(str(value).splitlines())
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in text)


def _f(v, fmt: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def format_table(models: dict[str, dict]) -> str:
    """The report's models as a Markdown table (also printed)."""
    head = [
        "model",
        "COCO mAP",
        "AP50",
        "AP75",
        "VOC AP50",
        "VOC07 AP50",
        "det/img",
        "images",
        "images/s",
        "p50 ms",
        "p95 ms",
        "size",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in models.items():
        cells = [md_text(name)] + [
            _f(m[k], ".3f") for k in ("coco_map", "coco_map_50", "coco_map_75", "voc_map_50", "voc07_map_50")
        ]
        cells += [
            _f(m["detections_per_image"], ".1f"),
            str(m["images"]),
            _f(m["images_per_s"], ".1f"),
            _f(m["latency_ms_p50"], ".3f"),
            _f(m["latency_ms_p95"], ".3f"),
            format_size(m["size_bytes"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_class_table(models: dict[str, dict], classes: list[str]) -> str:
    """Per class: its ground-truth objects, then each model's COCO AP50 and recall at IoU 0.5 (Markdown)."""
    head = ["class", "objects"] + [f"{md_text(name)} {what}" for name in models for what in ("AP50", "recall50")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c, cls in enumerate(classes):
        first = next(iter(models.values()))["per_class"][c] if models else {"ground_truth": 0}
        cells = [md_text(cls), str(first["ground_truth"])]
        for m in models.values():
            cells += [_f(m["per_class"][c]["ap50"], ".3f"), _f(m["per_class"][c]["recall50"], ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown(report: dict, table: str, class_table: str) -> str:
    return (
        f"# raydet evaluation\n\n{md_text(report['split'])} split of {md_text(report['data'])}, classes: "
        f"{', '.join(md_text(c) for c in report['classes'])}; {report['actors']} actor(s) x "
        f"{report['threads']} thread(s), batch size {report['batch_size']}.\n\n{table}\n\n## Per class\n\n"
        f"{class_table}\n\n"
        f"- detections: the {report['top_k']} best heatmap peaks per image with score >= "
        f"{report['score_threshold']}, then box NMS at IoU {report['nms_iou']} within each class (every one left is "
        "in the metrics and the COCO detections file); drawings show "
        f"those with score >= {report['draw_score_threshold']}.\n"
        "- COCO mAP / AP50 / AP75: pycocotools' 101-point AP at IoU .50:.95 / .50 / .75 (difficult objects "
        "count); VOC AP50: all-point AP at IoU > 0.5, VOC07: 11-point (difficult objects ignored).\n"
        "- recall50: objects matched at IoU 0.5 under COCO's rules.\n"
        "- images/s: from the first batch's start to the last batch's end in the actors (model loading "
        "excluded; decoding and matching included).\n"
        "- latency: .tflite models are invoked one image at a time and each invoke is timed; the Keras model "
        "is called once per chunk and each image gets the call's time / images.\n"
    )


# ---------------------------------------------------------------------------------------------- drawings


def draw_or_report(
    out: Path, ds, count: int, results: dict[str, ModelResult], classes: list[str], source: str | None, shown: str
) -> None:
    """Draw ``count`` images of ``ds`` into ``out`` (``shown``: where they will be, for the message); any failure
    is printed, not raised (the report is written by now)."""
    try:
        rows = sorted(ds.limit(count).take_all(), key=lambda r: r["file"])
        sheets = draw_examples(out, rows, results, classes, source)
        print(
            f"drawings: {len(rows)} images per model in {shown} (contact sheets: {', '.join(p.name for p in sheets)})",
            flush=True,
        )
    except Exception as exc:  # drawings are a by-product; the metrics are already written
        print(f"drawings failed ({type(exc).__name__}: {exc}); report and COCO files are written", flush=True)


def draw_examples(
    out: Path, rows: list[dict], results: dict[str, ModelResult], classes: list[str], source: str | None
) -> list[Path]:
    """Draw ``rows`` (PREP rows with ``image``) with ground truth (green) and each model's detections of score
    >= ``DRAW_SCORE_THRESHOLD`` (all of them, labelled with class and score).

    Writes ``out/<model>_<k>_<stem>.png`` per image and model and ``out/contact_sheet_<model>.png``; returns the
    contact sheets' paths.
    """

    sheets = []
    bases = [original_image(source, r) for r in rows]
    for name, result in results.items():
        by_file = {im.file: im for im in result.images}
        drawn, captions = [], []
        for k, (row, base) in enumerate(zip(rows, bases, strict=True)):
            gt, gt_labels = ground_truth_pixels(
                row["boxes"], row["labels"], row["num_objects"], row["width"], row["height"]
            )
            det = by_file[row["file"]]
            keep = det.scores >= DRAW_SCORE_THRESHOLD
            img = draw.draw_detections(
                base,
                gt,
                [classes[i] for i in gt_labels],
                det.boxes[keep],
                [classes[i] for i in det.labels[keep]],
                det.scores[keep].tolist(),
            )
            stem = Path(row["file"]).stem
            draw.write_png(out / f"{name}_{k:03d}_{stem}.png", img)
            drawn.append(img)
            captions.append(f"{stem}: {int(keep.sum())} found, {len(gt)} true")
        sheet = draw.contact_sheet(drawn, columns=4, tile=256, captions=captions)
        sheets.append(draw.write_png(out / f"contact_sheet_{name}.png", sheet))
    return sheets


# ---------------------------------------------------------------------------------------------- COCO files


def write_coco(
    out: Path, gt_rows: list[dict], classes: list[str], results: dict[str, ModelResult], shown: str | None = None
) -> list[Path]:
    """``out/ground_truth.json`` (COCO instances; ``file_name`` = the Parquet ``file``, ids = position + 1 in
    ``gt_rows``, which must be sorted as the ids were given) and ``out/detections_<model>.json`` (COCO results:
    every detection the metrics saw, bbox ``[xmin, ymin, w, h]`` original pixels, each image's in score order).
    ``shown``: where the files will be once the command ends (``out`` may be a staging folder), for the message."""

    images = []
    for row in gt_rows:
        boxes, labels = ground_truth_pixels(
            row["boxes"], row["labels"], row["num_objects"], row["width"], row["height"]
        )
        images.append(
            {
                "file": row["file"],
                "width": int(row["width"]),
                "height": int(row["height"]),
                "boxes": boxes,
                "labels": labels,
            }
        )
    written = [coco.write_json(out / "ground_truth.json", coco.ground_truth(images, classes))]
    for name, result in results.items():
        predictions = [
            {"image_id": im.image_id, "box": box, "label": int(label), "score": float(score)}
            for im in result.images
            for box, label, score in zip(im.boxes, im.labels, im.scores, strict=True)
        ]
        written.append(coco.write_json(out / f"detections_{name}.json", coco.detections(predictions, classes)))
    print(f"COCO files: {', '.join(p.name for p in written)} in {shown or out}", flush=True)
    return written
