"""Functional API over the C++ kernels: ``lstm_forward``, ``lstm_backward``, ``gru_*``, ``rnn_*``.

Same names, signatures and results as :mod:`fusedrnn.reference`, the NumPy specification.
Every argument is checked before any work starts; nothing is silently copied or cast (the only
conversion is ``lengths``, a small integer vector, to int64). Outputs and gradients are fresh
arrays. The cache returned by a training forward keeps references to ``x`` and the weights:
modifying them in place before ``*_backward`` gives wrong gradients, as in any autograd system.
"""
from __future__ import annotations

import numbers
import os
import sys
import threading
from typing import Optional

import numpy as np

from . import _core, _openmp_env
from ._types import GruGrads, GruOutput, LstmGrads, LstmOutput, RnnGrads, RnnOutput

__all__ = [
    "lstm_forward", "lstm_backward", "gru_forward", "gru_backward", "rnn_forward", "rnn_backward",
    "set_num_threads", "get_num_threads", "set_adaptive_threads", "get_adaptive_threads",
]

_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
_SIZES = {"lstm": _core.lstm_sizes, "gru": _core.gru_sizes, "rnn": _core.rnn_sizes}
_num_threads: Optional[int] = None  # None: OpenMP's default
_MAX_THREADS = 4096


def set_num_threads(n: int) -> None:
    """Set the number of threads every kernel call uses (results do not depend on it)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= _MAX_THREADS:
        raise ValueError(f"set_num_threads: n must be an integer in [1, {_MAX_THREADS}], "
                         f"got {n!r}")
    _num_threads = int(n)


def get_num_threads() -> int:
    """The number of threads kernel calls use: set_num_threads(n), else OMP_NUM_THREADS, else the
    CPUs the process's affinity mask and cgroup CPU quota allow (fusedrnn/_openmp_env.py); 1 in
    a process forked after a kernel call ran on several threads (OpenMP's thread pool does not
    survive fork: use multiprocessing's "spawn" or "forkserver" for parallel workers)."""
    global _default_threads
    if _forked_child:
        return 1
    if _num_threads is not None:
        return _num_threads
    if _default_threads is None:
        # (OMP_NUM_THREADS=99999 counts as the most a call takes: OpenMP would try to start
        # them all, and the kernels refuse more than _MAX_THREADS)
        _default_threads = min(_MAX_THREADS, _openmp_env.default_threads(
            int(_core.build_info()["openmp_max_threads"])))
    return _default_threads


_default_threads: Optional[int] = None


# fork(): libgomp's thread pool does not survive it. A child forked after a kernel call ran on
# several threads (multiprocessing's default start method on Linux) would wait forever in its
# first parallel kernel call, so such a child runs every kernel call on one thread.
_team_started = False   # a kernel call here ran on several threads
_forked_child = False   # this process was forked after that


def _threads() -> int:
    """The threads of the next kernel call: get_num_threads(), fewer while other processes keep
    the CPUs busy (set_adaptive_threads); one in a child forked after a multi-threaded call."""
    global _team_started
    n = _openmp_env.contention.cap(_num_threads or get_num_threads())
    if n > 1:
        if _forked_child:
            return 1
        _team_started = True
    return n


def _after_fork_in_child() -> None:
    global _forked_child
    # torch shares the process's one libgomp: a parent that ran a multi-threaded torch op has a
    # thread pool that does not survive fork() either (the child's first parallel call hung)
    torch = sys.modules.get("torch")
    if _team_started or (torch is not None and getattr(torch, "get_num_threads", None)
                         and torch.get_num_threads() > 1):
        _forked_child = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_adaptive_threads(enabled: bool) -> None:
    """Whether kernel calls run on fewer threads than get_num_threads() while other processes
    keep the CPUs busy (default: on; FUSEDRNN_ADAPTIVE_THREADS=0 / false / off / no turns it
    off, 1 / true / on / yes on, any case; it is read at the first kernel call or
    get_adaptive_threads(), and any other value is a ValueError naming it).
    Results never depend on it, only speed does (fusedrnn/_openmp_env.py)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_adaptive_threads: enabled must be a bool, got {enabled!r}")
    _openmp_env.contention.enabled = enabled


def get_adaptive_threads() -> bool:
    """Whether the thread count adapts to other processes' load (set_adaptive_threads; until
    called, FUSEDRNN_ADAPTIVE_THREADS: ValueError for a value that is neither on nor off)."""
    return _openmp_env.contention.enabled


_scratch = threading.local()


def _workspace(size: int, dtype) -> np.ndarray:
    """Scratch memory for one kernel call, kept per thread and dtype and reused across calls.

    Fresh memory costs a page fault per 4 KiB on first touch (a large share of a small call);
    a workspace holds nothing between calls, so reusing it is safe. Per thread, because calls
    from several threads run concurrently.
    """
    try:
        pool = _scratch.pool
    except AttributeError:
        pool = _scratch.pool = {}
    key = dtype.char if isinstance(dtype, np.dtype) else np.dtype(dtype).char
    buf = pool.get(key)
    if buf is None or buf.size < size:
        buf = pool[key] = np.empty(size, dtype)
    return buf if buf.size == size else buf[:size]


# ----------------------------------------------------------------------------------------------
# Argument checks: TypeError for a wrong type or dtype; ValueError for a wrong shape, order
# or value.

def _check_x(fn, x):
    if not isinstance(x, np.ndarray) or isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{fn}: x must be a numpy array of shape [T, N, C], "
                        f"got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{fn}: x must have dtype float32 or float64, got {x.dtype}")
    if x.ndim != 3:
        raise ValueError(f"{fn}: x must have shape [T, N, C] (3 dimensions), got shape {x.shape}")
    if min(x.shape) < 1:
        raise ValueError(f"{fn}: x must have T, N, C >= 1, got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{fn}: x must be C-contiguous (use np.ascontiguousarray)")


def _check(fn, name, a, shape, dtype, optional=True, where=""):
    """Check array argument `name` against `shape` (a tuple of ints) and `dtype`; `where`, if
    given, says in the shape message where the expected shape comes from."""
    if a is None:
        if optional:
            return
        raise ValueError(f"{fn}: {name} must not be None")
    if not isinstance(a, np.ndarray) or isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{fn}: {name} must be a numpy array of shape {list(shape)}, "
                        f"got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{fn}: {name} must have dtype {np.dtype(dtype)} (the dtype of x), "
                        f"got {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"{fn}: {name} must have shape {list(shape)}{where}, "
                         f"got {list(a.shape)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{fn}: {name} must be C-contiguous (use np.ascontiguousarray)")


def _check_weights(fn, kind, x, w_ih, w_hh, w_hr=None):
    """Returns T, N, C, H and P (0 without projection)."""
    if w_hr is not None:
        return _check_projected_weights(fn, x, w_ih, w_hh, w_hr)
    G = _GATES[kind]
    T, N, C = x.shape
    if not isinstance(w_hh, np.ndarray) or w_hh.ndim != 2:
        raise (TypeError if not isinstance(w_hh, np.ndarray) else ValueError)(
            f"{fn}: w_hh must be a numpy array of shape [{G}*H, H]")
    H = w_hh.shape[1]
    if H < 1 or w_hh.shape[0] != G * H:
        raise ValueError(f"{fn}: w_hh must have shape [{G}*H, H], got {list(w_hh.shape)}")
    _check(fn, "w_hh", w_hh, (G * H, H), x.dtype, optional=False)
    _check(fn, "w_ih", w_ih, (G * H, C), x.dtype, optional=False)
    return T, N, C, H, 0


def _proj_where(letters, P, H):
    """The shape message's note on where an expected shape comes from, with projection."""
    return f" ({letters} with H = {H}, P = {P} from w_hr [P, H])"


def _check_projected_weights(fn, x, w_ih, w_hh, w_hr):
    """LSTM with projection: w_hr [P, H] gives P and H; then w_hh [4H, P] and w_ih [4H, C]."""
    T, N, C = x.shape
    if not isinstance(w_hr, np.ndarray) or isinstance(w_hr, np.ma.MaskedArray):
        raise TypeError(f"{fn}: w_hr must be a numpy array of shape [P, H], "
                        f"got {type(w_hr).__name__}")
    if w_hr.ndim != 2:
        raise ValueError(f"{fn}: w_hr must have shape [P, H] (2 dimensions), "
                         f"got {list(w_hr.shape)}")
    P, H = w_hr.shape
    if P < 1 or H < 1:
        raise ValueError(f"{fn}: w_hr must have shape [P, H] with P, H >= 1, "
                         f"got {list(w_hr.shape)}")
    if P >= H:
        raise ValueError(f"{fn}: w_hr must have shape [P, H] with P < H (the projection "
                         f"narrows h, PyTorch's rule: proj_size < hidden_size), got "
                         f"{list(w_hr.shape)}")
    _check(fn, "w_hr", w_hr, (P, H), x.dtype, optional=False)
    _check(fn, "w_hh", w_hh, (4 * H, P), x.dtype, optional=False,
           where=_proj_where("[4*H, P]", P, H))
    _check(fn, "w_ih", w_ih, (4 * H, C), x.dtype, optional=False,
           where=_proj_where("[4*H, C]", P, H))
    return T, N, C, H, P


def _check_lengths(fn, lengths, N, T):
    if lengths is None:
        return None
    if isinstance(lengths, np.ndarray):
        arr = lengths
    elif isinstance(lengths, (list, tuple)):
        try:
            arr = np.asarray(lengths) if len(lengths) else np.zeros(0, np.int64)
        except ValueError:   # numpy's "inhomogeneous shape" of a ragged list
            raise ValueError(f"{fn}: lengths must be a flat list of {N} integers (one per "
                             f"sequence), got {list(lengths)!r}") from None
        if arr.dtype.kind in "iu" and any(isinstance(v, (bool, np.bool_)) for v in lengths):
            raise TypeError(f"{fn}: lengths must have an integer dtype, got a bool in "
                            f"{list(lengths)!r}")
    else:
        raise TypeError(f"{fn}: lengths must be an integer numpy array of shape [{N}], "
                        f"got {type(lengths).__name__}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{fn}: lengths must have an integer dtype, got {arr.dtype}")
    if arr.shape != (N,):
        raise ValueError(f"{fn}: lengths must have shape [{N}] (one per sequence), "
                         f"got {list(arr.shape)}")
    if N and (arr.min() < 0 or arr.max() > T):
        raise ValueError(f"{fn}: lengths must lie in [0, T={T}], got min {arr.min()} "
                         f"max {arr.max()}")
    # a copy, always: the training cache keeps it for backward, so a caller refilling one
    # lengths array batch after batch does not change an earlier batch's gradients
    return np.array(arr, dtype=np.int64, order="C")


def _check_flag(fn, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be a bool, got {type(value).__name__}")
    return bool(value)


class _Cache:
    """What backward needs from a training forward: the forward's arguments and the kernel cache."""

    __slots__ = ("kind", "dims", "reverse", "flag", "x", "w_ih", "w_hh", "w_peep", "w_hr",
                 "lengths", "buffer", "has_h0", "has_c0", "has_b_ih", "has_b_hh", "cell_clip",
                 "precision")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)

    def __repr__(self):
        T, N, C, H = self.dims[:4]
        P = f" P={self.dims[4]}" if len(self.dims) > 4 else ""
        return f"<fusedrnn {self.kind} cache T={T} N={N} C={C} H={H}{P} {self.x.dtype}>"


# ----------------------------------------------------------------------------------------------
# The one route from Python to the kernels, used by the functional API below and by the layers:
# _lengths (the lengths argument as an int64 array, checked where it enters), _formula (a GRU
# variant / RNN nonlinearity name -> the kernel's enum, once), _sizes, and _forward_call /
# _backward_call (one kernel call into the caller's buffers, the tensors as one dict; the thread
# count and the scratch workspace are the route's business). The layers and cells call them at
# every call: a small call's Python costs as much as its kernel, so this path avoids per-call
# keyword matching, enum lookups and size queries.

_lengths = _check_lengths
_FP32 = _core.Precision.float32
PRECISIONS = ("float32", "bfloat16", "int8")
_FORMULA = {"gru": ("variant", _core.GruVariant), "rnn": ("nonlinearity", _core.Nonlinearity)}
# the kernels' names in _core (looked up at each call: tests replace them to catch a call)
_FORWARD_NAME = {k: k + "_forward" for k in _GATES}
_BACKWARD_NAME = {k: k + "_backward" for k in _GATES}


# name -> enum, read once (a pybind11 enum's __members__ builds a new dict at every access)
_FORMULAS = {kind: dict(enum.__members__) for kind, (_, enum) in _FORMULA.items()}
_PRECISION_OF = dict(_core.Precision.__members__)


def _formula(kind, name):
    """The kernel's enum for a GRU variant / RNN nonlinearity name (None for the LSTM)."""
    return None if kind == "lstm" else _FORMULAS[kind][name]


_FLAGS = {"gru": ("variant", ("reset_after", "reset_before")),
          "rnn": ("nonlinearity", ("tanh", "relu"))}


def _checked_formula(fn, kind, name):
    """_formula of a caller's GRU variant / RNN nonlinearity name: ValueError naming it if it is
    not one of the cell's."""
    if kind != "lstm":
        what, names = _FLAGS[kind]
        if name not in names:
            raise ValueError(f"{fn}: {what} must be {names[0]!r} or {names[1]!r}, got {name!r}")
    return _formula(kind, name)


_known_sizes: dict = {}   # (kind, dims, precision) -> sizes: a pure function of them


def _sizes(kind, dims, precision=_FP32):
    """(cache, forward workspace, backward workspace) scalars; checks dims like the kernel. The
    forward workspace depends on the forward's precision (_core.Precision). Remembered per
    (kind, dims, precision) once the kernel accepted the dims (a layer asks at every call)."""
    key = (kind, dims, precision)
    try:
        return _known_sizes[key]
    except (KeyError, TypeError):  # TypeError: dims not hashable (the size query rejects it)
        pass
    sizes = _SIZES[kind](dims, precision=precision)
    if type(dims) is tuple and all(type(d) is int for d in dims):
        if len(_known_sizes) >= 4096:
            _known_sizes.clear()
        _known_sizes[key] = sizes
    return sizes


def _call(names, kind, formula, dims, reverse, tensors, workspace, packed, precision):
    """One kernel call, _core.<names[kind]>(dims, **tensors), tensors completed with the GRU
    variant / RNN nonlinearity, the workspace and the options (the thread count is the
    route's business)."""
    if formula is not None:
        tensors[_FORMULA[kind][0]] = formula
    tensors["workspace"] = workspace
    tensors["reverse"] = reverse
    tensors["num_threads"] = _threads()
    tensors["weights_packed"] = packed
    tensors["precision"] = precision
    getattr(_core, names[kind])(dims, **tensors)


def _forward_call(kind, formula, dims, sizes, reverse, tensors, workspace=None, packed=False,
                  precision=_FP32):
    """<kind>_forward of the kernels: tensors (one dict: a Python call with some twenty keyword
    arguments costs microseconds of keyword matching, as much as a small kernel call) are
    _core's keyword arguments (x, weights, optional inputs, lengths, outputs y, h_n[, c_n],
    cache); sizes = _sizes(kind, dims, precision). workspace None: this thread's scratch; else
    the caller's (``packed``: it holds the weights an earlier call packed,
    Options::weights_packed). precision: _core.Precision (_precision checks a name)."""
    if workspace is None:
        workspace = _workspace(sizes[1], tensors["x"].dtype)
    _call(_FORWARD_NAME, kind, formula, dims, reverse, tensors, workspace, packed, precision)


def _backward_call(kind, formula, dims, sizes, reverse, tensors, precision=_FP32,
                   workspace=None, packed=False):
    """<kind>_backward of the kernels into the caller's gradient buffers (parameter gradients
    accumulate); tensors as for _forward_call. precision: the forward's (bfloat16: the bf16
    training contract, sizes = _sizes(kind, dims, precision)). workspace None: this thread's
    scratch; else the caller's (``packed``: it holds the weights an earlier backward with the
    same dims packed, Options::weights_packed)."""
    if workspace is None:
        workspace = _workspace(sizes[2], tensors["x"].dtype)
    _call(_BACKWARD_NAME, kind, formula, dims, reverse, tensors, workspace, packed, precision)


def _precision(fn, precision, dtype, training=False):
    """The kernels' Precision for a precision name, after checking the request (bfloat16:
    float32 only; training or inference)."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"{fn}: precision must be one of {', '.join(map(repr, PRECISIONS))}, "
                         f"got {precision!r}")
    if precision == "float32":
        return _FP32
    if dtype != np.float32:
        raise ValueError(f"{fn}: precision={precision!r} needs float32 inputs and weights, got "
                         f"x of dtype {np.dtype(dtype).name}")
    if precision == "int8" and training:
        raise ValueError(f"{fn}: precision='int8' is inference only: pass training=False")
    return _core.Precision.__members__[precision]


# ----------------------------------------------------------------------------------------------

def _check_clip(fn, cell_clip, dtype=None):
    """The LSTM's cell_clip as a float (0 = none); its sign and finiteness are the kernel's to
    check. With ``dtype``: a positive clip must be a normal number of that dtype (a subnormal one
    would be flushed to 0 by the kernels, turning the clip off; one past the largest would be
    inf)."""
    if cell_clip is None:
        return 0.0
    if isinstance(cell_clip, (bool, np.bool_)) or not isinstance(cell_clip, numbers.Real):
        raise TypeError(f"{fn}: cell_clip must be None or a number, got "
                        f"{type(cell_clip).__name__}")
    clip = float(cell_clip)
    if dtype is not None and clip > 0 and np.isfinite(clip):   # (inf, NaN: the kernel says)
        fi = np.finfo(dtype)
        if not float(fi.tiny) <= clip <= float(fi.max):
            raise ValueError(f"{fn}: cell_clip must lie in [{float(fi.tiny):.4g}, "
                             f"{float(fi.max):.4g}] ({np.dtype(dtype).name}'s normal numbers), "
                             f"got {cell_clip!r}")
    return clip


def _forward(fn, kind, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_peep, lengths, reverse, training,
             flag, w_hr=None, cell_clip=None, precision="float32", new_cache=np.empty):
    """The forward of the public *_forward functions; new_cache(size, dtype): where a training
    call's cache buffer comes from (fusedrnn.torch reuses freed ones: fresh pages cost a fault
    each)."""
    _check_x(fn, x)
    T, N, C, H, P = _check_weights(fn, kind, x, w_ih, w_hh, w_hr)
    R = P or H   # width of h and y
    G = _GATES[kind]
    dt = x.dtype
    _check(fn, "b_ih", b_ih, (G * H,), dt)
    _check(fn, "b_hh", b_hh, (G * H,), dt)
    _check(fn, "h0", h0, (N, R), dt, where=_proj_where("[N, P]", P, H) if P else "")
    if kind == "lstm":
        _check(fn, "c0", c0, (N, H), dt)
        _check(fn, "w_peep", w_peep, (3, H), dt)
    lengths = _check_lengths(fn, lengths, N, T)
    reverse = _check_flag(fn, "reverse", reverse)
    training = _check_flag(fn, "training", training)
    cell_clip = _check_clip(fn, cell_clip, dt)
    prec = _precision(fn, precision, dt, training)

    dims = (T, N, C, H, P) if P else (T, N, C, H)
    sizes = _sizes(kind, dims, prec)
    y = np.empty((T, N, R), dt)
    h_n = np.empty((N, R), dt)
    buffer = new_cache(sizes[0], dt) if training else None
    tensors = dict(x=x, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, h0=h0, lengths=lengths, y=y,
                   h_n=h_n, cache=buffer)
    if kind == "lstm":
        c_n = np.empty((N, H), dt)
        tensors.update(c0=c0, w_peep=w_peep, w_hr=w_hr, c_n=c_n, cell_clip=cell_clip)
    _forward_call(kind, flag, dims, sizes, reverse, tensors, precision=prec)
    cache = None
    if training:
        cache = _Cache(kind=kind, dims=dims, reverse=reverse, flag=flag, x=x, w_ih=w_ih,
                       w_hh=w_hh, w_peep=w_peep, w_hr=w_hr, lengths=lengths, buffer=buffer,
                       has_h0=h0 is not None, has_c0=c0 is not None,
                       has_b_ih=b_ih is not None, has_b_hh=b_hh is not None,
                       cell_clip=cell_clip, precision=prec)
    if kind == "lstm":
        return LstmOutput(y, h_n, c_n, cache)
    return (GruOutput if kind == "gru" else RnnOutput)(y, h_n, cache)


def _backward(fn, kind, cache, dy, dh_n, dc_n=None, input_grad=True):
    input_grad = _check_flag(fn, "input_grad", input_grad)
    if cache is None:
        raise ValueError(f"{fn}: cache is None: the forward was run with training=False")
    if not isinstance(cache, _Cache):
        raise TypeError(f"{fn}: cache must be the cache returned by fusedrnn.{kind}_forward "
                        f"(training=True), got {type(cache).__name__}")
    if cache.kind != kind:
        raise ValueError(f"{fn}: cache comes from {cache.kind}_forward, not {kind}_forward")
    T, N, C, H = cache.dims[:4]
    P = cache.dims[4] if len(cache.dims) > 4 else 0
    R = P or H   # width of h and y
    G = _GATES[kind]
    dt = cache.x.dtype
    _check(fn, "dy", dy, (T, N, R), dt, where=_proj_where("[T, N, P]", P, H) if P else "")
    _check(fn, "dh_n", dh_n, (N, R), dt, where=_proj_where("[N, P]", P, H) if P else "")
    if kind == "lstm":
        _check(fn, "dc_n", dc_n, (N, H), dt)

    dx = np.empty((T, N, C), dt) if input_grad else None
    dh0 = np.empty((N, R), dt) if cache.has_h0 else None
    dw_ih = np.zeros((G * H, C), dt)
    dw_hh = np.zeros((G * H, R), dt)
    db_ih = np.zeros(G * H, dt) if cache.has_b_ih else None
    db_hh = np.zeros(G * H, dt) if cache.has_b_hh else None
    tensors = dict(x=cache.x, w_ih=cache.w_ih, w_hh=cache.w_hh, lengths=cache.lengths,
                   cache=cache.buffer, dy=dy, dh_n=dh_n, dx=dx, dh0=dh0, dw_ih=dw_ih, dw_hh=dw_hh,
                   db_ih=db_ih, db_hh=db_hh)
    if kind == "lstm":
        dc0 = np.empty((N, H), dt) if cache.has_c0 else None
        dw_peep = np.zeros((3, H), dt) if cache.w_peep is not None else None
        dw_hr = np.zeros((P, H), dt) if P else None
        tensors.update(w_peep=cache.w_peep, w_hr=cache.w_hr, dc_n=dc_n, dc0=dc0, dw_peep=dw_peep,
                       dw_hr=dw_hr, cell_clip=cache.cell_clip)
    _backward_call(kind, cache.flag, cache.dims, _sizes(kind, cache.dims, cache.precision),
                   cache.reverse, tensors, cache.precision)
    if kind == "lstm":
        return LstmGrads(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_hr)
    return (GruGrads if kind == "gru" else RnnGrads)(dx, dh0, dw_ih, dw_hh, db_ih, db_hh)


# ----------------------------------------------------------------------------------------------

def lstm_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, w_peep=None,
                 w_hr=None, lengths=None, reverse=False, training=True,
                 cell_clip=None, precision="float32") -> LstmOutput:
    """LSTM layer forward (PyTorch gate order i, f, g, o; optional peepholes w_peep [3, H];
    optional projection w_hr [P, H], PyTorch's proj_size: h = (o*tanh(c)) w_hrᵀ).

    x [T, N, C]; w_ih [4H, C]; w_hh [4H, R]; b_ih, b_hh [4H]; h0 [N, R]; c0 [N, H];
    lengths [N]; R = P with w_hr, else H. Returns LstmOutput(y [T, N, R], h_n [N, R],
    c_n [N, H], cache); cache is None when ``training=False``. cell_clip (TF1's
    LSTMCell(cell_clip)): None, or c clipped to [-cell_clip, cell_clip] after each update.
    See :func:`fusedrnn.reference.lstm_forward` for the equations.

    ``precision="bfloat16"`` (float32 inputs): x, w_ih, w_hh and the state entering each
    recurrent product are rounded to bf16 and multiplied on the low-precision tiers (AMX tiles
    where the CPU has them; ``fusedrnn.lowp``) with fp32 accumulation; biases, gates, c, the
    projection and the outputs stay fp32. The contract and its NumPy emulation:
    :func:`fusedrnn.reference.lstm_forward_bf16`. With ``training=True`` (mixed-precision
    training) the cache remembers the precision and :func:`lstm_backward` runs its large
    products (per-step dh, dx, dw_ih, dw_hh) in bf16 too, with fp32 gate gradients, fp32
    accumulation and fp32 gradients (parameters stay fp32 master weights): the contract and
    its emulation are :func:`fusedrnn.reference.lstm_train_bf16`. Same for :func:`gru_forward`,
    :func:`rnn_forward`.

    ``precision="int8"`` (float32 inputs, ``training=False``: inference only): w_ih and w_hh are
    quantised to s8 once per call (per output row), each row of x and of the state entering a
    recurrent product dynamically per row; s32 sums, fp32 everything else. The contract and its
    emulation: :func:`fusedrnn.reference.lstm_forward_int8` (likewise GRU, RNN). Non-finite
    weights raise ValueError before any work. A frozen layer (``layer.frozen(precision="int8")``)
    quantises its weights once.
    """
    return _forward("lstm_forward", "lstm", x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_peep, lengths,
                    reverse, training, None, w_hr, cell_clip, precision)


def lstm_backward(cache, dy=None, dh_n=None, dc_n=None, *, input_grad=True) -> LstmGrads:
    """Gradients of sum(y*dy) + sum(h_n*dh_n) + sum(c_n*dc_n) (None cotangents are zero).

    dy [T, N, R], dh_n [N, R], dc_n [N, H] (R = P with projection, else H). Returns
    LstmGrads(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_hr), None for inputs the
    forward did not get. ``input_grad=False``: dx is None and its product is skipped (x is
    data). The cache is not modified: backward may be called again.
    """
    return _backward("lstm_backward", "lstm", cache, dy, dh_n, dc_n, input_grad)


def gru_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, variant="reset_after",
                lengths=None, reverse=False, training=True, precision="float32") -> GruOutput:
    """GRU layer forward (gate order r, z, n); variant "reset_after" (PyTorch) or "reset_before".

    x [T, N, C]; w_ih [3H, C]; w_hh [3H, H]; b_ih, b_hh [3H]; h0 [N, H]; lengths [N].
    Returns GruOutput(y [T, N, H], h_n [N, H], cache).
    """
    formula = _checked_formula("gru_forward", "gru", variant)
    return _forward("gru_forward", "gru", x, w_ih, w_hh, b_ih, b_hh, h0, None, None, lengths,
                    reverse, training, formula, precision=precision)


def gru_backward(cache, dy=None, dh_n=None, *, input_grad=True) -> GruGrads:
    """Gradients of sum(y*dy) + sum(h_n*dh_n): GruGrads(dx, dh0, dw_ih, dw_hh, db_ih, db_hh);
    dx None with ``input_grad=False`` (not computed)."""
    return _backward("gru_backward", "gru", cache, dy, dh_n, input_grad=input_grad)


def rnn_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, nonlinearity="tanh",
                lengths=None, reverse=False, training=True, precision="float32") -> RnnOutput:
    """Elman RNN layer forward: h_t = tanh or relu(W_ih x + b_ih + W_hh h_{t-1} + b_hh).

    x [T, N, C]; w_ih [H, C]; w_hh [H, H]; b_ih, b_hh [H]; h0 [N, H]; lengths [N].
    Returns RnnOutput(y [T, N, H], h_n [N, H], cache).
    """
    formula = _checked_formula("rnn_forward", "rnn", nonlinearity)
    return _forward("rnn_forward", "rnn", x, w_ih, w_hh, b_ih, b_hh, h0, None, None, lengths,
                    reverse, training, formula, precision=precision)


def rnn_backward(cache, dy=None, dh_n=None, *, input_grad=True) -> RnnGrads:
    """Gradients of sum(y*dy) + sum(h_n*dh_n): RnnGrads(dx, dh0, dw_ih, dw_hh, db_ih, db_hh);
    dx None with ``input_grad=False`` (not computed)."""
    return _backward("rnn_backward", "rnn", cache, dy, dh_n, input_grad=input_grad)
