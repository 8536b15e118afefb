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

#include "fusedrnn/common.h"

namespace fusedrnn {

FUSEDRNN_API std::size_t gru_cache_size(const Dims& d);
FUSEDRNN_API std::size_t gru_forward_workspace_size(const Dims& d);
FUSEDRNN_API std::size_t gru_backward_workspace_size(const Dims& d);

// x [T, N, C]; w_ih [3H, C]; w_hh [3H, H]; b_ih, b_hh [3H] (nullable); h0 [N, H] (nullable);
// lengths [N] (nullable). Writes y [T, N, H], h_n [N, H]; cache (nullable); workspace.
template <typename Scalar> FUSEDRNN_API
void gru_forward(const Dims& d, const Options& opt, GruVariant variant, const Scalar* x,
                 const Scalar* w_ih, const Scalar* w_hh, const Scalar* b_ih, const Scalar* b_hh,
                 const Scalar* h0, const std::int64_t* lengths, Scalar* y, Scalar* h_n,
                 Scalar* cache, Scalar* workspace);

// Same arguments as the forward that wrote `cache`. dy [T, N, H], dh_n [N, H] (nullable).
// Overwrites dx, dh0; accumulates dw_ih, dw_hh, db_ih, db_hh (each nullable but dx).
template <typename Scalar> FUSEDRNN_API
void gru_backward(const Dims& d, const Options& opt, GruVariant variant, const Scalar* x,
                  const Scalar* w_ih, const Scalar* w_hh, const std::int64_t* lengths,
                  const Scalar* cache, const Scalar* dy, const Scalar* dh_n, Scalar* dx,
                  Scalar* dh0, Scalar* dw_ih, Scalar* dw_hh, Scalar* db_ih, Scalar* db_hh,
                  Scalar* workspace);

}  // namespace fusedrnn
