// Tests of the portable core without Python: exact recombination and rounding, and the
// order independence of the exact mode. Run by ctest (EXACTFORGE_BUILD_NATIVE_TESTS=ON).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "exactforge/conv.hpp"
#include "exactforge/fixedpoint.hpp"
#include "exactforge/gf2.hpp"
#include "exactforge/intexact.hpp"
#include "exactforge/mathfn.hpp"
#include "exactforge/optim.hpp"
#include "exactforge/reduce.hpp"
#include "kernels/kernels.hpp"

using namespace exactforge;

static int failures = 0;
#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);   \
      ++failures;                                                     \
    }                                                                 \
  } while (0)

template <class T> static bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

static void test_round_int192() {
  Int192 v;
  v.add_shifted(3, 0);
  CHECK(round_int192<float>(v, -1) == 1.5f);
  Int192 w;  // 2^24 + 1: a tie between 2^24 and 2^24 + 2 in float -> even (2^24)
  w.add_shifted((1 << 24) + 1, 0);
  CHECK(round_int192<float>(w, 0) == 16777216.0f);
  Int192 x;  // 2^24 + 3 -> 2^24 + 4
  x.add_shifted((1 << 24) + 3, 0);
  CHECK(round_int192<float>(x, 0) == 16777220.0f);
  Int192 big;  // (2^63 - 1) * 2^100 + 1 * 2^0 rounds like 2^163 in double
  big.add_shifted(INT64_MAX, 100);
  big.add_shifted(1, 0);
  CHECK(round_int192<double>(big, 0) == std::ldexp(1.0, 163));
  Int192 neg;
  neg.add_shifted(-5, 0);
  CHECK(round_int192<double>(neg, -2) == -1.25);
  Int192 sub;  // smallest float subnormal, and half of it (ties to even -> 0)
  sub.add_shifted(1, 0);
  CHECK(round_int192<float>(sub, -149) == std::ldexp(1.0f, -149));
  CHECK(round_int192<float>(sub, -150) == 0.0f);
  Int192 ovf;
  ovf.add_shifted(1, 0);
  CHECK(std::isinf(round_int192<float>(ovf, 128)));
}

static void test_exact_order_independence() {
  std::mt19937_64 g(7);
  std::normal_distribution<double> d;
  const int64_t m = 37, k = 3001, n = 11;
  std::vector<float> a(m * k), b(k * n), out1(m * n), out2(m * n);
  for (auto& v : a) v = static_cast<float>(d(g) * std::pow(10.0, static_cast<int>(g() % 7) - 3));
  for (auto& v : b) v = static_cast<float>(d(g));
  matmul_exact<float>(a.data(), b.data(), out1.data(), m, k, n, 1);
  std::vector<int64_t> p(k);
  std::iota(p.begin(), p.end(), 0);
  std::shuffle(p.begin(), p.end(), g);
  std::vector<float> ap(m * k), bp(k * n);
  for (int64_t t = 0; t < k; ++t) {
    for (int64_t i = 0; i < m; ++i) ap[i * k + t] = a[i * k + p[t]];
    for (int64_t j = 0; j < n; ++j) bp[t * n + j] = b[p[t] * n + j];
  }
  matmul_exact<float>(ap.data(), bp.data(), out2.data(), m, k, n, 3);
  CHECK(same_bits(out1, out2));
  // fixed mode: the same keys order through a permutation gives the same bits
  std::vector<int64_t> inv(k);
  for (int64_t t = 0; t < k; ++t) inv[p[t]] = t;  // term t of (ap, bp) is original term p[t]
  matmul_fixed<float>(a.data(), b.data(), out1.data(), m, k, n, nullptr, 2);
  matmul_fixed<float>(ap.data(), bp.data(), out2.data(), m, k, n, inv.data(), 1);
  CHECK(same_bits(out1, out2));
}

// BatchNorm's per-channel sums read (N, C, L) in place: the same bits as the column sums of
// the transposed (N * L) x C copy, in both modes, and in exact mode under any order of the
// examples; more than one chunk of rows (N > 2^13) is crossed.
static void test_channel_sums() {
  std::mt19937_64 g(11);
  std::normal_distribution<double> d;
  for (auto dims : {std::vector<int64_t>{9000, 3, 1}, std::vector<int64_t>{17, 5, 33}}) {
    const int64_t N = dims[0], C = dims[1], L = dims[2];
    std::vector<float> x(N * C * L), flat(N * L * C);
    for (auto& v : x) v = static_cast<float>(d(g) * std::pow(10.0, static_cast<int>(g() % 9) - 4));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t l = 0; l < L; ++l) flat[(n * L + l) * C + c] = x[(n * C + c) * L + l];
    for (bool exact : {true, false}) {
      std::vector<float> a(C), b(C);
      sum_channels<float>(x.data(), a.data(), N, C, L, exact, 2);
      if (exact) sum_exact<float>(flat.data(), b.data(), N * L, C, 1);
      else sum_fixed<float>(flat.data(), b.data(), N * L, C, nullptr, 1);
      CHECK(same_bits(a, b));
    }
    std::vector<int64_t> p(N);
    std::iota(p.begin(), p.end(), 0);
    std::shuffle(p.begin(), p.end(), g);
    std::vector<float> xp(x.size()), a(C), b(C);
    for (int64_t n = 0; n < N; ++n) std::copy_n(&x[p[n] * C * L], C * L, &xp[n * C * L]);
    sum_channels<float>(x.data(), a.data(), N, C, L, true, 1);
    sum_channels<float>(xp.data(), b.data(), N, C, L, true, 2);
    CHECK(same_bits(a, b));
  }
}

// col2im is im2col's adjoint: <im2col(x), c> = <x, col2im(c)> (checked in float64 on small
// integers, where every sum is exact), and im2col of a lone 1 puts it where the geometry says.
static void test_im2col_adjoint() {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> small(-4, 4);
  const ConvGeometry gs[] = {{2, 3, 7, 6, 3, 2, 2, 1, 1, 0, 1, 2}, {3, 1, 5, 5, 5, 5, 1, 1, 2, 2, 1, 1},
                             {1, 2, 4, 9, 1, 3, 1, 3, 0, 1, 1, 1}};
  for (const ConvGeometry& g : gs) {
    g.check();
    const int64_t nx = g.B * g.C * g.H * g.W, nc = g.C * g.kh * g.kw * g.B * g.Ho() * g.Wo();
    std::vector<double> x(nx), c(nc), cx(nc), xc(nx);
    for (auto& v : x) v = small(rng);
    for (auto& v : c) v = small(rng);
    im2col(x.data(), cx.data(), g, 1);
    col2im(c.data(), xc.data(), g, 2);
    double lhs = 0, rhs = 0;
    for (int64_t i = 0; i < nc; ++i) lhs += cx[i] * c[i];
    for (int64_t i = 0; i < nx; ++i) rhs += x[i] * xc[i];
    CHECK(lhs == rhs);
  }
  bool threw = false;
  try {
    ConvGeometry{1, 1, 2, 2, 5, 5, 1, 1, 0, 0, 1, 1}.check();  // kernel larger than the input
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
}

// The direct convolution's input gradient has the bits of the two steps it replaces: the
// fixed-order product W^T dY (over output channels), then col2im, on float32 geometries whose
// channel counts cross the kernel's channel blocks and whose widths cross the vector lanes.
static void test_direct_input_gradient() {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  const ConvGeometry gs[] = {{2, 9, 7, 19, 3, 3, 1, 1, 1, 1, 1, 1}, {1, 17, 5, 33, 5, 2, 1, 1, 2, 0, 1, 1},
                             {3, 1, 4, 4, 1, 1, 1, 1, 0, 3, 1, 1}};
  for (const ConvGeometry& g : gs) {
    g.check();
    const int64_t O = 11, L = g.Ho() * g.Wo(), CKK = g.C * g.kh * g.kw;
    std::vector<float> dy(g.B * O * L), w(O * CKK), wt(CKK * O), dyt(O * g.B * L), dcols(CKK * g.B * L);
    std::vector<float> ref(g.B * g.C * g.H * g.W), got(ref.size());
    for (auto& v : dy) v = nd(rng);
    for (auto& v : w) v = nd(rng);
    for (int64_t o = 0; o < O; ++o)
      for (int64_t r = 0; r < CKK; ++r) wt[r * O + o] = w[o * CKK + r];
    for (int64_t b = 0; b < g.B; ++b)
      for (int64_t o = 0; o < O; ++o)
        for (int64_t l = 0; l < L; ++l) dyt[(o * g.B + b) * L + l] = dy[(b * O + o) * L + l];
    matmul_fixed<float>(wt.data(), dyt.data(), dcols.data(), CKK, O, g.B * L, nullptr, 1);
    col2im(dcols.data(), ref.data(), g, 1);
    for (int threads : {1, 2}) {
      conv2d_input_grad_fixed(dy.data(), w.data(), got.data(), g, O, threads);
      CHECK(same_bits(ref, got));
    }
  }
}

// The exact weight gradient over an implicit im2col has the bits of the exact product over the
// materialised one: strided, dilated and padded geometries, an input spanning 2^-40 .. 2^40 (rows
// of different scales), and an input with an infinity (materialised inside).
static void test_implicit_weight_gradient() {
  std::mt19937 rng(9);
  std::normal_distribution<double> nd;
  std::uniform_int_distribution<int> ex(-40, 40);
  const ConvGeometry gs[] = {{2, 5, 9, 17, 3, 3, 1, 1, 1, 1, 1, 1}, {3, 2, 8, 8, 2, 3, 2, 1, 0, 2, 1, 2},
                             {1, 3, 6, 11, 5, 1, 1, 2, 2, 0, 1, 1}};
  for (int special = 0; special < 2; ++special)
    for (const ConvGeometry& g : gs) {
      g.check();
      const int64_t O = 7, N = g.B * g.Ho() * g.Wo(), CKK = g.C * g.kh * g.kw;
      std::vector<float> x(g.B * g.C * g.H * g.W), dyt(N * O), cols(CKK * N), ref(CKK * O), got(CKK * O);
      for (auto& v : x) v = static_cast<float>(std::ldexp(nd(rng), ex(rng)));
      for (auto& v : dyt) v = static_cast<float>(nd(rng));
      if (special) x[x.size() / 2] = std::numeric_limits<float>::infinity();
      im2col(x.data(), cols.data(), g, 1);
      matmul_exact<float>(cols.data(), dyt.data(), ref.data(), CKK, N, O, 1);
      for (int threads : {1, 2}) {
        conv2d_weight_grad_exact(x.data(), dyt.data(), got.data(), g, O, threads);
        CHECK(same_bits(ref, got));
      }
    }
}

// BatchNorm's fused channel sums have the bits of sum_channels over the materialised terms,
// (x - mean)^2 and a * b, in both modes, with an infinity in one channel.
static void test_fused_channel_sums() {
  std::mt19937 rng(13);
  std::normal_distribution<float> nd;
  const int64_t N = 37, C = 3, L = 129;
  std::vector<float> x(N * C * L), y(N * C * L), mean = {0.25f, -1.5f, 3.0f}, sq(N * C * L), pr(N * C * L);
  for (auto& v : x) v = nd(rng) * 1000.0f;
  for (auto& v : y) v = nd(rng);
  x[5 * C * L + 2 * L + 7] = std::numeric_limits<float>::infinity();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t e = (n * C + c) * L + l;
        const float d = x[e] - mean[c];
        sq[e] = d * d;
        pr[e] = x[e] * y[e];
      }
  for (bool exact : {true, false})
    for (int threads : {1, 2}) {
      std::vector<float> a(C), b(C);
      sum_channels<float>(sq.data(), a.data(), N, C, L, exact, 1);
      sum_centered_squares<float>(x.data(), mean.data(), b.data(), N, C, L, exact, threads);
      CHECK(same_bits(a, b));
      sum_channels<float>(pr.data(), a.data(), N, C, L, exact, 1);
      sum_channel_products<float>(x.data(), y.data(), b.data(), N, C, L, exact, threads);
      CHECK(same_bits(a, b));
    }
}

// round_two_levels is round_int192 for two levels wherever it answers: random levels, and
// levels built so that the value sits on, just above or just below a rounding tie of T.
template <class T> static void test_round_two_levels() {
  std::mt19937_64 rng(11);
  int answered = 0;
  for (int it = 0; it < 2000000; ++it) {
    const int w = 18 + int(rng() % 9);
    const int64_t hi = int64_t(rng() >> (2 + rng() % 57)) * ((rng() & 1) ? 1 : -1);  // up to 2^62, as L0
    int64_t lo = int64_t(rng() >> (1 + rng() % 50)) * ((rng() & 1) ? 1 : -1);
    if (it % 2 == 0) {  // steer onto a tie: zero the bits below T's last place, then add half (+-1)
      const __int128 x = static_cast<__int128>(hi) * (static_cast<__int128>(1) << w) + lo;
      const unsigned __int128 ax = x < 0 ? static_cast<unsigned __int128>(-x) : static_cast<unsigned __int128>(x);
      const uint64_t top = static_cast<uint64_t>(ax >> 64), bot = static_cast<uint64_t>(ax);
      const int msb = top ? 127 - clz64(top) : (bot ? 63 - clz64(bot) : -1);
      const int drop = msb + 1 - FloatTraits<T>::digits;
      if (drop > 1 && drop < 60) {
        const int64_t unit = int64_t(1) << drop;
        const int64_t r = static_cast<int64_t>(x % unit);
        lo += -r + unit / 2 + int64_t(rng() % 3) - 1;
      }
    }
    const int exp2 = int(rng() % 300) - 200;
    T fast;
    if (!round_two_levels<T>(hi, lo, w, exp2, &fast)) continue;
    ++answered;
    Int192 v;
    v.add_shifted(hi, w);
    v.add_shifted(lo, 0);
    const T slow = round_int192<T>(v, exp2);
    if (std::memcmp(&fast, &slow, sizeof(T)) != 0) {
      std::printf("round_two_levels: hi=%lld lo=%lld w=%d exp2=%d fast=%a slow=%a\n", (long long)hi, (long long)lo,
                  w, exp2, double(fast), double(slow));
      ++failures;
      return;
    }
  }
  CHECK(answered > 100000);
}

// Balanced base-256 digits give back every slice value they are used for (|v| <= 2^22 with 3
// digits, 2^26 with 4), the edges included; and the float32 exact matmul's three kernels (float64
// slices, int8 digits in C++, and AMX where usable: kernel 0 resolves to it) give the same bits.
static void test_int8_digits_and_kernels() {
  std::mt19937_64 g(7);
  for (int bits : {21, 22, 23, 26}) {
    const int nd = int8_digits(bits);
    const int32_t lim = int32_t(1) << bits;
    for (int r = 0; r < 200000; ++r) {
      int32_t v = r < 4 ? (r == 0 ? lim : r == 1 ? -lim : r == 2 ? 0 : -1)
                        : static_cast<int32_t>(g() % (2 * uint64_t(lim) + 1)) - lim;
      int8_t d[kMaxDigits];
      int8_split(v, nd, d, 1);
      int64_t back = 0;
      for (int p = nd - 1; p >= 0; --p) back = back * 256 + d[p];
      CHECK(back == v);
    }
  }
  std::normal_distribution<float> nrm;
  for (int64_t k : {1, 63, 100, 129, 1000, 2049}) {
    const int64_t m = 37, n = 21;
    std::vector<float> a(m * k), b(k * n);
    for (auto& x : a) x = nrm(g) * std::ldexp(1.0f, int(g() % 40) - 20);
    for (auto& x : b) x = nrm(g);
    std::vector<float> c1(m * n), c2(m * n), c0(m * n);
    matmul_exact_with(a.data(), b.data(), c1.data(), m, k, n, 1, 1);
    matmul_exact_with(a.data(), b.data(), c2.data(), m, k, n, 2, 2);
    matmul_exact_with(a.data(), b.data(), c0.data(), m, k, n, 2, 0);
    CHECK(same_bits(c1, c2));
    CHECK(same_bits(c1, c0));
  }
}

// The ISA's vectorised float32 recombination (the AVX-512 level's; none elsewhere) gives
// round_int192's float on every lane it answers: random levels of realistic size (below 2^53,
// its fast path), levels steered onto float32 rounding ties (+-1), column scales anywhere
// from subnormal to overflowing results, skipped columns, and every tail length.
static void test_vector_recombination() {
  const RecombineF32 rec = kernels().recombine_f32;
  if (!rec) { std::printf("vector recombination: none on this ISA (%s)\n", kernels().isa); return; }
  std::mt19937_64 rng(23);
  long answered = 0, lanes = 0;
  for (int it = 0; it < 60000; ++it) {
    const int n = 1 + int(rng() % 19), w = 18 + int(rng() % 9);
    const int ea = int(rng() % 400) - 300;
    std::vector<int64_t> lv(2 * n);
    std::vector<int> fb(n);
    std::vector<char> skip(n), todo(n, 7);
    std::vector<float> out(n, -1.0f);
    for (int j = 0; j < n; ++j) {
      int64_t hi = int64_t(rng() >> (11 + rng() % 53)) * ((rng() & 1) ? 1 : -1);
      int64_t lo = int64_t(rng() >> (11 + rng() % 53)) * ((rng() & 1) ? 1 : -1);
      if (rng() % 50 == 0) hi = int64_t(rng() >> 1) * ((rng() & 1) ? 1 : -1);  // off the fast path
      if (rng() % 50 == 0) { hi = 0; lo = 0; }
      if (rng() % 2 == 0) {  // onto a float32 tie of the exact value, or one unit either side
        const __int128 x = static_cast<__int128>(hi) * (static_cast<__int128>(1) << w) + lo;
        const unsigned __int128 ax = x < 0 ? static_cast<unsigned __int128>(-x) : static_cast<unsigned __int128>(x);
        const uint64_t top = static_cast<uint64_t>(ax >> 64), bot = static_cast<uint64_t>(ax);
        const int msb = top ? 127 - clz64(top) : (bot ? 63 - clz64(bot) : -1);
        const int drop = msb + 1 - 24;
        if (drop > 1 && drop < 52) {
          const int64_t unit = int64_t(1) << drop;
          lo += -static_cast<int64_t>(x % unit) + unit / 2 + int64_t(rng() % 3) - 1;
        }
      }
      lv[2 * j] = hi; lv[2 * j + 1] = lo;
      fb[j] = int(rng() % 400) - 200;
      skip[j] = rng() % 40 == 0;
    }
    rec(lv.data(), n, ea, fb.data(), w, skip.data(), out.data(), todo.data());
    for (int j = 0; j < n; ++j) {
      ++lanes;
      if (todo[j] != 0 && todo[j] != 1) { std::printf("vector recombination: todo not set\n"); ++failures; return; }
      if (todo[j]) continue;
      ++answered;
      Int192 v;
      v.add_shifted(lv[2 * j], w);
      v.add_shifted(lv[2 * j + 1], 0);
      const float slow = round_int192<float>(v, ea + fb[j] - 3 * w);
      if (skip[j] || std::memcmp(&out[j], &slow, sizeof(float)) != 0) {
        std::printf("vector recombination: hi=%lld lo=%lld w=%d e2=%d skip=%d fast=%a slow=%a\n",
                    (long long)lv[2 * j], (long long)lv[2 * j + 1], w, ea + fb[j] - 3 * w, int(skip[j]),
                    double(out[j]), double(slow));
        ++failures;
        return;
      }
    }
  }
  std::printf("vector recombination (%s): %ld of %ld lanes on the fast path, all equal\n", kernels().isa,
              answered, lanes);
  CHECK(answered > lanes / 3);
}

// A split reduction's levels packed into int32 fields, summed field by field over the parts
// (what the all-reduce does) and unpacked, round to matmul_exact's bits over the whole: for
// float32 and float64, several world sizes and splits, and values from 2^-60 to 2^60.
template <class T> static void test_packed_levels() {
  std::mt19937_64 rng(31);
  std::normal_distribution<double> nd;
  std::uniform_int_distribution<int> ex(-60, 60);
  const bool dbl = std::is_same<T, double>::value;
  for (int world : {1, 2, 3, 7}) {
    const int64_t m = 3, n = 4, k = 40 + world;
    std::vector<T> a(m * k), b(k * n), want(m * n), got(m * n);
    for (auto& v : a) v = static_cast<T>(std::ldexp(nd(rng), ex(rng)));
    for (auto& v : b) v = static_cast<T>(nd(rng));
    matmul_exact<T>(a.data(), b.data(), want.data(), m, k, n, 1);
    std::vector<double> rm(m), cm(n);
    exact_maxima<T>(a.data(), b.data(), m, k, n, rm.data(), cm.data());
    const LevelPacking p = level_packing(false, k, dbl, world);
    std::vector<int32_t> sum(m * n * p.words, 0), words(m * n * p.words);
    std::vector<int64_t> lv(m * n * p.slices);
    for (int r = 0; r < world; ++r) {  // part r: terms t with t % world == r, as its own a and b
      std::vector<T> ar, br;
      for (int64_t i = 0; i < m; ++i)
        for (int64_t t = r; t < k; t += world) ar.push_back(a[i * k + t]);
      for (int64_t t = r; t < k; t += world) br.insert(br.end(), b.begin() + t * n, b.begin() + (t + 1) * n);
      const int64_t kp = static_cast<int64_t>(br.size()) / n;
      const ExactShare share{k, rm.data(), cm.data(), lv.data()};
      matmul_exact_levels<T>(ar.data(), br.data(), m, kp, n, share, 1);
      pack_levels(lv.data(), m * n, p, words.data());
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += words[i];
    }
    unpack_levels(sum.data(), m * n, p, lv.data());
    round_exact_levels<T>(lv.data(), m, n, k, rm.data(), cm.data(), nullptr, got.data());
    CHECK(same_bits(want, got));
  }
  // levels beyond the bound are refused, not wrapped
  const LevelPacking p = level_packing(false, 8, dbl, 2);
  std::vector<int64_t> lv(p.slices, 0);
  lv[0] = int64_t(1) << 62;
  std::vector<int32_t> w(p.words);
  bool threw = false;
  try { pack_levels(lv.data(), 1, p, w.data()); } catch (const std::invalid_argument&) { threw = true; }
  CHECK(threw);
}

// The optimizer updates are element by element: the bits of an element do not depend on the
// array's length or the element's position (a vector body or its tail), and SGD's step is one
// fused multiply-add (it differs from two roundings on the values below).
template <class T>
static void test_optim_updates() {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> nd(0.0, 1.0);
  const int n = 37;
  std::vector<T> p(n), g(n), m(n), v(n), x(n), b(n);
  for (int i = 0; i < n; ++i) {
    p[i] = T(nd(rng));
    g[i] = T(nd(rng) * 1e-2);
    m[i] = T(nd(rng) * 1e-2);
    v[i] = T(std::fabs(nd(rng)) * 1e-4);
    x[i] = T(std::fabs(nd(rng)) * 1e-4);
    b[i] = T(nd(rng));
  }
  const AdamScalars<T> a{T(0.1), T(0.999), T(0.001), T(0.05), T(1e-8), T(-0.01), T(0.01), T(1), false, false};
  const SgdScalars<T> s{T(-0.1), T(1e-4), T(0.9), T(1), true, false, false};
  const RmspropScalars<T> r{T(-0.01), T(0.99), T(0.01), T(1e-8), T(0), T(0.9), true, false};
  auto whole = [&](int kind) {
    std::vector<T> P = p, M = m, V = v, X = x, B = b;
    if (kind == 0) adam_update(P.data(), g.data(), M.data(), V.data(), X.data(), n, a);
    if (kind == 1) sgd_update(P.data(), g.data(), B.data(), n, s);
    if (kind == 2) rmsprop_update(P.data(), g.data(), V.data(), M.data(), B.data(), n, r);
    return std::vector<std::vector<T>>{P, M, V, X, B};
  };
  auto one_by_one = [&](int kind) {
    std::vector<T> P = p, M = m, V = v, X = x, B = b;
    for (int i = 0; i < n; ++i) {
      if (kind == 0) adam_update(&P[i], &g[i], &M[i], &V[i], &X[i], 1, a);
      if (kind == 1) sgd_update(&P[i], &g[i], &B[i], 1, s);
      if (kind == 2) rmsprop_update(&P[i], &g[i], &V[i], &M[i], &B[i], 1, r);
    }
    return std::vector<std::vector<T>>{P, M, V, X, B};
  };
  for (int kind = 0; kind < 3; ++kind) {
    auto w = whole(kind), o = one_by_one(kind);
    for (size_t j = 0; j < w.size(); ++j) CHECK(same_bits(w[j], o[j]));
  }
  // p + lr * g with p = 1, g = 1 + 2^-(digits-1), lr = 1 - 2^-digits: one rounding and two differ
  const int d = std::numeric_limits<T>::digits;
  T p1 = T(1), g1 = T(1) + std::ldexp(T(1), -(d - 1));
  const SgdScalars<T> plain{-(T(1) - std::ldexp(T(1), -d)), T(0), T(0), T(1), false, false, false};
  T q = p1;
  sgd_update(&q, &g1, static_cast<T*>(nullptr), 1, plain);
  CHECK(q == std::fma(g1, plain.neg_lr, p1));
  CHECK(q != p1 + g1 * plain.neg_lr);
}

// A random system with a planted solution and redundant rows: the solver must find a solution
// that satisfies every equation, a rank no larger than the unknowns, and no contradiction; a
// flipped right-hand side of a dependent row must be counted as one.
static void test_gf2_solve() {
  std::mt19937_64 rng(11);
  const int64_t n = 150, R = 400, W = n / 64 + 1;
  std::vector<uint8_t> planted(n);
  for (auto& b : planted) b = uint8_t(rng() & 1);
  std::vector<uint64_t> rows(size_t(R * W), 0);
  for (int64_t r = 0; r < R; ++r) {
    int rhs = 0;
    for (int64_t c = 0; c < n; ++c) {
      if (rng() % 3 == 0) {
        rows[size_t(r * W + c / 64)] |= uint64_t(1) << (c % 64);
        rhs ^= planted[size_t(c)];
      }
    }
    if (rhs) rows[size_t(r * W + n / 64)] |= uint64_t(1) << (n % 64);
  }
  std::vector<uint64_t> a = rows;
  std::vector<uint8_t> x(n);
  Gf2Result res = gf2_solve(a.data(), R, W, n, x.data());
  CHECK(res.inconsistent == 0);
  CHECK(res.rank == n);  // 400 random rows of density 1/3 have full column rank
  CHECK(x == planted);
  // a contradiction: a copy of row 0 with the other right-hand side
  std::vector<uint64_t> b = rows;
  b.resize(size_t((R + 1) * W));
  for (int64_t k = 0; k < W; ++k) b[size_t(R * W + k)] = rows[size_t(k)];
  b[size_t(R * W + n / 64)] ^= uint64_t(1) << (n % 64);
  res = gf2_solve(b.data(), R + 1, W, n, x.data());
  CHECK(res.inconsistent == 1);
}

// exp over an array runs det_exp's operations on vectors, its branches as selects: every
// float32 value on a stride through all 2^32 bit patterns (every exponent, both signs, NaN and
// infinities), and float64 values around each branch's threshold and across the range, against
// the scalar det_exp, bit for bit, on the generic and the dispatched kernels.
static void test_vector_exp() {
  std::vector<float> xf;
  for (uint64_t u = 0; u < (uint64_t(1) << 32); u += 4099) {
    const uint32_t b = static_cast<uint32_t>(u);
    float f;
    std::memcpy(&f, &b, 4);
    xf.push_back(f);
  }
  std::vector<double> xd = {0.0, -0.0, INFINITY, -INFINITY, NAN, 709.782712893384, 709.78271289338397,
                            -745.2, -745.19999999999993, -708.39641853226408, -1e-300, 5e-324};
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> range(-760.0, 720.0);
  for (int i = 0; i < 200000; ++i) xd.push_back(range(rng));
  for (int i = 0; i < 100000; ++i) {
    uint64_t b = rng();
    double d;
    std::memcpy(&d, &b, 8);
    xd.push_back(d);
  }
  std::vector<float> rf(xf.size()), of(xf.size());
  std::vector<double> rd(xd.size()), od(xd.size());
  for (size_t i = 0; i < xf.size(); ++i) rf[i] = static_cast<float>(canonicalize(det_exp(static_cast<double>(xf[i]))));
  for (size_t i = 0; i < xd.size(); ++i) rd[i] = canonicalize(det_exp(xd[i]));
  exp_n(xf.data(), of.data(), static_cast<int64_t>(xf.size()));
  exp_n(xd.data(), od.data(), static_cast<int64_t>(xd.size()));
  CHECK(same_bits(of, rf));
  CHECK(same_bits(od, rd));
  for (const auto* ns : {"generic", "avx2"}) {
    const bool generic = std::strcmp(ns, "generic") == 0;
    if (!generic && std::strcmp(kernels().isa, "generic") == 0) continue;
    auto f32 = generic ? generic::exp_f32 : avx2::exp_f32;
    auto f64 = generic ? generic::exp_f64 : avx2::exp_f64;
    f32(xf.data(), of.data(), static_cast<int64_t>(xf.size()));
    f64(xd.data(), od.data(), static_cast<int64_t>(xd.size()));
    CHECK(same_bits(of, rf));
    CHECK(same_bits(od, rd));
  }
}

int main() {
  test_gf2_solve();
  test_vector_exp();
  test_optim_updates<float>();
  test_optim_updates<double>();
  test_int8_digits_and_kernels();
  test_round_int192();
  test_round_two_levels<float>();
  test_round_two_levels<double>();
  test_vector_recombination();
  test_exact_order_independence();
  test_im2col_adjoint();
  test_direct_input_gradient();
  test_implicit_weight_gradient();
  test_fused_channel_sums();
  test_channel_sums();
  test_packed_levels<float>();
  test_packed_levels<double>();
  if (failures == 0) std::printf("native core tests: all passed\n");
  return failures == 0 ? 0 : 1;
}
