"""kvm_run filling for every exit kind, IN completion, scripted exits, budget, kick."""

from __future__ import annotations

import ctypes
import threading
import time

import pytest

from kvmcpu import uapi
from kvmcpu.backends import (
    DebugExit,
    ExceptionExit,
    FailEntryExit,
    HypercallExit,
    InternalErrorExit,
    IoExit,
    MmioExit,
    SystemEventExit,
    UnknownExit,
)
from kvmcpu.uapi import Cap, ExitReason


def test_run_page_layout(m) -> None:  # type: ignore[no-untyped-def]
    v = m.vcpu
    assert len(v.run_page) == m.backend.vcpu_mmap_size() == 3 * 4096
    assert ctypes.addressof(v.kvm_run) == ctypes.addressof(
        ctypes.c_char.from_buffer(v.run_page))  # kvm_run is at the start of the page
    m.real("mov dx, 0x3f8\nmov al, 'A'\nout dx, al\nin ax, dx\nmov [0x500], ax\nhlt")
    ex = m.run()
    assert isinstance(ex, IoExit) and ex.is_write and bytes(ex.data) == b"A"
    assert v.kvm_run.exit_reason == ExitReason.IO
    assert v.kvm_run.io.data_offset == 4096 * uapi.KVM_PIO_PAGE_OFFSET
    assert v.run_page[4096] == ord("A")
    ex = m.run()
    assert (ex.port, ex.size, ex.is_write, ex.count) == (0x3F8, 2, False, 1)
    rip = v.get_regs().rip
    ex.data[:] = b"\x34\x12"
    assert m.run().kind == "hlt"
    assert v.get_regs().rip > rip
    assert m.ram[0x500:0x502] == b"\x34\x12"
    assert v.get_regs().rax & 0xFFFF == 0x1234


def test_if_flag_and_ready_for_injection(m) -> None:  # type: ignore[no-untyped-def]
    m.real("sti\nnop\nout 0x80, al\ncli\nout 0x80, al\nhlt")
    ex = m.run()
    assert ex.kind == "io" and m.vcpu.if_flag and m.vcpu.ready_for_interrupt_injection
    ex = m.run()
    assert ex.kind == "io" and not m.vcpu.if_flag and not m.vcpu.ready_for_interrupt_injection


def test_scripted_exits(m) -> None:  # type: ignore[no-untyped-def]
    v = m.vcpu
    v.script_exit(ExitReason.FAIL_ENTRY, hardware_entry_failure_reason=0x80000021, cpu=1)
    v.script_exit(ExitReason.UNKNOWN, hardware_exit_reason=0x1234)
    v.script_exit(ExitReason.EXCEPTION, exception=6, error_code=0)
    v.script_exit(ExitReason.SYSTEM_EVENT, type=uapi.KVM_SYSTEM_EVENT_RESET, data=[7, 8])
    v.script_exit(ExitReason.INTERNAL_ERROR, suberror=3, data=[1, 2, 3])
    v.script_exit(ExitReason.INTERNAL_ERROR, insn_bytes=b"\x0f\x0b")
    v.script_exit(ExitReason.HYPERCALL, nr=12, args=[0x1000, 1, 2], longmode=1)
    v.script_exit(ExitReason.MMIO, phys_addr=0xFEE00000, data=b"\x01\x00\x00\x00",
                  is_write=True)
    v.script_exit(ExitReason.IO, port=0x64, size=1, is_write=False)
    v.script_exit(ExitReason.DEBUG, exception=1, pc=0x1234, dr6=0xFFFF4FF0, dr7=0x400)
    v.script_exit(ExitReason.SET_TPR)
    ex = v.run()
    assert isinstance(ex, FailEntryExit) and ex.hardware_entry_failure_reason == 0x80000021
    assert ex.cpu == 1
    ex = v.run()
    assert isinstance(ex, UnknownExit) and ex.hardware_exit_reason == 0x1234
    ex = v.run()
    assert isinstance(ex, ExceptionExit) and ex.exception == 6
    ex = v.run()
    assert isinstance(ex, SystemEventExit) and ex.type == 2 and ex.data == (7, 8)
    ex = v.run()
    assert isinstance(ex, InternalErrorExit) and ex.suberror == 3 and ex.data == (1, 2, 3)
    ex = v.run()
    assert isinstance(ex, InternalErrorExit) and ex.insn_bytes == b"\x0f\x0b"
    ex = v.run()
    assert isinstance(ex, HypercallExit) and ex.nr == 12 and ex.args[:3] == (0x1000, 1, 2)
    ex = v.run()
    assert isinstance(ex, MmioExit) and ex.is_write and bytes(ex.data) == b"\x01\0\0\0"
    ex = v.run()
    assert isinstance(ex, IoExit) and ex.port == 0x64 and not ex.is_write
    ex = v.run()
    assert isinstance(ex, DebugExit) and ex.pc == 0x1234 and ex.exception == 1
    ex = v.run()
    assert isinstance(ex, UnknownExit) and ex.reason == ExitReason.SET_TPR
    with pytest.raises(ValueError):
        v.script_exit(ExitReason.IO, bogus=1)
        v.run()


def test_unimplemented_instruction_is_internal_error(m) -> None:  # type: ignore[no-untyped-def]
    m.long("fld1\nhlt")
    ex = m.run()
    assert isinstance(ex, InternalErrorExit)
    assert ex.suberror == uapi.KVM_INTERNAL_ERROR_EMULATION
    assert ex.insn_bytes == b"\xd9\xe8"
    assert m.vcpu.kvm_run.emulation_failure.flags == \
        uapi.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
    assert m.regs().rip == 0x100000  # not executed


def test_engine_bug_becomes_internal_error(m, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def boom(*a):  # type: ignore[no-untyped-def]
        raise RuntimeError("bug")

    # generated code calls the helpers through its vendor profile's namespace (H)
    monkeypatch.setattr(m.backend.profile.helpers, "popcnt", boom)
    m.long("popcnt rax, rbx\nhlt")
    ex = m.run()
    assert ex.kind == "internal_error"


def test_budget_is_deterministic(m) -> None:  # type: ignore[no-untyped-def]
    src = """
        mov ecx, 1000
    l:  add rax, rcx
        rol rax, 3
        dec ecx
        jnz l
        hlt
    """
    m.long(src)
    v = m.vcpu
    v.set_budget(1234)
    ex = v.run()
    assert ex.kind == "intr" and v.budget == 0 and v.instructions_retired == 1234
    first = (v.get_regs().rax, v.get_regs().rcx, v.get_regs().rip)
    assert v.run().kind == "intr"  # stays exhausted until re-armed
    v.set_budget(None)
    assert v.run().kind == "hlt"
    assert v.instructions_retired == 1 + 4 * 1000 + 1
    m.vcpu.set_long_mode(0x100000, rsp=0x200000)
    v.use_decode_cache = False
    base = v.instructions_retired
    v.set_budget(1234)
    assert v.run().kind == "intr"
    assert v.instructions_retired - base == 1234
    assert (v.get_regs().rax, v.get_regs().rcx, v.get_regs().rip) == first


def test_immediate_exit_and_kick_from_thread(m) -> None:  # type: ignore[no-untyped-def]
    m.long("jmp $")
    v = m.vcpu
    v.immediate_exit = True
    retired = v.instructions_retired
    assert v.run().kind == "intr" and v.instructions_retired == retired
    v.immediate_exit = False
    t = threading.Timer(0.2, v.kick)
    t.start()
    t0 = time.monotonic()
    ex = v.run()
    t.join()
    assert ex.kind == "intr" and ex.reason == ExitReason.INTR
    assert time.monotonic() - t0 < 5
    assert v.instructions_retired > 100
    assert not v.immediate_exit  # the IntrExit a kick causes clears it again
    v.kick()  # not running: the next run returns at once, exactly once
    assert v.run().kind == "intr" and not v.immediate_exit


def test_hypercall_exit(m) -> None:  # type: ignore[no-untyped-def]
    src = """
        mov eax, 12
        mov ebx, 0x5000
        mov ecx, 2
        mov edx, 1
        vmmcall
        mov r12, rax
        mov eax, 1
        vmcall
        hlt
    """
    m.long(src)
    assert m.vm.check_extension(Cap.EXIT_HYPERCALL) == 1 << 12
    m.vm.enable_cap(Cap.EXIT_HYPERCALL, 1 << 12)
    ex = m.run()
    assert isinstance(ex, HypercallExit)
    assert (ex.nr, ex.args[:3], ex.longmode) == (12, (0x5000, 2, 1), 1)
    ex.ret = 0
    assert m.run().kind == "hlt"
    r = m.regs()
    assert r.r12 == 0 and r.rax == (-1000) & (2**64 - 1)  # unknown hypercall: -KVM_ENOSYS


def test_capabilities_and_refusals(m) -> None:  # type: ignore[no-untyped-def]
    import errno

    from kvmcpu.errors import KvmIoctlError

    b = m.backend
    assert b.check_extension(Cap.COALESCED_MMIO) == uapi.KVM_COALESCED_MMIO_PAGE_OFFSET
    assert b.check_extension(Cap.IRQCHIP) == 0 and b.check_extension(Cap.IMMEDIATE_EXIT) == 1
    for fn, code in [(m.vm.create_irqchip, errno.ENOTTY), (m.vm.create_pit2, errno.ENOTTY),
                     (lambda: m.vm.irq_line(4, 1), errno.ENXIO),
                     (m.vcpu.get_lapic, errno.EINVAL),
                     (lambda: m.vcpu.get_one_reg(0x2030000000000000), errno.EINVAL),
                     (lambda: m.vcpu.interrupt(256), errno.EINVAL),
                     (lambda: m.vm.enable_cap(Cap.IRQCHIP), errno.EINVAL)]:
        with pytest.raises(KvmIoctlError) as ei:
            fn()
        assert ei.value.errno == code
    m.vcpu.interrupt(0x20)
    with pytest.raises(KvmIoctlError) as ei:
        m.vcpu.interrupt(0x21)
    assert ei.value.errno == errno.EEXIST


def test_half_entry_completes_in_and_mmio_read() -> None:
    """A run() with immediate_exit finishes the pending IN / MMIO read first, as KVM
    does (complete_userspace_io runs before the immediate_exit check)."""
    from mockrig import Machine

    m = Machine(0x10000)
    try:
        _half_entry(m)
    finally:
        m.close()


def _half_entry(m) -> None:  # type: ignore[no-untyped-def]
    m.real("in al, 0x60\nmov bx, 0x2000\nmov ds, bx\nmov cx, [0x10]\nhlt")
    v = m.vcpu
    ex = m.run()
    assert ex.kind == "io" and not ex.is_write
    ex.data[:] = b"\x99"
    v.immediate_exit = True
    assert v.run().kind == "intr"
    r = v.get_regs()
    assert r.rax & 0xFF == 0x99 and r.rip == 0x1002
    v.immediate_exit = False
    ex = m.run()
    assert ex.kind == "mmio" and ex.phys_addr == 0x20010 and not ex.is_write
    ex.data[:2] = b"\x34\x12"
    v.immediate_exit = True
    assert v.run().kind == "intr"
    assert v.get_regs().rcx & 0xFFFF == 0x1234
    v.immediate_exit = False
    assert m.run().kind == "hlt"
