"""The torch modules' shared pieces (fusedrnn.torch's layers, fusedrnn.torch_cells' cells):
first-order-only backward functions, the weights as torch.nn's own forward sees them, the
tensor checks, and the tests for a graph being recorded (export, tracing, torch.fx)."""
from __future__ import annotations

import functools
import sys

import torch
from torch._C import _functions as _autograd_functions
from torch.autograd import forward_ad as _FORWARD_AD

_is_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_PROXY = torch.fx.Proxy     # (torch imports torch.fx)

_DTYPES = (torch.float32, torch.float64)
_PARAM_DTYPES = _DTYPES + (torch.bfloat16,)          # bf16 parameters: .to(torch.bfloat16)
_AUTOCAST_DTYPES = (torch.float32, torch.bfloat16)   # inputs and states under bf16 autocast
_AUTOCAST16_DTYPES = (torch.float32, torch.float16)  # inputs and states under fp16 autocast


def _autocast_mode(dtype):
    """How CPU autocast applies to a module whose parameters are ``dtype``: "autocast" (float32
    parameters under ``torch.autocast("cpu", dtype=torch.bfloat16)``: fusedrnn's bf16 kernels),
    "autocast16" (float32 parameters under ``dtype=torch.float16``: fusedrnn has no fp16
    kernels, so the operands torch's autocast casts to float16 are rounded to float16 and the
    float32 kernels run on them, see _half) or None (no autocast, or float64 / bfloat16
    parameters, which autocast leaves as they are)."""
    if dtype is not torch.float32 or not torch.is_autocast_enabled("cpu"):
        return None
    low = torch.get_autocast_dtype("cpu")
    return "autocast" if low == torch.bfloat16 else "autocast16" if low == torch.float16 \
        else None


def _half(t):
    """fp16 autocast's cast of an operand of its float16 products, as float32: ``t`` rounded to
    float16 (to nearest even; beyond 65504: inf, as the cast gives) and widened exactly.
    Differentiable as torch's casts are: the gradient comes back rounded to float16 and
    widened, as autocast's float16 products give it to a float32 tensor. None stays None."""
    return None if t is None else t.to(torch.float16).to(torch.float32)

_DOUBLE_BACKWARD = (
    "fusedrnn.torch: double backward is not supported: a gradient computed with "
    "create_graph=True (e.g. torch.autograd.grad(..., create_graph=True) for a gradient "
    "penalty, or a Hessian) was differentiated again through an LSTM/GRU/RNN layer or cell, and "
    "fusedrnn's kernels have no second derivative. Use the torch.nn layer or cell for that model")


def _first_order_only(cls):
    """Class decorator of fusedrnn's torch.autograd.Functions: torch's ``once_differentiable``,
    made strict. Under ``create_graph=True`` the gradients ``backward`` returns carry a node that
    raises ``_DOUBLE_BACKWARD`` when they are differentiated, and that node's inputs are the
    forward's own tensor arguments (x, the states, the weights) and the incoming gradients as
    well as the gradients returned.
    The class's forward must therefore save every tensor argument that can require grad
    (``ctx.save_for_backward``: torch frees them with the rest of the graph's saved tensors,
    so the first-order path keeps nothing longer).

    (torch's decorator attaches that node only when an incoming gradient requires grad, and on
    fresh detached leaves: for ``torch.autograd.grad(y.sum(), x, create_graph=True)`` the gradient
    came back as a constant, and a gradient penalty silently added nothing. Hung on fresh
    leaves only, the node is on no path to x or to a parameter, so ``torch.autograd.grad(...,
    inputs=x)`` -- and torch.autograd.functional.hessian / jacobian, which use it -- never ran
    it and returned the first-order part, or zeros: only ``.backward()``, which runs every node,
    raised. With the forward's arguments as its inputs it lies on every path a second
    derivative takes.)
    """
    backward = cls.backward

    @functools.wraps(backward)
    def first_order(ctx, *grads):
        with torch.no_grad():
            outputs = backward(ctx, *grads)
        if not torch.is_grad_enabled():         # create_graph=False: the usual case
            return outputs
        # the forward's arguments (saved inputs come back connected to their graph; the
        # kernel cache needs no grad) and the incoming gradients where they require grad (a
        # gradient from a later layer or step, itself a function of that one's weights)
        inputs = [t for t in ctx.saved_tensors + grads if t is not None and t.requires_grad]
        err = _autograd_functions.DelayedError(_DOUBLE_BACKWARD, len(outputs) + len(inputs))

        def fake_requires_grad(t):
            if t is None:
                return None
            t = t.detach()
            t.requires_grad = True
            return t

        with torch.enable_grad():
            # (the node's outputs for the forward's arguments are dropped: only its edges to
            # them are wanted)
            return err(*[fake_requires_grad(t) for t in outputs], *inputs)[:len(outputs)]

    cls.backward = staticmethod(first_order)
    cls._fr_first_order = True
    return cls


def _weight(module, name):
    """The tensor ``module.<name>`` as torch.nn's forward reads it: the registered Parameter, or,
    where a tool moved it out of ``_parameters`` (torch.nn.utils.prune's ``<name>_orig`` times
    its mask, a parametrization, weight_norm, a plain tensor set in its place), the attribute
    those tools compute; None where there is none (no bias, no projection)."""
    p = module._parameters.get(name)
    if p is None and name not in module._parameters:
        p = getattr(module, name, None)
        if not isinstance(p, torch.Tensor):
            p = None
    return p


def _check_tensor(fn, name, t, dtype=None, allowed=_DTYPES, why=None):
    """t must be a CPU strided float32/float64 tensor (of `dtype` when given; bfloat16 too where
    ``allowed`` has it: the bf16 inference path). why: the reason `dtype` is the only one
    taken, said instead of the generic messages (a quantize_dynamic copy: float32 only)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if _is_functorch_wrapped(t):
        raise TypeError(f"{fn}: {name} is a tensor of a torch.func transform (vmap, grad, "
                        f"jacrev, jacfwd, jvp, functional_call under one of them): fusedrnn's "
                        f"kernels run outside torch.func and cannot be transformed; use the "
                        f"torch.nn module there")
    if getattr(_FORWARD_AD, "_current_level", -1) >= 0 and \
            _FORWARD_AD.unpack_dual(t).tangent is not None:
        raise TypeError(f"{fn}: {name} is a forward-mode AD dual tensor "
                        f"(torch.autograd.forward_ad): fusedrnn's kernels have no forward-mode "
                        f"derivative (jvp), and the tangent would be dropped; use the torch.nn "
                        f"module there")
    if t.device.type != "cpu":
        raise ValueError(f"{fn}: {name} must be a CPU tensor (fusedrnn.torch runs on the CPU "
                         f"only; use torch.nn for {t.device.type}), got device {t.device}")
    if t.layout != torch.strided:
        raise TypeError(f"{fn}: {name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.is_neg() or t.is_conj():
        raise TypeError(f"{fn}: {name} has torch's lazy negation or conjugation bit set (e.g. "
                        f"torch._neg_view): the kernels read memory as it is stored; resolve it "
                        f"first (t.resolve_neg() / t.resolve_conj(): a copy)")
    if why is not None and t.dtype != dtype:
        raise TypeError(f"{fn}: {name} must have dtype {dtype}: {why}; got {t.dtype}")
    if t.dtype not in allowed:
        if allowed == _AUTOCAST_DTYPES:
            raise TypeError(f"{fn}: {name} must have dtype torch.float32 or torch.bfloat16 "
                            f"under torch.autocast('cpu', dtype=torch.bfloat16), got {t.dtype}")
        if allowed == _AUTOCAST16_DTYPES:
            raise TypeError(f"{fn}: {name} must have dtype torch.float32 or torch.float16 "
                            f"under torch.autocast('cpu', dtype=torch.float16), got {t.dtype}")
        if t.dtype == torch.bfloat16:
            raise TypeError(f"{fn}: {name} is torch.bfloat16 but the module's parameters are "
                            f"not: bf16 inference runs a bfloat16 module (module.bfloat16()) "
                            f"or under torch.autocast('cpu', dtype=torch.bfloat16)")
        raise TypeError(f"{fn}: {name} must have dtype torch.float32 or torch.float64, or "
                        f"torch.bfloat16 for inference (float16 only under "
                        f"torch.autocast('cpu', dtype=torch.float16)), got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{fn}: {name} must have dtype {dtype} (the dtype of the module's "
                        f"parameters), got {t.dtype}")


_COMPILER = torch.compiler
_is_tracing = torch._C._is_tracing


def _graph_mode():
    """True while torch records a graph for another runtime: torch.export (and the ONNX dynamo
    exporter, which uses it), the TorchScript ONNX exporter, torch.jit.trace. (The flags those
    functions read, read directly: the cells ask at every step.)"""
    return (_COMPILER._is_exporting_flag or _is_tracing()
            or ("torch.onnx" in sys.modules and torch.onnx.is_in_onnx_export()))


def _fx_call(module, input, hx):
    """Under torch.fx.symbolic_trace (input or hx a torch.fx.Proxy): the module as one
    call_module node, as FX records torch.nn's own RNN modules (its leaves), and the proxy of its
    result; None otherwise. (FX would otherwise trace into this forward, whose checks and
    kernels need real tensors.)"""
    proxy = _PROXY
    found = input if isinstance(input, proxy) else hx if isinstance(hx, proxy) else None
    if found is None and type(hx) in (tuple, list):     # (an LSTM's (h, c): at every step)
        found = next((h for h in hx if isinstance(h, proxy)), None)
    if found is None:
        return None
    tracer = found.tracer
    args = (input,) if hx is None else (input, hx)
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, {})


def _refuse_script(module, what: str):
    """torch.jit.script calls a module's __prepare_scriptable__ first: say clearly why it cannot
    compile a fusedrnn.torch layer or cell (``what``)."""
    name = type(module).__name__
    raise RuntimeError(
        f"torch.jit.script cannot compile fusedrnn.torch.{name}: its forward calls fusedrnn's "
        f"C++ kernels through NumPy, which TorchScript cannot represent. Use "
        f"torch.jit.trace(model, example_inputs) (it records torch.nn.{name}'s graph, the same "
        f"as for the stock {what}), torch.export.export, or script a model built with "
        f"torch.nn.{name} and load this {what}'s state_dict() into it")
