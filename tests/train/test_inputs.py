"""raydet.train.inputs: the choice between memory and streaming, the same targets on both paths, fixed-size batches
across parts and passes, validation ranges padded with weight-0 rows, read from memory or from the files."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from prep_helpers import make_prep, rows_of

from raydet.config import AugmentConfig
from raydet.ingest.shards import read_rows
from raydet.train.inputs import (
    BatchMaker,
    CloseMosaic,
    arrays_of,
    blank_rows,
    concat,
    fixed_batches,
    plan_inputs,
    row_bytes,
    shard_passes,
    stream_train_dataset,
    stream_val_dataset,
    train_dataset,
    val_dataset,
    val_range,
)

SIZE, GRID, CLASSES = 32, 8, 2  # prep_helpers' rows; the network's stride 4


def _arrays(n: int, seed: int = 0) -> dict:
    return arrays_of(
        {
            k: np.stack([r[k] for r in rows_of(n, SIZE, seed=seed)])
            for k in ("image", "boxes", "labels", "num_objects", "difficult")
        }
    )


def test_row_bytes_and_the_plan_stream_only_past_the_budget():
    # 32 x 32 x 3 = 3072 pixel bytes + 3 objects x (16 + 4 + 1) + 4 = 3139
    assert row_bytes(32, 3) == 3139
    # 2 workers: 128 // 2 = 64 train rows and ceil(65 / 2) = 33 validation rows each: 97 x 3139 = 304,483 bytes
    plan = plan_inputs(128, 65, 32, 3, workers=2, local_batch=8, budget_gb=304_483e-9)
    assert (plan.stream, plan.rows_per_worker, plan.val_rows_per_worker) == (False, 64, 33)
    assert (plan.worker_bytes, plan.steps_per_epoch) == (304_483, 8)  # 64 // 8
    assert plan_inputs(128, 65, 32, 3, workers=2, local_batch=8, budget_gb=304_482e-9).stream
    assert plan_inputs(129, 1, 32, 3, workers=2, local_batch=10, budget_gb=0).steps_per_epoch == 6  # 64 // 10
    assert plan_inputs(1, 1, 32, 3, workers=1, local_batch=1, budget_gb=0).stream  # 0: always stream
    # the test split has its own K (every object kept): 5 objects -> 3072 + 5 x 21 + 4 = 3181 bytes a validation row
    plan = plan_inputs(128, 65, 32, 3, workers=2, local_batch=8, budget_gb=1, val_objects=5)
    assert (plan.worker_bytes, plan.row_bytes) == (64 * 3139 + 33 * 3181, 3139)


def test_val_range_gives_consecutive_rows_and_the_last_workers_fewer():
    # ceil(5 / 4) = 2 rows per worker: 0-1, 2-3, 4, none
    assert [val_range(5, r, 4) for r in range(4)] == [(0, 2), (2, 4), (4, 5), (5, 5)]
    assert [val_range(64, r, 2) for r in range(2)] == [(0, 32), (32, 64)]


def test_fixed_batches_carry_rows_across_parts_in_order():
    parts = [{"image": np.arange(a, b)} for a, b in ((0, 3), (3, 8), (8, 10))]  # 3, 5, 2 rows
    out = [b["image"].tolist() for b in fixed_batches(iter(parts), 4)]
    assert out == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # the 2 left over come last, shorter
    assert list(fixed_batches(iter([]), 4)) == []


def test_augmented_batches_do_not_depend_on_how_the_rows_are_cut():
    """The streamed path makes each batch from whatever rows arrive: with the same seed and row order its
    augmented images and targets (mosaics from within each batch) are those of the in-memory calls."""
    arrays = _arrays(10)
    memory = BatchMaker(arrays, CLASSES, GRID, AugmentConfig(), seed=7)
    whole = [memory(np.arange(a, b)) for a, b in ((0, 4), (4, 8), (8, 10))]
    maker = BatchMaker(None, CLASSES, GRID, AugmentConfig(), seed=7)
    parts = [{k: v[a:b] for k, v in arrays.items()} for a, b in ((0, 3), (3, 10))]
    cut = [maker.rows(rows, np.arange(len(rows["image"]))) for rows in fixed_batches(iter(parts), 4)]
    for w, c in zip(whole, cut, strict=True):
        for i in range(3):
            np.testing.assert_array_equal(w[i], c[i])
    assert not np.array_equal(memory(np.arange(4))[0], whole[0][0])  # the generator goes on: new draws


def test_the_streamed_dataset_augments_with_its_seed():
    """Rows 0-3 then 4-7 from a shard without a shuffle buffer: the dataset's batches are a maker's seeded alike."""
    arrays, cfg = _arrays(8), AugmentConfig()
    ds, maker = stream_train_dataset(ListIterator(arrays), CLASSES, GRID, SIZE, 4, cfg, 5, rows_per_pass=8)
    reference = BatchMaker(arrays, CLASSES, GRID, cfg, seed=5)
    for (x, y), rows in zip(ds.take(2), (np.arange(4), np.arange(4, 8)), strict=True):
        images, heatmap, _ = reference(rows)
        np.testing.assert_array_equal(x["image"].numpy(), images)
        np.testing.assert_array_equal(y["heatmap"].numpy(), heatmap)
    assert maker.augment is cfg and maker.mosaic


def test_mosaic_switches_off_for_the_last_epochs():
    """An augmenting maker with nothing but mosaic: with ``mosaic`` False it returns the stored images; the
    callback switches it off from epoch 5 - 2 = 3 (0-based) on."""
    arrays = _arrays(4)
    still = AugmentConfig(scale=0.0, translate=0.0, hflip=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, mosaic=1.0)
    maker = BatchMaker(arrays, CLASSES, GRID, still, seed=0)
    assert maker.mosaic and not np.array_equal(maker(np.arange(4))[0], arrays["image"].astype(np.float32))
    callback, seen = CloseMosaic(maker, epochs=5, close_last=2), []
    for epoch in range(5):
        callback.on_epoch_begin(epoch)
        seen.append(maker.mosaic)
    assert seen == [True, True, True, False, False]
    np.testing.assert_array_equal(maker(np.arange(4))[0], arrays["image"].astype(np.float32))
    CloseMosaic(maker, epochs=5, close_last=0).on_epoch_begin(4)  # 0: mosaic to the end
    assert maker.mosaic


class ListIterator:
    """A stand-in for Ray's DataIterator over in-memory batches: the same rows every pass, cut into
    ``batch_size`` rows (no shuffle buffer)."""

    def __init__(self, arrays: dict, rows: int | None = None):
        self.arrays, self.rows, self.passes = arrays, rows, 0

    def iter_batches(self, batch_size, batch_format, local_shuffle_buffer_size=None, local_shuffle_seed=None):
        self.passes += 1
        n = self.rows or len(self.arrays["image"])
        for a in range(0, n, batch_size):
            yield {k: v[a : min(n, a + batch_size)] for k, v in self.arrays.items()}


def _by_image(batches) -> dict:
    """{sha1 of a row's image: (heatmap, box targets)} over ({"image"}, {"heatmap", "boxes"}) batches."""
    out = {}
    for x, y in batches:
        for img, hm, bt in zip(x["image"].numpy(), y["heatmap"].numpy(), y["boxes"].numpy(), strict=True):
            out[hashlib.sha1(img.tobytes()).hexdigest()] = (hm, bt)
    return out


@pytest.mark.slow
def test_streamed_and_in_memory_training_batches_hold_the_same_targets(tmp_path, ray_local):
    """The same 40 rows through a real Ray Data shard (streamed, shuffled in its buffer) and in memory, without
    augmentation: each image comes with the same target maps, every row once per pass of 40 = 5 x 8 rows."""
    from raydet.ingest.shards import read_blocks

    make_prep(tmp_path, n_train=40, n_test=4)
    arrays = concat([arrays_of(b) for b in read_rows(str(tmp_path), "train")])
    memory = _by_image(train_dataset(arrays, CLASSES, GRID, 8, None, seed=3)[0].take(5))
    shard = read_blocks(str(tmp_path), "train", 16).iterator()
    streamed = _by_image(stream_train_dataset(shard, CLASSES, GRID, SIZE, 8, None, 3, rows_per_pass=40)[0].take(5))
    assert len(memory) == len(streamed) == 40 and memory.keys() == streamed.keys()
    for key, (hm, bt) in memory.items():
        np.testing.assert_array_equal(streamed[key][0], hm)
        np.testing.assert_array_equal(streamed[key][1], bt)


def test_a_pass_of_the_wrong_length_stops_training_loudly():
    arrays = _arrays(12)
    passes = shard_passes(ListIterator(arrays), rows_per_pass=12, seed=None, batch_rows=5)
    assert [len(b["image"]) for b in (next(passes) for _ in range(6))] == [5, 5, 2, 5, 5, 2]  # two passes
    short = shard_passes(ListIterator(arrays, rows=10), rows_per_pass=12, seed=None, batch_rows=5)
    with pytest.raises(RuntimeError, match="gave 10 rows, expected 12"):
        list(zip(range(10), short, strict=False))


def test_streamed_batches_carry_a_pass_remainder_into_the_next_epoch():
    """12 rows per pass, batches of 5: steps 12 // 5 = 2 per epoch; rows 10 and 11 of pass 1 open the batch
    after, so over 12 batches the 5 passes' 60 rows all come, each row 5 times."""
    arrays = _arrays(12)
    it = ListIterator(arrays)
    ds, _ = stream_train_dataset(it, CLASSES, GRID, SIZE, 5, None, 0, rows_per_pass=12)
    seen = _count_rows(ds.take(12), arrays)
    assert sorted(seen.values()) == [5] * 12 and it.passes >= 5  # prefetching may have begun a 6th


def _count_rows(batches, arrays) -> dict:
    keys = {hashlib.sha1(np.asarray(img, np.float32).tobytes()).hexdigest(): i for i, img in enumerate(arrays["image"])}
    seen: dict[int, int] = {}
    for x, _ in batches:
        for img in x["image"].numpy():
            i = keys[hashlib.sha1(img.tobytes()).hexdigest()]
            seen[i] = seen.get(i, 0) + 1
    return seen


def _val_batches(ds):
    return [(x["image"].numpy(), y["heatmap"].numpy(), y["boxes"].numpy(), w["heatmap"].numpy()) for x, y, w in ds]


def test_validation_in_memory_and_from_the_files_are_the_same_padded_batches(tmp_path):
    """Worker 1 of 2 on 9 test rows: rows 5..8 (ceil(9 / 2) = 5 per worker), padded with one blank row of weight 0
    to 5; batches of 2 -> 3 steps, every pass the same."""
    make_prep(tmp_path, n_train=4, n_test=9)
    prep = str(tmp_path)
    start, stop = val_range(9, 1, 2)
    parts = [arrays_of(b) for b in read_rows(prep, "test", start, stop)]
    memory, steps = val_dataset(parts, CLASSES, GRID, SIZE, 2, pad_to=5)
    files, files_steps = stream_val_dataset(prep, "test", start, stop, CLASSES, GRID, SIZE, 2, pad_to=5)
    assert steps == files_steps == 3 and int(files.cardinality()) == 3
    a, b, again = _val_batches(memory), _val_batches(files), _val_batches(files)
    for x, y, z in zip(a, b, again, strict=True):
        for u, v, t in zip(x, y, z, strict=True):
            np.testing.assert_array_equal(u, v)
            np.testing.assert_array_equal(u, t)
    assert [w.tolist() for *_, w in a] == [[1, 1], [1, 1], [0]]
    assert not a[-1][0].any() and not a[-1][1].any()  # the pad row: black, no object
    expected = BatchMaker(concat(parts), CLASSES, GRID)(np.arange(4))
    np.testing.assert_array_equal(np.concatenate([a[0][1], a[1][1]]), expected[1])


def test_a_worker_without_validation_rows_runs_its_steps_on_blank_rows():
    ds, steps = val_dataset([], CLASSES, GRID, SIZE, 4, pad_to=3)
    (batch,) = _val_batches(ds)
    assert steps == 1 and batch[0].shape == (3, SIZE, SIZE, 3) and batch[3].tolist() == [0, 0, 0]
    assert blank_rows(2, SIZE, 3)["labels"].tolist() == [[-1] * 3] * 2


def test_every_training_pipeline_runs_without_tf_data_autotuning(tmp_path):
    """Its optimisation thread held up the end of a Ray Train worker's ``fit`` by up to 23 s (docs/TRAINING.md): the
    in-memory and streamed train datasets and both validation datasets turn it off."""
    make_prep(tmp_path, n_train=4, n_test=4)
    train_ds, _ = train_dataset(_arrays(4), CLASSES, GRID, 2, None, 0)
    streamed, _ = stream_train_dataset(None, CLASSES, GRID, SIZE, 2, None, 0, 4)
    memory_val, _ = val_dataset([], CLASSES, GRID, SIZE, 2, pad_to=2)
    files_val, _ = stream_val_dataset(str(tmp_path), "test", 0, 4, CLASSES, GRID, SIZE, 2, 4)
    assert [ds.options().autotune.enabled for ds in (train_ds, streamed, memory_val, files_val)] == [False] * 4
