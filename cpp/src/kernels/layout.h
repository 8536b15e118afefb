// One description of each buffer's layout, used twice: by the size query (measuring) and by the
// kernel (carving). A kernel's layout function takes a Carver and hands out its regions in
// order, so the size of a workspace or cache and the pointers into it cannot disagree:
//
//   template <typename T> Space<T> carve(const Dims& d, Carver<T>& c) {
//     Space<T> s; s.packed = c.take_aligned(packed_bound(...)); s.buf = c.take(n); return s; }
//   size:   Carver<float> m;  carve(d, m);  m.size()
//   kernel: Carver<Scalar> c(workspace);  auto s = carve(d, c);
#pragma once

#include <cstddef>

#include "isa/table.h"
#include "packed_gemm.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
namespace detail {

// T is Scalar or const Scalar (a cache read by backward).
template <typename T>
class Carver {
 public:
  Carver() = default;                        // measuring: take() returns null, size() adds up
  explicit Carver(T* base) : base_(base) {}  // carving from base

  // The next n scalars.
  T* take(Index n) {
    T* p = base_ ? base_ + off_ : nullptr;
    off_ += n;
    return p;
  }
  // The next n scalars, starting on a 64-byte boundary (packed weights): the skip is at most
  // kAlignScalars - 1 scalars, which measuring reserves whole.
  T* take_aligned(Index n) {
    if (base_)
      off_ = aligned64(base_ + off_) - base_;
    else
      off_ += kAlignScalars;
    return take(n);
  }
  // Measuring: the scalars the regions taken so far need.
  std::size_t size() const { return std::size_t(off_); }

 private:
  T* base_ = nullptr;
  Index off_ = 0;
};

// The size of the buffer that layout(d, carver) describes.
template <typename Layout>
std::size_t measure(const Dims& d, Layout layout) {
  Carver<float> m;
  layout(d, m);
  return m.size();
}

// A cell's size queries, from its layout descriptions: the cache, the forward workspace in
// float32 and for the low-precision forward (forward(d, carver, lowp)), and the backward
// workspace in float32 and for the bf16 backward (backward(d, carver, lowp)).
template <typename Cache, typename Forward, typename Backward>
isa::Sizes cell_sizes(const Dims& d, Cache cache, Forward forward, Backward backward) {
  return {measure(d, cache),
          measure(d, [&](const Dims& e, Carver<float>& c) { return forward(e, c, false); }),
          measure(d, [&](const Dims& e, Carver<float>& c) { return backward(e, c, false); }),
          measure(d, [&](const Dims& e, Carver<float>& c) { return backward(e, c, true); }),
          measure(d, [&](const Dims& e, Carver<float>& c) { return forward(e, c, true); })};
}

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
