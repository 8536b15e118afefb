// The public kernels of fusedrnn.h: each picks, at run time, the widest instruction-set copy of
// the kernels that was compiled in and that this CPU runs (isa_avx512 > isa_avx2 > isa_base).
// FUSEDRNN_ISA=baseline|avx2|avx512 in the environment asks for a narrower copy (for tests and
// comparisons); a copy the CPU cannot run, or that was not built, is never chosen.
#include <cstdlib>
#include <cstring>
#include <string>

#include "dispatch.h"
#include "instantiate.h"
#include "fusedrnn/fusedrnn.h"

#define FUSEDRNN_ISA_NS isa_base
#include "isa_kernels.inc"
#undef FUSEDRNN_ISA_NS
#ifdef FUSEDRNN_HAVE_ISA_AVX2
#define FUSEDRNN_ISA_NS isa_avx2
#include "isa_kernels.inc"
#undef FUSEDRNN_ISA_NS
#endif
#ifdef FUSEDRNN_HAVE_ISA_AVX512
#define FUSEDRNN_ISA_NS isa_avx512
#include "isa_kernels.inc"
#undef FUSEDRNN_ISA_NS
#endif

namespace fusedrnn {
namespace {

enum class Level { base = 0, avx2 = 1, avx512 = 2 };

bool compiled(Level l) {
  switch (l) {
    case Level::avx512:
#ifdef FUSEDRNN_HAVE_ISA_AVX512
      return true;
#else
      return false;
#endif
    case Level::avx2:
#ifdef FUSEDRNN_HAVE_ISA_AVX2
      return true;
#else
      return false;
#endif
    default:
      return true;
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
  if (const char* want = std::getenv("FUSEDRNN_ISA")) {
    Level w = best;
    if (!std::strcmp(want, "baseline")) w = Level::base;
    if (!std::strcmp(want, "avx2")) w = Level::avx2;
    if (!std::strcmp(want, "avx512")) w = Level::avx512;
    if (w < best && compiled(w)) best = w;
  }
  return best;
}

// Chosen once, on first use; constant afterwards.
Level active() {
  static const Level level = select();
  return level;
}

}  // namespace

#ifdef FUSEDRNN_HAVE_ISA_AVX512
#define FUSEDRNN_CASE_AVX512(fn, ...) \
  case Level::avx512:                 \
    return isa_avx512::fn(__VA_ARGS__);
#else
#define FUSEDRNN_CASE_AVX512(fn, ...)
#endif
#ifdef FUSEDRNN_HAVE_ISA_AVX2
#define FUSEDRNN_CASE_AVX2(fn, ...) \
  case Level::avx2:                 \
    return isa_avx2::fn(__VA_ARGS__);
#else
#define FUSEDRNN_CASE_AVX2(fn, ...)
#endif
#define FUSEDRNN_DISPATCH(fn, ...)        \
  switch (active()) {                     \
    FUSEDRNN_CASE_AVX512(fn, __VA_ARGS__) \
    FUSEDRNN_CASE_AVX2(fn, __VA_ARGS__)   \
    default:                              \
      return isa_base::fn(__VA_ARGS__);   \
  }

const char* active_isa() { FUSEDRNN_DISPATCH(isa_name, ) }

std::string compiled_isas() {
  std::string s = isa_base::isa_name();
#ifdef FUSEDRNN_HAVE_ISA_AVX2
  s += std::string(", ") + isa_avx2::isa_name();
#endif
#ifdef FUSEDRNN_HAVE_ISA_AVX512
  s += std::string(", ") + isa_avx512::isa_name();
#endif
  return s;
}

// Sizes do not depend on the instruction set.
std::size_t lstm_cache_size(const Dims& d) { return isa_base::lstm_cache_size(d); }
std::size_t lstm_forward_workspace_size(const Dims& d) {
  return isa_base::lstm_forward_workspace_size(d);
}
std::size_t lstm_backward_workspace_size(const Dims& d) {
  return isa_base::lstm_backward_workspace_size(d);
}
std::size_t gru_cache_size(const Dims& d) { return isa_base::gru_cache_size(d); }
std::size_t gru_forward_workspace_size(const Dims& d) {
  return isa_base::gru_forward_workspace_size(d);
}
std::size_t gru_backward_workspace_size(const Dims& d) {
  return isa_base::gru_backward_workspace_size(d);
}
std::size_t rnn_cache_size(const Dims& d) { return isa_base::rnn_cache_size(d); }
std::size_t rnn_forward_workspace_size(const Dims& d) {
  return isa_base::rnn_forward_workspace_size(d);
}
std::size_t rnn_backward_workspace_size(const Dims& d) {
  return isa_base::rnn_backward_workspace_size(d);
}

template <typename Scalar>
void lstm_forward(const Dims& d, const Options& opt, const Scalar* x, const Scalar* w_ih,
                  const Scalar* w_hh, const Scalar* b_ih, const Scalar* b_hh, const Scalar* h0,
                  const Scalar* c0, const Scalar* w_peep, const Scalar* w_hr,
                  const std::int64_t* lengths, Scalar* y, Scalar* h_n, Scalar* c_n, Scalar* cache,
                  Scalar* workspace) {
  FUSEDRNN_DISPATCH(lstm_forward<Scalar>, d, opt, x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_peep,
                    w_hr, lengths, y, h_n, c_n, cache, workspace)
}

template <typename Scalar>
void lstm_backward(const Dims& d, const Options& opt, const Scalar* x, const Scalar* w_ih,
                   const Scalar* w_hh, const Scalar* w_peep, const Scalar* w_hr,
                   const std::int64_t* lengths, const Scalar* cache, const Scalar* dy,
                   const Scalar* dh_n, const Scalar* dc_n, Scalar* dx, Scalar* dh0, Scalar* dc0,
                   Scalar* dw_ih, Scalar* dw_hh, Scalar* db_ih, Scalar* db_hh, Scalar* dw_peep,
                   Scalar* dw_hr, Scalar* workspace) {
  FUSEDRNN_DISPATCH(lstm_backward<Scalar>, d, opt, x, w_ih, w_hh, w_peep, w_hr, lengths, cache,
                    dy, dh_n, dc_n, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_hr,
                    workspace)
}

template <typename Scalar>
void gru_forward(const Dims& d, const Options& opt, GruVariant variant, const Scalar* x,
                 const Scalar* w_ih, const Scalar* w_hh, const Scalar* b_ih, const Scalar* b_hh,
                 const Scalar* h0, const std::int64_t* lengths, Scalar* y, Scalar* h_n,
                 Scalar* cache, Scalar* workspace) {
  FUSEDRNN_DISPATCH(gru_forward<Scalar>, d, opt, variant, x, w_ih, w_hh, b_ih, b_hh, h0, lengths,
                    y, h_n, cache, workspace)
}

template <typename Scalar>
void gru_backward(const Dims& d, const Options& opt, GruVariant variant, const Scalar* x,
                  const Scalar* w_ih, const Scalar* w_hh, const std::int64_t* lengths,
                  const Scalar* cache, const Scalar* dy, const Scalar* dh_n, Scalar* dx,
                  Scalar* dh0, Scalar* dw_ih, Scalar* dw_hh, Scalar* db_ih, Scalar* db_hh,
                  Scalar* workspace) {
  FUSEDRNN_DISPATCH(gru_backward<Scalar>, d, opt, variant, x, w_ih, w_hh, lengths, cache, dy,
                    dh_n, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, workspace)
}

template <typename Scalar>
void rnn_forward(const Dims& d, const Options& opt, Nonlinearity act, const Scalar* x,
                 const Scalar* w_ih, const Scalar* w_hh, const Scalar* b_ih, const Scalar* b_hh,
                 const Scalar* h0, const std::int64_t* lengths, Scalar* y, Scalar* h_n,
                 Scalar* cache, Scalar* workspace) {
  FUSEDRNN_DISPATCH(rnn_forward<Scalar>, d, opt, act, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, y,
                    h_n, cache, workspace)
}

template <typename Scalar>
void rnn_backward(const Dims& d, const Options& opt, Nonlinearity act, const Scalar* x,
                  const Scalar* w_ih, const Scalar* w_hh, const std::int64_t* lengths,
                  const Scalar* cache, const Scalar* dy, const Scalar* dh_n, Scalar* dx,
                  Scalar* dh0, Scalar* dw_ih, Scalar* dw_hh, Scalar* db_ih, Scalar* db_hh,
                  Scalar* workspace) {
  FUSEDRNN_DISPATCH(rnn_backward<Scalar>, d, opt, act, x, w_ih, w_hh, lengths, cache, dy, dh_n,
                    dx, dh0, dw_ih, dw_hh, db_ih, db_hh, workspace)
}

template <typename Scalar>
void reference_gemm(std::int64_t m, std::int64_t n, std::int64_t k, const Scalar* a,
                    const Scalar* b, Scalar* c, int num_threads) {
  FUSEDRNN_DISPATCH(reference_gemm<Scalar>, m, n, k, a, b, c, num_threads)
}

#define FUSEDRNN_INSTANTIATE(Scalar)  \
  FUSEDRNN_INSTANTIATE_LSTM(Scalar) \
  FUSEDRNN_INSTANTIATE_GRU(Scalar)  \
  FUSEDRNN_INSTANTIATE_RNN(Scalar) \
  template void reference_gemm<Scalar>(std::int64_t, std::int64_t, std::int64_t, const Scalar*, \
                                       const Scalar*, Scalar*, int);
FUSEDRNN_INSTANTIATE(float)
FUSEDRNN_INSTANTIATE(double)

}  // namespace fusedrnn
