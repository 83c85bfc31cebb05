"""Instructions of CPUID feature extensions a kernel uses: RDRAND/RDSEED, RDPID and
RDFSBASE/RDGSBASE/WRFSBASE/WRGSBASE (helpers reached from gen_alu's 0F C7 group and
system.py's 0F AE group), and VERR/VERW (0F 00 /4, /5: Linux's MDS mitigation runs
VERW on every return to user space).

Each is #UD unless the vCPU's CPUID lists it (Intel SDM vol. 2): the mock's own
CPUID lists none of them, so they serve the hybrid CPU, whose mock has the KVM
vCPU's CPUID. RDRAND/RDSEED return host randomness (os.urandom) with CF=1 and the
other arithmetic flags clear, as a successful draw on silicon does.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .codegen import KEEP
from .decode import Insn
from .faults import GuestFault
from .state import CF, CR4_FSGSBASE, FS, GS, MSR_IA32_TSC_AUX
from .xsave import leaf

if TYPE_CHECKING:
    from .cpuview import HelperCpu


def _has(e: "HelperCpu", function: int, reg: int, bit: int) -> bool:
    regs = leaf(e, function, 0)
    return bool(regs and regs[reg] >> bit & 1)


def _set_reg(e: "HelperCpu", d: Insn, size: int, value: int) -> None:
    st = e.st
    if size == 2:
        st.R[d.rm] = (st.R[d.rm] & KEEP[2]) | (value & 0xFFFF)
    else:
        st.R[d.rm] = value & ((1 << (8 * size)) - 1)


def rand_pid(e: "HelperCpu", d: Insn) -> None:
    """0F C7 /6 RDRAND, /7 RDSEED, F3 0F C7 /7 RDPID (register forms)."""
    st = e.st
    op = d.reg & 7
    if op == 7 and d.rep == 0xF3:  # RDPID: IA32_TSC_AUX, 64 bits in 64-bit mode
        if not _has(e, 7, 2, 22):
            raise GuestFault(6)
        aux = st.msrs.get(MSR_IA32_TSC_AUX, 0) & 0xFFFFFFFF
        st.R[d.rm] = aux
        return
    if d.rep or not (_has(e, 1, 2, 30) if op == 6 else _has(e, 7, 1, 18)):
        raise GuestFault(6)
    size = d.osz
    _set_reg(e, d, size, int.from_bytes(os.urandom(size), "little"))
    from .helpers import flags

    st.fl = (flags(st) & ~0x8D5) | CF
    st.lz = None


def fsgsbase(e: "HelperCpu", d: Insn) -> None:
    """F3 0F AE /0 RDFSBASE, /1 RDGSBASE, /2 WRFSBASE, /3 WRGSBASE (register forms)."""
    st = e.st
    op = d.reg & 7
    if e.bits != 64 or not st.cr4 & CR4_FSGSBASE or not _has(e, 7, 1, 0):
        raise GuestFault(6)
    seg = FS if op in (0, 2) else GS
    size = 8 if d.rexw else 4
    if op < 2:
        st.R[d.rm] = st.seg[seg].base & ((1 << (8 * size)) - 1)
        return
    v = st.R[d.rm] & ((1 << (8 * size)) - 1)
    if v >> 47 not in (0, 0x1FFFF):
        raise GuestFault(13, 0)
    st.seg[seg].base = v
    st.sb[seg] = v


def verr_verw(e: "HelperCpu", d: Insn) -> None:
    """VERR (0F 00 /4) / VERW (/5): ZF=1 when the segment the selector names could be
    loaded for reading / writing at the current CPL and the selector's RPL (SDM: a null
    selector, one outside its table, a system segment, an unreadable or unwritable
    one, or too little privilege clear ZF; a conforming code segment skips the
    privilege check of VERR). #UD in real mode (checked by the caller)."""
    from .helpers import flags
    from .interrupts import read_descriptor
    from .state import ZF

    st = e.st
    user = e.cpl == 3
    if d.mod == 3:
        sel = st.R[d.rm] & 0xFFFF
    else:
        from .transfer import _ea

        sel = e.mmu.read_int(_ea(e, d), 2, user)
    ok = False
    if sel & 0xFFFC:
        try:
            _, hi = read_descriptor(e, sel)
        except GuestFault:
            hi = None
        if hi is not None and hi >> 12 & 1:  # a code or data segment
            typ, dpl = hi >> 8 & 0xF, hi >> 13 & 3
            code = bool(typ & 8)
            if d.reg & 7 == 4:
                ok = not code or bool(typ & 2)  # data, or readable code
                if ok and not (code and typ & 4):  # conforming code: no privilege check
                    ok = dpl >= max(e.cpl, sel & 3)
            else:
                ok = not code and bool(typ & 2) and dpl >= max(e.cpl, sel & 3)
    f = flags(st)
    st.fl = (f | ZF) if ok else (f & ~ZF)
    st.lz = None


__all__ = ["rand_pid", "fsgsbase", "verr_verw"]
