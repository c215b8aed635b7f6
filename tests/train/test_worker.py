"""raydet.train.worker, the parts that run without Ray Train: an epoch's history row and its console line, and
--init-from's weight transfer. (The worker loop itself runs in tests/train/test_driver.py.)"""

from __future__ import annotations

import time

import numpy as np

from raydet.train.worker import _metrics_row, format_row, transfer_weights


def test_keras_log_names_become_history_names():
    logs = {"loss": 1.5, "heatmap_loss": 1.0, "boxes_loss": 0.5, "val_loss": 2.0, "val_boxes_loss": 0.75, "acc": 9}
    before = time.time()
    row = _metrics_row(3, 10, logs, lr=1e-3, seconds=12.3456)
    assert before <= row.pop("end_time") <= time.time()
    assert row == {
        "epoch": 3,
        "epochs": 10,
        "loss": 1.5,
        "heatmap_loss": 1.0,
        "box_loss": 0.5,
        "val_loss": 2.0,
        "val_box_loss": 0.75,
        "lr": 1e-3,
        "seconds": 12.346,
    }


def test_the_epoch_line_with_and_without_validation():
    row = {"epoch": 3, "epochs": 10, "loss": 1.5, "heatmap_loss": 1.0, "box_loss": 0.5, "lr": 1e-3, "seconds": 12.34}
    assert format_row(row) == "epoch 3/10  loss 1.5000 (heatmap 1.000 box 0.500)  lr 1.00e-03  12.3s"
    row |= {"val_loss": 2.0, "val_ap50": 0.5, "val_map": 0.25}
    assert format_row(row) == (
        "epoch 3/10  loss 1.5000 (heatmap 1.000 box 0.500)  val_loss 2.0000  val_AP50 0.500  val_mAP 0.250  "
        "lr 1.00e-03  12.3s"
    )


def test_transfer_weights_copies_the_layers_whose_shapes_match():
    import tf_keras as keras

    def model(head: int, extra: bool):
        x = keras.Input((4,), name="x")
        y = keras.layers.Dense(head, name="head")(keras.layers.Dense(3, name="body")(x))
        if extra:
            y = keras.layers.Dense(2, name="more")(y)
        return keras.Model(x, y)

    source, target = model(head=2, extra=False), model(head=5, extra=True)
    fresh_head = [w.copy() for w in target.get_layer("head").get_weights()]
    assert transfer_weights(source, target) == "init-from: copied 1 layers, kept fresh ['head'] (shapes differ)"
    for a, b in zip(source.get_layer("body").get_weights(), target.get_layer("body").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fresh_head, target.get_layer("head").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
