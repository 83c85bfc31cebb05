"""Several CPUs: System(smp=N), the APs' INIT-SIPI-SIPI bring-up, IPIs, a spinlock.

guests/smp.bin (see guests/smp.asm) starts every AP through the BSP's ICR,
has each CPU print its APIC ID (the register and CPUID leaf 1), plays IPI
ping-pong, sends an NMI by IPI and counts under a `lock cmpxchg` spinlock at
CPL3. The same image prints the same lines on the mock, on KVM with the
user-space APIC and on QEMU (test_smp_qemu.py); with all CPUs on the one event
queue, the mock runs it the same way every time.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from kvmcpu import uapi
from kvmcpu.cpu.kvm.base import ThreadStatus
from kvmcpu.errors import ConfigError
from kvmcpu.system import CAUSE_DEBUG_EXIT, CAUSE_HALTED, System

ROOT = Path(__file__).resolve().parent.parent.parent
IMAGE = str(ROOT / "guests" / "smp.bin")
HELLO = str(ROOT / "kvmcpu" / "guests" / "hello.bin")
MakeSystem = Callable[..., System]
TIMEOUT = 120
ITERATIONS = 5000


def smp_output(n: int) -> bytes:
    """What guests/smp.bin prints with ``n`` CPUs (QEMU prints the same)."""
    lines = [f"smp: cpus {n}"]
    lines += [f"smp: cpu {i} apic {i} cpuid {i}" for i in range(n)]
    lines.append(f"smp: all {n} up")
    if n > 1:
        lines += ["smp: ping-pong 10 rounds", "smp: nmi on cpu 1"]
    else:
        lines += ["smp: ping-pong skipped", "smp: nmi skipped"]
    lines += [f"smp: counter {n * ITERATIONS} = {n} x {ITERATIONS}", "smp: done"]
    return ("\n".join(lines) + "\n").encode()


def test_expected_output_spelled_out() -> None:
    assert smp_output(2) == (
        b"smp: cpus 2\n"
        b"smp: cpu 0 apic 0 cpuid 0\n"
        b"smp: cpu 1 apic 1 cpuid 1\n"
        b"smp: all 2 up\n"
        b"smp: ping-pong 10 rounds\n"
        b"smp: nmi on cpu 1\n"
        b"smp: counter 10000 = 2 x 5000\n"
        b"smp: done\n"
    )


@pytest.mark.parametrize("n", [1, 2])
def test_smp_guest(make_system: MakeSystem, backend_name: str, n: int) -> None:
    """On KVM on the one queue (parallel=False); test_smp_parallel.py has the threads."""
    system = make_system(memory="32M", backend=backend_name, smp=n, parallel=False)
    system.load(IMAGE)
    result = system.run(max_seconds=5, timeout=TIMEOUT)
    assert system.serial.output == smp_output(n)
    assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1)
    assert [c.path() for c in system.cpus] == [f"system.cpu{i}" for i in range(n)]
    for cpu in system.cpus:
        assert cpu.totalInsts() > 0
        assert not cpu.wait_for_sipi


@pytest.mark.kvm
def test_smp_guest_three_cpus_on_kvm(make_system: MakeSystem) -> None:
    system = make_system(memory="32M", backend="kvm", smp=3, irqchip="user", parallel=False)
    system.load(IMAGE)
    result = system.run(max_seconds=5, timeout=TIMEOUT)
    assert system.serial.output == smp_output(3)
    assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1)


def _snapshot(system: System) -> Dict[str, Any]:
    """What must be the same on every run of the mock: output, tick, stats and each
    CPU's registers (host-time statistics aside)."""
    stats = {}
    for cpu in system.cpus:
        group = cpu.stats
        for name in ("numInsts", "numCycles", "numVMExits", "numIO", "numMMIO", "numHalt",
                     "numExitSignal", "numVMHalfEntries"):
            stats[f"{cpu.path()}.{name}"] = getattr(group, name).value
    regs = []
    for cpu in system.cpus:
        tc = cpu.getContext()
        regs.append((tc.rip, tc.rsp, tc.rax, tc.rbx, tc.rcx, tc.rdx, tc.rflags, tc.cr0))
    lapics = [(a.irr, a.isr, a.svr, a.interrupts_accepted) for a in system.devices.lapics]
    return {"output": system.serial.output, "tick": system.eventq.cur_tick, "stats": stats,
            "regs": regs, "lapics": lapics}


def test_mock_interleaving_is_the_same_on_every_run(make_system: MakeSystem) -> None:
    snaps = []
    for _ in range(2):
        system = make_system(memory="32M", backend="mock", smp=2)
        system.load(IMAGE)
        result = system.run(max_seconds=5, timeout=TIMEOUT)
        assert result.cause == CAUSE_DEBUG_EXIT
        snaps.append(_snapshot(system))
        system.close()
    assert snaps[0] == snaps[1]
    assert snaps[0]["stats"]["system.cpu1.numInsts"] > 0


def test_aps_wait_for_sipi(make_system: MakeSystem, backend_name: str) -> None:
    """A guest that never sends INIT-SIPI-SIPI: the APs stay in wait-for-SIPI
    (KVM_MP_STATE_INIT_RECEIVED), never run, and the run ends as with one CPU."""
    system = make_system(memory="32M", backend=backend_name, smp=3)
    system.load(HELLO)
    result = system.run(max_seconds=1, timeout=TIMEOUT)
    assert b"Hello" in system.serial.output
    assert result.cause == CAUSE_DEBUG_EXIT
    for ap in system.cpus[1:]:
        assert ap.wait_for_sipi
        assert ap.thread_status is ThreadStatus.Suspended
        assert ap.tc.mp_state == uapi.KVM_MP_STATE_INIT_RECEIVED
        assert ap.totalInsts() == 0
        assert ap.stats.numVMExits.value == 0
    assert system.stats is not None
    names = {c.path() for c in system.cpus}
    assert names == {"system.cpu0", "system.cpu1", "system.cpu2"}


def test_all_cpus_halted_ends_the_run(make_system: MakeSystem, backend_name: str) -> None:
    """`cli; hlt` on the BSP with the APs waiting for a SIPI: nothing can wake any CPU."""
    system = make_system(memory="1M", backend=backend_name, smp=2)
    system.load(b"\xfa\xf4", fmt="flat")  # cli; hlt (real mode)
    result = system.run(max_seconds=1, timeout=TIMEOUT)
    assert result.cause == CAUSE_HALTED


def test_cpuid_apic_id_per_cpu(make_system: MakeSystem, backend_name: str) -> None:
    """CPUID leaf 1 EBX[31:24] (initial APIC ID) and leaf 0xB EDX (x2APIC ID) are
    each CPU's APIC ID (SDM vol. 2A, CPUID), on both backends."""
    system = make_system(memory="1M", backend=backend_name, smp=3)
    system.root.instantiate()
    for index, cpu in enumerate(system.cpus):
        assert cpu.lapic is system.devices.lapics[index]
        assert cpu.lapic.apic_id == index
        assert cpu.lapic.bsp == (index == 0)
        entries = {(e.function, e.index): e for e in cpu.tc.cpuid}
        assert entries[(1, 0)].ebx >> 24 == index
        assert entries[(0xB, 0)].edx == index
        assert entries[(0, 0)].eax >= 0xB  # leaf 0xB is reachable
        cpu.syncKvmState()  # KVM_SET_CPUID2 with them
        vcpu_entries = {(e.function, e.index): e for e in cpu.vcpu.get_cpuid2()}
        assert vcpu_entries[(1, 0)].ebx >> 24 == index


def test_smp_limit_and_irqchip_refusals(make_system: MakeSystem) -> None:
    with pytest.raises(ConfigError, match="at most 8 CPUs"):
        System(memory="1M", backend="mock", smp=9)
    with pytest.raises(ValueError, match="at least 1"):
        System(memory="1M", backend="mock", smp=0)
    system = make_system(memory="1M", backend="mock", smp=8)
    assert len(system.cpus) == 8
    assert [a.apic_id for a in system.devices.lapics] == list(range(8))
    assert system.devices.fw_cfg is not None


def test_cli_smp(tmp_path: Path) -> None:
    stats = tmp_path / "stats.txt"
    done = subprocess.run(
        [sys.executable, "-m", "kvmcpu", "run", "--backend", "mock", "--smp", "2",
         "--timeout", str(TIMEOUT), "--stats-file", str(stats), IMAGE],
        capture_output=True, timeout=TIMEOUT + 60, cwd=tmp_path)
    assert done.stdout == smp_output(2), done.stderr
    assert done.returncode == 1
    text = stats.read_text()
    assert "system.cpu1.numInsts" in text and "system.cpu0.numInsts" in text


def test_cli_smp_above_the_limit(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kvmcpu", "run", "--backend", "mock", "--smp", "9", HELLO],
        capture_output=True, timeout=60, cwd=tmp_path, text=True)
    assert done.returncode == 2
    assert "at most 8 CPUs" in done.stderr


def test_info_shows_the_cpu_limit(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "kvmcpu", "info", "--backend", "mock"],
                          capture_output=True, timeout=60, cwd=tmp_path, text=True)
    assert done.returncode == 0, done.stderr
    assert "CPUs (--smp):   up to 8 " in done.stdout
