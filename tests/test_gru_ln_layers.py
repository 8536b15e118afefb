"""The GRU layer's regularisation / normalisation options (issue 19): layer_norm='haste',
zoneout_h, recurrent_dropout, input_dropout, weight_drop. The layer against the NumPy reference
(fusedrnn.reference_reg.gru_ln_*) on the masks the layer drew, eval determinism, checkpoint
round trip, the CLI flags."""
import numpy as np
import pytest

import fusedrnn
from fusedrnn import reference_reg as ref
from fusedrnn.layers import GRU

OPTS = [
    dict(layer_norm="haste"),
    dict(layer_norm="haste", ln_eps=1e-3),
    dict(zoneout_h=0.2),
    dict(recurrent_dropout=0.25, input_dropout=0.2, weight_drop=0.3),
    dict(layer_norm="haste", zoneout_h=0.1, recurrent_dropout=0.2, input_dropout=0.1,
         weight_drop=0.2),
]
LN = ("ln_gamma_ih", "ln_beta_ih", "ln_gamma_hh", "ln_beta_hh")


def _perturb(layer, rng):
    for name, p in layer.named_parameters():
        if name.startswith("ln_"):
            p.data += (0.2 * rng.standard_normal(p.data.shape)).astype(p.data.dtype)


@pytest.mark.parametrize("opts", OPTS, ids=lambda o: ",".join(o))
def test_layer_matches_reference_with_its_masks(opts):
    T, N, C, H = 5, 3, 4, 6
    rng = np.random.default_rng(0)
    layer = GRU(C, H, bidirectional=True, dtype="float64", seed=5, **opts)
    _perturb(layer, rng)
    x = rng.standard_normal((T, N, C))
    h0 = rng.standard_normal((2, N, H))
    lengths = np.array([5, 2, 4])
    out, h_n = layer.forward(x, h0, lengths=lengths)
    d_out = rng.standard_normal(out.shape)
    d_hn = rng.standard_normal(h_n.shape)
    dx = layer.backward(d_out, d_hn)
    mode = opts.get("layer_norm") or "none"
    dx_ref = np.zeros_like(x)
    P = dict(layer.named_parameters())
    for direction, sfx in ((0, "_l0"), (1, "_l0_reverse")):
        st = layer._buffers[("reg", "cache", 0, direction)]
        kw = {k: P[k + sfx].data for k in LN if k + sfx in P}
        kw.update({k: st[k] for k in ("zoneout_seed", "zoneout_h", "recurrent_mask")
                   if k in st})
        assert "zoneout_c" not in st
        xm = x * st["xmask"] if "xmask" in st else x
        w_hh = P["weight_hh" + sfx].data
        wd = w_hh * st["wmask"] if "wmask" in st else w_hh
        y, h, cache = ref.gru_ln_forward(
            xm, P["weight_ih" + sfx].data, wd, P["bias_ih" + sfx].data, P["bias_hh" + sfx].data,
            h0[direction], layer_norm=mode, ln_eps=opts.get("ln_eps", 1e-5), lengths=lengths,
            reverse=bool(direction), **kw)
        np.testing.assert_allclose(out[:, :, direction * H:(direction + 1) * H], y,
                                   rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(h_n[direction], h, rtol=1e-10, atol=1e-12)
        g = ref.gru_ln_backward(cache, d_out[:, :, direction * H:(direction + 1) * H],
                                d_hn[direction])
        gw = g["dw_hh"] * st["wmask"] if "wmask" in st else g["dw_hh"]
        np.testing.assert_allclose(P["weight_hh" + sfx].grad, gw, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(P["weight_ih" + sfx].grad, g["dw_ih"], rtol=1e-9,
                                   atol=1e-11)
        np.testing.assert_allclose(P["bias_ih" + sfx].grad, g["db_ih"], rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(P["bias_hh" + sfx].grad, g["db_hh"], rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(layer.d_state[direction], g["dh0"], rtol=1e-9, atol=1e-11)
        for k in kw:
            if k.startswith("ln_"):
                np.testing.assert_allclose(P[k + sfx].grad, g["d" + k], rtol=1e-9, atol=1e-11,
                                           err_msg=k)
        dx_ref += g["dx"] * st["xmask"] if "xmask" in st else g["dx"]
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-9, atol=1e-11)
    if opts.get("layer_norm"):
        assert {"ln_gamma_ih_l0", "ln_gamma_hh_l0_reverse"} <= set(P)
        assert not any(k.startswith(("ln_beta", "ln_gamma_c")) for k in P)


@pytest.mark.parametrize("opts", OPTS, ids=lambda o: ",".join(o))
def test_eval_is_deterministic_and_the_expectation(opts):
    T, N, C, H = 4, 2, 3, 5
    rng = np.random.default_rng(1)
    layer = GRU(C, H, num_layers=2, dtype="float64", seed=1, **opts)
    _perturb(layer, rng)
    layer.eval()
    x = rng.standard_normal((T, N, C))
    a, _ = layer.forward(x)
    b, _ = layer.forward(x)
    np.testing.assert_array_equal(a, b)
    one = GRU(C, H, dtype="float64", seed=1, **opts)
    _perturb(one, rng)
    one.eval()
    P = dict(one.named_parameters())
    kw = {k: P[k + "_l0"].data for k in LN if k + "_l0" in P}
    y, *_ = ref.gru_ln_forward(x, P["weight_ih_l0"].data, P["weight_hh_l0"].data,
                               P["bias_ih_l0"].data, P["bias_hh_l0"].data,
                               layer_norm=opts.get("layer_norm") or "none",
                               ln_eps=opts.get("ln_eps", 1e-5),
                               zoneout_h=opts.get("zoneout_h", 0.0), **kw)
    np.testing.assert_allclose(one.forward(x)[0], y, rtol=1e-10, atol=1e-12)


def test_training_draws_new_masks_and_seed_reproduces():
    x = np.random.default_rng(2).standard_normal((6, 3, 4)).astype(np.float32)
    a = GRU(4, 8, seed=3, zoneout_h=0.3, recurrent_dropout=0.3)
    b = GRU(4, 8, seed=3, zoneout_h=0.3, recurrent_dropout=0.3)
    ya, yb = a.forward(x)[0], b.forward(x)[0]
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a.forward(x)[0], ya)


def test_options_off_is_the_plain_gru():
    x = np.random.default_rng(2).standard_normal((6, 3, 4)).astype(np.float32)
    a = GRU(4, 8, seed=3)
    b = GRU(4, 8, seed=3, zoneout_h=0.0, recurrent_dropout=0.0)
    assert not b._reg
    np.testing.assert_array_equal(a.forward(x)[0], b.forward(x)[0])


def test_checkpoint_round_trip(tmp_path):
    layer = GRU(3, 5, num_layers=2, bidirectional=True, seed=0, layer_norm="haste",
                ln_eps=1e-3, zoneout_h=0.1, weight_drop=0.2)
    _perturb(layer, np.random.default_rng(0))
    fusedrnn.save(tmp_path / "m.safetensors", layer)
    back = fusedrnn.load(tmp_path / "m.safetensors").model
    assert isinstance(back, GRU)
    assert back.layer_norm == "haste" and back.ln_eps == 1e-3 and back.zoneout_h == 0.1
    assert back.weight_drop == 0.2
    assert "ln_gamma_hh_l1_reverse" in dict(back.named_parameters())
    layer.eval()
    back.eval()
    x = np.random.default_rng(1).standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(layer.forward(x)[0], back.forward(x)[0])


# -- the command line ----------------------------------------------------------------------------
from fusedrnn.cli import main  # noqa: E402
from fusedrnn.tasks.trainer import load_task_and_model, read_checkpoint  # noqa: E402

from test_lstm_ln_layers import SMALL  # noqa: E402


@pytest.mark.parametrize("task", list(SMALL))
def test_cli_flags_reach_the_gru_and_round_trip(task, tmp_path):
    out = tmp_path / "run"
    argv = ["--cell", "gru", "--layer-norm", "haste", "--ln-eps", "0.001", "--zoneout", "0.1",
            "--recurrent-dropout", "0.2", "--input-dropout", "0.1", "--weight-drop", "0.3"]
    assert main(["train", "--task", task, *SMALL[task], *argv, "--out", str(out)]) == 0
    flags = read_checkpoint(str(out / "model.safetensors"))["task_metadata"]["flags"]
    assert flags["layer_norm"] == "haste" and flags["zoneout_h"] == 0.1
    assert flags.get("zoneout_c") is None and flags["weight_drop"] == 0.3
    import argparse
    _, model, _, _ = load_task_and_model(str(out / "model.safetensors"), argparse.Namespace(),
                                         prepare=False)
    rnn = model.rnn if hasattr(model, "rnn") else model.encoder
    assert isinstance(rnn, GRU)
    assert (rnn.layer_norm, rnn.ln_eps, rnn.zoneout_h, rnn.zoneout_c, rnn.recurrent_dropout,
            rnn.input_dropout, rnn.weight_drop) == ("haste", 0.001, 0.1, 0.0, 0.2, 0.1, 0.3)


def test_exports_refuse_a_regularised_gru(tmp_path):
    from fusedrnn import onnx as fonnx
    from fusedrnn.convert import to_torch
    layer = GRU(3, 4, layer_norm="haste", zoneout_h=0.1)
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="torch.nn.GRU has no layer_norm"):
        to_torch(layer)
    pytest.importorskip("onnx")
    with pytest.raises(ValueError, match="the ONNX GRU has no layer_norm"):
        fonnx.to_model_proto(layer)
