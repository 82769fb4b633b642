// Host entry points of the CUDA kernels (csrc/cuda/reduce.cu), callable from plain C++.
// Pointers are device pointers to C-contiguous arrays; `stream` is a cudaStream_t (0 = default).
// Each returns an empty string on success or the CUDA error text.
#pragma once
#include <cstdint>
#include <string>

namespace exactforge {
namespace cuda {

std::string matmul(bool is_double, bool fixed, const void* a, const void* b, void* out, int64_t m,
                   int64_t k, int64_t n, const int64_t* order_host, void* stream);
std::string sum_rows(bool is_double, bool fixed, const void* x, void* out, int64_t k, int64_t n,
                     const int64_t* order_host, void* stream);
/// op 0: exp, op 1: log (exactforge's own, mathfn.hpp), elementwise over n values.
std::string elementwise(bool is_double, int op, const void* x, void* out, int64_t n, void* stream);
std::string device_info(int& count, int& runtime_version, int& driver_version);

}  // namespace cuda
}  // namespace exactforge
