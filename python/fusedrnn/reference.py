"""NumPy reference implementation of the fused RNN cells: the SPECIFICATION of the kernels.

Naive and readable on purpose: one Python loop over time, vectorised over the batch, with
the equations written out.  It shares no code with the C++ kernels; the kernels are tested
against it, and it is tested against central finite differences (tests/test_reference.py).

Shapes (letters as in fusedrnn.h): T steps, N batch, C input features, H hidden, G gates
(4 LSTM, 3 GRU, 1 RNN), P the LSTM's projection size (PyTorch's proj_size) and R the width of
the hidden state: R = P for an LSTM given a projection w_hr [P, H], else R = H.

    x       [T, N, C]   time-major input
    w_ih    [G*H, C]    input weights, gate blocks stacked in PyTorch order
    w_hh    [G*H, R]    recurrent weights
    b_ih    [G*H]       optional, absent = 0
    b_hh    [G*H]       optional, absent = 0
    h0      [N, R]      optional, absent = 0
    c0      [N, H]      optional, absent = 0 (LSTM)
    w_hr    [P, H]      optional LSTM projection, absent = none (R = H)
    lengths [N]         optional integers, 0 <= lengths[n] <= T, absent = all T
    y       [T, N, R]   output at every step
    h_n     [N, R]      final state
    c_n     [N, H]      final cell state (LSTM)

Computation happens in the dtype of x (float32 or float64); parameters are cast to it and
every output and gradient has it.

Variable lengths (PyTorch packed sequences / TF dynamic_rnn): sequence n only has the steps
t < lengths[n].  y[t, n] = 0 for t >= lengths[n]; the final state of sequence n is the state
after its own last valid step (the initial state when lengths[n] == 0).  Padded steps are
not computed: they get no gradient (dx is 0 there) and dy there is ignored.

Reverse direction (the backward half of a PyTorch bidirectional RNN): sequence n processes
t = lengths[n]-1, ..., 1, 0; y[t] is the state right after processing time t, and h_n is
the state after processing t = 0.

Implementation device: "step" s = 0..T-1 is the s-th update of every sequence.  At step s
sequence n is active iff s < lengths[n], and then processes time t = s (forward) or
t = lengths[n]-1-s (reverse).  Inactive rows keep their state.

Subnormal numbers (|v| below 1.2e-38 in float32, 2.2e-308 in float64): the kernels treat them
as zero, as inputs of every arithmetic operation and as results (flush-to-zero and
denormals-are-zero, set for the duration of each kernel call on every thread that runs it and
restored afterwards; x86 only).  This reference keeps NumPy's gradual underflow, so the two can
differ wherever a subnormal operand or result occurs, by at most the subnormal magnitudes
involved times the weights they meet; on data without subnormals nothing changes.

Backward: the loss is L = sum(y*dy) + sum(h_n*dh_n) [+ sum(c_n*dc_n) for LSTM]; a None
cotangent means zeros.  Backward returns fresh arrays, never modifies the cache, and can be
called any number of times on one cache.  Gradients of optional inputs that were not given
(h0, c0, biases, peepholes) are None.

The cache is a plain dict owned by this module (not interchangeable with the kernels'
cache).  Per-step arrays in it are indexed by step s, not by time t:
    "kind"             "lstm" | "gru" | "rnn"
    "x", "w_ih", ...   copies of the (cast) inputs; absent biases are stored as zeros
    "has"              dict of which optional inputs were given
    "lengths" [N], "reverse" bool, "tidx" [T, N] time processed at step s, "active" [T, N]
    "h_prev" [T, N, R] state entering step s, plus per-cell gate values (see each forward).
"""
from __future__ import annotations

import numbers

import numpy as np

from ._types import GruGrads, GruOutput, LstmGrads, LstmOutput, RnnGrads, RnnOutput

__all__ = [
    "lstm_forward", "lstm_backward",
    "gru_forward", "gru_backward",
    "rnn_forward", "rnn_backward",
]

GRU_VARIANTS = ("reset_after", "reset_before")
RNN_NONLINEARITIES = ("tanh", "relu")


# ----------------------------------------------------------------------------------------
# helpers

def _sigmoid(a):
    """σ(a) = 1 / (1 + exp(-a)), written so that neither branch overflows."""
    out = np.empty_like(a)
    pos = a >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-a[pos]))
    e = np.exp(a[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _input_x(x):
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x must be float32 or float64, got {x.dtype}")
    if x.ndim != 3:
        raise ValueError(f"x must have shape [T, N, C], got {x.shape}")
    return x.copy()


def _param(a, dtype, shape, name, *, optional):
    """Cast an input to `dtype` and check its shape; returns a fresh copy (or None)."""
    if a is None:
        if optional:
            return None
        raise ValueError(f"{name} is required")
    a = np.array(a, dtype=dtype, copy=True)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(a.shape)}")
    return a


def _lengths(lengths, T, N):
    """Validate `lengths` ([N] integers in [0, T]); None means every sequence has T steps."""
    if lengths is None:
        return np.full(N, T, dtype=np.int64)
    arr = np.asarray(lengths)
    if arr.shape != (N,):
        raise ValueError(f"lengths must have shape [N] = [{N}], got {list(arr.shape)}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"lengths must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > T):
        raise ValueError(f"lengths must lie in [0, T] = [0, {T}], got {arr.tolist()}")
    return arr


def _schedule(T, lengths, reverse):
    """tidx [T, N]: time index processed by each sequence at step s (clipped into range for
    inactive rows, whose values are never used); active [T, N]: s < lengths[n]."""
    s = np.arange(T)[:, None]                                   # [T, 1]
    active = s < lengths[None, :]                               # [T, N]
    tidx = (lengths[None, :] - 1 - s) if reverse else np.broadcast_to(s, active.shape)
    tidx = np.clip(tidx, 0, max(T - 1, 0)).astype(np.int64)
    return tidx, active


def _check_cache(cache, kind):
    if cache is None:
        raise ValueError(
            f"{kind}_backward got cache=None: the forward was run with training=False, "
            "which keeps no cache; run the forward with training=True to differentiate")
    if not isinstance(cache, dict) or cache.get("kind") != kind:
        raise ValueError(f"{kind}_backward needs a cache from reference.{kind}_forward")


def _cotangent(d, shape, dtype, name):
    if d is None:
        return np.zeros(shape, dtype=dtype)
    d = np.asarray(d, dtype=dtype)
    if d.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(d.shape)}")
    return d


def _prepare(x, w_ih, w_hh, b_ih, b_hh, h0, G, lengths, reverse, P=0):
    """Common input handling of the three forwards; P > 0: the LSTM's projection size, the
    width R of the hidden state (h0, w_hh's columns), otherwise R = H."""
    x = _input_x(x)
    T, N, C = x.shape
    w_hh_arr = np.asarray(w_hh)
    r_name = "P" if P else "H"
    if w_hh_arr.ndim != 2 or w_hh_arr.shape[0] % G != 0:
        raise ValueError(f"w_hh must have shape [{G}*H, {r_name}], got {list(w_hh_arr.shape)}")
    H = w_hh_arr.shape[0] // G
    R = P or H
    dt = x.dtype
    p = dict(
        x=x, T=T, N=N, C=C, H=H, R=R, dtype=dt,
        w_ih=_param(w_ih, dt, (G * H, C), "w_ih", optional=False),
        w_hh=_param(w_hh, dt, (G * H, R), "w_hh", optional=False),
        b_ih=_param(b_ih, dt, (G * H,), "b_ih", optional=True),
        b_hh=_param(b_hh, dt, (G * H,), "b_hh", optional=True),
        h0=_param(h0, dt, (N, R), "h0", optional=True),
    )
    p["has"] = dict(b_ih=p["b_ih"] is not None, b_hh=p["b_hh"] is not None,
                    h0=p["h0"] is not None)
    for k in ("b_ih", "b_hh"):
        if p[k] is None:
            p[k] = np.zeros(G * H, dtype=dt)
    if p["h0"] is None:
        p["h0"] = np.zeros((N, R), dtype=dt)
    p["lengths"] = _lengths(lengths, T, N)
    p["reverse"] = bool(reverse)
    p["tidx"], p["active"] = _schedule(T, p["lengths"], p["reverse"])
    return p


def _param_grads(cache, dw_ih, dw_hh, db_ih, db_hh, dh0):
    """Drop the gradients of the optional inputs that were not given."""
    has = cache["has"]
    return (dh0 if has["h0"] else None, dw_ih, dw_hh,
            db_ih if has["b_ih"] else None, db_hh if has["b_hh"] else None)


# ----------------------------------------------------------------------------------------
# LSTM

def _projection_size(w_hr):
    """P, the number of rows of the LSTM projection w_hr [P, H]; 0 when w_hr is None."""
    if w_hr is None:
        return 0
    shape = np.shape(w_hr)
    if len(shape) != 2 or shape[0] < 1:
        raise ValueError(f"w_hr must have shape [P, H] with P >= 1, got {list(shape)}")
    return shape[0]


def _cell_clip(cell_clip):
    """None or 0: no clip; else a finite number > 0."""
    if cell_clip is None:
        return 0.0
    if isinstance(cell_clip, (bool, np.bool_)) or not isinstance(cell_clip, numbers.Real) \
            or not (0 <= cell_clip < np.inf):
        raise ValueError(f"cell_clip must be None or a finite number >= 0, got {cell_clip!r}")
    return float(cell_clip)


def lstm_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, w_peep=None,
                 w_hr=None, lengths=None, reverse=False, training=True, cell_clip=None):
    """LSTM over a sequence; PyTorch gate order i, f, g, o, optional peepholes, optional
    projection (PyTorch's proj_size).

    Per step, with h, c the previous state and W_*, U_* the gate blocks of w_ih, w_hh
    (rows [0:H] = i, [H:2H] = f, [2H:3H] = g, [3H:4H] = o), p_i, p_f, p_o the rows of
    w_peep [3, H] (all zero when w_peep is None):

        i  = σ(W_i x + b_ii + U_i h + b_hi + p_i∘c)
        f  = σ(W_f x + b_if + U_f h + b_hf + p_f∘c)
        g  = tanh(W_g x + b_ig + U_g h + b_hg)
        c' = f∘c + i∘g,  clipped to [−cell_clip, cell_clip] when cell_clip > 0 (TF1's
             LSTMCell(cell_clip)): the clipped c' is what o, h and the next step see
        o  = σ(W_o x + b_io + U_o h + b_ho + p_o∘c')      (o's peephole sees the NEW cell)
        m  = o∘tanh(c')                                    [N, H]
        h' = m W_hrᵀ   with w_hr [P, H]                    [N, P]
        h' = m         without w_hr

    With w_hr, the hidden state h (h0, h_n, every y[t]) has R = P units and w_hh is [4H, P];
    the cell state c keeps H units.  Without, R = H.

    Returns LstmOutput(y [T, N, R], h_n [N, R], c_n [N, H], cache); cache is None when
    training=False.  See the module docstring for lengths and reverse.
    """
    P = _projection_size(w_hr)
    clip = _cell_clip(cell_clip)
    p = _prepare(x, w_ih, w_hh, b_ih, b_hh, h0, 4, lengths, reverse, P)
    p["cell_clip"] = clip
    T, N, H, R, dt = p["T"], p["N"], p["H"], p["R"], p["dtype"]
    p["P"] = P
    p["w_hr"] = _param(w_hr, dt, (P, H), "w_hr", optional=True)
    p["has"]["w_hr"] = w_hr is not None
    c0 = _param(c0, dt, (N, H), "c0", optional=True)
    p["has"]["c0"] = c0 is not None
    p["c0"] = np.zeros((N, H), dtype=dt) if c0 is None else c0
    w_peep = _param(w_peep, dt, (3, H), "w_peep", optional=True)
    p["has"]["w_peep"] = w_peep is not None
    p["w_peep"] = np.zeros((3, H), dtype=dt) if w_peep is None else w_peep
    p_i, p_f, p_o = p["w_peep"]

    x, w_ih, w_hh, w_hr = p["x"], p["w_ih"], p["w_hh"], p["w_hr"]
    bias = p["b_ih"] + p["b_hh"]                                 # [4H]
    rows = np.arange(N)
    y = np.zeros((T, N, R), dtype=dt)
    h, c = p["h0"].copy(), p["c0"].copy()                        # [N, R], [N, H]
    saved = {k: np.zeros((T, N, H), dtype=dt)
             for k in ("c_prev", "i", "f", "g", "o", "c", "m")}
    saved["h_prev"] = np.zeros((T, N, R), dtype=dt)

    for s in range(T):
        act = p["active"][s][:, None]                            # [N, 1]
        xt = x[p["tidx"][s], rows]                               # [N, C]
        a = xt @ w_ih.T + h @ w_hh.T + bias                      # [N, 4H]
        a_i, a_f, a_g, a_o = (a[:, k * H:(k + 1) * H] for k in range(4))
        i = _sigmoid(a_i + p_i * c)
        f = _sigmoid(a_f + p_f * c)
        g = np.tanh(a_g)
        c_new = f * c + i * g
        if clip:
            c_new = np.clip(c_new, -clip, clip)
        o = _sigmoid(a_o + p_o * c_new)
        m = o * np.tanh(c_new)                                   # [N, H]
        h_new = m if w_hr is None else m @ w_hr.T                # [N, R]
        for k, v in (("h_prev", h), ("c_prev", c), ("i", i), ("f", f), ("g", g),
                     ("o", o), ("c", c_new), ("m", m)):
            saved[k][s] = v
        # Inactive (padded) rows keep their state and write no output.
        h = np.where(act, h_new, h)
        c = np.where(act, c_new, c)
        a_rows = p["active"][s]
        y[p["tidx"][s][a_rows], rows[a_rows]] = h[a_rows]

    cache = None
    if training:
        cache = dict(kind="lstm", **p, **saved)
    return LstmOutput(y, h, c, cache)


def lstm_backward(cache, dy=None, dh_n=None, dc_n=None):
    """Gradients of L = Σ y·dy + Σ h_n·dh_n + Σ c_n·dc_n through lstm_forward.

    dy [T, N, R], dh_n [N, R], dc_n [N, H] (R = P with a projection, else H).
    Returns LstmGrads(dx [T, N, C], dh0 [N, R] | None, dc0 [N, H] | None, dw_ih [4H, C],
    dw_hh [4H, R], db_ih [4H] | None, db_hh [4H] | None, dw_peep [3, H] | None,
    dw_hr [P, H] | None).
    """
    _check_cache(cache, "lstm")
    T, N, C, H, R, dt = (cache[k] for k in ("T", "N", "C", "H", "R", "dtype"))
    dy = _cotangent(dy, (T, N, R), dt, "dy")
    dh = _cotangent(dh_n, (N, R), dt, "dh_n").copy()             # dL/dh of the current state
    dc = _cotangent(dc_n, (N, H), dt, "dc_n").copy()             # dL/dc of the current state
    x, w_ih, w_hh, w_hr = cache["x"], cache["w_ih"], cache["w_hh"], cache["w_hr"]
    p_i, p_f, p_o = cache["w_peep"]
    rows = np.arange(N)

    dx = np.zeros((T, N, C), dtype=dt)
    dw_ih = np.zeros_like(w_ih)
    dw_hh = np.zeros_like(w_hh)
    db = np.zeros(4 * H, dtype=dt)
    dw_peep = np.zeros((3, H), dtype=dt)
    dw_hr = None if w_hr is None else np.zeros_like(w_hr)

    for s in reversed(range(T)):
        act_rows = cache["active"][s]                            # [N]
        act = act_rows[:, None]
        t = cache["tidx"][s]
        h_prev, c_prev = cache["h_prev"][s], cache["c_prev"][s]
        i, f, g, o, c, m = (cache[k][s] for k in ("i", "f", "g", "o", "c", "m"))

        # Forward wrote y[t] = h' for active rows: dy[t] adds to dh' (ignored when padded).
        dh_new = dh + np.where(act, dy[t, rows], 0)                # [N, R]
        if w_hr is None:
            dm = dh_new                                           # h' = m
        else:
            # h' = m W_hrᵀ: dW_hr += dh'ᵀ m over the active rows, dm = dh' W_hr.
            dw_hr += np.where(act, dh_new, 0).T @ m
            dm = dh_new @ w_hr                                    # [N, H]
        dc_new = dc
        # m = o∘tanh(c'): do = dm∘tanh(c'), dc' += dm∘o∘(1 − tanh²(c')).
        tc = np.tanh(c)
        do = dm * tc
        dc_new = dc_new + dm * o * (1 - tc * tc)
        # o = σ(a_o + p_o∘c'): da_o = do∘o(1−o); c' also feeds o through p_o.
        da_o = do * o * (1 - o)
        dc_new = dc_new + da_o * p_o
        # c' = clip(c'_pre): the gradient passes where the clip was inactive, |c'| < cell_clip
        # (c' is the clipped value: one exactly at the bound counts as clipped).
        if cache["cell_clip"]:
            dc_new = np.where(np.abs(c) < cache["cell_clip"], dc_new, 0)
        # c' = f∘c + i∘g.
        di = dc_new * g
        dg = dc_new * i
        df = dc_new * c_prev
        dc_prev = dc_new * f
        # i = σ(a_i + p_i∘c), f = σ(a_f + p_f∘c), g = tanh(a_g).
        da_i = di * i * (1 - i)
        da_f = df * f * (1 - f)
        da_g = dg * (1 - g * g)
        dc_prev = dc_prev + da_i * p_i + da_f * p_f
        # Padded rows did nothing at this step: no gate gradient, state gradient passes on.
        da = np.where(act, np.concatenate([da_i, da_f, da_g, da_o], axis=1), 0)  # [N, 4H]
        dw_peep[0] += np.sum(np.where(act, da_i * c_prev, 0), axis=0)
        dw_peep[1] += np.sum(np.where(act, da_f * c_prev, 0), axis=0)
        dw_peep[2] += np.sum(np.where(act, da_o * c, 0), axis=0)
        # a = x_t W_ihᵀ + h W_hhᵀ + b_ih + b_hh.
        xt = x[t, rows]
        dw_ih += da.T @ xt
        dw_hh += da.T @ h_prev
        db += da.sum(axis=0)
        dx_t = da @ w_ih
        dx[t[act_rows], rows[act_rows]] = dx_t[act_rows]
        dh = np.where(act, da @ w_hh, dh)
        dc = np.where(act, dc_prev, dc)

    dh0, dw_ih, dw_hh, db_ih, db_hh = _param_grads(cache, dw_ih, dw_hh, db, db.copy(), dh)
    dc0 = dc if cache["has"]["c0"] else None
    dw_peep = dw_peep if cache["has"]["w_peep"] else None
    return LstmGrads(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_hr)


# ----------------------------------------------------------------------------------------
# GRU

def gru_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, variant="reset_after",
                lengths=None, reverse=False, training=True):
    """GRU over a sequence; PyTorch gate order r, z, n.

    Gate blocks: rows [0:H] = r, [H:2H] = z, [2H:3H] = n of w_ih (W_*), w_hh (U_*), b_ih
    (b_i*), b_hh (b_h*).  With h the previous state:

        r  = σ(W_r x + b_ir + U_r h + b_hr)
        z  = σ(W_z x + b_iz + U_z h + b_hz)
        n  = tanh(W_n x + b_in + r∘(U_n h + b_hn))        variant="reset_after" (PyTorch)
        n  = tanh(W_n x + b_in + U_n (r∘h) + b_hn)        variant="reset_before" (Keras
                                                           reset_after=False, ONNX default)
        h' = (1 − z)∘n + z∘h

    Returns GruOutput(y [T, N, H], h_n [N, H], cache); cache is None when training=False.
    """
    if variant not in GRU_VARIANTS:
        raise ValueError(f"unknown GRU variant {variant!r}; expected one of {GRU_VARIANTS}")
    p = _prepare(x, w_ih, w_hh, b_ih, b_hh, h0, 3, lengths, reverse)
    T, N, H, dt = p["T"], p["N"], p["H"], p["dtype"]
    x, w_ih, w_hh, b_ih, b_hh = p["x"], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"]
    U_rz, U_n = w_hh[:2 * H], w_hh[2 * H:]
    rows = np.arange(N)
    y = np.zeros((T, N, H), dtype=dt)
    h = p["h0"].copy()
    # hn_lin: the recurrent term of n before tanh -- U_n h + b_hn (reset_after) or
    # U_n (r∘h) + b_hn (reset_before).
    saved = {k: np.zeros((T, N, H), dtype=dt) for k in ("h_prev", "r", "z", "n", "hn_lin")}

    for s in range(T):
        act = p["active"][s][:, None]
        xt = x[p["tidx"][s], rows]                               # [N, C]
        gi = xt @ w_ih.T + b_ih                                  # [N, 3H]
        gh_rz = h @ U_rz.T + b_hh[:2 * H]                        # [N, 2H]
        r = _sigmoid(gi[:, :H] + gh_rz[:, :H])
        z = _sigmoid(gi[:, H:2 * H] + gh_rz[:, H:])
        if variant == "reset_after":
            hn_lin = h @ U_n.T + b_hh[2 * H:]
            n = np.tanh(gi[:, 2 * H:] + r * hn_lin)
        else:
            hn_lin = (r * h) @ U_n.T + b_hh[2 * H:]
            n = np.tanh(gi[:, 2 * H:] + hn_lin)
        h_new = (1 - z) * n + z * h
        for k, v in (("h_prev", h), ("r", r), ("z", z), ("n", n), ("hn_lin", hn_lin)):
            saved[k][s] = v
        h = np.where(act, h_new, h)
        a_rows = p["active"][s]
        y[p["tidx"][s][a_rows], rows[a_rows]] = h[a_rows]

    cache = None
    if training:
        cache = dict(kind="gru", variant=variant, **p, **saved)
    return GruOutput(y, h, cache)


def gru_backward(cache, dy=None, dh_n=None):
    """Gradients of L = Σ y·dy + Σ h_n·dh_n through gru_forward.

    Returns GruGrads(dx [T, N, C], dh0 [N, H] | None, dw_ih [3H, C], dw_hh [3H, H],
    db_ih [3H] | None, db_hh [3H] | None).
    """
    _check_cache(cache, "gru")
    T, N, C, H, dt = cache["T"], cache["N"], cache["C"], cache["H"], cache["dtype"]
    dy = _cotangent(dy, (T, N, H), dt, "dy")
    dh = _cotangent(dh_n, (N, H), dt, "dh_n").copy()
    x, w_ih, w_hh = cache["x"], cache["w_ih"], cache["w_hh"]
    U_rz, U_n = w_hh[:2 * H], w_hh[2 * H:]
    reset_after = cache["variant"] == "reset_after"
    rows = np.arange(N)

    dx = np.zeros((T, N, C), dtype=dt)
    dw_ih = np.zeros_like(w_ih)
    dw_hh = np.zeros_like(w_hh)
    db_ih = np.zeros(3 * H, dtype=dt)
    db_hh = np.zeros(3 * H, dtype=dt)

    for s in reversed(range(T)):
        act_rows = cache["active"][s]
        act = act_rows[:, None]
        t = cache["tidx"][s]
        h_prev = cache["h_prev"][s]
        r, z, n, hn_lin = (cache[k][s] for k in ("r", "z", "n", "hn_lin"))

        dh_new = dh + np.where(act, dy[t, rows], 0)
        # h' = (1 − z)∘n + z∘h.
        dn = dh_new * (1 - z)
        dz = dh_new * (h_prev - n)
        dh_prev = dh_new * z
        # n = tanh(a_n), a_n = gi_n + [r∘hn_lin | hn_lin].
        da_n = dn * (1 - n * n)
        if reset_after:
            # hn_lin = U_n h + b_hn enters as r∘hn_lin.
            dr = da_n * hn_lin
            dhn_lin = da_n * r
            rec_n = h_prev                                       # what U_n multiplied
            dh_prev = dh_prev + dhn_lin @ U_n
        else:
            # hn_lin = U_n (r∘h) + b_hn enters directly.
            dhn_lin = da_n
            drh = dhn_lin @ U_n                                  # d(r∘h)
            dr = drh * h_prev
            dh_prev = dh_prev + drh * r
            rec_n = r * h_prev
        # r = σ(a_r), z = σ(a_z), a_{r,z} = gi_{r,z} + h U_{r,z}ᵀ + b_h{r,z}.
        da_r = dr * r * (1 - r)
        da_z = dz * z * (1 - z)
        da_rz = np.concatenate([da_r, da_z], axis=1)             # [N, 2H]
        dh_prev = dh_prev + da_rz @ U_rz

        # Padded rows did nothing: no parameter/input gradient, state gradient passes on.
        dgi = np.where(act, np.concatenate([da_rz, da_n], axis=1), 0)       # [N, 3H]
        dgh = np.where(act, np.concatenate([da_rz, dhn_lin], axis=1), 0)    # [N, 3H]
        xt = x[t, rows]
        dw_ih += dgi.T @ xt
        db_ih += dgi.sum(axis=0)
        dw_hh[:2 * H] += dgh[:, :2 * H].T @ h_prev
        dw_hh[2 * H:] += dgh[:, 2 * H:].T @ rec_n
        db_hh += dgh.sum(axis=0)
        dx_t = dgi @ w_ih
        dx[t[act_rows], rows[act_rows]] = dx_t[act_rows]
        dh = np.where(act, dh_prev, dh)

    dh0, dw_ih, dw_hh, db_ih, db_hh = _param_grads(cache, dw_ih, dw_hh, db_ih, db_hh, dh)
    return GruGrads(dx, dh0, dw_ih, dw_hh, db_ih, db_hh)


# ----------------------------------------------------------------------------------------
# Elman RNN

def rnn_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, nonlinearity="tanh",
                lengths=None, reverse=False, training=True):
    """Elman RNN over a sequence:

        h' = φ(W_ih x + b_ih + W_hh h + b_hh),   φ = tanh (nonlinearity="tanh") or
                                                 φ(a) = max(a, 0) (nonlinearity="relu")

    relu'(0) is taken as 0.  Returns RnnOutput(y [T, N, H], h_n [N, H], cache); cache is
    None when training=False.  The cache keeps the pre-activation a in "pre" [T, N, H].
    """
    if nonlinearity not in RNN_NONLINEARITIES:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}; "
                         f"expected one of {RNN_NONLINEARITIES}")
    p = _prepare(x, w_ih, w_hh, b_ih, b_hh, h0, 1, lengths, reverse)
    T, N, H, dt = p["T"], p["N"], p["H"], p["dtype"]
    x, w_ih, w_hh = p["x"], p["w_ih"], p["w_hh"]
    bias = p["b_ih"] + p["b_hh"]
    rows = np.arange(N)
    y = np.zeros((T, N, H), dtype=dt)
    h = p["h0"].copy()
    saved = {k: np.zeros((T, N, H), dtype=dt) for k in ("h_prev", "pre", "h")}

    for s in range(T):
        act = p["active"][s][:, None]
        xt = x[p["tidx"][s], rows]
        a = xt @ w_ih.T + h @ w_hh.T + bias                      # [N, H]
        h_new = np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0)
        saved["h_prev"][s], saved["pre"][s], saved["h"][s] = h, a, h_new
        h = np.where(act, h_new, h)
        a_rows = p["active"][s]
        y[p["tidx"][s][a_rows], rows[a_rows]] = h[a_rows]

    cache = None
    if training:
        cache = dict(kind="rnn", nonlinearity=nonlinearity, **p, **saved)
    return RnnOutput(y, h, cache)


def rnn_backward(cache, dy=None, dh_n=None):
    """Gradients of L = Σ y·dy + Σ h_n·dh_n through rnn_forward.

    Returns RnnGrads(dx [T, N, C], dh0 [N, H] | None, dw_ih [H, C], dw_hh [H, H],
    db_ih [H] | None, db_hh [H] | None).
    """
    _check_cache(cache, "rnn")
    T, N, C, H, dt = cache["T"], cache["N"], cache["C"], cache["H"], cache["dtype"]
    dy = _cotangent(dy, (T, N, H), dt, "dy")
    dh = _cotangent(dh_n, (N, H), dt, "dh_n").copy()
    x, w_ih, w_hh = cache["x"], cache["w_ih"], cache["w_hh"]
    rows = np.arange(N)

    dx = np.zeros((T, N, C), dtype=dt)
    dw_ih = np.zeros_like(w_ih)
    dw_hh = np.zeros_like(w_hh)
    db = np.zeros(H, dtype=dt)

    for s in reversed(range(T)):
        act_rows = cache["active"][s]
        act = act_rows[:, None]
        t = cache["tidx"][s]
        h_prev, h_new = cache["h_prev"][s], cache["h"][s]

        dh_new = dh + np.where(act, dy[t, rows], 0)
        # h' = φ(a): tanh' = 1 − h'², relu' = [a > 0].
        if cache["nonlinearity"] == "tanh":
            dphi = 1 - h_new * h_new
        else:
            dphi = (cache["pre"][s] > 0).astype(dt)
        da = np.where(act, dh_new * dphi, 0)                     # [N, H]
        # a = x_t W_ihᵀ + h W_hhᵀ + b_ih + b_hh.
        xt = x[t, rows]
        dw_ih += da.T @ xt
        dw_hh += da.T @ h_prev
        db += da.sum(axis=0)
        dx_t = da @ w_ih
        dx[t[act_rows], rows[act_rows]] = dx_t[act_rows]
        dh = np.where(act, da @ w_hh, dh)

    dh0, dw_ih, dw_hh, db_ih, db_hh = _param_grads(cache, dw_ih, dw_hh, db, db.copy(), dh)
    return RnnGrads(dx, dh0, dw_ih, dw_hh, db_ih, db_hh)


# The low-precision contract (bf16 rounding, int8 quantisation, the emulated products).
from .reference_lowp import (  # noqa: E402
    bf16_bits, bf16_from_bits, bf16_round, gemm_bf16_emulated, gemm_s8_emulated, gru_forward_bf16,
    gru_train_bf16, lstm_forward_bf16, lstm_train_bf16, quantize_rows, rnn_forward_bf16,
    rnn_train_bf16, lstm_forward_int8, gru_forward_int8, rnn_forward_int8,
)

__all__ += ["bf16_bits", "bf16_from_bits", "bf16_round", "gemm_bf16_emulated",
            "gemm_s8_emulated", "quantize_rows", "lstm_forward_bf16", "gru_forward_bf16",
            "rnn_forward_bf16", "lstm_train_bf16", "gru_train_bf16", "rnn_train_bf16",
            "lstm_forward_int8", "gru_forward_int8", "rnn_forward_int8"]
