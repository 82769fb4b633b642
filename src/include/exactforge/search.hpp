// Exhaustive search for distinct mini-batches with an equal gradient (the papers' Table 4).
//
// Per-example gradients arrive as fixed-point integers (one global scale, chosen by the
// caller), so a batch gradient is an exact, order-free integer vector sum. Each example also
// carries a 64-bit key, a random linear form of its gradient modulo 2^64: the key of a batch
// is the sum of its examples' keys, equal gradients have equal keys, and a key match is
// confirmed on the full integer vectors.
#pragma once

#include <cstdint>
#include <vector>

namespace exactforge {
namespace search {

struct Match {
  int target;                   // which target gradient it equals
  std::vector<int32_t> batch;   // sorted example indices
};

/// The examples and the targets of one search.
///
/// Exact mode (key_tol = coord_tol = 0, shift = 0): keys are random linear forms mod 2^64 and a
/// match is an equal key confirmed by equal integer vectors.
///
/// Tolerance mode: the fixed-point gradients are roundings of exact values, each off by at most
/// 1/2, so batches with equal *real* gradients differ by at most coord_tol per coordinate
/// (coord_tol = b covers 2b roundings) and their keys, now true integer projections r.G with
/// |sum| < 2^62 (no wrap-around), by at most key_tol = |r|_1 * coord_tol. Keys are hashed by
/// bucket k >> shift with 2^shift > 2 key_tol, so a match lies in the bucket of want - key_tol
/// or of want + key_tol: two lookups, no false negative.
struct Problem {
  int64_t n = 0, p = 0;              // examples, gradient length
  const int64_t* grads = nullptr;    // n x p fixed-point per-example gradients
  const uint64_t* keys = nullptr;    // n keys
  int b = 0;                         // batch size (1..6)
  std::vector<std::vector<int64_t>> targets;  // each p long
  std::vector<uint64_t> target_keys;
  uint64_t key_tol = 0;              // |key(B') - key(B)| allowed
  int64_t coord_tol = 0;             // |sum(B')_j - sum(B)_j| allowed per coordinate
  int shift = 0;                     // log2 of the bucket width (tolerance mode)

  uint64_t bucket(uint64_t k) const {
    return shift ? static_cast<uint64_t>(static_cast<int64_t>(k) >> shift) : k;
  }
  bool keys_match(uint64_t k, uint64_t want) const {
    if (!key_tol) return k == want;
    const int64_t d = static_cast<int64_t>(k - want);
    return d >= -static_cast<int64_t>(key_tol) && d <= static_cast<int64_t>(key_tol);
  }
};

/// Brute force: every b-subset whose first (smallest) index lies in [a0, a1).
std::vector<Match> brute(const Problem& pr, int64_t a0, int64_t a1, int threads, uint64_t* visited);

/// Meet in the middle: a hash table of all floor(b/2)-subsets, probed by the ceil(b/2)-subsets.
/// A b-set {e1 < ... < eb} is found once, as probe (e1..e_h1) and table entry (e_h1+1..eb).
class Mitm {
 public:
  Mitm(const Problem& pr, uint64_t max_bytes);
  /// Probes the ceil(b/2)-subsets whose first index lies in [a0, a1).
  std::vector<Match> probe(int64_t a0, int64_t a1, int threads, uint64_t* visited) const;
  uint64_t table_bytes() const { return slots_ * sizeof(Entry) + bits_.size() * sizeof(uint64_t); }
  static uint64_t table_bytes_for(int64_t n, int b);

  /// One slot: the key and the h2 indices of the subset (s[0] == kEmpty marks a free slot),
  /// together so that a lookup touches one cache line.
  struct Entry {
    uint64_t key;
    uint32_t s[3];
  };
  static constexpr uint32_t kEmpty = UINT32_MAX;

 private:
  const Problem& pr_;
  int h1_, h2_;
  uint64_t slots_ = 0, mask_ = 0;
  std::vector<Entry> table_;
  // Almost every lookup misses: a bitmap of 16 bits per entry (small enough to stay in cache)
  // answers most of them without touching the table.
  std::vector<uint64_t> bits_;
  int bit_shift_ = 64;
  // Small tables: one filter over the values target_t - key for every target, so a probe tests
  // its own key once instead of once per target (only while that filter stays in cache).
  bool combined_ = false;
};

/// Number of k-subsets of n (saturating at UINT64_MAX).
uint64_t choose(int64_t n, int k);

}  // namespace search
}  // namespace exactforge
