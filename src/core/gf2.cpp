#include "exactforge/gf2.hpp"

#include <algorithm>
#include <stdexcept>

namespace exactforge {

Gf2Result gf2_solve(uint64_t* rows, int64_t R, int64_t W, int64_t ncols, uint8_t* x) {
  if (R < 0 || W < 1 || ncols < 0 || ncols / 64 + 1 > W) throw std::invalid_argument("gf2_solve: bad shape");
  Gf2Result res;
  std::fill(x, x + ncols, uint8_t(0));
  int64_t rank = 0;
  // forward elimination only (rows below the pivot): a back substitution over the pivot rows
  // costs far less than clearing the columns above every pivot, the usual case here being four
  // times more equations than unknowns
  for (int64_t c = 0; c < ncols && rank < R; ++c) {
    const int64_t w = c / 64;
    const uint64_t bit = uint64_t(1) << (c % 64);
    int64_t p = rank;
    while (p < R && !(rows[p * W + w] & bit)) ++p;
    if (p == R) continue;
    if (p != rank) std::swap_ranges(rows + p * W, rows + (p + 1) * W, rows + rank * W);
    const uint64_t* piv = rows + rank * W;
    // words below w are zero in every row from rank on (their columns were eliminated), so
    // each XOR starts at w
#pragma omp parallel for schedule(static) if ((R - rank) * (W - w) > (int64_t(1) << 18))
    for (int64_t r = rank + 1; r < R; ++r) {
      uint64_t* row = rows + r * W;
      if (!(row[w] & bit)) continue;
      for (int64_t k = w; k < W; ++k) row[k] ^= piv[k];
    }
    res.pivots.push_back(int32_t(c));
    ++rank;
  }
  const int64_t bw = ncols / 64;
  const uint64_t bb = uint64_t(1) << (ncols % 64);
  // rows past the rank are zero on the unknowns: a right-hand side of 1 there is a contradiction
  for (int64_t r = rank; r < R; ++r)
    if (rows[r * W + bw] & bb) ++res.inconsistent;
  // back substitution, free variables 0: x[pivot i] = rhs_i + sum of row i's later unknowns
  std::vector<uint64_t> xb(size_t(W), 0);
  for (int64_t i = rank - 1; i >= 0; --i) {
    const uint64_t* row = rows + i * W;
    const int64_t c = res.pivots[size_t(i)];
    uint64_t acc = 0;
    for (int64_t k = c / 64; k < W; ++k) acc ^= row[k] & xb[size_t(k)];
    const int v = (__builtin_popcountll(acc) & 1) ^ ((row[bw] & bb) ? 1 : 0);
    if (v) {
      x[c] = 1;
      xb[size_t(c / 64)] |= uint64_t(1) << (c % 64);
    }
  }
  res.rank = rank;
  return res;
}

}  // namespace exactforge
