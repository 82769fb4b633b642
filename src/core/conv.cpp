#include "exactforge/conv.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "exactforge/reduce.hpp"
#include "kernels/kernels.hpp"
#include "core/aligned.hpp"
#include "core/threads.hpp"
#include <vector>

namespace exactforge {

void ConvGeometry::check() const {
  if (B < 1 || C < 1 || H < 1 || W < 1) throw std::invalid_argument("conv: input sizes must be positive");
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1 || ph < 0 || pw < 0)
    throw std::invalid_argument("conv: kernel, stride and dilation must be positive, padding >= 0");
  if (kh > (int64_t(1) << 20) || kw > (int64_t(1) << 20) || ph > (int64_t(1) << 20) || pw > (int64_t(1) << 20) ||
      dh > (int64_t(1) << 20) || dw > (int64_t(1) << 20) || sh > (int64_t(1) << 20) || sw > (int64_t(1) << 20))
    throw std::invalid_argument("conv: kernel, stride, padding or dilation above 2^20");
  if (H + 2 * ph < dh * (kh - 1) + 1 || W + 2 * pw < dw * (kw - 1) + 1)
    throw std::invalid_argument("conv: the kernel does not fit the padded input");
  const double entries = double(C) * kh * kw * double(B) * Ho() * Wo();
  if (entries > double(int64_t(1) << 40) || double(B) * C * H * W > double(int64_t(1) << 40))
    throw std::invalid_argument("conv: more than 2^40 entries");
}

namespace {
int nthreads(int threads) {
  int nt = threads > 0 ? threads : get_num_threads();
  return std::max(1, std::min(nt, kMaxThreads));
}
}  // namespace

// planes of H x W values copied into planes of (top + H + bottom) x (left + W + right), zeros
// around, and `slack` zeros past the last plane: each element written once (no zero fill
// first), the planes split between threads. On ResNet-20's first stage the single-threaded
// fill and copy took a fifth of the convolution's time.
template <class T>
uvector<T> zero_padded(const T* x, int64_t planes, int64_t H, int64_t W, int64_t top, int64_t bottom, int64_t left,
                       int64_t right, int64_t slack, int nt) {
  const int64_t Wp = left + W + right, plane = (top + H + bottom) * Wp;
  uvector<T> out(static_cast<size_t>(planes * plane + slack));
  T* o = out.data();
  (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && planes > 1 && planes * plane >= (1 << 16))
  for (int64_t p = 0; p < planes; ++p) {
    T* q = o + p * plane;
    std::fill(q, q + top * Wp, T(0));
    q += top * Wp;
    for (int64_t r = 0; r < H; ++r, q += Wp) {
      std::fill(q, q + left, T(0));
      std::copy(x + (p * H + r) * W, x + (p * H + r + 1) * W, q + left);
      std::fill(q + left + W, q + Wp, T(0));
    }
    std::fill(q, q + bottom * Wp, T(0));
  }
  std::fill(o + planes * plane, o + planes * plane + slack, T(0));
  return out;
}

template <class T>
void im2col(const T* x, T* cols, const ConvGeometry& g, int threads) {
  const int64_t Ho = g.Ho(), Wo = g.Wo(), L = Ho * Wo, N = g.B * L, CKK = g.C * g.kh * g.kw;
  const int nt = nthreads(threads);
  (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && CKK * N >= (1 << 18))
  for (int64_t r = 0; r < CKK; ++r) {
    const int64_t kj = r % g.kw, ki = (r / g.kw) % g.kh, c = r / (g.kh * g.kw);
    for (int64_t b = 0; b < g.B; ++b) {
      const T* xc = x + (b * g.C + c) * g.H * g.W;
      T* o = cols + r * N + b * L;
      for (int64_t oh = 0; oh < Ho; ++oh) {
        const int64_t h = oh * g.sh - g.ph + ki * g.dh;
        T* orow = o + oh * Wo;
        if (h < 0 || h >= g.H) {
          std::fill(orow, orow + Wo, T(0));
          continue;
        }
        const T* xrow = xc + h * g.W;
        for (int64_t ow = 0; ow < Wo; ++ow) {
          const int64_t w = ow * g.sw - g.pw + kj * g.dw;
          orow[ow] = (w >= 0 && w < g.W) ? xrow[w] : T(0);
        }
      }
    }
  }
}

template <class T>
void col2im(const T* cols, T* x, const ConvGeometry& g, int threads) {
  const int64_t Ho = g.Ho(), Wo = g.Wo(), L = Ho * Wo, N = g.B * L, CKK = g.C * g.kh * g.kw;
  const int nt = nthreads(threads);
  (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && CKK * N >= (1 << 18))
  for (int64_t b = 0; b < g.B; ++b) {
    T* xb = x + b * g.C * g.H * g.W;
    std::fill(xb, xb + g.C * g.H * g.W, T(0));
    for (int64_t r = 0; r < CKK; ++r) {  // torch's order: c_col, then oh, then ow
      const int64_t kj = r % g.kw, ki = (r / g.kw) % g.kh, c = r / (g.kh * g.kw);
      const T* src = cols + r * N + b * L;
      T* xc = xb + c * g.H * g.W;
      for (int64_t oh = 0; oh < Ho; ++oh) {
        const int64_t h = oh * g.sh - g.ph + ki * g.dh;
        if (h < 0 || h >= g.H) continue;
        T* xrow = xc + h * g.W;
        const T* srow = src + oh * Wo;
        for (int64_t ow = 0; ow < Wo; ++ow) {
          const int64_t w = ow * g.sw - g.pw + kj * g.dw;
          if (w >= 0 && w < g.W) xrow[w] += srow[ow];
        }
      }
    }
  }
}

template <class T>
void conv2d_fixed(const T* x, const T* w, T* out, const ConvGeometry& g, int64_t O, int threads, const T* bias) {
  if (g.sh != 1 || g.sw != 1 || g.dh != 1 || g.dw != 1)
    throw std::invalid_argument("conv: the direct convolution takes stride 1 and dilation 1");
  if (O < 1) throw std::invalid_argument("conv: at least one output channel");
  const KernelTable& kt = kernels();
  ConvF32 f32 = kt.conv_f32;
  ConvF64 f64 = kt.conv_f64;
  const int64_t Ho = g.Ho(), Wo = g.Wo(), Hp = g.H + 2 * g.ph, CKK = g.C * g.kh * g.kw;
  const int64_t Wp = g.W + 2 * g.pw;
  const int nt = nthreads(threads);
  // The input zero-padded once, and the weights in blocks of OB channels (zeros past O). A
  // vector's lanes past a row's end read the next row (those outputs are never stored); the
  // slack past the end covers the last row's lanes and the row below a last odd output row,
  // which a two-row pass reads and does not store.
  constexpr int OB = kConvOB;
  constexpr int64_t kSlack = 16;
  const uvector<T> xp = zero_padded(x, g.B * g.C, g.H, g.W, g.ph, g.ph, g.pw, g.pw, 2 * Wp + kSlack, nt);
  const int64_t nob = (O + OB - 1) / OB;
  avector<T> wp(static_cast<size_t>(nob * OB * CKK), T(0));
  std::copy(w, w + O * CKK, wp.data());
  // each term t = (c, i, j)'s offset in one example's padded input
  std::vector<int64_t> toff(static_cast<size_t>(CKK));
  for (int64_t t = 0; t < CKK; ++t) {
    const int64_t c = t / (g.kh * g.kw), i = (t / g.kw) % g.kh, j = t % g.kw;
    toff[static_cast<size_t>(t)] = (c * Hp + i) * Wp + j;
  }
  const int64_t units = g.B * nob;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && units > 1 && g.B * O * Ho * Wo * CKK >= (1 << 18))
  for (int64_t u = 0; u < units; ++u) {
    const int64_t b = u / nob, o0 = (u % nob) * OB;
    const int ob = static_cast<int>(std::min<int64_t>(OB, O - o0));
    T* dst = out + (b * O + o0) * Ho * Wo;
    const T* src = xp.data() + b * g.C * Hp * Wp;
    if constexpr (std::is_same<T, float>::value)
      f32(src, toff.data(), Wp, wp.data() + o0 * CKK, CKK, Ho, Wo, dst, ob, bias ? bias + o0 : nullptr);
    else
      f64(src, toff.data(), Wp, wp.data() + o0 * CKK, CKK, Ho, Wo, dst, ob, bias ? bias + o0 : nullptr);
  }
}

template <class T>
void conv2d_input_grad_fixed(const T* dy, const T* w, T* dx, const ConvGeometry& g, int64_t O, int threads) {
  if (g.sh != 1 || g.sw != 1 || g.dh != 1 || g.dw != 1)
    throw std::invalid_argument("conv: the direct input gradient takes stride 1 and dilation 1");
  if (O < 1) throw std::invalid_argument("conv: at least one output channel");
  const int64_t KK = g.kh * g.kw, CKK = g.C * KK;
  for (int64_t e = 0; e < O * CKK; ++e)
    if (!(std::fabs(static_cast<double>(w[e])) <= 1.7976931348623157e308))
      throw std::invalid_argument("conv: the direct input gradient needs finite weights");
  const KernelTable& kt = kernels();
  constexpr int CB = kConvCB;
  const int64_t Ho = g.Ho(), Wo = g.Wo();
  constexpr int64_t kSlack = 16;
  const int64_t PL = g.kw - 1, Wdp = PL + std::max(Wo, g.W + g.pw) + 1;
  // zero rows above and below, so that every row a two-row pass reads (y + ph - i for y up to H,
  // the partner of a last odd row) lies in the buffer
  const int64_t top = std::max<int64_t>(0, g.kh - 1 - g.ph), bottom = std::max<int64_t>(0, g.H + g.ph + 1 - Ho);
  const int64_t Ht = top + Ho + bottom;
  const int nt = nthreads(threads);
  // dy with zero columns around each row, so that every lane that is stored reads zeros off
  // the output (lanes past the input's width read the next row, and the slack past the end:
  // never stored), and the weights as channel blocks of CB x kh x kw x O (the chain runs over
  // o: contiguous), zeros past C.
  const uvector<T> dyp = zero_padded(dy, g.B * O, Ho, Wo, top, bottom, PL, Wdp - PL - Wo, Wdp + kSlack, nt);
  const int64_t ncb = (g.C + CB - 1) / CB;
  avector<T> wt(static_cast<size_t>(ncb * CB * KK * O), T(0));
  for (int64_t o = 0; o < O; ++o)
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t t = 0; t < KK; ++t) wt[(c * KK + t) * O + o] = w[(o * g.C + c) * KK + t];
  const int64_t units = g.B * ncb;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && units > 1 && g.B * O * Ho * Wo * CKK >= (1 << 18))
  for (int64_t u = 0; u < units; ++u) {
    const int64_t b = u / ncb, c0 = (u % ncb) * CB;
    const int cb = static_cast<int>(std::min<int64_t>(CB, g.C - c0));
    T* dst = dx + (b * g.C + c0) * g.H * g.W;
    const T* src = dyp.data() + b * O * Ht * Wdp;
    if constexpr (std::is_same<T, float>::value)
      kt.conv_dgrad_f32(src, O, top, Ht, Wdp, wt.data() + c0 * KK * O, g.kh, g.kw, g.ph, g.pw, g.H, g.W, dst, cb);
    else
      kt.conv_dgrad_f64(src, O, top, Ht, Wdp, wt.data() + c0 * KK * O, g.kh, g.kw, g.ph, g.pw, g.H, g.W, dst, cb);
  }
}

template void conv2d_input_grad_fixed<float>(const float*, const float*, float*, const ConvGeometry&, int64_t, int);
template void conv2d_input_grad_fixed<double>(const double*, const double*, double*, const ConvGeometry&, int64_t,
                                              int);
namespace {
// max |v| over v[0..n-1] for finite float32/float64 values, as the magnitudes' bit patterns
// compared as unsigned integers (the same order for finite values: an integer max the compiler
// vectorises, where a float max with its NaN rules would stay scalar).
template <class T> struct MagBits;
template <> struct MagBits<float> { using U = uint32_t; static constexpr U mask = 0x7fffffffu, exp = 0x7f800000u; };
template <> struct MagBits<double> {
  using U = uint64_t;
  static constexpr U mask = 0x7fffffffffffffffull, exp = 0x7ff0000000000000ull;
};
template <class T> typename MagBits<T>::U max_mag_bits(const T* v, int64_t n) {
  using U = typename MagBits<T>::U;
  U m = 0;
  for (int64_t i = 0; i < n; ++i) {
    U u;
    std::memcpy(&u, v + i, sizeof(U));
    u &= MagBits<T>::mask;
    m = u > m ? u : m;
  }
  return m;
}
// One run of an im2col row: o[q] = xrow[(ow0 + q) sw + off] where that column is inside the
// image (0 <= . < W), else 0, for q < seg.
template <class T>
inline void gather_run(const T* xrow, T* o, int64_t seg, int64_t ow0, int64_t off, int64_t sw, int64_t W) {
  if (sw == 1) {  // zeros, a copy of the row's part inside the image, zeros
    const int64_t q0 = std::min(seg, std::max<int64_t>(0, -off - ow0));
    const int64_t q1 = std::max(q0, std::min(seg, W - off - ow0));
    const T* src = xrow + ow0 + off;
    for (int64_t q = 0; q < q0; ++q) o[q] = T(0);
    for (int64_t q = q0; q < q1; ++q) o[q] = src[q];
    for (int64_t q = q1; q < seg; ++q) o[q] = T(0);
    return;
  }
  for (int64_t q = 0; q < seg; ++q) {
    const int64_t w = (ow0 + q) * sw + off;
    o[q] = (w >= 0 && w < W) ? xrow[w] : T(0);
  }
}
template <class T> bool all_finite(const T* v, int64_t n) {
  using U = typename MagBits<T>::U;
  U bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    U u;
    std::memcpy(&u, v + i, sizeof(U));
    bad |= static_cast<U>((u & MagBits<T>::exp) == MagBits<T>::exp);
  }
  return bad == 0;
}
}  // namespace

// A panel of im2col rows over terms t0 .. t0+kc-1 (t = b L + oh Wo + ow): runs of one output
// row at a time, each a copy of part of an input row between zeros, im2col's values. The runs
// are found once per panel and shared by its rows (on LeNet's second layer, 8-term runs, the
// division per run and row cost more than the copies).
template <class T>
std::function<void(int64_t, int, int64_t, int64_t, T*)> im2col_gather(const T* x, const ConvGeometry& g) {
  const int64_t Wo = g.Wo(), L = g.Ho() * Wo;
  return [x, g, Wo, L](int64_t row0, int nrows, int64_t t0, int64_t kc, T* dst) {
    // per row of the panel: its channel's plane offset, input-row shift and input-column shift
    constexpr int kMaxRows = 64;
    int64_t plane[kMaxRows], dh[kMaxRows], off[kMaxRows];
    for (int base = 0; base < nrows; base += kMaxRows) {
      const int nr = std::min(kMaxRows, nrows - base);
      for (int ii = 0; ii < nr; ++ii) {
        const int64_t r = row0 + base + ii, kj = r % g.kw, ki = (r / g.kw) % g.kh, c = r / (g.kh * g.kw);
        plane[ii] = c * g.H * g.W;
        dh[ii] = ki * g.dh - g.ph;
        off[ii] = kj * g.dw - g.pw;
      }
      int64_t t = t0;
      while (t < t0 + kc) {
        const int64_t b = t / L, rem = t - b * L, oh = rem / Wo, ow0 = rem - oh * Wo;
        const int64_t seg = std::min(t0 + kc - t, Wo - ow0), at = t - t0;
        const T* xb = x + b * g.C * g.H * g.W;
        for (int ii = 0; ii < nr; ++ii) {
          T* o = dst + (base + ii) * kc + at;
          const int64_t h = oh * g.sh + dh[ii];
          if (h < 0 || h >= g.H) {
            for (int64_t q = 0; q < seg; ++q) o[q] = T(0);
            continue;
          }
          gather_run(xb + plane[ii] + h * g.W, o, seg, ow0, off[ii], g.sw, g.W);
        }
        t += seg;
      }
    }
  };
}

template <class T>
void conv2d_weight_grad_exact(const T* x, const T* dyt, T* out, const ConvGeometry& g, int64_t O, int threads) {
  if (O < 1) throw std::invalid_argument("conv: at least one output channel");
  const int64_t Ho = g.Ho(), Wo = g.Wo(), L = Ho * Wo, N = g.B * L, KK = g.kh * g.kw, CKK = g.C * KK;
  const int nt = nthreads(threads);
  if (!all_finite(x, g.B * g.C * g.H * g.W)) {
    // its rows need special_dot's element-by-element pass over the materialised im2col
    std::vector<T> cols(static_cast<size_t>(CKK * N));
    im2col(x, cols.data(), g, threads);
    matmul_exact<T>(cols.data(), dyt, out, CKK, N, O, nt);
    return;
  }
  // Each im2col row's maximum, read from x: row (c, ki, kj) holds x[b, c, h, w] at the positions
  // its window reaches (and padding zeros, which cannot raise a maximum of magnitudes).
  using U = typename MagBits<T>::U;
  std::vector<U> mbits(static_cast<size_t>(CKK), 0);
  // the output columns whose input column is inside the image, lo[kj] <= ow < hi[kj], and the
  // input column of output column 0, off[kj]
  std::vector<int64_t> lo(g.kw), hi(g.kw), off(g.kw);
  for (int64_t kj = 0; kj < g.kw; ++kj) {
    off[kj] = kj * g.dw - g.pw;
    lo[kj] = 0, hi[kj] = Wo;
    while (lo[kj] < hi[kj] && lo[kj] * g.sw + off[kj] < 0) ++lo[kj];
    while (hi[kj] > lo[kj] && (hi[kj] - 1) * g.sw + off[kj] >= g.W) --hi[kj];
  }
  (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && g.C > 1 && CKK * N >= (1 << 18))
  for (int64_t c = 0; c < g.C; ++c) {
    // per input row h, each kj's window maximum: on stride 1 the windows are one input row's
    // column ranges that differ only at the edges, so their common part is read once
    std::vector<U> wmax(static_cast<size_t>(g.kw * g.H));
    U* mc = mbits.data() + c * KK;
    for (int64_t b = 0; b < g.B; ++b) {
      const T* xc = x + (b * g.C + c) * g.H * g.W;
      for (int64_t h = 0; h < g.H; ++h) {
        const T* xrow = xc + h * g.W;
        if (g.sw == 1) {
          int64_t s0 = 0, e0 = g.W;
          for (int64_t kj = 0; kj < g.kw; ++kj)
            if (lo[kj] < hi[kj]) s0 = std::max(s0, lo[kj] + off[kj]), e0 = std::min(e0, hi[kj] + off[kj]);
          const U core = s0 < e0 ? max_mag_bits(xrow + s0, e0 - s0) : 0;
          for (int64_t kj = 0; kj < g.kw; ++kj) {
            U m = 0;
            const int64_t s1 = lo[kj] + off[kj], e1 = hi[kj] + off[kj];
            if (lo[kj] < hi[kj]) {
              if (s0 < e0 && s0 >= s1 && e0 <= e1) {
                m = core;
                const U l = max_mag_bits(xrow + s1, s0 - s1), r = max_mag_bits(xrow + e0, e1 - e0);
                m = l > m ? l : m;
                m = r > m ? r : m;
              } else {
                m = max_mag_bits(xrow + s1, e1 - s1);
              }
            }
            wmax[static_cast<size_t>(kj * g.H + h)] = m;
          }
        } else {
          for (int64_t kj = 0; kj < g.kw; ++kj) {
            U m = 0;
            for (int64_t ow = lo[kj]; ow < hi[kj]; ++ow) {
              const U r = max_mag_bits(xrow + ow * g.sw + off[kj], 1);
              m = r > m ? r : m;
            }
            wmax[static_cast<size_t>(kj * g.H + h)] = m;
          }
        }
      }
      for (int64_t ki = 0; ki < g.kh; ++ki)
        for (int64_t oh = 0; oh < Ho; ++oh) {
          const int64_t h = oh * g.sh - g.ph + ki * g.dh;
          if (h < 0 || h >= g.H) continue;
          for (int64_t kj = 0; kj < g.kw; ++kj) {
            const U v = wmax[static_cast<size_t>(kj * g.H + h)];
            U& m = mc[ki * g.kw + kj];
            m = v > m ? v : m;
          }
        }
    }
  }
  ImplicitRows<T> rows;
  rows.row_max.resize(static_cast<size_t>(CKK));
  for (int64_t r = 0; r < CKK; ++r) {
    T v;
    std::memcpy(&v, &mbits[static_cast<size_t>(r)], sizeof(T));
    rows.row_max[static_cast<size_t>(r)] = static_cast<double>(v);
  }
  rows.gather = im2col_gather(x, g);
  matmul_exact_implicit<T>(rows, dyt, out, CKK, N, O, nt);
}

template <class T>
void conv2d_weight_grad_fixed(const T* x, const T* dyt, T* out, const ConvGeometry& g, int64_t O, int threads) {
  if (O < 1) throw std::invalid_argument("conv: at least one output channel");
  const int64_t Ho = g.Ho(), Wo = g.Wo(), L = Ho * Wo, N = g.B * L, KK = g.kh * g.kw, CKK = g.C * KK;
  // im2col(x) @ dyt in the fixed order, each im2col value read from the zero-padded input where
  // the tile needs it (conv_wgrad_tile_t): the bits of the product over the materialised im2col
  // (the same values in the same chains), without its kh x kw copies of x. Gathering and packing
  // im2col's panels for the product's tile cost as much as its arithmetic on ResNet-20.
  const KernelTable& kt = kernels();
  constexpr int R = kConvWgradR;
  constexpr int OG = kConvWgradO<T>;
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw, plane = Hp * Wp;
  const int nt = nthreads(threads);
  const uvector<T> xp = zero_padded(x, g.B * g.C, g.H, g.W, g.ph, g.ph, g.pw, g.pw, 0, nt);
  // dy's rows padded to whole vectors of channels, so that no lane reads past the buffer
  const int64_t nog = (O + OG - 1) / OG, Op = nog * OG;
  uvector<T> dpad;
  if (Op != O) dpad = zero_padded(dyt, 1, N, O, 0, 0, 0, Op - O, 0, nt);
  const T* dy = Op != O ? dpad.data() : dyt;
  // each im2col row's offset in xp; rows past CKK repeat the last one (read, never stored)
  const int64_t nrg = (CKK + R - 1) / R;
  std::vector<int64_t> roff(static_cast<size_t>(nrg * R));
  for (int64_t r = 0; r < nrg * R; ++r) {
    const int64_t rr = std::min(r, CKK - 1), c = rr / KK, ki = (rr / g.kw) % g.kh, kj = rr % g.kw;
    roff[static_cast<size_t>(r)] = c * plane + ki * g.dh * Wp + kj * g.dw;
  }
  // blocks of the terms, each tile resuming its chains from the partials it stored, so that
  // a block of dy and x stays in cache for every tile
  constexpr int64_t KT = 1024;
  const int64_t tiles = nrg * nog;
  std::vector<int64_t> toff_all(static_cast<size_t>(nt * KT));
  (void)nt;
#pragma omp parallel num_threads(nt) if (nt > 1 && tiles > 1 && CKK * N * O >= (1 << 18))
  {
    int64_t* toff = toff_all.data() + detail::thread_index() * KT;
    for (int64_t t0 = 0; t0 < N; t0 += KT) {
      const int64_t kc = std::min(KT, N - t0);
      int64_t b = t0 / L, rem = t0 - b * L, oh = rem / Wo, ow = rem - oh * Wo;
      for (int64_t t = 0; t < kc; ++t) {
        toff[t] = b * g.C * plane + oh * g.sh * Wp + ow * g.sw;
        if (++ow == Wo) {
          ow = 0;
          if (++oh == Ho) oh = 0, ++b;
        }
      }
      // a static schedule over the same tiles gives each thread the same tiles in every block
      // (OpenMP's guarantee), so a tile's blocks run in order on one thread without a barrier
#pragma omp for schedule(static) nowait
      for (int64_t q = 0; q < tiles; ++q) {
        const int64_t rg = q / nog, og = q % nog;
        const int rrem = static_cast<int>(std::min<int64_t>(R, CKK - rg * R));
        const int orem = static_cast<int>(std::min<int64_t>(OG, O - og * OG));
        T* dst = out + rg * R * O + og * OG;
        const T* d = dy + t0 * Op + og * OG;
        if constexpr (std::is_same<T, float>::value)
          kt.conv_wgrad_f32(xp.data(), roff.data() + rg * R, toff, kc, d, Op, dst, O, rrem, orem, t0 > 0);
        else
          kt.conv_wgrad_f64(xp.data(), roff.data() + rg * R, toff, kc, d, Op, dst, O, rrem, orem, t0 > 0);
      }
    }
  }
}

template void conv2d_weight_grad_fixed<float>(const float*, const float*, float*, const ConvGeometry&, int64_t, int);
template void conv2d_weight_grad_fixed<double>(const double*, const double*, double*, const ConvGeometry&, int64_t,
                                               int);
template void conv2d_weight_grad_exact<float>(const float*, const float*, float*, const ConvGeometry&, int64_t, int);
template void conv2d_weight_grad_exact<double>(const double*, const double*, double*, const ConvGeometry&, int64_t,
                                               int);
template void conv2d_fixed<float>(const float*, const float*, float*, const ConvGeometry&, int64_t, int, const float*);
template void conv2d_fixed<double>(const double*, const double*, double*, const ConvGeometry&, int64_t, int,
                                   const double*);
template void im2col<float>(const float*, float*, const ConvGeometry&, int);
template void im2col<double>(const double*, double*, const ConvGeometry&, int);
template void col2im<float>(const float*, float*, const ConvGeometry&, int);
template void col2im<double>(const double*, double*, const ConvGeometry&, int);

}  // namespace exactforge
