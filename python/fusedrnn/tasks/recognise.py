"""``--task recognise``: speech-like sequence recognition with CTC (Graves et al. 2006).

The built-in data are generated in code, like spoken digit strings: each of the 10 symbols
("0".."9") is a word of 3 "phones", each phone a mean vector over F = 16 features; a spoken
word holds each of its phones for 1 to 4 frames (random durations), every frame is the phone's
mean plus Gaussian noise (sigma 0.7), and the boundary frames are blended 35% towards the
neighbouring word's adjacent phone (co-articulation); 0 to 3 frames of a noisy "silence" sit
between words. Utterances have 3 to 15 symbols (about 10 to 200 frames). The per-word phone
means are drawn once from a fixed seed (the "language"); the utterances from ``--seed``.

Model: a bidirectional LSTM / GRU (``--cell``, ``--hidden``, ``--layers``) over the frames, a
Linear layer to 11 classes (blank = 0, then the symbols), trained with
:func:`fusedrnn.losses.ctc_logits` (the log-softmax fused into the CTC kernel). Validation:
label error rate (edit distance / reference length) with greedy decoding on every validation
utterance and prefix-beam decoding (``--beam``, default 4; NumPy, so on the first 100), against
the trivial baseline (the better of an empty transcript, LER 1, and the most
frequent symbol repeated for the mean utterance length).

``--data FILE.npz`` trains on your own features and transcripts: arrays ``features``
[total_frames, F] (float, finite and within float32's range), ``frames`` [M] (frames per
utterance, in order, >= 1), ``labels`` [total_labels] (integers 1..K-1, utterance after
utterance; 0 is the blank) and ``label_counts`` [M] (>= 0); optional ``symbols`` (K-1 strings,
the names of labels 1..K-1). K (the largest label + 1) is checked against the memory before
anything of size K exists. A seeded tenth of the utterances is held out for validation. A
restored task (``--resume``, ``evaluate --data``) keeps the checkpoint's labels and symbols.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..ctc import ctc_beam_search, ctc_greedy_decode, ctc_logits
from ..models import cell_class
from ..module import Dropout, Linear, Module, register_module
from .base import DataError, Task
from .common import REG_OPTIONS, make_rnn

__all__ = ["Recognise", "CtcRecognizer", "make_utterances", "edit_distance"]

F_DEFAULT, PHONES, SYMBOLS = 16, 3, [str(d) for d in range(10)]


# -- model -----------------------------------------------------------------------------------------
@register_module
class CtcRecognizer(Module):
    """Frames [T, N, F] -> (bidirectional) LSTM / GRU / RNN -> dropout -> Linear to K classes
    (blank 0): forward(x, lengths) -> logits [T, N, K]; backward(d_logits).

    ``options``: issue 19's regularisers (layer_norm, ln_eps, zoneout_h, zoneout_c,
    recurrent_dropout, input_dropout, weight_drop, dropout_masks; see fusedrnn.LSTM) of the
    recurrent stack, recorded in the config."""

    def __init__(self, features: int, classes: int, hidden: int = 128, layers: int = 1,
                 cell: str = "lstm", bidirectional: bool = True, dropout: float = 0.0,
                 dtype="float32", seed: Optional[int] = None,
                 options: Optional[Dict[str, Any]] = None):
        super().__init__()
        options = dict(options or {})
        cell_class("CtcRecognizer", cell)   # (checked before anything is recorded)
        self._record(features=features, classes=classes, hidden=hidden, layers=layers, cell=cell,
                     bidirectional=bool(bidirectional), dropout=dropout, dtype=np.dtype(dtype),
                     seed=seed, **({"options": options} if options else {}))
        s = [None] * 3 if seed is None else \
            [int(v) for v in np.random.SeedSequence(seed).generate_state(3)]
        self.rnn = make_rnn(cell, features, hidden, layers, dropout, s[0],
                            bidirectional=bool(bidirectional), dtype=dtype,
                            where="CtcRecognizer", options=options)
        self.drop = Dropout(dropout, seed=s[1])
        self.head = Linear((2 if bidirectional else 1) * hidden, classes, dtype=dtype, seed=s[2])

    def forward(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        out, _ = self.rnn.forward(x, lengths=lengths)
        return self.head.forward(self.drop.forward(out))

    def backward(self, d_logits: np.ndarray) -> None:
        self.rnn.backward(self.drop.backward(self.head.backward(d_logits)))


# -- data ------------------------------------------------------------------------------------------
def phone_means(F: int = F_DEFAULT, seed: int = 1234) -> Tuple[np.ndarray, np.ndarray]:
    """The "language": per symbol PHONES phone means [10, PHONES, F], and the silence mean [F]."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1.0, (len(SYMBOLS), PHONES, F)), rng.normal(0, 0.3, F)


def make_utterances(rng: np.random.Generator, count: int, means, silence,
                    min_len: int = 3, max_len: int = 15, noise: float = 0.7, blend: float = 0.35
                    ) -> List[Tuple[np.ndarray, List[int]]]:
    """``count`` utterances: (frames [T, F] float32, labels 1..10) (module docstring)."""
    F = means.shape[2]
    out = []
    for _ in range(count):
        words = rng.integers(0, len(SYMBOLS), int(rng.integers(min_len, max_len + 1)))
        frames = []
        for w_i, w in enumerate(words):
            for _ in range(int(rng.integers(0, 4))):
                frames.append(silence + rng.normal(0, noise, F))
            for ph in range(PHONES):
                dur = int(rng.integers(1, 5))
                for k in range(dur):
                    m = means[w, ph]
                    if ph == 0 and k == 0 and w_i > 0:        # from the previous word's end
                        m = (1 - blend) * m + blend * means[words[w_i - 1], PHONES - 1]
                    if ph == PHONES - 1 and k == dur - 1 and w_i + 1 < len(words):
                        m = (1 - blend) * m + blend * means[words[w_i + 1], 0]
                    frames.append(m + rng.normal(0, noise, F))
        out.append((np.asarray(frames, np.float32), [int(w) + 1 for w in words]))
    return out


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def read_npz(path) -> Tuple[List[Tuple[np.ndarray, List[int]]], Optional[List[str]]]:
    """The utterances (frames [T, F] float32, labels) and the optional symbol names of an .npz
    file (module docstring); DataError (one line naming the file and the array) for anything
    that is not such a file, before any utterance is built."""
    import zipfile
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"recognise: data file {path} does not exist") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"recognise: cannot read {path} as .npz: {e}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        # np.load gives a plain array for an .npy file (np.save): not the named arrays
        raise DataError(f"recognise: {path} holds one array ({z.dtype} {list(z.shape)}), not "
                        f"an .npz archive of the arrays features, frames, labels and "
                        f"label_counts (write it with np.savez)")
    try:
        with z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"recognise: cannot read {path} as .npz: {e}") from None
    need = ("features", "frames", "labels", "label_counts")
    missing = [k for k in need if k not in arrays]
    if missing:
        raise DataError(f"recognise: {path} lacks the arrays {missing} (needs {list(need)})")
    feats, frames, labels, counts = (arrays[k] for k in need)
    if feats.ndim != 2 or feats.dtype.kind != "f":
        raise DataError(f"recognise: features must be a float array [total_frames, F], got "
                        f"{feats.dtype} {list(feats.shape)}")
    for name, v in (("frames", frames), ("labels", labels), ("label_counts", counts)):
        if v.ndim != 1 or v.dtype.kind not in "iu":
            raise DataError(f"recognise: {name} must be a 1-D integer array")
    # negative counts could still sum to len(labels) and would shift every later transcript
    for name, v, least in (("frames", frames, 1), ("label_counts", counts, 0)):
        if len(v) and v.min() < least:
            i = int(np.argmax(v < least))
            raise DataError(f"recognise: {name} must be >= {least} ({name.replace('_', ' ')} "
                            f"per utterance), got {int(v[i])} for utterance {i}")
    if len(frames) != len(counts) or frames.sum() != len(feats) or counts.sum() != len(labels):
        raise DataError("recognise: frames must sum to len(features), label_counts to "
                        "len(labels), and both have one entry per utterance")
    if len(labels) and labels.min() < 1:
        raise DataError("recognise: labels must be >= 1 (0 is the CTC blank)")
    if len(frames) < 10:
        raise DataError("recognise: need at least 10 utterances, each with >= 1 frame")
    # the model computes in float32: NaN, infinities and values float32 cannot hold would
    # only show up later as a NaN loss (blamed on --lr)
    big = float(np.finfo(np.float32).max)
    bad = ~np.isfinite(feats)
    with np.errstate(invalid="ignore"):
        bad |= np.abs(feats) > big
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        utt = int(np.searchsorted(np.cumsum(frames), row, side="right"))
        v = feats[row, col]
        why = "values must be finite" if not np.isfinite(v) else \
            f"beyond the {big:.3g} float32 holds: rescale the features"
        raise DataError(f"recognise: {path}: features[{row}, {col}] (frame {row}, utterance "
                        f"{utt}) holds {float(v)!r} ({why})")
    utts, f0, l0 = [], 0, 0
    for i, (nf, nl) in enumerate(zip(frames.tolist(), counts.tolist())):
        lab = labels[l0:l0 + nl].astype(int).tolist()
        # CTC aligns L labels to T frames only if T >= L + (labels repeated in a row, each
        # needing a blank between): else its loss is infinite, which training's zero_infinity
        # would count as 0 (a file of such utterances had trained to "loss 0.0000")
        repeats = sum(a == b for a, b in zip(lab, lab[1:]))
        if nf < nl + repeats:
            raise DataError(f"recognise: {path}: utterance {i} has {nf} frames for {nl} labels"
                            + (f" ({repeats} repeated in a row)" if repeats else "")
                            + f": CTC needs at least {nl + repeats} frames to align them")
        utts.append((feats[f0:f0 + nf].astype(np.float32), lab))
        f0, l0 = f0 + nf, l0 + nl
    symbols = [str(s) for s in arrays["symbols"].tolist()] if "symbols" in arrays else None
    return utts, symbols


# -- the task --------------------------------------------------------------------------------------
class Recognise(Task):
    """Speech-like recognition with a bidirectional LSTM and CTC (module docstring).

    Defaults: ``cell lstm, hidden 128, layers 1, bidirectional True, dropout 0, batch_size 32,
    lr 3e-3, time_budget 120``; 4000 training and 300 validation utterances. Metrics: ``ler``
    (primary: label error rate of greedy decoding), ``ler_beam`` and ``ler_greedy_100`` (beam
    search and greedy on the first 100 utterances), ``loss`` (CTC per utterance, torch's mean
    reduction) and ``baseline_ler``.
    """
    name = "recognise"
    help = "speech-like recognition: bidirectional LSTM + CTC, greedy and beam decoding"
    metric = "ler"
    higher_is_better = False
    unit = "seq"
    bidirectional_ok = True
    flags = ("data",)
    length_flags = "its sequences are the utterances of its data"
    # issue 19's regularisers reach the recurrent stack; the head reads D * hidden features,
    # so proj_size (and the other cell options) are not wired into its model
    cell_options_ok = REG_OPTIONS
    cell_options_reason = "its model takes the plain cell's options; issue 19's " \
        "--layer-norm ... --dropout-masks do apply"
    defaults: Dict[str, Any] = {"cell": "lstm", "hidden": 128, "layers": 1,
                                "bidirectional": True, "dropout": 0.0, "batch_size": 32,
                                "lr": 3e-3, "time_budget": 120, "seed": 0}
    n_train, n_valid, n_beam, default_beam = 4000, 300, 100, 4

    def __init__(self, args):
        super().__init__(args)
        self.features: Optional[int] = None
        self.classes: Optional[int] = None
        self.symbols: List[str] = list(SYMBOLS)
        self.train_utts: List[Tuple[np.ndarray, List[int]]] = []
        self.valid_utts: List[Tuple[np.ndarray, List[int]]] = []

    def flag(self, name: str):
        v = getattr(self.args, name, None)
        return self.defaults.get(name) if v is None else v

    @property
    def beam(self) -> int:
        b = getattr(self.args, "beam", None)
        return self.default_beam if b is None else max(1, int(b))

    def prepare(self) -> None:
        seed = int(self.flag("seed") or 0)
        ss = np.random.SeedSequence([seed, 21]).spawn(2)
        data = getattr(self.args, "data", None)
        if data:
            utts, symbols = read_npz(data)
            perm = np.random.default_rng(ss[0]).permutation(len(utts))
            held = max(1, len(utts) // 10)
            self.valid_utts = [utts[k] for k in perm[:held]]
            self.train_utts = [utts[k] for k in perm[held:]]
            K = max(max(l) for _, l in utts if l) + 1 if any(l for _, l in utts) else 2
            if symbols is not None and len(symbols) != K - 1:
                raise DataError(f"recognise: symbols names {len(symbols)} labels, the data "
                                f"use {K - 1}")
            if self.classes is None:          # a fresh run: the data give the labels
                self._check_classes(K, utts, data)
                self.symbols = symbols if symbols is not None else \
                    [str(k) for k in range(1, K)]
            elif symbols is not None:
                # restored (--resume, evaluate --data): the checkpoint's names stay (a file
                # may use fewer labels), and a file that names a label otherwise is refused
                diff = [k for k, (a, b) in enumerate(zip(symbols, self.symbols), 1) if a != b]
                if diff:
                    k = diff[0]
                    raise DataError(f"recognise: {data} names label {k} {symbols[k - 1]!r}, "
                                    f"the checkpoint {self.symbols[k - 1]!r}")
        else:
            means, silence = phone_means()
            self.train_utts = make_utterances(np.random.default_rng(ss[0]), self.n_train, means,
                                              silence)
            self.valid_utts = make_utterances(np.random.default_rng(ss[1]), self.n_valid, means,
                                              silence)
        if self.features is None:
            self.features = int(self.train_utts[0][0].shape[1])
            self.classes = len(self.symbols) + 1
        for x, l in self.train_utts + self.valid_utts:
            if x.shape[1] != self.features or (l and max(l) >= self.classes):
                raise DataError(f"recognise: the data have {x.shape[1]} features / labels up "
                                f"to {max(l) if l else 0}; the model takes {self.features} "
                                f"features and {self.classes - 1} labels")

    def _check_classes(self, K: int, utts, path: str) -> None:
        """TooLarge (one line) when the K classes of the data (the largest label + 1: a stray
        huge label makes K huge) would need more memory than the machine has: the output
        layer with its optimiser state, the logits of a training batch and of a validation
        decoding chunk (float64), and the symbol names; checked before any of them exists."""
        from .guards import check_memory
        D = 2 if self.flag("bidirectional") else 1
        H, N = int(self.flag("hidden")), int(self.flag("batch_size"))
        T = max(len(x) for x, _ in utts)
        why = f"labels up to {K - 1} in --data {path}, {K} classes"
        check_memory([(f"{why}: the output layer", D * H * K * 4 * 4 + K * 64),
                      (f"{why}: the logits of a batch", T * N * K * 4 * 4),
                      (f"{why}: validation decoding",
                       T * min(256, len(self.valid_utts)) * K * 8 * 3)],
                     what="recognise")

    def make_batch(self, utts):
        lengths = np.array([len(x) for x, _ in utts], np.int64)
        x = np.zeros((int(lengths.max()), len(utts), self.features), np.float32)
        for n, (f, _) in enumerate(utts):
            x[:len(f), n] = f
        tl = np.array([len(l) for _, l in utts], np.int64)
        targets = np.zeros((len(utts), max(1, int(tl.max()))), np.int64)
        for n, (_, l) in enumerate(utts):
            targets[n, :len(l)] = l
        return x, lengths, targets, tl

    def batches(self, rng: np.random.Generator) -> Iterator[Any]:
        bs = min(int(self.flag("batch_size")), len(self.train_utts))
        while True:
            perm = rng.permutation(len(self.train_utts))
            for i in range(0, len(perm) - bs + 1, bs):
                self.epoch += bs / len(self.train_utts)
                yield self.make_batch([self.train_utts[k] for k in perm[i:i + bs]])

    def build_model(self, dtype=None) -> Module:
        cell = str(self.flag("cell")).lower()
        return CtcRecognizer(self.features, self.classes, hidden=int(self.flag("hidden")),
                             layers=int(self.flag("layers")), cell=cell,
                             bidirectional=bool(self.flag("bidirectional")),
                             dropout=float(self.flag("dropout")),
                             dtype=dtype or getattr(self.args, "dtype", None) or "float32",
                             seed=int(self.flag("seed") or 0), options=self.cell_opts)

    def train_step(self, model: Module, batch) -> Tuple[float, int]:
        x, lengths, targets, tl = batch
        if not model.training:
            model.train()
        logits = model.forward(x.astype(model.head.weight.dtype, copy=False), lengths)
        loss, grad = ctc_logits(logits, targets, lengths, tl, zero_infinity=True)
        model.backward(grad)
        return loss, x.shape[1]

    def decode(self, model: Module, utts, beam: Optional[int] = None, chunk: int = 256,
               n_beam: Optional[int] = None):
        """(greedy label lists of every utterance, beam-search ones of the first ``n_beam``
        (None: all), per-utterance CTC losses); eval mode."""
        beam = self.beam if beam is None else int(beam)
        was = model.training
        model.eval()
        greedy, best, losses_ = [], [], []
        try:
            for i in range(0, len(utts), chunk):
                x, lengths, targets, tl = self.make_batch(utts[i:i + chunk])
                logits = model.forward(x.astype(model.head.weight.dtype, copy=False), lengths)
                losses_.append(ctc_logits(logits, targets, lengths, tl, reduction="none",
                                          zero_infinity=True, grad=False))
                lp = logits.astype(np.float64)
                lp = lp - lp.max(-1, keepdims=True)
                lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
                greedy += ctc_greedy_decode(lp, lengths)
                take = len(lengths) if n_beam is None else max(0, min(len(lengths),
                                                                     n_beam - i))
                if beam > 1 and take:
                    best += [r[0][0] for r in ctc_beam_search(
                        np.ascontiguousarray(lp[:, :take]), lengths[:take], beam_width=beam,
                        prune=8.0)]
        finally:
            model.train(was)
        if beam <= 1:
            best = greedy if n_beam is None else greedy[:n_beam]
        return greedy, best, np.concatenate(losses_)

    @staticmethod
    def ler(hyps, utts) -> float:
        ref = sum(len(l) for _, l in utts)
        return sum(edit_distance(h, l) for h, (_, l) in zip(hyps, utts)) / max(1, ref)

    def evaluate(self, model: Module) -> Dict[str, float]:
        greedy, best, per = self.decode(model, self.valid_utts, n_beam=self.n_beam)
        sub = self.valid_utts[:len(best)]
        tl = np.array([max(1, len(l)) for _, l in self.valid_utts], np.float64)
        counts = np.bincount([k for _, l in self.train_utts for k in l],
                             minlength=self.classes)
        mean_len = int(round(np.mean([len(l) for _, l in self.train_utts])))
        repeat = [int(np.argmax(counts[1:]) + 1)] * mean_len
        return {"ler": self.ler(greedy, self.valid_utts),
                "ler_beam": self.ler(best, sub),
                "ler_greedy_100": self.ler(greedy[:len(best)], sub),
                "loss": float(np.mean(per / tl)),
                # the better trivial answer: nothing (LER 1), or the most frequent symbol
                "baseline_ler": min(1.0, self.ler([repeat] * len(self.valid_utts),
                                                  self.valid_utts))}

    def summary(self, model: Module) -> List[str]:
        utts = self.valid_utts[:6]
        _, best, _ = self.decode(model, utts)
        text = lambda seq: " ".join(self.symbols[k - 1] for k in seq)  # noqa: E731
        return [f"{len(x):4d} frames: {text(b):32} {'' if b == l else f'  (want {text(l)})'}"
                for (x, l), b in zip(utts, best)]

    def metadata(self) -> Dict[str, Any]:
        meta = super().metadata()
        meta.update(features=self.features, classes=self.classes, symbols=list(self.symbols))
        return meta

    def restore(self, metadata: Dict[str, Any]) -> None:
        self._restore_flags(metadata)
        self.resolve_flags()   # the checkpoint's cell options (self.cell_opts) build its model
        self.features = int(metadata["features"])
        self.classes = int(metadata["classes"])
        self.symbols = list(metadata["symbols"])
