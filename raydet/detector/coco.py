"""COCO export: ground truth as a COCO instances file, predictions as a COCO results file. No Ray, no TensorFlow.

Ids, the same in both files (and in :func:`raydet.detector.metrics.match_image`'s ``image_id`` for exact agreement):

- ``category_id = label + 1``: COCO tools reserve 0 for the background, so raydet's class index ``i``
  (``classes[i]``) is category ``i + 1``; :func:`label_of` undoes it.
- image ``id``: the image dict's ``"id"`` if it has one, else its position in the list + 1. Annotation ids start
  at 1 (pycocotools reads a match to annotation id 0 as no match).

Boxes go out as ``bbox = [xmin, ymin, xmax - xmin, ymax - ymin]`` in original image pixels, no +/-1 shift
(continuous coordinates, as :mod:`raydet.detector.boxes`), ``area = w * h`` and ``iscrowd = 0``: every ground-truth
object counts (see :mod:`raydet.detector.metrics` on ``difficult``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raydet.detector.boxes import xyxy_to_xywh


def category_id(label: int) -> int:
    """raydet class index -> COCO ``category_id``."""
    return int(label) + 1


def label_of(category: int) -> int:
    """COCO ``category_id`` -> raydet class index."""
    return int(category) - 1


def image_id(position: int) -> int:
    """Default COCO image id of the image at ``position`` (0-based) in the list given to :func:`ground_truth`."""
    return int(position) + 1


def _bbox(box_xyxy, where: str) -> list[float]:
    box = np.asarray(box_xyxy, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] < box[0] or box[3] < box[1]:
        raise ValueError(
            f"{where}: box must be 4 finite xyxy pixel values with xmax >= xmin and ymax >= ymin, "
            f"got {np.asarray(box_xyxy).tolist()}"
        )
    return [float(v) for v in xyxy_to_xywh(box)]


def _label(label, num_classes: int, where: str) -> int:
    if (
        isinstance(label, (bool, np.bool_))
        or not isinstance(label, (int, np.integer))
        or not 0 <= int(label) < num_classes
    ):
        shown = label.item() if isinstance(label, np.generic) else label
        raise ValueError(f"{where}: label must be a class index in [0, {num_classes}), got {shown!r}")
    return int(label)


def ground_truth(images: Sequence[dict], classes: Sequence[str]) -> dict[str, Any]:
    """COCO instances dict of the ground truth.

    ``images``: one dict per image with ``file`` (the Parquet ``file`` column, written as ``file_name``),
    ``width`` and ``height`` (original pixels), ``boxes`` (G, 4) xyxy original pixels without padding rows,
    ``labels`` (G,) class indices, and optionally ``id`` (else position + 1). ``classes``: the class names, in
    label order. Bad values raise ValueError naming the image.
    """
    if not classes:
        raise ValueError("classes must name at least one class")
    out_images, annotations, seen = [], [], set()
    for pos, img in enumerate(images):
        name = img.get("file", f"image #{pos}")
        img_id = int(img.get("id", image_id(pos)))
        if img_id in seen:
            raise ValueError(f"{name}: image id {img_id} used twice")
        seen.add(img_id)
        width, height = img["width"], img["height"]
        if not (width > 0 and height > 0):
            raise ValueError(f"{name}: width and height must be positive, got {width!r} x {height!r}")
        boxes = np.asarray(img["boxes"], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(img["labels"]).reshape(-1)
        if len(boxes) != len(labels):
            raise ValueError(f"{name}: {len(boxes)} boxes but {len(labels)} labels")
        out_images.append({"id": img_id, "file_name": str(img["file"]), "width": int(width), "height": int(height)})
        for box, label in zip(boxes, labels, strict=True):
            bbox = _bbox(box, name)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img_id,
                    "category_id": category_id(_label(label, len(classes), name)),
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": category_id(i), "name": str(n), "supercategory": "none"} for i, n in enumerate(classes)]
    return {
        "info": {"description": "raydet ground truth"},
        "images": out_images,
        "annotations": annotations,
        "categories": categories,
    }


def detections(predictions: Sequence[dict], classes: Sequence[str]) -> list[dict[str, Any]]:
    """COCO results list: one ``{image_id, category_id, bbox, score}`` per prediction, in the order given.

    ``predictions``: dicts with ``image_id`` (the id :func:`ground_truth` gave the image), ``box`` (4,) xyxy original
    pixels, ``label`` (class index) and ``score``. Keep each image's detections in the order given to
    :func:`raydet.detector.metrics.match_image`, so ties of score resolve the same way in both.
    """
    out = []
    for pos, p in enumerate(predictions):
        where = f"prediction #{pos} (image {p.get('image_id')!r})"
        score = float(p["score"])
        if not math.isfinite(score):
            raise ValueError(f"{where}: score must be finite, got {p['score']!r}")
        out.append(
            {
                "image_id": int(p["image_id"]),
                "category_id": category_id(_label(p["label"], len(classes), where)),
                "bbox": _bbox(p["box"], where),
                "score": score,
            }
        )
    return out


def _plain(obj):
    # numpy scalars and arrays that slipped into a dict become JSON numbers and lists
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as standard JSON (NaN refused) to ``path``, creating folders; the file appears whole or not
    at all (written beside it, then renamed). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, default=_plain, allow_nan=False)
    os.replace(tmp, path)
    return path
