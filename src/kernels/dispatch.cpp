// Which kernels run on this CPU: the ISA table of the tile kernels (generic, AVX2+FMA,
// AVX-512), chosen once from CPUID, and whether AMX-INT8 may be used. Every level computes the
// same bits; EXACTFORGE_ISA=generic|avx2 caps the choice for tests.
#include "kernels/kernels.hpp"
#include "kernels/kernels_int.hpp"

#include <cstdlib>
#include <string>

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace exactforge {

bool amx_int8_usable() {
  static const bool ok = [] {
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
    const char* force = std::getenv("EXACTFORGE_ISA");  // "generic": no AMX either
    if (force && std::string(force) == "generic") return false;
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    const bool tile = (edx >> 24) & 1u, int8 = (edx >> 25) & 1u;
    if (!tile || !int8) return false;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !((ecx >> 27) & 1u)) return false;  // OSXSAVE
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if (((lo >> 17) & 3u) != 3u) return false;  // XTILECFG and XTILEDATA enabled by the OS
    // Linux hands out the 8 KB tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM,
    // feature 18); a tile instruction without it kills the process with SIGILL.
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
    return false;
#endif
  }();
  return ok;
}
bool vnni_int8_usable() {
  static const bool ok = [] {
#if defined(EXACTFORGE_HAVE_VNNI_BUILD) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    const char* force = std::getenv("EXACTFORGE_ISA");
    if (force && (std::string(force) == "generic" || std::string(force) == "avx2")) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return false;
#endif
  }();
  return ok;
}
ExactKernel exact_kernel_auto() {
#if defined(EXACTFORGE_HAVE_AMX_BUILD)
  if (amx_int8_usable()) return ExactKernel::Int8Amx;
#endif
  // Without AMX the float64-slice tiles are the faster way to the same integers. Per multiply-add
  // they need 3 float64 FMAs; the int8 digits need 27 products (3 x 3 digit pairs for level 0,
  // twice that for level 1). AVX-512 VNNI does about 7.5 int8 products per float64 FMA on Zen 4
  // (815 Gop/s against 109 GFLOP/s, both counting a multiply-add as two), so 27 products cost
  // 3.6 FMAs' time: measured 1.0-1.4x slower than the float64 tiles on large products and 3x on
  // small ones (docs/benchmarks/reduce.md). The VNNI kernel stays selectable by name.
  return ExactKernel::F64Slices;
}
const char* exact_kernel_name(ExactKernel k) {
  for (const ExactKernelName& e : kExactKernelNames)
    if (e.kernel == k) return e.name;
  return "auto";
}
bool exact_kernel_of_name(const char* name, ExactKernel* k) {
  for (const ExactKernelName& e : kExactKernelNames)
    if (std::string(name) == e.name) {
      *k = e.kernel;
      return true;
    }
  return false;
}

namespace {
// The levels built from kernels.inc (generic, avx2) share one layout: 4 x 4 exact tiles,
// 16 x 6 fixed tiles, one column tile per slicing call, the driver's rounding and maxima.
// Every field is assigned by its name: several kernels share a signature, so a table filled by
// position would still compile after a reordered field, with two kernels silently swapped.
#define EXACTFORGE_KERNEL_TABLE(NS)                      \
  KernelTable NS##_table(const char* isa) {              \
    KernelTable t{};                                     \
    t.isa = isa;                                         \
    t.fixed_f32 = NS::fixed_tile_f32;                    \
    t.fixed_f64 = NS::fixed_tile_f64;                    \
    t.fixed_f32_lc = NS::fixed_tile_f32_lc;              \
    t.fixed_f64_lc = NS::fixed_tile_f64_lc;              \
    t.exact_s2 = NS::exact_tile_s2;                      \
    t.exact_s4 = NS::exact_tile_s4;                      \
    t.split_f32 = NS::split_panel_f32_s2;                \
    t.split_f64 = NS::split_panel_f64_s4;                \
    t.split_cols_f32 = NS::split_cols_f32_s2;            \
    t.split_cols_f64 = NS::split_cols_f64_s4;            \
    t.pack_a_f32 = NS::pack_a_f32;                       \
    t.exact_s2_mr = ExactShape<2>::MR;                   \
    t.exact_s2_nr = ExactShape<2>::NR;                   \
    t.fixed_f32_nr = TileShape<float>::NR;               \
    t.split_cols_tiles = 1;                              \
    t.recombine_f32 = nullptr;                           \
    t.exact_s2_round = nullptr;                          \
    t.sum_max_f32 = NS::sum_max_cols_f32;                \
    t.sum_slices_f32 = NS::sum_slices_cols_f32;          \
    t.sum_max_f64 = NS::sum_max_cols_f64;                \
    t.sum_slices_f64 = NS::sum_slices_cols_f64;          \
    t.row_max_f32 = nullptr;                             \
    t.conv_f32 = NS::conv_fixed_f32;                     \
    t.conv_f64 = NS::conv_fixed_f64;                     \
    t.conv_dgrad_f32 = NS::conv_dgrad_f32;               \
    t.conv_dgrad_f64 = NS::conv_dgrad_f64;               \
    t.conv_wgrad_f32 = NS::conv_wgrad_f32;               \
    t.exp_f32 = NS::exp_f32;                             \
    t.bmm_rows_f32 = NS::bmm_rows_f32;                   \
    t.bmm_rows_f64 = NS::bmm_rows_f64;                   \
    t.exp_f64 = NS::exp_f64;                             \
    t.conv_wgrad_f64 = NS::conv_wgrad_f64;               \
    return t;                                            \
  }
EXACTFORGE_KERNEL_TABLE(generic)
EXACTFORGE_KERNEL_TABLE(avx2)
#undef EXACTFORGE_KERNEL_TABLE
}  // namespace

const KernelTable& kernels() {
  static const KernelTable table = [] {
    const KernelTable generic_t = generic_table("generic");
    // EXACTFORGE_ISA=generic|avx2 caps the level: a test and debug aid (the bits are the same)
    const char* force = std::getenv("EXACTFORGE_ISA");
    const std::string cap = force ? force : "";
    if (cap == "generic") return generic_t;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      const KernelTable avx2_t = avx2_table("avx2+fma");
#if defined(EXACTFORGE_HAVE_AVX512_BUILD)
      if (cap != "avx2" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")) {
        KernelTable t = avx2_t;
        t.isa = "avx512+avx2+fma";
        t.exact_s2 = avx512::exact_tile_s2;
        t.split_f32 = avx512::split_panel_f32_s2;
        t.split_cols_f32 = avx512::split_cols_f32_s2;
        t.split_cols_tiles = avx512::kSplitColsTiles;
        t.exact_s2_mr = avx512::kExactS2MR;
        t.exact_s2_nr = avx512::kExactS2NR;
        t.recombine_f32 = avx512::recombine_f32;
        t.exact_s2_round = avx512::exact_tile_s2_round;
        t.fixed_f32 = avx512::fixed_tile_f32;
        t.fixed_f32_lc = nullptr;  // its 16 x 12 tile has no transposed store: the driver keeps the orientation
        t.fixed_f32_nr = avx512::kFixedF32NR;
        t.sum_max_f32 = avx512::sum_max_cols_f32;
        t.sum_slices_f32 = avx512::sum_slices_cols_f32;
        t.row_max_f32 = avx512::row_max_f32;
        t.conv_f32 = avx512::conv_fixed_f32;
        t.conv_dgrad_f32 = avx512::conv_dgrad_f32;
        return t;
      }
#endif
      return avx2_t;
    }
#endif
    return generic_t;
  }();
  return table;
}

}  // namespace exactforge
