// Build information: what this copy of the library was compiled with.
#include <Eigen/Core>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "fusedrnn/common.h"

namespace fusedrnn {

BuildInfo build_info() {
  BuildInfo b;
  b.version = FUSEDRNN_VERSION;
#if defined(__clang__)
  b.compiler = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  b.compiler = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  b.compiler = "msvc " + std::to_string(_MSC_VER);
#else
  b.compiler = "unknown";
#endif
#if defined(__AVX512F__)
  b.instruction_set = "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  b.instruction_set = "avx2+fma";
#elif defined(__AVX__)
  b.instruction_set = "avx";
#elif defined(__SSE2__) || defined(_M_X64)
  b.instruction_set = "sse2";
#elif defined(__ARM_NEON)
  b.instruction_set = "neon";
#else
  b.instruction_set = "scalar";
#endif
  b.instruction_set += std::string(" (") + FUSEDRNN_ISA + " build)";
#ifdef _OPENMP
  b.openmp = true;
  b.openmp_max_threads = omp_get_max_threads();
#endif
  b.eigen_version = std::to_string(EIGEN_WORLD_VERSION) + "." +
                    std::to_string(EIGEN_MAJOR_VERSION) + "." +
                    std::to_string(EIGEN_MINOR_VERSION);
  return b;
}

}  // namespace fusedrnn
