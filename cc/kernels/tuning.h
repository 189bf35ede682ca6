// Auto-tuning of the pattern kernel's knobs (channel chunk, register tile)
// per layer, and an on-disk cache of the results so tuning runs once per
// layer signature and machine (cocopie-tf tune-kernels fills it ahead of time).
//
// Cache file: UTF-8 text, one entry per line, tab-separated:
//   v3 <key> <chunk_channels> <tile_vectors> <jit> <jit_filters> <jit_vectors> <jit_segment> <best_ms>
// (v2 lines, without jit_segment, and v1 lines, without the generator's
// knobs, are still read).
// Unknown or malformed lines are ignored (never trusted), and the file is
// rewritten atomically (temporary file + rename) when entries are added.
#ifndef COCOPIE_CC_KERNELS_TUNING_H_
#define COCOPIE_CC_KERNELS_TUNING_H_

#include <map>
#include <string>

#include "cc/kernels/kernels.h"
#include "cc/kernels/pattern_conv.h"
#include "cc/kernels/thread_pool.h"

namespace cocopie {

struct TuneResult {
  PatternTuning tuning;
  double best_ms = 0, default_ms = 0;  // the chosen knobs and the untuned default
  int candidates = 0;
};

// Times the candidate knobs on a synthetic input (results never depend on
// the knobs, only speed does) within about `budget_ms`, and returns the
// fastest.  The default (0, 0) is always a candidate, so tuning never picks
// something slower than the default as measured.
// With code generation available (`jit`, see ResolveJitIsa) the candidates
// are register tiles of the generated kernel plus the static default;
// otherwise the static kernels' chunk and tile.
TuneResult TunePatternConv(const KernelSet* set, const ConvShape& s, const PatternPlan& plan,
                           ThreadPool* pool, double budget_ms, JitIsa jit = JitIsa::kAuto);

// Identifies what the timing depends on: CPU, kernel set, threads, geometry
// and the plan's structure (patterns, kernel lists, units), not weight values.
std::string TuningKey(const KernelSet* set, int threads, const ConvShape& s,
                      const PatternPlan& plan, JitIsa jit = JitIsa::kAuto);

// Default cache path: $COCOPIE_TUNING_CACHE, else
// $XDG_CACHE_HOME/cocopie_tf/tuning.tsv, else ~/.cache/cocopie_tf/tuning.tsv.
std::string DefaultTuningCachePath();

class TuningCache {
 public:
  // Loads `path` if it exists; a missing file is an empty cache.
  explicit TuningCache(std::string path);
  bool Lookup(const std::string& key, PatternTuning* tuning) const;
  void Put(const std::string& key, const PatternTuning& tuning, double best_ms);
  // Writes all entries (merged with what is on disk now); returns "" or why not.
  std::string Save() const;
  const std::string& path() const { return path_; }
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    PatternTuning tuning;
    double best_ms = 0;
  };
  static void Load(const std::string& path, std::map<std::string, Entry>* entries);
  std::string path_;
  std::map<std::string, Entry> entries_;
};

}  // namespace cocopie

#endif  // COCOPIE_CC_KERNELS_TUNING_H_
