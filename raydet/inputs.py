"""The training input pipeline: a worker's PREP rows in memory -> batches of images and the heads' targets.

``load_split`` pulls a Ray Data shard into numpy arrays once; ``BatchMaker`` (numpy) turns a batch of row indices
into augmented float images and their target maps (raydet.augment moves the boxes, raydet.targets builds the
maps); ``train_dataset`` / ``val_dataset`` wrap it in ``tf.data`` (one ``numpy_function`` call per batch, run
ahead of the training step by prefetching). Arrays (docs/FORMATS.md): ``image`` (n, S, S, 3) uint8, ``boxes``
(n, K, 4) float32 xyxy normalized, ``labels`` (n, K) int32 (-1 padding), ``num_objects`` (n,) int32,
``difficult`` (n, K) bool.
"""

from __future__ import annotations

import numpy as np

from raydet.augment import augment
from raydet.targets import build_targets


def load_split(shard) -> dict[str, np.ndarray]:
    """A Ray Data split (``get_dataset_shard`` or a Dataset) -> the arrays of the module docstring.
    ValueError when it holds no row."""
    parts: dict[str, list] = {"image": [], "boxes": [], "labels": [], "num_objects": [], "difficult": []}
    for batch in shard.iter_batches(batch_size=1024, batch_format="numpy"):
        n = len(batch["image"])
        labels = np.asarray(batch["labels"], np.int32).reshape(n, -1)
        parts["image"].append(np.asarray(batch["image"], np.uint8))
        parts["boxes"].append(np.asarray(batch["boxes"], np.float32).reshape(n, -1, 4))
        parts["labels"].append(labels)
        parts["num_objects"].append(np.asarray(batch["num_objects"], np.int32))
        difficult = batch.get("difficult")  # absent in PREP folders written before it existed
        parts["difficult"].append(np.zeros(labels.shape, bool) if difficult is None
                                  else np.asarray(difficult).reshape(labels.shape).astype(bool))
    if not parts["image"]:
        raise ValueError("this worker's data split is empty")
    return {k: np.concatenate(v) for k, v in parts.items()}


def objects_of(arrays: dict[str, np.ndarray], i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row ``i``'s real objects: (G, 4) xyxy normalized boxes, (G,) labels, (G,) difficult flags."""
    n = int(arrays["num_objects"][i])
    return arrays["boxes"][i, :n], arrays["labels"][i, :n], arrays["difficult"][i, :n]


class BatchMaker:
    """Row indices -> (images (B, S, S, 3) float32 0..255, heatmap (B, G, G, C), box targets (B, G, G, 5)).

    With ``augment_seed`` set, every image is augmented (raydet.augment) from one generator seeded with it;
    None: images as stored (validation).
    """

    def __init__(self, arrays: dict[str, np.ndarray], num_classes: int, grid: int, augment_seed: int | None = None):
        self.arrays, self.num_classes, self.grid = arrays, num_classes, grid
        self.rng = None if augment_seed is None else np.random.default_rng(augment_seed)

    def __call__(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images, heatmaps, box_targets = [], [], []
        for i in np.asarray(indices).reshape(-1):
            boxes, labels, _ = objects_of(self.arrays, int(i))
            image = self.arrays["image"][i]
            if self.rng is not None:
                image, boxes, labels = augment(self.rng, image, boxes, labels)
            heatmap, box_target = build_targets(boxes, labels, self.num_classes, self.grid)
            images.append(np.asarray(image, np.float32))
            heatmaps.append(heatmap)
            box_targets.append(box_target)
        return np.stack(images), np.stack(heatmaps), np.stack(box_targets)


def _as_tf(maker: BatchMaker, indices, image_size: int):
    """One ``tf.numpy_function`` call of ``maker`` with the static shapes Keras needs."""
    import tensorflow as tf

    images, heatmap, box_target = tf.numpy_function(maker, [indices], [tf.float32] * 3, stateful=True)
    images = tf.ensure_shape(images, [None, image_size, image_size, 3])
    heatmap = tf.ensure_shape(heatmap, [None, maker.grid, maker.grid, maker.num_classes])
    box_target = tf.ensure_shape(box_target, [None, maker.grid, maker.grid, 5])
    return {"image": images}, {"heatmap": heatmap, "boxes": box_target}


def train_dataset(arrays: dict, num_classes: int, grid: int, local_batch: int, augment_images: bool, seed: int):
    """Endless shuffled (and augmented) batches of this worker's rows: ({"image"}, {"heatmap", "boxes"})."""
    import tensorflow as tf

    n = len(arrays["image"])
    maker = BatchMaker(arrays, num_classes, grid, augment_seed=seed if augment_images else None)
    size = arrays["image"].shape[1]
    ds = tf.data.Dataset.from_tensor_slices(np.arange(n, dtype=np.int64))
    ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat().batch(local_batch, drop_remainder=True)
    return ds.map(lambda idx: _as_tf(maker, idx, size)).prefetch(2)


def val_dataset(arrays: dict, num_classes: int, grid: int, local_batch: int, rank: int, world: int):
    """Worker ``rank``'s part of the split (rows rank, rank+world, ...), padded with weight-0 rows to
    ceil(n / world) so every worker runs the same number of steps. Returns (dataset, steps)."""
    import tensorflow as tf

    n = len(arrays["image"])
    per_worker = -(-n // world)
    idx = np.arange(rank, n, world)
    weight = np.ones(len(idx), np.float32)
    pad = per_worker - len(idx)
    idx = np.concatenate([idx, np.zeros(pad, idx.dtype)])
    weight = np.concatenate([weight, np.zeros(pad, np.float32)])
    maker = BatchMaker(arrays, num_classes, grid)
    size = arrays["image"].shape[1]

    def to_example(i, w):
        x, y = _as_tf(maker, i, size)
        return x, y, {"heatmap": w, "boxes": w}

    ds = tf.data.Dataset.from_tensor_slices((idx, weight)).batch(local_batch).map(to_example).prefetch(2)
    return ds, -(-per_worker // local_batch)
