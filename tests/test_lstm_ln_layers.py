"""The LSTM layer's regularisation / normalisation options (issue 19): layer_norm, zoneout_h,
zoneout_c, recurrent_dropout, input_dropout, weight_drop. The layer against the NumPy reference
(fusedrnn.reference_reg) on the masks the layer drew, eval determinism, checkpoint round trip,
bad values."""
import numpy as np
import pytest

import fusedrnn
from fusedrnn import reference_reg as ref
from fusedrnn.layers import GRU, LSTM, RNN

OPTS = [
    dict(layer_norm="haste"),
    dict(layer_norm="tfa", ln_eps=1e-3),
    dict(zoneout_h=0.2, zoneout_c=0.3),
    dict(recurrent_dropout=0.25, input_dropout=0.2, weight_drop=0.3),
    dict(layer_norm="haste", zoneout_h=0.1, zoneout_c=0.05, recurrent_dropout=0.2,
         input_dropout=0.1, weight_drop=0.2),
]


def _perturb(layer, rng):
    for name, p in layer.named_parameters():
        if name.startswith("ln_"):
            p.data += (0.2 * rng.standard_normal(p.data.shape)).astype(p.data.dtype)


@pytest.mark.parametrize("proj", [0, 4])
@pytest.mark.parametrize("opts", OPTS + [dict(recurrent_dropout=0.3, input_dropout=0.2,
                                              dropout_masks="per_gate", zoneout_h=0.2)],
                         ids=lambda o: ",".join(o))
def test_layer_matches_reference_with_its_masks(opts, proj):
    """proj: with a projection (proj_size = 4 < H = 6) the options compose: zoneout and the
    recurrent masks act on the projected h, weight_hr's gradient too."""
    T, N, C, H = 5, 3, 4, 6
    R = proj or H
    rng = np.random.default_rng(0)
    layer = LSTM(C, H, bidirectional=True, dtype="float64", seed=5, proj_size=proj, **opts)
    _perturb(layer, rng)
    x = rng.standard_normal((T, N, C))
    lengths = np.array([5, 2, 4])
    out, (h_n, c_n) = layer.forward(x, lengths=lengths)
    d_out = rng.standard_normal(out.shape)
    dx = layer.backward(d_out)
    mode = opts.get("layer_norm") or "none"
    dx_ref = np.zeros_like(x)
    for direction, sfx in ((0, "_l0"), (1, "_l0_reverse")):
        st = layer._buffers[("reg", "cache", 0, direction)]
        P = dict(layer.named_parameters())
        kw = {k: P[k + sfx].data for k in ("ln_gamma_ih", "ln_beta_ih", "ln_gamma_hh",
                                           "ln_beta_hh", "ln_gamma_c", "ln_beta_c")
              if k + sfx in P}
        kw.update({k: st[k] for k in ("zoneout_seed", "zoneout_h", "zoneout_c",
                                      "recurrent_mask", "gate_masks", "input_mask") if k in st})
        if proj:
            kw["w_hr"] = P["weight_hr" + sfx].data
        xm = x * st["xmask"] if "xmask" in st else x
        w_hh = P["weight_hh" + sfx].data
        wd = w_hh * st["wmask"] if "wmask" in st else w_hh
        y, h, c, cache = ref.lstm_ln_forward(
            xm, P["weight_ih" + sfx].data, wd, P["bias_ih" + sfx].data, P["bias_hh" + sfx].data,
            layer_norm=mode, ln_eps=opts.get("ln_eps", 1e-5), lengths=lengths,
            reverse=bool(direction), **kw)
        np.testing.assert_allclose(out[:, :, direction * R:(direction + 1) * R], y,
                                   rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(h_n[direction], h, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(c_n[direction], c, rtol=1e-10, atol=1e-12)
        g = ref.lstm_ln_backward(cache, d_out[:, :, direction * R:(direction + 1) * R])
        if proj:
            np.testing.assert_allclose(P["weight_hr" + sfx].grad, g["dw_hr"], rtol=1e-9,
                                       atol=1e-11)
        gw = g["dw_hh"] * st["wmask"] if "wmask" in st else g["dw_hh"]
        np.testing.assert_allclose(P["weight_hh" + sfx].grad, gw, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(P["weight_ih" + sfx].grad, g["dw_ih"], rtol=1e-9,
                                   atol=1e-11)
        np.testing.assert_allclose(P["bias_ih" + sfx].grad, g["db_ih"], rtol=1e-9, atol=1e-11)
        for k in kw:
            if k.startswith("ln_"):
                np.testing.assert_allclose(P[k + sfx].grad, g["d" + k], rtol=1e-9, atol=1e-11,
                                           err_msg=k)
        dx_ref += g["dx"] * st["xmask"] if "xmask" in st else g["dx"]
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("opts", OPTS, ids=lambda o: ",".join(o))
def test_eval_is_deterministic_and_the_expectation(opts):
    T, N, C, H = 4, 2, 3, 5
    rng = np.random.default_rng(1)
    layer = LSTM(C, H, num_layers=2, dtype="float64", seed=1, **opts)
    _perturb(layer, rng)
    layer.eval()
    x = rng.standard_normal((T, N, C))
    a, _ = layer.forward(x)
    b, _ = layer.forward(x)
    np.testing.assert_array_equal(a, b)
    # one layer: the reference with the zoneout probabilities, no dropout
    one = LSTM(C, H, dtype="float64", seed=1, **opts)
    _perturb(one, rng)
    one.eval()
    P = dict(one.named_parameters())
    kw = {k: P[k + "_l0"].data for k in ("ln_gamma_ih", "ln_beta_ih", "ln_gamma_hh",
                                         "ln_beta_hh", "ln_gamma_c", "ln_beta_c")
          if k + "_l0" in P}
    y, *_ = ref.lstm_ln_forward(x, P["weight_ih_l0"].data, P["weight_hh_l0"].data,
                                P["bias_ih_l0"].data, P["bias_hh_l0"].data,
                                layer_norm=opts.get("layer_norm") or "none",
                                ln_eps=opts.get("ln_eps", 1e-5),
                                zoneout_h=opts.get("zoneout_h", 0.0),
                                zoneout_c=opts.get("zoneout_c", 0.0), **kw)
    np.testing.assert_allclose(one.forward(x)[0], y, rtol=1e-10, atol=1e-12)


def test_training_draws_new_masks_and_seed_reproduces():
    x = np.random.default_rng(2).standard_normal((6, 3, 4)).astype(np.float32)
    a = LSTM(4, 8, seed=3, zoneout_h=0.3, recurrent_dropout=0.3)
    b = LSTM(4, 8, seed=3, zoneout_h=0.3, recurrent_dropout=0.3)
    ya, yb = a.forward(x)[0], b.forward(x)[0]
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a.forward(x)[0], ya)


@pytest.mark.parametrize("proj", [0, 3])
def test_checkpoint_round_trip(tmp_path, proj):
    layer = LSTM(3, 5, num_layers=2, bidirectional=True, seed=0, layer_norm="tfa",
                 ln_eps=1e-3, zoneout_h=0.1, weight_drop=0.2, proj_size=proj)
    _perturb(layer, np.random.default_rng(0))
    fusedrnn.save(tmp_path / "m.safetensors", layer)
    back = fusedrnn.load(tmp_path / "m.safetensors").model
    assert back.layer_norm == "tfa" and back.ln_eps == 1e-3 and back.zoneout_h == 0.1
    assert back.weight_drop == 0.2
    assert "ln_beta_ih_l1_reverse" in dict(back.named_parameters())
    layer.eval()
    back.eval()
    x = np.random.default_rng(1).standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(layer.forward(x)[0], back.forward(x)[0])


@pytest.mark.parametrize("kw,name", [
    (dict(zoneout_h=1.0), "zoneout_h"), (dict(zoneout_c=-0.1), "zoneout_c"),
    (dict(recurrent_dropout=1.5), "recurrent_dropout"), (dict(input_dropout=True),
                                                          "input_dropout"),
    (dict(weight_drop="0.1"), "weight_drop"), (dict(layer_norm="batch"), "layer_norm"),
    (dict(layer_norm="haste", ln_eps=0), "ln_eps"),
    (dict(zoneout_h=0.1, peepholes=True), "peepholes"),
    (dict(recurrent_dropout=0.1, cell_clip=3.0), "cell_clip"),
])
def test_bad_values(kw, name):
    with pytest.raises(ValueError, match=name):
        LSTM(3, 4, **kw)


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("kw,needle", [
    (dict(zoneout_h=0.99999999), "zoneout_h = 0.99999999 rounds to 1 in float32"),
    (dict(layer_norm="haste", ln_eps=1e-50), "ln_eps = 1e-50 is not a normal float32"),
    (dict(layer_norm="haste", ln_eps=1e39), "ln_eps = 1e\\+39 is not a normal float32")])
def test_values_the_float32_kernel_cannot_take(cls, kw, needle):
    """The kernels take zoneout and ln_eps in the layer's dtype: a float32 layer was made, then
    every forward raised (and the C++ loader refused its checkpoint, or Stream::step aborted).
    float64 takes them."""
    with pytest.raises(ValueError, match=needle):
        cls(3, 4, **kw)
    m = cls(3, 4, dtype="float64", **kw)
    m.eval()
    m.forward(np.zeros((2, 1, 3)))


@pytest.mark.parametrize("kw", [dict(layer_norm="haste"), dict(zoneout_h=0.1),
                                dict(recurrent_dropout=0.2), dict(weight_drop=0.1),
                                dict(input_dropout=0.1), dict(zoneout_c=0.1)])
def test_the_rnn_refuses(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        RNN(3, 4, **kw)


@pytest.mark.parametrize("kw,needle", [
    (dict(zoneout_c=0.1), "zoneout_c must be 0"), (dict(layer_norm="tfa"), "'tfa'"),
    (dict(zoneout_h=0.1, variant="reset_before"), "variant must be 'reset_after'"),
    (dict(layer_norm="haste", variant="reset_before"), "layer_norm"),
])
def test_the_gru_refuses(kw, needle):
    with pytest.raises(ValueError, match=needle):
        GRU(3, 4, **kw)


# -- the command line (fusedrnn train --layer-norm ... --zoneout ... ) ---------------------------
from fusedrnn.cli import main  # noqa: E402
from fusedrnn.tasks.trainer import load_task_and_model, read_checkpoint  # noqa: E402

SMALL = {"classify": ["--min-length", "8", "--max-length", "12", "--hidden", "8",
                      "--batch-size", "8", "-q", "--steps", "2", "--eval-every", "2"],
         "forecast": ["--hidden", "8", "--window", "10", "--horizon", "3", "--batch-size", "8",
                      "-q", "--steps", "2", "--eval-every", "2"],
         "tag": ["--hidden", "8", "--embed", "8", "--batch-size", "8", "-q", "--steps", "2",
                 "--eval-every", "2"],
         "charlm": ["--hidden", "8", "--embed", "8", "--seq-len", "10", "--batch-size", "4",
                    "-q", "--steps", "2", "--eval-every", "2"]}


@pytest.mark.parametrize("task", list(SMALL))
def test_cli_flags_reach_the_layer_and_round_trip(task, tmp_path):
    out = tmp_path / "run"
    argv = ["--cell", "lstm", "--layer-norm", "haste", "--ln-eps", "0.001", "--zoneout-h", "0.1",
            "--zoneout-c", "0.05", "--recurrent-dropout", "0.2", "--input-dropout", "0.1",
            "--weight-drop", "0.3"]
    assert main(["train", "--task", task, *SMALL[task], *argv, "--out", str(out)]) == 0
    flags = read_checkpoint(str(out / "model.safetensors"))["task_metadata"]["flags"]
    assert flags["layer_norm"] == "haste" and flags["zoneout_h"] == 0.1
    assert flags["zoneout_c"] == 0.05 and flags["weight_drop"] == 0.3
    import argparse
    _, model, _, _ = load_task_and_model(str(out / "model.safetensors"), argparse.Namespace(),
                                         prepare=False)
    rnn = model.rnn if hasattr(model, "rnn") else model.encoder
    assert (rnn.layer_norm, rnn.ln_eps, rnn.zoneout_h, rnn.zoneout_c, rnn.recurrent_dropout,
            rnn.input_dropout, rnn.weight_drop) == ("haste", 0.001, 0.1, 0.05, 0.2, 0.1, 0.3)


@pytest.mark.parametrize("argv,needle", [
    (["--cell", "gru", "--zoneout-c", "0.1"], "--zoneout-c applies to --cell lstm only"),
    (["--cell", "gru", "--layer-norm", "tfa"], "--layer-norm"),
    (["--cell", "gru", "--variant", "reset_before", "--zoneout", "0.1"], "reset_after"),
    (["--cell", "rnn", "--zoneout", "0.1"],
     "--zoneout-h applies to --cell lstm or --cell gru only"),
    (["--cell", "lstm", "--weight-drop", "1"], "--weight-drop"),
    (["--cell", "lstm", "--ln-eps", "0.01"], "--ln-eps needs --layer-norm"),
    (["--cell", "lstm", "--layer-norm", "batch"], "--layer-norm"),
    (["--cell", "lstm", "--zoneout", "0.1", "--peepholes"], "peepholes"),
])
def test_cli_bad_flags_are_one_line_errors(argv, needle, tmp_path, capsys):
    rc = main(["train", "--task", "classify", *SMALL["classify"], "--out",
               str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and needle in err, err


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("opts", [dict(zoneout_h=0.1), dict(layer_norm="haste"),
                                  dict(recurrent_dropout=0.2),
                                  dict(recurrent_dropout=0.2, input_dropout=0.3,
                                       dropout_masks="per_gate")], ids=str)
@pytest.mark.parametrize("fill", [np.nan, np.inf])
def test_nonfinite_padding_gets_no_gradient(cls, opts, fill):
    """Padded steps (t >= lengths[n]) get no gradient: a NaN or inf the caller left there made
    weight_ih's gradient non-finite (dw_ih = dgxᵀ x over every row, 0·NaN); the plain kernels
    sum over the valid rows only. The same masks (seeded layers) with zeros there give the same
    gradients."""
    rng = np.random.default_rng(0)
    T, N, C, H = 6, 3, 5, 7
    lengths = np.array([6, 2, 4])
    x = rng.standard_normal((T, N, C))
    pad = np.arange(T)[:, None] >= lengths[None, :]
    grads = []
    for value in (0.0, fill):
        xp = x.copy()
        xp[pad] = value
        m = cls(C, H, seed=0, dtype="float64", **opts)
        y, _ = m.forward(xp, lengths=lengths)
        m.backward(np.ones_like(y))
        grads.append({k: v.copy() for k, v in m.grad_dict().items()})
    for k, g in grads[1].items():
        assert np.isfinite(g).all(), k
        np.testing.assert_allclose(g, grads[0][k], rtol=1e-12, atol=1e-12, err_msg=k)
