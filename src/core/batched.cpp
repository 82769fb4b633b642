#include "exactforge/batched.hpp"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "exactforge/fixedpoint.hpp"
#include "exactforge/reduce.hpp"
#include "kernels/kernels.hpp"

namespace exactforge {

template <class T>
void bmm_unfused(const T* a, const T* b, T* out, int64_t N, int64_t M, int64_t K, int64_t P, int threads) {
  if (N < 0 || M < 0 || K < 1 || P < 0) throw std::invalid_argument("bmm: sizes must be positive (K >= 1)");
  const int nt = std::max(1, std::min(threads > 0 ? threads : get_num_threads(), kMaxThreads));
  const int64_t rows = N * M;
  // the rows in contiguous blocks, one kernel call each (the dispatched ISA's vectors run along
  // an output row; a row's sums never depend on the block)
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (rows + kBlock - 1) / kBlock;
  const KernelTable& kt = kernels();
  (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && blocks > 1 && rows * K * P >= (int64_t(1) << 18))
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t r0 = blk * kBlock, r1 = std::min(rows, r0 + kBlock);
    if constexpr (std::is_same<T, float>::value) kt.bmm_rows_f32(a, b, out, r0, r1, M, K, P);
    else kt.bmm_rows_f64(a, b, out, r0, r1, M, K, P);
  }
}

template <class T>
void rowsum_fixed(const T* x, T* out, int64_t R, int64_t D, int threads) {
  if (R < 0 || D < 1) throw std::invalid_argument("rowsum: sizes must be positive");
  const int nt = std::max(1, std::min(threads > 0 ? threads : get_num_threads(), kMaxThreads));
  (void)nt;
  // Blocks of rows side by side, so that the block's chains are independent and vectorise; each
  // chain is still one row's terms in index order.
  constexpr int64_t kRows = 64;
  const int64_t nb = (R + kRows - 1) / kRows;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && R * D >= (int64_t(1) << 18) && nb > 1)
  for (int64_t blk = 0; blk < nb; ++blk) {
    const int64_t r0 = blk * kRows, nr = std::min(kRows, R - r0);
    T acc[kRows];
    for (int64_t r = 0; r < nr; ++r) acc[r] = T(0);
    for (int64_t t = 0; t < D; ++t)
      for (int64_t r = 0; r < nr; ++r) acc[r] = acc[r] + x[(r0 + r) * D + t];
    for (int64_t r = 0; r < nr; ++r) out[r0 + r] = canonicalize(acc[r]);
  }
}

template <class T>
void segment_sums(const T* x, int64_t D, const int64_t* order, const int64_t* starts, int64_t S, bool fixed,
                    T* out) {
  std::vector<T> buf;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t a = starts[s], len = starts[s + 1] - a;
    T* o = out + s * D;
    if (len == 1) {
      std::copy(x + order[a] * D, x + order[a] * D + D, o);
      continue;
    }
    buf.resize(static_cast<size_t>(len * D));
    for (int64_t t = 0; t < len; ++t) std::copy(x + order[a + t] * D, x + order[a + t] * D + D, buf.data() + t * D);
    if (fixed) sum_fixed<T>(buf.data(), o, len, D, nullptr, 1);
    else sum_exact<T>(buf.data(), o, len, D, 1);
  }
}

template void segment_sums<float>(const float*, int64_t, const int64_t*, const int64_t*, int64_t, bool, float*);
template void segment_sums<double>(const double*, int64_t, const int64_t*, const int64_t*, int64_t, bool, double*);
template void rowsum_fixed<float>(const float*, float*, int64_t, int64_t, int);
template void rowsum_fixed<double>(const double*, double*, int64_t, int64_t, int);
template void bmm_unfused<float>(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t, int);
template void bmm_unfused<double>(const double*, const double*, double*, int64_t, int64_t, int64_t, int64_t, int);

}  // namespace exactforge
