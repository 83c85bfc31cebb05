"""EmulationFallback on its own: state out of one vCPU, a bounded run on the mock, state back.

The vCPU the fallback serves is a mock vCPU here too (any backend's vCPU works:
only the contract's get_*/set_* are used on it), so these run without /dev/kvm.
The end-to-end tests on KVM are tests/differential/test_emulation_fallback.py.
"""

from __future__ import annotations

from typing import Iterator, List, Tuple

import pytest

from kvmcpu.backends import get_backend
from kvmcpu.backends.base import Vcpu
from kvmcpu.backends.exits import HltExit, InternalErrorExit, IoExit, MmioExit
from kvmcpu.cpu.kvm.fallback import EmulationFallback
from kvmcpu.hostmem import HostMemory

CODE = 0x1000
DATA = 0x3000
RAM = 0x100000
MMIO = 0x200000  # beyond the 1 MiB of RAM: unbacked


@pytest.fixture
def guest() -> Iterator[Tuple[Vcpu, HostMemory]]:
    backend = get_backend("mock")
    vm = backend.create_vm()
    ram = vm.add_ram(0, RAM)
    vcpu = vm.create_vcpu(0)
    vcpu.set_long_mode(CODE, rsp=0x8000, page_tables=0x40000)
    yield vcpu, ram
    backend.close()


def _load(vcpu: Vcpu, ram: HostMemory, code: bytes, **regs: int) -> None:
    ram[CODE:CODE + len(code)] = code
    r = vcpu.get_regs()
    for name, value in regs.items():
        setattr(r, name, value)
    vcpu.set_regs(r)


def _run(fb: EmulationFallback, vcpu: Vcpu, io_log: List[Tuple[int, bytes]],
         mmio_value: bytes = b"") -> object:
    def io(ex: IoExit) -> int:
        io_log.append((ex.port, bytes(ex.data)))
        return 7

    def mmio(ex: MmioExit) -> int:
        io_log.append((ex.phys_addr, bytes(ex.data[:ex.len])))
        if not ex.is_write:
            ex.data[:ex.len] = mmio_value[:ex.len]
        return 11

    return fb.run(vcpu, msrs=[0xC0000102], cpuid=[], use_xsave=False, io=io, mmio=mmio)


def test_one_instruction_runs_and_the_state_comes_back(guest: Tuple[Vcpu, HostMemory]) -> None:
    vcpu, ram = guest
    # popcnt rax, rbx ; mov [DATA], rax ; hlt
    code = (bytes.fromhex("f3480fb8c3") + bytes.fromhex("48890425")
            + DATA.to_bytes(4, "little") + b"\xf4")
    _load(vcpu, ram, code, rax=0, rbx=0x0123456789ABCDEF)
    fb = EmulationFallback([(0, ram, 0)])
    try:
        result = _run(fb, vcpu, [])
        assert result.instructions == 1 and result.stop is None and result.ticks == 0
        regs = vcpu.get_regs()
        assert regs.rax == 32 and regs.rip == CODE + 5
        assert ram[DATA] == 0  # the store after it did not run: the budget was one
        assert fb.active
    finally:
        fb.close()
    assert not fb.active


def test_a_bounded_run_shares_memory_and_sends_io_to_the_callbacks(
        guest: Tuple[Vcpu, HostMemory]) -> None:
    vcpu, ram = guest
    code = (bytes.fromhex("48890425") + DATA.to_bytes(4, "little")   # mov [DATA], rax
            + bytes.fromhex("e6e0")                                   # out 0xe0, al
            + bytes.fromhex("488b0425") + MMIO.to_bytes(4, "little")  # mov rax, [MMIO]
            + b"\xf4")                                                # hlt
    _load(vcpu, ram, code, rax=0x5A)
    log: List[Tuple[int, bytes]] = []
    fb = EmulationFallback([(0, ram, 0)], max_instructions=10)
    try:
        result = _run(fb, vcpu, log, mmio_value=(0x1122334455667788).to_bytes(8, "little"))
    finally:
        fb.close()
    assert ram[DATA] == 0x5A  # the mock wrote the VM's own buffer
    assert log == [(0xE0, b"\x5a"), (MMIO, bytes(8))]
    assert result.ticks == 7 + 11
    assert isinstance(result.stop, HltExit) and result.instructions == 4
    regs = vcpu.get_regs()
    assert regs.rax == 0x1122334455667788 and regs.rip == CODE + len(code)


def test_an_instruction_the_mock_cannot_run_leaves_the_state_alone(
        guest: Tuple[Vcpu, HostMemory]) -> None:
    vcpu, ram = guest
    _load(vcpu, ram, bytes.fromhex("d9e8"), rax=3)  # fld1: no x87 on the mock
    before = bytes(vcpu.get_regs())
    fb = EmulationFallback([(0, ram, 0)])
    try:
        result = _run(fb, vcpu, [])
    finally:
        fb.close()
    assert isinstance(result.stop, InternalErrorExit) and result.instructions == 0
    assert bytes(vcpu.get_regs()) == before


def test_msrs_it_changes_go_back_and_the_tsc_never(guest: Tuple[Vcpu, HostMemory]) -> None:
    vcpu, ram = guest
    # swapgs: exchanges GS.base and KERNEL_GS_BASE (0xC0000102)
    _load(vcpu, ram, bytes.fromhex("0f01f8"))
    vcpu.set_msrs([(0xC0000102, 0x1234000)])
    tsc = vcpu.get_msrs([0x10])[0x10]
    fb = EmulationFallback([(0, ram, 0)])
    try:
        _run(fb, vcpu, [])
    finally:
        fb.close()
    assert vcpu.get_sregs().gs.base == 0x1234000
    assert vcpu.get_msrs([0xC0000102])[0xC0000102] == 0
    assert vcpu.get_msrs([0x10])[0x10] == tsc  # the mock's clock did not move it


def test_max_instructions_is_checked() -> None:
    with pytest.raises(ValueError, match="max_instructions"):
        EmulationFallback([], max_instructions=0)


def test_the_cpu_hands_an_emulation_failure_to_the_fallback(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The CPU-level path on any host: the System's vCPU (a mock standing in for KVM)
    reports an emulation failure; the CPU runs that instruction on the fallback's own
    mock, counts it and carries on."""
    from kvmcpu.cpu.kvm.x86 import X86KvmCPU
    from kvmcpu.errors import VcpuRunError
    from kvmcpu.system import System
    from kvmcpu.uapi import KVM_INTERNAL_ERROR_EMULATION, ExitReason

    KVM_EXIT_INTERNAL_ERROR = ExitReason.INTERNAL_ERROR

    monkeypatch.setattr(X86KvmCPU, "can_fall_back", staticmethod(lambda vcpu: True))
    # mov rbx, 0x0123456789abcdef; popcnt rax, rbx; mov dx, 0x3f8; out dx, al;
    # xor eax, eax; out 0xf4, al; hlt
    code = (bytes.fromhex("48bb") + (0x0123456789ABCDEF).to_bytes(8, "little")
            + bytes.fromhex("f3480fb8c3" "66baf803" "ee" "31c0" "e6f4" "f4"))
    with System(backend="mock") as system:
        system.load(code, fmt="flat", load_addr=0x100000, mode="long")
        system.root.instantiate()
        system.cpu.activateContext()
        vcpu = system.cpu.vcpu
        assert vcpu is not None
        vcpu.script_exit(KVM_EXIT_INTERNAL_ERROR, suberror=KVM_INTERNAL_ERROR_EMULATION)
        result = system.run(timeout=30)
        assert (result.cause, result.status) == ("isa-debug-exit", 1)
        assert system.serial.output == b" "  # popcnt = 32
        assert system.cpu.stats.numEmulatedInstructions.value == 1
        assert system.cpu._fallback is not None and system.cpu._fallback.active
    monkeypatch.undo()
    with System(backend="mock", emulation_fallback=True) as system:  # the mock's own failure
        system.load(code, fmt="flat", load_addr=0x100000, mode="long")
        system.root.instantiate()
        system.cpu.activateContext()
        system.cpu.vcpu.script_exit(KVM_EXIT_INTERNAL_ERROR,
                                    suberror=KVM_INTERNAL_ERROR_EMULATION)
        with pytest.raises(VcpuRunError, match="KVM internal error"):
            system.run(timeout=30)
