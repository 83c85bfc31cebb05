"""Run timers on the mock: the instruction budget bounds each entry, time advances by
the quantum, resolution clamping, and determinism (same program + budget, same run)."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytest
from cpu_rig import IN_VALUE, MMIO_VALUE, CpuRig, Recorder, trace_calls

from kvmcpu.cpu.kvm import BudgetKvmTimer, MockCounters, PosixKvmTimer
from kvmcpu.cpu.kvm.timer import BaseKvmTimer
from kvmcpu.sim.eventq import TICKS_PER_SECOND

QUANTUM = 50_000  # ticks: 50 cycles at 1 GHz


def test_the_mock_gets_the_budget_timer_and_exact_counters(make_rig: Any) -> None:
    rig = make_rig("mock", "spin").start()
    assert isinstance(rig.cpu.run_timer, BudgetKvmTimer)
    assert isinstance(rig.cpu.counters, MockCounters)
    assert rig.cpu.run_timer.resolution() == rig.cpu.clock_period()
    assert "measured" in rig.cpu.stats.numInsts.desc


def test_spinning_guest_is_interrupted_every_quantum(make_rig: Any, mocker: Any) -> None:
    rig = make_rig("mock", "spin", quantum=QUANTUM).start()
    log: List[Tuple[str, int, Any]] = []
    trace_calls(mocker, rig.cpu, "kvmRun", log, rig.queue)
    ev = rig.simulate(10 * QUANTUM)
    assert ev.cause == "simulate() limit reached" and ev.tick == 10 * QUANTUM
    # Ten full runs of one quantum each, at 0, Q, 2Q ...; then, at the limit's
    # tick (the CPU ticks before the exit event), a half entry.
    assert [(t, r) for _, t, r in log] == (
        [(i * QUANTUM, QUANTUM) for i in range(10)] + [(10 * QUANTUM, 1000)])
    stats = rig.stats()
    assert stats["numExitSignal"] == 11
    assert stats["numVMExits"] == 11
    assert stats["numVMHalfEntries"] == 1
    assert stats["numInsts"] == stats["numCycles"] == 10 * QUANTUM // 1000
    assert rig.vcpu.instructions_retired == 500


def test_the_next_event_bounds_the_run_when_no_quantum(make_rig: Any, mocker: Any) -> None:
    rig = make_rig("mock", "spin").start()
    arm = mocker.spy(rig.cpu.run_timer, "arm")
    rig.simulate(123_000)
    assert arm.call_args_list[0].args == (123_000,)
    assert rig.vcpu.instructions_retired == 123


@pytest.mark.parametrize("quantum,armed", [(1, 1000), (999, 1000), (1000, 1000), (1001, 1001)])
def test_run_timer_resolution_clamps_short_runs(make_rig: Any, mocker: Any, quantum: int,
                                                armed: int) -> None:
    rig = make_rig("mock", "spin", quantum=quantum).start()
    arm = mocker.spy(rig.cpu.run_timer, "arm")
    budget = mocker.spy(rig.vcpu, "set_budget")
    rig.simulate(5000)
    assert arm.call_args_list[0].args == (armed,)
    assert budget.call_args_list[0].args == (-(-armed // 1000),)


def test_kvm_run_clamps_to_any_timers_resolution(make_rig: Any, mocker: Any) -> None:
    rig = make_rig("mock", "spin").start()
    timer = rig.cpu.run_timer
    timer._resolution = 7000
    arm = mocker.spy(timer, "arm")
    rig.cpu.syncKvmState()
    ticks = rig.cpu.kvmRun(10)
    assert arm.call_args.args == (7000,)
    assert ticks == 7000  # seven instructions of one cycle each
    assert rig.cpu.kvmRun(0) == rig.cpu.clock_period()  # half entry: no timer at all
    assert arm.call_count == 1


def test_timer_arithmetic() -> None:
    class Fixed(BaseKvmTimer):
        def arm(self, ticks: int) -> None: ...

        def disarm(self) -> None: ...

    t = Fixed(host_factor=2.0, host_freq=1e9)
    assert t.ticks_from_host_ns(1000) == 2 * 1000 * (TICKS_PER_SECOND // 10**9)
    assert t.host_ns(2_000_000) == 1000
    assert t.host_ns(1) == 1  # never zero
    assert t.ticks_from_host_cycles(10**9) == 2 * TICKS_PER_SECOND
    assert t.host_cycles(TICKS_PER_SECOND) == 5 * 10**8
    with pytest.raises(ValueError, match="host_factor"):
        Fixed(host_factor=0)
    with pytest.raises(ValueError, match="host_freq"):
        Fixed(host_freq=-1)


def test_posix_timer_resolution_is_at_least_the_minimum_quantum() -> None:
    t = PosixKvmTimer(min_quantum_ns=80_000)
    try:
        assert t.resolution() == t.ticks_from_host_ns(80_000) == 80_000_000
        assert not t.discard_pending()
    finally:
        t.close()
    t.close()  # idempotent


# ----------------------------------------------------------------------- determinism
def io_run(make_rig: Any, quantum: int) -> Dict[str, Any]:
    rig: CpuRig = make_rig("mock", "io_real", quantum=quantum)
    devices = [Recorder(rig.queue, {5: IN_VALUE}), Recorder(rig.queue),
               Recorder(rig.queue, {0x20: MMIO_VALUE})]
    rig.io.add(0x3F8, 8, devices[0])
    rig.io.add(0x400, 8, devices[1])
    rig.mmio.add(0x20000, 0x100, devices[2])
    rig.start()
    ev = rig.simulate(10**9)
    tc = rig.cpu.getContext()
    return {"tick": rig.queue.cur_tick, "cause": ev.cause, "stats": rig.stats(),
            "regs": (tc.rax, tc.rbx, tc.rcx, tc.rdx, tc.rip, tc.rflags, tc.tsc),
            "log": [d.log for d in devices], "tc": tc.copy()}


@pytest.mark.parametrize("quantum", [0, 3000])
def test_the_mock_is_deterministic(make_rig: Any, quantum: int) -> None:
    a = io_run(make_rig, quantum)
    b = io_run(make_rig, quantum)
    assert a["tc"].diff(b["tc"]) == []
    del a["tc"], b["tc"]
    assert a == b
    assert a["stats"]["numInsts"] > 0


def test_spin_is_deterministic_across_quanta(make_rig: Any) -> None:
    """The same number of instructions whatever the quantum: time is the budget."""
    counts = set()
    for quantum in (7000, 13000, 0):
        rig = make_rig("mock", "spin", quantum=quantum).start()
        rig.simulate(91_000)
        counts.add((rig.stats()["numInsts"], rig.cpu.getContext().rip))
    assert counts == {(91, 0x1000)}


# ------------------------------------------------------------------ the POSIX timer
class TestPosixTimerKeepsItsDeadline:
    """PosixKvmTimer arms an absolute deadline and reprograms it only when needed."""

    MS = 1_000_000_000  # ticks

    @pytest.fixture
    def timer(self) -> Any:
        t = PosixKvmTimer()
        yield t
        t.close()

    def test_same_deadline_costs_no_system_call(self, timer: PosixKvmTimer, mocker: Any) -> None:
        import kvmcpu._ioctl as ioctl

        settime = mocker.spy(ioctl, "timer_settime")
        timer.arm(100 * self.MS)
        first = timer.deadline
        assert first is not None
        timer.arm(100 * self.MS)  # microseconds later: within the slack
        assert timer.deadline == first
        assert settime.call_count == timer.rearms == 1
        args, kwargs = settime.call_args
        assert args[1] == first and kwargs["flags"] == ioctl.TIMER_ABSTIME
        timer.arm(50 * self.MS)  # earlier: reprogrammed (it must not fire late)
        assert timer.deadline is not None and timer.deadline < first
        timer.arm(400 * self.MS)  # much later: reprogrammed (it would fire too early)
        assert timer.rearms == 3

    def test_an_interrupted_run_forgets_a_spent_deadline_only(
            self, timer: PosixKvmTimer) -> None:
        import time

        timer.arm(100 * self.MS)
        timer.after_run(False)
        assert timer.deadline is not None
        timer.after_run(True)  # a kick: the deadline has not passed, it still stands
        assert timer.deadline is not None
        timer.arm(self.MS // 10)  # 100 us: earlier, reprogrammed
        time.sleep(0.002)
        timer.after_run(True)  # the timer's own expiry: spent, and its signal taken
        assert timer.deadline is None
        import signal

        assert timer.signo not in signal.sigpending()
        timer.arm(100 * self.MS)
        assert timer.rearms == 3

    def test_a_deadline_that_passed_outside_kvm_run_is_discarded(
            self, timer: PosixKvmTimer) -> None:
        import signal
        import time

        timer.arm(self.MS // 10)  # 100 us
        time.sleep(0.003)
        assert timer.signo in signal.sigpending()  # fired while "outside KVM_RUN"
        timer.arm(500 * self.MS)
        assert timer.signo not in signal.sigpending()
        assert timer.deadline is not None
        timer.disarm()
        assert timer.deadline is None
        time.sleep(0.001)
        assert timer.signo not in signal.sigpending()

    def test_the_gem5_default_disarms_and_discards_after_every_run(self, mocker: Any) -> None:
        class Counting(BaseKvmTimer):
            def arm(self, ticks: int) -> None: ...

            def disarm(self) -> None: ...

        t = Counting()
        disarm = mocker.spy(t, "disarm")
        discard = mocker.spy(t, "discard_pending")
        t.after_run(False)
        t.after_run(True)
        assert disarm.call_count == discard.call_count == 2


class _KvmLikeVcpu:
    """A vCPU without a run clock, whatever other attributes it has (a KVM vCPU with an
    emulation fallback may well have a set_budget of its own)."""

    instructions_retired = 0
    cycles = 0

    def set_budget(self, n: Any) -> None:
        raise AssertionError("not a run clock")

    def run_clock(self) -> None:
        return None


def test_counters_follow_the_run_clock_capability_not_attribute_probes() -> None:
    from kvmcpu.cpu.kvm.perfevent import HostClockCounters, choose_counters

    counters = choose_counters(_KvmLikeVcpu(), use_perf=False,  # type: ignore[arg-type]
                               host_freq=2e9)
    assert isinstance(counters, HostClockCounters)
    assert counters.cycles_in(1500) == 3000


def test_the_mock_counters_read_its_run_clock(make_rig: Any) -> None:
    rig = make_rig("mock", "spin").start()
    clock = rig.cpu.vcpu.run_clock()
    assert clock is not None and rig.cpu.counters.vcpu is clock
    assert rig.cpu.run_timer.vcpu is clock
