"""Reads PyTorch ``torch.save`` state dicts into numpy arrays, without PyTorch.

A ``.pth`` file is a pickle, and unpickling an untrusted pickle can run any code it names.
This reader runs none: its :class:`pickle.Unpickler` resolves only the globals a state dict
needs (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and the
``torch.*Storage`` types, each replaced by a local stand-in) and refuses every other one with
an error that names it. Tensor data is read with numpy, bounds-checked against its storage.

Both ``torch.save`` layouts are read:

- **zip** (the default since PyTorch 1.6): ``PREFIX/data.pkl`` holds the pickle and
  ``PREFIX/data/KEY`` each storage's raw bytes;
- **legacy**: five pickles in a row (magic number, protocol version, system info, the object,
  the list of storage keys), then each storage as an 8-byte little-endian element count
  followed by its bytes, in the order of that list.

Example:
    >>> state = load_state_dict("efficientnet-lite0.pth")
    >>> state["_conv_stem.weight"].shape
    (32, 3, 3, 3)
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch.<Name>Storage -> numpy dtype of one element ("bfloat16" is converted to float32).
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a global this reader does not allow (it may run code)."""


class _StorageType:
    """Stands in for a ``torch.*Storage`` class: only its element type is kept."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class _StorageRef:
    """A storage named by a persistent id; its bytes are attached after unpickling."""

    def __init__(self, key: str, storage_type: _StorageType, numel: int):
        self.key, self.type, self.numel = key, storage_type, numel
        self.data = None  # np.ndarray, set by the reader


class _TensorRef:
    """What ``_rebuild_tensor_v2`` returns here: a view description, made an array later."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _StorageRef):
            raise UnsafePickleError(f"_rebuild_tensor_v2 expects a storage; received {type(storage).__name__}")
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        if len(self.size) != len(self.stride) or any(s < 0 for s in self.size + self.stride) or self.offset < 0:
            raise ValueError(f"tensor of storage {self.storage.key}: bad size {self.size} / stride {self.stride}")
        if 0 in self.size:
            return np.zeros(self.size, data.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= data.size:
            raise ValueError(
                f"tensor of storage {self.storage.key} reads element {last}, past the storage's "
                f"{data.size} elements: the file is damaged"
            )
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size, strides=[s * data.itemsize for s in self.stride],
            writeable=False,
        )
        return np.array(view, order="C")  # a compact copy, independent of the file's buffer


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a state dict; the storages it meets are listed in ``storages``."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePickleError(
            f"{self.source}: refusing to load global '{module}.{name}'. Only a plain state dict "
            "(tensors in OrderedDicts) is read; other globals could run code from the file. "
            "Save the weights with `torch.save(model.state_dict(), path)`."
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafePickleError(f"{self.source}: unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise ValueError(f"{self.source}: storage views (legacy PyTorch < 0.4 files) are not supported")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _StorageRef(key, storage_type, int(numel))
        return self.storages[key]


def _array(raw: bytes, storage: _StorageRef, little_endian: bool, source: str) -> np.ndarray:
    expected = storage.numel * storage.type.itemsize
    if len(raw) < expected:
        raise ValueError(f"{source}: storage {storage.key} has {len(raw)} bytes, needs {expected}: the file is truncated")
    order = "<" if little_endian else ">"
    if storage.type.dtype == "bfloat16":
        bits = np.frombuffer(raw[:expected], f"{order}u2").astype(np.uint32) << 16
        return bits.view(np.float32)
    return np.frombuffer(raw[:expected], np.dtype(storage.type.dtype).newbyteorder(order))


def _materialize(obj):
    """Replaces every tensor reference in the unpickled object by its numpy array."""
    if isinstance(obj, _TensorRef):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _load_zip(path: str):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: a torch.save zip file holds one PREFIX/data.pkl; found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), path)
        obj = unpickler.load()
        byteorder = prefix + "byteorder"
        little = archive.read(byteorder).strip() != b"big" if byteorder in names else True
        for key, storage in unpickler.storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise ValueError(f"{path}: storage {key} is missing ({member})")
            storage.data = _array(archive.read(member), storage, little, path)
    return obj


def _load_legacy(path: str):
    with open(path, "rb") as f:
        data = f.read()
    stream = io.BytesIO(data)

    def header():
        return _RestrictedUnpickler(stream, path).load()

    try:
        magic = header()
    except Exception as e:
        if isinstance(e, UnsafePickleError):
            raise
        raise ValueError(f"{path}: not a PyTorch file (neither a zip archive nor a legacy torch.save pickle): {e}") from e
    if magic != LEGACY_MAGIC:
        raise ValueError(f"{path}: not a PyTorch file (the legacy format starts with magic number {LEGACY_MAGIC:#x})")
    if header() != LEGACY_PROTOCOL:
        raise ValueError(f"{path}: unsupported legacy protocol version (expected {LEGACY_PROTOCOL})")
    sys_info = header()
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    unpickler = _RestrictedUnpickler(stream, path)
    obj = unpickler.load()
    keys = _RestrictedUnpickler(stream, path).load()
    offset = stream.tell()
    for key in keys:
        key = str(key)
        if key not in unpickler.storages:
            raise ValueError(f"{path}: storage {key} is listed but no tensor uses it")
        storage = unpickler.storages[key]
        if offset + 8 > len(data):
            raise ValueError(f"{path}: the file is truncated at storage {key}")
        (count,) = struct.unpack("<q", data[offset:offset + 8])
        if count != storage.numel:
            raise ValueError(f"{path}: storage {key} has {count} elements, the pickle says {storage.numel}")
        nbytes = count * storage.type.itemsize
        storage.data = _array(data[offset + 8:offset + 8 + nbytes], storage, little, path)
        offset += 8 + nbytes
    missing = sorted(set(unpickler.storages) - {str(k) for k in keys})
    if missing:
        raise ValueError(f"{path}: storages {missing} have no data")
    return obj


def load_state_dict(path: str) -> "collections.OrderedDict[str, np.ndarray]":
    """Reads a PyTorch state dict (zip or legacy ``torch.save`` format) as numpy arrays.

    Args:
        path: a ``.pth`` / ``.pt`` file written by ``torch.save(model.state_dict(), path)``.
            A dict with the state dict under ``"state_dict"`` or ``"model"`` also works.

    Returns:
        An ``OrderedDict`` from parameter name to ``np.ndarray``, in the file's order.

    Raises:
        FileNotFoundError: no file at ``path``.
        UnsafePickleError: the pickle names a global other than the allowed ones (nothing
            from the file is executed).
        ValueError: the file is not a PyTorch state dict, or is damaged.

    Example:
        >>> state = load_state_dict("model.pth")
        >>> {k: v.shape for k, v in state.items()}
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PyTorch weights file not found: {path!r}")
    obj = _materialize(_load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path))
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor); received {type(obj).__name__}")
    return collections.OrderedDict((str(k), v) for k, v in obj.items())
