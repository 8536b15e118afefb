"""Single-step recurrent cells shaped like torch.nn: :class:`LSTMCell`, :class:`GRUCell`,
:class:`RNNCell`, for models that step a cell in a Python loop.

torch's arguments, shapes and parameter names (``weight_ih`` [G*H, C], ``weight_hh`` [G*H, R],
``bias_ih``, ``bias_hh`` [G*H]; LSTM extras as the layers have them: ``weight_hr`` [P, H] with
``proj_size`` P, ``weight_peep`` [3, H] with ``peepholes``), so
``cell.load_state_dict(torch_cell.state_dict())`` just works.

    forward(x [N, C], state=None) -> h [N, R]            (GRUCell, RNNCell; state h [N, H])
    forward(x [N, C], state=None) -> (h [N, R], c [N, H])   (LSTMCell; state (h, c))
    backward(d_h, d_c=None) -> (d_x [N, C], d_state)

Each step is one call of the fused sequence kernel with T = 1 (the same code as the layers, so a
loop of cells gives the layer's outputs on the same sequence bit for bit; its gradients agree to
rounding, 1e-12 in float64 and 1e-5 in float32 in the tests, as the steps' contributions to the
weight gradients are added in another order).

Per step, one C++ call (``_core.cell_forward`` / ``cell_backward``, python/bindings/
cell_step.cc) checks the step's arrays, allocates its outputs and runs the kernel with the GIL
released, on the cell's *plan* (its dims, the workspaces holding the packed weights, scratch,
the training caches): about 1 µs of Python and binding work per step instead of 8. Anything
but the common case (a strided or foreign-dtype array, a wrong shape or state structure, the
plan busy in another thread) goes down the Python path, which copies or raises the argument's
error before any work, with the same results.

Backpropagation through a Python loop: in train mode every forward step is recorded on the
cell's tape (with a copy of its x, so a loop may refill one input array); ``backward``
differentiates the most recent step not yet differentiated, so the caller calls it once per
step in reverse order, passing the gradient reaching that step's
output (the loss's gradient plus the ``d_state`` the later step returned). It returns the
gradient of the step's input and of the state it was given (``None`` when the state was None:
zeros are not differentiated), and *adds* the step's parameter gradients into each
``Parameter.grad``, so the gradients of the weights tied across the steps accumulate. A forward
with ``state=None`` in train mode starts a new sequence and drops steps left undifferentiated;
``clear_tape()`` drops them explicitly. Eval mode records nothing.

Deferred weight gradients. At batch N <= 8 a backward step's weight-gradient products are
rank-N updates that read and write the whole of weight_ih's and weight_hh's gradients for 2N
flops per element. The C++ path hands them to the cell's plan instead, which applies those of
up to 32 / N steps (at least 8) in one pass (each tile of a gradient loaded once for all of
them), bit for bit as if added at each step. They are applied before anything can see a
gradient through ``.grad``: at the backward that empties the tape, whenever a
``Parameter.grad`` is read or replaced (``zero_grad``, optimisers, a copy or pickle), before
another cell sharing the Parameter adds into it (at any batch), at ``flush_grads()`` and
``release_buffers()``, and when the cell or its plan is freed. A grad array obtained *before*
(views of one flat buffer: an all-reduce, a fused optimiser) is complete after the backward
that empties the tape, or after ``flush_grads()``: call it after a truncated backward (only the
last k of T steps), which leaves steps on the tape.

Threads. Backward steps and flushes add into the grad arrays with the GIL released, holding
one lock shared by all cells (_GRAD_LOCK), so cells sharing Parameters may be trained in
several threads at once. A cell has one tape: a training forward from a second thread while
another thread's steps are on it raises RuntimeError (train a copy per thread).

Packed weights. The kernels multiply with weights laid out in panels ("packed"); packing costs
as much as a small batch's step. A cell keeps the packed weights of its last forward in its
plan's workspace (a thread finding the plan busy in another thread steps on its own per-thread
workspace) and packs again only when they may have changed:

* after every ``backward`` (an optimiser step may follow it),
* after any change to one of its Parameters that goes through the library, whichever module
  or optimiser makes it: each bumps the Parameter's version (``Parameter._version``), which the
  cell compares with the one it packed (so cells sharing a Parameter see another's updates):
  the optimisers' steps, ``load_state_dict`` of the cell or of any module holding it,
  ``fusedrnn.io.load``, ``module.<name> = array``, assigning ``p.data`` (``p.data -= ...``
  assigns too), replacing a Parameter;
* after ``train()``/``eval()``, setting ``reuse_packed_weights``, ``weights_changed()``;
* a write into a weight array itself (``p.data[...] = ...``, ``np.copyto(p.data, ...)``) is
  invisible to the library: call ``p.changed()`` (every cell using ``p``) or the cell's
  ``weights_changed()`` after it, or set ``cell.reuse_packed_weights = False`` to pack at
  every step.

Backward likewise keeps the (transposed) weights it packs in its own workspace (per plan, or
per thread and batch size) and reuses them at the next backward of the same loop: it packs
again when a forward ran since its last call (so after an optimiser step and the next loop's
forwards) or after any of the calls above. The one change it cannot see is a write into the
weights *between two backward calls* with no forward in between: call ``weights_changed()``
after it.
Reusing the packed weights changes no result: they are the same bits either way.
"""
from __future__ import annotations

import math
import threading
import weakref

import numpy as np

from . import _core
from . import functional as F
from .module import (Module, Parameter, _dtype, _packing_key, _positive_int, _same_packing,
                     _seed, _train_mode, register_module)

__all__ = ["LSTMCell", "GRUCell", "RNNCell"]

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


# -- the kernels, T = 1, through functional's one route into _core ----------------------------

def _formula(mode, flag):
    """The kernel's enum of a GRU variant (flag: reset_after) / RNN nonlinearity (flag: relu)."""
    if mode == "LSTM":
        return None
    if mode == "GRU":
        return F._formula("gru", "reset_after" if flag else "reset_before")
    return F._formula("rnn", "relu" if flag else "tanh")


def _dims(mode, dims):
    return dims if mode == "LSTM" and len(dims) > 4 and dims[4] > 0 else dims[:4]


_KINDS = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}


def _kernel_forward(mode, flag, dims, packed, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_peep, w_hr,
                    y, h_n, c_n, cache, ws):
    if mode == "LSTM":
        F._forward_call("lstm", None, _dims(mode, dims), None, False,
                        {"x": x, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh,
                         "h0": h0, "c0": c0, "w_peep": w_peep, "w_hr": w_hr, "y": y,
                         "h_n": h_n, "c_n": c_n, "cache": cache}, ws, packed)
    else:
        F._forward_call(_KINDS[mode], _formula(mode, flag), dims[:4], None, False,
                        {"x": x, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh,
                         "h0": h0, "y": y, "h_n": h_n, "cache": cache}, ws, packed)


def _kernel_backward(mode, flag, dims, x, w_ih, w_hh, w_peep, w_hr, cache, dh_n, dc_n, dx, dh0,
                     dc0, dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_hr, bws_size, dt, ws=None,
                     packed=False):
    """ws: the caller's backward workspace (None: the thread's scratch); packed: it holds the
    weights an earlier backward with the same dims packed (Options::weights_packed)."""
    if mode == "LSTM":
        F._backward_call("lstm", None, _dims(mode, dims), (0, 0, bws_size), False,
                         {"x": x, "w_ih": w_ih, "w_hh": w_hh, "w_peep": w_peep, "w_hr": w_hr,
                          "cache": cache, "dh_n": dh_n, "dc_n": dc_n, "dx": dx, "dh0": dh0,
                          "dc0": dc0, "dw_ih": dw_ih, "dw_hh": dw_hh, "db_ih": db_ih,
                          "db_hh": db_hh, "dw_peep": dw_peep, "dw_hr": dw_hr},
                         F._FP32, ws, packed)
    else:
        F._backward_call(_KINDS[mode], _formula(mode, flag), dims[:4], (0, 0, bws_size), False,
                         {"x": x, "w_ih": w_ih, "w_hh": w_hh, "cache": cache, "dh_n": dh_n,
                          "dx": dx, "dh0": dh0, "dw_ih": dw_ih, "dw_hh": dw_hh, "db_ih": db_ih,
                          "db_hh": db_hh}, F._FP32, ws, packed)


_ROUTES: dict = {}   # (mode, flag, dims) -> (kind, formula, the kernel's dims)


def _route(mode, flag, dims):
    """(kind, formula, the kernel's dims) of a cell's kernel call, remembered: asked at every
    step."""
    r = _ROUTES.get((mode, flag, dims))
    if r is None:
        if len(_ROUTES) >= 4096:
            _ROUTES.clear()
        r = _ROUTES[mode, flag, dims] = (_KINDS[mode], _formula(mode, flag), _dims(mode, dims))
    return r


def _sizes(mode, dims):
    return F._sizes(_KINDS[mode], _dims(mode, dims))


class _PackedStore(threading.local):
    """Per thread: the forward workspace whose start holds the packed weights, and the key of
    the weights packed there; likewise the backward workspace (bws, bkey). Pickled and copied
    as a fresh, empty store."""

    def __init__(self):
        self.ws = None
        self.key = None
        self.bws = None
        self.bkey = None

    def __reduce__(self):
        return _PackedStore, ()


def _ready(a, dt, shape):
    """a is a plain C-contiguous ndarray of dtype dt and shape `shape`: usable as it is (else
    _CellBase._check_array checks it, raising or copying)."""
    return type(a) is np.ndarray and a.dtype == dt and a.shape == shape and a.flags.c_contiguous


# The per-step path in C++ (python/bindings/cell_step.cc): one call per forward or backward
# step checks the step's arrays, allocates the outputs and runs the kernel on the cell's plan
# (its dims, workspaces with the packed weights, scratch, training caches); it returns None,
# having done nothing, for anything but the common case (a strided or foreign-dtype array, a
# wrong shape or state structure, the plan busy in another thread), and the Python path below
# then copies or raises the argument's clear error.
_cell_forward = _core.cell_forward
_cell_backward = _core.cell_backward
_KIND_NUMBER = {"LSTM": 0, "GRU": 1, "RNN": 2}
# Deferred weight gradients (python/bindings/cell_step.cc, Defer): at batch <= 8 the C++
# path's backward steps hand their weight-gradient products to the plan, which applies those of
# up to 32 / N steps (at least 8) in one pass over each gradient, bit for bit as if added at
# each step. False (tests, benchmarks): the cells made while it is False add them at each step.
_DEFER = True
_threads = F._threads
_get_ident = threading.get_ident
_weakref = weakref.ref

# The gradient lock. A backward step adds into its Parameters' grad arrays with the GIL released
# (and a plan applies its deferred terms likewise), so two threads stepping cells that share a
# Parameter would lose each other's additions. Every addition into a cell's gradients (a
# backward step, a flush of deferred terms) holds this lock: the cells' backward steps take
# turns across threads (their forward steps do not). One lock, reentrant: a backward reading a
# Parameter.grad applies pending terms under it, and no two locks can wait for each other.
# (Striped per-Parameter locks cost ~1.5 us a training step at H = 64, N = 1: 15 %.)
_GRAD_LOCK = threading.RLock()
_grad_acquire, _grad_release = _GRAD_LOCK.acquire, _GRAD_LOCK.release   # (half a `with`'s cost)


class _CellBase(Module):
    _mode = ""

    def __init__(self, input_size, hidden_size, bias=True, *, proj_size=0, peepholes=False,
                 variant="reset_after", nonlinearity="tanh", dtype="float32", seed=None):
        super().__init__()
        fn = type(self).__name__
        input_size = _positive_int(fn, "input_size", input_size)
        hidden_size = _positive_int(fn, "hidden_size", hidden_size)
        for name, v in (("bias", bias), ("peepholes", peepholes)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{fn}: {name} must be a bool, got {type(v).__name__}")
        proj_size = _positive_int(fn, "proj_size", proj_size, minimum=0)
        if proj_size >= hidden_size:
            raise ValueError(f"{fn}: proj_size must be < hidden_size = {hidden_size} (PyTorch's "
                             f"rule: the projection narrows h), got {proj_size}")
        if variant not in ("reset_after", "reset_before"):
            raise ValueError(f"{fn}: variant must be 'reset_after' or 'reset_before', "
                             f"got {variant!r}")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"{fn}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        dt = _dtype(fn, dtype)
        seed = _seed(fn, seed)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bool(bias)
        self.proj_size, self.peepholes = proj_size, bool(peepholes)
        self.__dict__["_variant"], self.__dict__["_nonlinearity"] = variant, nonlinearity
        self.dtype = dt
        self.state_size = proj_size or hidden_size
        self._flag = (variant == "reset_after") if self._mode == "GRU" else \
            (nonlinearity == "relu")
        self._checked = False   # the Parameters checked since one was set (_check_parameters)
        self._tape_thread = None   # the thread whose training steps are on the tape
        G, H, R, C = _GATES[self._mode], hidden_size, self.state_size, input_size
        rng = np.random.default_rng(seed)
        k = 1.0 / math.sqrt(H)
        uniform = lambda *shape: rng.uniform(-k, k, shape).astype(dt)  # noqa: E731
        self.weight_ih = Parameter(uniform(G * H, C))
        self.weight_hh = Parameter(uniform(G * H, R))
        if self.bias:
            self.bias_ih = Parameter(uniform(G * H))
            self.bias_hh = Parameter(uniform(G * H))
        if proj_size:
            self.weight_hr = Parameter(uniform(R, H))
        if self.peepholes:
            self.weight_peep = Parameter(uniform(3, H))
        self._plan = None       # the C++ per-step path's plan (_new_plan)
        self._defer = _DEFER    # deferred weight gradients (_DEFER), for this cell's life
        self.reuse_packed_weights = True
        self._version = 0
        self._forwards = 0      # forward calls so far: a backward after a forward packs again
        self._store = _PackedStore()
        self._tape = []
        self._caches = []       # cache arrays reused by tape depth
        self._y = {}            # per N: scratch for the kernel's y [1, N, R]
        self._sizes_by_n = {}

    # -- packed weights --------------------------------------------------------------------------
    @property
    def reuse_packed_weights(self) -> bool:
        """Whether steps reuse the weights packed by an earlier step (default True); False:
        every step packs them."""
        return self.__dict__["_reuse"]

    @reuse_packed_weights.setter
    def reuse_packed_weights(self, value) -> None:
        if self.__dict__.get("_plan") is not None:
            self.flush_grads()   # (the plan dropped applies them too, but without the locks)
        self.__dict__["_reuse"] = bool(value)
        self.__dict__["_plan"] = None

    # -- the formula: GRU variant, RNN nonlinearity -----------------------------------------------
    @property
    def variant(self) -> str:
        """GRU: 'reset_after' (torch) or 'reset_before'; may be set between sequences."""
        return self.__dict__["_variant"]

    @variant.setter
    def variant(self, value) -> None:
        self._set_formula("variant", value, ("reset_after", "reset_before"), "GRU")

    @property
    def nonlinearity(self) -> str:
        """RNN: 'tanh' or 'relu'; may be set between sequences (torch.nn.RNNCell reads it at
        every forward)."""
        return self.__dict__["_nonlinearity"]

    @nonlinearity.setter
    def nonlinearity(self, value) -> None:
        self._set_formula("nonlinearity", value, ("tanh", "relu"), "RNN")

    def _set_formula(self, name, value, allowed, mode) -> None:
        """Sets the GRU variant or RNN nonlinearity after construction: checked, used from the
        next forward on (the plan is made again with it) and kept in config(). Refused while
        steps recorded with the old formula wait for backward (their backward needs it)."""
        fn = type(self).__name__
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{fn}: {name} must be " + " or ".join(map(repr, allowed))
                             + f", got {value!r}")
        d = self.__dict__
        if value == d[f"_{name}"]:
            return
        if self._mode == mode:
            if d["_tape"]:
                raise RuntimeError(f"{fn}: cannot change {name} while {len(d['_tape'])} "
                                   f"recorded step(s) wait for backward (their backward needs "
                                   f"the {name} they ran with): finish the backward or call "
                                   f"clear_tape() first")
            if d["_plan"] is not None:
                self.flush_grads()
            d["_flag"] = value in ("reset_after", "relu")
            d["_plan"] = None   # (the plan's kernel flag is fixed)
            d["_version"] += 1
        d[f"_{name}"] = value
        args = d.get("_init_args")
        if args is not None and name in args:
            args[name] = value   # config() rebuilds the cell as it now runs

    # -- precision ---------------------------------------------------------------------------------
    @property
    def compute(self) -> str:
        """Always "float32": a single-step cell runs its own dtype's kernels (float32 or
        float64); it has no bfloat16 path (issue 17's bf16 training covers the LSTM / GRU /
        RNN layers, which run whole sequences)."""
        return "float32"

    @compute.setter
    def compute(self, precision) -> None:
        # A plain attribute here was silently accepted and changed nothing (set_compute refuses
        # cells): refused, so that no one trains believing the cell runs bf16.
        if isinstance(precision, str) and precision == "float32":
            return   # what it runs
        fn = type(self).__name__
        raise AttributeError(f"{fn}.compute = {precision!r}: a single-step cell has no bfloat16 "
                             f"(or other low-precision) path, it runs in its dtype only; for bf16 "
                             f"training use the sequence layer, fusedrnn.{fn[:-4]}(..., "
                             f"compute='bfloat16')")

    # -- the Parameters: checked, their gradient locks --------------------------------------------
    def __setattr__(self, name, value) -> None:
        if name in self._ORDER and "_checked" in self.__dict__:
            if isinstance(value, Parameter) and self.__dict__.get("_plan") is not None:
                self.flush_grads()   # pending terms into the Parameter being replaced
            self.__dict__["_checked"] = False   # checked again at the next step
        super().__setattr__(name, value)

    def __delattr__(self, name) -> None:
        if name in self._ORDER and "_checked" in self.__dict__:
            if self.__dict__.get("_plan") is not None:
                self.flush_grads()
            self.__dict__["_checked"] = False
        super().__delattr__(name)

    def _expected_parameters(self):
        """{name: (shape, how the shape reads)} of the Parameters the kernel uses."""
        G, H, R, C = _GATES[self._mode], self.hidden_size, self.state_size, self.input_size
        g = f"{G}*hidden_size" if G > 1 else "hidden_size"
        r = "proj_size" if self.proj_size else "hidden_size"
        want = {"weight_ih": ((G * H, C), f"{g}, input_size"),
                "weight_hh": ((G * H, R), f"{g}, {r}")}
        if self.bias:
            want["bias_ih"] = want["bias_hh"] = ((G * H,), g)
        if self._mode == "LSTM":
            if self.peepholes:
                want["weight_peep"] = ((3, H), "3, hidden_size")
            if self.proj_size:
                want["weight_hr"] = ((R, H), "proj_size, hidden_size")
        return want

    def _check_parameters(self, fn):
        """Checks that the cell holds the Parameters its kernel reads, of the cell's shapes and
        dtype (one may have been replaced or deleted since the last step), raising before any
        work (checked again after a Parameter is set or deleted)."""
        fn = f"{type(self).__name__}.{fn}"
        params = self._parameters
        made = {"weight_peep": "peepholes=False", "weight_hr": "proj_size=0",
                "bias_ih": "bias=False", "bias_hh": "bias=False"}
        want = self._expected_parameters()
        dt = np.dtype(self.dtype)
        names = self._ORDER if self._mode == "LSTM" else self._ORDER[:4]
        for name in names:
            p = params.get(name)
            if name not in want:
                if p is not None:
                    raise ValueError(f"{fn}: the cell was made with {made[name]}, so it has no "
                                     f"{name}, but one was set (it would be used silently): "
                                     f"delete it, or make a cell with it")
                continue
            shape, how = want[name]
            spec = f"a Parameter of shape {list(shape)} ([{how}]) and dtype {dt.name}"
            if p is None:
                raise ValueError(f"{fn}: {name} is missing (deleted or never set): the cell "
                                 f"needs {spec}")
            if p.dtype != dt:
                raise TypeError(f"{fn}: {name} must be {spec}, got dtype {p.dtype.name}")
            if p.shape != shape:
                raise ValueError(f"{fn}: {name} must be {spec}, got shape {list(p.shape)}")
        self.__dict__["_checked"] = True

    def flush_grads(self) -> None:
        """Applies the weight-gradient terms the cell deferred (batch N <= 8) to its
        Parameters' grad arrays now. A backward that leaves steps on the tape (truncated BPTT:
        backward through only the last k steps) leaves them pending; reading ``p.grad`` applies
        them, but an array obtained before (a view of one flat buffer for an all-reduce or a
        fused optimiser) is complete only after this call or a backward that empties the
        tape."""
        plan = self.__dict__.get("_plan")
        if plan is None:
            return
        # Under the lock, always: a backward step in flight in another thread holds it from
        # before it marks the Parameters (Parameter.grad has just cleared the marker, calling
        # this) until its terms are counted; waiting for it, then applying the plan's batch
        # (even an empty one, whose marks it drops), keeps every term reachable through grad.
        with _GRAD_LOCK:
            _core.cell_flush(plan)

    def _new_plan(self):
        """The C++ per-step path's plan of this cell (made again when reuse_packed_weights is
        set, after release_buffers() and in a copy)."""
        plan = self.__dict__["_plan"] = _core.cell_plan(
            _KIND_NUMBER[self._mode], self._flag, self.dtype, self.input_size, self.hidden_size,
            self.proj_size, self._parameters, self._reuse,
            owner=weakref.ref(self) if self.__dict__.get("_defer", True) else None,
            lock=_GRAD_LOCK)
        return plan

    def _flush_grads(self) -> None:
        """Applies the weight-gradient terms the plan deferred (Parameter.grad calls it)."""
        self.flush_grads()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_plan"] = None   # (a capsule: not copied; the copy makes its own)
        state["_tape_thread"] = None   # (any thread may train the copy)
        return state

    def weights_changed(self) -> None:
        """Tell the cell its weights were written in place: the next forward packs them again."""
        self._version += 1

    _ORDER = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_peep", "weight_hr")

    def _weights(self):
        w_ih, w_hh, b_ih, b_hh, w_peep, w_hr = map(self._parameters.get, self._ORDER)
        return (None if w_ih is None else w_ih.data, None if w_hh is None else w_hh.data,
                None if b_ih is None else b_ih.data,
                None if b_hh is None else b_hh.data, None if w_peep is None else w_peep.data,
                None if w_hr is None else w_hr.data)

    def _step_sizes(self, N):
        """(dims, cache size, forward workspace size, backward workspace size) for batch N,
        kept per N."""
        s = self._sizes_by_n.get(N)
        if s is None:
            dims = (1, N, self.input_size, self.hidden_size, self.proj_size)
            s = self._sizes_by_n[N] = (dims,) + tuple(_sizes(self._mode, dims))
        return s

    def load_state_dict(self, state_dict, strict: bool = True):
        result = super().load_state_dict(state_dict, strict)
        self._version += 1
        return result

    def train(self, mode: bool = True):
        mode = _train_mode(type(self).__name__, mode)   # (checked before the tape is dropped)
        self._version += 1
        self._tape.clear()
        self.__dict__["_tape_thread"] = None
        return super().train(mode)

    def clear_tape(self) -> None:
        """Drops the recorded steps not yet differentiated (any thread may then train the
        cell). Deferred weight-gradient terms stay pending: see flush_grads()."""
        self._tape.clear()
        self.__dict__["_tape_thread"] = None

    def release_buffers(self) -> None:
        """Frees the workspaces and caches kept between calls, and with them the tape: steps
        recorded and not yet differentiated are dropped (as clear_tape()). Deferred
        weight-gradient terms are applied first."""
        self.flush_grads()
        self._sizes_by_n.clear()
        self._tape.clear()
        self.__dict__["_tape_thread"] = None
        self._caches.clear()
        self._y.clear()
        self._store = _PackedStore()
        self.__dict__["_plan"] = None

    # -- forward -----------------------------------------------------------------------------------
    def _check_array(self, fn, name, a, shape):
        """a, checked (a C-contiguous copy if it is strided); fn: the method's name, "forward"
        or "backward" (or the full f"{type(self).__name__}.forward")."""
        if "." not in fn:
            fn = f"{type(self).__name__}.{fn}"
        if not isinstance(a, np.ndarray) or isinstance(a, np.ma.MaskedArray):
            raise TypeError(f"{fn}: {name} must be a numpy array of shape {list(shape)}, "
                            f"got {type(a).__name__}")
        if a.dtype != self.dtype:
            raise TypeError(f"{fn}: {name} must have dtype {self.dtype} (the cell's dtype), "
                            f"got {a.dtype}")
        if a.shape != shape:
            raise ValueError(f"{fn}: {name} must have shape {list(shape)}, got {list(a.shape)}")
        return a if a.flags.c_contiguous else np.ascontiguousarray(a)

    def forward(self, x, state=None):
        d = self.__dict__   # (not through Module.__setattr__)
        if not d["_checked"]:   # a Parameter set or deleted since the last step
            self._check_parameters("forward")
        training = d["training"]
        if training:
            # One tape a cell: a second thread's training steps would interleave with the
            # first's and each backward would differentiate the other's steps.
            me = _get_ident()
            owner = d["_tape_thread"]
            if owner != me:
                if owner is not None:
                    raise RuntimeError(
                        f"{type(self).__name__}.forward: another thread's training steps are "
                        f"on this cell's tape ({len(d['_tape'])} not yet differentiated); a "
                        f"cell records one sequence at a time: train a copy of the cell per "
                        f"thread (copy.deepcopy; share Parameters by assigning them), or call "
                        f"clear_tape() once that thread is done")
                d["_tape_thread"] = me
        d["_forwards"] += 1
        plan = d["_plan"]
        if plan is None:
            plan = self._new_plan()
        r = _cell_forward(plan, x, state, d["_tape"] if training else None, d["_version"],
                          _threads())
        if r is not None:
            return r
        try:
            return self._forward_python(x, state)
        except BaseException:
            if training and not d["_tape"]:
                d["_tape_thread"] = None
            raise

    # cell(x, state) calls forward directly, without Module.__call__'s argument packing (a
    # tenth of a small step); a subclass's own forward is its __call__ (__init_subclass__)
    __call__ = forward

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "forward" in cls.__dict__ and "__call__" not in cls.__dict__:
            cls.__call__ = cls.__dict__["forward"]

    def _forward_python(self, x, state):
        """forward's path for what the C++ path does not take: checks (raising the argument's
        error), copies strided or foreign-layout arrays, runs the step."""
        fn = "forward"   # the messages' f"{type(self).__name__}.forward", built on error only
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != self.input_size \
                or x.shape[0] < 1:
            fn = f"{type(self).__name__}.forward"
            if isinstance(x, np.ndarray):
                raise ValueError(f"{fn}: x must have shape [N, C] with C = input_size = "
                                 f"{self.input_size} and N >= 1, got {list(x.shape)}")
            raise TypeError(f"{fn}: x must be a numpy array of shape [N, {self.input_size}], "
                            f"got {type(x).__name__}")
        N = x.shape[0]
        dt = self.dtype
        if type(x) is not np.ndarray or x.dtype != dt or not x.flags.c_contiguous:
            x = self._check_array(fn, "x", x, x.shape)
        H, R, lstm = self.hidden_size, self.state_size, self._mode == "LSTM"
        h0 = c0 = None
        if state is not None:
            if lstm:
                if not isinstance(state, (tuple, list)) or len(state) != 2:
                    raise TypeError(f"{type(self).__name__}.forward: state must be a tuple "
                                    f"(h [N, {R}], c [N, {H}]), got {type(state).__name__}")
                h0, c0 = state
                if not _ready(h0, dt, (N, R)):
                    h0 = self._check_array(fn, "state[0] (h)", h0, (N, R))
                if not _ready(c0, dt, (N, H)):
                    c0 = self._check_array(fn, "state[1] (c)", c0, (N, H))
            else:
                h0 = state if _ready(state, dt, (N, R)) else \
                    self._check_array(fn, "state", state, (N, R))
        dims, cache_size, ws_size, _ = self._sizes_by_n.get(N) or self._step_sizes(N)
        w_ih, w_hh, b_ih, b_hh, w_peep, w_hr = self._weights()

        store = self._store
        key = _packing_key(map(self._parameters.get, self._ORDER), self._version)
        ws = store.ws
        packed = self._reuse and ws is not None and ws.size >= ws_size \
            and _same_packing(store.key, key)
        if ws is None or ws.size < ws_size:
            ws = store.ws = np.empty(ws_size, self.dtype)
        store.key = key if self._reuse else None

        training = self.training
        cache = None
        if training:
            if state is None:
                self._tape.clear()
            depth = len(self._tape)
            if depth < len(self._caches) and self._caches[depth].size == cache_size:
                cache = self._caches[depth]
            else:
                cache = np.empty(cache_size, self.dtype)
                if depth < len(self._caches):
                    self._caches[depth] = cache
                else:
                    self._caches.append(cache)
        y = self._y.get(N)
        if y is None:
            y = self._y[N] = np.empty((1, N, R), dt)
        h_n = np.empty((N, R), dt)
        c_n = np.empty((N, H), dt) if lstm else None
        x3 = x.reshape(1, N, self.input_size)
        if ws.size != ws_size:
            ws = ws[:ws_size]
        # (the call _kernel_forward makes, without its argument shuffling)
        kind, formula, kdims = _route(self._mode, self._flag, dims)
        if lstm:
            F._forward_call(kind, None, kdims, None, False,
                            {"x": x3, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh,
                             "h0": h0, "c0": c0, "w_peep": w_peep, "w_hr": w_hr, "y": y,
                             "h_n": h_n, "c_n": c_n, "cache": cache}, ws, packed)
        else:
            F._forward_call(kind, formula, kdims, None, False,
                            {"x": x3, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh,
                             "h0": h0, "y": y, "h_n": h_n, "cache": cache}, ws, packed)
        if training:   # the step's record, as the C++ path writes it: (a copy of x, cache,
            # has_state): a caller refilling one input array step after step changes nothing
            self._tape.append((np.array(x), cache, state is not None))
        return (h_n, c_n) if lstm else h_n

    # -- backward ----------------------------------------------------------------------------------
    def backward(self, d_h, d_c=None, *, input_grad=True):
        """Differentiates the latest undifferentiated step: returns (d_x [N, C], d_state), d_state
        shaped like the state that step was given (None if it was None); adds the parameter
        gradients into Parameter.grad. ``input_grad=False``: d_x is None and not computed (the
        input is data, as a torch input without requires_grad): the kernel skips that product,
        a quarter of the backward's multiply-adds when C = H."""
        if input_grad is not True and input_grad is not False:
            input_grad = F._check_flag(f"{type(self).__name__}.backward", "input_grad",
                                       input_grad)
        d = self.__dict__
        tape = d["_tape"]
        if not tape:
            return self._backward_python(d_h, d_c, input_grad)   # (raises)
        if not d["_checked"]:   # a Parameter set or deleted since the last step
            self._check_parameters("backward")
        params = d["_parameters"]
        # The kernel adds into the grad arrays with the GIL released: hold the lock.
        _grad_acquire()
        try:
            # another cell's deferred terms on a shared weight land first, as the steps were
            # made (the C++ path does so itself at N <= 8, not where it adds at once)
            me = _weakref(self)   # (CPython keeps one plain weakref an object: the marker)
            p, q = params["weight_ih"], params["weight_hh"]
            if p._pending is not None and p._pending is not me:
                p.grad   # noqa: B018
            if q._pending is not None and q._pending is not me:
                q.grad   # noqa: B018
            if isinstance(d_h, tuple) and self._mode == "LSTM" and d_c is None:
                if len(d_h) != 2:
                    raise TypeError(f"{type(self).__name__}.backward: d_h must be an array or a "
                                    f"tuple (d_h, d_c)")
                d_h, d_c = d_h
            plan = d["_plan"]
            if plan is None:
                plan = self._new_plan()
            r = _cell_backward(plan, tape[-1], d_h, d_c, d["_version"], d["_forwards"],
                               _threads(), input_grad)
            if r is None:
                r = self._backward_python(d_h, d_c, input_grad)
            else:
                tape.pop()
                # an optimiser step may follow: pack again at the next forward
                d["_version"] += 1
                dx, dh0, dc0 = r
                r = dx, (None if dh0 is None else (dh0, dc0) if dc0 is not None else dh0)
            if not tape:   # the loop's last backward: its deferred weight gradients now
                _core.cell_flush(plan)
                d["_tape_thread"] = None
            return r
        finally:
            _grad_release()

    def _backward_python(self, d_h, d_c, input_grad=True):
        """backward's path for what the C++ path does not take (as _forward_python)."""
        fn = "backward"   # the messages' f"{type(self).__name__}.backward", built on error only
        if not self._tape:
            fn = f"{type(self).__name__}.backward"
            raise RuntimeError(f"{fn}: no recorded step left to differentiate (call forward in "
                               f"train mode first; backward runs once per step, in reverse)")
        if isinstance(d_h, tuple) and self._mode == "LSTM" and d_c is None:
            if len(d_h) != 2:
                raise TypeError(f"{type(self).__name__}.backward: d_h must be an array or a "
                                f"tuple (d_h, d_c)")
            d_h, d_c = d_h
        step_x, step_cache, has_state = self._tape[-1]
        N, H, R, lstm = step_x.shape[0], self.hidden_size, self.state_size, self._mode == "LSTM"
        dt = self.dtype
        # the arrays the kernel adds into, before the step leaves the tape (a grad made
        # read-only in place, `p.grad.flags.writeable = False`, passes Parameter's own check)
        for name in self._ORDER:
            p = self._parameters.get(name)
            if p is not None and not p.grad.flags.writeable:
                raise ValueError(f"{type(self).__name__}.backward: {name}.grad is read-only "
                                 f"(its writeable flag was cleared); the cell adds into it: give "
                                 f"it a writeable array (p.grad = p.grad.copy()); the step stays "
                                 f"on the tape")
        dh_n = d_h if d_h is None or _ready(d_h, dt, (N, R)) else \
            self._check_array(fn, "d_h", d_h, (N, R))
        dc_n = None
        if d_c is not None:
            if not lstm:
                raise ValueError(f"{type(self).__name__}.backward: d_c is for LSTMCell only")
            dc_n = d_c if _ready(d_c, dt, (N, H)) else self._check_array(fn, "d_c", d_c, (N, H))
        self._tape.pop()
        dims, _, _, bws = self._sizes_by_n.get(N) or self._step_sizes(N)
        w_ih, w_hh, _, _, w_peep, w_hr = self._weights()
        # The backward of the previous step of this loop packed the same weights into this
        # thread's backward workspace unless a forward ran since, or the weights changed.
        store = self._store
        params = tuple(map(self._parameters.get, self._ORDER))
        key = _packing_key(params, self._version, self._forwards, N)
        ws = store.bws
        packed = self._reuse and ws is not None and ws.size == bws \
            and _same_packing(store.bkey, key)
        if ws is None or ws.size != bws:
            ws = store.bws = np.empty(bws, self.dtype)
        # an optimiser step may follow: pack again at the next forward (not through
        # Module.__setattr__)
        self.__dict__["_version"] += 1
        store.bkey = None
        p_ih, p_hh, p_b_ih, p_b_hh, p_peep, p_hr = params
        dx = np.empty((1, N, self.input_size), dt) if input_grad else None
        dh0 = np.empty((N, R), dt) if has_state else None
        dc0 = np.empty((N, H), dt) if has_state and lstm else None
        _kernel_backward(self._mode, self._flag, dims, step_x.reshape(1, N, self.input_size),
                         w_ih, w_hh, w_peep, w_hr, step_cache, dh_n, dc_n, dx, dh0, dc0,
                         self.weight_ih.grad,
                         self.weight_hh.grad, None if p_b_ih is None else p_b_ih.grad,
                         None if p_b_hh is None else p_b_hh.grad,
                         None if p_peep is None else p_peep.grad,
                         None if p_hr is None else p_hr.grad, bws, dt, ws, packed)
        if self._reuse:
            store.bkey = _packing_key(params, self._version, self._forwards, N)
        d_state = None if not has_state else ((dh0, dc0) if lstm else dh0)
        return (None if dx is None else dx.reshape(N, self.input_size)), d_state

    def extra_repr(self) -> str:
        """torch's form (sizes, then the arguments that differ from their defaults)."""
        parts = [str(self.input_size), str(self.hidden_size)]
        if not self.bias:
            parts.append("bias=False")
        if self.proj_size:
            parts.append(f"proj_size={self.proj_size}")
        if self.peepholes:
            parts.append("peepholes=True")
        if self._mode == "GRU" and self.variant != "reset_after":
            parts.append(f"variant={self.variant!r}")
        if self._mode == "RNN" and self.nonlinearity != "tanh":
            parts.append(f"nonlinearity={self.nonlinearity!r}")
        if np.dtype(self.dtype) != np.float32:
            parts.append(f"dtype={np.dtype(self.dtype).name}")
        return ", ".join(parts)


@register_module
class LSTMCell(_CellBase):
    """LSTM cell (torch.nn.LSTMCell's arguments and names; gates i, f, g, o) with optional
    projection (``proj_size``: h = (o*tanh(c)) weight_hrᵀ) and peepholes (``weight_peep``
    [3, H], rows p_i, p_f, p_o; o sees the new c)."""
    _mode = "LSTM"

    def __init__(self, input_size, hidden_size, bias=True, *, proj_size=0, peepholes=False,
                 dtype="float32", seed=None):
        super().__init__(input_size, hidden_size, bias, proj_size=proj_size, peepholes=peepholes,
                         dtype=dtype, seed=seed)
        self._record(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias,
                     proj_size=self.proj_size, peepholes=self.peepholes, dtype=self.dtype,
                     seed=seed)


@register_module
class GRUCell(_CellBase):
    """GRU cell (torch.nn.GRUCell's arguments and names; gates r, z, n); variant
    'reset_after' (torch) or 'reset_before' (Keras reset_after=False, TF1 GRUCell)."""
    _mode = "GRU"

    def __init__(self, input_size, hidden_size, bias=True, *, variant="reset_after",
                 dtype="float32", seed=None):
        super().__init__(input_size, hidden_size, bias, variant=variant, dtype=dtype, seed=seed)
        self._record(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias,
                     variant=self.variant, dtype=self.dtype, seed=seed)


@register_module
class RNNCell(_CellBase):
    """Elman RNN cell (torch.nn.RNNCell's arguments and names): h' = tanh or relu(W_ih x + b_ih
    + W_hh h + b_hh)."""
    _mode = "RNN"

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", *,
                 dtype="float32", seed=None):
        super().__init__(input_size, hidden_size, bias, nonlinearity=nonlinearity, dtype=dtype,
                         seed=seed)
        self._record(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias,
                     nonlinearity=self.nonlinearity, dtype=self.dtype, seed=seed)
