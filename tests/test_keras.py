"""fusedrnn.keras against Keras 3 itself (torch backend, a test extra): random models of each
kind loaded from .keras archives and .weights.h5 files give Keras' outputs; fusedrnn models
saved as .weights.h5 load into the equivalent Keras model with the same outputs."""
import os

import numpy as np
import pytest

pytest.importorskip("h5py")
os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

import fusedrnn  # noqa: E402
from fusedrnn import keras as fk  # noqa: E402
from fusedrnn.models import RecurrentModel  # noqa: E402
from _writes import check_failed_writes_leave_nothing  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # keras' torch backend

RTOL = 1e-5  # float32: max |ours - Keras| <= RTOL * max |Keras|


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _np(t):
    return np.asarray(keras.ops.convert_to_numpy(t))


def _randomise(model, seed):
    """Keras initialises biases to zero: give every weight a random value."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.uniform(-0.6, 0.6, tuple(w.shape)).astype(w.dtype))


def _rnn(kind, units, **kw):
    if kind == "lstm":
        return keras.layers.LSTM(units, **kw)
    if kind == "gru_after":
        return keras.layers.GRU(units, reset_after=True, **kw)
    if kind == "gru_before":
        return keras.layers.GRU(units, reset_after=False, **kw)
    if kind == "rnn_relu":
        return keras.layers.SimpleRNN(units, activation="relu", **kw)
    return keras.layers.SimpleRNN(units, **kw)


KINDS = ["lstm", "gru_after", "gru_before", "rnn_tanh", "rnn_relu"]


def _keras_model(kind, *, tokens, bidirectional, layers, return_sequences, dense, mask_zero,
                 functional):
    inp = keras.Input((None,), dtype="int32") if tokens else keras.Input((None, 3))
    seq = [keras.layers.Embedding(12, 4, mask_zero=mask_zero)] if tokens else []
    for k in range(layers):
        layer = _rnn(kind, 5, return_sequences=k < layers - 1 or return_sequences)
        seq.append(keras.layers.Bidirectional(layer) if bidirectional else layer)
    if dense:
        seq.append(keras.layers.Dense(3))
    if functional:
        x = inp
        for layer in seq:
            x = layer(x)
        return keras.Model(inp, x)
    return keras.Sequential([inp] + seq)


def _inputs(tokens, mask_zero, rng, N=4, T=7):
    if tokens:
        x = rng.integers(1, 12, (N, T)).astype(np.int32)
        if mask_zero:
            for n, length in enumerate([7, 3, 5, 1]):
                x[n, length:] = 0
        return x
    return rng.standard_normal((N, T, 3)).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "tokens,bidirectional,layers,return_sequences,dense,mask_zero,functional", [
    (True, False, 1, True, True, False, False),
    (True, True, 2, True, True, True, True),
    (True, True, 2, False, True, True, False),
    (True, False, 2, True, True, True, False),  # masked steps repeat the last valid output
    (True, False, 1, False, False, True, True),
    (False, False, 2, False, False, False, True),
    (False, True, 1, True, False, False, False),
])
def test_load_keras_archive_matches_keras(tmp_path, kind, tokens, bidirectional, layers,
                                          return_sequences, dense, mask_zero, functional):
    km = _keras_model(kind, tokens=tokens, bidirectional=bidirectional, layers=layers,
                      return_sequences=return_sequences, dense=dense, mask_zero=mask_zero,
                      functional=functional)
    _randomise(km, 0)
    x = _inputs(tokens, mask_zero, np.random.default_rng(1))
    want = _np(km(x))
    km.save(tmp_path / "m.keras")
    ours = fk.load(tmp_path / "m.keras")
    assert ours.return_sequences == return_sequences and ours.mask_zero == mask_zero
    got = ours.forward(x)
    assert got.shape == want.shape
    assert _rel(got, want) <= RTOL, _rel(got, want)
    # the bare weights file (no architecture: return_sequences and mask_zero are arguments)
    km.save_weights(tmp_path / "m.weights.h5")
    ours2 = fk.load(tmp_path / "m.weights.h5", return_sequences=return_sequences,
                    mask_zero=mask_zero, nonlinearity="relu" if kind == "rnn_relu" else None)
    assert ours2.config() == ours.config()
    for k, v in ours.state_dict().items():
        assert ours2.state_dict()[k].tobytes() == v.tobytes()


@pytest.mark.parametrize("cell,opt", [("lstm", None), ("gru", "reset_after"),
                                      ("gru", "reset_before"), ("rnn", "tanh"), ("rnn", "relu")])
@pytest.mark.parametrize("tokens", [True, False])
def test_save_loads_into_keras(tmp_path, cell, opt, tokens):
    kw = {"variant": opt} if cell == "gru" else {"nonlinearity": opt} if cell == "rnn" else {}
    kw.update(dict(vocab_size=12, embed_dim=4) if tokens else dict(input_size=3))
    model = RecurrentModel(cell, hidden_size=5, num_layers=2, bidirectional=True, output_size=3,
                           seed=2, **kw).eval()
    path = tmp_path / "m.weights.h5"
    fk.save(model, path)
    km = fk.keras_model(model)
    km.load_weights(path)
    x = _inputs(tokens, False, np.random.default_rng(3))
    want = _np(km(x))
    xt = np.ascontiguousarray(x.T) if tokens else np.ascontiguousarray(x.transpose(1, 0, 2))
    got, _ = model.forward(xt)
    assert _rel(got.transpose(1, 0, 2), want) <= RTOL
    # and back: our file loads into fusedrnn with the same outputs
    back = fk.load(path, nonlinearity=opt if cell == "rnn" else None)
    assert _rel(back.forward(x), want) <= RTOL


def test_save_layer_and_refusals(tmp_path):
    layer = fusedrnn.GRU(3, 4, num_layers=2)
    fk.save(layer, tmp_path / "g.weights.h5")
    km = fk.keras_model(layer)
    km.load_weights(tmp_path / "g.weights.h5")
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    y, _ = layer.forward(np.ascontiguousarray(x.transpose(1, 0, 2)))
    assert _rel(y.transpose(1, 0, 2), _np(km(x))) <= RTOL
    with pytest.raises(ValueError, match="projection"):
        fk.save(fusedrnn.LSTM(3, 4, proj_size=2), tmp_path / "p.weights.h5")
    with pytest.raises(ValueError, match="peepholes"):
        fk.save(fusedrnn.LSTM(3, 4, peepholes=True), tmp_path / "p.weights.h5")
    with pytest.raises(ValueError, match="cell_clip"):
        fk.save(fusedrnn.LSTM(3, 4, cell_clip=0.5), tmp_path / "p.weights.h5")
    with pytest.raises(ValueError, match=".weights.h5"):
        fk.save(layer, tmp_path / "p.h5")
    # issue 19's dropouts are training only: the file holds the inference model's weights (they
    # had been refused); layer norm and zoneout change inference and stay refused
    dropped = fusedrnn.GRU(3, 4, num_layers=2, recurrent_dropout=0.3, weight_drop=0.2)
    dropped.eval()
    fk.save(dropped, tmp_path / "d.weights.h5")
    kd = fk.keras_model(dropped)
    kd.load_weights(tmp_path / "d.weights.h5")
    yd, _ = dropped.forward(np.ascontiguousarray(x.transpose(1, 0, 2)))
    assert _rel(yd.transpose(1, 0, 2), _np(kd(x))) <= RTOL
    with pytest.raises(ValueError, match=r"Keras' LSTM has no layer_norm \(issue 19 options"):
        fk.save(fusedrnn.LSTM(3, 4, layer_norm="haste"), tmp_path / "p.weights.h5")
    for precision in ("bfloat16", "int8"):  # the file would hold the float32 weights
        with pytest.raises(ValueError, match=f"runs the {precision} kernels"):
            fk.save(layer.frozen(precision), tmp_path / "q.weights.h5")
    assert not (tmp_path / "q.weights.h5").exists()


def test_save_failure_leaves_no_temporary(tmp_path):
    # (as the ONNX export: a unique temporary next to the file, removed on failure)
    layer = fusedrnn.LSTM(3, 4)
    check_failed_writes_leave_nothing(lambda p: fk.save(layer, p), tmp_path, "d.weights.h5")


@pytest.mark.parametrize("variant", ["reset_after", "reset_before"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gru_without_bias_round_trip(tmp_path, variant, bidirectional):
    """A GRU without bias has nothing in its weights that tells reset_after from
    reset_before (it had always loaded as reset_after: 0.0076 off for a reset_before one).
    save() records the formula in the file (Keras ignores it and loads the file), load()
    reads it back."""
    layer = fusedrnn.GRU(3, 4, num_layers=2, bidirectional=bidirectional, bias=False,
                         variant=variant, seed=0).eval()
    path = tmp_path / "g.weights.h5"
    fk.save(layer, path)
    back = fk.load(path)
    assert back.rnn.variant == variant and not back.rnn.bias
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    want = layer.forward(np.ascontiguousarray(x.transpose(1, 0, 2)))[0].transpose(1, 0, 2)
    assert np.array_equal(back.forward(x), want)
    km = fk.keras_model(layer)
    km.load_weights(path)
    assert _rel(want, _np(km(x))) <= RTOL
    other = "reset_before" if variant == "reset_after" else "reset_after"
    with pytest.raises(fk.KerasImportError, match=f"variant='{other}', but the file records"):
        fk.load(path, variant=other)


@pytest.mark.parametrize("reset_after", [True, False])
def test_keras_gru_without_bias_needs_variant(tmp_path, reset_after):
    """Keras' own .weights.h5 of a GRU without bias: refused unless variant= says which
    formula; with it, Keras' outputs."""
    km = keras.Sequential([keras.Input((None, 3)),
                           keras.layers.GRU(4, use_bias=False, reset_after=reset_after,
                                            return_sequences=True)])
    _randomise(km, 1)
    km.save_weights(tmp_path / "g.weights.h5")
    with pytest.raises(fk.KerasImportError, match="GRU without bias.*variant='reset_after' or "
                                                  "variant='reset_before'"):
        fk.load(tmp_path / "g.weights.h5")
    variant = "reset_after" if reset_after else "reset_before"
    x = np.random.default_rng(2).standard_normal((2, 5, 3)).astype(np.float32)
    ours = fk.load(tmp_path / "g.weights.h5", variant=variant)
    assert ours.rnn.variant == variant
    assert _rel(ours.forward(x), _np(km(x))) <= RTOL


def test_load_variant_argument_checks(tmp_path):
    km = keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(4, reset_after=False)])
    km.save_weights(tmp_path / "g.weights.h5")
    km.save(tmp_path / "g.keras")
    # a GRU with a bias: its shape decides, and a contradicting variant is refused
    assert fk.load(tmp_path / "g.weights.h5", variant="reset_before").rnn.variant == \
        "reset_before"
    with pytest.raises(fk.KerasImportError, match="bias \\[12\\] is a reset_before GRU's"):
        fk.load(tmp_path / "g.weights.h5", variant="reset_after")
    with pytest.raises(ValueError, match="variant must be 'reset_after' or 'reset_before'"):
        fk.load(tmp_path / "g.weights.h5", variant="before")
    with pytest.raises(TypeError, match="variant come from the .keras archive"):
        fk.load(tmp_path / "g.keras", variant="reset_before")
    fk.save(fusedrnn.LSTM(3, 4), tmp_path / "l.weights.h5")
    with pytest.raises(fk.KerasImportError, match="no GRU"):
        fk.load(tmp_path / "l.weights.h5", variant="reset_after")


@pytest.mark.parametrize("kind", ["lstm", "gru_after", "rnn_tanh"])
def test_unrolled_layers_load(tmp_path, kind):
    """unroll=True (Keras unrolls its loop in the graph for a fixed T): the same arithmetic,
    imported like the loop (it was refused)."""
    km = keras.Sequential([keras.Input((7, 3)),
                           keras.layers.Bidirectional(_rnn(kind, 5, unroll=True,
                                                           return_sequences=True)),
                           keras.layers.Bidirectional(_rnn(kind, 5, unroll=True)),
                           keras.layers.Dense(2)])
    _randomise(km, 3)
    x = _inputs(False, False, np.random.default_rng(4))
    km.save(tmp_path / "u.keras")
    got = fk.load(tmp_path / "u.keras").forward(x)
    assert _rel(got, _np(km(x))) <= RTOL


@pytest.mark.parametrize("layer,match", [
    (lambda: keras.layers.LSTM(4, activation="relu", return_sequences=True), "activation"),
    (lambda: keras.layers.GRU(4, recurrent_activation="hard_sigmoid", return_sequences=True),
     "recurrent_activation"),
    (lambda: keras.layers.LSTM(4, go_backwards=True, return_sequences=True), "go_backwards"),
    (lambda: keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True),
                                        merge_mode="sum"), "merge_mode"),
    (lambda: keras.layers.Conv1D(4, 2), "Conv1D"),
])
def test_load_refuses(tmp_path, layer, match):
    km = keras.Sequential([keras.Input((None, 3)), layer(), keras.layers.Dense(2)])
    km.save(tmp_path / "m.keras")
    with pytest.raises(fk.KerasImportError, match=match):
        fk.load(tmp_path / "m.keras")


def test_load_refuses_dense_activation_and_middle_masks(tmp_path):
    km = keras.Sequential([keras.Input((None,), dtype="int32"),
                           keras.layers.Embedding(9, 3, mask_zero=True),
                           keras.layers.LSTM(4, return_sequences=True),
                           keras.layers.Dense(2, activation="softmax")])
    km.save(tmp_path / "m.keras")
    with pytest.raises(fk.KerasImportError, match="softmax"):
        fk.load(tmp_path / "m.keras")
    km.save_weights(tmp_path / "m.weights.h5")
    ours = fk.load(tmp_path / "m.weights.h5", mask_zero=True)
    with pytest.raises(ValueError, match="trailing padding"):
        ours.forward(np.array([[1, 0, 2]]))


def test_load_fuzz_corrupt_files(tmp_path):
    km = _keras_model("gru_after", tokens=True, bidirectional=True, layers=2,
                      return_sequences=True, dense=True, mask_zero=False, functional=False)
    km.save(tmp_path / "m.keras")
    km.save_weights(tmp_path / "m.weights.h5")
    rng = np.random.default_rng(0)
    refused = 0
    total = 0
    for name in ("m.keras", "m.weights.h5"):
        good = (tmp_path / name).read_bytes()
        cases = [good[:int(n)] for n in rng.integers(0, len(good), 25)]
        for _ in range(60):
            b = bytearray(good)
            for _ in range(int(rng.integers(1, 4))):
                i = int(rng.integers(0, len(b)))
                b[i] ^= 1 << int(rng.integers(0, 8))
            cases.append(bytes(b))
        bad = tmp_path / ("bad" + name[1:])
        for data in cases:
            bad.write_bytes(data)
            total += 1
            try:
                fk.load(bad)
            except fk.KerasImportError:
                refused += 1
    assert refused > 40 and total == 170
