"""raydet.train.worker, the parts that run without Ray Train: an epoch's history row and its console line,
--init-from's weight transfer, a stopped run's checkpoint. (The worker loop itself runs in
tests/train/test_driver.py.)"""

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


def test_a_checkpoint_of_a_nonfinite_stop_restores_its_history_and_says_stopped(tmp_path):
    """The worker's own guard, for a RUN whose stopped.json is gone (deleted, or the driver died before writing it):
    the weightless checkpoint of a non-finite stop gives back its history and ``stopped``, loading no weights."""
    import dataclasses
    import json

    from ray.train import Checkpoint

    from raydet.config import ModelConfig, TrainConfig
    from raydet.train.worker import CHECKPOINT_STATE_FILE, _build

    history = [{"epoch": 1, "loss": 2.0}]
    (tmp_path / CHECKPOINT_STATE_FILE).write_text(
        json.dumps({"history": history, "nonfinite": {"epoch": 2, "loss": float("nan")}})
    )
    mcfg = ModelConfig(num_classes=2, image_size=32, backbone="cnn", width=8, depth=3)
    tcfg = dataclasses.asdict(TrainConfig(prep="p", out="o", name="n"))
    said = []
    model, got, stopped = _build(mcfg, tcfg, Checkpoint.from_directory(str(tmp_path)), said.append)
    assert stopped and got == history and said == []  # no weights/ folder was read, nothing started from ImageNet
    assert model.get_layer("heatmap") is not None
