// pybind11 bindings of the CPU core: the private module exactforge._core, one file per subject
// (common.hpp lists them), each registering its functions here.
//
// The public checks (dtype, shape, contiguity, keys) live in python/exactforge/reduce.py,
// which gives the user-facing messages; the checks in the bindings repeat the ones that guard
// memory safety so that a direct call into _core can raise but never read out of bounds.
#include "common.hpp"

using namespace exactforge::bindings;

PYBIND11_MODULE(_core, m) {
  bind_optim(m);
  bind_gf2(m);
  m.doc() = "exactforge native CPU core (private; use exactforge.reduce)";
  bind_reduce(m);
  bind_levels(m);
  bind_layers(m);
  bind_conv(m);
  bind_info(m);
  bind_search(m);
}
