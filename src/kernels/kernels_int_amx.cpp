// int8-digit exact levels on AMX-INT8 tiles; flags in CMakeLists.txt (see kernels_int.inc).
// Built only where the compiler knows AMX; run only where amx_int8_usable() says so.
#if defined(EXACTFORGE_HAVE_AMX_BUILD)
#define EXACTFORGE_INT_NS int_amx
#define EXACTFORGE_INT_AMX
#include "kernels_int.inc"
#else
#include <stdexcept>
#include "kernels_int.hpp"
namespace exactforge { namespace int_amx {
void exact_levels_int8(const float*, const float*, int64_t, int64_t, int64_t, int, const double*, const double*,
                       const double*, const double*, int64_t*, int, bool) {
  throw std::runtime_error("exact matmul: this build has no AMX kernel");
}
}}  // namespace exactforge::int_amx
#endif
