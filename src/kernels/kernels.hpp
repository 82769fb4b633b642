// Tile kernels of the CPU core and their run-time ISA dispatch (see kernels.inc).
#pragma once
#include <cstdint>

namespace exactforge {

template <class T> constexpr int kLanes = 32 / sizeof(T);  // 32-byte vectors (AVX2 width)
/// Output channels one pass of the direct convolution carries (conv_rows2_t): 6 on two rows, 12
/// accumulators.
constexpr int kConvOB = 6;
/// Input channels one pass of the direct input gradient carries (conv_dgrad_rows2_t): 6 on two
/// rows, 12 accumulators.
constexpr int kConvCB = 6;
/// The weight gradient's tile (conv_wgrad_tile_t): 6 rows of im2col by two vectors of output
/// channels, 12 accumulators, as the fixed product's tile.
constexpr int kConvWgradR = 6;
template <class T> constexpr int kConvWgradO = 2 * kLanes<T>;

/// Fixed-mode tile: MR = MV * lanes rows by NR columns.
template <class T> struct TileShape;
// Register budget (16 ymm on AVX2): MV x NR accumulators + MV vectors of a + one broadcast of
// b. 12 accumulators keep both FMA pipes busy through the FMA latency (8 left them short), and
// 2 loads + 6 broadcasts per 12 FMAs stay under the load ports' rate.
template <> struct TileShape<float> { static constexpr int MV = 2, MR = 16, NR = 6; };
template <> struct TileShape<double> { static constexpr int MV = 2, MR = 8, NR = 6; };
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

/// The float32 exact matmul's last step for one row segment: out[j] = the float nearest to
/// (lv[2j] 2^w + lv[2j+1]) 2^(ea + fb[j] - 3w) for j < n, the value round_two_levels and
/// round_int192 give. Lanes it cannot do on its fast path (a level of 2^53 or more, a zero,
/// subnormal or overflowing results, skip[j] != 0) get todo[j] = 1 and are left to the caller.
/// The float32 exact tile of a one-sub-chunk reduction, rounded in registers (kernels_avx512.cpp):
/// every output in range goes to out (row stride ldo); those it is not sure of must be overwritten
/// by the caller from their levels, at lv[(j*2 + L)*16 + ii],
/// with bit j*16 + ii of *todo set.
using ExactTileRoundF32 = void (*)(const double*, const double*, int64_t, int, int, const int*, const int*, int,
                                   const char*, const char*, float*, int64_t, int64_t*, uint64_t*);
/// max |x_t| over the finite x_t of one float32 row (0 if none), and whether any is not finite.
using RowMaxF32 = double (*)(const float*, int64_t, char*);
/// The exact sum's passes over rows t0..t1-1 of nc float32 columns (kernels.inc).
using SumMaxF32 = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, double*, char*);
using SumSlicesF32 = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, const double*, const double*, double,
                              double*, double*);
using SumMaxF64 = void (*)(const double*, int64_t, int64_t, int64_t, int64_t, double*, char*);
using SumSlicesF64 = void (*)(const double*, int64_t, int64_t, int64_t, int64_t, const double*, const double*, double,
                              double*, double*);
/// Rows of a stride-1 convolution for up to kConvOB output channels from a zero-padded input
/// (kernels.inc, conv_rows2_t): xp, toff (each term's offset in xp), Wp, w (OB x CKK), CKK, Ho,
/// Wo, out, channels, bias (nullptr, or one value per channel added to each rounded output).
using ConvF32 = void (*)(const float*, const int64_t*, int64_t, const float*, int64_t, int64_t, int64_t, float*, int,
                         const float*);
using ConvF64 = void (*)(const double*, const int64_t*, int64_t, const double*, int64_t, int64_t, int64_t, double*,
                         int, const double*);
/// Rows of a stride-1 convolution's input gradient for up to kConvCB input channels (kernels.inc,
/// conv_dgrad_rows2_t): dyp, O, top, Ht, Wdp, wt (CB x kh x kw x O), kh, kw, ph, pw, H, W, dx,
/// channels.
using ConvDgradF32 = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, const float*, int64_t, int64_t,
                              int64_t, int64_t, int64_t, int64_t, float*, int);
using ConvDgradF64 = void (*)(const double*, int64_t, int64_t, int64_t, int64_t, const double*, int64_t, int64_t,
                              int64_t, int64_t, int64_t, int64_t, double*, int);
/// A tile of a convolution's weight gradient (kernels.inc, conv_wgrad_tile_t): kConvWgradR rows of
/// im2col by kConvWgradO output channels over one block of terms: xp, roff, toff, kc, dy, ldd,
/// out, ldo, rows, channels, resume.
using ConvWgradF32 = void (*)(const float*, const int64_t*, const int64_t*, int64_t, const float*, int64_t, float*,
                              int64_t, int, int, int);
using ConvWgradF64 = void (*)(const double*, const int64_t*, const int64_t*, int64_t, const double*, int64_t,
                              double*, int64_t, int, int, int);
using RecombineF32 = void (*)(const int64_t* lv, int64_t n, int ea, const int* fb, int w, const char* skip,
                              float* out, char* todo);

struct KernelTable {
  const char* isa;
  FixedTileF32 fixed_f32;
  FixedTileF64 fixed_f64;
  // the fixed tiles storing output (ii, j) at c[j * ldc + ii], for products computed transposed;
  // nullptr where the level has none (AVX-512's float32 tile): the driver keeps the orientation
  FixedTileF32 fixed_f32_lc;
  FixedTileF64 fixed_f64_lc;
  ExactTile exact_s2;
  ExactTile exact_s4;
  SplitF32 split_f32;  // slices of float32 rows, s = 2
  SplitF64 split_f64;  // slices of float64 rows, s = 4
  SplitF32 split_cols_f32;  // slices of NR columns of float32 b, s = 2
  SplitF64 split_cols_f64;  // slices of NR columns of float64 b, s = 4
  PackAF32 pack_a_f32;      // fixed mode: MR rows of float32 a, t-major (a copy: no arithmetic)
  // The float32 exact tile's shape on this ISA (exact_s2 and split_f32 are built for it; the
  // driver packs panels to match). Only the schedule depends on it: every tile sums the same
  // integers exactly.
  int exact_s2_mr, exact_s2_nr;
  int fixed_f32_nr;  // columns of the float32 fixed tile (16 rows on every level; panels of b match)
  int split_cols_tiles;  // column tiles split_cols_f32 fills per call (cols <= tiles x NR)
  RecombineF32 recombine_f32;  // nullptr: the driver's scalar round_two_levels loop
  ExactTileRoundF32 exact_s2_round;  // nullptr: tiles into int64 blocks, then recombine_f32
  SumMaxF32 sum_max_f32;
  SumSlicesF32 sum_slices_f32;
  SumMaxF64 sum_max_f64;
  SumSlicesF64 sum_slices_f64;
  RowMaxF32 row_max_f32;  // nullptr: the driver's 8-lane loop
  ConvF32 conv_f32;  // the direct convolution (stride 1, dilation 1)
  ConvF64 conv_f64;
  ConvDgradF32 conv_dgrad_f32;  // its input gradient (kConvCB channels per pass)
  ConvDgradF64 conv_dgrad_f64;
  // rows of the unfused batched product (kernels.inc, bmm_rows_t): a, b, out, r0, r1, M, K, P
  void (*bmm_rows_f32)(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t);
  void (*bmm_rows_f64)(const double*, const double*, double*, int64_t, int64_t, int64_t, int64_t, int64_t);
  void (*exp_f32)(const float*, float*, int64_t);  // det_exp over an array (kernels.inc, exp_n_t)
  void (*exp_f64)(const double*, double*, int64_t);
  ConvWgradF32 conv_wgrad_f32;  // its weight gradient (the AVX2 tile on AVX-512 too)
  ConvWgradF64 conv_wgrad_f64;
};

/// The best table this CPU supports (AVX-512, AVX2+FMA or the baseline). Same bits either way.
/// EXACTFORGE_ISA=generic|avx2 caps it (tests compare the levels).
const KernelTable& kernels();

#define EXACTFORGE_DECLARE_KERNELS(NS)                                                        \
  namespace NS {                                                                              \
  void fixed_tile_f32(const float*, const float*, int64_t, float*, int64_t, int, int, int);   \
  void fixed_tile_f64(const double*, const double*, int64_t, double*, int64_t, int, int, int); \
  void fixed_tile_f32_lc(const float*, const float*, int64_t, float*, int64_t, int, int, int); \
  void fixed_tile_f64_lc(const double*, const double*, int64_t, double*, int64_t, int, int, int); \
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
  void conv_fixed_f32(const float*, const int64_t*, int64_t, const float*, int64_t, int64_t, int64_t, float*,  \
                      int, const float*);                                                     \
  void conv_fixed_f64(const double*, const int64_t*, int64_t, const double*, int64_t, int64_t, int64_t,        \
                      double*, int, const double*);                                           \
  void conv_dgrad_f32(const float*, int64_t, int64_t, int64_t, int64_t, const float*, int64_t, int64_t,         \
                      int64_t, int64_t, int64_t, int64_t, float*, int);                       \
  void conv_dgrad_f64(const double*, int64_t, int64_t, int64_t, int64_t, const double*, int64_t, int64_t,       \
                      int64_t, int64_t, int64_t, int64_t, double*, int);                      \
  void exp_f32(const float*, float*, int64_t);                                                \
  void bmm_rows_f32(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t);          \
  void bmm_rows_f64(const double*, const double*, double*, int64_t, int64_t, int64_t, int64_t, int64_t);       \
  void exp_f64(const double*, double*, int64_t);                                              \
  void conv_wgrad_f32(const float*, const int64_t*, const int64_t*, int64_t, const float*, int64_t, float*,      \
                      int64_t, int, int, int);                                                \
  void conv_wgrad_f64(const double*, const int64_t*, const int64_t*, int64_t, const double*, int64_t, double*,   \
                      int64_t, int, int, int);                                                \
  void sum_max_cols_f32(const float*, int64_t, int64_t, int64_t, int64_t, double*, char*);    \
  void sum_slices_cols_f32(const float*, int64_t, int64_t, int64_t, int64_t, const double*,   \
                           const double*, double, double*, double*);                          \
  void sum_max_cols_f64(const double*, int64_t, int64_t, int64_t, int64_t, double*, char*);   \
  void sum_slices_cols_f64(const double*, int64_t, int64_t, int64_t, int64_t, const double*,  \
                           const double*, double, double*, double*);                          \
  }
EXACTFORGE_DECLARE_KERNELS(generic)
EXACTFORGE_DECLARE_KERNELS(avx2)

// The AVX-512 level (kernels_avx512.cpp): a 16 x 4 float32 exact tile on 8-lane float64
// vectors, its row slicing, a vectorised recombination, the exact sum's passes, and a 16 x 12
// float32 fixed tile on 16-lane vectors. The float64 tiles, the column slicing (NR = 4 on
// both levels) and the fixed panel of a (16 rows on both) are the AVX2 ones.
namespace avx512 {
constexpr int kExactS2MR = 16, kExactS2NR = 4;
constexpr int kFixedF32NR = 12;
constexpr int kSplitColsTiles = 4;  // 16 x 12: 12 accumulators of 16 lanes hide the FMA latency
void fixed_tile_f32(const float*, const float*, int64_t, float*, int64_t, int, int, int);
void exact_tile_s2(const double*, const double*, int64_t, int64_t*, int64_t, int, int);
void split_panel_f32_s2(const float*, int64_t, int, int64_t, const double*, const double*, double, double*, int);
void split_cols_f32_s2(const float*, int64_t, int, int64_t, const double*, const double*, double, double*, int);
void recombine_f32(const int64_t*, int64_t, int, const int*, int, const char*, float*, char*);
void exact_tile_s2_round(const double*, const double*, int64_t, int, int, const int*, const int*, int, const char*,
                         const char*, float*, int64_t, int64_t*, uint64_t*);
void sum_max_cols_f32(const float*, int64_t, int64_t, int64_t, int64_t, double*, char*);
void sum_slices_cols_f32(const float*, int64_t, int64_t, int64_t, int64_t, const double*, const double*, double,
                         double*, double*);
double row_max_f32(const float*, int64_t, char*);
void conv_fixed_f32(const float*, const int64_t*, int64_t, const float*, int64_t, int64_t, int64_t, float*, int,
                    const float*);
void conv_dgrad_f32(const float*, int64_t, int64_t, int64_t, int64_t, const float*, int64_t, int64_t, int64_t,
                    int64_t, int64_t, int64_t, float*, int);
}  // namespace avx512

}  // namespace exactforge
