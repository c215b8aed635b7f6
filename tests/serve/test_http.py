"""raydet.serve.http: a request -> the image bytes and options, or the 4xx answer naming what is wrong (no Ray,
no TensorFlow)."""

from __future__ import annotations

import asyncio

import handset as H
import pytest
from serve_client import multipart, png

from raydet.ingest.images import ImageError, ImageTooLargeError, UnsupportedImageError
from raydet.serve.http import HttpError, detect_options, image_bytes, image_error, read_body

A = H.Obj(1, 1, 0, 5, 1)


def test_query_options():
    assert detect_options({}, 0.3) == detect_options({"draw": "0"}, 0.3)
    opts = detect_options({"score_threshold": "0.5", "max_detections": "2", "draw": "1"}, 0.3)
    assert (opts.score_threshold, opts.max_detections, opts.draw) == (0.5, 2, True)
    for query, text in [
        ({"score_threshold": "1.5"}, "score_threshold must be in [0, 1], got '1.5'"),
        ({"score_threshold": "high"}, "score_threshold must be a number, got 'high'"),
        ({"max_detections": "0"}, "max_detections must be in 1..100, got '0'"),
        ({"max_detections": "2.5"}, "max_detections must be a whole number, got '2.5'"),
        ({"draw": "yes"}, "draw must be 0 or 1, got 'yes'"),
        ({"treshold": "0.2"}, "unknown query option(s) treshold"),
    ]:
        with pytest.raises(
            HttpError,
            match="^"
            + text.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.").replace("[", r"\[").replace("]", r"\]"),
        ) as exc:
            detect_options(query, 0.3)
        assert exc.value.status == 400


def _chunks(*parts: bytes):
    async def gen():
        for p in parts:
            yield p

    return gen()


def test_read_body_refuses_over_the_limit_from_the_length_or_while_reading():
    assert asyncio.run(read_body({}, _chunks(b"ab", b"cd"), 4)) == b"abcd"
    with pytest.raises(HttpError, match="body of 5 bytes is over the limit of 4 bytes") as exc:
        asyncio.run(read_body({"content-length": "5"}, _chunks(b"abcde"), 4))
    assert exc.value.status == 413
    with pytest.raises(HttpError, match="body is over the limit of 4 bytes"):  # no length given: counted
        asyncio.run(read_body({}, _chunks(b"abc", b"de"), 4))


def test_image_bytes_from_a_body_or_a_multipart_form():
    data = png(H.paint([A]))
    assert image_bytes("image/png", data) == data
    assert image_bytes(*multipart(("note", None, b"hello"), ("image", "a.png", data))) == data
    assert image_bytes(*multipart(("upload", "a.png", data))) == data  # the only file, whatever its name
    for content_type, body, text in [
        ("image/png", b"", "empty body"),
        (*multipart(("a", "a.png", data), ("b", "b.png", data)), "holds 2 files"),
        (*multipart(("note", None, b"hi")), "holds 0 files"),
        (*multipart(("image", "a.png", b"")), "image part is empty"),
    ]:
        with pytest.raises(HttpError, match=text) as exc:
            image_bytes(content_type, body)
        assert exc.value.status == 400


def test_decoder_refusals_map_to_413_415_400():
    assert image_error(ImageTooLargeError("decompression bomb")).status == 413
    assert image_error(UnsupportedImageError("format PPM not accepted")).status == 415
    assert image_error(ImageError("truncated")).status == 400
