"""Functional API over the regularised / normalised LSTM and GRU kernels
(``cpp/include/fusedrnn/lstm_ln.h``): ``lstm_ln_forward``, ``lstm_ln_backward``, ``gru_ln_forward``
and ``gru_ln_backward``, with the names, signatures and results of
:mod:`fusedrnn.reference_reg`, the NumPy specification (its docstring has the equations).

Every argument is checked before any work; arrays are used as given (dtype of x, C order), never
cast or copied (a non-contiguous array is refused, as in :mod:`fusedrnn.functional`). The training
cache keeps references to x, the weights and the masks (a copy of ``lengths``): do not modify them
before the backward.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import _core
from .functional import (_check_flag, _check_lengths, _check_projected_weights, _threads,
                         _workspace)
from .reference_reg import GRU_LAYER_NORMS, LAYER_NORMS

__all__ = ["lstm_ln_forward", "lstm_ln_backward", "gru_ln_forward", "gru_ln_backward",
           "LAYER_NORMS", "GRU_LAYER_NORMS"]


def _arr(fn, name, a, shape, dtype, optional=True):
    if a is None:
        if optional:
            return None
        raise ValueError(f"{fn}: {name} is required")
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy array of shape {list(shape)}, "
                        f"got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{fn}: {name} must have dtype {np.dtype(dtype).name} (x's), "
                        f"got {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"{fn}: {name} must have shape {list(shape)}, got {list(a.shape)}")
    if not a.flags.c_contiguous:  # as fusedrnn.functional: never a silent copy
        raise ValueError(f"{fn}: {name} must be C-contiguous (use np.ascontiguousarray)")
    return a


def check_probability(fn, name, p):
    """p in [0, 1) as a float; a ValueError naming the option otherwise."""
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
        raise ValueError(f"{fn}: {name} must be a number in [0, 1), got {p!r}")
    return float(p)


class _Cache:
    __slots__ = ("cell", "args", "buf", "dims", "reverse")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)

    def __repr__(self):
        return f"<{self.cell} cache dims={self.dims}>"


_CELLS = {  # name: (gates, has a cell state, layer-norm modes)
    "lstm_ln": (4, True, LAYER_NORMS),
    "gru_ln": (3, False, GRU_LAYER_NORMS),
}


def _forward(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, layer_norm, ln_eps, ln, zoneout_h_mask,
             zoneout_c_mask, zoneout_h, zoneout_c, zoneout_seed, recurrent_mask, lengths,
             reverse, training, gate_masks=False, input_mask=None, w_hr=None):
    fn = cell + "_forward"
    G, lstm, modes = _CELLS[cell]
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64) or x.ndim != 3:
        raise ValueError(f"{fn}: x must be a float32 or float64 numpy array [T, N, C]")
    if min(x.shape) < 1:
        raise ValueError(f"{fn}: x must have T, N, C >= 1, got {list(x.shape)}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{fn}: x must be C-contiguous (use np.ascontiguousarray)")
    reverse = _check_flag(fn, "reverse", reverse)
    training = _check_flag(fn, "training", training)
    T, N, C = x.shape
    dt = x.dtype
    if layer_norm not in modes:
        raise ValueError(f"{fn}: layer_norm must be one of {modes}, got {layer_norm!r}")
    P = 0
    if w_hr is not None:   # the LSTM's projection w_hr [P, H] gives P and H (the plain
        # kernels' checks: w_hr's type, shape and P < H, then w_hh [4H, P] and w_ih [4H, C])
        *_, H, P = _check_projected_weights(fn, x, w_ih, w_hh, w_hr)
    elif not isinstance(w_hh, np.ndarray) or w_hh.ndim != 2 or w_hh.shape[0] % G \
            or w_hh.shape[0] // G != w_hh.shape[1] or w_hh.shape[1] < 1:
        raise ValueError(f"{fn}: w_hh must be a numpy array [{G}H, H], got "
                         f"{getattr(w_hh, 'shape', type(w_hh).__name__)}")
    else:
        H = w_hh.shape[1]
    R = P or H   # the width of h (the projection's P)
    GH = G * H
    if not isinstance(gate_masks, (bool, np.bool_)):
        raise ValueError(f"{fn}: gate_masks must be True or False, got {gate_masks!r}")
    if input_mask is not None and not gate_masks:
        raise ValueError(f"{fn}: input_mask needs gate_masks=True (one mask per gate block; a "
                         f"mask shared by the blocks is the caller's scaling of x)")
    a = dict(
        w_ih=_arr(fn, "w_ih", w_ih, (GH, C), dt, False),
        w_hh=_arr(fn, "w_hh", w_hh, (GH, R), dt, False),
        b_ih=_arr(fn, "b_ih", b_ih, (GH,), dt), b_hh=_arr(fn, "b_hh", b_hh, (GH,), dt),
        h0=_arr(fn, "h0", h0, (N, R), dt),
        zoneout_h_mask=_arr(fn, "zoneout_h_mask", zoneout_h_mask, (T, N, R), dt),
        recurrent_mask=_arr(fn, "recurrent_mask", recurrent_mask,
                            (G, N, R) if gate_masks else (N, R), dt),
        input_mask=_arr(fn, "input_mask", input_mask, (G, N, C), dt),
        **{k: _arr(fn, k, v, (H if k.endswith("_c") else GH,), dt) for k, v in ln.items()})
    zoneout_h = check_probability(fn, "zoneout_h", zoneout_h)
    extra = {"gate_masks": bool(gate_masks)}
    if zoneout_seed is not None:  # the kernel draws the masks (reference_reg.zoneout_masks)
        if isinstance(zoneout_seed, (bool, np.bool_)) or not isinstance(
                zoneout_seed, numbers.Integral) or not 0 <= zoneout_seed < 2**64:
            raise ValueError(f"{fn}: zoneout_seed must be None or an integer in [0, 2^64), "
                             f"got {zoneout_seed!r}")
        if not training:
            raise ValueError(f"{fn}: zoneout_seed draws training masks; evaluation uses the "
                             f"probabilities (training=False without zoneout_seed)")
        extra.update(zoneout_draw=True, zoneout_seed=int(zoneout_seed))
    if P:
        a["w_hr"] = _arr(fn, "w_hr", w_hr, (P, H), dt, False)
    if lstm:
        a.update(c0=_arr(fn, "c0", c0, (N, H), dt),
                 zoneout_c_mask=_arr(fn, "zoneout_c_mask", zoneout_c_mask, (T, N, H), dt))
        extra["zoneout_c"] = check_probability(fn, "zoneout_c", zoneout_c)
    if isinstance(ln_eps, (bool, np.bool_)) or not isinstance(ln_eps, numbers.Real) \
            or not 0 < ln_eps < np.inf:
        raise ValueError(f"{fn}: ln_eps must be a finite number > 0, got {ln_eps!r}")
    lengths = _check_lengths(fn, lengths, N, T)  # a checked int64 copy (the cache keeps it)
    dims = (T, N, C, H, P) if P else (T, N, C, H)
    cache_n, ws_n, _ = getattr(_core, cell + "_sizes")(dims)
    y = np.empty((T, N, R), dt)
    out = dict(h_n=np.empty((N, R), dt))
    if lstm:
        out["c_n"] = np.empty((N, H), dt)
    buf = np.empty(cache_n, dt) if training else None
    getattr(_core, fn)(dims, x=x, **a, layer_norm=layer_norm, ln_eps=float(ln_eps),
                       zoneout_h=zoneout_h, **extra, lengths=lengths, y=y, **out, cache=buf,
                       workspace=_workspace(ws_n, dt), reverse=reverse,
                       num_threads=_threads())
    cache = None
    if training:
        a.update(x=x, layer_norm=layer_norm, zoneout_h=zoneout_h, lengths=lengths, **extra)
        cache = _Cache(cell=cell, args=a, buf=buf, dims=dims, reverse=reverse)
    return (y, *out.values(), cache)


def _backward(cell, cache, dy, dh_n, dc_n, input_grad=True):
    fn = cell + "_backward"
    input_grad = _check_flag(fn, "input_grad", input_grad)
    G, lstm, _ = _CELLS[cell]
    if not isinstance(cache, _Cache) or cache.cell != cell:
        raise ValueError(f"{fn}: cache must come from regularised.{cell}_forward("
                         f"training=True)")
    a, (T, N, C, H), P = cache.args, cache.dims[:4], (cache.dims[4:] or (0,))[0]
    GH, R = G * H, P or H
    dt = a["x"].dtype
    cot = dict(dy=_arr(fn, "dy", dy, (T, N, R), dt), dh_n=_arr(fn, "dh_n", dh_n, (N, R), dt))
    ln = a["layer_norm"] != "none"
    z = lambda shape: np.zeros(shape, dt)  # noqa: E731
    g = dict(dx=np.empty((T, N, C), dt) if input_grad else None,
             dh0=np.empty((N, R), dt) if a["h0"] is not None else None,
             dw_ih=z((GH, C)), dw_hh=z((GH, R)),
             db_ih=z(GH) if a["b_ih"] is not None else None,
             db_hh=z(GH) if a["b_hh"] is not None else None,
             dln_gamma_ih=z(GH) if ln else None,
             dln_beta_ih=z(GH) if a["ln_beta_ih"] is not None else None,
             dln_gamma_hh=z(GH) if ln else None,
             dln_beta_hh=z(GH) if a["ln_beta_hh"] is not None else None)
    keep = ["x", "w_ih", "w_hh", "layer_norm", "ln_gamma_ih", "ln_gamma_hh", "zoneout_h_mask",
            "zoneout_h", "recurrent_mask", "input_mask", "gate_masks", "lengths"] + \
        [k for k in ("zoneout_draw", "zoneout_seed") if k in a]
    if lstm:
        cot["dc_n"] = _arr(fn, "dc_n", dc_n, (N, H), dt)
        g.update(dc0=np.empty((N, H), dt) if a["c0"] is not None else None,
                 dln_gamma_c=z(H) if ln else None,
                 dln_beta_c=z(H) if a["ln_beta_c"] is not None else None)
        keep += ["ln_gamma_c", "zoneout_c_mask", "zoneout_c"]
        if P:
            keep.append("w_hr")
            g["dw_hr"] = z((P, H))
    if lstm and not P:
        g["dw_hr"] = None   # (the reference's key: no projection)
    ws_n = getattr(_core, cell + "_sizes")(cache.dims)[2]
    getattr(_core, fn)(cache.dims, **{k: a[k] for k in keep}, cache=cache.buf, **cot,
                       workspace=_workspace(ws_n, dt), reverse=cache.reverse,
                       num_threads=_threads(), **g)
    return g


def lstm_ln_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *,
                    layer_norm="none", ln_eps=1e-5, ln_gamma_ih=None, ln_beta_ih=None,
                    ln_gamma_hh=None, ln_beta_hh=None, ln_gamma_c=None, ln_beta_c=None,
                    zoneout_h_mask=None, zoneout_c_mask=None, zoneout_h=0.0, zoneout_c=0.0,
                    zoneout_seed=None, recurrent_mask=None, lengths=None, reverse=False,
                    training=True, gate_masks=False, input_mask=None, w_hr=None):
    """The fused kernel of :func:`fusedrnn.reference_reg.lstm_ln_forward`.
    Returns (y, h_n, c_n, cache or None). zoneout_seed (training): the kernel draws the zoneout
    masks itself (reference_reg.zoneout_masks), in forward and backward, storing none. w_hr
    [P, H]: the projection (h, y, h0, the zoneout and recurrent masks of h are then P wide)."""
    ln = dict(ln_gamma_ih=ln_gamma_ih, ln_beta_ih=ln_beta_ih, ln_gamma_hh=ln_gamma_hh,
              ln_beta_hh=ln_beta_hh, ln_gamma_c=ln_gamma_c, ln_beta_c=ln_beta_c)
    return _forward("lstm_ln", x, w_ih, w_hh, b_ih, b_hh, h0, c0, layer_norm, ln_eps, ln,
                    zoneout_h_mask, zoneout_c_mask, zoneout_h, zoneout_c, zoneout_seed,
                    recurrent_mask, lengths, reverse, training, gate_masks, input_mask, w_hr)


def lstm_ln_backward(cache, dy=None, dh_n=None, dc_n=None, *, input_grad=True):
    """Gradients as :func:`fusedrnn.reference_reg.lstm_ln_backward` (a dict); its "dx" is None
    with ``input_grad=False`` (not computed)."""
    return _backward("lstm_ln", cache, dy, dh_n, dc_n, input_grad)


def gru_ln_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, layer_norm="none",
                   ln_eps=1e-5, ln_gamma_ih=None, ln_beta_ih=None, ln_gamma_hh=None,
                   ln_beta_hh=None, zoneout_h_mask=None, zoneout_h=0.0, zoneout_seed=None,
                   recurrent_mask=None, lengths=None, reverse=False, training=True,
                   gate_masks=False, input_mask=None):
    """The fused kernel of :func:`fusedrnn.reference_reg.gru_ln_forward` (reset_after;
    layer_norm 'none' or 'haste'). Returns (y, h_n, cache or None)."""
    ln = dict(ln_gamma_ih=ln_gamma_ih, ln_beta_ih=ln_beta_ih, ln_gamma_hh=ln_gamma_hh,
              ln_beta_hh=ln_beta_hh)
    return _forward("gru_ln", x, w_ih, w_hh, b_ih, b_hh, h0, None, layer_norm, ln_eps, ln,
                    zoneout_h_mask, None, zoneout_h, 0.0, zoneout_seed, recurrent_mask, lengths,
                    reverse, training, gate_masks, input_mask)


def gru_ln_backward(cache, dy=None, dh_n=None, *, input_grad=True):
    """Gradients as :func:`fusedrnn.reference_reg.gru_ln_backward` (a dict); its "dx" is None
    with ``input_grad=False`` (not computed)."""
    return _backward("gru_ln", cache, dy, dh_n, None, input_grad)
