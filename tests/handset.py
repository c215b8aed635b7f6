"""A hand-set dense detector for the evaluate / predict / tflite tests: its answers are known without training.

The model (tf_keras, the raydet.detector.model contract: input ``image`` (N, 32, 32, 3) float32 0..255, outputs
``heatmap`` (N, 8, 8, 2) and ``boxes`` (N, 8, 8, 4)) is ``Rescaling(1/255) -> AveragePooling2D(4)`` (the mean colour
(r, g, b) in [0, 1] of each 4 x 4 pixel cell) followed by two 1x1 convolutions with set weights:

- ``heatmap``: class 0 ("red") = sigmoid(12 r - 12 b - 6), class 1 ("blue") = sigmoid(12 b - 12 r - 6);
- ``boxes``: [off_x, off_y, w, h] = [0.5, 0.5, g, g] (linear).

A scene paints each object as one solid 4 x 4 cell: class 0 with (51 s, 51 z, 0), class 1 with (0, 51 z, 51 s),
for levels s, z in 1..5, i.e. strength s / 5 and size z / 5 exactly (51 / 255 = 1 / 5). Everything else is black,
whose score sigmoid(-6) = 0.0025 is under every threshold used, and a lone painted cell is a peak. So an object at
cell (ix, iy) is detected with score sigmoid(12 s / 5 - 6) and the box centred at ((ix + 0.5) / 8, (iy + 0.5) / 8)
of side z / 5 (xyxy normalized): :func:`expected`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

SIZE, GRID, CELL = 32, 8, 4
CLASSES = ["red", "blue"]


class Obj(NamedTuple):
    ix: int  # cell column, 0..7
    iy: int  # cell row, 0..7
    label: int  # 0 red, 1 blue
    strength: int  # 1..5: score sigmoid(12 * strength / 5 - 6)
    size: int  # 1..5: box side size / 5 of the image side


def score(strength: int) -> float:
    """Score of an object painted at ``strength``: 5 -> sigmoid(6) = 0.99753, 4 -> sigmoid(3.6) = 0.97340,
    3 -> sigmoid(1.2) = 0.76852, 2 -> sigmoid(-1.2) = 0.23148, 1 -> sigmoid(-3.6) = 0.02660."""
    return 1.0 / (1.0 + math.exp(-(12.0 * strength / 5.0 - 6.0)))


def box(obj: Obj) -> np.ndarray:
    """(4,) xyxy normalized box decoded for ``obj``: centre of its cell, side ``size / 5``, clipped to [0, 1] as
    raydet.detector.decode clips it."""
    cx, cy, half = (obj.ix + 0.5) / GRID, (obj.iy + 0.5) / GRID, obj.size / 10.0
    return np.clip(np.array([cx - half, cy - half, cx + half, cy + half]), 0.0, 1.0)


def paint(objects: list[Obj], size: int = SIZE) -> np.ndarray:
    """A black ``size`` x ``size`` uint8 RGB image with each object's cell painted (module docstring); ``size`` a
    multiple of 32 scales the cells (8 x 8 pixels at 64)."""
    img = np.zeros((size, size, 3), np.uint8)
    c = size // GRID
    for o in objects:
        colour = (51 * o.strength, 51 * o.size, 0) if o.label == 0 else (0, 51 * o.size, 51 * o.strength)
        img[o.iy * c : (o.iy + 1) * c, o.ix * c : (o.ix + 1) * c] = colour
    return img


def expected(objects: list[Obj]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The detections of a painted scene, best first: boxes (D, 4) xyxy normalized, labels (D,), scores (D,)."""
    order = sorted(objects, key=lambda o: -o.strength)
    return (
        np.array([box(o) for o in order]).reshape(-1, 4),
        np.array([o.label for o in order], np.int64),
        np.array([score(o.strength) for o in order]),
    )


def build_model():
    """The hand-set tf_keras model (module docstring)."""
    from raydet.cluster.runtime import use_legacy_keras

    use_legacy_keras()
    import tf_keras as keras

    image = keras.Input((SIZE, SIZE, 3), name="image")
    cells = keras.layers.AveragePooling2D(CELL, name="cells")(keras.layers.Rescaling(1 / 255.0, name="rescale")(image))
    heatmap = keras.layers.Conv2D(len(CLASSES), 1, activation="sigmoid", name="heatmap")(cells)
    boxes = keras.layers.Conv2D(4, 1, name="boxes")(cells)
    model = keras.Model(image, {"heatmap": heatmap, "boxes": boxes}, name="handset")
    k = np.zeros((1, 1, 3, 2), np.float32)
    k[0, 0, :, 0] = (12, 0, -12)  # red - blue
    k[0, 0, :, 1] = (-12, 0, 12)  # blue - red
    model.get_layer("heatmap").set_weights([k, np.full(2, -6.0, np.float32)])
    kb = np.zeros((1, 1, 3, 4), np.float32)
    kb[0, 0, 1, 2:] = 1.0  # w = h = g
    model.get_layer("boxes").set_weights([kb, np.array([0.5, 0.5, 0.0, 0.0], np.float32)])
    return model


def int8_tflite(model, calibration: np.ndarray) -> bytes:
    """Full-integer .tflite of ``model`` (uint8 input, float32 outputs), calibrated on ``calibration``
    (N, S, S, 3) uint8, one image per step."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([im[None].astype(np.float32)] for im in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    return converter.convert()


def calibration_images() -> np.ndarray:
    """Scenes holding every strength and size of both classes (25 of each, 16 isolated cells per scene) and a
    black one, so the int8 ranges cover every painted colour."""
    combos = [(s, z) for s in range(1, 6) for z in range(1, 6)]
    cells = [(2 * a, 2 * b) for b in range(4) for a in range(4)]
    scenes = [
        [Obj(ix, iy, label, s, z) for (ix, iy), (s, z) in zip(cells, combos[start : start + 16], strict=False)]
        for label in (0, 1)
        for start in (0, 16)
    ]
    return np.stack([paint(s) for s in scenes] + [paint([])])


def write_run(run: Path, int8: bool = True) -> Path:
    """A RUN folder of the hand-set model: model.keras, config.json (classes, image_size, a ``model`` with a
    backbone, as this raydet writes) and, with ``int8``, model_int8.tflite."""
    run.mkdir(parents=True, exist_ok=True)
    model = build_model()
    model.save(run / "model.keras")
    (run / "config.json").write_text(
        json.dumps(
            {
                "classes": CLASSES,
                "image_size": SIZE,
                "model": {"backbone": "handset", "num_classes": len(CLASSES), "image_size": SIZE},
            }
        )
    )
    if int8:
        (run / "model_int8.tflite").write_bytes(int8_tflite(model, calibration_images()))
    return run


def write_old_run(run: Path) -> Path:
    """A RUN as the single-box raydet wrote it: model.keras with outputs ``class_logits`` (N, 2) and ``boxes``
    (N, 4), and a config.json whose ``model`` has no ``backbone``."""
    from raydet.cluster.runtime import use_legacy_keras

    use_legacy_keras()
    import tf_keras as keras

    run.mkdir(parents=True, exist_ok=True)
    image = keras.Input((SIZE, SIZE, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(image)
    model = keras.Model(
        image,
        {
            "class_logits": keras.layers.Dense(2, name="class_logits")(pooled),
            "boxes": keras.layers.Dense(4, activation="sigmoid", name="boxes")(pooled),
        },
    )
    model.save(run / "model.keras")
    (run / "config.json").write_text(
        json.dumps(
            {
                "classes": CLASSES,
                "image_size": SIZE,
                "model": {
                    "num_classes": 2,
                    "image_size": SIZE,
                    "width": 16,
                    "max_width": 256,
                    "depth": 5,
                    "head_units": 128,
                    "dropout": 0.2,
                    "bn_momentum": 0.9,
                },
            }
        )
    )
    return run
