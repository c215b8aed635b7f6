"""A small PREP folder made in the tests (docs/FORMATS.md schema, written with raydet.ingest.shards.write_shard):
coloured rectangles on dark noise, several per image, the class is the colour.

The rectangles never overlap and are at least a quarter of the image side, so a tiny network finds them in a
few epochs and a broken training, target or decode step shows up as a drop in AP.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLOURS = np.array([[230, 40, 40], [40, 200, 40], [50, 60, 230]], np.uint8)  # class 0, 1, 2


def scene(rng: np.random.Generator, size: int, classes: int, max_objects: int):
    """One image: (size, size, 3) uint8, boxes (G, 4) float32 xyxy normalized, labels (G,) int32, G in
    1..max_objects, boxes apart from each other by at least one pixel."""
    image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _try in range(20):
            w, h = (int(v) for v in rng.integers(size // 4, size // 2, 2))
            x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            box = np.array([x0, y0, x0 + w, y0 + h], np.float32)
            if all(box[0] > b[2] + 1 or box[2] < b[0] - 1 or box[1] > b[3] + 1 or box[3] < b[1] - 1 for b in boxes):
                break
        else:
            continue
        k = int(rng.integers(classes))
        image[y0 : y0 + h, x0 : x0 + w] = COLOURS[k]
        boxes.append(box)
        labels.append(k)
    return image, np.array(boxes, np.float32).reshape(-1, 4) / size, np.array(labels, np.int32)


def rows_of(n: int, size: int = 32, classes: int = 2, max_objects: int = 3, seed: int = 0, prefix: str = "img"):
    """n PREP rows (raydet.ingest.shards row dicts) padded to K = max_objects."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        image, boxes, labels = scene(rng, size, classes, max_objects)
        g = len(labels)
        padded_boxes = np.zeros((max_objects, 4), np.float32)
        padded_labels = np.full(max_objects, -1, np.int32)
        padded_boxes[:g], padded_labels[:g] = boxes, labels
        rows.append(
            {
                "file": f"{prefix}_{i:04d}.png",
                "image": image,
                "boxes": padded_boxes,
                "labels": padded_labels,
                "difficult": np.zeros(max_objects, np.uint8),
                "num_objects": g,
                "width": size,
                "height": size,
            }
        )
    return rows


def make_prep(
    out: Path,
    n_train: int = 128,
    n_test: int = 64,
    size: int = 32,
    classes: int = 2,
    max_objects: int = 3,
    seed: int = 0,
) -> Path:
    """A PREP folder at ``out``: train and test splits of 2 shards each, and its manifest."""
    from raydet.ingest.shards import write_shard

    names = ["red", "green", "blue"][:classes]
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        (out / split).mkdir(parents=True, exist_ok=True)
        rows = rows_of(n, size, classes, max_objects, s, prefix=split)
        for part, chunk in enumerate((rows[: n // 2], rows[n // 2 :])):
            write_shard(str(out / split / f"part-{part:07d}.parquet"), chunk)
    (out / "manifest.json").write_text(
        json.dumps(
            {
                "classes": names,
                "image_size": size,
                "image_encoding": "raw_uint8_hwc",
                "max_objects": max_objects,
                "splits": {"train": n_train, "test": n_test},
            }
        )
    )
    return out
