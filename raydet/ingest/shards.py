"""The PREP shard format (docs/FORMATS.md): rows of images and their objects <-> Parquet files.

In: rows, each a dict ``file`` str, ``image`` (S, S, 3) uint8 RGB, ``boxes`` (K, 4) float32 normalized xyxy
zero-padded, ``labels`` (K,) int32 -1-padded, ``difficult`` (K,) uint8 0/1 zero-padded (optional: zeros when
absent), ``num_objects`` int (0 for a negative image), ``width``/``height`` int (original pixels).
Out: one Parquet file per ``write_shard`` call; ``read_split`` gives a PREP split back as a ``ray.data.Dataset``
(``image`` an (N, S, S, 3) uint8 tensor column), ``image_array`` a shard's pixels with plain pyarrow, and
``difficult_of`` a batch's difficult flags (all 0 for shards written before that column existed).

Decisions (the measurements behind them: docs/INGEST.md):
- ``image`` is a plain ``binary`` column of the raw row-major bytes (``IMAGE_ENCODING``), not a Ray tensor
  column: Parquet's nested-list encoding of a tensor cost as much CPU as the JPEG decode. No dictionary
  encoding (an image never repeats) and no compression for the pixels; snappy for the small columns;
  statistics only for the scalar columns.
- ``boxes``, ``labels`` and ``difficult`` are Ray tensor columns of the same K in every row of a shard.
- A shard is encoded in memory and reaches the file system in ``WRITE_CHUNK`` pieces (``_write_in_pieces``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raydet.cluster import storage
from raydet.errors import UserError
from raydet.ingest import heavy

SPLITS = ("train", "test")
# docs/FORMATS.md: the ``image`` column is a Parquet binary of the (S, S, 3) uint8 array's row-major bytes;
# the manifest records it as ``image_encoding``. Readers: ``read_split`` (Ray) and ``image_array`` (pyarrow).
IMAGE_ENCODING = "raw_uint8_hwc"
IMAGE_COMPRESSION = "none"  # the pixels barely compress and the codec costs CPU (docs/INGEST.md)
OTHER_COMPRESSION = "snappy"
WRITE_CHUNK = 256 * 1024  # shards reach the file system in pieces of at most this many bytes
# Statistics (min/max per page) only mean something for the scalar columns; on the pixels they are pure cost.
_STATS_COLUMNS = ["file", "num_objects", "width", "height"]
_OBJECT_COLUMNS = {"boxes": (np.float32, (4,)), "labels": (np.int32, ()), "difficult": (np.uint8, ())}


# -------------------------------------------------------------------------------------------- writing


def write_shard(path: str, rows: list[dict], filesystem: pafs.FileSystem | None = None) -> None:
    """Rows (module docstring) -> one Parquet file at ``path`` (``shard_table``), written by ``_write_in_pieces``.

    ``filesystem`` None means ``path`` is local. Raises ValueError naming the file for a row that does not fit
    the first row's shapes (``shard_table``).
    """
    table = shard_table(rows, where=path)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **parquet_options(table))
    _write_in_pieces(sink.getvalue(), path, filesystem or pafs.LocalFileSystem())


def shard_table(rows: list[dict], where: str = "shard") -> pa.Table:
    """Rows (module docstring) -> the Arrow table of one shard.

    ``image`` becomes a ``binary`` column of the raw bytes (``IMAGE_ENCODING``); ``boxes`` (K, 4) float32
    normalized xyxy, ``labels`` (K,) int32 and ``difficult`` (K,) uint8 (zeros for rows without it) Ray tensor
    columns. Raises ValueError (naming ``where`` and the file) for an image that is not (S, S, 3) uint8 with
    every row the same S, or for boxes/labels/difficult not of the first row's K.
    """
    ArrowTensorArray = heavy.arrow_tensor_array()
    _check_rows(rows, where)
    k = len(rows[0]["labels"]) if rows else 0
    difficult = [
        np.asarray(r["difficult"], np.uint8) if r.get("difficult") is not None else np.zeros(k, np.uint8) for r in rows
    ]
    table = pa.table(
        {
            "file": pa.array([r["file"] for r in rows], pa.string()),
            "image": _binary_images(np.stack([r["image"] for r in rows])),
            "boxes": ArrowTensorArray.from_numpy(np.stack([np.asarray(r["boxes"], np.float32) for r in rows])),
            "labels": ArrowTensorArray.from_numpy(np.stack([np.asarray(r["labels"], np.int32) for r in rows])),
            "difficult": ArrowTensorArray.from_numpy(np.stack(difficult)),
            "num_objects": pa.array([r["num_objects"] for r in rows], pa.int32()),
            "width": pa.array([r["width"] for r in rows], pa.int32()),
            "height": pa.array([r["height"] for r in rows], pa.int32()),
        }
    )
    # S travels with the shard too, so ``image_array`` needs no manifest
    return table.replace_schema_metadata(
        {
            **(table.schema.metadata or {}),
            b"raydet.image_encoding": IMAGE_ENCODING.encode(),
            b"raydet.image_size": str(rows[0]["image"].shape[0] if rows else 0).encode(),
        }
    )


def _check_rows(rows: list[dict], where: str) -> None:
    """ValueError naming ``where`` and the file for the first row whose image or object arrays do not have the
    first row's shapes: (S, S, 3) uint8; boxes (K, 4), labels (K,), difficult (K,) when present."""
    if not rows:
        return
    size, k = rows[0]["image"].shape[0], len(rows[0]["labels"])
    for r in rows:
        if r["image"].shape != (size, size, 3) or r["image"].dtype != np.uint8:
            # raw bytes carry no shape: a wrong one would be read back as garbage, so refuse it here
            raise ValueError(
                f"write_shard {where}: image of {r['file']!r} is {r['image'].shape} {r['image'].dtype}, "
                f"expected ({size}, {size}, 3) uint8 like the first row"
            )
        for column, (_, tail) in _OBJECT_COLUMNS.items():
            if column == "difficult" and r.get(column) is None:
                continue
            shape = np.shape(r[column])
            if shape != (k, *tail):
                raise ValueError(
                    f"write_shard {where}: {column} of {r['file']!r} has shape {shape}, expected "
                    f"{(k, *tail)} (K = {k} objects per row, like the first row)"
                )


def parquet_options(table: pa.Table) -> dict:
    """``pq.write_table`` options for a shard: codec per column (``IMAGE_COMPRESSION`` for the pixels,
    ``OTHER_COMPRESSION`` for the rest), statistics for the scalar columns only, dictionary encoding for all but
    the pixels."""
    return {
        "compression": {c: IMAGE_COMPRESSION if c == "image" else OTHER_COMPRESSION for c in table.column_names},
        "write_statistics": _STATS_COLUMNS,
        "use_dictionary": [c for c in table.column_names if c != "image"],
    }


def _write_in_pieces(data: pa.Buffer, path: str, filesystem: pafs.FileSystem) -> None:
    """``data`` -> a new file ``path``, in writes of at most ``WRITE_CHUNK`` bytes (zero-copy slices).

    Parquet writing into the file itself hands it whole column chunks (many MiB of pixels), which some kernels
    handle far more slowly than a series of small writes (docs/INGEST.md, benchmarks/write.py); a buffered
    stream (S3, GCS) gathers the pieces again.
    """
    with filesystem.open_output_stream(path) as stream:
        for start in range(0, data.size, WRITE_CHUNK):
            stream.write(data.slice(start, min(WRITE_CHUNK, data.size - start)))


def _binary_images(images: np.ndarray) -> pa.Array:
    """(N, S, S, 3) uint8 -> a ``binary`` array, one row per image, made from the array's own buffer (no
    per-row bytes objects, no second copy). ``large_binary`` when a shard passes 2 GiB."""
    n = len(images)
    row = int(np.prod(images.shape[1:]))
    large = n * row >= 2**31
    offsets = np.arange(0, (n + 1) * row, row, dtype=np.int64 if large else np.int32)
    data = np.ascontiguousarray(images).reshape(-1)
    return pa.Array.from_buffers(
        pa.large_binary() if large else pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


# -------------------------------------------------------------------------------------------- reading


def difficult_of(batch: dict) -> np.ndarray:
    """A batch of PREP rows (dict of numpy columns, as ``read_split(...).iter_batches(batch_format="numpy")``
    gives) -> (N, K) bool: each object's VOC ``difficult`` flag, padding False. Shards written before the
    ``difficult`` column existed have no such column: every object is then not difficult."""
    if "difficult" in batch:
        return np.asarray(batch["difficult"]).astype(bool)
    return np.zeros(np.shape(batch["labels"]), bool)


def image_array(table: pa.Table, image_size: int | None = None) -> np.ndarray:
    """A shard's ``image`` column read with plain pyarrow -> (N, S, S, 3) uint8, without Ray.

    Accepts the ``binary`` raw-bytes column (``IMAGE_ENCODING``) and, for older PREP folders, a Ray tensor
    column (an extension array, or the flat list it reads as when Ray's type is not registered). S is
    ``image_size`` when given, else the shard's ``raydet.image_size`` metadata, else sqrt(bytes / 3) (images
    are square). Raises ValueError for a row whose size does not match.
    """
    column = table.column("image")
    meta = table.schema.metadata or {}
    if image_size is None and b"raydet.image_size" in meta:
        image_size = int(meta[b"raydet.image_size"])
    kind = column.type.storage_type if isinstance(column.type, pa.ExtensionType) else column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return _binary_image_array(column, kind, image_size)
    # a tensor column: flatten whatever nesting pyarrow gives back and reshape by hand
    n = len(column)
    flat = column.combine_chunks()
    if isinstance(flat, pa.ExtensionArray):
        flat = flat.storage
    while pa.types.is_list(flat.type) or pa.types.is_large_list(flat.type) or pa.types.is_fixed_size_list(flat.type):
        flat = flat.flatten()
    values = flat.to_numpy(zero_copy_only=False).astype(np.uint8, copy=False)
    if image_size is None:
        image_size = math.isqrt(values.size // max(n, 1) // 3)
    return values.reshape(n, image_size, image_size, 3)


def _binary_image_array(column: pa.ChunkedArray, kind: pa.DataType, image_size: int | None) -> np.ndarray:
    """A ``binary``/``large_binary`` image column -> (N, S, S, 3) uint8 straight from its buffers."""
    n = len(column)
    if image_size is None:
        image_size = math.isqrt(len(column[0].as_py()) // 3) if n else 0
    row = image_size * image_size * 3
    large = pa.types.is_large_binary(kind)
    chunks = []
    for chunk in column.chunks:
        if chunk.null_count:
            raise ValueError(f"image column has {chunk.null_count} null row(s)")
        offsets = np.frombuffer(
            chunk.buffers()[1], np.int64 if large else np.int32, len(chunk) + 1, chunk.offset * (8 if large else 4)
        )
        if (np.diff(offsets) != row).any():
            bad = int(np.flatnonzero(np.diff(offsets) != row)[0])
            raise ValueError(
                f"image row {bad} has {int(np.diff(offsets)[bad])} bytes, expected {row} "
                f"({image_size} x {image_size} x 3 uint8)"
            )
        data = np.frombuffer(chunk.buffers()[2], np.uint8) if len(chunk) else np.empty(0, np.uint8)
        chunks.append(data[offsets[0] : offsets[-1]])
    flat = np.concatenate(chunks) if chunks else np.empty(0, np.uint8)
    return flat.reshape(n, image_size, image_size, 3)


def read_split(prep: str | os.PathLike, split: str, **read_kwargs):
    """``PREP/<split>`` -> a ``ray.data.Dataset`` of the shards' rows, ``image`` an (N, S, S, 3) uint8 tensor column.

    The one reader every stage uses. The other columns come back as written: ``boxes`` (N, K, 4) float32
    normalized xyxy, ``labels`` (N, K) int32, ``difficult`` (N, K) uint8 (absent in shards written before it
    existed: use ``difficult_of``), ``num_objects``/``width``/``height`` int32. Shards written by
    ``write_shard`` hold ``image`` as raw bytes, which ``ray.data.read_parquet(tensor_column_schema=...)`` turns
    back into the tensor column (S from ``PREP/manifest.json``, else the shard's metadata); shards whose
    ``image`` already is a tensor column (older PREP folders, hand-made fixtures) are read as they are.
    ``read_kwargs`` go to ``read_parquet`` unchanged (``override_num_blocks``, ``columns``, ...). ``prep`` may be
    a path or a URI. Raises ValueError naming the folder when ``split`` is not train/test or the folder holds
    no Parquet file.

    Known limit (Ray 2.60): an operation Ray answers without reading ``image`` (``.count()`` on the lazy
    dataset) fails in Ray's tensor cast with ``KeyError: Field "image"``; ``materialize()`` first, or take
    row counts from ``manifest.json``'s ``splits``.
    """
    prep = str(prep)
    filesystem, root, folder, shards = _split_shards(prep, split)
    schema = pq.read_schema(shards[0], filesystem=filesystem)
    target = prep.rstrip("/") + "/" + split if "://" in prep else folder
    if "image" in schema.names and (
        pa.types.is_binary(schema.field("image").type) or pa.types.is_large_binary(schema.field("image").type)
    ):
        size = _image_size(filesystem, root, schema)
        read_kwargs = {**read_kwargs, "tensor_column_schema": {"image": (np.uint8, (size, size, 3))}}
        columns = read_kwargs.get("columns")
        if columns is not None and "image" not in columns:  # Ray would cast a column it did not read
            del read_kwargs["tensor_column_schema"]
    return heavy.ray_data().read_parquet(target, filesystem=filesystem, **read_kwargs)


def read_blocks(prep: str | os.PathLike, split: str, block_rows: int, num_cpus: float = 1.0):
    """``PREP/<split>`` -> a lazy ``ray.data.Dataset`` of the same rows and numpy columns as ``read_rows``, in
    blocks of ``block_rows`` consecutive rows (the last one shorter), each read by a Ray task reserving ``num_cpus``
    CPUs (0 allowed).

    Against ``read_split``: ``read_parquet`` lists the files in a task of its own that always reserves 1 CPU, so
    where Ray Train's workers hold every CPU that task waits forever (docs/STACK.md); here the row counts come
    from the footers on the caller's side and every task reserves ``num_cpus``. And the blocks come out exactly
    as asked (one actor call each, raydet.evaluate.pool). Raises as ``read_split``.
    """
    n = sum(rows for _, rows in split_rows(prep, split))
    ranges = [{"start": start, "stop": min(n, start + block_rows)} for start in range(0, n, block_rows)]
    return (
        heavy.ray_data()
        .from_items(ranges, override_num_blocks=len(ranges))
        .map_batches(_read_block, batch_size=1, num_cpus=num_cpus, fn_kwargs={"prep": str(prep), "split": split})
    )


def _read_block(ranges: dict, prep: str, split: str) -> dict[str, np.ndarray]:
    """``read_blocks``' task: one row range (``start``, ``stop`` columns of one row) -> those rows, one batch."""
    start, stop = int(ranges["start"][0]), int(ranges["stop"][0])
    parts = list(read_rows(prep, split, start, stop, batch_rows=stop - start))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _split_shards(prep: str | os.PathLike, split: str) -> tuple[pafs.FileSystem, str, str, list[str]]:
    """(filesystem, PREP root, split folder, the split's .parquet paths sorted by name) of a path or URI.
    Raises ValueError naming the folder when ``split`` is not train/test or the folder holds no Parquet file."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: must be one of {', '.join(SPLITS)}")
    prep = str(prep)
    filesystem, root = storage.resolve(prep)
    folder = f"{root}/{split}"
    shards = _parquet_files(filesystem, folder)
    if not shards:
        raise UserError(f"{folder}: no .parquet shards (is {prep} a folder written by raydet prepare?)")
    return filesystem, root, folder, shards


def _parquet_files(filesystem: pafs.FileSystem, folder: str) -> list[str]:
    """The ``.parquet`` files directly in ``folder``, sorted by name; [] when there is none or no folder."""
    infos = filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))


def shard_paths(prep: str | os.PathLike, split: str) -> list[str]:
    """The shards of ``PREP/<split>`` (PREP a path or URI) inside their filesystem, sorted by name; [] when the
    split has none."""
    filesystem, root = storage.resolve(prep)
    return _parquet_files(filesystem, f"{root}/{split}")


def split_rows(prep: str | os.PathLike, split: str) -> list[tuple[str, int]]:
    """``PREP/<split>`` -> [(shard path, rows)] in ``read_rows`` order, the counts from the Parquet footers (no
    column is read). Raises as ``read_split``."""
    filesystem, _, _, shards = _split_shards(prep, split)
    return _row_counts(filesystem, shards)


def _row_counts(filesystem: pafs.FileSystem, shards: list[str]) -> list[tuple[str, int]]:
    counts = []
    for path in shards:
        with filesystem.open_input_file(path) as f:
            counts.append((path, pq.ParquetFile(f).metadata.num_rows))
    return counts


def read_rows(
    prep: str | os.PathLike, split: str, start: int = 0, stop: int | None = None, batch_rows: int = 256
) -> Iterator[dict[str, np.ndarray]]:
    """Rows ``start``..``stop - 1`` of ``PREP/<split>`` (shards by name, rows as stored; ``stop`` None: to the
    end) with plain pyarrow, no Ray: numpy batches of at most ``batch_rows`` rows, columns as ``read_split``'s
    numpy batches (``image`` (n, S, S, 3) uint8; ``boxes`` (n, K, 4) float32 normalized xyxy; ``labels`` (n, K)
    int32; ``difficult`` (n, K) uint8, zeros for shards without it; ``num_objects``/``width``/``height``
    (n,) int32; ``file`` (n,) str). Only the shards that hold those rows are opened, and one batch at a time is
    in memory. Raises as ``read_split``.
    """
    filesystem, root, _, shards = _split_shards(prep, split)
    offset = 0
    for path, rows in _row_counts(filesystem, shards):
        lo = max(start, offset) - offset  # this shard's rows lo..hi - 1 are wanted
        hi = rows if stop is None else min(stop - offset, rows)
        if lo < hi:
            with filesystem.open_input_file(path) as f:
                shard = pq.ParquetFile(f)
                size = _image_size(filesystem, root, shard.schema_arrow)
                yield from _shard_batches(shard, lo, hi, batch_rows, size)
        offset += rows


def _shard_batches(shard: pq.ParquetFile, lo: int, hi: int, batch_rows: int, size: int):
    """Rows ``lo``..``hi - 1`` of one open shard -> ``read_rows`` batches."""
    seen = 0
    for batch in shard.iter_batches(batch_size=batch_rows):
        a, b = max(lo - seen, 0), min(hi - seen, batch.num_rows)
        seen += batch.num_rows
        if a < b:
            yield _numpy_batch(pa.Table.from_batches([batch.slice(a, b - a)]), size)
        if seen >= hi:
            return


def _numpy_batch(table: pa.Table, size: int) -> dict[str, np.ndarray]:
    """A slice of a shard read with pyarrow -> the numpy columns of ``read_rows``."""
    n = table.num_rows
    out = {
        "file": np.asarray(table.column("file").to_pylist(), dtype=object),
        "image": image_array(table, size),
        "boxes": _tensor_values(table.column("boxes"), np.float32).reshape(n, -1, 4),
        "labels": _tensor_values(table.column("labels"), np.int32).reshape(n, -1),
    }
    out["difficult"] = (
        _tensor_values(table.column("difficult"), np.uint8).reshape(out["labels"].shape)
        if "difficult" in table.column_names
        else np.zeros(out["labels"].shape, np.uint8)
    )
    for name in ("num_objects", "width", "height"):
        if name in table.column_names:
            out[name] = table.column(name).to_numpy().astype(np.int32)
    return out


def _tensor_values(column: pa.ChunkedArray, dtype) -> np.ndarray:
    """A Ray tensor column (an extension array, or the nested lists it reads as without Ray) -> its values,
    flat, as ``dtype``."""
    flat = column.combine_chunks()
    if isinstance(flat, pa.ExtensionArray):
        flat = flat.storage
    while pa.types.is_list(flat.type) or pa.types.is_large_list(flat.type) or pa.types.is_fixed_size_list(flat.type):
        flat = flat.flatten()
    return flat.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _image_size(filesystem: pafs.FileSystem, root: str, schema: pa.Schema) -> int:
    """S of a PREP: the manifest's ``image_size``, else the shard's ``raydet.image_size`` metadata."""
    path = f"{root.rstrip('/')}/manifest.json"
    if filesystem.get_file_info(path).type == pafs.FileType.File:
        with filesystem.open_input_stream(path) as stream:
            return int(json.loads(stream.read().decode("utf-8"))["image_size"])
    meta = schema.metadata or {}
    if b"raydet.image_size" in meta:
        return int(meta[b"raydet.image_size"])
    raise UserError(f"{root}: no manifest.json and no raydet.image_size in the shards: cannot tell the image size")
