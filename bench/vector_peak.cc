// The vector units' peak on one core: fp32 FMA, bf16 vdpbf16ps and int8 vpdpbusd, each on 12
// independent register accumulators (no memory operands), best of 3. Standalone, not built by
// CMake; on a CPU with AVX-512 BF16 and VNNI (Zen 4, Sapphire Rapids and later):
//
//   g++ -O2 -march=x86-64-v4 -mavx512bf16 -mavx512vnni bench/vector_peak.cc -o /tmp/vector_peak
//   taskset -c 1 /tmp/vector_peak
//
// On a CPU without AVX-512 (AVX2, FMA: Zen 3 and older) only the fp32 FMA rate, 256-bit:
//
//   g++ -O2 -march=x86-64-v3 bench/vector_peak.cc -o /tmp/vector_peak
//
// The README's Zen 4 figures (fp32 114-117 GFLOP/s, bf16 223-234 GFLOP/s, int8 440-469 GOPS a
// core) come from it. A multiply-add counts as 2 operations (an instruction: fmadd 16 of them,
// vdpbf16ps 32, vpdpbusd 64).
#include <immintrin.h>

#include <chrono>
#include <cstdio>

// Multiply-adds per second (2 operations each) of `iters` rounds of 12 independent accumulators,
// each round `step`(acc[i]) on every accumulator; `per_op`: multiply-adds per instruction.
template <typename V, typename Step, typename Sum>
double rate(long iters, V zero, double per_op, Step step, Sum sum) {
  V acc[12];
  for (V& v : acc) v = zero;
  const auto t0 = std::chrono::steady_clock::now();
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = step(acc[i]);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double total = 0;
  for (const V& v : acc) total += sum(v);
  if (total == 1.0) std::printf(".");  // keeps the sums alive
  return iters * 12 * per_op * 2 / s / 1e9;
}

#if !defined(__AVX512F__)
int main() {
  const long n = 50000000;
  __m256 fa = _mm256_set1_ps(1.0001f), fb = _mm256_set1_ps(0.999f);
  asm volatile("" : "+x"(fa), "+x"(fb));
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    const double f = rate(n, _mm256_setzero_ps(), 8, [&](__m256 c) {
      return _mm256_fmadd_ps(fa, fb, c); }, [](__m256 v) {
        alignas(32) float t[8];
        _mm256_store_ps(t, v);
        return double(t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7]); });
    std::printf("fp32 FMA %.1f GFLOP/s (256-bit)\n", f);
    best = f > best ? f : best;
  }
  std::printf("best: %.1f\n", best);
}
#else
int main() {
  const long n = 50000000;
  // Operands in registers the compiler cannot see through (no constant folding).
  __m512 fa = _mm512_set1_ps(1.0001f), fb = _mm512_set1_ps(0.999f);
  __m512i ba = _mm512_set1_epi32(0x3f803f80), ia = _mm512_set1_epi32(0x01010101);
  asm volatile("" : "+v"(fa), "+v"(fb), "+v"(ba), "+v"(ia));
  double best[3] = {0, 0, 0};
  for (int r = 0; r < 3; ++r) {
    const double f = rate(n, _mm512_setzero_ps(), 16, [&](__m512 c) {
      return _mm512_fmadd_ps(fa, fb, c); }, [](__m512 v) { return _mm512_reduce_add_ps(v); });
    const double b = rate(n, _mm512_setzero_ps(), 32, [&](__m512 c) {
      return _mm512_dpbf16_ps(c, (__m512bh)ba, (__m512bh)ba); },
      [](__m512 v) { return _mm512_reduce_add_ps(v); });
    const double v = rate(n, (__v16si)_mm512_setzero_si512(), 64, [&](__v16si c) {
      return __builtin_ia32_vpdpbusd_v16si(c, (__v16si)ia, (__v16si)ia); },
      [](__v16si x) { return double(_mm512_reduce_add_epi32((__m512i)x)); });
    std::printf("fp32 FMA %.1f GFLOP/s, bf16 vdpbf16ps %.1f GFLOP/s, int8 vpdpbusd %.1f GOPS\n",
                f, b, v);
    best[0] = f > best[0] ? f : best[0], best[1] = b > best[1] ? b : best[1];
    best[2] = v > best[2] ? v : best[2];
  }
  std::printf("best: %.1f / %.1f / %.1f\n", best[0], best[1], best[2]);
}
#endif
