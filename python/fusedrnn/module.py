"""Parameters, the Module base class, Sequential, and the feed-forward layers around the
recurrent ones: Linear, Embedding, Dropout.

Shaped like torch.nn but explicit: every module has ``forward(...)`` and ``backward(d_out)``.
``forward`` in train mode remembers what ``backward`` needs (one pending forward per module, as
in Keras or llm.c); ``backward`` returns the gradient with respect to the input and *adds* the
parameter gradients into each ``Parameter.grad`` (zero them with ``zero_grad()``).

A :class:`Parameter` holds ``data`` and ``grad``, two arrays of one shape and dtype. Optimisers
update ``data`` in place, so every array a module hands to the kernels stays valid.

Names follow torch: ``named_parameters()`` yields ``"rnn.weight_ih_l0"``, ``"head.bias"``,
``"0.weight"`` (children of a Sequential are numbered). ``state_dict()`` is one flat ordered dict
of names to arrays; as torch's, it lists a tied Parameter (one reachable under two names) under
every name, where ``named_parameters()`` lists it once. ``grad_dict()`` maps the names of
``named_parameters()`` to the gradients.

Every built-in module records the arguments it was built with (``config()``), so a checkpoint
can rebuild the model without the code that made it (:func:`module_from_config`).
"""
from __future__ import annotations

import math
import numbers
from collections import OrderedDict, namedtuple
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from . import validators as V
from ._blas import single_threaded_blas

__all__ = [
    "Parameter", "Module", "Sequential", "Linear", "Embedding", "Dropout",
    "module_from_config", "register_module",
]

_DTYPES = {"float32": np.float32, "float64": np.float64}

# the package's argument checks under the names the layers import
_dtype, _positive_int, _seed = V.dtype, V.positive_int, V.seed



def _as_numpy(name: str, value, dtype: Optional[np.dtype] = None) -> np.ndarray:
    """An array from a numpy array or a torch tensor (without importing torch). A tensor is
    checked before ``.numpy()``, whose own errors (bfloat16, meta, sparse, a lazily negated
    view) name neither the entry nor the dtype wanted; it is never cast. ``dtype`` None: float32
    or float64."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        wants = ["torch.float32", "torch.float64"] if dtype is None else \
            [f"torch.{np.dtype(dtype).name}"]
        want = " or ".join(wants)
        got = str(getattr(value, "dtype", "?"))
        if got not in wants:
            raise TypeError(f"load_state_dict: {name} must have dtype {want}, got {got}; "
                            f"nothing is cast (convert the state dict with .to({wants[0]}) "
                            f"first)")
        if getattr(value, "is_neg", lambda: False)() or getattr(value, "is_conj",
                                                               lambda: False)():
            raise TypeError(f"load_state_dict: {name} is a lazily negated (or conjugated) "
                            f"view; pass it through .resolve_neg() (or .clone()) first")
        if str(getattr(value, "device", "")) == "meta" or getattr(value, "is_meta", False):
            raise TypeError(f"load_state_dict: {name} is a meta tensor (a shape without "
                            f"data); a {want} tensor with its values is needed")
        if str(getattr(value, "layout", "torch.strided")) != "torch.strided":
            raise TypeError(f"load_state_dict: {name} is a {value.layout} tensor; a dense "
                            f"(torch.strided) {want} tensor is needed")
        return value.detach().cpu().numpy()
    raise TypeError(f"load_state_dict: {name} must be a numpy array or a torch tensor, "
                    f"got {type(value).__name__}")


def _train_mode(where: str, mode) -> bool:
    """train()'s mode: a bool (numpy's too), else ValueError as torch's Module.train."""
    if not isinstance(mode, (bool, np.bool_)):
        raise ValueError(f"{where}.train: mode must be a bool (True: train mode, False: eval "
                         f"mode), got {type(mode).__name__} {mode!r}")
    return bool(mode)


class Parameter:
    """A trainable array and its gradient (same shape and dtype; the gradient starts at zero).

    ``data`` and ``grad`` may be replaced by arrays of the same shape and dtype (the kernels and
    optimisers write into them, so they must be writeable); anything else raises at the
    assignment, naming what was expected."""

    # _pending: None, or a weakref to the single-step cell (fusedrnn.cells) holding deferred
    # weight-gradient terms for this Parameter; reading or replacing ``grad`` applies them first.
    # _version: bumped at every change the library makes or sees (``data`` assigned, which
    # ``p.data -= ...`` does too; the optimisers' steps; Module.load_state_dict and
    # ``module.<name> = array``), so that a cell keeping packed copies of the weights
    # (fusedrnn.cells) notices any of them, whichever module or optimiser made it. A write into
    # the array itself (``p.data[...] = ...``, ``np.copyto``) is invisible to it: call
    # ``changed()`` (or the cell's ``weights_changed()``) after one.
    __slots__ = ("_data", "_grad", "_pending", "_version")

    def __init__(self, data: np.ndarray):
        if not isinstance(data, np.ndarray) or data.dtype not in (np.float32, np.float64):
            raise TypeError("Parameter: data must be a float32 or float64 numpy array")
        if not data.flags.writeable:   # as the data setter (the optimisers write into it)
            raise ValueError("Parameter: data must be a writeable array, got a read-only one")
        self._data = np.ascontiguousarray(data)
        self._grad = np.zeros_like(self._data)
        self._pending = None
        self._version = 0

    def changed(self) -> None:
        """Announce a write into ``data``'s array in place (``p.data[...] = ...``,
        ``np.copyto(p.data, ...)``): every cell using this Parameter packs it again at its next
        step. (Assigning ``p.data``, ``p.data -= ...``, the optimisers and ``load_state_dict``
        announce themselves.)"""
        self._version += 1

    def _settle(self) -> None:
        """Applies the deferred weight-gradient terms of the cell that _pending names."""
        ref, self._pending = self._pending, None
        cell = ref()
        if cell is not None:
            cell._flush_grads()

    def __getstate__(self):
        return {"_data": self._data, "_grad": self.grad}   # (grad: pending terms applied)

    def __setstate__(self, state):
        if isinstance(state, tuple):   # (a pickle from before _pending: (None, slots))
            state = state[1]
        self._data, self._grad, self._pending = state["_data"], state["_grad"], None
        self._version = 0

    def _check(self, what: str, a) -> np.ndarray:
        want = f"a writeable {self._data.dtype} array of shape {tuple(self._data.shape)}"
        if not isinstance(a, np.ndarray):
            raise TypeError(f"Parameter.{what} must be {want}, got {type(a).__name__}")
        if a.shape != self._data.shape or a.dtype != self._data.dtype:
            raise ValueError(f"Parameter.{what} must be {want}, got a {a.dtype} array of "
                             f"shape {tuple(a.shape)}")
        if not a.flags.writeable:
            raise ValueError(f"Parameter.{what} must be {want}, got a read-only array")
        if not a.flags.c_contiguous:
            raise ValueError(f"Parameter.{what} must be {want} (C-contiguous), got a strided "
                             f"view; pass np.ascontiguousarray(...)")
        return a

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, a) -> None:
        self._data = self._check("data", a)
        self._version += 1

    @property
    def grad(self) -> np.ndarray:
        if self._pending is not None:
            self._settle()
        return self._grad

    @grad.setter
    def grad(self, a) -> None:
        if self._pending is not None:
            self._settle()   # (into the array being replaced, as if added at each step)
        self._grad = self._check("grad", a)

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def __repr__(self) -> str:
        return f"Parameter(shape={list(self.data.shape)}, dtype={self.data.dtype})"


_REGISTRY: Dict[str, type] = {}


def _packing_key(params, *rest) -> tuple:
    """What a packed copy of ``params`` (Parameters, None where absent) was made from, plus
    ``rest`` (plain values: a version, a precision): each Parameter's array and version. The key
    holds the arrays, so an id cannot pass for another array's; compare with _same_packing."""
    return tuple(None if p is None else (p._data, p._version) for p in params), rest


def _same_packing(a, b) -> bool:
    """Two _packing_key keys (a may be None: nothing packed) name the same arrays at the same
    versions and the same rest."""
    return a is not None and a[1] == b[1] and len(a[0]) == len(b[0]) and all(
        x is y if x is None or y is None else (x[0] is y[0] and x[1] == y[1])
        for x, y in zip(a[0], b[0]))


# The package's modules defining registered classes that ``import fusedrnn`` does not import:
# module_from_config imports them before calling a type unknown (a task's checkpoint loaded in
# a fresh interpreter).
_REGISTERING_MODULES = ("fusedrnn.attention", "fusedrnn.keras", "fusedrnn.tasks.classify",
                        "fusedrnn.tasks.forecast", "fusedrnn.tasks.recognise",
                        "fusedrnn.tasks.tag", "fusedrnn.tasks.translate",
                        "fusedrnn.tasks.attention_seq2seq")


def register_module(cls):
    """Class decorator: lets checkpoints rebuild ``cls`` from its ``config()``."""
    _REGISTRY[cls.__name__] = cls
    return cls


def _config_class(config):
    """The registered class a config names (the package's registering modules imported when
    needed; None if unknown)."""
    cls = _REGISTRY.get(config["type"])
    if cls is None:   # a class of a module not imported yet (the tasks' models, Keras')
        import importlib
        before = dict(_REGISTRY)
        for name in _REGISTERING_MODULES:
            importlib.import_module(name)
        _REGISTRY.update(before)   # a user's class of the same name as one of these stays
        cls = _REGISTRY.get(config["type"])
    return cls


def module_from_config(config: dict) -> "Module":
    """Rebuilds a module (parameters freshly initialised) from ``Module.config()``."""
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"module_from_config: expected a dict with a 'type', got {config!r}")
    cls = _config_class(config)
    if cls is None:
        raise ValueError(f"module_from_config: unknown module type {config['type']!r} "
                         f"(known: {sorted(_REGISTRY)})")
    return cls._from_config(config)


class StateDictKeyError(RuntimeError, KeyError):
    """``load_state_dict(strict=True)`` found missing or unexpected names: a RuntimeError, as
    torch's, and a KeyError, as fusedrnn raised before (either ``except`` catches it)."""

    __str__ = RuntimeError.__str__


class StateDictShapeError(RuntimeError, ValueError):
    """``load_state_dict`` found an entry of another shape: a RuntimeError, as torch's "size
    mismatch", and a ValueError, as fusedrnn raised before."""


class _IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    """What ``Module.load_state_dict`` returns, as torch's (its class, repr included): the
    lists of the module's names the state dict lacked (``missing_keys``) and of the state
    dict's names the module has not (``unexpected_keys``); both empty after a strict load."""

    __slots__ = ()

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


class Module:
    """Base class: registers Parameter and Module attributes in assignment order.

    Subclasses implement ``forward`` and ``backward``; built-in ones also ``config()``.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_init_args", None)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call Module.__init__() before "
                                 f"assigning attributes")
        p = self._parameters.get(name)
        if p is not None and not isinstance(value, Parameter):
            self._assign_into(name, p, value)
            return
        # a Parameter or module replacing one keeps its place in the order (as torch's):
        # the optimisers' state and Sequential's order follow it
        if isinstance(value, Parameter):
            self._modules.pop(name, None)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._parameters.pop(name, None)
            self._modules[name] = value
        else:
            self._parameters.pop(name, None)
            self._modules.pop(name, None)
        object.__setattr__(self, name, value)

    def _assign_into(self, name: str, p: Parameter, value) -> None:
        """``module.<parameter name> = array``: copies the values into the Parameter (same
        shape; a float dtype, cast to the parameter's); anything else is a TypeError."""
        where = f"{type(self).__name__}.{name}"
        if not p.data.flags.writeable:
            raise ValueError(f"{where} is read-only (a frozen copy's weights, packed once): "
                             f"assign a Parameter, or change the unfrozen model and freeze it "
                             f"again")
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{where} is a Parameter: assign a Parameter or a float array of "
                            f"shape {tuple(p.shape)} (copied into it), got "
                            f"{type(value).__name__}")
        if value.shape != p.shape or value.dtype.kind != "f":
            raise ValueError(f"{where}: expected a float array of shape {tuple(p.shape)}, got "
                             f"a {value.dtype} array of shape {tuple(value.shape)}")
        np.copyto(p.data, value, casting="same_kind")
        p.changed()

    def __delattr__(self, name: str) -> None:
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        object.__delattr__(self, name)

    # -- calling -------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- structure -----------------------------------------------------------------------------
    def named_children(self) -> Iterator[Tuple[str, "Module"]]:
        yield from self._modules.items()

    def children(self) -> Iterator["Module"]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[Tuple[str, "Module"]]:
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "") -> Iterator[Tuple[str, Parameter]]:
        """(name, Parameter) over this module and its children, torch's names and order."""
        seen = set()
        for name, p in self._all_named_parameters(prefix):
            if id(p) not in seen:  # a shared (tied) parameter is listed once
                seen.add(id(p))
                yield name, p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def _all_named_parameters(self, prefix: str = "") -> Iterator[Tuple[str, Parameter]]:
        """(name, Parameter) under every name it is reachable by: a tied Parameter once per
        name (torch's state_dict order), where named_parameters() lists it once."""
        for mname, m in self.named_modules(prefix):
            for pname, p in m._parameters.items():
                yield (f"{mname}.{pname}" if mname else pname), p

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Name -> parameter array (the arrays themselves, as torch returns its tensors). A
        tied Parameter is listed under each of its names, as torch's state_dict lists it (so a
        strict load into the torch model with the same tie, and of its state dict here,
        works); the entries are the same array. Count parameters with ``parameters()``."""
        return OrderedDict((n, p.data) for n, p in self._all_named_parameters())

    def grad_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Name -> gradient array, the names of ``named_parameters()`` (a tied Parameter's
        one gradient under its first name)."""
        return OrderedDict((n, p.grad) for n, p in self.named_parameters())

    def load_state_dict(self, state_dict, strict: bool = True) -> _IncompatibleKeys:
        """Copies arrays (or torch tensors) into the parameters, in place.

        Names, shapes and dtypes are checked for every entry before anything is copied; a
        mismatch raises naming the entry. The names are ``state_dict()``'s: a tied Parameter's
        every name (``strict=True`` requires them all, as torch's does); the entries given for
        one Parameter must be equal, else ValueError naming them. ``strict=False`` skips
        missing and unexpected names. Nothing is cast: a float64 array for a float32 parameter
        raises (cast it yourself). Returns torch's named tuple ``(missing_keys,
        unexpected_keys)`` (both empty after a strict load).
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"load_state_dict: expected a mapping of names to arrays, "
                            f"got {type(state_dict).__name__}")
        own = OrderedDict(self._all_named_parameters())
        given = OrderedDict((str(k), v) for k, v in state_dict.items())
        missing = [k for k in own if k not in given]
        unexpected = [k for k in given if k not in own]
        if strict and (missing or unexpected):
            raise StateDictKeyError(f"load_state_dict: missing {missing}, unexpected "
                                    f"{unexpected}")
        staged = []
        first = {}      # id(Parameter) -> (its first name given, the array checked for it)
        for name, p in own.items():
            if name not in given:
                continue
            a = _as_numpy(name, given[name], p.data.dtype)
            if a.shape != p.data.shape:
                raise StateDictShapeError(f"load_state_dict: {name} must have shape "
                                          f"{list(p.data.shape)}, got {list(a.shape)}")
            if a.dtype != p.data.dtype:
                raise TypeError(f"load_state_dict: {name} must have dtype {p.data.dtype}, "
                                f"got {a.dtype}")
            if not p.data.flags.writeable:
                raise ValueError(f"load_state_dict: {name} is read-only (a frozen copy's "
                                 f"weights, packed once): load into the unfrozen model and "
                                 f"freeze it again; nothing was copied")
            seen = first.get(id(p))
            if seen is not None:
                # a tied Parameter given again under another name: one value to copy, so the
                # entries must agree (torch copies both, and the last one silently wins)
                if not np.array_equal(seen[1], a, equal_nan=True):
                    raise ValueError(f"load_state_dict: {seen[0]} and {name} are one (tied) "
                                     f"parameter, but the state dict gives them different "
                                     f"values; nothing was copied")
                continue
            first[id(p)] = (name, a)
            staged.append((p, a))
        for p, a in staged:
            np.copyto(p.data, a)
            p.changed()
        return _IncompatibleKeys(missing, unexpected)

    # -- modes and gradients -------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Sets train mode (or eval: ``mode=False``) here and, through each child's own
        ``train()`` as torch's Module does, in every submodule (a single-step cell inside a
        model drops its recorded steps as ``cell.train()`` does). ``mode`` must be a bool
        (ValueError otherwise, as torch's: ``train("eval")`` had set train mode)."""
        mode = _train_mode(type(self).__name__, mode)
        object.__setattr__(self, "training", mode)
        for m in self.children():
            m.train(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad.fill(0)

    # -- configuration (checkpoints) -------------------------------------------------------------
    def _record(self, **kwargs) -> None:
        """Built-in modules call this with their constructor arguments (NumPy scalars as the
        Python numbers they are, so that the config is JSON)."""
        object.__setattr__(self, "_init_args", {
            k: v.item() if isinstance(v, np.generic) else v for k, v in kwargs.items()})

    def config(self) -> dict:
        """A JSON-serialisable description that ``module_from_config`` rebuilds."""
        if self._init_args is None or _REGISTRY.get(type(self).__name__) is not type(self):
            raise TypeError(f"{type(self).__name__} has no config: decorate it with "
                            f"@fusedrnn.register_module and call self._record(**args) in "
                            f"__init__, or save its state_dict() instead")
        args = {k: (np.dtype(v).name if k == "dtype" else v) for k, v in self._init_args.items()}
        return {"type": type(self).__name__, **args}

    @classmethod
    def _from_config(cls, config: dict) -> "Module":
        args = {k: v for k, v in config.items() if k != "type"}
        return cls(**args)

    def extra_repr(self) -> str:
        if self._init_args is None:
            return ""
        return ", ".join(f"{k}={np.dtype(v).name if k == 'dtype' else v!r}"
                         for k, v in self._init_args.items() if k not in ("seed",))

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            for name, m in self._modules.items():
                sub = repr(m).replace("\n", "\n  ")
                lines.append(f"\n  ({name}): {sub}")
            lines.append("\n")
        lines.append(")")
        return "".join(lines)


@register_module
class Sequential(Module):
    """Modules applied in order; each takes one array and returns one array.

    Children are named "0", "1", ... (torch's names). ``backward`` runs them in reverse.
    """

    def __init__(self, *modules: Module):
        super().__init__()
        seen = {}
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: argument {i} must be a Module, "
                                f"got {type(m).__name__}")
            for sub in m.modules():
                # a module keeps what one forward's backward needs: used twice in one pass,
                # the second forward overwrote the first's (silently wrong weight gradients)
                if seen.setdefault(id(sub), i) != i:
                    raise ValueError(f"Sequential: argument {i} is (or holds) a module already in "
                                     f"argument {seen[id(sub)]}; a module runs once per forward "
                                     f"pass here (use two modules; they may share Parameters)")
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for m in self._modules.values():
            x = m.forward(x)
        return x

    def backward(self, d):
        for m in reversed(list(self._modules.values())):
            d = m.backward(d)
        return d

    def config(self) -> dict:
        if _REGISTRY.get(type(self).__name__) is not type(self):
            return super().config()  # an unregistered subclass: raises
        mods = list(self._modules.values())
        if len({id(m) for m in mods}) != len(mods):
            raise TypeError("Sequential.config: a module that appears twice (shared weights) "
                            "cannot be rebuilt from a config; save its state_dict() instead")
        owner: Dict[int, int] = {}   # a Parameter (or a module holding some) in two children
        for i, m in enumerate(mods):
            for _, p in m.named_parameters():
                if owner.setdefault(id(p), i) != i:
                    raise TypeError("Sequential.config: a Parameter shared by two of its "
                                    "modules (tied weights) cannot be rebuilt from a config; "
                                    "save its state_dict() instead")
        return {"type": "Sequential", "modules": [m.config() for m in mods]}

    @classmethod
    def _from_config(cls, config: dict) -> "Sequential":
        return cls(*(module_from_config(c) for c in config.get("modules", [])))


@register_module
class Linear(Module):
    """y = x Wᵀ + b over the last axis: x [..., in_features] -> y [..., out_features].

    weight [out_features, in_features], bias [out_features]; torch's initialisation
    U(±1/√in_features) for both.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 dtype="float32", seed: Optional[int] = None):
        super().__init__()
        fn = "Linear"
        in_features = _positive_int(fn, "in_features", in_features)
        out_features = _positive_int(fn, "out_features", out_features)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"{fn}: bias must be a bool, got {type(bias).__name__}")
        dt = _dtype(fn, dtype)
        seed = _seed(fn, seed)
        self._record(in_features=in_features, out_features=out_features, bias=bool(bias),
                     dtype=dt, seed=seed)
        self.in_features, self.out_features = in_features, out_features
        rng = np.random.default_rng(seed)
        k = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(rng.uniform(-k, k, (out_features, in_features)).astype(dt))
        self.bias = Parameter(rng.uniform(-k, k, out_features).astype(dt)) if bias else None
        self._x = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        w = self.weight.data
        if not isinstance(x, np.ndarray):
            raise TypeError(f"Linear.forward: x must be a numpy array [..., {self.in_features}], "
                            f"got {type(x).__name__}")
        if x.dtype != w.dtype:
            raise TypeError(f"Linear.forward: x must have dtype {w.dtype}, got {x.dtype}")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear.forward: x must have shape [..., {self.in_features}], "
                             f"got {list(x.shape)}")
        # One 2-D product: numpy's batched matmul on 3-D input is several times slower.
        with single_threaded_blas():   # no fight with the kernels' threads (_blas.py)
            y = x.reshape(-1, self.in_features) @ w.T
        y = y.reshape(x.shape[:-1] + (self.out_features,))
        if self.bias is not None:
            y += self.bias.data
        # (a copy: a caller refilling x before backward must not change the gradients)
        self._x = x.copy() if self.training else None
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self._x
        if x is None:
            raise RuntimeError("Linear.backward: no training forward to differentiate "
                               "(call forward in train mode first)")
        V.array("Linear.backward", "dy", dy, x.shape[:-1] + (self.out_features,), x.dtype)
        x2 = x.reshape(-1, self.in_features)
        dy2 = dy.reshape(-1, self.out_features)
        with single_threaded_blas():
            self.weight.grad += dy2.T @ x2
            dx = dy2 @ self.weight.data
        if self.bias is not None:
            self.bias.grad += dy2.sum(axis=0)
        return dx.reshape(x.shape)


@register_module
class Embedding(Module):
    """Rows of ``weight`` [num_embeddings, embedding_dim] picked by integer indices.

    idx [...] (any integer array) -> [..., embedding_dim]. torch's initialisation N(0, 1); the
    row ``padding_idx`` (if given) starts at zero and gets no gradient. backward returns None
    (indices have no gradient).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 padding_idx: Optional[int] = None, *, dtype="float32",
                 seed: Optional[int] = None):
        super().__init__()
        fn = "Embedding"
        num_embeddings = _positive_int(fn, "num_embeddings", num_embeddings)
        embedding_dim = _positive_int(fn, "embedding_dim", embedding_dim)
        if padding_idx is not None:
            if (isinstance(padding_idx, (bool, np.bool_))
                    or not isinstance(padding_idx, numbers.Integral)
                    or not -num_embeddings <= padding_idx < num_embeddings):
                raise ValueError(f"{fn}: padding_idx must be an integer in "
                                 f"[-{num_embeddings}, {num_embeddings}), got {padding_idx!r}")
            padding_idx = int(padding_idx) % num_embeddings
        dt = _dtype(fn, dtype)
        seed = _seed(fn, seed)
        self._record(num_embeddings=num_embeddings, embedding_dim=embedding_dim,
                     padding_idx=padding_idx, dtype=dt, seed=seed)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        rng = np.random.default_rng(seed)
        w = rng.standard_normal((num_embeddings, embedding_dim)).astype(dt)
        if padding_idx is not None:
            w[padding_idx] = 0
        self.weight = Parameter(w)
        self._idx = None

    def forward(self, idx) -> np.ndarray:
        if not isinstance(idx, np.ndarray) or idx.dtype.kind not in "iu":
            raise TypeError(f"Embedding.forward: idx must be an integer numpy array, got "
                            f"{getattr(idx, 'dtype', type(idx).__name__)}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            raise ValueError(f"Embedding.forward: idx must lie in [0, {self.num_embeddings}), "
                             f"got min {idx.min()} max {idx.max()}")
        self._idx = idx.copy() if self.training else None   # (a copy, as Linear's x)
        return self.weight.data[idx]

    def backward(self, dy: np.ndarray) -> None:
        idx = self._idx
        if idx is None:
            raise RuntimeError("Embedding.backward: no training forward to differentiate")
        V.array("Embedding.backward", "dy", dy, idx.shape + (self.embedding_dim,),
                self.weight.dtype)
        flat = idx.reshape(-1)
        rows = dy.reshape(-1, self.embedding_dim)
        if self.padding_idx is not None:
            keep = flat != self.padding_idx
            flat, rows = flat[keep], rows[keep]
        np.add.at(self.weight.grad, flat, rows)
        return None


@register_module
class Dropout(Module):
    """Inverted dropout: in train mode zeroes each element with probability p and scales the
    rest by 1/(1-p); identity in eval mode. The mask comes from the module's own generator
    (seeded by ``seed``)."""

    def __init__(self, p: float = 0.5, *, seed: Optional[int] = None):
        super().__init__()
        p = V.probability("Dropout", "p", p, closed=True)   # [0, 1] as torch's nn.Dropout
        seed = _seed("Dropout", seed)
        self._record(p=p, seed=seed)
        self.p = p
        self._rng = np.random.default_rng(seed)
        self._mask = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
            raise TypeError("Dropout.forward: x must be a float32 or float64 numpy array")
        if not self.training or self.p == 0:
            self._mask = None
            return x
        keep = self._rng.random(x.shape) >= self.p
        scale = 0.0 if self.p >= 1 else 1.0 / (1.0 - self.p)   # p = 1: all dropped, as torch
        self._mask = keep.astype(x.dtype) * x.dtype.type(scale)
        return x * self._mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._mask is None:
            if self.training and self.p > 0:
                raise RuntimeError("Dropout.backward: no training forward to differentiate")
            return dy
        if not isinstance(dy, np.ndarray) or dy.dtype != self._mask.dtype:
            raise TypeError(f"Dropout.backward: dy must be a numpy array of dtype "
                            f"{self._mask.dtype}")
        if dy.shape != self._mask.shape:
            raise ValueError(f"Dropout.backward: dy must have shape {list(self._mask.shape)}, "
                             f"got {list(dy.shape)}")
        return dy * self._mask
