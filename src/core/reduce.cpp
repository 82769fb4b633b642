// CPU kernels for the two reduction modes.
//
// Floating-point contract: this file is compiled with -ffp-contract=off and without
// -ffast-math (CMakeLists.txt). The fixed product is an explicit FMA chain (kernels.inc, the
// same as __fmaf_rn/__fma_rn on CUDA); the fixed sum is plain additions (__fadd_rn). Vector
// lanes hold different output elements, never parts of one sum, so SIMD width and the ISA
// chosen at run time do not change bits.
#include "exactforge/reduce.hpp"
#include "exactforge/fixedpoint.hpp"
#include "core/threads.hpp"
#include "core/aligned.hpp"
#include "kernels/kernels.hpp"
#include "kernels/kernels_int.hpp"

#include <cstdlib>

#include <algorithm>
#include <limits>
#include <memory>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>
#include <string>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace exactforge {

namespace {

using detail::thread_index;

// Scratch panels of the exact matmul, kept per calling thread from one call to the next. A fresh
// allocation of a few MB per call is fresh pages from the kernel: on 3072 x 512 x 128 the page
// faults and their zeroing took about a fifth of the call. Contents are never read before they
// are written (the slicing writes every lane, padding included). Buffers above kScratchKeep
// bytes are released after the call instead of kept.
struct Scratch {
  avector<double> a, b;
};
constexpr size_t kScratchKeep = size_t(64) << 20;
Scratch& scratch() {
  static thread_local Scratch s;
  return s;
}
void grow(avector<double>& v, size_t n) {
  if (v.size() < n) { v.clear(); v.shrink_to_fit(); v.resize(n); }  // resize may throw: outside any region
}
void trim(avector<double>& v) {
  if (v.size() * sizeof(double) > kScratchKeep) { v.clear(); v.shrink_to_fit(); }
}

// Below this many multiply-adds a parallel region costs more than it saves. Only the
// schedule depends on it, never the bits.
constexpr int64_t kParallelWork = 1 << 18;

template <class T> struct SplitFn;
template <> struct SplitFn<float> {
  static SplitF32 get() { return kernels().split_f32; }
  static SplitF32 cols() { return kernels().split_cols_f32; }
};
template <> struct SplitFn<double> {
  static SplitF64 get() { return kernels().split_f64; }
  static SplitF64 cols() { return kernels().split_cols_f64; }
};

template <class T> struct FixedFn;
template <> struct FixedFn<float> {
  static FixedTileF32 get() { return kernels().fixed_f32; }
  static FixedTileF32 lc() { return kernels().fixed_f32_lc; }
};
template <> struct FixedFn<double> {
  static FixedTileF64 get() { return kernels().fixed_f64; }
  static FixedTileF64 lc() { return kernels().fixed_f64_lc; }
};

// Whether the fixed tiles should see the product transposed (lanes along the output's rows,
// each tile then stored as whole vectors), from a cost per tile in steps of the tile (12 FMAs)
// over the padded tiles: the steps of a block of the reduced axis; storing a tile (96 scalar
// stores, about 24 steps, against 12 vector ones, about 4); and packing, shared by the tiles
// that read a panel: a's 16-row panel read across in registers (about a third of a step per
// term) in the usual orientation, and transposed a's 6-row panel gathered term by term (a step
// per term) unless a is stored transposed already. Transposed only where clearly cheaper: only
// the schedule, never a bit, depends on it.
bool prefer_transposed(int64_t m, int64_t n, int64_t k, int MR, int NR, int64_t KC, bool a_transposed) {
  const auto tiles = [](int64_t x, int64_t t) { return static_cast<double>((x + t - 1) / t); };
  const double kb = static_cast<double>(std::min(k, KC));
  const double usual = tiles(m, MR) * tiles(n, NR) * (kb + 24.0 + kb / (3.0 * tiles(n, NR)));
  const double swapped = tiles(n, MR) * tiles(m, NR) * (kb + 4.0 + (a_transposed ? 0.0 : kb / tiles(n, MR)));
  return swapped < 0.9 * usual;
}

// The exact sum's column passes (kernels.inc): the maxima of the finite magnitudes and the
// two slices' sums, in the dispatched ISA's build.
template <class T> struct SumFn;
template <> struct SumFn<float> {
  static SumMaxF32 max() { return kernels().sum_max_f32; }
  static SumSlicesF32 slices() { return kernels().sum_slices_f32; }
};
template <> struct SumFn<double> {
  static SumMaxF64 max() { return kernels().sum_max_f64; }
  static SumSlicesF64 slices() { return kernels().sum_slices_f64; }
};

// The fixed tiles' panels, t-major (dst[t * width + u], u < width, zeros from `cols` on): copies,
// no arithmetic. Side by side: step t's values are columns col0.. of row ord(k0 + t) of src (ld
// per row). Across rows: lane u's values are row row0 + u of src (ld per row) at columns
// ord(k0 + t). ord is `order` where given, else the identity.
template <class T>
void pack_side_by_side(const T* src, int64_t ld, int64_t col0, int cols, int width, const int64_t* order,
                       int64_t k0, int64_t kc, T* dst) {
  for (int64_t t = 0; t < kc; ++t) {
    const T* row = src + (order ? order[k0 + t] : k0 + t) * ld + col0;
    T* d = dst + t * width;
    if (cols == width) {
      std::memcpy(d, row, sizeof(T) * static_cast<size_t>(width));
    } else {
      for (int u = 0; u < cols; ++u) d[u] = row[u];
      for (int u = cols; u < width; ++u) d[u] = T(0);
    }
  }
}
template <class T>
void pack_across_rows(const T* src, int64_t ld, int64_t row0, int rows, int width, const int64_t* order, int64_t k0,
                      int64_t kc, T* dst) {
  for (int u = 0; u < width; ++u) {
    if (u >= rows) {
      for (int64_t t = 0; t < kc; ++t) dst[t * width + u] = T(0);
      continue;
    }
    const T* row = src + (row0 + u) * ld;
    if (order) {
      for (int64_t t = 0; t < kc; ++t) dst[t * width + u] = row[order[k0 + t]];
    } else {
      for (int64_t t = 0; t < kc; ++t) dst[t * width + u] = row[k0 + t];
    }
  }
}

// Float16/bfloat16 are widened to float32 in Python before they reach here.
template <class T>
void matmul_fixed_impl(const T* a, const T* b, T* out, int64_t m, int64_t k, int64_t n,
                       const int64_t* order, int threads, bool a_transposed) {
  using P = TileShape<T>;
  if (m == 0 || n == 0) return;  // no output: nothing to block (and no column block to divide by)
  // The float32 tile's width is the dispatched level's (16 x 6 on AVX2, 16 x 12 on AVX-512);
  // only the schedule depends on it, every output's chain is the same.
  const int NR = std::is_same<T, float>::value ? kernels().fixed_f32_nr : P::NR;
  // Blocked like a BLAS: the reduced axis in blocks of kFixedK terms, b packed in column blocks
  // of at most kFixedBlockCols columns (kFixedK terms each: a block fits L2 and is reused by every
  // row block of a), a packed MR x kFixedK panel of a per thread. An output's chain of fused
  // multiply-adds runs block after block in index order, each block resuming from the partial
  // the previous one stored (fixed_tile_t's `resume`), so the bits are those of one unbroken
  // chain (checked against products saved before the blocking). Before, b was packed whole and
  // streamed from memory for every 16 rows of a (0.19 ns per multiply-add instead of 0.07 on a
  // convolution's batch x positions axis), and one k-long panel of a did not fit L2 for k = 8192.
  // Short column blocks also keep the MR rows a row block writes in whole, L1-resident lines.
  // 1024 terms: every block boundary costs each tile a scalar reload and store of its outputs
  constexpr int64_t kFixedK = 1024, kFixedBlockCols = 144;
  const int64_t KC = std::max<int64_t>(1, std::min(k, kFixedK));
  // The tiles may see the product transposed, C^T = B^T A^T: their lanes then run along C's
  // rows (b's columns) and their broadcasts along C's columns (a's rows), and each tile is
  // stored as whole vectors. Every output is still one chain over the reduced axis in the same
  // order, its products with the operands swapped, which an IEEE product cannot see (bar a NaN's
  // payload, which canonicalize rewrites): the same bits either way.
  const auto tile_lc = FixedFn<T>::lc();
  const bool swapped = tile_lc && NR == P::NR && prefer_transposed(m, n, k, P::MR, NR, KC, a_transposed);
  const auto tile = swapped ? tile_lc : FixedFn<T>::get();
  const int64_t LM = swapped ? n : m, LN = swapped ? m : n;  // the tiles' rows (lanes) and columns
  const int64_t mb = (LM + P::MR - 1) / P::MR, nb = (LN + NR - 1) / NR;
  // column blocks of equal width: a last block of one narrow tile would repack every panel of a
  const int64_t jmax = std::min<int64_t>(std::max<int64_t>(1, kFixedBlockCols / NR), nb);
  int64_t nblocks = (nb + jmax - 1) / jmax;
  const int nt = detail::resolve_threads(threads);
  const bool par = m * n * k >= kParallelWork && nt > 1;
  (void)par;
  // With column blocks enough for every thread, each thread packs and runs its own blocks (a
  // multiple of the thread count of them, so that they come out even); with few (a narrow
  // product), the threads share each block's panels and split its (row tile, column tile)
  // pairs (each thread taking whole blocks there would pack every panel of a twice).
  const bool own_cols = par && nblocks >= 2 * nt;
  if (own_cols) nblocks = (nblocks + nt - 1) / nt * nt;
  const int64_t jbb = (nb + nblocks - 1) / nblocks;
  if (own_cols) nblocks = (nb + jbb - 1) / jbb;
  avector<T> bp(static_cast<size_t>((own_cols ? nt : 1) * jbb * NR * KC));
  avector<T> ap_all(static_cast<size_t>(nt) * P::MR * KC);
#pragma omp parallel num_threads(nt) if (par)
  {
    T* ap = ap_all.data() + static_cast<size_t>(thread_index()) * P::MR * KC;
    // the rows (lanes) tile ib has
    auto rows_of = [&](int64_t ib) { return static_cast<int>(std::min<int64_t>(P::MR, LM - ib * P::MR)); };
    // the MR x kc panel of the tiles' rows (lanes) for row tile ib: a's rows, or transposed, b's
    // columns
    auto pack_a = [&](int64_t ib, int64_t k0, int64_t kc) {
      const int mrem = rows_of(ib);
      if (swapped) {
        pack_side_by_side(b, n, ib * P::MR, mrem, P::MR, order, k0, kc, ap);
      } else if (std::is_same<T, float>::value && !order && !a_transposed) {
        // the common case through the ISA's in-register transpose; a copy either way
        kernels().pack_a_f32(reinterpret_cast<const float*>(a) + ib * P::MR * k + k0, k, mrem, kc,
                             reinterpret_cast<float*>(ap));
      } else if (a_transposed) {  // a's rows are the reduced axis: a step's MR values side by side
        pack_side_by_side(a, m, ib * P::MR, mrem, P::MR, order, k0, kc, ap);
      } else {
        pack_across_rows(a, k, ib * P::MR, mrem, P::MR, order, k0, kc, ap);
      }
    };
    // the NR x kc panel of the tiles' columns for column tile jb: b's columns, or transposed,
    // a's rows
    auto pack_b = [&](int64_t jb, int64_t k0, int64_t kc, T* dst) {
      const int jc = static_cast<int>(std::min<int64_t>(NR, LN - jb * NR));  // columns this tile has
      if (swapped && !a_transposed) pack_across_rows(a, k, jb * NR, jc, NR, order, k0, kc, dst);
      else pack_side_by_side(swapped ? a : b, swapped ? m : n, jb * NR, jc, NR, order, k0, kc, dst);
    };
    // one tile: rows (lanes) of tile ib, columns of tile jb, from the packed panels
    auto run_tile = [&](int64_t ib, int64_t jb, const T* bpanel, int64_t kc, int resume) {
      const int nrem = static_cast<int>(std::min<int64_t>(NR, LN - jb * NR));
      // transposed, tile output (ii, jj) is C[jb NR + jj][ib MR + ii], at c[jj n + ii]
      T* c = swapped ? out + jb * NR * n + ib * P::MR : out + ib * P::MR * n + jb * NR;
      tile(ap, bpanel, kc, c, n, rows_of(ib), nrem, resume);
    };
    if (own_cols) {
      // each thread whole column blocks with its own panels, handed out as threads come free:
      // no barrier between blocks (on a 2-vCPU machine each one cost more than a block's work
      // once there were dozens), and a thread slowed by a neighbour takes fewer blocks
      T* bpt = bp.data() + thread_index() * jbb * NR * KC;
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t blk = 0; blk < nblocks; ++blk) {
        const int64_t j0 = blk * jbb, jn = std::min(jbb, nb - j0);
        for (int64_t k0 = 0; k0 < k; k0 += KC) {
          const int64_t kc = std::min(KC, k - k0);
          for (int64_t jq = 0; jq < jn; ++jq) pack_b(j0 + jq, k0, kc, bpt + jq * NR * kc);
          for (int64_t ib = 0; ib < mb; ++ib) {
            pack_a(ib, k0, kc);
            for (int64_t jq = 0; jq < jn; ++jq) run_tile(ib, j0 + jq, bpt + jq * NR * kc, kc, k0 > 0);
          }
        }
      }
    }
    for (int64_t j0 = 0; !own_cols && j0 < nb; j0 += jbb) {
      const int64_t jn = std::min(jbb, nb - j0);
      for (int64_t k0 = 0; k0 < k; k0 += KC) {
        const int64_t kc = std::min(KC, k - k0);
#pragma omp for schedule(static)
        for (int64_t jq = 0; jq < jn; ++jq) pack_b(j0 + jq, k0, kc, bp.data() + jq * NR * kc);
        // the threads split the (row tile, column tile) pairs, so a product with few column
        // tiles still keeps every thread busy; a thread packs the panel of a for each row tile
        // it reaches (one output's chain is one tile call either way: the thread count never
        // changes the bits)
        int64_t packed = -1;
#pragma omp for schedule(static)
        for (int64_t q = 0; q < mb * jn; ++q) {
          const int64_t ib = q / jn, jq = q % jn;
          if (ib != packed) pack_a(ib, k0, kc);
          packed = ib;
          run_tile(ib, j0 + jq, bp.data() + jq * NR * kc, kc, k0 > 0);
        }
      }
    }
  }
}

template <class T>
void sum_fixed_impl(const T* x, T* out, int64_t k, int64_t n, const int64_t* order, int threads) {
  const int nt = detail::resolve_threads(threads);
  // Columns are independent chains; split them across threads in contiguous blocks.
  const int64_t block = 256;
  const int64_t nblocks = (n + block - 1) / block;
  const bool par = n * k >= kParallelWork && nt > 1 && nblocks > 1;
  (void)par;
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
  for (int64_t cb = 0; cb < nblocks; ++cb) {
    int64_t j0 = cb * block, j1 = std::min(n, j0 + block);
    T acc[block];
    for (int64_t j = j0; j < j1; ++j) acc[j - j0] = T(0);
    for (int64_t t = 0; t < k; ++t) {
      const T* row = x + (order ? order[t] : t) * n;
      for (int64_t j = j0; j < j1; ++j) acc[j - j0] = acc[j - j0] + row[j];
    }
    for (int64_t j = j0; j < j1; ++j) out[j] = canonicalize(acc[j - j0]);
  }
}

// ---------------------------------------------------------------------------------
// exact mode
// ---------------------------------------------------------------------------------

/// max |x_t| over the finite x_t (0 if none) and whether any is not finite, in eight independent
/// lanes (a max is order-free), because one chain of dependent maxima took 4 cycles per element
/// on a 25 x 78,400 operand. The AVX-512 level has a 16-lane build for float32 (row_max_f32).
template <class T>
double row_maxabs_finite(const T* x, int64_t k, bool& nonfinite) {
  constexpr int U = 8;
  const T big = std::numeric_limits<T>::max();
  T m[U] = {};
  int bad = 0;
  int64_t t = 0;
  for (; t + U <= k; t += U)
    for (int u = 0; u < U; ++u) {
      const T v = std::fabs(x[t + u]);
      const bool fin = v <= big;  // false for inf and NaN
      m[u] = (fin && v > m[u]) ? v : m[u];
      bad |= !fin;
    }
  for (; t < k; ++t) {
    const T v = std::fabs(x[t]);
    const bool fin = v <= big;
    m[0] = (fin && v > m[0]) ? v : m[0];
    bad |= !fin;
  }
  T r = m[0];
  for (int u = 1; u < U; ++u) r = m[u] > r ? m[u] : r;
  nonfinite = bad != 0;
  return static_cast<double>(r);
}

template <class T, int S>
void matmul_exact_impl(const T* a, const T* b, T* out, int64_t m, int64_t k, int64_t n,
                       int threads, ExactKernel kernel = ExactKernel::Auto, const ImplicitRows<T>* ia = nullptr,
                       const ExactShare* share = nullptr) {
  // The tile shape is the dispatched ISA's (the AVX-512 float32 tile is 16 x 4, the others
  // 4 x 4 or 4 x 1): the panels are packed to match, and nothing else depends on it.
  const KernelTable& kt = kernels();
  const int MR = S == 2 ? kt.exact_s2_mr : ExactShape<S>::MR;
  const int NR = S == 2 ? kt.exact_s2_nr : ExactShape<S>::NR;
  if (k > kExactMatmulMaxK)
    throw std::invalid_argument("exact matmul: reduced axis longer than 2^20 terms");
  // A shared reduction slices with the whole reduction's plan and scales (ExactShare).
  const ExactPlan plan = exact_plan(share ? share->k_total : k, std::is_same<T, double>::value);
  if (share && share->k_total < k) throw std::invalid_argument("exact matmul: k_total is below this part's terms");
  const int w = plan.width;
  const int64_t K0 = int64_t(1) << plan.chunk_bits;
  const int nt = detail::resolve_threads(threads);
  const bool par = m * n * k >= kParallelWork && nt > 1;
  (void)par;

  // Pass 1: power-of-two scales from row maxima of a and column maxima of b (order-free).
  // ea is padded to whole row blocks: the AVX-512 rounding tile loads 16 rows' exponents at once.
  std::vector<int> ea((m + MR - 1) / MR * MR, 0), fb(n);
  std::vector<char> bad_row(m, 0), bad_col(n, 0);
  // Through the ISA's builds of these maxima (the same values: a max is order-free); the
  // element-by-element column pass cost 1 ns per element of b.
  const RowMaxF32 row_max = std::is_same<T, float>::value ? kt.row_max_f32 : nullptr;
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
  for (int64_t i = 0; i < m; ++i) {
    bool nf = false;
    double mx;
    if (share) {
      mx = share->row_max[i];  // non-finite terms are the caller's (exact_special_flags)
    } else if (ia) {
      mx = ia->row_max[static_cast<size_t>(i)];  // its entries are finite
    } else if (row_max) {
      char c = 0;
      mx = row_max(reinterpret_cast<const float*>(a + i * k), k, &c);
      nf = c != 0;
    } else {
      mx = row_maxabs_finite(a + i * k, k, nf);
    }
    ea[i] = scale_exponent(mx); bad_row[i] = nf;
  }
  {
    std::vector<double> mx(n, 0.0);
    std::vector<char> nf(n, 0);
    if (share)
      std::copy(share->col_max, share->col_max + n, mx.begin());
    else
      SumFn<T>::max()(b, n, 0, k, n, mx.data(), nf.data());
    for (int64_t j = 0; j < n; ++j) { fb[j] = scale_exponent(mx[j]); bad_col[j] = nf[j]; }
  }
  // An implicit a is gathered a panel at a time (rows_at, below), except where a path reads
  // whole rows of it: an output whose column of b is not finite (special_dot), and the int8
  // kernels. There it is materialised once, as the caller would have: the same values.
  std::vector<T> dense;
  auto materialise = [&] {
    dense.resize(static_cast<size_t>(m * k));
    ia->gather(0, static_cast<int>(m), 0, k, dense.data());
    a = dense.data();
    ia = nullptr;
  };
  if (ia && std::any_of(bad_col.begin(), bad_col.end(), [](char c) { return c != 0; })) materialise();

  const int64_t mb = (m + MR - 1) / MR, nb = (n + NR - 1) / NR;
  const ExactTile tile = S == 2 ? kt.exact_s2 : kt.exact_s4;
  const double p2w = std::ldexp(1.0, w);
  std::vector<Pow2> sb;
  sb.reserve(n);
  for (int64_t j = 0; j < n; ++j) sb.emplace_back(w - fb[j]);
  std::vector<double> f1(static_cast<size_t>(mb * MR), 1.0), f2(static_cast<size_t>(mb * MR), 1.0);
  for (int64_t i = 0; i < m; ++i) { Pow2 p(w - ea[i]); f1[i] = p.f1; f2[i] = p.f2; }
  const auto split_rows = SplitFn<T>::get();
  const auto split_cols = SplitFn<T>::cols();
  std::vector<double> g1(static_cast<size_t>(nb * NR), 1.0), g2(static_cast<size_t>(nb * NR), 1.0);
  for (int64_t j = 0; j < n; ++j) { g1[j] = sb[j].f1; g2[j] = sb[j].f2; }

  // Tiny products stay on the float64 slices: there the int8 path's fixed costs (tile state,
  // zero-padding every panel to 16 x 64) outweigh its faster products (bench_exact_kernels.py:
  // 64x10x100 11.6x vs 14.0x torch, 64x10x1000 8.2x vs 5.4x). Same bits either way.
  // So do reductions of at most 256 terms (a batch) where the ISA has the rounding tile: on the
  // Sapphire Rapids machine the int8 kernel gained nothing at k = 100 even against the AVX2 float64
  // tiles (22.5x vs 21.3x torch), and the AVX-512 tile that rounds in registers is faster again.
  if (kernel == ExactKernel::Auto)
    kernel = (m * n * k >= (int64_t(1) << 19) && !(k <= 256 && kt.exact_s2_round)) ? exact_kernel_auto()
                                                                                     : ExactKernel::F64Slices;
  if (kernel == ExactKernel::Int8Amx && !amx_int8_usable())
    throw std::invalid_argument("exact matmul: AMX-INT8 is not usable on this CPU/OS");
  if (kernel == ExactKernel::Int8Vnni && !vnni_int8_usable())
    throw std::invalid_argument("exact matmul: AVX-512 VNNI is not usable on this CPU or build");
  const bool int8_path = std::is_same<T, float>::value && kernel != ExactKernel::F64Slices;
  if (ia && int8_path) materialise();
  // The level accumulators. The float64 path zeroes each tile's block in its first sub-chunk
  // and rounds it in its last, while the block is in cache, so this array is neither zeroed in
  // one serial pass nor read back in another (on 3072 x 512 outputs those two passes over
  // 25 MB cost as much as the products of a 128-term reduction). The int8 kernels add into it.
  // Where the reduced axis is one sub-chunk (k <= 256: a batch), a tile's levels go to a small
  // per-thread block and are rounded from there, and no m x n array exists at all: allocating
  // one per call cost about 6 ns per output in page faults, more than the products at k = 128.
  constexpr int64_t kExactSubChunk = 256;
  const int64_t KS = std::min<int64_t>(std::min(K0, k), kExactSubChunk);
  // Rows ib*MR .. of a over terms t0 .. t0+kc-1, and their row stride: where a is implicit, a
  // panel gathered into the thread's buffer (L1-sized) instead of a slice of a materialised a.
  const int gather_slots = ia ? std::max(nt, 1) : 0;
  avector<T> gbuf(static_cast<size_t>(gather_slots) * MR * KS);
  auto rows_at = [&](int64_t ib, int mrem, int64_t t0, int64_t kc, int64_t& ld) -> const T* {
    if (!ia) {
      ld = k;
      return a + ib * MR * k + t0;
    }
    T* buf = gbuf.data() + static_cast<size_t>(thread_index()) * MR * KS;
    ia->gather(ib * MR, mrem, t0, kc, buf);
    ld = kc;
    return buf;
  };
  // A shared reduction keeps its levels: they accumulate in the caller's array, never rounded here.
  const bool one_pass = !int8_path && k <= KS && !share;
  const size_t acc_len = one_pass || share ? 0 : static_cast<size_t>(m * n * S);
  std::unique_ptr<int64_t[]> acc_buf(int8_path ? new int64_t[acc_len]() : new int64_t[acc_len]);
  if (share && int8_path) std::fill(share->levels, share->levels + m * n * S, int64_t(0));
  int64_t* const acc = share ? share->levels : acc_buf.get();
  constexpr int64_t kGroup = 8;  // column tiles per unit of the tile loop (below)
  std::vector<int64_t> blk_all(one_pass ? static_cast<size_t>(nt) * MR * kGroup * NR * S : 0);

  // Recombine the levels exactly and round once: value = sum_L acc_L 2^(-(L+2) w) 2^(ea+fb),
  // for row i and columns j0 .. j0 + nj - 1. Where the ISA has a vectorised float32 rounding
  // it takes the row segment first and leaves the lanes off its fast path (todo) to the
  // scalar code, which rounds every output the same way.
  const RecombineF32 vec_round = (S == 2 && std::is_same<T, float>::value) ? kt.recombine_f32 : nullptr;
  std::vector<char> todo_all(static_cast<size_t>(nt) * std::max<int64_t>(n, 1));
  // One output from its S levels lv[0..S-1], the general way.
  auto finish_one = [&](int64_t i, int64_t j, const int64_t* lv) {
    if ((bad_row[i] || bad_col[j]) && special_dot(a, b, i, j, k, n, out + i * n + j)) return;
    const int e2 = ea[i] + fb[j] - (S + 1) * w;
    if (S == 2 && round_two_levels<T>(lv[0], lv[1], w, e2, out + i * n + j)) return;
    Int192 v;
    for (int L = 0; L < S; ++L) v.add_shifted(lv[L], (S - 1 - L) * w);
    out[i * n + j] = round_int192<T>(v, e2);
  };
  // lvrow: the levels of (i, j0), then of (i, j0 + 1), ...
  auto finish = [&](const int64_t* lvrow, int64_t i, int64_t j0, int64_t nj, char* todo) {
    const bool vec = vec_round && !bad_row[i];
    if (vec)
      vec_round(lvrow, nj, ea[i], fb.data() + j0, w, bad_col.data() + j0,
                reinterpret_cast<float*>(out + i * n + j0), todo);
    for (int64_t jj = 0; jj < nj; ++jj)
      if (!vec || todo[jj]) finish_one(i, j0 + jj, lvrow + jj * S);
  };
  if (int8_path) {
    // The same levels from int8 digits (intexact.hpp): same integers, same bits.
    auto levels = kernel == ExactKernel::Int8Amx    ? int_amx::exact_levels_int8
                  : kernel == ExactKernel::Int8Vnni ? int_vnni::exact_levels_int8
                                                    : int_generic::exact_levels_int8;
    levels(reinterpret_cast<const float*>(a), reinterpret_cast<const float*>(b), m, k, n, w, f1.data(), f2.data(),
           g1.data(), g2.data(), acc, nt, par);
    if (!share) {
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
      for (int64_t i = 0; i < m; ++i)
        finish(acc + i * n * S, i, 0, n, todo_all.data() + static_cast<size_t>(thread_index()) * n);
    }
  } else if (par && !one_pass && mb * ((nb + kGroup - 1) / kGroup) < 2 * nt && (k + KS - 1) / KS >= 4 * nt &&
             m * n <= (int64_t(1) << 16)) {
    // Few output tiles over a long reduced axis (a convolution's weight gradient: 25 x 6 outputs
    // over 78,400 terms). The walk below would give each of some 300 sub-chunks two units of
    // work and three barriers. Here each thread takes whole sub-chunks into levels of its own,
    // and the threads' levels are added at the end. They are integers: their sum does not
    // depend on how the sub-chunks were shared, so the bits are the walk's.
    const int64_t nsub = (k + KS - 1) / KS, cg = S == 2 ? kt.split_cols_tiles : 1;
    const size_t per = static_cast<size_t>(m * n * S);
    std::vector<int64_t> parts(static_cast<size_t>(nt) * per, 0);
    avector<double> apn(static_cast<size_t>(nt * MR * KS * S)), bpn(static_cast<size_t>(nt * nb * NR * KS * S));
#pragma omp parallel num_threads(nt)
    {
      const size_t tid = static_cast<size_t>(thread_index());
      int64_t* const mine = parts.data() + tid * per;
      double* const ap = apn.data() + tid * static_cast<size_t>(MR * KS * S);
      double* const bq = bpn.data() + tid * static_cast<size_t>(nb * NR * KS * S);
#pragma omp for schedule(static)
      for (int64_t sub = 0; sub < nsub; ++sub) {
        const int64_t t0 = sub * KS, kc = std::min(KS, k - t0);
        for (int64_t jb = 0; jb < nb; jb += cg) {
          const int cols = static_cast<int>(std::min<int64_t>(NR * cg, n - jb * NR));
          split_cols(b + t0 * n + jb * NR, n, cols, kc, g1.data() + jb * NR, g2.data() + jb * NR, p2w,
                     bq + jb * NR * kc * S, NR);
        }
        for (int64_t ib = 0; ib < mb; ++ib) {
          const int mrem = static_cast<int>(std::min<int64_t>(MR, m - ib * MR));
          int64_t lda;
          const T* ar = rows_at(ib, mrem, t0, kc, lda);
          split_rows(ar, lda, mrem, kc, f1.data() + ib * MR, f2.data() + ib * MR, p2w, ap, MR);
          for (int64_t jb = 0; jb < nb; ++jb)
            tile(ap, bq + jb * NR * kc * S, kc, mine + (ib * MR * n + jb * NR) * S, n, mrem,
                 static_cast<int>(std::min<int64_t>(NR, n - jb * NR)));
        }
      }
    }
    for (int t = 1; t < nt; ++t)
      for (size_t e = 0; e < per; ++e) parts[e] += parts[static_cast<size_t>(t) * per + e];
    if (share)
      std::copy(parts.begin(), parts.begin() + static_cast<std::ptrdiff_t>(per), share->levels);
    else
      for (int64_t i = 0; i < m; ++i) finish(parts.data() + i * n * S, i, 0, n, todo_all.data());
  } else {
  // The reduced axis is walked in sub-chunks of at most kExactSubChunk terms. A tile's level
  // sums over any run of at most 2^chunk_bits terms are exact integers in float64, and the
  // int64 accumulators add them exactly, so a finer cut gives the same integers, the same
  // bits. What it buys is locality: the packed B panel of a sub-chunk is n x 256 x S doubles,
  // and it is used in column blocks of about kExactPanelBytes, so a block stays in L2 while
  // every row block of a (all split up front, m x 256 x S doubles) runs over it. Before, one
  // chunk's panel was n x 2048 x S doubles (19 MB at n = 576) and was re-read from memory
  // for every four rows of a.
  constexpr int64_t kExactPanelBytes = 512 * 1024;
  const int64_t jbb = std::max<int64_t>(1, kExactPanelBytes / int64_t(NR * KS * S * sizeof(double)));
  // Where b's panel is one column block (n <= 128 here), each row block of a is used by one
  // unit of tiles after another and never again in the sub-chunk: it is sliced by the thread
  // that runs those units, into a panel of its own that stays in L1/L2. Slicing every row block
  // up front instead wrote m x 256 x 2 doubles per sub-chunk to memory and read them back
  // (800 MB on 4096 x 64 x 4096). Where there are several column blocks, the up-front panels
  // are reused by each and are worth their traffic.
  const bool fuse_a = nb <= jbb;
  const ExactTileRoundF32 round_tile =
      (one_pass && std::is_same<T, float>::value && S == 2 && MR == 16) ? kt.exact_s2_round : nullptr;
  Scratch& sc = scratch();
  grow(sc.a, static_cast<size_t>(fuse_a ? nt * MR * KS * S : mb * MR * KS * S));
  grow(sc.b, static_cast<size_t>(nb * NR * KS * S));
  double* const ap_all = sc.a.data();
  double* const bp = sc.b.data();
  // One parallel region for the whole walk (the omp for's barriers separate the sub-chunks):
  // a region per sub-chunk woke the team hundreds of times per call, which costs most when
  // the threads wait passively.
#pragma omp parallel num_threads(nt) if (par)
  for (int64_t t0 = 0; t0 < k; t0 += KS) {
    const int64_t kc = std::min(KS, k - t0);
    int64_t panel_ib = -1;  // fuse_a: the row block in this thread's panel for this sub-chunk
    double* const own_panel = ap_all + static_cast<size_t>(thread_index()) * MR * KS * S;
    {
      // `cg` column tiles per call (the AVX-512 level slices 16 columns of a row at once and
      // writes them to 4 consecutive tiles of kc x NR x S; the others one tile per call)
      const int64_t cg = S == 2 ? kt.split_cols_tiles : 1;
#pragma omp for schedule(static)
      for (int64_t jg = 0; jg < (nb + cg - 1) / cg; ++jg) {
        const int64_t jb = jg * cg;
        const int cols = static_cast<int>(std::min<int64_t>(NR * cg, n - jb * NR));
        split_cols(b + t0 * n + jb * NR, n, cols, kc, g1.data() + jb * NR, g2.data() + jb * NR, p2w,
                   bp + jb * NR * kc * S, NR);
      }
      if (!fuse_a) {
#pragma omp for schedule(static)
      for (int64_t ib = 0; ib < mb; ++ib) {
        double* ap = ap_all + ib * MR * kc * S;
        const int mrem = static_cast<int>(std::min<int64_t>(MR, m - ib * MR));
        int64_t lda;
        const T* ar = rows_at(ib, mrem, t0, kc, lda);
        split_rows(ar, lda, mrem, kc, f1.data() + ib * MR, f2.data() + ib * MR, p2w, ap, MR);  // rows from mrem on are zero
      }
      }
      for (int64_t j0 = 0; j0 < nb; j0 += jbb) {
        const int64_t jn = std::min(jbb, nb - j0);
        // Units of one row block by up to kGroup column tiles of this column block; each
        // writes its own accumulators, and in the last sub-chunk rounds its outputs while they
        // are in cache, kGroup x NR columns per row at a time (4 at a time, the vector
        // rounding's setup cost as much as the products at k = 128).
        const int64_t ng = (jn + kGroup - 1) / kGroup;
#pragma omp for schedule(static)
        for (int64_t q = 0; q < mb * ng; ++q) {
          const int64_t ib = q / ng, jb0 = j0 + (q % ng) * kGroup, jb1 = std::min(j0 + jn, jb0 + kGroup);
          const int mrem = static_cast<int>(std::min<int64_t>(MR, m - ib * MR));
          double* ap = ap_all + ib * MR * kc * S;
          if (fuse_a) {
            ap = own_panel;
            if (panel_ib != ib) {
              int64_t lda;
              const T* ar = rows_at(ib, mrem, t0, kc, lda);
              split_rows(ar, lda, mrem, kc, f1.data() + ib * MR, f2.data() + ib * MR, p2w, ap, MR);
              panel_ib = ib;
            }
          }
          // one pass: the thread's MR x (kGroup NR) block; else the unit's part of acc
          const int64_t ld = one_pass ? kGroup * NR : n;
          int64_t* const unit = one_pass ? blk_all.data() + static_cast<size_t>(thread_index()) * MR * kGroup * NR * S
                                         : acc + (ib * MR * n + jb0 * NR) * S;
          if (round_tile) {  // one pass, rounded in the tile; the rest as finish_one would
            int64_t* const lv = unit;  // the unsure lanes' levels, [j][L][row]
            for (int64_t jb = jb0; jb < jb1; ++jb) {
              const int nrem = static_cast<int>(std::min<int64_t>(NR, n - jb * NR));
              const int64_t i0 = ib * MR, j = jb * NR;
              uint64_t todo = 0;
              round_tile(ap, bp + jb * NR * kc * S, kc, mrem, nrem, ea.data() + i0, fb.data() + j, w,
                         bad_row.data() + i0, bad_col.data() + j, reinterpret_cast<float*>(out + i0 * n + j), n, lv,
                         &todo);
              for (; todo; todo &= todo - 1) {
                const int bit = __builtin_ctzll(todo), jj = bit / 16, ii = bit % 16;
                const int64_t two[2] = {lv[(jj * 2) * 16 + ii], lv[(jj * 2 + 1) * 16 + ii]};
                finish_one(i0 + ii, j + jj, two);
              }
            }
            continue;
          }
          for (int64_t jb = jb0; jb < jb1; ++jb) {
            const int nrem = static_cast<int>(std::min<int64_t>(NR, n - jb * NR));
            int64_t* blk = unit + (jb - jb0) * NR * S;
            if (t0 == 0)
              for (int ii = 0; ii < mrem; ++ii) std::memset(blk + ii * ld * S, 0, sizeof(int64_t) * nrem * S);
            tile(ap, bp + jb * NR * kc * S, kc, blk, ld, mrem, nrem);
          }
          if (t0 + kc >= k && !share) {  // the unit's last sub-chunk: round its outputs now
            char* todo = todo_all.data() + static_cast<size_t>(thread_index()) * std::max<int64_t>(n, 1);
            const int64_t ncols = std::min(n, jb1 * NR) - jb0 * NR;
            for (int ii = 0; ii < mrem; ++ii) finish(unit + ii * ld * S, ib * MR + ii, jb0 * NR, ncols, todo);
          }
        }
      }
    }
  }
  trim(sc.a);
  trim(sc.b);
  }
}

template <class T>
void sum_exact_impl(const T* x, T* out, int64_t k, int64_t n, int threads, const double* col_max = nullptr,
                    int64_t* levels = nullptr) {
  if (k > kExactSumMaxK)
    throw std::invalid_argument("exact sum: reduced axis longer than 2^22 terms");
  constexpr int S = kSumSlices, w = kSumWidth;
  const int nt = detail::resolve_threads(threads);
  const int64_t block = 64;
  const int64_t nblocks = (n + block - 1) / block;
  const bool par = n * k >= kParallelWork && nt > 1 && nblocks > 1;
  (void)par;
  const double p2w = std::ldexp(1.0, w);
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
  for (int64_t cb = 0; cb < nblocks; ++cb) {
    const int64_t j0 = cb * block, j1 = std::min(n, j0 + block), nc = j1 - j0;
    // The passes over the rows are the ISA's builds of sum_max_cols_t and sum_slices_cols_t
    // (kernels.inc): element by element the maxima and split_pow2, as loops over a row's
    // columns that vectorise. Element by element here they took 2 ns per element, 20x torch.
    double mx[block], f1[block], f2[block];
    char nf[block];
    int fe[block];
    for (int64_t j = 0; j < nc; ++j) { mx[j] = col_max ? col_max[j0 + j] : 0; nf[j] = 0; }
    if (!col_max) SumFn<T>::max()(x + j0, n, 0, k, nc, mx, nf);  // else the whole reduction's
    for (int64_t j = 0; j < nc; ++j) {
      fe[j] = scale_exponent(mx[j]);
      const Pow2 sc(w - fe[j]);
      f1[j] = sc.f1; f2[j] = sc.f2;
    }
    static_assert(S == 2, "the passes keep two slices");
    int64_t acc[block][S] = {};
    double p0[block], p1[block];
    for (int64_t t0 = 0; t0 < k; t0 += kSumChunk) {
      const int64_t t1 = std::min(k, t0 + kSumChunk);
      for (int64_t j = 0; j < nc; ++j) { p0[j] = 0.0; p1[j] = 0.0; }
      SumFn<T>::slices()(x + j0, n, t0, t1, nc, f1, f2, p2w, p0, p1);  // exact: |sum| <= 2^13 * 2^40
      for (int64_t j = 0; j < nc; ++j) {
        acc[j][0] += static_cast<int64_t>(p0[j]);
        acc[j][1] += static_cast<int64_t>(p1[j]);
      }
    }
    if (levels) {  // a shared reduction: its levels, for the caller to add up and round
      for (int64_t j = 0; j < nc; ++j)
        for (int l = 0; l < S; ++l) levels[(j0 + j) * S + l] = acc[j][l];
      continue;
    }
    for (int64_t j = 0; j < nc; ++j) {
      if (nf[j]) {
        SpecialAcc sp;
        for (int64_t t = 0; t < k; ++t) sp.add(static_cast<double>(x[t * n + j0 + j]));
        if (sp.any()) { out[j0 + j] = sp.value<T>(); continue; }
      }
      Int192 v;
      for (int l = 0; l < S; ++l) v.add_shifted(acc[j][l], (S - 1 - l) * w);
      out[j0 + j] = round_int192<T>(v, fe[j] - S * w);
    }
  }
}

// One channel's scale from its columns' maxima: every column gets the channel's one scale (the
// factors f1, f2 of 2^(w - fe)); `special` says whether a column held an Inf or NaN.
int channel_scale(const std::vector<double>& mx, const std::vector<char>& nf, std::vector<double>& f1,
                  std::vector<double>& f2, bool& special) {
  double m = 0.0;
  for (size_t l = 0; l < mx.size(); ++l) { m = mx[l] > m ? mx[l] : m; special = special || nf[l]; }
  const int fe = scale_exponent(m);
  const Pow2 sc(kSumWidth - fe);
  std::fill(f1.begin(), f1.end(), sc.f1);
  std::fill(f2.begin(), f2.end(), sc.f2);
  return fe;
}

// A channel's terms are N runs of L contiguous values, C * L apart: the column passes of the
// exact sum run over them as N rows of L columns, all columns with the channel's one scale (the
// maximum over the whole channel), and the columns' integer slice sums are added exactly. Every
// term gets the slices it gets in sum_exact_impl, so the integers and the rounding are the same.
template <class T>
void sum_channels_impl(const T* x, T* out, int64_t N, int64_t C, int64_t L, bool exact, int threads) {
  if (exact && N * L > kExactSumMaxK)
    throw std::invalid_argument("exact sum: a channel has more than 2^22 terms");
  constexpr int S = kSumSlices, w = kSumWidth;
  const int nt = detail::resolve_threads(threads);
  const bool par = N * C * L >= kParallelWork && nt > 1 && C > 1;
  (void)par;
  const double p2w = std::ldexp(1.0, w);
  const int64_t stride = C * L;
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
  for (int64_t c = 0; c < C; ++c) {
    const T* base = x + c * L;
    if (!exact) {  // sum_fixed_impl's chain: +0, then the terms in row order n * L + l
      T acc = T(0);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t l = 0; l < L; ++l) acc = acc + base[n * stride + l];
      out[c] = canonicalize(acc);
      continue;
    }
    std::vector<double> mx(L, 0.0), f1(L), f2(L), p0(L), p1(L);
    std::vector<char> nf(L, 0);
    SumFn<T>::max()(base, stride, 0, N, L, mx.data(), nf.data());
    bool special = false;
    const int fe = channel_scale(mx, nf, f1, f2, special);
    static_assert(S == 2, "the passes keep two slices");
    int64_t acc[S] = {0, 0};
    for (int64_t t0 = 0; t0 < N; t0 += kSumChunk) {  // each column gets one term per row
      const int64_t t1 = std::min(N, t0 + kSumChunk);
      std::fill(p0.begin(), p0.end(), 0.0);
      std::fill(p1.begin(), p1.end(), 0.0);
      SumFn<T>::slices()(base, stride, t0, t1, L, f1.data(), f2.data(), p2w, p0.data(), p1.data());
      for (int64_t l = 0; l < L; ++l) {
        acc[0] += static_cast<int64_t>(p0[l]);
        acc[1] += static_cast<int64_t>(p1[l]);
      }
    }
    if (special) {
      SpecialAcc sp;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t l = 0; l < L; ++l) sp.add(static_cast<double>(base[n * stride + l]));
      if (sp.any()) { out[c] = sp.value<T>(); continue; }
    }
    Int192 v;
    for (int l = 0; l < S; ++l) v.add_shifted(acc[l], (S - 1 - l) * w);
    out[c] = round_int192<T>(v, fe - S * w);
  }
}

// sum_channels over terms computed from the arrays instead of read from one: term(c, n, row)
// writes the L terms of example n, channel c. Chunks of rows are computed into a small buffer
// and go through the same passes (the maximum first, then the slices with the channel's one
// scale), so every term gets the slices it would get in sum_channels over the materialised
// terms: the same integers, the same rounding (and in the fixed mode the same chain).
template <class T, class Term>
void sum_channels_terms_impl(T* out, int64_t N, int64_t C, int64_t L, bool exact, int threads, const Term& term) {
  if (exact && N * L > kExactSumMaxK)
    throw std::invalid_argument("exact sum: a channel has more than 2^22 terms");
  constexpr int S = kSumSlices, w = kSumWidth;
  const int nt = detail::resolve_threads(threads);
  const bool par = N * C * L >= kParallelWork && nt > 1 && C > 1;
  (void)par;
  const double p2w = std::ldexp(1.0, w);
  // rows per chunk: a few thousand terms (in L1/L2), and never more than the exact chunk
  const int64_t R = std::max<int64_t>(1, std::min<int64_t>(kSumChunk, 4096 / std::max<int64_t>(L, 1)));
  avector<T> bufs(static_cast<size_t>(std::max(nt, 1) * R * L));
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
  for (int64_t c = 0; c < C; ++c) {
    T* buf = bufs.data() + static_cast<size_t>(thread_index()) * R * L;
    auto fill = [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) term(c, n, buf + (n - n0) * L);
    };
    if (!exact) {  // sum_fixed_impl's chain: +0, then the terms in row order n * L + l
      T acc = T(0);
      for (int64_t n0 = 0; n0 < N; n0 += R) {
        const int64_t n1 = std::min(N, n0 + R);
        fill(n0, n1);
        for (int64_t e = 0; e < (n1 - n0) * L; ++e) acc = acc + buf[e];
      }
      out[c] = canonicalize(acc);
      continue;
    }
    std::vector<double> mx(L, 0.0), f1(L), f2(L), p0(L), p1(L);
    std::vector<char> nf(L, 0);
    for (int64_t n0 = 0; n0 < N; n0 += R) {
      const int64_t n1 = std::min(N, n0 + R);
      fill(n0, n1);
      SumFn<T>::max()(buf, L, 0, n1 - n0, L, mx.data(), nf.data());
    }
    bool special = false;
    const int fe = channel_scale(mx, nf, f1, f2, special);
    static_assert(S == 2, "the passes keep two slices");
    int64_t acc[S] = {0, 0};
    SpecialAcc sp;
    for (int64_t n0 = 0; n0 < N; n0 += R) {
      const int64_t n1 = std::min(N, n0 + R);
      fill(n0, n1);
      std::fill(p0.begin(), p0.end(), 0.0);
      std::fill(p1.begin(), p1.end(), 0.0);
      SumFn<T>::slices()(buf, L, 0, n1 - n0, L, f1.data(), f2.data(), p2w, p0.data(), p1.data());
      for (int64_t l = 0; l < L; ++l) {
        acc[0] += static_cast<int64_t>(p0[l]);
        acc[1] += static_cast<int64_t>(p1[l]);
      }
      if (special)
        for (int64_t e = 0; e < (n1 - n0) * L; ++e) sp.add(static_cast<double>(buf[e]));
    }
    if (special && sp.any()) { out[c] = sp.value<T>(); continue; }
    Int192 v;
    for (int l = 0; l < S; ++l) v.add_shifted(acc[l], (S - 1 - l) * w);
    out[c] = round_int192<T>(v, fe - S * w);
  }
}

}  // namespace

template <class T>
void sum_channels(const T* x, T* out, int64_t N, int64_t C, int64_t L, bool exact, int threads) {
  sum_channels_impl<T>(x, out, N, C, L, exact, threads);
}
// ---- Reductions shared among processes (data-parallel training): see reduce.hpp ----

template <class T>
bool exact_maxima(const T* a, const T* b, int64_t m, int64_t k, int64_t n, double* row_max, double* col_max) {
  bool bad = false;
  for (int64_t i = 0; i < m; ++i) {
    bool nf = false;
    row_max[i] = row_maxabs_finite(a + i * k, k, nf);
    bad = bad || nf;
  }
  std::vector<char> nf(static_cast<size_t>(n), 0);
  std::fill(col_max, col_max + n, 0.0);
  if (k > 0) SumFn<T>::max()(b, n, 0, k, n, col_max, nf.data());
  for (int64_t j = 0; j < n; ++j) bad = bad || nf[static_cast<size_t>(j)];
  return bad;
}

template <class T>
void exact_special_flags(const T* a, const T* b, int64_t m, int64_t k, int64_t n, uint8_t* flags) {
  std::fill(flags, flags + m * n, uint8_t(0));
  std::vector<char> row_bad(static_cast<size_t>(m), 0), col_bad(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t t = 0; t < k; ++t) row_bad[i] |= !is_finite_d(static_cast<double>(a[i * k + t]));
  for (int64_t t = 0; t < k; ++t)
    for (int64_t j = 0; j < n; ++j) col_bad[j] |= !is_finite_d(static_cast<double>(b[t * n + j]));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      if (!row_bad[i] && !col_bad[j]) continue;
      SpecialAcc sp;
      for (int64_t t = 0; t < k; ++t) {
        const double x = a[i * k + t], y = b[t * n + j];
        if (!is_finite_d(x) || !is_finite_d(y)) sp.add(x * y);
      }
      flags[i * n + j] = static_cast<uint8_t>((sp.nan ? 1 : 0) | (sp.pos ? 2 : 0) | (sp.neg ? 4 : 0));
    }
}

namespace {
template <class T> T special_value(uint8_t f) {
  SpecialAcc sp;
  sp.nan = (f & 1) != 0;
  sp.pos = (f & 2) != 0;
  sp.neg = (f & 4) != 0;
  return sp.value<T>();
}
}  // namespace

template <class T>
void matmul_exact_levels(const T* a, const T* b, int64_t m, int64_t k, int64_t n, const ExactShare& share,
                         int threads) {
  if (k < 1) {  // a process with no terms holds zero levels
    std::fill(share.levels, share.levels + m * n * (std::is_same<T, float>::value ? 2 : 4), int64_t(0));
    return;
  }
  if (share.k_total > kExactMatmulMaxK)
    throw std::invalid_argument("exact matmul: reduced axis longer than 2^20 terms");
  matmul_exact_impl<T, std::is_same<T, float>::value ? 2 : 4>(a, b, nullptr, m, k, n, threads, ExactKernel::Auto,
                                                              nullptr, &share);
}

template <class T>
void round_exact_levels(const int64_t* levels, int64_t m, int64_t n, int64_t k_total, const double* row_max,
                        const double* col_max, const uint8_t* flags, T* out) {
  constexpr int S = std::is_same<T, float>::value ? 2 : 4;
  const int w = exact_plan(k_total, std::is_same<T, double>::value).width;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      T* o = out + i * n + j;
      if (flags && flags[i * n + j]) { *o = special_value<T>(flags[i * n + j]); continue; }
      const int64_t* lv = levels + (i * n + j) * S;
      const int e2 = scale_exponent(row_max[i]) + scale_exponent(col_max[j]) - (S + 1) * w;
      if (S == 2 && round_two_levels<T>(lv[0], lv[1], w, e2, o)) continue;
      Int192 v;
      for (int L = 0; L < S; ++L) v.add_shifted(lv[L], (S - 1 - L) * w);
      *o = round_int192<T>(v, e2);
    }
}

template <class T>
bool sum_maxima(const T* x, int64_t k, int64_t n, double* col_max) {
  std::vector<char> nf(static_cast<size_t>(n), 0);
  std::fill(col_max, col_max + n, 0.0);
  if (k > 0) SumFn<T>::max()(x, n, 0, k, n, col_max, nf.data());
  return std::any_of(nf.begin(), nf.end(), [](char c) { return c != 0; });
}

template <class T>
void sum_special_flags(const T* x, int64_t k, int64_t n, uint8_t* flags) {
  for (int64_t j = 0; j < n; ++j) {
    SpecialAcc sp;
    for (int64_t t = 0; t < k; ++t) sp.add(static_cast<double>(x[t * n + j]));
    flags[j] = static_cast<uint8_t>((sp.nan ? 1 : 0) | (sp.pos ? 2 : 0) | (sp.neg ? 4 : 0));
  }
}

template <class T>
void sum_exact_levels(const T* x, int64_t k, int64_t n, const double* col_max, int64_t* levels, int threads) {
  if (k < 1) {
    std::fill(levels, levels + n * kSumSlices, int64_t(0));
    return;
  }
  sum_exact_impl<T>(x, nullptr, k, n, threads, col_max, levels);
}

template <class T>
void round_sum_levels(const int64_t* levels, int64_t n, const double* col_max, const uint8_t* flags, T* out) {
  constexpr int S = kSumSlices, w = kSumWidth;
  for (int64_t j = 0; j < n; ++j) {
    if (flags && flags[j]) { out[j] = special_value<T>(flags[j]); continue; }
    Int192 v;
    for (int l = 0; l < S; ++l) v.add_shifted(levels[j * S + l], (S - 1 - l) * w);
    out[j] = round_int192<T>(v, scale_exponent(col_max[j]) - S * w);
  }
}

#define EXACTFORGE_SHARED(T)                                                                                        \
  template bool exact_maxima<T>(const T*, const T*, int64_t, int64_t, int64_t, double*, double*);                  \
  template void exact_special_flags<T>(const T*, const T*, int64_t, int64_t, int64_t, uint8_t*);                   \
  template void matmul_exact_levels<T>(const T*, const T*, int64_t, int64_t, int64_t, const ExactShare&, int);    \
  template void round_exact_levels<T>(const int64_t*, int64_t, int64_t, int64_t, const double*, const double*,     \
                                      const uint8_t*, T*);                                                         \
  template bool sum_maxima<T>(const T*, int64_t, int64_t, double*);                                                \
  template void sum_special_flags<T>(const T*, int64_t, int64_t, uint8_t*);                                        \
  template void sum_exact_levels<T>(const T*, int64_t, int64_t, const double*, int64_t*, int);                     \
  template void round_sum_levels<T>(const int64_t*, int64_t, const double*, const uint8_t*, T*);
EXACTFORGE_SHARED(float)
EXACTFORGE_SHARED(double)
#undef EXACTFORGE_SHARED

template <class T>
void sum_centered_squares(const T* x, const T* mean, T* out, int64_t N, int64_t C, int64_t L, bool exact,
                          int threads) {
  sum_channels_terms_impl<T>(out, N, C, L, exact, threads, [&](int64_t c, int64_t n, T* row) {
    const T* xr = x + (n * C + c) * L;
    const T mu = mean[c];
    for (int64_t l = 0; l < L; ++l) {
      const T d = xr[l] - mu;  // rounded, as the materialised x - mean was; then squared
      row[l] = d * d;
    }
  });
}
template <class T>
void sum_channel_products(const T* a, const T* b, T* out, int64_t N, int64_t C, int64_t L, bool exact,
                          int threads) {
  sum_channels_terms_impl<T>(out, N, C, L, exact, threads, [&](int64_t c, int64_t n, T* row) {
    const T* ar = a + (n * C + c) * L;
    const T* br = b + (n * C + c) * L;
    for (int64_t l = 0; l < L; ++l) row[l] = ar[l] * br[l];
  });
}
template void sum_centered_squares<float>(const float*, const float*, float*, int64_t, int64_t, int64_t, bool, int);
template void sum_centered_squares<double>(const double*, const double*, double*, int64_t, int64_t, int64_t, bool,
                                           int);
template void sum_channel_products<float>(const float*, const float*, float*, int64_t, int64_t, int64_t, bool, int);
template void sum_channel_products<double>(const double*, const double*, double*, int64_t, int64_t, int64_t, bool,
                                           int);
template void sum_channels<float>(const float*, float*, int64_t, int64_t, int64_t, bool, int);
template void sum_channels<double>(const double*, double*, int64_t, int64_t, int64_t, bool, int);

template <class T>
void matmul_fixed(const T* a, const T* b, T* out, int64_t m, int64_t k, int64_t n,
                  const int64_t* order, int threads, bool a_transposed) {
  matmul_fixed_impl<T>(a, b, out, m, k, n, order, threads, a_transposed);
}
template <class T>
void sum_fixed(const T* x, T* out, int64_t k, int64_t n, const int64_t* order, int threads) {
  sum_fixed_impl<T>(x, out, k, n, order, threads);
}
template <>
void matmul_exact<float>(const float* a, const float* b, float* out, int64_t m, int64_t k,
                         int64_t n, int threads) {
  matmul_exact_impl<float, 2>(a, b, out, m, k, n, threads);
}
template <>
void matmul_exact<double>(const double* a, const double* b, double* out, int64_t m, int64_t k,
                          int64_t n, int threads) {
  matmul_exact_impl<double, 4>(a, b, out, m, k, n, threads);
}
template <class T>
void sum_exact(const T* x, T* out, int64_t k, int64_t n, int threads) {
  sum_exact_impl<T>(x, out, k, n, threads);
}
template <>
void matmul_exact_implicit<float>(const ImplicitRows<float>& a, const float* b, float* out, int64_t m, int64_t k,
                                  int64_t n, int threads) {
  if (static_cast<int64_t>(a.row_max.size()) != m) throw std::invalid_argument("exact matmul: one maximum per row");
  matmul_exact_impl<float, 2>(nullptr, b, out, m, k, n, threads, ExactKernel::Auto, &a);
}
template <>
void matmul_exact_implicit<double>(const ImplicitRows<double>& a, const double* b, double* out, int64_t m, int64_t k,
                                   int64_t n, int threads) {
  if (static_cast<int64_t>(a.row_max.size()) != m) throw std::invalid_argument("exact matmul: one maximum per row");
  matmul_exact_impl<double, 4>(nullptr, b, out, m, k, n, threads, ExactKernel::Auto, &a);
}
void matmul_exact_with(const float* a, const float* b, float* out, int64_t m, int64_t k, int64_t n,
                       int threads, int kernel) {
  if (kernel < 0 || kernel > 4) throw std::invalid_argument("exact matmul: unknown kernel");
  matmul_exact_impl<float, 2>(a, b, out, m, k, n, threads, static_cast<ExactKernel>(kernel));
}

template void matmul_fixed<float>(const float*, const float*, float*, int64_t, int64_t, int64_t, const int64_t*, int, bool);
template void matmul_fixed<double>(const double*, const double*, double*, int64_t, int64_t, int64_t, const int64_t*, int, bool);
template void sum_fixed<float>(const float*, float*, int64_t, int64_t, const int64_t*, int);
template void sum_fixed<double>(const double*, double*, int64_t, int64_t, const int64_t*, int);
template void sum_exact<float>(const float*, float*, int64_t, int64_t, int);
template void sum_exact<double>(const double*, double*, int64_t, int64_t, int);

}  // namespace exactforge
