// CUDA kernels for the reproducible reductions. Bits equal the CPU core's by construction:
//  - fixed: one thread owns one output element and runs the same sequential chain in the
//    same key order: acc = __fma_rn(a, b, acc) for products (the CPU's explicit FMA chain),
//    __fadd_rn for sums; --fmad=false keeps the compiler from fusing anything else;
//  - exact: the same slicing (split_pow2), the same exact integer level sums and the same
//    final rounding (round_int192) from src/exactforge/fixedpoint.hpp. Within a chunk the
//    level sums are exact integers below 2^53, so the GPU's summation order is irrelevant.
#include <cuda_runtime.h>

#include <vector>

#include "exactforge/fixedpoint.hpp"
#include "exactforge/mathfn.hpp"
#include "launch.hpp"

namespace exactforge {
namespace cuda {
namespace {

__device__ __forceinline__ float fma_rn(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_rn(double a, double b, double c) { return __fma_rn(a, b, c); }
__device__ __forceinline__ float fadd_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double fadd_rn(double a, double b) { return __dadd_rn(a, b); }

/// @brief Fixed-order product: out[i,j] = chain over t of a[i,order[t]] * b[order[t],j].
/// @param order device permutation of 0..k-1, or nullptr for the given order
template <class T>
__global__ void matmul_fixed_kernel(const T* __restrict__ a, const T* __restrict__ b, T* out,
                                    int64_t m, int64_t k, int64_t n, const int64_t* order) {
  int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  int64_t i = blockIdx.y * (int64_t)blockDim.y + threadIdx.y;
  if (i >= m || j >= n) return;
  T acc = T(0);
  for (int64_t t = 0; t < k; ++t) {
    int64_t s = order ? order[t] : t;
    acc = fma_rn(a[i * k + s], b[s * n + j], acc);
  }
  out[i * n + j] = canonicalize(acc);
}

/// @brief Fixed-order column sums of a k x n array, one thread per column.
template <class T>
__global__ void sum_fixed_kernel(const T* __restrict__ x, T* out, int64_t k, int64_t n,
                                 const int64_t* order) {
  int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (j >= n) return;
  T acc = T(0);
  for (int64_t t = 0; t < k; ++t) acc = fadd_rn(acc, x[(order ? order[t] : t) * n + j]);
  out[j] = canonicalize(acc);
}

/// @brief Scale exponent and non-finite flag of each row of a (m x k), one block per row.
/// The block reduction takes a max, which is exact and order-free.
template <class T>
__global__ void row_scale_kernel(const T* __restrict__ a, int64_t m, int64_t k, int* e, int* bad) {
  __shared__ double smax[256];
  __shared__ int sbad[256];
  int64_t i = blockIdx.x;
  double mx = 0.0;
  int nf = 0;
  for (int64_t t = threadIdx.x; t < k; t += blockDim.x) {
    double v = static_cast<double>(a[i * k + t]);
    if (is_finite_d(v)) mx = fmax(mx, fabs(v)); else nf = 1;
  }
  smax[threadIdx.x] = mx;
  sbad[threadIdx.x] = nf;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      smax[threadIdx.x] = fmax(smax[threadIdx.x], smax[threadIdx.x + s]);
      sbad[threadIdx.x] |= sbad[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) { e[i] = scale_exponent(smax[0]); bad[i] = sbad[0]; }
}

/// @brief Scale exponent and non-finite flag of each column of b (k x n), one thread per column.
template <class T>
__global__ void col_scale_kernel(const T* __restrict__ b, int64_t k, int64_t n, int* f, int* bad) {
  int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (j >= n) return;
  double mx = 0.0;
  int nf = 0;
  for (int64_t t = 0; t < k; ++t) {
    double v = static_cast<double>(b[t * n + j]);
    if (is_finite_d(v)) mx = fmax(mx, fabs(v)); else nf = 1;
  }
  f[j] = scale_exponent(mx);
  bad[j] = nf;
}

/// @brief Slices of a: as[(l*m + i)*k + t] (row-scaled), or of b: bs[(l*k + t)*n + j].
template <class T>
__global__ void split_kernel(const T* __restrict__ x, double* out, int64_t rows, int64_t cols,
                             const int* scale_e, bool by_row, int s, int w) {
  int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (idx >= rows * cols) return;
  int64_t r = idx / cols, c = idx % cols;
  int e = scale_e[by_row ? r : c];
  Pow2 sc(w - e);
  split_pow2(static_cast<double>(x[idx]), sc, ldexp(1.0, w), s, out + idx, rows * cols);
}

constexpr int TILE = 16;

/// @brief Sliced product with exact level sums; one thread per output element, shared-memory
/// tiles over the reduced axis. Levels are accumulated in double inside a chunk (exact
/// integers < 2^53, see exact_plan) and moved to int64 at each chunk end, as on the CPU.
/// @param as slices of a, S x m x k;  bs slices of b, S x k x n
template <class T, int S>
__global__ void matmul_exact_kernel(const double* __restrict__ as, const double* __restrict__ bs,
                                    const int* ea, const int* fb, const int* bad_row,
                                    const int* bad_col, const T* __restrict__ a,
                                    const T* __restrict__ b, T* out, int64_t m, int64_t k,
                                    int64_t n, int w, int64_t chunk) {
  __shared__ double sa[S][TILE][TILE + 1];
  __shared__ double sb[S][TILE][TILE + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t j = blockIdx.x * (int64_t)TILE + tx;
  const int64_t i = blockIdx.y * (int64_t)TILE + ty;
  int64_t acc[S];
  double lev[S];
  for (int L = 0; L < S; ++L) { acc[L] = 0; lev[L] = 0.0; }
  for (int64_t t0 = 0; t0 < k; t0 += TILE) {
    for (int l = 0; l < S; ++l) {
      int64_t ta = t0 + tx, tb = t0 + ty;
      sa[l][ty][tx] = (i < m && ta < k) ? as[(l * m + i) * k + ta] : 0.0;
      sb[l][ty][tx] = (tb < k && j < n) ? bs[(l * k + tb) * n + j] : 0.0;
    }
    __syncthreads();
    for (int tt = 0; tt < TILE; ++tt)
      for (int l = 0; l < S; ++l)
        for (int mm = 0; l + mm < S; ++mm)
          lev[l + mm] = __dadd_rn(lev[l + mm], __dmul_rn(sa[l][ty][tt], sb[mm][tt][tx]));
    __syncthreads();
    // TILE divides every chunk size (a power of two >= 16) or the chunk is all of k.
    if ((t0 + TILE) % chunk == 0 || t0 + TILE >= k) {
      for (int L = 0; L < S; ++L) { acc[L] += static_cast<int64_t>(lev[L]); lev[L] = 0.0; }
    }
  }
  if (i >= m || j >= n) return;
  if ((bad_row[i] || bad_col[j]) && special_dot(a, b, i, j, k, n, out + i * n + j)) return;
  Int192 v;
  for (int L = 0; L < S; ++L) v.add_shifted(acc[L], (S - 1 - L) * w);
  out[i * n + j] = round_int192<T>(v, ea[i] + fb[j] - (S + 1) * w);
}

/// @brief Exact column sums, one thread per column (same slicing and chunks as the CPU).
template <class T>
__global__ void sum_exact_kernel(const T* __restrict__ x, T* out, int64_t k, int64_t n) {
  int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (j >= n) return;
  constexpr int S = kSumSlices, w = kSumWidth;
  double mx = 0.0;
  bool nf = false;
  for (int64_t t = 0; t < k; ++t) {
    double v = static_cast<double>(x[t * n + j]);
    if (is_finite_d(v)) mx = fmax(mx, fabs(v)); else nf = true;
  }
  if (nf) {
    SpecialAcc sp;
    for (int64_t t = 0; t < k; ++t) sp.add(static_cast<double>(x[t * n + j]));
    if (sp.any()) { out[j] = sp.value<T>(); return; }
  }
  const int fe = scale_exponent(mx);
  const Pow2 sc(w - fe);
  const double p2w = ldexp(1.0, w);
  int64_t acc[S] = {0, 0};
  for (int64_t t0 = 0; t0 < k; t0 += kSumChunk) {
    double part[S] = {0.0, 0.0};
    int64_t t1 = t0 + kSumChunk < k ? t0 + kSumChunk : k;
    for (int64_t t = t0; t < t1; ++t) {
      double q[S];
      split_pow2(static_cast<double>(x[t * n + j]), sc, p2w, S, q, 1);
      for (int l = 0; l < S; ++l) part[l] = __dadd_rn(part[l], q[l]);
    }
    for (int l = 0; l < S; ++l) acc[l] += static_cast<int64_t>(part[l]);
  }
  Int192 v;
  for (int l = 0; l < S; ++l) v.add_shifted(acc[l], (S - 1 - l) * w);
  out[j] = round_int192<T>(v, fe - S * w);
}

/// @brief Elementwise det_exp (op 0) or det_log (op 1), evaluated in double as on the CPU.
template <class T>
__global__ void mathfn_kernel(const T* __restrict__ x, T* out, int64_t n, int op) {
  int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  double v = static_cast<double>(x[i]);
  out[i] = static_cast<T>(canonicalize(op == 0 ? det_exp(v) : det_log(v)));
}

// RAII device buffer; errors surface through cudaGetLastError at the end of each entry point.
struct DevBuf {
  void* p = nullptr;
  explicit DevBuf(size_t bytes) { if (bytes) cudaMalloc(&p, bytes); }
  ~DevBuf() { if (p) cudaFree(p); }
  template <class U> U* as() const { return static_cast<U*>(p); }
};

// Allocation failures must stop us before any kernel writes through a null pointer.
std::string alloc_error() {
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string("allocation failed: ") + cudaGetErrorString(e);
}

std::string finish(cudaStream_t st) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) e = cudaStreamSynchronize(st);
  return e == cudaSuccess ? std::string() : std::string(cudaGetErrorString(e));
}

template <class T>
std::string matmul_t(bool fixed, const T* a, const T* b, T* out, int64_t m, int64_t k, int64_t n,
                     const int64_t* order_host, cudaStream_t st) {
  if (m == 0 || n == 0) return std::string();  // nothing to compute (a zero grid is an error)
  if (fixed) {
    DevBuf ord(order_host ? k * sizeof(int64_t) : 0);
    if (std::string e = alloc_error(); !e.empty()) return e;
    if (order_host) cudaMemcpyAsync(ord.p, order_host, k * sizeof(int64_t), cudaMemcpyHostToDevice, st);
    dim3 blk(32, 8), grd((unsigned)((n + 31) / 32), (unsigned)((m + 7) / 8));
    matmul_fixed_kernel<T><<<grd, blk, 0, st>>>(a, b, out, m, k, n, ord.as<int64_t>());
    return finish(st);
  }
  constexpr int S = sizeof(T) == 8 ? 4 : 2;
  const ExactPlan plan = exact_plan(k, sizeof(T) == 8);
  DevBuf ea(m * sizeof(int)), fb(n * sizeof(int)), br(m * sizeof(int)), bc(n * sizeof(int));
  DevBuf as(S * m * k * sizeof(double)), bs(S * k * n * sizeof(double));
  if (std::string e = alloc_error(); !e.empty()) return e;
  row_scale_kernel<T><<<(unsigned)m, 256, 0, st>>>(a, m, k, ea.as<int>(), br.as<int>());
  col_scale_kernel<T><<<(unsigned)((n + 255) / 256), 256, 0, st>>>(b, k, n, fb.as<int>(), bc.as<int>());
  split_kernel<T><<<(unsigned)((m * k + 255) / 256), 256, 0, st>>>(a, as.as<double>(), m, k, ea.as<int>(), true, S, plan.width);
  split_kernel<T><<<(unsigned)((k * n + 255) / 256), 256, 0, st>>>(b, bs.as<double>(), k, n, fb.as<int>(), false, S, plan.width);
  dim3 blk(TILE, TILE), grd((unsigned)((n + TILE - 1) / TILE), (unsigned)((m + TILE - 1) / TILE));
  matmul_exact_kernel<T, S><<<grd, blk, 0, st>>>(as.as<double>(), bs.as<double>(), ea.as<int>(), fb.as<int>(),
                                                  br.as<int>(), bc.as<int>(), a, b, out, m, k, n,
                                                  plan.width, int64_t(1) << plan.chunk_bits);
  return finish(st);
}

template <class T>
std::string sum_t(bool fixed, const T* x, T* out, int64_t k, int64_t n, const int64_t* order_host,
                  cudaStream_t st) {
  if (n == 0) return std::string();
  unsigned grd = (unsigned)((n + 127) / 128);
  if (fixed) {
    DevBuf ord(order_host ? k * sizeof(int64_t) : 0);
    if (std::string e = alloc_error(); !e.empty()) return e;
    if (order_host) cudaMemcpyAsync(ord.p, order_host, k * sizeof(int64_t), cudaMemcpyHostToDevice, st);
    sum_fixed_kernel<T><<<grd, 128, 0, st>>>(x, out, k, n, ord.as<int64_t>());
    return finish(st);
  }
  sum_exact_kernel<T><<<grd, 128, 0, st>>>(x, out, k, n);
  return finish(st);
}

}  // namespace

std::string matmul(bool is_double, bool fixed, const void* a, const void* b, void* out, int64_t m,
                   int64_t k, int64_t n, const int64_t* order_host, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  if (is_double)
    return matmul_t<double>(fixed, (const double*)a, (const double*)b, (double*)out, m, k, n, order_host, st);
  return matmul_t<float>(fixed, (const float*)a, (const float*)b, (float*)out, m, k, n, order_host, st);
}

std::string sum_rows(bool is_double, bool fixed, const void* x, void* out, int64_t k, int64_t n,
                     const int64_t* order_host, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  if (is_double) return sum_t<double>(fixed, (const double*)x, (double*)out, k, n, order_host, st);
  return sum_t<float>(fixed, (const float*)x, (float*)out, k, n, order_host, st);
}

std::string elementwise(bool is_double, int op, const void* x, void* out, int64_t n, void* stream) {
  if (n == 0) return std::string();
  auto st = static_cast<cudaStream_t>(stream);
  unsigned grd = (unsigned)((n + 255) / 256);
  if (is_double) mathfn_kernel<double><<<grd, 256, 0, st>>>((const double*)x, (double*)out, n, op);
  else mathfn_kernel<float><<<grd, 256, 0, st>>>((const float*)x, (float*)out, n, op);
  return finish(st);
}

std::string device_info(int& count, int& runtime_version, int& driver_version) {
  count = 0; runtime_version = 0; driver_version = 0;
  cudaRuntimeGetVersion(&runtime_version);
  cudaDriverGetVersion(&driver_version);
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) { count = 0; cudaGetLastError(); return cudaGetErrorString(e); }
  return std::string();
}

}  // namespace cuda
}  // namespace exactforge
