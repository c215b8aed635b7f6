"""The two-headed CNN and its losses (tf_keras, Keras 2; see FINDINGS.md for why not Keras 3).

One object per image: the network predicts the class and the box of the image's **largest** object,
which is row 0 of ``boxes``/``labels`` in the PREP Parquet (rows are sorted by area, largest first).
More objects per image would need another head (anchors or a set loss) and come later.

Architecture (the original project's family, reordered so tensorflow-model-optimization accepts it):
``depth`` blocks of Conv2D(3x3, no bias) -> BatchNorm -> ReLU -> MaxPool(2), then a 2-layer class head on
globally pooled features (a shape's class does not depend on its position) and a 4-layer box head on the
flattened map (which keeps where things are).

Model contract (docs/FORMATS.md): input ``image`` (N, S, S, 3) float32 raw pixels 0..255 (a Rescaling
layer inside divides by 255); outputs a dict ``class_logits`` (N, C) float32 logits and ``boxes``
(N, 4) float32 normalized xyxy in [0, 1] (sigmoid). Only built-in layers, so
``tf_keras.models.load_model(path, compile=False)`` needs no custom objects.
"""

from __future__ import annotations

from raydet.config import ModelConfig
from raydet.runtime import use_legacy_keras


def _tf():
    use_legacy_keras()  # before TensorFlow loads; harmless if it already has with the variable set
    import tensorflow as tf
    import tf_keras

    return tf, tf_keras


def block_widths(cfg: ModelConfig) -> list[int]:
    """Filters of each conv block: ``width`` doubling per block, capped at ``max_width``."""
    return [min(cfg.width * 2**i, cfg.max_width) for i in range(cfg.depth)]


def build_model(cfg: ModelConfig):
    """The float model: input ``image`` (N, S, S, 3) float32 0..255 -> {class_logits (N, C), boxes (N, 4) xyxy normalized}."""
    _, keras = _tf()
    layers = keras.layers
    inputs = keras.Input(shape=(cfg.image_size, cfg.image_size, 3), dtype="float32", name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for i, filters in enumerate(block_widths(cfg)):
        # No bias: BatchNorm's beta replaces it, and Conv -> BN -> ReLU is the order QAT folds.
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=cfg.bn_momentum, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    # What a shape is does not depend on where it is: the class head pools over positions. With Flatten
    # instead, it stayed at chance for 4+ epochs on synth (it must learn each shape at every position).
    pooled = layers.GlobalAveragePooling2D(name="pool_class")(x)
    # Where it is does: the box head sees the flattened map.
    features = layers.Flatten(name="flatten")(x)

    c = layers.Dense(cfg.head_units, activation="relu", name="class_fc")(pooled)
    c = layers.Dropout(cfg.dropout, name="class_dropout")(c)
    class_logits = layers.Dense(cfg.num_classes, name="class_logits")(c)

    b = layers.Dense(cfg.head_units, activation="relu", name="box_fc1")(features)
    b = layers.Dense(cfg.head_units, activation="relu", name="box_fc2")(b)
    b = layers.Dense(max(cfg.head_units // 2, 4), activation="relu", name="box_fc3")(b)
    boxes = layers.Dense(4, activation="sigmoid", name="boxes")(b)
    return keras.Model(inputs, {"class_logits": class_logits, "boxes": boxes}, name="raydet")


def box_iou(y_true, y_pred):
    """IoU of matching rows: (N, 4), (N, 4) xyxy normalized -> (N,). A box with x1 < x0 counts as empty."""
    tf, _ = _tf()
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    inter, union, _ = _inter_union_hull(tf, y_true, y_pred)
    return inter / tf.maximum(union, 1e-7)


def giou(y_true, y_pred):
    """Generalized IoU (Rezatofighi et al. 2019) of matching rows, (N, 4) xyxy normalized -> (N,) in [-1, 1]."""
    tf, _ = _tf()
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    inter, union, hull = _inter_union_hull(tf, y_true, y_pred)
    iou = inter / tf.maximum(union, 1e-7)
    return iou - (hull - union) / tf.maximum(hull, 1e-7)


def _inter_union_hull(tf, a, b):
    def area(box):
        return tf.nn.relu(box[:, 2] - box[:, 0]) * tf.nn.relu(box[:, 3] - box[:, 1])

    lo = tf.maximum(a[:, :2], b[:, :2])
    hi = tf.minimum(a[:, 2:], b[:, 2:])
    wh = tf.nn.relu(hi - lo)
    inter = wh[:, 0] * wh[:, 1]
    union = area(a) + area(b) - inter
    hull_wh = tf.nn.relu(tf.maximum(a[:, 2:], b[:, 2:]) - tf.minimum(a[:, :2], b[:, :2]))
    return inter, union, hull_wh[:, 0] * hull_wh[:, 1]


def make_box_loss(box_weight: float, giou_weight: float, huber_delta: float = 0.1):
    """Box loss on (N, 4) xyxy normalized: ``box_weight * smooth_L1 + giou_weight * (1 - GIoU)``, per row.

    Smooth L1 alone stalls near the mean box on hard data (FINDINGS); GIoU adds a gradient that rewards
    overlap directly, also when the boxes do not overlap yet. ``huber_delta`` 0.1 (a tenth of the image)
    keeps the L1 part robust to far-off boxes early in training.
    """
    tf, keras = _tf()
    huber = keras.losses.Huber(delta=huber_delta, reduction="none")

    def box_loss(y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        # Huber / delta is smooth L1 with beta = delta; Keras averages the 4 coordinates -> (N,), and 4x
        # makes it the usual sum over coordinates.
        l1 = 4.0 * huber(y_true, y_pred) / huber_delta
        return box_weight * l1 + giou_weight * (1.0 - giou(y_true, y_pred))

    return box_loss


def compile_model(model, optimizer, box_weight: float, giou_weight: float) -> None:
    """Attach the losses and metrics: class accuracy on ``class_logits``, mean IoU on ``boxes``.

    Targets are a dict ``class_logits`` (N,) int32 labels and ``boxes`` (N, 4) xyxy normalized. Metric
    names in Keras logs come out as ``class_logits_class_accuracy`` and ``boxes_mean_iou``.
    """
    _, keras = _tf()
    model.compile(
        optimizer=optimizer,
        loss={"class_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              "boxes": make_box_loss(box_weight, giou_weight)},
        metrics={"class_logits": [keras.metrics.SparseCategoricalAccuracy(name="class_accuracy")],
                 "boxes": [keras.metrics.MeanMetricWrapper(box_iou, name="mean_iou")]},
    )
