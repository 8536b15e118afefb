// One core's read rate from each cache level: 12 independent AVX-512 FMA sums over a buffer of
// 16 KiB to 8 MiB (64-byte aligned loads, each byte read once a pass), best of 7. Standalone, not
// built by CMake:
//
//   g++ -O2 -march=x86-64-v4 bench/read_rate.cc -o /tmp/read_rate && taskset -c 1 /tmp/read_rate
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
int main() {
  for (long kb : {16, 24, 128, 256, 512, 768, 1024, 2048, 8192}) {
    long n = kb * 1024 / 4;
    float* buf = (float*)aligned_alloc(64, n * 4);
    for (long i = 0; i < n; ++i) buf[i] = 1e-3f * (i % 7);
    double best = 0;
    for (int rep = 0; rep < 7; ++rep) {
      long passes = std::max(1L, (long)(200000000 / (n * 4)));
      __m512 acc[12]; for (int i = 0; i < 12; ++i) acc[i] = _mm512_setzero_ps();
      __m512 w = _mm512_set1_ps(0.5f);
      auto t0 = std::chrono::steady_clock::now();
      for (long p = 0; p < passes; ++p)
        for (long i = 0; i + 192 <= n; i += 192)
#pragma GCC unroll 12
          for (int j = 0; j < 12; ++j) acc[j] = _mm512_fmadd_ps(w, _mm512_load_ps(buf + i + 16 * j), acc[j]);
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      float x = 0; for (int i = 0; i < 12; ++i) x += _mm512_reduce_add_ps(acc[i]);
      if (x == 1.2345f) printf(".");
      double bw = passes * (n / 192 * 192) * 4.0 / s / 1e9;
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
    const long m = n / 192 * 192;
    for (int alt = 0; alt < 2; ++alt) {
      double bw[9];
      for (int rep = 0; rep < 9; ++rep) {
        long passes = std::max(2L, (long)(200000000 / (n * 4)));
        __m512 acc[12]; for (int i = 0; i < 12; ++i) acc[i] = _mm512_setzero_ps();
        __m512 w = _mm512_set1_ps(0.5f);
        auto t0 = std::chrono::steady_clock::now();
        for (long p = 0; p < passes; ++p) {
          if (alt && (p & 1)) {
            for (long i = m - 192; i >= 0; i -= 192)
#pragma GCC unroll 12
              for (int j = 0; j < 12; ++j) acc[j] = _mm512_fmadd_ps(w, _mm512_load_ps(buf + i + 16 * j), acc[j]);
          } else {
            for (long i = 0; i < m; i += 192)
#pragma GCC unroll 12
              for (int j = 0; j < 12; ++j) acc[j] = _mm512_fmadd_ps(w, _mm512_load_ps(buf + i + 16 * j), acc[j]);
          }
        }
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        float x = 0; for (int i = 0; i < 12; ++i) x += _mm512_reduce_add_ps(acc[i]);
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
