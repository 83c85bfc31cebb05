"""Event delivery: exceptions, external interrupts, NMIs and software interrupts
through the real-mode IVT or the protected/long-mode IDT, with double and
triple fault escalation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .faults import CONTRIBUTORY, DF, HAS_ERROR_CODE, PF, GuestFault
from .state import AC, CR0_PE, CS, EFER_LMA, IF, NT, RF, SS, TF, VM, Seg

if TYPE_CHECKING:
    from .cpuview import HelperCpu

KIND_EXC, KIND_EXT, KIND_NMI, KIND_SOFT = 0, 1, 2, 3


class TripleFault(Exception):
    """Delivery of #DF failed: the vCPU shuts down."""


def deliver_fault(eng: "HelperCpu", f: GuestFault) -> None:
    """Deliver exception ``f`` raised by the instruction at c.rip (escalating as the SDM says)."""
    st = eng.st
    first = f
    if f.vector == PF and f.cr2 is not None:
        st.cr2 = f.cr2
    try:
        deliver(eng, f.vector, KIND_EXC, f.error_code if f.vector in HAS_ERROR_CODE else None,
                st.rip)
        return
    except GuestFault as second:
        if first.vector == DF:
            raise TripleFault() from None
        benign = not ((first.vector in CONTRIBUTORY or first.vector == PF)
                      and (second.vector in CONTRIBUTORY or second.vector == PF)
                      and not (first.vector in CONTRIBUTORY and second.vector == PF))
        if benign:
            deliver_fault(eng, second)
            return
    try:
        deliver(eng, DF, KIND_EXC, 0, st.rip)
    except GuestFault:
        raise TripleFault() from None


def deliver(eng: "HelperCpu", vector: int, kind: int, error_code: Optional[int],
            return_ip: int) -> None:
    """Push the return frame and jump to the handler of ``vector``.

    ``return_ip`` is the RIP the handler returns to (the faulting instruction
    for faults, the next one for traps, INT n and interrupts).
    """
    st = eng.st
    if not st.cr0 & CR0_PE:
        _deliver_real(eng, vector, return_ip)
    elif st.efer & EFER_LMA:
        _deliver_long(eng, vector, kind, error_code, return_ip)
    else:
        _deliver_prot(eng, vector, kind, error_code, return_ip)
    eng.mode_changed()


def _deliver_real(eng: "HelperCpu", vector: int, return_ip: int) -> None:
    st = eng.st
    mmu = eng.mmu
    if vector * 4 + 3 > st.idt_limit:
        raise GuestFault(13, vector * 8 + 2)
    entry = mmu.read_int(st.idt_base + vector * 4, 4)
    flags = st.flags()
    sp = st.R[4]
    ss_base = st.seg[SS].base
    for v in (flags & 0xFFFF, st.seg[CS].selector, return_ip & 0xFFFF):
        sp = (sp - 2) & 0xFFFF
        mmu.write_int((ss_base + sp) & 0xFFFFFFFF, 2, v)
    st.R[4] = (st.R[4] & ~0xFFFF) | sp
    st.fl = flags & ~(IF | TF | AC | RF)
    st.lz = None
    cs = st.seg[CS]
    cs.selector = entry >> 16
    cs.base = (entry >> 16) << 4
    st.sb[CS] = cs.base
    st.rip = entry & 0xFFFF


def read_descriptor(eng: "HelperCpu", selector: int) -> tuple:  # type: ignore[type-arg]
    """(low, high) dwords of the GDT/LDT descriptor for ``selector``; #GP if outside the table."""
    st = eng.st
    idx = selector & ~7
    if selector & 4:
        base, limit = st.ldt.base, st.ldt.limit
    else:
        base, limit = st.gdt_base, st.gdt_limit
    if idx + 7 > limit:
        raise GuestFault(13, selector & 0xFFFC)
    raw = eng.mmu.read_int(base + idx, 8)
    return raw & 0xFFFFFFFF, raw >> 32


def seg_from_descriptor(selector: int, lo: int, hi: int, hi2: int = 0) -> Seg:
    base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000) | (hi2 << 32)
    limit = (lo & 0xFFFF) | (hi & 0xF0000)
    g = (hi >> 23) & 1
    if g:
        limit = (limit << 12) | 0xFFF
    return Seg(selector=selector, base=base, limit=limit, type_=(hi >> 8) & 0xF,
               present=(hi >> 15) & 1, dpl=(hi >> 13) & 3, db=(hi >> 22) & 1, s=(hi >> 12) & 1,
               l=(hi >> 21) & 1, g=g, avl=(hi >> 20) & 1)


def _gate(eng: "HelperCpu", vector: int, kind: int, size: int) -> tuple:  # type: ignore[type-arg]
    st = eng.st
    ext = 0 if kind == KIND_SOFT else 1
    if vector * size + size - 1 > st.idt_limit:
        raise GuestFault(13, vector * 8 + 2 + ext)
    raw = eng.mmu.read_int(st.idt_base + vector * size, size)
    lo, hi = raw & 0xFFFFFFFF, (raw >> 32) & 0xFFFFFFFF
    gtype = (hi >> 8) & 0xF
    present = (hi >> 15) & 1
    dpl = (hi >> 13) & 3
    if kind == KIND_SOFT and dpl < st.cpl:
        raise GuestFault(13, vector * 8 + 2)
    if not present:
        raise GuestFault(11, vector * 8 + 2 + ext)
    offset = (lo & 0xFFFF) | (hi & 0xFFFF0000)
    if size == 16:
        offset |= (raw >> 64 & 0xFFFFFFFF) << 32
    return gtype, lo >> 16, offset, (hi & 7)


def _target_cs(eng: "HelperCpu", sel: int, vector: int) -> Seg:
    if sel & 0xFFFC == 0:
        raise GuestFault(13, 0)
    lo, hi = read_descriptor(eng, sel)
    cs = seg_from_descriptor(sel, lo, hi)
    if not cs.s or not cs.type & 8:
        raise GuestFault(13, sel & 0xFFFC)
    if not cs.present:
        raise GuestFault(11, sel & 0xFFFC)
    return cs


def _deliver_long(eng: "HelperCpu", vector: int, kind: int, error_code: Optional[int],
                  return_ip: int) -> None:
    st = eng.st
    mmu = eng.mmu
    gtype, sel, offset, ist = _gate(eng, vector, kind, 16)
    if gtype not in (0xE, 0xF):
        raise GuestFault(13, vector * 8 + 2)
    cs = _target_cs(eng, sel, vector)
    cpl = st.cpl
    new_cpl = cs.dpl if not cs.type & 4 else cpl
    old_ss, old_rsp = st.seg[SS].selector, st.R[4]
    flags = st.flags()
    if ist:
        rsp = mmu.read_int(st.tr.base + 0x24 + 8 * (ist - 1), 8)
    elif new_cpl < cpl:
        rsp = mmu.read_int(st.tr.base + 4 + 8 * new_cpl, 8)
    else:
        rsp = old_rsp
    rsp &= ~0xF
    frame = [old_ss, old_rsp, flags, st.seg[CS].selector, return_ip]
    if error_code is not None:
        frame.append(error_code)
    for v in frame:
        rsp = (rsp - 8) & 0xFFFFFFFFFFFFFFFF
        mmu.write_int(rsp, 8, v, False)
    st.R[4] = rsp
    if new_cpl != cpl:
        st.seg[SS] = Seg(selector=new_cpl, base=0, limit=0xFFFFFFFF, type_=3, dpl=new_cpl,
                         db=1, g=1, unusable=1 if new_cpl == 0 else 0)
    cs.selector = (sel & 0xFFFC) | new_cpl
    cs.dpl = new_cpl if cs.type & 4 == 0 else cs.dpl
    st.seg[CS] = cs
    st.reload_bases()
    st.fl = flags & ~(TF | NT | RF | VM | (IF if gtype == 0xE else 0))
    st.lz = None
    st.rip = offset


def _deliver_prot(eng: "HelperCpu", vector: int, kind: int, error_code: Optional[int],
                  return_ip: int) -> None:
    st = eng.st
    mmu = eng.mmu
    gtype, sel, offset, _ = _gate(eng, vector, kind, 8)
    if gtype not in (0xE, 0xF, 0x6, 0x7):
        raise GuestFault(13, vector * 8 + 2)  # task gates are not emulated
    wide = gtype & 8
    if not wide:
        offset &= 0xFFFF
    cs = _target_cs(eng, sel, vector)
    cpl = st.cpl
    new_cpl = cs.dpl if not cs.type & 4 else cpl
    flags = st.flags()
    frame = []
    n = 4 if wide else 2
    if new_cpl < cpl:
        tss = st.tr.base
        new_esp = mmu.read_int(tss + 4 + 8 * new_cpl, 4)
        new_ss_sel = mmu.read_int(tss + 8 + 8 * new_cpl, 2)
        if new_ss_sel & 0xFFFC == 0:
            raise GuestFault(10, 0)  # #TS: null stack segment in the TSS
        lo, hi = read_descriptor(eng, new_ss_sel)
        new_ss = seg_from_descriptor(new_ss_sel, lo, hi)
        frame += [st.seg[SS].selector, st.R[4] & 0xFFFFFFFF]
        sp = new_esp
        ss = new_ss
    else:
        sp = st.R[4]
        ss = st.seg[SS]
    frame += [flags, st.seg[CS].selector, return_ip]
    if error_code is not None:
        frame.append(error_code)
    spmask = 0xFFFFFFFF if ss.db else 0xFFFF
    sp &= spmask
    for v in frame:
        sp = (sp - n) & spmask
        mmu.write_int((ss.base + sp) & 0xFFFFFFFF, n, v, False)
    if new_cpl < cpl:
        st.seg[SS] = ss
    st.R[4] = sp if ss.db else (st.R[4] & ~0xFFFF) | sp
    cs.selector = (sel & 0xFFFC) | new_cpl
    st.seg[CS] = cs
    st.reload_bases()
    st.fl = flags & ~(TF | NT | RF | VM | (IF if gtype in (0xE, 0x6) else 0))
    st.lz = None
    st.rip = offset
