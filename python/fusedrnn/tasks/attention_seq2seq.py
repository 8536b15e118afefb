"""Attention for ``--task translate``: the attentional encoder-decoder and the ``numbers`` problem.

:class:`AttnSeq2Seq` is :class:`~fusedrnn.tasks.translate.Seq2Seq` plus attention over the
encoder outputs (:mod:`fusedrnn.attention`). Feeding variant: Luong et al. 2015, section 3,
without input feeding, for every score function: the decoder RNN runs as before (its initial
state from the encoder's final state), then at every step t

    c_t  = attention(query = h_t, keys = encoder outputs, masked to the source length)
    h~_t = tanh(W_c [c_t; h_t])                      (``combine``, no bias)
    logits_t = head(dropout(h~_t))

Because the context does not feed back into the RNN, teacher forcing runs the decoder RNN in
one fused call over all steps and attends all steps at once; decoding attends one step at a
time (``step``) with the keys projected once (``encode``). ``--attention bahdanau`` scores
with Bahdanau's additive function v·tanh(W_q h_t + W_k h̄_s), ``luong`` with Luong's
"general" h_tᵀ W_a h̄_s, ``luong_dot`` with the plain dot product.

The ``numbers`` problem (``--problem numbers``): English number names of up to 12 digits
("four hundred two billion seventy thousand eleven") to their digits ("402000070011"). Inputs
run to ~130 characters and the output must place every digit, zeros included, by the scale
words: an encoder-decoder without attention has to carry the whole number in its final state.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..attention import Attention
from ..module import Linear, register_module
from .translate import Seq2Seq, _map_state

__all__ = ["AttnSeq2Seq", "AttnState", "ATTENTION", "number_words", "number_pairs",
           "number_baseline"]

# --attention value -> fusedrnn.attention kind
ATTENTION = {"bahdanau": "bahdanau", "luong": "general", "luong_dot": "dot"}


class AttnState:
    """Decoder state for decoding with attention: the RNN state and the attention memory.

    Beam search treats decoder states as arrays with the batch on axis 1 (``np.repeat(state,
    B, axis=1)``, ``state[:, order]``); this class answers both for its two parts.
    """

    def __init__(self, rnn, memory):
        self.rnn, self.memory = rnn, memory

    def _take(self, index) -> "AttnState":
        index = np.asarray(index)
        return AttnState(_map_state(self.rnn, lambda a: a[:, index]), self.memory.select(index))

    def repeat(self, repeats, axis=None) -> "AttnState":
        if axis != 1:
            raise ValueError("AttnState.repeat: only the batch axis (1) can be repeated")
        return self._take(np.repeat(np.arange(len(self.memory.lengths)), repeats))

    def __getitem__(self, key) -> "AttnState":
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None)):
            raise IndexError("AttnState: only [:, index] (the batch axis) is supported")
        return self._take(key[1])


@register_module
class AttnSeq2Seq(Seq2Seq):
    """Seq2Seq with attention (module docstring). Extra parameters: ``attention.*`` and
    ``combine.weight`` [D*hidden, 2*D*hidden]."""

    def __init__(self, src_vocab: int, tgt_vocab: int, embed: int = 32, hidden: int = 256,
                 layers: int = 1, cell: str = "lstm", bidirectional: bool = False,
                 dropout: float = 0.0, attention: str = "bahdanau", dtype="float32",
                 seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        if attention not in ATTENTION:
            raise ValueError(f"AttnSeq2Seq: attention must be one of {sorted(ATTENTION)}, "
                             f"got {attention!r}")
        super().__init__(src_vocab, tgt_vocab, embed=embed, hidden=hidden, layers=layers,
                         cell=cell, bidirectional=bidirectional, dropout=dropout, dtype=dtype,
                         seed=seed, options=options)
        args = dict(self._init_args)
        args["attention"] = attention
        self._record(**args)
        s = [None, None] if seed is None else \
            [int(v) for v in np.random.SeedSequence([seed, 7]).generate_state(2)]
        Dh = self.num_directions * hidden
        self.Dh = Dh
        self.attention = Attention(Dh, Dh, ATTENTION[attention], dtype=dtype, seed=s[0])
        self.combine = Linear(2 * Dh, Dh, bias=False, dtype=dtype, seed=s[1])
        self._h = None

    def _encode(self, src, src_len):
        enc_out, state = self.encoder.forward(self.src_embed.forward(src), lengths=src_len)
        return enc_out, _map_state(state, self._bridge)

    def _attend(self, out, enc_out=None, src_len=None, memory=None):
        ctx, _ = self.attention.forward(out, enc_out, src_len, memory=memory)
        return np.tanh(self.combine.forward(np.concatenate([ctx, out], axis=2)))

    def encode(self, src: np.ndarray, src_len: np.ndarray) -> AttnState:
        enc_out, state = self._encode(src, src_len)
        return AttnState(state, self.attention.prepare(enc_out, src_len))

    def forward(self, src, src_len, tgt_in, tgt_len) -> np.ndarray:
        enc_out, state = self._encode(src, src_len)
        out, _ = self.decoder.forward(self.tgt_embed.forward(tgt_in), state, lengths=tgt_len)
        h = self._attend(out, enc_out, src_len)
        self._h = h if self.training else None
        return self.head.forward(self.drop.forward(h))

    def backward(self, d_logits: np.ndarray) -> None:
        if self._h is None:
            raise RuntimeError("AttnSeq2Seq.backward: no training forward to differentiate")
        d_h = self.drop.backward(self.head.backward(d_logits))
        d_cat = self.combine.backward(d_h * (1 - self._h * self._h))     # through tanh
        d_query, d_keys = self.attention.backward(np.ascontiguousarray(d_cat[..., :self.Dh]))
        d = self.decoder.backward(d_cat[..., self.Dh:] + d_query)
        self.tgt_embed.backward(d)
        d_state = _map_state(self.decoder.d_state, self._unbridge)
        self.src_embed.backward(self.encoder.backward(d_keys, d_state))

    def step(self, tokens: np.ndarray, state: AttnState, decoder=None):
        dec = self.decoder if decoder is None else decoder
        out, rnn = dec.forward(self.tgt_embed.forward(tokens[None, :]), state.rnn)
        h = self._attend(out, memory=state.memory)
        return self.head.forward(h[0]), AttnState(rnn, state.memory)


# -- the numbers problem -----------------------------------------------------------------------
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10 ** 9, "billion"), (10 ** 6, "million"), (10 ** 3, "thousand")]


def _below_1000(n: int) -> List[str]:
    words = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else ""))
    elif n:
        words.append(_ONES[n])
    return words


def number_words(n: int) -> str:
    """English name of 0 <= n < 10**12 (short scale, no "and"): 1002 -> "one thousand two"."""
    if not 0 <= n < 10 ** 12:
        raise ValueError(f"number_words: n must lie in [0, 10**12), got {n}")
    if n == 0:
        return "zero"
    words = []
    for scale, name in _SCALES:
        if n >= scale:
            words += _below_1000(n // scale) + [name]
            n %= scale
    return " ".join(words + _below_1000(n))


def random_number(rng: np.random.Generator) -> int:
    """1 to 12 digits (uniform), each three-digit group zero with probability 1/4."""
    digits = int(rng.integers(1, 13))
    n = int(rng.integers(10 ** (digits - 1), 10 ** digits))
    groups = [(n // 10 ** (3 * k)) % 1000 for k in range(4)]
    top = (digits - 1) // 3
    for k in range(top):                       # the leading group stays non-zero
        if rng.random() < 0.25:
            groups[k] = 0
    return sum(g * 10 ** (3 * k) for k, g in enumerate(groups))


_SMALL = {number_words(k): str(k) for k in range(100)}


def number_baseline(source: str) -> str:
    """The trivial rule: names of 0-99 read from a table; anything longer -> ''."""
    return _SMALL.get(source.strip(), "")


def number_pairs(rng: np.random.Generator, count: int,
                 exclude: Optional[set] = None) -> Tuple[List[Tuple[str, str]], set]:
    """``count`` distinct (words, digits) pairs not in ``exclude``; also their numbers."""
    seen = set()
    pairs = []
    while len(pairs) < count:
        n = random_number(rng)
        if n in seen or (exclude and n in exclude):
            continue
        seen.add(n)
        pairs.append((number_words(n), str(n)))
    return pairs, seen


# -- --compare-torch -----------------------------------------------------------------------------
def torch_attention_twin(base_cls, model: AttnSeq2Seq):
    """The torch twin of an AttnSeq2Seq: ``base_cls`` is translate's TorchSeq2Seq (encoder,
    decoder, embeddings, dropout and head with the model's weights), extended here by the
    attention and ``combine`` with the same weights and the same formulas, written with torch
    operations (autograd gives the backward pass)."""
    import torch

    class TorchAttnSeq2Seq(base_cls):
        def __init__(self, m: AttnSeq2Seq):
            super().__init__(m)
            dt = torch.float64 if m.head.weight.dtype == np.float64 else torch.float32
            self.kind = m.attention.kind
            self.att = torch.nn.ParameterDict({
                name: torch.nn.Parameter(torch.tensor(p.data, dtype=dt))
                for name, p in m.attention.named_parameters()})
            self.combine = torch.nn.Linear(2 * m.Dh, m.Dh, bias=False, dtype=dt)
            with torch.no_grad():
                self.combine.weight.copy_(torch.from_numpy(m.combine.weight.data))

        def forward(self, src, src_len, tgt_in, tgt_len):
            enc, state = self.encoder(self.src_embed(src), src_len)
            state = tuple(map(self._bridge, state)) if isinstance(state, tuple) else \
                self._bridge(state)
            out, _ = self.decoder(self.tgt_embed(tgt_in), tgt_len, state)
            valid = torch.arange(enc.shape[0])[:, None] < src_len[None, :]        # [S, N]
            keys = enc * valid[..., None].to(enc.dtype)
            if self.kind == "bahdanau":
                qp = out @ self.att["w_query"].T                                   # [T, N, A]
                kp = keys @ self.att["w_key"].T                                    # [S, N, A]
                scores = torch.tanh(qp[:, None] + kp[None]) @ self.att["v"]       # [T, S, N]
            elif self.kind == "general":
                scores = torch.einsum("tnh,snh->tsn", out, keys @ self.att["weight"].T)
            else:
                scores = torch.einsum("tnh,snh->tsn", out, keys)
            scores = scores.masked_fill(~valid[None], float("-inf"))
            ctx = torch.einsum("tsn,snh->tnh", torch.softmax(scores, dim=1), keys)
            h = torch.tanh(self.combine(torch.cat([ctx, out], dim=2)))
            return self.head(self.drop(h))

        def export(self):
            out = super().export()
            out.update({f"attention.{k}": p.detach().cpu().numpy().copy()
                        for k, p in self.att.items()})
            out["combine.weight"] = self.combine.weight.detach().cpu().numpy().copy()
            return out

    return TorchAttnSeq2Seq(model)
