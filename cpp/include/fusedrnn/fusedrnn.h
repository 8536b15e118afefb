// fusedrnn: fused forward and backward kernels for LSTM, GRU and Elman RNN layers on the CPU.
//
// GENERAL NOTES (they hold for every kernel of this library)
//
// Shape letters
//   T  time steps          N  batch (sequences)      C  input features
//   H  hidden units        G  gates per cell: LSTM 4 (i, f, g, o), GRU 3 (r, z, n), RNN 1
//   S  steps actually run: max(lengths), or T without lengths
//   P  LSTM projection size (Dims::P, PyTorch's proj_size); 0 = no projection
//   R  recurrent width: the size of the hidden state h and of the output, R = P if P > 0
//      else H. Only an LSTM with projection has R != H (its cell state c keeps H units).
//
// Layout
//   Every tensor is dense, row-major (C order). Inputs and outputs are time-major: x [T, N, C],
//   y [T, N, R]. Weights use PyTorch's layout and gate order: w_ih [G*H, C], w_hh [G*H, R],
//   b_ih [G*H], b_hh [G*H], and for an LSTM with projection w_hr [P, H]. A torch state_dict
//   therefore needs no reshuffling.
//
// Projection (LSTM only, Dims::P > 0)
//   The LSTM's output and hidden state are projected: h_t = (o_t*tanh(c_t)) w_hrᵀ, so h0, h_n
//   and y have P units per row while c0 and c_n keep H. GRU and RNN kernels throw
//   std::invalid_argument when P != 0.
//
// Memory
//   The caller owns all memory. `*_cache_size(dims)` and `*_workspace_size(dims)` give the
//   number of Scalar elements the caller must provide (they throw std::invalid_argument for
//   dims the kernel rejects); nothing allocates inside the kernels.
//   Forward writes into `cache` what backward needs (cache == nullptr: inference only).
//   The cache is read-only for backward, so backward may be called any number of times.
//   The forward workspace holds the weights packed for the kernels at its start; with
//   Options::weights_packed a later forward on the same workspace (same cell, C, H, P and
//   weights) skips packing them (see common.h); a backward likewise, on the same backward
//   workspace with the same dims.
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
// Arguments
//   Each kernel takes (dims, args, options, workspace): args is the cell's struct of named
//   pointers (LstmForwardArgs, GruBackwardArgs, ...), default-constructed to null, so a caller
//   sets the tensors it has and an optional tensor is one field.
//
// Errors
//   The kernel is the one authority on its arguments: invalid dims, a missing required
//   pointer, lengths out of range or an inconsistent projection throw std::invalid_argument
//   before any work starts.
#pragma once

#include "fusedrnn/common.h"
#include "fusedrnn/ctc.h"
#include "fusedrnn/gru.h"
#include "fusedrnn/lstm.h"
#include "fusedrnn/lstm_ln.h"
#include "fusedrnn/rnn.h"
