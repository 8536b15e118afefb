// Elman RNN layer kernels (one layer, one direction). See fusedrnn.h for the general notes.
//
//   h_t = act(W_ih x + b_ih + W_hh h_{t-1} + b_hh),  act = tanh or relu
// w_ih [H, C], w_hh [H, H], b_ih, b_hh [H].
#pragma once

#include <cstddef>
#include <cstdint>

#include "fusedrnn/common.h"

namespace fusedrnn {

// The tensors of one forward call. Required: x, w_ih, w_hh, y, h_n; the rest may be null.
template <typename Scalar>
struct RnnForwardArgs {
  Nonlinearity nonlinearity = Nonlinearity::tanh;  // tanh or relu
  const Scalar* x = nullptr;              // [T, N, C]
  const Scalar* w_ih = nullptr;           // [H, C]
  const Scalar* w_hh = nullptr;           // [H, H]
  const Scalar* b_ih = nullptr;           // [H]; null = no bias
  const Scalar* b_hh = nullptr;           // [H]; null = no bias
  const Scalar* h0 = nullptr;             // [N, H]; null = zeros
  const std::int64_t* lengths = nullptr;  // [N]; null = all T
  Scalar* y = nullptr;                    // out [T, N, H]
  Scalar* h_n = nullptr;                  // out [N, H]
  Scalar* cache = nullptr;                // out [rnn_cache_size]; null = inference
};

// The tensors of one backward call: the forward's inputs and cache (same dims, options,
// nonlinearity and lengths), the cotangents and the gradients. Required: x, w_ih, w_hh, cache.
template <typename Scalar>
struct RnnBackwardArgs {
  Nonlinearity nonlinearity = Nonlinearity::tanh;
  const Scalar* x = nullptr;              // the forward's x, w_ih, w_hh, lengths
  const Scalar* w_ih = nullptr;
  const Scalar* w_hh = nullptr;
  const std::int64_t* lengths = nullptr;
  const Scalar* cache = nullptr;          // written by that forward
  const Scalar* dy = nullptr;             // [T, N, H]; null = zero
  const Scalar* dh_n = nullptr;           // [N, H]; null = zero
  Scalar* dx = nullptr;                   // out [T, N, C] (overwritten); null = not computed
  Scalar* dh0 = nullptr;                  // out [N, H] (overwritten); null = not computed
  Scalar* dw_ih = nullptr;                // [H, C] (+=); null = not computed
  Scalar* dw_hh = nullptr;                // [H, H] (+=)
  Scalar* db_ih = nullptr;                // [H] (+=)
  Scalar* db_hh = nullptr;                // [H] (+=)
  WeightGradSink<Scalar>* wgrad_sink = nullptr;  // null: dw_ih, dw_hh added here (common.h)
};

// Scalars of the buffers the caller provides.
FUSEDRNN_API std::size_t rnn_cache_size(const Dims& d);
FUSEDRNN_API std::size_t rnn_forward_workspace_size(
    const Dims& d, Precision precision = Precision::float32);
// precision = bfloat16 (training, float32): the bf16 products' block in front (issue 17).
FUSEDRNN_API std::size_t rnn_backward_workspace_size(
    const Dims& d, Precision precision = Precision::float32);

// workspace [rnn_forward_workspace_size].
template <typename Scalar> FUSEDRNN_API
void rnn_forward(const Dims& d, const RnnForwardArgs<Scalar>& args, const Options& opt,
                 Scalar* workspace);

// workspace [rnn_backward_workspace_size].
template <typename Scalar> FUSEDRNN_API
void rnn_backward(const Dims& d, const RnnBackwardArgs<Scalar>& args, const Options& opt,
                  Scalar* workspace);

}  // namespace fusedrnn
