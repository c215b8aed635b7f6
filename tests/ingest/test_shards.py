"""raydet.ingest.shards: the PREP shard format written by ``write_shard`` and read back by ``read_split`` (Ray),
``image_array`` (plain pyarrow) and ``difficult_of``; hand-made older shards (tensor-column images, no
``difficult`` column); bad rows refused with the file named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydet.ingest.shards import WRITE_CHUNK, _write_in_pieces, difficult_of, image_array, read_split, write_shard


def rows_of(images: np.ndarray, k: int = 2) -> list[dict]:
    """One row per image, image i with objects 0..i-1 (at most k): box j = (j/10, j/10, j/10 + 0.5, j/10 + 0.5)
    normalized xyxy, label j, difficult j % 2; the rest padding."""
    rows = []
    for i, image in enumerate(images):
        n = min(i, k)
        boxes = np.zeros((k, 4), np.float32)
        boxes[:n] = np.array([[j / 10, j / 10, j / 10 + 0.5, j / 10 + 0.5] for j in range(n)]).reshape(n, 4)
        labels = np.full((k,), -1, np.int32)
        labels[:n] = np.arange(n)
        difficult = np.zeros((k,), np.uint8)
        difficult[:n] = np.arange(n) % 2
        rows.append(
            {
                "file": f"{i}.jpg",
                "image": image,
                "boxes": boxes,
                "labels": labels,
                "difficult": difficult,
                "num_objects": n,
                "width": 640,
                "height": 480,
            }
        )
    return rows


def test_write_in_pieces_passes_every_byte_in_chunks_of_at_most_write_chunk():
    class Recorder:  # the one method _write_in_pieces uses, on an in-memory "file system"
        def __init__(self):
            self.writes: list[bytes] = []

        def open_output_stream(self, path):
            recorder = self

            class Stream:
                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    return False

                def write(self, piece):
                    recorder.writes.append(bytes(piece))

            return Stream()

    data = np.random.default_rng(0).integers(0, 256, 2 * WRITE_CHUNK + 1000, dtype=np.uint8).tobytes()
    fs = Recorder()
    _write_in_pieces(pa.py_buffer(data), "x.parquet", fs)
    assert [len(w) for w in fs.writes] == [WRITE_CHUNK, WRITE_CHUNK, 1000]
    assert b"".join(fs.writes) == data


def test_a_shard_larger_than_one_write_reads_back_exactly_with_pyarrow(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)  # 4 x 147 KiB
    assert images.nbytes > 2 * WRITE_CHUNK
    rows = rows_of(images, k=3)
    write_shard(str(tmp_path / "part-0.parquet"), rows)
    table = pq.read_table(tmp_path / "part-0.parquet")
    np.testing.assert_array_equal(image_array(table), images)
    assert table.column("file").to_pylist() == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    assert table.column("width").to_pylist() == [640] * 4
    assert table.column("num_objects").to_pylist() == [0, 1, 2, 3]
    # the object columns, flattened by pyarrow: row 3 holds objects 0, 1, 2 -> difficult 0 % 2, 1 % 2, 2 % 2
    difficult = np.asarray(table.column("difficult").to_pylist()).reshape(4, 3)
    assert difficult.tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 1, 0]]
    labels = np.asarray(table.column("labels").to_pylist()).reshape(4, 3)
    assert labels.tolist() == [[-1, -1, -1], [0, -1, -1], [0, 1, -1], [0, 1, 2]]


@pytest.mark.slow
def test_read_split_gives_every_column_back_with_its_dtype_and_shape(tmp_path, ray_local):
    images = np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 4, 4, 3)  # every pixel value distinct
    rows = rows_of(images, k=2)
    (tmp_path / "prep" / "train").mkdir(parents=True)
    write_shard(str(tmp_path / "prep" / "train" / "part-0.parquet"), rows)
    batch = read_split(tmp_path / "prep", "train", override_num_blocks=1).take_batch(3, batch_format="numpy")
    np.testing.assert_array_equal(batch["image"], images)
    assert batch["boxes"].shape == (3, 2, 4) and batch["boxes"].dtype == np.float32
    assert batch["labels"].dtype == np.int32 and batch["difficult"].dtype == np.uint8
    np.testing.assert_array_equal(batch["boxes"], np.stack([r["boxes"] for r in rows]))
    # rows_of: image 2 has objects 0 and 1 (difficult 0, 1); images 0 and 1 at most one (difficult 0)
    assert batch["labels"].tolist() == [[-1, -1], [0, -1], [0, 1]]
    assert batch["difficult"].tolist() == [[0, 0], [0, 0], [0, 1]]
    assert difficult_of(batch).tolist() == [[False, False], [False, False], [False, True]]
    assert batch["num_objects"].tolist() == [0, 1, 2] and batch["num_objects"].dtype == np.int32


def test_rows_without_difficult_are_written_as_not_difficult(tmp_path):
    images = np.zeros((2, 4, 4, 3), np.uint8)
    rows = [{k: v for k, v in r.items() if k != "difficult"} for r in rows_of(images, k=2)]
    write_shard(str(tmp_path / "part-0.parquet"), rows)
    table = pq.read_table(tmp_path / "part-0.parquet")
    assert np.asarray(table.column("difficult").to_pylist()).reshape(2, 2).tolist() == [[0, 0], [0, 0]]


def test_difficult_of_an_older_batch_without_the_column_is_all_false():
    batch = {"labels": np.array([[3, -1, -1], [0, 1, -1]], np.int32)}  # an older shard: no "difficult"
    assert difficult_of(batch).tolist() == [[False] * 3, [False] * 3]
    assert difficult_of({**batch, "difficult": np.array([[1, 0, 0], [0, 1, 0]], np.uint8)}).tolist() == [
        [True, False, False],
        [False, True, False],
    ]


@pytest.mark.slow
def test_read_split_reads_a_hand_made_tensor_column_shard_and_refuses_bad_arguments(tmp_path, ray_local):
    from ray.data.extensions import ArrowTensorArray

    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)  # values 0..95, every pixel distinct
    (tmp_path / "old" / "test").mkdir(parents=True)
    (tmp_path / "old" / "manifest.json").write_text(json.dumps({"image_size": 4}))
    table = pa.table(
        {
            "file": ["a.jpg", "b.jpg"],
            "image": ArrowTensorArray.from_numpy(images),
            "labels": ArrowTensorArray.from_numpy(np.array([[0], [1]], np.int32)),
        }
    )
    pq.write_table(table, tmp_path / "old" / "test" / "part-0.parquet")  # the pre-binary format, no difficult
    batch = read_split(tmp_path / "old", "test", override_num_blocks=1).take_batch(2, batch_format="numpy")
    assert batch["image"].shape == (2, 4, 4, 3) and batch["image"].dtype == np.uint8
    np.testing.assert_array_equal(batch["image"], images)
    assert "difficult" not in batch and difficult_of(batch).tolist() == [[False], [False]]
    np.testing.assert_array_equal(image_array(pq.read_table(tmp_path / "old" / "test" / "part-0.parquet")), images)
    # and a write_shard fixture through a file:// URI
    rows = rows_of(images, k=1)
    (tmp_path / "new" / "train").mkdir(parents=True)
    write_shard(str(tmp_path / "new" / "train" / "part-0.parquet"), rows)
    batch = read_split((tmp_path / "new").as_uri(), "train", override_num_blocks=1).take_batch(2, batch_format="numpy")
    np.testing.assert_array_equal(batch["image"], images)  # S from the shard's metadata: no manifest here
    with pytest.raises(ValueError, match="'val'"):
        read_split(tmp_path / "new", "val")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "new" / "test"))):
        read_split(tmp_path / "new", "test")  # no shards


def test_write_shard_refuses_rows_that_do_not_fit_the_first_naming_the_file(tmp_path):
    images = np.zeros((2, 4, 4, 3), np.uint8)
    good, other = rows_of(images, k=2)
    with pytest.raises(ValueError, match=r"'1.jpg' is \(3, 3, 3\)"):
        write_shard(str(tmp_path / "bad.parquet"), [good, {**other, "image": images[1, :3, :3]}])
    with pytest.raises(ValueError, match=r"labels of '1.jpg' has shape \(3,\), expected \(2,\)"):
        write_shard(str(tmp_path / "bad.parquet"), [good, {**other, "labels": np.full(3, -1, np.int32)}])
    with pytest.raises(ValueError, match=r"boxes of '1.jpg' has shape \(2, 3\), expected \(2, 4\)"):
        write_shard(str(tmp_path / "bad.parquet"), [good, {**other, "boxes": np.zeros((2, 3), np.float32)}])
    with pytest.raises(ValueError, match=r"difficult of '1.jpg' has shape \(1,\), expected \(2,\)"):
        write_shard(str(tmp_path / "bad.parquet"), [good, {**other, "difficult": np.zeros(1, np.uint8)}])
    assert not Path(tmp_path / "bad.parquet").exists()


def _two_shards(root: Path, split: str = "train") -> tuple[np.ndarray, list[dict]]:
    """7 rows 0.jpg .. 6.jpg (rows_of, K = 2) in two shards of 3 and 4 rows; image i is filled with i."""
    images = np.stack([np.full((4, 4, 3), i, np.uint8) for i in range(7)])
    rows = rows_of(images, k=2)
    (root / split).mkdir(parents=True, exist_ok=True)
    write_shard(str(root / split / "part-0.parquet"), rows[:3])
    write_shard(str(root / split / "part-1.parquet"), rows[3:])
    return images, rows


def test_read_rows_reads_any_range_across_shards_with_plain_pyarrow(tmp_path):
    from raydet.ingest.shards import read_rows, split_rows

    images, rows = _two_shards(tmp_path)
    counts = [(Path(p).name, n) for p, n in split_rows(tmp_path, "train")]
    assert counts == [("part-0.parquet", 3), ("part-1.parquet", 4)]
    # rows 2..5: row 2 from the first shard, rows 3, 4 and 5 from the second in batches of at most 2
    batches = list(read_rows(tmp_path, "train", 2, 6, batch_rows=2))
    assert [b["file"].tolist() for b in batches] == [["2.jpg"], ["3.jpg", "4.jpg"], ["5.jpg"]]
    got = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    np.testing.assert_array_equal(got["image"], images[2:6])
    np.testing.assert_array_equal(got["boxes"], np.stack([r["boxes"] for r in rows[2:6]]))
    assert got["boxes"].shape == (4, 2, 4) and got["boxes"].dtype == np.float32
    # rows_of: row i has min(i, 2) objects, difficult j % 2 -> rows 2..5 all [0, 1]
    assert got["labels"].tolist() == [[0, 1]] * 4 and got["labels"].dtype == np.int32
    assert got["difficult"].tolist() == [[0, 1]] * 4 and got["num_objects"].tolist() == [2] * 4
    assert got["width"].tolist() == [640] * 4 and got["num_objects"].dtype == np.int32
    assert [f for b in read_rows(tmp_path, "train") for f in b["file"]] == [f"{i}.jpg" for i in range(7)]
    assert list(read_rows(tmp_path, "train", 7, 9)) == [] and list(read_rows(tmp_path, "train", 4, 4)) == []


@pytest.mark.slow
def test_read_blocks_cuts_the_split_into_blocks_of_the_asked_rows(tmp_path, ray_local):
    """7 rows in blocks of 3: tasks for rows 0-2, 3-5 (across the shard boundary) and 6."""
    from raydet.ingest.shards import read_blocks

    images, _ = _two_shards(tmp_path)
    ds = read_blocks(tmp_path, "train", 3, num_cpus=0).materialize()
    blocks = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    assert sorted(b["file"].tolist() for b in blocks) == [
        ["0.jpg", "1.jpg", "2.jpg"],
        ["3.jpg", "4.jpg", "5.jpg"],
        ["6.jpg"],
    ]
    for b in blocks:
        np.testing.assert_array_equal(b["image"], images[[int(f[0]) for f in b["file"]]])
        assert b["boxes"].shape == (len(b["file"]), 2, 4)
