"""The regularised / normalised LSTM (issue 19): layer norm (haste, tfa placements), zoneout,
recurrent (variational) dropout mask. The NumPy reference (fusedrnn.reference_reg) against
finite differences; the fused kernel (fusedrnn.regularised) against the reference on odd
shapes, both dtypes; threads bitwise; bad input."""
import numpy as np
import pytest

from fusedrnn import functional as F
from fusedrnn import reference_reg as ref
from fusedrnn import regularised as K

# (layer_norm, betas, zoneout masks, zoneout probabilities (eval), recurrent mask, biases)
COMBOS = [
    dict(layer_norm="none"),
    dict(layer_norm="haste"),
    dict(layer_norm="tfa", betas=True),
    dict(layer_norm="none", zoneout=True),
    dict(layer_norm="haste", zoneout=True, rmask=True, betas=True),
    dict(layer_norm="tfa", zoneout=True, rmask=True, bias=False),
    dict(layer_norm="none", rmask=True),
    dict(layer_norm="haste", pz=True),
    dict(layer_norm="none", pz=True, rmask=True),
    # with a projection (w_hr [P, H]): zoneout and the recurrent mask on the projected h
    dict(layer_norm="haste", zoneout=True, rmask=True, betas=True, proj=True),
    dict(layer_norm="tfa", pz=True, proj=True),
    dict(layer_norm="none", zoneout=True, rmask=True, proj=True, bias=False),
]


def proj_size(combo, H):
    """P of a projected combo (0: none; a 1-unit layer cannot project)."""
    return (2 * H) // 3 if combo.get("proj") and H > 1 else 0


def combo_id(c):
    return "-".join(f"{k}={v}" for k, v in c.items())


def make(T, N, C, H, combo, dt, seed=0, lengths=None, reverse=False):
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s).astype(dt) * 0.5  # noqa: E731
    P = proj_size(combo, H)
    R = P or H
    args = [r(T, N, C), r(4 * H, C), r(4 * H, R)]
    bias = combo.get("bias", True)
    args += [r(4 * H) if bias else None, r(4 * H) if bias else None, r(N, R), r(N, H)]
    kw = dict(layer_norm=combo["layer_norm"], lengths=lengths, reverse=reverse)
    if P:
        kw["w_hr"] = r(P, H)
    if combo["layer_norm"] != "none":
        kw.update(ln_gamma_ih=(1 + r(4 * H)), ln_gamma_hh=(1 + r(4 * H)), ln_gamma_c=(1 + r(H)),
                  ln_beta_c=r(H), ln_eps=1e-3)
        if combo.get("betas"):
            kw.update(ln_beta_ih=r(4 * H), ln_beta_hh=r(4 * H))
    if combo.get("zoneout"):
        kw["zoneout_h_mask"] = (rng.random((T, N, R)) < 0.3).astype(dt)
        kw["zoneout_c_mask"] = (rng.random((T, N, H)) < 0.4).astype(dt)
    if combo.get("pz"):
        kw.update(zoneout_h=0.25, zoneout_c=0.1)
    if combo.get("rmask"):
        kw["recurrent_mask"] = ((rng.random((N, R)) >= 0.3) / 0.7).astype(dt)
    cot = (r(T, N, R), r(N, R), r(N, H))
    return args, kw, cot


def loss(args, kw, cot):
    y, h, c, _ = ref.lstm_ln_forward(*args, **kw, training=False)
    return float(np.sum(y * cot[0]) + np.sum(h * cot[1]) + np.sum(c * cot[2]))


ARG_NAMES = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0"]
GRAD_OF = {"x": "dx", "w_ih": "dw_ih", "w_hh": "dw_hh", "b_ih": "db_ih", "b_hh": "db_hh",
           "h0": "dh0", "c0": "dc0", "ln_gamma_ih": "dln_gamma_ih", "ln_beta_ih": "dln_beta_ih",
           "ln_gamma_hh": "dln_gamma_hh", "ln_beta_hh": "dln_beta_hh",
           "ln_gamma_c": "dln_gamma_c", "ln_beta_c": "dln_beta_c", "w_hr": "dw_hr"}


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
@pytest.mark.parametrize("lengths,reverse", [(None, False), ([3, 1, 0], True), ([2, 3, 1], False)])
def test_reference_finite_differences(combo, lengths, reverse):
    T, N, C, H = 3, 3, 2, 3
    args, kw, cot = make(T, N, C, H, combo, np.float64, lengths=lengths, reverse=reverse)
    *_, cache = ref.lstm_ln_forward(*args, **kw)
    g = ref.lstm_ln_backward(cache, *cot)
    eps = 1e-6
    targets = [(name, args, i) for i, name in enumerate(ARG_NAMES) if args[i] is not None]
    targets += [(name, kw, name) for name in GRAD_OF if name in kw]
    for name, holder, key in targets:
        a = holder[key]
        num = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + eps
            lp = loss(args, kw, cot)
            a[idx] = old - eps
            lm = loss(args, kw, cot)
            a[idx] = old
            num[idx] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(g[GRAD_OF[name]], num, rtol=1e-6, atol=1e-8, err_msg=name)


def test_reference_plain_equals_lstm_reference():
    """All options off: the plain LSTM of fusedrnn.reference."""
    from fusedrnn import reference as plain
    args, kw, cot = make(4, 3, 5, 4, dict(layer_norm="none"), np.float64)
    y, h, c, cache = ref.lstm_ln_forward(*args, **kw)
    p = plain.lstm_forward(*args)
    np.testing.assert_allclose(y, p.y, rtol=1e-13, atol=1e-14)
    g = ref.lstm_ln_backward(cache, *cot)
    pg = plain.lstm_backward(p.cache, *cot)
    np.testing.assert_allclose(g["dw_hh"], pg.dw_hh, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(g["dx"], pg.dx, rtol=1e-12, atol=1e-13)


SHAPES = [(1, 1, 1, 1), (5, 3, 7, 5), (4, 2, 3, 17), (3, 5, 9, 33)]


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_kernel_matches_reference(combo, shape, dt):
    T, N, C, H = shape
    lengths = None if N < 3 else [T, 0, max(T - 2, 1)] + [T] * (N - 3)
    for reverse in (False, True):
        args, kw, cot = make(T, N, C, H, combo, dt, seed=sum(shape), lengths=lengths,
                             reverse=reverse)
        y, h, c, rc = ref.lstm_ln_forward(*args, **kw)
        rg = ref.lstm_ln_backward(rc, *cot)
        ky, kh, kc, kcache = K.lstm_ln_forward(*args, **kw)
        kg = K.lstm_ln_backward(kcache, *cot)
        tol = dict(rtol=1e-10, atol=1e-11) if dt == np.float64 else dict(rtol=2e-4, atol=2e-5)
        for name, a, b in (("y", ky, y), ("h_n", kh, h), ("c_n", kc, c)):
            assert a.dtype == dt
            np.testing.assert_allclose(a, b, **tol, err_msg=name)
        for name, v in rg.items():
            if v is None:
                assert kg[name] is None, name
                continue
            scale = max(1.0, float(np.abs(v).max()))
            np.testing.assert_allclose(kg[name], v, rtol=tol["rtol"],
                                       atol=tol["atol"] * scale, err_msg=name)
        # inference equals the training forward
        iy, ih, ic, none = K.lstm_ln_forward(*args, **kw, training=False)
        assert none is None
        np.testing.assert_array_equal(iy, ky)
        np.testing.assert_array_equal(ic, kc)


@pytest.mark.parametrize("combo", [COMBOS[4], COMBOS[5], COMBOS[9]], ids=combo_id)
def test_kernel_threads_bitwise(combo):
    args, kw, cot = make(6, 9, 40, 70, combo, np.float32, seed=3, lengths=[6, 5, 0, 3, 6, 6, 1,
                                                                          2, 6])
    old = F._num_threads
    outs = []
    try:
        for n in (1, 2):
            F.set_num_threads(n)
            y, h, c, cache = K.lstm_ln_forward(*args, **kw)
            outs.append((y, h, c, K.lstm_ln_backward(cache, *cot)))
    finally:
        F._num_threads = old
    for a, b in zip(outs[0][:3], outs[1][:3]):
        np.testing.assert_array_equal(a, b)
    for k, v in outs[0][3].items():
        if v is not None:
            np.testing.assert_array_equal(v, outs[1][3][k], err_msg=k)


def test_zoneout_masks_of_ones_and_zeros():
    """z = 1 everywhere: the state never changes; z = 0: no zoneout."""
    args, kw, cot = make(4, 2, 3, 5, dict(layer_norm="haste"), np.float64)
    T, N, H = 4, 2, 5
    y0, h0, c0, _ = K.lstm_ln_forward(*args, **kw)
    y1, *_ = K.lstm_ln_forward(*args, **kw, zoneout_h_mask=np.zeros((T, N, H)),
                               zoneout_c_mask=np.zeros((T, N, H)))
    np.testing.assert_array_equal(y0, y1)
    y2, h2, c2, _ = K.lstm_ln_forward(*args, **kw, zoneout_h_mask=np.ones((T, N, H)),
                                      zoneout_c_mask=np.ones((T, N, H)))
    np.testing.assert_array_equal(h2, args[5])
    np.testing.assert_array_equal(c2, args[6])


def test_bad_input():
    args, kw, cot = make(3, 2, 3, 4, dict(layer_norm="haste"), np.float64)
    with pytest.raises(ValueError, match="layer_norm"):
        K.lstm_ln_forward(*args, **{**kw, "layer_norm": "batch"})
    with pytest.raises(ValueError, match="zoneout_h"):
        K.lstm_ln_forward(*args, **kw, zoneout_h=1.0)
    with pytest.raises(ValueError, match="zoneout_c"):
        K.lstm_ln_forward(*args, **kw, zoneout_c=-0.1)
    with pytest.raises(ValueError, match="zoneout_h must be 0 when its mask"):
        K.lstm_ln_forward(*args, **kw, zoneout_h=0.2, zoneout_h_mask=np.zeros((3, 2, 4)))
    with pytest.raises(ValueError, match="ln_gamma_c"):
        K.lstm_ln_forward(*args, **{**kw, "ln_gamma_c": None})
    with pytest.raises(ValueError, match="ln_eps"):
        K.lstm_ln_forward(*args, **{**kw, "ln_eps": 0.0})
    with pytest.raises(ValueError, match="layer_norm is none"):
        K.lstm_ln_forward(*args, ln_gamma_c=np.ones(4))
    with pytest.raises(ValueError, match="recurrent_mask must have shape"):
        K.lstm_ln_forward(*args, **kw, recurrent_mask=np.ones((2, 5)))
    with pytest.raises(TypeError, match="zoneout_h_mask must have dtype"):
        K.lstm_ln_forward(*args, **kw, zoneout_h_mask=np.zeros((3, 2, 4), np.float32))
    with pytest.raises(ValueError, match="cache"):
        K.lstm_ln_backward(None)
    # flags are bools (a string "False" had run reversed), arrays are never copied silently
    for flag in ("reverse", "training"):
        with pytest.raises(TypeError, match=f"{flag} must be a bool"):
            K.lstm_ln_forward(*args, **{**kw, flag: "False"})
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        K.lstm_ln_forward(np.asfortranarray(args[0]), *args[1:], **kw)
    with pytest.raises(ValueError, match="w_ih must be C-contiguous"):
        K.lstm_ln_forward(args[0], np.asfortranarray(args[1]), *args[2:], **kw)
    with pytest.raises(TypeError, match="lengths must have an integer dtype"):
        K.lstm_ln_forward(*args, **{**kw, "lengths": np.array([1.0, 2.0])})
    y, h, c, cache = K.lstm_ln_forward(*args, **kw)
    assert cache.args["x"] is args[0] and cache.args["w_ih"] is args[1]


def test_projection_bad_input():
    """w_hr is checked as the plain LSTM's (type, dtype, P < H), then w_hh [4H, P], by name."""
    x = np.zeros((2, 1, 3), np.float32)
    w_ih, w_hh = np.zeros((16, 3), np.float32), np.zeros((16, 2), np.float32)
    for w_hr, match in ((np.zeros((4, 4), np.float32), r"w_hr must have shape \[P, H\] with P < H"),
                        (np.zeros((2, 4)), "w_hr must have dtype float32"),
                        ([[0.0] * 4] * 2, "w_hr must be a numpy array")):
        with pytest.raises((ValueError, TypeError), match=match):
            K.lstm_ln_forward(x, w_ih, w_hh, w_hr=w_hr)
    with pytest.raises(ValueError, match=r"w_hh must have shape \[16, 2\]"):
        K.lstm_ln_forward(x, w_ih, np.zeros((16, 4), np.float32),
                          w_hr=np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"h0 must have shape \[1, 2\]"):
        K.lstm_ln_forward(x, w_ih, w_hh, h0=np.zeros((1, 4), np.float32),
                          w_hr=np.zeros((2, 4), np.float32))


def test_binding_keywords_are_checked_by_name():
    from fusedrnn import _core
    args, kw, _ = make(2, 2, 3, 4, dict(layer_norm="none"), np.float64)
    dims = (2, 2, 3, 4)
    sizes = _core.lstm_ln_sizes(dims)
    base = dict(x=args[0], w_ih=args[1], w_hh=args[2], y=np.empty((2, 2, 4)),
                h_n=np.empty((2, 4)), c_n=np.empty((2, 4)), workspace=np.empty(sizes[1]))
    _core.lstm_ln_forward(dims, **base)
    with pytest.raises(TypeError, match="unexpected keyword argument 'zoneout_hmask'"):
        _core.lstm_ln_forward(dims, **base, zoneout_hmask=None)
    with pytest.raises(TypeError, match="weights_packed"):
        _core.lstm_ln_forward(dims, **base, weights_packed=True)
    with pytest.raises(TypeError, match="missing required keyword argument 'w_hh'"):
        _core.lstm_ln_forward(dims, **{k: v for k, v in base.items() if k != "w_hh"})
