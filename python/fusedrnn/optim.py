"""Optimisers, gradient clipping and learning-rate schedulers with torch.optim's semantics.

Optimisers (SGD, RMSprop, Adam, AdamW) update ``Parameter.data`` **in place** (modules hand
those arrays to the C++ kernels, so they are never rebound), computing in each parameter's dtype
with per-parameter state buffers and a reusable scratch pool instead of per-step temporaries.
Their update rules, defaults, hyperparameter checks, ``param_groups`` and ``state_dict`` layout
follow torch.optim (single-tensor code path), so a run gives torch's numbers up to rounding.

``state_dict()`` format (shared with the checkpoint writer)::

    {"state": {index: {key: np.ndarray (a copy) | int | float}},
     "param_groups": [{hyperparameter: value, ..., "params": [index, ...]}, ...]}

Indices number the parameters across groups in order (as torch does); parameters without state
(e.g. SGD without momentum, or before the first step) have no entry.

Schedulers (StepLR, CosineAnnealingLR, LinearLR, LambdaLR, SequentialLR) set
``param_group["lr"]``: construction sets the initial value, ``step()`` is called after each
optimiser step (or epoch). They use torch's recursive ("chainable") formulas, so the values agree
with torch to rounding, and they compose in SequentialLR (e.g. warm-up then cosine).

Subnormal numbers: optimiser updates and gradient clipping run under :func:`flush_denormals`,
the kernels' contract (cpp/src/kernels/fpenv.h): a subnormal operand (gradient, moment,
parameter) is read as zero and a subnormal result is written as zero. Vanishing gradients
(Adam's second moment of a 1e-20 gradient is 1e-40, subnormal in float32) would otherwise cost
a ~100-cycle microcode assist per element on x86. Updates whose values stay normal are
bitwise unchanged (torch, which does not flush, agrees with them to rounding as before).
"""
from __future__ import annotations

import bisect
import math
import numbers
import types
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from . import _core
from . import validators as V
from ._blas import single_threaded_blas
from .module import Module, Parameter, _as_numpy

__all__ = [
    "Optimizer", "SGD", "RMSprop", "Adam", "AdamW",
    "clip_grad_norm_", "clip_grad_value_", "flush_denormals",
    "LRScheduler", "StepLR", "CosineAnnealingLR", "LinearLR", "LambdaLR", "SequentialLR",
]


def flush_denormals():
    """Context manager: inside the block, subnormal floats are flushed to zero on the calling
    thread (x86 MXCSR flush-to-zero and denormals-are-zero, the setting the fused kernels run
    under), for NumPy's element-wise work and single-threaded BLAS on that thread; the thread's
    previous setting is restored on exit. Normal numbers with normal results are unaffected.
    A no-op where the platform has no such control (non-x86)::

        with fusedrnn.optim.flush_denormals():
            loss, grad = my_loss(model(x), y)
    """
    return _core.FlushDenormals()


# -- argument checks -----------------------------------------------------------------------------
def _param_list(fn: str, parameters) -> List[Parameter]:
    """Parameters from a Module, one Parameter, or an iterable of Parameters."""
    if isinstance(parameters, Module):
        return list(parameters.parameters())
    if isinstance(parameters, Parameter):
        return [parameters]
    if isinstance(parameters, (set, frozenset)):
        raise TypeError(f"{fn}: parameters must be an ordered iterable (a set has no order)")
    try:
        params = list(parameters)
    except TypeError:
        raise TypeError(f"{fn}: parameters must be a Module, a Parameter or an iterable of "
                        f"Parameters, got {type(parameters).__name__}") from None
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            t = type(p)
            raise TypeError(f"{fn}: parameters[{i}] must be a fusedrnn Parameter, "
                            f"got {t.__module__}.{t.__qualname__}"
                            + (" (fusedrnn.torch modules train with torch.optim)"
                               if t.__module__.startswith("torch") else ""))
    return params


def _lerp_(a: np.ndarray, b: np.ndarray, w: float, tmp: np.ndarray) -> None:
    """a <- a + w (b - a) in place, in torch's two-branch form (exact at w = 0 and w = 1)."""
    np.subtract(b, a, out=tmp)
    if abs(w) < 0.5:
        tmp *= w
        a += tmp
    else:
        tmp *= 1.0 - w
        np.subtract(b, tmp, out=a)


# -- optimiser base ------------------------------------------------------------------------------
class Optimizer:
    """Base class: parameter groups, per-parameter state, ``step``/``zero_grad``/state dicts.

    ``params``: a Module, an iterable of Parameters, or an iterable of dicts (param groups,
    ``{"params": [...], "lr": ...}``) whose missing hyperparameters take the constructor's values.
    Subclasses define ``_validate(group)`` (checks and normalises hyperparameters, raising
    ValueError naming the argument), ``_update(p, group, state)`` and ``_state_keys``.
    """

    _state_keys: frozenset = frozenset()
    _n_scratch = 2

    def __init__(self, params, defaults: Dict[str, Any]):
        self.defaults = self._validate(dict(defaults))
        self.param_groups: List[Dict[str, Any]] = []
        self.state: Dict[Parameter, Dict[str, Any]] = {}
        self._pool: Dict[np.dtype, np.ndarray] = {}
        name = type(self).__name__
        if isinstance(params, Module):
            params = params.parameters()
        if isinstance(params, (Parameter, dict)):
            raise TypeError(f"{name}: params must be an iterable of Parameters or of dicts "
                            f"(param groups), got a single {type(params).__name__}")
        if isinstance(params, (set, frozenset)):
            raise TypeError(f"{name}: params must be an ordered iterable (a set has no order)")
        try:
            groups = list(params)
        except TypeError:
            raise TypeError(f"{name}: params must be an iterable of Parameters or of dicts, "
                            f"got {type(params).__name__}") from None
        if not groups:
            raise ValueError(f"{name}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    # -- groups ------------------------------------------------------------------------------
    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Adds a group: {"params": Parameter(s), hyperparameter: value, ...}."""
        name = type(self).__name__
        if not isinstance(param_group, dict):
            raise TypeError(f"{name}: a param group must be a dict, "
                            f"got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{name}: a param group needs a 'params' entry")
        params = _param_list(f"{name} param group", param_group["params"])
        ids = {id(p) for p in params}
        if len(ids) != len(params):
            raise ValueError(f"{name}: a param group lists the same Parameter more than once")
        for g in self.param_groups:
            if any(id(p) in ids for p in g["params"]):
                raise ValueError(f"{name}: some parameters appear in more than one param group")
        group = {k: v for k, v in self.defaults.items()}
        group.update((k, v) for k, v in param_group.items() if k != "params")
        group = self._validate(group)
        group["params"] = params
        self.param_groups.append(group)

    def _validate(self, group: Dict[str, Any]) -> Dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params")
        return "\n".join(lines) + "\n)"

    # -- stepping ----------------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Fills every gradient with 0 (in place)."""
        for g in self.param_groups:
            for p in g["params"]:
                p.grad.fill(0)

    def step(self, closure: Optional[Callable[[], Any]] = None):
        """One update of every parameter from its ``grad``; returns ``closure()`` if given
        (called first, to recompute the loss and gradients)."""
        loss = closure() if closure is not None else None
        # everything checked before any parameter or state changes (a failure half-way left
        # some parameters updated and the optimiser's state of others advanced)
        for gi, g in enumerate(self.param_groups):
            for i, p in enumerate(g["params"]):
                if p.grad.shape != p.data.shape or p.grad.dtype != p.data.dtype:
                    raise ValueError(f"{type(self).__name__}.step: a Parameter's grad has shape "
                                     f"{list(p.grad.shape)} dtype {p.grad.dtype}, its data "
                                     f"{list(p.data.shape)} {p.data.dtype}")
                if not p.data.flags.writeable:
                    raise ValueError(f"{type(self).__name__}.step: param_groups[{gi}] parameter "
                                     f"{i} (shape {list(p.data.shape)}) is read-only (a frozen "
                                     f"layer's weight?); leave it out of the optimiser")
        with _core.FlushDenormals():             # the kernels' subnormal contract
            for g in self.param_groups:
                for p in g["params"]:
                    self._update(p, g, self.state.setdefault(p, {}))
        return loss

    def _update(self, p: Parameter, group: Dict[str, Any], state: Dict[str, Any]) -> None:
        raise NotImplementedError

    def _scratch(self, p: Parameter) -> List[np.ndarray]:
        """``_n_scratch`` scratch arrays of p's shape and dtype from a pool reused across
        parameters and steps (their contents are garbage)."""
        n, k = p.data.size, self._n_scratch
        buf = self._pool.get(p.data.dtype)
        if buf is None or buf.size < k * n:
            buf = self._pool[p.data.dtype] = np.empty(k * n, dtype=p.data.dtype)
        return [buf[i * n:(i + 1) * n].reshape(p.data.shape) for i in range(k)]

    @staticmethod
    def _buffer(state: Dict[str, Any], key: str, p: Parameter) -> np.ndarray:
        buf = state.get(key)
        if buf is None:
            buf = state[key] = np.zeros_like(p.data)
        return buf

    @staticmethod
    def _grad(p: Parameter, group: Dict[str, Any], s: np.ndarray, t: np.ndarray,
              weight_decay: float) -> np.ndarray:
        """g = ±grad + weight_decay * param (maximize negates), in ``s`` unless it is p.grad."""
        g = p.grad
        if group["maximize"]:
            np.negative(g, out=s)
            g = s
        if weight_decay != 0:
            np.multiply(p.data, weight_decay, out=t)
            np.add(g, t, out=s)
            g = s
        return g

    # -- state dicts -------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """{"state": {index: {key: array copy | number}}, "param_groups": [{..., "params":
        [index, ...]}]}; see the module docstring."""
        state: Dict[int, Dict[str, Any]] = {}
        groups = []
        i = 0
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                st = self.state.get(p)
                if st:
                    state[i] = {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                for k, v in st.items()}
                ids.append(i)
                i += 1
            packed = {k: v for k, v in g.items() if k != "params"}
            packed["params"] = ids
            groups.append(packed)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores hyperparameters and state from :meth:`state_dict`'s output.

        Everything is checked before anything changes: the number of groups, of parameters
        per group, the state keys, and each array's shape (ValueError) and dtype (TypeError;
        nothing is cast). Arrays are copied. torch.optim's state dicts load too (the same
        names; tensors are copied into arrays, 0-d ones such as "step" become numbers).
        """
        fn = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict) or "state" not in state_dict \
                or "param_groups" not in state_dict:
            raise TypeError(f"{fn}: expected a dict with 'state' and 'param_groups'")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)) or not isinstance(saved_state, dict):
            raise TypeError(f"{fn}: 'param_groups' must be a list and 'state' a dict")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{fn}: the optimizer has {len(self.param_groups)} param groups, "
                             f"the state dict {len(saved_groups)}")
        index: Dict[int, Parameter] = {}
        new_groups = []
        for gi, (sg, g) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(sg, dict) or not isinstance(sg.get("params"), (list, tuple)):
                raise TypeError(f"{fn}: param_groups[{gi}] must be a dict with a 'params' list")
            if len(sg["params"]) != len(g["params"]):
                raise ValueError(f"{fn}: param group {gi} has {len(g['params'])} parameters, "
                                 f"the state dict's {len(sg['params'])}")
            for idx, p in zip(sg["params"], g["params"]):
                if isinstance(idx, bool) or not isinstance(idx, numbers.Integral) \
                        or int(idx) in index:
                    raise ValueError(f"{fn}: param_groups[{gi}]['params'] must hold distinct "
                                     f"integer indices, got {idx!r}")
                index[int(idx)] = p
            hyper = {k: v for k, v in sg.items() if k != "params" and k not in _TORCH_ONLY}
            if "decoupled_weight_decay" in hyper:
                # torch's Adam(decoupled_weight_decay=True) is AdamW: the class decides it here
                want = bool(hyper.pop("decoupled_weight_decay"))
                if want != getattr(self, "_decoupled", False):
                    raise ValueError(
                        f"{fn}: param_groups[{gi}] has decoupled_weight_decay={want} (torch's "
                        f"{'AdamW' if want else 'Adam'} update), which "
                        f"{type(self).__name__} does not run: load it into "
                        f"fusedrnn.optim.{'AdamW' if want else 'Adam'}")
            try:
                hyper = self._validate(hyper)
            except KeyError as e:
                raise ValueError(f"{fn}: param_groups[{gi}] lacks hyperparameter {e}") from None
            hyper["params"] = g["params"]
            new_groups.append(hyper)
        new_state: Dict[Parameter, Dict[str, Any]] = {}
        for idx, st in saved_state.items():
            if isinstance(idx, bool) or not isinstance(idx, numbers.Integral) \
                    or int(idx) not in index:
                raise ValueError(f"{fn}: state index {idx!r} names no parameter")
            if not isinstance(st, dict):
                raise TypeError(f"{fn}: state[{idx}] must be a dict")
            p = index[int(idx)]
            entry = {}
            for k, v in st.items():
                if k not in self._state_keys:
                    raise ValueError(f"{fn}: state[{idx}] has key {k!r}; "
                                     f"{type(self).__name__} keeps {sorted(self._state_keys)}")
                v = _torch_state_value(fn, f"state[{idx}][{k!r}]", k, v, p.data.dtype)
                if isinstance(v, np.ndarray):
                    if v.shape != p.data.shape:
                        raise ValueError(f"{fn}: state[{idx}][{k!r}] must have shape "
                                         f"{list(p.data.shape)}, got {list(v.shape)}")
                    if v.dtype != p.data.dtype:
                        raise TypeError(f"{fn}: state[{idx}][{k!r}] must have dtype "
                                        f"{p.data.dtype}, got {v.dtype}")
                    entry[k] = np.array(v, copy=True, order="C")
                elif V.is_real(v):
                    entry[k] = v.item() if isinstance(v, np.generic) else v
                else:
                    raise TypeError(f"{fn}: state[{idx}][{k!r}] must be a numpy array or a "
                                    f"number, got {type(v).__name__}")
            new_state[p] = entry
        self.param_groups[:] = new_groups
        self.state = new_state


# torch.optim's group options that choose an implementation, not the update (the for-each,
# fused and CUDA-graph-capturable kernels, autograd through the step): dropped on loading
_TORCH_ONLY = frozenset(("foreach", "fused", "capturable", "differentiable"))


def _torch_state_value(fn: str, name: str, key: str, v, dtype: np.dtype):
    """A torch.optim state value as this module keeps it (torch's optimisers keep the same
    names): a tensor becomes a numpy array (its dtype checked here, nothing cast; its shape by
    the caller, as a numpy array's; the caller copies it), a 0-d tensor a number ("step", which
    torch keeps as a float tensor, an int when whole). Anything else is returned as it is."""
    if not (hasattr(v, "detach") and hasattr(v, "cpu") and hasattr(v, "numpy")):
        return v
    if getattr(v, "ndim", None) == 0:
        x = v.detach().cpu().item()
        if key == "step" and isinstance(x, float) and x.is_integer():
            x = int(x)
        return x
    if str(getattr(v, "dtype", "")) != f"torch.{np.dtype(dtype).name}":
        raise TypeError(f"{fn}: {name} must have dtype {np.dtype(dtype)} (torch."
                        f"{np.dtype(dtype).name}), got {v.dtype}; nothing is cast")
    return _as_numpy(name, v, dtype)


# -- optimisers ----------------------------------------------------------------------------------
class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum (torch.optim.SGD).

    For each parameter θ with gradient g, step t:

        g ← -g if maximize;  g ← g + weight_decay · θ
        b ← g (t = 1),  b ← momentum · b + (1 - dampening) · g (t > 1)      (if momentum ≠ 0)
        g ← g + momentum · b (nesterov), else g ← b                           (if momentum ≠ 0)
        θ ← θ - lr · g

    State: "momentum_buffer" (only with momentum ≠ 0).
    """

    _state_keys = frozenset({"momentum_buffer"})

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def _validate(self, g):
        fn = "SGD"
        g["lr"] = V.nonneg_real(fn, "lr", g["lr"])
        g["momentum"] = V.nonneg_real(fn, "momentum", g["momentum"])
        g["dampening"] = V.real(fn, "dampening", g["dampening"])
        g["weight_decay"] = V.nonneg_real(fn, "weight_decay", g["weight_decay"])
        g["nesterov"] = V.boolean(fn, "nesterov", g["nesterov"])
        g["maximize"] = V.boolean(fn, "maximize", g["maximize"])
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError(f"{fn}: nesterov momentum requires momentum > 0 and dampening = 0, "
                             f"got momentum={g['momentum']}, dampening={g['dampening']}")
        return g

    def _update(self, p, group, state):
        s, t = self._scratch(p)
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        g = self._grad(p, group, s, t, group["weight_decay"])
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                state["momentum_buffer"] = g.copy()
                buf = state["momentum_buffer"]
            else:
                buf *= momentum
                if dampening != 0:
                    np.multiply(g, 1.0 - dampening, out=t)
                    buf += t
                else:
                    buf += g
            if group["nesterov"]:
                np.multiply(buf, momentum, out=t)
                np.add(g, t, out=s)
                g = s
            else:
                g = buf
        np.multiply(g, -lr, out=t)
        p.data += t


class RMSprop(Optimizer):
    r"""RMSprop (torch.optim.RMSprop).

        g ← -g if maximize;  g ← g + weight_decay · θ
        v ← α v + (1 - α) g²
        centered:  ḡ ← ḡ + (1 - α)(g - ḡ);  d ← √(v - ḡ²) + eps,   else  d ← √v + eps
        momentum > 0:  b ← momentum · b + g / d;  θ ← θ - lr · b,   else  θ ← θ - lr · g / d

    State: "step", "square_avg", "grad_avg" (centered), "momentum_buffer" (momentum > 0).
    """

    _state_keys = frozenset({"step", "square_avg", "grad_avg", "momentum_buffer"})

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 maximize: bool = False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize))

    def _validate(self, g):
        fn = "RMSprop"
        g["lr"] = V.nonneg_real(fn, "lr", g["lr"])
        g["alpha"] = V.nonneg_real(fn, "alpha", g["alpha"])
        g["eps"] = V.nonneg_real(fn, "eps", g["eps"])
        g["weight_decay"] = V.nonneg_real(fn, "weight_decay", g["weight_decay"])
        g["momentum"] = V.nonneg_real(fn, "momentum", g["momentum"])
        g["centered"] = V.boolean(fn, "centered", g["centered"])
        g["maximize"] = V.boolean(fn, "maximize", g["maximize"])
        return g

    def _update(self, p, group, state):
        s, t = self._scratch(p)
        alpha = group["alpha"]
        state["step"] = state.get("step", 0) + 1
        g = self._grad(p, group, s, t, group["weight_decay"])
        sq = self._buffer(state, "square_avg", p)
        sq *= alpha
        np.multiply(g, 1.0 - alpha, out=t)
        t *= g
        sq += t
        if group["centered"]:
            ga = self._buffer(state, "grad_avg", p)
            _lerp_(ga, g, 1.0 - alpha, t)
            np.multiply(ga, ga, out=t)
            np.subtract(sq, t, out=t)
            np.sqrt(t, out=t)
        else:
            np.sqrt(sq, out=t)
        t += group["eps"]                         # t = denominator
        if group["momentum"] > 0:
            buf = self._buffer(state, "momentum_buffer", p)
            buf *= group["momentum"]
            np.divide(g, t, out=t)
            buf += t
            np.multiply(buf, -group["lr"], out=t)
        else:
            np.divide(g, t, out=t)
            t *= -group["lr"]
        p.data += t


class Adam(Optimizer):
    r"""Adam (torch.optim.Adam), optionally AMSGrad.

        g ← -g if maximize;  g ← g + weight_decay · θ            (L2 penalty; AdamW decouples it)
        m ← m + (1 - β₁)(g - m);   v ← β₂ v + (1 - β₂) g²
        v̂ ← max(v̂, v) if amsgrad (the denominator uses v̂), else v̂ = v
        θ ← θ - lr / (1 - β₁ᵗ) · m / (√v̂ / √(1 - β₂ᵗ) + eps)

    State: "step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq" (amsgrad).
    """

    _state_keys = frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})
    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, maximize: bool = False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize))

    def _validate(self, g):
        fn = type(self).__name__
        g["lr"] = V.nonneg_real(fn, "lr", g["lr"])
        g["eps"] = V.nonneg_real(fn, "eps", g["eps"])
        betas = g["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{fn}: betas must be a pair (beta1, beta2), got {betas!r}")
        for i, b in enumerate(betas):
            if not V.is_real(b) or not 0.0 <= b < 1.0:
                raise ValueError(f"{fn}: betas[{i}] must be a number in [0, 1), got {b!r}")
        g["betas"] = (float(betas[0]), float(betas[1]))
        g["weight_decay"] = V.nonneg_real(fn, "weight_decay", g["weight_decay"])
        g["amsgrad"] = V.boolean(fn, "amsgrad", g["amsgrad"])
        g["maximize"] = V.boolean(fn, "maximize", g["maximize"])
        return g

    def _update(self, p, group, state):
        s, t = self._scratch(p)
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        step = state["step"] = state.get("step", 0) + 1
        if self._decoupled:
            if wd != 0:
                p.data *= 1.0 - lr * wd
            g = self._grad(p, group, s, t, 0.0)
        else:
            g = self._grad(p, group, s, t, wd)
        m = self._buffer(state, "exp_avg", p)
        v = self._buffer(state, "exp_avg_sq", p)
        _lerp_(m, g, 1.0 - beta1, t)
        v *= beta2
        np.multiply(g, 1.0 - beta2, out=t)
        t *= g
        v += t
        step_size = lr / (1.0 - beta1 ** step)
        bias_correction2_sqrt = (1.0 - beta2 ** step) ** 0.5
        if group["amsgrad"]:
            vmax = self._buffer(state, "max_exp_avg_sq", p)
            np.maximum(vmax, v, out=vmax)
            np.sqrt(vmax, out=t)
        else:
            np.sqrt(v, out=t)
        t /= bias_correction2_sqrt
        t += eps
        np.divide(m, t, out=t)
        t *= -step_size
        p.data += t


class AdamW(Adam):
    r"""Adam with decoupled weight decay (torch.optim.AdamW):

        θ ← θ (1 - lr · weight_decay), then the Adam update without the L2 term.
    """

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, maximize: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize)


# -- gradient clipping ---------------------------------------------------------------------------
def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    r"""Scales all gradients together so that their joint norm is at most ``max_norm``.

        total = ‖(‖g₁‖_p, ‖g₂‖_p, ...)‖_p      (p = norm_type; inf: the largest |g|)
        c = min(1, max_norm / (total + 1e-6));   every g ← c · g  (in place, when c < 1)

    ``parameters``: a Module, a Parameter or an iterable of Parameters. Returns ``total`` as a
    float (the norm before clipping). A non-finite total raises RuntimeError if
    ``error_if_nonfinite``, else (as in torch) the gradients are multiplied by the nan/0 factor.
    """
    fn = "clip_grad_norm_"
    params = _param_list(fn, parameters)
    if not V.is_real(max_norm) or not max_norm >= 0:
        raise ValueError(f"{fn}: max_norm must be a number >= 0 (inf: no clipping), "
                         f"got {max_norm!r}")
    max_norm = float(max_norm)
    if isinstance(norm_type, str) and norm_type == "inf":
        norm_type = math.inf
    if not V.is_real(norm_type) or not norm_type > 0:
        raise ValueError(f"{fn}: norm_type must be a number > 0 or inf, got {norm_type!r}")
    norm_type = float(norm_type)
    error_if_nonfinite = V.boolean(fn, "error_if_nonfinite", error_if_nonfinite)
    if not params:
        return 0.0
    with _core.FlushDenormals():                 # the kernels' subnormal contract
        return _clip_grad_norm(params, max_norm, norm_type, error_if_nonfinite)


def _clip_grad_norm(params, max_norm, norm_type, error_if_nonfinite) -> float:
    fn = "clip_grad_norm_"
    # Small gradients: the squares (or p-th powers) of normal values can be subnormal, which
    # the flush-to-zero mode this runs in reads as 0 (a norm of 0, or 10% low, where torch is
    # right); an L2 sum below ``safe`` (or overflowing) is recomputed scaled by the largest
    # magnitude, and other orders are always scaled.
    norms = []
    for p in params:
        g = p.grad.reshape(-1)
        if g.size == 0:
            norms.append(0.0)
        elif norm_type == math.inf:
            norms.append(float(np.max(np.abs(g))))
        elif norm_type == 1.0:
            norms.append(float(np.sum(np.abs(g))))
        else:
            if norm_type == 2.0:
                with single_threaded_blas(), np.errstate(over="ignore", under="ignore"):
                    ss = float(np.dot(g, g))   # (an overflow is recomputed scaled below)
                fi = np.finfo(g.dtype)
                if math.isfinite(ss) and ss >= float(fi.tiny) / float(fi.eps) ** 2:
                    norms.append(math.sqrt(ss))
                    continue
            m = float(np.max(np.abs(g)))
            if not 0.0 < m < math.inf:           # 0, inf or NaN: the norm itself
                norms.append(m)
                continue
            a = np.abs(g) / g.dtype.type(m)
            if norm_type == 2.0:
                with single_threaded_blas():
                    norms.append(m * math.sqrt(float(np.dot(a, a))))
            else:
                norms.append(m * float(np.sum(a ** norm_type)) ** (1.0 / norm_type))
    # (np.max, not max(): max() drops a NaN after the first item; torch's total is NaN then)
    top = float(np.max(norms)) if norms else 0.0
    if norm_type == math.inf or not 0.0 < top < math.inf:
        total = top
    elif norm_type == 1.0:
        total = math.fsum(norms)
    elif norm_type == 2.0:
        total = top * math.sqrt(math.fsum((n / top) ** 2 for n in norms))
    else:
        total = top * math.fsum((n / top) ** norm_type for n in norms) ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"{fn}: the total norm of order {norm_type} of the gradients is "
                           f"{total}, so they cannot be clipped (error_if_nonfinite=True)")
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:                          # nan (non-finite total) scales too, as in torch
        for p in params:
            p.grad *= coef
    return total


def clip_grad_value_(parameters, clip_value: float) -> None:
    """Clamps every gradient element to [-clip_value, clip_value] in place (clip_value >= 0).
    ``parameters``: a Module, a Parameter or an iterable of Parameters."""
    fn = "clip_grad_value_"
    params = _param_list(fn, parameters)
    if not V.is_real(clip_value) or not clip_value >= 0:
        raise ValueError(f"{fn}: clip_value must be a number >= 0, got {clip_value!r}")
    c = float(clip_value)
    with _core.FlushDenormals():                 # the kernels' subnormal contract
        for p in params:
            np.clip(p.grad, -c, c, out=p.grad)


# -- learning-rate schedulers --------------------------------------------------------------------
class LRScheduler:
    """Base class. Construction records each group's ``initial_lr`` (``last_epoch=-1``) and sets
    the epoch-0 learning rate; ``step()`` advances one epoch (call it after
    ``optimizer.step()``). Subclasses implement ``_get_lr`` (torch's chainable form, from the
    groups' current lr) and optionally ``_closed_form_lr`` (from ``base_lrs``)."""

    _hyper: tuple = ()

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        name = type(self).__name__
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{name}: optimizer must be a fusedrnn Optimizer, "
                            f"got {type(optimizer).__name__}")
        last_epoch = V.positive_int(name, "last_epoch", last_epoch, -1)
        self.optimizer = optimizer
        if last_epoch == -1:
            for g in optimizer.param_groups:
                g.setdefault("initial_lr", g["lr"])
        else:
            for i, g in enumerate(optimizer.param_groups):
                if "initial_lr" not in g:
                    raise KeyError(f"{name}: param_groups[{i}] has no 'initial_lr': resuming "
                                   f"with last_epoch >= 0 needs the optimizer state loaded first")
        self.base_lrs: List[float] = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._is_initial = False
        self._initial_step()

    def _initial_step(self) -> None:
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def _current_lrs(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def _get_lr(self) -> List[float]:
        raise NotImplementedError

    def step(self) -> None:
        """Advances one epoch and sets each group's lr."""
        self._step_count += 1
        self._update_lr(None)

    def _update_lr(self, epoch: Optional[int]) -> None:
        if epoch is None:
            self.last_epoch += 1
            values = self._get_lr()
        else:
            self.last_epoch = epoch
            closed = getattr(self, "_closed_form_lr", None)
            values = closed() if closed is not None else self._get_lr()
        for g, lr in zip(self.optimizer.param_groups, values):
            g["lr"] = lr
        self._last_lr = self._current_lrs()

    def get_last_lr(self) -> List[float]:
        """The learning rates the last ``step()`` (or construction) set, one per group."""
        return list(self._last_lr)

    def state_dict(self) -> Dict[str, Any]:
        """Epoch counters, base and last learning rates and the hyperparameters."""
        d = {"last_epoch": self.last_epoch, "_step_count": self._step_count,
             "base_lrs": list(self.base_lrs), "_last_lr": list(self._last_lr)}
        d.update((k, getattr(self, k)) for k in self._hyper)
        return d

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output (the optimizer's lrs are not touched, as in
        torch: load the optimizer's own state dict too)."""
        fn = f"{type(self).__name__}.load_state_dict"
        keys = ("last_epoch", "_step_count", "base_lrs", "_last_lr") + self._hyper
        if not isinstance(state_dict, dict):
            raise TypeError(f"{fn}: expected a dict, got {type(state_dict).__name__}")
        missing = [k for k in keys if k not in state_dict]
        if missing:
            raise ValueError(f"{fn}: missing entries {missing}")
        n = len(self.optimizer.param_groups)
        for k in ("base_lrs", "_last_lr"):
            if len(state_dict[k]) != n:
                raise ValueError(f"{fn}: {k} has {len(state_dict[k])} entries, the optimizer "
                                 f"{n} param groups")
        for k in keys:
            v = state_dict[k]
            setattr(self, k, list(v) if isinstance(v, (list, tuple)) else v)


class LambdaLR(LRScheduler):
    """lr = initial_lr · lr_lambda(epoch); one function, or a list with one per group.

    ``state_dict`` keeps the ``__dict__`` of callable objects (not of plain functions or
    lambdas), as torch does."""

    def __init__(self, optimizer: Optimizer, lr_lambda, last_epoch: int = -1):
        if isinstance(optimizer, Optimizer):
            n = len(optimizer.param_groups)
            if isinstance(lr_lambda, (list, tuple)):
                if len(lr_lambda) != n:
                    raise ValueError(f"LambdaLR: expected {n} lr_lambdas (one per param group), "
                                     f"got {len(lr_lambda)}")
                fns = list(lr_lambda)
            else:
                fns = [lr_lambda] * n
            for f in fns:
                if not callable(f):
                    raise TypeError(f"LambdaLR: lr_lambda must be callable, "
                                    f"got {type(f).__name__}")
            self.lr_lambdas = fns
        super().__init__(optimizer, last_epoch)

    def _get_lr(self):
        return [base * f(self.last_epoch) for f, base in zip(self.lr_lambdas, self.base_lrs)]

    def state_dict(self):
        d = super().state_dict()
        d["lr_lambdas"] = [None if isinstance(f, types.FunctionType) else dict(f.__dict__)
                           for f in self.lr_lambdas]
        return d

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        fns = state_dict.pop("lr_lambdas", None)
        super().load_state_dict(state_dict)
        if fns is not None:
            for f, saved in zip(self.lr_lambdas, fns):
                if saved is not None:
                    f.__dict__.update(saved)


class StepLR(LRScheduler):
    """lr = initial_lr · gamma^⌊epoch / step_size⌋ (decays by gamma every step_size epochs)."""

    _hyper = ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1,
                 last_epoch: int = -1):
        self.step_size = V.positive_int("StepLR", "step_size", step_size, 1)
        self.gamma = V.nonneg_real("StepLR", "gamma", gamma)
        super().__init__(optimizer, last_epoch)

    def _get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [lr * self.gamma for lr in self._current_lrs()]

    def _closed_form_lr(self):
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class LinearLR(LRScheduler):
    """Multiplies initial_lr by a factor going linearly from start_factor (epoch 0) to
    end_factor (epoch >= total_iters):

        lr = initial_lr · (start + (end - start) · min(epoch, total_iters) / total_iters)

    (computed recursively from the current lr, as torch does, so it composes). Use it for
    warm-up: ``LinearLR(opt, start_factor=0.01, total_iters=warmup_steps)``.
    """

    _hyper = ("start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3,
                 end_factor: float = 1.0, total_iters: int = 5, last_epoch: int = -1):
        fn = "LinearLR"
        if not V.is_real(start_factor) or not 0 < start_factor <= 1:
            raise ValueError(f"{fn}: start_factor must be a number in (0, 1], "
                             f"got {start_factor!r}")
        if not V.is_real(end_factor) or not 0 <= end_factor <= 1:
            raise ValueError(f"{fn}: end_factor must be a number in [0, 1], got {end_factor!r}")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = V.positive_int(fn, "total_iters", total_iters, 1)
        super().__init__(optimizer, last_epoch)

    def _get_lr(self):
        if self.last_epoch == 0:
            return [lr * self.start_factor for lr in self._current_lrs()]
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current_lrs()
        d = self.end_factor - self.start_factor
        factor = 1.0 + d / (self.total_iters * self.start_factor + (self.last_epoch - 1) * d)
        return [lr * factor for lr in self._current_lrs()]

    def _closed_form_lr(self):
        f = self.start_factor + (self.end_factor - self.start_factor) \
            * min(self.total_iters, self.last_epoch) / self.total_iters
        return [base * f for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from initial_lr down to eta_min over T_max epochs (then back up):

        lr = eta_min + (initial_lr - eta_min) (1 + cos(π · epoch / T_max)) / 2

    computed with torch's recursive form from the current lr (so values match torch and it
    composes with other schedulers).
    """

    _hyper = ("T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1):
        self.T_max = V.positive_int("CosineAnnealingLR", "T_max", T_max, 1)
        self.eta_min = V.nonneg_real("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(optimizer, last_epoch)

    def _get_lr(self):
        e, T, lo = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._current_lrs()
        if self._step_count == 1 and e > 0:
            return [lo + (base - lo) * (1 + math.cos(e * math.pi / T)) / 2
                    for base in self.base_lrs]
        if (e - 1 - T) % (2 * T) == 0:
            return [lr + (base - lo) * (1 - math.cos(math.pi / T)) / 2
                    for base, lr in zip(self.base_lrs, self._current_lrs())]
        ratio = (1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T))
        return [ratio * (lr - lo) + lo for lr in self._current_lrs()]

    def _closed_form_lr(self):
        return [self.eta_min + (base - self.eta_min)
                * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base in self.base_lrs]


class SequentialLR(LRScheduler):
    """Runs ``schedulers[i]`` from epoch ``milestones[i-1]`` on (the first from epoch 0); at a
    milestone the next scheduler restarts from its own epoch 0 (closed form). E.g. warm-up then
    cosine::

        warm = LinearLR(opt, start_factor=0.01, total_iters=100)
        cos = CosineAnnealingLR(opt, T_max=900)
        sched = SequentialLR(opt, [warm, cos], milestones=[100])

    Construction resets the groups' lr to initial_lr and re-runs the first scheduler's
    initial step (as torch does).
    """

    def __init__(self, optimizer: Optimizer, schedulers: Sequence[LRScheduler],
                 milestones: Sequence[int], last_epoch: int = -1):
        fn = "SequentialLR"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{fn}: optimizer must be a fusedrnn Optimizer, "
                            f"got {type(optimizer).__name__}")
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError(f"{fn}: schedulers must hold at least one scheduler")
        for i, s in enumerate(schedulers):
            if not isinstance(s, LRScheduler):
                raise TypeError(f"{fn}: schedulers[{i}] must be an LRScheduler, "
                                f"got {type(s).__name__}")
            if s.optimizer is not optimizer:
                raise ValueError(f"{fn}: schedulers[{i}] belongs to another optimizer")
            if i > 0 and isinstance(s, SequentialLR):
                # (at its milestone a scheduler restarts from its closed form at epoch 0,
                # which a SequentialLR has not: torch's fails there, mid-training, with a
                # bare NotImplementedError)
                raise ValueError(f"{fn}: schedulers[{i}] is a SequentialLR; one may come first "
                                 f"only: list its schedulers and milestones in this one "
                                 f"instead")
        milestones = list(milestones)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"{fn}: milestones must have len(schedulers) - 1 = "
                             f"{len(schedulers) - 1} entries, got {len(milestones)}")
        for i, m in enumerate(milestones):
            V.positive_int(fn, f"milestones[{i}]", m, 1 if i == 0 else milestones[i - 1] + 1)
        last_epoch = V.positive_int(fn, "last_epoch", last_epoch, -1)
        self.optimizer = optimizer
        self._schedulers = schedulers
        self._milestones = [int(m) for m in milestones]
        self.last_epoch = last_epoch + 1
        self._step_count = 0
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"]
        for s in schedulers:
            self._undo(s)
        idx = bisect.bisect_right(self._milestones, 0)
        schedulers[idx]._initial_step()
        self._last_lr = schedulers[idx].get_last_lr()

    def _undo(self, s: LRScheduler) -> None:
        if isinstance(s, SequentialLR):
            for c in s._schedulers:
                self._undo(c)
        else:
            s.last_epoch -= 1

    def step(self) -> None:
        self.last_epoch += 1
        idx = bisect.bisect_right(self._milestones, self.last_epoch)
        s = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            s._update_lr(0)
        else:
            s.step()
        self._last_lr = s.get_last_lr()

    def state_dict(self):
        return {"last_epoch": self.last_epoch, "_milestones": list(self._milestones),
                "_last_lr": list(self._last_lr),
                "_schedulers": [s.state_dict() for s in self._schedulers]}

    def load_state_dict(self, state_dict):
        fn = "SequentialLR.load_state_dict"
        if not isinstance(state_dict, dict) or not all(
                k in state_dict for k in ("last_epoch", "_milestones", "_last_lr", "_schedulers")):
            raise ValueError(f"{fn}: expected a dict from SequentialLR.state_dict()")
        if len(state_dict["_schedulers"]) != len(self._schedulers):
            raise ValueError(f"{fn}: the state dict has {len(state_dict['_schedulers'])} "
                             f"schedulers, this SequentialLR {len(self._schedulers)}")
        for s, d in zip(self._schedulers, state_dict["_schedulers"]):
            s.load_state_dict(d)
        self.last_epoch = state_dict["last_epoch"]
        self._milestones = list(state_dict["_milestones"])
        self._last_lr = list(state_dict["_last_lr"])
