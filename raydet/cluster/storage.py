"""Where raydet's folders live: a local path or a URI (``s3://``, ``gs://``, ``file://``...), one API for both.

Every folder a command reads or writes (the dataset, PREP, RUNS/RUN) goes through these functions, built on
pyarrow's filesystems, so a bucket works wherever a local folder does. Credentials and endpoint come from the
filesystem's standard environment: for S3 ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` and
``AWS_ENDPOINT_URL`` (MinIO, Ceph, moto and other S3-compatible stores), for GCS the application default
credentials. Ray's tasks and workers get the same variables (a local Ray inherits the driver's environment;
on a cluster, set them on the nodes or in the job's runtime env).

Paths here are strings: a local path is made absolute (posix), a URI keeps its scheme (``file://`` URIs are
local paths). Tools that only take local files (Keras, the TFLite converter, LiteRT) work on a local copy:
:func:`local_copy` fetches what they read and sends back what they wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import tempfile
import urllib.parse
from pathlib import Path

import pyarrow
import pyarrow.fs as pafs

from raydet.errors import UserError, UserFileNotFoundError


def is_uri(location: str | os.PathLike) -> bool:
    """True for a remote URI (``s3://``, ``gs://``, ...); False for a local path or a ``file://`` URI."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def normalize(location: str | os.PathLike) -> str:
    """A location as raydet stores it: a local path absolute and posix (``file://`` URIs become paths), a
    remote URI without a trailing slash."""
    text = str(location)
    if text.startswith("file://"):
        text = urllib.parse.unquote(urllib.parse.urlparse(text).path)
    if is_uri(text):
        return text.rstrip("/")
    return posixpath.abspath(text.replace("\\", "/"))


def join(location: str | os.PathLike, *parts: str) -> str:
    """``location`` (path or URI) with ``parts`` appended, posix style."""
    return posixpath.join(normalize(location), *parts)


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Path or URI -> (pyarrow filesystem, path inside it). ValueError naming the location when pyarrow cannot
    open it (unknown scheme, bad URI)."""
    text = normalize(location)
    if not is_uri(text):
        return pafs.LocalFileSystem(), text
    try:
        filesystem, path = pafs.FileSystem.from_uri(text)
    except pyarrow.ArrowInvalid:
        try:  # "s3://bucket/my set" is what people type; pyarrow wants it percent-encoded
            filesystem, path = pafs.FileSystem.from_uri(urllib.parse.quote(text, safe=":/%@?&=+~#!$,;"))
        except pyarrow.ArrowInvalid as exc:
            raise UserError(f"cannot open {location!r}: {exc}") from None
    return filesystem, path.rstrip("/")


def kind(location: str | os.PathLike) -> str:
    """ "file", "dir" or "none" for what is at ``location``."""
    filesystem, path = resolve(location)
    info = filesystem.get_file_info(path)
    return {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}.get(info.type, "none")


def exists(location: str | os.PathLike) -> bool:
    return kind(location) != "none"


def read_bytes(location: str | os.PathLike) -> bytes:
    """The whole file at ``location``; FileNotFoundError naming it when there is none."""
    filesystem, path = resolve(location)
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        raise UserFileNotFoundError(f"no file at {location}")
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def read_text(location: str | os.PathLike) -> str:
    return read_bytes(location).decode("utf-8")


def read_json_object(location: str | os.PathLike) -> dict:
    """A JSON file that must hold an object -> that dict; a one-line UserError naming the file when it is not
    valid JSON or not an object."""
    try:
        value = json.loads(read_text(location))
    except json.JSONDecodeError as exc:
        raise UserError(f"{location}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise UserError(f"{location}: expected a JSON object, got {value!r}")
    return value


def write_bytes(location: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``location`` whole: locally through a temporary file renamed into place (a reader never
    sees half a file); an object store's PUT is atomic by itself."""
    filesystem, path = resolve(location)
    filesystem.create_dir(posixpath.dirname(path), recursive=True)
    if isinstance(filesystem, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{os.getpid()}"
        Path(tmp).write_bytes(data)
        os.replace(tmp, path)
        return
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def write_text(location: str | os.PathLike, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def delete_dir(location: str | os.PathLike) -> None:
    """Delete the folder at ``location`` and everything under it; nothing when there is none."""
    filesystem, path = resolve(location)
    if filesystem.get_file_info(path).type == pafs.FileType.Directory:
        filesystem.delete_dir(path)


def move(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename a file or folder (paths or URIs on one filesystem): :func:`move_on`."""
    filesystem, src = resolve(source)
    _, dst = resolve(target)
    move_on(filesystem, src, dst)


def move_on(filesystem: pafs.FileSystem, src: str, dst: str) -> None:
    """``src`` -> ``dst`` (absent) on ``filesystem``: a rename locally and for a file; a folder elsewhere is copied,
    then deleted (an object store cannot rename keys, and pyarrow moves single objects only)."""
    if isinstance(filesystem, pafs.LocalFileSystem) or filesystem.get_file_info(src).type != pafs.FileType.Directory:
        filesystem.move(src, dst)
        return
    filesystem.create_dir(dst, recursive=True)
    pafs.copy_files(src, dst, source_filesystem=filesystem, destination_filesystem=filesystem)
    filesystem.delete_dir(src)


def list_files(location: str | os.PathLike) -> list[str]:
    """Paths, relative to ``location`` and posix, of every file under it (recursive, sorted); [] when absent."""
    filesystem, root = resolve(location)
    infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    # By prefix, not posixpath.relpath: that calls os.getcwd() for a bucket's relative keys, which fails in a folder
    # since deleted (a Ray job's working dir that its node cleaned up).
    prefix = root.rstrip("/") + "/"
    return sorted(i.path.removeprefix(prefix) for i in infos if i.type == pafs.FileType.File)


def _copy_file(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str) -> None:
    dst_fs.create_dir(posixpath.dirname(dst), recursive=True)
    pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)


def download(location: str | os.PathLike, local_dir: Path, names: list[str] | None = None) -> list[str]:
    """Copy the files under ``location`` (or only ``names``, relative paths, those that exist) into
    ``local_dir``; -> the relative paths copied."""
    filesystem, root = resolve(location)
    present = set(list_files(location))
    wanted = sorted(present if names is None else present & set(names))
    for name in wanted:
        _copy_file(filesystem, f"{root}/{name}", pafs.LocalFileSystem(), str(local_dir / name))
    return wanted


def upload(local_dir: Path, location: str | os.PathLike, names: list[str]) -> None:
    """Copy ``names`` (relative paths under ``local_dir``) to the same paths under ``location``."""
    filesystem, root = resolve(location)
    for name in names:
        _copy_file(pafs.LocalFileSystem(), str(local_dir / name), filesystem, f"{root}/{name}")


def _signature(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder).as_posix()): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


@contextlib.contextmanager
def local_copy(location: str | os.PathLike, fetch: list[str] | None = None):
    """A local folder standing for ``location``: the folder itself when it is local; for a URI a temporary
    folder holding ``fetch`` (relative paths; None: every file), whose new or changed files are uploaded
    back when the block ends without an error (a failed command sends nothing back), then deleted.

    Yields a ``Path``; FileNotFoundError naming ``location`` when a URI has no folder there."""
    if not is_uri(location):
        yield Path(normalize(location))
        return
    if kind(location) != "dir":
        raise UserFileNotFoundError(f"{location} does not exist (no folder there)")
    tmp = Path(tempfile.mkdtemp(prefix="raydet-copy-"))
    try:
        download(location, tmp, fetch)
        before = _signature(tmp)
        yield tmp
        after = _signature(tmp)
        upload(tmp, location, sorted(name for name, sig in after.items() if before.get(name) != sig))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def local_file(location: str | os.PathLike, folder: Path) -> Path:
    """A local path of the file at ``location``: itself when local, else a copy downloaded into ``folder``."""
    if not is_uri(location):
        return Path(normalize(location))
    target = folder / posixpath.basename(normalize(location))
    filesystem, path = resolve(location)
    _copy_file(filesystem, path, pafs.LocalFileSystem(), str(target))
    return target


def mtime(location: str | os.PathLike) -> float | None:
    """Modification time (seconds since the epoch) of the file at ``location``; None when there is none."""
    filesystem, path = resolve(location)
    info = filesystem.get_file_info(path)
    return info.mtime.timestamp() if info.type == pafs.FileType.File and info.mtime is not None else None


def size(location: str | os.PathLike) -> int:
    """Bytes of the file at ``location``; FileNotFoundError naming it when there is none."""
    filesystem, path = resolve(location)
    info = filesystem.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise UserFileNotFoundError(f"no file at {location}")
    return int(info.size)
