"""Parameters, the Kvm capability probe, KvmVM's memory slots and delayed startup,
and the CPU's lifecycle rules."""

from __future__ import annotations

import errno
from typing import Any, Callable

import pytest
from cpu_rig import CpuRig

from kvmcpu.backends import get_backend
from kvmcpu.backends.base import Backend
from kvmcpu.cpu.kvm import BaseKvmCPUParams, Kvm, KvmVM, X86KvmCPU
from kvmcpu.errors import ConfigError, KvmCpuError, KvmIoctlError, SimulationError
from kvmcpu.hostmem import HostMemory
from kvmcpu.sim.simobject import Root
from kvmcpu.uapi import Cap

BOOL_CAPS = {
    "capUserMemory": Cap.USER_MEMORY, "capSetTSSAddress": Cap.SET_TSS_ADDR,
    "capExtendedCPUID": Cap.EXT_CPUID, "capUserNMI": Cap.USER_NMI,
    "capCoalescedPIO": Cap.COALESCED_PIO, "capOneReg": Cap.ONE_REG,
    "capIRQChip": Cap.IRQCHIP, "capPIT2": Cap.PIT2, "capVCPUEvents": Cap.VCPU_EVENTS,
    "capDebugRegs": Cap.DEBUGREGS, "capXCRs": Cap.XCRS, "capXSave": Cap.XSAVE,
    "capImmediateExit": Cap.IMMEDIATE_EXIT, "capExitHypercall": Cap.EXIT_HYPERCALL,
}


# ---------------------------------------------------------------------------- params
@pytest.mark.parametrize("name,value", [
    ("hostFreq", 0), ("hostFreq", -1e9), ("hostFreq", "fast"), ("hostFactor", 0.0),
    ("quantum", -1), ("cpu_id", -2), ("minQuantumNs", -1), ("usePerf", 1),
])
def test_bad_parameters_are_config_errors_naming_them(make_rig: Callable[..., CpuRig],
                                                      name: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"BaseKvmCPUParams\.{name}"):
        make_rig("mock", "spin", **{name: value})


def test_parameters_have_descriptions_and_defaults() -> None:
    rows = {name: (default, desc) for name, _, default, desc in BaseKvmCPUParams.describe()}
    assert rows["hostFreq"][0] == 2e9 and "frequency" in rows["hostFreq"][1]
    assert rows["quantum"][0] == 0
    assert rows["useCoalescedMMIO"][0] is False
    assert all(desc for _, desc in rows.values())
    assert BaseKvmCPUParams(hostFreq=3).hostFreq == 3.0  # ints widen to float


def test_unknown_parameter_is_a_config_error(make_rig: Callable[..., CpuRig]) -> None:
    with pytest.raises(ConfigError, match="hostFrequency"):
        make_rig("mock", "spin", hostFrequency=1e9)


# ---------------------------------------------------------------------- capabilities
def test_capability_probe_agrees_with_check_extension(backend: Backend) -> None:
    with backend.create_vm() as vm:
        kvm = Kvm(backend, vm)
        for method, cap in BOOL_CAPS.items():
            answer = getattr(kvm, method)()
            assert isinstance(answer, bool), method
            assert answer == (vm.check_extension(cap) != 0), method
        ring = kvm.capCoalescedMMIO()
        assert isinstance(ring, int) and ring == vm.check_extension(Cap.COALESCED_MMIO)
        slots = kvm.capNumMemSlots()
        assert isinstance(slots, int) and slots == vm.check_extension(Cap.NR_MEMSLOTS)
        assert kvm.check_extension(Cap.NR_VCPUS) == vm.check_extension(Cap.NR_VCPUS)
        assert kvm.checkExtension(int(Cap.USER_MEMORY)) == 1
        assert [e.function for e in kvm.getSupportedCPUID()] == \
            [e.function for e in backend.get_supported_cpuid()]
        assert kvm.getSupportedMSRs() == backend.get_msr_index_list()


def test_capability_answers_are_cached(mocker: Any) -> None:
    with get_backend("mock") as backend, backend.create_vm() as vm:
        spy = mocker.spy(vm, "check_extension")
        kvm = Kvm(backend, vm)
        assert kvm.capXSave() and kvm.capXSave()
        assert spy.call_count == 1
        cpuid = mocker.spy(backend, "get_supported_cpuid")
        kvm.getSupportedCPUID()
        kvm.getSupportedCPUID()
        assert cpuid.call_count == 1


def test_memory_slot_count_defaults_to_32_when_unreported(mocker: Any) -> None:
    with get_backend("mock") as backend:
        kvm = Kvm(backend)
        mocker.patch.object(backend, "check_extension", return_value=0)
        assert kvm.capNumMemSlots() == 32


# ------------------------------------------------------------------------- KvmVM
@pytest.fixture
def vm(mocker: Any) -> Any:
    """A KvmVM on the mock whose backend reports only 3 memory slots."""
    root = Root()
    kvm_vm = KvmVM("kvm_vm", root, backend="mock")
    original = kvm_vm.vm.check_extension

    def check(cap: Any) -> int:
        return 3 if int(cap) == Cap.NR_MEMSLOTS else int(original(cap))

    mocker.patch.object(kvm_vm.vm, "check_extension", side_effect=check)
    yield kvm_vm
    kvm_vm.close()


def test_slots_are_reused_lowest_first_then_run_out(vm: KvmVM) -> None:
    assert [vm.alloc_memory_slot() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(KvmCpuError, match="out of KVM memory slots: all 3 are in use"):
        vm.alloc_memory_slot()
    with HostMemory(0x1000) as a, HostMemory(0x1000) as b:
        vm.setup_memory_slot(2, 0x2000, a)
        vm.setup_memory_slot(1, 0x1000, b)
        vm.free_memory_slot(2)
        vm.free_memory_slot(1)
        assert 1 not in vm.vm.slots and 2 not in vm.vm.slots
        assert vm.alloc_memory_slot() == 1
        assert vm.allocMemorySlot() == 2
    with pytest.raises(KvmCpuError):
        vm.alloc_memory_slot()
    with pytest.raises(ValueError, match="not allocated"):
        vm.free_memory_slot(7)


def test_freeing_a_free_slot_is_an_error(vm: KvmVM) -> None:
    slot = vm.alloc_memory_slot()
    vm.free_memory_slot(slot)
    with pytest.raises(ValueError, match=f"memory slot {slot} is not allocated"):
        vm.free_memory_slot(slot)


def test_ram_is_mapped_at_delayed_startup(make_rig: Callable[..., CpuRig]) -> None:
    rig = make_rig("mock", "spin")
    assert rig.vm.vm.slots == {}  # declared, not mapped
    rig.start()
    (slot,) = rig.vm.vm.slots.values()
    assert (slot.slot, slot.guest_phys_addr, slot.memory_size) == (0, 0, 0x10000)
    with HostMemory(0x2000) as extra:
        rig.vm.add_ram(0x100000, extra)  # after startup: mapped at once
        assert rig.vm.vm.slots[1].guest_phys_addr == 0x100000
        rig.vm.free_memory_slot(1)


def test_irqchip_without_backend_support_is_a_config_error() -> None:
    root = Root()
    vm = KvmVM("kvm_vm", root, backend="mock", irqchip=True)
    try:
        with pytest.raises(ConfigError, match="KVM_CAP_IRQCHIP"):
            vm.cpu_startup()
    finally:
        vm.close()


@pytest.mark.kvm
def test_irqchip_and_pit_on_kvm() -> None:
    root = Root()
    vm = KvmVM("kvm_vm", root, backend="kvm", irqchip=True, pit=True)
    try:
        vm.cpu_startup()
        assert vm.has_irqchip and vm.vm.has_irqchip
        vm.set_irq_line(4, True)
        vm.set_irq_line(4, False)
    finally:
        vm.close()


def test_create_device_without_support_is_enotty(vm: KvmVM, mocker: Any) -> None:
    if hasattr(vm.vm, "create_device"):
        mocker.patch.object(vm.vm, "create_device", side_effect=AttributeError, create=True)
        delattr(vm.vm, "create_device")
    with pytest.raises(KvmIoctlError) as info:
        vm.create_device(1)
    assert info.value.errno == errno.ENOTTY


def test_vcpu_ids(make_rig: Callable[..., CpuRig]) -> None:
    rig = make_rig("mock", "spin")
    assert rig.cpu.vcpu_id == 0
    second = X86KvmCPU("cpu1", rig.root, vm=rig.vm, cpu_id=5)
    assert second.vcpu_id == 5
    assert rig.vm.alloc_vcpu_id() == 1


def test_vm_owns_a_backend_opened_by_name() -> None:
    root = Root()
    vm = KvmVM("kvm_vm", root, backend="mock")
    backend = vm.backend
    vm.close()
    assert backend.closed
    vm.close()  # idempotent
    with get_backend("mock") as b:
        vm = KvmVM("kvm_vm2", root, backend=b)
        vm.close()
        assert not b.closed


# --------------------------------------------------------------------- CPU lifecycle
def test_cpu_lifecycle_rules(make_rig: Callable[..., CpuRig]) -> None:
    rig = make_rig("mock", "spin")
    with pytest.raises(SimulationError, match="before startup"):
        rig.cpu.kvmRun(1000)
    with pytest.raises(SimulationError, match="does not exist yet"):
        rig.cpu.getRegisters()
    with pytest.raises(SimulationError, match="interrupt before startup"):
        rig.cpu.kvmInterrupt(0x20)
    rig.start()
    with pytest.raises(SimulationError, match="activateContext while Running"):
        rig.cpu.activateContext()
    with pytest.raises(ValueError, match="one thread"):
        rig.cpu.getContext(1)
    assert rig.cpu.getRegisters().rip == 0xFFF0  # the TC is pushed lazily, at the first tick
    rig.cpu.syncKvmState()
    assert rig.cpu.getRegisters().rip == 0x1000
    assert rig.cpu.getInstPort() is None and rig.cpu.getDataPort() is rig.mmio
    assert "handleKvmExitIO" in rig.cpu.exit_kinds()
    rig.cpu.close()
    rig.cpu.close()
    assert rig.cpu.vcpu is None and rig.cpu.run_timer is None


def test_dirty_flags(make_rig: Callable[..., CpuRig]) -> None:
    rig = make_rig("mock", "spin").start()
    cpu = rig.cpu
    assert cpu.threadContextDirty  # pushed at the first tick
    rig.simulate(5_000)
    assert not cpu.threadContextDirty and cpu.kvmStateDirty
    tc = cpu.getContext()
    assert not cpu.kvmStateDirty
    tc.rax = 0x1234
    cpu.setThreadContext(tc)
    assert cpu.threadContextDirty
    cpu.kvmStateDirty = True
    with pytest.raises(SimulationError, match="both the TC and the vCPU are dirty"):
        cpu.syncKvmState()
    cpu.kvmStateDirty = False
    cpu.syncKvmState()
    assert rig.vcpu.get_regs().rax == 0x1234
