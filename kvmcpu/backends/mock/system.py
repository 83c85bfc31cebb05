"""System instructions: CPUID, RDTSC(P), RDMSR/WRMSR, MOV CRn/DRn, descriptor
tables (LGDT/LIDT/SGDT/SIDT/LLDT/LTR/SLDT/STR/SMSW/LMSW), INVLPG, SWAPGS, HLT,
IN/OUT, VMCALL/VMMCALL, CMPXCHG8B/16B, FXSAVE/FXRSTOR and friends."""

from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING

from . import xsave
from .codegen import KEEP, M
from .decode import Insn
from .faults import ExitNow, GuestFault
from .interrupts import read_descriptor, seg_from_descriptor
from .state import (
    CR0_ET,
    CR0_PE,
    CR0_PG,
    CR0_TS,
    CR4_OSXSAVE,
    CR4_PAE,
    CR4_VALID,
    CS,
    EFER_LMA,
    EFER_LME,
    EFER_VALID,
    FS,
    GS,
    IOPL,
    MSR_EFER,
    MSR_FS_BASE,
    MSR_GS_BASE,
    MSR_IA32_APICBASE,
    MSR_IA32_TSC,
    MSR_IA32_TSC_AUX,
    MSR_INDEX_LIST,
    MSR_KERNEL_GS_BASE,
    ZF,
)
from .transfer import _ea

if TYPE_CHECKING:
    from .cpuview import HelperCpu

KVM_HC_MAP_GPA_RANGE = 12
KVM_ENOSYS = 1000
KVM_EPERM = 1
KVM_EINVAL = 22


def _priv(e: "HelperCpu") -> None:
    if e.cpl != 0:
        raise GuestFault(13, 0)


def _user(e: "HelperCpu") -> bool:
    return e.cpl == 3


# -- MSRs ------------------------------------------------------------------------------------
def write_msr(e: "HelperCpu", index: int, value: int, host: bool = False) -> bool:
    """Write an MSR; False when the value is invalid (the guest gets #GP)."""
    st = e.st
    if index not in MSR_INDEX_LIST:
        return False
    if index == MSR_EFER:
        if value & ~EFER_VALID:
            return False
        if not host:
            if (value ^ st.efer) & EFER_LME and st.cr0 & CR0_PG:
                return False
            value = (value & ~EFER_LMA) | (st.efer & EFER_LMA)
        st.efer = value
        e.mode_changed()
        e.tlb_flush()
        return True
    if index in (MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE) and \
            value >> 47 not in (0, 0x1FFFF):
        return False
    if index == MSR_FS_BASE:
        st.seg[FS].base = value
        st.sb[FS] = value
    elif index == MSR_GS_BASE:
        st.seg[GS].base = value
        st.sb[GS] = value
    elif index == MSR_IA32_TSC:
        e.set_tsc(value)
    elif index == MSR_IA32_APICBASE:
        st.apic_base = value
    elif index == xsave.MSR_IA32_XSS:
        if value & ~xsave.supported_xss(e):
            return False
        st.msrs[index] = value
    else:
        st.msrs[index] = value
    return True


def read_msr(e: "HelperCpu", index: int) -> int:
    st = e.st
    if index not in MSR_INDEX_LIST:
        raise GuestFault(13, 0)
    if index == MSR_EFER:
        return st.efer
    if index == MSR_FS_BASE:
        return st.seg[FS].base
    if index == MSR_GS_BASE:
        return st.seg[GS].base
    if index == MSR_IA32_TSC:
        return e.tsc()
    if index == MSR_IA32_APICBASE:
        return st.apic_base
    return st.msrs.get(index, 0)


#: KVM_MSR_EXIT_REASON_* (KVM_CAP_X86_USER_SPACE_MSR).
_MSR_INVAL, _MSR_UNKNOWN, _MSR_FILTER = 1, 2, 4


def _msr_to_user(e: "HelperCpu", d: Insn, index: int, write: bool, value: int,
                 reason: int) -> bool:
    """Hand the access to user space as KVM_EXIT_X86_RDMSR/WRMSR when the VM enabled
    ``reason`` (KVM_CAP_X86_USER_SPACE_MSR); False: the guest takes the #GP. The
    instruction is done when user space answers (MockVcpu._complete_last)."""
    if not e.vm.user_msr_exits & reason:
        return False
    e.st.rip = d.next_ip
    e.mmu.pending.append(("msr", write, index, value, reason, d.ip))
    e.stop[0] = True
    return True


def _failed_reason(index: int) -> int:
    """Why KVM fails an MSR the mock does not implement: the x2APIC MSRs without an
    in-kernel APIC are invalid, anything else unknown (kvm_msr_reason)."""
    return _MSR_INVAL if 0x800 <= index <= 0x8FF else _MSR_UNKNOWN


def rdmsr(e: "HelperCpu", d: Insn) -> None:
    _priv(e)
    st = e.st
    index = st.R[1] & 0xFFFFFFFF
    vm = e.vm
    if vm.user_msr_exits or vm.msr_filter_ranges or vm.msr_filter_deny:
        # kvm_get_msr_with_filter: the filter first, then the MSR itself
        if not vm.msr_allowed(index, False):
            if _msr_to_user(e, d, index, False, 0, _MSR_FILTER):
                return
            raise GuestFault(13, 0)
        if index not in MSR_INDEX_LIST and _msr_to_user(e, d, index, False, 0,
                                                        _failed_reason(index)):
            return
    v = read_msr(e, index)
    st.R[0] = v & 0xFFFFFFFF
    st.R[2] = v >> 32


def wrmsr(e: "HelperCpu", d: Insn) -> None:
    _priv(e)
    st = e.st
    v = ((st.R[2] & 0xFFFFFFFF) << 32) | (st.R[0] & 0xFFFFFFFF)
    index = st.R[1] & 0xFFFFFFFF
    vm = e.vm
    if vm.user_msr_exits or vm.msr_filter_ranges or vm.msr_filter_deny:
        if not vm.msr_allowed(index, True):
            if _msr_to_user(e, d, index, True, v, _MSR_FILTER):
                return
            raise GuestFault(13, 0)
        if index not in MSR_INDEX_LIST:
            if _msr_to_user(e, d, index, True, v, _failed_reason(index)):
                return
            raise GuestFault(13, 0)
        if not write_msr(e, index, v):
            if _msr_to_user(e, d, index, True, v, _MSR_INVAL):
                return
            raise GuestFault(13, 0)
        return
    if not write_msr(e, index, v):
        raise GuestFault(13, 0)


def rdtsc(e: "HelperCpu", d: Insn) -> None:
    st = e.st
    if st.cr4 & 4 and e.cpl:
        raise GuestFault(13, 0)
    t = e.tsc()
    st.R[0] = t & 0xFFFFFFFF
    st.R[2] = t >> 32
    if d.opc != 0x131:  # RDTSCP
        st.R[1] = st.msrs.get(MSR_IA32_TSC_AUX, 0) & 0xFFFFFFFF


def cpuid(e: "HelperCpu", d: Insn) -> None:
    st = e.st
    leaf, sub = st.R[0] & 0xFFFFFFFF, st.R[1] & 0xFFFFFFFF
    found = None
    for ent in e.cpuid:
        if ent.function == leaf and (not ent.flags & 1 or ent.index == sub):
            found = ent
            break
    if found is None:
        st.R[0] = st.R[3] = st.R[1] = st.R[2] = 0
        return
    st.R[0], st.R[3], st.R[1], st.R[2] = xsave.dynamic_cpuid(
        e, leaf, sub, (found.eax, found.ebx, found.ecx, found.edx))


# -- control and debug registers ----------------------------------------------------------------
def mov_cr(e: "HelperCpu", d: Insn) -> None:
    _priv(e)
    st = e.st
    n = d.reg
    to_cr = d.opc == 0x122
    wide = e.bits == 64
    rm = d.rm
    if n not in (0, 2, 3, 4, 8):
        raise GuestFault(6)
    if not to_cr:
        v = {0: st.cr0, 2: st.cr2, 3: st.cr3, 4: st.cr4, 8: st.cr8}[n]
        st.R[rm] = v if wide else v & 0xFFFFFFFF
        return
    v = st.R[rm] if wide else st.R[rm] & 0xFFFFFFFF
    if n == 0:
        if v >> 32 or (v & CR0_PG and not v & CR0_PE) or (v & (1 << 29) and not v & (1 << 30)):
            raise GuestFault(13, 0)
        if v & CR0_PG and not st.cr0 & CR0_PG and st.efer & EFER_LME:
            if not st.cr4 & CR4_PAE or st.seg[CS].l:
                raise GuestFault(13, 0)
            st.efer |= EFER_LMA
        if not v & CR0_PG and st.cr0 & CR0_PG and st.efer & EFER_LMA:
            if e.bits == 64:
                raise GuestFault(13, 0)
            st.efer &= ~EFER_LMA
        st.cr0 = v | CR0_ET
    elif n == 2:
        st.cr2 = v
    elif n == 3:
        st.cr3 = v
    elif n == 4:
        if v & ~CR4_VALID or (st.efer & EFER_LMA and not v & CR4_PAE) or \
                (v & CR4_OSXSAVE and not xsave.has_xsave(e)):
            raise GuestFault(13, 0)
        st.cr4 = v
    else:
        if v >> 4:
            raise GuestFault(13, 0)
        st.cr8 = v
    e.tlb_flush()
    e.mode_changed()
    st.rip = d.next_ip


def mov_dr(e: "HelperCpu", d: Insn) -> None:
    _priv(e)
    st = e.st
    n = d.reg
    if n in (4, 5):
        n += 2
    if n > 7:
        raise GuestFault(6)
    wide = e.bits == 64
    if d.opc == 0x121:
        v = st.dr[n] if n < 4 else (st.dr6 if n == 6 else st.dr7)
        st.R[d.rm] = v if wide else v & 0xFFFFFFFF
        return
    v = st.R[d.rm] if wide else st.R[d.rm] & 0xFFFFFFFF
    if n < 4:
        st.dr[n] = v
    elif n == 6:
        if v >> 32:
            raise GuestFault(13, 0)
        st.dr6 = (v | 0xFFFF0FF0) & 0xFFFFFFFF
    else:
        if v >> 32:
            raise GuestFault(13, 0)
        st.dr7 = (v | 0x400) & 0xFFFFFFFF


def clts(e: "HelperCpu", d: Insn) -> None:
    _priv(e)
    e.st.cr0 &= ~CR0_TS


def wbinvd(e: "HelperCpu", d: Insn) -> None:
    _priv(e)


# -- descriptor tables (0F 00 and 0F 01) ----------------------------------------------------------
def grp6(e: "HelperCpu", d: Insn) -> None:
    st = e.st
    op = d.reg & 7
    if not st.cr0 & CR0_PE:
        raise GuestFault(6)
    if op in (0, 1):  # SLDT / STR
        sel = st.ldt.selector if op == 0 else st.tr.selector
        if d.mod == 3:
            if d.osz == 2:
                st.R[d.rm] = (st.R[d.rm] & KEEP[2]) | sel
            else:
                st.R[d.rm] = sel
        else:
            e.mmu.write_int(_ea(e, d), 2, sel, _user(e))
        return
    if op in (2, 3):  # LLDT / LTR
        _priv(e)
        sel = st.R[d.rm] & 0xFFFF if d.mod == 3 else e.mmu.read_int(_ea(e, d), 2)
        if sel & 0xFFFC == 0:
            if op == 3:
                raise GuestFault(13, 0)
            st.ldt.selector = sel
            st.ldt.unusable = 1
            return
        if sel & 4:
            raise GuestFault(13, sel & 0xFFFC)
        lo, hi = read_descriptor(e, sel)
        hi2 = 0
        if st.efer & EFER_LMA:
            hi2 = e.mmu.read_int(st.gdt_base + (sel & ~7) + 8, 4)
        s = seg_from_descriptor(sel, lo, hi, hi2)
        want = (2,) if op == 2 else (1, 9)
        if s.s or s.type not in want:
            raise GuestFault(13, sel & 0xFFFC)
        if not s.present:
            raise GuestFault(11, sel & 0xFFFC)
        if op == 2:
            st.ldt = s
        else:
            s.type |= 2
            e.mmu.write_int(st.gdt_base + (sel & ~7) + 5, 1, (hi >> 8) | 2)
            st.tr = s
        return
    if op in (4, 5):  # VERR / VERW
        from .extensions import verr_verw

        return verr_verw(e, d)
    raise ExitNow("emulation", d.raw, "0F 00 form not emulated")


def grp7(e: "HelperCpu", d: Insn) -> None:
    st = e.st
    op = d.reg & 7
    if d.mod == 3:
        rm = d.rm & 7
        if op == 0 and rm in (1,):  # VMCALL
            return hypercall(e, d)
        if op == 3 and rm == 1:  # VMMCALL
            return hypercall(e, d)
        if op == 7 and rm == 0:  # SWAPGS
            if e.bits != 64:
                raise GuestFault(6)
            _priv(e)
            k = st.msrs.get(MSR_KERNEL_GS_BASE, 0)
            st.msrs[MSR_KERNEL_GS_BASE] = st.seg[GS].base
            st.seg[GS].base = k
            st.sb[GS] = k
            return None
        if op == 7 and rm == 1:  # RDTSCP
            return rdtsc(e, d)
        if op == 2 and rm in (0, 1):  # XGETBV / XSETBV
            return xsave.xgetbv(e, d) if rm == 0 else xsave.xsetbv(e, d)
        if op == 1 and rm in (2, 3):  # CLAC / STAC
            return xsave.clac_stac(e, d)
        if op == 5 and rm == 0 and not d.rep:
            # SERIALIZE (NP 0F 01 E8; F2/F3 are TSXLDTRK): the mock retires in order and
            # sees its own code writes, so it has nothing to wait for. A kernel's
            # sync_core() after each text patch.
            return None
        if op == 4:  # SMSW r
            v = st.cr0 if d.osz == 8 else st.cr0 & (0xFFFFFFFF if d.osz == 4 else 0xFFFF)
            if d.osz == 2:
                st.R[d.rm] = (st.R[d.rm] & KEEP[2]) | v
            else:
                st.R[d.rm] = v
            return None
        if op == 6:  # LMSW r
            return _lmsw(e, st.R[d.rm] & 0xFFFF)
        raise ExitNow("emulation", d.raw, "0F 01 form not emulated")
    a = _ea(e, d)
    mmu = e.mmu
    base_size = 8 if e.bits == 64 else 4
    if op in (0, 1):  # SGDT / SIDT
        base, limit = (st.gdt_base, st.gdt_limit) if op == 0 else (st.idt_base, st.idt_limit)
        mmu.write_int(a, 2, limit, _user(e))
        mmu.write_int((a + 2) & mmu.lin_mask, base_size, base, _user(e))
        return None
    if op in (2, 3):  # LGDT / LIDT
        _priv(e)
        limit = mmu.read_int(a, 2)
        base = mmu.read_int((a + 2) & mmu.lin_mask, base_size)
        if d.osz == 2 and e.bits != 64:
            base &= 0xFFFFFF
        if op == 2:
            st.gdt_base, st.gdt_limit = base, limit
        else:
            st.idt_base, st.idt_limit = base, limit
        return None
    if op == 4:  # SMSW m16
        mmu.write_int(a, 2, st.cr0 & 0xFFFF, _user(e))
        return None
    if op == 6:  # LMSW m16
        return _lmsw(e, mmu.read_int(a, 2))
    if op == 7:  # INVLPG
        _priv(e)
        mmu.flush_page(a)
        e.mmu.itlb[0].clear()
        e.mmu.itlb[1].clear()
        return None
    raise ExitNow("emulation", d.raw, "0F 01 form not emulated")


def _lmsw(e: "HelperCpu", v: int) -> None:
    _priv(e)
    st = e.st
    st.cr0 = (st.cr0 & ~0xE) | (v & 0xF) | (st.cr0 & CR0_PE)
    e.mode_changed()


# -- hypercalls -----------------------------------------------------------------------------------
def hypercall(e: "HelperCpu", d: Insn) -> None:
    """VMCALL/VMMCALL as kvm_emulate_hypercall: only KVM_HC_MAP_GPA_RANGE reaches user
    space (when enabled with KVM_CAP_EXIT_HYPERCALL); the rest return -KVM_ENOSYS."""
    st = e.st
    long64 = e.bits == 64
    m = 0xFFFFFFFFFFFFFFFF if long64 else 0xFFFFFFFF
    nr = st.R[0] & m
    if e.cpl != 0:
        st.R[0] = (-KVM_EPERM) & m
        return
    if nr == KVM_HC_MAP_GPA_RANGE and e.vm.hypercall_exits & (1 << KVM_HC_MAP_GPA_RANGE):
        args = tuple(st.R[i] & m for i in (3, 1, 2, 6, 7))
        if args[0] & 0xFFF or args[1] == 0:
            st.R[0] = (-KVM_EINVAL) & m
            return
        st.rip = d.next_ip
        e.mmu.pending.append(("hypercall", nr, args[:3], 1 if long64 else 0))
        e.stop[0] = True
        return
    st.R[0] = (-KVM_ENOSYS) & m


# -- HLT and port IO ------------------------------------------------------------------------------
def hlt(e: "HelperCpu", d: Insn) -> None:
    _priv(e)
    e.mmu.pending.append(("hlt",))
    e.stop[0] = True


def _io_allowed(e: "HelperCpu", port: int, size: int) -> None:
    st = e.st
    if st.cr0 & CR0_PE and e.cpl > (st.fl & IOPL) >> 12:
        raise GuestFault(13, 0)  # no TSS I/O permission bitmap


def io_in(e: "HelperCpu", d: Insn) -> None:
    st = e.st
    size = 1 if d.opc in (0xE4, 0xEC) else min(d.osz, 4)
    port = d.imm if d.opc in (0xE4, 0xE5) else st.R[2] & 0xFFFF
    _io_allowed(e, port, size)
    v = port_in(e, port, size)
    if size == 4:
        st.R[0] = v
    else:
        st.R[0] = (st.R[0] & KEEP[size]) | v


def port_in(e: "HelperCpu", port: int, size: int) -> int:
    rep = e.io_replay
    if rep and rep[0][0] == port and rep[0][1] == size:
        data = rep.pop(0)[3]
        return int.from_bytes(data[:size], "little")
    raise ExitNow("io_in", port, size, 1)


def io_out(e: "HelperCpu", d: Insn) -> None:
    st = e.st
    size = 1 if d.opc in (0xE6, 0xEE) else min(d.osz, 4)
    port = d.imm if d.opc in (0xE6, 0xE7) else st.R[2] & 0xFFFF
    _io_allowed(e, port, size)
    port_out(e, port, size, st.R[0] & M[size])


def port_out(e: "HelperCpu", port: int, size: int, value: int) -> None:
    data = value.to_bytes(size, "little")
    if e.vm.coalesced_write(port, data, pio=True):
        return
    e.mmu.pending.append(("io_out", port, size, 1, data))
    e.stop[0] = True


# -- wide compare-exchange ------------------------------------------------------------------------
def cmpxchg8b(e: "HelperCpu", d: Insn) -> None:
    st = e.st
    n = 16 if d.rexw else 8
    a = _ea(e, d)
    if n == 16 and a & 15:
        raise GuestFault(13, 0)
    half = n * 4
    hm = (1 << half) - 1
    cur = e.mmu.read_int(a, n, _user(e))
    expect = ((st.R[2] & hm) << half) | (st.R[0] & hm)
    from .helpers import flags

    f = flags(st)
    if cur == expect:
        new = ((st.R[1] & hm) << half) | (st.R[3] & hm)
        e.mmu.write_int(a, n, new, _user(e))
        st.fl = f | ZF
    else:
        e.mmu.write_int(a, n, cur, _user(e))
        st.R[0] = cur & hm
        st.R[2] = cur >> half
        st.fl = f & ~ZF
    st.lz = None


def rdrand(e: "HelperCpu", d: Insn) -> None:
    """0F C7 /6 and /7 register forms: RDRAND, RDSEED, RDPID (extensions.py)."""
    from .extensions import rand_pid

    rand_pid(e, d)


# -- 0F AE group: fences, FXSAVE/FXRSTOR, LDMXCSR/STMXCSR, CLFLUSH --------------------------------
def grp15(e: "HelperCpu", d: Insn) -> None:
    op = d.reg & 7
    if d.mod == 3:
        if d.rep == 0xF3 and op < 4:  # RDFSBASE / RDGSBASE / WRFSBASE / WRGSBASE
            from .extensions import fsgsbase

            return fsgsbase(e, d)
        if op in (5, 6, 7):
            return None  # LFENCE / MFENCE / SFENCE
        raise ExitNow("emulation", d.raw, "0F AE register form not emulated")
    st = e.st
    a = _ea(e, d)
    f = st.fpu
    if op == 0:  # FXSAVE
        buf = bytearray(512)
        struct.pack_into("<HHBxHQQII", buf, 0, f.fcw, f.fsw, f.ftwx, f.last_opcode, f.last_ip,
                         f.last_dp, f.mxcsr, 0xFFFF)
        for i in range(8):
            buf[32 + 16 * i: 48 + 16 * i] = bytes(f.fpr[i])
        for i in range(16 if e.bits == 64 else 8):
            buf[160 + 16 * i: 176 + 16 * i] = bytes(f.xmm[i])
        if a & 15:
            raise GuestFault(13, 0)
        e.mmu.write(a, bytes(buf), _user(e))
        return None
    if op == 1:  # FXRSTOR
        if a & 15:
            raise GuestFault(13, 0)
        raw = e.mmu.read(a, 512, _user(e))
        (f.fcw, f.fsw, f.ftwx, f.last_opcode, f.last_ip, f.last_dp, mx,
         _) = struct.unpack_from("<HHBxHQQII", raw, 0)
        if mx & ~0xFFFF:
            raise GuestFault(13, 0)
        f.mxcsr = mx
        for i in range(8):
            ctypes.memmove(ctypes.addressof(f.fpr[i]), raw[32 + 16 * i: 48 + 16 * i], 16)
        for i in range(16 if e.bits == 64 else 8):
            ctypes.memmove(ctypes.addressof(f.xmm[i]), raw[160 + 16 * i: 176 + 16 * i], 16)
        return None
    if op == 2:  # LDMXCSR
        v = e.mmu.read_int(a, 4, _user(e))
        if v & ~0xFFFF:
            raise GuestFault(13, 0)
        f.mxcsr = v
        return None
    if op == 3:  # STMXCSR
        e.mmu.write_int(a, 4, f.mxcsr, _user(e))
        return None
    if op == 7 or (op == 6 and d.opsize_prefix):  # CLFLUSH / CLFLUSHOPT / CLWB
        e.mmu.read(a, 1, _user(e))
        return None
    return xsave.grp15_mem(e, d)  # XSAVE / XRSTOR / XSAVEOPT


__all__ = ["write_msr", "read_msr", "hypercall", "port_in", "port_out"]
