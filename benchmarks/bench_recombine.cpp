// The exact matmul's last step, per output element: round_int192 vs round_two_levels.
// Same bits (tests/native/test_fixedpoint.cpp); this times them on 4 million random two-level values.
//   g++ -O3 -ffp-contract=off -std=c++17 -I src/include benchmarks/bench_recombine.cpp -o /tmp/bench_recombine && /tmp/bench_recombine
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>
#include "exactforge/fixedpoint.hpp"
using namespace exactforge;
int main() {
  std::mt19937_64 rng(1);
  const int N = 4000000;
  std::vector<int64_t> hi(N), lo(N);
  for (int i = 0; i < N; ++i) {  // the magnitudes of a float32 product's levels at k = 1000, w = 22
    hi[i] = int64_t(rng() >> 10) - (int64_t(1) << 53); lo[i] = int64_t(rng() >> 12) - (int64_t(1) << 51); }
  std::vector<float> out(N);
  const int w = 22, e2 = -80;
  for (int rep = 0; rep < 2; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < N; ++i) { Int192 v; v.add_shifted(hi[i], w); v.add_shifted(lo[i], 0); out[i] = round_int192<float>(v, e2); }
    auto t1 = std::chrono::steady_clock::now();
    int fast = 0;
    for (int i = 0; i < N; ++i) { if (round_two_levels<float>(hi[i], lo[i], w, e2, &out[i])) ++fast; else { Int192 v; v.add_shifted(hi[i], w); v.add_shifted(lo[i], 0); out[i] = round_int192<float>(v, e2);} }
    auto t2 = std::chrono::steady_clock::now();
    std::printf("Int192 path %.1f ns, two-level path %.1f ns per output (%d%% fast)\n",
      std::chrono::duration<double, std::nano>(t1 - t0).count() / N, std::chrono::duration<double, std::nano>(t2 - t1).count() / N, int(100.0 * fast / N));
  }
}
