"""guests/apic.bin: the local APIC and IOAPIC of one CPU, on every backend and irqchip mode.

The guest (see guests/apic.asm) enables its local APIC, routes the PIT and
COM1 through the IOAPIC, sends self-IPIs, checks TPR masking and nesting by
priority class, and takes LAPIC timer interrupts in periodic and one-shot
mode counted against the PIT. With the user-space interrupt architecture
(irqchip "user", the default) every line is the same on the mock and on KVM;
with KVM's in-kernel irqchip the timers run in host time, so the two timer
lines may report counts instead of "ok" (that is why "auto" is "user").
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from kvmcpu.system import CAUSE_DEBUG_EXIT, System

ROOT = Path(__file__).resolve().parent.parent.parent
IMAGE = str(ROOT / "guests" / "apic.bin")
MakeSystem = Callable[..., System]
TIMEOUT = 60

APIC_OUTPUT = (
    b"apic: base fee00000 enabled bsp\n"
    b"apic: version 14\n"
    b"ioapic: pit ticks 10\n"
    b"apic: self-ipi 40 taken\n"
    b"apic: tpr 50 holds 41\n"
    b"apic: tpr 0 delivers 41\n"
    b"apic: nesting 50< 60< >60 >50 51< >51\n"
    b"lapic periodic: ok\n"
    b"lapic one-shot: ok\n"
    b"ioapic: uart thre interrupt 1\n"
    b"apic: done\n"
)
#: The lines whose values come from host-time timers with KVM's in-kernel irqchip.
#: With the user-space chips on KVM the timers are simulated, but an entry lasts as
#: long as the host ran it: a vCPU thread descheduled for tens of ms on a loaded host
#: covers several timer periods in one entry, and the interrupts of that stretch
#: merge in IRR (lost ticks, as on QEMU + KVM). These lines are exact on the mock.
HOST_TIME_LINES = (b"lapic periodic: ", b"lapic one-shot: ")


@pytest.mark.parametrize("irqchip", ["auto", "user"])
def test_apic_guest_user_space(make_system: MakeSystem, backend_name: str, irqchip: str) -> None:
    system = make_system(memory="32M", backend=backend_name, irqchip=irqchip)
    system.load(IMAGE)
    result = system.run(max_seconds=5, timeout=TIMEOUT)
    if backend_name == "mock":
        assert system.serial.output == APIC_OUTPUT
    else:
        _same_lines(system.serial.output)
    assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1)
    lapic = system.devices.lapic
    assert lapic is not None and lapic.sw_enabled and lapic.svr == 0x1FF
    # 10 + 20 + 8 PIT ticks at least, all of them through the IOAPIC.
    assert system.devices.ioapic is not None and system.devices.ioapic.interrupts_sent >= 38
    assert result.sim_seconds >= 0.38


@pytest.mark.kvm
@pytest.mark.parametrize("irqchip", ["kernel", "split"])
def test_apic_guest_kernel_irqchip(make_system: MakeSystem, irqchip: str) -> None:
    """KVM's local APICs (both modes; with "split" the IOAPIC and the PIC are the
    user-space ones): the LAPIC timers run in host time."""
    system = make_system(memory="32M", backend="kvm", irqchip=irqchip)
    system.load(IMAGE)
    result = system.run(max_seconds=5, timeout=TIMEOUT)
    assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1), system.serial.output
    got = system.serial.output.splitlines()
    want = APIC_OUTPUT.splitlines()
    assert len(got) == len(want)
    for line, expected in zip(got, want):
        if expected.startswith(HOST_TIME_LINES):
            assert line.startswith(expected[:16])
        else:
            assert line == expected


def _run_until(system: System, text: bytes, step: int = 5_000_000_000) -> None:
    for _ in range(1000):
        if text in system.serial.output:
            return
        system.run(max_ticks=step, timeout=TIMEOUT)
    raise AssertionError(f"{text!r} never printed: {system.serial.output!r}")


BACKENDS = ["mock", pytest.param("kvm", marks=pytest.mark.kvm)]


@pytest.mark.parametrize("writer", BACKENDS)
@pytest.mark.parametrize("reader", BACKENDS)
def test_apic_checkpoint_in_the_periodic_timer_test(tmp_path: Path, writer: str,
                                                    reader: str) -> None:
    """A checkpoint taken while the LAPIC timer runs continues on either backend."""
    with System(memory="32M", backend=writer) as system:
        system.load(IMAGE)
        _run_until(system, b"51< >51\n")
        system.run(max_ticks=50_000_000_000, timeout=TIMEOUT)  # into the 200 ms periodic test
        assert system.devices.lapic is not None
        assert system.devices.lapic.timer_next_tick > system.eventq.cur_tick
        before = bytes(system.serial.output)
        cpt = system.checkpoint(tmp_path / "cpt")
    assert before.endswith(b"51< >51\n")
    with System.restore(cpt, backend=reader) as restored:
        lapic = restored.devices.lapic
        assert lapic is not None and lapic.timer_mode == 1 and lapic.timer_next_tick > 0
        result = restored.run(max_seconds=5, timeout=TIMEOUT)
        if "kvm" in (writer, reader):
            _same_lines(before + restored.serial.output)
        else:
            assert before + restored.serial.output == APIC_OUTPUT
        assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1)


def _same_lines(got: bytes) -> None:
    """``got`` is APIC_OUTPUT, except that host-time timer lines may hold counts."""
    lines, want = got.splitlines(), APIC_OUTPUT.splitlines()
    assert len(lines) == len(want), got
    for line, expected in zip(lines, want):
        if expected.startswith(HOST_TIME_LINES):
            assert line.startswith(expected[:16])
        else:
            assert line == expected


@pytest.mark.kvm
def test_apic_checkpoint_with_the_in_kernel_irqchip(tmp_path: Path) -> None:
    """KVM_GET/SET_LAPIC (thread context) and KVM_GET/SET_IRQCHIP + PIT2 (the VM)
    carry the in-kernel chips' state: the guest goes on after the restore."""
    with System(memory="32M", backend="kvm", irqchip="kernel") as system:
        system.load(IMAGE)
        _run_until(system, b"51< >51\n")
        system.run(max_ticks=50_000_000_000, timeout=TIMEOUT)
        before = bytes(system.serial.output)
        cpt = system.checkpoint(tmp_path / "cpt")
        assert len(system.cpu.tc.lapic) == 0x400
    text = (cpt / "m5.cpt").read_text()
    assert "irqchip.ioapic=" in text and "pit2=" in text
    with System.restore(cpt, backend="kvm") as restored:
        assert restored.params.irqchip == "kernel" and restored.vm.params.irqchip
        result = restored.run(max_seconds=5, timeout=TIMEOUT)
        _same_lines(before + restored.serial.output)
        assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1)


@pytest.mark.parametrize("irqchip", ["user", pytest.param("kernel", marks=pytest.mark.kvm),
                                     pytest.param("split", marks=pytest.mark.kvm)])
def test_cli_runs_the_apic_guest(tmp_path: Path, irqchip: str) -> None:
    backend = "mock" if irqchip == "user" else "kvm"
    done = subprocess.run([sys.executable, "-m", "kvmcpu", "run", "--backend", backend,
                           "--irqchip", irqchip, "--serial", "stdio", "--timeout", "60",
                           IMAGE], capture_output=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # isa-debug-exit (0 << 1) | 1
    _same_lines(done.stdout)


def test_a_checkpoint_from_before_the_apic_restores_with_it_at_reset(tmp_path: Path) -> None:
    """Checkpoints written before the APIC existed have no [system.lapic]/[system.ioapic]."""
    with System(memory="32M", backend="mock") as system:
        system.load(str(ROOT / "kvmcpu" / "guests" / "irq.bin"))
        system.run(max_ticks=2_000_000_000, timeout=TIMEOUT)
        cpt = system.checkpoint(tmp_path / "cpt")
    ini = cpt / "m5.cpt"
    kept, skip = [], False
    for line in ini.read_text().splitlines():
        if line.startswith("["):
            skip = line in ("[system.lapic]", "[system.ioapic]")
        if line.startswith("sections="):
            line = line.replace(" system.ioapic system.lapic", "")
        if not skip:
            kept.append(line)
    ini.write_text("\n".join(kept) + "\n")
    from kvmcpu.sim.checkpoint import reseal

    reseal(cpt)  # a deliberate edit: accept the changed m5.cpt
    with System.restore(cpt, backend="mock") as restored:
        lapic = restored.devices.lapic
        assert lapic is not None and not lapic.sw_enabled and lapic.accepts_pic()
        result = restored.run(max_seconds=1, timeout=TIMEOUT)
        assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1)
        assert restored.serial.output.endswith(b"irq: 10 timer interrupts\n")


@pytest.mark.kvm
@pytest.mark.parametrize("first,second", [("kvm", "mock"), ("mock", "kvm")])
def test_apic_guest_across_switch_cpu(first: str, second: str) -> None:
    """switch_cpu in the middle of the periodic timer test: the APIC (a device) stays,
    the new CPU takes over its interrupts and the guest's output is unchanged."""
    with System(memory="32M", backend=first) as system:
        system.load(IMAGE)
        _run_until(system, b"51< >51\n")
        system.run(max_ticks=50_000_000_000, timeout=TIMEOUT)
        new = system.switch_cpu(second)
        assert system.devices.lapic is not None and system.devices.lapic.cpu is new
        assert new.lapic is system.devices.lapic
        result = system.run(max_seconds=5, timeout=TIMEOUT)
        assert system.serial.output == APIC_OUTPUT
        assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1)
