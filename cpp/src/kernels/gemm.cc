// reference_gemm: a plain dense product by Eigen's GEMM, compiled in every instruction-set copy
// with the kernels' flags. It is not part of any cell: bench/run.py times it as the machine's
// GEMM peak "built the same way as the kernels".
#include "isa/copy.inc"
#include "kernels/activations.h"

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

}  // namespace

void fill_gemm(isa::Table& t) {
  t.f32.reference_gemm = &reference_gemm<float>;
  t.f64.reference_gemm = &reference_gemm<double>;
}

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
