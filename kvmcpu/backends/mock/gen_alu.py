"""Generators for the integer data instructions: ALU, moves, multiply/divide,
shifts, bit operations, conversions, SETcc/CMOVcc, XCHG/XADD/CMPXCHG."""

from __future__ import annotations

from typing import Callable, Optional

from .codegen import BITS, SGN, M, Translator, gen, sx8
from .decode import Insn
from .state import LZ_ADC, LZ_ADD, LZ_DEC, LZ_FIXED, LZ_INC, LZ_LOGIC, LZ_SBB, LZ_SUB
from .undefined import const_shift_flags

_ALU_NAMES = ("add", "or", "adc", "sbb", "and", "sub", "xor", "cmp")


def alu(t: Translator, op: int, a: str, b: str, sz: int) -> Optional[str]:
    """Emit ALU op ``op`` on temps a, b; returns the result temp (None for CMP)."""
    m = M[sz]
    bits = BITS[sz]
    r = t.var()
    if op == 0:
        t.emit(f"{r} = ({a} + {b}) & {m:#x}")
        t.lazy(LZ_ADD, a, b, r, sz)
    elif op in (1, 4, 6):
        sym = {1: "|", 4: "&", 6: "^"}[op]
        t.emit(f"{r} = {a} {sym} {b}")
        t.emit(f"c.lz = ({LZ_LOGIC}, 0, 0, {r}, {bits})")
    elif op == 2:
        cf = t.var()
        t.emit(f"{cf} = H.cf(c)")
        t.emit(f"{r} = ({a} + {b} + {cf}) & {m:#x}")
        t.emit(f"c.lz = ({LZ_ADC} if {cf} else {LZ_ADD}, {a}, {b}, {r}, {bits})")
    elif op == 3:
        cf = t.var()
        t.emit(f"{cf} = H.cf(c)")
        t.emit(f"{r} = ({a} - {b} - {cf}) & {m:#x}")
        t.emit(f"c.lz = ({LZ_SBB} if {cf} else {LZ_SUB}, {a}, {b}, {r}, {bits})")
    else:  # sub, cmp
        t.emit(f"{r} = ({a} - {b}) & {m:#x}")
        t.lazy(LZ_SUB, a, b, r, sz)
        if op == 7:
            return None
    return r


def _lock_ok(d: Insn) -> bool:
    return d.mod != 3


def _alu_rm(t: Translator, d: Insn, op: int, sz: int, b_expr: str) -> None:
    """r/m := r/m OP b (flags set after the memory write so a fault changes nothing)."""
    a, addr = t.rm_read(d, sz)
    b = t.var()
    t.emit(f"{b} = {b_expr}")
    r = alu(t, op, a, b, sz)
    if r is not None:
        flag_line = t.lines.pop()  # move the flags update after the store
        t.rm_write(d, sz, addr, r)
        t.lines.append(flag_line)



@gen(0x00, 0x01, 0x08, 0x09, 0x10, 0x11, 0x18, 0x19, 0x20, 0x21, 0x28, 0x29, 0x30, 0x31,
     0x38, 0x39)
def g_alu_rm_r(t: Translator, d: Insn) -> None:
    op = d.opc >> 3
    sz = 1 if d.opc & 1 == 0 else d.osz
    _alu_rm(t, d, op, sz, t.rget(d.reg, sz, d))


@gen(0x02, 0x03, 0x0A, 0x0B, 0x12, 0x13, 0x1A, 0x1B, 0x22, 0x23, 0x2A, 0x2B, 0x32, 0x33,
     0x3A, 0x3B)
def g_alu_r_rm(t: Translator, d: Insn) -> None:
    op = d.opc >> 3
    sz = 1 if d.opc & 1 == 0 else d.osz
    b, _ = t.rm_read(d, sz)
    a = t.var()
    t.emit(f"{a} = {t.rget(d.reg, sz, d)}")
    r = alu(t, op, a, b, sz)
    if r is not None:
        t.rset(d.reg, sz, d, r)


@gen(0x04, 0x05, 0x0C, 0x0D, 0x14, 0x15, 0x1C, 0x1D, 0x24, 0x25, 0x2C, 0x2D, 0x34, 0x35,
     0x3C, 0x3D)
def g_alu_acc_imm(t: Translator, d: Insn) -> None:
    op = d.opc >> 3
    sz = 1 if d.opc & 1 == 0 else d.osz
    a = t.var()
    t.emit(f"{a} = {t.rget(0, sz, d)}")
    b = t.var()
    t.emit(f"{b} = {d.imm & M[sz]:#x}")
    r = alu(t, op, a, b, sz)
    if r is not None:
        t.rset(0, sz, d, r)


@gen(0x80, 0x81, 0x82, 0x83)
def g_grp1(t: Translator, d: Insn) -> None:
    sz = 1 if d.opc in (0x80, 0x82) else d.osz
    imm = sx8(d.imm) if d.opc == 0x83 else d.imm
    _alu_rm(t, d, d.reg & 7, sz, f"{imm & M[sz]:#x}")


@gen(0x84, 0x85)
def g_test_rm_r(t: Translator, d: Insn) -> None:
    sz = 1 if d.opc == 0x84 else d.osz
    a, _ = t.rm_read(d, sz)
    t.emit(f"c.lz = ({LZ_LOGIC}, 0, 0, {a} & {t.rget(d.reg, sz, d)}, {BITS[sz]})")


@gen(0xA8, 0xA9)
def g_test_acc(t: Translator, d: Insn) -> None:
    sz = 1 if d.opc == 0xA8 else d.osz
    t.emit(f"c.lz = ({LZ_LOGIC}, 0, 0, {t.rget(0, sz, d)} & {d.imm & M[sz]:#x}, {BITS[sz]})")


# -- moves ---------------------------------------------------------------------------------
@gen(0x88, 0x89)
def g_mov_rm_r(t: Translator, d: Insn) -> None:
    sz = 1 if d.opc == 0x88 else d.osz
    v = t.var()
    t.emit(f"{v} = {t.rget(d.reg, sz, d)}")
    t.rm_write(d, sz, None, v)


@gen(0x8A, 0x8B)
def g_mov_r_rm(t: Translator, d: Insn) -> None:
    sz = 1 if d.opc == 0x8A else d.osz
    v, _ = t.rm_read(d, sz)
    t.rset(d.reg, sz, d, v)


@gen(0xC6, 0xC7)
def g_mov_rm_imm(t: Translator, d: Insn) -> Optional[bool]:
    if d.reg & 7:
        return _ud(t, d)
    sz = 1 if d.opc == 0xC6 else d.osz
    t.rm_write(d, sz, None, f"{d.imm & M[sz]:#x}")
    return None


@gen(*range(0xB0, 0xC0))
def g_mov_r_imm(t: Translator, d: Insn) -> None:
    sz = 1 if d.opc < 0xB8 else d.osz
    n = (d.opc & 7) | ((d.rex & 1) << 3)
    t.rset(n, sz, d, f"{d.imm & M[sz]:#x}")


@gen(0xA0, 0xA1, 0xA2, 0xA3)
def g_mov_moffs(t: Translator, d: Insn) -> None:
    sz = 1 if d.opc in (0xA0, 0xA2) else d.osz
    if t.bits == 64:
        a = f"{d.imm:#x}" if d.seg not in (4, 5) else \
            f"(({d.imm:#x} + SB[{d.seg}]) & 0xFFFFFFFFFFFFFFFF)"
    else:
        seg = d.seg if d.seg >= 0 else 3
        a = f"(({d.imm:#x} + SB[{seg}]) & 0xFFFFFFFF)"
    if d.opc < 0xA2:
        t.rset(0, sz, d, t.load(a, sz))
    else:
        t.store(a, sz, t.rget(0, sz, d))


@gen(0x8D)
def g_lea(t: Translator, d: Insn) -> Optional[bool]:
    if d.mod == 3:
        return _ud(t, d)
    t.rset(d.reg, d.osz, d, f"({t.offset(d)} & {M[d.osz]:#x})")
    return None


@gen(0x1B6, 0x1B7, 0x1BE, 0x1BF)
def g_movzx_movsx(t: Translator, d: Insn) -> None:
    ssz = 1 if d.opc in (0x1B6, 0x1BE) else 2
    v, _ = t.rm_read(d, ssz)
    if d.opc >= 0x1BE:
        s = SGN[ssz]
        t.emit(f"{v} = ({v} - (({v} & {s:#x}) << 1)) & {M[d.osz]:#x}")
    t.rset(d.reg, d.osz, d, v)


@gen(0x63)
def g_movsxd(t: Translator, d: Insn) -> None:
    if t.bits != 64:
        t.call_helper(_unimpl(), d, terminator=True)
        t.ended = True
        return
    v, _ = t.rm_read(d, 4)
    if d.osz == 8:
        t.emit(f"{v} = ({v} - (({v} & 0x80000000) << 1)) & 0xFFFFFFFFFFFFFFFF")
    t.rset(d.reg, d.osz, d, v)


def _unimpl() -> Callable[..., None]:
    from .helpers import unimplemented

    return unimplemented


def _ud(t: Translator, d: Insn) -> bool:
    from .helpers import raise_ud

    t.call_helper(raise_ud, d, terminator=True)
    return True


# -- inc/dec/not/neg/mul/div -------------------------------------------------------------------
def _incdec(t: Translator, d: Insn, sz: int, dec: bool, reg: Optional[int]) -> None:
    m = M[sz]
    if reg is None:
        a, addr = t.rm_read(d, sz)
    else:
        a, addr = t.var(), None
        t.emit(f"{a} = {t.rget(reg, sz, d)}")
    r = t.var()
    t.emit(f"{r} = ({a} {'-' if dec else '+'} 1) & {m:#x}")
    if reg is None:
        t.rm_write(d, sz, addr, r)
    else:
        t.rset(reg, sz, d, r)
    p = t.var()
    t.emit(f"{p} = c.lz")
    t.emit(f"if {p} is None: {p} = c.fl & 1")
    t.emit(f"elif {LZ_INC} <= {p}[0] <= {LZ_DEC}: {p} = {p}[2]")
    t.emit(f"c.lz = ({LZ_DEC if dec else LZ_INC}, {a}, {p}, {r}, {BITS[sz]})")


@gen(*range(0x40, 0x50))
def g_incdec_r(t: Translator, d: Insn) -> None:
    _incdec(t, d, d.osz, d.opc >= 0x48, d.opc & 7)


@gen(0xFE)
def g_grp4(t: Translator, d: Insn) -> Optional[bool]:
    if d.reg & 7 > 1:
        return _ud(t, d)
    _incdec(t, d, 1, d.reg & 7 == 1, None)
    return None


@gen(0xF6, 0xF7)
def g_grp3(t: Translator, d: Insn) -> None:
    sz = 1 if d.opc == 0xF6 else d.osz
    m = M[sz]
    bits = BITS[sz]
    op = d.reg & 7
    if op in (0, 1):
        a, _ = t.rm_read(d, sz)
        t.emit(f"c.lz = ({LZ_LOGIC}, 0, 0, {a} & {d.imm & m:#x}, {bits})")
        return
    if op == 2:
        a, addr = t.rm_read(d, sz)
        t.rm_write(d, sz, addr, f"({a} ^ {m:#x})")
        return
    if op == 3:
        a, addr = t.rm_read(d, sz)
        r = t.var()
        t.emit(f"{r} = (-{a}) & {m:#x}")
        t.rm_write(d, sz, addr, r)
        t.lazy(LZ_SUB, "0", a, r, sz)
        return
    src, _ = t.rm_read(d, sz)
    if op in (4, 5):
        fn = "H.mul" if op == 4 else "H.imul"
        lo, hi = t.var(), t.var()
        t.emit(f"{lo}, {hi} = {fn}(c, {t.rget(0, sz, d)}, {src}, {bits})")
        if sz == 1:
            t.emit(f"R[0] = (R[0] & 0xFFFFFFFFFFFF0000) | ({hi} << 8) | {lo}")
        else:
            t.rset(0, sz, d, lo)
            t.rset(2, sz, d, hi)
        return
    fn = "H.div" if op == 6 else "H.idiv"
    q, r = t.var(), t.var()
    if sz == 1:
        t.emit(f"{q}, {r} = {fn}(c, (R[0] >> 8) & 0xFF, R[0] & 0xFF, {src}, 8)")
        t.emit(f"R[0] = (R[0] & 0xFFFFFFFFFFFF0000) | ({r} << 8) | {q}")
    else:
        t.emit(f"{q}, {r} = {fn}(c, {t.rget(2, sz, d)}, {t.rget(0, sz, d)}, {src}, {bits})")
        t.rset(0, sz, d, q)
        t.rset(2, sz, d, r)


@gen(0x69, 0x6B, 0x1AF)
def g_imul(t: Translator, d: Insn) -> None:
    sz = d.osz
    src, _ = t.rm_read(d, sz)
    if d.opc == 0x1AF:
        other = t.rget(d.reg, sz, d)
    else:
        imm = sx8(d.imm) if d.opc == 0x6B else d.imm
        other = f"{imm & M[sz]:#x}"
    lo, hi = t.var(), t.var()
    t.emit(f"{lo}, {hi} = H.imul(c, {src}, {other}, {BITS[sz]})")
    t.rset(d.reg, sz, d, lo)


# -- shifts ---------------------------------------------------------------------------------------
@gen(0xC0, 0xC1, 0xD0, 0xD1, 0xD2, 0xD3)
def g_grp2(t: Translator, d: Insn) -> None:
    sz = 1 if d.opc in (0xC0, 0xD0, 0xD2) else d.osz
    bits = BITS[sz]
    op = d.reg & 7
    if d.opc in (0xC0, 0xC1):
        cnt = f"{d.imm}"
    elif d.opc in (0xD0, 0xD1):
        cnt = "1"
    else:
        cnt = "(R[1] & 0xFF)"
    a, addr = t.rm_read(d, sz)
    r = t.var()
    const = d.opc in (0xC0, 0xC1, 0xD0, 0xD1)
    count = (int(cnt) & (0x3F if bits == 64 else 0x1F)) if const else -1
    if const and 0 < count < bits and op in (4, 5, 6, 7):
        # SHL/SHR/SAR by a constant: inline, flags as a LZ_FIXED tuple (CF|OF|AF + result)
        m = M[sz]
        cf, of = t.var(), t.var()
        of_expr, af = const_shift_flags(t.vendor, op, count, bits)
        if op in (4, 6):
            t.emit(f"{r} = ({a} << {count}) & {m:#x}")
            t.emit(f"{cf} = ({a} >> {bits - count}) & 1")
        elif op == 5:
            t.emit(f"{r} = {a} >> {count}")
            t.emit(f"{cf} = ({a} >> {count - 1}) & 1")
        else:
            sgn = SGN[sz]
            t.emit(f"{r} = (({a} - (({a} & {sgn:#x}) << 1)) >> {count}) & {m:#x}")
            t.emit(f"{cf} = (({a} - (({a} & {sgn:#x}) << 1)) >> {count - 1}) & 1")
        t.emit(f"{of} = {of_expr.format(a=a, r=r, cf=cf)}")
        t.rm_write(d, sz, addr, r)
        t.emit(f"c.lz = ({LZ_FIXED}, {cf} | {of} | {af:#x}, 0, {r}, {bits})")
        return
    saved = t.var()
    t.emit(f"{saved} = (c.fl, c.lz)")
    fn = "H.shift_imm" if d.opc in (0xC0, 0xC1) else "H.shift"  # Intel: ROL/ROR imm8 keep OF
    t.emit(f"{r} = {fn}(c, {op}, {a}, {cnt}, {bits})")
    if d.mod != 3:
        t.emit("try:")
        t.emit(f"    wr{sz}({addr}, {r})")
        t.emit("except BaseException:")
        t.emit(f"    c.fl, c.lz = {saved}")
        t.emit("    raise")
        t.may_stop = True
    else:
        t.rm_write(d, sz, addr, r)


@gen(0x1A4, 0x1A5, 0x1AC, 0x1AD)
def g_shld(t: Translator, d: Insn) -> None:
    sz = d.osz
    cnt = f"{d.imm}" if d.opc in (0x1A4, 0x1AC) else "(R[1] & 0xFF)"
    a, addr = t.rm_read(d, sz)
    r = t.var()
    saved = t.var()
    t.emit(f"{saved} = (c.fl, c.lz)")
    t.emit(f"{r} = H.shld(c, {a}, {t.rget(d.reg, sz, d)}, {cnt}, {BITS[sz]}, "
           f"{d.opc >= 0x1AC})")
    if d.mod != 3:
        t.emit("try:")
        t.emit(f"    wr{sz}({addr}, {r})")
        t.emit("except BaseException:")
        t.emit(f"    c.fl, c.lz = {saved}")
        t.emit("    raise")
        t.may_stop = True
    else:
        t.rm_write(d, sz, addr, r)


# -- bit operations -------------------------------------------------------------------------------
@gen(0x1A3, 0x1AB, 0x1B3, 0x1BB, 0x1BA)
def g_bt(t: Translator, d: Insn) -> Optional[bool]:
    sz = d.osz
    bits = BITS[sz]
    if d.opc == 0x1BA:
        if d.reg & 7 < 4:
            return _ud(t, d)
        op = d.reg & 3
        off = f"{d.imm & (bits - 1)}"
        mem_off = None
    else:
        op = {0x1A3: 0, 0x1AB: 1, 0x1B3: 2, 0x1BB: 3}[d.opc]
        src = t.rget(d.reg, sz, d)
        off = f"({src} & {bits - 1})"
        mem_off = src
    if d.mod == 3:
        a = t.var()
        t.emit(f"{a} = {t.rget(d.rm, sz, d)}")
        addr = None
    else:
        addr = t.addr(d)
        if mem_off is not None:
            # register bit offsets address memory beyond the operand (signed)
            s = SGN[sz]
            so = t.var()
            t.emit(f"{so} = {mem_off} - (({mem_off} & {s:#x}) << 1)")
            lm = 0xFFFFFFFFFFFFFFFF if t.bits == 64 else 0xFFFFFFFF
            t.emit(f"{addr} = ({addr} + ({so} >> {bits.bit_length() - 1}) * {sz}) & {lm:#x}")
        a = t.var()
        t.emit(f"{a} = rd{sz}({addr})")
    bit = t.var()
    t.emit(f"{bit} = ({a} >> {off}) & 1")
    if op:
        r = t.var()
        expr = {1: f"{a} | (1 << {off})", 2: f"{a} & ~(1 << {off}) & {M[sz]:#x}",
                3: f"{a} ^ (1 << {off})"}[op]
        t.emit(f"{r} = {expr}")
        t.rm_write(d, sz, addr, r)
    t.emit(f"H.bt_flags(c, {bit})")
    return None


@gen(0x1BC, 0x1BD)
def g_bsf(t: Translator, d: Insn) -> None:
    sz = d.osz
    src, _ = t.rm_read(d, sz)
    r = t.var()
    if d.rep == 0xF3:
        fn = "tzcnt" if d.opc == 0x1BC else "lzcnt"
        t.emit(f"{r} = H.{fn}(c, {src}, {BITS[sz]})")
    else:
        fn = "bsf" if d.opc == 0x1BC else "bsr"
        t.emit(f"{r} = H.{fn}(c, {src}, {t.rget(d.reg, sz, d)}, {BITS[sz]})")
        if sz == 4:
            # a zero source leaves the whole 64-bit destination alone (Intel and AMD)
            t.emit(f"if {src}: R[{d.reg}] = {r}")
            return
    t.rset(d.reg, sz, d, r)


@gen(0x1B8)
def g_popcnt(t: Translator, d: Insn) -> Optional[bool]:
    if d.rep != 0xF3:
        return _ud(t, d)
    src, _ = t.rm_read(d, d.osz)
    t.rset(d.reg, d.osz, d, f"H.popcnt(c, {src})")
    return None


@gen(*range(0x1C8, 0x1D0))
def g_bswap(t: Translator, d: Insn) -> None:
    n = (d.opc & 7) | ((d.rex & 1) << 3)
    sz = d.osz
    if sz == 2:
        t.rset(n, 2, d, "0")  # undefined: hardware gives zero
        return
    t.rset(n, sz, d, f"int.from_bytes(({t.rget(n, sz, d)}).to_bytes({sz}, 'little'), 'big')")


# -- SETcc / CMOVcc -------------------------------------------------------------------------------
@gen(*range(0x190, 0x1A0))
def g_setcc(t: Translator, d: Insn) -> None:
    t.rm_write(d, 1, None, f"(1 if H.cond(c, {d.opc & 15}) else 0)")


@gen(*range(0x140, 0x150))
def g_cmov(t: Translator, d: Insn) -> None:
    sz = d.osz
    v, _ = t.rm_read(d, sz)
    t.emit(f"if H.cond(c, {d.opc & 15}):")
    t.lines.append("    " + _line(t, lambda: t.rset(d.reg, sz, d, v)))
    if sz == 4:
        t.emit("else:")
        t.emit(f"    R[{d.reg}] &= 0xFFFFFFFF")


def _line(t: Translator, f) -> str:  # type: ignore[no-untyped-def]
    n = len(t.lines)
    f()
    line = t.lines.pop()
    assert len(t.lines) == n
    return line


# -- conversions and flag instructions ------------------------------------------------------------
@gen(0x98)
def g_cbw(t: Translator, d: Insn) -> None:
    sz = d.osz
    half = sz // 2
    s = SGN[half]
    v = t.var()
    t.emit(f"{v} = {t.rget(0, half, d)}")
    t.rset(0, sz, d, f"(({v} - (({v} & {s:#x}) << 1)) & {M[sz]:#x})")


@gen(0x99)
def g_cwd(t: Translator, d: Insn) -> None:
    sz = d.osz
    t.rset(2, sz, d, f"({M[sz]:#x} if {t.rget(0, sz, d)} & {SGN[sz]:#x} else 0)")


@gen(0x9E)
def g_sahf(t: Translator, d: Insn) -> None:
    t.emit("c.fl = (H.flags(c) & ~0xD5) | ((R[0] >> 8) & 0xD5); c.lz = None")


@gen(0x9F)
def g_lahf(t: Translator, d: Insn) -> None:
    t.emit("R[0] = (R[0] & 0xFFFFFFFFFFFF00FF) | (((H.flags(c) & 0xD5) | 2) << 8)")


@gen(0xF5)
def g_cmc(t: Translator, d: Insn) -> None:
    t.emit("c.fl = H.flags(c) ^ 1; c.lz = None")


@gen(0xF8)
def g_clc(t: Translator, d: Insn) -> None:
    t.emit("c.fl = H.flags(c) & ~1; c.lz = None")


@gen(0xF9)
def g_stc(t: Translator, d: Insn) -> None:
    t.emit("c.fl = H.flags(c) | 1; c.lz = None")


@gen(0xFC)
def g_cld(t: Translator, d: Insn) -> None:
    t.emit("c.fl &= ~0x400")


@gen(0xFD)
def g_std(t: Translator, d: Insn) -> None:
    t.emit("c.fl |= 0x400")


# -- exchange family ------------------------------------------------------------------------------
@gen(0x86, 0x87)
def g_xchg(t: Translator, d: Insn) -> None:
    sz = 1 if d.opc == 0x86 else d.osz
    a, addr = t.rm_read(d, sz)
    b = t.var()
    t.emit(f"{b} = {t.rget(d.reg, sz, d)}")
    t.rm_write(d, sz, addr, b)
    t.rset(d.reg, sz, d, a)


@gen(*range(0x90, 0x98))
def g_xchg_acc(t: Translator, d: Insn) -> None:
    n = (d.opc & 7) | ((d.rex & 1) << 3)
    if n == 0:
        return  # NOP / PAUSE (xchg eax,eax does not zero-extend: it is NOP)
    sz = d.osz
    a, b = t.var(), t.var()
    t.emit(f"{a} = {t.rget(0, sz, d)}")
    t.emit(f"{b} = {t.rget(n, sz, d)}")
    t.rset(0, sz, d, b)
    t.rset(n, sz, d, a)


@gen(0x1C0, 0x1C1)
def g_xadd(t: Translator, d: Insn) -> None:
    sz = 1 if d.opc == 0x1C0 else d.osz
    a, addr = t.rm_read(d, sz)
    b = t.var()
    t.emit(f"{b} = {t.rget(d.reg, sz, d)}")
    r = t.var()
    t.emit(f"{r} = ({a} + {b}) & {M[sz]:#x}")
    t.rm_write(d, sz, addr, r)
    t.rset(d.reg, sz, d, a)
    if d.mod == 3:
        t.rset(d.rm, sz, d, r)
    t.lazy(LZ_ADD, a, b, r, sz)


@gen(0x1B0, 0x1B1)
def g_cmpxchg(t: Translator, d: Insn) -> None:
    sz = 1 if d.opc == 0x1B0 else d.osz
    a, addr = t.rm_read(d, sz)
    acc = t.var()
    t.emit(f"{acc} = {t.rget(0, sz, d)}")
    r = t.var()
    t.emit(f"{r} = ({acc} - {a}) & {M[sz]:#x}")
    t.emit(f"if {acc} == {a}:")
    src = t.rget(d.reg, sz, d)
    body = _collect(t, lambda: t.rm_write(d, sz, addr, src))
    for ln in body:
        t.lines.append("    " + ln)
    t.emit("else:")
    if d.mod != 3:
        t.emit(f"    wr{sz}({addr}, {a})")  # the destination is always written
    body = _collect(t, lambda: t.rset(0, sz, d, a))
    for ln in body:
        t.lines.append("    " + ln)
    t.lazy(LZ_SUB, acc, a, r, sz)


def _collect(t: Translator, f) -> list:  # type: ignore[no-untyped-def, type-arg]
    n = len(t.lines)
    f()
    out = t.lines[n:]
    del t.lines[n:]
    return out


@gen(0x1C7)
def g_grp9(t: Translator, d: Insn) -> Optional[bool]:
    from .system import cmpxchg8b, rdrand

    if d.reg & 7 == 1 and d.mod != 3:
        t.call_helper(cmpxchg8b, d)
        return None
    if d.reg & 7 in (6, 7) and d.mod == 3:  # RDRAND / RDSEED / RDPID
        t.call_helper(rdrand, d)
        return None
    if d.reg & 7 in (3, 4, 5) and d.mod != 3:  # XRSTORS / XSAVEC / XSAVES
        from .xsave import grp9_mem

        t.call_helper(grp9_mem, d)
        return None
    return _ud(t, d)


@gen(0xD7)
def g_xlat(t: Translator, d: Insn) -> None:
    m = M[d.asz]
    off = f"((R[3] + (R[0] & 0xFF)) & {m:#x})"
    if t.bits == 64:
        a = off if d.seg not in (4, 5) else f"(({off} + SB[{d.seg}]) & 0xFFFFFFFFFFFFFFFF)"
    else:
        a = f"(({off} + SB[{d.seg if d.seg >= 0 else 3}]) & 0xFFFFFFFF)"
    t.rset(0, 1, d, t.load(a, 1))


#: (opcode, ModRM.reg or None) pairs that accept a LOCK prefix (memory destination only).
_LOCKABLE = {o: None for o in (0x00, 0x01, 0x08, 0x09, 0x10, 0x11, 0x18, 0x19, 0x20, 0x21,
                               0x28, 0x29, 0x30, 0x31, 0x86, 0x87, 0x1AB, 0x1B3, 0x1BB, 0x1B0,
                               0x1B1, 0x1C0, 0x1C1)}


def lock_ok(d: Insn) -> bool:
    """Whether LOCK is allowed on ``d`` (#UD otherwise)."""
    if d.mod == 3 or not d.modrm:
        return False
    r = d.reg & 7
    if d.opc in _LOCKABLE:
        return True
    if d.opc in (0x80, 0x81, 0x82, 0x83):
        return r != 7
    if d.opc in (0xF6, 0xF7):
        return r in (2, 3)
    if d.opc in (0xFE, 0xFF):
        return r in (0, 1)
    if d.opc == 0x1BA:
        return r >= 5
    if d.opc == 0x1C7:
        return r == 1
    return False
