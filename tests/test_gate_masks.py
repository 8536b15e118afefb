"""Per-gate dropout masks (issue 19, Keras 3's recurrent_dropout semantics): with gate_masks the
recurrent mask is [G, N, H] and the input mask [G, N, C], one per gate block, and the products
are per block, (x∘m_k) W_ih,kᵀ and (h∘r_k) W_hh,kᵀ. The NumPy reference against finite
differences (float64); the fused kernels against the reference on odd shapes, both dtypes,
lengths and reverse; threads bitwise; a NumPy transcription of Keras 3's LSTMCell / GRUCell
(implementation 1, which recurrent_dropout forces) against the kernels; the real Keras layers
with the same masks injected (skipped without keras); layer option and bad input."""
import os

import numpy as np
import pytest

from fusedrnn import functional as F
from fusedrnn import reference_reg as ref
from fusedrnn import regularised as K

CELLS = {"lstm": (4, ref.lstm_ln_forward, ref.lstm_ln_backward, K.lstm_ln_forward,
                  K.lstm_ln_backward),
         "gru": (3, ref.gru_ln_forward, ref.gru_ln_backward, K.gru_ln_forward,
                 K.gru_ln_backward)}
CASES = [("lstm", "none"), ("lstm", "haste"), ("lstm", "tfa"), ("gru", "none"), ("gru", "haste")]


def keep(rng, shape, p, dt):
    return ((rng.random(shape) >= p) / (1 - p)).astype(dt)


def make(cell, layer_norm, T, N, C, H, dt, seed=0, rmask=True, xmask=True, zoneout=False,
         lengths=None, reverse=False, proj=0):
    """proj: the LSTM's projection P (w_hr [P, H]; h, its masks and cotangents P wide)."""
    G = CELLS[cell][0]
    R = proj or H
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s).astype(dt) * 0.5  # noqa: E731
    args = [r(T, N, C), r(G * H, C), r(G * H, R), r(G * H), r(G * H), r(N, R)]
    if cell == "lstm":
        args.append(r(N, H))
    kw = dict(layer_norm=layer_norm, lengths=lengths, reverse=reverse, gate_masks=True)
    if proj:
        kw["w_hr"] = r(proj, H)
    if layer_norm != "none":
        kw.update(ln_gamma_ih=1 + r(G * H), ln_gamma_hh=1 + r(G * H), ln_eps=1e-3)
        if cell == "lstm":
            kw.update(ln_gamma_c=1 + r(H), ln_beta_c=r(H))
        if layer_norm == "tfa":
            kw.update(ln_beta_ih=r(G * H), ln_beta_hh=r(G * H))
    if rmask:
        kw["recurrent_mask"] = keep(rng, (G, N, R), 0.3, dt)
    if xmask:
        kw["input_mask"] = keep(rng, (G, N, C), 0.4, dt)
    if zoneout:
        kw["zoneout_h_mask"] = (rng.random((T, N, R)) < 0.3).astype(dt)
    cot = [r(T, N, R), r(N, R)] + ([r(N, H)] if cell == "lstm" else [])
    return args, kw, cot


def run_ref(cell, args, kw):
    out = CELLS[cell][1](*args, **kw, training=True)
    return out[:-1], out[-1]


def loss(cell, args, kw, cot):
    outs, _ = run_ref(cell, args, kw)
    return float(sum(np.sum(o * c) for o, c in zip(outs, cot)))


ARGS = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0"]
LN = ["ln_gamma_ih", "ln_gamma_hh", "ln_gamma_c", "ln_beta_c", "ln_beta_ih", "ln_beta_hh"]


@pytest.mark.parametrize("cell,layer_norm", CASES)
@pytest.mark.parametrize("lengths,reverse", [(None, False), ([3, 1], True)])
@pytest.mark.parametrize("masks", [(True, True), (True, False), (False, True)])
def test_reference_finite_differences(cell, layer_norm, lengths, reverse, masks):
    T, N, C, H = 3, 2, 3, 2
    args, kw, cot = make(cell, layer_norm, T, N, C, H, np.float64, rmask=masks[0],
                         xmask=masks[1], lengths=lengths, reverse=reverse, zoneout=True)
    _, cache = run_ref(cell, args, kw)
    g = CELLS[cell][2](cache, *cot)
    eps = 1e-6
    targets = [(n, args, i) for i, n in enumerate(ARGS[:len(args)])]
    targets += [(n, kw, n) for n in LN + ["w_hr"] if n in kw]
    for name, holder, key in targets:
        a = holder[key]
        num = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + eps
            lp = loss(cell, args, kw, cot)
            a[idx] = old - eps
            lm = loss(cell, args, kw, cot)
            a[idx] = old
            num[idx] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(g["d" + name], num, rtol=1e-6, atol=1e-8, err_msg=name)


def compare(cell, args, kw, cot, dt, threads=None):
    G, rf, rb, kf, kb = CELLS[cell]
    outs_r, cache_r = run_ref(cell, args, kw)
    gr = rb(cache_r, *cot)
    out = kf(*args, **kw, training=True)
    gk = kb(out[-1], *cot)
    tol = dict(rtol=1e-10, atol=1e-11) if dt == np.float64 else dict(rtol=2e-4, atol=2e-5)
    for a, b in zip(out[:-1], outs_r):
        np.testing.assert_allclose(a, b, **tol)
    for k, v in gr.items():
        if v is not None:
            np.testing.assert_allclose(gk[k], v, err_msg=k, **tol)
    return out[:-1], gk


SHAPES = [(5, 3, 7, 5), (4, 7, 3, 17), (1, 1, 1, 1), (6, 8, 33, 9)]


@pytest.mark.parametrize("cell,layer_norm", CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("masks", [(True, True), (True, False), (False, True)])
def test_kernel_matches_reference(cell, layer_norm, shape, dt, masks):
    T, N, C, H = shape
    args, kw, cot = make(cell, layer_norm, T, N, C, H, dt, seed=sum(shape), rmask=masks[0],
                         xmask=masks[1], zoneout=True)
    compare(cell, args, kw, cot, dt)


@pytest.mark.parametrize("layer_norm", ["none", "haste", "tfa"])
@pytest.mark.parametrize("lengths,reverse", [(None, False), ([3, 1], True)])
def test_projected_reference_finite_differences(layer_norm, lengths, reverse):
    """The LSTM's projection with per-gate masks: the recurrent masks [G, N, P] act on the
    projected h; w_hr's gradient too."""
    T, N, C, H, P = 3, 2, 3, 3, 2
    args, kw, cot = make("lstm", layer_norm, T, N, C, H, np.float64, lengths=lengths,
                         reverse=reverse, zoneout=True, proj=P)
    _, cache = run_ref("lstm", args, kw)
    g = CELLS["lstm"][2](cache, *cot)
    eps = 1e-6
    for name in ["w_hh", "h0", "w_hr"]:
        holder, key = (args, ARGS.index(name)) if name in ARGS else (kw, name)
        a = holder[key]
        num = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + eps
            lp = loss("lstm", args, kw, cot)
            a[idx] = old - eps
            lm = loss("lstm", args, kw, cot)
            a[idx] = old
            num[idx] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(g["d" + name], num, rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.parametrize("layer_norm", ["none", "haste", "tfa"])
@pytest.mark.parametrize("shape", [(5, 3, 7, 5, 3), (4, 7, 3, 17, 11), (6, 8, 33, 9, 1)],
                         ids=str)
@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("masks", [(True, True), (True, False)])
def test_projected_kernel_matches_reference(layer_norm, shape, dt, masks):
    T, N, C, H, P = shape
    args, kw, cot = make("lstm", layer_norm, T, N, C, H, dt, seed=sum(shape), rmask=masks[0],
                         xmask=masks[1], zoneout=True, proj=P,
                         lengths=[T, 0, max(T - 2, 1)] + [T] * (N - 3))
    compare("lstm", args, kw, cot, dt)


@pytest.mark.parametrize("cell,layer_norm", [("lstm", "haste"), ("gru", "none")])
@pytest.mark.parametrize("reverse", [False, True])
def test_kernel_lengths(cell, layer_norm, reverse):
    T, N, C, H = 6, 4, 5, 7
    args, kw, cot = make(cell, layer_norm, T, N, C, H, np.float64, lengths=[6, 2, 0, 5],
                         reverse=reverse)
    compare(cell, args, kw, cot, np.float64)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_threads_bitwise(cell):
    T, N, C, H = 7, 9, 19, 23
    args, kw, cot = make(cell, "haste", T, N, C, H, np.float32, seed=3)
    res = []
    old = F._num_threads
    try:
        for n in (1, 2):
            F.set_num_threads(n)
            out = CELLS[cell][3](*args, **kw, training=True)
            res.append((out[:-1], CELLS[cell][4](out[-1], *cot)))
    finally:
        F._num_threads = old
    for a, b in zip(res[0][0], res[1][0]):
        np.testing.assert_array_equal(a, b)
    for k, v in res[0][1].items():
        if v is not None:
            np.testing.assert_array_equal(v, res[1][1][k], err_msg=k)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_equal_gate_masks_are_the_shared_mask(cell):
    """Per-gate masks that are all the same mask give the shared-mask results (and input masks
    equal to one mask give the same as scaling x by it)."""
    G = CELLS[cell][0]
    T, N, C, H = 5, 3, 4, 6
    args, kw, cot = make(cell, "haste", T, N, C, H, np.float64, seed=5)
    kw["recurrent_mask"] = np.repeat(kw["recurrent_mask"][:1], G, axis=0)
    kw["input_mask"] = np.repeat(kw["input_mask"][:1], G, axis=0)
    out = CELLS[cell][3](*args, **kw, training=True)
    shared = dict(kw, gate_masks=False, recurrent_mask=kw["recurrent_mask"][0])
    del shared["input_mask"]
    x = args[0] * kw["input_mask"][0]
    out2 = CELLS[cell][3](x, *args[1:], **shared, training=True)
    for a, b in zip(out[:-1], out2[:-1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    g1, g2 = CELLS[cell][4](out[-1], *cot), CELLS[cell][4](out2[-1], *cot)
    for k in ("dw_ih", "dw_hh", "dh0", "db_ih"):
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-11, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(g1["dx"], g2["dx"] * kw["input_mask"][0], rtol=1e-11,
                               atol=1e-12)


def test_bad_input():
    args, kw, _ = make("lstm", "none", 3, 2, 3, 4, np.float64)
    with pytest.raises(ValueError, match="recurrent_mask must have shape"):
        K.lstm_ln_forward(*args, **dict(kw, gate_masks=False, input_mask=None))
    with pytest.raises(ValueError, match="input_mask needs gate_masks"):
        K.lstm_ln_forward(*args, **dict(kw, gate_masks=False, recurrent_mask=None))
    with pytest.raises(ValueError, match="input_mask must have shape"):
        K.lstm_ln_forward(*args, **dict(kw, input_mask=kw["input_mask"][:3]))
    with pytest.raises(ValueError, match="gate_masks must be True or False"):
        K.lstm_ln_forward(*args, **dict(kw, gate_masks=1))
    with pytest.raises(ValueError, match="input_mask needs gate_masks"):
        ref.lstm_ln_forward(*args, **dict(kw, gate_masks=False, recurrent_mask=None))


# -- Keras 3 -------------------------------------------------------------------------------
# NumPy transcription of keras/src/layers/rnn/lstm.py and gru.py (Keras 3.x), LSTMCell.call /
# GRUCell.call with implementation=1 (recurrent_dropout > 0 forces it; dropout_mask_count 4 / 3):
# one input mask and one recurrent mask per gate, [N, C] / [N, H] each, drawn once per call of
# the layer (DropoutRNNCell caches them over the steps), values 0 or 1/(1 - rate). Keras' kernel
# (C, 4U) / recurrent_kernel (U, 4U), gates i, f, c, o (LSTM) and z, r, h (GRU, reset_after:
# bias (2, 3U), input and recurrent rows).

def keras_lstm_numpy(x, kernel, recurrent_kernel, bias, dp, rdp):
    """x [N, T, C] (batch first), dp [4][N, C], rdp [4][N, H]; returns outputs [N, T, H]."""
    N, T, _ = x.shape
    U = recurrent_kernel.shape[0]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h = np.zeros((N, U))
    c = np.zeros((N, U))
    ks = [kernel[:, k * U:(k + 1) * U] for k in range(4)]
    rs = [recurrent_kernel[:, k * U:(k + 1) * U] for k in range(4)]
    bs = [bias[k * U:(k + 1) * U] for k in range(4)]
    ys = []
    for t in range(T):
        xt = x[:, t]
        x_i, x_f, x_c, x_o = ((xt * dp[k]) @ ks[k] + bs[k] for k in range(4))
        h_i, h_f, h_c, h_o = (h * rdp[k] for k in range(4))
        i = sig(x_i + h_i @ rs[0])
        f = sig(x_f + h_f @ rs[1])
        c = f * c + i * np.tanh(x_c + h_c @ rs[2])
        o = sig(x_o + h_o @ rs[3])
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys, axis=1)


def keras_gru_numpy(x, kernel, recurrent_kernel, bias, dp, rdp):
    """reset_after=True; dp [3][N, C], rdp [3][N, H] in Keras' gate order z, r, h."""
    N, T, _ = x.shape
    U = recurrent_kernel.shape[0]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    ib, rb = bias[0], bias[1]
    h = np.zeros((N, U))
    ys = []
    for t in range(T):
        xt = x[:, t]
        x_z = (xt * dp[0]) @ kernel[:, :U] + ib[:U]
        x_r = (xt * dp[1]) @ kernel[:, U:2 * U] + ib[U:2 * U]
        x_h = (xt * dp[2]) @ kernel[:, 2 * U:] + ib[2 * U:]
        rec_z = (h * rdp[0]) @ recurrent_kernel[:, :U] + rb[:U]
        rec_r = (h * rdp[1]) @ recurrent_kernel[:, U:2 * U] + rb[U:2 * U]
        z = sig(x_z + rec_z)
        r = sig(x_r + rec_r)
        rec_h = r * ((h * rdp[2]) @ recurrent_kernel[:, 2 * U:] + rb[2 * U:])
        hh = np.tanh(x_h + rec_h)
        h = z * h + (1 - z) * hh
        ys.append(h)
    return np.stack(ys, axis=1)


GRU_PERM = [1, 0, 2]  # fusedrnn's (torch's) GRU blocks r, z, n are Keras' blocks 1, 0, 2


def keras_problem(cell, N=3, T=5, C=4, U=6, seed=0, p=0.3, q=0.4):
    rng = np.random.default_rng(seed)
    G = 4 if cell == "lstm" else 3
    x = rng.standard_normal((N, T, C))
    kernel = rng.standard_normal((C, G * U)) * 0.4
    rec = rng.standard_normal((U, G * U)) * 0.4
    bias = rng.standard_normal(G * U if cell == "lstm" else (2, G * U)) * 0.2
    dp = [keep(rng, (N, C), q, np.float64) for _ in range(G)]
    rdp = [keep(rng, (N, U), p, np.float64) for _ in range(G)]
    return x, kernel, rec, bias, dp, rdp


def ours_from_keras(cell, x, kernel, rec, bias, dp, rdp):
    """The same problem in fusedrnn's layout; returns the kernel's y as [N, T, H]."""
    U = rec.shape[0]
    if cell == "lstm":
        w_ih, w_hh, b_ih, b_hh, perm = kernel.T.copy(), rec.T.copy(), bias.copy(), None, range(4)
    else:
        perm = GRU_PERM
        blk = lambda w: np.concatenate([w[:, k * U:(k + 1) * U] for k in perm], axis=1)  # noqa
        w_ih, w_hh = blk(kernel).T.copy(), blk(rec).T.copy()
        b_ih, b_hh = blk(bias[:1])[0].copy(), blk(bias[1:])[0].copy()
    xm = np.stack([dp[k] for k in perm])
    rm = np.stack([rdp[k] for k in perm])
    xt = np.ascontiguousarray(x.transpose(1, 0, 2))
    fwd = K.lstm_ln_forward if cell == "lstm" else K.gru_ln_forward
    y = fwd(xt, w_ih, w_hh, b_ih, b_hh, gate_masks=True, recurrent_mask=rm, input_mask=xm,
            training=True)[0]
    return y.transpose(1, 0, 2)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_keras3_numpy_transcription(cell):
    prob = keras_problem(cell)
    want = (keras_lstm_numpy if cell == "lstm" else keras_gru_numpy)(*prob)
    np.testing.assert_allclose(ours_from_keras(cell, *prob), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_keras3_layer_with_injected_masks(cell):
    """Keras 3's own LSTM / GRU layer (training=True, recurrent_dropout and dropout set, so its
    per-gate path runs) with its mask draws replaced by ours: outputs equal the kernel's."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    torch = pytest.importorskip("torch")
    x, kernel, rec, bias, dp, rdp = keras_problem(cell, seed=1)
    N, T, C = x.shape
    U = rec.shape[0]
    cls = keras.layers.LSTM if cell == "lstm" else keras.layers.GRU
    layer = cls(U, dropout=0.4, recurrent_dropout=0.3, return_sequences=True, dtype="float64")
    layer.build((N, T, C))
    layer.set_weights([kernel, rec, bias])
    as_t = lambda ms: [torch.as_tensor(m) for m in ms]  # noqa: E731
    layer.cell.get_dropout_mask = lambda step_input: as_t(dp)
    layer.cell.get_recurrent_dropout_mask = lambda step_input: as_t(rdp)
    assert layer.cell.implementation == 1 and layer.cell.dropout_mask_count == (
        4 if cell == "lstm" else 3)
    got = keras.ops.convert_to_numpy(layer(torch.as_tensor(x), training=True))
    # Keras 3's torch backend runs ops.matmul of float64 operands in float32 (its result_type
    # gives float32 here: keras.ops.matmul of two float64 tensors returns float32, ~1e-7 off
    # NumPy), so Keras' own layer is float32-accurate only; the transcription test above is the
    # 1e-10 check. Different masks would differ by O(0.1).
    np.testing.assert_allclose(ours_from_keras(cell, x, kernel, rec, bias, dp, rdp), got,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose((keras_lstm_numpy if cell == "lstm" else keras_gru_numpy)(
        x, kernel, rec, bias, dp, rdp), got, rtol=1e-5, atol=1e-6)


# -- layers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls_name", ["LSTM", "GRU"])
def test_layer_per_gate_option(cls_name, tmp_path):
    import fusedrnn
    cls = getattr(fusedrnn, cls_name)
    m = cls(5, 7, num_layers=2, recurrent_dropout=0.3, input_dropout=0.2,
            dropout_masks="per_gate", dtype="float64", seed=0)
    assert m.config()["dropout_masks"] == "per_gate"
    assert "dropout_masks" not in cls(5, 7, recurrent_dropout=0.3).config()
    x = np.random.default_rng(0).standard_normal((6, 3, 5))
    m.train()
    y, _ = m(x)
    m.zero_grad()
    m.backward(np.ones_like(y))
    assert all(np.isfinite(p.grad).all() for p in m.parameters())
    m.eval()
    y1, _ = m(x)
    m2 = cls(5, 7, num_layers=2, recurrent_dropout=0.3, input_dropout=0.2, dtype="float64",
             seed=0)
    m2.eval()
    np.testing.assert_array_equal(y1, m2(x)[0])  # evaluation draws no masks
    with pytest.raises(ValueError, match="dropout_masks must be 'shared' or 'per_gate'"):
        cls(5, 7, recurrent_dropout=0.3, dropout_masks="keras")
    with pytest.raises(ValueError, match="needs recurrent_dropout or input_dropout"):
        cls(5, 7, zoneout_h=0.1, dropout_masks="per_gate")
