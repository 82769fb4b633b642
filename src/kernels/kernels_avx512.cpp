// The AVX-512 level of the CPU kernels (flags in CMakeLists.txt: AVX-512 F/DQ/VL/BW, and no
// contraction, like every file but the exact tiles of kernels.inc): the float32 exact matmul's
// tiles, slicing, scales and rounding, the exact sum's passes, and the float32 fixed tile. Chosen
// at run time only where the CPU reports those features (reduce.cpp, kernels()).
//
// Why the bits are those of the AVX2 and baseline levels:
//  - the exact tiles sum the same products A_l[i,t] B_m[t,j] of the same slices as
//    exact_tile_s2_4x4, only 16 rows at a time in two 8-lane vectors. Every product and partial
//    sum is an integer below 2^53 (exact_plan), so each fused multiply-add is exact and the order
//    is free;
//  - the slicing is split_pow2's sequence of IEEE operations, lane by lane (slice8); lanes are
//    independent elements, so the lane count cannot change a slice;
//  - the rounding computes the correctly rounded float of an exact integer (round8), as
//    round_two_levels and round_int192 do; there is only one such float;
//  - maxima are order-free, and the fixed tile runs one FMA chain per output, as everywhere.
// On Zen 5 (full-width AVX-512, two 512-bit FMA pipes) the tiles run twice the FMAs of the AVX2
// ones per cycle; on CPUs that split 512-bit operations in two they need fewer loads per product.
#define EXACTFORGE_KERNEL_NS avx512
#include "kernels.inc"  // fixed_tile_t and the sum loops (internal linkage: no symbol is shared)

#if defined(__AVX512F__) && defined(__AVX512DQ__)

namespace exactforge {
namespace avx512 {

static_assert(kExactS2MR == 16 && kExactS2NR == 4, "the tile below is 16 x 4");

// acc[(ii*ldacc + j)*2 + L] += level L of column j, row ii, for rows ii < rows (<= 8), from 8 vectors
// r0..r7 = (L0, L1) of columns 0..3, lane ii = row ii: an 8 x 8 transpose of int64 in registers
// (unpack within 128-bit lanes, then two rounds of 128-bit lane shuffles), then one add per row.
static inline void add_rows8(int64_t* acc, int64_t ldacc, int rows, __m512i r0, __m512i r1, __m512i r2, __m512i r3,
                             __m512i r4, __m512i r5, __m512i r6, __m512i r7) {
  const __m512i t0 = _mm512_unpacklo_epi64(r0, r1), t1 = _mm512_unpackhi_epi64(r0, r1);
  const __m512i t2 = _mm512_unpacklo_epi64(r2, r3), t3 = _mm512_unpackhi_epi64(r2, r3);
  const __m512i t4 = _mm512_unpacklo_epi64(r4, r5), t5 = _mm512_unpackhi_epi64(r4, r5);
  const __m512i t6 = _mm512_unpacklo_epi64(r6, r7), t7 = _mm512_unpackhi_epi64(r6, r7);
  const __m512i x0 = _mm512_shuffle_i64x2(t0, t2, 0x88), x1 = _mm512_shuffle_i64x2(t0, t2, 0xDD);
  const __m512i y0 = _mm512_shuffle_i64x2(t4, t6, 0x88), y1 = _mm512_shuffle_i64x2(t4, t6, 0xDD);
  const __m512i x2 = _mm512_shuffle_i64x2(t1, t3, 0x88), x3 = _mm512_shuffle_i64x2(t1, t3, 0xDD);
  const __m512i y2 = _mm512_shuffle_i64x2(t5, t7, 0x88), y3 = _mm512_shuffle_i64x2(t5, t7, 0xDD);
  __m512i o[8];
  o[0] = _mm512_shuffle_i64x2(x0, y0, 0x88); o[4] = _mm512_shuffle_i64x2(x0, y0, 0xDD);
  o[2] = _mm512_shuffle_i64x2(x1, y1, 0x88); o[6] = _mm512_shuffle_i64x2(x1, y1, 0xDD);
  o[1] = _mm512_shuffle_i64x2(x2, y2, 0x88); o[5] = _mm512_shuffle_i64x2(x2, y2, 0xDD);
  o[3] = _mm512_shuffle_i64x2(x3, y3, 0x88); o[7] = _mm512_shuffle_i64x2(x3, y3, 0xDD);
  for (int ii = 0; ii < rows; ++ii) {
    int64_t* p = acc + ii * ldacc * 2;
    _mm512_storeu_si512(p, _mm512_add_epi64(_mm512_loadu_si512(p), o[ii]));
  }
}

// The 16 x 4 tile's products over the kc terms of ap, bp, shared by both tiles below: cLM_J{a,b}
// is the sum over t of A_L * B_M for column J, rows 0-7 (a) and 8-15 (b). 24 accumulators as
// named variables (as arrays GCC kept them on the stack) and 4 slice vectors of a leave 4 of the
// 32 registers for the broadcasts. ap[t*32 + l*16 + ii], bp[t*8 + m*4 + j].
#define EXACTFORGE_COL(J)                                                                      \
  b = _mm512_set1_pd(bt[J]);                                                                   \
  c00_##J##a = _mm512_fmadd_pd(a0a, b, c00_##J##a); c00_##J##b = _mm512_fmadd_pd(a0b, b, c00_##J##b); \
  c10_##J##a = _mm512_fmadd_pd(a1a, b, c10_##J##a); c10_##J##b = _mm512_fmadd_pd(a1b, b, c10_##J##b); \
  b = _mm512_set1_pd(bt[4 + J]);                                                               \
  c01_##J##a = _mm512_fmadd_pd(a0a, b, c01_##J##a); c01_##J##b = _mm512_fmadd_pd(a0b, b, c01_##J##b);
#define EXACTFORGE_S2_PRODUCTS(ap, bp, kc)                                                                                  \
  __m512d c00_0a = _mm512_setzero_pd(), c00_0b = c00_0a, c10_0a = c00_0a, c10_0b = c00_0a, c01_0a = c00_0a, c01_0b = c00_0a; \
  __m512d c00_1a = c00_0a, c00_1b = c00_0a, c10_1a = c00_0a, c10_1b = c00_0a, c01_1a = c00_0a, c01_1b = c00_0a;            \
  __m512d c00_2a = c00_0a, c00_2b = c00_0a, c10_2a = c00_0a, c10_2b = c00_0a, c01_2a = c00_0a, c01_2b = c00_0a;            \
  __m512d c00_3a = c00_0a, c00_3b = c00_0a, c10_3a = c00_0a, c10_3b = c00_0a, c01_3a = c00_0a, c01_3b = c00_0a;            \
  for (int64_t t = 0; t < (kc); ++t) {                                                                                     \
    const double* at = (ap) + t * 32;                                                                                      \
    const __m512d a0a = _mm512_loadu_pd(at), a0b = _mm512_loadu_pd(at + 8);                                               \
    const __m512d a1a = _mm512_loadu_pd(at + 16), a1b = _mm512_loadu_pd(at + 24);                                         \
    const double* bt = (bp) + t * 8;                                                                                       \
    __m512d b;                                                                                                             \
    EXACTFORGE_COL(0) EXACTFORGE_COL(1) EXACTFORGE_COL(2) EXACTFORGE_COL(3)                                                \
  }

void exact_tile_s2(const double* __restrict ap, const double* __restrict bp, int64_t kc, int64_t* acc,
                   int64_t ldacc, int mrem, int nrem) {
  EXACTFORGE_S2_PRODUCTS(ap, bp, kc)
  // Level sums of this run of terms as int64 (exact: integers below 2^53).
  if (nrem == 4) {
    // Transposed in registers to the accumulators' layout, row by row: row ii's 8 int64 are
    // (L0, L1) of columns 0..3, contiguous. The element-by-element adds were about 4% of a
    // 256-term tile, which the large products run once per sub-chunk.
    add_rows8(acc, ldacc, mrem < 8 ? mrem : 8,
              _mm512_cvtpd_epi64(c00_0a), _mm512_cvtpd_epi64(_mm512_add_pd(c10_0a, c01_0a)),
              _mm512_cvtpd_epi64(c00_1a), _mm512_cvtpd_epi64(_mm512_add_pd(c10_1a, c01_1a)),
              _mm512_cvtpd_epi64(c00_2a), _mm512_cvtpd_epi64(_mm512_add_pd(c10_2a, c01_2a)),
              _mm512_cvtpd_epi64(c00_3a), _mm512_cvtpd_epi64(_mm512_add_pd(c10_3a, c01_3a)));
    if (mrem > 8)
      add_rows8(acc + 8 * ldacc * 2, ldacc, mrem - 8,
                _mm512_cvtpd_epi64(c00_0b), _mm512_cvtpd_epi64(_mm512_add_pd(c10_0b, c01_0b)),
                _mm512_cvtpd_epi64(c00_1b), _mm512_cvtpd_epi64(_mm512_add_pd(c10_1b, c01_1b)),
                _mm512_cvtpd_epi64(c00_2b), _mm512_cvtpd_epi64(_mm512_add_pd(c10_2b, c01_2b)),
                _mm512_cvtpd_epi64(c00_3b), _mm512_cvtpd_epi64(_mm512_add_pd(c10_3b, c01_3b)));
    return;
  }
  alignas(64) int64_t l0[4][16], l1[4][16];  // [j][row]
#define EXACTFORGE_STORE(J)                                                                    \
  _mm512_store_si512(l0[J], _mm512_cvtpd_epi64(c00_##J##a));                                   \
  _mm512_store_si512(l0[J] + 8, _mm512_cvtpd_epi64(c00_##J##b));                               \
  _mm512_store_si512(l1[J], _mm512_cvtpd_epi64(_mm512_add_pd(c10_##J##a, c01_##J##a)));        \
  _mm512_store_si512(l1[J] + 8, _mm512_cvtpd_epi64(_mm512_add_pd(c10_##J##b, c01_##J##b)));
  EXACTFORGE_STORE(0) EXACTFORGE_STORE(1) EXACTFORGE_STORE(2) EXACTFORGE_STORE(3)
#undef EXACTFORGE_STORE
  for (int ii = 0; ii < mrem; ++ii)
    for (int j = 0; j < nrem; ++j) {
      int64_t* out = acc + (ii * ldacc + j) * 2;
      out[0] += l0[j][ii];
      out[1] += l1[j][ii];
    }
}

// split_pow2 on 8 lanes, in its order of operations (scale by f1 then f2, round_int by adding and
// subtracting 1.5 * 2^52, the remainder times 2^w rounded the same way), as explicit
// instructions: the compiler turned the plain loop with a masked tail into scalar code.
struct Slices8 { __m512d q0, q1; };
static inline Slices8 slice8(__m512d v, __m512d f1, __m512d f2, __m512d p2w) {
  const __m512d big = _mm512_set1_pd(1.7976931348623157e308), magic = _mm512_set1_pd(6755399441055744.0);
  const __mmask8 fin = _mm512_cmp_pd_mask(_mm512_abs_pd(v), big, _CMP_LE_OQ);  // false for Inf, NaN
  v = _mm512_maskz_mov_pd(fin, v);                                              // non-finite: zero slices
  const __m512d r = _mm512_mul_pd(_mm512_mul_pd(v, f1), f2);
  const __m512d q0 = _mm512_sub_pd(_mm512_add_pd(r, magic), magic);
  const __m512d r1 = _mm512_mul_pd(_mm512_sub_pd(r, q0), p2w);  // exact
  return {q0, _mm512_sub_pd(_mm512_add_pd(r1, magic), magic)};
}

// The 16 lanes of a t-major panel (x[t*16 + lane]), sliced 8 at a time.
static void split_panel16(const float* __restrict x, int valid, int64_t kc, const double* f1, const double* f2,
                          double p2w, double* __restrict out) {
  alignas(64) double F1[16], F2[16];
  for (int u = 0; u < 16; ++u) {
    F1[u] = u < valid ? f1[u] : 0.0;  // a zero factor slices a padding lane to zeros
    F2[u] = u < valid ? f2[u] : 0.0;
  }
  const __m512d f1a = _mm512_load_pd(F1), f1b = _mm512_load_pd(F1 + 8);
  const __m512d f2a = _mm512_load_pd(F2), f2b = _mm512_load_pd(F2 + 8), pw = _mm512_set1_pd(p2w);
  for (int64_t t = 0; t < kc; ++t) {
    const __m512 v = _mm512_loadu_ps(x + t * 16);
    const Slices8 lo = slice8(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), f1a, f2a, pw);
    const Slices8 hi = slice8(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))),
                              f1b, f2b, pw);
    double* o = out + t * 32;  // o[l*16 + lane]
    _mm512_storeu_pd(o, lo.q0); _mm512_storeu_pd(o + 8, hi.q0);
    _mm512_storeu_pd(o + 16, lo.q1); _mm512_storeu_pd(o + 24, hi.q1);
  }
}

// The 16 rows are first transposed into a t-major float panel by the fixed mode's packing (a copy,
// 8 x 8 blocks in registers), so that the slicing reads each t's 16 values as one vector: reading
// them straight from a's rows (16 strided loads per t) took as long as the tile itself where n is
// small (100 x 10 x 1000). Same values, same slicing, same slices.
void split_panel_f32_s2(const float* a, int64_t lda, int rows, int64_t kc, const double* f1, const double* f2,
                        double p2w, double* out, int MR) {
  (void)MR;
  constexpr int64_t kStep = 256;  // the driver's sub-chunk; longer runs go piece by piece
  alignas(64) float panel[kStep * kExactS2MR];
  for (int64_t t0 = 0; t0 < kc; t0 += kStep) {
    const int64_t n = kc - t0 < kStep ? kc - t0 : kStep;
    avx2::pack_a_f32(a + t0, lda, rows, n, panel);  // panel[t*16 + ii], rows from `rows` on zero
    split_panel16(panel, rows, n, f1, f2, p2w, out + t0 * 2 * kExactS2MR);
  }
}

void sum_max_cols_f32(const float* x, int64_t n, int64_t t0, int64_t t1, int64_t nc, double* mx, char* nf) {
  sum_max_cols_t<float>(x, n, t0, t1, nc, mx, nf);
}
void sum_slices_cols_f32(const float* x, int64_t n, int64_t t0, int64_t t1, int64_t nc, const double* f1,
                         const double* f2, double p2w, double* p0, double* p1) {
  sum_slices_cols_t<float>(x, n, t0, t1, nc, f1, f2, p2w, p0, p1);
}

// A row's largest finite magnitude, 16 lanes at a time (a max is order-free, so the value is the
// driver's), and whether the row holds an Inf or NaN.
double row_max_f32(const float* x, int64_t k, char* nonfinite) {
  const __m512 big = _mm512_set1_ps(3.40282347e+38f);
  __m512 m = _mm512_setzero_ps();
  __mmask16 bad = 0;
  for (int64_t t = 0; t < k; t += 16) {
    const __mmask16 live = static_cast<__mmask16>(k - t >= 16 ? 0xffffu : (1u << (k - t)) - 1);
    const __m512 v = _mm512_abs_ps(_mm512_maskz_loadu_ps(live, x + t));
    const __mmask16 fin = _mm512_cmp_ps_mask(v, big, _CMP_LE_OQ);  // false for Inf and NaN
    bad |= static_cast<__mmask16>(live & ~fin);
    m = _mm512_mask_max_ps(m, static_cast<__mmask16>(live & fin), m, v);
  }
  *nonfinite = bad != 0;
  return static_cast<double>(_mm512_reduce_max_ps(m));
}

// One chain of fused multiply-adds per output, as on every level: lane ii of accumulator j is
// output (ii, j), and the 16 lanes are the 16 rows of pack_a_f32's panel.
// The direct convolution on 16-lane vectors: two rows of 16 outputs for 6 channels per pass.
void conv_fixed_f32(const float* xp, const int64_t* toff, int64_t Wp, const float* w, int64_t CKK, int64_t Ho,
                    int64_t Wo, float* out, int ob, const float* bias) {
  conv_rows2_t<float, 16>(xp, toff, Wp, w, CKK, Ho, Wo, out, ob, bias);
}

void conv_dgrad_f32(const float* dyp, int64_t O, int64_t top, int64_t Ht, int64_t Wdp, const float* wt, int64_t kh,
                    int64_t kw, int64_t ph, int64_t pw, int64_t H, int64_t Wi, float* dx, int cb) {
  conv_dgrad_rows2_t<float, 16>(dyp, O, top, Ht, Wdp, wt, kh, kw, ph, pw, H, Wi, dx, cb);
}

void fixed_tile_f32(const float* ap, const float* bp, int64_t k, float* c, int64_t ldc, int mrem, int nrem,
                    int resume) {
  fixed_tile_t<float, 1, kFixedF32NR, 16>(ap, bp, k, c, ldc, mrem, nrem, resume);
}

// Up to kSplitColsTiles x NR = 16 columns of b (rows t apart by ldb) sliced as one 16-lane row
// per t, the slices then stored to the 4 column tiles' panels (tile u at out + u kc NR 2,
// bp[(t*2 + l)*NR + jj] within it, as avx2::split_cols_f32_s2 writes one). Only the tiles the
// columns reach are written; lanes past `cols` are zeros.
void split_cols_f32_s2(const float* b, int64_t ldb, int cols, int64_t kc, const double* f1, const double* f2,
                       double p2w, double* out, int NR) {
  (void)NR;
  constexpr int NRc = kExactS2NR;
  static_assert(kSplitColsTiles * kExactS2NR == 16, "one 16-lane row per t");
  alignas(64) double F1[16], F2[16];
  for (int u = 0; u < 16; ++u) {
    F1[u] = u < cols ? f1[u] : 0.0;
    F2[u] = u < cols ? f2[u] : 0.0;
  }
  const __m512d f1a = _mm512_load_pd(F1), f1b = _mm512_load_pd(F1 + 8);
  const __m512d f2a = _mm512_load_pd(F2), f2b = _mm512_load_pd(F2 + 8), pw = _mm512_set1_pd(p2w);
  const __mmask16 live = static_cast<__mmask16>(cols >= 16 ? 0xffffu : (1u << cols) - 1);
  const int tiles = (cols + NRc - 1) / NRc;
  const int64_t ts = kc * NRc * 2;  // one tile's panel
  for (int64_t t = 0; t < kc; ++t) {
    const __m512 v = _mm512_maskz_loadu_ps(live, b + t * ldb);  // lanes past cols: 0, never read
    const Slices8 lo = slice8(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), f1a, f2a, pw);
    const Slices8 hi = slice8(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))),
                              f1b, f2b, pw);
    double* o = out + t * 2 * NRc;
    // tile c holds columns 4c..4c+3: slice 0 at o[c ts + jj], slice 1 at o[c ts + 4 + jj]
    _mm256_storeu_pd(o, _mm512_castpd512_pd256(lo.q0));
    _mm256_storeu_pd(o + NRc, _mm512_castpd512_pd256(lo.q1));
    if (tiles > 1) {
      _mm256_storeu_pd(o + ts, _mm512_extractf64x4_pd(lo.q0, 1));
      _mm256_storeu_pd(o + ts + NRc, _mm512_extractf64x4_pd(lo.q1, 1));
    }
    if (tiles > 2) {
      _mm256_storeu_pd(o + 2 * ts, _mm512_castpd512_pd256(hi.q0));
      _mm256_storeu_pd(o + 2 * ts + NRc, _mm512_castpd512_pd256(hi.q1));
    }
    if (tiles > 3) {
      _mm256_storeu_pd(o + 3 * ts, _mm512_extractf64x4_pd(hi.q0, 1));
      _mm256_storeu_pd(o + 3 * ts + NRc, _mm512_extractf64x4_pd(hi.q1, 1));
    }
  }
}

// The recombination, 8 outputs at a time, in float64 arithmetic instead of 128-bit integers:
//  1. x = hi 2^w + lo is H + L with H = double(hi) 2^w and L = double(lo), both exact where
//     |hi|, |lo| < 2^53 (checked; otherwise the lane goes to the caller);
//  2. TwoSum gives s = fl(H + L) and the exact error e, so x = s + e;
//  3. s is moved to the odd neighbour in the direction of e when e != 0 and s is even: that is
//     x rounded to odd at 53 bits;
//  4. one multiplication by 2^(ea + fb - 3w) (exact: the result is a normal double wherever
//     the float is normal, which step 5 checks) and one conversion to float (to nearest).
// Rounding to odd at 53 bits and then to nearest at 24 <= 53 - 2 bits is rounding to nearest
// once (Boldo and Melquiond), the same argument as round_two_levels' at 63 bits. Zero, subnormal
// and infinite results go to the caller, like round_two_levels' cases that return false.
// tests/native/test_fixedpoint.cpp checks it against round_int192 on random and tie cases.
// The rounding of 8 outputs from their levels as doubles (exact integers): the float nearest to
// (hi 2^w + lo) 2^e2, and the lanes where that is certain (ok). Steps 1-5 above; hi and lo
// below 2^53 in magnitude (checked: a larger level is not exact as a double).
struct Rounded8 { __m256 f; __mmask8 ok; };
static inline Rounded8 round8(__m512d hi, __m512d lo, __m256i e2, __m512d p2w) {
  const __m512d lim = _mm512_set1_pd(9007199254740992.0);  // 2^53
  const __m512i one = _mm512_set1_epi64(1), sign = _mm512_set1_epi64(INT64_MIN);
  __mmask8 ok = _mm512_cmp_pd_mask(_mm512_abs_pd(hi), lim, _CMP_LT_OQ) &
                _mm512_cmp_pd_mask(_mm512_abs_pd(lo), lim, _CMP_LT_OQ);
  const __m512d H = _mm512_mul_pd(hi, p2w), L = lo;
  const __m512d s = _mm512_add_pd(H, L);
  const __m512d bb = _mm512_sub_pd(s, H);
  const __m512d e = _mm512_add_pd(_mm512_sub_pd(H, _mm512_sub_pd(s, bb)), _mm512_sub_pd(L, bb));
  const __m512i sb = _mm512_castpd_si512(s), eb = _mm512_castpd_si512(e);
  // e != 0 (any bit but the sign) and s's last bit even: move s one unit towards e
  const __mmask8 inexact = _mm512_test_epi64_mask(eb, _mm512_set1_epi64(INT64_MAX));
  const __mmask8 fix = inexact & static_cast<__mmask8>(~_mm512_test_epi64_mask(sb, one));
  const __mmask8 away = _mm512_cmpeq_epi64_mask(_mm512_and_si512(_mm512_xor_si512(sb, eb), sign), _mm512_setzero_si512());
  __m512i so = _mm512_mask_add_epi64(sb, fix & away, sb, one);
  so = _mm512_mask_sub_epi64(so, fix & static_cast<__mmask8>(~away), so, one);
  ok &= _mm512_cmp_pd_mask(s, _mm512_setzero_pd(), _CMP_NEQ_OQ);
  // 2^e2, built from its exponent field where that lies in the normal range
  ok &= _mm256_cmpgt_epi32_mask(e2, _mm256_set1_epi32(-1023)) & _mm256_cmplt_epi32_mask(e2, _mm256_set1_epi32(1024));
  const __m512i eb2 = _mm512_slli_epi64(_mm512_cvtepi32_epi64(_mm256_add_epi32(e2, _mm256_set1_epi32(1023))), 52);
  const __m512d r = _mm512_mul_pd(_mm512_castsi512_pd(so), _mm512_castsi512_pd(eb2));
  const __m256 f = _mm512_cvtpd_ps(r);
  const __m256 af = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), f);
  ok &= _mm256_cmp_ps_mask(af, _mm256_set1_ps(1.17549435e-38f), _CMP_GE_OQ) &
        _mm256_cmp_ps_mask(af, _mm256_set1_ps(3.40282347e+38f), _CMP_LE_OQ);
  return {f, ok};
}

// 2^w from its exponent field (0 <= w <= 62): a libm ldexp here cost more than the rounding when
// the driver rounds a tile's columns a few at a time.
static inline __m512d pow2_vec(int w) { return _mm512_castsi512_pd(_mm512_set1_epi64(int64_t(w + 1023) << 52)); }

void recombine_f32(const int64_t* lv, int64_t n, int ea, const int* fb, int w, const char* skip, float* out,
                   char* todo) {
  const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
  const __m512d p2w = pow2_vec(w);
  const __m256i e0 = _mm256_set1_epi32(ea - 3 * w);
  for (int64_t j = 0; j < n; j += 8) {
    const int rem = n - j < 8 ? static_cast<int>(n - j) : 8;  // the last group is masked
    const __mmask8 live = static_cast<__mmask8>((1u << rem) - 1);
    const __mmask16 live2 = static_cast<__mmask16>((1u << (2 * rem)) - 1);
    const __m512i v0 = _mm512_maskz_loadu_epi64(static_cast<__mmask8>(live2), lv + 2 * j);
    const __m512i v1 = _mm512_maskz_loadu_epi64(static_cast<__mmask8>(live2 >> 8), lv + 2 * j + 8);
    const __m512i hi = _mm512_permutex2var_epi64(v0, even, v1), lo = _mm512_permutex2var_epi64(v0, odd, v1);
    // int64 to double rounds only from 2^53 on, which round8 refuses
    const Rounded8 r = round8(_mm512_cvtepi64_pd(hi), _mm512_cvtepi64_pd(lo),
                              _mm256_add_epi32(e0, _mm256_maskz_loadu_epi32(live, fb + j)), p2w);
    __mmask8 ok = r.ok & live;
    for (int u = 0; u < rem; ++u)
      if (skip[j + u]) ok &= static_cast<__mmask8>(~(1u << u));
    _mm256_mask_storeu_ps(out + j, ok, r.f);
    for (int u = 0; u < rem; ++u) todo[j + u] = !((ok >> u) & 1);
  }
}

// The tile for a reduction of one sub-chunk (k <= 256), rounded in registers: the level sums
// c00 (L0) and c10 + c01 (L1) are exact integers below 2^53 as doubles, the values exact_tile_s2
// adds to zeroed int64 accumulators, so round8 on them gives the outputs the driver's rounding
// gives, without the int64 block, its zeroing, its transposed stores and its reloading (at
// k = 100 those cost as much as half the products). Lanes off round8's fast path, and rows or
// columns with a non-finite input (skip_rows, skip_cols), are left to the driver: their levels
// go to lv[(j*2 + L)*16 + ii] as int64 and bit j*16 + ii of *todo is set.
void exact_tile_s2_round(const double* __restrict ap, const double* __restrict bp, int64_t kc, int mrem, int nrem,
                         const int* ea, const int* fb, int w, const char* skip_rows, const char* skip_cols,
                         float* out, int64_t ldo, int64_t* lv, uint64_t* todo) {
  EXACTFORGE_S2_PRODUCTS(ap, bp, kc)
  __mmask16 rowskip = 0;
  for (int ii = 0; ii < 16; ++ii)
    if (ii >= mrem || skip_rows[ii]) rowskip |= static_cast<__mmask16>(1u << ii);
  const __m512d p2w = pow2_vec(w);
  const __m256i ea0 = _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ea)), _mm256_set1_epi32(3 * w));
  const __m256i ea1 = _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ea + 8)), _mm256_set1_epi32(3 * w));
  alignas(64) float fo[4][16];
  uint64_t bad = 0;
#define EXACTFORGE_ROUND(J)                                                                                 \
  if (J < nrem) {                                                                                           \
    const __m512d l1a = _mm512_add_pd(c10_##J##a, c01_##J##a), l1b = _mm512_add_pd(c10_##J##b, c01_##J##b); \
    const __m256i f = _mm256_set1_epi32(fb[J]);                                                              \
    const Rounded8 ra = round8(c00_##J##a, l1a, _mm256_add_epi32(ea0, f), p2w);                               \
    const Rounded8 rb = round8(c00_##J##b, l1b, _mm256_add_epi32(ea1, f), p2w);                               \
    _mm256_store_ps(fo[J], ra.f);                                                                            \
    _mm256_store_ps(fo[J] + 8, rb.f);                                                                        \
    uint16_t ok = static_cast<uint16_t>((ra.ok | (unsigned(rb.ok) << 8)) & ~unsigned(rowskip));              \
    if (skip_cols[J]) ok = 0;                                                                                \
    const uint16_t need = static_cast<uint16_t>(~unsigned(ok) & ((1u << mrem) - 1));                        \
    if (need) {                                                                                              \
      bad |= uint64_t(need) << (16 * J);                                                                     \
      _mm512_storeu_si512(lv + (J * 2) * 16, _mm512_cvtpd_epi64(c00_##J##a));                                \
      _mm512_storeu_si512(lv + (J * 2) * 16 + 8, _mm512_cvtpd_epi64(c00_##J##b));                            \
      _mm512_storeu_si512(lv + (J * 2 + 1) * 16, _mm512_cvtpd_epi64(l1a));                                   \
      _mm512_storeu_si512(lv + (J * 2 + 1) * 16 + 8, _mm512_cvtpd_epi64(l1b));                               \
    }                                                                                                        \
  }
  EXACTFORGE_ROUND(0) EXACTFORGE_ROUND(1) EXACTFORGE_ROUND(2) EXACTFORGE_ROUND(3)
#undef EXACTFORGE_ROUND
  // Every lane in range is stored, sure or not: the driver overwrites the lanes of *todo after
  // this returns, before anyone reads them, and a store without a branch per lane is cheaper.
  if (nrem == 4) {
    for (int ii = 0; ii < mrem; ++ii) {
      float* o = out + ii * ldo;
      o[0] = fo[0][ii]; o[1] = fo[1][ii]; o[2] = fo[2][ii]; o[3] = fo[3][ii];
    }
  } else {
    for (int ii = 0; ii < mrem; ++ii)
      for (int j = 0; j < nrem; ++j) out[ii * ldo + j] = fo[j][ii];
  }
  *todo = bad;
}

#undef EXACTFORGE_S2_PRODUCTS
#undef EXACTFORGE_COL

}  // namespace avx512
}  // namespace exactforge

#else
#error "kernels_avx512.cpp must be compiled with AVX-512 F/DQ/VL/BW (CMakeLists.txt)"
#endif
