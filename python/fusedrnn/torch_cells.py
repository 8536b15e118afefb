"""Drop-in ``torch.nn.LSTMCell`` / ``GRUCell`` / ``RNNCell`` running fusedrnn's fused kernels
(one T = 1 kernel call per step) under autograd; re-exported by :mod:`fusedrnn.torch`.

    import fusedrnn.torch as frt
    cell = frt.LSTMCell(64, 256)            # torch.nn.LSTMCell's arguments
    h, c = cell(x_t, (h, c))                # torch.nn.LSTMCell's forward, autograd included

Subclasses of torch's cells (same constructor, parameters, state_dict keys, initialisation);
only ``forward`` is replaced. Input [N, C] or unbatched [C]; state as torch's (None = zeros).
Checked as the layers check them, naming the argument: parameters float32, float64 or
bfloat16 (at construction, ``dtype=``/``device=``, and at every forward, after ``.half()`` or
``.to()``), CPU, dense, contiguous; input and states CPU, dense, the parameters' dtype, without
a lazy negation bit; ``RNNCell``'s ``nonlinearity`` 'tanh' or 'relu' (ValueError at
construction and at forward: the attribute is read at every forward, as torch.nn's cell reads
it). bf16 as in the layers: a ``.bfloat16()`` cell runs bf16 inference (bfloat16 results;
ValueError with a gradient wanted), and a float32 cell under ``torch.autocast("cpu",
dtype=torch.bfloat16)`` takes float32 or bfloat16 input and states and runs the bf16 kernels
(inference, or mixed-precision training with float32 gradients), returning torch.nn's cells'
dtypes there (RNNCell bfloat16; LSTMCell the dtype of c, GRUCell that of h, the input's when no
state is given). Under ``torch.autocast("cpu", dtype=torch.float16)`` a float32 cell takes
float32 or float16 input and states and runs the float32 kernels on x, h and the weights
rounded to float16 (fusedrnn has no fp16 kernels), returning the same dtypes with float16 in
bfloat16's place (RNNCell float16). While torch records a graph (``torch.jit.trace``,
``torch.export``, ``torch.onnx.export``) a cell runs torch.nn's forward, so the graph is the stock cell's;
``torch.jit.script`` raises a RuntimeError saying so; ``torch.fx.symbolic_trace`` records the
cell as one ``call_module`` node; torch.func's transforms and forward-mode AD raise TypeError.
The parameters' checks run when the weights are packed (below), not at the steps reusing them,
where the input is left to ``.numpy()``'s and the kernels' refusals, any of which runs the
checks (the same message naming the argument): see ``_CellMixin._fr_next``.

Packed weights: the cell keeps the weights packed by its last forward (per thread) and reuses
them at the next step of the same sequence only: while the state ``hx`` it is given is the
output of that forward (or a view or ``detach()`` of it), no backward has run through the cell
since, and every parameter tensor is the same storage at the same ``_version`` (torch bumps it
at in-place changes through the parameter: optimiser steps, ``load_state_dict``, ``copy_``
under ``no_grad``). So a new sequence (``hx=None`` or any other state tensor) and every step
after a backward pack again, and writes torch's version counter does not see (through
``p.data``: ``p.data -= lr * p.grad``, the target networks' ``p.data.copy_(...)``; through
``p.data.numpy()``) are seen whenever they come between sequences or after a backward, which
is where such code makes them. Only a write through such an alias *between two steps of one
sequence* with no backward in between is not seen: call ``cell.weights_changed()`` after it.
Backward keeps the (transposed) weights it packed and reuses them at the following step's
backward of the same ``backward()`` pass (no forward in between) under the same storage and
version rule. Double backward (``create_graph=True``) raises, as the layers' does.
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from . import cells as _cells
from ._torch_autograd import (_AUTOCAST16_DTYPES, _AUTOCAST_DTYPES, _DTYPES, _FORWARD_AD,
                              _PARAM_DTYPES, _autocast_mode, _check_tensor, _first_order_only,
                              _fx_call, _graph_mode, _half, _refuse_script, _weight)

__all__ = ["LSTMCell", "GRUCell", "RNNCell"]


class _Store(threading.local):
    def __init__(self):
        self.ws = None
        self.key = None
        self.np = None     # numpy views of the parameters packed (holding their storages)
        self.out = None    # the last forward's outputs (held, so their addresses stay theirs)
        self.outp = None   # and their data_ptr()s (h, c or None)
        self.params = None  # the parameter tensors packed (held: their ids stay theirs)
        self.bws = None
        self.bkey = None

    def __reduce__(self):
        return _Store, ()


def _np(t):
    return t.detach().numpy()


def _pack_key(cell, params):
    """The key of the weights packed: the cell's weights_changed() count, its backward count,
    and each parameter's identity, address and torch _version (the store holds the parameters
    and views of their storages: an id or an address cannot be another tensor's meanwhile)."""
    key = [cell._fr_version, cell._fr_counts[1]]
    for p in params:
        if p is None:
            key += (None, 0, 0)
        else:
            key += (id(p), p.data_ptr(), p._version)
    return tuple(key)


def _step(ctx, cell, training, x, h0, c0, w_ih, w_hh, b_ih, b_hh, key, packed, hs=None):
    """One forward step through the kernel: _CellFunction.forward's body (ctx None: inference,
    called without autograd.Function.apply, whose ~15 µs would double a small step). key:
    _pack_key's; packed: the same sequence (the state given is the last forward's output) with
    the weights of that key, packed in the store; hs: the numpy arrays of h0, c0 when they are
    that output itself (the store's arrays: no .numpy() call)."""
    mode, flag = cell._fr_mode, cell._fr_flag
    N, C = x.shape
    H = cell.hidden_size
    xs = _np(x)
    dt = xs.dtype
    dims = (1, N, C, H, 0)
    counts = cell._fr_counts   # [forwards, backwards] (a list: no Module.__setattr__)
    sizes = cell._fr_sizes.get((N, dt))
    if sizes is None:
        sizes = cell._fr_sizes[(N, dt)] = _cells._sizes(mode, dims)
    cache_size, ws_size, bws_size = sizes
    params = (w_ih, w_hh, b_ih, b_hh)
    store = cell._fr_store
    ws = store.ws
    if ws is None or ws.size < ws_size or ws.dtype != dt:
        ws = store.ws = np.empty(ws_size, dt)
        packed = False
    # (None until the kernel has run: an argument it refuses leaves no key whose weights the
    # workspace does not hold)
    store.key = None
    if not packed:   # (a numpy view keeps its tensor: the addresses packed cannot be reused)
        store.np = tuple(None if p is None else _np(p) for p in params)
        store.params = params
    counts[0] += 1
    w = store.np       # (views of the parameters' storages: the key's data_ptrs)
    h_n = np.empty((N, H), dt)
    c_n = np.empty((N, H), dt) if mode == "LSTM" else None
    y = np.empty((1, N, H), dt)
    cache = np.empty(cache_size, dt) if training else None
    if hs is None:
        hs = (None if h0 is None else _np(h0), None if c0 is None else _np(c0))
    _cells._kernel_forward(mode, flag, dims, packed, xs.reshape(1, N, C), w[0], w[1], w[2],
                           w[3], hs[0], hs[1], None, None, y, h_n, c_n, cache,
                           ws if ws.size == ws_size else ws[:ws_size])
    store.key = key
    out_h = torch.from_numpy(h_n)
    out_c = None if c_n is None else torch.from_numpy(c_n)
    store.out = (h_n, c_n)
    store.outp = (out_h.data_ptr(), None if out_c is None else out_c.data_ptr())
    if ctx is not None:
        ctx.info = (mode, flag, dims, bws_size, dt, h0 is not None, c0 is not None,
                    b_ih is not None, b_hh is not None)
        ctx.cell = cell
        if training:
            # (then the other arguments: _first_order_only's node of a double backward)
            ctx.save_for_backward(x, w_ih, w_hh, torch.from_numpy(cache), h0, c0, b_ih, b_hh)
    return (out_h, out_c) if mode == "LSTM" else out_h


@_first_order_only
class _CellFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, training, x, h0, c0, w_ih, w_hh, b_ih, b_hh, key, packed, hs):
        return _step(ctx, cell, training, x, h0, c0, w_ih, w_hh, b_ih, b_hh, key, packed, hs)

    @staticmethod
    def backward(ctx, *grads):
        mode, flag, dims, bws_size, dt, has_h0, has_c0, has_bih, has_bhh = ctx.info
        x, w_ih, w_hh, cache = ctx.saved_tensors[:4]
        _, N, C, H, _ = dims
        g = lambda t: None if t is None else np.ascontiguousarray(_np(t))  # noqa: E731
        dh_n = g(grads[0])
        dc_n = g(grads[1]) if mode == "LSTM" else None
        G = w_ih.shape[0]
        # torch asks for dx only when x requires grad; without it the kernel skips dx's product
        dx = np.empty((1, N, C), dt) if ctx.needs_input_grad[2] else None
        dh0 = np.empty((N, H), dt) if has_h0 else None
        dc0 = np.empty((N, H), dt) if has_c0 else None
        dw_ih, dw_hh = np.zeros((G, C), dt), np.zeros((G, H), dt)
        db_ih = np.zeros(G, dt) if has_bih else None
        db_hh = np.zeros(G, dt) if has_bhh else None
        # the weights the previous backward (this loop's later step) packed, while no forward
        # ran since and the parameters are the same storage at the same torch _version
        cell = ctx.cell
        counts = cell._fr_counts
        counts[1] += 1   # (an update through p.data may follow: forward packs again)
        key = (cell._fr_version, counts[0], N, dt) + tuple(
            (p.data_ptr(), p._version) for p in (w_ih, w_hh))
        store = cell._fr_store
        ws = store.bws
        packed = ws is not None and ws.size == bws_size and ws.dtype == dt and store.bkey == key
        if not packed and (ws is None or ws.size != bws_size or ws.dtype != dt):
            ws = store.bws = np.empty(bws_size, dt)
        store.bkey = None
        _cells._kernel_backward(mode, flag, dims, _np(x).reshape(1, N, C), _np(w_ih), _np(w_hh),
                                None, None, _np(cache), dh_n, dc_n, dx, dh0, dc0, dw_ih, dw_hh,
                                db_ih, db_hh, None, None, bws_size, dt, ws, packed)
        store.bkey = key
        t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
        return (None, None, None if dx is None else t(dx.reshape(N, C)), t(dh0), t(dc0),
                t(dw_ih), t(dw_hh), t(db_ih), t(db_hh), None, None, None)


class _CellMixin:
    _fr_mode = ""
    _fr_flag = None   # the kernel's formula flag: GRU reset_after (True); RNNCell: a property

    def _fr_init(self):
        fn = type(self).__name__
        w = self.weight_ih   # device and dtype as constructed (keywords or positional)
        if w.device.type != "cpu":
            raise ValueError(f"{fn}: device must be 'cpu' (fusedrnn.torch runs on the CPU; use "
                             f"torch.nn.{fn} elsewhere), got {w.device}")
        if w.dtype not in _PARAM_DTYPES:
            raise TypeError(f"{fn}: dtype must be torch.float32, torch.float64 or "
                            f"torch.bfloat16 (inference), got {w.dtype}")
        self._fr_version = 0
        self._fr_counts = [0, 0]   # forward and backward calls
        self._fr_sizes = {}        # (N, dtype) -> _cells._sizes
        self._fr_store = _Store()

    def weights_changed(self) -> None:
        """The weights were written by a route torch's version counter does not see: the next
        forward packs them again."""
        self._fr_version += 1

    def __prepare_scriptable__(self):
        """torch.jit.script calls this first: say clearly why it cannot compile the cell."""
        _refuse_script(self, "cell")

    def _fr_params(self, fn, special):
        """(w_ih, w_hh, b_ih, b_hh) as torch.nn's forward reads them (a pruned or parametrized
        weight as torch computes it; the biases None without bias), checked: CPU, dense,
        contiguous, one dtype (float32, float64, or bfloat16 for inference). special: a
        torch.func transform or a forward-AD level is active (_special): check them in full."""
        params = (_weight(self, "weight_ih"), _weight(self, "weight_hh"),
                  _weight(self, "bias_ih") if self.bias else None,
                  _weight(self, "bias_hh") if self.bias else None)
        dt = params[0].dtype if isinstance(params[0], torch.Tensor) else None
        bad_dtype = dt not in _PARAM_DTYPES     # (.half(), .to(...) after construction)
        for name, p in zip(_CELL_PARAMS, params):
            if p is None:
                continue
            if special or bad_dtype or p.dtype is not dt or not p.is_cpu or \
                    p.layout is not _STRIDED or not p.is_contiguous() or p.is_neg():
                _check_tensor(fn, name, p, None if bad_dtype else dt, _PARAM_DTYPES)
                if not p.is_contiguous():
                    raise ValueError(f"{fn}: parameter {name} must be contiguous (got strides "
                                     f"{p.stride()}); replace it with a contiguous one")
        return params

    def forward(self, input, hx=None):
        # the common case first, with the fewest reads: the next step of a sequence (_fr_next)
        if type(input) is _TENSOR and not _graph_mode() and not _special() and \
                not _autocast_on():
            try:
                out = self._fr_next(input, hx)
            except Exception:
                # an argument refused on the way (by torch's .numpy() or the kernels: device,
                # layout, dtype, ...): the checks name it, with the checked forward's message;
                # one that passes them all leaves that error
                self._fr_checked(f"fusedrnn.torch.{type(self).__name__}.forward", input, hx)
                raise
            if out is not None:
                return out
        traced = _fx_call(self, input, hx)
        if traced is not None:      # torch.fx.symbolic_trace: a leaf, as torch.nn's cells
            return traced
        if _graph_mode():
            # export / ONNX / jit.trace: torch.nn's own forward, so the graph is the stock
            # cell's (aten::lstm_cell etc.), not a constant or an opaque PythonOp
            return super().forward(input, hx)
        fn = f"fusedrnn.torch.{type(self).__name__}.forward"
        flag = self._fr_flag
        params, lowp, x, h0, c0, batched = self._fr_checked(fn, input, hx)
        w_ih, w_hh, b_ih, b_hh = params
        if x.shape[0] == 0:   # an empty batch: torch's own cell (empty outputs, autograd too)
            return super().forward(input, hx)
        lstm = self._fr_mode == "LSTM"
        # forward runs with grad mode off: decide here whether a graph (and a cache) is needed
        training = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh))
        if lowp is not None:
            out = self._fr_lowp(fn, lowp, training, flag, x, h0, c0, params)
        else:
            key = _pack_key(self, params)
            store = self._fr_store
            # the same sequence: the state given is (a view of) the last forward's outputs,
            # whose arrays the store holds (so their addresses are theirs)
            packed = store.key == key and h0 is not None and \
                store.outp == (h0.data_ptr(), None if c0 is None else c0.data_ptr())
            if training:
                out = _CellFunction.apply(self, True, x, h0, c0, w_ih, w_hh, b_ih, b_hh, key,
                                          packed, None)
            else:   # nothing to differentiate: the step without autograd.Function
                out = _step(None, self, False, x, h0, c0, w_ih, w_hh, b_ih, b_hh, key, packed)
        if not batched:
            out = tuple(o.squeeze(0) for o in out) if lstm else out.squeeze(0)
        return out

    def _fr_next(self, input, hx):
        """The next step of a sequence, float32 or float64, plain tensors (no torch.fx Proxy,
        no graph recorded, no torch.func transform or forward-AD level, no autocast: tested by
        the caller): the state given is the last forward's output itself (its address, shape,
        dtype, contiguous, no negation bit: its arrays are the store's, no .numpy() call) and
        the parameters are the objects packed at that step, at the same address and torch
        _version (_pack_key), so they are what _fr_checked checked when they were packed (the
        store holds them and their storages) and the kernels keep them packed. Whatever the
        kernel call then refuses (the input: device, layout, dtype) is checked in full by
        _fr_checked, which raises its message naming the argument. None: not that case (the
        checked forward runs). An argument that torch's .numpy() or the kernels refuse raises
        here; the caller then runs the checks."""
        store = self._fr_store
        outp = store.outp
        if hx is None or outp is None:
            return None
        if outp[1] is None:
            h0, c0 = hx, None
        else:
            if type(hx) is not tuple or len(hx) != 2:
                return None
            h0, c0 = hx
            if type(c0) is not _TENSOR or c0.data_ptr() != outp[1]:
                return None
        if type(h0) is not _TENSOR or h0.data_ptr() != outp[0]:
            return None
        ps = self._parameters
        bias = self.bias
        params = (ps.get("weight_ih"), ps.get("weight_hh"), ps.get("bias_ih") if bias else None,
                  ps.get("bias_hh") if bias else None)
        key = _pack_key(self, params)
        if key != store.key:
            return None
        arrays = store.out
        shape = arrays[0].shape         # (N, H): the state's as the store holds it
        dim = input.dim()
        if dim == 2:
            if input.shape != (shape[0], self.input_size) or h0.shape != shape:
                return None
        elif dim != 1 or shape[0] != 1 or input.shape[0] != self.input_size or \
                h0.shape != shape[1:]:
            return None
        dt = params[0].dtype
        for t in (h0, c0):
            if t is not None and (t.dtype is not dt or t.is_neg() or not t.is_contiguous() or
                                  (c0 is not None and t.shape != h0.shape)):
                return None
        x = input if dim == 2 else input.unsqueeze(0)
        x = x.contiguous()
        w_ih, w_hh, b_ih, b_hh = params
        if torch.is_grad_enabled() and (x.requires_grad or h0.requires_grad or (
                c0 is not None and c0.requires_grad) or any(
                p is not None and p.requires_grad for p in params)):
            if dim == 1:
                h0 = h0.unsqueeze(0)
                c0 = None if c0 is None else c0.unsqueeze(0)
            out = _CellFunction.apply(self, True, x, h0, c0, w_ih, w_hh, b_ih, b_hh, key, True,
                                      arrays)
        else:
            out = _step(None, self, False, x, h0, c0, w_ih, w_hh, b_ih, b_hh, key, True, arrays)
        if dim == 1:
            out = tuple(o.squeeze(0) for o in out) if c0 is not None else out.squeeze(0)
        return out

    def _fr_checked(self, fn, input, hx):
        """The checks of every argument, naming the one that fails: (params, lowp, x, h0, c0,
        batched), x and the states [N, *] and contiguous. lowp: "module" (bfloat16
        parameters), "autocast" (float32 parameters under bf16 autocast), "autocast16" (under
        fp16 autocast) or None."""
        self._fr_flag   # noqa: B018  (RNNCell: a ValueError for an unknown nonlinearity)
        # (the fast tests below cost ~3 µs; _check_tensor runs, and names the problem, only
        # where one of them fails)
        special = _special()
        params = self._fr_params(fn, special)
        dt = params[0].dtype
        lowp = None
        if dt is torch.bfloat16:
            lowp = "module"
        else:
            lowp = _autocast_mode(dt)
        if lowp is None:
            want, allowed = dt, _DTYPES
        else:
            want, allowed = (dt, _PARAM_DTYPES) if lowp == "module" else (
                None, _AUTOCAST_DTYPES if lowp == "autocast" else _AUTOCAST16_DTYPES)
        if not isinstance(input, torch.Tensor) or input.dtype is not dt or \
                not input.is_cpu or input.layout is not _STRIDED or input.is_neg() or special:
            _check_tensor(fn, "input", input, want, allowed)
        batched = input.dim() == 2
        if not (batched or input.dim() == 1) or input.shape[-1] != self.input_size:
            raise ValueError(f"{fn}: input must have shape [N, {self.input_size}] or "
                             f"[{self.input_size}], got {list(input.shape)}")
        x = input if batched else input.unsqueeze(0)
        x = x.contiguous()
        N, H = x.shape[0], self.hidden_size
        lstm = self._fr_mode == "LSTM"
        h0 = c0 = None
        if hx is not None:
            parts = hx if lstm else (hx,)
            if lstm and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
                raise TypeError(f"{fn}: hx must be a tuple (h, c)")
            checked = []
            for name, given in zip(("h", "c"), parts):
                if not isinstance(given, torch.Tensor) or given.dtype is not dt or \
                        not given.is_cpu or given.layout is not _STRIDED or given.is_neg() \
                        or special:
                    _check_tensor(fn, f"hx {name}", given, want, allowed)
                t = given if batched else given.unsqueeze(0)
                if t.shape != (N, H):
                    raise ValueError(f"{fn}: hx {name} must have shape "
                                     f"{[N, H] if batched else [H]}, got {list(given.shape)}")
                checked.append(t.contiguous())
            h0 = checked[0]
            c0 = checked[1] if lstm else None
        return params, lowp, x, h0, c0, batched

    def _fr_lowp(self, fn, lowp, training, flag, x, h0, c0, params):
        """The step on fusedrnn's bf16 kernels, as the layers run them (fusedrnn.torch's
        T = 1 layer function): "module" (bfloat16 parameters, from ``.bfloat16()``: inference,
        bfloat16 results) or "autocast" (float32 parameters under
        ``torch.autocast("cpu", dtype=torch.bfloat16)``: inference, or with a gradient wanted
        mixed-precision training; x, the weights and the recurrent operand rounded to bf16,
        fp32 accumulation and gates). Under autocast the results have torch.nn's cells' dtypes
        there: the RNNCell's bfloat16; the LSTMCell's the dtype of c (of the input when no
        state is given), the GRUCell's that of h (likewise). "autocast16" (float32 parameters
        under ``dtype=torch.float16``): fusedrnn has no fp16 kernels, so the float32 kernels run
        on x, the weights, the biases and h rounded to float16 (the operands autocast casts for
        its products; the GRUCell's float32 h, also the state it carries, is kept), with the
        dtypes torch.nn's cells return there: the RNNCell's float16, the LSTMCell's the dtype
        of c, the GRUCell's that of h (the input's when no state is given)."""
        from .torch import _LayerFunction, _kernel_forward
        mode = self._fr_mode
        kind = mode.lower()
        kflag = None if mode == "LSTM" else (("reset_after" if flag else "reset_before")
                                             if mode == "GRU" else ("relu" if flag else "tanh"))
        if lowp == "module" and training:
            raise ValueError(
                f"{fn}: bfloat16 parameters run fusedrnn's bf16 inference kernels, which have "
                f"no backward: call the cell under torch.no_grad() or torch.inference_mode() "
                f"(or set requires_grad=False on its parameters and inputs); train in float32")
        # (bf16 -> float32 is exact: the kernels round x, the weights and the recurrent operand
        # to bf16 themselves)
        f32 = lambda t: None if t is None else t.float()  # noqa: E731
        # torch.nn's cells under autocast: the products in low precision, the gate arithmetic
        # in the dtype of the state it combines them with (the LSTM's c, the GRU's h; zeros of
        # the input's dtype when none is given); the RNNCell has none
        carried = c0 if mode == "LSTM" else h0
        lowdt = torch.float16 if lowp == "autocast16" else torch.bfloat16
        low = lowp == "module" or mode == "RNN" or \
            (x if carried is None else carried).dtype is lowdt
        prec, ws = "bfloat16", params
        xs, h, c = f32(x).unsqueeze(0), f32(h0), f32(c0)
        if lowp == "autocast16":
            # float16 operands of the products, float32 kernels (_half: differentiable)
            prec, ws = "float32", tuple(_half(p) for p in params)
            xs = _half(xs)
            h = h if mode == "GRU" and not low else _half(h0)
        if training:
            res = _LayerFunction.apply(kind, kflag, False, None, prec, xs, h, c, *ws, None,
                                       None)
        else:
            ws = tuple(None if p is None else p.detach().float() for p in ws)
            r = _kernel_forward(kind, kflag, False, None, xs, h, c, *ws, None, None, False,
                                prec)
            res = tuple(torch.from_numpy(a) for a in r[:-1])
        out = res[1:]   # (h_n[, c_n]): T = 1, y is h_n
        if low:
            out = tuple(t.to(lowdt) for t in out)
        return out if mode == "LSTM" else out[0]


_CELL_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


_STRIDED = torch.strided
_TENSOR = torch.Tensor
_peek_functorch = torch._C._functorch.peek_interpreter_stack


def _autocast_on():
    """Whether autocast is on for the CPU (one call: the cells ask at every step)."""
    return _is_autocast_enabled("cpu")


_is_autocast_enabled = torch.is_autocast_enabled


def _special():
    """Whether a torch.func transform (vmap, grad, ...) or a forward-mode AD level is active:
    then every tensor gets _check_tensor's full check (its wrappers and dual tensors pass the
    fast tests of dtype, device and layout)."""
    return _FORWARD_AD._current_level >= 0 or _peek_functorch() is not None


class LSTMCell(_CellMixin, torch.nn.LSTMCell):
    """torch.nn.LSTMCell on fusedrnn's kernels."""
    _fr_mode = "LSTM"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fr_init()


class GRUCell(_CellMixin, torch.nn.GRUCell):
    """torch.nn.GRUCell on fusedrnn's kernels (torch's formula, reset after the product)."""
    _fr_mode = "GRU"
    _fr_flag = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fr_init()


class RNNCell(_CellMixin, torch.nn.RNNCell):
    """torch.nn.RNNCell on fusedrnn's kernels (tanh or relu: ``nonlinearity`` is read at every
    forward, as torch.nn's cell reads it)."""
    _fr_mode = "RNN"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fr_flag   # noqa: B018  (a ValueError for an unknown nonlinearity, as torch.nn.RNN)
        self._fr_init()

    @property
    def _fr_flag(self):
        """The kernel's flag for ``self.nonlinearity`` (relu: True); ValueError for another."""
        nl = self.nonlinearity
        if nl == "tanh":
            return False
        if nl == "relu":
            return True
        raise ValueError(f"fusedrnn.torch.RNNCell: nonlinearity must be 'tanh' or 'relu', got "
                         f"{nl!r}")
