"""The architectural state of one x86-64 hardware thread, independent of any backend.

:class:`ThreadContext` holds what ``KVM_GET_REGS``, ``KVM_GET_SREGS``,
``KVM_GET_XSAVE`` (or ``KVM_GET_FPU``), ``KVM_GET_XCRS``, ``KVM_GET_MSRS``,
``KVM_GET_VCPU_EVENTS``, ``KVM_GET_MP_STATE``, ``KVM_GET_DEBUGREGS``,
``KVM_GET_LAPIC`` and ``KVM_GET_CPUID2`` report, as plain dataclasses that
are cheap to copy and compare. Each ``to_X()`` builds the ``kvmcpu.uapi``
structure and each ``load_X(struct)`` takes one in; the pairs lose nothing but
padding. The defaults are the x86 power-on state a fresh KVM vCPU reports.

The FPU/SSE state is kept as the 512-byte FXSAVE image (``fxsave``) plus the
rest of the XSAVE area (``xsave_tail``: the XSAVE header, whose first
quadword is XSTATE_BV, and the extended components). KVM_GET_FPU does not
report MXCSR on every host and KVM_SET_FPU state does not reach a fresh vCPU
whose XSTATE_BV is 0, so backends should prefer XSAVE: :meth:`to_xsave` always
sets XSTATE_BV bits 0 and 1 so that the x87 and SSE state is loaded.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, NamedTuple, Sequence, Tuple

from kvmcpu import uapi
from kvmcpu.errors import CheckpointError
from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut

__all__ = [
    "GPR_NAMES",
    "SEGMENT_NAMES",
    "SEGMENT_FIELDS",
    "CpuMode",
    "Segment",
    "DescriptorTable",
    "VcpuEvents",
    "CpuidEntry",
    "ThreadContext",
    "MSR_IA32_TSC",
]

GPR_NAMES = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)
SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
SEGMENT_FIELDS = (
    "base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable",
)
_CONTROL_NAMES = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")

CR0_PE = 1 << 0
EFER_LMA = 1 << 10
RFLAGS_VM = 1 << 17
MSR_IA32_TSC = 0x10
FXSAVE_SIZE = 512
XSAVE_SIZE = ctypes.sizeof(uapi.kvm_xsave)
XSTATE_X87_SSE = 0x3
_MASK64 = (1 << 64) - 1

# Offsets inside the FXSAVE image (64-bit layout, Intel SDM Vol. 1 Table 10-2).
_FX_FCW, _FX_FSW, _FX_FTW, _FX_FOP, _FX_FIP, _FX_FDP = 0, 2, 4, 6, 8, 16
_FX_MXCSR, _FX_MXCSR_MASK, _FX_ST, _FX_XMM = 24, 28, 32, 160


class CpuMode(enum.Enum):
    """The x86 operating mode the state describes."""

    REAL = "real"
    VM86 = "virtual-8086"
    PROTECTED = "protected"
    COMPATIBILITY = "compatibility"
    LONG = "long"


@dataclass
class Segment:
    """A segment register with its hidden part (``struct kvm_segment`` without padding)."""

    base: int = 0
    limit: int = 0xFFFF
    selector: int = 0
    type: int = 3
    present: int = 1
    dpl: int = 0
    db: int = 0
    s: int = 1
    l: int = 0
    g: int = 0
    avl: int = 0
    unusable: int = 0

    def to_kvm(self) -> uapi.kvm_segment:
        """As a ``struct kvm_segment``."""
        return uapi.kvm_segment(*(getattr(self, f) for f in SEGMENT_FIELDS))

    @classmethod
    def from_kvm(cls, seg: uapi.kvm_segment) -> Segment:
        """From a ``struct kvm_segment``."""
        return cls(*(getattr(seg, f) for f in SEGMENT_FIELDS))


@dataclass
class DescriptorTable:
    """GDTR or IDTR (``struct kvm_dtable`` without padding)."""

    base: int = 0
    limit: int = 0xFFFF


# (field, kvm_vcpu_events member, sub-member) in checkpoint order.
_EVENT_MAP: Tuple[Tuple[str, str, str], ...] = (
    ("exception_injected", "exception", "injected"),
    ("exception_nr", "exception", "nr"),
    ("exception_has_error_code", "exception", "has_error_code"),
    ("exception_pending", "exception", "pending"),
    ("exception_error_code", "exception", "error_code"),
    ("interrupt_injected", "interrupt", "injected"),
    ("interrupt_nr", "interrupt", "nr"),
    ("interrupt_soft", "interrupt", "soft"),
    ("interrupt_shadow", "interrupt", "shadow"),
    ("nmi_injected", "nmi", "injected"),
    ("nmi_pending", "nmi", "pending"),
    ("nmi_masked", "nmi", "masked"),
    ("sipi_vector", "", "sipi_vector"),
    ("flags", "", "flags"),
    ("smi_smm", "smi", "smm"),
    ("smi_pending", "smi", "pending"),
    ("smi_inside_nmi", "smi", "smm_inside_nmi"),
    ("smi_latched_init", "smi", "latched_init"),
    ("triple_fault_pending", "triple_fault", "pending"),
    ("exception_has_payload", "", "exception_has_payload"),
    ("exception_payload", "", "exception_payload"),
)


@dataclass
class VcpuEvents:
    """Pending and injected events (``struct kvm_vcpu_events`` without reserved bytes)."""

    exception_injected: int = 0
    exception_nr: int = 0
    exception_has_error_code: int = 0
    exception_pending: int = 0
    exception_error_code: int = 0
    interrupt_injected: int = 0
    interrupt_nr: int = 0
    interrupt_soft: int = 0
    interrupt_shadow: int = 0
    nmi_injected: int = 0
    nmi_pending: int = 0
    nmi_masked: int = 0
    sipi_vector: int = 0
    flags: int = 0
    smi_smm: int = 0
    smi_pending: int = 0
    smi_inside_nmi: int = 0
    smi_latched_init: int = 0
    triple_fault_pending: int = 0
    exception_has_payload: int = 0
    exception_payload: int = 0

    def to_kvm(self) -> uapi.kvm_vcpu_events:
        """As a ``struct kvm_vcpu_events``."""
        ev = uapi.kvm_vcpu_events()
        for name, member, sub in _EVENT_MAP:
            setattr(getattr(ev, member) if member else ev, sub, getattr(self, name))
        return ev

    @classmethod
    def from_kvm(cls, ev: uapi.kvm_vcpu_events) -> VcpuEvents:
        """From a ``struct kvm_vcpu_events``."""
        return cls(**{
            name: getattr(getattr(ev, member) if member else ev, sub)
            for name, member, sub in _EVENT_MAP
        })


class CpuidEntry(NamedTuple):
    """One ``struct kvm_cpuid_entry2`` (without padding)."""

    function: int
    index: int  # type: ignore[assignment]  # shadows tuple.index, as the C field is named
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int

    def to_kvm(self) -> uapi.kvm_cpuid_entry2:
        """As a ``struct kvm_cpuid_entry2``."""
        return uapi.kvm_cpuid_entry2(*self)

    @classmethod
    def from_kvm(cls, e: uapi.kvm_cpuid_entry2) -> CpuidEntry:
        """From a ``struct kvm_cpuid_entry2``."""
        return cls(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)


def _default_fxsave() -> bytes:
    img = bytearray(FXSAVE_SIZE)
    struct.pack_into("<H", img, _FX_FCW, 0x037F)
    struct.pack_into("<I", img, _FX_MXCSR, 0x1F80)
    struct.pack_into("<I", img, _FX_MXCSR_MASK, 0xFFFF)
    return bytes(img)


def _default_xsave_tail() -> bytes:
    tail = bytearray(XSAVE_SIZE - FXSAVE_SIZE)
    struct.pack_into("<Q", tail, 0, XSTATE_X87_SSE)
    return bytes(tail)


_FXSAVE_DEFAULT = _default_fxsave()
_XSAVE_TAIL_DEFAULT = _default_xsave_tail()


def _raw(obj: Any) -> bytes:
    # Copies the bytes of a ctypes object (its memory stays owned by ``obj``).
    return ctypes.string_at(ctypes.addressof(obj), ctypes.sizeof(obj))


@dataclass
class ThreadContext:
    """The x86-64 architectural state of one hardware thread (see the module docstring)."""

    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    rsp: int = 0
    rbp: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rip: int = 0xFFF0
    rflags: int = 0x2
    cs: Segment = field(
        default_factory=lambda: Segment(base=0xFFFF0000, selector=0xF000, type=11)
    )
    ds: Segment = field(default_factory=Segment)
    es: Segment = field(default_factory=Segment)
    fs: Segment = field(default_factory=Segment)
    gs: Segment = field(default_factory=Segment)
    ss: Segment = field(default_factory=Segment)
    tr: Segment = field(default_factory=lambda: Segment(type=11, s=0))
    ldt: Segment = field(default_factory=lambda: Segment(type=2, s=0))
    gdt: DescriptorTable = field(default_factory=DescriptorTable)
    idt: DescriptorTable = field(default_factory=DescriptorTable)
    cr0: int = 0x60000010
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    cr8: int = 0
    efer: int = 0
    apic_base: int = 0xFEE00900
    interrupt_bitmap: Tuple[int, int, int, int] = (0, 0, 0, 0)
    #: The 512-byte FXSAVE image (x87, MXCSR, XMM0-15).
    fxsave: bytes = _FXSAVE_DEFAULT
    #: The XSAVE area after the legacy region: header (XSTATE_BV first) and extended state.
    xsave_tail: bytes = _XSAVE_TAIL_DEFAULT
    #: Extended control registers by index (XCR0 is ``xcrs[0]``).
    xcrs: Dict[int, int] = field(default_factory=lambda: {0: 1})
    #: MSR index -> value (the TSC is kept in :attr:`tsc`, not here).
    msrs: Dict[int, int] = field(default_factory=dict)
    tsc: int = 0
    events: VcpuEvents = field(default_factory=VcpuEvents)
    mp_state: int = uapi.KVM_MP_STATE_RUNNABLE
    debug_db: Tuple[int, int, int, int] = (0, 0, 0, 0)
    dr6: int = 0xFFFF0FF0
    dr7: int = 0x400
    debugregs_flags: int = 0
    #: The local APIC register page (``KVM_GET_LAPIC``; empty when not captured).
    lapic: bytes = b""
    cpuid: List[CpuidEntry] = field(default_factory=list)

    def copy(self) -> ThreadContext:
        """An independent copy (faster than ``copy.deepcopy``)."""
        new = dataclasses.replace(self)
        for name in SEGMENT_NAMES:
            setattr(new, name, dataclasses.replace(getattr(self, name)))
        new.gdt = dataclasses.replace(self.gdt)
        new.idt = dataclasses.replace(self.idt)
        new.events = dataclasses.replace(self.events)
        new.xcrs = dict(self.xcrs)
        new.msrs = dict(self.msrs)
        new.cpuid = list(self.cpuid)
        return new

    # -- derived views -------------------------------------------------------------
    @property
    def xcr0(self) -> int:
        """XCR0 (1, x87 only, when never set)."""
        return self.xcrs.get(0, 1)

    @xcr0.setter
    def xcr0(self, value: int) -> None:
        self.xcrs[0] = value

    def _fx(self, fmt: str, offset: int) -> int:
        value: int = struct.unpack_from(fmt, self.fxsave, offset)[0]
        return value

    def _set_fx(self, fmt: str, offset: int, value: int) -> None:
        img = bytearray(self.fxsave)
        struct.pack_into(fmt, img, offset, value)
        self.fxsave = bytes(img)

    @property
    def mxcsr(self) -> int:
        """MXCSR, from the FXSAVE image."""
        return self._fx("<I", _FX_MXCSR)

    @mxcsr.setter
    def mxcsr(self, value: int) -> None:
        self._set_fx("<I", _FX_MXCSR, value)

    @property
    def fcw(self) -> int:
        """The x87 control word."""
        return self._fx("<H", _FX_FCW)

    @property
    def fsw(self) -> int:
        """The x87 status word."""
        return self._fx("<H", _FX_FSW)

    @property
    def xstate_bv(self) -> int:
        """XSTATE_BV from the XSAVE header (which components the area holds)."""
        value: int = struct.unpack_from("<Q", self.xsave_tail, 0)[0]
        return value

    def xmm(self, i: int) -> int:
        """XMM register ``i`` as a 128-bit integer."""
        return int.from_bytes(self.fxsave[_FX_XMM + 16 * i : _FX_XMM + 16 * i + 16], "little")

    def set_xmm(self, i: int, value: int) -> None:
        """Set XMM register ``i`` from a 128-bit integer."""
        img = bytearray(self.fxsave)
        img[_FX_XMM + 16 * i : _FX_XMM + 16 * i + 16] = value.to_bytes(16, "little")
        self.fxsave = bytes(img)

    def st(self, i: int) -> int:
        """x87 register ST(i)/MMi as an 80-bit integer."""
        return int.from_bytes(self.fxsave[_FX_ST + 16 * i : _FX_ST + 16 * i + 10], "little")

    # -- modes ---------------------------------------------------------------------
    def mode(self) -> CpuMode:
        """The operating mode: real, virtual-8086, protected, compatibility or long."""
        if not self.cr0 & CR0_PE:
            return CpuMode.REAL
        if self.efer & EFER_LMA:
            return CpuMode.LONG if self.cs.l else CpuMode.COMPATIBILITY
        if self.rflags & RFLAGS_VM:
            return CpuMode.VM86
        return CpuMode.PROTECTED

    def cpl(self) -> int:
        """The current privilege level (SS.DPL in protected modes, as KVM reads it)."""
        mode = self.mode()
        if mode is CpuMode.REAL:
            return 0
        if mode is CpuMode.VM86:
            return 3
        return self.ss.dpl

    def linear_rip(self) -> int:
        """The linear address of the next instruction (CS base + IP, sized by the mode)."""
        mode = self.mode()
        if mode is CpuMode.LONG:
            return self.rip & _MASK64
        if mode in (CpuMode.REAL, CpuMode.VM86) or not self.cs.db:
            ip = self.rip & 0xFFFF
        else:
            ip = self.rip & 0xFFFFFFFF
        return (self.cs.base + ip) & 0xFFFFFFFF

    # -- kvm_regs / kvm_sregs ------------------------------------------------------
    def to_regs(self) -> uapi.kvm_regs:
        """As ``struct kvm_regs`` (for KVM_SET_REGS)."""
        return uapi.kvm_regs(*(getattr(self, n) for n in GPR_NAMES), self.rip, self.rflags)

    def load_regs(self, regs: uapi.kvm_regs) -> ThreadContext:
        """Take the values of ``struct kvm_regs`` (from KVM_GET_REGS); returns self."""
        for name in GPR_NAMES:
            setattr(self, name, getattr(regs, name))
        self.rip = regs.rip
        self.rflags = regs.rflags
        return self

    def to_sregs(self) -> uapi.kvm_sregs:
        """As ``struct kvm_sregs`` (for KVM_SET_SREGS)."""
        s = uapi.kvm_sregs()
        for name in SEGMENT_NAMES:
            setattr(s, name, getattr(self, name).to_kvm())
        for name in ("gdt", "idt"):
            table = getattr(self, name)
            setattr(s, name, uapi.kvm_dtable(table.base, table.limit))
        for name in _CONTROL_NAMES:
            setattr(s, name, getattr(self, name))
        s.interrupt_bitmap[:] = list(self.interrupt_bitmap)
        return s

    def load_sregs(self, s: uapi.kvm_sregs) -> ThreadContext:
        """Take the values of ``struct kvm_sregs`` (from KVM_GET_SREGS); returns self."""
        for name in SEGMENT_NAMES:
            setattr(self, name, Segment.from_kvm(getattr(s, name)))
        self.gdt = DescriptorTable(s.gdt.base, s.gdt.limit)
        self.idt = DescriptorTable(s.idt.base, s.idt.limit)
        for name in _CONTROL_NAMES:
            setattr(self, name, getattr(s, name))
        bm = s.interrupt_bitmap
        self.interrupt_bitmap = (bm[0], bm[1], bm[2], bm[3])
        return self

    # -- FPU / XSAVE / XCRs --------------------------------------------------------
    def to_fpu(self) -> uapi.kvm_fpu:
        """As ``struct kvm_fpu`` (KVM_SET_FPU; prefer :meth:`to_xsave`, see module doc)."""
        img = self.fxsave
        f = uapi.kvm_fpu()
        ctypes.memmove(f.fpr, img[_FX_ST : _FX_ST + 128], 128)
        ctypes.memmove(f.xmm, img[_FX_XMM : _FX_XMM + 256], 256)
        f.fcw, f.fsw = self._fx("<H", _FX_FCW), self._fx("<H", _FX_FSW)
        f.ftwx = img[_FX_FTW]
        f.last_opcode = self._fx("<H", _FX_FOP)
        f.last_ip, f.last_dp = self._fx("<Q", _FX_FIP), self._fx("<Q", _FX_FDP)
        f.mxcsr = self._fx("<I", _FX_MXCSR)
        return f

    def load_fpu(self, f: uapi.kvm_fpu) -> ThreadContext:
        """Take ``struct kvm_fpu`` into the FXSAVE image (MXCSR_MASK is kept); returns self."""
        img = bytearray(self.fxsave)
        img[_FX_ST : _FX_ST + 128] = _raw(f.fpr)
        img[_FX_XMM : _FX_XMM + 256] = _raw(f.xmm)
        struct.pack_into("<HHB", img, _FX_FCW, f.fcw, f.fsw, f.ftwx)
        struct.pack_into("<HQQI", img, _FX_FOP, f.last_opcode, f.last_ip, f.last_dp, f.mxcsr)
        self.fxsave = bytes(img)
        return self

    def to_xsave(self, size: int | None = None) -> Any:
        """As ``struct kvm_xsave`` (KVM_SET_XSAVE), or of ``size`` bytes for KVM_CAP_XSAVE2.

        XSTATE_BV bits 0 and 1 are always set, so the x87/SSE state is loaded.
        """
        size = max(XSAVE_SIZE, FXSAVE_SIZE + len(self.xsave_tail)) if size is None else size
        buf = uapi.xsave2_buffer(size)
        area = (self.fxsave + self.xsave_tail)[:size]
        ctypes.memmove(ctypes.addressof(buf), area, len(area))
        bv = struct.unpack_from("<Q", area, FXSAVE_SIZE)[0] | XSTATE_X87_SSE
        ctypes.memmove(ctypes.addressof(buf) + FXSAVE_SIZE, struct.pack("<Q", bv), 8)
        return buf

    def load_xsave(self, xsave: Any) -> ThreadContext:
        """Take a ``struct kvm_xsave`` (any KVM_GET_XSAVE2 size); returns self."""
        data = _raw(xsave)
        if len(data) < FXSAVE_SIZE + 64:
            raise ValueError(f"an XSAVE area holds at least 576 bytes, got {len(data)}")
        self.fxsave = data[:FXSAVE_SIZE]
        self.xsave_tail = data[FXSAVE_SIZE:]
        return self

    def to_xcrs(self) -> uapi.kvm_xcrs:
        """As ``struct kvm_xcrs`` (KVM_SET_XCRS), sorted by index."""
        if len(self.xcrs) > uapi.KVM_MAX_XCRS:
            raise ValueError(f"at most {uapi.KVM_MAX_XCRS} XCRs, got {len(self.xcrs)}")
        x = uapi.kvm_xcrs()
        x.nr_xcrs = len(self.xcrs)
        for i, (index, value) in enumerate(sorted(self.xcrs.items())):
            x.xcrs[i].xcr = index
            x.xcrs[i].value = value
        return x

    def load_xcrs(self, x: uapi.kvm_xcrs) -> ThreadContext:
        """Take ``struct kvm_xcrs`` (KVM_GET_XCRS); returns self."""
        if x.nr_xcrs > uapi.KVM_MAX_XCRS:
            raise ValueError(f"kvm_xcrs.nr_xcrs {x.nr_xcrs} exceeds {uapi.KVM_MAX_XCRS}")
        self.xcrs = {x.xcrs[i].xcr: x.xcrs[i].value for i in range(x.nr_xcrs)}
        return self

    # -- MSRs, events, debug registers, LAPIC, CPUID, MP state -----------------------
    def to_msrs(self, include_tsc: bool = True) -> Any:
        """As ``struct kvm_msrs`` with entries (KVM_SET_MSRS); the TSC goes in as MSR 0x10."""
        items = list(self.msrs.items())
        if include_tsc:
            items.append((MSR_IA32_TSC, self.tsc))
        buf = uapi.msrs_buffer(len(items))
        for i, (index, value) in enumerate(items):
            buf.entries[i].index = index
            buf.entries[i].data = value
        return buf

    def load_msrs(self, buf: Any, count: int | None = None) -> ThreadContext:
        """Take the first ``count`` (default ``nmsrs``) entries of a ``struct kvm_msrs``.

        KVM_GET_MSRS returns how many entries it filled; pass that as ``count``.
        MSR 0x10 (IA32_TSC) sets :attr:`tsc`; the others update :attr:`msrs`.
        """
        n = buf.nmsrs if count is None else count
        for i in range(n):
            e = buf.entries[i]
            if e.index == MSR_IA32_TSC:
                self.tsc = e.data
            else:
                self.msrs[e.index] = e.data
        return self

    def to_events(self) -> uapi.kvm_vcpu_events:
        """As ``struct kvm_vcpu_events`` (KVM_SET_VCPU_EVENTS)."""
        return self.events.to_kvm()

    def load_events(self, ev: uapi.kvm_vcpu_events) -> ThreadContext:
        """Take ``struct kvm_vcpu_events`` (KVM_GET_VCPU_EVENTS); returns self."""
        self.events = VcpuEvents.from_kvm(ev)
        return self

    def to_debugregs(self) -> uapi.kvm_debugregs:
        """As ``struct kvm_debugregs``."""
        d = uapi.kvm_debugregs()
        d.db[:] = list(self.debug_db)
        d.dr6, d.dr7, d.flags = self.dr6, self.dr7, self.debugregs_flags
        return d

    def load_debugregs(self, d: uapi.kvm_debugregs) -> ThreadContext:
        """Take ``struct kvm_debugregs``; returns self."""
        self.debug_db = (d.db[0], d.db[1], d.db[2], d.db[3])
        self.dr6, self.dr7, self.debugregs_flags = d.dr6, d.dr7, d.flags
        return self

    def to_lapic(self) -> uapi.kvm_lapic_state:
        """As ``struct kvm_lapic_state`` (KVM_SET_LAPIC).

        Raises:
            ValueError: no LAPIC page was captured.
        """
        if len(self.lapic) != uapi.KVM_APIC_REG_SIZE:
            raise ValueError("no LAPIC state captured (ThreadContext.lapic is empty)")
        s = uapi.kvm_lapic_state()
        ctypes.memmove(ctypes.addressof(s), self.lapic, uapi.KVM_APIC_REG_SIZE)
        return s

    def load_lapic(self, s: uapi.kvm_lapic_state) -> ThreadContext:
        """Take ``struct kvm_lapic_state`` (KVM_GET_LAPIC); returns self."""
        self.lapic = _raw(s)
        return self

    def to_cpuid2(self) -> Any:
        """As ``struct kvm_cpuid2`` with entries (KVM_SET_CPUID2)."""
        buf = uapi.cpuid2_buffer(len(self.cpuid))
        for i, entry in enumerate(self.cpuid):
            buf.entries[i] = entry.to_kvm()
        return buf

    def load_cpuid(self, source: Any) -> ThreadContext:
        """Take a ``struct kvm_cpuid2`` buffer or a sequence of ``kvm_cpuid_entry2``."""
        if hasattr(source, "nent"):
            entries: Iterable[Any] = (source.entries[i] for i in range(source.nent))
        else:
            entries = source
        self.cpuid = [CpuidEntry.from_kvm(e) for e in entries]
        return self

    def to_mp_state(self) -> uapi.kvm_mp_state:
        """As ``struct kvm_mp_state``."""
        return uapi.kvm_mp_state(self.mp_state)

    def load_mp_state(self, s: uapi.kvm_mp_state) -> ThreadContext:
        """Take ``struct kvm_mp_state``; returns self."""
        self.mp_state = s.mp_state
        return self

    # -- checkpoints ---------------------------------------------------------------
    def serialize(self, cp: CheckpointOut) -> None:
        """Write the state into the current checkpoint section."""
        out = cp.param_out
        for name in (*GPR_NAMES, "rip", "rflags", *_CONTROL_NAMES):
            out(name, getattr(self, name))
        for name in SEGMENT_NAMES:
            seg = getattr(self, name)
            out(f"seg.{name}", [getattr(seg, f) for f in SEGMENT_FIELDS])
        out("gdt", [self.gdt.base, self.gdt.limit])
        out("idt", [self.idt.base, self.idt.limit])
        out("interrupt_bitmap", list(self.interrupt_bitmap))
        out("fxsave", self.fxsave)
        out("xsave_tail_size", len(self.xsave_tail))
        out("xsave_tail", self.xsave_tail.rstrip(b"\0"))
        out("xcr_indices", sorted(self.xcrs))
        out("xcr_values", [self.xcrs[i] for i in sorted(self.xcrs)])
        out("msr_indices", sorted(self.msrs))
        out("msr_values", [self.msrs[i] for i in sorted(self.msrs)])
        out("tsc", self.tsc)
        out("mp_state", self.mp_state)
        out("events", [getattr(self.events, n) for n, _, _ in _EVENT_MAP])
        out("debug_db", list(self.debug_db))
        out("dr6", self.dr6)
        out("dr7", self.dr7)
        out("debugregs_flags", self.debugregs_flags)
        out("lapic", self.lapic)
        out("cpuid", [v for e in self.cpuid for v in e])

    @classmethod
    def from_checkpoint(cls, cp: CheckpointIn) -> ThreadContext:
        """Read a ThreadContext from the current checkpoint section.

        Raises:
            CheckpointError: naming the section and key that is missing or malformed.
        """
        s = cp.current
        tc = cls()
        for name in (*GPR_NAMES, "rip", "rflags", *_CONTROL_NAMES):
            setattr(tc, name, s.get_int(name))
        for name in SEGMENT_NAMES:
            setattr(tc, name, Segment(*s.get_int_list(f"seg.{name}", len(SEGMENT_FIELDS))))
        tc.gdt = DescriptorTable(*s.get_int_list("gdt", 2))
        tc.idt = DescriptorTable(*s.get_int_list("idt", 2))
        b = s.get_int_list("interrupt_bitmap", 4)
        tc.interrupt_bitmap = (b[0], b[1], b[2], b[3])
        tc.fxsave = s.get_bytes("fxsave", FXSAVE_SIZE)
        tail = s.get_bytes("xsave_tail")
        size = s.get_int("xsave_tail_size")
        if len(tail) > size:
            raise CheckpointError(f"[{s.path}] xsave_tail: longer than xsave_tail_size {size}")
        tc.xsave_tail = tail + bytes(size - len(tail))
        tc.xcrs = _pairs(s.get_int_list("xcr_indices"), s.get_int_list("xcr_values"), s.path)
        tc.msrs = _pairs(s.get_int_list("msr_indices"), s.get_int_list("msr_values"), s.path)
        tc.tsc = s.get_int("tsc")
        tc.mp_state = s.get_int("mp_state")
        tc.events = VcpuEvents(*s.get_int_list("events", len(_EVENT_MAP)))
        d = s.get_int_list("debug_db", 4)
        tc.debug_db = (d[0], d[1], d[2], d[3])
        tc.dr6, tc.dr7 = s.get_int("dr6"), s.get_int("dr7")
        tc.debugregs_flags = s.get_int("debugregs_flags")
        tc.lapic = s.get_bytes("lapic")
        flat = s.get_int_list("cpuid")
        if len(flat) % 7:
            raise CheckpointError(f"[{s.path}] cpuid: {len(flat)} values is not 7 per entry")
        tc.cpuid = [CpuidEntry(*flat[i : i + 7]) for i in range(0, len(flat), 7)]
        return tc

    def unserialize(self, cp: CheckpointIn) -> None:
        """Replace this state with the current checkpoint section's (all or nothing)."""
        new = self.from_checkpoint(cp)
        self.__dict__.update(new.__dict__)

    # -- comparison and dumps --------------------------------------------------------
    def diff(self, other: ThreadContext) -> List[str]:
        """Human-readable differences, e.g. ``["rax: 0x1 != 0x2"]`` (empty when equal)."""
        out: List[str] = []
        for name in (*GPR_NAMES, "rip", "rflags", *_CONTROL_NAMES, "tsc", "mp_state",
                     "dr6", "dr7", "debugregs_flags"):
            _cmp(out, name, getattr(self, name), getattr(other, name))
        for name in SEGMENT_NAMES:
            a, b = getattr(self, name), getattr(other, name)
            for f in SEGMENT_FIELDS:
                _cmp(out, f"{name}.{f}", getattr(a, f), getattr(b, f))
        for name in ("gdt", "idt"):
            a, b = getattr(self, name), getattr(other, name)
            _cmp(out, f"{name}.base", a.base, b.base)
            _cmp(out, f"{name}.limit", a.limit, b.limit)
        _cmp_seq(out, "interrupt_bitmap", self.interrupt_bitmap, other.interrupt_bitmap)
        _cmp_seq(out, "debug_db", self.debug_db, other.debug_db)
        _diff_fxsave(out, self.fxsave, other.fxsave)
        _cmp(out, "xstate_bv", self.xstate_bv, other.xstate_bv)
        _diff_bytes(out, "xsave_tail", self.xsave_tail, other.xsave_tail)
        _diff_map(out, "xcr", self.xcrs, other.xcrs)
        _diff_map(out, "msr", self.msrs, other.msrs)
        for n, _, _ in _EVENT_MAP:
            _cmp(out, f"events.{n}", getattr(self.events, n), getattr(other.events, n))
        _diff_bytes(out, "lapic", self.lapic, other.lapic)
        mine = {(e.function, e.index): e for e in self.cpuid}
        theirs = {(e.function, e.index): e for e in other.cpuid}
        for key in sorted(set(mine) | set(theirs)):
            label = f"cpuid {key[0]:#x}.{key[1]:#x}"
            if key not in mine or key not in theirs:
                out.append(f"{label}: {'present' if key in mine else 'absent'} != "
                           f"{'present' if key in theirs else 'absent'}")
                continue
            for f in ("flags", "eax", "ebx", "ecx", "edx"):
                _cmp(out, f"{label} {f}", getattr(mine[key], f), getattr(theirs[key], f))
        if [(e.function, e.index) for e in self.cpuid] != [
            (e.function, e.index) for e in other.cpuid
        ] and not any(line.startswith("cpuid") for line in out):
            out.append("cpuid: same entries in a different order")
        return out

    def dump(self) -> str:
        """A register dump in the style of gem5's X86KvmCPU dumpIntRegs/dumpSpecRegs/dumpFpuRegs."""
        lines = ["KVM register state:"]
        lines += [f"\t{n}: {getattr(self, n):#x}" for n in (*GPR_NAMES, "rip", "rflags")]
        lines.append("Special registers:")
        for name in SEGMENT_NAMES:
            g = getattr(self, name)
            lines.append(f"\t{name}: @{g.base:#x}+{g.limit:x} [sel: {g.selector:#x}, "
                         f"type: {g.type:#x}]")
            lines.append(f"\t\tpres.: {g.present}, dpl: {g.dpl}, db: {g.db}, s: {g.s}, "
                         f"l: {g.l}, g: {g.g}, avl: {g.avl}, unus.: {g.unusable}")
        for name in ("gdt", "idt"):
            t = getattr(self, name)
            lines.append(f"\t{name}: @{t.base:#x}+{t.limit:x}")
        lines += [f"\t{n}: {getattr(self, n):#x}" for n in _CONTROL_NAMES]
        lines.append("\tInterrupt Bitmap:" + "".join(f" {w:#018x}" for w in self.interrupt_bitmap))
        lines.append("FPU registers:")
        lines.append(f"\tfcw: {self.fcw:#x}  fsw: {self.fsw:#x}  ftwx: {self.fxsave[_FX_FTW]:#x}  "
                     f"last_opcode: {self._fx('<H', _FX_FOP):#x}")
        lines.append(f"\tlast_ip: {self._fx('<Q', _FX_FIP):#x}  "
                     f"last_dp: {self._fx('<Q', _FX_FDP):#x}")
        lines += [f"\tst{i}: {self.st(i):#022x}" for i in range(8)]
        lines += [f"\txmm{i}: {self.xmm(i):#034x}" for i in range(16)]
        lines.append(f"\tmxcsr: {self.mxcsr:#x}  xcr0: {self.xcr0:#x}  "
                     f"xstate_bv: {self.xstate_bv:#x}")
        lines.append(f"Mode: {self.mode().value}, CPL {self.cpl()}, "
                     f"linear rip {self.linear_rip():#x}, tsc {self.tsc:#x}")
        if self.msrs:
            lines.append("MSRs:")
            lines += [f"\t{i:#x}: {v:#x}" for i, v in sorted(self.msrs.items())]
        return "\n".join(lines) + "\n"

    # gem5 spellings.
    def dumpIntRegs(self) -> str:
        """The integer-register part of :meth:`dump`."""
        return "\n".join(self.dump().split("\n")[: 2 + len(GPR_NAMES) + 1]) + "\n"


def _pairs(indices: Sequence[int], values: Sequence[int], section: str) -> Dict[int, int]:
    if len(indices) != len(values):
        raise CheckpointError(
            f"[{section}] {len(indices)} indices but {len(values)} values for a register map"
        )
    return dict(zip(indices, values))


def _cmp(out: List[str], name: str, a: int, b: int) -> None:
    if a != b:
        out.append(f"{name}: {a:#x} != {b:#x}")


def _cmp_seq(out: List[str], name: str, a: Sequence[int], b: Sequence[int]) -> None:
    for i, (x, y) in enumerate(zip(a, b)):
        _cmp(out, f"{name}[{i}]", x, y)


def _diff_map(out: List[str], label: str, a: Dict[int, int], b: Dict[int, int]) -> None:
    for key in sorted(set(a) | set(b)):
        x = f"{a[key]:#x}" if key in a else "(absent)"
        y = f"{b[key]:#x}" if key in b else "(absent)"
        if x != y:
            out.append(f"{label} {key:#x}: {x} != {y}")


def _diff_bytes(out: List[str], name: str, a: bytes, b: bytes) -> None:
    if a == b:
        return
    if len(a) != len(b):
        out.append(f"{name}: {len(a)} bytes != {len(b)} bytes")
        return
    first = next(i for i in range(len(a)) if a[i] != b[i])
    count = sum(1 for x, y in zip(a, b) if x != y)
    out.append(f"{name}[{first:#x}]: {a[first]:#x} != {b[first]:#x} ({count} bytes differ)")


_FX_FIELDS = (
    ("fcw", "<H", _FX_FCW), ("fsw", "<H", _FX_FSW), ("ftwx", "<B", _FX_FTW),
    ("last_opcode", "<H", _FX_FOP), ("last_ip", "<Q", _FX_FIP), ("last_dp", "<Q", _FX_FDP),
    ("mxcsr", "<I", _FX_MXCSR), ("mxcsr_mask", "<I", _FX_MXCSR_MASK),
)


def _diff_fxsave(out: List[str], a: bytes, b: bytes) -> None:
    if a == b:
        return
    for name, fmt, off in _FX_FIELDS:
        _cmp(out, name, struct.unpack_from(fmt, a, off)[0], struct.unpack_from(fmt, b, off)[0])
    for i in range(8):
        o = _FX_ST + 16 * i
        _cmp(out, f"st{i}", int.from_bytes(a[o : o + 16], "little"),
             int.from_bytes(b[o : o + 16], "little"))
    for i in range(16):
        o = _FX_XMM + 16 * i
        _cmp(out, f"xmm{i}", int.from_bytes(a[o : o + 16], "little"),
             int.from_bytes(b[o : o + 16], "little"))
    _diff_bytes(out, "fxsave.reserved", a[5:6] + a[416:], b[5:6] + b[416:])
