#include "cc/kernels/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <set>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace cocopie {

namespace {

#if defined(__linux__)
// Pins thread `tid` to `cpu`, or to every CPU of `allowed` when cpu < 0
// (sched_setaffinity by thread id works on glibc and bionic alike).
bool PinThread(pid_t tid, int cpu, const std::vector<int>& allowed) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu >= 0) {
    CPU_SET(cpu, &set);
  } else {
    for (int c : allowed) CPU_SET(c, &set);
  }
  return sched_setaffinity(tid, sizeof set, &set) == 0;
}

// A number from /sys/devices/system/cpu/cpu<cpu>/<leaf>, or -1 where the
// file is missing or unreadable (not Linux sysfs, a sandbox).
long ReadCpuSysfs(int cpu, const char* leaf) {
  const std::string path = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/" + leaf;
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return -1;
  long v = -1;
  if (std::fscanf(f, "%ld", &v) != 1) v = -1;
  std::fclose(f);
  return v;
}
#endif

}  // namespace

ThreadPool::ThreadPool(int num_threads, int spin_us, bool pin)
    : spin_us_(std::min(std::max(spin_us, 0), kMaxSpinUs)),
      shares_(static_cast<size_t>(std::max(1, num_threads))) {
  const int extra = std::max(0, num_threads - 1);
  cpus_.assign(static_cast<size_t>(extra), -1);
  tids_.reset(new std::atomic<int>[static_cast<size_t>(std::max(1, extra))]);
  for (int i = 0; i < std::max(1, extra); ++i) tids_[i].store(0, std::memory_order_relaxed);
#if defined(__linux__)
  cpu_set_t mask;
  if (pin && extra > 0 && sched_getaffinity(0, sizeof mask, &mask) == 0) {
    bool same_capacity = true;
    long capacity0 = -2;
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (!CPU_ISSET(c, &mask)) continue;
      allowed_.push_back(c);
      // Hyperthreads of one core share its FMA units: a worker goes to a
      // core nobody else runs on where there is one.  Unknown: a core each.
      const long core = ReadCpuSysfs(c, "topology/core_id");
      const long package = ReadCpuSysfs(c, "topology/physical_package_id");
      cores_.push_back(core < 0 ? -1 - c : (std::max(0L, package) << 20) + core);
      const long capacity = ReadCpuSysfs(c, "cpu_capacity");
      if (capacity0 == -2) capacity0 = capacity;
      same_capacity = same_capacity && capacity == capacity0;
    }
    // Fewer CPUs than threads: some would share one.  CPUs of different
    // capacity (big.LITTLE phones): the lowest numbers are usually the
    // little cores, and the OS's energy-aware placement knows better.
    // Either way placement is left to the OS.
    pinning_ = static_cast<int>(allowed_.size()) >= num_threads && same_capacity;
  }
#else
  (void)pin;
#endif
  workers_.reserve(extra);
  for (int i = 0; i < extra; ++i) workers_.emplace_back([this, i] { WorkerLoop(i + 1); });
#if defined(__linux__)
  if (pinning_) {
    // The workers publish their thread ids first thing.
    for (int i = 0; i < extra; ++i)
      while (tids_[i].load(std::memory_order_acquire) == 0) std::this_thread::yield();
    PlaceWorkers(sched_getcpu());
  }
#endif
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

std::vector<int> ChooseWorkerCpus(const std::vector<int>& allowed, const std::vector<long>& cores,
                                  const std::vector<int>& current, int caller_cpu) {
  // By CPU id: whether it is allowed, its core, and whether someone runs on
  // it; cores in use by the caller or a worker.  One pass per worker over
  // `allowed` (the caller moves rarely, but a pool may be large).
  int ids = caller_cpu + 1;
  for (int c : allowed) ids = std::max(ids, c + 1);
  for (int c : current) ids = std::max(ids, c + 1);
  std::vector<char> is_allowed(static_cast<size_t>(ids), 0), cpu_busy(static_cast<size_t>(ids), 0);
  std::vector<long> core(static_cast<size_t>(ids));
  for (int c = 0; c < ids; ++c) core[c] = -1L - c;  // unknown: a core each
  for (size_t k = 0; k < allowed.size(); ++k) {
    is_allowed[allowed[k]] = 1;
    if (cores.size() == allowed.size()) core[allowed[k]] = cores[k];
  }
  std::set<long> busy_cores;
  if (caller_cpu >= 0) {
    cpu_busy[caller_cpu] = 1;
    busy_cores.insert(core[caller_cpu]);
  }
  std::vector<int> cpus(current.size(), -1);
  const auto take = [&](size_t i, int c) {
    cpus[i] = c;
    cpu_busy[c] = 1;
    busy_cores.insert(core[c]);
  };
  // Keep each worker where it is while its CPU and core are its own; then
  // give the others a CPU on a free core, else any free CPU, else none.
  for (size_t i = 0; i < current.size(); ++i) {
    const int c = current[i];
    if (c >= 0 && is_allowed[c] && !cpu_busy[c] && !busy_cores.count(core[c])) take(i, c);
  }
  for (const bool need_free_core : {true, false})
    for (size_t i = 0; i < cpus.size(); ++i)
      for (size_t k = 0; cpus[i] < 0 && k < allowed.size(); ++k)
        if (!cpu_busy[allowed[k]] && (!need_free_core || !busy_cores.count(core[allowed[k]])))
          take(i, allowed[k]);
  return cpus;
}

void ThreadPool::PlaceWorkers(int caller_cpu) {
#if defined(__linux__)
  caller_cpu_ = caller_cpu;
  const int extra = num_threads() - 1;
  // allowed_ holds at least num_threads CPUs, so every worker gets one.
  const std::vector<int> cpus = ChooseWorkerCpus(allowed_, cores_, cpus_, caller_cpu);
  for (int i = 0; i < extra; ++i) {
    if (cpus[i] == cpus_[i]) continue;
    if (cpus[i] < 0 || !PinThread(tids_[i].load(std::memory_order_relaxed), cpus[i], allowed_)) {
      // The CPUs we may use changed (a cpuset, taskset): unpin all, stop pinning.
      for (int j = 0; j < extra; ++j) PinThread(tids_[j].load(std::memory_order_relaxed), -1, allowed_);
      cpus_.assign(static_cast<size_t>(extra), -1);
      pinning_ = false;
      return;
    }
    cpus_[i] = cpus[i];
  }
#else
  (void)caller_cpu;
#endif
}

std::vector<int> ThreadPool::worker_cpus() const {
  std::lock_guard<std::mutex> call_lock(call_mu_);
  return cpus_;
}

void ThreadPool::RunChunks(int self) {
  const int threads = num_threads();
  for (int k = 0; k < threads; ++k) {
    const int p = (self + k) % threads;
    const int64_t end = ShareBegin(p + 1);
    std::atomic<int64_t>& next = shares_[p].next;
    int64_t begin = next.load(std::memory_order_relaxed);
    while (begin < end) {
      // Guided chunks: half of what is left of the share, between grain_
      // and chunk_ items, so the last chunks of a share, the ones a thread
      // that is done early takes, are small.  Fixed chunks of chunk_ left a
      // thread waiting up to one chunk at every join: MobileNetV2 at 2
      // threads lost about 4% of its thread time so (docs/engine.md
      // section 43).
      const int64_t take = std::max(grain_, std::min(chunk_, (end - begin + 1) / 2));
      if (next.compare_exchange_weak(begin, begin + take, std::memory_order_relaxed)) {
        (*fn_)(begin, std::min(end, begin + take));
        begin = next.load(std::memory_order_relaxed);
      }
    }
  }
}

void ThreadPool::WorkerLoop(int self) {
  uint64_t seen = 0;
#if defined(__linux__)
  tids_[self - 1].store(static_cast<int>(syscall(SYS_gettid)), std::memory_order_release);
#endif
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

namespace {
uint64_t PackRange(uint64_t front, uint64_t end) { return front | (end << 32); }
}  // namespace

TailStealRuns::TailStealRuns(const std::vector<int64_t>& bounds)
    : runs_(bounds.size() > 1 ? bounds.size() - 1 : 0) {
  for (size_t r = 0; r < runs_.size(); ++r) {
    // Items are band or task indices: far below 2^32 (the driver's loops
    // would not finish otherwise); clamp rather than wrap if one is not.
    const int64_t lo = std::clamp<int64_t>(bounds[r], 0, UINT32_MAX);
    const int64_t hi = std::clamp<int64_t>(bounds[r + 1], lo, UINT32_MAX);
    runs_[r].range.store(PackRange(uint64_t(lo), uint64_t(hi)), std::memory_order_relaxed);
  }
}

int64_t TailStealRuns::PeekOwn(int self) const {
  if (self < 0 || self >= num_runs()) return -1;
  const uint64_t v = runs_[self].range.load(std::memory_order_relaxed);
  const uint64_t front = v & 0xffffffffu, end = v >> 32;
  return front < end ? int64_t(front) : -1;
}

bool TailStealRuns::Next(int self, int64_t* item, bool* own) {
  if (self >= 0 && self < num_runs()) {
    std::atomic<uint64_t>& r = runs_[self].range;
    uint64_t v = r.load(std::memory_order_relaxed);
    while ((v & 0xffffffffu) < (v >> 32)) {
      if (r.compare_exchange_weak(v, v + 1, std::memory_order_relaxed)) {
        *item = int64_t(v & 0xffffffffu);
        *own = true;
        return true;
      }
    }
  }
  for (;;) {  // steal the last item of the fullest run
    int victim = -1;
    uint64_t most = 0;
    for (int k = 0; k < num_runs(); ++k) {
      const uint64_t v = runs_[k].range.load(std::memory_order_relaxed);
      const uint64_t left = (v >> 32) - std::min(v >> 32, v & 0xffffffffu);
      if (left > most) most = left, victim = k;
    }
    if (victim < 0) return false;
    std::atomic<uint64_t>& r = runs_[victim].range;
    uint64_t v = r.load(std::memory_order_relaxed);
    const uint64_t front = v & 0xffffffffu, end = v >> 32;
    if (front >= end) continue;  // emptied meanwhile: look again
    if (r.compare_exchange_weak(v, PackRange(front, end - 1), std::memory_order_relaxed)) {
      *item = int64_t(end - 1);
      *own = false;
      return true;
    }
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  std::lock_guard<std::mutex> call_lock(call_mu_);
#if defined(__linux__)
  if (pinning_) {
    // sched_getcpu reads the kernel's rseq area: a few nanoseconds.
    const int cpu = sched_getcpu();
    if (cpu != caller_cpu_) PlaceWorkers(cpu);
  }
#endif
  const int64_t threads = num_threads();
  // Chunks of at most a quarter of a share, halving down to `grain` as the
  // share runs out (RunChunks): few calls of fn, and a small last piece.
  int64_t chunk = std::max<int64_t>(grain, (n + 4 * threads - 1) / (4 * threads));
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    n_ = n;
    chunk_ = std::max<int64_t>(1, chunk);
    grain_ = std::max<int64_t>(1, grain);  // <= chunk_
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

#if defined(__linux__)
namespace {
// The first two CPUs this process may use (the machine probes below pin a
// thread to each); false with fewer than two.
bool FirstTwoCpus(int cpus[2]) {
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return false;
  int found = 0;
  for (int c = 0; c < CPU_SETSIZE && found < 2; ++c)
    if (CPU_ISSET(c, &allowed)) cpus[found++] = c;
  return found == 2;
}
}  // namespace
#endif

double CpuSpeedRatio(int rounds) {
#if defined(__linux__)
  int cpus[2];
  if (rounds < 1 || !FirstTwoCpus(cpus)) return 0.0;
  // Eight multiply-add chains in registers: the time is the core's speed
  // (its clock and what else its pipelines run), not memory.
  const auto burn = [] {
    float x[8] = {1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f, 8.f};
    for (int k = 0; k < 4000000; ++k)
      for (float& v : x) v = v * 0.99999f + 1e-5f;
    float sum = 0.f;
    for (float v : x) sum += v;
    return sum;
  };
  std::vector<double> times[2];
  volatile float sink = 0.f;
  for (int r = 0; r < rounds; ++r)
    for (int j = 0; j < 2; ++j) {
      const int k = (r + j) % 2;  // each CPU first in every other round
      std::thread t([&] {
        if (!PinThread(static_cast<pid_t>(syscall(SYS_gettid)), cpus[k], {})) return;
        const auto t0 = std::chrono::steady_clock::now();
        sink = burn();
        times[k].push_back(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      });
      t.join();
    }
  (void)sink;
  if (times[0].empty() || times[1].empty()) return 0.0;  // pinning refused (a sandbox)
  double median[2];
  for (int k = 0; k < 2; ++k) {
    std::nth_element(times[k].begin(), times[k].begin() + times[k].size() / 2, times[k].end());
    median[k] = times[k][times[k].size() / 2];
  }
  const double fast = std::min(median[0], median[1]);
  return fast > 0 ? std::max(median[0], median[1]) / fast : 0.0;
#else
  (void)rounds;
  return 0.0;
#endif
}

double CrossCoreReadRatio(int rounds) {
#if defined(__linux__)
  int cpus[2];
  if (rounds < 1 || !FirstTwoCpus(cpus)) return 0.0;
  constexpr size_t kFloats = 256 * 1024 / sizeof(float);
  std::vector<float> remote(kFloats, 0.f), local(kFloats, 0.f);
  std::atomic<int> turn{0};  // 2r + 1: writer's turn in round r; 2r + 2: reader's
  const auto pin = [](int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    pthread_setaffinity_np(pthread_self(), sizeof one, &one);
  };
  const auto sum_lines = [](const std::vector<float>& v) {
    float s = 0.f;  // one float per 64-byte line: the time is the lines' arrival
    for (size_t i = 0; i < v.size(); i += 16) s += v[i];
    return s;
  };
  std::vector<double> ratios;
  volatile float sink = 0.f;
  std::thread reader([&] {
    pin(cpus[0]);
    for (int r = 0; r < rounds; ++r) {
      turn.store(2 * r + 1, std::memory_order_release);
      while (turn.load(std::memory_order_acquire) != 2 * r + 2) std::this_thread::yield();
      for (float& x : local) x += 1.f;
      const auto t0 = std::chrono::steady_clock::now();
      const float a = sum_lines(remote);
      const auto t1 = std::chrono::steady_clock::now();
      const float b = sum_lines(local);
      const auto t2 = std::chrono::steady_clock::now();
      sink = a + b;
      const double own = std::chrono::duration<double>(t2 - t1).count();
      if (r > 0 && own > 0) ratios.push_back(std::chrono::duration<double>(t1 - t0).count() / own);
    }
    turn.store(-1, std::memory_order_release);
  });
  std::thread writer([&] {
    pin(cpus[1]);
    for (int r = 0;; ++r) {
      int t;
      while ((t = turn.load(std::memory_order_acquire)) != 2 * r + 1 && t != -1)
        std::this_thread::yield();
      if (t == -1) return;
      for (float& x : remote) x += 1.f;
      turn.store(2 * r + 2, std::memory_order_release);
    }
  });
  reader.join();
  writer.join();
  (void)sink;
  if (ratios.empty()) return 0.0;
  std::nth_element(ratios.begin(), ratios.begin() + ratios.size() / 2, ratios.end());
  return ratios[ratios.size() / 2];
#else
  (void)rounds;
  return 0.0;
#endif
}

}  // namespace cocopie
