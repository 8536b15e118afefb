// The work items of the low-precision products (native.cc, soft.cc): row chunks of `rb` rows x
// column groups of `ng` panels of kPanel columns, row-chunk major, f(r0, r1, c0, nc) per item.
// `shared`: work-shared over the team (an omp for, ending in its barrier; outside a parallel
// region, all of them); else all of them by the calling thread, with no work-sharing construct
// (one thread's own rows: bf16_steps.h, gemm_own_rows_s8). Internal header: its unnamed namespace
// gives each instruction-set copy its own.
#pragma once

#include <algorithm>
#include <cstdint>

#include "lowp/lowp.h"

namespace fusedrnn {
namespace lowp {
namespace {

template <typename F>
inline void for_items(std::int64_t m, std::int64_t n, std::int64_t rb, std::int64_t ng, bool shared,
                      F&& f) {
  using I = std::int64_t;
  const I groups = (panels(n) + ng - 1) / ng;
  const I rblocks = (m + rb - 1) / rb;
  const I items = groups * rblocks;
  auto item = [&](I it) {
    const I r = it / groups, g = it % groups;
    const I r0 = r * rb, r1 = std::min(m, r0 + rb);
    const I c0 = g * ng * kPanel, nc = std::min<I>(ng * kPanel, n - c0);
    f(r0, r1, c0, nc);
  };
  if (!shared) {
    for (I it = 0; it < items; ++it) item(it);
    return;
  }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (I it = 0; it < items; ++it) item(it);
}

}  // namespace
}  // namespace lowp
}  // namespace fusedrnn
