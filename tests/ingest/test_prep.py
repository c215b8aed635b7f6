"""raydet.ingest.prepare's atomic output: a prepare writes into a staging folder under --out and swaps it in at the end,
so a run that dies leaves the previous PREP as it was and the next run cleans up after it. The commit and the clean-up
on their own (no Ray), then the real CLI killed half-way with SIGKILL and with SIGINT."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raydet.ingest.prep import LEASE, MANIFEST, OLD_PREFIX, STAGING_PREFIX, commit, open_out

RAYDET = Path(sys.executable).parent / "raydet"


def write(path: Path, content: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden folders included) but the lease a running prepare holds, relative path
    -> sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LEASE
    }


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((STAGING_PREFIX, OLD_PREFIX)))


def old_prep(out: Path) -> Path:
    write(out / MANIFEST, '{"old": true}')
    write(out / "train" / "part-0000000.parquet", "old train")
    write(out / "test" / "part-0000000.parquet", "old test")
    return out


# ------------------------------------------------------------------------------------ commit, clean-up


def test_open_out_stages_beside_the_previous_prep_and_leaves_it_alone(tmp_path):
    before = tree(old_prep(tmp_path / "out"))
    out = open_out(str(tmp_path / "out"))
    assert Path(out.stage).parent == tmp_path / "out" and Path(out.stage).name.startswith(STAGING_PREFIX)
    assert sorted(p.name for p in Path(out.stage).iterdir()) == ["test", "train"]
    assert tree(tmp_path / "out") == before  # nothing of the previous PREP deleted before the commit


def test_commit_swaps_the_staged_prep_in_and_leaves_nothing_else(tmp_path):
    old_prep(tmp_path / "out")
    out = open_out(str(tmp_path / "out"))
    write(Path(out.stage) / "train" / "part-0000005.parquet", "new train")
    commit(out, {"new": True})
    assert tree(tmp_path / "out") == {
        MANIFEST: hashlib.sha256(b'{\n  "new": true\n}\n').hexdigest(),
        "train/part-0000005.parquet": hashlib.sha256(b"new train").hexdigest(),
    }
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST, "test", "train"]


def test_open_out_removes_stale_staging_and_old_folders(tmp_path):
    before = tree(old_prep(tmp_path / "out"))
    write(tmp_path / "out" / f"{STAGING_PREFIX}dead" / "train" / "part-0000000.parquet", "half")
    write(tmp_path / "out" / f"{OLD_PREFIX}dead" / "nothing")
    out = open_out(str(tmp_path / "out"))
    assert leftovers(tmp_path / "out") == [Path(out.stage).name]
    assert {k: v for k, v in tree(tmp_path / "out").items() if not k.startswith(".")} == before


def test_a_commit_cut_short_is_cleaned_up_not_refused(tmp_path):
    # died between moving the old manifest aside and moving the new one in: shards without a manifest, beside
    # raydet's own old folder. That is raydet's mess, so it is cleared instead of refused.
    write(tmp_path / "out" / "train" / "part-0000000.parquet", "unmatched")
    write(tmp_path / "out" / f"{OLD_PREFIX}abc" / MANIFEST, "{}")
    out = open_out(str(tmp_path / "out"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != LEASE) == [Path(out.stage).name]
    commit(out, {"new": True})  # and the next commit goes through
    assert json.loads((tmp_path / "out" / MANIFEST).read_text()) == {"new": True}


def test_a_folder_raydet_did_not_write_is_still_refused(tmp_path):
    write(tmp_path / "out" / "train" / "mine.txt", "keep")
    write(tmp_path / "out" / ".cache" / "x")  # a hidden folder that is not raydet's is no licence
    with pytest.raises(ValueError, match="refusing to overwrite a folder raydet did not write"):
        open_out(str(tmp_path / "out"))
    assert (tmp_path / "out" / "train" / "mine.txt").read_text() == "keep"
    assert leftovers(tmp_path / "out") == []


class NoFolderMoves(pafs.FileSystemHandler):
    """The local filesystem, except that a folder cannot be moved: what an object store offers."""

    def __init__(self):
        self.fs = pafs.LocalFileSystem()

    def get_type_name(self):
        return "no-folder-moves"

    def normalize_path(self, path):
        return path

    def equals(self, other):
        return isinstance(other, NoFolderMoves)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        self.fs.delete_file(path)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)

    def move(self, src, dest):
        if self.fs.get_file_info(src).type == pafs.FileType.Directory:
            raise NotImplementedError("this filesystem cannot move a folder")
        self.fs.move(src, dest)


def test_commit_on_a_filesystem_that_cannot_move_folders_copies_them(tmp_path):
    from raydet.ingest.prep import Out

    old_prep(tmp_path / "out")
    fs = pafs.PyFileSystem(NoFolderMoves())
    with pytest.raises(NotImplementedError):
        fs.move(str(tmp_path / "out" / "train"), str(tmp_path / "elsewhere"))
    stage = tmp_path / "out" / f"{STAGING_PREFIX}s3"
    write(stage / "train" / "part-0000003.parquet", "new train")
    (stage / "test").mkdir()
    commit(Out(fs, str(tmp_path / "out"), str(stage)), {"new": True})
    assert tree(tmp_path / "out") == {
        MANIFEST: hashlib.sha256(b'{\n  "new": true\n}\n').hexdigest(),
        "train/part-0000003.parquet": hashlib.sha256(b"new train").hexdigest(),
    }


@pytest.mark.slow
def test_a_prepare_that_fails_leaves_the_previous_prep_and_no_staging(tmp_path, ray_local):
    from raydet.config import PrepareConfig
    from raydet.ingest.prepare import prepare

    (tmp_path / "d").mkdir()
    Image.new("RGB", (32, 24), (200, 30, 60)).save(tmp_path / "d" / "a.jpg")
    xml = "<annotation><filename>a.jpg</filename><size><width>32</width><height>24</height></size>{}</annotation>"
    write(
        tmp_path / "d" / "a.xml",
        xml.format(
            "<object><name>dog</name><bndbox><xmin>2</xmin><ymin>2</ymin>"
            "<xmax>20</xmax><ymax>20</ymax></bndbox></object>"
        ),
    )
    prepare(PrepareConfig(data=str(tmp_path / "d"), out=str(tmp_path / "prep"), image_size=16))
    before = tree(tmp_path / "prep")
    write(tmp_path / "d" / "a.xml", xml.format(""))  # now only a negative and no --classes: refused mid-run
    with pytest.raises(ValueError, match="no object of any class"):
        prepare(PrepareConfig(data=str(tmp_path / "d"), out=str(tmp_path / "prep"), image_size=16))
    assert tree(tmp_path / "prep") == before and leftovers(tmp_path / "prep") == []


# --------------------------------------------------------------------------- the real CLI, killed half-way


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # a fresh local Ray per command: killing it must not touch anyone else's
    return env


def prepare_args(data: Path, out: Path) -> list[str]:
    # 256 px: about 85 rows per shard (raydet.ingest.prepare.shard_rows), 8 decode tasks for 601 images, so the first
    # shard lands in the staging folder well before the last one and the commit
    return [str(RAYDET), "prepare", str(data), "--out", str(out), "--image-size", "256"]


def _new_stage(out: Path, not_in: set[str]) -> str | None:
    """The name of a staging folder of ``out`` (not in ``not_in``) that holds a shard, or None. A folder that the
    run removes while this looks (the previous run's leftover) counts as none."""
    try:
        staged = [p for p in out.glob(f"{STAGING_PREFIX}*/*/part-*.parquet") if p.parents[1].name not in not_in]
    except FileNotFoundError:
        return None
    return staged[0].parents[1].name if staged else None


def start_and_stop(data: Path, out: Path, sig: int, not_in: set[str]) -> str:
    """Start `raydet prepare`, send ``sig`` once its staging folder (one not in ``not_in``) holds a shard, wait for
    it to end; -> that staging folder's name. Every process it started is ended (its own session)."""
    proc = subprocess.Popen(
        prepare_args(data, out),
        env=cli_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, stage = time.monotonic() + 120, None
        while stage is None:
            assert proc.poll() is None, f"prepare ended (rc {proc.returncode}) before a shard was staged"
            assert time.monotonic() < deadline, "no shard staged within 120 s"
            stage = _new_stage(out, not_in)
            time.sleep(0.01)
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
        return stage
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # Ray's helpers that outlive a killed driver
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_a_prepare_killed_half_way_leaves_the_previous_prep_and_the_next_run_completes(tmp_path, ray_local):
    from raydet.config import PrepareConfig, SynthConfig
    from raydet.ingest.prepare import prepare
    from raydet.ingest.synth import write_synthetic

    data, out = tmp_path / "data", tmp_path / "prep"
    write_synthetic(SynthConfig(out=str(data), images=600, image_size=64))
    # the runs that complete go through this process's Ray (warm: seconds), the ones killed through the real CLI
    first = prepare(PrepareConfig(data=str(data), out=str(out), image_size=256))
    before = tree(out)
    assert first["images_loaded"] == 600 and leftovers(out) == []
    # one more image, so that the PREP of the rerun can be told from the first one
    shutil.copy(data / "JPEGImages" / "000001.jpg", data / "JPEGImages" / "extra.jpg")
    xml = (data / "Annotations" / "000001.xml").read_text().replace("000001.jpg", "extra.jpg")
    (data / "Annotations" / "extra.xml").write_text(xml)

    killed = start_and_stop(data, out, signal.SIGKILL, set())
    assert {k: v for k, v in tree(out).items() if not k.startswith(".")} == before  # the old PREP, byte for byte
    assert leftovers(out) == [killed]  # SIGKILL: nothing could clean up; the next run does

    interrupted = start_and_stop(data, out, signal.SIGINT, {killed})
    assert interrupted != killed
    assert {k: v for k, v in tree(out).items() if not k.startswith(".")} == before
    assert killed not in leftovers(out)  # removed by the interrupted run when it started

    m = prepare(PrepareConfig(data=str(data), out=str(out), image_size=256))
    assert m["images_loaded"] == m["annotations_found"] == 601 and m["skipped"] == []
    assert json.loads((out / MANIFEST).read_text()) == m and leftovers(out) == []
    files = [
        f
        for split in ("train", "test")
        for p in sorted((out / split).glob("*.parquet"))
        for f in pq.read_table(p, columns=["file"]).column("file").to_pylist()
    ]
    assert sorted(files) == sorted([f"JPEGImages/{i:06d}.jpg" for i in range(1, 601)] + ["JPEGImages/extra.jpg"])
    assert sum(m["splits"].values()) == 601


# ------------------------------------------------------------------- a commit cut short at each of its steps

NEW_MANIFEST = hashlib.sha256(b'{\n  "new": true\n}\n').hexdigest()
NEW_TREE = {
    MANIFEST: NEW_MANIFEST,
    "train/part-0000005.parquet": hashlib.sha256(b"new train").hexdigest(),
    "test/part-0000005.parquet": hashlib.sha256(b"new test").hexdigest(),
}


def killed(out) -> None:
    """What SIGKILL does to a prepare: its lock goes with its process, nothing else is cleaned."""

    out.lease.stop.set()
    os.close(out.lease.fd)


def staged(root: Path, filesystem=None):
    from raydet.ingest.prep import Out

    out = open_out(str(root))
    write(Path(out.stage) / "train" / "part-0000005.parquet", "new train")
    write(Path(out.stage) / "test" / "part-0000005.parquet", "new test")
    return out if filesystem is None else Out(filesystem, out.root, out.stage, out.lease)


class Cut(Exception):
    pass


@pytest.mark.parametrize("step", range(6))  # 3 moves of the old PREP aside, then 3 of the new one in
@pytest.mark.parametrize("where", ["before", "after"])
def test_a_commit_killed_at_any_move_is_completed_by_the_next_run(tmp_path, monkeypatch, step, where):
    import raydet.ingest.prep as P

    old_prep(tmp_path / "out")
    out = staged(tmp_path / "out")
    calls, real = [], P._step_move

    def cut(filesystem, src, dst, on_copied):
        calls.append(dst)
        if len(calls) - 1 == step:
            if where == "after":
                real(filesystem, src, dst, on_copied)
            raise Cut(f"killed {where} moving {src}")
        real(filesystem, src, dst, on_copied)

    monkeypatch.setattr(P, "_step_move", cut)
    with pytest.raises(Cut):
        commit(out, {"new": True})
    killed(out)
    monkeypatch.setattr(P, "_step_move", real)
    assert P.recover(out.filesystem, out.root) == "completed"
    assert tree(tmp_path / "out") == NEW_TREE  # the new PREP, whole, and nothing else
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != LEASE) == [MANIFEST, "test", "train"]


def test_a_commit_killed_before_its_journal_keeps_the_previous_prep(tmp_path, monkeypatch):
    import raydet.ingest.prep as P

    before = tree(old_prep(tmp_path / "out"))
    out = staged(tmp_path / "out")

    def no_journal(*args):
        raise Cut("killed before the journal")

    monkeypatch.setattr(P, "_write_journal", no_journal)
    with pytest.raises(Cut):
        commit(out, {"new": True})
    killed(out)
    monkeypatch.undo()
    nxt = open_out(str(tmp_path / "out"))  # the next run: the previous PREP, its leftovers gone
    assert tree(tmp_path / "out") == before and leftovers(tmp_path / "out") == [Path(nxt.stage).name]


def test_a_commit_killed_while_deleting_the_old_prep_is_finished(tmp_path, monkeypatch):
    import raydet.ingest.prep as P

    old_prep(tmp_path / "out")
    out = staged(tmp_path / "out")
    real = P._delete_folder

    def cut(filesystem, path):
        write(Path(path) / "train" / "gone.parquet")
        (Path(path) / "train" / "part-0000000.parquet").unlink()  # half deleted
        raise Cut(f"killed deleting {path}")

    monkeypatch.setattr(P, "_delete_folder", cut)
    with pytest.raises(Cut):
        commit(out, {"new": True})
    killed(out)
    monkeypatch.setattr(P, "_delete_folder", real)
    open_out(str(tmp_path / "out"))
    assert {k: v for k, v in tree(tmp_path / "out").items() if not k.startswith(".")} == NEW_TREE
    assert [p for p in leftovers(tmp_path / "out") if p.startswith(OLD_PREFIX)] == []


@pytest.mark.parametrize("when", ["copying", "deleting"])
def test_a_bucket_commit_killed_mid_copy_or_mid_delete_is_completed(tmp_path, monkeypatch, when):
    """An object store moves a folder by copy, then delete: a half copy is redone, a half delete finished."""
    import raydet.ingest.prep as P

    old_prep(tmp_path / "out")
    out = staged(tmp_path / "out", pafs.PyFileSystem(NoFolderMoves()))
    real = P._move

    def cut(filesystem, src, dst, on_copied):
        if dst.endswith("/train") and STAGING_PREFIX in src:  # the new train/ moving in
            if when == "copying":
                filesystem.create_dir(dst, recursive=True)
                write(Path(dst) / "part-0000005.parquet", "new tr")  # half of it
                raise Cut("killed copying")
            filesystem.create_dir(dst, recursive=True)
            pafs.copy_files(src, dst, source_filesystem=filesystem, destination_filesystem=filesystem)
            on_copied()
            os.remove(Path(src) / "part-0000005.parquet")  # half deleted
            raise Cut("killed deleting")
        real(filesystem, src, dst, on_copied)

    monkeypatch.setattr(P, "_move", cut)
    with pytest.raises(Cut):
        commit(out, {"new": True})
    killed(out)
    monkeypatch.setattr(P, "_move", real)
    assert P.recover(out.filesystem, out.root) == "completed"
    assert tree(tmp_path / "out") == NEW_TREE


def test_discard_after_a_cut_commit_completes_it(tmp_path, monkeypatch):
    """A commit that raises (not killed) is completed by prepare's own clean-up, before it returns."""
    import raydet.ingest.prep as P
    from raydet.ingest.prep import discard

    old_prep(tmp_path / "out")
    out = staged(tmp_path / "out")
    real, calls = P._step_move, []

    def cut(*args):
        calls.append(1)
        if len(calls) == 2:
            raise Cut("disk hiccup")
        real(*args)

    monkeypatch.setattr(P, "_step_move", cut)
    with pytest.raises(Cut):
        commit(out, {"new": True})
    monkeypatch.setattr(P, "_step_move", real)
    discard(out)
    assert tree(tmp_path / "out") == NEW_TREE and not (tmp_path / "out" / LEASE).exists()


# ----------------------------------------------------------------------- two prepares into one --out


@pytest.mark.slow
def test_a_second_prepare_into_the_same_out_refuses_naming_the_holder_and_the_first_finishes(tmp_path):
    import socket

    from raydet.config import SynthConfig
    from raydet.ingest.prep import LEASE
    from raydet.ingest.synth import write_synthetic

    data, out = tmp_path / "data", tmp_path / "prep"
    write_synthetic(SynthConfig(out=str(data), images=300, image_size=64))
    first = subprocess.Popen(
        prepare_args(data, out),
        env=cli_env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / LEASE).is_file() or f'"pid": {first.pid}' not in (out / LEASE).read_text():
            assert first.poll() is None, f"the first prepare ended (rc {first.returncode}) before taking the lease"
            assert time.monotonic() < deadline, "no lease within 120 s"
            time.sleep(0.05)
        t0 = time.monotonic()
        second = subprocess.run(prepare_args(data, out), env=cli_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode != 0
        assert f"host {socket.gethostname()}, pid {first.pid}, since " in second.stderr, second.stderr
        assert time.monotonic() - t0 < 30  # at once: before any Ray start
        assert first.poll() is None or first.returncode == 0  # the second did not disturb the first
        stdout, stderr = first.communicate(timeout=300)
        assert first.returncode == 0, stderr[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        try:
            os.killpg(first.pid, signal.SIGKILL)  # Ray's helpers
        except ProcessLookupError:
            pass
    m = json.loads((out / MANIFEST).read_text())
    assert m["images_loaded"] == m["annotations_found"] == 300
    files = [
        f
        for split in ("train", "test")
        for p in sorted((out / split).glob("*.parquet"))
        for f in pq.read_table(p, columns=["file"]).column("file").to_pylist()
    ]
    assert sorted(files) == [f"JPEGImages/{i:06d}.jpg" for i in range(1, 301)]
    assert leftovers(out) == [] and not (out / LEASE).exists()


def test_a_lease_left_by_a_dead_prepare_is_taken_over(tmp_path):
    import socket

    from raydet.ingest.prep import LEASE, release

    old_prep(tmp_path / "out")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "out" / LEASE).write_text(
        json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "start": 0, "heartbeat": 0, "id": "dead"})
    )
    out = open_out(str(tmp_path / "out"))  # no lock on the file: its holder is gone
    assert json.loads((tmp_path / "out" / LEASE).read_text())["pid"] == os.getpid()
    release(out)
    assert not (tmp_path / "out" / LEASE).exists()


def test_a_bucket_lease_is_refused_while_fresh_and_taken_when_stale(tmp_path, monkeypatch):
    """An object store has no locks: the lease object's heartbeat decides (another host's, here)."""
    import raydet.ingest.prep as P

    fs = pafs.PyFileSystem(NoFolderMoves())  # not a LocalFileSystem: the bucket code path
    root = tmp_path / "out"
    root.mkdir()
    holder = {"host": "elsewhere", "pid": 4242, "start": time.time() - 60, "heartbeat": time.time() - 10, "id": "x"}
    (root / P.LEASE).write_text(json.dumps(holder))
    with pytest.raises(P.LeaseHeld, match=r"host elsewhere, pid 4242, since .*last heartbeat 1\d s ago"):
        P.acquire_lease(fs, str(root), "s3://b/out")
    holder["heartbeat"] = time.time() - P.STALE_S - 1
    (root / P.LEASE).write_text(json.dumps(holder))
    lease = P.acquire_lease(fs, str(root), "s3://b/out")
    assert json.loads((root / P.LEASE).read_text())["id"] == lease.holder["id"]
    P.release_lease(lease)
    assert not (root / P.LEASE).exists()
    # a holder on this host whose process is gone is stale at once, however fresh its heartbeat
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (root / P.LEASE).write_text(
        json.dumps({**holder, "host": socket.gethostname(), "pid": int(dead.stdout), "heartbeat": time.time()})
    )
    P.release_lease(P.acquire_lease(fs, str(root), "s3://b/out"))
