"""Read PyTorch ``.pth`` checkpoints into NumPy arrays without importing torch.

Both formats ``torch.save`` has written are supported:

* the zip format (torch >= 1.6): ``<prefix>/data.pkl`` plus one raw file per storage
  under ``<prefix>/data/``;
* the legacy stream format (older torchvision checkpoints such as
  ``vgg16-397923af.pth``): magic number, protocol version, system info, the pickled
  object, the list of storage keys, then each storage as an int64 element count
  followed by its bytes.

Only what a state dict contains is accepted (tensors, ordered dicts, plain
containers and numbers); any other global in the pickle is refused, so a
checkpoint cannot run code when it is read.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),  # widened to float32 after reading
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class PthFormatError(ValueError):
    """The file is not a PyTorch checkpoint this reader understands (or it is damaged)."""


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _LazyStorage:
    """A storage whose bytes are filled in after the pickle is read (legacy format)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.array: np.ndarray | None = None


def _rebuild_tensor(storage, storage_offset, size, stride, *args):
    return ("tensor", storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *args):
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise PthFormatError(
                f"the checkpoint pickles {module}.{name}, which a weights file has no reason to contain; refusing to read it"
            ) from None

    def persistent_load(self, saved_id):
        if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage"):
            raise PthFormatError(f"unexpected persistent id in checkpoint: {saved_id!r}")
        storage_type, key, numel = saved_id[1], str(saved_id[2]), int(saved_id[4])
        if not isinstance(storage_type, _StorageType):
            raise PthFormatError(f"unsupported storage type {storage_type!r}")
        return self._load_storage(key, storage_type.dtype, numel)


def _materialise(obj):
    """Turn rebuilt-tensor tuples into NumPy arrays, recursively."""
    if isinstance(obj, tuple) and len(obj) == 5 and obj[0] == "tensor":
        _, storage, offset, size, stride = obj
        data = storage.array
        if data is None:
            raise PthFormatError("a tensor refers to a storage whose bytes are missing (truncated file?)")
        itemsize = data.dtype.itemsize
        needed = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1 if all(size) else 0
        if needed > data.size:
            raise PthFormatError("a tensor reaches past the end of its storage (truncated or corrupt file)")
        view = np.lib.stride_tricks.as_strided(
            data[offset:], shape=size, strides=tuple(st * itemsize for st in stride)
        ) if all(size) else np.zeros(size, data.dtype)
        array = np.array(view, copy=True)
        if storage.dtype == _STORAGE_DTYPES["BFloat16Storage"]:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array
    if isinstance(obj, dict):
        result = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
        for key, value in obj.items():
            result[key] = _materialise(value)
        return result
    if isinstance(obj, list):
        return [_materialise(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v) for v in obj)
    return obj


def _read_zip(path: Path) -> object:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise PthFormatError(f"{path} is a zip file but holds no data.pkl: not a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        storages: dict[str, _LazyStorage] = {}

        def load_storage(key, dtype, numel):
            if key not in storages:
                storage = _LazyStorage(dtype, numel)
                try:
                    raw = archive.read(f"{prefix}data/{key}")
                except KeyError:
                    raise PthFormatError(f"storage {key} is missing from {path}") from None
                if len(raw) < numel * dtype.itemsize:
                    raise PthFormatError(f"storage {key} in {path} is shorter than its header says (corrupt file)")
                storage.array = np.frombuffer(raw, dtype=dtype, count=numel)
                storages[key] = storage
            return storages[key]

        obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), load_storage).load()
    return _materialise(obj)


def _read_legacy(path: Path) -> object:
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except Exception as error:
            raise PthFormatError(f"{path} is neither a zip nor a legacy PyTorch checkpoint ({error})") from None
        if magic != _LEGACY_MAGIC:
            raise PthFormatError(f"{path} does not start with PyTorch's checkpoint magic number")
        pickle.load(f)  # protocol version
        pickle.load(f)  # system info (byte order, type sizes)
        storages: dict[str, _LazyStorage] = {}

        def load_storage(key, dtype, numel):
            if key not in storages:
                storages[key] = _LazyStorage(dtype, numel)
            return storages[key]

        obj = _Unpickler(f, load_storage).load()
        keys = pickle.load(f)
        for key in keys:
            storage = storages.get(str(key))
            if storage is None:
                raise PthFormatError(f"storage key {key} listed but never used in {path}")
            header = f.read(8)
            if len(header) != 8:
                raise PthFormatError(f"{path} ends before storage {key} (truncated file)")
            (numel,) = struct.unpack("<q", header)
            raw = f.read(numel * storage.dtype.itemsize)
            if len(raw) != numel * storage.dtype.itemsize:
                raise PthFormatError(f"{path} ends inside storage {key} (truncated file)")
            storage.array = np.frombuffer(raw, dtype=storage.dtype)
    return _materialise(obj)


def load_state_dict(path: str | Path) -> "collections.OrderedDict[str, np.ndarray]":
    """Read a ``.pth`` state dict as ``{name: float32/int ndarray}``.

    Checkpoints that wrap the state dict (``{"state_dict": ...}`` or
    ``{"model": ...}``) are unwrapped.
    """
    path = Path(path)
    try:
        obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except PthFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, ValueError) as error:
        raise PthFormatError(f"{path} is not a readable PyTorch checkpoint: {error}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise PthFormatError(f"{path} does not hold a state dict of tensors")
    return obj
