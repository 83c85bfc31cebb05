"""Debian's cloud kernel booted to its initramfs's /init: kvmcpu next to QEMU + KVM.

Both run the kernel and initramfs of guests/linux/build.py (``KVMCPU_LINUX_DIR``
names its --out directory; nothing is downloaded) with the same command line
(``console=ttyS0 noapic acpi=off pci=off nosmp``, see APPEND), 512 MiB; /init
powers off through ACPI S5 (and isa-debug-exit at port 0xf4 after it). kvmcpu:
``kvmcpu run --backend kvm --emulation-fallback burst``; QEMU:
``qemu-system-x86_64 -enable-kvm -cpu host -nographic -no-reboot``. Figures:
each one's wall time, exit status and whether /init's marker appeared; kvmcpu's
instructions on the mock, its bursts and its exits by kind; QEMU's last line and whether it
stopped at a KVM internal error (on a nested ``kvm_pvm`` host it does, at the
kernel's ``lock cmpxchg16b``: QEMU then pauses the VM and waits, and is ended
here a second later, status -15).

``ratio`` is kvmcpu's wall time over QEMU's where both reached the marker (lower
is better; target 3: the Python CPU model should not cost more than three QEMU
boots), else None. Minutes long: ``--quick`` skips it.

Run as a script: ``python benchmarks/bench_linux_boot.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
MARKER = "kvmcpu-initramfs: user space reached"
APPEND = "console=ttyS0 noapic acpi=off pci=off nosmp"
#: kvmcpu's stats in the figures
STATS = ("numEmulatedInstructions", "numEmulationBursts", "numEmulationRefused", "numVMExits",
         "numIO", "numMMIO", "numHalt", "numExitSignal", "numInterrupts")
TIMEOUT = 3000
TARGET_RATIO = 3.0


def _timed(cmd: List[str], cwd: str, env: Dict[str, str],
           stop_on: Tuple[str, ...] = ()) -> Tuple[float, int, str]:
    """Run ``cmd``; (wall seconds, status, output). The run is ended (status -15) a
    second after its output shows one of ``stop_on`` (QEMU pauses, and waits, at a
    KVM internal error), or at the timeout (status -1)."""
    log = Path(cwd) / f"out.{len(cmd)}.{time.monotonic_ns()}.txt"
    start = time.monotonic()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL)
        status = None
        while status is None and time.monotonic() - start < TIMEOUT + 120:
            try:
                status = proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                if stop_on and any(m in log.read_text(errors="replace") for m in stop_on):
                    time.sleep(1)
                    proc.terminate()
                    status = proc.wait()
        if status is None:
            proc.kill()
            proc.wait()
            status = -1
    return time.monotonic() - start, status, log.read_text(errors="replace")


def _last_line(out: str) -> str:
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def run(quick: bool = False) -> Dict[str, Any]:
    if quick:
        return {"skipped": "a Linux boot takes minutes: run without --quick"}
    d = os.environ.get("KVMCPU_LINUX_DIR", "")
    kernel, initrd = Path(d) / "vmlinuz", Path(d) / "initramfs.cpio"
    if not d or not kernel.is_file() or not initrd.is_file():
        return {"skipped": "set KVMCPU_LINUX_DIR to the --out directory of "
                           "guests/linux/build.py"}
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return {"skipped": "no /dev/kvm"}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    figures: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kvmcpu-linux-boot-") as tmp:
        stats = Path(tmp) / "stats.txt"
        wall, status, out = _timed(
            [sys.executable, "-m", "kvmcpu", "run", "--backend", "kvm", "--kernel", str(kernel),
             "--initrd", str(initrd), "--memory", "512M", "--append", APPEND,
             "--emulation-fallback", "burst", "--timeout", str(TIMEOUT), "--stats-file",
             str(stats), "--no-progress"], tmp, env)
        text = stats.read_text() if stats.exists() else ""
        figures.update(kvmcpu_wall_s=round(wall, 1), kvmcpu_status=status,
                       kvmcpu_marker=MARKER in out)
        for name in STATS:
            m = re.search(rf"cpu0\.{name}\s+(\d+)", text)
            figures[f"kvmcpu_{name}"] = int(m.group(1)) if m else None
        qemu = shutil.which("qemu-system-x86_64")
        if qemu is not None:
            wall_q, status_q, out_q = _timed(
                [qemu, "-enable-kvm", "-cpu", "host", "-m", "512", "-nographic", "-no-reboot",
                 "-kernel", str(kernel), "-initrd", str(initrd), "-append", APPEND,
                 "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"], tmp, env,
                stop_on=("KVM internal error", "emulation failure"))
            figures.update(qemu_wall_s=round(wall_q, 1), qemu_status=status_q,
                           qemu_marker=MARKER in out_q,
                           qemu_internal_error="KVM internal error" in out_q,
                           qemu_last_line=_last_line(out_q))
    ratio = None
    if figures.get("kvmcpu_marker") and figures.get("qemu_marker"):
        ratio = round(figures["kvmcpu_wall_s"] / figures["qemu_wall_s"], 2)
    return {"figures": figures, "ratio": ratio, "target": TARGET_RATIO,
            "higher_is_better": False}


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
