"""Drop-in ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` that run fusedrnn's CPU kernels under autograd.

    import fusedrnn.torch as frt
    rnn = frt.LSTM(64, 256, num_layers=2, batch_first=True)    # torch.nn.LSTM's arguments
    out, (h_n, c_n) = rnn(x, (h0, c0))                          # torch.nn.LSTM's forward

Needs PyTorch (``import fusedrnn`` never imports it; this module does). The classes subclass
torch.nn.LSTM / GRU / RNN: same constructor (``device``/``dtype`` included), parameters and
state_dict keys, ``reset_parameters()`` (U(±1/√H), same draws as torch.nn for the same seed),
``isinstance(m, torch.nn.LSTM)``; only ``forward`` is replaced. Supported: batch_first,
num_layers, bidirectional, dropout between layers (torch's RNG: ``torch.manual_seed`` controls
it; drawn as torch.nn draws it, over the packed data for a PackedSequence), proj_size, unbatched 2-D input, PackedSequence in and out (same batch_sizes /
sorted_indices / unsorted_indices as torch.nn; h_n in the caller's batch order). Extras,
keyword-only: LSTM ``peepholes=True`` (adds ``weight_peep_l{k}[_reverse]`` [3, H], rows p_i,
p_f, p_o) and ``forget_bias`` (added to the forget block of ``bias_ih`` at every
initialisation); LSTM ``layer_norm``, ``ln_eps``, ``zoneout_h``, ``zoneout_c``,
``recurrent_dropout``, ``input_dropout``, ``weight_drop``, ``dropout_masks`` (issue 19, as
fusedrnn.LSTM; "per_gate": Keras 3's per-gate recurrent / input dropout masks; layer
norm adds ``ln_gamma_ih_l{k}``, ``ln_gamma_hh_l{k}`` [4H], ``ln_gamma_c_l{k}``,
``ln_beta_c_l{k}`` [H] and with "tfa" ``ln_beta_ih_l{k}``, ``ln_beta_hh_l{k}``; masks from
torch's RNG); GRU ``variant="reset_before"``, and the same options on the (reset_after) GRU
but ``zoneout_c`` and ``layer_norm="tfa"`` (``ln_gamma_ih_l{k}``, ``ln_gamma_hh_l{k}`` [3H]);
RNN refuses them all (ValueError naming the option).

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
non-contiguous parameter); nothing falls back to torch's implementation in eager mode.

bf16 inference: a module converted with ``.to(torch.bfloat16)`` (bfloat16 parameters; input and
states bfloat16 too, as torch.nn wants), or a float32 module called under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (input and states float32 or bfloat16), runs
fusedrnn's bf16 kernels (``precision="bfloat16"`` of :func:`fusedrnn.lstm_forward`: x, weights
and the recurrent operand rounded to bf16, fp32 accumulation, gates and cell state); a bf16
module returns output and final states in bfloat16, as torch.nn's bf16 path does (rounded to
nearest even from the kernels' fp32 results). bfloat16 parameters with a gradient wanted raise
ValueError (no bf16 backward: call under ``torch.no_grad()`` / ``inference_mode()``). Under
autocast with a gradient wanted the module trains in mixed precision (issue 17): the bf16
training kernels (``training=True, precision="bfloat16"``; the backward's large products bf16
too), float32 parameters and gradients, as ``layer.compute = "bfloat16"`` does. Under autocast
the results have torch.nn's dtypes there: bfloat16 for the LSTM and the RNN (CPU autocast runs
torch's LSTM layer and the RNN's products in bf16); the GRU's output and h_n, and a projected
LSTM's c_n, in the dtype of the state they carry (``h_0`` / ``c_0`` as given, else the
input's: float32 for float32 input, as torch.nn's, whose GRU and projected LSTM combine bf16
gates with that state). Issue 19's options: weight_drop and the shared
input_dropout (masks as torch products on x and w_hh) run on the plain kernels at every
precision; layer norm and zoneout (and, in train mode, recurrent_dropout and per-gate masks) have
only the float32 regularised kernel: under autocast such a layer runs in float32 and returns
float32 (torch's autocast does the same for an op without a bf16 path), and with bfloat16
parameters it raises ValueError naming the option.

fp16 autocast: fusedrnn has no fp16 kernels, so a float32 module called under
``torch.autocast("cpu", dtype=torch.float16)`` (input and states float32 or float16) runs the
float32 kernels on the operands autocast casts to float16 for its products, rounded to float16
(x and each layer's input, h_0, the weights and biases; differentiable, so float32 parameters
get float32 gradients rounded as autocast's), and returns the dtypes of torch.nn's native
layers there: float16 for the RNN; the LSTM's results in the dtype of the c it carries (c_0 as
given, else the input's), a projected LSTM's output and h_n float16; the GRU's in the dtype of
the h it carries. The kernels keep the state in float32 between steps where torch rounds it,
so the results agree with torch.nn's to float16 tolerance (README). The regularised options
run float32 there as under bf16 autocast.

int8 inference: ``quantize_dynamic(module)`` returns a copy whose LSTM / GRU / RNN layers
(stock torch.nn ones converted) run fusedrnn's int8 kernels -- s8 weights with per-row scales
quantised once, activations quantised per row, float32 in and out; see its docstring.

Beyond forward/backward:

- Pickling (``torch.save(model)``, ``pickle``, multiprocessing) writes a layer as its torch.nn
  class (torch.nn.modules.rnn.LSTM etc.: torch.nn's attributes and the parameters; none of
  fusedrnn's settings, nor a quantize_dynamic copy's int8 snapshot), so the file loads where
  fusedrnn is not installed, and ``torch.load`` returns the torch.nn layer (a saved
  quantize_dynamic copy: the float32 torch.nn layer in eval mode, running torch's float32
  forward). Importing this module registers those three classes with
  ``torch.serialization.add_safe_globals`` (torch.load's default ``weights_only=True``; a
  process that has not imported it must allow them, as for any stock layer). Layers with
  ``peepholes=True`` or ``variant="reset_before"`` have no torch.nn form and raise
  ``pickle.PicklingError`` (save the state_dict instead). A user's subclass of a layer pickles
  as itself (its forward and attributes kept; loading it needs fusedrnn, as a subclass of
  torch.nn.LSTM needs its module). ``copy.copy`` / ``copy.deepcopy`` keep the fusedrnn class.
- While torch records a graph for another runtime (``torch.export``, ``torch.onnx.export`` with
  either exporter, ``torch.jit.trace``) the layers run torch.nn's forward, so the graph is the
  stock layer's; the fusedrnn-only configurations raise RuntimeError there.
  ``torch.jit.script`` raises a RuntimeError saying so (``__prepare_scriptable__``).
  ``torch.fx.symbolic_trace`` records a layer as one ``call_module`` node (a leaf, as it
  records torch.nn's layers); the traced module runs the fused kernels.
- torch.func's transforms (vmap, grad, jacrev, jvp, functional_call under them) and
  forward-mode AD (``torch.autograd.forward_ad`` dual tensors) raise TypeError naming them: the
  kernels run outside those transforms and have no forward-mode derivative.
- ``torch.compile``: the fused path is ``torch.compiler.disable``d, a graph break; dynamo never
  traces into the NumPy calls, and the kernels run eagerly (without dynamo imported, nothing
  of this runs: ``import fusedrnn.torch`` does not import torch._dynamo).
- Double backward raises RuntimeError (a strict ``once_differentiable``: also when the incoming
  gradients do not require grad, e.g. ``torch.autograd.grad(y.sum(), x, create_graph=True)``,
  and however the gradient is differentiated: ``.backward()``, ``torch.autograd.grad`` with
  respect to x, the states or a parameter, ``torch.autograd.functional.hessian``).

Threads: the kernels use :func:`fusedrnn.set_num_threads` (default: OpenMP's, i.e.
``OMP_NUM_THREADS`` or all cores), independently of ``torch.set_num_threads``.
"""
from __future__ import annotations

import copy
import math
import numbers
import pickle
import sys
import threading
import weakref

import numpy as np
import torch  # the real PyTorch (absolute import), not this module
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import functional as _F
from ._torch_autograd import (_AUTOCAST16_DTYPES, _AUTOCAST_DTYPES,  # noqa: F401
                              _DOUBLE_BACKWARD, _DTYPES, _PARAM_DTYPES, _autocast_mode,
                              _check_tensor, _first_order_only, _fx_call, _graph_mode, _half,
                              _refuse_script, _weight)

__all__ = ["LSTM", "GRU", "RNN", "quantize_dynamic"]

_RNN = torch.nn.modules.rnn
_STOCK = {"LSTM": _RNN.LSTM, "GRU": _RNN.GRU, "RNN": _RNN.RNN}     # torch's own classes
_PARAM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_peep")
# the fields of fusedrnn.functional's cache that hold arrays backed by the tensors saved in ctx
_CACHE_ARRAYS = ("x", "w_ih", "w_hh", "w_peep", "w_hr", "buffer")
# the attributes a fusedrnn.torch layer adds to torch.nn's (the extras' settings, issue 19's
# options, quantize_dynamic's int8 snapshot): left out of the pickled torch.nn layer
_FUSED_ATTRS = ("variant", "peepholes", "forget_bias", "_int8", "_reg", "dropout_masks",
                "layer_norm", "ln_eps", "zoneout_h", "zoneout_c", "recurrent_dropout",
                "input_dropout", "weight_drop")


# ----------------------------------------------------------------------------------------------
# Tensor checks and numpy views

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


class _CachePool(threading.local):
    """Training caches freed by autograd, per thread, for the next forward of the same size:
    a fresh buffer costs a page fault per 4 KiB on first touch (an LSTM at T=100, N=64, H=256
    has a 26 MiB cache: ~7 ms of a 46 ms bf16 training step). A buffer comes back when torch
    frees the saved tensor holding it (the graph released after backward, or dropped), never
    while a graph that may still be backpropagated holds it (retain_graph=True)."""

    def __init__(self):
        self.free = {}


_POOL = _CachePool()
_POOL_KEYS, _POOL_PER_KEY = 8, 8


def _pooled_cache(size, dtype):
    free = _POOL.free.get((size, np.dtype(dtype)))
    return free.pop() if free else np.empty(size, dtype)


def _release_cache(array):
    free = _POOL.free
    if len(free) >= _POOL_KEYS and (array.size, array.dtype) not in free:
        free.clear()
    bucket = free.setdefault((array.size, array.dtype), [])
    if len(bucket) < _POOL_PER_KEY:
        bucket.append(array)


def _kernel_forward(kind, flag, reverse, lengths, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                    w_peep, training, precision="float32"):
    fn = f"{kind}_forward"
    formula = _F._checked_formula(fn, kind, flag)
    return _F._forward(fn, kind, _np(x), _np(w_ih), _np(w_hh), _np(b_ih), _np(b_hh), _np(h0),
                       _np(c0), _np(w_peep), lengths, reverse, training, formula, _np(w_hr),
                       precision=precision, new_cache=_pooled_cache)




@_first_order_only
class _LayerFunction(torch.autograd.Function):
    """One layer, one direction: (x, h0, c0, weights) -> (y, h_n[, c_n]) through the kernels.

    Arguments: kind ('lstm'/'gru'/'rnn'), flag (GRU variant / RNN nonlinearity), reverse,
    lengths (int64 numpy [N] or None), precision ("float32", or "bfloat16": the mixed-precision
    training kernels, whose cache makes the backward bf16 too), then the tensors x, h0, c0,
    w_ih, w_hh, b_ih, b_hh, w_hr, w_peep (None where absent).
    """

    @staticmethod
    def forward(ctx, kind, flag, reverse, lengths, precision, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                w_hr, w_peep):
        out = _kernel_forward(kind, flag, reverse, lengths, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                              w_hr, w_peep, True, precision)
        cache = out.cache
        # Hand the arrays the cache needs to autograd (saved tensors): torch then frees them
        # after backward and checks the inputs and weights for in-place changes. The buffer
        # goes back to this thread's pool when torch frees its storage: the tensor is made
        # from a view array that only that storage holds (torch.from_numpy keeps the array
        # it is given), and the release follows the view. (A finalizer on the tensor object
        # fired too early: a saved_tensors_hooks pack hook may keep an alias -- t.detach(),
        # a view, t.data -- whose storage is the buffer after the tensor itself is gone.)
        view = cache.buffer[:]
        weakref.finalize(view, _release_cache, cache.buffer)
        buffer = torch.from_numpy(view)
        del view
        for field in _CACHE_ARRAYS:
            setattr(cache, field, None)
        # (then the other arguments: _first_order_only's node of a double backward needs them)
        ctx.save_for_backward(x, w_ih, w_hh, w_peep, w_hr, buffer, h0, c0, b_ih, b_hh)
        ctx.kernel_cache = cache
        ctx.kind = kind
        ctx.set_materialize_grads(False)
        if kind == "lstm":
            return torch.from_numpy(out.y), torch.from_numpy(out.h_n), torch.from_numpy(out.c_n)
        return torch.from_numpy(out.y), torch.from_numpy(out.h_n)

    @staticmethod
    def backward(ctx, *grads):
        cache = ctx.kernel_cache
        for field, t in zip(_CACHE_ARRAYS, ctx.saved_tensors[:len(_CACHE_ARRAYS)]):
            setattr(cache, field, None if t is None else t.detach().numpy())
        g = [None if d is None else _contiguous(d.detach()).numpy() for d in grads]
        need = ctx.needs_input_grad
        try:
            # x without requires_grad (the first layer's data): the kernel skips dx's product
            if ctx.kind == "lstm":
                r = _F.lstm_backward(cache, *g, input_grad=need[5])
                dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_hr = r
            else:
                fn = _F.gru_backward if ctx.kind == "gru" else _F.rnn_backward
                dx, dh0, dw_ih, dw_hh, db_ih, db_hh = fn(cache, *g, input_grad=need[5])
                dc0 = dw_peep = dw_hr = None
        finally:
            for field in _CACHE_ARRAYS:
                setattr(cache, field, None)
        grads_in = (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dw_peep)
        return (None, None, None, None, None) + tuple(
            torch.from_numpy(a) if a is not None and need[5 + i] else None
            for i, a in enumerate(grads_in))


_LN_NAMES = ("ln_gamma_ih", "ln_beta_ih", "ln_gamma_hh", "ln_beta_hh", "ln_gamma_c", "ln_beta_c")


def _ln_names(mode):
    return _LN_NAMES if mode == "LSTM" else _LN_NAMES[:4]


def _reg_forward(meta, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, *ln, training):
    """fusedrnn.regularised's LSTM kernel (c0 given or meta["cell"] == "lstm"), else the GRU's:
    (y, h_n[, c_n], cache). w_hr: the LSTM's projection, or None."""
    from . import regularised
    meta = dict(meta)
    lstm = meta.pop("cell") == "lstm"
    kw = {k: _np(v) for k, v in zip(_ln_names("LSTM" if lstm else "GRU"), ln)}
    if lstm:
        return regularised.lstm_ln_forward(_np(x), _np(w_ih), _np(w_hh), _np(b_ih), _np(b_hh),
                                           _np(h0), _np(c0), **kw, **meta, training=training,
                                           w_hr=_np(w_hr))
    return regularised.gru_ln_forward(_np(x), _np(w_ih), _np(w_hh), _np(b_ih), _np(b_hh),
                                      _np(h0), **kw, **meta, training=training)


@_first_order_only
class _RegularisedFunction(torch.autograd.Function):
    """One layer, one direction of an LSTM or GRU with issue 19's options
    (fusedrnn.regularised): (meta, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, the ln_* parameters)
    -> (y, h_n, c_n) for the LSTM, (y, h_n) for the GRU (meta["cell"]; c0 None; w_hr: the
    LSTM's projection or None)."""

    @staticmethod
    def forward(ctx, meta, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, *ln):
        *outs, cache = _reg_forward(meta, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, *ln,
                                    training=True)
        # the kernel cache: a saved tensor, freed by torch after backward; x and the weights:
        # checked for in-place changes; all the tensor arguments: _first_order_only's node
        ctx.save_for_backward(torch.from_numpy(cache.buf), x, w_ih, w_hh, h0, c0, b_ih, b_hh,
                              w_hr, *ln)
        ctx.kernel_cache = cache
        ctx.lstm = meta["cell"] == "lstm"
        ctx.set_materialize_grads(False)
        return tuple(torch.from_numpy(a) for a in outs)

    @staticmethod
    def backward(ctx, *grads):
        from . import regularised
        ctx.saved_tensors  # noqa: B018  (raises if an input was modified in place)
        g = [None if d is None else _contiguous(d.detach()).numpy() for d in grads]
        lstm = ctx.lstm
        need = ctx.needs_input_grad
        r = (regularised.lstm_ln_backward if lstm else regularised.gru_ln_backward)(
            ctx.kernel_cache, *g, input_grad=need[1])
        r.setdefault("dc0", None)
        r.setdefault("dw_hr", None)
        names = ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_hr") + \
            tuple("d" + k for k in _ln_names("LSTM" if lstm else "GRU"))
        return (None,) + tuple(torch.from_numpy(r[k]) if r[k] is not None and need[1 + i]
                               else None for i, k in enumerate(names))


def _init_regularisers(module, reg, layer_norm, ln_eps, zoneout_h, zoneout_c, recurrent_dropout,
                       input_dropout, weight_drop, dropout_masks="shared"):
    """Issue 19's options on a fusedrnn.torch LSTM or GRU: the attributes and the layer-norm
    parameters (gains 1, biases 0; ln_beta_ih/hh with 'tfa' only, ln_*_c on the LSTM only).
    dropout_masks (checked by the caller): 'shared' or 'per_gate' (Keras 3's per-gate masks)."""
    _check_float32_regularisers(type(module).__name__, module.weight_ih_l0.dtype, layer_norm,
                                ln_eps, zoneout_h, zoneout_c)
    module._reg = tuple(k for k in reg if k != "ln_eps") + \
        (("dropout_masks",) if dropout_masks == "per_gate" else ())
    module.dropout_masks = dropout_masks
    module.layer_norm, module.ln_eps = layer_norm, float(ln_eps)
    module.zoneout_h, module.zoneout_c = float(zoneout_h), float(zoneout_c)
    module.recurrent_dropout, module.input_dropout = float(recurrent_dropout), \
        float(input_dropout)
    module.weight_drop = float(weight_drop)
    if layer_norm:
        w, H = module.weight_ih_l0, module.hidden_size
        G = 4 if module.mode == "LSTM" else 3
        for layer in range(module.num_layers):
            for direction in range(2 if module.bidirectional else 1):
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                for name in _ln_names(module.mode):
                    if name in ("ln_beta_ih", "ln_beta_hh") and layer_norm != "tfa":
                        continue
                    size = H if name.endswith("_c") else G * H
                    setattr(module, name + sfx, torch.nn.Parameter(torch.full(
                        (size,), 1.0 if name.startswith("ln_gamma") else 0.0, dtype=w.dtype,
                        device=w.device)))


def _check_float32_regularisers(fn, dtype, layer_norm, ln_eps, zoneout_h, zoneout_c,
                                what=""):
    """The float32 regularised kernel takes zoneout and ln_eps as float32 (as fusedrnn.LSTM's
    float32 layer, which refuses the same values when made): 0.99999999 rounds to 1 and 1e-50
    to 0 there, and the kernel's own error would name the rounded value, not the one given.
    Checked for a float32 layer when made, and at forward where the layer runs that kernel in
    float32 (a float64 layer converted with .float() / .to(), autocast's float32 fallback).
    float64 (and a bfloat16 layer, which refuses the options at forward) take them."""
    if dtype != torch.float32:
        return
    for name, p in (("zoneout_h", zoneout_h), ("zoneout_c", zoneout_c)):
        if not np.float32(p) < 1:
            raise ValueError(f"{fn}: {name} = {p!r} rounds to 1 in float32{what}; it must be "
                             f"< 1")
    fi = np.finfo(np.float32)
    with np.errstate(over="ignore"):     # (1e300 rounds to inf: refused below, not a warning)
        eps32 = np.float32(ln_eps)
    if layer_norm and not fi.tiny <= eps32 <= fi.max:
        raise ValueError(f"{fn}: ln_eps = {ln_eps!r} is not a normal float32 number (> 0 and "
                         f"finite after rounding){what}")


# ----------------------------------------------------------------------------------------------

class _Base:
    """The forward shared by LSTM, GRU and RNN (mixed into the torch.nn classes)."""

    def _stock_class(self):
        # from torch.nn.modules.rnn: a launcher may have installed fusedrnn into torch.nn
        return _STOCK.get(self.mode, _STOCK["RNN"])

    def _fusedrnn_only(self):
        """The constructor argument torch.nn cannot represent (None if there is none)."""
        if getattr(self, "peepholes", False):
            return "peepholes=True"
        if getattr(self, "_reg", ()):
            return ", ".join(f"{k}={getattr(self, k)!r}" for k in self._reg)
        if getattr(self, "variant", "reset_after") != "reset_after":
            return f"variant={self.variant!r}"
        return None

    # -- pickling: a fusedrnn.torch layer is saved as its torch.nn class -----------------------

    def __reduce_ex__(self, protocol):
        """Pickled (torch.save, pickle, multiprocessing) as the torch.nn class with the same
        attributes and parameters, so the file loads without fusedrnn; see the module
        docstring. copy.copy / copy.deepcopy keep the fusedrnn class (__copy__/__deepcopy__).
        A user's subclass (its own forward, attributes) pickles as itself, as a subclass of
        torch.nn.LSTM does: writing it as torch.nn.LSTM would lose what it adds. Either way
        fusedrnn's own attributes (the int8 snapshot of quantize_dynamic, the extras' settings)
        are not written: the file holds torch.nn's layer state."""
        if type(self) not in _FUSED.values():
            reduced = list(super().__reduce_ex__(protocol))
            if len(reduced) > 2 and isinstance(reduced[2], dict):
                reduced[2] = {k: v for k, v in reduced[2].items() if k != "_int8"}
            return tuple(reduced)
        name = type(self).__name__
        extra = self._fusedrnn_only()
        if extra is not None:
            raise pickle.PicklingError(
                f"fusedrnn.torch.{name} with {extra} cannot be pickled (torch.save of the module "
                f"or of a model holding it): a pickled fusedrnn.torch layer is written as "
                f"torch.nn.{name}, so that the file loads without fusedrnn, and torch.nn.{name} "
                f"has no {extra}. Save the state_dict() instead (torch.save(model.state_dict(), "
                f"f)) and load it into a model built with fusedrnn.torch.{name}(..., {extra})")
        stock = self._stock_class()
        state = self.__getstate__()          # RNNBase's: __dict__ without _flat_weights
        for key in _FUSED_ATTRS:             # torch.nn's layer has none of them
            state.pop(key, None)
        dtype = self.weight_ih_l0.dtype
        # stock(*args) builds a cheap placeholder on the meta device (no memory, no draw from
        # torch's RNG); the state then replaces its attributes and parameters
        args = [self.input_size, self.hidden_size, self.num_layers, self.bias, self.batch_first,
                0.0, self.bidirectional, self.proj_size, torch.device("meta"), dtype]
        if stock is _STOCK["RNN"]:
            args.insert(3, self.nonlinearity)
        return stock, tuple(args), state

    def __copy__(self):
        new = type(self).__new__(type(self))
        new.__setstate__(self.__getstate__())
        return new

    def __deepcopy__(self, memo):
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        # RNNBase's state, not self.__getstate__(): torch.nn.utils.parametrize (weight_norm,
        # register_parametrization) gives the module a class whose __getstate__ raises (no
        # pickling) and, seeing this __deepcopy__, adds none of its own; deepcopy must still
        # work for it, as it does for a parametrized torch.nn layer. _flat_weights is not
        # copied but read again from the copy (a parametrized weight there is a computed
        # tensor, which deepcopy refuses)
        state = _RNN.RNNBase.__getstate__(self)
        state.pop("_flat_weights", None)
        state = copy.deepcopy(state, memo)
        state["_flat_weights"] = []
        new.__setstate__(state)
        new._init_flat_weights()
        return new

    def __prepare_scriptable__(self):
        """torch.jit.script calls this first: say clearly why it cannot compile the layer."""
        _refuse_script(self, "layer")

    def _kernel_kind(self):
        if self.mode == "LSTM":
            return "lstm", None
        if self.mode == "GRU":
            return "gru", self.variant
        return "rnn", _nonlinearity(self)

    def _check_construction(self, kwargs):
        fn = type(self).__name__
        device = kwargs.get("device")
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"{fn}: device must be 'cpu' (fusedrnn.torch runs on the CPU; use "
                             f"torch.nn.{fn} elsewhere), got {device!r}")
        dtype = kwargs.get("dtype")
        if dtype is not None and dtype not in _PARAM_DTYPES:
            raise TypeError(f"{fn}: dtype must be torch.float32, torch.float64 or "
                            f"torch.bfloat16 (inference), got {dtype}")

    def _check_parameters(self, fn):
        """[(w_ih, w_hh, b_ih, b_hh, w_hr, w_peep)] per layer and direction, and their dtype."""
        params, dtype = [], None
        D = 2 if self.bidirectional else 1
        for layer in range(self.num_layers):
            for direction in range(D):
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                group = tuple(_weight(self, n + sfx) for n in _PARAM_NAMES)
                for n, p in zip(_PARAM_NAMES, group):
                    if p is None:
                        continue
                    _check_tensor(fn, n + sfx, p, dtype, _PARAM_DTYPES)
                    dtype = p.dtype
                    if not p.is_contiguous():
                        raise ValueError(f"{fn}: parameter {n + sfx} must be contiguous "
                                         f"(got strides {p.stride()}); replace it with a "
                                         f"contiguous one")
                params.append(group)
        return params, dtype

    def _check_state(self, fn, name, t, shape, dtype, allowed=_DTYPES, why=None):
        _check_tensor(fn, name, t, dtype, allowed, why)
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{fn}: {name} must have shape {list(shape)}, got {list(t.shape)}")

    def forward(self, input, hx=None):
        traced = _fx_call(self, input, hx)
        if traced is not None:      # torch.fx.symbolic_trace: a leaf, as torch.nn's layers
            return traced
        if _graph_mode():
            # export / ONNX / jit.trace: torch.nn's own forward, so the graph is the stock
            # layer's (aten::lstm etc.) and runs without fusedrnn
            extra = self._fusedrnn_only()
            if extra is not None:
                raise RuntimeError(
                    f"fusedrnn.torch.{type(self).__name__}.forward: a layer with {extra} "
                    f"cannot be exported, traced or compiled into a graph: while torch records "
                    f"a graph, fusedrnn.torch layers run torch.nn.{type(self).__name__}'s "
                    f"forward, which has no {extra}. Run it eagerly (torch.compile runs it "
                    f"eagerly too)")
            return super().forward(input, hx)
        if "torch._dynamo" in sys.modules:      # torch.compile may be running: see below
            return self._fused_forward_no_dynamo(input, hx)
        return self._fused_forward(input, hx)

    def _fused_forward(self, input, hx):
        fn = f"fusedrnn.torch.{type(self).__name__}.forward"
        if isinstance(input, torch.Tensor) and input.dim() == 3 and \
                input.shape[0 if self.batch_first else 1] == 0:
            # an empty batch: torch.nn's forward (empty outputs of the right shapes, with a
            # graph; nothing to compute, so no option of fusedrnn's changes them)
            return super().forward(input, hx)
        lstm = self.mode == "LSTM"
        params, dtype = self._check_parameters(fn)
        why = None      # (the int8 copy: why its input and states must be float32)
        if getattr(self, "_int8", None) is not None:   # quantize_dynamic's copy
            if self.training:
                raise ValueError(f"{fn}: a quantize_dynamic copy runs int8 inference only, and "
                                 f"this one has training=True (train mode); call .eval()")
            if dtype != torch.float32:
                # (.double() / .bfloat16() / .to() after quantising: the int8 snapshot is still
                # the float32 weights', but the kernels take float32 tensors only)
                raise TypeError(
                    f"{fn}: a quantize_dynamic copy runs fusedrnn's int8 kernels, which take "
                    f"float32 parameters, input and states; this layer's parameters are "
                    f"{dtype} (converted after quantising: .double(), .bfloat16(), .to()). "
                    f"Convert it back with .float() (its int8 weights are those quantised "
                    f"from the float32 parameters) and pass float32 input")
            lowp = "int8"
            why = ("a quantize_dynamic copy runs fusedrnn's int8 kernels, which take float32 "
                   "input and states (and return float32)")
            if torch.is_autocast_enabled("cpu"):
                why += (", also under torch.autocast, which has no int8 path: pass x.float() "
                        "or call the int8 copy outside autocast")
        else:
            lowp = self._lowp(fn, dtype, params, input, hx)
        fp32_fallback = False
        if lowp in ("module", "autocast", "autocast16") and self._needs_regularised_kernel():
            opts = ", ".join(self._kernel_regularisers())
            if lowp == "module":
                raise ValueError(f"{fn}: bfloat16 parameters run fusedrnn's bf16 kernels, which "
                                 f"have no path for {opts}; keep this layer in float32")
            # torch.autocast runs an op without a low-precision path in float32: so does this
            # layer (float32 kernels, float32 results; bf16 / fp16 inputs and states widened
            # exactly)
            fp32_fallback = True
        # the dtype the input and states must have (None under autocast: float32 or bfloat16)
        allowed = _DTYPES if lowp in (None, "int8") else (
            _PARAM_DTYPES if lowp == "module" else
            _AUTOCAST_DTYPES if lowp == "autocast" else _AUTOCAST16_DTYPES)
        if lowp in ("autocast", "autocast16"):
            dtype = None
        L, D = self.num_layers, 2 if self.bidirectional else 1
        R = self.proj_size if self.proj_size > 0 else self.hidden_size
        H = self.hidden_size

        packed = isinstance(input, PackedSequence)
        lengths = None
        unbatched = False
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            _check_tensor(fn, "input.data", data, dtype, allowed, why)
            if data.dim() != 2 or data.shape[1] != self.input_size:
                raise ValueError(f"{fn}: a PackedSequence's data must have shape [sum of "
                                 f"lengths, input_size={self.input_size}], got "
                                 f"{list(data.shape)}")
            # padded time-major [T, N, C] in the packed (sorted) order, and its lengths
            x, len_t = pad_packed_sequence(PackedSequence(data, batch_sizes), batch_first=False)
            lengths = len_t.numpy()
            N = int(batch_sizes[0])
        else:
            _check_tensor(fn, "input", input, dtype, allowed, why)
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
                self._check_state(fn, "hx[0] (h_0)", hx[0], want_h, dtype, allowed, why)
                self._check_state(fn, "hx[1] (c_0)", hx[1], want_c, dtype, allowed, why)
                h0, c0 = hx
            else:
                self._check_state(fn, "hx", hx, want_h, dtype, allowed, why)
                h0 = hx
            if unbatched:
                h0 = h0.unsqueeze(1)
                c0 = None if c0 is None else c0.unsqueeze(1)
            if sorted_indices is not None:      # torch.nn's permute_hidden
                h0 = h0.index_select(1, sorted_indices)
                c0 = None if c0 is None else c0.index_select(1, sorted_indices)
            h0 = _contiguous(h0)
            c0 = None if c0 is None else _contiguous(c0)

        if lowp is None:
            out, h_n, c_n = self._run(x, h0, c0, lengths, params)
        elif fp32_fallback:
            f32 = lambda t: None if t is None else t.float()  # noqa: E731
            out, h_n, c_n = self._run(f32(x), f32(h0), f32(c0), lengths, params)
        elif lowp == "int8":
            # the frozen int8 twin (s8 weights packed once): float32 in, float32 out
            np_ = lambda t: None if t is None else t.detach().numpy()  # noqa: E731
            state = np_(h0) if not lstm or h0 is None else (np_(h0), np_(c0))
            if lstm and h0 is None and c0 is not None:
                state = (np.zeros((L * D, N, R), np.float32), np_(c0))
            y, st = self._int8(np_(x), state, lengths)
            out = torch.from_numpy(np.array(y))
            if lstm:
                h_n, c_n = torch.from_numpy(np.array(st[0])), torch.from_numpy(np.array(st[1]))
            else:
                h_n, c_n = torch.from_numpy(np.array(st)), None
        elif lowp == "module":
            # bf16 inference: the kernels take float32 tensors and round x, the weights and the
            # recurrent operand to bf16 themselves (bf16 -> float32 is exact, so bf16 tensors
            # lose nothing); the results are returned in bfloat16, as torch.nn's bf16 path does
            f32 = lambda t: None if t is None else t.detach().float()  # noqa: E731
            params = [tuple(f32(p) for p in g) for g in params]
            out, h_n, c_n = self._run(f32(x), f32(h0), f32(c0), lengths, params,
                                      precision="bfloat16")
            out, h_n = out.to(torch.bfloat16), h_n.to(torch.bfloat16)
            c_n = None if c_n is None else c_n.to(torch.bfloat16)
        elif lowp == "autocast16":
            # fp16 autocast: fusedrnn has no fp16 kernels, so the float32 kernels run on the
            # operands torch's autocast casts to float16 for its products, rounded to float16
            # (_half, differentiable: float32 parameters get float32 gradients, rounded as
            # autocast's): x and every layer's input, the weights and biases (in _run), h_0
            # (a product operand). Unlike torch, the kernels keep the state in float32 between
            # steps (tolerance in the README). The results have the dtypes of torch.nn's native
            # layers under fp16 autocast: the RNN's are float16 (tanh/relu of float16
            # products); the LSTM's c' = f c + i g and the GRU's h' = (1 - z) n + z h combine
            # float16 gates with the carried state, so they are in its dtype (c_0 / h_0 as
            # given, else the input's: float32 for float32 input), the LSTM's h and output
            # (o tanh(c)) with them, and a projected LSTM's h and output (a float16 product)
            # are float16. (torch.nn's oneDNN LSTM, which it uses for float32 input, is refused
            # by oneDNN on a CPU without fp16 LSTM support, this one included; see the README.)
            f16 = torch.float16
            carried = (x if (c0 if lstm else h0) is None else (c0 if lstm else h0)).dtype
            gru32 = self.mode == "GRU" and carried is not f16
            f32 = lambda t: None if t is None else t.float()  # noqa: E731
            # (the GRU's float32 h_0 is also the carried state: kept, not rounded)
            out, h_n, c_n = self._run(f32(x), f32(h0) if gru32 else _half(h0), f32(c0),
                                      lengths, params, precision="float16")
            if self.mode.startswith("RNN") or self.proj_size > 0 or carried is f16:
                out, h_n = out.to(f16), h_n.to(f16)
            if c_n is not None and carried is f16:
                c_n = c_n.to(f16)
        else:
            # autocast: the bf16 kernels, inference or (a gradient wanted) mixed-precision
            # training: float32 parameters and gradients, the input and states widened to
            # float32 (exact, differentiable); the results in torch.nn's dtypes under CPU
            # autocast, which follow how torch computes there: bfloat16 for the LSTM (autocast
            # lists its oneDNN layer) and the RNN (tanh/relu of autocast's bf16 products). The
            # GRU's h' = (1 - z) n + z h and the projected LSTM's c' = f c + i g (torch's
            # native cell: bf16 gates) are in the dtype of the state they carry: h_0 / c_0 as
            # given, else the input's (torch.nn's zeros); the projected LSTM's h and output
            # (a bf16 product) are bfloat16
            bf16 = torch.bfloat16
            carried = (x if (c0 if lstm else h0) is None else (c0 if lstm else h0)).dtype
            f32 = lambda t: None if t is None else t.float()  # noqa: E731
            out, h_n, c_n = self._run(f32(x), f32(h0), f32(c0), lengths, params,
                                      precision="bfloat16")
            # (a PackedSequence takes torch.nn's native LSTM cell, not the oneDNN layer that
            # autocast lists: its c' and h' = o tanh(c') are in the carried state's dtype, as
            # the GRU's; measured with torch 2.13 for every state and input dtype)
            native = lstm and packed and self.proj_size == 0
            if (self.mode != "GRU" and not native) or carried is bf16:
                out, h_n = out.to(bf16), h_n.to(bf16)
            if c_n is not None and ((self.proj_size == 0 and not native) or carried is bf16):
                c_n = c_n.to(bf16)

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

    # torch.compile: dynamo must never trace the fused path (it would trace into the NumPy calls,
    # break the graph there and compile pieces around them); calling this is a graph break and
    # runs the layer eagerly, kernels and autograd included. torch._disable_dynamo is
    # torch.compiler.disable without importing torch._dynamo (~1 s) before the first call; forward
    # calls it only once torch._dynamo is imported.
    _fused_forward_no_dynamo = torch._disable_dynamo(_fused_forward)

    def _lowp(self, fn, dtype, params, input, hx):
        """How this call uses the bf16 kernels: "module" (bfloat16 parameters, from
        ``.to(torch.bfloat16)``: inference), "autocast" (float32 parameters under
        ``torch.autocast("cpu", dtype=torch.bfloat16)``: bf16 inference, or with a gradient
        wanted mixed-precision training, issue 17), "autocast16" (float32 parameters under
        ``dtype=torch.float16``: the float32 kernels on operands rounded to float16), or None
        (the float32/float64 kernels).
        bfloat16 parameters with a gradient wanted: ValueError (inference only)."""
        if dtype == torch.bfloat16:
            if torch.is_grad_enabled() and _wants_grad(params, input, hx):
                raise ValueError(
                    f"{fn}: bfloat16 parameters run fusedrnn's bf16 inference kernels, which "
                    f"have no backward: call the module under torch.no_grad() or "
                    f"torch.inference_mode() (or set requires_grad=False on its parameters "
                    f"and inputs); train in float32")
            return "module"
        return _autocast_mode(dtype)

    def _run(self, x, h0, c0, lengths, params, precision="float32"):
        """Time-major contiguous x [T, N, C] -> (output [T, N, D*R], h_n, c_n or None).
        precision "float16" (fp16 autocast): the float32 kernels, each layer's input and the
        weights (after weight drop) rounded to float16 as autocast casts its products'
        operands."""
        kind, flag = self._kernel_kind()
        L, D = self.num_layers, 2 if self.bidirectional else 1
        grad = torch.is_grad_enabled() and (
            x.requires_grad or any(p is not None and p.requires_grad for g in params for p in g)
            or (h0 is not None and h0.requires_grad) or (c0 is not None and c0.requires_grad)
            or any(p.requires_grad for n, p in self._parameters.items() if n.startswith("ln_")))
        if self._needs_regularised_kernel():
            return self._run_regularised(x, h0, c0, lengths, params, grad)
        # weight_drop and the shared input_dropout (train mode): torch products on the plain
        # kernels' operands, drawn per layer and direction in _run_regularised's order
        drop_x = self.training and getattr(self, "input_dropout", 0.0)
        drop_w = self.training and getattr(self, "weight_drop", 0.0)
        hs, cs = [], []
        inp = x
        for layer in range(L):
            ys = []
            for direction in range(D):
                idx = layer * D + direction
                w_ih, w_hh, b_ih, b_hh, w_hr, w_peep = params[idx]
                h0_i = None if h0 is None else h0[idx]
                c0_i = None if c0 is None else c0[idx]
                xin = inp
                if drop_x:
                    xin = (inp * _keep(inp.shape[1:], drop_x, inp.dtype)).contiguous()
                if drop_w:
                    w_hh = (w_hh * _keep(tuple(w_hh.shape), drop_w, w_hh.dtype)).contiguous()
                kprec = precision
                if precision == "float16":
                    xin, w_ih, w_hh, b_ih, b_hh, w_hr, w_peep = (
                        _half(t) for t in (xin, w_ih, w_hh, b_ih, b_hh, w_hr, w_peep))
                    kprec = "float32"
                if grad:
                    res = _LayerFunction.apply(kind, flag, direction == 1, lengths, kprec,
                                               xin, h0_i, c0_i, w_ih, w_hh, b_ih, b_hh, w_hr,
                                               w_peep)
                else:
                    r = _kernel_forward(kind, flag, direction == 1, lengths, xin, h0_i, c0_i,
                                        w_ih, w_hh, b_ih, b_hh, w_hr, w_peep, False, kprec)
                    res = tuple(torch.from_numpy(a) for a in r[:-1])
                ys.append(res[0])
                hs.append(res[1])
                if kind == "lstm":
                    cs.append(res[2])
            inp = ys[0] if D == 1 else torch.cat(ys, 2)
            if layer < L - 1 and self.training and self.dropout > 0:
                inp = _dropout_between_layers(inp, self.dropout, lengths)
        h_n = torch.stack(hs, 0)
        c_n = torch.stack(cs, 0) if kind == "lstm" else None
        return inp, h_n, c_n

    def _kernel_regularisers(self):
        """Issue 19's options set on this layer that need the float32 regularised kernel in
        this call (fusedrnn.layers._kernel_options, in this module's train or eval mode)."""
        reg = getattr(self, "_reg", ())
        if not reg:     # (every call asks: the plain module answers without the import)
            return []
        from .layers import _kernel_options
        return _kernel_options(reg, self.dropout_masks, self.training)

    def _needs_regularised_kernel(self):
        return bool(self._kernel_regularisers())

    def _run_regularised(self, x, h0, c0, lengths, params, grad):
        """_run for an LSTM or GRU with issue 19's options (fusedrnn.regularised's kernels):
        masks from torch's RNG (torch.manual_seed controls them) in train mode, the expectation
        of zoneout in eval mode; input dropout and weight drop as differentiable torch
        products."""
        L, D, H = self.num_layers, 2 if self.bidirectional else 1, self.hidden_size
        T, N = x.shape[0], x.shape[1]
        dt, train = x.dtype, self.training
        lstm = self.mode == "LSTM"
        # (a float64 layer made float32 by .float() / .to() after construction)
        _check_float32_regularisers(f"fusedrnn.torch.{type(self).__name__}.forward", dt,
                                    self.layer_norm, self.ln_eps, self.zoneout_h,
                                    self.zoneout_c, " (the layer runs the float32 kernel)")
        hs, cs = [], []
        inp = x

        def bern(shape, p):
            return (torch.rand(shape, dtype=dt) < p).to(dt)

        for layer in range(L):
            ys = []
            for direction in range(D):
                idx = layer * D + direction
                sfx = f"_l{layer}" + ("_reverse" if direction else "")
                w_ih, w_hh, b_ih, b_hh, w_hr, _ = params[idx]
                R = w_hh.shape[1]   # h's width: the projection's P, or H
                ln = tuple(_weight(self, k + sfx) for k in _ln_names(self.mode))
                masks = {}
                xin, w = inp, w_hh
                if train:
                    if self.zoneout_h:
                        masks["zoneout_h_mask"] = bern((T, N, R), self.zoneout_h).numpy()
                    if self.zoneout_c:
                        masks["zoneout_c_mask"] = bern((T, N, H), self.zoneout_c).numpy()
                    per_gate = self.dropout_masks == "per_gate"
                    G = (4 if lstm else 3) if per_gate else None
                    if per_gate:
                        masks["gate_masks"] = True
                    if self.recurrent_dropout:
                        shape = (G, N, R) if per_gate else (N, R)
                        masks["recurrent_mask"] = _keep(shape, self.recurrent_dropout,
                                                        dt).numpy()
                    if self.input_dropout and per_gate:
                        # a mask per gate block on x_t, applied in the kernel (its dx too)
                        masks["input_mask"] = _keep((G, N, inp.shape[2]), self.input_dropout,
                                                    dt).numpy()
                    elif self.input_dropout:
                        xin = inp * _keep((N, inp.shape[2]), self.input_dropout, dt)
                    if self.weight_drop:
                        w = w_hh * _keep(tuple(w_hh.shape), self.weight_drop, dt)
                else:
                    masks.update(zoneout_h=self.zoneout_h)
                    if lstm:
                        masks.update(zoneout_c=self.zoneout_c)
                meta = dict(masks, cell="lstm" if lstm else "gru",
                            layer_norm=self.layer_norm or "none", ln_eps=self.ln_eps,
                            lengths=lengths, reverse=direction == 1)
                h0_i = None if h0 is None else h0[idx]
                c0_i = None if c0 is None else c0[idx]
                if grad:
                    res = _RegularisedFunction.apply(meta, xin.contiguous(), h0_i, c0_i,
                                                     w_ih, w.contiguous(), b_ih, b_hh, w_hr, *ln)
                else:
                    *res, _ = _reg_forward(meta, xin.contiguous(), h0_i, c0_i, w_ih,
                                           w.contiguous(), b_ih, b_hh, w_hr, *ln, training=False)
                    res = tuple(torch.from_numpy(a) for a in res)
                ys.append(res[0])
                hs.append(res[1])
                if lstm:
                    cs.append(res[2])
            inp = ys[0] if D == 1 else torch.cat(ys, 2)
            if layer < L - 1 and self.training and self.dropout > 0:
                inp = _dropout_between_layers(inp, self.dropout, lengths)
        return inp, torch.stack(hs, 0), torch.stack(cs, 0) if lstm else None

    def flatten_parameters(self) -> None:
        """No-op: the parameters are used where they are."""

    def _extras_repr(self):
        return ""

    def extra_repr(self) -> str:
        return super().extra_repr() + self._extras_repr()


def _dropout_between_layers(inp, p, lengths):
    """torch.nn's dropout on a layer's output [T, N, D*R], drawn as torch.nn draws it: over the
    padded tensor for dense input, over the packed data for a PackedSequence (lengths given),
    so that torch.manual_seed gives torch.nn's masks either way (the padded positions take no
    draw; they stay zero, and the kernels do not read them)."""
    if lengths is None:
        return torch.nn.functional.dropout(inp, p, training=True)
    packed = pack_padded_sequence(inp, torch.from_numpy(lengths))
    packed = packed._replace(data=torch.nn.functional.dropout(packed.data, p, training=True))
    return pad_packed_sequence(packed, total_length=inp.shape[0])[0]


def _keep(shape, p, dtype):
    """Inverted dropout mask from torch's RNG: 1/(1 - p) with probability 1 - p, else 0."""
    return (1 - (torch.rand(shape, dtype=dtype) < p).to(dtype)) / (1 - p)


def _wants_grad(params, input, hx):
    """Whether any parameter, the input or the state requires grad."""
    ts = [p for g in params for p in g if p is not None]
    ts.append(input.data if isinstance(input, PackedSequence) else input)
    if hx is not None:
        ts.extend(hx if isinstance(hx, (tuple, list)) else (hx,))
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in ts)


def _nonlinearity(module):
    """An nn.RNN's activation as torch runs it: its ``mode``, fixed at construction (a
    ``nonlinearity`` assigned later is not what its forward computes)."""
    return "relu" if module.mode == "RNN_RELU" else "tanh"


def _check_bool(fn, name, v):
    if not isinstance(v, bool):
        raise TypeError(f"{fn}: {name} must be a bool, got {type(v).__name__}")
    return v


def _reset_layer_norm(module):
    with torch.no_grad():  # layer norm: gains 1, biases 0 (torch.nn.LayerNorm's)
        for name, p in module._parameters.items():
            if name.startswith("ln_"):
                p.fill_(1.0 if name.startswith("ln_gamma") else 0.0)


def _reg_repr(module):
    return "".join(f", {k}={getattr(module, k)!r}" for k in module._reg)


class LSTM(_Base, torch.nn.LSTM):
    """torch.nn.LSTM running fusedrnn's kernels; extras (keyword-only): ``peepholes`` and
    ``forget_bias``. See the module docstring."""

    peepholes = False
    forget_bias = 0.0

    _reg = ()

    def __init__(self, *args, peepholes=False, forget_bias=0.0, layer_norm=None, ln_eps=1e-5,
                 zoneout_h=0.0, zoneout_c=0.0, recurrent_dropout=0.0, input_dropout=0.0,
                 weight_drop=0.0, dropout_masks="shared", **kwargs):
        from .layers import _dropout_masks, _kernel_options, _regularisers
        reg = _regularisers("LSTM", layer_norm, ln_eps, zoneout_h, zoneout_c, recurrent_dropout,
                            input_dropout, weight_drop)
        _dropout_masks("LSTM", dropout_masks, recurrent_dropout, input_dropout)
        if _kernel_options(reg, dropout_masks) and peepholes:
            # (proj_size composes: the regularised kernel projects)
            raise ValueError("LSTM: layer_norm, zoneout, recurrent_dropout and per-gate masks "
                             "cannot be combined with peepholes")
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
        _init_regularisers(self, reg, layer_norm, ln_eps, zoneout_h, zoneout_c,
                           recurrent_dropout, input_dropout, weight_drop, dropout_masks)

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
        _reset_layer_norm(self)

    def _extras_repr(self):
        s = ", peepholes=True" if self.peepholes else ""
        s += _reg_repr(self)
        return s + (f", forget_bias={self.forget_bias}" if self.forget_bias else "")


class GRU(_Base, torch.nn.GRU):
    """torch.nn.GRU running fusedrnn's kernels; extra (keyword-only): ``variant``
    ('reset_after', torch's formula, or 'reset_before', Keras reset_after=False / ONNX)."""

    variant = "reset_after"
    _reg = ()

    def __init__(self, *args, variant="reset_after", layer_norm=None, ln_eps=1e-5,
                 zoneout_h=0.0, zoneout_c=0.0, recurrent_dropout=0.0, input_dropout=0.0,
                 weight_drop=0.0, dropout_masks="shared", **kwargs):
        from .layers import _dropout_masks, _kernel_options, _regularisers
        reg = _regularisers("GRU", layer_norm, ln_eps, zoneout_h, zoneout_c, recurrent_dropout,
                            input_dropout, weight_drop)
        _dropout_masks("GRU", dropout_masks, recurrent_dropout, input_dropout)
        self._check_construction(kwargs)
        if variant not in ("reset_after", "reset_before"):
            raise ValueError(f"GRU: variant must be 'reset_after' or 'reset_before', "
                             f"got {variant!r}")
        if _kernel_options(reg, dropout_masks) and variant != "reset_after":
            raise ValueError("GRU: layer_norm, zoneout, recurrent_dropout and per-gate masks "
                             "need variant='reset_after'")
        super().__init__(*args, **kwargs)
        self._check_parameters("GRU")
        self.variant = variant
        _init_regularisers(self, reg, layer_norm, ln_eps, zoneout_h, zoneout_c,
                           recurrent_dropout, input_dropout, weight_drop, dropout_masks)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        _reset_layer_norm(self)

    def _extras_repr(self):
        s = "" if self.variant == "reset_after" else f", variant={self.variant!r}"
        return s + _reg_repr(self)


class RNN(_Base, torch.nn.RNN):
    """torch.nn.RNN (tanh or relu) running fusedrnn's kernels."""

    def __init__(self, *args, layer_norm=None, ln_eps=1e-5, zoneout_h=0.0, zoneout_c=0.0,
                 recurrent_dropout=0.0, input_dropout=0.0, weight_drop=0.0,
                 dropout_masks="shared", **kwargs):
        from .layers import _refuse_regularisers
        # issue 19's options are the LSTM's and the GRU's: a ValueError naming any that is set
        _refuse_regularisers("RNN", layer_norm, ln_eps, zoneout_h, zoneout_c, recurrent_dropout,
                             input_dropout, weight_drop, dropout_masks)
        self._check_construction(kwargs)
        super().__init__(*args, **kwargs)
        self._check_parameters("RNN")


_FUSED = {"LSTM": LSTM, "GRU": GRU, "RNN": RNN}


def quantize_dynamic(module, *, inplace=False):
    """int8 inference for a torch module, fusedrnn's counterpart of
    ``torch.ao.quantization.quantize_dynamic(module, {nn.LSTM, nn.GRU}, dtype=torch.qint8)``.

    Returns a copy of ``module`` (``inplace=True``: ``module`` itself) in eval mode in which every
    recurrent layer -- a fusedrnn.torch LSTM / GRU / RNN, or a stock torch.nn.LSTM / GRU / RNN,
    replaced by the fusedrnn.torch layer with its weights -- runs fusedrnn's int8 kernels
    (``precision="int8"`` of :func:`fusedrnn.lstm_forward`): w_ih and w_hh quantised to s8 here,
    once, with one scale per output row; each row of the input and of the recurrent state
    quantised dynamically per row; s32 sums; biases, gates, the cell state, peepholes, the LSTM
    projection and the outputs float32 (the contract: :func:`fusedrnn.reference.
    lstm_forward_int8`; GRU both variants). Everything else in the module is unchanged (torch
    quantises ``nn.Linear`` too when asked; this does not). The layers keep their float32
    parameters (state_dict, export: export and torch.compile graphs run torch.nn's float32
    forward); the int8 weights are a snapshot, so later changes to the parameters do not reach
    them (quantise again). The layers run inference only: forward in train mode raises
    ValueError; outputs carry no gradient. Issue 19's dropouts (recurrent_dropout,
    input_dropout, weight_drop) are off in eval mode, so a layer with them quantises to the
    plain int8 forward; layer norm and zoneout (whose eval forward is their expectation) raise
    ValueError. ``torch.save`` of the copy does not write the
    snapshot: the file loads (fusedrnn installed or not) as torch.nn's layers with the float32
    parameters, in eval mode, computing torch.nn's float32 forward; call this function on the
    loaded model to run int8 again.

    Raises TypeError for a non-Module, ValueError for a module without recurrent layers, for
    a layer whose parameters are not float32 or not finite, and for layer_norm / zoneout /
    dropout options (no int8 path).
    """
    import copy
    from . import layers as _layers
    fn = "fusedrnn.torch.quantize_dynamic"
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{fn}: module must be a torch.nn.Module, got {type(module).__name__}")
    _check_bool(fn, "inplace", inplace)
    root = module if inplace else copy.deepcopy(module)

    def convert(m):
        """A stock torch.nn layer as the fusedrnn.torch layer with its weights."""
        kw = dict(num_layers=m.num_layers, bias=m.bias, batch_first=m.batch_first,
                  dropout=m.dropout, bidirectional=m.bidirectional,
                  dtype=m.weight_ih_l0.dtype)
        if m.mode == "LSTM":
            kw["proj_size"] = m.proj_size
        if m.mode.startswith("RNN_"):
            kw["nonlinearity"] = _nonlinearity(m)
        twin = _FUSED["RNN" if m.mode.startswith("RNN_") else m.mode](m.input_size,
                                                                      m.hidden_size, **kw)
        twin.load_state_dict(m.state_dict())
        return twin

    if type(root) in _STOCK.values():
        root = convert(root)
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in _STOCK.values():
                setattr(parent, name, convert(child))
    found = 0
    for m in root.modules():
        if not isinstance(m, _Base):
            continue
        where = f"{fn}: {type(m).__name__}"
        # (the dropouts are off in eval mode, where the copy runs: its forward is the plain
        # one, as frozen(precision="int8") of the layer; layer norm and zoneout's expectation
        # are not)
        if reg := _layers._inference_options(m):
            raise ValueError(f"{where} with {', '.join(reg)} has no int8 path")
        params = {n: p.detach() for n, p in m.named_parameters()}
        for n, p in params.items():
            if p.dtype != torch.float32:
                raise ValueError(f"{where}: int8 needs float32 parameters, {n} is {p.dtype}")
            if not bool(torch.isfinite(p).all()):
                raise ValueError(f"{where}: {n} has a non-finite value (quantisation needs "
                                 f"finite weights)")
        kw = dict(num_layers=m.num_layers, bias=m.bias, bidirectional=m.bidirectional)
        if m.mode == "LSTM":
            twin = _layers.LSTM(m.input_size, m.hidden_size, proj_size=m.proj_size,
                                peepholes=getattr(m, "peepholes", False), **kw)
        elif m.mode == "GRU":
            twin = _layers.GRU(m.input_size, m.hidden_size,
                               variant=getattr(m, "variant", "reset_after"), **kw)
        else:
            twin = _layers.RNN(m.input_size, m.hidden_size, nonlinearity=_nonlinearity(m),
                               **kw)
        twin.load_state_dict({n: p.numpy() for n, p in params.items()})
        m._int8 = twin.frozen(precision="int8")
        found += 1
    if not found:
        raise ValueError(f"{fn}: {type(module).__name__} has no LSTM / GRU / RNN layer")
    return root.eval()


# torch.load's default unpickler (weights_only=True) accepts only registered globals: a saved
# fusedrnn.torch layer names torch.nn.LSTM / GRU / RNN (see _Base.__reduce_ex__), so register
# those (torch's own classes; loading them runs RNNBase.__setstate__, nothing else)
torch.serialization.add_safe_globals(list(_STOCK.values()))

from .torch_cells import GRUCell, LSTMCell, RNNCell  # noqa: E402,F401  (single-step cells)
