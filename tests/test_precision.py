"""bf16 inference on every surface (issue 16): RecurrentModel.frozen / fusedrnn.models.freeze over
whole models (stacks, bidirectional, task models), the ``fusedrnn`` command's --precision, and
fusedrnn.torch modules converted with ``.to(torch.bfloat16)`` or called under bf16 autocast.
Each route must give exactly the bf16 kernels' results through the layers' frozen bf16 copies
(bitwise), and bad requests a ValueError / one-line error naming the argument."""
import json

import numpy as np
import pytest

import fusedrnn
from fusedrnn.cli import main
from fusedrnn.models import RecurrentModel, freeze


def _model(cell, **kw):
    return RecurrentModel(cell, vocab_size=13, embed_dim=6, hidden_size=20, output_size=13,
                          seed=3, **kw)


@pytest.mark.parametrize("cell,kw", [("lstm", dict(num_layers=2, bidirectional=True)),
                                     ("lstm", dict(proj_size=7, peepholes=True)),
                                     ("gru", dict(num_layers=2, variant="reset_before")),
                                     ("rnn", dict(bidirectional=True, nonlinearity="relu"))])
def test_recurrent_model_frozen_bf16_is_embed_then_bf16_stack_then_head(cell, kw):
    model = _model(cell, **kw)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 13, (9, 4))
    lengths = np.array([9, 5, 1, 9])
    frz = model.frozen(precision="bfloat16")
    assert frz.rnn.is_frozen and frz.rnn.precision == "bfloat16" and not frz.training
    assert not model.rnn.is_frozen and model.rnn.precision == "float32"   # untouched
    y, state = frz(x, lengths=lengths)
    y2, _ = frz(x, lengths=lengths)                        # packed weights reused
    np.testing.assert_array_equal(y, y2)
    # by hand: the layer's own bf16 frozen copy between the float32 embedding and head
    h, state_ref = model.rnn.frozen(precision="bfloat16")(model.embed(x), None, lengths)
    np.testing.assert_array_equal(y, model.head(h))
    for a, b in zip(np.atleast_1d(state) if cell != "lstm" else state,
                    np.atleast_1d(state_ref) if cell != "lstm" else state_ref):
        np.testing.assert_array_equal(a, b)
    y32, _ = model.eval()(x, lengths=lengths)
    diff = np.abs(y - y32).max()
    assert 1e-6 < diff < 5e-2 * max(1.0, np.abs(y32).max()), diff
    # float32: bit for bit the model's eval-mode forward
    np.testing.assert_array_equal(model.frozen()(x, lengths=lengths)[0], y32)


def test_frozen_copy_of_a_bf16_layer_stays_bf16():
    layer = fusedrnn.GRU(5, 8, seed=1)
    twice = layer.frozen(precision="bfloat16").frozen()
    assert twice.precision == "bfloat16"
    x = np.random.default_rng(1).standard_normal((4, 2, 5)).astype(np.float32)
    np.testing.assert_array_equal(twice(x)[0], layer.frozen(precision="bfloat16")(x)[0])
    assert layer.frozen(precision="bfloat16").frozen("float32").precision == "float32"


def test_freeze_replaces_every_recurrent_layer_of_a_task_model():
    from fusedrnn.tasks.forecast import ForecastEncoder, JordanForecaster
    rng = np.random.default_rng(2)
    for m in (ForecastEncoder("gru", 12, 2, horizon=3, seed=0), JordanForecaster("lstm", 12, seed=0)):
        frz = freeze(m, "bfloat16")
        assert frz.rnn.precision == "bfloat16" and m.rnn.precision == "float32"
        w = rng.standard_normal((16, 3)).astype(np.float32)
        p16, p32 = frz.predict(w, 3), m.eval().predict(w, 3)
        assert p16.shape == p32.shape and 0 < np.abs(p16 - p32).max() < 5e-2


def test_bad_precision_requests_name_the_argument():
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16, int8"):
        _model("lstm").frozen(precision="int4")
    with pytest.raises(ValueError, match="precision=int8 needs float32 recurrent layers"):
        RecurrentModel("gru", input_size=3, hidden_size=4, dtype="float64").frozen(
            precision="int8")
    from fusedrnn.cells import LSTMCell
    from fusedrnn.module import Sequential
    with pytest.raises(ValueError, match="int8 covers the LSTM"):
        freeze(Sequential(LSTMCell(3, 4)), "int8")
    f64 = RecurrentModel("lstm", input_size=3, hidden_size=4, dtype="float64")
    with pytest.raises(ValueError, match="precision=bfloat16 needs float32 recurrent layers"):
        f64.frozen(precision="bfloat16")
    f64.frozen(precision="float32")                        # float64 runs as it is
    with pytest.raises(ValueError, match="--precision=bfloat16 needs float32"):
        freeze(f64, "bfloat16", where="fusedrnn evaluate", argument="--precision")
    from fusedrnn.module import Linear, Sequential
    with pytest.raises(ValueError, match="has none"):
        freeze(Sequential(Linear(2, 3)), "bfloat16")
    from fusedrnn.cells import LSTMCell
    with pytest.raises(ValueError, match="single-step LSTMCell"):
        freeze(Sequential(LSTMCell(3, 4)), "bfloat16")
    with pytest.raises(TypeError, match="fusedrnn Module"):
        freeze(object(), "bfloat16")


# -- the command --------------------------------------------------------------------------------
TINY = ["--hidden", "16", "--layers", "2", "--seq-len", "20", "--batch-size", "8",
        "--lr", "0.01", "-q"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "one", "two", "three"]
    text = tmp_path_factory.mktemp("prec") / "text.txt"
    text.write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(400)) + "\n")
    out = tmp_path_factory.mktemp("prec_run")
    assert main(["train", "--data", str(text), *TINY, "--steps", "15", "--eval-every", "15",
                 "--out", str(out)]) == 0
    return out / "model.safetensors"


def _one_line(capsys, rc, needle):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("fusedrnn: error: "), err
    assert needle in err, err


def test_cli_evaluate_in_bf16_is_close_to_float32(ckpt, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(ckpt), "--json"]) == 0
    m32 = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(ckpt), "--json", "--precision", "bf16"]) == 0
    m16 = json.loads(capsys.readouterr().out)
    assert m16["bpc"] != m32["bpc"] and abs(m16["bpc"] - m32["bpc"]) < 0.05


def test_cli_evaluate_in_int8_is_close_to_float32(ckpt, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(ckpt), "--json"]) == 0
    m32 = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(ckpt), "--json", "--precision", "int8"]) == 0
    m8 = json.loads(capsys.readouterr().out)
    assert m8["bpc"] != m32["bpc"] and abs(m8["bpc"] - m32["bpc"]) < 0.05


def test_cli_generate_and_predict_in_int8(ckpt, tmp_path, capsys):
    capsys.readouterr()
    assert main(["generate", str(ckpt), "--prime", "al", "--length", "30",
                 "--precision", "int8"]) == 0
    assert len(capsys.readouterr().out) >= 30
    inp = tmp_path / "in.txt"
    inp.write_text("alpha beta\n")
    assert main(["predict", str(ckpt), "--input", str(inp), "--precision", "int8"]) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("cell,kw", [("lstm", dict(num_layers=2, bidirectional=True)),
                                     ("lstm", dict(proj_size=7, peepholes=True)),
                                     ("gru", dict(num_layers=2, variant="reset_before")),
                                     ("rnn", dict(bidirectional=True, nonlinearity="relu"))])
def test_recurrent_model_frozen_int8_is_embed_then_int8_stack_then_head(cell, kw):
    model = _model(cell, **kw)
    x = np.random.default_rng(0).integers(0, 13, (9, 4))
    lengths = np.array([9, 5, 1, 9])
    frz = model.frozen(precision="int8")
    assert frz.rnn.precision == "int8" and model.rnn.precision == "float32"
    y, _ = frz(x, lengths=lengths)
    h, _ = model.rnn.frozen(precision="int8")(model.embed(x), None, lengths)
    np.testing.assert_array_equal(y, model.head(h))
    y32, _ = model.eval()(x, lengths=lengths)
    assert 1e-6 < np.abs(y - y32).max() < 1e-1 * max(1.0, np.abs(y32).max())


def test_cli_generate_and_predict_in_bf16(ckpt, tmp_path, capsys):
    capsys.readouterr()
    assert main(["generate", str(ckpt), "--prime", "al", "--length", "30",
                 "--precision", "bfloat16"]) == 0
    assert len(capsys.readouterr().out) >= 30
    inp = tmp_path / "in.txt"
    inp.write_text("alpha beta\n")
    assert main(["predict", str(ckpt), "--input", str(inp), "--precision", "bfloat16"]) == 0
    assert capsys.readouterr().out.strip()


def test_cli_precision_errors_are_one_line(ckpt, tmp_path, capsys):
    capsys.readouterr()
    _one_line(capsys, main(["evaluate", str(ckpt), "--precision", "int4"]), "or int8")
    _one_line(capsys, main(["train", "--precision", "int8", "--steps", "1", "--out",
                            str(tmp_path / "x")]), "training runs in float32")
    _one_line(capsys, main(["evaluate", str(ckpt), "--precision", "fp8"]), "--precision")
    _one_line(capsys, main(["train", "--precision", "int8", "--steps", "1", "--out",
                            str(tmp_path / "x")]), "int8")
    assert not (tmp_path / "x").exists()


# -- fusedrnn.torch -----------------------------------------------------------------------------
torch = pytest.importorskip("torch")


def _fused_twin(layer, mod):
    """The fusedrnn layer with the torch module's weights (same parameter names)."""
    layer.load_state_dict({k: v.detach().float().numpy() for k, v in mod.state_dict().items()})
    return layer


@pytest.mark.parametrize("cls,kw", [("LSTM", dict(num_layers=2, bidirectional=True)),
                                    ("LSTM", dict(proj_size=5)),
                                    ("GRU", dict(num_layers=2, variant="reset_before")),
                                    ("RNN", dict(nonlinearity="relu", bidirectional=True))])
def test_torch_module_to_bf16_runs_the_bf16_kernels(cls, kw):
    import fusedrnn.torch as frt
    torch.manual_seed(0)
    mod = getattr(frt, cls)(6, 11, **kw)
    x = torch.randn(7, 3, 6)
    m16 = mod.to(torch.bfloat16)          # every parameter rounded to bf16, biases too
    # the fusedrnn layer holding those bf16 values in float32 (exact), frozen at bf16
    ref_layer = _fused_twin(getattr(fusedrnn, cls)(6, 11, **kw), m16).frozen(precision="bfloat16")
    y_ref, s_ref = ref_layer(x.to(torch.bfloat16).float().numpy())
    with torch.no_grad():
        y, s = m16(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    np.testing.assert_array_equal(y.float().numpy(),
                                  torch.from_numpy(y_ref).to(torch.bfloat16).float().numpy())
    h, h_ref = (s[0], s_ref[0]) if cls == "LSTM" else (s, s_ref)
    assert h.dtype == torch.bfloat16
    np.testing.assert_array_equal(h.float().numpy(),
                                  torch.from_numpy(h_ref).to(torch.bfloat16).float().numpy())
    # batch_first and a PackedSequence take the same route
    with torch.inference_mode():
        packed = torch.nn.utils.rnn.pack_padded_sequence(x.to(torch.bfloat16), [7, 4, 2],
                                                         enforce_sorted=False)
        out, _ = m16(packed)
    assert out.data.dtype == torch.bfloat16


def test_torch_autocast_inference_runs_bf16_with_torch_dtypes():
    import fusedrnn.torch as frt
    torch.manual_seed(1)
    mod = frt.GRU(5, 9, num_layers=2)
    x = torch.randn(6, 2, 5)
    ref = _fused_twin(fusedrnn.GRU(5, 9, num_layers=2), mod).frozen(precision="bfloat16")(
        x.numpy())[0]
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        y, h = mod(x)
        ys, _ = torch.nn.GRU(5, 9, num_layers=2)(x)
    # the GRU: float32 under CPU autocast, as torch.nn's (the bf16 kernels' fp32 results)
    assert y.dtype == h.dtype == ys.dtype == torch.float32
    np.testing.assert_array_equal(y.numpy(), ref)
    lstm = frt.LSTM(5, 9)
    ref = _fused_twin(fusedrnn.LSTM(5, 9), lstm).frozen(precision="bfloat16")(x.numpy())[0]
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        y, (h, c) = lstm(x)
    # the LSTM: bfloat16 under CPU autocast, as torch.nn's, whose autocast LSTM runs only on a
    # CPU with bf16 instructions (on an AVX2-only CPU oneDNN refuses its primitive; ours runs)
    assert y.dtype == h.dtype == c.dtype == torch.bfloat16
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
            ys, (hs, cs) = torch.nn.LSTM(5, 9)(x)
        assert ys.dtype == hs.dtype == cs.dtype == torch.bfloat16
    except RuntimeError as e:
        assert "primitive descriptor" in str(e)
        assert not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    np.testing.assert_array_equal(y.float().numpy(),
                                  torch.from_numpy(ref).to(torch.bfloat16).float().numpy())


@pytest.mark.parametrize("cls,kw", [("LSTM", dict(num_layers=2, bidirectional=True)),
                                    ("LSTM", dict(proj_size=4, peepholes=True)),
                                    ("GRU", dict(num_layers=2)),
                                    ("GRU", dict(variant="reset_before")),
                                    ("RNN", dict(nonlinearity="relu", bidirectional=True))])
def test_torch_autocast_training_is_the_layers_bf16_training(cls, kw):
    """Under autocast with a gradient wanted (issue 17): the bf16 training kernels, bit for bit
    the fusedrnn layer with compute="bfloat16" (outputs, input and parameter gradients), float32
    parameters and gradients, torch's output dtypes (bf16 LSTM / RNN, float32 GRU)."""
    import fusedrnn.torch as frt
    torch.manual_seed(2)
    mod = getattr(frt, cls)(6, 11, **kw)
    layer = _fused_twin(getattr(fusedrnn, cls)(6, 11, **kw), mod)
    layer.compute = "bfloat16"
    layer.train()
    x = torch.randn(7, 3, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = mod(x)
    assert y.dtype == (torch.float32 if cls == "GRU" else torch.bfloat16) and y.requires_grad
    # a cotangent exact in bf16, so the bf16 output's cast back to fp32 changes nothing
    dy = torch.randn(y.shape).to(torch.bfloat16).float()
    y.backward(dy.to(y.dtype))
    yl, _ = layer.forward(x.detach().numpy())
    np.testing.assert_array_equal(y.float().detach().numpy(),
                                  torch.from_numpy(yl).to(y.dtype).float().numpy())
    dx = layer.backward(dy.numpy())
    np.testing.assert_array_equal(x.grad.numpy(), dx)
    for name, p in mod.named_parameters():
        assert p.grad.dtype == torch.float32
        np.testing.assert_array_equal(p.grad.numpy(), getattr(layer, name).grad, err_msg=name)
    # and it is not the float32 training step
    mod.zero_grad()
    y32, _ = mod(x)
    assert y32.dtype == torch.float32
    assert np.abs(y32.detach().numpy() - yl).max() > 0


def test_torch_bf16_errors_name_the_problem():
    import fusedrnn.torch as frt
    m16 = frt.LSTM(4, 6).to(torch.bfloat16)
    with pytest.raises(ValueError, match="bf16 inference kernels, which have no backward"):
        m16(torch.randn(3, 2, 4, dtype=torch.bfloat16))
    with torch.no_grad(), pytest.raises(TypeError, match="must have dtype torch.bfloat16"):
        m16(torch.randn(3, 2, 4))         # float32 input to a bf16 module, as torch.nn
    with torch.no_grad(), pytest.raises(TypeError, match=r"float16 only under torch.autocast"):
        frt.LSTM(4, 6)(torch.randn(3, 2, 4, dtype=torch.float16))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad(), \
            pytest.raises(TypeError, match="under torch.autocast"):
        frt.LSTM(4, 6)(torch.randn(3, 2, 4, dtype=torch.float64))
