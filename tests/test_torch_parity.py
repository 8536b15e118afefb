"""Parity of fusedrnn (kernels and NumPy reference) with PyTorch's nn.LSTM / nn.GRU / nn.RNN.

Torch always runs in float64 and is the ground truth.  For the float32 cases every input and
weight is first rounded to float32, so torch sees exactly the values our float32 code sees.
"lstm_proj" is nn.LSTM(proj_size=P): weight_hr_l0[_reverse] [P, H] is our w_hr, and h0, h_n,
y and weight_hh have P units.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

T, N, C, H = 5, 3, 7, 5
LENGTHS = [3, T, 1]                     # unsorted, includes T, all >= 1 (torch packing rejects 0)
TOL = {np.float64: 1e-10, np.float32: 1e-4}
P = 3                                   # proj_size of "lstm_proj" (torch needs 0 < P < H)

# name -> (torch module, torch kwargs, our function prefix, our forward kwargs, has cell state)
CELLS = {
    "lstm": (torch.nn.LSTM, {}, "lstm", {}, True),
    "lstm_proj": (torch.nn.LSTM, {"proj_size": P}, "lstm", {}, True),
    "gru": (torch.nn.GRU, {}, "gru", {"variant": "reset_after"}, False),
    "rnn_tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}, "rnn", {"nonlinearity": "tanh"}, False),
    "rnn_relu": (torch.nn.RNN, {"nonlinearity": "relu"}, "rnn", {"nonlinearity": "relu"}, False),
}
MODES = {  # name -> (lengths, reverse)
    "plain": (False, False),
    "lengths": (True, False),
    "reverse": (False, True),
    "reverse_lengths": (True, True),
}


@pytest.fixture(params=["reference", "kernels"])
def impl(request):
    if request.param == "reference":
        return importlib.import_module("fusedrnn.reference")
    fusedrnn = importlib.import_module("fusedrnn")
    if not hasattr(fusedrnn, "lstm_forward"):
        pytest.skip("compiled fusedrnn kernels not available")
    return fusedrnn


# ----------------------------------------------------------------------------- helpers

def check(name, got, want, dtype):
    """Compare our array with torch's float64 one; error is relative to max(1, max|want|)."""
    assert got is not None, f"{name}: got None, expected an array of shape {want.shape}"
    assert isinstance(got, np.ndarray), f"{name}: got {type(got).__name__}, expected ndarray"
    assert got.shape == want.shape, f"{name}: shape {got.shape} != torch {want.shape}"
    assert got.dtype == dtype, f"{name}: dtype {got.dtype} != {np.dtype(dtype)}"
    diff = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
    peak = float(np.max(np.abs(want))) if want.size else 0.0
    tol = TOL[dtype] * max(1.0, peak)
    assert diff <= tol, (
        f"{name}: max |ours - torch| = {diff:.3e} > tol {tol:.1e} (max |torch| = {peak:.3g})")


class Case:
    """One random problem: torch module + inputs, with numpy views in the requested dtype."""

    def __init__(self, cell, dtype, bias, state, lengths, reverse, seed=0):
        mod_cls, mod_kw, self.prefix, self.fwd_kw, self.has_c = CELLS[cell]
        self.dtype, self.bias, self.state, self.reverse = dtype, bias, state, reverse
        self.P = mod_kw.get("proj_size", 0)
        R = self.R = self.P or H                       # width of h and y
        self.lengths = np.array(LENGTHS, dtype=np.int64) if lengths else None
        g = torch.Generator().manual_seed(seed)
        self.mod = mod_cls(C, H, bias=bias, bidirectional=reverse, dtype=torch.float64, **mod_kw)
        k = 1.0 / np.sqrt(H)
        with torch.no_grad():
            for p in self.mod.parameters():
                p.uniform_(-2 * k, 2 * k, generator=g)   # a bit wider than default: more nonlinearity
                p.copy_(self._round(p))

        def rnd(*shape):
            return self._round(torch.randn(*shape, generator=g, dtype=torch.float64))

        ndir = 2 if reverse else 1
        self.x = rnd(T, N, C)
        self.h0 = rnd(ndir, N, R) if state else None
        self.c0 = rnd(ndir, N, H) if state and self.has_c else None
        self.dy, self.dh_n, self.dc_n = rnd(T, N, R), rnd(N, R), rnd(N, H)

    def _round(self, t):
        return t.to(torch.float32).to(torch.float64) if self.dtype == np.float32 else t

    def np(self, t):
        return None if t is None else np.ascontiguousarray(t.detach().numpy(), dtype=self.dtype)

    def param(self, kind):  # kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
        return getattr(self.mod, f"{kind}_l0" + ("_reverse" if self.reverse else ""), None)

    # ---- torch side
    def run_torch(self, use_dy=True, use_state_grads=True):
        d = 1 if self.reverse else 0  # direction whose results we compare
        x = self.x.clone().requires_grad_(True)
        h0 = None if self.h0 is None else self.h0.clone().requires_grad_(True)
        c0 = None if self.c0 is None else self.c0.clone().requires_grad_(True)
        hx = (h0, c0) if self.has_c and h0 is not None else h0
        self.mod.zero_grad(set_to_none=True)
        if self.lengths is not None:
            packed = pack_padded_sequence(x, torch.from_numpy(self.lengths), enforce_sorted=False)
            out, hn = self.mod(packed, hx)
            y, _ = pad_packed_sequence(out, total_length=T)
        else:
            y, hn = self.mod(x, hx)
        hn, cn = hn if self.has_c else (hn, None)
        R = self.R
        y, h_n, c_n = y[..., d * R:(d + 1) * R], hn[d], None if cn is None else cn[d]
        loss = y.new_zeros(())
        if use_dy:
            loss = loss + (y * self.dy).sum()
        if use_state_grads:
            loss = loss + (h_n * self.dh_n).sum()
            if self.has_c:
                loss = loss + (c_n * self.dc_n).sum()
        loss.backward()
        out = {"y": y, "h_n": h_n, "c_n": c_n, "dx": x.grad,
               "dh0": None if h0 is None else h0.grad[d],
               "dc0": None if c0 is None else c0.grad[d]}
        for ours, kind in (("dw_ih", "weight_ih"), ("dw_hh", "weight_hh"),
                           ("db_ih", "bias_ih"), ("db_hh", "bias_hh"), ("dw_hr", "weight_hr")):
            p = self.param(kind)
            out[ours] = None if p is None else p.grad
        return {k: None if v is None else v.detach().numpy() for k, v in out.items()}

    # ---- our side
    def run_ours(self, impl, training=True):
        d = 1 if self.reverse else 0
        args = [self.np(self.x)] + [self.np(self.param(k)) for k in
                                    ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        args.append(None if self.h0 is None else self.np(self.h0[d]))
        if self.has_c:
            args.append(None if self.c0 is None else self.np(self.c0[d]))
        fwd = getattr(impl, f"{self.prefix}_forward")
        kw = dict(self.fwd_kw)
        if self.P:
            kw["w_hr"] = self.np(self.param("weight_hr"))
        return fwd(*args, lengths=self.lengths, reverse=self.reverse, training=training, **kw)

    def backward_ours(self, impl, cache, use_dy=True, use_state_grads=True):
        kw = {"dy": self.np(self.dy) if use_dy else None}
        if use_state_grads:
            kw["dh_n"] = self.np(self.dh_n)
            if self.has_c:
                kw["dc_n"] = self.np(self.dc_n)
        return getattr(impl, f"{self.prefix}_backward")(cache, **kw)


def compare(case, ours, want, fields):
    for f in fields:
        if want[f] is None:
            assert getattr(ours, f) is None, f"{f}: expected None, got {type(getattr(ours, f))}"
        else:
            check(f, getattr(ours, f), want[f], case.dtype)


def fwd_fields(case):
    return ("y", "h_n", "c_n") if case.has_c else ("y", "h_n")


def grad_fields(case):
    base = ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh")
    return base + ("dc0", "dw_hr") if case.has_c else base


def run_parity(impl, case):
    want = case.run_torch()
    out = case.run_ours(impl)
    compare(case, out, want, fwd_fields(case))
    grads = case.backward_ours(impl, out.cache)
    compare(case, grads, want, grad_fields(case))
    if case.has_c:
        assert grads.dw_peep is None, "dw_peep: expected None without peepholes"


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("state", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_parity_f64(impl, cell, bias, state, mode):
    run_parity(impl, Case(cell, np.float64, bias, state, *MODES[mode]))


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("cell", list(CELLS))
def test_parity_f32(impl, cell, mode):
    run_parity(impl, Case(cell, np.float32, True, True, *MODES[mode], seed=1))


@pytest.mark.parametrize("which", ["dy_only", "state_only"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_partial_cotangents(impl, cell, which):
    """Backward with only dy, or only the final-state cotangents (the others None)."""
    case = Case(cell, np.float64, True, True, lengths=True, reverse=False, seed=2)
    use_dy, use_state = which == "dy_only", which == "state_only"
    want = case.run_torch(use_dy=use_dy, use_state_grads=use_state)
    grads = case.backward_ours(impl, case.run_ours(impl).cache, use_dy, use_state)
    compare(case, grads, want, grad_fields(case))


@pytest.mark.parametrize("mode", ["plain", "reverse_lengths"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_inference_forward(impl, cell, mode):
    """training=False gives torch's outputs and no cache."""
    case = Case(cell, np.float64, True, True, *MODES[mode], seed=3)
    want = case.run_torch()
    out = case.run_ours(impl, training=False)
    compare(case, out, want, fwd_fields(case))
    assert out.cache is None, "cache: expected None with training=False"
