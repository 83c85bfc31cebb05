"""ACPI S5, S3 with the RTC alarm's wake-up (guests/pcs3.bin), the platform
reset (0xcf9, the 8042's pulse) with and without --no-reboot, and the PM
timer against the PIT: guests/pcpm.bin through the
real ``kvmcpu run`` on both backends, and on QEMU's ``pc`` machine (the
reference), which must print the same and end with the same status."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
IMAGE = str(ROOT / "guests" / "pcpm.bin")
QEMU = shutil.which("qemu-system-x86_64")

#: (cmdline word, extra options) -> (output, status), as QEMU gives them.
CASES = {
    ("s", False): (b"pm: s5\n", 0),
    ("r", False): (b"reset: boot 1\nreset: boot 2\n", 1),
    ("r", True): (b"reset: boot 1\n", 0),
    ("k", False): (b"kbd: self test 55\nreset: boot 1\nkbd: self test 55\nreset: boot 2\n", 1),
    ("k", True): (b"kbd: self test 55\nreset: boot 1\n", 0),
}
TIMER = b"pm timer: rate ok\npm timer: 24 bits\n"


def kvmcpu_run(backend: str, word: str, no_reboot: bool) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "kvmcpu", "run", "-v", "--backend", backend, "--append", word,
           "--timeout", "100", IMAGE]
    if no_reboot:
        cmd.insert(4, "--no-reboot")
    return subprocess.run(cmd, capture_output=True, timeout=150, cwd=ROOT,
                          stdin=subprocess.DEVNULL)


def qemu_run(word: str, no_reboot: bool) -> subprocess.CompletedProcess[bytes]:
    assert QEMU is not None
    cmd: List[str] = [QEMU, "-accel", "kvm", "-machine", "pc", "-m", "128", "-kernel", IMAGE,
                      "-append", word, "-serial", "stdio", "-display", "none", "-monitor",
                      "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
    if no_reboot:
        cmd.append("-no-reboot")
    return subprocess.run(cmd, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("case", sorted(CASES), ids=lambda c: f"{c[0]}{'-noreboot' * c[1]}")
def test_power_and_reset(backend_name: str, case: tuple[str, bool]) -> None:
    word, no_reboot = case
    want, status = CASES[case]
    done = kvmcpu_run(backend_name, word, no_reboot)
    assert done.stdout == want, done.stderr
    assert done.returncode == status, done.stderr
    cause = {("s", False): "power off"}.get(case, "reset" if no_reboot else "isa-debug-exit")
    assert f"kvmcpu run: {cause} at".encode() in done.stderr


PC_TESTDEV = b"pc-testdev: ioport ab345678 word ab34\npc-testdev: iomem 11223344 55667788\n"


def test_pc_testdev_ports_and_io_memory(backend_name: str) -> None:
    done = subprocess.run([sys.executable, "-m", "kvmcpu", "run", "--backend", backend_name,
                           "--device", "pc-testdev", "--append", "p", "--timeout", "100",
                           IMAGE], capture_output=True, timeout=150, cwd=ROOT,
                          stdin=subprocess.DEVNULL)
    assert (done.stdout, done.returncode) == (PC_TESTDEV, 1), done.stderr


@pytest.mark.kvm
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed "
                    "(apt-get install qemu-system-x86)")
def test_qemu_pc_testdev_gives_the_same() -> None:
    assert QEMU is not None
    done = subprocess.run([QEMU, "-accel", "kvm", "-machine", "pc", "-device", "pc-testdev",
                           "-m", "128", "-kernel", IMAGE, "-append", "p", "-serial", "stdio",
                           "-display", "none", "-monitor", "none",
                           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert (done.stdout, done.returncode) == (PC_TESTDEV, 1), done.stderr


S3_IMAGE = str(ROOT / "guests" / "pcs3.bin")
S3_OUTPUT = b"s3: suspending\ns3: resumed\ns3: wak_sts rtc_sts\n"


def test_s3_and_the_rtc_wake_up(backend_name: str) -> None:
    done = subprocess.run([sys.executable, "-m", "kvmcpu", "run", "--backend", backend_name,
                           "--timeout", "100", S3_IMAGE], capture_output=True, timeout=150,
                          cwd=ROOT, stdin=subprocess.DEVNULL)
    assert (done.stdout, done.returncode) == (S3_OUTPUT, 1), done.stderr


@pytest.mark.kvm
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed "
                    "(apt-get install qemu-system-x86)")
def test_qemu_s3_gives_the_same() -> None:
    assert QEMU is not None
    done = subprocess.run([QEMU, "-accel", "kvm", "-machine", "pc", "-m", "128", "-kernel",
                           S3_IMAGE, "-serial", "stdio", "-display", "none", "-monitor", "none",
                           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert (done.stdout, done.returncode) == (S3_OUTPUT, 1), done.stderr


@pytest.mark.kvm
def test_pm_timer_rate_against_the_pit_kvm() -> None:
    done = kvmcpu_run("kvm", "t", False)
    assert (done.stdout, done.returncode) == (TIMER, 1), done.stderr


def test_pm_timer_rate_against_the_pit_mock() -> None:
    done = kvmcpu_run("mock", "u", False)
    assert (done.stdout, done.returncode) == (TIMER, 1), done.stderr


@pytest.mark.kvm
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed "
                    "(apt-get install qemu-system-x86)")
@pytest.mark.parametrize("case", sorted(CASES) + [("t", False)],
                         ids=lambda c: f"{c[0]}{'-noreboot' * c[1]}")
def test_qemu_gives_the_same(case: tuple[str, bool]) -> None:
    want, status = CASES.get(case, (TIMER, 1))
    done = qemu_run(*case)
    assert (done.stdout, done.returncode) == (want, status), done.stderr


@pytest.mark.kvm
@pytest.mark.parametrize("writer,reader", [("mock", "kvm"), ("kvm", "mock")])
def test_pm_checkpoint_moves_between_backends(writer: str, reader: str,
                                              tmp_path: Path) -> None:
    from kvmcpu.sim.eventq import TICKS_PER_SECOND
    from kvmcpu.system import System

    with System(backend=writer) as system:
        system.load(IMAGE, cmdline="u")  # the PM timer guest, stopped while it polls
        system.run(max_ticks=TICKS_PER_SECOND // 2000, timeout=100)
        io = system.io_bus
        io.write(0x602, 2, 0x0401)  # TMR_EN | RTC_EN
        io.write(0xAFE2, 2, 0x0002)  # GPE0_EN
        cpt = system.checkpoint(tmp_path / "cpt")  # drained: simulated time stands still
        timer = io.read(0x608, 4)
    with System.restore(cpt, backend=reader) as restored:
        io = restored.io_bus
        assert io.read(0x608, 4) == timer  # the same tick, the same count
        assert io.read(0x602, 2) == 0x0401 and io.read(0xAFE2, 2) == 0x0002
        assert restored.devices.acpi_pm is not None and restored.devices.acpi_pm.timer_pending()
        result = restored.run(timeout=100)
        # 2 ms of polling on KVM (host time) is too short for its rate check: the
        # guest ends either way; its lines come after the checkpoint.
        assert result.status == 1 and restored.serial.output.endswith(b"pm timer: 24 bits\n")
