"""decode_resize: every mode to RGB, hostile data refused with a reason, EXIF orientation left alone."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

import raydet.ingest.images
from raydet.ingest.images import ImageError, decode_resize, exif_orientation


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming width x height (8-bit RGB), a tiny IDAT and IEND: ~60 bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_rgb_jpeg_resized_and_original_size_kept():
    data = encode(Image.new("RGB", (640, 480), (200, 100, 50)), "JPEG", quality=95)
    pixels, w, h = decode_resize(data, 64)
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    # the original size, not the 1/2-scale draft (640/2 = 320 >= 64 would be chosen) nor the output size
    assert (w, h) == (640, 480)
    assert np.abs(pixels.astype(int) - (200, 100, 50)).max() <= 3  # a flat colour survives JPEG + resize


def test_aspect_is_not_kept_but_content_maps_proportionally():
    # left half red, right half blue on a 200 x 50 image -> the 20 x 20 output is red on the left 10 columns
    a = np.zeros((50, 200, 3), np.uint8)
    a[:, :100] = (255, 0, 0)
    a[:, 100:] = (0, 0, 255)
    pixels, w, h = decode_resize(encode(Image.fromarray(a), "PNG"), 20)
    assert (w, h) == (200, 50)
    assert (pixels[:, :9] == (255, 0, 0)).all() and (pixels[:, 11:] == (0, 0, 255)).all()


@pytest.mark.parametrize(
    "mode,color,fmt,expected",
    [
        ("L", 77, "JPEG", (77, 77, 77)),  # grey -> R = G = B
        ("1", 1, "PNG", (255, 255, 255)),  # bilevel white
        ("CMYK", (0, 255, 255, 0), "JPEG", (255, 0, 0)),  # no cyan, full magenta + yellow, no black = red
        ("RGBA", (0, 255, 0, 255), "PNG", (0, 255, 0)),  # opaque green stays green
        ("LA", (0, 0), "PNG", (255, 255, 255)),  # fully transparent -> the white background
    ],
)
def test_modes_become_rgb(mode, color, fmt, expected):
    data = encode(Image.new(mode, (40, 30), color), fmt)
    pixels, w, h = decode_resize(data, 16)
    assert pixels.shape == (16, 16, 3) and (w, h) == (40, 30)
    assert np.abs(pixels.astype(int) - expected).max() <= 3, pixels[0, 0]


def test_half_transparent_rgba_is_composited_on_white():
    # red at alpha 128 over white: R = 255; G = B = 255 * (1 - 128/255) = 127
    pixels, _, _ = decode_resize(encode(Image.new("RGBA", (8, 8), (255, 0, 0, 128)), "PNG"), 8)
    assert np.abs(pixels.astype(int) - (255, 127, 127)).max() <= 1


def test_palette_png_with_transparent_index():
    im = Image.new("P", (10, 10), 0)
    im.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 5, 10))  # left half index 1 (red-ish), right half index 0, which is transparent
    pixels, _, _ = decode_resize(encode(im, "PNG", transparency=0), 10)
    assert (pixels[:, :4] == (200, 0, 0)).all()
    assert (pixels[:, 6:] == (255, 255, 255)).all()


def test_palette_png_without_transparency():
    im = Image.new("P", (10, 10), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pixels, _, _ = decode_resize(encode(im, "PNG"), 5)
    assert (pixels == (10, 200, 30)).all()


def test_sixteen_bit_png_is_scaled_not_saturated():
    # 16-bit grey 51400 -> 51400 / 257 = 200 (Pillow's own convert would give 255)
    a = np.full((12, 12), 51400, np.uint16)
    pixels, _, _ = decode_resize(encode(Image.fromarray(a), "PNG"), 6)
    assert (pixels == 200).all()


def test_exif_orientation_is_not_applied():
    # stored 60 wide x 30 high, red left / blue right, EXIF says "rotate 90" (orientation 6): the stored frame
    # is what labelImg boxes refer to, so the output keeps red on the left and reports 60 x 30.
    a = np.zeros((30, 60, 3), np.uint8)
    a[:, :30] = (255, 0, 0)
    a[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(a), "JPEG", quality=95, exif=exif.tobytes())
    pixels, w, h = decode_resize(data, 20)
    assert (w, h) == (60, 30)
    assert pixels[:, :8, 0].min() > 200 and pixels[:, :8, 2].max() < 60  # left stays red
    assert pixels[:, 12:, 2].min() > 200  # right stays blue


def test_large_jpeg_decoded_at_reduced_scale_matches_full_decode():
    # 1600 x 1200 smooth gradient: draft decodes at 1/4 scale (400 x 300 >= 224); the result must still be
    # close to a full decode + resize.
    yy, xx = np.mgrid[0:1200, 0:1600]
    a = np.stack([xx * 255 // 1599, yy * 255 // 1199, np.full_like(xx, 90)], -1).astype(np.uint8)
    data = encode(Image.fromarray(a), "JPEG", quality=95)
    pixels, w, h = decode_resize(data, 224)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    assert (w, h) == (1600, 1200)
    assert np.abs(pixels.astype(int) - full.astype(int)).mean() < 2.0


def jpeg_claiming(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a baseline JPEG) with its SOF0 frame header rewritten to claim width x height."""
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def test_jpeg_at_a_scale_pillow_draft_cannot_use(monkeypatch):
    # 500 x 375 -> 224: Pillow's draft has only 1/2 (250 x 188 < 224), libjpeg-turbo decodes at 5/8 (313 x 235).
    # The result must match a full decode + area resize of the same file.
    yy, xx = np.mgrid[0:375, 0:500]
    a = np.stack([xx * 255 // 499, yy * 255 // 374, (xx + yy) % 256], -1).astype(np.uint8)
    data = encode(Image.fromarray(a), "JPEG", quality=95)
    seen = []
    real = raydet.ingest.images._resize
    monkeypatch.setattr(raydet.ingest.images, "_resize", lambda rgb, size: seen.append(rgb.shape) or real(rgb, size))
    pixels, w, h = decode_resize(data, 224)
    assert (w, h) == (500, 375)
    assert seen == [(235, 313, 3)]  # decoded at 5/8: the smallest scale with both sides >= 224
    full = cv2.resize(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), (224, 224), interpolation=cv2.INTER_AREA)
    assert np.abs(pixels.astype(int) - full.astype(int)).mean() < 2.0


def test_jpeg_without_simplejpeg_falls_back_to_pillow(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # import raises ImportError
    data = encode(Image.new("RGB", (640, 480), (200, 100, 50)), "JPEG", quality=95)
    pixels, w, h = decode_resize(data, 64)
    assert (w, h) == (640, 480) and np.abs(pixels.astype(int) - (200, 100, 50)).max() <= 3


def test_small_jpeg_is_enlarged_bilinear():
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, 10:] = 255
    pixels, w, h = decode_resize(encode(Image.fromarray(a), "JPEG", quality=100), 40)
    assert (w, h) == (20, 10) and pixels.shape == (40, 40, 3)
    assert pixels[:, :15].max() < 40 and pixels[:, 25:].min() > 215  # dark left, white right, a blend between
    assert 40 < pixels[:, 20].mean() < 215


def test_jpeg_decompression_bomb_refused_from_header():
    data = encode(Image.new("RGB", (64, 48), (9, 9, 9)), "JPEG")
    bomb = jpeg_claiming(data, 60_000, 60_000)
    with pytest.raises(ImageError, match="decompression bomb refused: the JPEG header says 60000 x 60000"):
        decode_resize(bomb, 32)
    with pytest.raises(ImageError, match="3,072 pixels, over the limit of 3,071"):  # 64 * 48
        decode_resize(data, 32, max_pixels=3_071)


def test_zero_byte_file():
    with pytest.raises(ImageError, match="empty file"):
        decode_resize(b"", 32)


def test_text_named_like_a_jpeg():
    with pytest.raises(ImageError, match="not a recognised image"):
        decode_resize(b"this is a text file, not a photo\n", 32)


def test_truncated_jpeg():
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(ImageError, match="truncated"):
        decode_resize(data[: len(data) // 2], 32)


def test_decompression_bomb_refused_from_header():
    bomb = png_header_only(50_000, 50_000)  # 2.5 gigapixels claimed in ~90 bytes
    assert len(bomb) < 200
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_resize(bomb, 32)


def test_own_pixel_limit():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageError, match="10,000 pixels, over the limit of 9,999"):  # 100 * 100 = 10,000
        decode_resize(data, 32, max_pixels=9_999)
    assert decode_resize(data, 32, max_pixels=10_000)[0].shape == (32, 32, 3)


def test_bad_size_argument():
    with pytest.raises(ValueError, match="size must be positive"):
        decode_resize(encode(Image.new("RGB", (4, 4)), "PNG"), 0)


# ------------------------------------------------------------------ EXIF orientation, formats outside the list


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_is_read_from_the_header(fmt):
    im = Image.new("RGB", (60, 30), (255, 0, 0))
    assert exif_orientation(encode(im, fmt, exif=exif_bytes(6))) == 6  # 6: a viewer turns it 90 degrees clockwise
    assert exif_orientation(encode(im, fmt, exif=exif_bytes(1))) == 1
    assert exif_orientation(encode(im, fmt)) == 1  # no tag


def test_exif_orientation_of_junk_or_a_bad_tag_is_1():
    assert exif_orientation(b"") == 1
    assert exif_orientation(b"just some text\n" * 20) == 1
    assert exif_orientation(encode(Image.new("RGB", (8, 8)), "JPEG", exif=exif_bytes(99))) == 1  # no such orientation


MINIMAL_EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
    b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
)


def test_eps_is_refused_and_ghostscript_never_runs(monkeypatch):
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a) or Image.new("RGB", (10, 10)).im)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    assert Image.open(io.BytesIO(MINIMAL_EPS)).format == "EPS"  # Pillow itself would open it (and run gs on load)
    with pytest.raises(ImageError, match=r"^format EPS not accepted \(raydet reads JPEG, PNG, BMP, GIF, TIFF, WEBP\)$"):
        decode_resize(MINIMAL_EPS, 16)
    assert calls == []


def test_a_format_pillow_reads_but_raydet_does_not_is_refused_naming_it():
    data = encode(Image.new("RGB", (12, 10), (1, 2, 3)), "PPM")  # "P6 12 10 255" + pixels
    with pytest.raises(ImageError, match=r"^format PPM not accepted"):
        decode_resize(data, 8)


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "WEBP"])
def test_every_accepted_format_still_decodes(fmt):
    pixels, w, h = decode_resize(encode(Image.new("RGB", (20, 10), (0, 0, 255)), fmt), 8)
    assert (w, h) == (20, 10) and pixels.shape == (8, 8, 3) and pixels[..., 2].min() > 200


def test_decode_rgb_gives_the_stored_pixels_through_the_same_checks():
    from raydet.ingest.images import decode_rgb

    a = np.zeros((30, 70, 3), np.uint8)
    a[:, 35:] = (0, 0, 255)
    assert (decode_rgb(encode(Image.fromarray(a), "PNG")) == a).all()
    jpg = encode(Image.new("RGB", (70, 30), (200, 100, 50)), "JPEG", quality=95)
    tem = jpg[:2] + b"\xff\x01" + jpg[2:]  # a TEM marker: libjpeg-turbo skips it, Pillow's JPEG opener refuses it
    with pytest.raises(OSError):  # PIL.UnidentifiedImageError
        Image.open(io.BytesIO(tem)).load()
    rgb = decode_rgb(tem)
    assert rgb.shape == (30, 70, 3) and np.abs(rgb.astype(int) - (200, 100, 50)).max() <= 3
    with pytest.raises(ImageError, match=r"70 x 30 = 2,100 pixels, over the limit of 2,099"):
        decode_rgb(jpg, max_pixels=2_099)
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_rgb(png_header_only(50_000, 50_000))
    with pytest.raises(ImageError, match="format EPS not accepted"):
        decode_rgb(MINIMAL_EPS)
