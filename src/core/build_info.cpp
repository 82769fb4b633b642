#include "exactforge/reduce.hpp"
#include "kernels/kernels.hpp"
#include "kernels/kernels_int.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

#define EXACTFORGE_STR2(x) #x
#define EXACTFORGE_STR(x) EXACTFORGE_STR2(x)

namespace exactforge {

std::map<std::string, std::string> build_info() {
  std::map<std::string, std::string> info;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  info["compiler"] = "msvc " EXACTFORGE_STR(_MSC_VER);
#else
  info["compiler"] = "unknown";
#endif
#ifdef _OPENMP
  info["openmp"] = EXACTFORGE_STR(_OPENMP);
#else
  info["openmp"] = "";
#endif
#ifdef EXACTFORGE_CXX_FLAGS
  info["cxx_flags"] = EXACTFORGE_CXX_FLAGS;
#endif
#ifdef __FAST_MATH__
  info["fast_math"] = "1";  // CMakeLists.txt refuses this; kept so a hand build is visible
#else
  info["fast_math"] = "0";
#endif
#ifdef __FMA__
  info["isa_fma"] = "1";
#else
  info["isa_fma"] = "0";
#endif
#ifdef __AVX2__
  info["isa_avx2"] = "1";
#else
  info["isa_avx2"] = "0";
#endif
  // What runs, not what this file was compiled for: the tile kernels are built for AVX2+FMA
  // apart and chosen at run time (kernels.hpp), so the flags above say "no AVX2" on a build
  // that uses it. The CPU's own features are read here for the same reason.
  info["kernels"] = kernels().isa;
  // The float32 exact matmul's kernel (kernels_int.hpp): int8 digits on AMX where the CPU and OS
  // allow it, else float64 slices; the same bits either way.
  info["exact_kernel"] = exact_kernel_name(exact_kernel_auto());
#if defined(EXACTFORGE_HAVE_AMX_BUILD)
  info["amx_built"] = "1";
#else
  info["amx_built"] = "0";
#endif
#if defined(EXACTFORGE_HAVE_VNNI_BUILD)
  info["vnni_built"] = "1";
#else
  info["vnni_built"] = "0";
#endif
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  info["cpu_avx2"] = __builtin_cpu_supports("avx2") ? "1" : "0";
  info["cpu_fma"] = __builtin_cpu_supports("fma") ? "1" : "0";
  info["cpu_avx512f"] = __builtin_cpu_supports("avx512f") ? "1" : "0";
  info["cpu_amx_int8"] = amx_int8_usable() ? "1" : "0";
  info["cpu_avx512_vnni"] = vnni_int8_usable() ? "1" : "0";
#endif
  return info;
}

}  // namespace exactforge
