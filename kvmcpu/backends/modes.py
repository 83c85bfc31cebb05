"""Starting states for the three x86 execution modes, on any backend.

These write ``kvm_sregs``/``kvm_regs`` (and, for long mode, page tables and a
GDT in guest memory) through the backend contract only, so the same helper
serves /dev/kvm and the mock.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Optional

from .. import uapi

if TYPE_CHECKING:
    from .base import Vcpu

# CR0 / CR4 / EFER bits
CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_AM = 1 << 18
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
EFER_SCE = 1 << 0
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11


def sregs_refusal(s: uapi.kvm_sregs, *, cr4_valid: int = ~0, efer_valid: int = ~0
                  ) -> Optional[str]:
    """Why KVM_SET_SREGS refuses ``s`` with EINVAL (the kernel's kvm_is_valid_sregs and
    the CR0/CR4/EFER checks behind it), or None. Which CR4 and EFER bits are reserved
    depends on the vCPU's CPUID: pass the backend's valid sets to judge them too."""
    cr0, cr4, efer = int(s.cr0), int(s.cr4), int(s.efer)
    if cr0 & CR0_PG and not cr0 & CR0_PE:
        return "CR0.PG without CR0.PE"
    if cr0 >> 32:
        return "reserved CR0 bits"
    if cr4 & ~cr4_valid:
        return f"reserved CR4 bits {cr4 & ~cr4_valid:#x}"
    if efer & ~efer_valid:
        return f"reserved EFER bits {efer & ~efer_valid:#x}"
    if efer & EFER_LMA and not cr0 & CR0_PG:
        return "EFER.LMA without CR0.PG"
    if efer & EFER_LME and cr0 & CR0_PG and not cr4 & CR4_PAE:
        return "EFER.LME and CR0.PG without CR4.PAE"
    if cr0 & CR0_NW and not cr0 & CR0_CD:
        return "CR0.NW without CR0.CD"
    return None


# Page-table entry bits
PTE_P = 1 << 0
PTE_W = 1 << 1
PTE_U = 1 << 2
PTE_PS = 1 << 7

#: Selectors of the GDT that set_long_mode writes.
SEL_CODE64 = 0x08
SEL_DATA = 0x10
SEL_UCODE64 = 0x18 | 3
SEL_UDATA = 0x20 | 3


def _seg(seg: uapi.kvm_segment, *, base: int, limit: int, selector: int, type_: int,
         dpl: int = 0, db: int = 0, l: int = 0, g: int = 0, s: int = 1) -> None:  # noqa: E741
    seg.base = base
    seg.limit = limit
    seg.selector = selector
    seg.type = type_
    seg.present = 1
    seg.dpl = dpl
    seg.db = db
    seg.s = s
    seg.l = l
    seg.g = g
    seg.avl = 0
    seg.unusable = 0


def _system_segments(sregs: uapi.kvm_sregs) -> None:
    _seg(sregs.tr, base=0, limit=0xFFFF, selector=0, type_=11, s=0)  # busy 32/64-bit TSS
    _seg(sregs.ldt, base=0, limit=0xFFFF, selector=0, type_=2, s=0)


def set_real_mode(vcpu: "Vcpu", *, cs: int, ip: int, sp: int = 0) -> None:
    """Real mode at cs:ip, all data segments equal to cs."""
    if not 0 <= cs <= 0xFFFF or not 0 <= ip <= 0xFFFF:
        raise ValueError(f"cs and ip must be 16-bit, got {cs:#x}:{ip:#x}")
    sregs = vcpu.get_sregs()
    for name in ("cs", "ds", "es", "fs", "gs", "ss"):
        _seg(getattr(sregs, name), base=cs << 4, limit=0xFFFF, selector=cs,
             type_=0xB if name == "cs" else 0x3)
    _system_segments(sregs)
    sregs.cr0 = (sregs.cr0 & ~(CR0_PE | CR0_PG)) | CR0_ET
    sregs.cr4 = 0
    sregs.efer = 0
    vcpu.set_sregs(sregs)
    regs = uapi.kvm_regs()
    regs.rip = ip
    regs.rsp = sp
    regs.rflags = 0x2
    vcpu.set_regs(regs)


def set_protected_mode(vcpu: "Vcpu", *, eip: int, esp: int = 0) -> None:
    """32-bit flat protected mode, paging off (the state Multiboot specifies)."""
    sregs = vcpu.get_sregs()
    _seg(sregs.cs, base=0, limit=0xFFFFFFFF, selector=SEL_CODE64, type_=0xB, db=1, g=1)
    for name in ("ds", "es", "fs", "gs", "ss"):
        _seg(getattr(sregs, name), base=0, limit=0xFFFFFFFF, selector=SEL_DATA, type_=0x3,
             db=1, g=1)
    _system_segments(sregs)
    sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & ~CR0_PG
    sregs.cr4 = 0
    sregs.efer = 0
    vcpu.set_sregs(sregs)
    regs = uapi.kvm_regs()
    regs.rip = eip
    regs.rsp = esp
    regs.rflags = 0x2
    vcpu.set_regs(regs)


def build_identity_page_tables(base: int, gib: int, *, user: bool = True) -> bytes:
    """PML4 + PDPT + ``gib`` page directories of 2 MiB pages, identity-mapping
    ``gib`` GiB, laid out from guest address ``base`` (4 KiB aligned)."""
    if base % 4096:
        raise ValueError(f"page tables must be 4 KiB aligned, got {base:#x}")
    if not 1 <= gib <= 512:
        raise ValueError(f"identity_gib must be 1..512, got {gib}")
    flags = PTE_P | PTE_W | (PTE_U if user else 0)
    pml4 = bytearray(4096)
    pdpt = bytearray(4096)
    struct.pack_into("<Q", pml4, 0, (base + 0x1000) | flags)
    dirs = bytearray(4096 * gib)
    for g in range(gib):
        struct.pack_into("<Q", pdpt, g * 8, (base + 0x2000 + g * 0x1000) | flags)
        for i in range(512):
            addr = (g << 30) | (i << 21)
            struct.pack_into("<Q", dirs, (g * 512 + i) * 8, addr | flags | PTE_PS)
    return bytes(pml4 + pdpt + dirs)


def build_gdt() -> bytes:
    """Null, 64-bit kernel code, kernel data, 64-bit user code, user data."""
    return struct.pack(
        "<5Q",
        0,
        0x00AF9B000000FFFF,  # code: P, DPL0, S, type 0xB, L=1, G=1
        0x00CF93000000FFFF,  # data: P, DPL0, S, type 0x3, D/B=1, G=1
        0x00AFFB000000FFFF,  # user code: DPL3
        0x00CFF3000000FFFF,  # user data: DPL3
    )


def set_long_mode(vcpu: "Vcpu", *, rip: int, rsp: int = 0, cpl: int = 0,
                  page_tables: int = 0x9000, identity_gib: int = 1) -> None:
    """64-bit long mode with paging, identity-mapped 2 MiB pages (writes tables and GDT)."""
    if cpl not in (0, 3):
        raise ValueError(f"cpl must be 0 or 3, got {cpl}")
    tables = build_identity_page_tables(page_tables, identity_gib)
    gdt_addr = page_tables + len(tables)
    gdt = build_gdt()
    vcpu.vm.write_guest(page_tables, tables)
    vcpu.vm.write_guest(gdt_addr, gdt)

    sregs = vcpu.get_sregs()
    dpl = cpl
    _seg(sregs.cs, base=0, limit=0xFFFFFFFF, selector=SEL_UCODE64 if cpl else SEL_CODE64,
         type_=0xB, dpl=dpl, l=1, g=1)
    for name in ("ds", "es", "fs", "gs", "ss"):
        _seg(getattr(sregs, name), base=0, limit=0xFFFFFFFF,
             selector=SEL_UDATA if cpl else SEL_DATA, type_=0x3, dpl=dpl, db=1, g=1)
    _system_segments(sregs)
    sregs.gdt.base = gdt_addr
    sregs.gdt.limit = len(gdt) - 1
    sregs.cr3 = page_tables
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG
    sregs.efer = EFER_LME | EFER_LMA | EFER_SCE
    vcpu.set_sregs(sregs)
    regs = uapi.kvm_regs()
    regs.rip = rip
    regs.rsp = rsp
    regs.rflags = 0x2
    vcpu.set_regs(regs)
