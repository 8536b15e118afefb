// LSTM layer kernels (one layer, one direction). See fusedrnn.h for the general notes.
//
// Gates in PyTorch order i, f, g, o; optional peepholes w_peep [3, H] (rows p_i, p_f, p_o):
//   i = sigmoid(W_ii x + b_ii + W_hi h + b_hi + p_i*c_{t-1})
//   f = sigmoid(W_if x + b_if + W_hf h + b_hf + p_f*c_{t-1})
//   g = tanh   (W_ig x + b_ig + W_hg h + b_hg)
//   c_t = f*c_{t-1} + i*g
//   o = sigmoid(W_io x + b_io + W_ho h + b_ho + p_o*c_t)      (o sees the new cell)
//   h_t = o*tanh(c_t)
// With projection (Dims::P > 0, PyTorch's proj_size) the hidden state is projected to P units:
//   m_t = o*tanh(c_t) [N, H],  h_t = m_t w_hrᵀ [N, P]   (w_hr [P, H])
// and the recurrent weights w_hh read h_t: [4H, P]. R below is the width of h: R = P if P > 0,
// else H. Peepholes act on c (H units) either way.
#pragma once

#include <cstddef>

#include "fusedrnn/common.h"

namespace fusedrnn {

FUSEDRNN_API std::size_t lstm_cache_size(const Dims& d);                  // Scalars
FUSEDRNN_API std::size_t lstm_forward_workspace_size(const Dims& d);      // Scalars
FUSEDRNN_API std::size_t lstm_backward_workspace_size(const Dims& d);     // Scalars

// x [T, N, C]; w_ih [4H, C]; w_hh [4H, R]; b_ih, b_hh [4H] (nullable); h0 [N, R], c0 [N, H]
// (nullable = zeros); w_peep [3, H] (nullable = no peepholes); w_hr [P, H], non-null iff P > 0;
// lengths [N] (nullable = all T).
// Writes y [T, N, R], h_n [N, R], c_n [N, H]; cache [lstm_cache_size] (nullable = inference);
// workspace [lstm_forward_workspace_size].
template <typename Scalar> FUSEDRNN_API
void lstm_forward(const Dims& d, const Options& opt, const Scalar* x, const Scalar* w_ih,
                  const Scalar* w_hh, const Scalar* b_ih, const Scalar* b_hh, const Scalar* h0,
                  const Scalar* c0, const Scalar* w_peep, const Scalar* w_hr,
                  const std::int64_t* lengths, Scalar* y, Scalar* h_n, Scalar* c_n, Scalar* cache,
                  Scalar* workspace);

// Same dims, x, weights (w_peep, w_hr included), lengths and options as the forward that wrote
// `cache`. dy [T, N, R], dh_n [N, R], dc_n [N, H] (nullable = zero). Overwrites dx [T, N, C],
// dh0 [N, R], dc0 [N, H]; accumulates dw_ih [4H, C], dw_hh [4H, R], db_ih, db_hh [4H],
// dw_peep [3, H], dw_hr [P, H]. Every gradient output but dx may be null (dw_peep needs w_peep,
// dw_hr needs P > 0). workspace [lstm_backward_workspace_size].
template <typename Scalar> FUSEDRNN_API
void lstm_backward(const Dims& d, const Options& opt, const Scalar* x, const Scalar* w_ih,
                   const Scalar* w_hh, const Scalar* w_peep, const Scalar* w_hr,
                   const std::int64_t* lengths, const Scalar* cache, const Scalar* dy,
                   const Scalar* dh_n, const Scalar* dc_n, Scalar* dx, Scalar* dh0, Scalar* dc0,
                   Scalar* dw_ih, Scalar* dw_hh, Scalar* db_ih, Scalar* db_hh, Scalar* dw_peep,
                   Scalar* dw_hr, Scalar* workspace);

}  // namespace fusedrnn
