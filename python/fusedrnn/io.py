"""Checkpoints in the safetensors layout: a model's parameters, its config, optimiser state and
user metadata in one file that the ``safetensors`` package (and any other safetensors reader)
can open.

File layout (https://github.com/huggingface/safetensors): an 8-byte little-endian unsigned
header length L, L bytes of UTF-8 JSON, then the raw little-endian tensor bytes. The header is
``{"__metadata__": {str: str}, "<name>": {"dtype": "F32", "shape": [..], "data_offsets":
[begin, end]}, ...}`` with offsets relative to the data section; tensors are written in header
order, contiguous, and the header is padded with spaces so the data section starts 8-byte
aligned.

Two layers:

* :func:`save_tensors` / :func:`load_tensors`: any dict of arrays (F16, F32, F64, I8, I16, I32,
  I64, U8, U16, U32, U64, BOOL) plus a str -> str metadata dict. Writes are atomic (temporary
  file in the same directory, fsync, ``os.replace``); reads validate the whole header and the
  file size before allocating anything and raise :class:`CheckpointError` on any
  inconsistency. Round trips are bitwise (NaN payloads and -0.0 included).
* :func:`save` / :func:`load`: a :class:`fusedrnn.module.Module`'s ``state_dict()`` under its
  own names, the model's ``config()`` (so :func:`load` can rebuild it without the code that
  made it), an optimiser's ``state_dict()``, JSON-serialisable user metadata, and which
  recurrent layers were frozen copies at which precision (``__metadata__["frozen"]``).
"""
from __future__ import annotations

import errno
import json
import math
import os
import secrets
import stat
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .module import Module, module_from_config

__all__ = ["CheckpointError", "WriteError", "NonFiniteWeightsWarning", "Checkpoint",
           "save_tensors", "load_tensors", "tensor_shapes", "save", "load"]

FORMAT = "fusedrnn"
FORMAT_VERSION = "1"
MAX_HEADER_BYTES = 100_000_000      # the safetensors package's limit
OPTIMIZER_PREFIX = "__optimizer__/state/"

# safetensors dtype name <-> little-endian numpy dtype
_DTYPE_OF_NAME = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"), "U16": np.dtype("<u2"), "U32": np.dtype("<u4"), "U64": np.dtype("<u8"),
    "I8": np.dtype("i1"), "I16": np.dtype("<i2"), "I32": np.dtype("<i4"), "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
}
_NAME_OF_KIND_SIZE = {(dt.kind, dt.itemsize): name for name, dt in _DTYPE_OF_NAME.items()}


class CheckpointError(ValueError):
    """A file that is not a valid safetensors file, or not a valid fusedrnn checkpoint."""


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load` returns.

    model: the given model with the weights loaded, or the model rebuilt from the stored
        config, or None (no model given and no config stored).
    state_dict: name -> array of the model's tensors, as stored.
    optimizer_state: the optimiser state dict (``{"state": {int: {key: value}},
        "param_groups": [...]}``) or None if the file has none.
    metadata: the keyword arguments given to :func:`save` (JSON round trip: tuples come back
        as lists).
    config: the model's ``config()`` or None.
    fusedrnn_version: the version of fusedrnn that wrote the file.
    frozen: {module name: precision} of the recurrent layers that were frozen copies when the
        model was saved ("" names the model itself, a bare layer), empty if none. A model
        rebuilt from the config comes back with those layers frozen at those precisions.
    """

    model: Optional[Module]
    state_dict: "OrderedDict[str, np.ndarray]"
    optimizer_state: Optional[dict]
    metadata: Dict[str, Any]
    config: Optional[dict]
    fusedrnn_version: Optional[str]
    frozen: Dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Tensor layer

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _dtype_name(name: str, a: np.ndarray) -> str:
    dt = a.dtype
    key = (dt.kind, dt.itemsize)
    if dt.fields is not None or dt.subdtype is not None or key not in _NAME_OF_KIND_SIZE:
        raise TypeError(f"save_tensors: tensor {name!r} has dtype {dt}; expected one of "
                        f"bool, uint8/16/32/64, int8/16/32/64, float16/32/64")
    return _NAME_OF_KIND_SIZE[key]


def _check_metadata(fn: str, metadata) -> Dict[str, str]:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(f"{fn}: metadata must be a dict of str to str, "
                        f"got {type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"{fn}: metadata must map str to str, got {k!r}: "
                            f"{type(v).__name__}")
        _check_utf8(fn, "metadata", k)
        _check_utf8(fn, "metadata", v)
    return dict(metadata)


def _check_utf8(fn: str, what: str, s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{fn}: {what} {s!r} is not encodable as UTF-8") from None


def _le_bytes(a: np.ndarray) -> memoryview:
    """The array's bytes, C order, little-endian (a view when it already is)."""
    if a.dtype.kind == "b":  # a bool array viewed from other bytes: store canonical 0 / 1
        u8 = np.ascontiguousarray(a).view(np.uint8)
        if u8.size and u8.max() > 1:
            a = u8 != 0
    le = a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype
    a = np.ascontiguousarray(a, dtype=le)  # byte order only: same values, same dtype name
    return memoryview(a.reshape(-1).view(np.uint8))


def _write_tensor(f, a: np.ndarray) -> None:
    f.write(_le_bytes(a))


#: temporary files of an interrupted save older than this are removed by the next save
STALE_TMP_SECONDS = 60.0


class WriteError(OSError):
    """Writing a file failed (disk full, no permission, ...): the message names the user's
    path, the reason and the bytes the file needs; the previous file, if any, is untouched."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _fmt_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"  # pragma: no cover


def _tmp_name(base: str) -> str:
    return f".{base}.{secrets.token_hex(6)}.tmp"


def _remove_stale_tmp(directory: str, base: str) -> None:
    """Removes temporaries ``.<base>.<12 hex>.tmp`` older than STALE_TMP_SECONDS: what a save
    killed by SIGKILL / SIGTERM / a power cut leaves behind (only our own naming)."""
    import re
    import time
    pattern = re.compile(r"\." + re.escape(base) + r"\.[0-9a-f]{12}\.tmp\Z")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    now = time.time()
    for name in names:
        if pattern.match(name):
            p = os.path.join(directory, name)
            try:
                if now - os.lstat(p).st_mtime > STALE_TMP_SECONDS:
                    os.unlink(p)
            except OSError:
                pass


def _atomic_write(path: str, write, nbytes: Optional[int] = None, by_path: bool = False) -> None:
    """Calls ``write(f)`` on a temporary file next to the target, fsyncs it and renames it onto
    the target. The target is ``path``, or the file a symbolic link ``path`` points to (the
    link stays a link); an existing target keeps its permission bits. On any failure the
    temporary file is removed, the target is untouched, and an OSError is raised as
    :class:`WriteError` naming ``path`` (and ``nbytes``, the size the file needs).
    ``by_path``: ``write(tmp_path)`` for writers that open the file themselves (h5py)."""
    target = os.path.realpath(path) if os.path.islink(path) else path
    if os.path.isdir(target):
        raise WriteError(errno.EISDIR, f"cannot write {path}: it is a directory", path)
    try:
        st = os.stat(target)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        # a device, FIFO or socket (/dev/null, a named pipe): renaming a file onto it would
        # replace the node itself (as root, /dev/null with it)
        raise WriteError(errno.EINVAL, f"cannot write {path}: it is not a regular file (a "
                                       f"device, pipe or socket); give a file path", path)
    directory = os.path.dirname(os.path.abspath(target))
    base = os.path.basename(target)
    mode = None if st is None else st.st_mode & 0o7777
    _remove_stale_tmp(directory, base)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    tmp = None
    try:
        for _ in range(100):
            tmp = os.path.join(directory, _tmp_name(base))
            try:
                fd = os.open(tmp, flags, 0o666)  # the umask applies, as for open(path, "wb")
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover
            raise FileExistsError(errno.EEXIST, "no free temporary file name")
        try:
            if by_path:   # (the name is reserved: the writer opens it itself)
                os.close(fd)
                write(tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            else:
                with os.fdopen(fd, "wb") as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as e:
        if isinstance(e, WriteError):
            raise
        need = f" ({_fmt_bytes(nbytes)} needed)" if nbytes is not None else ""
        raise WriteError(e.errno, f"cannot write {path}: {e.strerror or e}{need}",
                         path) from e
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        try:
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass


def write_file(path: str, data: bytes) -> None:
    """``data`` to ``path`` atomically, with the guarantees of the checkpoint writer."""
    def write(f):
        f.write(data)
    _atomic_write(path, write, len(data))


def _check_path(fn: str, path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{fn}: path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"{fn}: path must be a str path, got {type(path).__name__}")
    return path


def save_tensors(path, tensors: Mapping[str, np.ndarray],
                 metadata: Optional[Mapping[str, str]] = None) -> None:
    """Writes ``tensors`` (name -> numpy array) and ``metadata`` (str -> str) to ``path`` in the
    safetensors format, atomically. Tensors are laid out in the dict's order."""
    fn = "save_tensors"
    path = _check_path(fn, path)
    if not isinstance(tensors, Mapping):
        raise TypeError(f"{fn}: tensors must be a dict of str to numpy arrays, "
                        f"got {type(tensors).__name__}")
    metadata = _check_metadata(fn, metadata)
    header: "OrderedDict[str, Any]" = OrderedDict()
    if metadata is not None:
        header["__metadata__"] = metadata
    arrays = []
    offset = 0
    for name, a in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"{fn}: tensor names must be str, got {name!r}")
        if name == "__metadata__":
            raise ValueError(f"{fn}: '__metadata__' is reserved and cannot name a tensor")
        _check_utf8(fn, "tensor name", name)
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{fn}: tensor {name!r} must be a numpy array, "
                            f"got {type(a).__name__}")
        dtype = _dtype_name(name, a)
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # data section 8-byte aligned

    def write(f):
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for a in arrays:
            _write_tensor(f, a)

    _atomic_write(path, write, 8 + len(text) + offset)


def _no_constants(s: str):
    raise ValueError(f"{s} is not valid JSON")


def _unique_pairs(pairs):
    d = OrderedDict()
    for k, v in pairs:
        if k in d:
            raise CheckpointError(f"duplicate key {k!r} in the header")
        d[k] = v
    return d


def _parse_header(raw: bytes, where: str) -> "OrderedDict[str, Any]":
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{where}: header is not valid UTF-8 ({e})") from None
    if not text.startswith("{"):
        raise CheckpointError(f"{where}: header must be a JSON object starting with '{{', "
                              f"got {text[:20]!r}")
    try:
        header = json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_no_constants)
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{where}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: header must be a JSON object, "
                              f"got {type(header).__name__}")
    return header


def _parse_entry(where: str, name: str, entry) -> Tuple[np.dtype, Tuple[int, ...], int, int]:
    what = f"{where}: tensor {name!r}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise CheckpointError(f"{what} must be an object with exactly 'dtype', 'shape' and "
                              f"'data_offsets', got {got}")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in _DTYPE_OF_NAME:
        raise CheckpointError(f"{what} has unknown dtype {dtype!r} "
                              f"(supported: {sorted(_DTYPE_OF_NAME)})")
    dt = _DTYPE_OF_NAME[dtype]
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{what}: shape must be a list of non-negative integers, "
                              f"got {shape!r}")
    offsets = entry["data_offsets"]
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(_is_int(o) and o >= 0 for o in offsets)):
        raise CheckpointError(f"{what}: data_offsets must be [begin, end] with non-negative "
                              f"integers, got {offsets!r}")
    begin, end = offsets
    if end < begin:
        raise CheckpointError(f"{what}: data_offsets {offsets} are out of order (end < begin)")
    nbytes = math.prod(shape) * dt.itemsize
    if end - begin != nbytes:
        raise CheckpointError(f"{what}: data_offsets {offsets} span {end - begin} bytes but "
                              f"shape {shape} x {dtype} needs {nbytes}")
    return dt, tuple(shape), begin, end


def _reader_path(fn: str, path) -> Tuple[str, str]:
    """(path as str, the prefix of error messages); CheckpointError for a directory."""
    path = _check_path(fn, path)
    where = f"{fn}({path!r})"
    if os.path.isdir(path):
        raise CheckpointError(f"{where}: {path} is a directory, not a safetensors file")
    return path, where


def tensor_shapes(path) -> Dict[str, Tuple[int, ...]]:
    """name -> shape of the tensors of a safetensors file, from its header alone (nothing else
    is read or allocated); CheckpointError for a malformed header."""
    path, where = _reader_path("tensor_shapes", path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = int.from_bytes(f.read(8), "little") if size >= 8 else -1
        if not 0 <= n <= min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(f"{where}: not a safetensors file (bad header length)")
        header = _parse_header(f.read(n), where)
    return {name: _parse_entry(where, name, e)[1] for name, e in header.items()
            if name != "__metadata__"}


def load_tensors(path) -> Tuple["OrderedDict[str, np.ndarray]", Dict[str, str]]:
    """Reads a safetensors file: (name -> array in header order, metadata dict).

    The arrays are owned, writeable, C-contiguous and in native byte order. Anything
    inconsistent raises :class:`CheckpointError` before the tensors are read.
    """
    path, where = _reader_path("load_tensors", path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise CheckpointError(f"{where}: the file is {size} bytes, shorter than the "
                                  f"8-byte header length")
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{where}: header length {n} exceeds the "
                                  f"{MAX_HEADER_BYTES}-byte limit (not a safetensors file?)")
        if n > size - 8:
            raise CheckpointError(f"{where}: header length {n} is larger than the "
                                  f"{size - 8} bytes after the length prefix (truncated?)")
        raw = f.read(n)
        if len(raw) != n:
            raise CheckpointError(f"{where}: file changed while reading the header")
        header = _parse_header(raw, where)

        metadata: Dict[str, str] = {}
        entries = []  # (name, dtype, shape, begin, end) in header order
        for name, entry in header.items():
            if name == "__metadata__":
                if not isinstance(entry, dict):
                    raise CheckpointError(f"{where}: __metadata__ must be an object, "
                                          f"got {type(entry).__name__}")
                for k, v in entry.items():
                    if not isinstance(v, str):
                        raise CheckpointError(f"{where}: __metadata__ values must be strings, "
                                              f"got {k!r}: {v!r}")
                metadata = dict(entry)
                continue
            entries.append((name,) + _parse_entry(where, name, entry))

        expected = 0
        for name, _, _, begin, end in sorted(entries, key=lambda e: (e[3], e[4])):
            if begin != expected:
                kind = "overlaps the previous tensor" if begin < expected else "leaves a gap"
                raise CheckpointError(f"{where}: tensor {name!r} data_offsets [{begin}, {end}] "
                                      f"{kind} (expected it to start at {expected})")
            expected = end
        data_len = size - 8 - n
        if data_len != expected:
            kind = "truncated" if data_len < expected else "trailing bytes"
            raise CheckpointError(f"{where}: the data section is {data_len} bytes but the "
                                  f"header describes {expected} ({kind})")

        out: "OrderedDict[str, np.ndarray]" = OrderedDict()
        for name, dt, shape, begin, end in entries:
            try:
                a = np.empty(shape, dtype=np.uint8 if dt.kind == "b" else dt)
            except (ValueError, MemoryError, OverflowError) as e:
                raise CheckpointError(f"{where}: tensor {name!r} with shape {list(shape)} "
                                      f"cannot be allocated ({e})") from None
            f.seek(8 + n + begin)
            if f.readinto(memoryview(a.reshape(-1).view(np.uint8))) != end - begin:
                raise CheckpointError(f"{where}: file changed while reading tensor {name!r}")
            if dt.kind == "b":
                if a.size and a.max() > 1:
                    raise CheckpointError(f"{where}: BOOL tensor {name!r} holds bytes other "
                                          f"than 0 and 1")
                a = a.view(np.bool_)
            elif dt.itemsize > 1 and sys.byteorder != "little":
                a = a.byteswap().view(dt.newbyteorder("="))  # explicit little -> native
            out[name] = a
    return out, metadata


# ----------------------------------------------------------------------------------------------
# Model layer

def _json(fn: str, what: str, value) -> str:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{fn}: {what} must be JSON-serialisable (dicts, lists, str, int, "
                        f"finite float, bool, None): {e}") from None


def _optimizer_parts(fn: str, state_dict) -> Tuple["OrderedDict[str, np.ndarray]", str]:
    """Splits an optimiser state dict into tensors and the JSON of everything else."""
    if not isinstance(state_dict, Mapping) or set(state_dict) != {"state", "param_groups"}:
        got = (list(state_dict) if isinstance(state_dict, Mapping)
               else type(state_dict).__name__)
        raise TypeError(f"{fn}: optimizer.state_dict() must be a dict with keys 'state' and "
                        f"'param_groups', got {got}")
    state, groups = state_dict["state"], state_dict["param_groups"]
    if not isinstance(state, Mapping):
        raise TypeError(f"{fn}: optimizer state must be a dict of int to dict, "
                        f"got {type(state).__name__}")
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, Mapping) for g in groups):
        raise TypeError(f"{fn}: optimizer param_groups must be a list of dicts")
    tensors: "OrderedDict[str, np.ndarray]" = OrderedDict()
    scalars: Dict[str, Dict[str, Any]] = {}
    for index, entry in state.items():
        if not _is_int(index) or index < 0:
            raise TypeError(f"{fn}: optimizer state keys must be non-negative ints, "
                            f"got {index!r}")
        if not isinstance(entry, Mapping):
            raise TypeError(f"{fn}: optimizer state[{index}] must be a dict, "
                            f"got {type(entry).__name__}")
        s = scalars.setdefault(str(index), {})
        for key, v in entry.items():
            if not isinstance(key, str) or not key:
                raise TypeError(f"{fn}: optimizer state[{index}] keys must be non-empty str, "
                                f"got {key!r}")
            if isinstance(v, np.ndarray):
                _dtype_name(f"{OPTIMIZER_PREFIX}{index}/{key}", v)
                tensors[f"{OPTIMIZER_PREFIX}{index}/{key}"] = v
            elif v is None or isinstance(v, (bool, int, float, str)):
                _json(fn, f"optimizer state[{index}][{key!r}]", v)
                s[key] = v
            else:
                raise TypeError(f"{fn}: optimizer state[{index}][{key!r}] must be a numpy "
                                f"array or a Python int/float/bool/str/None, "
                                f"got {type(v).__name__}")
    for i, g in enumerate(groups):
        params = g.get("params")
        if not isinstance(params, (list, tuple)) or not all(_is_int(p) for p in params):
            raise TypeError(f"{fn}: optimizer param_groups[{i}]['params'] must be a list of "
                            f"int indices, got {params!r}")
    text = _json(fn, "optimizer param_groups", {"state": scalars,
                                                 "param_groups": [dict(g) for g in groups]})
    return tensors, text


# The C++ loader's limits for the user metadata (json.h kMaxMetadataDepth, kMaxMetadataValues):
# save refuses metadata beyond them, so that every checkpoint Python writes, C++ loads.
_MAX_METADATA_DEPTH = 512
_MAX_METADATA_VALUES = 1 << 23


def _check_metadata_size(fn, metadata) -> None:
    """Counts metadata's JSON values (containers included, keys not) and its nesting (the
    object itself is depth 1) as the C++ parser does; ValueError beyond its limits. Strings
    (keys too) must be valid Unicode: json.dumps writes a lone surrogate (how Python spells an
    undecodable byte of a file name, os.fsdecode) as a \\u escape, which the C++ parser, as
    JSON's RFC 8259 asks, refuses."""
    values, stack = 0, [(metadata, 1)]
    while stack:
        v, depth = stack.pop()
        values += 1
        if values > _MAX_METADATA_VALUES:
            raise ValueError(f"{fn}: the metadata holds more than {_MAX_METADATA_VALUES} JSON "
                             f"values, more than the C++ loader (fusedrnn::Model::load) reads")
        if isinstance(v, str):
            _check_utf8(fn, "metadata string", v)
            continue
        if isinstance(v, dict):
            for k in v:
                if isinstance(k, str):
                    _check_utf8(fn, "metadata key", k)
            children = v.values()
        elif isinstance(v, (list, tuple)):
            children = v
        else:
            continue
        if depth > _MAX_METADATA_DEPTH:
            raise ValueError(f"{fn}: the metadata nests deeper than {_MAX_METADATA_DEPTH} "
                             f"levels, more than the C++ loader (fusedrnn::Model::load) reads")
        stack.extend((c, depth + 1) for c in children)


def save(path, model: Module, optimizer=None, **metadata) -> None:
    """Saves ``model.state_dict()``, the model's config (when it has one), the optimiser's
    ``state_dict()`` (when given) and ``metadata`` (JSON-serialisable values) to ``path``.

    The file is a safetensors file: model tensors keep their names ("rnn.weight_ih_l0"),
    optimiser arrays are named ``__optimizer__/state/<index>/<key>``. A model with frozen
    recurrent layers (frozen copies, any precision) is saved as their float32 weights and
    config plus ``__metadata__["frozen"]``, ``{"<module name>": "<precision>"}``, from which
    :func:`load` freezes them again.
    """
    fn = "save"
    path = _check_path(fn, path)
    if not isinstance(model, Module):
        raise TypeError(f"{fn}: model must be a fusedrnn Module, got {type(model).__name__}")
    if optimizer is not None and not callable(getattr(optimizer, "state_dict", None)):
        raise TypeError(f"{fn}: optimizer must have a state_dict() method, "
                        f"got {type(optimizer).__name__}")
    for k, v in metadata.items():
        _json(fn, f"metadata {k!r}", v)
    user_meta = _json(fn, "metadata", metadata)
    _check_metadata_size(fn, metadata)

    tensors: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for name, a in model.state_dict().items():
        if name.startswith("__"):
            raise ValueError(f"{fn}: model tensor names may not start with '__' "
                             f"(reserved), got {name!r}")
        tensors[name] = a

    from . import __version__
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "fusedrnn_version": __version__}
    try:
        config = model.config()
    except TypeError:  # an unregistered module: no config, load needs the model instance
        config = None
    if config is not None:
        meta["model"] = _json(fn, "model.config()", config)
    # A frozen copy's tensors are the float32 weights it was frozen from (the bf16 / int8
    # kernels round or quantise them when they pack, deterministically), and its config is the
    # trainable layer's: the freeze and its precision are stored beside them, so that load
    # freezes the rebuilt model again and gives the same outputs. (A key of its own, not in
    # the config: the C++ loader refuses unknown config keys and ignores other metadata.)
    frozen = _frozen_layers(model)
    if frozen:
        meta["frozen"] = _json(fn, "frozen layers", frozen)
    meta["metadata"] = user_meta
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _optimizer_parts(fn, optimizer.state_dict())
        tensors.update(opt_tensors)
    save_tensors(path, tensors, meta)


def _frozen_layers(model: Module) -> Dict[str, str]:
    """{module name: precision} of the frozen recurrent layers (frozen() copies) in model."""
    from .layers import _RNNBase
    return {name: m.precision for name, m in model.named_modules()
            if isinstance(m, _RNNBase) and m.is_frozen}


def _refreeze(where: str, model: Module, frozen: Mapping[str, str]) -> Module:
    """The rebuilt ``model`` with the layers named in ``frozen`` replaced by their
    ``frozen(precision)`` copies, in eval mode (as models.freeze returns a frozen model): the
    same kernels and packing from the same float32 weights, so the outputs of the saved copy."""
    from .layers import _RNNBase
    modules = dict(model.named_modules())
    for name, precision in frozen.items():
        layer = modules.get(name)
        if not isinstance(layer, _RNNBase):
            raise CheckpointError(f"{where}: __metadata__['frozen'] names {name!r}, which is "
                                  f"not a recurrent layer (LSTM / GRU / RNN) of the model")
        try:
            twin = layer.frozen(precision)
        except ValueError as e:
            raise CheckpointError(f"{where}: cannot freeze {name or 'the model'} at precision "
                                  f"{precision!r} again ({e})") from None
        if not name:
            return twin
        parent, _, attr = name.rpartition(".")
        setattr(modules[parent], attr, twin)
    model.eval()
    return model


def _frozen_meta(where: str, text: str) -> Dict[str, str]:
    from .models import PRECISIONS
    frozen = _loads(where, "frozen", text, dict)
    for name, precision in frozen.items():
        if precision not in PRECISIONS or (name == "" and len(frozen) != 1):
            raise CheckpointError(f"{where}: __metadata__['frozen'] must map module names to "
                                  f"one of {', '.join(PRECISIONS)} ('' alone for a bare "
                                  f"layer), got {name!r}: {precision!r}")
    return frozen


def _loads(where: str, key: str, text: str, kind: type):
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{where}: __metadata__[{key!r}] is not valid JSON ({e})") from None
    if not isinstance(value, kind):
        raise CheckpointError(f"{where}: __metadata__[{key!r}] must hold a JSON "
                              f"{'object' if kind is dict else kind.__name__}")
    return value


def _index(s: str) -> Optional[int]:
    """The int written as ``str(i)`` (canonical decimal), else None."""
    if s.isascii() and s.isdigit() and str(int(s)) == s:
        return int(s)
    return None


def _optimizer_state(where: str, text: str, tensors: Mapping[str, np.ndarray]) -> dict:
    raw = _loads(where, "optimizer", text, dict)
    if set(raw) != {"state", "param_groups"} or not isinstance(raw["state"], dict) \
            or not isinstance(raw["param_groups"], list):
        raise CheckpointError(f"{where}: __metadata__['optimizer'] must be an object with "
                              f"'state' (object) and 'param_groups' (list)")
    state: Dict[int, Dict[str, Any]] = {}
    for index, entry in raw["state"].items():
        i = _index(index)
        if i is None or i in state or not isinstance(entry, dict):
            raise CheckpointError(f"{where}: optimizer state entry {index!r} is malformed")
        state[i] = dict(entry)
    for name, a in tensors.items():
        index, _, key = name[len(OPTIMIZER_PREFIX):].partition("/")
        i = _index(index)
        if i is None or not key or i not in state:
            raise CheckpointError(f"{where}: optimizer tensor {name!r} does not match the "
                                  f"stored optimizer state")
        if key in state[i]:
            raise CheckpointError(f"{where}: optimizer state[{i}][{key!r}] is stored twice")
        state[i][key] = a
    return {"state": state, "param_groups": raw["param_groups"]}


class _CheckpointKeyError(CheckpointError, KeyError):
    __str__ = ValueError.__str__


class _CheckpointTypeError(CheckpointError, TypeError):
    pass


def _mismatch(e: Exception) -> type:
    """CheckpointError, also a KeyError / TypeError when the model's check raised one (what
    ``load`` raised before it named the file)."""
    if isinstance(e, KeyError):
        return _CheckpointKeyError
    if isinstance(e, TypeError):
        return _CheckpointTypeError
    return CheckpointError


class NonFiniteWeightsWarning(RuntimeWarning):
    """A loaded checkpoint holds NaN or infinite weights (a diverged run)."""


def _warn_nonfinite(path: str, state_dict: Mapping[str, np.ndarray]) -> None:
    import warnings
    bad = [name for name, a in state_dict.items()
           if a.dtype.kind == "f" and a.size and not np.isfinite(a).all()]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        warnings.warn(f"checkpoint {path} holds non-finite (NaN or infinite) weights in "
                      f"{', '.join(bad[:3])}{more}: its outputs will be NaN",
                      NonFiniteWeightsWarning, stacklevel=3)


_SIZE_KEYS = ("hidden_size", "hidden")
_LAYER_KEYS = ("num_layers", "layers")


def check_config_size(where: str, config: Mapping[str, Any], held: int) -> None:
    """Before rebuilding a model from a stored config: the recurrent weights the config implies
    (at least layers x directions x hidden^2 elements, the hidden-to-hidden matrices) must fit
    in the ``held`` tensor elements of the file, so that a corrupt or hostile config
    (hidden_size=20000 in a 300 KB file) is rejected before gigabytes are allocated. Knows the
    size keys of the built-in models (hidden_size / hidden, num_layers / layers,
    bidirectional, proj_size)."""
    h = next((config[k] for k in _SIZE_KEYS if _is_int(config.get(k))), None)
    if h is None:
        return
    layers = next((config[k] for k in _LAYER_KEYS if _is_int(config.get(k))), 1)
    dirs = 2 if config.get("bidirectional") is True else 1
    proj = config.get("proj_size")
    need = max(layers, 1) * dirs * h * (proj if _is_int(proj) and 0 < proj < h else h)
    if need > held:
        raise CheckpointError(f"{where}: the stored config (hidden size {h}, {layers} "
                              f"layer(s)) needs at least {need:,} weights but the file holds "
                              f"{held:,}: the config does not match the tensors")

def _tied_aliases(model, state_dict):
    """The state dict with a tied Parameter's missing names filled in from a name it has:
    files written before state_dict() listed a tied Parameter under each of its names hold only
    its first name, which a strict load of the same tied model must still accept (the values
    are one array). Names of untied parameters stay missing (and are refused)."""
    names = {}
    for name, p in model._all_named_parameters():
        names.setdefault(id(p), []).append(name)
    out = None
    for group in names.values():
        have = [n for n in group if n in state_dict]
        if len(group) > 1 and have and len(have) < len(group):
            if out is None:
                out = dict(state_dict)
            for n in group:
                out.setdefault(n, state_dict[have[0]])
    return state_dict if out is None else out


def load(path, model: Optional[Module] = None, optimizer=None) -> Checkpoint:
    """Reads a checkpoint written by :func:`save`.

    With ``model``, its weights are replaced (``load_state_dict``, strict: names, shapes and
    dtypes must match). Without, the model is rebuilt from the stored config (None if the file
    has none); a model saved with frozen layers (``model.frozen(precision)``,
    ``models.freeze``, ``layer.frozen``) comes back with the same layers frozen at the same
    precision, in eval mode, and gives the saved copy's outputs bit for bit (``model=`` is
    loaded as it is given: ``Checkpoint.frozen`` says what was frozen). With ``optimizer``,
    ``optimizer.load_state_dict`` gets the stored state.
    """
    fn = "load"
    path = _check_path(fn, path)
    if model is not None and not isinstance(model, Module):
        raise TypeError(f"{fn}: model must be a fusedrnn Module or None, "
                        f"got {type(model).__name__}")
    if optimizer is not None and not callable(getattr(optimizer, "load_state_dict", None)):
        raise TypeError(f"{fn}: optimizer must have a load_state_dict() method, "
                        f"got {type(optimizer).__name__}")
    where = f"load({path!r})"
    tensors, meta = load_tensors(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a fusedrnn checkpoint (__metadata__['format'] is "
                              f"{meta.get('format')!r}); read its tensors with load_tensors()")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{where}: unsupported checkpoint format_version "
                              f"{meta.get('format_version')!r} (this fusedrnn reads "
                              f"{FORMAT_VERSION!r})")
    config = _loads(where, "model", meta["model"], dict) if "model" in meta else None
    user = _loads(where, "metadata", meta["metadata"], dict) if "metadata" in meta else {}
    frozen = _frozen_meta(where, meta["frozen"]) if "frozen" in meta else {}

    state_dict: "OrderedDict[str, np.ndarray]" = OrderedDict()
    opt_tensors: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for name, a in tensors.items():
        if name.startswith(OPTIMIZER_PREFIX):
            opt_tensors[name] = a
        elif name.startswith("__"):
            raise CheckpointError(f"{where}: unknown reserved tensor {name!r}")
        else:
            state_dict[name] = a
    if "optimizer" in meta:
        opt_state = _optimizer_state(where, meta["optimizer"], opt_tensors)
    elif opt_tensors:
        raise CheckpointError(f"{where}: optimizer tensors without __metadata__['optimizer']")
    else:
        opt_state = None
    if optimizer is not None and opt_state is None:
        raise CheckpointError(f"{where}: an optimizer was given but the checkpoint holds no "
                              f"optimizer state")

    rebuilt = model is None and config is not None
    if rebuilt:
        # (the size keys of the package's own models only: a user's registered class may use
        # "hidden" for anything, a Linear's width say)
        from .module import _config_class
        cls = _config_class(config) if isinstance(config.get("type"), str) else None
        if cls is not None and cls.__module__.startswith("fusedrnn."):
            check_config_size(where, config, sum(int(a.size) for a in state_dict.values()))
        try:
            model = module_from_config(config)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{where}: cannot rebuild the model from its stored config "
                                  f"({e}); pass model= to load into an instance") from e
    # (with an optimizer too, the model's weights before: a refused optimizer state puts them
    # back, so a failed load changes nothing)
    before = None
    if model is not None and optimizer is not None:
        before = {k: np.array(v) for k, v in model.state_dict().items()}
    if model is not None:
        try:
            model.load_state_dict(_tied_aliases(model, state_dict), strict=True)
        except (KeyError, ValueError, TypeError) as e:
            msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            # (a frozen copy's read-only weights: the tensors may well match)
            what = "the model cannot take the tensors" if "read-only" in msg else \
                "the tensors do not match the model"
            raise _mismatch(e)(f"{where}: {what}: "
                               f"{msg.splitlines()[0] if msg else type(e).__name__}") from None
        _warn_nonfinite(path, state_dict)
        if rebuilt and frozen:
            model = _refreeze(where, model, frozen)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(opt_state)
        except (KeyError, ValueError, TypeError) as e:
            if before is not None:
                model.load_state_dict(before, strict=True)
            raise _mismatch(e)(f"{where}: the optimizer state does not match: "
                                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                  ) from None
    return Checkpoint(model=model, state_dict=state_dict, optimizer_state=opt_state,
                      metadata=user, config=config,
                      fusedrnn_version=meta.get("fusedrnn_version"), frozen=frozen)
