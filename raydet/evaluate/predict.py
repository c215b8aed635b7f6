"""``raydet predict``: images or folders of images -> drawn copies and ``predictions.json``.

Runs in this process, without Ray: a few images do not repay a cluster's start-up (seconds), and the model is
loaded once either way. Each image is decoded and resized to the model's input with
:func:`raydet.ingest.images.decode_resize` (the same decoder ``raydet prepare`` uses, so the model sees what it was
trained on); a file that cannot be read or decoded is reported with the reason and the rest go on.

``DIR/predictions.json``::

    {"model": "int8", "model_file": ".../model_int8.tflite", "classes": [...], "score_threshold": 0.3,
     "complete": true,
     "images": [{"file": "in/a.jpg", "output": "a.png", "width": 500, "height": 375,
                 "detections": [{"class": "raccoon", "label": 0, "score": 0.93,
                                 "box": [xmin, ymin, xmax, ymax]}, ...]}],   # original pixels, xyxy, best first
     "skipped": [{"file": "in/bad.jpg", "reason": "truncated or corrupt JPEG data: ..."}]}

Every detection of :func:`raydet.detector.decode.decode` with score >= ``--score-threshold`` (at most ``TOP_K`` per
image) is listed and drawn; an image without one is listed with no detections and drawn without a box. The file
is rewritten (atomically: beside it, then renamed) after every chunk of ``CHUNK`` images with ``"complete":
false``, so a predict that is interrupted keeps every image finished so far; the last write says ``true``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from raydet.cluster import storage
from raydet.config import PredictConfig
from raydet.detector.decode import TOP_K, decode, to_pixels
from raydet.errors import UserError
from raydet.export.run import Run
from raydet.export.runner import ModelRunner, check_run, require_models
from raydet.ingest.images import ImageError, decode_resize, decode_rgb
from raydet.report import draw

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
CHUNK = 64  # images decoded, predicted and drawn together: bounded memory for any number of files


def collect_images(paths: tuple[str, ...] | list[str]) -> tuple[list[Path], list[dict]]:
    """Files to predict, in the order given (a folder's images sorted, searched recursively by suffix), and
    ``[{file, reason}]`` for paths that do not exist. A file named directly is taken whatever its suffix: the
    decoder decides."""
    files, skipped, seen = [], [], set()
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                skipped.append(
                    {"file": str(path), "reason": f"folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"}
                )
        elif path.is_file():
            found = [path]
        else:
            skipped.append({"file": str(path), "reason": "no such file or folder"})
            found = []
        for p in found:
            if p.resolve() not in seen:  # a file named twice (or inside a named folder too) is predicted once
                seen.add(p.resolve())
                files.append(p)
    return files, skipped


def _output_name(path: Path, used: set[str]) -> str:
    """``<stem>.png``, with ``_1``, ``_2``... when two inputs share a stem (e.g. a.jpg and a.png, or two folders)."""
    name, k = f"{path.stem}.png", 0
    while name in used:
        k += 1
        name = f"{path.stem}_{k}.png"
    used.add(name)
    return name


def draw_prediction(
    path: Path, boxes: np.ndarray, names: list[str], scores: list[float], max_pixels: int
) -> np.ndarray:
    """The drawing of ``path``'s detections (``boxes`` (D, 4) xyxy in its stored pixels): :func:`draw_encoded`
    of the file's bytes read again."""
    return draw_encoded(path.read_bytes(), boxes, names, scores, max_pixels)


def draw_encoded(data: bytes, boxes: np.ndarray, names: list[str], scores: list[float], max_pixels: int) -> np.ndarray:
    """The drawing of an encoded image's detections (``boxes`` (D, 4) xyxy in its stored pixels): its pixels
    through :func:`raydet.ingest.images.decode_rgb` (the checks and decoders ``decode_resize`` used, so an image the
    model saw is an image that can be drawn), then :func:`raydet.report.draw.draw_detections` (at most
    ``MAX_DRAW_PIXELS``) -> (H', W', 3) uint8 RGB."""

    image = decode_rgb(data, max_pixels=max_pixels)
    return draw.draw_detections(image, np.zeros((0, 4)), [], boxes, names, scores)


def detect(
    runner,
    pixels: np.ndarray,
    sizes: list[tuple[int, int]],
    classes: list[str],
    score_threshold: float | list[float],
    top_k: int = TOP_K,
) -> tuple[list[list[dict]], np.ndarray]:
    """The detections of decoded images, as ``raydet predict`` and ``raydet serve`` report them.

    ``pixels`` (N, S, S, 3) uint8 RGB from :func:`raydet.ingest.images.decode_resize`; ``sizes`` N ``(width, height)``
    of the stored images; ``score_threshold`` one for all or one per image. Returns, per image, the
    :func:`raydet.detector.decode.decode` peaks scoring >= its threshold (at most ``top_k``, best first) as
    ``{"class", "label", "score", "box"}`` with ``box`` ``[x0, y0, x1, y1]`` in the stored image's pixels, and
    the model's seconds per image (N,) (:meth:`raydet.export.runner.ModelRunner.predict`).
    """

    thresholds = [score_threshold] * len(sizes) if np.isscalar(score_threshold) else list(score_threshold)
    outputs, seconds = runner.predict(pixels)
    # one decode at the lowest threshold, then each image's own: the best top_k above a threshold are among the
    # best top_k above any lower one (decode keeps the best by score)
    decoded = decode(outputs["heatmap"], outputs["boxes"], top_k=top_k, score_threshold=min(thresholds, default=1.0))
    results = []
    for (width, height), det, threshold in zip(sizes, decoded, thresholds, strict=True):
        keep = det.scores >= threshold
        boxes = to_pixels(det.boxes[keep], width, height)
        results.append(
            [
                {
                    "class": classes[int(label)],
                    "label": int(label),
                    "score": float(score),
                    "box": [float(v) for v in box],
                }
                for box, label, score in zip(boxes, det.labels[keep], det.scores[keep], strict=True)
            ]
        )
    return results, seconds


def run_classes(run: Path) -> list[str]:
    """The class names of a RUN folder, in label order, from its config.json (UserError when it names none)."""

    return list(Run(run).read_config(need=("classes",))["classes"])


def predict(cfg: PredictConfig) -> dict:
    """Predict ``cfg.paths`` with model ``cfg.model`` of ``cfg.run`` (a path or URI: a URI's config.json and model
    file are fetched into a temporary folder); writes ``cfg.out``. Returns the JSON's dict."""

    with storage.local_copy(cfg.run, fetch=[Run.CONFIG, Run.model_name(cfg.model)]) as run:
        return _predict(cfg, run)


def _predict(cfg: PredictConfig, run: Path) -> dict:
    """:func:`predict` on a local RUN folder ``run``."""

    # 1. everything that can be refused before loading the model
    model_path = require_models(run, (cfg.model,))[cfg.model]
    check_run(run, (cfg.model,))
    classes = run_classes(run)
    files, skipped = collect_images(cfg.paths)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    runner = ModelRunner(model_path, num_threads=os.cpu_count() or 1)
    if runner.num_classes != len(classes):
        raise UserError(
            f"{model_path.name} predicts {runner.num_classes} classes, {Run(run).file(Run.CONFIG)} names "
            f"{len(classes)}: {classes}"
        )
    print(
        f"predict: {len(files)} image(s) with {cfg.model} ({model_path.name}, {runner.image_size} px) -> {out}",
        flush=True,
    )

    # 2. decode, predict and draw chunk by chunk; the JSON is rewritten after each
    report = {
        "model": cfg.model,
        "model_file": str(model_path.resolve()),
        "classes": classes,
        "score_threshold": cfg.score_threshold,
        "complete": False,
        "images": [],
        "skipped": skipped,
    }
    used: set[str] = set()
    _write_json(out / "predictions.json", report)  # no stale file from an earlier predict stands in for this one
    for start in range(0, len(files), CHUNK):
        report["images"] += _predict_chunk(
            runner, files[start : start + CHUNK], classes, cfg.score_threshold, out, used, skipped, cfg.max_pixels
        )
        _write_json(out / "predictions.json", report)
        print(f"  {min(start + CHUNK, len(files))}/{len(files)} images", flush=True)

    # 3. the final JSON, and the files that could not be used
    report["complete"] = True
    _write_json(out / "predictions.json", report)
    print(f"predict: {len(report['images'])} drawn, {len(skipped)} skipped; {out / 'predictions.json'}", flush=True)
    for s in skipped:
        print(f"  skipped {s['file']}: {s['reason']}", flush=True)
    return report


def _write_json(path: Path, obj: dict) -> None:
    """``obj`` as JSON at ``path``, whole or not at all (written beside it, then renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _predict_chunk(
    runner,
    paths: list[Path],
    classes: list[str],
    score_threshold: float,
    out: Path,
    used: set[str],
    skipped: list[dict],
    max_pixels: int,
) -> list[dict]:
    """Decode, predict, draw and describe ``paths``; files that cannot be decoded (over ``max_pixels`` pixels
    included) go to ``skipped``, as does one that changed between its decode and its drawing. Returns one dict
    per drawn image (the ``images`` entries of predictions.json)."""

    chunk, pixels, sizes = [], [], []
    for path in paths:
        try:
            image, width, height = decode_resize(path.read_bytes(), runner.image_size, max_pixels=max_pixels)
        except (OSError, ImageError) as exc:
            skipped.append({"file": str(path), "reason": str(exc)})
            continue
        chunk.append(path)
        pixels.append(image)
        sizes.append((width, height))
    if not chunk:
        return []
    detections, _ = detect(runner, np.stack(pixels), sizes, classes, score_threshold)
    results = []
    for path, (width, height), dets in zip(chunk, sizes, detections, strict=True):
        boxes = np.array([d["box"] for d in dets], np.float64).reshape(-1, 4)
        try:
            drawn = draw_prediction(path, boxes, [d["class"] for d in dets], [d["score"] for d in dets], max_pixels)
        except (OSError, ImageError) as exc:  # replaced or removed since it was decoded a moment ago
            skipped.append({"file": str(path), "reason": f"cannot be drawn: {exc}"})
            continue
        name = _output_name(path, used)
        draw.write_png(out / name, drawn)
        results.append(
            {"file": str(path), "output": name, "width": int(width), "height": int(height), "detections": dets}
        )
    return results
