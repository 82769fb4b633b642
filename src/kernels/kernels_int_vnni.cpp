// int8-digit exact levels on AVX-512 VNNI (vpdpbusd); flags in CMakeLists.txt (see kernels_int.inc).
// Built only where the compiler knows AVX-512 VNNI; run only where vnni_int8_usable() says so.
#if defined(EXACTFORGE_HAVE_VNNI_BUILD)
#define EXACTFORGE_INT_NS int_vnni
#define EXACTFORGE_INT_VNNI
#include "kernels_int.inc"
#else
#include <stdexcept>
#include "kernels_int.hpp"
namespace exactforge { namespace int_vnni {
void exact_levels_int8(const float*, const float*, int64_t, int64_t, int64_t, int, const double*, const double*,
                       const double*, const double*, int64_t*, int, bool) {
  throw std::runtime_error("exact matmul: this build has no AVX-512 VNNI kernel");
}
}}  // namespace exactforge::int_vnni
#endif
