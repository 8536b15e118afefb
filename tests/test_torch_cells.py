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
