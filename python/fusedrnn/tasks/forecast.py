"""``fusedrnn --task forecast``: multi-step time-series forecasting.

Data: the Mackey-Glass chaotic series by default (see :func:`mackey_glass`), or one numeric
column of a CSV file (``--data FILE.csv --column NAME``). The series is split in time order
70 / 15 / 15 % into train / validation / test and normalised with the training split's mean and
standard deviation. A sample is a window of ``--window`` past values and the next ``--horizon``
values; a validation (test) sample has its whole horizon inside the validation (test) split, its
input window may reach back into the previous split.

Models (``--model``):

* ``encoder`` (default): the recurrent layer reads the window; a Linear head maps its last
  output to all ``horizon`` future values at once (direct multi-step forecasting).
* ``jordan``: a Jordan network (Jordan 1986; as a forecaster, the NARMA recurrent network of
  Connor, Martin & Atlas 1994): at every step the recurrent layer gets two inputs, the observed
  value and its own previous prediction of that value (the output fed back), and a Linear head
  predicts the next value. Over the horizon no value is observed, so both inputs are the previous
  prediction: an autoregressive one-step-ahead rollout. Training is *free-running* (no teacher
  forcing): the feedback holds the model's real previous predictions, computed in a first
  forward pass without gradient; the second, trained pass takes them as ordinary inputs, so the
  gradient flows through the recurrent state but is truncated at the output-to-input feedback
  connection, as in Jordan's original training. The loss is the MSE of all one-step predictions
  over the window plus those of the horizon rollout, so training and inference run the model
  the same way.
"""
from __future__ import annotations

import csv
import functools
import io as _io
import math
import os
import re
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .. import losses
from ..module import Dropout, Linear, Module, register_module
from .base import DataError, Task
from .common import check_choice, check_int, make_rnn, sub_seed, torch_numpy
from .guards import read_text, save_figure

__all__ = ["Forecast", "ForecastEncoder", "JordanForecaster", "mackey_glass"]

SPLIT = (0.70, 0.15, 0.15)          # train / validation / test, in time order
MODELS = ("encoder", "jordan")


# -- data --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def mackey_glass(n: int = 6000, *, tau: float = 17.0, beta: float = 0.2, gamma: float = 0.1,
                 power: float = 10.0, dt: float = 0.1, sample: float = 1.0,
                 discard: float = 1000.0, x0: float = 1.2) -> np.ndarray:
    """``n`` samples of the Mackey-Glass delay differential equation

        dx/dt = beta x(t - tau) / (1 + x(t - tau)^power) - gamma x(t)

    integrated with fourth-order Runge-Kutta at step ``dt`` (the delayed term at the half step
    is the mean of its two neighbours on the grid), history x(t) = x0 for t <= 0, the first
    ``discard`` time units dropped as transient, then one sample every ``sample`` time units.
    Deterministic; float64 array [n]. With tau = 17 the series is chaotic (the benchmark of
    Lapedes & Farber 1987 and many since); its values lie in about [0.2, 1.4].
    """
    lag = int(round(tau / dt))
    every = int(round(sample / dt))
    if lag < 1 or every < 1 or abs(lag * dt - tau) > 1e-9 or abs(every * dt - sample) > 1e-9:
        raise ValueError("mackey_glass: tau and sample must be positive multiples of dt")
    skip = int(round(discard / dt))
    total = skip + n * every
    x = [x0] * (lag + 1) + [0.0] * total      # x[lag] is t = 0; x[i] is t = (i - lag) dt

    def f(xt: float, xd: float) -> float:
        return beta * xd / (1.0 + xd ** power) - gamma * xt

    h = dt
    for i in range(lag, lag + total):
        xt, d0, d1 = x[i], x[i - lag], x[i - lag + 1]
        dm = 0.5 * (d0 + d1)
        k1 = f(xt, d0)
        k2 = f(xt + 0.5 * h * k1, dm)
        k3 = f(xt + 0.5 * h * k2, dm)
        k4 = f(xt + h * k3, d1)
        x[i + 1] = xt + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    start = lag + skip + every
    out = np.asarray(x[start:start + n * every:every], dtype=np.float64)
    out.setflags(write=False)
    return out


#: the largest magnitude a value may have: the model computes in float32
MAX_VALUE = float(np.finfo(np.float32).max) / 16


#: a number as a CSV file or an input line writes it: ASCII digits, an optional sign, point
#: and exponent (and inf / nan, refused later by name). Not Python's float(), which also takes
#: "1_000" and other scripts' digits ("١٢"): a typo or a foreign format would pass as a value.
_NUMBER = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity|nan)",
                     re.ASCII | re.IGNORECASE)


def _number(cell: str) -> float:
    """float(cell) of a number written as :data:`_NUMBER` says; ValueError otherwise."""
    if not _NUMBER.fullmatch(cell):
        raise ValueError(f"not a number: {cell!r}")
    return float(cell)


def _is_number(cell: str) -> bool:
    try:
        _number(cell)
        return True
    except ValueError:
        return False


def read_csv_column(path: str, column: Optional[str]) -> np.ndarray:
    """The values of ``column`` of the CSV file ``path`` (header row first) as float64.

    DataError (one line, naming the file and, where there is one, the line) when the file
    cannot be read or is too large, has no header (a first row of numbers) or no rows, has a
    duplicated column name, lacks the column, has a blank row between values (trailing blank
    lines are fine), or holds a non-numeric, non-finite or float32-overflowing value in it.
    Without ``column`` a file with a single column uses that column."""
    text = read_text(path, "--data")          # (without a leading byte-order mark)
    reader = csv.reader(_io.StringIO(text, newline=""))
    rows = []
    try:
        for r in reader:
            rows.append((reader.line_num, r))
    except csv.Error as e:
        raise DataError(f"--data {path}: cannot read it as a CSV file ({e})") from None
    while rows and not any(c.strip() for c in rows[-1][1]):
        rows.pop()                                    # trailing blank lines
    while rows and not any(c.strip() for c in rows[0][1]):
        rows.pop(0)                                   # leading blank lines
    if not rows:
        raise DataError(f"--data {path}: the file is empty (expected a header row and values)")
    header = [c.strip() for c in rows[0][1]]
    if all(_is_number(c) for c in header if c) and any(header):
        raise DataError(f"--data {path}: row {rows[0][0]} holds numbers, not column names: "
                        f"the first line must be a header naming the columns")
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise DataError(f"--data {path}: the header names column(s) {', '.join(map(repr, dup))} "
                        f"more than once")
    if column is None:
        if len(header) != 1:
            raise DataError(f"--data {path}: give --column, one of: {', '.join(header)}")
        column = header[0]
    if column not in header:
        raise DataError(f"--data {path}: no column {column!r} in the header "
                        f"(columns: {', '.join(header)})")
    j = header.index(column)
    values = []
    for line, r in rows[1:]:
        if not any(c.strip() for c in r):
            raise DataError(f"--data {path}: row {line} is blank (a gap in the series); "
                            f"remove it or fill in the value")
        cell = r[j].strip() if j < len(r) else ""
        try:
            v = _number(cell)
        except ValueError:
            raise DataError(f"--data {path}: column {column!r} is not numeric: row {line} "
                            f"holds {cell!r}") from None
        if not math.isfinite(v):
            raise DataError(f"--data {path}: column {column!r} row {line} holds {cell!r} "
                            f"(values must be finite)")
        if abs(v) > MAX_VALUE:
            raise DataError(f"--data {path}: column {column!r} row {line} holds {cell!r}, "
                            f"beyond the {MAX_VALUE:.3g} the float32 model can use (rescale "
                            f"the series)")
        values.append(v)
    return np.asarray(values, dtype=np.float64)


def split_sizes(n: int) -> Tuple[int, int, int]:
    """(train, validation, test) sizes of a series of n points."""
    n_val = int(round(n * SPLIT[1]))
    n_test = int(round(n * SPLIT[2]))
    return n - n_val - n_test, n_val, n_test


def min_rows(window: int, horizon: int) -> int:
    """The fewest points for one training sample and one validation and test horizon."""
    n = window + horizon
    while True:
        tr, va, te = split_sizes(n)
        if tr >= window + horizon and va >= horizon and te >= horizon:
            return n
        n += 1


# -- models ------------------------------------------------------------------------------------
def feedback_rollout(window: np.ndarray, horizon: int, step):
    """The Jordan network's free-running pass: window [W, N] -> (u [W+horizon-1, N, 2],
    y [W+horizon-1, N]). ``step(u_t [1, N, 2], state) -> (prediction [N], state)`` is one
    step of the network (fusedrnn or its torch twin); input channel 0 is the observed value
    (the previous prediction after the window), channel 1 the previous prediction."""
    W, N = window.shape
    T = W + horizon - 1
    u = np.empty((T, N, 2), np.float32)
    y = np.empty((T, N), np.float32)
    state, prev = None, window[0].astype(np.float32)
    for t in range(T):
        u[t, :, 0] = window[t] if t < W else prev
        u[t, :, 1] = prev
        prev, state = step(u[t:t + 1], state)
        y[t] = prev
    return u, y


@register_module
class ForecastEncoder(Module):
    """Recurrent encoder over the window, Linear head from its last output to the horizon.

    forward(x [T, N, 1]) -> [N, horizon]; backward(d [N, horizon]) -> d_x [T, N, 1].
    """

    def __init__(self, cell: str = "lstm", hidden_size: int = 64, num_layers: int = 1,
                 dropout: float = 0.0, horizon: int = 1, seed: Optional[int] = None,
                 options: Optional[Dict[str, Any]] = None):
        super().__init__()
        options = dict(options or {})
        self._record(cell=cell, hidden_size=hidden_size, num_layers=num_layers,
                     dropout=dropout, horizon=horizon, seed=seed, options=options)
        self.rnn = make_rnn(cell, 1, hidden_size, num_layers, dropout, sub_seed(seed, 0),
                            forget_bias=1.0, options=options)
        self.drop = Dropout(dropout, seed=sub_seed(seed, 1))
        self.head = Linear(self.rnn.state_size, horizon, seed=sub_seed(seed, 2))
        self._T = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, _ = self.rnn.forward(x)
        self._T = out.shape[0]
        return self.head.forward(self.drop.forward(out[-1]))

    def backward(self, d: np.ndarray) -> np.ndarray:
        d_last = self.drop.backward(self.head.backward(d))
        d_out = np.zeros((self._T,) + d_last.shape, d_last.dtype)
        d_out[-1] = d_last
        return self.rnn.backward(d_out)

    def predict(self, window: np.ndarray, horizon: int) -> np.ndarray:
        """window [W, N] (normalised) -> [horizon, N] forecasts (model's mode as it is)."""
        return self.forward(window[:, :, None].astype(np.float32))[:, :horizon].T


@register_module
class JordanForecaster(Module):
    """Jordan network: a recurrent layer over (observed value, previous prediction) pairs and a
    Linear head predicting the next value.

    forward(u [T, N, 2], state=None) -> (y [T, N, 1], final state): the trained pass, with the
    fed-back predictions given as input channel 1. backward(dy [T, N, 1]) -> d_u.
    rollout(window [W, N], horizon) runs the network as it is used: the feedback is its own
    previous output, and after the window its own predictions are also the observations.
    """

    def __init__(self, cell: str = "lstm", hidden_size: int = 64, num_layers: int = 1,
                 dropout: float = 0.0, seed: Optional[int] = None,
                 options: Optional[Dict[str, Any]] = None):
        super().__init__()
        options = dict(options or {})
        self._record(cell=cell, hidden_size=hidden_size, num_layers=num_layers,
                     dropout=dropout, seed=seed, options=options)
        self.rnn = make_rnn(cell, 2, hidden_size, num_layers, dropout, sub_seed(seed, 0),
                            forget_bias=1.0, options=options)
        self.drop = Dropout(dropout, seed=sub_seed(seed, 1))
        self.head = Linear(self.rnn.state_size, 1, seed=sub_seed(seed, 2))

    def forward(self, u: np.ndarray, state=None):
        out, state = self.rnn.forward(u, state)
        return self.head.forward(self.drop.forward(out)), state

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return self.rnn.backward(self.drop.backward(self.head.backward(dy)))

    def rollout(self, window: np.ndarray, horizon: int) -> Tuple[np.ndarray, np.ndarray]:
        """window [W, N] (normalised) -> (u [W+horizon-1, N, 2], y [W+horizon-1, N]): the
        inputs the network saw and its one-step predictions y[t] of value t+1 (so y[W-1:] is
        the forecast of the horizon). Runs in eval mode (the mode is restored afterwards) and
        leaves no pending forward for backward."""
        def step(u_t, state):
            out, state = self.rnn.forward(u_t, state)
            return self.head.forward(out[0])[:, 0], state

        training = self.training
        self.eval()
        try:
            return feedback_rollout(window, horizon, step)
        finally:
            self.train(training)

    def predict(self, window: np.ndarray, horizon: int) -> np.ndarray:
        """window [W, N] (normalised) -> [horizon, N] forecasts."""
        return self.rollout(window, horizon)[1][window.shape[0] - 1:]


# -- the task ----------------------------------------------------------------------------------
class Forecast(Task):
    """Multi-step time-series forecasting (see the module docstring for data and models).

    Defaults: the Mackey-Glass series (tau = 17, 6000 points sampled every time unit), ``--window
    64`` past values, ``--horizon 20`` future values, ``--model encoder``, ``--cell lstm``,
    ``--hidden 64``, ``--layers 1``, ``--dropout 0``, ``--batch-size 64``, ``--lr 3e-3``,
    ``--seed 0``, a 60 s time budget.

    Metric: RMSE over all horizon steps of all validation windows, in the series' units (lower
    is better); ``baseline_rmse`` is the persistence forecast (the window's last value repeated).
    Also reported: ``nrmse`` (RMSE / the training split's standard deviation) and the RMSE at
    the first and last horizon step.

    predict: each input line is a comma-separated list of past values (at least ``--window``;
    the last ``--window`` are used) -> a comma-separated line of ``--horizon`` forecasts.
    """

    name = "forecast"
    help = "time-series forecasting (Mackey-Glass or a CSV column), encoder or Jordan network"
    metric = "rmse"
    higher_is_better = False
    unit = "seq"
    bidirectional_ok = False
    unidirectional_reason = "a forecaster cannot read the future"
    flags = ("data", "column", "model", "window", "horizon")
    length_flags = "--window and --horizon set its sequence length"
    defaults: Dict[str, Any] = {
        "model": "encoder", "window": 64, "horizon": 20, "cell": "lstm", "hidden": 64,
        "layers": 1, "dropout": 0.0, "batch_size": 64, "lr": 3e-3, "seed": 0,
        "time_budget": 60,
    }
    #: Mackey-Glass series length
    series_length = 6000
    #: windows per forward pass in evaluate / predict
    eval_batch = 1024

    def __init__(self, args):
        self.mean: Optional[float] = None
        self.std: Optional[float] = None
        self.series: Optional[np.ndarray] = None
        self.source = None
        super().__init__(args)

    # -- flags ----------------------------------------------------------------------------------
    def resolve_flags(self) -> None:
        super().resolve_flags()
        a = self.args
        a.model = check_choice("model", self.flag("model"), MODELS)
        a.window = check_int("window", self.flag("window"))
        a.horizon = check_int("horizon", self.flag("horizon"))
        a.data = getattr(a, "data", None)
        a.column = getattr(a, "column", None)
        if a.column is not None and a.data is None:
            raise ValueError("--column needs --data (a CSV file); without it the task uses the "
                             "Mackey-Glass series")

    # -- memory ---------------------------------------------------------------------------------
    def sequence_length(self) -> int:
        return self.args.window + self.args.horizon

    def input_width(self) -> int:
        return 2 if self.args.model == "jordan" else 1

    # -- data -----------------------------------------------------------------------------------
    def prepare(self) -> None:
        a = self.args
        need = min_rows(a.window, a.horizon)
        if a.data is None:
            if self.series_length < need:
                raise DataError(f"--window {a.window} and --horizon {a.horizon} need a series of "
                                f"at least {need} values (70/15/15% train/validation/test "
                                f"split); the built-in Mackey-Glass series has "
                                f"{self.series_length}: use smaller values or --data")
            series = mackey_glass(self.series_length)
            self.source = f"Mackey-Glass (tau=17), {series.size} points"
        else:
            series = read_csv_column(a.data, a.column)
            if series.size < need:
                raise DataError(f"--data {a.data}: {series.size} values is too few for "
                                f"--window {a.window} and --horizon {a.horizon}: need at least "
                                f"{need} (70/15/15% train/validation/test split)")
            self.source = f"{a.data} column {a.column or 'single'}, {series.size} points"
        n_tr, n_val, n_test = split_sizes(series.size)
        if self.mean is None:   # not restored from a checkpoint: training statistics
            train = series[:n_tr]
            std = float(train.std(dtype=np.float64))   # (float32 squares overflow past 1.8e19)
            if not std > 0:
                raise DataError(f"--data {a.data}: the training part of the series is constant "
                                f"(nothing to forecast)")
            self.mean, self.std = float(train.mean()), std
        self.series = series
        self.z = ((series - self.mean) / self.std).astype(np.float32)
        self.n_train, self.n_val, self.n_test = n_tr, n_val, n_test
        W, H = a.window, a.horizon
        self.num_train_windows = n_tr - W - H + 1
        self.val_starts = np.arange(max(n_tr, W), n_tr + n_val - H + 1)
        self.test_starts = np.arange(max(n_tr + n_val, W), series.size - H + 1)

    def _windows(self, starts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(inputs [W, N], targets [H, N]) normalised, for forecasts starting at ``starts``."""
        W, H = self.args.window, self.args.horizon
        x = self.z[starts[None, :] + np.arange(-W, 0)[:, None]]
        y = self.z[starts[None, :] + np.arange(H)[:, None]]
        return x, y

    # -- model ----------------------------------------------------------------------------------
    def build_model(self) -> Module:
        a = self.args
        if a.model == "encoder":
            return ForecastEncoder(a.cell, a.hidden, a.layers, a.dropout, a.horizon, seed=a.seed,
                                   options=self.cell_opts)
        return JordanForecaster(a.cell, a.hidden, a.layers, a.dropout, seed=a.seed,
                                options=self.cell_opts)

    def batches(self, rng: np.random.Generator) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        W, B = self.args.window, self.args.batch_size
        while True:
            starts = rng.integers(W, W + self.num_train_windows, size=B)
            self.epoch += B / self.num_train_windows
            yield self._windows(starts)

    def train_step(self, model: Module, batch) -> Tuple[float, int]:
        x, y = batch
        W, N = x.shape
        if isinstance(model, JordanForecaster):
            # pass 1: free-running, no gradient; pass 2: the same inputs, trained
            u, _ = model.rollout(x, y.shape[0])
            target = np.concatenate([x[1:], y], axis=0)[:, :, None]
            pred, _ = model.forward(u)
            loss, grad = losses.mse(pred, target)
        else:
            pred = model.forward(x[:, :, None])
            loss, grad = losses.mse(pred, np.ascontiguousarray(y.T))
        model.backward(grad)
        return loss, N

    # -- evaluation -----------------------------------------------------------------------------
    def forecast(self, model: Module, windows: np.ndarray) -> np.ndarray:
        """windows [W, N] normalised -> [horizon, N] normalised forecasts (in chunks)."""
        H = self.args.horizon
        parts = [model.predict(windows[:, i:i + self.eval_batch], H)
                 for i in range(0, windows.shape[1], self.eval_batch)]
        return np.concatenate(parts, axis=1) if parts else np.empty((H, 0), np.float32)

    def _scores(self, model: Module, starts: np.ndarray) -> Dict[str, float]:
        x, y = self._windows(starts)
        pred = self.forecast(model, x).astype(np.float64)
        err = (pred - y) * self.std
        base = (x[-1][None, :].astype(np.float64) - y) * self.std   # (float64, as pred)
        per_step = np.sqrt((err ** 2).mean(axis=1))
        rmse = float(np.sqrt((err ** 2).mean()))
        return {"rmse": rmse, "baseline_rmse": float(np.sqrt((base ** 2).mean())),
                "nrmse": rmse / self.std, "rmse_first": float(per_step[0]),
                "rmse_last": float(per_step[-1])}

    def evaluate(self, model: Module) -> Dict[str, float]:
        self._need_data()
        return self._scores(model, self.val_starts)

    def _need_data(self) -> None:
        if self.series is None:
            raise RuntimeError("Forecast: call prepare() before evaluate()")

    def summary(self, model: Module) -> List[str]:
        self._need_data()
        H = self.args.horizon
        lines = [f"data: {self.source}; window {self.args.window}, horizon {H}, "
                 f"model {self.args.model}"]
        for split, starts in (("validation", self.val_starts), ("test", self.test_starts)):
            if starts.size == 0:
                continue
            s = self._scores(model, starts)
            lines.append(f"{split} RMSE {s['rmse']:.4g} vs persistence {s['baseline_rmse']:.4g} "
                         f"({s['baseline_rmse'] / max(s['rmse'], 1e-300):.1f}x lower), "
                         f"NRMSE {s['nrmse']:.3f}; step 1 {s['rmse_first']:.4g}, "
                         f"step {H} {s['rmse_last']:.4g}")
        x, y = self._windows(self.val_starts[:1])
        pred = self.forecast(model, x)[:, 0] * self.std + self.mean
        truth = y[:, 0] * self.std + self.mean
        k = min(H, 5)
        lines.append("first validation window, next %d values: predicted %s, true %s" % (
            k, ", ".join(f"{v:.4g}" for v in pred[:k]),
            ", ".join(f"{v:.4g}" for v in truth[:k])))
        return lines

    def plot(self, model: Module, path: str) -> Optional[str]:
        """Saves forecasts vs truth over the start of the validation split (forecasts from
        origins ``horizon`` apart) and the RMSE per horizon step vs persistence as a PNG.
        ``path``: a file name, or a directory (the file is then ``forecast.png`` in it).
        Returns the written path, or None when matplotlib is not installed."""
        self._need_data()
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        if os.path.isdir(path):
            path = os.path.join(path, "forecast.png")
        W, H = self.args.window, self.args.horizon
        n_tr = self.n_train
        span = min(self.val_starts.size, max(10 * H, 200))
        origins = self.val_starts[:span:H]
        x, _ = self._windows(origins)
        pred = self.forecast(model, x) * self.std + self.mean
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 7), gridspec_kw={"height_ratios": [2, 1]})
        t0 = max(n_tr - W, 0)
        t1 = min(int(origins[-1]) + H, self.series.size) if origins.size else n_tr
        ts = np.arange(t0, t1)
        ax.plot(ts, self.series[t0:t1], color="black", lw=1.2, label="truth")
        for i, o in enumerate(origins):
            ax.plot(np.arange(o, o + H), pred[:, i], color="tab:red", lw=1.5,
                    label="forecast" if i == 0 else None)
            ax.plot([o - 1, o + H - 1], [self.series[o - 1]] * 2, color="tab:blue", lw=0.8,
                    ls="--", label="persistence" if i == 0 else None)
        ax.axvline(n_tr, color="gray", lw=0.8)
        ax.set_title(f"{self.source}: {self.args.model} {self.args.cell}, {H}-step forecasts "
                     f"from origins {H} apart (validation split)")
        ax.set_xlabel("time step")
        ax.legend(loc="upper right")
        xv, yv = self._windows(self.val_starts)
        pv = self.forecast(model, xv)
        pv, xv, yv = (a.astype(np.float64) for a in (pv, xv, yv))   # (float32 squares overflow)
        err = np.sqrt((((pv - yv) * self.std) ** 2).mean(axis=1))
        base = np.sqrt((((xv[-1][None, :] - yv) * self.std) ** 2).mean(axis=1))
        steps = np.arange(1, H + 1)
        ax2.plot(steps, err, "o-", color="tab:red", label="model")
        ax2.plot(steps, base, "o-", color="tab:blue", label="persistence")
        ax2.set_xlabel("horizon step")
        ax2.set_ylabel("validation RMSE")
        ax2.legend()
        fig.tight_layout()
        try:
            save_figure(fig, path)
        finally:
            plt.close(fig)
        return path

    # -- checkpoints ----------------------------------------------------------------------------
    def metadata(self) -> Dict[str, Any]:
        """The task flags, the normalisation (training mean and std) and the data source."""
        meta = super().metadata()
        meta.update({"mean": self.mean, "std": self.std, "source": self.source})
        return meta

    def restore(self, metadata: Dict[str, Any]) -> None:
        """Takes the checkpoint's normalisation and its task flags, except those given a value
        when this task was made (the user's flags win, as in the trainer: e.g. ``--data`` to
        evaluate on another file)."""
        self._restore_flags(metadata)
        self.resolve_flags()
        self.source = metadata.get("source", self.source)
        if metadata.get("mean") is not None:
            self.mean, self.std = float(metadata["mean"]), float(metadata["std"])

    # -- predict --------------------------------------------------------------------------------
    def predict(self, model: Module, inputs: List[str]) -> List[str]:
        if self.mean is None:
            raise RuntimeError("Forecast.predict: restore() or prepare() first (normalisation)")
        W, H = self.args.window, self.args.horizon
        rows = []
        for i, line in enumerate(inputs, start=1):
            # one separator per line: "," or ";". A line with both is ambiguous (the European
            # "0,1;0,2" would read as four numbers, not two), so it is refused, not guessed.
            if "," in line and ";" in line:
                raise ValueError(f"predict: line {i}: separate the values by commas or by "
                                 f"semicolons, not both (decimal commas are not read: write "
                                 f"0.1, not 0,1), got {line.strip()[:60]!r}")
            parts = [p.strip() for p in line.split(";" if ";" in line else ",")]
            parts = [p for p in parts if p]
            try:
                vals = [_number(p) for p in parts]
            except ValueError:
                raise ValueError(f"predict: line {i}: expected comma-separated numbers, got "
                                 f"{line.strip()[:60]!r}") from None
            if not all(math.isfinite(v) and abs(v) <= MAX_VALUE for v in vals):
                raise ValueError(f"predict: line {i}: values must be finite and within "
                                 f"+-{MAX_VALUE:.3g} (the model computes in float32)")
            if len(vals) < W:
                raise ValueError(f"predict: line {i}: {len(vals)} values, need at least "
                                 f"--window {W}")
            rows.append(vals[-W:])
        if not rows:
            return []
        z = (np.asarray(rows, np.float64).T - self.mean) / self.std
        far = np.abs(z).max(axis=0) > MAX_VALUE
        if far.any():
            i = int(np.argmax(far)) + 1
            raise ValueError(f"predict: line {i}: values too far from the training data "
                             f"(mean {self.mean:.4g}, standard deviation {self.std:.4g}) for "
                             f"the float32 model")
        x = z.astype(np.float32)
        pred = self.forecast(model, x).astype(np.float64) * self.std + self.mean
        return [", ".join(f"{v:.6g}" for v in pred[:, n]) for n in range(pred.shape[1])]

    # -- --compare-torch ------------------------------------------------------------------------
    def torch_model(self, model: Module):
        """A torch twin of ``model`` (same layers and weights): its ``rnn`` is
        ``fusedrnn.to_torch(model.rnn)``, its ``head`` a torch.nn.Linear."""
        return _TorchForecaster.build(model)

    def torch_train_step(self, tmodel, batch) -> Tuple[float, int]:
        import torch
        x, y = batch
        tmodel.train()
        if tmodel.kind == "jordan":
            u, _ = tmodel.rollout(x, y.shape[0])
            target = torch.from_numpy(np.concatenate([x[1:], y], axis=0))
            pred = tmodel.steps(torch.from_numpy(u))[0][:, :, 0]
        else:
            pred = tmodel(torch.from_numpy(np.ascontiguousarray(x[:, :, None])))
            target = torch.from_numpy(np.ascontiguousarray(y.T))
        loss = torch.nn.functional.mse_loss(pred, target)
        loss.backward()
        return float(loss.item()), x.shape[1]

    def torch_evaluate(self, tmodel) -> Dict[str, float]:
        tmodel.eval()
        return self.evaluate(tmodel.numpy_adapter())


class _TorchForecaster:
    """Builds the torch twin of a ForecastEncoder / JordanForecaster (torch imported only
    here)."""

    @staticmethod
    def build(model: Module):
        import torch

        from ..convert import to_torch

        class Twin(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.kind = "jordan" if isinstance(model, JordanForecaster) else "encoder"
                self.rnn = to_torch(model.rnn)
                self.drop = torch.nn.Dropout(model.drop.p)
                self.head = torch.nn.Linear(model.head.in_features, model.head.out_features)
                with torch.no_grad():
                    self.head.weight.copy_(torch.from_numpy(model.head.weight.data))
                    self.head.bias.copy_(torch.from_numpy(model.head.bias.data))
                self.train(model.training)

            def steps(self, u, state=None):            # jordan: u [T, N, 2] -> y [T, N, 1]
                out, state = self.rnn(u, state)
                return self.head(self.drop(out)), state

            def forward(self, x):                      # encoder: x [T, N, 1] -> [N, H]
                out, _ = self.rnn(x)
                return self.head(self.drop(out[-1]))

            def rollout(self, window: np.ndarray, horizon: int):
                def step(u_t, state):
                    out, state = self.steps(torch.from_numpy(u_t), state)
                    return torch_numpy(out[0, :, 0]).copy(), state

                training = self.training
                self.eval()
                try:
                    with torch.no_grad():
                        return feedback_rollout(window, horizon, step)
                finally:
                    self.train(training)

            def numpy_adapter(self):
                twin = self

                class Adapter:
                    def predict(self, window: np.ndarray, horizon: int) -> np.ndarray:
                        if twin.kind == "jordan":
                            return twin.rollout(window, horizon)[1][window.shape[0] - 1:]
                        with torch.no_grad():
                            x = torch.from_numpy(np.ascontiguousarray(window[:, :, None]))
                            return torch_numpy(twin(x))[:, :horizon].T
                return Adapter()

        return Twin()
