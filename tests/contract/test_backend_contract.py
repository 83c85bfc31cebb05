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


# -- arguments are checked in the contract layer, alike on both backends ------------------------
class _NoSyscall:
    """Fails the test if the backend reaches the kernel (or the mock's slot code)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, vm: object) -> None:
        from kvmcpu import _ioctl

        self.calls: list = []
        for name in ("ioctl", "ioctl_int"):
            monkeypatch.setattr(_ioctl, name, self._record(name))
        monkeypatch.setattr(vm, "_set_user_memory_region", self._record("set_region"))

    def _record(self, name: str) -> object:
        def call(*args: object, **kwargs: object) -> int:
            self.calls.append(name)
            raise AssertionError(f"{name} reached with bad arguments")

        return call


@pytest.mark.parametrize("gpa,size,error", [
    (-0x1000, 0x1000, ValueError),             # a negative address
    (1 << 64, 0x1000, ValueError),             # past the 64-bit space (would wrap to 0)
    ((1 << 64) - 0x1000, 0x2000, ValueError),  # a range that wraps
    ("0", 0x1000, TypeError),
    (0, "4096", TypeError),
    (0, -0x1000, ValueError),
])
def test_add_ram_refuses_bad_ranges_before_any_call(backend: Backend, monkeypatch:
                                                    pytest.MonkeyPatch, gpa: object,
                                                    size: object, error: type) -> None:
    with backend.create_vm() as vm:
        guard = _NoSyscall(monkeypatch, vm)
        with pytest.raises(error):
            vm.add_ram(gpa, size)  # type: ignore[arg-type]
        with HostMemory(0x1000) as mem, pytest.raises(ValueError, match="guest_phys_addr"):
            vm.set_user_memory_region(0, -0x1000, mem)
        monkeypatch.undo()
        assert guard.calls == [] and vm.slots == {}


@pytest.mark.parametrize("bad", [None, {}, b"\0" * 144, uapi.kvm_sregs()],
                         ids=["None", "dict", "bytes", "kvm_sregs"])
def test_setters_refuse_anything_but_their_struct(backend: Backend,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  bad: object) -> None:
    with backend.create_vm() as vm:
        vm.add_ram(0, 0x10000)
        vcpu = vm.create_vcpu(0)
        before = bytes(vcpu.get_regs())
        guard = _NoSyscall(monkeypatch, vm)
        with pytest.raises(TypeError, match=r"set_regs: regs must be a kvmcpu\.uapi\.kvm_regs"):
            vcpu.set_regs(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="set_sregs: sregs"):
            vcpu.set_sregs(uapi.kvm_regs())  # type: ignore[arg-type]
        for setter in (vcpu.set_fpu, vcpu.set_xsave, vcpu.set_xcrs, vcpu.set_vcpu_events,
                       vcpu.set_debugregs, vcpu.set_lapic, vm.set_irqchip, vm.set_pit2,
                       vm.set_clock):
            with pytest.raises(TypeError, match=setter.__name__):
                setter(None)  # type: ignore[operator]
        with pytest.raises(TypeError, match="set_cpuid2"):
            vcpu.set_cpuid2([None])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="MSR 0x10"):
            vcpu.set_msrs({0x10: 1 << 64})
        with pytest.raises(ValueError, match="MSR index"):
            vcpu.set_msrs([(1 << 32, 0)])
        with pytest.raises(TypeError, match="set_msrs"):
            vcpu.set_msrs(5)  # type: ignore[arg-type]
        monkeypatch.undo()
        assert guard.calls == []
        assert bytes(vcpu.get_regs()) == before


def test_a_too_wide_field_value_is_truncated_alike(backend: Backend) -> None:
    # Documented (backends/base.py): uapi structures are C structures; a value
    # too wide for a field keeps its low bits before any backend sees it.
    with backend.create_vm() as vm:
        vm.add_ram(0, 0x10000)
        vcpu = vm.create_vcpu(0)
        regs = vcpu.get_regs()
        regs.rip = 2**70 + 0x1234
        vcpu.set_regs(regs)
        assert vcpu.get_regs().rip == 0x1234


def test_closing_the_backend_closes_its_vms_and_vcpus(backend_name: str) -> None:
    from kvmcpu.backends import get_backend

    b = get_backend(backend_name)
    vm = b.create_vm()
    ram, vcpu = setup_real(vm, "io_real")
    b.close()
    assert vm.closed and vcpu.closed and ram.closed
    for call in (vcpu.run, vcpu.get_regs, lambda: vcpu.set_regs(uapi.kvm_regs()),
                 lambda: vm.add_ram(0x100000, 0x1000), lambda: vm.create_vcpu(1),
                 b.create_vm, lambda: b.check_extension(Cap.USER_MEMORY)):
        with pytest.raises(ClosedError):
            call()


def test_ram_indexes_like_a_bytearray(backend: Backend) -> None:
    with backend.create_vm() as vm:
        ram = vm.add_ram(0, 0x1000)
        ram[0] = 0x07
        ram[0xFFF] = 0xFE
        ram[1:3] = b"\x01\x02"
        assert (ram[0], ram[-1], ram[-0x1000]) == (0x07, 0xFE, 0x07)
        assert isinstance(ram[0], int)
        assert ram[0:3] == b"\x07\x01\x02" and ram[-2:] == b"\x00\xfe"
        for index in (0x1000, -0x1001):
            with pytest.raises(IndexError):
                ram[index]
        with pytest.raises(TypeError):
            ram["0"]  # type: ignore[call-overload]
        with pytest.raises(ValueError):
            ram[0] = 256
        assert vm.read_guest(0, 3) == b"\x07\x01\x02"


def test_run_clock_is_the_mock_budget_and_not_available_on_kvm(backend: Backend) -> None:
    with backend.create_vm() as vm:
        _, vcpu = setup_real(vm, "spin")
        clock = vcpu.run_clock()
        # the backend answers the same question before any vCPU exists
        assert backend.has_run_clock() is (clock is not None)
        if backend.name == "kvm":
            assert clock is None  # time on KVM is the host's: no exact clock
            return
        assert clock is not None
        clock.set_budget(25)
        assert type(vcpu.run()).__name__ == "IntrExit"
        assert clock.instructions_retired == clock.cycles == 25
        clock.set_budget(None)
