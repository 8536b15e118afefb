// fusedrnn: fused forward and backward kernels for LSTM, GRU and Elman RNN layers on the CPU.
//
// GENERAL NOTES (they hold for every kernel of this library)
//
// Shape letters
//   T  time steps          N  batch (sequences)      C  input features
//   H  hidden units        G  gates per cell: LSTM 4 (i, f, g, o), GRU 3 (r, z, n), RNN 1
//   S  steps actually run: max(lengths), or T without lengths
//
// Layout
//   Every tensor is dense, row-major (C order). Inputs and outputs are time-major: x [T, N, C],
//   y [T, N, H]. Weights use PyTorch's layout and gate order: w_ih [G*H, C], w_hh [G*H, H],
//   b_ih [G*H], b_hh [G*H]. A torch state_dict therefore needs no reshuffling.
//
// Memory
//   The caller owns all memory. `*_cache_size(dims)` and `*_workspace_size(dims)` give the
//   number of Scalar elements the caller must provide; nothing allocates inside the kernels.
//   Forward writes into `cache` what backward needs (cache == nullptr: inference only).
//   The cache is read-only for backward, so backward may be called any number of times.
//
// Gradients
//   Backward computes the gradient of L = sum(y*dy) + sum(h_n*dh_n) [+ sum(c_n*dc_n)].
//   dy, dh_n, dc_n may be null (= zero). Parameter gradients (dw_*, db_*) ACCUMULATE (+=);
//   input and state gradients (dx, dh0, dc0) are OVERWRITTEN. Any gradient output may be
//   null, and is then not computed (dx is always computed when given).
//
// Variable lengths and direction
//   `lengths` (nullable) [N], 0 <= lengths[n] <= T: sequence n has steps t < lengths[n] only.
//   Outputs at padded steps are zero; the final state is the state after the sequence's own
//   last step (the initial state when its length is 0); padded steps are not computed and get
//   no gradient (dx there is zero). `reverse` runs time backwards within each sequence's own
//   valid steps: t = len-1, ..., 0 (PyTorch packed-sequence semantics of the reverse
//   direction of a bidirectional layer).
//
// Threads and determinism
//   Options::num_threads (0 = the OpenMP default) sets the threads of the one parallel region
//   each call opens. Work is split into blocks of fixed size, so results are bitwise identical
//   for any number of threads. No global mutable state: concurrent calls on disjoint output
//   buffers are safe.
//
// Errors
//   Invalid arguments throw std::invalid_argument before any work starts.
#pragma once

#include "fusedrnn/common.h"
#include "fusedrnn/gru.h"
#include "fusedrnn/lstm.h"
#include "fusedrnn/rnn.h"
