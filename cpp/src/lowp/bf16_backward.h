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
//                 bf16(dA_n)ᵀ bf16(r*h)): one fp32 sum per element across all steps and rows,
//                 starting from the gradient's old value (rows in step order; in the amx tier
//                 within the lowp summation bound);
//     biases (column sums of the unrounded dA, one fp32 sum per step added to the gradient),
//     peepholes (the same, per step) and the LSTM projection (dm = dh w_hr, dw_hr): fp32 and
//     unrounded.
//   Each product is a lowp::par_gemm_bf16 call.
//
// How (issue 17's speed): each step's fp32 dA is converted to bf16 ONCE (par_convert_step), into
// the step's rows of ab (the A operand of the step's dh product, and of one dx product per chunk
// of about kBf16DxRows rows: the packed w_ih is read once per chunk) and into a
// transposed copy of every step's dA (at [G*H, T*N], column s*N + n), which after the loop is the
// A operand of the two weight-gradient products over all T*N rows (K = T*N in chunks: the fp32
// accumulators stay in the tiles for a chunk of kBf16KChunk rows); x and the states h are packed
// for them a chunk at a time (par_pack_rows_kn). No fp32 dA of earlier steps is kept.
//
// Workspace (*_backward_workspace_size(d, Precision::bfloat16)): the part of the fp32 backward
// layout this backward uses (one step's dgh [N, G*H] and, for the reset-after GRU, dgx; dh, dc
// and the projection's buffers; not the fp32 packed weights nor the ragged scratch), then
// Bf16Back (bf16_back_block.h): the packed weights, the step operands, at (G*H * T*N bf16,
// against the fp32 backward's G*H * T*N floats of dgh, and as many of dgx with reverse or the
// reset-after GRU) and one chunk of x and h packed.
// Included by the kernels of every instruction-set copy.
#pragma once

#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "kernels/skeleton.h"
#include "lowp/bf16_back_block.h"
#include "lowp/bf16_steps.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
namespace detail {

using lowp::Bf16Back;
using lowp::bf16_back_block;

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

#if defined(__AVX512F__) && defined(__AVX512BW__)
// 16 floats -> their bf16 bits (bf16_bits) in the low halves of 16 dwords.
inline __m512i bf16_bits16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v), hi = _mm512_srli_epi32(u, 16);
  const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __mmask16 sub = _mm512_testn_epi32_mask(u, _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_mov_epi32(r, sub, _mm512_and_si512(hi, _mm512_set1_epi32(0x8000)));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(
      _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
}

inline __mmask16 mask16(Index valid) {
  return valid >= 16 ? __mmask16(0xffff) : valid <= 0 ? __mmask16(0) : __mmask16((1u << valid) - 1);
}

// r[j][i] <- r[i][j] for a 16 x 16 block of floats.
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int k = 0; k < 8; ++k) {
    t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  }
  for (int k = 0; k < 4; ++k) {  // u[4k + c], lane L: column 4L + c of rows 4k..4k+3
    u[4 * k] = _mm512_shuffle_ps(t[4 * k], t[4 * k + 2], 0x44);
    u[4 * k + 1] = _mm512_shuffle_ps(t[4 * k], t[4 * k + 2], 0xEE);
    u[4 * k + 2] = _mm512_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0x44);
    u[4 * k + 3] = _mm512_shuffle_ps(t[4 * k + 1], t[4 * k + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44);
    const __m512 v1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44);
    const __m512 w0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
    const __m512 w1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
    r[c] = _mm512_shuffle_f32x4(v0, v1, 0x88);
    r[4 + c] = _mm512_shuffle_f32x4(v0, v1, 0xDD);
    r[8 + c] = _mm512_shuffle_f32x4(w0, w1, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(w0, w1, 0xDD);
  }
}
#endif

// Work-shared, once per step, the one conversion of the step's fp32 gate gradients src [rows, K]
// (leading dimension ld): ab [rows, ldb] = bf16(src) (ldb >= bf16_kpad(K); the caller zeroed
// [K, ldb) once); for the columns g >= t0, at[(g - t0) * ldt + col0 + n] = bf16(src[n, g]) (the
// transposed copy for the weight-gradient products; at null: none); and the column sums
// Σ_n src[n, g] (fp32, n in order) added to s1[g] and s2[g] (null: skipped). Jobs of 16 columns,
// so every result is independent of the thread count.
inline void par_convert_step(const float* src, Index rows, Index K, Index ld, std::uint16_t* ab,
                             Index ldb, std::uint16_t* at, Index t0, Index ldt, Index col0,
                             float* s1, float* s2) {
  const Index jobs = ceil_div(K, Index(16));
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index job = 0; job < jobs; ++job) {
    const Index g0 = job * 16, nc = std::min<Index>(16, K - g0);
    const bool tr = at && g0 + nc > t0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
    const __mmask16 mk = mask16(nc);
    __m512 acc = _mm512_setzero_ps();
    for (Index n0 = 0; n0 < rows; n0 += 16) {
      const Index nr = std::min<Index>(16, rows - n0);
      __m512 r[16];
      for (Index i = 0; i < 16; ++i) {
        r[i] = i < nr ? _mm512_maskz_loadu_ps(mk, src + (n0 + i) * ld + g0) : _mm512_setzero_ps();
        if (i >= nr) continue;
        acc = _mm512_add_ps(acc, r[i]);
        _mm256_mask_storeu_epi16(ab + (n0 + i) * ldb + g0, mk,
                                 _mm512_cvtepi32_epi16(bf16_bits16(r[i])));
      }
      if (!tr) continue;
      transpose16(r);
      const __mmask16 mr = mask16(nr);
      for (Index j = 0; j < nc; ++j)
        if (g0 + j >= t0)
          _mm256_mask_storeu_epi16(at + (g0 + j - t0) * ldt + col0 + n0, mr,
                                   _mm512_cvtepi32_epi16(bf16_bits16(r[j])));
    }
    alignas(64) float sum[16];
    _mm512_store_ps(sum, acc);
#else
    float sum[16] = {};
    for (Index n = 0; n < rows; ++n) {
      const float* row = src + n * ld + g0;
      std::uint16_t* o = ab + n * ldb + g0;
      for (Index j = 0; j < nc; ++j) {
        sum[j] += row[j];
        o[j] = bf16_bits(row[j]);
      }
      if (tr)
        for (Index j = 0; j < nc; ++j)
          if (g0 + j >= t0) at[(g0 + j - t0) * ldt + col0 + n] = o[j];
    }
#endif
    for (Index j = 0; j < nc; ++j) {
      if (s1) s1[g0 + j] += sum[j];
      if (s2) s2[g0 + j] += sum[j];
    }
  }
}

// Work-shared: packs the matrix B [L, n] whose row k is row(k) (n floats; a null row: zeros) as
// lowp's packed W [n, L] (W = Bᵀ; C = A W ᵀ then multiplies A by B): element (k, j) of panel
// p = j / 16 at ((p * kp/2 + k/2) * 16 + j % 16) * 2 + k % 2, kp = bf16_kpad(L); zeros for k in
// [L, kp) and past n.
template <class Row>
inline void par_pack_rows_kn(Index L, Index n, Row&& row, std::uint16_t* out) {
  const Index kp = lowp::bf16_kpad(L), half = kp / 2, np = lowp::panels(n), P = lowp::kPanel;
  const Index blk = 8, jobs = ceil_div(half, blk);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index job = 0; job < jobs; ++job) {
    for (Index k2 = job * blk; k2 < std::min(half, (job + 1) * blk); ++k2) {
      const float* r0 = 2 * k2 < L ? row(2 * k2) : nullptr;
      const float* r1 = 2 * k2 + 1 < L ? row(2 * k2 + 1) : nullptr;
      for (Index pn = 0; pn < np; ++pn) {
        std::uint16_t* o = out + (pn * half + k2) * 2 * P;
        const Index j0 = pn * P, nj = std::min<Index>(P, n - j0);
#if defined(__AVX512F__) && defined(__AVX512BW__)
        const __mmask16 mk = mask16(nj);
        const __m512i lo = r0 ? bf16_bits16(_mm512_maskz_loadu_ps(mk, r0 + j0))
                              : _mm512_setzero_si512();
        const __m512i hi = r1 ? bf16_bits16(_mm512_maskz_loadu_ps(mk, r1 + j0))
                              : _mm512_setzero_si512();
        _mm512_storeu_si512(o, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
#else
        for (Index j = 0; j < P; ++j) {
          o[2 * j] = r0 && j < nj ? bf16_bits(r0[j0 + j]) : std::uint16_t(0);
          o[2 * j + 1] = r1 && j < nj ? bf16_bits(r1[j0 + j]) : std::uint16_t(0);
        }
#endif
      }
    }
  }
}

// Work-shared, before the time loop of a bf16 backward: zeros in the pad columns of the step
// operands (ab, ab2: [K, bf16_kpad(K)) of their dx_steps * N rows) and of the transposed gradients (at, ex:
// columns [S*N, ldt) of their `at_rows` and `ex_rows` rows), and dx where no step writes it
// (lengths: all of it, written only at valid positions; dx null: not computed).
inline void par_bf16_back_prologue(const Dims& d, Index S, Index K, const Bf16Back& w,
                                   Index at_rows, Index ex_rows, bool lengths, float* dx) {
  const Index kp = lowp::bf16_kpad(K), c0 = S * d.N, nb = w.dx_steps * d.N;  // nb: ab's rows
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index r = 0; r < at_rows + ex_rows + 2 * nb; ++r) {
    if (r < at_rows)
      std::fill(w.at + r * w.ldt + c0, w.at + (r + 1) * w.ldt, std::uint16_t(0));
    else if (r < at_rows + ex_rows)
      std::fill(w.ex + (r - at_rows) * w.ldt + c0, w.ex + (r - at_rows + 1) * w.ldt,
                std::uint16_t(0));
    else if (r < at_rows + ex_rows + nb)
      std::fill(w.ab + (r - at_rows - ex_rows) * kp + K, w.ab + (r - at_rows - ex_rows + 1) * kp,
                std::uint16_t(0));
    else if (w.ab2)
      std::fill(w.ab2 + (r - at_rows - ex_rows - nb) * kp + K,
                w.ab2 + (r - at_rows - ex_rows - nb + 1) * kp, std::uint16_t(0));
  }
  if (lengths && dx) par_fill(dx, d.T * d.N * d.C, 0.0f);
}

// Where step s's bf16 gate gradients go in ab (and ab2): the row offset of its N rows. The
// steps of one chunk (s / dx_steps) sit in time order (reverse: the last step first), so the
// chunk's dx rows are one block; lengths with reverse: one step at a time (rows scattered).
inline Index ab_row(const Bf16Back& w, const Dims& d, const StepMap& sm, Index s, Index S) {
  if (sm.lengths && sm.reverse) return 0;
  const Index s0 = s / w.dx_steps * w.dx_steps, s1 = std::min(S - 1, s0 + w.dx_steps - 1);
  return (sm.reverse ? s1 - s : s - s0) * d.N;
}

// Work-shared, at every step s after its gradients are in ab (ab_row): at the chunk's last step
// (s a multiple of dx_steps), the chunk's dx rows = ab times w_ih (packed in w.wih), in place
// (no lengths, or lengths without reverse: inactive rows have zero gradients and give zeros);
// lengths with reverse: every step, through w.dxs, scattered to the valid rows.
inline void dx_step_bf16(lowp::Tier tier, const Dims& d, const StepMap& sm, Index s, Index S,
                         Index GH, const std::uint16_t* ab, const Bf16Back& w, float* dx) {
  const Index N = d.N, C = d.C, kp = lowp::bf16_kpad(GH);
  if (!dx) return;  // not wanted
  if (!sm.lengths || !sm.reverse) {
    if (s % w.dx_steps != 0) return;
    const Index s1 = std::min(S - 1, s + w.dx_steps - 1), t0 = sm.reverse ? d.T - 1 - s1 : s;
    lowp::par_gemm_bf16(tier, (s1 - s + 1) * N, C, GH, ab, kp, w.wih, nullptr, dx + t0 * N * C,
                        C, false);
    return;
  }
  lowp::par_gemm_bf16(tier, N, C, GH, ab, kp, w.wih, nullptr, w.dxs, C, false);
  for_rows(N, [&](Index n) {
    const Index t = sm.time(s, n);
    if (t >= 0) std::copy(w.dxs + n * C, w.dxs + (n + 1) * C, dx + (t * N + n) * C);
  });
}

// Work-shared: out [m, n] (ldo) += a[:, k0 : k0+kc] (bf16, leading dimension lda; at or ex)
// times the rows k0..k0+kc-1 of B, row(k) (fp32, n floats; null: zeros), packed into buf first.
template <class Row>
inline void wgrad_chunk(lowp::Tier tier, Index m, Index n, Index k0, Index kc,
                        const std::uint16_t* a, Index lda, Row&& row, std::uint16_t* buf,
                        float* out, Index ldo) {
  par_pack_rows_kn(kc, n, [&](Index k) { return row(k0 + k); }, buf);  // (ends in a barrier)
  lowp::par_gemm_bf16(tier, m, n, kc, a + k0, lda, buf, nullptr, out, ldo, true);
}

// Work-shared, after the time loop: dw_ih += at[:GHx] x and dw_hh += at[:GHh] hs over the S*N
// rows in step order (x[t(s, n), n], zeros for inactive rows; hs [S*N, R] the states entering
// the steps), in chunks of w.kc rows (KC a multiple of 32, so the chunk's columns of at are a
// whole operand; the last one ends at the zeros past S*N). `more(k0, kc)` adds a cell's own
// products of the chunk after them (xp then holds the chunk of x). Null gradients: skipped.
template <class More>
inline void weight_grads_bf16(lowp::Tier tier, const Dims& d, const StepMap& sm, Index S,
                              Index GHx, Index GHh, Index R, const float* x, const float* hs,
                              const Bf16Back& w, float* dw_ih, float* dw_hh, More&& more) {
  const Index N = d.N, C = d.C, L = S * N;
  for (Index k0 = 0; k0 < L; k0 += w.kc) {
    const Index kc = std::min(w.kc, L - k0);
    if (dw_ih)
      wgrad_chunk(tier, GHx, C, k0, kc, w.at, w.ldt, [&](Index k) -> const float* {
        const Index t = sm.time(k / N, k % N);
        return t >= 0 ? x + (t * N + k % N) * C : nullptr;
      }, w.xp, dw_ih, C);
    if (dw_hh)
      wgrad_chunk(tier, GHh, R, k0, kc, w.at, w.ldt,
                  [&](Index k) -> const float* { return hs + k * R; }, w.hp, dw_hh, R);
    more(k0, kc);
  }
}
inline void weight_grads_bf16(lowp::Tier tier, const Dims& d, const StepMap& sm, Index S,
                              Index GH, Index R, const float* x, const float* hs,
                              const Bf16Back& w, float* dw_ih, float* dw_hh) {
  weight_grads_bf16(tier, d, sm, S, GH, GH, R, x, hs, w, dw_ih, dw_hh, [](Index, Index) {});
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
