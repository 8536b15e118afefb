"""Drop-in ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` that run fusedrnn's CPU kernels under autograd.

    import fusedrnn.torch as frt
    rnn = frt.LSTM(64, 256, num_layers=2, batch_first=True)    # torch.nn.LSTM's arguments
    out, (h_n, c_n) = rnn(x, (h0, c0))                          # torch.nn.LSTM's forward

Needs PyTorch (``import fusedrnn`` never imports it; this module does). The classes subclass
torch.nn.LSTM / GRU / RNN: same constructor (``device``/``dtype`` included), parameters and
state_dict keys, ``reset_parameters()`` (U(±1/√H), same draws as torch.nn for the same seed),
``isinstance(m, torch.nn.LSTM)``; only ``forward`` is replaced. Supported: batch_first,
num_layers, bidirectional, dropout between layers (torch's RNG: ``torch.manual_seed`` controls
it), proj_size, unbatched 2-D input, PackedSequence in and out (same batch_sizes /
sorted_indices / unsorted_indices as torch.nn; h_n in the caller's batch order). Extras,
keyword-only: LSTM ``peepholes=True`` (adds ``weight_peep_l{k}[_reverse]`` [3, H], rows p_i,
p_f, p_o) and ``forget_bias`` (added to the forget block of ``bias_ih`` at every
initialisation); GRU ``variant="reset_before"``.

Each layer and direction is one ``torch.autograd.Function`` calling
:func:`fusedrnn.functional.lstm_forward` (etc.) on numpy views of the tensors
(``tensor.numpy()``: shared memory, no copy) and returning the kernel's arrays as tensors
(``torch.from_numpy``); its backward calls ``*_backward`` and returns fresh gradients (torch
accumulates them into ``.grad``); inputs whose gradient is not needed get None. The kernel cache
is handed to autograd as a saved tensor, so torch frees it after backward (kept with
``retain_graph=True``) and its in-place-modification checks cover the input and the weights.
Under ``torch.no_grad()`` / ``inference_mode()``, or when nothing requires grad, the kernels run
with ``training=False`` (no cache, no graph).

Tensors must be CPU, strided, float32 or float64 (the parameters' dtype). Copies, all explicit
(and differentiable): batch_first input and non-contiguous input or state are made contiguous
time-major; a PackedSequence is unpacked to padded time-major + lengths (the kernels' native
variable-length mode) and the output packed again; bidirectional outputs are concatenated;
``hx`` is reordered for an unsorted PackedSequence (as torch.nn does). Anything else raises
(TypeError for a wrong type, dtype or layout; ValueError for a wrong device, shape or a
non-contiguous parameter); nothing falls back to torch's implementation.

Threads: the kernels use :func:`fusedrnn.set_num_threads` (default: OpenMP's, i.e.
``OMP_NUM_THREADS`` or all cores), independently of ``torch.set_num_threads``.
"""
from __future__ import annotations

import math
import numbers

import torch  # the real PyTorch (absolute import), not this module
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import functional as _F

__all__ = ["LSTM", "GRU", "RNN"]

_DTYPES = (torch.float32, torch.float64)
_PARAM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_peep")
# the fields of fusedrnn.functional's cache that hold arrays backed by the tensors saved in ctx
_CACHE_ARRAYS = ("x", "w_ih", "w_hh", "w_peep", "w_hr", "buffer")


# ----------------------------------------------------------------------------------------------
# Tensor checks and numpy views

def _check_tensor(fn, name, t, dtype=None):
    """t must be a CPU strided float32/float64 tensor (of `dtype` when given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{fn}: {name} must be a CPU tensor (fusedrnn.torch runs on the CPU "
                         f"only; use torch.nn for {t.device.type}), got device {t.device}")
    if t.layout != torch.strided:
        raise TypeError(f"{fn}: {name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{fn}: {name} must have dtype torch.float32 or torch.float64 (half "
                        f"precision and bfloat16 are not supported), got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{fn}: {name} must have dtype {dtype} (the dtype of the module's "
                        f"parameters), got {t.dtype}")


def _contiguous(t):
    """t itself when contiguous, else an explicit (differentiable) contiguous copy."""
    return t if t.is_contiguous() else t.contiguous()


def _np(t, fn="fusedrnn.torch", name="tensor"):
    """Zero-copy numpy view of a checked contiguous CPU tensor (None stays None)."""
    if t is None:
        return None
    try:
        return t.detach().numpy()
    except (RuntimeError, TypeError) as e:   # functorch wrappers, subclasses, neg/conj bits
        raise TypeError(f"{fn}: {name} cannot be viewed as a numpy array ({e}); "
                        f"fusedrnn.torch needs plain CPU tensors") from None


def _kernel_forward(kind, flag, reverse, lengths, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                    w_peep, training):
    if kind == "lstm":
        return _F.lstm_forward(_np(x), _np(w_ih), _np(w_hh), _np(b_ih), _np(b_hh), _np(h0),
                               _np(c0), w_peep=_np(w_peep), w_hr=_np(w_hr), lengths=lengths,
                               reverse=reverse, training=training)
    if kind == "gru":
        return _F.gru_forward(_np(x), _np(w_ih), _np(w_hh), _np(b_ih), _np(b_hh), _np(h0),
                              variant=flag, lengths=lengths, reverse=reverse, training=training)
    return _F.rnn_forward(_np(x), _np(w_ih), _np(w_hh), _np(b_ih), _np(b_hh), _np(h0),
                          nonlinearity=flag, lengths=lengths, reverse=reverse, training=training)


class _LayerFunction(torch.autograd.Function):
    """One layer, one direction: (x, h0, c0, weights) -> (y, h_n[, c_n]) through the kernels.

    Arguments: kind ('lstm'/'gru'/'rnn'), flag (GRU variant / RNN nonlinearity), reverse,
    lengths (int64 numpy [N] or None), then the tensors x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
    w_peep (None where absent).
    """

    @staticmethod
    def forward(ctx, kind, flag, reverse, lengths, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                w_peep):
        out = _kernel_forward(kind, flag, reverse, lengths, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                              w_hr, w_peep, True)
        cache = out.cache
        # Hand the arrays the cache needs to autograd (saved tensors): torch then frees them
        # after backward and checks the inputs and weights for in-place changes.
        buffer = torch.from_numpy(cache.buffer)
        for field in _CACHE_ARRAYS:
            setattr(cache, field, None)
        ctx.save_for_backward(x, w_ih, w_hh, w_peep, w_hr, buffer)
        ctx.kernel_cache = cache
        ctx.kind = kind
        ctx.set_materialize_grads(False)
        if kind == "lstm":
            return torch.from_numpy(out.y), torch.from_numpy(out.h_n), torch.from_numpy(out.c_n)
        return torch.from_numpy(out.y), torch.from_numpy(out.h_n)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        cache = ctx.kernel_cache
        for field, t in zip(_CACHE_ARRAYS, ctx.saved_tensors):
            setattr(cache, field, None if t is None else t.detach().numpy())
        g = [None if d is None else _contiguous(d.detach()).numpy() for d in grads]
        try:
            if ctx.kind == "lstm":
                r = _F.lstm_backward(cache, *g)
                dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_hr = r
            else:
                fn = _F.gru_backward if ctx.kind == "gru" else _F.rnn_backward
                dx, dh0, dw_ih, dw_hh, db_ih, db_hh = fn(cache, *g)
                dc0 = dw_peep = dw_hr = None
        finally:
            for field in _CACHE_ARRAYS:
                setattr(cache, field, None)
        need = ctx.needs_input_grad
        grads_in = (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dw_peep)
        return (None, None, None, None) + tuple(
            torch.from_numpy(a) if a is not None and need[4 + i] else None
            for i, a in enumerate(grads_in))


# ----------------------------------------------------------------------------------------------

class _Base:
    """The forward shared by LSTM, GRU and RNN (mixed into the torch.nn classes)."""

    def _kernel_kind(self):
        if self.mode == "LSTM":
            return "lstm", None
        if self.mode == "GRU":
            return "gru", self.variant
        return "rnn", "relu" if self.mode == "RNN_RELU" else "tanh"

    def _check_construction(self, kwargs):
        fn = type(self).__name__
        device = kwargs.get("device")
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"{fn}: device must be 'cpu' (fusedrnn.torch runs on the CPU; use "
                             f"torch.nn.{fn} elsewhere), got {device!r}")
        dtype = kwargs.get("dtype")
        if dtype is not None and dtype not in _DTYPES:
            raise TypeError(f"{fn}: dtype must be torch.float32 or torch.float64, got {dtype}")

    def _check_parameters(self, fn):
        """[(w_ih, w_hh, b_ih, b_hh, w_hr, w_peep)] per layer and direction, and their dtype."""
        params, dtype = [], None
        D = 2 if self.bidirectional else 1
        for layer in range(self.num_layers):
            for direction in range(D):
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                group = tuple(self._parameters.get(n + sfx) for n in _PARAM_NAMES)
                for n, p in zip(_PARAM_NAMES, group):
                    if p is None:
                        continue
                    _check_tensor(fn, n + sfx, p, dtype)
                    dtype = p.dtype
                    if not p.is_contiguous():
                        raise ValueError(f"{fn}: parameter {n + sfx} must be contiguous "
                                         f"(got strides {p.stride()}); replace it with a "
                                         f"contiguous one")
                params.append(group)
        return params, dtype

    def _check_state(self, fn, name, t, shape, dtype):
        _check_tensor(fn, name, t, dtype)
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{fn}: {name} must have shape {list(shape)}, got {list(t.shape)}")

    def forward(self, input, hx=None):
        fn = f"fusedrnn.torch.{type(self).__name__}.forward"
        lstm = self.mode == "LSTM"
        params, dtype = self._check_parameters(fn)
        L, D = self.num_layers, 2 if self.bidirectional else 1
        R = self.proj_size if self.proj_size > 0 else self.hidden_size
        H = self.hidden_size

        packed = isinstance(input, PackedSequence)
        lengths = None
        unbatched = False
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            _check_tensor(fn, "input.data", data, dtype)
            if data.dim() != 2 or data.shape[1] != self.input_size:
                raise ValueError(f"{fn}: a PackedSequence's data must have shape [sum of "
                                 f"lengths, input_size={self.input_size}], got "
                                 f"{list(data.shape)}")
            # padded time-major [T, N, C] in the packed (sorted) order, and its lengths
            x, len_t = pad_packed_sequence(PackedSequence(data, batch_sizes), batch_first=False)
            lengths = len_t.numpy()
            N = int(batch_sizes[0])
        else:
            _check_tensor(fn, "input", input, dtype)
            sorted_indices = unsorted_indices = None
            if input.dim() not in (2, 3):
                raise ValueError(f"{fn}: input must be 2-D (unbatched [T, C]) or 3-D, got "
                                 f"shape {list(input.shape)}")
            if input.shape[-1] != self.input_size or min(input.shape) < 1:
                raise ValueError(f"{fn}: input must have size input_size={self.input_size} in "
                                 f"its last dimension and no empty dimension, got "
                                 f"{list(input.shape)}")
            unbatched = input.dim() == 2
            if unbatched:
                x = input.unsqueeze(1)
            elif self.batch_first:
                x = input.transpose(0, 1)   # made contiguous below: a copy
            else:
                x = input
            x = _contiguous(x)
            N = x.shape[1]

        # initial state: [L*D, N, R] (LSTM also c [L*D, N, H]) or None
        h0 = c0 = None
        if hx is not None:
            sdim = 2 if unbatched else 3
            want_h = (L * D, R) if unbatched else (L * D, N, R)
            want_c = (L * D, H) if unbatched else (L * D, N, H)
            if lstm:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError(f"{fn}: hx must be a tuple (h_0, c_0) of {sdim}-D tensors, "
                                    f"got {type(hx).__name__}")
                self._check_state(fn, "hx[0] (h_0)", hx[0], want_h, dtype)
                self._check_state(fn, "hx[1] (c_0)", hx[1], want_c, dtype)
                h0, c0 = hx
            else:
                self._check_state(fn, "hx", hx, want_h, dtype)
                h0 = hx
            if unbatched:
                h0 = h0.unsqueeze(1)
                c0 = None if c0 is None else c0.unsqueeze(1)
            if sorted_indices is not None:      # torch.nn's permute_hidden
                h0 = h0.index_select(1, sorted_indices)
                c0 = None if c0 is None else c0.index_select(1, sorted_indices)
            h0 = _contiguous(h0)
            c0 = None if c0 is None else _contiguous(c0)

        out, h_n, c_n = self._run(x, h0, c0, lengths, params)

        if packed:
            out = PackedSequence(pack_padded_sequence(out, len_t).data, batch_sizes,
                                 sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                h_n = h_n.index_select(1, unsorted_indices)
                c_n = None if c_n is None else c_n.index_select(1, unsorted_indices)
        elif unbatched:
            out, h_n = out.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)       # a view, as torch.nn returns
        return (out, (h_n, c_n)) if lstm else (out, h_n)

    def _run(self, x, h0, c0, lengths, params):
        """Time-major contiguous x [T, N, C] -> (output [T, N, D*R], h_n, c_n or None)."""
        kind, flag = self._kernel_kind()
        L, D = self.num_layers, 2 if self.bidirectional else 1
        grad = torch.is_grad_enabled() and (
            x.requires_grad or any(p is not None and p.requires_grad for g in params for p in g)
            or (h0 is not None and h0.requires_grad) or (c0 is not None and c0.requires_grad))
        hs, cs = [], []
        inp = x
        for layer in range(L):
            ys = []
            for direction in range(D):
                idx = layer * D + direction
                w_ih, w_hh, b_ih, b_hh, w_hr, w_peep = params[idx]
                h0_i = None if h0 is None else h0[idx]
                c0_i = None if c0 is None else c0[idx]
                if grad:
                    res = _LayerFunction.apply(kind, flag, direction == 1, lengths, inp, h0_i,
                                               c0_i, w_ih, w_hh, b_ih, b_hh, w_hr, w_peep)
                else:
                    r = _kernel_forward(kind, flag, direction == 1, lengths, inp, h0_i, c0_i,
                                        w_ih, w_hh, b_ih, b_hh, w_hr, w_peep, False)
                    res = tuple(torch.from_numpy(a) for a in r[:-1])
                ys.append(res[0])
                hs.append(res[1])
                if kind == "lstm":
                    cs.append(res[2])
            inp = ys[0] if D == 1 else torch.cat(ys, 2)
            if layer < L - 1 and self.training and self.dropout > 0:
                inp = torch.nn.functional.dropout(inp, self.dropout, training=True)
        h_n = torch.stack(hs, 0)
        c_n = torch.stack(cs, 0) if kind == "lstm" else None
        return inp, h_n, c_n

    def flatten_parameters(self) -> None:
        """No-op: the parameters are used where they are."""

    def _extras_repr(self):
        return ""

    def extra_repr(self) -> str:
        return super().extra_repr() + self._extras_repr()


def _check_bool(fn, name, v):
    if not isinstance(v, bool):
        raise TypeError(f"{fn}: {name} must be a bool, got {type(v).__name__}")
    return v


class LSTM(_Base, torch.nn.LSTM):
    """torch.nn.LSTM running fusedrnn's kernels; extras (keyword-only): ``peepholes`` and
    ``forget_bias``. See the module docstring."""

    peepholes = False
    forget_bias = 0.0

    def __init__(self, *args, peepholes=False, forget_bias=0.0, **kwargs):
        self._check_construction(kwargs)
        _check_bool("LSTM", "peepholes", peepholes)
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, numbers.Real) \
                or not math.isfinite(forget_bias):
            raise ValueError(f"LSTM: forget_bias must be a finite number, got {forget_bias!r}")
        super().__init__(*args, **kwargs)
        if forget_bias and not self.bias:
            raise ValueError("LSTM: forget_bias needs bias=True")
        self._check_parameters("LSTM")
        if peepholes:
            self.peepholes = True
            stdv = 1.0 / math.sqrt(self.hidden_size)
            w = self.weight_ih_l0
            for layer in range(self.num_layers):
                for direction in range(2 if self.bidirectional else 1):
                    name = f"weight_peep_l{layer}" + ("_reverse" if direction else "")
                    p = torch.nn.Parameter(torch.empty(3, self.hidden_size, dtype=w.dtype,
                                                       device=w.device))
                    torch.nn.init.uniform_(p, -stdv, stdv)
                    setattr(self, name, p)
        self.forget_bias = float(forget_bias)
        self._add_forget_bias()

    def _add_forget_bias(self):
        if self.forget_bias and self.bias:
            H = self.hidden_size
            with torch.no_grad():
                for name, p in self._parameters.items():
                    if name.startswith("bias_ih_l"):
                        p[H:2 * H] += self.forget_bias

    def reset_parameters(self) -> None:
        """U(±1/√hidden_size) for every parameter (torch.nn's draws), then forget_bias."""
        super().reset_parameters()
        self._add_forget_bias()

    def _extras_repr(self):
        s = ", peepholes=True" if self.peepholes else ""
        return s + (f", forget_bias={self.forget_bias}" if self.forget_bias else "")


class GRU(_Base, torch.nn.GRU):
    """torch.nn.GRU running fusedrnn's kernels; extra (keyword-only): ``variant``
    ('reset_after', torch's formula, or 'reset_before', Keras reset_after=False / ONNX)."""

    variant = "reset_after"

    def __init__(self, *args, variant="reset_after", **kwargs):
        self._check_construction(kwargs)
        if variant not in ("reset_after", "reset_before"):
            raise ValueError(f"GRU: variant must be 'reset_after' or 'reset_before', "
                             f"got {variant!r}")
        super().__init__(*args, **kwargs)
        self._check_parameters("GRU")
        self.variant = variant

    def _extras_repr(self):
        return "" if self.variant == "reset_after" else f", variant={self.variant!r}"


class RNN(_Base, torch.nn.RNN):
    """torch.nn.RNN (tanh or relu) running fusedrnn's kernels."""

    def __init__(self, *args, **kwargs):
        self._check_construction(kwargs)
        super().__init__(*args, **kwargs)
        self._check_parameters("RNN")


from .torch_cells import GRUCell, LSTMCell, RNNCell  # noqa: E402,F401  (single-step cells)
