"""Ragged batches (cpp/src/kernels/ragged.h): with `lengths` the kernels order the sequences by
length and run each step on the ones still running, in inference and in training (the forward
with a cache, and backward, whose input and weight gradients sum over valid positions only).

Training is held bit for bit to the rectangular loop that ran every row at every step before it
(digests recorded from that loop: tests/_ragged_fixtures.py, every cell variant, both
directions, both dtypes, 1 and 2 threads, each instruction-set copy); inference to the training
forward. Padded outputs and padded dx zero, final states in the caller's order, zero-length
sequences return their initial state and get zero gradients; unsorted, repeated, zero and full
lengths."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
LEVELS = {"baseline": "sse2", "avx2": "avx2", "avx512": "avx512"}

CASES = [  # cell, keywords, G
    ("lstm", {}, 4), ("lstm", {"peep": True}, 4), ("lstm", {"P": 5}, 4),
    ("gru", {"variant": "reset_after"}, 3), ("gru", {"variant": "reset_before"}, 3),
    ("rnn", {"nonlinearity": "tanh"}, 1), ("rnn", {"nonlinearity": "relu"}, 1),
]
LENGTHS = {
    "unsorted": [3, 7, 0, 7, 1, 5, 2, 7, 4],
    "all_zero": [0] * 9,
    "all_full": [7] * 9,
    "one_long": [0, 0, 7, 0, 0, 0, 0, 0, 0],
}


def _args(cell, kw, G, dtype, T=7, N=9, C=6, H=70, seed=0):
    rng = np.random.default_rng(seed)
    u = lambda *s: rng.uniform(-0.5, 0.5, s).astype(dtype)   # noqa: E731
    P = kw.get("P", 0)
    R = P or H
    a = dict(x=u(T, N, C), w_ih=u(G * H, C), w_hh=u(G * H, R), b_ih=u(G * H), b_hh=u(G * H),
             h0=u(N, R))
    extra = {}
    if cell == "lstm":
        a["c0"] = u(N, H)
        if kw.get("peep"):
            extra["w_peep"] = u(3, H)
        if P:
            extra["w_hr"] = u(P, H)
    elif cell == "gru":
        extra["variant"] = kw["variant"]
    else:
        extra["nonlinearity"] = kw["nonlinearity"]
    return a, extra


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell,kw,G", CASES)
def test_ragged_inference_equals_the_rectangular_path_bitwise(cell, kw, G, reverse, dtype,
                                                              threads):
    before = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(threads)
    try:
        fwd = getattr(F, cell + "_forward")
        a, extra = _args(cell, kw, G, dtype)
        for name, lengths in LENGTHS.items():
            lengths = np.array(lengths, np.int64)
            inf = fwd(**a, **extra, lengths=lengths, reverse=reverse, training=False)
            ref = fwd(**a, **extra, lengths=lengths, reverse=reverse, training=True)
            for f in ("y", "h_n", "c_n"):
                if hasattr(ref, f):
                    np.testing.assert_array_equal(getattr(inf, f), getattr(ref, f),
                                                  err_msg=f"{cell} {kw} {name} {f}")
            T = a["x"].shape[0]
            pad = np.arange(T)[:, None] >= lengths[None, :]
            assert not inf.y[pad].any(), "padded outputs must stay zero"
            zero = lengths == 0                        # zero length: the initial state
            np.testing.assert_array_equal(inf.h_n[zero], a["h0"][zero])
    finally:
        fusedrnn.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell,kw,G", CASES)
def test_ragged_across_projection_chunks_equals_each_sequence_alone(cell, kw, G, reverse, dtype,
                                                                   threads):
    """N = 70 makes the input projection run in chunks of 7 steps (proj_chunk_steps), so T = 23
    crosses chunk boundaries with a different number of running rows at every step: each
    sequence's outputs and final state equal a call on that sequence alone, without lengths."""
    before = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(threads)
    try:
        fwd = getattr(F, cell + "_forward")
        T, N = 23, 70
        a, extra = _args(cell, kw, G, dtype, T=T, N=N, C=6, H=20, seed=3)
        lengths = np.random.default_rng(4).integers(0, T + 1, N)
        lengths[:3] = (T, 0, 1)
        for training in (False, True):
            out = fwd(**a, **extra, lengths=lengths, reverse=reverse, training=training)
            for n, L in enumerate(lengths):
                if L == 0:
                    continue
                one = {k: np.ascontiguousarray(v[:L, n:n + 1] if k == "x" else
                           v[n:n + 1] if k in ("h0", "c0") else v) for k, v in a.items()}
                ref = fwd(**one, **extra, reverse=reverse, training=False)
                msg = f"{cell} {kw} row {n} length {L} training {training}"
                np.testing.assert_array_equal(out.y[:L, n], ref.y[:, 0], err_msg=msg)
                np.testing.assert_array_equal(out.h_n[n], ref.h_n[0], err_msg=msg)
                if hasattr(ref, "c_n"):
                    np.testing.assert_array_equal(out.c_n[n], ref.c_n[0], err_msg=msg)
    finally:
        fusedrnn.set_num_threads(before)


def test_ragged_layer_bidirectional_stack_inference_matches_training_forward():
    rng = np.random.default_rng(1)
    layer = fusedrnn.LSTM(5, 33, num_layers=2, bidirectional=True, seed=0)
    x = rng.uniform(-1, 1, (8, 6, 5)).astype(np.float32)
    lengths = np.array([8, 2, 0, 5, 8, 3])
    layer.train()
    y_t, _ = layer.forward(x, lengths=lengths)
    layer.eval()
    y_e, _ = layer.forward(x, lengths=lengths)
    np.testing.assert_array_equal(y_e, y_t)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_ragged_training_equals_the_rectangular_loop_bitwise(level):
    compiled = [s.strip() for s in fusedrnn.build_info()["compiled_isas"].split(",")]
    if LEVELS[level] not in compiled:
        pytest.skip(f"{level} copy not built here (compiled: {compiled})")
    out = subprocess.run([sys.executable, os.path.join(HERE, "_ragged_fixtures.py"), "check",
                          os.path.join(HERE, "fixtures", "ragged")],
                         env=dict(os.environ, FUSEDRNN_ISA=level), capture_output=True, text=True,
                         timeout=600)
    lines = out.stdout.strip().splitlines()
    assert lines, out.stderr[-3000:]
    got = json.loads(lines[-1])
    if got["isa"] != LEVELS[level]:
        pytest.skip(f"this CPU does not run the {level} copy (got {got['isa']})")
    assert out.returncode == 0 and got["n_mismatches"] == 0, got
    assert got["compared"] > 1900


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell,kw,G", CASES)
def test_ragged_training_padding_zero_lengths_and_initial_state_gradients(cell, kw, G, reverse,
                                                                          dtype, threads):
    before = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(threads)
    try:
        fwd, bwd = getattr(F, cell + "_forward"), getattr(F, cell + "_backward")
        a, extra = _args(cell, kw, G, dtype, seed=3)
        T, N = a["x"].shape[:2]
        R = a["h0"].shape[1]
        rng = np.random.default_rng(4)
        dy = rng.uniform(-1, 1, (T, N, R)).astype(dtype)
        dh_n = rng.uniform(-1, 1, (N, R)).astype(dtype)
        cots = dict(dy=dy, dh_n=dh_n)
        if cell == "lstm":
            cots["dc_n"] = rng.uniform(-1, 1, (N, a["c0"].shape[1])).astype(dtype)
        for name, lengths in LENGTHS.items():
            lengths = np.array(lengths, np.int64)
            o = fwd(**a, **extra, lengths=lengths, reverse=reverse, training=True)
            g = bwd(o.cache, **cots)
            pad = np.arange(T)[:, None] >= lengths[None, :]
            zero = lengths == 0
            assert not o.y[pad].any() and not g.dx[pad].any(), name
            np.testing.assert_array_equal(o.h_n[zero], a["h0"][zero])
            np.testing.assert_array_equal(g.dh0[zero], dh_n[zero])
            if cell == "lstm":
                np.testing.assert_array_equal(o.c_n[zero], a["c0"][zero])
                np.testing.assert_array_equal(g.dc0[zero], cots["dc_n"][zero])
            if zero.all():      # nothing ran: every parameter gradient is exactly zero
                for k in ("dw_ih", "dw_hh", "db_ih", "db_hh", "dw_peep", "dw_hr"):
                    v = getattr(g, k, None)
                    assert v is None or not v.any(), (name, k)
            # a zero-length row changes nothing else: dropping it gives the same values
            keep = ~zero
            if keep.any() and zero.any():
                sub = {k: np.ascontiguousarray(v[:, keep] if k == "x" else
                                               v[keep] if k in ("h0", "c0") else v)
                       for k, v in a.items()}
                o2 = fwd(**sub, **extra, lengths=lengths[keep], reverse=reverse, training=True)
                g2 = bwd(o2.cache, np.ascontiguousarray(dy[:, keep]), dh_n[keep],
                         **({"dc_n": cots["dc_n"][keep]} if cell == "lstm" else {}))
                np.testing.assert_array_equal(o2.y, o.y[:, keep])
                np.testing.assert_array_equal(g2.dx, g.dx[:, keep])
                np.testing.assert_array_equal(g2.dh0, g.dh0[keep])
                for k in ("dw_ih", "dw_hh", "db_ih", "db_hh"):
                    np.testing.assert_array_equal(getattr(g2, k), getattr(g, k), err_msg=k)
    finally:
        fusedrnn.set_num_threads(before)


def test_ragged_training_matches_the_reference_in_float64():
    """Ragged training against the NumPy reference (the spec), every variant, both directions."""
    from fusedrnn import reference as ref
    for cell, kw, G in CASES:
        for reverse in (False, True):
            a, extra = _args(cell, kw, G, np.float64, seed=5)
            T, N = a["x"].shape[:2]
            R = a["h0"].shape[1]
            dy = np.random.default_rng(6).uniform(-1, 1, (T, N, R))
            lengths = np.array(LENGTHS["unsorted"], np.int64)
            o = getattr(F, cell + "_forward")(**a, **extra, lengths=lengths, reverse=reverse)
            g = getattr(F, cell + "_backward")(o.cache, dy)
            orf = getattr(ref, cell + "_forward")(**a, **extra, lengths=lengths, reverse=reverse)
            grf = getattr(ref, cell + "_backward")(orf.cache, dy)
            np.testing.assert_allclose(o.y, orf.y, rtol=1e-12, atol=1e-12)
            for k, v in g._asdict().items():
                if v is not None:
                    np.testing.assert_allclose(v, getattr(grf, k), rtol=1e-10, atol=1e-12,
                                               err_msg=f"{cell} {kw} {reverse} {k}")
