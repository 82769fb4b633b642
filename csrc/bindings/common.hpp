// What every file of the _core bindings shares: the dtype, shape and mode checks that guard
// memory safety (the user-facing messages come from python/exactforge/reduce.py), and the
// functions that register each subject's bindings into the one module (core.cpp).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace py = pybind11;

namespace exactforge {
namespace bindings {

enum class DT { F32, F64 };

inline DT dtype_of(const py::array& x, const char* name) {
  // Equality, not identity: an unpickled array (multiprocessing, Ray's object store) carries
  // its own dtype object. NumPy's == still tells a byte-swapped float32 apart from the native one.
  if (x.dtype().equal(py::dtype::of<float>())) return DT::F32;
  if (x.dtype().equal(py::dtype::of<double>())) return DT::F64;
  throw py::type_error(std::string(name) + ": expected float32 or float64, got " +
                       py::str(x.dtype()).cast<std::string>());
}

inline void require_c2d(const py::array& x, const char* name) {
  if (x.ndim() != 2) throw py::value_error(std::string(name) + ": expected a 2-D array");
  if (!(x.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
}

/// The reduction mode's one parser (the CPU and CUDA bindings): true for "fixed", false for
/// "exact", a ValueError for anything else.
inline bool fixed_mode(const std::string& mode) {
  if (mode == "fixed") return true;
  if (mode == "exact") return false;
  throw py::value_error("mode: expected 'fixed' or 'exact'");
}

inline std::vector<int64_t> checked_order(const std::optional<py::array_t<int64_t>>& order, int64_t k) {
  std::vector<int64_t> perm;
  if (!order) return perm;
  auto o = order->unchecked<1>();
  if (o.shape(0) != k) throw py::value_error("order: length must equal the reduced axis");
  perm.resize(k);
  std::vector<char> seen(k, 0);
  for (int64_t t = 0; t < k; ++t) {
    int64_t v = o(t);
    if (v < 0 || v >= k || seen[v]) throw py::value_error("order: must be a permutation of 0..k-1");
    seen[v] = 1;
    perm[t] = v;
  }
  return perm;
}

// Each subject's bindings, registered into the module by core.cpp.
void bind_reduce(py::module_& m);  // reduce.cpp: matmul, sums, exp/log, the exact kernels
void bind_levels(py::module_& m);  // levels.cpp: the exact reductions' halves shared among processes
void bind_conv(py::module_& m);    // conv.cpp: im2col, col2im, the direct convolution and its gradients
void bind_layers(py::module_& m);  // layers.cpp: batched products, row and segment sums, BatchNorm
void bind_search(py::module_& m);  // search.cpp: the exhaustive search and the collision finder
void bind_info(py::module_& m);    // info.cpp: build info, threads, CPU features, limits
void bind_optim(py::module_& m);   // optim.cpp: the optimizer updates
void bind_gf2(py::module_& m);     // gf2.cpp: the GF(2) solver

}  // namespace bindings
}  // namespace exactforge
