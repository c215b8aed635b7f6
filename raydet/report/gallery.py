"""Test images for people to look at: their pixels read back from PREP (pyarrow, no Ray) or the dataset, drawn
with ground truth and detections (raydet.report.draw), encoded for a web page. No TensorFlow.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from raydet.cluster import storage
from raydet.ingest.images import MAX_PIXELS, ImageError, decode_rgb
from raydet.ingest.shards import image_array
from raydet.report import draw, heavy

JPEG_QUALITY = 85  # drawn photos in report.html: a tenth of the PNG's bytes, the boxes and labels still crisp


def rows_by_file(prep: str | os.PathLike, split: str, files: set[str]) -> dict[str, dict]:
    """The PREP rows of ``files`` in ``PREP/split`` -> {file: row}, each row with ``file``, ``width``,
    ``height`` (original pixels) and ``image`` (S, S, 3) uint8; files not in the split are absent."""
    pads, pc = heavy.arrow_dataset()
    if not files:
        return {}
    filesystem, root = storage.resolve(prep)  # a path or a URI: never a Path, which would turn s3:// into s3:/
    dataset = pads.dataset(f"{root}/{split}", format="parquet", filesystem=filesystem)
    table = dataset.to_table(columns=["file", "image", "width", "height"], filter=pc.field("file").isin(sorted(files)))
    images = image_array(table)
    cols = {c: table.column(c).to_pylist() for c in ("file", "width", "height")}
    return {
        f: {"file": f, "width": w, "height": h, "image": images[i]}
        for i, (f, w, h) in enumerate(zip(cols["file"], cols["width"], cols["height"], strict=True))
    }


def original_image(
    source: str | None, row: dict, max_bytes: int = 64 * 2**20, max_pixels: int | None = None
) -> np.ndarray:
    """The row's image at its original size, RGB uint8: the dataset's own file when it can be read (sharper),
    else the PREP image stretched back to ``width`` x ``height``. ``source`` is the dataset's path or URI
    (raydet.cluster.storage); the file is decoded through raydet.ingest.images (the formats and limits ``raydet
    prepare`` applied: a file over ``max_bytes`` or ``max_pixels`` is not read)."""
    width, height = int(row["width"]), int(row["height"])
    if source:
        location = storage.join(source, row["file"])
        try:
            if storage.size(location) <= max_bytes:
                rgb = decode_rgb(storage.read_bytes(location), max_pixels=max_pixels or MAX_PIXELS)
                if rgb.shape[:2] == (height, width):
                    return rgb
        except (OSError, ValueError, ImageError):
            pass  # moved, unreadable, changed or refused: fall back to the PREP pixels
    # the PREP pixels stretched back to the original frame the boxes live in (at most --max-pixels of prepare)
    return cv2.resize(np.asarray(row["image"]), (width, height), interpolation=cv2.INTER_LINEAR)


def draw_result(base_rgb: np.ndarray, result, classes: list[str], score_threshold: float) -> np.ndarray:
    """``base_rgb`` (H, W, 3) uint8 at original size with ``result``'s (a raydet.report.analysis.ImageResult, boxes in
    original pixels) ground truth in green and its detections scoring >= ``score_threshold`` in red."""

    keep = result.det_scores >= score_threshold
    return draw.draw_detections(
        base_rgb,
        result.gt_boxes,
        [classes[i] for i in result.gt_labels],
        result.det_boxes[keep],
        [classes[i] for i in result.det_labels[keep]],
        result.det_scores[keep].tolist(),
    )


def jpeg(image_rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG file bytes."""
    ok, data = cv2.imencode(
        ".jpg",
        cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, int(quality)],
    )
    if not ok:
        raise ValueError(f"OpenCV could not encode a {np.shape(image_rgb)} image as JPEG")
    return data.tobytes()
