// exp and log with the same bits on every CPU and GPU: only IEEE additions, multiplications
// and divisions (each rounded once; the build forbids contraction), exact power-of-two
// scaling and bit manipulation. libm's exp/log differ between libraries and devices, so a
// softmax built on them would make the next checkpoint depend on where it was computed.
//
// Both evaluate in float64 (relative error about 2e-16) and round once to the caller's type.
#pragma once

#include "fixedpoint.hpp"

namespace exactforge {

namespace mathfn_detail {
constexpr double kLn2Hi = 6.93147180369123816490e-01;  // ln 2 split so that n * kLn2Hi is exact
constexpr double kLn2Lo = 1.90821492927058770002e-10;
constexpr double kInvLn2 = 1.44269504088896338700e00;
constexpr double kExpOverflow = 709.782712893384;  // e^x is +inf above, 0 below kExpUnderflow
constexpr double kExpUnderflow = -745.2;

/// det_exp's reduction and series, for a double or a GCC vector of doubles (every lane the same
/// IEEE operations, so the same bits): n = round_int(x * (1/ln2)), r = x - n ln2 in two exact
/// parts, and e^r by Horner with the coefficients 1/j!, j = 13..0 (error below 1e-17).
template <class V>
EXACTFORGE_HD V exp_series(V x, V& n) {
  n = (x * kInvLn2 + 6755399441055744.0) - 6755399441055744.0;  // round_int's two additions
  const V r = (x - n * kLn2Hi) - n * kLn2Lo;
  V p = r * 1.6059043836821613e-10 + 2.08767569878680990e-09;  // 1/13! r (= r 1/13!) + 1/12!
  p = p * r + 2.50521083854417188e-08;
  p = p * r + 2.75573192239858907e-07;
  p = p * r + 2.75573192239858883e-06;
  p = p * r + 2.48015873015873016e-05;
  p = p * r + 1.98412698412698413e-04;
  p = p * r + 1.38888888888888894e-03;
  p = p * r + 8.33333333333333322e-03;
  p = p * r + 4.16666666666666644e-02;
  p = p * r + 1.66666666666666657e-01;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  return p;
}
}  // namespace mathfn_detail

/// @brief e^x: x = n ln2 + r with |r| <= ln2/2, Taylor series of degree 13 for e^r (error
/// below 1e-17), then scaling by 2^n. Overflows to +inf above 709.79, underflows to 0.
EXACTFORGE_HD double det_exp(double x) {
  if (x != x) return x;
  if (x > mathfn_detail::kExpOverflow) return INFINITY;
  if (x < mathfn_detail::kExpUnderflow) return 0.0;
  double n;
  const double p = mathfn_detail::exp_series(x, n);
  return scale_pow2(p, static_cast<int>(n));
}

/// @brief ln x: x = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s), s = (m-1)/(m+1),
/// |s| <= 0.1716, odd series to s^25 (error below 1e-19). ln 0 = -inf, ln(x<0) = NaN.
EXACTFORGE_HD double det_log(double x) {
  using namespace mathfn_detail;
  if (x != x) return x;
  if (x < 0.0) return canonical_nan<double>();
  if (x == 0.0) return -INFINITY;
  if (x == INFINITY) return INFINITY;
  int e = 0;
  if (x < 2.2250738585072014e-308) {  // subnormal: normalise exactly first
    x = x * 18014398509481984.0;      // 2^54
    e = -54;
  }
  uint64_t u;
  memcpy(&u, &x, 8);
  e += static_cast<int>((u >> 52) & 0x7ff) - 1023;
  u = (u & 0x000fffffffffffffull) | 0x3ff0000000000000ull;  // m in [1, 2)
  double m;
  memcpy(&m, &u, 8);
  if (m > 1.4142135623730951) { m = m * 0.5; e += 1; }
  double s = (m - 1.0) / (m + 1.0);
  double s2 = s * s;
  double q = 1.0 / 25;
  q = q * s2 + 1.0 / 23;
  q = q * s2 + 1.0 / 21;
  q = q * s2 + 1.0 / 19;
  q = q * s2 + 1.0 / 17;
  q = q * s2 + 1.0 / 15;
  q = q * s2 + 1.0 / 13;
  q = q * s2 + 1.0 / 11;
  q = q * s2 + 1.0 / 9;
  q = q * s2 + 1.0 / 7;
  q = q * s2 + 1.0 / 5;
  q = q * s2 + 1.0 / 3;
  q = q * s2 + 1.0;
  double lnm = 2.0 * s * q;
  double de = static_cast<double>(e);
  return de * kLn2Hi + (de * kLn2Lo + lnm);
}

#if !defined(__CUDACC__)
/// out[i] = det_exp(x[i]) over an array (float32 widened, the result rounded once, NaN
/// canonical): the scalar loop's bits, on the dispatched ISA's vectors and `threads` threads
/// (0: the default). In place (out == x) is allowed.
void exp_n(const float* x, float* out, int64_t n, int threads = 0);
void exp_n(const double* x, double* out, int64_t n, int threads = 0);
#endif

}  // namespace exactforge
