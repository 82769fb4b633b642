// Packing of a shared reduction's levels for their all-reduce (reduce.hpp, LevelPacking).
#include <stdexcept>
#include <string>

#include "exactforge/fixedpoint.hpp"
#include "exactforge/reduce.hpp"

namespace exactforge {
namespace {

int ceil_log2(int64_t v) {
  int b = 0;
  while ((int64_t(1) << b) < v) ++b;
  return b;
}

// Bits [pos, pos + 64) of x's two's complement, the limbs above the top read as its sign.
uint64_t bits_at(const Int192& x, int pos) {
  const uint64_t ext = x.negative() ? ~0ull : 0ull;
  auto limb = [&](int i) { return i < 3 ? x.l[i] : ext; };
  const int i = pos / 64, off = pos % 64;
  return off == 0 ? limb(i) : (limb(i) >> off) | (limb(i + 1) << (64 - off));
}

// -2^bits <= x < 2^bits: every bit from `bits` up equals the sign.
bool within(const Int192& x, int bits) {
  const uint64_t ext = x.negative() ? ~0ull : 0ull;
  for (int pos = bits; pos < 192; pos += 64) {
    const int len = 192 - pos < 64 ? 192 - pos : 64;
    const uint64_t mask = len == 64 ? ~0ull : (uint64_t(1) << len) - 1;
    if ((bits_at(x, pos) & mask) != (ext & mask)) return false;
  }
  return true;
}

}  // namespace

LevelPacking level_packing(bool sum, int64_t k_total, bool is_double, int world) {
  if (world < 1) throw std::invalid_argument("level packing: world must be at least 1");
  if (k_total < 1) throw std::invalid_argument("level packing: k_total must be at least 1");
  LevelPacking p{};
  const int kb = ceil_log2(k_total);
  // Each term adds at most 2^(S w) (a sum: slices |s0| <= 2^w, |s1| <= 2^(w-1)) or at most
  // 2^((S+1) w) (a product: slice products s_i t_j at 2^((S-1-i-j) w)) plus a lower-order rest
  // below that, so k_total terms stay below 2^(kb + 1) times it.
  if (sum) {
    p.slices = kSumSlices;
    p.width = kSumWidth;
    p.value_bits = kSumSlices * kSumWidth + 1 + kb;
  } else {
    const ExactPlan plan = exact_plan(k_total, is_double);
    p.slices = plan.slices;
    p.width = plan.width;
    p.value_bits = (plan.slices + 1) * plan.width + 1 + kb;
  }
  const int lp = ceil_log2(world);
  p.field_bits = 31 - lp;
  // the top field of one process is below 2^(value_bits - low bits) in magnitude; world of them
  // must stay within int32
  p.words = 1;
  while (p.value_bits - (p.words - 1) * p.field_bits + lp > 31) ++p.words;
  if ((p.words - 1) * p.field_bits >= 128 || (p.slices - 1) * p.width >= 128)
    throw std::invalid_argument("level packing: levels too wide");
  return p;
}

void pack_levels(const int64_t* levels, int64_t count, const LevelPacking& p, int32_t* words) {
  const uint64_t low_mask = (uint64_t(1) << p.field_bits) - 1;
  for (int64_t o = 0; o < count; ++o) {
    Int192 v;
    for (int L = 0; L < p.slices; ++L) v.add_shifted(levels[o * p.slices + L], (p.slices - 1 - L) * p.width);
    if (!within(v, p.value_bits))
      throw std::invalid_argument("pack_levels: a value is outside the reduction's bound (levels of another "
                                  "reduction, or of another k_total)");
    int32_t* w = words + o * p.words;
    for (int f = 0; f + 1 < p.words; ++f) w[f] = static_cast<int32_t>(bits_at(v, f * p.field_bits) & low_mask);
    // the top field: v >> ((words - 1) field_bits), which fits int32 by the choice of words
    w[p.words - 1] = static_cast<int32_t>(static_cast<int64_t>(bits_at(v, (p.words - 1) * p.field_bits)));
  }
}

void unpack_levels(const int32_t* words, int64_t count, const LevelPacking& p, int64_t* levels) {
  const uint64_t low_mask = (uint64_t(1) << p.width) - 1;
  for (int64_t o = 0; o < count; ++o) {
    const int32_t* w = words + o * p.words;
    Int192 v;
    for (int f = 0; f + 1 < p.words; ++f) {
      if (w[f] < 0) throw std::invalid_argument("unpack_levels: a low field is negative (not a sum of packed levels)");
      v.add_shifted(w[f], f * p.field_bits);
    }
    v.add_shifted(w[p.words - 1], (p.words - 1) * p.field_bits);
    if (!within(v, p.value_bits))
      throw std::invalid_argument("unpack_levels: the summed value is outside the reduction's bound");
    int64_t* lv = levels + o * p.slices;
    for (int L = p.slices - 1; L > 0; --L)
      lv[L] = static_cast<int64_t>(bits_at(v, (p.slices - 1 - L) * p.width) & low_mask);
    // the rest, v >> ((S - 1) w): below 2^(value_bits - (S - 1) w) <= 2^63 in magnitude
    lv[0] = static_cast<int64_t>(bits_at(v, (p.slices - 1) * p.width));
  }
}

}  // namespace exactforge
