"""PyTorch interchange: :func:`from_torch` builds a fusedrnn layer from a torch.nn.LSTM / GRU /
RNN (same configuration, same weights), :func:`to_torch` the reverse.

torch is imported only when these functions run, never at ``import fusedrnn``. The weights are
copied, not shared. A torch ``state_dict()`` also loads directly:
``fusedrnn.LSTM(...).load_state_dict(torch_module.state_dict())`` (names are identical).
"""
from __future__ import annotations

import numpy as np

from .layers import GRU, LSTM, RNN

__all__ = ["from_torch", "to_torch"]


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised only without torch
        raise ImportError("fusedrnn.to_torch / from_torch need PyTorch: "
                          "pip install torch==2.13.0") from e
    return torch


def from_torch(module, *, seed=None):
    """A fusedrnn LSTM/GRU/RNN equal to ``module`` (torch.nn.LSTM, GRU or RNN).

    The dtype follows the module's parameters (float32 or float64); the module's weights are
    copied in. Dropout probability, batch_first, bidirectional, num_layers, proj_size and
    nonlinearity carry over; ``seed`` seeds the new layer's dropout generator.
    """
    torch = _torch()
    kinds = {torch.nn.LSTM: LSTM, torch.nn.GRU: GRU, torch.nn.RNN: RNN}
    cls = next((c for t, c in kinds.items() if isinstance(module, t)), None)  # subclasses too
    if cls is None:
        raise TypeError(f"from_torch: module must be a torch.nn.LSTM, GRU or RNN (or a "
                        f"subclass), got {type(module).__qualname__}")
    extra = getattr(module, "_fusedrnn_only", lambda: None)()   # a fusedrnn.torch layer's
    if extra is not None:
        raise ValueError(f"from_torch: {extra} has no torch.nn form; build the fusedrnn layer "
                         f"with the same arguments and load_state_dict(module.state_dict())")
    dtypes = {p.dtype for p in module.parameters()}
    if dtypes - {torch.float32, torch.float64} or len(dtypes) != 1:
        raise TypeError(f"from_torch: the module's parameters must all be float32 or all "
                        f"float64, got {sorted(str(d) for d in dtypes)}")
    dtype = "float64" if dtypes == {torch.float64} else "float32"
    kw = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
              dropout=float(module.dropout), bidirectional=module.bidirectional, dtype=dtype,
              seed=seed)
    if cls is LSTM:
        layer = LSTM(module.input_size, module.hidden_size, proj_size=module.proj_size, **kw)
    elif cls is RNN:
        # torch runs module.mode, fixed at construction (a later module.nonlinearity = ... is
        # not what its forward computes)
        layer = RNN(module.input_size, module.hidden_size,
                    nonlinearity="relu" if module.mode == "RNN_RELU" else "tanh", **kw)
    else:
        layer = GRU(module.input_size, module.hidden_size, **kw)
    layer.load_state_dict(module.state_dict())
    layer.train(module.training)
    return layer


def to_torch(layer):
    """A torch.nn.LSTM/GRU/RNN equal to ``layer`` (weights copied, same dtype, train mode as
    the layer). Raises ValueError for what torch cannot express: peepholes, cell_clip, the
    reset-before GRU."""
    torch = _torch()
    if not isinstance(layer, (LSTM, GRU, RNN)):
        raise TypeError(f"to_torch: layer must be a fusedrnn LSTM, GRU or RNN, "
                        f"got {type(layer).__name__}")
    kw = dict(num_layers=layer.num_layers, bias=layer.bias, batch_first=layer.batch_first,
              dropout=layer.dropout, bidirectional=layer.bidirectional,
              dtype=torch.float64 if layer.dtype == np.float64 else torch.float32)
    if getattr(layer, "_reg", None):
        raise ValueError(f"to_torch: torch.nn.{layer._mode} has no {', '.join(layer._reg)}")
    if isinstance(layer, LSTM):
        if layer.peepholes:
            raise ValueError("to_torch: torch.nn.LSTM has no peepholes")
        if layer.cell_clip:
            raise ValueError(f"to_torch: torch.nn.LSTM has no cell-state clip (cell_clip = "
                             f"{layer.cell_clip})")
        module = torch.nn.LSTM(layer.input_size, layer.hidden_size, proj_size=layer.proj_size,
                               **kw)
    elif isinstance(layer, GRU):
        if layer.variant != "reset_after":
            raise ValueError("to_torch: torch.nn.GRU only has the reset-after formula")
        module = torch.nn.GRU(layer.input_size, layer.hidden_size, **kw)
    else:
        module = torch.nn.RNN(layer.input_size, layer.hidden_size,
                              nonlinearity=layer.nonlinearity, **kw)
    with torch.no_grad():
        module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in
                                layer.state_dict().items()})
    module.train(layer.training)
    return module
