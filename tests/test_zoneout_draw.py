"""Zoneout masks drawn by the kernels from a seed (zoneout_seed; issue 19's cost target): the
same as passing reference_reg.zoneout_masks' arrays, bitwise, forward and backward, LSTM and
GRU, both dtypes, threads; the masks' statistics; the layers draw from their generator."""
import numpy as np
import pytest

from fusedrnn import functional as F
from fusedrnn import reference_reg as ref
from fusedrnn import regularised as K


def _lstm(dt, T=6, N=5, C=4, H=19, seed=0, P=0):
    """P: a projection's width (w_hr [P, H] comes last; h is P wide)."""
    rng = np.random.default_rng(seed)
    r = lambda *s: (0.5 * rng.standard_normal(s)).astype(dt)  # noqa: E731
    R = P or H
    args = [r(T, N, C), r(4 * H, C), r(4 * H, R), r(4 * H), r(4 * H), r(N, R), r(N, H)]
    return args, (r(T, N, R), r(N, R), r(N, H)), (r(P, H) if P else None)


def _gru(dt, T=6, N=5, C=4, H=19, seed=0):
    rng = np.random.default_rng(seed)
    r = lambda *s: (0.5 * rng.standard_normal(s)).astype(dt)  # noqa: E731
    return [r(T, N, C), r(3 * H, C), r(3 * H, H), r(3 * H), r(3 * H), r(N, H)], \
        (r(T, N, H), r(N, H))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("lengths,reverse", [(None, False), ([6, 0, 3, 5, 1], True)])
@pytest.mark.parametrize("P", [0, 7])
def test_lstm_seeded_equals_the_reference_masks(dt, threads, lengths, reverse, P):
    """P: with a projection the h mask is drawn over [T, N, P] (the projected h), the c mask
    over [T, N, H]."""
    args, cot, w_hr = _lstm(dt, P=P)
    T, N, H = 6, 5, 19
    kw = dict(layer_norm="haste", ln_gamma_ih=np.ones(4 * H, dt), ln_gamma_hh=np.ones(4 * H, dt),
              ln_gamma_c=np.ones(H, dt), lengths=lengths, reverse=reverse)
    if P:
        kw["w_hr"] = w_hr
    seed = 2**63 + 12345
    masks = dict(zoneout_h_mask=ref.zoneout_masks(seed, (T, N, P or H), 0.3, dt, "h"),
                 zoneout_c_mask=ref.zoneout_masks(seed, (T, N, H), 0.15, dt, "c"))
    old = F._num_threads
    try:
        F.set_num_threads(threads)
        a = K.lstm_ln_forward(*args, **kw, zoneout_h=0.3, zoneout_c=0.15, zoneout_seed=seed)
        b = K.lstm_ln_forward(*args, **kw, **masks)
        ga, gb = K.lstm_ln_backward(a[-1], *cot), K.lstm_ln_backward(b[-1], *cot)
    finally:
        F._num_threads = old
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)
    for k, v in gb.items():
        if v is not None:
            np.testing.assert_array_equal(ga[k], v, err_msg=k)
    # the reference with the seed draws the same masks
    ry, *_ = ref.lstm_ln_forward(*args, **kw, zoneout_h=0.3, zoneout_c=0.15, zoneout_seed=seed)
    tol = 1e-10 if dt == np.float64 else 2e-5
    np.testing.assert_allclose(a[0], ry, rtol=tol, atol=tol)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_gru_seeded_equals_the_reference_masks(dt):
    args, cot = _gru(dt)
    T, N, H = 6, 5, 19
    seed = 7
    a = K.gru_ln_forward(*args, zoneout_h=0.25, zoneout_seed=seed, lengths=[6, 2, 0, 6, 3])
    b = K.gru_ln_forward(*args, zoneout_h_mask=ref.zoneout_masks(seed, (T, N, H), 0.25, dt),
                         lengths=[6, 2, 0, 6, 3])
    for x, y in zip(a[:2], b[:2]):
        np.testing.assert_array_equal(x, y)
    ga, gb = K.gru_ln_backward(a[-1], *cot), K.gru_ln_backward(b[-1], *cot)
    for k, v in gb.items():
        if v is not None:
            np.testing.assert_array_equal(ga[k], v, err_msg=k)


def test_mask_statistics_and_independence():
    m = ref.zoneout_masks(1, (50, 40, 50), 0.3, np.float64)
    assert abs(m.mean() - 0.3) < 0.01
    c = ref.zoneout_masks(1, (50, 40, 50), 0.3, np.float64, "c")
    assert abs((m * c).mean() - 0.09) < 0.01  # h and c masks independent
    other = ref.zoneout_masks(2, (50, 40, 50), 0.3, np.float64)
    assert abs((m * other).mean() - 0.09) < 0.01
    assert ref.zoneout_masks(1, (3, 2, 4), 0.0, np.float32).sum() == 0


def test_seed_refused_in_evaluation_and_with_masks():
    args, _ = _gru(np.float64)
    with pytest.raises(ValueError, match="zoneout_seed draws training masks"):
        K.gru_ln_forward(*args, zoneout_h=0.2, zoneout_seed=1, training=False)
    with pytest.raises(ValueError, match="zoneout_seed must be None or an integer"):
        K.gru_ln_forward(*args, zoneout_h=0.2, zoneout_seed=-1)
    with pytest.raises(ValueError, match="zoneout_h_mask must be null with zoneout_draw"):
        K.gru_ln_forward(*args, zoneout_seed=1, zoneout_h_mask=np.zeros((6, 5, 19)))
