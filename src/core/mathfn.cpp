#include "exactforge/mathfn.hpp"

#include <algorithm>

#include "core/threads.hpp"
#include "kernels/kernels.hpp"

namespace exactforge {

namespace {
template <class T, class F>
void chunked(const T* x, T* out, int64_t n, int threads, F f) {
  // an element's bits never depend on its chunk: only the schedule does
  constexpr int64_t kChunk = 8192;
  const int nt = detail::resolve_threads(threads);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && chunks > 1 && n >= (int64_t(1) << 15))
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * kChunk;
    f(x + i0, out + i0, std::min(kChunk, n - i0));
  }
}
}  // namespace

void exp_n(const float* x, float* out, int64_t n, int threads) { chunked(x, out, n, threads, kernels().exp_f32); }
void exp_n(const double* x, double* out, int64_t n, int threads) { chunked(x, out, n, threads, kernels().exp_f64); }

}  // namespace exactforge
