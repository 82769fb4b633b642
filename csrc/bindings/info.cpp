// Bindings of what describes the build and the machine: the thread count, build_info, whether the
// int8 kernels can run on this CPU, and the reductions' limits.
#include "common.hpp"

#include "exactforge/fixedpoint.hpp"
#include "exactforge/reduce.hpp"
#include "kernels/kernels_int.hpp"

using namespace exactforge;

void exactforge::bindings::bind_info(py::module_& m) {
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("get_num_threads", &get_num_threads);
  m.def("build_info", &build_info);
  m.def("amx_int8_usable", &amx_int8_usable);
  m.def("vnni_int8_usable", &vnni_int8_usable);
  m.attr("MAX_THREADS") = kMaxThreads;
  m.attr("EXACT_MATMUL_MAX_K") = kExactMatmulMaxK;
  m.attr("EXACT_SUM_MAX_K") = kExactSumMaxK;
  m.attr("SUM_SLICES") = kSumSlices;
  m.attr("SUM_WIDTH") = kSumWidth;
#ifdef EXACTFORGE_VERSION
  m.attr("__version__") = EXACTFORGE_VERSION;
#endif
}
