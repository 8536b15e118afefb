"""Property-based fuzzing of the public API (hypothesis): random shapes, dtypes, strides,
lengths and None/array combinations. Every example either matches the NumPy reference or raises
TypeError / ValueError; never a crash, a hang or another exception.

Examples per test: FUSEDRNN_FUZZ_EXAMPLES (default 700; 3 tests, so ~2100 a CI run). The long
run documented in the README: FUSEDRNN_FUZZ_EXAMPLES=35000 pytest tests/test_fuzz.py.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fusedrnn  # noqa: E402
from fusedrnn import reference  # noqa: E402

EXAMPLES = int(os.environ.get("FUSEDRNN_FUZZ_EXAMPLES", "700"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))
G = {"lstm": 4, "gru": 3, "rnn": 1}

# Corruptions applied to one argument of an otherwise valid call.
CORRUPTIONS = ["none", "dtype", "shape", "strided", "list", "fortran", "int"]


def corrupt(a, how, rng):
    if a is None or how == "none":
        return a
    if how == "dtype":
        return a.astype(np.float32 if a.dtype == np.float64 else np.float64)
    if how == "shape":
        return np.zeros(a.shape[:-1] + (a.shape[-1] + 1,), a.dtype) if a.ndim else a
    if how == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        return big[..., ::2]
    if how == "list":
        return a.tolist()
    if how == "fortran":
        return np.asfortranarray(a) if a.ndim >= 2 and min(a.shape) > 1 else a[..., None]
    if how == "int":
        return a.astype(np.int64)
    raise AssertionError(how)


@st.composite
def kernel_calls(draw):
    cell = draw(st.sampled_from(["lstm", "gru", "rnn"]))
    dt = draw(st.sampled_from([np.float32, np.float64]))
    T, N, C, H = (draw(st.integers(1, 6)) for _ in range(4))
    P = draw(st.integers(0, min(4, H - 1))) if cell == "lstm" else 0  # PyTorch's P < H
    R = P or H
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    gen = lambda *s: (rng.standard_normal(s) * 0.5).astype(dt)  # noqa: E731
    args = {"x": gen(T, N, C), "w_ih": gen(G[cell] * H, C), "w_hh": gen(G[cell] * H, R)}
    kw = {}
    for name, shape in (("b_ih", (G[cell] * H,)), ("b_hh", (G[cell] * H,)), ("h0", (N, R))):
        if draw(st.booleans()):
            kw[name] = gen(*shape)
    if cell == "lstm":
        if draw(st.booleans()):
            kw["c0"] = gen(N, H)
        if draw(st.booleans()):
            kw["w_peep"] = gen(3, H)
        if P:
            kw["w_hr"] = gen(P, H)
    if draw(st.booleans()):
        lo = draw(st.sampled_from([0, 1]))
        kw["lengths"] = rng.integers(lo, T + 1, N)
        if draw(st.integers(0, 9)) == 0:
            kw["lengths"][0] = draw(st.sampled_from([-1, T + 1]))
    kw["reverse"] = draw(st.booleans())
    if cell == "gru":
        kw["variant"] = draw(st.sampled_from(["reset_after", "reset_before"]))
    if cell == "rnn":
        kw["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    # Corrupt at most one array argument.
    target = draw(st.sampled_from(sorted(args) + sorted(k for k in kw if k not in
                                                          ("reverse", "variant", "nonlinearity"))))
    how = draw(st.sampled_from(CORRUPTIONS))
    if target in args:
        args[target] = corrupt(args[target], how, rng)
    elif target != "lengths":
        kw[target] = corrupt(kw[target], how, rng)
    elif how in ("dtype", "strided"):
        kw["lengths"] = kw["lengths"].astype(np.float64) if how == "dtype" else \
            corrupt(kw["lengths"], how, rng)
    dy = gen(T, N, R)
    return cell, args, kw, dy


def _close(got, want, dt):
    tol = 1e-9 if dt == np.float64 else 2e-4
    scale = max(1.0, float(np.abs(want).max(initial=0)))
    assert np.abs(got - want).max(initial=0) <= tol * scale


@SETTINGS
@given(kernel_calls())
def test_kernels_match_reference_or_raise(call):
    cell, args, kw, dy = call
    fwd = getattr(fusedrnn, cell + "_forward")
    try:
        out = fwd(args["x"], args["w_ih"], args["w_hh"], **kw)
    except (TypeError, ValueError):
        return
    x = args["x"]
    want = getattr(reference, cell + "_forward")(x, args["w_ih"], args["w_hh"], **kw)
    _close(out.y, want.y, x.dtype)
    _close(out.h_n, want.h_n, x.dtype)
    got_g = getattr(fusedrnn, cell + "_backward")(out.cache, dy=dy)
    want_g = getattr(reference, cell + "_backward")(want.cache, dy=dy)
    for name, g, w in zip(got_g._fields, got_g, want_g):
        assert (g is None) == (w is None), name
        if g is not None:
            _close(g, w, x.dtype)


@st.composite
def layer_calls(draw):
    mode = draw(st.sampled_from(["LSTM", "GRU", "RNN"]))
    kw = dict(num_layers=draw(st.integers(1, 3)), bidirectional=draw(st.booleans()),
              batch_first=draw(st.booleans()), bias=draw(st.booleans()),
              dtype=draw(st.sampled_from(["float32", "float64"])), seed=draw(st.integers(0, 99)),
              dropout=draw(st.sampled_from([0.0, 0.3])))
    C, H = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    if mode == "LSTM":
        kw["proj_size"] = draw(st.integers(0, min(3, H - 1)))  # PyTorch's proj_size < H
        kw["peepholes"] = draw(st.booleans())
    T, N = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    with_state = draw(st.booleans())
    with_lengths = draw(st.booleans())
    how = draw(st.sampled_from(CORRUPTIONS))
    what = draw(st.sampled_from(["x", "state", "lengths", "d_output"]))
    return mode, kw, C, H, T, N, with_state, with_lengths, how, what


@SETTINGS
@given(layer_calls())
def test_layers_run_or_raise(call):
    mode, kw, C, H, T, N, with_state, with_lengths, how, what = call
    layer = getattr(fusedrnn, mode)(C, H, **kw)
    rng = np.random.default_rng(0)
    dt = layer.dtype
    L, D, R = layer.num_layers, layer.num_directions, layer.state_size
    x = rng.standard_normal((N, T, C) if layer.batch_first else (T, N, C)).astype(dt)
    state = None
    if with_state:
        h0 = rng.standard_normal((L * D, N, R)).astype(dt)
        state = (h0, rng.standard_normal((L * D, N, H)).astype(dt)) if mode == "LSTM" else h0
    lengths = rng.integers(1, T + 1, N) if with_lengths else None
    d_out = rng.standard_normal((N, T, D * R) if layer.batch_first else (T, N, D * R)).astype(dt)
    if what == "x":
        x = corrupt(x, how, rng)
    elif what == "state" and state is not None:
        state = (corrupt(state[0], how, rng), state[1]) if mode == "LSTM" else \
            corrupt(state, how, rng)
    elif what == "lengths" and lengths is not None and how in ("dtype", "list", "shape"):
        lengths = corrupt(lengths.astype(np.float64), how, rng) if how != "dtype" else \
            lengths.astype(np.float64)
    elif what == "d_output":
        d_out = corrupt(d_out, how, rng)
    try:
        out, fin = layer.forward(x, state, lengths)
    except (TypeError, ValueError):
        return
    assert out.shape[-1] == D * R and np.isfinite(out).all()
    try:
        dx = layer.backward(d_out)
    except (TypeError, ValueError):
        return
    assert dx.shape == np.asarray(x).shape and np.isfinite(dx).all()


@SETTINGS
@given(st.binary(min_size=0, max_size=600), st.integers(0, 2 ** 16))
def test_checkpoint_reader_never_crashes(data, seed):
    """Random bytes, and valid checkpoints with random bytes overwritten, either load or raise
    CheckpointError (a ValueError)."""
    import tempfile
    from fusedrnn.io import CheckpointError, load_tensors, save_tensors
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.safetensors")
        rng = np.random.default_rng(seed)
        save_tensors(path, {"a": rng.standard_normal((2, 3)).astype(np.float32),
                            "b": np.arange(4)}, {"k": "v"})
        raw = bytearray(open(path, "rb").read())
        if data:
            at = int(rng.integers(0, len(raw)))
            raw[at:at + len(data)] = data[: len(raw) - at]
            if seed % 3 == 0:
                raw = bytearray(data)
        with open(path, "wb") as fh:
            fh.write(raw)
        try:
            tensors, meta = load_tensors(path)
        except CheckpointError:
            return
        assert isinstance(meta, dict)
        for v in tensors.values():
            assert isinstance(v, np.ndarray)
