"""guests/apic_msr.bin: x2APIC mode and the TSC-deadline timer, through the APIC's MSRs.

On KVM with the user-space APIC the x2APIC MSRs and IA32_TSC_DEADLINE reach
the model through KVM_CAP_X86_USER_SPACE_MSR (the filter for
IA32_TSC_DEADLINE, KVM_MSR_EXIT_REASON_INVAL for the x2APIC range, which KVM
does not let a filter cover); with the in-kernel irqchip KVM runs them. Both
print the same, and so does QEMU + KVM with ``-cpu host``. The mock offers
both in CPUID and hands the same MSRs to user space the same way (its
KVM_CAP_X86_USER_SPACE_MSR and filter), so it prints the same too.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kvmcpu.system import CAUSE_DEBUG_EXIT, System

ROOT = Path(__file__).resolve().parent.parent.parent
IMAGE = str(ROOT / "guests" / "apic_msr.bin")
TIMEOUT = 60

MSR_OUTPUT = (
    b"x2apic: enabled id 0\n"
    b"x2apic: version 14\n"
    b"x2apic: self-ipi 40 taken\n"
    b"x2apic: icr 41 taken\n"
    b"x2apic: xapic page gone\n"
    b"tsc-deadline: near deadline taken\n"
    b"tsc-deadline: far deadline held, cleared by 0\n"
    b"apic_msr: done\n"
)
NOT_OFFERED = b"x2apic: not offered\ntsc-deadline: not offered\napic_msr: done\n"


def _run(backend: str, irqchip: str) -> bytes:
    with System(memory="32M", backend=backend, irqchip=irqchip) as system:
        system.load(IMAGE)
        result = system.run(max_seconds=5, timeout=TIMEOUT)
        assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1), system.serial.output
        if irqchip == "user":
            assert system.vm.apic_msrs_taken
            lapic = system.devices.lapic
            assert lapic is not None and lapic.x2apic and lapic.tsc_hz > 0
        return bytes(system.serial.output)


@pytest.mark.kvm
@pytest.mark.parametrize("irqchip", ["user", "kernel", "split"])
def test_x2apic_and_tsc_deadline_on_kvm(irqchip: str) -> None:
    assert _run("kvm", irqchip) == MSR_OUTPUT


def test_the_mock_runs_x2apic_and_tsc_deadline_through_user_space_msrs() -> None:
    assert _run("mock", "user") == MSR_OUTPUT


def test_without_the_offer_the_guest_says_so() -> None:
    """CPUID leaf 1 without x2APIC and TSC-deadline (a CPU override): the guest skips both."""
    from kvmcpu.backends.mock.backend import supported_cpuid

    leaf1 = next(e for e in supported_cpuid() if e.function == 1)
    assert leaf1.ecx & (1 << 21) and leaf1.ecx & (1 << 24)  # the mock's offer
    regs = (leaf1.eax, leaf1.ebx, leaf1.ecx & ~((1 << 21) | (1 << 24)), leaf1.edx)
    with System(memory="32M", backend="mock",
                cpu_params={"cpuid_overrides": {(1, 0): regs}}) as system:
        system.load(IMAGE)
        result = system.run(max_seconds=5, timeout=TIMEOUT)
        assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1)
        assert system.serial.output == NOT_OFFERED


@pytest.mark.kvm
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
def test_qemu_kvm_cpu_host_prints_the_same(tmp_path: Path) -> None:
    done = subprocess.run(
        ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "32", "-kernel", IMAGE,
         "-serial", "stdio", "-display", "none", "-monitor", "none", "-no-reboot",
         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
        capture_output=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert (done.stdout, done.returncode) == (MSR_OUTPUT, 1), done.stderr
