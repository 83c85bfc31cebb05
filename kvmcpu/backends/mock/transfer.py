"""Segment loads and privileged control transfers: MOV/POP Sreg, far JMP/CALL/RET,
INT n/INT3/INTO, IRET, PUSHF/POPF, CLI/STI, ENTER, SYSCALL/SYSRET."""

from __future__ import annotations

from typing import TYPE_CHECKING, Tuple

from .codegen import M
from .decode import Insn
from .faults import BP, GuestFault
from .interrupts import KIND_SOFT, deliver, read_descriptor, seg_from_descriptor
from .state import (
    CR0_PE,
    CS,
    DS,
    EFER_LMA,
    EFER_SCE,
    ES,
    FS,
    GS,
    IF,
    IOPL,
    MSR_CSTAR,
    MSR_LSTAR,
    MSR_SFMASK,
    MSR_STAR,
    NT,
    OF,
    RF,
    SS,
    VM,
    Seg,
)

if TYPE_CHECKING:
    from .cpuview import HelperCpu


def _user(e: "HelperCpu") -> bool:
    return e.cpl == 3


def load_seg(e: "HelperCpu", idx: int, sel: int) -> None:
    """Load segment register ``idx`` with ``sel`` (real-mode or protected-mode rules)."""
    st = e.st
    if not st.cr0 & CR0_PE:
        s = st.seg[idx]
        s.selector = sel
        s.base = sel << 4
        s.present = 1
        s.unusable = 0
        st.sb[idx] = s.base
        if idx in (CS, SS):
            e.mode_changed()
        return
    cpl = e.cpl
    if sel & 0xFFFC == 0:
        if idx == SS and not (e.bits == 64 and cpl < 3):
            raise GuestFault(13, 0)
        st.seg[idx] = Seg(selector=sel, base=0, limit=0, type_=0, present=0, s=1, unusable=1,
                          dpl=cpl if idx == SS else 0, db=1 if idx == SS else 0)
        if idx == SS and e.bits == 64:
            st.seg[idx].unusable = 1
        st.sb[idx] = 0 if idx not in (FS, GS) else st.seg[idx].base
        if idx == SS:
            e.mode_changed()
        return
    lo, hi = read_descriptor(e, sel)
    s = seg_from_descriptor(sel, lo, hi)
    rpl = sel & 3
    if not s.s:
        raise GuestFault(13, sel & 0xFFFC)
    if idx == SS:
        if rpl != cpl or s.dpl != cpl or s.type & 8 or not s.type & 2:
            raise GuestFault(13, sel & 0xFFFC)
        if not s.present:
            raise GuestFault(12, sel & 0xFFFC)
    else:
        if s.type & 8 and not s.type & 2:
            raise GuestFault(13, sel & 0xFFFC)  # execute-only code
        if not (s.type & 8 and s.type & 4) and max(cpl, rpl) > s.dpl:
            raise GuestFault(13, sel & 0xFFFC)
        if not s.present:
            raise GuestFault(11, sel & 0xFFFC)
    _set_accessed(e, sel, hi)
    s.type |= 1
    st.seg[idx] = s
    st.sb[idx] = s.base
    if idx == SS:
        e.mode_changed()


def _set_accessed(e: "HelperCpu", sel: int, hi: int) -> None:
    if hi & 0x100:
        return
    st = e.st
    base = st.ldt.base if sel & 4 else st.gdt_base
    e.mmu.write_int(base + (sel & ~7) + 5, 1, (hi >> 8) | 1)


def load_cs(e: "HelperCpu", sel: int, off: int, *, call: bool = False) -> Seg:
    """Load CS for a far transfer to ``sel`` (code segments only; no gates)."""
    st = e.st
    if not st.cr0 & CR0_PE:
        cs = st.seg[CS].copy()
        cs.selector = sel
        cs.base = sel << 4
        return cs
    if sel & 0xFFFC == 0:
        raise GuestFault(13, 0)
    lo, hi = read_descriptor(e, sel)
    cs = seg_from_descriptor(sel, lo, hi)
    cpl = e.cpl
    if not cs.s:
        from .faults import ExitNow

        raise ExitNow("emulation", b"", "call/task gates are not emulated")
    if not cs.type & 8:
        raise GuestFault(13, sel & 0xFFFC)
    if cs.type & 4:
        if cs.dpl > cpl:
            raise GuestFault(13, sel & 0xFFFC)
    elif (sel & 3) > cpl or cs.dpl != cpl:
        raise GuestFault(13, sel & 0xFFFC)
    if not cs.present:
        raise GuestFault(11, sel & 0xFFFC)
    cs.selector = (sel & 0xFFFC) | cpl
    cs.dpl = cs.dpl if cs.type & 4 else cpl
    return cs


def _commit_cs(e: "HelperCpu", cs: Seg, ip: int) -> None:
    st = e.st
    st.seg[CS] = cs
    st.rip = ip
    e.mode_changed()


def _push(e: "HelperCpu", v: int, n: int) -> None:
    st = e.st
    sb = e.stack_bits
    m = M[sb // 8]
    sp = (st.R[4] - n) & m
    lin = sp if e.bits == 64 else (st.sb[SS] + sp) & 0xFFFFFFFF
    e.mmu.write_int(lin, n, v, _user(e))
    st.R[4] = sp if sb != 16 else (st.R[4] & ~0xFFFF) | sp


def _pop_values(e: "HelperCpu", n: int, count: int) -> Tuple[list, int]:  # type: ignore[type-arg]
    """Read ``count`` stack slots of ``n`` bytes without committing RSP."""
    st = e.st
    m = M[e.stack_bits // 8]
    sp = st.R[4] & m
    out = []
    for _ in range(count):
        lin = sp if e.bits == 64 else (st.sb[SS] + sp) & 0xFFFFFFFF
        out.append(e.mmu.read_int(lin, n, _user(e)))
        sp = (sp + n) & m
    return out, sp


def _set_sp(e: "HelperCpu", sp: int) -> None:
    st = e.st
    st.R[4] = sp if e.stack_bits != 16 else (st.R[4] & ~0xFFFF) | sp


# -- helpers called from generated code (signature (engine, insn)) --------------------------
def mov_sreg(e: "HelperCpu", d: Insn) -> None:
    idx = d.reg & 7
    if idx > 5 or idx == CS:
        raise GuestFault(6)
    if d.mod == 3:
        sel = e.st.R[d.rm] & 0xFFFF
    else:
        sel = e.mmu.read_int(_ea(e, d), 2, _user(e))
    load_seg(e, idx, sel)
    if idx == SS:
        e.st.shadow = 1
        e.shadow_set = True
    e.st.rip = d.next_ip


def _ea(e: "HelperCpu", d: Insn, extra: int = 0) -> int:
    """Linear address of d's memory operand computed at run time."""
    st = e.st
    amask = M[d.asz]
    if d.riprel:
        off = (d.next_ip + d.disp + extra) & amask
    else:
        off = d.disp + extra
        if d.base >= 0:
            off += st.R[d.base]
        if d.index >= 0:
            off += st.R[d.index] * d.scale
        off &= amask
    if e.bits == 64:
        if d.seg in (FS, GS):
            return (off + st.sb[d.seg]) & 0xFFFFFFFFFFFFFFFF
        return off
    seg = d.seg if d.seg >= 0 else (SS if d.ss_default else DS)
    return (off + st.sb[seg]) & 0xFFFFFFFF


def push_sreg(e: "HelperCpu", d: Insn) -> None:
    idx = {0x06: ES, 0x0E: CS, 0x16: SS, 0x1E: DS, 0x1A0: FS, 0x1A8: GS}[d.opc]
    n = d.osz
    _push(e, e.st.seg[idx].selector, n)


def pop_sreg(e: "HelperCpu", d: Insn) -> None:
    idx = {0x07: ES, 0x17: SS, 0x1F: DS, 0x1A1: FS, 0x1A9: GS}[d.opc]
    vals, sp = _pop_values(e, d.osz, 1)
    load_seg(e, idx, vals[0] & 0xFFFF)
    _set_sp(e, sp)
    if idx == SS:
        e.st.shadow = 1
        e.shadow_set = True
    e.st.rip = d.next_ip


def load_far_ptr(e: "HelperCpu", d: Insn) -> None:
    """LDS/LES/LSS/LFS/LGS."""
    if d.mod == 3:
        raise GuestFault(6)
    idx = {0xC4: ES, 0xC5: DS, 0x1B2: SS, 0x1B4: FS, 0x1B5: GS}[d.opc]
    a = _ea(e, d)
    off = e.mmu.read_int(a, d.osz, _user(e))
    sel = e.mmu.read_int((a + d.osz) & e.mmu.lin_mask, 2, _user(e))
    load_seg(e, idx, sel)
    from .codegen import KEEP

    st = e.st
    if d.osz >= 4:
        st.R[d.reg] = off
    else:
        st.R[d.reg] = (st.R[d.reg] & KEEP[2]) | off
    st.rip = d.next_ip


def far_jmp_call_imm(e: "HelperCpu", d: Insn) -> None:
    """JMP/CALL ptr16:16/32 (9A/EA, not in 64-bit mode)."""
    if e.bits == 64:
        raise GuestFault(6)
    cs = load_cs(e, d.imm2, d.imm)
    if d.opc == 0x9A:
        _push(e, e.st.seg[CS].selector, d.osz)
        _push(e, d.next_ip, d.osz)
    _commit_cs(e, cs, d.imm & M[d.osz])


def far_call_jmp_mem(e: "HelperCpu", d: Insn) -> None:
    """FF /3 (CALL m16:xx) and FF /5 (JMP m16:xx)."""
    n = d.osz
    a = _ea(e, d)
    off = e.mmu.read_int(a, n, _user(e))
    sel = e.mmu.read_int((a + n) & e.mmu.lin_mask, 2, _user(e))
    cs = load_cs(e, sel, off)
    if d.reg & 7 == 3:
        _push(e, e.st.seg[CS].selector, n)
        _push(e, d.next_ip, n)
    _commit_cs(e, cs, off)


def far_ret(e: "HelperCpu", d: Insn) -> None:
    """RETF / RETF imm16 (same privilege, or to an outer one)."""
    n = d.osz
    vals, sp = _pop_values(e, n, 2)
    ip, sel = vals[0], vals[1] & 0xFFFF
    st = e.st
    if st.cr0 & CR0_PE and (sel & 3) > e.cpl:
        sp = (sp + (d.imm if d.opc == 0xCA else 0)) & M[e.stack_bits // 8]
        st.R[4] = sp
        outer, _ = _pop_values(e, n, 2)
        lo, hi = read_descriptor(e, sel)
        cs = seg_from_descriptor(sel, lo, hi)
        st.seg[CS] = cs
        e.mode_changed()
        load_seg(e, SS, outer[1] & 0xFFFF)
        st.R[4] = outer[0]
        st.rip = ip
        e.mode_changed()
        return
    cs = load_cs(e, sel, ip)
    if d.opc == 0xCA:
        sp = (sp + d.imm) & M[e.stack_bits // 8]
    _set_sp(e, sp)
    _commit_cs(e, cs, ip)


def int_n(e: "HelperCpu", d: Insn) -> None:
    """INT n (CD), INT3 (CC), INTO (CE)."""
    if d.opc == 0xCC:
        if e.sw_bp:
            raise GuestFault(BP)
        vec = 3
    elif d.opc == 0xCE:
        if e.bits == 64:
            raise GuestFault(6)
        from .helpers import flags

        if not flags(e.st) & OF:
            e.st.rip = d.next_ip
            return
        vec = 4
    else:
        vec = d.imm
    deliver(e, vec, KIND_SOFT, None, d.next_ip)


def iret(e: "HelperCpu", d: Insn) -> None:
    st = e.st
    n = d.osz
    if not st.cr0 & CR0_PE:
        vals, sp = _pop_values(e, n, 3)
        ip, sel, fl = vals
        _set_sp(e, sp)
        cs = st.seg[CS]
        cs.selector = sel & 0xFFFF
        cs.base = (sel & 0xFFFF) << 4
        st.sb[CS] = cs.base
        keep = st.fl & ~0xFFFF if n == 2 else st.fl & (VM | 0x1A0000)
        _set_flags_popf(e, (fl & (0xFFFF if n == 2 else 0x3FFFFF)) | keep, n, iret=True)
        st.rip = ip & M[n]
        st.nmi_masked = False
        e.mode_changed()
        return
    if st.fl & NT and not st.efer & EFER_LMA:
        from .faults import ExitNow

        raise ExitNow("emulation", d.raw, "task return (IRET with NT) is not emulated")
    long64 = e.bits == 64
    vals, sp = _pop_values(e, n, 3)
    ip, sel, fl = vals[0], vals[1] & 0xFFFF, vals[2]
    cpl = e.cpl
    rpl = sel & 3
    if rpl < cpl:
        raise GuestFault(13, sel & 0xFFFC)
    lo, hi = read_descriptor(e, sel)
    cs = seg_from_descriptor(sel, lo, hi)
    if not cs.s or not cs.type & 8:
        raise GuestFault(13, sel & 0xFFFC)
    if not cs.present:
        raise GuestFault(11, sel & 0xFFFC)
    if long64 or rpl > cpl:
        more, sp2 = _pop_values_from(e, sp, n, 2)
        new_sp, ss_sel = more[0], more[1] & 0xFFFF
    else:
        new_sp, ss_sel = None, None
    # commit
    old_cpl = cpl
    cs.dpl = rpl if not cs.type & 4 else cs.dpl
    cs.selector = sel
    st.seg[CS] = cs
    _set_flags_popf(e, fl, n, iret=True, cpl=old_cpl)
    if new_sp is not None:
        e.mode_changed()
        if ss_sel is not None and ss_sel & 0xFFFC == 0 and e.bits == 64 and rpl < 3:
            st.seg[SS] = Seg(selector=ss_sel, base=0, limit=0xFFFFFFFF, type_=3, dpl=rpl, db=1,
                             g=1, unusable=1)
        else:
            load_seg(e, SS, ss_sel or 0)
        st.R[4] = new_sp if e.stack_bits != 16 else (st.R[4] & ~0xFFFF) | (new_sp & 0xFFFF)
    else:
        _set_sp(e, sp)
    if rpl > old_cpl:
        for i in (ES, DS, FS, GS):
            s = st.seg[i]
            if s.dpl < rpl and not (s.type & 8 and s.type & 4) and not s.unusable and \
                    not e.bits == 64:
                st.seg[i] = Seg(selector=0, type_=0, present=0, unusable=1)
    st.rip = ip & (0xFFFFFFFFFFFFFFFF if cs.l and st.efer & EFER_LMA else M[min(n, 4)])
    st.nmi_masked = False
    e.mode_changed()


def _pop_values_from(e: "HelperCpu", sp: int, n: int, count: int) -> Tuple[list, int]:  # type: ignore[type-arg]
    st = e.st
    m = M[e.stack_bits // 8]
    out = []
    for _ in range(count):
        lin = sp if e.bits == 64 else (st.sb[SS] + sp) & 0xFFFFFFFF
        out.append(e.mmu.read_int(lin, n, e.cpl == 3))
        sp = (sp + n) & m
    return out, sp


def _set_flags_popf(e: "HelperCpu", v: int, n: int, *, iret: bool = False, cpl: int = -1) -> None:
    st = e.st
    if cpl < 0:
        cpl = e.cpl
    old = st.flags()
    mask = 0x3F7FD5 & ~(VM | 0x80000 | 0x100000)  # VIF/VIP/VM are not software-settable here
    if not iret:
        mask &= ~RF
    if st.cr0 & CR0_PE:
        if cpl > 0:
            mask &= ~IOPL
        if cpl > (old & IOPL) >> 12:
            mask &= ~IF
    if n == 2:
        mask &= 0xFFFF
    st.fl = (old & ~mask) | (v & mask) | 2
    st.lz = None


def pushf(e: "HelperCpu", d: Insn) -> None:
    fl = e.st.flags() & ~(VM | RF)
    _push(e, fl & M[d.osz], d.osz)


def popf(e: "HelperCpu", d: Insn) -> None:
    vals, sp = _pop_values(e, d.osz, 1)
    _set_flags_popf(e, vals[0], d.osz)
    _set_sp(e, sp)
    e.st.rip = d.next_ip


def cli(e: "HelperCpu", d: Insn) -> None:
    st = e.st
    if st.cr0 & CR0_PE and e.cpl > (st.fl & IOPL) >> 12:
        raise GuestFault(13, 0)
    st.fl &= ~IF


def sti(e: "HelperCpu", d: Insn) -> None:
    st = e.st
    if st.cr0 & CR0_PE and e.cpl > (st.fl & IOPL) >> 12:
        raise GuestFault(13, 0)
    if not st.fl & IF:
        st.shadow = 2
        e.shadow_set = True
    st.fl |= IF
    st.rip = d.next_ip


def enter(e: "HelperCpu", d: Insn) -> None:
    st = e.st
    size, level = d.imm, d.imm2 & 31
    n = d.osz
    sm = M[e.stack_bits // 8]
    bp = st.R[5]
    # compute everything before committing so that a fault changes nothing
    sp = st.R[4] & sm
    writes = []
    sp = (sp - n) & sm
    writes.append((sp, bp & M[n]))
    frame_temp = sp
    for i in range(1, level):
        bpv = (bp - i * n) & sm
        lin = bpv if e.bits == 64 else (st.sb[SS] + bpv) & 0xFFFFFFFF
        val = e.mmu.read_int(lin, n, _user(e))
        sp = (sp - n) & sm
        writes.append((sp, val))
    if level:
        sp = (sp - n) & sm
        writes.append((sp, frame_temp))
    for addr, val in writes:
        lin = addr if e.bits == 64 else (st.sb[SS] + addr) & 0xFFFFFFFF
        e.mmu.write_int(lin, n, val, _user(e))
    sp = (sp - size) & sm
    if n == 2:
        st.R[5] = (st.R[5] & ~0xFFFF) | (frame_temp & 0xFFFF)
    else:
        st.R[5] = frame_temp
    _set_sp(e, sp)


def syscall(e: "HelperCpu", d: Insn) -> None:
    st = e.st
    if not st.efer & EFER_SCE or not st.efer & EFER_LMA:
        raise GuestFault(6)
    star = st.msrs.get(MSR_STAR, 0)
    sel = (star >> 32) & 0xFFFC
    st.R[1] = d.next_ip
    fl = st.flags()
    st.R[11] = fl & ~RF
    st.seg[CS] = Seg(selector=sel, base=0, limit=0xFFFFFFFF, type_=0xB, dpl=0, l=1, g=1)
    st.seg[SS] = Seg(selector=sel + 8, base=0, limit=0xFFFFFFFF, type_=3, dpl=0, db=1, g=1)
    st.fl = (fl & ~st.msrs.get(MSR_SFMASK, 0) & ~RF) | 2
    st.lz = None
    target = st.msrs.get(MSR_LSTAR if e.bits == 64 else MSR_CSTAR, 0)
    st.rip = target
    e.mode_changed()


def sysret(e: "HelperCpu", d: Insn) -> None:
    st = e.st
    if not st.efer & EFER_SCE or not st.efer & EFER_LMA:
        raise GuestFault(6)
    if e.cpl != 0:
        raise GuestFault(13, 0)
    star = st.msrs.get(MSR_STAR, 0)
    base = (star >> 48) & 0xFFFF
    if d.rexw:
        rip = st.R[1]
        if rip >> 47 not in (0, 0x1FFFF):
            raise GuestFault(13, 0)
        st.seg[CS] = Seg(selector=((base + 16) & 0xFFFC) | 3, base=0, limit=0xFFFFFFFF,
                         type_=0xB, dpl=3, l=1, g=1)
    else:
        rip = st.R[1] & 0xFFFFFFFF
        st.seg[CS] = Seg(selector=(base & 0xFFFC) | 3, base=0, limit=0xFFFFFFFF, type_=0xB,
                         dpl=3, db=1, g=1)
    old_ss = st.seg[SS]
    st.seg[SS] = Seg(selector=((base + 8) & 0xFFFC) | 3, base=0, limit=0xFFFFFFFF, type_=3,
                     dpl=3, db=1, g=1)
    del old_ss
    st.fl = (st.R[11] & 0x3C7FD7 & ~(RF | VM)) | 2
    st.lz = None
    st.rip = rip
    e.mode_changed()


__all__ = ["load_seg", "load_cs", "iret", "int_n", "syscall", "sysret"]
