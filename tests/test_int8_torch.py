"""fusedrnn.torch.quantize_dynamic (issue 16): torch modules whose LSTM / GRU / RNN layers run
the int8 kernels -- exactly the fusedrnn layers' frozen int8 copies (bitwise), close to float32,
and bad requests raise naming what is wrong."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fusedrnn  # noqa: E402
import fusedrnn.torch as frt  # noqa: E402


def _twin(layer, mod):
    layer.load_state_dict({k: v.detach().float().numpy() for k, v in mod.state_dict().items()})
    return layer


@pytest.mark.parametrize("make,twin", [
    (lambda: frt.LSTM(5, 9, num_layers=2, bidirectional=True),
     lambda: fusedrnn.LSTM(5, 9, num_layers=2, bidirectional=True)),
    (lambda: frt.LSTM(5, 9, proj_size=4, peepholes=True),
     lambda: fusedrnn.LSTM(5, 9, proj_size=4, peepholes=True)),
    (lambda: frt.GRU(5, 9, num_layers=2, variant="reset_before"),
     lambda: fusedrnn.GRU(5, 9, num_layers=2, variant="reset_before")),
    (lambda: frt.RNN(5, 9, nonlinearity="relu", bidirectional=True),
     lambda: fusedrnn.RNN(5, 9, nonlinearity="relu", bidirectional=True)),
    # issue 19's dropouts are off in eval mode, where the copy runs: the plain int8 forward
    # (they had been refused)
    (lambda: frt.LSTM(5, 9, num_layers=2, recurrent_dropout=0.3, input_dropout=0.1,
                      weight_drop=0.2, dropout_masks="per_gate"),
     lambda: fusedrnn.LSTM(5, 9, num_layers=2)),
    (lambda: frt.GRU(5, 9, bidirectional=True, recurrent_dropout=0.3),
     lambda: fusedrnn.GRU(5, 9, bidirectional=True)),
])
def test_quantized_layer_is_the_frozen_int8_layer(make, twin):
    torch.manual_seed(0)
    mod = make()
    q = frt.quantize_dynamic(mod)
    assert q is not mod and not q.training and mod.training
    x = torch.randn(7, 3, 5)
    out, state = q(x)
    ref_out, ref_state = _twin(twin(), mod).frozen(precision="int8")(x.numpy())
    np.testing.assert_array_equal(out.numpy(), ref_out)
    for a, b in zip(state if isinstance(state, tuple) else (state,),
                    ref_state if isinstance(ref_state, tuple) else (ref_state,)):
        np.testing.assert_array_equal(a.numpy(), b)
    with torch.no_grad():
        f32, _ = mod.eval()(x)
    diff = (out - f32).abs().max().item()
    assert 1e-5 < diff < 1e-1, diff


def test_stock_layers_inside_a_module_are_converted_and_packed_input_works():
    torch.manual_seed(1)
    model = torch.nn.Sequential()
    model.add_module("rnn", torch.nn.GRU(4, 8, batch_first=True))
    q = frt.quantize_dynamic(model)
    assert isinstance(q.rnn, frt.GRU) and type(model.rnn) is torch.nn.GRU
    x = torch.randn(3, 6, 4)
    out, h = q.rnn(x)
    ref_out, ref_h = _twin(fusedrnn.GRU(4, 8, batch_first=True), model.rnn).frozen(
        precision="int8")(x.numpy())
    np.testing.assert_array_equal(out.numpy(), ref_out)
    np.testing.assert_array_equal(h.numpy(), ref_h)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [6, 4, 2], batch_first=True)
    pout, ph = q.rnn(packed)
    assert isinstance(pout, torch.nn.utils.rnn.PackedSequence)
    # stock LSTM at the top level, with an initial state
    lstm = torch.nn.LSTM(4, 6)
    ql = frt.quantize_dynamic(lstm)
    h0, c0 = torch.randn(1, 2, 6), torch.randn(1, 2, 6)
    y, (hn, cn) = ql(torch.randn(5, 2, 4), (h0, c0))
    assert y.shape == (5, 2, 6) and y.dtype == torch.float32


def test_quantize_dynamic_bad_requests():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        frt.quantize_dynamic(object())
    with pytest.raises(ValueError, match="no LSTM / GRU / RNN"):
        frt.quantize_dynamic(torch.nn.Linear(2, 3))
    with pytest.raises(ValueError, match="float32 parameters"):
        frt.quantize_dynamic(frt.LSTM(3, 4, dtype=torch.float64))
    bad = frt.GRU(3, 4)
    with torch.no_grad():
        bad.weight_hh_l0[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight_hh_l0 has a non-finite"):
        frt.quantize_dynamic(bad)
    for kw, name in ((dict(zoneout_h=0.1, recurrent_dropout=0.2), "zoneout_h"),
                     (dict(layer_norm="haste"), "layer_norm")):
        with pytest.raises(ValueError, match=f"LSTM with {name} has no int8 path"):
            frt.quantize_dynamic(frt.LSTM(3, 4, **kw))
    q = frt.quantize_dynamic(frt.RNN(3, 4))
    q.train()
    with pytest.raises(ValueError, match="training=True"):
        q(torch.randn(2, 1, 3))
