// Bindings of the reductions: the matmul and the sums in both modes, exp and log, and the
// float32 exact matmul through a named kernel.
#include "common.hpp"

#include <string>

#include "exactforge/fixedpoint.hpp"
#include "exactforge/mathfn.hpp"
#include "exactforge/reduce.hpp"
#include "kernels/kernels_int.hpp"

using namespace exactforge;
using namespace exactforge::bindings;

namespace {
py::array matmul(py::array a, py::array b, const std::string& mode,
                 std::optional<py::array_t<int64_t>> order, int threads, bool a_transposed) {
  require_c2d(a, "a");
  require_c2d(b, "b");
  DT da = dtype_of(a, "a"), db = dtype_of(b, "b");
  if (da != db) throw py::type_error("a and b: dtypes differ");
  const bool fixed = fixed_mode(mode);
  if (a_transposed && !fixed) throw py::value_error("a_transposed: fixed mode only");
  const int64_t m = a.shape(a_transposed ? 1 : 0), k = a.shape(a_transposed ? 0 : 1), n = b.shape(1);
  if (b.shape(0) != k) throw py::value_error("a, b: inner dimensions differ");
  if (k == 0) throw py::value_error("a, b: the reduced axis is empty");
  std::vector<int64_t> perm = checked_order(order, k);
  const int64_t* po = perm.empty() ? nullptr : perm.data();
  py::array out = da == DT::F32 ? py::array(py::array_t<float>({m, n})) : py::array(py::array_t<double>({m, n}));
  if (!fixed && k > kExactMatmulMaxK)
    throw py::value_error("mode='exact': the reduced axis has more than 2^20 terms");
  const void* pa = a.data();
  const void* pb = b.data();
  void* pc = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    if (da == DT::F32) {
      if (fixed) matmul_fixed<float>((const float*)pa, (const float*)pb, (float*)pc, m, k, n, po, threads, a_transposed);
      else matmul_exact<float>((const float*)pa, (const float*)pb, (float*)pc, m, k, n, threads);
    } else {
      if (fixed) matmul_fixed<double>((const double*)pa, (const double*)pb, (double*)pc, m, k, n, po, threads, a_transposed);
      else matmul_exact<double>((const double*)pa, (const double*)pb, (double*)pc, m, k, n, threads);
    }
  }
  return out;
}

// The float32 exact matmul through a named kernel (tests and benchmarks: every kernel must give
// the same bits). kernel: one of kExactKernelNames (kernels_int.hpp).
py::array matmul_exact_kernel(py::array_t<float, py::array::c_style> a, py::array_t<float, py::array::c_style> b,
                              const std::string& kernel, int threads) {
  if (a.ndim() != 2 || b.ndim() != 2) throw py::value_error("a, b: expected 2-D float32 arrays");
  const int64_t m = a.shape(0), k = a.shape(1), n = b.shape(1);
  if (b.shape(0) != k) throw py::value_error("a, b: inner dimensions differ");
  if (k == 0) throw py::value_error("a, b: the reduced axis is empty");
  if (k > kExactMatmulMaxK) throw py::value_error("mode='exact': the reduced axis has more than 2^20 terms");
  ExactKernel kid;
  if (!exact_kernel_of_name(kernel.c_str(), &kid)) {
    std::string names;
    const size_t count = sizeof(kExactKernelNames) / sizeof(kExactKernelNames[0]);
    for (size_t i = 0; i < count; ++i)
      names += std::string(i == 0 ? "" : i + 1 == count ? " or " : ", ") + "'" + kExactKernelNames[i].name + "'";
    throw py::value_error("kernel: expected " + names);
  }
  if (kid == ExactKernel::Int8Amx && !amx_int8_usable())
    throw py::value_error("kernel='int8-amx': AMX-INT8 is not usable on this CPU/OS");
  if (kid == ExactKernel::Int8Vnni && !vnni_int8_usable())
    throw py::value_error("kernel='int8-vnni': AVX-512 VNNI is not usable on this CPU or build");
  py::array_t<float> out({m, n});
  const float* pa = a.data();
  const float* pb = b.data();
  float* pc = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    matmul_exact_with(pa, pb, pc, m, k, n, threads, static_cast<int>(kid));
  }
  return out;
}

// Reduces the rows of a k x n array.
py::array sum_rows(py::array x, const std::string& mode, std::optional<py::array_t<int64_t>> order,
                   int threads) {
  require_c2d(x, "x");
  DT dx = dtype_of(x, "x");
  const int64_t k = x.shape(0), n = x.shape(1);
  if (k == 0) throw py::value_error("x: the reduced axis is empty");
  std::vector<int64_t> perm = checked_order(order, k);
  const int64_t* po = perm.empty() ? nullptr : perm.data();
  const bool fixed = fixed_mode(mode);
  if (!fixed && k > kExactSumMaxK)
    throw py::value_error("mode='exact': the reduced axis has more than 2^22 terms");
  py::array out = dx == DT::F32 ? py::array(py::array_t<float>(n)) : py::array(py::array_t<double>(n));
  const void* px = x.data();
  void* pc = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    if (dx == DT::F32) {
      if (fixed) sum_fixed<float>((const float*)px, (float*)pc, k, n, po, threads);
      else sum_exact<float>((const float*)px, (float*)pc, k, n, threads);
    } else {
      if (fixed) sum_fixed<double>((const double*)px, (double*)pc, k, n, po, threads);
      else sum_exact<double>((const double*)px, (double*)pc, k, n, threads);
    }
  }
  return out;
}
// Per channel of a C-contiguous (N, C, L) array, the sum over n and l (BatchNorm's statistics).
py::array sum_channels_py(py::array x, const std::string& mode, int threads) {
  DT dx = dtype_of(x, "x");
  if (x.ndim() != 3 || !(x.flags() & py::array::c_style))
    throw py::value_error("x: expected a C-contiguous (batch, channels, positions) array");
  const int64_t N = x.shape(0), C = x.shape(1), L = x.shape(2);
  if (N == 0 || L == 0) throw py::value_error("x: a channel has no terms");
  const bool fixed = fixed_mode(mode);
  if (!fixed && N * L > kExactSumMaxK)
    throw py::value_error("mode='exact': a channel has more than 2^22 terms");
  py::array out = dx == DT::F32 ? py::array(py::array_t<float>(C)) : py::array(py::array_t<double>(C));
  const void* px = x.data();
  void* pc = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    if (dx == DT::F32) exactforge::sum_channels<float>((const float*)px, (float*)pc, N, C, L, !fixed, threads);
    else exactforge::sum_channels<double>((const double*)px, (double*)pc, N, C, L, !fixed, threads);
  }
  return out;
}

// out = f(x) for a float32/float64 array of any shape, C-contiguous: f(in, out, n) over the
// whole array (the GIL released), in the array's dtype.
template <class F>
py::array map_array(py::array x, const char* name, F f) {
  DT dx = dtype_of(x, name);
  if (!(x.flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  const py::ssize_t n = x.size();
  if (dx == DT::F32) {
    py::array_t<float> out(shape);
    const float* in = static_cast<const float*>(x.data());
    float* o = out.mutable_data();
    py::gil_scoped_release nogil;
    f(in, o, n);
    return std::move(out);
  }
  py::array_t<double> out(shape);
  const double* in = static_cast<const double*>(x.data());
  double* o = out.mutable_data();
  py::gil_scoped_release nogil;
  f(in, o, n);
  return std::move(out);
}

// log element by element: float64 evaluation, one rounding, NaN canonical
struct LogArray {
  template <class T> void operator()(const T* in, T* o, py::ssize_t n) const {
    for (py::ssize_t i = 0; i < n; ++i) o[i] = static_cast<T>(canonicalize(det_log(static_cast<double>(in[i]))));
  }
};
// exp on the dispatched ISA's vectors and the threads (exp_n): the bits of the same loop
struct ExpArray {
  template <class T> void operator()(const T* in, T* o, py::ssize_t n) const { exp_n(in, o, n); }
};

py::dict exact_plan_py(int64_t k, bool is_double) {
  ExactPlan p = exact_plan(k, is_double);
  py::dict d;
  d["slices"] = p.slices;
  d["width"] = p.width;
  d["chunk"] = int64_t(1) << p.chunk_bits;
  return d;
}
}  // namespace

void exactforge::bindings::bind_reduce(py::module_& m) {
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("mode"), py::arg("order") = py::none(),
        py::arg("threads") = 0, py::arg("a_transposed") = false);
  m.def("sum_rows", &sum_rows, py::arg("x"), py::arg("mode"), py::arg("order") = py::none(),
        py::arg("threads") = 0);
  m.def("sum_channels", &sum_channels_py, py::arg("x"), py::arg("mode"), py::arg("threads") = 0);
  m.def("exp", [](py::array x) { return map_array(x, "x", ExpArray{}); }, py::arg("x"));
  m.def("log", [](py::array x) { return map_array(x, "x", LogArray{}); }, py::arg("x"));
  m.def("matmul_exact_kernel", &matmul_exact_kernel, py::arg("a"), py::arg("b"), py::arg("kernel"),
        py::arg("threads") = 0);
  m.def("exact_plan", &exact_plan_py, py::arg("k"), py::arg("is_double"));
}
