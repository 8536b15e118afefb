"""``fusedrnn --task classify``: sequence classification / regression from the last valid step
of variable-length sequences, on the long-range benchmarks of Hochreiter & Schmidhuber (1997).

Problems (``--problem``):

* ``adding`` (default; the paper's experiment 4 in its now-standard form, Le, Jaitly & Hinton
  2015, Arjovsky et al. 2016): each step has two inputs, a value drawn uniformly from [0, 1]
  and a marker; exactly two steps are marked (marker 1, else 0), one uniformly in the first half
  of the sequence ([0, L//2)) and one in the second half ([L//2, L)). The target is the sum of
  the two marked values, read at the last valid step; loss and metric are the mean squared error
  (``mse``); ``baseline_mse`` predicts the constant 1.0 (variance of the sum: 1/6 ~ 0.167).
  ``accuracy`` counts predictions within 0.04 of the target, the paper's success criterion (the
  paper scales its targets to 0.5 + sum/4, so on the sum's scale this criterion is 4x stricter
  than the paper's).
* ``temporal-order`` (the paper's experiment 6a): a sequence of random distractor symbols
  a, b, c, d between a start symbol B and an end symbol E; two relevant symbols, each X or Y, sit
  at random positions t1 in [0.1 L, 0.2 L] and t2 in [0.5 L, 0.6 L] (the paper's [10, 20] and
  [50, 60] at L = 100). The class is the order: XX, XY, YX or YY (4 classes). Inputs are one-hot
  over the 8 symbols; softmax cross-entropy at the last valid step; metric ``accuracy``
  (higher is better), ``baseline_accuracy`` the majority class of the validation set (~0.25).
* ``spike-delay`` (measuring spike delays, a timing task of Gers, Schraudolph & Schmidhuber
  2002, "Learning precise timing with LSTM recurrent networks"): one input channel, 0 except two
  spikes (1): one at a random step t1 in [0, L//2) and one at the last step L - 1. The target,
  read at the last step, is the delay (L - 1 - t1) / ``--max-length``; metric ``mse``,
  ``baseline_mse`` predicts the validation mean; ``accuracy`` counts predictions within half a
  step of the true delay.

Every sequence has its own length L, uniform in [``--min-length``, ``--max-length``]; batches
are padded to their longest sequence and the recurrent layer gets ``lengths`` so padded steps
are not computed. Training batches are freshly generated from the trainer's generator at every
step; the validation set (1000 sequences) is fixed by ``--seed``.

The point: an Elman RNN (``--cell rnn``) stays at the baseline at these lengths while LSTM
(and GRU) solve them.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .. import losses
from ..module import Dropout, Linear, Module, register_module
from .base import Task
from .common import check_choice, check_int, make_rnn, sub_seed, torch_numpy

__all__ = ["Classify", "SequenceClassifier", "make_adding", "make_temporal_order"]

PROBLEMS = ("adding", "temporal-order", "spike-delay")

#: the largest magnitude a predict input value may have (the model reads float32)
_F32_MAX = float(np.finfo(np.float32).max)

SYMBOLS = "abcdXYBE"                 # temporal order: 4 distractors, X, Y, start, end
CLASSES = ("XX", "XY", "YX", "YY")
ADDING_TOLERANCE = 0.04


# -- data --------------------------------------------------------------------------------------
def _lengths(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    return rng.integers(lo, hi + 1, size=n)


def make_adding(rng: np.random.Generator, lengths: np.ndarray
                ) -> Tuple[np.ndarray, np.ndarray]:
    """Adding-problem sequences: (x [T, N, 2] float32 zero-padded, target [N] float32)."""
    N, T = lengths.size, int(lengths.max())
    x = np.zeros((T, N, 2), np.float32)
    valid = np.arange(T)[:, None] < lengths[None, :]
    x[:, :, 0] = np.where(valid, rng.random((T, N)), 0.0)
    half = lengths // 2
    m1 = rng.integers(0, half)                 # first half [0, L//2)
    m2 = rng.integers(half, lengths)           # second half [L//2, L)
    cols = np.arange(N)
    x[m1, cols, 1] = 1.0
    x[m2, cols, 1] = 1.0
    target = (x[m1, cols, 0] + x[m2, cols, 0]).astype(np.float32)
    return x, target


def make_spike_delay(rng: np.random.Generator, lengths: np.ndarray, scale: float
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """Spike-delay sequences: (x [T, N, 1] float32 zero-padded, delay / scale [N] float32)."""
    N, T = lengths.size, int(lengths.max())
    x = np.zeros((T, N, 1), np.float32)
    cols = np.arange(N)
    t1 = rng.integers(0, np.maximum(lengths // 2, 1))
    x[t1, cols, 0] = 1.0
    x[lengths - 1, cols, 0] = 1.0
    return x, ((lengths - 1 - t1) / scale).astype(np.float32)


def _one_hot(sym: np.ndarray) -> np.ndarray:
    """Symbol indices [T, N] (-1 = padding) -> one-hot [T, N, 8] float32."""
    x = np.zeros(sym.shape + (len(SYMBOLS),), np.float32)
    t, n = np.nonzero(sym >= 0)
    x[t, n, sym[t, n]] = 1.0
    return x


def make_temporal_order(rng: np.random.Generator, lengths: np.ndarray
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """Temporal-order sequences: (x [T, N, 8] one-hot float32 zero-padded, class [N] int64)."""
    N, T = lengths.size, int(lengths.max())
    sym = rng.integers(0, 4, size=(T, N))
    sym[np.arange(T)[:, None] >= lengths[None, :]] = -1
    cols = np.arange(N)
    sym[0] = SYMBOLS.index("B")
    sym[lengths - 1, cols] = SYMBOLS.index("E")
    t1 = rng.integers(np.rint(0.1 * lengths).astype(int), np.rint(0.2 * lengths).astype(int) + 1)
    t2 = rng.integers(np.rint(0.5 * lengths).astype(int), np.rint(0.6 * lengths).astype(int) + 1)
    s1, s2 = rng.integers(0, 2, size=N), rng.integers(0, 2, size=N)   # 0: X, 1: Y
    sym[t1, cols] = SYMBOLS.index("X") + s1
    sym[t2, cols] = SYMBOLS.index("X") + s2
    return _one_hot(sym), (2 * s1 + s2).astype(np.int64)


# -- model -------------------------------------------------------------------------------------
def chrono_init(rnn, t_max: int, rng: np.random.Generator) -> None:
    """Chrono initialisation (Tallec & Ollivier 2018, "Can recurrent neural networks warp
    time?"): gate biases that give the units memory time constants spread log-uniformly over
    [1, t_max]. LSTM: forget bias log U(1, t_max - 1), input bias its negative; GRU: the same
    for the update gate z (torch's GRU keeps z h_prev). Elman RNNs have no gates: unchanged."""
    if rnn.mode not in ("LSTM", "GRU") or t_max < 3:
        return
    H = rnn.hidden_size
    for _, _, sfx in rnn._suffixes():
        b_ih, b_hh = getattr(rnn, "bias_ih" + sfx).data, getattr(rnn, "bias_hh" + sfx).data
        b = np.log(rng.uniform(1.0, t_max - 1.0, H)).astype(b_ih.dtype)
        b_ih[H:2 * H], b_hh[H:2 * H] = b, 0          # LSTM f, GRU z (the second gate block)
        if rnn.mode == "LSTM":
            b_ih[:H], b_hh[:H] = -b, 0               # input gate


@register_module
class SequenceClassifier(Module):
    """Recurrent layer and a Linear head at every step (the task reads the last valid one).

    forward(x [T, N, C], lengths=None) -> [T, N, outputs] (zero-padded steps give the head's
    bias); backward(d [T, N, outputs]) -> d_x [T, N, C]. ``chrono`` > 0: chrono-initialised
    gate biases for time scales up to ``chrono`` steps (see :func:`chrono_init`).
    """

    def __init__(self, cell: str = "lstm", input_size: int = 2, hidden_size: int = 64,
                 num_layers: int = 1, dropout: float = 0.0, outputs: int = 1,
                 chrono: int = 0, seed: Optional[int] = None,
                 options: Optional[Dict[str, Any]] = None):
        super().__init__()
        options = dict(options or {})
        self._record(cell=cell, input_size=input_size, hidden_size=hidden_size,
                     num_layers=num_layers, dropout=dropout, outputs=outputs, chrono=chrono,
                     seed=seed, options=options)
        self.rnn = make_rnn(cell, input_size, hidden_size, num_layers, dropout,
                            sub_seed(seed, 0), forget_bias=1.0, options=options)
        if chrono and "forget_bias" not in options:
            chrono_init(self.rnn, chrono, np.random.default_rng(sub_seed(seed, 3)))
        self.drop = Dropout(dropout, seed=sub_seed(seed, 1))
        self.head = Linear(self.rnn.state_size, outputs, seed=sub_seed(seed, 2))

    def forward(self, x: np.ndarray, lengths=None) -> np.ndarray:
        out, _ = self.rnn.forward(x, lengths=lengths)
        return self.head.forward(self.drop.forward(out))

    def backward(self, d: np.ndarray) -> np.ndarray:
        return self.rnn.backward(self.drop.backward(self.head.backward(d)))


# -- the task ----------------------------------------------------------------------------------
class Classify(Task):
    """Long-range sequence classification (see the module docstring for the problems).

    Defaults: ``--problem adding``, lengths ``--min-length 100`` to ``--max-length 200``,
    ``--cell lstm``, ``--hidden 64``, ``--layers 1``, ``--dropout 0``, ``--batch-size 32``,
    ``--lr 2e-3``, ``--seed 0``, a 120 s time budget. LSTM and GRU gate biases are
    chrono-initialised for time scales up to ``--max-length`` (Tallec & Ollivier 2018): with the
    plain forget-gate bias of 1 the LSTM did not leave the adding baseline within 4000 steps at
    lengths 100-200; with it the LSTM solves the problem in about 1500 steps. An "epoch" is
    10,000 generated training sequences (the training data is endless).

    Metric: adding ``mse`` (lower is better; ``baseline_mse`` predicts 1.0; also ``accuracy``,
    |error| < 0.04); temporal-order ``accuracy`` (higher is better; ``baseline_accuracy``).
    ``metric`` and ``higher_is_better`` are set per instance from ``--problem``.

    predict, one sequence per input line:

    * adding: comma-separated ``value marker`` pairs, e.g. ``0.31 0, 0.77 1, 0.05 0, 0.52 1``
      -> the predicted sum (``1.2893``);
    * temporal-order: a string over ``abcdXYBE`` (spaces ignored), e.g. ``BacXdbbaYcdE`` -> the
      predicted class (``XY``).
    """

    name = "classify"
    help = "long-range sequence classification: the adding problem, temporal order"
    metric = "mse"
    higher_is_better = False
    unit = "seq"
    bidirectional_ok = False
    unidirectional_reason = "it reads the last valid step of a left-to-right pass"
    flags = ("problem", "min_length", "max_length")
    length_flags = "--min-length and --max-length set its sequence lengths"
    defaults: Dict[str, Any] = {
        "problem": "adding", "min_length": 100, "max_length": 200, "cell": "lstm",
        "hidden": 64, "layers": 1, "dropout": 0.0, "batch_size": 32, "lr": 2e-3, "seed": 0,
        "time_budget": 120,
    }
    validation_size = 1000
    epoch_size = 10_000
    eval_batch = 500

    def __init__(self, args):
        self.val = None
        super().__init__(args)

    # -- flags ----------------------------------------------------------------------------------
    def resolve_flags(self) -> None:
        super().resolve_flags()
        a = self.args
        a.problem = check_choice("problem", self.flag("problem"), PROBLEMS)
        shortest = 10 if a.problem == "temporal-order" else 2
        a.min_length = check_int("min_length", self.flag("min_length"), minimum=shortest)
        a.max_length = check_int("max_length", self.flag("max_length"), minimum=shortest)
        if a.max_length < a.min_length:
            raise ValueError(f"--max-length ({a.max_length}) must be >= --min-length "
                             f"({a.min_length})")
        if getattr(a, "data", None) is not None:
            raise ValueError("--data: task classify generates its data (adding / "
                             "temporal-order / spike-delay problems) and reads no file")
        self.adding = a.problem == "adding"
        self.spikes = a.problem == "spike-delay"
        self.regression = self.adding or self.spikes
        self.metric = "mse" if self.regression else "accuracy"
        self.higher_is_better = not self.regression
        self.input_size = 2 if self.adding else 1 if self.spikes else len(SYMBOLS)
        self.outputs = 1 if self.regression else len(CLASSES)

    def _generate(self, rng: np.random.Generator, n: int):
        a = self.args
        lengths = _lengths(rng, n, a.min_length, a.max_length)
        if self.spikes:
            x, y = make_spike_delay(rng, lengths, float(a.max_length))
        else:
            x, y = (make_adding if self.adding else make_temporal_order)(rng, lengths)
        return x, y, lengths

    # -- memory ---------------------------------------------------------------------------------
    def sequence_length(self) -> int:
        return self.args.max_length

    def input_width(self) -> int:
        return self.input_size

    def extra_memory(self):
        a = self.args
        steps = self.validation_size * a.max_length
        return [(f"--max-length {a.max_length}: the validation set and its evaluation",
                 steps * self.input_size * 4 * 2
                 + min(self.eval_batch, self.validation_size) * a.max_length * a.hidden
                 * a.layers * 8 * 4)]

    # -- data -----------------------------------------------------------------------------------
    def prepare(self) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([self.args.seed, 0x5EED]))
        x, y, lengths = self._generate(rng, self.validation_size)
        order = np.argsort(lengths, kind="stable")   # similar lengths per evaluation chunk
        self.val = (x[:, order], y[order], lengths[order])

    def batches(self, rng: np.random.Generator) -> Iterator[Tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]]:
        B = self.args.batch_size
        while True:
            self.epoch += B / self.epoch_size
            yield self._generate(rng, B)

    # -- model ----------------------------------------------------------------------------------
    def build_model(self) -> Module:
        a = self.args
        return SequenceClassifier(a.cell, self.input_size, a.hidden, a.layers, a.dropout,
                                  self.outputs, chrono=a.max_length, seed=a.seed,
                                  options=self.cell_opts)

    def train_step(self, model: Module, batch) -> Tuple[float, int]:
        x, y, lengths = batch
        out = model.forward(x, lengths=lengths)
        if self.regression:
            last = losses.last_step(out, lengths)
            loss, g = losses.mse(last, y[:, None])
            grad = losses.scatter_last_step(g, lengths, out.shape[0])
        else:
            loss, grad = losses.cross_entropy_last(out, y, lengths)
        model.backward(grad)
        return loss, y.size

    # -- evaluation -----------------------------------------------------------------------------
    def outputs_last(self, model: Module, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The model's output at each sequence's last valid step, [N, outputs], in chunks
        (each chunk trimmed to its own longest sequence)."""
        parts = []
        for i in range(0, lengths.size, self.eval_batch):
            ln = lengths[i:i + self.eval_batch]
            xc = np.ascontiguousarray(x[:int(ln.max()), i:i + self.eval_batch])
            parts.append(losses.last_step(model.forward(xc, lengths=ln), ln))
        return np.concatenate(parts, axis=0)

    def evaluate(self, model: Module) -> Dict[str, float]:
        if self.val is None:
            raise RuntimeError("Classify: call prepare() before evaluate()")
        x, y, lengths = self.val
        out = self.outputs_last(model, x, lengths)
        if self.adding:
            err = out[:, 0].astype(np.float64) - y
            return {"mse": float(np.mean(err ** 2)),
                    "baseline_mse": float(np.mean((1.0 - y.astype(np.float64)) ** 2)),
                    "accuracy": float(np.mean(np.abs(err) < ADDING_TOLERANCE)),
                    "baseline_accuracy": float(np.mean(np.abs(1.0 - y) < ADDING_TOLERANCE))}
        if self.spikes:
            y64 = y.astype(np.float64)
            err = out[:, 0].astype(np.float64) - y64
            half = 0.5 / self.args.max_length          # half a step on the target's scale
            return {"mse": float(np.mean(err ** 2)),
                    "baseline_mse": float(np.mean((y64 - y64.mean()) ** 2)),
                    "accuracy": float(np.mean(np.abs(err) < half)),
                    "baseline_accuracy": float(np.mean(np.abs(y64 - y64.mean()) < half))}
        loss, _ = losses.cross_entropy(out.astype(np.float64), y)
        return {"accuracy": float(np.mean(out.argmax(axis=1) == y)),
                "baseline_accuracy": float(np.bincount(y, minlength=4).max() / y.size),
                "loss": float(loss)}

    def summary(self, model: Module) -> List[str]:
        if self.val is None:
            return []
        a = self.args
        m = self.evaluate(model)
        lines = [f"problem {a.problem}, lengths {a.min_length}-{a.max_length}, cell {a.cell}, "
                 f"{self.validation_size} validation sequences"]
        x, y, lengths = self.val
        if self.adding:
            lines.append(f"validation MSE {m['mse']:.4g} vs {m['baseline_mse']:.4g} predicting "
                         f"1.0 ({m['baseline_mse'] / max(m['mse'], 1e-300):.1f}x lower); "
                         f"|error| < {ADDING_TOLERANCE}: {100 * m['accuracy']:.1f}%")
            out = self.outputs_last(model, x[:, :3], lengths[:3])[:, 0]
            lines.append("examples (length: predicted / true sum): " + ", ".join(
                f"{lengths[i]}: {out[i]:.3f} / {y[i]:.3f}" for i in range(3)))
        elif self.spikes:
            s = a.max_length
            lines.append(f"validation MSE {m['mse']:.4g} vs {m['baseline_mse']:.4g} predicting "
                         f"the mean; delay within half a step: {100 * m['accuracy']:.1f}%")
            out = self.outputs_last(model, x[:, :3], lengths[:3])[:, 0]
            lines.append("examples (predicted / true delay in steps): " + ", ".join(
                f"{out[i] * s:.1f} / {y[i] * s:.0f}" for i in range(3)))
        else:
            lines.append(f"validation accuracy {100 * m['accuracy']:.1f}% vs "
                         f"{100 * m['baseline_accuracy']:.1f}% (majority class); "
                         f"cross-entropy {m['loss']:.4f}")
            out = self.outputs_last(model, x[:, :3], lengths[:3]).argmax(axis=1)
            lines.append("examples (length: predicted / true class): " + ", ".join(
                f"{lengths[i]}: {CLASSES[out[i]]} / {CLASSES[y[i]]}" for i in range(3)))
        return lines

    def plot(self, model: Module, out_dir: str) -> Optional[str]:
        """classify.png: the validation metric by sequence length (lengths in up to 10 bins),
        with the trivial baseline per bin; regression problems also show predicted vs true
        targets. None without matplotlib."""
        import os

        from ..plotting import pyplot, save_png
        plt = pyplot()
        if plt is None or self.val is None:
            return None
        x, y, lengths = self.val
        out = self.outputs_last(model, x, lengths)
        edges = np.unique(np.linspace(lengths.min(), lengths.max() + 1, 11).astype(int))
        which = np.clip(np.searchsorted(edges, lengths, side="right") - 1, 0, len(edges) - 2)
        centres, vals, bases, counts = [], [], [], []
        for b in range(len(edges) - 1):
            sel = which == b
            if not sel.any():
                continue
            centres.append((edges[b] + edges[b + 1] - 1) / 2)
            counts.append(int(sel.sum()))
            if self.regression:
                yy = y[sel].astype(np.float64)
                vals.append(float(np.mean((out[sel, 0] - yy) ** 2)))
                ref = 1.0 if self.adding else float(y.astype(np.float64).mean())
                bases.append(float(np.mean((ref - yy) ** 2)))
            else:
                vals.append(float(np.mean(out[sel].argmax(1) == y[sel])))
                bases.append(float(np.mean(y[sel] == np.bincount(y, minlength=4).argmax())))
        ncol = 2 if self.regression else 1
        fig, axes = plt.subplots(1, ncol, figsize=(5.5 * ncol, 4), squeeze=False)
        ax = axes[0, 0]
        width = max(1.0, 0.8 * (edges[1] - edges[0])) if len(edges) > 1 else 1.0
        ax.bar(centres, vals, width=width, color="C0", label=f"model ({self.args.cell})")
        ax.plot(centres, bases, "k_", markersize=20, mew=2, label="baseline")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("validation " + self.metric)
        ax.set_title(f"{self.args.problem}: {self.metric} by length "
                     f"({len(lengths)} sequences)", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        if self.regression:
            ax2 = axes[0, 1]
            scale = float(self.args.max_length) if self.spikes else 1.0
            ax2.scatter(y * scale, out[:, 0] * scale, s=4, alpha=0.5)
            lo, hi = float(y.min() * scale), float(y.max() * scale)
            ax2.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="perfect")
            ax2.set_xlabel("true " + ("delay (steps)" if self.spikes else "sum"))
            ax2.set_ylabel("predicted")
            ax2.legend(fontsize=8)
            ax2.grid(alpha=0.3)
        fig.tight_layout()
        return save_png(fig, os.path.join(out_dir, "classify.png"))

    # -- checkpoints ----------------------------------------------------------------------------
    def metadata(self) -> Dict[str, Any]:
        meta = super().metadata()
        meta.update({"input_size": self.input_size, "outputs": self.outputs,
                     "symbols": None if self.regression else SYMBOLS,
                     "classes": None if self.regression else list(CLASSES)})
        return meta

    def restore(self, metadata: Dict[str, Any]) -> None:
        """Takes the checkpoint's task flags (problem, lengths, model shape, seed, so prepare()
        regenerates the same validation set), except those given a value when this task was
        made (the user's flags win, as in the trainer)."""
        self._restore_flags(metadata)
        self.resolve_flags()

    # -- predict --------------------------------------------------------------------------------
    def _parse(self, i: int, line: str) -> np.ndarray:
        """One input line -> x [L, C] float32."""
        text = line.strip()
        if not text:
            raise ValueError(f"predict: line {i} is empty")
        if self.adding:
            rows = []
            for j, pair in enumerate(text.split(","), start=1):
                parts = pair.split()
                try:
                    if len(parts) != 2:
                        raise ValueError
                    v, m = float(parts[0]), float(parts[1])
                except ValueError:
                    raise ValueError(f"predict: line {i}, item {j}: expected 'value marker' "
                                     f"(e.g. '0.42 1'), got {pair.strip()!r}") from None
                # the model reads float32: a value beyond its range would become inf there
                if m not in (0.0, 1.0) or not np.isfinite(v) or abs(v) > _F32_MAX:
                    raise ValueError(f"predict: line {i}, item {j}: the marker must be 0 or 1 "
                                     f"and the value finite and within float32's +-"
                                     f"{_F32_MAX:.3g}, got {pair.strip()!r}")
                rows.append((v, m))
            return np.asarray(rows, np.float32)
        if self.spikes:
            text = "".join(text.split())
            if set(text) - set("01"):
                raise ValueError(f"predict: line {i}: spike-delay sequences are strings of 0 "
                                 f"and 1 (e.g. 0100001), got {text[:40]!r}")
            return np.array([float(c) for c in text], np.float32)[:, None]
        text = "".join(text.split())
        bad = sorted(set(text) - set(SYMBOLS))
        if bad:
            raise ValueError(f"predict: line {i}: unknown symbols {''.join(bad)!r} "
                             f"(temporal-order sequences use {SYMBOLS})")
        return _one_hot(np.array([SYMBOLS.index(c) for c in text])[:, None])[:, 0]

    def predict(self, model: Module, inputs: List[str]) -> List[str]:
        seqs = [self._parse(i, line) for i, line in enumerate(inputs, start=1)]
        if not seqs:
            return []
        lengths = np.array([s.shape[0] for s in seqs])
        x = np.zeros((int(lengths.max()), len(seqs), self.input_size), np.float32)
        for n, s in enumerate(seqs):
            x[:s.shape[0], n] = s
        out = self.outputs_last(model, x, lengths)
        if self.adding:
            return [f"{v:.4f}" for v in out[:, 0]]
        if self.spikes:
            return [f"{v * self.args.max_length:.2f}" for v in out[:, 0]]
        return [CLASSES[k] for k in out.argmax(axis=1)]

    # -- --compare-torch ------------------------------------------------------------------------
    def torch_model(self, model: Module):
        """A torch twin of ``model``: ``fusedrnn.to_torch(model.rnn)``, dropout and a Linear
        head with the same weights. Padded steps come after each sequence's end, so the causal
        torch layer needs no packing: the output at the last valid step is unaffected."""
        import torch

        from ..convert import to_torch

        class Twin(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = to_torch(model.rnn)
                self.drop = torch.nn.Dropout(model.drop.p)
                self.head = torch.nn.Linear(model.head.in_features, model.head.out_features)
                with torch.no_grad():
                    self.head.weight.copy_(torch.from_numpy(model.head.weight.data))
                    self.head.bias.copy_(torch.from_numpy(model.head.bias.data))
                self.train(model.training)

            def forward(self, x, lengths):             # x [T, N, C] -> last valid step [N, K]
                out = self.head(self.drop(self.rnn(x)[0]))
                idx = torch.as_tensor(np.asarray(lengths) - 1)
                return out[idx, torch.arange(out.shape[1])]

        return Twin()

    def torch_train_step(self, tmodel, batch) -> Tuple[float, int]:
        import torch
        x, y, lengths = batch
        tmodel.train()
        last = tmodel(torch.from_numpy(x), lengths)
        if self.regression:
            loss = torch.nn.functional.mse_loss(last[:, 0], torch.from_numpy(y))
        else:
            loss = torch.nn.functional.cross_entropy(last, torch.from_numpy(y))
        loss.backward()
        return float(loss.item()), y.size

    def torch_evaluate(self, tmodel) -> Dict[str, float]:
        import torch
        tmodel.eval()

        class Adapter:    # the numpy interface outputs_last() uses: forward -> [T, N, K]
            def forward(self, x, lengths):
                with torch.no_grad():
                    last = torch_numpy(tmodel(torch.from_numpy(np.ascontiguousarray(x)), lengths))
                out = np.zeros((x.shape[0],) + last.shape, last.dtype)
                out[np.asarray(lengths) - 1, np.arange(last.shape[0])] = last
                return out

        return self.evaluate(Adapter())
