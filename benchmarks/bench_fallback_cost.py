"""What one instruction through the emulation fallback costs, next to a KVM exit.

The fallback (``kvmcpu/cpu/kvm/fallback.py``) moves a KVM vCPU's state into a
mock vCPU, runs one instruction there and moves the state back. Here a KVM vCPU
in 64-bit long mode at CPL0 sits in ``popcnt rax, rbx; jmp $-5`` and
``EmulationFallback.run`` is called on it over and over: every call is one
instruction (popcnt or jmp) through the fallback, state out, mock, state in.
Next to it, the plain KVM exit round trip: ``vcpu.run()`` on ``out dx, al;
jmp $-1`` at CPL0 (one KVM_EXIT_IO per call, what every exit costs at least).
Beside them, ``burst2000_us_per_instruction``: the same loop through bursts of 2000
instructions (``Burst``, what ``--emulation-fallback burst`` runs): the transfer
amortised, what is left is the mock's own speed on hot code.
Each figure is the median over the rounds (5; ``--quick``: 3).

``ratio`` is fallback µs per instruction / KVM exit µs (lower is better); the
target of 20 says a fallback should cost no more than about twenty plain exits,
so that a guest that needs one every few thousand instructions (a kernel's
occasional ``cmpxchg16b``) barely notices.

Run as a script: ``python benchmarks/bench_fallback_cost.py [--quick]``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
try:
    from kvmcpu.backends import IoExit, get_backend
    from kvmcpu.backends.exits import MmioExit
    from kvmcpu.cpu.kvm.fallback import Burst, EmulationFallback
    from kvmcpu.errors import BackendUnavailableError
    from kvmcpu.uapi import Cap
except ImportError:  # run as a script from a source checkout
    sys.path.insert(0, str(ROOT))
    from kvmcpu.backends import IoExit, get_backend
    from kvmcpu.backends.exits import MmioExit
    from kvmcpu.cpu.kvm.fallback import Burst, EmulationFallback
    from kvmcpu.errors import BackendUnavailableError
    from kvmcpu.uapi import Cap

TARGET_RATIO = 20.0
#: instructions per burst for the burst figure (--emulation-fallback burst runs up to
#: hybrid.BURST_INSTRUCTIONS, to the run timer's deadline)
BURST = 2000
CODE = 0x1000
POPCNT_LOOP = bytes.fromhex("f3480fb8c3") + bytes.fromhex("ebf9")  # popcnt rax, rbx; jmp -7
OUT_LOOP = bytes.fromhex("eeebfd")  # out dx, al; jmp back to it
MSRS = (0xC0000081, 0xC0000082, 0xC0000084, 0xC0000100, 0xC0000101, 0xC0000102)


def kvm_skip_reason() -> str | None:
    try:
        get_backend("kvm").close()
    except BackendUnavailableError as err:
        return f"no KVM: {err.reason}"
    return None


def _no_io(ex: IoExit) -> int:
    raise RuntimeError(f"unexpected IO in the popcnt loop: {ex!r}")


def _no_mmio(ex: MmioExit) -> int:
    raise RuntimeError(f"unexpected MMIO in the popcnt loop: {ex!r}")


def _fallback_us(n: int, burst_size: int = 0) -> float:
    """µs per instruction: ``n`` fallbacks of one instruction, or (``burst_size``) ``n``
    bursts of that many instructions each."""
    with get_backend("kvm") as kvm, kvm.create_vm() as vm:
        ram = vm.add_ram(0, 0x100000)
        ram[CODE:CODE + len(POPCNT_LOOP)] = POPCNT_LOOP
        vcpu = vm.create_vcpu(0)
        vcpu.set_long_mode(CODE, rsp=0x8000, page_tables=0x40000)
        regs = vcpu.get_regs()
        regs.rbx = 0x0123456789ABCDEF
        vcpu.set_regs(regs)
        cpuid = kvm.get_supported_cpuid()
        use_xsave = bool(kvm.check_extension(Cap.XSAVE))
        fb = EmulationFallback([(0, ram, 0)])
        try:
            burst = Burst(burst_size, 0, 0, lambda mock: None) if burst_size else None
            want = burst_size or 1

            def once() -> None:
                if burst is not None:
                    burst.deadline_ns = time.monotonic_ns() + 10**10
                res = fb.run(vcpu, msrs=MSRS, cpuid=cpuid, use_xsave=use_xsave, io=_no_io,
                             mmio=_no_mmio, burst=burst)
                if res.instructions != want:
                    raise RuntimeError(f"fallback ran {res.instructions} instructions")

            for _ in range(20):
                once()
            t0 = time.perf_counter()
            for _ in range(n):
                once()
            elapsed = time.perf_counter() - t0
            if vcpu.get_regs().rax != 32:
                raise RuntimeError("popcnt through the fallback gave a wrong result")
        finally:
            fb.close()
            vcpu.close()
    return elapsed / (n * (burst_size or 1)) * 1e6


def _kvm_exit_us(n: int) -> float:
    with get_backend("kvm") as kvm, kvm.create_vm() as vm:
        ram = vm.add_ram(0, 0x100000)
        ram[CODE:CODE + len(OUT_LOOP)] = OUT_LOOP
        vcpu = vm.create_vcpu(0)
        vcpu.set_long_mode(CODE, rsp=0x8000, page_tables=0x40000)
        regs = vcpu.get_regs()
        regs.rdx = 0x80
        vcpu.set_regs(regs)
        run = vcpu.run
        for _ in range(50):
            run()
        t0 = time.perf_counter()
        for _ in range(n):
            ex = run()
            if not isinstance(ex, IoExit):
                raise RuntimeError(f"unexpected exit {ex!r}")
        elapsed = time.perf_counter() - t0
        vcpu.close()
    return elapsed / n * 1e6


def run(quick: bool = False) -> Dict[str, Any]:
    """Measure and return the figures (see the module docstring)."""
    reason = kvm_skip_reason()
    if reason is not None:
        return {"skipped": reason}
    rounds = 3 if quick else 5
    n_fb, n_exit = (300, 3000) if quick else (1000, 10000)
    fb: List[float] = []
    ex: List[float] = []
    bu: List[float] = []
    for _ in range(rounds):
        fb.append(_fallback_us(n_fb))
        ex.append(_kvm_exit_us(n_exit))
        bu.append(_fallback_us(n_fb // 10, BURST))
    fallback_us, exit_us = statistics.median(fb), statistics.median(ex)
    ratio = statistics.median(f / e for f, e in zip(fb, ex))
    figures = {"fallback_us_per_instruction": round(fallback_us, 2),
               "kvm_exit_roundtrip_us": round(exit_us, 2),
               "fallback_per_exit_ratio": round(ratio, 2),
               f"burst{BURST}_us_per_instruction": round(statistics.median(bu), 3),
               "rounds": rounds}
    return {"figures": figures, "ratio": round(ratio, 2), "target": TARGET_RATIO,
            "higher_is_better": False}


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
