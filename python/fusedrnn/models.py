"""Ready-made sequence models: the layer stack that checkpoints, the ``fusedrnn`` command and
the C++ ``fusedrnn::Model`` share.

:class:`RecurrentModel` is an input layer (an Embedding of token ids, or the features as they
are), a recurrent stack (LSTM / GRU / RNN, multi-layer, bidirectional, dropout between layers,
LSTM projection and peepholes, both GRU formulas) and a Linear head applied at every step:

    x [T, N] token ids (vocab_size given) or [T, N, input_size] features
      -> embed [T, N, embed_dim] -> rnn [T, N, D*R] -> head [T, N, output_size]

Its config names every option, and its parameters are named ``embed.weight``,
``rnn.weight_ih_l0``, ..., ``head.weight``, ``head.bias``: everything a loader in another
language needs to rebuild it from a checkpoint.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .layers import GRU, LSTM, RNN, _RNNBase, _inference_options, _kernel_options
from . import validators as V
from .module import Embedding, Linear, Module, register_module

__all__ = ["RecurrentModel", "CELLS", "cell_class", "freeze", "set_compute", "PRECISIONS"]

#: the precisions a frozen model runs (``freeze``, ``RecurrentModel.frozen``, ``--precision``)
PRECISIONS = ("float32", "bfloat16", "int8")

#: the recurrent layer of each ``cell`` name (the one map of the package: models and tasks)
CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}


def cell_class(where: Optional[str], cell) -> type:
    """LSTM / GRU / RNN for "lstm" / "gru" / "rnn"; ValueError naming ``where`` otherwise."""
    return CELLS[V.choice(where, "cell" if where else "--cell", cell, tuple(CELLS))]


def freeze(model: Module, precision: str = "float32", *, where: str = "freeze",
           argument: str = "precision") -> Module:
    """An inference-only copy of ``model`` (any Module: a RecurrentModel, a task's model, a bare
    layer) in eval mode in which every recurrent layer (LSTM / GRU / RNN, stacks and
    bidirectional included) is replaced by its ``frozen(precision)`` copy: weights packed once,
    and with ``precision="bfloat16"`` / ``"int8"`` the bf16 / int8 inference kernels (see
    ``LSTM.frozen``; int8: s8 weights with per-output-row scales quantised once, activations
    quantised per row). Every other module (Embedding, Linear heads, attention, CTC) is copied
    as it is and keeps its dtype: in a bf16 / int8 model only the recurrent layers' products run
    in low precision (the embedding is a lookup, the head one GEMM per call). ``model`` itself is
    not changed. The copy has no backward.

    ``precision`` must be one of PRECISIONS. "bfloat16" and "int8" need float32 recurrent layers
    and a model whose recurrent computation is all in such layers: a single-step cell (LSTMCell
    etc., e.g. an attention decoder) has no low-precision path and is a ValueError, as is a
    float64 layer; int8 also refuses non-finite recurrent weights.
    Errors name ``argument`` (e.g. "--precision" for the command line) and ``where``.
    """
    import copy
    from .cells import _CellBase
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"{where}: {argument} must be one of {', '.join(PRECISIONS)}, got "
                         f"{precision!r}")
    if not isinstance(model, Module):
        raise TypeError(f"{where}: model must be a fusedrnn Module, got {type(model).__name__}")
    if isinstance(model, _RNNBase):
        _check_lowp(model, precision, where, argument, "the model")
        return model.frozen(precision)
    found = False
    for name, m in model.named_modules():
        if isinstance(m, _RNNBase):
            _check_lowp(m, precision, where, argument, name)
            found = True
        elif isinstance(m, _CellBase) and precision != "float32":
            it = f"its {name}" if name else "it"
            raise ValueError(f"{where}: {argument}={precision} is not available for this model: "
                             f"{it} is a single-step {type(m).__name__}, which runs in "
                             f"float32 only ({precision} covers the LSTM / GRU / RNN layers)")
    if not found and precision != "float32":
        raise ValueError(f"{where}: {argument}={precision} needs a model with LSTM / GRU / RNN "
                         f"layers; {type(model).__name__} has none")
    twin = copy.deepcopy(model)
    twin.eval()
    _replace_layers(twin, precision)
    return twin


def set_compute(model: Module, precision: str, *, where: str = "set_compute",
                argument: str = "precision") -> Module:
    """Sets the training compute precision of every recurrent layer of ``model`` (any Module:
    a RecurrentModel, a task's model, a bare layer) in place: ``layer.compute = precision``
    (issue 17, mixed-precision training; see ``LSTM.compute``). Parameters, their gradients
    and the optimiser stay float32, so a checkpoint of the model is the same as a float32
    one. Every other module (Embedding, Linear heads, attention, losses) runs float32.

    "bfloat16" needs float32 recurrent layers, and a model whose recurrent computation is all
    in LSTM / GRU / RNN layers without layer_norm, zoneout, recurrent_dropout or per-gate masks
    (issue 19's options that need the float32-only regularised kernel; weight_drop and the
    shared input_dropout run on the plain kernels, bf16 included): otherwise a ValueError
    naming ``argument`` and ``where``, raised before any layer is changed. Returns ``model``."""
    from .cells import _CellBase
    train = tuple(p for p in PRECISIONS if p != "int8")
    if not isinstance(precision, str) or precision not in train:
        raise ValueError(f"{where}: {argument} must be one of {', '.join(train)} (int8 is an "
                         f"inference precision: freeze), got {precision!r}")
    if not isinstance(model, Module):
        raise TypeError(f"{where}: model must be a fusedrnn Module, got {type(model).__name__}")
    layers = [("the model", model)] if isinstance(model, _RNNBase) else \
        [(n, m) for n, m in model.named_modules() if isinstance(m, _RNNBase)]
    if precision != "float32":
        if not isinstance(model, _RNNBase):
            for name, m in model.named_modules():
                if isinstance(m, _CellBase):
                    it = f"its {name}" if name else "it"
                    raise ValueError(
                        f"{where}: {argument}={precision} is not available for this model: "
                        f"{it} is a single-step {type(m).__name__}, which runs in "
                        f"float32 only (bf16 covers the LSTM / GRU / RNN layers)")
        if not layers:
            raise ValueError(f"{where}: {argument}={precision} needs a model with LSTM / GRU / "
                             f"RNN layers; {type(model).__name__} has none")
        for name, m in layers:
            _check_lowp(m, precision, where, argument, name)
            if getattr(m, "_reg", None) and not m._plain(True):
                opts = ", ".join(_kernel_options(m._reg, m.dropout_masks))
                raise ValueError(f"{where}: {argument}={precision} is not available with "
                                 f"{opts} (layer {name!r}): that layer runs in float32 only")
    for _, m in layers:
        m.compute = precision
    return model


def _check_lowp(layer, precision, where, argument, name):
    if precision != "float32" and layer.dtype != np.float32:
        raise ValueError(f"{where}: {argument}={precision} needs float32 recurrent layers; "
                         f"{name} is {np.dtype(layer.dtype).name}")
    if precision != "float32" and (opts := _inference_options(layer)):
        raise ValueError(f"{where}: {argument}={precision} is not available with "
                         f"{', '.join(opts)} (layer {name!r}): that layer runs in float32 only")


def _replace_layers(module: Module, precision: str) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, _RNNBase):
            setattr(module, name, child.frozen(precision))
        else:
            _replace_layers(child, precision)


@register_module
class RecurrentModel(Module):
    """Embedding (or dense input) -> recurrent stack -> per-step Linear head.

    forward(x, state=None, lengths=None) -> (y [T, N, output_size], final_state)
    backward(dy, d_state=None) -> d_x ([T, N, input_size]; None for token input)
    ``self.rnn.d_state`` holds the initial state's gradient after backward (when a state was
    given). batch_first is not offered: inputs and outputs are time-major.
    """

    def __init__(self, cell: str = "lstm", *, input_size: Optional[int] = None,
                 vocab_size: Optional[int] = None, embed_dim: Optional[int] = None,
                 hidden_size: int = 128, num_layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, output_size: int = 1, proj_size: int = 0,
                 peepholes: bool = False, forget_bias: float = 0.0,
                 variant: str = "reset_after", nonlinearity: str = "tanh",
                 init: str = "pytorch", dtype="float32", seed: Optional[int] = None,
                 compute: str = "float32", cell_clip: Optional[float] = None,
                 **regularisers):
        """``regularisers``: the LSTM's and the GRU's layer_norm, ln_eps, zoneout_h, zoneout_c,
        recurrent_dropout, input_dropout, weight_drop (issue 19; see fusedrnn.LSTM, fusedrnn.GRU),
        passed to the recurrent layer, which refuses those its cell lacks (ValueError); recorded
        in the config when given.

        ``compute``: the recurrent layer's training precision, "float32" or "bfloat16" (issue
        17; ``self.rnn.compute``, with its checks and messages; the same model as setting it
        after construction). Like the layer's, it is not part of the config: a checkpoint
        stays float32 and loads as float32 (set_compute again, as ``fusedrnn train --resume``
        does from the run's recorded --precision).

        ``cell_clip``: the LSTM's (fusedrnn.LSTM's cell_clip: c clipped to ±cell_clip at every
        step); recorded in the config when given, or when set on ``model.rnn`` later."""
        super().__init__()
        fn = "RecurrentModel"
        known = ("layer_norm", "ln_eps", "zoneout_h", "zoneout_c", "recurrent_dropout",
                 "input_dropout", "weight_drop", "dropout_masks")
        for k in regularisers:
            if k not in known:
                raise TypeError(f"{fn}: unexpected keyword argument {k!r}")
        rnn_cls = cell_class(fn, cell)
        if (vocab_size is None) == (input_size is None):
            raise ValueError(f"{fn}: give exactly one of vocab_size (token input) and "
                             f"input_size (feature input)")
        if vocab_size is None and embed_dim is not None:
            raise ValueError(f"{fn}: embed_dim needs vocab_size")
        output_size = V.positive_int(fn, "output_size", output_size)
        # checked here (the parts get seed, seed + 1, seed + 2: a bad value had been named by
        # a part, shifted, or raised a bare TypeError); options of the other cells too, since
        # the config records them
        seed = V.seed(fn, seed)
        variant = V.choice(fn, "variant", variant, ("reset_after", "reset_before"))
        nonlinearity = V.choice(fn, "nonlinearity", nonlinearity, ("tanh", "relu"))
        seed0 = 0 if seed is None else seed
        if vocab_size is not None:
            vocab_size = V.positive_int(fn, "vocab_size", vocab_size)
            embed_dim = V.positive_int(fn, "embed_dim", embed_dim if embed_dim is not None
                                      else 64)
            self.embed = Embedding(vocab_size, embed_dim, dtype=dtype,
                                   seed=None if seed is None else seed0)
            rnn_in = embed_dim
        else:
            input_size = V.positive_int(fn, "input_size", input_size)
            self.embed = None
            rnn_in = input_size
        kw = dict(num_layers=num_layers, bidirectional=bidirectional, dropout=dropout,
                  init=init, dtype=dtype, seed=None if seed is None else seed0 + 1)
        if cell != "lstm" and cell_clip is not None:
            raise ValueError(f"{fn}: cell_clip needs cell='lstm' (it clips the LSTM's cell "
                             f"state), got cell={cell!r}")
        if cell == "lstm":
            kw.update(proj_size=proj_size, peepholes=peepholes, forget_bias=forget_bias)
            if cell_clip is not None:
                kw.update(cell_clip=cell_clip)
        elif cell == "gru":
            kw.update(variant=variant)
        else:
            kw.update(nonlinearity=nonlinearity)
        if cell != "lstm" and (proj_size or peepholes or forget_bias):
            raise ValueError(f"{fn}: proj_size, peepholes and forget_bias need cell='lstm'")
        self.rnn = rnn_cls(rnn_in, hidden_size, **kw, **regularisers, compute=compute)
        out_in = self.rnn.num_directions * self.rnn.state_size
        self.head = Linear(out_in, output_size, dtype=dtype,
                           seed=None if seed is None else seed0 + 2)
        self.cell = cell
        self._record(cell=cell, input_size=input_size, vocab_size=vocab_size,
                     embed_dim=embed_dim if vocab_size is not None else None,
                     hidden_size=self.rnn.hidden_size, num_layers=self.rnn.num_layers,
                     bidirectional=self.rnn.bidirectional, dropout=self.rnn.dropout,
                     output_size=output_size, proj_size=proj_size, peepholes=peepholes,
                     forget_bias=float(forget_bias), variant=variant,
                     nonlinearity=nonlinearity, init=init, dtype=self.rnn.dtype, seed=seed,
                     **({} if cell_clip is None else {"cell_clip": self.rnn.cell_clip}),
                     **regularisers)

    #: the recurrent layer's options a user may set on ``model.rnn`` after construction
    #: (``model.rnn.dropout = 0.3``; see _RNNBase._set_option), with their defaults
    _RNN_OPTIONS = {"dropout": 0.0, "ln_eps": 1e-5, "zoneout_h": 0.0, "zoneout_c": 0.0,
                    "recurrent_dropout": 0.0, "input_dropout": 0.0, "weight_drop": 0.0,
                    "dropout_masks": "shared", "variant": "reset_after",
                    "nonlinearity": "tanh", "cell_clip": None}

    def config(self) -> dict:
        """The constructor's arguments, with the recurrent layer's options as they are now:
        one set on ``model.rnn`` after construction takes effect there and is saved (an option
        at its default that was not given stays out, as the constructor records it). The
        options of the other cells (an LSTM model's ``variant``) stay as recorded."""
        cfg = super().config()
        for k, default in self._RNN_OPTIONS.items():
            if not hasattr(self.rnn, k):
                continue
            v = getattr(self.rnn, k)
            if k in cfg or v != default:
                cfg[k] = v
        return cfg

    def forward(self, x, state=None, lengths=None):
        h = self.embed.forward(x) if self.embed is not None else x
        out, state = self.rnn.forward(h, state, lengths)
        return self.head.forward(out), state

    def frozen(self, precision: str = "float32") -> "RecurrentModel":
        """An inference-only copy (eval mode) whose recurrent stack is ``self.rnn.frozen(
        precision)``: weights packed once; ``precision="bfloat16"`` / ``"int8"`` runs the stack
        on the bf16 / int8 kernels (float32 models only). The Embedding and the Linear head stay in the model's
        dtype (float32): they are a lookup and one GEMM per call, not the recurrent cost.
        Results with "float32" equal this model's eval-mode forward bit for bit. See
        :func:`fusedrnn.models.freeze`."""
        return freeze(self, precision, where="RecurrentModel.frozen")

    def backward(self, dy, d_state=None):
        d = self.rnn.backward(self.head.backward(dy), d_state)
        if self.embed is not None:
            self.embed.backward(d)
            return None
        return d


def _refuse_low_precision(fn: str, rnn, ops: str, verb: str) -> None:
    """Exporters (ONNX, Keras) of a recurrent layer running the bf16 or int8 kernels (a
    frozen(precision=...) copy, compute='bfloat16'): the file would hold the float32 weights, and
    its float ops (``ops``) would not give this layer's results; ValueError saying how to
    ``verb`` the float32 model instead."""
    prec = getattr(rnn, "_precision", "float32")
    if prec == "float32":
        return
    how = f"a frozen(precision={prec!r}) copy" + (
        " or compute='bfloat16'" if prec == "bfloat16" else "")
    raise ValueError(f"{fn}: this model's recurrent layer runs the {prec} kernels ({how}), "
                     f"whose results {ops} would not reproduce (the file would hold the float32 "
                     f"weights); {verb} the float32 model: the one it was frozen from, "
                     f"fusedrnn.models.freeze(model, 'float32') or "
                     f"layer.frozen(precision='float32')"
                     + (", or set compute='float32'" if prec == "bfloat16" else ""))
