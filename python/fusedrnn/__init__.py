"""fusedrnn: fused LSTM, GRU and Elman RNN kernels (forward and backward) for the CPU.

The functions below run the C++ kernels; :mod:`fusedrnn.reference` is the NumPy specification
they are tested against (same names, same signatures).
"""
from __future__ import annotations

from . import _core, reference
from ._types import GruGrads, GruOutput, LstmGrads, LstmOutput, RnnGrads, RnnOutput
from .functional import (
    get_num_threads,
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    rnn_backward,
    rnn_forward,
    set_num_threads,
)

__version__ = _core.build_info()["version"]


def build_info() -> dict:
    """Version, compiler, instruction set, OpenMP, threads and Eigen version of this build."""
    info = dict(_core.build_info())
    info["num_threads"] = get_num_threads()
    return info


__all__ = [
    "lstm_forward", "lstm_backward", "gru_forward", "gru_backward", "rnn_forward", "rnn_backward",
    "LstmOutput", "LstmGrads", "GruOutput", "GruGrads", "RnnOutput", "RnnGrads",
    "set_num_threads", "get_num_threads", "build_info", "reference", "__version__",
]
