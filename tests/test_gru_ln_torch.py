"""Parity of the regularised / normalised GRU kernel with independent torch twins (issue 19),
float64, same weights and masks, forward and every gradient <= 1e-10; fusedrnn.torch.GRU with
the options."""
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedrnn.torch as frt  # noqa: E402
from fusedrnn import reference_reg as ref  # noqa: E402
from fusedrnn import regularised as K  # noqa: E402

from _torch_twins import GRULayer, LayerNormGRUCell, zoneout_gru  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)


def n(t):
    return t.detach().numpy().copy()


def test_layer_norm_gru_matches_torchscript_twin():
    T, N, C, H = 5, 3, 4, 6
    torch.manual_seed(0)
    cell = LayerNormGRUCell(C, H, 1e-5, dtype=torch.float64)
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(p + 0.3 * torch.randn_like(p))
            if p.dim() == 2:
                p.mul_(0.4)
    layer = GRULayer(cell)
    x = torch.randn(T, N, C, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(N, H, dtype=torch.float64, requires_grad=True)
    y, h = layer(x, h0)
    dy, dh = torch.randn_like(y), torch.randn_like(h)
    (y * dy).sum().add((h * dh).sum()).backward()
    ky, kh, cache = K.gru_ln_forward(
        n(x), n(cell.weight_ih), n(cell.weight_hh), n(cell.bias_ih), n(cell.bias_hh), n(h0),
        layer_norm="haste", ln_eps=1e-5, ln_gamma_ih=n(cell.gamma_i), ln_beta_ih=n(cell.beta_i),
        ln_gamma_hh=n(cell.gamma_h), ln_beta_hh=n(cell.beta_h))
    np.testing.assert_allclose(ky, n(y), **TOL)
    np.testing.assert_allclose(kh, n(h), **TOL)
    g = K.gru_ln_backward(cache, n(dy), n(dh))
    for key, t in (("dx", x), ("dh0", h0), ("dw_ih", cell.weight_ih),
                   ("dw_hh", cell.weight_hh), ("db_ih", cell.bias_ih), ("db_hh", cell.bias_hh),
                   ("dln_gamma_ih", cell.gamma_i), ("dln_beta_ih", cell.beta_i),
                   ("dln_gamma_hh", cell.gamma_h), ("dln_beta_hh", cell.beta_h)):
        np.testing.assert_allclose(g[key], n(t.grad), **TOL, err_msg=key)


@pytest.mark.parametrize("training", [True, False])
def test_zoneout_matches_torch_grucell_loop(training):
    T, N, C, H = 6, 4, 3, 5
    torch.manual_seed(1)
    cell = torch.nn.GRUCell(C, H, dtype=torch.float64)
    x = torch.randn(T, N, C, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(N, H, dtype=torch.float64, requires_grad=True)
    if training:
        zh = (torch.rand(T, N, H) < 0.3).double()
        kw = dict(zoneout_h_mask=zh.numpy())
    else:
        zh = 0.3
        kw = dict(zoneout_h=0.3)
    y, h = zoneout_gru(cell, x, h0, zh)
    dy, dh = torch.randn_like(y), torch.randn_like(h)
    (y * dy).sum().add((h * dh).sum()).backward()
    ky, kh, cache = K.gru_ln_forward(n(x), n(cell.weight_ih), n(cell.weight_hh),
                                     n(cell.bias_ih), n(cell.bias_hh), n(h0), **kw)
    np.testing.assert_allclose(ky, n(y), **TOL)
    np.testing.assert_allclose(kh, n(h), **TOL)
    g = K.gru_ln_backward(cache, n(dy), n(dh))
    for key, t in (("dx", x), ("dh0", h0), ("dw_ih", cell.weight_ih),
                   ("dw_hh", cell.weight_hh), ("db_ih", cell.bias_ih), ("db_hh", cell.bias_hh)):
        np.testing.assert_allclose(g[key], n(t.grad), **TOL, err_msg=key)


def test_recurrent_dropout_and_weight_drop_match_torch():
    """One mask [N, H] on h_{t-1} in the recurrent product (all three gates; the carried h is
    not masked) and DropConnect on w_hh, against torch autograd through explicit masks."""
    T, N, C, H = 5, 3, 4, 6
    torch.manual_seed(2)
    d = dict(dtype=torch.float64)
    x = torch.randn(T, N, C, **d, requires_grad=True)
    w_ih = (0.4 * torch.randn(3 * H, C, **d)).requires_grad_()
    w_hh = (0.4 * torch.randn(3 * H, H, **d)).requires_grad_()
    b_ih = torch.randn(3 * H, **d, requires_grad=True)
    b_hh = torch.randn(3 * H, **d, requires_grad=True)
    rm = (torch.rand(N, H) >= 0.25).double() / 0.75
    wm = (torch.rand(3 * H, H) >= 0.4).double() / 0.6
    h = torch.zeros(N, H, **d)
    ys = []
    for t in range(T):
        gi = x[t] @ w_ih.t() + b_ih
        gh = (h * rm) @ (w_hh * wm).t() + b_hh
        i_r, i_z, i_n = gi.chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        h = (1 - z) * torch.tanh(i_n + r * h_n) + z * h
        ys.append(h)
    y = torch.stack(ys)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    wd = n(w_hh) * wm.numpy()
    ky, _, cache = K.gru_ln_forward(n(x), n(w_ih), wd, n(b_ih), n(b_hh),
                                    recurrent_mask=rm.numpy())
    np.testing.assert_allclose(ky, n(y), **TOL)
    gr = K.gru_ln_backward(cache, n(dy))
    np.testing.assert_allclose(gr["dx"], n(x.grad), **TOL)
    np.testing.assert_allclose(gr["dw_ih"], n(w_ih.grad), **TOL)
    np.testing.assert_allclose(gr["dw_hh"] * wm.numpy(), n(w_hh.grad), **TOL)
    np.testing.assert_allclose(gr["db_ih"], n(b_ih.grad), **TOL)
    np.testing.assert_allclose(gr["db_hh"], n(b_hh.grad), **TOL)


@pytest.mark.parametrize("opts", [dict(layer_norm="haste"), dict(zoneout_h=0.2),
                                  dict(recurrent_dropout=0.3, input_dropout=0.2,
                                       weight_drop=0.4)], ids=lambda o: ",".join(o))
def test_torch_module_train_and_eval(opts):
    T, N, C, H = 5, 3, 4, 6
    torch.manual_seed(0)
    m = frt.GRU(C, H, num_layers=2, bidirectional=True, dtype=torch.float64, **opts)
    names = dict(m.named_parameters())
    assert ("ln_gamma_hh_l1_reverse" in names) == ("layer_norm" in opts)
    assert not any(k.startswith(("ln_beta", "ln_gamma_c")) for k in names)
    with torch.no_grad():
        for k, p in names.items():
            if k.startswith("ln_"):
                p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(T, N, C, dtype=torch.float64, requires_grad=True)
    y, h = m(x)
    assert h.shape == (4, N, H)
    y.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())
    m.eval()
    with torch.no_grad():
        a, _ = m(x)
        b, _ = m(x)
    assert torch.equal(a, b)
    one = frt.GRU(C, H, dtype=torch.float64, **opts).eval()
    P = {k: v.detach().numpy() for k, v in one.named_parameters()}
    kw = {k: P[k + "_l0"] for k in ("ln_gamma_ih", "ln_gamma_hh") if k + "_l0" in P}
    want, *_ = ref.gru_ln_forward(x.detach().numpy(), P["weight_ih_l0"], P["weight_hh_l0"],
                                  P["bias_ih_l0"], P["bias_hh_l0"],
                                  layer_norm=opts.get("layer_norm") or "none",
                                  zoneout_h=opts.get("zoneout_h", 0.0), **kw)
    with torch.no_grad():
        np.testing.assert_allclose(one(x)[0].numpy(), want, rtol=1e-10, atol=1e-12)
    with pytest.raises(pickle.PicklingError, match="GRU with"):
        pickle.dumps(m)


def test_torch_module_gradients_match_reference_with_fixed_masks():
    T, N, C, H = 4, 3, 5, 4
    opts = dict(layer_norm="haste", zoneout_h=0.3, recurrent_dropout=0.25)
    torch.manual_seed(3)
    m = frt.GRU(C, H, dtype=torch.float64, **opts)
    x = torch.randn(T, N, C, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, N, H, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(11)
    y, h = m(x, h0)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    torch.manual_seed(11)  # the same draws, in the layer's order
    zh = (torch.rand((T, N, H), dtype=torch.float64) < 0.3).double().numpy()
    rm = ((1 - (torch.rand((N, H), dtype=torch.float64) < 0.25).double()) / 0.75).numpy()
    P = {k: v.detach().numpy() for k, v in m.named_parameters()}
    kw = {k: P[k + "_l0"] for k in ("ln_gamma_ih", "ln_gamma_hh")}
    yr, _, cache = ref.gru_ln_forward(x.detach().numpy(), P["weight_ih_l0"],
                                      P["weight_hh_l0"], P["bias_ih_l0"], P["bias_hh_l0"],
                                      n(h0[0]), layer_norm="haste", zoneout_h_mask=zh,
                                      recurrent_mask=rm, **kw)
    np.testing.assert_allclose(y.detach().numpy(), yr, rtol=1e-10, atol=1e-12)
    g = ref.gru_ln_backward(cache, dy.numpy())
    np.testing.assert_allclose(x.grad.numpy(), g["dx"], rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(h0.grad.numpy()[0], g["dh0"], rtol=1e-9, atol=1e-11)
    for name, key in (("weight_hh_l0", "dw_hh"), ("ln_gamma_hh_l0", "dln_gamma_hh"),
                      ("ln_gamma_ih_l0", "dln_gamma_ih"), ("bias_hh_l0", "db_hh")):
        np.testing.assert_allclose(dict(m.named_parameters())[name].grad.numpy(), g[key],
                                   rtol=1e-9, atol=1e-11, err_msg=name)


def test_torch_module_bad_values():
    for kw, needle in ((dict(zoneout_h=1.0), "zoneout_h"), (dict(layer_norm="tfa"), "'tfa'"),
                       (dict(zoneout_c=0.1), "zoneout_c"),
                       (dict(zoneout_h=0.1, variant="reset_before"), "reset_after")):
        with pytest.raises(ValueError, match=needle):
            frt.GRU(3, 4, **kw)
