"""The low-precision GEMM building blocks (fusedrnn.lowp) against the NumPy emulation of their
contract (fusedrnn.reference_lowp), in every instruction-set tier this machine runs, on odd
shapes; the emulation against exact products; FUSEDRNN_ISA forcing each tier."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fusedrnn import lowp
from fusedrnn import reference as ref

AVAILABLE = [t for t, ok in lowp.tiers().items() if ok]
EXACT_TIERS = [t for t in AVAILABLE if t != "amx"]  # sequential fp32 chains: bitwise
U = 2.0 ** -24

SHAPES = [  # m, n, K
    (1, 1, 1), (1, 17, 3), (3, 16, 32), (5, 33, 31), (17, 50, 33), (33, 16, 64),
    (40, 100, 100), (70, 37, 129), (2, 64, 256), (96, 130, 65),
]


def _data(m, n, K, seed, spread=False):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, K)).astype(np.float32)
    w = (rng.standard_normal((n, K)) * 0.3).astype(np.float32)
    if spread:  # magnitudes over 2^-10 .. 2^10: rounding of partial sums matters
        a *= np.exp2(rng.integers(-10, 10, a.shape)).astype(np.float32)
        w *= np.exp2(rng.integers(-10, 10, w.shape)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    c = rng.standard_normal((m, n)).astype(np.float32)
    return a, w, bias, c


def _exact(a, w, init):
    """float64 value of init + bf16(a) bf16(w)ᵀ and the bound's scale |init| + sum |a w|."""
    ar = ref.bf16_round(a).astype(np.float64)
    wr = ref.bf16_round(w).astype(np.float64)
    return init + ar @ wr.T, np.abs(init) + np.abs(ar) @ np.abs(wr).T


# ---------------------------------------------------------------------------------------------
# bf16 rounding

SPECIAL = np.array([0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00800000, 0x3F808000,
                    0x3F818000, 0x3F80FFFF, 0x3F807FFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000,
                    0xFF800000, 0x7F800001, 0xFF800001, 0x7FC00001, 0x7FBFFFFF, 0xFFFFFFFF,
                    0x00018000, 0x477FE000], dtype=np.uint32)
# round to nearest even, NaN quiet with its sign, subnormals to zero of their sign, overflow to inf
SPECIAL_BF16 = [0x0000, 0x8000, 0x0000, 0x8000, 0x0080, 0x3F80,
                0x3F82, 0x3F81, 0x3F80, 0x7F80, 0xFF80, 0x7F80,
                0xFF80, 0x7FC0, 0xFFC0, 0x7FC0, 0x7FFF, 0xFFFF,
                0x0000, 0x4780]


def test_emulated_bf16_rounding_of_special_values():
    got = ref.bf16_bits(SPECIAL.view(np.float32))
    assert [int(v) for v in got] == SPECIAL_BF16


def test_emulated_bf16_rounding_equals_torch_on_normals():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(100000) * np.exp2(rng.integers(-60, 60, 100000))).astype(np.float32)
    ties = (rng.integers(0, 2**15, 1000, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    x = np.concatenate([x, ties, -ties])
    x = x[np.isfinite(x) & (np.abs(x) >= np.finfo(np.float32).tiny)]  # normals only
    assert x.size > 100000
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ref.bf16_bits(x), want)


@pytest.mark.parametrize("tier", AVAILABLE)
def test_bf16_conversion_matches_emulation(tier):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 45)).astype(np.float32) * 100
    x.ravel()[:SPECIAL.size] = SPECIAL.view(np.float32)
    x.ravel()[SPECIAL.size:2 * SPECIAL.size] = rng.integers(0, 2**32, SPECIAL.size,
                                                            dtype=np.uint32).view(np.float32)
    got = lowp.to_bf16(x, tier=tier)
    np.testing.assert_array_equal(got, ref.bf16_bits(x))


# ---------------------------------------------------------------------------------------------
# bf16 products

@pytest.mark.parametrize("init", ["bias", "accumulate", "zero"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("tier", AVAILABLE)
def test_bf16_gemm_matches_emulation(tier, shape, init):
    m, n, K = shape
    for spread in (False, True):
        a, w, bias, c = _data(m, n, K, seed=m * 1000 + n + K, spread=spread)
        pw = lowp.PackedBF16(w)
        out = c.copy() if init == "accumulate" else None
        got = pw.matmul(a, bias=bias if init == "bias" else None, out=out,
                        accumulate=init == "accumulate", tier=tier)
        kw = {"bias": bias} if init == "bias" else {"c": c} if init == "accumulate" else {}
        want = ref.gemm_bf16_emulated(a, w, **kw)
        if tier != "amx":
            np.testing.assert_array_equal(got, want)
        else:
            init_v = (bias[None, :] if init == "bias" else c if init == "accumulate"
                      else np.zeros((m, n))).astype(np.float64)
            exact, scale = _exact(a, w, init_v)
            err = np.abs(got - exact)
            assert (err <= (K + 1) * U * scale).all(), (err / (U * scale)).max()
            # and the emulation obeys the same bound
            assert (np.abs(want - exact) <= (K + 1) * U * scale).all()


@pytest.mark.parametrize("tier", AVAILABLE)
def test_bf16_gemm_bitwise_independent_of_threads(tier):
    a, w, bias, _ = _data(131, 300, 77, seed=5, spread=True)
    pw = lowp.PackedBF16(w)
    one = pw.matmul(a, bias=bias, tier=tier, num_threads=1)
    two = pw.matmul(a, bias=bias, tier=tier, num_threads=2)
    three = pw.matmul(a, bias=bias, tier=tier, num_threads=3)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, three)


def test_exact_tiers_agree_bitwise_and_amx_is_close():
    a, w, bias, _ = _data(64, 1024, 256, seed=7)
    pw = lowp.PackedBF16(w)
    results = {t: pw.matmul(a, bias=bias, tier=t) for t in AVAILABLE}
    base = results["baseline"]
    for t in EXACT_TIERS:
        np.testing.assert_array_equal(results[t], base, err_msg=t)
    if "amx" in results:
        exact, scale = _exact(a, w, bias[None, :].astype(np.float64))
        assert (np.abs(results["amx"] - exact) <= 257 * U * scale).all()


def test_packed_bf16_layout_is_the_documented_one():
    rng = np.random.default_rng(3)
    n, K = 20, 37
    w = rng.standard_normal((n, K)).astype(np.float32)
    data = lowp.PackedBF16(w).data
    kp = 64
    assert data.size == 2 * 16 * kp
    bits = ref.bf16_bits(w)
    for j in range(32):
        for k in range(kp):
            p, jj = divmod(j, 16)
            v = data[((p * kp // 2 + k // 2) * 16 + jj) * 2 + k % 2]
            assert v == (bits[j, k] if j < n and k < K else 0)


def test_emulated_bf16_product_is_within_the_rounding_bound_of_fp32():
    # Each operand rounds with relative error <= 2^-9, so each product with <= 2^-8 + 2^-18;
    # fp32 summation adds (K + 1) 2^-24 of the same scale.
    for m, n, K in [(8, 50, 300), (33, 17, 1000)]:
        a, w, bias, _ = _data(m, n, K, seed=K, spread=True)
        got = ref.gemm_bf16_emulated(a, w, bias=bias)
        exact = bias.astype(np.float64) + a.astype(np.float64) @ w.astype(np.float64).T
        scale = np.abs(bias) + np.abs(a.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
        bound = (2.0 ** -8 + 2.0 ** -18 + (K + 1) * U) * scale
        assert (np.abs(got - exact) <= bound).all()
        # and the bound is not vacuous: rounding does change results at the 1e-3 level
        assert (np.abs(got - exact) / scale).max() > 1e-4


# ---------------------------------------------------------------------------------------------
# int8

@pytest.mark.parametrize("tier", AVAILABLE)
def test_quantize_rows_matches_emulation(tier):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((9, 70)).astype(np.float32) * 3
    x[2] = 0.0                         # amax 0: scale 0, q 0
    x[3, :5] = [1.5, -1.5, 2.5, 0.5, -0.5]  # ties at amax 127/... below
    x[3, 5] = 127.0                    # inv = 1: q = rint(x) with ties to even
    q, s = lowp.quantize_rows(x, tier=tier)
    qe, se = ref.quantize_rows(x)
    np.testing.assert_array_equal(q, qe)
    np.testing.assert_array_equal(s, se)
    assert list(qe[3, :5]) == [2, -2, 2, 0, 0]
    assert se[2] == 0 and not qe[2].any()


@pytest.mark.parametrize("init", ["bias", "accumulate", "zero"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("tier", AVAILABLE)
def test_s8_gemm_matches_emulation_bitwise(tier, shape, init):
    m, n, K = shape
    a, w, bias, c = _data(m, n, K, seed=m + n * 7 + K)
    pq = lowp.PackedInt8(w)
    out = c.copy() if init == "accumulate" else None
    got = pq.matmul(a, bias=bias if init == "bias" else None, out=out,
                    accumulate=init == "accumulate", tier=tier)
    qa, sa = ref.quantize_rows(a)
    qw, sw = ref.quantize_rows(w)
    np.testing.assert_array_equal(pq.scales[:n], sw)
    kw = {"bias": bias} if init == "bias" else {"c": c} if init == "accumulate" else {}
    np.testing.assert_array_equal(got, ref.gemm_s8_emulated(qa, sa, qw, sw, **kw))


@pytest.mark.parametrize("tier", AVAILABLE)
def test_s8_gemm_bitwise_independent_of_threads(tier):
    a, w, bias, _ = _data(131, 300, 200, seed=9)
    pq = lowp.PackedInt8(w)
    one = pq.matmul(a, bias=bias, tier=tier, num_threads=1)
    np.testing.assert_array_equal(one, pq.matmul(a, bias=bias, tier=tier, num_threads=2))


def test_s8_extreme_values_do_not_saturate():
    # +-127 everywhere: every pair and quad sum at its largest (vpmaddubsw-style s16 sums would
    # saturate; the VNNI tier's (q + 128) u8 operand reaches 255).
    K = 1000
    a = np.full((3, K), -1.0, np.float32)
    a[1] = 1.0
    a[2, ::2] = 1.0
    w = np.full((20, K), 1.0, np.float32)
    w[5] = -1.0
    pq = lowp.PackedInt8(w)
    want = ref.gemm_s8_emulated(*ref.quantize_rows(a), *ref.quantize_rows(w))
    for tier in AVAILABLE:
        np.testing.assert_array_equal(pq.matmul(a, tier=tier), want, err_msg=tier)
    assert want[0, 0] == -K and want[2, 0] == 0


def test_int8_error_against_fp32_is_bounded():
    # Per-row symmetric s8: each operand's rounding error is <= scale / 2 per element.
    a, w, bias, _ = _data(16, 64, 256, seed=2)
    got = lowp.PackedInt8(w).matmul(a, bias=bias)
    exact = bias + a.astype(np.float64) @ w.astype(np.float64).T
    sa = np.abs(a).max(1) / 127
    sw = np.abs(w).max(1) / 127
    bound = 0.5 * (sa[:, None] * np.abs(w).sum(1)[None, :] + sw[None, :] * np.abs(a).sum(1)[:, None]
                   + 0.5 * 256 * sa[:, None] * sw[None, :]) + 1e-5 * np.abs(exact)
    assert (np.abs(got - exact) <= bound).all()


# ---------------------------------------------------------------------------------------------
# tier selection and bad input

FORCED = r"""
import json, sys
import numpy as np
from fusedrnn import lowp, reference as ref
rng = np.random.default_rng(0)
a = rng.standard_normal((19, 45)).astype(np.float32)
w = rng.standard_normal((33, 45)).astype(np.float32)
y = lowp.PackedBF16(w).matmul(a)
y8 = lowp.PackedInt8(w).matmul(a)
print(json.dumps({"tier": lowp.active_tier(),
                  "bf16_exact": bool((y == ref.gemm_bf16_emulated(a, w)).all()),
                  "bf16_err": float(np.abs(y - ref.gemm_bf16_emulated(a, w)).max()),
                  "s8_exact": bool((y8 == ref.gemm_s8_emulated(*ref.quantize_rows(a),
                                                               *ref.quantize_rows(w))).all())}))
"""


def _forced(level):
    env = dict(os.environ)
    env.pop("FUSEDRNN_ISA", None)
    if level is not None:
        env["FUSEDRNN_ISA"] = level
    out = subprocess.run([sys.executable, "-c", FORCED], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("level", list(lowp.TIERS))
def test_fusedrnn_isa_forces_each_tier(level):
    best = _forced(None)["tier"]
    got = _forced(level)
    order = list(reversed(lowp.TIERS))
    # The widest available tier at or below the request (never a wider one than asked for).
    want = max((t for t in AVAILABLE if order.index(t) <= order.index(level)),
               key=order.index, default="baseline")
    want = order[min(order.index(want), order.index(best))]
    assert got["tier"] == want
    assert got["s8_exact"]
    if got["tier"] != "amx":
        assert got["bf16_exact"]
    else:
        assert got["bf16_err"] < 1e-4


def test_best_tier_is_the_default():
    assert lowp.active_tier() == AVAILABLE[0] or os.environ.get("FUSEDRNN_ISA")
    assert lowp.tiers()["baseline"]


def test_bad_input_raises_naming_the_argument():
    w = np.ones((4, 8), np.float32)
    pw = lowp.PackedBF16(w)
    with pytest.raises(TypeError, match="x must be float32"):
        pw.matmul(np.ones((2, 8)))
    with pytest.raises(ValueError, match=r"x must have shape \[m, 8\]"):
        pw.matmul(np.ones((2, 7), np.float32))
    with pytest.raises(ValueError, match="x contains non-finite"):
        pw.matmul(np.full((2, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="w contains non-finite"):
        lowp.PackedInt8(np.full((2, 8), np.inf, np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \[4\]"):
        pw.matmul(np.ones((2, 8), np.float32), bias=np.ones(5, np.float32))
    with pytest.raises(ValueError, match="tier must be one of"):
        pw.matmul(np.ones((2, 8), np.float32), tier="sse9")
    with pytest.raises(ValueError, match="out must be"):
        pw.matmul(np.ones((2, 8), np.float32), out=np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="accumulate=True needs out"):
        pw.matmul(np.ones((2, 8), np.float32), accumulate=True)
    # never a silent cast or copy; thread counts OpenMP cannot start are refused (100000 had
    # crashed the process)
    x = np.ones((2, 8), np.float32)
    for bias in (np.ones(4), np.ones(4, np.complex64), [1.0] * 4):
        with pytest.raises(TypeError, match="bias must be a float32 numpy array"):
            pw.matmul(x, bias=bias)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        pw.matmul(np.asfortranarray(np.ones((3, 8), np.float32)))
    for fn in (lowp.to_bf16, lowp.quantize_rows):
        with pytest.raises(TypeError, match="x must be float32"):
            fn(np.ones((2, 8)))
        with pytest.raises(TypeError, match="x must be a float32 numpy array"):
            fn([[1.0, 2.0]])
    with pytest.raises(ValueError, match="x contains non-finite"):
        lowp.quantize_rows(np.full((2, 8), np.nan, np.float32))
    for n in (100000, 2**31 - 1, -1, True, 1.5):
        with pytest.raises(ValueError, match=r"num_threads must be an integer in \[0, 4096\]"):
            pw.matmul(x, num_threads=n)
        with pytest.raises(ValueError, match=r"num_threads must be an integer in \[0, 4096\]"):
            lowp.PackedInt8(w).matmul(x, num_threads=n)
    with pytest.raises(TypeError, match="accumulate must be a bool"):
        pw.matmul(x, out=np.zeros((2, 4), np.float32), accumulate="yes")
    q, s8 = lowp.quantize_rows(x)
    with pytest.raises(TypeError, match="scale must be"):
        lowp.PackedInt8(w).matmul_s8(np.zeros((2, 64), np.int8), s8.astype(np.float64))
    missing = [t for t in lowp.TIERS if not lowp.tiers()[t]]
    if missing:
        with pytest.raises(ValueError, match="not available here"):
            pw.matmul(np.ones((2, 8), np.float32), tier=missing[0])


# ---------------------------------------------------------------------------------------------
# operands converted once, threads, the int8 depth bound

@pytest.mark.parametrize("K", [1, 31, 32, 33, 63, 64, 65, 70, 130])
def test_padded_operands_of_the_public_helpers_chain_into_the_products(K):
    # to_bf16 / quantize_rows returned [m, K] slices that matmul_bf16 / matmul_s8 could not take
    # unless K was a multiple of the padding ("a must be C-contiguous", "lda = 70 must be >= 96")
    rng = np.random.default_rng(K)
    w = rng.standard_normal((20, K)).astype(np.float32)
    x = rng.standard_normal((5, K)).astype(np.float32)
    pb, pq = lowp.PackedBF16(w), lowp.PackedInt8(w)
    a = lowp.to_bf16(x, padded=True)
    q, s = lowp.quantize_rows(x, padded=True)
    assert a.shape == (5, -(-K // 32) * 32) and a.flags.c_contiguous and not a[:, K:].any()
    assert q.shape == (5, -(-K // 64) * 64) and q.flags.c_contiguous and not q[:, K:].any()
    np.testing.assert_array_equal(a[:, :K], lowp.to_bf16(x))
    np.testing.assert_array_equal(q[:, :K], lowp.quantize_rows(x)[0])
    for tier in AVAILABLE:
        np.testing.assert_array_equal(pb.matmul_bf16(a, tier=tier), pb.matmul(x, tier=tier))
        np.testing.assert_array_equal(pq.matmul_s8(q, s, tier=tier), pq.matmul(x, tier=tier))
    # the unpadded results are refused with what to pass instead (never copied silently)
    if K % 32:
        with pytest.raises(ValueError, match=r"a must be the padded operand to_bf16\(x, "
                                             r"padded=True\) returns.*pass padded=True"):
            pb.matmul_bf16(np.ascontiguousarray(lowp.to_bf16(x)))
        with pytest.raises(ValueError, match=r"a must be the padded.*pass padded=True"):
            pb.matmul_bf16(lowp.to_bf16(x))
    with pytest.raises(ValueError, match=r"a must be the padded.*non-C-contiguous"):
        pb.matmul_bf16(np.asfortranarray(a))
    if K % 64:
        with pytest.raises(ValueError, match=r"q must be the padded operand quantize_rows\(x, "
                                             r"padded=True\) returns"):
            pq.matmul_s8(lowp.quantize_rows(x)[0], s)
        bad = q.copy()
        bad[:, K] = 1
        with pytest.raises(ValueError, match=rf"non-zero values in columns \[{K}, "):
            pq.matmul_s8(bad, s)
    with pytest.raises(TypeError, match=r"a must be the padded operand.*uint16"):
        pb.matmul_bf16(q, tier=None)
    with pytest.raises(TypeError, match="padded must be a bool"):
        lowp.to_bf16(x, padded=1)


def test_default_num_threads_is_the_librarys(monkeypatch):
    # num_threads=0 went to the kernels as OpenMP's default, ignoring set_num_threads and the
    # adaptive cap and not recording a team start (a fork child then hung: next test)
    import fusedrnn
    from fusedrnn import _core, functional
    seen = []
    for name in ("lowp_gemm_bf16", "lowp_gemm_s8"):
        real = getattr(_core, name)
        monkeypatch.setattr(_core, name, lambda *a, _real=real: (seen.append(a[-1]),
                                                                  _real(*a))[1])
    monkeypatch.setattr(functional, "_team_started", False)
    before, adaptive = fusedrnn.get_num_threads(), fusedrnn.get_adaptive_threads()
    x, w = np.ones((3, 8), np.float32), np.ones((4, 8), np.float32)
    try:
        fusedrnn.set_adaptive_threads(False)
        fusedrnn.set_num_threads(3)
        lowp.PackedBF16(w).matmul(x)
        lowp.PackedInt8(w).matmul(x)
        assert seen == [3, 3] and functional._team_started
        fusedrnn.set_num_threads(1)
        lowp.PackedBF16(w).matmul(x, num_threads=2)   # an explicit count is used as given
        assert seen[-1] == 2
    finally:
        fusedrnn.set_num_threads(before)
        fusedrnn.set_adaptive_threads(adaptive)


FORK = r"""
import os, signal, sys
import numpy as np
import fusedrnn
from fusedrnn import lowp
fusedrnn.set_adaptive_threads(False)
fusedrnn.set_num_threads(2)
rng = np.random.default_rng(0)
w = rng.standard_normal((64, 48)).astype(np.float32)
x = rng.standard_normal((40, 48)).astype(np.float32)
want = lowp.PackedBF16(w).matmul(x)      # the parent's default lowp call, on two threads
pid = os.fork()
if pid == 0:
    signal.alarm(30)
    ok = (lowp.PackedBF16(w).matmul(x) == want).all() and fusedrnn.get_num_threads() == 1
    fusedrnn.lstm_forward(rng.standard_normal((5, 4, 48)).astype(np.float32),
                          w, rng.standard_normal((64, 16)).astype(np.float32), training=False)
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print("signal" if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
"""


def test_a_child_forked_after_a_default_lowp_call_does_not_hang():
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    out = subprocess.run([sys.executable, "-c", FORK], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == "0", out.stdout


def test_int8_depth_is_bounded_by_the_s32_sum():
    # 127 * 127 * K wraps around s32 from K = 133,145 on: K = 140,000 of ones gave -126,288.5
    assert lowp.INT8_MAX_K == 133144
    assert 127 * 127 * lowp.INT8_MAX_K < 2**31 <= 127 * 127 * (lowp.INT8_MAX_K + 1)
    K = lowp.INT8_MAX_K
    w = np.ones((3, K), np.float32)
    w[1] = -1.0
    x = np.ones((2, K), np.float32)
    pq = lowp.PackedInt8(w)
    want = ref.gemm_s8_emulated(*ref.quantize_rows(x), *ref.quantize_rows(w))
    for tier in AVAILABLE:   # full-scale rows at the bound: still exact
        np.testing.assert_array_equal(pq.matmul(x, tier=tier), want, err_msg=tier)
    np.testing.assert_allclose(want[:, 0], K, rtol=1e-6)
    with pytest.raises(ValueError, match=r"PackedInt8: K \(w's columns\) = 133145 is too large "
                                         r"for int8.*K <= 133144"):
        lowp.PackedInt8(np.ones((3, K + 1), np.float32))
