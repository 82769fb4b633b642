// pybind11 bindings of the CPU core: the private module exactforge._core.
//
// The public checks (dtype, shape, contiguity, keys) live in python/exactforge/reduce.py,
// which gives the user-facing messages; the checks here repeat the ones that guard memory
// safety so that a direct call into _core can raise but never read out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "exactforge/batched.hpp"
#include "exactforge/fixedpoint.hpp"
#include "exactforge/mathfn.hpp"
#include "exactforge/reduce.hpp"
#include "kernels/kernels_int.hpp"
#include "exactforge/search.hpp"
#include "exactforge/collide.hpp"
#include "exactforge/conv.hpp"
#include "exactforge/norm.hpp"

#include <memory>

namespace py = pybind11;
using namespace exactforge;

namespace exactforge {
void register_optim(py::module_& m);  // optim.cpp
void register_gf2(py::module_& m);    // gf2.cpp
}

namespace {

enum class DT { F32, F64 };

DT dtype_of(const py::array& x, const char* name) {
  // Equality, not identity: an unpickled array (multiprocessing, Ray's object store) carries
  // its own dtype object. NumPy's == still tells a byte-swapped float32 apart from the native one.
  if (x.dtype().equal(py::dtype::of<float>())) return DT::F32;
  if (x.dtype().equal(py::dtype::of<double>())) return DT::F64;
  throw py::type_error(std::string(name) + ": expected float32 or float64, got " +
                       py::str(x.dtype()).cast<std::string>());
}

void require_c2d(const py::array& x, const char* name) {
  if (x.ndim() != 2) throw py::value_error(std::string(name) + ": expected a 2-D array");
  if (!(x.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
}

std::vector<int64_t> checked_order(const std::optional<py::array_t<int64_t>>& order, int64_t k) {
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
  const bool fixed = mode == "fixed";
  if (!fixed && mode != "exact") throw py::value_error("mode: expected 'fixed' or 'exact'");
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

ConvGeometry geometry(int64_t B, int64_t C, int64_t H, int64_t W, std::vector<int64_t> k, std::vector<int64_t> s,
                      std::vector<int64_t> p, std::vector<int64_t> d) {
  if (k.size() != 2 || s.size() != 2 || p.size() != 2 || d.size() != 2)
    throw py::value_error("conv: kernel, stride, padding and dilation are pairs");
  ConvGeometry g{B, C, H, W, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1]};
  try {
    g.check();
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
  return g;
}

py::array conv_im2col(py::array x, std::vector<int64_t> k, std::vector<int64_t> s, std::vector<int64_t> p,
                      std::vector<int64_t> d, int threads) {
  const DT dt = dtype_of(x, "x");
  if (x.ndim() != 4 || !(x.flags() & py::array::c_style))
    throw py::value_error("x: expected a C-contiguous (batch, channels, height, width) array");
  const ConvGeometry g = geometry(x.shape(0), x.shape(1), x.shape(2), x.shape(3), k, s, p, d);
  const py::ssize_t rows = g.C * g.kh * g.kw, cols = g.B * g.Ho() * g.Wo();
  py::array out = dt == DT::F32 ? py::array(py::array_t<float>({rows, cols})) : py::array(py::array_t<double>({rows, cols}));
  {
    py::gil_scoped_release nogil;
    if (dt == DT::F32) im2col(static_cast<const float*>(x.data()), static_cast<float*>(out.mutable_data()), g, threads);
    else im2col(static_cast<const double*>(x.data()), static_cast<double*>(out.mutable_data()), g, threads);
  }
  return out;
}

// The fixed-order convolution without im2col (stride 1, dilation 1): the im2col product's bits.
py::array conv2d_fixed_py(py::array x, py::array w, std::vector<int64_t> p, int threads,
                          std::optional<py::array> bias) {
  const DT dt = dtype_of(x, "x");
  if (dtype_of(w, "w") != dt) throw py::type_error("x and w: dtypes differ");
  if (x.ndim() != 4 || !(x.flags() & py::array::c_style))
    throw py::value_error("x: expected a C-contiguous (batch, channels, height, width) array");
  if (w.ndim() != 4 || !(w.flags() & py::array::c_style) || w.shape(1) != x.shape(1))
    throw py::value_error("w: expected a C-contiguous (out channels, channels, kh, kw) array matching x's channels");
  const ConvGeometry g = geometry(x.shape(0), x.shape(1), x.shape(2), x.shape(3), {w.shape(2), w.shape(3)}, {1, 1}, p,
                                  {1, 1});
  const int64_t O = w.shape(0);
  if (bias && (dtype_of(*bias, "bias") != dt || bias->ndim() != 1 || bias->shape(0) != O ||
               !(bias->flags() & py::array::c_style)))
    throw py::value_error("bias: expected one value per output channel, of x's dtype");
  const void* pb = bias ? bias->data() : nullptr;
  py::array out = dt == DT::F32 ? py::array(py::array_t<float>({g.B, O, g.Ho(), g.Wo()}))
                                : py::array(py::array_t<double>({g.B, O, g.Ho(), g.Wo()}));
  {
    py::gil_scoped_release nogil;
    if (dt == DT::F32)
      conv2d_fixed(static_cast<const float*>(x.data()), static_cast<const float*>(w.data()),
                   static_cast<float*>(out.mutable_data()), g, O, threads, static_cast<const float*>(pb));
    else
      conv2d_fixed(static_cast<const double*>(x.data()), static_cast<const double*>(w.data()),
                   static_cast<double*>(out.mutable_data()), g, O, threads, static_cast<const double*>(pb));
  }
  return out;
}

// The fixed-order input gradient of that convolution without W^T dY or col2im: their bits.
py::array conv2d_input_grad_fixed_py(py::array dy, py::array w, std::vector<int64_t> shape, std::vector<int64_t> p,
                                     int threads) {
  const DT dt = dtype_of(dy, "dy");
  if (dtype_of(w, "w") != dt) throw py::type_error("dy and w: dtypes differ");
  if (shape.size() != 4) throw py::value_error("shape: expected the input's (batch, channels, height, width)");
  if (w.ndim() != 4 || !(w.flags() & py::array::c_style) || w.shape(1) != shape[1])
    throw py::value_error("w: expected a C-contiguous (out channels, channels, kh, kw) array matching shape's channels");
  const ConvGeometry g = geometry(shape[0], shape[1], shape[2], shape[3], {w.shape(2), w.shape(3)}, {1, 1}, p, {1, 1});
  const int64_t O = w.shape(0);
  if (dy.ndim() != 4 || !(dy.flags() & py::array::c_style) || dy.shape(0) != g.B || dy.shape(1) != O ||
      dy.shape(2) != g.Ho() || dy.shape(3) != g.Wo())
    throw py::value_error("dy: expected a C-contiguous (batch, out channels, out height, out width) array of the "
                          "convolution's output shape");
  std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  py::array out = dt == DT::F32 ? py::array(py::array_t<float>(dims)) : py::array(py::array_t<double>(dims));
  {
    py::gil_scoped_release nogil;
    if (dt == DT::F32)
      conv2d_input_grad_fixed(static_cast<const float*>(dy.data()), static_cast<const float*>(w.data()),
                              static_cast<float*>(out.mutable_data()), g, O, threads);
    else
      conv2d_input_grad_fixed(static_cast<const double*>(dy.data()), static_cast<const double*>(w.data()),
                              static_cast<double*>(out.mutable_data()), g, O, threads);
  }
  return out;
}

// The exact-mode weight gradient im2col(x) @ dyt without materialising im2col: its bits.
py::array conv2d_weight_grad_exact_py(py::array x, py::array dyt, std::vector<int64_t> k, std::vector<int64_t> s,
                                      std::vector<int64_t> p, std::vector<int64_t> d, int threads) {
  const DT dt = dtype_of(x, "x");
  if (dtype_of(dyt, "dyt") != dt) throw py::type_error("x and dyt: dtypes differ");
  if (x.ndim() != 4 || !(x.flags() & py::array::c_style))
    throw py::value_error("x: expected a C-contiguous (batch, channels, height, width) array");
  require_c2d(dyt, "dyt");
  const ConvGeometry g = geometry(x.shape(0), x.shape(1), x.shape(2), x.shape(3), k, s, p, d);
  const int64_t N = g.B * g.Ho() * g.Wo(), O = dyt.shape(1);
  if (dyt.shape(0) != N)
    throw py::value_error("dyt: expected (batch * out height * out width, out channels) rows, one per output position");
  if (O == 0) throw py::value_error("dyt: no output channels");
  if (N > kExactMatmulMaxK) throw py::value_error("the weight gradient's reduced axis has more than 2^20 terms");
  const int64_t CKK = g.C * g.kh * g.kw;
  py::array out = dt == DT::F32 ? py::array(py::array_t<float>({CKK, O})) : py::array(py::array_t<double>({CKK, O}));
  {
    py::gil_scoped_release nogil;
    if (dt == DT::F32)
      conv2d_weight_grad_exact(static_cast<const float*>(x.data()), static_cast<const float*>(dyt.data()),
                               static_cast<float*>(out.mutable_data()), g, O, threads);
    else
      conv2d_weight_grad_exact(static_cast<const double*>(x.data()), static_cast<const double*>(dyt.data()),
                               static_cast<double*>(out.mutable_data()), g, O, threads);
  }
  return out;
}

py::array conv_col2im(py::array cols, std::vector<int64_t> shape, std::vector<int64_t> k, std::vector<int64_t> s,
                      std::vector<int64_t> p, std::vector<int64_t> d, int threads) {
  const DT dt = dtype_of(cols, "cols");
  require_c2d(cols, "cols");
  if (shape.size() != 4) throw py::value_error("shape: expected (batch, channels, height, width)");
  const ConvGeometry g = geometry(shape[0], shape[1], shape[2], shape[3], k, s, p, d);
  if (cols.shape(0) != g.C * g.kh * g.kw || cols.shape(1) != g.B * g.Ho() * g.Wo())
    throw py::value_error("cols: its shape does not match the convolution's geometry");
  std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  py::array out = dt == DT::F32 ? py::array(py::array_t<float>(dims)) : py::array(py::array_t<double>(dims));
  {
    py::gil_scoped_release nogil;
    if (dt == DT::F32) col2im(static_cast<const float*>(cols.data()), static_cast<float*>(out.mutable_data()), g, threads);
    else col2im(static_cast<const double*>(cols.data()), static_cast<double*>(out.mutable_data()), g, threads);
  }
  return out;
}

// ---- Reductions shared among processes (exactforge.distributed): the halves of the exact
// product and sum that come before and after the processes add their integer levels. ----
namespace {
void require_2d_pair(const py::array& a, const py::array& b) {
  require_c2d(a, "a");
  require_c2d(b, "b");
  if (dtype_of(a, "a") != dtype_of(b, "b")) throw py::type_error("a and b: dtypes differ");
  if (a.shape(1) != b.shape(0)) throw py::value_error("a, b: inner dimensions differ");
}
py::array_t<double> checked_maxima(const py::array_t<double, py::array::c_style | py::array::forcecast>& v,
                                   int64_t len, const char* name) {
  if (v.ndim() != 1 || v.shape(0) != len)
    throw py::value_error(std::string(name) + ": expected " + std::to_string(len) + " maxima");
  return v;
}
int64_t checked_k_total(int64_t k_total, int64_t k, int64_t limit) {
  if (k_total < k || k_total < 1)
    throw py::value_error("k_total: expected the whole reduction's terms, at least this part's " + std::to_string(k));
  if (k_total > limit) throw py::value_error("k_total: the whole reduction has more than " + std::to_string(limit) +
                                             " terms");
  return k_total;
}
py::array float_out(const std::string& dtype, std::vector<py::ssize_t> dims) {
  if (dtype == "float32") return py::array(py::array_t<float>(dims));
  if (dtype == "float64") return py::array(py::array_t<double>(dims));
  throw py::value_error("dtype: expected 'float32' or 'float64'");
}
const uint8_t* optional_flags(const std::optional<py::array_t<uint8_t, py::array::c_style | py::array::forcecast>>& f,
                              int64_t len) {
  if (!f) return nullptr;
  if (f->size() != len) throw py::value_error("flags: expected one per output");
  return f->data();
}
}  // namespace

py::tuple exact_maxima_py(py::array a, py::array b) {
  require_2d_pair(a, b);
  const int64_t m = a.shape(0), k = a.shape(1), n = b.shape(1);
  py::array_t<double> rm(m), cm(n);
  bool bad;
  const bool f32 = dtype_of(a, "a") == DT::F32;
  {
    py::gil_scoped_release nogil;
    bad = f32 ? exact_maxima<float>((const float*)a.data(), (const float*)b.data(), m, k, n, rm.mutable_data(),
                                    cm.mutable_data())
              : exact_maxima<double>((const double*)a.data(), (const double*)b.data(), m, k, n, rm.mutable_data(),
                                     cm.mutable_data());
  }
  return py::make_tuple(rm, cm, bad);
}

py::array exact_special_flags_py(py::array a, py::array b) {
  require_2d_pair(a, b);
  const int64_t m = a.shape(0), k = a.shape(1), n = b.shape(1);
  py::array_t<uint8_t> flags({m, n});
  const bool f32 = dtype_of(a, "a") == DT::F32;
  {
    py::gil_scoped_release nogil;
    if (f32) exact_special_flags<float>((const float*)a.data(), (const float*)b.data(), m, k, n, flags.mutable_data());
    else exact_special_flags<double>((const double*)a.data(), (const double*)b.data(), m, k, n, flags.mutable_data());
  }
  return flags;
}

py::array matmul_exact_levels_py(py::array a, py::array b, int64_t k_total,
                                 py::array_t<double, py::array::c_style | py::array::forcecast> row_max,
                                 py::array_t<double, py::array::c_style | py::array::forcecast> col_max, int threads) {
  require_2d_pair(a, b);
  const int64_t m = a.shape(0), k = a.shape(1), n = b.shape(1);
  checked_k_total(k_total, k, kExactMatmulMaxK);
  checked_maxima(row_max, m, "row_max");
  checked_maxima(col_max, n, "col_max");
  const bool f32 = dtype_of(a, "a") == DT::F32;
  const int S = f32 ? 2 : 4;
  py::array_t<int64_t> levels({m, n, static_cast<int64_t>(S)});
  const ExactShare share{k_total, row_max.data(), col_max.data(), levels.mutable_data()};
  {
    py::gil_scoped_release nogil;
    if (f32) matmul_exact_levels<float>((const float*)a.data(), (const float*)b.data(), m, k, n, share, threads);
    else matmul_exact_levels<double>((const double*)a.data(), (const double*)b.data(), m, k, n, share, threads);
  }
  return levels;
}

py::array round_exact_levels_py(py::array_t<int64_t, py::array::c_style | py::array::forcecast> levels,
                                int64_t k_total, py::array_t<double, py::array::c_style | py::array::forcecast> row_max,
                                py::array_t<double, py::array::c_style | py::array::forcecast> col_max,
                                std::optional<py::array_t<uint8_t, py::array::c_style | py::array::forcecast>> flags,
                                const std::string& dtype) {
  if (levels.ndim() != 3) throw py::value_error("levels: expected (m, n, slices)");
  const int64_t m = levels.shape(0), n = levels.shape(1), S = levels.shape(2);
  if (S != (dtype == "float32" ? 2 : 4)) throw py::value_error("levels: 2 levels for float32, 4 for float64");
  checked_k_total(k_total, 1, kExactMatmulMaxK);
  checked_maxima(row_max, m, "row_max");
  checked_maxima(col_max, n, "col_max");
  const uint8_t* pf = optional_flags(flags, m * n);
  py::array out = float_out(dtype, {m, n});
  if (dtype == "float32")
    round_exact_levels<float>(levels.data(), m, n, k_total, row_max.data(), col_max.data(), pf,
                              static_cast<float*>(out.mutable_data()));
  else
    round_exact_levels<double>(levels.data(), m, n, k_total, row_max.data(), col_max.data(), pf,
                               static_cast<double*>(out.mutable_data()));
  return out;
}

py::tuple sum_maxima_py(py::array x) {
  require_c2d(x, "x");
  const int64_t k = x.shape(0), n = x.shape(1);
  py::array_t<double> cm(n);
  const bool bad = dtype_of(x, "x") == DT::F32 ? sum_maxima<float>((const float*)x.data(), k, n, cm.mutable_data())
                                               : sum_maxima<double>((const double*)x.data(), k, n, cm.mutable_data());
  return py::make_tuple(cm, bad);
}

py::array sum_special_flags_py(py::array x) {
  require_c2d(x, "x");
  const int64_t k = x.shape(0), n = x.shape(1);
  py::array_t<uint8_t> flags(n);
  if (dtype_of(x, "x") == DT::F32) sum_special_flags<float>((const float*)x.data(), k, n, flags.mutable_data());
  else sum_special_flags<double>((const double*)x.data(), k, n, flags.mutable_data());
  return flags;
}

py::array sum_exact_levels_py(py::array x, int64_t k_total,
                              py::array_t<double, py::array::c_style | py::array::forcecast> col_max, int threads) {
  require_c2d(x, "x");
  const int64_t k = x.shape(0), n = x.shape(1);
  checked_k_total(k_total, k, kExactSumMaxK);
  checked_maxima(col_max, n, "col_max");
  py::array_t<int64_t> levels({n, static_cast<int64_t>(kSumSlices)});
  const bool f32 = dtype_of(x, "x") == DT::F32;
  {
    py::gil_scoped_release nogil;
    if (f32) sum_exact_levels<float>((const float*)x.data(), k, n, col_max.data(), levels.mutable_data(), threads);
    else sum_exact_levels<double>((const double*)x.data(), k, n, col_max.data(), levels.mutable_data(), threads);
  }
  return levels;
}

py::array round_sum_levels_py(py::array_t<int64_t, py::array::c_style | py::array::forcecast> levels,
                              py::array_t<double, py::array::c_style | py::array::forcecast> col_max,
                              std::optional<py::array_t<uint8_t, py::array::c_style | py::array::forcecast>> flags,
                              const std::string& dtype) {
  if (levels.ndim() != 2 || levels.shape(1) != kSumSlices) throw py::value_error("levels: expected (n, 2)");
  const int64_t n = levels.shape(0);
  checked_maxima(col_max, n, "col_max");
  const uint8_t* pf = optional_flags(flags, n);
  py::array out = float_out(dtype, {n});
  if (dtype == "float32")
    round_sum_levels<float>(levels.data(), n, col_max.data(), pf, static_cast<float*>(out.mutable_data()));
  else
    round_sum_levels<double>(levels.data(), n, col_max.data(), pf, static_cast<double*>(out.mutable_data()));
  return out;
}

py::array matmul(py::array a, py::array b, const std::string& mode,
                 std::optional<py::array_t<int64_t>> order, int threads, bool a_transposed) {
  require_c2d(a, "a");
  require_c2d(b, "b");
  DT da = dtype_of(a, "a"), db = dtype_of(b, "b");
  if (da != db) throw py::type_error("a and b: dtypes differ");
  if (a_transposed && mode != "fixed") throw py::value_error("a_transposed: fixed mode only");
  const int64_t m = a.shape(a_transposed ? 1 : 0), k = a.shape(a_transposed ? 0 : 1), n = b.shape(1);
  if (b.shape(0) != k) throw py::value_error("a, b: inner dimensions differ");
  if (k == 0) throw py::value_error("a, b: the reduced axis is empty");
  std::vector<int64_t> perm = checked_order(order, k);
  const int64_t* po = perm.empty() ? nullptr : perm.data();
  py::array out = da == DT::F32 ? py::array(py::array_t<float>({m, n})) : py::array(py::array_t<double>({m, n}));
  const bool fixed = mode == "fixed";
  if (!fixed && mode != "exact") throw py::value_error("mode: expected 'fixed' or 'exact'");
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
// the same bits). kernel: "auto", "f64-slices", "int8-generic", "int8-amx" or "int8-vnni".
py::array matmul_exact_kernel(py::array_t<float, py::array::c_style> a, py::array_t<float, py::array::c_style> b,
                              const std::string& kernel, int threads) {
  if (a.ndim() != 2 || b.ndim() != 2) throw py::value_error("a, b: expected 2-D float32 arrays");
  const int64_t m = a.shape(0), k = a.shape(1), n = b.shape(1);
  if (b.shape(0) != k) throw py::value_error("a, b: inner dimensions differ");
  if (k == 0) throw py::value_error("a, b: the reduced axis is empty");
  if (k > kExactMatmulMaxK) throw py::value_error("mode='exact': the reduced axis has more than 2^20 terms");
  const int kid = kernel == "auto"           ? 0
                  : kernel == "f64-slices"   ? 1
                  : kernel == "int8-generic" ? 2
                  : kernel == "int8-amx"     ? 3
                  : kernel == "int8-vnni"    ? 4
                                             : -1;
  if (kid < 0) throw py::value_error("kernel: expected 'auto', 'f64-slices', 'int8-generic', 'int8-amx' or 'int8-vnni'");
  if (kid == 3 && !amx_int8_usable()) throw py::value_error("kernel='int8-amx': AMX-INT8 is not usable on this CPU/OS");
  if (kid == 4 && !vnni_int8_usable())
    throw py::value_error("kernel='int8-vnni': AVX-512 VNNI is not usable on this CPU or build");
  py::array_t<float> out({m, n});
  const float* pa = a.data();
  const float* pb = b.data();
  float* pc = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    matmul_exact_with(pa, pb, pc, m, k, n, threads, kid);
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
  const bool fixed = mode == "fixed";
  if (!fixed && mode != "exact") throw py::value_error("mode: expected 'fixed' or 'exact'");
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
// BatchNorm's fused passes: (N, C, L) activations and per-channel vectors of one dtype.
namespace {
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
  const bool fixed = mode == "fixed";
  if (!fixed && mode != "exact") throw py::value_error("mode: expected 'fixed' or 'exact'");
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
}  // namespace

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

py::array sum_channels_py(py::array x, const std::string& mode, int threads) {
  DT dx = dtype_of(x, "x");
  if (x.ndim() != 3 || !(x.flags() & py::array::c_style))
    throw py::value_error("x: expected a C-contiguous (batch, channels, positions) array");
  const int64_t N = x.shape(0), C = x.shape(1), L = x.shape(2);
  if (N == 0 || L == 0) throw py::value_error("x: a channel has no terms");
  const bool fixed = mode == "fixed";
  if (!fixed && mode != "exact") throw py::value_error("mode: expected 'fixed' or 'exact'");
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

// Elementwise exp/log of float32/float64 arrays (any shape): float64 evaluation, one rounding.
template <class F>
py::array elementwise(py::array x, F f, const char* name) {
  DT dx = dtype_of(x, name);
  if (!(x.flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  const py::ssize_t n = x.size();
  if (dx == DT::F32) {
    py::array_t<float> out(shape);
    const float* in = static_cast<const float*>(x.data());
    float* o = out.mutable_data();
    py::gil_scoped_release nogil;
    for (py::ssize_t i = 0; i < n; ++i) o[i] = static_cast<float>(canonicalize(f(static_cast<double>(in[i]))));
    return std::move(out);
  }
  py::array_t<double> out(shape);
  const double* in = static_cast<const double*>(x.data());
  double* o = out.mutable_data();
  py::gil_scoped_release nogil;
  for (py::ssize_t i = 0; i < n; ++i) o[i] = canonicalize(f(in[i]));
  return std::move(out);
}

py::dict exact_plan_py(int64_t k, bool is_double) {
  ExactPlan p = exact_plan(k, is_double);
  py::dict d;
  d["slices"] = p.slices;
  d["width"] = p.width;
  d["chunk"] = int64_t(1) << p.chunk_bits;
  return d;
}

// One exhaustive search: owns copies of its arrays (the caller's may go away) and, for the
// meet-in-the-middle method, the hash table, built once and probed in blocks of first indices
// so that Python can report progress between blocks.
class SearchHandle {
 public:
  SearchHandle(py::array_t<int64_t, py::array::c_style | py::array::forcecast> grads,
               py::array_t<uint64_t, py::array::c_style | py::array::forcecast> keys,
               py::array_t<int64_t, py::array::c_style | py::array::forcecast> targets,
               py::array_t<uint64_t, py::array::c_style | py::array::forcecast> target_keys, int b,
               const std::string& method, uint64_t max_bytes, uint64_t key_tol, int64_t coord_tol, int shift)
      : mitm_(method == "mitm") {
    if (shift < 0 || shift > 62 || coord_tol < 0 || (key_tol != 0 && (uint64_t(1) << shift) <= 2 * key_tol))
      throw py::value_error("key_tol, coord_tol, shift: need 0 <= shift <= 62, coord_tol >= 0 and 2^shift > 2 key_tol");
    if (method != "mitm" && method != "brute") throw py::value_error("method: expected 'mitm' or 'brute'");
    if (grads.ndim() != 2 || keys.ndim() != 1 || targets.ndim() != 2 || target_keys.ndim() != 1)
      throw py::value_error("grads, keys, targets: wrong dimensions");
    if (keys.shape(0) != grads.shape(0) || targets.shape(1) != grads.shape(1) || target_keys.shape(0) != targets.shape(0))
      throw py::value_error("grads, keys, targets: inconsistent shapes");
    if (b < 1 || b > 6 || b > grads.shape(0)) throw py::value_error("b: expected 1..min(6, number of examples)");
    grads_.assign(grads.data(), grads.data() + grads.size());
    keys_.assign(keys.data(), keys.data() + keys.size());
    pr_.n = grads.shape(0);
    pr_.p = grads.shape(1);
    pr_.grads = grads_.data();
    pr_.keys = keys_.data();
    pr_.b = b;
    pr_.key_tol = key_tol;
    pr_.coord_tol = coord_tol;
    pr_.shift = shift;
    for (py::ssize_t t = 0; t < targets.shape(0); ++t) {
      pr_.targets.emplace_back(targets.data(t, 0), targets.data(t, 0) + targets.shape(1));
      pr_.target_keys.push_back(target_keys.at(t));
    }
    if (mitm_) {
      try {
        py::gil_scoped_release nogil;
        table_ = std::make_unique<search::Mitm>(pr_, max_bytes);
      } catch (const std::length_error& e) {
        throw py::value_error(e.what());
      }
    }
  }
  py::tuple run(int64_t a0, int64_t a1, int threads) {
    if (a0 < 0 || a1 > pr_.n || a0 > a1) throw py::value_error("a0, a1: a range of first indices within 0..n");
    std::vector<search::Match> found;
    uint64_t visited = 0;
    {
      py::gil_scoped_release nogil;
      found = mitm_ ? table_->probe(a0, a1, threads, &visited) : search::brute(pr_, a0, a1, threads, &visited);
    }
    py::list out;
    for (auto& m : found) out.append(py::make_tuple(m.target, py::tuple(py::cast(m.batch))));
    return py::make_tuple(out, visited);
  }
  uint64_t table_bytes() const { return table_ ? table_->table_bytes() : 0; }

 private:
  bool mitm_;
  std::vector<int64_t> grads_;
  std::vector<uint64_t> keys_;
  search::Problem pr_;
  std::unique_ptr<search::Mitm> table_;
};


// Every equal-gradient pair of a cell (search --all); see collide.hpp. Arrays are checked
// here for everything that guards memory: shapes, ascending keys, residues below their primes.
py::dict all_pairs(py::array_t<int64_t, py::array::c_style | py::array::forcecast> keys,
                   py::array_t<int64_t, py::array::c_style | py::array::forcecast> grads,
                   py::array_t<int32_t, py::array::c_style | py::array::forcecast> image,
                   py::array_t<uint64_t, py::array::c_style | py::array::forcecast> label,
                   py::array_t<uint64_t, py::array::c_style | py::array::forcecast> moduli, int b, int64_t zeros,
                   int64_t key_tol, int64_t coord_tol, uint64_t max_bytes, uint64_t max_numerical, int threads,
                   std::optional<py::array_t<int64_t, py::array::c_style | py::array::forcecast>> keys2,
                   int64_t key2_tol) {
  if (keys.ndim() != 1 || grads.ndim() != 2 || image.ndim() != 1 || label.ndim() != 2 || moduli.ndim() != 1)
    throw py::value_error("keys, grads, image, label, moduli: wrong dimensions");
  const int64_t n = keys.shape(0), p = grads.shape(1), q = moduli.shape(0);
  if (grads.shape(0) != n || image.shape(0) != n || label.shape(0) != n || label.shape(1) != p * q)
    throw py::value_error("keys, grads, image, label: inconsistent shapes");
  for (int64_t i = 0; i < q; ++i)
    if (moduli.at(i) < 2 || moduli.at(i) >= (uint64_t(1) << 61)) throw py::value_error("moduli: primes below 2^61");
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < p * q; ++j)
      if (label.at(i, j) >= moduli.at(j / p)) throw py::value_error("label: residues must lie below their prime");
  if (keys2 && (keys2->ndim() != 1 || keys2->shape(0) != n)) throw py::value_error("keys2: one key per example");
  collide::Cell c;
  if (keys2) {
    c.keys2 = keys2->data();
    c.key2_tol = key2_tol;
  }
  c.n = n;
  c.p = p;
  c.keys = keys.data();
  c.grads = grads.data();
  c.image = image.data();
  c.nmod = static_cast<int>(q);
  c.label = label.data();
  c.moduli = moduli.data();
  c.b = b;
  c.zeros = zeros;
  c.key_tol = key_tol;
  c.coord_tol = coord_tol;
  collide::Found f;
  try {
    py::gil_scoped_release nogil;
    f = collide::find_all(c, max_bytes, max_numerical, threads);
  } catch (const std::length_error& e) {
    throw py::value_error(e.what());
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
  py::dict d;
  d["bits"] = f.bits;
  d["records"] = f.records;
  d["windows"] = f.windows;
  d["exact_pairs"] = f.exact_pairs;
  d["exact_pairs_saturated"] = f.exact_pairs_saturated;
  py::array_t<uint64_t> mem(static_cast<py::ssize_t>(f.exact_members.size()));
  std::copy(f.exact_members.begin(), f.exact_members.end(), mem.mutable_data());
  d["exact_members"] = mem;
  py::list ex, num;
  for (auto& pr : f.exact_examples) ex.append(py::make_tuple(pr.a, pr.b));
  for (auto& pr : f.numerical) num.append(py::make_tuple(pr.a, pr.b));
  d["exact_examples"] = ex;
  d["numerical"] = num;
  d["false_candidates"] = f.false_candidates;
  d["seconds"] = py::make_tuple(f.seconds[0], f.seconds[1], f.seconds[2], f.seconds[3]);
  return d;
}
LevelPacking packing_of(const std::string& kind, int64_t k_total, const std::string& dtype, int world) {
  if (kind != "matmul" && kind != "sum") throw py::value_error("kind: expected 'matmul' or 'sum', got '" + kind + "'");
  if (dtype != "float32" && dtype != "float64")
    throw py::value_error("dtype: expected 'float32' or 'float64', got '" + dtype + "'");
  if (world < 1) throw py::value_error("world: expected the number of processes, at least 1");
  checked_k_total(k_total, 1, kind == "sum" ? kExactSumMaxK : kExactMatmulMaxK);
  return level_packing(kind == "sum", k_total, dtype == "float64", world);
}

py::dict level_packing_py(const std::string& kind, int64_t k_total, const std::string& dtype, int world) {
  const LevelPacking p = packing_of(kind, k_total, dtype, world);
  py::dict d;
  d["slices"] = p.slices;
  d["width"] = p.width;
  d["value_bits"] = p.value_bits;
  d["field_bits"] = p.field_bits;
  d["words"] = p.words;
  return d;
}

py::array pack_levels_py(py::array_t<int64_t, py::array::c_style | py::array::forcecast> levels,
                         const std::string& kind, int64_t k_total, const std::string& dtype, int world) {
  const LevelPacking p = packing_of(kind, k_total, dtype, world);
  if (levels.ndim() < 1 || levels.shape(levels.ndim() - 1) != p.slices)
    throw py::value_error("levels: expected a last axis of " + std::to_string(p.slices) + " levels");
  const int64_t count = levels.size() / p.slices;
  py::array_t<int32_t> words({count, static_cast<int64_t>(p.words)});
  {
    py::gil_scoped_release nogil;
    pack_levels(levels.data(), count, p, words.mutable_data());
  }
  return words;
}

py::array unpack_levels_py(py::array_t<int32_t, py::array::c_style | py::array::forcecast> words,
                           const std::string& kind, int64_t k_total, const std::string& dtype, int world) {
  const LevelPacking p = packing_of(kind, k_total, dtype, world);
  if (words.ndim() != 2 || words.shape(1) != p.words)
    throw py::value_error("words: expected (outputs, " + std::to_string(p.words) + ")");
  const int64_t count = words.shape(0);
  py::array_t<int64_t> levels({count, static_cast<int64_t>(p.slices)});
  {
    py::gil_scoped_release nogil;
    unpack_levels(words.data(), count, p, levels.mutable_data());
  }
  return levels;
}
}  // namespace

PYBIND11_MODULE(_core, m) {
  register_optim(m);
  register_gf2(m);
  m.doc() = "exactforge native CPU core (private; use exactforge.reduce)";
  m.def("matmul", &matmul, py::arg("a"), py::arg("b"), py::arg("mode"), py::arg("order") = py::none(),
        py::arg("threads") = 0, py::arg("a_transposed") = false);
  m.def("sum_rows", &sum_rows, py::arg("x"), py::arg("mode"), py::arg("order") = py::none(),
        py::arg("threads") = 0);
  m.def("sum_channels", &sum_channels_py, py::arg("x"), py::arg("mode"), py::arg("threads") = 0);
  m.def("exact_maxima", &exact_maxima_py, py::arg("a"), py::arg("b"));
  m.def("exact_special_flags", &exact_special_flags_py, py::arg("a"), py::arg("b"));
  m.def("matmul_exact_levels", &matmul_exact_levels_py, py::arg("a"), py::arg("b"), py::arg("k_total"),
        py::arg("row_max"), py::arg("col_max"), py::arg("threads") = 0);
  m.def("round_exact_levels", &round_exact_levels_py, py::arg("levels"), py::arg("k_total"), py::arg("row_max"),
        py::arg("col_max"), py::arg("flags"), py::arg("dtype"));
  m.def("sum_maxima", &sum_maxima_py, py::arg("x"));
  m.def("sum_special_flags", &sum_special_flags_py, py::arg("x"));
  m.def("sum_exact_levels", &sum_exact_levels_py, py::arg("x"), py::arg("k_total"), py::arg("col_max"),
        py::arg("threads") = 0);
  m.def("round_sum_levels", &round_sum_levels_py, py::arg("levels"), py::arg("col_max"), py::arg("flags"),
        py::arg("dtype"));
  m.def("level_packing", &level_packing_py, py::arg("kind"), py::arg("k_total"), py::arg("dtype"), py::arg("world"));
  m.def("pack_levels", &pack_levels_py, py::arg("levels"), py::arg("kind"), py::arg("k_total"), py::arg("dtype"),
        py::arg("world"));
  m.def("unpack_levels", &unpack_levels_py, py::arg("words"), py::arg("kind"), py::arg("k_total"), py::arg("dtype"),
        py::arg("world"));
  m.def("sum_centered_squares", &sum_centered_squares_py, py::arg("x"), py::arg("mean"), py::arg("mode"),
        py::arg("threads") = 0);
  m.def("sum_channel_products", &sum_channel_products_py, py::arg("a"), py::arg("b"), py::arg("mode"),
        py::arg("threads") = 0);
  m.def("batch_norm_normalize", &batch_norm_normalize_py, py::arg("x"), py::arg("mean"), py::arg("rstd"),
        py::arg("weight"), py::arg("bias"), py::arg("threads") = 0);
  m.def("batch_norm_input_grad", &batch_norm_input_grad_py, py::arg("dy"), py::arg("xhat"), py::arg("weight"),
        py::arg("mg"), py::arg("mgx"), py::arg("rstd"), py::arg("threads") = 0);
  m.def("exp", [](py::array x) { return elementwise(x, [](double v) { return det_exp(v); }, "x"); }, py::arg("x"));
  m.def("log", [](py::array x) { return elementwise(x, [](double v) { return det_log(v); }, "x"); }, py::arg("x"));
  m.def("bmm_unfused", &bmm_unfused_py, py::arg("a"), py::arg("b"), py::arg("threads") = 0);
  m.def("rowsum_fixed", &rowsum_fixed_py, py::arg("x"), py::arg("threads") = 0);
  m.def("segment_sums", &segment_sums_py, py::arg("x"), py::arg("order"), py::arg("starts"), py::arg("mode"));
  m.def("im2col", &conv_im2col, py::arg("x"), py::arg("kernel"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("threads") = 0);
  m.def("conv2d_fixed", &conv2d_fixed_py, py::arg("x"), py::arg("w"), py::arg("padding"), py::arg("threads") = 0,
        py::arg("bias") = py::none());
  m.def("conv2d_input_grad_fixed", &conv2d_input_grad_fixed_py, py::arg("dy"), py::arg("w"), py::arg("shape"),
        py::arg("padding"), py::arg("threads") = 0);
  m.def("conv2d_weight_grad_exact", &conv2d_weight_grad_exact_py, py::arg("x"), py::arg("dyt"), py::arg("kernel"),
        py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("threads") = 0);
  m.def("col2im", &conv_col2im, py::arg("cols"), py::arg("shape"), py::arg("kernel"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("threads") = 0);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("get_num_threads", &get_num_threads);
  m.def("build_info", &build_info);
  m.def("matmul_exact_kernel", &matmul_exact_kernel, py::arg("a"), py::arg("b"), py::arg("kernel"),
        py::arg("threads") = 0);
  m.def("amx_int8_usable", &amx_int8_usable);
  m.def("vnni_int8_usable", &vnni_int8_usable);
  m.def("exact_plan", &exact_plan_py, py::arg("k"), py::arg("is_double"));
  py::class_<SearchHandle>(m, "SearchHandle")
      .def(py::init<py::array_t<int64_t, py::array::c_style | py::array::forcecast>,
                    py::array_t<uint64_t, py::array::c_style | py::array::forcecast>,
                    py::array_t<int64_t, py::array::c_style | py::array::forcecast>,
                    py::array_t<uint64_t, py::array::c_style | py::array::forcecast>, int, const std::string&, uint64_t,
                    uint64_t, int64_t, int>(),
           py::arg("grads"), py::arg("keys"), py::arg("targets"), py::arg("target_keys"), py::arg("b"),
           py::arg("method"), py::arg("max_bytes"), py::arg("key_tol") = 0, py::arg("coord_tol") = 0,
           py::arg("shift") = 0)
      .def("run", &SearchHandle::run, py::arg("a0"), py::arg("a1"), py::arg("threads") = 0)
      .def_property_readonly("table_bytes", &SearchHandle::table_bytes);
  m.def("mitm_table_bytes", &search::Mitm::table_bytes_for, py::arg("n"), py::arg("b"));
  m.def("choose", &search::choose, py::arg("n"), py::arg("k"));
  m.def("all_pairs", &all_pairs, py::arg("keys"), py::arg("grads"), py::arg("image"), py::arg("label"),
        py::arg("moduli"), py::arg("b"), py::arg("zeros"), py::arg("key_tol"), py::arg("coord_tol"),
        py::arg("max_bytes"), py::arg("max_numerical"), py::arg("threads") = 0, py::arg("keys2") = py::none(),
        py::arg("key2_tol") = 0);
  m.def("pack_bits", &collide::pack_bits, py::arg("n"), py::arg("b"));
  m.attr("MAX_THREADS") = kMaxThreads;
  m.attr("EXACT_MATMUL_MAX_K") = kExactMatmulMaxK;
  m.attr("EXACT_SUM_MAX_K") = kExactSumMaxK;
  m.attr("SUM_SLICES") = kSumSlices;
  m.attr("SUM_WIDTH") = kSumWidth;
#ifdef EXACTFORGE_VERSION
  m.attr("__version__") = EXACTFORGE_VERSION;
#endif
}
