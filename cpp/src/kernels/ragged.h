// Ragged batches in inference: work proportional to the valid (t, n) positions.
//
// With `lengths` and no cache, a forward kernel orders the sequences by length (longest first,
// ties by index: a permutation kept in its workspace; callers never sort), so that the
// sequences still running at step s are a prefix of the ordered rows. Step s then gathers the
// inputs of its running rows, projects only them (x w_ihᵀ), runs the recurrent product and the
// gate pass on those rows only, and writes each row's output at its caller's position. A
// finished row is never touched again: its final state stays in the state slot it last wrote
// (slot len % 2 of the double buffer) and is copied out in the caller's order at the end.
//
// Bit for bit the rectangular path's values: every output element of the packed GEMM is one
// accumulation over k in order whatever the number and position of the rows (packed_gemm.h),
// and the gate passes are per row. Padded outputs stay zero (forward_prologue zero-fills y).
// Training keeps the rectangular loop: its cache and the backward index rows by caller order.
#pragma once

#include <algorithm>

#include "kernels/kernel.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
namespace detail {

// Scalars of workspace that hold the order of N rows (N Index values, for float or double).
constexpr Index ragged_order_scalars(Index N) { return 2 * N; }

struct RaggedOrder {
  const std::int64_t* lengths;
  Index* order;  // order[i]: the caller's row of ordered row i
  Index N;

  // On one thread, before the parallel region. In place (std::sort allocates nothing).
  void sort() const {
    for (Index i = 0; i < N; ++i) order[i] = i;
    const std::int64_t* len = lengths;
    std::sort(order, order + N, [len](Index a, Index b) {
      return len[a] != len[b] ? len[a] > len[b] : a < b;
    });
  }
  Index len(Index i) const { return lengths[order[i]]; }
  // Ordered rows still running at step s, from the count at an earlier step (every thread keeps
  // its own count; all compute the same one).
  Index active(Index s, Index prev) const {
    while (prev > 0 && len(prev - 1) <= s) --prev;
    return prev;
  }
  // Time step that ordered row i processes at step s (i active).
  Index time(Index s, Index i, bool reverse) const { return reverse ? len(i) - 1 - s : s; }
};

// Work-shared: dst[i] = src[order[i]] (rows of `width`), or zeros when src is null.
template <typename Scalar>
void par_gather_rows(const RaggedOrder& r, const Scalar* src, Index width, Scalar* dst) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index i = 0; i < r.N; ++i) {
    if (src)
      std::copy(src + r.order[i] * width, src + (r.order[i] + 1) * width, dst + i * width);
    else
      std::fill(dst + i * width, dst + (i + 1) * width, Scalar(0));
  }
}

// Work-shared: xs[i] = x[t(s, i), order[i]] for the na running rows of step s.
template <typename Scalar>
void par_gather_step_inputs(const Dims& d, const RaggedOrder& r, bool reverse, Index s, Index na,
                            const Scalar* x, Scalar* xs) {
  const Index C = d.C;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index i = 0; i < na; ++i) {
    const Scalar* src = x + (r.time(s, i, reverse) * d.N + r.order[i]) * C;
    std::copy(src, src + C, xs + i * C);
  }
}

// Serial (inside a single construct): the final state of each caller row n, which its ordered
// row i last wrote into slot len % 2 of the double buffer `buf` [2, N, width].
template <typename Scalar>
void scatter_final_state(const RaggedOrder& r, const Scalar* buf, Index width, Scalar* out) {
  for (Index i = 0; i < r.N; ++i) {
    const Scalar* src = buf + ((r.len(i) % 2) * r.N + i) * width;
    std::copy(src, src + width, out + r.order[i] * width);
  }
}

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
