"""Test images for people to look at: their pixels read back from PREP (pyarrow, no Ray) or the dataset, drawn
with ground truth and detections (raydet.draw), encoded for a web page. No TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

JPEG_QUALITY = 85  # drawn photos in report.html: a tenth of the PNG's bytes, the boxes and labels still crisp


def read_rows(prep: str | os.PathLike, split: str, files: set[str]) -> dict[str, dict]:
    """The PREP rows of ``files`` in ``PREP/split`` -> {file: row}, each row with ``file``, ``width``,
    ``height`` (original pixels) and ``image`` (S, S, 3) uint8; files not in the split are absent."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from raydet.shards import image_array

    if not files:
        return {}
    dataset = pads.dataset(str(Path(prep) / split), format="parquet")
    table = dataset.to_table(columns=["file", "image", "width", "height"],
                             filter=pc.field("file").isin(sorted(files)))
    images = image_array(table)
    cols = {c: table.column(c).to_pylist() for c in ("file", "width", "height")}
    return {f: {"file": f, "width": w, "height": h, "image": images[i]}
            for i, (f, w, h) in enumerate(zip(cols["file"], cols["width"], cols["height"]))}


def original_image(source: str | None, row: dict) -> np.ndarray:
    """The row's image at its original size, RGB uint8: the dataset's own file when it is reachable on this
    machine (sharper), else the PREP image stretched back to ``width`` x ``height``."""
    import cv2
    from PIL import Image

    if source and "://" not in source:
        path = Path(source) / row["file"]
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
            if rgb.shape[:2] == (int(row["height"]), int(row["width"])):
                return rgb
        except OSError:
            pass  # moved, unreadable or not local: fall back to the PREP pixels
    return cv2.resize(np.asarray(row["image"]), (int(row["width"]), int(row["height"])),
                      interpolation=cv2.INTER_LINEAR)


def draw_result(base_rgb: np.ndarray, result, classes: list[str], score_threshold: float) -> np.ndarray:
    """``base_rgb`` (H, W, 3) uint8 at original size with ``result``'s (a raydet.analysis.ImageResult, boxes in
    original pixels) ground truth in green and its detections scoring >= ``score_threshold`` in red."""
    from raydet import draw

    keep = result.det_scores >= score_threshold
    return draw.draw_detections(base_rgb, result.gt_boxes, [classes[i] for i in result.gt_labels],
                                result.det_boxes[keep], [classes[i] for i in result.det_labels[keep]],
                                result.det_scores[keep].tolist())


def jpeg(image_rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG file bytes."""
    import cv2

    ok, data = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {np.shape(image_rgb)} image as JPEG")
    return data.tobytes()
