// The model layer's instruction-set-specific operations (isa/table.h: Kernels), compiled once per
// copy like the kernels: packing weights into panels, products with packed weights (the head of
// Model::forward and every product of a Stream), and one recurrent step of a layer.
//
// A Stream step must equal the batch kernels bitwise, so everything here repeats their
// arithmetic exactly: the same micro-kernel over the same panels and K chunks for every product
// (each output element is the same chain of multiply-adds), and the element-wise gate passes of
// kernels/*_pointwise.h, the very functions lstm.cc / gru.cc / rnn.cc forward call (the Stream tests compare
// bitwise). What differs is only the organisation: one step, all rows active, no
// OpenMP construct (a Stream runs on its caller's thread, possibly inside the caller's parallel
// region), state updated in place.
#include "isa/copy.inc"
#include "kernels/gru_pointwise.h"
#include "kernels/lstm_pointwise.h"
#include "kernels/packed_gemm.h"
#include "kernels/rnn_pointwise.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

using detail::Index;

namespace {

std::size_t packed_size(std::int64_t K, std::int64_t ncols) {
  return std::size_t(detail::packed_bound(K, ncols));
}

// par_pack without the work-sharing construct.
template <typename Scalar>
void pack(const Scalar* B, std::int64_t K, std::int64_t ncols, std::int64_t ld, bool transposed,
          Scalar* out) {
  const Index np = detail::ceil_div(ncols, detail::Panel<Scalar>::NC);
  for (Index p = 0; p < np; ++p) detail::pack_panel(B, K, ncols, ld, transposed, p, out);
}

// par_gemm_packed (accumulate = false) on the calling thread: for each panel, K in the same
// chunks, rows in micro-tiles; every element's sum is the one par_gemm_packed forms.
template <typename Scalar>
void gemm_serial(Index m, Index ncols, Index K, const Scalar* A, Index lda, const Scalar* packed,
                 Scalar* C, Index ldc) {
  using T = detail::Panel<Scalar>;
  constexpr Index NC = T::NC, MR = T::MR, KC = T::KC;
  const Index np = detail::ceil_div(ncols, NC);
  Index p = 0;
  if (m <= 2) {  // a Stream with batch 1 or 2: full panels in groups, as par_gemm_small
    const int gmax = detail::max_group(int(m));
    const Index full = ncols / NC;
    for (; p < full; p += gmax) {
      const int g = int(std::min<Index>(gmax, full - p));
      for (Index k0 = 0; k0 < K; k0 += KC) {
        const Index kc = std::min(KC, K - k0);
        const Scalar* pk = packed + p * K * NC + k0 * NC;
        Scalar* c = C + p * NC;
        if (m == 2)
          detail::group_tile<Scalar, 2>(g, kc, A + k0, lda, pk, K * NC, c, ldc, k0 > 0);
        else
          detail::group_tile<Scalar, 1>(g, kc, A + k0, lda, pk, K * NC, c, ldc, k0 > 0);
      }
    }
    p = full;  // the last group may have been short
  }
  for (; p < np; ++p) {
    const Index c0 = p * NC, nc = std::min(NC, ncols - c0);
    const Scalar* panel = packed + p * K * NC;
    for (Index k0 = 0; k0 < K; k0 += KC) {
      const Index kc = std::min(KC, K - k0);
      const bool acc = k0 > 0;
      for (Index r0 = 0; r0 < m; r0 += MR) {
        const Scalar* a = A + r0 * lda + k0;
        const Scalar* pk = panel + k0 * NC;
        Scalar* c = C + r0 * ldc + c0;
        detail::row_tile<Scalar>(std::min(MR, m - r0), kc, a, lda, pk, c, ldc, nc, acc);
      }
    }
  }
}

template <typename Scalar>
void gemm(std::int64_t m, std::int64_t ncols, std::int64_t K, const Scalar* A, std::int64_t lda,
          const Scalar* packed, Scalar* C, std::int64_t ldc, int num_threads) {
#ifdef _OPENMP
  const double flops = 2.0 * double(m) * double(ncols) * double(K);
  if (num_threads != 1 && flops >= detail::kMinStepFlopsToSplit) {
    const int n = num_threads > 0 ? num_threads : omp_get_max_threads();
#pragma omp parallel num_threads(n)
    detail::par_gemm_packed(m, ncols, K, A, lda, packed, C, ldc, false);
    return;
  }
#endif
  (void)num_threads;
  gemm_serial(m, ncols, K, A, lda, packed, C, ldc);
}

// LSTM: lstm_forward's step for active rows (lstm.cc), c and h updated in place.
template <typename Scalar>
void lstm_step(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar* c,
               Scalar* scratch) {
  using namespace detail;
  const Index N = L.N, H = L.H, GH = 4 * H, P = L.P, R = P > 0 ? P : H;
  const bool proj = P > 0;
  const Index nub = ceil_div(H, kUnitBlock);
  Scalar* gx = scratch;          // [N, 4H]
  Scalar* gh = gx + N * GH;      // [N, 4H]
  Scalar* m = gh + 2 * N * GH;   // [N, H] (projection), after the unused [N, 4H] of gates
  const Scalar *b_ih = L.b_ih, *b_hh = L.b_hh, *w_peep = L.w_peep;
  gemm_serial(N, GH, L.C, x, L.C, L.wih_p, gx, GH);
  gemm_serial(N, GH, R, h, R, L.whh_p, gh, GH);
  for (Index job = 0; job < N * nub; ++job) {
    const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
    const Index bk = std::min(kUnitBlock, H - u0);
    const Index off = n * H + u0;
    // c_{t-1} in, c_t out; out = m = o*tanh(c) with projection, or h itself.
    lstm_pointwise_forward(bk, H, gx + n * GH + u0, gh + n * GH + u0, b_ih ? b_ih + u0 : nullptr,
                       b_hh ? b_hh + u0 : nullptr, w_peep ? w_peep + u0 : nullptr, c + off,
                       c + off, proj ? m + off : h + off, static_cast<Scalar*>(nullptr),
                       static_cast<Scalar*>(nullptr));
  }
  if (proj) gemm_serial(N, P, H, m, H, L.whr_p, h, P);  // h = m w_hrᵀ
}

// GRU: gru_forward's step for active rows (gru.cc), h updated in place.
template <typename Scalar>
void gru_step(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar*,
              Scalar* scratch) {
  using namespace detail;
  const Index N = L.N, H = L.H, GH = 3 * H;
  const Index nub = ceil_div(H, kUnitBlock);
  const bool after = L.variant == GruVariant::reset_after;
  Scalar* gx = scratch;         // [N, 3H]
  Scalar* gh = gx + N * GH;     // [N, 3H]
  Scalar* gates = gh + N * GH;  // [N, 4H]: r, z, n, q
  const Scalar *b_ih = L.b_ih, *b_hh = L.b_hh;
  gemm_serial(N, GH, L.C, x, L.C, L.wih_p, gx, GH);
  gemm_serial(N, after ? GH : 2 * H, H, h, H, L.whh_p, gh, GH);
  for (Index job = 0; job < N * nub; ++job) {
    const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
    const Index bk = std::min(kUnitBlock, H - u0);
    const Index off = n * H + u0;
    Scalar* a = gates + n * 4 * H;
    const Scalar* gxr = gx + n * GH + u0;
    const Scalar* ghr = gh + n * GH + u0;
    const Scalar* bi = b_ih ? b_ih + u0 : nullptr;
    const Scalar* bh = b_hh ? b_hh + u0 : nullptr;
    if (after)
      gru_after_pointwise_forward(bk, H, gxr, ghr, bi, bh, h + off, h + off,
                              static_cast<Scalar*>(nullptr), static_cast<Scalar*>(nullptr));
    else
      gru_before_pointwise_forward_rz(bk, H, gxr, ghr, bi, bh, h + off, a + u0);
  }
  if (after) return;
  // reset_before: gh_n = (r*h) w_hnᵀ, then the candidate and the new state.
  gemm_serial(N, H, H, gates + 3 * H, 4 * H, L.whn_p, gh + 2 * H, GH);
  for (Index job = 0; job < N * nub; ++job) {
    const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
    const Index bk = std::min(kUnitBlock, H - u0);
    const Index off = n * H + u0;
    gru_before_pointwise_forward_n(bk, H, gx + n * GH + u0, gh + n * GH + u0, b_ih ? b_ih + u0 : nullptr,
                       b_hh ? b_hh + u0 : nullptr, h + off, h + off,
                       static_cast<Scalar*>(nullptr), gates + n * 4 * H + u0);
  }
}

// Elman RNN: rnn_forward's step (rnn.cc), h updated in place.
template <typename Scalar>
void rnn_step(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar*,
              Scalar* scratch) {
  using namespace detail;
  const Index N = L.N, H = L.H;
  const Index nub = ceil_div(H, kUnitBlock);
  Scalar* gx = scratch;     // [N, H]
  Scalar* gh = gx + N * H;  // [N, H]
  gemm_serial(N, H, L.C, x, L.C, L.wih_p, gx, H);
  gemm_serial(N, H, H, h, H, L.whh_p, gh, H);
  for (Index job = 0; job < N * nub; ++job) {
    const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
    const Index bk = std::min(kUnitBlock, H - u0);
    const Index off = n * H + u0;
    rnn_pointwise_forward(bk, L.act == Nonlinearity::tanh, gx + off, gh + off,
                      L.b_ih ? L.b_ih + u0 : nullptr, L.b_hh ? L.b_hh + u0 : nullptr, h + off,
                      static_cast<Scalar*>(nullptr));
  }
}

template <typename Scalar>
void step(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar* c,
          Scalar* scratch) {
  switch (L.cell) {
    case isa::StepCell::lstm: lstm_step(L, x, h, c, scratch); break;
    case isa::StepCell::gru: gru_step(L, x, h, c, scratch); break;
    default: rnn_step(L, x, h, c, scratch); break;
  }
}

}  // namespace

void fill_step(isa::Table& t) {
  t.f32.packed_size = t.f64.packed_size = &packed_size;
  t.f32.pack = &pack<float>;
  t.f64.pack = &pack<double>;
  t.f32.gemm = &gemm<float>;
  t.f64.gemm = &gemm<double>;
  t.f32.step = &step<float>;
  t.f64.step = &step<double>;
}

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
