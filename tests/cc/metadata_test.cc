// The metadata reader on valid, truncated and randomly mutated payloads.
// Built with ASan/UBSan by the sanitizer CMake test, so any out-of-bounds read
// is caught; a parse that succeeds must give self-consistent records.
#include <cstring>
#include <random>
#include <vector>

#include "delegate/metadata.h"
#include "tests/cc/check.h"

using cocopie::ParseMetadata;
using cocopie::PatternRecord;

namespace {

template <typename T>
void Put(std::vector<uint8_t>* b, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  b->insert(b->end(), p, p + sizeof(T));
}

// A valid v1 payload: one record, 4 filters x 3 channels, 2 patterns.
std::vector<uint8_t> ValidPayload() {
  std::vector<uint8_t> rec;
  const uint32_t out_c = 4, in_c = 3;
  const std::vector<uint32_t> patterns = {0x1Au, 0x38u};
  const size_t size = 36 + 4 * patterns.size() + out_c * in_c + 4 * out_c + 4 + 3;
  Put<uint32_t>(&rec, size);
  Put<uint32_t>(&rec, 0);   // subgraph
  Put<uint32_t>(&rec, 5);   // op
  Put<uint32_t>(&rec, 7);   // filter tensor
  Put<uint32_t>(&rec, out_c);
  Put<uint32_t>(&rec, in_c);
  Put<uint16_t>(&rec, 3);
  Put<uint16_t>(&rec, 3);
  Put<uint16_t>(&rec, static_cast<uint16_t>(patterns.size()));
  Put<uint16_t>(&rec, 1);   // group
  Put<uint32_t>(&rec, 0xDEADBEEF);  // filter crc
  for (uint32_t m : patterns) Put<uint32_t>(&rec, m);
  for (uint32_t k = 0; k < out_c * in_c; ++k) rec.push_back(static_cast<uint8_t>(k % 3));
  for (uint32_t f : {2u, 0u, 3u, 1u}) Put<uint32_t>(&rec, f);
  Put<uint32_t>(&rec, 3);  // tuning bytes
  rec.insert(rec.end(), {1, 2, 3});
  std::vector<uint8_t> out = {'C', 'C', 'P', 'M'};
  Put<uint16_t>(&out, 1);
  Put<uint16_t>(&out, 0);
  Put<uint32_t>(&out, 1);
  Put<uint32_t>(&out, cocopie::Crc32(rec.data(), rec.size()));
  out.insert(out.end(), rec.begin(), rec.end());
  return out;
}

bool Consistent(const std::vector<PatternRecord>& records) {
  for (const PatternRecord& r : records) {
    if (r.codes.size() != size_t(r.out_c) * r.in_c || r.reorder.size() != r.out_c) return false;
    for (uint8_t c : r.codes)
      if (c > r.patterns.size()) return false;
    for (uint32_t f : r.reorder)
      if (f >= r.out_c) return false;
  }
  return true;
}

}  // namespace

TEST_CASE(Crc32KnownValue) { CHECK(cocopie::Crc32("123456789", 9) == 0xCBF43926u); }

TEST_CASE(ParsesValidPayload) {
  const auto p = ValidPayload();
  std::vector<PatternRecord> recs;
  std::string err;
  CHECK(ParseMetadata(p.data(), p.size(), &recs, &err));
  CHECK(recs.size() == 1);
  if (recs.size() == 1) {
    CHECK(recs[0].op_index == 5 && recs[0].filter_tensor == 7 && recs[0].patterns.size() == 2);
    CHECK(recs[0].reorder[0] == 2 && recs[0].codes[4] == 1);
  }
}

TEST_CASE(RejectsEveryTruncation) {
  const auto p = ValidPayload();
  for (size_t n = 0; n < p.size(); ++n) {
    std::vector<uint8_t> cut(p.begin(), p.begin() + n);  // own buffer: ASan sees overreads
    std::vector<PatternRecord> recs;
    std::string err;
    CHECK(!ParseMetadata(cut.data(), cut.size(), &recs, &err));
    CHECK(!err.empty());
  }
}

TEST_CASE(SurvivesRandomMutations) {
  const auto valid = ValidPayload();
  std::mt19937 rng(42);
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    std::vector<uint8_t> p = valid;
    const int flips = 1 + static_cast<int>(rng() % 8);
    for (int f = 0; f < flips; ++f) p[rng() % p.size()] = static_cast<uint8_t>(rng());
    // Half the time fix the checksum up, so the parser's deeper checks run.
    if (i % 2 == 0 && p.size() >= 16) {
      const uint32_t crc = cocopie::Crc32(p.data() + 16, p.size() - 16);
      std::memcpy(p.data() + 12, &crc, 4);
    }
    if (rng() % 4 == 0) p.resize(rng() % (p.size() + 1));
    std::vector<PatternRecord> recs;
    std::string err;
    if (ParseMetadata(p.data(), p.size(), &recs, &err)) {
      ++accepted;
      CHECK(Consistent(recs));
    } else {
      CHECK(!err.empty() && recs.empty());
    }
  }
  CHECK(accepted < 20000);
}

int main() { return cocopie_test::RunAll(); }
