// The vector units' peak on one core: fp32 FMA, bf16 vdpbf16ps and int8 vpdpbusd, each on 12
// independent register accumulators (no memory operands), best of 3. Standalone, not built by
// CMake; on a CPU with AVX-512 BF16 and VNNI (Zen 4, Sapphire Rapids and later):
//
//   g++ -O2 -march=x86-64-v4 -mavx512bf16 -mavx512vnni bench/vector_peak.cc -o /tmp/vector_peak
//   taskset -c 1 /tmp/vector_peak
//
// The README's Zen 4 figures (fp32 115 GFLOP/s, bf16 230 GFLOP/s, int8 440 GOPS a core) come from
// it. A GFLOP here counts a multiply and an add as 2 (vdpbf16ps: 16 lanes x 2 products x 2;
// vpdpbusd: 16 lanes x 4 products x 2).
#include <immintrin.h>
#include <chrono>
#include <cstdio>
template <int K>
double run_bf16(long iters) {
  __m512 acc[K];
  for (int i = 0; i < K; ++i) acc[i] = _mm512_set1_ps(0.f);
  __m512i a = _mm512_set1_epi32(0x3f803f80), b = _mm512_set1_epi32(0x3f803f80);
  auto t0 = std::chrono::steady_clock::now();
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < K; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)a, (__m512bh)b);
    asm volatile("" : "+v"(a));
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float x = 0; for (int i = 0; i < K; ++i) x += _mm512_reduce_add_ps(acc[i]);
  if (x == 1) std::printf(".");  // keeps the sums alive
  return iters * K * 64.0 / s / 1e9;
}
template <int K>
double run_fma(long iters) {
  __m512 acc[K];
  for (int i = 0; i < K; ++i) acc[i] = _mm512_set1_ps(0.f);
  __m512 a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.999f);
  auto t0 = std::chrono::steady_clock::now();
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < K; ++i) acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
    asm volatile("" : "+v"(a));
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float x = 0; for (int i = 0; i < K; ++i) x += _mm512_reduce_add_ps(acc[i]);
  if (x == 1) std::printf(".");  // keeps the sums alive
  return iters * K * 32.0 / s / 1e9;
}
template <int K>
double run_vnni(long iters) {
  __m512i acc[K];
  for (int i = 0; i < K; ++i) acc[i] = _mm512_setzero_si512();
  __m512i a = _mm512_set1_epi32(0x01010101), b = _mm512_set1_epi32(0x01010101);
  auto t0 = std::chrono::steady_clock::now();
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < K; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
    asm volatile("" : "+v"(a));
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  long x = 0; for (int i = 0; i < K; ++i) x += _mm512_reduce_add_epi32(acc[i]);
  if (x == 1) std::printf(".");  // keeps the sums alive
  return iters * K * 128.0 / s / 1e9;
}
int main() {
  const long n = 50000000;
  double best[3] = {0, 0, 0};
  for (int r = 0; r < 3; ++r) {
    const double f = run_fma<12>(n), b = run_bf16<12>(n), v = run_vnni<12>(n);
    std::printf("fp32 FMA %.1f GFLOP/s, bf16 vdpbf16ps %.1f GFLOP/s, int8 vpdpbusd %.1f GOPS\n", f, b, v);
    best[0] = f > best[0] ? f : best[0], best[1] = b > best[1] ? b : best[1];
    best[2] = v > best[2] ? v : best[2];
  }
  std::printf("best: %.1f / %.1f / %.1f\n", best[0], best[1], best[2]);
}
