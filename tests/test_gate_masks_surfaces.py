"""dropout_masks='per_gate' (Keras 3's per-gate recurrent dropout, issue 19) on the surfaces
beyond the fusedrnn layers: the fusedrnn.torch modules (same outputs and gradients as the
fusedrnn layer on the same masks) and ``fusedrnn train --dropout-masks`` (reaches the layer, is
kept in the checkpoint and restored by --resume); bad values are a ValueError naming the
option. Also the Elman RNN refusing issue 19's options on both surfaces."""
import argparse

import numpy as np
import pytest

import fusedrnn
from fusedrnn import layers as fl

torch = pytest.importorskip("torch")

import fusedrnn.torch as frt  # noqa: E402

G = {"LSTM": 4, "GRU": 3}


@pytest.mark.parametrize("cls_name", ["LSTM", "GRU"])
@pytest.mark.parametrize("opts", [dict(recurrent_dropout=0.3, input_dropout=0.2),
                                  dict(recurrent_dropout=0.3, layer_norm="haste"),
                                  dict(input_dropout=0.25)],
                         ids=lambda o: ",".join(o))
def test_torch_module_per_gate_equals_the_layer_on_the_same_masks(cls_name, opts,
                                                                  monkeypatch):
    T, N, C, H, L = 5, 3, 4, 6, 2
    torch.manual_seed(0)
    m = getattr(frt, cls_name)(C, H, num_layers=L, bidirectional=True, dtype=torch.float64,
                               dropout_masks="per_gate", **opts)
    assert m.dropout_masks == "per_gate" and "dropout_masks='per_gate'" in repr(m)
    with torch.no_grad():
        for k, p in m.named_parameters():
            if k.startswith("ln_"):
                p.add_(0.2 * torch.randn_like(p))
    # the masks the module draws (torch's RNG), in its order: per layer and direction
    drawn = []
    real = frt._reg_forward

    def spy(meta, *args, **kw):
        assert meta["gate_masks"] is True
        for k in ("recurrent_mask", "input_mask"):
            if k in meta:
                assert meta[k].shape[0] == G[cls_name]  # one mask per gate block
                drawn.append(meta[k].copy())
        return real(meta, *args, **kw)

    monkeypatch.setattr(frt, "_reg_forward", spy)
    x = torch.randn(T, N, C, dtype=torch.float64, requires_grad=True)
    y, state = m(x)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    assert len(drawn) == L * 2 * sum(1 for k in ("recurrent_dropout", "input_dropout")
                                     if k in opts)
    # the fusedrnn layer, the same parameters, fed the same masks in the same order
    layer = getattr(fusedrnn, cls_name)(C, H, num_layers=L, bidirectional=True,
                                        dtype="float64", dropout_masks="per_gate", **opts)
    tp = dict(m.named_parameters())
    for k, p in layer.named_parameters():
        p.data[...] = tp[k].detach().numpy()
    it = iter(drawn)

    def keep_mask(rng, shape, p, dt):
        mask = next(it)
        assert mask.shape == tuple(shape)
        return mask

    monkeypatch.setattr(fl, "_keep_mask", keep_mask)
    layer.train()
    yl, _ = layer(x.detach().numpy())
    layer.zero_grad()
    dx = layer.backward(dy.numpy())
    assert next(it, None) is None
    np.testing.assert_allclose(yl, y.detach().numpy(), rtol=1e-12, atol=1e-13)
    if isinstance(dx, tuple):
        dx = dx[0]
    np.testing.assert_allclose(dx, x.grad.numpy(), rtol=1e-11, atol=1e-12)
    for k, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, tp[k].grad.numpy(), rtol=1e-11, atol=1e-12,
                                   err_msg=k)


@pytest.mark.parametrize("cls_name", ["LSTM", "GRU"])
def test_torch_module_per_gate_draws_differ_from_shared_and_eval_ignores_them(cls_name):
    T, N, C, H = 6, 4, 5, 7
    kw = dict(recurrent_dropout=0.4, input_dropout=0.3, dtype=torch.float64)
    torch.manual_seed(0)
    pg = getattr(frt, cls_name)(C, H, dropout_masks="per_gate", **kw)
    torch.manual_seed(0)
    sh = getattr(frt, cls_name)(C, H, **kw)
    assert sh.dropout_masks == "shared" and "dropout_masks" not in repr(sh)
    x = torch.randn(T, N, C, dtype=torch.float64)
    torch.manual_seed(5)
    a, _ = pg(x)
    torch.manual_seed(5)
    b, _ = sh(x)
    assert not torch.allclose(a, b)
    pg.eval(), sh.eval()
    with torch.no_grad():
        assert torch.equal(pg(x)[0], sh(x)[0])  # evaluation: no dropout either way


@pytest.mark.parametrize("cls_name", ["LSTM", "GRU"])
def test_torch_module_bad_dropout_masks(cls_name):
    cls = getattr(frt, cls_name)
    with pytest.raises(ValueError, match="dropout_masks must be 'shared' or 'per_gate'"):
        cls(3, 4, recurrent_dropout=0.2, dropout_masks="keras")
    with pytest.raises(ValueError, match="dropout_masks='per_gate' needs recurrent_dropout"):
        cls(3, 4, zoneout_h=0.1, dropout_masks="per_gate")


@pytest.mark.parametrize("kw", [dict(layer_norm="haste"), dict(zoneout_h=0.1),
                                dict(zoneout_c=0.1), dict(recurrent_dropout=0.2),
                                dict(input_dropout=0.1), dict(weight_drop=0.1),
                                dict(dropout_masks="per_gate"), dict(dropout_masks="keras")])
@pytest.mark.parametrize("surface", ["layer", "torch"])
def test_the_rnn_refuses_every_option_by_name(kw, surface):
    cls = fusedrnn.RNN if surface == "layer" else frt.RNN
    with pytest.raises(ValueError, match=next(iter(kw))):
        cls(3, 4, **kw)


# -- the command line ------------------------------------------------------------------------
from fusedrnn.cli import main  # noqa: E402
from fusedrnn.tasks.trainer import load_task_and_model, read_checkpoint  # noqa: E402

from test_lstm_ln_layers import SMALL  # noqa: E402


def _rnn(path):
    _, model, _, _ = load_task_and_model(str(path), argparse.Namespace(), prepare=False)
    return model.rnn if hasattr(model, "rnn") else model.encoder


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("task", list(SMALL))
def test_cli_dropout_masks_reaches_the_layer_and_resume_keeps_it(task, cell, tmp_path,
                                                                  monkeypatch):
    out = tmp_path / "run"
    argv = ["--cell", cell, "--recurrent-dropout", "0.2", "--input-dropout", "0.1",
            "--dropout-masks", "per_gate"]
    seen = []
    real = fl._Regularised._kernel_forward

    def spy(self, dims, *args, **kw):
        seen.append(self.dropout_masks)
        return real(self, dims, *args, **kw)

    monkeypatch.setattr(fl._Regularised, "_kernel_forward", spy)
    assert main(["train", "--task", task, *SMALL[task], *argv, "--out", str(out)]) == 0
    assert seen and set(seen) == {"per_gate"}  # the training forwards ran with per-gate masks
    ckpt = out / "model.safetensors"
    meta = read_checkpoint(str(ckpt))
    assert meta["task_metadata"]["flags"]["dropout_masks"] == "per_gate"
    assert _rnn(ckpt).dropout_masks == "per_gate"
    # --resume without the flag: the checkpoint's value comes back
    seen.clear()
    assert main(["train", "--task", task, *SMALL[task], "--resume", str(ckpt), "--out",
                 str(out)]) == 0
    assert seen and set(seen) == {"per_gate"}
    assert read_checkpoint(str(ckpt))["task_metadata"]["flags"]["dropout_masks"] == "per_gate"
    assert _rnn(ckpt).dropout_masks == "per_gate"


def test_cli_shared_is_the_default(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--task", "classify", *SMALL["classify"], "--cell", "lstm",
                 "--recurrent-dropout", "0.2", "--out", str(out)]) == 0
    assert _rnn(out / "model.safetensors").dropout_masks == "shared"


@pytest.mark.parametrize("argv,needle", [
    (["--cell", "lstm", "--recurrent-dropout", "0.2", "--dropout-masks", "keras"],
     "--dropout-masks"),
    (["--cell", "lstm", "--zoneout", "0.1", "--dropout-masks", "per_gate"],
     "--dropout-masks per_gate needs --recurrent-dropout or --input-dropout"),
    (["--cell", "rnn", "--dropout-masks", "per_gate"],
     "--dropout-masks applies to --cell lstm or --cell gru only"),
])
def test_cli_bad_dropout_masks_are_one_line_errors(argv, needle, tmp_path, capsys):
    rc = main(["train", "--task", "classify", *SMALL["classify"], "--out",
               str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and needle in err, err


def test_cell_options_refuses_a_bad_value_from_a_checkpoint():
    """The value is checked where it enters the tasks (cell_options), also when it comes from a
    checkpoint's flags rather than argparse's choices."""
    from fusedrnn.tasks.common import cell_options
    a = argparse.Namespace(cell="lstm", recurrent_dropout=0.2, dropout_masks="keras")
    with pytest.raises(ValueError, match="--dropout-masks"):
        cell_options(argparse.Namespace(args=a))
