// Weight packing and the checked entry points of the low-precision products (lowp.h), each a
// call through the low-precision block of a level's table (isa/table.h: the tier chosen once with
// the float kernels, isa::active(), or the one a caller names). The per-tier code is in soft.cc
// (software tiers, one per instruction-set copy) and native.cc (avx512_bf16, amx).
#include "lowp.h"

#include "isa/table.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fusedrnn {
namespace lowp {
namespace {

using I = std::int64_t;

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument(what); }

static_assert(int(isa::Level::amx) == int(Tier::amx) &&
                  int(isa::Level::avx512_bf16) == int(Tier::avx512_bf16) &&
                  int(isa::Level::avx512) == int(Tier::avx512) &&
                  int(isa::Level::avx2) == int(Tier::avx2) &&
                  int(isa::Level::base) == int(Tier::baseline),
              "isa::Level and lowp::Tier number the levels alike");

// The low-precision block of tier t's table (require_tier / tier_of checked that it runs).
const isa::Lowp& ops(Tier t) {
  const isa::Table* table = isa::table_at(isa::Level(int(t)));
  if (!table) fail(std::string("lowp: tier '") + tier_name(t) + "' is not available here");
  return table->lowp;
}

template <typename F>
void parallel(int num_threads, F&& body) {
#ifdef _OPENMP
  const int n = num_threads > 0 ? num_threads : omp_get_max_threads();
  if (n > 1 || omp_in_parallel()) {
#pragma omp parallel num_threads(n)
    body();
    return;
  }
#else
  (void)num_threads;
#endif
  body();
}

void check_gemm(const char* fn, Tier t, I m, I n, I K, const void* A, I lda, I kp,
                const void* Bp, float* C, I ldc, int num_threads) {
  require_tier(t, fn);
  if (!(m >= 1 && n >= 1 && K >= 1))
    fail(std::string(fn) + ": sizes must be positive, got m=" + std::to_string(m) +
         " n=" + std::to_string(n) + " K=" + std::to_string(K));
  if (lda < kp)
    fail(std::string(fn) + ": lda = " + std::to_string(lda) + " must be >= " +
         std::to_string(kp) + " (K = " + std::to_string(K) + " zero-padded)");
  if (ldc < n)
    fail(std::string(fn) + ": ldc = " + std::to_string(ldc) + " must be >= n = " +
         std::to_string(n));
  if (num_threads < 0 || num_threads > kMaxThreads)
    fail(std::string(fn) + ": num_threads must lie in [0, " + std::to_string(kMaxThreads) +
         "], got " + std::to_string(num_threads));
  if (!A || !Bp || !C) fail(std::string(fn) + ": A, Bp and C must not be null");
}

}  // namespace

const char* tier_name(Tier t) {
  switch (t) {
    case Tier::amx:
      return "amx";
    case Tier::avx512_bf16:
      return "avx512_bf16";
    case Tier::avx512:
      return "avx512";
    case Tier::avx2:
      return "avx2";
    default:
      return "baseline";
  }
}

bool tier_from_name(const std::string& name, Tier* out) {
  for (Tier t : {Tier::baseline, Tier::avx2, Tier::avx512, Tier::avx512_bf16, Tier::amx})
    if (name == tier_name(t)) {
      *out = t;
      return true;
    }
  return false;
}

bool tier_available(Tier t) { return isa::table_at(isa::Level(int(t))) != nullptr; }

// The active table's tier (isa::active(): one choice with the float kernels).
Tier active_tier() { return Tier(isa::active().lowp.tier); }

bool lstm_fused_applies(const Dims& d) { return isa::active().lowp.lstm_fused && d.P == 0; }

void lstm_fused_forward(const Dims& d, const LstmFusedArgs& a, bool pack, int num_threads) {
  if (!lstm_fused_applies(d)) fail("lstm_fused_forward: the fused AMX step does not apply here");
  isa::active().lowp.lstm_fused(d, a, pack, num_threads);
}

bool gru_fused_applies(const Dims&) { return isa::active().lowp.gru_fused != nullptr; }

void gru_fused_forward(const Dims& d, const LstmFusedArgs& a, bool pack, int num_threads) {
  if (!gru_fused_applies(d)) fail("gru_fused_forward: the fused AMX step does not apply here");
  isa::active().lowp.gru_fused(d, a, pack, num_threads);
}

void require_tier(Tier t, const char* fn) {
  if (!tier_available(t))
    fail(std::string(fn) + ": tier '" + tier_name(t) +
         "' is not available here (not built, or the CPU or OS lacks it)");
}

std::uint16_t to_bf16_scalar(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x40u);  // NaN: quiet
  if ((u & 0x7f800000u) == 0) return std::uint16_t((u >> 16) & 0x8000u);  // subnormal: +-0
  return std::uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

float from_bf16(std::uint16_t h) {
  const std::uint32_t u = std::uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void pack_bf16(const float* W, I n, I K, I ldw, std::uint16_t* out) {
  const I kp = bf16_kpad(K);
  for (I p = 0; p < panels(n); ++p) {
    std::uint16_t* dst = out + p * kp * kPanel;
    for (I k = 0; k < kp; ++k)
      for (I j = 0; j < kPanel; ++j) {
        const I col = p * kPanel + j;
        dst[((k / 2) * kPanel + j) * 2 + k % 2] =
            (col < n && k < K) ? to_bf16_scalar(W[col * ldw + k]) : std::uint16_t(0);
      }
  }
}

void pack_s8(const float* W, I n, I K, I ldw, std::int8_t* out, float* scales,
             std::int32_t* colsum) {
  const I kp = s8_kpad(K);
  const I n16 = panels(n) * kPanel;
  std::fill(out, out + packed_s8_size(n, K), std::int8_t(0));
  for (I j = 0; j < n16; ++j) {
    scales[j] = 0.0f;
    colsum[j] = 0;
    if (j >= n) continue;
    const float* w = W + j * ldw;
    float amax = 0.0f;
    for (I k = 0; k < K; ++k) amax = std::max(amax, std::fabs(w[k]));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    scales[j] = amax / 127.0f;
    std::int8_t* dst = out + (j / kPanel) * kp * kPanel;
    for (I k = 0; k < K; ++k) {
      const float v = std::min(std::max(w[k] * inv, -127.0f), 127.0f);
      const std::int8_t q = std::int8_t(std::nearbyint(v));
      dst[((k / 4) * kPanel + j % kPanel) * 4 + k % 4] = q;
      colsum[j] += q;
    }
  }
}

void to_bf16(Tier t, const float* x, I m, I K, I ldx, std::uint16_t* out, I ldo) {
  return ops(t).to_bf16(x, m, K, ldx, out, ldo);
}

void quantize_s8(Tier t, const float* x, I m, I K, I ldx, std::int8_t* q, I ldq, float* scale) {
  return ops(t).quantize_s8(x, m, K, ldx, q, ldq, scale);
}

void quantize_s8_fixed(Tier t, const float* x, I m, I K, I ldx, float inv, std::int8_t* q,
                       I ldq) {
  return ops(t).quantize_s8_fixed(x, m, K, ldx, inv, q, ldq);
}

void par_gemm_bf16(Tier t, I m, I n, I K, const std::uint16_t* A, I lda, const std::uint16_t* Bp,
                   const float* bias, float* C, I ldc, bool accumulate) {
  return ops(t).par_gemm_bf16(m, n, K, A, lda, Bp, bias, C, ldc, accumulate);
}

void par_gemm_s8(Tier t, I m, I n, I K, const std::int8_t* A, I lda, const float* a_scale,
                 const std::int8_t* Bp, const float* w_scale, const std::int32_t* colsum,
                 const float* bias, float* C, I ldc, bool accumulate, bool shared) {
  return ops(t).par_gemm_s8(m, n, K, A, lda, a_scale, Bp, w_scale, colsum, bias, C, ldc,
                            accumulate, shared);
}

void gemm_bf16(Tier t, I m, I n, I K, const std::uint16_t* A, I lda, const std::uint16_t* Bp,
               const float* bias, float* C, I ldc, bool accumulate, int num_threads) {
  check_gemm("gemm_bf16", t, m, n, K, A, lda, bf16_kpad(K), Bp, C, ldc, num_threads);
  parallel(num_threads, [&] { par_gemm_bf16(t, m, n, K, A, lda, Bp, bias, C, ldc, accumulate); });
}

void gemm_s8(Tier t, I m, I n, I K, const std::int8_t* A, I lda, const float* a_scale,
             const std::int8_t* Bp, const float* w_scale, const std::int32_t* colsum,
             const float* bias, float* C, I ldc, bool accumulate, int num_threads) {
  check_gemm("gemm_s8", t, m, n, K, A, lda, s8_kpad(K), Bp, C, ldc, num_threads);
  if (K > kMaxS8Depth)
    fail("gemm_s8: K = " + std::to_string(K) + " exceeds " + std::to_string(kMaxS8Depth) +
         ", the widest product whose int32 sums (127^2 K) stay exact");
  if (!a_scale || !w_scale || !colsum)
    fail("gemm_s8: a_scale, w_scale and colsum must not be null");
  parallel(num_threads, [&] {
    par_gemm_s8(t, m, n, K, A, lda, a_scale, Bp, w_scale, colsum, bias, C, ldc, accumulate);
  });
}

// The fp32 yardstick of the active table's float copy.
I f32_packed_size(I n, I K) { return isa::active().lowp.f32_packed_size(n, K); }
void f32_pack(const float* W, I n, I K, float* packed) {
  isa::active().lowp.f32_pack(W, n, K, packed);
}
void f32_gemm(I m, I n, I K, const float* A, const float* packed, float* C, int num_threads) {
  if (!(m >= 1 && n >= 1 && K >= 1) || num_threads < 0)
    fail("f32_gemm: sizes must be positive and num_threads >= 0");
  isa::active().lowp.f32_gemm(m, n, K, A, packed, C, num_threads);
}

}  // namespace lowp
}  // namespace fusedrnn
