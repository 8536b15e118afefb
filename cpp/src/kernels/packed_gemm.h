// A GEMM over a right-hand side packed once per kernel call, for the products that run every
// time step (h w_hhᵀ forward, dg w_hh backward) and the input projections.
//
// Eigen's GEMM re-packs both operands on every call; the recurrence calls it T times with the
// same weights, so packing dominated at small batch. Here the weights are laid out once as
// panels of NC output columns, [panel][k][NC] (zero-padded), and a register-tiled micro-kernel
// (MR rows x NP packets of accumulators) streams a panel per tile: per k, NP packet loads of the
// panel, MR broadcasts of A and MR*NP fused multiply-adds.
//
// Results are bitwise reproducible: every output element is one micro-kernel accumulation over
// k = 0..K-1 in order, whatever the thread count, the work split or the memory alignment.
#pragma once

#include "kernel.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
namespace detail {

template <typename Scalar>
struct Panel {
  using P = typename Eigen::internal::packet_traits<Scalar>::type;
  static constexpr Index W = Eigen::internal::unpacket_traits<P>::size;  // scalars per packet
#if defined(__AVX512F__) || defined(__aarch64__)
  static constexpr Index NP = 4;  // 32 vector registers: 6x4 accumulators, 4 panel packets
#else
  static constexpr Index NP = 2;  // 16 vector registers: 6x2 accumulators, 2 panel packets
#endif
  static constexpr Index NC = NP * W;  // output columns per panel
  // Rows per micro-tile. Measured on a Xeon (AVX-512), LSTM T=100 N=64 C=H=256 forward, one
  // thread: 6x4 tiles 60 ms, 4x4 76 ms, 8x4 (spills) 66 ms, 12x2 58 ms, 8x3 74 ms. Measured
  // again with today's kernels (45.5 ms at 6x4): 12x2, 14x2 and 8x3 within 1-3%, none faster.
  static constexpr Index MR = 6;
  // Rows per work item (multiples of MR): a product of up to MB rows is one row block (the
  // per-step products: its rows stay in L1/L2 across the panels); a larger one (the input
  // projection, dx) goes in blocks of MBL rows when K is short (K <= KS: a block's A rows stay
  // in L1 across the panels), else of MB rows. And k in passes of KC (a pass's C tile is stored,
  // the next pass adds to it). Measured in isolation here (one thread, GF/s):
  //   m x n x K          | MB=252 KC=128 | MBL=48 KC=128 | chosen
  //   6400 x 1024 x 256  | 155           | 170           | 172 (48 rows, one pass)
  //   448 x 2048 x 512   | 164           | 158           | 175 (252 rows, KC=512)
  //   6400 x 512 x 2048  | 134           | 150           | 162 (252 rows, KC=512)
  //   64 x 1024 x 256    | 179           | 179           | 185 (one block, one pass)
  // A 512 x 64 float panel pass (128 KiB) stays in L2, not L1; that cost nothing measurable.
  static constexpr Index MB = 252;
  static constexpr Index MBL = 48;
  static constexpr Index KS = 256;
  static constexpr Index KC = 512;
};

// Scalars that a packed [K, ncols] right-hand side may need, for either dtype (the workspace
// size functions do not know the dtype).
// Packed buffers start on a 64-byte boundary (a cache line, an AVX-512 register): misaligned
// panels split every packet load across two cache lines, which cost 55% of the batch-1 step
// (bound by L2 bandwidth) in a measurement here. The kernels carve their packed buffers out of
// the caller's workspace with aligned64() (layout.h: Carver::take_aligned), each rounding
// skipping at most 15 scalars: the workspace sizes reserve kAlignScalars per such buffer.
// packed_bound is a multiple of 16 scalars, so consecutive packed buffers in an aligned block (a
// Stream's) stay aligned.
constexpr Index kMaxPanel = 64;
constexpr Index kAlignScalars = 16;
constexpr Index packed_bound(Index K, Index ncols) {
  return ((ncols + kMaxPanel) * K + kAlignScalars - 1) / kAlignScalars * kAlignScalars;
}
template <typename Scalar>
Scalar* aligned64(Scalar* p) {
  const auto u = reinterpret_cast<std::uintptr_t>(p);
  return reinterpret_cast<Scalar*>((u + 63) & ~std::uintptr_t(63));
}
static_assert(Panel<float>::NC <= kMaxPanel && Panel<double>::NC <= kMaxPanel, "panel too wide");

// Work-shared packing of the right-hand side op(B) = [K, ncols] of C = A op(B).
//   transposed = true:  B is stored [ncols][K] with leading dimension ld (op(B) = Bᵀ, e.g. w_hh
//                       in h w_hhᵀ);
//   transposed = false: B is stored [K][ncols] with leading dimension ld (e.g. w_hh in dg w_hh).
// Packs panel p of op(B) into out + p*K*NC: par_pack's unit of work (a Stream packs its
// weights serially with it).
template <typename Scalar>
void pack_panel(const Scalar* B, Index K, Index ncols, Index ld, bool transposed, Index p,
                Scalar* out) {
  namespace ei = Eigen::internal;
  using T = Panel<Scalar>;
  using P = typename T::P;
  constexpr Index NC = T::NC, W = T::W, NP = T::NP;
  const Index c0 = p * NC, nc = std::min(NC, ncols - c0);
  Scalar* dst = out + p * K * NC;
  Index k = 0;
  if (transposed && nc == NC) {
    // W x W blocks transposed in registers: W rows of B (output columns), W values of k each.
    // Scalar copying of this strided gather cost ~0.15 ms per MiB of weights, most of a
    // batch-1 call's overhead.
    for (; k + W <= K; k += W) {
      for (Index j = 0; j < NP; ++j) {
        ei::PacketBlock<P, W> blk;
        for (Index r = 0; r < W; ++r)
          blk.packet[r] = ei::ploadu<P>(B + (c0 + j * W + r) * ld + k);
        ei::ptranspose(blk);
        for (Index r = 0; r < W; ++r) ei::pstoreu(dst + (k + r) * NC + j * W, blk.packet[r]);
      }
    }
  }
  for (; k < K; ++k) {
    Scalar* row = dst + k * NC;
    for (Index c = 0; c < nc; ++c) row[c] = transposed ? B[(c0 + c) * ld + k] : B[k * ld + c0 + c];
    std::fill(row + nc, row + NC, Scalar(0));
  }
}

template <typename Scalar>
void par_pack(const Scalar* B, Index K, Index ncols, Index ld, bool transposed, Scalar* out) {
  const Index np = ceil_div(ncols, Panel<Scalar>::NC);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index p = 0; p < np; ++p) pack_panel(B, K, ncols, ld, transposed, p, out);
}

// C[M rows, nc <= NC columns] (= or +=) A[M, K] (row-major, lda) times one packed panel.
template <typename Scalar, int M>
inline void micro_tile(Index K, const Scalar* a, Index lda, const Scalar* panel, Scalar* c,
                       Index ldc, Index nc, bool accumulate) {
  namespace ei = Eigen::internal;
  using T = Panel<Scalar>;
  using P = typename T::P;
  constexpr Index W = T::W, NP = T::NP, NC = T::NC;
  P acc[M][NP];
  for (int r = 0; r < M; ++r)
    for (Index j = 0; j < NP; ++j) acc[r][j] = ei::pset1<P>(Scalar(0));
  for (Index k = 0; k < K; ++k) {
    P b[NP];
    for (Index j = 0; j < NP; ++j) b[j] = ei::ploadu<P>(panel + k * NC + j * W);
    for (int r = 0; r < M; ++r) {
      const P av = ei::pset1<P>(a[r * lda + k]);
      for (Index j = 0; j < NP; ++j) acc[r][j] = ei::pmadd(av, b[j], acc[r][j]);
    }
  }
  for (int r = 0; r < M; ++r) {
    Scalar* cr = c + r * ldc;
    if (nc == NC) {
      for (Index j = 0; j < NP; ++j)
        ei::pstoreu(cr + j * W, accumulate ? ei::padd(ei::ploadu<P>(cr + j * W), acc[r][j])
                                           : acc[r][j]);
    } else {
      alignas(64) Scalar tmp[NC];
      for (Index j = 0; j < NP; ++j) ei::pstore(tmp + j * W, acc[r][j]);
      for (Index q = 0; q < nc; ++q) cr[q] = accumulate ? cr[q] + tmp[q] : tmp[q];
    }
  }
}

// C[M rows, nc <= NC columns] (= or +=) A[M, K] times one packed panel, for M = 7 or 8 rows
// (the tail of a product whose rows are not a multiple of MR: batch 8 was a 6-row and a 2-row
// tile, and the 2-row tile's 8 accumulator chains only just cover the FMA latency while it
// reads the whole panel a second time). The panel goes in two halves of NP/2 packets, each an
// M x NP/2 register tile over k = 0..K-1 (16 accumulators at M = 8): the panel is read once,
// every output element is still one multiply-add chain over k in order, so the values equal
// micro_tile's (and row_tile's 6 + 2 split) bit for bit.
template <typename Scalar, int M>
inline void micro_tile_halves(Index K, const Scalar* a, Index lda, const Scalar* panel,
                              Scalar* c, Index ldc, Index nc, bool accumulate) {
  namespace ei = Eigen::internal;
  using T = Panel<Scalar>;
  using P = typename T::P;
  constexpr Index W = T::W, NP = T::NP, NC = T::NC, NH = NP / 2;
  static_assert(NP % 2 == 0, "two halves");
  alignas(64) Scalar tmp[M][NC];  // a partial panel's results
  for (Index h = 0; h < 2; ++h) {
    const Scalar* pb = panel + h * NH * W;
    P acc[M][NH];
    for (int r = 0; r < M; ++r)
      for (Index j = 0; j < NH; ++j) acc[r][j] = ei::pset1<P>(Scalar(0));
    for (Index k = 0; k < K; ++k) {
      P b[NH];
      for (Index j = 0; j < NH; ++j) b[j] = ei::ploadu<P>(pb + k * NC + j * W);
      for (int r = 0; r < M; ++r) {
        const P av = ei::pset1<P>(a[r * lda + k]);
        for (Index j = 0; j < NH; ++j) acc[r][j] = ei::pmadd(av, b[j], acc[r][j]);
      }
    }
    for (int r = 0; r < M; ++r) {
      Scalar* cr = c + r * ldc + h * NH * W;
      for (Index j = 0; j < NH; ++j) {
        if (nc == NC)
          ei::pstoreu(cr + j * W, accumulate ? ei::padd(ei::ploadu<P>(cr + j * W), acc[r][j])
                                             : acc[r][j]);
        else
          ei::pstore(&tmp[r][(h * NH + j) * W], acc[r][j]);
      }
    }
  }
  if (nc < NC)
    for (int r = 0; r < M; ++r) {
      Scalar* cr = c + r * ldc;
      for (Index q = 0; q < nc; ++q) cr[q] = accumulate ? cr[q] + tmp[r][q] : tmp[r][q];
    }
}

// Whether the rows r0..r_end-1 of a row block end in a tail tile of 7 or 8 rows
// (micro_tile_halves) rather than in whole MR-row tiles plus a short one: from r0 on, when
// r_end - r0 is 7 or 8 (with 16 vector registers, NP = 2, the halves would be one packet wide:
// there the 6 + 2 split stays).
template <typename Scalar>
constexpr bool halves_tail(Index rows_left) {
  return Panel<Scalar>::NP == 4 && Panel<Scalar>::MR == 6 && (rows_left == 7 || rows_left == 8);
}

// The row tiles of rows r0..r_end-1 against one panel chunk: MR-row micro-tiles, the last 7 or
// 8 rows as one micro_tile_halves (halves_tail). Every element's sum is the same.
template <typename Scalar>
inline void row_tiles(Index r0, Index r_end, Index K, const Scalar* A, Index lda,
                      const Scalar* panel, Scalar* C, Index ldc, Index nc, bool accumulate);

// micro_tile with `rows` (1..MR) rows, chosen at run time.
template <typename Scalar, int M = int(Panel<Scalar>::MR)>
inline void row_tile(Index rows, Index K, const Scalar* a, Index lda, const Scalar* panel,
                     Scalar* c, Index ldc, Index nc, bool accumulate) {
  if constexpr (M > 1) {
    if (rows < M) return row_tile<Scalar, M - 1>(rows, K, a, lda, panel, c, ldc, nc, accumulate);
  }
  micro_tile<Scalar, M>(K, a, lda, panel, c, ldc, nc, accumulate);
}

template <typename Scalar>
inline void row_tiles(Index r0, Index r_end, Index K, const Scalar* A, Index lda,
                      const Scalar* panel, Scalar* C, Index ldc, Index nc, bool accumulate) {
  constexpr Index MR = Panel<Scalar>::MR;
  for (; r0 < r_end; r0 += MR) {
    const Index left = r_end - r0;
    if constexpr (Panel<Scalar>::NP == 2) {
      // 16 registers (6x2 tiles): the last MR + 1 .. 2 MR - 1 rows as two tiles of about half
      // each (8 rows: 4 + 4, not 6 + 2), so that no tile has fewer than 3 rows. A tile of r rows
      // has 2r accumulator chains; below 4 rows they are too few to hide the FMA latency (2
      // rows: half the FMA rate). Every element's sum is still one accumulation over k in order.
      // Zen 3 (AVX2), bench/cells.py, the builds alternated three times: N = 8 inference 8-13%
      // faster, training 2-6%; N = 32 (its last 8 rows) 2-3%.
      if (left > MR && left < 2 * MR) {
        const Index r1 = (left + 1) / 2;
        row_tile<Scalar>(r1, K, A + r0 * lda, lda, panel, C + r0 * ldc, ldc, nc, accumulate);
        row_tile<Scalar>(left - r1, K, A + (r0 + r1) * lda, lda, panel, C + (r0 + r1) * ldc, ldc,
                         nc, accumulate);
        return;
      }
    }
    if (halves_tail<Scalar>(left)) {
      const Scalar* a = A + r0 * lda;
      Scalar* c = C + r0 * ldc;
      if (left == 8)
        micro_tile_halves<Scalar, 8>(K, a, lda, panel, c, ldc, nc, accumulate);
      else
        micro_tile_halves<Scalar, 7>(K, a, lda, panel, c, ldc, nc, accumulate);
      return;
    }
    row_tile<Scalar>(std::min(MR, left), K, A + r0 * lda, lda, panel, C + r0 * ldc, ldc, nc,
                     accumulate);
  }
}

// C[M rows, G*NC columns] (= or +=) A[M, K] times G consecutive full panels (`pstride` scalars
// apart). For products of one or two rows (the per-step products at batch 1 and 2): one panel
// gives only M*NP accumulator chains, too few to hide the FMA latency (batch 1: 4 chains, half
// the FMA rate), so panels are taken G at a time. Every output element is still one
// accumulation over k in order: the values equal micro_tile's bit for bit.
template <typename Scalar, int M, int G>
inline void micro_tile_group(Index K, const Scalar* a, Index lda, const Scalar* panel,
                             Index pstride, Scalar* c, Index ldc, bool accumulate) {
  namespace ei = Eigen::internal;
  using T = Panel<Scalar>;
  using P = typename T::P;
  constexpr Index W = T::W, NP = T::NP, NC = T::NC;
  P acc[M][G * NP];
  for (int r = 0; r < M; ++r)
    for (Index j = 0; j < G * NP; ++j) acc[r][j] = ei::pset1<P>(Scalar(0));
  for (Index k = 0; k < K; ++k) {
    P av[M];
    for (int r = 0; r < M; ++r) av[r] = ei::pset1<P>(a[r * lda + k]);
    for (int g = 0; g < G; ++g)
      for (Index j = 0; j < NP; ++j) {
        const P b = ei::ploadu<P>(panel + g * pstride + k * NC + j * W);
        for (int r = 0; r < M; ++r) acc[r][g * NP + j] = ei::pmadd(av[r], b, acc[r][g * NP + j]);
      }
  }
  for (int r = 0; r < M; ++r) {
    Scalar* cr = c + r * ldc;
    for (Index j = 0; j < G * NP; ++j)
      ei::pstoreu(cr + j * W, accumulate ? ei::padd(ei::ploadu<P>(cr + j * W), acc[r][j])
                                         : acc[r][j]);
  }
}

// Panels per group of a small product with M rows: up to 16 accumulators (8 with 16 registers).
constexpr int max_group(int M) {
  return M == 1 ? 4 : (M == 2 ? 2 : 1);
}

// micro_tile_group with g (1..G) panels, chosen at run time.
template <typename Scalar, int M, int G = max_group(M)>
inline void group_tile(int g, Index K, const Scalar* a, Index lda, const Scalar* panel,
                       Index pstride, Scalar* c, Index ldc, bool accumulate) {
  if constexpr (G > 1) {
    if (g < G)
      return group_tile<Scalar, M, G - 1>(g, K, a, lda, panel, pstride, c, ldc, accumulate);
  }
  micro_tile_group<Scalar, M, G>(K, a, lda, panel, pstride, c, ldc, accumulate);
}

// Work-shared small product (m <= 2 rows): items are groups of full panels, sized so that the
// threads get equal numbers of items where possible (results do not depend on the grouping);
// a last partial panel is an item of its own.
template <typename Scalar>
void par_gemm_small(Index m, Index ncols, Index K, const Scalar* A, Index lda,
                    const Scalar* packed, Scalar* C, Index ldc, bool accumulate) {
  using T = Panel<Scalar>;
  constexpr Index NC = T::NC, KC = T::KC;
  const Index full = ncols / NC, np = ceil_div(ncols, NC);
  int nth = 1;
#ifdef _OPENMP
  nth = omp_get_num_threads();
#endif
  const int gmax = max_group(int(m));
  int G = gmax;
  for (int g = gmax; g >= 1; --g)
    if (ceil_div(full, g) % nth == 0) {
      G = g;
      break;
    }
  const Index groups = ceil_div(full, G), items = groups + (np - full);
  const Index pstride = K * NC;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index item = 0; item < items; ++item) {
    for (Index k0 = 0; k0 < K; k0 += KC) {
      const Index kc = std::min(KC, K - k0);
      const bool acc = accumulate || k0 > 0;
      const Scalar* a = A + k0;
      if (item < groups) {
        const Index p0 = item * G;
        const int g = int(std::min<Index>(G, full - p0));
        const Scalar* pk = packed + p0 * pstride + k0 * NC;
        Scalar* c = C + p0 * NC;
        if (m == 1)
          group_tile<Scalar, 1>(g, kc, a, lda, pk, pstride, c, ldc, acc);
        else
          group_tile<Scalar, 2>(g, kc, a, lda, pk, pstride, c, ldc, acc);
      } else {  // the partial last panel
        const Index c0 = full * NC;
        const Scalar* pk = packed + full * pstride + k0 * NC;
        if (m == 1)
          micro_tile<Scalar, 1>(kc, a, lda, pk, C + c0, ldc, ncols - c0, acc);
        else
          micro_tile<Scalar, 2>(kc, a, lda, pk, C + c0, ldc, ncols - c0, acc);
      }
    }
  }
}

// Work-shared: C[m, ncols] (= or +=) A[m, K] (row-major, lda) op(B), op(B) packed by par_pack.
template <typename Scalar>
void par_gemm_packed(Index m, Index ncols, Index K, const Scalar* A, Index lda,
                     const Scalar* packed, Scalar* C, Index ldc, bool accumulate) {
  using T = Panel<Scalar>;
  constexpr Index NC = T::NC, MB = T::MB, KC = T::KC;
  if (m <= 2) return par_gemm_small(m, ncols, K, A, lda, packed, C, ldc, accumulate);
  Index mb = m <= MB ? MB : (K <= T::KS ? T::MBL : MB);
#ifdef _OPENMP
  // A per-step product whose packed weights fit a core's L2 (<= 1 MiB) goes in row blocks, one
  // per thread: each thread keeps all the weights in its own L2 and writes whole rows, which
  // its gate pass then reads. Measured at 2 threads: RNN a -13%, LSTM N=8 H=256 -11%, GRU a
  // -3%, LSTM a even; with larger weights each thread would stream all of them (LSTM c +4%).
  const int nth = omp_get_num_threads();
  if (m <= MB && nth > 1 && double(K) * double(ncols) * sizeof(Scalar) <= double(1 << 20))
    mb = ceil_div(m, Index(nth));
#endif
  const Index np = ceil_div(ncols, NC), nmb = ceil_div(m, mb);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index item = 0; item < nmb * np; ++item) {
    const Index rb = item / np, p = item % np;
    const Index c0 = p * NC, nc = std::min(NC, ncols - c0);
    const Scalar* panel = packed + p * K * NC;
    const Index r_end = std::min(m, (rb + 1) * mb);
    // K in chunks of KC so that a panel chunk stays in L1 across the row tiles; the chunks are
    // fixed, so the summation order still does not depend on threads or alignment.
    for (Index k0 = 0; k0 < K; k0 += KC) {
      const Index kc = std::min(KC, K - k0);
      const bool acc = accumulate || k0 > 0;
      row_tiles<Scalar>(rb * mb, r_end, kc, A + k0, lda, panel + k0 * NC, C + c0, ldc, nc, acc);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The weight gradients dw += dgᵀ x: C[m, n] += Aᵀ B with A stored [k][m] (lda) and B stored
// [k][n] (ldb), both k-major with a long k (T*N rows, thousands).
//
// C is split into items of at most MB x NB, each computed by one thread. Per chunk of KC k's,
// an item packs B into panels of NC columns [panel][k][NC] (zero-padded; a panel chunk stays
// in L1 while the micro-panels of A stream past it) and A as it is, [k][MB] (zero-padded to
// whole micro-panels of MR rows): both are copies of contiguous row segments. The register
// tile acc[MR][NP] of a micro-panel and a panel carries over the chunks through the item's
// tile buffer (loaded before a chunk, stored after it), so every element is one multiply-add
// chain over k = 0..K-1 in order, started from zero; the finished tile is then added to C, so
// accumulating twice from zero gives exactly twice. The split depends on m and n only: the
// result depends neither on the thread count nor on alignment.
//
// Blocking, measured on the AVX-512 Xeon, one thread, float, dw_ih of an LSTM (m = 1024,
// n = 256, k = 6400): the operands come from L3 (each k row a new page, which the hardware
// prefetchers do not follow, so the next chunk is prefetched in software), and every item
// re-reads its k rows of A and B, so the item should be as large as the stack allows: with
// KC = 64, 132 x 256 items reach ~145-150 GF/s (Eigen: ~110; 128 x 128 items with KC = 128:
// ~112; 168 x 192: ~126; 96 x 256: ~128; KC = 48 or 80 no better). A packed [k][MB] rather
// than in [k][MR] micro-panels: a plain copy, ~5% faster overall.
template <typename Scalar>
struct TnBlocking {
  using T = Panel<Scalar>;
  static constexpr Index KC = 64;  // k per packed chunk: a 64 x 64 float panel chunk is 16 KiB
  // Rows and columns per item: 132 x 256 in float, 66 x 128 in double.
  static constexpr Index MB = (132 * 4 / Index(sizeof(Scalar))) / T::MR * T::MR;
  static constexpr Index NB = (256 * 4 / Index(sizeof(Scalar))) / T::NC * T::NC;
  // Stack per thread: tile MB*NB + A chunk KC*MB + B chunk KC*NB scalars (229 KiB in float).
  static_assert((MB * NB + KC * (MB + NB)) * sizeof(Scalar) <= 256 * 1024, "stack budget");
  static_assert(MB % T::MR == 0 && NB % T::NC == 0, "whole micro-panels and panels");
};

// Row k of a k-major operand: row rows[k] of it when a row map is given (the ragged backward's
// valid positions, ragged.h), else row k.
inline Index map_row(const Index* rows, Index k) { return rows ? rows[k] : k; }

// Software prefetch of the next chunk's row segments of A and B, one cache line per step,
// so that the prefetches spread over the micro-kernel's loop instead of queueing up at once.
struct RowPrefetch {
  const char* a;  // row 0 of A's and B's segments
  const char* b;
  Index lda, ldb;             // bytes between rows
  const Index *amap, *bmap;   // row maps (map_row)
  Index abytes, bbytes;       // bytes per segment
  Index k, kend;              // the next row, the end
  const char* p = nullptr;
  const char* end = nullptr;
  bool in_a = false;
  void start(const char* a0, Index lda_, const Index* amap_, Index abytes_, const char* b0,
             Index ldb_, const Index* bmap_, Index bbytes_, Index k0, Index rows) {
    a = a0, b = b0, lda = lda_, ldb = ldb_, amap = amap_, bmap = bmap_;
    abytes = abytes_, bbytes = bbytes_, k = k0, kend = k0 + rows;
    in_a = false;
    p = end = nullptr;
  }
  void step() {
    if (p >= end) {
      if (k >= kend) return;
      const char* s = in_a ? b + map_row(bmap, k) * ldb : a + map_row(amap, k) * lda;
      end = s + (in_a ? bbytes : abytes);
      p = reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(s) & ~std::uintptr_t(63));
      if (in_a) ++k;
      in_a = !in_a;
    }
    Eigen::internal::prefetch(p);
    p += 64;
  }
  void finish() {
    while (k < kend || p < end) step();
  }
};

// acc = (first ? 0 : tile) + Σ_k a[k*lda + r] b[k*NC + j] (k in order); tile = acc. b and tile
// are aligned.
template <typename Scalar>
inline void tn_micro(Index kc, const Scalar* a, Index lda, const Scalar* b, Scalar* tile,
                     Index ldt, bool first, RowPrefetch& pf) {
  namespace ei = Eigen::internal;
  using T = Panel<Scalar>;
  using P = typename T::P;
  constexpr Index W = T::W, NP = T::NP, NC = T::NC, MR = T::MR;
  P acc[MR][NP];
  for (Index r = 0; r < MR; ++r)
    for (Index j = 0; j < NP; ++j)
      acc[r][j] = first ? ei::pset1<P>(Scalar(0)) : ei::pload<P>(tile + r * ldt + j * W);
  for (Index k = 0; k < kc; ++k) {
    if ((k & 1) == 0) pf.step();
    P bv[NP];
    for (Index j = 0; j < NP; ++j) bv[j] = ei::pload<P>(b + k * NC + j * W);
    for (Index r = 0; r < MR; ++r) {
      const P av = ei::pset1<P>(a[k * lda + r]);
      for (Index j = 0; j < NP; ++j) acc[r][j] = ei::pmadd(av, bv[j], acc[r][j]);
    }
  }
  for (Index r = 0; r < MR; ++r)
    for (Index j = 0; j < NP; ++j) ei::pstore(tile + r * ldt + j * W, acc[r][j]);
}

// par_gemm_tn_add for a short k (at most kTnSmallK rows: a step of a single-step cell, a tiny
// batch), without the item's tile buffer or packing: each element is the same multiply-add
// chain over k in order, started from zero, then added to C, as in the blocked path, so the
// result is the same to the bit. Each MR x NC register tile reads its k rows of A and B in
// place (a partial one from zero-padded copies). Measured on the Xeon (float, one thread, load
// ~18, C[m, n] for m x n = 512 x 128, 256 x 64, 1024 x 256): 0.3-0.5 of the blocked path's
// time at k <= 4, 0.65-0.8 at k = 8..32; at k = 48..128 sometimes slower (up to 1.2).
constexpr Index kTnSmallK = 32;

// C[mr, nc] += Aᵀ B over k rows (a: k rows of MR scalars, lda apart; b: k rows of NC, ldb
// apart; both zero-padded past mr and nc).
template <typename Scalar>
inline void tn_small_tile(Index k, const Scalar* a, Index lda, const Scalar* b, Index ldb,
                          Scalar* C, Index ldc, Index mr, Index nc) {
  namespace ei = Eigen::internal;
  using T = Panel<Scalar>;
  using P = typename T::P;
  constexpr Index W = T::W, NP = T::NP, NC = T::NC, MR = T::MR;
  P acc[MR][NP];
  for (Index r = 0; r < MR; ++r)
    for (Index j = 0; j < NP; ++j) acc[r][j] = ei::pset1<P>(Scalar(0));
  for (Index kk = 0; kk < k; ++kk) {
    P bv[NP];
    for (Index j = 0; j < NP; ++j) bv[j] = ei::ploadu<P>(b + kk * ldb + j * W);
    for (Index r = 0; r < MR; ++r) {
      const P av = ei::pset1<P>(a[kk * lda + r]);
      for (Index j = 0; j < NP; ++j) acc[r][j] = ei::pmadd(av, bv[j], acc[r][j]);
    }
  }
  if (mr == MR && nc == NC) {  // a whole tile: added to C from the registers
    for (Index r = 0; r < MR; ++r)
      for (Index j = 0; j < NP; ++j) {
        Scalar* c = C + r * ldc + j * W;
        ei::pstoreu(c, ei::padd(ei::ploadu<P>(c), acc[r][j]));
      }
    return;
  }
  alignas(64) Scalar t[MR * NC];
  for (Index r = 0; r < MR; ++r)
    for (Index j = 0; j < NP; ++j) ei::pstore(t + r * NC + j * W, acc[r][j]);
  for (Index r = 0; r < mr; ++r) {
    Scalar* c = C + r * ldc;
    const Scalar* tr = t + r * NC;
    if (nc == NC) {
      for (Index j = 0; j < NC; j += W)
        ei::pstoreu(c + j, ei::padd(ei::ploadu<P>(c + j), ei::pload<P>(tr + j)));
    } else {
      for (Index j = 0; j < nc; ++j) c[j] += tr[j];
    }
  }
}

template <typename Scalar>
void par_gemm_tn_add_small(Index m, Index n, Index k, const Scalar* A, Index lda, const Scalar* B,
                           Index ldb, Scalar* C, Index ldc) {
  using T = Panel<Scalar>;
  constexpr Index NC = T::NC, MR = T::MR;
  const Index rbs = ceil_div(m, MR), cbs = ceil_div(n, NC);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index item = 0; item < rbs * cbs; ++item) {
    const Index i0 = (item / cbs) * MR, j0 = (item % cbs) * NC;
    const Index mr = std::min(MR, m - i0), nc = std::min(NC, n - j0);
    // A partial micro-panel's rows and a partial panel's columns, zero-padded (as the blocked
    // path packs them), so that the register tile is always whole.
    alignas(64) Scalar at[kTnSmallK * MR];
    alignas(64) Scalar bt[kTnSmallK * NC];
    const Scalar *a = A + i0, *b = B + j0;
    Index la = lda, lb = ldb;
    if (mr < MR) {
      for (Index kk = 0; kk < k; ++kk) {
        std::copy(a + kk * lda, a + kk * lda + mr, at + kk * MR);
        std::fill(at + kk * MR + mr, at + (kk + 1) * MR, Scalar(0));
      }
      a = at, la = MR;
    }
    if (nc < NC) {
      for (Index kk = 0; kk < k; ++kk) {
        std::copy(b + kk * ldb, b + kk * ldb + nc, bt + kk * NC);
        std::fill(bt + kk * NC + nc, bt + (kk + 1) * NC, Scalar(0));
      }
      b = bt, lb = NC;
    }
    tn_small_tile(k, a, la, b, lb, C + i0 * ldc + j0, ldc, mr, nc);
  }
}

// Must be called by every thread of a parallel region (an `omp for` work-share with its
// implicit barrier): C[m, n] += Aᵀ B as described above. With row maps (amap, bmap: k entries),
// row kk of A and of B is row amap[kk], bmap[kk] of the stored operand (map_row): the sum runs
// over the mapped rows in map order, the same chain as over stored rows holding just those.
template <typename Scalar>
void par_gemm_tn_add(Index m, Index n, Index k, const Scalar* A, Index lda, const Scalar* B,
                     Index ldb, Scalar* C, Index ldc, const Index* amap = nullptr,
                     const Index* bmap = nullptr) {
  if (k == 0 || m == 0 || n == 0) return;
  if (k <= kTnSmallK && !amap && !bmap)
    return par_gemm_tn_add_small(m, n, k, A, lda, B, ldb, C, ldc);
  namespace ei = Eigen::internal;
  using T = Panel<Scalar>;
  using P = typename T::P;
  using BK = TnBlocking<Scalar>;
  constexpr Index W = T::W, NC = T::NC, MR = T::MR;
  constexpr Index KC = BK::KC, MB = BK::MB, NB = BK::NB;
  // Items of equal size as far as the micro-panels allow (a last thin item would pack as much
  // of B per k as a full one for a fraction of the work); the split depends on m and n only.
  const Index mbs = ceil_div(ceil_div(m, ceil_div(m, MB)), MR) * MR;
  const Index nbs = ceil_div(ceil_div(n, ceil_div(n, NB)), NC) * NC;
  const Index tm = ceil_div(m, mbs), tn = ceil_div(n, nbs);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index item = 0; item < tm * tn; ++item) {
    const Index i0 = (item / tn) * mbs, j0 = (item % tn) * nbs;
    const Index mb = std::min(mbs, m - i0), nb = std::min(nbs, n - j0);
    const Index nq = ceil_div(mb, MR), npn = ceil_div(nb, NC);
    alignas(64) Scalar tile[MB * NB];
    alignas(64) Scalar apack[KC * MB];
    alignas(64) Scalar bpack[KC * NB];
    RowPrefetch pf;
    for (Index k0 = 0; k0 < k; k0 += KC) {
      const Index kc = std::min(KC, k - k0);
      // B rows k0.. into panels [p][kk][NC], zero-padded past nb.
      for (Index kk = 0; kk < kc; ++kk) {
        const Scalar* src = B + map_row(bmap, k0 + kk) * ldb + j0;
        for (Index p = 0; p < npn; ++p) {
          Scalar* dst = bpack + p * kc * NC + kk * NC;
          const Index c = std::min(NC, nb - p * NC);
          if (c == NC) {
            for (Index j = 0; j < NC; j += W)
              ei::pstore(dst + j, ei::ploadu<P>(src + p * NC + j));
          } else {
            std::copy(src + p * NC, src + p * NC + c, dst);
            std::fill(dst + c, dst + NC, Scalar(0));
          }
        }
      }
      // A rows k0.. as they are, [kk][MB] (zero-padded past mb to whole micro-panels).
      for (Index kk = 0; kk < kc; ++kk) {
        const Scalar* src = A + map_row(amap, k0 + kk) * lda + i0;
        Scalar* dst = apack + kk * MB;
        Index i = 0;
        for (; i + W <= mb; i += W) ei::pstoreu(dst + i, ei::ploadu<P>(src + i));
        if (i < mb) {  // the last partial packet: an overlapping whole one when there is room
          if (mb >= W)
            ei::pstoreu(dst + mb - W, ei::ploadu<P>(src + mb - W));
          else
            for (; i < mb; ++i) dst[i] = src[i];
        }
        i = mb;
        for (; i < nq * MR; ++i) dst[i] = Scalar(0);
      }
      // The rows of the next chunk are a new page each (k-major operands with a long leading
      // dimension), which the hardware prefetchers do not follow: prefetch them, a line every
      // other k of the micro-kernel (what is left after the last call, at once).
      pf.start(reinterpret_cast<const char*>(A + i0), lda * Index(sizeof(Scalar)), amap,
               mb * Index(sizeof(Scalar)), reinterpret_cast<const char*>(B + j0),
               ldb * Index(sizeof(Scalar)), bmap, nb * Index(sizeof(Scalar)), k0 + kc,
               std::min(KC, k - k0 - kc));
      for (Index p = 0; p < npn; ++p)
        for (Index q = 0; q < nq; ++q)
          tn_micro<Scalar>(kc, apack + q * MR, MB, bpack + p * kc * NC,
                           tile + q * MR * NB + p * NC, NB, k0 == 0, pf);
      pf.finish();
    }
    for (Index i = 0; i < mb; ++i) {
      Scalar* c = C + (i0 + i) * ldc + j0;
      const Scalar* t = tile + i * NB;
      Index j = 0;
      for (; j + W <= nb; j += W)
        ei::pstoreu(c + j, ei::padd(ei::ploadu<P>(c + j), ei::pload<P>(t + j)));
      for (; j < nb; ++j) c[j] += t[j];
    }
  }
}

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
