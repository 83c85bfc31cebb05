"""Runtime helpers called from generated code: condition codes, flag
materialisation, the flags every vendor agrees on (BT*, POPCNT, decimal adjust)
and the catch-all for instructions the engine does not implement.

The helpers whose undefined flags or results differ between Intel and AMD
(shifts, rotates, SHLD/SHRD, MUL/DIV, BSF/BSR, TZCNT/LZCNT) are in
``undefined.py``; ``vendor.py`` joins one vendor's set with these into the ``H``
namespace of generated code.
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
    from .cpuview import HelperCpu

MASKS = {8: 0xFF, 16: 0xFFFF, 32: 0xFFFFFFFF, 64: 0xFFFFFFFFFFFFFFFF}
SIGNS = {8: 0x80, 16: 0x8000, 32: 0x80000000, 64: 0x8000000000000000}
__all__ = ["PARITY", "cond", "flags", "cf", "set_arith", "szp", "bt_flags", "popcnt",
           "logic_lz", "bcd", "unimplemented", "raise_ud"]


def unimplemented(e: "HelperCpu", d: Insn) -> None:
    """KVM's answer to an instruction its emulator cannot handle: INTERNAL_ERROR/EMULATION."""
    raise ExitNow("emulation", d.raw, "instruction not emulated")


def raise_ud(e: "HelperCpu", d: Insn) -> None:
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


# -- bit operations ----------------------------------------------------------------------------
def bt_flags(c: CpuState, bit: int) -> None:
    """BT*: CF = the bit; OF/SF/ZF/AF/PF are left unchanged (Intel and AMD alike)."""
    f = flags(c)
    c.fl = (f & ~CF) | (1 if bit else 0)
    c.lz = None


def popcnt(c: CpuState, src: int) -> int:
    """POPCNT: ZF = (src == 0), the other five flags cleared (defined by both manuals)."""
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
