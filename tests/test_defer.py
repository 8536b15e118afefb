"""Deferred weight gradients of the single-step cells (python/bindings/cell_step.cc, Defer): at
batch N <= 8 the C++ path's backward steps hand their weight-gradient products to the cell's
plan, which applies up to 32 / N steps' (at least 8) at once (gemm_tn_add_terms). Every
gradient must be bit for bit what adding them at each step gives (cells made with
``cells._DEFER = False``), whenever and however it is looked at: at the end of a loop, in the
middle of one (Parameter.grad applies the pending terms), after zero_grad or a replaced grad
array, with a Parameter shared by two cells, across the Python path, a copy, or a cell dropped
with terms pending."""
import copy
import gc
import pickle

import numpy as np
import pytest

import fusedrnn
import fusedrnn.optim
from fusedrnn import _core, cells

C, H = 7, 13   # (4H = 52, 3H = 39: partial row tiles for the GRU, partial column tiles: C = 7)

KINDS = [
    ("lstm", fusedrnn.LSTMCell, {}),
    ("lstm_peep_proj", fusedrnn.LSTMCell, dict(peepholes=True, proj_size=5)),
    ("gru", fusedrnn.GRUCell, {}),
    ("gru_before", fusedrnn.GRUCell, dict(variant="reset_before")),
    ("rnn_tanh", fusedrnn.RNNCell, {}),
    ("rnn_relu", fusedrnn.RNNCell, dict(nonlinearity="relu")),
]


def _make(cls, kw, defer, dtype="float32", seed=1, monkeypatch=None, size=(C, H)):
    old = cells._DEFER
    cells._DEFER = defer
    try:
        return cls(*size, seed=seed, dtype=dtype, **kw)
    finally:
        cells._DEFER = old


def _xs(T, N, dtype, seed=0, c=C):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((N, c)).astype(dtype) for _ in range(T)]


def _forward(cell, xs, state=None):
    outs = []
    for x in xs:
        state = cell(x, state)
        outs.append(state)
    return outs


def _backward_steps(cell, outs, steps, d=None, seed=5, hook=None):
    """`steps` backward calls from the latest recorded step down; d: the state gradient reaching
    the first of them. hook(i) runs before call i."""
    rng = np.random.default_rng(seed)
    for i in range(steps):
        o = outs[len(outs) - 1 - i]
        h = o[0] if isinstance(o, tuple) else o
        dh = rng.standard_normal(h.shape).astype(h.dtype)
        if d is not None:
            dh = (dh + d[0], d[1]) if isinstance(d, tuple) else dh + d
        if hook is not None:
            hook(i)
        _, d = cell.backward(dh, input_grad=bool(i % 2))
    return d


def _grads(cell):
    return {n: p.grad.copy() for n, p in cell.named_parameters()}


def _same(a, b):
    assert a.keys() == b.keys()
    for n in a:
        np.testing.assert_array_equal(a[n], b[n], err_msg=n)


@pytest.mark.parametrize("name,cls,kw", KINDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("N", [1, 3, 4, 8])
@pytest.mark.parametrize("T", [1, 6, 19, 70])   # (up to 32 / N steps a batch, at least 8)
def test_loops_bitwise(name, cls, kw, dtype, N, T):
    """Two training loops (forward T steps, backward all of them), deferred and not."""
    got = {}
    for defer in (False, True):
        cell = _make(cls, kw, defer, dtype)
        for rep in range(2):
            outs = _forward(cell, _xs(T, N, dtype, seed=rep))
            _backward_steps(cell, outs, T, seed=rep)
            if defer:
                assert _core.cell_pending_steps(cell._plan) == 0   # (the loop's end applied them)
        got[defer] = _grads(cell)
    _same(got[False], got[True])


@pytest.mark.parametrize("name,cls,kw", [KINDS[0], KINDS[1], KINDS[2], KINDS[4]])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("N", [1, 2])
@pytest.mark.parametrize("threads", [1, 2])
def test_loops_bitwise_wide(name, cls, kw, dtype, N, threads):
    """Gradients wide enough for whole column panels of gemm_tn_add_terms (16 float32 or 8
    float64 columns; C = 7 and H = 13 give no whole float32 panel): C = 37, H = 21 (4H = 84,
    3H = 63 rows: whole tiles and a remainder; 37 and 21 columns: whole panels and a partial
    one). At N = 1 every term has one row and the whole tiles take the rank-1 kernel
    (terms_tile_k1); 40 steps are two batches of 32 and 8."""
    wide_c, wide_h, T = 37, 21, 40
    before = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(threads)
    try:
        got = {}
        for defer in (False, True):
            cell = _make(cls, kw, defer, dtype, seed=3, size=(wide_c, wide_h))
            xs = _xs(T, N, dtype, seed=7, c=wide_c)
            for rep in range(2):
                outs = _forward(cell, xs)
                _backward_steps(cell, outs, T, seed=rep)
            got[defer] = _grads(cell)
        _same(got[False], got[True])
    finally:
        fusedrnn.set_num_threads(before)


@pytest.mark.parametrize("N", [4, 8])    # (8 steps a batch at both)
def test_terms_do_wait(N):
    """The terms really are deferred (else the other tests test nothing): pending between the
    steps of a loop, the Parameters marked, all applied at its end."""
    cell = _make(fusedrnn.LSTMCell, {}, True)
    outs = _forward(cell, _xs(12, N, "float32"))
    seen = []
    _backward_steps(cell, outs, 12, hook=lambda i: seen.append(
        (_core.cell_pending_steps(cell._plan), cell.weight_ih._pending is not None)))
    assert [s for s, _ in seen] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3]
    assert all(m for s, m in seen if s)
    assert _core.cell_pending_steps(cell._plan) == 0 and cell.weight_ih._pending is None


def test_batches_over_8_add_at_once():
    cell = _make(fusedrnn.GRUCell, {}, True)
    outs = _forward(cell, _xs(4, 9, "float32"))
    _backward_steps(cell, outs, 2)
    assert _core.cell_pending_steps(cell._plan) == 0


@pytest.mark.parametrize("name,cls,kw", KINDS[:3])
@pytest.mark.parametrize("threads", [1, 2])
def test_grad_read_mid_loop(name, cls, kw, threads):
    """Reading every Parameter's grad between two backward steps, and an optimiser step after a
    partly differentiated loop (steps left on the tape), give the step-by-step values."""
    before = fusedrnn.get_num_threads()
    fusedrnn.set_num_threads(threads)
    try:
        snaps = {}
        for defer in (False, True):
            cell = _make(cls, kw, defer)
            outs = _forward(cell, _xs(15, 2, "float32"))
            seen = []
            _backward_steps(cell, outs, 11,
                            hook=lambda i: seen.append(_grads(cell)) if i in (3, 10) else None)
            seen.append(_grads(cell))        # 4 steps still on the tape
            opt = fusedrnn.optim.SGD(cell.parameters(), lr=0.1)
            opt.step()
            seen.append({n: p.data.copy() for n, p in cell.named_parameters()})
            snaps[defer] = seen
        for a, b in zip(snaps[False], snaps[True]):
            _same(a, b)
    finally:
        fusedrnn.set_num_threads(before)


def test_zero_grad_and_replaced_grad_mid_loop():
    """zero_grad between two steps drops what came before, as at each step; a grad array
    replaced between two steps gets the earlier steps' terms, the new one the later ones."""
    res = {}
    for defer in (False, True):
        cell = _make(fusedrnn.LSTMCell, {}, defer)
        outs = _forward(cell, _xs(10, 3, "float32"))
        kept = {}

        def hook(i):
            if i == 3:
                cell.zero_grad()
            if i == 6:
                kept["old"] = cell.weight_hh.grad
                cell.weight_hh.grad = np.zeros_like(cell.weight_hh.data)
        _backward_steps(cell, outs, 10, hook=hook)
        res[defer] = (_grads(cell), kept["old"].copy())
    _same(res[False][0], res[True][0])
    np.testing.assert_array_equal(res[False][1], res[True][1])


def test_shared_parameter_interleaved():
    """Two cells sharing weight_hh, their backward steps interleaved: each contribution lands in
    the order it was made (the second cell applies the first one's pending terms first)."""
    res = {}
    for defer in (False, True):
        a = _make(fusedrnn.GRUCell, {}, defer, seed=1)
        b = _make(fusedrnn.GRUCell, {}, defer, seed=2)
        b.weight_hh = a.weight_hh
        oa = _forward(a, _xs(9, 2, "float32", seed=1))
        ob = _forward(b, _xs(9, 2, "float32", seed=2))
        da = db = None
        rng = np.random.default_rng(7)
        for i in range(9):
            for cell, outs, d in ((a, oa, da), (b, ob, db)):
                dh = rng.standard_normal((2, H)).astype(np.float32)
                _, d = cell.backward(dh if d is None else dh + d)
                if cell is a:
                    da = d
                else:
                    db = d
        res[defer] = (_grads(a), _grads(b))
    _same(res[False][0], res[True][0])
    _same(res[False][1], res[True][1])


def test_python_path_mid_loop(monkeypatch):
    """A step down the Python path (here: a strided d_h) between deferred steps: it reads grad,
    which applies the pending terms first, so the order stays."""
    res = {}
    for defer in (False, True):
        cell = _make(fusedrnn.LSTMCell, {}, defer)
        outs = _forward(cell, _xs(8, 2, "float32"))
        rng = np.random.default_rng(3)
        d = None
        for i in range(8):
            dh = rng.standard_normal((2, 2 * H)).astype(np.float32)[:, ::2]   # strided
            if i != 4:
                dh = np.ascontiguousarray(dh)
            _, d = cell.backward(dh if d is None else (dh + d[0], d[1]))
        res[defer] = _grads(cell)
    _same(res[False], res[True])


def test_copy_and_pickle_mid_loop():
    """A copy (deepcopy, pickle) made between two steps carries the gradients so far."""
    ref = _make(fusedrnn.LSTMCell, {}, False)
    cell = _make(fusedrnn.LSTMCell, {}, True)
    for c in (ref, cell):
        outs = _forward(c, _xs(10, 1, "float32"))
        _backward_steps(c, outs, 5)
    assert _core.cell_pending_steps(cell._plan) == 5
    want = _grads(ref)
    for dup in (copy.deepcopy(cell), pickle.loads(pickle.dumps(cell))):
        _same(want, {n: p.grad for n, p in dup.named_parameters()})
        assert all(p._pending is None for p in dup.parameters())


def _pending(cls, N, steps=6):
    """(want, cell): the gradients of the last `steps` backward steps of a 10-step loop added
    at each step, and a deferring cell of the same loop with those steps' terms pending."""
    ref = _make(cls, {}, False)
    _backward_steps(ref, _forward(ref, _xs(10, N, "float32")), steps)
    cell = _make(cls, {}, True)
    _backward_steps(cell, _forward(cell, _xs(10, N, "float32")), steps)
    assert _core.cell_pending_steps(cell._plan) == steps
    return _grads(ref), cell


def test_cell_dropped_with_terms_pending():
    """The plan applies its pending terms when it is freed: Parameters kept beyond their cell
    (or a cell's plan rebuilt, reuse_packed_weights set) lose nothing."""
    want, cell = _pending(fusedrnn.RNNCell, 3)
    params = dict(cell.named_parameters())
    del cell
    gc.collect()
    _same(want, {n: p.grad for n, p in params.items()})

    _, cell = _pending(fusedrnn.RNNCell, 3)
    cell.reuse_packed_weights = True   # (drops the plan)
    _same(want, _grads(cell))


def test_cell_dropped_in_a_thread_waits_for_the_gradient_lock():
    """A plan freed with terms pending adds them under the gradient lock, as every other
    addition into the grad arrays is made: while another thread holds it (a backward step of a
    cell sharing the Parameters, adding with the GIL released), the dying plan waits."""
    import threading
    want, cell = _pending(fusedrnn.LSTMCell, 2)
    params = dict(cell.named_parameters())
    before = {n: p._grad.copy() for n, p in params.items()}
    box = [cell]
    del cell
    done = threading.Event()

    def drop():
        box.pop()   # the last reference: the plan dies here
        gc.collect()
        done.set()

    with cells._GRAD_LOCK:
        t = threading.Thread(target=drop)
        t.start()
        assert not done.wait(0.3), "the dying plan did not wait for the gradient lock"
        _same(before, {n: p._grad.copy() for n, p in params.items()})
    t.join(10)
    assert done.is_set()
    _same(want, {n: p.grad for n, p in params.items()})


def test_gemm_tn_add_terms_checks():
    """The C++ entry point checks its arguments (through a plan: bad terms cannot reach it from
    Python, so the kernel-side checks are exercised in tests/cpp/test_gradcheck.cc)."""
    cell = _make(fusedrnn.LSTMCell, {}, True)
    _core.cell_flush(cell._new_plan())   # nothing pending: nothing to do


def test_grad_read_from_another_thread():
    """Another thread reading grad (applying the pending terms) while the loops run: the reads
    wait for a kernel call in flight and change no value."""
    import threading
    ref = _make(fusedrnn.LSTMCell, {}, False)
    cell = _make(fusedrnn.LSTMCell, {}, True)
    for r in range(3):
        _backward_steps(ref, _forward(ref, _xs(30, 2, "float32", seed=r)), 30, seed=r)
    done = threading.Event()
    reads = []

    def reader():
        while not done.is_set():
            reads.append(float(cell.weight_hh.grad[0, 0]))
    t = threading.Thread(target=reader)
    t.start()
    try:
        for r in range(3):
            _backward_steps(cell, _forward(cell, _xs(30, 2, "float32", seed=r)), 30, seed=r)
    finally:
        done.set()
        t.join()
    assert reads
    _same(_grads(ref), _grads(cell))


@pytest.mark.parametrize("NB", [8, 32])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_shared_parameter_with_a_cell_adding_at_once(NB, dtype):
    """Two cells sharing weight_hh, one deferring (N = 2), the other at N = 32 adding at each
    step (or N = 8, deferring too): the second applies the first's pending terms before adding
    (bit for bit the step-by-step order, not only at N <= 8)."""
    res = {}
    for defer in (False, True):
        a = _make(fusedrnn.GRUCell, {}, defer, dtype, seed=1)
        b = _make(fusedrnn.GRUCell, {}, defer, dtype, seed=2)
        b.weight_hh = a.weight_hh
        oa = _forward(a, _xs(12, 2, dtype, seed=1))
        ob = _forward(b, _xs(12, NB, dtype, seed=2))
        da = db = None
        rng = np.random.default_rng(7)
        for i in range(12):
            dh = rng.standard_normal((2, H)).astype(dtype)
            _, da = a.backward(dh if da is None else dh + da)
            dh = rng.standard_normal((NB, H)).astype(dtype)
            _, db = b.backward(dh if db is None else dh + db)
        res[defer] = (_grads(a), _grads(b))
    _same(res[False][0], res[True][0])
    _same(res[False][1], res[True][1])


@pytest.mark.parametrize("N", [2, 32])
def test_cells_sharing_parameters_trained_in_two_threads(N):
    """Two cells sharing every Parameter, each trained in its own thread at once (the kernels
    add into the grad arrays with the GIL released): no addition is lost, the gradients are the
    sum of the two loops run one after the other (to rounding: the order of the additions
    differs). Lost updates were 0.1-1.3 off here, in one trial of two or three."""
    import threading
    wide_c, wide_h, T = 64, 64, 40

    def make():
        a = fusedrnn.LSTMCell(wide_c, wide_h, dtype="float64", seed=1)
        b = fusedrnn.LSTMCell(wide_c, wide_h, dtype="float64", seed=2)
        for n, p in a.named_parameters():
            setattr(b, n, p)
        return a, b

    def loop(cell, seed):
        rng = np.random.default_rng(seed)
        xs = rng.standard_normal((T, N, wide_c))
        dys = rng.standard_normal((T, N, wide_h))
        for _ in range(3):
            st = None
            for t in range(T):
                st = cell(xs[t], st)
            d = None
            for t in reversed(range(T)):
                d = cell.backward(dys[t] if d is None else (dys[t] + d[0], d[1]),
                                  input_grad=False)[1]

    a, b = make()
    loop(a, 1)
    loop(b, 2)
    want = _grads(a)
    for _ in range(6):
        a, b = make()
        threads = [threading.Thread(target=loop, args=(a, 1)),
                   threading.Thread(target=loop, args=(b, 2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = _grads(a)
        for n in want:
            np.testing.assert_allclose(got[n], want[n], rtol=1e-11, atol=1e-11, err_msg=n)


@pytest.mark.parametrize("name,cls,kw", KINDS[:3])
def test_truncated_backward_and_flush_grads(name, cls, kw):
    """Truncated BPTT (backward through the last 4 of 10 steps) with the grad arrays views of
    one flat buffer (an all-reduce, a fused optimiser): the terms stay pending (the tape is not
    empty) until flush_grads(), which makes the buffer what adding at each step gives; so does
    release_buffers()."""
    res = {}
    for defer in (False, True):
        for how in ("flush_grads", "release_buffers"):
            cell = _make(cls, kw, defer, "float64")
            params = list(cell.parameters())
            flat = np.zeros(sum(p.size for p in params))
            o = 0
            for p in params:
                p.grad = flat[o:o + p.size].reshape(p.shape)
                o += p.size
            outs = _forward(cell, _xs(10, 1, "float64"))
            _backward_steps(cell, outs, 4)
            if defer:
                assert _core.cell_pending_steps(cell._plan) == 4
            getattr(cell, how)()
            res[defer, how] = flat.copy()
    np.testing.assert_array_equal(res[False, "flush_grads"], res[True, "flush_grads"])
    np.testing.assert_array_equal(res[False, "flush_grads"], res[True, "release_buffers"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_own_pending_terms_land_before_the_same_cell_adds_at_once(dtype):
    """A truncated backward at N = 2 leaves terms pending; the cell's next loop runs at N = 16,
    where the backward adds at each step: the pending terms are applied first (they had landed
    after the N = 16 additions: 131 of 252 elements off by rounding)."""
    res = {}
    for defer in (False, True):
        cell = _make(fusedrnn.LSTMCell, {}, defer, dtype)
        _backward_steps(cell, _forward(cell, _xs(6, 2, dtype)), 3)
        cell.clear_tape()
        _backward_steps(cell, _forward(cell, _xs(3, 16, dtype, seed=1)), 3, seed=6)
        res[defer] = _grads(cell)
    _same(res[False], res[True])


def test_grad_read_in_another_thread_at_a_batchs_first_step_loses_no_term():
    """A reader's grad at the first deferred step of a batch (its Parameters marked, its step
    count still 0 while the kernel runs without the GIL) had dropped the marker without applying
    anything, and the batch's later steps were never applied by a read of grad (a truncated
    backward left them pending for good). The read now waits for the step in flight."""
    import threading
    ref = _make(fusedrnn.GRUCell, {}, False, size=(64, 256))

    def train(cell):
        xs = _xs(20, 1, "float32", c=64)
        _backward_steps(cell, _forward(cell, xs), 19)

    train(ref)
    for trial in range(12):
        cell = _make(fusedrnn.GRUCell, {}, True, size=(64, 256))
        done = threading.Event()

        def reader():
            while not done.is_set():
                cell.weight_hh.grad   # noqa: B018

        t = threading.Thread(target=reader)
        t.start()
        try:
            train(cell)
        finally:
            done.set()
            t.join()
        # weight_hh's grad first: reading weight_ih's would apply the whole batch for both
        np.testing.assert_array_equal(cell.weight_hh.grad, ref.weight_hh.grad)
        _same(_grads(ref), _grads(cell))


@pytest.mark.parametrize("N", [1, 16])
@pytest.mark.parametrize("which", ["weight_ih", "bias_hh"])
def test_read_only_grad_is_refused_before_the_step_is_consumed(N, which):
    """A grad array made read-only in place: the backward raises naming the Parameter's grad
    before the step leaves the tape (it had said 'dw_ih must be writeable' after popping it, so
    a retry differentiated the wrong step)."""
    cell = _make(fusedrnn.GRUCell, {}, True)
    outs = _forward(cell, _xs(2, N, "float32"))
    p = getattr(cell, which)
    p.grad.flags.writeable = False
    with pytest.raises(ValueError, match=f"GRUCell.backward: {which}.grad is read-only"):
        cell.backward(np.ones((N, H), np.float32))
    assert len(cell._tape) == 2
    p.grad = p.grad.copy()
    ref = _make(fusedrnn.GRUCell, {}, True)
    _forward(ref, _xs(2, N, "float32"))
    for c in (cell, ref):
        c.backward(np.ones((N, H), np.float32))
        c.backward(np.ones((N, H), np.float32))
    _same(_grads(ref), _grads(cell))
