// The x86-64 code generator for JitLayout (AVX-512F and AVX2+FMA), written
// with Xbyak.  Built only when the Xbyak headers were found; otherwise
// Generate() says so and the static kernels run.
//
// Emitted per filter block, System V ABI:
//   void block(const float* in, const float* w, float* out, int64_t tiles,
//              float* flag, const JitKernel::CallArgs* call)
//   for each code segment (jit_pattern.h), for each of `tiles` tiles of
//   V*lanes positions (rbx counts, r10/r11 walk in and out), then, on
//   AVX-512 when call->tail_in is not null, the tail's tile (JitKernel::Tail:
//   its input and output addresses, and in k1..kV the lanes it stores):
//     first segment: zero the M x V accumulators (JitLayout::residual_first:
//       load the residual); else load them from out; with
//       JitLayout::prefetch_out_floats, prefetchw of the output lines that
//       many floats ahead
//     for each of the segment's columns: V input loads from in + column
//       offset (constant displacement; AVX-512 V=1: a window that crosses a
//       cache line is a valignd of two line-aligned loads kept in zmm30-31
//       for the row's next columns), then per use: AVX-512 V=1: one FMA
//       with the weight as an embedded broadcast ([rax + disp]{1to16});
//       otherwise one broadcast into a register and V FMAs
//     last segment: + bias, + the residual at out + r12 (JitLayout::residual
//       and not residual_first),
//       clamp
//     store the accumulators to out + out_channel * out_plane
//     in += V*lanes; out += V*lanes
//   check_input: every input vector loaded is also subtracted from itself
//   and ORed into a flag register, stored to `flag` at the end.
// The weight pointer rax walks the block's weights in consumption order and
// is bumped only when the next weight leaves the short displacement range,
// so an FMA is 7 bytes (EVEX, disp8*4) or 5-6 (VEX).
#include <algorithm>
#include <chrono>
#include <limits>
#include <string>

#include "cc/kernels/jit_pattern.h"

#if defined(COCOPIE_JIT_X86)
#define XBYAK_NO_OP_NAMES
#include <xbyak/xbyak.h>
#endif

namespace cocopie {

#if defined(COCOPIE_JIT_X86)

struct JitKernel::Code : Xbyak::CodeGenerator {
  explicit Code(size_t max_bytes) : Xbyak::CodeGenerator(max_bytes, Xbyak::DontSetProtectRWE) {}

  void EmitBlock(const JitLayout& lay, const JitBlock& b) {
    using namespace Xbyak;
    const bool avx512 = lay.isa == JitIsa::kAvx512;
    const int V = lay.vectors, lanes = lay.lanes;
    const int vec_bytes = lanes * 4;
    const bool embedded = avx512 && V == 1;
    const int acc_base = V + (embedded ? 0 : 1);
    const int slots = static_cast<int>(b.out_channel.size());
    // AVX-512, V = 1, M <= 29 (zmm30-31 free): a column whose window crosses a cache
    // line is shifted (valignd) out of two line-aligned loads shared with its
    // row neighbours (taps kx, kx+1, ...) instead of one split load: 1.15-1.2x
    // on 56x56 to 14x14 layers (docs/engine.md section 20); a window that no
    // neighbour shares stays one split load (section 40).  The second line
    // stays inside the proved reads (<= max_column_offset + 16).  Aligned
    // means relative to the tile's start, which is a whole line into
    // line-aligned buffers (LineFloats).
    // The input check's temporary and flag follow the accumulators.
    const int check_tmp = acc_base + slots * V, check_flag = check_tmp + 1;
    const bool check = lay.check_input;
    const bool shifted = embedded && acc_base + slots + (check ? 2 : 0) <= 30;
    // Weight displacement window: disp8 scaled by 4 for EVEX, bytes for VEX.
    const int64_t reach = avx512 ? 128 : 32;  // floats either side of wp
    auto vec = [&](int i) -> Xmm {
      if (avx512) return Zmm(i);
      return Ymm(i);
    };
    auto acc = [&](int slot, int v) { return vec(acc_base + slot * V + v); };
    auto row = [&](int slot, int v) {
      return static_cast<int32_t>(static_cast<int64_t>(b.out_channel[slot]) * lay.out_plane * 4 +
                                  v * vec_bytes);
    };
    // Arguments stay put (tiles counts the tail tile too); each segment
    // walks the tiles with its own cursors.
    const Reg64 in0 = rdi, w = rsi, out0 = rdx, tiles = rcx, flag = r8, call = r9;
    const Reg64 wp = rax, left = rbx, in = r10, out = r11, residual = r12;
    // x - x is +0 unless x is Inf or NaN; OR it into the flag.
    auto check_vec = [&](int reg) {
      if (!check) return;
      vsubps(vec(check_tmp), vec(reg), vec(reg));
      if (avx512) vpord(Zmm(check_flag), Zmm(check_flag), Zmm(check_tmp));
      else vorps(vec(check_flag), vec(check_flag), vec(check_tmp));
    };

    Label done, no_tail;
    push(rbx);
    if (lay.residual) {
      push(residual);
      mov(residual, ptr[call + 24]);  // CallArgs::residual_delta
    }
    if (check) {
      if (avx512) vpxord(Zmm(check_flag), Zmm(check_flag), Zmm(check_flag));
      else vxorps(vec(check_flag), vec(check_flag), vec(check_flag));
    }
    if (avx512) {
      cmp(qword[call], 0);  // CallArgs::tail_in
      je(no_tail);
      inc(tiles);
      L(no_tail);
    }
    test(tiles, tiles);
    jz(done, T_NEAR);
    for (const JitSegment& sg : JitSegments(b)) {
      const bool first = sg.first, last = sg.last;
      const size_t c0 = sg.c0, c1 = sg.c1, u0 = sg.u0;
      const std::vector<char>& moved = sg.moved;

      mov(left, tiles);
      mov(in, in0);
      mov(out, out0);
      Label loop, body;
      // Every lane stored, until the tail's tile.
      if (avx512)
        for (int v = 0; v < V; ++v) kxnorw(Opmask(1 + v), Opmask(1 + v), Opmask(1 + v));
      align(16);
      L(loop);
      if (avx512) {  // the last tile is the tail's, when there is one
        cmp(left, 1);
        jne(body);
        cmp(qword[call], 0);
        je(body);
        mov(in, ptr[call]);
        mov(out, ptr[call + 8]);
        for (int v = 0; v < V; ++v) kmovw(Opmask(1 + v), ptr[call + 16 + 2 * v]);
        L(body);
      }
      for (int s = 0; s < slots; ++s)
        for (int v = 0; v < V; ++v) {
          if (first && lay.residual && lay.residual_first) {
            vmovups(acc(s, v), ptr[out + residual + row(s, v)]);
          } else if (first) {
            if (avx512) vpxord(acc(s, v), acc(s, v), acc(s, v));
            else vxorps(acc(s, v), acc(s, v), acc(s, v));
          } else if (moved[s]) {
            vmovups(acc(s, v), ptr[out + row(s, v)]);
          }
        }
      // The first segment asks for the output lines of the tile
      // prefetch_out_floats ahead, so that they are owned by the time the
      // segments' stores reach that tile.
      if (first && lay.prefetch_out_floats > 0)
        for (int s = 0; s < slots; ++s)
          for (int v = 0; v < V; ++v)
            if (const int64_t at = int64_t(row(s, v)) + lay.prefetch_out_floats * 4;
                v * vec_bytes % 64 == 0 && at <= std::numeric_limits<int32_t>::max())
              prefetchw(ptr[out + static_cast<int32_t>(at)]);
      // wp points at weight `base`; BuildJitLayout proved weights * 4 fits
      // a 32-bit displacement.
      int64_t base = static_cast<int64_t>(u0);
      lea(wp, ptr[w + static_cast<int32_t>(base * 4)]);
      size_t u = u0;
      int64_t held = -1;  // the line-aligned float offset in zmm held_lo (none)
      int held_lo = 30;
      for (size_t c = c0; c < c1; ++c) {
        const int64_t off = b.column_offset[c] * 4;
        const int64_t fo = b.column_offset[c], r = fo % 16, line = fo - r;
        // A window no neighbour shares (1x1 convs on maps whose planes are
        // not whole lines, e.g. 7x7 and 14x14) is one split load: two
        // line loads and a shift would cost two more instructions and 17
        // more code bytes per column for nothing.
        bool shared = held == line || held + 16 == line;
        if (!shared && c + 1 < c1) {
          const int64_t next = b.column_offset[c + 1], next_line = next - next % 16;
          shared = next >= 0 && (next_line == line || next_line == line + 16);
        }
        if (shifted && fo >= 0 && r != 0 && line + 16 <= lay.max_column_offset && shared) {
          // Two line-aligned vectors, kept for the next columns of the row,
          // and the column's window shifted out of them.
          if (held != line) {
            if (held >= 0 && held + 16 == line) {
              held_lo ^= 1;  // the old high vector is the new low one
            } else {
              vmovups(Zmm(held_lo), ptr[in + static_cast<int32_t>(line * 4)]);
            }
            vmovups(Zmm(held_lo ^ 1), ptr[in + static_cast<int32_t>((line + 16) * 4)]);
            held = line;
          }
          valignd(Zmm(0), Zmm(held_lo ^ 1), Zmm(held_lo), static_cast<uint8_t>(r));
        } else {
          for (int v = 0; v < V; ++v) vmovups(vec(v), ptr[in + static_cast<int32_t>(off + v * vec_bytes)]);
        }
        if (check && b.column_check[c])
          for (int v = 0; v < V; ++v) check_vec(v);
        for (int32_t k = 0; k < b.column_uses[c]; ++k, ++u) {
          const int64_t idx = static_cast<int64_t>(u);
          if (idx - base >= reach) {  // re-centre: the next `2 * reach` weights are near
            add(wp, static_cast<int32_t>((idx + reach - base) * 4));
            base = idx + reach;
          }
          const int32_t disp = static_cast<int32_t>((idx - base) * 4);
          const int s = b.use_slot[u];
          if (embedded) {
            vfmadd231ps(acc(s, 0), vec(0), ptr_b[wp + disp]);
          } else {
            vbroadcastss(vec(V), ptr[wp + disp]);
            for (int v = 0; v < V; ++v) vfmadd231ps(acc(s, v), vec(v), vec(V));
          }
        }
      }
      if (last) EmitEpilogue(lay, b, vec, acc);
      for (int s = 0; s < slots; ++s)
        if (moved[s])
          for (int v = 0; v < V; ++v) {
            if (avx512) vmovups(ptr[out + row(s, v)] | Opmask(1 + v), acc(s, v));
            else vmovups(ptr[out + row(s, v)], acc(s, v));
          }
      add(in, V * vec_bytes);
      add(out, V * vec_bytes);
      dec(left);
      jnz(loop, T_NEAR);
    }
    L(done);
    if (check) vmovups(ptr[flag], vec(check_flag));
    vzeroupper();
    if (lay.residual) pop(residual);
    pop(rbx);
    ret();
  }

  // + bias, then the clamp with the bound in a free input register as the
  // first source, so NaN accumulators pass.
  template <typename Vec, typename Acc>
  void EmitEpilogue(const JitLayout& lay, const JitBlock& b, const Vec& vec, const Acc& acc) {
    using namespace Xbyak;
    const Reg64 w = rsi;
    const int V = lay.vectors;
    const int slots = static_cast<int>(b.out_channel.size());
    const int64_t tail = b.num_uses * 4;  // bias, then act_min, act_max, after the weights
    for (int s = 0; s < slots; ++s) {
      vbroadcastss(vec(0), ptr[w + static_cast<int32_t>(tail + 4 * s)]);
      for (int v = 0; v < V; ++v) vaddps(acc(s, v), acc(s, v), vec(0));
    }
    // The fused ADD: conv + residual, in this order as the unfused graph
    // adds them (one float add each, the same result).
    if (lay.residual && !lay.residual_first)
      for (int s = 0; s < slots; ++s) {
        const int64_t row0 = static_cast<int64_t>(b.out_channel[s]) * lay.out_plane * 4;
        for (int v = 0; v < V; ++v)
          vaddps(acc(s, v), acc(s, v), ptr[r11 + r12 + static_cast<int32_t>(row0 + v * lay.lanes * 4)]);
      }
    const bool lo = lay.act_min > -std::numeric_limits<float>::infinity();
    const bool hi = lay.act_max < std::numeric_limits<float>::infinity();
    for (int bound = 0; bound < 2; ++bound) {
      if (bound == 0 ? !lo : !hi) continue;
      vbroadcastss(vec(0), ptr[w + static_cast<int32_t>(tail + 4 * (slots + bound))]);
      for (int s = 0; s < slots; ++s)
        for (int v = 0; v < V; ++v) {
          if (bound == 0) vmaxps(acc(s, v), vec(0), acc(s, v));
          else vminps(acc(s, v), vec(0), acc(s, v));
        }
    }
  }
};

std::unique_ptr<JitKernel> JitKernel::Generate(const JitLayout& layout, std::string* error) {
  error->clear();
  if (layout.isa != JitIsa::kAvx2 && layout.isa != JitIsa::kAvx512) {
    *error = "no x86 code generator for this ISA";
    return nullptr;
  }
  // The prefetch distance rides in a 32-bit displacement beside a row's.
  if (layout.prefetch_out_floats < 0 || layout.prefetch_out_floats > (int64_t(1) << 24)) {
    *error = "output prefetch distance out of range";
    return nullptr;
  }
  // The register tile, the input registers and the check's two must fit
  // (BuildJitLayout keeps M there; a layout from elsewhere is checked too).
  const int max_m = JitMaxFilters(layout.isa, layout.vectors, layout.check_input);
  for (const JitBlock& b : layout.blocks)
    if (max_m == 0 || static_cast<int>(b.out_channel.size()) > max_m) {
      *error = "register tile does not fit the register file";
      return nullptr;
    }
  for (const JitBlock& b : layout.blocks)
    if (layout.check_input && b.column_check.size() != b.column_offset.size()) {
      *error = "input check flags do not match the columns";
      return nullptr;
    }
  const auto t0 = std::chrono::steady_clock::now();
  // Upper bound on the code: every instruction is at most 15 bytes.
  size_t instructions = 0;
  for (const JitBlock& b : layout.blocks)
    instructions += 40 + b.segment_begin.size() * (40 + b.out_channel.size() * layout.vectors * 2) +
                    b.column_offset.size() * layout.vectors * (layout.check_input ? 5 : 1) +
                    b.weights.size() * (layout.vectors + 2) +
                    b.out_channel.size() * (5 * layout.vectors + 1) + 4;
  // A layer this large (about 30 M kept weights) would need hundreds of MB
  // of code; the static kernels run it instead.
  constexpr size_t kMaxCodeReserve = size_t(1) << 30;
  if (instructions > kMaxCodeReserve / 15) {
    *error = "layer too large for generated code (" + std::to_string(instructions) +
             " instructions)";
    return nullptr;
  }
  std::unique_ptr<JitKernel> k(new JitKernel());
  std::vector<size_t> starts;  // byte offsets of the blocks
  try {
    k->code_.reset(new Code(instructions * 15 + 4096));
    for (const JitBlock& b : layout.blocks) {
      k->code_->align(16);
      starts.push_back(k->code_->getSize());
      k->code_->EmitBlock(layout, b);
    }
    // Write xor execute: the buffer was read-write while emitting.
    k->code_->setProtectModeRE();
  } catch (const std::exception& e) {
    *error = std::string("code generation failed: ") + e.what();
    return nullptr;
  }
  k->Adopt(layout, k->code_->getCode(), k->code_->getSize(), starts, t0);
  return k;
}

bool JitCompiled() { return true; }

JitKernel::~JitKernel() = default;

#endif  // COCOPIE_JIT_X86

}  // namespace cocopie
