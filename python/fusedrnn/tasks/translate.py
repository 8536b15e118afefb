"""``--task translate``: sequence to sequence, dates written in many human formats to ISO form.

"2nd of November 2026", "Nov 2, 2026", "02.11.26", "Monday, November 2, 2026" (the weekday is
the date's own), "2026/11/02", "11/02/2026", ... -> "2026-11-02". Character-level encoder and
decoder: an encoder LSTM reads the input (variable lengths), its final state (h, c) initialises
a decoder LSTM that is trained with teacher forcing; the decoder's gradient with respect to its
initial state (``decoder.d_state``) is the encoder's ``d_state`` in backward. Decoding is greedy
or beam search (length-normalised log-probability).

Dates run from 1950-01-01 to 2049-12-31 (two-digit years: 50-99 are 19xx, 00-49 are 20xx). The
validation dates never occur in training (the split is by date, not by format): the network
must learn to read and rewrite the fields, not memorise dates.

``--data FILE`` replaces the generator by a UTF-8 file of ``source<TAB>target`` lines (blank
lines skipped); a seeded tenth of the distinct targets, with all their sources, is held out for
validation.

``--problem numbers`` replaces the dates by English number names of up to 12 digits to their
digits (long inputs, where attention matters); ``--attention bahdanau|luong|luong_dot`` adds
attention over the encoder outputs (default ``none``). Both live in
:mod:`fusedrnn.tasks.attention_seq2seq`.
"""
from __future__ import annotations

import datetime
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .. import losses
from ..module import Dropout, Embedding, Linear, Module, register_module
from .base import DataError, Task
from .common import REG_OPTIONS, make_rnn, model_kwargs, sub_seeds, torch_parts, \
    torch_sequence_loss
from .guards import check_memory, read_limited, split_lines, strip_bom

__all__ = ["Translate", "Seq2Seq", "format_date", "FORMATS", "iso_baseline"]

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


# -- model -----------------------------------------------------------------------------------------
def _map_state(state, f):
    return tuple(f(s) for s in state) if isinstance(state, tuple) else f(state)


@register_module
class Seq2Seq(Module):
    """Encoder-decoder without attention.

    src_embed -> encoder (LSTM/GRU/RNN, optionally bidirectional) -> final state -> decoder
    (same cell, hidden size D*hidden so that the two directions' states, concatenated, start it)
    -> dropout -> head (Linear over the target vocabulary). Index 0 is padding in both
    vocabularies.

    forward(src [S, N], src_len [N], tgt_in [T, N], tgt_len [N]) -> logits [T, N, V] (teacher
    forcing: tgt_in starts with <s>); backward(d_logits) runs through the decoder into the
    encoder via the decoder's ``d_state``. For decoding: ``encode(src, src_len)`` -> state,
    ``step(tokens [N], state)`` -> (logits [N, V], state).

    ``options``: issue 19's regularisers (layer_norm, ln_eps, zoneout_h, zoneout_c,
    recurrent_dropout, input_dropout, weight_drop, dropout_masks; see fusedrnn.LSTM), given to
    the encoder and the decoder alike (as Keras users set recurrent_dropout on both LSTMs),
    recorded in the config. Their state hand-over is unchanged: the layer-norm LSTM's carried
    cell (haste: un-normalised; tfa: normalised) starts the decoder as any c does.
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, embed: int = 32, hidden: int = 256,
                 layers: int = 1, cell: str = "lstm", bidirectional: bool = False,
                 dropout: float = 0.0, dtype="float32", seed: Optional[int] = None,
                 options: Optional[Dict[str, Any]] = None):
        super().__init__()
        options = dict(options or {})
        s = sub_seeds(seed, 6)
        D = 2 if bidirectional else 1
        self._record(src_vocab=src_vocab, tgt_vocab=tgt_vocab, embed=embed, hidden=hidden,
                     layers=layers, cell=cell, bidirectional=bool(bidirectional),
                     dropout=dropout, dtype=np.dtype(dtype), seed=seed,
                     **({"options": options} if options else {}))
        self.num_directions, self.layers = D, layers
        self.src_embed = Embedding(src_vocab, embed, padding_idx=0, dtype=dtype, seed=s[0])
        self.encoder = make_rnn(cell, embed, hidden, layers, dropout, s[1],
                                bidirectional=bidirectional, dtype=dtype, where="Seq2Seq",
                                options=options)
        self.tgt_embed = Embedding(tgt_vocab, embed, padding_idx=0, dtype=dtype, seed=s[2])
        self.decoder = make_rnn(cell, embed, D * hidden, layers, dropout, s[3], dtype=dtype,
                                options=options)
        self.drop = Dropout(dropout, seed=s[4])
        self.head = Linear(D * hidden, tgt_vocab, dtype=dtype, seed=s[5])

    # encoder final state [L*D, N, H] <-> decoder initial state [L, N, D*H]
    def _bridge(self, a: np.ndarray) -> np.ndarray:
        if self.num_directions == 1:
            return a
        L, D = self.layers, 2
        _, N, H = a.shape
        return np.ascontiguousarray(a.reshape(L, D, N, H).transpose(0, 2, 1, 3)
                                    .reshape(L, N, D * H))

    def _unbridge(self, d: np.ndarray) -> np.ndarray:
        if self.num_directions == 1:
            return d
        L, N, DH = d.shape
        H = DH // 2
        return np.ascontiguousarray(d.reshape(L, N, 2, H).transpose(0, 2, 1, 3)
                                    .reshape(L * 2, N, H))

    def encode(self, src: np.ndarray, src_len: np.ndarray):
        _, state = self.encoder.forward(self.src_embed.forward(src), lengths=src_len)
        return _map_state(state, self._bridge)

    def forward(self, src, src_len, tgt_in, tgt_len) -> np.ndarray:
        state = self.encode(src, src_len)
        out, _ = self.decoder.forward(self.tgt_embed.forward(tgt_in), state, lengths=tgt_len)
        return self.head.forward(self.drop.forward(out))

    def backward(self, d_logits: np.ndarray) -> None:
        d = self.decoder.backward(self.drop.backward(self.head.backward(d_logits)))
        self.tgt_embed.backward(d)
        d_state = _map_state(self.decoder.d_state, self._unbridge)
        self.src_embed.backward(self.encoder.backward(None, d_state))

    def step(self, tokens: np.ndarray, state, decoder=None):
        """One decoding step; `decoder` replaces self.decoder (decoding passes its frozen
        copy, which packs the weights once instead of per step)."""
        dec = self.decoder if decoder is None else decoder
        out, state = dec.forward(self.tgt_embed.forward(tokens[None, :]), state)
        return self.head.forward(out[0]), state


# -- decoding ------------------------------------------------------------------------------------
def beam_search(model: Seq2Seq, src: np.ndarray, src_len: np.ndarray, beam: int,
                max_len: int) -> Tuple[List[List[int]], np.ndarray]:
    """Beam search over a batch (beam=1 is greedy decoding). Returns, per sequence, the token
    ids of the best hypothesis (without </s>) and its length-normalised log-probability (sum of
    log p over the emitted tokens, </s> included, divided by their number). Beams are pruned by
    total log-probability; finished hypotheses stay in the beam and the final choice is by the
    normalised score. Runs the model in eval mode."""
    was = model.training
    model.eval()
    try:
        N, B = src.shape[1], int(beam)
        decoder = model.decoder.frozen()
        state = model.encode(src, src_len)
        state = _map_state(state, lambda a: np.repeat(a, B, axis=1))
        tokens = np.full(N * B, BOS, np.int64)
        scores = np.zeros((N, B))
        scores[:, 1:] = -np.inf                  # one live beam per sequence at the start
        finished = np.zeros((N, B), bool)
        hyp = np.zeros((N, B, max_len), np.int64)
        hyp_len = np.zeros((N, B), np.int64)
        rows = np.arange(N)[:, None]
        for t in range(max_len):
            logits, state = model.step(tokens, state, decoder)
            logp = losses.log_softmax(logits.astype(np.float64)).reshape(N, B, -1)
            V = logp.shape[2]
            cand = scores[:, :, None] + logp
            cand[finished] = -np.inf
            cand[finished, PAD] = scores[finished]   # a finished hypothesis carries over
            flat = cand.reshape(N, B * V)
            top = np.argpartition(-flat, B - 1, axis=1)[:, :B] if B < B * V else \
                np.broadcast_to(np.arange(B * V), (N, B * V))
            top = np.take_along_axis(top, np.argsort(-np.take_along_axis(flat, top, 1),
                                                     axis=1, kind="stable"), 1)
            parent, tok = top // V, top % V
            scores = np.take_along_axis(flat, top, 1)
            was_finished = finished[rows, parent]
            hyp = hyp[rows, parent]
            hyp[:, :, t] = np.where(was_finished, PAD, tok)
            hyp_len = hyp_len[rows, parent] + ~was_finished
            finished = was_finished | (tok == EOS)
            order = (rows * B + parent).reshape(-1)
            state = _map_state(state, lambda a: a[:, order])
            tokens = np.where(finished, PAD, tok).reshape(-1)
            if finished.all():
                break
        norm = scores / np.maximum(hyp_len, 1)
        best = np.argmax(norm, axis=1)
        out = []
        for n in range(N):
            seq = hyp[n, best[n], :hyp_len[n, best[n]]].tolist()
            out.append([k for k in seq if k not in (EOS, PAD)])
        return out, norm[np.arange(N), best]
    finally:
        model.train(was)


def decode(model: Seq2Seq, src, src_len, beam: int, max_len: int):
    """Greedy decoding and, for beam > 1, beam search that never scores below it: the greedy
    hypothesis is a candidate too (beam search pruned by total log-probability can, rarely,
    lose it). Returns (best ids, best scores, greedy ids, greedy scores)."""
    greedy, g_score = beam_search(model, src, src_len, 1, max_len)
    if beam <= 1:
        return greedy, g_score, greedy, g_score
    best, b_score = beam_search(model, src, src_len, beam, max_len)
    take = g_score > b_score
    return ([g if t else b for g, b, t in zip(greedy, best, take)],
            np.where(take, g_score, b_score), greedy, g_score)


# -- dates ---------------------------------------------------------------------------------------
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FIRST, LAST = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)


def _ord(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


# name -> formatter; the first three are the "ISO-like" inputs the baseline parses
FORMATS = {
    "iso": lambda d: f"{d.year:04d}-{d.month:02d}-{d.day:02d}",
    "ymd_slash": lambda d: f"{d.year:04d}/{d.month:02d}/{d.day:02d}",
    "ymd_compact": lambda d: f"{d.year:04d}{d.month:02d}{d.day:02d}",
    "dmy_dots": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year:04d}",
    "dmy_dots_short": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year % 100:02d}",
    "dmy_dots_loose": lambda d: f"{d.day}.{d.month}.{d.year:04d}",
    "mdy_slash": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year:04d}",
    "d_month_y": lambda d: f"{d.day} {_MONTHS[d.month - 1]} {d.year}",
    "nth_of_month_y": lambda d: f"{_ord(d.day)} of {_MONTHS[d.month - 1]} {d.year}",
    "the_nth_of_month_y": lambda d: f"the {_ord(d.day)} of {_MONTHS[d.month - 1]} {d.year}",
    "d_mon_y": lambda d: f"{d.day} {_MONTHS[d.month - 1][:3]} {d.year}",
    "d_mon_yy": lambda d: f"{d.day} {_MONTHS[d.month - 1][:3]} {d.year % 100:02d}",
    "mon_d_y": lambda d: f"{_MONTHS[d.month - 1][:3]} {d.day}, {d.year}",
    "month_d_y": lambda d: f"{_MONTHS[d.month - 1]} {d.day}, {d.year}",
    "month_nth_y": lambda d: f"{_MONTHS[d.month - 1]} {_ord(d.day)}, {d.year}",
    "day_month_d_y": lambda d: f"{_DAYS[d.weekday()]}, {_MONTHS[d.month - 1]} {d.day}, {d.year}",
    "dy_d_mon_y": lambda d: f"{_DAYS[d.weekday()][:3]}, {d.day} {_MONTHS[d.month - 1][:3]} "
                            f"{d.year}",
    "day_nth_month_y": lambda d: f"{_DAYS[d.weekday()]} {_ord(d.day)} {_MONTHS[d.month - 1]} "
                                 f"{d.year}",
    "d_mon_y_dash": lambda d: f"{d.day}-{_MONTHS[d.month - 1][:3]}-{d.year}",
    "mon_dot_nth_y": lambda d: f"{_MONTHS[d.month - 1][:3]}. {_ord(d.day)} {d.year}",
}
_CASED = ("d_month_y", "nth_of_month_y", "d_mon_y", "mon_d_y", "month_d_y", "month_nth_y",
          "day_month_d_y", "d_mon_y_dash")


def format_date(d: datetime.date, fmt: str, case: str = "") -> str:
    """``d`` in format ``fmt`` (a key of FORMATS); case "upper" / "lower" for the formats with
    words that are also written so."""
    s = FORMATS[fmt](d)
    if case == "upper":
        return s.upper()
    if case == "lower":
        return s.lower()
    return s


def _random_format(rng, d: datetime.date) -> str:
    names = list(FORMATS)
    fmt = names[rng.integers(len(names))]
    case = ""
    if fmt in _CASED:
        u = rng.random()
        case = "upper" if u < 0.1 else "lower" if u < 0.25 else ""
    return format_date(d, fmt, case)


_ISO_LIKE = re.compile(r"^\s*(\d{4})[-/]?(\d{2})[-/]?(\d{2})\s*$")


def iso_baseline(source: str) -> str:
    """The trivial rule: read YYYY-MM-DD, YYYY/MM/DD and YYYYMMDD; anything else -> ''."""
    m = _ISO_LIKE.match(source)
    return f"{m.group(1)}-{m.group(2)}-{m.group(3)}" if m else ""


def read_pairs(path) -> List[Tuple[str, str]]:
    try:
        # newline="": no newline translation, split_lines splits at "\n" ("\r\n") only
        with open(path, encoding="utf-8", newline="") as f:
            lines = split_lines(strip_bom(read_limited(f, f"translate: data file {path}")))
    except FileNotFoundError:
        raise DataError(f"translate: data file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"translate: cannot read {path}: {e}") from None
    pairs = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise DataError(f"translate: {path}:{no}: expected 'source<TAB>target', "
                            f"got {line!r}")
        pairs.append((parts[0].strip(), parts[1].strip()))
    if len({t for _, t in pairs}) < 10:
        raise DataError(f"translate: {path} has {len({t for _, t in pairs})} distinct "
                        f"targets; at least 10 are needed")
    return pairs


# -- the task ------------------------------------------------------------------------------------
class Translate(Task):
    """Dates in human formats -> ISO 8601 (character-level LSTM encoder-decoder).

    Defaults: ``cell lstm, embed 32, hidden 128, layers 1, bidirectional False, dropout 0,
    batch_size 32, lr 5e-3, time_budget 120`` (seconds); decoding with beam size
    ``args.beam`` (default 4). Data: all dates from 1950 to 2049 except 1000 held-out
    validation dates (``seed`` picks them); every pass over the training data draws each
    training date in a fresh random format (20 formats, some in upper or lower case).

    Metrics: ``accuracy`` (primary: exact match of the beam-search output),
    ``accuracy_greedy``, ``char_accuracy`` (greedy, per target character, </s> included),
    ``loss`` (teacher-forced cross-entropy per target character) and ``baseline_accuracy``: a
    regular expression that reads only the ISO-like inputs (YYYY-MM-DD, YYYY/MM/DD, YYYYMMDD),
    about 3 in 20 of them.
    """
    name = "translate"
    help = "sequence to sequence: dates in human formats to ISO form (LSTM encoder-decoder)"
    metric = "accuracy"
    higher_is_better = True
    unit = "seq"
    bidirectional_ok = True
    flags = ("data", "embed", "problem", "attention")
    length_flags = "its sequences are the sentences of its data"
    problems = ("dates", "numbers")
    n_numbers = 20000          # --problem numbers: fresh training numbers per pass
    defaults: Dict[str, Any] = {"problem": "dates", "attention": "none",
                                "cell": "lstm", "embed": 32, "hidden": 128, "layers": 1,
                                "bidirectional": False, "dropout": 0.0, "batch_size": 32,
                                "lr": 5e-3, "time_budget": 120, "seed": 0}
    n_valid = 1000
    # issue 19's regularisers reach the encoder and the decoder; the options that change the
    # state's shape or formula (proj_size, peepholes, ...) would have to match across the
    # encoder/decoder state hand-over, which is not built
    cell_options_ok = REG_OPTIONS
    cell_options_reason = "the encoder/decoder state hand-over takes plain LSTM / GRU / RNN " \
        "states; issue 19's --layer-norm ... --dropout-masks do apply"
    default_beam = 4

    def __init__(self, args):
        super().__init__(args)
        self.split_seed: Optional[int] = None
        self.src_vocab: Optional[List[str]] = None
        self.tgt_vocab: Optional[List[str]] = None
        self.max_len: Optional[int] = None
        self.train_pairs: List[Tuple[str, str]] = []
        self.valid_pairs: List[Tuple[str, str]] = []
        self.train_dates: List[datetime.date] = []
        self.problem = "dates"
        self.valid_numbers: set = set()

    @property
    def beam(self) -> int:
        b = getattr(self.args, "beam", None)
        return self.default_beam if b is None else max(1, int(b))

    # -- data --------------------------------------------------------------------------------
    def prepare(self) -> None:
        # the data split of a restored checkpoint is the one it was trained with
        seed = self.split_seed if self.split_seed is not None else int(self.flag("seed") or 0)
        self.split_seed = seed
        data = getattr(self.args, "data", None)
        ss = np.random.SeedSequence([seed, 11]).spawn(3)
        self.problem = str(self.flag("problem"))
        if self.problem not in self.problems:
            raise DataError(f"translate: --problem must be one of {', '.join(self.problems)}, "
                            f"got {self.problem!r}")
        if data and getattr(self.args, "problem", None) not in (None, "dates"):
            raise DataError("translate: --problem numbers generates its data; it reads no "
                            "--data file")
        if self.problem == "numbers" and not data:
            from .attention_seq2seq import number_pairs
            self.valid_pairs, self.valid_numbers = number_pairs(
                np.random.default_rng(ss[1]), self.n_valid)
            self.train_dates = []
            self.train_pairs = self._draw(np.random.default_rng(ss[2]))
        elif data:
            pairs = read_pairs(data)
            targets = sorted({t for _, t in pairs})
            rng = np.random.default_rng(ss[0])
            held = set(rng.permutation(targets)[:max(1, len(targets) // 10)].tolist())
            self.train_pairs = [p for p in pairs if p[1] not in held]
            self.valid_pairs = [p for p in pairs if p[1] in held]
            self.train_dates = []
        else:
            days = (LAST - FIRST).days + 1
            perm = np.random.default_rng(ss[0]).permutation(days)
            valid = sorted(perm[:self.n_valid].tolist())
            self.train_dates = [FIRST + datetime.timedelta(days=int(k))
                                for k in sorted(perm[self.n_valid:].tolist())]
            rng = np.random.default_rng(ss[1])
            vd = [FIRST + datetime.timedelta(days=int(k)) for k in valid]
            self.valid_pairs = [(_random_format(rng, d), d.isoformat()) for d in vd]
            self.train_pairs = self._draw(np.random.default_rng(ss[2]))
        if self.src_vocab is None:   # not restored from a checkpoint
            if self.problem == "numbers" and not data:
                from .attention_seq2seq import number_words
                src_chars = {c for k in list(range(100)) + [100, 10 ** 3, 10 ** 6, 10 ** 9]
                             for c in number_words(k)}
            elif self.train_dates:
                src_chars = set()
                for d in (datetime.date(2023, m, 1) for m in range(1, 13)):
                    for fmt in FORMATS:
                        for case in ("", "upper", "lower"):
                            src_chars.update(format_date(d, fmt, case))
                src_chars.update("0123456789")
                for d in (datetime.date(2023, 1, k) for k in range(1, 8)):
                    for case in ("", "upper", "lower"):
                        src_chars.update(format_date(d, "day_month_d_y", case))
                        src_chars.update(format_date(d, "dy_d_mon_y", case))
            else:
                src_chars = {c for s, _ in self.train_pairs for c in s}
            tgt_chars = {c for _, t in self.train_pairs for c in t}
            if self.problem == "numbers" and not data:
                tgt_chars = set("0123456789")
            self.src_vocab = SPECIALS + sorted(src_chars)
            self.tgt_vocab = SPECIALS + sorted(tgt_chars)
            self.max_len = max(len(t) for _, t in self.train_pairs) + 1
        self._index()

    def _draw(self, rng) -> List[Tuple[str, str]]:
        """One pass over the training dates, each in a random format (--problem numbers: fresh
        random numbers, never a validation one)."""
        if self.problem == "numbers":
            from .attention_seq2seq import number_pairs
            return number_pairs(rng, self.n_numbers, exclude=self.valid_numbers)[0]
        return [(_random_format(rng, d), d.isoformat()) for d in self.train_dates]

    def _index(self):
        self.src_id = {c: i for i, c in enumerate(self.src_vocab)}
        self.tgt_id = {c: i for i, c in enumerate(self.tgt_vocab)}

    def _src(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        lengths = np.array([max(1, len(s)) for s in texts], np.int64)
        x = np.zeros((int(lengths.max()), len(texts)), np.int64)
        for n, s in enumerate(texts):
            x[:len(s), n] = [self.src_id.get(c, UNK) for c in s]
            if not s:
                x[0, n] = UNK
        return x, lengths

    def _tgt(self, texts: Sequence[str]):
        """(decoder input <s> y, decoder target y </s>, lengths)."""
        lengths = np.array([len(t) + 1 for t in texts], np.int64)
        T = int(lengths.max())
        tin = np.zeros((T, len(texts)), np.int64)
        tout = np.zeros((T, len(texts)), np.int64)
        for n, t in enumerate(texts):
            ids = [self.tgt_id.get(c, UNK) for c in t]
            tin[:len(ids) + 1, n] = [BOS] + ids
            tout[:len(ids) + 1, n] = ids + [EOS]
        return tin, tout, lengths

    def make_batch(self, pairs: Sequence[Tuple[str, str]]):
        src, src_len = self._src([s for s, _ in pairs])
        tin, tout, tgt_len = self._tgt([t for _, t in pairs])
        return src, src_len, tin, tout, tgt_len

    def batches(self, rng: np.random.Generator) -> Iterator[Any]:
        bs = min(int(self.flag("batch_size")), len(self.train_pairs))
        first = True
        while True:
            if (self.train_dates or self.problem == "numbers") and not first:
                self.train_pairs = self._draw(rng)
            first = False
            pairs = self.train_pairs
            perm = rng.permutation(len(pairs))
            for i in range(0, len(pairs) - bs + 1, bs):
                self.epoch += bs / len(pairs)
                yield self.make_batch([pairs[k] for k in perm[i:i + bs]])

    # -- model ---------------------------------------------------------------------------------
    def build_model(self, dtype=None) -> Module:
        kw = model_kwargs(self, dtype)
        attention = str(self.flag("attention"))
        if attention != "none":
            from .attention_seq2seq import ATTENTION, AttnSeq2Seq
            if attention not in ATTENTION:
                raise ValueError(f"translate: --attention must be none or one of "
                                 f"{sorted(ATTENTION)}, got {attention!r}")
            return AttnSeq2Seq(len(self.src_vocab), len(self.tgt_vocab), attention=attention,
                               options=self.cell_opts, **kw)
        return Seq2Seq(len(self.src_vocab), len(self.tgt_vocab), options=self.cell_opts, **kw)

    def train_step(self, model: Module, batch) -> Tuple[float, int]:
        src, src_len, tin, tout, tgt_len = batch
        if not model.training:
            model.train()
        logits = model.forward(src, src_len, tin, tgt_len)
        loss, grad = losses.cross_entropy(logits, tout, lengths=tgt_len)
        model.backward(grad)
        return loss, src.shape[1]

    # -- decoding and evaluation -----------------------------------------------------------------
    def translate(self, model: Module, sources: Sequence[str], beam: Optional[int] = None,
                  chunk: int = 1000, greedy: bool = False):
        """Decoded strings and their length-normalised log-probabilities (beam search with
        ``beam``, default ``args.beam`` or 4); with ``greedy`` also the greedy strings and
        scores."""
        beam = self.beam if beam is None else max(1, int(beam))
        self._check_beam_memory(beam, min(chunk, max(1, len(sources))))
        text = lambda seq: "".join(self.tgt_vocab[k] for k in seq if k > UNK)  # noqa: E731
        out, scores, g_out, g_scores = [], [], [], []
        for i in range(0, len(sources), chunk):
            src, src_len = self._src(sources[i:i + chunk])
            ids, sc, g_ids, g_sc = decode(model, src, src_len, beam, self.max_len)
            out.extend(text(seq) for seq in ids)
            g_out.extend(text(seq) for seq in g_ids)
            scores.append(sc)
            g_scores.append(g_sc)
        cat = lambda a: np.concatenate(a) if a else np.zeros(0)  # noqa: E731
        if greedy:
            return out, cat(scores), g_out, cat(g_scores)
        return out, cat(scores)

    def _check_beam_memory(self, beam: int, n: int) -> None:
        """Beam search holds, per sequence and beam, the log-probabilities over the target
        vocabulary (three float64 copies), the hypotheses and the decoder state: refuse a
        --beam that cannot fit before allocating it."""
        V, T = len(self.tgt_vocab), int(self.max_len)
        D = 2 if self.flag("bidirectional") else 1
        state = int(self.flag("layers")) * D * int(self.flag("hidden")) * 2 * 8
        check_memory([(f"--beam {beam}", float(n) * beam * (3 * V * 8 + 2 * T * 8 + state))],
                     "decoding")

    def score(self, model: Module, pairs: Sequence[Tuple[str, str]]) -> np.ndarray:
        """Length-normalised log-probability of each target given its source (eval mode)."""
        src, src_len, tin, tout, tgt_len = self.make_batch(pairs)
        was = model.training
        model.eval()
        try:
            logp = losses.log_softmax(model.forward(src, src_len, tin, tgt_len)
                                      .astype(np.float64))
        finally:
            model.train(was)
        T, N = tout.shape
        lp = logp[np.arange(T)[:, None], np.arange(N)[None, :], tout]
        lp[np.arange(T)[:, None] >= tgt_len[None, :]] = 0
        return lp.sum(0) / tgt_len

    def evaluate(self, model: Module) -> Dict[str, float]:
        sources = [s for s, _ in self.valid_pairs]
        targets = [t for _, t in self.valid_pairs]
        best, _, greedy, _ = self.translate(model, sources, greedy=True)
        m = {"accuracy": float(np.mean([p == t for p, t in zip(best, targets)])),
             "accuracy_greedy": float(np.mean([p == t for p, t in zip(greedy, targets)]))}
        right = total = 0
        for p, t in zip(greedy, targets):
            right += sum(a == b for a, b in zip(p + "\0", t + "\0"))
            total += len(t) + 1
        m["char_accuracy"] = right / total
        src, src_len, tin, tout, tgt_len = self.make_batch(self.valid_pairs)
        was = model.training
        model.eval()
        try:
            logits = model.forward(src, src_len, tin, tgt_len)
        finally:
            model.train(was)
        m["loss"] = float(losses.cross_entropy(logits.astype(np.float64), tout,
                                               lengths=tgt_len)[0])
        if self.problem == "numbers" and not getattr(self.args, "data", None):
            from .attention_seq2seq import number_baseline
            base = number_baseline
        else:
            base = iso_baseline
        m["baseline_accuracy"] = float(np.mean([base(s) == t for s, t in self.valid_pairs]))
        return m

    def predict(self, model: Module, inputs: List[str]) -> List[str]:
        """Each line a date in any format -> its ISO form (beam search)."""
        lines = [line.strip() for line in inputs]
        keep = [i for i, s in enumerate(lines) if s]
        out = [""] * len(lines)
        if keep:
            res, _ = self.translate(model, [lines[i] for i in keep])
            for i, r in zip(keep, res):
                out[i] = r
        return out

    def summary(self, model: Module) -> List[str]:
        pairs = self.valid_pairs[:6]
        res, _ = self.translate(model, [s for s, _ in pairs])
        return [f"{s!r:36} -> {r}{'' if r == t else f'   (want {t})'}"
                for (s, t), r in zip(pairs, res)]

    # -- picture ---------------------------------------------------------------------------------
    def attention_weights(self, model: Module, sources: Sequence[str],
                          outputs: Sequence[str]) -> List[np.ndarray]:
        """The attention weights of an AttnSeq2Seq reading each source while it writes the
        given output (teacher-forced, eval mode): per pair [len(output) + 1, len(source)]
        (rows: the output characters and </s>; each row sums to 1 over the source)."""
        src, src_len, tin, _, tgt_len = self.make_batch(list(zip(sources, outputs)))
        was = model.training
        model.eval()
        try:
            enc_out, state = model._encode(src, src_len)
            out, _ = model.decoder.forward(model.tgt_embed.forward(tin), state, lengths=tgt_len)
            _, w = model.attention.forward(out, enc_out, src_len)        # [N, T, S]
        finally:
            model.train(was)
        return [np.asarray(w[n, :int(tgt_len[n]), :int(src_len[n])], np.float64)
                for n in range(len(sources))]

    def plot(self, model: Module, out_dir: str) -> Optional[str]:
        """translate.png. With attention (--attention): heatmaps of the attention weights for
        four validation examples, the model's own (beam) output against the source characters.
        Without: exact match (beam) by source length on the validation set, with the baseline
        rule's. None without matplotlib."""
        import os

        from ..plotting import pyplot, save_png
        plt = pyplot()
        if plt is None or not self.valid_pairs:
            return None
        from .attention_seq2seq import AttnSeq2Seq
        if isinstance(model, AttnSeq2Seq):
            pairs = self.valid_pairs[:4]
            sources = [s for s, _ in pairs]
            outs, _ = self.translate(model, sources)
            weights = self.attention_weights(model, sources, outs)
            fig, axes = plt.subplots(len(pairs), 1, squeeze=False,
                                     figsize=(max(6.0, 0.16 * max(map(len, sources)) + 2),
                                              2.4 * len(pairs) + 0.6))
            for ax, (src, want), out, w in zip(axes[:, 0], pairs, outs, weights):
                ax.imshow(w, aspect="auto", cmap="viridis", vmin=0, vmax=1)
                ax.set_xticks(range(len(src)))
                ax.set_xticklabels(list(src.replace(" ", "\u00b7")), fontsize=7)
                ax.set_yticks(range(len(out) + 1))
                ax.set_yticklabels(list(out) + ["</s>"], fontsize=7)
                mark = "right" if out == want else f"wrong, want {want}"
                ax.set_title(f"{src!r} -> {out!r} ({mark})", fontsize=9)
            axes[-1, 0].set_xlabel("source character")
            fig.suptitle(f"attention ({self.flag('attention')}): output character (rows) "
                         f"reads source characters (columns)", fontsize=10)
            fig.tight_layout()
            return save_png(fig, os.path.join(out_dir, "translate.png"))
        sources = [s for s, _ in self.valid_pairs]
        targets = [t for _, t in self.valid_pairs]
        best, _ = self.translate(model, sources)
        if self.problem == "numbers" and not getattr(self.args, "data", None):
            from .attention_seq2seq import number_baseline as base
        else:
            base = iso_baseline
        lengths = np.array([len(s) for s in sources])
        right = np.array([p == t for p, t in zip(best, targets)], np.float64)
        base_right = np.array([base(s) == t for s, t in self.valid_pairs], np.float64)
        edges = np.unique(np.linspace(lengths.min(), lengths.max() + 1, 11).astype(int))
        which = np.clip(np.searchsorted(edges, lengths, side="right") - 1, 0, len(edges) - 2)
        centres, vals, bases = [], [], []
        for b in range(len(edges) - 1):
            sel = which == b
            if sel.any():
                centres.append((edges[b] + edges[b + 1] - 1) / 2)
                vals.append(float(right[sel].mean()))
                bases.append(float(base_right[sel].mean()))
        fig, ax = plt.subplots(figsize=(6.5, 4))
        width = max(1.0, 0.8 * (edges[1] - edges[0])) if len(edges) > 1 else 1.0
        ax.bar(centres, vals, width=width, color="C0", label=f"model ({self.flag('cell')})")
        ax.plot(centres, bases, "k_", markersize=20, mew=2, label="baseline rule")
        ax.set_xlabel("source length (characters)")
        ax.set_ylabel("validation exact match (beam)")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{self.problem}: exact match by source length ({len(sources)} pairs; "
                     f"no attention)", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        return save_png(fig, os.path.join(out_dir, "translate.png"))

    # -- checkpoints -----------------------------------------------------------------------------
    def metadata(self) -> Dict[str, Any]:
        meta = super().metadata()
        meta.update(src_vocab=list(self.src_vocab), tgt_vocab=list(self.tgt_vocab),
                    max_len=int(self.max_len), split_seed=self.split_seed)
        return meta

    def restore(self, metadata: Dict[str, Any]) -> None:
        self._restore_flags(metadata)
        self.resolve_flags()
        self.src_vocab = list(metadata["src_vocab"])
        self.tgt_vocab = list(metadata["tgt_vocab"])
        self.max_len = int(metadata["max_len"])
        self.split_seed = metadata.get("split_seed")
        self._index()

    # -- --compare-torch ---------------------------------------------------------------------------
    def torch_model(self, model: Module):
        """torch twin of the Seq2Seq: same weights, and copies of the model's dropout-mask
        generators (see :func:`fusedrnn.tasks.common.torch_parts`)."""
        import torch
        MaskDropout, Recurrent = torch_parts()

        class TorchSeq2Seq(torch.nn.Module):
            def __init__(self, m: Seq2Seq):
                super().__init__()
                dt = torch.float64 if m.head.weight.dtype == np.float64 else torch.float32
                self.fused_config = m.config()
                self.num_directions, self.num_layers = m.num_directions, m.layers
                self.src_embed = torch.nn.Embedding(m.src_embed.num_embeddings,
                                                    m.src_embed.embedding_dim, padding_idx=0,
                                                    dtype=dt)
                self.encoder = Recurrent(m.encoder)
                self.tgt_embed = torch.nn.Embedding(m.tgt_embed.num_embeddings,
                                                    m.tgt_embed.embedding_dim, padding_idx=0,
                                                    dtype=dt)
                self.decoder = Recurrent(m.decoder)
                self.drop = MaskDropout(m.drop)
                self.head = torch.nn.Linear(m.head.in_features, m.head.out_features, dtype=dt)
                sd = m.state_dict()
                with torch.no_grad():
                    for name in ("src_embed.weight", "tgt_embed.weight", "head.weight",
                                 "head.bias"):
                        self.get_parameter(name).copy_(torch.from_numpy(sd[name]))

            def _bridge(self, a):
                if self.num_directions == 1:
                    return a
                L, N, H = self.num_layers, a.shape[1], a.shape[2]
                return a.reshape(L, 2, N, H).permute(0, 2, 1, 3).reshape(L, N, 2 * H)

            def forward(self, src, src_len, tgt_in, tgt_len):
                _, state = self.encoder(self.src_embed(src), src_len)
                state = tuple(map(self._bridge, state)) if isinstance(state, tuple) else \
                    self._bridge(state)
                out, _ = self.decoder(self.tgt_embed(tgt_in), tgt_len, state)
                return self.head(self.drop(out))

            def export(self) -> Dict[str, np.ndarray]:
                """The weights under the fusedrnn Seq2Seq's names."""
                out = {name: p.detach().cpu().numpy().copy()
                       for name, p in self.named_parameters()
                       if name.startswith(("src_embed.", "tgt_embed.", "head."))}
                out.update(self.encoder.export("encoder."))
                out.update(self.decoder.export("decoder."))
                return out

        if isinstance(model, attention_seq2seq.AttnSeq2Seq):
            return attention_seq2seq.torch_attention_twin(TorchSeq2Seq, model)
        return TorchSeq2Seq(model)

    def torch_train_step(self, tmodel, batch) -> Tuple[float, int]:
        import torch
        src, src_len, tin, tout, tgt_len = batch
        tmodel.train()
        logits = tmodel(torch.from_numpy(src), torch.from_numpy(src_len), torch.from_numpy(tin),
                        torch.from_numpy(tgt_len))
        return torch_sequence_loss(logits, tout, tgt_len), src.shape[1]

    def torch_evaluate(self, tmodel) -> Dict[str, float]:
        """The torch twin's weights copied into a fusedrnn Seq2Seq, evaluated the same way
        (same greedy and beam decoding)."""
        from ..module import module_from_config
        model = module_from_config(tmodel.fused_config)
        model.load_state_dict(tmodel.export())
        model.eval()
        return self.evaluate(model)


# The attentional model registers itself for checkpoints (it subclasses Seq2Seq, defined above).
from . import attention_seq2seq  # noqa: E402,F401
