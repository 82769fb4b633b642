// The portable optimizer updates (optim.hpp). Written as plain loops: -ffp-contract=off keeps
// every a * b + c two roundings, std::fma is one, std::sqrt is IEEE's correctly rounded root,
// whatever vector width the compiler picks.
#include "exactforge/optim.hpp"

#include <cmath>

namespace exactforge {
namespace {

// torch's vectorised lerp: small weights start from `from`, large ones from `to`, each one fma
template <class T>
inline T lerp(T from, T to, T w) {
  return std::fabs(w) < T(0.5) ? std::fma(w, to - from, from) : std::fma(w - T(1), to - from, to);
}

// torch.maximum: NaN wins
template <class T>
inline T maximum(T a, T b) {
  if (a != a) return a;
  if (b != b) return b;
  return a > b ? a : b;
}

}  // namespace

template <class T>
void sgd_update(T* p, const T* grad, T* buf, int64_t n, const SgdScalars<T>& s) {
  for (int64_t i = 0; i < n; ++i) {
    T g = s.maximize ? -grad[i] : grad[i];
    if (s.weight_decay != T(0)) g = std::fma(p[i], s.weight_decay, g);
    if (s.momentum != T(0)) {
      T b = s.first ? g : std::fma(g, s.one_minus_dampening, buf[i] * s.momentum);
      buf[i] = b;
      g = s.nesterov ? std::fma(b, s.momentum, g) : b;
    }
    p[i] = std::fma(g, s.neg_lr, p[i]);
  }
}

template <class T>
void adam_update(T* p, const T* grad, T* m, T* v, T* vmax, int64_t n, const AdamScalars<T>& s) {
  for (int64_t i = 0; i < n; ++i) {
    T g = s.maximize ? -grad[i] : grad[i];
    T w = p[i];
    if (s.decoupled) {
      w = w * s.decay;
    } else if (s.weight_decay != T(0)) {
      g = std::fma(w, s.weight_decay, g);
    }
    const T mi = lerp(m[i], g, s.one_minus_beta1);
    const T vi = std::fma(g * s.one_minus_beta2, g, v[i] * s.beta2);
    m[i] = mi;
    v[i] = vi;
    T second = vi;
    if (vmax != nullptr) second = vmax[i] = maximum(vmax[i], vi);
    const T d = std::sqrt(second) / s.bc2_sqrt + s.eps;
    p[i] = (s.neg_step_size * mi) / d + w;
  }
}

template <class T>
void rmsprop_update(T* p, const T* grad, T* sq, T* ga, T* buf, int64_t n, const RmspropScalars<T>& s) {
  for (int64_t i = 0; i < n; ++i) {
    T g = s.maximize ? -grad[i] : grad[i];
    if (s.weight_decay != T(0)) g = std::fma(p[i], s.weight_decay, g);
    const T q = std::fma(g * s.one_minus_alpha, g, sq[i] * s.alpha);
    sq[i] = q;
    T a;
    if (s.centered) {
      const T gi = lerp(ga[i], g, s.one_minus_alpha);
      ga[i] = gi;
      a = std::sqrt(std::fma(-gi, gi, q));
    } else {
      a = std::sqrt(q);
    }
    a = a + s.eps;
    if (s.momentum > T(0)) {
      const T b = g / a + buf[i] * s.momentum;
      buf[i] = b;
      p[i] = std::fma(b, s.neg_lr, p[i]);
    } else {
      p[i] = (s.neg_lr * g) / a + p[i];
    }
  }
}

template <class T>
void sqrt_rn(const T* x, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::sqrt(x[i]);
}

template void sgd_update<float>(float*, const float*, float*, int64_t, const SgdScalars<float>&);
template void sgd_update<double>(double*, const double*, double*, int64_t, const SgdScalars<double>&);
template void adam_update<float>(float*, const float*, float*, float*, float*, int64_t, const AdamScalars<float>&);
template void adam_update<double>(double*, const double*, double*, double*, double*, int64_t,
                                  const AdamScalars<double>&);
template void rmsprop_update<float>(float*, const float*, float*, float*, float*, int64_t,
                                    const RmspropScalars<float>&);
template void rmsprop_update<double>(double*, const double*, double*, double*, double*, int64_t,
                                     const RmspropScalars<double>&);
template void sqrt_rn<float>(const float*, float*, int64_t);
template void sqrt_rn<double>(const double*, double*, int64_t);

}  // namespace exactforge
