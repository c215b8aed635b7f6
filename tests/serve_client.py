"""An HTTP client for the Serve tests (tests/serve/): encoded images, multipart forms, free ports."""

from __future__ import annotations

import http.client
import io
import socket
import uuid

import numpy as np
from PIL import Image


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(*parts: tuple[str, str | None, bytes]) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += (
            (
                f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return f"multipart/form-data; boundary={boundary}", body + f"--{boundary}--\r\n".encode()


class Client:
    """HTTP/1.1 to the app on 127.0.0.1:port, one connection (http.client, as any client would)."""

    def __init__(self, port: int):
        self.port = port

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.getheader("content-type", ""), resp.read()
        finally:
            conn.close()

    def detect(self, data: bytes, query: str = "", content_type: str = "application/octet-stream"):
        return self.request("POST", "/detect" + query, data, {"Content-Type": content_type})
