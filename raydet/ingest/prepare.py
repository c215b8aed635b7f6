"""``raydet prepare``: a VOC-labelled folder or bucket -> PREP (Parquet shards + manifest), with Ray Data.

In: ``PrepareConfig`` (the dataset path or URI, ``--out``, image size, classes, split fraction, ``max_objects``,
the byte limits per XML and per image).
Out: ``PREP/{train,test}/part-<first row>.parquet`` in the shard format of ``raydet.ingest.shards`` and
``PREP/manifest.json`` (both in docs/FORMATS.md), swapped in whole at the end; ``prepare`` returns the manifest.

Pipeline (the driver only lists files and does bookkeeping; every file is read in a Ray task):

1. driver: ``discovery.discover(DATA)`` lists annotations and images (no file is opened).
2. **parse pass**, Ray Data: ``from_blocks(annotation paths)`` -> ``map_batches(_parse_batch)``: each task reads
   and parses its XML with ``voc.parse_voc`` and sends back the (small) records.
3. driver: the class list (``--classes``, else every name found, sorted), each annotation's image
   (``discovery.resolve_image``), its split, its objects sorted largest first (a train image's cut to
   ``max_objects``), and each split's K, the largest object count left in any of its images. Parsing before
   decoding is what lets the labels be final integers and K be the same in every shard of a split, and it keeps
   annotations that cannot be used out of the expensive pass.
4. **decode pass**, Ray Data: ``from_blocks(planned rows)`` -> ``map_batches(_decode_write_batch)``: each task
   reads, decodes and resizes its images (``images.decode_resize``), normalizes the boxes and writes its rows
   as one shard per split (``shards.write_shard``); it returns only a small summary per row (loaded or the
   reason it was skipped, the node it ran on).
5. driver: ``PREP/manifest.json`` and one line: loaded, negatives, skipped, where the manifest is.

Decisions (docs/INGEST.md has the measurements behind them and where the time goes):
- The tasks write their own shards instead of ``Dataset.write_parquet``: a failed decode must come back as a
  *reason* in the manifest, which a fused ``map_batches -> write_parquet`` cannot return; rows go to two folders
  in one pass; and the images never travel through the object store (read, decode, encode and write happen in
  the same task, on the node that read the file).
- Both passes run inside ``runtime.data_uses_every_cpu()``: Ray Data's default resource reservation would keep
  the single ``map_batches`` pool well below one task per CPU.
- Every object is kept. A train image keeps at most ``max_objects`` (the largest ones; the rest are counted in
  ``objects_skipped``): the cap bounds training targets only. A test image keeps all of its objects, so AP is
  measured against the whole ground truth. Every row of a split is padded to that split's K.
- An annotation without objects (no ``<object>``, or only classes outside ``--classes``) is kept as a
  **negative** image (``num_objects`` 0): it measures false positives. One whose every object was dropped as
  invalid (bad boxes, no name) is **skipped** with the reasons: an object is there, just not usable, so the
  image is no negative. So is one whose every box lies outside the decoded image.
- The split is the dataset's own (devkit ``ImageSets/Main``, ``train/`` + ``test/`` folders) when it names at
  least one test image; annotations it leaves out then fall back to the hash. Otherwise the split is a hash:
  ``sha1(image path)`` as a fraction of 2**160 below ``test_fraction`` means test, so adding images never moves
  old ones.
- Boxes are normalized by the *decoded* image size (``voc.normalize_boxes``). Where ``<size>`` disagrees with
  it, ``voc.fit_to_image`` decides: the same frame at another scale (resized after labelling) has its boxes
  rescaled (listed in the manifest's ``rescaled``); anything else (width and height swapped included) is skipped
  naming both sizes. Without ``<size>``, an object whose box falls outside the decoded image is dropped.
- EXIF orientation is not applied (``raydet.ingest.images``); images that carry one are listed in
  ``exif_rotated_images`` so the user knows they are used as stored.
- Hostile input: XML over ``max_xml_bytes`` and images over ``max_image_bytes`` are skipped unread, images
  whose header gives over ``max_pixels`` pixels undecoded; each decode task declares to Ray the memory its worst
  decode may take (``decode_task_memory``), so a node never runs more of them than its memory holds; symlinks
  leaving the dataset root are never followed (``voc`` module docstring; listed in ``refused_links``); Pillow
  opens only the formats raydet reads (``images.ACCEPTED_FORMATS``, so EPS never reaches Ghostscript).
- **Atomic output**: the tasks write into ``OUT/.raydet-staging-<id>/``; at the end ``_commit`` moves the old
  PREP aside (manifest first), the new one in (manifest last), then deletes the old one. A run that fails or is
  killed before that leaves the previous PREP intact; the next run removes what it left. Moves are renames on a
  local disk and copy + delete on an object store (``pyarrow.fs``).
- On a multi-node cluster ``--out`` must be storage every node can write (NFS or a bucket URI): the tasks
  write the shards where they run.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray

from raydet.cluster.nodes import check_visible
from raydet.cluster.progress import Progress
from raydet.cluster.runtime import data_uses_every_cpu, init_ray
from raydet.config import PrepareConfig
from raydet.detector import boxes as B
from raydet.errors import UserError
from raydet.ingest.classnames import case_collisions
from raydet.ingest.discovery import Dataset, discover, read_file, resolve_image, unreferenced_images
from raydet.ingest.images import DECODE_BYTES_PER_PIXEL, ImageError, decode_resize, exif_orientation
from raydet.ingest.prep import MANIFEST, Out, commit, discard, open_out
from raydet.ingest.shards import IMAGE_ENCODING, SPLITS, write_shard
from raydet.ingest.voc import VocError, VocRecord, fit_to_image, normalize_boxes, parse_voc

NO_OBJECTS = "no usable objects"
# Rows per decode task = rows per shard: about this many bytes of pixels, bounded so tiny images do not make
# thousands of rows per task and huge ones still batch a few (docs/INGEST.md, task and block sizes).
SHARD_BYTES = 16 * 2**20
MIN_SHARD_ROWS, MAX_SHARD_ROWS = 8, 512
PARSE_ROWS = 4096  # annotations per parse task at most: a task lasts well above its overhead (docs/INGEST.md)
TASK_BASE_MEMORY = 256 * 2**20  # a decode task's own Python, pyarrow and Parquet writer, beside the images


@dataclass(frozen=True)
class _Planned:
    """One annotation that survived parsing, ready for the decode pass (a negative when it has no objects)."""

    index: int  # position among the annotations (shards are named by their first row's index)
    file: str  # image path relative to the dataset root, posix
    split: str
    record: VocRecord  # objects sorted by area, largest first (train: at most max_objects); none for a negative


# ----------------------------------------------------------------------------------------- Ray tasks


def _parse_batch(
    batch: dict, *, filesystem: pafs.FileSystem, root: str, classes: tuple[str, ...] | None, max_bytes: int
) -> pa.Table:
    """[Ray task] annotation paths -> one row each: the pickled ``VocRecord`` or the error, the node, and the
    task's ``start``/``end`` (wall clock, seconds since the epoch)."""

    start = time.time()
    node = ray.get_runtime_context().get_node_id()
    records, errors = [], []
    for relpath in batch["annotation"]:
        try:
            data = read_file(filesystem, root, relpath, max_bytes, "--max-xml-bytes")
            record = parse_voc(data, classes, source=relpath)
            records.append(pickle.dumps(record))
            errors.append("")
        except VocError as exc:
            records.append(None)
            errors.append(str(exc))
        except OSError as exc:  # vanished or unreadable between listing and reading
            records.append(None)
            errors.append(f"{relpath}: cannot read: {exc}")
    return pa.table(
        {
            "annotation": pa.array(list(batch["annotation"]), pa.string()),
            "record": pa.array(records, pa.binary()),
            "error": pa.array(errors, pa.string()),
            "node": pa.array([node] * len(errors), pa.string()),
            "start": [start] * len(errors),
            "end": [time.time()] * len(errors),
        }
    )


def _decode_write_batch(
    batch: dict,
    *,
    filesystem: pafs.FileSystem,
    root: str,
    out_fs: pafs.FileSystem,
    out_root: str,
    image_size: int,
    objects_per_row: dict[str, int],
    class_index: dict[str, int],
    max_bytes: int,
    max_pixels: int,
) -> pa.Table:
    """[Ray task] planned rows -> decoded, resized rows written as one Parquet shard per split, objects padded to
    their split's K (``objects_per_row[split]``); images over ``max_bytes`` are skipped unread, images whose header
    gives more than ``max_pixels`` pixels undecoded.

    Returns one summary row per input: ``ok``, ``reason`` (why it was skipped), ``objects`` loaded, ``dropped``
    (reasons of objects dropped here), ``note`` (how ``<size>`` was reconciled, '' mostly), ``orientation`` (the
    EXIF tag, 1 when none), ``node``; and, on the first row only so that sums add up, the task's
    ``start``/``end`` (wall clock, seconds since the epoch) and the CPU seconds it spent reading, decoding and
    writing (CPU time, unlike wall time, does not grow when other processes share the cores).
    """

    start = time.time()
    node = ray.get_runtime_context().get_node_id()
    seconds = {"read": 0.0, "decode": 0.0, "write": 0.0}
    rows = {split: [] for split in SPLITS}
    summary = {
        "index": [],
        "file": [],
        "ok": [],
        "reason": [],
        "objects": [],
        "dropped": [],
        "note": [],
        "orientation": [],
    }
    for index, file, split, blob in zip(batch["index"], batch["file"], batch["split"], batch["record"], strict=True):
        t = time.process_time()
        data, result = _read_image(filesystem, root, file, max_bytes)
        seconds["read"] += time.process_time() - t
        t = time.process_time()
        if data is not None:
            result = _decode_row(
                data, file, pickle.loads(blob), image_size, objects_per_row[split], class_index, max_pixels
            )
        seconds["decode"] += time.process_time() - t
        row = result.row
        if row is not None:
            rows[split].append(row)
        summary["index"].append(int(index))
        summary["file"].append(str(file))
        summary["ok"].append(row is not None)
        summary["reason"].append(result.reason)
        summary["objects"].append(0 if row is None else int(row["num_objects"]))
        summary["dropped"].append(result.dropped)
        summary["note"].append(result.note)
        summary["orientation"].append(result.orientation)
    t = time.process_time()
    first = int(min(batch["index"]))
    for split, split_rows in rows.items():
        if split_rows:
            write_shard(f"{out_root}/{split}/part-{first:07d}.parquet", split_rows, out_fs)
    seconds["write"] = time.process_time() - t
    n = len(summary["index"])
    once = lambda value: [value] + [0.0] * (n - 1)  # noqa: E731 -- per task, not per row
    return pa.table(
        {
            **summary,
            "dropped": pa.array(summary["dropped"], pa.list_(pa.string())),
            "node": [node] * n,
            "start": [start] * n,
            "end": [time.time()] * n,
            **{f"{phase}_s": once(value) for phase, value in seconds.items()},
        }
    )


def _read_image(
    filesystem: pafs.FileSystem, root: str, file: str, max_bytes: int
) -> tuple[bytes | None, _Decoded | None]:
    """-> (the image's bytes, None), or (None, the skip naming why it cannot be read)."""
    try:
        return read_file(filesystem, root, file, max_bytes, "--max-image-bytes"), None
    except VocError as exc:  # a symlink out of the dataset, a file over the limit
        return None, _Decoded(None, str(exc))
    except OSError as exc:  # vanished or unreadable between listing and reading
        return None, _Decoded(None, f"{file}: cannot read: {exc}")


@dataclass(frozen=True)
class _Decoded:
    """What the decode pass made of one planned row."""

    row: dict | None  # the shard row, None when skipped
    reason: str = ""  # why it was skipped
    dropped: list[str] = field(default_factory=list)  # reasons of objects dropped here
    note: str = ""  # how <size> was reconciled with the decoded size ('' when they agree)
    orientation: int = 1  # the image's EXIF Orientation tag (not applied: raydet.ingest.images)


def _decode_row(
    data: bytes,
    file: str,
    record: VocRecord,
    image_size: int,
    objects_per_row: int,
    class_index: dict[str, int],
    max_pixels: int,
) -> _Decoded:
    """One image's bytes -> its ``_Decoded``: the row, or the reason it is skipped (not decodable, a ``<size>``
    that is no rescaling of the decoded size: ``voc.fit_to_image``, every box outside the decoded image)."""
    try:
        pixels, width, height = decode_resize(data, image_size, max_pixels=max_pixels)
    except ImageError as exc:
        return _Decoded(None, f"{file}: {exc}")
    except Exception as exc:  # a decoder bug on one hostile file must not stop the run
        return _Decoded(None, f"{file}: unexpected {type(exc).__name__} while decoding: {exc}")
    fitted, note = fit_to_image(record, width, height)  # boxes in the decoded frame, or why they cannot be
    if fitted is None:
        return _Decoded(None, f"{file}: {note}")
    row, reason, dropped = _pad_row(file, pixels, fitted, width, height, objects_per_row, class_index)
    return _Decoded(row, reason, dropped, note if row is not None else "", exif_orientation(data))


def _pad_row(
    file: str,
    pixels: np.ndarray,
    record: VocRecord,
    width: int,
    height: int,
    objects_per_row: int,
    class_index: dict[str, int],
) -> tuple[dict | None, str, list[str]]:
    """A decoded image and its record (boxes in the decoded ``width`` x ``height`` frame) -> (row of the shard or
    None, skip reason, reasons of objects dropped here).

    The row (``raydet.ingest.shards`` format): ``boxes`` (K, 4) float32 normalized xyxy by the decoded size, largest
    first, zero-padded; ``labels`` (K,) int32 -1-padded; ``difficult`` (K,) uint8 zero-padded; K =
    ``objects_per_row``. A record without objects gives a negative row (``num_objects`` 0); one whose every box
    lies outside the decoded image (possible only without ``<size>``) gives None.
    """
    norm = normalize_boxes(record, width, height)  # (N, 4) normalized xyxy, largest first
    inside = B.area(norm) > 0
    dropped = [
        f"object {o.name!r} box {o.box} lies outside the decoded {width}x{height} image"
        for o, ok in zip(record.objects, inside, strict=True)
        if not ok
    ]
    if record.objects and not inside.any():
        return None, f"{file}: {NO_OBJECTS} (every box lies outside the decoded {width}x{height} image)", dropped
    kept = [o for o, ok in zip(record.objects, inside, strict=True) if ok]
    boxes = np.zeros((objects_per_row, 4), np.float32)
    labels = np.full((objects_per_row,), -1, np.int32)
    difficult = np.zeros((objects_per_row,), np.uint8)
    boxes[: len(kept)] = norm[inside]
    labels[: len(kept)] = [class_index[o.name] for o in kept]
    difficult[: len(kept)] = [o.difficult for o in kept]
    return (
        {
            "file": file,
            "image": pixels,
            "boxes": boxes,
            "labels": labels,
            "difficult": difficult,
            "num_objects": len(kept),
            "width": width,
            "height": height,
        },
        "",
        dropped,
    )


# ------------------------------------------------------------------------------------------- driver


def shard_rows(image_size: int) -> int:
    """Rows per decode task and shard for ``image_size`` px images (about ``SHARD_BYTES`` of pixels)."""
    return int(np.clip(SHARD_BYTES // (image_size * image_size * 3), MIN_SHARD_ROWS, MAX_SHARD_ROWS))


def decode_task_memory(rows: int, image_size: int, max_pixels: int, max_image_bytes: int) -> int:
    """Bytes one decode task declares to Ray (``map_batches(memory=...)``), so a node runs only as many at once as
    its memory holds: the worst single decode (``DECODE_BYTES_PER_PIXEL`` x ``max_pixels``: images are decoded
    one at a time), the encoded file it came from, the task's resized rows twice (the rows, then the shard being
    written) and ``TASK_BASE_MEMORY``. 2.35 GB at the defaults (docs/INGEST.md, memory)."""
    return (
        DECODE_BYTES_PER_PIXEL * max_pixels
        + max_image_bytes
        + 2 * rows * image_size * image_size * 3
        + TASK_BASE_MEMORY
    )


def _node_memory() -> int | None:
    """The largest ``memory`` resource of a live Ray node (bytes), None when Ray does not say."""

    sizes = [n.get("Resources", {}).get("memory", 0) for n in ray.nodes() if n.get("Alive")]
    return int(max(sizes)) if sizes and max(sizes) > 0 else None


def hash_split(file: str, test_fraction: float) -> str:
    """ "test" when sha1(``file``), read as a fraction of 2**160, is below ``test_fraction``; else "train".
    Depends on nothing but the path, so adding or removing other images never moves this one."""
    fraction = int.from_bytes(hashlib.sha1(file.encode("utf-8")).digest(), "big") / 2**160
    return "test" if fraction < test_fraction else "train"


def _split_table(table: pa.Table, blocks: int) -> list[pa.Table]:
    """``table`` cut into ``blocks`` consecutive slices of (nearly) equal length: Ray Data's blocks, built in
    one pass (``from_items`` with a dict per row costs the driver far more: docs/INGEST.md)."""
    bounds = np.linspace(0, len(table), blocks + 1).round().astype(int)
    return [table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _parse_all(dataset: Dataset, classes: tuple[str, ...] | None, cpus: int, max_bytes: int) -> list[dict]:
    """Ray Data parse pass: every annotation -> {annotation, record (pickled) or None, error, node, start, end}."""

    names = pa.table({"annotation": pa.array([ref.annotation for ref in dataset.annotations], pa.string())})
    blocks = max(min(len(names), 2 * cpus), math.ceil(len(names) / PARSE_ROWS))
    ds = ray.data.from_blocks(_split_table(names, blocks))
    ds = ds.map_batches(
        _parse_batch,
        batch_size=None,
        batch_format="numpy",
        fn_kwargs={"filesystem": dataset.filesystem, "root": dataset.root, "classes": classes, "max_bytes": max_bytes},
    )
    return ds.take_all()


def _plan(dataset: Dataset, parsed: list[dict], cfg: PrepareConfig) -> tuple[list[_Planned], list[str], str, dict]:
    """Driver bookkeeping after the parse pass: -> (rows to decode, classes, split source, accounts) where
    accounts holds ``skipped``, ``objects_skipped`` and ``resolved`` (every image an annotation points to)."""
    refs = {ref.annotation: ref for ref in dataset.annotations}
    skipped: list[dict] = []
    objects_skipped: list[dict] = []
    resolved: set[str] = set()
    planned: list[_Planned] = []
    used_by: dict[str, str] = {}
    own = any(ref.split == "test" for ref in dataset.annotations)  # the dataset's own split, else the hash
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
            skipped.append(
                {"file": name, "reason": f"{name}: its image {image} is already labelled by {used_by[image]}"}
            )
            continue
        used_by[image] = name
        if not record.objects and len(record.dropped) > record.unlisted:  # objects there, none usable: no negative
            skipped.append({"file": name, "reason": _all_invalid(name, record)})
            continue
        split = refs[name].split if own and refs[name].split else hash_split(image, cfg.test_fraction)
        cap = cfg.max_objects if split == "train" else None  # test keeps every object: AP's ground truth
        planned.append(_Planned(index, image, split, _largest_first(record, cap, name, objects_skipped)))
    classes = list(cfg.classes) if cfg.classes else sorted({o.name for p in planned for o in p.record.objects})
    accounts = {"skipped": skipped, "objects_skipped": objects_skipped, "resolved": resolved}
    return planned, classes, "dataset" if own else "hash", accounts


def _all_invalid(name: str, record: VocRecord) -> str:
    """The skip reason of an annotation whose objects were all dropped, some of them as invalid."""
    invalid = len(record.dropped) - record.unlisted
    also = f" and {record.unlisted} outside the class list" if record.unlisted else ""
    shown = "; ".join(record.dropped[:3]) + ("; ..." if len(record.dropped) > 3 else "")
    return f"{name}: {NO_OBJECTS}: {invalid} invalid object(s) dropped{also}, so it is no negative image ({shown})"


# ``--image-size`` when not given: the smallest of IMAGE_SIZES at which AUTO_QUANTILE of the objects have a shorter
# side of at least AUTO_MIN_OBJECT_PX pixels (4 cells of the stride-4 heads), so small objects get the pixels they
# need and sets of large ones train at the cheapest size (docs/TRAINING.md).
IMAGE_SIZES = (160, 192, 224, 256, 288, 320)
AUTO_MIN_OBJECT_PX = 16
AUTO_QUANTILE = 0.1


def choose_image_size(planned: list[_Planned]) -> tuple[int, str]:
    """-> (image side, why) from the planned rows' boxes: each box's shorter side as a fraction of the image once
    resized to a square (``min(w / width, h / height)``); records without a ``<size>`` are not counted."""
    sides = [
        min((o.box[2] - o.box[0]) / p.record.width, (o.box[3] - o.box[1]) / p.record.height)
        for p in planned
        if p.record.width > 0 and p.record.height > 0
        for o in p.record.objects
    ]
    if not sides:
        return IMAGE_SIZES[0], "no boxes with a <size> to measure"
    side = float(np.quantile(sides, AUTO_QUANTILE))
    size = next((s for s in IMAGE_SIZES if side * s >= AUTO_MIN_OBJECT_PX), IMAGE_SIZES[-1])
    return size, (
        f"{AUTO_QUANTILE:.0%} of the {len(sides)} objects have a shorter side under {side:.3f} of the "
        f"image: {side * size:.0f} px at {size} px"
    )


def objects_per_row(planned: list[_Planned]) -> dict[str, int]:
    """K of each split of a PREP: the largest object count of any planned row of that split (after the train
    split's ``max_objects`` cut), at least 1."""
    return {split: max([len(p.record.objects) for p in planned if p.split == split] + [1]) for split in SPLITS}


def _largest_first(record: VocRecord, max_objects: int | None, name: str, objects_skipped: list[dict]) -> VocRecord:
    """The record with its objects sorted by area, largest first, cut to ``max_objects`` (the rest reported);
    ``max_objects`` None: sorted, nothing cut (a test image)."""
    if len(record.objects) <= 1:  # most photos (and negatives): nothing to sort or cut
        return record
    areas = B.area(np.array([o.box for o in record.objects], dtype=np.float64))
    order = np.argsort(-areas, kind="stable")
    if max_objects is None:
        return replace(record, objects=tuple(record.objects[i] for i in order))
    for i in order[max_objects:]:
        o = record.objects[i]
        objects_skipped.append(
            {
                "file": name,
                "reason": f"object {o.name!r} {o.box}: beyond --max-objects "
                f"{max_objects} in a train image (the {max_objects} largest "
                "are kept)",
            }
        )
    return replace(record, objects=tuple(record.objects[i] for i in order[:max_objects]))


def _decode_all(
    dataset: Dataset,
    planned: list[_Planned],
    classes: list[str],
    out_fs: pafs.FileSystem,
    out_root: str,
    cfg: PrepareConfig,
    cpus: int,
) -> list[dict]:
    """Ray Data decode pass: planned rows -> shards on disk, one summary row back per input row."""

    if not planned:
        return []
    items = pa.table(
        {
            "index": pa.array([p.index for p in planned], pa.int64()),
            "file": pa.array([p.file for p in planned], pa.string()),
            "split": pa.array([p.split for p in planned], pa.string()),
            "record": pa.array([pickle.dumps(p.record) for p in planned], pa.binary()),
        }
    )
    rows = shard_rows(cfg.image_size)
    # One block per task (batch_size=None) so a task's rows are one shard; at least 2 per CPU so every node
    # of a cluster gets work even from a small dataset.
    blocks = max(min(len(items), 2 * cpus), math.ceil(len(items) / rows))
    memory = decode_task_memory(rows, cfg.image_size, cfg.max_pixels, cfg.max_image_bytes)
    largest = _node_memory()
    if largest is not None and memory > largest:  # declared as is, no task would ever be scheduled
        print(
            f"prepare: a decode task may need {memory / 2**30:.1f} GiB at --max-pixels {cfg.max_pixels:,}, more "
            f"than the largest node's {largest / 2**30:.1f} GiB; one task per node at a time (lower --max-pixels "
            "to run more)",
            flush=True,
        )
        memory = largest
    ds = ray.data.from_blocks(_split_table(items, blocks))
    ds = ds.map_batches(
        _decode_write_batch,
        batch_size=None,
        batch_format="numpy",
        memory=memory,
        fn_kwargs={
            "filesystem": dataset.filesystem,
            "root": dataset.root,
            "out_fs": out_fs,
            "out_root": out_root,
            "image_size": cfg.image_size,
            "objects_per_row": objects_per_row(planned),
            "class_index": {name: i for i, name in enumerate(classes)},
            "max_bytes": cfg.max_image_bytes,
            "max_pixels": cfg.max_pixels,
        },
    )
    summaries = []
    with Progress("prepare: decode + resize", total=len(planned)) as bar:
        for row in ds.iter_rows():  # streamed as each task finishes, so the bar moves
            summaries.append(row)
            bar.update(1)
    return summaries


def prepare(cfg: PrepareConfig) -> dict:
    """Run the ingestion (module docstring) and return the manifest (docs/FORMATS.md).

    Besides the documented keys, ``stats`` holds where the time went (seconds per phase), the Ray node ids the
    parse and decode tasks ran on, and the decode pass's window (first task start to last task end).
    Everything is written into a staging folder under ``--out`` and swapped in at the end (``_commit``), so a
    run that fails or is interrupted leaves the previous PREP as it was.
    Raises ``UserError`` (raydet.errors) naming the path for a missing dataset, a folder without annotations,
    an unusable ``--out``, a dataset with no object of any class and no ``--classes``, or a dataset where
    nothing could be loaded (the manifest is still written then).
    """
    t0 = time.perf_counter()
    dataset = discover(cfg.data)
    out = open_out(cfg.out)
    try:
        manifest = _ingest(cfg, dataset, out, t0)
        commit(out, manifest)
    except BaseException:  # KeyboardInterrupt too: the previous PREP stays, the staging folder goes
        discard(out)
        raise
    path = f"{out.root}/{MANIFEST}"
    shown = path if "://" not in cfg.out else cfg.out.rstrip("/") + f"/{MANIFEST}"
    skipped, splits = manifest["skipped"], manifest["splits"]
    if not manifest["images_loaded"]:
        first = "; ".join(s["reason"] for s in skipped[:3])
        raise UserError(
            f"nothing loadable in {cfg.data}: all {len(skipped)} annotations skipped (e.g. {first}); see {shown}"
        )
    print(
        f"raydet prepare: loaded {manifest['images_loaded']} images (train {splits['train']}, "
        f"test {splits['test']}; {manifest['negative_images']} negative), skipped {len(skipped)}; "
        f"manifest: {shown}",
        flush=True,
    )
    return manifest


def _ingest(cfg: PrepareConfig, dataset: Dataset, out: Out, t0: float) -> dict:
    """Both Ray Data passes, the shards written into ``out.stage`` -> the manifest (not yet written)."""

    t_discover = time.perf_counter()

    started = not ray.is_initialized()
    init_ray(cfg.address)
    # a local path on a multi-node cluster must be the same folder on every node (the tasks read and write there)
    check_visible(cfg.data, write=False, what="the dataset")
    check_visible(cfg.out, write=True, what="--out")
    t_ray = time.perf_counter()
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < 1:  # Ray Data's tasks need a CPU each; without one they would wait forever
        raise UserError(f"the Ray cluster at {cfg.address or 'RAY_ADDRESS'} has no CPU for the prepare tasks")
    with data_uses_every_cpu():
        parsed = _parse_all(dataset, cfg.classes, cpus, cfg.max_xml_bytes)
        planned, classes, split_source, accounts = _plan(dataset, parsed, cfg)
        if cfg.image_size is None:
            size, why = choose_image_size(planned)
            print(f"image size: {size} px, chosen from the boxes ({why}; --image-size to set)", flush=True)
            cfg = replace(cfg, image_size=size)
        if planned and not classes:
            raise UserError(
                f"no object of any class in {cfg.data}: all {len(planned)} usable annotations are "
                "negatives (no <object>); name the classes with --classes to prepare them"
            )
        t_parse = time.perf_counter()
        summaries = _decode_all(dataset, planned, classes, out.filesystem, out.stage, cfg, cpus)
        t_decode = time.perf_counter()

    loaded, objects_loaded, negatives = _tally(summaries, planned, accounts)
    skipped = accounts["skipped"]
    manifest = {
        "classes": classes,
        "image_size": cfg.image_size,
        "image_encoding": IMAGE_ENCODING,
        "max_objects": cfg.max_objects,
        "objects_per_row": objects_per_row(planned),
        "splits": {split: loaded[split] for split in SPLITS},
        "split_source": split_source,
        "annotations_found": len(dataset.annotations),
        "images_loaded": sum(loaded.values()),
        "negative_images": negatives,
        "skipped": skipped,
        "objects_loaded": objects_loaded,
        **objects_skipped_fields(accounts["objects_skipped"]),
        "case_collisions": case_collisions(classes),
        "rescaled": accounts["rescaled"],
        "exif_rotated_images": accounts["exif_rotated"],
        "refused_links": [{"file": file, "reason": reason} for file, reason in dataset.refused],
        "unlabeled_images": _unlabeled(dataset, accounts["resolved"]),
        "source": cfg.data,
        "layout": dataset.layout,
        "stats": _stats(parsed, summaries, cpus, started, [t0, t_discover, t_ray, t_parse, t_decode]),
    }
    assert manifest["images_loaded"] + len(skipped) == manifest["annotations_found"], "every annotation accounted for"
    return manifest


# objects_skipped keeps this many examples per reason per annotation; the counts stay exact. An XML of 115,000
# empty <object/> would otherwise put 115,000 entries (11.5 MB) into the manifest.
EXAMPLES_PER_REASON = 20
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_NUMBER = re.compile(r"[-+]?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?")


def reason_kind(reason: str) -> str:
    """A skip reason with its particulars (quoted names and texts, numbers) replaced, so reasons of one kind
    count together: "object 3 'dog': inverted box xmin=50 > xmax=10" -> "object N '…': inverted box xmin=N > xmax=N"."""
    return _NUMBER.sub("N", _QUOTED.sub("'…'", reason))


def objects_skipped_fields(entries: list[dict], examples: int = EXAMPLES_PER_REASON) -> dict:
    """``[{file, reason}]`` -> the manifest's ``objects_skipped`` (at most ``examples`` entries per reason kind per
    file, in order), ``objects_skipped_count`` (all of them) and ``objects_skipped_by_reason`` ({kind: count},
    exact)."""
    shown: Counter = Counter()
    by_reason: Counter = Counter()
    kept = []
    for entry in entries:
        kind = reason_kind(entry["reason"])
        by_reason[kind] += 1
        shown[entry["file"], kind] += 1
        if shown[entry["file"], kind] <= examples:
            kept.append(entry)
    return {
        "objects_skipped": kept,
        "objects_skipped_count": len(entries),
        "objects_skipped_by_reason": dict(sorted(by_reason.items())),
    }


def _tally(summaries: list[dict], planned: list[_Planned], accounts: dict) -> tuple[Counter, int, int]:
    """The decode pass's summaries -> (images loaded per split, objects loaded, negative images loaded); the
    rows it skipped join ``accounts["skipped"]``, the objects it dropped ``accounts["objects_skipped"]``, and the
    loaded images whose boxes were rescaled (``{file, note}``) or that carry an EXIF orientation (file names)
    go to ``accounts["rescaled"]`` and ``accounts["exif_rotated"]``."""
    split_of = {p.index: p.split for p in planned}
    loaded: Counter = Counter()
    objects_loaded = negatives = 0
    accounts["rescaled"], accounts["exif_rotated"] = [], []
    for s in sorted(summaries, key=lambda s: s["index"]):
        accounts["objects_skipped"] += [{"file": s["file"], "reason": reason} for reason in s["dropped"]]
        if s["ok"]:
            loaded[split_of[s["index"]]] += 1
            objects_loaded += int(s["objects"])
            negatives += int(s["objects"]) == 0
            if s["note"]:
                accounts["rescaled"].append({"file": s["file"], "note": s["note"]})
            if int(s["orientation"]) != 1:
                accounts["exif_rotated"].append(s["file"])
        else:
            accounts["skipped"].append({"file": s["file"], "reason": s["reason"]})
    return loaded, objects_loaded, negatives


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
        "seconds": {
            "discover": round(t_discover - t0, 3),
            "ray_start": round(t_ray - t_discover, 3) if started else 0.0,
            "parse_pass": round(t_parse - t_ray, 3),
            "decode_pass": round(t_decode - t_parse, 3),
            "parse_window": round(_window(parsed), 3),
            "decode_window": round(_window(summaries), 3),
            "total": round(t_decode - t0, 3),
        },
        # CPU seconds inside the decode tasks, summed over tasks: where the decode pass's work goes
        "task_cpu_seconds": {
            phase: round(sum(s[f"{phase}_s"] for s in summaries), 3) for phase in ("read", "decode", "write")
        },
        "nodes": {"parse": sorted({r["node"] for r in parsed}), "decode": sorted({s["node"] for s in summaries})},
        "decoded": len(summaries),
    }
