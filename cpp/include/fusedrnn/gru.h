// GRU layer kernels (one layer, one direction). See fusedrnn.h for the general notes.
//
// Gates in PyTorch order r, z, n:
//   r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
//   z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
//   reset_after  (PyTorch):          n = tanh(W_in x + b_in + r*(W_hn h + b_hn))
//   reset_before (Keras/ONNX/TF1):   n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)
//   h_t = (1 - z)*n + z*h_{t-1}
// Both formulas use the same weight shapes: w_ih [3H, C], w_hh [3H, H], b_ih, b_hh [3H].
#pragma once

#include <cstddef>
#include <cstdint>

#include "fusedrnn/common.h"

namespace fusedrnn {

// The tensors of one forward call. Required: x, w_ih, w_hh, y, h_n; the rest may be null.
template <typename Scalar>
struct GruForwardArgs {
  GruVariant variant = GruVariant::reset_after;  // the formula (see above)
  const Scalar* x = nullptr;              // [T, N, C]
  const Scalar* w_ih = nullptr;           // [3H, C]
  const Scalar* w_hh = nullptr;           // [3H, H]
  const Scalar* b_ih = nullptr;           // [3H]; null = no bias
  const Scalar* b_hh = nullptr;           // [3H]; null = no bias
  const Scalar* h0 = nullptr;             // [N, H]; null = zeros
  const std::int64_t* lengths = nullptr;  // [N]; null = all T
  Scalar* y = nullptr;                    // out [T, N, H]
  Scalar* h_n = nullptr;                  // out [N, H]
  Scalar* cache = nullptr;                // out [gru_cache_size]; null = inference
};

// The tensors of one backward call: the forward's inputs and cache (same dims, options,
// variant and lengths), the cotangents and the gradients. Required: x, w_ih, w_hh, cache.
template <typename Scalar>
struct GruBackwardArgs {
  GruVariant variant = GruVariant::reset_after;
  const Scalar* x = nullptr;              // the forward's x, w_ih, w_hh, lengths
  const Scalar* w_ih = nullptr;
  const Scalar* w_hh = nullptr;
  const std::int64_t* lengths = nullptr;
  const Scalar* cache = nullptr;          // written by that forward
  const Scalar* dy = nullptr;             // [T, N, H]; null = zero
  const Scalar* dh_n = nullptr;           // [N, H]; null = zero
  Scalar* dx = nullptr;                   // out [T, N, C] (overwritten); null = not computed
  Scalar* dh0 = nullptr;                  // out [N, H] (overwritten); null = not computed
  Scalar* dw_ih = nullptr;                // [3H, C] (+=); null = not computed
  Scalar* dw_hh = nullptr;                // [3H, H] (+=)
  Scalar* db_ih = nullptr;                // [3H] (+=)
  Scalar* db_hh = nullptr;                // [3H] (+=)
  WeightGradSink<Scalar>* wgrad_sink = nullptr;  // null: dw_ih, dw_hh added here (common.h)
};

// Scalars of the buffers the caller provides.
FUSEDRNN_API std::size_t gru_cache_size(const Dims& d);
FUSEDRNN_API std::size_t gru_forward_workspace_size(
    const Dims& d, Precision precision = Precision::float32);
// precision = bfloat16 (training, float32): the bf16 products' block in front (issue 17).
FUSEDRNN_API std::size_t gru_backward_workspace_size(
    const Dims& d, Precision precision = Precision::float32);

// workspace [gru_forward_workspace_size].
template <typename Scalar> FUSEDRNN_API
void gru_forward(const Dims& d, const GruForwardArgs<Scalar>& args, const Options& opt,
                 Scalar* workspace);

// workspace [gru_backward_workspace_size].
template <typename Scalar> FUSEDRNN_API
void gru_backward(const Dims& d, const GruBackwardArgs<Scalar>& args, const Options& opt,
                  Scalar* workspace);

}  // namespace fusedrnn
