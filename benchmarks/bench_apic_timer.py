"""LAPIC timer interrupts per host second a guest can take, next to QEMU.

The guest is ``guests/apic_timer.bin``: the local APIC's timer periodic at
20 us, ``sti; hlt`` between interrupts, the EOI written from the handler, until
N interrupts were taken (N from the Multiboot command line). Each
configuration runs N1 and N2 interrupts and the figure is
``(N2 - N1) / (t2 - t1)``, so start-up (QEMU's firmware, kvmcpu's set-up) is
left out:

* kvmcpu on KVM with the user-space APIC (``irqchip="user"``: KVM_INTERRUPT,
  the EOI an MMIO exit, HLT an exit), with KVM's in-kernel irqchip
  (``"kernel"``), with KVM's LAPICs and the user-space IOAPIC/PIC (``"split"``),
  and on the mock (smaller N);
* QEMU + KVM with its in-kernel irqchip, ``kernel-irqchip=off`` (its own
  user-space APIC) and ``kernel-irqchip=split``, where ``qemu-system-x86_64``
  is installed.

No target: the figures are printed side by side (``ratio`` is kvmcpu user /
QEMU kernel-irqchip=off, the like-for-like pair, when QEMU is there). Periods
the guest is too slow to take merge in the IRR, as on hardware, so the rate is
what the guest took, not what the timer produced.

Run: ``python benchmarks/bench_apic_timer.py [--quick]``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kvmcpu.system import System  # noqa: E402

IMAGE = ROOT / "guests" / "apic_timer.bin"


def _kvmcpu_seconds(backend: str, irqchip: str, n: int) -> float:
    with System(memory="32M", backend=backend, irqchip=irqchip) as system:
        system.load(str(IMAGE), cmdline=str(n))
        result = system.run(max_seconds=60, timeout=300)
        if system.serial.output != f"apic_timer: {n} ticks\n".encode() or result.status != 1:
            raise RuntimeError(f"{backend}/{irqchip}: {system.serial.output!r} {result}")
        return result.host_seconds


def _qemu_seconds(accel: List[str], n: int) -> float:
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None
    started = time.monotonic()
    done = subprocess.run([qemu, *accel, "-m", "32", "-kernel", str(IMAGE), "-append", str(n),
                           "-serial", "stdio", "-display", "none", "-monitor", "none",
                           "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
                          capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    if done.stdout != f"apic_timer: {n} ticks\n".encode() or done.returncode != 1:
        raise RuntimeError(f"qemu {accel}: {done.stdout!r} {done.stderr!r}")
    return seconds


def _rate(measure: Any, n1: int, n2: int) -> float:
    return (n2 - n1) / max(measure(n2) - measure(n1), 1e-9)


def run(quick: bool = False) -> Dict[str, Any]:
    try:
        System(memory="1M", backend="kvm").close()
    except Exception as err:  # noqa: BLE001 - the reason is the figure
        return {"skipped": f"KVM unusable: {err}"}
    n1, n2 = (200, 1000) if quick else (500, 3000)
    figures: Dict[str, Any] = {}
    configs: List[Tuple[str, Any, int, int]] = [
        ("kvmcpu_kvm_user_per_s", lambda n: _kvmcpu_seconds("kvm", "user", n), n1, n2),
        ("kvmcpu_kvm_kernel_per_s", lambda n: _kvmcpu_seconds("kvm", "kernel", n), n1, n2),
        ("kvmcpu_kvm_split_per_s", lambda n: _kvmcpu_seconds("kvm", "split", n), n1, n2),
        ("kvmcpu_mock_per_s", lambda n: _kvmcpu_seconds("mock", "user", n), 50, 200),
    ]
    if shutil.which("qemu-system-x86_64"):
        configs += [
            ("qemu_kvm_kernel_irqchip_per_s", lambda n: _qemu_seconds(["-accel", "kvm"], n),
             n1, n2),
            ("qemu_kvm_userspace_apic_per_s",
             lambda n: _qemu_seconds(["-accel", "kvm", "-machine", "kernel-irqchip=off"], n),
             n1, n2),
            ("qemu_kvm_split_irqchip_per_s",
             lambda n: _qemu_seconds(["-accel", "kvm", "-machine", "kernel-irqchip=split"], n),
             n1, n2),
        ]
    else:
        figures["qemu"] = "not installed"
    for name, measure, lo, hi in configs:
        figures[name] = round(_rate(measure, lo, hi), 1)
    result: Dict[str, Any] = {"figures": figures, "higher_is_better": True, "target": None}
    qemu_user = figures.get("qemu_kvm_userspace_apic_per_s")
    if isinstance(qemu_user, float) and qemu_user > 0:
        result["ratio"] = round(figures["kvmcpu_kvm_user_per_s"] / qemu_user, 3)
    return result


if __name__ == "__main__":
    out = run(quick="--quick" in sys.argv)
    for key, value in out.get("figures", out).items():
        print(f"{key:34} {value}")
    if "ratio" in out:
        print(f"{'ratio (user APIC vs QEMU user APIC)':34} {out['ratio']}")
