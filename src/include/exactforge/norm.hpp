// BatchNorm's element-wise passes, each one pass over the activations (N x C x L, channel c's
// values at n * C * L + c * L + l). Every step is the single IEEE operation the unfused tensor
// expression performs, in the same order, so the results are those bits: the core is built
// without contraction (CMakeLists.txt), so no a * b + c becomes a fused multiply-add.
#pragma once
#include <cstdint>

namespace exactforge {

/// xhat = (x - mean[c]) * rstd[c]; y = xhat * w[c] (if w) + b[c] (if b); y = xhat when neither.
template <class T>
void batch_norm_normalize(const T* x, const T* mean, const T* rstd, const T* w, const T* b, T* xhat, T* y, int64_t N,
                          int64_t C, int64_t L, int threads);
/// dx = ((g - mg[c]) - xhat * mgx[c]) * rstd[c] with g = dy * w[c] (dy without w).
template <class T>
void batch_norm_input_grad(const T* dy, const T* xhat, const T* w, const T* mg, const T* mgx, const T* rstd, T* dx,
                           int64_t N, int64_t C, int64_t L, int threads);

}  // namespace exactforge
