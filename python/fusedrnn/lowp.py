"""Low-precision GEMM building blocks (issue 16): bf16 x bf16 -> fp32 and s8 x s8 -> s32
dequantised to fp32, with the weights packed once in the tile layout, in instruction-set tiers:

    amx          Intel AMX tiles (tdpbf16ps / tdpbssd)
    avx512_bf16  AVX512_BF16 + AVX512_VNNI (vdpbf16ps / vpdpbusd): AMD Zen 4/5, Intel without AMX
    avx512, avx2, baseline   software (bf16 widened exactly to fp32; s8 to s32)

``tiers()`` says which run here; ``active_tier()`` is the one used by default (the best one,
narrowed by ``FUSEDRNN_ISA=amx|avx512_bf16|avx512|avx2|baseline``). Every function takes
``tier=`` to force one (tests, benchmarks). The numeric contract -- rounding points, summation
order, quantisation -- is in ``fusedrnn.reference_lowp`` (re-exported by
``fusedrnn.reference``), whose ``*_emulated`` functions compute it in NumPy.

    w = np.random.randn(1024, 256).astype(np.float32)        # [n, K], PyTorch's [out, in]
    pw = PackedBF16(w)                                        # rounded to bf16 and packed once
    y = pw.matmul(x, bias=b)                                  # x [m, K] float32 -> [m, n]
    q = PackedInt8(w); y8 = q.matmul(x, bias=b)               # per-row scales, dynamic rows of x

The products can also be taken from operands converted once: ``to_bf16(x, padded=True)`` and
``quantize_rows(x, padded=True)`` return them in the width the kernels read (K zero-padded to a
multiple of 32 / 64), which ``PackedBF16.matmul_bf16`` / ``PackedInt8.matmul_s8`` take as they are.

Threads: ``num_threads=0`` (default) runs on the library's count (``fusedrnn.set_num_threads``,
capped while other processes keep the CPUs busy, one in a child forked after a multi-threaded
kernel call), like every other kernel call; an explicit count is used as given.

int8 sums are exact in s32, which bounds K: ``INT8_MAX_K`` = 133,144 (127 * 127 * K must stay below
2^31); PackedInt8 refuses a wider w (PackedBF16 accumulates in fp32 and has no such bound).
"""
from __future__ import annotations

import numbers

import numpy as np

from . import _core
from . import functional as _functional
from .functional import _MAX_THREADS

__all__ = ["tiers", "active_tier", "TIERS", "PackedBF16", "PackedInt8", "to_bf16",
           "quantize_rows", "INT8_MAX_K"]

TIERS = ("amx", "avx512_bf16", "avx512", "avx2", "baseline")

# The s8 products sum K terms of at most 127 * 127 in an s32 accumulator (every tier: the
# software tiers and AMX's tdpbssd directly; the VNNI tier as (q + 128) u8 x s8 minus
# 128 * colsum, whose wrapping intermediate sums still give the true sum whenever it fits in
# s32). The sum is exact -- and the result right -- only while 127 * 127 * K <= 2^31 - 1, i.e.
# K <= 133,144; from K = 133,145 on a row of full-scale values wraps around (K = 140,000 of ones
# gave -126,288.5). The C++ products and int8 layer calls refuse wider K (lowp::kMaxS8Depth,
# read here); PackedInt8, frozen(precision="int8") and the int8 layers refuse it before any work,
# naming the argument.
INT8_MAX_K = int(_core.int8_max_depth)
_BF16_KSTEP, _S8_KSTEP = 32, 64   # the kernels' K padding (lowp.h: kBf16KStep, kS8KStep)


def _kpad(K, step):
    return -(-K // step) * step


def check_int8_depth(fn, what, K):
    """ValueError naming ``what`` (and ``fn``) when an int8 product would sum K > INT8_MAX_K
    terms: its s32 accumulator would wrap around and the result be silently wrong."""
    if K > INT8_MAX_K:
        raise ValueError(f"{fn}: {what} = {K} is too large for int8: its products sum {K} terms "
                         f"of s8 x s8 (up to 127 * 127 each) in s32, exact only while "
                         f"127 * 127 * K < 2^31, i.e. K <= {INT8_MAX_K} (use bfloat16, whose "
                         f"sums are fp32)")


def tiers() -> dict:
    """{tier name: whether it runs here}, widest first."""
    return dict(_core.lowp_tiers())


def active_tier() -> str:
    """The tier used when none is named."""
    return _core.lowp_active_tier()


def _tier(tier):
    if tier is None:
        return None
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}; got {tier!r}")
    if not tiers()[tier]:
        raise ValueError(f"tier {tier!r} is not available here (available: "
                         f"{', '.join(t for t, ok in tiers().items() if ok)})")
    return tier


def _matrix(x, name, K=None, finite=True):
    """x as given: a C-contiguous float32 numpy array [m, K] (never cast or copied)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a float32 numpy array [m, K], got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, K], got shape {x.shape}")
    if K is not None and x.shape[1] != K:
        raise ValueError(f"{name} must have shape [m, {K}], got {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    if finite and not np.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values")
    return x


def _bias(bias, n):
    if bias is None:
        return None
    if not isinstance(bias, np.ndarray) or bias.dtype != np.float32:
        raise TypeError(f"bias must be a float32 numpy array of shape [{n}], got "
                        f"{bias.dtype if isinstance(bias, np.ndarray) else type(bias).__name__}")
    if bias.shape != (n,):
        raise ValueError(f"bias must have shape [{n}], got {bias.shape}")
    if not bias.flags.c_contiguous:
        raise ValueError("bias must be C-contiguous (use np.ascontiguousarray)")
    return bias


def _num_threads(n):
    """The kernel call's thread count: 0 is the library's (functional._threads: set_num_threads,
    the adaptive cap, one in a forked child; it also records a team start, so that a child forked
    later runs on one thread instead of waiting forever for libgomp's lost pool). An explicit
    count is used as given, except in such a child, where more than one thread would hang: it
    runs on one (results do not depend on the count)."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) \
            or not 0 <= n <= _MAX_THREADS:
        raise ValueError(f"num_threads must be an integer in [0, {_MAX_THREADS}] (0: the "
                         f"library's count, fusedrnn.get_num_threads), got {n!r}")
    n = int(n)
    if n == 0:
        return _functional._threads()
    if n > 1:
        if _functional._forked_child:
            return 1
        _functional._team_started = True
    return n


def _accumulate(a):
    if not isinstance(a, (bool, np.bool_)):
        raise TypeError(f"accumulate must be a bool, got {type(a).__name__}")
    return bool(a)


def _out(out, m, n):
    if out is None:
        return np.empty((m, n), dtype=np.float32)
    if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (m, n)
            and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"out must be a writeable C-contiguous float32 array of shape [{m}, {n}]")
    return out


def _padded_flag(padded):
    if not isinstance(padded, (bool, np.bool_)):
        raise TypeError(f"padded must be a bool, got {type(padded).__name__}")
    return bool(padded)


def to_bf16(x, tier=None, padded=False) -> np.ndarray:
    """bf16 bit patterns (uint16) of float32 x [m, K] (C order, never cast), rounded by the C++
    tier: [m, K] (a view of the kernels' row-padded array), or with ``padded=True`` the padded
    array itself, [m, K rounded up to 32], C-contiguous with zeros past K -- the operand
    ``PackedBF16.matmul_bf16`` takes."""
    x = _matrix(x, "x", finite=False)
    padded = _padded_flag(padded)
    a = _core.lowp_to_bf16(x, _tier(tier))
    return a if padded else a[:, :x.shape[1]]


def quantize_rows(x, tier=None, padded=False):
    """(q int8, scale float32 [m]): the contract's per-row s8 quantisation by the C++ tier of
    finite float32 x [m, K] (C order, never cast). q is [m, K] (a view of the kernels'
    row-padded array), or with ``padded=True`` the padded array itself, [m, K rounded up to 64],
    C-contiguous with zeros past K -- the operand ``PackedInt8.matmul_s8`` takes with scale."""
    x = _matrix(x, "x")
    padded = _padded_flag(padded)
    q, s = _core.lowp_quantize_s8(x, _tier(tier))
    return (q if padded else q[:, :x.shape[1]]), s


def _operand(a, name, dtype, K, step, maker):
    """a as the kernels read it (never copied): a 2-D C-contiguous ``dtype`` array [m, >= Kp]
    (Kp: K rounded up to ``step``) with zeros in columns [K, Kp), as ``maker(x, padded=True)``
    returns it; else an error that says so."""
    Kp = _kpad(K, step)
    want = (f"{name} must be the padded operand {maker}(x, padded=True) returns: a C-contiguous "
            f"{np.dtype(dtype).name} array [m, {Kp}] (K = {K} zero-padded to a multiple of "
            f"{step})")
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != 2:
        got = (f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray)
               else type(a).__name__)
        raise TypeError(f"{want}; got {got}")
    if a.shape[0] == 0 or a.shape[1] < Kp:
        raise ValueError(f"{want}; got shape {a.shape}"
                         + (f" (an unpadded [m, {K}] {maker} result: pass padded=True)"
                            if a.shape[1] == K else ""))
    if not a.flags.c_contiguous:
        raise ValueError(f"{want}; got a non-C-contiguous array (a slice of the padded one, "
                         f"such as {maker}(x) without padded=True, is not)")
    if a[:, K:Kp].any():
        raise ValueError(f"{want}; got non-zero values in columns [{K}, {Kp})")
    return a


class PackedBF16:
    """Weights w [n, K] (float32, PyTorch's [out, in]) rounded to bf16 and packed once;
    ``matmul(x)`` computes ``bias + x wᵀ`` with x rounded to bf16 and fp32 accumulation."""

    def __init__(self, w):
        w = _matrix(w, "w")
        self.n, self.K = w.shape
        self.data = _core.lowp_pack_bf16(w)
        self.data.flags.writeable = False

    def matmul(self, x, bias=None, out=None, accumulate=False, tier=None, num_threads=0):
        """out [m, n] = (out if accumulate else bias or 0) + bf16(x) bf16(w)ᵀ. num_threads=0:
        the library's count (fusedrnn.set_num_threads)."""
        x = _matrix(x, "x", self.K)
        tier = _tier(tier)
        a = _core.lowp_to_bf16(x, tier)
        return self.matmul_bf16(a, bias, out, accumulate, tier, num_threads)

    def matmul_bf16(self, a, bias=None, out=None, accumulate=False, tier=None, num_threads=0):
        """The product from x already converted: a = ``to_bf16(x, padded=True)``, uint16
        [m, >= K rounded up to 32], C-contiguous, zeros past K (read as it is, never copied)."""
        accumulate, num_threads = _accumulate(accumulate), _num_threads(num_threads)
        if accumulate and out is None:
            raise ValueError("accumulate=True needs out")
        a = _operand(a, "a", np.uint16, self.K, _BF16_KSTEP, "to_bf16")
        out = _out(out, a.shape[0], self.n)
        _core.lowp_gemm_bf16(a, self.K, self.data, self.n, _bias(bias, self.n), out,
                             accumulate, _tier(tier), num_threads)
        return out


class PackedInt8:
    """Weights w [n, K] quantised to s8 per output row (scale = max |w_j| / 127) and packed
    once; ``matmul(x)`` quantises each row of x dynamically and computes
    ``bias + f32(qx qwᵀ) * (sx_i * sw_j)``. K must not exceed ``INT8_MAX_K`` (133,144: the s32
    sums would wrap around); a wider w raises ValueError."""

    def __init__(self, w):
        w = _matrix(w, "w")
        check_int8_depth("PackedInt8", "K (w's columns)", w.shape[1])
        self.n, self.K = w.shape
        self.data, self.scales, self.colsum = _core.lowp_pack_s8(w)
        for arr in (self.data, self.scales, self.colsum):
            arr.flags.writeable = False

    def matmul(self, x, bias=None, out=None, accumulate=False, tier=None, num_threads=0):
        """out [m, n] = (out if accumulate else bias or 0) + the s8 product of x's rows
        quantised dynamically. num_threads=0: the library's count (fusedrnn.set_num_threads)."""
        x = _matrix(x, "x", self.K)
        tier = _tier(tier)
        q, s = _core.lowp_quantize_s8(x, tier)
        return self.matmul_s8(q, s, bias, out, accumulate, tier, num_threads)

    def matmul_s8(self, q, scale, bias=None, out=None, accumulate=False, tier=None,
                  num_threads=0):
        """The product from x already quantised: ``q, scale = quantize_rows(x, padded=True)``,
        q int8 [m, >= K rounded up to 64], C-contiguous, zeros past K (read as it is, never
        copied), scale float32 [m]."""
        accumulate, num_threads = _accumulate(accumulate), _num_threads(num_threads)
        if accumulate and out is None:
            raise ValueError("accumulate=True needs out")
        check_int8_depth("PackedInt8.matmul_s8", "K", self.K)
        q = _operand(q, "q", np.int8, self.K, _S8_KSTEP, "quantize_rows")
        if not isinstance(scale, np.ndarray) or scale.dtype != np.float32 \
                or scale.shape != (q.shape[0],) or not scale.flags.c_contiguous:
            raise TypeError(f"scale must be a C-contiguous float32 numpy array of shape "
                            f"[{q.shape[0]}] (quantize_rows' second result)")
        out = _out(out, q.shape[0], self.n)
        _core.lowp_gemm_s8(q, scale, self.K, self.data, self.scales, self.colsum, self.n,
                           _bias(bias, self.n), out, accumulate, _tier(tier), num_threads)
        return out
