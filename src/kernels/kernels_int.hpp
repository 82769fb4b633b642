// The int8-digit kernels of the float32 exact matmul (kernels_int.inc) and their selection.
#pragma once
#include <cstdint>

namespace exactforge {

/// Which kernel computes the float32 exact matmul's levels. Every choice gives the same
/// integers, so the same bits (exactforge/intexact.hpp); they differ in speed only.
enum class ExactKernel { Auto = 0, F64Slices = 1, Int8Generic = 2, Int8Amx = 3, Int8Vnni = 4 };

/// Fills acc[(i*n + j)*2 + L] (+=) with the levels L0, L1 of the float32 exact product, from the
/// slicing factors of matmul_exact (rows f1/f2, columns g1/g2, slice width w).
#define EXACTFORGE_DECLARE_INT_KERNEL(NS)                                                         \
  namespace NS {                                                                                  \
  void exact_levels_int8(const float* a, const float* b, int64_t m, int64_t k, int64_t n, int w,  \
                         const double* f1, const double* f2, const double* g1, const double* g2,  \
                         int64_t* acc, int nt, bool par);                                         \
  }
EXACTFORGE_DECLARE_INT_KERNEL(int_generic)
EXACTFORGE_DECLARE_INT_KERNEL(int_amx)
EXACTFORGE_DECLARE_INT_KERNEL(int_vnni)

/// Whether this CPU and OS let the process use AMX-INT8 (CPUID, XCR0 tile state, and the
/// Linux permission request that must precede the first tile instruction). Asked once.
bool amx_int8_usable();
/// Whether this build has the AVX-512 VNNI kernel and this CPU runs it (AVX-512 F/BW/VL/DQ and
/// VNNI; EXACTFORGE_ISA=generic or avx2 says no). Asked once.
bool vnni_int8_usable();
/// The kernel Auto resolves to on this machine.
ExactKernel exact_kernel_auto();

/// Every kernel's name, the one map between ExactKernel and the names of build_info's
/// "exact_kernel" and of _core.matmul_exact_kernel's argument.
struct ExactKernelName {
  ExactKernel kernel;
  const char* name;
};
constexpr ExactKernelName kExactKernelNames[] = {{ExactKernel::Auto, "auto"},
                                                 {ExactKernel::F64Slices, "f64-slices"},
                                                 {ExactKernel::Int8Generic, "int8-generic"},
                                                 {ExactKernel::Int8Amx, "int8-amx"},
                                                 {ExactKernel::Int8Vnni, "int8-vnni"}};
const char* exact_kernel_name(ExactKernel k);
/// The kernel called `name` into *k; false (and *k untouched) for a name not in the table.
bool exact_kernel_of_name(const char* name, ExactKernel* k);

}  // namespace exactforge
