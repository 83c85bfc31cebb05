"""The bundled guests on a System, on both backends: serial output and exit status as golden values.

The long runs (sieve3 over 2,000,000 numbers) only run on KVM; on the mock the
same guests run with small inputs so the pure-Python interpreter stays quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from system_helpers import (
    CHECKPOINT_AFTER,
    CHECKPOINT_BEFORE,
    HELLO_LINES,
    IRQ_OUTPUT,
    guest,
    sieve_output,
)

from kvmcpu.system import (
    CAUSE_CHECKPOINT,
    CAUSE_DEBUG_EXIT,
    CAUSE_M5_EXIT,
    STATUS_OK,
    System,
)

MakeSystem = Callable[..., System]

#: Host seconds any one guest may take (the mock is slow, KVM's emulator is not fast).
TIMEOUT = 20


def test_hello_multiboot(make_system: MakeSystem, backend_name: str) -> None:
    system = make_system(memory="32M", backend=backend_name)
    image = guest("hello.bin")
    loaded = system.load(image)
    assert loaded.format == "multiboot"
    result = system.run(max_seconds=1, timeout=TIMEOUT)
    assert system.serial.output == HELLO_LINES + f"cmdline: {image} \n".encode()
    assert (result.cause, result.code, result.status) == (CAUSE_DEBUG_EXIT, 1, 1)
    assert system.exit_status == 1
    assert result.tick > 0 and result.host_seconds > 0
    assert system.cpu.stats.numIO.value > len(HELLO_LINES)  # LSR polls and THR writes


def test_hello64_elf(make_system: MakeSystem, backend_name: str) -> None:
    system = make_system(memory="32M", backend=backend_name)
    loaded = system.load(guest("hello64.bin"))
    assert (loaded.format, loaded.mode) == ("elf64", "long")
    result = system.run(max_seconds=1, timeout=TIMEOUT)
    assert system.serial.output == HELLO_LINES
    assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1)


def test_hello_append_is_the_multiboot_cmdline(make_system: MakeSystem, backend_name: str) -> None:
    system = make_system(memory="32M", backend=backend_name)
    system.load(guest("hello.bin"), cmdline="console=ttyS0 quiet")
    system.run(max_seconds=1, timeout=TIMEOUT)
    assert system.serial.output.endswith(
        f"cmdline: {guest('hello.bin')} console=ttyS0 quiet\n".encode())


def test_irq_timer_interrupts(make_system: MakeSystem, backend_name: str) -> None:
    system = make_system(memory="32M", backend=backend_name)
    system.load(guest("irq.bin"))
    result = system.run(max_seconds=1, timeout=TIMEOUT)
    assert system.serial.output == IRQ_OUTPUT
    assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1)
    # Ten PIT periods of 1193 cycles at 1.193182 MHz: at least 10 ms of simulated time.
    assert result.sim_seconds >= 0.0099
    assert system.cpu.stats.numInterrupts.value >= 10


@pytest.mark.kvm
@pytest.mark.parametrize("irqchip", ["on", "split"])
def test_irq_in_kernel_irqchip(make_system: MakeSystem, irqchip: str) -> None:
    system = make_system(memory="32M", backend="kvm", irqchip=irqchip)
    system.load(guest("irq.bin"))
    result = system.run(max_seconds=1, timeout=TIMEOUT)
    # created at startup (split: KVM's LAPICs, the 8259 through KVM_INTERRUPT)
    assert system.vm.has_irqchip if irqchip == "on" else system.vm.split_irqchip
    assert system.serial.output == IRQ_OUTPUT
    assert result.status == 1


@pytest.mark.kvm
def test_sieve3_full_size_on_kvm(make_system: MakeSystem) -> None:
    system = make_system(memory="64M", backend="kvm")
    system.load(guest("sieve3.bin"))
    result = system.run(max_seconds=10, timeout=TIMEOUT)
    assert system.serial.output == sieve_output(2_000_000, 148933)
    assert (result.cause, result.code, result.status) == (CAUSE_M5_EXIT, 0, STATUS_OK)


def test_sieve3_small(make_system: MakeSystem, backend_name: str) -> None:
    system = make_system(memory="16M", backend=backend_name)
    system.load(guest("sieve3.bin"), cmdline="n=1000")
    result = system.run(max_seconds=1, timeout=TIMEOUT)
    assert system.serial.output == sieve_output(1000, 168)
    assert (result.cause, result.status) == (CAUSE_M5_EXIT, STATUS_OK)


def test_checkpoint_guest_in_process(make_system: MakeSystem, backend_name: str,
                                     tmp_path: Path) -> None:
    system = make_system(memory="16M", backend=backend_name)
    system.load(guest("checkpoint.bin"))
    first = system.run(max_seconds=1, timeout=TIMEOUT)
    assert first.cause == CAUSE_CHECKPOINT
    assert system.serial.output == CHECKPOINT_BEFORE
    cpt = system.checkpoint(tmp_path / "cpt")
    assert (cpt / "m5.cpt").is_file()
    second = system.run(max_seconds=1, timeout=TIMEOUT)
    assert system.serial.output == CHECKPOINT_BEFORE + CHECKPOINT_AFTER
    assert (second.cause, second.status) == (CAUSE_DEBUG_EXIT, 1)
    assert second.tick >= first.tick

    restored = System.restore(cpt, backend=backend_name)
    try:
        assert restored.eventq.cur_tick == first.tick
        again = restored.run(max_seconds=1, timeout=TIMEOUT)
        assert restored.serial.output == CHECKPOINT_AFTER
        assert (again.cause, again.status) == (CAUSE_DEBUG_EXIT, 1)
    finally:
        restored.close()
