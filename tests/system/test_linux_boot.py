"""Booting Debian's cloud kernel to its initramfs's /init (KVMCPU_LONG=1, on KVM).

The kernel and initramfs are the ones guests/linux/build.py writes (nothing is
downloaded here): point KVMCPU_LINUX_DIR at its --out directory. The run goes
through the real entry point with the command line guests/linux/README.md
gives (see APPEND);
/init prints its marker and the kernel release, then writes 0 to isa-debug-exit
(port 0xf4 through /dev/port), which ends the run with status 1.
The wall time and the instructions run through the emulation fallback are
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
#: quiet: the console costs an exit per UART register access; clearcpuid=137,304 (SSSE3,
#: AVX512F): the kernel's BLAKE2s then runs its generic C code, not SIMD code at CPL0 that
#: KVM's emulator refuses and the mock cannot run either (it has no SIMD).
APPEND = "console=ttyS0 noapic acpi=off pci=off nosmp quiet clearcpuid=137,304"
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
def test_debian_kernel_boots_to_init_and_ends_through_isa_debug_exit(
        kvm_backend: object, tmp_path: Path) -> None:
    kernel, initrd = linux_dir()
    stats = tmp_path / "stats.txt"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "kvmcpu", "run", "--backend", "kvm", "--kernel", str(kernel),
         "--initrd", str(initrd), "--memory", "512M", "--append", APPEND,
         "--timeout", str(TIMEOUT), "--stats-file", str(stats), "--no-progress"],
        capture_output=True, text=True, timeout=TIMEOUT + 60, cwd=tmp_path)
    wall = time.monotonic() - start
    out = proc.stdout
    emulated = re.search(r"numEmulatedInstructions\s+(\d+)", stats.read_text()) \
        if stats.exists() else None
    print(f"\nlinux boot: status {proc.returncode}, {wall:.0f} s wall, "
          f"{emulated.group(1) if emulated else '?'} instructions through the fallback")
    tail = out[-3000:] + proc.stderr[-2000:]
    assert MARKER in out, tail
    release = out[out.index(MARKER) + len(MARKER):].split()
    assert release and re.match(r"\d+\.\d+", release[0]), tail  # uname -r ran
    assert proc.returncode == 1, tail  # isa-debug-exit, value 0
