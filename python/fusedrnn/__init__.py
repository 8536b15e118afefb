"""fusedrnn: fused LSTM, GRU and Elman RNN kernels (forward and backward) for the CPU.

The functions below run the C++ kernels; :mod:`fusedrnn.reference` is the NumPy specification
they are tested against (same names, same signatures).
"""
from __future__ import annotations

from . import _openmp_env  # noqa: F401  (before _core: libgomp reads GOMP_SPINCOUNT on load)
from . import _core, reference
from ._types import GruGrads, GruOutput, LstmGrads, LstmOutput, RnnGrads, RnnOutput
from .functional import (
    get_adaptive_threads,
    get_num_threads,
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    rnn_backward,
    rnn_forward,
    set_adaptive_threads,
    set_num_threads,
)
from .module import Dropout, Embedding, Linear, Module, Parameter, Sequential, register_module
from .layers import GRU, LSTM, RNN, check_finite, set_check_finite
from .cells import GRUCell, LSTMCell, RNNCell
from .convert import from_torch, to_torch
from .models import RecurrentModel
from .io import Checkpoint, CheckpointError, load, save
from . import data, losses, optim
from .optim import clip_grad_norm_, clip_grad_value_

__version__ = _core.__version__


def __getattr__(name):
    """``fusedrnn.onnx`` and ``fusedrnn.keras`` (interchange) load on first use; neither
    imports its optional package (onnx, h5py) until one of its functions runs."""
    if name in ("onnx", "keras"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fusedrnn' has no attribute {name!r}")


def build_info() -> dict:
    """Version, compiler, instruction set, OpenMP, threads and Eigen version of this build, and
    the instruction-set tier of each precision ("precision_tiers": float32 runs the copy named
    by "instruction_set"; bfloat16 and the int8 building blocks of ``fusedrnn.lowp`` the tier
    ``fusedrnn.lowp.active_tier()``: amx, avx512_bf16, avx512, avx2 or baseline)."""
    info = dict(_core.build_info())
    info["num_threads"] = get_num_threads()
    lowp_tier = _core.lowp_active_tier()
    info["precision_tiers"] = {"float32": info["instruction_set"], "bfloat16": lowp_tier,
                               "int8": lowp_tier}
    return info


__all__ = [
    "lstm_forward", "lstm_backward", "gru_forward", "gru_backward", "rnn_forward", "rnn_backward",
    "LstmOutput", "LstmGrads", "GruOutput", "GruGrads", "RnnOutput", "RnnGrads",
    "set_num_threads", "get_num_threads", "set_adaptive_threads", "get_adaptive_threads",
    "build_info", "reference", "__version__",
    "Parameter", "Module", "Sequential", "Linear", "Embedding", "Dropout", "register_module",
    "LSTM", "GRU", "RNN", "check_finite", "set_check_finite", "from_torch", "to_torch", "RecurrentModel",
    "save", "load", "Checkpoint", "CheckpointError",
    "losses", "optim", "data", "clip_grad_norm_", "clip_grad_value_",
    "LSTMCell", "GRUCell", "RNNCell",
]
