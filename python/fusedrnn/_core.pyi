"""Type stub of the compiled module fusedrnn._core (low level: use fusedrnn's functions).

Every array argument must be a C-contiguous numpy array of the exact dtype (float32 or float64,
lengths int64) and size; optional ones may be None. Outputs are written in place. dims is
(T, N, C, H); the LSTM functions also take (T, N, C, H, P) with P the projection size (0 = none;
w_hr and dw_hr [P, H] must then be given exactly when P > 0). The GIL is released while a
kernel runs.
"""
from typing import Optional, Tuple, Union

import numpy as np

_A = np.ndarray
_OA = Optional[np.ndarray]
_Dims = Tuple[int, int, int, int]
_LstmDims = Union[Tuple[int, int, int, int], Tuple[int, int, int, int, int]]

def build_info() -> dict: ...
def reference_gemm(a: _A, b: _A, c: _A, num_threads: int = 0) -> None: ...  # c = a @ b (Eigen)
def lstm_sizes(dims: _LstmDims) -> Tuple[int, int, int]: ...  # cache, forward ws, backward ws
def gru_sizes(dims: _Dims) -> Tuple[int, int, int]: ...
def rnn_sizes(dims: _Dims) -> Tuple[int, int, int]: ...
def lstm_forward(dims: _LstmDims, reverse: bool, num_threads: int, weights_packed: bool,
                 x: _A, w_ih: _A, w_hh: _A, b_ih: _OA, b_hh: _OA, h0: _OA, c0: _OA, w_peep: _OA, w_hr: _OA, lengths: _OA,
                 y: _A, h_n: _A, c_n: _A, cache: _OA, workspace: _A) -> None: ...
def lstm_backward(dims: _LstmDims, reverse: bool, num_threads: int, x: _A, w_ih: _A, w_hh: _A,
                  w_peep: _OA, w_hr: _OA, lengths: _OA, cache: _A, dy: _OA, dh_n: _OA,
                  dc_n: _OA, dx: _A, dh0: _OA, dc0: _OA, dw_ih: _OA, dw_hh: _OA, db_ih: _OA,
                  db_hh: _OA, dw_peep: _OA, dw_hr: _OA, workspace: _A) -> None: ...
def gru_forward(dims: _Dims, reverse: bool, num_threads: int, weights_packed: bool,
                reset_after: bool, x: _A,
                w_ih: _A, w_hh: _A, b_ih: _OA, b_hh: _OA, h0: _OA, lengths: _OA, y: _A, h_n: _A,
                cache: _OA, workspace: _A) -> None: ...
def gru_backward(dims: _Dims, reverse: bool, num_threads: int, reset_after: bool, x: _A,
                 w_ih: _A, w_hh: _A, lengths: _OA, cache: _A, dy: _OA, dh_n: _OA, dx: _A,
                 dh0: _OA, dw_ih: _OA, dw_hh: _OA, db_ih: _OA, db_hh: _OA,
                 workspace: _A) -> None: ...
def rnn_forward(dims: _Dims, reverse: bool, num_threads: int, weights_packed: bool,
                relu: bool, x: _A, w_ih: _A,
                w_hh: _A, b_ih: _OA, b_hh: _OA, h0: _OA, lengths: _OA, y: _A, h_n: _A,
                cache: _OA, workspace: _A) -> None: ...
def rnn_backward(dims: _Dims, reverse: bool, num_threads: int, relu: bool, x: _A, w_ih: _A,
                 w_hh: _A, lengths: _OA, cache: _A, dy: _OA, dh_n: _OA, dx: _A, dh0: _OA,
                 dw_ih: _OA, dw_hh: _OA, db_ih: _OA, db_hh: _OA, workspace: _A) -> None: ...
def ctc_workspace_size(T: int, N: int, max_target_length: int) -> int: ...
def ctc_loss(dims: Tuple[int, int, int], max_target_length: int, blank: int, logits: bool,
             zero_infinity: bool, num_threads: int, input: _A, targets: _OA, targets_width: int,
             input_lengths: _A, target_lengths: _A, grad_scale: _OA, loss: _A, grad: _OA,
             workspace: _A) -> None: ...  # CTC loss per sequence (+ gradient), fusedrnn/ctc.h
