"""``--task tag``: sequence labelling (slot filling) with a bidirectional recurrent network.

The default data are utterances to a travel-booking system generated from a seeded grammar
("i want to fly from Boston to New York on friday morning", "Taipei is where i arrive on
November 2nd", "on the 3rd of May i leave Denver"), each word labelled in BIO form with the
slot types ``departure``, ``destination``, ``date`` and ``time`` (``O`` for other words). About
half of the templates put the cue that decides between departure and destination *after* the
city ("Taipei is where i arrive", "Boston to Denver on friday"), so a left-to-right network
cannot always know the label; a bidirectional one can. A few cities occur only in the
validation utterances (they read as ``<unk>``) and must be recognised from context.

``--data FILE`` replaces the grammar by a CoNLL-style file: one ``word TAG`` per line (more
columns are allowed: the word is the first, the tag the last), a blank line between sentences,
``-DOCSTART-`` lines skipped; tags ``O``, ``B-type`` or ``I-type``. An ``I-type`` that does not
continue a chunk of its type (IOB1 files) is read as ``B-type``. Every tenth sentence (a seeded
choice) is held out for validation.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .. import losses
from ..module import Dropout, Embedding, Linear, Module, register_module
from .base import DataError, Task
from .common import make_rnn, model_kwargs, sub_seeds, torch_parts, torch_sequence_loss
from .guards import read_limited, split_lines, strip_bom

__all__ = ["Tag", "SequenceTagger", "spans", "span_f1"]

PAD, UNK = "<pad>", "<unk>"


# -- model -----------------------------------------------------------------------------------------
@register_module
class SequenceTagger(Module):
    """Embedding -> dropout -> (bidirectional) LSTM / GRU / RNN -> dropout -> Linear over tags.

    forward(idx [T, N] integers, lengths [N]) -> logits [T, N, num_tags]; backward(d_logits).
    Index 0 is padding (its embedding row stays zero).
    """

    def __init__(self, vocab_size: int, num_tags: int, embed: int = 64, hidden: int = 128,
                 layers: int = 1, cell: str = "lstm", bidirectional: bool = True,
                 dropout: float = 0.0, dtype="float32", seed: Optional[int] = None,
                 options: Optional[Dict[str, Any]] = None):
        super().__init__()
        options = dict(options or {})
        self._record(vocab_size=vocab_size, num_tags=num_tags, embed=embed, hidden=hidden,
                     layers=layers, cell=cell, bidirectional=bool(bidirectional),
                     dropout=dropout, dtype=np.dtype(dtype), seed=seed, options=options)
        s = sub_seeds(seed, 5)
        self.embedding = Embedding(vocab_size, embed, padding_idx=0, dtype=dtype, seed=s[0])
        self.embed_drop = Dropout(dropout, seed=s[1])
        self.rnn = make_rnn(cell, embed, hidden, layers, dropout, s[2],
                            bidirectional=bidirectional, dtype=dtype, where="SequenceTagger",
                            options=options)
        self.out_drop = Dropout(dropout, seed=s[3])
        self.head = Linear((2 if bidirectional else 1) * self.rnn.state_size, num_tags,
                           dtype=dtype, seed=s[4])

    def forward(self, idx: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        x = self.embed_drop.forward(self.embedding.forward(idx))
        out, _ = self.rnn.forward(x, lengths=lengths)
        return self.head.forward(self.out_drop.forward(out))

    def backward(self, d_logits: np.ndarray) -> None:
        d = self.out_drop.backward(self.head.backward(d_logits))
        d = self.embed_drop.backward(self.rnn.backward(d))
        self.embedding.backward(d)


# -- chunks and F1 (conlleval) ------------------------------------------------------------------
def spans(tags: Sequence[str]) -> List[Tuple[int, int, str]]:
    """Chunks (start, end, type) of a BIO tag sequence as conlleval reads it: a chunk starts at
    ``B-x``, or at ``I-x`` that does not continue a chunk of type x, and runs while ``I-x``
    follows."""
    out, start, typ = [], None, None
    for i, t in enumerate(list(tags) + ["O"]):
        prefix, ty = ("O", None) if t == "O" else (t[0], t[2:])
        if start is not None and (prefix != "I" or ty != typ):
            out.append((start, i, typ))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, typ = i, ty
    return out


def span_f1(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> Dict[str, float]:
    """Exact-match chunk precision, recall and F1 (span and type), plus token accuracy."""
    tp = n_gold = n_pred = correct = total = 0
    for g, p in zip(gold, pred):
        gs, ps = set(spans(g)), set(spans(p))
        tp += len(gs & ps)
        n_gold += len(gs)
        n_pred += len(ps)
        correct += sum(a == b for a, b in zip(g, p))
        total += len(g)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall,
            "accuracy": correct / total if total else 0.0}


# -- the default grammar -----------------------------------------------------------------------
_CITIES = [
    "Boston", "Denver", "Taipei", "Chicago", "Seattle", "Atlanta", "Dallas", "Houston", "Miami",
    "Phoenix", "Portland", "Detroit", "Toronto", "Montreal", "Vancouver", "London", "Paris",
    "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Dublin", "Lisbon", "Amsterdam", "Zurich",
    "Tokyo", "Osaka", "Seoul", "Beijing", "Shanghai", "Singapore", "Bangkok", "Sydney",
    "Melbourne", "Auckland", "Cairo", "Istanbul", "Dubai", "Mumbai", "Delhi", "Moscow",
    "Stockholm", "Helsinki", "Athens", "Baltimore", "Pittsburgh", "Orlando", "Nashville",
    "New York", "San Francisco", "Los Angeles", "Las Vegas", "San Diego", "Hong Kong",
    "Salt Lake City", "Kuala Lumpur", "Buenos Aires", "Rio de Janeiro", "Mexico City",
]
# cities that occur only in the validation utterances (unseen words: <unk>)
_HELDOUT_CITIES = ["Reykjavik", "Nairobi", "Lima", "Oslo", "Perth", "Quito"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _slot(words: str, typ: Optional[str]) -> List[Tuple[str, str]]:
    toks = words.split()
    if typ is None:
        return [(w, "O") for w in toks]
    return [(w, ("B-" if i == 0 else "I-") + typ) for i, w in enumerate(toks)]


def _date(rng) -> List[Tuple[str, str]]:
    m, d = _MONTHS[rng.integers(12)], int(rng.integers(1, 29))
    k = rng.integers(9)
    if k == 0:
        return _slot(f"{m} {_ordinal(d)}", "date")
    if k == 1:
        return _slot(f"{m} {d}", "date")
    if k == 2:
        return _slot(f"the {_ordinal(d)} of {m}", "date")
    if k == 3:
        return _slot(f"{_ordinal(d)} of {m}", "date")
    if k == 4:
        return _slot(_WEEKDAYS[rng.integers(7)], "date")
    if k == 5:
        return _slot(("next " if rng.random() < 0.5 else "this ") + _WEEKDAYS[rng.integers(7)],
                     "date")
    if k == 6:
        return _slot(["today", "tomorrow", "tonight"][rng.integers(3)], "date")
    if k == 7:
        return _slot(f"{m[:3]} {_ordinal(d)}", "date")
    return _slot(f"{_WEEKDAYS[rng.integers(7)]} {m} {_ordinal(d)}", "date")


def _clock(rng) -> str:
    h = int(rng.integers(1, 13))
    ampm = ["am", "pm"][rng.integers(2)]
    k = rng.integers(3)
    if k == 0:
        return f"{h} {ampm}"
    if k == 1:
        return f"{h}:{['15', '30', '45'][rng.integers(3)]} {ampm}"
    return f"{h} o'clock"


def _time_pp(rng) -> List[Tuple[str, str]]:
    """A time phrase with its preposition: 'in the morning', 'at 9 am', 'around noon'."""
    k = rng.integers(5)
    if k == 0:
        return _slot("in the", None) + _slot(["morning", "afternoon", "evening"][rng.integers(3)],
                                             "time")
    if k == 1:
        return _slot("at", None) + _slot(_clock(rng), "time")
    if k == 2:
        return _slot(["around", "before", "after"][rng.integers(3)], None) + \
            _slot(_clock(rng), "time")
    if k == 3:
        return _slot(["around", "at"][rng.integers(2)], None) + \
            _slot(["noon", "midnight"][rng.integers(2)], "time")
    return _slot("at", None) + _slot("night", "time")


def _time_bare(rng) -> List[Tuple[str, str]]:
    return _slot(["morning", "afternoon", "evening", "night", "noon"][rng.integers(5)], "time")


def _date_pp(rng) -> List[Tuple[str, str]]:
    """A date phrase with its preposition when the date needs one ('on November 2nd',
    'tomorrow')."""
    d = _date(rng)
    if d[0][0] in ("today", "tomorrow", "tonight", "next", "this"):
        return d
    return _slot("on", None) + d


def _when(rng) -> List[Tuple[str, str]]:
    """Optional date and time: '', 'on friday', 'on friday in the morning', 'friday morning'."""
    k = rng.integers(5)
    if k == 0:
        return []
    if k == 1:
        return _date_pp(rng)
    if k == 2:
        return _date_pp(rng) + _time_pp(rng)
    if k == 3:
        return _time_pp(rng) + _date_pp(rng)
    d = _date(rng)
    return (_slot("on", None) + d if d[0][0] not in ("today", "tomorrow", "tonight", "next",
                                                     "this") else d) + _time_bare(rng)


def _w(s: str) -> List[Tuple[str, str]]:
    return _slot(s, None)


# Each template: f(rng, dep, dest) -> [(word, tag)]; dep/dest are token lists already tagged.
# The first group is readable left to right; the second needs right context.
_LEFT = [
    lambda r, a, b: _w("i want to fly from") + a + _w("to") + b + _when(r),
    lambda r, a, b: _w("show me flights from") + a + _w("to") + b + _when(r),
    lambda r, a, b: _w("flights to") + b + _w("from") + a + _when(r),
    lambda r, a, b: _w(["arrive", "arrive in", "i arrive in"][r.integers(3)]) + b + _when(r),
    lambda r, a, b: _w(["leave", "i leave", "depart from"][r.integers(3)]) + a + _when(r),
    lambda r, a, b: _w("i need a flight to") + b + _w("leaving") + a + _when(r),
    lambda r, a, b: _date_pp(r) + _w("i leave") + a,
    lambda r, a, b: _w("book a ticket from") + a + _w("to") + b + _w("for") + _date(r),
    lambda r, a, b: _w("i would like to go to") + b + _when(r),
    lambda r, a, b: _w("what flights leave") + a + _when(r) + _w("for") + b,
    lambda r, a, b: _date(r) + _w("i arrive in") + b,
]
_RIGHT = [
    lambda r, a, b: b + _w("is where i arrive") + _when(r),
    lambda r, a, b: a + _w(["is where i leave from", "is where i depart"][r.integers(2)])
    + _when(r),
    lambda r, a, b: b + _w("is my destination"),
    lambda r, a, b: a + _w("is my starting point"),
    lambda r, a, b: a + _w("to") + b + _when(r),
    lambda r, a, b: b + _w("from") + a + _when(r),
    lambda r, a, b: a + _w("then") + b + _w("please"),
    lambda r, a, b: b + _w("and back to") + a + _when(r),
]


def _utterance(rng, cities: Sequence[str]) -> List[Tuple[str, str]]:
    i, j = rng.choice(len(cities), 2, replace=False)
    dep, dest = _slot(cities[i], "departure"), _slot(cities[j], "destination")
    group = _RIGHT if rng.random() < 0.5 else _LEFT
    return group[rng.integers(len(group))](rng, dep, dest)


def generate(n: int, seed, heldout: bool = False) -> List[List[Tuple[str, str]]]:
    """``n`` tagged utterances from the grammar (``heldout``: some cities never used in
    training)."""
    rng = np.random.default_rng(seed)
    cities = _CITIES + _HELDOUT_CITIES * 2 if heldout else _CITIES
    return [_utterance(rng, cities) for _ in range(n)]


# -- CoNLL files ---------------------------------------------------------------------------------
_TAG_RE = re.compile(r"^(O|[BI]-\S+)$")


def read_conll(path) -> List[List[Tuple[str, str]]]:
    """Sentences of (word, tag) from a CoNLL-style file (the first column is the word, the
    last the tag; columns split at whitespace, or at tabs only on a line that has a tab);
    DataError on anything malformed."""
    try:
        # newline="": no newline translation, split_lines splits at "\n" ("\r\n") only
        with open(path, encoding="utf-8", newline="") as f:
            lines = split_lines(strip_bom(read_limited(f, f"tag: data file {path}")))
    except FileNotFoundError:
        raise DataError(f"tag: data file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"tag: cannot read {path}: {e}") from None
    sentences, cur = [], []
    for no, line in enumerate(lines, 1):
        if "\t" in line:
            # tab-separated columns: a word may hold spaces ("New York<TAB>B-dest" is one
            # word, not "New" tagged B-dest)
            fields = [f for f in (f.strip() for f in line.split("\t")) if f]
        else:
            fields = line.split()
        if not fields:
            if cur:
                sentences.append(cur)
                cur = []
            continue
        if fields[0] == "-DOCSTART-":
            continue
        if len(fields) < 2:
            raise DataError(f"tag: {path}:{no}: expected 'word TAG', got {line.strip()!r}")
        tag = fields[-1]
        if not _TAG_RE.match(tag):
            raise DataError(f"tag: {path}:{no}: tag {tag!r} is not BIO (O, B-type or I-type)")
        if tag.startswith("I-") and (not cur or cur[-1][1][2:] != tag[2:]
                                     or cur[-1][1] == "O"):
            tag = "B-" + tag[2:]   # IOB1: an I- that starts a chunk
        cur.append((fields[0], tag))
    if cur:
        sentences.append(cur)
    if len(sentences) < 10:
        raise DataError(f"tag: {path} has {len(sentences)} sentences; at least 10 are needed")
    if not any(t != "O" for s in sentences for _, t in s):
        raise DataError(f"tag: {path} has no tagged chunk (every tag is O)")
    return sentences


# -- the task ------------------------------------------------------------------------------------
class Tag(Task):
    """Slot filling: word-level BIO tags with a bidirectional LSTM.

    Defaults: ``cell lstm, embed 64, hidden 128, layers 1, bidirectional True, dropout 0.25,
    batch_size 32, lr 3e-3, time_budget 60`` (seconds). Data: 4000 training and 600 validation
    utterances of the grammar (``seed`` picks them), or ``--data FILE`` (CoNLL).

    Words are looked up lower-cased; words not in the training data read as ``<unk>``. During
    training a word is replaced by ``<unk>`` with probability 0.1 inside a chunk and 0.01
    outside (word dropout), so that ``<unk>`` is learnt.

    Metrics: ``f1`` (primary; exact chunk span and type, conlleval), ``precision``, ``recall``,
    ``accuracy`` (per token), ``loss`` (validation cross-entropy per token) and the baseline
    ``baseline_f1`` / ``baseline_accuracy``: each word's most frequent training tag (``O`` for
    unseen words).
    """
    name = "tag"
    help = "sequence labelling: slot filling in travel requests (bidirectional LSTM)"
    metric = "f1"
    higher_is_better = True
    unit = "token"
    bidirectional_ok = True
    flags = ("data", "embed")
    length_flags = "its sequences are the utterances of its data"
    defaults: Dict[str, Any] = {"cell": "lstm", "embed": 64, "hidden": 128, "layers": 1,
                                "bidirectional": True, "dropout": 0.25, "batch_size": 32,
                                "lr": 3e-3, "time_budget": 60, "seed": 0}
    n_train, n_valid = 4000, 600
    unk_in_chunk, unk_outside = 0.1, 0.01

    def __init__(self, args):
        super().__init__(args)
        self.split_seed: Optional[int] = None
        self.vocab: Optional[List[str]] = None
        self.tags: Optional[List[str]] = None
        self.train_data: List[List[Tuple[str, str]]] = []
        self.valid_data: List[List[Tuple[str, str]]] = []

    # -- data --------------------------------------------------------------------------------
    def prepare(self) -> None:
        # the data split of a restored checkpoint is the one it was trained with
        seed = self.split_seed if self.split_seed is not None else int(self.flag("seed") or 0)
        self.split_seed = seed
        data = getattr(self.args, "data", None)
        if data:
            sentences = read_conll(data)
            rng = np.random.default_rng(seed)
            valid = np.zeros(len(sentences), bool)
            valid[rng.permutation(len(sentences))[:max(1, len(sentences) // 10)]] = True
            self.train_data = [s for s, v in zip(sentences, valid) if not v]
            self.valid_data = [s for s, v in zip(sentences, valid) if v]
        else:
            ss = np.random.SeedSequence([seed, 7]).spawn(2)
            self.train_data = generate(self.n_train, ss[0])
            self.valid_data = generate(self.n_valid, ss[1], heldout=True)
        if self.vocab is None:   # not restored from a checkpoint
            words = sorted({w.lower() for s in self.train_data for w, _ in s})
            self.vocab = [PAD, UNK] + words
            # the tags of the whole data: a tag seen only in the validation split (a rare one,
            # by the seed's draw) is still a tag of the file, not an error of it. (Words stay
            # those of the training split: an unseen word reads as the trained <unk>.)
            tags = {t for s in self.train_data + self.valid_data for _, t in s}
            self.tags = ["O"] + sorted(tags - {"O"})
        self._index()
        unknown = {t for s in self.train_data + self.valid_data for _, t in s} - set(self.tags)
        if unknown:
            if data:
                raise DataError(f"tag: {data} has tags the model does not know: "
                                f"{sorted(unknown)}")
            raise DataError(f"tag: tags {sorted(unknown)} are not in the model's tag set")
        # majority tag per (lower-cased) word: the baseline
        counts: Dict[str, Counter] = defaultdict(Counter)
        for s in self.train_data:
            for w, t in s:
                counts[w.lower()][t] += 1
        self.majority = {w: c.most_common(1)[0][0] for w, c in counts.items()}
        self._train_enc = [self._encode(s) for s in self.train_data]
        self._valid_enc = [self._encode(s) for s in self.valid_data]

    def _index(self):
        self.word_id = {w: i for i, w in enumerate(self.vocab)}
        self.tag_id = {t: i for i, t in enumerate(self.tags)}

    def _encode(self, sentence):
        words = np.array([self.word_id.get(w.lower(), 1) for w, _ in sentence], np.int64)
        tags = np.array([self.tag_id[t] for _, t in sentence], np.int64)
        return words, tags

    @staticmethod
    def _pad(items: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        lengths = np.array([len(a) for a in items], np.int64)
        out = np.zeros((max(1, int(lengths.max())), len(items)), np.int64)
        for n, a in enumerate(items):
            out[:len(a), n] = a
        return out, lengths

    def batches(self, rng: np.random.Generator) -> Iterator[Any]:
        data = self._train_enc
        bs = min(int(self.flag("batch_size")), len(data))
        while True:
            perm = rng.permutation(len(data))
            for i in range(0, len(data) - bs + 1, bs):
                chosen = [data[k] for k in perm[i:i + bs]]
                words = []
                for w, t in chosen:
                    p = np.where(t != 0, self.unk_in_chunk, self.unk_outside)
                    words.append(np.where(rng.random(len(w)) < p, 1, w))
                x, lengths = self._pad(words)
                y, _ = self._pad([t for _, t in chosen])
                self.epoch += bs / len(data)
                yield x, y, lengths

    # -- model ---------------------------------------------------------------------------------
    def build_model(self, dtype=None) -> Module:
        return SequenceTagger(len(self.vocab), len(self.tags), **model_kwargs(self, dtype),
                              options=self.cell_opts)

    def train_step(self, model: Module, batch) -> Tuple[float, int]:
        x, y, lengths = batch
        if not model.training:
            model.train()
        logits = model.forward(x, lengths)
        loss, grad = losses.cross_entropy(logits, y, lengths=lengths)
        model.backward(grad)
        return loss, int(lengths.sum())

    # -- evaluation ------------------------------------------------------------------------------
    def _logits(self, model: Module, encoded: Sequence[np.ndarray], chunk: int = 512):
        """Eval-mode logits per sentence ([len, num_tags] arrays)."""
        was = model.training
        model.eval()
        out = []
        try:
            for i in range(0, len(encoded), chunk):
                part = encoded[i:i + chunk]
                x, lengths = self._pad(part)
                logits = model.forward(x, lengths)
                out.extend(logits[:n, k] for k, n in enumerate(lengths))
        finally:
            model.train(was)
        return out

    def evaluate(self, model: Module) -> Dict[str, float]:
        words = [w for w, _ in self._valid_enc]
        logits = self._logits(model, words)
        gold = [[t for _, t in s] for s in self.valid_data]
        pred = [[self.tags[k] for k in lg.argmax(1)] for lg in logits]
        m = span_f1(gold, pred)
        nll = sum(-float(losses.log_softmax(lg.astype(np.float64))[np.arange(len(t)), t].sum())
                  for lg, (_, t) in zip(logits, self._valid_enc))
        m["loss"] = nll / max(1, sum(len(t) for _, t in self._valid_enc))
        base = [[self.majority.get(w.lower(), "O") for w, _ in s] for s in self.valid_data]
        b = span_f1(gold, base)
        m["baseline_f1"], m["baseline_accuracy"] = b["f1"], b["accuracy"]
        return m

    def tag_words(self, model: Module, sentences: Sequence[Sequence[str]]) -> List[List[str]]:
        """Predicted tags for tokenised sentences (empty sentences give [])."""
        enc = [np.array([self.word_id.get(w.lower(), 1) for w in s], np.int64)
               for s in sentences]
        nonempty = [i for i, e in enumerate(enc) if len(e)]
        out: List[List[str]] = [[] for _ in sentences]
        if nonempty:
            for i, lg in zip(nonempty, self._logits(model, [enc[i] for i in nonempty])):
                out[i] = [self.tags[k] for k in lg.argmax(1)]
        return out

    def predict(self, model: Module, inputs: List[str]) -> List[str]:
        """Each line an utterance (split on whitespace) -> ``word/TAG word/TAG ...``."""
        sentences = [line.split() for line in inputs]
        return [" ".join(f"{w}/{t}" for w, t in zip(s, tags))
                for s, tags in zip(sentences, self.tag_words(model, sentences))]

    def summary(self, model: Module) -> List[str]:
        sents = [[w for w, _ in s] for s in self.valid_data[:4]]
        return [" ".join(f"{w}/{t}" for w, t in zip(s, tags))
                for s, tags in zip(sents, self.tag_words(model, sents))]

    def slot_f1(self, model: Module) -> Dict[str, Dict[str, float]]:
        """Per slot type: exact-match span F1 on the validation utterances, with the
        majority-tag baseline's, and the number of gold spans."""
        words = [w for w, _ in self._valid_enc]
        gold = [[t for _, t in s] for s in self.valid_data]
        pred = [[self.tags[k] for k in lg.argmax(1)] for lg in self._logits(model, words)]
        base = [[self.majority.get(w.lower(), "O") for w, _ in s] for s in self.valid_data]
        types = sorted({sp[-1] for g in gold for sp in spans(g)})

        def f1(guess, typ):
            tp = ng = npred = 0
            for g, p in zip(gold, guess):
                gs = {s for s in spans(g) if s[-1] == typ}
                ps = {s for s in spans(p) if s[-1] == typ}
                tp, ng, npred = tp + len(gs & ps), ng + len(gs), npred + len(ps)
            return 2 * tp / (ng + npred) if ng + npred else 0.0, ng

        out = {}
        for t in types:
            (m, n), (b, _) = f1(pred, t), f1(base, t)
            out[t] = {"f1": m, "baseline_f1": b, "spans": n}
        return out

    def plot(self, model: Module, out_dir: str) -> Optional[str]:
        """tag.png: per-slot span F1 bars (model vs the majority-tag baseline) on the
        validation utterances. None without matplotlib."""
        import os

        from ..plotting import pyplot, save_png
        plt = pyplot()
        if plt is None:
            return None
        per = self.slot_f1(model)
        names = list(per)
        xs = np.arange(len(names))
        fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(names) + 2), 4))
        ax.bar(xs - 0.2, [per[n]["f1"] for n in names], 0.4, label=f"model ({self.args.cell})")
        ax.bar(xs + 0.2, [per[n]["baseline_f1"] for n in names], 0.4, color="gray",
               label="baseline (majority tag per word)")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{n}\n({per[n]['spans']})" for n in names], fontsize=8)
        ax.set_ylabel("span F1 (validation)")
        ax.set_ylim(0, 1.05)
        ax.set_title("per-slot F1 (number of gold spans)", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        return save_png(fig, os.path.join(out_dir, "tag.png"))

    # -- checkpoints -----------------------------------------------------------------------------
    def metadata(self) -> Dict[str, Any]:
        meta = super().metadata()
        meta.update(vocab=list(self.vocab), tags=list(self.tags),
                    split_seed=self.split_seed)
        return meta

    def restore(self, metadata: Dict[str, Any]) -> None:
        self._restore_flags(metadata)
        self.resolve_flags()
        self.vocab = list(metadata["vocab"])
        self.tags = list(metadata["tags"])
        self.split_seed = metadata.get("split_seed")
        self._index()

    # -- --compare-torch ---------------------------------------------------------------------------
    def torch_model(self, model: Module):
        """torch twin: same weights, and copies of the model's dropout-mask generators (the same
        masks, drawn in the same order)."""
        import torch
        MaskDropout, Recurrent = torch_parts()

        class TorchTagger(torch.nn.Module):
            def __init__(self, m: SequenceTagger):
                super().__init__()
                dt = torch.float64 if m.head.weight.dtype == np.float64 else torch.float32
                self.embedding = torch.nn.Embedding(m.embedding.num_embeddings,
                                                    m.embedding.embedding_dim, padding_idx=0,
                                                    dtype=dt)
                self.embed_drop = MaskDropout(m.embed_drop)
                self.rnn = Recurrent(m.rnn)
                self.out_drop = MaskDropout(m.out_drop)
                self.head = torch.nn.Linear(m.head.in_features, m.head.out_features, dtype=dt)
                with torch.no_grad():
                    self.embedding.weight.copy_(torch.from_numpy(m.embedding.weight.data))
                    self.head.weight.copy_(torch.from_numpy(m.head.weight.data))
                    self.head.bias.copy_(torch.from_numpy(m.head.bias.data))

            def forward(self, x, lengths):
                out, _ = self.rnn(self.embed_drop(self.embedding(x)), lengths)
                return self.head(self.out_drop(out))

        return TorchTagger(model)

    def torch_train_step(self, tmodel, batch) -> Tuple[float, int]:
        import torch
        x, y, lengths = batch
        tmodel.train()
        logits = tmodel(torch.from_numpy(x), torch.from_numpy(lengths))
        return torch_sequence_loss(logits, y, lengths), int(lengths.sum())

    def torch_evaluate(self, tmodel) -> Dict[str, float]:
        import torch
        tmodel.eval()
        words = [w for w, _ in self._valid_enc]
        x, lengths = self._pad(words)
        with torch.no_grad():
            logits = tmodel(torch.from_numpy(x), torch.from_numpy(lengths)).double().numpy()
        gold = [[t for _, t in s] for s in self.valid_data]
        pred = [[self.tags[k] for k in logits[:n, i].argmax(1)] for i, n in enumerate(lengths)]
        m = span_f1(gold, pred)
        lp = losses.log_softmax(logits)
        nll = sum(-float(lp[np.arange(n), i, t].sum()) for i, (n, (_, t))
                  in enumerate(zip(lengths, self._valid_enc)))
        m["loss"] = nll / max(1, int(lengths.sum()))
        return m
