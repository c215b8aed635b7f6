"""Shared by export/test_quantize.py and export/test_qat.py: a tiny detection set (several coloured rectangles per
image, the class is the colour: tests/prep_helpers.py) and a small dense model trained on it in this process.

A network that finds every rectangle in a few seconds makes quantization error show up as a change in AP50 and
in the decoded boxes.
"""

from __future__ import annotations

import numpy as np
from prep_helpers import COLOURS, rows_of

SIZE = 32
CLASSES = len(COLOURS)


def synthetic(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n images as raydet.train.inputs arrays: ``image`` (n, 32, 32, 3) uint8, ``boxes`` (n, 3, 4) xyxy normalized,
    ``labels`` (n, 3) (-1 padding), ``num_objects`` (n,), ``difficult`` (n, 3)."""
    rows = rows_of(n, SIZE, CLASSES, max_objects=3, seed=seed)
    return {
        "image": np.stack([r["image"] for r in rows]),
        "boxes": np.stack([r["boxes"] for r in rows]),
        "labels": np.stack([r["labels"] for r in rows]),
        "num_objects": np.array([r["num_objects"] for r in rows], np.int32),
        "difficult": np.zeros((n, 3), bool),
    }


def model_config():
    from raydet.config import ModelConfig

    return ModelConfig(num_classes=CLASSES, image_size=SIZE, width=8, depth=3, neck_width=16, head_width=16)


def train_small_model(arrays: dict, epochs: int = 20, model=None, seed: int = 1):
    """raydet.detector.model's network at 32 px (3 blocks of 8..32 filters), fit on ``arrays``; returns the model."""
    from tf_keras.optimizers import Adam
    from tf_keras.utils import set_random_seed

    from raydet.detector.model import OUTPUT_STRIDE, build_model, compile_model
    from raydet.train.inputs import BatchMaker

    set_random_seed(seed)  # weights and shuffling: the same model on every run
    if model is None:
        model = build_model(model_config())
    compile_model(model, Adam(3e-3))
    images, heatmap, box_target = BatchMaker(arrays, CLASSES, SIZE // OUTPUT_STRIDE)(np.arange(len(arrays["image"])))
    model.fit(images, {"heatmap": heatmap, "boxes": box_target}, batch_size=32, epochs=epochs, verbose=0, shuffle=True)
    return model


def ap50(outputs: dict[str, np.ndarray], arrays: dict) -> float:
    """COCO AP50 of the decoded outputs (``heatmap``, ``boxes`` maps of ``arrays``' images, in order)."""
    from raydet.train.validation import ValidationAP

    return ValidationAP(arrays, CLASSES, limit=len(arrays["image"])).score(outputs)["val_ap50"]
