"""int8 inference of the LSTM/GRU/RNN kernels (precision="int8") against the NumPy emulation of
its contract (fusedrnn.reference.*_forward_int8), in every low-precision tier (FUSEDRNN_ISA
forces each in a fresh process), with lengths, reverse, initial states, peepholes, projection,
cell_clip and both GRU formulas; the emulation against the float64 reference; bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fusedrnn
from fusedrnn import lowp
from fusedrnn import reference as ref
from fusedrnn import reference_lowp

CASES = [  # (cell, options)
    ("lstm", {}), ("lstm", {"peep": True}), ("lstm", {"proj": 5}), ("lstm", {"peep": True, "proj": 3}),
    ("gru", {"variant": "reset_after"}), ("gru", {"variant": "reset_before"}),
    ("rnn", {"nonlinearity": "tanh"}), ("rnn", {"nonlinearity": "relu"}),
    ("lstm", {"peep": True, "clip": 0.25}),
]


def make(cell, opts, T=7, N=5, C=9, H=37, seed=0):
    rng = np.random.default_rng(seed)
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    P = min(opts.get("proj", 0), H - 1)
    R = P or H
    f = lambda *s, sc=0.3: (rng.standard_normal(s) * sc).astype(np.float32)  # noqa: E731
    # h0 up to ~1.5 in magnitude: the dynamic per-row scheme assumes no range
    args = [f(T, N, C, sc=1.0), f(G * H, C), f(G * H, R), f(G * H, sc=0.1), f(G * H, sc=0.1),
            f(N, R, sc=0.5)]
    kw = {}
    if cell == "lstm":
        args.append(f(N, H, sc=0.5))
        if opts.get("peep"):
            kw["w_peep"] = f(3, H, sc=0.2)
        if P:
            kw["w_hr"] = f(P, H)
        if opts.get("clip"):
            kw["cell_clip"] = opts["clip"]
    elif cell == "gru":
        kw["variant"] = opts["variant"]
    else:
        kw["nonlinearity"] = opts["nonlinearity"]
    return args, kw


def close(got, want):
    """fp32 gate-math error only: with the kernel's own states fed back (teacher_y), every s8
    product of the emulation is bit for bit the kernel's; quantisation itself moves the outputs
    by ~1e-2 (checked below)."""
    return np.abs(got - want) <= 1e-5 * (1 + np.abs(want))


def compare_teacher(cell, opts, got, want):
    ok = close(got, want)
    if cell == "gru" and opts.get("variant") == "reset_before":
        # r∘h is formed from the fp32 gate r, which the emulation computes in float64: where the
        # two r differ in the last bit, an element of r∘h on a quantiser boundary moves by one
        # quantum (at most amax/127 * sum|w_hn| of its row). Rare: at most 1 element in 500.
        assert ok.mean() >= 0.998, (ok.mean(), np.abs(got - want).max())
        assert np.abs(got - want).max() <= 2e-2 * (1 + np.abs(want).max())
    else:
        assert ok.all(), np.abs(got - want).max()


def check_case(cell, opts, reverse, lengths, seed=0):
    args, kw = make(cell, opts, seed=seed)
    T, N = args[0].shape[:2]
    L = np.array([7, 3, 0, 5, 7])[:N] if lengths else None
    out = getattr(fusedrnn, cell + "_forward")(*args, **kw, reverse=reverse, lengths=L,
                                              training=False, precision="int8")
    teach = getattr(ref, cell + "_forward_int8")(*args, **kw, reverse=reverse, lengths=L,
                                                 teacher_y=out.y)
    for got, want in zip(out[:-1], teach):
        compare_teacher(cell, opts, got, want)
    free = getattr(ref, cell + "_forward_int8")(*args, **kw, reverse=reverse, lengths=L)
    assert np.abs(out.y - free[0]).max() <= 3e-2 * (1 + np.abs(free[0]).max())
    fp = getattr(ref, cell + "_forward")(*[a.astype(np.float64) for a in args], **kw,
                                         reverse=reverse, lengths=L, training=False)
    return np.abs(fp.y - free[0]).max() / max(1.0, np.abs(fp.y).max())


@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell,opts", CASES, ids=[f"{c}-{'-'.join(map(str, o.values()))}"
                                                  for c, o in CASES])
def test_int8_kernel_matches_emulation(cell, opts, reverse, lengths):
    rel = check_case(cell, opts, reverse, lengths)
    assert rel > 1e-4  # quantisation moves the outputs: the test can tell int8 from fp32


def test_int8_kernel_odd_and_larger_shapes():
    for cell, opts in CASES:
        for T, N, C, H in [(3, 1, 1, 1), (4, 2, 65, 17), (5, 40, 70, 64), (4, 70, 20, 40)]:
            args, kw = make(cell, opts, T, N, C, H, seed=T + N)
            out = getattr(fusedrnn, cell + "_forward")(*args, **kw, training=False,
                                                      precision="int8")
            teach = getattr(ref, cell + "_forward_int8")(*args, **kw, teacher_y=out.y)
            for got, want in zip(out[:-1], teach):
                compare_teacher(cell, opts, got, want)


@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("cell,opts", CASES[::2])
@pytest.mark.parametrize("dims", [(6, 40, 30, 64), (5, 70, 20, 40), (9, 33, 16, 50)])
def test_int8_bitwise_independent_of_threads(cell, opts, dims, ragged):
    # At 2 and 3 threads the LSTM without projection (and the GRU and RNN) splits the rows
    # between the threads where w_hh is small (bf16_steps.h: s8_rows_split), each an independent
    # recurrence; otherwise the columns. Both give the same bits as one thread, with lengths
    # (finished rows carried, some rows empty) and in reverse too; (9, 33, 16, 50) has chunks
    # of input products of a few steps.
    args, kw = make(cell, opts, *dims)
    if ragged:
        T, N = dims[:2]
        kw["lengths"] = np.random.default_rng(N).integers(0, T + 1, N)
        kw["lengths"][:2] = [T, 0]
        kw["reverse"] = True
    outs = []
    before = fusedrnn.get_num_threads()
    for n in (1, 2, 3):
        fusedrnn.set_num_threads(n)
        try:
            outs.append(getattr(fusedrnn, cell + "_forward")(*args, **kw, training=False,
                                                            precision="int8"))
        finally:
            fusedrnn.set_num_threads(before)
    for other in outs[1:]:
        for a, b in zip(outs[0][:-1], other[:-1]):
            np.testing.assert_array_equal(a, b)
    if ragged:  # and the split rows are the contract's rows
        fusedrnn.set_num_threads(2)
        try:
            out = getattr(fusedrnn, cell + "_forward")(*args, **kw, training=False,
                                                      precision="int8")
        finally:
            fusedrnn.set_num_threads(before)
        teach = getattr(ref, cell + "_forward_int8")(*args, **kw, teacher_y=out.y)
        for got, want in zip(out[:-1], teach):
            compare_teacher(cell, opts, got, want)


def test_int8_products_are_the_emulated_products_bit_for_bit():
    # One RNN step from zero state, no bias, relu: y = relu(gx) with gx the s8 product of the
    # quantised x and w_ih (the state product is 0): bit for bit gemm_s8_emulated.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 13, 71)).astype(np.float32)
    w_ih = rng.standard_normal((45, 71)).astype(np.float32)
    w_hh = rng.standard_normal((45, 45)).astype(np.float32)
    out = fusedrnn.rnn_forward(x, w_ih, w_hh, nonlinearity="relu", training=False,
                               precision="int8")
    qx, sx = ref.quantize_rows(x[0])
    qw, sw = ref.quantize_rows(w_ih)
    want = np.maximum(ref.gemm_s8_emulated(qx, sx, qw, sw), 0)
    np.testing.assert_array_equal(out.y[0], want)


def test_emulation_without_quantisation_is_the_reference(monkeypatch):
    # With the quantiser switched off (exact products) the int8 emulation is the reference.
    monkeypatch.setattr(reference_lowp, "_s8_mm",
                        lambda a, w: np.asarray(a, np.float64) @ w.q.T)
    monkeypatch.setattr(reference_lowp._Q8, "of",
                        classmethod(lambda cls, w: cls(np.asarray(w, np.float64),
                                                       np.ones(len(w)))))
    for cell, opts in CASES:
        args, kw = make(cell, opts)
        L = np.array([7, 3, 0, 5, 7])
        em = getattr(ref, cell + "_forward_int8")(*args, **kw, lengths=L)
        fp = getattr(ref, cell + "_forward")(*[a.astype(np.float64) for a in args], **kw,
                                             lengths=L, training=False)
        tol = 1e-6 if cell == "gru" and opts["variant"] == "reset_before" else 1e-12
        for a, b in zip(em, fp[:-1]):
            np.testing.assert_allclose(a, b, rtol=0, atol=tol)


def emulation_errors():
    worst = {}
    for cell, opts in CASES:
        rng = np.random.default_rng(1)
        T, N, C, H = 100, 8, 64, 64
        G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
        P = opts.get("proj", 0)
        k = 1 / np.sqrt(H)
        u = lambda *s: rng.uniform(-k, k, s).astype(np.float32)  # noqa: E731
        args = [rng.standard_normal((T, N, C)).astype(np.float32), u(G * H, C), u(G * H, P or H),
                u(G * H), u(G * H)]
        kw = {}
        if cell == "lstm":
            if opts.get("peep"):
                kw["w_peep"] = u(3, H)
            if P:
                kw["w_hr"] = u(P, H)
            if opts.get("clip"):
                kw["cell_clip"] = opts["clip"]
        elif cell == "gru":
            kw["variant"] = opts["variant"]
        else:
            kw["nonlinearity"] = opts["nonlinearity"]
        em = getattr(ref, cell + "_forward_int8")(*args, **kw)
        fp = getattr(ref, cell + "_forward")(*[a.astype(np.float64) for a in args], **kw,
                                             training=False)
        d = em[0] - fp.y
        worst[cell + str(opts)] = (np.abs(d).max() / np.abs(fp.y).max(),
                                   float(np.sqrt((d ** 2).mean())))
    return worst


def test_emulation_error_against_fp32_reference_is_what_the_docstring_says():
    # Measured values are listed in reference_lowp's int8 section.
    worst = {k: v[0] for k, v in emulation_errors().items()}
    clip = worst.pop(str("lstm") + str({"peep": True, "clip": 0.25}))
    assert max(worst.values()) < 3e-2, worst
    assert min(worst.values()) > 1e-3, worst
    assert clip < 5e-2, clip  # cell_clip's bound: a quantised pre-activation may cross it


FORCED = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from fusedrnn import lowp
from test_int8_cells import CASES, check_case, check_nonfinite
for cell, opts in CASES:
    for reverse in (False, True):
        check_case(cell, opts, reverse, True)
    check_nonfinite(cell, opts)
print(json.dumps({"tier": lowp.active_tier(), "checked": len(CASES) * 3}))
"""


@pytest.mark.parametrize("tier", list(lowp.TIERS))
def test_every_tier_runs_the_int8_kernels(tier):
    if not lowp.tiers()[tier]:
        pytest.skip(f"tier {tier} does not run here")
    env = dict(os.environ, FUSEDRNN_ISA=tier)
    out = subprocess.run([sys.executable, "-c", FORCED, os.path.dirname(__file__)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"tier": tier, "checked": 27}


def test_int8_results_are_the_same_in_every_tier():
    # The s8 products are exact integers: every tier gives the same bits (fp32 gate math of the
    # float copy aside: compare tiers that share the avx512 float copy).
    script = r"""
import sys, numpy as np, fusedrnn
sys.path.insert(0, sys.argv[1])
from test_int8_cells import make
args, kw = make("gru", {"variant": "reset_before"}, 6, 20, 70, 40)
out = fusedrnn.gru_forward(*args, **kw, training=False, precision="int8")
sys.stdout.write(out.y.tobytes().hex())
"""
    results = {}
    for tier in ("avx512", "avx512_bf16", "amx"):
        if not lowp.tiers()[tier]:
            continue
        env = dict(os.environ, FUSEDRNN_ISA=tier)
        out = subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__)], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        results[tier] = out.stdout.strip().splitlines()[-1]
    if len(results) < 2:
        pytest.skip("fewer than two tiers share the avx512 float copy here")
    assert len(set(results.values())) == 1


def test_bad_int8_requests_raise_naming_the_argument():
    args, kw = make("lstm", {})
    with pytest.raises(ValueError, match="training=False"):
        fusedrnn.lstm_forward(*args, training=True, precision="int8")
    with pytest.raises(ValueError, match="needs float32"):
        fusedrnn.lstm_forward(*[a.astype(np.float64) for a in args], training=False,
                              precision="int8")
    for cell, opts in (("lstm", {}), ("gru", {"variant": "reset_before"}),
                       ("rnn", {"nonlinearity": "tanh"})):
        for name, idx in (("w_ih", 1), ("w_hh", 2)):
            for bad in (np.nan, np.inf):
                a, k = make(cell, opts)
                a[idx].flat[7] = bad
                with pytest.raises(ValueError, match=f"{name}.*non-finite"):
                    getattr(fusedrnn, cell + "_forward")(*a, **k, training=False,
                                                         precision="int8")


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_frozen_int8_stack_equals_the_functional_forward_layer_by_layer(mode):
    rng = np.random.default_rng(4)
    layer = getattr(fusedrnn, mode)(12, 20, num_layers=2, bidirectional=True, seed=3)
    x = rng.standard_normal((9, 4, 12)).astype(np.float32)
    frz = layer.frozen(precision="int8")
    assert frz.precision == "int8" and frz.frozen().precision == "int8"
    y1, _ = frz(x)
    y2, _ = frz(x)  # second call: the packed s8 weights reused
    np.testing.assert_array_equal(y1, y2)
    y32, _ = layer.eval()(x)
    diff = np.abs(y1 - y32).max()
    assert 1e-4 < diff < 1e-1, diff  # int8, not fp32; close to it
    # layer 0, forward direction, by the functional API
    kind = mode.lower()
    p = {n: getattr(layer, n).data for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
                                             "bias_hh_l0")}
    out = getattr(fusedrnn, kind + "_forward")(x, p["weight_ih_l0"], p["weight_hh_l0"],
                                               p["bias_ih_l0"], p["bias_hh_l0"],
                                               training=False, precision="int8")
    one = getattr(fusedrnn, mode)(12, 20, seed=3)
    for n in p:
        getattr(one, n).data[...] = p[n]
    y, _ = one.frozen(precision="int8")(x)
    np.testing.assert_array_equal(y, out.y)


def test_frozen_int8_bad_input():
    layer = fusedrnn.GRU(4, 5)
    with pytest.raises(ValueError, match="needs a float32 layer"):
        fusedrnn.GRU(4, 5, dtype=np.float64).frozen(precision="int8")
    layer.weight_hh_l0.data[1, 2] = np.inf
    with pytest.raises(ValueError, match="weight_hh_l0 has a non-finite"):
        layer.frozen(precision="int8")
    frz = fusedrnn.RNN(4, 5).frozen(precision="int8")
    frz.train()
    with pytest.raises(ValueError, match="training=True"):
        frz(np.zeros((2, 1, 4), np.float32))
    with pytest.raises(ValueError, match="inference only"):
        fusedrnn.LSTM(3, 4).compute = "int8"


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_frozen_int8_refuses_sums_past_the_s32_bound(mode):
    # The s8 products sum in s32: an input width of 140,000 wrapped around and flipped the
    # output's sign silently. frozen(precision="int8") refuses it, before copying anything.
    K = lowp.INT8_MAX_K
    layer = getattr(fusedrnn, mode)(K + 1, 2)
    with pytest.raises(ValueError, match=rf"{mode}.frozen\(precision='int8'\): input_size = "
                                         rf"{K + 1} is too large for int8.*K <= {K}"):
        layer.frozen(precision="int8")
    assert layer.frozen(precision="bfloat16").precision == "bfloat16"   # fp32 sums: no bound
    # at the bound the int8 layer is the emulation of its contract (no wrap-around)
    at = getattr(fusedrnn, mode)(K, 2, seed=0)
    x = np.ones((1, 1, K), np.float32)
    y, _ = at.frozen(precision="int8")(x)
    p = [getattr(at, n).data for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
                                       "bias_hh_l0")]
    want = getattr(reference_lowp, mode.lower() + "_forward_int8")(x, *p)[0]
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-5)


def check_nonfinite(cell, opts):
    """A NaN or an infinity in the activations propagates: the row holding it (the contract:
    scale NaN, q = 0) is NaN from that step on, in the kernel as in the emulation; the other
    sequences are unchanged. A NaN lands where the float32 kernel has its NaNs."""
    args, kw = make(cell, opts)
    fwd = getattr(fusedrnn, cell + "_forward")
    emu = getattr(ref, cell + "_forward_int8")
    clean = fwd(*args, **kw, training=False, precision="int8")
    x = args[0].copy()
    x[2, 1, 3] = np.nan  # sequence 1 from step 2
    x[4, 3, 0] = np.inf  # sequence 3 from step 4
    a = [x] + args[1:]
    with np.errstate(invalid="ignore", over="ignore"):
        out = fwd(*a, **kw, training=False, precision="int8")
        want = emu(*a, **kw)
        f32 = fwd(*a, **kw, training=False)
    y = out.y
    bad = np.zeros(y.shape[:2], bool)
    bad[2:, 1] = bad[4:, 3] = True
    assert np.isnan(y[bad]).all() and np.isfinite(y[~bad]).all()
    np.testing.assert_array_equal(y[~bad], clean.y[~bad])
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want[0]))
    assert np.isnan(out.h_n[[1, 3]]).all() and np.isfinite(out.h_n[[0, 2, 4]]).all()
    nan_f32 = np.isnan(f32.y[:, 1])
    np.testing.assert_array_equal(np.isnan(y[:, 1]), nan_f32)


@pytest.mark.parametrize("cell,opts", CASES, ids=[f"{c}-{'-'.join(map(str, o.values()))}"
                                                  for c, o in CASES])
def test_int8_nonfinite_activation_propagates(cell, opts):
    check_nonfinite(cell, opts)


def test_int8_nonfinite_input_raises_in_check_mode():
    frz = fusedrnn.LSTM(9, 37, seed=2).frozen(precision="int8")
    x = np.zeros((4, 2, 9), np.float32)
    x[1, 1, 0] = np.nan
    with np.errstate(invalid="ignore"):
        y, _ = frz(x)
    assert np.isnan(y[1:, 1]).all() and np.isfinite(y[:, 0]).all()
    with fusedrnn.check_finite(), pytest.raises(FloatingPointError, match="time step 1, sequence 1"):
        frz(x)


def test_functional_int8_refuses_products_past_the_int32_bound():
    """127^2 K must stay below 2^31 for the int8 sums: an RNN with C = 140,000 inputs returned
    y = -0.85 where float32 gives +0.89 (the sums wrapped). The kernels refuse it (C++, every
    caller), naming the sizes; 133,144 is the widest that stays exact."""
    import fusedrnn
    H, K = 16, 140_000
    x = np.ones((1, 1, K), np.float32)
    w_ih = np.full((H, K), 1e-5, np.float32)
    w_hh = np.zeros((H, H), np.float32)
    with pytest.raises(ValueError, match="int8 needs input_size and hidden_size <= 133144"):
        fusedrnn.rnn_forward(x, w_ih, w_hh, training=False, precision="int8")
    K = 133_144
    y8 = fusedrnn.rnn_forward(x[..., :K].copy(), w_ih[:, :K].copy(), w_hh, training=False,
                              precision="int8")[0]
    y32 = fusedrnn.rnn_forward(x[..., :K].copy(), w_ih[:, :K].copy(), w_hh, training=False)[0]
    np.testing.assert_allclose(y8, y32, rtol=2e-2)
