"""IPI ping-pong round trip in microseconds of host time, next to QEMU + KVM.

The guests are ``guests/smp_ipi10.bin``, ``smp_ipi100.bin`` and ``smp_ipi1000.bin``:
guests/smp.asm's bring-up on 2 CPUs, then 10 or 1000 rounds of BSP -> cpu 1
(fixed IPI 0x40) and cpu 1 -> BSP (0x41), each side waiting with ``sti; hlt``.
The round trip is ``(t1000 - t10) / 990`` (start-up left out; ``t100`` for the
slow ones: the mock and QEMU's user-space APIC), for

* kvmcpu on KVM with the user-space APIC: 2 vCPUs on the one event queue and
  on host threads (``parallel=True``, where a halted CPU is woken at the next
  ``sim_quantum`` boundary, so the quantum bounds the round trip);
* KVM's in-kernel irqchip (its LAPIC delivers the IPIs and wakes the halted
  vCPU inside KVM; host threads);
* the mock (on the one queue);
* QEMU + KVM (its in-kernel irqchip, and ``kernel-irqchip=off``), where
  ``qemu-system-x86_64`` is installed.

No target: the figures are printed side by side (``ratio``: kvmcpu one queue
over QEMU with kernel-irqchip=off, the like-for-like pair, else over QEMU with
its in-kernel irqchip). A QEMU run that does not end within ``QEMU_TIMEOUT``
is reported as not measured.

Run: ``python benchmarks/bench_ipi_roundtrip.py [--quick]``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kvmcpu.errors import ConfigError  # noqa: E402
from kvmcpu.system import System  # noqa: E402

#: Host seconds a QEMU run may take (on nested kvm_pvm QEMU's user-space APIC with
#: two vCPUs did not finish 100 rounds in 10 minutes).
QEMU_TIMEOUT = 120


def _image(rounds: int) -> Path:
    return ROOT / "guests" / f"smp_ipi{rounds}.bin"


def _check(output: bytes, rounds: int, what: str) -> None:
    if f"smp: ping-pong {rounds} rounds\nsmp: done\n".encode() not in output:
        raise RuntimeError(f"{what}: {output!r}")


def _kvmcpu(backend: str, parallel: bool, irqchip: str = "user") -> Callable[[int], float]:
    def measure(rounds: int) -> float:
        with System(memory="32M", backend=backend, smp=2, parallel=parallel,
                    irqchip=irqchip) as system:
            system.load(str(_image(rounds)))
            result = system.run(timeout=600)
            _check(system.serial.output, rounds, f"{backend} parallel={parallel}")
            return result.host_seconds
    return measure


def _qemu(accel: List[str]) -> Callable[[int], float]:
    def measure(rounds: int) -> float:
        qemu = shutil.which("qemu-system-x86_64")
        assert qemu is not None
        started = time.monotonic()
        done = subprocess.run([qemu, *accel, "-smp", "2", "-m", "32", "-kernel",
                               str(_image(rounds)), "-serial", "stdio", "-display", "none",
                               "-monitor", "none", "-no-reboot", "-device",
                               "isa-debug-exit,iobase=0xf4,iosize=0x04"],
                              capture_output=True, timeout=QEMU_TIMEOUT,
                              stdin=subprocess.DEVNULL)
        seconds = time.monotonic() - started
        _check(done.stdout, rounds, f"qemu {accel}")
        return seconds
    return measure


def _round_trip_us(measure: Callable[[int], float], lo: int, hi: int) -> float:
    return (measure(hi) - measure(lo)) / (hi - lo) * 1e6


def run(quick: bool = False) -> Dict[str, Any]:
    try:
        System(memory="1M", backend="kvm").close()
    except Exception as err:  # noqa: BLE001 - the reason is the figure
        return {"skipped": f"KVM unusable: {err}"}
    figures: Dict[str, Any] = {}
    configs: List[Tuple[str, Callable[[int], float], int, int]] = [
        ("kvmcpu_kvm_user_one_queue_us", _kvmcpu("kvm", False), 10, 1000),
        ("kvmcpu_kvm_user_threads_us", _kvmcpu("kvm", True), 10, 1000),
    ]
    if not quick:
        configs.append(("kvmcpu_mock_us", _kvmcpu("mock", False), 10, 100))
    if shutil.which("qemu-system-x86_64"):
        configs += [
            ("qemu_kvm_kernel_irqchip_us", _qemu(["-accel", "kvm"]), 10, 1000),
            ("qemu_kvm_userspace_apic_us",
             _qemu(["-accel", "kvm", "-machine", "kernel-irqchip=off"]), 10, 100),
        ]
    else:
        figures["qemu"] = "not installed"
    try:
        System(memory="1M", backend="kvm", smp=2, irqchip="kernel").close()
        configs.insert(2, ("kvmcpu_kvm_kernel_irqchip_us", _kvmcpu("kvm", True, "kernel"),
                           10, 1000))
    except ConfigError as err:
        figures["kvmcpu_kvm_kernel_irqchip_us"] = f"not measured: {err}"
    try:
        System(memory="1M", backend="kvm", smp=2, irqchip="split").close()
        configs.insert(3, ("kvmcpu_kvm_split_irqchip_us", _kvmcpu("kvm", True, "split"),
                           10, 1000))
    except ConfigError as err:
        figures["kvmcpu_kvm_split_irqchip_us"] = f"not measured: {err}"
    for name, measure, lo, hi in configs:
        try:
            figures[name] = round(_round_trip_us(measure, lo, hi), 1)
        except subprocess.TimeoutExpired as err:
            figures[name] = f"not measured: no end within {err.timeout:g} s"
        print(f"  {name}: {figures[name]}", file=sys.stderr, flush=True)
    result: Dict[str, Any] = {"figures": figures, "higher_is_better": False, "target": None}
    qemu = figures.get("qemu_kvm_userspace_apic_us")
    if not isinstance(qemu, float):
        qemu = figures.get("qemu_kvm_kernel_irqchip_us")
    if isinstance(qemu, float) and qemu > 0:
        result["ratio"] = round(figures["kvmcpu_kvm_user_one_queue_us"] / qemu, 3)
    return result


if __name__ == "__main__":
    out = run(quick="--quick" in sys.argv)
    for key, value in out.get("figures", out).items():
        print(f"{key:34} {value}")
    if "ratio" in out:
        print(f"{'ratio (one queue vs QEMU user APIC)':34} {out['ratio']}")
