#include "cc/kernels/thread_pool.h"

#include <algorithm>
#include <chrono>

namespace cocopie {

ThreadPool::ThreadPool(int num_threads, int spin_us)
    : spin_us_(std::min(std::max(spin_us, 0), kMaxSpinUs)),
      shares_(static_cast<size_t>(std::max(1, num_threads))) {
  const int extra = std::max(0, num_threads - 1);
  workers_.reserve(extra);
  for (int i = 0; i < extra; ++i) workers_.emplace_back([this, i] { WorkerLoop(i + 1); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

template <typename Done>
bool ThreadPool::Spin(Done done) const {
  if (done()) return true;
  if (spin_us_ == 0) return false;
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us_);
  for (int i = 1;; ++i) {
    if (done()) return true;
    // Checking the clock costs ~20 ns; every 16th round is often enough.
    if (i % 16 == 0 && std::chrono::steady_clock::now() >= until) return done();
    std::this_thread::yield();
  }
}

void ThreadPool::RunChunks(int self) {
  const int threads = num_threads();
  for (int k = 0; k < threads; ++k) {
    const int p = (self + k) % threads;
    const int64_t end = ShareBegin(p + 1);
    for (;;) {
      const int64_t begin = shares_[p].next.fetch_add(chunk_, std::memory_order_relaxed);
      if (begin >= end) break;
      (*fn_)(begin, std::min(end, begin + chunk_));
    }
  }
}

void ThreadPool::WorkerLoop(int self) {
  uint64_t seen = 0;
  for (;;) {
    const auto posted = [&] { return generation_.load(std::memory_order_acquire) != seen; };
    if (!Spin(posted)) {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stop_ || posted(); });
      if (stop_) return;
    }
    seen = generation_.load(std::memory_order_acquire);
    RunChunks(self);
    if (active_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      // The caller may be asleep (it checks active_ under mu_ before waiting).
      std::lock_guard<std::mutex> lock(mu_);
      done_cv_.notify_one();
    }
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  std::lock_guard<std::mutex> call_lock(call_mu_);
  const int64_t threads = num_threads();
  // About four chunks per share evens out uneven rows without much overhead.
  int64_t chunk = std::max<int64_t>(grain, (n + 4 * threads - 1) / (4 * threads));
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    n_ = n;
    chunk_ = std::max<int64_t>(1, chunk);
    for (int p = 0; p < threads; ++p) shares_[p].next.store(ShareBegin(p), std::memory_order_relaxed);
    active_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  work_cv_.notify_all();
  RunChunks(0);
  const auto finished = [&] { return active_.load(std::memory_order_acquire) == 0; };
  if (!Spin(finished)) {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, finished);
  }
  fn_ = nullptr;
}

}  // namespace cocopie
