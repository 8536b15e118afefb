"""Chain of trust, link 2: the C++ kernels against the NumPy reference.

Every output and every gradient, on a grid of odd shapes (T=1, N=1, H not a multiple of the SIMD
width, more rows and columns than one GEMM tile), with and without biases and initial states,
with lengths (including 0 and T), reversed, with peepholes, with an LSTM projection (P = 1,
P < H and P = H - 1; PyTorch's rule P < H is the kernel's), both GRU formulas, relu and tanh.
float64 kernels must match the float64 reference to 1e-9 relative (to the tensor's largest
magnitude); float32 kernels must match the float64 reference on the same rounded inputs to 1e-4.
Also: bitwise identical results for 1 and 2 threads, inference equal to training, accumulation of
parameter gradients at the C++ level, and a repeatable backward.
"""
import itertools
import threading

import numpy as np
import pytest

import fusedrnn
from fusedrnn import _core
from fusedrnn import reference as ref

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
SHAPES = [  # T, N, C, H
    (1, 1, 1, 1),
    (1, 3, 4, 5),
    (4, 1, 3, 17),
    (5, 4, 7, 70),    # two unit blocks, five GEMM column tiles for LSTM
    (20, 14, 9, 33),  # 280 input rows: two row tiles
    (40, 30, 5, 7),   # the input projection in three chunks of steps (16, 16, 8)
    (3, 2, 5, 48),    # batch 2: the small-product path, full panels in groups plus a partial one
    (2, 7, 530, 20),  # K = 530 > 512: the input projection and dw_ih in more than one pass of k
]
TOL = {np.float64: 1e-9, np.float32: 1e-4}
# LSTM projection sizes P per shape of SHAPES, for the options "proj" and "peep+proj": between
# them P = 1, P < H and P = H - 1 (the largest the kernel accepts); P = 69 and 32 span more than
# one GEMM panel.
PROJ = {
    (1, 1, 1, 1): (None, None),   # H = 1: no projection is narrower (P < H)
    (1, 3, 4, 5): (3, 4),
    (4, 1, 3, 17): (1, 16),
    (5, 4, 7, 70): (69, 1),
    (20, 14, 9, 33): (17, 32),
    (40, 30, 5, 7): (3, 6),
    (3, 2, 5, 48): (2, 47),
    (2, 7, 530, 20): (5, 19),
}


def make_case(cell, shape, dtype, *, bias=True, state=True, lengths=False, peep=False, proj=0,
              seed=0):
    """Random inputs (PyTorch-like init scale), cotangents and kwargs for one forward call.
    proj = P > 0: an LSTM with projection w_hr [P, H] (h, y and w_hh's columns have P units)."""
    T, N, C, H = shape
    G = GATES[cell]
    R = proj or H
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)

    def u(*s, scale=k):
        return rng.uniform(-scale, scale, s).astype(dtype)

    args = [rng.standard_normal((T, N, C)).astype(dtype), u(G * H, C), u(G * H, R)]
    kw = {}
    if bias:
        kw.update(b_ih=u(G * H), b_hh=u(G * H))
    if state:
        kw["h0"] = u(N, R, scale=1.0)
        if cell == "lstm":
            kw["c0"] = u(N, H, scale=1.0)
    if peep:
        kw["w_peep"] = u(3, H, scale=1.0)
    if lengths:
        L = rng.integers(0, T + 1, N)
        L[0] = T
        if N > 1:
            L[-1] = 0
        kw["lengths"] = L
    cot = {"dy": rng.standard_normal((T, N, R)).astype(dtype),
           "dh_n": rng.standard_normal((N, R)).astype(dtype)}
    if cell == "lstm":
        cot["dc_n"] = rng.standard_normal((N, H)).astype(dtype)
    if proj:
        kw["w_hr"] = u(proj, H)
    return args, kw, cot


def run(impl, cell, args, kw, cot, option, reverse, training=True):
    fwd, bwd = getattr(impl, cell + "_forward"), getattr(impl, cell + "_backward")
    extra = {"gru": {"variant": option}, "rnn": {"nonlinearity": option}}.get(cell, {})
    out = fwd(*args, **kw, **extra, reverse=reverse, training=training)
    grads = bwd(out.cache, **cot) if training else None
    return out, grads


def as64(d):
    return {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
            for k, v in d.items()}


def assert_close(got, want, tol, what):
    for name in want._fields:
        w, g = getattr(want, name), getattr(got, name)
        if name == "cache":
            continue
        if w is None:
            assert g is None, f"{what}: {name} should be None"
            continue
        assert g.shape == w.shape and g.dtype == got[0].dtype, f"{what}: {name} shape/dtype"
        scale = max(float(np.abs(w).max()), 1e-30)
        err = float(np.abs(g.astype(np.float64) - w).max())
        assert err <= tol * scale, f"{what}: {name} max abs diff {err:.3g} > {tol:g} x {scale:.3g}"


# LSTM options: peepholes (False / True), projection ("proj") or both ("peep+proj").
OPTIONS = {"lstm": [False, True, "proj", "peep+proj"], "gru": ["reset_after", "reset_before"],
           "rnn": ["tanh", "relu"]}
GRID = [(cell, opt) for cell in OPTIONS for opt in OPTIONS[cell]]


def option_kw(cell, option, shape):
    """make_case keywords of one grid entry, and the option the forward takes (None for LSTM)."""
    if cell != "lstm":
        return {}, option
    proj = 0
    if option in ("proj", "peep+proj"):
        H = shape[3]
        both = option == "peep+proj"
        proj = PROJ[shape][both] if shape in PROJ else (H - 1 if both else max(1, H // 3))
        if proj is None:
            pytest.skip("H = 1: a projection needs P < H")
    return dict(peep=option in (True, "peep+proj"), proj=proj), None


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T%dN%dC%dH%d" % s)
@pytest.mark.parametrize("cell,option", GRID, ids=[f"{c}-{o}" for c, o in GRID])
@pytest.mark.parametrize("bias,state,lengths,reverse",
                         list(itertools.product([True, False], repeat=4)),
                         ids=lambda v: "y" if v else "n")
def test_kernel_matches_reference(cell, option, shape, dtype, bias, state, lengths, reverse):
    okw, opt = option_kw(cell, option, shape)
    args, kw, cot = make_case(cell, shape, dtype, bias=bias, state=state, lengths=lengths, **okw)
    got_out, got_grads = run(fusedrnn, cell, args, kw, cot, opt, reverse)
    # The reference runs in float64 on the same (possibly float32-rounded) values.
    want_out, want_grads = run(ref, cell, [a.astype(np.float64) for a in args], as64(kw),
                               as64(cot), opt, reverse)
    what = f"{cell} {option} {shape} {np.dtype(dtype).name}"
    assert_close(got_out, want_out, TOL[dtype], what)
    assert_close(got_grads, want_grads, TOL[dtype], what)


def _all_arrays(out, grads):
    return [a for a in list(out[:-1]) + list(grads) if a is not None]


def _run_threads(cell, args, kw, cot, opt):
    """{(threads, reverse): (outputs, grads)} of the kernels with 1 and 2 threads."""
    before = fusedrnn.get_num_threads()
    try:
        results = {}
        for n in (1, 2):
            fusedrnn.set_num_threads(n)
            for reverse in (False, True):
                results[n, reverse] = run(fusedrnn, cell, args, kw, cot, opt, reverse)
    finally:
        fusedrnn.set_num_threads(before)
    return results


def _assert_same_across_threads(results, what):
    for reverse in (False, True):
        for a, b in zip(_all_arrays(*results[1, reverse]), _all_arrays(*results[2, reverse])):
            assert np.array_equal(a, b), f"{what} reverse={reverse}: 1 and 2 threads differ"


@pytest.mark.parametrize("cell,option", GRID, ids=[f"{c}-{o}" for c, o in GRID])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_bitwise_identical_across_thread_counts(cell, option, dtype):
    shape = (9, 37, 21, 130)
    okw, opt = option_kw(cell, option, shape)
    args, kw, cot = make_case(cell, shape, dtype, lengths=True, seed=3, **okw)
    _assert_same_across_threads(_run_threads(cell, args, kw, cot, opt), f"{cell} {option}")


@pytest.mark.parametrize("cell,option", GRID, ids=[f"{c}-{o}" for c, o in GRID])
@pytest.mark.parametrize("N", [1, 2, 9])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_small_batch_paths_and_thread_counts(cell, option, N, dtype):
    # Batch 1 and 2 take the grouped-panel products, grouped by the thread count (H = 256: whole
    # panels in groups, and enough work per step that 2 threads are used, except by the RNN at
    # batch 1); batch 9 the tiled ones, split by rows. Against the reference, and bitwise for 1
    # and 2 threads, forward and reverse.
    shape = (6, N, 9, 256)
    okw, opt = option_kw(cell, option, shape)
    args, kw, cot = make_case(cell, shape, dtype, lengths=N > 1, seed=4, **okw)
    results = _run_threads(cell, args, kw, cot, opt)
    what = f"{cell} {option} {shape} {np.dtype(dtype).name}"
    for reverse in (False, True):
        want = run(ref, cell, [a.astype(np.float64) for a in args], as64(kw), as64(cot), opt,
                   reverse)
        assert_close(results[1, reverse][0], want[0], TOL[dtype], f"{what} reverse={reverse}")
        assert_close(results[1, reverse][1], want[1], TOL[dtype], f"{what} reverse={reverse}")
    _assert_same_across_threads(results, what)


@pytest.mark.parametrize("cell,option", GRID, ids=[f"{c}-{o}" for c, o in GRID])
def test_inference_equals_training_and_backward_repeats(cell, option):
    shape = (6, 5, 4, 67)
    okw, opt = option_kw(cell, option, shape)
    args, kw, cot = make_case(cell, shape, np.float32, lengths=True, seed=5, **okw)
    out, grads = run(fusedrnn, cell, args, kw, cot, opt, reverse=True)
    inf, _ = run(fusedrnn, cell, args, kw, cot, opt, reverse=True, training=False)
    assert inf.cache is None
    for a, b in zip(out[:-1], inf[:-1]):
        assert np.array_equal(a, b), "inference and training forward differ"
    again = getattr(fusedrnn, cell + "_backward")(out.cache, **cot)
    for a, b in zip(grads, again):
        if a is not None:
            assert np.array_equal(a, b), "a second backward on the same cache differs"
            assert a is not b


@pytest.mark.parametrize("proj", [0, 4], ids=["no_proj", "proj"])
def test_padded_steps_are_exact_zeros_and_zero_length_keeps_state(proj):
    args, kw, cot = make_case("lstm", (5, 3, 4, 6), np.float64, proj=proj, seed=7)
    kw["lengths"] = np.array([5, 0, 2])
    out, grads = run(fusedrnn, "lstm", args, kw, cot, None, reverse=True)
    assert np.all(out.y[:, 1] == 0) and np.all(out.y[2:, 2] == 0)
    assert np.array_equal(out.h_n[1], kw["h0"][1]) and np.array_equal(out.c_n[1], kw["c0"][1])
    assert np.all(grads.dx[:, 1] == 0) and np.all(grads.dx[2:, 2] == 0)
    assert np.array_equal(grads.dh0[1], cot["dh_n"][1])
    assert np.array_equal(grads.dc0[1], cot["dc_n"][1])


@pytest.mark.parametrize("P", [0, 3, 6], ids=["no_proj", "proj_P3", "proj_P6"])
def test_core_accumulates_parameter_gradients_and_overwrites_dx(P):
    """The C++ contract: dw_*, db_* (dw_hr too) accumulate (+=); dx, dh0, dc0 are overwritten."""
    T, N, C, H = 4, 3, 5, 7
    R = P or H
    (x, w_ih, w_hh), kw, cot = make_case("lstm", (T, N, C, H), np.float64, peep=True, proj=P,
                                         seed=11)
    out = fusedrnn.lstm_forward(x, w_ih, w_hh, **kw)
    dims = (T, N, C, H, P) if P else (T, N, C, H)
    ws = np.empty(_core.lstm_sizes(dims)[2])
    dx, dh0, dc0 = np.full((T, N, C), 7.0), np.full((N, R), 7.0), np.full((N, H), 7.0)
    acc = [np.zeros((4 * H, C)), np.zeros((4 * H, R)), np.zeros(4 * H), np.zeros(4 * H),
           np.zeros((3, H))]
    dw_hr = np.zeros((P, H)) if P else None
    c = out.cache
    call = lambda: _core.lstm_backward(  # noqa: E731
        dims, x=x, w_ih=w_ih, w_hh=w_hh, w_peep=kw["w_peep"], w_hr=kw.get("w_hr"),
        cache=c.buffer, dy=cot["dy"], dh_n=cot["dh_n"], dc_n=cot["dc_n"], dx=dx, dh0=dh0,
        dc0=dc0, dw_ih=acc[0], dw_hh=acc[1], db_ih=acc[2], db_hh=acc[3], dw_peep=acc[4],
        dw_hr=dw_hr, workspace=ws)
    if P:
        acc.append(dw_hr)
    call()
    first = [a.copy() for a in acc]
    states = [dx.copy(), dh0.copy(), dc0.copy()]
    call()
    for a, f in zip(acc, first):
        assert np.array_equal(a, 2 * f), "parameter gradient did not accumulate"
    for a, f in zip((dx, dh0, dc0), states):
        assert np.array_equal(a, f), "input/state gradient was not overwritten"
    want = fusedrnn.lstm_backward(c, **cot)
    np.testing.assert_allclose(first[0], want.dw_ih, rtol=0, atol=1e-14)
    if P:
        assert np.all(first[-1] != 0)
        np.testing.assert_allclose(first[-1], want.dw_hr, rtol=0, atol=1e-14)


def test_core_keywords_misspelt_missing_or_mistyped_are_type_errors_before_work():
    """The bindings read each keyword by name: a misspelt or unsupported keyword, a missing
    required array and an argument of the wrong type are TypeErrors naming it, and the outputs
    are untouched (nothing ran)."""
    T, N, C, H = 3, 2, 4, 5
    (x, w_ih, w_hh), kw, cot = make_case("lstm", (T, N, C, H), np.float64, seed=3)
    dims = (T, N, C, H)
    y, h_n, c_n = np.full((T, N, H), 7.0), np.full((N, H), 7.0), np.full((N, H), 7.0)
    ws = np.empty(_core.lstm_sizes(dims)[1])
    base = dict(x=x, w_ih=w_ih, w_hh=w_hh, y=y, h_n=h_n, c_n=c_n, workspace=ws)
    _core.lstm_forward(dims, **base, cell_clip=0.5)   # the good call runs
    assert not np.all(y == 7.0)
    y[...] = 7.0
    with pytest.raises(TypeError, match="unexpected keyword argument 'cell_clipp'"):
        _core.lstm_forward(dims, **base, cell_clipp=0.5)
    with pytest.raises(TypeError, match="missing required keyword argument 'w_hh'"):
        _core.lstm_forward(dims, **{k: v for k, v in base.items() if k != "w_hh"})
    with pytest.raises(TypeError, match="cell_clip has an unusable type str"):
        _core.lstm_forward(dims, **base, cell_clip="big")
    assert np.all(y == 7.0)
    # a misspelt option of a backward is refused by name too
    gdims = (T, N, C, H)
    gws = np.empty(_core.gru_sizes(gdims)[2])
    with pytest.raises(TypeError, match="gru_backward\\(\\) got an unexpected keyword argument "
                                        "'weight_packed'"):
        _core.gru_backward(gdims, variant=_core.GruVariant.reset_after, x=x,
                           w_ih=np.zeros((3 * H, C)), w_hh=np.zeros((3 * H, H)),
                           cache=np.zeros(_core.gru_sizes(gdims)[0]), dx=np.zeros_like(x),
                           workspace=gws, weight_packed=True)
    with pytest.raises(TypeError, match="variant has an unusable type str"):
        _core.gru_backward(gdims, variant="reset_after", x=x, w_ih=np.zeros((3 * H, C)),
                           w_hh=np.zeros((3 * H, H)), cache=np.zeros(_core.gru_sizes(gdims)[0]),
                           dx=np.zeros_like(x), workspace=gws)


def test_core_dims_argument_and_errors_of_the_kernel_bindings():
    """The kernel bindings (vectorcall functions reading the call's keywords directly) take dims
    positionally or by keyword, refuse a non-tuple dims or extra positional arguments with a
    TypeError naming the function, report the kernel's own checks as ValueError, and read a
    keyword whose name is not UTF-8-encodable as an unexpected one."""
    T, N, C, H = 3, 2, 4, 5
    (x, w_ih, w_hh), kw, cot = make_case("lstm", (T, N, C, H), np.float64, seed=3)
    dims = (T, N, C, H)
    y, h_n, c_n = np.empty((T, N, H)), np.empty((N, H)), np.empty((N, H))
    ws = np.empty(_core.lstm_sizes(dims)[1])
    base = dict(x=x, w_ih=w_ih, w_hh=w_hh, y=y, h_n=h_n, c_n=c_n, workspace=ws)
    _core.lstm_forward(dims, **base)
    want = y.copy()
    y[...] = 0
    _core.lstm_forward(dims=dims, **base)
    assert np.array_equal(y, want)
    with pytest.raises(TypeError, match=r"lstm_forward\(\): dims must be a tuple .* got list"):
        _core.lstm_forward(list(dims), **base)
    with pytest.raises(TypeError, match=r"lstm_forward\(\) takes 1 positional argument"):
        _core.lstm_forward(dims, x, **base)
    with pytest.raises(TypeError, match=r"lstm_forward\(\) missing required keyword argument "
                                        r"'dims'"):
        _core.lstm_forward(**base)
    with pytest.raises(ValueError):
        _core.lstm_forward((T, N, C, 0), **base)     # the kernel's size query refuses H = 0
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        _core.lstm_forward(dims, **base, **{"\udc80": 1})
    assert "Keywords" in _core.lstm_forward.__doc__ and "lstm_forward" in \
        _core.lstm_forward.__doc__


def test_concurrent_calls_match_serial():
    """Kernels release the GIL and share no state: threads on separate data match serial calls."""
    cases = [make_case("gru", (8, 6, 10, 40), np.float64, lengths=True, seed=s) for s in range(4)]
    serial = [_all_arrays(*run(fusedrnn, "gru", *c, "reset_before", True)) for c in cases]
    results = [None] * len(cases)

    def work(i):
        for _ in range(5):
            results[i] = _all_arrays(*run(fusedrnn, "gru", *cases[i], "reset_before", True))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, serial):
        for a, b in zip(got, want):
            assert np.array_equal(a, b)


def _shifted(a, k):
    """A C-contiguous copy of `a` starting k elements into a fresh buffer (another alignment)."""
    buf = np.empty(a.size + k, a.dtype)
    out = buf[k:].reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("cell,option", GRID, ids=[f"{c}-{o}" for c, o in GRID])
@pytest.mark.parametrize("shape", [(3, 3, 3, 4), (5, 1, 6, 33), (2, 2, 70, 9)],
                         ids=lambda s: "T%dN%dC%dH%d" % s)
def test_results_do_not_depend_on_memory_alignment(cell, option, shape):
    """Small products must not switch to an address-dependent summation order."""
    okw, opt = option_kw(cell, option, shape)
    args, kw, cot = make_case(cell, shape, np.float64, lengths=True, seed=13, **okw)
    want = _all_arrays(*run(fusedrnn, cell, args, kw, cot, opt, reverse=False))
    for k in range(1, 8):
        sa = [_shifted(a, k) for a in args]
        skw = {n: _shifted(v, k) if v.dtype.kind == "f" else v for n, v in kw.items()}
        scot = {n: _shifted(v, k) for n, v in cot.items()}
        got = _all_arrays(*run(fusedrnn, cell, sa, skw, scot, opt, reverse=False))
        for a, b in zip(got, want):
            assert np.array_equal(a, b), f"{cell} {option}: results change with alignment"


ACTIVATION_INPUTS = [0.0, 1e-30, 1e-8, 0.01, 0.1, 0.1249, 0.1251, 0.5, 1.0, 3.0, 9.0, 20.0, 50.0,
                     88.0, 100.0, 1e4, np.inf]
# Largest relative error allowed against numpy's tanh / sigmoid (a few ulp of each dtype).
ACT_RTOL = {np.float64: 1e-15, np.float32: 1e-6}


def _signed_inputs(dtype):
    v = np.array(ACTIVATION_INPUTS)
    return np.concatenate([v, -v]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_tanh_is_accurate_and_saturates(dtype):
    """An RNN with w_ih = 1, w_hh = 0 and no biases outputs tanh(x) itself."""
    x = _signed_inputs(dtype)
    w_ih, w_hh = np.ones((1, 1), dtype), np.zeros((1, 1), dtype)
    out = fusedrnn.rnn_forward(x.reshape(1, -1, 1), w_ih, w_hh, training=False)
    got, want = out.y.ravel(), np.tanh(x.astype(np.float64))
    err = np.abs(got - want) / np.maximum(np.abs(want), np.finfo(dtype).tiny)
    assert err.max() <= ACT_RTOL[dtype], f"tanh rel error {err.max():.3g} at x={x[err.argmax()]}"
    assert np.all(got[np.isinf(x)] == np.sign(x[np.isinf(x)]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_sigmoid_is_accurate_and_saturates(dtype):
    """A GRU step with w_hh = 0, z's input weight 1, all else 0 and h0 = 1 outputs z = σ(x)."""
    x = _signed_inputs(dtype)
    x = x[np.abs(x) < 80]  # σ(-x) for larger x lies below the smallest normal float32
    w_ih = np.zeros((3, 1), dtype)
    w_ih[1] = 1
    out = fusedrnn.gru_forward(x.reshape(1, -1, 1), w_ih, np.zeros((3, 1), dtype),
                               h0=np.ones((x.size, 1), dtype), training=False)
    got, want = out.y.ravel(), 1 / (1 + np.exp(-x.astype(np.float64)))
    err = np.abs(got - want) / want
    assert err.max() <= ACT_RTOL[dtype], f"sigmoid error {err.max():.3g} at x={x[err.argmax()]}"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_nan_input_propagates(cell):
    args, kw, cot = make_case(cell, (3, 2, 4, 5), np.float64, bias=True, state=True)
    args[0][1, 0, 2] = np.nan
    out = getattr(fusedrnn, cell + "_forward")(*args, **kw, training=False)
    assert np.all(np.isfinite(out.y[0])) and np.all(np.isfinite(out.y[:, 1]))
    assert np.all(np.isnan(out.y[1:, 0])), "NaN did not reach the outputs of its sequence"


def test_forward_workspace_does_not_grow_with_sequence_length():
    """Inference over a long sequence needs the state and one chunk of the input projection."""
    for sizes in (_core.lstm_sizes, _core.gru_sizes, _core.rnn_sizes):
        assert sizes((1000, 1, 64, 64))[1] == sizes((100000, 1, 64, 64))[1]
        assert sizes((1000, 8, 64, 64))[1] == sizes((100000, 8, 64, 64))[1]
    proj = _core.lstm_sizes
    assert proj((1000, 8, 64, 64, 16))[1] == proj((100000, 8, 64, 64, 16))[1]


def test_lstm_sizes_without_projection_equal_P_0():
    """dims (T, N, C, H) and (T, N, C, H, 0) are the same problem."""
    for dims in [(1, 1, 1, 1), (7, 3, 5, 33), (40, 30, 5, 7)]:
        assert _core.lstm_sizes(dims) == _core.lstm_sizes(dims + (0,))


@pytest.mark.parametrize("cell,flag", [("lstm", None), ("gru", "reset_after"),
                                       ("gru", "reset_before"), ("rnn", "tanh")])
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_weights_packed_reuses_the_workspace_weights(cell, flag, precision):
    """Options::weights_packed: the kernel takes w_ih and w_hh from the workspace, where an
    earlier call (other T, N and direction) packed them; the arrays passed are not read. The
    same for the bf16 weights of precision bfloat16 (its workspace sized for it)."""
    C, H, G = 5, 9, {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    rng = np.random.default_rng(3)
    w = [rng.standard_normal((G * H, n)).astype(np.float32) for n in (C, H)]
    other = [rng.standard_normal(a.shape).astype(np.float32) for a in w]
    b = [rng.standard_normal(G * H).astype(np.float32) for _ in range(2)]
    sizes = getattr(_core, cell + "_sizes")

    def call(T, N, weights, packed, ws, reverse=False, threads=1):
        x = np.random.default_rng(T * N).standard_normal((T, N, C)).astype(np.float32)
        y, h_n = np.empty((T, N, H), np.float32), np.empty((N, H), np.float32)
        prec = _core.Precision.__members__[precision]
        wsv = ws[:sizes((T, N, C, H), precision=prec)[1]]
        kw = dict(x=x, w_ih=weights[0], w_hh=weights[1], b_ih=b[0], b_hh=b[1], y=y, h_n=h_n,
                  workspace=wsv, reverse=reverse, num_threads=threads, weights_packed=packed,
                  precision=prec)
        if cell == "lstm":
            kw["c_n"] = np.empty((N, H), np.float32)
        elif cell == "gru":
            kw["variant"] = _core.GruVariant.__members__[flag]
        else:
            kw["nonlinearity"] = _core.Nonlinearity.__members__[flag]
        getattr(_core, cell + "_forward")((T, N, C, H), **kw)
        return y

    ws = np.empty(sizes((8, 3, C, H), precision=_core.Precision.__members__[precision])[1],
                  np.float32)
    call(8, 3, w, False, ws)                     # packs w
    for T, N, reverse, threads in [(4, 2, True, 2), (8, 3, False, 1), (1, 1, False, 2)]:
        fresh = np.empty_like(ws)
        want = call(T, N, w, False, fresh, reverse, threads)
        got = call(T, N, other, True, ws, reverse, threads)  # `other` is ignored
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(call(4, 2, other, False, ws), call(4, 2, w, False, fresh))


@pytest.mark.parametrize("cell,flag,P", [("lstm", None, 0), ("lstm", None, 3),
                                         ("gru", "reset_after", 0), ("gru", "reset_before", 0),
                                         ("rnn", "tanh", 0), ("rnn", "relu", 0)])
@pytest.mark.parametrize("dtype,precision", [(np.float64, "float32"), (np.float32, "float32"),
                                             (np.float32, "bfloat16")],
                         ids=["f64", "f32", "bf16"])
def test_backward_weights_packed_reuses_the_workspace_weights(cell, flag, P, dtype, precision):
    """Options::weights_packed in backward: the kernel takes the (transposed) packed weights
    from the backward workspace, where an earlier backward with the same dims packed them (its
    direction, lengths and thread count may differ); the weight arrays passed are not read, and
    every gradient is bit for bit the one of a call that packs. The same for the bf16 training
    backward (precision bfloat16: its bf16 weights, and the projection's fp32 ones)."""
    prec = _core.Precision.__members__[precision]
    T, N, C, H, G = 4, 3, 5, 6, {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    R = P or H
    dims = (T, N, C, H, P) if P else (T, N, C, H)
    rng = np.random.default_rng(5)
    w = {"w_ih": rng.standard_normal((G * H, C)), "w_hh": rng.standard_normal((G * H, R))}
    if P:
        w["w_hr"] = rng.standard_normal((P, H))
    w = {k: (v * 0.4).astype(dtype) for k, v in w.items()}
    junk = {k: np.full_like(v, np.nan) for k, v in w.items()}
    x = rng.standard_normal((T, N, C)).astype(dtype)
    cache_n, fws_n, bws_n = getattr(_core, cell + "_sizes")(dims, precision=prec)
    extra = {"precision": prec}
    if cell == "gru":
        extra["variant"] = _core.GruVariant.__members__[flag]
    elif cell == "rnn":
        extra["nonlinearity"] = _core.Nonlinearity.__members__[flag]

    def forward(reverse, lengths):
        cache = np.empty(cache_n, dtype)
        kw = dict(x=x, y=np.empty((T, N, R), dtype), h_n=np.empty((N, R), dtype), cache=cache,
                  workspace=np.empty(fws_n, dtype), reverse=reverse, lengths=lengths, **w,
                  **extra)
        if cell == "lstm":
            kw["c_n"] = np.empty((N, H), dtype)
        getattr(_core, cell + "_forward")(dims, **kw)
        return cache

    def backward(cache, weights, ws, packed, reverse, lengths, threads=1):
        g = {"dx": np.empty((T, N, C), dtype), "dh0": np.empty((N, R), dtype),
             "dw_ih": np.zeros((G * H, C), dtype), "dw_hh": np.zeros((G * H, R), dtype),
             "db_ih": np.zeros(G * H, dtype), "db_hh": np.zeros(G * H, dtype)}
        if cell == "lstm":
            g["dc0"] = np.empty((N, H), dtype)
            if P:
                g["dw_hr"] = np.zeros((P, H), dtype)
        getattr(_core, cell + "_backward")(
            dims, x=x, cache=cache, dy=np.ones((T, N, R), dtype), workspace=ws,
            reverse=reverse, lengths=lengths, num_threads=threads, weights_packed=packed,
            **weights, **g, **extra)
        return g

    ws = np.empty(bws_n, dtype)
    c0 = forward(False, None)
    backward(c0, w, ws, False, False, None)            # packs w into ws
    for reverse, lengths, threads in [(True, np.array([4, 0, 2]), 2), (False, None, 1),
                                      (False, np.array([1, 4, 3]), 2)]:
        cache = forward(reverse, lengths)
        want = backward(cache, w, np.empty(bws_n, dtype), False, reverse, lengths, threads)
        got = backward(cache, junk, ws, True, reverse, lengths, threads)   # junk is not read
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    bad = backward(c0, junk, ws, False, False, None)   # packing the junk: NaN gradients
    assert np.isnan(bad["dx"]).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_reference_gemm_computes_the_product(dtype, threads):
    """The benchmark's sgemm yardstick (Eigen's GEMM built like the kernels) computes a @ b, on
    odd shapes and with more threads than column packets: within the componentwise error bound
    of a length-k dot product, k*eps*(|a| @ |b|)."""
    rng = np.random.default_rng(7)
    eps = np.finfo(dtype).eps
    for m, k, n in [(1, 1, 1), (37, 53, 71), (5, 300, 17), (64, 33, 130), (3, 8, 2)]:
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        c = np.full((m, n), np.nan, dtype)
        _core.reference_gemm(a, b, c, threads)
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        err = np.abs(c - a64 @ b64)
        assert np.all(err <= k * eps * (np.abs(a64) @ np.abs(b64))), (m, k, n, err.max())


# cell_clip (TF1's LSTMCell(cell_clip)): the kernels against the reference, clip active or not.
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (4, 1, 3, 17), (5, 4, 7, 70), (3, 2, 5, 48)],
                         ids=lambda s: "T%dN%dC%dH%d" % s)
@pytest.mark.parametrize("option", [False, True, "proj", "peep+proj"])
@pytest.mark.parametrize("lengths,reverse", [(False, False), (True, True)], ids=["full", "ragged"])
def test_cell_clip_kernel_matches_reference(option, shape, dtype, lengths, reverse):
    okw, _ = option_kw("lstm", option, shape)
    args, kw, cot = make_case("lstm", shape, dtype, lengths=lengths, seed=5, **okw)
    args = [args[0] * 4, *args[1:]]         # larger inputs: larger cells, the clip bites
    plain = run(fusedrnn, "lstm", args, kw, cot, None, reverse)[0]
    clip = 0.9 * float(np.quantile(np.abs(plain.c_n), 0.5)) or 0.1
    args64 = [a.astype(np.float64) for a in args]
    while True:   # no pre-clip |c| within rounding of the bound (the two sides could differ)
        cache = ref.lstm_forward(*args64, **as64(dict(kw, cell_clip=clip)), reverse=reverse).cache
        c_pre = cache["f"] * cache["c_prev"] + cache["i"] * cache["g"]
        if np.min(np.abs(np.abs(c_pre) - clip)) > 1e-4 * clip:
            break
        clip *= 1.003
    kw = dict(kw, cell_clip=clip)
    got_out, got_grads = run(fusedrnn, "lstm", args, kw, cot, None, reverse)
    want_out, want_grads = run(ref, "lstm", [a.astype(np.float64) for a in args], as64(kw),
                               as64(cot), None, reverse)
    what = f"lstm {option} {shape} {np.dtype(dtype).name} cell_clip={clip:.3g}"
    ran = kw["lengths"] > 0 if lengths else slice(None)   # a length-0 row keeps its c0
    assert np.abs(got_out.c_n[ran]).max() <= np.float64(dtype(clip))
    assert_close(got_out, want_out, TOL[dtype], what)
    assert_close(got_grads, want_grads, TOL[dtype], what)
    # inference equals training; a second backward equals the first
    inf = run(fusedrnn, "lstm", args, kw, cot, None, reverse, training=False)[0]
    assert np.array_equal(inf.y, got_out.y) and np.array_equal(inf.c_n, got_out.c_n)


def test_cell_clip_is_checked_and_off_is_bitwise_the_plain_lstm():
    args, kw, cot = make_case("lstm", (4, 3, 5, 9), np.float32, peep=True, seed=2)
    plain = fusedrnn.lstm_forward(*args, **kw)
    for off in (None, 0, 0.0):
        o = fusedrnn.lstm_forward(*args, **kw, cell_clip=off)
        assert np.array_equal(o.y, plain.y) and np.array_equal(o.c_n, plain.c_n)
        g, g0 = fusedrnn.lstm_backward(o.cache, **cot), fusedrnn.lstm_backward(plain.cache, **cot)
        assert all(a is None and b is None or np.array_equal(a, b) for a, b in zip(g, g0))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^lstm_forward: cell_clip must be a finite number "
                                             r">= 0 \(0 = no clip\)"):
            fusedrnn.lstm_forward(*args, **kw, cell_clip=bad)
    with pytest.raises(TypeError, match=r"^lstm_forward: cell_clip must be None or a number"):
        fusedrnn.lstm_forward(*args, **kw, cell_clip="1")
    with pytest.raises(ValueError, match=r"^LSTM: cell_clip must be None or a finite number > 0"):
        fusedrnn.LSTM(3, 4, cell_clip=0.0)


def test_cell_clip_layer_equals_functional_and_round_trips_its_config():
    layer = fusedrnn.LSTM(5, 9, num_layers=2, bidirectional=True, cell_clip=0.25,
                          dtype="float64", seed=1)
    x = np.random.default_rng(0).standard_normal((6, 2, 5)) * 3
    y, (h, c) = layer(x)
    assert np.abs(c).max() <= 0.25
    w = dict(layer.named_parameters())
    o = fusedrnn.lstm_forward(x, w["weight_ih_l0"].data, w["weight_hh_l0"].data,
                              w["bias_ih_l0"].data, w["bias_hh_l0"].data, cell_clip=0.25)
    assert np.array_equal(o.c_n, c[0])
    dx = layer.backward(np.ones_like(y))
    assert np.isfinite(dx).all()
    assert layer.config()["cell_clip"] == 0.25
    assert "cell_clip" not in fusedrnn.LSTM(5, 9).config()
    from fusedrnn.module import module_from_config
    twin = module_from_config(layer.config())
    assert twin.cell_clip == 0.25
