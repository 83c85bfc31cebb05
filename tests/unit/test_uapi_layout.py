"""uapi's structures, ioctl numbers and constants against the kernel's.

The first tests check the table in ``uapi.STRUCT_SIZES``/``FIELD_OFFSETS``
against the ctypes types (the Python counterpart of kvm-bindings'
compile-time asserts). The last one compiles a C program against
``<linux/kvm.h>`` (when a compiler and the header are present) and compares
every size, key offset, ioctl number and KVM_EXIT_*/KVM_CAP_* constant.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Tuple

import pytest

from kvmcpu import uapi
from kvmcpu.uapi import Cap, ExitReason

KVM_H = Path("/usr/include/linux/kvm.h")


@pytest.mark.parametrize("name,size", sorted(uapi.STRUCT_SIZES.items()))
def test_struct_size(name: str, size: int) -> None:
    assert ctypes.sizeof(getattr(uapi, name)) == size


@pytest.mark.parametrize(
    "name,field,offset", sorted((n, f, o) for (n, f), o in uapi.FIELD_OFFSETS.items())
)
def test_field_offset(name: str, field: str, offset: int) -> None:
    assert getattr(getattr(uapi, name), field).offset == offset


def test_every_ioctl_is_named_once() -> None:
    names = list(uapi.IOCTL_NAMES.values())
    assert len(names) == len(set(names))
    for number, name in uapi.IOCTL_NAMES.items():
        # KVM_IRQ_LINE_STATUS and KVM_REGISTER_COALESCED_MMIO share nr 0x67 but
        # differ in size/direction; every named number must be its own.
        assert getattr(uapi, name) == number
        assert (number >> 8) & 0xFF == uapi.KVMIO


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


@pytest.mark.skipif(not KVM_H.exists(), reason="no <linux/kvm.h> (linux-libc-dev)")
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc)")
def test_against_compiled_header(tmp_path: Path) -> None:
    source, expected = _c_program()
    (tmp_path / "layout.c").write_text(source)
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-o", str(exe), str(tmp_path / "layout.c")], check=True)
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
