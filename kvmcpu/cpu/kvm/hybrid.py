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
import time
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

from ... import uapi
from ...backends.exits import (
    Exit,
    HltExit,
    InternalErrorExit,
    IntrExit,
    IoExit,
    MmioExit,
    MsrExit,
)
from ...errors import KvmIoctlError
from .fallback import Burst, EmulationFallback, complete_access

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


_probes: Dict[Tuple[str, str], bool] = {}
_CODE, _RAM = 0x1000, 0x100000
#: popcnt eax, ebx; hlt
_PROBE = bytes.fromhex("f30fb8c3f4")
_STAR = (0x08 << 32) | (0x1B << 48)  # SYSCALL: CS 0x08, SS 0x10; SYSRET: CS 0x2b, SS 0x23
#: the LSTAR target of the SYSCALL probe: HLT (an exit at CPL0, a shutdown at CPL3)
_ENTRY = 0x1800


def _probe(name: str, backend: object, code: Dict[int, bytes], cpl: int,
           check: Callable[[Any], bool]) -> bool:
    """Run ``code`` ({address: bytes}) in a scratch VM's 64-bit vCPU at ``cpl`` and
    answer ``check(vcpu)``; False when the probe cannot run (an error is logged).
    Cached per process and backend class."""
    key = (name, type(backend).__name__)
    if key in _probes:
        return _probes[key]
    answer = False
    try:
        with backend.create_vm() as vm:  # type: ignore[attr-defined]
            ram = vm.add_ram(0, _RAM)
            for addr, data in code.items():
                ram[addr:addr + len(data)] = data
            with vm.create_vcpu(0) as vcpu:
                vcpu.set_cpuid2(backend.get_supported_cpuid())  # type: ignore[attr-defined]
                vcpu.set_long_mode(_CODE, rsp=0x8000, cpl=cpl, page_tables=0x40000)
                answer = bool(check(vcpu))
    except Exception as err:  # noqa: BLE001 - a probe that cannot run answers no
        log.warning("the %s probe failed: %s", name, err)
    _probes[key] = answer
    return answer


def emulates_cpl0(backend: object) -> bool:
    """True when KVM runs 64-bit CPL0 code in its instruction emulator (it refuses a
    POPCNT at CPL0 that silicon runs). False when the guest reaches the HLT, or when the
    probe cannot run (an error is logged). Cached per process."""
    def check(vcpu: Any) -> bool:
        for _ in range(4):
            ex = vcpu.run()
            if isinstance(ex, InternalErrorExit):
                return bool(ex.suberror == uapi.KVM_INTERNAL_ERROR_EMULATION)
            if isinstance(ex, HltExit):
                break
        return False

    return _probe("CPL0 emulation", backend, {_CODE: _PROBE}, 0, check)


def syscall_keeps_cpl3(backend: object) -> bool:
    """True when a SYSCALL at CPL3 reaches the LSTAR target with CS and SS still the
    user's (CPL3) -- nested ``kvm_pvm`` does so for a guest that is not PVM-aware, where
    the SDM's SYSCALL loads CS/SS from STAR at CPL0. Probed once per process: CPL3 code
    runs SYSCALL onto a HLT (at CPL0 a HLT exit; at CPL3 KVM shuts the guest down)."""
    def check(vcpu: Any) -> bool:
        sregs = vcpu.get_sregs()
        sregs.efer |= 1  # EFER.SCE
        vcpu.set_sregs(sregs)
        vcpu.set_msrs([(0xC0000081, _STAR), (0xC0000082, _ENTRY), (0xC0000084, 0)])
        vcpu.run()
        return bool(vcpu.get_regs().rip in (_ENTRY, _ENTRY + 1)
                    and vcpu.get_sregs().cs.dpl == 3)

    return _probe("SYSCALL", backend, {_CODE: b"\x0f\x05", _ENTRY: b"\xf4"}, 3, check)


#: A burst's host-time bound without a run-timer deadline, and in any case (ns).
BURST_NS, BURST_MAX_NS = 1_000_000, 20_000_000


class HybridBursts:
    """The x86 KVM CPU's burst mode (a mixin of ``X86KvmCPU``; see the module docstring
    and docs/architecture.md, "The hybrid CPU")."""

    #: MSRs the CPU itself serves (handleKvmExitMSR): the user-space local APIC's
    USER_MSRS: FrozenSet[int] = frozenset()

    def _run_burst(self, vcpu: Any) -> Optional[Exit]:
        """Where KVM emulates CPL0 code, run it on the mock instead (hybrid.py): a burst
        to the run timer's deadline. None: KVM runs this entry (CPL3, or the mock refused
        the instruction at RIP)."""
        cpu: Any = self
        kvm_ran = cpu._kvm_ran
        if kvm_ran:
            # KVM completes an IN/OUT/MMIO of its last exit only at its next KVM_RUN (the
            # state is consistent after it: KVM's API doc): a half entry before the state
            # moves, or the mock would run the instruction again.
            cpu._kvm_ran = False
            complete_access(vcpu)
        sregs = vcpu.get_sregs()
        if sregs.cr0 & 1 and sregs.ss.dpl != 0 and not cpu.user_on_mock:
            return None  # CPL3: KVM runs it natively
        fallback: EmulationFallback = cpu._fallback_for(vcpu)
        if kvm_ran:
            cpu._code_written_by_kvm(fallback)
        burst = cpu._burst
        if burst is None:
            try:
                khz = int(vcpu.get_tsc_khz())
            except KvmIoctlError:
                khz = 0
            burst = cpu._burst = Burst(cpu.params.emulationFallbackBurst, 0, khz,
                                        cpu._deliver_to, cpu._burst_exit)
            burst.user = bool(cpu.user_on_mock)
        eq = cpu.eventq
        next_at = eq.next_tick()
        burst.interrupted = lambda: eq.next_tick() < next_at
        deadline = getattr(cpu.run_timer, "deadline", None)
        now = time.monotonic_ns()
        burst.deadline_ns = min(deadline, now + BURST_MAX_NS) if deadline else now + BURST_NS
        try:
            result = fallback.run(vcpu, msrs=cpu.msr_list(), cpuid=cpu._fallback_cpuid or [],
                                  use_xsave=cpu._use_xsave, io=cpu._burst_io,
                                  mmio=cpu._burst_mmio,
                                  guest_debug=cpu.guest_debug_args(), burst=burst,
                                  sregs=sregs)
        except KvmIoctlError as err:
            raise cpu._fatal(f"the hybrid CPU could not move the state: {err}",
                              None) from err
        done = result.instructions
        stats = cpu.stats
        stats.numEmulatedInstructions.value += done
        stats.numEmulationBursts.value += 1
        cpu.ctr_insts += done
        stop = result.stop
        if isinstance(stop, InternalErrorExit):
            if done == 0:
                stats.numEmulationRefused.value += 1
                return None  # the mock cannot run it: KVM's emulator tries
            cpu._kvm_once = True
            return IntrExit(vcpu.kvm_run)  # KVM's emulator tries it at the next entry
        if stop is None:
            if burst.ended == "handed to KVM":
                cpu._kvm_once = True  # KVM acts on the MSR at its entry (kvm-clock's page)
            return IntrExit(vcpu.kvm_run)  # as if the run timer had ended it
        return stop

    def _log_kvm_writes(self) -> None:
        """Hybrid mode: KVM_MEM_LOG_DIRTY_PAGES on the VM's RAM slots, so that what guest
        code running in KVM writes (kernel text patched by jump labels, pages reused for
        code) reaches the mock's translation cache before its next burst."""
        cpu: Any = self
        bvm = cpu.vm.vm
        for slot in list(bvm.slots.values()):
            if not slot.flags & uapi.KVM_MEM_LOG_DIRTY_PAGES:
                bvm.set_user_memory_region(slot.slot, slot.guest_phys_addr, slot.memory,
                                           slot.flags | uapi.KVM_MEM_LOG_DIRTY_PAGES,
                                           size=slot.memory_size, offset=slot.offset)
            cpu._dirty_slots.append(bvm.slots[slot.slot])

    def _code_written_by_kvm(self, fallback: EmulationFallback) -> None:
        """The pages KVM's guest code dirtied since the last look go to the mock."""
        cpu: Any = self
        bvm = cpu.vm.vm
        for slot in cpu._dirty_slots:
            bits = int.from_bytes(bvm.get_dirty_log(slot.slot), "little")
            page = 0
            while bits:
                if bits & 1:
                    run = (~bits & (bits + 1)).bit_length() - 1  # consecutive dirty pages
                    fallback.kvm_wrote(slot.memory, slot.offset + (page << 12), run << 12)
                    bits >>= run
                    page += run
                else:
                    skip = (bits & -bits).bit_length() - 1
                    bits >>= skip
                    page += skip

    def _burst_io(self, ex: IoExit) -> int:
        """Port IO of the mock in a burst: counted in numIO as KVM's IO exits are."""
        cpu: Any = self
        cpu.stats.numIO.value += 1
        return int(cpu.handleKvmExitIO(ex))

    def _burst_mmio(self, ex: MmioExit) -> int:
        """MMIO of the mock in a burst: counted in numMMIO as KVM's MMIO exits are."""
        cpu: Any = self
        cpu.stats.numMMIO.value += 1
        return int(cpu.handleKvmExitMMIO(ex))

    def _burst_exit(self, ex: Exit) -> Optional[int]:
        """An exit of the mock in a burst that the CPU completes there (ticks), or None.

        MSR exits: the local APIC's MSRs go to :meth:`handleKvmExitMSR`; an MSR the mock
        does not know goes to the KVM vCPU (KVM_GET/SET_MSRS: KVM's paravirtual MSRs,
        kvm-clock's among them), and after a write the burst ends, so that KVM acts on it
        (it fills kvm-clock's page at the next entry) before the guest reads the result.
        """
        cpu: Any = self
        if not isinstance(ex, MsrExit):
            return None
        if ex.index in cpu.USER_MSRS:
            return int(cpu.handleKvmExitMSR(ex))
        vcpu = cpu.vcpu
        burst = cpu._burst
        if vcpu is None or burst is None:
            return None
        try:
            if ex.is_write:
                ex.error = 0 if vcpu.set_msrs([(ex.index, ex.data)]) == 1 else 1
                # KVM took it: it acts at its next entry. Refused: the mock's #GP.
                burst.end_after = not ex.error
            else:
                got = vcpu.get_msrs([ex.index])
                ex.error = 0 if ex.index in got else 1
                ex.data = got.get(ex.index, 0)
        except KvmIoctlError:
            ex.error = 1
        return 0

    def _deliver_to(self, mock: Any) -> None:
        """Before an entry of the mock in a burst: what ioctlRun does before KVM_RUN."""
        cpu: Any = self
        if cpu.pending_nmi:
            cpu.pending_nmi = False
            cpu.stats.numInterrupts += 1
            mock.nmi()
        src = cpu.interrupts
        if src is None:
            return
        run = mock.kvm_run
        if src.has_pending():
            if run.ready_for_interrupt_injection and run.if_flag:
                cpu.stats.numInterrupts += 1
                mock.interrupt(src.acknowledge())
                run.request_interrupt_window = 1 if src.has_pending() else 0
            else:
                run.request_interrupt_window = 1
        elif run.request_interrupt_window:
            run.request_interrupt_window = 0


__all__ = ["BURST_INSTRUCTIONS", "HIDDEN", "HybridBursts", "XCR0_KEPT", "emulates_cpl0",
           "syscall_keeps_cpl3",
           "hybrid_cpuid"]
