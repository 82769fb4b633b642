// pybind11 bindings of the CUDA kernels: the private module exactforge._cuda, built only
// when nvcc works. Arrays arrive as raw device pointers; python/exactforge/_device.py checks
// dtype, shape and contiguity from __cuda_array_interface__ or torch before calling here.
#include "common.hpp"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <vector>

#include "exactforge/fixedpoint.hpp"
#include "cuda/launch.hpp"

using namespace exactforge;

namespace {

bool is_double_of(const std::string& dtype) {
  if (dtype == "float32") return false;
  if (dtype == "float64") return true;
  throw py::type_error("dtype: expected 'float32' or 'float64'");
}

const int64_t* checked_order(const std::optional<std::vector<int64_t>>& order, int64_t k) {
  if (!order) return nullptr;
  if ((int64_t)order->size() != k) throw py::value_error("order: length must equal the reduced axis");
  std::vector<char> seen(k, 0);
  for (int64_t v : *order) {
    if (v < 0 || v >= k || seen[v]) throw py::value_error("order: must be a permutation of 0..k-1");
    seen[v] = 1;
  }
  return order->data();
}

void check(const std::string& err) {
  if (!err.empty()) throw std::runtime_error("exactforge CUDA kernel failed: " + err);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "exactforge CUDA kernels (private; use exactforge.reduce with CUDA arrays)";
  m.def("matmul", [](const std::string& dtype, const std::string& mode, uintptr_t a, uintptr_t b,
                     uintptr_t out, int64_t mm, int64_t k, int64_t n,
                     std::optional<std::vector<int64_t>> order, uintptr_t stream) {
          bool dbl = is_double_of(dtype);
          const bool fixed = bindings::fixed_mode(mode);
          if (k <= 0 || mm < 0 || n < 0) throw py::value_error("shape: k must be positive");
          if (!fixed && k > kExactMatmulMaxK) throw py::value_error("mode='exact': more than 2^20 terms");
          const int64_t* po = checked_order(order, k);
          std::string err;
          {
            py::gil_scoped_release nogil;
            err = cuda::matmul(dbl, fixed, (const void*)a, (const void*)b, (void*)out, mm, k, n, po, (void*)stream);
          }
          check(err);
        }, py::arg("dtype"), py::arg("mode"), py::arg("a"), py::arg("b"), py::arg("out"), py::arg("m"),
        py::arg("k"), py::arg("n"), py::arg("order") = py::none(), py::arg("stream") = 0);
  m.def("sum_rows", [](const std::string& dtype, const std::string& mode, uintptr_t x, uintptr_t out,
                       int64_t k, int64_t n, std::optional<std::vector<int64_t>> order, uintptr_t stream) {
          bool dbl = is_double_of(dtype);
          const bool fixed = bindings::fixed_mode(mode);
          if (k <= 0 || n < 0) throw py::value_error("shape: k must be positive");
          if (!fixed && k > kExactSumMaxK) throw py::value_error("mode='exact': more than 2^22 terms");
          const int64_t* po = checked_order(order, k);
          std::string err;
          {
            py::gil_scoped_release nogil;
            err = cuda::sum_rows(dbl, fixed, (const void*)x, (void*)out, k, n, po, (void*)stream);
          }
          check(err);
        }, py::arg("dtype"), py::arg("mode"), py::arg("x"), py::arg("out"), py::arg("k"), py::arg("n"),
        py::arg("order") = py::none(), py::arg("stream") = 0);
  m.def("elementwise", [](const std::string& dtype, const std::string& fn, uintptr_t x, uintptr_t out, int64_t n,
                          uintptr_t stream) {
          bool dbl = is_double_of(dtype);
          if (fn != "exp" && fn != "log") throw py::value_error("fn: expected 'exp' or 'log'");
          std::string err;
          {
            py::gil_scoped_release nogil;
            err = cuda::elementwise(dbl, fn == "exp" ? 0 : 1, (const void*)x, (void*)out, n, (void*)stream);
          }
          check(err);
        }, py::arg("dtype"), py::arg("fn"), py::arg("x"), py::arg("out"), py::arg("n"), py::arg("stream") = 0);
  m.def("device_info", []() {
    int count, rt, drv;
    std::string err = cuda::device_info(count, rt, drv);
    py::dict d;
    d["device_count"] = count;
    d["runtime_version"] = rt;
    d["driver_version"] = drv;
    d["error"] = err;
    return d;
  });
#ifdef EXACTFORGE_CUDA_ARCHITECTURES
  m.attr("architectures") = EXACTFORGE_CUDA_ARCHITECTURES;
#endif
}
