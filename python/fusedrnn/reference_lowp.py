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
    even). Weights per output row (once, when packed), activations per row (dynamic) or with a
    fixed inv. acc = qa qwᵀ exactly (s32); C = init + f32(f32(acc) * f32(sa[i] * sw[j])).
    Every tier equals this bit for bit.

Against the fp32 product of the unrounded operands, bf16 rounds each operand with relative
error <= 2^-9 (about 4e-3 per element, ~1e-3 typical after summation); the measured errors per
cell are in the kernels' docstrings.
"""
from __future__ import annotations

import numpy as np

__all__ = ["bf16_bits", "bf16_from_bits", "bf16_round", "gemm_bf16_emulated", "quantize_rows",
           "gemm_s8_emulated", "lstm_forward_bf16", "gru_forward_bf16", "rnn_forward_bf16"]

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
        with np.errstate(divide="ignore"):
            invs = np.where(amax > 0, _F32(127) / amax, _F32(0)).astype(_F32)
        scale = (amax / _F32(127)).astype(_F32)
        return _quantize(x, invs[:, None]), scale
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

def _bf16_64(a):
    return bf16_round(np.asarray(a, dtype=_F32)).astype(np.float64)


def _operand(h):
    """The recurrent product's operand: the fp32 state rounded to bf16."""
    return _bf16_64(np.asarray(h, dtype=np.float64).astype(_F32))


def _emulate(kind, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, teacher_y, step):
    from . import reference as ref
    x = np.asarray(x)
    if x.dtype != _F32:
        raise ValueError(f"bfloat16 inference takes float32 inputs, got x of dtype {x.dtype}")
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    p = ref._prepare(x.astype(np.float64), np.asarray(w_ih, np.float64),
                     np.asarray(w_hh, np.float64), b_ih, b_hh, h0, G, lengths, reverse,
                     P=step.P)
    T, N, H, R = p["T"], p["N"], p["H"], p["R"]
    xr = _bf16_64(x)
    wih = _bf16_64(w_ih)
    whh = _bf16_64(w_hh)
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
        gx = xr[p["tidx"][s], rows] @ wih.T
        h_new, c_new = step(gx, h_in, c, whh, p["b_ih"], p["b_hh"], H)
        h = np.where(act[:, None], h_new, h_in if teacher_y is not None else h)
        if c_new is not None:
            c = np.where(act[:, None], c_new, c)
        y[p["tidx"][s][act], rows[act]] = h[act]
    return y, h, c


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


class _LstmStep:
    def __init__(self, w_peep, w_hr, cell_clip=None):
        from . import reference as ref
        self.clip = ref._cell_clip(cell_clip)
        self.pp = None if w_peep is None else np.asarray(w_peep, np.float64)
        self.w_hr = None if w_hr is None else np.asarray(w_hr, np.float64)
        self.P = 0 if w_hr is None else self.w_hr.shape[0]

    def __call__(self, gx, h, c, whh, b_ih, b_hh, H):
        a = gx + _operand(h) @ whh.T + b_ih + b_hh
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

    def __init__(self, variant):
        self.variant = variant

    def __call__(self, gx, h, c, whh, b_ih, b_hh, H):
        gi = gx + b_ih
        if self.variant == "reset_after":
            gh = _operand(h) @ whh.T + b_hh
            r = _sig(gi[:, :H] + gh[:, :H])
            z = _sig(gi[:, H:2 * H] + gh[:, H:2 * H])
            n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        else:
            gh = _operand(h) @ whh[:2 * H].T + b_hh[:2 * H]
            r = _sig(gi[:, :H] + gh[:, :H])
            z = _sig(gi[:, H:2 * H] + gh[:, H:])
            rh = (r.astype(_F32) * np.asarray(h, np.float64).astype(_F32))  # fp32 r∘h
            n = np.tanh(gi[:, 2 * H:] + _operand(rh) @ whh[2 * H:].T + b_hh[2 * H:])
        return (1 - z) * n + z * h, None


class _RnnStep:
    P = 0

    def __init__(self, nonlinearity):
        self.relu = nonlinearity == "relu"

    def __call__(self, gx, h, c, whh, b_ih, b_hh, H):
        a = gx + _operand(h) @ whh.T + b_ih + b_hh
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
