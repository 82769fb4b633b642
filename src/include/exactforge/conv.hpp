// im2col / col2im for the reproducible convolution (python/exactforge/nn/functional.py).
//
// Layout: the column matrix is (C*kh*kw) x (B*Ho*Wo), row c_col = (c*kh + ki)*kw + kj, column
// b*Ho*Wo + oh*Wo + ow. One product with it covers the whole batch, and no transposed copy is
// needed before or after (F.unfold's B x CKK x L layout needed two).
//
// im2col only copies (exact). col2im sums the overlapping contributions to each input pixel
// in exactly torch's col2im order (per example: c_col, then oh, then ow), so the input
// gradient has the bits F.fold gives, and it depends on nothing but the example itself:
// examples run in parallel, each alone.
#pragma once
#include <cstdint>

namespace exactforge {

struct ConvGeometry {
  int64_t B, C, H, W;       // input
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t Ho() const { return (H + 2 * ph - dh * (kh - 1) - 1) / sh + 1; }
  int64_t Wo() const { return (W + 2 * pw - dw * (kw - 1) - 1) / sw + 1; }
  // Throws std::invalid_argument naming the problem (non-positive sizes, empty output,
  // more than 2^40 column entries).
  void check() const;
};

template <class T>
void im2col(const T* x, T* cols, const ConvGeometry& g, int threads);
/// The convolution of x (B x C x H x W) with w (O x C x kh x kw) in the fixed order of the im2col
/// product (each output's fused multiply-add chain over C*kh*kw ascending, padded positions
/// included as zeros), without materialising im2col: out is B x O x Ho x Wo. Stride and
/// dilation 1 only (std::invalid_argument otherwise). bias (nullptr or O values): added to each
/// rounded output, one more rounding, as a separate addition of a finite bias.
template <class T>
void conv2d_fixed(const T* x, const T* w, T* out, const ConvGeometry& g, int64_t O, int threads,
                  const T* bias = nullptr);
/// The input gradient of conv2d_fixed (dy: B x O x Ho x Wo, dx: B x C x H x W) with the bits of
/// the product it replaces: the fixed-order W^T dY (each column's chain over the O output
/// channels ascending) followed by col2im (each pixel's terms in torch's order), without
/// materialising either. Stride and dilation 1, finite weights (std::invalid_argument otherwise:
/// an infinite weight meeting a position col2im skips would give NaN here).
template <class T>
void conv2d_input_grad_fixed(const T* dy, const T* w, T* dx, const ConvGeometry& g, int64_t O, int threads);
/// The weight gradient in the exact mode, im2col(x) @ dyt (CKK x O; dyt is (B*Ho*Wo) x O, row
/// b*Ho*Wo + oh*Wo + ow), with the bits of matmul_exact over the materialised im2col, which it
/// only materialises where x has a non-finite value: otherwise each panel of it is gathered from
/// x as the product slices it, and its row maxima are read from x.
template <class T>
void conv2d_weight_grad_exact(const T* x, const T* dyt, T* out, const ConvGeometry& g, int64_t O, int threads);
/// The same product in the fixed order (each output's chain over t = b L + oh Wo + ow ascending):
/// the bits of matmul_fixed(im2col(x), dyt), im2col gathered a panel at a time.
template <class T>
void conv2d_weight_grad_fixed(const T* x, const T* dyt, T* out, const ConvGeometry& g, int64_t O, int threads);
template <class T>
void col2im(const T* cols, T* x, const ConvGeometry& g, int threads);

}  // namespace exactforge
