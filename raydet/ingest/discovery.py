"""Finding a VOC dataset on any filesystem: its layout, its annotations and images, and reading them safely.

No Ray, no TensorFlow (pyarrow.fs for listing), so the driver and Ray tasks call it alike; raydet.ingest.voc parses
what it finds.

Discovery (``discover``): the layouts, tried in this order on the listing of the root (names compared
case-insensitively, files and folders starting with ``.`` ignored, e.g. macOS ``._x.xml`` forks):
    1. **devkit**: ``Annotations/*.xml`` and ``JPEGImages/``. The split comes from
       ``ImageSets/Main/{train,val,trainval,test}.txt`` (first token of each line is an image id = the XML's
       stem): train/val/trainval -> "train", test -> "test" (test wins if an id is listed in both); an id in
       none, or a devkit without these files -> None (the caller then makes its own split).
    2. **paired**: ``annotations/`` or ``annots/`` beside ``images/`` (as labelImg writes). No split.
    3. **train_test**: ``train/`` and ``test/`` folders, each a flat or paired folder; the split is the folder.
    4. **flat**: ``*.xml`` in the root itself; images are looked for beside them. No split.
    5. Otherwise, if exactly one sub-folder (up to two levels down, e.g. ``VOCdevkit/VOC2007``) is a devkit,
       that devkit, with paths still relative to the given root.
Listing is one ``get_file_info(FileSelector(folder))`` per folder; no annotation is read on the driver
(XML parsing happens later, in Ray tasks). Local paths and URIs (``file://``, ``s3://``, ``gs://``) go through
the same pyarrow filesystem code.

Symlinks (local filesystems only; object stores have none): nothing whose real path (``os.path.realpath``)
leaves the real path of the dataset root is read. A folder that does is not listed (nothing under it is found);
a file that does is listed but refused when read (``read_file`` raises ``VocError`` "symlink leaves the dataset
root", naming the file and where it points), so the annotation that needs it is skipped with that reason. Both
are listed in ``Dataset.refused``. Symlinks that stay inside the root work as plain files and folders.

Reading (``read_file``): a file over ``max_bytes`` is refused from its size (the open file's, before any byte
is read), naming the file, its size and the limit.

Images (``resolve_image``): the ``<filename>`` inside the annotation's image folder (exact, then ignoring case
and Unicode normalization), else that name's stem, else the XML's stem, with any image extension (any case). A
``<filename>`` that is no file of the folder and would leave it, read as a POSIX or a Windows path (absolute, a
drive letter, a ``..`` component), is refused, whether or not an image would have been found.

File names: only ``/`` separates. A backslash, a colon or a drive-like prefix is an ordinary character of a
POSIX or object-store name (``back\\slash.xml``, ``c:colon.xml``); only a path that would leave the dataset root
(absolute, a ``..`` component, NUL, a symlink out) is refused.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from raydet.cluster import storage
from raydet.errors import UserError, UserFileNotFoundError, UserNotADirectoryError
from raydet.ingest.voc import VocError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")  # lower-case
ANNOTATION_EXTENSION = ".xml"
LAYOUTS = ("devkit", "paired", "flat", "train_test")
# ImageSets/Main files -> the split their ids belong to; later entries win (so "test" beats "train").
SPLIT_FILES = (("train", "train"), ("val", "train"), ("trainval", "train"), ("test", "test"))


@dataclass(frozen=True)
class AnnotationRef:
    annotation: str  # path of the XML relative to the dataset root, posix
    image_dir: str  # folder (relative to root, '' for the root itself) where its image should be
    split: str | None  # "train"/"test" when the dataset defines it, else None


def _join(*parts: str) -> str:
    return posixpath.join(*[p for p in parts if p])


def _checked_relpath(relpath: str) -> str:
    """A posix path relative to the dataset root; ``VocError`` for one that would leave it: absolute, with a
    ``..`` component, or holding NUL. Only ``/`` separates: ``back\\slash.xml`` and ``c:colon.xml`` are plain
    file names on POSIX filesystems and object stores, inside the root."""
    if relpath.startswith("/") or ".." in relpath.split("/") or "\x00" in relpath:
        raise VocError(f"path traversal refused: {relpath!r}")
    return relpath


def _windows_relpath(text: str) -> str:
    """A ``<filename>`` read as a Windows path too (annotation tools on Windows write ``..\\img.jpg``, ``C:\\x.jpg``):
    ``VocError`` when it would leave the image folder there (a drive, a leading separator, a ``..``)."""
    path = text.replace("\\", "/")
    if re.match(r"^[A-Za-z]:", path):
        raise VocError(f"path traversal refused: {text!r}")
    return _checked_relpath(path)


def _outside(filesystem: pafs.FileSystem, root: str, path: str) -> str | None:
    """Where ``path`` really is when that is outside the real path of ``root``, else None. Only a local
    filesystem has symlinks; on any other this is always None."""
    if not isinstance(filesystem, pafs.LocalFileSystem):
        return None
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    return None if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep) else real


def _leaves_root(relpath: str, target: str) -> str:
    return f"{relpath}: symlink leaves the dataset root (points to {target})"


def read_file(
    filesystem: pafs.FileSystem, root: str, relpath: str, max_bytes: int | None = None, limit_name: str = ""
) -> bytes:
    """Bytes of ``root/relpath`` on ``filesystem`` (picklable arguments: usable inside a Ray task).

    Raises ``VocError`` naming ``relpath`` for a symlink whose target leaves ``root`` (module docstring), and for
    a file over ``max_bytes`` bytes (named ``limit_name`` in the message), which is refused from the open file's
    size before any byte is read. ``OSError`` when the file is missing or unreadable.
    """
    path = _join(root, _checked_relpath(relpath))
    target = _outside(filesystem, root, path)
    if target is not None:
        raise VocError(_leaves_root(relpath, target))
    with filesystem.open_input_file(path) as file:
        size = file.size()
        if max_bytes is not None and size > max_bytes:
            named = f" ({limit_name})" if limit_name else ""
            raise VocError(f"{relpath}: file of {size:,} bytes is over the limit of {max_bytes:,} bytes{named}")
        return file.read()


@dataclass(frozen=True)
class Dataset:
    filesystem: pafs.FileSystem
    root: str  # root path inside that filesystem
    layout: str  # "devkit" | "paired" | "flat" | "train_test"
    annotations: tuple[AnnotationRef, ...]  # sorted by path
    image_files: Mapping[str, frozenset[str]] = field(compare=False)  # image_dir -> image names in it
    unlabeled_images: tuple[str, ...] = ()  # images (relative paths) whose stem no annotation in their folder has
    source: str = ""  # the path or URI given to discover()
    refused: tuple[tuple[str, str], ...] = ()  # (relative path, reason): symlinks that leave the root, never read

    def read(self, relpath: str) -> bytes:
        """Bytes of a file under the root (``relpath`` posix, relative; ``..`` refused)."""
        return read_file(self.filesystem, self.root, relpath)

    def image_names(self, ref: AnnotationRef) -> frozenset[str]:
        """Names of the image files in ``ref``'s image folder (what ``resolve_image`` needs)."""
        return self.image_files.get(ref.image_dir, frozenset())


def open_filesystem(uri_or_path: str) -> tuple[pafs.FileSystem, str]:
    """``file://``, ``s3://``, ``gs://``... URI or local path -> (pyarrow filesystem, path inside it).

    Raises ``FileNotFoundError`` naming ``uri_or_path`` when nothing is there, ``ValueError`` for a URI
    pyarrow cannot open.
    """
    if not uri_or_path:
        raise UserError("dataset path is empty")
    filesystem, path = storage.resolve(uri_or_path)
    path = path or "/"
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        raise UserFileNotFoundError(f"dataset not found: {uri_or_path}")
    return filesystem, path


@dataclass
class _Listing:
    """One folder's direct children: sub-folder names by case-folded name, and file names."""

    dirs: dict[str, str]
    files: list[str]


def _symlinks(filesystem: pafs.FileSystem, path: str) -> frozenset[str]:
    """Names of the symlinks directly in folder ``path`` (one ``os.scandir``; none off a local filesystem)."""
    if not isinstance(filesystem, pafs.LocalFileSystem):
        return frozenset()
    try:
        with os.scandir(path) as entries:
            return frozenset(e.name for e in entries if e.is_symlink())
    except OSError:
        return frozenset()


@dataclass
class _Tree:
    """The dataset root while discovery lists it, and the symlinks it refused: relative path -> reason."""

    filesystem: pafs.FileSystem
    root: str
    refused: dict[str, str] = field(default_factory=dict)

    def list(self, relpath: str) -> _Listing:
        """The direct children of ``root/relpath``, hidden names left out. A child that is a symlink leaving the
        root is recorded in ``refused``; a folder among them is also left out (so nothing under it is read)."""
        path = _join(self.root, relpath)
        infos = self.filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
        links = _symlinks(self.filesystem, path)
        dirs: dict[str, str] = {}
        files: list[str] = []
        for info in infos:
            name = info.base_name
            if not name or name.startswith("."):
                continue
            target = _outside(self.filesystem, self.root, info.path) if name in links else None
            if target is not None:
                self.refused[_join(relpath, name)] = _leaves_root(_join(relpath, name), target)
            if info.type == pafs.FileType.Directory and target is None:
                dirs.setdefault(name.casefold(), name)
            elif info.type == pafs.FileType.File:
                files.append(name)  # read_file refuses it, so whatever needs it is skipped with the reason
        return _Listing(dirs, sorted(files))

    def read(self, relpath: str) -> bytes:
        return read_file(self.filesystem, self.root, relpath)


def _suffix(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def _xml_names(listing: _Listing) -> list[str]:
    return [n for n in listing.files if _suffix(n) == ANNOTATION_EXTENSION]


def _image_names(listing: _Listing) -> frozenset[str]:
    return frozenset(n for n in listing.files if _suffix(n) in IMAGE_EXTENSIONS)


@dataclass
class _Found:
    """What one layout found, paths relative to the dataset root."""

    layout: str
    annotations: list[AnnotationRef]
    image_files: dict[str, frozenset[str]]


def _read_splits(tree: _Tree, main_dir: str) -> dict[str, str]:
    """ImageSets/Main/{train,val,trainval,test}.txt -> {image id: "train" | "test"}."""
    listing = tree.list(main_dir)
    by_name = {n.casefold(): n for n in listing.files}
    split_of: dict[str, str] = {}
    for stem, split in SPLIT_FILES:
        name = by_name.get(f"{stem}.txt")
        if name is None:
            continue
        try:
            text = tree.read(_join(main_dir, name)).decode("utf-8", errors="replace")
        except (VocError, OSError):  # a symlink out of the root (in tree.refused) or unreadable: no split from it
            continue
        for line in text.splitlines():
            tokens = line.split()
            if tokens:
                split_of[tokens[0]] = split
    return split_of


def _devkit(tree: _Tree, base: str, listing: _Listing) -> _Found | None:
    """``base`` (relative to root) as a VOC devkit, or None when it is not one."""
    ann, img = listing.dirs.get("annotations"), listing.dirs.get("jpegimages")
    if ann is None or img is None:
        return None
    ann_dir, img_dir = _join(base, ann), _join(base, img)
    xmls = _xml_names(tree.list(ann_dir))
    split_of: dict[str, str] = {}
    sets = listing.dirs.get("imagesets")
    if sets is not None:
        main = tree.list(_join(base, sets)).dirs.get("main")
        if main is not None:
            split_of = _read_splits(tree, _join(base, sets, main))
    refs = [AnnotationRef(_join(ann_dir, x), img_dir, split_of.get(posixpath.splitext(x)[0])) for x in xmls]
    return _Found("devkit", refs, {img_dir: _image_names(tree.list(img_dir))})


def _paired(tree: _Tree, base: str, listing: _Listing, split: str | None) -> _Found | None:
    ann = listing.dirs.get("annotations") or listing.dirs.get("annots")
    img = listing.dirs.get("images")
    if ann is None or img is None:
        return None
    ann_dir, img_dir = _join(base, ann), _join(base, img)
    xmls = _xml_names(tree.list(ann_dir))
    refs = [AnnotationRef(_join(ann_dir, x), img_dir, split) for x in xmls]
    return _Found("paired", refs, {img_dir: _image_names(tree.list(img_dir))})


def _flat(base: str, listing: _Listing, split: str | None) -> _Found | None:
    xmls = _xml_names(listing)
    if not xmls:
        return None
    refs = [AnnotationRef(_join(base, x), base, split) for x in xmls]
    return _Found("flat", refs, {base: _image_names(listing)})


def _train_test(tree: _Tree, listing: _Listing) -> _Found | None:
    if "train" not in listing.dirs or "test" not in listing.dirs:
        return None
    refs: list[AnnotationRef] = []
    images: dict[str, frozenset[str]] = {}
    for split in ("train", "test"):
        base = listing.dirs[split]
        sub = tree.list(base)
        found = _paired(tree, base, sub, split) or _flat(base, sub, split)
        if found is not None:
            refs += found.annotations
            images.update(found.image_files)
    return _Found("train_test", refs, images) if refs else None


def _detect(tree: _Tree, listing: _Listing) -> _Found | None:
    """The root's layout, trying them in the documented order."""
    return (
        _devkit(tree, "", listing)
        or _paired(tree, "", listing, None)
        or _train_test(tree, listing)
        or _flat("", listing, None)
    )


def _nested_devkit(tree: _Tree, listing: _Listing, base: str = "", depth: int = 2) -> list[_Found]:
    """Devkits in sub-folders of ``base``, up to ``depth`` levels down (``VOC2007/``, ``VOCdevkit/VOC2012/``)."""
    found: list[_Found] = []
    for name in sorted(listing.dirs.values()):
        sub_base = _join(base, name)
        sub = tree.list(sub_base)
        kit = _devkit(tree, sub_base, sub)
        if kit is not None:
            found.append(kit)
        elif depth > 1:
            found += _nested_devkit(tree, sub, sub_base, depth - 1)
    return found


def _unlabeled(found: _Found) -> tuple[str, ...]:
    stems: dict[str, set[str]] = {}
    for ref in found.annotations:
        stems.setdefault(ref.image_dir, set()).add(posixpath.splitext(posixpath.basename(ref.annotation))[0])
    return tuple(
        sorted(
            _join(d, n)
            for d, names in found.image_files.items()
            for n in names
            if posixpath.splitext(n)[0] not in stems.get(d, ())
        )
    )


def discover(uri_or_path: str) -> Dataset:
    """Find the annotations and images of a VOC dataset (layouts in the module docstring).

    Raises ``FileNotFoundError`` naming the path when it is missing, ``ValueError`` naming it when no
    annotation is found (or several nested devkits make the choice ambiguous; the symlinks refused are named).
    """
    filesystem, root = open_filesystem(uri_or_path)
    if filesystem.get_file_info(root).type != pafs.FileType.Directory:
        raise UserNotADirectoryError(f"dataset must be a folder: {uri_or_path}")
    tree = _Tree(filesystem, root)
    listing = tree.list("")
    found = _detect(tree, listing)
    if found is None:
        kits = _nested_devkit(tree, listing)
        if len(kits) > 1:
            names = ", ".join(posixpath.dirname(k.annotations[0].annotation) if k.annotations else "?" for k in kits)
            raise UserError(f"several VOC devkits under {uri_or_path} ({names}): point raydet at one of them")
        found = kits[0] if kits else None
    if found is None or not found.annotations:
        refused = "".join(f"; refused: {reason}" for reason in tree.refused.values())
        raise UserError(
            f"no VOC annotations found in {uri_or_path}: expected Annotations/ + JPEGImages/ (devkit), "
            f"annotations/ or annots/ beside images/, train/ + test/ folders, or *.xml beside the images{refused}"
        )
    return Dataset(
        filesystem,
        root,
        found.layout,
        tuple(sorted(found.annotations, key=lambda r: r.annotation)),
        dict(found.image_files),
        _unlabeled(found),
        uri_or_path,
        tuple(sorted(tree.refused.items())),
    )


# -------------------------------------------------------------------------------------------- images


def _key(name: str) -> str:
    """Comparison key: NFC (macOS stores names decomposed) and case-folded."""
    return unicodedata.normalize("NFC", name).casefold()


@functools.lru_cache(maxsize=16)
def _index(names: frozenset[str]) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Built once per folder (a frozenset caches its hash): key(name) -> name, and key(stem) -> image names."""
    by_name: dict[str, str] = {}
    by_stem: dict[str, list[str]] = {}
    for name in sorted(names):
        by_name.setdefault(_key(name), name)
        stem, ext = posixpath.splitext(name)
        if ext.lower() in IMAGE_EXTENSIONS:
            by_stem.setdefault(_key(stem), []).append(name)
    return by_name, {k: tuple(v) for k, v in by_stem.items()}


def resolve_image(dataset_or_names: Dataset | Collection[str], ref: AnnotationRef, filename: str) -> str:
    """The image of annotation ``ref`` as a posix path relative to the dataset root.

    ``dataset_or_names``: the ``Dataset``, or just the names of the files in ``ref.image_dir`` (a frozenset
    from ``Dataset.image_files``: pure, no filesystem access, cheap to ship to a Ray task).
    ``filename``: the record's ``<filename>``. Order: that name in ``ref.image_dir`` (exactly, then ignoring
    case and Unicode normalization); else its stem with any image extension (any case); else the XML's stem
    with any image extension, preferring the extension of ``<filename>``. Raises ``VocError`` "path traversal refused"
    for an absolute ``<filename>`` or one with ``..``, and "image not found" when nothing matches.
    """
    if isinstance(dataset_or_names, Dataset):
        names = dataset_or_names.image_names(ref)
    else:
        names = dataset_or_names if isinstance(dataset_or_names, frozenset) else frozenset(dataset_or_names)
    filename = filename.strip()
    by_name, by_stem = _index(names)
    if filename and "/" not in filename:  # a file of the folder by that very name is inside the root, whatever it holds
        if filename in names:
            return _join(ref.image_dir, filename)
        if _key(filename) in by_name:
            return _join(ref.image_dir, by_name[_key(filename)])
    try:
        _checked_relpath(filename)
        relative = _windows_relpath(filename)
    except VocError:
        raise VocError(f"path traversal refused: {ref.annotation}: <filename> {filename!r}") from None
    stem = posixpath.splitext(posixpath.basename(ref.annotation))[0]
    # "IMG_1" or "IMG_1.jpg" written for IMG_1.jpeg: the filename's own stem, then the XML's
    named_stem = posixpath.splitext(relative)[0] if relative and "/" not in relative else ""
    candidates = (named_stem and by_stem.get(_key(named_stem), ())) or by_stem.get(_key(stem), ())
    if candidates:
        wanted = _suffix(relative)
        return _join(ref.image_dir, next((c for c in candidates if _suffix(c) == wanted), candidates[0]))
    raise VocError(
        f"image not found: {ref.annotation}: no {filename!r} and no {stem}.<image extension> in {ref.image_dir or '.'}/"
    )


def unreferenced_images(dataset: Dataset, used: Collection[str]) -> tuple[str, ...]:
    """Images of the dataset (relative paths) not in ``used`` (the resolved images of the loaded annotations):
    the exact unlabeled list once every ``<filename>`` is known, where ``Dataset.unlabeled_images`` goes by stem."""
    used_set = set(used)
    return tuple(
        sorted(p for d, names in dataset.image_files.items() for n in names if (p := _join(d, n)) not in used_set)
    )
