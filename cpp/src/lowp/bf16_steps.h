// bf16 inference inside the cells' forward kernels (Options::precision = bfloat16, float32
// layers): the input projection and the per-step recurrent products as bf16 x bf16 -> fp32 products
// of the low-precision tiers (lowp.h), everything else as in fp32.
//
// int8 inference (Options::precision = int8) the same way with the s8 products of lowp.h (the
// *_s8 helpers below; fusedrnn.reference_lowp.*_forward_int8 emulates it): w_ih, w_hh quantised
// once, when packed, per output row (lowp::pack_s8); each row of x and of the recurrent operand
// (h entering the step; the reset-before GRU's fp32 r*h) quantised per row, dynamically
// (lowp::quantize_s8: scale = amax / 127 of that row, so no range is assumed: the LSTM
// projection's h, the relu RNN and any h0 are covered); s32 sums, dequantised into fp32 from
// zero; the rest as in bfloat16. Workspace: lowp::s8_block in front, like the bf16 block.
//
// Rounding points (fusedrnn.reference_lowp.*_forward_bf16 emulates them): x, w_ih and w_hh
// (packed once), and the operand of every recurrent product -- the fp32 state h entering the
// step, and in the reset-before GRU the fp32 r*h -- round to bf16 (nearest even). Products
// accumulate in fp32 (from zero; the gate pass adds the biases in fp32 as in fp32 mode); gate
// math, c, peepholes, the LSTM projection (fp32 weights) and every output stay fp32.
//
// Workspace: lowp::bf16_block at the START of the forward workspace (packed weights keep their
// offsets across calls: Options::weights_packed), then the fp32 layout unchanged.
// Included by the kernels of every instruction-set copy.
#pragma once

#include <cmath>
#include <string>
#include <type_traits>

#include "kernels/kernel.h"
#include "kernels/skeleton.h"
#include "lowp/lowp.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
namespace detail {

// precision = bfloat16 runs float32 tensors only; with a cache (training) the backward's bf16
// products are in bf16_backward.h.
// precision = int8: float32 tensors, inference only (no cache).
inline void check_precision(const char* fn, const Options& opt, bool is_float, bool training) {
  if (opt.precision == Precision::float32) return;
  if (opt.precision == Precision::int8) {
    if (!is_float) fail(std::string(fn) + ": precision int8 needs float32 tensors");
    if (training)
      fail(std::string(fn) + ": precision int8 is inference only: cache must be null");
    return;
  }
  if (opt.precision != Precision::bfloat16) fail(std::string(fn) + ": unknown Options::precision");
  if (!is_float) fail(std::string(fn) + ": precision bfloat16 needs float32 tensors");
}

// Work-shared: dst rows [rows, bf16_kpad(K)] = bf16(src rows [rows, K], leading dimension ld).
inline void par_rows_to_bf16(lowp::Tier tier, const float* src, Index rows, Index K, Index ld,
                             std::uint16_t* dst) {
  const Index kp = lowp::bf16_kpad(K), blk = 8, nb = ceil_div(rows, blk);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index b = 0; b < nb; ++b)
    lowp::to_bf16(tier, src + b * blk * ld, std::min(blk, rows - b * blk), K, ld,
                  dst + b * blk * kp, kp);
}

// Work-shared packing of w [n, K] (row-major, PyTorch's [out, in]) as bf16 panels.
inline void par_pack_bf16(const float* w, Index n, Index K, std::uint16_t* out) {
#ifdef _OPENMP
#pragma omp single
#endif
  lowp::pack_bf16(w, n, K, K, out);
}

// Work-shared, at the first step s0 of each chunk: gxs [(s1 - s0) * N, G*H] = bf16(x[t(s, n), n])
// times bf16(w_ih)ᵀ (packed), in step order, kBf16XRows input rows at a time through xs; rows of
// finished sequences are zero inputs.
inline void project_steps_bf16(lowp::Tier tier, const Dims& d, Index G, const StepMap& sm,
                               Index s0, Index s1, const float* x, const lowp::Bf16Block& b,
                               float* gxs) {
  const Index N = d.N, C = d.C, rows = (s1 - s0) * N, kp = lowp::bf16_kpad(C), GH = G * d.H;
  for (Index r0 = 0; r0 < rows; r0 += b.xrows) {
    const Index nr = std::min(b.xrows, rows - r0);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (Index r = 0; r < nr; ++r) {
      const Index row = r0 + r, t = sm.time(s0 + row / N, row % N);
      if (t >= 0)
        lowp::to_bf16(tier, x + (t * N + row % N) * C, 1, C, C, b.xs + r * kp, kp);
      else
        std::fill(b.xs + r * kp, b.xs + (r + 1) * kp, std::uint16_t(0));
    }
    // (the omp for above and the product's end in barriers: xs is reused safely)
    lowp::par_gemm_bf16(tier, nr, GH, C, b.xs, kp, b.wih, nullptr, gxs + r0 * GH, GH, false);
  }
}

// Work-shared: out [m, n] = bf16(a [m, K], lda) times bf16 packed [n, K]ᵀ, through the operand
// buffer ab [m, bf16_kpad(K)].
inline void gemm_rows_bf16(lowp::Tier tier, Index m, Index n, Index K, const float* a, Index lda,
                           std::uint16_t* ab, const std::uint16_t* packed, float* out,
                           Index ldo) {
  par_rows_to_bf16(tier, a, m, K, lda, ab);  // (its omp for ends in a barrier)
  lowp::par_gemm_bf16(tier, m, n, K, ab, lowp::bf16_kpad(K), packed, nullptr, out, ldo, false);
}

// ---------------------------------------------------------------------------------------------
// int8 (Options::precision = int8).

// A forward kernel's precision setup, the same for every cell (G gates; `gru`: w_hh's n rows
// packed apart, the reset-before GRU's layout): checks the precision against the dtype and the
// mode, places the bf16 or int8 block at the start of the workspace (advancing `workspace` past
// it, so the float32 layout follows), and for int8 checks w_ih [G*H, C] and w_hh [G*H, R]
// finite unless they are packed already.
struct LowpForward {
  bool bf16 = false, int8 = false, any = false;  // any: a low-precision forward
  lowp::Tier tier = lowp::Tier::baseline;
  lowp::Bf16Block lb;  // precision bfloat16: the bf16 block in front of the float32 layout
  lowp::S8Block qb;    // precision int8: the int8 block in front of the float32 layout
};
template <typename Scalar>
LowpForward lowp_forward_setup(const char* fn, const Dims& d, const Options& opt, Index G, bool gru,
                               bool training, const Scalar* w_ih, const Scalar* w_hh,
                               Scalar*& workspace) {
  check_precision(fn, opt, std::is_same_v<Scalar, float>, training);
  LowpForward lp;
  lp.bf16 = opt.precision == Precision::bfloat16;
  lp.int8 = opt.precision == Precision::int8;
  lp.any = lp.bf16 || lp.int8;  // float32 tensors only (check_precision)
  if (!lp.any) return lp;
  lp.tier = lowp::active_tier();
  if (lp.bf16) {
    lp.lb = lowp::bf16_block(d, G, gru, aligned64(workspace));
    workspace += lp.lb.floats;
  } else {
    lp.qb = lowp::s8_block(d, G, gru, aligned64(workspace));
    workspace += lp.qb.floats;
    if constexpr (std::is_same_v<Scalar, float>) {
      if (!opt.weights_packed) {  // quantisation refuses non-finite weights, before any work
        lowp::check_finite_weights(fn, "w_ih", w_ih, G * d.H * d.C);
        lowp::check_finite_weights(fn, "w_hh", w_hh, G * d.H * rec_width(d));
      }
    }
  }
  return lp;
}

// Work-shared packing of w [n, K] (row-major) as s8 with per-row scales.
inline void par_pack_s8(const float* w, Index n, Index K, const lowp::S8Weights& out) {
#ifdef _OPENMP
#pragma omp single
#endif
  lowp::pack_s8(w, n, K, K, out.w, out.scale, out.colsum);
}

// Work-shared: q rows [rows, s8_kpad(K)] and scale [rows] = the dynamic per-row quantisation of
// src rows [rows, K] (leading dimension ld).
inline void par_rows_to_s8(lowp::Tier tier, const float* src, Index rows, Index K, Index ld,
                           std::int8_t* q, float* scale) {
  const Index kp = lowp::s8_kpad(K), blk = 8, nb = ceil_div(rows, blk);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index b = 0; b < nb; ++b)
    lowp::quantize_s8(tier, src + b * blk * ld, std::min(blk, rows - b * blk), K, ld,
                      q + b * blk * kp, kp, scale + b * blk);
}

// Work-shared, at the first step s0 of each chunk: gxs [(s1 - s0) * N, G*H] = the s8 product of
// the quantised x[t(s, n), n] rows and w_ih, in step order, xrows input rows at a time; rows of
// finished sequences are zero inputs (scale 0).
inline void project_steps_s8(lowp::Tier tier, const Dims& d, Index G, const StepMap& sm,
                             Index s0, Index s1, const float* x, const lowp::S8Block& b,
                             float* gxs) {
  const Index N = d.N, C = d.C, rows = (s1 - s0) * N, kp = lowp::s8_kpad(C), GH = G * d.H;
  for (Index r0 = 0; r0 < rows; r0 += b.xrows) {
    const Index nr = std::min(b.xrows, rows - r0);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (Index r = 0; r < nr; ++r) {
      const Index row = r0 + r, t = sm.time(s0 + row / N, row % N);
      if (t >= 0) {
        lowp::quantize_s8(tier, x + (t * N + row % N) * C, 1, C, C, b.xs + r * kp, kp,
                          b.xscale + r);
      } else {
        std::fill(b.xs + r * kp, b.xs + (r + 1) * kp, std::int8_t(0));
        b.xscale[r] = 0.0f;
      }
    }
    lowp::par_gemm_s8(tier, nr, GH, C, b.xs, kp, b.xscale, b.wih.w, b.wih.scale, b.wih.colsum,
                      nullptr, gxs + r0 * GH, GH, false);
  }
}

// Work-shared: out [m, n] = the s8 product of a [m, K] (lda; quantised per row into q, scale)
// and the packed weights wt.
inline void gemm_rows_s8(lowp::Tier tier, Index m, Index n, Index K, const float* a, Index lda,
                         std::int8_t* q, float* scale, const lowp::S8Weights& wt, float* out,
                         Index ldo) {
  par_rows_to_s8(tier, a, m, K, lda, q, scale);  // (its omp for ends in a barrier)
  lowp::par_gemm_s8(tier, m, n, K, q, lowp::s8_kpad(K), scale, wt.w, wt.scale, wt.colsum,
                    nullptr, out, ldo, false);
}

// This thread's rows [r0, r1) of gemm_rows_s8, by the calling thread alone (no work-sharing
// construct, no barrier): their quantisation and their product with all of wt's columns. Each
// element is computed as in gemm_rows_s8 (per-row scales, exact integer sums), so the results are
// the same bits however the rows are split.
inline void gemm_own_rows_s8(lowp::Tier tier, Index r0, Index r1, Index n, Index K, const float* a,
                             Index lda, std::int8_t* q, float* scale, const lowp::S8Weights& wt,
                             float* out, Index ldo) {
  if (r1 <= r0) return;
  const Index kp = lowp::s8_kpad(K);
  lowp::quantize_s8(tier, a + r0 * lda, r1 - r0, K, lda, q + r0 * kp, kp, scale + r0);
  lowp::par_gemm_s8(tier, r1 - r0, n, K, q + r0 * kp, kp, scale + r0, wt.w, wt.scale, wt.colsum,
                    nullptr, out + r0 * ldo, ldo, false, /*shared=*/false);
}

// The int8 step's row split (kernels' forwards, inference): at 2 threads or more, each thread
// quantises its own rows of h, multiplies them by all of w_hh and runs their gate math, an
// independent recurrence with no barrier a step (the input products of each chunk of steps stay
// work-shared). Every thread then reads all of w_hh's s8 panels at every step (each group of
// panels once, reused from L1 across the thread's row tiles), so up to 1 MB of them (Zen 4's
// L2, half the Xeon's; beyond, the column split reads each panel once); and each thread needs
// a register tile's rows or more; otherwise the column split of gemm_rows_s8. Zen 4, 2 threads,
// medians ms, split / column split: LSTM (100, 64, 256) 11.7-12.1 / 13.0, GRU 8.9-9.3 /
// 10.7-10.8; at H = 512 (1 MB and 768 KB) 41-46 / 45-50 and 31-35 / 33-34, within the noise.
constexpr Index kS8RowSplitWeightBytes = Index(1024) << 10;
inline bool s8_rows_split(Index N, Index gates_h, Index R, int threads) {
  return threads > 1 && N >= 8 * Index(threads) && gates_h * R <= kS8RowSplitWeightBytes;
}

// Inside the kernel's parallel region: this thread's rows [r0, r1) when `split` (and the team
// has more than one thread), else own = false and all N rows.
struct S8Rows {
  bool own = false;
  Index r0 = 0, r1 = 0;
  S8Rows(bool split, Index N) : r1(N) {
#ifdef _OPENMP
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    if (split && nt > 1) own = true, r0 = N * tid / nt, r1 = N * (tid + 1) / nt;
#else
    (void)split;
#endif
  }
  // A team barrier where the rows are split (with own rows the step loop has none): before a
  // chunk's input products overwrite the previous chunk's, and before the final state is read.
  void sync() const {
    if (!own) return;
#ifdef _OPENMP
#pragma omp barrier
#endif
  }
};

// for_unit_blocks over all rows, or by this thread alone over its own rows.
template <class Body>
EIGEN_ALWAYS_INLINE void unit_blocks(const S8Rows& rows, Index N, Index H, Body&& body) {
  if (rows.own)
    own_unit_blocks(rows.r0, rows.r1, H, body);
  else
    for_unit_blocks(N, H, body);
}

// gemm_rows_s8, or gemm_own_rows_s8 of this thread's rows.
inline void gemm_rows_s8(lowp::Tier tier, const S8Rows& rows, Index m, Index n, Index K,
                         const float* a, Index lda, std::int8_t* q, float* scale,
                         const lowp::S8Weights& wt, float* out, Index ldo) {
  if (rows.own)
    gemm_own_rows_s8(tier, rows.r0, rows.r1, n, K, a, lda, q, scale, wt, out, ldo);
  else
    gemm_rows_s8(tier, m, n, K, a, lda, q, scale, wt, out, ldo);
}

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
