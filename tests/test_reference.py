"""Link 1 of the chain of numerical trust: the NumPy reference (the specification) against
central finite differences in float64, every element of every input, plus the semantics
that finite differences cannot see (gate order, peephole timing, GRU variants, lengths,
reverse direction, cache handling, None gradients of absent inputs).

Loss used throughout: L = Σ y·dy + Σ h_n·dh_n (+ Σ c_n·dc_n for the LSTM) with random
cotangents, dy random at padded steps too (the reference must ignore it there).

"lstm_proj" is the LSTM with a projection w_hr [P, H] (PyTorch's proj_size), P = PROJ_P unless
a test says otherwise: h0, h_n, y and w_hh's columns then have P units.
"""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest

from fusedrnn import reference as ref
from fusedrnn._types import (GruGrads, GruOutput, LstmGrads, LstmOutput, RnnGrads,
                             RnnOutput)

EPS = 1e-6          # central-difference step
ATOL = 1e-7         # |fd - analytic| <= ATOL + RTOL * |analytic|
RTOL = 1e-7

T, N, C, H = 3, 3, 3, 3
LENGTHS = np.array([2, 0, 3])      # a partial sequence, an empty one and a full one
PROJ_P = 2                         # projection size of "lstm_proj" (P < H = 3)
GATES = {"lstm": 4, "lstm_proj": 4, "gru": 3, "rnn": 1}
LSTMS = ("lstm", "lstm_proj")
FORWARD = {"lstm": ref.lstm_forward, "lstm_proj": ref.lstm_forward, "gru": ref.gru_forward,
           "rnn": ref.rnn_forward}
BACKWARD = {"lstm": ref.lstm_backward, "lstm_proj": ref.lstm_backward,
            "gru": ref.gru_backward, "rnn": ref.rnn_backward}
GRAD_NAME = {"x": "dx", "w_ih": "dw_ih", "w_hh": "dw_hh", "b_ih": "db_ih", "b_hh": "db_hh",
             "h0": "dh0", "c0": "dc0", "w_peep": "dw_peep", "w_hr": "dw_hr"}


# ----------------------------------------------------------------------------------------
# helpers

def proj_size(cell, proj=None):
    """P of a cell: `proj` if given, PROJ_P for "lstm_proj", else 0 (no projection)."""
    if proj is not None:
        return proj
    return PROJ_P if cell == "lstm_proj" else 0


def make_inputs(cell, seed, *, biases=True, states=True, peep=False, t=T, n=N, c=C, h=H,
                proj=None, dtype=np.float64):
    """Random inputs of one cell; absent optional inputs are None."""
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    P = proj_size(cell, proj)
    r = P or h                                  # width of the hidden state

    def u(*shape):
        return rng.uniform(-1.0, 1.0, shape).astype(dtype)

    inp = dict(x=rng.standard_normal((t, n, c)).astype(dtype), w_ih=u(G * h, c),
               w_hh=u(G * h, r), b_ih=u(G * h) if biases else None,
               b_hh=u(G * h) if biases else None, h0=u(n, r) if states else None)
    if cell in LSTMS:
        inp["c0"] = u(n, h) if states else None
        inp["w_peep"] = u(3, h) if peep else None
        inp["w_hr"] = u(P, h) if P else None
    return inp


def make_cotangents(cell, seed, *, t=T, n=N, h=H, proj=None, dtype=np.float64):
    rng = np.random.default_rng(seed + 10_000)
    r = proj_size(cell, proj) or h
    cot = dict(dy=rng.standard_normal((t, n, r)).astype(dtype),
               dh_n=rng.standard_normal((n, r)).astype(dtype))
    if cell in LSTMS:
        cot["dc_n"] = rng.standard_normal((n, h)).astype(dtype)
    return cot


def forward(cell, inp, opts, training=True):
    args = [inp[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0")]
    kw = dict(opts)
    if cell in LSTMS:
        args.append(inp["c0"])
        kw["w_peep"] = inp["w_peep"]
        kw["w_hr"] = inp["w_hr"]
    return FORWARD[cell](*args, training=training, **kw)


def loss(cell, out, cot):
    L = np.sum(out.y * cot["dy"]) + np.sum(out.h_n * cot["dh_n"])
    if cell in LSTMS:
        L += np.sum(out.c_n * cot["dc_n"])
    return L


def check_finite_differences(cell, inp, opts, cot):
    """Compare every element of every given input's gradient with a central difference."""
    grads = BACKWARD[cell](forward(cell, inp, opts).cache, **cot)
    for name, value in inp.items():
        g = getattr(grads, GRAD_NAME[name])
        if value is None:
            assert g is None, f"{cell}: d{name} should be None when {name} is absent"
            continue
        assert g is not None, f"{cell}: d{name} is None although {name} was given"
        assert g.shape == value.shape and g.dtype == value.dtype, \
            f"{cell}: d{name} has shape {g.shape} {g.dtype}, expected {value.shape}"
        fd = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            plus = {k: (None if v is None else v.copy()) for k, v in inp.items()}
            minus = {k: (None if v is None else v.copy()) for k, v in inp.items()}
            plus[name][idx] += EPS
            minus[name][idx] -= EPS
            fd[idx] = (loss(cell, forward(cell, plus, opts, training=False), cot)
                       - loss(cell, forward(cell, minus, opts, training=False), cot)) / (2 * EPS)
        err = np.abs(fd - g)
        bad = err > ATOL + RTOL * np.abs(g)
        assert not bad.any(), (
            f"{cell} {opts}: d{name} differs from central differences: max |diff| = "
            f"{err.max():.3e} at {np.unravel_index(err.argmax(), err.shape)} "
            f"(analytic {g.flat[err.argmax()]:.9g}, fd {fd.flat[err.argmax()]:.9g})")
    return grads


def relu_safe_seed(seed, inp_kwargs, opts, margin=1e-3):
    """First seed >= `seed` whose relu pre-activations (at computed steps) all lie at least
    `margin` away from the kink at 0, so that central differences are valid."""
    for s in range(seed, seed + 1000):
        inp = make_inputs("rnn", s, **inp_kwargs)
        cache = forward("rnn", inp, opts).cache
        pre = cache["pre"][cache["active"]]
        if pre.size == 0 or np.abs(pre).min() > margin:
            return s
    raise AssertionError("no relu-safe seed found")


def lengths_opts(use_lengths, reverse):
    return dict(lengths=LENGTHS.copy() if use_lengths else None, reverse=reverse)


# ----------------------------------------------------------------------------------------
# finite differences, every element of every input

@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("states", [False, True], ids=["no_h0c0", "h0c0"])
@pytest.mark.parametrize("biases", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("peep", [False, True], ids=["no_peep", "peep"])
def test_lstm_finite_differences(peep, biases, states, reverse, use_lengths):
    seed = 1 + 2 * peep + 4 * biases + 8 * states + 16 * reverse + 32 * use_lengths
    inp = make_inputs("lstm", seed, biases=biases, states=states, peep=peep)
    check_finite_differences("lstm", inp, lengths_opts(use_lengths, reverse),
                             make_cotangents("lstm", seed))


@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("states", [False, True], ids=["no_h0c0", "h0c0"])
@pytest.mark.parametrize("peep", [False, True], ids=["no_peep", "peep"])
@pytest.mark.parametrize("P", [1, PROJ_P, H + 1], ids=["P1", f"P{PROJ_P}", f"P{H + 1}"])
def test_lstm_projection_finite_differences(P, peep, states, reverse, use_lengths):
    """Every element of every gradient, dw_hr included, with P = 1, P < H and P > H."""
    seed = 300 + 2 * peep + 8 * states + 16 * reverse + 32 * use_lengths + 64 * P
    inp = make_inputs("lstm_proj", seed, states=states, peep=peep, proj=P)
    check_finite_differences("lstm_proj", inp, lengths_opts(use_lengths, reverse),
                             make_cotangents("lstm_proj", seed, proj=P))


@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("states", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("biases", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("variant", ["reset_after", "reset_before"])
def test_gru_finite_differences(variant, biases, states, reverse, use_lengths):
    seed = 100 + 4 * biases + 8 * states + 16 * reverse + 32 * use_lengths
    inp = make_inputs("gru", seed, biases=biases, states=states)
    opts = dict(variant=variant, **lengths_opts(use_lengths, reverse))
    check_finite_differences("gru", inp, opts, make_cotangents("gru", seed))


@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("states", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("biases", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_finite_differences(nonlinearity, biases, states, reverse, use_lengths):
    seed = 200 + 4 * biases + 8 * states + 16 * reverse + 32 * use_lengths
    opts = dict(nonlinearity=nonlinearity, **lengths_opts(use_lengths, reverse))
    kwargs = dict(biases=biases, states=states)
    if nonlinearity == "relu":
        seed = relu_safe_seed(seed, kwargs, opts)
    inp = make_inputs("rnn", seed, **kwargs)
    check_finite_differences("rnn", inp, opts, make_cotangents("rnn", seed))


def test_relu_seeds_really_exercise_both_sides():
    """The relu finite-difference cases must not degenerate to all-active or all-dead."""
    opts = dict(nonlinearity="relu", lengths=None, reverse=False)
    seed = relu_safe_seed(200, dict(biases=True, states=True), opts)
    cache = forward("rnn", make_inputs("rnn", seed), opts).cache
    assert (cache["pre"] > 0).any() and (cache["pre"] < 0).any()


def test_fd_with_odd_shapes():
    """T=1, N=1, C != H: shapes where a transposition mistake would not cancel out."""
    for cell in ("lstm", "lstm_proj", "gru", "rnn"):
        kw = dict(t=1, n=1, h=2)
        if cell == "lstm_proj":
            kw["proj"] = 3   # P > H
        inp = make_inputs(cell, 7, peep=True, c=4, **kw)
        opts = {} if cell != "rnn" else dict(nonlinearity="tanh")
        cot = make_cotangents(cell, 7, **kw)
        check_finite_differences(cell, inp, opts, cot)


# ----------------------------------------------------------------------------------------
# cell equations written out independently (what finite differences cannot check)

def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def test_lstm_one_step_equations_with_peepholes():
    inp = make_inputs("lstm", 3, peep=True, t=1)
    out = forward("lstm", inp, {})
    x, h, c = inp["x"][0], inp["h0"], inp["c0"]
    W, U, b = inp["w_ih"], inp["w_hh"], inp["b_ih"] + inp["b_hh"]
    p_i, p_f, p_o = inp["w_peep"]
    blk = lambda k: x @ W[k * H:(k + 1) * H].T + h @ U[k * H:(k + 1) * H].T + b[k * H:(k + 1) * H]
    i = _sig(blk(0) + p_i * c)
    f = _sig(blk(1) + p_f * c)
    g = np.tanh(blk(2))
    c1 = f * c + i * g
    o = _sig(blk(3) + p_o * c1)            # o's peephole sees the NEW cell
    h1 = o * np.tanh(c1)
    np.testing.assert_allclose(out.c_n, c1, rtol=1e-13, atol=1e-14, err_msg="c_n")
    np.testing.assert_allclose(out.h_n, h1, rtol=1e-13, atol=1e-14, err_msg="h_n")
    np.testing.assert_allclose(out.y[0], h1, rtol=1e-13, atol=1e-14, err_msg="y")


def test_lstm_one_step_equations_with_projection_and_peepholes():
    """PyTorch's proj_size: h = W_hr (o∘tanh c'), and the next step's gates read that h."""
    inp = make_inputs("lstm_proj", 8, peep=True, t=2)
    out = forward("lstm_proj", inp, {})
    W, U, b = inp["w_ih"], inp["w_hh"], inp["b_ih"] + inp["b_hh"]
    p_i, p_f, p_o = inp["w_peep"]
    h, c = inp["h0"], inp["c0"]
    assert h.shape == (N, PROJ_P) and U.shape == (4 * H, PROJ_P)
    for t in range(2):
        x = inp["x"][t]
        blk = lambda k: (x @ W[k * H:(k + 1) * H].T + h @ U[k * H:(k + 1) * H].T  # noqa: E731
                         + b[k * H:(k + 1) * H])
        i = _sig(blk(0) + p_i * c)
        f = _sig(blk(1) + p_f * c)
        g = np.tanh(blk(2))
        c = f * c + i * g
        o = _sig(blk(3) + p_o * c)
        h = (o * np.tanh(c)) @ inp["w_hr"].T
        np.testing.assert_allclose(out.y[t], h, rtol=1e-13, atol=1e-14, err_msg=f"y[{t}]")
    np.testing.assert_allclose(out.c_n, c, rtol=1e-13, atol=1e-14, err_msg="c_n")
    np.testing.assert_allclose(out.h_n, h, rtol=1e-13, atol=1e-14, err_msg="h_n")
    assert out.y.shape == (2, N, PROJ_P) and out.c_n.shape == (N, H)


def test_lstm_identity_projection_equals_no_projection():
    """w_hr = I (P = H) gives exactly the LSTM without projection, gradients included."""
    inp = make_inputs("lstm", 9, peep=True)
    cot = make_cotangents("lstm", 9)
    opts = lengths_opts(True, True)
    plain = forward("lstm", inp, opts)
    ident = forward("lstm", dict(inp, w_hr=np.eye(H)), opts)
    for f in ("y", "h_n", "c_n"):
        np.testing.assert_allclose(getattr(ident, f), getattr(plain, f), rtol=1e-14, atol=1e-15,
                                   err_msg=f)
    g_plain = ref.lstm_backward(plain.cache, **cot)
    g_ident = ref.lstm_backward(ident.cache, **cot)
    assert g_plain.dw_hr is None and g_ident.dw_hr.shape == (H, H)
    for f in g_plain._fields[:-1]:
        np.testing.assert_allclose(getattr(g_ident, f), getattr(g_plain, f), rtol=1e-13,
                                   atol=1e-14, err_msg=f)


@pytest.mark.parametrize("variant", ["reset_after", "reset_before"])
def test_gru_one_step_equations(variant):
    inp = make_inputs("gru", 4, t=1)
    out = forward("gru", inp, dict(variant=variant))
    x, h = inp["x"][0], inp["h0"]
    W, U, bi, bh = inp["w_ih"], inp["w_hh"], inp["b_ih"], inp["b_hh"]
    sl = lambda k: slice(k * H, (k + 1) * H)
    r = _sig(x @ W[sl(0)].T + bi[sl(0)] + h @ U[sl(0)].T + bh[sl(0)])
    z = _sig(x @ W[sl(1)].T + bi[sl(1)] + h @ U[sl(1)].T + bh[sl(1)])
    if variant == "reset_after":
        n = np.tanh(x @ W[sl(2)].T + bi[sl(2)] + r * (h @ U[sl(2)].T + bh[sl(2)]))
    else:
        n = np.tanh(x @ W[sl(2)].T + bi[sl(2)] + (r * h) @ U[sl(2)].T + bh[sl(2)])
    h1 = (1 - z) * n + z * h
    np.testing.assert_allclose(out.h_n, h1, rtol=1e-13, atol=1e-14, err_msg=f"{variant} h_n")


def test_gru_variants_differ():
    inp = make_inputs("gru", 5)
    a = forward("gru", inp, dict(variant="reset_after")).y
    b = forward("gru", inp, dict(variant="reset_before")).y
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_one_step_equations(nonlinearity):
    inp = make_inputs("rnn", 6, t=1)
    out = forward("rnn", inp, dict(nonlinearity=nonlinearity))
    a = (inp["x"][0] @ inp["w_ih"].T + inp["b_ih"] + inp["h0"] @ inp["w_hh"].T + inp["b_hh"])
    h1 = np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0)
    np.testing.assert_allclose(out.h_n, h1, rtol=1e-13, atol=1e-14, err_msg="h_n")


# ----------------------------------------------------------------------------------------
# lengths, reverse, cache, None gradients

CELL_OPTS = [("lstm", {}), ("lstm_proj", {}), ("gru", dict(variant="reset_after")),
             ("gru", dict(variant="reset_before")), ("rnn", dict(nonlinearity="tanh")),
             ("rnn", dict(nonlinearity="relu"))]
CELL_IDS = ["lstm", "lstm_proj", "gru_after", "gru_before", "rnn_tanh", "rnn_relu"]


def _states(cell, out):
    return [("h_n", out.h_n)] + ([("c_n", out.c_n)] if cell in LSTMS else [])


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell,extra", CELL_OPTS, ids=CELL_IDS)
def test_padding_semantics(cell, extra, reverse):
    inp = make_inputs(cell, 11, peep=True)
    opts = dict(extra, lengths=LENGTHS, reverse=reverse)
    out = forward(cell, inp, opts)
    grads = BACKWARD[cell](out.cache, **make_cotangents(cell, 11))
    for n_, len_n in enumerate(LENGTHS):
        assert np.all(out.y[len_n:, n_] == 0), f"y at padded steps of sequence {n_} not 0"
        assert np.all(grads.dx[len_n:, n_] == 0), f"dx at padded steps of sequence {n_} not 0"
        if len_n > 0 and extra.get("nonlinearity") != "relu":   # relu units may be dead
            assert np.all(grads.dx[:len_n, n_] != 0), "dx at valid steps unexpectedly 0"
    # Sequence 1 has length 0: the final state is the initial state, and the gradient of the
    # initial state is the final-state cotangent, passed straight through.
    cot = make_cotangents(cell, 11)
    assert np.array_equal(out.h_n[1], inp["h0"][1]), "h_n of an empty sequence != h0"
    assert np.array_equal(grads.dh0[1], cot["dh_n"][1]), "dh0 of an empty sequence != dh_n"
    if cell in LSTMS:
        assert np.array_equal(out.c_n[1], inp["c0"][1]), "c_n of an empty sequence != c0"
        assert np.array_equal(grads.dc0[1], cot["dc_n"][1]), "dc0 of an empty sequence != dc_n"


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell,extra", CELL_OPTS, ids=CELL_IDS)
def test_lengths_equal_each_sequence_run_alone(cell, extra, reverse):
    """A batch with lengths equals running each sequence alone, truncated to its length
    (outputs, final states and all gradients; parameter gradients sum over sequences)."""
    inp = make_inputs(cell, 12, peep=True)
    cot = make_cotangents(cell, 12)
    out = forward(cell, inp, dict(extra, lengths=LENGTHS, reverse=reverse))
    grads = BACKWARD[cell](out.cache, **cot)
    param_sum = {k: np.zeros_like(inp[k])
                 for k in ("w_ih", "w_hh", "b_ih", "b_hh", "w_peep", "w_hr")
                 if inp.get(k) is not None}
    for n_, len_n in enumerate(LENGTHS):
        one = {k: (None if v is None else
                   v[:len_n, n_:n_ + 1] if k == "x" else
                   v[n_:n_ + 1] if k in ("h0", "c0") else v) for k, v in inp.items()}
        cot1 = {k: (v[:len_n, n_:n_ + 1] if k == "dy" else v[n_:n_ + 1]) for k, v in cot.items()}
        o1 = forward(cell, one, dict(extra, reverse=reverse))
        g1 = BACKWARD[cell](o1.cache, **cot1)
        tol = dict(rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(out.y[:len_n, n_:n_ + 1], o1.y, err_msg=f"y[{n_}]", **tol)
        for name, v in _states(cell, out):
            np.testing.assert_allclose(v[n_:n_ + 1], getattr(o1, name), err_msg=name, **tol)
        np.testing.assert_allclose(grads.dx[:len_n, n_:n_ + 1], g1.dx, err_msg="dx", **tol)
        np.testing.assert_allclose(grads.dh0[n_:n_ + 1], g1.dh0, err_msg="dh0", **tol)
        if cell in LSTMS:
            np.testing.assert_allclose(grads.dc0[n_:n_ + 1], g1.dc0, err_msg="dc0", **tol)
        for k in param_sum:
            param_sum[k] += getattr(g1, GRAD_NAME[k])
    for k, v in param_sum.items():
        np.testing.assert_allclose(getattr(grads, GRAD_NAME[k]), v, rtol=1e-12, atol=1e-13,
                                   err_msg=f"d{k}")


@pytest.mark.parametrize("cell,extra", CELL_OPTS, ids=CELL_IDS)
def test_reverse_equals_flipped_forward(cell, extra):
    inp = make_inputs(cell, 13, peep=True)
    cot = make_cotangents(cell, 13)
    rev = forward(cell, inp, dict(extra, reverse=True))
    flipped = dict(inp, x=inp["x"][::-1].copy())
    fwd = forward(cell, flipped, extra)
    np.testing.assert_array_equal(rev.y, fwd.y[::-1], err_msg="y")
    for name, v in _states(cell, rev):
        np.testing.assert_array_equal(v, getattr(fwd, name), err_msg=name)
    g_rev = BACKWARD[cell](rev.cache, **cot)
    g_fwd = BACKWARD[cell](fwd.cache, **dict(cot, dy=cot["dy"][::-1].copy()))
    np.testing.assert_array_equal(g_rev.dx, g_fwd.dx[::-1], err_msg="dx")
    for f in g_rev._fields:
        if f != "dx" and getattr(g_rev, f) is not None:
            np.testing.assert_array_equal(getattr(g_rev, f), getattr(g_fwd, f), err_msg=f)


def test_reverse_with_lengths_starts_at_each_own_last_step():
    """PyTorch packed-sequence semantics: y[len-1] is the first state the reverse direction
    computes, from x[len-1] and h0 -- not a state that went through padding."""
    inp = make_inputs("rnn", 14)
    out = forward("rnn", inp, dict(nonlinearity="tanh", lengths=LENGTHS, reverse=True))
    n_, t_ = 0, LENGTHS[0] - 1
    a = (inp["x"][t_, n_] @ inp["w_ih"].T + inp["b_ih"] + inp["h0"][n_] @ inp["w_hh"].T
         + inp["b_hh"])
    np.testing.assert_allclose(out.y[t_, n_], np.tanh(a), rtol=1e-13, atol=1e-14)
    np.testing.assert_array_equal(out.h_n[n_], out.y[0, n_])   # h_n = state after t = 0


@pytest.mark.parametrize("cell,extra", CELL_OPTS, ids=CELL_IDS)
def test_backward_twice_is_identical_and_leaves_cache_alone(cell, extra):
    inp = make_inputs(cell, 15, peep=True)
    cot = make_cotangents(cell, 15)
    out = forward(cell, inp, dict(extra, lengths=LENGTHS))
    before = copy.deepcopy(out.cache)
    g1 = BACKWARD[cell](out.cache, **cot)
    g2 = BACKWARD[cell](out.cache, **cot)
    for f in g1._fields:
        a, b = getattr(g1, f), getattr(g2, f)
        if f == "dw_hr" and cell == "lstm":     # no projection: no gradient
            assert a is None and b is None, f
            continue
        assert a is not b, f"{f}: backward returned the same array object twice"
        np.testing.assert_array_equal(a, b, err_msg=f"{f} differs on a second backward")
    for k, v in before.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(out.cache[k], v, err_msg=f"cache[{k!r}] modified")
    # Nor are the caller's inputs or cotangents modified, nor aliased by the cache.
    for k, v in make_inputs(cell, 15, peep=True).items():
        if v is not None:
            np.testing.assert_array_equal(inp[k], v, err_msg=f"input {k} modified")
    for k, v in make_cotangents(cell, 15).items():
        np.testing.assert_array_equal(cot[k], v, err_msg=f"cotangent {k} modified")
    inp["x"][:] = 0
    g3 = BACKWARD[cell](out.cache, **cot)
    np.testing.assert_array_equal(g3.dw_ih, g1.dw_ih, err_msg="cache aliases the caller's x")


@pytest.mark.parametrize("cell,extra", CELL_OPTS, ids=CELL_IDS)
def test_training_false(cell, extra):
    inp = make_inputs(cell, 16, peep=True)
    opts = dict(extra, lengths=LENGTHS, reverse=True)
    train = forward(cell, inp, opts, training=True)
    infer = forward(cell, inp, opts, training=False)
    assert infer.cache is None
    assert train.cache is not None
    for f in train._fields:
        if f != "cache":
            np.testing.assert_array_equal(getattr(infer, f), getattr(train, f), err_msg=f)
    with pytest.raises(ValueError, match="training=False"):
        BACKWARD[cell](infer.cache, **make_cotangents(cell, 16))


@pytest.mark.parametrize("cell,extra", CELL_OPTS, ids=CELL_IDS)
def test_none_gradients_for_absent_inputs_and_result_types(cell, extra):
    out_t = {"lstm": LstmOutput, "lstm_proj": LstmOutput, "gru": GruOutput,
             "rnn": RnnOutput}[cell]
    grad_t = {"lstm": LstmGrads, "lstm_proj": LstmGrads, "gru": GruGrads, "rnn": RnnGrads}[cell]
    bare = make_inputs(cell, 17, biases=False, states=False, peep=False)
    full = make_inputs(cell, 17, biases=True, states=True, peep=True)
    for inp in (bare, full):
        out = forward(cell, inp, extra)
        assert isinstance(out, out_t)
        g = BACKWARD[cell](out.cache)       # all cotangents None = zeros
        assert isinstance(g, grad_t)
        for name, v in inp.items():
            gv = getattr(g, GRAD_NAME[name])
            if v is None:
                assert gv is None, f"d{name} should be None"
            else:
                assert gv.shape == v.shape and np.all(gv == 0), f"d{name} should be zeros"
    # Absent optional inputs mean zeros.
    zeros = dict(full, b_ih=np.zeros_like(full["b_ih"]), b_hh=np.zeros_like(full["b_hh"]),
                 h0=np.zeros_like(full["h0"]))
    if cell in LSTMS:
        zeros.update(c0=np.zeros_like(full["c0"]), w_peep=np.zeros_like(full["w_peep"]))
    same_x = dict(bare, x=full["x"], w_ih=full["w_ih"], w_hh=full["w_hh"])
    if full.get("w_hr") is not None:    # the projection is not optional input of this check
        same_x["w_hr"] = full["w_hr"]
    np.testing.assert_array_equal(forward(cell, same_x, extra).y, forward(cell, zeros, extra).y)


@pytest.mark.parametrize("cell,extra", CELL_OPTS, ids=CELL_IDS)
def test_float32_in_float32_out(cell, extra):
    inp64 = make_inputs(cell, 18, peep=True)
    inp32 = {k: (None if v is None else v.astype(np.float32)) for k, v in inp64.items()}
    cot = make_cotangents(cell, 18)
    opts = dict(extra, lengths=LENGTHS)
    o32, o64 = forward(cell, inp32, opts), forward(cell, inp64, opts)
    g32 = BACKWARD[cell](o32.cache, **cot)
    g64 = BACKWARD[cell](o64.cache, **cot)
    for f in o32._fields[:-1]:
        assert getattr(o32, f).dtype == np.float32, f
        np.testing.assert_allclose(getattr(o32, f), getattr(o64, f), rtol=1e-4, atol=1e-5,
                                   err_msg=f)
    for f in g32._fields:
        if f == "dw_hr" and cell == "lstm":     # no projection: no gradient
            assert g32.dw_hr is None and g64.dw_hr is None
            continue
        assert getattr(g32, f).dtype == np.float32, f
        np.testing.assert_allclose(getattr(g32, f), getattr(g64, f), rtol=1e-4, atol=1e-4,
                                   err_msg=f)


def test_empty_time_and_all_zero_lengths():
    for cell, extra in CELL_OPTS:
        inp = make_inputs(cell, 19, t=0)
        out = forward(cell, inp, extra)
        assert out.y.shape == (0, N, proj_size(cell) or H)
        np.testing.assert_array_equal(out.h_n, inp["h0"])
        inp = make_inputs(cell, 19)
        out = forward(cell, inp, dict(extra, lengths=np.zeros(N, dtype=np.int64)))
        assert np.all(out.y == 0)
        np.testing.assert_array_equal(out.h_n, inp["h0"])


# ----------------------------------------------------------------------------------------
# argument errors

def test_unknown_variant_and_nonlinearity():
    with pytest.raises(ValueError, match="variant"):
        forward("gru", make_inputs("gru", 0), dict(variant="lbr"))
    with pytest.raises(ValueError, match="nonlinearity"):
        forward("rnn", make_inputs("rnn", 0), dict(nonlinearity="sigmoid"))


@pytest.mark.parametrize("bad", [[-1, 2, 3], [1, 2, T + 1], [1, 2], [1.0, 2.0, 3.0]],
                         ids=["negative", "too_long", "wrong_shape", "float"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bad_lengths(cell, bad):
    with pytest.raises(ValueError, match="lengths"):
        forward(cell, make_inputs(cell, 0), dict(lengths=np.array(bad)))


def test_backward_rejects_foreign_cache():
    out = forward("gru", make_inputs("gru", 0), {})
    with pytest.raises(ValueError):
        ref.lstm_backward(out.cache)


@pytest.mark.parametrize("what", ["w_hr_1d", "w_hr_zero_rows", "w_hr_wrong_H", "w_hh_4H_by_H",
                                  "h0_N_by_H", "dy_T_N_H", "dh_n_N_H", "dc_n_N_P"])
def test_projection_shape_errors(what):
    inp = make_inputs("lstm_proj", 0)
    cot = make_cotangents("lstm_proj", 0)
    bad = {"w_hr_1d": ("w_hr", np.zeros(H)), "w_hr_zero_rows": ("w_hr", np.zeros((0, H))),
           "w_hr_wrong_H": ("w_hr", np.zeros((PROJ_P, H + 1))),
           "w_hh_4H_by_H": ("w_hh", np.zeros((4 * H, H))), "h0_N_by_H": ("h0", np.zeros((N, H))),
           "dy_T_N_H": ("dy", np.zeros((T, N, H))), "dh_n_N_H": ("dh_n", np.zeros((N, H))),
           "dc_n_N_P": ("dc_n", np.zeros((N, PROJ_P)))}
    name, value = bad[what]
    with pytest.raises(ValueError, match=name):
        if name in inp:
            forward("lstm_proj", dict(inp, **{name: value}), {})
        else:
            ref.lstm_backward(forward("lstm_proj", inp, {}).cache, **dict(cot, **{name: value}))


def _clip_margin(inp, opts, clip):
    """Smallest distance of any pre-clip |c| of the run from the clip bound (FD needs a margin:
    the clip is not differentiable there)."""
    cache = forward("lstm", inp, dict(opts, cell_clip=clip)).cache
    c_pre = cache["f"] * cache["c_prev"] + cache["i"] * cache["g"]
    active = cache["active"][:, :, None]
    return float(np.min(np.where(active, np.abs(np.abs(c_pre) - clip), np.inf)))


@pytest.mark.parametrize("cell", ["lstm", "lstm_proj"])
@pytest.mark.parametrize("opts", [dict(), dict(lengths=np.array([3, 1, 0, 2])[:N],
                                               reverse=True)], ids=["plain", "lengths_reverse"])
def test_fd_cell_clip(cell, opts):
    """cell_clip (TF1's LSTMCell): every gradient by central differences, with the clip active
    for some units and steps and not for others."""
    inp = make_inputs(cell, 31, peep=True)
    for k in ("x", "h0", "c0"):
        inp[k] = inp[k] * 3.0        # large cells, so that the clip bites
    cache = forward(cell, inp, opts).cache
    clip = float(np.median(np.abs(cache["c"])))
    while _clip_margin(inp, opts, clip) < 1e-3:
        clip *= 1.01
    out = forward(cell, inp, dict(opts, cell_clip=clip))
    c = out.cache["c"][out.cache["active"]]
    assert (np.abs(c) == clip).any() and (np.abs(c) < clip).any()   # clipped and not
    ran = opts["lengths"] > 0 if "lengths" in opts else slice(None)  # length 0 keeps c0
    assert np.abs(out.c_n[ran]).max() <= clip
    check_finite_differences(cell, inp, dict(opts, cell_clip=clip), make_cotangents(cell, 31))


def test_cell_clip_off_is_the_plain_lstm():
    inp = make_inputs("lstm", 5, peep=True)
    plain = forward("lstm", inp, {})
    for off in (None, 0, 0.0):
        o = forward("lstm", inp, dict(cell_clip=off))
        assert np.array_equal(o.y, plain.y) and np.array_equal(o.c_n, plain.c_n)
    with pytest.raises(ValueError, match="cell_clip must be None or a finite number >= 0"):
        forward("lstm", inp, dict(cell_clip=-1.0))
