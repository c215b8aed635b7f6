"""The HTTP side of ``raydet serve``: a request -> the image bytes and options, or an :class:`HttpError` whose
one-line message and 4xx status the client gets. No Ray, no TensorFlow.

- ``POST /detect``: the body is the encoded image (any format :mod:`raydet.ingest.images` accepts: JPEG, PNG, BMP,
  GIF, TIFF, WebP; the decoder decides, not the Content-Type), or ``multipart/form-data`` holding one file
  (the part named ``image``, else the only part with a file name). Query options: ``score_threshold`` (0..1),
  ``max_detections`` (1..``TOP_K``), ``draw`` (``1``: answer the drawn PNG instead of JSON).
- Status codes: 400 empty body, malformed multipart, truncated or corrupt image, bad query option; 413 a body
  over the byte limit (from Content-Length before reading, else while reading) or an image whose header gives
  more pixels than the limit (a decompression bomb: refused before any pixel is decoded); 415 data that is no
  image or a format outside raydet's set; 404 unknown path; 405 wrong method.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from raydet.errors import UserError
from raydet.evaluate.predict import TOP_K
from raydet.ingest.images import ImageError, ImageTooLargeError, UnsupportedImageError


class HttpError(UserError):
    """A request the client can fix: ``status`` (4xx) and a one-line ``message`` naming what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(" ".join(message.split()))
        self.status = status


@dataclass(frozen=True)
class DetectOptions:
    """What one ``POST /detect`` asks for."""

    score_threshold: float  # detections scoring at least this are answered
    max_detections: int  # the best this many at most
    draw: bool  # answer the drawn PNG instead of JSON


def detect_options(query: Mapping[str, str], default_threshold: float) -> DetectOptions:
    """The query string's options (``score_threshold``, ``max_detections``, ``draw``) -> DetectOptions;
    HttpError 400 naming an unknown option or a bad value."""
    unknown = sorted(set(query) - {"score_threshold", "max_detections", "draw"})
    if unknown:
        raise HttpError(
            400, f"unknown query option(s) {', '.join(unknown)}: expected score_threshold, max_detections, draw"
        )
    threshold = _number(query, "score_threshold", float, default_threshold)
    if not 0.0 <= threshold <= 1.0:
        raise HttpError(400, f"score_threshold must be in [0, 1], got {query['score_threshold']!r}")
    limit = _number(query, "max_detections", int, TOP_K)
    if not 1 <= limit <= TOP_K:
        raise HttpError(400, f"max_detections must be in 1..{TOP_K}, got {query['max_detections']!r}")
    draw = query.get("draw", "0")
    if draw not in ("0", "1", "true", "false"):
        raise HttpError(400, f"draw must be 0 or 1, got {draw!r}")
    return DetectOptions(threshold, limit, draw in ("1", "true"))


def _number(query: Mapping[str, str], name: str, kind: type, default):
    if name not in query:
        return default
    try:
        return kind(query[name])
    except ValueError:
        raise HttpError(400, f"{name} must be a {'whole ' if kind is int else ''}number, got {query[name]!r}") from None


async def read_body(headers: Mapping[str, str], chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The request body from its ``chunks``, at most ``limit`` bytes: HttpError 413 from a Content-Length over
    the limit before anything is read, or as soon as the bytes read pass it (a body without a length)."""
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HttpError(413, f"body of {int(length):,} bytes is over the limit of {limit:,} bytes")
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"body is over the limit of {limit:,} bytes")
        parts.append(chunk)
    return b"".join(parts)


def image_bytes(content_type: str | None, body: bytes) -> bytes:
    """The encoded image of a request: the body itself, or the file part of a ``multipart/form-data`` body.
    HttpError 400 for an empty body or image, or a multipart body without exactly one file."""
    if not body:
        raise HttpError(400, "empty body: POST the image's bytes (JPEG, PNG, ...) or a multipart form with one file")
    if not (content_type or "").lower().startswith("multipart/"):
        return body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    parts = list(message.iter_parts()) if message.is_multipart() else []
    named = [p for p in parts if p.get_param("name", header="content-disposition") == "image"]
    files = named or [p for p in parts if p.get_filename()]
    if len(files) != 1:
        raise HttpError(
            400,
            f"multipart body holds {len(files)} files (of {len(parts)} parts): send one, "
            "as the part named 'image' or the only part with a filename",
        )
    data = files[0].get_payload(decode=True) or b""
    if not data:
        raise HttpError(400, "the multipart image part is empty (0 bytes)")
    return data


def image_error(exc: ImageError) -> HttpError:
    """A decoder's refusal as the client's answer: 413 too many pixels, 415 not an image or a format raydet does
    not read, 400 anything else (empty, truncated, corrupt)."""
    status = 413 if isinstance(exc, ImageTooLargeError) else 415 if isinstance(exc, UnsupportedImageError) else 400
    return HttpError(status, str(exc))
