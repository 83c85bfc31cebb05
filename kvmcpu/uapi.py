"""The KVM userspace ABI for x86_64, as ctypes.

Mirrors ``<linux/kvm.h>`` and ``<asm/kvm.h>`` (package linux-libc-dev). C names
are kept verbatim so that every structure, constant and ioctl here can be
grepped against the kernel headers. Ioctl numbers are computed from the
structure types with a port of ``<asm-generic/ioctl.h>``; none is written as a
literal. The layout of the structures the rest of the package depends on is
checked at import time, and ``tests/unit/test_uapi_layout.py`` compares every
size, key offset and ioctl number with a C program compiled against the real
header when a C compiler is available.
"""

from __future__ import annotations

import ctypes
import enum
from ctypes import (
    Structure,
    Union,
    c_char,
    c_int32,
    c_int64,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    sizeof,
)
from typing import Any, Type

_u8 = c_uint8
_u16 = c_uint16
_u32 = c_uint32
_u64 = c_uint64
_s32 = c_int32
_s64 = c_int64

# ---------------------------------------------------------------------------
# <asm-generic/ioctl.h>
# ---------------------------------------------------------------------------
_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_DIRBITS = 2

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    if not 0 <= size < (1 << _IOC_SIZEBITS):
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IOC_TYPECHECK(t: Any) -> int:
    return sizeof(t)


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, t: Any) -> int:
    return _IOC(_IOC_READ, type_, nr, _IOC_TYPECHECK(t))


def _IOW(type_: int, nr: int, t: Any) -> int:
    return _IOC(_IOC_WRITE, type_, nr, _IOC_TYPECHECK(t))


def _IOWR(type_: int, nr: int, t: Any) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, _IOC_TYPECHECK(t))


KVMIO = 0xAE
KVM_API_VERSION = 12

# ---------------------------------------------------------------------------
# Structures from <asm/kvm.h> (x86)
# ---------------------------------------------------------------------------
KVM_NR_INTERRUPTS = 256
KVM_APIC_REG_SIZE = 0x400
KVM_MAX_XCRS = 16
KVM_PIO_PAGE_OFFSET = 1
KVM_COALESCED_MMIO_PAGE_OFFSET = 2
KVM_DIRTY_LOG_PAGE_OFFSET = 64
SYNC_REGS_SIZE_BYTES = 2048


class kvm_regs(Structure):  # <asm/kvm.h>
    _fields_ = [
        (name, _u64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]


class kvm_lapic_state(Structure):  # <asm/kvm.h>
    _fields_ = [("regs", c_char * KVM_APIC_REG_SIZE)]


class kvm_segment(Structure):  # <asm/kvm.h>
    _fields_ = [
        ("base", _u64),
        ("limit", _u32),
        ("selector", _u16),
        ("type", _u8),
        ("present", _u8),
        ("dpl", _u8),
        ("db", _u8),
        ("s", _u8),
        ("l", _u8),
        ("g", _u8),
        ("avl", _u8),
        ("unusable", _u8),
        ("padding", _u8),
    ]


class kvm_dtable(Structure):  # <asm/kvm.h>
    _fields_ = [("base", _u64), ("limit", _u16), ("padding", _u16 * 3)]


class kvm_sregs(Structure):  # <asm/kvm.h>
    _fields_ = [
        ("cs", kvm_segment),
        ("ds", kvm_segment),
        ("es", kvm_segment),
        ("fs", kvm_segment),
        ("gs", kvm_segment),
        ("ss", kvm_segment),
        ("tr", kvm_segment),
        ("ldt", kvm_segment),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", _u64),
        ("cr2", _u64),
        ("cr3", _u64),
        ("cr4", _u64),
        ("cr8", _u64),
        ("efer", _u64),
        ("apic_base", _u64),
        ("interrupt_bitmap", _u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_fpu(Structure):  # <asm/kvm.h>
    _fields_ = [
        ("fpr", (_u8 * 16) * 8),
        ("fcw", _u16),
        ("fsw", _u16),
        ("ftwx", _u8),
        ("pad1", _u8),
        ("last_opcode", _u16),
        ("last_ip", _u64),
        ("last_dp", _u64),
        ("xmm", (_u8 * 16) * 16),
        ("mxcsr", _u32),
        ("pad2", _u32),
    ]


class kvm_msr_entry(Structure):  # <asm/kvm.h>
    _fields_ = [("index", _u32), ("reserved", _u32), ("data", _u64)]


class kvm_msrs(Structure):  # <asm/kvm.h>; entries[] is a flexible array, see msrs_buffer()
    _fields_ = [("nmsrs", _u32), ("pad", _u32)]


class kvm_msr_list(Structure):  # <asm/kvm.h>; indices[] is a flexible array
    _fields_ = [("nmsrs", _u32)]


class kvm_cpuid_entry2(Structure):  # <asm/kvm.h>
    _fields_ = [
        ("function", _u32),
        ("index", _u32),
        ("flags", _u32),
        ("eax", _u32),
        ("ebx", _u32),
        ("ecx", _u32),
        ("edx", _u32),
        ("padding", _u32 * 3),
    ]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0
KVM_CPUID_FLAG_STATEFUL_FUNC = 1 << 1
KVM_CPUID_FLAG_STATE_READ_NEXT = 1 << 2


class kvm_cpuid2(Structure):  # <asm/kvm.h>; entries[] is a flexible array, see cpuid2_buffer()
    _fields_ = [("nent", _u32), ("padding", _u32)]


class kvm_pit_channel_state(Structure):  # <asm/kvm.h>
    _fields_ = [
        ("count", _u32),
        ("latched_count", _u16),
        ("count_latched", _u8),
        ("status_latched", _u8),
        ("status", _u8),
        ("read_state", _u8),
        ("write_state", _u8),
        ("write_latch", _u8),
        ("rw_mode", _u8),
        ("mode", _u8),
        ("bcd", _u8),
        ("gate", _u8),
        ("count_load_time", _s64),
    ]


class kvm_pit_state2(Structure):  # <asm/kvm.h>
    _fields_ = [
        ("channels", kvm_pit_channel_state * 3),
        ("flags", _u32),
        ("reserved", _u32 * 9),
    ]


class kvm_debug_exit_arch(Structure):  # <asm/kvm.h>
    _fields_ = [
        ("exception", _u32),
        ("pad", _u32),
        ("pc", _u64),
        ("dr6", _u64),
        ("dr7", _u64),
    ]


KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW_BP = 0x00020000
KVM_GUESTDBG_INJECT_DB = 0x00040000
KVM_GUESTDBG_INJECT_BP = 0x00080000
KVM_GUESTDBG_BLOCKIRQ = 0x00100000


class kvm_guest_debug_arch(Structure):  # <asm/kvm.h>
    _fields_ = [("debugreg", _u64 * 8)]


KVM_VCPUEVENT_VALID_NMI_PENDING = 0x00000001
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x00000002
KVM_VCPUEVENT_VALID_SHADOW = 0x00000004
KVM_VCPUEVENT_VALID_SMM = 0x00000008
KVM_VCPUEVENT_VALID_PAYLOAD = 0x00000010
KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x00000020

KVM_X86_SHADOW_INT_MOV_SS = 0x01
KVM_X86_SHADOW_INT_STI = 0x02


class _kvm_vcpu_events_exception(Structure):
    _fields_ = [
        ("injected", _u8),
        ("nr", _u8),
        ("has_error_code", _u8),
        ("pending", _u8),
        ("error_code", _u32),
    ]


class _kvm_vcpu_events_interrupt(Structure):
    _fields_ = [("injected", _u8), ("nr", _u8), ("soft", _u8), ("shadow", _u8)]


class _kvm_vcpu_events_nmi(Structure):
    _fields_ = [("injected", _u8), ("pending", _u8), ("masked", _u8), ("pad", _u8)]


class _kvm_vcpu_events_smi(Structure):
    _fields_ = [
        ("smm", _u8),
        ("pending", _u8),
        ("smm_inside_nmi", _u8),
        ("latched_init", _u8),
    ]


class _kvm_vcpu_events_triple_fault(Structure):
    _fields_ = [("pending", _u8)]


class kvm_vcpu_events(Structure):  # <asm/kvm.h>
    _fields_ = [
        ("exception", _kvm_vcpu_events_exception),
        ("interrupt", _kvm_vcpu_events_interrupt),
        ("nmi", _kvm_vcpu_events_nmi),
        ("sipi_vector", _u32),
        ("flags", _u32),
        ("smi", _kvm_vcpu_events_smi),
        ("triple_fault", _kvm_vcpu_events_triple_fault),
        ("reserved", _u8 * 26),
        ("exception_has_payload", _u8),
        ("exception_payload", _u64),
    ]


class kvm_debugregs(Structure):  # <asm/kvm.h>
    _fields_ = [
        ("db", _u64 * 4),
        ("dr6", _u64),
        ("dr7", _u64),
        ("flags", _u64),
        ("reserved", _u64 * 9),
    ]


class kvm_xsave(Structure):  # <asm/kvm.h>; KVM_GET_XSAVE2 may use more, see xsave2_buffer()
    _fields_ = [("region", _u32 * 1024)]


class kvm_xcr(Structure):  # <asm/kvm.h>
    _fields_ = [("xcr", _u32), ("reserved", _u32), ("value", _u64)]


class kvm_xcrs(Structure):  # <asm/kvm.h>
    _fields_ = [
        ("nr_xcrs", _u32),
        ("flags", _u32),
        ("xcrs", kvm_xcr * KVM_MAX_XCRS),
        ("padding", _u64 * 16),
    ]


KVM_SYNC_X86_REGS = 1 << 0
KVM_SYNC_X86_SREGS = 1 << 1
KVM_SYNC_X86_EVENTS = 1 << 2
KVM_SYNC_X86_VALID_FIELDS = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS


class kvm_sync_regs(Structure):  # <asm/kvm.h>
    _fields_ = [("regs", kvm_regs), ("sregs", kvm_sregs), ("events", kvm_vcpu_events)]


KVM_RUN_X86_SMM = 1 << 0
KVM_RUN_X86_BUS_LOCK = 1 << 1

# ---------------------------------------------------------------------------
# Structures from <linux/kvm.h>
# ---------------------------------------------------------------------------
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1


class kvm_userspace_memory_region(Structure):  # <linux/kvm.h>
    _fields_ = [
        ("slot", _u32),
        ("flags", _u32),
        ("guest_phys_addr", _u64),
        ("memory_size", _u64),
        ("userspace_addr", _u64),
    ]


class _kvm_irq_level_u(Union):
    _fields_ = [("irq", _u32), ("status", _s32)]


class kvm_irq_level(Structure):  # <linux/kvm.h>
    _anonymous_ = ("u",)
    _fields_ = [("u", _kvm_irq_level_u), ("level", _u32)]


class kvm_msi(Structure):  # <linux/kvm.h>: KVM_SIGNAL_MSI
    _fields_ = [("address_lo", _u32), ("address_hi", _u32), ("data", _u32), ("flags", _u32),
                ("devid", _u32), ("pad", _u8 * 12)]


class kvm_irq_routing_msi(Structure):  # <linux/kvm.h>
    _fields_ = [("address_lo", _u32), ("address_hi", _u32), ("data", _u32), ("devid", _u32)]


class _kvm_irq_routing_entry_u(Union):
    _fields_ = [("msi", kvm_irq_routing_msi), ("pad", _u32 * 8)]


class kvm_irq_routing_entry(Structure):  # <linux/kvm.h>
    _fields_ = [("gsi", _u32), ("type", _u32), ("flags", _u32), ("pad", _u32),
                ("u", _kvm_irq_routing_entry_u)]


class kvm_irq_routing(Structure):  # <linux/kvm.h>; the entries follow it
    _fields_ = [("nr", _u32), ("flags", _u32)]


KVM_IRQ_ROUTING_MSI = 2

KVM_PIT_SPEAKER_DUMMY = 1


class kvm_pit_config(Structure):  # <linux/kvm.h>
    _fields_ = [("flags", _u32), ("pad", _u32 * 15)]


class _kvm_pad_pio_u(Union):
    _fields_ = [("pad", _u32), ("pio", _u32)]


class kvm_coalesced_mmio_zone(Structure):  # <linux/kvm.h>
    _anonymous_ = ("u",)
    _fields_ = [("addr", _u64), ("size", _u32), ("u", _kvm_pad_pio_u)]


class kvm_coalesced_mmio(Structure):  # <linux/kvm.h>
    _anonymous_ = ("u",)
    _fields_ = [
        ("phys_addr", _u64),
        ("len", _u32),
        ("u", _kvm_pad_pio_u),
        ("data", _u8 * 8),
    ]


class kvm_coalesced_mmio_ring(Structure):  # <linux/kvm.h>; coalesced_mmio[] follows
    _fields_ = [("first", _u32), ("last", _u32)]


def KVM_COALESCED_MMIO_MAX(page_size: int = 4096) -> int:
    """Entries in the coalesced ring page (the kernel's KVM_COALESCED_MMIO_MAX)."""
    return (page_size - sizeof(kvm_coalesced_mmio_ring)) // sizeof(kvm_coalesced_mmio)


class _kvm_dirty_log_u(Union):
    _fields_ = [("dirty_bitmap", ctypes.c_void_p), ("padding2", _u64)]


class kvm_dirty_log(Structure):  # <linux/kvm.h>
    _anonymous_ = ("u",)
    _fields_ = [("slot", _u32), ("padding1", _u32), ("u", _kvm_dirty_log_u)]


class kvm_translation(Structure):  # <linux/kvm.h>
    _fields_ = [
        ("linear_address", _u64),
        ("physical_address", _u64),
        ("valid", _u8),
        ("writeable", _u8),
        ("usermode", _u8),
        ("pad", _u8 * 5),
    ]


class kvm_interrupt(Structure):  # <linux/kvm.h>
    _fields_ = [("irq", _u32)]


class kvm_signal_mask(Structure):  # <linux/kvm.h>; sigset[] follows, see signal_mask_buffer()
    _fields_ = [("len", _u32)]


KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4
KVM_MP_STATE_STOPPED = 5
KVM_MP_STATE_CHECK_STOP = 6
KVM_MP_STATE_OPERATING = 7
KVM_MP_STATE_LOAD = 8
KVM_MP_STATE_AP_RESET_HOLD = 9
KVM_MP_STATE_SUSPENDED = 10


class kvm_mp_state(Structure):  # <linux/kvm.h>
    _fields_ = [("mp_state", _u32)]


KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002


class kvm_guest_debug(Structure):  # <linux/kvm.h>
    _fields_ = [("control", _u32), ("pad", _u32), ("arch", kvm_guest_debug_arch)]


class kvm_enable_cap(Structure):  # <linux/kvm.h>
    _fields_ = [("cap", _u32), ("flags", _u32), ("args", _u64 * 4), ("pad", _u8 * 64)]


KVM_CLOCK_TSC_STABLE = 2
KVM_CLOCK_REALTIME = 1 << 2
KVM_CLOCK_HOST_TSC = 1 << 3


class kvm_clock_data(Structure):  # <linux/kvm.h>
    _fields_ = [
        ("clock", _u64),
        ("flags", _u32),
        ("pad0", _u32),
        ("realtime", _u64),
        ("host_tsc", _u64),
        ("pad", _u32 * 4),
    ]


class kvm_one_reg(Structure):  # <linux/kvm.h>
    _fields_ = [("id", _u64), ("addr", _u64)]


KVM_REG_X86 = 0x2000000000000000
KVM_REG_SIZE_SHIFT = 52
KVM_REG_SIZE_MASK = 0x00F0000000000000
KVM_REG_SIZE_U8 = 0x0000000000000000
KVM_REG_SIZE_U16 = 0x0010000000000000
KVM_REG_SIZE_U32 = 0x0020000000000000
KVM_REG_SIZE_U64 = 0x0030000000000000
KVM_REG_SIZE_U128 = 0x0040000000000000


def KVM_REG_SIZE(reg_id: int) -> int:
    """Bytes of a ONE_REG register, from the size field of its id."""
    return 1 << ((reg_id & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT)


class kvm_reg_list(Structure):  # <linux/kvm.h>; reg[] follows
    _fields_ = [("n", _u64)]


class kvm_create_device(Structure):  # <linux/kvm.h>
    _fields_ = [("type", _u32), ("fd", _u32), ("flags", _u32)]


class kvm_pic_state(Structure):  # <asm/kvm.h>
    _fields_ = [
        (name, _u8)
        for name in (
            "last_irr", "irr", "imr", "isr", "priority_add", "irq_base",
            "read_reg_select", "poll", "special_mask", "init_state", "auto_eoi",
            "rotate_on_auto_eoi", "special_fully_nested_mode", "init4", "elcr",
            "elcr_mask",
        )
    ]


KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2
KVM_NR_IRQCHIPS = 3


class _kvm_irqchip_u(Union):
    _fields_ = [("dummy", c_char * 512), ("pic", kvm_pic_state)]


class kvm_irqchip(Structure):  # <linux/kvm.h>; the ioapic view is left as raw bytes
    _fields_ = [("chip_id", _u32), ("pad", _u32), ("chip", _kvm_irqchip_u)]


# --- MSR exits to user space (KVM_CAP_X86_USER_SPACE_MSR, KVM_X86_SET_MSR_FILTER) ----
KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2
KVM_MSR_FILTER_READ = 1 << 0
KVM_MSR_FILTER_WRITE = 1 << 1
KVM_MSR_FILTER_DEFAULT_ALLOW = 0
KVM_MSR_FILTER_DEFAULT_DENY = 1
KVM_MSR_FILTER_MAX_RANGES = 16


class kvm_msr_filter_range(Structure):  # <linux/kvm.h>; a 0 bit in the bitmap: exit
    _fields_ = [("flags", _u32), ("nmsrs", _u32), ("base", _u32),
                ("bitmap", ctypes.c_void_p)]


class kvm_msr_filter(Structure):  # <linux/kvm.h>
    _fields_ = [("flags", _u32),
                ("ranges", kvm_msr_filter_range * KVM_MSR_FILTER_MAX_RANGES)]


# --- struct kvm_run and its exit union -------------------------------------
KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1 << 0

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3
KVM_SYSTEM_EVENT_WAKEUP = 4
KVM_SYSTEM_EVENT_SUSPEND = 5
KVM_SYSTEM_EVENT_SEV_TERM = 6


class _kvm_run_hw(Structure):
    _fields_ = [("hardware_exit_reason", _u64)]


class _kvm_run_fail_entry(Structure):
    _fields_ = [("hardware_entry_failure_reason", _u64), ("cpu", _u32)]


class _kvm_run_ex(Structure):
    _fields_ = [("exception", _u32), ("error_code", _u32)]


class _kvm_run_io(Structure):
    _fields_ = [
        ("direction", _u8),
        ("size", _u8),
        ("port", _u16),
        ("count", _u32),
        ("data_offset", _u64),
    ]


class _kvm_run_debug(Structure):
    _fields_ = [("arch", kvm_debug_exit_arch)]


class _kvm_run_mmio(Structure):
    _fields_ = [
        ("phys_addr", _u64),
        ("data", _u8 * 8),
        ("len", _u32),
        ("is_write", _u8),
    ]


class _kvm_run_hypercall(Structure):
    _fields_ = [
        ("nr", _u64),
        ("args", _u64 * 6),
        ("ret", _u64),
        ("longmode", _u32),
        ("pad", _u32),
    ]


class _kvm_run_tpr_access(Structure):
    _fields_ = [("rip", _u64), ("is_write", _u32), ("pad", _u32)]


class _kvm_run_internal(Structure):
    _fields_ = [("suberror", _u32), ("ndata", _u32), ("data", _u64 * 16)]


class _kvm_run_emulation_failure(Structure):
    _fields_ = [
        ("suberror", _u32),
        ("ndata", _u32),
        ("flags", _u64),
        ("insn_size", _u8),
        ("insn_bytes", _u8 * 15),
    ]


class _kvm_run_system_event_u(Union):
    _fields_ = [("flags", _u64), ("data", _u64 * 16)]


class _kvm_run_system_event(Structure):
    _anonymous_ = ("u",)
    _fields_ = [("type", _u32), ("ndata", _u32), ("u", _kvm_run_system_event_u)]


class _kvm_run_eoi(Structure):
    _fields_ = [("vector", _u8)]


class _kvm_run_msr(Structure):
    _fields_ = [
        ("error", _u8),
        ("pad", _u8 * 7),
        ("reason", _u32),
        ("index", _u32),
        ("data", _u64),
    ]


class _kvm_run_notify(Structure):
    _fields_ = [("flags", _u32)]


class _kvm_run_exit_union(Union):
    _fields_ = [
        ("hw", _kvm_run_hw),
        ("fail_entry", _kvm_run_fail_entry),
        ("ex", _kvm_run_ex),
        ("io", _kvm_run_io),
        ("debug", _kvm_run_debug),
        ("mmio", _kvm_run_mmio),
        ("hypercall", _kvm_run_hypercall),
        ("tpr_access", _kvm_run_tpr_access),
        ("internal", _kvm_run_internal),
        ("emulation_failure", _kvm_run_emulation_failure),
        ("system_event", _kvm_run_system_event),
        ("eoi", _kvm_run_eoi),
        ("msr", _kvm_run_msr),
        ("notify", _kvm_run_notify),
        ("padding", c_char * 256),
    ]


class _kvm_run_s(Union):
    _fields_ = [("regs", kvm_sync_regs), ("padding", c_char * SYNC_REGS_SIZE_BYTES)]


class kvm_run(Structure):  # <linux/kvm.h>
    _anonymous_ = ("u",)
    _fields_ = [
        ("request_interrupt_window", _u8),
        ("immediate_exit", _u8),
        ("padding1", _u8 * 6),
        ("exit_reason", _u32),
        ("ready_for_interrupt_injection", _u8),
        ("if_flag", _u8),
        ("flags", _u16),
        ("cr8", _u64),
        ("apic_base", _u64),
        ("u", _kvm_run_exit_union),
        ("kvm_valid_regs", _u64),
        ("kvm_dirty_regs", _u64),
        ("s", _kvm_run_s),
    ]


# ---------------------------------------------------------------------------
# Flexible-array helpers: a header structure followed by N entries, built as
# one ctypes structure so that a single buffer can be passed to the ioctl.
# ---------------------------------------------------------------------------
_flex_cache: dict[tuple[str, int], Type[Structure]] = {}


def _flex(header: Type[Structure], field: str, entry: Any, n: int) -> Type[Structure]:
    key = (f"{header.__name__}.{field}.{getattr(entry, '__name__', entry)}", n)
    cls = _flex_cache.get(key)
    if cls is None:
        cls = type(
            f"{header.__name__}_{n}",
            (Structure,),
            {"_fields_": list(header._fields_) + [(field, entry * n)]},
        )
        _flex_cache[key] = cls
    return cls


def msrs_buffer(n: int) -> Any:
    """A zeroed ``struct kvm_msrs`` with room for ``n`` entries, nmsrs set to n."""
    buf = _flex(kvm_msrs, "entries", kvm_msr_entry, n)()
    buf.nmsrs = n
    return buf


def msr_list_buffer(n: int) -> Any:
    """A ``struct kvm_msr_list`` with room for ``n`` indices, nmsrs set to n."""
    buf = _flex(kvm_msr_list, "indices", _u32, n)()
    buf.nmsrs = n
    return buf


def cpuid2_buffer(n: int) -> Any:
    """A ``struct kvm_cpuid2`` with room for ``n`` entries, nent set to n."""
    buf = _flex(kvm_cpuid2, "entries", kvm_cpuid_entry2, n)()
    buf.nent = n
    return buf


def signal_mask_buffer(sigset: bytes) -> Any:
    """A ``struct kvm_signal_mask`` holding the kernel sigset ``sigset`` (8 bytes on x86_64)."""
    buf = _flex(kvm_signal_mask, "sigset", _u8, len(sigset))()
    buf.len = len(sigset)
    ctypes.memmove(ctypes.addressof(buf) + sizeof(kvm_signal_mask), sigset, len(sigset))
    return buf


def reg_list_buffer(n: int) -> Any:
    """A ``struct kvm_reg_list`` with room for ``n`` ids."""
    buf = _flex(kvm_reg_list, "reg", _u64, n)()
    buf.n = n
    return buf


def xsave2_buffer(size: int) -> Any:
    """A ``struct kvm_xsave`` of ``size`` bytes (KVM_CAP_XSAVE2's answer, at least 4096)."""
    if size < sizeof(kvm_xsave) or size % 4:
        raise ValueError(f"xsave size must be a multiple of 4 and at least 4096, got {size}")
    extra = (size - sizeof(kvm_xsave)) // 4
    if extra == 0:
        return kvm_xsave()
    return _flex(kvm_xsave, "extra", _u32, extra)()


# ---------------------------------------------------------------------------
# Exit reasons, capabilities and other enumerations
# ---------------------------------------------------------------------------
class ExitReason(enum.IntEnum):
    """KVM_EXIT_* values of ``kvm_run.exit_reason``."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    S390_SIEIC = 13
    S390_RESET = 14
    DCR = 15
    NMI = 16
    INTERNAL_ERROR = 17
    OSI = 18
    S390_UCONTROL = 20
    WATCHDOG = 21
    S390_TSCH = 22
    EPR = 23
    SYSTEM_EVENT = 24
    S390_STSI = 25
    IOAPIC_EOI = 26
    HYPERV = 27
    ARM_NISV = 28
    X86_RDMSR = 29
    X86_WRMSR = 30
    DIRTY_RING_FULL = 31
    AP_RESET_HOLD = 32
    X86_BUS_LOCK = 33
    XEN = 34
    RISCV_SBI = 35
    RISCV_CSR = 36
    NOTIFY = 37
    PAPR_HCALL = 19


class Cap(enum.IntEnum):
    """KVM_CAP_* numbers for KVM_CHECK_EXTENSION and KVM_ENABLE_CAP."""

    IRQCHIP = 0
    HLT = 1
    MMU_SHADOW_CACHE_CONTROL = 2
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    VAPIC = 6
    EXT_CPUID = 7
    CLOCKSOURCE = 8
    NR_VCPUS = 9
    NR_MEMSLOTS = 10
    PIT = 11
    NOP_IO_DELAY = 12
    PV_MMU = 13
    MP_STATE = 14
    COALESCED_MMIO = 15
    SYNC_MMU = 16
    IOMMU = 18
    DESTROY_MEMORY_REGION_WORKS = 21
    USER_NMI = 22
    SET_GUEST_DEBUG = 23
    REINJECT_CONTROL = 24
    IRQ_ROUTING = 25
    IRQ_INJECT_STATUS = 26
    ASSIGN_DEV_IRQ = 29
    JOIN_MEMORY_REGIONS_WORKS = 30
    MCE = 31
    IRQFD = 32
    PIT2 = 33
    SET_BOOT_CPU_ID = 34
    PIT_STATE2 = 35
    IOEVENTFD = 36
    SET_IDENTITY_MAP_ADDR = 37
    XEN_HVM = 38
    ADJUST_CLOCK = 39
    INTERNAL_ERROR_DATA = 40
    VCPU_EVENTS = 41
    S390_PSW = 42
    PPC_SEGSTATE = 43
    HYPERV = 44
    HYPERV_VAPIC = 45
    HYPERV_SPIN = 46
    PCI_SEGMENT = 47
    PPC_PAIRED_SINGLES = 48
    INTR_SHADOW = 49
    DEBUGREGS = 50
    X86_ROBUST_SINGLESTEP = 51
    PPC_OSI = 52
    PPC_UNSET_IRQ = 53
    ENABLE_CAP = 54
    XSAVE = 55
    XCRS = 56
    PPC_GET_PVINFO = 57
    PPC_IRQ_LEVEL = 58
    ASYNC_PF = 59
    TSC_CONTROL = 60
    GET_TSC_KHZ = 61
    PPC_BOOKE_SREGS = 62
    SPAPR_TCE = 63
    PPC_SMT = 64
    PPC_RMA = 65
    MAX_VCPUS = 66
    PPC_HIOR = 67
    PPC_PAPR = 68
    SW_TLB = 69
    ONE_REG = 70
    S390_GMAP = 71
    TSC_DEADLINE_TIMER = 72
    S390_UCONTROL = 73
    SYNC_REGS = 74
    PCI_2_3 = 75
    KVMCLOCK_CTRL = 76
    SIGNAL_MSI = 77
    PPC_GET_SMMU_INFO = 78
    S390_COW = 79
    PPC_ALLOC_HTAB = 80
    READONLY_MEM = 81
    IRQFD_RESAMPLE = 82
    PPC_BOOKE_WATCHDOG = 83
    PPC_HTAB_FD = 84
    S390_CSS_SUPPORT = 85
    PPC_EPR = 86
    ARM_PSCI = 87
    ARM_SET_DEVICE_ADDR = 88
    DEVICE_CTRL = 89
    IRQ_MPIC = 90
    PPC_RTAS = 91
    IRQ_XICS = 92
    ARM_EL1_32BIT = 93
    SPAPR_MULTITCE = 94
    EXT_EMUL_CPUID = 95
    HYPERV_TIME = 96
    IOAPIC_POLARITY_IGNORED = 97
    ENABLE_CAP_VM = 98
    S390_IRQCHIP = 99
    IOEVENTFD_NO_LENGTH = 100
    VM_ATTRIBUTES = 101
    ARM_PSCI_0_2 = 102
    PPC_FIXUP_HCALL = 103
    PPC_ENABLE_HCALL = 104
    CHECK_EXTENSION_VM = 105
    S390_USER_SIGP = 106
    S390_VECTOR_REGISTERS = 107
    S390_MEM_OP = 108
    S390_USER_STSI = 109
    S390_SKEYS = 110
    MIPS_FPU = 111
    MIPS_MSA = 112
    S390_INJECT_IRQ = 113
    S390_IRQ_STATE = 114
    PPC_HWRNG = 115
    DISABLE_QUIRKS = 116
    X86_SMM = 117
    MULTI_ADDRESS_SPACE = 118
    GUEST_DEBUG_HW_BPS = 119
    GUEST_DEBUG_HW_WPS = 120
    SPLIT_IRQCHIP = 121
    IOEVENTFD_ANY_LENGTH = 122
    HYPERV_SYNIC = 123
    S390_RI = 124
    SPAPR_TCE_64 = 125
    ARM_PMU_V3 = 126
    VCPU_ATTRIBUTES = 127
    MAX_VCPU_ID = 128
    X2APIC_API = 129
    S390_USER_INSTR0 = 130
    MSI_DEVID = 131
    PPC_HTM = 132
    SPAPR_RESIZE_HPT = 133
    PPC_MMU_RADIX = 134
    PPC_MMU_HASH_V3 = 135
    IMMEDIATE_EXIT = 136
    MIPS_VZ = 137
    MIPS_TE = 138
    MIPS_64BIT = 139
    S390_GS = 140
    S390_AIS = 141
    SPAPR_TCE_VFIO = 142
    X86_DISABLE_EXITS = 143
    ARM_USER_IRQ = 144
    S390_CMMA_MIGRATION = 145
    PPC_FWNMI = 146
    PPC_SMT_POSSIBLE = 147
    HYPERV_SYNIC2 = 148
    HYPERV_VP_INDEX = 149
    S390_AIS_MIGRATION = 150
    PPC_GET_CPU_CHAR = 151
    S390_BPB = 152
    GET_MSR_FEATURES = 153
    HYPERV_EVENTFD = 154
    HYPERV_TLBFLUSH = 155
    S390_HPAGE_1M = 156
    NESTED_STATE = 157
    ARM_INJECT_SERROR_ESR = 158
    MSR_PLATFORM_INFO = 159
    PPC_NESTED_HV = 160
    HYPERV_SEND_IPI = 161
    COALESCED_PIO = 162
    HYPERV_ENLIGHTENED_VMCS = 163
    EXCEPTION_PAYLOAD = 164
    ARM_VM_IPA_SIZE = 165
    MANUAL_DIRTY_LOG_PROTECT = 166
    HYPERV_CPUID = 167
    MANUAL_DIRTY_LOG_PROTECT2 = 168
    PPC_IRQ_XIVE = 169
    ARM_SVE = 170
    ARM_PTRAUTH_ADDRESS = 171
    ARM_PTRAUTH_GENERIC = 172
    PMU_EVENT_FILTER = 173
    ARM_IRQ_LINE_LAYOUT_2 = 174
    HYPERV_DIRECT_TLBFLUSH = 175
    PPC_GUEST_DEBUG_SSTEP = 176
    ARM_NISV_TO_USER = 177
    ARM_INJECT_EXT_DABT = 178
    S390_VCPU_RESETS = 179
    S390_PROTECTED = 180
    PPC_SECURE_GUEST = 181
    HALT_POLL = 182
    ASYNC_PF_INT = 183
    LAST_CPU = 184
    SMALLER_MAXPHYADDR = 185
    S390_DIAG318 = 186
    STEAL_TIME = 187
    X86_USER_SPACE_MSR = 188
    X86_MSR_FILTER = 189
    ENFORCE_PV_FEATURE_CPUID = 190
    SYS_HYPERV_CPUID = 191
    DIRTY_LOG_RING = 192
    X86_BUS_LOCK_EXIT = 193
    PPC_DAWR1 = 194
    SET_GUEST_DEBUG2 = 195
    SGX_ATTRIBUTE = 196
    VM_COPY_ENC_CONTEXT_FROM = 197
    PTP_KVM = 198
    HYPERV_ENFORCE_CPUID = 199
    SREGS2 = 200
    EXIT_HYPERCALL = 201
    PPC_RPT_INVALIDATE = 202
    BINARY_STATS_FD = 203
    EXIT_ON_EMULATION_FAILURE = 204
    ARM_MTE = 205
    VM_MOVE_ENC_CONTEXT_FROM = 206
    VM_GPA_BITS = 207
    XSAVE2 = 208
    SYS_ATTRIBUTES = 209
    PPC_AIL_MODE_3 = 210
    S390_MEM_OP_EXTENSION = 211
    PMU_CAPABILITY = 212
    DISABLE_QUIRKS2 = 213
    VM_TSC_CONTROL = 214
    SYSTEM_EVENT_DATA = 215
    ARM_SYSTEM_SUSPEND = 216
    S390_PROTECTED_DUMP = 217
    X86_TRIPLE_FAULT_EVENT = 218
    X86_NOTIFY_VMEXIT = 219
    VM_DISABLE_NX_HUGE_PAGES = 220
    S390_ZPCI_OP = 221
    S390_CPU_TOPOLOGY = 222
    DIRTY_LOG_RING_ACQ_REL = 223


class InternalError(enum.IntEnum):
    """Suberrors of KVM_EXIT_INTERNAL_ERROR."""

    EMULATION = KVM_INTERNAL_ERROR_EMULATION
    SIMUL_EX = KVM_INTERNAL_ERROR_SIMUL_EX
    DELIVERY_EV = KVM_INTERNAL_ERROR_DELIVERY_EV
    UNEXPECTED_EXIT_REASON = KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON


class SystemEvent(enum.IntEnum):
    """Types of KVM_EXIT_SYSTEM_EVENT."""

    SHUTDOWN = KVM_SYSTEM_EVENT_SHUTDOWN
    RESET = KVM_SYSTEM_EVENT_RESET
    CRASH = KVM_SYSTEM_EVENT_CRASH
    WAKEUP = KVM_SYSTEM_EVENT_WAKEUP
    SUSPEND = KVM_SYSTEM_EVENT_SUSPEND
    SEV_TERM = KVM_SYSTEM_EVENT_SEV_TERM


class MemFlag(enum.IntFlag):
    """Flags of kvm_userspace_memory_region."""

    LOG_DIRTY_PAGES = KVM_MEM_LOG_DIRTY_PAGES
    READONLY = KVM_MEM_READONLY


class GuestDebug(enum.IntFlag):
    """KVM_GUESTDBG_* control bits of kvm_guest_debug."""

    ENABLE = KVM_GUESTDBG_ENABLE
    SINGLESTEP = KVM_GUESTDBG_SINGLESTEP
    USE_SW_BP = KVM_GUESTDBG_USE_SW_BP
    USE_HW_BP = KVM_GUESTDBG_USE_HW_BP
    INJECT_DB = KVM_GUESTDBG_INJECT_DB
    INJECT_BP = KVM_GUESTDBG_INJECT_BP
    BLOCKIRQ = KVM_GUESTDBG_BLOCKIRQ


class MpState(enum.IntEnum):
    """KVM_MP_STATE_* values."""

    RUNNABLE = KVM_MP_STATE_RUNNABLE
    UNINITIALIZED = KVM_MP_STATE_UNINITIALIZED
    INIT_RECEIVED = KVM_MP_STATE_INIT_RECEIVED
    HALTED = KVM_MP_STATE_HALTED
    SIPI_RECEIVED = KVM_MP_STATE_SIPI_RECEIVED
    STOPPED = KVM_MP_STATE_STOPPED
    CHECK_STOP = KVM_MP_STATE_CHECK_STOP
    OPERATING = KVM_MP_STATE_OPERATING
    LOAD = KVM_MP_STATE_LOAD
    AP_RESET_HOLD = KVM_MP_STATE_AP_RESET_HOLD
    SUSPENDED = KVM_MP_STATE_SUSPENDED


KVM_X86_DISABLE_EXITS_MWAIT = 1 << 0
KVM_X86_DISABLE_EXITS_HLT = 1 << 1
KVM_X86_DISABLE_EXITS_PAUSE = 1 << 2
KVM_X86_DISABLE_EXITS_CSTATE = 1 << 3

# ---------------------------------------------------------------------------
# ioctl numbers (<linux/kvm.h>), derived from the structure sizes
# ---------------------------------------------------------------------------
# System ioctls (on the /dev/kvm fd)
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, kvm_msr_list)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, kvm_cpuid2)
KVM_GET_EMULATED_CPUID = _IOWR(KVMIO, 0x09, kvm_cpuid2)
KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(KVMIO, 0x0A, kvm_msr_list)

# VM ioctls
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, kvm_dirty_log)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, _u64)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, kvm_irq_level)
KVM_SET_GSI_ROUTING = _IOW(KVMIO, 0x6A, kvm_irq_routing)
KVM_SIGNAL_MSI = _IOW(KVMIO, 0xA5, kvm_msi)
KVM_GET_IRQCHIP = _IOWR(KVMIO, 0x62, kvm_irqchip)
KVM_SET_IRQCHIP = _IOR(KVMIO, 0x63, kvm_irqchip)
KVM_IRQ_LINE_STATUS = _IOWR(KVMIO, 0x67, kvm_irq_level)
KVM_REGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x67, kvm_coalesced_mmio_zone)
KVM_UNREGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x68, kvm_coalesced_mmio_zone)
KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, kvm_pit_config)
KVM_SET_CLOCK = _IOW(KVMIO, 0x7B, kvm_clock_data)
KVM_GET_CLOCK = _IOR(KVMIO, 0x7C, kvm_clock_data)
KVM_GET_PIT2 = _IOR(KVMIO, 0x9F, kvm_pit_state2)
KVM_SET_PIT2 = _IOW(KVMIO, 0xA0, kvm_pit_state2)
KVM_CREATE_DEVICE = _IOWR(KVMIO, 0xE0, kvm_create_device)

# vCPU ioctls
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_TRANSLATE = _IOWR(KVMIO, 0x85, kvm_translation)
KVM_INTERRUPT = _IOW(KVMIO, 0x86, kvm_interrupt)
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, kvm_msrs)
KVM_SET_MSRS = _IOW(KVMIO, 0x89, kvm_msrs)
KVM_SET_SIGNAL_MASK = _IOW(KVMIO, 0x8B, kvm_signal_mask)
KVM_GET_FPU = _IOR(KVMIO, 0x8C, kvm_fpu)
KVM_SET_FPU = _IOW(KVMIO, 0x8D, kvm_fpu)
KVM_GET_LAPIC = _IOR(KVMIO, 0x8E, kvm_lapic_state)
KVM_SET_LAPIC = _IOW(KVMIO, 0x8F, kvm_lapic_state)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, kvm_cpuid2)
KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, kvm_cpuid2)
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, kvm_mp_state)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, kvm_mp_state)
KVM_NMI = _IO(KVMIO, 0x9A)
KVM_SET_GUEST_DEBUG = _IOW(KVMIO, 0x9B, kvm_guest_debug)
KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xA0, kvm_vcpu_events)
KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xA1, kvm_debugregs)
KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xA2, kvm_debugregs)
KVM_ENABLE_CAP = _IOW(KVMIO, 0xA3, kvm_enable_cap)
KVM_GET_XSAVE = _IOR(KVMIO, 0xA4, kvm_xsave)
KVM_SET_XSAVE = _IOW(KVMIO, 0xA5, kvm_xsave)
KVM_GET_XCRS = _IOR(KVMIO, 0xA6, kvm_xcrs)
KVM_SET_XCRS = _IOW(KVMIO, 0xA7, kvm_xcrs)
KVM_SET_TSC_KHZ = _IO(KVMIO, 0xA2)
KVM_GET_TSC_KHZ = _IO(KVMIO, 0xA3)
KVM_X86_SET_MSR_FILTER = _IOW(KVMIO, 0xC6, kvm_msr_filter)
KVM_GET_ONE_REG = _IOW(KVMIO, 0xAB, kvm_one_reg)
KVM_SET_ONE_REG = _IOW(KVMIO, 0xAC, kvm_one_reg)
KVM_KVMCLOCK_CTRL = _IO(KVMIO, 0xAD)
KVM_GET_REG_LIST = _IOWR(KVMIO, 0xB0, kvm_reg_list)
KVM_SMI = _IO(KVMIO, 0xB7)
KVM_GET_XSAVE2 = _IOR(KVMIO, 0xCF, kvm_xsave)

#: Every ioctl defined above, by its C name (used by the layout test and error messages).
IOCTL_NAMES: dict[int, str] = {}
for _name, _value in list(globals().items()):
    if _name.startswith("KVM_") and isinstance(_value, int) and _name in {
        "KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_GET_MSR_INDEX_LIST", "KVM_CHECK_EXTENSION",
        "KVM_GET_VCPU_MMAP_SIZE", "KVM_GET_SUPPORTED_CPUID", "KVM_GET_EMULATED_CPUID",
        "KVM_GET_MSR_FEATURE_INDEX_LIST", "KVM_CREATE_VCPU", "KVM_GET_DIRTY_LOG",
        "KVM_SET_USER_MEMORY_REGION", "KVM_SET_TSS_ADDR", "KVM_SET_IDENTITY_MAP_ADDR",
        "KVM_CREATE_IRQCHIP", "KVM_IRQ_LINE", "KVM_GET_IRQCHIP", "KVM_SET_IRQCHIP",
        "KVM_IRQ_LINE_STATUS", "KVM_REGISTER_COALESCED_MMIO", "KVM_UNREGISTER_COALESCED_MMIO",
        "KVM_CREATE_PIT2", "KVM_SET_CLOCK", "KVM_GET_CLOCK", "KVM_GET_PIT2", "KVM_SET_PIT2",
        "KVM_CREATE_DEVICE", "KVM_RUN", "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS",
        "KVM_SET_SREGS", "KVM_TRANSLATE", "KVM_INTERRUPT", "KVM_GET_MSRS", "KVM_SET_MSRS",
        "KVM_SET_SIGNAL_MASK", "KVM_GET_FPU", "KVM_SET_FPU", "KVM_GET_LAPIC", "KVM_SET_LAPIC",
        "KVM_SET_CPUID2", "KVM_GET_CPUID2", "KVM_GET_MP_STATE", "KVM_SET_MP_STATE", "KVM_NMI",
        "KVM_SET_GUEST_DEBUG", "KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS",
        "KVM_GET_DEBUGREGS", "KVM_SET_DEBUGREGS", "KVM_ENABLE_CAP", "KVM_GET_XSAVE",
        "KVM_SET_XSAVE", "KVM_GET_XCRS", "KVM_SET_XCRS", "KVM_SET_TSC_KHZ", "KVM_GET_TSC_KHZ",
        "KVM_GET_ONE_REG", "KVM_SET_ONE_REG", "KVM_KVMCLOCK_CTRL", "KVM_GET_REG_LIST",
        "KVM_SMI", "KVM_GET_XSAVE2", "KVM_X86_SET_MSR_FILTER", "KVM_SIGNAL_MSI",
        "KVM_SET_GSI_ROUTING",
    }:
        IOCTL_NAMES.setdefault(_value, _name)
del _name, _value

# ---------------------------------------------------------------------------
# Layout checks against the kernel's sizes (x86_64). A mismatch here means the
# structures above are wrong, and every ioctl built from them would be too.
# ---------------------------------------------------------------------------
STRUCT_SIZES: dict[str, int] = {
    "kvm_regs": 144,
    "kvm_segment": 24,
    "kvm_dtable": 16,
    "kvm_sregs": 312,
    "kvm_fpu": 416,
    "kvm_msr_entry": 16,
    "kvm_msrs": 8,
    "kvm_msr_list": 4,
    "kvm_cpuid_entry2": 40,
    "kvm_cpuid2": 8,
    "kvm_xsave": 4096,
    "kvm_xcr": 16,
    "kvm_xcrs": 392,
    "kvm_vcpu_events": 64,
    "kvm_debugregs": 128,
    "kvm_mp_state": 4,
    "kvm_interrupt": 4,
    "kvm_userspace_memory_region": 32,
    "kvm_coalesced_mmio_zone": 16,
    "kvm_coalesced_mmio": 24,
    "kvm_coalesced_mmio_ring": 8,
    "kvm_run": 2352,
    "kvm_sync_regs": 520,
    "kvm_signal_mask": 4,
    "kvm_guest_debug": 72,
    "kvm_irq_level": 8,
    "kvm_msi": 32,
    "kvm_irq_routing_entry": 48,
    "kvm_irq_routing": 8,
    "kvm_pit_config": 64,
    "kvm_one_reg": 16,
    "kvm_enable_cap": 104,
    "kvm_dirty_log": 16,
    "kvm_clock_data": 48,
    "kvm_lapic_state": 1024,
    "kvm_translation": 24,
    "kvm_pit_state2": 112,
    "kvm_irqchip": 520,
    "kvm_debug_exit_arch": 32,
    "kvm_create_device": 12,
    "kvm_reg_list": 8,
}

#: (struct, dotted field) -> byte offset, for the fields whose place matters most.
FIELD_OFFSETS: dict[tuple[str, str], int] = {
    ("kvm_run", "exit_reason"): 8,
    ("kvm_run", "ready_for_interrupt_injection"): 12,
    ("kvm_run", "if_flag"): 13,
    ("kvm_run", "cr8"): 16,
    ("kvm_run", "apic_base"): 24,
    ("kvm_run", "io"): 32,
    ("kvm_run", "kvm_valid_regs"): 288,
    ("kvm_run", "kvm_dirty_regs"): 296,
    ("kvm_run", "s"): 304,
    ("kvm_sregs", "gdt"): 192,
    ("kvm_sregs", "cr0"): 224,
    ("kvm_sregs", "efer"): 264,
    ("kvm_sregs", "interrupt_bitmap"): 280,
    ("kvm_fpu", "xmm"): 152,
    ("kvm_fpu", "mxcsr"): 408,
    ("kvm_vcpu_events", "sipi_vector"): 16,
    ("kvm_vcpu_events", "flags"): 20,
    ("kvm_vcpu_events", "exception_payload"): 56,
    ("kvm_xcrs", "xcrs"): 8,
    ("kvm_debugregs", "dr7"): 40,
}


def _offset(struct_name: str, field: str) -> int:
    return int(getattr(globals()[struct_name], field).offset)


def check_layout() -> None:
    """Raise ImportError if any structure disagrees with the kernel's layout."""
    for name, size in STRUCT_SIZES.items():
        got = sizeof(globals()[name])
        if got != size:
            raise ImportError(f"kvmcpu.uapi: sizeof({name}) is {got}, the kernel's is {size}")
    for (name, field), off in FIELD_OFFSETS.items():
        got = _offset(name, field)
        if got != off:
            raise ImportError(f"kvmcpu.uapi: offsetof({name}, {field}) is {got}, the kernel's is {off}")


check_layout()
