"""Decode one encoded image and resize it to the square the network sees. No Ray, no TensorFlow.

Decisions, and why:
- **JPEG through libjpeg-turbo at reduced scale** (``simplejpeg``): libjpeg-turbo's DCT scaling decodes at any
  of its factors 1/8, 2/8, ... 7/8 straight into RGB, at the smallest scale that still gives at least ``size``
  pixels on each side, so a photo is never decoded in full and never upsampled from a reduced decode. Then
  OpenCV's area filter shrinks it (the right antialiasing filter for shrinking; bilinear where it grows).
  Pillow's ``draft`` offers only 1/2, 1/4 and 1/8, which a typical 500 x 375 photo at 224 px cannot use
  (docs/INGEST.md, "JPEG decode", compares the two; ``benchmarks/ingest.py`` prints the rate of this function).
- **Everything else through Pillow**: PNG, BMP, GIF, TIFF, WebP, CMYK/YCCK JPEGs (Pillow handles Adobe's
  inverted CMYK), and any JPEG that libjpeg-turbo calls damaged (Pillow then names the damage). Pillow's
  ``draft`` still reduces large JPEGs on this path, then a bilinear resize (which widens its support when
  shrinking, so it antialiases too; ``reducing_gap=3`` box-reduces far larger images first).
- **EXIF orientation is NOT applied.** labelImg (Qt's ``QImage``, which does not auto-rotate) and the VOC
  ``<size>`` element describe the stored pixel frame, so rotating the pixels would move every box away from
  its object. Pixels are used exactly as stored; ``exif_orientation`` reads the tag from the header so that
  ``raydet prepare`` can list the photos a viewer would show turned (docs/INGEST.md).
- **Only the formats named here are opened** (``ACCEPTED_FORMATS``, passed to Pillow as ``formats=``): Pillow
  would otherwise also open EPS/PostScript (by running Ghostscript on the file) and dozens of rarer formats,
  each a decoder an untrusted file can reach. A file in another format is refused naming it, from Pillow's
  signature checks alone (no decoder of that format runs).
- **Every mode becomes RGB.** L, 1, P, CMYK, YCbCr and LAB convert directly; modes with alpha (RGBA, LA, PA,
  P with a transparent colour) are composited on white, so transparent areas do not turn into whatever colour
  the encoder left under them; 16-bit greyscale (``I;16*``, ``I``) is scaled down by 257 (65535 -> 255),
  because Pillow's own conversion saturates every value above 255.
- **Decompression bombs** are refused from the header size, before any pixel is decoded: a PNG that claims
  50,000 x 50,000 pixels costs a few bytes to make and 7.5 GB to decode. The limit is a pixel count
  (``MAX_PIXELS``, ``--max-pixels``), not a byte count: a 14 KB 1-bit PNG can hold 81 megapixels.
- **One decode path**: ``raydet prepare`` (``decode_resize``), ``raydet predict`` (``decode_resize`` for the
  model, ``decode_rgb`` for the drawing) and the drawings of ``raydet evaluate`` and ``raydet report`` (dataset
  files read back through ``decode_rgb``) all go through these checks and decoders, so a file one of them
  accepts, the others accept too.
- Every failure is an :class:`ImageError` whose message says what is wrong (empty, not an image, truncated,
  too large), so a pipeline can skip the file and report the reason.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from raydet.ingest import heavy

# Pixels an image may have (width x height, read from its header before any pixel is decoded); ``--max-pixels``
# of ``raydet prepare`` and ``raydet predict``. 100 megapixels is above any camera photo (a 61 MP full-frame
# sensor, a 100 MP medium-format back) and bounds what one decode costs: at most
# ``DECODE_BYTES_PER_PIXEL`` bytes a pixel, 2 GB at this limit (docs/INGEST.md, memory).
MAX_PIXELS = 100_000_000
# Peak memory growth of one decode per pixel of the stored image, the worst mode measured (docs/INGEST.md): an
# 88-megapixel RGBA or LA PNG, composited on white, +1.69 GiB = 20 bytes a pixel (16-bit greyscale 14, a
# palette PNG with transparency 17, float TIFF 17, 1-bit PNG 5 when resized, RGB JPEG 3 at full size).
DECODE_BYTES_PER_PIXEL = 20
# Pillow refuses (DecompressionBombError, from Image.open and some decoders) any image over twice its
# Image.MAX_IMAGE_PIXELS (178,956,970 pixels by default), whatever ``max_pixels`` says; a larger limit is refused
# up front by the configs instead of failing on every large image.
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_BACKGROUND = (255, 255, 255)
_JPEG_SOI = b"\xff\xd8\xff"  # start-of-image marker + the first segment's marker byte
_TURBO_COLORSPACES = ("YCbCr", "Gray", "RGB")  # what simplejpeg decodes to RGB the way Pillow does
# What raydet reads (discovery.IMAGE_EXTENSIONS): Pillow's names. Its JPEG opener also takes MPO (multi-picture) photos.
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")
_ORIENTATION = 0x0112  # the EXIF Orientation tag: 1 = as stored, 2-8 = mirrored and/or turned


class ImageError(ValueError):
    """An encoded image that cannot be used; the message gives the reason."""


class ImageTooLargeError(ImageError):
    """An image whose header gives more pixels than allowed (a decompression bomb)."""


class UnsupportedImageError(ImageError):
    """Data that is no image, or an image in a format outside ``ACCEPTED_FORMATS``."""


def decode_resize(data: bytes, size: int, *, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, int, int]:
    """Encoded image bytes (any format Pillow reads) -> ``(pixels, orig_width, orig_height)``.

    ``pixels`` is ``(size, size, 3)`` uint8 RGB; ``orig_width`` x ``orig_height`` is the stored image's size in
    pixels (before any reduced-scale decode), the frame its pixel boxes live in. Raises :class:`ImageError`
    for empty, unrecognised, truncated or corrupt data, and for images over ``max_pixels`` pixels.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    if not data:
        raise ImageError("empty file (0 bytes)")
    if data[:3] == _JPEG_SOI:
        fast = _decode_jpeg_turbo(data, size, max_pixels)
        if fast is not None:
            return fast
    im = _open(data, max_pixels)
    width, height = im.size
    if im.format == "JPEG":
        im.draft("RGB", (size, size))  # decode at the smallest DCT scale that is still >= size
    rgb = _load_rgb(im)
    try:
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot resize the {width} x {height} image: {exc}") from exc
    return np.asarray(rgb, dtype=np.uint8), width, height


def decode_rgb(data: bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> its stored pixels, ``(height, width, 3)`` uint8 RGB, at full size: what
    ``raydet predict`` and the drawings show. The same checks and decoders as :func:`decode_resize` (the accepted
    formats, ``max_pixels`` refused from the header, libjpeg-turbo for the JPEGs it takes, so a JPEG that
    :func:`decode_resize` read is read here too); raises :class:`ImageError` naming what is wrong."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    if data[:3] == _JPEG_SOI:
        fast = _decode_jpeg_turbo(data, None, max_pixels)
        if fast is not None:
            return fast[0]
    return np.asarray(_load_rgb(_open(data, max_pixels)), dtype=np.uint8)


def _load_rgb(im: Image.Image) -> Image.Image:
    """Decode an image opened by :func:`_open` and convert it to RGB; damaged data -> :class:`ImageError`."""
    try:
        im.load()
        return _to_rgb(im)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # Pillow signals damaged data with any of these, e.g. OSError "image file is truncated (7 bytes not
        # processed)", SyntaxError "broken PNG file", ValueError "Decompressed data too large".
        raise ImageError(f"truncated or corrupt {im.format or 'image'} data: {exc}") from exc


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Read only the header; refuse what is not an image or what would decode into too many pixels."""
    try:
        with warnings.catch_warnings():
            # Pillow warns (and at twice its limit raises) about large images; our own limit decides below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        refused = _refused_format(data)
        if refused:
            raise UnsupportedImageError(
                f"format {refused} not accepted (raydet reads {', '.join(ACCEPTED_FORMATS)})"
            ) from exc
        raise UnsupportedImageError(f"not a recognised image ({len(data)} bytes starting {data[:8]!r})") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise ImageError(f"corrupt image header: {exc}") from exc
    _check_size(im.format, *im.size, max_pixels)
    return im


def _refused_format(data: bytes) -> str | None:
    """The name of the format outside ``ACCEPTED_FORMATS`` whose signature ``data`` starts with, else None.

    Only Pillow's prefix checks (the ``accept`` functions of its registered openers) run on the first 16 bytes,
    as ``Image.open`` itself would: no opener or decoder of a refused format is ever called."""
    Image.init()
    prefix = data[:16]
    for fmt, (_, accept) in Image.OPEN.items():
        if fmt in ACCEPTED_FORMATS or accept is None:
            continue
        try:
            result = accept(prefix)
        except Exception:  # a plugin's own check failing means "not this format"
            continue
        if result and not isinstance(result, str):  # a str is Pillow's "looks like it, but cannot be read"
            return fmt
    return None


def exif_orientation(data: bytes) -> int:
    """Encoded image bytes -> the EXIF Orientation tag (2-8: a viewer would mirror and/or turn it), else 1.

    Reads only the header (Pillow's header-only open of an accepted format): a JPEG's or WebP's EXIF block, a
    TIFF's first directory, a PNG ``eXIf`` chunk placed before the pixels. 1 for no tag, an unreadable tag, or
    data that is no accepted image (``decode_resize`` names that problem). Pixels are never rotated.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            if im.format == "PNG" and "exif" not in im.info:
                return 1  # an eXIf chunk after the pixels: Pillow would decode the whole image to reach it
            value = int(im.getexif().get(_ORIENTATION, 1))
    except Exception:  # a damaged header is decode_resize's to report, not this function's
        return 1
    return value if 2 <= value <= 8 else 1


def _check_size(fmt: str | None, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"image header gives an empty size {width} x {height}")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"decompression bomb refused: the {fmt} header says {width} x {height} = {width * height:,} "
            f"pixels, over the limit of {max_pixels:,}"
        )


def _decode_jpeg_turbo(data: bytes, size: int | None, max_pixels: int) -> tuple[np.ndarray, int, int] | None:
    """A JPEG through libjpeg-turbo (module docstring) -> ``(pixels, width, height)`` (resized to ``size`` x
    ``size``, or the full stored pixels when ``size`` is None), or None where Pillow must
    take it: a colour space other than YCbCr/grey/RGB, data libjpeg-turbo refuses (``strict``: a truncated file
    raises instead of returning grey rows), or no ``simplejpeg`` installed. Refuses a decompression bomb from the
    header."""
    simplejpeg = heavy.simplejpeg()
    if simplejpeg is None:  # not installed (heavy.simplejpeg): Pillow decodes
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    _check_size("JPEG", width, height, max_pixels)
    if colorspace not in _TURBO_COLORSPACES:
        return None
    try:
        if size is None:
            rgb = simplejpeg.decode_jpeg(data, "RGB", strict=True)
        else:
            rgb = simplejpeg.decode_jpeg(data, "RGB", min_height=size, min_width=size, strict=True)
    except ValueError:
        return None
    return (rgb if size is None else _resize(rgb, size)), width, height


def _resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """(h, w, 3) uint8 -> (size, size, 3): OpenCV's area filter when both sides shrink, else bilinear."""
    cv2 = heavy.cv2()
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return np.ascontiguousarray(rgb)
    shrink = h >= size and w >= size
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB (alpha composited on white, 16-bit scaled to 8-bit)."""
    if im.mode == "RGB":
        return im
    if im.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(im, dtype=np.float32) / 257.0  # 65535 -> 255
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        grey = np.nan_to_num(np.asarray(im, dtype=np.float32))
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")
