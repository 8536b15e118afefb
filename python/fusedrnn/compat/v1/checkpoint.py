"""Reading TensorFlow 1 checkpoints (the V2 "tensor bundle" format) without TensorFlow.

A checkpoint ``prefix`` is ``prefix.index`` plus ``prefix.data-SSSSS-of-NNNNN`` shards. The
index is a LevelDB-style sorted table: 48-byte footer (metaindex and index block handles as
varint64 pairs, padding, magic 0xdb4775248b80fb57), blocks of prefix-compressed entries
(varint shared, varint unshared, varint value length, key suffix, value) ending in a restart
array and its count, each block followed by a 1-byte compression type and a masked CRC32C.
The entry under the empty key is a ``BundleHeaderProto`` (num_shards, endianness, version);
every other entry maps a variable name to a ``BundleEntryProto`` (dtype, shape, shard_id,
offset, size, crc32c, slices), whose bytes are read from its shard. Snappy-compressed blocks
(type 1) are decompressed with ``cramjam`` or ``snappy`` if one is installed (TF writes bundle
indexes uncompressed). String tensors (DT_STRING: ``[varint length]...[4-byte checksum of the
lengths][bytes]...``, e.g. the ``_CHECKPOINTABLE_OBJECT_GRAPH`` entry that object-based
checkpoints carry) come back as object arrays of ``bytes``. A directory stands for the latest
checkpoint its ``checkpoint`` state file names (``model_checkpoint_path``), as TF's
``load_checkpoint`` does. Sliced (partitioned) variables are refused. The CRC32C checksums are
verified as TensorFlow's reader verifies them: each index block's (masked, over the block and
its compression byte), each tensor's (``BundleEntryProto.crc32c``, masked, over its bytes; for a
string tensor over its lengths as uint32, their checksum and the bytes) and a string tensor's
length checksum. Every length, offset, wire type, dimension and name is checked too: a
malformed or corrupt index or shard raises :class:`CheckpointFormatError` (naming the file and
what is wrong), never a raw struct, NumPy or decoding error.
"""
from __future__ import annotations

import math
import os
import struct
from typing import Dict

import numpy as np

from ... import _core

__all__ = ["load_checkpoint", "CheckpointFormatError"]

_MAGIC = 0xdb4775248b80fb57
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
           9: np.int64, 10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32,
           23: np.uint64}


_DT_STRING = 7
_MASK_DELTA = 0xa282ead8


def _unmask(masked):
    """TF's / LevelDB's crc32c::Unmask: stored checksums are rotated right by 15 bits and
    offset, so that a checksum of data holding checksums stays well distributed."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _check_crc(stored_masked, actual, where, what):
    if _unmask(stored_masked) != actual:
        raise CheckpointFormatError(f"{where}: {what} checksum does not match (stored "
                                    f"{_unmask(stored_masked):08x}, computed {actual:08x}): "
                                    f"the file is corrupt")


def _strings(buf, count, where, stored_crc):
    """A DT_STRING tensor's bytes: count varint lengths, a 4-byte checksum, the strings. TF
    checksums the lengths as little-endian uint32 (the masked result is the 4 bytes), and the
    entry's checksum covers those uint32s, the 4 bytes and the strings."""
    pos, lengths = 0, []
    for _ in range(count):
        n, pos = _varint(buf, pos, where)
        if n >= 1 << 32:
            raise CheckpointFormatError(f"{where}: a string length of {n} bytes")
        lengths.append(n)
    if pos + 4 + sum(lengths) != len(buf):
        raise CheckpointFormatError(f"{where}: string tensor of {len(buf)} bytes does not hold "
                                    f"{count} strings of {sum(lengths)} bytes")
    crc = _core.crc32c(np.asarray(lengths, "<u4").tobytes())
    _check_crc(int.from_bytes(buf[pos:pos + 4], "little"), crc, where, "string length")
    crc = _core.crc32c(bytes(buf[pos:]), crc)
    _check_crc(stored_crc, crc, where, "tensor")
    pos += 4
    out = np.empty(count, object)
    for i, n in enumerate(lengths):
        out[i] = bytes(buf[pos:pos + n])
        pos += n
    return out


def _latest(directory):
    """The prefix a checkpoint directory's ``checkpoint`` state file names as the latest."""
    state = os.path.join(directory, "checkpoint")
    if not os.path.exists(state):
        raise FileNotFoundError(f"load_checkpoint: {directory} is a directory without a "
                                f"'checkpoint' state file; pass a checkpoint prefix (the path "
                                f"without .index)")
    try:
        with open(state, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise CheckpointFormatError(f"{state}: not a text file") from None
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model_checkpoint_path":
            path = value.strip().strip('"')
            return path if os.path.isabs(path) else os.path.join(directory, path)
    raise CheckpointFormatError(f"{state}: no model_checkpoint_path line")


class CheckpointFormatError(ValueError):
    """The files are not a readable TF checkpoint (names the file and what is wrong)."""


def _varint(buf, pos, where):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointFormatError(f"{where}: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointFormatError(f"{where}: varint too long")


def _proto_fields(buf, where, wires=None):
    """(field number, wire type, value) of a protobuf message; value bytes for length-delimited.
    Every length is checked against the message; `wires` (field -> wire type) names the wire
    type each known field must have (a corrupt byte must not turn a length into a number)."""
    pos, out = 0, []
    while pos < len(buf):
        tag, pos = _varint(buf, pos, where)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            v, pos = _varint(buf, pos, where)
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            if pos + n > len(buf):
                raise CheckpointFormatError(f"{where}: truncated protobuf field {field}")
            v = int.from_bytes(buf[pos:pos + n], "little")
            pos += n
        elif wire == 2:
            n, pos = _varint(buf, pos, where)
            if pos + n > len(buf):
                raise CheckpointFormatError(f"{where}: protobuf field {field} of {n} bytes "
                                            f"runs past its message")
            v = bytes(buf[pos:pos + n])
            pos += n
        else:
            raise CheckpointFormatError(f"{where}: unsupported protobuf wire type {wire}")
        if wires is not None and field in wires and wires[field] != wire:
            raise CheckpointFormatError(f"{where}: protobuf field {field} has wire type {wire}, "
                                        f"expected {wires[field]}")
        out.append((field, wire, v))
    return out


def _decompress(kind, data, where):
    if kind == 0:
        return data
    if kind == 1:
        try:
            import cramjam
            decompress = lambda b: bytes(cramjam.snappy.decompress_raw(b))  # noqa: E731
        except ImportError:
            try:
                import snappy
                decompress = snappy.uncompress
            except ImportError:
                raise CheckpointFormatError(f"{where}: a Snappy-compressed block; install "
                                            f"cramjam or python-snappy to read it") from None
        try:
            return decompress(bytes(data))
        except Exception as e:   # (each library has its own error for corrupt input)
            raise CheckpointFormatError(f"{where}: a corrupt Snappy block ({e})") from None
    raise CheckpointFormatError(f"{where}: unknown block compression type {kind}")


def _block(data, offset, size, where):
    if offset + size + 5 > len(data) - 48:   # (blocks lie before the footer)
        raise CheckpointFormatError(f"{where}: block at {offset} (+{size}) runs past the file")
    # trailer: the compression byte, then the masked CRC32C of the block and that byte
    stored = int.from_bytes(data[offset + size + 1:offset + size + 5], "little")
    _check_crc(stored, _core.crc32c(memoryview(data)[offset:offset + size + 1]),
               f"{where}: block at {offset}", "block")
    return _decompress(data[offset + size], data[offset:offset + size], where)


def _block_entries(block, where):
    if len(block) < 4:
        raise CheckpointFormatError(f"{where}: block too short")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * num_restarts
    if end < 0:
        raise CheckpointFormatError(f"{where}: bad restart count {num_restarts}")
    pos, key, out = 0, b"", []
    while pos < end:
        shared, pos = _varint(block, pos, where)
        unshared, pos = _varint(block, pos, where)
        vlen, pos = _varint(block, pos, where)
        if shared > len(key) or pos + unshared + vlen > end:
            raise CheckpointFormatError(f"{where}: corrupt block entry")
        key = key[:shared] + bytes(block[pos:pos + unshared])
        pos += unshared
        out.append((key, bytes(block[pos:pos + vlen])))
        pos += vlen
    return out


def _read_index(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 48:
        raise CheckpointFormatError(f"{path}: too short for a table footer")
    footer = data[-48:]
    if struct.unpack_from("<Q", footer, 40)[0] != _MAGIC:
        raise CheckpointFormatError(f"{path}: not a TF checkpoint index (bad table magic)")
    _, p = _varint(footer, 0, path)             # metaindex offset
    _, p = _varint(footer, p, path)             # metaindex size
    index_off, p = _varint(footer, p, path)
    index_size, p = _varint(footer, p, path)
    entries = []
    for _, handle in _block_entries(_block(data, index_off, index_size, path), path):
        off, q = _varint(handle, 0, path)
        size, _ = _varint(handle, q, path)
        entries.extend(_block_entries(_block(data, off, size, path), path))
    # a table's keys are sorted and distinct (a corrupt key would otherwise shadow another)
    for (a, _), (b, _) in zip(entries, entries[1:]):
        if not a < b:
            raise CheckpointFormatError(f"{path}: keys out of order ({a!r} then {b!r})")
    return entries


def load_checkpoint(prefix) -> Dict[str, np.ndarray]:
    """Every variable of the TF checkpoint ``prefix`` (the path without ``.index``) as a NumPy
    array, by name (e.g. ``rnn/multi_rnn_cell/cell_0/basic_lstm_cell/kernel``)."""
    prefix = os.fspath(prefix)
    if os.path.isdir(prefix):
        prefix = _latest(prefix)
    if prefix.endswith(".index"):
        prefix = prefix[:-len(".index")]
    index = prefix + ".index"
    if not os.path.exists(index):
        raise FileNotFoundError(f"load_checkpoint: {index} does not exist")
    entries = _read_index(index)
    if not entries or entries[0][0] != b"":
        raise CheckpointFormatError(f"{index}: no bundle header (the entry under the empty key)")
    num_shards, little = 1, True
    out, shards = {}, {}
    for key, value in entries:
        where = f"{index}: entry {key.decode(errors='replace')!r}"
        if key == b"":
            for field, _, v in _proto_fields(value, where, {1: 0, 2: 0, 3: 2}):
                if field == 1:
                    num_shards = v
                elif field == 2:
                    if v not in (0, 1):
                        raise CheckpointFormatError(f"{where}: endianness {v} (0 or 1)")
                    little = v == 0
            if not 1 <= num_shards <= 99999:
                raise CheckpointFormatError(f"{where}: num_shards {num_shards}")
            continue
        try:
            name = key.decode()
        except UnicodeDecodeError:
            raise CheckpointFormatError(f"{where}: the name is not UTF-8") from None
        fields = _proto_fields(value, where, {1: 0, 2: 2, 3: 0, 4: 0, 5: 0, 6: 5, 7: 2})
        dtype, dims, shard, offset, size, sliced, crc = 0, [], 0, 0, 0, False, 0
        for field, _, v in fields:
            if field == 1:
                dtype = v
            elif field == 2:   # TensorShapeProto: dim (2) {size (1)}, unknown_rank (3)
                for f2, _, d in _proto_fields(v, where, {2: 2, 3: 0}):
                    if f2 == 2:
                        size_ = [x for g, _, x in _proto_fields(d, where, {1: 0, 2: 2})
                                 if g == 1]
                        # (int64 on the wire: a negative size is 2**64 - n, unknown is -1)
                        if size_ and size_[-1] >= 1 << 63:
                            raise CheckpointFormatError(f"{where}: a dimension of unknown or "
                                                        f"negative size")
                        dims.append(size_[-1] if size_ else 0)
                    elif f2 == 3 and d:
                        raise CheckpointFormatError(f"{where}: a shape of unknown rank")
            elif field == 3:
                shard = v
            elif field == 4:
                offset = v
            elif field == 5:
                size = v
            elif field == 6:
                crc = v
            elif field == 7:
                sliced = True
        if sliced:
            raise CheckpointFormatError(f"{where}: partitioned (sliced) variables are not "
                                        f"supported")
        if dtype not in _DTYPES and dtype != _DT_STRING:
            raise CheckpointFormatError(f"{where}: unsupported dtype enum {dtype}")
        count = math.prod(dims)
        if shard >= num_shards:
            raise CheckpointFormatError(f"{where}: shard {shard} of {num_shards}")
        if dtype != _DT_STRING:
            dt = np.dtype(_DTYPES[dtype]).newbyteorder("<" if little else ">")
            if count * dt.itemsize != size:
                raise CheckpointFormatError(f"{where}: {size} bytes for shape {dims} of {dt}")
        if shard not in shards:
            path = f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"
            if not os.path.exists(path):
                raise FileNotFoundError(f"load_checkpoint: {path} does not exist")
            with open(path, "rb") as f:
                shards[shard] = f.read()
        buf = shards[shard]
        if dtype == _DT_STRING and count > size:   # (each string takes a length byte at least)
            raise CheckpointFormatError(f"{where}: {size} bytes cannot hold {count} strings")
        if offset + size > len(buf):
            raise CheckpointFormatError(f"{where}: data at {offset} (+{size}) runs past shard "
                                        f"{shard}")
        if dtype == _DT_STRING:
            out[name] = _strings(buf[offset:offset + size], count, where, crc).reshape(dims)
            continue
        _check_crc(crc, _core.crc32c(memoryview(buf)[offset:offset + size]), where, "tensor")
        out[name] = np.frombuffer(buf, dt, count, offset).astype(dt.newbyteorder("="))\
            .reshape(dims) if count else np.zeros(dims, dt.newbyteorder("="))
    return out
