"""The KVM CPU model on real /dev/kvm: the POSIX run timer and its signal, counters,
interrupt injection, coalesced MMIO and the exit path (every test here is marked kvm).

Timing checks are deliberately loose (this host is nested and shared): they
tell "interrupted at once" from "ran most of its quantum", nothing finer.
"""

from __future__ import annotations

import signal
import time
from typing import Any, List, Tuple

import pytest
from cpu_rig import CpuRig, Recorder, make_rig

from kvmcpu.backends.exits import IntrExit, IoExit
from kvmcpu.backends.kvm_vcpu import KvmVcpu
from kvmcpu.cpu.kvm import HostClockCounters, PosixKvmTimer
from kvmcpu.cpu.kvm.timer import TIMER_SIGNAL
from kvmcpu.sim.eventq import exit_sim_loop

pytestmark = pytest.mark.kvm
__all__ = ["make_rig"]

MS = 1_000_000_000  # ticks per simulated millisecond


def timed_runs(mocker: Any, rig: CpuRig) -> List[Tuple[int, float, Any]]:
    """Wrap kvmRun: (ticks asked, host seconds, exit) of every entry."""
    out: List[Tuple[int, float, Any]] = []
    original = rig.cpu.kvmRun

    def run(ticks: int) -> int:
        t0 = time.perf_counter()
        executed = original(ticks)
        out.append((ticks, time.perf_counter() - t0, rig.cpu.last_exit))
        return executed

    mocker.patch.object(rig.cpu, "kvmRun", side_effect=run)
    return out


def test_kvm_cpu_uses_the_posix_timer_with_the_signal_unblocked_in_kvm_run(
        make_rig: Any, mocker: Any) -> None:
    mask = mocker.spy(KvmVcpu, "set_signal_mask")
    rig = make_rig("kvm", "spin").start()
    timer = rig.cpu.run_timer
    assert isinstance(timer, PosixKvmTimer)
    assert timer.signo == TIMER_SIGNAL
    # Blocked in the thread (never delivered to Python) ...
    assert TIMER_SIGNAL in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    # ... and absent from the mask KVM applies inside KVM_RUN.
    (_, blocked), _ = mask.call_args
    assert TIMER_SIGNAL not in set(blocked)
    if not isinstance(rig.cpu.counters, HostClockCounters):
        pytest.skip("this host has hardware perf counters")
    assert "estimated" in rig.cpu.stats.numInsts.desc


@pytest.mark.parametrize("quantum_ms", [1, 2])
def test_spinning_guest_is_interrupted_by_the_timer(make_rig: Any, mocker: Any,
                                                    quantum_ms: int) -> None:
    quantum = quantum_ms * MS
    rig = make_rig("kvm", "spin", quantum=quantum).start()
    runs: List[Tuple[int, int]] = []
    original = rig.cpu.kvmRun

    def run(ticks: int) -> int:
        runs.append((ticks, original(ticks)))
        return runs[-1][1]

    mocker.patch.object(rig.cpu, "kvmRun", side_effect=run)
    ev = rig.simulate(20 * quantum)
    assert ev.tick == 20 * quantum
    stats = rig.stats()
    assert stats["numExitSignal"] == stats["numVMExits"] == len(runs)
    assert stats["numIO"] == stats["numMMIO"] == 0
    # Simulated time follows the host time spent in KVM_RUN: a run ends at its
    # quantum and, unless the host deschedules the thread (this machine is
    # shared; a thread preempted between arming the timer and entering KVM_RUN
    # comes back with its deadline gone), soon after it.
    full = [(asked, executed) for asked, executed in runs if asked > 0]
    assert len(full) >= 3
    on_time = [executed >= 0.95 * asked for asked, executed in full]
    assert sum(on_time) >= 2 * len(full) // 3
    assert min(executed for asked, executed in full if asked == quantum) < 2 * quantum
    assert stats["numCycles"] > 0
    assert 0 < rig.cpu.stats.hostSecondsInKvm.value < 5


def test_no_timer_signal_leaks_into_the_next_run(make_rig: Any, mocker: Any) -> None:
    """After runs the timer ended, a run with a long quantum is not cut short."""
    rig = make_rig("kvm", "spin", quantum=1 * MS).start()
    runs = timed_runs(mocker, rig)
    rig.simulate(5 * MS)
    assert any(isinstance(ex, IntrExit) for _, _, ex in runs)
    rig.cpu.params.quantum = 200 * MS
    del runs[:]
    rig.simulate(200 * MS)
    ticks, seconds, ex = runs[0]
    assert ticks > 100 * MS  # (the last 5 ms run may have overshot the limit)
    assert isinstance(ex, IntrExit)
    assert seconds > 0.5 * ticks / (1000 * MS)  # most of its quantum, not an immediate EINTR


def test_a_timer_that_fires_outside_kvm_run_is_consumed(make_rig: Any, mocker: Any) -> None:
    """A device handler outlives the run timer's deadline, so a timer left armed
    fires while the thread is outside KVM_RUN: no full entry may start with the
    timer signal pending (it would end that entry at once)."""
    rig = make_rig("kvm", "out_loop", quantum=1 * MS)
    rig.cpu.tc.rdx = 0x80
    slow = Recorder(rig.queue)
    original = slow.write

    def write(offset: int, size: int, value: int) -> None:
        original(offset, size, value)
        if len(slow.log) in (3, 6):
            time.sleep(0.005)  # five quanta: an armed timer fires meanwhile
        if len(slow.log) == 12:
            exit_sim_loop("done", queue=rig.queue)

    slow.write = write  # type: ignore[method-assign]
    rig.io.add(0x80, 1, slow)
    rig.start()
    entries: List[Tuple[bool, bool, Any]] = []
    ioctl_run = rig.cpu.ioctlRun

    timer = rig.cpu.run_timer
    assert isinstance(timer, PosixKvmTimer)

    def run() -> Any:
        # A signal pending here is stale unless the current setting is due now (the
        # thread was preempted between arming and entering: that is a real expiry).
        stale = TIMER_SIGNAL in signal.sigpending() and not (
            timer.deadline is not None and timer.deadline <= time.monotonic_ns())
        half = bool(rig.vcpu.kvm_run.immediate_exit)
        ex = ioctl_run()
        entries.append((stale, half, ex))
        return ex

    mocker.patch.object(rig.cpu, "ioctlRun", side_effect=run)
    assert rig.simulate(10_000 * MS).cause == "done"
    full = [(stale, ex) for stale, half, ex in entries if not half]
    assert not [i for i, (stale, _) in enumerate(full) if stale]
    assert isinstance(full[3][1], IoExit)  # the entry after the first sleep


def test_run_timer_resolution_clamps_short_runs_on_kvm(make_rig: Any, mocker: Any) -> None:
    rig = make_rig("kvm", "spin", quantum=1000, minQuantumNs=100_000).start()
    timer = rig.cpu.run_timer
    assert timer.resolution() == 100_000_000
    arm = mocker.spy(timer, "arm")
    rig.simulate(1 * MS)
    assert arm.call_args_list[0].args == (100_000_000,)


def test_the_default_quantum_floor_is_measured_once_per_process(make_rig: Any,
                                                                mocker: Any) -> None:
    """minQuantumNs=0 (the default): the timer's floor is what measure_min_quantum_ns
    found on this host, one of the tried quanta and never below the clock's resolution;
    the measurement is cached, and an explicit minQuantumNs skips it."""
    from kvmcpu.cpu.kvm import timer as timer_module

    rig = make_rig("kvm", "spin").start()
    timer = rig.cpu.run_timer
    assert isinstance(timer, PosixKvmTimer)
    measured = timer_module.measure_min_quantum_ns(rig.vm.backend)
    assert timer.min_quantum_ns == measured
    assert measured in timer_module.CALIBRATION_QUANTA_NS or measured == (
        timer_module.clock_getres_ns(timer.clock))
    assert timer.resolution() == timer.ticks_from_host_ns(measured)
    spy = mocker.spy(timer_module.PosixKvmTimer, "arm")
    assert timer_module.measure_min_quantum_ns(rig.vm.backend) == measured  # cached: no runs
    assert spy.call_count == 0
    measure = mocker.patch.object(timer_module, "measure_min_quantum_ns")
    mocker.patch("kvmcpu.cpu.kvm.base.measure_min_quantum_ns", measure)
    other = make_rig("kvm", "spin", minQuantumNs=70_000).start()
    assert other.cpu.run_timer.min_quantum_ns == 70_000
    measure.assert_not_called()


def test_hello_through_system_prints_and_exits() -> None:
    """The Multiboot hello kernel (long mode, UART polling, fw_cfg, debug-exit)."""
    import kvmcpu.guests
    from kvmcpu.system import System

    with System(memory="64M", backend="kvm") as s:
        s.load(kvmcpu.guests.path("hello"))
        r = s.run(max_seconds=1, timeout=30)
        assert (r.cause, r.code) == ("isa-debug-exit", 1)
        out = s.serial.output
        assert out.startswith(b"Hello from kvmcpu!\nfw_cfg signature: QEMU\nfw_cfg cpus: 1\n")
        stats = s.cpu.stats
        assert stats.numIO.value > 100 and stats.numVMExits.value >= stats.numIO.value
        assert stats.numMMIO.value == 0
        # the description says where the count comes from: measured with exact counters
        # (hardware perf), estimated otherwise (this host: no PMU) -- never silently zero
        from kvmcpu.info import probe_perf_counters

        hw = probe_perf_counters().get("usable")
        assert stats.numInsts.desc.startswith(
            "Number of instructions committed (measured: hardware perf counters" if hw else
            "Number of instructions committed (estimated: host monotonic clock x hostFreq")
        assert stats.numInsts.value > 0


def test_calibration_errors_are_typed_and_not_cached(mocker: Any) -> None:
    """A backend that cannot build the throw-away VM: KvmIoctlError from the
    measurement (nothing cached), "not measured: ..." from kvmcpu info; a closed
    CountingGuest refuses to run."""
    import errno

    from kvmcpu import info
    from kvmcpu.backends import get_backend
    from kvmcpu.cpu.kvm import timer as timer_module
    from kvmcpu.errors import KvmIoctlError

    class Broken:
        def create_vm(self) -> Any:
            raise KvmIoctlError("KVM_CREATE_VM", errno.ENOMEM)

    cache = mocker.patch.dict(timer_module._calibrated, clear=True)
    with pytest.raises(KvmIoctlError, match="KVM_CREATE_VM"):
        timer_module.measure_min_quantum_ns(Broken())
    assert cache == {}
    assert info.run_timer_floor(Broken()).startswith("not measured: KVM_CREATE_VM")  # type: ignore[arg-type]
    with get_backend("kvm") as kvm:
        guest = timer_module.CountingGuest(kvm)
        assert max(guest.work(2_000_000) for _ in range(3)) > 0
        guest.close()
        with pytest.raises(KvmIoctlError, match="closed"):
            guest.work(200_000)


def test_calibration_lengthens_a_reference_run_that_shows_no_progress(mocker: Any) -> None:
    """A reference run with no progress (first entries still faulting pages in on a
    loaded host) is retried with twice the time, up to 16 times the reference; a guest
    that never progresses is a RuntimeError and nothing is cached."""
    from kvmcpu.backends import get_backend
    from kvmcpu.cpu.kvm import timer as timer_module

    ref = timer_module.CALIBRATION_REFERENCE_NS
    asked: List[int] = []
    real_work = timer_module.CountingGuest.work

    def slow_start(self: Any, ns: int) -> int:
        asked.append(ns)
        return 0 if ns < 4 * ref else real_work(self, ns)  # nothing before 4x the reference

    cache = mocker.patch.dict(timer_module._calibrated, clear=True)
    mocker.patch.object(timer_module.CountingGuest, "work", slow_start)
    with get_backend("kvm") as kvm:
        floor = timer_module.measure_min_quantum_ns(kvm)
        assert floor == max(timer_module.clock_getres_ns(timer_module._ioctl.CLOCK_MONOTONIC),
                            timer_module.CALIBRATION_QUANTA_NS[-1])  # no quantum < 4x made any
        assert asked[:10] == [ref] + [ref] * 3 + [2 * ref] * 3 + [4 * ref] * 3
        mocker.patch.object(timer_module.CountingGuest, "work", lambda self, ns: 0)
        cache.clear()
        with pytest.raises(RuntimeError, match=f"no progress in {16 * ref} ns"):
            timer_module.measure_min_quantum_ns(kvm)
        assert cache == {}
