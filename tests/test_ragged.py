"""Ragged inference (cpp/src/kernels/ragged.h): with `lengths` and no cache the kernels order the
sequences by length and run each step on the ones still running. Bit for bit the values of the
rectangular path (the training forward, which keeps the caller's row order), padded outputs
zero, final states in the caller's order; unsorted, repeated, zero and full lengths; every cell
variant, both directions, both dtypes, 1 and 2 threads."""
import numpy as np
import pytest

import fusedrnn
from fusedrnn import functional as F

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
