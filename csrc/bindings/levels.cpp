// Bindings of the reductions shared among processes (exactforge.distributed): the halves of the
// exact product and sum that come before and after the processes add their integer levels, and
// the packing of those levels into the words the processes exchange.
#include "common.hpp"

#include <string>

#include "exactforge/fixedpoint.hpp"
#include "exactforge/reduce.hpp"

using namespace exactforge;
using namespace exactforge::bindings;

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

void exactforge::bindings::bind_levels(py::module_& m) {
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
}
