// Bindings of the forging searches: the exhaustive search (search.hpp) and every equal-gradient
// pair of a cell (collide.hpp).
#include "common.hpp"

#include <memory>
#include <stdexcept>
#include <string>

#include "exactforge/collide.hpp"
#include "exactforge/search.hpp"

using namespace exactforge;
using namespace exactforge::bindings;

namespace {
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
}  // namespace

void exactforge::bindings::bind_search(py::module_& m) {
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
}
