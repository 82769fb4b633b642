// Bindings of the portable optimizer updates (src/include/exactforge/optim.hpp): each works in
// place on the arrays of one parameter, which are views of the torch tensors (no copy).
#include "common.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "exactforge/optim.hpp"

namespace exactforge {
namespace {

struct Buffers {
  bool f64 = false;
  int64_t n = 0;
};

// Every array of one update: C-contiguous, writable where it is written, one dtype (float32 or
// float64) and one size. A wrong one raises; none is ever read or written out of bounds.
Buffers check(const std::vector<std::pair<const char*, const py::array*>>& arrays, const char* read_only) {
  Buffers b;
  bool first = true;
  for (const auto& [name, a] : arrays) {
    if (a == nullptr) continue;
    const bool f32 = a->dtype().equal(py::dtype::of<float>()), f64 = a->dtype().equal(py::dtype::of<double>());
    if (!f32 && !f64) throw py::type_error(std::string(name) + ": expected float32 or float64");
    if (!(a->flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": expected a C-contiguous array");
    if (std::string(name) != read_only && !a->writeable())
      throw py::value_error(std::string(name) + ": expected a writable array (it is updated in place)");
    if (first) {
      b.f64 = f64;
      b.n = a->size();
      first = false;
    } else if (f64 != b.f64 || a->size() != b.n) {
      throw py::value_error(std::string(name) + ": expected the parameter's dtype and number of elements");
    }
  }
  // the loops assume no two arrays overlap (they are restrict-qualified, and vectorised so)
  for (size_t i = 0; i < arrays.size(); ++i) {
    for (size_t j = i + 1; j < arrays.size(); ++j) {
      const py::array *a = arrays[i].second, *c = arrays[j].second;
      if (a == nullptr || c == nullptr || a->nbytes() == 0 || c->nbytes() == 0) continue;
      const char *a0 = static_cast<const char*>(a->data()), *c0 = static_cast<const char*>(c->data());
      if (a0 < c0 + c->nbytes() && c0 < a0 + a->nbytes())
        throw py::value_error(std::string(arrays[i].first) + ", " + arrays[j].first +
                              ": expected separate arrays (they share memory)");
    }
  }
  return b;
}

template <class T>
T* data(std::optional<py::array>& a) {
  return a ? static_cast<T*>(a->mutable_data()) : nullptr;
}

void sgd_py(py::array p, py::array grad, std::optional<py::array> buf, double neg_lr, double weight_decay,
            double momentum, double one_minus_dampening, bool nesterov, bool maximize, bool first) {
  if (momentum != 0.0 && !buf) throw py::value_error("buf: momentum needs a momentum buffer");
  const Buffers b = check({{"p", &p}, {"grad", &grad}, {"buf", buf ? &*buf : nullptr}}, "grad");
  auto run = [&](auto zero) {
    using T = decltype(zero);
    SgdScalars<T> s{T(neg_lr), T(weight_decay), T(momentum), T(one_minus_dampening), nesterov, maximize, first};
    T* pp = static_cast<T*>(p.mutable_data());
    const T* g = static_cast<const T*>(grad.data());
    T* bb = data<T>(buf);
    py::gil_scoped_release nogil;
    sgd_update(pp, g, bb, b.n, s);
  };
  b.f64 ? run(0.0) : run(0.0f);
}

void adam_py(py::array p, py::array grad, py::array m, py::array v, std::optional<py::array> vmax,
             double one_minus_beta1, double beta2, double one_minus_beta2, double bc2_sqrt, double eps,
             double neg_step_size, double weight_decay, double decay, bool decoupled, bool maximize) {
  const Buffers b =
      check({{"p", &p}, {"grad", &grad}, {"exp_avg", &m}, {"exp_avg_sq", &v}, {"max_exp_avg_sq", vmax ? &*vmax : nullptr}},
            "grad");
  auto run = [&](auto zero) {
    using T = decltype(zero);
    AdamScalars<T> s{T(one_minus_beta1), T(beta2), T(one_minus_beta2), T(bc2_sqrt), T(eps), T(neg_step_size),
                     T(weight_decay),    T(decay), decoupled,          maximize};
    T* pp = static_cast<T*>(p.mutable_data());
    const T* g = static_cast<const T*>(grad.data());
    T* mm = static_cast<T*>(m.mutable_data());
    T* vv = static_cast<T*>(v.mutable_data());
    T* xx = data<T>(vmax);
    py::gil_scoped_release nogil;
    adam_update(pp, g, mm, vv, xx, b.n, s);
  };
  b.f64 ? run(0.0) : run(0.0f);
}

void rmsprop_py(py::array p, py::array grad, py::array sq, std::optional<py::array> grad_avg,
                std::optional<py::array> buf, double neg_lr, double alpha, double one_minus_alpha, double eps,
                double weight_decay, double momentum, bool centered, bool maximize) {
  if (centered && !grad_avg) throw py::value_error("grad_avg: centered needs the average gradient");
  if (momentum > 0.0 && !buf) throw py::value_error("buf: momentum needs a momentum buffer");
  const Buffers b = check({{"p", &p},
                           {"grad", &grad},
                           {"square_avg", &sq},
                           {"grad_avg", grad_avg ? &*grad_avg : nullptr},
                           {"momentum_buffer", buf ? &*buf : nullptr}},
                          "grad");
  auto run = [&](auto zero) {
    using T = decltype(zero);
    RmspropScalars<T> s{T(neg_lr), T(alpha), T(one_minus_alpha), T(eps), T(weight_decay), T(momentum), centered,
                        maximize};
    T* pp = static_cast<T*>(p.mutable_data());
    const T* g = static_cast<const T*>(grad.data());
    T* q = static_cast<T*>(sq.mutable_data());
    T* ga = data<T>(grad_avg);
    T* bb = data<T>(buf);
    py::gil_scoped_release nogil;
    rmsprop_update(pp, g, q, ga, bb, b.n, s);
  };
  b.f64 ? run(0.0) : run(0.0f);
}

py::array sqrt_py(py::array x) {
  const Buffers b = check({{"x", &x}}, "x");
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  if (b.f64) {
    py::array_t<double> out(shape);
    sqrt_rn(static_cast<const double*>(x.data()), out.mutable_data(), b.n);
    return std::move(out);
  }
  py::array_t<float> out(shape);
  sqrt_rn(static_cast<const float*>(x.data()), out.mutable_data(), b.n);
  return std::move(out);
}

}  // namespace

void bindings::bind_optim(py::module_& m) {
  m.def("sgd_update", &sgd_py, py::arg("p"), py::arg("grad"), py::arg("buf"), py::arg("neg_lr"),
        py::arg("weight_decay"), py::arg("momentum"), py::arg("one_minus_dampening"), py::arg("nesterov"),
        py::arg("maximize"), py::arg("first"));
  m.def("adam_update", &adam_py, py::arg("p"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
        py::arg("max_exp_avg_sq"), py::arg("one_minus_beta1"), py::arg("beta2"), py::arg("one_minus_beta2"),
        py::arg("bc2_sqrt"), py::arg("eps"), py::arg("neg_step_size"), py::arg("weight_decay"), py::arg("decay"),
        py::arg("decoupled"), py::arg("maximize"));
  m.def("rmsprop_update", &rmsprop_py, py::arg("p"), py::arg("grad"), py::arg("square_avg"), py::arg("grad_avg"),
        py::arg("momentum_buffer"), py::arg("neg_lr"), py::arg("alpha"), py::arg("one_minus_alpha"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("momentum"), py::arg("centered"), py::arg("maximize"));
  m.def("sqrt_rn", &sqrt_py, py::arg("x"));
}

}  // namespace exactforge
