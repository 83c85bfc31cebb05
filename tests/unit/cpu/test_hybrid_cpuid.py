"""hybrid_cpuid: what the guest's CPUID may claim when its CPL0 code runs on the mock.

The bit positions are the Intel SDM's (vol. 2A, CPUID, tables 3-8 to 3-11 and leaf 0DH)
and AMD's APM (vol. 3, CPUID Fn8000_0001 ECX), written out here independently of the
module's table.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytest

from kvmcpu import uapi
from kvmcpu.cpu.kvm.hybrid import hybrid_cpuid


def _entry(function: int, index: int, eax: int = 0, ebx: int = 0, ecx: int = 0,
           edx: int = 0) -> uapi.kvm_cpuid_entry2:
    e = uapi.kvm_cpuid_entry2()
    e.function, e.index = function, index
    e.eax, e.ebx, e.ecx, e.edx = eax, ebx, ecx, edx
    return e


def _by_leaf(entries: List[uapi.kvm_cpuid_entry2]) -> Dict[Tuple[int, int], Any]:
    return {(e.function, e.index): e for e in entries}


def bit(n: int) -> int:
    return 1 << n


def test_simd_extensions_are_hidden_and_the_rest_kept() -> None:
    sse3, pclmul, ssse3, fma, cx16, sse41, sse42, x2apic, popcnt, aes, xsave, avx, f16c = (
        bit(0), bit(1), bit(9), bit(12), bit(13), bit(19), bit(20), bit(21), bit(23),
        bit(25), bit(26), bit(28), bit(29))
    fpu, tsc, sse, sse2 = bit(0), bit(4), bit(25), bit(26)
    bmi1, avx2, smep, erms, avx512f, sha, avx512bw = (bit(3), bit(5), bit(7), bit(9),
                                                      bit(16), bit(29), bit(30))
    gfni, vaes, umip = bit(8), bit(9), bit(2)
    serialize, amx_tile, md_clear = bit(14), bit(24), bit(10)
    lahf, sse4a, fma4 = bit(0), bit(6), bit(16)
    entries = [
        _entry(1, 0, ecx=sse3 | pclmul | ssse3 | fma | cx16 | sse41 | sse42 | x2apic
               | popcnt | aes | xsave | avx | f16c, edx=fpu | tsc | sse | sse2),
        _entry(7, 0, ebx=bmi1 | avx2 | smep | erms | avx512f | sha | avx512bw,
               ecx=gfni | vaes | umip, edx=serialize | amx_tile | md_clear),
        _entry(7, 1, eax=bit(4) | bit(5)),  # AVX-VNNI, AVX512_BF16
        _entry(0xD, 0, eax=0x2E7, ebx=2696, ecx=2696),  # x87 SSE AVX opmask ZMM PKRU
        _entry(0xD, 1, eax=0x1F, ebx=2440, ecx=0x1800),  # XSAVEOPT C GETBV1 S XFD
        _entry(0xD, 2, eax=256, ebx=576),  # the AVX component
        _entry(0x80000001, 0, ecx=lahf | sse4a | fma4),
    ]
    out = _by_leaf(hybrid_cpuid(entries))
    assert out[1, 0].ecx == cx16 | x2apic | popcnt | xsave
    assert out[1, 0].edx == fpu | tsc | sse | sse2
    assert out[7, 0].ebx == bmi1 | smep | erms
    assert out[7, 0].ecx == umip
    assert out[7, 0].edx == serialize | md_clear
    assert out[7, 1].eax == 0
    # XSAVE: x87 and SSE only (576 bytes: legacy area + header), no supervisor state
    assert (out[0xD, 0].eax, out[0xD, 0].ebx, out[0xD, 0].ecx, out[0xD, 0].edx) == (
        3, 576, 576, 0)
    assert (out[0xD, 1].eax, out[0xD, 1].ebx, out[0xD, 1].ecx) == (0xF, 576, 0)
    assert (0xD, 2) not in out
    assert out[0x80000001, 0].ecx == lahf
    # the input is left alone
    assert entries[0].ecx & avx and entries[3].eax == 0x2E7


@pytest.mark.kvm
def test_the_cpu_offers_the_hidden_cpuid_only_in_burst_mode(kvm_backend: Any) -> None:
    from kvmcpu.cpu.kvm.hybrid import BURST_INSTRUCTIONS, emulates_cpl0
    from kvmcpu.system import System

    def leaf1_ecx(**kw: Any) -> int:
        with System(backend="kvm", **kw) as system:
            system.load(b"\xf4", fmt="flat", load_addr=0x100000, mode="long")
            system.run(timeout=30)
            return next(e.ecx for e in system.cpu.tc.cpuid if (e.function, e.index) == (1, 0))

    kvm_ecx = next(e.ecx for e in kvm_backend.get_supported_cpuid()
                   if (e.function, e.index) == (1, 0))
    assert leaf1_ecx() == kvm_ecx
    burst = leaf1_ecx(cpu_params={"emulationFallbackBurst": BURST_INSTRUCTIONS})
    if emulates_cpl0(kvm_backend):
        assert burst == kvm_ecx & ~(bit(0) | bit(1) | bit(9) | bit(12) | bit(19) | bit(20)
                                    | bit(25) | bit(28) | bit(29))
    else:
        assert burst == kvm_ecx
