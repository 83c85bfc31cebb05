"""irqchip "split" (KVM_CAP_SPLIT_IRQCHIP): KVM's local APICs with the user-space
IOAPIC, 8259 pair and 8254. The guests' outputs in this mode are checked where
each guest is (test_apic_guest, test_apic_msr_guest, test_system_guests,
test_smp_parallel, test_pc_timers); here: the wiring, checkpoints and refusals."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

from kvmcpu import uapi
from kvmcpu.backends.exits import IoapicEoiExit, decode_exit
from kvmcpu.cpu.kvm import KvmVM
from kvmcpu.devices.ioapic import RTE_LEVEL, RTE_MASKED, RTE_REMOTE_IRR, IoApic
from kvmcpu.errors import ConfigError, SimulationError
from kvmcpu.system import CAUSE_DEBUG_EXIT, System

ROOT = Path(__file__).resolve().parent.parent.parent
APIC_IMAGE = str(ROOT / "guests" / "apic.bin")
TIMEOUT = 60


# -- the IOAPIC as an MSI source (no KVM needed) ----------------------------------------
def _rte(vector: int, mode: int = 0, logical: bool = False, level: bool = False,
         dest: int = 0, masked: bool = False) -> int:
    return (vector | mode << 8 | int(logical) << 11 | int(level) << 15 | int(masked) << 16
            | dest << 56)


def _program(ioapic: IoApic, pin: int, entry: int) -> None:
    ioapic.write_register(0x10 + 2 * pin + 1, entry >> 32)
    ioapic.write_register(0x10 + 2 * pin, entry & 0xFFFFFFFF)


def test_messages_are_msis_in_the_sdm_format() -> None:
    """Intel SDM vol. 3, 11.11.1-2: address FEEx_xxxx with the destination in bits
    19:12 and the destination mode in bit 2; data: vector 7:0, delivery mode 10:8,
    level 14 (assert), trigger mode 15."""
    sent = []
    ioapic = IoApic(msi=lambda address, data: sent.append((address, data)))
    _program(ioapic, 4, _rte(0x31, dest=3))
    ioapic.set_irq(4, True)
    _program(ioapic, 9, _rte(0x52, mode=1, logical=True, level=True, dest=0x0C))
    ioapic.set_irq(9, True)
    assert sent == [(0xFEE03000, 0x4031), (0xFEE0C004, 0xC152)]


def test_level_pin_waits_for_the_eoi_and_sends_again_while_asserted() -> None:
    sent = []
    ioapic = IoApic(msi=lambda address, data: sent.append((address, data)))
    _program(ioapic, 2, _rte(0x4A, level=True))
    ioapic.set_irq(2, True)
    ioapic.set_irq(2, True)  # still asserted, remote IRR set: nothing new
    assert len(sent) == 1 and ioapic.redirection[2] & RTE_REMOTE_IRR
    ioapic.eoi(0x4B)  # another vector: no effect
    assert len(sent) == 1
    ioapic.eoi(0x4A)  # KVM_EXIT_IOAPIC_EOI's vector: the line is still up, so again
    assert len(sent) == 2 and ioapic.redirection[2] & RTE_REMOTE_IRR
    ioapic.set_irq(2, False)
    ioapic.eoi(0x4A)
    assert len(sent) == 2 and not ioapic.redirection[2] & RTE_REMOTE_IRR


def test_routes_follow_the_redirection_table() -> None:
    """KVM needs every pin's MSI (with its trigger mode) to know which vectors to
    exit on at EOI: the routes are handed over at reset and on each change only."""
    calls = []
    ioapic = IoApic(msi=lambda a, d: None, on_routes=calls.append)
    assert len(calls) == 1 and len(calls[0]) == 24
    assert calls[0][5] == (5, 0xFEE00000, 0x4000)  # reset: masked, vector 0
    _program(ioapic, 2, _rte(0x4A, level=True, masked=True))
    assert calls[-1][2] == (2, 0xFEE00000, 0xC04A)
    count = len(calls)
    _program(ioapic, 2, _rte(0x4A, level=True))  # only the mask changes: same MSI
    assert len(calls) == count
    assert ioapic.redirection[2] & RTE_LEVEL and not ioapic.redirection[2] & RTE_MASKED


def test_an_ioapic_needs_a_bus_or_an_msi_sink() -> None:
    with pytest.raises(ValueError, match="either an APIC bus or an msi sink"):
        IoApic()


def test_ioapic_eoi_exit_decodes_its_vector() -> None:
    """<linux/kvm.h>: KVM_EXIT_IOAPIC_EOI = 26, ``struct { __u8 vector; } eoi``."""
    run = uapi.kvm_run()
    run.exit_reason = 26
    run.eoi.vector = 0x4A
    page = memoryview(bytearray(ctypes.sizeof(run)))
    ex = decode_exit(run, page)
    assert isinstance(ex, IoapicEoiExit) and ex.vector == 0x4A and ex.kind == "ioapic_eoi"


# -- refusals ---------------------------------------------------------------------------
def test_the_mock_refuses_split() -> None:
    with pytest.raises(ConfigError, match="irqchip='split' but the mock backend has no "
                                          "KVM_CAP_SPLIT_IRQCHIP"):
        System(memory="1M", backend="mock", irqchip="split")


def test_cli_split_on_the_mock_is_status_2(tmp_path: Path) -> None:
    image = ROOT / "kvmcpu" / "guests" / "hello.bin"
    done = subprocess.run([sys.executable, "-m", "kvmcpu", "run", "--backend", "mock",
                           "--irqchip", "split", str(image)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "KVM_CAP_SPLIT_IRQCHIP" in done.stderr


def test_enable_split_without_the_capability_is_a_config_error() -> None:
    vm = KvmVM("vm", backend="mock")
    try:
        with pytest.raises(ConfigError, match="no KVM_CAP_SPLIT_IRQCHIP"):
            vm.enable_split_irqchip()
        with pytest.raises(ValueError, match="ioapic_pins"):
            vm.enable_split_irqchip(0)
    finally:
        vm.close()


@pytest.mark.kvm
def test_enable_split_after_a_vcpu_is_a_config_error() -> None:
    vm = KvmVM("vm", backend="kvm")
    try:
        vm.alloc_vcpu_id()
        with pytest.raises(ConfigError, match="before any vCPU"):
            vm.enable_split_irqchip()
        assert not vm.split_irqchip
    finally:
        vm.close()


# -- on KVM -----------------------------------------------------------------------------
@pytest.mark.kvm
def test_split_wiring() -> None:
    with System(memory="32M", backend="kvm", irqchip="split") as system:
        assert system.vm.split_irqchip and system.vm.kernel_lapic
        assert not system.vm.has_irqchip and not system.vm.params.pit
        devices = system.devices
        assert devices.lapic is None and devices.lapics == []
        assert devices.ioapic is not None and devices.ioapic.msi is not None
        assert devices.pic is not None and devices.pit is not None
        assert system.cpu.interrupts is devices.pic and system.cpu.lapic is None
        # No user-space APIC page on the bus: the MMIO goes to KVM's LAPIC.
        assert system.mmio_bus.device_at(0xFEE00030) is None
        assert system.mmio_bus.device_at(0xFEC00000) is devices.ioapic


@pytest.mark.kvm
def test_split_checkpoint_in_the_periodic_timer_test(tmp_path: Path) -> None:
    """KVM_GET_LAPIC + MP state in the CPU's section, the user-space IOAPIC/PIC/PIT
    as devices: the guest goes on after the restore in split mode."""
    with System(memory="32M", backend="kvm", irqchip="split") as system:
        system.load(APIC_IMAGE)
        for _ in range(1000):
            if b"51< >51\n" in system.serial.output:
                break
            system.run(max_ticks=5_000_000_000, timeout=TIMEOUT)
        system.run(max_ticks=50_000_000_000, timeout=TIMEOUT)
        cpt = system.checkpoint(tmp_path / "cpt")
        before = bytes(system.serial.output)  # with what the drain let the guest print
        assert len(system.cpu.tc.lapic) == uapi.KVM_APIC_REG_SIZE
    assert before.endswith(b"51< >51\n")
    text = (cpt / "m5.cpt").read_text()
    assert "[system.ioapic]" in text and "irqchip.ioapic=" not in text
    with System.restore(cpt, backend="kvm") as restored:
        assert restored.params.irqchip == "split" and restored.vm.split_irqchip
        result = restored.run(max_seconds=5, timeout=TIMEOUT)
        out = before + restored.serial.output
        assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1), out
        assert out.endswith(b"ioapic: uart thre interrupt 1\napic: done\n")
        assert b"lapic periodic: " in out and b"lapic one-shot: " in out


@pytest.mark.kvm
def test_switching_a_split_cpu_is_refused() -> None:
    with System(memory="32M", backend="kvm", irqchip="split") as system:
        system.load(APIC_IMAGE)
        system.run(max_ticks=1_000_000, timeout=TIMEOUT)
        with pytest.raises(SimulationError, match="in-kernel irqchip"):
            system.switch_cpu("mock")
