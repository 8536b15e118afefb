"""fusedrnn.torch.LSTMCell/GRUCell/RNNCell against torch.nn's cells: values and autograd
gradients through a loop (float64, 1e-10), unbatched input, packed weights never stale."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fusedrnn.torch as frt  # noqa: E402

CASES = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {}), ("RNNCell", {"nonlinearity": "relu"}),
         ("LSTMCell", {"bias": False})]


def pair(name, kw, dtype=torch.float64):
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(4, 5, dtype=dtype, **kw)
    torch.manual_seed(0)
    ours = getattr(frt, name)(4, 5, dtype=dtype, **kw)
    return ref, ours


def loop(cell, xs, st):
    outs = []
    for t in range(xs.shape[0]):
        st = cell(xs[t], st)
        outs.append(st[0] if isinstance(st, tuple) else st)
    return torch.stack(outs), st


@pytest.mark.parametrize("name,kw", CASES)
def test_values_and_gradients_match_torch(name, kw):
    ref, ours = pair(name, kw)
    assert isinstance(ours, getattr(torch.nn, name))
    for k, v in ref.state_dict().items():
        assert torch.equal(v, ours.state_dict()[k])
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(6, 3, 4, dtype=torch.float64, generator=g)
    h0 = torch.randn(3, 5, dtype=torch.float64, generator=g)
    c0 = torch.randn(3, 5, dtype=torch.float64, generator=g)
    w = torch.randn(6, 3, 5, dtype=torch.float64, generator=g)
    results = []
    for cell in (ref, ours):
        x = xs.clone().requires_grad_()
        h = h0.clone().requires_grad_()
        c = c0.clone().requires_grad_()
        out, _ = loop(cell, x, (h, c) if name == "LSTMCell" else h)
        (out * w).sum().backward()
        results.append((out.detach(), x.grad, h.grad,
                        c.grad if name == "LSTMCell" else None,
                        {n: p.grad.clone() for n, p in cell.named_parameters()}))
    (o1, dx1, dh1, dc1, g1), (o2, dx2, dh2, dc2, g2) = results
    torch.testing.assert_close(o2, o1, atol=1e-10, rtol=0)
    torch.testing.assert_close(dx2, dx1, atol=1e-10, rtol=0)
    torch.testing.assert_close(dh2, dh1, atol=1e-10, rtol=0)
    if dc1 is not None:
        torch.testing.assert_close(dc2, dc1, atol=1e-10, rtol=0)
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], atol=1e-10, rtol=0)


def test_unbatched_and_no_state_and_no_grad():
    ref, ours = pair("GRUCell", {}, torch.float32)
    x = torch.randn(4)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(ours(x[None]), ref(x[None]), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"input must have shape \[N, 4\]"):
        ours(torch.randn(2, 3))
    with pytest.raises(TypeError, match="dtype"):
        ours(torch.randn(2, 4, dtype=torch.float64))


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell"])
def test_packed_weights_follow_optimiser_and_load_state_dict(name):
    ref, ours = pair(name, {})
    x = torch.randn(2, 4, dtype=torch.float64)
    opt = torch.optim.SGD(ours.parameters(), lr=0.3)
    for _ in range(3):
        out = ours(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
        opt.step()
        opt.zero_grad()
        ref.load_state_dict(ours.state_dict())
        a, b = ours(x), ref(x)
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    with torch.no_grad():
        ours(x)
        sd = {k: torch.randn_like(v) for k, v in ours.state_dict().items()}
        ours.load_state_dict(sd)
        ref.load_state_dict(sd)
        torch.testing.assert_close(ours(x), ref(x), atol=1e-12, rtol=0)
        ours(x)
        ours.weight_hh.mul_(0.5)           # in place: torch bumps the version
        ref.weight_hh.mul_(0.5)
        torch.testing.assert_close(ours(x), ref(x), atol=1e-12, rtol=0)
        ours(x)
        ours.weight_ih.detach().numpy()[:] *= 2  # bypasses the version counter: announce it
        ref.weight_ih.mul_(2)
        ours.weights_changed()
        torch.testing.assert_close(ours(x), ref(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_writes_through_data_after_backward_and_between_sequences(name):
    """Writes through ``p.data`` bypass torch's version counter. The cell packs again after a
    backward (manual SGD: ``p.data -= lr * p.grad``) and at every new sequence (hx None, or a
    state that is not its last output: a target network's ``p.data.copy_`` soft update), so
    both are seen; steps continuing a sequence (hx = the last output, or its detach()) reuse."""
    ref, ours = pair(name, {})
    g = torch.Generator().manual_seed(3)
    xs = torch.randn(4, 3, 4, dtype=torch.float64, generator=g)
    lstm = name == "LSTMCell"
    for _ in range(3):                     # manual SGD, the classic tutorial loop
        outs = []
        for cell in (ref, ours):
            out, _ = loop(cell, xs, None)
            (out ** 2).sum().backward()
            for p in cell.parameters():
                p.data -= 0.1 * p.grad
                p.grad = None
            outs.append(out.detach())
        torch.testing.assert_close(outs[1], outs[0], atol=1e-10, rtol=0)
    src = getattr(torch.nn, name)(4, 5, dtype=torch.float64)
    h_other = torch.randn(3, 5, dtype=torch.float64, generator=g)
    other = (h_other, h_other.clone()) if lstm else h_other
    with torch.no_grad():
        for start in (None, other):         # soft updates between sequences, no backward
            for cell in (ref, ours):
                for p, q in zip(cell.parameters(), src.parameters()):
                    p.data.copy_(0.5 * p.data + 0.5 * q.data)
            a, st_a = loop(ours, xs, start)
            b, st_b = loop(ref, xs, start)
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
        # a sequence continued from the last output (detached, as truncated BPTT does) reuses
        # the packed weights: a write in between needs weights_changed()
        cont = tuple(t.detach() for t in st_a) if lstm else st_a.detach()
        ours.weight_hh.data.mul_(0.5)
        ref.weight_hh.data.mul_(0.5)
        ours.weights_changed()
        a, _ = loop(ours, xs, cont)
        b, _ = loop(ref, xs, cont)
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_replaced_storage_at_the_same_address_is_seen():
    """``p.data = torch.empty(0)`` then ``p.data = new``: the cell holds the storage it packed
    from, so the new weights cannot take its address and pass for it."""
    ref, ours = pair("GRUCell", {})
    x = torch.randn(3, 4, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(5):
            ours(x)
            new = torch.randn(15, 4, dtype=torch.float64)
            ours.weight_ih.data = torch.empty(0, dtype=torch.float64)
            ours.weight_ih.data = new.clone()
            ref.weight_ih.data = new.clone()
            torch.testing.assert_close(ours(x), ref(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell"])
def test_double_backward_raises(name):
    """A gradient taken with create_graph=True and differentiated again raises (the kernels
    have no second derivative), instead of coming back as a constant."""
    _, ours = pair(name, {})
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    out = ours(x)
    h = out[0] if isinstance(out, tuple) else out
    gx, = torch.autograd.grad(h.pow(2).sum(), x, create_graph=True)
    assert gx.requires_grad
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        gx.pow(2).sum().backward()


def test_empty_batch_and_state_shape_message():
    """Batch 0 gives torch's empty outputs (with a graph); an unbatched input with a batched
    state names the state's shape as given."""
    ref, ours = pair("LSTMCell", {})
    x = torch.ones(0, 4, dtype=torch.float64, requires_grad=True)
    h, c = ours(x)
    assert h.shape == (0, 5) and c.shape == (0, 5) and h.requires_grad
    (h.sum() + c.sum()).backward()
    assert x.grad.shape == (0, 4)
    z = torch.zeros(3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"hx h must have shape \[5\], got \[3, 5\]"):
        ours(torch.ones(4, dtype=torch.float64), (z, z))


# ----------------------------------------------------------------------------------------------
# graph capture, autocast, validation (found by probes)

def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("grad", [True, False])
def test_graph_capture_records_torchs_cell(name, grad):
    """torch.jit.trace and torch.export record torch.nn's cell (not a constant of the example's
    output, nor an opaque PythonOp): the graph computes torch's cell on new inputs, with or
    without parameters requiring grad, and the trace saves and loads. torch.jit.script says
    why it cannot compile the cell."""
    import io
    import warnings
    ref, ours = pair(name, {}, torch.float32)
    ours.requires_grad_(grad)
    g = torch.Generator().manual_seed(3)
    x, x2 = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # torch 2.13: TorchScript
        traced = torch.jit.trace(ours, (x,))                  # check_trace re-runs it
        kinds = [n.kind() for n in traced.graph.nodes()]
        assert "prim::PythonOp" not in kinds and "aten::linear" in kinds
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
        buf.seek(0)
        loaded = torch.jit.load(buf)
        with pytest.raises(RuntimeError, match=rf"torch.jit.script cannot compile "
                                               rf"fusedrnn.torch.{name}.*torch.jit.trace"):
            torch.jit.script(ours)
    ep = torch.export.export(ours, (x,))
    want = _first(ref(x2))
    for f in (traced, loaded, ep.module()):
        torch.testing.assert_close(_first(f(x2)), want, rtol=0, atol=0)


def test_fx_symbolic_trace_keeps_the_cell_as_a_leaf():
    import torch.fx

    class Loop(torch.nn.Module):
        def __init__(self, cell):
            super().__init__()
            self.cell = cell

        def forward(self, x, h):
            for t in range(3):
                h = self.cell(x[t], h)
            return h

    ref, ours = pair("GRUCell", {}, torch.float32)
    gm = torch.fx.symbolic_trace(Loop(ours))
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["cell"] * 3
    x, h = torch.randn(3, 2, 4), torch.randn(2, 5)
    torch.testing.assert_close(Loop(ours)(x, h), Loop(ref)(x, h), rtol=1e-6, atol=1e-6)


def _autocast_state(name, state, low, g):
    """The initial state of an autocast test: None, or [3, 5] states of dtype `state`, or
    "mixed": h float32 and c in autocast's `low` dtype (the LSTM's results follow c)."""
    if state is None:
        return None
    h = torch.randn(3, 5, generator=g).to(torch.float32 if state == "mixed" else state)
    c = torch.randn(3, 5, generator=g).to(low if state == "mixed" else state)
    return (h, c) if name == "LSTMCell" else h


def _autocast_twins(name, **kw):
    ref, ours = pair(name, kw, torch.float32)
    return ref, ours


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("xdt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("state", [None, torch.float32, torch.bfloat16, "mixed"])
def test_autocast_bf16(name, xdt, state):
    """Under torch.autocast('cpu', dtype=torch.bfloat16) a float32 cell takes float32 or
    bfloat16 input and states (as torch.nn's cell does), runs the bf16 kernels and returns
    torch.nn's dtypes there; with a gradient wanted it trains in mixed precision (float32
    gradients). Values as torch's within bf16 rounding."""
    ref, ours = _autocast_twins(name)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, generator=g)
    hx = _autocast_state(name, state, torch.bfloat16, g)
    outs = []
    for m in (ref, ours):
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x.to(xdt), hx)
        outs.append(out)
        _first(out).float().pow(2).sum().backward()
    got = outs[1] if isinstance(outs[1], tuple) else (outs[1],)
    want = outs[0] if isinstance(outs[0], tuple) else (outs[0],)
    assert [t.dtype for t in got] == [t.dtype for t in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=3e-2)
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=6e-2)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("xdt", [torch.float32, torch.float16])
@pytest.mark.parametrize("state", [None, torch.float32, torch.float16, "mixed"])
def test_autocast_float16(name, xdt, state):
    """Under torch.autocast('cpu', dtype=torch.float16) a float32 cell takes float32 or
    float16 input and states and returns torch.nn's cells' dtypes there (RNNCell float16;
    LSTMCell the dtype of c, GRUCell that of h, the input's when no state is given), values
    over 20 steps and float32 parameters' gradients within the README's fp16 tolerance
    (operands rounded to float16, float32 kernels). Before, it returned float32 and refused
    float16 input."""
    ref, ours = _autocast_twins(name)
    g = torch.Generator().manual_seed(4)
    xs = torch.randn(20, 3, 4, generator=g).to(xdt)
    hx = _autocast_state(name, state, torch.float16, g)
    outs = []
    for m in (ref, ours):
        st = hx
        with torch.autocast("cpu", dtype=torch.float16):
            for x in xs:
                st = m(x, st)
        outs.append(st if isinstance(st, tuple) else (st,))
        sum(t.float().pow(2).sum() for t in outs[-1]).backward()
    want, got = outs
    assert [t.dtype for t in got] == [t.dtype for t in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=2e-3)
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-2 * float(q.grad.abs().max()))
    with torch.autocast("cpu", dtype=torch.float16), \
            pytest.raises(TypeError, match=r"input must have dtype torch.float32 or "
                                           r"torch.float16 under torch.autocast"):
        ours(xs[0].bfloat16())


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_bfloat16_cell_inference(name):
    """A cell converted with .bfloat16() runs bf16 inference (bfloat16 results, as torch.nn's
    bf16 cell); with a gradient wanted it says to call it under no_grad."""
    ref, ours = pair(name, {}, torch.float32)
    ref, ours = ref.bfloat16(), ours.bfloat16()
    x = torch.randn(3, 4).bfloat16()
    with torch.no_grad():
        got, want = ours(x), ref(x)
    for a, b in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,)):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=3e-2)
    with pytest.raises(ValueError, match="bfloat16 parameters run fusedrnn's bf16 inference "
                                         "kernels, which have no backward"):
        ours(x)


def test_cells_validate_like_the_layers():
    """What the layers refuse clearly, the cells refuse clearly too, naming the argument, at
    construction and before any work at forward."""
    with pytest.raises(TypeError, match=r"LSTMCell: dtype must be torch.float32, "
                                        r"torch.float64 or torch.bfloat16.*got torch.float16"):
        frt.LSTMCell(3, 4, dtype=torch.float16)
    with pytest.raises(TypeError, match="GRUCell: dtype must be"):
        frt.GRUCell(3, 4, True, None, torch.float16)          # positional device, dtype
    with pytest.raises(ValueError, match="RNNCell: device must be 'cpu'"):
        frt.RNNCell(3, 4, device="meta")
    c = frt.LSTMCell(3, 4)
    x, z = torch.randn(2, 3), torch.zeros(2, 4)
    fn = r"fusedrnn.torch.LSTMCell.forward: "
    with pytest.raises(TypeError, match=fn + r"weight_ih must have dtype torch.float32 or "
                                             r"torch.float64.*got torch.float16"):
        frt.LSTMCell(3, 4).half()(x.half())
    with pytest.raises(ValueError, match=fn + "hx h must be a CPU tensor"):
        c(x, (z.to("meta"), z))
    with pytest.raises(ValueError, match=fn + "hx c must be a CPU tensor"):
        c(x, (z, z.to("meta")))
    with pytest.raises(TypeError, match=fn + "input must be a dense"):
        c(x.to_sparse())
    with pytest.raises(TypeError, match=fn + "input has torch's lazy negation"):
        c(torch._neg_view(x))
    with pytest.raises(TypeError, match=fn + "input is torch.bfloat16 but the module's "
                                             "parameters are not"):
        c(x.bfloat16())
    with pytest.raises(TypeError, match=fn + "hx c must have dtype torch.float32"):
        c(x, (z, z.double()))
    with torch.no_grad():
        c.weight_hh.data = c.weight_hh.data.t().contiguous().t()
    with pytest.raises(ValueError, match=fn + "parameter weight_hh must be contiguous"):
        c(x)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("batched", [True, False])
def test_the_next_step_of_a_sequence_checks_as_the_first(name, batched, monkeypatch):
    """The steps after a sequence's first take a short path (the state given is the last
    output, the parameters those packed: their checks ran when they were packed, once per
    sequence instead of at every step, which cost ~9 us a step at N = 1, H = 64). Every
    argument is still checked there, with the checked forward's message, and after a refused
    step the sequence goes on as torch.nn's."""
    ref, ours = pair(name, {}, torch.float32)
    calls = []
    checked = type(ours)._fr_params
    monkeypatch.setattr(type(ours), "_fr_params",
                        lambda self, *a: calls.append(1) or checked(self, *a))
    x = torch.randn(2, 4) if batched else torch.randn(4)
    fn = f"fusedrnn.torch.{name}.forward: "
    lstm = name == "LSTMCell"
    shape = "\\[N, 4\\]" if batched else "\\[N, 4\\]"
    bad_inputs = [(x.double(), TypeError, "input must have dtype torch.float32"),
                  (x.bfloat16(), TypeError, "input is torch.bfloat16 but the module's"),
                  (torch._neg_view(x), TypeError, "input has torch's lazy negation"),
                  (x.to_sparse(), TypeError, "input must be a dense"),
                  (x.to("meta"), ValueError, "input must be a CPU tensor"),
                  (torch.randn(*x.shape[:-1], 5), ValueError, f"input must have shape {shape}")]
    with torch.no_grad():
        st, st_ref = ours(x), ref(x)
        for _ in range(5):
            st, st_ref = ours(x, st), ref(x, st_ref)
        assert len(calls) == 1              # the checks of the packing step only
        for bad, err, msg in bad_inputs:
            with pytest.raises(err, match=fn + msg):
                ours(bad, st)
        h = st[0] if lstm else st
        for view, msg in ((torch._neg_view(h), "hx h has torch's lazy negation"),
                          (h.view(torch.int32), "hx h must have dtype torch.float32"),
                          (h.unsqueeze(0), "hx h must have shape")):
            with pytest.raises((TypeError, ValueError), match=fn + msg):
                ours(x, (view, st[1]) if lstm else view)
        for _ in range(3):                  # the sequence goes on as torch.nn's
            st, st_ref = ours(x, st), ref(x, st_ref)
        for a, b in zip(st if lstm else (st,), st_ref if lstm else (st_ref,)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        # a parameter replaced through p.data within the sequence (a new storage): checked
        ours.weight_hh.data = ours.weight_hh.data.half()
        with pytest.raises(TypeError, match=fn + "weight_hh must have dtype torch.float32"):
            ours(x, st)


def test_rnncell_nonlinearity_is_checked_and_read_at_forward():
    """RNNCell(nonlinearity=...) accepts 'tanh' and 'relu' only (torch.nn.RNN's rule; torch's
    cell fails at forward), and forward uses the attribute as it is then, as torch.nn's cell
    does, also when it changes within a sequence."""
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'gelu'"):
        frt.RNNCell(4, 5, nonlinearity="gelu")
    ref, ours = pair("RNNCell", {})
    x = torch.randn(3, 4, dtype=torch.float64)
    h = ours(x)
    h_ref = ref(x)
    for nl in ("relu", "tanh", "relu"):
        ours.nonlinearity = ref.nonlinearity = nl
        h, h_ref = ours(x, h), ref(x, h_ref)
        torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-12)
    ours.nonlinearity = "gelu"
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'gelu'"):
        ours(x)
