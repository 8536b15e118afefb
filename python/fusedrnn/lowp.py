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

import numpy as np

from . import _core

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


def _matrix(x, name, K=None):
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, K], got shape {x.shape}")
    if K is not None and x.shape[1] != K:
        raise ValueError(f"{name} must have shape [m, {K}], got {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values")
    return np.ascontiguousarray(x)


def _bias(bias, n):
    if bias is None:
        return None
    b = np.ascontiguousarray(bias, dtype=np.float32)
    if b.shape != (n,):
        raise ValueError(f"bias must have shape [{n}], got {b.shape}")
    return b


def _out(out, m, n):
    if out is None:
        return np.empty((m, n), dtype=np.float32)
    if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (m, n)
            and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"out must be a writeable C-contiguous float32 array of shape [{m}, {n}]")
    return out


def to_bf16(x, tier=None) -> np.ndarray:
    """bf16 bit patterns (uint16 [m, K]) of float32 x [m, K], rounded by the C++ tier."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D, got shape {x.shape}")
    return _core.lowp_to_bf16(x, _tier(tier))[:, :x.shape[1]]


def quantize_rows(x, tier=None):
    """(q int8 [m, K], scale float32 [m]): the contract's per-row s8 quantisation by the C++ tier."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D, got shape {x.shape}")
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
        if accumulate and out is None:
            raise ValueError("accumulate=True needs out")
        out = _out(out, a.shape[0], self.n)
        _core.lowp_gemm_bf16(a, self.K, self.data, self.n, _bias(bias, self.n), out,
                             bool(accumulate), _tier(tier), int(num_threads))
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
        if accumulate and out is None:
            raise ValueError("accumulate=True needs out")
        out = _out(out, q.shape[0], self.n)
        _core.lowp_gemm_s8(q, np.ascontiguousarray(scale, dtype=np.float32), self.K, self.data,
                           self.scales, self.colsum, self.n, _bias(bias, self.n), out,
                           bool(accumulate), _tier(tier), int(num_threads))
        return out
