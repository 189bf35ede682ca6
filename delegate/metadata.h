// Reader of the "cocopie" metadata record (format v1, docs/metadata.md) that
// the converter stores in the .tflite file.  Every read is bounds-checked;
// malformed or hostile bytes give an error string, never a crash.
#ifndef COCOPIE_DELEGATE_METADATA_H_
#define COCOPIE_DELEGATE_METADATA_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace cocopie {

struct PatternRecord {
  uint32_t subgraph = 0, op_index = 0, filter_tensor = 0;
  uint32_t out_c = 0, in_c = 0;
  uint16_t k_h = 0, k_w = 0, group = 1;
  uint32_t filter_crc32 = 0;
  std::vector<uint32_t> patterns;  // masks, bit ky*k_w+kx
  std::vector<uint8_t> codes;      // [out_c][in_c]: 0 removed, p+1 pattern p
  std::vector<uint32_t> reorder;   // reordered position -> original filter
};

// IEEE CRC-32 (zlib's crc32).
uint32_t Crc32(const void* data, size_t size);

// Parses a v1 payload. Returns false and sets *error on any problem.
bool ParseMetadata(const uint8_t* data, size_t size, std::vector<PatternRecord>* records,
                   std::string* error);

// Checks a record against a filter (OHWI float32): geometry, CRC of the
// filter bytes, and that every kernel's non-zeros lie inside its pattern
// (removed kernels all zero).  Returns an empty string if it holds.
std::string CheckRecordAgainstFilter(const PatternRecord& record, const float* filter,
                                     size_t filter_bytes, int out_c, int k_h, int k_w,
                                     int in_c);

}  // namespace cocopie

#endif  // COCOPIE_DELEGATE_METADATA_H_
