// Reader of the "cocopie" metadata record (formats v1 and v2, docs/metadata.md) that
// the converter stores in the .tflite file.  Every read is bounds-checked;
// malformed or hostile bytes give an error string, never a crash.
#ifndef COCOPIE_DELEGATE_METADATA_H_
#define COCOPIE_DELEGATE_METADATA_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace cocopie {

// The operator a record describes (v1 records are all CONV_2D).
enum class RecordOp : uint16_t { kConv2D = 0, kDepthwiseConv2D = 1 };
const char* RecordOpName(RecordOp op);

struct PatternRecord {
  uint32_t subgraph = 0, op_index = 0, filter_tensor = 0;
  RecordOp op = RecordOp::kConv2D;
  // CONV_2D: the OHWI filter's dims; DEPTHWISE_CONV_2D ([1, k_h, k_w, C]):
  // out_c = C, in_c = 1 (one kernel per channel).
  uint32_t out_c = 0, in_c = 0;
  uint16_t k_h = 0, k_w = 0, group = 1;
  uint32_t filter_crc32 = 0;
  std::vector<uint32_t> patterns;  // masks, bit ky*k_w+kx
  // [out_c][in_c]: 0 removed, p+1 pattern p.  Empty when the record leaves
  // them to the weights (v2): each kernel's pattern is the one equal to its
  // non-zero positions.
  std::vector<uint8_t> codes;
  // Reordered position -> original filter; empty: the reader's own order.
  std::vector<uint32_t> reorder;
};

// IEEE CRC-32 (zlib's crc32).
uint32_t Crc32(const void* data, size_t size);

// Parses a v1 or v2 payload. Returns false and sets *error on any problem.
bool ParseMetadata(const uint8_t* data, size_t size, std::vector<PatternRecord>* records,
                   std::string* error);

// Checks a record against the filter of an `op` node (float32, OHWI for
// CONV_2D, [1, k_h, k_w, out_c] for DEPTHWISE_CONV_2D with in_c = 1): op
// kind, geometry, CRC of the filter bytes, and every kernel's non-zeros
// inside its pattern (removed kernels all zero; with codes left to the
// weights, every non-zero kernel's mask one of the patterns).  Fills
// `kernel_pattern` ([out_c][in_c] pattern ids, -1 removed) if not null.
// Returns an empty string if it holds.
std::string CheckRecordAgainstFilter(const PatternRecord& record, RecordOp op, const float* filter,
                                     size_t filter_bytes, int out_c, int k_h, int k_w, int in_c,
                                     std::vector<int>* kernel_pattern = nullptr);

}  // namespace cocopie

#endif  // COCOPIE_DELEGATE_METADATA_H_
