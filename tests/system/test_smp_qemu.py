"""QEMU as the oracle for several CPUs: guests/smp.bin prints on QEMU + KVM with
``-smp N`` what it prints on kvmcpu (test_smp.py). Skipped where
qemu-system-x86_64 is not installed (Debian package qemu-system-x86)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from test_smp import IMAGE, smp_output

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = [
    pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed "
                       "(apt-get install qemu-system-x86)"),
    pytest.mark.kvm,
]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_qemu_kvm_smp(tmp_path: Path, n: int) -> None:
    assert QEMU is not None
    done = subprocess.run(
        [QEMU, "-accel", "kvm", "-smp", str(n), "-m", "32", "-kernel", IMAGE,
         "-serial", "stdio", "-display", "none", "-monitor", "none", "-no-reboot",
         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
        capture_output=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert done.stdout == smp_output(n), done.stderr
    assert done.returncode == 1  # isa-debug-exit: (0 << 1) | 1
