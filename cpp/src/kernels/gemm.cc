// reference_gemm: a plain dense product by Eigen's GEMM, compiled in every instruction-set copy
// with the kernels' flags. It is not part of any cell: bench/run.py times it as the machine's
// GEMM peak "built the same way as the kernels".
#include "isa/copy.inc"
#include "kernels/activations.h"
#include "kernels/packed_gemm.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

namespace {

template <typename Scalar>
void reference_gemm(std::int64_t m, std::int64_t n, std::int64_t k, const Scalar* a,
                    const Scalar* b, Scalar* c, int num_threads) {
  using namespace detail;
  const char* fn = "reference_gemm";
  if (!(m >= 1 && n >= 1 && k >= 1))
    fail(std::string(fn) + ": sizes must be positive, got m=" + std::to_string(m) +
         " n=" + std::to_string(n) + " k=" + std::to_string(k));
  if (num_threads < 0)
    fail(std::string(fn) + ": num_threads must be >= 0 (0 = OpenMP default), got " +
         std::to_string(num_threads));
  check_ptr(fn, a, "a");
  check_ptr(fn, b, "b");
  check_ptr(fn, c, "c");
  int nth = 1;
#ifdef _OPENMP
  nth = num_threads > 0 ? num_threads : omp_get_max_threads();
#endif
  // One column block per thread (whole packets where possible), each an Eigen GEMM of its own
  // (the build defines EIGEN_DONT_PARALLELIZE), in one parallel region like the kernels.
  constexpr Index W = kPacketSize<Scalar>;
  const Index blocks = std::min<Index>(nth, n);
  const Index width = ceil_div(ceil_div(n, blocks), W) * W;  // n >= blocks >= 1
  const Index used = ceil_div(n, width);
  parallel_region(nth, [&] {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (Index blk = 0; blk < used; ++blk) {
      const Index j0 = blk * width, nj = std::min(width, n - j0);
      mat(c + j0, m, nj, n).noalias() = cmat(a, m, k, k) * cmat(b + j0, k, nj, n);
    }
  });
}

// gemm_tn_add_terms (fusedrnn/common.h): the single-step cells' deferred weight gradients.
// Each term alone is what par_gemm_tn_add adds for a short k (packed_gemm.h: per element a
// multiply-add chain over the term's k rows in order, from zero, then added to C). Here a
// register tile of C (TR rows x TP packets) is loaded once, and for each term in order its chain
// runs in a second register tile from zero and is added to the first: the same operations on
// the same values per element, so the same bits, with C read and written once for all the
// terms (the per-step products at batch 8 load and store a tile of C per 2 x 8 multiply-adds,
// and next to the packed weights the gradients fall out of L2). Tiles run panel by panel (TP
// packets of columns), the row tiles inside, so the panel's columns of every term's B stay in
// L1. A partial tile runs on zero-padded copies (its padding lanes computed and dropped). The
// split over threads changes no result.
using detail::Index;

template <typename Scalar>
struct TermsTile {
  using P = detail::Packet<Scalar>;
  static constexpr Index W = detail::kPacketSize<Scalar>;
// TR x TP: a C tile and a term's tile in registers, the B packets of a k row, a broadcast.
// Zen 4, one thread, C 512 x 128, 8 terms of k = 8 (a probe against this function): 4 x 2
// 100 GFLOP/s (87% of the FMA peak); 6 x 2, 5 x 2, 8 x 1 97-99; 3 x 4 and 2 x 4 51-54 (GCC kept
// the C tile on the stack and loaded B once per row); 3 x 3 35 (n = 128 is no multiple of 48:
// partial tiles). par_gemm_tn_add, a term at a time: 66 beside the packed weights. The avx2
// copy (16 registers), the same probe: 3 x 2 50 GFLOP/s at k = 8, 37 at k = 1; 2 x 2 40 and 17.
// TR1: the rows of terms_tile_k1's tile (passes whose terms all have k = 1; see there).
#if defined(__AVX512F__) || defined(__aarch64__)
  static constexpr int TR = 4, TP = 2, TR1 = TR;  // 8 + 8 accumulators of 32 registers
#else
  static constexpr int TR = 3, TP = 2, TR1 = 4;  // 6 + 6 of 16; TR1: 8 accumulators of 16
#endif
  static constexpr Index NC = TP * W;
};

template <typename Scalar>
inline void terms_tile(const TnTerm<Scalar>* terms, Index count, Index i0, Index j0,
                       const Scalar* const* pa, const Index* la, const Scalar* const* pb,
                       const Index* lb, Scalar* c, Index ldc) {
  namespace ei = Eigen::internal;
  using TT = TermsTile<Scalar>;
  using P = typename TT::P;
  constexpr int TR = TT::TR, TP = TT::TP;
  constexpr Index W = TT::W;
  P cc[TR][TP];
  for (int r = 0; r < TR; ++r)
    for (int j = 0; j < TP; ++j) cc[r][j] = ei::ploadu<P>(c + r * ldc + j * W);
  for (Index s = 0; s < count; ++s) {
    const Index k = terms[s].k;
    if (k == 0) continue;
    if (k == 1 && !pa) {
      // (batch 1: one multiply-add from zero per element, written out; the same operations.
      // The probe below, k = 1, 32 terms: 47 -> 63 GFLOP/s with C 1024 x 256, 57 -> 69 at
      // 256 x 64: the loop over k and its set-up cost as much as the term's arithmetic)
      const Scalar* a = terms[s].a + i0;
      const Scalar* b = terms[s].b + j0;
      P bv[TP];
      for (int j = 0; j < TP; ++j) bv[j] = ei::ploadu<P>(b + j * W);
      for (int r = 0; r < TR; ++r) {
        const P av = ei::pset1<P>(a[r]);
        for (int j = 0; j < TP; ++j)
          cc[r][j] = ei::padd(cc[r][j], ei::pmadd(av, bv[j], ei::pset1<P>(Scalar(0))));
      }
      continue;
    }
    const Scalar* a = pa ? pa[s] : terms[s].a + i0;
    const Scalar* b = pb ? pb[s] : terms[s].b + j0;
    const Index lda = pa ? la[s] : terms[s].lda, ldb = pb ? lb[s] : terms[s].ldb;
    P acc[TR][TP];
    for (int r = 0; r < TR; ++r)
      for (int j = 0; j < TP; ++j) acc[r][j] = ei::pset1<P>(Scalar(0));
    for (Index kk = 0; kk < k; ++kk) {
      P bv[TP];
      for (int j = 0; j < TP; ++j) bv[j] = ei::ploadu<P>(b + kk * ldb + j * W);
      for (int r = 0; r < TR; ++r) {
        const P av = ei::pset1<P>(a[kk * lda + r]);
        for (int j = 0; j < TP; ++j) acc[r][j] = ei::pmadd(av, bv[j], acc[r][j]);
      }
    }
    for (int r = 0; r < TR; ++r)
      for (int j = 0; j < TP; ++j) cc[r][j] = ei::padd(cc[r][j], acc[r][j]);
  }
  for (int r = 0; r < TR; ++r)
    for (int j = 0; j < TP; ++j) ei::pstoreu(c + r * ldc + j * W, cc[r][j]);
}

// terms_tile for passes where every term has k = 1 (the cells' deferred gradients at batch 1:
// rank-1 terms), with 16 vector registers: a tile of 4 rows (terms_tile: 3) x TP packets. Per
// element and term the same operations as terms_tile's k = 1 branch (a multiply-add from zero,
// added to C's tile), in the same order, so the same bits. A term is its two pointers, TR
// broadcasts, TP loads and 2 TR TP vector operations: no k to read and test, no loop over k, no
// second tile of chains, so the taller tile fits (8 accumulators, 2 B packets, a broadcast and
// its copy, zero: 13 registers). Zen 3 (AVX2), one thread, 32 terms (a probe outside the
// repository calling gemm_tn_add_terms, medians of 30), GFLOP/s terms_tile -> this: C 1024 x
// 256 35.5 -> 46-50, 768 x 256 37.6 -> 48-52, 512 x 128 41-42 -> 55-61, 256 x 64 42 -> 54-55.
// bench/cells.py's training loops at N = 1 (the builds alternated 3 times, medians, ms a loop):
// LSTM H = 64 1.10 -> 1.00, 128 2.99 -> 2.69, 256 10.79 -> 10.32; GRU 256 8.37 -> 7.94, GRU 64
// and 128 within 2%. Tried there and not kept: two terms per iteration (GCC spilled four
// accumulators: 39 GFLOP/s), five rows (within 3%), panels grouped so that A's rows serve
// several from L1 (no change: the loop is bound by issuing its instructions, not by memory), a
// multiplication instead of the multiply-add from zero (5-14% more, but a product of -0 would
// then add -0 rather than +0: a zero's sign could differ from the immediate gradient's). For
// k > 1, a chain tile of 4 x 2 with C's tile loaded, added and stored per term measured the same
// as terms_tile at k = 8 and 15-30% slower at k = 2 and 4. (The AVX-512 copies keep
// terms_tile: 4 x 2 of 32 registers.)
template <typename Scalar>
inline void terms_tile_k1(const TnTerm<Scalar>* terms, Index count, Index i0, Index j0,
                          Scalar* c, Index ldc) {
  namespace ei = Eigen::internal;
  using P = detail::Packet<Scalar>;
  constexpr int TR = TermsTile<Scalar>::TR1, TP = TermsTile<Scalar>::TP;
  constexpr Index W = detail::kPacketSize<Scalar>;
  P cc[TR][TP];
  for (int r = 0; r < TR; ++r)
    for (int j = 0; j < TP; ++j) cc[r][j] = ei::ploadu<P>(c + r * ldc + j * W);
  const P zero = ei::pset1<P>(Scalar(0));
  auto term = [&](const Scalar* a, const P (&bv)[TP]) {
    for (int r = 0; r < TR; ++r) {
      const P av = ei::pset1<P>(a[r]);
      for (int j = 0; j < TP; ++j) cc[r][j] = ei::padd(cc[r][j], ei::pmadd(av, bv[j], zero));
    }
  };
  for (Index s = 0; s < count; ++s) {
    const Scalar* b = terms[s].b + j0;
    P bv[TP];
    for (int j = 0; j < TP; ++j) bv[j] = ei::ploadu<P>(b + j * W);
    term(terms[s].a + i0, bv);
  }
  for (int r = 0; r < TR; ++r)
    for (int j = 0; j < TP; ++j) ei::pstoreu(c + r * ldc + j * W, cc[r][j]);
}

template <typename Scalar>
void gemm_tn_add_terms(std::int64_t m, std::int64_t n, const TnTerm<Scalar>* terms,
                       std::int64_t count, Scalar* c, std::int64_t ldc, int num_threads) {
  using namespace detail;
  using TT = TermsTile<Scalar>;
  constexpr Index TR = TT::TR, NC = TT::NC;
  const std::string fn = "gemm_tn_add_terms";
  if (m < 1 || n < 1 || count < 0)
    fail(fn + ": m and n must be >= 1 and count >= 0, got m=" + std::to_string(m) +
         " n=" + std::to_string(n) + " count=" + std::to_string(count));
  if (num_threads < 0)
    fail(fn + ": num_threads must be >= 0 (0 = OpenMP default), got " +
         std::to_string(num_threads));
  if (ldc < n) fail(fn + ": ldc must be >= n");
  if (count == 0) return;
  check_ptr(fn.c_str(), terms, "terms");
  check_ptr(fn.c_str(), c, "c");
  for (std::int64_t s = 0; s < count; ++s) {
    const TnTerm<Scalar>& t = terms[s];
    if (t.k < 0 || t.k > kTnSmallK)
      fail(fn + ": term " + std::to_string(s) + " has k=" + std::to_string(t.k) +
           ", expected 0..32");
    if (t.k > 0 && (t.a == nullptr || t.b == nullptr || t.lda < m || t.ldb < n))
      fail(fn + ": term " + std::to_string(s) + " needs non-null a, b with lda >= m, ldb >= n");
  }
  int nth = 1;
#ifdef _OPENMP
  nth = num_threads > 0 ? num_threads : omp_get_max_threads();
#endif
  // Tiles of C over rows [ib, ie) and columns [jb, je) (jb a multiple of NC), the terms ts[0,
  // sc) in each: whole tiles in place, partial ones on zero-padded copies.
  auto tiles = [&](const TnTerm<Scalar>* ts, Index sc, Index ib, Index ie, Index jb, Index je) {
    const Index rbs = ceil_div(ie - ib, TR), items = rbs * ceil_div(je - jb, NC);
    if (items <= 0) return;
    parallel_region(int(std::min<Index>(nth, items)), [&] {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index item = 0; item < items; ++item) {
        const Index j0 = jb + (item / rbs) * NC, i0 = ib + (item % rbs) * TR;
        const Index mr = std::min(TR, ie - i0), nc = std::min(NC, je - j0);
        if (mr == TR && nc == NC) {
          terms_tile<Scalar>(ts, sc, i0, j0, nullptr, nullptr, nullptr, nullptr, c + i0 * ldc + j0,
                     ldc);
          continue;
        }
        // A partial tile: on a zero-padded copy of its part of C, term by term from zero-padded
        // copies of its rows of A and columns of B (C between the terms in memory: the same
        // values as in registers).
        alignas(64) Scalar ct[TR * NC] = {};
        alignas(64) Scalar at[kTnSmallK * TR];
        alignas(64) Scalar bt[kTnSmallK * NC];
        for (Index r = 0; r < mr; ++r)
          std::copy(c + (i0 + r) * ldc + j0, c + (i0 + r) * ldc + j0 + nc, ct + r * NC);
        for (Index s = 0; s < sc; ++s) {
          const TnTerm<Scalar>& t = ts[s];
          for (Index kk = 0; kk < t.k; ++kk) {
            const Scalar* ar = t.a + kk * t.lda + i0;
            std::copy(ar, ar + mr, at + kk * TR);
            std::fill(at + kk * TR + mr, at + (kk + 1) * TR, Scalar(0));
            const Scalar* br = t.b + kk * t.ldb + j0;
            std::copy(br, br + nc, bt + kk * NC);
            std::fill(bt + kk * NC + nc, bt + (kk + 1) * NC, Scalar(0));
          }
          const Scalar* pa = at;
          const Scalar* pb = bt;
          const Index la = TR, lb = NC;
          terms_tile<Scalar>(&t, 1, i0, j0, &pa, &la, &pb, &lb, ct, NC);
        }
        for (Index r = 0; r < mr; ++r)
          std::copy(ct + r * NC, ct + r * NC + nc, c + (i0 + r) * ldc + j0);
      }
    });
  };
  constexpr Index TR1 = TT::TR1;
  // Passes of terms whose panel columns of B take at most 16 KiB (in L1 beside the rows of A),
  // at least one term each.
  constexpr Index kPassBytes = 16 * 1024;
  for (Index s0 = 0; s0 < count;) {
    Index s1 = s0, bytes = 0;
    while (s1 < count && (s1 == s0 || bytes + terms[s1].k * NC * Index(sizeof(Scalar)) <=
                                           kPassBytes))
      bytes += terms[s1++].k * NC * Index(sizeof(Scalar));
    const TnTerm<Scalar>* ts = terms + s0;
    const Index sc = s1 - s0;
    // Every term of rank 1 (and a taller tile than terms_tile's): the whole TR1 x NC tiles by
    // terms_tile_k1, the rest of C (the rows past them, the last partial panel) as any pass:
    // each element still gets every term once, in order.
    bool rank1 = TR1 != TR;
    for (Index s = 0; rank1 && s < sc; ++s) rank1 = ts[s].k == 1;
    if (rank1) {
      const Index rb = m / TR1, cb = n / NC, items = rb * cb;
      if (items > 0)
        parallel_region(int(std::min<Index>(nth, items)), [&] {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
          for (Index item = 0; item < items; ++item) {
            const Index j0 = (item / rb) * NC, i0 = (item % rb) * TR1;
            terms_tile_k1<Scalar>(ts, sc, i0, j0, c + i0 * ldc + j0, ldc);
          }
        });
      tiles(ts, sc, rb * TR1, m, 0, n);   // the rows past the whole tiles, every panel
      tiles(ts, sc, 0, rb * TR1, cb * NC, n);  // their last, partial panel
    } else {
      tiles(ts, sc, 0, m, 0, n);
    }
    s0 = s1;
  }
}

}  // namespace

void fill_gemm(isa::Table& t) {
  t.f32.reference_gemm = &reference_gemm<float>;
  t.f64.reference_gemm = &reference_gemm<double>;
  t.f32.gemm_tn_add_terms = &gemm_tn_add_terms<float>;
  t.f64.gemm_tn_add_terms = &gemm_tn_add_terms<double>;
}

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
