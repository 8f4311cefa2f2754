"""Read and write `torch.save` checkpoints without torch (numpy only).

Reading: `load_torch_pickle(path) -> {key: np.ndarray}` accepts
  * the zip format of torch >= 1.6: members `<stem>/data.pkl` (the pickle), `<stem>/data/<key>`
    (raw storages), `<stem>/byteorder`, ...; any `<stem>` (not only `archive/`);
  * the legacy (torch < 1.6) stream: magic number, protocol, sys-info pickles, the object pickle,
    the storage-key list and then each storage as `int64 numel` + raw bytes.
The pickle is read with a RESTRICTED unpickler: `find_class` only resolves
`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2 / _rebuild_tensor / _rebuild_parameter`
and the `torch.*Storage` types, each mapped to a numpy stand-in defined here (torch is never
imported). Any other global (`os.system`, `builtins.eval`, `functools.partial`, ...) raises
`UnsafePickleError` naming `module.name` and the file before anything is called: a GLOBAL opcode
is resolved before the REDUCE that would call it, so a malicious pickle runs no code.
torch's `_metadata` attribute (set on the OrderedDict via BUILD) is accepted and dropped.

Tied tensors (several keys pointing at one storage, e.g. `lm_head.weight` and
`transformer.wte.weight`) come out as numpy VIEWS of the same buffer: `np.shares_memory(a, b)` is
True, so copy before mutating in place.

Writing: `save_torch_pickle(path, state_dict)` emits the zip format with a hand-written protocol-2
pickle that references only the globals above (so `torch.load(..., weights_only=True)` accepts
it); arrays that are the same object / view of the same memory with the same layout share one
storage, as torch writes tied weights. Storages are 64-byte aligned like torch's writer.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

try:  # ml_dtypes ships with jax; only needed for bfloat16 storages
    from ml_dtypes import bfloat16 as _bf16
except ImportError:  # pragma: no cover
    _bf16 = None


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global outside the tensor allow-list; nothing was executed."""


# torch storage class name -> numpy dtype
_STORAGE_DTYPES: dict[str, Any] = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": _bf16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "UntypedStorage": np.uint8,
}
_DTYPE_STORAGES = {np.dtype(v): k for k, v in _STORAGE_DTYPES.items()
                   if v is not None and k != "UntypedStorage"}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    """Stand-in for a `torch.XStorage` class: only carries the dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    def __repr__(self):
        return f"torch.{self.name}"


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """numpy view of `storage` ([numel] array) with torch's offset/size/stride (in elements)."""
    if not isinstance(storage, np.ndarray):
        raise pickle.UnpicklingError(f"tensor rebuilt from a non-storage {type(storage).__name__}")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in rank")
    offset = int(storage_offset)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if offset < 0 or any(s < 0 for s in stride) or last >= storage.shape[0]:
        raise pickle.UnpicklingError(
            f"tensor (offset {offset}, size {size}, stride {stride}) lies outside its storage of "
            f"{storage.shape[0]} elements")
    item = storage.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(s * item for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_ignored):
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name, dt in _STORAGE_DTYPES.items() if dt is not None},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str, load_storage):
        super().__init__(file)
        self._source = source
        self._load_storage = load_storage  # (key, storage_type, numel) -> [numel] array

    def find_class(self, module, name):
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise UnsafePickleError(
                f"{self._source}: refusing to load global '{module}.{name}'; only tensor rebuilding "
                f"and plain containers are allowed (nothing was executed). If you trust the file, "
                f"re-save it as safetensors.")
        return target

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafePickleError(f"{self._source}: unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        return self._load_storage(str(key), storage_type, int(numel))


def _storage_array(raw: bytes | bytearray, storage_type: _StorageType, numel: int,
                   byteorder: str, where: str) -> np.ndarray:
    dtype = np.dtype(storage_type.dtype)
    if storage_type.name == "UntypedStorage":
        numel = len(raw)
    if len(raw) < numel * dtype.itemsize:
        raise pickle.UnpicklingError(f"{where}: storage has {len(raw)} bytes, expected "
                                     f"{numel} x {dtype.itemsize} ({storage_type})")
    arr = np.frombuffer(bytearray(raw[: numel * dtype.itemsize]), dtype=dtype)
    if byteorder == "big" and dtype.itemsize > 1:
        arr = arr.byteswap()
    return arr


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise pickle.UnpicklingError(f"{path}: expected one '<stem>/data.pkl' member in the torch "
                                         f"zip archive, found {pkls or 'none'}")
        stem = pkls[0][: -len("data.pkl")]
        byteorder = "little"
        if stem + "byteorder" in names:
            byteorder = zf.read(stem + "byteorder").decode().strip()
        cache: dict[str, np.ndarray] = {}

        def load_storage(key, storage_type, numel):
            if key not in cache:
                member = f"{stem}data/{key}"
                if member not in names:
                    raise pickle.UnpicklingError(f"{path}: storage member {member} is missing")
                cache[key] = _storage_array(zf.read(member), storage_type, numel, byteorder,
                                            f"{path}:{member}")
            return cache[key]

        up = _RestrictedUnpickler(io.BytesIO(zf.read(pkls[0])), f"{path}:{pkls[0]}", load_storage)
        return up.load()


def _load_legacy(path: Path) -> Any:
    """torch < 1.6 stream format; storages are read after the object pickle, so views are
    attached once their bytes are known."""
    with open(path, "rb") as f:
        def safe_load(what):
            return _RestrictedUnpickler(f, f"{path} ({what})", _no_storage).load()

        def _no_storage(key, storage_type, numel):
            raise UnsafePickleError(f"{path}: storage reference outside the object pickle")

        magic = safe_load("magic number")
        if magic != _LEGACY_MAGIC:
            raise pickle.UnpicklingError(f"{path}: not a torch checkpoint (no zip archive and no "
                                         "legacy magic number)")
        protocol = safe_load("protocol version")
        if protocol != 1001:
            raise pickle.UnpicklingError(f"{path}: unsupported legacy protocol {protocol}")
        sys_info = safe_load("sys info")
        byteorder = "little" if sys_info.get("little_endian", True) else "big"
        pending: dict[str, tuple] = {}

        def load_storage(key, storage_type, numel):
            if key not in pending:
                buf = np.zeros(numel, dtype=storage_type.dtype)
                pending[key] = (buf, storage_type)
            return pending[key][0]

        obj = _RestrictedUnpickler(f, f"{path} (objects)", load_storage).load()
        keys = safe_load("storage keys")
        for key in keys:
            (size,) = struct.unpack("<q" if byteorder == "little" else ">q", f.read(8))
            buf, storage_type = pending[str(key)]
            nbytes = size * buf.itemsize
            raw = f.read(nbytes)
            buf[:] = _storage_array(raw, storage_type, size, byteorder, f"{path}: storage {key}")
        return obj


def load_torch_object(path: str | os.PathLike) -> Any:
    """The unpickled object of a torch checkpoint, tensors as numpy arrays (restricted loader)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"torch checkpoint {path} does not exist")
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)


def load_torch_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """`{key: array}` of a torch-saved state dict (nested dicts are flattened with '.')."""
    obj = load_torch_object(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict (mapping), got {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}

    def walk(prefix, node):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, np.ndarray):
                out[key] = v
            elif isinstance(v, Mapping):
                walk(key + ".", v)
            else:
                raise ValueError(f"{path}: key '{key}' holds a {type(v).__name__}, not a tensor")

    walk("", obj)
    return out


# ------------------------------------------------------------------------------------------
# writer
# ------------------------------------------------------------------------------------------
class _PickleWriter:
    """Just enough protocol-2 opcodes for an OrderedDict of tensors."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.buf.write(b"\x80\x02")  # PROTO 2

    def op(self, b: bytes):
        self.buf.write(b)

    def glob(self, module: str, name: str):
        self.op(b"c" + f"{module}\n{name}\n".encode())

    def str(self, s: str):
        data = s.encode("utf-8")
        self.op(b"X" + struct.pack("<I", len(data)) + data)

    def int(self, v: int):
        if 0 <= v < 2**31:
            self.op(b"J" + struct.pack("<i", v))
        else:
            data = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.op(b"\x8a" + bytes([len(data)]) + data)  # LONG1

    def int_tuple(self, values):
        if not values:
            self.op(b")")
            return
        self.op(b"(")
        for v in values:
            self.int(int(v))
        self.op(b"t")

    def empty_ordered_dict(self):
        self.glob("collections", "OrderedDict")
        self.op(b")R")  # EMPTY_TUPLE, REDUCE


def save_torch_pickle(path: str | os.PathLike, state_dict: Mapping[str, Any]) -> None:
    """Write `state_dict` ({key: array}) as a torch zip checkpoint loadable by `torch.load`.

    The zip stem is the file name without its suffix (as torch does). Arrays that are the same
    memory with the same layout share one storage (tied weights stay tied in torch).
    """
    path = Path(path)
    stem = path.stem or "archive"
    w = _PickleWriter()
    w.empty_ordered_dict()
    storages: list[np.ndarray] = []
    seen: dict[tuple, int] = {}
    w.op(b"(")  # MARK for SETITEMS
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"save_torch_pickle: keys must be str, got {key!r}")
        arr = np.asarray(value)
        if arr.dtype not in _DTYPE_STORAGES:
            raise TypeError(f"save_torch_pickle: '{key}' has unsupported dtype {arr.dtype}")
        ident = (arr.__array_interface__["data"][0], arr.shape, arr.strides, arr.dtype.str)
        if ident not in seen or not arr.size:
            seen[ident] = len(storages)
            storages.append(np.array(arr, order="C").reshape(-1))
        skey = seen[ident]
        w.str(key)
        w.glob("torch._utils", "_rebuild_tensor_v2")
        w.op(b"(")  # args tuple
        w.op(b"(")  # persistent id tuple
        w.str("storage")
        w.glob("torch", _DTYPE_STORAGES[arr.dtype])
        w.str(str(skey))
        w.str("cpu")
        w.int(arr.size)
        w.op(b"tQ")  # TUPLE, BINPERSID
        w.int(0)
        w.int_tuple(arr.shape)
        w.int_tuple([int(np.prod(arr.shape[i + 1:])) for i in range(arr.ndim)])  # C strides
        w.op(b"\x89")  # NEWFALSE (requires_grad)
        w.empty_ordered_dict()  # backward hooks
        w.op(b"tR")  # TUPLE, REDUCE
    w.op(b"u.")  # SETITEMS, STOP

    members = [("data.pkl", w.buf.getvalue()), (".format_version", b"1"),
               (".storage_alignment", b"64"), ("byteorder", b"little")]
    members += [(f"data/{i}", s.astype(s.dtype.newbyteorder("<"), copy=False).tobytes())
                for i, s in enumerate(storages)]
    members.append(("version", b"3\n"))
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(f"{stem}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            # pad the local header so the data starts on a 64-byte boundary (torch's layout)
            start = zf.fp.tell() + 30 + len(info.filename.encode())
            pad = (-(start + 4)) % 64
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            zf.writestr(info, data)
    os.replace(tmp, path)
