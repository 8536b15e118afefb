"""Tests of fusedrnn.losses: values and gradients against torch (float64 to 1e-12 relative,
float32 to 1e-5), central finite differences in float64 for every variant, stability at logit
magnitude 1e4, and argument checking."""
from __future__ import annotations

import numpy as np
import pytest

from fusedrnn import losses as L

torch = pytest.importorskip("torch")
F = torch.nn.functional

T, N, K = 5, 4, 6
LENGTHS = np.array([3, 5, 0, 1])        # unsorted, includes 0 and T
RTOL = {np.float64: 1e-12, np.float32: 1e-5}
FD_RTOL = 1e-8                          # central differences, h = 1e-5, relative to max |grad|


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (absolute when b is all zero)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.max(np.abs(b)) if b.size else 0.0
    diff = np.max(np.abs(a - b)) if a.size else 0.0
    return diff / scale if scale > 0 else diff


def assert_close(a, b, rtol):
    assert np.shape(a) == np.shape(b)
    err = rel_err(a, b)
    assert err <= rtol, f"relative error {err:.3g} > {rtol:.3g}"


def make(dtype=np.float64, shape=(T, N, K), seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal(shape)).astype(dtype)
    targets = rng.integers(0, shape[-1], shape[:-1])
    return logits, targets


def lengths_mask(lengths, T_, time_axis=0):
    m = np.arange(T_)[:, None] < np.asarray(lengths)[None, :]
    return m if time_axis == 0 else m.T


def torch_ce(logits, targets, sel=None, **kw):
    """torch's loss and gradient (w.r.t. the full logits) on the selected positions."""
    z = torch.tensor(logits, requires_grad=True)
    K_ = logits.shape[-1]
    if sel is None:
        zz, tt = z.reshape(-1, K_), torch.tensor(targets).reshape(-1)
    else:
        zz, tt = z[torch.tensor(sel)], torch.tensor(targets[sel])
    loss = F.cross_entropy(zz, tt, **kw)
    (loss.sum() if kw.get("reduction") == "none" else loss).backward()
    return loss.detach().numpy(), z.grad.numpy()


def fd_grad(f, x, h=1e-5):
    """Central finite differences of the scalar f at x (float64)."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f(x)
        flat[i] = old - h
        fm = f(x)
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return g


def scalar(loss):
    return float(np.sum(loss))


# -- cross_entropy vs torch ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize("shape", [(N, K), (T, N, K)])
def test_cross_entropy_matches_torch(dtype, reduction, label_smoothing, shape):
    logits, targets = make(dtype, shape)
    loss, grad = L.cross_entropy(logits, targets, reduction=reduction,
                                 label_smoothing=label_smoothing)
    tl, tg = torch_ce(logits, targets, reduction=reduction, label_smoothing=label_smoothing)
    assert grad.dtype == dtype and grad.shape == logits.shape
    if reduction == "none":
        assert loss.dtype == dtype and loss.shape == shape[:-1]
        assert_close(loss, tl.reshape(shape[:-1]), RTOL[dtype])
    else:
        assert isinstance(loss, float)
        assert_close(loss, tl, RTOL[dtype])
    assert_close(grad, tg, RTOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_ignore_index_matches_torch(dtype, reduction, label_smoothing):
    logits, targets = make(dtype)
    targets[0, :2] = -100
    targets[3, 1] = -100
    loss, grad = L.cross_entropy(logits, targets, ignore_index=-100, reduction=reduction,
                                 label_smoothing=label_smoothing)
    tl, tg = torch_ce(logits, targets, ignore_index=-100, reduction=reduction,
                      label_smoothing=label_smoothing)
    assert_close(loss if reduction != "none" else loss.reshape(-1), tl, RTOL[dtype])
    assert_close(grad, tg, RTOL[dtype])
    # an ignore_index that is a real class
    loss, grad = L.cross_entropy(logits, np.where(targets < 0, 2, targets), ignore_index=2,
                                 reduction=reduction, label_smoothing=label_smoothing)
    tl, tg = torch_ce(logits, np.where(targets < 0, 2, targets), ignore_index=2,
                      reduction=reduction, label_smoothing=label_smoothing)
    assert_close(loss if reduction != "none" else loss.reshape(-1), tl, RTOL[dtype])
    assert_close(grad, tg, RTOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("how", ["mask_bool", "mask_float", "lengths", "lengths_batch_first"])
def test_cross_entropy_masked_matches_torch_on_selected(dtype, reduction, how):
    logits, targets = make(dtype)
    rng = np.random.default_rng(1)
    if how.startswith("mask"):
        sel = rng.random((T, N)) < 0.6
        mask = sel if how == "mask_bool" else sel.astype(dtype)
        kw = dict(mask=mask)
    else:
        time_axis = 1 if how == "lengths_batch_first" else 0
        if time_axis:
            logits, targets = logits.transpose(1, 0, 2).copy(), targets.T.copy()
        sel = lengths_mask(LENGTHS, T, time_axis)
        kw = dict(lengths=LENGTHS, time_axis=time_axis)
    targets = np.where(sel, targets, -7)           # padding targets are never looked at
    loss, grad = L.cross_entropy(logits, targets, reduction=reduction, label_smoothing=0.1,
                                 **kw)
    tl, tg = torch_ce(logits, targets, sel, reduction=reduction, label_smoothing=0.1)
    if reduction == "none":
        assert_close(loss[sel], tl, RTOL[dtype])
        assert np.all(loss[~sel] == 0)
    else:
        assert_close(loss, tl, RTOL[dtype])
    assert_close(grad, tg, RTOL[dtype])
    assert np.all(grad[~sel] == 0)


def test_cross_entropy_mask_with_ignore_index_matches_torch():
    logits, targets = make()
    sel = np.random.default_rng(2).random((T, N)) < 0.7
    targets[1, :] = 4
    loss, grad = L.cross_entropy(logits, targets, mask=sel, ignore_index=4, label_smoothing=0.3)
    tl, tg = torch_ce(logits, targets, sel, ignore_index=4, label_smoothing=0.3)
    assert_close(loss, tl, 1e-12)
    assert_close(grad, tg, 1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_stable_at_large_logits(dtype, label_smoothing):
    logits, targets = make(dtype, scale=1e4)
    loss, grad = L.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    tl, tg = torch_ce(logits, targets, label_smoothing=label_smoothing)
    assert_close(loss, tl, RTOL[dtype])
    assert_close(grad, tg, RTOL[dtype])
    per, _ = L.cross_entropy(logits, targets, reduction="none")
    assert np.all(per >= 0) and np.all(np.isfinite(per))


def test_cross_entropy_no_valid_position_gives_zero():
    logits, targets = make()
    loss, grad = L.cross_entropy(logits, targets, mask=np.zeros((T, N), bool))
    assert loss == 0.0 and not grad.any()
    loss, grad = L.cross_entropy(logits, targets, lengths=np.zeros(N, int))
    assert loss == 0.0 and not grad.any()


def test_cross_entropy_leaves_inputs_alone():
    logits, targets = make(np.float32)
    mask = np.ones((T, N), np.float32)
    before = (logits.copy(), targets.copy(), mask.copy())
    L.cross_entropy(logits, targets, mask=mask, label_smoothing=0.1)
    for a, b in zip((logits, targets, mask), before):
        assert np.array_equal(a, b)


# -- finite differences (float64) ----------------------------------------------------------------
CE_VARIANTS = {
    "plain_mean": dict(),
    "sum": dict(reduction="sum"),
    "none": dict(reduction="none"),
    "smoothing": dict(label_smoothing=0.25),
    "ignore_index": dict(ignore_index=1),
    "mask": dict(mask=np.random.default_rng(3).random((T, N)) < 0.5),
    "lengths": dict(lengths=LENGTHS),
    "lengths_none_smoothing": dict(lengths=LENGTHS, reduction="none", label_smoothing=0.1),
}


@pytest.mark.parametrize("variant", list(CE_VARIANTS))
def test_cross_entropy_finite_differences(variant):
    kw = CE_VARIANTS[variant]
    logits, targets = make(np.float64, seed=4, scale=1.0)
    _, grad = L.cross_entropy(logits, targets, **kw)
    num = fd_grad(lambda z: scalar(L.cross_entropy(z, targets, **kw)[0]), logits.copy())
    assert_close(grad, num, FD_RTOL)


def test_cross_entropy_finite_differences_batch_first():
    logits, targets = make(np.float64, shape=(N, T, K), seed=5, scale=1.0)
    kw = dict(lengths=LENGTHS, time_axis=1)
    _, grad = L.cross_entropy(logits, targets.astype(np.int32), **kw)
    num = fd_grad(lambda z: L.cross_entropy(z, targets, **kw)[0], logits.copy())
    assert_close(grad, num, FD_RTOL)


@pytest.mark.parametrize("time_axis", [0, 1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_last_finite_differences(time_axis, reduction):
    lengths = np.array([3, 5, 1, 2])
    shape = (T, N, K) if time_axis == 0 else (N, T, K)
    logits, _ = make(np.float64, shape=shape, seed=6, scale=1.0)
    targets = np.random.default_rng(7).integers(0, K, N)
    kw = dict(time_axis=time_axis, reduction=reduction, label_smoothing=0.05)
    _, grad = L.cross_entropy_last(logits, targets, lengths, **kw)
    num = fd_grad(lambda z: scalar(L.cross_entropy_last(z, targets, lengths, **kw)[0]),
                  logits.copy())
    assert_close(grad, num, FD_RTOL)


# -- last step -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_last_matches_torch(dtype, reduction):
    lengths = np.array([3, 5, 1, 2])
    logits, _ = make(dtype)
    targets = np.random.default_rng(8).integers(0, K, N)
    targets[2] = -100
    loss, grad = L.cross_entropy_last(logits, targets, lengths, reduction=reduction,
                                      ignore_index=-100)
    z = torch.tensor(logits, requires_grad=True)
    last = z[torch.tensor(lengths - 1), torch.arange(N)]
    tl = F.cross_entropy(last, torch.tensor(targets), reduction=reduction, ignore_index=-100)
    (tl.sum() if reduction == "none" else tl).backward()
    assert_close(loss, tl.detach().numpy(), RTOL[dtype])
    assert_close(grad, z.grad.numpy(), RTOL[dtype])
    assert grad.dtype == dtype and grad.shape == logits.shape


def test_cross_entropy_last_default_lengths_is_final_step():
    logits, _ = make()
    targets = np.arange(N) % K
    a = L.cross_entropy_last(logits, targets)
    b = L.cross_entropy_last(logits, targets, np.full(N, T))
    c = L.cross_entropy(logits[-1], targets)
    assert a[0] == b[0] == c[0]
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[1][-1], c[1])


@pytest.mark.parametrize("time_axis", [0, 1])
def test_last_step_and_scatter_are_adjoint(time_axis):
    rng = np.random.default_rng(9)
    lengths = np.array([2, 5, 1, 4])
    x = rng.standard_normal((T, N, 3) if time_axis == 0 else (N, T, 3))
    y = L.last_step(x, lengths, time_axis=time_axis)
    assert y.shape == (N, 3)
    for n in range(N):
        want = x[lengths[n] - 1, n] if time_axis == 0 else x[n, lengths[n] - 1]
        assert np.array_equal(y[n], want)
    d = rng.standard_normal((N, 3)).astype(np.float32)
    dx = L.scatter_last_step(d, lengths, T, time_axis=time_axis)
    assert dx.shape == x.shape and dx.dtype == np.float32
    assert np.isclose(np.sum(y * d), np.sum(x * dx), rtol=1e-6)
    assert np.count_nonzero(dx) == d.size
    # default lengths: the final step
    assert np.array_equal(L.last_step(x, time_axis=time_axis),
                          x[-1] if time_axis == 0 else x[:, -1])


# -- mse -----------------------------------------------------------------------------------------
def torch_mse(pred, target, sel=None, reduction="mean"):
    p = torch.tensor(pred, requires_grad=True)
    t = torch.tensor(target)
    if sel is not None:
        s = torch.tensor(sel)
        pp, tt = p[s], t[s]
    else:
        pp, tt = p, t
    loss = F.mse_loss(pp, tt, reduction=reduction)
    (loss.sum() if reduction == "none" else loss).backward()
    return loss.detach().numpy(), p.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("how", ["plain", "mask_full", "mask_prefix", "lengths", "lengths_bf"])
def test_mse_matches_torch(dtype, reduction, how):
    rng = np.random.default_rng(10)
    shape = (N, T, 3) if how == "lengths_bf" else (T, N, 3)
    pred = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    kw, sel = {}, None
    if how == "mask_full":
        sel = rng.random(shape) < 0.5
        kw = dict(mask=sel.astype(np.int8))
    elif how == "mask_prefix":
        sel = rng.random((T, N)) < 0.5
        kw = dict(mask=sel)
    elif how.startswith("lengths"):
        ta = 1 if how == "lengths_bf" else 0
        sel = lengths_mask(LENGTHS, T, ta)
        kw = dict(lengths=LENGTHS, time_axis=ta)
        pred[~sel] = np.nan                     # padding is never looked at
    loss, grad = L.mse(pred, target, reduction=reduction, **kw)
    tl, tg = torch_mse(np.nan_to_num(pred), target, sel, reduction)
    assert grad.dtype == dtype and grad.shape == shape
    if reduction == "none":
        assert loss.shape == shape
        assert_close(loss[sel] if sel is not None else loss, tl, RTOL[dtype])
    else:
        assert isinstance(loss, float)
        assert_close(loss, tl, RTOL[dtype])
    assert_close(grad, tg, RTOL[dtype])


@pytest.mark.parametrize("kw", [dict(), dict(reduction="sum"), dict(reduction="none"),
                                dict(mask=np.array([[1, 0, 1, 1]] * T, bool)),
                                dict(lengths=LENGTHS), dict(lengths=[2, 1, 5, 3], time_axis=0)])
def test_mse_finite_differences(kw):
    rng = np.random.default_rng(11)
    pred, target = rng.standard_normal((T, N, 2)), rng.standard_normal((T, N, 2))
    _, grad = L.mse(pred, target, **kw)
    num = fd_grad(lambda p: scalar(L.mse(p, target, **kw)[0]), pred.copy())
    assert_close(grad, num, FD_RTOL)


# -- softmax -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("scale", [1.0, 1e4])
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_log_softmax_match_torch(dtype, scale, axis):
    x, _ = make(dtype, scale=scale)
    s, ls = L.softmax(x, axis=axis), L.log_softmax(x, axis=axis)
    assert s.dtype == dtype and ls.dtype == dtype
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(ls))
    assert_close(s, torch.softmax(torch.tensor(x), dim=axis).numpy(), RTOL[dtype])
    assert_close(ls, torch.log_softmax(torch.tensor(x), dim=axis).numpy(), RTOL[dtype])


def test_softmax_over_an_empty_axis_is_empty_as_torchs():
    x = np.zeros((4, 0), np.float32)
    for f, tf in ((L.softmax, torch.softmax), (L.log_softmax, torch.log_softmax)):
        got = f(x)
        assert got.shape == (4, 0) and got.dtype == np.float32
        assert tuple(tf(torch.tensor(x), dim=-1).shape) == got.shape
        assert f(x, axis=0).shape == (4, 0)


def test_masked_arrays_are_refused():
    # a numpy masked array passed isinstance(np.ndarray) and its mask was ignored: the
    # cross-entropy read the padding too (1.75 against 1.43), mse mixed the two (0.95 vs 1.90)
    logits, targets = make()
    pad = np.ma.masked_equal(targets, targets.flat[0])
    with pytest.raises(TypeError, match=r"cross_entropy: targets is a numpy masked array.*"
                                        r"lengths= or mask="):
        L.cross_entropy(logits, pad)
    with pytest.raises(TypeError, match="cross_entropy: logits is a numpy masked array"):
        L.cross_entropy(np.ma.masked_greater(logits, 1.0), targets)
    pred = np.ones((3, 2), np.float32)
    with pytest.raises(TypeError, match="mse: pred is a numpy masked array"):
        L.mse(np.ma.masked_greater(pred, 0.5), pred)
    with pytest.raises(TypeError, match="mse: target is a numpy masked array"):
        L.mse(pred, np.ma.masked_greater(pred, 0.5))


# -- argument checking ---------------------------------------------------------------------------
def test_bad_arguments_raise():
    logits, targets = make()
    ce = L.cross_entropy
    with pytest.raises(TypeError, match="logits"):
        ce(logits.astype(np.float16), targets)
    with pytest.raises(TypeError, match="logits"):
        ce(logits.tolist(), targets)
    with pytest.raises(TypeError, match="targets"):
        ce(logits, targets.astype(np.float64))
    with pytest.raises(ValueError, match=r"targets must have shape \[5, 4\]"):
        ce(logits, targets[:, :2])
    bad = targets.copy()
    bad[0, 0], bad[2, 1] = K, -1
    with pytest.raises(ValueError, match="2 of 20 valid positions are out of range"):
        ce(logits, bad)
    # out-of-range targets at masked-out positions are fine
    ce(logits, bad, mask=(bad >= 0) & (bad < K))
    with pytest.raises(ValueError, match="mutually exclusive"):
        ce(logits, targets, mask=np.ones((T, N), bool), lengths=LENGTHS)
    with pytest.raises(ValueError, match="reduction"):
        ce(logits, targets, reduction="average")
    with pytest.raises(ValueError, match="label_smoothing"):
        ce(logits, targets, label_smoothing=1.5)
    with pytest.raises(TypeError, match="ignore_index"):
        ce(logits, targets, ignore_index=1.0)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\]"):
        ce(logits, targets, lengths=np.array([1, 2, 6, 0]))
    with pytest.raises(ValueError, match="lengths must have shape"):
        ce(logits, targets, lengths=np.array([1, 2]))
    with pytest.raises(TypeError, match="lengths"):
        ce(logits, targets, lengths=np.array([1.0, 2, 3, 4]))
    with pytest.raises(TypeError, match="lengths must hold integers, got a bool"):
        ce(logits, targets, lengths=[True, 2, 3, 4])
    with pytest.raises(ValueError, match="lengths needs 3-D logits"):
        ce(logits[0], targets[0], lengths=LENGTHS)
    with pytest.raises(ValueError, match="time_axis"):
        ce(logits, targets, lengths=LENGTHS, time_axis=2)
    with pytest.raises(ValueError, match="mask must have shape"):
        ce(logits, targets, mask=np.ones((T, N, K), bool))
    with pytest.raises(ValueError, match="only 0 and 1"):
        ce(logits, targets, mask=np.full((T, N), 0.5))
    with pytest.raises(TypeError, match="mask"):
        ce(logits, targets, mask=[[True] * N] * T)

    with pytest.raises(ValueError, match="targets must have shape"):
        L.cross_entropy_last(logits, targets)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 5\]"):
        L.cross_entropy_last(logits, targets[0], LENGTHS)      # has a 0
    with pytest.raises(ValueError, match="logits_seq must have shape"):
        L.cross_entropy_last(logits[0], targets[0])
    with pytest.raises(ValueError, match="out of range"):
        L.cross_entropy_last(logits, np.array([0, 1, 2, K]))

    pred = logits.astype(np.float32)
    with pytest.raises(TypeError, match="dtype"):
        L.mse(pred, logits)
    with pytest.raises(ValueError, match="shape"):
        L.mse(logits, logits[:2])
    with pytest.raises(ValueError, match="mask must have shape"):
        L.mse(logits, logits, mask=np.ones((N, K), bool))
    with pytest.raises(ValueError, match="mutually exclusive"):
        L.mse(logits, logits, mask=np.ones((T, N), bool), lengths=LENGTHS)
    with pytest.raises(TypeError):
        L.softmax(np.arange(3))
    with pytest.raises(ValueError, match="axis"):
        L.log_softmax(logits, axis=3)
    with pytest.raises(ValueError, match="T must be"):
        L.scatter_last_step(np.ones((N, 2)), None, 0)
