// Prints every encoding form of cc/kernels/a64_asm.h over a sweep of
// registers and immediates as "hex<TAB>GNU assembler text" lines;
// tests/test_cpp_builds.py assembles the text with aarch64-linux-gnu-as and
// compares the words.  Host-independent: it builds and runs on x86-64.
#include <cstdio>
#include <string>

#include "cc/kernels/a64_asm.h"

using namespace cocopie::a64;

static void P(uint32_t w, const std::string& text) { std::printf("%08x\t%s\n", w, text.c_str()); }
static std::string X(int r) { return r == 31 ? "sp" : "x" + std::to_string(r); }
static std::string Xz(int r) { return r == 31 ? "xzr" : "x" + std::to_string(r); }
static std::string S(long long v) { return std::to_string(v); }

int main() {
  const int regs[] = {0, 1, 5, 7, 8, 15, 16, 17, 30};
  const int vregs[] = {0, 1, 7, 8, 15, 16, 17, 30, 31};
  for (int d : regs)
    for (int n : regs) {
      for (long long imm : {0LL, 1LL, 64LL, 4095LL, 4096LL, 8192LL, 4095LL * 4096})
        P(AddImm(d, n, imm), "add " + X(d) + ", " + X(n) + ", #" + S(imm));
      for (long long imm : {0LL, 16LL, 4095LL, 4096LL * 3})
        P(SubImm(d, n, imm), "sub " + X(d) + ", " + X(n) + ", #" + S(imm));
      P(SubsImm(d, n, 1), "subs " + Xz(d) + ", " + X(n) + ", #1");
      for (int m : {0, 9, 30}) P(AddReg(d, n, m), "add " + Xz(d) + ", " + Xz(n) + ", " + Xz(m));
      P(MovReg(d, n), "mov " + Xz(d) + ", " + Xz(n));
    }
  for (int d : regs)
    for (int hw = 0; hw < 4; ++hw)
      for (long long imm : {0LL, 1LL, 0x1234LL, 0xFFFFLL}) {
        P(Movz(d, imm, hw), "movz " + Xz(d) + ", #" + S(imm) + ", lsl #" + S(16 * hw));
        P(Movk(d, imm, hw), "movk " + Xz(d) + ", #" + S(imm) + ", lsl #" + S(16 * hw));
      }
  // Branches: GNU as takes a byte offset from this instruction as ".+N".
  for (long long w : {-(1LL << 18), -300LL, -1LL, 0LL, 2LL, 1000LL, (1LL << 18) - 1}) {
    P(BNe(w), "b.ne .+" + S(4 * w));
    P(BEq(w), "b.eq .+" + S(4 * w));
    P(Cbnz(3, w), "cbnz x3, .+" + S(4 * w));
  }
  for (long long w : {-(1LL << 25), -5LL, 0LL, 3LL, (1LL << 25) - 1}) P(B(w), "b .+" + S(4 * w));
  P(Ret(), "ret");
  P(Nop(), "nop");
  for (int t : vregs)
    for (int n : regs) {
      for (long long imm : {0LL, 16LL, 4096LL, 65520LL}) {
        P(LdrQ(t, n, imm), "ldr q" + S(t) + ", [" + X(n) + ", #" + S(imm) + "]");
        P(StrQ(t, n, imm), "str q" + S(t) + ", [" + X(n) + ", #" + S(imm) + "]");
      }
      for (long long imm : {-256LL, -4LL, 4LL, 12LL, 255LL}) {
        P(LdurQ(t, n, imm), "ldur q" + S(t) + ", [" + X(n) + ", #" + S(imm) + "]");
        P(SturQ(t, n, imm), "stur q" + S(t) + ", [" + X(n) + ", #" + S(imm) + "]");
      }
      P(Ld1rS4Post(t, n), "ld1r {v" + S(t) + ".4s}, [" + X(n) + "], #4");
    }
  for (int t : {8, 10, 12, 14})
    for (long long imm : {-64LL, 0LL, 16LL, 48LL, 504LL}) {
      P(StpD(t, t + 1, 31, imm), "stp d" + S(t) + ", d" + S(t + 1) + ", [sp, #" + S(imm) + "]");
      P(LdpD(t, t + 1, 31, imm), "ldp d" + S(t) + ", d" + S(t + 1) + ", [sp, #" + S(imm) + "]");
      P(StpDPre(t, t + 1, 31, imm), "stp d" + S(t) + ", d" + S(t + 1) + ", [sp, #" + S(imm) + "]!");
      P(LdpDPost(t, t + 1, 31, imm), "ldp d" + S(t) + ", d" + S(t + 1) + ", [sp], #" + S(imm));
    }
  for (int d : vregs)
    for (int n : vregs) {
      for (int m : {0, 15, 16, 31})
        for (int lane = 0; lane < 4; ++lane)
          P(FmlaLane(d, n, m, lane), "fmla v" + S(d) + ".4s, v" + S(n) + ".4s, v" + S(m) + ".s[" + S(lane) + "]");
      for (int m : {0, 17, 31}) {
        const std::string ops = " v" + S(d) + ".4s, v" + S(n) + ".4s, v" + S(m) + ".4s";
        P(FaddV(d, n, m), "fadd" + ops);
        P(FmaxV(d, n, m), "fmax" + ops);
        P(FminV(d, n, m), "fmin" + ops);
      }
    }
  for (int d : vregs) P(ZeroV(d), "movi v" + S(d) + ".2d, #0");
  return 0;
}
