"""Runtime helpers called from generated code: eager-flag arithmetic (shifts,
multiply/divide, bit scans), condition codes and the catch-all for
instructions the engine does not implement.

Undefined flags follow what this project's reference silicon (AMD EPYC, Zen)
does where a test can observe it; the choices are listed in the package
docstring and checked by tests/differential against the host CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Tuple

from .decode import Insn
from .faults import DE, ExitNow, GuestFault
from .state import (
    AF,
    ARITH,
    CF,
    LZ_LOGIC,
    OF,
    PARITY,
    PF,
    SF,
    ZF,
    CpuState,
    lazy_cf,
    lazy_flags,
)

if TYPE_CHECKING:
    from .engine import Engine

MASKS = {8: 0xFF, 16: 0xFFFF, 32: 0xFFFFFFFF, 64: 0xFFFFFFFFFFFFFFFF}
SIGNS = {8: 0x80, 16: 0x8000, 32: 0x80000000, 64: 0x8000000000000000}
__all__ = ["PARITY", "cond", "flags", "cf", "shift", "shld", "mul", "imul", "div", "idiv",
           "bt_flags", "bsf", "bsr", "tzcnt", "lzcnt", "popcnt", "unimplemented", "raise_ud"]


def unimplemented(e: "Engine", d: Insn) -> None:
    """KVM's answer to an instruction its emulator cannot handle: INTERNAL_ERROR/EMULATION."""
    raise ExitNow("emulation", d.raw, "instruction not emulated")


def raise_ud(e: "Engine", d: Insn) -> None:
    raise GuestFault(6)


def flags(c: CpuState) -> int:
    lz = c.lz
    if lz is None:
        return c.fl
    return (c.fl & ~ARITH) | lazy_flags(lz)


def cf(c: CpuState) -> int:
    lz = c.lz
    if lz is None:
        return c.fl & 1
    return lazy_cf(lz)


def set_arith(c: CpuState, f: int) -> None:
    """Replace the six arithmetic flags with ``f`` (materialising the others)."""
    c.fl = (c.fl & ~ARITH) | (f & ARITH)
    c.lz = None


def szp(r: int, bits: int) -> int:
    f = PARITY[r & 0xFF]
    if r == 0:
        f |= ZF
    if r >> (bits - 1) & 1:
        f |= SF
    return f


# -- condition codes ------------------------------------------------------------------
def cond(c: CpuState, cc: int) -> bool:
    """Evaluate condition code ``cc`` (the low nibble of Jcc/SETcc/CMOVcc)."""
    lz = c.lz
    if lz is not None:
        kind, a, b, r, bits = lz
        base = cc >> 1
        if base == 2:  # E / NE
            res = r == 0
            return bool(res) != bool(cc & 1)
        if kind == 2 and base in (1, 3, 6, 7):  # SUB/CMP: compare directly
            if base == 1:
                res = a < b
            elif base == 3:
                res = a <= b
            else:
                sign = 1 << (bits - 1)
                sa = a - (a & sign) * 2
                sb = b - (b & sign) * 2
                res = sa < sb if base == 6 else sa <= sb
            return bool(res) != bool(cc & 1)
        f = (c.fl & ~ARITH) | lazy_flags(lz)
    else:
        f = c.fl
    base = cc >> 1
    if base == 0:
        res = bool(f & OF)
    elif base == 1:
        res = bool(f & CF)
    elif base == 2:
        res = bool(f & ZF)
    elif base == 3:
        res = bool(f & (CF | ZF))
    elif base == 4:
        res = bool(f & SF)
    elif base == 5:
        res = bool(f & PF)
    elif base == 6:
        res = bool(f & SF) != bool(f & OF)
    else:
        res = bool(f & ZF) or (bool(f & SF) != bool(f & OF))
    return res != bool(cc & 1)


# -- shifts and rotates ---------------------------------------------------------------------
def shift(c: CpuState, op: int, v: int, count: int, bits: int) -> int:
    """Group-2 operation ``op`` (0 rol, 1 ror, 2 rcl, 3 rcr, 4 shl, 5 shr, 6 sal, 7 sar)."""
    count &= 0x3F if bits == 64 else 0x1F
    if count == 0:
        return v
    m = MASKS[bits]
    top = bits - 1
    f = flags(c)
    if op == 0:  # ROL
        n = count % bits
        r = ((v << n) | (v >> (bits - n))) & m if n else v
        cfv = r & 1
        of = (r >> top & 1) ^ cfv
        c.fl = (f & ~(CF | OF)) | cfv | (OF if of else 0)
        c.lz = None
        return r
    if op == 1:  # ROR
        n = count % bits
        r = ((v >> n) | (v << (bits - n))) & m if n else v
        cfv = r >> top & 1
        of = (r >> top & 1) ^ (r >> (top - 1) & 1)
        c.fl = (f & ~(CF | OF)) | cfv | (OF if of else 0)
        c.lz = None
        return r
    if op in (2, 3):  # RCL / RCR through CF
        n = count % (bits + 1)
        cin = f & 1
        if n == 0:
            # the count was a multiple of bits+1: nothing rotates, OF still computed
            r = v
            cfv = cin
        else:
            wide = (cin << bits) | v if op == 2 else (v << 1) | cin
            width = bits + 1
            if op == 2:
                wide = ((wide << n) | (wide >> (width - n))) & ((1 << width) - 1)
                r = wide & m
                cfv = wide >> bits & 1
            else:
                wide = ((wide >> n) | (wide << (width - n))) & ((1 << width) - 1)
                r = wide >> 1
                cfv = wide & 1
        if op == 2:
            of = (r >> top & 1) ^ cfv
        else:
            of = (r >> top & 1) ^ (r >> (top - 1) & 1)
        c.fl = (f & ~(CF | OF)) | cfv | (OF if of else 0)
        c.lz = None
        return r
    if op in (4, 6):  # SHL
        if count > bits:
            r = 0
            cfv = 0
        else:
            r = (v << count) & m
            cfv = (v >> (bits - count)) & 1
        of = (r >> top & 1) ^ cfv
        nf = szp(r, bits) | cfv | (OF if of else 0) | AF
        c.fl = (f & ~ARITH) | nf
        c.lz = None
        return r
    if op == 5:  # SHR
        r = v >> count if count < bits + 1 else 0
        cfv = (v >> (count - 1)) & 1
        of = (r >> top & 1) ^ (r >> (top - 1) & 1)  # = MSB(v) for count 1; AMD for others
        nf = szp(r, bits) | cfv | (OF if of else 0) | AF
        c.fl = (f & ~ARITH) | nf
        c.lz = None
        return r
    # SAR
    sv = v - ((v >> top & 1) << bits)
    r = (sv >> count) & m
    cfv = (sv >> (count - 1)) & 1
    nf = szp(r, bits) | cfv | AF
    c.fl = (f & ~ARITH) | nf
    c.lz = None
    return r


def shld(c: CpuState, dst: int, src: int, count: int, bits: int, right: bool) -> int:
    """SHLD (right=False) / SHRD (right=True).

    16-bit counts above 16 (undefined) shift through dst:src:src / src:src:dst with CF=0
    (and OF=0 for SHLD) as AMD Zen does; otherwise OF is MSB(res)^CF for SHLD and
    MSB(res)^MSB-1(res) for SHRD at any count.
    """
    count &= 0x3F if bits == 64 else 0x1F
    if count == 0:
        return dst
    m = MASKS[bits]
    top = bits - 1
    if not right:
        if bits == 16:
            w = (dst << 32) | (src << 16) | src
            r = (w >> (32 - count)) & m
            cfv = (w >> (48 - count)) & 1 if count <= 16 else 0
        else:
            r = ((dst << count) | (src >> (bits - count))) & m
            cfv = (dst >> (bits - count)) & 1
        of = (r >> top & 1) ^ cfv if bits != 16 or count <= 16 else 0
    else:
        if bits == 16:
            w = (src << 32) | (src << 16) | dst
            r = (w >> count) & m
            cfv = (w >> (count - 1)) & 1 if count <= 16 else 0
        else:
            r = ((dst >> count) | (src << (bits - count))) & m
            cfv = (dst >> (count - 1)) & 1
        of = (r >> top & 1) ^ (r >> (top - 1) & 1)
    f = flags(c)
    c.fl = (f & ~ARITH) | szp(r, bits) | cfv | (OF if of else 0) | AF
    c.lz = None
    return r


# -- multiply / divide -------------------------------------------------------------------------
def mul_flags(c: CpuState, overflow: bool, low: int, bits: int) -> None:
    """MUL/IMUL: CF=OF=overflow; SF/ZF/AF/PF (undefined) are left unchanged, as on AMD Zen."""
    f = flags(c)
    c.fl = (f & ~(CF | OF)) | ((CF | OF) if overflow else 0)
    c.lz = None


def div_flags(c: CpuState) -> None:
    """DIV/IDIV leave every flag undefined; AMD Zen keeps CF/OF, sets AF, clears SF/ZF/PF."""
    f = flags(c)
    c.fl = (f & ~ARITH) | (f & (CF | OF)) | AF
    c.lz = None


def mul(c: CpuState, a: int, b: int, bits: int) -> Tuple[int, int]:
    """Unsigned a*b -> (low, high)."""
    p = a * b
    m = MASKS[bits]
    lo, hi = p & m, p >> bits
    mul_flags(c, hi != 0, lo, bits)
    return lo, hi


def imul(c: CpuState, a: int, b: int, bits: int) -> Tuple[int, int]:
    """Signed a*b of ``bits``-bit operands -> (low, high) as unsigned halves."""
    sign = SIGNS[bits]
    sa = a - ((a & sign) << 1)
    sb = b - ((b & sign) << 1)
    p = sa * sb
    m = MASKS[bits]
    lo = p & m
    hi = (p >> bits) & m
    slo = lo - ((lo & sign) << 1)
    mul_flags(c, slo != p, lo, bits)
    return lo, hi


def div(c: CpuState, hi: int, lo: int, d: int, bits: int) -> Tuple[int, int]:
    """Unsigned (hi:lo) / d -> (quotient, remainder); #DE on zero or overflow."""
    if d == 0:
        raise GuestFault(DE)
    n = (hi << bits) | lo
    q, r = divmod(n, d)
    if q > MASKS[bits]:
        raise GuestFault(DE)
    div_flags(c)
    return q, r


def idiv(c: CpuState, hi: int, lo: int, d: int, bits: int) -> Tuple[int, int]:
    if d == 0:
        raise GuestFault(DE)
    n = (hi << bits) | lo
    wide_sign = 1 << (2 * bits - 1)
    sn = n - ((n & wide_sign) << 1)
    sign = SIGNS[bits]
    sd = d - ((d & sign) << 1)
    q = abs(sn) // abs(sd)
    if (sn < 0) != (sd < 0):
        q = -q
    r = sn - q * sd
    if not -sign <= q < sign:
        raise GuestFault(DE)
    m = MASKS[bits]
    div_flags(c)
    return q & m, r & m


# -- bit operations ----------------------------------------------------------------------------
def bt_flags(c: CpuState, bit: int) -> None:
    """BT*: CF = the bit; AMD leaves OF/SF/ZF/AF/PF unchanged."""
    f = flags(c)
    c.fl = (f & ~CF) | (1 if bit else 0)
    c.lz = None


def bsf(c: CpuState, src: int, dst: int, bits: int) -> int:
    """BSF: ZF = (src == 0) and the destination is kept then; other flags unchanged (AMD)."""
    f = flags(c)
    c.lz = None
    if src == 0:
        c.fl = f | ZF
        return dst
    c.fl = f & ~ZF
    return (src & -src).bit_length() - 1


def bsr(c: CpuState, src: int, dst: int, bits: int) -> int:
    f = flags(c)
    c.lz = None
    if src == 0:
        c.fl = f | ZF
        return dst
    c.fl = f & ~ZF
    return src.bit_length() - 1


def tzcnt(c: CpuState, src: int, bits: int) -> int:
    """TZCNT: CF = (src == 0), ZF = (result == 0); AMD Zen clears SF/AF/PF, keeps OF."""
    r = bits if src == 0 else (src & -src).bit_length() - 1
    _cnt_flags(c, src, r)
    return r


def lzcnt(c: CpuState, src: int, bits: int) -> int:
    r = bits - src.bit_length()
    _cnt_flags(c, src, r)
    return r


def _cnt_flags(c: CpuState, src: int, r: int) -> None:
    f = flags(c)
    c.fl = (f & ~ARITH) | (f & OF) | (CF if src == 0 else 0) | (ZF if r == 0 else 0)
    c.lz = None


def popcnt(c: CpuState, src: int) -> int:
    r = bin(src).count("1")
    f = flags(c)
    c.fl = (f & ~ARITH) | (ZF if src == 0 else 0)
    c.lz = None
    return r


def logic_lz(r: int, bits: int) -> Tuple[Any, ...]:
    return (LZ_LOGIC, 0, 0, r, bits)


# -- decimal adjust (16/32-bit code only) ---------------------------------------------------
def bcd(c: CpuState, op: int, imm: int) -> None:
    """DAA/DAS/AAA/AAS/AAM/AAD/SALC on AX, SDM semantics. The flags the SDM leaves
    undefined are cleared (OF, and AF/CF for AAM/AAD)."""
    R = c.R
    ax = R[0] & 0xFFFF
    al, ah = ax & 0xFF, ax >> 8
    f = flags(c)
    cf, af = f & CF, f & AF
    if op == 0xD6:  # SALC
        R[0] = (R[0] & ~0xFF) | (0xFF if cf else 0)
        return
    ncf = naf = 0
    if op in (0x27, 0x2F):  # DAA / DAS
        old = al
        if (al & 0xF) > 9 or af:
            if op == 0x27:
                ncf = 1 if cf or al + 6 > 0xFF else 0
                al = (al + 6) & 0xFF
            else:
                ncf = 1 if cf or al < 6 else 0
                al = (al - 6) & 0xFF
            naf = AF
        if old > 0x99 or cf:
            al = (al + 0x60) & 0xFF if op == 0x27 else (al - 0x60) & 0xFF
            ncf = 1
        R[0] = (R[0] & ~0xFF) | al
        res = al
    elif op in (0x37, 0x3F):  # AAA / AAS
        if (al & 0xF) > 9 or af:
            if op == 0x37:
                ax = (ax + 0x106) & 0xFFFF
            else:
                ax = ((((ah - 1) & 0xFF) << 8) | ((al - 6) & 0xFF))
            ncf, naf = 1, AF
        ax &= 0xFF0F
        R[0] = (R[0] & ~0xFFFF) | ax
        res = ax & 0xFF
    elif op == 0xD4:  # AAM
        if imm == 0:
            raise GuestFault(DE)
        ah, al = divmod(al, imm)
        R[0] = (R[0] & ~0xFFFF) | (ah << 8) | al
        res = al
    else:  # AAD
        al = (al + ah * imm) & 0xFF
        R[0] = (R[0] & ~0xFFFF) | al
        res = al
    c.fl = (f & ~ARITH) | szp(res, 8) | ncf | naf
    c.lz = None
