// The integer (int8-digit) formulation of the float32 exact matmul, shared by every kernel that
// computes it (the portable C++ one, the AMX one, the AVX-512 VNNI one).
//
// Why the bits equal the float64-slice kernel's: that kernel computes, per output, the two
// exact integers L0 = sum_t A1 B1 and L1 = sum_t (A1 B2 + A2 B1), where A1, A2 (B1, B2) are the
// two integer slices of an element of a (b) made by split_pow2. Here the same slices are made by
// the same IEEE operations, written as balanced base-256 digits, A_l = sum_p 2^(8p) d_{l,p} with
// d in [-128, 127], and the levels are sums of int8 x int8 products:
//   L0 = sum_{p,q} 2^(8(p+q)) sum_t dA1_p dB1_q,   L1 = sum_{p,q} 2^(8(p+q)) sum_t (dA1_p dB2_q + dA2_p dB1_q).
// Every product and every partial sum is an integer, exact in int32 within a sub-chunk (at most
// 2 * kIntSubChunk products of magnitude <= 2^14 each: 2^25) and in int64 across sub-chunks
// (|L| < 2^63, the bound the float64 kernel's int64 accumulators already rely on). So L0 and L1
// are the same integers, and the one final rounding (round_two_levels / round_int192) is shared.
// Integer sums do not depend on order, threads, tile shapes or the instruction used.
#pragma once

#include <cstdint>

#include "exactforge/fixedpoint.hpp"

namespace exactforge {

/// Balanced base-256 digits needed for |v| <= 2^bits: 3 digits cover [-8421504, 8355711]
/// (enough for 2^22), 4 digits cover +-2^31.
EXACTFORGE_HD int int8_digits(int bits) { return bits <= 22 ? 3 : 4; }
constexpr int kMaxDigits = 4;

/// Terms of the reduced axis per int32 accumulation (then added into int64): 2 * 1024 products
/// of at most 2^14 per output stay far below 2^31. A multiple of 64 (one AMX k-step).
constexpr int64_t kIntSubChunk = 1024;

/// The two integer slices of x, by split_pow2's operations (scale (x*f1)*f2, round to nearest
/// twice, exact remainder scaled by 2^w): |s1| <= 2^w, |s2| <= 2^(w-1). Non-finite x gives 0.
/// Must be compiled without contraction, as split_pow2 is (the rounding of r matters).
EXACTFORGE_HD void int_slices(double v, double f1, double f2, double p2w, int32_t* s1, int32_t* s2) {
  v = fabs(v) <= 1.7976931348623157e308 ? v : 0.0;
  double r = (v * f1) * f2;
  const double q1 = round_int(r);
  r = (r - q1) * p2w;
  const double q2 = round_int(r);
  *s1 = static_cast<int32_t>(q1);
  *s2 = static_cast<int32_t>(q2);
}

/// Balanced base-256 digits of v: v = sum_p 2^(8p) d[p] (exact for |v| <= 2^31 with 4 digits,
/// 2^22 with 3). The low byte read as signed is v's residue in [-128, 127].
EXACTFORGE_HD void int8_split(int32_t v, int nd, int8_t* d, int64_t stride) {
  for (int p = 0; p < nd; ++p) {
    const int8_t lo = static_cast<int8_t>(static_cast<uint32_t>(v) & 0xffu);
    d[p * stride] = lo;
    v = (v - lo) / 256;  // exact: v - lo is a multiple of 256
  }
}

}  // namespace exactforge
