"""RDFSBASE/RDGSBASE/WRFSBASE/WRGSBASE and RDRAND/RDSEED at CPL3: the mock against KVM
(user code runs on the host CPU there), both with the CPUID the KVM vCPU reports
(KVM_GET_CPUID2) and CR4.FSGSBASE set. The registers must agree; of RDRAND/RDSEED
only the flags and the bits the operand size leaves alone can (the values are
random)."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
from diffkit import CODE_GPA, PAGE_TABLES, RAM, STACK_TOP, host_mock
from mockasm import asm

from kvmcpu import uapi
from kvmcpu.backends.base import Backend
from kvmcpu.backends.exits import IoExit

CR4_FSGSBASE = 1 << 16
DONE_PORT = 0xE0
NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11")


def _effective_cpuid(backend: Backend) -> List[uapi.kvm_cpuid_entry2]:
    with backend.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        try:
            vcpu.set_cpuid2(backend.get_supported_cpuid())
            return list(vcpu.get_cpuid2())
        finally:
            vcpu.close()


def _has(cpuid: List[uapi.kvm_cpuid_entry2], function: int, reg: str, bit: int) -> bool:
    return any(e.function == function and e.index == 0 and getattr(e, reg) >> bit & 1
               for e in cpuid)


def _run(backend: Backend, source: str, cpuid: List[uapi.kvm_cpuid_entry2]) -> Dict[str, int]:
    code = asm(source) + b"\xe6" + bytes([DONE_PORT])
    with backend.create_vm() as vm:
        ram = vm.add_ram(0, RAM)
        ram[CODE_GPA:CODE_GPA + len(code)] = code
        vcpu = vm.create_vcpu(0)
        try:
            vcpu.set_cpuid2(cpuid)
            vcpu.set_long_mode(CODE_GPA, rsp=STACK_TOP, cpl=3, page_tables=PAGE_TABLES)
            s = vcpu.get_sregs()
            s.cr4 |= CR4_FSGSBASE
            vcpu.set_sregs(s)
            r = vcpu.get_regs()
            r.rip, r.rsp, r.rflags = CODE_GPA, STACK_TOP, 0x2 | (3 << 12)
            vcpu.set_regs(r)
            ex = vcpu.run()
            assert isinstance(ex, IoExit) and ex.port == DONE_PORT, ex
            out = vcpu.get_regs()
            res = {n: int(getattr(out, n)) for n in NAMES}
            res["rflags"] = int(out.rflags) & 0x8D5
            # pushed flags: the arithmetic ones only (a nested host may show its own IF/IOPL)
            res["r10"] &= 0x8D5
            res["r11"] &= 0x8D5
            return res
        finally:
            vcpu.close()


FSGS = """
    mov rax, 0x00007fff12345678
    wrfsbase rax
    mov rcx, 0xffff800000001000
    wrgsbase rcx
    rdfsbase rbx
    rdgsbase rdx
    mov eax, 0x89abcdef
    wrgsbase eax
    mov rsi, -1
    rdgsbase esi
    rdgsbase rdi
    mov r8, -1
    rdfsbase r8d
"""
RAND = """
    push 0x8d4
    popfq
    mov rax, 0xffffffffffff0000
    rdrand ax
    pushfq
    pop r10
    mov rbx, -1
    rdrand ebx
    shr rax, 16
    shr rbx, 32
"""
SEED = """
    push 0x8d4
    popfq
    mov rcx, 0x1111111111110000
    rdseed cx
    pushfq
    pop r11
    shr rcx, 16
"""


@pytest.mark.kvm
def test_fsgsbase_and_rdrand_match_kvm(kvm_backend: Any) -> None:
    cpuid = _effective_cpuid(kvm_backend)
    sources = []
    if _has(cpuid, 7, "ebx", 0):
        sources.append(FSGS)
    if _has(cpuid, 1, "ecx", 30):
        sources.append(RAND)
    if _has(cpuid, 7, "ebx", 18):
        sources.append(SEED)
    if not sources:
        pytest.skip("the KVM vCPU's CPUID has none of FSGSBASE, RDRAND, RDSEED")
    mock = host_mock()
    try:
        for src in sources:
            want = _run(kvm_backend, src, cpuid)
            got = _run(mock, src, cpuid)
            if src is SEED and not want["r11"] & 1:
                continue  # RDSEED may find no entropy on silicon (CF=0): nothing to compare
            if src is not FSGS:  # the last SHR's flags depend on the random bits
                del want["rflags"], got["rflags"]
            assert got == want, src
    finally:
        mock.close()
