"""The helpers whose undefined flags or results differ between Intel and AMD.

Each vendor has one table (``TABLES["intel"]``, ``TABLES["amd"]``) of the same
names; ``vendor.py`` puts one of them in the ``H`` namespace of generated code,
so the choice is made once per backend, never per instruction.

What the manuals define is computed the same way for both (the results of every
shift and rotate with a count the manuals define, CF of shifts and rotates, OF
for a count of 1, the flags of the result where they are defined). The vendor
choices, measured natively at CPL3 on an Intel Xeon (family 6) and an AMD EPYC
(Zen 3):

================  ==================================  =================================
instruction       Intel                               AMD
================  ==================================  =================================
MUL, IMUL         SF = MSB(low half), PF = parity of  SF/ZF/AF/PF unchanged
                  the low byte, ZF = AF = 0
DIV, IDIV         all six flags unchanged             CF/OF kept, AF = 1, SF/ZF/PF = 0
SHL/SHR/SAR       AF = 0; count > 1: OF from the      AF = 1; OF from the result
                  first one-bit step (SHL: bit 63 ^   (SHL: MSB ^ CF, SHR: MSB ^ MSB-1,
                  bit 62 of the operand; SHR: its     SAR: 0)
                  MSB; SAR: 0)
ROL/ROR by CL     count > 1: OF from the first step   OF from the result
ROL/ROR by imm8   count > 1: OF unchanged             OF from the result
RCL/RCR           count > 1: OF from the first step;  OF from the result, also when
                  count mod (size+1) = 0: nothing     the rotation is a multiple of
                  changes                             size + 1
SHLD/SHRD         AF = 0; count > 1: OF from the      AF = 1; OF from the result
                  first step
16-bit SHLD/SHRD  counts 17-31 shift dst:src:dst,     dst:src:src (SHRD src:src:dst),
                  CF = the last bit out               CF = 0 (SHLD also OF = 0)
BSF/BSR           CF = OF = SF = AF = 0, PF = parity  only ZF changes
                  of the index; a zero source: ZF =
                  PF = 1, the rest 0
TZCNT/LZCNT       OF = SF = AF = PF = 0               OF kept, SF = AF = PF = 0
AAS               AX - 6 as one 16-bit value, then    AL - 6 and AH - 1 apart (not yet
                  AH - 1 (the SDM's pseudo-code)      checked on AMD silicon)
AAD               the flags of the 8-bit addition     SF/ZF/PF from AL, OF/AF/CF = 0
                  AL + AH * imm8 (CF, AF, OF too)     (not yet checked on AMD silicon)
================  ==================================  =================================

Both keep the destination of BSF/BSR when the source is zero (the whole 64-bit
register, also for a 32-bit operand).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from .faults import DE, GuestFault
from .helpers import bcd, flags, szp
from .state import AF, ARITH, CF, OF, PARITY, PF, SF, ZF, CpuState

MASKS = {8: 0xFF, 16: 0xFFFF, 32: 0xFFFFFFFF, 64: 0xFFFFFFFFFFFFFFFF}
SIGNS = {8: 0x80, 16: 0x8000, 32: 0x80000000, 64: 0x8000000000000000}


# -- shift and rotate results (defined behaviour, shared) ---------------------------------
def _rotate(op: int, v: int, count: int, bits: int, cin: int) -> Tuple[int, int, int]:
    """ROL/ROR/RCL/RCR of ``v`` by a non-zero masked ``count``.

    Returns (result, CF, n) with n the effective rotation (0 for RCL/RCR when the
    count is a multiple of bits + 1: the result and CF are then v and cin)."""
    m = MASKS[bits]
    top = bits - 1
    if op == 0:  # ROL
        n = count % bits
        r = ((v << n) | (v >> (bits - n))) & m if n else v
        return r, r & 1, n
    if op == 1:  # ROR
        n = count % bits
        r = ((v >> n) | (v << (bits - n))) & m if n else v
        return r, r >> top & 1, n
    n = count % (bits + 1)
    if n == 0:
        return v, cin, 0
    width = bits + 1
    if op == 2:  # RCL
        wide = (cin << bits) | v
        wide = ((wide << n) | (wide >> (width - n))) & ((1 << width) - 1)
        return wide & m, wide >> bits & 1, n
    wide = (v << 1) | cin  # RCR
    wide = ((wide >> n) | (wide << (width - n))) & ((1 << width) - 1)
    return wide >> 1, wide & 1, n


def _shift_result(op: int, v: int, count: int, bits: int) -> Tuple[int, int]:
    """SHL/SHR/SAR of ``v`` by a non-zero masked ``count``: (result, CF)."""
    m = MASKS[bits]
    top = bits - 1
    if op in (4, 6):  # SHL (SAL)
        if count > bits:
            return 0, 0
        return (v << count) & m, (v >> (bits - count)) & 1
    if op == 5:  # SHR
        return v >> count, (v >> (count - 1)) & 1
    sv = v - ((v >> top & 1) << bits)  # SAR
    return (sv >> count) & m, (sv >> (count - 1)) & 1


def _result_of(op: int, r: int, cf: int, top: int) -> int:
    """OF by the manuals' count-1 formula applied to the final result."""
    if op in (0, 2, 4, 6):  # left: MSB(result) ^ CF
        return (r >> top & 1) ^ cf
    if op == 7:
        return 0
    return (r >> top & 1) ^ (r >> (top - 1) & 1)  # right: MSB ^ MSB-1


def _first_step_of(op: int, v: int, cin: int, top: int) -> int:
    """OF of the first one-bit step of a multi-bit shift or rotate of ``v``."""
    if op in (0, 2, 4, 6):  # left: the two top bits of the operand
        return (v >> top ^ v >> (top - 1)) & 1
    if op == 1:  # ROR: the bit rotated in (bit 0) against the old MSB
        return (v ^ v >> top) & 1
    if op == 3:  # RCR: CF rotated in against the old MSB
        return (cin ^ v >> top) & 1
    if op == 5:  # SHR: the old MSB
        return v >> top & 1
    return 0  # SAR


# -- AMD ----------------------------------------------------------------------------------
def shift_amd(c: CpuState, op: int, v: int, count: int, bits: int) -> int:
    """Group-2 operation ``op`` (0 rol, 1 ror, 2 rcl, 3 rcr, 4 shl, 5 shr, 6 sal, 7 sar)."""
    count &= 0x3F if bits == 64 else 0x1F
    if count == 0:
        return v
    top = bits - 1
    f = flags(c)
    c.lz = None
    if op < 4:
        r, cfv, _ = _rotate(op, v, count, bits, f & 1)
        of = _result_of(op, r, cfv, top)
        c.fl = (f & ~(CF | OF)) | cfv | (OF if of else 0)
        return r
    r, cfv = _shift_result(op, v, count, bits)
    of = _result_of(op, r, cfv, top)
    c.fl = (f & ~ARITH) | szp(r, bits) | cfv | (OF if of else 0) | AF
    return r


def shld_amd(c: CpuState, dst: int, src: int, count: int, bits: int, right: bool) -> int:
    """SHLD (right=False) / SHRD (right=True)."""
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


def mul_flags_amd(c: CpuState, overflow: bool, low: int, bits: int) -> None:
    """MUL/IMUL: CF = OF = overflow; SF/ZF/AF/PF left unchanged."""
    f = flags(c)
    c.fl = (f & ~(CF | OF)) | ((CF | OF) if overflow else 0)
    c.lz = None


def div_flags_amd(c: CpuState) -> None:
    """DIV/IDIV: CF/OF kept, AF set, SF/ZF/PF cleared."""
    f = flags(c)
    c.fl = (f & ~ARITH) | (f & (CF | OF)) | AF
    c.lz = None


def _bs_amd(c: CpuState, src: int, dst: int, index: int) -> int:
    """BSF/BSR on AMD: ZF = (src == 0), the destination kept then; the other flags
    unchanged. ``index`` is the bit found (unused when ``src`` is zero)."""
    f = flags(c)
    c.lz = None
    if src == 0:
        c.fl = f | ZF
        return dst
    c.fl = f & ~ZF
    return index


def bsf_amd(c: CpuState, src: int, dst: int, bits: int) -> int:
    """BSF: the index of the lowest set bit."""
    return _bs_amd(c, src, dst, (src & -src).bit_length() - 1)


def bsr_amd(c: CpuState, src: int, dst: int, bits: int) -> int:
    """BSR: the index of the highest set bit."""
    return _bs_amd(c, src, dst, src.bit_length() - 1)


# -- Intel --------------------------------------------------------------------------------
def shift_intel(c: CpuState, op: int, v: int, count: int, bits: int) -> int:
    """Group-2 operation by CL (or by 1): OF of a multi-bit count from the first step."""
    count &= 0x3F if bits == 64 else 0x1F
    if count == 0:
        return v
    top = bits - 1
    f = flags(c)
    if op < 4:
        r, cfv, n = _rotate(op, v, count, bits, f & 1)
        if op >= 2 and n == 0:
            return v  # RCL/RCR by a multiple of size + 1: no flag changes
        c.lz = None
        if count == 1:
            of = _result_of(op, r, cfv, top)
        else:
            of = _first_step_of(op, v, f & 1, top)
        c.fl = (f & ~(CF | OF)) | cfv | (OF if of else 0)
        return r
    c.lz = None
    r, cfv = _shift_result(op, v, count, bits)
    of = _result_of(op, r, cfv, top) if count == 1 else _first_step_of(op, v, 0, top)
    c.fl = (f & ~ARITH) | szp(r, bits) | cfv | (OF if of else 0)
    return r


def shift_imm_intel(c: CpuState, op: int, v: int, count: int, bits: int) -> int:
    """Group-2 operation by imm8: as by CL, except that ROL/ROR by more than one keep OF."""
    if op < 2 and (count & (0x3F if bits == 64 else 0x1F)) > 1:
        f = flags(c)
        r, cfv, _ = _rotate(op, v, count & (0x3F if bits == 64 else 0x1F), bits, 0)
        c.fl = (f & ~CF) | cfv
        c.lz = None
        return r
    return shift_intel(c, op, v, count, bits)


def shld_intel(c: CpuState, dst: int, src: int, count: int, bits: int, right: bool) -> int:
    """SHLD/SHRD: AF = 0, OF of a multi-bit count from the first step; a 16-bit count of
    17-31 shifts through dst:src:dst and CF is the last bit shifted out."""
    count &= 0x3F if bits == 64 else 0x1F
    if count == 0:
        return dst
    m = MASKS[bits]
    top = bits - 1
    if bits == 16:
        w = (dst << 32) | (src << 16) | dst
        if right:
            r = (w >> count) & m
            cfv = (w >> (count - 1)) & 1
        else:
            r = (w >> (32 - count)) & m
            cfv = (w >> (48 - count)) & 1
    elif right:
        r = ((dst >> count) | (src << (bits - count))) & m
        cfv = (dst >> (count - 1)) & 1
    else:
        r = ((dst << count) | (src >> (bits - count))) & m
        cfv = (dst >> (bits - count)) & 1
    if count == 1:
        of = _result_of(5 if right else 4, r, cfv, top)
    elif right:
        of = (src ^ dst >> top) & 1  # the first step shifts src's bit 0 in at the top
    else:
        of = (dst >> top ^ dst >> (top - 1)) & 1
    f = flags(c)
    c.fl = (f & ~ARITH) | szp(r, bits) | cfv | (OF if of else 0)
    c.lz = None
    return r


def mul_flags_intel(c: CpuState, overflow: bool, low: int, bits: int) -> None:
    """MUL/IMUL: CF = OF = overflow, SF = MSB of the low half, PF = its low byte's
    parity, ZF = AF = 0."""
    f = flags(c)
    c.fl = ((f & ~ARITH) | ((CF | OF) if overflow else 0) | PARITY[low & 0xFF]
            | (SF if low >> (bits - 1) & 1 else 0))
    c.lz = None


def div_flags_intel(c: CpuState) -> None:
    """DIV/IDIV: every flag unchanged."""


def _bs_flags_intel(c: CpuState, src: int, idx: int) -> None:
    f = flags(c) & ~ARITH
    c.fl = f | ZF | PF if src == 0 else f | PARITY[idx & 0xFF]
    c.lz = None


def bsf_intel(c: CpuState, src: int, dst: int, bits: int) -> int:
    """BSF: a zero source keeps the destination and gives ZF = PF = 1, the rest 0;
    otherwise ZF = CF = OF = SF = AF = 0 and PF is the parity of the index."""
    r = (src & -src).bit_length() - 1 if src else dst
    _bs_flags_intel(c, src, r)
    return r


def bsr_intel(c: CpuState, src: int, dst: int, bits: int) -> int:
    """BSR: as BSF, the index of the highest set bit."""
    r = src.bit_length() - 1 if src else dst
    _bs_flags_intel(c, src, r)
    return r


def bcd_intel(c: CpuState, op: int, imm: int) -> None:
    """DAA..AAD, SALC as helpers.bcd, except: AAS adjusts AX as one 16-bit value (AX - 6,
    then AH - 1: a borrow out of AL reaches AH, as the SDM's pseudo-code says), and AAD
    leaves the flags of the 8-bit addition AL + AH * imm (CF, AF and OF included)."""
    R = c.R
    ax = R[0] & 0xFFFF
    if op == 0x3F:
        f = flags(c)
        if (ax & 0xF) > 9 or f & AF:
            ax = (((ax - 6) & 0xFFFF) - 0x100) & 0xFF0F
            R[0] = (R[0] & ~0xFFFF) | ax
            c.fl = (f & ~ARITH) | szp(ax & 0xFF, 8) | CF | AF
        else:
            R[0] = (R[0] & ~0xFFFF) | (ax & 0xFF0F)
            c.fl = (f & ~ARITH) | szp(ax & 0x0F, 8)
        c.lz = None
        return
    if op == 0xD5:
        f = flags(c)
        al, add = ax & 0xFF, ((ax >> 8) * imm) & 0xFF
        r = (al + add) & 0xFF
        nf = szp(r, 8) | (CF if al + add > 0xFF else 0) | ((al ^ add ^ r) & AF)
        if (al ^ r) & (add ^ r) & 0x80:
            nf |= OF
        R[0] = (R[0] & ~0xFFFF) | r
        c.fl = (f & ~ARITH) | nf
        c.lz = None
        return
    bcd(c, op, imm)


# -- multiply / divide: defined results, the vendor's flags --------------------------------
MulFlags = Callable[[CpuState, bool, int, int], None]
DivFlags = Callable[[CpuState], None]


def _muldiv(mul_flags: MulFlags, div_flags: DivFlags) -> Dict[str, Any]:
    """MUL/IMUL/DIV/IDIV helpers that finish with the given vendor's flag rules."""

    def mul(c: CpuState, a: int, b: int, bits: int) -> Tuple[int, int]:
        """Unsigned a*b -> (low, high)."""
        p = a * b
        lo, hi = p & MASKS[bits], p >> bits
        mul_flags(c, hi != 0, lo, bits)
        return lo, hi

    def imul(c: CpuState, a: int, b: int, bits: int) -> Tuple[int, int]:
        """Signed a*b of ``bits``-bit operands -> (low, high) as unsigned halves."""
        sign = SIGNS[bits]
        p = (a - ((a & sign) << 1)) * (b - ((b & sign) << 1))
        m = MASKS[bits]
        lo = p & m
        mul_flags(c, lo - ((lo & sign) << 1) != p, lo, bits)
        return lo, (p >> bits) & m

    def div(c: CpuState, hi: int, lo: int, d: int, bits: int) -> Tuple[int, int]:
        """Unsigned (hi:lo) / d -> (quotient, remainder); #DE on zero or overflow."""
        if d == 0:
            raise GuestFault(DE)
        q, r = divmod((hi << bits) | lo, d)
        if q > MASKS[bits]:
            raise GuestFault(DE)
        div_flags(c)
        return q, r

    def idiv(c: CpuState, hi: int, lo: int, d: int, bits: int) -> Tuple[int, int]:
        """Signed (hi:lo) / d, truncating -> (quotient, remainder); #DE as DIV."""
        if d == 0:
            raise GuestFault(DE)
        n = (hi << bits) | lo
        sn = n - ((n & (1 << (2 * bits - 1))) << 1)
        sign = SIGNS[bits]
        sd = d - ((d & sign) << 1)
        q = abs(sn) // abs(sd)
        if (sn < 0) != (sd < 0):
            q = -q
        if not -sign <= q < sign:
            raise GuestFault(DE)
        div_flags(c)
        m = MASKS[bits]
        return q & m, (sn - q * sd) & m

    return {"mul": mul, "imul": imul, "div": div, "idiv": idiv}


def _bitcounts(kept: int) -> Dict[str, Any]:
    """TZCNT/LZCNT: CF = (src == 0), ZF = (result == 0), SF/AF/PF cleared; the flags in
    ``kept`` (AMD: OF) stay as they were, the other flags are cleared (Intel: OF too)."""

    def finish(c: CpuState, src: int, r: int) -> int:
        f = flags(c)
        c.fl = (f & ~ARITH) | (f & kept) | (CF if src == 0 else 0) | (ZF if r == 0 else 0)
        c.lz = None
        return r

    def tzcnt(c: CpuState, src: int, bits: int) -> int:
        """TZCNT: the number of trailing zero bits (the operand width for 0)."""
        return finish(c, src, bits if src == 0 else (src & -src).bit_length() - 1)

    def lzcnt(c: CpuState, src: int, bits: int) -> int:
        """LZCNT: the number of leading zero bits (the operand width for 0)."""
        return finish(c, src, bits - src.bit_length())

    return {"tzcnt": tzcnt, "lzcnt": lzcnt}


#: name -> the vendor's helpers, under the names generated code calls.
TABLES: Dict[str, Dict[str, Any]] = {
    "amd": {"shift": shift_amd, "shift_imm": shift_amd, "shld": shld_amd, "bsf": bsf_amd,
            "bsr": bsr_amd, **_bitcounts(OF),
            "bcd": bcd,
            **_muldiv(mul_flags_amd, div_flags_amd)},
    "intel": {"shift": shift_intel, "shift_imm": shift_imm_intel, "shld": shld_intel,
              "bsf": bsf_intel, "bsr": bsr_intel, **_bitcounts(0),
              "bcd": bcd_intel,
              **_muldiv(mul_flags_intel, div_flags_intel)},
}


def const_shift_flags(vendor: str, op: int, count: int, bits: int
                      ) -> Tuple[str, int]:
    """For the translator's inline SHL/SHR/SAR by a constant 0 < count < bits: the OF
    expression (over ``a`` = the operand, ``r`` = the result, ``cf``) and the AF bit."""
    top = bits - 1
    if op == 7:
        return "0", AF if vendor == "amd" else 0
    if vendor == "intel" and count > 1:
        if op == 5:
            return f"(({{a}} >> {top}) & 1) << 11", 0
        return f"((({{a}} >> {top}) ^ ({{a}} >> {top - 1})) & 1) << 11", 0
    if op == 5:
        return f"((({{r}} >> {top}) ^ ({{r}} >> {top - 1})) & 1) << 11", \
            AF if vendor == "amd" else 0
    return f"(({{r}} >> {top}) ^ {{cf}}) << 11", AF if vendor == "amd" else 0
