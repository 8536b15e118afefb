"""fusedrnn.save / fusedrnn.load of frozen copies (``layer.frozen(precision)``,
``RecurrentModel.frozen``, ``models.freeze``): the file records which recurrent layers were
frozen and at which precision (``__metadata__["frozen"]``), and load gives back a frozen copy
of the same precision whose outputs equal the saved copy's bit for bit (the weights stored are
the float32 ones the copy was frozen from; packing them rounds / quantises deterministically).
Before, a saved int8 copy came back as the float32 trainable model.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import fusedrnn
from fusedrnn import io as fio
from fusedrnn.io import CheckpointError, load, save
from fusedrnn.models import PRECISIONS, RecurrentModel, freeze
from fusedrnn.tasks.classify import SequenceClassifier
from fusedrnn.tasks.recognise import CtcRecognizer
from fusedrnn.tasks.tag import SequenceTagger

RNG = np.random.default_rng(7)
X = RNG.standard_normal((6, 3, 5)).astype(np.float32)
LENGTHS = np.array([6, 4, 2])
TOKENS = RNG.integers(1, 11, size=(6, 3))


def _kinds():
    """(name, model, forward) of every kind of model that can be frozen."""
    yield "LSTM", fusedrnn.LSTM(5, 8, num_layers=2, seed=1), lambda m: m.forward(X)
    yield "LSTM-bidir-proj", fusedrnn.LSTM(5, 8, bidirectional=True, proj_size=4, seed=1), \
        lambda m: m.forward(X, lengths=LENGTHS)
    yield "GRU", fusedrnn.GRU(5, 8, bidirectional=True, seed=2), lambda m: m.forward(X)
    yield "GRU-reset-before", fusedrnn.GRU(5, 8, variant="reset_before", seed=2), \
        lambda m: m.forward(X)
    yield "RNN", fusedrnn.RNN(5, 8, num_layers=2, seed=3), lambda m: m.forward(X)
    for cell in ("lstm", "gru", "rnn"):
        yield f"RecurrentModel-{cell}", \
            RecurrentModel(cell, input_size=5, hidden_size=8, num_layers=2, output_size=3,
                           seed=4), lambda m: m.forward(X)
    yield "RecurrentModel-tokens", \
        RecurrentModel("lstm", vocab_size=11, embed_dim=5, hidden_size=8, seed=5), \
        lambda m: m.forward(TOKENS)
    yield "SequenceClassifier", SequenceClassifier("gru", input_size=5, hidden_size=8, seed=6), \
        lambda m: m.forward(X, lengths=LENGTHS)
    yield "SequenceTagger", SequenceTagger(11, 4, embed=5, hidden=8, seed=7), \
        lambda m: m.forward(TOKENS, LENGTHS)
    yield "CtcRecognizer", CtcRecognizer(5, 4, hidden=8, seed=8), \
        lambda m: m.forward(X, LENGTHS)


KINDS = {name: (model, fwd) for name, model, fwd in _kinds()}


def _outputs(out):
    """The arrays of a forward's result (an array, or nested tuples of arrays)."""
    if isinstance(out, np.ndarray):
        return [out]
    return [a for o in out if o is not None for a in _outputs(o)]


def _frozen_layers(model):
    return {n: m.precision for n, m in model.named_modules()
            if isinstance(m, fusedrnn.layers._RNNBase) and m.is_frozen}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_frozen_copy_loads_frozen_at_its_precision(tmp_path, kind, precision):
    model, fwd = KINDS[kind]
    twin = freeze(model, precision)
    path = tmp_path / "frozen.safetensors"
    save(path, twin)
    ck = load(path)
    got = ck.model
    assert type(got) is type(twin)
    want_layers = _frozen_layers(twin)
    assert want_layers and set(want_layers.values()) == {precision}
    assert _frozen_layers(got) == want_layers == ck.frozen
    assert not any(m.training for m in got.modules())
    for a, b in zip(_outputs(fwd(twin)), _outputs(fwd(got)), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()   # bit for bit
    # and the stored weights are the float32 ones of the model it was frozen from
    for name, a in model.state_dict().items():
        assert ck.state_dict[name].tobytes() == a.tobytes()


def test_layer_frozen_and_model_frozen_methods(tmp_path):
    layer = fusedrnn.LSTM(5, 8, seed=1)
    save(tmp_path / "l.safetensors", layer.frozen(precision="int8"))
    got = load(tmp_path / "l.safetensors").model
    assert got.is_frozen and got.precision == "int8"
    m = RecurrentModel("gru", input_size=5, hidden_size=8, seed=1)
    save(tmp_path / "m.safetensors", m.frozen("bfloat16"))
    ck = load(tmp_path / "m.safetensors")
    assert ck.frozen == {"rnn": "bfloat16"} and ck.model.rnn.precision == "bfloat16"
    assert ck.model.frozen("bfloat16").rnn.precision == "bfloat16"


def test_a_frozen_layer_inside_a_trainable_model(tmp_path):
    """A layer replaced by its frozen copy by hand: that layer is recorded and frozen again."""
    m = RecurrentModel("lstm", input_size=5, hidden_size=8, seed=1)
    m.rnn = m.rnn.frozen("int8")
    m.eval()
    save(tmp_path / "m.safetensors", m)
    got = load(tmp_path / "m.safetensors").model
    assert got.rnn.is_frozen and got.rnn.precision == "int8"
    assert m.forward(X)[0].tobytes() == got.forward(X)[0].tobytes()


def test_trainable_model_has_no_frozen_record(tmp_path):
    m = RecurrentModel("lstm", input_size=5, hidden_size=8, seed=1)
    m.rnn.compute = "bfloat16"   # a training precision: not part of the checkpoint
    save(tmp_path / "m.safetensors", m)
    _, meta = fio.load_tensors(tmp_path / "m.safetensors")
    assert "frozen" not in meta
    ck = load(tmp_path / "m.safetensors")
    assert ck.frozen == {} and not ck.model.rnn.is_frozen and ck.model.training


def test_metadata_record(tmp_path):
    """The record sits beside the config (which the C++ loader reads and whose unknown keys it
    refuses), not in it, and not in the user's metadata."""
    m = RecurrentModel("rnn", input_size=5, hidden_size=8, seed=1)
    save(tmp_path / "m.safetensors", m.frozen("int8"), note="x")
    _, meta = fio.load_tensors(tmp_path / "m.safetensors")
    assert json.loads(meta["frozen"]) == {"rnn": "int8"}
    assert json.loads(meta["model"]) == m.config()
    assert json.loads(meta["metadata"]) == {"note": "x"}


def test_given_model_is_loaded_as_given(tmp_path):
    m = RecurrentModel("lstm", input_size=5, hidden_size=8, seed=1)
    save(tmp_path / "m.safetensors", m.frozen("int8"))
    other = RecurrentModel("lstm", input_size=5, hidden_size=8, seed=2)
    ck = load(tmp_path / "m.safetensors", model=other)
    assert ck.model is other and not other.rnn.is_frozen and ck.frozen == {"rnn": "int8"}
    assert other.rnn.weight_hh_l0.data.tobytes() == m.rnn.weight_hh_l0.data.tobytes()
    # into a frozen copy: refused for its read-only weights (not "do not match"), unchanged
    target = RecurrentModel("lstm", input_size=5, hidden_size=8, seed=3).frozen()
    keep = target.rnn.weight_hh_l0.data.copy()
    with pytest.raises(CheckpointError, match=r"the model cannot take the tensors: "
                                              r"load_state_dict: \S+ is read-only"):
        load(tmp_path / "m.safetensors", model=target)
    assert target.rnn.weight_hh_l0.data.tobytes() == keep.tobytes()


@pytest.mark.parametrize("record, match", [
    ('{"rnn": "float16"}', "must map module names"),
    ('{"": "int8", "rnn": "int8"}', "must map module names"),
    ('["rnn"]', "must hold a JSON object"),
    ('{"head": "int8"}', "not a recurrent layer"),
    ('{"nope": "int8"}', "not a recurrent layer"),
])
def test_bad_frozen_record(tmp_path, record, match):
    m = RecurrentModel("lstm", input_size=5, hidden_size=8, seed=1)
    save(tmp_path / "m.safetensors", m.frozen("int8"))
    tensors, meta = fio.load_tensors(tmp_path / "m.safetensors")
    meta["frozen"] = record
    fio.save_tensors(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match=match):
        load(tmp_path / "bad.safetensors")
