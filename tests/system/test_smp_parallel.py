"""Several KVM CPUs on host threads (System(parallel=True), kvmcpu/cpu/kvm/parallel.py):
the same guest output as the one queue, each vCPU's exits on a thread of its own,
and every way a run ends stopping every thread."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Dict, Set

import pytest
from test_smp import IMAGE, TIMEOUT, smp_output

from kvmcpu.cpu.kvm import X86KvmCPU
from kvmcpu.errors import ConfigError
from kvmcpu.system import CAUSE_DEBUG_EXIT, CAUSE_HALTED, CAUSE_INTERRUPTED, CAUSE_LIMIT, System

MakeSystem = Callable[..., System]
pytestmark = pytest.mark.kvm


def _no_cpu_threads() -> bool:
    return not any(t.name.startswith("kvmcpu-cpu") for t in threading.enumerate())


@pytest.mark.parametrize("n", [2, 3])
def test_parallel_smp_guest(make_system: MakeSystem, n: int) -> None:
    system = make_system(memory="32M", backend="kvm", smp=n, parallel=True)
    assert system.parallel
    system.load(IMAGE)
    result = system.run(max_seconds=5, timeout=TIMEOUT)
    assert system.serial.output == smp_output(n)
    assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1)
    assert _no_cpu_threads()
    # Back on the device queue between runs (drain, checkpoints, switch_cpu).
    assert all(cpu.eventq is system.eventq for cpu in system.cpus)


def test_each_vcpu_on_its_own_thread(make_system: MakeSystem,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seen: Dict[str, Set[int]] = {}
    original = X86KvmCPU.handleKvmExitIO

    def spy(self: X86KvmCPU, ex: object) -> int:
        seen.setdefault(self.name, set()).add(threading.get_ident())
        return original(self, ex)  # type: ignore[arg-type]

    monkeypatch.setattr(X86KvmCPU, "handleKvmExitIO", spy)
    system = make_system(memory="32M", backend="kvm", smp=2, parallel=True)
    system.load(IMAGE)
    system.run(max_seconds=5, timeout=TIMEOUT)
    assert system.serial.output == smp_output(2)
    main = threading.main_thread().ident
    assert seen["cpu0"] and seen["cpu1"]
    assert main not in seen["cpu0"] | seen["cpu1"]
    assert not seen["cpu0"] & seen["cpu1"]


def test_parallel_limit_then_checkpoint_on_the_mock(make_system: MakeSystem,
                                                    tmp_path: Path) -> None:
    system = make_system(memory="32M", backend="kvm", smp=2, parallel=True)
    system.load(IMAGE)
    for _ in range(5000):
        if b"smp: all 2 up\n" in system.serial.output:
            break
        result = system.run(max_ticks=2_000_000_000, timeout=TIMEOUT)  # 2 ms
        assert result.cause == CAUSE_LIMIT
        assert _no_cpu_threads()
    cpt = system.checkpoint(tmp_path / "cpt")
    printed = system.serial.output  # after the checkpoint's drain (a pending OUT)
    system.close()
    restored = System.restore(cpt, backend="mock")
    try:
        result = restored.run(max_seconds=5, timeout=TIMEOUT)
        assert result.cause == CAUSE_DEBUG_EXIT
        out = restored.serial.output
        assert (out if out.startswith(printed) else printed + out) == smp_output(2)
    finally:
        restored.close()


def test_a_halted_cpu_woken_by_an_ipi_runs_within_the_quantum(make_system: MakeSystem) -> None:
    """100 IPI round trips, each side waiting in `sti; hlt`, with a 50 ms
    sim_quantum: a parked (halted) CPU woken by the other CPU's IPI runs at the
    sender's tick, so the run takes far less simulated time than 100 quanta (at
    the next meeting of the queues, each wake-up would cost up to a quantum: 2 x
    100 x 50 ms)."""
    quantum = 50_000_000_000  # 50 ms
    system = make_system(memory="32M", backend="kvm", smp=2, parallel=True,
                         irqchip="user", sim_quantum=quantum)
    system.load(str(Path(IMAGE).parent / "smp_ipi100.bin"))
    result = system.run(timeout=TIMEOUT)
    assert b"smp: ping-pong 100 rounds\nsmp: done\n" in system.serial.output
    assert result.cause == CAUSE_DEBUG_EXIT
    assert result.tick < 100 * quantum // 4, result.sim_seconds


@pytest.mark.parametrize("guest", ["apic", "pctimers"])
def test_device_timers_run_when_the_cpus_reach_them(make_system: MakeSystem,
                                                    guest: str) -> None:
    """Device events are serviced when the CPUs reach their tick, whatever the
    quantum: with a 1 s sim_quantum on threads, the PIT, LAPIC, RTC and HPET timers
    the guests count against each other still print what they print on one CPU (a
    timer armed within the quantum ends it there; serviced at the quantum's start
    instead, a 1 s quantum merged 100 PIT ticks into one: "lapic periodic: 10/20")."""
    from test_apic_guest import APIC_OUTPUT
    from test_pc_timers import OUTPUT as PCTIMERS_OUTPUT
    want = {"apic": APIC_OUTPUT, "pctimers": PCTIMERS_OUTPUT}[guest]
    system = make_system(memory="32M", backend="kvm", smp=2, parallel=True,
                         irqchip="user", sim_quantum=1_000_000_000_000)
    system.load(str(Path(IMAGE).parent / f"{guest}.bin"))
    result = system.run(timeout=TIMEOUT)
    assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1), system.serial.output
    assert system.serial.output == want


def test_no_cpu_runs_on_after_the_debug_exit(make_system: MakeSystem) -> None:
    """The CPU that writes isa-debug-exit stops before it enters the guest again,
    even where the other CPU moved the device queue's time past its clock (the
    exit event is then due after this CPU's tick): smp.bin ends in `out 0xf4; cli;
    hlt`, and a BSP that ran on after the OUT ended 'triple fault' in about one
    run in four with a 10 ms quantum. Twenty runs, each the debug-exit."""
    causes = set()
    for _ in range(20):
        system = make_system(memory="32M", backend="kvm", smp=2, parallel=True,
                             irqchip="user", sim_quantum=10_000_000_000)
        system.load(IMAGE)
        result = system.run(timeout=TIMEOUT)
        assert system.serial.output == smp_output(2)
        causes.add((result.cause, result.status))
        system.close()
    assert causes == {(CAUSE_DEBUG_EXIT, 1)}


def test_parallel_request_stop_from_another_thread(make_system: MakeSystem) -> None:
    system = make_system(memory="32M", backend="kvm", smp=2, parallel=True)
    system.load(b"\xeb\xfe", fmt="flat")  # jmp $ (real mode, CPL0): never ends
    timer = threading.Timer(0.3, system.request_stop, args=(CAUSE_INTERRUPTED, 2))
    timer.start()
    try:
        result = system.run(timeout=TIMEOUT)
    finally:
        timer.cancel()
    assert (result.cause, result.status) == (CAUSE_INTERRUPTED, 130)
    assert _no_cpu_threads()


def test_parallel_stop_by_signal_does_not_wait_for_the_quantum(
        make_system: MakeSystem) -> None:
    """SIGINT lands on the main thread, which runs no KVM_RUN with the vCPUs on
    threads: request_stop kicks them (from a short-lived thread), so with a 100 s
    sim_quantum the run still ends within a fraction of it."""
    import signal
    system = make_system(memory="32M", backend="kvm", smp=2, parallel=True,
                         sim_quantum=100 * 10**12)
    system.load(str(Path(IMAGE).parent / "smp_spin.bin"))  # seconds of CPL3 work
    previous = signal.signal(signal.SIGALRM,
                             lambda signum, frame: system.request_stop(CAUSE_INTERRUPTED, 2))
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        result = system.run(timeout=TIMEOUT)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert (result.cause, result.status) == (CAUSE_INTERRUPTED, 130)
    assert result.host_seconds < 20
    assert _no_cpu_threads()


def test_parallel_all_halted(make_system: MakeSystem) -> None:
    system = make_system(memory="1M", backend="kvm", smp=2, parallel=True)
    system.load(b"\xfa\xf4", fmt="flat")  # cli; hlt, the AP never started
    result = system.run(max_seconds=1, timeout=TIMEOUT)
    assert result.cause == CAUSE_HALTED
    assert _no_cpu_threads()


def test_parallel_refused_on_the_mock() -> None:
    with pytest.raises(ConfigError, match="needs the kvm backend"):
        System(memory="1M", backend="mock", smp=2, parallel=True)
    with pytest.raises(ValueError, match="sim_quantum"):
        System(memory="1M", backend="mock", smp=2, sim_quantum=0)


def test_cli_parallel(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kvmcpu", "run", "--backend", "kvm", "--smp", "2",
         "--parallel", "on", "--timeout", str(TIMEOUT), IMAGE],
        capture_output=True, timeout=TIMEOUT + 60, cwd=tmp_path)
    assert done.stdout == smp_output(2), done.stderr
    assert done.returncode == 1


def test_cli_sim_quantum(tmp_path: Path) -> None:
    """--sim-quantum reaches System(sim_quantum=...): the apic guest's timers on
    threads with a 1 s quantum print its one-CPU output; 0 and a bad unit are usage
    errors (status 2)."""
    from test_apic_guest import APIC_OUTPUT
    apic = str(Path(IMAGE).parent / "apic.bin")
    done = subprocess.run(
        [sys.executable, "-m", "kvmcpu", "run", "--backend", "kvm", "--smp", "2",
         "--parallel", "on", "--sim-quantum", "1s", "--timeout", str(TIMEOUT), apic],
        capture_output=True, timeout=TIMEOUT + 60, cwd=tmp_path)
    assert (done.stdout, done.returncode) == (APIC_OUTPUT, 1), done.stderr
    for bad, why in (("0", "must be positive"), ("3 parsecs", "--sim-quantum")):
        done = subprocess.run(
            [sys.executable, "-m", "kvmcpu", "run", "--backend", "kvm", "--smp", "2",
             "--sim-quantum", bad, apic], capture_output=True, timeout=60, cwd=tmp_path,
            text=True)
        assert done.returncode == 2 and why in done.stderr, done.stderr


def test_cli_parallel_refused_on_the_mock(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kvmcpu", "run", "--backend", "mock", "--smp", "2",
         "--parallel", "on", IMAGE], capture_output=True, timeout=60, cwd=tmp_path, text=True)
    assert done.returncode == 2
    assert "needs the kvm backend" in done.stderr


def test_switching_keeps_the_threads_choice(make_system: MakeSystem) -> None:
    system = make_system(memory="32M", backend="mock", smp=2)
    assert not system.parallel  # the mock takes turns
    system.load(IMAGE)
    system.run(max_ticks=20_000_000, timeout=TIMEOUT)
    system.switch_cpu("kvm")
    assert system.parallel  # the default on KVM
    result = system.run(max_seconds=5, timeout=TIMEOUT)
    assert system.serial.output == smp_output(2)
    assert result.cause == CAUSE_DEBUG_EXIT


@pytest.mark.parametrize("irqchip", ["kernel", "split"])
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("n", [2, 3])
def test_kernel_irqchip_smp_guest(make_system: MakeSystem, n: int, parallel: bool,
                                  irqchip: str) -> None:
    """KVM's in-kernel local APIC (irqchip "kernel" or "split") does INIT and SIPI
    itself (the APs wait in KVM_RUN, KVM_MP_STATE_UNINITIALIZED): the same output
    as the user-space APIC."""
    system = make_system(memory="32M", backend="kvm", smp=n, irqchip=irqchip,
                         parallel=parallel)
    system.load(IMAGE)
    result = system.run(max_seconds=5, timeout=TIMEOUT)
    assert system.serial.output == smp_output(n)
    assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1)


@pytest.mark.parametrize("irqchip", ["kernel", "split"])
def test_kernel_irqchip_smp_checkpoint(make_system: MakeSystem, tmp_path: Path,
                                       irqchip: str) -> None:
    """The in-kernel APICs (KVM_GET_LAPIC) and MP states of both CPUs in the checkpoint."""
    system = make_system(memory="32M", backend="kvm", smp=2, irqchip=irqchip)
    system.load(IMAGE)
    for _ in range(5000):
        if b"smp: all 2 up\n" in system.serial.output:
            break
        system.run(max_ticks=2_000_000_000, timeout=TIMEOUT)
    cpt = system.checkpoint(tmp_path / "cpt")
    # After the checkpoint: its drain completes an OUT the last run left pending, so
    # reading before it loses that character (one in eight runs here).
    printed = system.serial.output
    system.close()
    restored = System.restore(cpt, backend="kvm")
    try:
        result = restored.run(max_seconds=5, timeout=TIMEOUT)
        assert result.cause == CAUSE_DEBUG_EXIT
        out = restored.serial.output
        assert (out if out.startswith(printed) else printed + out) == smp_output(2)
    finally:
        restored.close()
