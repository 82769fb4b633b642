// Exact fixed-point helpers shared by the CPU core and the CUDA kernels.
//
// Everything here is plain integer and IEEE arithmetic with no contraction, so the
// same source gives the same bits on the host and on the device. That shared
// definition is what makes "CPU bits == CUDA bits" hold by construction rather than by test.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__CUDACC__)
#define EXACTFORGE_HD __host__ __device__ __forceinline__
#else
#define EXACTFORGE_HD inline
#endif

namespace exactforge {

/// Canonical quiet NaN. CPUs and GPUs produce different NaN payloads and signs
/// (x86 yields a negative "default NaN", CUDA 0x7fffffff); every output NaN is
/// rewritten to this one so that results compare equal bit for bit across devices.
template <class T> EXACTFORGE_HD T canonical_nan();
template <> EXACTFORGE_HD float canonical_nan<float>() {
  uint32_t u = 0x7fc00000u; float f; memcpy(&f, &u, 4); return f;
}
template <> EXACTFORGE_HD double canonical_nan<double>() {
  uint64_t u = 0x7ff8000000000000ull; double d; memcpy(&d, &u, 8); return d;
}

template <class T> EXACTFORGE_HD T canonicalize(T x) { return x != x ? canonical_nan<T>() : x; }

/// @brief Exponent E with |x| < 2^E for the largest magnitude x of a set (0 for an all-zero set).
/// Taken from the max, which is order-free, so every device and every blocking agree on it.
EXACTFORGE_HD int scale_exponent(double maxabs) {
  if (!(maxabs > 0.0)) return 0;
  int e; frexp(maxabs, &e);  // maxabs = f * 2^e with f in [0.5, 1): maxabs < 2^e
  return e;
}

/// @brief Signed 192-bit two's-complement integer: the exact sum of scaled level accumulators.
/// Three limbs hold sum_L acc_L * 2^shift_L for int64 acc_L and shifts up to 63 with a few
/// terms, i.e. < 2^131 in magnitude, with room to spare.
struct Int192 {
  uint64_t l[3] = {0, 0, 0};

  /// Adds v * 2^shift (0 <= shift < 128).
  EXACTFORGE_HD void add_shifted(int64_t v, int shift) {
    uint64_t ext = v < 0 ? ~0ull : 0ull;  // sign extension of v
    uint64_t t[3];
    uint64_t u = static_cast<uint64_t>(v);
    if (shift == 0) {
      t[0] = u; t[1] = ext; t[2] = ext;
    } else if (shift < 64) {
      t[0] = u << shift;
      t[1] = (u >> (64 - shift)) | (ext << shift);
      t[2] = ext;
    } else if (shift == 64) {
      t[0] = 0; t[1] = u; t[2] = ext;
    } else {
      int s = shift - 64;
      t[0] = 0;
      t[1] = u << s;
      t[2] = (u >> (64 - s)) | (ext << s);
    }
    uint64_t carry = 0;
    for (int i = 0; i < 3; ++i) {
      uint64_t a = l[i], b = t[i];
      uint64_t s1 = a + b;
      uint64_t c1 = s1 < a;
      uint64_t s2 = s1 + carry;
      uint64_t c2 = s2 < s1;
      l[i] = s2;
      carry = c1 | c2;
    }
  }
  EXACTFORGE_HD bool negative() const { return (l[2] >> 63) != 0; }
  EXACTFORGE_HD bool is_zero() const { return (l[0] | l[1] | l[2]) == 0; }
  EXACTFORGE_HD void negate() {
    uint64_t carry = 1;
    for (int i = 0; i < 3; ++i) {
      uint64_t x = ~l[i] + carry;
      carry = (carry && x == 0) ? 1 : 0;
      l[i] = x;
    }
  }
};

/// 2^p as a double built from its bit pattern, for -1022 <= p <= 1023 (no libm call).
EXACTFORGE_HD double pow2_bits(int p) {
  uint64_t u = static_cast<uint64_t>(p + 1023) << 52;
  double d;
  memcpy(&d, &u, 8);
  return d;
}

/// x * 2^p for any p, as two exact power-of-two factors; exact whenever the result is
/// representable (overflow gives the infinity that rounding to nearest would).
EXACTFORGE_HD double scale_pow2(double x, int p) {
  int p1 = p > 1000 ? 1000 : (p < -1000 ? -1000 : p);
  int p2 = p - p1;
  p2 = p2 > 1023 ? 1023 : (p2 < -1022 ? -1022 : p2);  // beyond: over/underflow anyway
  return (x * pow2_bits(p1)) * pow2_bits(p2);
}

EXACTFORGE_HD int clz64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return __clzll(static_cast<long long>(x));
#else
  return __builtin_clzll(x);
#endif
}

template <class T> struct FloatTraits;
template <> struct FloatTraits<float> { static constexpr int digits = 24, emin = -126, emax = 127; };
template <> struct FloatTraits<double> { static constexpr int digits = 53, emin = -1022, emax = 1023; };

/// @brief Rounds the exact value v * 2^exp2 to T, to nearest with ties to even, once.
/// Subnormal and overflowing results are rounded correctly too (the precision available
/// at the value's exponent is used), so the only rounding in an "exact" reduction is here.
template <class T> EXACTFORGE_HD T round_int192(Int192 v, int exp2) {
  if (v.is_zero()) return T(0);
  bool neg = v.negative();
  if (neg) v.negate();
  int top = v.l[2] ? 2 : (v.l[1] ? 1 : 0);
  int msb = 64 * top + 63 - clz64(v.l[top]);           // position P of the leading bit
  int e = msb + exp2;                                   // value in [2^e, 2^(e+1))
  int p = FloatTraits<T>::digits;
  if (e < FloatTraits<T>::emin) p -= FloatTraits<T>::emin - e;  // subnormal range
  int shift = msb + 1 - p;                              // low bits to discard
  uint64_t mant;
  if (shift <= 0) {
    mant = v.l[0];                                      // p <= 53 bits: fits one limb
  } else {
    // bit(i) of v, for the rounding decision
    auto bit = [&](int i) -> uint64_t { return (v.l[i >> 6] >> (i & 63)) & 1ull; };
    auto any_below = [&](int i) -> bool {               // any bit strictly below position i
      for (int li = 0; li < 3; ++li) {
        int lo = 64 * li;
        if (lo >= i) break;
        int n = i - lo;
        uint64_t m = n >= 64 ? ~0ull : ((1ull << n) - 1);
        if (v.l[li] & m) return true;
      }
      return false;
    };
    if (p <= 0) {
      mant = 0;
      if (p == 0 && any_below(msb)) mant = 1;           // above half of the smallest unit
    } else {
      // mant = v >> shift, at most p <= 53 bits
      int li = shift >> 6, sb = shift & 63;
      uint64_t lo = v.l[li];
      uint64_t hi = li + 1 < 3 ? v.l[li + 1] : 0;
      mant = sb ? ((lo >> sb) | (hi << (64 - sb))) : lo;
      uint64_t half = bit(shift - 1);
      bool sticky = any_below(shift - 1);
      if (half && (sticky || (mant & 1ull))) mant += 1;
    }
  }
  // mant * 2^e is representable in T (it was rounded to the precision available there),
  // so the scaling is exact; no libm call on the hot path of every output element.
  double r = scale_pow2(static_cast<double>(mant), exp2 + (shift > 0 ? shift : 0));
  T out = static_cast<T>(r);                            // exact: r already has T's precision
  return neg ? -out : out;
}

/// @brief round_int192 for two levels, v = hi * 2^w + lo, the float32 exact matmul's case:
/// v is formed in 128 bits, cut to its top 63 bits with every dropped bit OR-ed into the last
/// one (rounding to odd), converted to T by one correctly rounded int64 conversion, and scaled
/// by an exact power of two. Rounding to odd at 63 bits and then to nearest at p <= 61 bits is
/// rounding to nearest once (Boldo and Melquiond), so the result is round_int192's. Returns
/// false (out untouched) for zero and for subnormal or overflowing results, which go the
/// general way, and where the compiler has no 128-bit integers (device code). 5-6 ns instead
/// of 16-17 per output (benchmarks/bench_recombine.cpp); checked against round_int192 on
/// random and tie cases in tests/native/test_fixedpoint.cpp.
template <class T> EXACTFORGE_HD bool round_two_levels(int64_t hi, int64_t lo, int w, int exp2, T* out) {
#if defined(__SIZEOF_INT128__) && !defined(__CUDA_ARCH__)
  if (w < 0 || w > 62) return false;
  const __int128 x = static_cast<__int128>(hi) * (static_cast<__int128>(1) << w) + lo;  // |x| < 2^126
  if (x == 0) return false;
  const unsigned __int128 ax = x < 0 ? static_cast<unsigned __int128>(-x) : static_cast<unsigned __int128>(x);
  const uint64_t top = static_cast<uint64_t>(ax >> 64), bot = static_cast<uint64_t>(ax);
  const int msb = top ? 127 - clz64(top) : 63 - clz64(bot);
  const int e = msb + exp2;  // |v| 2^exp2 in [2^e, 2^(e+1))
  if (e < FloatTraits<T>::emin || e + 1 > FloatTraits<T>::emax) return false;
  const int shift = msb > 62 ? msb - 62 : 0;
  uint64_t u = static_cast<uint64_t>(ax >> shift);
  if (shift && (ax & ((static_cast<unsigned __int128>(1) << shift) - 1)) != 0) u |= 1;  // to odd
  const T r = static_cast<T>(static_cast<int64_t>(u));  // u < 2^63: the one rounding
  const T mag = static_cast<T>(scale_pow2(static_cast<double>(r), exp2 + shift));  // exact: normal T
  *out = x < 0 ? -mag : mag;
  return true;
#else
  (void)hi; (void)lo; (void)w; (void)exp2; (void)out;
  return false;
#endif
}

/// Slicing parameters of the "exact" (Ozaki) matmul for a reduction of length k.
struct ExactPlan {
  int slices;      // s: integer slices per operand
  int width;       // w: bits per slice
  int chunk_bits;  // the reduced axis is cut in chunks of 2^chunk_bits terms
};

/// @brief Chooses (s, w, chunk) so that every chunk sum of every level is an exact integer
/// in float64: each level L (pairs l+m = L) adds at most c * 2^(2w) per term, with c = 1
/// for s = 2 and c = 2 for s = 4 (|slice 1| <= 2^w, |later slices| <= 2^(w-1)), and
/// 2^chunk_bits * c * 2^(2w) <= 2^53. Small k gets wider slices (better accuracy).
EXACTFORGE_HD ExactPlan exact_plan(int64_t k, bool is_double) {
  ExactPlan p;
  p.slices = is_double ? 4 : 2;
  int cbits = is_double ? 1 : 0;
  int kb = 0;
  while ((int64_t(1) << kb) < k) ++kb;                  // ceil(log2 k)
  int max_chunk = 11 - cbits;                           // keeps w >= 21
  p.chunk_bits = kb < max_chunk ? kb : max_chunk;
  p.width = (53 - cbits - p.chunk_bits) / 2;
  if (p.width > 26) p.width = 26;
  return p;
}

/// Largest k accepted by the exact matmul: the int64 level accumulators hold
/// (k / 2^chunk_bits) chunk sums of at most 2^53 each.
constexpr int64_t kExactMatmulMaxK = int64_t(1) << 20;

/// Exact sum: two slices of 40 bits, chunks of 2^13 terms (2^13 * 2^40 = 2^53).
constexpr int kSumSlices = 2;
constexpr int kSumWidth = 40;
constexpr int kSumChunk = 1 << 13;
constexpr int64_t kExactSumMaxK = int64_t(1) << 22;     // 2^22 * 2^40 < 2^63

EXACTFORGE_HD bool is_finite_d(double x) { return fabs(x) <= 1.7976931348623157e308; }

/// @brief Multiplication by 2^p for the whole range of p that scaling needs (|p| up to ~1100),
/// where 2^p alone may not be a double: two exact factors, applied in a fixed order.
struct Pow2 {
  double f1 = 1.0, f2 = 1.0;
  Pow2() = default;
  EXACTFORGE_HD explicit Pow2(int p) {
    int p1 = p > 1000 ? 1000 : (p < -1000 ? -1000 : p);
    f1 = ldexp(1.0, p1);
    f2 = ldexp(1.0, p - p1);
  }
  EXACTFORGE_HD double operator()(double x) const { return (x * f1) * f2; }
};

/// @brief Rounds |r| <= 2^51 to the nearest integer, ties to even, in two IEEE additions:
/// the same bits as rint() in the default rounding mode, without a libm call on ISAs that
/// lack a rounding instruction, and the same code on the device.
EXACTFORGE_HD double round_int(double r) {
  const double magic = 6755399441055744.0;  // 1.5 * 2^52: the sum's ulp is 1
  double t = r + magic;  // not foldable into r: no value-changing optimisations (CMakeLists)
  return t - magic;
}

/// @brief Splits x into s integer-valued doubles: x * 2^(w-e) ~= sum_l S_l 2^(-(l-1) w),
/// where sc = Pow2(w - e) and |x| < 2^e. Rounds to nearest at each step, so
/// |S_1| <= 2^w, |S_l| <= 2^(w-1) for l >= 2, and the dropped remainder is at most
/// 2^(-s w - 1) 2^e. Every step is exact except for values far below 2^(e - s w), which
/// become 0 the same way on every device. A non-finite x gives zero slices (handled apart).
EXACTFORGE_HD void split_pow2(double x, const Pow2& sc, double p2w, int s, double* out,
                              int64_t stride) {
  if (!is_finite_d(x)) {
    for (int l = 0; l < s; ++l) out[l * stride] = 0.0;
    return;
  }
  double r = sc(x);
  for (int l = 0; l < s; ++l) {
    double q = round_int(r);
    out[l * stride] = q;
    r = (r - q) * p2w;  // exact: r - q is r's low part, scaling by 2^w is exact
  }
}

/// Special (non-finite) outcome of an exact dot product: classify each product.
struct SpecialAcc {
  bool nan = false, pos = false, neg = false;
  EXACTFORGE_HD void add(double p) {
    if (p != p) nan = true;
    else if (p == INFINITY) pos = true;
    else if (p == -INFINITY) neg = true;
  }
  EXACTFORGE_HD bool any() const { return nan || pos || neg; }
  template <class T> EXACTFORGE_HD T value() const {
    if (nan || (pos && neg)) return canonical_nan<T>();
    return pos ? T(INFINITY) : T(-INFINITY);
  }
};

/// @brief The outcome of the exact dot product a[i, :] . b[:, j] (a row-major m x k, b k x n)
/// where a non-finite term decides it: true, with *out the IEEE sum's NaN or Inf, if any product
/// of a non-finite value is NaN or infinite; false (out untouched) if none is, so the finite
/// terms decide. The same on the host and the device.
template <class T>
EXACTFORGE_HD bool special_dot(const T* a, const T* b, int64_t i, int64_t j, int64_t k, int64_t n, T* out) {
  SpecialAcc sp;
  for (int64_t t = 0; t < k; ++t) {
    double x = a[i * k + t], y = b[t * n + j];
    if (!is_finite_d(x) || !is_finite_d(y)) sp.add(x * y);
  }
  if (!sp.any()) return false;
  *out = sp.value<T>();
  return true;
}

}  // namespace exactforge
