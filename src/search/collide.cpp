#include "exactforge/collide.hpp"
#include "exactforge/reduce.hpp"
#include "exactforge/search.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <limits>
#if defined(__has_include)
#if __has_include(<sys/mman.h>)
#include <sys/mman.h>
#endif
#endif
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace exactforge {
namespace collide {

namespace {

struct Rec {
  int64_t key;
  uint64_t id;
};

// key - base as an unsigned offset (keys of a window lie at or above its base)
inline uint64_t above(int64_t key, int64_t base) { return static_cast<uint64_t>(key) - static_cast<uint64_t>(base); }

constexpr uint64_t kCoarse = 4096;  // coarse buckets per window: few enough write streams for the TLB

// One buffer for every window, grown on demand and asked for huge pages: on this kind of
// machine first touches of fresh 4 KiB pages cost more than the enumeration itself.
template <class V>
class Buffer {
 public:
  ~Buffer() { std::free(p_); }
  V* data() { return p_; }
  uint64_t size() const { return n_; }
  void grow(uint64_t n) {
    std::free(p_);
    p_ = nullptr;
    n_ = 0;
    const size_t align = size_t(2) << 20;
    const size_t bytes = ((n * sizeof(V) + align - 1) / align) * align;
    p_ = static_cast<V*>(std::aligned_alloc(align, bytes));
    if (!p_) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    madvise(p_, bytes, MADV_HUGEPAGE);
#endif
    n_ = n;
  }

 private:
  V* p_ = nullptr;
  uint64_t n_ = 0;
};

// LSD radix sort of r[0, n) by ((key - Lo) >> t) & (2^bits - 1), at most 13 bits a pass (stable).
void radix_sort(Rec* r, uint64_t n, int64_t Lo, int t, int bits, std::vector<Rec>& tmp) {
  if (tmp.size() < n) tmp.resize(n);
  Rec* src = r;
  Rec* dst = tmp.data();
  const int passes = (bits + 12) / 13, step = passes ? (bits + passes - 1) / passes : 0;
  for (int lo = 0; lo < bits; lo += step) {
    const int w = std::min(step, bits - lo);
    const uint64_t mask = (uint64_t(1) << w) - 1;
    std::vector<uint64_t> cnt((uint64_t(1) << w) + 1, 0);
    auto digit = [&](const Rec& x) {
      return ((above(x.key, Lo) >> t) >> lo) & mask;
    };
    for (uint64_t i = 0; i < n; ++i) ++cnt[digit(src[i]) + 1];
    for (uint64_t d = 0; d < mask + 1; ++d) cnt[d + 1] += cnt[d];
    for (uint64_t i = 0; i < n; ++i) dst[cnt[digit(src[i])]++] = src[i];
    std::swap(src, dst);
  }
  if (src != r) std::copy(src, src + n, r);
}

int nthreads(int t) {
#ifdef _OPENMP
  const int n = t > 0 ? t : omp_get_max_threads();
  return n < kMaxThreads ? n : kMaxThreads;
#else
  (void)t;
  return 1;
#endif
}

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Enumerates the m-subsets of the key-sorted examples whose key sum lies in [A, Z]. Keys are
// ascending, so for the next index i the reachable sums are [s + (K[i] + ... + K[i+m-1]),
// s + K[i] + (the m-1 largest keys)], both ends nondecreasing in i: the indices that can still
// reach the window are one contiguous range, found by binary search. Work is therefore about
// the number of subsets in the window plus the prefixes on its edges, not C(n, m).
class Enumerator {
 public:
  Enumerator(const int64_t* K, int64_t n) : K_(K), n_(n), ps_(n + 1, 0) {
    for (int64_t i = 0; i < n; ++i) ps_[i + 1] = ps_[i] + K[i];
    // The last two indices come from sorted lists of pairs: for each start a, every pair
    // (j1 < j2) with j1 >= a, by key sum. Then a prefix costs two binary searches and its pairs
    // in the window are one run, instead of a binary search per next-to-last index.
    // list[a] = merge(list[a + 1], the pairs (a, j2), already sorted since K is).
    const uint64_t entries = search::choose(n + 1, 3);
    if (n >= 2 && n < 65536 && entries <= kMaxPairEntries) {
      pair_start_.assign(n + 2, 0);  // list[n] is empty (and pair_start_[n + 1] guards reads)
      for (int64_t a = 0; a <= n; ++a) pair_start_[a + 1] = pair_start_[a] + search::choose(n - a, 2);
      pairs_.resize(entries);
      std::vector<PairKey> head;
      for (int64_t a = n - 2; a >= 0; --a) {
        head.clear();
        for (int64_t j = a + 1; j < n; ++j)
          head.push_back({K[a] + K[j], static_cast<uint32_t>(a) | (static_cast<uint32_t>(j) << 16)});
        std::merge(pairs_.begin() + pair_start_[a + 1], pairs_.begin() + pair_start_[a + 2], head.begin(), head.end(),
                   pairs_.begin() + pair_start_[a], [](const PairKey& x, const PairKey& y) { return x.key < y.key; });
      }
    }
  }
  // Range of the next index in [start, n - m] for m indices still to choose, sum s so far.
  void range(int64_t start, int m, int64_t s, int64_t A, int64_t Z, int64_t* lo, int64_t* hi) const {
    const int64_t last = n_ - m;  // inclusive
    if (start > last) { *lo = 1; *hi = 0; return; }
    // first i with s + K[i] + tail(m - 1) >= A, tail = the m - 1 largest keys
    const int64_t tail = ps_[n_] - ps_[n_ - m + 1];
    const int64_t need = A - s - tail;
    *lo = std::lower_bound(K_ + start, K_ + last + 1, need) - K_;
    // last i with s + K[i] + ... + K[i + m - 1] <= Z: binary search on window sums
    int64_t a = start, b = last + 1;  // answer in [start - 1, last]
    while (a < b) {
      const int64_t mid = a + (b - a) / 2;
      if (s + ps_[mid + m] - ps_[mid] <= Z) a = mid + 1; else b = mid;
    }
    *hi = a - 1;
  }
  // f(key, id): id is the packed class, built a field per depth (see pack below).
  template <class F>
  void rec(int64_t start, int m, int depth, int64_t s, uint64_t id, int bits, int64_t A, int64_t Z, F& f) const {
    const int sh = 3 + bits * depth;
    if (m == 2 && !pairs_.empty()) {
      const PairKey* b = pairs_.data() + pair_start_[start];
      const PairKey* e = pairs_.data() + pair_start_[start + 1];
      auto less = [](const PairKey& x, int64_t v) { return x.key < v; };
      auto more = [](int64_t v, const PairKey& x) { return v < x.key; };
      const PairKey* p0 = std::lower_bound(b, e, A - s, less);
      const PairKey* p1 = std::upper_bound(p0, e, Z - s, more);
      for (const PairKey* p = p0; p < p1; ++p)
        f(s + p->key, id | (static_cast<uint64_t>(p->j & 0xFFFF) << sh) |
                          (static_cast<uint64_t>(p->j >> 16) << (sh + bits)));
      return;
    }
    if (m == 1) {
      const int64_t* b0 = std::lower_bound(K_ + start, K_ + n_, A - s);
      const int64_t* b1 = std::upper_bound(b0, K_ + n_, Z - s);
      for (const int64_t* p = b0; p < b1; ++p) f(s + *p, id | (static_cast<uint64_t>(p - K_) << sh));
      return;
    }
    int64_t lo, hi;
    range(start, m, s, A, Z, &lo, &hi);
    for (int64_t i = lo; i <= hi; ++i)
      rec(i + 1, m - 1, depth + 1, s + K_[i], id | (static_cast<uint64_t>(i) << sh), bits, A, Z, f);
  }

 private:
  struct PairKey {
    int64_t key;
    uint32_t j;  // j1 | j2 << 16
  };
  static constexpr uint64_t kMaxPairEntries = uint64_t(1) << 25;  // 512 MiB of lists at most
  const int64_t* K_;
  int64_t n_;
  std::vector<int64_t> ps_;
  std::vector<uint64_t> pair_start_;
  std::vector<PairKey> pairs_;
};

// A class (R, k) as 64 bits: k in the low 3 bits, then the indices of R, `bits` bits each.
inline int unpack(uint64_t id, int b, int bits, int32_t* idx) {
  const int k = static_cast<int>(id & 7);
  const uint64_t mask = (uint64_t(1) << bits) - 1;
  for (int i = 0; i < b - k; ++i) idx[i] = static_cast<int32_t>((id >> (3 + bits * i)) & mask);
  return k;
}

// Every (R, k) of the cell with key in [A, Z], to fs[thread](key, id), in parallel over the
// first index with a static schedule: the same call gives each thread the same classes.
template <class F>
void for_each_class(const Cell& c, const Enumerator& en, int bits, int64_t A, int64_t Z, int threads,
                    std::vector<F>& fs) {
  const int kmax = static_cast<int>(std::min<int64_t>(c.b, c.zeros));
  for (int k = 0; k <= kmax; ++k) {
    const int m = c.b - k;
    if (m > c.n) continue;
    if (m == 0) {
      if (A <= 0 && 0 <= Z) fs[0](0, static_cast<uint64_t>(k));
      continue;
    }
    int64_t lo, hi;
    en.range(0, m, 0, A, Z, &lo, &hi);
#pragma omp parallel num_threads(nthreads(threads))
    {
      F& f = fs[thread_id()];
#pragma omp for schedule(static, 1)
      for (int64_t i = lo; i <= hi; ++i) {
        const uint64_t id = static_cast<uint64_t>(k) | (static_cast<uint64_t>(i) << 3);
        if (m == 1) {
          const int64_t key = c.keys[i];
          if (key >= A && key <= Z) f(key, id);
        } else {
          en.rec(i + 1, m - 1, 1, c.keys[i], id, bits, A, Z, f);
        }
      }
    }
  }
}

uint64_t sat_add(uint64_t a, uint64_t b, bool* sat) {
  if (a > UINT64_MAX - b) { *sat = true; return UINT64_MAX; }
  return a + b;
}

// Keeps the 10 smallest pairs seen: deterministic whatever the thread count.
void keep_smallest(std::vector<Pair>& v, Pair p) {
  auto less = [](const Pair& x, const Pair& y) { return x.a != y.a ? x.a < y.a : x.b < y.b; };
  if (v.size() < 10) {
    v.push_back(p);
    std::sort(v.begin(), v.end(), less);
  } else if (less(p, v.back())) {
    v.back() = p;
    std::sort(v.begin(), v.end(), less);
  }
}

struct Local {
  uint64_t exact_pairs = 0, false_candidates = 0;
  bool sat = false, too_many = false;
  std::vector<uint64_t> members;
  size_t sorted = 0;  // members[0, sorted) is sorted and unique
  std::vector<Pair> examples, numerical;
};


// One pair of classes within the key tolerance: decided exactly where the image classes agree,
// else kept for the 200-bit check if the fixed-point sums agree (see collide.hpp).
void decide(const Cell& c, uint64_t A, uint64_t B, int bits, uint64_t max_numerical, Local& L) {
  int32_t ia[8], ib[8], ga[8], gb[8];
  const int ka = unpack(A, c.b, bits, ia), kb = unpack(B, c.b, bits, ib);
  const int ma = c.b - ka, mb = c.b - kb;
  if (c.keys2) {  // a second, independent projection: cheap, and most key matches fail it
    int64_t s2 = 0;
    for (int t = 0; t < ma; ++t) s2 += c.keys2[ia[t]];
    for (int t = 0; t < mb; ++t) s2 -= c.keys2[ib[t]];
    if (s2 > c.key2_tol || s2 < -c.key2_tol) { ++L.false_candidates; return; }
  }
  bool same_images = ka == kb;
  if (same_images) {
    for (int t = 0; t < ma; ++t) { ga[t] = c.image[ia[t]]; gb[t] = c.image[ib[t]]; }
    std::sort(ga, ga + ma);
    std::sort(gb, gb + mb);
    same_images = std::equal(ga, ga + ma, gb);
  }
  const Pair pr{std::min(A, B), std::max(A, B)};
  if (same_images) {
    // The image parts cancel: equal gradients iff equal label-part sums.
    const int64_t stride = c.p * c.nmod;
    for (int q = 0; q < c.nmod; ++q) {
      const uint64_t mod = c.moduli[q];
      for (int64_t col = 0; col < c.p; ++col) {
        uint64_t sa = 0, sb = 0;  // at most 6 residues below 2^61: no overflow
        const int64_t off = q * c.p + col;
        for (int t = 0; t < ma; ++t) sa += c.label[ia[t] * stride + off];
        for (int t = 0; t < mb; ++t) sb += c.label[ib[t] * stride + off];
        if (sa % mod != sb % mod) { ++L.false_candidates; return; }
      }
    }
    const uint64_t w = search::choose(c.zeros, ka);
    const unsigned __int128 ww = static_cast<unsigned __int128>(w) * w;
    L.exact_pairs = sat_add(L.exact_pairs, ww > UINT64_MAX ? UINT64_MAX : static_cast<uint64_t>(ww), &L.sat);
    L.members.push_back(A);
    L.members.push_back(B);
    keep_smallest(L.examples, pr);
    return;
  }
  for (int64_t col = 0; col < c.p; ++col) {
    int64_t sa = 0, sb = 0;
    for (int t = 0; t < ma; ++t) sa += c.grads[ia[t] * c.p + col];
    for (int t = 0; t < mb; ++t) sb += c.grads[ib[t] * c.p + col];
    if (sa - sb > c.coord_tol || sb - sa > c.coord_tol) { ++L.false_candidates; return; }
  }
  if (L.numerical.size() >= max_numerical) { L.too_many = true; return; }
  L.numerical.push_back(pr);
}
}  // namespace

int pack_bits(int64_t n, int b) {
  int bits = 1;
  while ((int64_t(1) << bits) < n) ++bits;
  return 3 + bits * b <= 64 ? bits : -1;
}

Found find_all(const Cell& c, uint64_t max_bytes, uint64_t max_numerical, int threads) {
  if (c.b < 1 || c.b > 6) throw std::invalid_argument("b must be 1..6");
  if (c.n < 0 || c.p < 0 || c.zeros < 0 || c.key_tol < 0 || c.coord_tol < 0 || c.nmod < 0)
    throw std::invalid_argument("negative size or tolerance");
  if (max_bytes < (uint64_t(1) << 20)) throw std::invalid_argument("max_bytes: at least 1 MiB");
  for (int64_t i = 1; i < c.n; ++i)
    if (c.keys[i] < c.keys[i - 1]) throw std::invalid_argument("keys must be ascending");
  Found out;
  out.bits = pack_bits(c.n, c.b);
  if (out.bits < 0) throw std::invalid_argument("too many examples to pack a batch in 64 bits");
  const int T = nthreads(threads);
  const int bits = out.bits;
  const Enumerator en(c.keys, c.n);
  using clock = std::chrono::steady_clock;
  auto since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };
  auto t0 = clock::now();

  // The key range of every (R, k): between the sums of the m smallest and the m largest keys.
  int64_t lo = 0, hi = 0;
  {
    int64_t s_lo = 0, s_hi = 0;
    const int kmax = static_cast<int>(std::min<int64_t>(c.b, c.zeros));
    for (int m = 1; m <= std::min<int64_t>(c.b, c.n); ++m) {
      s_lo += c.keys[m - 1];
      s_hi += c.keys[c.n - m];
      if (c.b - m <= kmax) { lo = std::min(lo, s_lo); hi = std::max(hi, s_hi); }
    }
  }
  // Histogram of all keys over 2^16 bins: the windows are runs of bins of bounded total.
  const int kBinsLog = 16;
  int shift = 0;
  while ((above(hi, lo) >> shift) >= (uint64_t(1) << kBinsLog)) ++shift;
  const uint64_t nbins = (above(hi, lo) >> shift) + 1;
  std::vector<std::vector<uint64_t>> hists(T, std::vector<uint64_t>(nbins, 0));
  {
    struct H {
      std::vector<uint64_t>* h;
      int64_t lo;
      int shift;
      void operator()(int64_t key, uint64_t) {
        ++(*h)[above(key, lo) >> shift];
      }
    };
    std::vector<H> fs;
    for (int t = 0; t < T; ++t) fs.push_back(H{&hists[t], lo, shift});
    for_each_class(c, en, bits, lo, hi, T, fs);
  }
  std::vector<uint64_t> hist(nbins, 0);
  for (auto& h : hists)
    for (uint64_t i = 0; i < nbins; ++i) hist[i] += h[i];
  hists.clear();
  for (uint64_t v : hist) out.records += v;
  out.seconds[0] = since(t0);

  // A window of r records: 8 bytes each in the buffer, 32 per record of a coarse bucket in each
  // thread's radix buffers, the margin of key_tol above the window: 20 bytes a record is ample.
  // (The members with an exact partner are kept apart from this bound: 8 bytes each.)
  const uint64_t cap = max_bytes / 20;
  std::vector<Local> locals(T);
  Buffer<uint64_t> ids_buf;  // the window's classes: written scattered, so only 8 bytes each
  uint64_t b0 = 0;
  while (b0 < nbins) {
    uint64_t b1 = b0, cnt = 0;
    while (b1 < nbins && (cnt + hist[b1] <= cap || b1 == b0)) cnt += hist[b1++];
    if (cnt > cap)
      throw std::length_error("one key bin holds " + std::to_string(cnt) + " batches, above the memory bound; raise it");
    if (cnt == 0) { b0 = b1; continue; }
    ++out.windows;
    t0 = clock::now();
    const int64_t Lo = static_cast<int64_t>(static_cast<uint64_t>(lo) + (b0 << shift));
    // Hi (exclusive) may pass the top of the range; the last window is closed by `hi`.
    const int64_t Hi = b1 >= nbins ? hi : static_cast<int64_t>(static_cast<uint64_t>(lo) + (b1 << shift)) - 1;
    const int64_t Z = Hi > std::numeric_limits<int64_t>::max() - c.key_tol ? std::numeric_limits<int64_t>::max()
                                                                              : Hi + c.key_tol;
    // The window [Lo, Hi + key_tol] (a pair belongs to the window of its smaller key) is
    // counted per coarse bucket and thread, then enumerated again straight into place: the
    // same static schedule gives each thread the same records both times. Nothing is
    // allocated per window: first touches of fresh pages are what costs here.
    const uint64_t span = above(Z, Lo);
    int cs = 0;
    while ((span >> cs) >= kCoarse) ++cs;
    std::vector<std::vector<uint64_t>> cnts(T, std::vector<uint64_t>(kCoarse + 1, 0));
    {
      struct Cnt {
        uint64_t* c;
        int64_t Lo;
        int cs;
        void operator()(int64_t key, uint64_t) {
          ++c[above(key, Lo) >> cs];
        }
      };
      std::vector<Cnt> fs;
      for (int t = 0; t < T; ++t) fs.push_back(Cnt{cnts[t].data(), Lo, cs});
      for_each_class(c, en, bits, Lo, Z, T, fs);
    }
    std::vector<uint64_t> start(kCoarse + 1, 0);
    std::vector<std::vector<uint64_t>> pos(T, std::vector<uint64_t>(kCoarse, 0));
    {
      uint64_t at = 0;
      for (uint64_t q = 0; q < kCoarse; ++q) {
        start[q] = at;
        for (int t = 0; t < T; ++t) { pos[t][q] = at; at += cnts[t][q]; }
      }
      start[kCoarse] = at;
    }
    const uint64_t total = start[kCoarse];
    if (total > ids_buf.size()) ids_buf.grow(total);
    uint64_t* ids = ids_buf.data();
    {
      struct Put {
        uint64_t* r;
        uint64_t* pos;
        int64_t Lo;
        int cs;
        void operator()(int64_t key, uint64_t id) {
          r[pos[above(key, Lo) >> cs]++] = id;
        }
      };
      std::vector<Put> fs;
      for (int t = 0; t < T; ++t) fs.push_back(Put{ids, pos[t].data(), Lo, cs});
      for_each_class(c, en, bits, Lo, Z, T, fs);
    }
    out.seconds[1] += since(t0);
    t0 = clock::now();
    // Each coarse bucket is sorted by q = (key - Lo) >> t in cache (keys recomputed from the
    // classes, LSD radix passes) and scanned there. Two keys within key_tol differ by at most
    // (key_tol >> t) + 1 in q.
    // A coarser q is fine while few records share one (the scan compares the keys anyway):
    // 2^t <= key_tol at least, and about 1/32 record per q value, so two passes usually do.
    int t_lo = 0;
    while (t_lo < cs && (int64_t(2) << t_lo) <= c.key_tol) ++t_lo;
    while (t_lo < cs && (span >> (t_lo + 5)) >= total) ++t_lo;
    const int sort_bits = cs - t_lo;
    const uint64_t imask = (uint64_t(1) << bits) - 1;
    auto keyof = [&](uint64_t id) {
      int64_t k = 0;
      const int m = c.b - static_cast<int>(id & 7);
      for (int t = 0; t < m; ++t) k += c.keys[(id >> (3 + bits * t)) & imask];
      return k;
    };
    const uint64_t qtol = static_cast<uint64_t>(c.key_tol >> t_lo) + 1;
    auto qof = [&](int64_t key) { return above(key, Lo) >> t_lo; };
    // Pairs of records within key_tol whose smaller key lies in [Lo, Hi], sorted by q:
    // every j after i until q differs by more than qtol.
    auto scan = [&](const Rec* r, uint64_t n, Local& L, bool cross, uint64_t split) {
      for (uint64_t i = 0; i < (cross ? split : n); ++i) {
        const uint64_t qi = qof(r[i].key);
        for (uint64_t j = cross ? split : i + 1; j < n && qof(r[j].key) - qi <= qtol; ++j) {
          const int64_t d = r[j].key - r[i].key;
          if (d > c.key_tol || d < -c.key_tol || std::min(r[i].key, r[j].key) > Hi) continue;
          decide(c, r[i].id, r[j].id, bits, max_numerical, L);
        }
      }
    };
    // Sort each coarse bucket by q = (key - Lo) >> t and scan it while it is in cache: keys
    // recomputed from the classes, LSD radix passes. Two keys within key_tol differ by at most
    // (key_tol >> t) + 1 in q. A coarser q is fine while few records share one (the scan
    // compares the keys anyway): 2^t <= key_tol at least, and about 1/32 record per q value.
    // Pairs across a bucket boundary have both keys within key_tol of it: the records that
    // close to the edges are kept aside and paired after all buckets are done.
    std::vector<std::vector<Rec>> heads(kCoarse), tails(kCoarse);
#pragma omp parallel num_threads(T)
    {
      Local& L = locals[thread_id()];
      std::vector<Rec> tmp, tmp2;
#pragma omp for schedule(dynamic, 16)
      for (int64_t q = 0; q < static_cast<int64_t>(kCoarse); ++q) {
        const uint64_t n0 = start[q], n1 = start[q + 1], n = n1 - n0;
        if (tmp.size() < n) tmp.resize(n);
        for (uint64_t i = n0; i < n1; ++i) tmp[i - n0] = Rec{keyof(ids[i]), ids[i]};
        radix_sort(tmp.data(), n, Lo, t_lo, sort_bits, tmp2);
        scan(tmp.data(), n, L, false, 0);
        const int64_t edge_lo = static_cast<int64_t>(static_cast<uint64_t>(Lo) + (static_cast<uint64_t>(q) << cs));
        for (uint64_t i = 0; i < n && tmp[i].key - edge_lo <= c.key_tol; ++i) heads[q].push_back(tmp[i]);
        const int64_t edge_hi = static_cast<int64_t>(static_cast<uint64_t>(edge_lo) + (uint64_t(1) << cs));
        for (uint64_t i = n; i-- > 0 && edge_hi - tmp[i].key <= c.key_tol;) tails[q].push_back(tmp[i]);
      }
    }
    out.seconds[2] += since(t0);
    t0 = clock::now();
    {
      Local& L = locals[0];
      std::vector<Rec> both;
      for (uint64_t q = 0; q + 1 < kCoarse; ++q) {
        // tails[q] (reversed: highest key first) then heads[q + 1]: sorted by q as a whole
        both.assign(tails[q].rbegin(), tails[q].rend());
        const uint64_t split = both.size();
        both.insert(both.end(), heads[q + 1].begin(), heads[q + 1].end());
        scan(both.data(), both.size(), L, true, split);
      }
    }
    for (Local& L : locals) {
      // Keep the list sorted and unique: sort this window's new members and merge them in.
      const auto mid = L.members.begin() + static_cast<std::ptrdiff_t>(L.sorted);
      std::sort(mid, L.members.end());
      std::inplace_merge(L.members.begin(), mid, L.members.end());
      L.members.erase(std::unique(L.members.begin(), L.members.end()), L.members.end());
      L.sorted = L.members.size();
    }
    out.seconds[3] += since(t0);
    t0 = clock::now();
    b0 = b1;
  }
  bool sat = false;
  for (Local& L : locals) {
    out.exact_pairs = sat_add(out.exact_pairs, L.exact_pairs, &sat);
    sat = sat || L.sat;
    out.false_candidates += L.false_candidates;
    if (L.too_many) throw std::length_error("more than " + std::to_string(max_numerical) + " numerical candidates");
    out.exact_members.insert(out.exact_members.end(), L.members.begin(), L.members.end());
    for (const Pair& p : L.examples) keep_smallest(out.exact_examples, p);
    out.numerical.insert(out.numerical.end(), L.numerical.begin(), L.numerical.end());
  }
  out.exact_pairs_saturated = sat;
  std::sort(out.exact_members.begin(), out.exact_members.end());
  out.exact_members.erase(std::unique(out.exact_members.begin(), out.exact_members.end()), out.exact_members.end());
  std::sort(out.numerical.begin(), out.numerical.end(),
            [](const Pair& x, const Pair& y) { return x.a != y.a ? x.a < y.a : x.b < y.b; });
  out.numerical.erase(std::unique(out.numerical.begin(), out.numerical.end(),
                                  [](const Pair& x, const Pair& y) { return x.a == y.a && x.b == y.b; }),
                      out.numerical.end());
  return out;
}

}  // namespace collide
}  // namespace exactforge
