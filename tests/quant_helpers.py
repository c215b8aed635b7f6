"""Shared by test_quantize.py and test_qat.py: a tiny synthetic detection set and a small trained model.

Images are S x S noise with one filled rectangle whose colour is the class (red, green, blue), so a small
network learns class and box in a few seconds, and quantization error shows up as a change in AP50.
"""

from __future__ import annotations

import numpy as np

COLOURS = np.array([[220, 40, 40], [40, 200, 40], [50, 60, 230]], dtype=np.float32)  # class 0, 1, 2


def synthetic(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n images (n, S, S, 3) uint8, labels (n,) int32, boxes (n, 4) float32 normalized xyxy."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 90, size=(n, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, len(COLOURS), size=n).astype(np.int32)
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        w, h = rng.integers(size // 4, size * 3 // 4, size=2)
        x0, y0 = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
        images[i, y0:y0 + h, x0:x0 + w] = COLOURS[labels[i]] + rng.normal(0, 12, size=(h, w, 3))
        boxes[i] = np.array([x0, y0, x0 + w, y0 + h], np.float32) / size
    return np.clip(images, 0, 255).astype(np.uint8), labels, boxes


def train_small_model(images: np.ndarray, labels: np.ndarray, boxes: np.ndarray, epochs: int = 12, model=None,
                      seed: int = 1):
    """raydet.model's network at 32 px, 3 blocks of 8..32 filters, trained briefly; returns the model."""
    from tf_keras.optimizers import Adam
    from tf_keras.utils import set_random_seed

    from raydet.config import ModelConfig
    from raydet.model import build_model, compile_model

    set_random_seed(seed)  # weights, dropout and shuffling: the same model on every run
    if model is None:
        model = build_model(ModelConfig(num_classes=len(COLOURS), image_size=images.shape[1], width=8, depth=3,
                                        head_units=32, dropout=0.0))
    compile_model(model, Adam(3e-3), box_weight=5.0, giou_weight=1.0)
    model.fit(images.astype(np.float32), {"class_logits": labels, "boxes": boxes}, batch_size=32, epochs=epochs,
              verbose=0, shuffle=True)
    return model


def ap50(outputs: dict[str, np.ndarray], labels: np.ndarray, boxes: np.ndarray) -> float:
    """VOC AP@0.5 (raydet.metrics) of one detection per image: argmax class, its softmax score, the box."""
    from raydet.metrics import detection_summary, match_image

    logits = outputs["class_logits"].astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    stats = [match_image(boxes[i:i + 1], labels[i:i + 1], outputs["boxes"][i:i + 1], pred[i:i + 1],
                         probs[i, pred[i]:pred[i] + 1], num_classes=logits.shape[1], image_id=i)
             for i in range(len(labels))]
    return detection_summary(sum(stats[1:], stats[0]))["voc_map_50"]
