// One core's read rate from each cache level: 12 independent AVX-512 FMA sums over a buffer of
// 16 KiB to 8 MiB (64-byte aligned loads, each byte read once a pass), best of 7. Standalone, not
// built by CMake:
//
//   g++ -O2 -march=x86-64-v4 bench/read_rate.cc -o /tmp/read_rate && taskset -c 1 /tmp/read_rate
//
// On a CPU without AVX-512 (AVX2, FMA: Zen 3 and older), the same with 256-bit loads:
//
//   g++ -O2 -march=x86-64-v3 bench/read_rate.cc -o /tmp/read_rate && taskset -c 1 /tmp/read_rate
//
// The README's bounds of the H = 128 real-time rows (bytes of weights read per step over this
// rate) use it.
//
// A second table reads buffers of 768 KiB to 3 MiB pass after pass, as a batch-1 step reads its
// weights: in the same order every pass (cyclic), and in alternating order (ascending, then
// descending), where a pass starts on what the previous one read last, still in L2. Median of
// 9 runs: the bound of the single-step cells at H = 256, N = 1 (README).
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#if defined(__AVX512F__)
using V = __m512;
constexpr long L = 16;  // floats a vector
inline V vzero() { return _mm512_setzero_ps(); }
inline V vset(float x) { return _mm512_set1_ps(x); }
inline V vload(const float* p) { return _mm512_load_ps(p); }
inline V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline float vsum(V v) { return _mm512_reduce_add_ps(v); }
#else
using V = __m256;
constexpr long L = 8;
inline V vzero() { return _mm256_setzero_ps(); }
inline V vset(float x) { return _mm256_set1_ps(x); }
inline V vload(const float* p) { return _mm256_load_ps(p); }
inline V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(V v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#endif
constexpr long B = 12 * L;  // floats a round of the 12 sums
int main() {
  for (long kb : {16, 24, 128, 256, 512, 768, 1024, 2048, 8192}) {
    long n = kb * 1024 / 4;
    float* buf = (float*)aligned_alloc(64, n * 4);
    for (long i = 0; i < n; ++i) buf[i] = 1e-3f * (i % 7);
    double best = 0;
    for (int rep = 0; rep < 7; ++rep) {
      long passes = std::max(1L, (long)(200000000 / (n * 4)));
      V acc[12]; for (int i = 0; i < 12; ++i) acc[i] = vzero();
      V w = vset(0.5f);
      auto t0 = std::chrono::steady_clock::now();
      for (long p = 0; p < passes; ++p)
        for (long i = 0; i + B <= n; i += B)
#pragma GCC unroll 12
          for (int j = 0; j < 12; ++j) acc[j] = vfma(w, vload(buf + i + L * j), acc[j]);
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      float x = 0; for (int i = 0; i < 12; ++i) x += vsum(acc[i]);
      if (x == 1.2345f) printf(".");
      double bw = passes * (n / B * B) * 4.0 / s / 1e9;
      if (bw > best) best = bw;
    }
    printf("%6ld KiB: %.0f bytes/ns\n", kb, best);
    free(buf);
  }
  printf("\npass after pass, median of 9 runs:\n");
  for (long kb : {768, 1024, 1536, 2048, 3072}) {
    long n = kb * 1024 / 4;
    float* buf = (float*)aligned_alloc(64, n * 4);
    for (long i = 0; i < n; ++i) buf[i] = 1e-3f * (i % 7);
    const long m = n / B * B;
    for (int alt = 0; alt < 2; ++alt) {
      double bw[9];
      for (int rep = 0; rep < 9; ++rep) {
        long passes = std::max(2L, (long)(200000000 / (n * 4)));
        V acc[12]; for (int i = 0; i < 12; ++i) acc[i] = vzero();
        V w = vset(0.5f);
        auto t0 = std::chrono::steady_clock::now();
        for (long p = 0; p < passes; ++p) {
          if (alt && (p & 1)) {
            for (long i = m - B; i >= 0; i -= B)
#pragma GCC unroll 12
              for (int j = 0; j < 12; ++j) acc[j] = vfma(w, vload(buf + i + L * j), acc[j]);
          } else {
            for (long i = 0; i < m; i += B)
#pragma GCC unroll 12
              for (int j = 0; j < 12; ++j) acc[j] = vfma(w, vload(buf + i + L * j), acc[j]);
          }
        }
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        float x = 0; for (int i = 0; i < 12; ++i) x += vsum(acc[i]);
        if (x == 1.2345f) printf(".");
        bw[rep] = passes * m * 4.0 / s / 1e9;
      }
      std::sort(bw, bw + 9);
      printf("%6ld KiB %s: %.0f bytes/ns, %.1f us a pass\n", kb, alt ? "alternating" : "cyclic     ",
             bw[4], m * 4.0 / bw[4] / 1e3);
    }
    free(buf);
  }
}
