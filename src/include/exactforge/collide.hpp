// Every pair of distinct mini-batches of a cell with equal gradients (`exactforge search --all`).
//
// A cell has C(N, b) batches; at v = 3, b = 5 that is 6.8e9, too many to hold. Batches are
// therefore found in windows of their key: the keys of all batches are histogrammed once, the
// key axis is cut into windows of at most `max_bytes` worth of records, and each window's
// batches are enumerated with pruning (examples sorted by key, so at every depth the indices
// that can still reach the window form one contiguous range), sorted, and scanned for pairs
// within the key tolerance.
//
// Zero-influence examples (gradient exactly 0) are not enumerated: a batch is a set R of
// non-zero examples plus k of the z zero ones, and the C(z, k) batches with the same R are
// trivially equal to each other. The C++ side finds the pairs of distinct (R, k) and decides
// the ones it can decide exactly:
//   * same multiset of image classes and equal label-part sums: `exact` (the image parts
//     cancel term by term, the label parts are compared as integers modulo primes whose
//     product exceeds twice their bound, so residue equality is equality);
//   * same multiset of image classes, different label-part sums: certainly different;
//   * different image multisets: kept as a numerical candidate when the fixed-point sums agree
//     within coord_tol on every coordinate, for the caller's 200-bit check; else different.
#pragma once

#include <cstdint>
#include <vector>

namespace exactforge {
namespace collide {

struct Cell {
  int64_t n = 0, p = 0;              // non-zero examples, gradient length
  const int64_t* keys = nullptr;     // n integer projections of the gradients, ascending
  const int64_t* grads = nullptr;    // n x p fixed-point gradients
  const int32_t* image = nullptr;    // n image classes (equal class: equal image part)
  int nmod = 0;                      // primes for the label parts
  const uint64_t* label = nullptr;   // n x (p * nmod) label-part residues, each < its prime
  const uint64_t* moduli = nullptr;  // nmod primes below 2^61
  int b = 0;                         // batch size, 1..6
  int64_t zeros = 0;                 // z: zero-influence examples
  int64_t key_tol = 0;               // equal real gradients: keys within key_tol
  int64_t coord_tol = 0;             // ... and fixed-point sums within coord_tol per coordinate
  // Optional second projection (same order as keys): a key match is only a candidate if these
  // agree within key2_tol too. Small random integer projections of the label lattice vanish
  // often (label swaps whose key changes cancel); two independent ones rarely do.
  const int64_t* keys2 = nullptr;
  int64_t key2_tol = 0;
};

/// A batch class (R, k): k in the low 3 bits, then the b - k indices of R, `bits` bits each.
struct Pair {
  uint64_t a, b;
};

struct Found {
  int bits = 0;                          // bits per packed index
  uint64_t records = 0;                  // (R, k) enumerated: sum_k C(n, b - k)
  uint64_t windows = 0;
  uint64_t exact_pairs = 0;              // pairs of batches: C(z,k)^2 per pair of classes
  bool exact_pairs_saturated = false;
  std::vector<uint64_t> exact_members;   // sorted, unique packed classes with an exact partner
  std::vector<Pair> exact_examples;      // up to 10
  std::vector<Pair> numerical;           // candidates for the 200-bit check
  uint64_t false_candidates = 0;         // within the key tolerance, certainly different
  double seconds[4] = {0, 0, 0, 0};      // histogram, enumeration of the windows, sorting, pairs
};

/// Bits per packed index for n non-zero examples, or -1 if b indices and k do not fit 64 bits.
int pack_bits(int64_t n, int b);

/// All pairs of the cell. `max_bytes` bounds the window buffers (at least 1 MiB);
/// `max_numerical` bounds the candidates handed back (std::length_error beyond).
Found find_all(const Cell& cell, uint64_t max_bytes, uint64_t max_numerical, int threads);

}  // namespace collide
}  // namespace exactforge
