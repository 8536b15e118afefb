"""Drop-in ``torch.nn.LSTMCell`` / ``GRUCell`` / ``RNNCell`` running fusedrnn's fused kernels
(one T = 1 kernel call per step) under autograd; re-exported by :mod:`fusedrnn.torch`.

    import fusedrnn.torch as frt
    cell = frt.LSTMCell(64, 256)            # torch.nn.LSTMCell's arguments
    h, c = cell(x_t, (h, c))                # torch.nn.LSTMCell's forward, autograd included

Subclasses of torch's cells (same constructor, parameters, state_dict keys, initialisation);
only ``forward`` is replaced. Input [N, C] or unbatched [C]; state as torch's (None = zeros).
Tensors must be CPU, float32 or float64 (the parameters' dtype).

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
from ._torch_autograd import _first_order_only, _weight

__all__ = ["LSTMCell", "GRUCell", "RNNCell"]


class _Store(threading.local):
    def __init__(self):
        self.ws = None
        self.key = None
        self.np = None     # numpy views of the parameters packed (holding their storages)
        self.out = None    # the last forward's outputs (held, so their addresses stay theirs)
        self.outp = None   # and their data_ptr()s (h, c or None)
        self.bws = None
        self.bkey = None

    def __reduce__(self):
        return _Store, ()


def _np(t):
    return t.detach().numpy()


def _step(ctx, cell, training, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """One forward step through the kernel: _CellFunction.forward's body (ctx None: inference,
    called without autograd.Function.apply, whose ~15 µs would double a small step)."""
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
    key = (cell._fr_version, counts[1]) + tuple(
        (None, 0) if p is None else (p.data_ptr(), p._version) for p in params)
    store = cell._fr_store
    # the same sequence: the state given is (a view of) the last forward's outputs, whose
    # arrays the store holds (so their addresses are theirs)
    ws = store.ws
    packed = store.key == key and h0 is not None and \
        store.outp == (h0.data_ptr(), None if c0 is None else c0.data_ptr()) and \
        ws is not None and ws.size >= ws_size
    if ws is None or ws.size < ws_size or ws.dtype != dt:
        ws = store.ws = np.empty(ws_size, dt)
        packed = False
    store.key = key
    if not packed:   # (a numpy view keeps its tensor: the addresses packed cannot be reused)
        store.np = tuple(None if p is None else _np(p) for p in params)
    counts[0] += 1
    w = store.np       # (views of the parameters' storages: the key's data_ptrs)
    h_n = np.empty((N, H), dt)
    c_n = np.empty((N, H), dt) if mode == "LSTM" else None
    y = np.empty((1, N, H), dt)
    cache = np.empty(cache_size, dt) if training else None
    _cells._kernel_forward(mode, flag, dims, packed, xs.reshape(1, N, C), w[0], w[1], w[2],
                           w[3], None if h0 is None else _np(h0),
                           None if c0 is None else _np(c0), None, None, y, h_n, c_n, cache,
                           ws if ws.size == ws_size else ws[:ws_size])
    out_h = torch.from_numpy(h_n)
    out_c = None if c_n is None else torch.from_numpy(c_n)
    store.out = (h_n, c_n)
    store.outp = (out_h.data_ptr(), None if out_c is None else out_c.data_ptr())
    if ctx is not None:
        ctx.info = (mode, flag, dims, bws_size, dt, h0 is not None, c0 is not None,
                    b_ih is not None, b_hh is not None)
        ctx.cell = cell
        if training:
            ctx.save_for_backward(x, w_ih, w_hh, torch.from_numpy(cache))
    return (out_h, out_c) if mode == "LSTM" else out_h


class _CellFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, training, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        return _step(ctx, cell, training, x, h0, c0, w_ih, w_hh, b_ih, b_hh)

    @staticmethod
    @_first_order_only
    def backward(ctx, *grads):
        mode, flag, dims, bws_size, dt, has_h0, has_c0, has_bih, has_bhh = ctx.info
        x, w_ih, w_hh, cache = ctx.saved_tensors
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
                t(dw_ih), t(dw_hh), t(db_ih), t(db_hh))


class _CellMixin:
    _fr_mode = ""

    def _fr_init(self, flag):
        self._fr_flag = flag
        self._fr_version = 0
        self._fr_counts = [0, 0]   # forward and backward calls
        self._fr_sizes = {}        # (N, dtype) -> _cells._sizes
        self._fr_store = _Store()

    def weights_changed(self) -> None:
        """The weights were written by a route torch's version counter does not see: the next
        forward packs them again."""
        self._fr_version += 1

    def forward(self, input, hx=None):
        # (registered Parameters from _parameters, not through Module.__getattr__; a pruned or
        # parametrized weight as torch computes it)
        w_ih, w_hh = _weight(self, "weight_ih"), _weight(self, "weight_hh")
        dt = w_ih.dtype
        if not isinstance(input, torch.Tensor) or input.device.type != "cpu" or \
                input.dtype != dt:
            fn = f"{type(self).__name__}.forward"
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"{fn}: input must be a torch.Tensor, got "
                                f"{type(input).__name__}")
            if input.device.type != "cpu":
                raise ValueError(f"{fn}: input must be a CPU tensor, got device {input.device}")
            raise TypeError(f"{fn}: input must have dtype {dt} (the parameters'), "
                            f"got {input.dtype}")
        batched = input.dim() == 2
        if not (batched or input.dim() == 1) or input.shape[-1] != self.input_size:
            raise ValueError(f"{type(self).__name__}.forward: input must have shape "
                             f"[N, {self.input_size}] or [{self.input_size}], got "
                             f"{list(input.shape)}")
        x = input if batched else input.unsqueeze(0)
        x = x.contiguous()
        N, H = x.shape[0], self.hidden_size
        lstm = self._fr_mode == "LSTM"
        h0 = c0 = None
        if hx is not None:
            fn = f"{type(self).__name__}.forward"
            parts = hx if lstm else (hx,)
            if lstm and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
                raise TypeError(f"{fn}: hx must be a tuple (h, c)")
            checked = []
            for name, given in zip(("h", "c"), parts):
                if not isinstance(given, torch.Tensor) or given.dtype != dt:
                    raise TypeError(f"{fn}: hx {name} must be a {dt} tensor")
                t = given if batched else given.unsqueeze(0)
                if t.shape != (N, H):
                    raise ValueError(f"{fn}: hx {name} must have shape "
                                     f"{[N, H] if batched else [H]}, got {list(given.shape)}")
                checked.append(t.contiguous())
            h0 = checked[0]
            c0 = checked[1] if lstm else None
        if N == 0:   # an empty batch: torch's own cell (empty outputs, autograd included)
            return super().forward(input, hx)
        b_ih = _weight(self, "bias_ih") if self.bias else None
        b_hh = _weight(self, "bias_hh") if self.bias else None
        # forward runs with grad mode off: decide here whether a graph (and a cache) is needed
        training = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh))
        if training:
            out = _CellFunction.apply(self, True, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        else:   # nothing to differentiate: the step without autograd.Function
            out = _step(None, self, False, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        if not batched:
            out = tuple(o.squeeze(0) for o in out) if lstm else out.squeeze(0)
        return out


class LSTMCell(_CellMixin, torch.nn.LSTMCell):
    """torch.nn.LSTMCell on fusedrnn's kernels."""
    _fr_mode = "LSTM"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fr_init(None)


class GRUCell(_CellMixin, torch.nn.GRUCell):
    """torch.nn.GRUCell on fusedrnn's kernels (torch's formula, reset after the product)."""
    _fr_mode = "GRU"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fr_init(True)


class RNNCell(_CellMixin, torch.nn.RNNCell):
    """torch.nn.RNNCell on fusedrnn's kernels (tanh or relu)."""
    _fr_mode = "RNN"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fr_init(self.nonlinearity == "relu")
