// The CPU's float FMA peak, measured: 12 independent chains of fused multiply-adds per thread
// (more than latency x pipes on any current x86), for 256-bit and, where the CPU has it, 512-bit
// vectors, on every thread at once. bench_reduce.py compiles and runs it to state GFLOP/s as a
// percentage of this peak (this VM reports no clock to compute a nominal one from).
//   g++ -O3 -march=native -fopenmp benchmarks/bench_fma_peak.cpp -o /tmp/fma_peak && /tmp/fma_peak 2
// Prints one JSON object: {"threads": T, "avx2_f32_gflops": ..., "avx512_f32_gflops": ... or null,
// "avx512_f64_gflops": ... or null, "vnni_int8_gops": ... or null}. The int8 rate runs 12 chains of
// vpdpbusd (64 int8 multiply-adds each) and counts a multiply-add as two operations, as GFLOP/s do.
#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

template <class V, class F>
static double run(int threads, int lanes, F fma) {
  constexpr long kIters = 20000000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    double sink = 0;
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
      V acc[12];
      for (int i = 0; i < 12; ++i) acc[i] = V{} + 1.0f * i;
      V x = V{} + 0.999999f, y = V{} + 1e-7f;
      for (long it = 0; it < kIters; ++it)
        for (int i = 0; i < 12; ++i) acc[i] = fma(acc[i], x, y);
      for (int i = 0; i < 12; ++i) sink += acc[i][0];
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double gf = 2.0 * kIters * 12 * lanes * threads / s / 1e9;
    if (gf > best) best = gf;
    if (sink == 42.0) std::printf(" ");  // keep the chains
  }
  return best;
}

typedef float v8f __attribute__((vector_size(32)));
#if defined(__AVX512F__)
typedef float v16f __attribute__((vector_size(64)));
typedef double v8d __attribute__((vector_size(64)));
#endif

#if defined(__AVX512VNNI__)
static double vnni_peak(int threads) {
  constexpr long kIters = 20000000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    long sink = 0;
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
      __m512i acc[12];
      for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_epi32(i);
      const __m512i x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(-2);
      for (long it = 0; it < kIters; ++it)
        for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], x, y);
      for (int i = 0; i < 12; ++i) sink += _mm512_reduce_add_epi32(acc[i]);
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double g = 2.0 * kIters * 12 * 64 * threads / s / 1e9;
    if (g > best) best = g;
    if (sink == 42) std::printf(" ");
  }
  return best;
}
#endif

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  const double g256 = run<v8f>(threads, 8, [](v8f a, v8f b, v8f c) { return (v8f)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); });
#if defined(__AVX512F__)
  const double g512 = run<v16f>(threads, 16, [](v16f a, v16f b, v16f c) { return (v16f)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c); });
  const double d512 = run<v8d>(threads, 8, [](v8d a, v8d b, v8d c) { return (v8d)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c); });
#if defined(__AVX512VNNI__)
  const double v8 = vnni_peak(threads);
  std::printf("{\"threads\": %d, \"avx2_f32_gflops\": %.1f, \"avx512_f32_gflops\": %.1f, \"avx512_f64_gflops\": %.1f, "
              "\"vnni_int8_gops\": %.1f}\n", threads, g256, g512, d512, v8);
#else
  std::printf("{\"threads\": %d, \"avx2_f32_gflops\": %.1f, \"avx512_f32_gflops\": %.1f, \"avx512_f64_gflops\": %.1f, "
              "\"vnni_int8_gops\": null}\n", threads, g256, g512, d512);
#endif
#else
  std::printf("{\"threads\": %d, \"avx2_f32_gflops\": %.1f, \"avx512_f32_gflops\": null, \"avx512_f64_gflops\": null, "
              "\"vnni_int8_gops\": null}\n", threads, g256);
#endif
  return 0;
}
