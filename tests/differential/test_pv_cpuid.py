"""The kernel's view of the machine: KVM's paravirtual CPUID leaves and kvm-clock.

Where the backend is KVM, the CPU gives its vCPU the CPUID KVM_GET_SUPPORTED_CPUID
reports, which carries KVM's leaves: 0x40000000 with the signature "KVMKVMKVM\\0\\0\\0"
and the highest leaf, 0x40000001 with the KVM_FEATURE_* bits
(Documentation/virt/kvm/x86/cpuid.rst). A guest executing CPUID sees them, and
the kvm-clock MSR (MSR_KVM_SYSTEM_TIME_NEW, 0x4b564d01) works because KVM
implements it: the next entry fills the pvclock structure (struct
pvclock_vcpu_time_info) at the address written. The mock has no hypervisor
leaves (its CPUID answers zeros there, so a kernel finds no KVM signature and
uses the TSC, PIT and HPET) and refuses the kvm-clock MSRs with #GP, as KVM
does for an MSR it does not know.
"""

from __future__ import annotations

import struct
from typing import Any, Dict, List, Tuple

import pytest
from diffkit import BUF_GPA, CODE_GPA, PAGE_TABLES, RAM, STACK_TOP

from kvmcpu.backends.base import Backend
from kvmcpu.backends.exits import IoExit
from kvmcpu.backends.mock import MockBackend

KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"
MSR_KVM_SYSTEM_TIME_NEW = 0x4B564D01
KVM_FEATURE_CLOCKSOURCE2 = 1 << 3


def _run(backend: Backend, code: bytes, regs: Dict[str, int], *, runs: int = 1,
         cpuid: bool = True) -> Tuple[Dict[str, int], List[Any], bytes]:
    """Run ``code`` at CPL0 in long mode ``runs`` exits long; returns the registers, the
    exits' kinds and the first 64 bytes at BUF_GPA."""
    with backend.create_vm() as vm:
        ram = vm.add_ram(0, RAM)
        ram[CODE_GPA:CODE_GPA + len(code)] = code
        vcpu = vm.create_vcpu(0)
        try:
            if cpuid:
                vcpu.set_cpuid2(backend.get_supported_cpuid())
            vcpu.set_long_mode(CODE_GPA, rsp=STACK_TOP, cpl=0, page_tables=PAGE_TABLES)
            r = vcpu.get_regs()
            for name, value in regs.items():
                setattr(r, name, value)
            r.rip, r.rsp, r.rflags = CODE_GPA, STACK_TOP, 2
            vcpu.set_regs(r)
            kinds = []
            for _ in range(runs):
                ex = vcpu.run()
                kinds.append((ex.kind, getattr(ex, "port", None)))
                if not isinstance(ex, IoExit):
                    break
            out = vcpu.get_regs()
            names = ("rax", "rbx", "rcx", "rdx")
            return ({n: int(getattr(out, n)) for n in names}, kinds,
                    bytes(ram[BUF_GPA:BUF_GPA + 64]))
        finally:
            vcpu.close()


CPUID_OUT = bytes.fromhex("0fa2e6e0")  # cpuid; out 0xe0, al


def _signature(r: Dict[str, int]) -> bytes:
    return struct.pack("<III", r["rbx"] & 0xFFFFFFFF, r["rcx"] & 0xFFFFFFFF,
                       r["rdx"] & 0xFFFFFFFF)


@pytest.mark.kvm
def test_kvm_guest_sees_kvm_s_leaves_as_supported_cpuid_reports_them(kvm_backend: Any) -> None:
    supported = {(e.function, e.index): e for e in kvm_backend.get_supported_cpuid()}
    if (0x40000000, 0) not in supported:
        pytest.skip("this KVM reports no paravirtual leaves")
    sig = supported[(0x40000000, 0)]
    assert struct.pack("<III", sig.ebx, sig.ecx, sig.edx) == KVM_SIGNATURE
    r, _, _ = _run(kvm_backend, CPUID_OUT, {"rax": 0x40000000})
    assert _signature(r) == KVM_SIGNATURE
    assert r["rax"] == sig.eax and r["rax"] >= 0x40000001
    feats = supported[(0x40000001, 0)]
    r, _, _ = _run(kvm_backend, CPUID_OUT, {"rax": 0x40000001})
    assert r["rax"] == feats.eax and r["rax"] & KVM_FEATURE_CLOCKSOURCE2


@pytest.mark.kvm
def test_kvm_clock_msr_fills_the_pvclock_page(kvm_backend: Any) -> None:
    # wrmsr MSR_KVM_SYSTEM_TIME_NEW = BUF_GPA | 1 (enable); out 0xe1; out 0xe0
    code = bytes.fromhex("0f30e6e1e6e0")
    regs = {"rcx": MSR_KVM_SYSTEM_TIME_NEW, "rax": BUF_GPA | 1, "rdx": 0}
    _, kinds, page = _run(kvm_backend, code, regs, runs=2)
    assert kinds == [("io", 0xE1), ("io", 0xE0)], kinds
    version, _, tsc_timestamp, system_time, mul, shift = struct.unpack_from("<IIQQIb", page)
    assert version and version % 2 == 0  # written, and not in the middle of an update
    assert mul and tsc_timestamp and system_time >= 0 and -32 < shift < 32


def test_mock_has_no_hypervisor_leaves_and_refuses_kvm_clock() -> None:
    backend = MockBackend()
    try:
        assert not [e for e in backend.get_supported_cpuid()
                    if 0x40000000 <= e.function < 0x50000000]
        r, _, _ = _run(backend, CPUID_OUT, {"rax": 0x40000000})
        assert _signature(r) != KVM_SIGNATURE and r["rax"] == 0
        assert MSR_KVM_SYSTEM_TIME_NEW not in backend.get_msr_index_list()
        # wrmsr with no IDT: the #GP becomes a triple fault (shutdown)
        _, kinds, _ = _run(backend, bytes.fromhex("0f30e6e0"),
                           {"rcx": MSR_KVM_SYSTEM_TIME_NEW, "rax": BUF_GPA | 1})
        assert kinds[-1][0] == "shutdown", kinds
    finally:
        backend.close()


@pytest.mark.kvm
def test_the_kvm_cpu_gives_its_guest_kvm_s_leaves(kvm_backend: Any) -> None:
    """The CPU's default CPUID (what a kernel booted with ``kvmcpu run`` is given) has
    them."""
    from kvmcpu.system import System

    with System(backend="kvm") as system:
        leaves = {(e.function, e.index): e for e in system.cpu.default_cpuid()}
        sig = leaves.get((0x40000000, 0))
        assert sig is not None and struct.pack("<III", sig.ebx, sig.ecx, sig.edx) \
            == KVM_SIGNATURE
        assert (0x40000001, 0) in leaves
