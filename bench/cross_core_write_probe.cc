// A probe, not part of the library: what a write costs when another core
// holds the lines (docs/engine.md section 40).  Two threads pinned to CPUs 0
// and 1 share a 451 KB buffer; per round, thread 0's time to write its 225 KB
// half after
//   mode 0: both threads read the whole buffer, then each writes its half;
//   mode 1: each thread read only its own half, then each writes it;
//   mode 2: one thread alone reads and writes all 451 KB (the baseline);
//   mode 3: both read the whole buffer, then only thread 0 writes its half.
// Inside a 2-thread inference, a tensor one thread writes and the other reads
// is, one inference later, written in modes 0 or 3.  Medians of 300 rounds.
// AVX-512 (x86-64):
//   g++ -O2 -mavx512f -std=c++17 -pthread bench/cross_core_write_probe.cc
//       -o /tmp/cross_core_write_probe
//   /tmp/cross_core_write_probe
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

void Pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

volatile float sink;

void Read(const float* p, size_t n) {
  __m512 a = _mm512_setzero_ps();
  for (size_t i = 0; i < n; i += 16) a = _mm512_add_ps(a, _mm512_load_ps(p + i));
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, a);
  float sum = 0;
  for (float v : lanes) sum += v;
  sink = sum;
}

void Write(float* p, size_t n, float v) {
  const __m512 x = _mm512_set1_ps(v);
  for (size_t i = 0; i < n; i += 16) _mm512_store_ps(p + i, x);
}

}  // namespace

int main() {
  const size_t n = 451 * 1024 / sizeof(float), half = n / 2;
  float* buf = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  if (buf == nullptr) return 1;
  Write(buf, n, 1.f);
  const char* what[] = {"both read all, both write", "each read its own half",
                        "one thread alone (451 KB)", "both read all, only thread 0 writes"};
  for (int mode = 0; mode < 4; ++mode) {
    std::vector<double> us;
    for (int round = 0; round < 300; ++round) {
      std::atomic<int> ready{0};
      double t0_us = 0;
      const int need = mode == 2 ? 1 : 2;
      auto body = [&](int t) {
        Pin(t);
        if (mode == 2 && t == 1) return;
        float* mine = mode == 2 ? buf : buf + t * half;
        const size_t len = mode == 2 ? n : half;
        if (mode == 1) Read(mine, len);
        else Read(buf, n);
        ready.fetch_add(1);
        if (mode == 3 && t == 1) return;  // it read the buffer; it writes nothing
        while (ready.load() < need) {
        }
        const auto start = std::chrono::steady_clock::now();
        Write(mine, len, static_cast<float>(round));
        _mm_sfence();
        const double d =
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
                .count();
        if (t == 0) t0_us = d;
      };
      std::thread other(body, 1);
      body(0);
      other.join();
      us.push_back(t0_us);
    }
    std::sort(us.begin(), us.end());
    std::printf("mode %d (%s): thread 0's write, median %.1f us\n", mode, what[mode],
                us[us.size() / 2]);
  }
  std::free(buf);
  return 0;
}
