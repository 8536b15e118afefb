"""Keras 3 interchange: :func:`load` reads ``.keras`` archives and ``.weights.h5`` files of
models made of Embedding, LSTM / GRU / SimpleRNN (optionally in Bidirectional), Dense;
:func:`save` writes a fusedrnn model as a ``.weights.h5`` file that the Keras model
:func:`keras_model` builds (same architecture) loads with ``model.load_weights``.

Only ``h5py`` is needed (``pip install "fusedrnn[keras]"``); keras itself only for
:func:`keras_model`. Neither is imported at ``import fusedrnn``.

Conventions (WEIGHTS.md): Keras LSTM ``kernel`` [C, 4U], ``recurrent_kernel`` [U, 4U], one
``bias`` [4U], gates i, f, c, o (our order, transposed); GRU gates z, r, h (ours r, z, n), bias
[2, 3U] = [input; recurrent] with ``reset_after=True`` (PyTorch's formula) and [3U] with
``reset_after=False`` (our ``variant="reset_before"``); SimpleRNN ``kernel`` [C, U]. Keras has
one LSTM/SimpleRNN bias where we have two: importing puts it in ``bias_ih`` (``bias_hh`` = 0),
saving writes ``bias_ih + bias_hh`` (one float rounding). ``unit_forget_bias`` is
initialisation only. Keras is batch-major: :class:`KerasModel` takes and returns [N, T, ...].
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from typing import Optional

import numpy as np

from .layers import GRU, LSTM, RNN
from .models import RecurrentModel, _refuse_low_precision
from .module import Embedding, Linear, Module, register_module

__all__ = ["load", "save", "keras_model", "KerasModel", "KerasImportError"]

_CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
_KERAS_CELL = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "rnn"}
_SNAKE = {"lstm": "lstm", "gru": "gru", "rnn": "simple_rnn"}
# our gate blocks in terms of Keras' (ours[j] = keras[_FROM_KERAS[j]])
_FROM_KERAS = {"lstm": (0, 1, 2, 3), "gru": (1, 0, 2), "rnn": (0,)}
_MAX_BYTES = 1 << 31
# root attribute of the .weights.h5 files save() writes: a GRU's formula, which a GRU
# without bias cannot show by its shapes (Keras ignores the attribute)
_VARIANT_ATTR = "fusedrnn.gru_variant"


class KerasImportError(ValueError):
    """A Keras file fusedrnn cannot read or cannot run exactly."""


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - exercised only without h5py
        raise ImportError("fusedrnn.keras needs h5py: pip install 'fusedrnn[keras]'") from e
    return h5py


def _blocks(a, order, axis=0):
    parts = np.split(a, len(order), axis=axis)
    return np.concatenate([parts[k] for k in order], axis=axis)


@register_module
class KerasModel(Module):
    """A Keras-shaped model on fusedrnn layers: [Embedding] -> recurrent stack -> [Dense].

    forward(x) -> y: x [N, T] token ids (with an embedding) or [N, T, C]; y [N, T, F] when
    ``return_sequences`` else [N, F] (F = output_size with a Dense head, else D*U). With
    ``mask_zero`` the zero tokens are Keras' mask; they must be trailing padding (each row
    non-zero tokens then zeros), which fusedrnn runs as sequence lengths: outputs at masked
    steps are zero (``zero_output_for_mask``, which Bidirectional always sets) or repeat the
    last valid output (Keras' default for a bare LSTM/GRU/SimpleRNN); the last output is each
    sequence's own last step. Inference only (no backward).
    """

    def __init__(self, cell: str, *, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, input_size: Optional[int] = None,
                 vocab_size: Optional[int] = None, embed_dim: Optional[int] = None,
                 output_size: Optional[int] = None, variant: str = "reset_after",
                 nonlinearity: str = "tanh", bias: bool = True, head_bias: bool = True,
                 return_sequences: bool = True, mask_zero: bool = False,
                 zero_output_for_mask: bool = True, dtype="float32"):
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"KerasModel: cell must be one of {sorted(_CELLS)}, got {cell!r}")
        if (vocab_size is None) == (input_size is None):
            raise ValueError("KerasModel: give exactly one of vocab_size and input_size")
        if mask_zero and vocab_size is None:
            raise ValueError("KerasModel: mask_zero needs an embedding (vocab_size)")
        self._record(cell=cell, hidden_size=hidden_size, num_layers=num_layers,
                     bidirectional=bool(bidirectional), input_size=input_size,
                     vocab_size=vocab_size, embed_dim=embed_dim, output_size=output_size,
                     variant=variant, nonlinearity=nonlinearity, bias=bool(bias),
                     head_bias=bool(head_bias), return_sequences=bool(return_sequences),
                     mask_zero=bool(mask_zero), zero_output_for_mask=bool(zero_output_for_mask),
                     dtype=np.dtype(dtype).name)
        self.embed = Embedding(vocab_size, embed_dim, dtype=dtype) if vocab_size else None
        kw = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias, dtype=dtype)
        if cell == "gru":
            kw["variant"] = variant
        if cell == "rnn":
            kw["nonlinearity"] = nonlinearity
        self.rnn = _CELLS[cell](embed_dim if vocab_size else input_size, hidden_size, **kw)
        width = self.rnn.num_directions * hidden_size
        self.head = Linear(width, output_size, bias=head_bias, dtype=dtype) \
            if output_size else None
        self.cell, self.return_sequences, self.mask_zero = cell, bool(return_sequences), \
            bool(mask_zero)
        self.zero_output_for_mask = bool(zero_output_for_mask) or bool(bidirectional)
        self.eval()

    def forward(self, x):
        fn = "KerasModel.forward"
        x = np.asarray(x)
        lengths = None
        if self.embed is not None:
            if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
                raise ValueError(f"{fn}: x must be integer token ids [N, T], got {x.dtype} "
                                 f"{list(x.shape)}")
            if self.mask_zero:
                mask = x != 0
                lengths = mask.sum(axis=1)
                prefix = np.arange(x.shape[1])[None, :] < lengths[:, None]
                if not np.array_equal(mask, prefix):
                    raise ValueError(f"{fn}: with mask_zero the zeros must be trailing padding "
                                     f"(fusedrnn runs masks as sequence lengths)")
            h = self.embed.forward(np.ascontiguousarray(x.T))
        else:
            if x.ndim != 3:
                raise ValueError(f"{fn}: x must be [N, T, C], got {list(x.shape)}")
            h = np.ascontiguousarray(x.transpose(1, 0, 2))
        out, state = self.rnn.forward(h, None, lengths)
        if self.return_sequences:
            y = out.transpose(1, 0, 2)
            if lengths is not None and not self.zero_output_for_mask:
                # Keras without zero_output_for_mask repeats the last valid output at masked
                # steps (Bidirectional always zeroes them)
                y = y.copy()
                for n, length in enumerate(lengths):
                    if 0 < length < y.shape[1]:
                        y[n, length:] = y[n, length - 1]
        else:
            h_n = state[0] if isinstance(state, tuple) else state
            D = self.rnn.num_directions
            y = np.concatenate([h_n[-D + d] for d in range(D)], axis=1)
        if self.head is not None:
            y = self.head.forward(np.ascontiguousarray(y))
        return np.ascontiguousarray(y)


# -- load ---------------------------------------------------------------------------------------
def load(path, *, return_sequences: Optional[bool] = None, mask_zero: Optional[bool] = None,
         nonlinearity: Optional[str] = None, variant: Optional[str] = None):
    """Import a Keras 3 ``.keras`` archive or ``.weights.h5`` file into a :class:`KerasModel`.

    A ``.keras`` archive carries the architecture (config.json): every option is read from
    it and anything fusedrnn cannot run exactly is refused (activations other than the
    defaults (SimpleRNN: tanh or relu), a Dense activation, ``go_backwards``, ``stateful``,
    ``merge_mode`` other than concat, mixed cell types or sizes, ``return_sequences=False``
    before the last recurrent layer, a layer other than InputLayer/Embedding/LSTM/GRU/
    SimpleRNN/Bidirectional/Dense/Dropout). A ``.weights.h5`` file has no architecture: the
    stack is read from its groups and shapes (the GRU formula from the bias shape), the
    activations are taken to be Keras' defaults, and ``return_sequences`` (default True),
    ``mask_zero`` (default False) and the SimpleRNN ``nonlinearity`` ("tanh" default, or
    "relu") are the arguments here. A GRU's formula comes from its bias shape ([2, 3U]:
    reset_after, [3U]: reset_before); a GRU without bias has none, so its ``variant``
    ("reset_after", Keras' ``reset_after=True``, or "reset_before") is the one :func:`save`
    recorded in the file, else the ``variant`` argument, which such a file requires.
    Raises :class:`KerasImportError` (a ValueError) for corrupt or unsupported files.
    """
    h5py = _h5py()
    path = os.fspath(path)
    fn = f"fusedrnn.keras.load({path!r})"
    if variant is not None and variant not in ("reset_after", "reset_before"):
        raise ValueError(f"{fn}: variant must be 'reset_after' or 'reset_before' (a GRU's "
                         f"formula), got {variant!r}")
    archive = zipfile.is_zipfile(path)  # False for a missing or unreadable file too
    if archive and (return_sequences is not None or mask_zero is not None or
                    nonlinearity is not None or variant is not None):
        raise TypeError(f"{fn}: return_sequences, mask_zero, nonlinearity and variant come "
                        f"from the .keras archive's config; pass them for .weights.h5 only")
    try:
        if archive:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
                if "config.json" not in names or "model.weights.h5" not in names:
                    raise KerasImportError(f"{fn}: a .keras archive must hold config.json and "
                                           f"model.weights.h5")
                for info in z.infolist():
                    if info.filename in ("config.json", "model.weights.h5") and \
                            info.file_size > _MAX_BYTES:
                        raise KerasImportError(f"{fn}: {info.filename} is too large")
                config = json.loads(z.read("config.json").decode("utf-8"))
                import io
                weights = io.BytesIO(z.read("model.weights.h5"))
            arch = _arch_from_config(fn, config)
            with h5py.File(weights, "r") as f:
                return _build(fn, arch, _read_vars(fn, f))
        with h5py.File(path, "r") as f:
            groups = _read_vars(fn, f)
            recorded = f.attrs.get(_VARIANT_ATTR)
            if isinstance(recorded, bytes):
                recorded = recorded.decode("utf-8", "replace")
            if recorded is not None and recorded not in ("reset_after", "reset_before"):
                raise KerasImportError(f"{fn}: attribute {_VARIANT_ATTR!r} = {recorded!r}")
            arch = _arch_from_weights(fn, groups, True if return_sequences is None
                                      else bool(return_sequences), bool(mask_zero),
                                      nonlinearity or "tanh", variant, recorded)
            return _build(fn, arch, groups)
    except KerasImportError:
        raise
    except FileNotFoundError as e:
        raise KerasImportError(f"{fn}: no such file") from e
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError,
            zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise KerasImportError(f"{fn}: corrupt or unsupported file "
                               f"({type(e).__name__}: {e})") from e


def _read_vars(fn, f):
    """{group path under 'layers/': [arrays of vars/0, vars/1, ...]} for every group that has
    variables."""
    h5py = _h5py()
    out = {}
    if "layers" not in f:
        raise KerasImportError(f"{fn}: no 'layers' group: not a Keras 3 weights file")

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and name.endswith("vars") and len(obj):
            keys = sorted(obj.keys(), key=lambda k: int(k) if k.isdigit() else -1)
            if keys != [str(i) for i in range(len(keys))]:
                raise KerasImportError(f"{fn}: group {name!r} has variables {keys}")
            arrays = []
            for k in keys:
                d = obj[k]
                if not isinstance(d, h5py.Dataset) or d.size > (1 << 28):
                    raise KerasImportError(f"{fn}: {name}/{k} is not a plausible weight")
                a = np.asarray(d[()])
                if a.dtype not in (np.float32, np.float64):
                    raise KerasImportError(f"{fn}: {name}/{k} has dtype {a.dtype}; float32 or "
                                           f"float64 expected")
                arrays.append(a)
            out["layers/" + name[:-len("/vars")]] = arrays
    f["layers"].visititems(visit)
    return out


def _snake(name):
    """keras.src.utils.naming.to_snake_case: the weights-file group of a layer class."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _arch_from_config(fn, config):
    if not isinstance(config, dict) or config.get("class_name") not in ("Sequential",
                                                                          "Functional"):
        got = config.get("class_name") if isinstance(config, dict) else config
        raise KerasImportError(f"{fn}: only Sequential and Functional models are supported, "
                               f"got {got!r}")
    layers = config.get("config", {}).get("layers", [])
    functional = config["class_name"] == "Functional"
    arch = dict(embed=None, rnn=[], head=None, mask_zero=False)
    counters = {}
    prev = None

    def key(cls):
        snake = _snake(cls)
        n = counters.get(snake, 0)
        counters[snake] = n + 1
        return f"layers/{snake}" + (f"_{n}" if n else "")

    for entry in layers:
        cls, cfg = entry.get("class_name"), entry.get("config", {})
        name = cfg.get("name", entry.get("name"))
        where = f"layer {name!r} ({cls})"
        if functional and cls not in ("InputLayer",) and entry.get("module", "").startswith(
                "keras.src.ops"):
            continue  # e.g. the NotEqual op that mask_zero adds
        if functional and cls != "InputLayer":
            nodes = entry.get("inbound_nodes", [])
            srcs = [a.get("config", {}).get("keras_history", [None])[0]
                    for a in (nodes[0].get("args", []) if nodes else [])
                    if isinstance(a, dict)]
            if len(nodes) != 1 or not srcs or srcs[0] != prev:
                raise KerasImportError(f"{fn}: {where}: only a linear chain of layers is "
                                       f"supported (its input is {srcs[:1]}, expected {prev!r})")
        if cls == "InputLayer":
            key(cls)
            prev = name
            continue
        if cls == "Dropout":
            key(cls)
            prev = name
            continue
        if cls == "Embedding":
            if arch["embed"] is not None or arch["rnn"]:
                raise KerasImportError(f"{fn}: {where}: the embedding must come first, once")
            arch["embed"] = key(cls)
            arch["mask_zero"] = bool(cfg.get("mask_zero", False))
        elif cls in ("LSTM", "GRU", "SimpleRNN", "Bidirectional"):
            if arch["head"] is not None:
                raise KerasImportError(f"{fn}: {where}: recurrent layers after the Dense head")
            k = key(cls)
            bidir = cls == "Bidirectional"
            if bidir:
                if cfg.get("merge_mode", "concat") != "concat":
                    raise KerasImportError(f"{fn}: {where}: merge_mode "
                                           f"{cfg.get('merge_mode')!r}; only 'concat'")
                inner = cfg.get("layer", {})
                back = cfg.get("backward_layer")
                if back is not None:
                    # Keras stores the mirror of `layer` (go_backwards=True): only that is run
                    keys = ("units", "activation", "recurrent_activation", "use_bias",
                            "reset_after", "return_sequences", "stateful", "unroll")
                    strip = lambda c: {k: c.get("config", {}).get(k) for k in keys}  # noqa
                    if back.get("class_name") != inner.get("class_name") or \
                            strip(back) != strip(inner) or \
                            not back.get("config", {}).get("go_backwards"):
                        raise KerasImportError(f"{fn}: {where}: a backward_layer that is not "
                                               f"the mirror of the forward layer is not "
                                               f"supported")
                cls, cfg = inner.get("class_name"), inner.get("config", {})
                if cls not in ("LSTM", "GRU", "SimpleRNN"):
                    raise KerasImportError(f"{fn}: {where}: wraps {cls}")
            arch["rnn"].append(_check_rnn(fn, where, cls, cfg, bidir, k))
        elif cls == "Dense":
            if arch["head"] is not None or not arch["rnn"]:
                raise KerasImportError(f"{fn}: {where}: one Dense head after the recurrent "
                                       f"layers is supported")
            act = cfg.get("activation", "linear")
            if act not in ("linear", None):
                raise KerasImportError(f"{fn}: {where}: activation {act!r}: only a linear "
                                       f"Dense head is imported (apply {act} to the output "
                                       f"yourself)")
            arch["head"] = (key(cls), bool(cfg.get("use_bias", True)))
        else:
            raise KerasImportError(f"{fn}: {where}: layer type {cls} is not supported")
        prev = name
    return arch


def _check_rnn(fn, where, cls, cfg, bidir, k):
    cell = _KERAS_CELL[cls]
    # (unroll=True unrolls Keras' loop in the graph: the same arithmetic, imported as is)
    for opt in ("go_backwards", "stateful", "return_state"):
        if cfg.get(opt):
            raise KerasImportError(f"{fn}: {where}: {opt}=True is not supported")
    act = cfg.get("activation", "tanh")
    if cell == "rnn":
        if act not in ("tanh", "relu"):
            raise KerasImportError(f"{fn}: {where}: activation {act!r}: SimpleRNN runs tanh "
                                   f"or relu")
    elif act != "tanh" or cfg.get("recurrent_activation", "sigmoid") != "sigmoid":
        raise KerasImportError(f"{fn}: {where}: activation {act!r} / recurrent_activation "
                               f"{cfg.get('recurrent_activation')!r}: only the defaults "
                               f"tanh / sigmoid are supported")
    return dict(key=k, cell=cell, bidir=bidir, units=cfg.get("units"),
                return_sequences=bool(cfg.get("return_sequences", False)),
                reset_after=bool(cfg.get("reset_after", True)), nonlinearity=act,
                use_bias=bool(cfg.get("use_bias", True)),
                zero_output_for_mask=bool(cfg.get("zero_output_for_mask", False)) or bidir)


def _arch_from_weights(fn, groups, return_sequences, mask_zero, nonlinearity, variant=None,
                       recorded=None):
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"{fn}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    arch = dict(embed=None, rnn=[], head=None, mask_zero=mask_zero)
    rnn_keys = []
    for k in groups:
        top = k.split("/")[1] if k.count("/") >= 1 else k
        base = re.sub(r"_\d+$", "", top)
        if base == "embedding":
            arch["embed"] = "layers/" + top
        elif base == "dense":
            if arch["head"] is not None:
                raise KerasImportError(f"{fn}: more than one Dense layer ({top})")
            arch["head"] = ("layers/" + top, len(groups[k]) == 2)
        elif base in ("lstm", "gru", "simple_rnn", "bidirectional"):
            if ("layers/" + top) not in rnn_keys:
                rnn_keys.append("layers/" + top)
        else:
            raise KerasImportError(f"{fn}: group {k!r}: layer type {base!r} is not supported")
    if arch["embed"] is not None and len([k for k in groups if "embedding" in k]) > 1:
        raise KerasImportError(f"{fn}: more than one Embedding")
    def suffix(k):
        m = re.search(r"_(\d+)$", k)
        return int(m.group(1)) if m else 0
    rnn_keys.sort(key=suffix)
    for i, k in enumerate(rnn_keys):
        bidir = k.split("/")[1].startswith("bidirectional")
        sub = k + ("/forward_layer/cell" if bidir else "/cell")
        if sub not in groups:
            raise KerasImportError(f"{fn}: {k}: no variables at {sub}")
        cls = {"lstm_cell": "LSTM", "gru_cell": "GRU", "simple_rnn_cell": "SimpleRNN"}
        ws = groups[sub]
        if len(ws) not in (2, 3):
            raise KerasImportError(f"{fn}: {sub}: {len(ws)} variables")
        kernel, rec = ws[0], ws[1]
        if rec.ndim != 2 or kernel.ndim != 2:
            raise KerasImportError(f"{fn}: {sub}: kernel and recurrent_kernel must be 2-D")
        U = rec.shape[0]
        g = rec.shape[1] // max(U, 1)
        cell = {4: "LSTM", 3: "GRU", 1: "SimpleRNN"}.get(g)
        if cell is None or rec.shape[1] != g * U:
            raise KerasImportError(f"{fn}: {sub}: recurrent_kernel {list(rec.shape)} fits no "
                                   f"cell")
        del cls
        if not bidir and not k.split("/")[1].startswith(_SNAKE[_KERAS_CELL[cell]]):
            raise KerasImportError(f"{fn}: {k}: its weights are those of a {cell}")
        reset_after = False
        if cell == "GRU":
            if len(ws) == 3:  # the bias shape tells the formula
                found = "reset_after" if ws[2].ndim == 2 else "reset_before"
                for what, v in (("variant", variant), (f"the file's {_VARIANT_ATTR!r}",
                                                       recorded)):
                    if v is not None and v != found:
                        raise KerasImportError(f"{fn}: {sub}: {what} = {v!r}, but its bias "
                                               f"{list(ws[2].shape)} is a {found} GRU's")
            else:  # no bias: nothing in the weights tells reset_after from reset_before
                if variant is not None and recorded is not None and variant != recorded:
                    raise KerasImportError(f"{fn}: variant={variant!r}, but the file records "
                                           f"{recorded!r} (fusedrnn.keras.save wrote it)")
                found = recorded or variant
                if found is None:
                    raise KerasImportError(
                        f"{fn}: {sub}: a GRU without bias: its weights do not say whether it "
                        f"is reset_after (Keras' reset_after=True, the default) or "
                        f"reset_before (reset_after=False); pass variant='reset_after' or "
                        f"variant='reset_before'")
            reset_after = found == "reset_after"
        arch["rnn"].append(dict(key=k, cell=_KERAS_CELL[cell], bidir=bidir, units=U,
                                return_sequences=True if i < len(rnn_keys) - 1
                                else return_sequences,
                                reset_after=reset_after,
                                nonlinearity=nonlinearity if cell == "SimpleRNN" else "tanh",
                                use_bias=len(ws) == 3,
                                zero_output_for_mask=bidir))
    if variant is not None and all(r["cell"] != "gru" for r in arch["rnn"]):
        raise KerasImportError(f"{fn}: variant={variant!r} is a GRU's formula; this file holds "
                               f"no GRU")
    return arch


def _build(fn, arch, groups):
    rnns = arch["rnn"]
    if not rnns:
        raise KerasImportError(f"{fn}: no LSTM, GRU or SimpleRNN layer")
    r0 = rnns[0]
    for r in rnns:
        for key in ("cell", "bidir", "units", "nonlinearity", "use_bias") + (
                ("reset_after",) if r0["cell"] == "gru" else ()):
            if r[key] != r0[key]:
                raise KerasImportError(f"{fn}: {r['key']}: its {key} ({r[key]}) differs from "
                                       f"the first recurrent layer's ({r0[key]}): fusedrnn "
                                       f"stacks are uniform")
    for r in rnns[:-1]:
        if not r["return_sequences"]:
            raise KerasImportError(f"{fn}: {r['key']}: return_sequences=False before the last "
                                   f"recurrent layer")
    cell, D, U = r0["cell"], 2 if r0["bidir"] else 1, r0["units"]

    def get(key, n):
        if key not in groups or len(groups[key]) != n:
            raise KerasImportError(f"{fn}: expected {n} variables at {key!r}, found "
                                   f"{len(groups.get(key, []))}")
        return groups[key]

    state = {}
    embed = None
    if arch["embed"] is not None:
        (embed,) = get(arch["embed"], 1)
        if embed.ndim != 2:
            raise KerasImportError(f"{fn}: the embedding table must be 2-D")
        state["embed.weight"] = embed
    dtype = (embed if embed is not None else groups[
        rnns[0]["key"] + ("/forward_layer/cell" if D == 2 else "/cell")][0]).dtype
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    order = _FROM_KERAS[cell]
    C0 = None
    for k, r in enumerate(rnns):
        for d in range(D):
            sub = r["key"] + (("/backward_layer/cell" if d else "/forward_layer/cell") if D == 2
                              else "/cell")
            ws = get(sub, 3 if r["use_bias"] else 2)
            kernel, rec = ws[0], ws[1]
            C = kernel.shape[0]
            if k == 0:
                C0 = C
            want_c = C0 if k == 0 else D * U
            if kernel.shape != (want_c, G * U) or rec.shape != (U, G * U):
                raise KerasImportError(f"{fn}: {sub}: kernel {list(kernel.shape)} and "
                                       f"recurrent_kernel {list(rec.shape)}; expected "
                                       f"[{want_c}, {G * U}] and [{U}, {G * U}]")
            if any(w.dtype != dtype for w in ws):
                raise KerasImportError(f"{fn}: {sub}: mixed dtypes")
            sfx = f"_l{k}" + ("_reverse" if d else "")
            state["rnn.weight_ih" + sfx] = _blocks(kernel.T, order)
            state["rnn.weight_hh" + sfx] = _blocks(rec.T, order)
            if r["use_bias"]:
                b = ws[2]
                if cell == "gru" and r["reset_after"]:
                    if b.shape != (2, G * U):
                        raise KerasImportError(f"{fn}: {sub}: bias {list(b.shape)}, expected "
                                               f"[2, {G * U}] (reset_after=True)")
                    b_ih, b_hh = b[0], b[1]
                else:
                    if b.shape != (G * U,):
                        raise KerasImportError(f"{fn}: {sub}: bias {list(b.shape)}, expected "
                                               f"[{G * U}]")
                    b_ih, b_hh = b, np.zeros_like(b)
                state["rnn.bias_ih" + sfx] = _blocks(b_ih, order)
                state["rnn.bias_hh" + sfx] = _blocks(b_hh, order)
    if embed is not None and C0 != embed.shape[1]:
        raise KerasImportError(f"{fn}: the embedding gives {embed.shape[1]} features, the "
                               f"first recurrent layer takes {C0}")
    output_size, head_bias = None, True
    if arch["head"] is not None:
        hk, head_bias = arch["head"]
        hw = get(hk, 2 if head_bias else 1)
        if hw[0].shape[0] != D * U or hw[0].ndim != 2 or \
                (head_bias and hw[1].shape != (hw[0].shape[1],)):
            raise KerasImportError(f"{fn}: {hk}: Dense kernel {list(hw[0].shape)}, expected "
                                   f"[{D * U}, outputs]")
        output_size = hw[0].shape[1]
        state["head.weight"] = hw[0].T
        if head_bias:
            state["head.bias"] = hw[1]
    model = KerasModel(cell, hidden_size=U, num_layers=len(rnns), bidirectional=D == 2,
                       input_size=None if embed is not None else C0,
                       vocab_size=embed.shape[0] if embed is not None else None,
                       embed_dim=embed.shape[1] if embed is not None else None,
                       output_size=output_size,
                       variant="reset_before" if cell == "gru" and not r0["reset_after"]
                       else "reset_after",
                       nonlinearity=r0["nonlinearity"], bias=r0["use_bias"],
                       head_bias=head_bias, return_sequences=rnns[-1]["return_sequences"],
                       mask_zero=arch["mask_zero"],
                       zero_output_for_mask=rnns[-1]["zero_output_for_mask"], dtype=dtype.name)
    model.load_state_dict({k: np.ascontiguousarray(v) for k, v in state.items()})
    return model


# -- save ---------------------------------------------------------------------------------------
def _parts(model):
    if isinstance(model, (KerasModel, RecurrentModel)):
        return model.embed, model.rnn, model.head
    if isinstance(model, (LSTM, GRU, RNN)):
        return None, model, None
    raise TypeError(f"fusedrnn.keras: model must be a fusedrnn LSTM, GRU, RNN, RecurrentModel "
                    f"or KerasModel, got {type(model).__name__}")


def _check_savable(fn, rnn):
    from .layers import _inference_options
    # (as the ONNX export: the weights of the inference model, whose dropouts are off)
    if opts := _inference_options(rnn):
        raise ValueError(f"{fn}: Keras' {rnn._mode} has no {', '.join(opts)} (issue 19 "
                         f"options that change inference)")
    _refuse_low_precision(fn, rnn, "Keras' float layers", "save")
    if getattr(rnn, "proj_size", 0):
        raise ValueError(f"{fn}: Keras' LSTM has no projection (proj_size)")
    if getattr(rnn, "peepholes", False):
        raise ValueError(f"{fn}: Keras' LSTM has no peepholes")
    if getattr(rnn, "cell_clip", None):
        raise ValueError(f"{fn}: Keras' LSTM has no cell-state clip (cell_clip)")


def save(model, path) -> None:
    """Write ``model`` (LSTM/GRU/RNN layer, RecurrentModel or KerasModel) as a Keras 3
    ``.weights.h5`` file that ``keras_model(model).load_weights(path)`` loads.
    Raises ValueError for what Keras' layers cannot express (LSTM projection, peepholes,
    cell_clip)."""
    h5py = _h5py()
    fn = "fusedrnn.keras.save"
    embed, rnn, head = _parts(model)
    _check_savable(fn, rnn)
    path = os.fspath(path)
    if not path.endswith(".weights.h5"):
        raise ValueError(f"{fn}: the path must end in .weights.h5 (Keras requires it), "
                         f"got {path!r}")
    cell = rnn.mode.lower()
    order = _FROM_KERAS[cell]
    inv = [0] * len(order)
    for j, k in enumerate(order):
        inv[k] = j
    L, D = rnn.num_layers, rnn.num_directions
    p = {k: v.data for k, v in rnn.named_parameters()}

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            if cell == "gru":
                f.attrs[_VARIANT_ATTR] = rnn.variant
            layers = f.create_group("layers")
            f.create_group("vars").attrs["name"] = "sequential"

            def vars_(group, name, arrays):
                v = group.create_group("vars")
                v.attrs["name"] = name
                for i, a in enumerate(arrays):
                    v.create_dataset(str(i), data=np.ascontiguousarray(a))

            if embed is not None:
                vars_(layers.create_group("embedding"), "embedding", [embed.weight.data])
            snake = _SNAKE[cell]
            for k in range(L):
                name = ("bidirectional" if D == 2 else snake) + (f"_{k}" if k else "")
                g = layers.create_group(name)
                for d in range(D):
                    sfx = f"_l{k}" + ("_reverse" if d else "")
                    arrays = [_blocks(p["weight_ih" + sfx], inv).T,
                              _blocks(p["weight_hh" + sfx], inv).T]
                    if rnn.bias:
                        b_ih = _blocks(p["bias_ih" + sfx], inv)
                        b_hh = _blocks(p["bias_hh" + sfx], inv)
                        if cell == "gru" and rnn.variant == "reset_after":
                            arrays.append(np.stack([b_ih, b_hh]))
                        else:
                            arrays.append(b_ih + b_hh)
                    if D == 2:
                        sub = g.create_group("backward_layer" if d else "forward_layer")
                        sub.create_group("vars").attrs["name"] = ("backward_" if d else
                                                                  "forward_") + snake
                    else:
                        sub = g
                    vars_(sub.create_group("cell"), snake + "_cell", arrays)
                g.create_group("vars").attrs["name"] = name
            if head is not None:
                arrays = [head.weight.data.T] + (
                    [head.bias.data] if head.bias is not None else [])
                vars_(layers.create_group("dense"), "dense", arrays)

    from .io import _atomic_write   # (a unique temporary next to it, removed on failure)
    _atomic_write(path, write, by_path=True)


def keras_model(model):
    """The Keras 3 Sequential model with ``model``'s architecture (not its weights: load them
    with ``load_weights`` from a file :func:`save` wrote). Needs keras."""
    try:
        import keras
    except ImportError as e:  # pragma: no cover
        raise ImportError("fusedrnn.keras.keras_model needs keras (pip install keras)") from e
    embed, rnn, head = _parts(model)
    _check_savable("fusedrnn.keras.keras_model", rnn)
    dtype = np.dtype(rnn.dtype).name
    mask_zero = bool(getattr(model, "mask_zero", False))
    ret_last = bool(getattr(model, "return_sequences", True))
    if embed is not None:
        layers = [keras.Input((None,), dtype="int32"),
                  keras.layers.Embedding(embed.weight.shape[0], embed.weight.shape[1],
                                         mask_zero=mask_zero, dtype=dtype)]
    else:
        layers = [keras.Input((None, rnn.input_size), dtype=dtype)]
    for k in range(rnn.num_layers):
        kw = dict(return_sequences=k < rnn.num_layers - 1 or ret_last, use_bias=rnn.bias,
                  dtype=dtype)
        if rnn.mode == "LSTM":
            layer = keras.layers.LSTM(rnn.hidden_size, **kw)
        elif rnn.mode == "GRU":
            layer = keras.layers.GRU(rnn.hidden_size, reset_after=rnn.variant == "reset_after",
                                     **kw)
        else:
            layer = keras.layers.SimpleRNN(rnn.hidden_size, activation=rnn.nonlinearity, **kw)
        if rnn.bidirectional:
            layer = keras.layers.Bidirectional(layer, dtype=dtype)
        layers.append(layer)
    if head is not None:
        layers.append(keras.layers.Dense(head.weight.shape[0], use_bias=head.bias is not None,
                                         dtype=dtype))
    return keras.Sequential(layers)
