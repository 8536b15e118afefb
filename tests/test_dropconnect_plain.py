"""DropConnect (weight_drop) and the shared input_dropout on the plain kernels (issue 19 with
issue 17): a layer whose only issue-19 options are these runs its training calls on the plain
LSTM / GRU kernels with w_hh times its mask and x times its mask (at any compute precision, bf16
mixed-precision training included), and its eval-mode / frozen calls on the plain kernels too
(the dropout options are off there), so frozen(precision="bfloat16" | "int8") works. Layer norm,
zoneout, recurrent_dropout and per-gate masks still need the float32 regularised kernel, and
asking for bf16 with them is a ValueError naming them, raised before any work."""
import copy
import json

import numpy as np
import pytest

from fusedrnn.cli import main
from fusedrnn.layers import GRU, LSTM, _keep_mask
from fusedrnn.models import RecurrentModel, freeze, set_compute

T, N, C, H = 7, 5, 6, 9
PLAIN = [dict(weight_drop=0.3), dict(input_dropout=0.25),
         dict(weight_drop=0.3, input_dropout=0.25)]


def _zero_grads(m):
    for p in m.parameters():
        p.grad[...] = 0


def _step(m, x, dy):
    m.train()
    _zero_grads(m)
    y, _ = m.forward(x)
    dx = m.backward(dy)
    return y, dx, {k: p.grad.copy() for k, p in m.named_parameters()}


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("kw", PLAIN)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_plain_route_equals_the_regularised_kernel(cls, kw, dtype):
    """The same masks through the plain kernels and through the regularised kernel (forced):
    outputs, dx and every gradient agree to rounding (the kernels differ in their sums only)."""
    rng = np.random.default_rng(1)
    a = cls(C, H, num_layers=2, bidirectional=True, seed=3, dtype=dtype, **kw)
    b = copy.deepcopy(a)
    b._plain = lambda training: False  # the regularised kernel, as before this route existed
    x = rng.standard_normal((T, N, C)).astype(dtype)
    dy = rng.standard_normal((T, N, 2 * H)).astype(dtype)
    ya, dxa, ga = _step(a, x, dy)
    yb, dxb, gb = _step(b, x, dy)
    tol = 1e-12 if dtype == "float64" else 2e-5
    np.testing.assert_allclose(ya, yb, rtol=tol, atol=tol)
    np.testing.assert_allclose(dxa, dxb, rtol=tol, atol=tol)
    for k in ga:
        np.testing.assert_allclose(ga[k], gb[k], rtol=tol, atol=tol, err_msg=k)
    # the masks really act: without them the step differs
    c = cls(C, H, num_layers=2, bidirectional=True, seed=3, dtype=dtype)
    yc, _, _ = _step(c, x, dy)
    assert np.abs(yc - ya).max() > 1e-3


# the plain-kernel options of each cell the regularised kernel lacks
CONFIGS = [(LSTM, {}), (GRU, {}),
           (LSTM, dict(proj_size=4, peepholes=True, cell_clip=0.8)),
           (GRU, dict(variant="reset_before"))]


@pytest.mark.parametrize("cls,extra", CONFIGS)
@pytest.mark.parametrize("kw", PLAIN)
@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
def test_dropconnect_trains_as_the_plain_step_on_masked_operands(cls, extra, kw, compute):
    """weight_drop / input_dropout, in float32 or with compute="bfloat16", also with projection,
    peepholes, cell_clip or the reset-before GRU: bit for bit the plain layer given w_hh * mask
    and x * mask; the masked gradients follow by the chain rule."""
    rng = np.random.default_rng(2)
    a = cls(C, H, seed=4, **extra, **kw)
    a.compute = compute
    draw = copy.deepcopy(a._drop_rng)  # the masks the forward will draw, in its order
    w_shape = a.weight_hh_l0.data.shape
    xmask = _keep_mask(draw, (N, C), kw["input_dropout"], np.dtype(np.float32)) \
        if "input_dropout" in kw else np.ones((N, C), np.float32)
    wmask = _keep_mask(draw, w_shape, kw["weight_drop"], np.dtype(np.float32)) \
        if "weight_drop" in kw else np.ones(w_shape, np.float32)
    b = cls(C, H, seed=4, **extra)
    b.compute = compute
    b.weight_hh_l0.data[...] = a.weight_hh_l0.data * wmask
    x = rng.standard_normal((T, N, C)).astype(np.float32)
    dy = rng.standard_normal((T, N, a.state_size)).astype(np.float32)
    ya, dxa, ga = _step(a, x, dy)
    yb, dxb, gb = _step(b, x * xmask, dy)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(dxa, dxb * xmask)
    np.testing.assert_array_equal(ga["weight_hh_l0"], gb["weight_hh_l0"] * wmask)
    for k in ga:
        if k != "weight_hh_l0":
            np.testing.assert_array_equal(ga[k], gb[k], err_msg=k)
    # the masks act, and the bf16 step is not the float32 one
    f = cls(C, H, seed=4, **extra)
    yf, _, _ = _step(f, x, dy)
    assert np.abs(yf - ya).max() > 1e-3
    if compute == "bfloat16":
        f.weight_hh_l0.data[...] = b.weight_hh_l0.data
        yf, _, _ = _step(f, x * xmask, dy)
        assert np.abs(yf - ya).max() > 0


@pytest.mark.parametrize("cls", [LSTM, GRU])
@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_frozen_low_precision_of_a_dropout_layer_is_the_plain_one(cls, precision):
    """In eval mode the dropout options are off: the frozen low-precision copy of a layer with
    weight_drop, input_dropout and recurrent_dropout equals that of the plain layer."""
    x = np.random.default_rng(3).standard_normal((T, N, C)).astype(np.float32)
    a = cls(C, H, num_layers=2, seed=5, weight_drop=0.4, input_dropout=0.2,
            recurrent_dropout=0.3)
    b = cls(C, H, num_layers=2, seed=5)
    np.testing.assert_array_equal(a.frozen(precision).forward(x)[0],
                                  b.frozen(precision).forward(x)[0])
    a.eval(), b.eval()
    np.testing.assert_array_equal(a.forward(x)[0], b.forward(x)[0])


@pytest.mark.parametrize("kw, named", [
    (dict(layer_norm="haste"), "layer_norm"), (dict(zoneout_h=0.1), "zoneout_h"),
    (dict(recurrent_dropout=0.2), "recurrent_dropout"),
    (dict(input_dropout=0.2, dropout_masks="per_gate"), "per_gate"),
    (dict(recurrent_dropout=0.2, weight_drop=0.3), "recurrent_dropout")])
def test_bf16_compute_refuses_the_regularised_kernel_options_by_name(kw, named):
    for cls in (LSTM, GRU):
        m = cls(C, H, seed=0, **kw)
        with pytest.raises(ValueError, match=named):
            m.compute = "bfloat16"
        assert m.compute == "float32"
        model = RecurrentModel(cls.__name__.lower(), vocab_size=5, hidden_size=H,
                               output_size=5, seed=0, **kw)
        with pytest.raises(ValueError, match=f"precision=bfloat16 is not available with.*{named}"):
            set_compute(model, "bfloat16")
        assert model.rnn.compute == "float32"


@pytest.mark.parametrize("kw, named", [(dict(layer_norm="haste"), "layer_norm"),
                                       (dict(zoneout_h=0.1), "zoneout_h")])
def test_low_precision_freeze_refuses_layer_norm_and_zoneout_before_any_call(kw, named):
    for cls in (LSTM, GRU):
        m = cls(C, H, seed=0, **kw)
        for precision in ("bfloat16", "int8"):
            with pytest.raises(ValueError, match=named):
                m.frozen(precision)
            with pytest.raises(ValueError, match=named):
                freeze(RecurrentModel(cls.__name__.lower(), vocab_size=5, hidden_size=H,
                                      output_size=5, seed=0, **kw), precision)
        assert m.frozen("float32").forward(np.zeros((2, 1, C), np.float32))[0].shape == (2, 1, H)


def test_cli_trains_weight_drop_in_bf16(tmp_path):
    out = tmp_path / "wd"
    argv = ["train", "--task", "classify", "--min-length", "8", "--max-length", "12", "--hidden",
            "8", "--batch-size", "8", "-q", "--steps", "3", "--eval-every", "3",
            "--cell", "gru", "--weight-drop", "0.2", "--input-dropout", "0.1",
            "--precision", "bf16", "--out", str(out)]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["precision"] == "bfloat16"
    assert np.isfinite(m["history"][-1]["train_loss"])


# -- fusedrnn.torch modules ------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("kw", PLAIN)
def test_torch_module_plain_route_equals_the_regularised_kernel(mode, kw):
    """fusedrnn.torch: the same torch-RNG masks through the plain kernels (torch products on
    x and w_hh, autograd through them) and through the regularised kernel (forced)."""
    torch = pytest.importorskip("torch")
    import fusedrnn.torch as frt
    a = getattr(frt, mode)(C, H, num_layers=2, bidirectional=True, **kw).double()
    b = copy.deepcopy(a)
    b._needs_regularised_kernel = lambda: True
    x = torch.randn(T, N, C, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    torch.manual_seed(5)
    ya, _ = a(xa)
    (ya * torch.arange(ya.numel(), dtype=ya.dtype).reshape(ya.shape).sin()).sum().backward()
    torch.manual_seed(5)
    yb, _ = b(xb)
    (yb * torch.arange(yb.numel(), dtype=yb.dtype).reshape(yb.shape).sin()).sum().backward()
    torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-12, atol=1e-12)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-12, msg=n)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_torch_module_low_precision_with_dropouts_and_layer_norm(mode):
    """Eval mode: a dropout-only module under autocast / in bfloat16 runs the bf16 kernels, bit
    for bit the plain module's; with layer norm, autocast runs it in float32 (float32 out, as
    torch's autocast does for an op without a bf16 path) and bfloat16 parameters raise."""
    torch = pytest.importorskip("torch")
    import fusedrnn.torch as frt
    cls = getattr(frt, mode)
    torch.manual_seed(0)
    plain = cls(C, H, num_layers=2).eval()
    drop = cls(C, H, num_layers=2, weight_drop=0.3, input_dropout=0.2,
               recurrent_dropout=0.25).eval()
    drop.load_state_dict(plain.state_dict())
    x = torch.randn(T, N, C)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ya, yb = plain(x)[0], drop(x)[0]
    assert ya.dtype == yb.dtype == (torch.float32 if mode == "GRU" else torch.bfloat16)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    with torch.no_grad():
        y16 = copy.deepcopy(drop).to(torch.bfloat16)(x.bfloat16())[0]
        torch.testing.assert_close(y16, copy.deepcopy(plain).to(torch.bfloat16)(
            x.bfloat16())[0], rtol=0, atol=0)
    ln = cls(C, H, layer_norm="haste").eval()
    with torch.no_grad():
        ref = ln(x)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = ln(x)[0]
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, ref, rtol=0, atol=0)
        with pytest.raises(ValueError, match="no path for layer_norm"):
            copy.deepcopy(ln).to(torch.bfloat16)(x.bfloat16())


@pytest.mark.parametrize("mode,extra", [("LSTM", dict(proj_size=4)),
                                        ("GRU", dict(variant="reset_before"))])
def test_torch_module_dropconnect_with_projection_and_reset_before(mode, extra):
    """fusedrnn.torch: weight_drop now combines with proj_size and the reset-before GRU (plain
    kernels): the same as the same module given w_hh times the mask torch's RNG draws."""
    torch = pytest.importorskip("torch")
    import fusedrnn.torch as frt
    from fusedrnn.torch import _keep
    cls = getattr(frt, mode)
    torch.manual_seed(0)
    a = cls(C, H, weight_drop=0.3, **extra).double()
    b = cls(C, H, **extra).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(T, N, C, dtype=torch.float64)
    torch.manual_seed(7)
    ya, _ = a(x)
    torch.manual_seed(7)
    mask = _keep(tuple(a.weight_hh_l0.shape), 0.3, torch.float64)
    with torch.no_grad():
        b.weight_hh_l0.mul_(mask)
    yb, _ = b(x)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    # eval mode: no mask, the plain module with the same weights
    c = cls(C, H, **extra).double().eval()
    c.load_state_dict(a.state_dict())
    a.eval()
    torch.testing.assert_close(a(x)[0], c(x)[0], rtol=0, atol=0)
    assert (a(x)[0] - ya).abs().max() > 1e-3
