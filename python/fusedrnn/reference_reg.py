"""NumPy reference of the regularised / normalised LSTM: the SPECIFICATION of the kernels of
``cpp/include/fusedrnn/lstm_ln.h`` (layer norm, zoneout, recurrent dropout mask).

Same conventions as :mod:`fusedrnn.reference` (shapes, lengths, reverse, the loss of the
backward). No peepholes; the LSTM may project (w_hr [P, H], PyTorch's proj_size). Per step,
with LN(v; γ, β) = γ∘(v − mean v) / sqrt(var v + eps) + β over the units of v (per row;
biased variance; absent β = 0):

    a   = LN(x_t W_ihᵀ; γ_ih, β_ih) + LN((h∘r) W_hhᵀ; γ_hh, β_hh) + b_ih + b_hh
          (layer_norm="none": x_t W_ihᵀ + (h∘r) W_hhᵀ + b_ih + b_hh)
    i, f, o = σ(a_i, a_f, a_o);  g = tanh(a_g);  c̃ = f∘c + i∘g
    n   = LN(c̃; γ_c, β_c)  (c̃ without layer norm);   h̃ = o∘tanh(n)
    c'  = c̃ ("haste", "none": the un-normalised cell is carried) or n ("tfa")
    c_t = z_c∘c + (1 − z_c)∘c';   h_t = z_h∘h + (1 − z_h)∘h̃          (zoneout)

With a projection w_hr [P, H] the carried h is P wide: h_t = z_h∘h + (1 − z_h)∘(h̃ W_hrᵀ)
(zoneout and the recurrent mask act on the projected h, the state that recurs: z_h, r, h0,
y, h_n are [.., P], w_hh [4H, P]; the zoneout draw of h is over [T, N, P]).

r [N, H]: recurrent dropout mask (already scaled by 1/(1 − p)), None = ones. gate_masks=True
(Keras 3's ``recurrent_dropout``: a mask per gate block): r is [G, N, H] and input_mask m
[G, N, C] (None = none), and the products are per gate block k (G = 4: i, f, g, o; GRU 3):
(x_t∘m_k) W_ih,kᵀ and (h∘r_k) W_hh,kᵀ, W_·,k the rows kH..(k+1)H-1. z_h, z_c: the
zoneout masks [T, N, H] indexed by time (training), or the probabilities zoneout_h,
zoneout_c where no mask is given (evaluation: the expectation).
"""
from __future__ import annotations

import numpy as np

from .reference import _lengths, _schedule, _sigmoid

__all__ = ["lstm_ln_forward", "lstm_ln_backward", "gru_ln_forward", "gru_ln_backward",
           "zoneout_masks",
           "LAYER_NORMS", "GRU_LAYER_NORMS"]

LAYER_NORMS = ("none", "haste", "tfa")


_GAMMA, _M1, _M2 = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9),
                    np.uint64(0x94D049BB133111EB))


def zoneout_masks(seed, shape, p, dtype, which="h"):
    """The zoneout mask [T, N, H] the kernels draw from ``zoneout_seed`` (their
    ``zoneout_draw``; cpp/include/fusedrnn/lstm_ln.h): 1 where the top 24 bits of the i-th output
    of SplitMix64 seeded with key, i = (t N + n) H + j, are below ceil(p 2^24), p taken in
    ``dtype`` (float32 0.1 is not float64 0.1); key = seed ^ 0x5A6F6E656F75745F, and ^ 1 for
    the c mask (which="c")."""
    dtype = np.dtype(dtype)
    key = np.uint64((int(seed) ^ 0x5A6F6E656F75745F ^ (which == "c")) & (2**64 - 1))
    i = np.arange(1, int(np.prod(shape)) + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = key + i * _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    z ^= z >> np.uint64(31)
    thr = np.uint64(np.ceil(float(dtype.type(p)) * 16777216.0))
    return ((z >> np.uint64(40)) < thr).astype(dtype).reshape(shape)


def _seeded(seed, T, N, H, dt, zh, zc, p_h, p_c, R=None):
    """zoneout_seed (training, no mask arrays): the masks drawn from it; the probabilities 0.
    R: the width of h (the projection's P), H by default."""
    if seed is None:
        return zh, zc, p_h, p_c
    if zh is not None or zc is not None:
        raise ValueError("zoneout_seed draws the masks: give no zoneout_h_mask / zoneout_c_mask")
    zh = zoneout_masks(seed, (T, N, R or H), p_h, dt, "h") if p_h else None
    zc = zoneout_masks(seed, (T, N, H), p_c, dt, "c") if p_c else None
    return zh, zc, 0.0, 0.0


def _arr(a, dt, shape, name, optional=True):
    if a is None:
        if optional:
            return None
        raise ValueError(f"{name} is required")
    a = np.array(a, dtype=dt, copy=True)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(a.shape)}")
    return a


def _ln(v, gamma, beta, eps):
    mu = v.mean(axis=-1, keepdims=True)
    var = ((v - mu) ** 2).mean(axis=-1, keepdims=True)
    inv = 1.0 / np.sqrt(var + eps)
    vh = (v - mu) * inv
    out = vh * gamma
    if beta is not None:
        out = out + beta
    return out, vh, inv


def _ln_back(dout, gamma, vh, inv):
    gd = dout * gamma
    return inv * (gd - gd.mean(axis=-1, keepdims=True)
                  - vh * (gd * vh).mean(axis=-1, keepdims=True))


def _block_product(v, m, w, G):
    """v [N, K] times wᵀ (w [G H, K]) through the mask m: None, shared [N, K], or one per gate
    block [G, N, K] (block k of the result is (v∘m_k) w_kᵀ)."""
    if m is None:
        return v @ w.T
    if m.ndim == 2:
        return (v * m) @ w.T
    H = w.shape[0] // G
    return np.concatenate([(v * m[k]) @ w[k * H:(k + 1) * H].T for k in range(G)], axis=1)


def _block_back(dg, v, m, w, G):
    """The gradients (dv, dw) of Σ dg·_block_product(v, m, w, G)."""
    if m is None:
        return dg @ w, dg.T @ v
    if m.ndim == 2:
        return (dg @ w) * m, dg.T @ (v * m)
    H = w.shape[0] // G
    blk = [slice(k * H, (k + 1) * H) for k in range(G)]
    dv = sum(m[k] * (dg[:, b] @ w[b]) for k, b in enumerate(blk))
    return dv, np.concatenate([dg[:, b].T @ (v * m[k]) for k, b in enumerate(blk)], axis=0)


def _masks(recurrent_mask, input_mask, gate_masks, G, N, C, H, dt):
    if input_mask is not None and not gate_masks:
        raise ValueError("input_mask needs gate_masks=True (a mask shared by the gate blocks is "
                         "the caller's scaling of x)")
    rm = _arr(recurrent_mask, dt, (G, N, H) if gate_masks else (N, H), "recurrent_mask")
    return rm, _arr(input_mask, dt, (G, N, C), "input_mask")


def _products(s, x_t, h, rm, w_ih, w_hh, ln, P, ln_eps, saved, xm=None, G=None):
    """Step s's two products (through the masks), layer-normalised with ln (their normalised
    values and 1/std saved for the backward). G: the gate blocks (default: w_hh square per
    block, as without a projection)."""
    G = G or w_hh.shape[0] // w_hh.shape[1]
    hin = h if rm is None or rm.ndim == 3 else h * rm
    gx, gh = _block_product(x_t, xm, w_ih, G), _block_product(h, rm, w_hh, G)
    if ln:
        gx, xh, ix = _ln(gx, P["ln_gamma_ih"], P["ln_beta_ih"], ln_eps)
        gh, hh, ih = _ln(gh, P["ln_gamma_hh"], P["ln_beta_hh"], ln_eps)
        saved["xhat"][s], saved["hhat"][s], saved["ix"][s], saved["ih"][s] = xh, hh, ix, ih
    return hin, gx, gh


def lstm_ln_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *,
                    layer_norm="none", ln_eps=1e-5, ln_gamma_ih=None, ln_beta_ih=None,
                    ln_gamma_hh=None, ln_beta_hh=None, ln_gamma_c=None, ln_beta_c=None,
                    zoneout_h_mask=None, zoneout_c_mask=None, zoneout_h=0.0, zoneout_c=0.0,
                    zoneout_seed=None, recurrent_mask=None, lengths=None, reverse=False,
                    training=True, gate_masks=False, input_mask=None, w_hr=None):
    """Returns (y [T, N, R], h_n [N, R], c_n [N, H], cache or None), R = P with a projection
    w_hr [P, H] (P < H), else H. zoneout_seed: the masks of :func:`zoneout_masks` with
    probabilities zoneout_h, zoneout_c (training)."""
    if layer_norm not in LAYER_NORMS:
        raise ValueError(f"layer_norm must be one of {LAYER_NORMS}, got {layer_norm!r}")
    x = np.array(x, copy=True)
    T, N, C = x.shape
    dt = x.dtype
    H = np.shape(w_hh)[0] // 4
    if w_hr is not None:
        R = np.shape(w_hr)[0]
        w_hr = _arr(w_hr, dt, (R, H), "w_hr", False)
        if not 0 < R < H:
            raise ValueError(f"w_hr must be [P, H] with 0 < P < H, got {list(w_hr.shape)}")
    else:
        R = H
    w_ih = _arr(w_ih, dt, (4 * H, C), "w_ih", False)
    w_hh = _arr(w_hh, dt, (4 * H, R), "w_hh", False)
    b = np.zeros(4 * H, dt)
    for v, name in ((b_ih, "b_ih"), (b_hh, "b_hh")):
        if v is not None:
            b = b + _arr(v, dt, (4 * H,), name)
    h = np.zeros((N, R), dt) if h0 is None else _arr(h0, dt, (N, R), "h0")
    c = np.zeros((N, H), dt) if c0 is None else _arr(c0, dt, (N, H), "c0")
    ln = layer_norm != "none"
    P = {k: _arr(v, dt, (sz,), k) for k, v, sz in (
        ("ln_gamma_ih", ln_gamma_ih, 4 * H), ("ln_beta_ih", ln_beta_ih, 4 * H),
        ("ln_gamma_hh", ln_gamma_hh, 4 * H), ("ln_beta_hh", ln_beta_hh, 4 * H),
        ("ln_gamma_c", ln_gamma_c, H), ("ln_beta_c", ln_beta_c, H))}
    if ln and any(P[k] is None for k in ("ln_gamma_ih", "ln_gamma_hh", "ln_gamma_c")):
        raise ValueError("layer norm needs ln_gamma_ih, ln_gamma_hh and ln_gamma_c")
    if not ln and any(v is not None for v in P.values()):
        raise ValueError("ln_* parameters given but layer_norm is 'none'")
    zh = _arr(zoneout_h_mask, dt, (T, N, R), "zoneout_h_mask")
    zc = _arr(zoneout_c_mask, dt, (T, N, H), "zoneout_c_mask")
    for p, name in ((zoneout_h, "zoneout_h"), (zoneout_c, "zoneout_c")):
        if not 0 <= p < 1:
            raise ValueError(f"{name} must lie in [0, 1), got {p!r}")
    zh, zc, zoneout_h, zoneout_c = _seeded(zoneout_seed, T, N, H, dt, zh, zc, zoneout_h,
                                           zoneout_c, R)
    rm, xm = _masks(recurrent_mask, input_mask, gate_masks, 4, N, C, R, dt)
    lengths = _lengths(lengths, T, N)
    tidx, active = _schedule(T, lengths, bool(reverse))
    rows = np.arange(N)
    tfa = layer_norm == "tfa"
    y = np.zeros((T, N, R), dt)
    keys = ("c_prev", "i", "f", "g", "o", "n", "chat", "zc", "ht")
    saved = {k: np.zeros((T, N, H), dt) for k in keys}
    for k in ("h_prev", "hin", "zh"):
        saved[k] = np.zeros((T, N, R), dt)
    for k in ("xhat", "hhat"):
        saved[k] = np.zeros((T, N, 4 * H), dt)
    for k in ("ix", "ih", "ic"):
        saved[k] = np.ones((T, N, 1), dt)
    for s in range(T):
        t = tidx[s]
        act = active[s][:, None]
        hin, ax, ah = _products(s, x[t, rows], h, rm, w_ih, w_hh, ln, P, ln_eps, saved, xm, 4)
        a = ax + ah + b
        i, f, o = (_sigmoid(a[:, k * H:(k + 1) * H]) for k in (0, 1, 3))
        g = np.tanh(a[:, 2 * H:3 * H])
        ct = f * c + i * g
        if ln:
            n, ch, ic = _ln(ct, P["ln_gamma_c"], P["ln_beta_c"], ln_eps)
            saved["chat"][s], saved["ic"][s] = ch, ic
        else:
            n = ct
        ht = o * np.tanh(n)
        cc = n if tfa else ct
        z_h = zh[t, rows] if zh is not None else np.full((N, R), zoneout_h, dt)
        z_c = zc[t, rows] if zc is not None else np.full((N, H), zoneout_c, dt)
        c_new = z_c * c + (1 - z_c) * cc
        h_new = z_h * h + (1 - z_h) * (ht if w_hr is None else ht @ w_hr.T)
        for k, v in (("h_prev", h), ("c_prev", c), ("hin", hin), ("i", i), ("f", f),
                     ("g", g), ("o", o), ("n", n), ("zh", z_h), ("zc", z_c), ("ht", ht)):
            saved[k][s] = v
        h = np.where(act, h_new, h)
        c = np.where(act, c_new, c)
        ar = active[s]
        y[t[ar], rows[ar]] = h[ar]
    cache = None
    if training:
        cache = dict(kind="lstm_ln", x=x, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, R=R, T=T, N=N, C=C,
                     H=H, dtype=dt,
                     layer_norm=layer_norm, rm=rm, xm=xm, tidx=tidx, active=active,
                     has=dict(b_ih=b_ih is not None, b_hh=b_hh is not None, h0=h0 is not None,
                              c0=c0 is not None, beta_ih=P["ln_beta_ih"] is not None,
                              beta_hh=P["ln_beta_hh"] is not None,
                              beta_c=P["ln_beta_c"] is not None),
                     **P, **saved)
    return y, h, c, cache


def lstm_ln_backward(cache, dy=None, dh_n=None, dc_n=None):
    """Gradients of Σ y·dy + Σ h_n·dh_n + Σ c_n·dc_n. Returns a dict: dx, dh0, dc0, dw_ih,
    dw_hh, db_ih, db_hh, dln_gamma_ih, dln_beta_ih, dln_gamma_hh, dln_beta_hh, dln_gamma_c,
    dln_beta_c, dw_hr (None for inputs that were not given)."""
    if not isinstance(cache, dict) or cache.get("kind") != "lstm_ln":
        raise ValueError("lstm_ln_backward needs a cache from reference_reg.lstm_ln_forward")
    T, N, C, H, dt = (cache[k] for k in ("T", "N", "C", "H", "dtype"))
    ln = cache["layer_norm"] != "none"
    tfa = cache["layer_norm"] == "tfa"
    R, w_hr = cache["R"], cache["w_hr"]
    dy = np.zeros((T, N, R), dt) if dy is None else np.asarray(dy, dt)
    dh = np.zeros((N, R), dt) if dh_n is None else np.array(dh_n, dt)
    dc = np.zeros((N, H), dt) if dc_n is None else np.array(dc_n, dt)
    dw_hr = None if w_hr is None else np.zeros_like(w_hr)
    x, w_ih, w_hh, rm = cache["x"], cache["w_ih"], cache["w_hh"], cache["rm"]
    rows = np.arange(N)
    dx = np.zeros((T, N, C), dt)
    g = {k: np.zeros_like(cache[k.replace("d", "", 1)]) if k.startswith("dw") else None
         for k in ("dw_ih", "dw_hh")}
    db = np.zeros(4 * H, dt)
    dgam_ih, dgam_hh, dgam_c = np.zeros(4 * H, dt), np.zeros(4 * H, dt), np.zeros(H, dt)
    dbet_c = np.zeros(H, dt)
    for s in reversed(range(T)):
        t = cache["tidx"][s]
        act = cache["active"][s][:, None]
        i, f, gg, o, n = (cache[k][s] for k in ("i", "f", "g", "o", "n"))
        c_prev, z_h, z_c = cache["c_prev"][s], cache["zh"][s], cache["zc"][s]
        dh_t = dh + np.where(act, dy[t, rows], 0)
        dht = (1 - z_h) * dh_t
        if w_hr is not None:   # h_t's new part is h̃ W_hrᵀ
            dw_hr += np.where(act, dht, 0).T @ cache["ht"][s]
            dht = dht @ w_hr
        dcand = (1 - z_c) * dc
        tn = np.tanh(n)
        da_o = dht * tn * o * (1 - o)
        dn = dht * o * (1 - tn * tn)
        if tfa:
            dn = dn + dcand
        if ln:
            dct = _ln_back(dn, cache["ln_gamma_c"], cache["chat"][s], cache["ic"][s])
            dgam_c += np.sum(np.where(act, dn * cache["chat"][s], 0), axis=0)
            dbet_c += np.sum(np.where(act, dn, 0), axis=0)
        else:
            dct = dn
        if not tfa:
            dct = dct + dcand
        da_i = dct * gg * i * (1 - i)
        da_f = dct * c_prev * f * (1 - f)
        da_g = dct * i * (1 - gg * gg)
        dc_prev = dct * f + z_c * dc
        da = np.where(act, np.concatenate([da_i, da_f, da_g, da_o], axis=1), 0)
        db += da.sum(axis=0)
        if ln:
            dgx = _ln_back(da, cache["ln_gamma_ih"], cache["xhat"][s], cache["ix"][s])
            dgh = _ln_back(da, cache["ln_gamma_hh"], cache["hhat"][s], cache["ih"][s])
            dgam_ih += np.sum(da * cache["xhat"][s], axis=0)
            dgam_hh += np.sum(da * cache["hhat"][s], axis=0)
        else:
            dgx = dgh = da
        dx_t, dw = _block_back(dgx, x[t, rows], cache["xm"], w_ih, 4)
        g["dw_ih"] += dw
        dhin, dw = _block_back(dgh, cache["h_prev"][s], rm, w_hh, 4)
        g["dw_hh"] += dw
        ar = cache["active"][s]
        dx[t[ar], rows[ar]] = dx_t[ar]
        dh_prev = dhin + z_h * dh_t
        dh = np.where(act, dh_prev, dh)
        dc = np.where(act, dc_prev, dc)
    has = cache["has"]
    return dict(
        dx=dx, dh0=dh if has["h0"] else None, dc0=dc if has["c0"] else None,
        dw_ih=g["dw_ih"], dw_hh=g["dw_hh"], db_ih=db.copy() if has["b_ih"] else None,
        db_hh=db.copy() if has["b_hh"] else None,
        dln_gamma_ih=dgam_ih if ln else None,
        dln_beta_ih=db.copy() if ln and has["beta_ih"] else None,
        dln_gamma_hh=dgam_hh if ln else None,
        dln_beta_hh=db.copy() if ln and has["beta_hh"] else None,
        dln_gamma_c=dgam_c if ln else None,
        dln_beta_c=dbet_c if ln and has["beta_c"] else None, dw_hr=dw_hr)


# -- the GRU ----------------------------------------------------------------------------------
#
# Reset-after GRU (PyTorch gate order r, z, n) with the same options but no cell state; layer
# norm only in haste's placement (LayerNormGRU), on the input and recurrent products:
#
#     gx = LN(x_t W_ihᵀ; γ_ih, β_ih);   gh = LN((h∘r) W_hhᵀ; γ_hh, β_hh)   (raw without LN)
#     r = σ(gx_r + b_ir + gh_r + b_hr);  z = σ(gx_z + b_iz + gh_z + b_hz)
#     ñ = tanh(gx_n + b_in + r∘(gh_n + b_hn));  h̃ = (1 − z)∘ñ + z∘h
#     h_t = z_h∘h + (1 − z_h)∘h̃

GRU_LAYER_NORMS = ("none", "haste")


def gru_ln_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, layer_norm="none",
                   ln_eps=1e-5, ln_gamma_ih=None, ln_beta_ih=None, ln_gamma_hh=None,
                   ln_beta_hh=None, zoneout_h_mask=None, zoneout_h=0.0, zoneout_seed=None,
                   recurrent_mask=None, lengths=None, reverse=False, training=True,
                   gate_masks=False, input_mask=None):
    """Returns (y [T, N, H], h_n [N, H], cache or None). zoneout_seed: the mask of
    :func:`zoneout_masks` with probability zoneout_h (training)."""
    if layer_norm not in GRU_LAYER_NORMS:
        raise ValueError(f"layer_norm must be one of {GRU_LAYER_NORMS} for the GRU, "
                         f"got {layer_norm!r}")
    x = np.array(x, copy=True)
    T, N, C = x.shape
    dt = x.dtype
    H = np.shape(w_hh)[0] // 3
    w_ih = _arr(w_ih, dt, (3 * H, C), "w_ih", False)
    w_hh = _arr(w_hh, dt, (3 * H, H), "w_hh", False)
    bi = np.zeros(3 * H, dt) if b_ih is None else _arr(b_ih, dt, (3 * H,), "b_ih")
    bh = np.zeros(3 * H, dt) if b_hh is None else _arr(b_hh, dt, (3 * H,), "b_hh")
    h = np.zeros((N, H), dt) if h0 is None else _arr(h0, dt, (N, H), "h0")
    ln = layer_norm != "none"
    P = {k: _arr(v, dt, (3 * H,), k) for k, v in (
        ("ln_gamma_ih", ln_gamma_ih), ("ln_beta_ih", ln_beta_ih),
        ("ln_gamma_hh", ln_gamma_hh), ("ln_beta_hh", ln_beta_hh))}
    if ln and (P["ln_gamma_ih"] is None or P["ln_gamma_hh"] is None):
        raise ValueError("layer norm needs ln_gamma_ih and ln_gamma_hh")
    if not ln and any(v is not None for v in P.values()):
        raise ValueError("ln_* parameters given but layer_norm is 'none'")
    zh = _arr(zoneout_h_mask, dt, (T, N, H), "zoneout_h_mask")
    if not 0 <= zoneout_h < 1:
        raise ValueError(f"zoneout_h must lie in [0, 1), got {zoneout_h!r}")
    zh, _, zoneout_h, _ = _seeded(zoneout_seed, T, N, H, dt, zh, None, zoneout_h, 0.0)
    rm, xm = _masks(recurrent_mask, input_mask, gate_masks, 3, N, C, H, dt)
    lengths = _lengths(lengths, T, N)
    tidx, active = _schedule(T, lengths, bool(reverse))
    rows = np.arange(N)
    y = np.zeros((T, N, H), dt)
    saved = {k: np.zeros((T, N, H), dt) for k in ("h_prev", "hin", "r", "z", "n", "q", "zh")}
    for k in ("xhat", "hhat"):
        saved[k] = np.zeros((T, N, 3 * H), dt)
    for k in ("ix", "ih"):
        saved[k] = np.ones((T, N, 1), dt)
    for s in range(T):
        t = tidx[s]
        act = active[s][:, None]
        hin, gx, gh = _products(s, x[t, rows], h, rm, w_ih, w_hh, ln, P, ln_eps, saved, xm)
        ax, ah = gx + bi, gh + bh
        r = _sigmoid(ax[:, :H] + ah[:, :H])
        z = _sigmoid(ax[:, H:2 * H] + ah[:, H:2 * H])
        q = ah[:, 2 * H:]
        n = np.tanh(ax[:, 2 * H:] + r * q)
        ht = (1 - z) * n + z * h
        z_h = zh[t, rows] if zh is not None else np.full((N, H), zoneout_h, dt)
        h_new = z_h * h + (1 - z_h) * ht
        for k, v in (("h_prev", h), ("hin", hin), ("r", r), ("z", z), ("n", n), ("q", q),
                     ("zh", z_h)):
            saved[k][s] = v
        h = np.where(act, h_new, h)
        ar = active[s]
        y[t[ar], rows[ar]] = h[ar]
    cache = None
    if training:
        cache = dict(kind="gru_ln", x=x, w_ih=w_ih, w_hh=w_hh, T=T, N=N, C=C, H=H, dtype=dt,
                     layer_norm=layer_norm, rm=rm, xm=xm, tidx=tidx, active=active,
                     has=dict(b_ih=b_ih is not None, b_hh=b_hh is not None, h0=h0 is not None,
                              beta_ih=P["ln_beta_ih"] is not None,
                              beta_hh=P["ln_beta_hh"] is not None),
                     **P, **saved)
    return y, h, cache


def gru_ln_backward(cache, dy=None, dh_n=None):
    """Gradients of Σ y·dy + Σ h_n·dh_n. Returns a dict: dx, dh0, dw_ih, dw_hh, db_ih, db_hh,
    dln_gamma_ih, dln_beta_ih, dln_gamma_hh, dln_beta_hh (None for inputs not given)."""
    if not isinstance(cache, dict) or cache.get("kind") != "gru_ln":
        raise ValueError("gru_ln_backward needs a cache from reference_reg.gru_ln_forward")
    T, N, C, H, dt = (cache[k] for k in ("T", "N", "C", "H", "dtype"))
    ln = cache["layer_norm"] != "none"
    dy = np.zeros((T, N, H), dt) if dy is None else np.asarray(dy, dt)
    dh = np.zeros((N, H), dt) if dh_n is None else np.array(dh_n, dt)
    x, w_ih, w_hh, rm = cache["x"], cache["w_ih"], cache["w_hh"], cache["rm"]
    rows = np.arange(N)
    dx = np.zeros((T, N, C), dt)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    dbi, dbh = np.zeros(3 * H, dt), np.zeros(3 * H, dt)
    dgam_ih, dgam_hh = np.zeros(3 * H, dt), np.zeros(3 * H, dt)
    for s in reversed(range(T)):
        t = cache["tidx"][s]
        act = cache["active"][s][:, None]
        r, z, n, q = (cache[k][s] for k in ("r", "z", "n", "q"))
        h_prev, z_h = cache["h_prev"][s], cache["zh"][s]
        dh_t = dh + np.where(act, dy[t, rows], 0)
        dht = (1 - z_h) * dh_t
        dn = dht * (1 - z) * (1 - n * n)
        dz = dht * (h_prev - n) * z * (1 - z)
        dr = dn * q * r * (1 - r)
        dax = np.where(act, np.concatenate([dr, dz, dn], axis=1), 0)
        dah = np.where(act, np.concatenate([dr, dz, dn * r], axis=1), 0)
        dbi += dax.sum(axis=0)
        dbh += dah.sum(axis=0)
        if ln:
            dgx = _ln_back(dax, cache["ln_gamma_ih"], cache["xhat"][s], cache["ix"][s])
            dgh = _ln_back(dah, cache["ln_gamma_hh"], cache["hhat"][s], cache["ih"][s])
            dgam_ih += np.sum(dax * cache["xhat"][s], axis=0)
            dgam_hh += np.sum(dah * cache["hhat"][s], axis=0)
        else:
            dgx, dgh = dax, dah
        dx_t, dw = _block_back(dgx, x[t, rows], cache["xm"], w_ih, 3)
        dw_ih += dw
        dhin, dw = _block_back(dgh, h_prev, rm, w_hh, 3)
        dw_hh += dw
        ar = cache["active"][s]
        dx[t[ar], rows[ar]] = dx_t[ar]
        dh_prev = dhin + z_h * dh_t + z * dht
        dh = np.where(act, dh_prev, dh)
    has = cache["has"]
    return dict(
        dx=dx, dh0=dh if has["h0"] else None, dw_ih=dw_ih, dw_hh=dw_hh,
        db_ih=dbi if has["b_ih"] else None, db_hh=dbh if has["b_hh"] else None,
        dln_gamma_ih=dgam_ih if ln else None,
        dln_beta_ih=dbi.copy() if ln and has["beta_ih"] else None,
        dln_gamma_hh=dgam_hh if ln else None,
        dln_beta_hh=dbh.copy() if ln and has["beta_hh"] else None)
