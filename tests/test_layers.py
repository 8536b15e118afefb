"""Recurrent layers (fusedrnn.LSTM / GRU / RNN): torch parity of outputs, states and every
gradient over a grid of configurations; finite differences of whole layers in float64; dropout;
truncated BPTT; buffer reuse; initialisers; converters; bad arguments."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import fusedrnn

torch = pytest.importorskip("torch")

CLASSES = {"LSTM": fusedrnn.LSTM, "GRU": fusedrnn.GRU, "RNN": fusedrnn.RNN}
TORCH = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}


def make_layer(mode, C, H, dtype, seed=0, **kw):
    return CLASSES[mode](C, H, dtype=dtype, seed=seed, **kw)


def torch_twin(layer):
    """torch module with the layer's configuration and weights."""
    m = fusedrnn.to_torch(layer)
    m.train()
    return m


def torch_run(module, x, state, lengths, d_out, d_state, mode):
    """Outputs, final state and gradients from torch (loss = Σ out·d_out + Σ state·d_state)."""
    batch_first = module.batch_first
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    st = None
    if state is not None:
        st = tuple(torch.from_numpy(s.copy()).requires_grad_(True) for s in state) \
            if mode == "LSTM" else torch.from_numpy(state.copy()).requires_grad_(True)
    inp = xt
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.from_numpy(np.asarray(lengths)), batch_first=batch_first,
            enforce_sorted=False)
    out, fin = module(inp, st)
    if lengths is not None:
        T = x.shape[1] if batch_first else x.shape[0]
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first,
                                                        total_length=T)
    loss = (out * torch.from_numpy(d_out)).sum()
    fins = fin if mode == "LSTM" else (fin,)
    dss = d_state if mode == "LSTM" else (d_state,)
    for f, d in zip(fins, dss):
        loss = loss + (f * torch.from_numpy(d)).sum()
    module.zero_grad()
    loss.backward()
    grads = {k: p.grad.numpy().copy() for k, p in module.named_parameters()}
    dstate = None
    if state is not None:
        dstate = tuple(s.grad.numpy() for s in st) if mode == "LSTM" else st.grad.numpy()
    return (out.detach().numpy(), tuple(f.detach().numpy() for f in fins), xt.grad.numpy(),
            dstate, grads)


def random_inputs(layer, T, N, rng, with_state, with_lengths):
    dt = layer.dtype
    C, L, D = layer.input_size, layer.num_layers, layer.num_directions
    R, H = layer.state_size, layer.hidden_size
    shape = (N, T, C) if layer.batch_first else (T, N, C)
    x = rng.standard_normal(shape).astype(dt)
    state = None
    if with_state:
        h0 = rng.standard_normal((L * D, N, R)).astype(dt)
        state = (h0, rng.standard_normal((L * D, N, H)).astype(dt)) if layer.mode == "LSTM" \
            else h0
    lengths = None
    if with_lengths:
        lengths = rng.integers(1, T + 1, N)
        lengths[0] = T
    oshape = (N, T, D * R) if layer.batch_first else (T, N, D * R)
    d_out = rng.standard_normal(oshape).astype(dt)
    dh = rng.standard_normal((L * D, N, R)).astype(dt)
    d_state = (dh, rng.standard_normal((L * D, N, H)).astype(dt)) if layer.mode == "LSTM" else dh
    return x, state, lengths, d_out, d_state


def fused_run(layer, x, state, lengths, d_out, d_state):
    layer.zero_grad()
    out, fin = layer.forward(x, state, lengths)
    dx = layer.backward(d_out, d_state)
    fins = fin if layer.mode == "LSTM" else (fin,)
    return out, fins, dx, layer.d_state, {k: g.copy() for k, g in layer.grad_dict().items()}


def assert_close(name, got, want, tol):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    scale = max(1.0, float(np.abs(want).max(initial=0)))
    err = float(np.abs(got - want).max(initial=0)) / scale
    assert err <= tol, f"{name}: max relative difference {err:.3g} > {tol}"


def compare(layer, module, T, N, seed, with_state, with_lengths, tol):
    rng = np.random.default_rng(seed)
    args = random_inputs(layer, T, N, rng, with_state, with_lengths)
    got = fused_run(layer, *args)
    want = torch_run(module, *args, layer.mode)
    assert_close("output", got[0], want[0], tol)
    for i, (g, w) in enumerate(zip(got[1], want[1])):
        assert_close(f"final state {i}", g, w, tol)
    assert_close("d_x", got[2], want[2], tol)
    if with_state:
        gs = got[3] if layer.mode == "LSTM" else (got[3],)
        ws = want[3] if layer.mode == "LSTM" else (want[3],)
        for i, (g, w) in enumerate(zip(gs, ws)):
            assert_close(f"d_state {i}", g, w, tol)
    else:
        assert got[3] is None
    assert set(got[4]) == set(want[4])
    for k in want[4]:
        assert_close(f"grad {k}", got[4][k], want[4][k], tol)


GRID = list(itertools.product(
    ["LSTM", "GRU", "RNN"],
    [1, 2],                 # num_layers
    [False, True],          # bidirectional
    [False, True],          # lengths
))


@pytest.mark.parametrize("mode,layers,bidir,with_lengths", GRID)
def test_torch_parity_float64(mode, layers, bidir, with_lengths):
    seed = hash((mode, layers, bidir, with_lengths)) % 1000
    for batch_first, bias, with_state in [(False, True, True), (True, False, False)]:
        kw = {"nonlinearity": "relu"} if mode == "RNN" and bias else {}
        layer = make_layer(mode, 5, 7, "float64", seed=seed, num_layers=layers,
                           bidirectional=bidir, batch_first=batch_first, bias=bias, **kw)
        compare(layer, torch_twin(layer), 6, 4, seed, with_state, with_lengths, 1e-10)


@pytest.mark.parametrize("bidir", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
def test_torch_parity_projection(layers, bidir):
    layer = make_layer("LSTM", 5, 9, "float64", seed=3, num_layers=layers, bidirectional=bidir,
                       proj_size=4)
    compare(layer, torch_twin(layer), 7, 3, 11, True, True, 1e-10)
    compare(layer, torch_twin(layer), 7, 3, 12, False, False, 1e-10)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_torch_parity_float32(mode):
    layer = make_layer(mode, 16, 33, "float32", seed=1, num_layers=2, bidirectional=True)
    compare(layer, torch_twin(layer), 12, 5, 2, True, True, 1e-4)


def test_state_dict_names_match_torch():
    for mode, kw in [("LSTM", {"proj_size": 3}), ("GRU", {}), ("RNN", {})]:
        layer = make_layer(mode, 4, 6, "float32", num_layers=2, bidirectional=True, **kw)
        module = TORCH[mode](4, 6, num_layers=2, bidirectional=True, **kw)
        assert list(layer.state_dict()) == list(module.state_dict())
        for k, v in module.state_dict().items():
            assert layer.state_dict()[k].shape == tuple(v.shape), k
    peep = make_layer("LSTM", 4, 6, "float32", num_layers=2, peepholes=True)
    assert "weight_peep_l1" in peep.state_dict()
    assert peep.state_dict()["weight_peep_l0"].shape == (3, 6)


# ----------------------------------------------------------------------------------------------
# Finite differences through the Python API (float64), including what torch cannot run.

def loss_of(layer, x, state, lengths, d_out, d_state, drop_seed):
    layer._drop_rng = np.random.default_rng(drop_seed)
    out, fin = layer.forward(x, state, lengths)
    fins = fin if layer.mode == "LSTM" else (fin,)
    dss = d_state if layer.mode == "LSTM" else (d_state,)
    return float((out * d_out).sum() + sum((f * d).sum() for f, d in zip(fins, dss)))


FD_CASES = [
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3, peepholes=True)),
    ("LSTM", dict(num_layers=2, bidirectional=True, dropout=0.4)),
    ("GRU", dict(num_layers=2, bidirectional=True, variant="reset_before")),
    ("GRU", dict(num_layers=2, batch_first=True, dropout=0.3)),
    ("RNN", dict(num_layers=3, bidirectional=True, nonlinearity="tanh")),
]


@pytest.mark.parametrize("mode,kw", FD_CASES)
def test_finite_differences(mode, kw):
    layer = make_layer(mode, 3, 4, "float64", seed=5, **kw)
    rng = np.random.default_rng(9)
    x, state, lengths, d_out, d_state = random_inputs(layer, 5, 3, rng, True, True)
    f = lambda: loss_of(layer, x, state, lengths, d_out, d_state, 17)  # noqa: E731
    layer.zero_grad()
    f()
    dx = layer.backward(d_out, d_state)
    d_st = layer.d_state
    eps = 1e-6

    def fd(a, i):
        old = a.flat[i]
        a.flat[i] = old + eps
        up = f()
        a.flat[i] = old - eps
        down = f()
        a.flat[i] = old
        return (up - down) / (2 * eps)

    checks = [("x", x, dx)]
    states = state if mode == "LSTM" else (state,)
    dstates = d_st if mode == "LSTM" else (d_st,)
    checks += [(f"state{i}", s, g) for i, (s, g) in enumerate(zip(states, dstates))]
    checks += [(name, p.data, p.grad.copy()) for name, p in layer.named_parameters()]
    for name, a, g in checks:
        idx = range(a.size) if a.size <= 40 else rng.choice(a.size, 40, replace=False)
        for i in idx:
            num = fd(a, i)
            assert abs(num - g.flat[i]) <= 1e-6 * max(1.0, abs(num)), \
                f"{name}[{i}]: finite difference {num} vs analytic {g.flat[i]}"


# ----------------------------------------------------------------------------------------------
# Dropout

def test_dropout_masks():
    layer = make_layer("GRU", 8, 40, "float64", seed=2, num_layers=2, dropout=0.3)
    x = np.random.default_rng(0).standard_normal((20, 16, 8))
    out_train, _ = layer.forward(x)
    mask = layer._ctx["masks"][0]
    assert layer._ctx["masks"][1] is None  # the last layer's output is never dropped
    keep = (mask != 0).mean()
    n = mask.size
    sigma = np.sqrt(0.3 * 0.7 / n)
    assert abs(keep - 0.7) < 5 * sigma, keep
    assert np.allclose(mask[mask != 0], 1 / 0.7)
    layer.eval()
    out_eval, _ = layer.forward(x)
    layer.eval()
    plain = make_layer("GRU", 8, 40, "float64", seed=2, num_layers=2).eval()
    out_plain, _ = plain.forward(x)
    np.testing.assert_array_equal(out_eval, out_plain)  # eval mode: no dropout
    assert not np.allclose(out_train, out_eval)
    # Same seed, same masks; a different seed, different masks.
    a = make_layer("GRU", 8, 40, "float64", seed=2, num_layers=2, dropout=0.3)
    b = make_layer("GRU", 8, 40, "float64", seed=2, num_layers=2, dropout=0.3)
    c = make_layer("GRU", 8, 40, "float64", seed=3, num_layers=2, dropout=0.3)
    c.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.forward(x)[0], b.forward(x)[0])
    assert not np.array_equal(a.forward(x)[0], c.forward(x)[0])


# ----------------------------------------------------------------------------------------------
# Truncated BPTT: carrying the state across chunks gives the full sequence's outputs, and the
# gradients are those of a graph cut at each chunk boundary (torch with detach()).

@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_truncated_bptt(mode):
    layer = make_layer(mode, 4, 6, "float64", seed=8, num_layers=2)
    module = torch_twin(layer)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((12, 3, 4))
    d_out = rng.standard_normal((12, 3, 6))
    full, _ = layer.eval().forward(x)
    layer.train()
    layer.zero_grad()
    module.zero_grad()
    state, tstate, outs = None, None, []
    for t0 in range(0, 12, 5):
        xs = x[t0:t0 + 5]
        out, state = layer.forward(np.ascontiguousarray(xs), state)
        layer.backward(d_out[t0:t0 + 5])
        outs.append(out)
        tout, tstate = module(torch.from_numpy(xs), tstate)
        (tout * torch.from_numpy(d_out[t0:t0 + 5])).sum().backward()
        tstate = tuple(s.detach() for s in tstate) if mode == "LSTM" else tstate.detach()
    np.testing.assert_allclose(np.concatenate(outs), full, rtol=0, atol=1e-12)
    for k, p in module.named_parameters():
        assert_close(k, layer.grad_dict()[k], p.grad.numpy(), 1e-10)


# ----------------------------------------------------------------------------------------------
# Buffers kept between calls; gradients accumulate.

def test_buffers_reused_and_grads_accumulate():
    layer = make_layer("LSTM", 6, 10, "float32", seed=1, num_layers=2, bidirectional=True,
                       dropout=0.2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 4, 6)).astype(np.float32)
    d_out = rng.standard_normal((9, 4, 20)).astype(np.float32)
    layer.forward(x)
    layer.backward(d_out)
    ids = {k: id(v) for k, v in layer._buffers.items()}
    g1 = {k: v.copy() for k, v in layer.grad_dict().items()}
    layer._drop_rng = np.random.default_rng(5)
    layer.zero_grad()
    layer.forward(x)
    layer.backward(d_out)
    g1 = {k: v.copy() for k, v in layer.grad_dict().items()}
    layer._drop_rng = np.random.default_rng(5)
    layer.forward(x)
    layer.backward(d_out)
    assert {k: id(v) for k, v in layer._buffers.items()} == ids
    for k, g in layer.grad_dict().items():
        np.testing.assert_array_equal(g, 2 * g1[k])


def test_outputs_are_fresh_arrays():
    layer = make_layer("RNN", 3, 4, "float64", seed=1)
    x = np.ones((5, 2, 3))
    out1, h1 = layer.forward(x)
    keep = out1.copy()
    layer.forward(2 * x)
    np.testing.assert_array_equal(out1, keep)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("shape", [(1, 5), (3, 1), (3, 5)])  # (N, T), batch-major
@pytest.mark.parametrize("training", [False, True])
def test_batch_first_outputs_are_fresh_arrays(mode, shape, training):
    """With batch_first and N = 1 or T = 1 the transposed output buffer is already C-contiguous;
    the output returned was that reused buffer, overwritten by the next forward."""
    layer = make_layer(mode, 4, 3, "float32", seed=1, num_layers=2, batch_first=True)
    layer.train(training)
    N, T = shape
    outs = [layer.forward(np.full((N, T, 4), v, np.float32))[0] for v in (0.0, 1.0, 2.0)]
    keep = [o.copy() for o in outs]
    for o, k in zip(outs, keep):
        np.testing.assert_array_equal(o, k)
    assert not np.array_equal(keep[0], keep[1])
    assert not np.shares_memory(outs[0], outs[1])


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_refilling_inputs_before_backward_keeps_gradients(mode):
    """A training forward keeps copies of x and the initial state: a caller refilling its batch
    and state arrays before backward (a reused loader buffer) gets the gradients of what it fed."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 2, 4))
    h0 = rng.standard_normal((2, 2, 5))
    state = (h0, rng.standard_normal((2, 2, 5))) if mode == "LSTM" else h0
    d_out = rng.standard_normal((6, 2, 5))
    grads = []
    for refill in (False, True):
        layer = make_layer(mode, 4, 5, "float64", seed=2, num_layers=2)
        xs = x.copy()
        st = tuple(a.copy() for a in state) if mode == "LSTM" else state.copy()
        layer.forward(xs, st)
        if refill:
            xs[...] = 7.0
            for a in (st if mode == "LSTM" else (st,)):
                a[...] = -3.0
        dx = layer.backward(d_out)
        grads.append((dx, {k: v.copy() for k, v in layer.grad_dict().items()}))
    np.testing.assert_array_equal(grads[0][0], grads[1][0])
    assert np.abs(grads[0][0]).max() > 0
    for k, g in grads[0][1].items():
        np.testing.assert_array_equal(g, grads[1][1][k], err_msg=k)


# ----------------------------------------------------------------------------------------------
# Initialisers

def test_initialisers():
    H = 8
    lstm = fusedrnn.LSTM(5, H, init="keras", seed=0, dtype="float64", forget_bias=0.5)
    w_hh = lstm.weight_hh_l0.data  # [4H, H]: orthonormal columns
    np.testing.assert_allclose(w_hh.T @ w_hh, np.eye(H), atol=1e-12)
    b = lstm.bias_ih_l0.data
    np.testing.assert_array_equal(b[H:2 * H], 1.5)  # unit forget bias + forget_bias
    assert not b[:H].any() and not lstm.bias_hh_l0.data.any()
    limit = np.sqrt(6 / (5 + 4 * H))
    assert np.abs(lstm.weight_ih_l0.data).max() <= limit
    torch_like = fusedrnn.GRU(5, H, seed=0, dtype="float64")
    for p in torch_like.parameters():
        assert np.abs(p.data).max() <= 1 / np.sqrt(H)
    irnn = fusedrnn.RNN(5, H, nonlinearity="relu", init="irnn", seed=0)
    np.testing.assert_array_equal(irnn.weight_hh_l0.data, np.eye(H, dtype=np.float32))
    assert not irnn.bias_ih_l0.data.any() and not irnn.bias_hh_l0.data.any()
    with pytest.raises(ValueError, match="irnn"):
        fusedrnn.RNN(5, H, init="irnn")
    a = fusedrnn.LSTM(5, H, seed=3)
    b = fusedrnn.LSTM(5, H, seed=3)
    for k in a.state_dict():
        np.testing.assert_array_equal(a.state_dict()[k], b.state_dict()[k])


# ----------------------------------------------------------------------------------------------
# Converters

@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_from_torch_to_torch(mode):
    kw = {"proj_size": 2} if mode == "LSTM" else {}
    module = TORCH[mode](3, 5, num_layers=2, bidirectional=True, batch_first=True,
                         dtype=torch.float64, **kw)
    layer = fusedrnn.from_torch(module)
    assert layer.dtype == np.float64 and layer.batch_first and layer.num_layers == 2
    x = np.random.default_rng(0).standard_normal((2, 4, 3))
    want = module(torch.from_numpy(x))[0].detach().numpy()
    np.testing.assert_allclose(layer.eval().forward(x)[0], want, rtol=0, atol=1e-12)
    back = fusedrnn.to_torch(layer)
    for k, v in module.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k].numpy(), v.numpy())
    with pytest.raises(ValueError, match="peepholes"):
        fusedrnn.to_torch(fusedrnn.LSTM(3, 4, peepholes=True))
    with pytest.raises(ValueError, match=r"no cell-state clip \(cell_clip = 0.5\)"):
        fusedrnn.to_torch(fusedrnn.LSTM(3, 4, cell_clip=0.5))


def test_from_torch_takes_subclasses_and_the_mode():
    """from_torch takes subclasses of torch's layers (fusedrnn.torch's own, a user's) and their
    train/eval mode; a fusedrnn.torch layer with an option torch.nn lacks is refused."""
    torch = pytest.importorskip("torch")
    import fusedrnn.torch as frt

    class Mine(torch.nn.GRU):
        pass

    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    for module in (frt.LSTM(3, 4, num_layers=2, dropout=0.5).double().eval(),
                   Mine(3, 4, num_layers=2, dropout=0.5).double().eval()):
        layer = fusedrnn.from_torch(module)
        assert not layer.training
        want = module(torch.from_numpy(x))[0].detach().numpy()
        np.testing.assert_allclose(layer.forward(x)[0], want, rtol=0, atol=1e-12)
    assert fusedrnn.from_torch(torch.nn.RNN(3, 4)).training
    with pytest.raises(ValueError, match="peepholes=True has no torch.nn form"):
        fusedrnn.from_torch(frt.LSTM(3, 4, peepholes=True))
    with pytest.raises(TypeError, match=r"torch.nn.LSTM, GRU or RNN \(or a subclass\), got Linear"):
        fusedrnn.from_torch(torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match="reset-after"):
        fusedrnn.to_torch(fusedrnn.GRU(3, 4, variant="reset_before"))


def test_from_torch_runs_the_activation_torch_runs():
    # torch.nn.RNN's forward runs self.mode, fixed at construction: a nonlinearity assigned
    # later is not what it computes (from_torch had taken the attribute: 0.86 off)
    torch = pytest.importorskip("torch")
    import fusedrnn.torch as frt
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    for mode, later in (("tanh", "relu"), ("relu", "tanh")):
        module = torch.nn.RNN(3, 4, num_layers=2, nonlinearity=mode).double()
        module.nonlinearity = later
        want = module(torch.from_numpy(x))[0].detach().numpy()
        layer = fusedrnn.from_torch(module)
        assert layer.nonlinearity == mode
        np.testing.assert_allclose(layer.forward(x)[0], want, rtol=0, atol=1e-12)
        assert frt.quantize_dynamic(module.float()).mode == module.mode   # (its int8 twin)


def test_load_torch_state_dict():
    module = torch.nn.LSTM(3, 6, num_layers=2, proj_size=2)
    layer = fusedrnn.LSTM(3, 6, num_layers=2, proj_size=2)
    layer.load_state_dict(module.state_dict())
    for k, v in module.state_dict().items():
        np.testing.assert_array_equal(layer.state_dict()[k], v.numpy())
    with pytest.raises(TypeError, match="dtype"):
        fusedrnn.LSTM(3, 6, num_layers=2, proj_size=2, dtype="float64").load_state_dict(
            module.state_dict())


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_dropout_one_drops_everything_as_torch(kind):
    # torch takes dropout in [0, 1]: at 1 the layers after the first see zeros in training
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = getattr(torch.nn, kind)(3, 5, num_layers=3, dropout=1.0)
    layer = fusedrnn.from_torch(module)
    assert layer.dropout == 1.0
    x = np.random.default_rng(1).standard_normal((4, 2, 3)).astype(np.float32)
    y, _ = layer(x)
    ty, _ = module(torch.from_numpy(x))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=0, atol=1e-6)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    layer.backward(dy)
    ty.backward(torch.from_numpy(dy))
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, getattr(module, name).grad.numpy(), rtol=0,
                                   atol=1e-5, err_msg=name)
    assert not np.any(layer.weight_ih_l0.grad)             # nothing reaches the first layer
    layer.eval()
    np.testing.assert_allclose(layer(x)[0], module.eval()(torch.from_numpy(x))[0].detach(),
                               rtol=0, atol=1e-6)          # eval: no dropout
    d = fusedrnn.Dropout(1.0)
    assert not np.any(d(x)) and not np.any(d.backward(np.ones_like(x)))
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\]"):
        fusedrnn.Dropout(1.5)


# ----------------------------------------------------------------------------------------------
# Bad arguments

def test_bad_arguments():
    with pytest.raises(ValueError, match="hidden_size"):
        fusedrnn.LSTM(3, 0)
    for p in (1.01, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\]"):
            fusedrnn.GRU(3, 4, dropout=p)
    with pytest.raises(TypeError, match="bidirectional"):
        fusedrnn.GRU(3, 4, bidirectional=1)
    with pytest.raises(TypeError, match="dtype"):
        fusedrnn.RNN(3, 4, dtype="int32")
    with pytest.raises(ValueError, match="variant"):
        fusedrnn.GRU(3, 4, variant="before")
    with pytest.raises(ValueError, match="nonlinearity"):
        fusedrnn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="forget_bias"):
        fusedrnn.LSTM(3, 4, bias=False, forget_bias=1.0)
    layer = fusedrnn.LSTM(3, 4, num_layers=2)
    with pytest.raises(TypeError, match="dtype float32"):
        layer.forward(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="input_size = 3"):
        layer.forward(np.zeros((2, 2, 5), np.float32))
    with pytest.raises(TypeError, match="tuple"):
        layer.forward(np.zeros((2, 2, 3), np.float32), np.zeros((2, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"\[2, 2, 4\]"):
        layer.forward(np.zeros((2, 2, 3), np.float32),
                      (np.zeros((1, 2, 4), np.float32), np.zeros((2, 2, 4), np.float32)))
    with pytest.raises(ValueError, match="lengths"):
        layer.forward(np.zeros((2, 2, 3), np.float32), lengths=[3, 1])
    with pytest.raises(RuntimeError, match="forward"):
        fusedrnn.GRU(3, 4).backward(np.zeros((2, 2, 4), np.float32))
    layer.forward(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="d_output"):
        layer.backward(np.zeros((2, 2, 5), np.float32))
    layer.eval().forward(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(RuntimeError, match="train mode"):
        layer.backward(np.zeros((2, 2, 4), np.float32))


def test_import_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, fusedrnn; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------------
# Frozen inference (weights packed once)

FROZEN_CASES = [("LSTM", {}), ("LSTM", {"proj_size": 3, "peepholes": True}), ("GRU", {}),
                ("GRU", {"variant": "reset_before"}), ("RNN", {"nonlinearity": "relu"})]


@pytest.mark.parametrize("mode,kw", FROZEN_CASES)
def test_frozen_equals_eval_forward_bitwise(mode, kw):
    """Calls of changing T, N, lengths, state and thread count reuse the packed weights (the
    workspace grows only for a larger call); every output equals the layer's own."""
    layer = make_layer(mode, 5, 11, "float32", seed=2, num_layers=2, bidirectional=True, **kw)
    layer.eval()
    frozen = layer.frozen()
    assert frozen.is_frozen and not layer.is_frozen and not frozen.training
    rng = np.random.default_rng(1)
    before = fusedrnn.get_num_threads()
    try:
        for i, (T, N) in enumerate([(6, 4), (3, 1), (6, 4), (9, 2), (12, 7), (1, 1)]):
            fusedrnn.set_num_threads(1 + i % 2)
            x, state, lengths, _, _ = random_inputs(layer, T, N, rng, i % 2 == 1, i % 3 == 1)
            want = layer.forward(x, state, lengths)
            got = frozen.forward(x, state, lengths)
            for a, b in zip(np.atleast_1d(want[0]), np.atleast_1d(got[0])):
                np.testing.assert_array_equal(a, b)
            for a, b in zip(want[1] if mode == "LSTM" else (want[1],),
                            got[1] if mode == "LSTM" else (got[1],)):
                np.testing.assert_array_equal(a, b)
    finally:
        fusedrnn.set_num_threads(before)


def test_frozen_is_a_snapshot_with_read_only_weights():
    layer = make_layer("LSTM", 4, 6, "float64", seed=3)
    frozen = layer.frozen()
    x = np.random.default_rng(0).standard_normal((5, 2, 4))
    y0, _ = frozen.forward(x)
    layer.weight_hh_l0.data *= 2  # the original changes (training would); the copy does not
    layer.eval()
    y1, _ = frozen.forward(x)
    np.testing.assert_array_equal(y0, y1)
    assert not np.array_equal(layer.forward(x)[0], y0)
    with pytest.raises(ValueError, match="read-only"):
        frozen.weight_ih_l0.data[0, 0] = 1.0
    frozen.train()
    with pytest.raises(RuntimeError, match="frozen layer runs inference only"):
        frozen.forward(x)
    frozen.eval()
    frozen.release_buffers()  # drops the packed workspaces; the next call packs again
    np.testing.assert_array_equal(frozen.forward(x)[0], y0)


def test_frozen_follows_replaced_weights_and_precision_and_refuses_loads():
    """A frozen copy packs again when its precision changes (``compute``) or a Parameter's
    array is replaced (``p.data = ...``, a new Parameter), whose arrays it makes read-only in
    turn; copying into its read-only weights (load_state_dict, ``layer.<name> = array``) is
    refused, naming the weight, before anything is copied (a parent's embedding included)."""
    rng = np.random.default_rng(5)
    layer = make_layer("LSTM", 4, 6, "float32", seed=6, num_layers=2).eval()
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    frozen = layer.frozen()
    frozen.forward(x)
    frozen.compute = "bfloat16"            # the workspace packed for float32 is not reused
    np.testing.assert_array_equal(frozen.forward(x)[0], layer.frozen("bfloat16").forward(x)[0])
    frozen.compute = "float32"
    np.testing.assert_array_equal(frozen.forward(x)[0], layer.forward(x)[0])
    new = rng.standard_normal(layer.weight_hh_l1.shape).astype(np.float32)
    frozen.weight_hh_l1.data = new.copy()
    layer.weight_hh_l1.data = new.copy()
    np.testing.assert_array_equal(frozen.forward(x)[0], layer.forward(x)[0])
    assert not frozen.weight_hh_l1.data.flags.writeable
    frozen.weight_ih_l0 = fusedrnn.module.Parameter(new[:, :4].copy() * 0 + 0.1)
    layer.weight_ih_l0 = fusedrnn.module.Parameter(new[:, :4].copy() * 0 + 0.1)
    np.testing.assert_array_equal(frozen.forward(x)[0], layer.forward(x)[0])
    assert not any(p.data.flags.writeable for p in frozen.parameters())
    want = frozen.forward(x)[0]
    with pytest.raises(ValueError, match=r"load_state_dict: weight_\w+ is read-only"):
        frozen.load_state_dict({k: v * 2 for k, v in layer.state_dict().items()})
    with pytest.raises(ValueError, match="LSTM.weight_hh_l0 is read-only"):
        frozen.weight_hh_l0 = np.zeros(layer.weight_hh_l0.shape, np.float32)
    np.testing.assert_array_equal(frozen.forward(x)[0], want)
    model = fusedrnn.RecurrentModel("lstm", vocab_size=10, embed_dim=4, hidden_size=6,
                                    output_size=5, seed=1)
    fz = model.frozen()
    embed = fz.embed.weight.data.copy()
    with pytest.raises(ValueError, match="rnn.weight_ih_l0 is read-only"):
        fz.load_state_dict({k: v + 1 for k, v in model.state_dict().items()})
    np.testing.assert_array_equal(fz.embed.weight.data, embed)


def test_frozen_from_many_threads_matches_serial():
    import concurrent.futures
    layer = make_layer("GRU", 8, 16, "float32", seed=4)
    frozen = layer.eval().frozen()
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((7, 1 + i % 3, 8)).astype(np.float32) for i in range(12)]
    want = [layer.forward(x)[0] for x in xs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: frozen.forward(x)[0], xs * 3))
    for i, g in enumerate(got):
        np.testing.assert_array_equal(g, want[i % len(xs)])


def test_frozen_survives_pickle_and_copy():
    """A pickled or copied frozen layer is frozen too: read-only weights, its own (empty)
    packed workspaces, the same outputs."""
    import copy
    import pickle
    frozen = make_layer("LSTM", 4, 6, "float32", seed=5, num_layers=2).frozen()
    x = np.random.default_rng(3).standard_normal((5, 2, 4)).astype(np.float32)
    want = frozen.forward(x)[0]
    for twin in (pickle.loads(pickle.dumps(frozen)), copy.deepcopy(frozen), frozen.frozen()):
        assert twin.is_frozen and twin._packed is not frozen._packed
        assert not any(p.data.flags.writeable for p in twin.parameters())
        np.testing.assert_array_equal(twin.forward(x)[0], want)


# issue 23, item 19: PyTorch's rule proj_size < hidden_size, the kernel's check.
@pytest.mark.parametrize("proj_size", [3, 10])
def test_lstm_rejects_proj_size_not_below_hidden_size(proj_size):
    with pytest.raises(ValueError, match=rf"^LSTM: proj_size P = {proj_size} must be "
                                         r"< hidden_size H = 3 \(PyTorch's rule"):
        fusedrnn.LSTM(4, 3, proj_size=proj_size)
    fusedrnn.LSTM(4, 3, proj_size=2)   # P < H is fine


def test_lstm_forward_rejects_projection_not_narrower():
    x = np.zeros((2, 1, 4))
    w_hr = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"^lstm_forward: w_hr must have shape \[P, H\] with "
                                         r"P < H .*got \[3, 3\]"):
        fusedrnn.lstm_forward(x, np.zeros((12, 4)), np.zeros((12, 3)), w_hr=w_hr)
