// The thread count of the CPU kernels: a process-wide default (set_num_threads) and the rule
// every driver applies to a call's request.
#pragma once

namespace exactforge {
namespace detail {

// threads > 0: that many, clamped to kMaxThreads (OpenMP aborts the process, with no exception,
// when it cannot create the threads a region asks for); 0: the default, else the machine's.
int resolve_threads(int threads);

}  // namespace detail
}  // namespace exactforge
