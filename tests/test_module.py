"""fusedrnn.module: Parameter, Module, Sequential, Linear, Embedding, Dropout and the config
round trip.

Linear and Embedding are checked against torch.nn (same weights; forward and backward) and by
central finite differences in float64. Dropout is checked statistically (keep fraction within
5 sigma) and for mask reuse in backward. The Module tests cover torch's parameter names and
order, tied parameters, state_dict / load_state_dict (all-or-nothing, no casting), modes,
gradient accumulation, config() / module_from_config and argument validation.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fusedrnn.module import (Dropout, Embedding, Linear, Module, Parameter, Sequential,
                             module_from_config, register_module)

torch = pytest.importorskip("torch")

TOL = {np.float64: 1e-12, np.float32: 2e-6}


def rng(seed=0):
    return np.random.default_rng(seed)


def close(got, want, dtype, what=""):
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    err = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
    assert err <= TOL[dtype] * scale * 10, f"{what}: max error {err:.3e}"


def t(a):
    return torch.from_numpy(np.array(a))


# ----------------------------------------------------------------------------------------------
# Linear

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(4,), (6, 4), (2, 3, 4), (0, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(dtype, shape, bias):
    lin = Linear(4, 3, bias=bias, dtype=dtype, seed=1)
    ref = torch.nn.Linear(4, 3, bias=bias, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(t(lin.weight.data.astype(np.float64)))
        if bias:
            ref.bias.copy_(t(lin.bias.data.astype(np.float64)))
    x = rng(2).standard_normal(shape).astype(dtype)
    dy = rng(3).standard_normal(shape[:-1] + (3,)).astype(dtype)

    y = lin(x)
    assert y.dtype == dtype and y.shape == shape[:-1] + (3,)
    xt = t(x.astype(np.float64)).requires_grad_()
    yt = ref(xt)
    close(y, yt.detach().numpy(), dtype, "y")

    dx = lin.backward(dy)
    yt.backward(t(dy.astype(np.float64)))
    assert dx.dtype == dtype
    close(dx, xt.grad.numpy(), dtype, "dx")
    assert lin.weight.grad.dtype == dtype
    close(lin.weight.grad, ref.weight.grad.numpy(), dtype, "dW")
    if bias:
        close(lin.bias.grad, ref.bias.grad.numpy(), dtype, "db")
    else:
        assert lin.bias is None
        assert [n for n, _ in lin.named_parameters()] == ["weight"]


def test_linear_torch_init_range():
    lin = Linear(16, 300, seed=0)
    k = 1 / math.sqrt(16)
    assert np.all(np.abs(lin.weight.data) <= k) and np.all(np.abs(lin.bias.data) <= k)
    assert lin.weight.data.std() > 0.8 * k / math.sqrt(3)  # U(-k, k) has std k/sqrt(3)
    assert lin.weight.data.dtype == np.float32


def numeric_grad(f, a, eps=1e-6):
    """Central differences of the scalar f() with respect to every element of a (in place)."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + eps
        fp = f()
        a[i] = old - eps
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def test_linear_finite_differences():
    lin = Linear(4, 3, dtype="float64", seed=5)
    x = rng(1).standard_normal((2, 3, 4))
    w = rng(2).standard_normal((2, 3, 3))
    loss = lambda: float(np.sum(np.tanh(lin.forward(x)) * w))  # noqa: E731
    y = lin.forward(x)
    dx = lin.backward((1 - np.tanh(y) ** 2) * w)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(lin.weight.grad, numeric_grad(loss, lin.weight.data),
                               rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(lin.bias.grad, numeric_grad(loss, lin.bias.data),
                               rtol=1e-7, atol=1e-9)


def test_linear_forward_validation():
    lin = Linear(4, 3, seed=0)
    with pytest.raises(TypeError, match="dtype float32"):
        lin(np.zeros((2, 4)))                                   # float64 into float32
    with pytest.raises(TypeError, match="numpy array"):
        lin([[0.0] * 4])
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        lin(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="shape"):
        lin(np.ones((), np.float32))                            # 0-d
    lin(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="dy must have shape"):
        lin.backward(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="dy must have dtype"):
        lin.backward(np.zeros((2, 3), np.float64))


def test_backward_without_training_forward_raises():
    lin = Linear(4, 3, seed=0)
    with pytest.raises(RuntimeError, match="forward"):
        lin.backward(np.zeros((2, 3), np.float32))
    lin.eval()
    lin(np.zeros((2, 4), np.float32))
    with pytest.raises(RuntimeError):
        lin.backward(np.zeros((2, 3), np.float32))
    emb = Embedding(5, 3, seed=0)
    with pytest.raises(RuntimeError):
        emb.backward(np.zeros((2, 3), np.float32))
    emb.eval()
    emb(np.array([1, 2]))
    with pytest.raises(RuntimeError):
        emb.backward(np.zeros((2, 3), np.float32))


def test_grads_accumulate_and_zero_grad():
    lin = Linear(4, 3, dtype=np.float64, seed=0)
    x = rng(1).standard_normal((5, 4))
    dy = rng(2).standard_normal((5, 3))
    lin(x)
    lin.backward(dy)
    g1 = {n: g.copy() for n, g in lin.grad_dict().items()}
    lin(x)
    lin.backward(dy)
    for n, g in lin.grad_dict().items():
        np.testing.assert_allclose(g, 2 * g1[n], rtol=1e-14)
    lin.zero_grad()
    assert all(not g.any() for g in lin.grad_dict().values())


# ----------------------------------------------------------------------------------------------
# Embedding

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_embedding_matches_torch(dtype, padding_idx):
    emb = Embedding(7, 3, padding_idx=padding_idx, dtype=dtype, seed=4)
    if padding_idx is not None:
        assert not emb.weight.data[padding_idx].any()        # the padding row starts at zero
        assert emb.padding_idx == padding_idx % 7
    ref = torch.nn.Embedding(7, 3, padding_idx=padding_idx, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(t(emb.weight.data.astype(np.float64)))
    idx = np.array([[0, 2, 2, 6], [2, 3, 0, 0], [6, 6, 6, 1]])   # repeats and the padding row
    dy = rng(1).standard_normal(idx.shape + (3,)).astype(dtype)
    y = emb(idx)
    yt = ref(t(idx))
    assert y.dtype == dtype
    close(y, yt.detach().numpy(), dtype, "y")
    assert emb.backward(dy) is None
    yt.backward(t(dy.astype(np.float64)))
    close(emb.weight.grad, ref.weight.grad.numpy(), dtype, "dW")
    if padding_idx is not None:
        assert not emb.weight.grad[padding_idx].any()
    # repeated indices: gradients summed
    want0 = dy[idx == 0].sum(axis=0)
    if padding_idx is None:
        want6 = dy[idx == 6].sum(axis=0)
        close(emb.weight.grad[6], want6, dtype, "row 6")
    close(emb.weight.grad[0], want0, dtype, "row 0")


def test_embedding_finite_differences():
    emb = Embedding(5, 3, dtype="float64", seed=0)
    idx = np.array([[1, 4, 1], [0, 0, 3]], dtype=np.uint8)
    w = rng(3).standard_normal((2, 3, 3))
    loss = lambda: float(np.sum(np.sin(emb.forward(idx)) * w))  # noqa: E731
    y = emb.forward(idx)
    emb.backward(np.cos(y) * w)
    np.testing.assert_allclose(emb.weight.grad, numeric_grad(loss, emb.weight.data),
                               rtol=1e-7, atol=1e-9)


def test_embedding_forward_validation():
    emb = Embedding(5, 3, seed=0)
    for bad in (np.array([0.0, 1.0]), np.array([True, False]), [0, 1]):
        with pytest.raises(TypeError, match="idx"):
            emb(bad)
    for bad in (np.array([0, 5]), np.array([-1, 0])):
        with pytest.raises(ValueError, match=r"\[0, 5\)"):
            emb(bad)
    assert emb(np.zeros((0, 2), np.int64)).shape == (0, 2, 3)
    emb(np.array([1, 2]))
    with pytest.raises(ValueError, match="dy must have shape"):
        emb.backward(np.zeros((3, 3), np.float32))
    with pytest.raises(TypeError, match="dy must have dtype"):
        emb.backward(np.zeros((2, 3), np.float64))


# ----------------------------------------------------------------------------------------------
# Dropout

def test_dropout_identity_in_eval_and_for_p0():
    x = rng().standard_normal((4, 5)).astype(np.float32)
    d = Dropout(0.5, seed=0).eval()
    np.testing.assert_array_equal(d(x), x)
    dy = rng(1).standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_array_equal(d.backward(dy), dy)
    d0 = Dropout(0.0, seed=0)
    assert d0.training
    np.testing.assert_array_equal(d0(x), x)
    np.testing.assert_array_equal(d0.backward(dy), dy)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_train_statistics_and_mask(p, dtype):
    n = 200_000
    x = (rng(1).random(n) + 0.5).astype(dtype)           # no zeros in x
    d = Dropout(p, seed=3)
    y = d(x)
    assert y.dtype == dtype and y.shape == x.shape
    kept = y != 0
    frac = kept.mean()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(frac - (1 - p)) < 5 * sigma, (frac, 1 - p, sigma)
    scale = dtype(1 / (1 - p))
    np.testing.assert_array_equal(y[kept], x[kept] * scale)
    dy = rng(2).standard_normal(n).astype(dtype)
    dx = d.backward(dy)
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx != 0, kept & (dy != 0))
    np.testing.assert_array_equal(dx[kept], dy[kept] * scale)
    with pytest.raises(ValueError, match="dy must have shape"):
        d.backward(dy[:-1])


def test_dropout_seeded_reproducible():
    x = np.ones((50, 40))
    a, b, c = Dropout(0.3, seed=11), Dropout(0.3, seed=11), Dropout(0.3, seed=12)
    ya, yb, yc = a(x), b(x), c(x)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(ya, yc)
    y2 = a(x)
    assert not np.array_equal(y2, ya)                    # the next call draws a new mask
    np.testing.assert_array_equal(a.backward(np.ones_like(x)), y2)   # ... used by backward


def test_dropout_validation():
    d = Dropout(0.5)
    with pytest.raises(TypeError, match="x must be"):
        d(np.ones(3, np.int64))
    with pytest.raises(TypeError, match="x must be"):
        d([1.0, 2.0])


# ----------------------------------------------------------------------------------------------
# Module: names, order, ties

class Net(Module):
    def __init__(self):
        super().__init__()
        self.emb = Embedding(10, 4, seed=0)
        self.scale = Parameter(np.ones(4, np.float32))
        self.body = Sequential(Linear(4, 4, seed=1), Dropout(0.1), Linear(4, 4, seed=2))
        self.head = Linear(4, 10, seed=3)


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.scale = torch.nn.Parameter(torch.ones(4))
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1),
                                        torch.nn.Linear(4, 4))
        self.head = torch.nn.Linear(4, 10)


def test_named_parameters_match_torch():
    ours = [(n, p.shape) for n, p in Net().named_parameters()]
    theirs = [(n, tuple(p.shape)) for n, p in TorchNet().named_parameters()]
    assert ours == theirs
    assert [n for n, _ in ours] == ["scale", "emb.weight", "body.0.weight", "body.0.bias",
                                    "body.2.weight", "body.2.bias", "head.weight", "head.bias"]
    net = Net()
    assert list(net.state_dict()) == [n for n, _ in ours]
    assert list(net.grad_dict()) == [n for n, _ in ours]
    assert net.num_parameters() == sum(p.numel() for p in TorchNet().parameters())
    assert [n for n, _ in net.named_modules()] == [n for n, _ in TorchNet().named_modules()]
    assert [n for n, _ in net.named_children()] == ["emb", "body", "head"]


def _tied_pair():
    """Net and TorchNet with the head's weight tied to the embedding (a language model's)."""
    net = Net()
    net.head = Linear(4, 10, bias=False, dtype=np.float32, seed=3)
    net.head.weight = net.emb.weight
    tn = TorchNet()
    tn.head = torch.nn.Linear(4, 10, bias=False)
    tn.head.weight = tn.emb.weight
    return net, tn


def test_tied_state_dict_loads_strictly_both_ways():
    """state_dict lists a tied Parameter under each name, as torch's does: ours loads strictly
    into the torch model with the same tie and torch's into ours (before, ours dropped
    head.weight: torch's strict load said it was missing, and ours refused torch's as
    unexpected). load_state_dict takes both names, copies once, keeps the tie; entries that
    differ are refused naming both; strict needs every name."""
    net, tn = _tied_pair()
    got = tn.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    assert list(got.missing_keys) == [] and list(got.unexpected_keys) == []
    assert tn.head.weight is tn.emb.weight
    np.testing.assert_array_equal(tn.emb.weight.detach().numpy(), net.emb.weight.data)
    with torch.no_grad():
        for p in tn.parameters():
            p.mul_(2)
    res = net.load_state_dict(tn.state_dict())
    assert net.head.weight is net.emb.weight
    np.testing.assert_array_equal(net.head.weight.data, tn.emb.weight.detach().numpy())
    assert res == tn.load_state_dict(tn.state_dict()) == ([], [])
    sd = {k: v.numpy().copy() for k, v in tn.state_dict().items()}
    sd["head.weight"][0, 0] += 1
    before = net.emb.weight.data.copy()
    with pytest.raises(ValueError, match="emb.weight and head.weight are one \\(tied\\) "
                                         "parameter, but the state dict gives them different "
                                         "values; nothing was copied"):
        net.load_state_dict(sd)
    np.testing.assert_array_equal(net.emb.weight.data, before)
    del sd["head.weight"]
    with pytest.raises(KeyError, match=r"missing \['head.weight'\], unexpected \[\]"):
        net.load_state_dict(sd)
    res = net.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["head.weight"] and res.unexpected_keys == []
    np.testing.assert_array_equal(net.head.weight.data, sd["emb.weight"])


def test_tied_model_saves_and_loads_tied(tmp_path):
    """fusedrnn.io.save / load of a tied model: both names written (the same values), loaded
    back strictly into a tied model, which stays tied; the optimiser and num_parameters still
    count the Parameter once."""
    import fusedrnn.io as fio
    from fusedrnn.optim import Adam
    net, tn = _tied_pair()
    assert net.num_parameters() == sum(p.numel() for p in tn.parameters())
    assert len(list(net.parameters())) == len(list(tn.parameters()))
    opt = Adam(net.parameters(), lr=0.1)
    fio.save(tmp_path / "m.safetensors", net, opt)
    other, _ = _tied_pair()
    other.emb.weight.data[...] = 0
    ck = fio.load(tmp_path / "m.safetensors", other, Adam(other.parameters(), lr=0.1))
    assert list(ck.state_dict) == list(tn.state_dict())
    assert other.head.weight is other.emb.weight
    np.testing.assert_array_equal(other.emb.weight.data, net.emb.weight.data)


def test_tied_checkpoint_of_one_name_still_loads(tmp_path, monkeypatch):
    """A file written before state_dict listed a tied Parameter under each name holds only its
    first name: fusedrnn.io.load (strict) still loads it into the tied model, filling the other
    name from it; an untied parameter's missing name is still refused."""
    import collections
    import fusedrnn.io as fio
    from fusedrnn import module as fmodule
    net, _ = _tied_pair()
    # the old state_dict: named_parameters' names (a tied Parameter once)
    monkeypatch.setattr(fmodule.Module, "state_dict", lambda self: collections.OrderedDict(
        (n, p.data) for n, p in self.named_parameters()))
    fio.save(tmp_path / "old.safetensors", net)
    monkeypatch.undo()
    other, _ = _tied_pair()
    other.emb.weight.data[...] = 0
    ck = fio.load(tmp_path / "old.safetensors", other)
    assert "head.weight" not in ck.state_dict and other.head.weight is other.emb.weight
    np.testing.assert_array_equal(other.head.weight.data, net.emb.weight.data)
    untied = Net()
    untied.head = Linear(4, 10, bias=False, dtype=np.float32, seed=3)
    with pytest.raises(Exception, match="missing.*head.weight"):
        fio.load(tmp_path / "old.safetensors", untied)


@pytest.mark.parametrize("strict", [True, False])
def test_load_state_dict_returns_torchs_named_tuple(strict):
    """load_state_dict returns (missing_keys, unexpected_keys) as torch's _IncompatibleKeys,
    in both strict modes (it returned None): the same lists as torch's."""
    net, tn = Net(), TorchNet()
    sd = {k: v.copy() for k, v in net.state_dict().items()}
    res = net.load_state_dict(sd, strict=strict)
    want = tn.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=strict)
    assert res._fields == want._fields == ("missing_keys", "unexpected_keys")
    assert res == want == ([], []) and repr(res) == repr(want)
    if not strict:
        del sd["scale"]
        sd["extra.weight"] = np.zeros(3, np.float32)
        res = net.load_state_dict(sd, strict=False)
        want = tn.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
        assert res.missing_keys == want.missing_keys == ["scale"]
        assert res.unexpected_keys == want.unexpected_keys == ["extra.weight"]
        assert isinstance(res.missing_keys, list) and isinstance(res.unexpected_keys, list)


def test_nested_sequential_names():
    s = Sequential(Linear(2, 3, seed=0), Sequential(Linear(3, 3, seed=1), Linear(3, 1, seed=2)))
    assert [n for n, _ in s.named_parameters()] == [
        "0.weight", "0.bias", "1.0.weight", "1.0.bias", "1.1.weight", "1.1.bias"]
    assert len(s) == 2 and isinstance(s[1], Sequential) and s[-1] is s[1]
    assert list(s) == [s[0], s[1]]


def test_tied_parameters_listed_once_and_accumulate():
    net = Net()
    net.head = Linear(4, 10, bias=False, dtype=np.float32, seed=3)
    net.head.weight = net.emb.weight                       # [10, 4] both
    names = [n for n, _ in net.named_parameters()]
    assert names.count("emb.weight") == 1 and "head.weight" not in names
    tn = TorchNet()
    tn.head = torch.nn.Linear(4, 10, bias=False)
    tn.head.weight = tn.emb.weight
    assert names == [n for n, _ in tn.named_parameters()]   # torch also lists it once
    assert list(net.state_dict()) == list(tn.state_dict())  # ... but its state_dict both names
    assert net.state_dict()["head.weight"] is net.state_dict()["emb.weight"]
    # both uses add into the one gradient
    idx = np.array([1, 2, 1])
    e = net.emb(idx)
    x = rng().standard_normal((3, 4)).astype(np.float32)
    net.head(x)
    dy = rng(1).standard_normal((3, 10)).astype(np.float32)
    net.head.backward(dy)
    net.emb.backward(np.ones_like(e))
    want = dy.T @ x
    np.add.at(want, idx, np.ones((3, 4), np.float32))
    np.testing.assert_allclose(net.emb.weight.grad, want, rtol=1e-6)


def test_attribute_reassignment_and_deletion():
    net = Net()
    net.head = None
    assert "head" not in dict(net.named_children())
    with pytest.raises(ValueError, match=r"Net\.scale: expected a float array of shape"):
        net.scale = np.ones(3)                             # a Parameter stays a Parameter
    with pytest.raises(TypeError, match=r"Net\.scale is a Parameter"):
        net.scale = "x"
    del net.scale                                          # unregistered only explicitly
    net.scale = np.ones(3)
    assert "scale" not in dict(net.named_parameters())
    del net.emb
    assert [n for n, _ in net.named_parameters()][0] == "body.0.weight"
    net.extra = Parameter(np.zeros(2))
    assert [n for n, _ in net.named_parameters()][0] == "extra"


def test_module_without_init_raises():
    class Bad(Module):
        def __init__(self):
            self.w = Parameter(np.zeros(2))

    with pytest.raises(AttributeError, match="Module.__init__"):
        Bad()


def test_parameter():
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    p = Parameter(base[:, ::2])
    assert p.data.flags.c_contiguous and p.shape == (3, 2) and p.dtype == np.float64
    assert p.size == 6 and p.grad.shape == (3, 2) and p.grad.dtype == np.float64
    assert not p.grad.any()
    for bad in ([1.0], np.zeros(2, np.int32), np.zeros(2, np.float16)):
        with pytest.raises(TypeError, match="Parameter"):
            Parameter(bad)
    assert "shape=[3, 2]" in repr(p)


# ----------------------------------------------------------------------------------------------
# state_dict / load_state_dict

def test_state_dict_round_trip_in_place():
    a, b = Net(), Net()
    for p in a.parameters():
        p.data += 1
    sd = a.state_dict()
    assert sd["emb.weight"] is a.emb.weight.data          # the arrays themselves
    before = {n: id(p.data) for n, p in b.named_parameters()}
    b.load_state_dict(sd)
    for n, p in b.named_parameters():
        assert id(p.data) == before[n]                     # copied in place
        np.testing.assert_array_equal(p.data, sd[n])
    sd["scale"][0] = 99                                    # not aliased after the copy
    assert b.scale.data[0] != 99


def test_load_state_dict_errors_copy_nothing():
    net = Net()
    orig = {n: a.copy() for n, a in net.state_dict().items()}
    good = {n: a + 1 for n, a in orig.items()}

    missing = dict(good)
    del missing["head.bias"]
    # RuntimeError as torch's, and the KeyError / ValueError fusedrnn raised before
    for kind in (KeyError, RuntimeError):
        with pytest.raises(kind, match=r"^load_state_dict: missing \['head.bias'\]"):
            net.load_state_dict(missing)
        with pytest.raises(kind, match="extra"):
            net.load_state_dict({**good, "extra": np.zeros(1, np.float32)})

    bad_shape = dict(good)
    bad_shape["head.bias"] = np.zeros(11, np.float32)     # the last entry fails
    for kind in (ValueError, RuntimeError):
        with pytest.raises(kind, match=r"head.bias must have shape \[10\]"):
            net.load_state_dict(bad_shape)

    bad_dtype = dict(good)
    bad_dtype["head.weight"] = good["head.weight"].astype(np.float64)
    with pytest.raises(TypeError, match="head.weight must have dtype float32"):
        net.load_state_dict(bad_dtype)

    bad_type = dict(good)
    bad_type["head.bias"] = list(good["head.bias"])
    with pytest.raises(TypeError, match="head.bias"):
        net.load_state_dict(bad_type)

    with pytest.raises(TypeError, match="mapping"):
        net.load_state_dict([("scale", good["scale"])])

    for n, a in net.state_dict().items():                  # nothing was copied
        np.testing.assert_array_equal(a, orig[n], err_msg=n)

    net.load_state_dict(good)
    for n, a in net.state_dict().items():
        np.testing.assert_array_equal(a, good[n])


def test_load_state_dict_strict_false():
    net = Net()
    orig = {n: a.copy() for n, a in net.state_dict().items()}
    part = {"head.bias": np.full(10, 7, np.float32), "nonsense": np.zeros(3)}
    net.load_state_dict(part, strict=False)
    assert (net.head.bias.data == 7).all()
    np.testing.assert_array_equal(net.head.weight.data, orig["head.weight"])
    with pytest.raises(ValueError, match="shape"):            # shapes still checked
        net.load_state_dict({"head.bias": np.zeros(3, np.float32)}, strict=False)


def test_load_state_dict_accepts_torch_tensors():
    tn, net = TorchNet(), Net()
    net.load_state_dict(tn.state_dict())                     # requires_grad tensors included
    for (n, p), (tn_name, tp) in zip(net.named_parameters(), tn.named_parameters()):
        assert n == tn_name
        np.testing.assert_array_equal(p.data, tp.detach().numpy())
    with pytest.raises(TypeError, match="dtype"):
        net.load_state_dict({n: v.double() for n, v in tn.state_dict().items()})


@pytest.mark.parametrize("kind", ["bfloat16", "float16", "meta", "sparse", "neg"])
def test_load_state_dict_torch_tensors_it_cannot_take(kind):
    """bfloat16 / float16 / meta / sparse tensors: a TypeError naming the entry and the dtype
    wanted, before anything is copied (``.numpy()`` had raised torch's own error, naming
    neither); nothing is cast."""
    tn, net = TorchNet(), Net()
    before = {n: p.data.copy() for n, p in net.named_parameters()}
    sd = tn.state_dict()
    bad = "body.2.weight"  # one entry, after others that would have been copied
    sd[bad] = {"bfloat16": lambda t: t.to(torch.bfloat16),
               "float16": lambda t: t.half(),
               "meta": lambda t: t.to("meta"),
               "sparse": lambda t: t.to_sparse(),
               "neg": lambda t: torch._neg_view(t)}[kind](sd[bad])
    match = {"meta": f"{bad} is a meta tensor.*torch.float32",
             "sparse": f"{bad} is a torch.sparse_coo tensor.*torch.float32",
             "neg": f"{bad} is a lazily negated"}.get(
        kind, f"{bad} must have dtype torch.float32, got torch.{kind}")
    with pytest.raises(TypeError, match=match):
        net.load_state_dict(sd)
    for n, p in net.named_parameters():
        np.testing.assert_array_equal(p.data, before[n])


# ----------------------------------------------------------------------------------------------
# modes

def test_train_eval_recursive():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    assert net.train() is net
    assert all(m.training for m in net.modules())
    net.body.train(False)
    assert net.training and not net.body[1].training and net.head.training
    assert net.train(np.bool_(False)) is net and not net.training
    # a mode that is not a bool raises as torch's (train("eval") had set train mode)
    for bad in ("eval", 0, None):
        with pytest.raises(ValueError, match=r"Net.train: mode must be a bool"):
            net.train(bad)
        with pytest.raises(ValueError, match="expected to be boolean"):   # (the same type)
            torch.nn.Linear(1, 1).train(bad)
    assert not any(m.training for m in net.modules())          # nothing changed


def test_sequential_forward_backward_matches_torch():
    s = Sequential(Linear(3, 5, dtype=np.float64, seed=0), Dropout(0.5, seed=1),
                   Linear(5, 2, dtype=np.float64, seed=2))
    s.eval()
    ref = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Dropout(0.5),
                              torch.nn.Linear(5, 2)).double().eval()
    ref.load_state_dict({n: t(a) for n, a in s.state_dict().items()})
    x = rng().standard_normal((4, 3))
    np.testing.assert_allclose(s(x), ref(t(x)).detach().numpy(), rtol=1e-12)
    # train mode: the dropout mask is shared between the two stacks by copying it
    s.train()
    x = rng(1).standard_normal((4, 3))
    y = s(x)
    mask = s[1]._mask
    xt = t(x).requires_grad_()
    yt = ref[2](ref[0](xt) * t(mask))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12)
    dy = rng(2).standard_normal((4, 2))
    dx = s.backward(dy)
    yt.backward(t(dy))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12)
    for (n, g), (_, tp) in zip(s.grad_dict().items(), ref.named_parameters()):
        np.testing.assert_allclose(g, tp.grad.numpy(), rtol=1e-12, err_msg=n)


# ----------------------------------------------------------------------------------------------
# config

def test_config_round_trip():
    s = Sequential(Embedding(10, 4, padding_idx=-1, seed=0),
                   Sequential(Linear(4, 8, dtype="float32", seed=1), Dropout(0.25, seed=2)),
                   Linear(8, 3, bias=False, seed=3))
    cfg = s.config()
    assert json.loads(json.dumps(cfg)) == cfg                # JSON-serialisable
    assert cfg["modules"][0] == {"type": "Embedding", "num_embeddings": 10, "embedding_dim": 4,
                                 "padding_idx": 9, "dtype": "float32", "seed": 0}
    r = module_from_config(json.loads(json.dumps(cfg)))
    assert r.config() == cfg and repr(r) == repr(s)
    assert [(n, p.shape, p.dtype) for n, p in r.named_parameters()] == \
        [(n, p.shape, p.dtype) for n, p in s.named_parameters()]
    for (n, a), (_, b) in zip(r.state_dict().items(), s.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=n)        # seeded: identical weights
    x = np.array([[1, 2, 9]])
    np.testing.assert_array_equal(r(x), s(x))                 # dropout masks too (same seed)


def test_config_float64_and_unseeded():
    lin = Linear(3, 2, dtype=np.float64)
    cfg = lin.config()
    assert cfg["dtype"] == "float64" and cfg["seed"] is None
    r = module_from_config(cfg)
    assert r.weight.dtype == np.float64 and r.weight.shape == (2, 3)


def test_config_errors():
    with pytest.raises(TypeError, match="register_module"):
        Net().config()
    with pytest.raises(TypeError, match="register_module"):
        Sequential(Net()).config()

    class MyLinear(Linear):
        pass

    with pytest.raises(TypeError, match="MyLinear has no config"):
        MyLinear(2, 3).config()
    for bad in ({"in_features": 2}, "Linear", None, {"type": "Nope"}):
        with pytest.raises(ValueError, match="module_from_config"):
            module_from_config(bad)


def test_register_module_custom():
    @register_module
    class Scale(Module):
        def __init__(self, n, *, value=1.0):
            super().__init__()
            self._record(n=n, value=value)
            self.w = Parameter(np.full(n, value))

    try:
        s = Sequential(Scale(3, value=2.0), Linear(3, 1, dtype=np.float64, seed=0))
        r = module_from_config(s.config())
        assert isinstance(r[0], Scale) and (r[0].w.data == 2).all()
    finally:
        from fusedrnn import module as _m
        _m._REGISTRY.pop("Scale", None)


# ----------------------------------------------------------------------------------------------
# constructor validation

BAD_ARGS = [
    (Linear, (0, 3), {}, ValueError, "in_features"),
    (Linear, (2.0, 3), {}, ValueError, "in_features"),
    (Linear, (True, 3), {}, ValueError, "in_features"),
    (Linear, (2, -1), {}, ValueError, "out_features"),
    (Linear, (2, 3), {"bias": 1}, TypeError, "bias"),
    (Linear, (2, 3), {"dtype": "int32"}, TypeError, "dtype"),
    (Linear, (2, 3), {"dtype": np.float16}, TypeError, "dtype"),
    (Linear, (2, 3), {"dtype": "nonsense"}, TypeError, "dtype"),
    (Linear, (2, 3), {"seed": -1}, ValueError, "seed"),
    (Linear, (2, 3), {"seed": 1.5}, ValueError, "seed"),
    (Embedding, (0, 4), {}, ValueError, "num_embeddings"),
    (Embedding, (5, 0), {}, ValueError, "embedding_dim"),
    (Embedding, (5, 4), {"padding_idx": 5}, ValueError, "padding_idx"),
    (Embedding, (5, 4), {"padding_idx": -6}, ValueError, "padding_idx"),
    (Embedding, (5, 4), {"padding_idx": 1.0}, ValueError, "padding_idx"),
    (Embedding, (5, 4), {"dtype": "int64"}, TypeError, "dtype"),
    (Embedding, (5, 4), {"seed": "0"}, ValueError, "seed"),
    (Dropout, (1.5,), {}, ValueError, "p"),
    (Dropout, (-0.1,), {}, ValueError, "p"),
    (Dropout, ("0.5",), {}, ValueError, "p"),
    (Dropout, (True,), {}, ValueError, "p"),
    (Dropout, (0.5,), {"seed": True}, ValueError, "seed"),
    (Sequential, (Linear(2, 2), 3), {}, TypeError, "argument 1"),
]


@pytest.mark.parametrize("cls,args,kwargs,exc,name", BAD_ARGS,
                         ids=[f"{c.__name__}-{n}-{i}" for i, (c, _, _, _, n) in
                              enumerate(BAD_ARGS)])
def test_bad_constructor_arguments(cls, args, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        cls(*args, **kwargs)


def test_dtype_none_rejected():
    with pytest.raises(TypeError, match="dtype"):
        Linear(2, 3, dtype=None)


def test_sequential_subclass_has_no_config():
    class MySeq(Sequential):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(TypeError):
        MySeq(Linear(2, 2)).config()


def test_shared_module_has_no_config():
    lin = Linear(2, 2)
    s = Sequential(lin)          # (Sequential(lin, lin) is refused when made)
    setattr(s, "1", lin)
    with pytest.raises(TypeError, match="twice"):
        s.config()


def test_dropout_backward_checks():
    d = Dropout(0.5, seed=0)
    with pytest.raises(RuntimeError, match="forward"):
        d.backward(np.ones(3))
    d.forward(np.ones(3))
    with pytest.raises(TypeError, match="float64"):
        d.backward(np.ones(3, np.float32))


def test_repr():
    r = repr(Sequential(Linear(2, 3, seed=0), Dropout(0.1)))
    assert "(0): Linear(in_features=2, out_features=3" in r and "(1): Dropout(p=0.1" in r
    assert "seed" not in r


def test_replacing_keeps_the_order_and_sequential_refuses_tied_configs():
    """module.<name> = a new Parameter or module keeps its place (torch's order: the optimisers'
    state by position and Sequential's order follow it); a Sequential whose children share a
    Parameter has no config (it could not be rebuilt), as one listing a module twice."""
    from fusedrnn.module import Linear, Parameter, Sequential
    lin = Linear(3, 4, seed=0)
    lin.weight = Parameter(np.zeros((4, 3), np.float32))
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]
    seq = Sequential(Linear(3, 4, seed=0), Linear(4, 2, seed=1))
    setattr(seq, "0", Linear(3, 4, seed=2))
    assert list(seq._modules) == ["0", "1"]
    assert seq.forward(np.ones((5, 3), np.float32)).shape == (5, 2)
    seq[1].weight = Parameter(np.zeros((2, 4), np.float32))
    seq.config()                                  # no tie: fine
    tied = Sequential(Linear(4, 4, seed=0), Linear(4, 4, seed=1))
    tied[1].weight = tied[0].weight
    with pytest.raises(TypeError, match="a Parameter shared by two of its modules"):
        tied.config()


def test_numpy_scalar_arguments_make_a_json_config():
    import fusedrnn
    m = fusedrnn.LSTM(3, 4, seed=np.int64(3), proj_size=np.int64(2), peepholes=np.bool_(True))
    cfg = m.config()
    assert type(cfg["seed"]) is int and type(cfg["proj_size"]) is int
    assert type(cfg["peepholes"]) is bool
    json.dumps(cfg)


def test_a_users_class_keeps_its_name_when_the_loader_imports_the_tasks():
    """module_from_config imports the task modules for a type it does not know; a user's
    registered class with the name of one of theirs (Seq2Seq) stays the one that name means."""
    import fusedrnn.module as fm

    @register_module
    class Seq2Seq(Module):
        def __init__(self, n=3):
            super().__init__()
            self.lin = Linear(n, n, seed=0)
            self._record(n=n)

    try:
        with pytest.raises(ValueError, match="unknown module type 'NoSuchThing'"):
            module_from_config({"type": "NoSuchThing"})
        assert fm._REGISTRY["Seq2Seq"] is Seq2Seq
        assert isinstance(module_from_config(Seq2Seq(4).config()), Seq2Seq)
    finally:
        import fusedrnn.tasks.translate as tr
        fm._REGISTRY["Seq2Seq"] = tr.Seq2Seq


def test_sequential_refuses_a_module_twice():
    """A module keeps what its last forward's backward needs: Sequential(l, l) gave weight
    gradients up to 0.97 off torch's. Refused when made (two modules may share Parameters)."""
    lin = Linear(3, 3, dtype="float64", seed=0)
    with pytest.raises(ValueError, match="argument 1 is .* already in argument 0"):
        Sequential(lin, lin)
    with pytest.raises(ValueError, match="argument 2 is .* already in argument 0"):
        Sequential(Sequential(lin), Dropout(0.1), lin)
    other = Linear(3, 3, dtype="float64", seed=1)
    other.weight = lin.weight                        # tied weights: allowed
    Sequential(lin, other)


def test_train_and_eval_reach_each_childs_own_train():
    """parent.train()/eval() set the mode through every child's train() (torch's semantics):
    a single-step cell inside a model drops its recorded steps, as cell.train() does (they
    had piled up, a copy of x and a cache each)."""
    from fusedrnn import LSTMCell

    class Decoder(Module):
        def __init__(self):
            super().__init__()
            self.cell = LSTMCell(3, 4, dtype="float64", seed=0)

    m = Decoder()
    x = np.zeros((2, 3))
    s = m.cell.forward(x)
    for _ in range(3):
        s = m.cell.forward(x, s)
    assert len(m.cell._tape) == 4
    m.eval()
    assert not m.training and not m.cell.training and len(m.cell._tape) == 0
    m.train()
    assert m.training and m.cell.training


def test_linear_and_embedding_keep_copies_and_type_dy():
    """A training forward keeps a copy of Linear's x and Embedding's indices: refilling the
    caller's buffers before backward had changed the gradients (Linear 14 for 2; Embedding's
    on other rows). dy that is not an array is a TypeError (it read 'shape [2, 3], got [2, 3]')."""
    lin = Linear(2, 3, dtype="float64", seed=0)
    x = np.ones((2, 2))
    lin.forward(x)
    x[...] = 7.0
    lin.backward(np.ones((2, 3)))
    np.testing.assert_array_equal(lin.weight.grad, np.full((3, 2), 2.0))
    emb = Embedding(5, 2, dtype="float64", seed=0)
    idx = np.array([1, 2])
    emb.forward(idx)
    idx[...] = [3, 4]
    emb.backward(np.ones((2, 2)))
    assert np.array_equal(np.nonzero(emb.weight.grad.any(axis=1))[0], [1, 2])
    lin.forward(np.ones((2, 2)))
    with pytest.raises(TypeError, match="dy must be a numpy array of shape \\[2, 3\\], got list"):
        lin.backward([[1.0] * 3] * 2)
    emb.forward(idx)
    with pytest.raises(TypeError, match="dy must be a numpy array"):
        emb.backward([[1.0, 1.0]] * 2)
