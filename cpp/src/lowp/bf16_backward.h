// bf16 TRAINING in the cells' kernels (issue 17; Options::precision = bfloat16 with a cache, and
// the backward of that forward): the backward's large products as bf16 x bf16 -> fp32 products
// of the low-precision tiers (lowp.h). Parameters and their gradients stay fp32 (master weights).
//
// THE CONTRACT (fusedrnn.reference_lowp.*_train_bf16 emulates it):
//   Forward: bf16_steps.h's rounding points (x, w_ih, w_hh rounded once when packed; the state h
//     entering each recurrent product; the reset-before GRU's fp32 r*h), fp32 accumulation, gate
//     math, cell state and every output fp32; the cache keeps the fp32 activations as in fp32.
//   Backward: the straight-through gradient of that forward (each rounding taken as the
//     identity) with its large products in bf16 too. Rounded to bf16: the fp32 pre-activation
//     gate gradients dA of each step (from fp32 gate math and an fp32 dc), w_ih and w_hh (packed
//     once per call, transposed), and the forward's operands x, h_prev (and r*h) again:
//       dh_prev = (fp32 direct terms) + bf16(dA_h) bf16(w_hh)     per step (GRU reset-before:
//                 d(r*h) = bf16(dA_n) bf16(w_hn), fp32 pointwise, + bf16(dA_rz) bf16(w_hh[:2H]));
//       dx      = bf16(dA_x) bf16(w_ih);
//       dw_ih  += bf16(dA_x)ᵀ bf16(x),  dw_hh += bf16(dA_h)ᵀ bf16(h_prev)  (reset-before n block:
//                 bf16(dA_n)ᵀ bf16(r*h)): one fp32 chain per element across all steps and rows,
//                 starting from the gradient's old value, in the lowp contract's order (rows in
//                 time order for dw_ih, step order for dw_hh);
//     biases, peepholes and the LSTM projection (dm = dh w_hr, dw_hr): fp32 and unrounded.
//   Each product is a lowp::par_gemm_bf16 call: bitwise the contract's fp32 chain in the tiers
//   avx512_bf16 / avx512 / avx2 / baseline, within its summation bound on amx.
//
// Workspace (*_backward_workspace_size(d, Precision::bfloat16)): the part of the fp32 backward
// layout this backward uses (the step buffers dgh, dgx, dh, dc and the projection's; not the
// fp32 packed weights nor the ragged scratch), then Bf16Back (below). So a bf16 backward needs
// no more workspace than the fp32 one wherever the bf16 block is smaller than the fp32 packed
// weights and dx scratch it replaces (every config of bench/run.py with N > 1).
// Included by the kernels of every instruction-set copy.
#pragma once

#include <cstring>
#include <initializer_list>

#include "lowp/bf16_back_block.h"
#include "lowp/bf16_steps.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
namespace detail {

using lowp::Bf16Back;
using lowp::bf16_back_block;
using lowp::kBf16KChunk;

// The contract's fp32 -> bf16 (lowp::to_bf16_scalar), branch-free for the packing loops below.
inline std::uint16_t bf16_bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  std::uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  r = (u & 0x7f800000u) == 0 ? (u >> 16) & 0x8000u : r;          // subnormal: a signed zero
  r = (u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : r;   // NaN: quiet
  return std::uint16_t(r);
}

// Work-shared: packs the matrix whose element (k, j) is b[k * ldb + j] (k < K, j < n) as lowp's
// packed W [n, K] (W = bᵀ): C = A W ᵀ then multiplies A by b. Zeros past K and n.
inline void par_pack_bf16_kn(const float* b, Index K, Index n, Index ldb, std::uint16_t* out) {
  const Index kp = lowp::bf16_kpad(K), np = lowp::panels(n), half = kp / 2, P = lowp::kPanel;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index job = 0; job < np * half; ++job) {
    const Index pn = job / half, k2 = job % half, k = 2 * k2, j0 = pn * P;
    const Index nj = std::min<Index>(P, n - j0);
    std::uint16_t* o = out + (pn * half + k2) * 2 * P;
    const float* s0 = b + k * ldb + j0;
    const float* s1 = s0 + ldb;
    if (nj == P && k + 1 < K) {  // the common case: two full rows of 16
      for (Index j = 0; j < P; ++j) {
        o[2 * j] = bf16_bits(s0[j]);
        o[2 * j + 1] = bf16_bits(s1[j]);
      }
      continue;
    }
    for (Index j = 0; j < P; ++j) {
      o[2 * j] = k < K && j < nj ? bf16_bits(s0[j]) : std::uint16_t(0);
      o[2 * j + 1] = k + 1 < K && j < nj ? bf16_bits(s1[j]) : std::uint16_t(0);
    }
  }
}

// Work-shared: dst [m, ldd] with dst[i, k] = bf16(src[k * lds + i]) (k < K; zeros in [K, Kp)).
inline void par_transpose_bf16(const float* src, Index K, Index m, Index lds, std::uint16_t* dst,
                               Index ldd) {
  const Index kp = lowp::bf16_kpad(K), ib = 16, nb = ceil_div(m, ib);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index blk = 0; blk < nb; ++blk) {
    const Index i0 = blk * ib, ni = std::min(ib, m - i0);
    for (Index k = 0; k < kp; ++k) {
      std::uint16_t h[16];
      const float* row = src + k * lds + i0;
      if (k < K && ni == ib)
        for (Index i = 0; i < ib; ++i) h[i] = bf16_bits(row[i]);
      else
        for (Index i = 0; i < ib; ++i) h[i] = k < K && i < ni ? bf16_bits(row[i]) : 0;
      for (Index i = 0; i < ni; ++i) dst[(i0 + i) * ldd + k] = h[i];
    }
  }
}

// Work-shared: out [m, n] (ldo) += bf16(a [m, K], lda) times the packed W [n, K]ᵀ, through the
// operand buffer ab (rows of bf16_kpad(K)), at most `rows` rows of a at a time.
inline void gemm_rows_acc_bf16(lowp::Tier tier, Index m, Index n, Index K, const float* a,
                               Index lda, std::uint16_t* ab, Index rows,
                               const std::uint16_t* packed, float* out, Index ldo,
                               bool accumulate) {
  const Index kp = lowp::bf16_kpad(K);
  for (Index r0 = 0; r0 < m; r0 += rows) {
    const Index nr = std::min(rows, m - r0);
    par_rows_to_bf16(tier, a + r0 * lda, nr, K, lda, ab);  // (its omp for ends in a barrier)
    lowp::par_gemm_bf16(tier, nr, n, K, ab, kp, packed, nullptr, out + r0 * ldo, ldo,
                        accumulate);
  }
}

// One weight gradient of par_gemm_tn_add_bf16: c [m, n] (ldc) and its right factor b [L, n] (ldb).
struct TnTarget {
  const float* b;
  Index n, ldb;
  float* c;
  Index ldc;
};

// Work-shared: for each target, c [m, n] += Σ_r bf16(a[r, i]) bf16(b[r, j]) over r < L (a [L, m]
// with lda): the contract's fp32 chain from c's old value, rows in order. L in chunks of
// kBf16KChunk rows: the chunk of a transposed to w.at [m, KC] (the A operand, shared by the
// targets: at most two, dw_ih and dw_hh when they share dA), each target's chunk of b packed as W
// [n, KC] in w.bp (one after the other), and the products accumulated straight into c.
inline void par_gemm_tn_add_bf16(lowp::Tier tier, Index m, Index L, const float* a, Index lda,
                                 std::initializer_list<TnTarget> targets, const Bf16Back& w) {
  const Index KC = kBf16KChunk;
  std::uint16_t* bp[2];
  Index off = 0, q = 0;
  for (const TnTarget& t : targets) {
    bp[q++] = w.bp + off;
    off += lowp::packed_bf16_size(t.n, KC);
  }
  for (Index r0 = 0; r0 < L; r0 += KC) {
    const Index kc = std::min(KC, L - r0);
    par_transpose_bf16(a + r0 * lda, kc, m, lda, w.at, KC);
    q = 0;
    for (const TnTarget& t : targets) par_pack_bf16_kn(t.b + r0 * t.ldb, kc, t.n, t.ldb, bp[q++]);
    q = 0;
    for (const TnTarget& t : targets)
      lowp::par_gemm_bf16(tier, m, t.n, kc, w.at, KC, bp[q++], nullptr, t.c, t.ldc, true);
  }
}

// The bf16 backward_epilogue (skeleton.h; same arguments and meaning): dx, dw_ih and dw_hh as
// bf16 products (the contract above), the bias sums in fp32 from the unrounded dA. w.wih must
// hold w_ihᵀ packed (par_pack_bf16_kn(w_ih, G*H, C, C, w.wih)).
inline void backward_epilogue_bf16(lowp::Tier tier, const Dims& d, Index S, Index G, Index R,
                                   const float* x, const float* dgx, const float* dgh,
                                   const float* hs, const Bf16Back& w, float* dx, float* dw_ih,
                                   float* dw_hh, float* db_ih, float* db_hh) {
  const Index TN = d.T * d.N, GH = G * d.H;
  gemm_rows_acc_bf16(tier, TN, d.C, GH, dgx, GH, w.ab, std::max(d.N, kBf16KChunk), w.wih, dx,
                     d.C, false);
  const TnTarget tih{x, d.C, d.C, dw_ih, d.C}, thh{hs, R, R, dw_hh, R};
  if (dw_ih && dw_hh && dgx == dgh && S == d.T) {  // one packing of dA serves both sums
    par_gemm_tn_add_bf16(tier, GH, TN, dgx, GH, {tih, thh}, w);
  } else {
    if (dw_ih) par_gemm_tn_add_bf16(tier, GH, TN, dgx, GH, {tih}, w);
    if (dw_hh) par_gemm_tn_add_bf16(tier, GH, S * d.N, dgh, GH, {thh}, w);
  }
  if (db_ih && db_hh && dgx == dgh && S == d.T) {
    par_colsum_add(TN, GH, dgx, GH, db_ih, db_hh);
  } else {
    if (db_ih) par_colsum_add(TN, GH, dgx, GH, db_ih);
    if (db_hh) par_colsum_add(S * d.N, GH, dgh, GH, db_hh);
  }
}

// The backward's check of Options::precision: bfloat16 needs float32 tensors.
// int8 has no backward (inference only).
inline void check_backward_precision(const char* fn, const Options& opt, bool is_float) {
  if (opt.precision == Precision::int8)
    fail(std::string(fn) + ": precision int8 is inference only (no backward)");
  check_precision(fn, opt, is_float, false);
}

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
