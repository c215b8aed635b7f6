"""The PREP folder as an output: ``raydet prepare`` writes into a staging folder under ``--out`` and commits it at
the end, so a run that fails or is killed half-way leaves a whole PREP (the previous one, or the new one) and the
next run starts cleanly.

``open_out(out)`` takes the lease on ``--out`` (one prepare at a time), finishes or rolls back what a run that
died left, and returns an :class:`Out` (filesystem, PREP root, staging folder with empty ``train/`` and
``test/``); the Ray tasks write their shards into ``Out.stage``; ``commit(out, manifest)`` swaps the staged PREP
in (manifest last); ``discard(out)`` removes a failed run's staging folder; ``release(out)`` gives the lease back.
Paths or URIs alike (pyarrow filesystems).

**The lease** (``OUT/.raydet-lease.json``: holder host, pid, start time, heartbeat): a second prepare into the
same ``--out`` refuses at once, naming the holder. On a local disk (or NFS) it is an ``fcntl`` lock on that file,
which the kernel drops when the holder dies (SIGKILL included), so a dead holder's lease is simply taken; the file
names the holder for the message. In a bucket there are no locks: the lease is an object, refused while its
heartbeat (rewritten every ``HEARTBEAT_S`` by a daemon thread) is younger than ``STALE_S``; a holder on this host
whose pid is gone is stale at once. Two runs starting within the same second against one bucket can both
believe they hold it (an object store's PUT has no create-if-absent through pyarrow): the limit of a bucket lease.

**The commit**, each step recoverable (the journal ``OUT/.raydet-commit.json`` names the staging and old folders
and the moves, rewritten as they complete):

0. ``stage/manifest.json`` written: the new PREP is whole in the staging folder. A crash here: no journal, so the
   next run deletes the staging folder; the previous PREP never moved.
1. the journal is written (atomically). From here the next run *completes* the commit (rolls forward).
2. the previous PREP's manifest, ``train/``, ``test/`` move into ``.raydet-old-<id>/``, manifest first; then the new
   ``train/``, ``test/``, manifest move in, manifest last. Each move is one journal step: a crash before, during or
   after it is finished by the next run (a copy-based move in a bucket records "copied" before deleting its
   source, so a half copy is redone and a half delete finished).
3. ``.raydet-old-<id>`` and the staging folder are deleted, then the journal. A crash here leaves the new PREP
   whole; the next run finishes the clean-up.

So at every crash point the next run finds the journal (roll forward to the new PREP, whole in its staging folder
or already moved) or none (the previous PREP untouched, leftovers deleted): never neither.

**Reading** a PREP: :class:`Prep` (its manifest's location, and :meth:`Prep.read_manifest`, the one reader of
``PREP/manifest.json``, which checks it against the shards).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from raydet.cluster import storage
from raydet.errors import UserError, UserFileNotFoundError
from raydet.ingest.shards import SPLITS, shard_paths, split_rows

# Under --out, both removed (or finished, when the journal names them) by the next run when a run dies: a run's
# shards and manifest until it commits, and the previous PREP while the commit swaps it out.
STAGING_PREFIX, OLD_PREFIX = ".raydet-staging-", ".raydet-old-"
MANIFEST = "manifest.json"
LEASE, JOURNAL = ".raydet-lease.json", ".raydet-commit.json"
HEARTBEAT_S = 30.0  # the holder rewrites the lease this often
STALE_S = 300.0  # a lease whose heartbeat is older than this (another host, or a bucket) is taken over


@dataclass(frozen=True)
class Prep:
    """The PREP folder at ``where`` (a path or URI) that ``raydet prepare`` wrote: ``MANIFEST`` and one folder of
    Parquet shards per split (raydet.ingest.shards)."""

    where: str | os.PathLike

    @property
    def manifest(self) -> str:
        """PREP/manifest.json as a path or URI."""
        return storage.join(self.where, MANIFEST)

    def is_written(self) -> bool:
        """Whether the PREP has its manifest (written last: the PREP is whole)."""
        return storage.kind(self.manifest) == "file"

    def read_manifest(self, splits: tuple[str, ...] = SPLITS) -> dict:
        """PREP/manifest.json -> its dict, checked: UserFileNotFoundError when it is absent or a split of
        ``splits`` has no Parquet shard; a one-line UserError naming the file and the bad value when it is not
        a JSON object, its ``classes`` is not a non-empty list or its ``image_size`` not a positive integer, or
        a split's shards hold other row counts than its ``splits`` says."""
        path = self.manifest
        if storage.kind(path) != "file":
            raise UserFileNotFoundError(f"{path}: no manifest; is {self.where} a folder written by `raydet prepare`?")
        manifest = storage.read_json_object(path)
        classes, size = manifest.get("classes"), manifest.get("image_size")
        if not isinstance(classes, list) or not classes:
            raise UserError(f"{path}: 'classes' must be a non-empty list, got {classes!r}")
        if not isinstance(size, int) or size <= 0:
            raise UserError(f"{path}: 'image_size' must be a positive integer, got {size!r}")
        for split in splits:
            self._check_split(split, (manifest.get("splits") or {}).get(split))
        return manifest

    def _check_split(self, split: str, expected: int | None) -> None:
        """UserFileNotFoundError when ``PREP/<split>`` has no shard; UserError unless its shards hold the
        ``expected`` rows the manifest counted (their Parquet footers are read, no column): a PREP copied in
        part, or shards added or removed by hand, is something else than the manifest describes. ``expected``
        None (a manifest without counts): not compared."""
        folder = storage.join(self.where, split)
        if not shard_paths(self.where, split):
            raise UserFileNotFoundError(f"{folder}: no Parquet shards (expected {folder}/*.parquet)")
        if expected is None:
            return
        found = sum(rows for _, rows in split_rows(self.where, split))
        if found != expected:
            raise UserError(
                f"{folder}: its shards hold {found} rows but {self.manifest} counted {expected}; the PREP changed "
                "after `raydet prepare` wrote it (copied in part?): prepare it again"
            )


class LeaseHeld(UserError):
    """Another prepare holds ``--out``; the message names it (host, pid, since)."""


@dataclass
class Lease:
    """The lease this process holds on an ``--out``."""

    filesystem: pafs.FileSystem
    path: str
    holder: dict
    fd: int | None = None  # the locked file (local disk); None in a bucket
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


@dataclass(frozen=True)
class Out:
    """Where a run writes: ``root`` is the PREP (``--out``), ``stage`` the staging folder under it."""

    filesystem: pafs.FileSystem
    root: str
    stage: str
    lease: Lease | None = None


# ------------------------------------------------------------------------------------------------ lease


def _describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("start", 0))))
    beat = time.time() - float(holder.get("heartbeat", holder.get("start", 0)))
    return (
        f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {since} (last heartbeat {beat:.0f} s ago)"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _is_stale(holder: dict, now: float) -> bool:
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not _pid_alive(holder["pid"])
    return now - float(holder.get("heartbeat", 0)) > STALE_S


def _lease_bytes(holder: dict) -> bytes:
    return (json.dumps(holder) + "\n").encode("utf-8")


def _read_json(filesystem: pafs.FileSystem, path: str) -> dict | None:
    try:
        with filesystem.open_input_stream(path) as stream:
            return json.loads(stream.read().decode("utf-8") or "null")
    except (FileNotFoundError, OSError, ValueError):
        return None


def acquire_lease(filesystem: pafs.FileSystem, root: str, out: str) -> Lease:
    """Take the lease on ``root`` (module docstring) and start its heartbeat; :class:`LeaseHeld` naming the holder
    when a live prepare has it."""
    now = time.time()
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "start": now, "heartbeat": now, "id": uuid.uuid4().hex}
    path = f"{root}/{LEASE}"
    if isinstance(filesystem, pafs.LocalFileSystem):
        lease = _acquire_local(filesystem, path, holder, out)
    else:
        current = _read_json(filesystem, path)
        if current and not _is_stale(current, now):
            raise LeaseHeld(
                f"--out {out} is being written by another raydet prepare ({_describe(current)}); "
                f"wait for it, or delete {out.rstrip('/')}/{LEASE} if that run is gone"
            )
        with filesystem.open_output_stream(path) as stream:
            stream.write(_lease_bytes(holder))
        lease = Lease(filesystem, path, holder)
    lease.thread = threading.Thread(target=_heartbeat, args=(lease,), name="raydet-lease", daemon=True)
    lease.thread.start()
    return lease


def _acquire_local(filesystem: pafs.FileSystem, path: str, holder: dict, out: str) -> Lease:

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        current = _read_json(filesystem, path) or {}
        os.close(fd)
        raise LeaseHeld(
            f"--out {out} is being written by another raydet prepare ({_describe(current)}); wait for it to finish"
        ) from None
    _write_fd(fd, holder)  # the lock is ours: whatever the file said was a holder that died
    return Lease(filesystem, path, holder, fd)


def _write_fd(fd: int, holder: dict) -> None:
    data = _lease_bytes(holder)
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _heartbeat(lease: Lease) -> None:
    """[daemon thread] rewrite the lease's heartbeat every ``HEARTBEAT_S`` until released."""
    while not lease.stop.wait(HEARTBEAT_S):
        lease.holder["heartbeat"] = time.time()
        try:
            if lease.fd is not None:
                _write_fd(lease.fd, lease.holder)
            else:
                with lease.filesystem.open_output_stream(lease.path) as stream:
                    stream.write(_lease_bytes(lease.holder))
        except OSError:
            pass  # a missed beat; the next one tries again


def release_lease(lease: Lease | None) -> None:
    """Stop the heartbeat and give the lease back (the file or object is deleted)."""
    if lease is None or lease.stop.is_set():
        return
    lease.stop.set()
    if lease.thread is not None:
        lease.thread.join(timeout=5)
    try:
        if lease.fd is not None:
            os.unlink(lease.path)  # still locked by us: no one else wrote it
            os.close(lease.fd)
        else:
            current = _read_json(lease.filesystem, lease.path)
            if current and current.get("id") == lease.holder["id"]:
                lease.filesystem.delete_file(lease.path)
    except OSError:
        pass


def release(out: Out) -> None:
    release_lease(out.lease)


# ------------------------------------------------------------------------------------------ open, commit


def open_out(out: str) -> Out:
    """``--out`` (path or URI) -> its lease and a fresh staging folder in it, with empty ``train/`` and ``test/``.

    Refuses a file, a folder another prepare is writing (:class:`LeaseHeld`), or a folder that looks like someone
    else's data (train/ or test/ without our manifest, our journal or our leftovers). Then finishes a commit that
    was cut short (the journal: module docstring) and clears what an interrupted run left: its staging or old
    folders and, for a commit cut short by a raydet without a journal (train/ or test/ beside our leftovers but no
    manifest), those unmatched shards. A previous PREP with its manifest stays untouched until ``commit``.
    """
    filesystem, path = storage.resolve(out)
    path = path or "/"
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise UserError(f"--out {out} is a file, not a folder")
    if info.type == pafs.FileType.Directory:
        children = {i.base_name: i for i in filesystem.get_file_info(pafs.FileSelector(path))}
        ours = (
            (MANIFEST in children and children[MANIFEST].type == pafs.FileType.File)
            or JOURNAL in children
            or any(name.startswith((STAGING_PREFIX, OLD_PREFIX)) for name in children)
        )
        present = [s for s in SPLITS if s in children]
        if present and not ours:
            raise UserError(
                f"--out {out} already has {'/ and '.join(present)}/ but no {MANIFEST}: "
                "refusing to overwrite a folder raydet did not write"
            )
    else:
        filesystem.create_dir(path, recursive=True)
    lease = acquire_lease(filesystem, path, out)
    try:
        recover(filesystem, path)
        stage = f"{path}/{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        for split in SPLITS:
            filesystem.create_dir(f"{stage}/{split}", recursive=True)
    except BaseException:
        release_lease(lease)
        raise
    return Out(filesystem, path, stage, lease)


def recover(filesystem: pafs.FileSystem, root: str) -> str:
    """What a run that died left in ``root`` (call it holding the lease) -> "completed" (a journal: the commit it
    names is finished), "cleaned" (leftovers deleted, the previous PREP untouched) or "" (nothing to do)."""
    journal = _read_json(filesystem, f"{root}/{JOURNAL}")
    if journal:
        _roll_forward(filesystem, root, journal)
        return "completed"
    children = {i.base_name: i for i in filesystem.get_file_info(pafs.FileSelector(root))}
    leftovers = [
        i.path
        for name, i in children.items()
        if name.startswith((STAGING_PREFIX, OLD_PREFIX)) and i.type == pafs.FileType.Directory
    ]
    ours = MANIFEST in children and children[MANIFEST].type == pafs.FileType.File
    if JOURNAL in children:  # an empty or torn journal: written whole or not at all, so never a commit's
        filesystem.delete_file(children[JOURNAL].path)
    if not ours and leftovers:  # a commit cut short by a raydet without journal: shards no manifest describes
        for split in SPLITS:
            if split in children:
                filesystem.delete_dir(children[split].path)
    for leftover in leftovers:
        filesystem.delete_dir(leftover)
    return "cleaned" if leftovers else ""


def _write_journal(filesystem: pafs.FileSystem, root: str, journal: dict) -> None:
    """The journal, whole or not at all: locally beside it, then renamed over it; a bucket's PUT is atomic."""
    data = (json.dumps(journal, indent=1) + "\n").encode("utf-8")
    path = f"{root}/{JOURNAL}"
    if isinstance(filesystem, pafs.LocalFileSystem):
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        with filesystem.open_output_stream(path) as stream:
            stream.write(data)


def _exists(filesystem: pafs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def _delete(filesystem: pafs.FileSystem, path: str) -> None:
    kind = filesystem.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        filesystem.delete_dir(path)
    elif kind == pafs.FileType.File:
        filesystem.delete_file(path)


def _move(filesystem: pafs.FileSystem, src: str, dst: str, on_copied) -> None:
    """``src`` -> ``dst``: a rename where the filesystem has one; else copy, ``on_copied()``, delete ``src``."""
    if isinstance(filesystem, pafs.LocalFileSystem) or filesystem.get_file_info(src).type != pafs.FileType.Directory:
        filesystem.move(src, dst)
        return
    filesystem.create_dir(dst, recursive=True)
    pafs.copy_files(src, dst, source_filesystem=filesystem, destination_filesystem=filesystem)
    on_copied()
    filesystem.delete_dir(src)


def _roll_forward(filesystem: pafs.FileSystem, root: str, journal: dict) -> None:
    """Do the journal's moves from the first not yet done, then delete the old and staging folders and the
    journal. Each step is finished whatever state a crash left it in: source only (not started), target only
    (done, not yet recorded), both (a copy cut short: redone; or, recorded "copied", a delete cut short: finished)."""
    steps = journal["steps"]
    while journal["done"] < len(steps):
        src, dst = (f"{root}/{p}" for p in steps[journal["done"]])
        has_src, has_dst = _exists(filesystem, src), _exists(filesystem, dst)
        if has_src and has_dst:
            _delete(filesystem, src if journal.get("copied") else dst)
            has_src = not journal.get("copied")
        if has_src:
            filesystem.create_dir(dst.rsplit("/", 1)[0], recursive=True)

            def copied():
                journal["copied"] = True
                _write_journal(filesystem, root, journal)

            _step_move(filesystem, src, dst, copied)
        journal["done"] += 1
        journal["copied"] = False
        _write_journal(filesystem, root, journal)
    for folder in (journal["old"], journal["stage"]):
        _delete_folder(filesystem, f"{root}/{folder}")
    filesystem.delete_file(f"{root}/{JOURNAL}")


def _delete_folder(filesystem: pafs.FileSystem, path: str) -> None:
    """Step 3's deletions (a seam for the tests): the folder at ``path`` and all under it, if it is there."""
    if _exists(filesystem, path):
        filesystem.delete_dir(path)


def _step_move(filesystem: pafs.FileSystem, src: str, dst: str, on_copied) -> None:
    """One journal step's move (a seam for the tests that cut a commit short at each step)."""
    _move(filesystem, src, dst, on_copied)


def commit(out: Out, manifest: dict) -> None:
    """Swap the staged PREP in for the previous one, manifest.json last, then delete the previous one and release
    the lease (module docstring: the steps, and what the next run does after a crash at each). If it raises, the
    lease is still held: call :func:`discard`, which completes the commit when its journal was written."""
    fs, root = out.filesystem, out.root
    with fs.open_output_stream(f"{out.stage}/{MANIFEST}") as stream:  # 0. whole before anything moves
        stream.write((json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    stage = out.stage.rsplit("/", 1)[1]
    old = f"{OLD_PREFIX}{stage.rsplit(STAGING_PREFIX, 1)[1]}"
    aside = [(name, f"{old}/{name}") for name in (MANIFEST, *SPLITS) if _exists(fs, f"{root}/{name}")]
    steps = aside + [(f"{stage}/{name}", name) for name in (*SPLITS, MANIFEST)]
    journal = {"stage": stage, "old": old, "steps": [list(s) for s in steps], "done": 0, "copied": False}
    _write_journal(fs, root, journal)  # 1. from here the next run completes this commit
    _roll_forward(fs, root, journal)  # 2. + 3.
    release(out)


def discard(out: Out) -> None:
    """Best effort after a failed run: a commit that had started (its journal written) is completed, since its
    new PREP is whole; otherwise the staging folder is removed (the next run removes it otherwise). The lease is
    released either way."""
    try:
        journal = _read_json(out.filesystem, f"{out.root}/{JOURNAL}")
        if journal and journal.get("stage") == out.stage.rsplit("/", 1)[1]:
            _roll_forward(out.filesystem, out.root, journal)
        elif out.filesystem.get_file_info(out.stage).type == pafs.FileType.Directory:
            out.filesystem.delete_dir(out.stage)
    except OSError:
        pass
    finally:
        release(out)
