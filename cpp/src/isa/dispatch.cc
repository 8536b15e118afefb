// The choice of the instruction-set table (once per process) and the public kernels of
// fusedrnn.h, each a call through the chosen table (isa/table.h).
//
// Levels, widest first: amx, avx512_bf16 (the avx512 copy's float kernels with the hardware
// low-precision tiers of lowp/native.cc), avx512, avx2, baseline (the compiled copies, each with
// its software low-precision tier). The widest level that this build, CPU and OS run is used.
// FUSEDRNN_ISA=baseline|sse2|avx2|avx512|avx512_bf16|amx (any case) in the environment asks for
// a narrower one (for tests and comparisons): the widest level at or below it that runs here; an
// unknown value throws std::invalid_argument from every call. requested_level() is the one
// parser of FUSEDRNN_ISA, active() the one choice: the float kernels and the low-precision tier
// (lowp::active_tier) always come from the same table.
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <stdexcept>
#include <string>

#if defined(__linux__) && (defined(__x86_64__) || defined(__i386__))
#include <sys/syscall.h>
#include <unistd.h>
#endif

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
#if defined(FUSEDRNN_HAVE_LOWP_NATIVE) && defined(FUSEDRNN_HAVE_ISA_AVX512)
#define FUSEDRNN_NATIVE_TABLES 1
namespace fusedrnn {
namespace lowp {
namespace tier_bf16 {
void fill_lowp(isa::Lowp& l);  // lowp/native.cc
}
namespace tier_amx {
void fill_lowp(isa::Lowp& l);  // lowp/native.cc
}
}  // namespace lowp
}  // namespace fusedrnn
#endif

namespace fusedrnn {
namespace isa {
namespace {

#ifdef FUSEDRNN_NATIVE_TABLES
// The avx512 copy's table with the low-precision block of a hardware tier.
template <typename Fill>
Table native_table(Fill fill) {
  Table t = isa_avx512::table();
  fill(t.lowp);
  return t;
}
#endif

// A copy's table at its level: its lowp block's tier is the level it is chosen at (a single copy
// built with -march=native is the baseline level, whatever its flags: the tier numbering must
// name a table that table_at finds).
Table at_level(const Table& copy, Level l) {
  Table t = copy;
  t.lowp.tier = int(l);
  return t;
}

// The tables built, by level (null: not built).
const Table* compiled(Level l) {
  switch (l) {
    case Level::amx:
#ifdef FUSEDRNN_NATIVE_TABLES
    {
      static const Table t = native_table(lowp::tier_amx::fill_lowp);
      return &t;
    }
#else
      return nullptr;
#endif
    case Level::avx512_bf16:
#ifdef FUSEDRNN_NATIVE_TABLES
    {
      static const Table t = native_table(lowp::tier_bf16::fill_lowp);
      return &t;
    }
#else
      return nullptr;
#endif
    case Level::avx512:
#ifdef FUSEDRNN_HAVE_ISA_AVX512
    {
      static const Table t = at_level(isa_avx512::table(), Level::avx512);
      return &t;
    }
#else
      return nullptr;
#endif
    case Level::avx2:
#ifdef FUSEDRNN_HAVE_ISA_AVX2
    {
      static const Table t = at_level(isa_avx2::table(), Level::avx2);
      return &t;
    }
#else
      return nullptr;
#endif
    default: {
      static const Table t = at_level(isa_base::table(), Level::base);
      return &t;
    }
  }
}

// The x86-64-v3 / x86-64-v4 feature sets the copies are compiled for, and the hardware tiers'
// extensions on top of x86-64-v4.
bool cpu_runs(Level l) {
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
  switch (l) {
    case Level::avx2:
      return v3;
    case Level::avx512:
      return v4;
    case Level::avx512_bf16:
      return bf16;
    case Level::amx:
      return bf16 && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
             __builtin_cpu_supports("amx-int8");
    default:
      break;
  }
#endif
  return l == Level::base;
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

Level select() {
  Level best = Level::base;
  for (Level l : {Level::avx2, Level::avx512, Level::avx512_bf16, Level::amx})
    if (table_at(l)) best = l;
  const Level req = requested_level();
  if (req != Level::unset && req < best) {
    // The widest level at or below the request that runs here (a copy may be missing).
    Level w = req;
    while (!table_at(w)) w = Level(int(w) - 1);
    best = w;
  }
  return best;
}

}  // namespace

const Table* table_at(Level l) {
  // Found once per process (amx: the OS is asked once).
  static const struct Runnable {
    const Table* at[5] = {};
    Runnable() {
      for (int i = 0; i < 5; ++i) {
        const Level v = Level(i);
        const Table* t = compiled(v);
        if (t && cpu_runs(v) && (v != Level::amx || os_grants_amx())) at[i] = t;
      }
    }
  } runnable;
  const int i = int(l);
  return i >= 0 && i < 5 ? runnable.at[i] : nullptr;
}

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
  static const Table& table = *table_at(select());  // select() throws: tried again next call
  return table;
}

std::string compiled_isas() {
  std::string s;
  for (Level l : {Level::base, Level::avx2, Level::avx512})  // the float copies
    if (const Table* t = compiled(l)) s += (s.empty() ? "" : ", ") + std::string(t->name);
  return s;
}

}  // namespace isa

// ---------------------------------------------------------------------------------------------
// The public API: sizes and kernels through the active copy's table.

std::size_t lstm_cache_size(const Dims& d) { return isa::active().lstm_sizes(d).cache; }
// precision = bfloat16 / int8: the bf16 / int8 block (lowp.h) in front of the float32 layout
// (without its packed weights: Sizes::forward_workspace_lowp).
std::size_t lstm_forward_workspace_size(const Dims& d, Precision p) {
  const isa::Sizes s = isa::active().lstm_sizes(d);
  if (p == Precision::int8)
    return s.forward_workspace_lowp + std::size_t(lowp::s8_block(d, 4, false).floats);
  return p == Precision::bfloat16
             ? s.forward_workspace_lowp + std::size_t(lowp::bf16_block(d, 4, false).floats)
             : s.forward_workspace;
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
// precision = bfloat16 / int8: the bf16 / int8 block (lowp.h) in front of the float32 layout
// (without its packed weights: Sizes::forward_workspace_lowp).
std::size_t gru_forward_workspace_size(const Dims& d, Precision p) {
  const isa::Sizes s = isa::active().gru_sizes(d);
  if (p == Precision::int8)
    return s.forward_workspace_lowp + std::size_t(lowp::s8_block(d, 3, true).floats);
  return p == Precision::bfloat16
             ? s.forward_workspace_lowp + std::size_t(lowp::bf16_block(d, 3, true).floats)
             : s.forward_workspace;
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
// precision = bfloat16 / int8: the bf16 / int8 block (lowp.h) in front of the float32 layout
// (without its packed weights: Sizes::forward_workspace_lowp).
std::size_t rnn_forward_workspace_size(const Dims& d, Precision p) {
  const isa::Sizes s = isa::active().rnn_sizes(d);
  if (p == Precision::int8)
    return s.forward_workspace_lowp + std::size_t(lowp::s8_block(d, 1, false).floats);
  return p == Precision::bfloat16
             ? s.forward_workspace_lowp + std::size_t(lowp::bf16_block(d, 1, false).floats)
             : s.forward_workspace;
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

std::size_t gru_ln_cache_size(const Dims& d) { return isa::active().gru_ln_sizes(d).cache; }
std::size_t gru_ln_forward_workspace_size(const Dims& d) {
  return isa::active().gru_ln_sizes(d).forward_workspace;
}
std::size_t gru_ln_backward_workspace_size(const Dims& d) {
  return isa::active().gru_ln_sizes(d).backward_workspace;
}

namespace {
void check_call(const char* fn, const Dims& d, const Options& opt) {
  if (opt.num_threads < 0 || opt.num_threads > kMaxThreads)
    throw std::invalid_argument(std::string(fn) + ": num_threads must lie in [0, " +
                                std::to_string(kMaxThreads) + "] (0: OpenMP's default), got " +
                                std::to_string(opt.num_threads));
  // int8: each product's sum is exact in int32 only while 127^2 K < 2^31 (lowp.h); wider
  // inputs or states would wrap silently
  if (opt.precision == Precision::int8 && std::max(d.C, d.H) > lowp::kMaxS8Depth)
    throw std::invalid_argument(std::string(fn) + ": int8 needs input_size and hidden_size <= " +
                                std::to_string(lowp::kMaxS8Depth) + " (the int32 sums of 127^2 "
                                "products), got C = " + std::to_string(d.C) + ", H = " +
                                std::to_string(d.H));
}
}  // namespace

#define FUSEDRNN_ROUTE(fn, Args)                                                           \
  template <typename Scalar>                                                               \
  void fn(const Dims& d, const Args<Scalar>& a, const Options& opt, Scalar* workspace) {   \
    check_call(#fn, d, opt);                                                               \
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
FUSEDRNN_ROUTE(gru_ln_forward, GruLnForwardArgs)
FUSEDRNN_ROUTE(gru_ln_backward, GruLnBackwardArgs)
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

template <typename Scalar>
void gemm_tn_add_terms(std::int64_t m, std::int64_t n, const TnTerm<Scalar>* terms,
                       std::int64_t count, Scalar* c, std::int64_t ldc, int num_threads) {
  isa::kernels<Scalar>().gemm_tn_add_terms(m, n, terms, count, c, ldc, num_threads);
}
template void gemm_tn_add_terms<float>(std::int64_t, std::int64_t, const TnTerm<float>*,
                                       std::int64_t, float*, std::int64_t, int);
template void gemm_tn_add_terms<double>(std::int64_t, std::int64_t, const TnTerm<double>*,
                                        std::int64_t, double*, std::int64_t, int);

}  // namespace fusedrnn
