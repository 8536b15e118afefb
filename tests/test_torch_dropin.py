"""fusedrnn.torch as a drop-in beyond forward/backward (issue 24): a copy of PyTorch's
word-language-model training loop with fusedrnn's layers installed into torch.nn (save the best
model, load it, evaluate; load it again where fusedrnn cannot be imported), torch.save /
torch.load (weights_only=True), copy, torch.export, both ONNX exporters run by ONNX Runtime,
torch.jit.trace / script, torch.compile, and double backward.
"""
from __future__ import annotations

import copy
import importlib.util
import io
import math
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fusedrnn.torch as frt  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported",
    # torch.export of any torch.nn RNN (stock included): RNNBase refreshes _flat_weights
    "ignore:The tensor attributes self._flat_weights",
    # torch 2.13 deprecates TorchScript (trace and script are still what users call)
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning",
    # torch.nn's RNN forward, traced (the stock layer's trace warns the same)
    "ignore:Converting a tensor to a Python boolean:torch.jit.TracerWarning",
)

T, N, C, H = 5, 3, 4, 6
CONFIGS = {  # name -> (class, constructor kwargs): all representable by torch.nn
    "lstm": ("LSTM", {"num_layers": 2, "bidirectional": True}),
    "lstm_proj": ("LSTM", {"proj_size": 3, "batch_first": True}),
    "gru": ("GRU", {"num_layers": 2, "batch_first": True}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu", "bidirectional": True}),
}
FUSED_ONLY = {"peepholes": ("LSTM", {"peepholes": True}),
              "reset_before": ("GRU", {"variant": "reset_before"})}


def make(cls, seed=0, **kw):
    """(fusedrnn.torch module, torch.nn module) with the same weights, in eval mode."""
    torch.manual_seed(seed)
    ours = getattr(frt, cls)(C, H, **kw).eval()
    stock_kw = {k: v for k, v in kw.items() if k not in ("peepholes", "variant", "forget_bias")}
    ref = getattr(torch.nn, cls)(C, H, **stock_kw).eval()
    if "peepholes" not in kw and "variant" not in kw:
        ref.load_state_dict(ours.state_dict())
    return ours, ref


def example(mod, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (N, T, C) if mod.batch_first else (T, N, C)
    return torch.randn(*shape, generator=g)


def flat(out):
    """(output, h_n) or (output, (h_n, c_n)) -> list of tensors."""
    y, s = out
    return [y, *(s if isinstance(s, tuple) else (s,))]


def assert_outputs(got, want, tol=1e-5):
    got, want = flat(got), flat(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g.detach()), np.asarray(w.detach()), rtol=tol,
                                   atol=tol)


# ----------------------------------------------------------------------------------------------
# the word-language-model training loop (pytorch/examples word_language_model, written anew
# for this test with its structure: model.py's RNNModel with getattr(nn, rnn_type), main.py's
# batchify / get_batch / repackage_hidden / train / evaluate, torch.save of the best model,
# torch.load of it, the test evaluation)

WLM_MODEL = '''
import torch.nn as nn
import torch.nn.functional as F


class RNNModel(nn.Module):
    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type in ["LSTM", "GRU"]:
            self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        else:
            nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
            self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=nonlinearity, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)
        self.rnn_type, self.nhid, self.nlayers = rnn_type, nhid, nlayers

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        if self.rnn_type == "LSTM":
            return (weight.new_zeros(self.nlayers, bsz, self.nhid),
                    weight.new_zeros(self.nlayers, bsz, self.nhid))
        return weight.new_zeros(self.nlayers, bsz, self.nhid)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    return data.narrow(0, 0, nbatch * bsz).view(bsz, -1).t().contiguous()


def get_batch(source, i, bptt):
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].view(-1)


def evaluate(model, data_source, bptt, eval_batch_size):
    import torch
    model.eval()
    total_loss = 0.
    hidden = model.init_hidden(eval_batch_size)
    with torch.no_grad():
        for i in range(0, data_source.size(0) - 1, bptt):
            data, targets = get_batch(data_source, i, bptt)
            output, hidden = model(data, hidden)
            hidden = repackage_hidden(hidden)
            total_loss += len(data) * nn.functional.nll_loss(output, targets).item()
    return total_loss / (len(data_source) - 1)


def repackage_hidden(h):
    if isinstance(h, tuple):
        return tuple(repackage_hidden(v) for v in h)
    return h.detach()
'''


def corpus(n=2400, vocab=24, seed=0):
    """Token ids with structure to learn: each token mostly determines the next one."""
    rng = np.random.default_rng(seed)
    nxt = rng.permutation(vocab)
    ids = [0]
    for _ in range(n - 1):
        ids.append(int(nxt[ids[-1]]) if rng.random() < 0.8 else int(rng.integers(vocab)))
    return torch.tensor(ids, dtype=torch.int64), vocab


@pytest.fixture
def wlm(tmp_path, monkeypatch):
    """The example's model.py (as wlm_model.py in tmp_path, importable), with fusedrnn's layers
    installed into torch.nn the way a launcher does it: torch.nn.LSTM = fusedrnn.torch.LSTM."""
    (tmp_path / "wlm_model.py").write_text(WLM_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "wlm_model", raising=False)
    for name in ("LSTM", "GRU", "RNN"):
        monkeypatch.setattr(torch.nn, name, getattr(frt, name))
    import wlm_model
    return wlm_model


@pytest.mark.parametrize("rnn_type, lr", [("LSTM", 20.0), ("GRU", 20.0), ("RNN_TANH", 2.0)])
def test_word_language_model_loop(wlm, tmp_path, rnn_type, lr, torch1, one_thread):
    nn = torch.nn
    torch.manual_seed(1111)
    ids, ntokens = corpus()
    train_data = wlm.batchify(ids[:1800], 8)
    val_data = wlm.batchify(ids[1800:2100], 4)
    test_data = wlm.batchify(ids[2100:], 4)
    bptt, clip, epochs = 12, 0.25, 6
    model = wlm.RNNModel(rnn_type, ntokens, 16, 24, 2, dropout=0.2)
    assert type(model.rnn).__module__ == "fusedrnn.torch"
    criterion = nn.NLLLoss()
    save = tmp_path / "model.pt"

    def train():
        model.train()
        hidden = model.init_hidden(8)
        losses = []
        for i in range(0, train_data.size(0) - 1, bptt):
            data, targets = wlm.get_batch(train_data, i, bptt)
            model.zero_grad()
            hidden = wlm.repackage_hidden(hidden)
            output, hidden = model(data, hidden)
            loss = criterion(output, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
            losses.append(loss.item())
        return losses

    best_val_loss = None
    first = None
    for _ in range(epochs):
        losses = train()
        first = first if first is not None else losses[0]
        val_loss = wlm.evaluate(model, val_data, bptt, 4)
        if not best_val_loss or val_loss < best_val_loss:
            with open(save, "wb") as f:
                torch.save(model, f)
            best_val_loss = val_loss
            best_test = wlm.evaluate(model, test_data, bptt, 4)
        else:
            lr /= 4.0
    assert val_loss < 0.8 * math.log(ntokens) and losses[-1] < first      # it learned

    # main.py: load the best saved model (torch.load's default weights_only=True; the example's
    # own classes must be allowed, the RNN layer is registered by fusedrnn.torch)
    with open(save, "rb") as f:
        with torch.serialization.safe_globals([wlm.RNNModel, nn.Dropout, nn.Embedding,
                                               nn.Linear]):
            model = torch.load(f)
    model.rnn.flatten_parameters()
    stock = {"LSTM": "LSTM", "GRU": "GRU"}.get(rnn_type, "RNN")
    assert type(model.rnn) is getattr(torch.nn.modules.rnn, stock)   # saved as torch.nn's
    test_loss = wlm.evaluate(model, test_data, bptt, 4)
    assert test_loss == pytest.approx(best_test, rel=1e-5)

    # the same file where fusedrnn cannot be imported: it loads as torch.nn's layer
    torch.save(test_data, tmp_path / "test_data.pt")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["fusedrnn"] = None          # blocks `import fusedrnn`
        try:
            import fusedrnn
            raise SystemExit("fusedrnn was importable")
        except ImportError:
            pass
        import torch, wlm_model
        with open("model.pt", "rb") as f:
            model = torch.load(f, weights_only=False)
        assert type(model.rnn) is torch.nn.{stock}, type(model.rnn)
        assert "fusedrnn" not in sys.modules or sys.modules["fusedrnn"] is None
        test_data = torch.load("test_data.pt")
        print(repr(wlm_model.evaluate(model, test_data, {bptt}, 4)))
    """)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.strip().splitlines()[-1]) == pytest.approx(best_test, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# torch.save / torch.load / pickle / copy

def saved(mod):
    b = io.BytesIO()
    torch.save(mod, b)
    b.seek(0)
    return b


@pytest.mark.parametrize("name", CONFIGS)
def test_save_load_weights_only(name):
    cls, kw = CONFIGS[name]
    ours, ref = make(cls, forget_bias=1.0, **kw) if cls == "LSTM" else make(cls, **kw)
    x = example(ours)
    b = saved(ours)
    rng = torch.random.get_rng_state()
    loaded = torch.load(b)                       # weights_only=True, torch's default
    assert torch.equal(rng, torch.random.get_rng_state())   # loading draws nothing
    assert type(loaded) is type(ref)             # torch.nn's class
    assert not hasattr(loaded, "forget_bias") and not hasattr(loaded, "variant")
    assert set(vars(loaded)) == set(vars(ref))    # none of fusedrnn's attributes
    assert repr(loaded) == repr(ref)
    assert loaded.training is False
    sd, want = loaded.state_dict(), ours.state_dict()
    assert list(sd) == list(want) and all(torch.equal(sd[k], want[k]) for k in sd)
    with torch.no_grad():
        assert_outputs(loaded(x), ours(x))


def test_safe_globals_are_registered():
    safe = torch.serialization.get_safe_globals()
    assert all(c in safe for c in (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN))


def test_load_without_fusedrnn(tmp_path):
    """A subprocess that cannot import fusedrnn loads a saved fusedrnn.torch layer as the
    torch.nn layer (weights_only=True with torch.nn.GRU allowed, as for a stock file, and
    weights_only=False) and reproduces its output."""
    ours, _ = make("GRU", num_layers=2)
    x = example(ours)
    with torch.no_grad():
        y, h = ours(x)
    torch.save(ours, tmp_path / "gru.pt")
    torch.save({"x": x, "y": y, "h": h}, tmp_path / "io.pt")
    code = textwrap.dedent("""
        import sys
        sys.modules["fusedrnn"] = None
        import torch
        io = torch.load("io.pt")
        with torch.serialization.safe_globals([torch.nn.GRU]):
            a = torch.load("gru.pt")
        b = torch.load("gru.pt", weights_only=False)
        for m in (a, b):
            assert type(m) is torch.nn.GRU, type(m)
            with torch.no_grad():
                y, h = m(io["x"])
            torch.testing.assert_close(y, io["y"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(h, io["h"], rtol=1e-5, atol=1e-6)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


class OutputOnly(frt.LSTM):
    """A user's subclass of a drop-in layer: its own attribute and forward."""

    def __init__(self, *args, scale=2.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = scale

    def forward(self, x, hx=None):
        return super().forward(x, hx)[0] * self.scale


def test_subclass_pickles_as_itself():
    """A subclass of a fusedrnn.torch layer comes back as that subclass (its forward and
    attributes), as a subclass of torch.nn.LSTM does; only the exact fusedrnn classes are
    written as torch.nn's."""
    torch.manual_seed(0)
    m = OutputOnly(C, H, scale=3.0, peepholes=True).eval()
    x = torch.randn(T, N, C)
    with torch.no_grad():
        y = m(x)
    for back in (pickle.loads(pickle.dumps(m)), torch.load(saved(m), weights_only=False)):
        assert type(back) is OutputOnly and back.scale == 3.0 and back.peepholes
        with torch.no_grad():
            torch.testing.assert_close(back(x), y, rtol=0, atol=0)


def test_quantize_dynamic_copy_saves_as_the_float32_torch_layer():
    """torch.save of a quantize_dynamic copy writes torch.nn's layer without fusedrnn's int8
    snapshot (nor any other fusedrnn attribute): torch.load's default weights_only=True loads it
    as the torch.nn layer in eval mode, which runs torch's float32 forward."""
    torch.manual_seed(0)
    stock = torch.nn.LSTM(C, H).eval()
    q = frt.quantize_dynamic(stock)
    assert isinstance(q, frt.LSTM) and q._int8 is not None
    layer = torch.load(saved(q))                    # weights_only=True
    assert type(layer) is torch.nn.LSTM and not layer.training
    assert set(vars(layer)) == set(vars(stock))     # nothing of fusedrnn's
    x = torch.randn(T, N, C)
    with torch.no_grad():
        assert_outputs(layer(x), stock(x), tol=0)


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_quantize_dynamic_copy_names_the_dtypes_it_takes(cls):
    """The int8 copy takes float32 parameters, input and states. Before, float64 input was told
    about autocast; after .bfloat16() a float32 input was told to be bfloat16, which then hit
    torch's bare 'Got unsupported ScalarType BFloat16'; after .double() the autocast message
    again. Each now names the argument, the dtype taken and why."""
    torch.manual_seed(0)
    q = frt.quantize_dynamic(getattr(torch.nn, cls)(C, H))
    x = torch.randn(T, N, C)
    h = torch.zeros(1, N, H)
    hx = (h, h) if cls == "LSTM" else h
    taken = "a quantize_dynamic copy runs fusedrnn's int8 kernels, which take float32 input"
    with torch.no_grad():
        y = q(x, hx)[0]
        assert y.dtype == torch.float32
        for dt in (torch.float64, torch.bfloat16):
            with pytest.raises(TypeError, match=rf"input must have dtype torch.float32: "
                                                rf"{taken}.*got {dt}$"):
                q(x.to(dt))
            bad = h.to(dt)
            with pytest.raises(TypeError, match=rf"hx(\[1\] \(c_0\))? must have dtype "
                                                rf"torch.float32: {taken}.*got {dt}$"):
                q(x, (h, bad) if cls == "LSTM" else bad)
            packed = torch.nn.utils.rnn.pack_padded_sequence(x.to(dt), [T] * N)
            with pytest.raises(TypeError, match=rf"input.data must have dtype torch.float32: "
                                                rf"{taken}"):
                q(packed)
        # under autocast (a Linear before it gives bfloat16): said, with what to do
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with pytest.raises(TypeError, match=r"also under torch.autocast.*x.float\(\)"):
                q(x.bfloat16())
            torch.testing.assert_close(q(x)[0], y, rtol=0, atol=0)   # float32: the int8 path
        for convert, dt in ((torch.nn.Module.bfloat16, torch.bfloat16),
                            (torch.nn.Module.double, torch.float64)):
            moved = convert(copy.deepcopy(q))
            for given in (x, x.to(dt)):
                with pytest.raises(TypeError, match=rf"take float32 parameters, input and "
                                                    rf"states; this layer's parameters are "
                                                    rf"{dt}.*\.float\(\)"):
                    moved(given)
            torch.testing.assert_close(moved.float()(x, hx)[0], y, rtol=0, atol=0)


@pytest.mark.parametrize("name", FUSED_ONLY)
def test_saving_fused_only_configuration_says_so(name):
    cls, kw = FUSED_ONLY[name]
    ours, _ = make(cls, **kw)
    extra = "peepholes=True" if name == "peepholes" else "variant='reset_before'"
    model = torch.nn.Sequential(ours)
    for obj in (ours, model):
        with pytest.raises(pickle.PicklingError, match=rf"with {extra} cannot be pickled.*"
                                                       rf"torch.nn.{cls} has no"):
            torch.save(obj, io.BytesIO())
    # the state_dict route works
    b = io.BytesIO()
    torch.save(ours.state_dict(), b)
    b.seek(0)
    other = getattr(frt, cls)(C, H, **kw)
    other.load_state_dict(torch.load(b))
    assert all(torch.equal(p, q) for p, q in zip(other.parameters(), ours.parameters()))


@pytest.mark.parametrize("name", ["lstm", "peepholes", "reset_before"])
def test_copy_and_deepcopy_keep_the_class(name):
    cls, kw = {**CONFIGS, **FUSED_ONLY}[name]
    ours, _ = make(cls, **kw)
    x = example(ours)
    deep, shallow = copy.deepcopy(ours), copy.copy(ours)
    assert type(deep) is type(ours) and type(shallow) is type(ours)
    assert deep.weight_hh_l0 is not ours.weight_hh_l0
    assert shallow.weight_hh_l0 is ours.weight_hh_l0
    assert getattr(deep, "peepholes", False) == getattr(ours, "peepholes", False)
    assert getattr(deep, "variant", None) == getattr(ours, "variant", None)
    with torch.no_grad():
        assert_outputs(deep(x), ours(x), tol=0)
        with torch.no_grad():
            deep.weight_hh_l0.add_(1.0)
        assert not torch.equal(deep(x)[0], ours(x)[0])


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_deepcopy_of_a_parametrized_layer(name):
    """copy.deepcopy of a layer with a torch parametrization (weight_norm: an EMA copy, a best
    model snapshot) works as for torch.nn's layer: an independent copy with the same class,
    outputs and gradients."""
    from torch.nn.utils.parametrizations import weight_norm
    torch.manual_seed(0)
    ours = weight_norm(getattr(frt, name)(C, H).double(), "weight_hh_l0")
    deep = copy.deepcopy(ours)
    assert type(deep) is type(ours) and isinstance(deep, getattr(frt, name))
    originals = deep.parametrizations.weight_hh_l0
    assert originals.original0 is not ours.parametrizations.weight_hh_l0.original0
    x = torch.randn(T, N, C, dtype=torch.float64)
    torch.testing.assert_close(deep(x)[0], ours(x)[0], rtol=0, atol=0)
    deep(x)[0].sum().backward()
    assert originals.original1.grad is not None
    assert ours.parametrizations.weight_hh_l0.original1.grad is None
    with torch.no_grad():
        originals.original1.add_(1.0)
    assert not torch.equal(deep(x)[0], ours(x)[0])


# ----------------------------------------------------------------------------------------------
# export, ONNX, TorchScript

@pytest.mark.parametrize("name", CONFIGS)
def test_torch_export_gives_the_stock_graph(name):
    cls, kw = CONFIGS[name]
    ours, ref = make(cls, **kw)
    x = example(ours)
    ep, ep_ref = torch.export.export(ours, (x,)), torch.export.export(ref, (x,))
    assert str(ep.graph) == str(ep_ref.graph)
    with torch.no_grad():
        assert_outputs(ep.module()(x), ours(x))


@pytest.mark.parametrize("name", FUSED_ONLY)
def test_graph_capture_of_fused_only_configuration_raises(name):
    cls, kw = FUSED_ONLY[name]
    ours, _ = make(cls, **kw)
    x = example(ours)
    match = "cannot be exported, traced or compiled into a graph"
    with pytest.raises(Exception, match=match):
        torch.export.export(ours, (x,))
    with pytest.raises(RuntimeError, match=match):
        torch.jit.trace(ours, (x,))


def _ort_run(path, x):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})


@pytest.mark.parametrize("name", CONFIGS)
def test_onnx_torchscript_exporter(name, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    cls, kw = CONFIGS[name]
    ours, _ = make(cls, **kw)
    x = example(ours)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the exporter's deprecation notices
        if name == "lstm_proj":                  # as for torch.nn.LSTM: not in this exporter
            with pytest.raises(torch.onnx.errors.SymbolicValueError,
                               match="LSTMs with projections"):
                torch.onnx.export(ours, (x,), str(path), dynamo=False)
            return
        torch.onnx.export(ours, (x,), str(path), dynamo=False)
    with torch.no_grad():
        want = flat(ours(x))
    got = _ort_run(path, x)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_onnx_dynamo_exporter(name, tmp_path):
    for mod in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(mod)
    cls, kw = CONFIGS[name]
    ours, _ = make(cls, **kw)
    x = example(ours)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ours, (x,), str(path), dynamo=True, verbose=False)
    with torch.no_grad():
        want = flat(ours(x))
    got = _ort_run(path, x)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5)


def _graph_text(traced):
    """A traced module's graph without the first line (which names the module's class)."""
    return str(traced.graph).split("\n", 1)[1]


@pytest.mark.parametrize("name", CONFIGS)
def test_jit_trace_gives_the_stock_graph(name):
    cls, kw = CONFIGS[name]
    ours, ref = make(cls, **kw)
    x = example(ours)
    traced = torch.jit.trace(ours, (x,))         # check_trace=True: re-runs and compares
    assert _graph_text(traced) == _graph_text(torch.jit.trace(ref, (x,)))
    with torch.no_grad():
        assert_outputs(traced(x), ours(x))


def test_jit_script_message():
    model = torch.nn.Sequential(frt.LSTM(C, H))
    for obj in (model[0], model):
        with pytest.raises(RuntimeError, match=r"torch.jit.script cannot compile "
                                               r"fusedrnn.torch.LSTM.*torch.jit.trace"):
            torch.jit.script(obj)


class Head(torch.nn.Module):
    """A model around a recurrent layer, for torch.fx (its state passed on)."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        self.fc = torch.nn.Linear(rnn.hidden_size, 2)

    def forward(self, x, hx):
        out, _ = self.rnn(x, hx)
        return self.fc(out)


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_fx_symbolic_trace_keeps_the_layer_as_a_leaf(name):
    """torch.fx.symbolic_trace records a fusedrnn layer as one call_module node, as it does
    torch.nn's, and the traced module runs it (the fused kernels)."""
    import torch.fx
    torch.manual_seed(0)
    ours, ref = make(name)
    model_ours, model_ref = Head(ours), Head(ref)
    model_ours.fc.load_state_dict(model_ref.fc.state_dict())
    gm, gm_ref = torch.fx.symbolic_trace(model_ours), torch.fx.symbolic_trace(model_ref)
    assert [(n.op, n.target) for n in gm.graph.nodes] == \
        [(n.op, n.target) for n in gm_ref.graph.nodes]
    assert gm.rnn is ours
    x = torch.randn(T, N, C)
    h = torch.randn(1, N, H)
    hx = (h, torch.randn(1, N, H)) if name == "LSTM" else h
    with torch.no_grad():
        torch.testing.assert_close(gm(x, hx), model_ref(x, hx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("how", ["vmap", "grad", "grad of parameters", "jvp", "forward_ad"])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "GRUCell", "LSTMCell"])
def test_function_transforms_are_refused(name, how):
    """torch.func's transforms and forward-mode AD get a TypeError naming them before any work
    (no raw storage error, and no silently dropped tangent under no_grad)."""
    import torch.autograd.forward_ad as fwAD
    torch.manual_seed(0)
    m = getattr(frt, name)(C, H)
    x = torch.randn(N, C) if name.endswith("Cell") else torch.randn(T, N, C)

    def first(out):
        return out[0] if isinstance(out, tuple) else out

    def f(xx):
        return first(m(xx)).sum()

    match = "torch.func transform" if how != "forward_ad" else "forward-mode AD dual tensor"
    with pytest.raises(TypeError, match=rf"fusedrnn.torch.{name}.forward: [\w ]+ is a .*"
                                        rf"{match}"):
        if how == "vmap":
            torch.func.vmap(lambda xx: first(m(xx)))(x.unsqueeze(0).expand(2, *x.shape))
        elif how == "grad":
            torch.func.grad(f)(x)
        elif how == "grad of parameters":
            params = {k: v.detach() for k, v in m.named_parameters()}
            torch.func.grad(lambda p: first(torch.func.functional_call(m, p, (x,))).sum())(
                params)
        elif how == "jvp":
            torch.func.jvp(f, (x,), (torch.ones_like(x),))
        else:
            with torch.no_grad(), fwAD.dual_level():
                m(fwAD.make_dual(x, torch.ones_like(x)))


# ----------------------------------------------------------------------------------------------
# torch.compile

class Tagger(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.emb = torch.nn.Embedding(11, C)
        self.rnn = rnn
        self.head = torch.nn.Linear(2 * H, 11)

    def forward(self, tokens):
        y, _ = self.rnn(torch.tanh(self.emb(tokens)))
        return self.head(y).log_softmax(-1)


def _loss_and_grads(model, tokens):
    model.zero_grad()
    out = model(tokens)
    loss = -out[..., 0].mean()
    loss.backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("allow_rnn", [False, True])
def test_torch_compile(allow_rnn, monkeypatch):
    """torch.compile of a model holding a fusedrnn layer: the same outputs and gradients as
    eager, and the fused kernels run (a graph break at the layer: dynamo's own for torch.nn's
    RNN modules by default, fusedrnn's forward under torch._dynamo.config.allow_rnn=True)."""
    import torch._dynamo
    calls = []
    real = frt._F._forward   # (fn, kind, ...): every fused layer call
    monkeypatch.setattr(frt._F, "_forward",
                        lambda *a, **k: (a[1] == "lstm" and calls.append(1)) or real(*a, **k))
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Tagger(frt.LSTM(C, H, bidirectional=True))
    tokens = torch.randint(0, 11, (T, N), generator=torch.Generator().manual_seed(2))
    want, want_g = _loss_and_grads(model, tokens)
    with torch._dynamo.config.patch(allow_rnn=allow_rnn):
        compiled = torch.compile(model)
        for _ in range(2):
            calls.clear()
            got, got_g = _loss_and_grads(compiled, tokens)
            assert len(calls) == 2                   # both directions ran fusedrnn's kernel
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            for g, w in zip(got_g, want_g):
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()


def test_torch_compile_fused_only_configuration():
    """peepholes under torch.compile: the default graph break runs the fused layer."""
    import torch._dynamo
    torch._dynamo.reset()
    ours, _ = make("LSTM", peepholes=True)
    x = example(ours)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(ours)(x)[0], ours(x)[0], rtol=0, atol=0)
    torch._dynamo.reset()


# ----------------------------------------------------------------------------------------------
# double backward

@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_double_backward_raises(cls):
    """The issue's gradient penalty: g must not come back as a constant (it did, and the
    penalty silently added nothing); differentiating it raises a clear error."""
    ours, _ = make(cls)
    ours.train()
    x = example(ours).requires_grad_()
    y = ours(x)[0]
    g, = torch.autograd.grad(y.sum(), x, create_graph=True)
    assert g.requires_grad
    with pytest.raises(RuntimeError, match="fusedrnn.torch: double backward is not supported"):
        (y.sum() + g.pow(2).sum()).backward()
    # first-order use is unaffected, create_graph=True without differentiating again too
    ours.zero_grad()
    y = ours(x)[0]
    g1, = torch.autograd.grad(y.sum(), x, retain_graph=True)
    g2, = torch.autograd.grad(y.sum(), x, create_graph=True)
    torch.testing.assert_close(g1, g2.detach(), rtol=0, atol=0)



# every fusedrnn.torch module kind, covering every autograd.Function behind them: the layers'
# _LayerFunction (2 layers, both directions; projection and peepholes: w_hr, w_peep), the
# regularised layers' _RegularisedFunction (float32 only), the cells' _CellFunction, and the
# fp16-autocast cell's _LayerFunction on float16-rounded operands
DOUBLE_KINDS = {
    "LSTM": (lambda: frt.LSTM(C, H, num_layers=2, bidirectional=True), torch.float64),
    "LSTM_proj_peepholes": (lambda: frt.LSTM(C, H, proj_size=3, peepholes=True), torch.float64),
    "GRU": (lambda: frt.GRU(C, H, num_layers=2), torch.float64),
    "GRU_reset_before": (lambda: frt.GRU(C, H, variant="reset_before"), torch.float64),
    "RNN": (lambda: frt.RNN(C, H), torch.float64),
    "LSTM_layer_norm": (lambda: frt.LSTM(C, H, layer_norm="tfa"), torch.float32),
    "LSTM_layer_norm_proj": (lambda: frt.LSTM(C, H, layer_norm="haste", proj_size=2,
                                              zoneout_h=0.1), torch.float32),
    "GRU_layer_norm_zoneout": (lambda: frt.GRU(C, H, layer_norm="haste", zoneout_h=0.2),
                               torch.float32),
    "LSTMCell": (lambda: frt.LSTMCell(C, H), torch.float64),
    "GRUCell": (lambda: frt.GRUCell(C, H), torch.float64),
    "RNNCell": (lambda: frt.RNNCell(C, H), torch.float64),
    "GRUCell_autocast16": (lambda: frt.GRUCell(C, H), torch.float32),
}


def _double_backward_case(kind):
    """(f, x, h0, module): f(x, h0) is a scalar of the module's output (sum of squares, so its
    second derivative is not zero), x and h0 leaves requiring grad; h0 an LSTM's (h, c)."""
    factory, dtype = DOUBLE_KINDS[kind]
    torch.manual_seed(0)
    mod = factory().to(dtype)
    cell = "Cell" in kind
    lstm = kind.startswith("LSTM")
    layers = 1 if cell else mod.num_layers * (2 if mod.bidirectional else 1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*((N, C) if cell else (T, N, C)), generator=g, dtype=dtype,
                    requires_grad=True)
    hs = (N, H) if cell else (layers, N, getattr(mod, "proj_size", 0) or H)
    h0 = torch.randn(*hs, generator=g, dtype=dtype, requires_grad=True)
    if lstm:
        c0 = torch.randn(*((N, H) if cell else (layers, N, H)), generator=g, dtype=dtype,
                         requires_grad=True)
        h0 = (h0, c0)

    def f(x, h0):
        with torch.autocast("cpu", dtype=torch.float16, enabled=kind.endswith("autocast16")):
            out = mod(x, h0)
        first = out[0] if isinstance(out, tuple) else out
        return first.float().pow(2).sum()

    return f, x, h0, mod


@pytest.mark.parametrize("form", ["grad", "backward", "hessian", "jacobian"])
@pytest.mark.parametrize("kind", list(DOUBLE_KINDS))
def test_every_double_backward_raises(kind, form):
    """Differentiating a first-order gradient of any fusedrnn.torch module raises, however it is
    done: torch.autograd.grad of it with respect to x, the initial states or any parameter
    (the gradient itself taken with respect to x, h0 or a parameter), .backward(),
    torch.autograd.functional.hessian (vectorized too), and the jacobian of the gradient.
    (Only .backward() raised: torch.autograd.grad(..., inputs) never ran the error node, which
    hung on fresh leaves, and returned the first-order part only; hessian returned zeros.)"""
    f, x, h0, mod = _double_backward_case(kind)
    states = list(h0) if isinstance(h0, tuple) else [h0]
    params = [p for p in mod.parameters()]
    msg = "fusedrnn.torch: double backward is not supported"
    if form == "grad":
        for first_name, first in [("x", x), ("h0", states[0]), ("a parameter", params[1])]:
            for second in [x, *states, *params]:
                loss = f(x, h0)
                g, = torch.autograd.grad(loss, first, create_graph=True)
                assert g.requires_grad, first_name
                with pytest.raises(RuntimeError, match=msg):
                    torch.autograd.grad(loss + g.pow(2).sum(), second, allow_unused=True)
    elif form == "backward":
        loss = f(x, h0)
        g, = torch.autograd.grad(loss, x, create_graph=True)
        with pytest.raises(RuntimeError, match=msg):
            (loss + g.pow(2).sum()).backward()
    elif form == "hessian":
        for vectorize in (False, True):
            with pytest.raises(RuntimeError, match=msg):
                torch.autograd.functional.hessian(lambda x: f(x, h0), x, vectorize=vectorize)
    else:
        with pytest.raises(RuntimeError, match=msg):
            torch.autograd.functional.jacobian(
                lambda x: torch.autograd.grad(f(x, h0), x, create_graph=True)[0], x)


def test_every_autograd_function_is_first_order_only():
    """Every torch.autograd.Function of fusedrnn.torch and its cells carries the strict
    double-backward guard (_first_order_only), so a new one cannot silently lack it."""
    import fusedrnn.torch_cells as cells
    found = [v for m in (frt, cells) for v in vars(m).values()
             if isinstance(v, type) and issubclass(v, torch.autograd.Function)
             and v.__module__ == m.__name__]
    assert {f.__name__ for f in found} >= {"_LayerFunction", "_RegularisedFunction",
                                            "_CellFunction"}
    for fn in found:
        assert getattr(fn, "_fr_first_order", False), fn.__name__


def test_eager_use_imports_neither_dynamo_nor_onnx():
    """The graph-mode checks cost nothing in eager use: importing fusedrnn.torch and running a
    layer forward and backward imports neither torch._dynamo nor torch.onnx (~1 s each)."""
    code = ("import sys, torch, fusedrnn.torch as frt\n"
            "m = frt.LSTM(3, 4); m(torch.randn(5, 2, 3))[0].sum().backward()\n"
            "print([n for n in ('torch._dynamo', 'torch.onnx') if n in sys.modules])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("how", ["prune bias", "prune weight", "parametrize bias",
                                 "weight_norm", "plain tensor"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "GRUCell"])
def test_pruned_and_parametrized_weights_as_torch_computes_them(kind, how):
    """torch.nn.utils.prune, parametrize and weight_norm move a weight out of _parameters and
    compute it at each call (AWD-LSTM sets a plain tensor in its place): the layers and cells
    use that tensor, as torch.nn's forward does (values and the gradients of what they are
    computed from), instead of running without it."""
    import torch.nn.utils.parametrize as parametrize
    import torch.nn.utils.prune as prune
    torch.manual_seed(0)
    cell = kind.endswith("Cell")
    ref = getattr(torch.nn, kind)(4, 5).double()
    ours = getattr(frt, kind)(4, 5).double()
    ours.load_state_dict(ref.state_dict())
    sfx = "" if cell else "_l0"
    w, b = "weight_hh" + sfx, "bias_hh" + sfx

    class Shift(torch.nn.Module):
        def forward(self, t):
            return t + 0.5

    for m in (ref, ours):
        if how == "prune bias":
            prune.l1_unstructured(m, b, amount=0.5)
        elif how == "prune weight":
            prune.l1_unstructured(m, w, amount=0.5)
        elif how == "parametrize bias":
            parametrize.register_parametrization(m, b, Shift())
        elif how == "weight_norm":
            torch.nn.utils.parametrizations.weight_norm(m, w)
        else:
            value = getattr(m, b).detach() * 2
            del m._parameters[b]
            setattr(m, b, value)
    x = torch.randn(3, 4, dtype=torch.float64) if cell else \
        torch.randn(6, 3, 4, dtype=torch.float64)
    outs = []
    for m in (ref, ours):
        m.zero_grad()
        out = m(x)
        y = out if cell else out[0]
        (y ** 2).sum().backward()
        outs.append((y.detach(), {n: p.grad.clone() for n, p in m.named_parameters()
                                  if p.grad is not None}))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-12, rtol=0)
    assert outs[1][1].keys() == outs[0][1].keys()
    for n in outs[0][1]:
        torch.testing.assert_close(outs[1][1][n], outs[0][1][n], atol=1e-12, rtol=0, msg=n)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_empty_batch_and_bf16_input_message(name):
    """An empty batch gives torch.nn's empty outputs (with a graph); a bfloat16 input to a
    float32 module says what bf16 inference needs."""
    ref, ours = getattr(torch.nn, name)(4, 5, num_layers=2), getattr(frt, name)(4, 5, num_layers=2)
    x = torch.randn(6, 0, 4, requires_grad=True)
    for a, b in zip(torch.utils._pytree.tree_leaves(ours(x)),
                    torch.utils._pytree.tree_leaves(ref(x))):
        assert a.shape == b.shape and a.requires_grad
    with pytest.raises(TypeError, match=r"input is torch.bfloat16 but the module's parameters "
                                        r"are not: bf16 inference runs a bfloat16 module"):
        ours(torch.randn(6, 3, 4).bfloat16())
