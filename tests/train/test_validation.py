"""raydet.train.validation: the val AP50 / mAP of an epoch line, from hand-made head outputs (IoU worked out by
hand) and from the hand-set detector (tests/handset.py) run in chunks."""

from __future__ import annotations

import handset as H
import numpy as np
import pytest

from raydet.train.validation import ValidationAP


def _arrays(boxes: list[list[float]], labels: list[int], n: int = 1, size: int = 32) -> dict:
    """n rows (the first holds the objects, the rest none) as raydet.train.inputs arrays."""
    k = max(1, len(boxes))
    out = {
        "image": np.zeros((n, size, size, 3), np.uint8),
        "boxes": np.zeros((n, k, 4), np.float32),
        "labels": np.full((n, k), -1, np.int32),
        "num_objects": np.zeros(n, np.int32),
        "difficult": np.zeros((n, k), bool),
    }
    out["boxes"][0, : len(boxes)], out["labels"][0, : len(labels)], out["num_objects"][0] = boxes, labels, len(boxes)
    return out


def _outputs(label: int, side: float) -> dict:
    """One row's heads (8 x 8 grid, 2 classes): a peak of 0.9 for ``label`` at cell (2, 2), its box centred
    there ((2 + 0.5) / 8 = 0.3125) with the given side."""
    heatmap, boxes = np.zeros((1, 8, 8, 2), np.float32), np.zeros((1, 8, 8, 4), np.float32)
    heatmap[0, 2, 2, label] = 0.9
    boxes[0, 2, 2] = [0.5, 0.5, side, side]
    return {"heatmap": heatmap, "boxes": boxes}


TRUTH = [[0.1875, 0.1875, 0.4375, 0.4375]]  # side 0.25 centred at 0.3125


@pytest.mark.parametrize(
    "label, side, ap50, map_",
    [
        (0, 0.25, 1.0, 1.0),  # the box itself: IoU 1 at every threshold
        # side 0.2 in the same centre: IoU 0.2^2 / 0.25^2 = 0.64, a match at IoU 0.50, 0.55, 0.60 of the ten
        # thresholds 0.50..0.95: mAP 3 / 10
        (0, 0.2, 1.0, 0.3),
        (1, 0.25, 0.0, 0.0),  # the right box, the wrong class: a false positive, the object missed
    ],
)
def test_score_of_hand_made_outputs(label, side, ap50, map_):
    got = ValidationAP(_arrays(TRUTH, [0]), num_classes=2).score(_outputs(label, side))
    assert got == pytest.approx({"val_ap50": ap50, "val_map": map_}, abs=1e-9)


def test_outputs_for_fewer_rows_than_held_are_refused():
    """Scoring 1 row of outputs against 2 rows of truth would leave the second row's objects out of AP."""
    val = ValidationAP(_arrays(TRUTH, [0], n=2), num_classes=2)
    with pytest.raises(ValueError, match="validation holds 2 rows, got outputs for 1 heatmap and 1 box rows"):
        val.score(_outputs(0, 0.25))


def test_only_the_first_limit_rows_are_held():
    val = ValidationAP(_arrays(TRUTH, [0], n=5), num_classes=2, limit=2)
    assert len(val.images) == len(val.truth) == 2


def test_the_hand_set_model_in_chunks_finds_every_object():
    """Three scenes, 2 per chunk: every object found with its exact box (tests/handset.py), so AP 1 at every IoU."""
    scenes = [[H.Obj(1, 1, 0, 5, 2), H.Obj(5, 2, 1, 4, 3)], [H.Obj(2, 5, 0, 3, 2)], [H.Obj(6, 6, 1, 5, 1)]]
    arrays = {
        "image": np.stack([H.paint(s) for s in scenes]),
        "boxes": np.zeros((3, 2, 4), np.float32),
        "labels": np.full((3, 2), -1, np.int32),
        "num_objects": np.array([len(s) for s in scenes], np.int32),
        "difficult": np.zeros((3, 2), bool),
    }
    for i, s in enumerate(scenes):
        arrays["boxes"][i, : len(s)] = [H.box(o) for o in s]
        arrays["labels"][i, : len(s)] = [o.label for o in s]
    got = ValidationAP(arrays, num_classes=2)(H.build_model(), chunk=2)
    assert got == pytest.approx({"val_ap50": 1.0, "val_map": 1.0}, abs=1e-6)
