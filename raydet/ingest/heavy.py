"""Ingestion's deferred imports, the one place it imports OpenCV, simplejpeg and Ray Data: decoding one image and
reading a shard with pyarrow (the report, a training worker's own rows) load none of them until they are used."""

from __future__ import annotations

from types import ModuleType


def cv2() -> ModuleType:
    """OpenCV, for resizing a decoded image. Deferred: only decoding an image needs it."""
    import cv2

    return cv2


def simplejpeg() -> ModuleType | None:
    """simplejpeg (libjpeg-turbo), or None where it is not installed. Deferred: only decoding a JPEG needs it, and
    its absence must not stop an import."""
    try:
        import simplejpeg
    except ImportError:  # a cluster whose nodes lack it (raydet installed without deps) still decodes, via Pillow
        return None
    return simplejpeg


def ray_data() -> ModuleType:
    """Ray Data (``ray.data``), for a split as a ``Dataset``. Deferred: the shard format's pyarrow readers and writers
    run where Ray is not wanted."""
    import ray.data

    return ray.data


def arrow_tensor_array() -> type:
    """Ray Data's ``ArrowTensorArray``, the type of a shard's object columns. Deferred as :func:`ray_data`."""
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray
