"""NumPy emulation of the low-precision contract (issue 16): the SPECIFICATION of the bf16 and
int8 products of ``fusedrnn.lowp`` and of the kernels built on them. Re-exported by
``fusedrnn.reference``.

bf16 (``bf16_bits``, ``bf16_round``, ``gemm_bf16_emulated``)
    fp32 -> bf16 rounds to nearest, ties to even, on the uint32 bit pattern; NaN stays a quiet
    NaN of its sign (bit 6 of the bf16 set); an fp32 subnormal becomes a zero of its sign (as the
    hardware conversion vcvtneps2bf16 does). Products of two bf16 are exact in fp32.
    ``C = init + A Wᵀ`` accumulates in fp32, one sequential chain per element: acc = init; for
    each pair p: acc += a[2p+1] w[2p+1], then acc += a[2p] w[2p] (each rounded to fp32, nearest
    even; K zero-padded to even). The tiers avx512_bf16, avx512, avx2 and baseline equal this bit
    for bit (except where a product or partial sum is an fp32 subnormal, which the bf16
    instructions flush to zero). The amx tier sums in its own order: its error bound is
    |C - exact| <= (K + 1) 2^-24 (|init| + sum_k |a_k w_k|) (measured: at most 6 units of
    2^-24 (|init| + sum |a_k w_k|) for K <= 1024).

int8 (``quantize_rows``, ``gemm_s8_emulated``)
    symmetric per-row scales: amax = max |x| (fp32); scale = amax / 127, inv = 127 / amax (fp32
    divisions; both 0 when amax = 0); q = clip(rint(f32(x * inv)), -127, 127) (rint: half to
    even). A row with a NaN or an infinity has scale NaN and q = 0, so every product of that row
    is NaN (a non-finite activation propagates instead of quantising to a finite number). Weights per output row (once, when packed), activations per row (dynamic) or with a
    fixed inv. acc = qa qwᵀ exactly (s32); C = init + f32(f32(acc) * f32(sa[i] * sw[j])).
    Every tier equals this bit for bit.
    Limits of the scheme. acc is exact only while 127 * 127 * K <= 2^31 - 1, i.e. K <= 133,144
    (``fusedrnn.lowp.INT8_MAX_K``; past it a row of full-scale values wraps around, in every
    tier: the callers refuse such K). A row whose amax is below 127 / FLT_MAX ~ 3.73e-37 has
    inv = 127 / amax = inf: each non-zero element quantises to its sign (+-127) and zeros to 0
    (f32(0 * inf) is NaN, which the kernels' conversion and this emulation's cast both turn
    into 0 on x86; checked against the avx2 and baseline tiers), with a scale amax / 127 below
    2.9e-39 (subnormal: its products dequantise to about 0, and to 0 where the kernels flush
    subnormals). The kernels follow this specification; it is left as it is.

Against the fp32 product of the unrounded operands, bf16 rounds each operand with relative
error <= 2^-9 (about 4e-3 per element, ~1e-3 typical after summation); the measured errors per
cell are in the kernels' docstrings.
"""
from __future__ import annotations

import numpy as np

__all__ = ["bf16_bits", "bf16_from_bits", "bf16_round", "gemm_bf16_emulated", "quantize_rows",
           "lstm_train_bf16", "gru_train_bf16", "rnn_train_bf16",
           "gemm_s8_emulated", "lstm_forward_bf16", "gru_forward_bf16", "rnn_forward_bf16",
           "lstm_forward_int8", "gru_forward_int8", "rnn_forward_int8"]

_F32 = np.float32


def bf16_bits(x) -> np.ndarray:
    """The bf16 bit patterns (uint16) of the contract's rounding of float32 ``x``."""
    u = np.ascontiguousarray(x, dtype=_F32).view(np.uint32)
    rounded = ((u.astype(np.uint64) + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32)
    nan = (u >> 16) | 0x40
    zero = (u >> 16) & 0x8000
    out = np.where((u & 0x7F800000) == 0, zero, rounded)
    out = np.where((u & 0x7FFFFFFF) > 0x7F800000, nan, out)
    return out.astype(np.uint16)


def bf16_from_bits(b) -> np.ndarray:
    """float32 values of bf16 bit patterns (exact)."""
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(_F32)


def bf16_round(x) -> np.ndarray:
    """float32 ``x`` rounded to bf16 (the contract), as float32 values."""
    return bf16_from_bits(bf16_bits(x))


def _init(m, n, bias, c):
    if c is not None:
        return np.array(c, dtype=_F32, copy=True)
    if bias is not None:
        return np.broadcast_to(np.asarray(bias, dtype=_F32), (m, n)).copy()
    return np.zeros((m, n), dtype=_F32)


def gemm_bf16_emulated(a, w, bias=None, c=None) -> np.ndarray:
    """``init + bf16(a) @ bf16(w).T`` in the contract's order: a [m, K] and w [n, K] float32
    (rounded here), init = c [m, n] when given, else bias [n], else 0. Returns float32 [m, n]."""
    a = bf16_round(np.asarray(a, dtype=_F32))
    w = bf16_round(np.asarray(w, dtype=_F32))
    m, K = a.shape
    n = w.shape[0]
    if K % 2:
        a = np.concatenate([a, np.zeros((m, 1), _F32)], axis=1)
        w = np.concatenate([w, np.zeros((n, 1), _F32)], axis=1)
    acc = _init(m, n, bias, c)
    wt = np.ascontiguousarray(w.T)
    for p in range(a.shape[1] // 2):
        for k in (2 * p + 1, 2 * p):
            # float32 * float32 of bf16 values is exact; the addition rounds to float32.
            acc = acc + a[:, k:k + 1] * wt[k][None, :]
    return acc


def quantize_rows(x, inv=None):
    """The contract's symmetric s8 quantisation of each row of float32 ``x`` [m, K].

    Dynamic (inv None): returns (q int8 [m, K], scale float32 [m]). With a fixed ``inv`` (the
    fp32 127 / amax of a known range): returns q only."""
    x = np.asarray(x, dtype=_F32)
    if inv is None:
        amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(x.shape[0], _F32)
        bad = ~np.isfinite(amax)  # a NaN or infinity in the row: scale NaN, q = 0
        amax = np.where(bad, _F32(0), amax).astype(_F32)
        with np.errstate(divide="ignore"):
            invs = np.where(amax > 0, _F32(127) / amax, _F32(0)).astype(_F32)
        scale = np.where(bad, _F32(np.nan), amax / _F32(127)).astype(_F32)
        q = _quantize(np.where(bad[:, None], _F32(0), x), invs[:, None])
        return q, scale
    return _quantize(x, _F32(inv))


def _quantize(x, inv):
    v = (x * inv).astype(_F32)
    return np.clip(np.rint(v), -127, 127).astype(np.int8)


def gemm_s8_emulated(qa, a_scale, qw, w_scale, bias=None, c=None) -> np.ndarray:
    """``init + f32(qa @ qw.T) * (a_scale[i] * w_scale[j])``: qa int8 [m, K], qw int8 [n, K],
    scales float32; every operation rounded to float32 in that order. float32 [m, n]."""
    qa = np.asarray(qa, dtype=np.int8)
    qw = np.asarray(qw, dtype=np.int8)
    acc = qa.astype(np.int64) @ qw.astype(np.int64).T
    assert np.abs(acc).max(initial=0) < 2**31
    s = (np.asarray(a_scale, _F32)[:, None] * np.asarray(w_scale, _F32)[None, :]).astype(_F32)
    v = (acc.astype(np.int32).astype(_F32) * s).astype(_F32)
    return (_init(qa.shape[0], qw.shape[0], bias, c) + v).astype(_F32)


# ---------------------------------------------------------------------------------------------
# bf16 inference of the cells: the rounding points of the kernels' precision="bfloat16".
#
# Rounded to bf16: x, w_ih and w_hh (once), and the operand of every recurrent product -- the
# fp32 state h entering the step (and, in the reset-before GRU, the fp32 product r∘h). Everything
# else is exact here (float64) and fp32 in the kernels: the products' accumulation, biases, gate
# math, the cell state c, peepholes, the LSTM projection m w_hrᵀ (fp32 weights and operand) and
# the returned y, h_n, c_n. The kernels equal this up to fp32 accumulation and activation error,
# except where that error moves an operand across a bf16 rounding boundary (rare: the operand
# then differs by one bf16 step). ``teacher_y`` (the kernel's own y) replaces this emulation's
# state entering each step by the kernel's -- for tests, which then compare each step without
# the chaotic divergence of two recurrences; h0 starts both.
#
# Error of this contract against the exact (float64) forward, measured with T=100, N=8,
# C=H=64 and PyTorch's uniform(±1/√H) initialisation (tests/test_bf16_cells.py checks < 1e-2):
#   max |y_bf16 - y| / max |y|  (rms |y_bf16 - y|)
#   LSTM 4.3e-3 (3.4e-4); + peepholes 4.1e-3 (3.4e-4); + projection P=5 2.8e-3 (1.9e-4);
#   GRU reset_after 4.1e-3 (6.8e-4), reset_before 4.1e-3 (6.9e-4);
#   RNN tanh 6.6e-3 (1.2e-3), relu 2.3e-3 (1.1e-3).
# Over seeds 0-9 (the kernels' outputs, avx2 tier, which equals this up to fp32 accumulation
# error) the largest are LSTM 5.4e-3, GRU 5.3e-3, RNN tanh 7.3e-3, relu 2.7e-3; with cell_clip
# (its clipped outputs are smaller, so the relative error is larger) 0.49-0.71e-2 at 0.6 and
# 0.92-1.43e-2 at 0.25.

def _bf16_64(a):
    return bf16_round(np.asarray(a, dtype=_F32)).astype(np.float64)


def _operand(h):
    """The recurrent product's operand: the fp32 state rounded to bf16."""
    return _bf16_64(np.asarray(h, dtype=np.float64).astype(_F32))


def _emulate(kind, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, teacher_y, step,
             precision="bfloat16"):
    from . import reference as ref
    x = np.asarray(x)
    if x.dtype != _F32:
        raise ValueError(f"{precision} inference takes float32 inputs, got x of dtype {x.dtype}")
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    p = ref._prepare(x.astype(np.float64), np.asarray(w_ih, np.float64),
                     np.asarray(w_hh, np.float64), b_ih, b_hh, h0, G, lengths, reverse,
                     P=step.P)
    T, N, H, R = p["T"], p["N"], p["H"], p["R"]
    if precision == "int8":
        wih, whh = _Q8.of(w_ih), _Q8.of(w_hh)
        step.mm = _s8_mm
    else:
        wih, whh = _bf16_64(w_ih), _bf16_64(w_hh)
    rows = np.arange(N)
    y = np.zeros((T, N, R))
    h = p["h0"].copy()
    c = np.zeros((N, H)) if c0 is None else np.asarray(c0, np.float64).copy()
    for s in range(T):
        act = p["active"][s]
        h_in = h
        if teacher_y is not None and s > 0:
            h_in = h.copy()
            prev = p["tidx"][s - 1]
            h_in[act] = np.asarray(teacher_y, np.float64)[prev[act], rows[act]]
        gx = step.mm(x[p["tidx"][s], rows], wih)
        h_new, c_new = step(gx, h_in, c, whh, p["b_ih"], p["b_hh"], H)
        h = np.where(act[:, None], h_new, h_in if teacher_y is not None else h)
        if c_new is not None:
            c = np.where(act[:, None], c_new, c)
        y[p["tidx"][s][act], rows[act]] = h[act]
    return y, h, c


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def _bf16_mm(a, w):
    """The bf16 product: the fp32 rows a rounded to bf16, times the rounded weights w (float64)."""
    return _operand(a) @ w.T


class _Q8:
    """Weights quantised per output row (the contract): q int8 [n, K], s float32 [n]. Slicing
    rows slices both (per-row scales: a block of rows quantises alone the same way)."""

    def __init__(self, q, s):
        self.q, self.s = q, s

    @classmethod
    def of(cls, w):
        return cls(*quantize_rows(np.asarray(w, dtype=_F32)))

    def __getitem__(self, rows):
        return _Q8(self.q[rows], self.s[rows])


def _s8_mm(a, w):
    """The int8 product: the fp32 rows a quantised per row (dynamic), times the s8 weights w,
    dequantised from zero in fp32 (gemm_s8_emulated: bit for bit the kernels' product)."""
    q, sa = quantize_rows(np.asarray(a, np.float64).astype(_F32))
    return gemm_s8_emulated(q, sa, w.q, w.s).astype(np.float64)


class _LstmStep:
    mm = staticmethod(_bf16_mm)

    def __init__(self, w_peep, w_hr, cell_clip=None):
        from . import reference as ref
        self.clip = ref._cell_clip(cell_clip)
        self.pp = None if w_peep is None else np.asarray(w_peep, np.float64)
        self.w_hr = None if w_hr is None else np.asarray(w_hr, np.float64)
        self.P = 0 if w_hr is None else self.w_hr.shape[0]

    def __call__(self, gx, h, c, whh, b_ih, b_hh, H):
        a = gx + self.mm(h, whh) + b_ih + b_hh
        p_i, p_f, p_o = (self.pp if self.pp is not None else np.zeros((3, H)))
        i = _sig(a[:, :H] + p_i * c)
        f = _sig(a[:, H:2 * H] + p_f * c)
        g = np.tanh(a[:, 2 * H:3 * H])
        c_new = f * c + i * g
        if self.clip > 0:  # cell_clip, as in reference.lstm_forward (fp32 state, unchanged)
            c_new = np.clip(c_new, -self.clip, self.clip)
        o = _sig(a[:, 3 * H:] + p_o * c_new)
        m = o * np.tanh(c_new)
        return (m if self.w_hr is None else m @ self.w_hr.T), c_new


class _GruStep:
    P = 0
    mm = staticmethod(_bf16_mm)

    def __init__(self, variant):
        self.variant = variant

    def __call__(self, gx, h, c, whh, b_ih, b_hh, H):
        gi = gx + b_ih
        if self.variant == "reset_after":
            gh = self.mm(h, whh) + b_hh
            r = _sig(gi[:, :H] + gh[:, :H])
            z = _sig(gi[:, H:2 * H] + gh[:, H:2 * H])
            n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        else:
            gh = self.mm(h, whh[:2 * H]) + b_hh[:2 * H]
            r = _sig(gi[:, :H] + gh[:, :H])
            z = _sig(gi[:, H:2 * H] + gh[:, H:])
            rh = (r.astype(_F32) * np.asarray(h, np.float64).astype(_F32))  # fp32 r∘h
            n = np.tanh(gi[:, 2 * H:] + self.mm(rh, whh[2 * H:]) + b_hh[2 * H:])
        return (1 - z) * n + z * h, None


class _RnnStep:
    P = 0
    mm = staticmethod(_bf16_mm)

    def __init__(self, nonlinearity):
        self.relu = nonlinearity == "relu"

    def __call__(self, gx, h, c, whh, b_ih, b_hh, H):
        a = gx + self.mm(h, whh) + b_ih + b_hh
        return (np.maximum(a, 0) if self.relu else np.tanh(a)), None


def lstm_forward_bf16(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, w_peep=None,
                      w_hr=None, lengths=None, reverse=False, teacher_y=None, cell_clip=None):
    """The LSTM forward of precision="bfloat16" (see the rounding points above): (y, h_n, c_n)
    in float64. x and the parameters (cell_clip included) as in ``reference.lstm_forward``
    (float32)."""
    return _emulate("lstm", x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, teacher_y,
                    _LstmStep(w_peep, w_hr, cell_clip))


def gru_forward_bf16(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, variant="reset_after",
                     lengths=None, reverse=False, teacher_y=None):
    """The GRU forward of precision="bfloat16": (y, h_n) in float64."""
    y, h, _ = _emulate("gru", x, w_ih, w_hh, b_ih, b_hh, h0, None, lengths, reverse, teacher_y,
                       _GruStep(variant))
    return y, h


def rnn_forward_bf16(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, nonlinearity="tanh",
                     lengths=None, reverse=False, teacher_y=None):
    """The Elman RNN forward of precision="bfloat16": (y, h_n) in float64."""
    y, h, _ = _emulate("rnn", x, w_ih, w_hh, b_ih, b_hh, h0, None, lengths, reverse, teacher_y,
                       _RnnStep(nonlinearity))
    return y, h


# ---------------------------------------------------------------------------------------------
# int8 inference of the cells: the quantisation points of the kernels' precision="int8".
#
# Quantised (the contract's symmetric per-row scheme, quantize_rows): w_ih and w_hh once, per
# output row (the layer's freeze / the call's packing); each row of x, dynamically; each row of
# the fp32 state h entering a recurrent product, dynamically (and in the reset-before GRU each
# row of the fp32 product r∘h). The activation scheme is dynamic per row rather than a fixed
# scale for h in (-1, 1): the LSTM projection's h, the relu RNN's h and a caller's h0 are not
# bounded by 1, and a row's own amax resolves small states finer; its cost is one max pass over
# [N, R] per step. Each product is s32 exact and dequantised from zero in fp32:
# f32(acc) * f32(s_row * s_weight) (gemm_s8_emulated, bit for bit the kernels' in every tier);
# the rest (biases, gate math, c, peepholes, the fp32 projection, the outputs) as in bfloat16
# above. The kernels equal this up to fp32 gate-math error (float64 here), except where that
# error changes a row's amax or moves an operand across a rounding boundary of the quantiser
# (the operand then moves by one quantum); ``teacher_y`` as above.
#
# Error of this contract against the exact (float64) forward, measured with T=100, N=8,
# C=H=64 and PyTorch's uniform(±1/√H) initialisation (tests/test_int8_cells.py checks < 3e-2,
# and < 5e-2 with cell_clip):
#   max |y_int8 - y| / max |y|  (rms |y_int8 - y|)
#   LSTM 1.3e-2 (1.1e-3); + peepholes 1.2e-2 (1.1e-3); + projection P=5 8.6e-3 (6.1e-4);
#   + peepholes, P=3 9.8e-3 (5.8e-4); + peepholes, cell_clip 0.25 3.5e-2 (8.7e-4);
#   GRU reset_after 1.3e-2 (2.2e-3), reset_before 1.3e-2 (2.2e-3);
#   RNN tanh 2.2e-2 (3.9e-3), relu 7.5e-3 (3.6e-3).
# About 3x bf16's error (8-bit vs 8-bit-significand operands, but a row's quantum is amax/127).

def lstm_forward_int8(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, w_peep=None,
                      w_hr=None, lengths=None, reverse=False, teacher_y=None, cell_clip=None):
    """The LSTM forward of precision="int8" (see the quantisation points above): (y, h_n, c_n)
    in float64. Arguments as in :func:`lstm_forward_bf16`."""
    return _emulate("lstm", x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, teacher_y,
                    _LstmStep(w_peep, w_hr, cell_clip), "int8")


def gru_forward_int8(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, variant="reset_after",
                     lengths=None, reverse=False, teacher_y=None):
    """The GRU forward of precision="int8": (y, h_n) in float64."""
    y, h, _ = _emulate("gru", x, w_ih, w_hh, b_ih, b_hh, h0, None, lengths, reverse, teacher_y,
                       _GruStep(variant), "int8")
    return y, h


def rnn_forward_int8(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, nonlinearity="tanh",
                     lengths=None, reverse=False, teacher_y=None):
    """The Elman RNN forward of precision="int8": (y, h_n) in float64."""
    y, h, _ = _emulate("rnn", x, w_ih, w_hh, b_ih, b_hh, h0, None, lengths, reverse, teacher_y,
                       _RnnStep(nonlinearity), "int8")
    return y, h


# ---------------------------------------------------------------------------------------------
# bf16 TRAINING of the cells (issue 17): precision="bfloat16" with training=True and the
# backward of that forward. THE CONTRACT (the kernels' lowp/bf16_backward.h says the same):
#
# Forward: the inference rounding points above (bf16 x, w_ih, w_hh once, the state h entering
#   each recurrent product, the reset-before GRU's fp32 r∘h), fp32 accumulation, everything else
#   fp32; the cache keeps the fp32 activations.
# Backward: the gradient of the forward with each rounding taken as the identity (straight-
#   through; the parameters and their gradients stay fp32 "master" values), with its large
#   products in bf16 too. Rounded to bf16 are the operands of those products:
#     the pre-activation gate gradients dA [N, G*H] of each step (fp32, from fp32 gate math,
#     fp32 cell-state gradient) -- once, the same bf16 values feed every product below;
#     the weights w_ih, w_hh (as in the forward);
#     the forward's operands x, h entering each step, and the reset-before GRU's r∘h.
#   dh_prev = (fp32 direct terms) + bf16(dA) bf16(w_hh)      per step, fp32 accumulation;
#             the reset-before GRU: d(r∘h) = bf16(dA_n) bf16(w_hn), then fp32 pointwise, and
#             dh_prev += bf16(dA_rz) bf16(w_hh[:2H]);
#   dx_t    = bf16(dA_x) bf16(w_ih);
#   dw_ih  += Σ_(t,n) bf16(dA_x)ᵀ bf16(x)      and   dw_hh += Σ_(s,n) bf16(dA_h)ᵀ bf16(h_prev)
#             (reset-before n block: bf16(dA_n)ᵀ bf16(r∘h)): fp32 accumulation over all steps
#             and rows, starting from the gradient's old value (gradients accumulate);
#   biases (column sums of dA), peepholes, dc and the LSTM projection (dm = dh w_hr,
#   dw_hr += dhᵀ m): fp32, unrounded, exactly as in the fp32 kernels.
# dA_x and dA_h are the gate gradients of the input and recurrent products (they differ only in
# the reset-after GRU's n block: dA_n and dA_n∘r).
#
# Here every non-rounded quantity is float64; the kernels compute them in fp32 (so they differ by
# fp32 accumulation and activation error, and, rarely, by one bf16 step where that error moves an
# operand across a rounding boundary). With the rounding switched off (_rd = identity) these
# functions are reference.*_forward / *_backward (tests check it to float64 rounding); at T = 1
# (no state rounded after the start) the gradients of the parameters that are never rounded
# (biases, peepholes, c0, w_hr) are the exact gradients of the emulated forward (tests check them
# by finite differences).
#
# Error against the float64 reference, measured with T=100, N=8, C=H=64, PyTorch's
# uniform(±1/√H) init, dy ~ N(0, 1): the worst over every gradient of max |g_bf16 - g| / max |g|
# (and the smallest cosine similarity of a gradient with its fp64 value):
#   LSTM 3.3e-3 (1 - 5.9e-6); + peepholes 4.1e-3 (1 - 5.5e-6); + projection P=5 3.9e-3
#   (1 - 6.6e-6); + peepholes, P=3, cell_clip 0.6 3.5e-2 (1 - 6.4e-5); GRU reset_after 3.9e-3
#   (1 - 5.6e-6), reset_before 3.2e-3 (1 - 5.7e-6); RNN tanh 3.3e-3 (1 - 7.5e-6), relu 0.19
#   (1 - 7.2e-4). A derivative with a jump (cell_clip's bound, relu at 0) lets a rounded
#   pre-activation cross it, which changes single elements by more; tests/test_bf16_training.py
#   checks < 1e-2 for the smooth cells and a cosine >= 0.999 for all.

def _rd(a):
    """A product operand: float64 -> fp32 -> bf16 (the contract's rounding), as float64."""
    return bf16_round(np.asarray(a, np.float64).astype(_F32)).astype(np.float64)


def _f32(a):
    return np.asarray(a, np.float64).astype(_F32).astype(np.float64)


def _train_prepare(x, w_ih, w_hh, b_ih, b_hh, h0, G, lengths, reverse, P=0):
    from . import reference as ref
    x = np.asarray(x)
    if x.dtype != _F32:
        raise ValueError(f"bfloat16 training takes float32 inputs, got x of dtype {x.dtype}")
    return ref._prepare(x.astype(np.float64), np.asarray(w_ih, np.float64),
                        np.asarray(w_hh, np.float64), b_ih, b_hh, h0, G, lengths, reverse, P=P)


def _teach(h, s, p, teacher_y, rows):
    """The state entering step s: the emulation's, or (teacher_y) the kernel's y of step s-1."""
    if teacher_y is None or s == 0:
        return h
    h = h.copy()
    act, prev = p["active"][s], p["tidx"][s - 1]
    h[act] = np.asarray(teacher_y, np.float64)[prev[act], rows[act]]
    return h


def lstm_train_bf16(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, w_peep=None,
                    w_hr=None, lengths=None, reverse=False, cell_clip=None, dy=None, dh_n=None,
                    dc_n=None, teacher_y=None):
    """The LSTM forward and backward of precision="bfloat16" training (the contract above):
    returns (y, h_n, c_n, LstmGrads) in float64, with the kernels' gradient conventions
    (gradients of absent optional inputs None; dw_hr only with w_hr)."""
    from . import reference as ref
    from ._types import LstmGrads
    P = 0 if w_hr is None else np.shape(w_hr)[0]
    clip = ref._cell_clip(cell_clip)
    p = _train_prepare(x, w_ih, w_hh, b_ih, b_hh, h0, 4, lengths, reverse, P)
    T, N, C, H, R = p["T"], p["N"], p["C"], p["H"], p["R"]
    rows = np.arange(N)
    xr, wih, whh = _rd(p["x"]), _rd(p["w_ih"]), _rd(p["w_hh"])
    whr = None if w_hr is None else np.asarray(w_hr, np.float64)
    pp = np.zeros((3, H)) if w_peep is None else np.asarray(w_peep, np.float64)
    bias = p["b_ih"] + p["b_hh"]
    y = np.zeros((T, N, R))
    h = p["h0"].copy()
    c = np.zeros((N, H)) if c0 is None else np.asarray(c0, np.float64).copy()
    sv = []
    for s in range(T):
        act = p["active"][s][:, None]
        h_in = _teach(h, s, p, teacher_y, rows)
        hb = _rd(h_in)
        a = xr[p["tidx"][s], rows] @ wih.T + hb @ whh.T + bias
        i = _sig(a[:, :H] + pp[0] * c)
        f = _sig(a[:, H:2 * H] + pp[1] * c)
        g = np.tanh(a[:, 2 * H:3 * H])
        c_new = f * c + i * g
        if clip:
            c_new = np.clip(c_new, -clip, clip)
        o = _sig(a[:, 3 * H:] + pp[2] * c_new)
        m = o * np.tanh(c_new)
        h_new = m if whr is None else m @ whr.T
        sv.append((hb, c, i, f, g, o, c_new, m))
        h = np.where(act, h_new, h_in)
        c = np.where(act, c_new, c)
        ar = p["active"][s]
        y[p["tidx"][s][ar], rows[ar]] = h[ar]
    h_n, c_n = h, c
    dy = np.zeros((T, N, R)) if dy is None else np.asarray(dy, np.float64)
    dh = np.zeros((N, R)) if dh_n is None else np.asarray(dh_n, np.float64).copy()
    dc = np.zeros((N, H)) if dc_n is None else np.asarray(dc_n, np.float64).copy()
    dx = np.zeros((T, N, C))
    dw_ih, dw_hh, db = np.zeros((4 * H, C)), np.zeros((4 * H, R)), np.zeros(4 * H)
    dw_peep, dw_hr = np.zeros((3, H)), (None if whr is None else np.zeros_like(whr))
    for s in reversed(range(T)):
        ar = p["active"][s]
        act = ar[:, None]
        t = p["tidx"][s]
        hb, c_prev, i, f, g, o, cc, m = sv[s]
        dh_new = dh + np.where(act, dy[t, rows], 0)
        if whr is None:
            dm = dh_new
        else:  # the projection is fp32: unrounded
            dw_hr += np.where(act, dh_new, 0).T @ m
            dm = dh_new @ whr
        tc = np.tanh(cc)
        do = dm * tc
        dcn = dc + dm * o * (1 - tc * tc)
        da_o = do * o * (1 - o)
        dcn = dcn + da_o * pp[2]
        if clip:
            dcn = np.where(np.abs(cc) < clip, dcn, 0)
        da_i = dcn * g * i * (1 - i)
        da_f = dcn * c_prev * f * (1 - f)
        da_g = dcn * i * (1 - g * g)
        dc_prev = dcn * f + da_i * pp[0] + da_f * pp[1]
        da = np.where(act, np.concatenate([da_i, da_f, da_g, da_o], axis=1), 0)
        dw_peep[0] += np.sum(np.where(act, da_i * c_prev, 0), axis=0)
        dw_peep[1] += np.sum(np.where(act, da_f * c_prev, 0), axis=0)
        dw_peep[2] += np.sum(np.where(act, da_o * cc, 0), axis=0)
        db += da.sum(axis=0)
        dab = _rd(da)
        dw_ih += dab.T @ xr[t, rows]
        dw_hh += dab.T @ hb
        dxt = dab @ wih
        dx[t[ar], rows[ar]] = dxt[ar]
        dh = np.where(act, dab @ whh, dh)
        dc = np.where(act, dc_prev, dc)
    has = p["has"]
    grads = LstmGrads(dx, dh if has["h0"] else None, dc if c0 is not None else None, dw_ih,
                      dw_hh, db if has["b_ih"] else None, db.copy() if has["b_hh"] else None,
                      None if w_peep is None else dw_peep, dw_hr)
    return y, h_n, c_n, grads


def gru_train_bf16(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, variant="reset_after",
                   lengths=None, reverse=False, dy=None, dh_n=None, teacher_y=None):
    """The GRU forward and backward of precision="bfloat16" training: (y, h_n, GruGrads)."""
    from ._types import GruGrads
    p = _train_prepare(x, w_ih, w_hh, b_ih, b_hh, h0, 3, lengths, reverse)
    T, N, C, H = p["T"], p["N"], p["C"], p["H"]
    after = variant == "reset_after"
    rows = np.arange(N)
    xr, wih, whh = _rd(p["x"]), _rd(p["w_ih"]), _rd(p["w_hh"])
    b_ih_, b_hh_ = p["b_ih"], p["b_hh"]
    y = np.zeros((T, N, H))
    h = p["h0"].copy()
    sv = []
    for s in range(T):
        act = p["active"][s][:, None]
        h_in = _teach(h, s, p, teacher_y, rows)
        hb = _rd(h_in)
        gi = xr[p["tidx"][s], rows] @ wih.T + b_ih_
        if after:
            gh = hb @ whh.T + b_hh_
            r = _sig(gi[:, :H] + gh[:, :H])
            z = _sig(gi[:, H:2 * H] + gh[:, H:2 * H])
            hn = gh[:, 2 * H:]
            n = np.tanh(gi[:, 2 * H:] + r * hn)
            q = None
        else:
            gh = hb @ whh[:2 * H].T + b_hh_[:2 * H]
            r = _sig(gi[:, :H] + gh[:, :H])
            z = _sig(gi[:, H:2 * H] + gh[:, H:])
            q = _rd(_f32(r) * _f32(h_in))  # the fp32 r∘h, rounded as the product's operand
            hn = None
            n = np.tanh(gi[:, 2 * H:] + q @ whh[2 * H:].T + b_hh_[2 * H:])
        h_new = (1 - z) * n + z * h_in
        sv.append((h_in, hb, r, z, n, hn, q))
        h = np.where(act, h_new, h_in)
        ar = p["active"][s]
        y[p["tidx"][s][ar], rows[ar]] = h[ar]
    h_n = h
    dy = np.zeros((T, N, H)) if dy is None else np.asarray(dy, np.float64)
    dh = np.zeros((N, H)) if dh_n is None else np.asarray(dh_n, np.float64).copy()
    dx = np.zeros((T, N, C))
    dw_ih, dw_hh = np.zeros((3 * H, C)), np.zeros((3 * H, H))
    db_ih, db_hh = np.zeros(3 * H), np.zeros(3 * H)
    for s in reversed(range(T)):
        ar = p["active"][s]
        act = ar[:, None]
        t = p["tidx"][s]
        h_prev, hb, r, z, n, hn, q = sv[s]
        dh_new = dh + np.where(act, dy[t, rows], 0)
        dn = dh_new * (1 - z)
        dz = dh_new * (h_prev - n)
        dh_prev = dh_new * z
        da_n = dn * (1 - n * n)
        if after:
            dr = da_n * hn
            dhn = da_n * r
        else:
            dhn = da_n
            drh = _rd(np.where(act, da_n, 0)) @ whh[2 * H:]
            dr = drh * h_prev
            dh_prev = dh_prev + drh * r
        da_r = dr * r * (1 - r)
        da_z = dz * z * (1 - z)
        dgi = np.where(act, np.concatenate([da_r, da_z, da_n], axis=1), 0)
        dgh = np.where(act, np.concatenate([da_r, da_z, dhn], axis=1), 0)
        db_ih += dgi.sum(axis=0)
        db_hh += dgh.sum(axis=0)
        dgib, dghb = _rd(dgi), _rd(dgh)
        dw_ih += dgib.T @ xr[t, rows]
        if after:
            dw_hh += dghb.T @ hb
            dh_prev = dh_prev + dghb @ whh
        else:
            dw_hh[:2 * H] += dghb[:, :2 * H].T @ hb
            dw_hh[2 * H:] += dghb[:, 2 * H:].T @ q
            dh_prev = dh_prev + dghb[:, :2 * H] @ whh[:2 * H]
        dxt = dgib @ wih
        dx[t[ar], rows[ar]] = dxt[ar]
        dh = np.where(act, dh_prev, dh)
    has = p["has"]
    grads = GruGrads(dx, dh if has["h0"] else None, dw_ih, dw_hh,
                     db_ih if has["b_ih"] else None, db_hh if has["b_hh"] else None)
    return y, h_n, grads


def rnn_train_bf16(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, nonlinearity="tanh",
                   lengths=None, reverse=False, dy=None, dh_n=None, teacher_y=None):
    """The Elman RNN forward and backward of precision="bfloat16" training: (y, h_n, RnnGrads)."""
    from ._types import RnnGrads
    p = _train_prepare(x, w_ih, w_hh, b_ih, b_hh, h0, 1, lengths, reverse)
    T, N, C, H = p["T"], p["N"], p["C"], p["H"]
    rows = np.arange(N)
    relu = nonlinearity == "relu"
    xr, wih, whh = _rd(p["x"]), _rd(p["w_ih"]), _rd(p["w_hh"])
    bias = p["b_ih"] + p["b_hh"]
    y = np.zeros((T, N, H))
    h = p["h0"].copy()
    sv = []
    for s in range(T):
        act = p["active"][s][:, None]
        h_in = _teach(h, s, p, teacher_y, rows)
        hb = _rd(h_in)
        a = xr[p["tidx"][s], rows] @ wih.T + hb @ whh.T + bias
        h_new = np.maximum(a, 0) if relu else np.tanh(a)
        sv.append((hb, a, h_new))
        h = np.where(act, h_new, h_in)
        ar = p["active"][s]
        y[p["tidx"][s][ar], rows[ar]] = h[ar]
    h_n = h
    dy = np.zeros((T, N, H)) if dy is None else np.asarray(dy, np.float64)
    dh = np.zeros((N, H)) if dh_n is None else np.asarray(dh_n, np.float64).copy()
    dx = np.zeros((T, N, C))
    dw_ih, dw_hh, db = np.zeros((H, C)), np.zeros((H, H)), np.zeros(H)
    for s in reversed(range(T)):
        ar = p["active"][s]
        act = ar[:, None]
        t = p["tidx"][s]
        hb, a, h_new = sv[s]
        dh_new = dh + np.where(act, dy[t, rows], 0)
        dphi = (a > 0).astype(np.float64) if relu else 1 - h_new * h_new
        da = np.where(act, dh_new * dphi, 0)
        db += da.sum(axis=0)
        dab = _rd(da)
        dw_ih += dab.T @ xr[t, rows]
        dw_hh += dab.T @ hb
        dxt = dab @ wih
        dx[t[ar], rows[ar]] = dxt[ar]
        dh = np.where(act, dab @ whh, dh)
    has = p["has"]
    grads = RnnGrads(dx, dh if has["h0"] else None, dw_ih, dw_hh,
                     db if has["b_ih"] else None, db.copy() if has["b_hh"] else None)
    return y, h_n, grads
