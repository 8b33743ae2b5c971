"""The torch-free state-dict reader: legacy and zip torch.save files written here by hand,
strided and shared storages, damaged files, and pickles that try to run code."""

import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

from tfmm.models import torch_weights


class _FakeTorch:
    """Just enough of a ``torch`` module for ``pickle`` to write the globals torch.save writes."""

    def __init__(self, monkeypatch):
        torch = types.ModuleType("torch")
        utils = types.ModuleType("torch._utils")
        for name in ("FloatStorage", "LongStorage"):
            setattr(torch, name, type(name, (), {"__module__": "torch"}))

        def _rebuild_tensor_v2(*args):
            raise AssertionError("only written, never called")

        _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
        utils._rebuild_tensor_v2 = _rebuild_tensor_v2
        torch._utils = utils
        monkeypatch.setitem(sys.modules, "torch", torch)
        monkeypatch.setitem(sys.modules, "torch._utils", utils)
        self.torch = torch


class _Storage:
    def __init__(self, key, array, storage_type):
        self.key, self.array, self.type = key, array, storage_type


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        storage, offset, size, stride = self.args
        return sys.modules["torch._utils"]._rebuild_tensor_v2, (storage, offset, size, stride, False, collections.OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.type, obj.key, "cpu", obj.array.size)
        return None


def _state(fake):
    """A state dict with a 2x3 float tensor, its transpose (strides, same storage), a slice at
    an offset and an int64 scalar; returns (objects to pickle, storages, expected arrays)."""
    values = np.arange(8, dtype=np.float32) * 0.5
    floats = _Storage("0", values, fake.torch.FloatStorage)
    counts = _Storage("1", np.array([7], np.int64), fake.torch.LongStorage)
    state = collections.OrderedDict([
        ("conv.weight", _Tensor(floats, 0, (2, 3), (3, 1))),
        ("conv.weight_t", _Tensor(floats, 0, (3, 2), (1, 3))),
        ("bn.bias", _Tensor(floats, 6, (2,), (1,))),
        ("bn.num_batches_tracked", _Tensor(counts, 0, (), ())),
    ])
    expected = {
        "conv.weight": values[:6].reshape(2, 3), "conv.weight_t": values[:6].reshape(2, 3).T,
        "bn.bias": values[6:], "bn.num_batches_tracked": np.array(7, np.int64),
    }
    return state, [floats, counts], expected


def _dumps(obj) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_legacy(path, state, storages):
    with open(path, "wb") as f:
        for header in (torch_weights.LEGACY_MAGIC, torch_weights.LEGACY_PROTOCOL,
                       {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(_dumps(state))
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
            f.write(struct.pack("<q", s.array.size) + s.array.astype(s.array.dtype.newbyteorder("<")).tobytes())


def write_zip(path, state, storages):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights/data.pkl", _dumps(state))
        archive.writestr("weights/byteorder", "little")
        archive.writestr("weights/version", "3\n")
        for s in storages:
            archive.writestr(f"weights/data/{s.key}", s.array.tobytes())


@pytest.mark.parametrize("writer", [write_legacy, write_zip])
def test_reads_hand_made_files(writer, tmp_path, monkeypatch):
    state, storages, expected = _state(_FakeTorch(monkeypatch))
    path = str(tmp_path / "model.pth")
    writer(path, state, storages)
    monkeypatch.undo()  # read without any torch module around
    assert "torch" not in sys.modules
    loaded = torch_weights.load_state_dict(path)
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
        np.testing.assert_array_equal(loaded[key], value)
    assert loaded["conv.weight_t"].flags["C_CONTIGUOUS"]


def test_nested_state_dict_and_damaged_files(tmp_path, monkeypatch):
    fake = _FakeTorch(monkeypatch)
    state, storages, expected = _state(fake)
    write_zip(str(tmp_path / "ckpt.pth"), {"state_dict": state, "epoch": 3}, storages)
    # A tensor that reads past its storage: refused, not read from outside the buffer.
    floats = storages[0]
    write_legacy(str(tmp_path / "bad.pth"), {"w": _Tensor(floats, 4, (3, 3), (3, 1))}, [floats])
    write_legacy(str(tmp_path / "short.pth"), state, storages)
    data = open(tmp_path / "short.pth", "rb").read()
    (tmp_path / "short.pth").write_bytes(data[:-12])
    monkeypatch.undo()
    np.testing.assert_array_equal(torch_weights.load_state_dict(str(tmp_path / "ckpt.pth"))["bn.bias"], expected["bn.bias"])
    with pytest.raises(ValueError, match="past the storage's 8 elements"):
        torch_weights.load_state_dict(str(tmp_path / "bad.pth"))
    with pytest.raises(ValueError, match="truncated"):
        torch_weights.load_state_dict(str(tmp_path / "short.pth"))
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch file"):
        torch_weights.load_state_dict(str(tmp_path / "text.pth"))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        torch_weights.load_state_dict(str(tmp_path / "nope.pth"))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["legacy_header", "legacy_state", "zip"])
def test_malicious_pickle_is_refused_and_nothing_runs(where, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pth")
    payload = collections.OrderedDict([("w", _Evil(marker))])
    if where == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("evil/data.pkl", pickle.dumps(payload, protocol=2))
    else:
        with open(path, "wb") as f:
            if where == "legacy_header":
                pickle.dump(_Evil(marker), f, protocol=2)
            else:
                for header in (torch_weights.LEGACY_MAGIC, torch_weights.LEGACY_PROTOCOL, {}):
                    pickle.dump(header, f, protocol=2)
                pickle.dump(payload, f, protocol=2)
    with pytest.raises(torch_weights.UnsafePickleError, match=r"refusing to load global '(os|posix)\.system'") as e:
        torch_weights.load_state_dict(path)
    assert path in str(e.value)
    assert not marker.exists()
    # Sanity check: the same file does run the command under a plain pickle.load.
    if where == "zip":
        with zipfile.ZipFile(path) as archive:
            pickle.loads(archive.read("evil/data.pkl"))
        assert marker.exists()
