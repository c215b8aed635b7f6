"""``raydet prepare``: a VOC-labelled folder or bucket -> Parquet shards + manifest, with Ray Data.

Pipeline (the driver only lists files and does bookkeeping; every file is read in a Ray task):

1. driver: ``voc.discover(DATA)`` lists annotations and images (no file is opened).
2. **parse pass**, Ray Data: ``from_blocks(annotation paths)`` -> ``map_batches(_parse_batch)``: each task reads
   and parses its XML with ``voc.parse_voc`` and sends back the (small) records.
3. driver: the class list (``--classes``, else every name found, sorted), each annotation's image
   (``voc.resolve_image``), its split, its objects sorted largest first and cut to ``max_objects``.
   Parsing before decoding is what lets the labels be final integers when the shards are written, and it
   keeps images with nothing to learn from out of the expensive pass.
4. **decode pass**, Ray Data: ``from_blocks(planned rows)`` -> ``map_batches(_decode_write_batch)``: each task
   reads, decodes and resizes its images (``images.decode_resize``), normalizes the boxes and writes its rows
   as one Parquet shard per split, ``PREP/{train,test}/part-<first row>.parquet``; it returns only a small
   summary per row (loaded or the reason it was skipped, the node it ran on).
5. driver: ``PREP/manifest.json`` (docs/FORMATS.md) and one line: loaded, skipped, where the manifest is.

Why the tasks write their own shards instead of ``Dataset.write_parquet`` (FINDINGS.md measured that the
layout of the work decides whether Ray helps at all here): a failed decode must come back as a *reason* in
the manifest, which a fused ``map_batches -> write_parquet`` cannot return; rows go to two folders in one
pass; and the images never travel through the object store (read, decode, encode and write happen in the same
task, on the node that read the file).

Where the time goes (benchmarks/ingest.py, 12,000 photos at 224 px). With ``image`` stored as Ray's
``(S, S, 3)`` uint8 tensor column, the Parquet write took 54% of the decode tasks' CPU (decode + resize 44%,
reading 2%): Parquet stores a tensor as a nested list of 150,528 values per image with a repetition level per
value, and every list encoding tried (snappy/lz4/zstd/none, dictionary or plain, fixed-size or native tensor
types) cost about as much CPU as the JPEG decode. So ``image`` is now a plain ``binary`` column of the raw
row-major bytes (docs/FORMATS.md, manifest ``image_encoding`` "raw_uint8_hwc"), without dictionary encoding
(an image never repeats), built from one ``np.stack`` of the shard's images (``_binary_images``: one buffer, no
per-row ``bytes``; 0.10-0.16 ms per image to build and write against 0.24-0.53 ms through a list of ``bytes``);
``read_split`` turns it back into the tensor column for every stage. The pixels are not compressed
(``IMAGE_COMPRESSION``); statistics are written only for the scalar columns; a shard is encoded in memory and
reaches the file system in 256 KiB pieces (``_write_in_pieces``).

**Ray Data's resource reservation** (the largest lever): by default Ray Data reserves half the cluster for each
operator (``op_resource_reservation_ratio``), and on a 2-CPU machine that kept this single ``map_batches`` pool
at 1.16-1.24 tasks at a time (a 23.5 s decode window with the tasks' CPU time summing to 27.7 s). Both passes
run inside ``runtime.data_uses_every_cpu()``, which turns the reservation off: 1.92 tasks at a time, a 16.0 s
window for the same work (tests/test_runtime.py checks the concurrency).
**JPEG decode** through libjpeg-turbo at any DCT scale (``images.decode_resize``) instead of Pillow's ``draft``:
867 against ~560 images per second on one core (Pillow, the same photos), a 12.0 s decode window instead of 15.7 s.
**The local Ray** (``runtime.init_ray``) starts without a job runtime_env and without the dashboard: 0.8-0.9 s off
the parse pass's cold start and 1.4-2.2 s off the whole command. **Writes**: the decode tasks' write CPU in
back-to-back runs of the same command: 4.1-4.4 CPU-s (snappy, Parquet writing into the file), 3.5-3.7 (pixels
uncompressed), 2.0-2.1 (each shard encoded in memory and written in 256 KiB pieces).

Now (benchmarks/ingest.py, four runs): end to end 20.1-21.7 s, **2.02-2.24x** the serial baseline (42.2-45.4 s);
steady state 481-539 img/s per core, 56-63% of the single-core decode + resize rate (70-79% in CPU time). Where
the time goes: Ray start-up 2.8-3.0 s; the parse pass 3.3-3.8 s, of which its tasks take 0.9-1.1 s and the rest
is Ray Data's first execution (importing Ray Data in the driver and the workers, and starting its two actors,
_StatsActor and _AutoscalingCoordinatorActor, ~1 CPU-s each, which Ray 2.60 offers no public way to skip) and
the plan; the decode pass 11.4-12.7 s; interpreter, imports and exit 2.3-2.4 s (``ray.shutdown`` ~1.35 s).
Inside the decode tasks: decode + resize 71-79%, Parquet write 18-26%, reading 3-5%. Why 80% per core is out of
reach here: per image the tasks spend ~1.2 ms decoding and ~0.3-0.5 ms reading and writing, so even with both
cores doing nothing but these tasks the ceiling is ~70-75% of a decode-only loop, before the driver, the raylet
and Ray Data's actors take their share. On this VM the write is also where the run-to-run spread comes from:
page cache that grows into memory the host has not backed yet costs the kernel ~2-3 ms per MiB (touching 8 GiB
of fresh memory took 14.1 s), so the same 1.7 GB of shards cost the tasks 2.0 CPU-s in one run and 4.7-5.9 in
another.

Decisions:
- An annotation whose every object was dropped (or that has none) is **skipped** with reason
  "no usable objects": the detector's target is an image's largest object, so such an image has none.
- The split is the dataset's own (devkit ``ImageSets/Main``, ``train/`` + ``test/`` folders) when it names at
  least one test image; annotations it leaves out then fall back to the hash. Otherwise the split is a hash:
  ``sha1(image path)`` as a fraction of 2**160 below ``test_fraction`` means test, so adding images never moves
  old ones.
- Boxes are normalized by the *decoded* image size (``voc.normalize_boxes``); an object whose box falls
  outside the decoded image (an XML whose ``<size>`` disagrees with its image) is dropped with a reason.
- On a multi-node cluster ``--out`` must be storage every node can write (NFS or a bucket URI): the tasks
  write the shards where they run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import posixpath
import time
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raydet import boxes as B
from raydet.config import PrepareConfig
from raydet.images import ImageError, decode_resize
from raydet.voc import Dataset, VocError, VocRecord, discover, normalize_boxes, parse_voc, read_file, resolve_image, unreferenced_images

SPLITS = ("train", "test")
NO_OBJECTS = "no usable objects"
# Rows per decode task = rows per shard: ~16 MiB of pixels (111 rows at 224 px), bounded so tiny images do
# not make thousands of rows per task and huge ones still batch a few. Larger shards amortise the per-file
# and per-task overheads; smaller ones balance 2 cores better at the end of the pass (48 MiB measured the same).
SHARD_BYTES = 16 * 2**20
MIN_SHARD_ROWS, MAX_SHARD_ROWS = 8, 512
PARSE_ROWS = 4096  # annotations per parse task at most: parsing is ~20,000 XML/s, so a task lasts ~0.2 s, well above its overhead
# Statistics (min/max per page) only mean something for the scalar columns; on the pixels they are pure cost.
_STATS_COLUMNS = ["file", "num_objects", "width", "height"]
# docs/FORMATS.md: the ``image`` column is a Parquet binary of the (S, S, 3) uint8 array's row-major bytes;
# the manifest records it as ``image_encoding``. Readers: ``read_split`` (Ray) and ``image_array`` (pyarrow).
IMAGE_ENCODING = "raw_uint8_hwc"
# The pixels are written uncompressed: snappy made them only 6% smaller (142 vs 150.5 KB per 224 px image) and
# cost the decode tasks 0.6-0.8 CPU-s per 12,000 photos (three A/B pairs of `raydet prepare`: 0.5-1.5 s less
# wall time without it); the small columns keep snappy.
IMAGE_COMPRESSION = "none"
OTHER_COMPRESSION = "snappy"
# Shards reach the file system in pieces of at most this many bytes (``_write_in_pieces``).
WRITE_CHUNK = 256 * 1024


@dataclass(frozen=True)
class _Planned:
    """One annotation that survived parsing, ready for the decode pass."""
    index: int  # position among the annotations (shards are named by their first row's index)
    file: str  # image path relative to the dataset root, posix
    split: str
    record: VocRecord  # objects sorted by area, largest first, at most max_objects


# ----------------------------------------------------------------------------------------- Ray tasks

def _parse_batch(batch: dict, *, filesystem: pafs.FileSystem, root: str, classes: tuple[str, ...] | None) -> pa.Table:
    """[Ray task] annotation paths -> one row each: the pickled ``VocRecord`` or the error, the node, and the
    task's ``start``/``end`` (wall clock, seconds since the epoch)."""
    import ray

    start = time.time()
    node = ray.get_runtime_context().get_node_id()
    records, errors = [], []
    for relpath in batch["annotation"]:
        try:
            record = parse_voc(read_file(filesystem, root, relpath), classes, source=relpath)
            records.append(pickle.dumps(record))
            errors.append("")
        except VocError as exc:
            records.append(None)
            errors.append(str(exc))
        except OSError as exc:  # vanished or unreadable between listing and reading
            records.append(None)
            errors.append(f"{relpath}: cannot read: {exc}")
    return pa.table({"annotation": pa.array(list(batch["annotation"]), pa.string()),
                     "record": pa.array(records, pa.binary()), "error": pa.array(errors, pa.string()),
                     "node": pa.array([node] * len(errors), pa.string()),
                     "start": [start] * len(errors), "end": [time.time()] * len(errors)})


def _decode_write_batch(batch: dict, *, filesystem: pafs.FileSystem, root: str, out_fs: pafs.FileSystem,
                        out_root: str, image_size: int, max_objects: int, class_index: dict[str, int]) -> pa.Table:
    """[Ray task] planned rows -> decoded, resized rows written as one Parquet shard per split.

    Returns one summary row per input: ``ok``, ``reason`` (why it was skipped), ``objects`` loaded, ``dropped``
    (reasons of objects dropped here), ``node``; and, on the first row only so that sums add up, the task's
    ``start``/``end`` (wall clock, seconds since the epoch) and the CPU seconds it spent reading, decoding and
    writing (CPU time, unlike wall time, does not grow when other processes share the cores).
    """
    import ray

    start = time.time()
    node = ray.get_runtime_context().get_node_id()
    seconds = {"read": 0.0, "decode": 0.0, "write": 0.0}
    rows = {split: [] for split in SPLITS}
    summary = {"index": [], "file": [], "ok": [], "reason": [], "objects": [], "dropped": []}
    for index, file, split, blob in zip(batch["index"], batch["file"], batch["split"], batch["record"]):
        t = time.process_time()
        try:
            data, reason = read_file(filesystem, root, file), ""
        except OSError as exc:  # vanished or unreadable between listing and reading
            data, reason = None, f"{file}: cannot read: {exc}"
        seconds["read"] += time.process_time() - t
        t = time.process_time()
        row, dropped = None, []
        if data is not None:
            row, reason, dropped = _decode_row(data, file, pickle.loads(blob), image_size, max_objects, class_index)
        seconds["decode"] += time.process_time() - t
        if row is not None:
            rows[split].append(row)
        summary["index"].append(int(index))
        summary["file"].append(str(file))
        summary["ok"].append(row is not None)
        summary["reason"].append(reason)
        summary["objects"].append(0 if row is None else int(row["num_objects"]))
        summary["dropped"].append(dropped)
    t = time.process_time()
    first = int(min(batch["index"]))
    for split, split_rows in rows.items():
        if split_rows:
            write_shard(f"{out_root}/{split}/part-{first:07d}.parquet", split_rows, out_fs)
    seconds["write"] = time.process_time() - t
    n = len(summary["index"])
    once = lambda value: [value] + [0.0] * (n - 1)  # noqa: E731 -- per task, not per row
    return pa.table({**summary, "dropped": pa.array(summary["dropped"], pa.list_(pa.string())),
                     "node": [node] * n, "start": [start] * n, "end": [time.time()] * n,
                     **{f"{phase}_s": once(value) for phase, value in seconds.items()}})


def _decode_row(data: bytes, file: str, record: VocRecord, image_size: int, max_objects: int,
                class_index: dict[str, int]) -> tuple[dict | None, str, list[str]]:
    """One image's bytes -> (row of the shard or None, skip reason, reasons of objects dropped here)."""
    try:
        pixels, width, height = decode_resize(data, image_size)
    except ImageError as exc:
        return None, f"{file}: {exc}", []
    except Exception as exc:  # noqa: BLE001 -- a decoder bug on one hostile file must not stop the run
        return None, f"{file}: unexpected {type(exc).__name__} while decoding: {exc}", []
    norm = normalize_boxes(record, width, height)  # (N, 4) normalized xyxy, largest first
    inside = B.area(norm) > 0
    dropped = [f"object {o.name!r} box {o.box} lies outside the decoded {width}x{height} image"
               for o, ok in zip(record.objects, inside) if not ok]
    if not inside.any():
        return None, f"{file}: {NO_OBJECTS} (every box lies outside the decoded {width}x{height} image)", dropped
    kept = [o for o, ok in zip(record.objects, inside) if ok]
    boxes = np.zeros((max_objects, 4), np.float32)
    labels = np.full((max_objects,), -1, np.int32)
    boxes[: len(kept)] = norm[inside]
    labels[: len(kept)] = [class_index[o.name] for o in kept]
    return {"file": file, "image": pixels, "boxes": boxes, "labels": labels, "num_objects": len(kept),
            "width": width, "height": height}, "", dropped


def write_shard(path: str, rows: list[dict], filesystem: pafs.FileSystem | None = None) -> None:
    """Rows -> one Parquet file with the docs/FORMATS.md schema (``shard_table``), written by ``_write_in_pieces``.

    ``filesystem`` None means ``path`` is local. Raises ValueError naming the file for an image that is not
    (S, S, 3) uint8 with every row the same S.
    """
    table = shard_table(rows, where=path)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **parquet_options(table))
    _write_in_pieces(sink.getvalue(), path, filesystem or pafs.LocalFileSystem())


def shard_table(rows: list[dict], where: str = "shard") -> pa.Table:
    """Rows -> the Arrow table of one shard.

    Each row: ``file`` str, ``image`` (S, S, 3) uint8, ``boxes`` (K, 4) float32 normalized xyxy, ``labels``
    (K,) int32, ``num_objects``/``width``/``height`` int. ``image`` becomes a plain ``binary`` column of the raw
    row-major bytes (``IMAGE_ENCODING``; read it back with ``read_split`` or ``image_array``), ``boxes`` and
    ``labels`` Ray tensor columns. Raises ValueError (naming ``where`` and the file) for an image that is not
    (S, S, 3) uint8 with every row the same S.
    """
    from ray.data.extensions import ArrowTensorArray

    size = rows[0]["image"].shape[0] if rows else 0
    bad = [r for r in rows if r["image"].shape != (size, size, 3) or r["image"].dtype != np.uint8]
    if bad:  # raw bytes carry no shape: a wrong one would be read back as garbage, so refuse it here
        raise ValueError(f"write_shard {where}: image of {bad[0]['file']!r} is {bad[0]['image'].shape} "
                         f"{bad[0]['image'].dtype}, expected ({size}, {size}, 3) uint8 like the first row")
    table = pa.table({
        "file": pa.array([r["file"] for r in rows], pa.string()),
        "image": _binary_images(np.stack([r["image"] for r in rows])),
        "boxes": ArrowTensorArray.from_numpy(np.stack([r["boxes"] for r in rows])),
        "labels": ArrowTensorArray.from_numpy(np.stack([r["labels"] for r in rows])),
        "num_objects": pa.array([r["num_objects"] for r in rows], pa.int32()),
        "width": pa.array([r["width"] for r in rows], pa.int32()),
        "height": pa.array([r["height"] for r in rows], pa.int32()),
    })
    # S travels with the shard too, so ``image_array`` needs no manifest
    return table.replace_schema_metadata({**(table.schema.metadata or {}), b"raydet.image_encoding": IMAGE_ENCODING.encode(),
                                          b"raydet.image_size": str(size).encode()})


def parquet_options(table: pa.Table) -> dict:
    """``pq.write_table`` options for a shard: codec per column (none for the pixels, ``IMAGE_COMPRESSION``;
    snappy for the rest), statistics for the scalar columns only, dictionary encoding for all but the pixels."""
    return {"compression": {c: IMAGE_COMPRESSION if c == "image" else OTHER_COMPRESSION for c in table.column_names},
            "write_statistics": _STATS_COLUMNS,
            "use_dictionary": [c for c in table.column_names if c != "image"]}


def _write_in_pieces(data: pa.Buffer, path: str, filesystem: pafs.FileSystem) -> None:
    """``data`` -> a new file ``path``, in writes of at most ``WRITE_CHUNK`` bytes (zero-copy slices).

    Why not let Parquet write into the file: it hands its sink whole column chunks (16 MiB of pixels per shard),
    and on the VM this project is measured on such multi-MiB writes into a new file cost the kernel 0.03-0.31 ms
    per 224 px image, varying run to run with the page cache's state, against 0.035-0.045 ms in pieces
    (benchmarks/write.py, six runs: writing into the file used 0.86-2.69x the CPU, median ~1.2x). In back-to-back
    `raydet prepare` runs the decode tasks' write time fell from 3.5-3.7 to 2.0-2.1 CPU-s per 12,000 photos.
    Elsewhere the extra calls cost next to nothing (a few per MiB), and a buffered stream (S3, GCS) gathers the
    pieces again.
    """
    with filesystem.open_output_stream(path) as stream:
        for start in range(0, data.size, WRITE_CHUNK):
            stream.write(data.slice(start, min(WRITE_CHUNK, data.size - start)))


def _binary_images(images: np.ndarray) -> pa.Array:
    """(N, S, S, 3) uint8 -> a ``binary`` array, one row per image, made from the array's own buffer (no
    per-row bytes objects, no second copy: measured 0.13-0.16 ms per 224 px image to build and write a
    shard instead of 0.24-0.53 ms via a list of ``bytes``). ``large_binary`` when a shard passes 2 GiB."""
    n = len(images)
    row = int(np.prod(images.shape[1:]))
    large = n * row >= 2**31
    offsets = np.arange(0, (n + 1) * row, row, dtype=np.int64 if large else np.int32)
    data = np.ascontiguousarray(images).reshape(-1)
    return pa.Array.from_buffers(pa.large_binary() if large else pa.binary(), n,
                                 [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def image_array(table: pa.Table, image_size: int | None = None) -> np.ndarray:
    """A shard's ``image`` column read with plain pyarrow -> (N, S, S, 3) uint8, without Ray.

    Accepts the ``binary`` raw-bytes column (``IMAGE_ENCODING``) and, for older PREP folders, a Ray tensor
    column (an extension array, or the flat list it reads as when Ray's type is not registered). S is
    ``image_size`` when given, else the shard's ``raydet.image_size`` metadata, else sqrt(bytes / 3) (images
    are square). Raises ValueError for a row whose size does not match.
    """
    column = table.column("image")
    n = len(column)
    meta = table.schema.metadata or {}
    if image_size is None and b"raydet.image_size" in meta:
        image_size = int(meta[b"raydet.image_size"])
    kind = column.type.storage_type if isinstance(column.type, pa.ExtensionType) else column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        if image_size is None:
            image_size = math.isqrt(len(column[0].as_py()) // 3) if n else 0
        row = image_size * image_size * 3
        chunks = []
        for chunk in column.chunks:
            if chunk.null_count:
                raise ValueError(f"image column has {chunk.null_count} null row(s)")
            offsets = np.frombuffer(chunk.buffers()[1], np.int64 if pa.types.is_large_binary(kind) else np.int32,
                                    len(chunk) + 1, chunk.offset * (8 if pa.types.is_large_binary(kind) else 4))
            if (np.diff(offsets) != row).any():
                bad = int(np.flatnonzero(np.diff(offsets) != row)[0])
                raise ValueError(f"image row {bad} has {int(np.diff(offsets)[bad])} bytes, expected {row} "
                                 f"({image_size} x {image_size} x 3 uint8)")
            data = np.frombuffer(chunk.buffers()[2], np.uint8) if len(chunk) else np.empty(0, np.uint8)
            chunks.append(data[offsets[0]:offsets[-1]])
        flat = np.concatenate(chunks) if chunks else np.empty(0, np.uint8)
        return flat.reshape(n, image_size, image_size, 3)
    # a tensor column: flatten whatever nesting pyarrow gives back and reshape by hand
    flat = column.combine_chunks()
    if isinstance(flat, pa.ExtensionArray):
        flat = flat.storage
    while pa.types.is_list(flat.type) or pa.types.is_large_list(flat.type) or pa.types.is_fixed_size_list(flat.type):
        flat = flat.flatten()
    values = flat.to_numpy(zero_copy_only=False).astype(np.uint8, copy=False)
    if image_size is None:
        image_size = math.isqrt(values.size // max(n, 1) // 3)
    return values.reshape(n, image_size, image_size, 3)


def read_split(prep: str | os.PathLike, split: str, **read_kwargs):
    """``PREP/<split>`` -> a ``ray.data.Dataset`` whose ``image`` is an (N, S, S, 3) uint8 tensor column.

    The one reader every stage uses. Shards written by ``write_shard`` hold ``image`` as raw bytes, which
    ``ray.data.read_parquet(tensor_column_schema=...)`` turns back into the tensor column (S from
    ``PREP/manifest.json``, else the shard's metadata); shards whose ``image`` already is a tensor column (older
    PREP folders, hand-made fixtures) are read as they are. ``read_kwargs`` go to ``read_parquet`` unchanged
    (``override_num_blocks``, ``columns``, ...). ``prep`` may be a path or a URI. Raises ValueError naming the
    folder when ``split`` is not train/test or the folder holds no Parquet file.

    Known limit (Ray 2.60): an operation Ray answers without reading ``image`` (``.count()`` on the lazy
    dataset) fails in Ray's tensor cast with ``KeyError: Field "image"``; ``materialize()`` first, or take
    row counts from ``manifest.json``'s ``splits``.
    """
    import ray

    if split not in SPLITS:
        raise ValueError(f"split {split!r}: must be one of {', '.join(SPLITS)}")
    prep = str(prep)
    filesystem, root = pafs.FileSystem.from_uri(prep) if "://" in prep else (
        pafs.LocalFileSystem(), posixpath.abspath(prep.replace("\\", "/")))
    folder = f"{root.rstrip('/')}/{split}"
    try:
        shards = sorted(i.path for i in filesystem.get_file_info(pafs.FileSelector(folder))
                        if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    except FileNotFoundError:
        shards = []
    if not shards:
        raise ValueError(f"{folder}: no .parquet shards (is {prep} a folder written by raydet prepare?)")
    schema = pq.read_schema(shards[0], filesystem=filesystem)
    target = prep.rstrip("/") + "/" + split if "://" in prep else folder
    if "image" in schema.names and (pa.types.is_binary(schema.field("image").type)
                                    or pa.types.is_large_binary(schema.field("image").type)):
        size = _image_size(filesystem, root, schema)
        read_kwargs = {**read_kwargs, "tensor_column_schema": {"image": (np.uint8, (size, size, 3))}}
        columns = read_kwargs.get("columns")
        if columns is not None and "image" not in columns:  # Ray would cast a column it did not read
            del read_kwargs["tensor_column_schema"]
    return ray.data.read_parquet(target, filesystem=filesystem, **read_kwargs)


def _image_size(filesystem: pafs.FileSystem, root: str, schema: pa.Schema) -> int:
    """S of a PREP: the manifest's ``image_size``, else the shard's ``raydet.image_size`` metadata."""
    path = f"{root.rstrip('/')}/manifest.json"
    if filesystem.get_file_info(path).type == pafs.FileType.File:
        with filesystem.open_input_stream(path) as stream:
            return int(json.loads(stream.read().decode("utf-8"))["image_size"])
    meta = schema.metadata or {}
    if b"raydet.image_size" in meta:
        return int(meta[b"raydet.image_size"])
    raise ValueError(f"{root}: no manifest.json and no raydet.image_size in the shards: cannot tell the image size")


# ------------------------------------------------------------------------------------------- driver

def shard_rows(image_size: int) -> int:
    """Rows per decode task and shard for ``image_size`` px images (about ``SHARD_BYTES`` of pixels)."""
    return int(np.clip(SHARD_BYTES // (image_size * image_size * 3), MIN_SHARD_ROWS, MAX_SHARD_ROWS))


def hash_split(file: str, test_fraction: float) -> str:
    """"test" when sha1(``file``), read as a fraction of 2**160, is below ``test_fraction``; else "train".
    Depends on nothing but the path, so adding or removing other images never moves this one."""
    fraction = int.from_bytes(hashlib.sha1(file.encode("utf-8")).digest(), "big") / 2**160
    return "test" if fraction < test_fraction else "train"


def _open_out(out: str) -> tuple[pafs.FileSystem, str]:
    """``--out`` (path or URI) -> (filesystem, path); refuses a file, or a folder that looks like someone
    else's data (train/ or test/ without our manifest), and clears an earlier PREP's shards."""
    if "://" in out:
        filesystem, path = pafs.FileSystem.from_uri(out)
    else:
        filesystem, path = pafs.LocalFileSystem(), posixpath.abspath(out.replace("\\", "/"))
    path = path.rstrip("/") or "/"
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise ValueError(f"--out {out} is a file, not a folder")
    if info.type == pafs.FileType.Directory:
        ours = filesystem.get_file_info(f"{path}/manifest.json").type == pafs.FileType.File
        present = [s for s in SPLITS if filesystem.get_file_info(f"{path}/{s}").type != pafs.FileType.NotFound]
        if present and not ours:
            raise ValueError(f"--out {out} already has {'/ and '.join(present)}/ but no manifest.json: "
                             "refusing to overwrite a folder raydet did not write")
        for split in present:
            filesystem.delete_dir(f"{path}/{split}")
        if ours:
            filesystem.delete_file(f"{path}/manifest.json")
    for split in SPLITS:
        filesystem.create_dir(f"{path}/{split}", recursive=True)
    return filesystem, path


def _split_table(table: pa.Table, blocks: int) -> list[pa.Table]:
    """``table`` cut into ``blocks`` consecutive slices of (nearly) equal length: Ray Data's blocks, built in
    one pass (``from_items`` with a dict per row cost the driver ~0.3 s for 12,000 rows)."""
    bounds = np.linspace(0, len(table), blocks + 1).round().astype(int)
    return [table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])]


def _parse_all(dataset: Dataset, classes: tuple[str, ...] | None, cpus: int) -> list[dict]:
    """Ray Data parse pass: every annotation -> {annotation, record (pickled) or None, error, node, start, end}."""
    import ray

    names = pa.table({"annotation": pa.array([ref.annotation for ref in dataset.annotations], pa.string())})
    blocks = max(min(len(names), 2 * cpus), math.ceil(len(names) / PARSE_ROWS))
    ds = ray.data.from_blocks(_split_table(names, blocks))
    ds = ds.map_batches(_parse_batch, batch_size=None, batch_format="numpy",
                        fn_kwargs={"filesystem": dataset.filesystem, "root": dataset.root, "classes": classes})
    return ds.take_all()


def _plan(dataset: Dataset, parsed: list[dict], cfg: PrepareConfig) -> tuple[list[_Planned], list[str], str, dict]:
    """Driver bookkeeping after the parse pass: -> (rows to decode, classes, split source, accounts) where
    accounts holds ``skipped``, ``objects_skipped`` and ``resolved`` (every image an annotation points to)."""
    refs = {ref.annotation: ref for ref in dataset.annotations}
    skipped: list[dict] = []
    objects_skipped: list[dict] = []
    resolved: set[str] = set()
    kept: list[tuple[int, str, str | None, VocRecord]] = []
    used_by: dict[str, str] = {}
    for index, row in enumerate(sorted(parsed, key=lambda r: r["annotation"])):
        name = row["annotation"]
        if row["record"] is None:
            skipped.append({"file": name, "reason": row["error"]})
            continue
        record: VocRecord = pickle.loads(row["record"])
        objects_skipped += [{"file": name, "reason": reason} for reason in record.dropped]
        try:
            image = resolve_image(dataset, refs[name], record.filename)
        except VocError as exc:
            skipped.append({"file": name, "reason": str(exc)})
            continue
        resolved.add(image)
        if image in used_by:
            skipped.append({"file": name, "reason": f"{name}: its image {image} is already labelled by {used_by[image]}"})
            continue
        used_by[image] = name
        if not record.objects:
            why = f"{len(record.dropped)} object(s) dropped" if record.dropped else "the annotation has no <object>"
            skipped.append({"file": name, "reason": f"{name}: {NO_OBJECTS} ({why})"})
            continue
        kept.append((index, image, refs[name].split, _largest_first(record, cfg.max_objects, name, objects_skipped)))
    classes = list(cfg.classes) if cfg.classes else sorted({o.name for *_, rec in kept for o in rec.objects})
    own = any(ref.split == "test" for ref in dataset.annotations)
    planned = [_Planned(index, image, split if own and split else hash_split(image, cfg.test_fraction), record)
               for index, image, split, record in kept]
    accounts = {"skipped": skipped, "objects_skipped": objects_skipped, "resolved": resolved}
    return planned, classes, "dataset" if own else "hash", accounts


def _largest_first(record: VocRecord, max_objects: int, name: str, objects_skipped: list[dict]) -> VocRecord:
    """The record with its objects sorted by area, largest first, cut to ``max_objects`` (the rest reported)."""
    if len(record.objects) == 1:  # most photos: nothing to sort or cut
        return record
    areas = B.area(np.array([o.box for o in record.objects], dtype=np.float64))
    order = np.argsort(-areas, kind="stable")
    for i in order[max_objects:]:
        o = record.objects[i]
        objects_skipped.append({"file": name, "reason": f"object {o.name!r} {o.box}: beyond --max-objects "
                                                        f"{max_objects} (the {max_objects} largest are kept)"})
    return replace(record, objects=tuple(record.objects[i] for i in order[:max_objects]))


def _decode_all(dataset: Dataset, planned: list[_Planned], classes: list[str], out_fs: pafs.FileSystem,
                out_root: str, cfg: PrepareConfig, cpus: int) -> list[dict]:
    """Ray Data decode pass: planned rows -> shards on disk, one summary row back per input row."""
    import ray

    if not planned:
        return []
    items = pa.table({"index": pa.array([p.index for p in planned], pa.int64()),
                      "file": pa.array([p.file for p in planned], pa.string()),
                      "split": pa.array([p.split for p in planned], pa.string()),
                      "record": pa.array([pickle.dumps(p.record) for p in planned], pa.binary())})
    rows = shard_rows(cfg.image_size)
    # One block per task (batch_size=None) so a task's rows are one shard; at least 2 per CPU so every node
    # of a cluster gets work even from a small dataset.
    blocks = max(min(len(items), 2 * cpus), math.ceil(len(items) / rows))
    ds = ray.data.from_blocks(_split_table(items, blocks))
    ds = ds.map_batches(_decode_write_batch, batch_size=None, batch_format="numpy", fn_kwargs={
        "filesystem": dataset.filesystem, "root": dataset.root, "out_fs": out_fs, "out_root": out_root,
        "image_size": cfg.image_size, "max_objects": cfg.max_objects,
        "class_index": {name: i for i, name in enumerate(classes)}})
    return ds.take_all()


def prepare(cfg: PrepareConfig) -> dict:
    """Run the ingestion (module docstring) and return the manifest (docs/FORMATS.md).

    Besides the documented keys, ``stats`` holds where the time went (seconds per phase), the Ray node ids the
    parse and decode tasks ran on, and the decode pass's window (first task start to last task end).
    Raises FileNotFoundError/ValueError naming the path for a missing dataset, a folder without annotations,
    an unusable ``--out``, or a dataset where nothing could be loaded (the manifest is still written then).
    """
    from raydet.runtime import data_uses_every_cpu, init_ray

    t0 = time.perf_counter()
    dataset = discover(cfg.data)
    out_fs, out_root = _open_out(cfg.out)
    t_discover = time.perf_counter()
    import ray

    started = not ray.is_initialized()
    init_ray(cfg.address)
    t_ray = time.perf_counter()
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < 1:  # Ray Data's tasks need a CPU each; without one they would wait forever
        raise ValueError(f"the Ray cluster at {cfg.address or 'RAY_ADDRESS'} has no CPU for the prepare tasks")
    with data_uses_every_cpu():
        parsed = _parse_all(dataset, cfg.classes, cpus)
        planned, classes, split_source, accounts = _plan(dataset, parsed, cfg)
        t_parse = time.perf_counter()
        summaries = _decode_all(dataset, planned, classes, out_fs, out_root, cfg, cpus)
        t_decode = time.perf_counter()

    split_of = {p.index: p.split for p in planned}
    skipped, objects_skipped = accounts["skipped"], accounts["objects_skipped"]
    loaded = Counter()
    objects_loaded = 0
    for s in sorted(summaries, key=lambda s: s["index"]):
        objects_skipped += [{"file": s["file"], "reason": reason} for reason in s["dropped"]]
        if s["ok"]:
            loaded[split_of[s["index"]]] += 1
            objects_loaded += int(s["objects"])
        else:
            skipped.append({"file": s["file"], "reason": s["reason"]})
    manifest = {
        "classes": classes, "image_size": cfg.image_size, "image_encoding": IMAGE_ENCODING,
        "max_objects": cfg.max_objects,
        "splits": {split: loaded[split] for split in SPLITS}, "split_source": split_source,
        "annotations_found": len(dataset.annotations), "images_loaded": sum(loaded.values()),
        "skipped": skipped, "objects_loaded": objects_loaded, "objects_skipped": objects_skipped,
        "unlabeled_images": _unlabeled(dataset, accounts["resolved"]),
        "source": cfg.data, "layout": dataset.layout,
        "stats": _stats(parsed, summaries, cpus, started, [t0, t_discover, t_ray, t_parse, t_decode]),
    }
    assert manifest["images_loaded"] + len(skipped) == manifest["annotations_found"], "every annotation accounted for"
    path = f"{out_root}/manifest.json"
    with out_fs.open_output_stream(path) as stream:
        stream.write((json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    shown = path if "://" not in cfg.out else cfg.out.rstrip("/") + "/manifest.json"
    if not manifest["images_loaded"]:
        first = "; ".join(s["reason"] for s in skipped[:3])
        raise ValueError(f"nothing loadable in {cfg.data}: all {len(skipped)} annotations skipped "
                         f"(e.g. {first}); see {shown}")
    print(f"raydet prepare: loaded {manifest['images_loaded']} images (train {loaded['train']}, "
          f"test {loaded['test']}), skipped {len(skipped)}; manifest: {shown}", flush=True)
    return manifest


def _unlabeled(dataset: Dataset, resolved: set[str]) -> list[str]:
    """Images no annotation points to: neither a parsed ``<filename>`` (``resolved``) nor, for XML that could
    not be parsed, an annotation of the same stem beside it (``Dataset.unlabeled_images``)."""
    return sorted(set(unreferenced_images(dataset, resolved)) & set(dataset.unlabeled_images))


def _window(rows: list[dict]) -> float:
    """Seconds from the first task's ``start`` to the last task's ``end`` (0 without rows)."""
    return (max(r["end"] for r in rows) - min(r["start"] for r in rows)) if rows else 0.0


def _stats(parsed: list[dict], summaries: list[dict], cpus: int, started: bool, marks: list[float]) -> dict:
    """Where the time went: seconds per phase, nodes used, and the decode pass's own window."""
    t0, t_discover, t_ray, t_parse, t_decode = marks
    return {
        "cpus": cpus,
        "seconds": {"discover": round(t_discover - t0, 3), "ray_start": round(t_ray - t_discover, 3) if started else 0.0,
                    "parse_pass": round(t_parse - t_ray, 3), "decode_pass": round(t_decode - t_parse, 3),
                    "parse_window": round(_window(parsed), 3), "decode_window": round(_window(summaries), 3),
                    "total": round(t_decode - t0, 3)},
        # CPU seconds inside the decode tasks, summed over tasks: where the decode pass's work goes
        "task_cpu_seconds": {phase: round(sum(s[f"{phase}_s"] for s in summaries), 3) for phase in ("read", "decode", "write")},
        "nodes": {"parse": sorted({r["node"] for r in parsed}), "decode": sorted({s["node"] for s in summaries})},
        "decoded": len(summaries),
    }
