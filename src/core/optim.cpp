// The portable optimizer updates (optim.hpp): each call runs the loops of the ISA level the
// kernels run (kernels(): AVX2+FMA where the CPU has both, unless EXACTFORGE_ISA=generic caps
// it), compiled from one source (optim.inc). The levels give the same bits: they differ only in
// how many elements an instruction handles and whether fma is an instruction or a call.
#include "exactforge/optim.hpp"

#include <cstring>

#include "kernels/kernels.hpp"

namespace exactforge {

#define EXACTFORGE_DECLARE_OPTIM(NS)                                                                           \
  namespace NS {                                                                                               \
  void sgd_update_f32(float*, const float*, float*, int64_t, const SgdScalars<float>&);                        \
  void sgd_update_f64(double*, const double*, double*, int64_t, const SgdScalars<double>&);                    \
  void adam_update_f32(float*, const float*, float*, float*, float*, int64_t, const AdamScalars<float>&);      \
  void adam_update_f64(double*, const double*, double*, double*, double*, int64_t, const AdamScalars<double>&); \
  void rmsprop_update_f32(float*, const float*, float*, float*, float*, int64_t, const RmspropScalars<float>&); \
  void rmsprop_update_f64(double*, const double*, double*, double*, double*, int64_t,                          \
                          const RmspropScalars<double>&);                                                      \
  void sqrt_rn_f32(const float*, float*, int64_t);                                                             \
  void sqrt_rn_f64(const double*, double*, int64_t);                                                           \
  }
EXACTFORGE_DECLARE_OPTIM(optim_generic)
#if defined(EXACTFORGE_HAVE_OPTIM_AVX2)
EXACTFORGE_DECLARE_OPTIM(optim_avx2)
#endif
#undef EXACTFORGE_DECLARE_OPTIM

namespace {
bool vector_level() {
#if defined(EXACTFORGE_HAVE_OPTIM_AVX2)
  static const bool avx2 = std::strcmp(kernels().isa, "generic") != 0;
  return avx2;
#else
  return false;
#endif
}

#if defined(EXACTFORGE_HAVE_OPTIM_AVX2)
#define EXACTFORGE_OPTIM_CALL(F, ...) \
  (vector_level() ? optim_avx2::F(__VA_ARGS__) : optim_generic::F(__VA_ARGS__))
#else
#define EXACTFORGE_OPTIM_CALL(F, ...) optim_generic::F(__VA_ARGS__)
#endif

// one overload per dtype, each choosing its level
void call_sgd(float* p, const float* g, float* b, int64_t n, const SgdScalars<float>& s) {
  EXACTFORGE_OPTIM_CALL(sgd_update_f32, p, g, b, n, s);
}
void call_sgd(double* p, const double* g, double* b, int64_t n, const SgdScalars<double>& s) {
  EXACTFORGE_OPTIM_CALL(sgd_update_f64, p, g, b, n, s);
}
void call_adam(float* p, const float* g, float* m, float* v, float* x, int64_t n, const AdamScalars<float>& s) {
  EXACTFORGE_OPTIM_CALL(adam_update_f32, p, g, m, v, x, n, s);
}
void call_adam(double* p, const double* g, double* m, double* v, double* x, int64_t n, const AdamScalars<double>& s) {
  EXACTFORGE_OPTIM_CALL(adam_update_f64, p, g, m, v, x, n, s);
}
void call_rmsprop(float* p, const float* g, float* q, float* ga, float* b, int64_t n, const RmspropScalars<float>& s) {
  EXACTFORGE_OPTIM_CALL(rmsprop_update_f32, p, g, q, ga, b, n, s);
}
void call_rmsprop(double* p, const double* g, double* q, double* ga, double* b, int64_t n,
                  const RmspropScalars<double>& s) {
  EXACTFORGE_OPTIM_CALL(rmsprop_update_f64, p, g, q, ga, b, n, s);
}
void call_sqrt(const float* x, float* out, int64_t n) { EXACTFORGE_OPTIM_CALL(sqrt_rn_f32, x, out, n); }
void call_sqrt(const double* x, double* out, int64_t n) { EXACTFORGE_OPTIM_CALL(sqrt_rn_f64, x, out, n); }

}  // namespace

template <class T>
void sgd_update(T* p, const T* grad, T* buf, int64_t n, const SgdScalars<T>& s) {
  call_sgd(p, grad, buf, n, s);
}
template <class T>
void adam_update(T* p, const T* grad, T* m, T* v, T* vmax, int64_t n, const AdamScalars<T>& s) {
  call_adam(p, grad, m, v, vmax, n, s);
}
template <class T>
void rmsprop_update(T* p, const T* grad, T* sq, T* ga, T* buf, int64_t n, const RmspropScalars<T>& s) {
  call_rmsprop(p, grad, sq, ga, buf, n, s);
}
template <class T>
void sqrt_rn(const T* x, T* out, int64_t n) {
  call_sqrt(x, out, n);
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
#undef EXACTFORGE_OPTIM_CALL

}  // namespace exactforge
