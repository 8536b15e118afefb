"""The torch modules' shared pieces (fusedrnn.torch's layers, fusedrnn.torch_cells' cells):
first-order-only backward functions, the weights as torch.nn's own forward sees them."""
from __future__ import annotations

import functools

import torch
from torch._C import _functions as _autograd_functions


_DOUBLE_BACKWARD = (
    "fusedrnn.torch: double backward is not supported: a gradient computed with "
    "create_graph=True (e.g. torch.autograd.grad(..., create_graph=True) for a gradient "
    "penalty, or a Hessian) was differentiated again through an LSTM/GRU/RNN layer or cell, and "
    "fusedrnn's kernels have no second derivative. Use the torch.nn layer or cell for that model")


def _first_order_only(backward):
    """torch's ``once_differentiable``, made strict: under ``create_graph=True`` the returned
    gradients always carry a node that raises ``_DOUBLE_BACKWARD`` if they are differentiated.

    (torch's decorator attaches that node only when an incoming gradient requires grad; for
    ``torch.autograd.grad(y.sum(), x, create_graph=True)`` none does, and the gradient came back
    as a constant: a gradient penalty then silently added nothing for the layer's second
    derivative.)
    """
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        with torch.no_grad():
            outputs = backward(ctx, *grads)
        if not torch.is_grad_enabled():         # create_graph=False: the usual case
            return outputs
        err = _autograd_functions.DelayedError(_DOUBLE_BACKWARD, len(outputs))

        def fake_requires_grad(t):
            if t is None:
                return None
            t = t.detach()
            t.requires_grad = True
            return t

        with torch.enable_grad():
            return err(*[fake_requires_grad(t) for t in outputs])

    return wrapper


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
