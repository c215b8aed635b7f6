"""``raydet predict``: images or folders of images -> drawn copies and ``predictions.json``.

Runs in this process, without Ray: a few images do not repay a cluster's start-up (seconds), and the model is
loaded once either way. Each image is decoded and resized to the model's input with
:func:`raydet.images.decode_resize` (the same decoder ``raydet prepare`` uses, so the model sees what it was
trained on); a file that cannot be read or decoded is reported with the reason and the rest go on.

``DIR/predictions.json``::

    {"model": "int8", "model_file": ".../model_int8.tflite", "classes": [...], "score_threshold": 0.0,
     "images": [{"file": "in/a.jpg", "output": "a.png", "width": 500, "height": 375,
                 "detections": [{"class": "raccoon", "label": 0, "score": 0.93,
                                 "box": [xmin, ymin, xmax, ymax]}]}],   # original pixels, xyxy
     "skipped": [{"file": "in/bad.jpg", "reason": "truncated or corrupt JPEG data: ..."}]}

An image whose detection scores below ``--score-threshold`` is listed with no detections and drawn without a box.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from raydet.config import PredictConfig

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
                skipped.append({"file": str(path), "reason": f"folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"})
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


def _read_rgb(path: Path) -> np.ndarray:
    """The stored pixels of an image already decoded once by decode_resize, as (H, W, 3) uint8 RGB."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _classes(run: Path) -> list[str]:
    path = run / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the class names come from the run's config.json")
    return list(json.loads(path.read_text())["classes"])


def predict(cfg: PredictConfig) -> dict:
    """Predict ``cfg.paths`` with model ``cfg.model`` of ``cfg.run``; writes ``cfg.out``. Returns the JSON's dict."""
    from raydet import draw
    from raydet.evaluate import ModelRunner, decode_predictions, require_models
    from raydet.images import ImageError, decode_resize

    # 1. everything that can be refused before loading the model
    run = Path(cfg.run)
    model_path = require_models(run, (cfg.model,))[cfg.model]
    classes = _classes(run)
    files, skipped = collect_images(cfg.paths)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    runner = ModelRunner(model_path, num_threads=os.cpu_count() or 1)
    size = runner.image_size
    print(f"predict: {len(files)} image(s) with {cfg.model} ({model_path.name}, {size} px) -> {out}", flush=True)

    # 2. decode, predict and draw chunk by chunk
    results, used = [], set()
    for start in range(0, len(files), CHUNK):
        chunk, pixels, sizes = [], [], []
        for path in files[start:start + CHUNK]:
            try:
                image, width, height = decode_resize(path.read_bytes(), size)
            except (OSError, ImageError) as exc:
                skipped.append({"file": str(path), "reason": str(exc)})
                continue
            chunk.append(path)
            pixels.append(image)
            sizes.append((width, height))
        if not chunk:
            continue
        logits, boxes_norm, _ = runner.predict(np.stack(pixels))
        wh = np.asarray(sizes, np.float64)
        labels, scores, boxes = decode_predictions(logits, boxes_norm, wh[:, 0], wh[:, 1])
        for i, path in enumerate(chunk):
            keep = scores[i] >= cfg.score_threshold
            dets = [{"class": classes[labels[i]], "label": int(labels[i]), "score": float(scores[i]),
                     "box": [float(v) for v in boxes[i]]}] if keep else []
            drawn = draw.draw_detections(_read_rgb(path), np.zeros((0, 4)), [],
                                         np.asarray([d["box"] for d in dets]).reshape(-1, 4),
                                         [d["class"] for d in dets], [d["score"] for d in dets])
            name = _output_name(path, used)
            draw.write_png(out / name, drawn)
            results.append({"file": str(path), "output": name, "width": int(sizes[i][0]),
                            "height": int(sizes[i][1]), "detections": dets})
        print(f"  {min(start + CHUNK, len(files))}/{len(files)} images", flush=True)

    # 3. the JSON, and the files that could not be used
    report = {"model": cfg.model, "model_file": str(model_path.resolve()), "classes": classes,
              "score_threshold": cfg.score_threshold, "images": results, "skipped": skipped}
    (out / "predictions.json").write_text(json.dumps(report, indent=1))
    print(f"predict: {len(results)} drawn, {len(skipped)} skipped; {out / 'predictions.json'}", flush=True)
    for s in skipped:
        print(f"  skipped {s['file']}: {s['reason']}", flush=True)
    return report
