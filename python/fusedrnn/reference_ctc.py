"""NumPy reference of the CTC loss (the specification of :mod:`fusedrnn.ctc`): plain alpha-beta.

Graves et al. 2006. For one sequence with frames t < T_n, log-probabilities y_t(k) and targets
l (length L), the blank-extended labels are l' = (blank, l_1, blank, l_2, ..., l_L, blank),
S' = 2L + 1 states, and in log space

    alpha_0(0) = y_0(blank),  alpha_0(1) = y_0(l_1),  alpha_0(s) = -inf otherwise
    alpha_t(s) = y_t(l'_s) + logsumexp(alpha_{t-1}(s), alpha_{t-1}(s-1), alpha_{t-1}(s-2))
                 (the s-2 term only when l'_s != blank and l'_s != l'_{s-2})
    beta_{T_n-1}(s) = 0 for s in {S'-1, S'-2},  -inf otherwise
    beta_t(s) = logsumexp over s' in {s, s+1, s+2 (same rule, for s')} of
                y_{t+1}(l'_{s'}) + beta_{t+1}(s')
    loss = -log p(l | y) = -logsumexp(alpha_{T_n-1}(S'-1), alpha_{T_n-1}(S'-2))
    d loss / d y_t(k) = -sum_{s: l'_s = k} exp(alpha_t(s) + beta_t(s) + loss)

Reductions as torch.nn.functional.ctc_loss: "none" gives the per-sequence losses [N], "sum"
their sum, "mean" the batch mean of loss_n / max(L_n, 1). An impossible alignment gives an
infinite loss and NaN gradients on that sequence's frames (zero_infinity: loss 0, gradient 0).
The gradient is always that of the reduced loss ("none": of the sum).

This module shares no code with the kernel; it is naive on purpose (loops over frames and states).
"""
from __future__ import annotations

import numpy as np

__all__ = ["ctc", "ctc_logits"]


def _split_targets(targets, target_lengths):
    """Per-sequence label lists from torch's padded [N, S] or concatenated [sum L] layout."""
    targets = np.asarray(targets)
    lengths = [int(v) for v in target_lengths]
    if targets.ndim == 2:
        return [[int(v) for v in targets[n, :L]] for n, L in enumerate(lengths)]
    out, start = [], 0
    for L in lengths:
        out.append([int(v) for v in targets[start:start + L]])
        start += L
    return out


def _one(lp: np.ndarray, labels, blank: int):
    """lp [T_n, K] float64 -> (nll, d nll / d lp [T_n, K])."""
    Tn, K = lp.shape
    ext = [blank]
    for c in labels:
        ext += [c, blank]
    S = len(ext)
    ninf = -np.inf
    grad = np.zeros_like(lp)
    if Tn == 0:
        return (0.0 if not labels else np.inf), grad

    def can_skip(s):
        return s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]

    alpha = np.full((Tn, S), ninf)
    alpha[0, 0] = lp[0, ext[0]]
    if S > 1:
        alpha[0, 1] = lp[0, ext[1]]
    for t in range(1, Tn):
        for s in range(S):
            terms = [alpha[t - 1, s]]
            if s >= 1:
                terms.append(alpha[t - 1, s - 1])
            if can_skip(s):
                terms.append(alpha[t - 1, s - 2])
            alpha[t, s] = lp[t, ext[s]] + np.logaddexp.reduce(terms)
    beta = np.full((Tn, S), ninf)
    beta[Tn - 1, S - 1] = 0.0
    if S > 1:
        beta[Tn - 1, S - 2] = 0.0
    for t in range(Tn - 2, -1, -1):
        for s in range(S):
            terms = [beta[t + 1, s] + lp[t + 1, ext[s]]]
            if s + 1 < S:
                terms.append(beta[t + 1, s + 1] + lp[t + 1, ext[s + 1]])
            if s + 2 < S and can_skip(s + 2):
                terms.append(beta[t + 1, s + 2] + lp[t + 1, ext[s + 2]])
            beta[t, s] = np.logaddexp.reduce(terms)
    last = [alpha[Tn - 1, S - 1]] + ([alpha[Tn - 1, S - 2]] if S > 1 else [])
    nll = -np.logaddexp.reduce(last)
    if np.isinf(nll):
        grad[:] = np.nan
        return nll, grad
    for t in range(Tn):
        for s in range(S):
            grad[t, ext[s]] -= np.exp(alpha[t, s] + beta[t, s] + nll)
    return nll, grad


def ctc(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean",
        zero_infinity=False):
    """CTC loss of log-probabilities [T, N, K]; returns ``(loss, d loss / d log_probs)``.

    Computed in float64 and returned in log_probs' dtype (a float for "mean" and "sum", an [N]
    array for "none").
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    T, N, K = lp.shape
    labels = _split_targets(targets, target_lengths)
    per = np.zeros(N)
    grad = np.zeros_like(lp)
    for n in range(N):
        Tn = int(input_lengths[n])
        nll, g = _one(lp[:Tn, n], labels[n], blank)
        if np.isinf(nll) and zero_infinity:
            nll, g = 0.0, np.zeros_like(g)
        per[n] = nll
        w = 1.0 if reduction != "mean" else 1.0 / (N * max(len(labels[n]), 1))
        grad[:Tn, n] = g * w
    dt = np.asarray(log_probs).dtype
    if reduction == "none":
        return per.astype(dt), grad.astype(dt)
    if reduction == "sum":
        return float(per.sum()), grad.astype(dt)
    lengths = np.maximum(np.array([len(x) for x in labels], dtype=np.float64), 1.0)
    return float(np.mean(per / lengths)), grad.astype(dt)


def ctc_logits(logits, targets, input_lengths, target_lengths, blank=0, reduction="mean",
               zero_infinity=False):
    """CTC loss of log_softmax(logits) over the last axis; returns ``(loss, d loss / d logits)``.

    By the chain rule through log_softmax: d/dz_k = g_k - softmax(z)_k * sum_j g_j, g the
    gradient with respect to the log-probabilities (on a valid frame sum_j g_j = -w, the
    sequence's reduction weight, so this is w * (softmax - gamma)).
    """
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(axis=-1, keepdims=True)
    lse = m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
    lp = z - lse
    loss, g = ctc(lp, targets, input_lengths, target_lengths, blank, reduction, zero_infinity)
    g = np.asarray(g, dtype=np.float64)
    dz = g - np.exp(lp) * g.sum(axis=-1, keepdims=True)
    return loss, dz.astype(np.asarray(logits).dtype)
