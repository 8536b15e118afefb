"""Attention over encoder outputs: additive (Bahdanau et al. 2015) and multiplicative (Luong et
al. 2015: "dot" and "general"), with source-length masks, forward and backward in NumPy.

For decoder queries q_t [Hq] (t < T) and encoder outputs (keys) k_s [Hk] (s < S_n, the source
length of sequence n) the scores, weights and context are

    bahdanau:  e_ts = v · tanh(W_q q_t + W_k k_s)      W_q [A, Hq], W_k [A, Hk], v [A]
    dot:       e_ts = q_t · k_s                          (Hq = Hk)
    general:   e_ts = q_t · (W_a k_s)                    W_a [Hq, Hk]
    a_ts = exp(e_ts) / sum_{s' < S_n} exp(e_ts')         (a_ts = 0 for s >= S_n)
    c_t  = sum_s a_ts k_s

All T queries of a batch are attended at once (teacher forcing: the queries are the decoder's
outputs, known for every step after one fused RNN pass); decoding calls the same code with
T = 1 per step, reusing :meth:`Attention.prepare`'s projected keys. The backward pass is the
chain rule written out (softmax: de = a ∘ (da - sum_s a da)); the projections are computed
with 2-D products (numpy's batched matmul over [N, T, S] for the scores and contexts).

How the context reaches the decoder is the model's business; fusedrnn's seq2seq (``--task
translate --attention ...``) uses Luong's attentional hidden state h~_t = tanh(W_c [c_t; h_t])
without input feeding, for both score functions (see fusedrnn.tasks.translate).
"""
from __future__ import annotations

import math
import weakref
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

from .module import (Module, Parameter, _dtype, _packing_key, _positive_int, _same_packing, _seed,
                     register_module)

__all__ = ["Attention", "AttentionMemory", "KINDS"]

KINDS = ("bahdanau", "dot", "general")


class _MemorySource:
    """What prepared a memory: the layer (a weak reference) and its weights' arrays and
    versions then. Copies of a memory share it (their keys are equal copies); a pickled memory
    drops it (another process cannot tell which layer made it: prepare again there)."""
    __slots__ = ("layer", "key")

    def __init__(self, layer, key):
        self.layer, self.key = weakref.ref(layer), key

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return (_no_source, ())


def _no_source():
    return None


class AttentionMemory(NamedTuple):
    """The encoder side of attention, computed once per source batch by Attention.prepare."""
    keys: np.ndarray        # [S, N, Hk] encoder outputs
    projected: np.ndarray   # [N, S, A] W_k k_s (bahdanau), [N, Hq, S] (W_a k_s)ᵀ (general),
                            # [N, Hk, S] k_sᵀ (dot)
    bias: np.ndarray        # [N, 1, S] 0 where s < S_n, -inf beyond (added to the scores)
    lengths: np.ndarray     # [N] int64 source lengths
    # what prepared it: (weakref to the Attention layer, its weights' arrays and versions then);
    # forward refuses a memory of another layer or of weights changed since
    source: Any = None

    def select(self, index) -> "AttentionMemory":
        """The memory of the batch entries ``index`` (beam search: one row per hypothesis)."""
        index = np.asarray(index)
        return AttentionMemory(self.keys[:, index], self.projected[index], self.bias[index],
                               self.lengths[index], self.source)


@register_module
class Attention(Module):
    """Attention over encoder outputs (see the module docstring for the formulas).

    Attention(query_size, key_size, kind="bahdanau" | "dot" | "general", attn_size=None)
    Parameters: bahdanau ``w_query`` [A, Hq], ``w_key`` [A, Hk], ``v`` [A] (A = attn_size,
    default Hq; torch-style U(±1/√fan_in) initialisation); general ``weight`` [Hq, Hk]; dot
    none (Hq must equal Hk).

    forward(query [T, N, Hq], keys [S, N, Hk], src_lengths [N]) -> (context [T, N, Hk],
    weights [N, T, S]); or forward(query, memory=prepare(keys, src_lengths)).
    backward(d_context [T, N, Hk]) -> (d_query [T, N, Hq], d_keys [S, N, Hk]); parameter
    gradients accumulate into ``.grad``.
    """

    def __init__(self, query_size: int, key_size: int, kind: str = "bahdanau",
                 attn_size: Optional[int] = None, *, dtype="float32",
                 seed: Optional[int] = None):
        super().__init__()
        fn = "Attention"
        query_size = _positive_int(fn, "query_size", query_size)
        key_size = _positive_int(fn, "key_size", key_size)
        if kind not in KINDS:
            raise ValueError(f"{fn}: kind must be one of {list(KINDS)}, got {kind!r}")
        if kind == "dot" and query_size != key_size:
            raise ValueError(f"{fn}: kind 'dot' needs query_size == key_size, got "
                             f"{query_size} and {key_size}")
        attn_size = query_size if attn_size is None else _positive_int(fn, "attn_size", attn_size)
        dt = _dtype(fn, dtype)
        seed = _seed(fn, seed)
        self._record(query_size=query_size, key_size=key_size, kind=kind, attn_size=attn_size,
                     dtype=dt, seed=seed)
        self.query_size, self.key_size, self.kind, self.attn_size = \
            query_size, key_size, kind, attn_size
        self.dtype = dt
        rng = np.random.default_rng(seed)

        def uniform(shape, fan_in):
            k = 1.0 / math.sqrt(fan_in)
            return Parameter(rng.uniform(-k, k, shape).astype(dt))

        if kind == "bahdanau":
            self.w_query = uniform((attn_size, query_size), query_size)
            self.w_key = uniform((attn_size, key_size), key_size)
            self.v = uniform((attn_size,), attn_size)
        elif kind == "general":
            self.weight = uniform((query_size, key_size), key_size)
        self._cache = None

    # -- encoder side ----------------------------------------------------------------------------
    def prepare(self, keys: np.ndarray, src_lengths) -> AttentionMemory:
        """Checks keys [S, N, Hk] and src_lengths [N] (1 <= S_n <= S); projects the keys once."""
        fn = "Attention.prepare"
        if not isinstance(keys, np.ndarray) or keys.dtype != self.dtype:
            raise TypeError(f"{fn}: keys must be a {self.dtype} numpy array [S, N, "
                            f"{self.key_size}], got "
                            f"{getattr(keys, 'dtype', type(keys).__name__)}")
        if keys.ndim != 3 or keys.shape[2] != self.key_size or min(keys.shape) < 1:
            raise ValueError(f"{fn}: keys must have shape [S, N, {self.key_size}] with S, N >= 1,"
                             f" got {list(keys.shape)}")
        S, N, Hk = keys.shape
        if isinstance(src_lengths, (list, tuple)):
            src_lengths = np.asarray(src_lengths)
        if not isinstance(src_lengths, np.ndarray) or src_lengths.dtype.kind not in "iu":
            raise TypeError(f"{fn}: src_lengths must be an integer numpy array of shape [{N}]")
        if src_lengths.shape != (N,):
            raise ValueError(f"{fn}: src_lengths must have shape [{N}], "
                             f"got {list(src_lengths.shape)}")
        if src_lengths.min() < 1 or src_lengths.max() > S:
            raise ValueError(f"{fn}: src_lengths must lie in [1, S={S}] (attention needs at "
                             f"least one source position), got min {src_lengths.min()} "
                             f"max {src_lengths.max()}")
        lengths = src_lengths.astype(np.int64)
        valid = np.arange(S)[None, :] < lengths[:, None]                       # [N, S]
        if not valid.all():     # padding may hold anything (even NaN): zero it
            keys = np.where(valid.T[:, :, None], keys, keys.dtype.type(0))
        else:                   # (a copy either way: a caller refilling its keys array before
            keys = keys.copy()  # backward must not change the gradients, as in the layers)
        bias = np.where(valid, 0.0, -np.inf)
        bias = bias.astype(self.dtype)[:, None, :]                             # [N, 1, S]
        if self.kind == "bahdanau":
            proj = (keys.reshape(S * N, Hk) @ self.w_key.data.T).reshape(S, N, -1)
            proj = np.ascontiguousarray(proj.transpose(1, 0, 2))               # [N, S, A]
        elif self.kind == "general":
            proj = (keys.reshape(S * N, Hk) @ self.weight.data.T).reshape(S, N, -1)
            proj = np.ascontiguousarray(proj.transpose(1, 2, 0))               # [N, Hq, S]
        else:
            proj = np.ascontiguousarray(keys.transpose(1, 2, 0))               # [N, Hk, S]
        return AttentionMemory(keys, proj, bias, lengths, self._memory_source())

    def _memory_source(self):
        return _MemorySource(self, _packing_key(tuple(self.parameters())))

    def _check_memory(self, fn, memory):
        if not isinstance(memory, AttentionMemory):
            raise TypeError(f"{fn}: memory must be an AttentionMemory from this layer's "
                            f"prepare(), got {type(memory).__name__}")
        src = memory.source
        if src is None or src.layer() is not self:
            raise ValueError(f"{fn}: memory was prepared by another Attention layer, or "
                             f"unpickled (its keys are projected with the preparing layer's "
                             f"weights); use this layer's prepare()")
        if not _same_packing(src.key, _packing_key(tuple(self.parameters()))):
            raise ValueError(f"{fn}: the layer's weights changed since memory was prepared "
                             f"(an optimiser step?); prepare it again")

    # -- forward / backward ----------------------------------------------------------------------
    def forward(self, query: np.ndarray, keys: Optional[np.ndarray] = None, src_lengths=None,
                memory: Optional[AttentionMemory] = None) -> Tuple[np.ndarray, np.ndarray]:
        fn = "Attention.forward"
        if memory is None:
            if keys is None or src_lengths is None:
                raise ValueError(f"{fn}: give keys and src_lengths, or memory")
            memory = self.prepare(keys, src_lengths)
        elif keys is not None or src_lengths is not None:
            raise ValueError(f"{fn}: give keys and src_lengths, or memory, not both")
        else:
            self._check_memory(fn, memory)
        S, N, Hk = memory.keys.shape
        if not isinstance(query, np.ndarray) or query.dtype != self.dtype:
            raise TypeError(f"{fn}: query must be a {self.dtype} numpy array [T, N, "
                            f"{self.query_size}]")
        if query.ndim != 3 or query.shape[1:] != (N, self.query_size) or query.shape[0] < 1:
            raise ValueError(f"{fn}: query must have shape [T, {N}, {self.query_size}], "
                             f"got {list(query.shape)}")
        T = query.shape[0]
        qn = query.transpose(1, 0, 2)                                          # [N, T, Hq]
        hidden = None
        if self.kind == "bahdanau":
            qp = (query.reshape(T * N, -1) @ self.w_query.data.T).reshape(T, N, -1)
            # hidden [N, T, S, A] = tanh(W_q q_t + W_k k_s)
            hidden = np.tanh(qp.transpose(1, 0, 2)[:, :, None, :] + memory.projected[:, None])
            scores = hidden @ self.v.data                                      # [N, T, S]
        else:
            scores = qn @ memory.projected                                     # [N, T, S]
        scores += memory.bias
        scores -= scores.max(axis=2, keepdims=True)
        weights = np.exp(scores, out=scores)
        weights /= weights.sum(axis=2, keepdims=True)
        kn = memory.keys.transpose(1, 0, 2)                                    # [N, S, Hk]
        context = np.ascontiguousarray((weights @ kn).transpose(1, 0, 2))      # [T, N, Hk]
        # the cache keeps its own query and weights: the caller may refill its query array or
        # scale the returned weights (a plot) before backward, as with the layers
        self._cache = (query.copy(), memory, weights.copy(), hidden) if self.training else None
        return context, weights

    def backward(self, d_context: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        fn = "Attention.backward"
        if self._cache is None:
            raise RuntimeError(f"{fn}: no training forward to differentiate")
        query, memory, weights, hidden = self._cache
        T, N, Hq = query.shape
        S, _, Hk = memory.keys.shape
        if not isinstance(d_context, np.ndarray):
            raise TypeError(f"{fn}: d_context must be a {self.dtype} numpy array of shape "
                            f"{[T, N, Hk]}, got {type(d_context).__name__}")
        if d_context.dtype != self.dtype:
            raise TypeError(f"{fn}: d_context must have dtype {self.dtype}, got "
                            f"{d_context.dtype}")
        if d_context.shape != (T, N, Hk):
            raise ValueError(f"{fn}: d_context must have shape {[T, N, Hk]}, got "
                             f"{list(d_context.shape)}")
        kn = memory.keys.transpose(1, 0, 2)                                    # [N, S, Hk]
        dcn = d_context.transpose(1, 0, 2)                                     # [N, T, Hk]
        # c_t = sum_s a_ts k_s
        d_weights = dcn @ kn.transpose(0, 2, 1)                                # [N, T, S]
        d_keys = weights.transpose(0, 2, 1) @ dcn                              # [N, S, Hk]
        # softmax over s (masked positions have a = 0, so de = 0 there)
        d_scores = weights * (d_weights - (weights * d_weights).sum(axis=2, keepdims=True))
        qn = query.transpose(1, 0, 2)                                          # [N, T, Hq]
        if self.kind == "bahdanau":
            # e_ts = v · h_ts, h_ts = tanh(W_q q_t + W_k k_s)
            self.v.grad += np.einsum("nts,ntsa->a", d_scores, hidden, optimize=True)
            d_pre = d_scores[..., None] * self.v.data * (1 - hidden * hidden)  # [N, T, S, A]
            d_qp = d_pre.sum(axis=2)                                           # [N, T, A]
            d_kp = d_pre.sum(axis=1)                                           # [N, S, A]
            A = self.attn_size
            self.w_query.grad += d_qp.reshape(-1, A).T @ qn.reshape(-1, Hq)
            d_query = d_qp @ self.w_query.data                                 # [N, T, Hq]
            self.w_key.grad += d_kp.reshape(-1, A).T @ kn.reshape(-1, Hk)
            d_keys += d_kp @ self.w_key.data
        elif self.kind == "general":
            # e_ts = q_t · p_s, p_s = W_a k_s; memory.projected holds p as [N, Hq, S]
            d_query = d_scores @ memory.projected.transpose(0, 2, 1)           # [N, T, Hq]
            d_p = d_scores.transpose(0, 2, 1) @ qn                             # [N, S, Hq]
            self.weight.grad += d_p.reshape(-1, Hq).T @ kn.reshape(-1, Hk)
            d_keys += d_p @ self.weight.data
        else:
            d_query = d_scores @ kn                                            # [N, T, Hq]
            d_keys += d_scores.transpose(0, 2, 1) @ qn
        return (np.ascontiguousarray(d_query.transpose(1, 0, 2)),
                np.ascontiguousarray(d_keys.transpose(1, 0, 2)))
