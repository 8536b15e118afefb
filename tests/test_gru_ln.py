"""The regularised / normalised GRU (issue 19): layer norm in haste's LayerNormGRU placement
(reset_after; LN on the input and the recurrent products), zoneout on h, recurrent
(variational) dropout mask. The NumPy reference (fusedrnn.reference_reg.gru_ln_*) against
finite differences; the fused kernel (fusedrnn.regularised.gru_ln_*) against the reference on
odd shapes, both dtypes; threads bitwise; bad input."""
import numpy as np
import pytest

from fusedrnn import functional as F
from fusedrnn import reference_reg as ref
from fusedrnn import regularised as K

# (layer_norm, betas, zoneout mask, zoneout probability (eval), recurrent mask, biases)
COMBOS = [
    dict(layer_norm="none"),
    dict(layer_norm="haste"),
    dict(layer_norm="haste", betas=True),
    dict(layer_norm="none", zoneout=True),
    dict(layer_norm="haste", zoneout=True, rmask=True, betas=True),
    dict(layer_norm="haste", zoneout=True, rmask=True, bias=False),
    dict(layer_norm="none", rmask=True),
    dict(layer_norm="haste", pz=True),
    dict(layer_norm="none", pz=True, rmask=True),
]


def combo_id(c):
    return "-".join(f"{k}={v}" for k, v in c.items())


def make(T, N, C, H, combo, dt, seed=0, lengths=None, reverse=False):
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s).astype(dt) * 0.5  # noqa: E731
    args = [r(T, N, C), r(3 * H, C), r(3 * H, H)]
    bias = combo.get("bias", True)
    args += [r(3 * H) if bias else None, r(3 * H) if bias else None, r(N, H)]
    kw = dict(layer_norm=combo["layer_norm"], lengths=lengths, reverse=reverse)
    if combo["layer_norm"] != "none":
        kw.update(ln_gamma_ih=(1 + r(3 * H)), ln_gamma_hh=(1 + r(3 * H)), ln_eps=1e-3)
        if combo.get("betas"):
            kw.update(ln_beta_ih=r(3 * H), ln_beta_hh=r(3 * H))
    if combo.get("zoneout"):
        kw["zoneout_h_mask"] = (rng.random((T, N, H)) < 0.3).astype(dt)
    if combo.get("pz"):
        kw.update(zoneout_h=0.25)
    if combo.get("rmask"):
        kw["recurrent_mask"] = ((rng.random((N, H)) >= 0.3) / 0.7).astype(dt)
    cot = (r(T, N, H), r(N, H))
    return args, kw, cot


def loss(args, kw, cot):
    y, h, _ = ref.gru_ln_forward(*args, **kw, training=False)
    return float(np.sum(y * cot[0]) + np.sum(h * cot[1]))


ARG_NAMES = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0"]
GRAD_OF = {"x": "dx", "w_ih": "dw_ih", "w_hh": "dw_hh", "b_ih": "db_ih", "b_hh": "db_hh",
           "h0": "dh0", "ln_gamma_ih": "dln_gamma_ih", "ln_beta_ih": "dln_beta_ih",
           "ln_gamma_hh": "dln_gamma_hh", "ln_beta_hh": "dln_beta_hh"}


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
@pytest.mark.parametrize("lengths,reverse", [(None, False), ([3, 1, 0], True), ([2, 3, 1], False)])
def test_reference_finite_differences(combo, lengths, reverse):
    T, N, C, H = 3, 3, 2, 3
    args, kw, cot = make(T, N, C, H, combo, np.float64, lengths=lengths, reverse=reverse)
    *_, cache = ref.gru_ln_forward(*args, **kw)
    g = ref.gru_ln_backward(cache, *cot)
    eps = 1e-6
    targets = [(name, args, i) for i, name in enumerate(ARG_NAMES) if args[i] is not None]
    targets += [(name, kw, name) for name in GRAD_OF if name in kw]
    assert len(targets) >= 5
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


def test_reference_plain_equals_gru_reference():
    """All options off: the plain reset-after GRU of fusedrnn.reference."""
    from fusedrnn import reference as plain
    args, kw, cot = make(4, 3, 5, 4, dict(layer_norm="none"), np.float64)
    y, h, cache = ref.gru_ln_forward(*args, **kw)
    p = plain.gru_forward(*args)
    np.testing.assert_allclose(y, p.y, rtol=1e-13, atol=1e-14)
    g = ref.gru_ln_backward(cache, *cot)
    pg = plain.gru_backward(p.cache, *cot)
    for k in ("dx", "dw_ih", "dw_hh", "db_ih", "db_hh", "dh0"):
        np.testing.assert_allclose(g[k], getattr(pg, k), rtol=1e-12, atol=1e-13, err_msg=k)


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
        y, h, rc = ref.gru_ln_forward(*args, **kw)
        rg = ref.gru_ln_backward(rc, *cot)
        ky, kh, kcache = K.gru_ln_forward(*args, **kw)
        kg = K.gru_ln_backward(kcache, *cot)
        tol = dict(rtol=1e-10, atol=1e-11) if dt == np.float64 else dict(rtol=2e-4, atol=2e-5)
        for name, a, b in (("y", ky, y), ("h_n", kh, h)):
            assert a.dtype == dt
            np.testing.assert_allclose(a, b, **tol, err_msg=name)
        assert set(kg) == set(rg)
        for name, v in rg.items():
            if v is None:
                assert kg[name] is None, name
                continue
            scale = max(1.0, float(np.abs(v).max()))
            np.testing.assert_allclose(kg[name], v, rtol=tol["rtol"],
                                       atol=tol["atol"] * scale, err_msg=name)
        iy, ih, none = K.gru_ln_forward(*args, **kw, training=False)
        assert none is None
        np.testing.assert_array_equal(iy, ky)
        np.testing.assert_array_equal(ih, kh)


@pytest.mark.parametrize("combo", [COMBOS[4], COMBOS[5]], ids=combo_id)
def test_kernel_threads_bitwise(combo):
    args, kw, cot = make(6, 9, 40, 70, combo, np.float32, seed=3, lengths=[6, 5, 0, 3, 6, 6, 1,
                                                                          2, 6])
    old = F._num_threads
    outs = []
    try:
        for n in (1, 2):
            F.set_num_threads(n)
            y, h, cache = K.gru_ln_forward(*args, **kw)
            outs.append((y, h, K.gru_ln_backward(cache, *cot)))
    finally:
        F._num_threads = old
    for a, b in zip(outs[0][:2], outs[1][:2]):
        np.testing.assert_array_equal(a, b)
    for k, v in outs[0][2].items():
        if v is not None:
            np.testing.assert_array_equal(v, outs[1][2][k], err_msg=k)


def test_zoneout_masks_of_ones_and_zeros():
    """z = 1 everywhere: the state never changes; z = 0: no zoneout."""
    T, N, H = 4, 2, 5
    args, kw, cot = make(T, N, 3, H, dict(layer_norm="haste"), np.float64)
    y0, h0, _ = K.gru_ln_forward(*args, **kw)
    y1, *_ = K.gru_ln_forward(*args, **kw, zoneout_h_mask=np.zeros((T, N, H)))
    np.testing.assert_array_equal(y0, y1)
    y2, h2, _ = K.gru_ln_forward(*args, **kw, zoneout_h_mask=np.ones((T, N, H)))
    np.testing.assert_array_equal(h2, args[5])


def test_bad_input():
    args, kw, cot = make(3, 2, 3, 4, dict(layer_norm="haste"), np.float64)
    with pytest.raises(ValueError, match="layer_norm"):
        K.gru_ln_forward(*args, **{**kw, "layer_norm": "tfa"})
    with pytest.raises(ValueError, match="zoneout_h"):
        K.gru_ln_forward(*args, **kw, zoneout_h=1.0)
    with pytest.raises(ValueError, match="zoneout_h must be 0 when its mask"):
        K.gru_ln_forward(*args, **kw, zoneout_h=0.2, zoneout_h_mask=np.zeros((3, 2, 4)))
    with pytest.raises(ValueError, match="ln_gamma_hh"):
        K.gru_ln_forward(*args, **{**kw, "ln_gamma_hh": None})
    with pytest.raises(ValueError, match="ln_eps"):
        K.gru_ln_forward(*args, **{**kw, "ln_eps": 0.0})
    with pytest.raises(ValueError, match="layer_norm is none"):
        K.gru_ln_forward(*args, ln_gamma_ih=np.ones(12))
    with pytest.raises(ValueError, match=r"w_hh must be a numpy array \[3H, H\]"):
        K.gru_ln_forward(args[0], np.ones((16, 3)), np.ones((16, 4)))
    with pytest.raises(ValueError, match="cache must come from regularised.gru_ln_forward"):
        y, h, c, cache = K.lstm_ln_forward(np.ones((2, 1, 3)), np.ones((8, 3)), np.ones((8, 2)))
        K.gru_ln_backward(cache)


def test_binding_refuses_tfa_and_lstm_keywords():
    from fusedrnn import _core
    args, kw, _ = make(2, 2, 3, 4, dict(layer_norm="none"), np.float64)
    dims = (2, 2, 3, 4)
    sizes = _core.gru_ln_sizes(dims)
    base = dict(x=args[0], w_ih=args[1], w_hh=args[2], y=np.empty((2, 2, 4)),
                h_n=np.empty((2, 4)), workspace=np.empty(sizes[1]))
    _core.gru_ln_forward(dims, **base)
    with pytest.raises(TypeError, match="unexpected keyword argument 'c_n'"):
        _core.gru_ln_forward(dims, **base, c_n=np.empty((2, 4)))
    with pytest.raises(ValueError, match="layer_norm must be none or haste"):
        _core.gru_ln_forward(dims, **base, layer_norm="tfa", ln_gamma_ih=np.ones(12),
                             ln_gamma_hh=np.ones(12))
