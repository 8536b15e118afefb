"""What the tasks share: the cell map, flag checks, the recurrent-stack builder, sub-seeds and
the torch twins' building blocks.

A task's flags arrive as an argparse Namespace (from the CLI, already parsed by type, or from
Python code); :func:`model_flags` checks the model flags every task has once, with the package's
rules (:mod:`fusedrnn.validators`), and messages that name the flag (``--hidden must be an
integer >= 1, got 0``).
"""
from __future__ import annotations

import copy
import functools
from typing import Any, Dict, List, Optional

import numpy as np

from .. import validators as V
from ..models import CELLS, cell_class
from ..module import Dropout

__all__ = ["CELLS", "CELL_OPTIONS", "cell_class", "check_int", "check_choice", "check_dropout",
           "model_flags", "cell_options", "model_kwargs", "make_rnn", "sub_seed", "sub_seeds", "torch_parts",
           "torch_sequence_loss"]


# -- flag checks (messages name the flag) -------------------------------------------------------
def torch_numpy(t) -> np.ndarray:
    """A torch twin's output as NumPy: under ``--precision bfloat16`` (torch.autocast) the
    outputs are bfloat16, which NumPy has no type for, so they come back as float32; any other
    dtype as it is."""
    import torch
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def check_int(name: str, v, minimum: int = 1) -> int:
    return V.positive_int(None, V.flag_name(name), v, minimum)


def check_choice(name: str, v, choices) -> Any:
    return V.choice(None, V.flag_name(name), v, choices)


def check_dropout(v) -> float:
    return V.probability(None, "--dropout", v)


def model_flags(task, lower_cell: bool = False) -> Dict[str, Any]:
    """The model flags every task has (cell, hidden, layers, batch_size, dropout, seed), each
    the user's value or the task's default, checked, and written back to ``task.args``."""
    a = task.args
    cell = task.flag("cell")
    if lower_cell and isinstance(cell, str):
        cell = cell.lower()
    out = {
        "cell": check_choice("cell", cell, tuple(CELLS)),
        "hidden": check_int("hidden", task.flag("hidden")),
        "layers": check_int("layers", task.flag("layers")),
        "batch_size": check_int("batch_size", task.flag("batch_size")),
        "dropout": check_dropout(task.flag("dropout")),
        "seed": check_int("seed", task.flag("seed") if task.flag("seed") is not None else 0,
                          minimum=0),
    }
    for k, v in out.items():
        setattr(a, k, v)
    return out


# The layer options of the recurrent cells, as `fusedrnn train` flags (each None = the layer's
# default). Which cell each applies to: CELL_OPTIONS[name].
CELL_OPTIONS = {"nonlinearity": ("rnn",), "init": ("lstm", "gru", "rnn"),
                "peepholes": ("lstm",), "proj_size": ("lstm",), "variant": ("gru",),
                "forget_bias": ("lstm",), "layer_norm": ("lstm", "gru"),
                "ln_eps": ("lstm", "gru"), "zoneout_h": ("lstm", "gru"), "zoneout_c": ("lstm",),
                "recurrent_dropout": ("lstm", "gru"), "input_dropout": ("lstm", "gru"),
                "weight_drop": ("lstm", "gru"), "dropout_masks": ("lstm", "gru")}
# issue 19's LSTM and GRU options: probabilities in [0, 1)
REG_PROBABILITIES = ("zoneout_h", "zoneout_c", "recurrent_dropout", "input_dropout",
                     "weight_drop")
# issue 19's options (the regularisers) as task flags: every task's recurrent layers take them
REG_OPTIONS = ("layer_norm", "ln_eps") + REG_PROBABILITIES + ("dropout_masks",)
INITS = ("pytorch", "keras", "irnn")
#: the forget-gate bias init='keras' starts an LSTM with (Keras' unit_forget_bias, layers.py)
KERAS_UNIT_FORGET_BIAS = 1.0


def cell_options(task) -> Dict[str, Any]:
    """The cell-option flags (``--nonlinearity``, ``--init``, ``--peepholes``,
    ``--proj-size``, ``--variant``, ``--forget-bias``) the user gave or a checkpoint stored,
    checked against ``--cell`` (ValueError naming the flag where one does not apply, e.g.
    ``--peepholes`` with ``--cell gru``); ``--init irnn`` implies ``--nonlinearity relu``.
    Returns the given ones as layer keyword arguments (``{}`` when none was given) and writes
    the resolved values back to ``task.args``. Needs ``task.args.cell`` resolved."""
    a = task.args
    cell = a.cell
    opts: Dict[str, Any] = {}
    z = getattr(a, "zoneout", None)
    if z is not None:  # --zoneout P: both h and c (the LSTM; the GRU's h)
        # The trainer lists the user's flags in a.given (a checkpoint's zoneout_h / zoneout_c
        # fill the others on --resume, and --zoneout replaces them, as any user flag wins);
        # without it (a Namespace from Python code) every value there is the user's.
        given = getattr(a, "given", None)
        mine = [k for k in ("zoneout_h", "zoneout_c")
                if (k in given if given is not None else getattr(a, k, None) is not None)]
        if mine:   # two values for one probability: neither silently wins
            raise ValueError(f"--zoneout sets --zoneout-h and (LSTM) --zoneout-c; give either "
                             f"--zoneout or {' and '.join(V.flag_name(k) for k in mine)}, "
                             f"not both")
        for k in ("zoneout_h", "zoneout_c"):
            if k == "zoneout_h" or cell in CELL_OPTIONS[k]:
                setattr(a, k, z)
        a.zoneout = None
    for k, cells in CELL_OPTIONS.items():
        v = getattr(a, k, None)
        if v is None or v is False:
            continue
        if cell not in cells:
            need = " or ".join(f"--cell {c}" for c in cells)
            raise ValueError(f"{V.flag_name(k)} applies to {need} only, not --cell {cell}")
        opts[k] = v
    if "nonlinearity" in opts:
        opts["nonlinearity"] = check_choice("nonlinearity", opts["nonlinearity"], ("tanh", "relu"))
    if "init" in opts:
        opts["init"] = check_choice("init", opts["init"], INITS)
        if opts["init"] == "irnn" and cell != "rnn":
            raise ValueError(f"--init irnn (the identity-initialised ReLU RNN) applies to "
                             f"--cell rnn only, not --cell {cell}")
        if opts["init"] == "irnn":
            if opts.get("nonlinearity", "relu") != "relu":
                raise ValueError("--init irnn is the identity-initialised ReLU RNN: it needs "
                                 "--nonlinearity relu (the default with --init irnn)")
            opts["nonlinearity"] = "relu"
    if "peepholes" in opts:
        opts["peepholes"] = V.boolean(None, "--peepholes", opts["peepholes"])
    if "proj_size" in opts:
        opts["proj_size"] = check_int("proj_size", opts["proj_size"])
    if "variant" in opts:
        opts["variant"] = check_choice("variant", opts["variant"],
                                       ("reset_after", "reset_before"))
    if "forget_bias" in opts:
        opts["forget_bias"] = V.real(None, "--forget-bias", opts["forget_bias"])
    if "layer_norm" in opts:
        opts["layer_norm"] = check_choice("layer_norm", opts["layer_norm"],
                                          ("haste", "tfa") if cell == "lstm" else ("haste",))
    if "ln_eps" in opts:
        if "layer_norm" not in opts:
            raise ValueError("--ln-eps needs --layer-norm")
        v = opts["ln_eps"]
        if not V.is_real(v) or not 0 < v < float("inf"):
            raise ValueError(f"--ln-eps must be a finite number > 0, got {v!r}")
        opts["ln_eps"] = float(v)
    for k in REG_PROBABILITIES:
        if k in opts:
            opts[k] = V.probability(None, V.flag_name(k), opts[k])
            if not opts[k]:
                del opts[k]
    if "dropout_masks" in opts:
        opts["dropout_masks"] = check_choice("dropout_masks", opts["dropout_masks"],
                                             ("shared", "per_gate"))
        if opts["dropout_masks"] == "per_gate" and not ("recurrent_dropout" in opts
                                                        or "input_dropout" in opts):
            raise ValueError("--dropout-masks per_gate needs --recurrent-dropout or "
                             "--input-dropout > 0 (the masks it draws per gate block)")
    reg = [k for k in ("layer_norm",) + REG_PROBABILITIES if k in opts]
    if cell == "gru" and reg and getattr(a, "variant", None) == "reset_before":
        raise ValueError(f"{V.flag_name(reg[0])} needs --variant reset_after with --cell gru "
                         f"(the regularised GRU kernel's formula)")
    for k, v in opts.items():
        setattr(a, k, v)
    return opts


def model_kwargs(task, dtype=None) -> Dict[str, Any]:
    """Constructor arguments of an embedding + recurrent model (tag, translate): the model
    flags (checked by ``Task.resolve_flags``), ``--embed`` (checked here), ``--bidirectional``
    and the dtype (``dtype``, else ``args.dtype``, else float32)."""
    a = task.args
    return dict(embed=check_int("embed", task.flag("embed")), hidden=a.hidden,
                layers=a.layers, cell=a.cell, bidirectional=bool(task.flag("bidirectional")),
                dropout=a.dropout, dtype=dtype or getattr(a, "dtype", None) or "float32",
                seed=a.seed)


# -- models -------------------------------------------------------------------------------------
def make_rnn(cell: str, input_size: int, hidden: int, layers: int, dropout: float,
             seed: Optional[int], *, bidirectional: bool = False, dtype="float32",
             forget_bias: Optional[float] = None, where: Optional[str] = None,
             options: Optional[Dict[str, Any]] = None):
    """The recurrent stack: LSTM, GRU or RNN (tanh unless ``options`` says otherwise),
    time-major; ``dropout`` between layers (none with one layer); ``forget_bias`` (LSTM only)
    when given: the task's default forget-gate bias, added to PyTorch's initialisation and
    replacing Keras' unit forget bias under ``init='keras'`` (the layer adds its forget_bias
    to whatever the initialisation put there: forecast's default of 1 had given 2 there).
    ``options``: cell options (:data:`CELL_OPTIONS`, as :func:`cell_options` returns them)
    passed to the layer where they apply to ``cell``; they win over ``forget_bias`` (the
    user's --forget-bias X is added to the initialisation's bias, Keras' 1 included).
    ``where`` names the model in the error for an unknown cell."""
    cls = cell_class(where, cell)
    kw = dict(num_layers=layers, bidirectional=bool(bidirectional),
              dropout=dropout if layers > 1 else 0.0, dtype=dtype, seed=seed)
    if forget_bias is not None and cell == "lstm":
        keras = (options or {}).get("init") == "keras"
        kw["forget_bias"] = forget_bias - KERAS_UNIT_FORGET_BIAS if keras else forget_bias
    for k, v in (options or {}).items():
        if cell in CELL_OPTIONS[k]:
            kw[k] = v
    return cls(input_size, hidden, **kw)


def sub_seed(seed: Optional[int], k: int) -> Optional[int]:
    """The k-th seed derived from ``seed`` (None stays None)."""
    return None if seed is None else int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def sub_seeds(seed: Optional[int], n: int) -> List[Optional[int]]:
    """n seeds derived from ``seed`` at once (n Nones for None)."""
    return [None] * n if seed is None else \
        [int(v) for v in np.random.SeedSequence(seed).generate_state(n)]


# -- torch twins (--compare-torch) ---------------------------------------------------------------
def torch_sequence_loss(logits, targets: np.ndarray, lengths: np.ndarray) -> float:
    """Mean cross-entropy of torch ``logits`` [T, N, V] against ``targets`` [T, N] over the
    valid steps (t < lengths[n]); runs backward() and returns the loss."""
    import torch
    valid = torch.from_numpy(np.arange(targets.shape[0])[:, None] < lengths[None, :])
    loss = torch.nn.functional.cross_entropy(logits[valid], torch.from_numpy(targets)[valid])
    loss.backward()
    return float(loss.detach())


@functools.lru_cache(maxsize=None)
def torch_parts():
    """(MaskDropout, Recurrent): torch modules for the --compare-torch twins (torch is imported
    only here). ``MaskDropout(fused_dropout)`` draws a fusedrnn Dropout's masks from a copy of its
    generator; ``Recurrent(fused_layer)`` is a fusedrnn LSTM/GRU/RNN as one torch module per
    layer (packed sequences for the lengths), with the between-layer dropout masks drawn from a
    copy of the layer's generator, so that both runs use identical masks."""
    import torch
    from ..convert import to_torch

    def mask(rng, p, x):
        dt = np.float64 if x.dtype == torch.float64 else np.float32
        keep = rng.random(tuple(x.shape)) >= p
        return x * torch.from_numpy(keep.astype(dt) * dt(1.0 / (1.0 - p)))

    class MaskDropout(torch.nn.Module):
        def __init__(self, drop: Dropout):
            super().__init__()
            self.p, self.rng = drop.p, copy.deepcopy(drop._rng)

        def forward(self, x):
            return mask(self.rng, self.p, x) if self.training and self.p > 0 else x

    class Recurrent(torch.nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.lstm, self.D, self.p = rnn.mode == "LSTM", rnn.num_directions, rnn.dropout
            self.rng = copy.deepcopy(rnn._drop_rng)
            self.fused = type(rnn)
            self.num_layers = rnn.num_layers
            sd = rnn.state_dict()
            layers = []
            for k in range(rnn.num_layers):
                kw = dict(rnn.config())
                kw.update(input_size=rnn.input_size if k == 0 else rnn.num_directions *
                          rnn.hidden_size, num_layers=1, dropout=0.0, seed=None)
                del kw["type"]
                one = type(rnn)(**kw)
                one.load_state_dict({name: sd[name.replace("_l0", f"_l{k}")]
                                     for name in one.state_dict()})
                layers.append(to_torch(one))
            self.layers = torch.nn.ModuleList(layers)

        def forward(self, x, lengths, state=None):
            T, D = x.shape[0], self.D
            hs, cs = [], []
            for k, layer in enumerate(self.layers):
                s = None
                if state is not None:
                    s = (state[0][k * D:(k + 1) * D], state[1][k * D:(k + 1) * D]) \
                        if self.lstm else state[k * D:(k + 1) * D]
                packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths,
                                                                 enforce_sorted=False)
                out, s = layer(packed, s)
                x, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
                hs.append(s[0] if self.lstm else s)
                if self.lstm:
                    cs.append(s[1])
                if k < len(self.layers) - 1 and self.training and self.p > 0:
                    x = mask(self.rng, self.p, x)
            return x, ((torch.cat(hs), torch.cat(cs)) if self.lstm else torch.cat(hs))

        def export(self, prefix: str) -> Dict[str, np.ndarray]:
            """The weights under the fusedrnn layer's names."""
            return {prefix + name.replace("_l0", f"_l{k}"): p.detach().cpu().numpy().copy()
                    for k, layer in enumerate(self.layers)
                    for name, p in layer.named_parameters()}

    return MaskDropout, Recurrent
