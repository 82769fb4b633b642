// Linear systems over GF(2) on bit-packed rows.
//
// A Mersenne Twister is linear over GF(2): its state after any number of draws, and every bit
// it outputs, are XORs of the bits of an earlier state. Recovering a generator's state from bits
// of its outputs (what a Proof-of-Learning verifier does to replay the unlogged augmentation of a
// proof, from the normal draws of its initial weights) is one such system: about 20,000 unknowns
// and twice as many equations, too large for Python, a few seconds here.
#pragma once

#include <cstdint>
#include <vector>

namespace exactforge {

struct Gf2Result {
  int64_t rank = 0;          // pivots found
  int64_t inconsistent = 0;  // rows that reduced to 0 = 1 (the system has no solution if > 0)
  std::vector<int32_t> pivots;  // the pivot column of each of the first `rank` rows
};

// Solves A x = b in place by Gaussian elimination. `rows` holds R rows of W 64-bit words:
// bit c of row r (word c / 64, bit c % 64) is A[r][c] for c < ncols, and bit ncols is b[r]
// (so W >= ncols / 64 + 1). On return the first `rank` rows are a row echelon form and
// x (ncols bytes) holds the solution whose free variables (columns without a pivot) are 0.
// The result does not depend on the thread count: every row operation is an exact XOR.
Gf2Result gf2_solve(uint64_t* rows, int64_t R, int64_t W, int64_t ncols, uint8_t* x);

}  // namespace exactforge
