// Work split over the calling thread's intra-op threads, as at::parallel_for splits it, without its lazy
// per-thread init. That init is inline, so this library carries its own once-per-thread flag beside libtorch's,
// and its first call on a thread set the thread's count to the process default (at::init_num_threads): what
// engine/threads.py gave the thread was undone (the codec worker's one thread became two, a second OpenMP team
// beside the LM's). at::get_num_threads() is libtorch's own, and reads the count the thread was given.
#pragma once

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <exception>

namespace musicgen_bridge {

template <class F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (begin >= end) return;
  const int64_t n = end - begin;
  if (n <= grain || omp_in_parallel() || at::get_num_threads() <= 1) {
    f(begin, end);
    return;
  }
  std::exception_ptr error;
  // The team is the thread's whole count, as at::parallel_for's: a num_threads clause that asks for fewer makes
  // libgomp's pool release and later recreate threads (pytorch issue 32008). Threads past the pieces sit out.
#pragma omp parallel
  {
    const int64_t pieces = std::min<int64_t>(omp_get_num_threads(), grain > 0 ? (n + grain - 1) / grain : n);
    const int64_t chunk = (n + pieces - 1) / pieces;
    const int64_t b = begin + omp_get_thread_num() * chunk;
    if (b < end) {
      try {
        f(b, std::min(end, b + chunk));
      } catch (...) {  // an exception must not leave an OpenMP region: the caller gets the first one
#pragma omp critical(musicgen_bridge_parallel_error)
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace musicgen_bridge
