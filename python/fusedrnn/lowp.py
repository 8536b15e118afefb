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
"""
from __future__ import annotations

import numbers

import numpy as np

from . import _core
from .functional import _MAX_THREADS

__all__ = ["tiers", "active_tier", "TIERS", "PackedBF16", "PackedInt8", "to_bf16",
           "quantize_rows"]

TIERS = ("amx", "avx512_bf16", "avx512", "avx2", "baseline")


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
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) \
            or not 0 <= n <= _MAX_THREADS:
        raise ValueError(f"num_threads must be an integer in [0, {_MAX_THREADS}] (0: the "
                         f"default), got {n!r}")
    return int(n)


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


def to_bf16(x, tier=None) -> np.ndarray:
    """bf16 bit patterns (uint16 [m, K]) of float32 x [m, K] (C order, never cast), rounded by
    the C++ tier."""
    x = _matrix(x, "x", finite=False)
    return _core.lowp_to_bf16(x, _tier(tier))[:, :x.shape[1]]


def quantize_rows(x, tier=None):
    """(q int8 [m, K], scale float32 [m]): the contract's per-row s8 quantisation by the C++ tier
    of finite float32 x [m, K] (C order, never cast)."""
    x = _matrix(x, "x")
    q, s = _core.lowp_quantize_s8(x, _tier(tier))
    return q[:, :x.shape[1]], s


class PackedBF16:
    """Weights w [n, K] (float32, PyTorch's [out, in]) rounded to bf16 and packed once;
    ``matmul(x)`` computes ``bias + x wᵀ`` with x rounded to bf16 and fp32 accumulation."""

    def __init__(self, w):
        w = _matrix(w, "w")
        self.n, self.K = w.shape
        self.data = _core.lowp_pack_bf16(w)
        self.data.flags.writeable = False

    def matmul(self, x, bias=None, out=None, accumulate=False, tier=None, num_threads=0):
        """out [m, n] = (out if accumulate else bias or 0) + bf16(x) bf16(w)ᵀ."""
        x = _matrix(x, "x", self.K)
        tier = _tier(tier)
        a = _core.lowp_to_bf16(x, tier)
        return self.matmul_bf16(a, bias, out, accumulate, tier, num_threads)

    def matmul_bf16(self, a, bias=None, out=None, accumulate=False, tier=None, num_threads=0):
        """The product from x already converted: a = uint16 [m, >= K rounded up to 32] with
        zeros past K (as ``_core.lowp_to_bf16`` returns it)."""
        accumulate, num_threads = _accumulate(accumulate), _num_threads(num_threads)
        if accumulate and out is None:
            raise ValueError("accumulate=True needs out")
        if not isinstance(a, np.ndarray) or a.dtype != np.uint16 or a.ndim != 2:
            raise TypeError("a must be a 2-D uint16 numpy array of bf16 bit patterns")
        out = _out(out, a.shape[0], self.n)
        _core.lowp_gemm_bf16(a, self.K, self.data, self.n, _bias(bias, self.n), out,
                             accumulate, _tier(tier), num_threads)
        return out


class PackedInt8:
    """Weights w [n, K] quantised to s8 per output row (scale = max |w_j| / 127) and packed
    once; ``matmul(x)`` quantises each row of x dynamically and computes
    ``bias + f32(qx qwᵀ) * (sx_i * sw_j)``."""

    def __init__(self, w):
        w = _matrix(w, "w")
        self.n, self.K = w.shape
        self.data, self.scales, self.colsum = _core.lowp_pack_s8(w)
        for arr in (self.data, self.scales, self.colsum):
            arr.flags.writeable = False

    def matmul(self, x, bias=None, out=None, accumulate=False, tier=None, num_threads=0):
        x = _matrix(x, "x", self.K)
        tier = _tier(tier)
        q, s = _core.lowp_quantize_s8(x, tier)
        return self.matmul_s8(q, s, bias, out, accumulate, tier, num_threads)

    def matmul_s8(self, q, scale, bias=None, out=None, accumulate=False, tier=None,
                  num_threads=0):
        """The product from x already quantised: q int8 [m, >= K rounded up to 64] with zeros
        past K, scale float32 [m]."""
        accumulate, num_threads = _accumulate(accumulate), _num_threads(num_threads)
        if accumulate and out is None:
            raise ValueError("accumulate=True needs out")
        if not isinstance(q, np.ndarray) or q.dtype != np.int8 or q.ndim != 2:
            raise TypeError("q must be a 2-D int8 numpy array (quantize_rows' first result)")
        if not isinstance(scale, np.ndarray) or scale.dtype != np.float32 \
                or scale.shape != (q.shape[0],) or not scale.flags.c_contiguous:
            raise TypeError(f"scale must be a C-contiguous float32 numpy array of shape "
                            f"[{q.shape[0]}] (quantize_rows' second result)")
        out = _out(out, q.shape[0], self.n)
        _core.lowp_gemm_s8(q, scale, self.K, self.data, self.scales, self.colsum, self.n,
                           _bias(bias, self.n), out, accumulate, _tier(tier), num_threads)
        return out
