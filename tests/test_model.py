"""The two-headed model's contract (docs/FORMATS.md) and its box maths, checked by hand."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")

from raydet.config import ModelConfig  # noqa: E402
from raydet.model import block_widths, box_iou, build_model, compile_model, giou, make_box_loss  # noqa: E402


def test_contract_save_and_load_without_custom_objects(tmp_path):
    cfg = ModelConfig(num_classes=3, image_size=32, width=8, depth=3)
    model = build_model(cfg)
    assert model.input.name == "image" and model.input.shape[1:] == (32, 32, 3)
    out = model(np.full((2, 32, 32, 3), 255.0, np.float32))
    assert set(out) == {"class_logits", "boxes"}
    assert out["class_logits"].shape == (2, 3) and out["boxes"].shape == (2, 4)
    assert float(tf.reduce_min(out["boxes"])) >= 0 and float(tf.reduce_max(out["boxes"])) <= 1  # sigmoid
    compile_model(model, tf_keras.optimizers.Adam(1e-3), 5.0, 1.0)  # compiled with custom losses...
    model.save(tmp_path / "model.keras", save_format="keras_v3")
    loaded = tf_keras.models.load_model(tmp_path / "model.keras", compile=False)  # ...still no custom objects
    np.testing.assert_allclose(loaded(np.zeros((1, 32, 32, 3), np.float32))["boxes"],
                               model(np.zeros((1, 32, 32, 3), np.float32))["boxes"], atol=1e-6)


def test_blocks_are_conv_bn_relu_pool_for_qat():
    model = build_model(ModelConfig(num_classes=2, image_size=32, width=8, depth=3))
    kinds = [type(layer).__name__ for layer in model.layers]
    start = kinds.index("Conv2D")
    assert kinds[start:start + 8] == ["Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D"] * 2
    assert all(not layer.use_bias for layer in model.layers if type(layer).__name__ == "Conv2D")
    # width 8 doubling: 8, 16, 32; capped by max_width
    assert block_widths(ModelConfig(num_classes=2, image_size=32, width=8, depth=3)) == [8, 16, 32]
    assert block_widths(ModelConfig(num_classes=2, image_size=64, width=64, depth=4, max_width=128)) == [64, 128, 128, 128]


def test_iou_and_giou_by_hand():
    a = tf.constant([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.2, 0.2]])
    b = tf.constant([[0.0, 0.0, 0.5, 0.25], [0.4, 0.0, 0.6, 0.2]])
    # row 0: inter 0.5*0.25 = 0.125, union 0.25 -> 0.5; hull = union -> giou 0.5
    # row 1: no overlap, union 0.04+0.04 = 0.08, hull 0.6*0.2 = 0.12 -> giou 0 - 0.04/0.12 = -1/3
    np.testing.assert_allclose(box_iou(a, b).numpy(), [0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(giou(a, b).numpy(), [0.5, -1 / 3], atol=1e-6)
    # an inverted prediction (x1 < x0) has no area, so no overlap
    np.testing.assert_allclose(box_iou(a[:1], tf.constant([[0.5, 0.0, 0.0, 0.5]])).numpy(), [0.0], atol=1e-6)


def test_box_loss_by_hand():
    loss = make_box_loss(box_weight=2.0, giou_weight=1.0, huber_delta=0.1)
    t = tf.constant([[0.0, 0.0, 0.5, 0.5]])
    p = tf.constant([[0.0, 0.0, 0.5, 0.25]])
    # smooth L1 (beta 0.1) per coordinate: only y1 is off by 0.25 > 0.1 -> 0.25 - 0.05 = 0.2; sum 0.2
    # giou 0.5 -> 1 - 0.5 = 0.5;  total 2 * 0.2 + 0.5 = 0.9
    np.testing.assert_allclose(loss(t, p).numpy(), [0.9], atol=1e-5)
    np.testing.assert_allclose(loss(t, t).numpy(), [0.0], atol=1e-6)
