// Tier selection, weight packing and the checked entry points of the low-precision products
// (lowp.h). The per-tier code is in soft.cc (software tiers, one per instruction-set copy) and
// native.cc (avx512_bf16, amx).
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
#if defined(__linux__) && (defined(__x86_64__) || defined(__i386__))
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace fusedrnn {
namespace isa_base {
#include "tiers.inc"
}
#ifdef FUSEDRNN_HAVE_ISA_AVX2
namespace isa_avx2 {
#include "tiers.inc"
}
#endif
#ifdef FUSEDRNN_HAVE_ISA_AVX512
namespace isa_avx512 {
#include "tiers.inc"
}
#endif
#ifdef FUSEDRNN_HAVE_LOWP_NATIVE
namespace lowp {
namespace tier_bf16 {
#include "tiers.inc"
}
namespace tier_amx {
#include "tiers.inc"
}
}  // namespace lowp
#endif

namespace lowp {
namespace {

using I = std::int64_t;

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument(what); }

bool cpu_has(Tier t) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
                  __builtin_cpu_supports("f16c") && __builtin_cpu_supports("movbe");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512vl");
  const bool bf16 = v4 && __builtin_cpu_supports("avx512bf16") &&
                    __builtin_cpu_supports("avx512vnni");
  switch (t) {
    case Tier::baseline:
      return true;
    case Tier::avx2:
      return v3;
    case Tier::avx512:
      return v4;
    case Tier::avx512_bf16:
      return bf16;
    case Tier::amx:
      return bf16 && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
             __builtin_cpu_supports("amx-int8");
  }
#endif
  return t == Tier::baseline;
}

bool built(Tier t) {
  switch (t) {
    case Tier::avx2:
#ifdef FUSEDRNN_HAVE_ISA_AVX2
      return true;
#else
      return false;
#endif
    case Tier::avx512:
#ifdef FUSEDRNN_HAVE_ISA_AVX512
      return true;
#else
      return false;
#endif
    case Tier::avx512_bf16:
    case Tier::amx:
#ifdef FUSEDRNN_HAVE_LOWP_NATIVE
      return true;
#else
      return false;
#endif
    default:
      return true;
  }
}

// Linux hands out the AMX tile-data state only on request, once per process; without it the
// first tile instruction raises SIGILL.
bool os_grants_amx() {
#if defined(__linux__) && defined(__x86_64__)
  constexpr long kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023;
  constexpr int kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
  unsigned long long bits = 0;
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &bits) != 0) return false;
  return (bits >> kXfeatureXtiledata) & 1u;
#else
  return false;
#endif
}

bool available(Tier t) {
  if (!built(t) || !cpu_has(t)) return false;
  if (t == Tier::amx) {
    static const bool granted = os_grants_amx();  // once per process
    return granted;
  }
  return true;
}

Tier select() {
  Tier best = Tier::baseline;
  for (Tier t : {Tier::avx2, Tier::avx512, Tier::avx512_bf16, Tier::amx})
    if (available(t)) best = t;
  // FUSEDRNN_ISA through the one parser of isa/ (an unknown value throws, as for the float32
  // kernels); isa::Level and Tier share their numbering.
  const isa::Level req = isa::requested_level();
  static_assert(int(isa::Level::amx) == int(Tier::amx) &&
                    int(isa::Level::avx512_bf16) == int(Tier::avx512_bf16) &&
                    int(isa::Level::avx512) == int(Tier::avx512) &&
                    int(isa::Level::avx2) == int(Tier::avx2) &&
                    int(isa::Level::base) == int(Tier::baseline),
                "isa::Level and lowp::Tier number the levels alike");
  if (req != isa::Level::unset && Tier(int(req)) < best) {
    // The widest available tier at or below the request (a software copy may be missing).
    Tier w = Tier(int(req));
    while (!available(w)) w = Tier(int(w) - 1);
    best = w;
  }
  return best;
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
  if (num_threads < 0)
    fail(std::string(fn) + ": num_threads must be >= 0, got " + std::to_string(num_threads));
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

bool tier_available(Tier t) { return available(t); }

Tier active_tier() {
  static const Tier tier = select();
  return tier;
}

bool lstm_fused_applies(const Dims& d) {
#ifdef FUSEDRNN_HAVE_LOWP_NATIVE
  return active_tier() == Tier::amx && d.P == 0;
#else
  (void)d;
  return false;
#endif
}

#ifdef FUSEDRNN_HAVE_LOWP_NATIVE
namespace tier_amx {
void lstm_fused_forward(const Dims& d, const LstmFusedArgs& a, bool pack, int num_threads);
}
#endif

void lstm_fused_forward(const Dims& d, const LstmFusedArgs& a, bool pack, int num_threads) {
  if (!lstm_fused_applies(d)) fail("lstm_fused_forward: the fused AMX step does not apply here");
#ifdef FUSEDRNN_HAVE_LOWP_NATIVE
  tier_amx::lstm_fused_forward(d, a, pack, num_threads);
#else
  (void)a, (void)pack, (void)num_threads;
#endif
}

void require_tier(Tier t, const char* fn) {
  if (!available(t))
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

#define FUSEDRNN_LOWP_CASES(call)                    \
  switch (t) {                                       \
    LOWP_NATIVE_CASES(call)                          \
    LOWP_AVX512_CASE(call)                           \
    LOWP_AVX2_CASE(call)                             \
    default:                                         \
      return isa_base::call;                         \
  }
#ifdef FUSEDRNN_HAVE_LOWP_NATIVE
#define LOWP_NATIVE_CASES(call) \
  case Tier::amx:               \
    return tier_amx::call;      \
  case Tier::avx512_bf16:       \
    return tier_bf16::call;
#else
#define LOWP_NATIVE_CASES(call)
#endif
#ifdef FUSEDRNN_HAVE_ISA_AVX512
#define LOWP_AVX512_CASE(call) \
  case Tier::avx512:           \
    return isa_avx512::call;
#else
#define LOWP_AVX512_CASE(call)
#endif
#ifdef FUSEDRNN_HAVE_ISA_AVX2
#define LOWP_AVX2_CASE(call) \
  case Tier::avx2:           \
    return isa_avx2::call;
#else
#define LOWP_AVX2_CASE(call)
#endif

void to_bf16(Tier t, const float* x, I m, I K, I ldx, std::uint16_t* out, I ldo) {
  FUSEDRNN_LOWP_CASES(lowp_to_bf16(x, m, K, ldx, out, ldo))
}

void quantize_s8(Tier t, const float* x, I m, I K, I ldx, std::int8_t* q, I ldq, float* scale) {
  FUSEDRNN_LOWP_CASES(lowp_quantize_s8(x, m, K, ldx, q, ldq, scale))
}

void quantize_s8_fixed(Tier t, const float* x, I m, I K, I ldx, float inv, std::int8_t* q,
                       I ldq) {
  FUSEDRNN_LOWP_CASES(lowp_quantize_s8_fixed(x, m, K, ldx, inv, q, ldq))
}

void par_gemm_bf16(Tier t, I m, I n, I K, const std::uint16_t* A, I lda, const std::uint16_t* Bp,
                   const float* bias, float* C, I ldc, bool accumulate) {
  FUSEDRNN_LOWP_CASES(lowp_par_gemm_bf16(m, n, K, A, lda, Bp, bias, C, ldc, accumulate))
}

void par_gemm_s8(Tier t, I m, I n, I K, const std::int8_t* A, I lda, const float* a_scale,
                 const std::int8_t* Bp, const float* w_scale, const std::int32_t* colsum,
                 const float* bias, float* C, I ldc, bool accumulate) {
  FUSEDRNN_LOWP_CASES(lowp_par_gemm_s8(m, n, K, A, lda, a_scale, Bp, w_scale, colsum, bias, C,
                                       ldc, accumulate))
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
  if (!a_scale || !w_scale || !colsum)
    fail("gemm_s8: a_scale, w_scale and colsum must not be null");
  parallel(num_threads, [&] {
    par_gemm_s8(t, m, n, K, A, lda, a_scale, Bp, w_scale, colsum, bias, C, ldc, accumulate);
  });
}

// The fp32 copy in use, by its name (isa/table.h).
#define FUSEDRNN_F32_CASES(call)                                          \
  {                                                                       \
    const std::string isa = isa::active().name;                                 \
    LOWP_F32_AVX512(call)                                                 \
    LOWP_F32_AVX2(call)                                                   \
    return isa_base::call;                                                \
  }
#ifdef FUSEDRNN_HAVE_ISA_AVX512
#define LOWP_F32_AVX512(call) \
  if (isa == "avx512") return isa_avx512::call;
#else
#define LOWP_F32_AVX512(call)
#endif
#ifdef FUSEDRNN_HAVE_ISA_AVX2
#define LOWP_F32_AVX2(call) \
  if (isa == "avx2") return isa_avx2::call;
#else
#define LOWP_F32_AVX2(call)
#endif

I f32_packed_size(I n, I K) { FUSEDRNN_F32_CASES(lowp_f32_packed_size(n, K)) }
void f32_pack(const float* W, I n, I K, float* packed) {
  FUSEDRNN_F32_CASES(lowp_f32_pack(W, n, K, packed))
}
void f32_gemm(I m, I n, I K, const float* A, const float* packed, float* C, int num_threads) {
  if (!(m >= 1 && n >= 1 && K >= 1) || num_threads < 0)
    fail("f32_gemm: sizes must be positive and num_threads >= 0");
  FUSEDRNN_F32_CASES(lowp_f32_gemm(m, n, K, A, packed, C, num_threads))
}

}  // namespace lowp
}  // namespace fusedrnn
