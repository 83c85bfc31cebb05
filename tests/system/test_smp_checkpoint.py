"""Several CPUs through drain, checkpoint, restore and switch_cpu, on both backends
and across them (on the one queue: test_smp_parallel.py has the threads):
guests/smp.bin stopped in the middle (the APs up, the ping-pong
and the spinlock to come) carries on elsewhere and prints what an uninterrupted
run prints."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from test_smp import IMAGE, TIMEOUT, smp_output

from kvmcpu import uapi
from kvmcpu.system import CAUSE_DEBUG_EXIT, System

MakeSystem = Callable[..., System]
PAIRS = [
    ("mock", "mock"),
    pytest.param("mock", "kvm", marks=pytest.mark.kvm),
    pytest.param("kvm", "mock", marks=pytest.mark.kvm),
    pytest.param("kvm", "kvm", marks=pytest.mark.kvm),
]


def _run_until(system: System, text: bytes, step: int = 20_000_000) -> None:
    for _ in range(5000):
        if text in system.serial.output:
            return
        result = system.run(max_ticks=step, timeout=TIMEOUT)
        assert result.cause != CAUSE_DEBUG_EXIT, system.serial.output
    raise AssertionError(f"{text!r} never printed: {system.serial.output!r}")


@pytest.mark.parametrize("first,second", PAIRS)
def test_checkpoint_and_restore_with_two_cpus(make_system: MakeSystem, tmp_path: Path,
                                              first: str, second: str) -> None:
    system = make_system(memory="32M", backend=first, smp=2, parallel=False)
    system.load(IMAGE)
    # 20 us slices on the mock (exact); 2 ms on KVM, where slices of a few turns can
    # end before the nested host's emulated ring-0 code retires anything (a known
    # limit, see the README's "Several CPUs"): 5000 slices of 20 us printed nothing once.
    _run_until(system, b"smp: all 2 up\n", 20_000_000 if first == "mock" else 2_000_000_000)
    cpt = system.checkpoint(tmp_path / "cpt")
    printed = system.serial.output
    svr1 = system.devices.lapics[1].svr
    system.close()
    text = (cpt / "m5.cpt").read_text()
    for section in ("[system.cpu0]", "[system.cpu1]", "[system.lapic]", "[system.lapic1]"):
        assert section in text
    restored = System.restore(cpt, backend=second)
    try:
        assert len(restored.cpus) == 2
        assert restored.devices.lapics[1].svr == svr1 == 0x1FF  # the AP's APIC state
        assert not restored.cpus[1].wait_for_sipi
        result = restored.run(max_seconds=5, timeout=TIMEOUT)
        out = restored.serial.output
        assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1), out
        whole = out if out.startswith(printed) else printed + out
        assert whole == smp_output(2)
    finally:
        restored.close()


@pytest.mark.parametrize("backend", ["mock", pytest.param("kvm", marks=pytest.mark.kvm)])
def test_checkpoint_before_bring_up_keeps_the_aps_waiting(make_system: MakeSystem,
                                                          tmp_path: Path, backend: str) -> None:
    system = make_system(memory="32M", backend=backend, smp=2, parallel=False)
    system.load(IMAGE)
    system.run(max_ticks=1000)
    assert system.cpus[1].wait_for_sipi
    cpt = system.checkpoint(tmp_path / "cpt")
    system.close()
    restored = System.restore(cpt, backend="mock")
    try:
        assert restored.cpus[1].wait_for_sipi
        assert restored.cpus[1].tc.mp_state == uapi.KVM_MP_STATE_INIT_RECEIVED
        result = restored.run(max_seconds=5, timeout=TIMEOUT)
        assert result.cause == CAUSE_DEBUG_EXIT
        assert restored.serial.output.endswith(smp_output(2)[-40:])
        assert b"smp: cpu 1 apic 1 cpuid 1\n" in restored.serial.output
    finally:
        restored.close()


@pytest.mark.parametrize("first,second", PAIRS)
def test_switch_cpu_with_two_cpus(make_system: MakeSystem, first: str, second: str) -> None:
    system = make_system(memory="32M", backend=first, smp=2, parallel=False)
    system.load(IMAGE)
    _run_until(system, b"smp: all 2 up\n")
    insts1 = system.cpus[1].totalInsts()
    new = system.switch_cpu(second)
    assert new is system.cpu is system.cpus[0]
    assert [c.path() for c in system.cpus] == ["system.cpu0", "system.cpu1"]
    assert all(c.vm is system.vm for c in system.cpus)
    assert system.vm.backend.name == second
    assert system.cpus[1].totalInsts() == insts1  # the counters carry over
    assert system.cpus[1].lapic is system.devices.lapics[1]
    result = system.run(max_seconds=5, timeout=TIMEOUT)
    assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1), system.serial.output
    assert system.serial.output == smp_output(2)


@pytest.mark.parametrize("backend", ["mock", pytest.param("kvm", marks=pytest.mark.kvm)])
def test_wake_up_while_drained_survives_a_checkpoint(make_system: MakeSystem, tmp_path: Path,
                                                     backend: str) -> None:
    """An interrupt that wakes a halted CPU while the system drains (on KVM: another
    CPU's IPI during that CPU's drain entry) makes the thread runnable at resume; a
    checkpoint taken then must say so, or the restored CPU sleeps on with the vector in
    its IRR ("guest halted with nothing left to run"; found in smp.asm's ping-pong)."""
    system = make_system(memory="32M", backend=backend, smp=2, parallel=False)
    system.load(IMAGE)
    _run_until(system, b"smp: all 2 up\n")
    ap = system.cpus[1]
    for _ in range(1000):  # cpu 1 sleeps in `sti; hlt` between the pings
        if ap.thread_status.value == "Suspended":
            break
        system.run(max_ticks=10_000, timeout=TIMEOUT)
    assert ap.thread_status.value == "Suspended"
    system.root.drain_manager.drain()
    ap.wakeup()  # what the APIC's accept does for the halted AP
    cpt = system.checkpoint(tmp_path / "cpt")
    printed = system.serial.output
    system.close()
    assert "thread_status=Active" in (cpt / "m5.cpt").read_text().split("[system.cpu1]")[1]
    restored = System.restore(cpt, backend=backend)
    try:
        assert restored.cpus[1].thread_status.value == "Active"
        result = restored.run(max_seconds=5, timeout=TIMEOUT)
        assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1), restored.serial.output
        out = restored.serial.output
        assert (out if out.startswith(printed) else printed + out) == smp_output(2)
    finally:
        restored.close()
