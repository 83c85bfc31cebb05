"""Architectural state of one mock vCPU, and its conversion to the uapi structures.

The engine keeps the general registers in a Python list (``R``, indexed by
the x86 register number) and the arithmetic flags *lazily*: after an
ADD/SUB/logic/INC/DEC the tuple ``lz = (kind, a, b, result, bits)`` is stored
instead of six flag bits, and ``flags()`` materialises them on demand.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ... import uapi
from ..modes import sregs_refusal

# Register numbers
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
REG_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
# Segment numbers (x86 encoding order)
ES, CS, SS, DS, FS, GS = range(6)
SEG_NAMES = ("es", "cs", "ss", "ds", "fs", "gs")

# RFLAGS bits
CF, PF, AF, ZF, SF, TF, IF, DF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x100, 0x200, 0x400, 0x800
IOPL, NT, RF, VM, AC, VIF, VIP, ID = 0x3000, 0x4000, 0x10000, 0x20000, 0x40000, 0x80000, \
    0x100000, 0x200000
ARITH = CF | PF | AF | ZF | SF | OF
#: Bits software can change through POPF/IRET at CPL0 (RF/VM handled separately).
FLAGS_WRITABLE = ARITH | TF | IF | DF | IOPL | NT | AC | ID

# Lazy-flag kinds. LZ_FIXED carries CF|OF|AF explicitly in slot 1 (shifts).
LZ_ADD, LZ_ADC, LZ_SUB, LZ_SBB, LZ_LOGIC, LZ_INC, LZ_DEC, LZ_FIXED = range(8)

MASK = {8: 0xFF, 16: 0xFFFF, 32: 0xFFFFFFFF, 64: 0xFFFFFFFFFFFFFFFF}
SIGN = {8: 0x80, 16: 0x8000, 32: 0x80000000, 64: 0x8000000000000000}
M64 = 0xFFFFFFFFFFFFFFFF

#: PARITY[b] is PF (0x4) when the byte b has an even number of set bits.
PARITY = tuple(0 if bin(i).count("1") & 1 else PF for i in range(256))

# Control-register bits used by the engine
CR0_PE, CR0_MP, CR0_EM, CR0_TS, CR0_ET, CR0_NE = 1, 2, 4, 8, 0x10, 0x20
CR0_WP, CR0_AM, CR0_NW, CR0_CD, CR0_PG = 1 << 16, 1 << 18, 1 << 29, 1 << 30, 1 << 31
CR4_PSE, CR4_PAE, CR4_PGE = 1 << 4, 1 << 5, 1 << 7
CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_FSGSBASE, CR4_OSXSAVE = 1 << 9, 1 << 10, 1 << 16, 1 << 18
CR4_SMEP, CR4_SMAP = 1 << 20, 1 << 21
#: CR4 bits the mock accepts (everything else is reserved: EINVAL / #GP).
CR4_VALID = (0x1 | 0x2 | 0x4 | 0x8 | CR4_PSE | CR4_PAE | 0x40 | CR4_PGE | 0x100 | CR4_OSFXSR
             | CR4_OSXMMEXCPT | (1 << 11) | CR4_FSGSBASE | (1 << 17) | CR4_OSXSAVE
             | CR4_SMEP | CR4_SMAP)
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1, 1 << 8, 1 << 10, 1 << 11
EFER_VALID = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE | (1 << 12) | (1 << 14) | (1 << 15)

# MSRs
MSR_IA32_TSC = 0x10
MSR_IA32_APICBASE = 0x1B
MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP = 0x174, 0x175, 0x176
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_IA32_PAT = 0x277
MSR_IA32_TSC_AUX = 0xC0000103
MSR_IA32_XSS = 0xDA0
MSR_EFER = 0xC0000080
MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SFMASK = 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE = 0xC0000100, 0xC0000101, 0xC0000102
MSR_IA32_CR_PAT = MSR_IA32_PAT

#: The MSRs the mock stores (KVM_GET_MSR_INDEX_LIST); others are unknown.
MSR_INDEX_LIST: Tuple[int, ...] = (
    MSR_IA32_TSC, MSR_IA32_APICBASE, MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP,
    MSR_IA32_SYSENTER_EIP, MSR_IA32_MISC_ENABLE, MSR_IA32_PAT, MSR_EFER, MSR_STAR, MSR_LSTAR,
    MSR_CSTAR, MSR_SFMASK, MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE, MSR_IA32_TSC_AUX,
    MSR_IA32_XSS,
)
APIC_BASE_DEFAULT = 0xFEE00000 | 0x100  # BSP, xAPIC disabled bit clear as KVM resets


class Seg:
    """One segment register's hidden part, field for field a kvm_segment."""

    __slots__ = ("selector", "base", "limit", "type", "present", "dpl", "db", "s", "l", "g",
                 "avl", "unusable")

    def __init__(self, selector: int = 0, base: int = 0, limit: int = 0xFFFF, type_: int = 3,
                 present: int = 1, dpl: int = 0, db: int = 0, s: int = 1, l: int = 0,
                 g: int = 0, avl: int = 0, unusable: int = 0) -> None:
        self.selector = selector
        self.base = base
        self.limit = limit
        self.type = type_
        self.present = present
        self.dpl = dpl
        self.db = db
        self.s = s
        self.l = l
        self.g = g
        self.avl = avl
        self.unusable = unusable

    def to_uapi(self, out: uapi.kvm_segment) -> None:
        for name in self.__slots__:
            setattr(out, name, getattr(self, name))

    @classmethod
    def from_uapi(cls, seg: uapi.kvm_segment) -> "Seg":
        s = cls()
        for name in cls.__slots__:
            setattr(s, name, int(getattr(seg, name)))
        return s

    def copy(self) -> "Seg":
        s = Seg()
        for name in self.__slots__:
            setattr(s, name, getattr(self, name))
        return s


def lazy_flags(lz: Tuple[Any, ...]) -> int:
    """The six arithmetic flags encoded by a lazy tuple."""
    kind, a, b, r, bits = lz
    sign = SIGN[bits]
    f: int = PARITY[r & 0xFF]
    if r == 0:
        f |= ZF
    if r & sign:
        f |= SF
    if kind == LZ_LOGIC:
        return f
    if kind == LZ_FIXED:
        return f | int(a)
    if kind == LZ_ADD or kind == LZ_ADC:
        if (r < a) if kind == LZ_ADD else (r <= a):
            f |= CF
        if (a ^ r) & (b ^ r) & sign:
            f |= OF
    elif kind == LZ_SUB or kind == LZ_SBB:
        if (a < b) if kind == LZ_SUB else (a <= b):
            f |= CF
        if (a ^ b) & (a ^ r) & sign:
            f |= OF
    elif kind == LZ_INC:
        if r == sign:
            f |= OF
        f |= lazy_cf(b)
    else:  # LZ_DEC
        if r == sign - 1:
            f |= OF
        f |= lazy_cf(b)
    if (a ^ b ^ r) & AF if kind < LZ_LOGIC else (a ^ r) & AF:
        f |= AF
    return f


def lazy_cf(src: Any) -> int:
    """CF from an int (0/1) or a lazy tuple (INC/DEC keep their predecessor's CF)."""
    if type(src) is int:
        return src
    kind, a, b, r, bits = src
    if kind == LZ_ADD:
        return 1 if r < a else 0
    if kind == LZ_SUB:
        return 1 if a < b else 0
    if kind == LZ_ADC:
        return 1 if r <= a else 0
    if kind == LZ_SBB:
        return 1 if a <= b else 0
    if kind == LZ_LOGIC:
        return 0
    if kind == LZ_FIXED:
        return int(a) & 1
    return lazy_cf(b)


class CpuState:
    """Everything KVM's vCPU ioctls read and write, in engine-friendly form."""

    def __init__(self) -> None:
        self.R: List[int] = [0] * 16
        self.rip = 0xFFF0
        self.fl = 0x2  # RFLAGS; arithmetic bits valid only while lz is None
        self.lz: Optional[Tuple[Any, ...]] = None
        # Segments (KVM's reset state: real mode at F000:FFF0 with base FFFF0000)
        self.seg: List[Seg] = [Seg(type_=3) for _ in range(6)]
        self.seg[CS] = Seg(selector=0xF000, base=0xFFFF0000, type_=0xB)
        self.sb: List[int] = [s.base for s in self.seg]  # bases, read by generated code
        self.tr = Seg(type_=0xB, s=0)
        self.ldt = Seg(type_=2, s=0)
        self.gdt_base, self.gdt_limit = 0, 0xFFFF
        self.idt_base, self.idt_limit = 0, 0xFFFF
        self.cr0 = CR0_ET | CR0_NW | CR0_CD
        self.cr2 = self.cr3 = self.cr4 = self.cr8 = 0
        self.efer = 0
        self.apic_base = APIC_BASE_DEFAULT
        self.dr: List[int] = [0, 0, 0, 0]
        self.dr6 = 0xFFFF0FF0
        self.dr7 = 0x400
        self.msrs: Dict[int, int] = {
            MSR_IA32_PAT: 0x0007040600070406,
            MSR_IA32_MISC_ENABLE: 1,
        }
        self.xcr0 = 1
        self.fpu = uapi.kvm_fpu()
        self.fpu.fcw = 0x37F
        self.fpu.mxcsr = 0x1F80
        self.xsave = uapi.kvm_xsave()
        # Events
        self.pending_irq: Optional[int] = None  # queued by KVM_INTERRUPT
        self.nmi_pending = 0
        self.nmi_masked = False
        self.shadow = 0  # KVM_X86_SHADOW_INT_* for the next instruction
        self.mp_state = uapi.KVM_MP_STATE_RUNNABLE
        self.halted = False
        self.kdone: Optional[int] = None  # set by a block that raised: instructions retired

    # -- flags ------------------------------------------------------------------
    def flags(self) -> int:
        """RFLAGS with the lazy arithmetic flags materialised."""
        lz = self.lz
        if lz is None:
            return self.fl
        return (self.fl & ~ARITH) | lazy_flags(lz)

    def set_flags(self, value: int) -> None:
        self.fl = (value & 0x3F7FD7) | 0x2
        self.lz = None

    def materialise(self) -> int:
        """Fold the lazy flags into ``fl`` and return it."""
        if self.lz is not None:
            self.fl = (self.fl & ~ARITH) | lazy_flags(self.lz)
            self.lz = None
        return self.fl

    # -- modes ------------------------------------------------------------------
    @property
    def long_mode(self) -> bool:
        return bool(self.efer & EFER_LMA)

    @property
    def cpl(self) -> int:
        if not self.cr0 & CR0_PE:
            return 0
        if self.fl & VM:
            return 3
        return self.seg[CS].dpl if self.seg[CS].s else 0

    def code_bits(self) -> int:
        cs = self.seg[CS]
        if self.efer & EFER_LMA and cs.l:
            return 64
        if self.cr0 & CR0_PE and cs.db:
            return 32
        return 32 if cs.db else 16

    def stack_bits(self) -> int:
        if self.code_bits() == 64:
            return 64
        return 32 if self.seg[SS].db else 16

    def reload_bases(self) -> None:
        sb = self.sb
        for i, s in enumerate(self.seg):
            sb[i] = s.base

    # -- uapi conversion --------------------------------------------------------
    def get_regs(self) -> uapi.kvm_regs:
        r = uapi.kvm_regs()
        for i, name in enumerate(REG_NAMES):
            setattr(r, name, self.R[i])
        r.rip = self.rip
        r.rflags = self.flags()
        return r

    def set_regs(self, r: uapi.kvm_regs) -> None:
        for i, name in enumerate(REG_NAMES):
            self.R[i] = int(getattr(r, name))
        self.rip = int(r.rip)
        self.set_flags(int(r.rflags))

    def get_sregs(self) -> uapi.kvm_sregs:
        s = uapi.kvm_sregs()
        for i, name in enumerate(SEG_NAMES):
            self.seg[i].to_uapi(getattr(s, name))
        self.tr.to_uapi(s.tr)
        self.ldt.to_uapi(s.ldt)
        s.gdt.base, s.gdt.limit = self.gdt_base, self.gdt_limit
        s.idt.base, s.idt.limit = self.idt_base, self.idt_limit
        s.cr0, s.cr2, s.cr3, s.cr4, s.cr8 = self.cr0, self.cr2, self.cr3, self.cr4, self.cr8
        s.efer = self.efer
        s.apic_base = self.apic_base
        if self.pending_irq is not None:
            s.interrupt_bitmap[self.pending_irq // 64] |= 1 << (self.pending_irq % 64)
        return s

    def set_sregs(self, s: uapi.kvm_sregs) -> None:
        self.seg = [Seg.from_uapi(getattr(s, name)) for name in SEG_NAMES]
        self.reload_bases()
        self.tr = Seg.from_uapi(s.tr)
        self.ldt = Seg.from_uapi(s.ldt)
        self.gdt_base, self.gdt_limit = int(s.gdt.base), int(s.gdt.limit)
        self.idt_base, self.idt_limit = int(s.idt.base), int(s.idt.limit)
        self.cr0, self.cr2, self.cr3 = int(s.cr0), int(s.cr2), int(s.cr3)
        self.cr4, self.cr8, self.efer = int(s.cr4), int(s.cr8), int(s.efer)
        self.apic_base = int(s.apic_base)
        self.pending_irq = None
        for word in range(4):
            bits = int(s.interrupt_bitmap[word])
            if bits:
                self.pending_irq = word * 64 + (bits & -bits).bit_length() - 1
                break


def check_sregs(s: uapi.kvm_sregs) -> Optional[str]:
    """Why KVM_SET_SREGS would refuse ``s`` (EINVAL) on the mock, or None."""
    return sregs_refusal(s, cr4_valid=CR4_VALID, efer_valid=EFER_VALID)
