"""The step-by-step NumPy path of fusedrnn.compat.v1, for what the fused kernels cannot express:
activations other than the kernels' own (tanh; relu for BasicRNNCell), LSTMCell's ``proj_clip``
(the clipped projection is the state fed back), and DropoutWrapper's ``state_keep_prob < 1``
(the state fed back differs from the output passed up). Forward and backward of TF1's
``rnn_cell_impl`` math, one NumPy step at a time, on the weights in the kernels' layout (the
same conversion as the fused path: ``w_ih`` [G*H, C], ``w_hh`` [G*H, R], one bias, peepholes
[3, H] rows i, f, o, ``w_hr`` [P, H]), with dynamic_rnn's semantics (zero outputs past each
length, state carried; reverse starts every sequence at its own last valid step).

Slower than the kernels (a Python loop over steps, NumPy GEMMs), and exact: checked against a
NumPy transcription of TF1 and by finite differences in tests/test_compat_v1.py.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np


def _sig(z):
    return 1 / (1 + np.exp(-z))


# name -> (f(z), f'(z) from (y = f(z), z)). Callables are matched by their __name__ (np.tanh,
# tf.nn.relu, tf.sigmoid, ... carry these names).
ACTIVATIONS = {
    "tanh": (np.tanh, lambda y, z: 1 - y * y),
    "relu": (lambda z: np.maximum(z, 0), lambda y, z: (z > 0).astype(z.dtype)),
    "sigmoid": (_sig, lambda y, z: y * (1 - y)),
    "elu": (lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
            lambda y, z: np.where(z > 0, 1, y + 1).astype(z.dtype)),
    "softsign": (lambda z: z / (1 + np.abs(z)), lambda y, z: 1 / (1 + np.abs(z)) ** 2),
    "relu6": (lambda z: np.clip(z, 0, 6), lambda y, z: ((z > 0) & (z < 6)).astype(z.dtype)),
    "identity": (lambda z: z, lambda y, z: np.ones_like(z)),
    "linear": (lambda z: z, lambda y, z: np.ones_like(z)),
}


def _clip_mask(v, bound):
    """TF's clip_by_value gradient: passes where lo <= v <= hi."""
    return (np.abs(v) <= bound).astype(v.dtype)


class StepCell:
    """One basic cell's math. kind: 'lstm', 'gru' (TF1: reset before the product), 'rnn'."""

    def __init__(self, kind, act, w_ih, w_hh, b, w_peep=None, w_hr=None, cell_clip=None,
                 proj_clip=None):
        self.kind, self.act = kind, ACTIVATIONS[act]
        self.w_ih, self.w_hh, self.b = w_ih, w_hh, b
        self.w_peep, self.w_hr = w_peep, w_hr
        self.cell_clip, self.proj_clip = cell_clip, proj_clip
        self.H = w_hh.shape[0] // {"lstm": 4, "gru": 3, "rnn": 1}[kind]

    # forward: (x [N, C], h, c) -> (out, h_new, c_new, cache)
    def forward(self, x, h, c):
        f, _ = self.act
        H = self.H
        if self.kind == "rnn":
            z = x @ self.w_ih.T + h @ self.w_hh.T + self.b
            y = f(z)
            return y, y, None, (x, h, z, y)
        if self.kind == "gru":
            zru = x @ self.w_ih[:2 * H].T + h @ self.w_hh[:2 * H].T + self.b[:2 * H]
            ru = _sig(zru)
            r, u = ru[:, :H], ru[:, H:]
            q = r * h
            zc = x @ self.w_ih[2 * H:].T + q @ self.w_hh[2 * H:].T + self.b[2 * H:]
            n = f(zc)
            hn = u * h + (1 - u) * n
            return hn, hn, None, (x, h, r, u, q, zc, n)
        z = x @ self.w_ih.T + h @ self.w_hh.T + self.b
        zi, zf, zg, zo = (z[:, k * H:(k + 1) * H] for k in range(4))
        p = self.w_peep
        if p is not None:
            zi, zf = zi + p[0] * c, zf + p[1] * c
        i, fg, g = _sig(zi), _sig(zf), f(zg)
        c_pre = fg * c + i * g
        cn = np.clip(c_pre, -self.cell_clip, self.cell_clip) if self.cell_clip else c_pre
        if p is not None:
            zo = zo + p[2] * cn
        o = _sig(zo)
        a = f(cn)
        m = o * a
        hp = None
        if self.w_hr is not None:
            hp = m @ self.w_hr.T
            hn = np.clip(hp, -self.proj_clip, self.proj_clip) if self.proj_clip else hp
        else:
            hn = m
        return hn, hn, cn, (x, h, c, i, fg, g, zg, o, a, cn, c_pre, m, hp)

    # backward of one step: gradients of its new h and c -> (dx, dh_prev, dc_prev), grads added
    def backward(self, cache, dh, dc, gr):
        _, df = self.act
        H = self.H
        if self.kind == "rnn":
            x, h, z, y = cache
            dz = dh * df(y, z)
            self._weights_grad(gr, dz, x, h)
            return dz @ self.w_ih, dz @ self.w_hh, None
        if self.kind == "gru":
            x, h, r, u, q, zc, n = cache
            du = dh * (h - n)
            dn = dh * (1 - u)
            dhp = dh * u
            dzc = dn * df(n, zc)
            dq = dzc @ self.w_hh[2 * H:]
            dr = dq * h
            dhp = dhp + dq * r
            dzr, dzu = dr * r * (1 - r), du * u * (1 - u)
            dzru = np.concatenate([dzr, dzu], 1)
            dhp = dhp + dzru @ self.w_hh[:2 * H]
            dz = np.concatenate([dzru, dzc], 1)
            dx = dz @ self.w_ih
            gr.dw_ih += dz.T @ x
            gr.dw_hh[:2 * H] += dzru.T @ h
            gr.dw_hh[2 * H:] += dzc.T @ q
            gr.db_ih += dz.sum(0)
            return dx, dhp, None
        x, h, c, i, fg, g, zg, o, a, cn, c_pre, m, hp = cache
        if self.w_hr is not None:
            dhp = dh * _clip_mask(hp, self.proj_clip) if self.proj_clip else dh
            dm = dhp @ self.w_hr
            gr.dw_hr += dhp.T @ m
        else:
            dm = dh
        do = dm * a
        dcn = dc + dm * o * df(a, cn)
        dzo = do * o * (1 - o)
        p = self.w_peep
        if p is not None:
            dcn = dcn + dzo * p[2]
            gr.dw_peep[2] += (dzo * cn).sum(0)
        if self.cell_clip:
            dcn = dcn * _clip_mask(c_pre, self.cell_clip)
        dzi = dcn * g * i * (1 - i)
        dzf = dcn * c * fg * (1 - fg)
        dzg = dcn * i * df(g, zg)
        dcp = dcn * fg
        if p is not None:
            dcp = dcp + dzi * p[0] + dzf * p[1]
            gr.dw_peep[0] += (dzi * c).sum(0)
            gr.dw_peep[1] += (dzf * c).sum(0)
        dz = np.concatenate([dzi, dzf, dzg, dzo], 1)
        self._weights_grad(gr, dz, x, h)
        return dz @ self.w_ih, dz @ self.w_hh, dcp

    @staticmethod
    def _weights_grad(gr, dz, x, h):
        gr.dw_ih += dz.T @ x
        gr.dw_hh += dz.T @ h
        gr.db_ih += dz.sum(0)


class SlowCache:
    """What the step path's backward needs: the steps' caches and masks."""

    def __init__(self, cell, steps, shape, lengths, reverse, masks, has_c):
        self.cell, self.steps, self.shape = cell, steps, shape
        self.lengths, self.reverse, self.masks, self.has_c = lengths, reverse, masks, has_c


def _mask_at(mask, s):
    return None if mask is None else mask[0 if mask.shape[0] == 1 else s]


def run(cell, x, lengths, h0, c0, reverse, training, masks=(None, None)):
    """x [T, N, C] -> (y [T, N, R], h_n, c_n, SlowCache or None). masks: state dropout (h mask,
    c mask), each None or [T or 1, N, width], multiplied into the state each step passes on."""
    T, N, _ = x.shape
    dt = x.dtype
    R = cell.w_hh.shape[1]
    L = np.full(N, T, np.int64) if lengths is None else lengths
    lstm = cell.kind == "lstm"
    h = np.zeros((N, R), dt) if h0 is None else h0.copy()
    c = (np.zeros((N, cell.H), dt) if c0 is None else c0.copy()) if lstm else None
    y = np.zeros((T, N, R), dt)
    rows = np.arange(N)
    steps = []
    for s in range(int(L.max()) if N else 0):
        active = s < L
        t = np.where(active, L - 1 - s if reverse else s, 0)
        out, hn, cn, cache = cell.forward(np.ascontiguousarray(x[t, rows]), h, c)
        mh, mc = _mask_at(masks[0], s), _mask_at(masks[1], s)
        if mh is not None:
            hn = hn * mh
        if mc is not None:
            cn = cn * mc
        a = active[:, None]
        y[t[active], rows[active]] = out[active]
        h = np.where(a, hn, h)
        if lstm:
            c = np.where(a, cn, c)
        if training:
            steps.append((cache, active, t))
    sc = SlowCache(cell, steps, x.shape, L, reverse, masks, lstm) if training else None
    return y, h, c, sc


def backward(sc, dy, dh_n, dc_n):
    """Gradients of a run: a namespace like the kernels' (dx, dh0, dc0, dw_ih, dw_hh, db_ih,
    dw_peep, dw_hr)."""
    cell = sc.cell
    T, N, C = sc.shape
    dt = cell.w_ih.dtype
    R, H = cell.w_hh.shape[1], cell.H
    gr = SimpleNamespace(dw_ih=np.zeros_like(cell.w_ih), dw_hh=np.zeros_like(cell.w_hh),
                         db_ih=np.zeros_like(cell.b),
                         dw_peep=None if cell.w_peep is None else np.zeros_like(cell.w_peep),
                         dw_hr=None if cell.w_hr is None else np.zeros_like(cell.w_hr))
    dh = np.zeros((N, R), dt) if dh_n is None else dh_n.copy()
    dc = (np.zeros((N, H), dt) if dc_n is None else dc_n.copy()) if sc.has_c else None
    dx = np.zeros((T, N, C), dt)
    rows = np.arange(N)
    for s in range(len(sc.steps) - 1, -1, -1):
        cache, active, t = sc.steps[s]
        a = active[:, None]
        mh, mc = _mask_at(sc.masks[0], s), _mask_at(sc.masks[1], s)
        # the state this step passed on was (h_new * mh, c_new * mc); its output was h_new
        dhn = dh * mh if mh is not None else dh
        if dy is not None:
            dhn = dhn + dy[t, rows]
        dhn = np.where(a, dhn, 0)
        dcn = None
        if dc is not None:
            dcn = np.where(a, dc * mc if mc is not None else dc, 0)
        dxs, dhp, dcp = cell.backward(cache, dhn, dcn, gr)
        dx[t[active], rows[active]] = dxs[active]
        dh = np.where(a, dhp, dh)
        if dc is not None:
            dc = np.where(a, dcp, dc)
    gr.dx, gr.dh0, gr.dc0 = dx, dh, dc
    return gr
