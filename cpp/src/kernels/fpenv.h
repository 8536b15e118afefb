// Subnormal numbers inside the kernels: flush-to-zero (FTZ) and denormals-are-zero (DAZ).
//
// Contract (README "Numerics", reference.py): inside every kernel call, subnormal inputs of an
// arithmetic operation are read as zero and subnormal results are written as zero (a signed
// zero). Without this an x86 core takes a microcode assist of ~100+ cycles per subnormal
// operand or result: an LSTM forward on subnormal inputs ran ~100x slower. Normal numbers are
// unaffected, so results on data without subnormals are bitwise the same as without the flush.
//
// FlushDenormals sets MXCSR.FTZ (bit 15) and MXCSR.DAZ (bit 6) on the thread that constructs it
// and restores that thread's previous MXCSR on destruction, so the caller's floating-point
// environment (numpy's, the application's own threads) is never changed by a call. Every thread
// that runs kernel work constructs one: each member of the kernels' OpenMP team (parallel_region
// in kernel.h, the products of step.cc), and the caller's thread in Model::forward and
// Stream::step. Team threads outlive a region (libgomp keeps its pool), so setting the flags once
// per thread would leak them into the caller's later OpenMP work: the guard is per region.
//
// Non-x86 builds: a no-op (the kernels then follow the platform's default subnormal handling).
//
// Internal linkage on purpose: this header is compiled into every instruction-set copy, and with
// -mavx the intrinsics below become VEX instructions; an inline function with external linkage
// could be merged across copies and run an AVX encoding on a CPU without AVX.
#pragma once

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#include <xmmintrin.h>
#define FUSEDRNN_HAVE_MXCSR 1
#endif

namespace fusedrnn {
namespace {

class FlushDenormals {
 public:
#ifdef FUSEDRNN_HAVE_MXCSR
  static constexpr unsigned kFtz = 1u << 15, kDaz = 1u << 6;
  FlushDenormals() noexcept : saved_(_mm_getcsr()) {
    if ((saved_ & (kFtz | kDaz)) != (kFtz | kDaz)) _mm_setcsr(saved_ | kFtz | kDaz);
  }
  ~FlushDenormals() {
    if ((saved_ & (kFtz | kDaz)) != (kFtz | kDaz)) _mm_setcsr(saved_);
  }
#else
  FlushDenormals() noexcept {}
#endif
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
#ifdef FUSEDRNN_HAVE_MXCSR
  unsigned saved_;
#endif
};

}  // namespace
}  // namespace fusedrnn
