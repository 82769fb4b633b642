// Tile kernels of the CPU core and their run-time ISA dispatch (see kernels.inc).
#pragma once
#include <cstdint>

namespace exactforge {

template <class T> constexpr int kLanes = 32 / sizeof(T);  // 32-byte vectors (AVX2 width)

/// Fixed-mode tile: MR = MV * lanes rows by NR columns.
template <class T> struct TileShape;
template <> struct TileShape<float> { static constexpr int MV = 2, MR = 16, NR = 4; };
template <> struct TileShape<double> { static constexpr int MV = 2, MR = 8, NR = 4; };
/// Exact-mode tile for S slices: MR = MV * 4 rows by NR columns, S levels of accumulators.
template <int S> struct ExactShape;
// Register budget (16 ymm on AVX2): S(S+1)/2 pair accumulators x MV x NR + S x MV slices of a + 1.
template <> struct ExactShape<2> { static constexpr int MV = 1, MR = 4, NR = 4; };
template <> struct ExactShape<4> { static constexpr int MV = 1, MR = 4, NR = 1; };

using FixedTileF32 = void (*)(const float*, const float*, int64_t, float*, int64_t, int, int, int);
using FixedTileF64 = void (*)(const double*, const double*, int64_t, double*, int64_t, int, int, int);
using ExactTile = void (*)(const double*, const double*, int64_t, int64_t*, int64_t, int, int);
using SplitF32 = void (*)(const float*, int64_t, int, int64_t, const double*, const double*, double, double*, int);
using SplitF64 = void (*)(const double*, int64_t, int, int64_t, const double*, const double*, double, double*, int);

/// ap[t*16 + ii] = a[ii*lda + t] for ii < rows, 0 for rows <= ii < 16 (t < kc).
using PackAF32 = void (*)(const float*, int64_t, int, int64_t, float*);

struct KernelTable {
  const char* isa;
  FixedTileF32 fixed_f32;
  FixedTileF64 fixed_f64;
  ExactTile exact_s2;
  ExactTile exact_s4;
  SplitF32 split_f32;  // slices of float32 rows, s = 2
  SplitF64 split_f64;  // slices of float64 rows, s = 4
  SplitF32 split_cols_f32;  // slices of NR columns of float32 b, s = 2
  SplitF64 split_cols_f64;  // slices of NR columns of float64 b, s = 4
  PackAF32 pack_a_f32;      // fixed mode: MR rows of float32 a, t-major (a copy: no arithmetic)
};

/// The best table this CPU supports (AVX2+FMA or the baseline). Same bits either way.
const KernelTable& kernels();

#define EXACTFORGE_DECLARE_KERNELS(NS)                                                        \
  namespace NS {                                                                              \
  void fixed_tile_f32(const float*, const float*, int64_t, float*, int64_t, int, int, int);   \
  void fixed_tile_f64(const double*, const double*, int64_t, double*, int64_t, int, int, int); \
  void exact_tile_s2(const double*, const double*, int64_t, int64_t*, int64_t, int, int);     \
  void exact_tile_s4(const double*, const double*, int64_t, int64_t*, int64_t, int, int);     \
  void split_panel_f32_s2(const float*, int64_t, int, int64_t, const double*, const double*,   \
                          double, double*, int);                                              \
  void split_panel_f64_s4(const double*, int64_t, int, int64_t, const double*, const double*,  \
                          double, double*, int);                                              \
  void split_cols_f32_s2(const float*, int64_t, int, int64_t, const double*, const double*,    \
                         double, double*, int);                                               \
  void split_cols_f64_s4(const double*, int64_t, int, int64_t, const double*, const double*,   \
                         double, double*, int);                                               \
  void pack_a_f32(const float*, int64_t, int, int64_t, float*);                               \
  }
EXACTFORGE_DECLARE_KERNELS(generic)
EXACTFORGE_DECLARE_KERNELS(avx2)

}  // namespace exactforge
