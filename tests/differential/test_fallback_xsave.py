"""The XSAVE family and CLAC/STAC through the hybrid CPU: guests/xsave.asm at CPL0.

What the guest must print follows from the CPUID its vCPU reports (KVM_GET_CPUID2
after KVM_SET_CPUID2: KVM may change what it was given) and the image it restores
(see the guest's comment): on KVM -- where the emulator refuses these at CPL0 they
run on the mock through the fallback -- and on the mock alone. With the fallback
off, a host whose KVM needed it ends the run in status 126.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from kvmcpu import uapi
from kvmcpu.backends.base import Backend
from kvmcpu.system import System

ROOT = Path(__file__).resolve().parents[2]
GUEST = ROOT / "guests" / "xsave.bin"


def _effective_cpuid(backend: Backend) -> List[uapi.kvm_cpuid_entry2]:
    with backend.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        try:
            vcpu.set_cpuid2(backend.get_supported_cpuid())
            return list(vcpu.get_cpuid2())
        finally:
            vcpu.close()


def _regs(cpuid: List[uapi.kvm_cpuid_entry2], function: int, index: int = 0
          ) -> Tuple[int, int, int, int]:
    for e in cpuid:
        if e.function == function and (not e.flags & 1 or e.index == index):
            return e.eax, e.ebx, e.ecx, e.edx
    return 0, 0, 0, 0


def expected_line(cpuid: List[uapi.kvm_cpuid_entry2]) -> bytes:
    xsave = bool(_regs(cpuid, 1)[2] & (1 << 26))
    smap = bool(_regs(cpuid, 7)[1] & (1 << 20))
    if not xsave:
        return b"xsave:" + b" %016x" % 0 * 10 + b"\n"
    xcr0 = _regs(cpuid, 0xD)[0] & 7
    if xcr0 != 7:
        xcr0 &= 3
    values = [1 | (2 if smap else 0), xcr0, 1, 0x1FA0, 0x01AB00810100027F,
              0x0101010101010101, 0x1010101010101010, xcr0,
              0x3333333333333333 if xcr0 & 4 else 0, 3 if smap else 0]
    return b"xsave:" + b"".join(b" %016x" % v for v in values) + b"\n"


def _run(backend: str) -> Tuple[bytes, Dict[str, int], str]:
    with System(backend=backend) as system:
        system.load(str(GUEST))
        result = system.run(timeout=120)
        stats = system.cpu.stats
        return (system.serial.output, {"emulated": int(stats.numEmulatedInstructions.value)},
                result.cause)


def test_mock_runs_the_guest_as_its_cpuid_says() -> None:
    from kvmcpu.backends.mock import MockBackend

    backend = MockBackend()
    try:
        cpuid = _effective_cpuid(backend)
    finally:
        backend.close()
    out, counts, cause = _run("mock")
    assert cause == "isa-debug-exit", (cause, out)
    assert out == expected_line(cpuid)
    assert counts["emulated"] == 0


@pytest.mark.kvm
def test_kvm_runs_the_guest_through_the_fallback(kvm_backend: Any, tmp_path: Path) -> None:
    cpuid = _effective_cpuid(kvm_backend)
    out, counts, cause = _run("kvm")
    assert cause == "isa-debug-exit", (cause, out)
    assert out == expected_line(cpuid)
    if counts["emulated"]:
        # This host's KVM refused some of them: without the fallback the run ends in 126.
        proc = subprocess.run(
            [sys.executable, "-m", "kvmcpu", "run", "--backend", "kvm",
             "--emulation-fallback", "off", "--timeout", "120", str(GUEST)],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 126, proc.stderr
        assert "KVM internal error" in proc.stderr
