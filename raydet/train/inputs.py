"""The training input pipeline: a worker's PREP rows -> batches of images and the heads' targets, from memory or
streamed from Ray Data.

``plan_inputs`` chooses the path (raydet.train.driver prints the choice):
- **in memory**, when a worker's rows fit ``--memory-budget-gb``: ``load_rows`` reads the worker's own
  ``rows_per_worker`` consecutive rows straight from the PREP files once (rank r takes rows r x rows_per_worker
  onwards; no Ray Data, whose materialized split cost seconds a run: docs/TRAINING.md) and ``train_dataset``
  reshuffles them every epoch (no data moves after the start);
- **streamed** otherwise: ``stream_train_dataset`` pulls the shard from Ray Data again on every pass
  (``DataIterator.iter_batches``, rows mixed in a local shuffle buffer of ``SHUFFLE_ROWS``), so a worker holds a
  few batches, not its shard.
Either way ``BatchMaker`` (numpy) turns rows into augmented float images and their target maps (raydet.detector.augment
moves the boxes, raydet.detector.targets builds the maps): the same rows in the same order with the same seed give the
same batches on both paths (a mosaic takes its other images from the same batch, so batches, not rows, must match).
Validation rows come straight from the PREP files (raydet.ingest.shards.read_rows): each worker takes its own contiguous
range (``val_range``), held in memory (``val_dataset``) or read again for every
validation (``stream_val_dataset``).

Steps: every worker runs ``steps_per_epoch = rows_per_worker // local_batch`` steps per epoch (MultiWorkerMirrored
Strategy waits forever for a worker that stops early). Each worker gets ``rows_per_worker = n_train // workers``
rows per pass (Ray's equal split when streamed; in memory the last ``n_train % workers`` rows are left out); a
streamed pass's last ``rows_per_worker % local_batch`` rows start the next epoch's first batch, so every row of
every pass is trained on once and no batch is short.

Arrays (docs/FORMATS.md): ``image`` (n, S, S, 3) uint8, ``boxes`` (n, K, 4) float32 xyxy normalized, ``labels``
(n, K) int32 (-1 padding), ``num_objects`` (n,) int32, ``difficult`` (n, K) bool.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from raydet.config import AugmentConfig
from raydet.detector.augment import augment_batch
from raydet.detector.targets import BOX_TARGET_CHANNELS, build_targets
from raydet.ingest.shards import read_rows
from raydet.train import heavy

# Rows a streamed shard is mixed in (Ray Data's local shuffle buffer): 512 rows of 224 px are 77 MB.
SHUFFLE_ROWS = 512


# ------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class InputPlan:
    stream: bool  # True: stream the train shard from Ray Data; False: hold it in memory
    rows_per_worker: int  # train rows per worker per pass: n_train // workers
    steps_per_epoch: int  # rows_per_worker // local_batch, the same on every worker
    val_rows_per_worker: int  # ceil(n_test / workers): each worker's validation range, padded to this
    worker_bytes: int  # what one worker would hold in memory: rows x row_bytes + val rows x a test row's bytes
    budget_bytes: int
    row_bytes: int  # one train row as arrays (``row_bytes``)


def row_bytes(image_size: int, objects: int) -> int:
    """Bytes one row takes in the arrays: S x S x 3 uint8 pixels, per object 16 (box) + 4 (label) + 1 (difficult),
    and 4 (num_objects)."""
    return image_size * image_size * 3 + objects * 21 + 4


def plan_inputs(
    n_train: int,
    n_test: int,
    image_size: int,
    objects: int,
    workers: int,
    local_batch: int,
    budget_gb: float,
    val_objects: int | None = None,
) -> InputPlan:
    """Stream when a worker's train rows and validation range, as arrays (``row_bytes``), exceed ``budget_gb``
    (10^9 bytes); hold them in memory otherwise. ``objects``: the train split's K; ``val_objects``: the test
    split's (a PREP pads each split to its own K: docs/FORMATS.md), None: the same."""
    rows, val_rows = n_train // workers, -(-n_test // workers)
    row = row_bytes(image_size, objects)
    val_row = row if val_objects is None else row_bytes(image_size, val_objects)
    need, budget = rows * row + val_rows * val_row, int(budget_gb * 1e9)
    return InputPlan(
        stream=need > budget,
        rows_per_worker=rows,
        steps_per_epoch=rows // local_batch,
        val_rows_per_worker=val_rows,
        worker_bytes=need,
        budget_bytes=budget,
        row_bytes=row,
    )


def val_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Worker ``rank``'s validation rows ``start``..``stop - 1`` of ``n``: ceil(n / world) consecutive rows (the
    last workers may get fewer, or none)."""
    per = -(-n // world)
    start = min(n, rank * per)
    return start, min(n, start + per)


# ------------------------------------------------------------------------------------------- arrays


def arrays_of(batch: dict) -> dict[str, np.ndarray]:
    """One numpy batch of PREP rows (Ray Data's or raydet.ingest.shards.read_rows') -> the arrays of the module
    docstring (``difficult`` all False when the batch has none; other columns dropped)."""
    n = len(batch["image"])
    labels = np.asarray(batch["labels"], np.int32).reshape(n, -1)
    difficult = batch.get("difficult")  # absent in PREP folders written before it existed
    return {
        "image": np.asarray(batch["image"], np.uint8),
        "boxes": np.asarray(batch["boxes"], np.float32).reshape(n, -1, 4),
        "labels": labels,
        "num_objects": np.asarray(batch["num_objects"], np.int32),
        "difficult": (
            np.zeros(labels.shape, bool)
            if difficult is None
            else np.asarray(difficult).reshape(labels.shape).astype(bool)
        ),
    }


def concat(parts: list[dict]) -> dict[str, np.ndarray]:
    """Arrays with the same keys and K -> one set of arrays, rows in order."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load_rows(prep: str, split: str, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """Rows ``start``..``stop - 1`` of ``PREP/<split>`` (raydet.ingest.shards.read_rows; ``stop`` None: to the end)
    as arrays. ValueError when the range holds no row."""

    parts = [arrays_of(b) for b in read_rows(prep, split, start, stop)]
    if not parts:
        last = "the end" if stop is None else stop - 1
        raise ValueError(f"{prep}/{split}: rows {start}..{last} hold no row")
    return concat(parts)


def blank_rows(n: int, image_size: int, objects: int) -> dict[str, np.ndarray]:
    """``n`` black images without objects (validation padding, weighed 0), K = ``objects``."""
    return {
        "image": np.zeros((n, image_size, image_size, 3), np.uint8),
        "boxes": np.zeros((n, objects, 4), np.float32),
        "labels": np.full((n, objects), -1, np.int32),
        "num_objects": np.zeros(n, np.int32),
        "difficult": np.zeros((n, objects), bool),
    }


def fixed_batches(parts: Iterable[dict], size: int) -> Iterator[dict]:
    """Arrays of any row counts -> arrays of exactly ``size`` rows, rows in order; the rows left when ``parts``
    ends come out as one shorter last batch."""
    carry = None
    for part in parts:
        carry = part if carry is None or not len(carry["image"]) else concat([carry, part])
        while len(carry["image"]) >= size:
            yield {k: v[:size] for k, v in carry.items()}
            carry = {k: v[size:] for k, v in carry.items()}
    if carry is not None and len(carry["image"]):
        yield carry


def objects_of(arrays: dict[str, np.ndarray], i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row ``i``'s real objects: (G, 4) xyxy normalized boxes, (G,) labels, (G,) difficult flags."""
    n = int(arrays["num_objects"][i])
    return arrays["boxes"][i, :n], arrays["labels"][i, :n], arrays["difficult"][i, :n]


class BatchMaker:
    """Rows -> (images (B, S, S, 3) float32 0..255, heatmap (B, G, G, C), box targets (B, G, G, 6)).

    ``maker(indices)`` takes rows of the ``arrays`` it was given (None: only ``maker.rows(arrays, indices)``).
    With ``augment`` set, each batch is augmented (raydet.detector.augment.augment_batch: mosaics from within the batch)
    from one generator seeded with ``seed``, in the order the rows come; None: images as stored (validation).

    ``mosaic`` (True) may be set False while training runs (``CloseMosaic``): the maker runs in the training
    process (``tf.numpy_function`` or ``from_generator``), so the next batch it makes has no mosaic; batches
    already prefetched (up to 2, plus one being made) still may.
    """

    def __init__(
        self,
        arrays: dict[str, np.ndarray] | None,
        num_classes: int,
        grid: int,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ):
        self.arrays, self.num_classes, self.grid, self.augment = arrays, num_classes, grid, augment
        self.rng = np.random.default_rng(seed)
        self.mosaic = True

    def __call__(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.rows(self.arrays, indices)

    def rows(self, arrays: dict[str, np.ndarray], indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = [int(i) for i in np.asarray(indices).reshape(-1)]
        images = [arrays["image"][i] for i in rows]
        objects = [objects_of(arrays, i) for i in rows]
        boxes, labels = [o[0] for o in objects], [o[1] for o in objects]
        if self.augment is not None:
            images, boxes, labels = augment_batch(self.rng, images, boxes, labels, self.augment, self.mosaic)
        targets = [build_targets(b, lab, self.num_classes, self.grid) for b, lab in zip(boxes, labels, strict=True)]
        return (
            np.stack(images).astype(np.float32, copy=False),
            np.stack([t[0] for t in targets]),
            np.stack([t[1] for t in targets]),
        )


def CloseMosaic(maker: BatchMaker, epochs: int, close_last: int):  # a Keras class, made lazily
    """A Keras callback setting ``maker.mosaic`` to ``epoch < epochs - close_last`` (0-based) as each epoch begins:
    the last ``close_last`` epochs train on whole images, as inference sees them (Ultralytics' close_mosaic); a
    resumed run gets the right setting from its first epoch. Prefetched batches lag by up to 2 (``BatchMaker``)."""
    tf_keras = heavy.keras()

    class _CloseMosaic(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            maker.mosaic = epoch < epochs - close_last

    return _CloseMosaic()


# ------------------------------------------------------------------------------------------- tf.data


def _signature(image_size: int, grid: int, num_classes: int, weighted: bool = False):
    """``from_generator``'s output signature of ({"image"}, {"heatmap", "boxes"}[, weights])."""
    tf = heavy.tf()
    x = {"image": tf.TensorSpec([None, image_size, image_size, 3], tf.float32)}
    y = {
        "heatmap": tf.TensorSpec([None, grid, grid, num_classes], tf.float32),
        "boxes": tf.TensorSpec([None, grid, grid, BOX_TARGET_CHANNELS], tf.float32),
    }
    w = {"heatmap": tf.TensorSpec([None], tf.float32), "boxes": tf.TensorSpec([None], tf.float32)}
    return (x, y, w) if weighted else (x, y)


def _as_tf(maker: BatchMaker, indices, image_size: int):
    """One ``tf.numpy_function`` call of ``maker`` with the static shapes Keras needs."""
    tf = heavy.tf()
    images, heatmap, box_target = tf.numpy_function(maker, [indices], [tf.float32] * 3, stateful=True)
    images = tf.ensure_shape(images, [None, image_size, image_size, 3])
    heatmap = tf.ensure_shape(heatmap, [None, maker.grid, maker.grid, maker.num_classes])
    box_target = tf.ensure_shape(box_target, [None, maker.grid, maker.grid, BOX_TARGET_CHANNELS])
    return {"image": images}, {"heatmap": heatmap, "boxes": box_target}


def train_dataset(
    arrays: dict, num_classes: int, grid: int, local_batch: int, augment: AugmentConfig | None, seed: int
):
    """Endless shuffled (and, with ``augment``, augmented) batches of this worker's rows in memory:
    ({"image"}, {"heatmap", "boxes"}). Returns (dataset, its BatchMaker: ``CloseMosaic`` switches its mosaic)."""
    tf = heavy.tf()
    n = len(arrays["image"])
    maker = BatchMaker(arrays, num_classes, grid, augment, seed)
    size = arrays["image"].shape[1]
    ds = tf.data.Dataset.from_tensor_slices(np.arange(n, dtype=np.int64))
    ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat().batch(local_batch, drop_remainder=True)
    return _no_autotune(ds.map(lambda idx: _as_tf(maker, idx, size)).prefetch(2)), maker


def shard_passes(shard, rows_per_pass: int, seed: int | None, batch_rows: int = 64) -> Iterator[dict]:
    """Arrays of ``shard`` (a Ray ``DataIterator``), pass after pass, forever; with ``seed`` the rows are mixed in
    a ``SHUFFLE_ROWS`` buffer seeded ``seed + pass``. RuntimeError when a pass does not hold ``rows_per_pass`` rows
    (the workers' steps would drift apart and MultiWorkerMirroredStrategy would wait forever)."""
    for p in itertools.count():
        rows = 0
        for batch in shard.iter_batches(
            batch_size=batch_rows,
            batch_format="numpy",
            local_shuffle_buffer_size=None if seed is None else SHUFFLE_ROWS,
            local_shuffle_seed=None if seed is None else seed + p,
        ):
            rows += len(batch["image"])
            yield arrays_of(batch)
        if rows != rows_per_pass:
            raise RuntimeError(
                f"pass {p + 1} over this worker's train shard gave {rows} rows, expected {rows_per_pass}"
            )


def stream_train_dataset(
    shard,
    num_classes: int,
    grid: int,
    image_size: int,
    local_batch: int,
    augment: AugmentConfig | None,
    seed: int,
    rows_per_pass: int,
):
    """Endless (augmented) batches of ``local_batch`` rows streamed from ``shard`` (``shard_passes``, shuffled with
    ``seed``): ({"image"}, {"heatmap", "boxes"}), as ``train_dataset``'s. Returns (dataset, its BatchMaker)."""
    tf = heavy.tf()
    maker = BatchMaker(None, num_classes, grid, augment, seed)

    def batches():
        for rows in fixed_batches(shard_passes(shard, rows_per_pass, seed), local_batch):
            images, heatmap, box_target = maker.rows(rows, np.arange(local_batch))
            yield {"image": images}, {"heatmap": heatmap, "boxes": box_target}

    ds = tf.data.Dataset.from_generator(batches, output_signature=_signature(image_size, grid, num_classes))
    return _no_autotune(ds.prefetch(2)), maker


def val_dataset(
    parts: list[dict], num_classes: int, grid: int, image_size: int, local_batch: int, pad_to: int | None = None
):
    """A worker's validation rows held in memory (arrays, in order), padded with weight-0 ``blank_rows`` to
    ``pad_to`` rows so every worker runs the same number of steps. Returns (dataset of ({"image"}, {"heatmap",
    "boxes"}, weights), steps)."""
    real = sum(len(p["image"]) for p in parts)
    return _val_dataset(lambda: iter(parts), real, max(real, pad_to or 0), num_classes, grid, image_size, local_batch)


def stream_val_dataset(
    prep: str,
    split: str,
    start: int,
    stop: int,
    num_classes: int,
    grid: int,
    image_size: int,
    local_batch: int,
    pad_to: int,
):
    """As ``val_dataset`` for rows ``start``..``stop - 1`` of ``PREP/<split>``, read from the files
    (raydet.ingest.shards.read_rows) again on every pass, ``local_batch`` rows at a time."""

    def parts():
        return (arrays_of(b) for b in read_rows(prep, split, start, stop, batch_rows=local_batch))

    return _val_dataset(parts, stop - start, max(stop - start, pad_to), num_classes, grid, image_size, local_batch)


def _val_dataset(
    parts: Callable[[], Iterable[dict]],
    real: int,
    total: int,
    num_classes: int,
    grid: int,
    image_size: int,
    local_batch: int,
):
    tf = heavy.tf()
    maker = BatchMaker(None, num_classes, grid)

    def weighted():
        k, seen = 1, 0
        for part in parts():
            k, seen = part["labels"].shape[1], seen + len(part["image"])
            yield {**part, "weight": np.ones(len(part["image"]), np.float32)}
        assert seen == real, f"validation read {seen} rows, expected {real}"
        if total > real:
            yield {**blank_rows(total - real, image_size, k), "weight": np.zeros(total - real, np.float32)}

    def batches():
        for rows in fixed_batches(weighted(), local_batch):
            images, heatmap, box_target = maker.rows(rows, np.arange(len(rows["image"])))
            w = rows["weight"]
            yield {"image": images}, {"heatmap": heatmap, "boxes": box_target}, {"heatmap": w, "boxes": w}

    steps = -(-total // local_batch)
    ds = tf.data.Dataset.from_generator(batches, output_signature=_signature(image_size, grid, num_classes, True))
    # a known length makes Keras start the generator again for every validation (unknown: it expects one endless one)
    return _no_autotune(ds.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)), steps


def _no_autotune(ds):
    """``ds`` with tf.data's autotuning off. These pipelines have fixed buffers and nothing for it to tune, and in
    a Ray Train worker its optimisation thread held up the end of ``fit`` (the iterator's destructor waits for it)
    by up to 23 s after a 12-epoch run: docs/TRAINING.md, "Around the steps"."""
    options = heavy.tf().data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)
