// The choice of the instruction-set copy (once per process) and the public kernels of
// fusedrnn.h, each a call through the chosen copy's table (isa/table.h).
//
// The widest copy compiled in that this CPU runs is used (isa_avx512 > isa_avx2 > isa_base).
// FUSEDRNN_ISA=baseline|sse2|avx2|avx512 (any case) in the environment asks for a narrower copy
// (for tests and comparisons; avx512_bf16 and amx, the low-precision tiers' names, mean avx512
// here); a copy the CPU cannot run, or that was not built, is never chosen; an unknown value
// throws std::invalid_argument from every call. requested_level() is the one parser of
// FUSEDRNN_ISA (lowp/lowp.cc uses it too).
#include <cctype>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "isa/table.h"
#include "lowp/bf16_back_block.h"
#include "lowp/lowp.h"

#define FUSEDRNN_ISA_NS isa_base
#include "isa/copy.inc"
#undef FUSEDRNN_ISA_NS
#ifdef FUSEDRNN_HAVE_ISA_AVX2
#define FUSEDRNN_ISA_NS isa_avx2
#include "isa/copy.inc"
#undef FUSEDRNN_ISA_NS
#endif
#ifdef FUSEDRNN_HAVE_ISA_AVX512
#define FUSEDRNN_ISA_NS isa_avx512
#include "isa/copy.inc"
#undef FUSEDRNN_ISA_NS
#endif

namespace fusedrnn {
namespace isa {
namespace {

// The copies compiled in, by level (null: not built).
const Table* compiled(Level l) {
  switch (l) {
    case Level::avx512:
#ifdef FUSEDRNN_HAVE_ISA_AVX512
      return &isa_avx512::table();
#else
      return nullptr;
#endif
    case Level::avx2:
#ifdef FUSEDRNN_HAVE_ISA_AVX2
      return &isa_avx2::table();
#else
      return nullptr;
#endif
    default:
      return &isa_base::table();
  }
}

// The x86-64-v3 / x86-64-v4 feature sets the copies are compiled for.
bool cpu_runs(Level l) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
                  __builtin_cpu_supports("f16c") && __builtin_cpu_supports("movbe");
  if (l == Level::avx2) return v3;
  if (l == Level::avx512)
    return v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
#endif
  return l == Level::base;
}

Level select() {
  Level best = Level::base;
  for (Level l : {Level::avx2, Level::avx512})
    if (compiled(l) && cpu_runs(l)) best = l;
  Level w = requested_level();
  if (w > Level::avx512) w = Level::avx512;  // the low-precision tiers' names: the widest copy
  if (w != Level::unset && w < best && compiled(w)) best = w;
  return best;
}

}  // namespace

Level requested_level() {
  const char* want = std::getenv("FUSEDRNN_ISA");
  if (!want) return Level::unset;
  std::string w(want);
  for (char& ch : w) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (w.empty()) return Level::unset;
  if (w == "baseline" || w == "sse2") return Level::base;
  if (w == "avx2") return Level::avx2;
  if (w == "avx512") return Level::avx512;
  if (w == "avx512_bf16") return Level::avx512_bf16;
  if (w == "amx") return Level::amx;
  throw std::invalid_argument("FUSEDRNN_ISA='" + std::string(want) +
                              "' names no instruction-set copy; accepted (any case): baseline "
                              "(or sse2), avx2, avx512, and for the low-precision products also "
                              "avx512_bf16, amx; unset or empty: the widest this CPU runs");
}

const Table& active() {
  static const Table& table = *compiled(select());  // select() throws: tried again next call
  return table;
}

std::string compiled_isas() {
  std::string s;
  for (Level l : {Level::base, Level::avx2, Level::avx512})
    if (const Table* t = compiled(l)) s += (s.empty() ? "" : ", ") + std::string(t->name);
  return s;
}

}  // namespace isa

// ---------------------------------------------------------------------------------------------
// The public API: sizes and kernels through the active copy's table.

std::size_t lstm_cache_size(const Dims& d) { return isa::active().lstm_sizes(d).cache; }
// precision = bfloat16: the bf16 block (lowp.h) in front of the float32 layout.
std::size_t lstm_forward_workspace_size(const Dims& d, Precision p) {
  const std::size_t fp32 = isa::active().lstm_sizes(d).forward_workspace;
  return p == Precision::bfloat16 ? fp32 + std::size_t(lowp::bf16_block(d, 4, false).floats)
                                  : fp32;
}
// precision = bfloat16: the part of the float32 layout the bf16 backward uses, then the bf16
// backward block (bf16_back_block.h; the GRU sized for the reset-before split, the larger of its
// two variants).
std::size_t lstm_backward_workspace_size(const Dims& d, Precision p) {
  const isa::Sizes s = isa::active().lstm_sizes(d);
  return p == Precision::bfloat16
             ? s.backward_workspace_lowp + std::size_t(lowp::bf16_back_block(d, 4, false).floats)
             : s.backward_workspace;
}
std::size_t gru_cache_size(const Dims& d) { return isa::active().gru_sizes(d).cache; }
// precision = bfloat16: the bf16 block (lowp.h) in front of the float32 layout.
std::size_t gru_forward_workspace_size(const Dims& d, Precision p) {
  const std::size_t fp32 = isa::active().gru_sizes(d).forward_workspace;
  return p == Precision::bfloat16 ? fp32 + std::size_t(lowp::bf16_block(d, 3, true).floats)
                                  : fp32;
}
// precision = bfloat16: the part of the float32 layout the bf16 backward uses, then the bf16
// backward block (bf16_back_block.h; the GRU sized for the reset-before split, the larger of its
// two variants).
std::size_t gru_backward_workspace_size(const Dims& d, Precision p) {
  const isa::Sizes s = isa::active().gru_sizes(d);
  return p == Precision::bfloat16
             ? s.backward_workspace_lowp + std::size_t(lowp::bf16_back_block(d, 3, true).floats)
             : s.backward_workspace;
}
std::size_t rnn_cache_size(const Dims& d) { return isa::active().rnn_sizes(d).cache; }
// precision = bfloat16: the bf16 block (lowp.h) in front of the float32 layout.
std::size_t rnn_forward_workspace_size(const Dims& d, Precision p) {
  const std::size_t fp32 = isa::active().rnn_sizes(d).forward_workspace;
  return p == Precision::bfloat16 ? fp32 + std::size_t(lowp::bf16_block(d, 1, false).floats)
                                  : fp32;
}
// precision = bfloat16: the part of the float32 layout the bf16 backward uses, then the bf16
// backward block (bf16_back_block.h; the GRU sized for the reset-before split, the larger of its
// two variants).
std::size_t rnn_backward_workspace_size(const Dims& d, Precision p) {
  const isa::Sizes s = isa::active().rnn_sizes(d);
  return p == Precision::bfloat16
             ? s.backward_workspace_lowp + std::size_t(lowp::bf16_back_block(d, 1, false).floats)
             : s.backward_workspace;
}

std::size_t lstm_ln_cache_size(const Dims& d) { return isa::active().lstm_ln_sizes(d).cache; }
std::size_t lstm_ln_forward_workspace_size(const Dims& d) {
  return isa::active().lstm_ln_sizes(d).forward_workspace;
}
std::size_t lstm_ln_backward_workspace_size(const Dims& d) {
  return isa::active().lstm_ln_sizes(d).backward_workspace;
}

#define FUSEDRNN_ROUTE(fn, Args)                                                           \
  template <typename Scalar>                                                               \
  void fn(const Dims& d, const Args<Scalar>& a, const Options& opt, Scalar* workspace) {   \
    isa::kernels<Scalar>().fn(d, a, opt, workspace);                                       \
  }                                                                                        \
  template void fn<float>(const Dims&, const Args<float>&, const Options&, float*);        \
  template void fn<double>(const Dims&, const Args<double>&, const Options&, double*);
FUSEDRNN_ROUTE(lstm_forward, LstmForwardArgs)
FUSEDRNN_ROUTE(lstm_backward, LstmBackwardArgs)
FUSEDRNN_ROUTE(gru_forward, GruForwardArgs)
FUSEDRNN_ROUTE(gru_backward, GruBackwardArgs)
FUSEDRNN_ROUTE(rnn_forward, RnnForwardArgs)
FUSEDRNN_ROUTE(rnn_backward, RnnBackwardArgs)
FUSEDRNN_ROUTE(lstm_ln_forward, LstmLnForwardArgs)
FUSEDRNN_ROUTE(lstm_ln_backward, LstmLnBackwardArgs)
#undef FUSEDRNN_ROUTE

template <typename Scalar>
void reference_gemm(std::int64_t m, std::int64_t n, std::int64_t k, const Scalar* a,
                    const Scalar* b, Scalar* c, int num_threads) {
  isa::kernels<Scalar>().reference_gemm(m, n, k, a, b, c, num_threads);
}
template void reference_gemm<float>(std::int64_t, std::int64_t, std::int64_t, const float*,
                                    const float*, float*, int);
template void reference_gemm<double>(std::int64_t, std::int64_t, std::int64_t, const double*,
                                     const double*, double*, int);

}  // namespace fusedrnn
