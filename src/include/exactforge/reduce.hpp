// Reproducible reductions on the CPU: the portable C++17 core of exactforge (no Python).
//
// Layout assumptions (checked by the callers, see csrc/cpu/bindings.cpp): every array is
// C-contiguous; a is m x k, b is k x n, x is k x n; the reduced axis is k.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>
#include <string>
#include <map>

namespace exactforge {

/// The most threads any kernel runs (requests above it are clamped; Python refuses them).
constexpr int kMaxThreads = 256;

/// Terms reduced in the order given by `order` (a permutation of 0..k-1; nullptr = 0..k-1),
/// one sequential fused chain acc = fma(a, b, acc) per output element (sum: acc = acc + x),
/// starting from +0. The chain never depends on threads, SIMD width or device.
/// `a_transposed`: a is stored k x m (its transpose, row-major); the product and its bits
/// are the same, only the packing reads a by rows of the reduced axis.
template <class T>
void matmul_fixed(const T* a, const T* b, T* out, int64_t m, int64_t k, int64_t n,
                  const int64_t* order, int threads, bool a_transposed = false);
template <class T>
void sum_fixed(const T* x, T* out, int64_t k, int64_t n, const int64_t* order, int threads);

/// Order-independent: the result is a symmetric function of the multiset of terms
/// (integer slicing, exact integer accumulation, one final rounding). See fixedpoint.hpp.
template <class T>
void matmul_exact(const T* a, const T* b, T* out, int64_t m, int64_t k, int64_t n, int threads);
template <class T>
void sum_exact(const T* x, T* out, int64_t k, int64_t n, int threads);
/// Per channel of an (N, C, L) array, the sum of its N * L terms x[n, c, l]: the same bits as
/// sum_fixed / sum_exact over the (N * L) x C matrix whose row n * L + l holds x[n, :, l]
/// (BatchNorm's statistics), without that transposed copy. `exact`: order-independent.
template <class T>
void sum_channels(const T* x, T* out, int64_t N, int64_t C, int64_t L, bool exact, int threads);
/// sum_channels of (x - mean[c])^2 and of a * b (each operation rounded, as on materialised
/// arrays: BatchNorm's variance and its backward's sum of dy * xhat), computed chunk by chunk
/// instead of materialised: the same bits as sum_channels over the materialised terms.
template <class T>
void sum_centered_squares(const T* x, const T* mean, T* out, int64_t N, int64_t C, int64_t L, bool exact,
                          int threads);
template <class T>
void sum_channel_products(const T* a, const T* b, T* out, int64_t N, int64_t C, int64_t L, bool exact, int threads);
/// The exact matmul's a (m x k) given by a gather instead of an array (an implicit matrix: a
/// convolution's im2col, which would be kh x kw copies of its input). row_max[i] is max |a[i, t]|
/// over row i, every entry finite; gather(row0, rows, t0, kc, dst) writes a[row0 + ii][t0 + t] to
/// dst[ii * kc + t] for ii < rows, t < kc, and must not throw (it runs in parallel regions).
template <class T>
struct ImplicitRows {
  std::vector<double> row_max;
  std::function<void(int64_t, int, int64_t, int64_t, T*)> gather;
};
/// matmul_exact over the matrix `a` describes, with the bits of matmul_exact over it materialised:
/// the scales come from the same row maxima and every panel is sliced from the same values.
template <class T>
void matmul_exact_implicit(const ImplicitRows<T>& a, const T* b, T* out, int64_t m, int64_t k, int64_t n, int threads);
/// A reduction whose terms are spread over processes (data-parallel training). Integer level
/// sums do not depend on how the terms are split, provided every part slices with the same
/// scales: so each process finds the maxima of its part (exact_maxima), the processes take the
/// maximum of those (an all-reduce), each computes the levels of its part with them
/// (matmul_exact_levels), the levels are added up (an all-reduce of int64), and
/// round_exact_levels rounds the sum once: the bits of matmul_exact over all the terms, on one
/// process. Non-finite terms are left out of the levels; exact_special_flags gives, per output,
/// what its non-finite products were (bit 0 NaN, 1 +Inf, 2 -Inf), combined by OR across
/// processes; a non-zero flag decides the output as matmul_exact's special case does.
struct ExactShare {
  int64_t k_total;        // terms of the whole reduction, over every process (fixes the slicing plan)
  const double* row_max;  // m maxima of |a[i, t]| over the whole reduction's finite terms
  const double* col_max;  // n maxima of |b[t, j]|
  int64_t* levels;        // out: m x n x S (S = 2 for float32, 4 for float64), this part's level sums
};
/// Maxima of |a|'s rows and |b|'s columns over finite entries; true if any entry is not finite.
template <class T>
bool exact_maxima(const T* a, const T* b, int64_t m, int64_t k, int64_t n, double* row_max, double* col_max);
template <class T>
void exact_special_flags(const T* a, const T* b, int64_t m, int64_t k, int64_t n, uint8_t* flags);
template <class T>
void matmul_exact_levels(const T* a, const T* b, int64_t m, int64_t k, int64_t n, const ExactShare& share,
                         int threads);
template <class T>
void round_exact_levels(const int64_t* levels, int64_t m, int64_t n, int64_t k_total, const double* row_max,
                        const double* col_max, const uint8_t* flags, T* out);
/// The same for sum_exact over the k rows of x (k x n): column maxima, levels (n x 2), rounding.
template <class T>
bool sum_maxima(const T* x, int64_t k, int64_t n, double* col_max);
template <class T>
void sum_special_flags(const T* x, int64_t k, int64_t n, uint8_t* flags);
template <class T>
void sum_exact_levels(const T* x, int64_t k, int64_t n, const double* col_max, int64_t* levels, int threads);
template <class T>
void round_sum_levels(const int64_t* levels, int64_t n, const double* col_max, const uint8_t* flags, T* out);
/// A shared reduction's levels in fewer bytes for their all-reduce. Each output's S levels
/// stand for one integer V = sum_L lv[L] 2^((S-1-L) w), and only V decides the rounding; with
/// |V| < 2^value_bits, V travels as `words` int32 fields: the low ones unsigned, `field_bits`
/// wide, the top one signed. An all-reduce (sum) over at most `world` processes cannot carry
/// out of a field (field_bits = 31 - ceil(log2 world) leaves the room), so the summed fields
/// still give the summed V: 3 words (12 bytes) where two int64 levels took 16.
struct LevelPacking {
  int slices;      // S
  int width;       // w
  int value_bits;  // |V| < 2^value_bits, for every process's part and for the whole
  int field_bits;
  int words;
};
/// The packing of matmul_exact_levels (`sum` false) or sum_exact_levels (`sum` true) over
/// k_total terms of float32 (`is_double` false) or float64, for `world` processes.
LevelPacking level_packing(bool sum, int64_t k_total, bool is_double, int world);
/// count outputs' levels (count x S) -> count x words int32; throws std::invalid_argument where
/// a V is outside the bound (levels of another reduction).
void pack_levels(const int64_t* levels, int64_t count, const LevelPacking& p, int32_t* words);
/// The summed fields back to levels with the summed V (lv[S-1] .. lv[1] in [0, 2^w)), for
/// round_exact_levels / round_sum_levels.
void unpack_levels(const int32_t* words, int64_t count, const LevelPacking& p, int64_t* levels);
/// The float32 exact matmul through a named kernel (0 auto, 1 float64 slices, 2 int8 digits in
/// C++, 3 int8 digits on AMX, 4 int8 digits on AVX-512 VNNI): the same bits from every one; for
/// tests and benchmarks.
void matmul_exact_with(const float* a, const float* b, float* out, int64_t m, int64_t k, int64_t n,
                       int threads, int kernel);

/// Default thread count for calls that do not name one (process-wide, like torch's).
void set_num_threads(int n);
int get_num_threads();

/// What this core was compiled with (compiler, OpenMP, floating-point flags).
std::map<std::string, std::string> build_info();

}  // namespace exactforge
