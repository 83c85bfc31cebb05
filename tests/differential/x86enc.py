"""A small x86-64 encoder for the integer subset the differential fuzzer uses.

Self-contained (no assembler needed): each ``Op`` knows how to encode itself.
``random_program(rng, n)`` draws a sequence that cannot fault when it runs with
R15 pointing at a 256-byte scratch buffer and RSP at a usable stack: divisors
are forced non-zero and small enough, PUSH/POP come in balanced pairs, memory
operands are [R15 + disp8] inside the buffer, and RSP/R15 are never written.
"""

from __future__ import annotations

import random
from typing import List, Sequence

#: Registers the generated code may write (not RSP=4, not R15=15).
GPRS = [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
SIZES = [1, 2, 4, 8]


def _rex(w: bool, r: int, x: int, b: int, force: bool = False) -> bytes:
    v = 0x40 | (8 if w else 0) | ((r >> 3) << 2) | ((x >> 3) << 1) | (b >> 3)
    if v != 0x40 or force:
        return bytes([v])
    return b""


def _prefix(sz: int) -> bytes:
    return b"\x66" if sz == 2 else b""


def rr(opcode: bytes, sz: int, reg: int, rm: int, *, byte_op: bool = False) -> bytes:
    """[66] [REX] opcode ModRM(11, reg, rm). Byte registers 4..7 use REX (spl..dil)."""
    force = sz == 1 and (reg >= 4 or rm >= 4)
    return (_prefix(sz) + _rex(sz == 8, reg, 0, rm, force) + opcode
            + bytes([0xC0 | ((reg & 7) << 3) | (rm & 7)]))


def rm15(opcode: bytes, sz: int, reg: int, disp: int) -> bytes:
    """[66] [REX] opcode ModRM(01, reg, r15) disp8: the operand [r15 + disp]."""
    force = sz == 1 and reg >= 4
    return (_prefix(sz) + _rex(sz == 8, reg, 0, 15, force) + opcode
            + bytes([0x40 | ((reg & 7) << 3) | 7, disp & 0xFF]))


def imm(v: int, n: int) -> bytes:
    return (v & ((1 << (8 * n)) - 1)).to_bytes(n, "little")


def _op8(opc: int, sz: int) -> bytes:
    return bytes([opc if sz == 1 else opc + 1])


class Gen:
    """Draws instructions from an RNG."""

    def __init__(self, rng: random.Random, *, cpl0_safe: bool = False,
                 host_emulator_safe: bool = False) -> None:
        self.r = rng
        self.host_emulator_safe = host_emulator_safe

    def reg(self) -> int:
        return self.r.choice(GPRS)

    def sz(self) -> int:
        return self.r.choice(SIZES)

    def disp(self, sz: int) -> int:
        return self.r.randrange(0, 128 - 8, 1)

    # -- families ---------------------------------------------------------------------------
    def alu_rr(self) -> bytes:
        op, sz = self.r.randrange(8), self.sz()
        if self.r.random() < 0.5:
            return rr(_op8(op * 8, sz), sz, self.reg(), self.reg())
        return rm15(_op8(op * 8 + 2, sz), sz, self.reg(), self.disp(sz))

    def alu_mem_dst(self) -> bytes:
        op, sz = self.r.randrange(8), self.sz()
        return rm15(_op8(op * 8, sz), sz, self.reg(), self.disp(sz))

    def alu_imm(self) -> bytes:
        op, sz = self.r.randrange(8), self.sz()
        rm = self.reg()
        if sz == 1:
            return rr(b"\x80", 1, op, rm) + imm(self.r.randrange(256), 1)
        if self.r.random() < 0.5:
            return rr(b"\x83", sz, op, rm) + imm(self.r.randrange(256), 1)
        return rr(b"\x81", sz, op, rm) + imm(self.r.getrandbits(32), 2 if sz == 2 else 4)

    def test(self) -> bytes:
        sz = self.sz()
        return rr(_op8(0x84, sz), sz, self.reg(), self.reg())

    def shift(self) -> bytes:
        op, sz = self.r.choice([0, 1, 2, 3, 4, 5, 7]), self.sz()
        rm = self.reg()
        k = self.r.randrange(3)
        if k == 0:
            return rr(_op8(0xD0, sz), sz, op, rm)
        if k == 1:
            return rr(_op8(0xC0, sz), sz, op, rm) + imm(self.r.randrange(64), 1)
        return rr(_op8(0xD2, sz), sz, op, rm)  # by CL

    def unary(self) -> bytes:
        sz = self.sz()
        k = self.r.randrange(4)
        if k < 2:
            return rr(_op8(0xFE, sz), sz, k, self.reg())  # inc / dec
        return rr(_op8(0xF6, sz), sz, k, self.reg())  # not / neg

    def mul(self) -> bytes:
        sz = self.sz()
        k = self.r.randrange(5)
        if k == 0:
            return rr(_op8(0xF6, sz), sz, self.r.choice([4, 5]), self.reg())
        if sz == 1:
            sz = 4
        if k == 1:
            return rr(b"\x0f\xaf", sz, self.reg(), self.reg())
        if k == 2:
            return rr(b"\x6b", sz, self.reg(), self.reg()) + imm(self.r.randrange(256), 1)
        if k == 3:
            return rr(b"\x69", sz, self.reg(), self.reg()) + imm(self.r.getrandbits(32),
                                                                   2 if sz == 2 else 4)
        return rm15(b"\x0f\xaf", sz, self.reg(), self.disp(sz))

    def div(self) -> bytes:
        """DIV/IDIV with a divisor forced positive and non-zero and a safe dividend."""
        sz = self.sz()
        d = self.r.choice([r for r in GPRS if r not in (0, 2)])
        signed = self.r.random() < 0.5
        out = b""
        # divisor: d = (d >> 1) | 1  (positive, odd, non-zero)
        out += rr(_op8(0xD0, sz), sz, 5, d)  # shr d, 1
        out += (rr(b"\x80", 1, 1, d) + b"\x01") if sz == 1 else \
            (rr(b"\x83", sz, 1, d) + b"\x01")  # or d, 1
        if sz == 1:
            # AX / d8: make AH small: movzx eax, al keeps the quotient in range for div
            out += rr(b"\x0f\xb6", 4, 0, 0)
            if signed:
                out += b"\x66\x98"  # cbw
        elif signed:
            out += {2: b"\x66\x99", 4: b"\x99", 8: b"\x48\x99"}[sz]  # cwd/cdq/cqo
        else:
            out += rr(b"\x31", 4, 2, 2)  # xor edx, edx
        out += rr(_op8(0xF6, sz), sz, 7 if signed else 6, d)
        return out

    def bitops(self) -> bytes:
        sz = self.r.choice([2, 4, 8])
        k = self.r.randrange(6)
        if k == 0:
            return rr(self.r.choice([b"\x0f\xa3", b"\x0f\xab", b"\x0f\xb3", b"\x0f\xbb"]), sz,
                      self.reg(), self.reg())
        if k == 1:
            return rr(b"\x0f\xba", sz, self.r.randrange(4, 8), self.reg()) + \
                imm(self.r.randrange(256), 1)
        if k == 2:
            return rr(self.r.choice([b"\x0f\xbc", b"\x0f\xbd"]), sz, self.reg(), self.reg())
        if k == 3:
            return b"\xf3" + rr(self.r.choice([b"\x0f\xbc", b"\x0f\xbd", b"\x0f\xb8"]), sz,
                                self.reg(), self.reg())
        if k == 4:
            r = self.reg()
            s = self.r.choice([4, 8])
            return _rex(s == 8, 0, 0, r) + bytes([0x0F, 0xC8 | (r & 7)])  # bswap
        src = self.reg()
        if self.r.random() < 0.5:
            return rr(self.r.choice([b"\x0f\xa4", b"\x0f\xac"]), sz, src, self.reg()) + \
                imm(self.r.randrange(64), 1)
        return rr(self.r.choice([b"\x0f\xa5", b"\x0f\xad"]), sz, src, self.reg())

    def cond(self) -> bytes:
        cc = self.r.randrange(16)
        if self.r.random() < 0.5:
            return rr(bytes([0x0F, 0x90 + cc]), 1, 0, self.reg())
        sz = self.r.choice([2, 4, 8])
        return rr(bytes([0x0F, 0x40 + cc]), sz, self.reg(), self.reg())

    def moves(self) -> bytes:
        k = self.r.randrange(6)
        if k == 0:
            sz = self.sz()
            return rr(_op8(0x88, sz), sz, self.reg(), self.reg())
        if k == 1:
            sz = self.r.choice([2, 4, 8])
            return rr(self.r.choice([b"\x0f\xb6", b"\x0f\xbe"]), sz, self.reg(), self.reg())
        if k == 2:
            sz = self.r.choice([4, 8])
            return rr(self.r.choice([b"\x0f\xb7", b"\x0f\xbf"]), sz, self.reg(), self.reg())
        if k == 3:
            return rr(b"\x63", 8, self.reg(), self.reg())  # movsxd
        if k == 4:
            r = self.reg()
            sz = self.r.choice([4, 8])
            return _rex(sz == 8, 0, 0, r) + bytes([0xB8 | (r & 7)]) + imm(self.r.getrandbits(64),
                                                                          sz)
        sz = self.sz()
        return rm15(_op8(0x88, sz), sz, self.reg(), self.disp(sz))

    def lea(self) -> bytes:
        sz = self.r.choice([2, 4, 8])
        dst, base, index = self.reg(), self.reg(), self.reg()
        scale = self.r.randrange(4)
        return (_prefix(sz) + _rex(sz == 8, dst, index, base) + b"\x8d"
                + bytes([0x44 | ((dst & 7) << 3), (scale << 6) | ((index & 7) << 3) | (base & 7),
                         self.r.randrange(256)]))

    def xchg(self) -> bytes:
        sz = self.sz()
        k = self.r.randrange(4)
        if k == 0:
            return rr(_op8(0x86, sz), sz, self.reg(), self.reg())
        if k == 1:
            return rr(b"\x0f" + _op8(0xC0, sz), sz, self.reg(), self.reg())  # xadd
        if k == 2:
            return rr(b"\x0f" + _op8(0xB0, sz), sz, self.reg(), self.reg())  # cmpxchg
        return rm15(b"\x0f" + _op8(0xB0, sz), sz, self.reg(), self.disp(sz))

    def stack(self) -> bytes:
        a, b = self.reg(), self.reg()
        k = self.r.randrange(3)
        if k == 0:
            push = _rex(False, 0, 0, a) + bytes([0x50 | (a & 7)])
        elif k == 1:
            push = b"\x6a" + imm(self.r.randrange(256), 1)
        else:
            # pushfq; pop; keep the arithmetic flags only (IOPL/IF differ between harnesses)
            pop = _rex(False, 0, 0, b) + bytes([0x58 | (b & 7)])
            return b"\x9c" + pop + rr(b"\x81", 8, 4, b) + imm(0xCFF, 4)
        pop = _rex(False, 0, 0, b) + bytes([0x58 | (b & 7)])
        return push + pop

    def acc(self) -> bytes:
        """Accumulator forms: ALU/TEST AL/eAX, imm; XCHG eAX, r; MOV r, imm."""
        sz = self.sz()
        k = self.r.randrange(3)
        if k == 0:
            op = self.r.choice([self.r.randrange(8) * 8 + 4, 0xA8])
            if sz == 1:
                return bytes([op]) + imm(self.r.randrange(256), 1)
            return _prefix(sz) + _rex(sz == 8, 0, 0, 0) + bytes([op + 1]) + \
                imm(self.r.getrandbits(32), 2 if sz == 2 else 4)
        if k == 1:
            r = self.reg()
            sz = self.r.choice([2, 4, 8])
            return _prefix(sz) + _rex(sz == 8, 0, 0, r) + bytes([0x90 | (r & 7)])
        r = self.reg()
        return (_rex(False, 0, 0, r, r >= 4) + bytes([0xB0 | (r & 7)])
                + imm(self.r.randrange(256), 1))

    def misc(self) -> bytes:
        return self.r.choice([b"\x98", b"\x66\x98", b"\x48\x98", b"\x99", b"\x66\x99",
                              b"\x48\x99", b"\x9f", b"\x9e", b"\xf8", b"\xf9", b"\xf5", b"\x90"])

    FAMILIES = ("alu_rr", "alu_mem_dst", "alu_imm", "test", "shift", "unary", "mul", "div",
                "bitops", "cond", "moves", "lea", "xchg", "stack", "misc", "acc")

    def insn(self, families: Sequence[str] = FAMILIES) -> bytes:
        return bytes(getattr(self, self.r.choice(list(families)))())


def random_program(rng: random.Random, n: int, families: Sequence[str] = Gen.FAMILIES
                   ) -> List[bytes]:
    g = Gen(rng)
    return [g.insn(families) for _ in range(n)]


# -- 16/32-bit code ------------------------------------------------------------------------
LEGACY_REGS = [0, 1, 2, 3, 5, 6, 7]  # not SP


def legacy_program(rng: random.Random, n: int, bits: int) -> List[bytes]:
    """Register-only integer instructions for 16- or 32-bit code (no REX, no memory,
    nothing that faults), for the real/protected-mode comparison with KVM."""

    def pfx(sz: int) -> bytes:
        if sz == 1:
            return b""
        return b"\x66" if (sz == 2) != (bits == 16) else b""

    def op8(o: int, sz: int) -> bytes:
        return bytes([o if sz == 1 else o + 1])

    def rrl(opc: bytes, sz: int, reg: int, rm: int) -> bytes:
        return pfx(sz) + opc + bytes([0xC0 | (reg << 3) | rm])

    def r() -> int:
        return rng.choice(LEGACY_REGS)

    def bytereg() -> int:
        return rng.randrange(8)

    def izz(sz: int) -> bytes:
        return imm(rng.getrandbits(32), 2 if sz == 2 else 4)

    out: List[bytes] = []
    for _ in range(n):
        sz = rng.choice([1, 2, 4])
        k = rng.randrange(14)
        if k == 0:
            rm = bytereg() if sz == 1 else r()
            out.append(rrl(op8(rng.randrange(8) * 8, sz), sz, bytereg() if sz == 1 else r(), rm))
        elif k == 1:
            rm = bytereg() if sz == 1 else r()
            if sz == 1:
                out.append(rrl(b"\x80", 1, rng.randrange(8), rm) + imm(rng.randrange(256), 1))
            elif rng.random() < 0.5:
                out.append(rrl(b"\x83", sz, rng.randrange(8), rm) + imm(rng.randrange(256), 1))
            else:
                out.append(rrl(b"\x81", sz, rng.randrange(8), rm) + izz(sz))
        elif k == 2:
            rm = bytereg() if sz == 1 else r()
            op = rng.choice([0, 1, 2, 3, 4, 5, 7])
            form = rng.randrange(3)
            if form == 0:
                out.append(rrl(op8(0xD0, sz), sz, op, rm))
            elif form == 1:
                out.append(rrl(op8(0xC0, sz), sz, op, rm) + imm(rng.randrange(32), 1))
            else:
                out.append(rrl(op8(0xD2, sz), sz, op, rm))
        elif k == 3:
            rm = bytereg() if sz == 1 else r()
            sub = rng.randrange(4)
            out.append(rrl(op8(0xFE if sub < 2 else 0xF6, sz), sz, sub, rm))
        elif k == 4:
            rm = bytereg() if sz == 1 else r()
            out.append(rrl(op8(0xF6, sz), sz, rng.choice([4, 5]), rm))
        elif k == 5:
            sz = rng.choice([2, 4])
            form = rng.randrange(3)
            if form == 0:
                out.append(rrl(b"\x0f\xaf", sz, r(), r()))
            elif form == 1:
                out.append(rrl(b"\x6b", sz, r(), r()) + imm(rng.randrange(256), 1))
            else:
                out.append(rrl(b"\x69", sz, r(), r()) + izz(sz))
        elif k == 6:
            out.append(rrl(bytes([0x0F, 0x90 + rng.randrange(16)]), 1, 0, bytereg()))
        elif k == 7:
            sz = rng.choice([2, 4])
            out.append(rrl(bytes([0x0F, 0x40 + rng.randrange(16)]), sz, r(), r()))
        elif k == 8:
            sz = rng.choice([2, 4])
            out.append(rrl(rng.choice([b"\x0f\xb6", b"\x0f\xbe"]), sz, r(), bytereg()))
        elif k == 9:
            rm = bytereg() if sz == 1 else r()
            reg = bytereg() if sz == 1 else r()
            out.append(rrl(rng.choice([op8(0x86, sz), b"\x0f" + op8(0xC0, sz)]), sz, reg, rm))
        elif k == 10:
            sz = rng.choice([2, 4])
            form = rng.randrange(3)
            if form == 0:
                out.append(rrl(rng.choice([b"\x0f\xa3", b"\x0f\xab", b"\x0f\xb3", b"\x0f\xbb"]),
                               sz, r(), r()))
            elif form == 1:
                out.append(rrl(b"\x0f\xba", sz, rng.randrange(4, 8), r()) +
                           imm(rng.randrange(256), 1))
            else:
                out.append(rrl(rng.choice([b"\x0f\xbc", b"\x0f\xbd"]), sz, r(), r()))
        elif k == 11:
            out.append(rng.choice([b"\x98", b"\x99", b"\x9f", b"\x9e", b"\xf8", b"\xf9",
                                   b"\xf5", b"\x90"]))
        elif k == 12:
            sz = rng.choice([2, 4])
            out.append(pfx(sz) + bytes([0x50 | r()]) + pfx(sz) + bytes([0x58 | r()]))
        else:
            sz = rng.choice([1, 2, 4])
            rm = bytereg() if sz == 1 else r()
            out.append(rrl(op8(0x84, sz), sz, bytereg() if sz == 1 else r(), rm))
    return out
