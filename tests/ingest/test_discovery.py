"""raydet.ingest.discovery: layouts, image resolution, safe reading (size limits, symlinks). No Ray needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from voc_xml import obj, xml

from raydet.ingest import discovery
from raydet.ingest.discovery import AnnotationRef, discover, read_file, resolve_image
from raydet.ingest.voc import VocError, parse_voc

# ----------------------------------------------------------------------------------------- image lookup

REF = AnnotationRef("annotations/ñandú 1.xml", "images", None)


def test_resolve_by_filename_then_stem_with_any_extension_case():
    names = frozenset({"ñandú 1.JPG", "other.png", "b.jpeg"})
    assert resolve_image(names, REF, "ñandú 1.jpg") == "images/ñandú 1.JPG"  # case-insensitive name match
    assert resolve_image(names, AnnotationRef("ann/b.xml", "images", None), "b.jpeg") == "images/b.jpeg"
    # <filename> names a file that is not there: the XML's stem with another extension is used
    assert resolve_image(names, REF, "IMG_0001.jpg") == "images/ñandú 1.JPG"
    assert resolve_image(frozenset({"x.png"}), AnnotationRef("x.xml", "", None), "") == "x.png"
    assert resolve_image(frozenset({"x.png", "x.jpg"}), AnnotationRef("x.xml", "", None), "x.PNG") == "x.png"
    # <filename> without its extension, or with another one, and an XML named differently
    assert (
        resolve_image(frozenset({"IMG_1.jpeg", "ann_1.jpg"}), AnnotationRef("ann_1.xml", "", None), "IMG_1")
        == "IMG_1.jpeg"
    )
    assert resolve_image(frozenset({"IMG_1.jpeg"}), AnnotationRef("ann_1.xml", "", None), "img_1.jpg") == "IMG_1.jpeg"


def test_resolve_matches_decomposed_unicode_names():
    decomposed = "n\u0303andu\u0301 1.jpg"  # macOS stores "ñandú" as n + combining tilde ...
    assert resolve_image(frozenset({decomposed}), REF, "ñandú 1.jpg") == f"images/{decomposed}"


@pytest.mark.parametrize(
    "filename", ["../../etc/passwd", "/etc/passwd", "..\\..\\secret.jpg", "C:\\x.jpg", "sub/../../a.jpg"]
)
def test_path_traversal_in_filename_is_refused_even_if_the_stem_would_match(filename):
    with pytest.raises(VocError, match="path traversal refused"):
        resolve_image(frozenset({"ñandú 1.jpg"}), REF, filename)


def test_missing_image_is_reported():
    with pytest.raises(VocError, match=r"image not found: annotations/ñandú 1\.xml"):
        resolve_image(frozenset({"other.jpg", "ñandú 1.txt"}), REF, "ñandú 1.jpg")


# ------------------------------------------------------------------------------------------- discovery


def touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_devkit_layout_with_split_files(tmp_path):
    for stem in ("000001", "000002", "000003", "000004"):
        touch(tmp_path / "Annotations" / f"{stem}.xml", xml(obj(), filename=f"{stem}.jpg"))
        touch(tmp_path / "JPEGImages" / f"{stem}.jpg")
    touch(tmp_path / "JPEGImages" / "000099.jpg")  # no annotation
    touch(tmp_path / "ImageSets" / "Main" / "train.txt", b"000001\n")
    touch(tmp_path / "ImageSets" / "Main" / "val.txt", b"000002\n")
    touch(tmp_path / "ImageSets" / "Main" / "test.txt", b"000003\n\n")
    touch(tmp_path / "ImageSets" / "Main" / "cat_train.txt", b"000004  1\n")  # per-class file: not a split
    ds = discover(str(tmp_path))
    assert ds.layout == "devkit"
    assert [(r.annotation, r.image_dir, r.split) for r in ds.annotations] == [
        ("Annotations/000001.xml", "JPEGImages", "train"),
        ("Annotations/000002.xml", "JPEGImages", "train"),
        ("Annotations/000003.xml", "JPEGImages", "test"),
        ("Annotations/000004.xml", "JPEGImages", None),
    ]
    assert ds.unlabeled_images == ("JPEGImages/000099.jpg",)
    assert resolve_image(ds, ds.annotations[0], "000001.jpg") == "JPEGImages/000001.jpg"


def test_devkit_nested_one_level_down_keeps_paths_relative_to_the_root(tmp_path):
    touch(tmp_path / "VOCdevkit" / "VOC2007" / "Annotations" / "a.xml", xml())
    touch(tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages" / "a.jpg")
    ds = discover(str(tmp_path))
    assert ds.layout == "devkit"
    assert ds.annotations == (
        AnnotationRef("VOCdevkit/VOC2007/Annotations/a.xml", "VOCdevkit/VOC2007/JPEGImages", None),
    )
    assert resolve_image(ds, ds.annotations[0], "a.jpg") == "VOCdevkit/VOC2007/JPEGImages/a.jpg"
    assert ds.read("VOCdevkit/VOC2007/Annotations/a.xml") == xml()


def test_two_nested_devkits_are_ambiguous(tmp_path):
    for kit in ("VOC2007", "VOC2012"):
        touch(tmp_path / kit / "Annotations" / "a.xml", xml())
        (tmp_path / kit / "JPEGImages").mkdir()
    with pytest.raises(ValueError, match="several VOC devkits"):
        discover(str(tmp_path))


def test_paired_layout_any_case_with_non_ascii_names(tmp_path):
    touch(tmp_path / "Annots" / "ñandú 1.xml", xml(filename="ñandú 1.jpg"))
    touch(tmp_path / "Annots" / "._ñandú 1.xml", b"\x00\x05")  # macOS fork: ignored
    touch(tmp_path / "Images" / "ñandú 1.jpg")
    touch(tmp_path / "Images" / "notes.txt")  # not an image
    ds = discover(str(tmp_path))
    assert ds.layout == "paired"
    assert ds.annotations == (AnnotationRef("Annots/ñandú 1.xml", "Images", None),)
    assert ds.image_files == {"Images": frozenset({"ñandú 1.jpg"})}
    rec = parse_voc(ds.read(ds.annotations[0].annotation))
    assert resolve_image(ds, ds.annotations[0], rec.filename) == "Images/ñandú 1.jpg"


def test_flat_layout(tmp_path):
    touch(tmp_path / "b.xml", xml(filename="b.jpg"))
    touch(tmp_path / "b.PNG")
    touch(tmp_path / "lonely.jpg")
    ds = discover(str(tmp_path))
    assert ds.layout == "flat"
    assert ds.annotations == (AnnotationRef("b.xml", "", None),)
    assert resolve_image(ds, ds.annotations[0], "b.jpg") == "b.PNG"  # stem fallback, other extension
    assert ds.unlabeled_images == ("lonely.jpg",)


def test_train_test_layout_takes_the_split_from_the_folder(tmp_path):
    touch(tmp_path / "train" / "a.xml", xml(filename="a.jpg"))
    touch(tmp_path / "train" / "a.jpg")
    touch(tmp_path / "test" / "b.xml", xml(filename="b.jpg"))
    touch(tmp_path / "test" / "b.jpg")
    ds = discover(str(tmp_path))
    assert ds.layout == "train_test"
    assert ds.annotations == (
        AnnotationRef("test/b.xml", "test", "test"),
        AnnotationRef("train/a.xml", "train", "train"),
    )
    assert resolve_image(ds, ds.annotations[1], "a.jpg") == "train/a.jpg"


def test_file_uri_goes_through_pyarrow_filesystems(tmp_path):
    folder = tmp_path / "my set"  # a space: percent-encoded for pyarrow
    touch(folder / "annotations" / "a.xml", xml())
    touch(folder / "images" / "a.jpg", b"jpeg")
    ds = discover(f"file://{folder}")
    assert ds.layout == "paired" and ds.root == str(folder)
    assert ds.read("images/a.jpg") == b"jpeg"
    with pytest.raises(VocError, match="path traversal refused"):
        ds.read("../../etc/passwd")


def test_missing_path_and_empty_folder_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        discover(str(missing))
    with pytest.raises(FileNotFoundError, match="nope"):
        discover(f"file://{missing}")
    empty = tmp_path / "empty"
    empty.mkdir()
    touch(empty / "images" / "a.jpg")
    with pytest.raises(ValueError, match=f"no VOC annotations found in {empty}"):
        discover(str(empty))


def test_real_raccoon_set(raccoon_dir):
    ds = discover(str(raccoon_dir))
    assert ds.layout == "paired" and len(ds.annotations) == 200
    assert ds.unlabeled_images == ()
    images = set()
    for ref in ds.annotations:
        rec = parse_voc(ds.read(ref.annotation), source=ref.annotation)
        assert rec.objects and not rec.dropped
        images.add(resolve_image(ds, ref, rec.filename))
    assert len(images) == 200  # every annotation has its own photo
    assert discovery.unreferenced_images(ds, images) == ()


# ---------------------------------------------------------------------------------- reading: size, links


def test_read_file_refuses_a_file_over_the_limit_from_its_size(tmp_path):
    touch(tmp_path / "small.xml", b"x" * 100)
    assert len(discovery.read_file(discovery.pafs.LocalFileSystem(), str(tmp_path), "small.xml", 100)) == 100
    with pytest.raises(
        VocError, match=r"^small.xml: file of 100 bytes is over the limit of 99 bytes \(--max-xml-bytes\)$"
    ):
        discovery.read_file(discovery.pafs.LocalFileSystem(), str(tmp_path), "small.xml", 99, "--max-xml-bytes")
    # 8 GiB, sparse (no disk used): read whole it would need 8 GiB of memory; refused from its size instead
    with open(tmp_path / "huge.jpg", "wb") as f:
        f.truncate(8 * 2**30)
    with pytest.raises(VocError, match=r"huge.jpg: file of 8,589,934,592 bytes is over the limit of 1,048,576 bytes"):
        discovery.read_file(discovery.pafs.LocalFileSystem(), str(tmp_path), "huge.jpg", 2**20)


def test_symlinks_leaving_the_root_are_refused_and_those_inside_work(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    touch(outside / "secret.jpg", b"not yours")
    touch(outside / "more" / "x.xml", xml(obj(), filename="x.jpg"))
    touch(root / "inside" / "real.jpg", b"fine")
    for stem in ("a", "b", "c"):
        touch(root / "annotations" / f"{stem}.xml", xml(obj(), filename=f"{stem}.jpg"))
    touch(root / "images" / "a.jpg", b"jpg")
    (root / "images" / "b.jpg").symlink_to(outside / "secret.jpg")  # a file out of the root
    (root / "images" / "c.jpg").symlink_to(Path("..") / "inside" / "real.jpg")  # stays inside: works
    (root / "annotations" / "more").symlink_to(outside / "more")  # a folder out of the root
    (root / "ImageSets").symlink_to(outside)  # another folder out of the root
    ds = discover(str(root))
    assert ds.layout == "paired"
    assert [r.annotation for r in ds.annotations] == ["annotations/a.xml", "annotations/b.xml", "annotations/c.xml"]
    real = str(outside.resolve())
    assert ds.refused == (
        ("ImageSets", f"ImageSets: symlink leaves the dataset root (points to {real})"),
        ("annotations/more", f"annotations/more: symlink leaves the dataset root (points to {real}/more)"),
        ("images/b.jpg", f"images/b.jpg: symlink leaves the dataset root (points to {real}/secret.jpg)"),
    )
    assert ds.read("images/c.jpg") == b"fine" and ds.read("images/a.jpg") == b"jpg"
    with pytest.raises(VocError, match=r"^images/b.jpg: symlink leaves the dataset root \(points to .*secret.jpg\)$"):
        ds.read("images/b.jpg")


def test_a_dataset_root_that_is_itself_a_symlink_still_reads(tmp_path):
    touch(tmp_path / "real" / "a.xml", xml(obj()))
    touch(tmp_path / "real" / "a.jpg", b"jpg")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    ds = discover(str(tmp_path / "link"))
    assert ds.refused == () and ds.read("a.jpg") == b"jpg"


def test_no_annotations_error_names_the_refused_links(tmp_path):
    touch(tmp_path / "elsewhere" / "a.xml", xml(obj()))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "VOC2007").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(
        ValueError, match=r"no VOC annotations found .*; refused: VOC2007: symlink leaves the dataset root"
    ):
        discover(str(tmp_path / "data"))


def test_backslash_and_colon_are_plain_characters_of_file_names(tmp_path):
    # Legal POSIX names inside the root: only "/" separates, and "c:" is no drive on POSIX or in a bucket.
    for stem in ("back\\slash", "c:colon"):
        touch(tmp_path / "annotations" / f"{stem}.xml", xml(obj(), filename=f"{stem}.jpg"))
        touch(tmp_path / "images" / f"{stem}.jpg", stem.encode())
    ds = discover(str(tmp_path))
    assert [r.annotation for r in ds.annotations] == ["annotations/back\\slash.xml", "annotations/c:colon.xml"]
    for ref, stem in zip(ds.annotations, ("back\\slash", "c:colon"), strict=True):
        record = parse_voc(read_file(ds.filesystem, ds.root, ref.annotation), source=ref.annotation)
        image = resolve_image(ds, ref, record.filename)
        assert image == f"images/{stem}.jpg"
        assert ds.read(image) == stem.encode()
    assert ds.unlabeled_images == ()
