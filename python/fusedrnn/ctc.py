"""Connectionist Temporal Classification: the loss (C++ kernel) and decoders (greedy, prefix beam).

* :func:`ctc` / :func:`ctc_logits` (also ``fusedrnn.losses.ctc`` / ``ctc_logits``): the loss of
  ``torch.nn.functional.ctc_loss`` with its argument conventions, returning ``(loss, grad)``
  like every fusedrnn loss. :mod:`fusedrnn.reference_ctc` is the NumPy specification.
* :func:`ctc_greedy_decode`: best path (argmax per frame, repeats merged, blanks dropped).
* :func:`ctc_beam_search`: prefix beam search (Hannun et al. 2014) with a beam width and
  optional blank and length penalties.

Gradients. ``ctc`` returns d loss / d log_probs, the true gradient with respect to free
log-probabilities: minus the state posteriors, zero off the labels. torch's ``ctc_loss``
instead returns, for a log_probs leaf, the gradient as if log_probs came out of
``log_softmax`` (softmax minus posteriors). That is exactly what :func:`ctc_logits` returns for
its logits: it fuses the log-softmax over K and is the one to use when a network's output layer
produces scores (it also saves the log-softmax pass and its gradient).
"""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from .functional import _threads, _workspace

__all__ = ["ctc", "ctc_logits", "ctc_greedy_decode", "ctc_beam_search"]

_REDUCTIONS = ("mean", "sum", "none")
Loss = Union[float, np.ndarray]


# -- argument checks -----------------------------------------------------------------------------
def _check_scores(fn: str, name: str, x) -> Tuple[int, int, int]:
    if not isinstance(x, np.ndarray) or isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{fn}: {name} must be a float32 or float64 numpy array of shape "
                        f"[T, N, K], got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{fn}: {name} must have dtype float32 or float64, got {x.dtype}")
    if x.ndim != 3 or min(x.shape) < 1:
        raise ValueError(f"{fn}: {name} must have shape [T, N, K] with T, N, K >= 1, "
                         f"got {list(x.shape)}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{fn}: {name} must be C-contiguous (use np.ascontiguousarray)")
    return x.shape


def _int_vector(fn: str, name: str, v, N: int) -> np.ndarray:
    if isinstance(v, (list, tuple)):
        if any(isinstance(e, (bool, np.bool_)) for e in v):
            raise TypeError(f"{fn}: {name} must hold integers, got a bool")
        v = np.asarray(v) if len(v) else np.zeros(0, np.int64)
    if not isinstance(v, np.ndarray) or v.dtype.kind not in "iu":
        what = v.dtype if isinstance(v, np.ndarray) else type(v).__name__
        raise TypeError(f"{fn}: {name} must be an integer numpy array (or list) of shape [{N}], "
                        f"got {what}")
    if v.shape != (N,):
        raise ValueError(f"{fn}: {name} must have shape [{N}] (one per sequence), "
                         f"got {list(v.shape)}")
    return np.ascontiguousarray(v, dtype=np.int64)


def _check_input_lengths(fn: str, input_lengths, T: int, N: int) -> np.ndarray:
    il = _int_vector(fn, "input_lengths", input_lengths, N)
    if il.min() < 0 or il.max() > T:
        raise ValueError(f"{fn}: input_lengths must lie in [0, T={T}], got min {il.min()} "
                         f"max {il.max()}")
    return il


def _check_blank(fn: str, blank, K: int) -> int:
    if isinstance(blank, (bool, np.bool_)) or not isinstance(blank, numbers.Integral) \
            or not 0 <= blank < K:
        raise ValueError(f"{fn}: blank must be an integer in [0, K={K}), got {blank!r}")
    return int(blank)


def _check_targets(fn: str, targets, target_lengths, N: int, K: int, blank: int):
    """(int64 C-contiguous targets or None, its padded width (0 = concatenated), lengths)."""
    tl = _int_vector(fn, "target_lengths", target_lengths, N)
    if tl.min() < 0:
        raise ValueError(f"{fn}: target_lengths must be >= 0, got min {tl.min()}")
    if isinstance(targets, (list, tuple)):
        targets = np.asarray(targets) if len(targets) else np.zeros(0, np.int64)
    if not isinstance(targets, np.ndarray) or targets.dtype.kind not in "iu":
        what = targets.dtype if isinstance(targets, np.ndarray) else type(targets).__name__
        raise TypeError(f"{fn}: targets must be an integer numpy array, padded [N, S] or "
                        f"concatenated [sum(target_lengths)], got {what}")
    Lmax = int(tl.max())
    if targets.ndim == 2:
        if targets.shape[0] != N or targets.shape[1] < Lmax:
            raise ValueError(f"{fn}: padded targets must have shape [N={N}, S] with "
                             f"S >= max(target_lengths) = {Lmax}, got {list(targets.shape)}")
        width = targets.shape[1]
        valid = np.arange(width)[None, :] < tl[:, None]
        labels = targets[valid]
    elif targets.ndim == 1:
        total = int(tl.sum())
        if targets.shape[0] != total:
            raise ValueError(f"{fn}: concatenated targets must have shape "
                             f"[sum(target_lengths)] = [{total}], got {list(targets.shape)}")
        width = 0
        labels = targets
    else:
        raise ValueError(f"{fn}: targets must be 2-D (padded [N, S]) or 1-D (concatenated), "
                         f"got {targets.ndim} dimensions")
    if labels.size:
        bad = (labels < 0) | (labels >= K)
        if bad.any():
            raise ValueError(f"{fn}: targets must lie in [0, K={K}) within target_lengths; "
                             f"{int(bad.sum())} labels are out of range (min {labels.min()}, "
                             f"max {labels.max()})")
        if (labels == blank).any():
            raise ValueError(f"{fn}: targets must not contain the blank ({blank}) within "
                             f"target_lengths; found {int((labels == blank).sum())}")
    if width == 0 and targets.size == 0:
        return None, 0, tl, Lmax
    return np.ascontiguousarray(targets, dtype=np.int64), width, tl, Lmax


def _check_options(fn: str, reduction, zero_infinity) -> str:
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {list(_REDUCTIONS)}, got {reduction!r}")
    if not isinstance(zero_infinity, (bool, np.bool_)):
        raise TypeError(f"{fn}: zero_infinity must be a bool, got {zero_infinity!r}")
    return reduction


def _check_out(fn: str, out, shape, dtype):
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != tuple(shape) \
            or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{fn}: out must be a writeable C-contiguous {np.dtype(dtype)} array of "
                         f"shape {list(shape)}")
    return out


def _run(fn, x, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
         logits, grad, out):
    T, N, K = _check_scores(fn, "logits" if logits else "log_probs", x)
    il = _check_input_lengths(fn, input_lengths, T, N)
    blank = _check_blank(fn, blank, K)
    tgt, width, tl, Lmax = _check_targets(fn, targets, target_lengths, N, K, blank)
    reduction = _check_options(fn, reduction, zero_infinity)
    dt = x.dtype
    d = _check_out(fn, out, (T, N, K), dt) if grad else None
    if d is not None and np.shares_memory(d, x):
        # the kernel writes gradient rows while later frames' scores are still to be read
        raise ValueError(f"{fn}: out must not overlap {'logits' if logits else 'log_probs'}")
    scale = None
    if reduction == "mean":
        scale = (1.0 / (N * np.maximum(tl, 1))).astype(dt)
    per = np.empty(N, dt)
    ws = _workspace(_core.ctc_workspace_size(T, N, Lmax), dt)
    _core.ctc_loss((T, N, K), Lmax, blank, logits, bool(zero_infinity), _threads(), x, tgt,
                   width, il, tl, scale, per, d, ws)
    if reduction == "none":
        loss: Loss = per
    elif reduction == "sum":
        loss = float(per.sum())
    else:
        loss = float((per / np.maximum(tl, 1).astype(dt)).mean())
    return (loss, d) if grad else loss


# -- loss ----------------------------------------------------------------------------------------
def ctc(log_probs: np.ndarray, targets, input_lengths, target_lengths, blank: int = 0,
        reduction: str = "mean", zero_infinity: bool = False, *, grad: bool = True,
        out: Optional[np.ndarray] = None):
    """CTC loss of log-probabilities; returns ``(loss, d_log_probs)``.

    log_probs [T, N, K] float32/float64 (C order), log-probabilities over K classes (the blank
    included) per frame and sequence; targets padded [N, S] (S >= max(target_lengths), entries
    past a sequence's length ignored) or concatenated [sum(target_lengths)], integers in
    [0, K) other than ``blank``; input_lengths [N] in [0, T]; target_lengths [N] >= 0.

    ``loss``: "none" the per-sequence negative log-likelihoods [N]; "sum" their sum; "mean" the
    batch mean of loss_n / max(target_lengths[n], 1) (torch's definition). An impossible
    alignment gives +inf (its gradient is NaN), or 0 with a zero gradient when
    ``zero_infinity``; a NaN score on a sequence's frames gives NaN (loss and gradient), with
    ``zero_infinity`` too, as torch's. ``d_log_probs`` [T, N, K]: the gradient of the reduced loss (of the sum
    for "none") with respect to log_probs: minus the state posteriors, zero for t >= T_n.
    ``grad=False`` returns the loss alone (no backward pass); ``out`` receives the gradient
    instead of a fresh array. Formulas: :mod:`fusedrnn.reference_ctc`.
    """
    return _run("ctc", log_probs, targets, input_lengths, target_lengths, blank, reduction,
                zero_infinity, False, grad, out)


def ctc_logits(logits: np.ndarray, targets, input_lengths, target_lengths, blank: int = 0,
               reduction: str = "mean", zero_infinity: bool = False, *, grad: bool = True,
               out: Optional[np.ndarray] = None):
    """CTC loss of ``log_softmax(logits)`` (the softmax fused); returns ``(loss, d_logits)``.

    Arguments and loss as :func:`ctc`. ``d_logits`` = w_n (softmax(logits) - posteriors) on
    each sequence's frames (w_n its reduction weight), zero past its input length: the
    gradient torch's ``ctc_loss(log_softmax(logits), ...)`` gives its logits.
    """
    return _run("ctc_logits", logits, targets, input_lengths, target_lengths, blank, reduction,
                zero_infinity, True, grad, out)


# -- decoding ------------------------------------------------------------------------------------
def _decode_args(fn, log_probs, input_lengths, blank):
    T, N, K = _check_scores(fn, "log_probs", log_probs)
    il = (np.full(N, T, np.int64) if input_lengths is None
          else _check_input_lengths(fn, input_lengths, T, N))
    return T, N, K, il, _check_blank(fn, blank, K)


def ctc_greedy_decode(log_probs: np.ndarray, input_lengths=None, blank: int = 0
                      ) -> List[List[int]]:
    """Best-path decoding: per sequence, the argmax class of each valid frame, runs of the same
    class merged, blanks dropped. log_probs [T, N, K] (log-probabilities or logits: the argmax is
    the same); input_lengths [N] (None: all T). Returns one label list per sequence."""
    T, N, K, il, blank = _decode_args("ctc_greedy_decode", log_probs, input_lengths, blank)
    best = log_probs.argmax(axis=2)                                  # [T, N]
    out = []
    for n in range(N):
        path = best[:il[n], n]
        keep = np.ones(path.shape, bool)
        keep[1:] = path[1:] != path[:-1]
        keep &= path != blank
        out.append([int(v) for v in path[keep]])
    return out


def _check_penalty(fn, name, v) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"{fn}: {name} must be a finite number, got {v!r}")
    return float(v)


def ctc_beam_search(log_probs: np.ndarray, input_lengths=None, beam_width: int = 8,
                    blank: int = 0, blank_penalty: float = 0.0, length_penalty: float = 0.0,
                    top_paths: int = 1, prune: Optional[float] = None
                    ) -> List[List[Tuple[List[int], float]]]:
    """Prefix beam search (Hannun et al. 2014, without a language model).

    Each hypothesis is a label prefix with two log-probabilities: of all alignments of the
    frames so far that yield it and end in a blank (p_b) or in its last label (p_nb). At each
    frame every prefix is extended by the blank (same prefix, into p_b), by its last label
    (same prefix from p_nb; a new copy of the label only from p_b) and by every other label
    (prefix + label), and the ``beam_width`` best prefixes are kept, ranked by

        score = logaddexp(p_b, p_nb) + length_penalty * len(prefix)

    ``blank_penalty`` is subtracted from the blank's log-probability at every frame (> 0 favours
    emitting labels, as k2/sherpa's blank penalty); ``length_penalty`` > 0 rewards longer
    outputs (an insertion bonus). ``prune`` (None: off): per frame only classes within
    ``prune`` nats of that frame's best class extend a prefix. With both penalties 0 and a beam
    wide enough to hold every prefix, the search is exact: its scores are the labellings'
    log-probabilities, -ctc(...) of each.

    log_probs [T, N, K] log-probabilities; input_lengths [N] (None: all T). Returns per
    sequence up to ``top_paths`` pairs ``(labels, score)``, best first.
    """
    fn = "ctc_beam_search"
    T, N, K, il, blank = _decode_args(fn, log_probs, input_lengths, blank)
    for name, v in (("beam_width", beam_width), ("top_paths", top_paths)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{fn}: {name} must be an integer >= 1, got {v!r}")
    blank_penalty = _check_penalty(fn, "blank_penalty", blank_penalty)
    length_penalty = _check_penalty(fn, "length_penalty", length_penalty)
    if prune is not None:
        prune = _check_penalty(fn, "prune", prune)
        if prune < 0:
            raise ValueError(f"{fn}: prune must be >= 0 (nats) or None, got {prune!r}")
    lp_all = np.asarray(log_probs, dtype=np.float64)
    ninf = -math.inf
    lae = np.logaddexp
    results = []
    for n in range(N):
        beams = {(): (0.0, ninf)}                                  # prefix -> (p_b, p_nb)
        for t in range(int(il[n])):
            row = lp_all[t, n]
            p_blank = float(row[blank]) - blank_penalty
            if prune is None:
                cand = [k for k in range(K) if k != blank]
            else:
                top = row.max()
                cand = [int(k) for k in np.flatnonzero(row >= top - prune) if k != blank]
            nxt: dict = {}

            def add(prefix, pb, pnb):
                ob, onb = nxt.get(prefix, (ninf, ninf))
                nxt[prefix] = (float(lae(ob, pb)), float(lae(onb, pnb)))

            for prefix, (pb, pnb) in beams.items():
                total = float(lae(pb, pnb))
                add(prefix, total + p_blank, ninf)                   # a blank: same prefix
                last = prefix[-1] if prefix else None
                for k in cand:
                    p = float(row[k])
                    if k == last:
                        add(prefix, ninf, pnb + p)                   # the label repeats: merged
                        add(prefix + (k,), ninf, pb + p)             # after a blank: a new copy
                    else:
                        add(prefix + (k,), ninf, total + p)

            def score(item):
                prefix, (pb, pnb) = item
                return float(lae(pb, pnb)) + length_penalty * len(prefix)

            ranked = sorted(nxt.items(), key=lambda it: (-score(it), it[0]))
            beams = dict(ranked[:beam_width])
        ranked = sorted(beams.items(),
                        key=lambda it: (-(float(lae(*it[1])) + length_penalty * len(it[0])),
                                        it[0]))
        results.append([(list(p), float(lae(pb, pnb)) + length_penalty * len(p))
                        for p, (pb, pnb) in ranked[:top_paths]])
    return results
