"""uapi's structures, ioctl numbers and constants against the kernel's.

The first tests compare the ctypes types with sizes, offsets and ioctl numbers
the kernel header gives (literal values printed by a C program compiled against
``<linux/kvm.h>``), so they run without a compiler. The last one compiles such a
program on the spot and compares every size, key offset, ioctl number and
KVM_EXIT_*/KVM_CAP_* constant uapi knows: it runs wherever a C compiler and the
header exist, and its skip says which is missing.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from kvmcpu import uapi
from kvmcpu.uapi import Cap, ExitReason

KVM_H = Path("/usr/include/linux/kvm.h")


#: Sizes from <linux/kvm.h> on x86-64 (printed by a C program compiled against the
#: header, linux-libc-dev 6.1): the ABI itself, independent of uapi's own tables.
KERNEL_SIZES = [
    ("kvm_regs", 144),
    ("kvm_sregs", 312),
    ("kvm_fpu", 416),
    ("kvm_run", 2352),
    ("kvm_userspace_memory_region", 32),
    ("kvm_cpuid_entry2", 40),
    ("kvm_lapic_state", 1024),
    ("kvm_xsave", 4096),
    ("kvm_vcpu_events", 64),
    ("kvm_debugregs", 128),
    ("kvm_msr_entry", 16),
    ("kvm_segment", 24),
    ("kvm_dtable", 16),
    ("kvm_xcrs", 392),
    ("kvm_mp_state", 4),
    ("kvm_guest_debug", 72),
    ("kvm_interrupt", 4),
    ("kvm_pit_state2", 112),
    ("kvm_irqchip", 520),
    ("kvm_coalesced_mmio_zone", 16),
    ("kvm_clock_data", 48),
]

#: Offsets from the same C program.
KERNEL_OFFSETS = [
    ("kvm_run", "exit_reason", 8),
    ("kvm_run", "ready_for_interrupt_injection", 12),
    ("kvm_run", "if_flag", 13),
    ("kvm_run", "cr8", 16),
    ("kvm_run", "apic_base", 24),
    ("kvm_run", "io", 32),
    ("kvm_run", "mmio", 32),
    ("kvm_run", "s", 304),
    ("kvm_run", "immediate_exit", 1),
    ("kvm_run", "request_interrupt_window", 0),
    ("kvm_sregs", "cr0", 224),
    ("kvm_sregs", "efer", 264),
    ("kvm_sregs", "apic_base", 272),
    ("kvm_sregs", "interrupt_bitmap", 280),
    ("kvm_regs", "rip", 128),
    ("kvm_regs", "rflags", 136),
    ("kvm_fpu", "mxcsr", 408),
    ("kvm_cpuid_entry2", "eax", 12),
    ("kvm_userspace_memory_region", "userspace_addr", 24),
    ("kvm_vcpu_events", "nmi", 12),
    ("kvm_vcpu_events", "smi", 24),
]

#: ioctl numbers from the same C program (the kernel's _IO/_IOR/_IOW/_IOWR expansion).
KERNEL_IOCTLS = [
    ("KVM_RUN", 0xAE80),
    ("KVM_CREATE_VM", 0xAE01),
    ("KVM_CHECK_EXTENSION", 0xAE03),
    ("KVM_GET_VCPU_MMAP_SIZE", 0xAE04),
    ("KVM_GET_SUPPORTED_CPUID", 0xC008AE05),
    ("KVM_CREATE_VCPU", 0xAE41),
    ("KVM_SET_USER_MEMORY_REGION", 0x4020AE46),
    ("KVM_GET_REGS", 0x8090AE81),
    ("KVM_SET_REGS", 0x4090AE82),
    ("KVM_GET_SREGS", 0x8138AE83),
    ("KVM_SET_SREGS", 0x4138AE84),
    ("KVM_GET_MSRS", 0xC008AE88),
    ("KVM_SET_MSRS", 0x4008AE89),
    ("KVM_INTERRUPT", 0x4004AE86),
    ("KVM_NMI", 0xAE9A),
    ("KVM_SET_CPUID2", 0x4008AE90),
    ("KVM_GET_LAPIC", 0x8400AE8E),
    ("KVM_SET_SIGNAL_MASK", 0x4004AE8B),
    ("KVM_GET_VCPU_EVENTS", 0x8040AE9F),
    ("KVM_SET_GUEST_DEBUG", 0x4048AE9B),
    ("KVM_IRQ_LINE_STATUS", 0xC008AE67),
    ("KVM_REGISTER_COALESCED_MMIO", 0x4010AE67),
    ("KVM_GET_XSAVE", 0x9000AEA4),
    ("KVM_ENABLE_CAP", 0x4068AEA3),
]


@pytest.mark.parametrize("name,size", KERNEL_SIZES)
def test_struct_size(name: str, size: int) -> None:
    assert ctypes.sizeof(getattr(uapi, name)) == size


@pytest.mark.parametrize("name,field,offset", KERNEL_OFFSETS)
def test_field_offset(name: str, field: str, offset: int) -> None:
    assert getattr(getattr(uapi, name), field).offset == offset


@pytest.mark.parametrize("name,number", KERNEL_IOCTLS)
def test_ioctl_number(name: str, number: int) -> None:
    """uapi derives the numbers from _IOR(...) with ctypes sizes: compare with the kernel's."""
    assert getattr(uapi, name) == number
    assert uapi.IOCTL_NAMES[number] == name


def test_every_ioctl_is_named_once() -> None:
    """Different ioctls never share a number (KVM_IRQ_LINE_STATUS and
    KVM_REGISTER_COALESCED_MMIO share nr 0x67 but differ in size and direction)."""
    numbers = [getattr(uapi, n) for n in dir(uapi) if n.startswith("KVM_") and
               n in uapi.IOCTL_NAMES.values()]
    assert len(numbers) == len(set(numbers)) == len(uapi.IOCTL_NAMES)
    for number in uapi.IOCTL_NAMES:
        assert (number >> 8) & 0xFF == 0xAE  # KVMIO


def test_run_union_members_fit() -> None:
    union = uapi.kvm_run.u
    assert union.offset == 32 and union.size == 256
    assert uapi.kvm_run.s.offset == 304


def test_ioctl_directions() -> None:
    def direction(n: int) -> int:
        return n >> 30

    assert direction(uapi.KVM_RUN) == 0
    assert direction(uapi.KVM_GET_REGS) == 2  # _IOR
    assert direction(uapi.KVM_SET_REGS) == 1  # _IOW
    assert direction(uapi.KVM_GET_MSRS) == 3  # _IOWR
    assert (uapi.KVM_GET_REGS >> 16) & 0x3FFF == 144


def _c_program() -> Tuple[str, Dict[str, int]]:
    """C source printing NAME=value lines, and the Python values to compare."""
    expected: Dict[str, int] = {}
    lines = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        "#include <linux/kvm.h>",
        "int main(void) {",
    ]
    for name, size in uapi.STRUCT_SIZES.items():
        key = f"sizeof:{name}"
        expected[key] = size
        lines.append(f'    printf("%s=%zu\\n", "{key}", sizeof(struct {name}));')
    for (name, field), off in uapi.FIELD_OFFSETS.items():
        key = f"offsetof:{name}.{field}"
        expected[key] = off
        lines.append(f'    printf("%s=%zu\\n", "{key}", offsetof(struct {name}, {field}));')

    def constant(cname: str, value: int) -> None:
        expected[cname] = value
        lines.append(f"#ifdef {cname}")
        lines.append(f'    printf("%s=%llu\\n", "{cname}", (unsigned long long)({cname}));')
        lines.append("#endif")

    for number, name in uapi.IOCTL_NAMES.items():
        constant(name, number)
    for member in ExitReason:
        constant(f"KVM_EXIT_{member.name}", int(member))
    for cap in Cap:
        constant(f"KVM_CAP_{cap.name}", int(cap))
    for cname in (
        "KVM_API_VERSION", "KVMIO", "KVM_MEM_LOG_DIRTY_PAGES", "KVM_MEM_READONLY",
        "KVM_COALESCED_MMIO_PAGE_OFFSET", "KVM_PIO_PAGE_OFFSET", "KVM_EXIT_IO_IN",
        "KVM_EXIT_IO_OUT", "KVM_NR_INTERRUPTS", "KVM_MAX_XCRS", "KVM_GUESTDBG_ENABLE",
        "KVM_GUESTDBG_SINGLESTEP", "KVM_GUESTDBG_USE_SW_BP", "KVM_MP_STATE_RUNNABLE",
        "KVM_MP_STATE_HALTED", "KVM_INTERNAL_ERROR_EMULATION", "KVM_SYNC_X86_REGS",
        "KVM_SYNC_X86_SREGS", "KVM_SYNC_X86_EVENTS", "KVM_REG_X86", "KVM_REG_SIZE_U64",
        "KVM_IRQCHIP_IOAPIC", "KVM_VCPUEVENT_VALID_NMI_PENDING", "KVM_PIT_SPEAKER_DUMMY",
        "KVM_SYSTEM_EVENT_SHUTDOWN", "KVM_SYSTEM_EVENT_RESET", "KVM_X86_DISABLE_EXITS_HLT",
    ):
        constant(cname, getattr(uapi, cname))
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n", expected


def _compiler() -> Optional[str]:
    for cc in ("cc", "gcc", "clang"):
        path = shutil.which(cc)
        if path:
            return path
    return None


@pytest.mark.skipif(_compiler() is None,
                    reason="no C compiler (cc, gcc or clang): uapi is checked only against "
                           "the literal kernel values above")
def test_against_compiled_header(tmp_path: Path) -> None:
    if not KVM_H.exists():
        pytest.fail(f"a C compiler exists but {KVM_H} does not: install linux-libc-dev "
                    "(the compiler's libc headers normally pull it in)")
    source, expected = _c_program()
    (tmp_path / "layout.c").write_text(source)
    exe = tmp_path / "layout"
    subprocess.run([str(_compiler()), "-o", str(exe), str(tmp_path / "layout.c")], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    got = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        got[key] = int(value)
    mismatches = {k: (expected[k], v) for k, v in got.items() if expected[k] != v}
    assert not mismatches, f"python vs C: {mismatches}"
    # Every structure, offset and ioctl must have been checked (constants may be
    # missing from an older header, and are then skipped).
    for key in expected:
        if key.startswith(("sizeof:", "offsetof:")) or key in uapi.IOCTL_NAMES.values():
            if key == "KVM_GET_XSAVE2" and key not in got:
                continue  # headers older than Linux 5.17
            assert key in got, f"{key} was not compared"
