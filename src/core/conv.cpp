#include "exactforge/conv.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "exactforge/reduce.hpp"

namespace exactforge {

void ConvGeometry::check() const {
  if (B < 1 || C < 1 || H < 1 || W < 1) throw std::invalid_argument("conv: input sizes must be positive");
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1 || ph < 0 || pw < 0)
    throw std::invalid_argument("conv: kernel, stride and dilation must be positive, padding >= 0");
  if (kh > (int64_t(1) << 20) || kw > (int64_t(1) << 20) || ph > (int64_t(1) << 20) || pw > (int64_t(1) << 20) ||
      dh > (int64_t(1) << 20) || dw > (int64_t(1) << 20) || sh > (int64_t(1) << 20) || sw > (int64_t(1) << 20))
    throw std::invalid_argument("conv: kernel, stride, padding or dilation above 2^20");
  if (H + 2 * ph < dh * (kh - 1) + 1 || W + 2 * pw < dw * (kw - 1) + 1)
    throw std::invalid_argument("conv: the kernel does not fit the padded input");
  const double entries = double(C) * kh * kw * double(B) * Ho() * Wo();
  if (entries > double(int64_t(1) << 40) || double(B) * C * H * W > double(int64_t(1) << 40))
    throw std::invalid_argument("conv: more than 2^40 entries");
}

namespace {
int nthreads(int threads) {
  int nt = threads > 0 ? threads : get_num_threads();
  return std::max(1, std::min(nt, kMaxThreads));
}
}  // namespace

template <class T>
void im2col(const T* x, T* cols, const ConvGeometry& g, int threads) {
  const int64_t Ho = g.Ho(), Wo = g.Wo(), L = Ho * Wo, N = g.B * L, CKK = g.C * g.kh * g.kw;
  const int nt = nthreads(threads);
  (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && CKK * N >= (1 << 18))
  for (int64_t r = 0; r < CKK; ++r) {
    const int64_t kj = r % g.kw, ki = (r / g.kw) % g.kh, c = r / (g.kh * g.kw);
    for (int64_t b = 0; b < g.B; ++b) {
      const T* xc = x + (b * g.C + c) * g.H * g.W;
      T* o = cols + r * N + b * L;
      for (int64_t oh = 0; oh < Ho; ++oh) {
        const int64_t h = oh * g.sh - g.ph + ki * g.dh;
        T* orow = o + oh * Wo;
        if (h < 0 || h >= g.H) {
          std::fill(orow, orow + Wo, T(0));
          continue;
        }
        const T* xrow = xc + h * g.W;
        for (int64_t ow = 0; ow < Wo; ++ow) {
          const int64_t w = ow * g.sw - g.pw + kj * g.dw;
          orow[ow] = (w >= 0 && w < g.W) ? xrow[w] : T(0);
        }
      }
    }
  }
}

template <class T>
void col2im(const T* cols, T* x, const ConvGeometry& g, int threads) {
  const int64_t Ho = g.Ho(), Wo = g.Wo(), L = Ho * Wo, N = g.B * L, CKK = g.C * g.kh * g.kw;
  const int nt = nthreads(threads);
  (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && CKK * N >= (1 << 18))
  for (int64_t b = 0; b < g.B; ++b) {
    T* xb = x + b * g.C * g.H * g.W;
    std::fill(xb, xb + g.C * g.H * g.W, T(0));
    for (int64_t r = 0; r < CKK; ++r) {  // torch's order: c_col, then oh, then ow
      const int64_t kj = r % g.kw, ki = (r / g.kw) % g.kh, c = r / (g.kh * g.kw);
      const T* src = cols + r * N + b * L;
      T* xc = xb + c * g.H * g.W;
      for (int64_t oh = 0; oh < Ho; ++oh) {
        const int64_t h = oh * g.sh - g.ph + ki * g.dh;
        if (h < 0 || h >= g.H) continue;
        T* xrow = xc + h * g.W;
        const T* srow = src + oh * Wo;
        for (int64_t ow = 0; ow < Wo; ++ow) {
          const int64_t w = ow * g.sw - g.pw + kj * g.dw;
          if (w >= 0 && w < g.W) xrow[w] += srow[ow];
        }
      }
    }
  }
}

template void im2col<float>(const float*, float*, const ConvGeometry&, int);
template void im2col<double>(const double*, double*, const ConvGeometry&, int);
template void col2im<float>(const float*, float*, const ConvGeometry&, int);
template void col2im<double>(const double*, double*, const ConvGeometry&, int);

}  // namespace exactforge
