"""Drain with gem5's rules: Drained only at a safe point with nothing pending or injected."""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest
from cpu_rig import ENTRY, MMIO_VALUE, CpuRig, Recorder

from kvmcpu.cpu.kvm import Status, ThreadStatus
from kvmcpu.errors import SimulationError
from kvmcpu.sim.eventq import Priority, SimLoopExitEvent
from kvmcpu.sim.simobject import DrainState
from kvmcpu.uapi import ExitReason


def stop_now(rig: CpuRig) -> None:
    """End the simulation loop before anything else happens at this tick."""
    rig.queue.schedule(SimLoopExitEvent("stop", 0, Priority.Minimum), rig.queue.cur_tick)


def test_drain_in_the_middle_of_an_mmio_read(make_rig: Any, backend_name: str) -> None:
    rig: CpuRig = make_rig(backend_name, "io_real")
    rig.io.add(0x3F8, 8, Recorder(rig.queue, {5: 0x5A}))
    ports = Recorder(rig.queue)
    rig.io.add(0x400, 8, ports)
    mmio = Recorder(rig.queue, {0x20: MMIO_VALUE})
    reads = mmio.read

    def read(offset: int, size: int) -> int:
        stop_now(rig)  # the loop stops with the read serviced but not completed
        return reads(offset, size)

    mmio.read = read  # type: ignore[method-assign]
    rig.mmio.add(0x20000, 0x100, mmio)
    rig.start()
    assert rig.simulate(10**12).cause == "stop"
    cpu = rig.cpu
    assert cpu.status is Status.RunningServiceCompletion
    half = rig.stats()["numVMHalfEntries"]
    rig.root.drain_all()  # Draining -> the half entry completes the read -> Drained
    assert cpu.drain_state is DrainState.Drained
    assert cpu.status is Status.Idle and not cpu.tick_event.scheduled()
    assert rig.stats()["numVMHalfEntries"] == half + 1
    assert not cpu.kvmStateDirty  # the TC was synchronised at the drain
    assert cpu.tc.rax & 0xFFFFFFFF == MMIO_VALUE
    assert rig.vcpu.get_regs().rax & 0xFFFFFFFF == MMIO_VALUE
    # Resumed, the guest carries on from there: OUT 0x404 with the value, then HLT.
    rig.simulate(10**12)
    assert ports.writes()[-1] == (4, 4, MMIO_VALUE)
    assert len([1 for *_, k, o, s, v in mmio.log if k == "r"]) == 1


def test_drain_while_running_is_immediate(make_rig: Any) -> None:
    rig = make_rig("mock", "spin", quantum=10_000).start()
    rig.simulate(35_000)
    cpu = rig.cpu
    assert cpu.status is Status.Running and cpu.tick_event.scheduled()
    tick = rig.queue.cur_tick
    rig.root.drain_all()
    assert cpu.drain_state is DrainState.Drained
    assert rig.queue.cur_tick == tick  # nothing had to run
    assert not cpu.tick_event.scheduled() and cpu.status is Status.Idle
    rig.simulate(20_000)  # resumes: the thread was active
    assert cpu.status is Status.Running
    # 35 before; resumed at the next cycle edge (gem5's drainResume), 19 more.
    assert rig.stats()["numInsts"] == 54


def test_drain_with_a_pending_exit_services_it_first(make_rig: Any) -> None:
    rig = make_rig("mock", "spin").start()
    rig.vcpu.script_exit(ExitReason.IRQ_WINDOW_OPEN)
    orig = rig.cpu.kvmRun

    def run(ticks: int) -> int:
        executed = orig(ticks)
        stop_now(rig)
        return executed

    rig.cpu.kvmRun = run  # type: ignore[method-assign]
    assert rig.simulate(50_000).cause == "stop"
    assert rig.cpu.status is Status.RunningService
    assert rig.cpu.drain() is DrainState.Draining
    rig.cpu.drain_state = DrainState.Running
    rig.root.drain_all()
    assert rig.cpu.drain_state is DrainState.Drained and rig.cpu.status is Status.Idle


def test_drain_runs_until_an_injected_interrupt_is_taken(make_rig: Any,
                                                         backend_name: str) -> None:
    """An interrupt injected but not yet taken is state KVM would lose: the drain
    runs the guest (requesting an interrupt window) until the guest has taken it."""
    rig: CpuRig = make_rig(backend_name, "spin")
    # IVT[0x20] -> 0:0x2000, where the handler does OUT 0x10, AL; IRET.
    rig.ram[0x80:0x84] = bytes([0x00, 0x20, 0x00, 0x00])
    rig.ram[0x2000:0x2005] = bytes([0xB0, 0x77, 0xE6, 0x10, 0xCF])
    rig.cpu.tc.rflags = 0x202  # IF=1
    port = Recorder(rig.queue)
    rig.io.add(0x10, 1, port)
    rig.start()
    rig.simulate(1_000_000)
    rig.cpu.kvmInterrupt(0x20)  # injected, not yet taken
    assert not rig.cpu.archIsDrained()
    assert rig.cpu.drain() is DrainState.Draining
    rig.cpu.drain_state = DrainState.Running
    rig.root.drain_all()
    assert rig.cpu.drain_state is DrainState.Drained
    assert port.writes() == [(0, 1, 0x77)]  # the handler ran before the drain completed
    assert rig.cpu.archIsDrained()
    ev = rig.vcpu.get_vcpu_events()
    assert not ev.interrupt.injected


def test_an_interrupt_while_drained_wakes_the_thread_on_resume(make_rig: Any) -> None:
    """A halted CPU is drained at once; a wake-up that arrives while the system is
    drained (devices keep running while others drain) must not be lost."""
    rig = make_rig("mock", "spin").start()
    rig.vcpu.script_exit(ExitReason.HLT)
    rig.simulate(10_000)
    cpu = rig.cpu
    assert cpu.thread_status is ThreadStatus.Suspended
    rig.root.drain_all()
    assert cpu.drain_state is DrainState.Drained
    cpu.wakeup()  # e.g. the PIC raised its output during the drain
    assert cpu.thread_status is ThreadStatus.Suspended and not cpu.tick_event.scheduled()
    rig.root.resume()
    assert cpu.thread_status is ThreadStatus.Active
    assert cpu.tick_event.scheduled()
    rig.simulate(10_000)
    assert rig.stats()["numInsts"] > 0


def test_switch_out_and_serialize_need_a_drained_cpu(make_rig: Any, tmp_path: Any) -> None:
    rig = make_rig("mock", "spin").start()
    rig.simulate(5_000)
    with pytest.raises(SimulationError, match="switchOut while Running"):
        rig.cpu.switchOut()
    rig.root.drain_all()
    rig.cpu.switchOut()
    assert rig.cpu.drain() is DrainState.Drained
    rig.cpu.drain_resume()  # a switched-out CPU stays idle
    assert not rig.cpu.tick_event.scheduled()
    with pytest.raises(SimulationError, match="activateContext on a switched-out CPU"):
        rig.cpu.activateContext()


def test_take_over_from_a_cpu_that_is_not_switched_out(make_rig: Any) -> None:
    a = make_rig("mock", "spin").start()
    b = make_rig("mock", "spin")
    with pytest.raises(SimulationError, match="must be switched out first"):
        b.cpu.takeOverFrom(a.cpu)


def test_take_over_copies_the_thread(make_rig: Any) -> None:
    a: CpuRig = make_rig("mock", "io_real")
    a.io.add(0x3F8, 8, Recorder(a.queue, {5: 0x5A}))
    a.start()
    a.simulate(6_000)
    a.root.drain_all()
    a.cpu.switchOut()
    b: CpuRig = make_rig("mock", None)
    b.ram[:] = a.ram[:]
    b.queue.set_cur_tick(a.queue.cur_tick)
    b.cpu.takeOverFrom(a.cpu)
    assert not b.cpu.switched_out and b.cpu.vcpu is not None
    assert b.cpu.thread_status is a.cpu.thread_status
    assert b.cpu.getContext().diff(a.cpu.getContext()) == []
    regs: List[Tuple[str, int]] = [(n, getattr(b.vcpu.get_regs(), n)) for n in ("rax", "rip")]
    assert regs == [("rax", a.cpu.tc.rax), ("rip", a.cpu.tc.rip)]
    assert b.cpu.tc.rip > ENTRY
