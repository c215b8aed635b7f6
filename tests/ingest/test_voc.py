"""raydet.ingest.voc: safe parsing of hostile annotations and fitting boxes to the decoded size. No Ray needed."""

from __future__ import annotations

import numpy as np
import pytest
from voc_xml import bb, obj, xml

from raydet.ingest import voc
from raydet.ingest.voc import VocError, parse_voc

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
    assert rec.dropped == (
        "object 1 'dog': zero-area box after clipping to 100x50 (xmin=120, ymin=10, xmax=150, ymax=20)",
    )


@pytest.mark.parametrize(
    "box, reason",
    [
        ("", "no <bndbox>"),
        (bb(50, 5, 10, 25), "inverted box xmin=50 > xmax=10"),
        (bb(5, 30, 10, 25), "inverted box ymin=30 > ymax=25"),
        (bb("ten", 5, 30, 25), "non-numeric xmin='ten'"),
        (bb(10, 5, "nan", 25), "non-numeric xmax='nan'"),
        ("<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax></bndbox>", "missing ymax"),
        (bb(10, 5, 10, 25), "zero-area box after clipping to 100x50"),
    ],
)
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


def test_absent_or_zero_size_counts_as_unknown():
    rec = parse_voc(xml(obj(), size="<size><width></width><height>50</height></size>"))
    assert (rec.width, rec.height) == (0, 0) and len(rec.objects) == 1
    rec = parse_voc(xml(obj(), size="<size><width>0</width><height>0</height></size>"))
    assert (rec.width, rec.height) == (0, 0) and len(rec.objects) == 1


@pytest.mark.parametrize(
    "width, reason",
    [
        ("abc", "x.xml: <size> width='abc' is not a decimal number"),
        ("\u0666\u0664\u0660", "x.xml: <size> width='\u0666\u0664\u0660' is not a decimal number"),  # Arabic-Indic 640
        ("\uff16\uff14\uff10", "x.xml: <size> width='\uff16\uff14\uff10' is not a decimal number"),  # full-width 640
        ("6_40", "x.xml: <size> width='6_40' is not a decimal number"),
        ("inf", "x.xml: <size> width='inf' is not a decimal number"),
        ("3.2e307", "x.xml: absurd <size> width='3.2e307' (over 1,000,000 px a side)"),
        ("1e400", "x.xml: absurd <size> width='1e400' (over 1,000,000 px a side)"),
        ("1000001", "x.xml: absurd <size> width='1000001' (over 1,000,000 px a side)"),
    ],
)
def test_a_size_that_is_no_ascii_decimal_or_absurd_skips_the_annotation_naming_the_text(width, reason):
    with pytest.raises(VocError) as info:
        parse_voc(xml(obj(), size=f"<size><width>{width}</width><height>50</height></size>"), source="x.xml")
    assert str(info.value) == reason


@pytest.mark.parametrize("text", ["\u0661\u0660", "\uff11\uff10", "1_0", "\u0969", " 1 0", "0x10", "1e", ".", "+-1"])
def test_coordinates_are_ascii_decimal_only(text):
    rec = parse_voc(xml(obj("cat") + obj("dog", bb(text, 5, 30, 25))), source="x.xml")
    assert [o.name for o in rec.objects] == ["cat"]
    assert rec.dropped == (
        f"object 2 'dog': non-numeric xmin={text.strip()!r} (coordinates are ASCII decimal numbers)",
    )


def test_ascii_decimal_forms_are_accepted():
    for text, value in (("+12", 12.0), ("12.", 12.0), (".5", 0.5), ("1e1", 10.0), ("1.5E+1", 15.0)):
        assert parse_voc(xml(obj(box=bb(text, 5, 30, 25)))).objects[0].box[0] == value


def test_a_box_under_one_pixel_is_dropped_with_that_reason():
    rec = parse_voc(xml(obj("cat") + obj("dog", bb(10, 5, "10.000000001", 25)) + obj("emu", bb(10, 5, 30, "5.5"))))
    assert [o.name for o in rec.objects] == ["cat"]
    assert rec.dropped[0].startswith("object 2 'dog': box under 1 px (1e-09 x 20 px after clipping to 100x50; xmin=10")
    assert rec.dropped[1].startswith("object 3 'emu': box under 1 px (20 x 0.5 px after clipping to 100x50; ")
    assert len(parse_voc(xml(obj(box=bb(10, 5, 11, 6)))).objects) == 1  # exactly 1 px: kept


def test_a_huge_box_without_size_is_outside_the_image_not_a_whole_image_box():
    rec = parse_voc(xml(obj("cat", bb(0, 0, "1e308", "1e308")) + obj("dog"), size=""), source="x.xml")
    assert [o.name for o in rec.objects] == ["dog"]
    assert rec.dropped == (
        "object 1 'cat': xmax=1e308 lies outside the image (beyond 1,000,000 px, larger than any image)",
    )
    fitted, _ = voc.fit_to_image(rec, 640, 480)
    np.testing.assert_allclose(
        voc.normalize_boxes(fitted, 640, 480), [[10 / 640, 5 / 480, 30 / 640, 25 / 480]], rtol=1e-6
    )


def test_flags_are_ascii_decimal_too():
    assert parse_voc(xml(obj(extra="<difficult>1</difficult>"))).objects[0].difficult
    assert not parse_voc(xml(obj(extra="<difficult>\u0661</difficult>"))).objects[0].difficult


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


@pytest.mark.parametrize(
    "data", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD], ids=["billion-laughs", "external-entity", "external-dtd"]
)
def test_entity_and_dtd_attacks_are_refused_without_expansion(data):
    with pytest.raises(VocError, match=r"evil\.xml: unsafe XML refused") as info:
        parse_voc(data, source="evil.xml")
    assert "lol" not in str(info.value) and "root:" not in str(info.value)  # nothing was expanded into the message


def test_normalize_boxes():
    rec = parse_voc(xml(obj(box=bb(10, 5, 30, 25)) + obj(box=bb(0, 0, 100, 50))))
    # 100 x 50 image: (10/100, 5/50, 30/100, 25/50) = (0.1, 0.1, 0.3, 0.5)
    np.testing.assert_allclose(voc.normalize_boxes(rec, 100, 50), [[0.1, 0.1, 0.3, 0.5], [0, 0, 1, 1]], rtol=1e-6)
    assert voc.normalize_boxes(parse_voc(xml()), 100, 50).shape == (0, 4)


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


@pytest.mark.parametrize(
    "decoded,why",
    [
        ((750, 1000), "width and height swapped"),  # 4:3 labelled, 3:4 stored: another pixel frame
        ((375, 500), "width and height swapped"),  # swapped and halved
        ((500, 500), "not the same frame at another scale"),  # x 0.5, y 0.667
        ((1000, 760), "not the same frame at another scale"),  # y 1.3% off: beyond the 1% tolerance
    ],
)
def test_fit_to_image_refuses_any_other_mismatch_naming_both_sizes(decoded, why):
    fitted, reason = voc.fit_to_image(sized(1000, 750, (100, 50, 300, 250)), *decoded)
    assert fitted is None
    assert reason.startswith(f"<size> 1000x750 disagrees with the decoded {decoded[0]}x{decoded[1]} image (")
    assert why in reason and reason.endswith("boxes cannot be trusted")


# ------------------------------------------------------------------------------------------ class names


def test_nfc_and_nfd_spellings_are_one_class():
    rec = parse_voc(xml(obj("carr\u00e9") + obj("carre\u0301")))
    assert [o.name for o in rec.objects] == ["carr\u00e9", "carr\u00e9"]
    assert len(parse_voc(xml(obj("carre\u0301")), classes=["carr\u00e9"]).objects) == 1


def test_zero_width_and_control_characters_are_removed():
    names = [
        "square",
        "square\u200b",
        "\ufeffsquare",
        "squ\u2060are\u200d",
        "squ\x85are",
        "\tsquare\n",
        "\u200csquare ",
    ]
    rec = parse_voc(xml("".join(obj(n) for n in names)))
    assert {o.name for o in rec.objects} == {"square"} and len(rec.objects) == len(names)
    assert len(parse_voc(xml(obj("square")), classes=["square\u200b"]).objects) == 1


def test_a_name_of_only_invisible_characters_drops_the_object():
    rec = parse_voc(xml(obj("cat") + obj("\u200b\u200b")))
    assert [o.name for o in rec.objects] == ["cat"]
    assert rec.dropped == (
        "object 2: <name> '\\u200b\\u200b' is empty once invisible and control characters are removed",
    )


def test_case_is_kept():
    rec = parse_voc(xml(obj("Cat") + obj("cat")))
    assert [o.name for o in rec.objects] == ["Cat", "cat"]  # two classes (tests/ingest/test_classnames.py lists them)
