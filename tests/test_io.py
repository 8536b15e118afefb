"""fusedrnn.io: checkpoints in the safetensors layout.

Tensor layer: bitwise round trips for every dtype (empty and 0-d tensors, NaN payloads, -0.0),
the exact byte layout, interop both ways with the ``safetensors`` package, atomic writes, and
strict validation on load (every corruption raises CheckpointError; every truncation of a file
and random header byte flips never escape as another exception type).

Model layer: save/load of module.py models (rebuilt from the stored config, or loaded into a
given instance), user metadata, optimiser state, and the errors for foreign or mismatched
files.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

import fusedrnn
from fusedrnn import io as fio
from fusedrnn.io import CheckpointError, load, load_tensors, save, save_tensors
from fusedrnn.module import Embedding, Linear, Module, Parameter, Sequential

DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "U64": np.uint64,
    "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
    "F16": np.float16, "F32": np.float32, "F64": np.float64,
}
SHAPES = [(), (0,), (3, 0, 2), (5,), (2, 3), (2, 1, 3, 2)]


def random_array(dtype, shape, seed=0):
    """Random bit patterns (every float bit pattern, NaNs and infinities included)."""
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    if dt == np.bool_:
        return np.asarray(rng.random(shape) < 0.5)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * dt.itemsize, dtype=np.uint8)
    return raw.view(dt).reshape(shape)


def bits(a):
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8).tobytes()


def assert_same(got, want, name=""):
    assert isinstance(got, np.ndarray), name
    assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, got.shape)
    assert bits(got) == bits(want), f"{name}: bytes differ"


def assert_owned(a):
    """Writeable, C-contiguous, native, and owning its memory (or a view of an array that does,
    for bool, which is read as uint8 and checked)."""
    assert a.flags.c_contiguous and a.flags.writeable and a.dtype.isnative
    assert a.flags.owndata or (a.base is not None and a.base.flags.owndata and a.base.base is None)


def raw_file(path, header, data=b"", length=None):
    """Writes a file by hand: header (a dict, serialised as is, or raw bytes) and data."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + text + data)
    return path


# ----------------------------------------------------------------------------------------------
# tensor layer: round trips and layout

@pytest.mark.parametrize("name", list(DTYPES))
def test_round_trip_all_dtypes_and_shapes(tmp_path, name):
    tensors = {f"t{i}": random_array(DTYPES[name], s, seed=i) for i, s in enumerate(SHAPES)}
    save_tensors(tmp_path / "a.st", tensors, {"k": "v"})
    got, meta = load_tensors(tmp_path / "a.st")
    assert meta == {"k": "v"}
    assert list(got) == list(tensors)
    for k in tensors:
        assert_same(got[k], tensors[k], k)
        assert_owned(got[k])
    h = json.loads((tmp_path / "a.st").read_bytes()[8:].split(b"}}")[0] + b"}}")
    assert h["t4"]["dtype"] == name


def test_special_floats_bitwise(tmp_path):
    f32 = np.array([0x7FC00001, 0xFFC12345, 0x7F800001, 0x80000000, 0x00000001, 0x7F800000,
                    0xFF800000, 0x3F800000], dtype=np.uint32).view(np.float32)
    f64 = np.array([0x7FF8000000000001, 0xFFF0000000000123, 0x8000000000000000, 1,
                    0x7FF0000000000000], dtype=np.uint64).view(np.float64)
    f16 = np.array([0x7E01, 0xFC01, 0x8000, 0x0001], dtype=np.uint16).view(np.float16)
    tensors = {"f32": f32, "f64": f64, "f16": f16, "neg0": np.array(-0.0)}
    save_tensors(tmp_path / "s.st", tensors)
    got, meta = load_tensors(tmp_path / "s.st")
    assert meta == {}
    for k in tensors:
        assert_same(got[k], tensors[k], k)
    assert np.signbit(got["neg0"])


def test_layout_is_safetensors(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1, 2, 3], dtype=np.int8)
    c = np.arange(2, dtype=np.float64)
    save_tensors(tmp_path / "l.st", {"z": a, "b": b, "a": c}, {"x": "y"})
    raw = (tmp_path / "l.st").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert (8 + n) % 8 == 0                                   # data section 8-byte aligned
    text = raw[8:8 + n].decode()
    assert text == text.rstrip() + " " * (len(text) - len(text.rstrip()))  # space padding
    h = json.loads(text)
    assert list(h) == ["__metadata__", "z", "b", "a"]         # header order = dict order
    assert h["z"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    assert h["b"] == {"dtype": "I8", "shape": [3], "data_offsets": [24, 27]}
    assert h["a"] == {"dtype": "F64", "shape": [2], "data_offsets": [27, 43]}
    assert raw[8 + n:] == a.tobytes() + b.tobytes() + c.astype("<f8").tobytes()


def test_noncontiguous_and_big_endian_inputs(tmp_path):
    x = np.arange(24, dtype=np.float64).reshape(4, 6)
    tensors = {"t": x.T, "s": x[::2, 1::2], "be": x.astype(">f8"), "be16": x.astype(">i2")}
    save_tensors(tmp_path / "n.st", tensors)
    got, _ = load_tensors(tmp_path / "n.st")
    for k, v in tensors.items():
        assert got[k].dtype.isnative and got[k].flags.c_contiguous
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype.newbyteorder("=")
    # big-endian bytes never reach the file
    raw = (tmp_path / "n.st").read_bytes()
    assert x.astype("<f8").tobytes() in raw


def test_bool_bytes_canonicalised(tmp_path):
    a = np.array([0, 1, 2, 255], np.uint8).view(np.bool_)
    save_tensors(tmp_path / "b.st", {"b": a})
    got, _ = load_tensors(tmp_path / "b.st")
    assert got["b"].view(np.uint8).tolist() == [0, 1, 1, 1]


def test_empty_file_and_unicode_names(tmp_path):
    save_tensors(tmp_path / "e.st", {})
    assert load_tensors(tmp_path / "e.st") == ({}, {})
    t = {"ünï/cødé.weight": np.ones(2, np.float32)}
    save_tensors(str(tmp_path / "u.st"), t, {"ключ": "значение"})
    got, meta = load_tensors(str(tmp_path / "u.st"))
    assert list(got) == list(t) and meta == {"ключ": "значение"}


def test_overwrite_and_permissions(tmp_path):
    p = tmp_path / "o.st"
    old = os.umask(0o022)
    try:
        save_tensors(p, {"a": np.zeros(3)})
        save_tensors(p, {"b": np.ones(2, np.int32)})
    finally:
        os.umask(old)
    got, _ = load_tensors(p)
    assert list(got) == ["b"]
    if os.name == "posix":
        assert (p.stat().st_mode & 0o777) == 0o644
    assert os.listdir(tmp_path) == ["o.st"]


@pytest.mark.parametrize("tensors,metadata,exc,match", [
    ({1: np.zeros(1)}, None, TypeError, "tensor names must be str"),
    ({"__metadata__": np.zeros(1)}, None, ValueError, "reserved"),
    ({"a": [1.0, 2.0]}, None, TypeError, "'a' must be a numpy array"),
    ({"a": np.zeros(2, np.complex64)}, None, TypeError, "'a' has dtype complex64"),
    ({"a": np.array(["x"])}, None, TypeError, "'a' has dtype"),
    ({"a": np.array([None])}, None, TypeError, "'a' has dtype object"),
    ({"a": np.zeros(2, [("x", "<f4")])}, None, TypeError, "'a' has dtype"),
    ({"a": np.zeros(2, "datetime64[s]")}, None, TypeError, "'a' has dtype"),
    ({"a\ud800": np.zeros(1)}, None, ValueError, "UTF-8"),
    ({}, {"k": 1}, TypeError, "metadata must map str to str"),
    ({}, {1: "v"}, TypeError, "metadata must map str to str"),
    ({}, [("k", "v")], TypeError, "metadata must be a dict"),
    ([("a", np.zeros(1))], None, TypeError, "tensors must be a dict"),
])
def test_save_tensors_validation(tmp_path, tensors, metadata, exc, match):
    with pytest.raises(exc, match=match):
        save_tensors(tmp_path / "v.st", tensors, metadata)
    assert os.listdir(tmp_path) == []                         # raised before any work


def test_path_validation(tmp_path):
    with pytest.raises(TypeError, match="path"):
        save_tensors(3, {})
    with pytest.raises(TypeError, match="path"):
        load_tensors(None)
    with pytest.raises(FileNotFoundError):
        load_tensors(tmp_path / "missing.st")


# ----------------------------------------------------------------------------------------------
# interop with the safetensors package

def interop_tensors():
    return {f"{n.lower()}_{i}": random_array(dt, s, seed=i)
            for i, (n, dt) in enumerate(DTYPES.items()) for s in [(2, 3), (0, 2), ()][i % 3:][:1]}


def test_safetensors_reads_ours(tmp_path):
    st = pytest.importorskip("safetensors")
    from safetensors.numpy import load_file
    tensors = interop_tensors()
    save_tensors(tmp_path / "ours.st", tensors, {"a": "1", "b": "two"})
    got = load_file(str(tmp_path / "ours.st"))
    assert set(got) == set(tensors)
    for k in tensors:
        assert_same(np.array(got[k]), tensors[k], k)
    with st.safe_open(str(tmp_path / "ours.st"), framework="np") as f:
        assert f.metadata() == {"a": "1", "b": "two"}


def test_we_read_safetensors(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.numpy import save_file
    tensors = interop_tensors()
    save_file(tensors, str(tmp_path / "theirs.st"), metadata={"x": "y"})
    got, meta = load_tensors(tmp_path / "theirs.st")
    assert meta == {"x": "y"}
    assert set(got) == set(tensors)
    for k in tensors:
        assert_same(got[k], tensors[k], k)
        assert_owned(got[k])
    save_file({"a": np.ones(2, np.float32)}, str(tmp_path / "nometa.st"))
    assert load_tensors(tmp_path / "nometa.st")[1] == {}


def test_safetensors_reads_model_checkpoint(tmp_path):
    st = pytest.importorskip("safetensors")
    from safetensors.numpy import load_file
    model = Sequential(Embedding(10, 4, seed=0), Linear(4, 3, seed=1))
    save(tmp_path / "m.st", model, step=7)
    got = load_file(str(tmp_path / "m.st"))
    for k, v in model.state_dict().items():
        assert_same(got[k], v, k)
    with st.safe_open(str(tmp_path / "m.st"), framework="np") as f:
        meta = f.metadata()
    assert meta["format"] == "fusedrnn" and json.loads(meta["metadata"]) == {"step": 7}
    assert json.loads(meta["model"]) == model.config()


# ----------------------------------------------------------------------------------------------
# atomic writes

@pytest.mark.parametrize("fail", ["tensor", "fsync", "replace"])
@pytest.mark.parametrize("existing", [True, False])
def test_failed_write_leaves_old_file(tmp_path, monkeypatch, fail, existing):
    p = tmp_path / "ck.st"
    if existing:
        save_tensors(p, {"old": np.arange(3.0)})
    before = p.read_bytes() if existing else None

    class Boom(Exception):
        pass

    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        raise Boom()

    if fail == "tensor":
        real = fio._write_tensor

        def second_fails(f, a):
            calls.append(1)
            if len(calls) == 2:
                raise Boom()
            real(f, a)
        monkeypatch.setattr(fio, "_write_tensor", second_fails)
    else:
        monkeypatch.setattr(fio.os, fail, boom)
    with pytest.raises(Boom):
        save_tensors(p, {"a": np.ones(1000), "b": np.ones(1000), "c": np.ones(3)})
    monkeypatch.undo()
    assert calls
    assert os.listdir(tmp_path) == (["ck.st"] if existing else [])
    if existing:
        assert p.read_bytes() == before


def test_keyboard_interrupt_cleans_up(tmp_path, monkeypatch):
    def interrupt(f, a):
        raise KeyboardInterrupt
    monkeypatch.setattr(fio, "_write_tensor", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_tensors(tmp_path / "k.st", {"a": np.ones(3)})
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# corrupt files

F4 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
DATA8 = np.array([1.0, 2.0], np.float32).tobytes()


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


CORRUPT = {
    # name: (header dict or raw bytes, data, explicit length or None, message regex)
    "empty file": (None, b"", None, "shorter than the 8-byte"),
    "7 bytes": (None, b"\x01" * 7, None, "shorter than the 8-byte"),
    "length > file": ({"a": F4}, DATA8, 10_000, "larger than the"),
    "length absurd": ({"a": F4}, DATA8, 2 ** 40, "exceeds the"),
    "length 0": ({"a": F4}, DATA8, 0, "JSON"),
    "not utf-8": (b'{"a\xff": 1}', b"", None, "UTF-8"),
    "not json": (b'{"a": ', b"", None, "not valid JSON"),
    "trailing json garbage": (b'{"a": 1} x', b"", None, "not valid JSON"),
    "json list": (b"[1, 2]", b"", None, "JSON object"),
    "json string": (b'"abc"', b"", None, "JSON object"),
    "leading space": (b' {}', b"", None, "JSON object"),
    "nan constant": (b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 8]}}',
                     DATA8, None, "NaN"),
    "deep nesting": (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"", None, "JSON"),
    "entry not object": ({"a": [1, 2]}, b"", None, "exactly 'dtype'"),
    "entry missing key": ({"a": {"dtype": "F32", "shape": [0]}}, b"", None, "exactly"),
    "entry extra key": ({"a": {**F4, "extra": 1}}, DATA8, None, "exactly"),
    "unknown dtype": ({"a": entry("BF16", (2,), (0, 4))}, b"\0" * 4, None, "unknown dtype"),
    "dtype not str": ({"a": entry(4)}, DATA8, None, "unknown dtype"),
    "dtype lower case": ({"a": entry("f32")}, DATA8, None, "unknown dtype"),
    "shape not list": ({"a": {**F4, "shape": 2}}, DATA8, None, "shape must be"),
    "shape negative": ({"a": entry(shape=(-2,))}, DATA8, None, "shape must be"),
    "shape float": ({"a": entry(shape=(2.0,))}, DATA8, None, "shape must be"),
    "shape bool": ({"a": entry(shape=(True, 2))}, DATA8, None, "shape must be"),
    "shape str": ({"a": entry(shape=("2",))}, DATA8, None, "shape must be"),
    "offsets 3 items": ({"a": {**F4, "data_offsets": [0, 4, 8]}}, DATA8, None, "data_offsets"),
    "offsets negative": ({"a": entry(offsets=(-8, 0))}, DATA8, None, "data_offsets"),
    "offsets float": ({"a": entry(offsets=(0, 8.0))}, DATA8, None, "data_offsets"),
    "offsets reversed": ({"a": entry(offsets=(8, 0))}, DATA8, None, "out of order"),
    "offsets vs shape": ({"a": entry(shape=(3,))}, DATA8, None, "needs 12"),
    "offsets vs dtype": ({"a": entry("F64")}, DATA8, None, "needs 16"),
    "first not at 0": ({"a": entry(offsets=(4, 12))}, DATA8 + b"\0" * 4, None, "gap"),
    "gap": ({"a": entry(offsets=(0, 8)), "b": entry(offsets=(12, 20))}, DATA8 * 2 + b"\0" * 4,
            None, "gap"),
    "overlap": ({"a": entry(offsets=(0, 8)), "b": entry(offsets=(4, 12))}, DATA8 + b"\0" * 4,
                None, "overlaps"),
    "same offsets": ({"a": entry(), "b": entry()}, DATA8, None, "overlaps"),
    "truncated data": ({"a": F4}, DATA8[:5], None, "truncated"),
    "trailing garbage": ({"a": F4}, DATA8 + b"xx", None, "trailing"),
    "metadata value int": ({"__metadata__": {"k": 1}}, b"", None, "must be strings"),
    "metadata value null": ({"__metadata__": {"k": None}}, b"", None, "must be strings"),
    "metadata not object": ({"__metadata__": ["k"]}, b"", None, "__metadata__ must be"),
    "metadata null": ({"__metadata__": None}, b"", None, "__metadata__ must be"),
    "duplicate tensor": (b'{"a": ' + json.dumps(F4).encode() + b', "a": '
                         + json.dumps(F4).encode() + b"}", DATA8, None, "duplicate key 'a'"),
    "duplicate metadata key": (b'{"__metadata__": {"k": "1", "k": "2"}}', b"", None,
                               "duplicate key 'k'"),
    "duplicate __metadata__": (b'{"__metadata__": {}, "__metadata__": {}}', b"", None,
                               "duplicate"),
    "bool byte 2": ({"a": entry("BOOL", (2,), (0, 2))}, b"\x01\x02", None, "BOOL"),
    "too many dims": ({"a": entry("U8", (1,) * 70, (0, 1))}, b"\0", None, "allocated"),
    "huge zero-size dims": ({"a": entry("F32", (0, 2 ** 70), (0, 0))}, b"", None,
                            "allocated"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_files_raise(tmp_path, case):
    header, data, length, match = CORRUPT[case]
    p = tmp_path / "c.st"
    if header is None:
        p.write_bytes(data)
    else:
        raw_file(p, header, data, length)
    with pytest.raises(CheckpointError, match=match):
        load_tensors(p)
    assert issubclass(CheckpointError, ValueError)


def test_header_order_independent_of_data_order(tmp_path):
    """Like the safetensors package, offsets (not header order) define the data layout."""
    a, b = np.arange(3, dtype=np.int16), np.arange(2, dtype=np.float64)
    raw_file(tmp_path / "p.st", {"a": entry("I16", (3,), (16, 22)),
                                 "b": entry("F64", (2,), (0, 16))}, b.tobytes() + a.tobytes())
    got, _ = load_tensors(tmp_path / "p.st")
    assert list(got) == ["a", "b"]
    assert_same(got["a"], a)
    assert_same(got["b"], b)


def test_zero_size_tensors_share_offsets(tmp_path):
    raw_file(tmp_path / "z.st", {"a": entry("F32", (0,), (0, 0)), "b": entry(),
                                 "c": entry("I8", (0, 3), (8, 8))}, DATA8)
    got, _ = load_tensors(tmp_path / "z.st")
    assert got["a"].shape == (0,) and got["c"].shape == (0, 3)
    np.testing.assert_array_equal(got["b"], [1, 2])


def sample_file(tmp_path):
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "flag": np.array([True]),
               "i": np.array([-1, 7], np.int64), "e": np.zeros((0, 2), np.float16)}
    p = tmp_path / "good.st"
    save_tensors(p, tensors, {"m": "x"})
    return p.read_bytes()


def test_every_truncation_raises(tmp_path):
    raw = sample_file(tmp_path)
    p = tmp_path / "t.st"
    for cut in range(len(raw)):
        p.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError):
            load_tensors(p)
    for extra in (b"\0", b" " * 8):
        p.write_bytes(raw + extra)
        with pytest.raises(CheckpointError, match="trailing"):
            load_tensors(p)


def test_random_header_flips_raise_or_load_consistently(tmp_path):
    raw = sample_file(tmp_path)
    n = struct.unpack("<Q", raw[:8])[0]
    size = len(raw)
    rng = np.random.default_rng(1234)
    p = tmp_path / "f.st"
    outcomes = {"error": 0, "loaded": 0}
    for _ in range(600):
        b = bytearray(raw)
        for _ in range(rng.integers(1, 4)):
            pos = int(rng.integers(0, 8 + n))
            b[pos] ^= int(rng.integers(1, 256))
        p.write_bytes(bytes(b))
        try:
            got, meta = load_tensors(p)
        except CheckpointError:
            outcomes["error"] += 1
            continue
        outcomes["loaded"] += 1
        assert isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
        hn = struct.unpack("<Q", bytes(b[:8]))[0]
        assert sum(a.nbytes for a in got.values()) == size - 8 - hn
        for a in got.values():
            assert isinstance(a, np.ndarray) and a.dtype.isnative and a.flags.c_contiguous
            if a.dtype == np.bool_:
                assert a.view(np.uint8).max(initial=0) <= 1
    assert outcomes["error"] > 0 and outcomes["loaded"] > 0, outcomes


def test_random_data_flips_load(tmp_path):
    raw = sample_file(tmp_path)
    n = struct.unpack("<Q", raw[:8])[0]
    rng = np.random.default_rng(5)
    p = tmp_path / "d.st"
    for _ in range(100):
        b = bytearray(raw)
        pos = int(rng.integers(8 + n, len(raw)))
        b[pos] ^= int(rng.integers(1, 256))
        p.write_bytes(bytes(b))
        try:
            got, _ = load_tensors(p)
        except CheckpointError as e:           # only a bool byte may be rejected
            assert "BOOL" in str(e)
            continue
        assert list(got) == ["w", "flag", "i", "e"]


# ----------------------------------------------------------------------------------------------
# model checkpoints

def small_model(dtype="float32"):
    m = Sequential(Embedding(10, 4, seed=0, dtype=dtype), Linear(4, 3, seed=1, dtype=dtype))
    for p in m.parameters():                   # differ from what the seeds would rebuild
        p.data += np.arange(p.size, dtype=p.dtype).reshape(p.shape) / 7
    return m


@pytest.mark.filterwarnings("ignore::fusedrnn.io.NonFiniteWeightsWarning")  # the NaN below
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_model_rebuilt_from_config(tmp_path, dtype):
    m = small_model(dtype)
    m[1].bias.data[0] = -0.0
    m[1].bias.data[1] = np.nan
    save(tmp_path / "m.st", m, epoch=3, loss=0.25, tags=["a", "b"], nested={"x": [1, None]})
    ck = load(tmp_path / "m.st")
    assert isinstance(ck, fio.Checkpoint)
    assert isinstance(ck.model, Sequential) and ck.model is not m
    assert ck.config == m.config() and ck.model.config() == m.config()
    assert ck.metadata == {"epoch": 3, "loss": 0.25, "tags": ["a", "b"], "nested": {"x": [1, None]}}
    assert ck.fusedrnn_version == fusedrnn.__version__
    assert ck.optimizer_state is None
    assert list(ck.state_dict) == ["0.weight", "1.weight", "1.bias"]
    for (k, a), (_, b) in zip(ck.model.state_dict().items(), m.state_dict().items()):
        assert_same(a, b, k)
        assert_same(ck.state_dict[k], b, k)
    x = np.array([[1, 2], [3, 9]])
    np.testing.assert_array_equal(ck.model(x), m(x))


def test_model_loaded_into_given_instance(tmp_path):
    m = small_model()
    save(tmp_path / "m.st", m)
    target = Sequential(Embedding(10, 4, seed=5), Linear(4, 3, seed=6))
    arrays = [p.data for p in target.parameters()]
    ck = load(tmp_path / "m.st", target)
    assert ck.model is target and ck.metadata == {}
    for a, p, q in zip(arrays, target.parameters(), m.parameters()):
        assert p.data is a                      # loaded in place
        assert_same(p.data, q.data)


def test_model_mismatch_raises(tmp_path):
    save(tmp_path / "m.st", small_model())
    with pytest.raises(ValueError, match="shape"):
        load(tmp_path / "m.st", Sequential(Embedding(10, 4), Linear(4, 5)))
    with pytest.raises(TypeError, match="dtype"):
        load(tmp_path / "m.st", Sequential(Embedding(10, 4, dtype="float64"),
                                           Linear(4, 3, dtype="float64")))
    with pytest.raises(KeyError, match="missing"):
        load(tmp_path / "m.st", Sequential(Embedding(10, 4), Linear(4, 3), Linear(3, 3)))


class Custom(Module):                            # not registered: no config
    def __init__(self, seed=0):
        super().__init__()
        self.proj = Linear(3, 2, seed=seed)
        self.gain = Parameter(np.full(2, 1.5, np.float32))


def test_unregistered_model(tmp_path):
    m = Custom()
    m.gain.data[:] = [2, 3]
    save(tmp_path / "c.st", m, note="custom")
    _, meta = load_tensors(tmp_path / "c.st")
    assert "model" not in meta and meta["format"] == "fusedrnn"
    ck = load(tmp_path / "c.st")
    assert ck.model is None and ck.config is None and ck.metadata == {"note": "custom"}
    assert list(ck.state_dict) == ["gain", "proj.weight", "proj.bias"]
    target = Custom(seed=9)
    assert load(tmp_path / "c.st", target).model is target
    for a, b in zip(target.parameters(), m.parameters()):
        assert_same(a.data, b.data)


def test_save_validation(tmp_path):
    m = small_model()
    with pytest.raises(TypeError, match="metadata 'bad'"):
        save(tmp_path / "m.st", m, good=1, bad=object())
    with pytest.raises(TypeError, match="metadata 'arr'"):
        save(tmp_path / "m.st", m, arr=np.zeros(2))
    with pytest.raises(TypeError, match="metadata 'nan'"):
        save(tmp_path / "m.st", m, nan=float("nan"))
    with pytest.raises(TypeError, match="model must be a fusedrnn Module"):
        save(tmp_path / "m.st", m.state_dict())
    with pytest.raises(TypeError, match="optimizer"):
        save(tmp_path / "m.st", m, optimizer=object())

    class Reserved(Module):
        def __init__(self):
            super().__init__()
            setattr(self, "__w", Parameter(np.zeros(2)))
    with pytest.raises(ValueError, match="'__w'"):
        save(tmp_path / "m.st", Reserved())
    assert os.listdir(tmp_path) == []


def test_save_refuses_metadata_the_cpp_loader_cannot_read(tmp_path):
    """fusedrnn::Model::load parses the user metadata with limits (json.h kMaxMetadataDepth
    512, kMaxMetadataValues 2^23); save refuses beyond them, so that what Python saves, C++
    loads. A vocabulary of a million entries is well within (it had been refused by C++)."""
    m = small_model()
    deep = []
    for _ in range(512):
        deep = [deep]   # under the metadata object (depth 1): the innermost list at depth 514
    with pytest.raises(ValueError, match="nests deeper than 512"):
        save(tmp_path / "m.st", m, deep=deep)
    save(tmp_path / "m.st", m, deep=deep[0][0], vocab=list(range(1_100_000)))
    assert len(load(tmp_path / "m.st").metadata["vocab"]) == 1_100_000
    fio._check_metadata_size("save", {"v": [0] * ((1 << 23) - 2)})
    with pytest.raises(ValueError, match="more than 8388608 JSON values"):
        fio._check_metadata_size("save", {"v": [0] * ((1 << 23) - 1)})
    # a lone surrogate (os.fsdecode of an undecodable file-name byte) is not Unicode: the C++
    # JSON parser refuses it, so save does, naming it; nothing is written
    import os
    bad = os.fsdecode(b"data_\xff.txt")
    for meta in (dict(source=bad), dict(files=[bad]), dict(info={bad: 1})):
        with pytest.raises(ValueError, match="not encodable as UTF-8"):
            save(tmp_path / "s.st", m, **meta)
        assert not (tmp_path / "s.st").exists()


def test_load_validation(tmp_path):
    save(tmp_path / "m.st", small_model())
    with pytest.raises(TypeError, match="model must be"):
        load(tmp_path / "m.st", model={"0.weight": 1})
    with pytest.raises(TypeError, match="optimizer"):
        load(tmp_path / "m.st", optimizer=object())
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load(tmp_path / "m.st", optimizer=FakeOptimizer([]))


def rewrite_meta(src, dst, **changes):
    tensors, meta = load_tensors(src)
    meta.update(changes)
    meta = {k: v for k, v in meta.items() if v is not None}
    save_tensors(dst, tensors, meta)
    return dst


def test_foreign_and_bad_checkpoints(tmp_path):
    save_tensors(tmp_path / "plain.st", {"w": np.zeros(2)}, {"k": "v"})
    with pytest.raises(CheckpointError, match="not a fusedrnn checkpoint.*load_tensors"):
        load(tmp_path / "plain.st")
    save_tensors(tmp_path / "nometa.st", {"w": np.zeros(2)})
    with pytest.raises(CheckpointError, match="not a fusedrnn checkpoint"):
        load(tmp_path / "nometa.st")
    good = tmp_path / "m.st"
    save(good, small_model())
    for change, match in [
        ({"format_version": "2"}, "format_version"),
        ({"format_version": None}, "format_version"),
        ({"model": "{not json"}, "'model'.*not valid JSON"),
        ({"model": "[1]"}, "'model'.*object"),
        ({"model": '{"type": "NoSuchModule"}'}, "cannot rebuild.*model="),
        ({"model": '{"type": "Linear", "in_features": 0, "out_features": 1}'}, "cannot rebuild"),
        ({"metadata": "3"}, "'metadata'.*object"),
        ({"optimizer": "{}"}, "optimizer"),
        ({"optimizer": '{"state": {"\u00b2": {}}, "param_groups": []}'}, "malformed"),
        ({"optimizer": '{"state": {"01": {}}, "param_groups": []}'}, "malformed"),
    ]:
        p = rewrite_meta(good, tmp_path / "bad.st", **change)
        with pytest.raises(CheckpointError, match=match):
            load(p)
    tensors, meta = load_tensors(good)
    save_tensors(tmp_path / "res.st", {**tensors, "__other": np.zeros(1)}, meta)
    with pytest.raises(CheckpointError, match="reserved tensor '__other'"):
        load(tmp_path / "res.st")
    save_tensors(tmp_path / "orph.st", {**tensors, "__optimizer__/state/0/m": np.zeros(1)}, meta)
    with pytest.raises(CheckpointError, match="optimizer tensors without"):
        load(tmp_path / "orph.st")
    opt_meta = {**meta, "optimizer": '{"state": {"0": {"m": 1}}, "param_groups": []}'}
    for name, match in [("__optimizer__/state/1/m", "does not match"),
                        ("__optimizer__/state/0/", "does not match"),
                        ("__optimizer__/state/x/m", "does not match"),
                        ("__optimizer__/state/0/m", "stored twice")]:
        save_tensors(tmp_path / "o.st", {**tensors, name: np.zeros(1)}, opt_meta)
        with pytest.raises(CheckpointError, match=match):
            load(tmp_path / "o.st")


# ----------------------------------------------------------------------------------------------
# optimiser state

class FakeOptimizer:
    """Implements the optimiser state-dict contract, nothing else."""

    def __init__(self, params, lr=0.01):
        self.params = list(params)
        self.param_groups = [{"lr": lr, "betas": [0.9, 0.999], "eps": 1e-8, "name": "all",
                              "params": list(range(len(self.params)))}]
        self.state = {}
        self.loaded = None

    def step(self):
        for i, p in enumerate(self.params):
            s = self.state.setdefault(i, {"step": 0, "m": np.zeros_like(p.data)})
            s["step"] += 1
            s["m"] = s["m"] * 0.9 + p.data
            s["scale"] = 0.5 ** s["step"]
        self.state[len(self.params) + 1] = {}     # an index with an empty state survives

    def state_dict(self):
        return {"state": {i: dict(s) for i, s in self.state.items()},
                "param_groups": [dict(g) for g in self.param_groups]}

    def load_state_dict(self, state):
        self.loaded = state
        self.state = {i: dict(s) for i, s in state["state"].items()}
        self.param_groups = [dict(g) for g in state["param_groups"]]


def test_optimizer_state_round_trip(tmp_path):
    m = small_model()
    opt = FakeOptimizer(m.parameters())
    opt.step()
    opt.step()
    opt.state[0]["i64"] = np.array([-3, 5], np.int64)
    opt.state[0]["neg0"] = np.array(-0.0, np.float32)
    save(tmp_path / "o.st", m, opt, epoch=2)
    tensors, meta = load_tensors(tmp_path / "o.st")
    assert "__optimizer__/state/0/m" in tensors and "__optimizer__/state/2/m" in tensors
    assert list(tensors)[:3] == ["0.weight", "1.weight", "1.bias"]

    fresh = FakeOptimizer(Sequential(Embedding(10, 4), Linear(4, 3)).parameters(), lr=1.0)
    target = Sequential(Embedding(10, 4), Linear(4, 3))
    ck = load(tmp_path / "o.st", target, fresh)
    want = opt.state_dict()
    for got in (ck.optimizer_state, fresh.loaded):
        assert got["param_groups"] == want["param_groups"]
        assert set(got["state"]) == set(want["state"]) == {0, 1, 2, 4}
        assert got["state"][4] == {}
        for i, s in want["state"].items():
            assert set(got["state"][i]) == set(s)
            for k, v in s.items():
                if isinstance(v, np.ndarray):
                    assert_same(got["state"][i][k], v, f"{i}/{k}")
                else:
                    assert type(got["state"][i][k]) is type(v) and got["state"][i][k] == v
    assert fresh.param_groups[0]["lr"] == 0.01
    assert ck.metadata == {"epoch": 2}
    # the model part is unaffected by the optimiser tensors
    assert list(ck.state_dict) == ["0.weight", "1.weight", "1.bias"]
    assert load(tmp_path / "o.st").optimizer_state is not None


@pytest.mark.parametrize("state,match", [
    ({"state": {"0": {}}, "param_groups": []}, "non-negative ints"),
    ({"state": {True: {}}, "param_groups": []}, "non-negative ints"),
    ({"state": {0: {"step": np.int64(3)}}, "param_groups": []}, "int64"),
    ({"state": {0: {"x": float("inf")}}, "param_groups": []}, "JSON"),
    ({"state": {0: {1: np.zeros(1)}}, "param_groups": []}, "keys must be non-empty str"),
    ({"state": {0: {"m": np.zeros(1, np.complex64)}}, "param_groups": []}, "complex64"),
    ({"state": {0: []}, "param_groups": []}, r"state\[0\] must be a dict"),
    ({"state": {}, "param_groups": [{"lr": 1}]}, r"param_groups\[0\]\['params'\]"),
    ({"state": {}, "param_groups": [{"params": [0], "fn": print}]}, "JSON"),
    ({"state": {}}, "'state' and 'param_groups'"),
    ([], "'state' and 'param_groups'"),
])
def test_optimizer_state_validation(tmp_path, state, match):
    class Opt:
        def state_dict(self):
            return state
    with pytest.raises(TypeError, match=match):
        save(tmp_path / "o.st", small_model(), Opt())
    assert os.listdir(tmp_path) == []


def test_real_adam_round_trip(tmp_path):
    optim = pytest.importorskip("fusedrnn.optim")
    if not hasattr(optim, "Adam"):
        pytest.skip("fusedrnn.optim.Adam not available")
    m = Sequential(Linear(3, 4, seed=0), Linear(4, 2, seed=1))
    opt = optim.Adam(m.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    for _ in range(3):
        m.zero_grad()
        y = m(rng.standard_normal((5, 3)).astype(np.float32))
        m.backward(np.ones_like(y))
        opt.step()
    save(tmp_path / "adam.st", m, opt)
    m2 = Sequential(Linear(3, 4, seed=5), Linear(4, 2, seed=6))
    opt2 = optim.Adam(m2.parameters(), lr=0.5)
    load(tmp_path / "adam.st", m2, opt2)
    # one more identical step on both gives identical weights
    x = rng.standard_normal((5, 3)).astype(np.float32)
    for model, o in ((m, opt), (m2, opt2)):
        model.zero_grad()
        model.backward(np.ones_like(model(x)))
        o.step()
    for a, b in zip(m.parameters(), m2.parameters()):
        assert_same(a.data, b.data)


def test_save_refuses_a_path_that_is_not_a_regular_file(tmp_path):
    """A FIFO (or a device such as /dev/null, or a link to one) is refused, not replaced by
    the renamed temporary file."""
    import os
    from fusedrnn.io import WriteError
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(fifo)
    for p in (fifo, link):
        with pytest.raises(WriteError, match="not a regular file"):
            fusedrnn.save(str(p), fusedrnn.LSTM(3, 4))
    assert fifo.is_fifo() and link.is_symlink()


def test_a_refused_optimizer_state_leaves_the_model_as_it_was(tmp_path):
    """load(path, model=, optimizer=) with an optimizer whose state does not match (SGD for an
    Adam checkpoint): the CheckpointError comes with the model's weights unchanged."""
    from fusedrnn import optim
    src = fusedrnn.LSTM(3, 4, seed=1)
    opt = optim.Adam(src.parameters(), lr=0.1)
    for p in src.parameters():
        p.grad[...] = 1.0
    opt.step()
    fusedrnn.save(str(tmp_path / "m.safetensors"), src, optimizer=opt)
    dst = fusedrnn.LSTM(3, 4, seed=2)
    before = {k: v.copy() for k, v in dst.state_dict().items()}
    with pytest.raises(fusedrnn.CheckpointError, match="optimizer state does not match"):
        fusedrnn.load(str(tmp_path / "m.safetensors"), model=dst,
                      optimizer=optim.SGD(dst.parameters(), lr=0.1, momentum=0.9))
    for k, v in dst.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_user_model_with_a_hidden_key_loads(tmp_path):
    """The size check of a stored config (hidden_size / hidden, layers) knows the package's
    models only: a user's registered model recording hidden=256 for a Linear width had been
    refused ('needs at least 65,536 weights')."""
    from fusedrnn.module import register_module

    @register_module
    class WideHead(Module):
        def __init__(self, hidden=256, seed=0):
            super().__init__()
            self._record(hidden=hidden, seed=seed)
            self.a = Linear(4, hidden, dtype="float64", seed=seed)
            self.b = Linear(hidden, 2, dtype="float64", seed=seed + 1)

    m = WideHead()
    save(tmp_path / "w.st", m)
    back = load(tmp_path / "w.st").model
    assert isinstance(back, WideHead)
    assert all(np.array_equal(a, b) for a, b in zip(m.state_dict().values(),
                                                     back.state_dict().values()))
