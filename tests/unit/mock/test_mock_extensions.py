"""RDRAND/RDSEED, RDPID and RDFSBASE/RDGSBASE/WRFSBASE/WRGSBASE on the mock against the
Intel SDM: #UD unless CPUID lists the feature (and, for the FS/GS forms, CR4.FSGSBASE
is set and the CPU is in 64-bit mode); #GP for a non-canonical base; RDRAND/RDSEED
leave CF=1 and the other arithmetic flags clear."""

from __future__ import annotations

from typing import Iterator, List

import pytest
from mockrig import Machine
from test_mock_xsave import HARNESS, _leaf, _with

from kvmcpu import uapi
from kvmcpu.backends.mock.backend import supported_cpuid

CR4_FSGSBASE = 1 << 16
FEATURES = (_leaf(1, 0, 0x50654, 0x800, 1 << 30, 0),  # RDRAND
            _leaf(7, 0, 0, (1 << 0) | (1 << 18), 1 << 22, 0))  # FSGSBASE, RDSEED; RDPID


@pytest.fixture()
def mx() -> Iterator[Machine]:
    mach = Machine(ram_size=8 << 20)
    try:
        yield mach
    finally:
        mach.close()


def _run(m: Machine, body: str, cpuid: List[uapi.kvm_cpuid_entry2], cr4: int = CR4_FSGSBASE,
         tsc_aux: int = 0) -> tuple:  # type: ignore[type-arg]
    m.vcpu.set_cpuid2(cpuid)
    m.long(HARNESS + body + "\n    out 0x90, al\n")
    s = m.vcpu.get_sregs()
    s.cr4 |= cr4
    m.vcpu.set_sregs(s)
    m.vcpu.set_msrs([(0xC0000103, tsc_aux)])
    ex = m.vcpu.run()
    assert ex.kind == "io", ex
    r = m.regs()
    return (r.r14 if r.r14 != 2**64 - 1 else -1), r


def _all(m: Machine) -> List[uapi.kvm_cpuid_entry2]:
    return _with(supported_cpuid(m.backend.profile), *FEATURES)


def test_wr_rd_fs_gs_base(mx: Machine) -> None:
    v, r = _run(mx, """
        mov rax, 0x00007fff12345678
        wrfsbase rax
        mov rcx, 0xffff800000001000
        wrgsbase rcx
        rdfsbase rbx
        rdgsbase rdx
        mov qword [0x300008], 0x55
        mov rax, 0xffffffff00300000
        mov r8, -1
        wrfsbase eax          ; 32-bit form: zero-extended
        rdfsbase r8d
        rdfsbase r9
        mov r10, [fs:8]       ; the new base is used at once
    """, _all(mx))
    assert v == -1
    assert r.rbx == 0x00007FFF12345678 and r.rdx == 0xFFFF800000001000
    assert r.r8 == 0x300000 and r.r9 == 0x300000 and r.r10 == 0x55
    s = mx.vcpu.get_sregs()
    assert s.fs.base == 0x300000 and s.gs.base == 0xFFFF800000001000


def test_fsgsbase_faults(mx: Machine) -> None:
    assert _run(mx, "mov rax, 0x0000800000000000\n wrfsbase rax", _all(mx))[0] == 13
    assert _run(mx, "rdfsbase rax", _all(mx), cr4=0)[0] == 6  # CR4.FSGSBASE clear
    assert _run(mx, "rdgsbase rax", supported_cpuid(mx.backend.profile))[0] == 6  # no CPUID


def test_rdrand_rdseed_set_cf_and_clear_the_other_flags(mx: Machine) -> None:
    v, r = _run(mx, """
        mov rax, -1
        push 0x8d4
        popfq
        rdrand rax
        pushfq
        pop r8
        mov bx, 0x1234
        mov rdx, 0xffffffffffff0000
        rdseed dx
        pushfq
        pop r9
        mov rcx, -1
        rdrand ecx
    """, _all(mx))
    assert v == -1
    assert r.r8 & 0x8D5 == 1 and r.r9 & 0x8D5 == 1
    assert r.rdx >> 16 == 0xFFFFFFFFFFFF  # 16-bit form keeps the rest
    assert r.rcx >> 32 == 0  # 32-bit form zero-extends
    v, _ = _run(mx, "rdrand rax", supported_cpuid(mx.backend.profile))
    assert v == 6  # the mock's own CPUID has no RDRAND
    assert _run(mx, "rdseed rax", supported_cpuid(mx.backend.profile))[0] == 6


def test_rdpid_reads_tsc_aux(mx: Machine) -> None:
    v, r = _run(mx, "mov rax, -1\n rdpid rax", _all(mx), tsc_aux=0x2A)
    assert v == -1 and r.rax == 0x2A
    assert _run(mx, "rdpid rax", supported_cpuid(mx.backend.profile))[0] == 6


def test_verr_verw(mx: Machine) -> None:
    # set_long_mode's GDT: 0x08 code (readable), 0x10 data (writable), 0x1b/0x23 user code/data
    v, r = _run(mx, """
        xor r8, r8
        mov ax, 0x10
        verw ax
        setz r8b                ; writable data, DPL0 at CPL0: 1
        mov ax, 0x08
        verw ax
        setz r9b                ; code: 0
        verr ax
        setz r10b               ; readable code: 1
        mov word [0x300000], 0x13
        verw [0x300000]
        setz r11b               ; RPL3 > DPL0: 0
        mov ax, 0x23
        verw ax
        setz r12b               ; DPL3 data at CPL0: 1
        xor eax, eax
        verr ax
        setz r13b               ; null selector: 0
        mov ax, 0xfff8
        verr ax
        setz bl                 ; outside the GDT: 0, no fault
    """, supported_cpuid(mx.backend.profile))
    assert v == -1
    assert [r.r8 & 0xFF, r.r9 & 0xFF, r.r10 & 0xFF, r.r11 & 0xFF, r.r12 & 0xFF, r.r13 & 0xFF,
            r.rbx & 0xFF] == [1, 0, 1, 0, 1, 0, 0]
