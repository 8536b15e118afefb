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
// With cell_clip > 0 (TF1's LSTMCell(cell_clip)), c_t = clip(f*c_{t-1} + i*g, ±cell_clip) is the
// cell state that o, h and the next step see; its gradient is zero where the clip is active
// (|c_t| = cell_clip, a value exactly at the bound counting as clipped).
#pragma once

#include <cstddef>
#include <cstdint>

#include "fusedrnn/common.h"

namespace fusedrnn {

// The tensors of one forward call. Required: x, w_ih, w_hh, y, h_n, c_n; the rest may be null.
template <typename Scalar>
struct LstmForwardArgs {
  const Scalar* x = nullptr;              // [T, N, C]
  const Scalar* w_ih = nullptr;           // [4H, C]
  const Scalar* w_hh = nullptr;           // [4H, R]
  const Scalar* b_ih = nullptr;           // [4H]; null = no bias
  const Scalar* b_hh = nullptr;           // [4H]; null = no bias
  const Scalar* h0 = nullptr;             // [N, R]; null = zeros
  const Scalar* c0 = nullptr;             // [N, H]; null = zeros
  const Scalar* w_peep = nullptr;         // [3, H] (p_i, p_f, p_o); null = no peepholes
  const Scalar* w_hr = nullptr;           // [P, H]; non-null iff P > 0
  const std::int64_t* lengths = nullptr;  // [N]; null = all T
  Scalar cell_clip = 0;                   // > 0: c clipped to [-cell_clip, cell_clip] after
                                          // each update (TF1 LSTMCell(cell_clip)); 0 = none
  Scalar* y = nullptr;                    // out [T, N, R]
  Scalar* h_n = nullptr;                  // out [N, R]
  Scalar* c_n = nullptr;                  // out [N, H]
  Scalar* cache = nullptr;                // out [lstm_cache_size]; null = inference
};

// The tensors of one backward call: the forward's inputs and cache (same dims, options and
// lengths), the cotangents and the gradients. Required: x, w_ih, w_hh, cache.
template <typename Scalar>
struct LstmBackwardArgs {
  const Scalar* x = nullptr;              // the forward's x, w_ih, w_hh, w_peep, w_hr, lengths
  const Scalar* w_ih = nullptr;
  const Scalar* w_hh = nullptr;
  const Scalar* w_peep = nullptr;
  const Scalar* w_hr = nullptr;
  const std::int64_t* lengths = nullptr;
  Scalar cell_clip = 0;                   // the forward's; the gradient is zero where |c| hit it
  const Scalar* cache = nullptr;          // written by that forward
  const Scalar* dy = nullptr;             // [T, N, R]; null = zero
  const Scalar* dh_n = nullptr;           // [N, R]; null = zero
  const Scalar* dc_n = nullptr;           // [N, H]; null = zero
  Scalar* dx = nullptr;                   // out [T, N, C] (overwritten); null = not computed
  Scalar* dh0 = nullptr;                  // out [N, R] (overwritten); null = not computed
  Scalar* dc0 = nullptr;                  // out [N, H] (overwritten); null = not computed
  Scalar* dw_ih = nullptr;                // [4H, C] (+=); null = not computed
  Scalar* dw_hh = nullptr;                // [4H, R] (+=)
  Scalar* db_ih = nullptr;                // [4H] (+=)
  Scalar* db_hh = nullptr;                // [4H] (+=)
  Scalar* dw_peep = nullptr;              // [3, H] (+=); needs w_peep
  Scalar* dw_hr = nullptr;                // [P, H] (+=); needs P > 0
  WeightGradSink<Scalar>* wgrad_sink = nullptr;  // null: dw_ih, dw_hh added here (common.h)
};

// Scalars of the buffers the caller provides.
FUSEDRNN_API std::size_t lstm_cache_size(const Dims& d);
FUSEDRNN_API std::size_t lstm_forward_workspace_size(
    const Dims& d, Precision precision = Precision::float32);
// precision = bfloat16 (training, float32): the bf16 products' block in front (issue 17).
FUSEDRNN_API std::size_t lstm_backward_workspace_size(
    const Dims& d, Precision precision = Precision::float32);

// workspace [lstm_forward_workspace_size].
template <typename Scalar> FUSEDRNN_API
void lstm_forward(const Dims& d, const LstmForwardArgs<Scalar>& args, const Options& opt,
                  Scalar* workspace);

// workspace [lstm_backward_workspace_size].
template <typename Scalar> FUSEDRNN_API
void lstm_backward(const Dims& d, const LstmBackwardArgs<Scalar>& args, const Options& opt,
                   Scalar* workspace);

}  // namespace fusedrnn
