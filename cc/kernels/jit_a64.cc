// The AArch64 code generator for JitLayout (NEON, 4 floats per vector),
// written with the encoder of a64_asm.h.  Built on AArch64 unless
// COCOPIE_NO_JIT; runs under qemu-user in CI (correctness only: no ARM timing
// here, docs/engine.md section 19).
//
// Emitted per filter block, AAPCS64:
//   void block(const float* in /*x0*/, const float* w /*x1*/, float* out /*x2*/,
//              int64_t tiles /*x3*/)
// the same walk as the x86 code (jit_x86.cc): per code segment, per tile of
// V*4 positions, the M x V accumulators start at zero or from `out`, each
// column's V input vectors are loaded once and feed one FMLA per use and
// vector, the last segment adds bias and clamps, and the moved slots are
// stored.  The weights are loaded four at a time into one register and each
// FMLA takes its lane (`FMLA Vd.4S, Vn.4S, Vw.S[i]`), so a weight costs a
// quarter of a load instead of an embedded broadcast.
//
// Registers: x4 tiles left, x5/x6 the tile's input/output, x7 the weight
// quad pointer, x8 the column address, x9 scratch for wide immediates, x10
// the bias and clamp bounds, x11 the output-row address.  v0..v(V-1) inputs,
// vV the weight quad, v(V+1).. accumulators; d8-d15 (callee-saved) are
// spilled around the block.  Offsets beyond an instruction's immediate are
// reached by moving x8/x11 from the previous address (usually one ADD).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cc/kernels/jit_pattern.h"

#if defined(COCOPIE_JIT_A64)
#include <sys/mman.h>
#include <unistd.h>

#include "cc/kernels/a64_asm.h"
#endif

namespace cocopie {

#if defined(COCOPIE_JIT_A64)

namespace {

namespace A = a64;

constexpr int kLeft = 4, kIn = 5, kOut = 6, kWp = 7, kCol = 8, kTmp = 9, kTail = 10, kRow = 11;

struct Emitter {
  std::vector<uint32_t> code;
  void Emit(uint32_t w) { code.push_back(w); }
  int64_t Here() const { return static_cast<int64_t>(code.size()); }

  // Xd = Xn + imm for any imm (x9 is the scratch for wide ones).  d, n < 31.
  void AddAny(int d, int n, int64_t imm) {
    if (imm == 0) {
      if (d != n) Emit(A::MovReg(d, n));
      return;
    }
    const int64_t mag = imm < 0 ? -imm : imm;
    if (imm != std::numeric_limits<int64_t>::min() && mag < (int64_t(1) << 24)) {
      int src = n;
      for (const int64_t part : {mag & ~int64_t(0xFFF), mag & 0xFFF}) {
        if (part == 0) continue;
        Emit(imm < 0 ? A::SubImm(d, src, part) : A::AddImm(d, src, part));
        src = d;
      }
      return;
    }
    const uint64_t u = static_cast<uint64_t>(imm);
    Emit(A::Movz(kTmp, u & 0xFFFF, 0));
    for (int hw = 1; hw < 4; ++hw)
      if ((u >> (16 * hw)) & 0xFFFF) Emit(A::Movk(kTmp, (u >> (16 * hw)) & 0xFFFF, hw));
    Emit(A::AddReg(d, n, kTmp));
  }
};

// An address register that walks a base register's offsets in emission
// order: `reg` holds base + `at` once moved (`moved` false: still the base).
struct Cursor {
  int base, reg;
  int64_t at = 0;
  bool moved = false;
  void Reset() { at = 0, moved = false; }
  // The register and immediates for `count` quads at byte offset `off`,
  // +16 each: moves the cursor when an immediate form cannot reach them.
  int Reach(Emitter* e, int64_t off, int count, int64_t* rel) {
    const int64_t r = off - at;
    bool direct = true;
    for (int v = 0; v < count; ++v)
      direct &= a64::FitsLdrQ(r + 16 * v) || a64::FitsUnscaled(r + 16 * v);
    if (!direct) {
      e->AddAny(reg, moved ? reg : base, r);
      at = off;
      moved = true;
    }
    *rel = off - at;
    return moved ? reg : base;
  }
};

void LoadQ(Emitter* e, int t, int n, int64_t off) {
  e->Emit(a64::FitsLdrQ(off) ? a64::LdrQ(t, n, off) : a64::LdurQ(t, n, off));
}
void StoreQ(Emitter* e, int t, int n, int64_t off) {
  e->Emit(a64::FitsLdrQ(off) ? a64::StrQ(t, n, off) : a64::SturQ(t, n, off));
}

// Returns "" or why the block cannot be encoded.
std::string EmitBlock(const JitLayout& lay, const JitBlock& b, Emitter* e) {
  const int V = lay.vectors;
  const int W = V;  // the weight quad
  const int slots = static_cast<int>(b.out_channel.size());
  if (slots < 1 || V + 1 + slots * V > 32) return "register tile does not fit the NEON file";
  // The last quad of weights may read up to 3 floats past the uses: the
  // bias and bounds that follow them (BuildJitLayout appends slots + 2).
  if (b.weights.size() < (static_cast<size_t>(b.num_uses) + 3) / 4 * 4)
    return "block weights shorter than their quads";
  auto acc = [&](int s, int v) { return V + 1 + s * V + v; };
  auto row = [&](int s, int v) {
    return static_cast<int64_t>(b.out_channel[s]) * lay.out_plane * 4 + v * 16;
  };
  // Prologue: d8-d15 are callee-saved.
  e->Emit(a64::StpDPre(8, 9, 31, -64));
  e->Emit(a64::StpD(10, 11, 31, 16));
  e->Emit(a64::StpD(12, 13, 31, 32));
  e->Emit(a64::StpD(14, 15, 31, 48));
  e->Emit(a64::Cbnz(3, 2));  // tiles > 0: skip the branch to the end
  const int64_t to_done = e->Here();
  e->Emit(a64::Nop());  // patched: B done

  Cursor col{kIn, kCol}, out_row{kOut, kRow};
  for (const JitSegment& sg : JitSegments(b)) {
    const bool first = sg.first, last = sg.last;
    const size_t c0 = sg.c0, c1 = sg.c1, u0 = sg.u0;
    const std::vector<char>& moved = sg.moved;

    e->Emit(a64::MovReg(kLeft, 3));
    e->Emit(a64::MovReg(kIn, 0));
    e->Emit(a64::MovReg(kOut, 2));
    const int64_t loop = e->Here();
    col.Reset();
    out_row.Reset();
    for (int s = 0; s < slots; ++s)
      for (int v = 0; v < V; ++v) {
        if (first) {
          e->Emit(a64::ZeroV(acc(s, v)));
        } else if (moved[s]) {
          int64_t rel;
          const int r = out_row.Reach(e, row(s, v), 1, &rel);
          LoadQ(e, acc(s, v), r, rel);
        }
      }
    // x7 = the quad holding use u0; BuildJitLayout bounds the weights.
    int64_t quad_base = static_cast<int64_t>(u0) & ~int64_t(3);
    e->AddAny(kWp, 1, quad_base * 4);
    size_t u = u0;
    for (size_t c = c0; c < c1; ++c) {
      int64_t rel;
      const int r = col.Reach(e, b.column_offset[c] * 4, V, &rel);
      for (int v = 0; v < V; ++v) LoadQ(e, v, r, rel + 16 * v);
      for (int32_t k = 0; k < b.column_uses[c]; ++k, ++u) {
        const int64_t quad = static_cast<int64_t>(u) & ~int64_t(3);
        if (u == u0 || (u & 3) == 0) {  // the next quad (only vW holds weights)
          int64_t off = (quad - quad_base) * 4;
          if (!a64::FitsLdrQ(off)) {
            e->AddAny(kWp, kWp, off);
            quad_base = quad;
            off = 0;
          }
          e->Emit(a64::LdrQ(W, kWp, off));
        }
        const int s = b.use_slot[u];
        for (int v = 0; v < V; ++v) e->Emit(a64::FmlaLane(acc(s, v), v, W, static_cast<int>(u & 3)));
      }
    }
    if (last) {
      // + bias (slot order), then the clamp: FMAX/FMIN return NaN for a NaN
      // accumulator, as stock TFLite's clamp passes it.  One difference from
      // x86 and TFLite: FMAX(+0, -0) is +0 where they keep the -0 (equal
      // values, only the sign of a zero differs).
      e->AddAny(kTail, 1, b.num_uses * 4);
      for (int s = 0; s < slots; ++s) {
        e->Emit(a64::Ld1rS4Post(0, kTail));
        for (int v = 0; v < V; ++v) e->Emit(a64::FaddV(acc(s, v), acc(s, v), 0));
      }
      const bool lo = lay.act_min > -std::numeric_limits<float>::infinity();
      const bool hi = lay.act_max < std::numeric_limits<float>::infinity();
      for (int bound = 0; bound < 2; ++bound) {
        // x10 is at act_min now, then at act_max.
        if (bound == 0 ? !lo : !hi) {
          if (bound == 0) e->Emit(a64::AddImm(kTail, kTail, 4));
          continue;
        }
        e->Emit(a64::Ld1rS4Post(0, kTail));
        for (int s = 0; s < slots; ++s)
          for (int v = 0; v < V; ++v)
            e->Emit(bound == 0 ? a64::FmaxV(acc(s, v), 0, acc(s, v)) : a64::FminV(acc(s, v), 0, acc(s, v)));
      }
    }
    for (int s = 0; s < slots; ++s)
      if (moved[s])
        for (int v = 0; v < V; ++v) {
          int64_t rel;
          const int r = out_row.Reach(e, row(s, v), 1, &rel);
          StoreQ(e, acc(s, v), r, rel);
        }
    e->Emit(a64::AddImm(kIn, kIn, V * 16));
    e->Emit(a64::AddImm(kOut, kOut, V * 16));
    e->Emit(a64::SubsImm(kLeft, kLeft, 1));
    const int64_t back = loop - e->Here();
    if (a64::FitsBranch19(back)) {
      e->Emit(a64::BNe(back));
    } else if (a64::FitsBranch26(back - 1)) {
      e->Emit(a64::BEq(2));
      e->Emit(a64::B(back - 1));
    } else {
      return "code segment too long for a branch";
    }
  }
  const int64_t done = e->Here();
  if (!a64::FitsBranch26(done - to_done)) return "block too long for a branch";
  e->code[to_done] = a64::B(done - to_done);
  e->Emit(a64::LdpD(10, 11, 31, 16));
  e->Emit(a64::LdpD(12, 13, 31, 32));
  e->Emit(a64::LdpD(14, 15, 31, 48));
  e->Emit(a64::LdpDPost(8, 9, 31, 64));
  e->Emit(a64::Ret());
  return "";
}

}  // namespace

// The code's pages: written while read-write, then read-execute only.
struct JitKernel::Code {
  void* base = MAP_FAILED;
  size_t bytes = 0;
  ~Code() {
    if (base != MAP_FAILED) munmap(base, bytes);
  }
};

std::unique_ptr<JitKernel> JitKernel::Generate(const JitLayout& layout, std::string* error) {
  error->clear();
  if (layout.isa != JitIsa::kNeon) {
    *error = "no AArch64 code generator for this ISA";
    return nullptr;
  }
  if (layout.check_input) {
    *error = "the NEON generator does not check its input (JitChecksInput)";
    return nullptr;
  }
  if (layout.residual) {
    *error = "the NEON generator does not add a residual (JitKernel::AddsResidual)";
    return nullptr;
  }
  const auto t0 = std::chrono::steady_clock::now();
  // An upper bound on the instructions, before any is emitted: a layer that
  // would need over 1 GB of code runs static (as on x86).
  size_t bound = 0;
  for (const JitBlock& b : layout.blocks) {
    const size_t slot_vectors = b.out_channel.size() * layout.vectors;
    // Per segment: setup, an accumulator load and store (each up to 5
    // address instructions), the epilogue; per column an address and V
    // loads; per use V FMLAs and, every fourth, a quad load (a re-base
    // included).
    bound += 16 + b.segment_begin.size() * (24 + slot_vectors * 15 + b.out_channel.size()) +
             b.column_offset.size() * (5 + layout.vectors) +
             b.weights.size() * (layout.vectors + 6);
  }
  if (bound > (size_t(1) << 28)) {
    *error = "layer too large for generated code (" + std::to_string(bound) + " instructions)";
    return nullptr;
  }
  Emitter e;
  std::vector<size_t> starts;
  for (const JitBlock& b : layout.blocks) {
    while (e.code.size() % 4) e.Emit(a64::Nop());  // 16-byte aligned entries
    starts.push_back(e.code.size());
    const std::string why = EmitBlock(layout, b, &e);
    if (!why.empty()) {
      *error = "code generation failed: " + why;
      return nullptr;
    }
  }
  std::unique_ptr<JitKernel> k(new JitKernel());
  k->code_.reset(new Code());
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t used = e.code.size() * 4;
  k->code_->bytes = std::max(page, (used + page - 1) / page * page);
  k->code_->base = mmap(nullptr, k->code_->bytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (k->code_->base == MAP_FAILED) {
    *error = "code generation failed: cannot map " + std::to_string(k->code_->bytes) + " bytes";
    return nullptr;
  }
  char* code = static_cast<char*>(k->code_->base);
  std::memcpy(code, e.code.data(), used);
  // Write xor execute, then make the instruction side see the new words.
  if (mprotect(code, k->code_->bytes, PROT_READ | PROT_EXEC) != 0) {
    *error = "code generation failed: mprotect(PROT_EXEC) refused";
    return nullptr;
  }
  __builtin___clear_cache(code, code + used);
  for (size_t& s : starts) s *= 4;  // instructions -> bytes
  k->Adopt(layout, reinterpret_cast<const uint8_t*>(code), used, starts, t0);
  return k;
}

bool JitCompiled() { return true; }

JitKernel::~JitKernel() = default;

#endif  // COCOPIE_JIT_A64

}  // namespace cocopie
