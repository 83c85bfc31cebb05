"""The hybrid CPU's two questions: does KVM emulate CPL0 code here, and what may the
guest's CPUID claim then.

Where KVM runs ring-0 code in its instruction emulator (nested ``kvm_pvm``: about a
microsecond per instruction, and some instructions refused), the mock runs hot
kernel code several times faster (``benchmarks/bench_mock_mips.py``:
``mock_over_kvm_*``). The x86 CPU then runs CPL0 code in *bursts* on the mock
(``emulationFallbackBurst``, ``fallback.py``) and leaves KVM what it runs natively
(CPL3) or what the mock refuses.

:func:`emulates_cpl0` finds out by running it once: a one-page 64-bit guest at CPL0
executes ``popcnt`` then ``hlt`` on a scratch VM. Native execution reaches the HLT;
an emulating host stops at the POPCNT with ``KVM_EXIT_INTERNAL_ERROR`` (emulation).
The answer is cached per process.

:func:`hybrid_cpuid` is what the guest is offered then: the CPU that runs its kernel
code is the mock or KVM's emulator, and neither executes SSE beyond SSE2's moves,
AVX, AVX-512, AMX or the SIMD crypto extensions, so their CPUID bits and XSAVE
components are cleared (the guest must not see features its CPU cannot run; QEMU
does the same when its TCG accelerator lacks a feature, with a warning). On a
nested host KVM may put the host's bits back into what ``KVM_GET_CPUID2`` says
(kvm_pvm does); the kernel then still sees the masked bits, because its CPUID
instructions run on the mock, which answers from the masked list.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Sequence, Tuple

from ... import uapi
from ...backends.exits import HltExit, InternalErrorExit

log = logging.getLogger("kvmcpu.cpu.kvm")

#: (function, index, register) -> the bits cleared in hybrid mode.
HIDDEN: Dict[Tuple[int, int, str], int] = {
    # leaf 1 ECX: SSE3 0, PCLMULQDQ 1, SSSE3 9, FMA 12, SSE4.1 19, SSE4.2 20, AES 25,
    # AVX 28, F16C 29
    (1, 0, "ecx"): (1 << 0) | (1 << 1) | (1 << 9) | (1 << 12) | (1 << 19) | (1 << 20)
    | (1 << 25) | (1 << 28) | (1 << 29),
    # leaf 7 EBX: AVX2 5, MPX 14, AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, SHA 29,
    # BW 30, VL 31
    (7, 0, "ebx"): (1 << 5) | (1 << 14) | (1 << 16) | (1 << 17) | (1 << 21) | (1 << 26)
    | (1 << 27) | (1 << 28) | (1 << 29) | (1 << 30) | (1 << 31),
    # leaf 7 ECX: AVX512_VBMI 1, PKU 3, OSPKE 4, VBMI2 6, GFNI 8, VAES 9, VPCLMULQDQ 10,
    # VNNI 11, BITALG 12, VPOPCNTDQ 14
    (7, 0, "ecx"): (1 << 1) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 8) | (1 << 9)
    | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 14),
    # leaf 7 EDX: AVX512_4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, AMX_BF16 22, AVX512_FP16 23,
    # AMX_TILE 24, AMX_INT8 25
    (7, 0, "edx"): (1 << 2) | (1 << 3) | (1 << 8) | (1 << 22) | (1 << 23) | (1 << 24)
    | (1 << 25),
    # leaf 7.1 EAX: AVX_VNNI 4, AVX512_BF16 5
    (7, 1, "eax"): (1 << 4) | (1 << 5),
    # leaf 0xD.1 EAX: XFD 4 (AMX's extended feature disable)
    (0xD, 1, "eax"): 1 << 4,
    # leaf 0x80000001 ECX (AMD): SSE4A 6, XOP 11, FMA4 16
    (0x80000001, 0, "ecx"): (1 << 6) | (1 << 11) | (1 << 16),
}
#: The most instructions of one burst (``emulationFallbackBurst`` of ``--emulation-fallback
#: burst``); bursts end sooner at the run timer's deadline.
BURST_INSTRUCTIONS = 1_000_000
#: XCR0 components kept in leaf 0xD: x87 and SSE (the others hold the hidden state).
XCR0_KEPT = 0x3
#: The legacy XSAVE area plus its header: the size of x87 + SSE state.
XSAVE_LEGACY_SIZE = 576


def hybrid_cpuid(entries: Sequence[uapi.kvm_cpuid_entry2]) -> List[uapi.kvm_cpuid_entry2]:
    """Copies of ``entries`` with the :data:`HIDDEN` bits cleared, leaf 0xD limited to
    x87 and SSE (sub-leaves of other components dropped, sizes of 576 bytes)."""
    out: List[uapi.kvm_cpuid_entry2] = []
    for e in entries:
        if e.function == 0xD and e.index >= 2 and not (XCR0_KEPT >> e.index) & 1:
            continue  # the component of a hidden feature
        c = uapi.kvm_cpuid_entry2.from_buffer_copy(e)
        for reg in ("eax", "ebx", "ecx", "edx"):
            mask = HIDDEN.get((c.function, c.index, reg))
            if mask:
                setattr(c, reg, getattr(c, reg) & ~mask)
        if c.function == 0xD and c.index == 0:
            c.eax &= XCR0_KEPT
            c.edx = 0
            c.ebx = c.ecx = XSAVE_LEGACY_SIZE
        elif c.function == 0xD and c.index == 1:
            c.ebx = XSAVE_LEGACY_SIZE
            c.ecx = c.edx = 0  # no supervisor (IA32_XSS) components
        out.append(c)
    return out


_emulates: Dict[str, bool] = {}
_CODE, _RAM = 0x1000, 0x100000
#: popcnt eax, ebx; hlt
_PROBE = bytes.fromhex("f30fb8c3f4")


def emulates_cpl0(backend: object) -> bool:
    """True when KVM runs 64-bit CPL0 code in its instruction emulator (it refuses a
    POPCNT at CPL0 that silicon runs). False when the guest reaches the HLT, or when the
    probe cannot run (an error is logged). Cached per process."""
    key = type(backend).__name__
    if key in _emulates:
        return _emulates[key]
    answer = False
    try:
        with backend.create_vm() as vm:  # type: ignore[attr-defined]
            ram = vm.add_ram(0, _RAM)
            ram[_CODE:_CODE + len(_PROBE)] = _PROBE
            with vm.create_vcpu(0) as vcpu:
                vcpu.set_cpuid2(backend.get_supported_cpuid())  # type: ignore[attr-defined]
                vcpu.set_long_mode(_CODE, rsp=0x8000, page_tables=0x40000)
                for _ in range(4):
                    ex = vcpu.run()
                    if isinstance(ex, InternalErrorExit):
                        answer = ex.suberror == uapi.KVM_INTERNAL_ERROR_EMULATION
                        break
                    if isinstance(ex, HltExit):
                        break
    except Exception as err:  # noqa: BLE001 - a probe that cannot run answers no
        log.warning("the CPL0 emulation probe failed: %s", err)
    _emulates[key] = answer
    return answer


__all__ = ["BURST_INSTRUCTIONS", "HIDDEN", "XCR0_KEPT", "emulates_cpl0", "hybrid_cpuid"]
