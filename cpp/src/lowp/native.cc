// The hardware tiers of the low-precision products (lowp.h): avx512_bf16 (vdpbf16ps, vpdpbusd,
// vcvtneps2bf16) and amx (tdpbf16ps, tdpbssd). Compiled once, with -mavx512bf16 -mavx512vnni
// -mamx-tile -mamx-bf16 -mamx-int8 on top of x86-64-v4; each tier fills the low-precision block of
// its table (fill_lowp; isa/dispatch.cc builds that table only where the CPU, and for amx the
// OS, allows the tier).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "isa/table.h"
#include "lowp.h"
#include "lowp/items.h"

namespace fusedrnn {
namespace lowp {
namespace {

using I = std::int64_t;

inline __mmask16 col_mask(I valid) {
  return valid >= 16 ? __mmask16(0xffff) : valid <= 0 ? __mmask16(0) : __mmask16((1u << valid) - 1);
}

// C[r, j] = init + float(acc[r, j]) * (a_scale[r] * w_scale[j]) for 16 columns (mask: valid).
inline void s8_store_row(__m512i acc, float a_scale, const float* w_scale, const float* bias,
                         float* c, __mmask16 mk, bool accumulate) {
  const __m512 init = accumulate ? _mm512_maskz_loadu_ps(mk, c)
                                 : bias ? _mm512_maskz_loadu_ps(mk, bias) : _mm512_setzero_ps();
  const __m512 s = _mm512_mul_ps(_mm512_set1_ps(a_scale), _mm512_maskz_loadu_ps(mk, w_scale));
  const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), s);
  _mm512_mask_storeu_ps(c, mk, _mm512_add_ps(init, v));
}

// ----------------------------------------------------------------------------------------------
// avx512_bf16: register tiles of MR rows x NG panels (16 columns each).
constexpr int kMR = 6, kNG = 4;
constexpr I kRowBlock = 96;

template <int MR, int NG>
inline void dp_tile(I kpairs, const std::uint16_t* a, I lda, const std::uint16_t* bp, I pstride,
                    const float* bias, float* c, I ldc, I nc, bool accumulate) {
  __m512 acc[MR][NG];
  __mmask16 mk[NG];
  for (int g = 0; g < NG; ++g) mk[g] = col_mask(nc - 16 * g);
  for (int r = 0; r < MR; ++r)
    for (int g = 0; g < NG; ++g)
      acc[r][g] = accumulate ? _mm512_maskz_loadu_ps(mk[g], c + r * ldc + 16 * g)
                  : bias     ? _mm512_maskz_loadu_ps(mk[g], bias + 16 * g)
                             : _mm512_setzero_ps();
  for (I p = 0; p < kpairs; ++p) {
    __m512i b[NG];
    for (int g = 0; g < NG; ++g) b[g] = _mm512_loadu_si512(bp + g * pstride + p * 32);
    for (int r = 0; r < MR; ++r) {
      std::uint32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * p, 4);
      const __m512i va = _mm512_set1_epi32(int(pair));
      for (int g = 0; g < NG; ++g)
        acc[r][g] = _mm512_dpbf16_ps(acc[r][g], (__m512bh)va, (__m512bh)b[g]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int g = 0; g < NG; ++g) _mm512_mask_storeu_ps(c + r * ldc + 16 * g, mk[g], acc[r][g]);
}

template <int MR, int NG>
inline void dp_rows(int rows, I kpairs, const std::uint16_t* a, I lda, const std::uint16_t* bp,
                    I pstride, const float* bias, float* c, I ldc, I nc, bool accumulate) {
  if constexpr (MR > 1) {
    if (rows < MR)
      return dp_rows<MR - 1, NG>(rows, kpairs, a, lda, bp, pstride, bias, c, ldc, nc, accumulate);
  }
  dp_tile<MR, NG>(kpairs, a, lda, bp, pstride, bias, c, ldc, nc, accumulate);
}

template <int NG = kNG>
inline void dp_cols(int ng, int rows, I kpairs, const std::uint16_t* a, I lda,
                    const std::uint16_t* bp, I pstride, const float* bias, float* c, I ldc, I nc,
                    bool accumulate) {
  if constexpr (NG > 1) {
    if (ng < NG)
      return dp_cols<NG - 1>(ng, rows, kpairs, a, lda, bp, pstride, bias, c, ldc, nc, accumulate);
  }
  dp_rows<kMR, NG>(rows, kpairs, a, lda, bp, pstride, bias, c, ldc, nc, accumulate);
}

template <int MR, int NG>
inline void vnni_tile(int rows, I kquads, const std::int8_t* a, I lda, const float* a_scale,
                      const std::int8_t* bp, I pstride, const float* w_scale,
                      const std::int32_t* colsum, const float* bias, float* c, I ldc, I nc,
                      bool accumulate) {
  if constexpr (MR > 1) {
    if (rows < MR)
      return vnni_tile<MR - 1, NG>(rows, kquads, a, lda, a_scale, bp, pstride, w_scale, colsum,
                                   bias, c, ldc, nc, accumulate);
  }
  // Accumulators and operands typed as the builtin's __v16si: through _mm512_dpbusd_epi32 (on
  // __m512i, i.e. 8 x int64) GCC 12 copied each accumulator to a scratch register and back
  // around every product and kept stack copies: a 6 x 4 tile ran at half of vpdpbusd's rate
  // (215 against 450 GOPS on Zen 4, one core, K = 512).
  __v16si acc[MR][NG];
  for (int r = 0; r < MR; ++r)
    for (int g = 0; g < NG; ++g) acc[r][g] = (__v16si)_mm512_setzero_si512();
  const __v16si flip = (__v16si)_mm512_set1_epi32(int(0x80808080u));
  for (I q = 0; q < kquads; ++q) {
    __v16si b[NG];
    for (int g = 0; g < NG; ++g) b[g] = (__v16si)_mm512_loadu_si512(bp + g * pstride + q * 64);
    for (int r = 0; r < MR; ++r) {
      std::uint32_t quad;
      std::memcpy(&quad, a + r * lda + 4 * q, 4);
      // (qa + 128) as u8: vpdpbusd multiplies u8 by s8.
      const __v16si va = (__v16si)_mm512_set1_epi32(int(quad)) ^ flip;
      for (int g = 0; g < NG; ++g) acc[r][g] = __builtin_ia32_vpdpbusd_v16si(acc[r][g], va, b[g]);
    }
  }
  for (int g = 0; g < NG; ++g) {
    const __mmask16 mk = col_mask(nc - 16 * g);
    const __m512i comp = _mm512_slli_epi32(_mm512_loadu_si512(colsum + 16 * g), 7);
    for (int r = 0; r < MR; ++r)
      s8_store_row(_mm512_sub_epi32((__m512i)acc[r][g], comp), a_scale[r], w_scale + 16 * g,
                   bias ? bias + 16 * g : nullptr, c + r * ldc + 16 * g, mk, accumulate);
  }
}

template <int NG = kNG>
inline void vnni_cols(int ng, int rows, I kquads, const std::int8_t* a, I lda,
                      const float* a_scale, const std::int8_t* bp, I pstride,
                      const float* w_scale, const std::int32_t* colsum, const float* bias,
                      float* c, I ldc, I nc, bool accumulate) {
  if constexpr (NG > 1) {
    if (ng < NG)
      return vnni_cols<NG - 1>(ng, rows, kquads, a, lda, a_scale, bp, pstride, w_scale, colsum,
                               bias, c, ldc, nc, accumulate);
  }
  vnni_tile<kMR, NG>(rows, kquads, a, lda, a_scale, bp, pstride, w_scale, colsum, bias, c, ldc,
                     nc, accumulate);
}

// ----------------------------------------------------------------------------------------------
// amx: blocks of up to 2 x 2 tiles (32 rows x 32 columns). Tiles 0-3 accumulate (0, 1: first row
// tile; 2, 3: second), 4-5 hold A, 6-7 hold B.
struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

// Per-thread tile configuration for row tiles of rows0 and rows1 rows (B tiles: 16 rows).
struct Tiles {
  int rows0 = -1, rows1 = -1;
  void use(int r0, int r1) {
    if (r0 == rows0 && r1 == rows1) return;
    TileConfig cfg;
    for (int t : {0, 1, 4}) cfg.rows[t] = std::uint8_t(r0), cfg.colsb[t] = 64;
    for (int t : {2, 3, 5}) cfg.rows[t] = std::uint8_t(r1), cfg.colsb[t] = 64;
    for (int t : {6, 7}) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    _tile_loadconfig(&cfg);
    rows0 = r0, rows1 = r1;
  }
  ~Tiles() {
    if (rows0 >= 0) _tile_release();
  }
};

// Where tile T (an fp32 accumulator of `rows` rows) starts from: C, the bias (stride 0) or,
// for partial panels (nc < 16), the caller's scratch; false: zero. (GCC's tile intrinsics take the
// tile number as a literal, hence the macros.)
inline bool amx_init_src(int rows, const float* c, I ldc, const float* bias, I nc,
                         bool accumulate, float* scratch, const void** src, int* stride) {
  if (nc == 16) {
    if (accumulate) {
      *src = c, *stride = int(ldc * 4);
      return true;
    }
    if (bias) {
      *src = bias, *stride = 0;
      return true;
    }
    return false;
  }
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < 16; ++j)
      scratch[r * 16 + j] = j >= nc ? 0.0f : accumulate ? c[r * ldc + j] : bias ? bias[j] : 0.0f;
  *src = scratch, *stride = 64;
  return true;
}

inline void copy_out(int rows, float* c, I ldc, I nc, const float* scratch) {
  for (int r = 0; r < rows; ++r)
    for (I j = 0; j < nc; ++j) c[r * ldc + j] = scratch[r * 16 + j];
}

#define FUSEDRNN_AMX_INIT(T, rows, c, ldc, bias, nc, accumulate, scratch)            \
  do {                                                                              \
    const void* src_;                                                               \
    int stride_;                                                                    \
    if (amx_init_src(rows, c, ldc, bias, nc, accumulate, scratch, &src_, &stride_)) \
      _tile_loadd(T, src_, stride_);                                                \
    else                                                                            \
      _tile_zero(T);                                                                \
  } while (0)

#define FUSEDRNN_AMX_STORE(T, rows, c, ldc, nc, scratch) \
  do {                                                  \
    if ((nc) == 16) {                                   \
      _tile_stored(T, c, int((ldc) * 4));               \
    } else {                                            \
      _tile_stored(T, scratch, 64);                     \
      copy_out(rows, c, ldc, nc, scratch);              \
    }                                                   \
  } while (0)

// The block's rows of C, for writing: a tile store to lines not in cache waits for each
// row's read-for-ownership in turn (measured: a 6400 x 1024 x 256 product ran at ~130 GF/s with
// C in memory against ~600 with C in L2); the prefetches overlap them with the block's products.
inline void prefetch_c(int rows, int lines, const float* c, I ldc) {
  for (int r = 0; r < rows; ++r)
    for (int l = 0; l < lines; ++l) __builtin_prefetch(c + r * ldc + 16 * l, 1, 3);
}

template <int RT, int CT>
inline void amx_bf16_block(int rows0, int rows1, I ksteps, const std::uint16_t* a, I lda,
                           const std::uint16_t* bp, I pstride, const float* bias, float* c,
                           I ldc, I nc0, I nc1, bool accumulate, float* scratch) {
  float* c1 = c + 16 * ldc;
  const float* bias1 = bias ? bias + 16 : nullptr;
  FUSEDRNN_AMX_INIT(0, rows0, c, ldc, bias, nc0, accumulate, scratch);
  if constexpr (CT == 2) FUSEDRNN_AMX_INIT(1, rows0, c + 16, ldc, bias1, nc1, accumulate, scratch);
  if constexpr (RT == 2) {
    FUSEDRNN_AMX_INIT(2, rows1, c1, ldc, bias, nc0, accumulate, scratch);
    if constexpr (CT == 2)
      FUSEDRNN_AMX_INIT(3, rows1, c1 + 16, ldc, bias1, nc1, accumulate, scratch);
  }
  const int sa = int(lda * 2);
  for (I s = 0; s < ksteps; ++s) {
    _tile_loadd(4, a + s * 32, sa);
    _tile_loadd(6, bp + s * 512, 64);
    if constexpr (CT == 2) _tile_loadd(7, bp + pstride + s * 512, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (CT == 2) _tile_dpbf16ps(1, 4, 7);
    if constexpr (RT == 2) {
      _tile_loadd(5, a + 16 * lda + s * 32, sa);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (CT == 2) _tile_dpbf16ps(3, 5, 7);
    }
  }
  FUSEDRNN_AMX_STORE(0, rows0, c, ldc, nc0, scratch);
  if constexpr (CT == 2) FUSEDRNN_AMX_STORE(1, rows0, c + 16, ldc, nc1, scratch);
  if constexpr (RT == 2) {
    FUSEDRNN_AMX_STORE(2, rows1, c1, ldc, nc0, scratch);
    if constexpr (CT == 2) FUSEDRNN_AMX_STORE(3, rows1, c1 + 16, ldc, nc1, scratch);
  }
}

inline void s8_rows(int rows, const std::int32_t* scratch, const float* a_scale,
                    const float* w_scale, const float* bias, float* c, I ldc, I nc,
                    bool accumulate) {
  const __mmask16 mk = col_mask(nc);
  for (int r = 0; r < rows; ++r)
    s8_store_row(_mm512_loadu_si512(scratch + 16 * r), a_scale[r], w_scale, bias, c + r * ldc,
                 mk, accumulate);
}
#define FUSEDRNN_AMX_S8_STORE(T, rows, a_scale, w_scale, bias, c, ldc, nc, accumulate, scratch) \
  do {                                                                                        \
    _tile_stored(T, scratch, 64);                                                             \
    s8_rows(rows, scratch, a_scale, w_scale, bias, c, ldc, nc, accumulate);                   \
  } while (0)

template <int RT, int CT>
inline void amx_s8_block(int rows0, int rows1, I ksteps, const std::int8_t* a, I lda,
                         const float* a_scale, const std::int8_t* bp, I pstride,
                         const float* w_scale, const float* bias, float* c, I ldc, I nc0, I nc1,
                         bool accumulate, std::int32_t* scratch) {
  _tile_zero(0);
  if constexpr (CT == 2) _tile_zero(1);
  if constexpr (RT == 2) {
    _tile_zero(2);
    if constexpr (CT == 2) _tile_zero(3);
  }
  const int sa = int(lda);
  for (I s = 0; s < ksteps; ++s) {
    _tile_loadd(4, a + s * 64, sa);
    _tile_loadd(6, bp + s * 1024, 64);
    if constexpr (CT == 2) _tile_loadd(7, bp + pstride + s * 1024, 64);
    _tile_dpbssd(0, 4, 6);
    if constexpr (CT == 2) _tile_dpbssd(1, 4, 7);
    if constexpr (RT == 2) {
      _tile_loadd(5, a + 16 * lda + s * 64, sa);
      _tile_dpbssd(2, 5, 6);
      if constexpr (CT == 2) _tile_dpbssd(3, 5, 7);
    }
  }
  const float* bias1 = bias ? bias + 16 : nullptr;
  float* c1 = c + 16 * ldc;
  FUSEDRNN_AMX_S8_STORE(0, rows0, a_scale, w_scale, bias, c, ldc, nc0, accumulate, scratch);
  if constexpr (CT == 2)
    FUSEDRNN_AMX_S8_STORE(1, rows0, a_scale, w_scale + 16, bias1, c + 16, ldc, nc1, accumulate,
                          scratch);
  if constexpr (RT == 2) {
    FUSEDRNN_AMX_S8_STORE(2, rows1, a_scale + 16, w_scale, bias, c1, ldc, nc0, accumulate,
                          scratch);
    if constexpr (CT == 2)
      FUSEDRNN_AMX_S8_STORE(3, rows1, a_scale + 16, w_scale + 16, bias1, c1 + 16, ldc, nc1,
                            accumulate, scratch);
  }
}

constexpr I kAmxRowChunk = 128;  // rows per work item (4 blocks of 2 row tiles)

// Calls block(RT, CT, rows0, rows1, r, nc0, nc1) over an item's 32 x 32 blocks (c0: the
// item's C), prefetching each block's C one block ahead.
template <typename F>
inline void amx_blocks(Tiles& tiles, I r0, I r1, I nc, const float* c0, I ldc, F&& block) {
  const I nc0 = std::min<I>(16, nc), nc1 = nc - nc0;
  const int lines = nc1 > 0 ? 2 : 1;
  prefetch_c(int(std::min<I>(32, r1 - r0)), lines, c0, ldc);
  for (I r = r0; r < r1; r += 32) {
    const int rows = int(std::min<I>(32, r1 - r));
    if (r + 32 < r1) prefetch_c(int(std::min<I>(32, r1 - r - 32)), lines, c0 + (r + 32 - r0) * ldc, ldc);
    const int rows0 = std::min(rows, 16), rows1 = rows - rows0;
    tiles.use(rows0, rows1 > 0 ? rows1 : 16);
    block(rows1 > 0 ? 2 : 1, nc1 > 0 ? 2 : 1, rows0, rows1, r, nc0, nc1);
  }
}

}  // namespace

// ----------------------------------------------------------------------------------------------
namespace tier_bf16 {
#include "tiers.inc"

void lowp_to_bf16(const float* x, I m, I K, I ldx, std::uint16_t* out, I ldo) {
  const I kp = bf16_kpad(K);
  for (I i = 0; i < m; ++i) {
    const float* xr = x + i * ldx;
    std::uint16_t* o = out + i * ldo;
    for (I k = 0; k < kp; k += 16) {
      const __mmask16 mk = col_mask(K - k);
      const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, xr + k));
      __m256i bits;
      std::memcpy(&bits, &v, 32);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + k), bits);
    }
  }
}

void lowp_quantize_s8_fixed(const float* x, I m, I K, I ldx, float inv, std::int8_t* q, I ldq) {
  const I kp = s8_kpad(K);
  const __m512 vinv = _mm512_set1_ps(inv), lo = _mm512_set1_ps(-127.0f),
               hi = _mm512_set1_ps(127.0f);
  for (I i = 0; i < m; ++i) {
    const float* xr = x + i * ldx;
    std::int8_t* o = q + i * ldq;
    for (I k = 0; k < kp; k += 16) {
      const __mmask16 mk = col_mask(K - k);
      __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, xr + k), vinv);
      v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
      const __m128i b = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v));  // nearest even (MXCSR)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + k), b);
    }
  }
}

void lowp_quantize_s8(const float* x, I m, I K, I ldx, std::int8_t* q, I ldq, float* scale) {
  for (I i = 0; i < m; ++i) {
    const float* xr = x + i * ldx;
    __m512 vmax = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (I k = 0; k < K; k += 16) {
      const __m512 v = _mm512_maskz_loadu_ps(col_mask(K - k), xr + k);
      bad |= _mm512_fpclass_ps_mask(v, 0x99);  // QNaN 0x01, +inf 0x08, -inf 0x10, SNaN 0x80
      vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
    }
    if (bad) {  // the contract: a row with a NaN or infinity has scale NaN and q = 0
      scale[i] = std::numeric_limits<float>::quiet_NaN();
      std::memset(q + i * ldq, 0, size_t(s8_kpad(K)));
      continue;
    }
    const float amax = _mm512_reduce_max_ps(vmax);
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    scale[i] = amax / 127.0f;
    lowp_quantize_s8_fixed(xr, 1, K, ldx, inv, q + i * ldq, ldq);
  }
}

void lowp_par_gemm_bf16(I m, I n, I K, const std::uint16_t* A, I lda, const std::uint16_t* Bp,
                        const float* bias, float* C, I ldc, bool accumulate) {
  const I kpairs = (K + 1) / 2, pstride = bf16_kpad(K) * kPanel;
  for_items(m, n, kRowBlock, kNG, true, [&](I r0, I r1, I c0, I nc) {
    const int ng = int((nc + kPanel - 1) / kPanel);
    const std::uint16_t* bp = Bp + (c0 / kPanel) * pstride;
    const float* b = bias ? bias + c0 : nullptr;
    for (I r = r0; r < r1; r += kMR)
      dp_cols(ng, int(std::min<I>(kMR, r1 - r)), kpairs, A + r * lda, lda, bp, pstride, b,
              C + r * ldc + c0, ldc, nc, accumulate);
  });
}

void lowp_par_gemm_s8(I m, I n, I K, const std::int8_t* A, I lda, const float* a_scale,
                      const std::int8_t* Bp, const float* w_scale, const std::int32_t* colsum,
                      const float* bias, float* C, I ldc, bool accumulate, bool shared) {
  const I kquads = (K + 3) / 4, pstride = s8_kpad(K) * kPanel;
  for_items(m, n, kRowBlock, kNG, shared, [&](I r0, I r1, I c0, I nc) {
    const int ng = int((nc + kPanel - 1) / kPanel);
    const std::int8_t* bp = Bp + (c0 / kPanel) * pstride;
    const float* b = bias ? bias + c0 : nullptr;
    for (I r = r0; r < r1; r += kMR)
      vnni_cols(ng, int(std::min<I>(kMR, r1 - r)), kquads, A + r * lda, lda, a_scale + r, bp,
                pstride, w_scale + c0, colsum + c0, b, C + r * ldc + c0, ldc, nc, accumulate);
  });
}

// The avx512_bf16 tier's block of its table (isa/table.h; the f32_* entries stay the avx512
// copy's).
void fill_lowp(isa::Lowp& l) {
  l.tier = int(Tier::avx512_bf16);
  l.to_bf16 = lowp_to_bf16;
  l.quantize_s8 = lowp_quantize_s8;
  l.quantize_s8_fixed = lowp_quantize_s8_fixed;
  l.par_gemm_bf16 = lowp_par_gemm_bf16;
  l.par_gemm_s8 = lowp_par_gemm_s8;
  l.lstm_fused = nullptr;
  l.gru_fused = nullptr;
}
}  // namespace tier_bf16

// ----------------------------------------------------------------------------------------------
namespace tier_amx {
#include "tiers.inc"

void lowp_to_bf16(const float* x, I m, I K, I ldx, std::uint16_t* out, I ldo) {
  tier_bf16::lowp_to_bf16(x, m, K, ldx, out, ldo);
}
void lowp_quantize_s8(const float* x, I m, I K, I ldx, std::int8_t* q, I ldq, float* scale) {
  tier_bf16::lowp_quantize_s8(x, m, K, ldx, q, ldq, scale);
}
void lowp_quantize_s8_fixed(const float* x, I m, I K, I ldx, float inv, std::int8_t* q, I ldq) {
  tier_bf16::lowp_quantize_s8_fixed(x, m, K, ldx, inv, q, ldq);
}

void lowp_par_gemm_bf16(I m, I n, I K, const std::uint16_t* A, I lda, const std::uint16_t* Bp,
                        const float* bias, float* C, I ldc, bool accumulate) {
  const I ksteps = bf16_kpad(K) / kBf16KStep, pstride = bf16_kpad(K) * kPanel;
  Tiles tiles;
  alignas(64) float scratch[256];
  for_items(m, n, kAmxRowChunk, 2, true, [&](I r0, I r1, I c0, I nc) {
    const std::uint16_t* bp = Bp + (c0 / kPanel) * pstride;
    const float* b = bias ? bias + c0 : nullptr;
    amx_blocks(tiles, r0, r1, nc, C + r0 * ldc + c0, ldc, [&](int RT, int CT, int rows0, int rows1, I r, I nc0, I nc1) {
      const std::uint16_t* a = A + r * lda;
      float* c = C + r * ldc + c0;
      if (RT == 2 && CT == 2)
        amx_bf16_block<2, 2>(rows0, rows1, ksteps, a, lda, bp, pstride, b, c, ldc, nc0, nc1,
                             accumulate, scratch);
      else if (RT == 2)
        amx_bf16_block<2, 1>(rows0, rows1, ksteps, a, lda, bp, pstride, b, c, ldc, nc0, nc1,
                             accumulate, scratch);
      else if (CT == 2)
        amx_bf16_block<1, 2>(rows0, rows1, ksteps, a, lda, bp, pstride, b, c, ldc, nc0, nc1,
                             accumulate, scratch);
      else
        amx_bf16_block<1, 1>(rows0, rows1, ksteps, a, lda, bp, pstride, b, c, ldc, nc0, nc1,
                             accumulate, scratch);
    });
  });
}

void lowp_par_gemm_s8(I m, I n, I K, const std::int8_t* A, I lda, const float* a_scale,
                      const std::int8_t* Bp, const float* w_scale, const std::int32_t* colsum,
                      const float* bias, float* C, I ldc, bool accumulate, bool shared) {
  (void)colsum;  // tdpbssd multiplies s8 by s8
  const I ksteps = s8_kpad(K) / kS8KStep, pstride = s8_kpad(K) * kPanel;
  Tiles tiles;
  alignas(64) std::int32_t scratch[256];
  for_items(m, n, kAmxRowChunk, 2, shared, [&](I r0, I r1, I c0, I nc) {
    const std::int8_t* bp = Bp + (c0 / kPanel) * pstride;
    const float* b = bias ? bias + c0 : nullptr;
    const float* ws = w_scale + c0;
    amx_blocks(tiles, r0, r1, nc, C + r0 * ldc + c0, ldc, [&](int RT, int CT, int rows0, int rows1, I r, I nc0, I nc1) {
      const std::int8_t* a = A + r * lda;
      const float* as = a_scale + r;
      float* c = C + r * ldc + c0;
      if (RT == 2 && CT == 2)
        amx_s8_block<2, 2>(rows0, rows1, ksteps, a, lda, as, bp, pstride, ws, b, c, ldc, nc0,
                           nc1, accumulate, scratch);
      else if (RT == 2)
        amx_s8_block<2, 1>(rows0, rows1, ksteps, a, lda, as, bp, pstride, ws, b, c, ldc, nc0,
                           nc1, accumulate, scratch);
      else if (CT == 2)
        amx_s8_block<1, 2>(rows0, rows1, ksteps, a, lda, as, bp, pstride, ws, b, c, ldc, nc0,
                           nc1, accumulate, scratch);
      else
        amx_s8_block<1, 1>(rows0, rows1, ksteps, a, lda, as, bp, pstride, ws, b, c, ldc, nc0,
                           nc1, accumulate, scratch);
    });
  });
}

void lstm_fused_forward(const Dims& d, const LstmFusedArgs& a, bool pack, int num_threads);
void gru_fused_forward(const Dims& d, const LstmFusedArgs& a, bool pack, int num_threads);

// The amx tier's block of its table (the f32_* entries stay the avx512 copy's).
void fill_lowp(isa::Lowp& l) {
  l.tier = int(Tier::amx);
  l.to_bf16 = lowp_to_bf16;
  l.quantize_s8 = lowp_quantize_s8;
  l.quantize_s8_fixed = lowp_quantize_s8_fixed;
  l.par_gemm_bf16 = lowp_par_gemm_bf16;
  l.par_gemm_s8 = lowp_par_gemm_s8;
  l.lstm_fused = lstm_fused_forward;  // amx_cells.cc
  l.gru_fused = gru_fused_forward;
}
}  // namespace tier_amx

}  // namespace lowp
}  // namespace fusedrnn
