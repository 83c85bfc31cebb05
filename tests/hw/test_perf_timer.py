"""The perf-overflow run timer (usePerfOverflow) on real KVM.

Hardware cycle counters are absent on our nested host (perf_event_open gives
ENOENT), so the CPU falls back to the software task-clock overflow timer; on
hosts with a PMU the hardware variant is chosen. Either way a spinning guest
must be interrupted by the timer's signal and simulated time must advance.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest
from cpu_rig import make_rig

from kvmcpu.backends.exits import IntrExit
from kvmcpu.cpu.kvm import PerfKvmTimer
from kvmcpu.cpu.kvm.perfevent import hardware_counters_usable

pytestmark = pytest.mark.kvm
__all__ = ["make_rig"]

MS = 1_000_000_000


def test_perf_overflow_timer_interrupts_a_spinning_guest(make_rig: Any, mocker: Any) -> None:
    rig = make_rig("kvm", "spin", quantum=2 * MS, usePerfOverflow=True).start()
    timer = rig.cpu.run_timer
    assert isinstance(timer, PerfKvmTimer)
    hw, _ = hardware_counters_usable()
    assert timer.hardware is hw
    assert ("hardware cycles" in timer.describe) is hw
    runs: List[Tuple[int, int, Any]] = []
    original = rig.cpu.kvmRun

    def run(ticks: int) -> int:
        executed = original(ticks)
        runs.append((ticks, executed, rig.cpu.last_exit))
        return executed

    mocker.patch.object(rig.cpu, "kvmRun", side_effect=run)
    ev = rig.simulate(20 * MS)
    assert ev.tick == 20 * MS
    # Every entry of the jmp-$ guest ended by the timer's signal, none by an exit.
    assert runs and all(isinstance(ex, IntrExit) for _, _, ex in runs)
    stats = rig.stats()
    assert stats["numExitSignal"] == stats["numVMExits"] == len(runs)
    # Re-armed: the spinning guest needed more than one entry to cover 20 ms (a timer
    # that fired once and never again would have left the second entry hanging until
    # the watchdog). How closely each quantum is honoured is a host property, measured
    # by benchmarks/bench_run_timer.py, not asserted here.
    assert len(runs) >= 2
    assert all(executed > 0 for _, executed, _ in runs)
    # No signal leaks out of the runs: nothing of the timer's is left pending.
    import signal

    assert timer.signo not in signal.sigpending()
    assert not timer.discard_pending()


def test_perf_overflow_timer_rearms_with_a_new_period(make_rig: Any, mocker: Any) -> None:
    rig = make_rig("kvm", "spin", quantum=1 * MS, usePerfOverflow=True).start()
    timer = rig.cpu.run_timer
    assert isinstance(timer, PerfKvmTimer)
    # Two different quanta give two different overflow periods (PERF_EVENT_IOC_PERIOD).
    assert timer._period(1 * MS) != timer._period(4 * MS)
    arm = mocker.spy(timer, "arm")
    rig.simulate(3 * MS)
    n_first = arm.call_count
    first = [c.args[0] for c in arm.call_args_list]
    rig.cpu.params.quantum = 4 * MS
    ev = rig.simulate(12 * MS)
    assert ev.tick == 15 * MS
    # Every entry was armed with at most its quantum, and the new quantum was used: the
    # timer took the new period (how many entries that needed is host timing: not checked).
    # An entry is as long as the host ran it: on a loaded host one can overshoot its
    # quantum by the whole window, leaving only short remainders before the limit, so
    # a few more windows are allowed for an entry armed with the new quantum.
    assert max(first) <= 1 * MS
    for _ in range(5):
        later = [c.args[0] for c in arm.call_args_list[n_first:]]
        if any(1 * MS < t <= 4 * MS for t in later):
            break
        rig.simulate(12 * MS)
    assert any(1 * MS < t <= 4 * MS for t in later), later
    assert max(later) <= 4 * MS
    assert rig.stats()["numExitSignal"] >= 1
    assert not timer.discard_pending()
