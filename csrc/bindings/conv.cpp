// Bindings of the convolution (exactforge/conv.hpp): im2col and col2im, the direct fixed-order
// convolution, its input gradient and the exact weight gradient.
#include <type_traits>
#include "common.hpp"

#include <stdexcept>

#include "exactforge/conv.hpp"
#include "exactforge/fixedpoint.hpp"

using namespace exactforge;
using namespace exactforge::bindings;

namespace {
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
py::array conv2d_weight_grad_py(py::array x, py::array dyt, std::vector<int64_t> k, std::vector<int64_t> s,
                                std::vector<int64_t> p, std::vector<int64_t> d, int threads, bool exact) {
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
  if (exact && N > kExactMatmulMaxK)
    throw py::value_error("the weight gradient's reduced axis has more than 2^20 terms");
  const int64_t CKK = g.C * g.kh * g.kw;
  py::array out = dt == DT::F32 ? py::array(py::array_t<float>({CKK, O})) : py::array(py::array_t<double>({CKK, O}));
  {
    py::gil_scoped_release nogil;
    const auto run = [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      const T* xs = static_cast<const T*>(x.data());
      const T* ds = static_cast<const T*>(dyt.data());
      T* o = static_cast<T*>(out.mutable_data());
      if (exact) conv2d_weight_grad_exact(xs, ds, o, g, O, threads);
      else conv2d_weight_grad_fixed(xs, ds, o, g, O, threads);
    };
    if (dt == DT::F32) run(static_cast<float*>(nullptr));
    else run(static_cast<double*>(nullptr));
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
}  // namespace

void exactforge::bindings::bind_conv(py::module_& m) {
  m.def("im2col", &conv_im2col, py::arg("x"), py::arg("kernel"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("threads") = 0);
  m.def("conv2d_fixed", &conv2d_fixed_py, py::arg("x"), py::arg("w"), py::arg("padding"), py::arg("threads") = 0,
        py::arg("bias") = py::none());
  m.def("conv2d_input_grad_fixed", &conv2d_input_grad_fixed_py, py::arg("dy"), py::arg("w"), py::arg("shape"),
        py::arg("padding"), py::arg("threads") = 0);
  m.def(
      "conv2d_weight_grad_exact",
      [](py::array x, py::array dyt, std::vector<int64_t> k, std::vector<int64_t> s, std::vector<int64_t> p,
         std::vector<int64_t> d, int threads) { return conv2d_weight_grad_py(x, dyt, k, s, p, d, threads, true); },
      py::arg("x"), py::arg("dyt"), py::arg("kernel"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
      py::arg("threads") = 0);
  // the fixed order's: the bits of matmul(im2col(x), dyt, "fixed") without materialising im2col
  m.def(
      "conv2d_weight_grad_fixed",
      [](py::array x, py::array dyt, std::vector<int64_t> k, std::vector<int64_t> s, std::vector<int64_t> p,
         std::vector<int64_t> d, int threads) { return conv2d_weight_grad_py(x, dyt, k, s, p, d, threads, false); },
      py::arg("x"), py::arg("dyt"), py::arg("kernel"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
      py::arg("threads") = 0);
  m.def("col2im", &conv_col2im, py::arg("cols"), py::arg("shape"), py::arg("kernel"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("threads") = 0);
}
