// The thread count of the CPU kernels: a process-wide default (set_num_threads) and the rule
// every driver applies to a call's request.
#pragma once
#ifdef _OPENMP
#include <omp.h>
#endif

namespace exactforge {
namespace detail {

// threads > 0: that many, clamped to kMaxThreads (OpenMP aborts the process, with no exception,
// when it cannot create the threads a region asks for); 0: the default, else the machine's.
int resolve_threads(int threads);

// Per-thread scratch is allocated before a parallel region and indexed by thread: an
// allocation failure inside a region could not be caught (an exception may not leave an OpenMP
// region; std::terminate would end the interpreter), outside it becomes MemoryError.
inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace detail
}  // namespace exactforge
