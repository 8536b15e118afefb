// The software tiers of the low-precision products (lowp.h): compiled in every instruction-set
// copy of the kernels (baseline, AVX2, AVX-512), vectorised by the compiler over fixed-width
// register tiles. bf16 operands are widened to fp32 exactly (a 16-bit shift); each output
// element is one fp32 multiply-add chain in the contract's order (per k pair: odd term, then
// even term), so every software tier equals the NumPy emulation bit for bit. s8 operands are
// widened to s32 (exact).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "isa/table.h"
#include "lowp.h"
#include "lowp/items.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
#include "tiers.inc"
namespace {

using I = std::int64_t;
using lowp::for_items;
using lowp::kPanel;

inline float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline std::uint32_t float_to_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// The contract's fp32 -> bf16, branch-free so that the compiler vectorises a row of it.
inline std::uint16_t f2bf(float x) {
  const std::uint32_t u = float_to_bits(x);
  const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const std::uint32_t nan = (u >> 16) | 0x40u;
  const std::uint32_t zero = (u >> 16) & 0x8000u;
  std::uint32_t r = (u & 0x7f800000u) == 0 ? zero : rounded;
  r = (u & 0x7fffffffu) > 0x7f800000u ? nan : r;
  return std::uint16_t(r);
}

// acc + a * b with one rounding (the product of two bf16 is exact in fp32, so a separate multiply
// and add give the same value; the fused form is one instruction where the copy has FMA).
inline float madd(float a, float b, float acc) {
#if defined(__FMA__) || defined(__AVX512F__)
  return __builtin_fmaf(a, b, acc);
#else
  return acc + a * b;
#endif
}

#if defined(__AVX512F__)
constexpr int kMR = 6, kNG = 2;  // 6 rows x 32 columns: 12 zmm accumulators
#elif defined(__AVX2__)
constexpr int kMR = 4, kNG = 1;  // 4 rows x 16 columns: 8 ymm accumulators
#else
constexpr int kMR = 2, kNG = 1;  // 2 rows x 16 columns: 8 xmm accumulators
#endif
constexpr I kRowBlock = 96;  // rows per work item (a multiple of every kMR)

#if defined(__GNUC__) || defined(__clang__)
// Register tiles in the compiler's generic vectors (GCC/Clang), the width of the copy's registers.
#if defined(__AVX512F__)
constexpr int VW = 16;
#elif defined(__AVX__)
constexpr int VW = 8;
#else
constexpr int VW = 4;
#endif
constexpr int NV = int(kPanel) / VW;  // vectors per panel row
typedef float vf __attribute__((vector_size(VW * 4)));
typedef std::uint32_t vu __attribute__((vector_size(VW * 4)));
typedef std::int32_t vi __attribute__((vector_size(VW * 4)));

inline vf vmadd(vf a, vf b, vf acc) {
#if defined(__AVX512F__)
  return _mm512_fmadd_ps(a, b, acc);
#elif defined(__FMA__)
  return _mm256_fmadd_ps(a, b, acc);
#else
  return acc + a * b;  // the product of two bf16 is exact: the same value as a fused one
#endif
}
template <typename V>
inline V vload(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

// C[MR rows, NG*16 columns (nc valid)] = init + A[MR, 2*kpairs] x NG packed panels.
template <int MR, int NG>
inline void bf16_tile(I kpairs, const std::uint16_t* a, I lda, const std::uint16_t* bp,
                      I pstride, const float* bias, float* c, I ldc, I nc, bool accumulate) {
  constexpr int NCOL = NG * int(kPanel), NVT = NG * NV;
  vf acc[MR][NVT];
  for (int r = 0; r < MR; ++r) {
    alignas(64) float row[NCOL];
    for (int j = 0; j < NCOL; ++j)
      row[j] = j >= nc ? 0.0f : accumulate ? c[r * ldc + j] : bias ? bias[j] : 0.0f;
    for (int v = 0; v < NVT; ++v) acc[r][v] = vload<vf>(row + v * VW);
  }
  for (I p = 0; p < kpairs; ++p) {
    vf be[NVT], bo[NVT];
    for (int g = 0; g < NG; ++g)
      for (int v = 0; v < NV; ++v) {
        const vu w = vload<vu>(bp + g * pstride + p * 2 * kPanel + v * 2 * VW);
        be[g * NV + v] = (vf)(w << 16);
        bo[g * NV + v] = (vf)(w & 0xffff0000u);
      }
    for (int r = 0; r < MR; ++r) {
      const float ae = bits_to_float(std::uint32_t(a[r * lda + 2 * p]) << 16);
      const float ao = bits_to_float(std::uint32_t(a[r * lda + 2 * p + 1]) << 16);
      const vf vae = ae - (vf){}, vao = ao - (vf){};
      for (int v = 0; v < NVT; ++v) acc[r][v] = vmadd(vae, be[v], vmadd(vao, bo[v], acc[r][v]));
    }
  }
  for (int r = 0; r < MR; ++r) {
    alignas(64) float row[NCOL];
    for (int v = 0; v < NVT; ++v) std::memcpy(row + v * VW, &acc[r][v], sizeof(vf));
    for (int j = 0; j < NCOL; ++j)
      if (j < nc) c[r * ldc + j] = row[j];
  }
}

// acc[MR][NG*16] = sum over k quads of a (s8) times the packed s8 panels.
template <int MR, int NG>
inline void s8_tile(I kquads, const std::int8_t* a, I lda, const std::int8_t* bp, I pstride,
                    std::int32_t (*out)[NG * kPanel]) {
  constexpr int NVT = NG * NV;
  vi acc[MR][NVT] = {};
  for (I q = 0; q < kquads; ++q) {
    vi b[4][NVT];
    for (int g = 0; g < NG; ++g)
      for (int v = 0; v < NV; ++v) {
        const vi w = vload<vi>(bp + g * pstride + q * 4 * kPanel + v * 4 * VW);
        for (int t = 0; t < 4; ++t) b[t][g * NV + v] = (w << (24 - 8 * t)) >> 24;
      }
    for (int r = 0; r < MR; ++r) {
      const std::int8_t* ar = a + r * lda + 4 * q;
      for (int v = 0; v < NVT; ++v)
        acc[r][v] += ar[0] * b[0][v] + ar[1] * b[1][v] + ar[2] * b[2][v] + ar[3] * b[3][v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NVT; ++v) std::memcpy(out[r] + v * VW, &acc[r][v], sizeof(vi));
}
#else
// Other compilers: plain loops over the same register tile.
template <int MR, int NG>
inline void bf16_tile(I kpairs, const std::uint16_t* a, I lda, const std::uint16_t* bp,
                      I pstride, const float* bias, float* c, I ldc, I nc, bool accumulate) {
  constexpr int NCOL = NG * int(kPanel);
  float acc[MR][NCOL];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NCOL; ++j)
      acc[r][j] = j >= nc ? 0.0f : accumulate ? c[r * ldc + j] : bias ? bias[j] : 0.0f;
  for (I p = 0; p < kpairs; ++p) {
    float be[NCOL], bo[NCOL];
    for (int g = 0; g < NG; ++g) {
      std::uint32_t w[kPanel];
      std::memcpy(w, bp + g * pstride + p * 2 * kPanel, sizeof(w));
      for (int j = 0; j < int(kPanel); ++j) {
        be[g * kPanel + j] = bits_to_float(w[j] << 16);
        bo[g * kPanel + j] = bits_to_float(w[j] & 0xffff0000u);
      }
    }
    for (int r = 0; r < MR; ++r) {
      const float ae = bits_to_float(std::uint32_t(a[r * lda + 2 * p]) << 16);
      const float ao = bits_to_float(std::uint32_t(a[r * lda + 2 * p + 1]) << 16);
      for (int j = 0; j < NCOL; ++j) acc[r][j] = madd(ae, be[j], madd(ao, bo[j], acc[r][j]));
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NCOL; ++j)
      if (j < nc) c[r * ldc + j] = acc[r][j];
}

template <int MR, int NG>
inline void s8_tile(I kquads, const std::int8_t* a, I lda, const std::int8_t* bp, I pstride,
                    std::int32_t (*acc)[NG * kPanel]) {
  constexpr int NCOL = NG * int(kPanel);
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NCOL; ++j) acc[r][j] = 0;
  for (I q = 0; q < kquads; ++q) {
    std::int32_t b[4][NCOL];
    for (int g = 0; g < NG; ++g) {
      std::uint32_t w[kPanel];
      std::memcpy(w, bp + g * pstride + q * 4 * kPanel, sizeof(w));
      for (int j = 0; j < int(kPanel); ++j)
        for (int t = 0; t < 4; ++t)
          b[t][g * kPanel + j] = std::int32_t(w[j] << (24 - 8 * t)) >> 24;
    }
    for (int r = 0; r < MR; ++r) {
      const std::int8_t* ar = a + r * lda + 4 * q;
      const std::int32_t a0 = ar[0], a1 = ar[1], a2 = ar[2], a3 = ar[3];
      for (int j = 0; j < NCOL; ++j)
        acc[r][j] += a0 * b[0][j] + a1 * b[1][j] + a2 * b[2][j] + a3 * b[3][j];
    }
  }
}
#endif

template <int MR, int NG>
inline void bf16_tile_rows(int rows, I kpairs, const std::uint16_t* a, I lda,
                           const std::uint16_t* bp, I pstride, const float* bias, float* c,
                           I ldc, I nc, bool accumulate) {
  if constexpr (MR > 1) {
    if (rows < MR)
      return bf16_tile_rows<MR - 1, NG>(rows, kpairs, a, lda, bp, pstride, bias, c, ldc, nc,
                                        accumulate);
  }
  bf16_tile<MR, NG>(kpairs, a, lda, bp, pstride, bias, c, ldc, nc, accumulate);
}

// C[MR rows, nc columns] = init + float(acc) * (a_scale[r] * w_scale[j]).
template <int NCOL>
inline void s8_epilogue(int rows, const std::int32_t (*acc)[NCOL], const float* a_scale,
                        const float* w_scale, const float* bias, float* c, I ldc, I nc,
                        bool accumulate) {
  for (int r = 0; r < rows; ++r)
    for (I j = 0; j < nc; ++j) {
      const float init = accumulate ? c[r * ldc + j] : bias ? bias[j] : 0.0f;
      const float s = a_scale[r] * w_scale[j];
      const float v = float(acc[r][j]) * s;
      c[r * ldc + j] = init + v;
    }
}

template <int MR, int NG>
inline void s8_block(int rows, I kquads, const std::int8_t* a, I lda, const float* a_scale,
                     const std::int8_t* bp, I pstride, const float* w_scale, const float* bias,
                     float* c, I ldc, I nc, bool accumulate) {
  if constexpr (MR > 1) {
    if (rows < MR)
      return s8_block<MR - 1, NG>(rows, kquads, a, lda, a_scale, bp, pstride, w_scale, bias, c,
                                  ldc, nc, accumulate);
  }
  std::int32_t acc[MR][NG * kPanel];
  s8_tile<MR, NG>(kquads, a, lda, bp, pstride, acc);
  s8_epilogue<NG * int(kPanel)>(MR, acc, a_scale, w_scale, bias, c, ldc, nc, accumulate);
}

}  // namespace

void lowp_to_bf16(const float* x, I m, I K, I ldx, std::uint16_t* out, I ldo) {
  const I kp = lowp::bf16_kpad(K);
  for (I i = 0; i < m; ++i) {
    const float* xr = x + i * ldx;
    std::uint16_t* o = out + i * ldo;
    for (I k = 0; k < K; ++k) o[k] = f2bf(xr[k]);
    for (I k = K; k < kp; ++k) o[k] = 0;
  }
}

void lowp_quantize_s8_fixed(const float* x, I m, I K, I ldx, float inv, std::int8_t* q, I ldq) {
  const I kp = lowp::s8_kpad(K);
  for (I i = 0; i < m; ++i) {
    const float* xr = x + i * ldx;
    std::int8_t* o = q + i * ldq;
    for (I k = 0; k < K; ++k) {
      const float v = std::min(std::max(xr[k] * inv, -127.0f), 127.0f);
      o[k] = std::int8_t(std::nearbyint(v));
    }
    for (I k = K; k < kp; ++k) o[k] = 0;
  }
}

void lowp_quantize_s8(const float* x, I m, I K, I ldx, std::int8_t* q, I ldq, float* scale) {
  for (I i = 0; i < m; ++i) {
    const float* xr = x + i * ldx;
    float amax = 0.0f;
    bool finite = true;
    for (I k = 0; k < K; ++k) {
      finite = finite && std::isfinite(xr[k]);
      amax = std::max(amax, std::fabs(xr[k]));
    }
    if (!finite) {  // the contract: a row with a NaN or infinity has scale NaN and q = 0
      scale[i] = std::numeric_limits<float>::quiet_NaN();
      std::fill(q + i * ldq, q + i * ldq + lowp::s8_kpad(K), std::int8_t(0));
      continue;
    }
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    scale[i] = amax / 127.0f;
    lowp_quantize_s8_fixed(xr, 1, K, ldx, inv, q + i * ldq, ldq);
  }
}

void lowp_par_gemm_bf16(I m, I n, I K, const std::uint16_t* A, I lda, const std::uint16_t* Bp,
                        const float* bias, float* C, I ldc, bool accumulate) {
  const I kpairs = (K + 1) / 2, pstride = lowp::bf16_kpad(K) * kPanel;
  for_items(m, n, kRowBlock, kNG, true, [&](I r0, I r1, I c0, I nc) {
    const std::uint16_t* bp = Bp + (c0 / kPanel) * pstride;
    const float* b = bias ? bias + c0 : nullptr;
    for (I r = r0; r < r1; r += kMR) {
      const int rows = int(std::min<I>(kMR, r1 - r));
      const float* cb = b;
      if (nc > kPanel * (kNG - 1))
        bf16_tile_rows<kMR, kNG>(rows, kpairs, A + r * lda, lda, bp, pstride, cb,
                                 C + r * ldc + c0, ldc, nc, accumulate);
      else if constexpr (kNG > 1)
        bf16_tile_rows<kMR, 1>(rows, kpairs, A + r * lda, lda, bp, pstride, cb,
                               C + r * ldc + c0, ldc, nc, accumulate);
    }
  });
}

void lowp_par_gemm_s8(I m, I n, I K, const std::int8_t* A, I lda, const float* a_scale,
                      const std::int8_t* Bp, const float* w_scale, const std::int32_t* colsum,
                      const float* bias, float* C, I ldc, bool accumulate, bool shared) {
  (void)colsum;  // the software sum is s8 x s8 directly
  const I kquads = (K + 3) / 4, pstride = lowp::s8_kpad(K) * kPanel;
  for_items(m, n, kRowBlock, kNG, shared, [&](I r0, I r1, I c0, I nc) {
    const std::int8_t* bp = Bp + (c0 / kPanel) * pstride;
    for (I r = r0; r < r1; r += kMR) {
      const int rows = int(std::min<I>(kMR, r1 - r));
      const float* b = bias ? bias + c0 : nullptr;
      if (nc > kPanel * (kNG - 1))
        s8_block<kMR, kNG>(rows, kquads, A + r * lda, lda, a_scale + r, bp, pstride,
                           w_scale + c0, b, C + r * ldc + c0, ldc, nc, accumulate);
      else if constexpr (kNG > 1)
        s8_block<kMR, 1>(rows, kquads, A + r * lda, lda, a_scale + r, bp, pstride,
                         w_scale + c0, b, C + r * ldc + c0, ldc, nc, accumulate);
    }
  });
}

// This copy's software tier in its table (isa/table.h). Its tier number is the level the
// dispatch files the copy under (isa/dispatch.cc sets it).
void fill_lowp(isa::Table& t) {
  isa::Lowp& l = t.lowp;
  l.to_bf16 = lowp_to_bf16;
  l.quantize_s8 = lowp_quantize_s8;
  l.quantize_s8_fixed = lowp_quantize_s8_fixed;
  l.par_gemm_bf16 = lowp_par_gemm_bf16;
  l.par_gemm_s8 = lowp_par_gemm_s8;
  l.lstm_fused = nullptr;
  l.f32_packed_size = lowp_f32_packed_size;
  l.f32_pack = lowp_f32_pack;
  l.f32_gemm = lowp_f32_gemm;
}

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
