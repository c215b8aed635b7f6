"""Validation AP during training: COCO AP50 and mAP of a float detector on the test split, decoded as evaluation
decodes (raydet.detector.decode, raydet.detector.metrics), boxes in normalized xyxy."""

from __future__ import annotations

import numpy as np

from raydet.detector.decode import decode
from raydet.detector.metrics import MatchStats, detection_summary, match_image
from raydet.train import heavy
from raydet.train.inputs import load_rows, objects_of

VAL_AP_IMAGES = 500  # test images rank 0 decodes after each epoch for val_ap50 / val_map (the first ones in order)


class ValidationAP:
    """COCO AP50 and mAP@[.5:.95] of a float model on up to ``VAL_AP_IMAGES`` rows of ``arrays``
    (raydet.train.inputs arrays), decoded as evaluation decodes them; boxes compared in normalized xyxy."""

    def __init__(self, arrays: dict, num_classes: int, limit: int = VAL_AP_IMAGES):
        n = min(limit, len(arrays["image"]))
        self.images = arrays["image"][:n]
        self.truth = [objects_of(arrays, i) for i in range(n)]
        self.num_classes = num_classes

    @classmethod
    def from_prep(cls, prep: str, num_classes: int, limit: int = VAL_AP_IMAGES) -> ValidationAP:
        """On the first ``limit`` rows of ``PREP/test`` in file order (raydet.ingest.shards.read_rows: the same rows
        every epoch and on every run, whatever the workers' shards), read here; only they are held."""

        return cls(load_rows(prep, "test", 0, limit), num_classes, limit)

    def __call__(self, model, chunk: int = 64) -> dict[str, float]:
        """``model`` (a tf_keras detector) predicts the rows in chunks; -> ``score`` of its outputs."""
        tf = heavy.tf()
        # A plain call in a tf.function, not ``predict``: Keras' predict runs under the distribution strategy of the
        # surrounding fit (callbacks run inside its scope) and would wait for the other workers' collectives.
        forward = tf.function(lambda x: model(x, training=False))
        chunks = [forward(self.images[i : i + chunk].astype("float32")) for i in range(0, len(self.images), chunk)]
        return self.score({k: np.concatenate([c[k].numpy() for c in chunks]) for k in ("heatmap", "boxes")})

    def score(self, outputs: dict) -> dict[str, float]:
        """``heatmap`` (n, G, G, C) and ``boxes`` (n, G, G, 4) of the n rows, in order -> {val_ap50, val_map}.
        ValueError when n is not the number of rows held: a row without outputs would drop its objects from AP."""

        n = len(self.truth)
        if len(outputs["heatmap"]) != n or len(outputs["boxes"]) != n:
            raise ValueError(
                f"validation holds {n} rows, got outputs for {len(outputs['heatmap'])} heatmap and "
                f"{len(outputs['boxes'])} box rows"
            )
        parts = []
        for i, det in enumerate(decode(outputs["heatmap"], outputs["boxes"])):
            boxes, labels, difficult = self.truth[i]
            parts.append(
                match_image(
                    boxes,
                    labels,
                    det.boxes,
                    det.labels,
                    det.scores,
                    self.num_classes,
                    image_id=i,
                    gt_difficult=difficult,
                )
            )
        summary = detection_summary(MatchStats.concat(parts))
        return {"val_ap50": summary["coco_map_50"], "val_map": summary["coco_map"]}
