#include "delegate/metadata.h"

#include <algorithm>
#include <cstring>

namespace cocopie {
namespace {

constexpr size_t kHeaderSize = 16;  // magic, u16 version, u16 flags, u32 count, u32 crc
constexpr size_t kRecordHeaderV1 = 36;
constexpr size_t kRecordHeaderV2 = 40;  // + u16 op kind, u16 record flags
constexpr uint16_t kCodesFromWeights = 1, kOwnOrder = 2;

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool Has(size_t n) const { return n <= size_ - pos_; }
  template <typename T>
  bool Get(T* out) {
    if (!Has(sizeof(T))) return false;
    std::memcpy(out, data_ + pos_, sizeof(T));  // little-endian targets only
    pos_ += sizeof(T);
    return true;
  }
  bool Bytes(size_t n, const uint8_t** out) {
    if (!Has(n)) return false;
    *out = data_ + pos_;
    pos_ += n;
    return true;
  }
  size_t pos() const { return pos_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace

uint32_t Crc32(const void* data, size_t size) {
  static const auto table = [] {
    std::vector<uint32_t> t(256);
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xFFFFFFFFu;
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

namespace {

bool Parse(const uint8_t* data, size_t size, std::vector<PatternRecord>* records,
           std::string* error) {
  if (data == nullptr || size < kHeaderSize) {
    *error = "truncated header";
    return false;
  }
  if (std::memcmp(data, "CCPM", 4) != 0) {
    *error = "bad magic";
    return false;
  }
  Reader r(data + 4, size - 4);
  uint16_t version = 0, flags = 0;
  uint32_t count = 0, crc = 0;
  r.Get(&version);
  r.Get(&flags);
  r.Get(&count);
  r.Get(&crc);
  if (version != 1 && version != 2) {
    *error = "unsupported version " + std::to_string(version);
    return false;
  }
  const size_t record_header = version == 1 ? kRecordHeaderV1 : kRecordHeaderV2;
  if (Crc32(data + kHeaderSize, size - kHeaderSize) != crc) {
    *error = "checksum mismatch";
    return false;
  }
  Reader body(data + kHeaderSize, size - kHeaderSize);
  for (uint32_t i = 0; i < count; ++i) {
    const std::string where = "record " + std::to_string(i) + ": ";
    const size_t start = body.pos();
    PatternRecord rec;
    uint32_t rec_size = 0;
    uint16_t n_pat = 0;
    if (!(body.Get(&rec_size) && body.Get(&rec.subgraph) && body.Get(&rec.op_index) &&
          body.Get(&rec.filter_tensor) && body.Get(&rec.out_c) && body.Get(&rec.in_c) &&
          body.Get(&rec.k_h) && body.Get(&rec.k_w) && body.Get(&n_pat) &&
          body.Get(&rec.group) && body.Get(&rec.filter_crc32))) {
      *error = where + "truncated";
      return false;
    }
    uint16_t op = 0, rec_flags = 0;
    if (version >= 2 && !(body.Get(&op) && body.Get(&rec_flags))) {
      *error = where + "truncated";
      return false;
    }
    if (op > 1) {
      *error = where + "unknown op kind " + std::to_string(op);
      return false;
    }
    if (rec_flags & ~(kCodesFromWeights | kOwnOrder)) {
      *error = where + "unknown record flags";
      return false;
    }
    rec.op = static_cast<RecordOp>(op);
    const uint32_t taps = uint32_t(rec.k_h) * rec.k_w;
    if (taps == 0 || taps > 32 || rec.out_c == 0 || rec.in_c == 0 || rec.group == 0 ||
        rec.out_c > (1u << 20) || rec.in_c > (1u << 20)) {
      *error = where + "bad geometry";
      return false;
    }
    if (rec.op == RecordOp::kDepthwiseConv2D && rec.in_c != 1) {
      *error = where + "a depthwise record has in_c 1";
      return false;
    }
    const uint64_t n_codes = (rec_flags & kCodesFromWeights) ? 0 : uint64_t(rec.out_c) * rec.in_c;
    const uint64_t n_order = (rec_flags & kOwnOrder) ? 0 : rec.out_c;
    const uint64_t need = record_header + 4ull * n_pat + n_codes + 4ull * n_order + 4;
    if (rec_size < need || !body.Has(rec_size - record_header)) {
      *error = where + "size inconsistent with contents";
      return false;
    }
    rec.patterns.resize(n_pat);
    for (auto& m : rec.patterns) {
      body.Get(&m);
      if (m == 0 || (taps < 32 && (m >> taps) != 0)) {
        *error = where + "pattern mask empty or outside the kernel";
        return false;
      }
    }
    const uint8_t* codes = nullptr;
    body.Bytes(n_codes, &codes);
    rec.codes.assign(codes, codes + n_codes);
    for (uint8_t c : rec.codes)
      if (c > n_pat) {
        *error = where + "kernel code beyond the pattern list";
        return false;
      }
    rec.reorder.resize(n_order);
    std::vector<bool> seen(n_order, false);
    for (auto& f : rec.reorder) {
      body.Get(&f);
      if (f >= rec.out_c || seen[f]) {
        *error = where + "reorder is not a permutation";
        return false;
      }
      seen[f] = true;
    }
    uint32_t n_tune = 0;
    body.Get(&n_tune);
    if (uint64_t(body.pos() - start) + n_tune != rec_size) {
      *error = where + "tuning block overruns the record";
      return false;
    }
    const uint8_t* tuning = nullptr;
    body.Bytes(n_tune, &tuning);
    records->push_back(std::move(rec));
  }
  if (body.pos() != size - kHeaderSize) {
    *error = "trailing bytes after the last record";
    return false;
  }
  return true;
}

}  // namespace

bool ParseMetadata(const uint8_t* data, size_t size, std::vector<PatternRecord>* records,
                   std::string* error) {
  std::vector<PatternRecord> parsed;
  records->clear();
  if (!Parse(data, size, &parsed, error)) return false;  // all or nothing
  *records = std::move(parsed);
  return true;
}

std::string CheckRecordAgainstFilter(const PatternRecord& rec, RecordOp op, const float* filter,
                                     size_t filter_bytes, int out_c, int k_h, int k_w, int in_c,
                                     std::vector<int>* kernel_pattern) {
  if (rec.op != op)
    return std::string("the record describes a ") + RecordOpName(rec.op) + ", the node is a " +
           RecordOpName(op);
  if (int64_t(rec.out_c) != out_c || int64_t(rec.in_c) != in_c || rec.k_h != k_h ||
      rec.k_w != k_w)
    return "filter shape differs from the record";
  if (filter_bytes != size_t(out_c) * k_h * k_w * in_c * sizeof(float))
    return "filter size differs from the record";
  if (Crc32(filter, filter_bytes) != rec.filter_crc32) return "filter checksum differs";
  const bool depthwise = op == RecordOp::kDepthwiseConv2D;
  std::vector<int> ids(size_t(out_c) * in_c, -1);
  std::vector<uint32_t> masks(ids.size(), 0);
  for (int o = 0; o < out_c; ++o)
    for (int t = 0; t < k_h * k_w; ++t)
      for (int i = 0; i < in_c; ++i) {
        // OHWI, or [1][k_h][k_w][C] for depthwise (in_c = 1).
        const float w = depthwise ? filter[size_t(t) * out_c + o]
                                  : filter[(size_t(o) * k_h * k_w + t) * in_c + i];
        if (w != 0.f) masks[size_t(o) * in_c + i] |= 1u << t;
      }
  if (rec.codes.empty()) {  // derived: the pattern equal to each kernel's mask
    for (size_t k = 0; k < masks.size(); ++k) {
      if (masks[k] == 0) continue;
      const auto it = std::find(rec.patterns.begin(), rec.patterns.end(), masks[k]);
      if (it == rec.patterns.end()) return "a kernel's non-zero weights match no recorded pattern";
      ids[k] = static_cast<int>(it - rec.patterns.begin());
    }
  } else {
    for (size_t k = 0; k < masks.size(); ++k) {
      const uint8_t code = rec.codes[k];
      if (masks[k] != 0 && (code == 0 || (masks[k] & ~rec.patterns[code - 1]) != 0))
        return "a non-zero weight lies outside its recorded pattern";
      ids[k] = int(code) - 1;
    }
  }
  if (kernel_pattern != nullptr) *kernel_pattern = std::move(ids);
  return "";
}

const char* RecordOpName(RecordOp op) {
  return op == RecordOp::kDepthwiseConv2D ? "DEPTHWISE_CONV_2D" : "CONV_2D";
}

}  // namespace cocopie
