"""TensorFlow 1's ``tf.nn.rnn_cell`` on fusedrnn's fused kernels: :class:`BasicRNNCell`,
:class:`BasicLSTMCell`, :class:`LSTMCell`, :class:`GRUCell`, :class:`MultiRNNCell`,
:class:`DropoutWrapper`, :class:`LSTMStateTuple`.

Parameters are kept in TF1's layout and under TF1's names (``variables()``):

* BasicRNNCell: ``basic_rnn_cell/kernel`` [C + H, H], ``bias`` [H]; output = act([x, h] K + b).
* BasicLSTMCell / LSTMCell: ``basic_lstm_cell/kernel`` (``lstm_cell/kernel``) [C + R, 4H] with
  gate order i, j, f, o, ``bias`` [4H]; ``forget_bias`` is added to f at run time, not stored;
  LSTMCell's peepholes ``w_i_diag``, ``w_f_diag``, ``w_o_diag`` [H] and projection
  ``projection/kernel`` [H, P] (R = P = num_proj, else H). State ``LSTMStateTuple(c, h)``.
* GRUCell: ``gru_cell/gates/kernel`` [C + H, 2H] (r, u), ``gates/bias`` [2H] (initialised to 1),
  ``candidate/kernel`` [C + H, H], ``candidate/bias`` [H]; the reset gate multiplies h before
  the candidate product, new h = u h + (1 - u) c (fusedrnn's GRU ``reset_before``).

They are converted to the kernels' layout (gate order, transposes, forget_bias folded in the
input bias) once, and the converted copy is reused by every step and dynamic_rnn call until a
variable changes through the library (``cell.kernel = ...``, ``p.data = ...``, an optimiser
step, ``load_variables``, ``load_state_dict``) or ``p.changed()`` announces a write into
``p.data[...]`` (as for fusedrnn's cells: such a write is invisible without it); each backward
converts the kernels' gradients back and *adds* them into the TF1 parameters' ``grad``.
Variables are created on the first call, when the input depth is known
(``build(input_depth, dtype)``, ``load_variables`` or ``load_state_dict`` create them earlier);
kernels use TF1's default glorot-uniform initialiser, biases zeros (GRU gates: ones), unless
LSTMCell's ``initializer`` / GRUCell's ``kernel_initializer``, ``bias_initializer`` give a
callable ``(shape, dtype) -> array`` (exactly that shape and dtype; TF's initializer objects and
names are refused). A cell's ``name=`` replaces its scope (``rnn/<name>/kernel``), as in TF1.

Every cell is a :class:`fusedrnn.Module`: ``cell(inputs [N, C], state)`` runs one step and returns
``(output, new_state)``; :func:`fusedrnn.compat.v1.nn.dynamic_rnn` runs a whole batch of
sequences, one fused kernel call per layer. Every argument is checked before anything runs.
Each training call is recorded (with a copy of its inputs): ``cell.backward(d_output,
d_state=None)`` differentiates the most recent call not yet differentiated and consumes it, and
returns the gradient of its inputs; the gradient of the initial state is left in
``cell.d_initial_state`` (None when no initial state was given). So a step loop backpropagates
by calling backward once per step in reverse order (passing the later step's
``d_initial_state`` as ``d_state``); a dynamic_rnn call drops the calls recorded before it,
train()/eval() and ``clear_tape()`` drop them all.

Dropout (DropoutWrapper) applies in train mode only (``cell.eval()`` turns it off; TF1 had no
modes, its programs fed keep_prob = 1 to evaluate). LSTMCell's ``cell_clip`` runs in the fused
kernel. What the fused kernels cannot express runs, for the cells concerned only, on the
step-by-step NumPy path of :mod:`._steps` (same math, forward and backward, slower):
``state_keep_prob < 1`` (the state fed back differs from the output), LSTMCell's ``proj_clip``
(with ``num_proj``) and a ``num_proj >= num_units`` (which TF1 allows and the kernels, like
PyTorch's LSTM, do not), and activations other than tanh (and relu for BasicRNNCell). Activations
are known by name (a string, or a callable's ``__name__``: ``np.tanh``, ``tf.nn.relu``, ...):
tanh, relu, sigmoid, elu, softsign, relu6, identity/linear; any other raises a ValueError (the
backward needs its derivative).
"""
from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from ... import functional as F
from ... import validators as V
from ...module import (Module, Parameter, StateDictKeyError, StateDictShapeError, _as_numpy,
                      _packing_key, _same_packing, _train_mode)
from . import _steps

__all__ = ["RNNCell", "BasicRNNCell", "BasicLSTMCell", "LSTMCell", "GRUCell", "MultiRNNCell",
           "DropoutWrapper", "LSTMStateTuple"]


class LSTMStateTuple(NamedTuple):
    """TF1's LSTM state: (c, h), c first."""
    c: np.ndarray
    h: np.ndarray


def _activation(fn, activation):
    """The activation's name (None is tanh): a name of _steps.ACTIVATIONS, as a string or a
    callable's __name__."""
    if activation is None:
        return "tanh"
    name = activation if isinstance(activation, str) else getattr(activation, "__name__", None)
    if name not in _steps.ACTIVATIONS:
        raise ValueError(f"{fn}: activation must be one of {', '.join(_steps.ACTIVATIONS)} (a "
                         f"name or a function of that name, e.g. 'relu' or np.tanh: its "
                         f"derivative is needed for backward), got {activation!r}")
    return name


def _positive(fn, name, v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v < math.inf:
        raise ValueError(f"{fn}: {name} must be None or a positive number, got {v!r}")
    return float(v)


def _dtype_of(fn, dtype):
    if dtype is None:
        return None
    try:
        dt = np.dtype(getattr(dtype, "as_numpy_dtype", dtype))
    except TypeError:
        raise TypeError(f"{fn}: dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{fn}: dtype must be float32 or float64, got {dt}")
    return dt


def _units(fn, name, v, optional=False):
    if optional and v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{fn}: {name} must be a positive integer, got {v!r}")
    return int(v)


def _glorot(rng, shape, dt):
    a = math.sqrt(6.0 / (shape[0] + shape[1]))
    return rng.uniform(-a, a, shape).astype(dt)


def _blocks(a, H, order, axis):
    """The H-wide blocks of `a` along `axis` in `order`."""
    return np.concatenate([np.take(a, np.arange(b * H, (b + 1) * H), axis=axis) for b in order],
                          axis=axis)


def _add_blocks(dst, src, H, order):
    """``dst += _blocks(src, H, order, -1)`` without making that array: block k of dst's last
    axis gets src's block order[k]. (A backward adds each step's gradients in TF1's order: the
    concatenation of np.take's gathers of a transposed gradient cost 80% of a BPTT loop's time
    at H = 256.)"""
    for k, b in enumerate(order):
        dst[..., k * H:(k + 1) * H] += src[..., b * H:(b + 1) * H]


def _name(fn, name):
    """A cell's ``name=`` (TF1: its variable scope, ``rnn/<name>/kernel``), or None."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"{fn}: name must be None or a string (the cell's variable scope), "
                        f"got {type(name).__name__}")
    if not name or name.startswith("/") or name.endswith("/"):
        raise ValueError(f"{fn}: name must be a non-empty scope name without a leading or "
                         f"trailing '/', got {name!r}")
    return name


def _initializer(fn, arg, init):
    """An initializer argument: None (TF1's default) or a callable (shape, dtype) -> array.
    TF's initializer objects and names ('zeros', tf.zeros_initializer()) are not NumPy: refused
    rather than ignored."""
    if init is None or (callable(init) and not isinstance(init, type)):
        return init
    raise TypeError(f"{fn}: {arg} must be None or a callable (shape, dtype) -> numpy array of "
                    f"that shape and dtype, got {init!r}")


def _leaves(state):
    """The arrays of a (nested) state, in order."""
    if isinstance(state, np.ndarray):
        return [state]
    if isinstance(state, (tuple, list)):
        return [a for part in state for a in _leaves(part)]
    return [state]


class RNNCell(Module):
    """Base of the TF1 cells: zero_state, one step by call, backward of the recorded calls.

    Only this module's cells derive from it: TF1's custom cells (a subclass defining ``call``)
    are refused with a TypeError, since the fused kernels and the step path know these cells'
    math only."""

    def __init__(self):
        super().__init__()
        self._tape = []          # the training calls not yet differentiated, oldest first
        self.d_initial_state = None

    # structure: the basic cells, in stack order, each with its input, output and state dropouts
    def _layers(self):
        # every cell of this module overrides it; a TF1-style subclass (call()) does not
        raise TypeError(f"{type(self).__name__}: custom subclasses of rnn_cell.RNNCell are not "
                        f"supported (fusedrnn.compat.v1 runs its own cells only: BasicRNNCell, "
                        f"BasicLSTMCell, LSTMCell, GRUCell, MultiRNNCell, DropoutWrapper)")

    @property
    def state_size(self):
        raise NotImplementedError

    @property
    def output_size(self):
        return self._layers()[-1][0].output_size

    def _wrappers(self, layers):
        """The DropoutWrappers acting on `layers` (once each)."""
        out = {}
        for _, ins, outs, sts in layers:
            for w in ins + outs + sts:
                out[id(w)] = w
        return list(out.values())

    def zero_state(self, batch_size, dtype):
        """The all-zero state for `batch_size` sequences, structured like this cell's state.
        It also starts a new sequence for DropoutWrapper(variational_recurrent=True): the next
        step draws new masks (the calls recorded for backward are kept)."""
        fn = f"{type(self).__name__}.zero_state"
        layers = self._layers()
        N = _units(fn, "batch_size", batch_size)
        dt = _dtype_of(fn, dtype)
        if dt is None:
            raise TypeError(f"{fn}: dtype must be float32 or float64, got None")
        for w in self._wrappers(layers):
            w._vmasks.clear()
        zero = self._join([c._zero(N, dt) for c, *_ in layers])
        # (a step given exactly this state starts a new sequence: see forward)
        object.__setattr__(self, "_zero_given", _leaves(zero))
        return zero

    def _split(self, state, fn, what):
        """The states of the basic cells (list, stack order) from this cell's state."""
        raise NotImplementedError

    def _join(self, states):
        raise NotImplementedError

    def train(self, mode: bool = True):
        # a change of mode ends the recording (eval calls record nothing, as fusedrnn's cells)
        mode = _train_mode(type(self).__name__, mode)
        for m in self.modules():
            if isinstance(m, RNNCell):
                m._tape.clear()
        return super().train(mode)

    def clear_tape(self) -> None:
        """Drops the training calls recorded and not yet differentiated."""
        self._tape.clear()

    # -- one step ---------------------------------------------------------------------------------
    def forward(self, inputs, state):
        """One step: inputs [N, C], state structured like zero_state -> (output, new_state)."""
        fn = f"{type(self).__name__}.__call__"
        if not isinstance(inputs, np.ndarray) or inputs.ndim != 2:
            raise ValueError(f"{fn}: inputs must be a numpy array [batch, depth], got "
                             f"{getattr(inputs, 'shape', type(inputs).__name__)}")
        # (a copy: the recorded step keeps it, so a loop may refill one input array)
        x = np.array(inputs[None], order="C")
        plan = self._plan(fn, x, state, "state")
        self._build_plan(plan, x.dtype)
        # A step from no state, or from the arrays zero_state() just returned, starts a new
        # sequence: the calls recorded and not differentiated are dropped, as fusedrnn's cells
        # do for state=None (a TF1 sampling or inference loop never calls backward, and cells
        # start in train mode: the record had grown by a step's copies at every step)
        zero = getattr(self, "_zero_given", None)
        if state is None or (zero is not None and len(zero) == len(_leaves(state)) and all(
                a is b for a, b in zip(zero, _leaves(state)))):
            object.__setattr__(self, "_zero_given", None)
            for m in self.modules():
                if isinstance(m, RNNCell):
                    m._tape.clear()
        y, final = self._execute(plan, x, None, False, "step")
        return y[0], final

    # -- sequences (dynamic_rnn) --------------------------------------------------------------------
    def _plan(self, fn, x, state, what):
        """Checks everything a call needs before any of it runs (inputs' depth and dtype against
        each layer and wrapper, the whole state); nothing is built or run. x [T, N, C]
        time-major, the caller's copy. Returns the layers with their (h0, c0)."""
        T, N, C = x.shape
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"{fn}: inputs must be float32 or float64, got {x.dtype}")
        layers = self._layers()
        states = self._split(state, fn, what) if state is not None else [None] * len(layers)
        dt, depth, plan = x.dtype, C, []
        for (cell, ins, outs, sts), st in zip(layers, states):
            for w in ins:
                w._check_input(fn, depth, dt)
            cell._check_input(fn, depth, dt)
            hc = cell._to_hc(st, N, fn, what, dt) if st is not None else (None, None)
            plan.append((cell, ins, outs, sts, hc, st is not None, depth))
            depth = cell.output_size
        return plan

    @staticmethod
    def _build_plan(plan, dtype):
        """Makes the variables of the plan's layers not built yet (after every check)."""
        for cell, *_, depth in plan:
            if cell._built is None:
                cell.build(depth, dtype)

    def _execute(self, plan, x, lengths, reverse, how):
        """Runs a checked plan. Returns (y [T, N, R], final state); in train mode the call is
        recorded for backward."""
        T, N, _ = x.shape
        training = self.training
        if how != "step":
            # a dynamic_rnn is a run of its own: new variational masks, and it replaces the
            # calls recorded before (its backward is one call)
            self._tape.clear()
            for w in self._wrappers([p[:4] for p in plan]):
                w._vmasks.clear()
        inp, ctx, finals = x, [], []
        for cell, ins, outs, sts, (h0, c0), has_state, _ in plan:
            m_in = [w._mask_for(("input",), inp.shape, inp.dtype, w.input_keep_prob)
                    for w in ins] if training else []
            for m in m_in:
                if m is not None:
                    inp = inp * m
            masks = cell._state_masks(sts, T, N, x.dtype) if training else (None, None)
            y, h_n, c_n, cache = cell._run(inp, lengths, h0, c0, reverse, training, masks)
            finals.append(cell._from_hc(h_n, c_n))
            m_out = [w._mask_for(("output",), y.shape, y.dtype, w.output_keep_prob)
                     for w in outs] if training else []
            for m in m_out:
                if m is not None:
                    y = y * m
            ctx.append((cell, cache, m_in, m_out, has_state))
            inp = y
        # (the output's shape as the caller sees it, and its dtype: backward's d_output)
        R = inp.shape[2]
        shape = (N, R) if how == "step" else (N, T, R) if how == "batch_major" else (T, N, R)
        if training:
            self._tape.append((how, ctx, N, shape, inp.dtype))
        return inp, self._join(finals)

    def backward(self, d_output, d_state=None):
        """Gradient of the most recent training call not yet differentiated (one step, or a
        dynamic_rnn over this cell) w.r.t. its inputs, same layout; d_output like that call's
        output, d_state like its final state (either may be None = zero). Parameter gradients
        add into Parameter.grad; the initial state's gradient goes to ``self.d_initial_state``.
        Each backward consumes its call: after a step loop call it once per step in reverse
        order (d_state: the loss's gradient of that step's new state plus the later step's
        ``d_initial_state``); a second backward of a dynamic_rnn raises. A dynamic_rnn call
        drops the calls recorded before it."""
        fn = f"{type(self).__name__}.backward"
        if not self._tape:
            raise RuntimeError(f"{fn}: no recorded call left to differentiate (each backward "
                               f"consumes the latest training call, a step or a dynamic_rnn, "
                               f"not yet differentiated: call the cell or dynamic_rnn in train "
                               f"mode first)")
        how, ctx, N, shape, dt = self._tape[-1]
        if d_output is not None:
            V.array(fn, "d_output", d_output, shape, dt, "(the output's)")
        # every layer's d_state is checked before any layer's backward adds a gradient
        d_finals = self._split(d_state, fn, "d_state") if d_state is not None else \
            [None] * len(ctx)
        d_hc = [c[0]._to_hc(ds, N, fn, "d_state", c[0]._built) if ds is not None
                else (None, None) for c, ds in zip(ctx, d_finals)]
        self._tape.pop()
        if how == "step":
            d = None if d_output is None else np.ascontiguousarray(d_output[None])
        elif how == "batch_major":
            d = None if d_output is None else np.ascontiguousarray(d_output.transpose(1, 0, 2))
        else:
            d = d_output
        d_inits = []
        for (cell, cache, m_in, m_out, has_state), (dh_n, dc_n) in zip(reversed(ctx),
                                                                      reversed(d_hc)):
            if d is not None:
                for m in m_out:
                    if m is not None:
                        d = d * m
                d = np.ascontiguousarray(d, dtype=cell._built)
            dx, dh0, dc0 = cell._back(fn, cache, d, dh_n, dc_n)
            for m in m_in:
                if m is not None:
                    dx = dx * m
            d_inits.append(cell._from_hc(dh0, dc0) if has_state else None)
            d = dx
        d_inits.reverse()
        self.d_initial_state = None if all(s is None for s in d_inits) else self._join(
            [s if s is not None else c._zero(N, c._built) for s, (c, *_) in zip(d_inits, ctx)])
        if how == "step":
            return d[0]
        if how == "batch_major":
            return np.ascontiguousarray(d.transpose(1, 0, 2))
        return d

    def variables(self, scope="rnn") -> "OrderedDict[str, Parameter]":
        """TF1's variable names (``rnn/multi_rnn_cell/cell_0/basic_lstm_cell/kernel``, ...) to
        this cell's Parameters (created by then: call the cell, ``build`` or ``load_variables``).
        ``scope`` is the outer scope (TF1's ``dynamic_rnn(scope=...)``, ``rnn`` by default)."""
        raise NotImplementedError

    def _basic_cells(self):
        return [c for c, *_ in self._layers()]

    def load_variables(self, arrays, scope="rnn", strict=True) -> None:
        """Copies TF1 variables (a mapping of names to arrays, e.g. from
        :func:`fusedrnn.compat.v1.load_checkpoint`) into the cell, building it from their shapes
        first if needed. strict: every variable of the cell must be present. Every array is
        checked (shape, and dtype: nothing is cast, as Module.load_state_dict) before any is
        copied; a refused load leaves the cell as it was."""
        if not hasattr(arrays, "items"):
            raise TypeError(f"load_variables: arrays must be a mapping of TF1 variable names to "
                            f"arrays, got {type(arrays).__name__}")
        fresh = [c for c in self._basic_cells() if c._built is None]
        try:
            self._build_from(arrays, scope)
            staged = []
            for name, p in self.variables(scope).items():
                if name not in arrays:
                    if strict:
                        raise KeyError(f"load_variables: {name} is missing "
                                       f"(have {sorted(arrays)[:8]}...)")
                    continue
                a = arrays[name]
                a = a if isinstance(a, np.ndarray) else np.asarray(a)
                if a.shape != p.data.shape:
                    raise ValueError(f"load_variables: {name} must have shape "
                                     f"{list(p.data.shape)}, got {list(a.shape)}")
                if a.dtype != p.data.dtype:
                    raise TypeError(f"load_variables: {name} must have dtype {p.data.dtype} "
                                    f"(the cell's), got {a.dtype}: nothing is cast (cast it "
                                    f"yourself, e.g. a.astype(np.{p.data.dtype}))")
                staged.append((p, a))
        except BaseException:
            for c in fresh:
                c._unbuild()
            raise
        for p, a in staged:
            np.copyto(p.data, a)
            p.changed()

    def load_state_dict(self, state_dict, strict: bool = True) -> None:
        """Module.load_state_dict (names, shapes, dtypes checked; nothing cast). The variables
        of a cell are made at its first call: a cell not built yet is built first from the
        shape and dtype of its kernel in ``state_dict`` (so ``fusedrnn.io.load(path, cell)``
        takes a freshly made cell), and unbuilt again if the load is refused."""
        fresh = []
        if hasattr(state_dict, "items"):
            given = {str(k): v for k, v in state_dict.items()}
            try:
                for prefix, m in self.named_modules():
                    if not isinstance(m, _Basic) or m._built is not None:
                        continue
                    key = f"{prefix}.{m._kernel_attr}" if prefix else m._kernel_attr
                    if key not in given:
                        if strict:
                            raise StateDictKeyError(
                                f"load_state_dict: missing {key} (the kernel of a "
                                f"{type(m).__name__} not built yet: its shape gives the "
                                f"input depth)")
                        continue
                    a = _as_numpy(key, given[key])
                    G = m._kernel_width()
                    if a.ndim != 2 or a.shape[1] != G or a.shape[0] <= m._rec():
                        raise StateDictShapeError(f"load_state_dict: {key} must have shape "
                                                  f"[input_depth + {m._rec()}, {G}], got "
                                                  f"{list(a.shape)}")
                    if a.dtype not in (np.float32, np.float64):
                        raise TypeError(f"load_state_dict: {key} must be float32 or float64, "
                                        f"got {a.dtype}")
                    m.build(a.shape[0] - m._rec(), a.dtype)
                    fresh.append(m)
                super().load_state_dict(state_dict, strict)
            except BaseException:
                for m in fresh:
                    m._unbuild()
                raise
            return
        super().load_state_dict(state_dict, strict)


class _Basic(RNNCell):
    """A cell one fused kernel call runs: its layers() is itself."""
    _scope_name = ""
    _kernel_name = "kernel"     # TF1's name of the variable whose rows give the input depth
    _kernel_attr = "kernel"     # ... and its Parameter's attribute

    def __init__(self, num_units, dtype=None, seed=None, name=None):
        super().__init__()
        fn = type(self).__name__
        self._num_units = _units(fn, "num_units", num_units)
        self._dtype = _dtype_of(fn, dtype)
        self._seed = seed
        self._built = None  # the dtype once the variables exist
        self._input_depth = None
        # (key, arrays): the variables in the kernels' layout and what they were made from
        object.__setattr__(self, "_converted", None)
        name = _name(fn, name)
        if name is not None:   # TF1: the layer's name is its variable scope
            self._scope_name = name

    def _layers(self):
        return [(self, [], [], [])]

    def _split(self, state, fn, what):
        return [state]

    def _join(self, states):
        return states[0]

    @property
    def output_size(self):
        return self._num_units

    @property
    def state_size(self):
        return self._num_units

    def _rec(self):
        return self._num_units   # width of h fed back

    def _kernel_width(self):
        return self._num_units   # columns of the kernel named by _kernel_attr

    def build(self, input_depth, dtype=np.float32):
        fn = f"{type(self).__name__}.build"
        C = _units(fn, "input_depth", input_depth)
        dt = _dtype_of(fn, self._dtype if self._dtype is not None else dtype)
        if self._built is not None:
            return
        try:
            self._create(np.random.default_rng(self._seed), C, dt)
        except BaseException:   # (a refused initializer's result: no half-made variables)
            self._unbuild()
            raise
        self._input_depth, self._built = C, dt

    def _unbuild(self):
        """Back to the state before build (a refused load must not leave made variables)."""
        for name in list(self._parameters):
            delattr(self, name)
        self._input_depth = self._built = None
        object.__setattr__(self, "_converted", None)

    def _initial(self, arg, init, shape, dt, default):
        """A variable's initial value: `default()`, or the user's initializer `init(shape,
        dtype)`, which must give exactly that shape and dtype (nothing is cast)."""
        if init is None:
            return default()
        fn = type(self).__name__
        a = init(shape, dt)
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{fn}: {arg} must return a numpy array of shape {list(shape)} and "
                            f"dtype {dt}, got {type(a).__name__}")
        if a.shape != tuple(shape):
            raise ValueError(f"{fn}: {arg} must return an array of shape {list(shape)}, got "
                             f"{list(a.shape)}")
        if a.dtype != dt:
            raise TypeError(f"{fn}: {arg} must return an array of dtype {dt} (the cell's), got "
                            f"{a.dtype}")
        return np.array(a)

    def _build_from(self, arrays, scope):
        if self._built is None:
            name = f"{scope}/{self._scope_name}/{self._kernel_name}"
            k = arrays.get(name)
            if k is None:
                raise KeyError(f"load_variables: {name} is missing")
            k = k if isinstance(k, np.ndarray) else np.asarray(k)
            if k.ndim != 2 or k.shape[0] <= self._rec():
                raise ValueError(f"load_variables: {name} must have shape [input_depth + "
                                 f"{self._rec()}, {self._kernel_width()}], got {list(k.shape)}")
            if self._dtype is None and k.dtype not in (np.float32, np.float64):
                raise TypeError(f"load_variables: {name} must be float32 or float64, got "
                                f"{k.dtype}")
            self.build(k.shape[0] - self._rec(),
                       self._dtype if self._dtype is not None else k.dtype)

    def _check_input(self, fn, depth, dt):
        """Inputs of depth `depth` and dtype `dt` fit this cell (built or not)."""
        want = self._built if self._built is not None else self._dtype
        if want is not None and dt != want:
            why = "the cell's variables" if self._built is not None else "the cell's dtype="
            raise TypeError(f"{fn}: inputs must have dtype {want} ({why}), got {dt}")
        if self._input_depth is not None and depth != self._input_depth:
            raise ValueError(f"{fn}: inputs must have depth {self._input_depth} (the cell was "
                             f"built for it), got {depth}")

    def _state_array(self, fn, what, a, N, width, dt):
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{fn}: {what} must be an array [{N}, {width}], "
                             f"got {type(a).__name__}")
        if a.shape != (N, width):
            raise ValueError(f"{fn}: {what} must have shape [{N}, {width}], got {list(a.shape)}")
        if a.dtype != dt:
            raise TypeError(f"{fn}: {what} must have dtype {dt}, got {a.dtype}")
        return np.ascontiguousarray(a)

    def _to_hc(self, state, N, fn, what, dt):
        return self._state_array(fn, what, state, N, self._num_units, dt), None

    def _from_hc(self, h, c):
        return h

    def _zero(self, N, dt):
        return np.zeros((N, self._num_units), dt)

    def _back(self, fn, cache, dy, dh_n, dc_n):
        if isinstance(cache, _steps.SlowCache):
            g = _steps.backward(cache, dy, dh_n, dc_n)
        else:
            g = self._kernel_backward(cache, dy, dh_n, dc_n)
        self._add_grads(g)
        return g.dx, g.dh0, getattr(g, "dc0", None)

    # -- the fused kernel, or the step path (_steps) for what the kernels cannot express --------
    def _fused(self):
        """Whether the fused kernel computes this cell (else the step path)."""
        return self._activation == "tanh"

    def _state_masks(self, wrappers, T, N, dt):
        """State dropout masks (h, c) of the DropoutWrappers in `wrappers` (product), each None
        or [T, N, width] ([1, 1, width] with variational_recurrent): TF1 drops h of an
        LSTMStateTuple (its default state filter), the whole state otherwise."""
        mh = mc = None
        for w in wrappers:
            m = w._mask_for(("h", id(self)), (T, N, self._rec()), dt, w.state_keep_prob)
            mh = m if mh is None else mh * m
            if self._concat_state():
                m = w._mask_for(("c", id(self)), (T, N, self._num_units), dt,
                                w.state_keep_prob)
                mc = m if mc is None else mc * m
        return mh, mc

    def _concat_state(self):
        return False

    def _convert(self):
        """The variables in the kernels' layout, new arrays: (w_ih [G*H, C], w_hh [G*H, R], the
        one bias [G*H], w_peep [3, H] or None, w_hr [P, H] or None)."""
        raise NotImplementedError

    def _layout(self):
        """_convert()'s arrays, made once and reused by every step and every dynamic_rnn call
        until a variable changes (a manual step loop converted the 2 MB kernel at each step:
        94% of its time at H = C = 256, N = 1). A change is seen as fusedrnn's cells see one
        (_packing_key): each variable's array and its version, which assigning ``p.data``
        (``p.data -= ...``), ``cell.<variable> = array``, the optimisers' steps,
        ``load_variables``, ``load_state_dict`` and ``p.changed()`` (after a write into
        ``p.data[...]``) bump; and which Parameter each variable is (``cell.<variable> =
        Parameter(...)``). The arrays are never written into (read-only): a change makes new
        ones, so the calls recorded before it keep differentiating the weights they ran with."""
        key = _packing_key(self._parameters.values(), tuple(self._parameters.items()),
                           getattr(self, "_forget_bias", None))
        got = self._converted
        if got is not None and _same_packing(got[0], key):
            return got[1]
        arrays = self._convert()
        for a in arrays:
            if a is not None:
                a.setflags(write=False)
        object.__setattr__(self, "_converted", (key, arrays))
        return arrays

    def _run(self, x, lengths, h0, c0, reverse, training, masks=(None, None)):
        if self._fused() and masks[0] is None and masks[1] is None:
            return self._run_fused(x, lengths, h0, c0, reverse, training)
        return _steps.run(self._step_cell(), x, lengths, h0, c0, reverse, training, masks)


class BasicRNNCell(_Basic):
    """TF1 BasicRNNCell(num_units, activation=tanh): output = new_state = act([x, h] K + b)."""
    _scope_name = "basic_rnn_cell"

    def __init__(self, num_units, activation=None, reuse=None, name=None, dtype=None, *,
                 seed=None):
        super().__init__(num_units, dtype, seed, name)
        self._activation = _activation("BasicRNNCell", activation)

    def _fused(self):
        return self._activation in ("tanh", "relu")

    def _convert(self):
        C, K = self._input_depth, self.kernel.data
        return (np.array(K[:C].T, order="C"), np.array(K[C:].T, order="C"),
                self.bias.data.copy(), None, None)

    def _step_cell(self):
        return _steps.StepCell("rnn", self._activation, *self._layout()[:3])

    def _create(self, rng, C, dt):
        H = self._num_units
        self.kernel = Parameter(_glorot(rng, (C + H, H), dt))
        self.bias = Parameter(np.zeros(H, dt))

    def variables(self, scope="rnn"):
        p = f"{scope}/{self._scope_name}/"
        return OrderedDict([(p + "kernel", self.kernel), (p + "bias", self.bias)])

    def _run_fused(self, x, lengths, h0, c0, reverse, training):
        w_ih, w_hh, b = self._layout()[:3]
        out = F.rnn_forward(x, w_ih, w_hh, b, None, h0, nonlinearity=self._activation,
                            lengths=lengths, reverse=reverse, training=training)
        return out.y, out.h_n, None, out.cache

    def _kernel_backward(self, cache, dy, dh_n, dc_n):
        return F.rnn_backward(cache, dy, dh_n)

    def _add_grads(self, g):
        C = self._input_depth
        self.kernel.grad[:C] += g.dw_ih.T
        self.kernel.grad[C:] += g.dw_hh.T
        self.bias.grad += g.db_ih


_IFGO = [0, 2, 1, 3]   # TF1's i, j, f, o blocks in the kernels' order i, f, g(=j), o


class BasicLSTMCell(_Basic):
    """TF1 BasicLSTMCell(num_units, forget_bias=1.0, state_is_tuple=True, activation=tanh)."""
    _scope_name = "basic_lstm_cell"

    def __init__(self, num_units, forget_bias=1.0, state_is_tuple=True, activation=None,
                 reuse=None, name=None, dtype=None, *, seed=None):
        super().__init__(num_units, dtype, seed, name)
        fn = type(self).__name__
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, numbers.Real):
            raise ValueError(f"{fn}: forget_bias must be a number, got {forget_bias!r}")
        self._forget_bias = float(forget_bias)
        if not isinstance(state_is_tuple, (bool, np.bool_)):
            raise TypeError(f"{fn}: state_is_tuple must be a bool")
        self._state_is_tuple = bool(state_is_tuple)
        self._activation = _activation(fn, activation)
        self._num_proj = None
        self._peep = False
        self._cell_clip = self._proj_clip = None
        self._init = None   # LSTMCell's initializer (BasicLSTMCell has none, as in TF1)

    def _kernel_width(self):
        return 4 * self._num_units

    def _concat_state(self):
        return not self._state_is_tuple

    def _step_cell(self):
        w_ih, w_hh, b, w_peep, w_hr = self._layout()
        return _steps.StepCell("lstm", self._activation, w_ih, w_hh, b, w_peep, w_hr,
                               self._cell_clip, self._proj_clip)

    @property
    def state_size(self):
        H, R = self._num_units, self._num_proj or self._num_units
        return LSTMStateTuple(H, R) if self._state_is_tuple else H + R

    @property
    def output_size(self):
        return self._num_proj or self._num_units

    def _rec(self):
        return self._num_proj or self._num_units

    def _create(self, rng, C, dt):
        H, R = self._num_units, self._rec()
        self.kernel = Parameter(self._initial("initializer", self._init, (C + R, 4 * H), dt,
                                              lambda: _glorot(rng, (C + R, 4 * H), dt)))
        self.bias = Parameter(np.zeros(4 * H, dt))

    def variables(self, scope="rnn"):
        p = f"{scope}/{self._scope_name}/"
        return OrderedDict([(p + "kernel", self.kernel), (p + "bias", self.bias)])

    def _to_hc(self, state, N, fn, what, dt):
        H, R = self._num_units, self._rec()
        if self._state_is_tuple:
            # (a list [c, h] too: TF1's nest takes any sequence of two)
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ValueError(f"{fn}: {what} must be an LSTMStateTuple(c, h) "
                                 f"(state_is_tuple=True), got {type(state).__name__}")
            c, h = state
            return (self._state_array(fn, f"{what}.h", h, N, R, dt),
                    self._state_array(fn, f"{what}.c", c, N, H, dt))
        if isinstance(state, (tuple, list)):
            raise ValueError(f"{fn}: {what} must be one array [N, {H + R}] (c and h "
                             f"concatenated: state_is_tuple=False), got a "
                             f"{type(state).__name__}")
        s = self._state_array(fn, what, state, N, H + R, dt)
        return np.ascontiguousarray(s[:, H:]), np.ascontiguousarray(s[:, :H])

    def _from_hc(self, h, c):
        if h is None:
            return None
        if self._state_is_tuple:
            return LSTMStateTuple(c, h)
        return np.concatenate([c, h], axis=1)

    def _zero(self, N, dt):
        H, R = self._num_units, self._rec()
        if self._state_is_tuple:
            return LSTMStateTuple(np.zeros((N, H), dt), np.zeros((N, R), dt))
        return np.zeros((N, H + R), dt)

    def _convert(self):
        C, H = self._input_depth, self._num_units
        K = _blocks(self.kernel.data, H, _IFGO, 1)
        b = _blocks(self.bias.data, H, _IFGO, 0)
        b[H:2 * H] += self._forget_bias
        return (np.array(K[:C].T, order="C"), np.array(K[C:].T, order="C"), b,
                *self._extras())

    def _extras(self):
        return None, None

    def _run_fused(self, x, lengths, h0, c0, reverse, training):
        w_ih, w_hh, b, w_peep, w_hr = self._layout()
        out = F.lstm_forward(x, w_ih, w_hh, b, None, h0, c0, w_peep=w_peep, w_hr=w_hr,
                             lengths=lengths, reverse=reverse, training=training,
                             cell_clip=self._cell_clip)
        return out.y, out.h_n, out.c_n, out.cache

    def _kernel_backward(self, cache, dy, dh_n, dc_n):
        return F.lstm_backward(cache, dy, dh_n, dc_n)

    def _add_grads(self, g):
        C, H = self._input_depth, self._num_units
        _add_blocks(self.kernel.grad[:C], g.dw_ih.T, H, _IFGO)
        _add_blocks(self.kernel.grad[C:], g.dw_hh.T, H, _IFGO)
        _add_blocks(self.bias.grad, g.db_ih, H, _IFGO)


class LSTMCell(BasicLSTMCell):
    """TF1 LSTMCell(num_units, use_peepholes=False, cell_clip=None, initializer=None,
    num_proj=None, proj_clip=None, ..., forget_bias=1.0, state_is_tuple=True, activation=tanh).
    State LSTMStateTuple(c [N, H], h [N, num_proj or H])."""
    _scope_name = "lstm_cell"

    def __init__(self, num_units, use_peepholes=False, cell_clip=None, initializer=None,
                 num_proj=None, proj_clip=None, num_unit_shards=None, num_proj_shards=None,
                 forget_bias=1.0, state_is_tuple=True, activation=None, reuse=None, name=None,
                 dtype=None, *, seed=None):
        super().__init__(num_units, forget_bias, state_is_tuple, activation, name=name,
                         dtype=dtype, seed=seed)
        fn = "LSTMCell"
        # (kernel, peepholes and projection, as TF1's; the bias stays zeros)
        self._init = _initializer(fn, "initializer", initializer)
        self._cell_clip = _positive(fn, "cell_clip", cell_clip)
        self._num_proj = _units(fn, "num_proj", num_proj, optional=True)
        # TF1 clips the projection only when there is one (proj_clip is ignored without it)
        proj_clip = _positive(fn, "proj_clip", proj_clip)
        self._proj_clip = proj_clip if self._num_proj else None
        if self._num_proj and not self._state_is_tuple:
            raise ValueError(f"{fn}: fusedrnn.compat.v1 supports num_proj only with "
                             f"state_is_tuple=True (TF1's concatenated state [c, m] with a "
                             f"projection is not supported), got num_proj={num_proj}, "
                             f"state_is_tuple=False")
        if not isinstance(use_peepholes, (bool, np.bool_)):
            raise TypeError(f"{fn}: use_peepholes must be a bool")
        self._peep = bool(use_peepholes)

    def _create(self, rng, C, dt):
        super()._create(rng, C, dt)
        H = self._num_units
        if self._peep:
            for name in ("w_f_diag", "w_i_diag", "w_o_diag"):
                setattr(self, name, Parameter(self._initial(
                    "initializer", self._init, (H,), dt,
                    lambda: _glorot(rng, (1, H), dt)[0].copy())))
        if self._num_proj:
            P = self._num_proj
            self.projection_kernel = Parameter(self._initial(
                "initializer", self._init, (H, P), dt, lambda: _glorot(rng, (H, P), dt)))

    def variables(self, scope="rnn"):
        v = super().variables(scope)
        p = f"{scope}/{self._scope_name}/"
        if self._peep:
            for name in ("w_f_diag", "w_i_diag", "w_o_diag"):
                v[p + name] = getattr(self, name)
        if self._num_proj:
            v[p + "projection/kernel"] = self.projection_kernel
        return v

    def _fused(self):
        # the kernels project to fewer units than they have (P < H, PyTorch's rule); TF1 also
        # allows num_proj >= num_units: those run step by step
        return self._activation == "tanh" and self._proj_clip is None and \
            (not self._num_proj or self._num_proj < self._num_units)

    def _extras(self):
        w_peep = np.stack([self.w_i_diag.data, self.w_f_diag.data, self.w_o_diag.data]) \
            if self._peep else None
        w_hr = np.array(self.projection_kernel.data.T, order="C") if self._num_proj else None
        return w_peep, w_hr

    def _add_grads(self, g):
        super()._add_grads(g)
        if self._peep:
            self.w_i_diag.grad += g.dw_peep[0]
            self.w_f_diag.grad += g.dw_peep[1]
            self.w_o_diag.grad += g.dw_peep[2]
        if self._num_proj:
            self.projection_kernel.grad += g.dw_hr.T


class GRUCell(_Basic):
    """TF1 GRUCell(num_units, activation=tanh): r, u = σ([x, h] G + g); c = tanh([x, r h] K + k);
    new h = u h + (1 - u) c."""
    _scope_name = "gru_cell"
    _kernel_name = "gates/kernel"

    _kernel_attr = "gates_kernel"

    def __init__(self, num_units, activation=None, reuse=None, kernel_initializer=None,
                 bias_initializer=None, name=None, dtype=None, *, seed=None):
        super().__init__(num_units, dtype, seed, name)
        self._activation = _activation("GRUCell", activation)
        # (kernel_initializer: both kernels; bias_initializer: both biases, as TF1's)
        self._kernel_init = _initializer("GRUCell", "kernel_initializer", kernel_initializer)
        self._bias_init = _initializer("GRUCell", "bias_initializer", bias_initializer)

    def _kernel_width(self):
        return 2 * self._num_units

    def _convert(self):
        C = self._input_depth
        G, K = self.gates_kernel.data, self.candidate_kernel.data
        w_ih = np.ascontiguousarray(np.concatenate([G[:C], K[:C]], axis=1).T)
        w_hh = np.ascontiguousarray(np.concatenate([G[C:], K[C:]], axis=1).T)
        b = np.concatenate([self.gates_bias.data, self.candidate_bias.data])
        return w_ih, w_hh, b, None, None

    def _step_cell(self):
        return _steps.StepCell("gru", self._activation, *self._layout()[:3])

    def _create(self, rng, C, dt):
        H = self._num_units
        ki, bi = self._kernel_init, self._bias_init
        self.gates_kernel = Parameter(self._initial("kernel_initializer", ki, (C + H, 2 * H),
                                                    dt, lambda: _glorot(rng, (C + H, 2 * H), dt)))
        self.gates_bias = Parameter(self._initial("bias_initializer", bi, (2 * H,), dt,
                                                  lambda: np.ones(2 * H, dt)))
        self.candidate_kernel = Parameter(self._initial("kernel_initializer", ki, (C + H, H),
                                                        dt, lambda: _glorot(rng, (C + H, H), dt)))
        self.candidate_bias = Parameter(self._initial("bias_initializer", bi, (H,), dt,
                                                      lambda: np.zeros(H, dt)))

    def variables(self, scope="rnn"):
        p = f"{scope}/{self._scope_name}/"
        return OrderedDict([(p + "gates/kernel", self.gates_kernel),
                            (p + "gates/bias", self.gates_bias),
                            (p + "candidate/kernel", self.candidate_kernel),
                            (p + "candidate/bias", self.candidate_bias)])

    def _run_fused(self, x, lengths, h0, c0, reverse, training):
        w_ih, w_hh, b = self._layout()[:3]
        out = F.gru_forward(x, w_ih, w_hh, b, None, h0, variant="reset_before", lengths=lengths,
                            reverse=reverse, training=training)
        return out.y, out.h_n, None, out.cache

    def _kernel_backward(self, cache, dy, dh_n, dc_n):
        return F.gru_backward(cache, dy, dh_n)

    def _add_grads(self, g):
        C, H = self._input_depth, self._num_units
        self.gates_kernel.grad[:C] += g.dw_ih[:2 * H].T
        self.gates_kernel.grad[C:] += g.dw_hh[:2 * H].T
        self.candidate_kernel.grad[:C] += g.dw_ih[2 * H:].T
        self.candidate_kernel.grad[C:] += g.dw_hh[2 * H:].T
        self.gates_bias.grad += g.db_ih[:2 * H]
        self.candidate_bias.grad += g.db_ih[2 * H:]


class MultiRNNCell(RNNCell):
    """TF1 MultiRNNCell(cells, state_is_tuple=True): a stack; state a tuple of the cells'
    states; variables under ``multi_rnn_cell/cell_k/``."""

    def __init__(self, cells, state_is_tuple=True):
        super().__init__()
        cells = list(cells) if isinstance(cells, (list, tuple)) else cells
        if not isinstance(cells, list) or not cells or \
                not all(isinstance(c, RNNCell) for c in cells):
            raise ValueError("MultiRNNCell: cells must be a non-empty list of cells")
        for c in cells:
            c._layers()   # (a custom RNNCell subclass: refused here already)
        if len({id(c) for c in cells}) != len(cells):
            raise ValueError("MultiRNNCell: the same cell object appears twice in cells (TF1 "
                             "reuses its variables then; build one cell per layer)")
        if state_is_tuple is not True:
            raise ValueError("MultiRNNCell: state_is_tuple must be True (the deprecated "
                             "concatenated state is not supported)")
        for k, c in enumerate(cells):
            setattr(self, f"cell_{k}", c)
        self._cells = cells

    @property
    def state_size(self):
        return tuple(c.state_size for c in self._cells)

    def _layers(self):
        return [e for c in self._cells for e in c._layers()]

    def _split(self, state, fn, what):
        if not isinstance(state, (tuple, list)) or len(state) != len(self._cells):
            raise ValueError(f"{fn}: {what} must be a tuple of {len(self._cells)} states (one "
                             f"per cell of the MultiRNNCell), got "
                             f"{type(state).__name__}{'' if not isinstance(state, (tuple, list)) else f' of {len(state)}'}")
        return [s for c, st in zip(self._cells, state) for s in c._split(st, fn, what)]

    def _join(self, states):
        out, i = [], 0
        for c in self._cells:
            n = len(c._layers())
            out.append(c._join(states[i:i + n]))
            i += n
        return tuple(out)

    def variables(self, scope="rnn"):
        v = OrderedDict()
        for k, c in enumerate(self._cells):
            v.update(c.variables(f"{scope}/multi_rnn_cell/cell_{k}"))
        return v

    def _build_from(self, arrays, scope):
        for k, c in enumerate(self._cells):
            c._build_from(arrays, f"{scope}/multi_rnn_cell/cell_{k}")


class DropoutWrapper(RNNCell):
    """TF1 DropoutWrapper(cell, input_keep_prob=1.0, output_keep_prob=1.0, state_keep_prob=1.0,
    variational_recurrent=False, input_size=None, dtype=None, seed=None): dropout of the cell's
    inputs, outputs and (state_keep_prob) the state each step passes on (train mode), a fresh
    mask per step and batch element. State dropout follows TF1's default filter (h of an
    LSTMStateTuple, not c; a whole non-tuple state) and runs the wrapped cells on the step path
    (_steps): the fused kernels feed back the output itself.

    variational_recurrent=True is TF1's: one mask of shape [1, size] for each of the input,
    the output and each state, shared by every batch element and every step of a run. A run is
    one dynamic_rnn call (each draws new masks), or a loop of steps ``cell(x_t, state)`` from one
    ``zero_state()`` call to the next (the masks are drawn at the first step after it and kept).
    As in TF1 it needs ``dtype``, and ``input_size`` when input_keep_prob < 1; given ones (with
    variational_recurrent or not) must match the inputs."""

    def __init__(self, cell, input_keep_prob=1.0, output_keep_prob=1.0, state_keep_prob=1.0,
                 variational_recurrent=False, input_size=None, dtype=None, seed=None,
                 dropout_state_filter_visitor=None):
        super().__init__()
        fn = "DropoutWrapper"
        if not isinstance(cell, RNNCell):
            raise TypeError(f"{fn}: cell must be a fusedrnn.compat.v1 cell, "
                            f"got {type(cell).__name__}")
        cell._layers()   # (a custom RNNCell subclass: refused here already)
        for name, p in (("input_keep_prob", input_keep_prob),
                        ("output_keep_prob", output_keep_prob),
                        ("state_keep_prob", state_keep_prob)):
            if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
                raise ValueError(f"{fn}: {name} must be a number in (0, 1], got {p!r}")
        if state_keep_prob != 1 and dropout_state_filter_visitor is not None:
            raise ValueError(f"{fn}: dropout_state_filter_visitor is not supported (TF1's "
                             f"default filter is: h of an LSTMStateTuple, any other state "
                             f"whole); pass None")
        if not isinstance(variational_recurrent, (bool, np.bool_)):
            raise TypeError(f"{fn}: variational_recurrent must be a bool, got "
                            f"{variational_recurrent!r}")
        input_size = _units(fn, "input_size", input_size, optional=True)
        dtype = _dtype_of(fn, dtype)
        if variational_recurrent:   # TF1's checks: the masks are made for a known dtype/size
            if dtype is None:
                raise ValueError(f"{fn}: When variational_recurrent=True, dtype must be "
                                 f"provided (np.float32 or np.float64)")
            if input_keep_prob < 1 and input_size is None:
                raise ValueError(f"{fn}: When variational_recurrent=True and input_keep_prob < "
                                 f"1.0, input_size must be provided (the inputs' depth)")
        self.cell = cell
        self.state_keep_prob = float(state_keep_prob)
        self.input_keep_prob = float(input_keep_prob)
        self.output_keep_prob = float(output_keep_prob)
        self.variational_recurrent = bool(variational_recurrent)
        self._input_size, self._dtype = input_size, dtype
        self._rng = np.random.default_rng(seed)
        self._vmasks = {}   # variational masks of the current run, by (what, layer)

    @property
    def state_size(self):
        return self.cell.state_size

    def _layers(self):
        entries = [(c, list(i), list(o), list(s)) for c, i, o, s in self.cell._layers()]
        entries[0][1].insert(0, self)
        entries[-1][2].append(self)
        if self.state_keep_prob < 1:
            for e in entries:
                e[3].append(self)
        return entries

    def _check_input(self, fn, depth, dt):
        """The inputs reaching this wrapper match its input_size= and dtype= (when given)."""
        if self._dtype is not None and dt != self._dtype:
            raise TypeError(f"{fn}: inputs must have dtype {self._dtype} (the DropoutWrapper's "
                            f"dtype=), got {dt}")
        if self._input_size is not None and depth != self._input_size:
            raise ValueError(f"{fn}: inputs must have depth {self._input_size} (the "
                             f"DropoutWrapper's input_size=), got {depth}")

    def _mask(self, shape, dtype, keep):
        """A new dropout mask of `shape` (kept units scaled by 1/keep)."""
        return ((self._rng.random(shape) < keep) / keep).astype(dtype)

    def _mask_for(self, key, shape, dtype, keep):
        """The mask for an input/output/state [T, N, D], or None: a new one per call, or with
        variational_recurrent the run's [1, 1, D] mask for `key` (drawn at its first use)."""
        if keep >= 1:
            return None
        if not self.variational_recurrent:
            return self._mask(shape, dtype, keep)
        m = self._vmasks.get(key)
        if m is None or m.shape[-1] != shape[-1] or m.dtype != dtype:
            m = self._vmasks[key] = self._mask((1,) * (len(shape) - 1) + (shape[-1],), dtype,
                                               keep)
        return m

    def _split(self, state, fn, what):
        return self.cell._split(state, fn, what)

    def _join(self, states):
        return self.cell._join(states)

    def variables(self, scope="rnn"):
        return self.cell.variables(scope)

    def _build_from(self, arrays, scope):
        self.cell._build_from(arrays, scope)
