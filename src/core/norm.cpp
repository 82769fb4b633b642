#include "exactforge/norm.hpp"

#include <algorithm>

#include "core/threads.hpp"

namespace exactforge {

namespace {
// The core's rule for a call's threads (detail::resolve_threads), one thread for small passes.
int norm_threads(int threads, int64_t work) {
  return work >= (int64_t(1) << 16) ? detail::resolve_threads(threads) : 1;
}
}  // namespace

template <class T>
void batch_norm_normalize(const T* x, const T* mean, const T* rstd, const T* w, const T* b, T* xhat, T* y, int64_t N,
                          int64_t C, int64_t L, int threads) {
  const int nt = norm_threads(threads, N * C * L);
  (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const int64_t c = nc % C, base = nc * L;
    const T mu = mean[c], r = rstd[c];
    for (int64_t l = 0; l < L; ++l) {
      const T xc = x[base + l] - mu;
      xhat[base + l] = xc * r;
    }
    if (!w && !b) {
      if (y != xhat) std::copy(xhat + base, xhat + base + L, y + base);
      continue;
    }
    const T wc = w ? w[c] : T(1), bc = b ? b[c] : T(0);
    for (int64_t l = 0; l < L; ++l) {
      T v = xhat[base + l];
      if (w) v = v * wc;
      if (b) v = v + bc;
      y[base + l] = v;
    }
  }
}

template <class T>
void batch_norm_input_grad(const T* dy, const T* xhat, const T* w, const T* mg, const T* mgx, const T* rstd, T* dx,
                           int64_t N, int64_t C, int64_t L, int threads) {
  const int nt = norm_threads(threads, N * C * L);
  (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const int64_t c = nc % C, base = nc * L;
    const T a = mg[c], s = mgx[c], r = rstd[c];
    if (w) {
      const T wc = w[c];
      for (int64_t l = 0; l < L; ++l) {
        const T g = dy[base + l] * wc;
        const T u = g - a;
        const T q = xhat[base + l] * s;
        dx[base + l] = (u - q) * r;
      }
    } else {
      for (int64_t l = 0; l < L; ++l) {
        const T u = dy[base + l] - a;
        const T q = xhat[base + l] * s;
        dx[base + l] = (u - q) * r;
      }
    }
  }
}

template void batch_norm_normalize<float>(const float*, const float*, const float*, const float*, const float*,
                                          float*, float*, int64_t, int64_t, int64_t, int);
template void batch_norm_normalize<double>(const double*, const double*, const double*, const double*, const double*,
                                           double*, double*, int64_t, int64_t, int64_t, int);
template void batch_norm_input_grad<float>(const float*, const float*, const float*, const float*, const float*,
                                           const float*, float*, int64_t, int64_t, int64_t, int);
template void batch_norm_input_grad<double>(const double*, const double*, const double*, const double*,
                                            const double*, const double*, double*, int64_t, int64_t, int64_t, int);

}  // namespace exactforge
