// The fp32 packed GEMM of the kernels (packed_gemm.h: weights packed once, register-tiled
// micro-kernel), as a standalone product: the benchmark's fp32 yardstick for the low-precision
// products (bench/bench_lowp.py). Compiled in every instruction-set copy.
#include "kernels/packed_gemm.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

std::int64_t lowp_f32_packed_size(std::int64_t n, std::int64_t K) {
  return detail::packed_bound(K, n) + detail::kAlignScalars;
}

// packed (lowp_f32_packed_size(n, K) floats) = W [n, K] packed as op(B) = Wᵀ [K, n].
void lowp_f32_pack(const float* W, std::int64_t n, std::int64_t K, float* packed) {
  detail::parallel_region(1, [&] { detail::par_pack(W, K, n, K, true, detail::aligned64(packed)); });
}

// C [m, n] = A [m, K] Wᵀ with W packed by lowp_f32_pack.
void lowp_f32_gemm(std::int64_t m, std::int64_t n, std::int64_t K, const float* A,
                   const float* packed, float* C, int num_threads) {
  int nth = 1;
#ifdef _OPENMP
  nth = num_threads > 0 ? num_threads : omp_get_max_threads();
#endif
  const float* p = detail::aligned64(const_cast<float*>(packed));
  detail::parallel_region(nth, [&] { detail::par_gemm_packed(m, n, K, A, K, p, C, n, false); });
}

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
