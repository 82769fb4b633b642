// The optimizer updates of a reproducible step, element by element, with one written-down
// rounding per operation: the same bits on every CPU, ISA level and C library.
//
// Each update is the arithmetic of torch's vectorised CPU kernels (AVX2 and AVX-512 builds)
// for torch.optim's single-tensor SGD, Adam/AdamW and RMSprop, spelt out: a fused
// multiply-add where those kernels fuse (add with alpha, lerp, addcmul), separately rounded
// operations elsewhere, and a correctly rounded square root where torch calls MKL's (whose
// bits follow the CPU vendor and the MKL branch). The core is built without contraction, so
// std::fma is the only fused operation. Scalars (bias corrections, step sizes) arrive already
// rounded to T: the caller computes them with correctly rounded double operations.
#pragma once
#include <cstdint>

namespace exactforge {

/// torch.optim.SGD on n elements: g = grad (negated if maximize); g = fma(p, wd, g) if wd;
/// with momentum, buf = g on the first step else fma(g, 1 - dampening, buf * momentum), and
/// g = fma(buf, momentum, g) (nesterov) or buf; then p = fma(g, -lr, p). buf may be null
/// without momentum.
template <class T>
struct SgdScalars {
  T neg_lr, weight_decay, momentum, one_minus_dampening;
  bool nesterov, maximize, first;
};
template <class T>
void sgd_update(T* p, const T* grad, T* buf, int64_t n, const SgdScalars<T>& s);

/// torch.optim.Adam / AdamW on n elements (step already counted): g = grad (negated if
/// maximize); AdamW: p = p * decay; Adam with weight decay: g = fma(p, wd, g);
/// m = lerp(m, g, 1 - beta1); v = fma(g * (1 - beta2), g, v * beta2); vmax = max(vmax, v)
/// with amsgrad (vmax null otherwise); d = sqrt(v or vmax) / bc2_sqrt + eps;
/// p = (neg_step_size * m) / d + p.
template <class T>
struct AdamScalars {
  T one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, eps, neg_step_size, weight_decay, decay;
  bool decoupled, maximize;
};
template <class T>
void adam_update(T* p, const T* grad, T* m, T* v, T* vmax, int64_t n, const AdamScalars<T>& s);

/// torch.optim.RMSprop on n elements: g = grad (negated if maximize); g = fma(p, wd, g) if wd;
/// sq = fma(g * (1 - alpha), g, sq * alpha); centered: ga = lerp(ga, g, 1 - alpha) and
/// a = sqrt(fma(-ga, ga, sq)), else a = sqrt(sq); a = a + eps; with momentum
/// buf = g / a + buf * momentum and p = fma(buf, -lr, p), else p = (-lr * g) / a + p.
/// ga and buf may be null where unused.
template <class T>
struct RmspropScalars {
  T neg_lr, alpha, one_minus_alpha, eps, weight_decay, momentum;
  bool centered, maximize;
};
template <class T>
void rmsprop_update(T* p, const T* grad, T* sq, T* ga, T* buf, int64_t n, const RmspropScalars<T>& s);

/// sqrt of each element, correctly rounded (IEEE 754 squareRoot): torch.sqrt on the CPU calls
/// MKL, whose result is not always the nearest value and differs between CPU vendors.
template <class T>
void sqrt_rn(const T* x, T* out, int64_t n);

}  // namespace exactforge
