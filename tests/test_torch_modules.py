"""fusedrnn.torch.LSTM / GRU / RNN: drop-in parity with torch.nn (outputs, states and every
gradient, over a grid of configurations; PackedSequence; dropout; no_grad / inference_mode),
gradcheck in float64, our extras against fusedrnn's NumPy layers, state_dict interchange,
a training run that matches torch.nn.LSTM, and the errors for unsupported inputs.
"""
from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fusedrnn  # noqa: E402
import fusedrnn.torch as frt  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")

T, N, C, H, P = 5, 3, 4, 6, 3
LENGTHS = [3, 5, 1]                     # unsorted, includes T
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}
CELLS = {  # name -> (class name, constructor kwargs)
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", {"proj_size": P}),
    "gru": ("GRU", {}),
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}


# ----------------------------------------------------------------------------------------------
# helpers

def twins(cls, dtype=torch.float64, seed=0, **kw):
    """(torch.nn module, our module) built from the same seed: the same weights."""
    torch.manual_seed(seed)
    ref = getattr(torch.nn, cls)(C, H, dtype=dtype, **kw)
    torch.manual_seed(seed)
    ours = getattr(frt, cls)(C, H, dtype=dtype, **kw)
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    return ref, ours


def state_shapes(mod, n=N):
    D = 2 if mod.bidirectional else 1
    R = mod.proj_size or mod.hidden_size
    shapes = [(mod.num_layers * D, n, R)]
    if mod.mode == "LSTM":
        shapes.append((mod.num_layers * D, n, mod.hidden_size))
    return shapes


def rand(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def run(mod, x, hx, packed=None, lengths=LENGTHS):
    """Forward, loss = Σ outputs·cotangents, and the gradients of x, hx and the parameters.

    packed: None, or enforce_sorted (bool) to feed pack_padded_sequence(x, lengths)."""
    lstm = mod.mode == "LSTM"
    inp = x if packed is None else pack_padded_sequence(x, torch.tensor(lengths),
                                                        batch_first=mod.batch_first,
                                                        enforce_sorted=packed)
    state = None if hx is None else (tuple(hx) if lstm else hx[0])
    out, st = mod(inp, state)
    st = list(st) if lstm else [st]
    outs = [out.data if packed is not None else out] + st
    loss = sum((o * rand(o.shape, o.dtype, 100 + i)).sum() for i, o in enumerate(outs))
    wrt = [x] + ([] if hx is None else list(hx)) + list(mod.parameters())
    grads = torch.autograd.grad(loss, wrt)
    return out, outs, grads


def assert_close(name, got, want, dtype):
    got, want = got.detach(), want.detach()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    tol = TOL[dtype] * max(1.0, float(want.abs().max()))
    diff = float((got - want).abs().max()) if want.numel() else 0.0
    assert diff <= tol, f"{name}: max |ours - torch| = {diff:.3e} > {tol:.1e}"


def compare(ref, ours, dtype, batch_first=False, hx=False, packed=None, seed=1,
            lengths=LENGTHS):
    shape = (N, T, C) if batch_first else (T, N, C)
    x1 = rand(shape, dtype, seed).requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    h1 = h2 = None
    if hx:
        h1 = [rand(s, dtype, seed + 10 + i).requires_grad_(True)
              for i, s in enumerate(state_shapes(ref))]
        h2 = [h.detach().clone().requires_grad_(True) for h in h1]
    out_r, outs_r, g_r = run(ref, x1, h1, packed, lengths)
    out_o, outs_o, g_o = run(ours, x2, h2, packed, lengths)
    for i, (a, b) in enumerate(zip(outs_o, outs_r)):
        assert_close(f"output {i}", a, b, dtype)
    names = ["x"] + [f"hx[{i}]" for i in range(len(h1 or []))] + \
        [n for n, _ in ref.named_parameters()]
    assert len(g_o) == len(g_r) == len(names)
    for name, a, b in zip(names, g_o, g_r):
        assert_close(f"grad {name}", a, b, dtype)
    return out_r, out_o


# ----------------------------------------------------------------------------------------------
# parity with torch.nn

GRID = list(itertools.product(CELLS, [1, 2], [False, True], [False, True]))


@pytest.mark.parametrize("cell,layers,bidirectional,batch_first", GRID)
def test_parity_grid_float64(cell, layers, bidirectional, batch_first):
    cls, kw = CELLS[cell]
    for bias, hx in ((True, False), (False, True)):
        ref, ours = twins(cls, num_layers=layers, bidirectional=bidirectional,
                          batch_first=batch_first, bias=bias, **kw)
        out_r, out_o = compare(ref, ours, torch.float64, batch_first, hx)
        assert out_o.stride() == out_r.stride()   # batch_first: the same transposed view


@pytest.mark.parametrize("cell", list(CELLS))
def test_parity_float32(cell):
    cls, kw = CELLS[cell]
    ref, ours = twins(cls, dtype=torch.float32, num_layers=2, bidirectional=True, **kw)
    compare(ref, ours, torch.float32, hx=True)


@pytest.mark.parametrize("cell,enforce_sorted,bidirectional",
                         list(itertools.product(CELLS, [False, True], [False, True])))
def test_packed_sequence(cell, enforce_sorted, bidirectional):
    cls, kw = CELLS[cell]
    lengths = sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS
    for hx, batch_first in ((False, False), (True, True)):
        ref, ours = twins(cls, num_layers=2, bidirectional=bidirectional,
                          batch_first=batch_first, **kw)
        out_r, out_o = compare(ref, ours, torch.float64, batch_first, hx,
                               packed=enforce_sorted, lengths=lengths)
        assert isinstance(out_o, PackedSequence)
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            a, b = getattr(out_o, field), getattr(out_r, field)
            assert (a is None and b is None) or torch.equal(a, b), field


@pytest.mark.parametrize("cell", ["lstm_proj", "gru"])
def test_unbatched_input(cell):
    cls, kw = CELLS[cell]
    ref, ours = twins(cls, num_layers=2, bidirectional=True, **kw)
    x = rand((T, C), torch.float64, 3)
    hx = [rand(s[:1] + s[2:], torch.float64, 4 + i)
          for i, s in enumerate(state_shapes(ref))]
    st = tuple(hx) if ref.mode == "LSTM" else hx[0]
    (yr, sr), (yo, so) = ref(x, st), ours(x, st)
    assert_close("y", yo, yr, torch.float64)
    for a, b in zip(so if isinstance(so, tuple) else [so], sr if isinstance(sr, tuple) else [sr]):
        assert_close("state", a, b, torch.float64)


def test_noncontiguous_input_and_state():
    ref, ours = twins("LSTM", num_layers=2)
    x = rand((N, T, C), torch.float64, 5).transpose(0, 1)           # [T, N, C], not contiguous
    h = rand((N, 2, H), torch.float64, 6).transpose(0, 1)
    c = rand((N, 2, H), torch.float64, 7).transpose(0, 1)
    (yr, (hr, cr)), (yo, (ho, co)) = ref(x, (h, c)), ours(x, (h, c))
    for name, a, b in (("y", yo, yr), ("h_n", ho, hr), ("c_n", co, cr)):
        assert_close(name, a, b, torch.float64)


def test_dtype_conversion_after_construction():
    ref, ours = twins("GRU", dtype=torch.float32, num_layers=2)
    ref.double()
    ours.double()
    compare(ref, ours, torch.float64, hx=True)


# ----------------------------------------------------------------------------------------------
# dropout, modes

def test_dropout_uses_torch_rng():
    """Train mode, dropout=p: layer outputs except the last go through F.dropout drawn from
    torch's generator; torch.manual_seed reproduces it; eval mode has no dropout."""
    torch.manual_seed(0)
    m = frt.LSTM(C, H, num_layers=2, dropout=0.5, dtype=torch.float64)
    x = rand((T, N, C), torch.float64, 1)
    torch.manual_seed(42)
    y1, _ = m(x)
    torch.manual_seed(42)
    y2, _ = m(x)
    assert torch.equal(y1, y2)
    l0 = frt.LSTM(C, H, dtype=torch.float64)
    l1 = frt.LSTM(H, H, dtype=torch.float64)
    with torch.no_grad():
        for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(l0, k + "_l0").copy_(getattr(m, k + "_l0"))
            getattr(l1, k + "_l0").copy_(getattr(m, k + "_l1"))
    torch.manual_seed(42)
    manual, _ = l1(torch.nn.functional.dropout(l0(x)[0], 0.5, training=True))
    assert torch.equal(y1, manual)
    m.eval()
    ref = torch.nn.LSTM(C, H, num_layers=2, dropout=0.5, dtype=torch.float64).eval()
    ref.load_state_dict(m.state_dict())
    assert_close("eval", m(x)[0], ref(x)[0], torch.float64)
    assert not torch.equal(m(x)[0], y1)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_dropout_draws_as_torch(cell, enforce_sorted):
    """Dropout between layers of a PackedSequence is drawn over the packed data, as torch.nn
    draws it: for the same seed, outputs and gradients equal torch.nn's in train mode (so a
    training run replays torch.nn's), as for dense input."""
    name, kw = CELLS[cell]
    ref, ours = twins(name, num_layers=3, dropout=0.5, bidirectional=True, **kw)
    lengths = LENGTHS if not enforce_sorted else sorted(LENGTHS, reverse=True)
    x = rand((T, N, C), torch.float64, 2)
    results = []
    for m in (ref, ours):
        m.train()
        m.zero_grad()
        xx = x.clone().requires_grad_(True)
        inp = pack_padded_sequence(xx, torch.tensor(lengths), enforce_sorted=enforce_sorted)
        torch.manual_seed(7)
        out, _ = m(inp)
        (out.data ** 2).sum().backward()
        results.append([out.data, xx.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*results):
        assert_close("packed dropout", b, a, torch.float64)


@pytest.mark.parametrize("ctx", ["no_grad", "inference_mode", "no_requires_grad"])
def test_no_grad_modes(ctx, monkeypatch):
    ref, ours = twins("LSTM", num_layers=2, bidirectional=True)
    x = rand((T, N, C), torch.float64, 1)
    calls = []
    real = fusedrnn.functional._forward   # (fn, kind, x, w_ih, ..., reverse, training, ...)

    def spy(*a, **kw):
        assert a[1] == "lstm"
        calls.append(a[12])
        return real(*a, **kw)

    monkeypatch.setattr(fusedrnn.functional, "_forward", spy)
    if ctx == "no_requires_grad":
        for p in ours.parameters():
            p.requires_grad_(False)
        y, (h, c) = ours(x)
    else:
        with getattr(torch, ctx)():
            y, (h, c) = ours(x)
    assert calls == [False] * 4                 # no cache, no autograd.Function
    assert y.grad_fn is None and not y.requires_grad
    with torch.no_grad():
        yr, (hr, cr) = ref(x)
    for name, a, b in (("y", y, yr), ("h_n", h, hr), ("c_n", c, cr)):
        assert_close(name, a, b, torch.float64)


def test_input_is_not_copied(monkeypatch):
    """Time-major contiguous input and the parameters reach the kernel as numpy views."""
    m = frt.LSTM(C, H)
    x = torch.randn(T, N, C, requires_grad=True)
    seen = {}
    real = fusedrnn.functional._forward   # (fn, kind, x, w_ih, ...)

    def spy(fn, kind, xa, w_ih, *a, **kw):
        seen["x"], seen["w_ih"] = xa, w_ih
        return real(fn, kind, xa, w_ih, *a, **kw)

    monkeypatch.setattr(fusedrnn.functional, "_forward", spy)
    m(x)
    assert np.shares_memory(seen["x"], x.detach().numpy())
    assert np.shares_memory(seen["w_ih"], m.weight_ih_l0.detach().numpy())


def test_retain_graph_and_inplace_check():
    m = frt.GRU(C, H, dtype=torch.float64)
    x = rand((T, N, C), torch.float64, 1).requires_grad_(True)
    y, _ = m(x)
    y.sum().backward(retain_graph=True)
    g1 = x.grad.clone()
    y.sum().backward()
    assert torch.allclose(x.grad, 2 * g1)
    y, _ = m(x)
    with torch.no_grad():
        m.weight_hh_l0.add_(1.0)                  # modified between forward and backward
    with pytest.raises(RuntimeError, match="inplace"):
        y.sum().backward()


# ----------------------------------------------------------------------------------------------
# gradcheck (float64)

GRADCHECK = {
    "lstm_peep_proj_bi": ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=2,
                                       peepholes=True, forget_bias=1.0)),
    "gru_reset_before_bi": ("GRU", dict(num_layers=2, bidirectional=True,
                                        variant="reset_before")),
    "rnn_relu": ("RNN", dict(num_layers=2, nonlinearity="relu", batch_first=True)),
}


@pytest.mark.parametrize("name", list(GRADCHECK))
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck(name, packed):
    cls, kw = GRADCHECK[name]
    torch.manual_seed(0)
    m = getattr(frt, cls)(2, 3, dtype=torch.float64, **kw)
    names = [n for n, _ in m.named_parameters()]
    t, n = 3, 2
    bf = m.batch_first
    x = torch.randn(*((n, t, 2) if bf else (t, n, 2)), dtype=torch.float64, requires_grad=True)
    states = [torch.randn(*s, dtype=torch.float64, requires_grad=True)
              for s in state_shapes(m, n)]
    lengths = torch.tensor([2, 3])

    def f(x, *rest):
        hx, params = rest[:len(states)], rest[len(states):]
        inp = pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False) \
            if packed else x
        out, st = torch.func.functional_call(m, dict(zip(names, params)),
                                             (inp, tuple(hx) if len(hx) == 2 else hx[0]))
        st = st if isinstance(st, tuple) else (st,)
        return ((out.data if packed else out),) + st

    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    assert torch.autograd.gradcheck(f, (x, *states, *params), eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# extras against fusedrnn's NumPy layers; state_dicts

EXTRAS = {
    "lstm_peepholes": ("LSTM", dict(peepholes=True, forget_bias=1.0, proj_size=P)),
    "gru_reset_before": ("GRU", dict(variant="reset_before")),
}


@pytest.mark.parametrize("name", list(EXTRAS))
def test_extras_match_numpy_layers(name):
    cls, kw = EXTRAS[name]
    torch.manual_seed(0)
    ours = getattr(frt, cls)(C, H, num_layers=2, bidirectional=True, dtype=torch.float64, **kw)
    layer = getattr(fusedrnn, cls)(C, H, num_layers=2, bidirectional=True, dtype="float64",
                                   **{k: v for k, v in kw.items() if k != "forget_bias"})
    layer.load_state_dict(ours.state_dict())
    x = rand((T, N, C), torch.float64, 1).requires_grad_(True)
    out, st = ours(x)
    st = list(st) if isinstance(st, tuple) else [st]
    d_out = rand(out.shape, torch.float64, 2)
    d_st = [rand(s.shape, torch.float64, 3 + i) for i, s in enumerate(st)]
    loss = (out * d_out).sum() + sum((s * d).sum() for s, d in zip(st, d_st))
    grads = torch.autograd.grad(loss, [x] + list(ours.parameters()))
    layer.train()
    out_np, st_np = layer.forward(x.detach().numpy())
    st_np = list(st_np) if isinstance(st_np, tuple) else [st_np]
    dx = layer.backward(d_out.numpy(), tuple(d.numpy() for d in d_st) if len(d_st) == 2
                        else d_st[0].numpy())
    np.testing.assert_allclose(out.detach().numpy(), out_np, rtol=0, atol=1e-12)
    for a, b in zip(st, st_np):
        np.testing.assert_allclose(a.detach().numpy(), b, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grads[0].numpy(), dx, rtol=0, atol=1e-12)
    np_grads = dict(layer.named_parameters())
    for (pname, _), g in zip(ours.named_parameters(), grads[1:]):
        np.testing.assert_allclose(g.numpy(), np_grads[pname].grad, rtol=0, atol=1e-12,
                                   err_msg=pname)


def test_forget_bias_and_reset_parameters():
    torch.manual_seed(3)
    ref = torch.nn.LSTM(C, H, num_layers=2)
    torch.manual_seed(3)
    ours = frt.LSTM(C, H, num_layers=2, forget_bias=1.0, peepholes=True)
    sd = ours.state_dict()
    assert list(sd)[:len(ref.state_dict())] == list(ref.state_dict())
    assert {"weight_peep_l0", "weight_peep_l1"} <= set(sd)
    for k, v in ref.state_dict().items():
        want = v.clone()
        if k.startswith("bias_ih"):
            want[H:2 * H] += 1.0
        assert torch.equal(sd[k], want), k
    torch.manual_seed(3)
    ours.reset_parameters()
    for k, v in ours.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert "peepholes=True" in repr(ours) and "forget_bias=1.0" in repr(ours)
    assert isinstance(ours, torch.nn.LSTM)


@pytest.mark.parametrize("cell", list(CELLS))
def test_state_dict_both_ways(cell):
    cls, kw = CELLS[cell]
    torch.manual_seed(1)
    ref = getattr(torch.nn, cls)(C, H, num_layers=2, bidirectional=True, **kw)
    torch.manual_seed(2)
    ours = getattr(frt, cls)(C, H, num_layers=2, bidirectional=True, **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, N, C)
    assert_close("ours <- torch", ours(x)[0], ref(x)[0], torch.float32)
    for p in ours.parameters():
        torch.nn.init.uniform_(p, -0.3, 0.3)
    ref.load_state_dict(ours.state_dict())
    assert_close("torch <- ours", ours(x)[0], ref(x)[0], torch.float32)


# ----------------------------------------------------------------------------------------------
# training

class CharModel(torch.nn.Module):
    def __init__(self, rnn_cls, V=20, E=8, Hd=16):
        super().__init__()
        self.emb = torch.nn.Embedding(V, E)
        self.rnn = rnn_cls(E, Hd, num_layers=2)
        self.head = torch.nn.Linear(Hd, V)

    def forward(self, tokens):
        y, _ = self.rnn(self.emb(tokens))
        return self.head(y)


def train_losses(rnn_cls, steps=30):
    torch.manual_seed(0)
    model = CharModel(rnn_cls)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, 20, (11, 8), generator=g)
    data[1::2] = data[:-1:2]             # learnable structure: every other token repeats
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        logits = model(data[:-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 20), data[1:].reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_matches_torch_lstm():
    ours, ref = train_losses(frt.LSTM), train_losses(torch.nn.LSTM)
    assert ours[-1] < 0.8 * ours[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# errors and imports

def test_errors():
    m = frt.LSTM(C, H)
    x = torch.randn(T, N, C)
    with pytest.raises(TypeError, match="float32 or torch.float64"):
        m(x.half())
    with pytest.raises(TypeError, match="torch.float32"):
        m(x.double())
    with pytest.raises(ValueError, match="CPU tensor"):
        m(torch.empty(T, N, C, device="meta"))
    with pytest.raises(TypeError, match="strided"):
        m(x.to_sparse())
    with pytest.raises(ValueError, match="input_size=4"):
        m(torch.randn(T, N, C + 1))
    with pytest.raises(ValueError, match=r"hx\[0\].*shape \[1, 3, 6\]"):
        m(x, (torch.zeros(1, 2, H), torch.zeros(1, 3, H)))
    with pytest.raises(TypeError, match="tuple"):
        m(x, torch.zeros(1, N, H))
    with pytest.raises(TypeError, match="dtype"):
        frt.GRU(C, H, dtype=torch.float16)
    with pytest.raises(ValueError, match="device must be 'cpu'"):
        frt.RNN(C, H, device="meta")
    with pytest.raises(ValueError, match="variant"):
        frt.GRU(C, H, variant="nope")
    with pytest.raises(ValueError, match="forget_bias needs bias"):
        frt.LSTM(C, H, bias=False, forget_bias=1.0)
    with pytest.raises(ValueError, match="proj_size"):
        frt.GRU(C, H, proj_size=2)
    m.weight_hh_l0 = torch.nn.Parameter(torch.randn(H, 4 * H).t())
    with pytest.raises(ValueError, match="weight_hh_l0 must be contiguous"):
        m(x)
    half = frt.LSTM(C, H)
    half.half()
    with pytest.raises(TypeError, match="weight_ih_l0 must have dtype"):
        half(x.half())


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
@pytest.mark.parametrize("kw,needle", [
    (dict(zoneout_h=0.99999999), "zoneout_h = 0.99999999 rounds to 1 in float32"),
    (dict(layer_norm="haste", ln_eps=1e-50), "ln_eps = 1e-50 is not a normal float32"),
    (dict(layer_norm="haste", ln_eps=1e300), "ln_eps = 1e\\+300 is not a normal float32")])
def test_regulariser_values_the_float32_kernel_cannot_take(cls, kw, needle):
    """As fusedrnn's float32 layers: zoneout rounding to 1 or ln_eps not a normal number in
    float32 is refused when a float32 layer is made (it was accepted, and every forward raised
    the kernel's message naming 1.0, 0.000000 or inf). float64 takes them; made float32 after
    construction (.float()), the layer refuses them at forward, before running."""
    with pytest.raises(ValueError, match=f"^{cls}: {needle}"):
        getattr(frt, cls)(C, H, **kw)
    m = getattr(frt, cls)(C, H, dtype=torch.float64, **kw)
    out = m(torch.randn(T, N, C, dtype=torch.float64))[0]
    assert out.dtype == torch.float64 and bool(torch.isfinite(out).all())
    m.float()
    with pytest.raises(ValueError, match=f"{cls}.forward: {needle}"):
        m(torch.randn(T, N, C))
    m.eval()        # (eval mode: zoneout's expectation, the same float32 kernel)
    with pytest.raises(ValueError, match=f"{cls}.forward: {needle}"):
        m(torch.randn(T, N, C))


@pytest.mark.parametrize("cell, packed", [(c, p) for c in ("lstm_proj", "gru", "rnn_tanh")
                                           for p in (False, True)] + [("lstm", True)])
@pytest.mark.parametrize("xdt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("state", [None, "float32", "bfloat16", "mixed"])
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_autocast_result_dtypes_are_torchs(cell, xdt, state, packed):
    """Under torch.autocast('cpu', dtype=torch.bfloat16) the results have torch.nn's dtypes
    (torch.nn run here, oneDNN off: a projected LSTM, the GRU and the RNN never use it): a
    projected LSTM's c_n and the GRU's output and h_n are in the dtype of the state carried
    (c_0 / h_0, else the input's). Before, the projected LSTM rounded c_n to bfloat16 and the
    GRU always returned float32. The plain LSTM with a PackedSequence (torch.nn's native cell,
    not the oneDNN layer autocast lists): all three in the carried state's dtype (it had
    returned bfloat16)."""
    cls, kw = CELLS[cell]
    ref, ours = twins(cls, dtype=torch.float32, **kw)
    lstm = cls == "LSTM"
    R = kw.get("proj_size", H)
    x = torch.randn(T, N, C).to(xdt)
    hx = None
    if state is not None:
        hdt = torch.float32 if state == "mixed" else getattr(torch, state)
        cdt = torch.bfloat16 if state == "mixed" else hdt
        h = torch.randn(1, N, R).to(hdt)
        hx = (h, torch.randn(1, N, H).to(cdt)) if lstm else h
    if packed:
        x = pack_padded_sequence(x, [5, 3, 1])
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        want = ref(x, hx)
        got = ours(x, hx)
    flat = lambda r: [r[0].data if packed else r[0]] + (list(r[1]) if lstm else [r[1]])  # noqa
    assert [t.dtype for t in flat(got)] == [t.dtype for t in flat(want)]
    for g, w in zip(flat(got), flat(want)):
        torch.testing.assert_close(g.float(), w.float(), rtol=0, atol=0.05)
    if lstm and flat(got)[2].dtype == torch.float32:    # the kernels' fp32 c_n, not rounded
        c_n = flat(got)[2]
        assert not torch.equal(c_n, c_n.bfloat16().float())


FP16_CELLS = dict(CELLS, lstm_2bi=("LSTM", {"num_layers": 2, "bidirectional": True}),
                  gru_2bi=("GRU", {"num_layers": 2, "bidirectional": True}),
                  rnn_2bi=("RNN", {"num_layers": 2, "bidirectional": True}))


@pytest.mark.parametrize("cell", list(FP16_CELLS))
@pytest.mark.parametrize("xdt", [torch.float32, torch.float16])
@pytest.mark.parametrize("state", [None, "float32", "float16", "mixed"])
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_autocast_float16_is_torchs(cell, xdt, state):
    """Under torch.autocast('cpu', dtype=torch.float16) the layers return torch.nn's dtypes
    (torch.nn's native layers, oneDNN off: its fp16 LSTM primitive is refused on CPUs without
    fp16 support, and it is not used for float16 input): the RNN float16; the LSTM's results
    in the dtype of the c it carries, a projected LSTM's output and h_n float16; the GRU's in
    that of h (c_0 / h_0, else the input's). Values and float32 parameters' gradients as
    torch.nn's there within the README's fp16 tolerance (x, h_0 and weights rounded to
    float16, float32 kernels). Before, the layers ran float32 and returned float32 (and
    refused float16 input)."""
    cls, kw = FP16_CELLS[cell]
    ref, ours = twins(cls, dtype=torch.float32, **kw)
    lstm = cls == "LSTM"
    R, LD = kw.get("proj_size", H), kw.get("num_layers", 1) * (1 + kw.get("bidirectional", 0))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20, N, C, generator=g).to(xdt)
    hx = None
    if state is not None:   # mixed: h float32, c float16
        hdt = torch.float32 if state == "mixed" else getattr(torch, state)
        cdt = torch.float16 if state == "mixed" else hdt
        h = torch.randn(LD, N, R, generator=g).to(hdt)
        hx = (h, torch.randn(LD, N, H, generator=g).to(cdt)) if lstm else h
    flat = lambda r: [r[0]] + (list(r[1]) if lstm else [r[1]])  # noqa: E731
    res = []
    for m in (ref, ours):
        with torch.backends.mkldnn.flags(enabled=False), \
                torch.autocast("cpu", dtype=torch.float16):
            out = flat(m(x, hx))
        sum(t.float().pow(2).sum() for t in out).backward()
        res.append((out, [p.grad for p in m.parameters()]))
    (want, want_g), (got, got_g) = res
    assert [t.dtype for t in got] == [t.dtype for t in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=2e-3)
    for a, b in zip(got_g, want_g):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=1e-2 * float(b.abs().max()))


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_autocast_float16_refusals_and_fallback():
    """Under fp16 autocast the input and states are float32 or float16 (bfloat16: TypeError
    naming both); outside it float16 input is refused as before; issue 19's options with only
    the float32 regularised kernel run float32 and return float32, as under bf16 autocast."""
    m = frt.GRU(C, H)
    with torch.autocast("cpu", dtype=torch.float16):
        with pytest.raises(TypeError, match=r"input must have dtype torch.float32 or "
                                            r"torch.float16 under torch.autocast\('cpu', "
                                            r"dtype=torch.float16\), got torch.bfloat16"):
            m(torch.randn(T, N, C).bfloat16())
        with pytest.raises(TypeError, match=r"hx must have dtype torch.float32 or "
                                            r"torch.float16 under"):
            m(torch.randn(T, N, C), torch.randn(1, N, H).bfloat16())
    with pytest.raises(TypeError, match=r"float16 only under torch.autocast\('cpu', "
                                        r"dtype=torch.float16\)"):
        m(torch.randn(T, N, C).half())
    ln = frt.LSTM(C, H, layer_norm="haste")
    with torch.autocast("cpu", dtype=torch.float16):
        out, (h_n, c_n) = ln(torch.randn(T, N, C).half())
    assert out.dtype == h_n.dtype == c_n.dtype == torch.float32


def test_import_isolation():
    """`import fusedrnn` does not import torch; inside fusedrnn.torch, `torch` is PyTorch."""
    code = ("import sys, fusedrnn; assert 'torch' not in sys.modules; "
            "import fusedrnn.torch as t; assert t.torch is sys.modules['torch']; "
            "assert t.torch.nn.LSTM is not None")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_training_cache_is_reused_only_after_torch_frees_it(monkeypatch):
    """The training cache of a layer call comes back to the thread's pool when torch frees the
    graph's saved tensors, and a later call of the same size reuses it; while a graph still
    holds its cache (not yet backpropagated, or retain_graph=True) a call gets a fresh one."""
    m = frt.LSTM(C, H)
    x = torch.randn(T, N, C, requires_grad=True)
    seen = []
    real = fusedrnn.functional._forward

    def spy(*a, **kw):
        out = real(*a, **kw)
        seen.append(out.cache.buffer.__array_interface__["data"][0])
        return out

    monkeypatch.setattr(fusedrnn.functional, "_forward", spy)
    grads = []
    for _ in range(2):
        m.zero_grad()
        x.grad = None
        y, _ = m(x)
        (y * y).sum().backward()
        grads.append([p.grad.clone() for p in m.parameters()] + [x.grad.clone()])
    assert seen[1] == seen[0]                      # freed after backward, reused
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    y2, _ = m(x)                                   # its graph holds the cache ...
    y3, _ = m(x)                                   # ... so this call gets another buffer
    assert seen[3] != seen[2]
    y2.sum().backward(retain_graph=True)           # retained: still held
    y4, _ = m(x)
    assert seen[4] not in (seen[2],)
    del y2
    y5, _ = m(x)                                   # y2's graph gone: its buffer is free again
    assert seen[5] == seen[2]
    y3.sum().backward()
    y4.sum().backward()


PACK_HOOKS = {"detach": lambda t: t.detach(), "view": lambda t: t.view(t.shape),
              "data": lambda t: t.data}


@pytest.mark.parametrize("hook", PACK_HOOKS)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_cache_is_not_reused_while_a_saved_alias_holds_it(cell, hook):
    """A saved_tensors_hooks pack hook may save an alias of the cache tensor (detach(), a view,
    .data: the same storage, another tensor object) and drop the tensor itself: the buffer must
    stay out of the pool until that storage is freed, so a second forward of the same size
    cannot overwrite the first graph's cache (its gradients then equal torch.nn's)."""
    name, kw = CELLS[cell]
    ref, ours = twins(name, **kw)
    x = torch.randn(T, N, C, dtype=torch.float64, requires_grad=True)
    grads = []
    for m in (ref, ours):
        with torch.autograd.graph.saved_tensors_hooks(PACK_HOOKS[hook], lambda t: t):
            y1 = m(x)[0]
            y2 = m(x * 3)[0]              # the same sizes: a pooled buffer if one is free
        grads.append(torch.autograd.grad((y1 ** 2).sum(), [x, *m.parameters()]))
        grads.append(torch.autograd.grad((y2 ** 2).sum(), [x, *m.parameters()]))
    for got, want in zip(grads[2:], grads[:2]):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-10)
