"""Recurrent layers shaped like torch.nn: :class:`LSTM`, :class:`GRU`, :class:`RNN`.

Multi-layer, bidirectional, dropout between layers, LSTM projection (``proj_size``) and
peepholes, both GRU formulas, variable lengths, initial and final states; torch's arguments,
shapes and parameter names, so ``layer.load_state_dict(torch_module.state_dict())`` just works.

    forward(x, state=None, lengths=None) -> (output, final_state)
        x       [T, N, C] ([N, T, C] with batch_first)
        state   h0 [L*D, N, R] (LSTM: a tuple (h0, c0), c0 [L*D, N, H]); None = zeros
        output  [T, N, D*R]: the last layer's output, directions concatenated [forward,
                backward]; zero at steps >= lengths[n]
        final   h_n [L*D, N, R] (LSTM: (h_n, c_n)); layer-major, then direction, as torch
    backward(d_output, d_state=None) -> d_x
        adds every parameter's gradient into its ``Parameter.grad``; the gradient of the initial
        state (when one was given) is left in ``layer.d_state`` (same structure as ``state``).

L = num_layers, D = 2 if bidirectional else 1, H = hidden_size, R = proj_size or H.

Each layer and direction runs one fused C++ kernel call (the reverse direction uses the
kernel's own reverse mode, which starts every sequence at its last valid step). The layer keeps
its kernel caches, inter-layer activations and gradient buffers between calls and reuses them
while the shapes stay the same; parameter gradients are accumulated by the kernels directly into
``Parameter.grad``. Only the returned arrays (output, final state, d_x) are fresh.

Threads: one layer may be called from several Python threads at once, in train and eval mode.
The buffers, the training context of a forward and ``d_state`` are per thread (a thread's
backward differentiates that thread's last forward); backward calls are serialised while they
accumulate into ``Parameter.grad`` (the sum over the threads' backward calls, in the order
they ran).

Dropout (train mode only, ``dropout > 0``) multiplies each layer's output except the last by a
mask from the layer's own seeded generator; the recurrent path is never dropped.

Truncated BPTT: pass the final state of one chunk as the state of the next. The state is then an
ordinary input: nothing links the chunks, so ``backward`` stops at the chunk's start.

Check mode (``fusedrnn.set_check_finite(True)`` or ``with fusedrnn.check_finite():``): after each
kernel call the layer scans what it produced (outputs; in backward the input gradient, the
parameters' gradients and the initial state's) and raises ``FloatingPointError`` naming the
layer, the direction, the time step and the sequence where a non-finite value (NaN or ±inf)
first appears (the input and the initial state are checked first; padding past a sequence's
length, which the kernels do not read, is not). Off by default: it reads every output once
more.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import threading
import warnings
from typing import Optional

import numpy as np

from . import _core
from . import functional as F
from . import validators as V
from .module import (Module, Parameter, _dtype, _packing_key, _positive_int,
                     _same_packing, _seed, register_module)

__all__ = ["LSTM", "GRU", "RNN", "set_check_finite", "check_finite"]

_check = threading.local()  # per thread, like numpy's errstate


def set_check_finite(enabled: bool) -> None:
    """Turn the non-finite check of every layer call in this thread on or off."""
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"set_check_finite: enabled must be a bool, got {type(enabled).__name__}")
    _check.on = bool(enabled)


def _checking() -> bool:
    return getattr(_check, "on", False)


@contextlib.contextmanager
def check_finite(enabled: bool = True):
    """Context manager: the non-finite check on (or off) inside the block."""
    old = _checking()
    set_check_finite(enabled)
    try:
        yield
    finally:
        _check.on = old


def _first_nonfinite(where: str, a: np.ndarray, time_axis: Optional[int], reverse: bool = False,
                     lengths: Optional[np.ndarray] = None):
    """Raises FloatingPointError if `a` has a NaN or inf: names the first time step (in
    processing order) and the sequence; a has shape [T, N, ...] (time_axis 0 or 1) or [N, ...].
    With ``lengths``, the padding past each sequence's length (which the kernels never read) is
    not checked."""
    bad = ~np.isfinite(a)
    if not bad.any():
        return
    if lengths is not None and time_axis is not None:
        T = a.shape[time_axis]
        valid = np.arange(T)[:, None] < np.asarray(lengths)[None, :]      # [T, N]
        if time_axis == 1:
            valid = valid.T
        bad &= valid.reshape(valid.shape + (1,) * (a.ndim - 2))
        if not bad.any():
            return
    if time_axis is None:
        n = int(np.argwhere(bad.reshape(a.shape[0], -1).any(axis=1))[0, 0])
        raise FloatingPointError(f"{where}: non-finite value in sequence {n}")
    if time_axis == 1:
        a, bad = a.swapaxes(0, 1), bad.swapaxes(0, 1)
    per_step = bad.reshape(a.shape[0], a.shape[1], -1).any(axis=2)  # [T, N]
    steps = np.flatnonzero(per_step.any(axis=1))
    t = int(steps[-1] if reverse else steps[0])
    n = int(np.flatnonzero(per_step[t])[0])
    value = a[t, n][~np.isfinite(a[t, n])].flat[0]
    raise FloatingPointError(f"{where}: first non-finite value ({value}) at time step {t}, "
                             f"sequence {n}")

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_INITS = ("pytorch", "keras", "irnn")
_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_peep")
_PARAM_NAMES: dict = {}   # suffix "_l0", "_l1_reverse", ... -> the parameters' names
_KINDS = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}
_SUFFIXES: dict = {}
_ROUTES: dict = {}   # see _RNNBase._route

#: options a forward reads, per cell: setting one on a built layer takes effect from the next
#: forward (_RNNBase._set_option); the issue-19 options are the LSTM's and the GRU's only
_REG_OPTIONS = ("ln_eps", "zoneout_h", "zoneout_c", "recurrent_dropout", "input_dropout",
                "weight_drop", "dropout_masks")
_LIVE_OPTIONS = {"LSTM": frozenset(("batch_first", "dropout", "cell_clip") + _REG_OPTIONS),
                 "GRU": frozenset(("batch_first", "dropout", "variant") + _REG_OPTIONS),
                 "RNN": frozenset(("batch_first", "dropout", "nonlinearity"))}
_OPTION_ORDER = tuple(sorted(set().union(*_LIVE_OPTIONS.values())))
#: options fixed at construction, and why
_SHAPES = "it sets the parameters' shapes"
_FIXED_OPTIONS = {
    "input_size": _SHAPES, "hidden_size": _SHAPES, "num_layers": _SHAPES,
    "bidirectional": _SHAPES, "proj_size": _SHAPES, "num_directions": _SHAPES,
    "state_size": _SHAPES, "gates": _SHAPES, "mode": "it is the cell",
    "bias": "it decides whether the bias parameters exist",
    "peepholes": "it decides whether the peephole parameters exist",
    "layer_norm": "it adds or removes the layer-norm parameters (ln_gamma_*, ln_beta_*)",
    "dtype": "it is the parameters' dtype",
    "init": "it is the parameters' initialisation, done at construction",
    "forget_bias": "it was added to bias_ih at initialisation (change bias_ih_l{k} itself)",
}
_OPTION_NAMES = frozenset(_OPTION_ORDER) | frozenset(_FIXED_OPTIONS)


def _suffix(layer, direction):
    """The parameters' suffix of a layer and direction: "_l0", "_l1_reverse", ..."""
    try:
        return _SUFFIXES[layer, direction]
    except KeyError:
        sfx = _SUFFIXES[layer, direction] = f"_l{layer}" + ("_reverse" if direction else "")
        return sfx


def _glorot(rng, shape, dt):
    fan_out, fan_in = shape
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, shape).astype(dt)


def _orthogonal_columns(rng, rows, cols, dt):
    """[rows, cols] with orthonormal columns (rows >= cols) or rows (rows < cols), as Keras'
    Orthogonal initializer gives for the transposed matrix."""
    flat = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return q.astype(dt)


class _PackedSpaces(threading.local):
    """A frozen layer's workspaces, per thread: {(layer, direction) key: (array whose start
    holds the packed weights, the packing key)}. Pickled and copied as a fresh, empty store (the
    next call packs)."""

    def __init__(self):
        self.spaces = {}

    def __reduce__(self):
        return _PackedSpaces, ()


class _PerThread(threading.local):
    """A layer's state between calls, kept per thread: the reused buffers (kernel caches,
    inter-layer activations, gradient buffers), the training context of the last forward and
    d_state. So concurrent forward/backward calls on one layer from several threads each see
    their own (item 14 of issue 23). Pickled and copied as a fresh, empty store."""

    def __init__(self):
        self.buffers = {}
        self.ctx = None
        self.d_state = None

    def __reduce__(self):
        return _PerThread, ()


class _GradLock:
    """Serialises the kernels' accumulation into Parameter.grad across threads (one per
    layer); pickled and copied as a fresh lock."""

    def __init__(self):
        self._lock = threading.Lock()

    def __enter__(self):
        self._lock.acquire()

    def __exit__(self, *exc):
        self._lock.release()

    def __reduce__(self):
        return _GradLock, ()


class _RNNBase(Module):
    _mode = ""
    _precision = "float32"   # the kernels' precision; frozen(precision=...) sets it on its copy

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, proj_size=0, peepholes=False,
                 forget_bias=0.0, variant="reset_after", nonlinearity="tanh", init="pytorch",
                 dtype="float32", seed=None):
        super().__init__()
        fn = type(self).__name__
        input_size = _positive_int(fn, "input_size", input_size)
        hidden_size = _positive_int(fn, "hidden_size", hidden_size)
        num_layers = _positive_int(fn, "num_layers", num_layers)
        for name, v in (("bias", bias), ("batch_first", batch_first),
                        ("bidirectional", bidirectional), ("peepholes", peepholes)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{fn}: {name} must be a bool, got {type(v).__name__}")
        dropout = V.probability(fn, "dropout", dropout, closed=True)   # [0, 1] as torch's
        if dropout > 0 and num_layers == 1:
            # torch.nn's warning, word for word: the option does nothing on one layer
            warnings.warn(f"dropout option adds dropout after all but last recurrent layer, so "
                          f"non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", UserWarning,
                          stacklevel=3)
        proj_size = _positive_int(fn, "proj_size", proj_size, minimum=0)
        if isinstance(forget_bias, (bool, np.bool_)) or not isinstance(forget_bias, numbers.Real) \
                or not math.isfinite(forget_bias):
            raise ValueError(f"{fn}: forget_bias must be a finite number, got {forget_bias!r}")
        forget_bias = float(forget_bias)
        if variant not in ("reset_after", "reset_before"):
            raise ValueError(f"{fn}: variant must be 'reset_after' or 'reset_before', "
                             f"got {variant!r}")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"{fn}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        if init not in _INITS:
            raise ValueError(f"{fn}: init must be one of {_INITS}, got {init!r}")
        if init == "irnn" and not (self._mode == "RNN" and nonlinearity == "relu"):
            raise ValueError(f"{fn}: init='irnn' needs an RNN with nonlinearity='relu'")
        if forget_bias and not bias:
            raise ValueError(f"{fn}: forget_bias needs bias=True")
        dt = _dtype(fn, dtype)
        seed = _seed(fn, seed)
        if self._mode == "LSTM" and proj_size:
            # The kernel is the one authority on projection sizes (torch's rule: P < H).
            try:
                F._sizes("lstm", (1, 1, input_size, hidden_size, proj_size))
            except ValueError as e:   # (without the binding's internal function name)
                msg = str(e).removeprefix("lstm_sizes: ")
                raise ValueError(f"{fn}: {msg}") from None

        self.mode = self._mode
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bool(bias), bool(batch_first), \
            bool(bidirectional)
        self.dropout, self.proj_size, self.peepholes = dropout, proj_size, bool(peepholes)
        self.forget_bias, self.variant, self.nonlinearity = forget_bias, variant, nonlinearity
        self.init, self.dtype = init, dt
        self.num_directions = 2 if bidirectional else 1
        self.gates = _GATES[self._mode]
        self.state_size = proj_size or hidden_size  # R: size of h and of each output direction

        init_seq, drop_seq = np.random.SeedSequence(seed).spawn(2)
        self._drop_rng = np.random.default_rng(drop_seq)
        self._init_parameters(np.random.default_rng(init_seq))
        self._tls = _PerThread()     # per thread: buffers, training context, d_state
        self._grad_lock = _GradLock()
        self._packed = None  # frozen(): per-thread workspaces holding the packed weights

    # -- options set after construction ------------------------------------------------------
    # torch.nn.LSTM reads ``self.dropout`` (and batch_first) at every forward, so users set
    # them on a built module; here a forward reads its options from the layer too, but the
    # route (plain or regularised kernel) was decided once, so a plain assignment ran the old
    # configuration and left config() (what a checkpoint stores) behind. Assignments go through
    # _set_option once the layer is built (_record has run); copies and unpickling set __dict__
    # directly.
    def __setattr__(self, name, value):
        if name in _OPTION_NAMES and self.__dict__.get("_init_args") is not None:
            self._set_option(name, value)
        else:
            super().__setattr__(name, value)

    def _set_option(self, name, value):
        """``layer.<option> = value`` after construction. The options a forward reads
        (_LIVE_OPTIONS of the cell) take effect from the next forward: checked by the
        constructor's own checks (a small layer of the same options with this one changed is
        built), then stored with the others the check normalised, the regularised route
        recomputed and config() updated. Options that shape the parameters or were used only to
        initialise them (_FIXED_OPTIONS), and options of another cell, raise AttributeError."""
        cls = type(self).__name__
        fn = f"{cls}.{name}"
        if name in _FIXED_OPTIONS:
            raise AttributeError(f"{fn} cannot be changed after construction: "
                                 f"{_FIXED_OPTIONS[name]}; build a new {cls}(..., {name}=...) "
                                 f"and load_state_dict the weights that still fit")
        if name not in _LIVE_OPTIONS[self._mode]:
            raise AttributeError(f"{fn}: {name!r} is not an option of the {cls} layer "
                                 f"(its options: {', '.join(sorted(_LIVE_OPTIONS[self._mode]))})")
        if self._packed is not None and name != "batch_first":
            raise AttributeError(f"{fn}: a frozen copy runs the options it was frozen with; set "
                                 f"{name} on the layer it was frozen from and freeze it again")
        args = {k: v for k, v in self.config().items() if k != "type"}
        # the constructor's checks of these options do not depend on the sizes: a tiny probe
        args.update(input_size=1, hidden_size=2, num_layers=1, seed=0)
        if "bidirectional" in args:
            args["bidirectional"] = False
        if args.get("proj_size"):
            args["proj_size"] = 1
        args[name] = value
        try:
            with warnings.catch_warnings():   # (the probe's one layer: no dropout warning)
                warnings.simplefilter("ignore")
                probe = type(self)(**args)
        except (TypeError, ValueError) as e:
            msg = str(e).removeprefix(f"{cls}: ")
            raise type(e)(f"{fn} = {value!r}: {msg}") from None
        if self._precision != "float32" and getattr(probe, "_reg", None) \
                and not probe._plain(True):
            opts = ", ".join(_kernel_options(probe._reg, probe.dropout_masks))
            raise ValueError(f"{fn} = {value!r}: with {opts} this layer would run the "
                             f"regularised kernel, float32 only, and its compute is "
                             f"{self._precision!r}; set compute='float32' first")
        for k in _LIVE_OPTIONS[self._mode]:
            object.__setattr__(self, k, getattr(probe, k))
        if hasattr(probe, "_reg"):
            object.__setattr__(self, "_reg", probe._reg)
        keep = ("input_size", "hidden_size", "num_layers", "bidirectional", "proj_size", "seed")
        self._record(**{k: self._init_args[k] if k in keep else v
                        for k, v in probe._init_args.items()})

    def _options_key(self):
        """The options a training forward ran with, which its backward must see unchanged."""
        return tuple(getattr(self, k, None) for k in _OPTION_ORDER) + \
            (tuple(getattr(self, "_reg", ())),)

    # -- parameters --------------------------------------------------------------------------
    def _suffixes(self):
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                yield layer, direction, f"_l{layer}" + ("_reverse" if direction else "")

    def _init_parameters(self, rng):
        G, H, R, dt = self.gates, self.hidden_size, self.state_size, self.dtype
        k = 1.0 / math.sqrt(H)
        uniform = lambda *shape: rng.uniform(-k, k, shape).astype(dt)  # noqa: E731
        for layer, _, sfx in self._suffixes():
            C = self.input_size if layer == 0 else self.num_directions * R
            if self.init == "pytorch":
                w_ih, w_hh = uniform(G * H, C), uniform(G * H, R)
                b_ih, b_hh = uniform(G * H), uniform(G * H)
                w_hr, w_peep = uniform(R, H), uniform(3, H)
            elif self.init == "keras":
                w_ih = _glorot(rng, (G * H, C), dt)
                w_hh = _orthogonal_columns(rng, G * H, R, dt)
                b_ih, b_hh = np.zeros(G * H, dt), np.zeros(G * H, dt)
                if self._mode == "LSTM":
                    b_ih[H:2 * H] = 1.0  # Keras' unit_forget_bias
                w_hr, w_peep = _glorot(rng, (R, H), dt), np.zeros((3, H), dt)
            else:  # irnn (Le, Jaitly & Hinton 2015): identity recurrence, zero biases
                w_ih = (rng.standard_normal((H, C)) * 1e-3).astype(dt)
                w_hh = np.eye(H, dtype=dt)
                b_ih, b_hh = np.zeros(H, dt), np.zeros(H, dt)
                w_hr = w_peep = None
            setattr(self, "weight_ih" + sfx, Parameter(w_ih))
            setattr(self, "weight_hh" + sfx, Parameter(w_hh))
            if self.bias:
                if self._mode == "LSTM":
                    b_ih[H:2 * H] += self.forget_bias
                setattr(self, "bias_ih" + sfx, Parameter(b_ih))
                setattr(self, "bias_hh" + sfx, Parameter(b_hh))
            if self.proj_size:
                setattr(self, "weight_hr" + sfx, Parameter(w_hr))
            if self.peepholes:
                setattr(self, "weight_peep" + sfx, Parameter(w_peep))

    def _params(self, sfx):
        """(weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, weight_peep) of layer and
        direction `sfx`, None where absent."""
        names = _PARAM_NAMES.get(sfx)
        if names is None:
            names = _PARAM_NAMES[sfx] = tuple(n + sfx for n in _PARAMS)
        get = self._parameters.get
        return get(names[0]), get(names[1]), get(names[2]), get(names[3]), get(names[4]), \
            get(names[5])

    # -- per-thread state (_PerThread) ------------------------------------------------------
    @property
    def _buffers(self):
        return self._tls.buffers

    @property
    def _ctx(self):
        return self._tls.ctx

    @_ctx.setter
    def _ctx(self, value):
        self._tls.ctx = value

    @property
    def d_state(self):
        """The gradient of the initial state after this thread's last backward (None when the
        forward had no state)."""
        return self._tls.d_state

    @d_state.setter
    def d_state(self, value):
        self._tls.d_state = value

    def flatten_parameters(self) -> None:
        """No-op (torch compatibility): parameters are always contiguous here."""

    # -- buffers ------------------------------------------------------------------------------
    def _buffer(self, key, shape, zero=False):
        """An array kept between calls, reallocated only when the shape changes."""
        buffers = self._tls.buffers
        buf = buffers.get(key)
        if buf is None or buf.shape != shape:
            buf = buffers[key] = np.empty(shape, self.dtype)
        if zero:
            buf.fill(0)
        return buf

    # -- argument checks ----------------------------------------------------------------------
    def _check_input(self, x):
        if type(x) is not np.ndarray or x.dtype != self.dtype or x.ndim != 3 \
                or x.shape[2] != self.input_size or min(x.shape) < 1:
            self._bad_input(x)   # raises
        return (x.shape[1], x.shape[0]) if self.batch_first else x.shape[:2]

    def _bad_input(self, x):
        """Raises the exception naming what is wrong with forward's x (_check_input)."""
        fn = f"{type(self).__name__}.forward"
        shape = "[N, T, C]" if self.batch_first else "[T, N, C]"
        if not isinstance(x, np.ndarray) or isinstance(x, np.ma.MaskedArray):
            raise TypeError(f"{fn}: x must be a numpy array of shape {shape}, "
                            f"got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise TypeError(f"{fn}: x must have dtype {self.dtype} (the layer's dtype), "
                            f"got {x.dtype}")
        if x.ndim != 3 or x.shape[2] != self.input_size or min(x.shape) < 1:
            raise ValueError(f"{fn}: x must have shape {shape} with C = input_size = "
                             f"{self.input_size} and T, N >= 1, got {list(x.shape)}")

    def _check_state(self, fn, name, a, shape):
        if not isinstance(a, np.ndarray) or isinstance(a, np.ma.MaskedArray):
            raise TypeError(f"{fn}: {name} must be a numpy array of shape {list(shape)}, "
                            f"got {type(a).__name__}")
        if a.dtype != self.dtype:
            raise TypeError(f"{fn}: {name} must have dtype {self.dtype}, got {a.dtype}")
        if a.shape != shape:
            raise ValueError(f"{fn}: {name} must have shape {list(shape)}, got {list(a.shape)}")

    def _split_state(self, fn, state, N, what="state"):
        """(h [L*D, N, R] or None, c [L*D, N, H] or None) from a user state."""
        LD, R, H = self.num_layers * self.num_directions, self.state_size, self.hidden_size
        if state is None:
            return None, None
        if self._mode == "LSTM":
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(f"{fn}: {what} must be a tuple (h, c) of arrays [{LD}, {N}, {R}] "
                                f"and [{LD}, {N}, {H}], got {type(state).__name__}")
            h, c = state
            self._check_state(fn, f"{what}[0] (h)", h, (LD, N, R))
            self._check_state(fn, f"{what}[1] (c)", c, (LD, N, H))
            return h, c
        self._check_state(fn, what, state, (LD, N, R))
        return state, None

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x, state=None, lengths=None):
        T, N = self._check_input(x)
        if state is None and lengths is None:
            h0 = c0 = None
        else:
            fn = f"{type(self).__name__}.forward"
            h0, c0 = self._split_state(fn, state, N)
            lengths = F._lengths(fn, lengths, N, T)
        L, D, R, H = self.num_layers, self.num_directions, self.state_size, self.hidden_size
        training = self.training
        if training and self._packed is not None and self._precision == "int8":
            raise ValueError(f"{type(self).__name__}.forward: an int8 copy runs inference "
                             f"only, and this one has training=True (train mode); call .eval() "
                             f"first")
        if training and self._packed is not None:
            raise RuntimeError(f"{type(self).__name__}.forward: a frozen layer runs inference "
                               f"only (it is in train mode); train the layer it was frozen from "
                               f"and freeze it again")
        dt = self.dtype
        batch_first = self.batch_first
        if batch_first:
            inp = self._buffer(("x",), (T, N, self.input_size))
            np.copyto(inp, x.transpose(1, 0, 2))
        elif not x.flags.c_contiguous or training:
            # Training keeps x for backward: a copy, so that a caller refilling its batch array
            # before backward cannot change the gradients (torch raises there instead)
            inp = self._buffer(("x",), x.shape)
            np.copyto(inp, x)
        else:
            inp = x
        if training and h0 is not None:
            # the initial states are kept for backward too (d w_hh of the first step)
            h0 = h0.copy()
            c0 = None if c0 is None else c0.copy()
        lstm = self._mode == "LSTM"
        h_n = np.empty((L * D, N, R), dt)
        c_n = np.empty((L * D, N, H), dt) if lstm else None
        checking = getattr(_check, "on", False)
        if checking:
            name = type(self).__name__
            _first_nonfinite(f"{name}.forward: input x", inp, 0, lengths=lengths)
            for s_name, s_arr in (("state h0", h0), ("state c0", c0)):
                if s_arr is not None:
                    for i in range(L * D):
                        _first_nonfinite(f"{name}.forward: {s_name}[{i}]", s_arr[i], None)
        inputs, masks = [], []
        # The returned output is fresh memory; the kernels write the last layer's output straight
        # into it (time-major), sparing a copy out of a reused buffer.
        direct = not batch_first
        P = self.proj_size
        for layer in range(L):
            C = inp.shape[2]
            last = layer == L - 1
            if D == 1:
                out = None
            elif last and direct:
                out = np.empty((T, N, D * R), dt)
            else:
                out = self._buffer(("out", layer), (T, N, D * R))
            for direction in range(D):
                idx = layer * D + direction
                if D == 1 and last and direct:
                    y = np.empty((T, N, R), dt)
                else:
                    y = self._buffer(("y", layer, direction), (T, N, R))
                self._kernel_forward((T, N, C, H, P), _suffix(layer, direction), inp,
                                     None if h0 is None else h0[idx],
                                     None if c0 is None else c0[idx], lengths, direction == 1,
                                     training, y, h_n[idx],
                                     None if c_n is None else c_n[idx],
                                     ("cache", layer, direction))
                if checking:
                    _first_nonfinite(f"{type(self).__name__}.forward: layer {layer}"
                                     + (" (reverse direction)" if direction else "") + " output",
                                     y, 0, reverse=direction == 1)
                if D == 2:
                    out[:, :, direction * R:(direction + 1) * R] = y
            if D == 1:
                out = y
            inputs.append(inp)
            if not last and training and self.dropout > 0:
                mask = self._buffer(("mask", layer), out.shape)
                keep = self._drop_rng.random(out.shape) >= self.dropout
                # (dropout = 1, as torch's: every element dropped, the output and its
                # gradient zero)
                scale = 0.0 if self.dropout >= 1 else 1.0 / (1.0 - self.dropout)
                np.multiply(keep, dt.type(scale), out=mask)
                dropped = self._buffer(("dropped", layer), out.shape)
                np.multiply(out, mask, out=dropped)
                masks.append(mask)
                out = dropped
            else:
                masks.append(None)
            inp = out
        # (set on the per-thread store directly, not through Module.__setattr__)
        # The forward's precision goes with its context: the caches were written for it, and
        # its backward must run its contract even if ``compute`` changes before backward.
        self._tls.ctx = {"T": T, "N": N, "lengths": lengths, "inputs": inputs, "masks": masks,
                         "has_state": h0 is not None, "precision": self._precision,
                         "options": self._options_key()} if training else None
        # Always a copy: with N = 1 or T = 1 the transposed buffer is already C-contiguous, and
        # ascontiguousarray would return the reused buffer itself (the next forward overwrote it)
        output = inp.transpose(1, 0, 2).copy() if batch_first else inp
        return output, ((h_n, c_n) if lstm else h_n)

    def _kind(self):
        """The cell's kind and formula for the kernels (fusedrnn.functional's route)."""
        kind = _KINDS[self._mode]
        return kind, F._formula(kind, self.variant if kind == "gru" else self.nonlinearity)

    def _route(self, dims, name=None):
        """(kind, formula, precision, the kernel's dims, sizes) of a kernel call with layer dims
        (T, N, C, H, P), remembered in _ROUTES under (mode, variant, nonlinearity, precision
        name, dims): a pure function of them, asked at every call. name: the precision's name
        (default: this layer's compute precision)."""
        kind, formula = self._kind()
        name = self._precision if name is None else name
        precision = F._PRECISION_OF[name]
        kdims = dims if kind == "lstm" else dims[:4]
        route = (kind, formula, precision, kdims, F._sizes(kind, kdims, precision))
        if len(_ROUTES) >= 4096:
            _ROUTES.clear()
        _ROUTES[self._mode, self.variant, self.nonlinearity, name, dims] = route
        return route

    def _kernel_forward(self, dims, sfx, x, h0, c0, lengths, reverse, training, y, h_n, c_n,
                        cache_key, w_hh_data=None):
        """One layer and direction's forward kernel call; w_hh_data: the recurrent weights to
        use instead of the parameter's (DropConnect's masked copy)."""
        w_ih, w_hh, b_ih, b_hh, w_hr, w_peep = self._params(sfx)
        w_hh_data = w_hh.data if w_hh_data is None else w_hh_data
        route = _ROUTES.get((self._mode, self.variant, self.nonlinearity, self._precision, dims))
        if route is None:
            route = self._route(dims)
        kind, formula, precision, dims, sizes = route
        cache = self._buffer(cache_key, (sizes[0],)) if training else None
        ws, packed = None, False
        if self._packed is not None:
            # Frozen: this thread's own workspace for this layer and direction; the kernels
            # packed the weights at its start on the first call (their offset there depends on
            # the cell and its sizes only), so later calls skip packing. A larger call needs a
            # larger workspace, which is packed anew; so does a change of precision (``compute``)
            # or of a Parameter (``p.data`` assigned, a Parameter replaced: the key holds the
            # arrays packed and their versions), whose new arrays are made read-only in turn.
            spaces = self._packed.spaces
            key = _packing_key((w_ih, w_hh, b_ih, b_hh, w_hr, w_peep), self._precision)
            entry = spaces.get(cache_key)
            same = entry is not None and _same_packing(entry[1], key)
            packed = same and entry[0].size >= sizes[1]
            if not packed:
                if entry is not None and not same:
                    self._freeze_weights()
                spaces[cache_key] = (np.empty(sizes[1], self.dtype), key)
            ws = spaces[cache_key][0][:sizes[1]]  # same start: the packed weights stay there
        if h0 is not None:
            h0 = np.ascontiguousarray(h0)
        b_ih = None if b_ih is None else b_ih.data
        b_hh = None if b_hh is None else b_hh.data
        if kind == "lstm":
            tensors = {"x": x, "w_ih": w_ih.data, "w_hh": w_hh_data, "b_ih": b_ih, "b_hh": b_hh,
                       "h0": h0, "c0": None if c0 is None else np.ascontiguousarray(c0),
                       "w_peep": None if w_peep is None else w_peep.data,
                       "w_hr": None if w_hr is None else w_hr.data, "lengths": lengths,
                       "cell_clip": self.cell_clip or 0.0, "y": y, "h_n": h_n, "c_n": c_n,
                       "cache": cache}
        else:
            tensors = {"x": x, "w_ih": w_ih.data, "w_hh": w_hh_data, "b_ih": b_ih, "b_hh": b_hh,
                       "h0": h0, "lengths": lengths, "y": y, "h_n": h_n, "cache": cache}
        F._forward_call(kind, formula, dims, sizes, reverse, tensors, ws, packed, precision)

    # -- backward -----------------------------------------------------------------------------
    def backward(self, d_output, d_state=None, *, input_grad=True):
        """Gradients of the last training forward: returns d_input (None with
        ``input_grad=False``: the first layer then skips its input-gradient product, as torch
        does for an input without requires_grad); the initial state's gradient is left in
        ``layer.d_state``."""
        if input_grad is not True and input_grad is not False:
            input_grad = F._check_flag(f"{type(self).__name__}.backward", "input_grad",
                                       input_grad)
        ctx = self._tls.ctx
        if ctx is None:
            raise RuntimeError(f"{type(self).__name__}.backward: no training forward to "
                               f"differentiate (call forward in train mode first)")
        T, N, lengths, precision = ctx["T"], ctx["N"], ctx["lengths"], ctx["precision"]
        if ctx["options"] != self._options_key():
            # (the forward's caches and masks were made for its options: the kernel route,
            # batch_first's layout and the cell's formula must be the same)
            raise RuntimeError(f"{type(self).__name__}.backward: the layer's options were "
                               f"changed after its training forward; run the forward again "
                               f"with the new options before backward")
        L, D, R, H = self.num_layers, self.num_directions, self.state_size, self.hidden_size
        want = (N, T, D * R) if self.batch_first else (T, N, D * R)
        if d_output is not None and (type(d_output) is not np.ndarray
                                     or d_output.dtype != self.dtype or d_output.shape != want):
            self._check_state(f"{type(self).__name__}.backward", "d_output", d_output, want)
        if d_state is None:
            dh_n = dc_n = None
        else:
            dh_n, dc_n = self._split_state(f"{type(self).__name__}.backward", d_state, N,
                                           "d_state")
        has_state = ctx["has_state"]
        checking = getattr(_check, "on", False)
        name = type(self).__name__
        if checking and d_output is not None:
            _first_nonfinite(f"{name}.backward: d_output", d_output, 1 if self.batch_first else 0,
                             lengths=lengths)
        dh0 = np.empty((L * D, N, R), self.dtype) if has_state else None
        dc0 = np.empty((L * D, N, H), self.dtype) if has_state and self._mode == "LSTM" else None

        # Gradient w.r.t. the current layer's output, [T, N, D*R] time-major.
        if d_output is None:
            d_out = self._buffer(("d_out",), (T, N, D * R), zero=True)
        elif self.batch_first:
            d_out = self._buffer(("d_out",), (T, N, D * R))
            np.copyto(d_out, d_output.transpose(1, 0, 2))
        else:
            d_out = d_output
        # Parameter.grad is shared by the threads: one backward at a time accumulates into it.
        with self._grad_lock._lock:
            for layer in reversed(range(L)):
                inp = ctx["inputs"][layer]
                C = inp.shape[2]
                dx = self._buffer(("dx", layer % 2), (T, N, C)) if layer else \
                    np.empty((T, N, C), self.dtype) if input_grad else None
                for direction in range(D):
                    idx = layer * D + direction
                    sfx = _suffix(layer, direction)
                    if D == 1:
                        dy = d_out if d_out.flags.c_contiguous else np.ascontiguousarray(d_out)
                    else:
                        dy = self._buffer(("dy",), (T, N, R))
                        np.copyto(dy, d_out[:, :, direction * R:(direction + 1) * R])
                    dxd = dx if direction == 0 or dx is None else \
                        self._buffer(("dx_rev", layer > 0), (T, N, C))
                    self._kernel_backward(
                        (T, N, C, H, self.proj_size), sfx, inp, lengths, direction == 1,
                        ("cache", layer, direction), dy,
                        None if dh_n is None else np.ascontiguousarray(dh_n[idx]),
                        None if dc_n is None else np.ascontiguousarray(dc_n[idx]), dxd,
                        None if dh0 is None else dh0[idx], None if dc0 is None else dc0[idx],
                        precision=precision)
                    if checking and dxd is not None:
                        _first_nonfinite(f"{name}.backward: layer {layer}"
                                         + (" (reverse direction)" if direction else "")
                                         + " input gradient", dxd, 0, reverse=direction == 0)
                    if checking:   # the parameters' gradients this call added into
                        for pname, p in zip(_PARAMS, self._params(sfx)):
                            if p is not None and not np.isfinite(p.grad).all():
                                raise FloatingPointError(
                                    f"{name}.backward: layer {layer}"
                                    + (" (reverse direction)" if direction else "")
                                    + f": non-finite value in the gradient of {pname + sfx}")
                    if direction == 1 and dx is not None:
                        dx += dxd
                if layer:
                    mask = ctx["masks"][layer - 1]
                    if mask is not None:
                        dx *= mask
                d_out = dx
        if checking:
            for s_name, s_arr in (("d_state h0", dh0), ("d_state c0", dc0)):
                if s_arr is not None:
                    for i in range(L * D):
                        _first_nonfinite(f"{name}.backward: {s_name}[{i}]", s_arr[i], None)
        self._tls.d_state = None if not has_state else \
            ((dh0, dc0) if self._mode == "LSTM" else dh0)
        if self.batch_first and d_out is not None:
            return np.ascontiguousarray(d_out.transpose(1, 0, 2))
        return d_out

    def _kernel_backward(self, dims, sfx, x, lengths, reverse, cache_key, dy, dh_n, dc_n, dx,
                         dh0, dc0, w_hh_data=None, dw_hh=None, precision=None):
        """One layer and direction's backward kernel call; w_hh_data as in _kernel_forward,
        dw_hh: the array its gradient accumulates into instead of the parameter's grad;
        precision: the name of the forward's precision (its training context's), which may
        differ from ``compute`` by now (default: ``compute``)."""
        w_ih, w_hh, b_ih, b_hh, w_hr, w_peep = self._params(sfx)
        w_hh_data = w_hh.data if w_hh_data is None else w_hh_data
        dw_hh = w_hh.grad if dw_hh is None else dw_hh
        precision = self._precision if precision is None else precision
        route = _ROUTES.get((self._mode, self.variant, self.nonlinearity, precision, dims))
        if route is None:
            route = self._route(dims, precision)
        kind, formula, precision, dims, sizes = route
        cache = self._tls.buffers[cache_key]
        db_ih = None if b_ih is None else b_ih.grad
        db_hh = None if b_hh is None else b_hh.grad
        if kind == "lstm":
            tensors = {"x": x, "w_ih": w_ih.data, "w_hh": w_hh_data,
                       "w_peep": None if w_peep is None else w_peep.data,
                       "w_hr": None if w_hr is None else w_hr.data, "lengths": lengths,
                       "cell_clip": self.cell_clip or 0.0, "cache": cache, "dy": dy,
                       "dh_n": dh_n, "dc_n": dc_n, "dx": dx, "dh0": dh0, "dc0": dc0,
                       "dw_ih": w_ih.grad, "dw_hh": dw_hh, "db_ih": db_ih, "db_hh": db_hh,
                       "dw_peep": None if w_peep is None else w_peep.grad,
                       "dw_hr": None if w_hr is None else w_hr.grad}
        else:
            tensors = {"x": x, "w_ih": w_ih.data, "w_hh": w_hh_data, "lengths": lengths,
                       "cache": cache, "dy": dy, "dh_n": dh_n, "dx": dx, "dh0": dh0,
                       "dw_ih": w_ih.grad, "dw_hh": dw_hh, "db_ih": db_ih, "db_hh": db_hh}
        F._backward_call(kind, formula, dims, sizes, reverse, tensors, precision)

    # -- frozen inference ---------------------------------------------------------------------
    def frozen(self, precision: Optional[str] = None) -> "_RNNBase":
        """An inference-only copy of this layer whose weights are packed once, not per call.

        ``precision="bfloat16"`` (float32 layers): the copy runs the bf16 kernels -- weights
        rounded to bf16 once and packed in the tile layout, inputs and the recurrent state
        rounded to bf16 as product operands, fp32 accumulation, gates and outputs (see
        :func:`fusedrnn.lstm_forward`); results then follow ``reference.*_forward_bf16``, not
        this layer's float32 forward. ``"float32"``: bit for bit this layer's forward. None
        (default): this layer's own precision -- "float32", or that of the frozen copy it is
        (so ``layer.frozen(precision="bfloat16").frozen()`` stays bf16).

        ``precision="int8"`` (float32 layers): the copy runs the int8 kernels -- w_ih and w_hh
        quantised to s8 with one scale per output row once (on the copy's first call in each
        thread, kept packed in its workspace like the bf16 weights), each row of the input and
        of the recurrent state quantised dynamically per row, s32 sums, fp32 gates and outputs
        (the contract: :func:`fusedrnn.reference.lstm_forward_int8`). Non-finite weights raise
        ValueError here, naming the parameter; the copy refuses train mode (ValueError).

        Every forward lays the weights out in the kernels' panel format first; at batch 1 that
        is a tenth of the call (LSTM H=256: ~0.2 of 1.5 ms). The copy owns read-only copies of
        the weights, packs them on its first call in each thread and reuses them afterwards, as
        torch.jit.freeze or an ONNX Runtime session do: later changes to this layer do not reach
        the copy (freeze again). It runs in eval mode only (forward in train mode raises) and
        has no backward. Results equal this layer's eval-mode forward bit for bit.
        """
        if precision is None:
            precision = self._precision
        if precision not in ("float32", "bfloat16", "int8"):
            raise ValueError(f"frozen: precision must be 'float32', 'bfloat16' or 'int8', got "
                             f"{precision!r}")
        if precision != "float32" and self.dtype != np.float32:
            raise ValueError(f"frozen: precision={precision!r} needs a float32 layer, this one "
                             f"is {np.dtype(self.dtype).name}")
        if precision != "float32" and getattr(self, "_reg", None) and not self._plain(False):
            raise ValueError(f"frozen: precision={precision!r} is not available with "
                             f"{', '.join(_kernel_options(self._reg, self.dropout_masks, False))}"
                             f": this layer's regularised kernel runs in float32 only")
        if precision == "int8":
            self._check_int8_sizes(f"{type(self).__name__}.frozen(precision='int8')")
            for name, p in self.named_parameters():
                if not np.isfinite(p.data).all():
                    raise ValueError(f"frozen: precision='int8' quantises the weights, and "
                                     f"{name} has a non-finite value")
        import copy
        # Deep-copy everything but the per-thread buffers and training context (they copy as a
        # fresh, empty store).
        twin = copy.deepcopy(self)
        twin.eval()
        twin.d_state = None
        twin._packed = _PackedSpaces()
        twin._precision = precision
        twin._freeze_weights()
        return twin

    def _check_int8_sizes(self, fn):
        """ValueError before any work when an int8 product of this layer would sum more terms
        than its s32 accumulator holds exactly (lowp.INT8_MAX_K): the input product sums over
        the layer's input width (input_size, then num_directions * state width), the recurrent
        one (and the reset-before GRU's r∘h one) over the state width (proj_size, else
        hidden_size); the LSTM projection stays fp32."""
        from .lowp import check_int8_depth
        R = self.state_size
        check_int8_depth(fn, "input_size", self.input_size)
        if self.num_layers > 1:
            check_int8_depth(fn, "the input width of layers after the first (num_directions * "
                             + ("proj_size)" if self.proj_size else "hidden_size)"),
                             self.num_directions * R)
        check_int8_depth(fn, "proj_size" if self.proj_size else "hidden_size", R)

    def _freeze_weights(self):
        for p in self.parameters():
            p.data.flags.writeable = False

    def __setstate__(self, state):
        # Unpickling (or copying) a frozen layer: its weights come back writeable; make them
        # read-only again, so that the packed copies cannot go stale.
        self.__dict__.update(state)
        if self.__dict__.get("_packed") is not None:
            self._freeze_weights()

    @property
    def compute(self) -> str:
        """The kernels' compute precision for this layer's forward and backward: "float32"
        (default) or "bfloat16" (float32 layers; mixed-precision training, issue 17): the large
        products round their operands to bf16 and accumulate in fp32 (the contract:
        :func:`fusedrnn.reference.lstm_train_bf16`); parameters, their gradients, gates and
        states stay float32. Set it with ``layer.compute = "bfloat16"`` or the constructor's
        ``compute="bfloat16"`` (the same checks and messages; the same layer, bit for bit);
        not part of the layer's config: a checkpoint stays float32 and loads as a float32
        layer (``fusedrnn train --precision bf16`` records the precision in the run's
        metadata and sets it again on ``--resume``)."""
        return self._precision

    @compute.setter
    def compute(self, precision: str) -> None:
        fn = f"{type(self).__name__}.compute"
        if precision == "int8":
            raise ValueError(f"{fn}: precision 'int8' is inference only; use "
                             f"frozen(precision='int8')")
        if isinstance(precision, str) and precision in F.PRECISIONS \
                and precision != "float32" and self.dtype != np.float32:
            # (the functional check would name an input x this setter does not have)
            raise ValueError(f"{fn}: precision={precision!r} needs a float32 layer, this one is "
                             f"{np.dtype(self.dtype).name} (dtype={np.dtype(self.dtype).name!r})")
        F._precision(fn, precision, self.dtype)  # ValueError naming the argument
        if precision != "float32" and getattr(self, "_reg", None) and not self._plain(True):
            raise ValueError(f"{fn}: {precision!r} is not available with "
                             f"{', '.join(_kernel_options(self._reg, self.dropout_masks))}: this "
                             f"layer's regularised kernel runs in float32 only")
        self._precision = precision

    @property
    def precision(self) -> str:
        """The kernels' arithmetic for this layer: "float32" (the layer's own dtype, float32 or
        float64), "bfloat16", set by ``compute = "bfloat16"`` (training and inference) or by
        frozen(precision="bfloat16") on its copy, or "int8" (frozen(precision="int8"))."""
        return self._precision

    @property
    def is_frozen(self) -> bool:
        """True for a copy made by frozen()."""
        return self._packed is not None

    # -- misc ---------------------------------------------------------------------------------
    def release_buffers(self) -> None:
        """Frees this thread's buffers kept between calls (they come back on the next
        forward)."""
        self._buffers.clear()
        self._ctx = None
        if self._packed is not None:
            self._packed = _PackedSpaces()


def _bernoulli(rng, shape, p, dt, out=None):
    """An array (fresh, or out) of 1 with probability p, else 0 (uniform draws in the layer's
    dtype compared with p in place: one array, no float64 temporary)."""
    m = np.empty(shape, dt) if out is None else out
    rng.random(shape, dtype=dt, out=m)
    np.less(m, dt.type(p), out=m)
    return m


def _keep_mask(rng, shape, p, dt, out=None):
    """Inverted dropout: 1/(1 − p) with probability 1 − p, else 0 (into out if given)."""
    m = _bernoulli(rng, shape, p, dt, out)  # 1 = dropped
    np.subtract(dt.type(1), m, out=m)
    m *= dt.type(1.0 / (1.0 - p))
    return m


def _regularisers(fn, layer_norm, ln_eps, zoneout_h, zoneout_c, recurrent_dropout,
                  input_dropout, weight_drop, supported=True):
    """Checks the options of the regularised / normalised LSTM and GRU (issue 19); returns the
    names of those that are set. A layer whose kernels do not have them (supported=False) raises
    a ValueError naming any that is set; the GRU (fn "GRU") has neither layer_norm='tfa' (the
    LSTM's normalised-cell carry) nor zoneout_c (no cell state)."""
    if fn == "GRU" and layer_norm == "tfa":
        raise ValueError("GRU: layer_norm must be None or 'haste' (haste's LayerNormGRU; 'tfa' "
                         "is the LSTM's placement, which normalises and carries the cell state)")
    if fn == "GRU" and zoneout_c:
        raise ValueError(f"GRU: zoneout_c must be 0 (the GRU has no cell state), got "
                         f"{zoneout_c!r}")
    if layer_norm not in (None, "haste", "tfa"):
        raise ValueError(f"{fn}: layer_norm must be None, 'haste' or 'tfa', got {layer_norm!r}")
    if isinstance(ln_eps, (bool, np.bool_)) or not isinstance(ln_eps, numbers.Real) \
            or not 0 < ln_eps < math.inf:
        raise ValueError(f"{fn}: ln_eps must be a finite number > 0, got {ln_eps!r}")
    probs = dict(zoneout_h=zoneout_h, zoneout_c=zoneout_c, recurrent_dropout=recurrent_dropout,
                 input_dropout=input_dropout, weight_drop=weight_drop)
    for name, p in probs.items():
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
            raise ValueError(f"{fn}: {name} must be a number in [0, 1), got {p!r}")
    on = [k for k, p in probs.items() if p]
    if ln_eps != 1e-5 and not layer_norm:
        raise ValueError(f"{fn}: ln_eps = {ln_eps!r} given without layer_norm")
    if layer_norm:
        on = ["layer_norm", "ln_eps"] + on
    if on and not supported:
        raise ValueError(f"{fn}: {', '.join(k for k in on if k != 'ln_eps')} not supported "
                         f"for this cell (the regularised kernels are the LSTM's and the GRU's)")
    return on


DROPOUT_MASKS = ("shared", "per_gate")


def _kernel_options(reg, dropout_masks, training=True):
    """The options among `reg` (the issue-19 option names set on a layer: _regularisers' list,
    or a fusedrnn.torch module's _reg) that need the float32 regularised kernel: layer norm and
    zoneout always, recurrent_dropout and per-gate masks in training. weight_drop and the shared
    input_dropout run on the plain kernels at any precision (so they combine with proj_size,
    peepholes, cell_clip and the reset-before GRU); in eval mode every dropout is off."""
    kern = [k for k in reg if k not in ("ln_eps", "weight_drop", "input_dropout", "dropout_masks")
            and (training or k != "recurrent_dropout")]
    if training and dropout_masks == "per_gate":
        kern.append("dropout_masks='per_gate'")
    return kern


def _inference_options(layer):
    """Issue 19's options set on ``layer`` (a fusedrnn or fusedrnn.torch LSTM / GRU) that change
    its inference: layer norm and zoneout (its expectation); the dropouts are off there. What
    the inference-only surfaces (bf16 / int8 copies, ONNX and Keras files) cannot carry."""
    reg = getattr(layer, "_reg", None)
    return _kernel_options(reg, layer.dropout_masks, training=False) if reg else []


def _dropout_masks(fn, dropout_masks, recurrent_dropout, input_dropout):
    """Checks the dropout_masks option: 'shared' (one mask per sequence on x and one on h,
    shared by the gate blocks) or 'per_gate' (Keras 3's recurrent_dropout: a mask per gate
    block on each), which needs recurrent_dropout or input_dropout."""
    if dropout_masks not in DROPOUT_MASKS:
        raise ValueError(f"{fn}: dropout_masks must be 'shared' or 'per_gate', got "
                         f"{dropout_masks!r}")
    if dropout_masks == "per_gate" and not (recurrent_dropout or input_dropout):
        raise ValueError(f"{fn}: dropout_masks='per_gate' needs recurrent_dropout or "
                         f"input_dropout > 0")
    return dropout_masks


def _refuse_regularisers(fn, layer_norm, ln_eps, zoneout_h, zoneout_c, recurrent_dropout,
                         input_dropout, weight_drop, dropout_masks):
    """The Elman RNN (fusedrnn.RNN, fusedrnn.torch.RNN) has none of issue 19's options: a
    ValueError naming any that is set (an invalid dropout_masks value is named as such)."""
    _regularisers(fn, layer_norm, ln_eps, zoneout_h, zoneout_c, recurrent_dropout,
                  input_dropout, weight_drop, supported=False)
    if dropout_masks != "shared":
        if dropout_masks not in DROPOUT_MASKS:
            _dropout_masks(fn, dropout_masks, recurrent_dropout, input_dropout)
        raise ValueError(f"{fn}: dropout_masks not supported for this cell (the regularised "
                         f"kernels are the LSTM's and the GRU's)")


class _Regularised:
    """The regularised / normalised kernels (fusedrnn.regularised, issue 19) of the LSTM and the
    GRU layers: their parameters, mask draws and kernel calls, used when any option is set.
    dropout_masks 'per_gate' draws the recurrent and input dropout masks per gate block,
    [G, N, H] and [G, N, C] (Keras 3's recurrent_dropout), which the kernels apply per block."""

    def _init_regularisers(self, reg, layer_norm, ln_eps, zoneout_h, zoneout_c,
                           recurrent_dropout, input_dropout, weight_drop):
        if self.dtype == np.float32:
            # the kernels take these as float32: 0.99999999 rounds to 1 and 1e-50 to 0 there,
            # which every forward (and the C++ loader) would refuse
            for name, p in (("zoneout_h", zoneout_h), ("zoneout_c", zoneout_c)):
                if not np.float32(p) < 1:
                    raise ValueError(f"{self._mode}: {name} = {p!r} rounds to 1 in float32; it "
                                     f"must be < 1")
            fi = np.finfo(np.float32)
            if layer_norm and not fi.tiny <= np.float32(ln_eps) <= fi.max:
                raise ValueError(f"{self._mode}: ln_eps = {ln_eps!r} is not a normal float32 "
                                 f"number (> 0 and finite after rounding)")
        self._reg = reg
        self.layer_norm, self.ln_eps = layer_norm, float(ln_eps)
        self.zoneout_h, self.zoneout_c = float(zoneout_h), float(zoneout_c)
        self.recurrent_dropout, self.input_dropout = float(recurrent_dropout), \
            float(input_dropout)
        self.weight_drop = float(weight_drop)
        if layer_norm:
            lstm = self._mode == "LSTM"
            H, dt, G = self.hidden_size, self.dtype, 4 if lstm else 3
            for _, _, sfx in self._suffixes():
                setattr(self, "ln_gamma_ih" + sfx, Parameter(np.ones(G * H, dt)))
                setattr(self, "ln_gamma_hh" + sfx, Parameter(np.ones(G * H, dt)))
                if layer_norm == "tfa":
                    setattr(self, "ln_beta_ih" + sfx, Parameter(np.zeros(G * H, dt)))
                    setattr(self, "ln_beta_hh" + sfx, Parameter(np.zeros(G * H, dt)))
                if lstm:
                    setattr(self, "ln_gamma_c" + sfx, Parameter(np.ones(H, dt)))
                    setattr(self, "ln_beta_c" + sfx, Parameter(np.zeros(H, dt)))

    def _ln_params(self, sfx):
        get = lambda name: self._parameters.get(name + sfx)  # noqa: E731
        names = ("ln_gamma_ih", "ln_beta_ih", "ln_gamma_hh", "ln_beta_hh")
        if self._mode == "LSTM":
            names += ("ln_gamma_c", "ln_beta_c")
        return {k: get(k) for k in names}

    def _plain(self, training):
        """True when this call needs none of the regularised kernel's work (_kernel_options), so
        the plain kernels run it at any compute precision: weight_drop's masked copy of w_hh and
        x times the shared input_dropout mask go in, the mask products applied around the call
        as the regularised route does."""
        return not _kernel_options(self._reg, self.dropout_masks, training)

    def _kernel_forward(self, dims, sfx, x, h0, c0, lengths, reverse, training, y, h_n, c_n,
                        cache_key):
        if not self._reg or self._plain(training):
            w = None
            if self._reg and training:
                N, C = dims[1], dims[2]
                st = {}
                # drawn in the regularised route's order (x, then w) into this thread's
                # buffers (a training forward's masks live until its backward, like its cache)
                if self.input_dropout:
                    st["xmask"] = _keep_mask(self._drop_rng, (N, C), self.input_dropout,
                                             self.dtype, self._buffer(("xmask",) + cache_key,
                                                                      (N, C)))
                    x = st["x"] = np.multiply(x, st["xmask"], out=self._buffer(
                        ("xmasked",) + cache_key, x.shape))
                if self.weight_drop:
                    w_hh = self._params(sfx)[1].data
                    st["wmask"] = _keep_mask(self._drop_rng, w_hh.shape, self.weight_drop,
                                             self.dtype, self._buffer(("wmask",) + cache_key,
                                                                      w_hh.shape))
                    w = st["w_hh"] = np.multiply(w_hh, st["wmask"], out=self._buffer(
                        ("wmasked",) + cache_key, w_hh.shape))
                self._buffers[("reg",) + cache_key] = st
            return super()._kernel_forward(dims, sfx, x, h0, c0, lengths, reverse, training, y,
                                           h_n, c_n, cache_key, w_hh_data=w)
        lstm = self._mode == "LSTM"
        cell, G = ("lstm_ln", 4) if lstm else ("gru_ln", 3)
        if self._precision != "float32":
            raise ValueError(f"{type(self).__name__}.frozen(precision={self._precision!r}) "
                             f"does not support layer_norm or zoneout")
        T, N, C, H = dims[:4]
        P = dims[4] if len(dims) > 4 else 0   # the LSTM's projection: h is P wide
        R = P or H
        dt, rng = self.dtype, self._drop_rng
        w_ih, w_hh, b_ih, b_hh, w_hr, _ = self._params(sfx)
        data = lambda p: None if p is None else p.data  # noqa: E731
        st = {"dims": (T, N, C, H, P) if P else (T, N, C, H)}
        kw = {"w_hr": w_hr.data} if P else {}
        if training:
            if self.zoneout_h or self.zoneout_c:
                # the kernel draws the masks from this seed (reference_reg.zoneout_masks)
                kw.update(zoneout_draw=True, zoneout_seed=int(rng.integers(0, 2**63)),
                          zoneout_h=self.zoneout_h)
                if lstm:
                    kw.update(zoneout_c=self.zoneout_c)
            per_gate = self.dropout_masks == "per_gate"
            if per_gate:
                kw["gate_masks"] = True
            if self.recurrent_dropout:
                kw["recurrent_mask"] = _keep_mask(rng, (G, N, R) if per_gate else (N, R),
                                                  self.recurrent_dropout, dt)
            if self.input_dropout and per_gate:
                kw["input_mask"] = _keep_mask(rng, (G, N, C), self.input_dropout, dt)
            elif self.input_dropout:
                st["xmask"] = _keep_mask(rng, (N, C), self.input_dropout, dt)
                x = x * st["xmask"]
            if self.weight_drop:
                st["wmask"] = _keep_mask(rng, (G * H, R), self.weight_drop, dt)
        else:
            kw.update(zoneout_h=self.zoneout_h)
            if lstm:
                kw.update(zoneout_c=self.zoneout_c)
        w = w_hh.data * st["wmask"] if "wmask" in st else w_hh.data
        ln = {k: data(v) for k, v in self._ln_params(sfx).items()}
        sizes = getattr(_core, cell + "_sizes")(st["dims"])
        cache = self._buffer(cache_key, (sizes[0],)) if training else None
        state = dict(h0=None if h0 is None else np.ascontiguousarray(h0), h_n=h_n)
        if lstm:
            state.update(c0=None if c0 is None else np.ascontiguousarray(c0), c_n=c_n)
        getattr(_core, cell + "_forward")(
            st["dims"], x=x, w_ih=w_ih.data, w_hh=w, b_ih=data(b_ih), b_hh=data(b_hh), **state,
            layer_norm=self.layer_norm or "none", ln_eps=self.ln_eps, **ln, **kw,
            lengths=lengths, y=y, cache=cache,
            workspace=F._workspace(sizes[1], dt), reverse=reverse, num_threads=F._threads())
        if training:
            st.update(kw, x=x, w_hh=w)
            self._buffers[("reg",) + cache_key] = st

    def _kernel_backward(self, dims, sfx, x, lengths, reverse, cache_key, dy, dh_n, dc_n, dx,
                         dh0, dc0, precision=None):
        if not self._reg:
            return super()._kernel_backward(dims, sfx, x, lengths, reverse, cache_key, dy, dh_n,
                                            dc_n, dx, dh0, dc0, precision=precision)
        if self._plain(True):
            st = self._buffers[("reg",) + cache_key]
            w_hh = self._params(sfx)[1]
            dw_hh = self._buffer(("dwmasked",) + cache_key, w_hh.grad.shape, zero=True) \
                if "wmask" in st else None
            super()._kernel_backward(dims, sfx, st.get("x", x), lengths, reverse, cache_key, dy,
                                     dh_n, dc_n, dx, dh0, dc0, w_hh_data=st.get("w_hh"),
                                     dw_hh=dw_hh, precision=precision)
            if "wmask" in st:
                w_hh.grad += np.multiply(dw_hh, st["wmask"], out=dw_hh)
            if "xmask" in st and dx is not None:
                dx *= st["xmask"]
            return
        lstm = self._mode == "LSTM"
        cell = "lstm_ln" if lstm else "gru_ln"
        st = self._buffers[("reg",) + cache_key]
        w_ih, w_hh, b_ih, b_hh, w_hr, _ = self._params(sfx)
        grad = lambda p: None if p is None else p.grad  # noqa: E731
        lnp = self._ln_params(sfx)
        dw_hh = np.zeros_like(w_hh.grad) if "wmask" in st else w_hh.grad
        masks = {k: st[k] for k in ("zoneout_draw", "zoneout_seed", "zoneout_h", "zoneout_c",
                                    "recurrent_mask", "gate_masks", "input_mask") if k in st}
        if "w_hr" in st:   # the projection
            masks.update(w_hr=st["w_hr"], dw_hr=w_hr.grad)
        gains = {k: None if lnp[k] is None else lnp[k].data
                 for k in ("ln_gamma_ih", "ln_gamma_hh", "ln_gamma_c") if k in lnp}
        state = dict(dh_n=dh_n, dh0=dh0)
        if lstm:
            state.update(dc_n=dc_n, dc0=dc0)
        getattr(_core, cell + "_backward")(
            st["dims"], x=st["x"], w_ih=w_ih.data, w_hh=st["w_hh"],
            layer_norm=self.layer_norm or "none", **gains,
            **masks, lengths=lengths, cache=self._buffers[cache_key], dy=dy, **state,
            dx=dx, dw_ih=w_ih.grad, dw_hh=dw_hh,
            db_ih=grad(b_ih), db_hh=grad(b_hh),
            **{"d" + k: grad(v) for k, v in lnp.items()},
            workspace=F._workspace(getattr(_core, cell + "_sizes")(st["dims"])[2], self.dtype),
            reverse=reverse, num_threads=F._threads())
        if "wmask" in st:
            w_hh.grad += dw_hh * st["wmask"]
        if "xmask" in st and dx is not None:
            dx *= st["xmask"]


@register_module
class LSTM(_Regularised, _RNNBase):
    """Multi-layer LSTM (torch.nn.LSTM's arguments) with optional peepholes and forget_bias.

    Gates i, f, g, o (torch's order and names: weight_ih_l{k}[_reverse] [4H, C],
    weight_hh_l{k} [4H, R], bias_ih_l{k}, bias_hh_l{k} [4H], weight_hr_l{k} [P, H] with
    proj_size P, weight_peep_l{k} [3, H] with peepholes (rows p_i, p_f, p_o; o sees the new c)).
    init: 'pytorch' (U(±1/√H) everywhere) or 'keras' (glorot-uniform input and projection
    weights, orthogonal recurrent weights, zero biases with the forget block at 1).
    forget_bias is added to the forget block of bias_ih after initialisation.
    cell_clip (TF1's LSTMCell(cell_clip)): None, or a number > 0: every layer's cell state is
    clipped to [-cell_clip, cell_clip] after each update (see fusedrnn.lstm_forward). Recorded
    in the config only when set (the C++ Model does not read it).
    Issue 19's options (fusedrnn.regularised.lstm_ln_forward has the formula): layer_norm None,
    'haste' or 'tfa', ln_eps, zoneout_h, zoneout_c, recurrent_dropout, input_dropout,
    weight_drop, and dropout_masks: 'shared' (default: one mask per sequence on h_{t-1} and one
    on x_t, shared by the four gate blocks, scaled 1/(1 - p)) or 'per_gate' (Keras 3's
    recurrent_dropout semantics: its LSTMCell, implementation 1, draws a separate mask per gate
    block i, f, g, o on h_{t-1} and on x_t; needs recurrent_dropout or input_dropout).
    """
    _mode = "LSTM"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *, peepholes=False,
                 forget_bias=0.0, init="pytorch", dtype="float32", seed=None, cell_clip=None,
                 layer_norm=None, ln_eps=1e-5, zoneout_h=0.0, zoneout_c=0.0,
                 recurrent_dropout=0.0, input_dropout=0.0, weight_drop=0.0,
                 dropout_masks="shared", compute="float32"):
        reg = _regularisers("LSTM", layer_norm, ln_eps, zoneout_h, zoneout_c, recurrent_dropout,
                            input_dropout, weight_drop)
        dmasks = _dropout_masks("LSTM", dropout_masks, recurrent_dropout,
                                            input_dropout)
        if kern := _kernel_options(reg, dropout_masks):
            # (proj_size composes with them: the regularised kernel projects, zoneout and the
            # recurrent masks acting on the projected h)
            for name, off in (("peepholes", not peepholes), ("cell_clip", cell_clip is None)):
                if not off:
                    raise ValueError(f"LSTM: {name} cannot be combined with layer_norm, zoneout, "
                                     f"recurrent_dropout or per-gate masks (not supported by "
                                     f"the regularised kernel); got {', '.join(kern)}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size=proj_size, peepholes=peepholes,
                         forget_bias=forget_bias, init=init, dtype=dtype, seed=seed)
        self._init_regularisers(reg, layer_norm, ln_eps, zoneout_h, zoneout_c, recurrent_dropout,
                                input_dropout, weight_drop)
        self.dropout_masks = dmasks
        if cell_clip is not None and not (F._check_clip("LSTM", cell_clip) > 0
                                          and math.isfinite(cell_clip)):
            raise ValueError(f"LSTM: cell_clip must be None or a finite number > 0, "
                             f"got {cell_clip!r}")
        F._check_clip("LSTM", cell_clip, self.dtype)   # a normal number of the layer's dtype
        self.cell_clip = None if cell_clip is None else float(cell_clip)
        self._record(input_size=self.input_size, hidden_size=self.hidden_size,
                     num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                     dropout=self.dropout, bidirectional=self.bidirectional,
                     proj_size=self.proj_size, peepholes=self.peepholes,
                     forget_bias=self.forget_bias, init=init, dtype=self.dtype, seed=seed,
                     **({} if cell_clip is None else {"cell_clip": self.cell_clip}),
                     **{k: getattr(self, k) for k in reg},
                     **({"dropout_masks": "per_gate"} if dropout_masks == "per_gate" else {}))
        self.compute = compute   # (the property's checks and messages; not in the config)


@register_module
class GRU(_Regularised, _RNNBase):
    """Multi-layer GRU (torch.nn.GRU's arguments); gates r, z, n.

    variant 'reset_after' (torch, Keras reset_after=True, cuDNN): n = tanh(W_in x + b_in +
    r∘(W_hn h + b_hn)); 'reset_before' (Keras reset_after=False, ONNX default):
    n = tanh(W_in x + b_in + W_hn (r∘h) + b_hn). init 'pytorch' or 'keras'.
    Issue 19's options (reset_after only; fusedrnn.regularised.gru_ln_forward has the formula):
    layer_norm None or 'haste' (haste's LayerNormGRU: parameters ln_gamma_ih_l{k},
    ln_gamma_hh_l{k} [3H], ones), ln_eps, zoneout_h, recurrent_dropout, input_dropout,
    weight_drop, dropout_masks ('per_gate': Keras 3's GRUCell masks, one per gate block r, z, n
    on h_{t-1} and on x_t; the n block's h∘r_n goes through W_hn before the reset gate), as the
    LSTM's; zoneout_c must be 0.
    """
    _mode = "GRU"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, variant="reset_after", init="pytorch",
                 dtype="float32", seed=None, layer_norm=None, ln_eps=1e-5, zoneout_h=0.0,
                 zoneout_c=0.0, recurrent_dropout=0.0, input_dropout=0.0, weight_drop=0.0,
                 dropout_masks="shared", compute="float32"):
        reg = _regularisers("GRU", layer_norm, ln_eps, zoneout_h, zoneout_c, recurrent_dropout,
                            input_dropout, weight_drop)
        dmasks = _dropout_masks("GRU", dropout_masks, recurrent_dropout,
                                            input_dropout)
        if (kern := _kernel_options(reg, dropout_masks)) and variant != "reset_after":
            raise ValueError(f"GRU: variant must be 'reset_after' with layer_norm, zoneout, "
                             f"recurrent_dropout or per-gate masks (the regularised kernel's "
                             f"formula); got variant={variant!r} with {', '.join(kern)}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, variant=variant, init=init, dtype=dtype, seed=seed)
        self._init_regularisers(reg, layer_norm, ln_eps, zoneout_h, zoneout_c, recurrent_dropout,
                                input_dropout, weight_drop)
        self.dropout_masks = dmasks
        self._record(input_size=self.input_size, hidden_size=self.hidden_size,
                     num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                     dropout=self.dropout, bidirectional=self.bidirectional,
                     variant=self.variant, init=init, dtype=self.dtype, seed=seed,
                     **{k: getattr(self, k) for k in reg},
                     **({"dropout_masks": "per_gate"} if dropout_masks == "per_gate" else {}))
        self.compute = compute   # (the property's checks and messages; not in the config)


@register_module
class RNN(_RNNBase):
    """Multi-layer Elman RNN (torch.nn.RNN's arguments): h' = tanh or relu(W_ih x + b_ih +
    W_hh h + b_hh). init 'pytorch', 'keras' or 'irnn' (relu only: identity recurrent weights,
    zero biases, input weights N(0, 1e-3²), Le, Jaitly & Hinton 2015).
    """
    _mode = "RNN"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, init="pytorch",
                 dtype="float32", seed=None, layer_norm=None, ln_eps=1e-5, zoneout_h=0.0,
                 zoneout_c=0.0, recurrent_dropout=0.0, input_dropout=0.0, weight_drop=0.0,
                 dropout_masks="shared", compute="float32"):
        _refuse_regularisers("RNN", layer_norm, ln_eps, zoneout_h, zoneout_c, recurrent_dropout,
                             input_dropout, weight_drop, dropout_masks)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, nonlinearity=nonlinearity, init=init, dtype=dtype,
                         seed=seed)
        self._record(input_size=self.input_size, hidden_size=self.hidden_size,
                     num_layers=self.num_layers, nonlinearity=self.nonlinearity, bias=self.bias,
                     batch_first=self.batch_first, dropout=self.dropout,
                     bidirectional=self.bidirectional, init=init, dtype=self.dtype, seed=seed)
        self.compute = compute   # (the property's checks and messages; not in the config)
