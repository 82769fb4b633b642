// Bindings of the layers' other reductions: the batched fixed-order product (attention), row and
// segment sums (batched.hpp), and BatchNorm's fused passes (norm.hpp).
#include "common.hpp"

#include <string>

#include "exactforge/batched.hpp"
#include "exactforge/fixedpoint.hpp"
#include "exactforge/norm.hpp"
#include "exactforge/reduce.hpp"

using namespace exactforge;
using namespace exactforge::bindings;

namespace {
// (N, M, K) @ (N, K, P) per example, each output summed over k in order with every product and
// sum rounded (batched.hpp): the bits of the torch loop it replaces.
py::array bmm_unfused_py(py::array a, py::array b, int threads) {
  if (a.ndim() != 3 || b.ndim() != 3) throw py::value_error("a, b: expected 3-D arrays (N x M x K and N x K x P)");
  if (!(a.flags() & py::array::c_style) || !(b.flags() & py::array::c_style))
    throw py::value_error("a, b: expected C-contiguous arrays");
  DT da = dtype_of(a, "a"), db = dtype_of(b, "b");
  if (da != db) throw py::type_error("a and b: dtypes differ");
  const int64_t N = a.shape(0), M = a.shape(1), K = a.shape(2), P = b.shape(2);
  if (b.shape(0) != N || b.shape(1) != K) throw py::value_error("a, b: shapes do not chain (N x M x K @ N x K x P)");
  if (K == 0) throw py::value_error("a, b: the reduced axis is empty");
  py::array out = da == DT::F32 ? py::array(py::array_t<float>({N, M, P})) : py::array(py::array_t<double>({N, M, P}));
  const void* pa = a.data();
  const void* pb = b.data();
  void* po = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    if (da == DT::F32) bmm_unfused<float>((const float*)pa, (const float*)pb, (float*)po, N, M, K, P, threads);
    else bmm_unfused<double>((const double*)pa, (const double*)pb, (double*)po, N, M, K, P, threads);
  }
  return out;
}

// Row sums of a C-contiguous R x D array in index order (batched.hpp).
py::array rowsum_fixed_py(py::array x, int threads) {
  if (x.ndim() != 2 || !(x.flags() & py::array::c_style)) throw py::value_error("x: expected a C-contiguous 2-D array");
  DT dx = dtype_of(x, "x");
  const int64_t R = x.shape(0), D = x.shape(1);
  if (D == 0) throw py::value_error("x: the reduced axis is empty");
  py::array out = dx == DT::F32 ? py::array(py::array_t<float>({R})) : py::array(py::array_t<double>({R}));
  const void* px = x.data();
  void* po = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    if (dx == DT::F32) rowsum_fixed<float>((const float*)px, (float*)po, R, D, threads);
    else rowsum_fixed<double>((const double*)px, (double*)po, R, D, threads);
  }
  return out;
}

// Groups of rows of x summed (batched.hpp: the embedding's gradient, one group per token).
py::array segment_sums_py(py::array x, py::array_t<int64_t, py::array::c_style> order,
                       py::array_t<int64_t, py::array::c_style> starts, const std::string& mode) {
  if (x.ndim() != 2 || !(x.flags() & py::array::c_style)) throw py::value_error("x: expected a C-contiguous 2-D array");
  DT dx = dtype_of(x, "x");
  const bool fixed = fixed_mode(mode);
  const int64_t N = x.shape(0), D = x.shape(1), S = starts.size() - 1;
  if (order.ndim() != 1 || order.size() != N) throw py::value_error("order: expected one index per row of x");
  if (starts.ndim() != 1 || S < 0) throw py::value_error("starts: expected the groups' starts and the end");
  const int64_t* po = order.data();
  const int64_t* ps = starts.data();
  for (int64_t t = 0; t < N; ++t)
    if (po[t] < 0 || po[t] >= N) throw py::value_error("order: an index is outside the rows of x");
  for (int64_t s = 0; s <= S; ++s)
    if (ps[s] < 0 || ps[s] > N || (s > 0 && ps[s] <= ps[s - 1]))
      throw py::value_error("starts: expected increasing offsets within 0..N");
  if (!fixed && D > 0)
    for (int64_t s = 0; s < S; ++s)
      if (ps[s + 1] - ps[s] > kExactSumMaxK) throw py::value_error("mode='exact': a group has more than 2^22 rows");
  py::array out = dx == DT::F32 ? py::array(py::array_t<float>({S, D})) : py::array(py::array_t<double>({S, D}));
  const void* pxv = x.data();
  void* pov = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    if (dx == DT::F32) segment_sums<float>((const float*)pxv, D, po, ps, S, fixed, (float*)pov);
    else segment_sums<double>((const double*)pxv, D, po, ps, S, fixed, (double*)pov);
  }
  return out;
}

// BatchNorm's fused passes: (N, C, L) activations and per-channel vectors of one dtype.
void require_ncl(const py::array& x, const char* name) {
  if (x.ndim() != 3 || !(x.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous (batch, channels, positions) array");
  if (x.shape(0) == 0 || x.shape(2) == 0) throw py::value_error(std::string(name) + ": a channel has no terms");
}
void require_same(const py::array& x, const py::array& y, const char* name) {
  if (dtype_of(y, name) != dtype_of(x, "x")) throw py::type_error(std::string(name) + ": dtype differs from x's");
  if (y.ndim() != x.ndim() || !(y.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array shaped like x");
  for (py::ssize_t d = 0; d < x.ndim(); ++d)
    if (y.shape(d) != x.shape(d)) throw py::value_error(std::string(name) + ": shape differs from x's");
}
const void* channel_vector(const py::array& x, const std::optional<py::array>& v, const char* name) {
  if (!v) return nullptr;
  if (dtype_of(*v, name) != dtype_of(x, "x")) throw py::type_error(std::string(name) + ": dtype differs from x's");
  if (v->ndim() != 1 || v->shape(0) != x.shape(1) || !(v->flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected one value per channel");
  return v->data();
}
bool exact_mode(const std::string& mode, int64_t terms) {
  const bool fixed = fixed_mode(mode);
  if (!fixed && terms > kExactSumMaxK) throw py::value_error("mode='exact': a channel has more than 2^22 terms");
  return !fixed;
}
py::array like_channels(const py::array& x) {
  return dtype_of(x, "x") == DT::F32 ? py::array(py::array_t<float>(x.shape(1)))
                                     : py::array(py::array_t<double>(x.shape(1)));
}
py::array like(const py::array& x) {
  std::vector<py::ssize_t> dims(x.shape(), x.shape() + x.ndim());
  return dtype_of(x, "x") == DT::F32 ? py::array(py::array_t<float>(dims)) : py::array(py::array_t<double>(dims));
}

py::array sum_centered_squares_py(py::array x, py::array mean, const std::string& mode, int threads) {
  require_ncl(x, "x");
  const void* pm = channel_vector(x, mean, "mean");
  const int64_t N = x.shape(0), C = x.shape(1), L = x.shape(2);
  const bool exact = exact_mode(mode, N * L);
  py::array out = like_channels(x);
  const bool f32 = dtype_of(x, "x") == DT::F32;
  {
    py::gil_scoped_release nogil;
    if (f32)
      sum_centered_squares<float>((const float*)x.data(), (const float*)pm, (float*)out.mutable_data(), N, C, L, exact,
                                  threads);
    else
      sum_centered_squares<double>((const double*)x.data(), (const double*)pm, (double*)out.mutable_data(), N, C, L,
                                   exact, threads);
  }
  return out;
}

py::array sum_channel_products_py(py::array a, py::array b, const std::string& mode, int threads) {
  require_ncl(a, "a");
  require_same(a, b, "b");
  const int64_t N = a.shape(0), C = a.shape(1), L = a.shape(2);
  const bool exact = exact_mode(mode, N * L);
  py::array out = like_channels(a);
  const bool f32 = dtype_of(a, "a") == DT::F32;
  {
    py::gil_scoped_release nogil;
    if (f32)
      sum_channel_products<float>((const float*)a.data(), (const float*)b.data(), (float*)out.mutable_data(), N, C, L,
                                  exact, threads);
    else
      sum_channel_products<double>((const double*)a.data(), (const double*)b.data(), (double*)out.mutable_data(), N,
                                   C, L, exact, threads);
  }
  return out;
}

py::tuple batch_norm_normalize_py(py::array x, py::array mean, py::array rstd, std::optional<py::array> weight,
                                  std::optional<py::array> bias, int threads) {
  require_ncl(x, "x");
  const void* pm = channel_vector(x, mean, "mean");
  const void* pr = channel_vector(x, rstd, "rstd");
  const void* pw = channel_vector(x, weight, "weight");
  const void* pb = channel_vector(x, bias, "bias");
  const int64_t N = x.shape(0), C = x.shape(1), L = x.shape(2);
  py::array xhat = like(x), y = like(x);
  const bool f32 = dtype_of(x, "x") == DT::F32;
  {
    py::gil_scoped_release nogil;
    if (f32)
      batch_norm_normalize<float>((const float*)x.data(), (const float*)pm, (const float*)pr, (const float*)pw,
                                  (const float*)pb, (float*)xhat.mutable_data(), (float*)y.mutable_data(), N, C, L,
                                  threads);
    else
      batch_norm_normalize<double>((const double*)x.data(), (const double*)pm, (const double*)pr, (const double*)pw,
                                   (const double*)pb, (double*)xhat.mutable_data(), (double*)y.mutable_data(), N, C,
                                   L, threads);
  }
  return py::make_tuple(xhat, y);
}

py::array batch_norm_input_grad_py(py::array dy, py::array xhat, std::optional<py::array> weight, py::array mg,
                                   py::array mgx, py::array rstd, int threads) {
  require_ncl(dy, "dy");
  require_same(dy, xhat, "xhat");
  const void* pw = channel_vector(dy, weight, "weight");
  const void* pg = channel_vector(dy, mg, "mg");
  const void* px = channel_vector(dy, mgx, "mgx");
  const void* pr = channel_vector(dy, rstd, "rstd");
  const int64_t N = dy.shape(0), C = dy.shape(1), L = dy.shape(2);
  py::array dx = like(dy);
  const bool f32 = dtype_of(dy, "dy") == DT::F32;
  {
    py::gil_scoped_release nogil;
    if (f32)
      batch_norm_input_grad<float>((const float*)dy.data(), (const float*)xhat.data(), (const float*)pw,
                                   (const float*)pg, (const float*)px, (const float*)pr, (float*)dx.mutable_data(), N,
                                   C, L, threads);
    else
      batch_norm_input_grad<double>((const double*)dy.data(), (const double*)xhat.data(), (const double*)pw,
                                    (const double*)pg, (const double*)px, (const double*)pr,
                                    (double*)dx.mutable_data(), N, C, L, threads);
  }
  return dx;
}
}  // namespace

void exactforge::bindings::bind_layers(py::module_& m) {
  m.def("sum_centered_squares", &sum_centered_squares_py, py::arg("x"), py::arg("mean"), py::arg("mode"),
        py::arg("threads") = 0);
  m.def("sum_channel_products", &sum_channel_products_py, py::arg("a"), py::arg("b"), py::arg("mode"),
        py::arg("threads") = 0);
  m.def("batch_norm_normalize", &batch_norm_normalize_py, py::arg("x"), py::arg("mean"), py::arg("rstd"),
        py::arg("weight"), py::arg("bias"), py::arg("threads") = 0);
  m.def("batch_norm_input_grad", &batch_norm_input_grad_py, py::arg("dy"), py::arg("xhat"), py::arg("weight"),
        py::arg("mg"), py::arg("mgx"), py::arg("rstd"), py::arg("threads") = 0);
  m.def("bmm_unfused", &bmm_unfused_py, py::arg("a"), py::arg("b"), py::arg("threads") = 0);
  m.def("rowsum_fixed", &rowsum_fixed_py, py::arg("x"), py::arg("threads") = 0);
  m.def("segment_sums", &segment_sums_py, py::arg("x"), py::arg("order"), py::arg("starts"), py::arg("mode"));
}
