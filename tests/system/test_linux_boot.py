"""Booting Debian's cloud kernel to its initramfs's /init (KVMCPU_LONG=1, on KVM).

The kernel and initramfs are the ones guests/linux/build.py writes (nothing is
downloaded here): point KVMCPU_LINUX_DIR at its --out directory. The run goes
through the real entry point with the command line guests/linux/README.md
gives (see APPEND) and ``--emulation-fallback burst`` (where KVM emulates CPL0
code, the kernel runs on the mock in bursts: see the README);
/init prints its marker and the kernel release, then powers off through ACPI S5
(PM1a_CNT's SLP_EN through /dev/port: the kernel has acpi=off), which ends the
run with status 0, cause "power off".
The wall time, the instructions run on the mock and the exits by kind are
printed (pytest -s) for the record; benchmarks/bench_linux_boot.py sets them
beside QEMU + KVM.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Tuple

import pytest

MARKER = "kvmcpu-initramfs: user space reached"
#: No IOAPIC, ACPI, PCI scan or second CPU: what kvmcpu's PC does not offer the kernel yet
#: (QEMU users boot minimal kernels with the same options).
APPEND = "console=ttyS0 noapic acpi=off pci=off nosmp"
#: The stats printed with the result.
STATS = ("numEmulatedInstructions", "numEmulationBursts", "numEmulationRefused", "numVMExits",
         "numIO", "numMMIO", "numHalt", "numExitSignal", "numInterrupts")
#: The run's wall-clock limit: what the slow-test watchdog leaves (KVMCPU_WATCHDOG_SLOW,
#: 1800 s by default; a loaded nested host needs more, e.g. KVMCPU_WATCHDOG_SLOW=5400).
TIMEOUT = int(float(os.environ.get("KVMCPU_WATCHDOG_SLOW", "1800"))) - 120


def linux_dir() -> Tuple[Path, Path]:
    """(vmlinuz, initramfs.cpio) from KVMCPU_LINUX_DIR, or skip saying why."""
    d = os.environ.get("KVMCPU_LINUX_DIR", "")
    if not d:
        pytest.skip("set KVMCPU_LINUX_DIR to the --out directory of guests/linux/build.py")
    kernel, initrd = Path(d) / "vmlinuz", Path(d) / "initramfs.cpio"
    if not (kernel.is_file() and initrd.is_file()):
        pytest.skip(f"{d} has no vmlinuz and initramfs.cpio: run guests/linux/build.py --out {d}")
    return kernel, initrd


@pytest.mark.slow
@pytest.mark.kvm
def test_debian_kernel_boots_to_init_and_powers_off(kvm_backend: object, tmp_path: Path) -> None:
    kernel, initrd = linux_dir()
    stats = tmp_path / "stats.txt"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "kvmcpu", "run", "--backend", "kvm", "--kernel", str(kernel),
         "--initrd", str(initrd), "--memory", "512M", "--append", APPEND,
         "--emulation-fallback", "burst", "--timeout", str(TIMEOUT), "--stats-file",
         str(stats), "--no-progress", "-v"],
        capture_output=True, text=True, timeout=TIMEOUT + 60, cwd=tmp_path)
    wall = time.monotonic() - start
    out = proc.stdout
    text = stats.read_text() if stats.exists() else ""
    figures = {name: m.group(1) for name in STATS
               if (m := re.search(rf"cpu0\.{name}\s+(\d+)", text))}
    print(f"\nlinux boot: status {proc.returncode}, {wall:.0f} s wall, {figures}")
    tail = out[-3000:] + proc.stderr[-2000:]
    assert MARKER in out, tail
    release = out[out.index(MARKER) + len(MARKER):].split()
    assert release and re.match(r"\d+\.\d+", release[0]), tail  # uname -r ran
    assert proc.returncode == 0, tail
    assert "kvmcpu run: power off" in proc.stderr, tail
