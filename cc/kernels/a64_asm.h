// The handful of AArch64 instructions the generated pattern kernels use,
// encoded by hand (fixed 32-bit words, ARM ARM section C4/C7).  Why not a
// library: asmjit is packaged for Debian but not for the Android NDK, where
// this code has to run; the generator needs 25 encodings, each checked
// against GNU as in tests/test_cpp_builds.py (a64_encode_dump.cc prints
// them, aarch64-linux-gnu-as assembles the same text).
//
// Registers are plain numbers: X0-X30 (31 = SP or XZR, as the instruction
// defines) and V0-V31.  Callers check ranges with the Fits* helpers first;
// an encoder given an out-of-range field aborts, it never emits a wrong word.
#ifndef COCOPIE_CC_KERNELS_A64_ASM_H_
#define COCOPIE_CC_KERNELS_A64_ASM_H_

#include <cstdint>
#include <cstdlib>

namespace cocopie {
namespace a64 {

inline uint32_t Field(int64_t v, int bits, int shift) {
  if (v < 0 || v >= (int64_t(1) << bits)) std::abort();  // a generator bug
  return static_cast<uint32_t>(v) << shift;
}
inline uint32_t Signed(int64_t v, int bits, int shift) {
  const int64_t lim = int64_t(1) << (bits - 1);
  if (v < -lim || v >= lim) std::abort();
  return static_cast<uint32_t>(v & ((int64_t(1) << bits) - 1)) << shift;
}
inline uint32_t R(int r, int shift) { return Field(r, 5, shift); }

// Immediates each form accepts.
inline bool FitsLdrQ(int64_t bytes) { return bytes >= 0 && bytes % 16 == 0 && bytes / 16 < 4096; }
inline bool FitsUnscaled(int64_t bytes) { return bytes >= -256 && bytes < 256; }
inline bool FitsAddImm(int64_t v) {
  return (v >= 0 && v < 4096) || (v >= 0 && v % 4096 == 0 && v / 4096 < 4096);
}
inline bool FitsBranch19(int64_t words) { return words >= -(1 << 18) && words < (1 << 18); }
inline bool FitsBranch26(int64_t words) { return words >= -(1 << 25) && words < (1 << 25); }

// --- integer -------------------------------------------------------------
// ADD/SUB Xd, Xn, #imm (imm < 4096, or a multiple of 4096 below 2^24).
inline uint32_t AddImm(int d, int n, int64_t imm) {
  if (!FitsAddImm(imm)) std::abort();
  const bool sh = imm >= 4096;
  return 0x91000000u | (sh ? 1u << 22 : 0) | Field(sh ? imm / 4096 : imm, 12, 10) | R(n, 5) | R(d, 0);
}
inline uint32_t SubImm(int d, int n, int64_t imm) {
  if (!FitsAddImm(imm)) std::abort();
  const bool sh = imm >= 4096;
  return 0xD1000000u | (sh ? 1u << 22 : 0) | Field(sh ? imm / 4096 : imm, 12, 10) | R(n, 5) | R(d, 0);
}
// SUBS Xd, Xn, #imm12 (sets the flags).
inline uint32_t SubsImm(int d, int n, int64_t imm) {
  return 0xF1000000u | Field(imm, 12, 10) | R(n, 5) | R(d, 0);
}
// ADD Xd, Xn, Xm.
inline uint32_t AddReg(int d, int n, int m) { return 0x8B000000u | R(m, 16) | R(n, 5) | R(d, 0); }
// MOV Xd, Xm (ORR Xd, XZR, Xm).
inline uint32_t MovReg(int d, int m) { return 0xAA0003E0u | R(m, 16) | R(d, 0); }
// MOVZ / MOVK Xd, #imm16, LSL #(16 * hw).
inline uint32_t Movz(int d, int64_t imm16, int hw) {
  return 0xD2800000u | Field(hw, 2, 21) | Field(imm16, 16, 5) | R(d, 0);
}
inline uint32_t Movk(int d, int64_t imm16, int hw) {
  return 0xF2800000u | Field(hw, 2, 21) | Field(imm16, 16, 5) | R(d, 0);
}

// --- branches (offsets in instructions from this one) --------------------
inline uint32_t B(int64_t words) { return 0x14000000u | Signed(words, 26, 0); }
inline uint32_t BNe(int64_t words) { return 0x54000001u | Signed(words, 19, 5); }
inline uint32_t BEq(int64_t words) { return 0x54000000u | Signed(words, 19, 5); }
inline uint32_t Cbnz(int t, int64_t words) { return 0xB5000000u | Signed(words, 19, 5) | R(t, 0); }
inline uint32_t Ret() { return 0xD65F03C0u; }
inline uint32_t Nop() { return 0xD503201Fu; }

// --- loads and stores of Q (128-bit) registers ----------------------------
// LDR/STR Qt, [Xn, #imm] (imm a multiple of 16 below 65536).
inline uint32_t LdrQ(int t, int n, int64_t imm) {
  if (imm % 16 != 0) std::abort();
  return 0x3DC00000u | Field(imm / 16, 12, 10) | R(n, 5) | R(t, 0);
}
inline uint32_t StrQ(int t, int n, int64_t imm) {
  if (imm % 16 != 0) std::abort();
  return 0x3D800000u | Field(imm / 16, 12, 10) | R(n, 5) | R(t, 0);
}
// LDUR/STUR Qt, [Xn, #simm9].
inline uint32_t LdurQ(int t, int n, int64_t imm) {
  return 0x3CC00000u | Signed(imm, 9, 12) | R(n, 5) | R(t, 0);
}
inline uint32_t SturQ(int t, int n, int64_t imm) {
  return 0x3C800000u | Signed(imm, 9, 12) | R(n, 5) | R(t, 0);
}
// LD1R {Vt.4S}, [Xn], #4: one float to all four lanes, Xn advanced.
inline uint32_t Ld1rS4Post(int t, int n) { return 0x4DDFC800u | R(n, 5) | R(t, 0); }
// STP / LDP Dt1, Dt2 (the callee-saved low halves of V8-V15).
inline uint32_t StpDPre(int t1, int t2, int n, int64_t imm) {  // [Xn, #imm]!
  if (imm % 8 != 0) std::abort();
  return 0x6D800000u | Signed(imm / 8, 7, 15) | R(t2, 10) | R(n, 5) | R(t1, 0);
}
inline uint32_t StpD(int t1, int t2, int n, int64_t imm) {  // [Xn, #imm]
  if (imm % 8 != 0) std::abort();
  return 0x6D000000u | Signed(imm / 8, 7, 15) | R(t2, 10) | R(n, 5) | R(t1, 0);
}
inline uint32_t LdpD(int t1, int t2, int n, int64_t imm) {  // [Xn, #imm]
  if (imm % 8 != 0) std::abort();
  return 0x6D400000u | Signed(imm / 8, 7, 15) | R(t2, 10) | R(n, 5) | R(t1, 0);
}
inline uint32_t LdpDPost(int t1, int t2, int n, int64_t imm) {  // [Xn], #imm
  if (imm % 8 != 0) std::abort();
  return 0x6CC00000u | Signed(imm / 8, 7, 15) | R(t2, 10) | R(n, 5) | R(t1, 0);
}

// --- single-precision vector arithmetic, 4 lanes --------------------------
// FMLA Vd.4S, Vn.4S, Vm.S[lane]: the weight is one lane of a loaded quad.
inline uint32_t FmlaLane(int d, int n, int m, int lane) {
  const uint32_t l = Field(lane, 2, 0);
  return 0x4F801000u | ((l & 1u) << 21) | ((l >> 1) << 11) | R(m, 16) | R(n, 5) | R(d, 0);
}
inline uint32_t FaddV(int d, int n, int m) { return 0x4E20D400u | R(m, 16) | R(n, 5) | R(d, 0); }
// FMAX/FMIN return NaN when either operand is NaN (not the *NM forms).
inline uint32_t FmaxV(int d, int n, int m) { return 0x4E20F400u | R(m, 16) | R(n, 5) | R(d, 0); }
inline uint32_t FminV(int d, int n, int m) { return 0x4EA0F400u | R(m, 16) | R(n, 5) | R(d, 0); }
// MOVI Vd.2D, #0.
inline uint32_t ZeroV(int d) { return 0x6F00E400u | R(d, 0); }

}  // namespace a64
}  // namespace cocopie

#endif  // COCOPIE_CC_KERNELS_A64_ASM_H_
