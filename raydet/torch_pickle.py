"""Read a PyTorch state dict saved in the legacy (pre-zip) format into numpy arrays, without torch.

Why not ``torch.load``: a ``.pth`` file is a pickle, and unpickling an untrusted pickle runs whatever code its
globals name (``os.system``, ``builtins.eval``, ...). This reader only rebuilds tensors: its unpickler resolves
``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` (replaced by a numpy stand-in) and the
``torch.*Storage`` types, and refuses every other global with ``pickle.UnpicklingError``.

Legacy layout, one pickle after another in the same stream: the magic number, the protocol version (1001), a
sys-info dict, the object itself (an OrderedDict of tensors whose storages are persistent ids
``('storage', storage_type, key, location, numel[, view_metadata])``), and the list of storage keys. Then, per key
in that order, an 8-byte little-endian element count and the raw little-endian elements. The newer format
(``torch.save`` default since 1.6) is a zip archive and is refused with ValueError.
"""

from __future__ import annotations

import collections
import pickle
from typing import BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands for ``torch.<name>Storage`` in the pickle: only its numpy dtype matters."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


class _Storage:
    """A storage named by the object pickle; its bytes are read after the object, so tensors wait for it."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.data = dtype, numel, None


class _PendingTensor:
    """What ``_rebuild_tensor_v2`` returns while the storage bytes are still unread."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        """The tensor as an array that owns its memory (as_strided over the storage, then copied)."""
        data = self.storage.data
        if self.size and any(n == 0 for n in self.size):
            return np.zeros(self.size, dtype=data.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset < 0 or last >= data.size:
            raise ValueError(f"tensor of size {self.size} stride {self.stride} overruns its storage")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=[s * item for s in self.stride], writeable=False
        )
        return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *extra):
    return _PendingTensor(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that knows only the globals a tensor state dict needs; records the storages it meets."""

    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}: only tensors are rebuilt")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"not a storage type: {storage_type!r}")
        if len(pid) == 6 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (view_metadata) are not supported")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, int(numel))
        return self.storages[key]


def _read_storages(f: BinaryIO, keys: list, storages: dict[str, _Storage]) -> None:
    """Fill each storage from the stream: 8-byte little-endian count, then the raw little-endian elements."""
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise ValueError(f"storage key {key!r} listed but never used by a tensor")
        count = int.from_bytes(f.read(8), "little")
        dtype = storage.dtype.newbyteorder("<")
        raw = f.read(count * dtype.itemsize)
        if len(raw) != count * dtype.itemsize:
            raise ValueError(f"file ends inside storage {key!r}")
        storage.data = np.frombuffer(raw, dtype=dtype).astype(storage.dtype.newbyteorder("="))


def _check_header(f: BinaryIO) -> None:
    """Read and check the magic number, protocol version and sys-info pickles."""
    if _RestrictedUnpickler(f).load() != MAGIC_NUMBER:
        raise ValueError("not a PyTorch legacy file (wrong magic number)")
    version = _RestrictedUnpickler(f).load()
    if version != PROTOCOL_VERSION:
        raise ValueError(f"unsupported PyTorch protocol version {version}")
    sys_info = _RestrictedUnpickler(f).load()
    if not sys_info.get("little_endian", True):
        raise ValueError("big-endian PyTorch files are not supported")


def _to_numpy(obj):
    if isinstance(obj, _PendingTensor):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    raise ValueError(f"expected a state dict of tensors, found {type(obj).__name__}")


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Path of a legacy-format ``.pth`` state dict -> {parameter name: numpy array owning its memory}."""
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            raise ValueError(f"{path} is a zip (new torch.save format); only the legacy format is read")
        f.seek(0)
        _check_header(f)
        unpickler = _RestrictedUnpickler(f)
        obj = unpickler.load()
        keys = _RestrictedUnpickler(f).load()
        _read_storages(f, keys, unpickler.storages)
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state dict, found {type(obj).__name__}")
    return _to_numpy(obj)
