// Elman RNN layer kernels (one layer, one direction). See fusedrnn.h for the general notes.
//
//   h_t = act(W_ih x + b_ih + W_hh h_{t-1} + b_hh),  act = tanh or relu
// w_ih [H, C], w_hh [H, H], b_ih, b_hh [H].
#pragma once

#include <cstddef>

#include "fusedrnn/common.h"

namespace fusedrnn {

FUSEDRNN_API std::size_t rnn_cache_size(const Dims& d);
FUSEDRNN_API std::size_t rnn_forward_workspace_size(const Dims& d);
FUSEDRNN_API std::size_t rnn_backward_workspace_size(const Dims& d);

template <typename Scalar> FUSEDRNN_API
void rnn_forward(const Dims& d, const Options& opt, Nonlinearity act, const Scalar* x,
                 const Scalar* w_ih, const Scalar* w_hh, const Scalar* b_ih, const Scalar* b_hh,
                 const Scalar* h0, const std::int64_t* lengths, Scalar* y, Scalar* h_n,
                 Scalar* cache, Scalar* workspace);

template <typename Scalar> FUSEDRNN_API
void rnn_backward(const Dims& d, const Options& opt, Nonlinearity act, const Scalar* x,
                  const Scalar* w_ih, const Scalar* w_hh, const std::int64_t* lengths,
                  const Scalar* cache, const Scalar* dy, const Scalar* dh_n, Scalar* dx,
                  Scalar* dh0, Scalar* dw_ih, Scalar* dw_hh, Scalar* db_ih, Scalar* db_hh,
                  Scalar* workspace);

}  // namespace fusedrnn
