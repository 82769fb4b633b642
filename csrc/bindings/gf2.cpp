// Binding of the GF(2) solver (src/include/exactforge/gf2.hpp). The caller's matrix is copied:
// the elimination works in place and a Python caller keeps its equations.
#include "common.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <tuple>

#include "exactforge/gf2.hpp"

namespace exactforge {
namespace {

std::tuple<py::array_t<uint8_t>, int64_t, int64_t, py::array_t<int32_t>> gf2_solve_py(py::array rows,
                                                                                       int64_t ncols) {
  if (!rows.dtype().equal(py::dtype::of<uint64_t>()) || rows.ndim() != 2)
    throw py::type_error("rows: expected a 2-D uint64 array (one bit-packed equation per row)");
  const int64_t R = rows.shape(0), W = rows.shape(1);
  if (ncols < 0 || W < ncols / 64 + 1)
    throw py::value_error("ncols: each row needs ncols + 1 bits (the unknowns, then the right-hand side)");
  py::array_t<uint64_t, py::array::c_style> a({R, W});
  {
    auto src = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(rows);
    if (!src) throw py::type_error("rows: expected a uint64 array");
    if (R * W) std::memcpy(a.mutable_data(), src.data(), size_t(R * W) * sizeof(uint64_t));
  }
  py::array_t<uint8_t> x(ncols);
  Gf2Result res;
  {
    py::gil_scoped_release nogil;
    res = gf2_solve(a.mutable_data(), R, W, ncols, x.mutable_data());
  }
  py::array_t<int32_t> piv(py::ssize_t(res.pivots.size()));
  if (!res.pivots.empty()) std::memcpy(piv.mutable_data(), res.pivots.data(), res.pivots.size() * sizeof(int32_t));
  return {x, res.rank, res.inconsistent, piv};
}

}  // namespace

void bindings::bind_gf2(py::module_& m) {
  m.def("gf2_solve", &gf2_solve_py, py::arg("rows"), py::arg("ncols"),
        "Solves A x = b over GF(2). rows: (R, W) uint64, bit c of a row (word c // 64, bit c % 64) is A[r, c] for "
        "c < ncols and bit ncols is b[r]. Returns (x, rank, inconsistent, pivots): x has the free variables 0; "
        "inconsistent counts rows that reduce to 0 = 1.");
}

}  // namespace exactforge
