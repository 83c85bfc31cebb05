"""What every backend must do alike (run with the ``backend`` fixture: mock and kvm).

Only documented KVM semantics are checked here; host-specific behaviour (this
host's emulator, the MXCSR quirk, batching of string I/O ...) is in tests/hw.
"""

from __future__ import annotations

import errno

import pytest

from guests import (
    IN_VALUE,
    drive_io_program,
    io_sequence,
    setup_long,
    setup_real,
)
from kvmcpu import uapi
from kvmcpu.backends import HltExit, IntrExit, IoExit, MmioExit
from kvmcpu.backends.base import Backend
from kvmcpu.errors import ClosedError, KvmIoctlError
from kvmcpu.hostmem import HostMemory
from kvmcpu.uapi import Cap


def test_api_version_and_capabilities_are_ints(backend: Backend) -> None:
    assert backend.api_version() == uapi.KVM_API_VERSION
    for cap in (Cap.USER_MEMORY, Cap.IMMEDIATE_EXIT, Cap.NR_VCPUS, Cap.COALESCED_MMIO,
                Cap.READONLY_MEM, Cap.IRQCHIP, Cap.XSAVE2):
        value = backend.check_extension(cap)
        assert isinstance(value, int) and value >= 0
    assert backend.check_extension(Cap.USER_MEMORY) > 0
    assert backend.check_extension(Cap.IMMEDIATE_EXIT) > 0
    with backend.create_vm() as vm:
        assert isinstance(vm.check_extension(Cap.USER_MEMORY), int)
    assert backend.vcpu_mmap_size() >= uapi.sizeof(uapi.kvm_run)
    assert backend.describe()["backend"] == backend.name


def test_overlapping_slot_is_eexist(backend: Backend) -> None:
    with backend.create_vm() as vm, HostMemory(0x2000) as mem:
        vm.add_ram(0, 0x10000)
        with pytest.raises(KvmIoctlError) as info:
            vm.set_user_memory_region(1, 0x4000, mem)
        assert info.value.errno == errno.EEXIST
        assert "KVM_SET_USER_MEMORY_REGION" in str(info.value)


@pytest.mark.parametrize("gpa,size", [(0x800, 0x1000), (0x1000, 0x800)])
def test_misaligned_slot_is_einval(backend: Backend, gpa: int, size: int) -> None:
    with backend.create_vm() as vm, HostMemory(0x2000) as mem:
        with pytest.raises(KvmIoctlError) as info:
            vm.set_user_memory_region(0, gpa, mem, size=size)
        assert info.value.errno == errno.EINVAL


def test_bad_arguments_raise_before_any_call(backend: Backend) -> None:
    with backend.create_vm() as vm:
        with pytest.raises(ValueError):
            vm.set_user_memory_region(-1, 0, None)
        with pytest.raises(TypeError):
            vm.set_user_memory_region(0, 0, b"\0" * 4096)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            vm.create_vcpu(-1)


def test_closed_objects(backend: Backend) -> None:
    vm = backend.create_vm()
    vcpu = vm.create_vcpu(0)
    vcpu.close()
    vcpu.close()
    assert vcpu.closed
    with pytest.raises(ClosedError):
        vcpu.get_regs()
    with pytest.raises(ClosedError):
        vcpu.run()
    vm.close()
    vm.close()
    with pytest.raises(ClosedError):
        vm.create_vcpu(1)
    with pytest.raises(ClosedError):
        vm.add_ram(0, 0x1000)


def test_dirty_log_without_flag_is_enoent(backend: Backend) -> None:
    with backend.create_vm() as vm:
        vm.add_ram(0, 0x10000)
        with pytest.raises(KvmIoctlError) as info:
            vm.get_dirty_log(0)
        assert info.value.errno == errno.ENOENT


def test_regs_round_trip(backend: Backend) -> None:
    with backend.create_vm() as vm:
        vm.add_ram(0, 0x10000)
        vcpu = vm.create_vcpu(0)
        regs = uapi.kvm_regs()
        regs.rax, regs.rbx, regs.r15, regs.rip, regs.rflags = 1, 2, 3, 0x1000, 0x2
        vcpu.set_regs(regs)
        back = vcpu.get_regs()
        assert (back.rax, back.rbx, back.r15, back.rip, back.rflags) == (1, 2, 3, 0x1000, 0x2)


def test_real_mode_exit_sequence(backend: Backend) -> None:
    with backend.create_vm() as vm:
        _, vcpu = setup_real(vm, "io_real")
        assert drive_io_program(vcpu) == io_sequence("hlt")


def test_long_mode_cpl0_exit_sequence(backend: Backend) -> None:
    with backend.create_vm() as vm:
        _, vcpu = setup_long(vm, cpl=0)
        assert drive_io_program(vcpu) == io_sequence("hlt")


def test_in_and_mmio_read_complete_through_exit_data(backend: Backend) -> None:
    with backend.create_vm() as vm:
        _, vcpu = setup_real(vm, "io_real")
        for _ in range(3):
            vcpu.run()
        ex = vcpu.run()
        assert isinstance(ex, IoExit) and not ex.is_write and len(ex.data) == 1
        ex.data[:] = b"\x99"
        ex = vcpu.run()
        assert isinstance(ex, IoExit) and bytes(ex.data) == b"\x99"
        assert (vcpu.get_regs().rax & 0xFF) == 0x99
        ex = vcpu.run()
        assert isinstance(ex, MmioExit) and ex.is_write
        ex = vcpu.run()
        assert isinstance(ex, MmioExit) and not ex.is_write and len(ex.data) == 4
        ex.data[:] = b"\x10\x20\x30\x40"
        ex = vcpu.run()
        assert isinstance(ex, IoExit) and bytes(ex.data) == b"\x10\x20\x30\x40"
        assert vcpu.get_regs().rax & 0xFFFFFFFF == 0x40302010
        assert isinstance(vcpu.run(), HltExit)


def test_immediate_exit(backend: Backend) -> None:
    with backend.create_vm() as vm:
        _, vcpu = setup_real(vm, "io_real")
        vcpu.immediate_exit = True
        ex = vcpu.run()
        assert isinstance(ex, IntrExit) and ex.reason == uapi.ExitReason.INTR
        assert vcpu.get_regs().rip == 0x1000
        vcpu.immediate_exit = False
        ex = vcpu.run()
        assert isinstance(ex, IoExit) and bytes(ex.data) == b"4"


def test_kick_before_run(backend: Backend) -> None:
    with backend.create_vm() as vm:
        _, vcpu = setup_real(vm, "io_real")
        vcpu.kick()
        assert isinstance(vcpu.run(), IntrExit)
        vcpu.immediate_exit = False
        ex = vcpu.run()
        assert isinstance(ex, IoExit) and ex.port == 0x3F8


def test_in_value_constant_is_one_byte() -> None:
    assert len(IN_VALUE) == 1
