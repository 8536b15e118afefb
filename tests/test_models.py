"""RecurrentModel: torch parity of the whole stack, finite differences with dense input,
checkpoint round trip, bad arguments."""
import numpy as np
import pytest

import fusedrnn
from fusedrnn.models import RecurrentModel

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_token_model_matches_torch(cell):
    m = RecurrentModel(cell, vocab_size=11, embed_dim=5, hidden_size=7, num_layers=2,
                       bidirectional=True, output_size=4, dtype="float64", seed=3)
    emb = torch.nn.Embedding(11, 5, dtype=torch.float64)
    rnn = fusedrnn.to_torch(m.rnn)
    head = torch.nn.Linear(14, 4, dtype=torch.float64)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(m.embed.weight.data))
        head.weight.copy_(torch.from_numpy(m.head.weight.data))
        head.bias.copy_(torch.from_numpy(m.head.bias.data))
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 11, (6, 3))
    dy = rng.standard_normal((6, 3, 4))
    y, _ = m.forward(tok)
    m.backward(dy)
    ty = head(rnn(emb(torch.from_numpy(tok)))[0])
    (ty * torch.from_numpy(dy)).sum().backward()
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.embed.weight.grad, emb.weight.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(m.head.weight.grad, head.weight.grad.numpy(), atol=1e-12)
    for k, p in rnn.named_parameters():
        np.testing.assert_allclose(m.rnn.grad_dict()[k], p.grad.numpy(), atol=1e-12, err_msg=k)


def test_dense_model_finite_differences_and_state_gradient():
    m = RecurrentModel("lstm", input_size=3, hidden_size=4, output_size=2, proj_size=2,
                       peepholes=True, dtype="float64", seed=1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 2, 3))
    state = (rng.standard_normal((1, 2, 2)), rng.standard_normal((1, 2, 4)))
    dy = rng.standard_normal((5, 2, 2))
    lengths = np.array([5, 3])
    f = lambda: float((m.forward(x, state, lengths)[0] * dy).sum())  # noqa: E731
    m.zero_grad()
    f()
    dx = m.backward(dy)
    d_h0 = m.rnn.d_state[0].copy()
    for a, g in [(x, dx), (state[0], d_h0), (m.head.weight.data, m.head.weight.grad.copy()),
                 (m.rnn.weight_hr_l0.data, m.rnn.weight_hr_l0.grad.copy())]:
        for i in range(min(a.size, 12)):
            old = a.flat[i]
            a.flat[i] = old + 1e-6
            up = f()
            a.flat[i] = old - 1e-6
            down = f()
            a.flat[i] = old
            assert abs((up - down) / 2e-6 - g.flat[i]) < 1e-7


def test_checkpoint_rebuilds_model(tmp_path):
    m = RecurrentModel("gru", vocab_size=9, hidden_size=6, output_size=9, variant="reset_before",
                       seed=2)
    fusedrnn.save(tmp_path / "m.safetensors", m)
    r = fusedrnn.load(tmp_path / "m.safetensors").model
    assert r.config() == m.config()
    tok = np.random.default_rng(0).integers(0, 9, (4, 2))
    np.testing.assert_array_equal(r.eval().forward(tok)[0], m.eval().forward(tok)[0])
    assert list(r.state_dict()) == ["embed.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0",
                                    "rnn.bias_ih_l0", "rnn.bias_hh_l0", "head.weight",
                                    "head.bias"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        RecurrentModel("lstm", hidden_size=4)
    with pytest.raises(ValueError, match="exactly one"):
        RecurrentModel("lstm", input_size=3, vocab_size=4)
    with pytest.raises(ValueError, match="cell"):
        RecurrentModel("tcn", input_size=3)
    with pytest.raises(ValueError, match="cell='lstm'"):
        RecurrentModel("gru", input_size=3, peepholes=True)
    with pytest.raises(ValueError, match="embed_dim"):
        RecurrentModel("gru", input_size=3, embed_dim=4)


@pytest.mark.parametrize("kw,exc,needle", [
    (dict(seed=-1), ValueError, "RecurrentModel: seed must be a non-negative integer"),
    (dict(seed=True), ValueError, "RecurrentModel: seed must be"),
    (dict(seed=1.5), ValueError, "RecurrentModel: seed must be .* got 1.5"),
    (dict(seed="7"), ValueError, "RecurrentModel: seed must be"),
    (dict(variant="bogus"), ValueError, "RecurrentModel: variant must be one of"),
    (dict(nonlinearity="bogus"), ValueError, "RecurrentModel: nonlinearity must be one of")])
def test_recurrent_model_checks_seed_and_recorded_options(kw, exc, needle):
    """seed was used (seed + 1, seed + 2 for the parts) before any check: -1 and True were
    recorded, 1.5 was reported as 2.5 by the LSTM, '7' raised a bare TypeError; the other
    cells' options are recorded in the config, so they are checked too."""
    with pytest.raises(exc, match=needle):
        RecurrentModel("lstm", input_size=3, hidden_size=4, **kw)
