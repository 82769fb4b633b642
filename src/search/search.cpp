#include "exactforge/search.hpp"
#include "exactforge/reduce.hpp"

#include <algorithm>
#include <atomic>
#include <new>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace exactforge {
namespace search {

uint64_t choose(int64_t n, int k) {
  if (k < 0 || k > n) return 0;
  unsigned __int128 r = 1;
  for (int i = 1; i <= k; ++i) {
    r = r * static_cast<unsigned __int128>(n - k + i) / i;
    if (r > UINT64_MAX) return UINT64_MAX;
  }
  return static_cast<uint64_t>(r);
}

namespace {

// Slot of a key: the keys are already uniformly mixed (random linear forms), but a final
// multiply-shift spreads sums of few keys too.
inline uint64_t mix(uint64_t k) { return (k * 0x9E3779B97F4A7C15ull) ^ (k >> 29); }

// Confirms a key match on the full integer vectors: sum of the examples == target.
bool equal_sum(const Problem& pr, const int32_t* idx, int m, int t) {
  const std::vector<int64_t>& T = pr.targets[t];
  for (int64_t j = 0; j < pr.p; ++j) {
    int64_t s = 0;  // |values| <= 2^60 / b by the caller's scale: no overflow
    for (int i = 0; i < m; ++i) s += pr.grads[idx[i] * pr.p + j];
    const int64_t d = s - T[j];
    if (d < -pr.coord_tol || d > pr.coord_tol) return false;
  }
  return true;
}

// Records a match from inside a parallel region; an allocation failure is flagged and
// rethrown after the region.
void keep(std::vector<Match>& local, std::atomic<bool>& oom, int t, const int32_t* idx, int m) {
  try {
    local.push_back({t, std::vector<int32_t>(idx, idx + m)});
  } catch (...) {
    oom = true;
  }
}

void sort_matches(std::vector<Match>& v) {
  std::sort(v.begin(), v.end(), [](const Match& x, const Match& y) {
    return x.target != y.target ? x.target < y.target : x.batch < y.batch;
  });
}

int nthreads(int t) {
#ifdef _OPENMP
  const int n = t > 0 ? t : omp_get_max_threads();
  return n < kMaxThreads ? n : kMaxThreads;  // see resolve_threads in reduce.cpp
#else
  (void)t;
  return 1;
#endif
}

}  // namespace

std::vector<Match> brute(const Problem& pr, int64_t a0, int64_t a1, int threads, uint64_t* visited) {
  const int b = pr.b;
  const int64_t n = pr.n;
  const int T = static_cast<int>(pr.targets.size());
  std::vector<Match> out;
  uint64_t count = 0;
  std::atomic<bool> oom{false};  // no exception may leave the parallel region: flagged, rethrown after
#pragma omp parallel num_threads(nthreads(threads)) reduction(+ : count)
  {
    std::vector<Match> local;
    int32_t idx[8];
    uint64_t ks[9];
#pragma omp for schedule(dynamic, 1)
    for (int64_t a = a0; a < a1; ++a) {
      // iterative enumeration of the (b-1)-subsets after a, keys summed incrementally
      idx[0] = static_cast<int32_t>(a);
      ks[1] = pr.keys[a];
      int depth = 1;
      if (b == 1) {
        ++count;
        for (int t = 0; t < T; ++t)
          if (pr.keys_match(ks[1], pr.target_keys[t]) && equal_sum(pr, idx, 1, t)) keep(local, oom, t, idx, 1);
        continue;
      }
      idx[1] = static_cast<int32_t>(a);
      while (depth >= 1) {
        idx[depth] += 1;
        if (idx[depth] > n - (b - depth)) { --depth; continue; }
        ks[depth + 1] = ks[depth] + pr.keys[idx[depth]];
        if (depth == b - 1) {
          ++count;
          const uint64_t k = ks[b];
          for (int t = 0; t < T; ++t)
            if (pr.keys_match(k, pr.target_keys[t]) && equal_sum(pr, idx, b, t)) keep(local, oom, t, idx, b);
        } else {
          idx[depth + 1] = idx[depth];
          ++depth;
        }
      }
    }
#pragma omp critical
    {
      try {
        out.insert(out.end(), local.begin(), local.end());
      } catch (...) {
        oom = true;
      }
    }
  }
  if (oom) throw std::bad_alloc();
  if (visited) *visited = count;
  sort_matches(out);
  return out;
}

namespace {
// Filter size (log2 of the number of bits): at least 32 bits per table entry, and at least two
// 64-bit words so that the word index shift (64 - (lg - 6)) stays below 64.
int bitmap_log2(uint64_t cnt) {
  int lg = 7;
  while ((uint64_t(1) << lg) < 32 * cnt) ++lg;
  return lg;
}
// Blocked Bloom filter: a second mix of the key picks one 64-bit word (top bits) and two bits
// in it (low bits), so a test is one memory access with ~0.4% false positives at 32 bits per
// entry (a false positive costs a table lookup, a likely cache miss).
inline uint64_t fmix(uint64_t k) { return (k ^ (k >> 31)) * 0xD6E8FEB86659FD93ull; }
inline uint64_t fword(uint64_t h, int shift) { return h >> shift; }
inline uint64_t fbits(uint64_t h) { return (uint64_t(1) << (h & 63)) | (uint64_t(1) << ((h >> 6) & 63)); }
}  // namespace

uint64_t Mitm::table_bytes_for(int64_t n, int b) {
  uint64_t cnt = choose(n, b / 2);
  uint64_t slots = 1;
  while (slots < 2 * cnt) slots <<= 1;
  return slots * sizeof(Entry) + (uint64_t(1) << bitmap_log2(cnt)) / 8;
}

Mitm::Mitm(const Problem& pr, uint64_t max_bytes) : pr_(pr), h1_(pr.b - pr.b / 2), h2_(pr.b / 2) {
  if (pr.b < 1 || pr.b > 6) throw std::invalid_argument("b must be 1..6");
  if (pr.n >= (int64_t(1) << 31)) throw std::invalid_argument("too many examples");
  const uint64_t need = table_bytes_for(pr.n, pr.b);
  if (need > max_bytes)
    throw std::length_error("the meet-in-the-middle table needs " + std::to_string(need >> 20) +
                            " MiB, above the memory bound of " + std::to_string(max_bytes >> 20) + " MiB");
  const uint64_t cnt = choose(pr.n, h2_);
  slots_ = 1;
  while (slots_ < 2 * cnt) slots_ <<= 1;
  mask_ = slots_ - 1;
  table_.assign(slots_, Entry{0, {kEmpty, kEmpty, kEmpty}});
  const uint64_t T = pr.target_keys.size();
  // In tolerance mode each entry marks the (at most two) buckets of its window [T - k - tol,
  // T - k + tol]; a matching probe key lies in that window, so its own bucket is marked.
  const uint64_t marks = pr.key_tol ? 2 : 1;
  combined_ = T > 1 && (uint64_t(1) << bitmap_log2(cnt * T * marks)) / 8 <= (256u << 10);
  const int lg = bitmap_log2(combined_ ? cnt * T * marks : cnt);
  bit_shift_ = 64 - (lg - 6);  // top bits select a word
  bits_.assign((uint64_t(1) << lg) / 64, 0);
  auto set_bits = [&](uint64_t v) {
    const uint64_t fh = fmix(v);
    bits_[fword(fh, bit_shift_)] |= fbits(fh);
  };
  auto insert = [&](uint64_t k, const uint32_t* s) {
    uint64_t h = mix(pr.bucket(k)) & mask_;
    while (table_[h].s[0] != kEmpty) h = (h + 1) & mask_;
    table_[h].key = k;
    for (int i = 0; i < 3; ++i) table_[h].s[i] = i < h2_ ? s[i] : kEmpty - 1;
    if (combined_) {
      for (uint64_t t = 0; t < T; ++t) {  // the probe keys that match
        const uint64_t w = pr.target_keys[t] - k;
        const uint64_t lo = pr.bucket(w - pr.key_tol), hi = pr.bucket(w + pr.key_tol);
        set_bits(lo);
        if (hi != lo) set_bits(hi);
      }
    } else {
      set_bits(pr.bucket(k));
    }
  };
  uint32_t s[3] = {0, 0, 0};
  if (h2_ == 0) {
    insert(0, s);  // the empty subset (b = 1)
  } else if (h2_ == 1) {
    for (uint32_t i = 0; i < pr.n; ++i) { s[0] = i; insert(pr.keys[i], s); }
  } else if (h2_ == 2) {
    for (uint32_t i = 0; i < pr.n; ++i)
      for (uint32_t j = i + 1; j < pr.n; ++j) { s[0] = i; s[1] = j; insert(pr.keys[i] + pr.keys[j], s); }
  } else {
    for (uint32_t i = 0; i < pr.n; ++i)
      for (uint32_t j = i + 1; j < pr.n; ++j)
        for (uint32_t l = j + 1; l < pr.n; ++l) {
          s[0] = i; s[1] = j; s[2] = l;
          insert(pr.keys[i] + pr.keys[j] + pr.keys[l], s);
        }
  }
}

std::vector<Match> Mitm::probe(int64_t a0, int64_t a1, int threads, uint64_t* visited) const {
  const int64_t n = pr_.n;
  const int T = static_cast<int>(pr_.target_keys.size());
  const int h1 = h1_, h2 = h2_;
  constexpr int kBuf = 64;  // probes resolved together, so their bitmap loads overlap
  std::vector<Match> out;
  uint64_t count = 0;
  // Everything a thread allocates is allocated here, outside the parallel region: an exception
  // may not leave an OpenMP region (std::terminate would end the interpreter).
  const int nt = nthreads(threads);
  std::vector<std::vector<uint64_t>> pos_all(nt, std::vector<uint64_t>(static_cast<size_t>(kBuf) * T * 2));
  std::atomic<bool> oom{false};
#pragma omp parallel num_threads(nt) reduction(+ : count)
  {
    std::vector<Match> local;
    uint64_t bkey[kBuf];
    int32_t bidx[kBuf][3];
    int nb = 0;
    int32_t idx[8];
#ifdef _OPENMP
    std::vector<uint64_t>& pos = pos_all[omp_get_thread_num() % nt];
#else
    std::vector<uint64_t>& pos = pos_all[0];
#endif

    // Full lookup of target t - k: every entry with that key whose smallest index follows the
    // probe's largest (so each b-set is found once), confirmed on the full vectors.
    auto walk = [&](uint64_t bucket, uint64_t want, const int32_t* pidx, int t) {
      uint64_t h = mix(bucket) & mask_;
      const int last = pidx[h1 - 1];
      while (table_[h].s[0] != kEmpty) {
        const Entry& e = table_[h];
        if (pr_.bucket(e.key) == bucket && pr_.keys_match(e.key, want) &&
            (h2 == 0 || static_cast<int64_t>(e.s[0]) > last)) {
          for (int i = 0; i < h1; ++i) idx[i] = pidx[i];
          for (int i = 0; i < h2; ++i) idx[h1 + i] = static_cast<int32_t>(e.s[i]);
          if (equal_sum(pr_, idx, h1 + h2, t)) keep(local, oom, t, idx, h1 + h2);
        }
        h = (h + 1) & mask_;
      }
    };
    // Every table entry within key_tol of want lies in the bucket of want - key_tol or of
    // want + key_tol (the bucket width exceeds 2 key_tol); in exact mode both are want.
    auto lookup = [&](uint64_t k, const int32_t* pidx, int t) {
      const uint64_t want = pr_.target_keys[t] - k;
      const uint64_t lo = pr_.bucket(want - pr_.key_tol), hi = pr_.bucket(want + pr_.key_tol);
      walk(lo, want, pidx, t);
      if (hi != lo) walk(hi, want, pidx, t);
    };
    auto maybe = [&](uint64_t want) {  // the filter: may a bucket of want's window hold an entry?
      const uint64_t lo = pr_.bucket(want - pr_.key_tol), hi = pr_.bucket(want + pr_.key_tol);
      const uint64_t f1 = fmix(lo), m1 = fbits(f1);
      if ((bits_[fword(f1, bit_shift_)] & m1) == m1) return true;
      if (hi == lo) return false;
      const uint64_t f2 = fmix(hi), m2 = fbits(f2);
      return (bits_[fword(f2, bit_shift_)] & m2) == m2;
    };
    auto flush = [&]() {
      if (pr_.key_tol) {  // the same batching: hash both buckets of each window, prefetch, then test
        for (int i = 0; i < nb; ++i)
          for (int t = 0; t < T; ++t) {
            const uint64_t want = pr_.target_keys[t] - bkey[i];
            const uint64_t lo = pr_.bucket(want - pr_.key_tol), hi = pr_.bucket(want + pr_.key_tol);
            const uint64_t f1 = fmix(lo), f2 = hi == lo ? f1 : fmix(hi);
            pos[2 * (i * T + t)] = f1;
            pos[2 * (i * T + t) + 1] = f2;
            __builtin_prefetch(&bits_[fword(f1, bit_shift_)]);
            if (f2 != f1) __builtin_prefetch(&bits_[fword(f2, bit_shift_)]);
          }
        for (int i = 0; i < nb; ++i)
          for (int t = 0; t < T; ++t) {
            const uint64_t f1 = pos[2 * (i * T + t)], f2 = pos[2 * (i * T + t) + 1];
            const uint64_t m1 = fbits(f1), m2 = fbits(f2);
            if ((bits_[fword(f1, bit_shift_)] & m1) == m1 || (f2 != f1 && (bits_[fword(f2, bit_shift_)] & m2) == m2))
              lookup(bkey[i], bidx[i], t);
          }
        count += nb;
        nb = 0;
        return;
      }
      for (int i = 0; i < nb; ++i)
        for (int t = 0; t < T; ++t) {
          const uint64_t fh = fmix(pr_.target_keys[t] - bkey[i]);
          pos[i * T + t] = fh;
          __builtin_prefetch(&bits_[fword(fh, bit_shift_)]);
        }
      for (int i = 0; i < nb; ++i)
        for (int t = 0; t < T; ++t) {
          const uint64_t fh = pos[i * T + t];
          const uint64_t m = fbits(fh);
          if ((bits_[fword(fh, bit_shift_)] & m) == m) lookup(bkey[i], bidx[i], t);
        }
      count += nb;
      nb = 0;
    };
    // A filter that fits in L2 is tested inline: the batching only pays for itself when the
    // filter's words miss the cache.
    const bool inline_filter = combined_ || bits_.size() * sizeof(uint64_t) <= (256u << 10);
    auto push = [&](uint64_t k, int32_t a, int32_t j, int32_t l) {
      if (inline_filter) {
        ++count;
        const int32_t p3[3] = {a, j, l};
        if (combined_) {
          const uint64_t fh = fmix(pr_.bucket(k));
          const uint64_t m = fbits(fh);
          if ((bits_[fword(fh, bit_shift_)] & m) == m)
            for (int t = 0; t < T; ++t) lookup(k, p3, t);
          return;
        }
        for (int t = 0; t < T; ++t)
          if (maybe(pr_.target_keys[t] - k)) lookup(k, p3, t);
        return;
      }
      bkey[nb] = k;
      bidx[nb][0] = a;
      bidx[nb][1] = j;
      bidx[nb][2] = l;
      if (++nb == kBuf) flush();
    };
#pragma omp for schedule(dynamic, 1)
    for (int64_t a = a0; a < a1; ++a) {
      const uint64_t ka = pr_.keys[a];
      const int32_t ia = static_cast<int32_t>(a);
      if (h1 == 1) {
        push(ka, ia, 0, 0);
      } else if (h1 == 2) {
        for (int64_t j = a + 1; j < n; ++j) push(ka + pr_.keys[j], ia, static_cast<int32_t>(j), 0);
      } else {
        for (int64_t j = a + 1; j < n; ++j) {
          const uint64_t kj = ka + pr_.keys[j];
          for (int64_t l = j + 1; l < n; ++l) push(kj + pr_.keys[l], ia, static_cast<int32_t>(j), static_cast<int32_t>(l));
        }
      }
    }
    flush();
#pragma omp critical
    {
      try {
        out.insert(out.end(), local.begin(), local.end());
      } catch (...) {
        oom = true;
      }
    }
  }
  if (oom) throw std::bad_alloc();
  if (visited) *visited = count;
  sort_matches(out);
  return out;
}

}  // namespace search
}  // namespace exactforge
