// internal::isa_ops: the model layer's operations from the same instruction-set copy that the
// kernels of fusedrnn.h dispatch to (so a Stream and Model::forward compute identically).
#include <cstring>

#include "dispatch.h"

#define FUSEDRNN_ISA_NS isa_base
#include "isa_kernels.inc"
#include "isa_step.inc"
#undef FUSEDRNN_ISA_NS
#ifdef FUSEDRNN_HAVE_ISA_AVX2
#define FUSEDRNN_ISA_NS isa_avx2
#include "isa_kernels.inc"
#include "isa_step.inc"
#undef FUSEDRNN_ISA_NS
#endif
#ifdef FUSEDRNN_HAVE_ISA_AVX512
#define FUSEDRNN_ISA_NS isa_avx512
#include "isa_kernels.inc"
#include "isa_step.inc"
#undef FUSEDRNN_ISA_NS
#endif

namespace fusedrnn {
namespace internal {

template <typename Scalar>
const IsaOps<Scalar>& isa_ops() {
  const char* active = active_isa();
  (void)active;
#ifdef FUSEDRNN_HAVE_ISA_AVX512
  if (!std::strcmp(active, isa_avx512::isa_name())) return isa_avx512::step_ops<Scalar>();
#endif
#ifdef FUSEDRNN_HAVE_ISA_AVX2
  if (!std::strcmp(active, isa_avx2::isa_name())) return isa_avx2::step_ops<Scalar>();
#endif
  return isa_base::step_ops<Scalar>();
}

template const IsaOps<float>& isa_ops<float>();
template const IsaOps<double>& isa_ops<double>();

}  // namespace internal
}  // namespace fusedrnn
