// RTNeural as a peer of bench/stream_latency.cc (built only with -DFUSEDRNN_RTNEURAL_DIR=<an
// RTNeural checkout>; no RTNeural code is part of this project). rtneural_peer.cc is compiled
// twice, once per RTNeural backend (Eigen, xsimd), each in its own namespace, with RTNeural's
// compile-time API (ModelT, sizes as template arguments: its fastest) and -O3 -march=native.
#pragma once

#include <memory>

namespace rtneural_peer {

// One LSTM or GRU (reset_after) layer, float, batch 1.
struct Net {
  virtual ~Net() = default;
  virtual void reset() = 0;
  // `steps` steps, x [steps, C] -> y [steps, H] (RTNeural's forward per step in a loop, inlined).
  virtual void run(const float* x, float* y, long steps) = 0;
};

// Weights in PyTorch's layout (w_ih [G*H, C], w_hh [G*H, H], b_ih, b_hh [G*H]; gates i f g o /
// r z n), converted to RTNeural's as its torch_helpers.h does. cell 'l' (LSTM) or 'g' (GRU).
// Sizes: C in {1, H}, H in {16, 32, 64, 128}; null for others.
std::unique_ptr<Net> make_eigen(char cell, int C, int H, const float* w_ih, const float* w_hh,
                                const float* b_ih, const float* b_hh);
std::unique_ptr<Net> make_xsimd(char cell, int C, int H, const float* w_ih, const float* w_hh,
                                const float* b_ih, const float* b_hh);

}  // namespace rtneural_peer
