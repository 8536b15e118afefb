"""bf16 inference of the LSTM/GRU/RNN kernels (precision="bfloat16") against the NumPy emulation
of its contract (fusedrnn.reference.*_forward_bf16), in every low-precision tier (FUSEDRNN_ISA
forces each in a fresh process), with lengths, reverse, initial states, peepholes, projection and
both GRU formulas; the emulation against the float64 reference; the frozen-layer surface."""
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

AVAILABLE = [t for t, ok in lowp.tiers().items() if ok]

CASES = [  # (cell, options)
    ("lstm", {}), ("lstm", {"peep": True}), ("lstm", {"proj": 5}), ("lstm", {"peep": True, "proj": 3}),
    ("gru", {"variant": "reset_after"}), ("gru", {"variant": "reset_before"}),
    ("rnn", {"nonlinearity": "tanh"}), ("rnn", {"nonlinearity": "relu"}),
    ("lstm", {"peep": True, "clip": 0.25}),  # cell_clip (issue 15) on the bf16 path too
]


def make(cell, opts, T=7, N=5, C=9, H=37, seed=0):
    rng = np.random.default_rng(seed)
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    P = min(opts.get("proj", 0), H - 1)  # the projection narrows h (P < H; H = 1: none)
    R = P or H
    f = lambda *s, sc=0.3: (rng.standard_normal(s) * sc).astype(np.float32)  # noqa: E731
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
    """fp32 accumulation and activation error only: a kernel computing in fp32, or rounding
    at other points, is off by ~1e-3 (the bf16 effect, checked below to be that large)."""
    return np.abs(got - want) <= 1e-5 * (1 + np.abs(want))


def check_teacher_forced(cell, args, kw, reverse, L):
    """The kernel's bf16 forward against the emulation fed the kernel's own states step by step
    (fp32 accumulation and activation error only); returns the kernel's outputs."""
    out = getattr(fusedrnn, cell + "_forward")(*args, **kw, reverse=reverse, lengths=L,
                                              training=False, precision="bfloat16")
    teach = getattr(ref, cell + "_forward_bf16")(*args, **kw, reverse=reverse, lengths=L,
                                                 teacher_y=out.y)
    for got, want in zip(out[:-1], teach):
        assert close(got, want).all(), np.abs(got - want).max()
    return out


def check_case(cell, opts, reverse, lengths, seed=0):
    args, kw = make(cell, opts, seed=seed)
    T, N = args[0].shape[:2]
    L = np.array([7, 3, 0, 5, 7])[:N] if lengths else None
    out = check_teacher_forced(cell, args, kw, reverse, L)
    # Free-running, the two recurrences may part where an operand sits on a bf16 rounding
    # boundary; the outputs then still agree to bf16 precision.
    free = getattr(ref, cell + "_forward_bf16")(*args, **kw, reverse=reverse, lengths=L)
    assert np.abs(out.y - free[0]).max() <= 1e-2 * (1 + np.abs(free[0]).max())
    # and the bf16 contract is not the fp32 computation
    fp = getattr(ref, cell + "_forward")(*[a.astype(np.float64) for a in args], **kw,
                                         reverse=reverse, lengths=L, training=False)
    return np.abs(fp.y - free[0]).max() / max(1.0, np.abs(fp.y).max())


@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell,opts", CASES, ids=[f"{c}-{'-'.join(map(str, o.values()))}"
                                                  for c, o in CASES])
def test_bf16_kernel_matches_emulation(cell, opts, reverse, lengths):
    rel = check_case(cell, opts, reverse, lengths)
    assert rel > 1e-4  # bf16 rounding moves the outputs (~1e-3): the test can tell it from fp32


def test_bf16_kernel_odd_and_larger_shapes():
    for cell, opts in CASES[::2]:
        for T, N, C, H in [(3, 1, 1, 1), (4, 2, 33, 17), (5, 40, 70, 64), (4, 70, 20, 40),
                           (3, 70, 16, 496)]:
            args, kw = make(cell, opts, T, N, C, H, seed=T + N)
            out = getattr(fusedrnn, cell + "_forward")(*args, **kw, training=False,
                                                      precision="bfloat16")
            teach = getattr(ref, cell + "_forward_bf16")(*args, **kw, teacher_y=out.y)
            for got, want in zip(out[:-1], teach):
                assert close(got, want).all(), (cell, T, N, C, H, np.abs(got - want).max())


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell,opts", [("lstm", {}), ("lstm", {"peep": True, "clip": 0.25}),
                                       ("gru", {"variant": "reset_after"})])
def test_bf16_batched_step_with_lengths(cell, opts, reverse):
    # 40 rows: the fused AMX step of the LSTM and of the reset_after GRU (N >= 16), with lengths
    # (finished rows carry their state; zeros past each length) and in reverse
    args, kw = make(cell, opts, T=6, N=40, C=20, H=40, seed=5)
    L = np.random.default_rng(1).integers(0, 7, size=40)
    L[0] = 6
    out = check_teacher_forced(cell, args, kw, reverse, L)
    for t in range(6):
        assert (out.y[t][L <= t] == 0).all()


@pytest.mark.parametrize("cell,opts", CASES[::2])
@pytest.mark.parametrize("dims", [(6, 40, 30, 64), (5, 70, 20, 40), (3, 70, 16, 496)])
def test_bf16_bitwise_independent_of_threads(cell, opts, dims):
    # (70 rows: two row groups of the fused AMX step, the second partial; 40 units: a partial
    # unit block; H = 496: 17 k-steps a product, 2.1 MB of packed weights: one thread takes row
    # groups of 64, two and three threads groups of 32, each with one row of gate math a k-step)
    args, kw = make(cell, opts, *dims)
    outs = []
    before = fusedrnn.get_num_threads()
    for n in (1, 2, 3):
        fusedrnn.set_num_threads(n)
        try:
            outs.append(getattr(fusedrnn, cell + "_forward")(*args, **kw, training=False,
                                                            precision="bfloat16"))
        finally:
            fusedrnn.set_num_threads(before)
    for other in outs[1:]:
        for a, b in zip(outs[0][:-1], other[:-1]):
            np.testing.assert_array_equal(a, b)


def test_emulation_without_rounding_is_the_reference(monkeypatch):
    # The emulation's cell equations are the reference's: with the rounding switched off they
    # agree to float64 rounding, for every cell option, lengths and reverse.
    monkeypatch.setattr(reference_lowp, "bf16_round", lambda a: np.asarray(a, np.float32))
    monkeypatch.setattr(reference_lowp, "_operand", lambda h: np.asarray(h, np.float64))
    for cell, opts in CASES:
        args, kw = make(cell, opts)
        for reverse in (False, True):
            L = np.array([7, 3, 0, 5, 7])
            em = getattr(ref, cell + "_forward_bf16")(*args, **kw, reverse=reverse, lengths=L)
            fp = getattr(ref, cell + "_forward")(*[a.astype(np.float64) for a in args], **kw,
                                                 reverse=reverse, lengths=L, training=False)
            if cell == "gru" and opts["variant"] == "reset_before":
                tol = 1e-6  # r∘h is formed in fp32 by the contract
            else:
                tol = 1e-12
            for a, b in zip(em, fp[:-1]):
                np.testing.assert_allclose(a, b, rtol=0, atol=tol)


def test_emulation_error_against_fp32_reference_is_what_the_docstring_says():
    # Measured (T=100, N=8, C=H=64, PyTorch-style init): max |y_bf16 - y_fp64| / max |y|
    # 2.3e-3 .. 6.6e-3 per cell and option; listed in reference_lowp.
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
        elif cell == "gru":
            kw["variant"] = opts["variant"]
        else:
            kw["nonlinearity"] = opts["nonlinearity"]
        em = getattr(ref, cell + "_forward_bf16")(*args, **kw)
        fp = getattr(ref, cell + "_forward")(*[a.astype(np.float64) for a in args], **kw,
                                             training=False)
        worst[cell + str(opts)] = np.abs(em[0] - fp.y).max() / np.abs(fp.y).max()
    assert max(worst.values()) < 1e-2, worst
    assert min(worst.values()) > 1e-3, worst


FORCED = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from fusedrnn import lowp
from test_bf16_cells import CASES, check_case
for cell, opts in CASES:
    for reverse in (False, True):
        check_case(cell, opts, reverse, True)
print(json.dumps({"tier": lowp.active_tier(), "checked": len(CASES) * 2}))
"""


@pytest.mark.parametrize("tier", list(lowp.TIERS))
def test_every_tier_runs_the_bf16_kernels(tier):
    if not lowp.tiers()[tier]:
        pytest.skip(f"tier {tier} does not run here")
    env = dict(os.environ, FUSEDRNN_ISA=tier)
    out = subprocess.run([sys.executable, "-c", FORCED, os.path.dirname(__file__)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"tier": tier, "checked": 18}


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_frozen_bf16_layer_equals_the_functional_forward(mode):
    rng = np.random.default_rng(4)
    layer = getattr(fusedrnn, mode)(12, 20, num_layers=2, bidirectional=True, seed=3)
    x = rng.standard_normal((9, 4, 12)).astype(np.float32)
    frz = layer.frozen(precision="bfloat16")
    y1, _ = frz(x)
    y2, _ = frz(x)  # second call: packed weights reused
    np.testing.assert_array_equal(y1, y2)
    y32, _ = layer.eval()(x)
    diff = np.abs(y1 - y32).max()
    assert 1e-5 < diff < 5e-2, diff  # bf16, not fp32; close to it


def test_frozen_bf16_single_layer_is_the_functional_bf16_forward():
    rng = np.random.default_rng(5)
    layer = fusedrnn.LSTM(10, 16, seed=1)
    x = rng.standard_normal((6, 3, 10)).astype(np.float32)
    y, (h, c) = layer.frozen(precision="bfloat16")(x)
    p = {n: getattr(layer, n).data for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
                                             "bias_hh_l0")}
    out = fusedrnn.lstm_forward(x, p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"],
                                p["bias_hh_l0"], training=False, precision="bfloat16")
    np.testing.assert_array_equal(y, out.y)
    np.testing.assert_array_equal(h[0], out.h_n)


def test_bad_precision_requests_raise_naming_the_argument():
    args, kw = make("lstm", {})
    with pytest.raises(ValueError, match="precision must be one of"):
        fusedrnn.lstm_forward(*args, training=False, precision="fp8")
    with pytest.raises(ValueError, match="needs float32"):
        fusedrnn.lstm_forward(*[a.astype(np.float64) for a in args], training=False,
                              precision="bfloat16")
    with pytest.raises(ValueError, match="precision must be"):
        fusedrnn.GRU(4, 5).frozen(precision="int4")
    with pytest.raises(ValueError, match="needs a float32 layer"):
        fusedrnn.GRU(4, 5, dtype=np.float64).frozen(precision="bfloat16")
    frz = fusedrnn.RNN(4, 5).frozen(precision="bfloat16")
    frz.train()
    with pytest.raises(RuntimeError, match="inference only"):
        frz(np.zeros((2, 1, 4), np.float32))


def test_build_info_names_the_tier_per_precision():
    tiers = fusedrnn.build_info()["precision_tiers"]
    assert tiers["float32"] == fusedrnn.build_info()["instruction_set"]
    assert tiers["bfloat16"] == tiers["int8"] == lowp.active_tier()


@pytest.mark.parametrize("prec", ["bfloat16", "int8"])
@pytest.mark.parametrize("make_layer", [
    lambda: fusedrnn.LSTM(20, 32, seed=1), lambda: fusedrnn.LSTM(20, 32, proj_size=5, seed=1),
    lambda: fusedrnn.GRU(20, 32, variant="reset_after", seed=1),
    lambda: fusedrnn.GRU(20, 32, variant="reset_before", seed=1)],
    ids=["lstm", "lstm-proj", "gru-reset_after", "gru-reset_before"])
def test_frozen_lowp_layer_serves_every_batch_size(prec, make_layer):
    # One frozen layer keeps its packed weights across calls; batches of every size (larger and
    # smaller than the first, on both sides of the fused AMX step's minimum: the LSTM and the
    # reset_after GRU take it from 16 rows, each route packing its form once in the shared
    # workspace) give the results of a fresh copy, with the LSTM's projection too (its fp32
    # packing sits behind an N-sized block).
    layer = make_layer()
    frz = layer.frozen(precision=prec)
    rng = np.random.default_rng(0)
    for N in (20, 1, 40, 3, 16, 2):
        x = rng.standard_normal((6, N, 20)).astype(np.float32)
        y, state = frz(x)
        y2, state2 = layer.frozen(precision=prec)(x)
        np.testing.assert_array_equal(y, y2)
        as_tuple = lambda st: st if isinstance(st, tuple) else (st,)  # noqa: E731 (LSTM: h, c)
        assert len(as_tuple(state)) == len(as_tuple(state2))
        for a, b in zip(as_tuple(state), as_tuple(state2)):
            np.testing.assert_array_equal(a, b)
