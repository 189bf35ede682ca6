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

struct Shape {
  int version = 1;               // 1 or 2
  bool derived = false;          // v2: codes left to the weights
  bool own_order = false;        // v2: no filter order stored
  uint16_t op = 0;               // v2: 0 CONV_2D, 1 DEPTHWISE_CONV_2D
};

// A valid payload: one record, 4 filters x 3 channels (depthwise: 4
// channels x 1), 2 patterns, 3 tuning bytes.
std::vector<uint8_t> ValidPayload(Shape sh = {}) {
  std::vector<uint8_t> rec;
  const uint32_t out_c = 4, in_c = sh.op == 1 ? 1 : 3;
  const std::vector<uint32_t> patterns = {0x1Au, 0x38u};
  const size_t head = sh.version == 1 ? 36 : 40;
  const size_t size = head + 4 * patterns.size() + (sh.derived ? 0 : out_c * in_c) +
                      (sh.own_order ? 0 : 4 * out_c) + 4 + 3;
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
  if (sh.version == 2) {
    Put<uint16_t>(&rec, sh.op);
    Put<uint16_t>(&rec, static_cast<uint16_t>((sh.derived ? 1 : 0) | (sh.own_order ? 2 : 0)));
  }
  for (uint32_t m : patterns) Put<uint32_t>(&rec, m);
  if (!sh.derived)
    for (uint32_t k = 0; k < out_c * in_c; ++k) rec.push_back(static_cast<uint8_t>(k % 3));
  if (!sh.own_order)
    for (uint32_t f : {2u, 0u, 3u, 1u}) Put<uint32_t>(&rec, f);
  Put<uint32_t>(&rec, 3);  // tuning bytes
  rec.insert(rec.end(), {1, 2, 3});
  std::vector<uint8_t> out = {'C', 'C', 'P', 'M'};
  Put<uint16_t>(&out, static_cast<uint16_t>(sh.version));
  Put<uint16_t>(&out, 0);
  Put<uint32_t>(&out, 1);
  Put<uint32_t>(&out, cocopie::Crc32(rec.data(), rec.size()));
  out.insert(out.end(), rec.begin(), rec.end());
  return out;
}

// Every payload shape the reader knows.
std::vector<Shape> Shapes() {
  std::vector<Shape> v = {Shape{}};
  for (uint16_t op : {0, 1})
    for (bool derived : {false, true})
      for (bool own : {false, true}) v.push_back(Shape{2, derived, own, op});
  return v;
}

bool Consistent(const std::vector<PatternRecord>& records) {
  for (const PatternRecord& r : records) {
    if (!r.codes.empty() && r.codes.size() != size_t(r.out_c) * r.in_c) return false;
    if (!r.reorder.empty() && r.reorder.size() != r.out_c) return false;
    if (r.op == cocopie::RecordOp::kDepthwiseConv2D && r.in_c != 1) return false;
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
  for (const Shape& sh : Shapes()) {
    const auto p = ValidPayload(sh);
    std::vector<PatternRecord> recs;
    std::string err;
    CHECK(ParseMetadata(p.data(), p.size(), &recs, &err));
    CHECK(recs.size() == 1);
    if (recs.size() != 1) continue;
    const PatternRecord& r = recs[0];
    CHECK(r.op_index == 5 && r.filter_tensor == 7 && r.patterns.size() == 2);
    CHECK(r.op == (sh.op == 1 ? cocopie::RecordOp::kDepthwiseConv2D : cocopie::RecordOp::kConv2D));
    CHECK(r.in_c == (sh.op == 1 ? 1u : 3u));
    if (sh.derived) CHECK(r.codes.empty());
    else CHECK(r.codes.size() == 4 * r.in_c && r.codes[1] == 1);
    if (sh.own_order) CHECK(r.reorder.empty());
    else CHECK(r.reorder.size() == 4 && r.reorder[0] == 2);
  }
}

TEST_CASE(RejectsUnknownOpsFlagsAndVersions) {
  auto check_refused = [](std::vector<uint8_t> p, size_t at, uint8_t value, const char* what) {
    p[at] = value;
    const uint32_t crc = cocopie::Crc32(p.data() + 16, p.size() - 16);
    std::memcpy(p.data() + 12, &crc, 4);
    std::vector<PatternRecord> recs;
    std::string err;
    CHECK(!ParseMetadata(p.data(), p.size(), &recs, &err));
    CHECK(err.find(what) != std::string::npos);
  };
  const auto v2 = ValidPayload(Shape{2, true, true, 0});
  check_refused(v2, 16 + 36, 2, "unknown op kind");       // op kind 2
  check_refused(v2, 16 + 38, 7, "unknown record flags");  // flag bit 2
  check_refused(v2, 4, 3, "unsupported version");
  check_refused(ValidPayload(Shape{2, true, true, 1}), 16 + 20, 2, "depthwise");  // in_c 2
}

TEST_CASE(RejectsEveryTruncation) {
  for (const Shape& sh : Shapes()) {
    const auto p = ValidPayload(sh);
    for (size_t n = 0; n < p.size(); ++n) {
      std::vector<uint8_t> cut(p.begin(), p.begin() + n);  // own buffer: ASan sees overreads
      std::vector<PatternRecord> recs;
      std::string err;
      CHECK(!ParseMetadata(cut.data(), cut.size(), &recs, &err));
      CHECK(!err.empty());
    }
  }
}

TEST_CASE(SurvivesRandomMutations) {
  std::mt19937 rng(42);
  for (const Shape& sh : Shapes()) {
    const auto valid = ValidPayload(sh);
    int accepted = 0;
    for (int i = 0; i < 5000; ++i) {
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
    CHECK(accepted < 5000);
  }
}

// The record against weights: explicit codes, codes derived from the
// weights, depthwise layout, and a record for another op kind.
TEST_CASE(ChecksRecordsAgainstFilters) {
  using cocopie::CheckRecordAgainstFilter;
  using cocopie::RecordOp;
  const std::vector<uint32_t> patterns = {0x1Au, 0x38u};  // taps {1,3,4}, {3,4,5}
  // CONV_2D, 2 filters x 2 channels, OHWI: kernel (o, i) gets pattern
  // (o + i) % 2, kernel (1, 1) removed.
  const int oc = 2, ic = 2, kh = 3, kw = 3;
  std::vector<float> conv(oc * kh * kw * ic, 0.f);
  for (int o = 0; o < oc; ++o)
    for (int i = 0; i < ic; ++i) {
      if (o == 1 && i == 1) continue;
      for (int t = 0; t < 9; ++t)
        if (patterns[(o + i) % 2] >> t & 1) conv[(o * 9 + t) * ic + i] = 1.f + t;
    }
  PatternRecord rec;
  rec.out_c = oc; rec.in_c = ic; rec.k_h = kh; rec.k_w = kw;
  rec.patterns = patterns;
  rec.filter_crc32 = cocopie::Crc32(conv.data(), conv.size() * 4);
  std::vector<int> ids;
  CHECK(CheckRecordAgainstFilter(rec, RecordOp::kConv2D, conv.data(), conv.size() * 4, oc, kh, kw,
                                 ic, &ids).empty());
  CHECK((ids == std::vector<int>{0, 1, 1, -1}));
  rec.codes = {1, 2, 2, 0};  // the same, stored
  CHECK(CheckRecordAgainstFilter(rec, RecordOp::kConv2D, conv.data(), conv.size() * 4, oc, kh, kw,
                                 ic, &ids).empty());
  CHECK((ids == std::vector<int>{0, 1, 1, -1}));
  rec.codes = {2, 2, 2, 0};  // kernel (0, 0) outside its stated pattern
  CHECK(CheckRecordAgainstFilter(rec, RecordOp::kConv2D, conv.data(), conv.size() * 4, oc, kh, kw,
                                 ic) == "a non-zero weight lies outside its recorded pattern");
  rec.codes.clear();
  CHECK(CheckRecordAgainstFilter(rec, RecordOp::kDepthwiseConv2D, conv.data(), conv.size() * 4,
                                 oc, kh, kw, ic) ==
        "the record describes a CONV_2D, the node is a DEPTHWISE_CONV_2D");
  // A kernel whose non-zeros are a strict subset of a pattern: fine with
  // stored codes, no pattern with derived ones.
  conv[(0 * 9 + 1) * ic + 0] = 0.f;
  rec.filter_crc32 = cocopie::Crc32(conv.data(), conv.size() * 4);
  CHECK(CheckRecordAgainstFilter(rec, RecordOp::kConv2D, conv.data(), conv.size() * 4, oc, kh, kw,
                                 ic) == "a kernel's non-zero weights match no recorded pattern");
  rec.codes = {1, 2, 2, 0};
  CHECK(CheckRecordAgainstFilter(rec, RecordOp::kConv2D, conv.data(), conv.size() * 4, oc, kh, kw,
                                 ic).empty());
  // DEPTHWISE_CONV_2D: [1][kh][kw][C], 3 channels, channel c pattern c % 2.
  const int ch = 3;
  std::vector<float> dw(kh * kw * ch, 0.f);
  for (int c = 0; c < ch; ++c)
    for (int t = 0; t < 9; ++t)
      if (patterns[c % 2] >> t & 1) dw[t * ch + c] = 0.5f;
  PatternRecord d;
  d.op = RecordOp::kDepthwiseConv2D;
  d.out_c = ch; d.in_c = 1; d.k_h = kh; d.k_w = kw;
  d.patterns = patterns;
  d.filter_crc32 = cocopie::Crc32(dw.data(), dw.size() * 4);
  CHECK(CheckRecordAgainstFilter(d, RecordOp::kDepthwiseConv2D, dw.data(), dw.size() * 4, ch, kh,
                                 kw, 1, &ids).empty());
  CHECK((ids == std::vector<int>{0, 1, 0}));
  CHECK(CheckRecordAgainstFilter(d, RecordOp::kDepthwiseConv2D, dw.data(), dw.size() * 4 - 4, ch,
                                 kh, kw, 1) == "filter size differs from the record");
  dw[0] = 1.f;  // tap 0 of channel 0: outside both patterns (checksum first)
  d.filter_crc32 = cocopie::Crc32(dw.data(), dw.size() * 4);
  CHECK(CheckRecordAgainstFilter(d, RecordOp::kDepthwiseConv2D, dw.data(), dw.size() * 4, ch, kh,
                                 kw, 1) == "a kernel's non-zero weights match no recorded pattern");
}

int main() { return cocopie_test::RunAll(); }
