"""Type stub of the compiled module fusedrnn._core (low level: use fusedrnn's functions).

Every array argument must be a C-contiguous numpy array of the exact dtype (float32 or float64,
lengths int64) and size; optional ones may be None. Outputs are written in place. dims is
(T, N, C, H) or (T, N, C, H, P) with P the LSTM's projection size (0 = none; w_hr and dw_hr
[P, H] must then be given exactly when P > 0). The binding checks what C++ cannot see (array,
dtype, order, size, writeability); the kernel checks the rest (ValueError). The GIL is released
while a kernel runs.
"""
from typing import Any, Optional, Tuple, Union

import numpy as np

_A = np.ndarray
_OA = Optional[np.ndarray]
_Dims = Union[Tuple[int, int, int, int], Tuple[int, int, int, int, int]]  # (T, N, C, H[, P])

__version__: str
def build_info() -> dict: ...
def reference_gemm(a: _A, b: _A, c: _A, num_threads: int = 0) -> None: ...  # c = a @ b (Eigen)
class GruVariant:  # pybind11 enum (fusedrnn::GruVariant)
    reset_after: "GruVariant"
    reset_before: "GruVariant"
    __members__: dict

class Nonlinearity:  # pybind11 enum (fusedrnn::Nonlinearity)
    tanh: "Nonlinearity"
    relu: "Nonlinearity"
    __members__: dict

class Precision:  # pybind11 enum (fusedrnn::Precision): the forward kernels' products
    float32: "Precision"
    bfloat16: "Precision"
    __members__: dict

# Sizes (cache, forward workspace, backward workspace) in scalars; they check dims like the
# kernels (ValueError).
def lstm_sizes(dims: _Dims, precision: Precision = ...) -> Tuple[int, int, int]: ...
def gru_sizes(dims: _Dims, precision: Precision = ...) -> Tuple[int, int, int]: ...
def rnn_sizes(dims: _Dims, precision: Precision = ...) -> Tuple[int, int, int]: ...
# The kernels: every argument after dims is a keyword (the names of the C++ argument structs).
def lstm_forward(dims: _Dims, *, x: _A, w_ih: _A, w_hh: _A, b_ih: _OA = None, b_hh: _OA = None,
                 h0: _OA = None, c0: _OA = None, w_peep: _OA = None, w_hr: _OA = None,
                 lengths: _OA = None, y: _A, h_n: _A, c_n: _A, cache: _OA = None,
                 workspace: _A, cell_clip: float = 0.0, reverse: bool = False,
                 num_threads: int = 0, weights_packed: bool = False,
                 precision: Precision = ...) -> None: ...
def lstm_backward(dims: _Dims, *, x: _A, w_ih: _A, w_hh: _A, w_peep: _OA = None,
                  w_hr: _OA = None, lengths: _OA = None, cache: _A, dy: _OA = None,
                  dh_n: _OA = None, dc_n: _OA = None, dx: _A, dh0: _OA = None, dc0: _OA = None,
                  dw_ih: _OA = None, dw_hh: _OA = None, db_ih: _OA = None, db_hh: _OA = None,
                  dw_peep: _OA = None, dw_hr: _OA = None, workspace: _A,
                  cell_clip: float = 0.0, reverse: bool = False,
                  num_threads: int = 0, weights_packed: bool = False,
                  precision: Precision = ...) -> None: ...
def gru_forward(dims: _Dims, *, variant: GruVariant, x: _A, w_ih: _A, w_hh: _A,
                b_ih: _OA = None, b_hh: _OA = None, h0: _OA = None, lengths: _OA = None, y: _A,
                h_n: _A, cache: _OA = None, workspace: _A, reverse: bool = False,
                num_threads: int = 0, weights_packed: bool = False,
                precision: Precision = ...) -> None: ...
def gru_backward(dims: _Dims, *, variant: GruVariant, x: _A, w_ih: _A, w_hh: _A,
                 lengths: _OA = None, cache: _A, dy: _OA = None, dh_n: _OA = None, dx: _A,
                 dh0: _OA = None, dw_ih: _OA = None, dw_hh: _OA = None, db_ih: _OA = None,
                 db_hh: _OA = None, workspace: _A, reverse: bool = False,
                 num_threads: int = 0, weights_packed: bool = False,
                 precision: Precision = ...) -> None: ...
def rnn_forward(dims: _Dims, *, nonlinearity: Nonlinearity, x: _A, w_ih: _A, w_hh: _A,
                b_ih: _OA = None, b_hh: _OA = None, h0: _OA = None, lengths: _OA = None, y: _A,
                h_n: _A, cache: _OA = None, workspace: _A, reverse: bool = False,
                num_threads: int = 0, weights_packed: bool = False,
                precision: Precision = ...) -> None: ...
def rnn_backward(dims: _Dims, *, nonlinearity: Nonlinearity, x: _A, w_ih: _A, w_hh: _A,
                 lengths: _OA = None, cache: _A, dy: _OA = None, dh_n: _OA = None, dx: _A,
                 dh0: _OA = None, dw_ih: _OA = None, dw_hh: _OA = None, db_ih: _OA = None,
                 db_hh: _OA = None, workspace: _A, reverse: bool = False,
                 num_threads: int = 0, weights_packed: bool = False,
                 precision: Precision = ...) -> None: ...
# The regularised / normalised LSTM (bindings/lstm_ln.cc; used through fusedrnn.regularised).
def lstm_ln_sizes(dims: _Dims) -> Tuple[int, int, int]: ...
def lstm_ln_forward(dims: _Dims, *, x: _A, w_ih: _A, w_hh: _A, b_ih: _OA = None,
                    b_hh: _OA = None, h0: _OA = None, c0: _OA = None, layer_norm: str = "none",
                    ln_eps: float = 1e-5, ln_gamma_ih: _OA = None, ln_beta_ih: _OA = None,
                    ln_gamma_hh: _OA = None, ln_beta_hh: _OA = None, ln_gamma_c: _OA = None,
                    ln_beta_c: _OA = None, zoneout_h_mask: _OA = None,
                    zoneout_c_mask: _OA = None, zoneout_h: float = 0.0, zoneout_c: float = 0.0,
                    recurrent_mask: _OA = None, lengths: _OA = None, y: _A, h_n: _A, c_n: _A,
                    cache: _OA = None, workspace: _A, reverse: bool = False,
                    num_threads: int = 0) -> None: ...
def lstm_ln_backward(dims: _Dims, *, x: _A, w_ih: _A, w_hh: _A, layer_norm: str = "none",
                     ln_gamma_ih: _OA = None, ln_gamma_hh: _OA = None, ln_gamma_c: _OA = None,
                     zoneout_h_mask: _OA = None, zoneout_c_mask: _OA = None,
                     zoneout_h: float = 0.0, zoneout_c: float = 0.0,
                     recurrent_mask: _OA = None, lengths: _OA = None, cache: _A,
                     dy: _OA = None, dh_n: _OA = None, dc_n: _OA = None, dx: _A,
                     dh0: _OA = None, dc0: _OA = None, dw_ih: _OA = None, dw_hh: _OA = None,
                     db_ih: _OA = None, db_hh: _OA = None, dln_gamma_ih: _OA = None,
                     dln_beta_ih: _OA = None, dln_gamma_hh: _OA = None, dln_beta_hh: _OA = None,
                     dln_gamma_c: _OA = None, dln_beta_c: _OA = None, workspace: _A,
                     reverse: bool = False, num_threads: int = 0) -> None: ...
# The low-precision building blocks (bindings/lowp.cc; used through fusedrnn.lowp).
class FlushDenormals:  # context manager: FTZ + DAZ on the calling thread (python/bindings/fpenv.cc)
    def __init__(self) -> None: ...
    def __enter__(self) -> "FlushDenormals": ...
    def __exit__(self, *exc: object) -> bool: ...
flush_denormals_supported: bool
def lowp_tiers() -> dict: ...
def lowp_active_tier() -> str: ...
def ctc_workspace_size(T: int, N: int, max_target_length: int) -> int: ...
def ctc_loss(dims: Tuple[int, int, int], max_target_length: int, blank: int, logits: bool,
             zero_infinity: bool, num_threads: int, input: _A, targets: _OA, targets_width: int,
             input_lengths: _A, target_lengths: _A, grad_scale: _OA, loss: _A, grad: _OA,
             workspace: _A) -> None: ...  # CTC loss per sequence (+ gradient), fusedrnn/ctc.h
# The single-step cells' per-step path (python/bindings/cell_step.cc; used by fusedrnn.cells).
def cell_plan(kind: int, flag: bool, dtype: Any, C: int, H: int, P: int, params: dict,
              reuse: bool, release_gil: bool = True) -> Any: ...  # a capsule
def cell_forward(plan: Any, x: Any, state: Any, tape: Optional[list], version: int,
                 num_threads: int, /) -> Any: ...  # h | (h, c) | None (not the common case)
def cell_backward(plan: Any, step: tuple, d_h: Any, d_c: Any, version: int, forwards: int,
                  num_threads: int, input_grad: bool, /) -> Any: ...  # (dx, dh0, dc0) | None
def cell_kernel_seconds(plan: Any, x: _A, state: Any, repeat: int,
                        num_threads: int) -> Tuple[float, float]: ...  # (wall, cpu) seconds
def cell_plan_packed(plan: Any) -> Tuple[bool, bool]: ...
def cell_backward_kernel_seconds(plan: Any, step: tuple, d_h: Any, d_c: Any, repeat: int,
                                 num_threads: int,
                                 input_grad: bool = True) -> Tuple[float, float]: ...
