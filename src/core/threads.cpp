#include "core/threads.hpp"

#include "exactforge/reduce.hpp"

#include <atomic>
#include <stdexcept>
#include <string>
#include <thread>

namespace exactforge {

namespace {
std::atomic<int> g_threads{0};
}  // namespace


int detail::resolve_threads(int threads) {
  // Clamped here as well as checked in Python: OpenMP aborts the process (no exception) when
  // it cannot create the threads a region asks for, so no caller may ask for more.
  if (threads > 0) return threads < kMaxThreads ? threads : kMaxThreads;
  int g = g_threads.load();
  if (g > 0) return g;
  // Asked once: glibc answers hardware_concurrency() by reading /sys/devices/system/cpu/online,
  // about 6 us per call, which was more than a whole 64 x 100 x 10 product.
  static const int hardware = [] {
    const unsigned hc = std::thread::hardware_concurrency();
    return hc ? static_cast<int>(hc < unsigned(kMaxThreads) ? hc : unsigned(kMaxThreads)) : 1;
  }();
  return hardware;
}

void set_num_threads(int n) {
  if (n < 1 || n > kMaxThreads)
    throw std::invalid_argument("set_num_threads: n must be in 1.." + std::to_string(kMaxThreads));
  g_threads.store(n);
}
int get_num_threads() { return detail::resolve_threads(0); }

}  // namespace exactforge
