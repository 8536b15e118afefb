"""``input_grad=False``: a backward that does not compute the input's gradient (the input is data,
as a torch input without requires_grad) skips that product and gives every other gradient bit
for bit as a backward that computes it; through the functional kernels (rectangular and ragged,
reverse, float32 / float64 / bfloat16), the regularised kernels (layer norm, per-gate input
masks), the layers, the single-step cells (C++ and Python paths, mixed within one loop: the
backward's packed weights serve both), and fusedrnn.torch (x without requires_grad)."""
import numpy as np
import pytest

import fusedrnn
from fusedrnn import cells
from fusedrnn import functional as F
from fusedrnn import regularised as K
from test_cells import _python_only
from test_ragged import CASES, _args

T, N, C, H = 5, 3, 4, 6


def _eq(a, b, what):
    assert (a is None) == (b is None), what
    if a is not None:
        assert a.dtype == b.dtype and a.shape == b.shape, what
        np.testing.assert_array_equal(a, b, err_msg=what)


@pytest.mark.parametrize("kind,kw,G", CASES)
@pytest.mark.parametrize("dtype,precision", [("float64", "float32"), ("float32", "float32"),
                                             ("float32", "bfloat16")])
@pytest.mark.parametrize("lengths", [None, [5, 2, 4]])
@pytest.mark.parametrize("reverse", [False, True])
def test_functional(kind, kw, G, dtype, precision, lengths, reverse):
    args, extra = _args(kind, kw, G, dtype, T=T, N=N, C=C, H=H, seed=3)
    if lengths is not None:
        extra["lengths"] = np.array(lengths, np.int64)
    out = getattr(F, kind + "_forward")(**args, **extra, reverse=reverse, precision=precision)
    rng = np.random.default_rng(4)
    R = kw.get("P", 0) or H
    cot = [rng.standard_normal(s).astype(dtype) for s in [(T, N, R), (N, R)]
           + ([(N, H)] if kind == "lstm" else [])]
    bwd = getattr(F, kind + "_backward")
    full = bwd(out.cache, *cot)
    part = bwd(out.cache, *cot, input_grad=False)
    assert full.dx is not None and part.dx is None
    for name in full._fields[1:]:
        _eq(getattr(part, name), getattr(full, name), name)


@pytest.mark.parametrize("cell", ["lstm_ln", "gru_ln"])
@pytest.mark.parametrize("layer_norm", ["none", "haste"])
@pytest.mark.parametrize("gate_masks", [False, True])
def test_regularised(cell, layer_norm, gate_masks):
    rng = np.random.default_rng(5)
    G = 4 if cell == "lstm_ln" else 3
    r = lambda *s: rng.standard_normal(s)  # noqa: E731
    args = [r(T, N, C), r(G * H, C), r(G * H, H), r(G * H), r(G * H), r(N, H)]
    if cell == "lstm_ln":
        args.append(r(N, H))
    kw = dict(layer_norm=layer_norm, recurrent_mask=(rng.random((N, H)) > 0.3) / 0.7)
    if layer_norm != "none":
        kw.update(ln_gamma_ih=1 + r(G * H), ln_gamma_hh=1 + r(G * H))
        if cell == "lstm_ln":
            kw["ln_gamma_c"] = 1 + r(H)
    if gate_masks:
        kw.update(gate_masks=True, input_mask=(rng.random((G, N, C)) > 0.2) / 0.8,
                  recurrent_mask=(rng.random((G, N, H)) > 0.3) / 0.7)
    out = getattr(K, cell + "_forward")(*args, **kw)
    cot = [r(T, N, H), r(N, H)] + ([r(N, H)] if cell == "lstm_ln" else [])
    bwd = getattr(K, cell + "_backward")
    full = bwd(out[-1], *cot)
    part = bwd(out[-1], *cot, input_grad=False)
    assert full["dx"] is not None and part["dx"] is None
    for name in full:
        if name != "dx":
            _eq(part[name], full[name], name)


@pytest.mark.parametrize("mode,kw", [("LSTM", {}), ("GRU", {}), ("RNN", {}),
                                     ("LSTM", {"input_dropout": 0.3}),
                                     ("LSTM", {"layer_norm": "haste", "input_dropout": 0.3}),
                                     ("GRU", {"layer_norm": "haste"})])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layers(mode, kw, bidirectional):
    got = []
    for input_grad in (True, False):
        layer = getattr(fusedrnn, mode)(C, H, num_layers=2, bidirectional=bidirectional,
                                        dtype="float64", seed=1, **kw)
        layer.train()
        x = np.random.default_rng(8).standard_normal((T, N, C))
        lengths = np.array([5, 3, 4])
        y, _ = layer(x, lengths=lengths)
        dx = layer.backward(np.random.default_rng(9).standard_normal(y.shape),
                            input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        got.append({k: p.grad.copy() for k, p in layer.named_parameters()})
    assert got[0].keys() == got[1].keys()
    for k in got[0]:
        _eq(got[1][k], got[0][k], k)


def _cell_loop(mode, dtype, pattern, python_path, monkeypatch):
    """A training loop of T steps, then its backward with input_grad per step from pattern."""
    if python_path:
        _python_only(monkeypatch)
    rng = np.random.default_rng(11)
    cell = getattr(cells, mode + "Cell")(C, H, dtype=dtype, seed=2)
    cell.train()
    xs = rng.standard_normal((T, N, C)).astype(dtype)
    h0 = rng.standard_normal((N, H)).astype(dtype)
    st = (h0, h0 * 0.5) if mode == "LSTM" else h0
    for t in range(T):
        st = cell(xs[t], st)
    d = (np.ones((N, H), dtype), np.zeros((N, H), dtype)) if mode == "LSTM" else \
        np.ones((N, H), dtype)
    dxs = []
    for t in reversed(range(T)):
        dx, d = cell.backward(*(d if mode == "LSTM" else (d,)), input_grad=pattern[t])
        assert (dx is None) == (not pattern[t])
        dxs.append(dx)
    return dxs[::-1], d, {k: p.grad.copy() for k, p in cell.named_parameters()}


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("python_path", [False, True])
def test_cells(mode, dtype, python_path, monkeypatch):
    full = _cell_loop(mode, dtype, [True] * T, python_path, monkeypatch)
    # none, and mixed: backward runs from the last step, so the first call has no dx and the
    # later calls with dx reuse the weights it packed
    for pattern in ([False] * T, [True, False, True, True, False]):
        part = _cell_loop(mode, dtype, pattern, python_path, monkeypatch)
        for t in range(T):
            _eq(part[0][t], full[0][t] if pattern[t] else None, f"dx at step {t}")
        for a, b in zip(part[1] if mode == "LSTM" else (part[1],),
                        full[1] if mode == "LSTM" else (full[1],)):
            _eq(a, b, "d_state")
        for k in full[2]:
            _eq(part[2][k], full[2][k], k)


def test_bad_input_grad():
    x = np.zeros((T, N, C), np.float32)
    out = F.gru_forward(x, np.zeros((3 * H, C), np.float32), np.zeros((3 * H, H), np.float32))
    with pytest.raises(TypeError, match="gru_backward: input_grad must be a bool, got str"):
        F.gru_backward(out.cache, input_grad="no")
    cell = cells.LSTMCell(C, H)
    cell.train()
    cell(x[0])
    with pytest.raises(TypeError, match="LSTMCell.backward: input_grad must be a bool, got int"):
        cell.backward(np.zeros((N, H), np.float32), input_grad=0)
    layer = fusedrnn.RNN(C, H)
    layer.train()
    layer(x)
    with pytest.raises(TypeError, match="RNN.backward: input_grad must be a bool, got NoneType"):
        layer.backward(None, input_grad=None)
    cell.backward(np.zeros((N, H), np.float32), input_grad=np.bool_(False))  # numpy bools do


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_torch_x_without_requires_grad(name):
    import fusedrnn.torch as frt
    cell = name.endswith("Cell")
    got = []
    for requires in (True, False):
        torch.manual_seed(0)
        m = getattr(frt, name)(C, H, **({} if cell else {"num_layers": 2})).double()
        x = torch.randn((N, C) if cell else (T, N, C), dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1)).requires_grad_(requires)
        out = m(x)
        y = out if cell and name != "LSTMCell" else out[0]
        (y * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)).sum().backward()
        assert (x.grad is not None) == requires
        got.append({k: p.grad.clone() for k, p in m.named_parameters()})
    for k in got[0]:
        assert torch.equal(got[0][k], got[1][k]), k
