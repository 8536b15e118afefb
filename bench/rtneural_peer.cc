// See rtneural_peer.h. Compiled with RTNEURAL_USE_EIGEN or RTNEURAL_USE_XSIMD, RTNEURAL_NAMESPACE
// set to that backend's own namespace and RTNEURAL_PEER_MAKE to make_eigen or make_xsimd.
#include "rtneural_peer.h"

#include <RTNeural/RTNeural.h>

#include <algorithm>
#include <vector>

namespace rtneural_peer {
namespace {

namespace R = RTNEURAL_NAMESPACE;
using Mat = std::vector<std::vector<float>>;

// [rows, cols] row-major -> RTNeural's [cols][rows] (torch_helpers.h: detail::transpose).
Mat transpose(const float* w, int rows, int cols) {
  Mat t(static_cast<std::size_t>(cols), std::vector<float>(static_cast<std::size_t>(rows)));
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) t[std::size_t(c)][std::size_t(r)] = w[r * cols + c];
  return t;
}
// Gates r, z -> z, r (torch_helpers.h: detail::swap_rz).
void swap_rz(Mat& m, int H) {
  for (auto& row : m)
    for (int k = 0; k < H; ++k) std::swap(row[std::size_t(k)], row[std::size_t(k + H)]);
}

template <int C, int H>
struct Lstm final : Net {
  R::ModelT<float, C, H, R::LSTMLayerT<float, C, H>> m;
  Lstm(const float* w_ih, const float* w_hh, const float* b_ih, const float* b_hh) {
    auto& l = m.template get<0>();
    l.setWVals(transpose(w_ih, 4 * H, C));
    l.setUVals(transpose(w_hh, 4 * H, H));
    std::vector<float> b(std::size_t(4 * H));
    for (int i = 0; i < 4 * H; ++i) b[std::size_t(i)] = b_ih[i] + b_hh[i];
    l.setBVals(b);
    m.reset();
  }
  void reset() override { m.reset(); }
  void run(const float* x, float* y, long steps) override {
    for (long t = 0; t < steps; ++t) {
      m.forward(x + t * C);
      std::copy(m.getOutputs(), m.getOutputs() + H, y + t * H);
    }
  }
};

template <int C, int H>
struct Gru final : Net {
  R::ModelT<float, C, H, R::GRULayerT<float, C, H>> m;
  Gru(const float* w_ih, const float* w_hh, const float* b_ih, const float* b_hh) {
    auto& l = m.template get<0>();
    Mat w = transpose(w_ih, 3 * H, C), u = transpose(w_hh, 3 * H, H);
    swap_rz(w, H), swap_rz(u, H);
    l.setWVals(w);
    l.setUVals(u);
    Mat b = {std::vector<float>(b_ih, b_ih + 3 * H), std::vector<float>(b_hh, b_hh + 3 * H)};
    swap_rz(b, H);
    l.setBVals(b);
    m.reset();
  }
  void reset() override { m.reset(); }
  void run(const float* x, float* y, long steps) override {
    for (long t = 0; t < steps; ++t) {
      m.forward(x + t * C);
      std::copy(m.getOutputs(), m.getOutputs() + H, y + t * H);
    }
  }
};

template <int H>
std::unique_ptr<Net> make_h(char cell, int C, const float* a, const float* b, const float* c,
                            const float* d) {
  if (cell == 'l') {
    if (C == 1) return std::make_unique<Lstm<1, H>>(a, b, c, d);
    if (C == H) return std::make_unique<Lstm<H, H>>(a, b, c, d);
  } else {
    if (C == 1) return std::make_unique<Gru<1, H>>(a, b, c, d);
    if (C == H) return std::make_unique<Gru<H, H>>(a, b, c, d);
  }
  return nullptr;
}

}  // namespace

std::unique_ptr<Net> RTNEURAL_PEER_MAKE(char cell, int C, int H, const float* w_ih,
                                        const float* w_hh, const float* b_ih, const float* b_hh) {
  switch (H) {
    case 16: return make_h<16>(cell, C, w_ih, w_hh, b_ih, b_hh);
    case 32: return make_h<32>(cell, C, w_ih, w_hh, b_ih, b_hh);
    case 64: return make_h<64>(cell, C, w_ih, w_hh, b_ih, b_hh);
    case 128: return make_h<128>(cell, C, w_ih, w_hh, b_ih, b_hh);
    default: return nullptr;
  }
}

}  // namespace rtneural_peer
