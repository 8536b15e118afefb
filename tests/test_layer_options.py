"""Options of fusedrnn.LSTM / GRU / RNN set after construction (``layer.dropout = 0.3``, as
torch users do: torch.nn.LSTM reads self.dropout at every forward). Those a forward reads take
effect from the next forward, exactly as if given to the constructor (same outputs, gradients
and config()), checked by the constructor's own checks; those that shape or initialise the
parameters, other cells' options, and changes to a frozen copy raise AttributeError. Before,
recurrent_dropout / zoneout / input_dropout / weight_drop set on a layer built without them were
silently ignored, and no assignment reached config() (so checkpoints lost it).
"""
from __future__ import annotations

import numpy as np
import pytest

import fusedrnn
from fusedrnn.io import load, save
from fusedrnn.models import RecurrentModel

X = np.random.default_rng(3).standard_normal((5, 3, 4)).astype(np.float32)

CASES = [
    # (cell, constructor options both layers get, option set afterwards, value)
    (fusedrnn.LSTM, {}, "recurrent_dropout", 0.3),
    (fusedrnn.LSTM, {}, "input_dropout", 0.25),
    (fusedrnn.LSTM, {}, "weight_drop", 0.2),
    (fusedrnn.LSTM, {}, "zoneout_h", 0.1),
    (fusedrnn.LSTM, {}, "zoneout_c", 0.15),
    (fusedrnn.LSTM, {"num_layers": 2}, "dropout", 0.4),
    (fusedrnn.LSTM, {}, "cell_clip", 0.05),
    (fusedrnn.LSTM, {"recurrent_dropout": 0.3}, "dropout_masks", "per_gate"),
    (fusedrnn.LSTM, {"layer_norm": "haste"}, "ln_eps", 0.5),
    (fusedrnn.LSTM, {"zoneout_h": 0.1}, "zoneout_h", 0.0),
    (fusedrnn.LSTM, {}, "batch_first", True),
    (fusedrnn.GRU, {}, "variant", "reset_before"),
    (fusedrnn.GRU, {}, "recurrent_dropout", 0.3),
    (fusedrnn.GRU, {}, "zoneout_h", 0.2),
    (fusedrnn.GRU, {"num_layers": 2, "bidirectional": True}, "dropout", 0.3),
    (fusedrnn.RNN, {}, "nonlinearity", "relu"),
    (fusedrnn.RNN, {"num_layers": 2}, "dropout", 0.5),
]


def _run(layer, training):
    layer.train(training)
    x = X.transpose(1, 0, 2).copy() if layer.batch_first else X
    out, _ = layer.forward(x)
    if not training:
        return [out]
    layer.zero_grad()
    layer.backward(np.ones_like(out))
    return [out] + [p.grad.copy() for p in layer.parameters()]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cls, base, name, value", CASES,
                         ids=[f"{c.__name__}-{n}-{v}" for c, _, n, v in CASES])
def test_option_set_later_acts_as_given(cls, base, name, value, training):
    given = cls(4, 6, seed=11, **{**base, name: value})
    later = cls(4, 6, seed=11, **base)
    setattr(later, name, value)
    assert getattr(later, name) == getattr(given, name)
    assert later.config() == given.config()
    for a, b in zip(_run(given, training), _run(later, training), strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name, value", [
    ("input_size", 5), ("hidden_size", 7), ("num_layers", 2), ("bidirectional", True),
    ("proj_size", 2), ("bias", False), ("peepholes", True), ("layer_norm", "haste"),
    ("dtype", "float64"), ("init", "keras"), ("forget_bias", 1.0),
    ("variant", "reset_before"), ("nonlinearity", "relu"),
])
def test_fixed_options_and_other_cells_options_refused(name, value):
    layer = fusedrnn.LSTM(4, 6, seed=1)
    before, old = layer.config(), getattr(layer, name)
    with pytest.raises(AttributeError, match=f"LSTM.{name}"):
        setattr(layer, name, value)
    assert getattr(layer, name) == old and layer.config() == before


@pytest.mark.parametrize("cls, name", [(fusedrnn.RNN, "recurrent_dropout"),
                                       (fusedrnn.RNN, "zoneout_h"),
                                       (fusedrnn.GRU, "cell_clip")])
def test_option_of_another_cell(cls, name):
    layer = cls(4, 6)
    with pytest.raises(AttributeError, match=f"{cls.__name__}.{name}: '{name}' is not an "
                                             f"option"):
        setattr(layer, name, 0.1)


@pytest.mark.parametrize("kw, name, value, exc, match", [
    ({}, "dropout", 1.5, ValueError, r"LSTM.dropout = 1.5: dropout must be"),
    ({}, "recurrent_dropout", -0.1, ValueError, "recurrent_dropout must be a number in"),
    ({}, "zoneout_h", True, ValueError, "zoneout_h must be a number in"),
    ({}, "zoneout_h", 0.999999999, ValueError, "rounds to 1 in float32"),
    ({}, "batch_first", 1, TypeError, "batch_first must be a bool"),
    ({}, "ln_eps", 1e-3, ValueError, "given without layer_norm"),
    ({}, "cell_clip", 0.0, ValueError, "cell_clip must be None or a finite number > 0"),
    ({}, "dropout_masks", "per_gate", ValueError, "needs recurrent_dropout or input_dropout"),
    ({"recurrent_dropout": 0.2, "dropout_masks": "per_gate"}, "recurrent_dropout", 0.0,
     ValueError, "needs recurrent_dropout or input_dropout"),
    ({"peepholes": True}, "recurrent_dropout", 0.1, ValueError, "peepholes cannot be combined"),
    ({"recurrent_dropout": 0.1}, "cell_clip", 1.0, ValueError, "cell_clip cannot be combined"),
])
def test_invalid_values_refused_as_the_constructor_does(kw, name, value, exc, match):
    layer = fusedrnn.LSTM(4, 6, seed=1, **kw)
    before = layer.config()
    attrs = {k: getattr(layer, k) for k in ("dropout", "recurrent_dropout", "zoneout_h",
                                            "batch_first", "ln_eps", "cell_clip",
                                            "dropout_masks")}
    reg = list(layer._reg)
    with pytest.raises(exc, match=match):
        setattr(layer, name, value)
    assert layer.config() == before and layer._reg == reg
    assert attrs == {k: getattr(layer, k) for k in attrs}


def test_gru_and_rnn_checks():
    g = fusedrnn.GRU(4, 6, variant="reset_before")
    with pytest.raises(ValueError, match="variant must be 'reset_after'"):
        g.recurrent_dropout = 0.2
    with pytest.raises(ValueError, match="zoneout_c must be 0"):
        fusedrnn.GRU(4, 6).zoneout_c = 0.1
    with pytest.raises(ValueError, match="variant must be 'reset_after' or 'reset_before'"):
        fusedrnn.GRU(4, 6).variant = "cudnn"
    with pytest.raises(ValueError, match="irnn"):
        fusedrnn.RNN(4, 6, nonlinearity="relu", init="irnn").nonlinearity = "tanh"


def test_bf16_compute_refuses_the_regularised_kernel():
    layer = fusedrnn.LSTM(4, 6)
    layer.compute = "bfloat16"
    with pytest.raises(ValueError, match="compute='float32' first"):
        layer.zoneout_h = 0.1
    assert layer._reg == [] and layer.zoneout_h == 0.0
    layer.weight_drop = 0.2           # runs on the plain kernels, bf16 included
    assert layer.config()["weight_drop"] == 0.2


def test_frozen_copy_keeps_its_options():
    frozen = fusedrnn.LSTM(4, 6, num_layers=2).frozen()
    for name, value in (("dropout", 0.2), ("zoneout_h", 0.1), ("recurrent_dropout", 0.1)):
        with pytest.raises(AttributeError, match="frozen copy"):
            setattr(frozen, name, value)
    frozen.batch_first = True          # the layout of the call only
    out, _ = frozen.forward(X.transpose(1, 0, 2).copy())
    assert out.shape == (3, 5, 6) and frozen.config()["batch_first"] is True


def test_backward_after_an_option_changed_refuses():
    layer = fusedrnn.LSTM(4, 6, seed=1)
    out, _ = layer.forward(X)
    layer.recurrent_dropout = 0.3
    with pytest.raises(RuntimeError, match="options were changed after its training forward"):
        layer.backward(np.ones_like(out))
    out, _ = layer.forward(X)
    layer.backward(np.ones_like(out))


def test_checkpoint_keeps_options_set_later(tmp_path):
    layer = fusedrnn.GRU(4, 6, seed=1)
    layer.zoneout_h, layer.batch_first = 0.2, True
    save(tmp_path / "l.safetensors", layer)
    got = load(tmp_path / "l.safetensors").model
    assert got.zoneout_h == 0.2 and got.batch_first and got._reg == ["zoneout_h"]
    model = RecurrentModel("lstm", input_size=4, hidden_size=6, num_layers=2, seed=1)
    model.rnn.dropout, model.rnn.recurrent_dropout = 0.3, 0.2
    cfg = model.config()
    assert cfg["dropout"] == 0.3 and cfg["recurrent_dropout"] == 0.2
    save(tmp_path / "m.safetensors", model)
    got = load(tmp_path / "m.safetensors").model
    assert got.rnn.dropout == 0.3 and got.rnn.recurrent_dropout == 0.2
    model.eval(), got.eval()
    assert model.forward(X)[0].tobytes() == got.forward(X)[0].tobytes()


@pytest.mark.parametrize("cell,name,value", [("gru", "variant", "reset_before"),
                                             ("rnn", "nonlinearity", "relu"),
                                             ("lstm", "cell_clip", 0.05)])
def test_model_checkpoint_keeps_the_cells_formula_set_later(tmp_path, cell, name, value):
    # the GRU's formula, the RNN's activation and the LSTM's clip set on model.rnn: config()
    # follows them (before, the loaded model ran the constructor's: 0.03-0.31 off)
    model = RecurrentModel(cell, input_size=4, hidden_size=6, seed=1)
    setattr(model.rnn, name, value)
    assert model.config()[name] == value
    save(tmp_path / "m.safetensors", model)
    got = load(tmp_path / "m.safetensors").model
    assert getattr(got.rnn, name) == value and got.config() == model.config()
    model.eval(), got.eval()
    assert model.forward(X)[0].tobytes() == got.forward(X)[0].tobytes()


def test_model_cell_clip_argument():
    model = RecurrentModel("lstm", input_size=4, hidden_size=6, seed=1, cell_clip=0.05)
    assert model.rnn.cell_clip == 0.05 and model.config()["cell_clip"] == 0.05
    clipped = fusedrnn.LSTM(4, 6, seed=1, cell_clip=0.05)
    clipped.load_state_dict({k[4:]: v for k, v in model.state_dict().items()
                             if k.startswith("rnn.")})
    model.eval(), clipped.eval()
    h = model.rnn.forward(X)[0]
    assert h.tobytes() == clipped.forward(X)[0].tobytes()
    assert "cell_clip" not in RecurrentModel("lstm", input_size=4, hidden_size=6).config()
    with pytest.raises(ValueError, match="cell_clip needs cell='lstm'"):
        RecurrentModel("gru", input_size=4, hidden_size=6, cell_clip=0.05)
