// Batched per-example products in one fixed order (python/exactforge/nn/functional.py: the
// Transformer's attention scores and attention-times-values).
//
// out[n][i][j] = (((a[n][i][0] b[n][0][j]) + a[n][i][1] b[n][1][j]) + ...), every product and every
// sum rounded to T: the bits of a loop of separate IEEE multiplies and adds, which is what torch
// gives for `acc = acc + a[:, :, k:k+1] * b[:, k:k+1, :]`. No sum crosses the leading axis n.
// Compiled without contraction (a fused multiply-add would round once where the loop rounds
// twice); vector lanes run the same operations as scalars, so the bits do not depend on the ISA.
#pragma once

#include <cstdint>

namespace exactforge {

template <class T>
void bmm_unfused(const T* a, const T* b, T* out, int64_t N, int64_t M, int64_t K, int64_t P, int threads);

/// out[r] = the sum of row r of the R x D array x in index order, from 0, NaN canonical: the bits of
/// the fixed-mode sum over axis 0 of x's transpose, without the transposed copy (the Transformer's
/// softmax and LayerNorm sum over the last axis).
template <class T>
void rowsum_fixed(const T* x, T* out, int64_t R, int64_t D, int threads);

/// Sums of groups of rows of x (N x D): group s is rows order[starts[s]] .. order[starts[s+1] - 1],
/// summed in that sequence by the fixed or the exact sum, as one such sum per group over those
/// rows gathered would; a group of one row is that row as it is (the embedding's gradient: one
/// group per token). order and starts are checked by the caller.
template <class T>
void segment_sums(const T* x, int64_t D, const int64_t* order, const int64_t* starts, int64_t S, bool fixed, T* out);

}  // namespace exactforge
