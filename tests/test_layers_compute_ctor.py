"""Issue 17's training precision as a constructor option: fusedrnn.LSTM / GRU / RNN(...,
compute="bfloat16") and RecurrentModel(..., compute=...) are the layer with ``compute`` set
after construction (outputs and gradients bitwise), refused with the property's messages, and
not recorded in the config (as the property); a single-step cell refuses ``compute``."""
import numpy as np
import pytest

import fusedrnn
from fusedrnn.models import RecurrentModel

LAYERS = [(fusedrnn.LSTM, dict(num_layers=2, bidirectional=True)),
          (fusedrnn.LSTM, dict(proj_size=3, weight_drop=0.2)),
          (fusedrnn.GRU, dict(num_layers=2)),
          (fusedrnn.GRU, dict(variant="reset_before", bidirectional=True)),
          (fusedrnn.RNN, dict(nonlinearity="relu", num_layers=2))]


def _train_step(layer, x):
    y, _ = layer.forward(x)
    dy = np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape)
    dx = layer.backward(dy)
    return [y, dx] + [p.grad.copy() for p in layer.parameters()]


@pytest.mark.parametrize("cls,kw", LAYERS)
def test_compute_argument_is_the_property(cls, kw):
    x = np.random.default_rng(0).standard_normal((7, 3, 5)).astype(np.float32)
    built = cls(5, 6, seed=1, compute="bfloat16", **kw)
    later = cls(5, 6, seed=1, **kw)
    later.compute = "bfloat16"
    assert built.compute == later.compute == "bfloat16"
    for a, b in zip(_train_step(built, x), _train_step(later, x)):
        np.testing.assert_array_equal(a, b)
    plain = cls(5, 6, seed=1, **kw)
    assert not np.array_equal(_train_step(plain, x)[0], _train_step(built, x)[0])
    # not part of the config (as the property): a checkpoint stays float32
    assert built.config() == later.config() == plain.config()
    assert cls(5, 6, compute="float32").compute == "float32"


@pytest.mark.parametrize("cls", [fusedrnn.LSTM, fusedrnn.GRU, fusedrnn.RNN])
@pytest.mark.parametrize("value,kw", [("bogus", {}), ("int8", {}), (3, {}),
                                      ("bfloat16", {"dtype": "float64"}),
                                      ("bfloat16", {"layer_norm": "haste"}),
                                      ("bfloat16", {"zoneout_h": 0.1})])
def test_compute_argument_refused_as_the_property(cls, value, kw):
    if cls is fusedrnn.RNN and ("layer_norm" in kw or "zoneout_h" in kw):
        pytest.skip("the RNN has no regularisers")
    with pytest.raises((ValueError, TypeError)) as prop:
        cls(3, 4, **kw).compute = value
    with pytest.raises(type(prop.value)) as arg:
        cls(3, 4, compute=value, **kw)
    assert str(arg.value) == str(prop.value)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_recurrent_model_compute(cell, tmp_path):
    x = np.random.default_rng(2).standard_normal((6, 2, 3)).astype(np.float32)
    built = RecurrentModel(cell, input_size=3, hidden_size=5, output_size=2, seed=3,
                           compute="bfloat16")
    later = RecurrentModel(cell, input_size=3, hidden_size=5, output_size=2, seed=3)
    fusedrnn.models.set_compute(later, "bfloat16")
    assert built.rnn.compute == "bfloat16"
    outs = []
    for m in (built, later):
        y, _ = m.forward(x)
        d = m.backward(np.sin(np.arange(y.size, dtype=np.float32)).reshape(y.shape))
        outs.append([y, d] + [p.grad.copy() for p in m.parameters()])
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    assert "compute" not in built.config() and built.config() == later.config()
    fusedrnn.save(tmp_path / "m.safetensors", built)
    assert fusedrnn.load(tmp_path / "m.safetensors").model.rnn.compute == "float32"
    with pytest.raises(ValueError, match="GRU.compute: 'bfloat16' is not available with "
                                         "layer_norm"):
        RecurrentModel("gru", input_size=3, layer_norm="haste", compute="bfloat16")


@pytest.mark.parametrize("cls", [fusedrnn.LSTMCell, fusedrnn.GRUCell, fusedrnn.RNNCell])
def test_cell_compute_is_refused(cls):
    """A single-step cell's ``compute = "bfloat16"`` was a plain attribute that changed
    nothing; the cells have no bf16 path."""
    cell = cls(3, 4)
    assert cell.compute == "float32"
    with pytest.raises(AttributeError, match=rf"{cls.__name__}.compute = 'bfloat16': a "
                                             r"single-step cell has no bfloat16"):
        cell.compute = "bfloat16"
    with pytest.raises(AttributeError, match="single-step cell"):
        cell.compute = "int8"
    cell.compute = "float32"          # what it runs: accepted, nothing stored
    assert cell.compute == "float32" and "compute" not in cell.__dict__
