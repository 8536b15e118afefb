"""Single-step cells: a loop of cells against the fused layer, torch's cells and finite
differences; packed-weight staleness; bad input."""
import numpy as np
import pytest

import fusedrnn
from fusedrnn import Parameter, _core, cells, optim

KINDS = [
    ("LSTM", {}), ("LSTM", {"peepholes": True}), ("LSTM", {"proj_size": 3}),
    ("GRU", {"variant": "reset_after"}), ("GRU", {"variant": "reset_before"}),
    ("RNN", {"nonlinearity": "tanh"}), ("RNN", {"nonlinearity": "relu"}),
]
T, N, C, H = 5, 3, 4, 6


def make_cell(mode, kw, dtype="float64", seed=0, bias=True):
    return getattr(cells, mode + "Cell")(C, H, bias, dtype=dtype, seed=seed, **kw)


def make_layer(mode, kw, cell):
    layer = getattr(fusedrnn, mode)(C, H, bias=cell.bias, dtype=cell.dtype, **kw)
    layer.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    return layer


def run_loop(cell, xs, state):
    outs, st = [], state
    for t in range(xs.shape[0]):
        st = cell(xs[t], st)
        outs.append(st[0] if isinstance(st, tuple) else st)
    return outs, st


def back_loop(cell, douts, d_final):
    """Reverse-order backward: returns dxs [T, N, C] and the initial state's gradient."""
    lstm = isinstance(cell, cells.LSTMCell)
    d_state = d_final
    dxs = []
    for t in reversed(range(len(douts))):
        dh = d_state[0] + douts[t] if lstm else d_state + douts[t]
        dx, d_state = cell.backward((dh, d_state[1])) if lstm else cell.backward(dh)
        dxs.append(dx)
    return np.stack(dxs[::-1]), d_state


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode,kw", KINDS)
def test_loop_equals_layer(mode, kw, dtype):
    rng = np.random.default_rng(1)
    cell = make_cell(mode, kw, dtype)
    layer = make_layer(mode, kw, cell)
    R = cell.state_size
    xs = rng.standard_normal((T, N, C)).astype(dtype)
    h0 = rng.standard_normal((N, R)).astype(dtype)
    c0 = rng.standard_normal((N, H)).astype(dtype)
    state = (h0, c0) if mode == "LSTM" else h0
    outs, final = run_loop(cell, xs, state)
    y, final_l = layer(xs, (h0[None], c0[None]) if mode == "LSTM" else h0[None])
    np.testing.assert_array_equal(np.stack(outs), y)   # same kernel, T=1 per step: bit for bit
    if mode == "LSTM":
        np.testing.assert_array_equal(final[1], final_l[1][0])

    dy = rng.standard_normal(y.shape).astype(dtype)
    dhn = rng.standard_normal((N, R)).astype(dtype)
    dcn = rng.standard_normal((N, H)).astype(dtype)
    d_final = (dhn, dcn) if mode == "LSTM" else dhn
    dxs, d0 = back_loop(cell, list(dy), d_final)
    dx_l = layer.backward(dy, (dhn[None], dcn[None]) if mode == "LSTM" else dhn[None])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dxs, dx_l, **tol)
    if mode == "LSTM":
        np.testing.assert_allclose(d0[0], layer.d_state[0][0], **tol)
        np.testing.assert_allclose(d0[1], layer.d_state[1][0], **tol)
    else:
        np.testing.assert_allclose(d0, layer.d_state[0], **tol)
    for name, p in cell.named_parameters():
        np.testing.assert_allclose(p.grad, layer._parameters[name + "_l0"].grad, **tol,
                                   err_msg=name)


@pytest.mark.parametrize("mode,kw", [k for k in KINDS if k[1].get("variant") != "reset_before"
                                     and not k[1].get("peepholes")])
def test_finite_differences_through_loop(mode, kw):
    rng = np.random.default_rng(2)
    cell = make_cell(mode, kw)
    R = cell.state_size
    xs = rng.standard_normal((3, 2, C))
    h0 = rng.standard_normal((2, R))
    c0 = rng.standard_normal((2, H))
    state = (h0, c0) if mode == "LSTM" else h0
    w_out = rng.standard_normal((3, 2, R))

    def loss():
        cell.weights_changed()
        outs, _ = run_loop(cell, xs, state)
        return float(sum((o * w).sum() for o, w in zip(outs, w_out)))

    cell.zero_grad()
    loss()
    zero = (np.zeros((2, R)), np.zeros((2, H))) if mode == "LSTM" else np.zeros((2, R))
    dxs, d0 = back_loop(cell, list(w_out), zero)
    eps = 1e-6

    def fd(arr, idx):
        old = arr[idx]
        arr[idx] = old + eps
        lp = loss()
        arr[idx] = old - eps
        lm = loss()
        arr[idx] = old
        cell.clear_tape()
        return (lp - lm) / (2 * eps)

    grads = {n: p.grad.copy() for n, p in cell.named_parameters()}
    for name, p in cell.named_parameters():
        for idx in [(0,) * p.data.ndim, tuple(s - 1 for s in p.data.shape)]:
            assert abs(fd(p.data, idx) - grads[name][idx]) < 1e-7, name
    for idx in [(0, 0, 0), (2, 1, C - 1), (1, 0, 2)]:
        assert abs(fd(xs, idx) - dxs[idx]) < 1e-7
    assert abs(fd(h0, (1, R - 1)) - (d0[0] if mode == "LSTM" else d0)[1, R - 1]) < 1e-7
    if mode == "LSTM":
        assert abs(fd(c0, (0, 1)) - d0[1][0, 1]) < 1e-7


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("mode,kw", [("LSTM", {}), ("GRU", {}), ("RNN", {}),
                                     ("RNN", {"nonlinearity": "relu"})])
def test_vs_torch_cells(mode, kw):
    torch.manual_seed(0)
    tcell = getattr(torch.nn, mode + "Cell")(C, H, **kw).double()
    cell = make_cell(mode, kw)
    cell.load_state_dict(tcell.state_dict())
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((T, N, C))
    h0 = rng.standard_normal((N, H))
    c0 = rng.standard_normal((N, H))
    txs = torch.tensor(xs, requires_grad=True)
    th0 = torch.tensor(h0, requires_grad=True)
    tc0 = torch.tensor(c0, requires_grad=True)
    st = (th0, tc0) if mode == "LSTM" else th0
    touts = []
    for t in range(T):
        st = tcell(txs[t], st)
        touts.append(st[0] if mode == "LSTM" else st)
    w = rng.standard_normal((T, N, H))
    sum((o * torch.tensor(wt)).sum() for o, wt in zip(touts, w)).backward()

    outs, _ = run_loop(cell, xs, (h0, c0) if mode == "LSTM" else h0)
    np.testing.assert_allclose(np.stack(outs), torch.stack(touts).detach().numpy(), atol=1e-10)
    zero = (np.zeros((N, H)), np.zeros((N, H))) if mode == "LSTM" else np.zeros((N, H))
    dxs, d0 = back_loop(cell, list(w), zero)
    np.testing.assert_allclose(dxs, txs.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(d0[0] if mode == "LSTM" else d0, th0.grad.numpy(), atol=1e-10)
    if mode == "LSTM":
        np.testing.assert_allclose(d0[1], tc0.grad.numpy(), atol=1e-10)
    tp = dict(tcell.named_parameters())
    for name, p in cell.named_parameters():
        np.testing.assert_allclose(p.grad, tp[name].grad.numpy(), atol=1e-10, err_msg=name)


# -- packed weights: never stale --------------------------------------------------------------------

def _fresh_step(cell, x, h):
    twin = type(cell)(C, H, dtype=cell.dtype)
    twin.load_state_dict(cell.state_dict())
    return twin(x, h)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_packed_weights_follow_optimiser_and_loads(mode):
    rng = np.random.default_rng(4)
    cell = make_cell(mode, {})
    x = rng.standard_normal((N, C))
    st = cell(x)   # packs
    h = st[0] if mode == "LSTM" else st
    cell.backward(np.ones_like(h))
    opt = optim.SGD(cell.parameters(), lr=0.5)
    opt.step()     # weights change in place, after backward
    after = cell(x, st)
    np.testing.assert_array_equal(after[0] if mode == "LSTM" else after,
                                  (lambda r: r[0] if mode == "LSTM" else r)(_fresh_step(cell, x, st)))

    # load_state_dict in place
    cell.eval()
    new = {k: rng.standard_normal(v.shape) for k, v in cell.state_dict().items()}
    cell(x, st)
    cell.load_state_dict(new)
    got = cell(x, st)
    want = _fresh_step(cell, x, st)
    np.testing.assert_array_equal(got[0] if mode == "LSTM" else got,
                                  want[0] if mode == "LSTM" else want)

    # replacing Parameter.data
    cell(x, st)
    cell.weight_hh.data = rng.standard_normal(cell.weight_hh.shape)
    got = cell(x, st)
    want = _fresh_step(cell, x, st)
    np.testing.assert_array_equal(got[0] if mode == "LSTM" else got,
                                  want[0] if mode == "LSTM" else want)

    # an in-place write announced with weights_changed()
    cell(x, st)
    cell.weight_ih.data *= 0.5
    cell.weights_changed()
    got = cell(x, st)
    want = _fresh_step(cell, x, st)
    np.testing.assert_array_equal(got[0] if mode == "LSTM" else got,
                                  want[0] if mode == "LSTM" else want)

    # reuse off: every step packs, so even an unannounced write is seen
    cell.reuse_packed_weights = False
    cell(x, st)
    cell.weight_ih.data *= 0.5
    got = cell(x, st)
    want = _fresh_step(cell, x, st)
    np.testing.assert_array_equal(got[0] if mode == "LSTM" else got,
                                  want[0] if mode == "LSTM" else want)


def test_packed_reuse_is_used_and_batch_may_change():
    """Reusing the packed weights (and growing N between steps) gives the results of packing."""
    rng = np.random.default_rng(5)
    a = make_cell("LSTM", {"proj_size": 2}, "float32")
    b = make_cell("LSTM", {"proj_size": 2}, "float32")
    b.reuse_packed_weights = False
    a.eval(), b.eval()
    for n in (1, 4, 2, 7):
        x = rng.standard_normal((n, C)).astype(np.float32)
        for _ in range(2):
            np.testing.assert_array_equal(a(x)[0], b(x)[0])
    # a's plan holds packed weights for the next step, b's never does
    assert _core.cell_plan_packed(a._plan)[0] and not _core.cell_plan_packed(b._plan)[0]


def _loop_grads(cell, xs, dy, reuse=True, between=None):
    """Forward over xs, backward with dy at every step; `between(t)` runs between the backward
    calls (before step t's). Returns (dxs, d_state, grads)."""
    cell.reuse_packed_weights = reuse
    cell.zero_grad()
    run_loop(cell, xs, None)
    lstm = isinstance(cell, cells.LSTMCell)
    d, dxs = None, []
    for t in reversed(range(xs.shape[0])):
        if between is not None:
            between(t)
        dh = dy[t] if d is None else (d[0] if lstm else d) + dy[t]
        dx, d = cell.backward((dh, None if d is None else d[1])) if lstm else cell.backward(dh)
        dxs.append(dx)
    return np.stack(dxs), d, {k: p.grad.copy() for k, p in cell.named_parameters()}


@pytest.mark.parametrize("mode,kw", KINDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backward_reuses_packed_weights_bit_for_bit(mode, kw, dtype):
    """Backward packs once per loop (Options::weights_packed from the second step on): the
    gradients equal, bit for bit, those of a cell that packs at every step; the backward
    workspace keeps the packed weights (key set), and a new loop after an optimiser step packs
    the new weights again."""
    rng = np.random.default_rng(6)
    a, b = make_cell(mode, kw, dtype), make_cell(mode, kw, dtype)
    xs = rng.standard_normal((T, N, C)).astype(dtype)
    dy = rng.standard_normal((T, N, a.state_size)).astype(dtype)
    for loop in range(2):
        ga = _loop_grads(a, xs, dy)
        gb = _loop_grads(b, xs, dy, reuse=False)
        np.testing.assert_array_equal(ga[0], gb[0])
        for k in ga[2]:
            np.testing.assert_array_equal(ga[2][k], gb[2][k], err_msg=k)
        assert _core.cell_plan_packed(a._plan)[1] and not _core.cell_plan_packed(b._plan)[1]
        for cell in (a, b):   # an optimiser step between the loops
            optim.SGD(cell.parameters(), lr=0.3).step()


def test_backward_sees_weight_changes_between_its_calls():
    """A write between two backward calls of one loop: weights_changed() makes the next backward
    pack again (its gradients then use the new weights, as a packing cell's do)."""
    rng = np.random.default_rng(7)
    xs = rng.standard_normal((T, N, C))
    dy = rng.standard_normal((T, N, H))
    results = []
    for reuse in (True, False):
        cell = make_cell("GRU", {})

        def between(t, cell=cell):
            if t == 2:
                cell.weight_hh.data *= 0.5
                cell.weights_changed()
        results.append(_loop_grads(cell, xs, dy, reuse=reuse, between=between))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    for k in results[0][2]:
        np.testing.assert_array_equal(results[0][2][k], results[1][2][k], err_msg=k)


def test_bad_input():
    cell = make_cell("LSTM", {})
    x = np.zeros((2, C))
    with pytest.raises(ValueError, match=r"x must have shape \[N, C\]"):
        cell(np.zeros((2, C + 1)))
    with pytest.raises(TypeError, match="x must have dtype float64"):
        cell(np.zeros((2, C), np.float32))
    with pytest.raises(TypeError, match=r"state must be a tuple \(h"):
        cell(x, np.zeros((2, H)))
    with pytest.raises(ValueError, match=r"state\[1\] \(c\) must have shape \[2, 6\]"):
        cell(x, (np.zeros((2, H)), np.zeros((3, H))))
    gru = make_cell("GRU", {})
    with pytest.raises(ValueError, match=r"state must have shape \[2, 6\]"):
        gru(x, np.zeros((2, H + 1)))
    gru(x)
    with pytest.raises(ValueError, match=r"d_h must have shape \[2, 6\]"):
        gru.backward(np.zeros((1, H)))
    gru.backward(np.zeros((2, H)))
    with pytest.raises(RuntimeError, match="no recorded step"):
        gru.backward(np.zeros((2, H)))
    with pytest.raises(ValueError, match="hidden_size"):
        cells.RNNCell(3, 0)
    for P in (H, H + 1):   # refused when made, as torch's LSTMCell does, not at the first step
        with pytest.raises(ValueError, match=rf"proj_size must be < hidden_size = {H} .*, got {P}"):
            cells.LSTMCell(C, H, proj_size=P)


def test_eval_records_nothing_and_state_none_starts_a_sequence():
    cell = make_cell("RNN", {})
    x = np.ones((2, C))
    h = cell(x)
    cell(x, h)
    assert len(cell._tape) == 2
    cell(x)
    assert len(cell._tape) == 1
    cell.eval()
    cell(x, h)
    assert len(cell._tape) == 0


# -- the C++ per-step path (python/bindings/cell_step.cc) and its Python fallback ----------------

def _python_only(monkeypatch):
    """Sends every step down the Python path (the C++ path answering None, as it does for
    what it does not take)."""
    monkeypatch.setattr(cells, "_cell_forward", lambda *a: None)
    monkeypatch.setattr(cells, "_cell_backward", lambda *a: None)


def _counting(monkeypatch):
    """Counts the steps the C++ path ran (answers other than None)."""
    count = {"forward": 0, "backward": 0}
    for name, key in (("_cell_forward", "forward"), ("_cell_backward", "backward")):
        real = getattr(cells, name)

        def wrapped(*a, real=real, key=key):
            r = real(*a)
            count[key] += r is not None
            return r
        monkeypatch.setattr(cells, name, wrapped)
    return count


def _train_loop(cell, xs, state, dy):
    outs, final = run_loop(cell, xs, state)
    lstm = isinstance(cell, cells.LSTMCell)
    d, dxs = None, []
    for t in reversed(range(xs.shape[0])):
        dh = dy[t] if d is None else (d[0] if lstm else d) + dy[t]
        dx, d = cell.backward((dh, None if d is None else d[1])) if lstm else cell.backward(dh)
        dxs.append(dx)
    return outs, dxs, d, {k: p.grad.copy() for k, p in cell.named_parameters()}


@pytest.mark.parametrize("mode,kw", KINDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_cpp_path_equals_python_path(mode, kw, dtype, with_state, bias, monkeypatch):
    """The C++ per-step path gives the Python path's outputs and gradients bit for bit (the same
    kernel calls), over two training loops with an optimiser step between and an eval loop;
    and it is the path the steps took."""
    rng = np.random.default_rng(11)
    xs = rng.standard_normal((T, N, C)).astype(dtype)
    proto = make_cell(mode, kw, dtype, bias=bias)
    R = proto.state_size
    dy = rng.standard_normal((T, N, R)).astype(dtype)
    state = None
    if with_state:
        h0 = rng.standard_normal((N, R)).astype(dtype)
        state = (h0, rng.standard_normal((N, H)).astype(dtype)) if mode == "LSTM" else h0

    def run(cell):
        got = []
        for _ in range(2):
            cell.train()
            cell.zero_grad()
            got.append(_train_loop(cell, xs, state, dy))
            optim.SGD(cell.parameters(), lr=0.1).step()
        cell.eval()
        got.append(run_loop(cell, xs, state))
        return got

    with monkeypatch.context() as m:
        count = _counting(m)
        fast = run(make_cell(mode, kw, dtype, bias=bias))
        assert count == {"forward": 3 * T, "backward": 2 * T}
    with monkeypatch.context() as m:
        _python_only(m)
        slow = run(make_cell(mode, kw, dtype, bias=bias))

    def flat(o):
        if isinstance(o, np.ndarray):
            return [o]
        if isinstance(o, dict):
            return [v for k in sorted(o) for v in flat(o[k])]
        if o is None:
            return [np.array(np.nan)]
        return [v for e in o for v in flat(e)]
    a, b = flat(fast), flat(slow)
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_arrays_the_cpp_path_does_not_take_fall_back(mode, monkeypatch):
    """Strided x, state and gradients, a list state, a float32 array for a float64 cell: the
    Python path copies or raises as before, with the results of contiguous arrays."""
    rng = np.random.default_rng(12)
    cell, ref = make_cell(mode, {}), make_cell(mode, {})
    xs = rng.standard_normal((N, T, C))     # xs[:, t] is strided
    count = _counting(monkeypatch)
    st = rs = None
    for t in range(T):
        st = cell(xs[:, t], st if st is None or mode == "GRU" else list(st))
        rs = ref(np.ascontiguousarray(xs[:, t]), rs)
        for u, v in zip(st if mode == "LSTM" else [st], rs if mode == "LSTM" else [rs]):
            np.testing.assert_array_equal(u, v)
    # cell's steps (strided x) went the Python way, ref's the C++ way
    assert count["forward"] == T
    big = rng.standard_normal((N, 2 * cell.state_size))
    d = big[:, ::2]                         # strided gradient
    if mode == "LSTM":
        dx, ds = cell.backward(d, d.copy())
        rx, rds = ref.backward(np.ascontiguousarray(d), d.copy())
    else:
        dx, ds = cell.backward(d)
        rx, rds = ref.backward(np.ascontiguousarray(d))
    assert count["backward"] == 1
    np.testing.assert_array_equal(dx, rx)
    for u, v in zip(ds if mode == "LSTM" else [ds], rds if mode == "LSTM" else [rds]):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(TypeError, match="x must have dtype float64"):
        cell(np.zeros((N, C), np.float32))
    with pytest.raises(ValueError, match=r"must have shape \[N, C\]"):
        cell(np.zeros(C))
    if mode == "GRU":
        cell(xs[:, 0].copy())
        with pytest.raises(ValueError, match="d_c is for LSTMCell only"):
            cell.backward(np.zeros((N, H)), np.zeros((N, H)))


@pytest.mark.parametrize("path", ["C++", "Python"])
def test_refilling_one_input_array_changes_no_gradient(path, monkeypatch):
    """The tape records a copy of each step's x: a loop that refills one input buffer
    (buf[...] = data[t]) gets the gradients of fresh arrays."""
    rng = np.random.default_rng(23)
    data = rng.standard_normal((T, N, C))
    if path == "Python":
        _python_only(monkeypatch)
    grads = []
    for reuse in (True, False):
        cell = make_cell("GRU", {})
        buf, h = np.empty((N, C)), None
        for t in range(T):
            if reuse:
                buf[...] = data[t]
            h = cell(buf if reuse else data[t].copy(), h)
        d, dxs = np.ones((N, H)), []
        while d is not None:
            dx, d = cell.backward(d if len(dxs) == 0 else d + 1.0)
            dxs.append(dx)
        grads.append([p.grad.copy() for p in cell.parameters()] + dxs)
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


class _Holder(fusedrnn.module.Module):
    """A parent module holding a cell (its load_state_dict and io.load reach the cell's
    Parameters without the cell's own methods)."""

    def __init__(self, mode):
        super().__init__()
        self.cell = make_cell(mode, {})


def _change_by(how, cell, rng, tmp_path):
    """Changes cell's weights the way `how` names, as user code would (no weights_changed())."""
    new = {k: rng.standard_normal(v.shape) for k, v in cell.state_dict().items()}
    if how == "assign array":              # Module.__setattr__: copied into the Parameter
        cell.weight_ih = new["weight_ih"]
    elif how == "data -=":                 # the setter runs: p.data = p.data.__isub__(...)
        cell.weight_hh.data -= 0.25 * new["weight_hh"]
    elif how == "optimiser, no backward":  # gradients from elsewhere, then a step
        for p in cell.parameters():
            p.grad[...] = rng.standard_normal(p.shape)
        optim.Adam(cell.parameters(), lr=0.1).step()
    elif how == "AdamW decay only":        # zero gradients: only the decoupled decay moves them
        optim.AdamW(cell.parameters(), lr=0.5, weight_decay=0.5).step()
    elif how == "parent load_state_dict":
        parent = _Holder("GRU")
        parent.cell = cell
        parent.load_state_dict({"cell." + k: v for k, v in new.items()})
    elif how == "io.load into a parent":
        from fusedrnn import io
        parent = _Holder("GRU")
        parent.cell = cell
        source = _Holder("GRU")
        source.cell = type(cell)(C, H, dtype=cell.dtype, seed=7)
        io.save(str(tmp_path / "m.ckpt"), source)
        io.load(str(tmp_path / "m.ckpt"), parent)
    elif how == "data replaced twice":     # the first array freed: its address may come back
        cell.weight_ih.data = new["weight_ih"] * 0
        cell.weight_ih.data = new["weight_ih"]
    elif how == "shared, other cell trains":
        other = type(cell)(C, H, dtype=cell.dtype, seed=3)
        for name, p in cell.named_parameters():
            setattr(other, name, p)        # the same Parameter objects
        other.train()
        x = rng.standard_normal((N, C))
        h = other(x)
        other.backward(np.ones_like(h))
        optim.SGD(other.parameters(), lr=0.7).step()
    elif how == "raw write + Parameter.changed()":
        cell.weight_hh.data[...] = new["weight_hh"]
        cell.weight_hh.changed()
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("path", ["C++", "Python"])
@pytest.mark.parametrize("how", [
    "assign array", "data -=", "optimiser, no backward", "AdamW decay only",
    "parent load_state_dict", "io.load into a parent", "data replaced twice",
    "shared, other cell trains", "raw write + Parameter.changed()"])
def test_packed_weights_see_every_library_route(how, path, tmp_path):
    """Every change to a Parameter that goes through the library (the Module's assignment and
    loads, a parent's, fusedrnn.io, the optimisers, another cell sharing it, Parameter.data
    assigned) reaches a cell holding packed copies: its next step equals a fresh cell's on the
    same weights. The GRU cell here also steps between forward and backward as a user's
    evaluation would (the packed weights are fresh then). path: contiguous arrays (the C++
    per-step path) or a strided x (the Python path)."""
    rng = np.random.default_rng(21)
    cell = make_cell("GRU", {})
    cell.eval()
    x = rng.standard_normal((N, 2 * C))[:, ::2] if path == "Python" else \
        rng.standard_normal((N, C))
    assert x.flags.c_contiguous == (path == "C++")
    h = rng.standard_normal((N, H))
    for _ in range(2):
        cell(x, h)                         # packs, then reuses
    _change_by(how, cell, rng, tmp_path)
    got = cell(x, h)
    want = _fresh_step(cell, np.ascontiguousarray(x), h)
    np.testing.assert_array_equal(got, want)


def test_packed_weights_after_forward_backward_forward_then_step():
    """forward, backward, forward (an evaluation before the step: it packs the pre-step
    weights), optimiser step, forward: the last forward multiplies with the stepped weights."""
    rng = np.random.default_rng(22)
    for mode in ("LSTM", "GRU", "RNN"):
        cell = make_cell(mode, {})
        opt = optim.SGD(cell.parameters(), lr=1.0)
        x = rng.standard_normal((N, C))
        st = cell(x)
        cell.backward(np.ones_like(st[0] if mode == "LSTM" else st))
        cell(x)
        opt.step()                         # (train mode kept: eval() would repack anyway)
        got = cell(x)
        want = _fresh_step(cell, x, None)
        np.testing.assert_array_equal(got[0] if mode == "LSTM" else got,
                                      want[0] if mode == "LSTM" else want)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_replaced_parameter_object_is_seen(mode):
    """cell.<weight> = Parameter(...) (a new Parameter object, not new data): the next step
    multiplies with it."""
    rng = np.random.default_rng(13)
    cell = make_cell(mode, {})
    cell.eval()
    x = rng.standard_normal((N, C))
    st = cell(x)
    cell(x, st)
    cell.weight_ih = fusedrnn.module.Parameter(rng.standard_normal(cell.weight_ih.shape))
    got = cell(x, st)
    want = _fresh_step(cell, x, st)
    np.testing.assert_array_equal(got[0] if mode == "LSTM" else got,
                                  want[0] if mode == "LSTM" else want)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_step_on_their_own_parameters(how):
    """A copy of a cell that has stepped steps like it, and on its own parameters: changing the
    copy's weights changes neither the original's results nor its packed weights' use."""
    import copy
    import pickle
    rng = np.random.default_rng(14)
    cell = make_cell("LSTM", {"peepholes": True})
    cell.eval()
    x = rng.standard_normal((N, C))
    st = cell(x)
    twin = copy.deepcopy(cell) if how == "deepcopy" else pickle.loads(pickle.dumps(cell))
    assert twin._plan is None
    a, b = cell(x, st), twin(x, st)
    np.testing.assert_array_equal(a[0], b[0])
    twin.weight_hh.data[...] = 0
    twin.weights_changed()
    np.testing.assert_array_equal(cell(x, st)[0], a[0])
    assert not np.array_equal(twin(x, st)[0], a[0])


def test_threads_stepping_one_cell():
    """Threads stepping one cell at once (inference): each gets the single-threaded results
    (a plan busy in one thread sends the other's step down the Python path, with its own
    per-thread workspace)."""
    import threading
    rng = np.random.default_rng(15)
    cell = make_cell("GRU", {}, "float32")
    cell.eval()
    xs = rng.standard_normal((4, 60, 16, C)).astype(np.float32)

    def loop(k):
        st, out = None, []
        for t in range(xs.shape[1]):
            st = cell(xs[k, t], st)
            out.append(st)
        return np.stack(out)
    want = [loop(k) for k in range(4)]
    got = [None] * 4
    threads = [threading.Thread(target=lambda k=k: got.__setitem__(k, loop(k)))
               for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for k in range(4):
        np.testing.assert_array_equal(got[k], want[k])


def test_plan_keeping_the_gil_and_release_buffers():
    """A plan that keeps the GIL (bench/cells.py measures the release's cost) gives the same
    results; release_buffers() drops the plan, the next step makes a new one."""
    rng = np.random.default_rng(16)
    a, b = make_cell("LSTM", {"proj_size": 2}), make_cell("LSTM", {"proj_size": 2})
    b._plan = _core.cell_plan(0, False, b.dtype, C, H, 2, b._parameters, True,
                              release_gil=False)
    x = rng.standard_normal((N, C))
    sa, sb = a(x), b(x)
    np.testing.assert_array_equal(a(x, sa)[0], b(x, sb)[0])
    a.release_buffers()
    assert a._plan is None
    np.testing.assert_array_equal(a(x, sa)[0], b(x, sb)[0])
    assert a._plan is not None


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_kernel_timers_leave_the_cell_exact(mode):
    """bench/cells.py's kernel-alone timers return (wall, cpu) seconds and leave the plan
    unpacked, so the cell's next steps equal a fresh cell's."""
    rng = np.random.default_rng(17)
    cell = make_cell(mode, {}, "float32")
    x = rng.standard_normal((N, C)).astype(np.float32)
    st = cell(x)
    cell(x, st)
    step = cell._tape[-1]
    d = np.ones((N, H), np.float32)
    for t in (_core.cell_kernel_seconds(cell._plan, x, st, 3, 1),
              _core.cell_backward_kernel_seconds(cell._plan, step, d,
                                                 d if mode == "LSTM" else None, 3, 1)):
        assert len(t) == 2 and all(v >= 0 for v in t)
    assert _core.cell_plan_packed(cell._plan) == (False, False)
    cell.eval()
    got = cell(x, st)
    want = _fresh_step(cell, x, st)
    np.testing.assert_array_equal(got[0] if mode == "LSTM" else got,
                                  want[0] if mode == "LSTM" else want)
    with pytest.raises(ValueError, match="not usable"):
        _core.cell_kernel_seconds(cell._plan, x[:, :1], st, 3, 1)


@pytest.mark.parametrize("mode,kw", KINDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_are_computed_alone_bit_for_bit(mode, kw, dtype):
    # Every element of a product is one multiply-add chain over k in order, whatever register
    # tile computes it (packed_gemm.h): 6-row tiles, the 7- and 8-row tail tile over two half
    # panels (batch 7, 8, 13, 14, 32 = 4 x 6 + 8), the grouped panels of batch 1. So a step on
    # N rows gives each row exactly what the step gives that row alone, forward and backward
    # (dx and the state's gradient; the weight gradients sum over the rows). H = 70: partial
    # panels (LSTM 280 gate columns, C = 9 for dx).
    Cn, Hn = 9, 70
    for n_rows in (7, 8, 13, 14, 32):
        rng = np.random.default_rng(n_rows)
        cell = getattr(cells, mode + "Cell")(Cn, Hn, dtype=dtype, seed=1, **kw)
        R = kw.get("proj_size", 0) or Hn
        lstm = mode == "LSTM"
        x = rng.standard_normal((n_rows, Cn)).astype(dtype)
        h0 = rng.standard_normal((n_rows, R)).astype(dtype)
        c0 = rng.standard_normal((n_rows, Hn)).astype(dtype)
        dh = rng.standard_normal((n_rows, R)).astype(dtype)
        dc = rng.standard_normal((n_rows, Hn)).astype(dtype)

        def step(rows):
            st = (h0[rows], c0[rows]) if lstm else h0[rows]
            out = cell(np.ascontiguousarray(x[rows]), st)
            dx, ds = cell.backward((dh[rows], dc[rows])) if lstm else cell.backward(dh[rows])
            return [*(out if lstm else (out,)), dx, *(ds if lstm else (ds,))]

        whole = step(slice(None))
        for i in range(n_rows):
            alone = step(slice(i, i + 1))
            for a, b in zip(whole, alone):
                assert np.array_equal(a[i:i + 1], b), f"{mode} {kw} {dtype} N={n_rows} row {i}"


def test_formula_set_after_construction_is_used():
    """RNNCell.nonlinearity and GRUCell.variant set after construction: checked, used from the
    next forward on (torch.nn.RNNCell reads nonlinearity at every forward) and kept in
    config(); refused while recorded steps wait for backward."""
    x = -5 * np.ones((2, C))
    for mode, name, old, new in (("RNN", "nonlinearity", "tanh", "relu"),
                                 ("GRU", "variant", "reset_after", "reset_before")):
        cell = make_cell(mode, {name: old})
        ref = make_cell(mode, {name: new})
        cell.eval()
        ref.eval()
        cell(x)
        setattr(cell, name, new)
        assert getattr(cell, name) == new and cell.config()[name] == new
        np.testing.assert_array_equal(cell(x), ref(x))
        rebuilt = fusedrnn.module.module_from_config(cell.config())
        assert getattr(rebuilt, name) == new
        with pytest.raises(ValueError, match=name):
            setattr(cell, name, "sigmoid")
        cell.train()
        cell(x)
        with pytest.raises(RuntimeError, match="clear_tape"):
            setattr(cell, name, old)
        cell.clear_tape()
        setattr(cell, name, old)
        ref = make_cell(mode, {name: old})
        for c in (cell, ref):   # a training step and its backward with the formula set
            c.zero_grad()
            c(x)
            c.backward(np.ones((2, H)))
        for (n, p), q in zip(cell.named_parameters(), ref.parameters()):
            np.testing.assert_array_equal(p.grad, q.grad, err_msg=n)


@pytest.mark.parametrize("path", ["forward", "backward"])
def test_replaced_or_deleted_parameter_is_checked(path):
    """A Parameter replaced by one of another shape or dtype, deleted (peepholes) or added
    (bias=False) raises before any work, naming the cell, the parameter, its shape and dtype."""
    x = np.ones((2, C), np.float32)
    cases = [
        ("GRU", {}, "weight_hh", Parameter(np.zeros((3, 3), np.float32)), ValueError,
         r"GRUCell\.%s: weight_hh must be a Parameter of shape \[18, 6\] "
         r"\(\[3\*hidden_size, hidden_size\]\) and dtype float32, got shape \[3, 3\]"),
        ("GRU", {}, "weight_hh", Parameter(np.zeros((18, 6), np.float64)), TypeError,
         r"weight_hh must be .* dtype float32, got dtype float64"),
        ("LSTM", {"peepholes": True}, "weight_peep", None, ValueError,
         r"LSTMCell\.%s: weight_peep is missing .* shape \[3, 6\]"),
        ("LSTM", {"proj_size": 3}, "weight_hr", Parameter(np.zeros((3, 4), np.float32)),
         ValueError, r"weight_hr must be a Parameter of shape \[3, 6\]"),
        ("RNN", {}, "bias_ih", Parameter(np.zeros(7, np.float32)), ValueError,
         r"bias_ih must be a Parameter of shape \[6\]"),
        ("LSTM", {}, "weight_peep", Parameter(np.zeros((3, H), np.float32)), ValueError,
         r"made with peepholes=False"),
    ]
    for mode, kw, name, value, exc, msg in cases:
        cell = make_cell(mode, kw, "float32")
        out = cell(x)
        before = {n: p.grad.copy() for n, p in cell.named_parameters()}
        if value is None:
            delattr(cell, name)
        else:
            setattr(cell, name, value)
        call = (lambda: cell(x, out)) if path == "forward" else (
            lambda: cell.backward(np.ones((2, cell.state_size), np.float32)))
        with pytest.raises(exc, match=msg.replace("%s", path) if "%s" in msg else msg):
            call()
        assert len(cell._tape) == 1   # nothing done
        for n, p in cell.named_parameters():
            if n in before and p.shape == before[n].shape:
                np.testing.assert_array_equal(p.grad, before[n])
    cell = make_cell("LSTM", {}, "float32", bias=False)
    cell.bias_ih = Parameter(np.zeros(4 * H, np.float32))
    with pytest.raises(ValueError, match="made with bias=False"):
        cell(x)


def test_one_cell_trained_from_two_threads_is_refused():
    """A cell has one tape: while one thread's training steps are on it, another thread's
    training forward raises (instead of each backward differentiating the other's steps);
    inference from other threads goes on; once the tape is empty any thread may train."""
    import threading
    cell = make_cell("GRU", {})
    x = np.ones((N, C))
    st = cell(x)
    st = cell(x, st)
    errors, outs = [], []

    def other():
        try:
            outs.append(cell(x))
        except RuntimeError as e:
            errors.append(str(e))
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and "another thread's training steps" in errors[0]
    assert len(cell._tape) == 2
    d = cell.backward(np.ones((N, H)))[1]
    cell.backward(np.ones((N, H)) + d)
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and len(outs) == 1 and len(cell._tape) == 1
    with pytest.raises(RuntimeError, match="another thread"):
        cell(x)
    cell.clear_tape()
    cell(x)
    cell.eval()
    t = threading.Thread(target=lambda: outs.append(cell(x)))
    t.start()
    t.join()
    assert len(outs) == 2


def test_repr_shows_non_default_arguments():
    assert repr(cells.LSTMCell(4, 6)) == "LSTMCell(4, 6)"
    assert repr(cells.LSTMCell(4, 6, False, proj_size=3, peepholes=True, dtype="float64")) == \
        "LSTMCell(4, 6, bias=False, proj_size=3, peepholes=True, dtype=float64)"
    assert repr(cells.GRUCell(4, 6, variant="reset_before")) == \
        "GRUCell(4, 6, variant='reset_before')"
    c = cells.RNNCell(4, 6, nonlinearity="relu")
    assert repr(c) == "RNNCell(4, 6, nonlinearity='relu')"
    c.nonlinearity = "tanh"
    assert repr(c) == "RNNCell(4, 6)"


def test_release_buffers_clears_the_tape():
    cell = make_cell("LSTM", {})
    cell(np.ones((N, C)))
    cell.release_buffers()
    with pytest.raises(RuntimeError, match="no recorded step"):
        cell.backward(np.ones((N, H)))


def test_cell_load_state_dict_returns_the_keys():
    """A cell's load_state_dict returns (missing_keys, unexpected_keys) as Module's and torch's
    do (it returned None), and still invalidates the packed weights."""
    cell = fusedrnn.LSTMCell(3, 4, seed=0)
    other = fusedrnn.LSTMCell(3, 4, seed=1)
    x = np.ones((2, 3), np.float32)
    h_other = other(x)[0]
    res = cell.load_state_dict(other.state_dict())
    assert res == ([], []) and res._fields == ("missing_keys", "unexpected_keys")
    np.testing.assert_array_equal(cell(x)[0], h_other)
    sd = dict(other.state_dict())
    del sd["bias_hh"]
    assert cell.load_state_dict(sd, strict=False).missing_keys == ["bias_hh"]
