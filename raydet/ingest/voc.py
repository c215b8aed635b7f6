"""Pascal VOC annotations: parse one XML safely into a plain record (raydet.ingest.discovery finds the files).

No Ray, no TensorFlow: this module is pure (defusedxml for parsing), so Ray tasks can call it and tests run
without a cluster.

Parsing (``parse_voc``)
    XML is parsed with defusedxml: a DTD, entity declarations (billion laughs) and external entities are
    refused before anything is expanded, and the annotation is rejected with ``VocError`` naming its source.
    Boxes come out as pixel **xyxy** floats, clipped to ``[0, width] x [0, height]`` when ``<size>`` is known
    (always to >= 0). Objects that cannot be used (no ``<bndbox>``, missing or non-numeric coordinates, a
    coordinate beyond ``MAX_SIDE`` px, an inverted box, after clipping a zero-area box or one under 1 px wide or
    high, a name that is empty once cleaned, a class outside the given list) are dropped with one reason each;
    the rest of the annotation still loads.
    Numbers (coordinates, ``<size>``, flags) are ASCII decimal only (``_DECIMAL``): Arabic-Indic or full-width
    digits, ``8_0``, ``inf``, ``nan`` are no number. A ``<size>`` that is no ASCII decimal number, or absurd
    (non-finite, over ``MAX_SIDE`` px), makes the annotation unusable (``VocError`` naming the text); an absent,
    empty or zero ``<size>`` is unknown (the decoded size is used).
    Class names are cleaned by ``raydet.ingest.classnames.clean_class_name`` (NFC, no zero-width or control characters,
    stripped), both in ``<name>`` and in ``classes``.

Sizes (``fit_to_image``): when ``<size>`` and the decoded image disagree, the boxes are rescaled to the decoded
frame if both axes scale alike (within ``SIZE_TOLERANCE``: the image was resized after labelling); otherwise
(width and height swapped, as when a tool labelled an EXIF-turned view of the photo, or any other mismatch) the
boxes were drawn on another pixel frame and the image cannot be used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as SafeET
import numpy as np

from raydet.detector import boxes as B
from raydet.errors import UserError
from raydet.ingest.classnames import clean_class_name

_COORDS = ("xmin", "ymin", "xmax", "ymax")
# Coordinates and sizes are ASCII decimal numbers ("12", "12.5", "1e3"): Python's float() would also take
# Arabic-Indic or full-width digits, "8_0", "inf" and "nan", none of which an annotation tool writes.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# No image has a side this long (a 1 GP photo is ~40,000 px wide): a <size> or a coordinate beyond it is absurd.
MAX_SIDE = 1_000_000
# Boxes narrower or lower than this (pixels, in the annotation's frame) are no object.
MIN_BOX_PX = 1.0
# <size> and the decoded size may differ by this fraction between the two axes' scales and still be one frame:
# a 1000 x 750 labelled photo saved at 333 x 250 scales by 0.333 and 0.3333 (rounding), a 0.1% difference.
SIZE_TOLERANCE = 0.01
# VOC annotations never need a DTD; refusing it stops billion-laughs and external-entity XML before expansion.
_UNSAFE = {
    "DTDForbidden": "it has a DTD (<!DOCTYPE>), which could declare entities",
    "EntitiesForbidden": "it declares entities",
    "ExternalReferenceForbidden": "it references an external resource",
}


class VocError(UserError):
    """An annotation that cannot be used at all. The message names the file and the reason (a ``UserError``:
    prepare skips the annotation with it; a command that stops on one prints it as bad input)."""


@dataclass(frozen=True)
class VocObject:
    name: str
    box: tuple[float, float, float, float]  # xyxy, pixels, clipped to the image
    difficult: bool = False
    truncated: bool = False


@dataclass(frozen=True)
class VocRecord:
    filename: str  # the <filename> text ('' when absent)
    width: int  # <size>; 0 when absent/invalid (the decoder then supplies the real size)
    height: int
    objects: tuple[VocObject, ...]
    dropped: tuple[str, ...]  # one reason per dropped object, naming it
    unlisted: int = 0  # how many of ``dropped`` were dropped only because their class is not in ``classes``


# --------------------------------------------------------------------------------------------- parsing


def _text(elem: Element | None, tag: str) -> str | None:
    """Stripped text of ``elem/tag``; None when the child is missing or empty."""
    child = None if elem is None else elem.find(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip() or None


def _decimal(text: str) -> float | None:
    """``text`` as a float when it is an ASCII decimal number (``_DECIMAL``), else None."""
    return float(text) if _DECIMAL.fullmatch(text) else None


def _size(root: Element, tag: str, where: str) -> int:
    """A ``<size>`` dimension as a positive int ("650.0" -> 650), 0 when absent or below 1 (unknown: the decoded
    size is used). ``VocError`` naming the text when it is no ASCII decimal number or absurd (non-finite, or over
    ``MAX_SIDE`` px): the whole annotation is skipped, as its boxes' frame is unknown."""
    text = _text(root.find("size"), tag)
    if text is None:
        return 0
    value = _decimal(text)
    if value is None:
        raise VocError(f"{where}: <size> {tag}={text!r} is not a decimal number")
    if not math.isfinite(value) or value > MAX_SIDE:
        raise VocError(f"{where}: absurd <size> {tag}={text!r} (over {MAX_SIDE:,} px a side)")
    return int(value) if value >= 1 else 0


def _flag(obj: Element, tag: str) -> bool:
    """``<difficult>1</difficult>`` -> True; absent, 0 or junk -> False."""
    text = _text(obj, tag)
    if text is None:
        return False
    value = _decimal(text)
    return value != 0 if value is not None else text.lower() in ("true", "yes")


def _box(obj: Element, width: int, height: int) -> tuple[tuple[float, float, float, float] | None, str]:
    """The object's pixel xyxy box, clipped; or (None, reason) when it cannot be used."""
    bndbox = obj.find("bndbox")
    if bndbox is None:
        return None, "no <bndbox>"
    values = []
    for tag in _COORDS:
        text = _text(bndbox, tag)
        if text is None:
            return None, f"missing {tag}"
        value = _decimal(text)
        if value is None or not math.isfinite(value):  # "1e999" is decimal but infinite
            return None, f"non-numeric {tag}={text!r} (coordinates are ASCII decimal numbers)"
        if abs(value) > MAX_SIDE:
            return None, f"{tag}={text} lies outside the image (beyond {MAX_SIDE:,} px, larger than any image)"
        values.append(value)
    x0, y0, x1, y1 = values
    if x0 > x1:
        return None, f"inverted box xmin={_num(x0)} > xmax={_num(x1)}"
    if y0 > y1:
        return None, f"inverted box ymin={_num(y0)} > ymax={_num(y1)}"
    # The upper bound is known only with <size>; negative pixels are outside every image.
    clipped = B.clip(np.array(values), width or math.inf, height or math.inf)
    if B.area(clipped) <= 0:
        where = f" after clipping to {width}x{height}" if width and height else ""
        return None, f"zero-area box{where} ({_coords(values)})"
    w, h = float(clipped[2] - clipped[0]), float(clipped[3] - clipped[1])
    if w < MIN_BOX_PX or h < MIN_BOX_PX:
        where = f" after clipping to {width}x{height}" if width and height else ""
        return None, f"box under 1 px ({w:g} x {h:g} px{where}; {_coords(values)})"
    return tuple(float(v) for v in clipped), ""


def _num(value: float) -> str:
    """12.0 -> '12', 12.5 -> '12.5': coordinates in messages as the annotator wrote them."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _coords(values: Sequence[float]) -> str:
    """The four coordinates for a message: ``xmin=1, ymin=2, xmax=3, ymax=4``."""
    return ", ".join(f"{tag}={_num(v)}" for tag, v in zip(_COORDS, values, strict=True))


def parse_voc(data: bytes, classes: Sequence[str] | None = None, *, source: str = "") -> VocRecord:
    """One VOC XML document -> ``VocRecord`` with pixel xyxy boxes (clipped to ``<size>`` when known).

    ``classes``: when given, objects whose (stripped) name is not in it are dropped with a reason (and counted
    in ``unlisted``: unlike the other dropped objects, they are no fault of the annotation).
    ``source``: the file name used in messages. Raises ``VocError`` naming ``source`` for XML that cannot be
    used at all: malformed, not an ``<annotation>``, or carrying a DTD/entities/external references.
    """
    where = source or "<annotation>"
    try:
        root = SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as exc:
        what = _UNSAFE.get(type(exc).__name__, type(exc).__name__)
        raise VocError(f"{where}: unsafe XML refused: {what} ({exc})") from None
    except ParseError as exc:
        raise VocError(f"{where}: malformed XML ({exc})") from None
    if root.tag != "annotation":
        raise VocError(f"{where}: root element is <{root.tag}>, not <annotation>")
    width, height = _size(root, "width", where), _size(root, "height", where)
    if not (width and height):
        width = height = 0  # half a size is no size: do not clip against it
    wanted = None if classes is None else frozenset(clean_class_name(c) for c in classes)
    objects: list[VocObject] = []
    dropped: list[str] = []
    unlisted = 0
    for index, obj in enumerate(root.findall("object"), start=1):
        raw = _text(obj, "name")
        name = clean_class_name(raw) if raw is not None else None
        label = f"object {index} {name!r}" if name else f"object {index}"
        if raw is None:
            dropped.append(f"{label}: no <name>")
            continue
        if not name:
            dropped.append(f"{label}: <name> {raw!r} is empty once invisible and control characters are removed")
            continue
        if wanted is not None and name not in wanted:
            dropped.append(f"{label}: class not in the class list")
            unlisted += 1
            continue
        box, reason = _box(obj, width, height)
        if box is None:
            dropped.append(f"{label}: {reason}")
            continue
        objects.append(VocObject(name, box, difficult=_flag(obj, "difficult"), truncated=_flag(obj, "truncated")))
    return VocRecord(_text(root, "filename") or "", width, height, tuple(objects), tuple(dropped), unlisted)


def normalize_boxes(record: VocRecord, width: int, height: int) -> np.ndarray:
    """The record's boxes as ``(N, 4)`` float32 **normalized xyxy** in [0, 1] for an image of ``width`` x
    ``height`` pixels (the decoded size, which wins over ``<size>``). ``(0, 4)`` when there are no objects."""
    if not record.objects:
        return np.zeros((0, 4), np.float32)
    pixel = np.array([o.box for o in record.objects], dtype=np.float64)
    return np.clip(B.normalize_xyxy(pixel, width, height), 0.0, 1.0).astype(np.float32)


def fit_to_image(record: VocRecord, width: int, height: int) -> tuple[VocRecord | None, str]:
    """``record`` (pixel xyxy boxes in its ``<size>`` frame) -> the record in the decoded ``width`` x ``height``
    frame, and a message.

    - ``<size>`` absent or equal to the decoded size: ``(record, "")``.
    - both axes scale by the same factor, within ``SIZE_TOLERANCE``: ``(record with every box scaled per axis and
      width/height set to the decoded size, note)``, the note naming both sizes.
    - anything else, width and height swapped included: ``(None, reason)`` naming both sizes.
    """
    w, h = record.width, record.height
    if not (w and h) or (w, h) == (width, height):
        return record, ""
    sx, sy = width / w, height / h
    if abs(sx - sy) <= SIZE_TOLERANCE * max(sx, sy):
        objects = tuple(
            replace(o, box=(o.box[0] * sx, o.box[1] * sy, o.box[2] * sx, o.box[3] * sy)) for o in record.objects
        )
        return (
            replace(record, width=width, height=height, objects=objects),
            f"boxes rescaled from <size> {w}x{h} to decoded {width}x{height}",
        )
    turned = abs(width / h - height / w) <= SIZE_TOLERANCE * max(width / h, height / w)
    why = (
        "width and height swapped: labelled on a turned view, e.g. after EXIF rotation"
        if turned
        else "not the same frame at another scale"
    )
    return None, f"<size> {w}x{h} disagrees with the decoded {width}x{height} image ({why}); boxes cannot be trusted"
