"""QEMU as the oracle: guests/apic.bin prints on QEMU what it prints on kvmcpu.

QEMU's own (user-space) APIC, under TCG with -icount and under KVM with
kernel-irqchip=off, gives exactly kvmcpu's output with irqchip "user". With
KVM's in-kernel irqchip QEMU's timers run in host time, like kvmcpu's
irqchip "kernel": there only the lines that do not count timer ticks are
compared. Skipped where qemu-system-x86_64 is not installed (Debian package
qemu-system-x86; .ci/run installs it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import List

import pytest
from test_apic_guest import APIC_OUTPUT, HOST_TIME_LINES, IMAGE

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed "
                                "(apt-get install qemu-system-x86)")


def qemu(accel: List[str], tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    assert QEMU is not None
    return subprocess.run(
        [QEMU, *accel, "-m", "32", "-kernel", IMAGE, "-serial", "stdio", "-display", "none",
         "-monitor", "none", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
        capture_output=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL)


def test_qemu_tcg_icount(tmp_path: Path) -> None:
    done = qemu(["-accel", "tcg", "-icount", "shift=0"], tmp_path)
    assert done.stdout == APIC_OUTPUT, done.stderr
    assert done.returncode == 1  # isa-debug-exit: (0 << 1) | 1


@pytest.mark.kvm
def test_qemu_kvm_userspace_irqchip(tmp_path: Path) -> None:
    done = qemu(["-accel", "kvm", "-machine", "kernel-irqchip=off"], tmp_path)
    assert done.stdout == APIC_OUTPUT, done.stderr
    assert done.returncode == 1


@pytest.mark.kvm
def test_qemu_kvm_in_kernel_irqchip(tmp_path: Path) -> None:
    done = qemu(["-accel", "kvm"], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    got, want = done.stdout.splitlines(), APIC_OUTPUT.splitlines()
    assert len(got) == len(want)
    for line, expected in zip(got, want):
        if expected.startswith(HOST_TIME_LINES):
            assert line.startswith(expected[:16])
        else:
            assert line == expected
