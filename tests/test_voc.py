"""raydet.voc: safe parsing of hostile annotations, layout discovery, image resolution. No Ray needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raydet import voc
from raydet.voc import AnnotationRef, VocError, discover, parse_voc, resolve_image


def xml(objects: str = "", *, filename: str = "a.jpg", size: str = "<size><width>100</width><height>50</height><depth>3</depth></size>") -> bytes:
    return f"<annotation><folder>images</folder><filename>{filename}</filename>{size}{objects}</annotation>".encode()


def obj(name: str = "cat", box: str = "<bndbox><xmin>10</xmin><ymin>5</ymin><xmax>30</xmax><ymax>25</ymax></bndbox>",
        extra: str = "") -> str:
    return f"<object><name>{name}</name>{extra}{box}</object>"


def bb(x0, y0, x1, y1) -> str:
    return f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"


# ----------------------------------------------------------------------------------------------- parse

def test_parse_plain_labelimg_record():
    rec = parse_voc(xml(obj(" cat ", extra="<pose>Unspecified</pose><truncated>1</truncated><difficult>0</difficult>")))
    assert rec.filename == "a.jpg" and (rec.width, rec.height) == (100, 50)
    assert rec.objects == (voc.VocObject("cat", (10.0, 5.0, 30.0, 25.0), difficult=False, truncated=True),)
    assert rec.dropped == ()


def test_float_coordinates_are_accepted():
    rec = parse_voc(xml(obj(box=bb("12.5", "3.25", "40.75", "20"))))
    assert rec.objects[0].box == (12.5, 3.25, 40.75, 20.0)


def test_out_of_bounds_coordinates_are_clipped_to_the_image():
    # image 100 x 50: xmin -7 -> 0, ymax 80 -> 50, xmax 130 -> 100; ymin 10 stays
    rec = parse_voc(xml(obj(box=bb(-7, 10, 130, 80))))
    assert rec.objects[0].box == (0.0, 10.0, 100.0, 50.0)
    assert rec.dropped == ()


def test_without_size_only_negative_coordinates_are_clipped():
    rec = parse_voc(xml(obj(box=bb(-4, 2, 900, 700)), size=""))
    assert (rec.width, rec.height) == (0, 0)
    assert rec.objects[0].box == (0.0, 2.0, 900.0, 700.0)


def test_box_entirely_outside_the_image_is_dropped_as_zero_area():
    # x from 120 to 150 on a 100 px wide image: clipped to 100..100, area 0
    rec = parse_voc(xml(obj("dog", bb(120, 10, 150, 20))))
    assert rec.objects == ()
    assert rec.dropped == ("object 1 'dog': zero-area box after clipping to 100x50 (xmin=120, ymin=10, xmax=150, ymax=20)",)


@pytest.mark.parametrize("box, reason", [
    ("", "no <bndbox>"),
    (bb(50, 5, 10, 25), "inverted box xmin=50 > xmax=10"),
    (bb(5, 30, 10, 25), "inverted box ymin=30 > ymax=25"),
    (bb("ten", 5, 30, 25), "non-numeric xmin='ten'"),
    (bb(10, 5, "nan", 25), "non-numeric xmax='nan'"),
    ("<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax></bndbox>", "missing ymax"),
    (bb(10, 5, 10, 25), "zero-area box after clipping to 100x50"),
])
def test_unusable_object_is_dropped_with_a_reason_and_the_rest_loads(box, reason):
    rec = parse_voc(xml(obj("cat") + obj("dog", box)), source="x.xml")
    assert [o.name for o in rec.objects] == ["cat"]
    assert len(rec.dropped) == 1 and rec.dropped[0].startswith(f"object 2 'dog': {reason}")


def test_unknown_class_is_dropped_when_a_class_list_is_given():
    rec = parse_voc(xml(obj("cat") + obj("zebra") + obj("dog")), classes=["cat", "dog"])
    assert [o.name for o in rec.objects] == ["cat", "dog"]
    assert rec.dropped == ("object 2 'zebra': class not in the class list",)
    assert len(parse_voc(xml(obj("zebra"))).objects) == 1  # no list: every class is kept


def test_objects_dropped_for_their_class_are_counted_apart_from_invalid_ones():
    # zebra and emu: outside the list (unlisted 2); dog: inverted box, invalid whatever the list
    rec = parse_voc(xml(obj("zebra") + obj("dog", bb(30, 5, 10, 25)) + obj("emu")), classes=["cat", "dog"])
    assert rec.objects == () and len(rec.dropped) == 3 and rec.unlisted == 2
    assert parse_voc(xml(obj("dog", bb(30, 5, 10, 25)))).unlisted == 0
    assert parse_voc(xml(obj("cat"))).unlisted == 0


def test_object_without_name_is_dropped():
    rec = parse_voc(xml("<object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"))
    assert rec.objects == () and rec.dropped == ("object 1: no <name>",)


def test_bad_size_counts_as_unknown():
    rec = parse_voc(xml(obj(), size="<size><width>abc</width><height>50</height></size>"))
    assert (rec.width, rec.height) == (0, 0) and len(rec.objects) == 1


def test_malformed_xml_names_the_file():
    with pytest.raises(VocError, match=r"broken\.xml: malformed XML"):
        parse_voc(b"<annotation><object><name>cat</name></annotation>", source="broken.xml")
    with pytest.raises(VocError, match=r"empty\.xml: malformed XML"):
        parse_voc(b"", source="empty.xml")
    with pytest.raises(VocError, match=r"not-voc\.xml: root element is <svg>"):
        parse_voc(b"<svg/>", source="not-voc.xml")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE annotation [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<annotation><filename>&lol9;</filename></annotation>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<annotation><filename>&secret;</filename></annotation>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE annotation SYSTEM "http://example.com/evil.dtd">
<annotation><filename>a.jpg</filename></annotation>"""


@pytest.mark.parametrize("data", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD], ids=["billion-laughs", "external-entity", "external-dtd"])
def test_entity_and_dtd_attacks_are_refused_without_expansion(data):
    with pytest.raises(VocError, match=r"evil\.xml: unsafe XML refused") as info:
        parse_voc(data, source="evil.xml")
    assert "lol" not in str(info.value) and "root:" not in str(info.value)  # nothing was expanded into the message


def test_normalize_boxes():
    rec = parse_voc(xml(obj(box=bb(10, 5, 30, 25)) + obj(box=bb(0, 0, 100, 50))))
    # 100 x 50 image: (10/100, 5/50, 30/100, 25/50) = (0.1, 0.1, 0.3, 0.5)
    np.testing.assert_allclose(voc.normalize_boxes(rec, 100, 50), [[0.1, 0.1, 0.3, 0.5], [0, 0, 1, 1]], rtol=1e-6)
    assert voc.normalize_boxes(parse_voc(xml()), 100, 50).shape == (0, 4)


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
    assert resolve_image(frozenset({"IMG_1.jpeg", "ann_1.jpg"}), AnnotationRef("ann_1.xml", "", None), "IMG_1") == "IMG_1.jpeg"
    assert resolve_image(frozenset({"IMG_1.jpeg"}), AnnotationRef("ann_1.xml", "", None), "img_1.jpg") == "IMG_1.jpeg"


def test_resolve_matches_decomposed_unicode_names():
    decomposed = "n\u0303andu\u0301 1.jpg"  # macOS stores "ñandú" as n + combining tilde ...
    assert resolve_image(frozenset({decomposed}), REF, "ñandú 1.jpg") == f"images/{decomposed}"


@pytest.mark.parametrize("filename", ["../../etc/passwd", "/etc/passwd", "..\\..\\secret.jpg", "C:\\x.jpg", "sub/../../a.jpg"])
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
        ("Annotations/000001.xml", "JPEGImages", "train"), ("Annotations/000002.xml", "JPEGImages", "train"),
        ("Annotations/000003.xml", "JPEGImages", "test"), ("Annotations/000004.xml", "JPEGImages", None)]
    assert ds.unlabeled_images == ("JPEGImages/000099.jpg",)
    assert resolve_image(ds, ds.annotations[0], "000001.jpg") == "JPEGImages/000001.jpg"


def test_devkit_nested_one_level_down_keeps_paths_relative_to_the_root(tmp_path):
    touch(tmp_path / "VOCdevkit" / "VOC2007" / "Annotations" / "a.xml", xml())
    touch(tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages" / "a.jpg")
    ds = discover(str(tmp_path))
    assert ds.layout == "devkit"
    assert ds.annotations == (AnnotationRef("VOCdevkit/VOC2007/Annotations/a.xml", "VOCdevkit/VOC2007/JPEGImages", None),)
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
    assert ds.annotations == (AnnotationRef("test/b.xml", "test", "test"), AnnotationRef("train/a.xml", "train", "train"))
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
    assert voc.unreferenced_images(ds, images) == ()


# ------------------------------------------------------------------------------------ <size> vs decoded

def sized(w: int, h: int, *boxes: tuple[float, float, float, float]) -> voc.VocRecord:
    objects = "".join(obj("cat", bb(*b)) for b in boxes)
    return parse_voc(xml(objects, size=f"<size><width>{w}</width><height>{h}</height></size>"))


def test_fit_to_image_keeps_an_equal_or_absent_size():
    rec = sized(100, 50, (10, 5, 30, 25))
    assert voc.fit_to_image(rec, 100, 50) == (rec, "")
    unsized = parse_voc(xml(obj(), size=""))
    assert voc.fit_to_image(unsized, 640, 480) == (unsized, "")  # no <size>: the decoded size is all there is


def test_fit_to_image_rescales_a_proportionally_resized_image():
    rec = sized(1000, 750, (100, 50, 300, 250), (0, 0, 1000, 750))
    fitted, note = voc.fit_to_image(rec, 500, 375)
    # 1000 x 750 -> 500 x 375: both axes x 0.5, so (100, 50, 300, 250) -> (50, 25, 150, 125)
    assert [o.box for o in fitted.objects] == [(50.0, 25.0, 150.0, 125.0), (0.0, 0.0, 500.0, 375.0)]
    assert (fitted.width, fitted.height) == (500, 375)
    assert note == "boxes rescaled from <size> 1000x750 to decoded 500x375"


def test_fit_to_image_tolerates_rounding_of_the_resized_size():
    # 1000 x 750 saved at 333 x 250: x scales by 0.333, y by 0.33333 (0.1% apart, within 1%), each axis its own
    fitted, note = voc.fit_to_image(sized(1000, 750, (300, 150, 600, 450)), 333, 250)
    np.testing.assert_allclose(fitted.objects[0].box, (300 * 0.333, 150 / 3, 600 * 0.333, 450 / 3), rtol=1e-9)
    assert "rescaled" in note


@pytest.mark.parametrize("decoded,why", [
    ((750, 1000), "width and height swapped"),  # 4:3 labelled, 3:4 stored: another pixel frame
    ((375, 500), "width and height swapped"),  # swapped and halved
    ((500, 500), "not the same frame at another scale"),  # x 0.5, y 0.667
    ((1000, 760), "not the same frame at another scale"),  # y 1.3% off: beyond the 1% tolerance
])
def test_fit_to_image_refuses_any_other_mismatch_naming_both_sizes(decoded, why):
    fitted, reason = voc.fit_to_image(sized(1000, 750, (100, 50, 300, 250)), *decoded)
    assert fitted is None
    assert reason.startswith(f"<size> 1000x750 disagrees with the decoded {decoded[0]}x{decoded[1]} image (")
    assert why in reason and reason.endswith("boxes cannot be trusted")


# ---------------------------------------------------------------------------------- reading: size, links

def test_read_file_refuses_a_file_over_the_limit_from_its_size(tmp_path):
    touch(tmp_path / "small.xml", b"x" * 100)
    assert len(voc.read_file(voc.pafs.LocalFileSystem(), str(tmp_path), "small.xml", 100)) == 100
    with pytest.raises(VocError, match=r"^small.xml: file of 100 bytes is over the limit of 99 bytes \(--max-xml-bytes\)$"):
        voc.read_file(voc.pafs.LocalFileSystem(), str(tmp_path), "small.xml", 99, "--max-xml-bytes")
    # 8 GiB, sparse (no disk used): read whole it would need 8 GiB of memory; refused from its size instead
    with open(tmp_path / "huge.jpg", "wb") as f:
        f.truncate(8 * 2**30)
    with pytest.raises(VocError, match=r"huge.jpg: file of 8,589,934,592 bytes is over the limit of 1,048,576 bytes"):
        voc.read_file(voc.pafs.LocalFileSystem(), str(tmp_path), "huge.jpg", 2**20)


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
        ("images/b.jpg", f"images/b.jpg: symlink leaves the dataset root (points to {real}/secret.jpg)"))
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
    with pytest.raises(ValueError, match=r"no VOC annotations found .*; refused: VOC2007: symlink leaves the dataset root"):
        discover(str(tmp_path / "data"))
