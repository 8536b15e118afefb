"""Parity of the regularised / normalised LSTM kernel with independent torch twins (issue 19),
float64, same weights and masks, forward and every gradient <= 1e-10."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fusedrnn import regularised as K  # noqa: E402

from _torch_twins import LayerNormLSTMCell, LSTMLayer, zoneout_lstm  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["haste", "tfa"])
def test_layer_norm_lstm_matches_torchscript_twin(mode):
    T, N, C, H = 5, 3, 4, 6
    torch.manual_seed(0)
    cell = LayerNormLSTMCell(C, H, mode == "tfa", 1e-5, dtype=torch.float64)
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(p + 0.3 * torch.randn_like(p))
            if p.dim() == 2:
                p.mul_(0.4)
    layer = LSTMLayer(cell)
    x = torch.randn(T, N, C, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(N, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(N, H, dtype=torch.float64, requires_grad=True)
    y, (h, c) = layer(x, (h0, c0))
    dy, dh, dc = (torch.randn_like(v) for v in (y, h, c))
    (y * dy).sum().add((h * dh).sum()).add((c * dc).sum()).backward()
    n = lambda t: t.detach().numpy().copy()  # noqa: E731
    kw = dict(layer_norm=mode, ln_eps=1e-5, ln_gamma_ih=n(cell.gamma_i),
              ln_gamma_hh=n(cell.gamma_h), ln_gamma_c=n(cell.gamma_c), ln_beta_c=n(cell.beta_c))
    b = n(cell.bias)
    if mode == "tfa":
        kw.update(ln_beta_ih=n(cell.beta_i), ln_beta_hh=n(cell.beta_h))
    else:
        # haste's LN of the products has no bias of its own: the twin's beta_i + beta_h add
        # to its bias like one more bias vector
        b = b + n(cell.beta_i) + n(cell.beta_h)
    ky, kh, kc, cache = K.lstm_ln_forward(n(x), n(cell.weight_ih), n(cell.weight_hh), b, None,
                                          n(h0), n(c0), **kw)
    np.testing.assert_allclose(ky, n(y), **TOL)
    np.testing.assert_allclose(kh, n(h), **TOL)
    np.testing.assert_allclose(kc, n(c), **TOL)
    g = K.lstm_ln_backward(cache, n(dy), n(dh), n(dc))
    np.testing.assert_allclose(g["dx"], n(x.grad), **TOL)
    np.testing.assert_allclose(g["dh0"], n(h0.grad), **TOL)
    np.testing.assert_allclose(g["dc0"], n(c0.grad), **TOL)
    np.testing.assert_allclose(g["dw_ih"], n(cell.weight_ih.grad), **TOL)
    np.testing.assert_allclose(g["dw_hh"], n(cell.weight_hh.grad), **TOL)
    np.testing.assert_allclose(g["db_ih"], n(cell.bias.grad), **TOL)
    np.testing.assert_allclose(g["dln_gamma_ih"], n(cell.gamma_i.grad), **TOL)
    np.testing.assert_allclose(g["dln_gamma_hh"], n(cell.gamma_h.grad), **TOL)
    np.testing.assert_allclose(g["dln_gamma_c"], n(cell.gamma_c.grad), **TOL)
    np.testing.assert_allclose(g["dln_beta_c"], n(cell.beta_c.grad), **TOL)
    if mode == "tfa":
        np.testing.assert_allclose(g["dln_beta_ih"], n(cell.beta_i.grad), **TOL)
        np.testing.assert_allclose(g["dln_beta_hh"], n(cell.beta_h.grad), **TOL)


@pytest.mark.parametrize("training", [True, False])
def test_zoneout_matches_torch_lstmcell_loop(training):
    T, N, C, H = 6, 4, 3, 5
    torch.manual_seed(1)
    cell = torch.nn.LSTMCell(C, H, dtype=torch.float64)
    x = torch.randn(T, N, C, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(N, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(N, H, dtype=torch.float64, requires_grad=True)
    if training:
        zh = (torch.rand(T, N, H) < 0.3).double()
        zc = (torch.rand(T, N, H) < 0.5).double()
        kw = dict(zoneout_h_mask=zh.numpy(), zoneout_c_mask=zc.numpy())
    else:
        zh, zc = 0.3, 0.5
        kw = dict(zoneout_h=0.3, zoneout_c=0.5)
    y, h, c = zoneout_lstm(cell, x, h0, c0, zh, zc)
    dy, dh, dc = (torch.randn_like(v) for v in (y, h, c))
    (y * dy).sum().add((h * dh).sum()).add((c * dc).sum()).backward()
    n = lambda t: t.detach().numpy().copy()  # noqa: E731
    ky, kh, kc, cache = K.lstm_ln_forward(n(x), n(cell.weight_ih), n(cell.weight_hh),
                                          n(cell.bias_ih), n(cell.bias_hh), n(h0), n(c0), **kw)
    np.testing.assert_allclose(ky, n(y), **TOL)
    np.testing.assert_allclose(kc, n(c), **TOL)
    g = K.lstm_ln_backward(cache, n(dy), n(dh), n(dc))
    for name, t in (("dx", x), ("dh0", h0), ("dc0", c0), ("dw_ih", cell.weight_ih),
                    ("dw_hh", cell.weight_hh), ("db_ih", cell.bias_ih), ("db_hh", cell.bias_hh)):
        np.testing.assert_allclose(g[name], n(t.grad), **TOL, err_msg=name)


def test_recurrent_dropout_and_weight_drop_match_torch():
    """Variational dropout on h_{t-1} (one mask [N, H] for every step and all four gates: the
    single-mask semantics of Keras' implementation=2 / Gal & Ghahramani's tied weights) and
    DropConnect on w_hh (AWD-LSTM), against torch autograd through explicit masks."""
    T, N, C, H = 5, 3, 4, 6
    torch.manual_seed(2)
    d = dict(dtype=torch.float64)
    x = torch.randn(T, N, C, **d, requires_grad=True)
    w_ih = (0.4 * torch.randn(4 * H, C, **d)).requires_grad_()
    w_hh = (0.4 * torch.randn(4 * H, H, **d)).requires_grad_()
    b = torch.randn(4 * H, **d, requires_grad=True)
    rm = (torch.rand(N, H) >= 0.25).double() / 0.75
    wm = (torch.rand(4 * H, H) >= 0.4).double() / 0.6
    h = torch.zeros(N, H, **d)
    c = torch.zeros(N, H, **d)
    ys = []
    for t in range(T):
        a = x[t] @ w_ih.t() + (h * rm) @ (w_hh * wm).t() + b
        i, f, g, o = a.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        ys.append(h)
    y = torch.stack(ys)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    n = lambda t: t.detach().numpy().copy()  # noqa: E731
    wd = n(w_hh) * wm.numpy()
    ky, _, _, cache = K.lstm_ln_forward(n(x), n(w_ih), wd, n(b), None,
                                        recurrent_mask=rm.numpy())
    np.testing.assert_allclose(ky, n(y), **TOL)
    gr = K.lstm_ln_backward(cache, n(dy))
    np.testing.assert_allclose(gr["dx"], n(x.grad), **TOL)
    np.testing.assert_allclose(gr["dw_ih"], n(w_ih.grad), **TOL)
    np.testing.assert_allclose(gr["dw_hh"] * wm.numpy(), n(w_hh.grad), **TOL)
    np.testing.assert_allclose(gr["db_ih"], n(b.grad), **TOL)


# -- fusedrnn.torch.LSTM with the options -------------------------------------------------------
import pickle  # noqa: E402

import fusedrnn.torch as frt  # noqa: E402
from fusedrnn import reference_reg as ref  # noqa: E402


@pytest.mark.parametrize("opts", [dict(layer_norm="tfa"), dict(layer_norm="haste"),
                                  dict(zoneout_h=0.2, zoneout_c=0.1),
                                  dict(recurrent_dropout=0.3, input_dropout=0.2,
                                       weight_drop=0.4)], ids=lambda o: ",".join(o))
def test_torch_module_train_and_eval(opts):
    T, N, C, H = 5, 3, 4, 6
    torch.manual_seed(0)
    m = frt.LSTM(C, H, num_layers=2, bidirectional=True, dtype=torch.float64, **opts)
    names = dict(m.named_parameters())
    assert ("ln_gamma_c_l1_reverse" in names) == ("layer_norm" in opts)
    assert ("ln_beta_ih_l0" in names) == (opts.get("layer_norm") == "tfa")
    with torch.no_grad():
        for k, p in names.items():
            if k.startswith("ln_"):
                p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(T, N, C, dtype=torch.float64, requires_grad=True)
    y, (h, c) = m(x)
    y.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())
    m.eval()
    with torch.no_grad():
        a, _ = m(x)
        b, _ = m(x)
    assert torch.equal(a, b)
    # one layer in eval mode: the reference (zoneout's expectation, no dropout)
    one = frt.LSTM(C, H, dtype=torch.float64, **opts).eval()
    P = {k: v.detach().numpy() for k, v in one.named_parameters()}
    kw = {k: P[k + "_l0"] for k in ("ln_gamma_ih", "ln_beta_ih", "ln_gamma_hh", "ln_beta_hh",
                                    "ln_gamma_c", "ln_beta_c") if k + "_l0" in P}
    want, *_ = ref.lstm_ln_forward(x.detach().numpy(), P["weight_ih_l0"], P["weight_hh_l0"],
                                   P["bias_ih_l0"], P["bias_hh_l0"],
                                   layer_norm=opts.get("layer_norm") or "none",
                                   zoneout_h=opts.get("zoneout_h", 0.0),
                                   zoneout_c=opts.get("zoneout_c", 0.0), **kw)
    with torch.no_grad():
        np.testing.assert_allclose(one(x)[0].numpy(), want, rtol=1e-10, atol=1e-12)
    with pytest.raises(pickle.PicklingError):
        pickle.dumps(m)


@pytest.mark.parametrize("proj", [0, 3])
def test_torch_module_gradients_match_reference_with_fixed_masks(proj):
    """Train mode with zoneout and recurrent dropout: the masks come from torch's RNG; redraw
    them with the same seed and compare every gradient with the reference. proj: with a
    projection (proj_size 3 < H = 4), the h masks are [.., P]."""
    T, N, C, H = 4, 3, 5, 4
    R = proj or H
    opts = dict(layer_norm="haste", zoneout_h=0.3, zoneout_c=0.2, recurrent_dropout=0.25)
    torch.manual_seed(3)
    m = frt.LSTM(C, H, dtype=torch.float64, proj_size=proj, **opts)
    x = torch.randn(T, N, C, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(11)
    y, (h, c) = m(x)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    torch.manual_seed(11)  # the same draws, in the layer's order
    zh = (torch.rand((T, N, R), dtype=torch.float64) < 0.3).double().numpy()
    zc = (torch.rand((T, N, H), dtype=torch.float64) < 0.2).double().numpy()
    rm = ((1 - (torch.rand((N, R), dtype=torch.float64) < 0.25).double()) / 0.75).numpy()
    P = {k: v.detach().numpy() for k, v in m.named_parameters()}
    kw = {k: P[k + "_l0"] for k in ("ln_gamma_ih", "ln_gamma_hh", "ln_gamma_c", "ln_beta_c")}
    if proj:
        kw["w_hr"] = P["weight_hr_l0"]
    yr, _, _, cache = ref.lstm_ln_forward(x.detach().numpy(), P["weight_ih_l0"],
                                          P["weight_hh_l0"], P["bias_ih_l0"], P["bias_hh_l0"],
                                          layer_norm="haste", zoneout_h_mask=zh,
                                          zoneout_c_mask=zc, recurrent_mask=rm, **kw)
    np.testing.assert_allclose(y.detach().numpy(), yr, rtol=1e-10, atol=1e-12)
    g = ref.lstm_ln_backward(cache, dy.numpy())
    np.testing.assert_allclose(x.grad.numpy(), g["dx"], rtol=1e-9, atol=1e-11)
    for name, key in (("weight_hh_l0", "dw_hh"), ("ln_gamma_c_l0", "dln_gamma_c"),
                      ("ln_gamma_ih_l0", "dln_gamma_ih"), ("bias_ih_l0", "db_ih")) + \
            ((("weight_hr_l0", "dw_hr"),) if proj else ()):
        np.testing.assert_allclose(dict(m.named_parameters())[name].grad.numpy(), g[key],
                                   rtol=1e-9, atol=1e-11, err_msg=name)


def test_torch_module_bad_values():
    for kw, name in ((dict(zoneout_h=1.0), "zoneout_h"), (dict(layer_norm="x"), "layer_norm"),
                     (dict(weight_drop=-1), "weight_drop")):
        with pytest.raises(ValueError, match=name):
            frt.LSTM(3, 4, **kw)
    with pytest.raises(ValueError, match="peepholes"):
        frt.LSTM(3, 4, peepholes=True, layer_norm="haste")
    frt.LSTM(3, 4, proj_size=2, layer_norm="haste")   # (the projection composes)


@pytest.mark.parametrize("training", [True, False])
def test_projection_with_zoneout_and_recurrent_mask_matches_a_torch_loop(training):
    """An independent torch transcription of the projected LSTM with zoneout on the projected
    h (and on c) and a recurrent dropout mask on h: the kernel's outputs and every gradient,
    float64. Without options it is torch.nn.LSTM(proj_size=P)."""
    T, N, C, H, P = 6, 3, 4, 7, 3
    torch.manual_seed(5)
    lstm = torch.nn.LSTM(C, H, proj_size=P, dtype=torch.float64)
    w_ih, w_hh, b_ih, b_hh, w_hr = (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0,
                                    lstm.bias_hh_l0, lstm.weight_hr_l0)
    x = torch.randn(T, N, C, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(N, P, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(N, H, dtype=torch.float64, requires_grad=True)
    if training:
        zh = (torch.rand(T, N, P) < 0.3).double()
        zc = (torch.rand(T, N, H) < 0.4).double()
        rm = (torch.rand(N, P) >= 0.25).double() / 0.75
        kw = dict(zoneout_h_mask=zh.numpy(), zoneout_c_mask=zc.numpy(),
                  recurrent_mask=rm.numpy())
    else:
        zh, zc, rm = (torch.full((T, N, P), 0.3, dtype=torch.float64),
                      torch.full((T, N, H), 0.4, dtype=torch.float64), None)
        kw = dict(zoneout_h=0.3, zoneout_c=0.4)
    h, c, ys = h0, c0, []
    for t in range(T):
        hin = h if rm is None else h * rm
        i, f, g, o = (x[t] @ w_ih.T + hin @ w_hh.T + b_ih + b_hh).chunk(4, 1)
        ct = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        ht = torch.sigmoid(o) * torch.tanh(ct)
        h = zh[t] * h + (1 - zh[t]) * (ht @ w_hr.T)
        c = zc[t] * c + (1 - zc[t]) * ct
        ys.append(h)
    y = torch.stack(ys)
    dy, dh, dc = (torch.randn_like(v) for v in (y, h, c))
    (y * dy).sum().add((h * dh).sum()).add((c * dc).sum()).backward()
    n = lambda t: t.detach().numpy().copy()  # noqa: E731
    ky, kh, kc, cache = K.lstm_ln_forward(n(x), n(w_ih), n(w_hh), n(b_ih), n(b_hh), n(h0),
                                          n(c0), w_hr=n(w_hr), **kw)
    for a, b in ((ky, y), (kh, h), (kc, c)):
        np.testing.assert_allclose(a, n(b), **TOL)
    gk = K.lstm_ln_backward(cache, n(dy), n(dh), n(dc))
    for key, t in (("dx", x), ("dh0", h0), ("dc0", c0), ("dw_ih", w_ih), ("dw_hh", w_hh),
                   ("db_ih", b_ih), ("dw_hr", w_hr)):
        np.testing.assert_allclose(gk[key], n(t.grad), **TOL, err_msg=key)
    # no options: torch.nn.LSTM(proj_size=P) itself
    with torch.no_grad():
        want, (wh, wc) = lstm(x, (h0[None], c0[None]))
    ky, kh, kc, _ = K.lstm_ln_forward(n(x), n(w_ih), n(w_hh), n(b_ih), n(b_hh), n(h0), n(c0),
                                      w_hr=n(w_hr), training=False)
    np.testing.assert_allclose(ky, want.numpy(), **TOL)
    np.testing.assert_allclose(kc, wc[0].numpy(), **TOL)
