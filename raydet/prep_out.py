"""The PREP folder as an output: ``raydet prepare`` writes into a staging folder under ``--out`` and commits it at
the end, so a run that fails or is killed half-way leaves the previous PREP whole and the next run starts cleanly.

``open_out(out)`` -> an :class:`Out` (filesystem, PREP root, staging folder with empty ``train/`` and ``test/``);
the Ray tasks write their shards into ``Out.stage``; ``commit(out, manifest)`` swaps the staged PREP in (manifest
last); ``discard(out)`` removes a failed run's staging folder. Paths or URIs alike (pyarrow filesystems).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

from raydet import storage
from raydet.errors import UserError
from raydet.shards import SPLITS

# Under --out, both removed by the next run when a run dies: a run's shards and manifest until it commits, and
# the previous PREP while the commit swaps it out.
STAGING_PREFIX, OLD_PREFIX = ".raydet-staging-", ".raydet-old-"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Out:
    """Where a run writes: ``root`` is the PREP (``--out``), ``stage`` the staging folder under it."""
    filesystem: pafs.FileSystem
    root: str
    stage: str


def open_out(out: str) -> Out:
    """``--out`` (path or URI) -> a fresh staging folder in it, with empty ``train/`` and ``test/``.

    Refuses a file, or a folder that looks like someone else's data (train/ or test/ without our manifest and
    without our leftovers). Clears what an interrupted run left: its staging or old folders and, when a commit
    was cut short (train/ or test/ beside our leftovers but no manifest), those unmatched shards. A previous
    PREP with its manifest stays untouched until ``commit``.
    """
    filesystem, path = storage.resolve(out)
    path = path or "/"
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise UserError(f"--out {out} is a file, not a folder")
    if info.type == pafs.FileType.Directory:
        children = {i.base_name: i for i in filesystem.get_file_info(pafs.FileSelector(path))}
        leftovers = [i.path for name, i in children.items()
                     if name.startswith((STAGING_PREFIX, OLD_PREFIX)) and i.type == pafs.FileType.Directory]
        ours = MANIFEST in children and children[MANIFEST].type == pafs.FileType.File
        present = [s for s in SPLITS if s in children]
        if present and not ours:
            if not leftovers:
                raise UserError(f"--out {out} already has {'/ and '.join(present)}/ but no {MANIFEST}: "
                                "refusing to overwrite a folder raydet did not write")
            for split in present:  # a commit cut short: shards that no manifest describes
                filesystem.delete_dir(children[split].path)
        for leftover in leftovers:
            filesystem.delete_dir(leftover)
    stage = f"{path}/{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    for split in SPLITS:
        filesystem.create_dir(f"{stage}/{split}", recursive=True)
    return Out(filesystem, path, stage)


def commit(out: Out, manifest: dict) -> None:
    """Swap the staged PREP in for the previous one, manifest.json last, then delete the previous one.

    Until step 1 the previous PREP is complete; from step 1 to step 2 there is no manifest at all (never one that
    does not describe the shards beside it); a run that dies in between is cleaned up by the next ``open_out``.
    """
    fs, root = out.filesystem, out.root
    with fs.open_output_stream(f"{out.stage}/{MANIFEST}") as stream:  # whole before it is moved into place
        stream.write((json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    old = f"{root}/{OLD_PREFIX}{out.stage.rsplit(STAGING_PREFIX, 1)[1]}"
    fs.create_dir(old)
    for name in (MANIFEST, *SPLITS):  # 1. the previous PREP aside, its manifest first
        if fs.get_file_info(f"{root}/{name}").type != pafs.FileType.NotFound:
            storage.move_on(fs, f"{root}/{name}", f"{old}/{name}")
    for name in (*SPLITS, MANIFEST):  # 2. the new one in, its manifest last
        storage.move_on(fs, f"{out.stage}/{name}", f"{root}/{name}")
    fs.delete_dir(old)  # 3. nothing of the previous PREP is left
    fs.delete_dir(out.stage)


def discard(out: Out) -> None:
    """Best effort: remove a failed run's staging folder (the next run removes it otherwise)."""
    try:
        if out.filesystem.get_file_info(out.stage).type == pafs.FileType.Directory:
            out.filesystem.delete_dir(out.stage)
    except OSError:
        pass
