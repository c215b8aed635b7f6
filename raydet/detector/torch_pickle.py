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

Checks before any memory is touched (ValueError, naming the tensor or storage and the numbers): a storage may not
claim more bytes than the file holds, nor more elements than the bytes left when its data is read (and the two
counts must agree); a tensor's offset, sizes and strides must be non-negative ints (a negative stride is refused,
so strides cannot cancel), at most ``MAX_TENSOR_ELEMENTS`` elements, and its extent, offset + sum((size - 1) *
stride) + 1 when every size is positive, must fit in its storage's elements. Stride 0 (a broadcast) is legal when
the extent fits; every array comes back as a copy that owns its memory. ``load_state_dict(path, sha256=...)``
refuses a file whose bytes hash otherwise.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
from typing import BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
# a tensor of more elements is refused even when its extent fits (a stride-0 broadcast of a huge size): 1 GiB of float32
MAX_TENSOR_ELEMENTS = 2**28

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


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


class _PendingTensor:
    """What ``_rebuild_tensor_v2`` returns while the storage bytes are still unread."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def check(self, key: str) -> None:
        """ValueError naming ``key`` unless the tensor is well formed and lies inside its storage."""
        if not isinstance(self.storage, _Storage):
            raise ValueError(f"tensor {key!r}: its storage is {type(self.storage).__name__}, not a storage")
        if not (
            isinstance(self.size, (tuple, list))
            and isinstance(self.stride, (tuple, list))
            and len(self.size) == len(self.stride)
            and len(self.size) <= 32
        ):
            raise ValueError(
                f"tensor {key!r}: size {self.size!r} and stride {self.stride!r} must be tuples of "
                "the same length (at most 32)"
            )
        if not (_is_count(self.offset) and all(map(_is_count, self.size)) and all(map(_is_count, self.stride))):
            raise ValueError(
                f"tensor {key!r}: offset {self.offset!r}, size {self.size!r} and stride "
                f"{self.stride!r} must be non-negative ints"
            )
        elements = int(np.prod(self.size, dtype=object)) if self.size else 1
        if elements > MAX_TENSOR_ELEMENTS or max(self.size, default=0) > MAX_TENSOR_ELEMENTS:
            raise ValueError(
                f"tensor {key!r}: size {self.size} has {elements} elements, more than {MAX_TENSOR_ELEMENTS}"
            )
        extent = self.offset + (
            sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True)) + 1 if elements else 0
        )
        if extent > self.storage.numel:
            raise ValueError(
                f"tensor {key!r}: offset {self.offset} size {self.size} stride {self.stride} reaches "
                f"element {extent}, its storage holds {self.storage.numel}"
            )
        self.size, self.stride = tuple(self.size), tuple(self.stride)

    def to_numpy(self) -> np.ndarray:
        """The tensor as an array that owns its memory (as_strided over the storage, then copied in C order); ``check``
        first."""
        data = self.storage.data
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, dtype=data.dtype)
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=[s * item for s in self.stride], writeable=False
        )
        return np.array(view, copy=True, order="C")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *extra):
    return _PendingTensor(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that knows only the globals a tensor state dict needs; records the storages it meets."""

    def __init__(self, file: BinaryIO, file_size: int = 0):
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}
        self.file_size = file_size

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
        if not _is_count(numel) or numel * storage_type.dtype.itemsize > self.file_size:
            raise ValueError(
                f"storage {key!r} claims {numel!r} elements of {storage_type.dtype.itemsize} bytes; "
                f"the file has {self.file_size} bytes"
            )
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, numel)
        elif self.storages[key].numel != numel or self.storages[key].dtype != storage_type.dtype:
            raise ValueError(f"storage {key!r} named twice with different types or sizes")
        return self.storages[key]


def _read_storages(f: io.BytesIO, file_size: int, keys: list, storages: dict[str, _Storage]) -> None:
    """Fill each storage from the stream: 8-byte little-endian count, then the raw little-endian elements."""
    unlisted = sorted(set(storages) - {str(k) for k in keys})
    if unlisted:
        raise ValueError(f"storages {unlisted} used by tensors but not in the file's storage list")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise ValueError(f"storage key {key!r} listed but never used by a tensor")
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"file ends before storage {key!r}")
        count = int.from_bytes(head, "little")
        dtype = storage.dtype.newbyteorder("<")
        left = file_size - f.tell()
        if count * dtype.itemsize > left:
            raise ValueError(
                f"storage {key!r} claims {count} elements of {dtype.itemsize} bytes; {left} bytes are left"
            )
        if count != storage.numel:
            raise ValueError(f"storage {key!r} holds {count} elements; its tensors were told {storage.numel}")
        raw = f.read(count * dtype.itemsize)
        storage.data = np.frombuffer(raw, dtype=dtype).astype(storage.dtype.newbyteorder("="))


def _check_header(f: BinaryIO) -> None:
    """Read and check the magic number, protocol version and sys-info pickles."""
    if _RestrictedUnpickler(f).load() != MAGIC_NUMBER:
        raise ValueError("not a PyTorch legacy file (wrong magic number)")
    version = _RestrictedUnpickler(f).load()
    if version != PROTOCOL_VERSION:
        raise ValueError(f"unsupported PyTorch protocol version {version}")
    sys_info = _RestrictedUnpickler(f).load()
    if not isinstance(sys_info, dict):
        raise ValueError("not a PyTorch legacy file (no sys-info dict)")
    if not sys_info.get("little_endian", True):
        raise ValueError("big-endian PyTorch files are not supported")


def _tensors(obj, path: str = ""):
    """(key, pending tensor) of a (nested) state dict; ValueError on anything else."""
    if isinstance(obj, _PendingTensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}.{k}" if path else str(k))
    else:
        raise ValueError(f"expected a state dict of tensors, found {type(obj).__name__} at {path!r}")


def _to_numpy(obj):
    if isinstance(obj, _PendingTensor):
        return obj.to_numpy()
    return {k: _to_numpy(v) for k, v in obj.items()}


def load_state_dict(path, sha256: str | None = None) -> dict[str, np.ndarray]:
    """Path of a legacy-format ``.pth`` state dict -> {parameter name: numpy array owning its memory}. With
    ``sha256`` (hex), ValueError naming the file and both hashes unless its bytes have that hash."""
    with open(path, "rb") as f:
        data = f.read()
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256.lower():
            raise ValueError(f"{path}: sha256 {actual}, expected {sha256.lower()} (a changed or corrupt file)")
    if data[:2] == b"PK":
        raise ValueError(f"{path} is a zip (new torch.save format); only the legacy format is read")
    f = io.BytesIO(data)
    _check_header(f)
    unpickler = _RestrictedUnpickler(f, len(data))
    obj = unpickler.load()
    keys = _RestrictedUnpickler(f).load()
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state dict, found {type(obj).__name__}")
    if not isinstance(keys, list):
        raise ValueError(f"expected the list of storage keys, found {type(keys).__name__}")
    for key, tensor in _tensors(obj):
        tensor.check(key)
    _read_storages(f, len(data), keys, unpickler.storages)
    return _to_numpy(obj)
