"""The ``charlm`` task (the default of ``fusedrnn train``): a character-level language model.

Data: CPython's ``pydoc_data.topics`` (the topics' texts joined in sorted key order, ~465 KB,
103 distinct characters), or any UTF-8 text file given with ``--data``; the first 90% trains,
the last 10% validates. The vocabulary (the file's distinct characters, sorted) is stored in
the checkpoint metadata.

Model: :class:`fusedrnn.RecurrentModel` — Embedding(V, --embed) -> LSTM/GRU/RNN -> Linear(V).
Training: truncated BPTT over ``--batch-size`` parallel streams (:func:`fusedrnn.data.batchify`)
read in chunks of ``--seq-len`` steps, the state carried from chunk to chunk and reset at
each epoch's start; every epoch after the first starts the streams at a random offset in
[0, seq_len) (drawn from the trainer's generator) so that chunk boundaries move.
Validation: the whole validation split as batchified streams, state carried; reported as
bits per character (mean cross-entropy / ln 2) next to the unigram baseline (validation
characters under add-one-smoothed training frequencies).

``--compare-torch``: the twin is torch.nn.Embedding -> one single-layer torch RNN per layer ->
torch.nn.Linear with the same weights; between layers it multiplies by dropout masks drawn
from a copy of the fusedrnn layer's own mask generator, so both runs use identical masks and
their curves agree step for step (up to float rounding that grows slowly over training).
"""
from __future__ import annotations

import copy
import math
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .. import losses
from ..data import batchify, bptt_chunks
from ..models import RecurrentModel
from ..module import Module
from .base import DataError, Task
from .guards import read_limited, strip_bom

__all__ = ["CharLM", "load_default_corpus"]

LN2 = math.log(2.0)
TRAIN_FRACTION = 0.9
#: `fusedrnn generate --length`'s maximum (the C++ stream example's STEPS bound): each character
#: is one model step, so 10^7 is already hours of sampling, and a mistyped 1e11 must not start
MAX_GENERATE_LENGTH = 10_000_000
EVAL_CHUNK = 250          # validation steps per kernel call (state carried: any value gives
                          # the same result up to rounding)


def _softmax_t(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature) for temperature > 0, computed as
    exp((logits - max) / temperature): the exponents are <= 0, so a tiny temperature (1e-310)
    whose quotient overflows gives -inf, i.e. probability 0, for every logit below the maximum
    instead of inf - inf = NaN: the distribution tends to its limit, the most likely
    characters (greedy sampling, as temperature 0)."""
    with np.errstate(over="ignore"):
        z = (logits - logits.max()) / temperature
    p = np.exp(z)
    return p / p.sum()


def load_default_corpus() -> str:
    """The texts of ``pydoc_data.topics`` joined in sorted key order."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # pragma: no cover - stripped Python installs
        raise DataError("the default corpus (pydoc_data.topics) is not available in this "
                        "Python; give a text file with --data") from e
    return "".join(topics[k] for k in sorted(topics))


def _read_text(path: str) -> str:
    if not os.path.exists(path):
        raise DataError(f"data file {path} does not exist")
    if os.path.isdir(path):
        raise DataError(f"data file {path} is a directory")
    try:
        with open(path, "rb") as f:
            raw = read_limited(f, f"data file {path}")
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from None
    if b"\x00" in raw:
        raise DataError(f"data file {path} is binary (it contains NUL bytes); charlm needs "
                        f"UTF-8 text")
    try:
        return strip_bom(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"data file {path} is not UTF-8 text (invalid byte at offset "
                        f"{e.start})") from None


class CharLM(Task):
    name = "charlm"
    help = "character-level language model (default data: Python's pydoc topics)"
    metric = "bpc"
    higher_is_better = False
    unit = "char"
    # Chosen by measurement with fusedrnn on the 2-core development machine (validation bpc
    # against CPU time, seq 100, batch 32, Adam 2e-3): a 2-layer GRU reaches ~1.66 bits/char
    # in about half the CPU time a 2-layer LSTM (hidden 256, dropout 0.2) needs for 1.69;
    # dropout 0.4 keeps the GRU from overfitting this small corpus within the budget. The
    # learning rate decays along a half cosine to 0 at the budget's end: 1.611 bits/char in
    # 170 s against 1.644 at a constant 2e-3 (2026-12-06, 2 threads, quiet machine).
    defaults = {"cell": "gru", "hidden": 256, "layers": 2, "dropout": 0.4, "embed": 64,
                "seq_len": 100, "batch_size": 32, "lr": 2e-3, "optimizer": "adam",
                "clip": 1.0, "lr_schedule": "cosine", "time_budget": 170.0}
    flags = ("data", "embed", "seq_len")
    bidirectional_ok = False

    def __init__(self, args):
        super().__init__(args)
        self.chars: Optional[List[str]] = None     # the vocabulary (index -> character)
        self.index: Dict[str, int] = {}
        self.train_tokens = self.valid_tokens = None
        self.baseline_bpc: Optional[float] = None
        self._state = None          # fusedrnn state carried across training chunks
        self._tstate = None         # the torch twin's

    # -- data ------------------------------------------------------------------------------
    def _set_vocab(self, chars: List[str]) -> None:
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str, what: str = "text") -> np.ndarray:
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            shown = "".join(unknown[:10])
            raise DataError(f"{what} has {len(unknown)} character(s) not in the model's "
                            f"vocabulary: {shown!r}")
        return np.fromiter((self.index[c] for c in text), dtype=np.int64, count=len(text))

    def prepare(self) -> None:
        a = self.args
        path = getattr(a, "data", None)
        text = _read_text(path) if path else load_default_corpus()
        where = f"data file {path}" if path else "the default corpus"
        B, T = a.batch_size, a.seq_len
        n = len(text)
        n_train = int(n * TRAIN_FRACTION)
        if n_train // B < T + 1 or (n - n_train) // B < 2:
            need = max(math.ceil((T + 1) * B / TRAIN_FRACTION),
                       math.ceil(2 * B / (1 - TRAIN_FRACTION)))
            raise DataError(f"{where} has {n} characters: too short for --batch-size {B} and "
                            f"--seq-len {T} (needs at least about {need})")
        if self.chars is None:
            self._set_vocab(sorted(set(text)))
        tokens = self.encode(text, where)
        self.train_tokens, self.valid_tokens = tokens[:n_train], tokens[n_train:]
        V = len(self.chars)
        counts = np.bincount(self.train_tokens, minlength=V).astype(np.float64) + 1.0
        logp = np.log2(counts / counts.sum())
        self.baseline_bpc = float(-logp[self.valid_tokens].mean())
        if a.dropout and a.layers == 1 and "dropout" in getattr(a, "given", ()):
            print("fusedrnn: note: --dropout applies between recurrent layers; it has no "
                  "effect with --layers 1", file=sys.stderr)

    # -- model -------------------------------------------------------------------------------
    def build_model(self) -> Module:
        a, V = self.args, len(self.chars)
        return RecurrentModel(a.cell, vocab_size=V, embed_dim=a.embed, hidden_size=a.hidden,
                              num_layers=a.layers, dropout=a.dropout, output_size=V,
                              seed=a.seed, **self.cell_opts)

    def batches(self, rng: np.random.Generator) -> Iterator[Any]:
        a = self.args
        epoch = 0
        while True:
            offset = 0 if epoch == 0 else int(rng.integers(a.seq_len))
            streams = batchify(self.train_tokens[offset:], a.batch_size)
            n_chunks = math.ceil((streams.shape[0] - 1) / a.seq_len)
            for i, (x, y) in enumerate(bptt_chunks(streams, a.seq_len)):
                self.epoch = epoch + (i + 1) / n_chunks
                yield x, y, i == 0
            epoch += 1

    @staticmethod
    def _forward(model, x, state, rnn=None):
        """logits [T*N, V] (the head on a 2-D array: one GEMM) and the final state; `rnn`
        replaces model.rnn (generation passes its frozen copy)."""
        T, N = x.shape
        out, state = (model.rnn if rnn is None else rnn).forward(model.embed.forward(x), state)
        return model.head.forward(out.reshape(T * N, -1)), state

    def train_step(self, model, batch) -> Tuple[float, int]:
        x, y, reset = batch
        if reset:
            self._state = None
        T, N = x.shape
        logits, self._state = self._forward(model, x, self._state)
        loss, d = losses.cross_entropy(logits, y.reshape(-1))
        d_out = model.head.backward(d).reshape(T, N, -1)
        model.embed.backward(model.rnn.backward(d_out))
        return loss, x.size

    def evaluate(self, model) -> Dict[str, float]:
        streams = batchify(self.valid_tokens, self.args.batch_size)
        total, count, state = 0.0, 0, None
        for x, y in bptt_chunks(streams, EVAL_CHUNK):
            logits, state = self._forward(model, x, state)
            loss, _ = losses.cross_entropy(logits, y.reshape(-1), reduction="sum")
            total += loss
            count += y.size
        return self._metrics(total, count)

    def _metrics(self, total: float, count: int) -> Dict[str, float]:
        nats = total / count
        return {"bpc": nats / LN2, "loss": nats, "baseline_bpc": self.baseline_bpc}

    def progress(self, loss: float) -> Dict[str, float]:
        return {"bpc": loss / LN2}

    def class_bpc(self, model) -> Dict[str, Tuple[float, float, int]]:
        """Validation bits per character by the class of the predicted character (lowercase,
        uppercase, digit, space, newline, punctuation / other): (model bpc, unigram
        baseline bpc, count) per class present."""
        streams = batchify(self.valid_tokens, self.args.batch_size)
        nll, tgt, state = [], [], None
        for x, y in bptt_chunks(streams, EVAL_CHUNK):
            logits, state = self._forward(model, x, state)
            lp = losses.log_softmax(logits.astype(np.float64))
            yy = y.reshape(-1)
            nll.append(-lp[np.arange(yy.size), yy])
            tgt.append(yy)
        nll_a, tgt_a = np.concatenate(nll) / LN2, np.concatenate(tgt)
        V = len(self.chars)
        counts = np.bincount(self.train_tokens, minlength=V).astype(np.float64) + 1.0
        uni = -np.log2(counts / counts.sum())

        def cls(c: str) -> str:
            return ("lowercase" if c.islower() else "uppercase" if c.isupper() else
                    "digit" if c.isdigit() else "newline" if c == "\n" else
                    "space" if c.isspace() else "punctuation / other")
        names = np.array([cls(c) for c in self.chars])[tgt_a]
        out = {}
        for name in ("lowercase", "uppercase", "digit", "space", "newline",
                     "punctuation / other"):
            sel = names == name
            if sel.any():
                out[name] = (float(nll_a[sel].mean()), float(uni[tgt_a[sel]].mean()),
                             int(sel.sum()))
        return out

    def plot(self, model, out_dir: str) -> Optional[str]:
        """charlm.png: validation bits per character by character class, model vs the
        unigram baseline, and each class's share of the total bits. None without
        matplotlib."""
        import os

        from ..plotting import pyplot, save_png
        plt = pyplot()
        if plt is None:
            return None
        per = self.class_bpc(model)
        names = list(per)
        xs = np.arange(len(names))
        total = sum(b * n for b, _, n in per.values()) or 1.0
        fig, ax = plt.subplots(figsize=(9, 4.5))
        ax.bar(xs - 0.2, [per[n][0] for n in names], 0.4, label=f"model ({self.args.cell})")
        ax.bar(xs + 0.2, [per[n][1] for n in names], 0.4, color="gray",
               label="unigram baseline")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{n}\n{per[n][2]} chars\n{100 * per[n][0] * per[n][2] / total:.0f}%"
                            f" of the bits" for n in names], fontsize=7)
        ax.set_ylabel("bits per character (validation)")
        ax.set_title("where the bits go: bits/char by the class of the next character",
                     fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        return save_png(fig, os.path.join(out_dir, "charlm.png"))

    # -- checkpoints -------------------------------------------------------------------------
    def metadata(self) -> Dict[str, Any]:
        meta = super().metadata()
        meta["vocab"] = "".join(self.chars)
        meta["baseline_bpc"] = self.baseline_bpc
        return meta

    def checkpoint_extras(self) -> Dict[str, Any]:
        return {"vocab": list(self.chars)}

    def restore(self, metadata: Dict[str, Any]) -> None:
        vocab = metadata.get("vocab")
        if not isinstance(vocab, str) or not vocab or len(set(vocab)) != len(vocab):
            raise ValueError("the checkpoint's charlm metadata has no valid vocabulary")
        self._set_vocab(list(vocab))
        self.baseline_bpc = metadata.get("baseline_bpc")

    # -- generation and scoring ----------------------------------------------------------------
    def generate(self, model, prime: str = "The ", length: int = 500,
                 temperature: float = 0.8, seed: Optional[int] = 0) -> str:
        """``prime`` followed by ``length`` sampled characters (temperature 0: greedy; a
        positive temperature so small that the scaled logits overflow samples from its limit,
        the most likely characters). ``length`` is at most :data:`MAX_GENERATE_LENGTH`."""
        if not prime:
            raise ValueError("--prime must not be empty")
        if not temperature >= 0 or not math.isfinite(temperature):
            raise ValueError(f"--temperature must be a finite number >= 0, got {temperature}")
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) \
                or not 0 <= length <= MAX_GENERATE_LENGTH:
            raise ValueError(f"--length must be an integer in [0, {MAX_GENERATE_LENGTH:,}], "
                             f"got {length!r}")
        x = self.encode(prime, "--prime")
        training = model.training
        model.eval()
        # One step per character: a frozen copy packs the recurrent weights once, not per step.
        rnn = model.rnn.frozen()
        rng = np.random.default_rng(seed)
        try:
            logits, state = self._forward(model, x[:, None], None, rnn)
            last = logits[-1].astype(np.float64)
            out = []
            for _ in range(length):
                if temperature == 0:
                    k = int(np.argmax(last))
                else:
                    k = int(rng.choice(len(last), p=_softmax_t(last, temperature)))
                out.append(self.chars[k])
                logits, state = self._forward(model, np.array([[k]], dtype=np.int64), state, rnn)
                last = logits[-1].astype(np.float64)
        finally:
            model.train(training)
        return prime + "".join(out)

    def summary(self, model) -> List[str]:
        seed = self.args.seed if getattr(self.args, "seed", None) is not None else 0
        prime = "The " if all(c in self.index for c in "The ") else self.chars[0]
        text = self.generate(model, prime, 300, 0.8, seed)
        return [f"sample (300 characters after {prime!r}, temperature 0.8, seed {seed}):",
                *("  " + line for line in text.split("\n"))]

    def predict(self, model, inputs: List[str]) -> List[str]:
        """Bits per character of each line (its characters after the first, from zero
        state). A line of fewer than 2 characters has nothing to score: DataError naming it
        (checked for all lines before any is scored)."""
        short = [i + 1 for i, line in enumerate(inputs) if len(line) < 2]
        if short:
            more = f" (and {len(short) - 1} more)" if len(short) > 1 else ""
            raise DataError(f"input line {short[0]}{more} has fewer than 2 characters: the "
                            f"score is the model's bits per character after the first one")
        out = []
        for i, line in enumerate(inputs):
            x = self.encode(line, f"input line {i + 1}")
            logits, _ = self._forward(model, x[:-1, None], None)
            loss, _ = losses.cross_entropy(logits, x[1:])
            out.append(f"{loss / LN2:.4f}")
        return out

    # -- --compare-torch -------------------------------------------------------------------------
    def torch_model(self, model):
        return _torch_twin(model)

    def torch_train_step(self, tmodel, batch) -> Tuple[float, int]:
        import torch
        x, y, reset = batch
        if reset:
            self._tstate = None
        logits, self._tstate = tmodel(torch.from_numpy(x), self._tstate)
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y.reshape(-1)))
        loss.backward()
        return float(loss.item()), x.size

    def torch_evaluate(self, tmodel) -> Dict[str, float]:
        import torch
        streams = batchify(self.valid_tokens, self.args.batch_size)
        total, count, state = 0.0, 0, None
        with torch.no_grad():
            for x, y in bptt_chunks(streams, EVAL_CHUNK):
                logits, state = tmodel(torch.from_numpy(x), state)
                total += float(torch.nn.functional.cross_entropy(
                    logits, torch.from_numpy(y.reshape(-1)), reduction="sum"))
                count += y.size
        return self._metrics(total, count)


def _torch_twin(model: RecurrentModel):
    """torch.nn twin of a token-input RecurrentModel (unidirectional, no projection or
    peepholes): same weights, and a copy of the model's dropout-mask generator."""
    import torch

    rnn = model.rnn
    if rnn.bidirectional or rnn.proj_size or rnn.peepholes or getattr(rnn, "_reg", None) or \
            getattr(rnn, "variant", "reset_after") != "reset_after":
        return None
    cls = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}[rnn.mode]

    class TorchCharLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            V, E = model.embed.weight.shape
            H, L = rnn.hidden_size, rnn.num_layers
            self.embed = torch.nn.Embedding(V, E)
            kw = {"nonlinearity": rnn.nonlinearity} if rnn.mode == "RNN" else {}
            self.layers = torch.nn.ModuleList(cls(E if k == 0 else H, H, **kw)
                                              for k in range(L))
            self.head = torch.nn.Linear(H, model.head.out_features)
            self.lstm = rnn.mode == "LSTM"
            self.p = rnn.dropout
            self.mask_rng = copy.deepcopy(rnn._drop_rng)   # the same masks, drawn in order
            sd = model.state_dict()
            with torch.no_grad():
                self.embed.weight.copy_(torch.from_numpy(sd["embed.weight"]))
                self.head.weight.copy_(torch.from_numpy(sd["head.weight"]))
                self.head.bias.copy_(torch.from_numpy(sd["head.bias"]))
                for k, layer in enumerate(self.layers):
                    for name, p in layer.named_parameters():
                        p.copy_(torch.from_numpy(sd["rnn." + name.replace("_l0", f"_l{k}")]))

        def forward(self, x, state=None):
            T, N = x.shape
            h = self.embed(x)
            hs, cs = [], []
            for k, layer in enumerate(self.layers):
                if state is None:
                    s = None
                elif self.lstm:
                    s = (state[0][k:k + 1], state[1][k:k + 1])
                else:
                    s = state[k:k + 1]
                h, s = layer(h, s)
                if self.lstm:
                    hs.append(s[0])
                    cs.append(s[1])
                else:
                    hs.append(s)
                if k < len(self.layers) - 1 and self.training and self.p > 0:
                    keep = self.mask_rng.random(tuple(h.shape)) >= self.p
                    mask = np.multiply(keep, np.float32(1.0 / (1.0 - self.p)),
                                       dtype=np.float32)
                    h = h * torch.from_numpy(mask)
            new = (torch.cat(hs).detach(), torch.cat(cs).detach()) if self.lstm else \
                torch.cat(hs).detach()
            return self.head(h.reshape(T * N, -1)), new

    return TorchCharLM()
