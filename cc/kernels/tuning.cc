#include "cc/kernels/tuning.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include "cc/kernels/dispatch.h"
#include "cc/kernels/jit_pattern.h"

namespace cocopie {
namespace {

double TimeOnce(const KernelSet* set, const ConvShape& s, const PatternPlan& plan,
                PatternScratch* scratch, const std::vector<float>& in, std::vector<float>* out,
                ThreadPool* pool, const PatternTuning& t) {
  const auto t0 = std::chrono::steady_clock::now();
  RunPatternConv(set, s, plan, scratch, in.data(), out->data(), pool, t);
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Read once per process: every tuned layer's key needs it.
const std::string& CpuModel() {
  static const std::string model = [] {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
      if (line.rfind("model name", 0) == 0 || line.rfind("CPU part", 0) == 0) {
        const size_t colon = line.find(':');
        return colon == std::string::npos ? line : line.substr(std::min(colon + 2, line.size()));
      }
    return std::string("unknown-cpu");
  }();
  return model;
}

uint64_t Fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

template <typename T>
uint64_t HashVec(uint64_t h, const std::vector<T>& v) {
  return v.empty() ? h : Fnv1a(h, v.data(), v.size() * sizeof(T));
}

// Longest code segment a cache entry may ask for (uses); -1 = whole blocks.
constexpr int kMaxJitSegment = 1 << 24;
// Tallest row band a cache entry may ask for; -1 = whole image.
constexpr int kMaxJitBandRows = 1 << 16;

bool Sane(const PatternTuning& t) {
  const int jit = static_cast<int>(t.jit);
  return t.chunk_channels >= 0 && t.chunk_channels <= (1 << 20) &&
         (t.tile_vectors == 0 || ValidTileVectors(t.tile_vectors)) && jit >= 0 && jit <= 3 &&
         t.jit_filters >= 0 && t.jit_filters <= 31 && t.jit_vectors >= 0 && t.jit_vectors <= 4 &&
         t.jit_segment >= -1 && t.jit_segment <= kMaxJitSegment && t.jit_band_rows >= -1 &&
         t.jit_band_rows <= kMaxJitBandRows;
}

bool ParseInt(const std::string& f, long lo, long hi, int* v) {
  char* end = nullptr;
  const long x = std::strtol(f.c_str(), &end, 10);
  if (f.empty() || *end != '\0' || x < lo || x > hi) return false;
  *v = static_cast<int>(x);
  return true;
}

}  // namespace

TuneResult TunePatternConv(const KernelSet* set, const ConvShape& s, const PatternPlan& plan,
                           ThreadPool* pool, double budget_ms, JitIsa jit) {
  TuneResult r;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> in(static_cast<size_t>(s.batch) * s.in_h * s.in_w * s.in_c);
  for (float& x : in) x = u(rng);
  std::vector<float> out(static_cast<size_t>(s.batch) * s.out_h * s.out_w * s.out_c);

  int max_group = 1;
  for (int g : plan.unit_size) max_group = std::max(max_group, g);
  // Register budget: G x T accumulators (+ T inputs) must fit the file.
  std::vector<int> tiles = max_group == 1   ? std::vector<int>{3, 4, 6, 8}
                          : max_group == 2 ? std::vector<int>{2, 3, 4}
                                           : std::vector<int>{1, 2, 3};
  PatternTuning def;
  def.jit = jit;
  std::vector<PatternTuning> cands = {def};  // the default first
  std::string why;
  const JitIsa isa = ResolveJitIsa(set, jit, &why);
  PatternScratch probe;
  // Whether generated code applies to this geometry (maps too small for it
  // run static, see kMinJitTiles): then only its tiles are candidates.
  const bool generated = isa != JitIsa::kNone &&
                         PreparePatternConv(set, s, plan, &probe, def).rfind("jit_", 0) == 0;
  if (generated) {
    // Generated code: register tiles M x V (the default M x 1 is cands[0]),
    // and the static kernels' default, so tuning can never lose to them.
    for (int v = 1; v <= 4; ++v)
      for (int m : {JitTunedMaxFilters(isa, v), JitTunedMaxFilters(isa, v) * 2 / 3}) {
        PatternTuning t = def;
        t.jit = isa;
        t.jit_filters = m;
        t.jit_vectors = v;
        cands.push_back(t);
      }
    // Code segments shorter and longer than the default (kJitSegmentUses),
    // for the default tile: the best length depends on the L1i and how many
    // tiles a call covers.
    for (int seg : {kJitSegmentUses / 2, kJitSegmentUses * 2}) {
      PatternTuning t = def;
      t.jit = isa;
      t.jit_segment = seg;
      cands.push_back(t);
    }
    // On small maps the 8-lane tile of AVX2 wastes fewer flattened
    // positions than 16 lanes (2x2: 4 of 8 useful instead of 4 of 16).
    if (isa == JitIsa::kAvx512 && ResolveJitIsa(set, JitIsa::kAvx2, &why) == JitIsa::kAvx2)
      for (int v = 1; v <= 2; ++v) {
        PatternTuning t = def;
        t.jit = JitIsa::kAvx2;
        t.jit_filters = JitMaxFilters(JitIsa::kAvx2, v);
        t.jit_vectors = v;
        cands.push_back(t);
      }
    // Row bands (PatternBand) twice as tall as the default, and none.
    if (probe.band.rows > 0)
      for (int rows : {-1, std::min(s.out_h, 2 * probe.band.rows)}) {
        PatternTuning t = def;
        t.jit = isa;
        t.jit_band_rows = rows;
        cands.push_back(t);
      }
    PatternTuning st;
    st.jit = JitIsa::kNone;
    cands.push_back(st);
  } else {
    PatternTuning st;
    st.jit = JitIsa::kNone;
    TimeOnce(set, s, plan, &probe, in, &out, pool, st);  // warm-up, default chunk
    const int auto_chunk = probe.exec.chunk_channels;
    std::vector<int> chunks = {0, std::min(s.in_c, 2 * auto_chunk), s.in_c};
    chunks.erase(std::unique(chunks.begin(), chunks.end()), chunks.end());
    for (int c : chunks)
      for (int t : tiles) cands.push_back(PatternTuning{c, t, JitIsa::kNone});
  }
  // Rounds over all candidates (interleaved, so drift hits them alike); each
  // keeps its best time.  Stops when the budget is spent, after >= 2 rounds.
  std::vector<double> best(cands.size(), 1e300);
  std::vector<PatternScratch> scratch(cands.size());
  const auto start = std::chrono::steady_clock::now();
  for (int round = 0; round < 8; ++round) {
    for (size_t i = 0; i < cands.size(); ++i)
      best[i] = std::min(best[i], TimeOnce(set, s, plan, &scratch[i], in, &out, pool, cands[i]));
    const double spent =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (round >= 1 && spent >= budget_ms) break;
  }
  const size_t pick = std::min_element(best.begin(), best.end()) - best.begin();
  r.tuning = cands[pick];
  r.best_ms = best[pick];
  r.default_ms = best[0];
  r.candidates = static_cast<int>(cands.size());
  return r;
}

std::string TuningKey(const KernelSet* set, int threads, const ConvShape& s,
                      const PatternPlan& plan, JitIsa jit) {
  uint64_t h = 1469598103934665603ull;
  h = HashVec(h, plan.patterns);
  h = HashVec(h, plan.index);
  h = HashVec(h, plan.stride);
  h = HashVec(h, plan.unit_size);
  std::ostringstream k;
  // "g3": the generator with code segments and row bands; entries tuned
  // before them (a different speed landscape) are not reused.
  k << CpuModel() << "|" << (set ? set->isa : "reference") << "|jit-" << JitIsaName(jit) << "|g3|t"
    << threads << "|" << s.batch
    << "x" << s.in_h << "x" << s.in_w << "x" << s.in_c << ">" << s.out_c << "|k" << s.k_h << "x"
    << s.k_w << "d" << s.dil_h << "x" << s.dil_w << "p" << s.pad_top << "," << s.pad_left << "|"
    << std::hex << h;
  std::string key = k.str();
  for (char& c : key)
    if (c == '\t' || c == '\n' || c == '\r') c = ' ';
  return key;
}

std::string DefaultTuningCachePath() {
  if (const char* p = std::getenv("COCOPIE_TUNING_CACHE"); p && *p) return p;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x)
    return std::string(x) + "/cocopie_tf/tuning.tsv";
  if (const char* home = std::getenv("HOME"); home && *home)
    return std::string(home) + "/.cache/cocopie_tf/tuning.tsv";
  return "";
}

TuningCache::TuningCache(std::string path) : path_(std::move(path)) { Load(path_, &entries_); }

namespace {

// The cache file's text, or "" if it is not a regular file of at most
// kMaxCacheBytes: a FIFO, /dev/zero or /dev/urandom given as tune_cache must
// neither block Prepare nor fill memory.  Opened non-blocking, then checked
// on the open descriptor (no race with a swap of the path).
std::string ReadCacheFile(const std::string& path) {
  constexpr off_t kMaxCacheBytes = 16 << 20;
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return "";
  struct stat st;
  std::string text;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size <= kMaxCacheBytes) {
    text.resize(static_cast<size_t>(st.st_size));
    size_t got = 0;
    while (got < text.size()) {
      const ssize_t n = ::read(fd, &text[got], text.size() - got);
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    text.resize(got);
  }
  ::close(fd);
  return text;
}

}  // namespace

void TuningCache::Load(const std::string& path, std::map<std::string, Entry>* entries) {
  if (path.empty()) return;
  std::istringstream f(ReadCacheFile(path));
  std::string line;
  while (std::getline(f, line)) {
    std::vector<std::string> fields;
    std::stringstream ss(line);
    std::string field;
    while (std::getline(ss, field, '\t')) fields.push_back(field);
    // v1 <key> chunk tile ms  |  v2 <key> chunk tile jit jit_filters jit_vectors ms
    // v3: v2 with jit_segment before ms; v4: v3 with jit_band_rows before ms
    const bool v1 = fields.size() == 5 && fields[0] == "v1";
    const bool v2 = fields.size() == 8 && fields[0] == "v2";
    const bool v3 = fields.size() == 9 && fields[0] == "v3";
    const bool v4 = fields.size() == 10 && fields[0] == "v4";
    if ((!v1 && !v2 && !v3 && !v4) || fields[1].empty()) continue;
    Entry e;
    int jit = 0;
    if (!ParseInt(fields[2], 0, 1 << 20, &e.tuning.chunk_channels) ||
        !ParseInt(fields[3], 0, 8, &e.tuning.tile_vectors))
      continue;
    if (v1) {
      e.tuning.jit = JitIsa::kNone;  // written before code generation existed
    } else {
      if (!ParseInt(fields[4], 0, 3, &jit) || !ParseInt(fields[5], 0, 31, &e.tuning.jit_filters) ||
          !ParseInt(fields[6], 0, 4, &e.tuning.jit_vectors) ||
          ((v3 || v4) && !ParseInt(fields[7], -1, kMaxJitSegment, &e.tuning.jit_segment)) ||
          (v4 && !ParseInt(fields[8], -1, kMaxJitBandRows, &e.tuning.jit_band_rows)))
        continue;
      e.tuning.jit = static_cast<JitIsa>(jit);
    }
    char* end = nullptr;
    const std::string& ms = fields.back();
    e.best_ms = std::strtod(ms.c_str(), &end);
    if (ms.empty() || *end != '\0' || !Sane(e.tuning)) continue;
    (*entries)[fields[1]] = e;
  }
}

bool TuningCache::Lookup(const std::string& key, PatternTuning* tuning) const {
  const auto it = entries_.find(key);
  if (it == entries_.end()) return false;
  *tuning = it->second.tuning;
  return true;
}

void TuningCache::Put(const std::string& key, const PatternTuning& tuning, double best_ms) {
  entries_[key] = Entry{tuning, best_ms};
}

std::string TuningCache::Save() const {
  if (path_.empty()) return "no cache path (set COCOPIE_TUNING_CACHE or HOME)";
  // Create the parent directories.
  for (size_t pos = path_.find('/', 1); pos != std::string::npos; pos = path_.find('/', pos + 1))
    ::mkdir(path_.substr(0, pos).c_str(), 0755);
  std::map<std::string, Entry> merged;
  Load(path_, &merged);  // keep what other processes wrote meanwhile
  for (const auto& kv : entries_) merged[kv.first] = kv.second;
  const std::string tmp = path_ + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!f) return "cannot write " + tmp;
    for (const auto& kv : merged)
      f << "v4\t" << kv.first << "\t" << kv.second.tuning.chunk_channels << "\t"
        << kv.second.tuning.tile_vectors << "\t" << static_cast<int>(kv.second.tuning.jit)
        << "\t" << kv.second.tuning.jit_filters << "\t" << kv.second.tuning.jit_vectors << "\t"
        << kv.second.tuning.jit_segment << "\t" << kv.second.tuning.jit_band_rows << "\t"
        << kv.second.best_ms << "\n";
    if (!f.flush()) return "cannot write " + tmp;
  }
  if (std::rename(tmp.c_str(), path_.c_str()) != 0) {
    std::remove(tmp.c_str());
    return "cannot rename " + tmp + " to " + path_;
  }
  return "";
}

}  // namespace cocopie
