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
