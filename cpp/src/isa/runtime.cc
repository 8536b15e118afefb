// Build information: what this copy of the library was compiled with.
#include <Eigen/Core>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "fusedrnn/common.h"
#include "isa/table.h"
#include "lowp/lowp.h"

namespace fusedrnn {

BuildInfo build_info() {
  BuildInfo b;
  b.version = FUSEDRNN_VERSION_STRING;
#if defined(__clang__)
  b.compiler = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  b.compiler = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  b.compiler = "msvc " + std::to_string(_MSC_VER);
#else
  b.compiler = "unknown";
#endif
  b.instruction_set = isa::active().name;
  b.compiled_isas = isa::compiled_isas();
  b.bfloat16_tier = lowp::tier_name(lowp::active_tier());

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
