// A small persistent thread pool: the workers are started once (per delegate
// instance) and reused by every Invoke, so a layer pays a wake-up, not a
// thread creation.  The calling thread takes part in the work.
//
// Each call splits [0, n) into one contiguous share per thread, the same
// shares every time: the caller always starts on the first, worker i on
// share i + 1.  Kernels index their work so that equal indices mean the same
// rows of the image, so a thread mostly reads what it wrote in the previous
// layer: data written by another core costs 1.1x to read on cores sharing
// an L3, and 3x where the two vCPUs sit on different AMD CCDs (measured on
// the 2-vCPU EPYC VM, docs/engine.md section 30).  A thread whose share runs
// out takes chunks from the others'; chunks halve towards `grain` items as a
// share runs out, so a late or slow thread delays a call by about that much.
//
// Between jobs the workers (and the caller, waiting for them) spin for up to
// `spin_us` microseconds before sleeping on a condition variable: a network
// runs dozens of jobs of 0.1-1 ms back to back, and a futex wake-up costs
// tens of microseconds per job on each side.  The spin yields the core to any
// other runnable thread (sched_yield), so it does not starve TFLite's own
// threads; spin_us = 0 sleeps at once (for machines shared with other work).
//
// Workers are pinned, each to a CPU of its own that is not the caller's, on
// a physical core of its own where there is one (when the creating thread
// may use at least num_threads CPUs, all of the same capacity: on
// big.LITTLE phones, and with `pin` off, placement is left to the OS).  Unpinned, a worker asleep when a call comes was woken
// by the kernel onto the caller's CPU, behind the caller, when the other CPU
// was idle too: the caller then ran every share itself.  On the 2-vCPU VM,
// after a 4 ms sleep between calls (a camera app between frames), a call of
// two 0.5 ms shares took 2.03x its ideal time, 186 of 200 times; pinned,
// 1.15x (docs/engine.md section 37).  The caller is never pinned: when it
// moves to a worker's CPU, that worker moves to a CPU the caller left.
#ifndef COCOPIE_CC_KERNELS_THREAD_POOL_H_
#define COCOPIE_CC_KERNELS_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace cocopie {

class ThreadPool {
 public:
  static constexpr int kDefaultSpinUs = 100;
  static constexpr int kMaxSpinUs = 10000;

  // num_threads counts the caller: 1 means "run everything on the caller".
  // spin_us is clamped to [0, kMaxSpinUs].
  explicit ThreadPool(int num_threads, int spin_us = kDefaultSpinUs, bool pin = true);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }
  int spin_us() const { return spin_us_; }
  // The CPU each worker is pinned to (-1: not pinned), as last assigned.
  std::vector<int> worker_cpus() const;

  // Calls fn(begin, end) over [0, n) split into contiguous chunks of at least
  // `grain` items (each inside one thread's share); returns when all chunks
  // are done.  Callers sharing a pool
  // are serialised; fn must not call ParallelFor on the same pool.
  void ParallelFor(int64_t n, int64_t grain,
                   const std::function<void(int64_t, int64_t)>& fn);

 private:
  void WorkerLoop(int self);
  // Runs chunks of share `self`, then of the others, until none is left.
  void RunChunks(int self);
  // Spins (yielding) until done() or spin_us_ passes; returns done().
  template <typename Done>
  bool Spin(Done done) const;
  // Gives each worker a CPU of allowed_ other than `caller_cpu` (on a core
  // of its own where one is free), keeping the ones it has where it can;
  // under call_mu_.
  void PlaceWorkers(int caller_cpu);

  std::vector<std::thread> workers_;
  int spin_us_;
  mutable std::mutex call_mu_;  // serialises callers sharing one pool
  std::mutex mu_;       // guards sleeping and waking, and stop_
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  bool stop_ = false;
  // Published under mu_ with release order; read by spinning workers with
  // acquire order, which makes the job fields below visible to them.
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> active_{0};  // workers still in the current job

  // The current job (valid while a ParallelFor is running): share p is
  // [begin(p), begin(p + 1)); shares_[p].next is its next unclaimed item.
  struct alignas(64) Share {
    std::atomic<int64_t> next{0};
  };
  int64_t ShareBegin(int p) const { return n_ * p / num_threads(); }
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_ = 1;  // the largest chunk
  int64_t grain_ = 1;  // the smallest (the last of a share may be shorter)
  std::vector<Share> shares_;

  // Pinning: the CPUs the creating thread could use (read-only
  // after it), whether workers are pinned (the caller's, under call_mu_),
  // the caller's CPU at the last call, and each worker's CPU.
  std::vector<int> allowed_;
  std::vector<long> cores_;  // allowed_[k]'s physical core (package, core id)
  bool pinning_ = false;
  int caller_cpu_ = -1;
  std::vector<int> cpus_;                      // worker i's CPU (-1: not pinned)
  std::unique_ptr<std::atomic<int>[]> tids_;  // worker i's thread id
};

// Where a pool's workers run (ThreadPool's pinning, exposed for its tests):
// one CPU of `allowed` per entry of `current` (the workers' CPUs now, -1:
// none), never `caller_cpu`, each on a physical core (`cores`, parallel to
// `allowed`) that neither the caller nor another worker is on where one is
// free; a worker keeps its CPU while that holds.  -1 where no CPU is left.
std::vector<int> ChooseWorkerCpus(const std::vector<int>& allowed, const std::vector<long>& cores,
                                  const std::vector<int>& current, int caller_cpu);

// How much slower one CPU reads 256 KB that another CPU has just written
// than 256 KB it wrote itself: the median over `rounds`, from two threads
// pinned to the first two CPUs this process may use (the caller's affinity
// is left alone).  About 1.1 where the two share an L3, about 3 where they
// do not (a VM whose vCPUs the host put on different AMD CCDs); 0 with
// fewer than two CPUs.  A benchmark's reading of the machine, not used by
// the kernels.
double CrossCoreReadRatio(int rounds);

// How much slower the slower of the first two CPUs this process may use runs
// a fixed chain of multiply-adds than the faster, each alone in a thread
// pinned to it (median of `rounds` runs of about 7 ms per CPU; the caller's
// affinity is left alone): 1.0 on an idle machine, where both CPUs run at
// one speed.  On a shared VM a vCPU whose host core (or its SMT sibling) is
// busy with another guest runs slower, for tens of seconds at a time: the
// 2-vCPU EPYC VM read 1.0-1.6 within a minute, either vCPU the slow one
// (docs/engine.md section 38), and a 2-thread run is only as fast as its
// slower thread allows.  0 with fewer than two CPUs.  A benchmark's reading
// of the machine, not used by the kernels.
double CpuSpeedRatio(int rounds);

// Items [0, n) in contiguous runs (run r: [bounds[r], bounds[r + 1])), one
// per thread of a ParallelFor over the runs: a thread takes its own run's
// items from the front, and when its run is empty takes the last item of the
// run with the most left.  So each run is worked in order by its owner (its
// prefetches of the next item stay right) while a thread that woke late, or
// whose vCPU runs slower (up to 1.6x on a shared VM: docs/engine.md section
// 38), is relieved from the end of its run (ThreadPool's own stealing takes
// the next chunk from the front).  Thread-safe; one object per call.
class TailStealRuns {
 public:
  explicit TailStealRuns(const std::vector<int64_t>& bounds);
  int num_runs() const { return static_cast<int>(runs_.size()); }
  // The next item for the owner of run `self` (its own, else a stolen one);
  // false when every run is empty.  *own says which it was.
  bool Next(int self, int64_t* item, bool* own);
  // The item the owner of `self` would take next (-1: none left), without
  // taking it: what to prefetch.
  int64_t PeekOwn(int self) const;

 private:
  // front in the low 32 bits, end in the high: taken from both ends by CAS.
  struct alignas(64) Run {
    std::atomic<uint64_t> range{0};
  };
  std::vector<Run> runs_;
};

// Runs fn over [0, n) on `pool`, or inline when pool is null.
inline void ParallelFor(ThreadPool* pool, int64_t n, int64_t grain,
                        const std::function<void(int64_t, int64_t)>& fn) {
  if (pool == nullptr || pool->num_threads() == 1 || n <= grain) {
    if (n > 0) fn(0, n);
    return;
  }
  pool->ParallelFor(n, grain, fn);
}

}  // namespace cocopie

#endif  // COCOPIE_CC_KERNELS_THREAD_POOL_H_
