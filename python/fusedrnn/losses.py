"""Loss functions for training with fusedrnn: each returns ``(loss, grad)``.

``loss`` is the reduced loss as a Python float (for ``reduction="none"`` the per-position loss
array) and ``grad`` is d loss / d input, an array of the input's shape and dtype, ready to pass
to a module's ``backward``. For ``reduction="none"`` the gradient is that of the *sum* of the
per-position losses.

Sequence losses select their valid positions with either

* ``lengths`` [N] (integers in [0, T]): for input laid out ``[T, N, ...]`` (``time_axis=0``,
  time-major, the default) or ``[N, T, ...]`` (``time_axis=1``), position (t, n) is valid when
  ``t < lengths[n]``; or
* ``mask``: a boolean array (or an integer/float array holding only 0 and 1) over the positions,
  True/1 where valid.

``mask`` and ``lengths`` are mutually exclusive. Invalid positions contribute nothing: their loss
is 0, their gradient is 0, their targets are not looked at (padding may hold any value), and
``"mean"`` divides by the number of valid positions only. When no position is valid, the loss is
0.0 and the gradient zero (torch returns nan for an empty mean).

Everything is computed in the input's dtype (float32 or float64); nothing is cast. Every
argument is checked before any work: TypeError for a wrong type or dtype, ValueError for a wrong
shape or value.
"""
from __future__ import annotations

import numbers
from typing import Optional, Tuple, Union

import numpy as np

from . import validators as V

__all__ = [
    "softmax", "log_softmax", "cross_entropy", "cross_entropy_last", "mse",
    "last_step", "scatter_last_step",
]

_REDUCTIONS = ("mean", "sum", "none")
Loss = Union[float, np.ndarray]


# -- argument checks -----------------------------------------------------------------------------
def _refuse_masked(fn: str, name: str, x) -> None:
    """A numpy masked array's mask is not a loss mask: the losses would read every element (a
    cross-entropy over the padding too); refused, pointing to lengths= / mask=."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{fn}: {name} is a numpy masked array, whose mask the loss would "
                        f"ignore; pass a plain array (x.data) and give the valid positions "
                        f"with lengths= or mask= where the loss takes them")


def _float_array(fn: str, name: str, x, shape_hint: str) -> np.ndarray:
    _refuse_masked(fn, name, x)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{fn}: {name} must be a float32 or float64 numpy array {shape_hint}, "
                        f"got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{fn}: {name} must have dtype float32 or float64, got {x.dtype}")
    return x


def _int_array(fn: str, name: str, x, shape: Tuple[int, ...]) -> np.ndarray:
    """An integer numpy array of exactly ``shape`` (lists of ints are accepted for lengths)."""
    _refuse_masked(fn, name, x)
    if isinstance(x, (list, tuple)):
        if any(isinstance(v, (bool, np.bool_)) for v in x):   # (np.asarray makes True an int)
            raise TypeError(f"{fn}: {name} must hold integers, got a bool in {list(x)!r}")
        x = np.asarray(x)
        if x.size == 0:
            x = x.astype(np.int64)
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iu":
        what = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
        raise TypeError(f"{fn}: {name} must be an integer numpy array of shape {list(shape)}, "
                        f"got {what}")
    if x.shape != tuple(shape):
        raise ValueError(f"{fn}: {name} must have shape {list(shape)}, got {list(x.shape)}")
    return x


def _reduction(fn: str, reduction) -> str:
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {list(_REDUCTIONS)}, got {reduction!r}")
    return reduction


def _time_axis(fn: str, time_axis) -> int:
    if isinstance(time_axis, (bool, np.bool_)) or not isinstance(time_axis, numbers.Integral) \
            or time_axis not in (0, 1):
        raise ValueError(f"{fn}: time_axis must be 0 ([T, N, ...]) or 1 ([N, T, ...]), "
                         f"got {time_axis!r}")
    return int(time_axis)


def _lengths(fn: str, lengths, T: int, N: int, *, minimum: int = 0) -> np.ndarray:
    lengths = _int_array(fn, "lengths", lengths, (N,))
    if N and (lengths.min() < minimum or lengths.max() > T):
        raise ValueError(f"{fn}: lengths must lie in [{minimum}, {T}] (T={T}), got min "
                         f"{lengths.min()} max {lengths.max()}")
    return lengths.astype(np.int64, copy=False)


def _mask(fn: str, mask, want: str, ok_shape) -> np.ndarray:
    """A boolean copy/view of a bool or 0/1 mask; ``ok_shape(shape)`` says if its shape fits."""
    _refuse_masked(fn, "mask", mask)
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{fn}: mask must be a numpy array (bool, or 0/1 numbers) of shape "
                        f"{want}, got {type(mask).__name__}")
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"{fn}: mask must have dtype bool (or integer/float holding 0 and 1), "
                        f"got {mask.dtype}")
    if not ok_shape(mask.shape):
        raise ValueError(f"{fn}: mask must have shape {want}, got {list(mask.shape)}")
    if mask.dtype.kind == "b":
        return mask
    if not np.all((mask == 0) | (mask == 1)):
        raise ValueError(f"{fn}: mask must hold only 0 and 1 (or be boolean)")
    return mask != 0


def _valid_positions(fn: str, pos_shape: Tuple[int, ...], mask, lengths, time_axis: int,
                     *, mask_prefix: bool = False) -> Optional[np.ndarray]:
    """Boolean array over the leading axes (None: all valid).

    For ``lengths`` the result has shape [T, N] (or [N, T]); for ``mask`` its own shape, which is
    ``pos_shape`` or (``mask_prefix``) a leading prefix of it.
    """
    if mask is not None and lengths is not None:
        raise ValueError(f"{fn}: give mask or lengths, not both (they are mutually exclusive)")
    if lengths is not None:
        if len(pos_shape) < 2:
            raise ValueError(f"{fn}: lengths needs input with a time and a batch axis "
                             f"([T, N, ...] or [N, T, ...]), got shape {list(pos_shape)}")
        T, N = pos_shape[time_axis], pos_shape[1 - time_axis]
        lengths = _lengths(fn, lengths, T, N)
        valid = np.arange(T)[:, None] < lengths[None, :]          # [T, N]
        return valid if time_axis == 0 else valid.T
    if mask is not None:
        def ok(shape) -> bool:
            if mask_prefix:
                return 1 <= len(shape) <= len(pos_shape) and shape == pos_shape[:len(shape)]
            return shape == pos_shape

        want = f"{list(pos_shape)}" + (" or a leading part of it" if mask_prefix else "")
        return _mask(fn, mask, want, ok)
    return None


def _check_ce_options(fn: str, reduction, ignore_index, label_smoothing):
    reduction = _reduction(fn, reduction)
    if ignore_index is not None and (isinstance(ignore_index, (bool, np.bool_))
                                     or not isinstance(ignore_index, numbers.Integral)):
        raise TypeError(f"{fn}: ignore_index must be an integer or None, got {ignore_index!r}")
    if isinstance(label_smoothing, (bool, np.bool_)) \
            or not isinstance(label_smoothing, numbers.Real) \
            or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{fn}: label_smoothing must be a number in [0, 1], "
                         f"got {label_smoothing!r}")
    return reduction, (None if ignore_index is None else int(ignore_index)), \
        float(label_smoothing)


def _check_targets_in_range(fn: str, targets: np.ndarray, valid: Optional[np.ndarray], K: int):
    sel = targets if valid is None else targets[valid]
    if sel.size == 0:
        return
    lo, hi = sel.min(), sel.max()
    if lo < 0 or hi >= K:
        nbad = int(np.count_nonzero((sel < 0) | (sel >= K)))
        raise ValueError(f"{fn}: targets must lie in [0, {K}) at valid positions; {nbad} of "
                         f"{sel.size} valid positions are out of range (min {lo}, max {hi})")


# -- softmax -------------------------------------------------------------------------------------
def _axis(fn: str, axis, ndim: int) -> int:
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral) \
            or not -ndim <= axis < ndim:
        raise ValueError(f"{fn}: axis must be an integer in [{-ndim}, {ndim}), got {axis!r}")
    return int(axis)


def _logits_axis(fn: str, logits, axis: int) -> int:
    """softmax / log_softmax: logits a float array with at least one axis; axis normalised."""
    _float_array(fn, "logits", logits, "[..., K]")
    if logits.ndim == 0:
        raise ValueError(f"{fn}: logits must have at least one axis, got a 0-d array")
    return _axis(fn, axis, logits.ndim)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """softmax(z)_k = exp(z_k - m) / sum_j exp(z_j - m), m = max_j z_j (stable for any |z|)."""
    axis = _logits_axis("softmax", logits, axis)
    if logits.shape[axis] == 0:     # (an empty result, as torch's; max() has no identity)
        return logits.copy()
    e = logits - logits.max(axis=axis, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """log_softmax(z)_k = (z_k - m) - log sum_j exp(z_j - m), m = max_j z_j (stable)."""
    axis = _logits_axis("log_softmax", logits, axis)
    if logits.shape[axis] == 0:     # (an empty result, as torch's; max() has no identity)
        return logits.copy()
    shifted = logits - logits.max(axis=axis, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    shifted -= lse
    return shifted


# -- cross-entropy -------------------------------------------------------------------------------
def _ce_core(logits: np.ndarray, targets: np.ndarray, valid: Optional[np.ndarray],
             reduction: str, label_smoothing: float) -> Tuple[Loss, np.ndarray]:
    """Checked inputs; ``valid`` (bool over logits.shape[:-1], or None) already excludes
    ignore_index and holds only in-range targets."""
    K = logits.shape[-1]
    pos_shape = logits.shape[:-1]
    z = logits.reshape(-1, K)
    t = targets.reshape(-1)
    v = None if valid is None else valid.reshape(-1)
    if v is not None:
        t = np.where(v, t, 0)                  # invalid targets may be anything: park them on 0
    rows = np.arange(z.shape[0])
    t = t.astype(np.intp, copy=False)

    g = z - z.max(axis=1, keepdims=True)       # z - m, the only array of logits' size
    shifted_t = g[rows, t]                     # z_y - m
    shifted_sum = g.sum(axis=1) if label_smoothing else None
    np.exp(g, out=g)
    s = g.sum(axis=1)
    log_s = np.log(s)                          # lse - m
    per = log_s - shifted_t                    # -log p_y
    if label_smoothing:
        eps = label_smoothing
        smooth = log_s * K - shifted_sum       # -sum_k log p_k
        per *= 1.0 - eps
        per += smooth * (eps / K)
    g /= s[:, None]                            # p
    g[rows, t] -= 1.0 - label_smoothing
    if label_smoothing:
        g -= label_smoothing / K
    if v is not None:
        per[~v] = 0
        g[~v] = 0
    return _reduce(per.reshape(pos_shape), g.reshape(logits.shape), reduction,
                   int(per.size if v is None else np.count_nonzero(v)))


def _reduce(per: np.ndarray, g: np.ndarray, reduction: str, n: int) -> Tuple[Loss, np.ndarray]:
    if reduction == "none":
        return per, g
    total = per.sum()
    if reduction == "sum":
        return float(total), g
    if n == 0:
        return 0.0, g
    g *= 1.0 / n
    return float(total / per.dtype.type(n)), g


def cross_entropy(logits: np.ndarray, targets: np.ndarray, *, mask: Optional[np.ndarray] = None,
                  lengths=None, time_axis: int = 0, reduction: str = "mean",
                  ignore_index: Optional[int] = None,
                  label_smoothing: float = 0.0) -> Tuple[Loss, np.ndarray]:
    """Softmax cross-entropy over the last axis; returns ``(loss, dloss/dlogits)``.

    logits [..., K] float32/float64; targets integer array of shape ``logits.shape[:-1]``.
    With p = softmax(z) and smoothing eps, the loss at one position with target y is

        l = -(1 - eps) log p_y - (eps / K) sum_k log p_k
        dl/dz_k = p_k - (1 - eps) [k == y] - eps / K

    (torch.nn.functional.cross_entropy, ``label_smoothing`` included).

    Valid positions: all, or those selected by ``mask`` (shape logits.shape[:-1]) or
    ``lengths`` [N] (3-D logits only: ``[T, N, K]`` for ``time_axis=0``, ``[N, T, K]`` for
    ``time_axis=1``), minus positions whose target equals ``ignore_index`` (None: ignore none;
    torch's default is -100). Targets at valid positions must lie in [0, K).

    reduction: ``"mean"`` (sum over valid positions / their number, torch's semantics with
    ignore_index), ``"sum"``, or ``"none"`` (per-position losses, shape logits.shape[:-1], zero at
    invalid positions; the gradient is that of their sum).
    """
    fn = "cross_entropy"
    _float_array(fn, "logits", logits, "[..., K]")
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(f"{fn}: logits must have shape [..., K] with K >= 1, "
                         f"got {list(logits.shape)}")
    pos_shape = logits.shape[:-1]
    targets = _int_array(fn, "targets", targets, pos_shape)
    time_axis = _time_axis(fn, time_axis)
    reduction, ignore_index, label_smoothing = _check_ce_options(
        fn, reduction, ignore_index, label_smoothing)
    if lengths is not None and logits.ndim != 3:
        raise ValueError(f"{fn}: lengths needs 3-D logits [T, N, K] (time_axis=0) or [N, T, K] "
                         f"(time_axis=1), got shape {list(logits.shape)}")
    valid = _valid_positions(fn, pos_shape, mask, lengths, time_axis)
    if ignore_index is not None:
        keep = targets != ignore_index
        valid = keep if valid is None else (valid & keep)
    _check_targets_in_range(fn, targets, valid, logits.shape[-1])
    return _ce_core(logits, targets, valid, reduction, label_smoothing)


# -- last valid step ---------------------------------------------------------------------------
def _seq_shape(fn: str, name: str, x, time_axis: int) -> Tuple[int, int]:
    _refuse_masked(fn, name, x)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy array [T, N, ...] (time_axis=0) or "
                        f"[N, T, ...] (time_axis=1), got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{fn}: {name} must have at least 2 axes ([T, N, ...] or [N, T, ...]), "
                         f"got shape {list(x.shape)}")
    return x.shape[time_axis], x.shape[1 - time_axis]


def _last_index(lengths: Optional[np.ndarray], T: int, N: int) -> np.ndarray:
    if lengths is None:
        return np.full(N, T - 1, dtype=np.intp)
    return (lengths - 1).astype(np.intp, copy=False)


def last_step(x: np.ndarray, lengths=None, *, time_axis: int = 0) -> np.ndarray:
    """The entry of each sequence at its last valid step.

    x [T, N, ...] (time_axis=0) or [N, T, ...] (time_axis=1); lengths [N] integers in [1, T]
    (None: all T). Returns y [N, ...] with y[n] = x[lengths[n] - 1, n] (a fresh array, x's
    dtype). Its backward is :func:`scatter_last_step`.
    """
    fn = "last_step"
    time_axis = _time_axis(fn, time_axis)
    T, N = _seq_shape(fn, "x", x, time_axis)
    if lengths is not None:
        lengths = _lengths(fn, lengths, T, N, minimum=1)
    elif T == 0:
        raise ValueError(f"{fn}: x has no time steps (T=0)")
    idx = _last_index(lengths, T, N)
    cols = np.arange(N)
    return x[idx, cols] if time_axis == 0 else x[cols, idx]


def scatter_last_step(d: np.ndarray, lengths, T: int, *, time_axis: int = 0) -> np.ndarray:
    """Backward of :func:`last_step`: d [N, ...] -> dx [T, N, ...] (or [N, T, ...] for
    time_axis=1), zero everywhere except dx[lengths[n] - 1, n] = d[n]. lengths None: all T."""
    fn = "scatter_last_step"
    time_axis = _time_axis(fn, time_axis)
    _refuse_masked(fn, "d", d)
    if not isinstance(d, np.ndarray):
        raise TypeError(f"{fn}: d must be a numpy array [N, ...], got {type(d).__name__}")
    if d.ndim < 1:
        raise ValueError(f"{fn}: d must have shape [N, ...], got a 0-d array")
    T, N = V.positive_int(fn, "T", T), d.shape[0]
    if lengths is not None:
        lengths = _lengths(fn, lengths, T, N, minimum=1)
    idx = _last_index(lengths, T, N)
    cols = np.arange(N)
    if time_axis == 0:
        dx = np.zeros((T,) + d.shape, dtype=d.dtype)
        dx[idx, cols] = d
    else:
        dx = np.zeros((N, T) + d.shape[1:], dtype=d.dtype)
        dx[cols, idx] = d
    return dx


def cross_entropy_last(logits_seq: np.ndarray, targets: np.ndarray, lengths=None, *,
                       time_axis: int = 0, reduction: str = "mean",
                       ignore_index: Optional[int] = None,
                       label_smoothing: float = 0.0) -> Tuple[Loss, np.ndarray]:
    """Sequence classification: cross-entropy at each sequence's last valid step.

    logits_seq [T, N, K] (time_axis=0) or [N, T, K] (time_axis=1); targets [N] integers;
    lengths [N] in [1, T] (None: all T). The loss is :func:`cross_entropy` of
    ``last_step(logits_seq, lengths)`` [N, K] against targets (same reduction, ignore_index and
    label_smoothing); the gradient has logits_seq's shape, zero except at the last valid steps.
    """
    fn = "cross_entropy_last"
    _float_array(fn, "logits_seq", logits_seq, "[T, N, K]")
    time_axis = _time_axis(fn, time_axis)
    if logits_seq.ndim != 3 or logits_seq.shape[2] == 0:
        raise ValueError(f"{fn}: logits_seq must have shape [T, N, K] (time_axis=0) or [N, T, K] "
                         f"(time_axis=1) with K >= 1, got {list(logits_seq.shape)}")
    T, N, K = logits_seq.shape[time_axis], logits_seq.shape[1 - time_axis], logits_seq.shape[2]
    targets = _int_array(fn, "targets", targets, (N,))
    reduction, ignore_index, label_smoothing = _check_ce_options(
        fn, reduction, ignore_index, label_smoothing)
    if lengths is not None:
        lengths = _lengths(fn, lengths, T, N, minimum=1)
    elif T == 0:
        raise ValueError(f"{fn}: logits_seq has no time steps (T=0)")
    valid = None if ignore_index is None else targets != ignore_index
    _check_targets_in_range(fn, targets, valid, K)
    idx = _last_index(lengths, T, N)
    cols = np.arange(N)
    last = logits_seq[idx, cols] if time_axis == 0 else logits_seq[cols, idx]
    loss, g = _ce_core(last, targets, valid, reduction, label_smoothing)
    grad = np.zeros_like(logits_seq)
    if time_axis == 0:
        grad[idx, cols] = g
    else:
        grad[cols, idx] = g
    return loss, grad


# -- mean squared error --------------------------------------------------------------------------
def mse(pred: np.ndarray, target: np.ndarray, *, mask: Optional[np.ndarray] = None,
        lengths=None, reduction: str = "mean", time_axis: int = 0) -> Tuple[Loss, np.ndarray]:
    """Squared error; returns ``(loss, dloss/dpred)``.

        l_i = (pred_i - target_i)^2,   mean: L = (1/n) sum_valid l_i,  dL/dpred_i = 2 (pred_i -
        target_i) / n

    pred and target: same shape and dtype (float32/float64). Without mask/lengths this is
    torch.nn.functional.mse_loss. ``mask`` has pred's shape or a leading part of it (e.g. [T, N]
    for pred [T, N, F], broadcast over the trailing axes); ``lengths`` [N] selects steps of
    pred [T, N, ...] (time_axis=0) or [N, T, ...] (time_axis=1), all trailing elements of a valid
    step included. n counts valid *elements*. reduction "mean", "sum" or "none" (elementwise
    losses, zero where invalid; the gradient is that of their sum).
    """
    fn = "mse"
    _float_array(fn, "pred", pred, "[...]")
    _refuse_masked(fn, "target", target)
    if not isinstance(target, np.ndarray):
        raise TypeError(f"{fn}: target must be a numpy array of dtype {pred.dtype}, "
                        f"got {type(target).__name__}")
    if target.dtype != pred.dtype:
        raise TypeError(f"{fn}: target must have pred's dtype {pred.dtype}, got {target.dtype}")
    if target.shape != pred.shape:
        raise ValueError(f"{fn}: target must have pred's shape {list(pred.shape)}, "
                         f"got {list(target.shape)}")
    reduction = _reduction(fn, reduction)
    time_axis = _time_axis(fn, time_axis)
    valid = _valid_positions(fn, pred.shape, mask, lengths, time_axis, mask_prefix=True)

    diff = pred - target
    if valid is None:
        n = diff.size
    else:
        diff[~valid] = 0                       # valid indexes the leading axes
        n = int(np.count_nonzero(valid)) * int(np.prod(pred.shape[valid.ndim:], dtype=np.int64))
    per = diff * diff
    diff *= 2.0
    return _reduce(per, diff, reduction, n)


# -- CTC (the kernel and its checks live in fusedrnn.ctc) --------------------------------------
from .ctc import ctc, ctc_logits  # noqa: E402

__all__ += ["ctc", "ctc_logits"]
