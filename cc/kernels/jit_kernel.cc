// The ISA-neutral half of JitKernel: the bounds check on every call, and the
// stand-in for builds without a generator (then the static kernels run).
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cc/kernels/jit_pattern.h"

namespace cocopie {

#if !defined(COCOPIE_JIT_X86) && !defined(COCOPIE_JIT_A64)

struct JitKernel::Code {};

std::unique_ptr<JitKernel> JitKernel::Generate(const JitLayout&, std::string* error) {
#if defined(__aarch64__)
  *error = "built without the code generator (COCOPIE_JIT=OFF)";
#else
  *error = "built without a JIT assembler (install libxbyak-dev and rebuild)";
#endif
  return nullptr;
}

bool JitCompiled() { return false; }

JitKernel::~JitKernel() = default;

#endif

void JitKernel::Adopt(const JitLayout& layout, const uint8_t* code, size_t code_bytes,
                      const std::vector<size_t>& block_starts,
                      std::chrono::steady_clock::time_point t0) {
  for (size_t i = 0; i < block_starts.size(); ++i) {
    entries_.push_back(reinterpret_cast<Fn>(const_cast<uint8_t*>(code + block_starts[i])));
    const size_t end = i + 1 < block_starts.size() ? block_starts[i + 1] : code_bytes;
    block_code_bytes_.push_back(end - block_starts[i]);
  }
  code_bytes_ = code_bytes;
  layout_ = layout;
  block_rows_.clear();
  for (const JitBlock& b : layout.blocks) {
    int64_t rows = 0;
    for (int32_t o : b.out_channel) rows = std::max<int64_t>(rows, o + 1);
    block_rows_.push_back(rows);
  }
  generate_ms_ =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

bool JitKernel::Run(int block, const float* input, int64_t input_floats, float* output,
                    int64_t output_floats, int64_t start, int64_t tiles, bool* non_finite,
                    const Tail* tail, const float* residual, int64_t residual_floats) const {
  const JitLayout& L = layout_;
  if (block < 0 || block >= num_blocks()) return false;
  // Tiles [start, start + tiles * TileLen()) of a buffer of output_floats.
  // No product can wrap: start and tiles are first bounded by the plane.
  const auto fits = [&](int64_t start, int64_t tiles, int64_t output_floats) {
    if (start < 0 || tiles < 0 || start > L.out_plane ||
        tiles > (L.out_plane - start) / L.TileLen())
      return false;
    const int64_t end = start + tiles * L.TileLen();
    return end + L.max_column_offset <= L.input_floats &&
           block_rows_[block] * L.out_plane <= output_floats;
  };
  if (input_floats < L.input_floats || !fits(start, tiles, output_floats)) return false;
  if (tail != nullptr &&
      (!FusesTail() || tail->skip < 0 || tail->skip >= L.TileLen() || !fits(tail->start, 1, output_floats)))
    return false;
  if (L.check_input && non_finite == nullptr) return false;
  // The residual is read where the output is written: as large as it.
  if (L.residual != (residual != nullptr) ||
      (residual != nullptr && block_rows_[block] * L.out_plane > residual_floats))
    return false;
  if (tiles == 0 && tail == nullptr) return true;
  alignas(64) float flag[16] = {};
  CallArgs call{};
  if (tail != nullptr) {
    call.tail_in = input + tail->start;
    call.tail_out = output + tail->start;
    for (int p = tail->skip; p < L.TileLen(); ++p)
      call.mask[p / 16] |= static_cast<uint16_t>(1u << (p % 16));
  }
  if (residual != nullptr)  // two buffers' distance, as integers
    call.residual_delta = static_cast<int64_t>(reinterpret_cast<uintptr_t>(residual) -
                                               reinterpret_cast<uintptr_t>(output));
  entries_[block](input + start, L.blocks[block].weights.data(), output + start, tiles, flag,
                  &call);
  if (L.check_input) {
    uint32_t bits = 0;  // lanes of x - x: +0 unless some x was Inf or NaN
    for (int i = 0; i < L.lanes; ++i) {
      uint32_t b;
      std::memcpy(&b, &flag[i], sizeof b);
      bits |= b;
    }
    if (bits != 0) *non_finite = true;
  }
  return true;
}

}  // namespace cocopie
