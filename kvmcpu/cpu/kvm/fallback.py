"""The hybrid CPU: what KVM's instruction emulator gives up on runs on the mock.

Where KVM emulates guest code (real and protected mode without unrestricted
guest, or every CPL0 instruction on a nested ``kvm_pvm`` host), its emulator
stops at instructions it does not know with ``KVM_EXIT_INTERNAL_ERROR`` /
``KVM_INTERNAL_ERROR_EMULATION``, RIP still at the instruction. The
:class:`EmulationFallback` of a KVM CPU then

1. reads the KVM vCPU's state through the backend contract (regs, sregs, the
   XSAVE image with XCR0 -- or the FPU where KVM has no XSAVE --, the MSRs both
   sides know, vCPU events),
2. writes it into a mock vCPU of a mock VM that maps the *same* ``HostMemory``
   buffers at the same guest addresses (no copy: a store the mock makes is in
   the guest's RAM at once),
3. runs the mock for a bounded number of instructions (``set_budget``),
   sending every port IO and MMIO exit it makes to the CPU's own handlers, so
   the same devices see them,
4. writes back what the mock changed and lets the CPU re-enter KVM.

Only the mock's public vCPU interface is used (``set_budget``,
``instructions_retired``, ``run``, the ``get_*``/``set_*`` of the contract).
Interrupts are not lost: an event KVM had injected travels in the vCPU events
both ways, and what the interrupt controller raises meanwhile stays pending
there until the next KVM entry delivers it. The TSC is read from KVM (the mock
answers RDTSC/RDTSCP with it) but never written back, so KVM's clock keeps
running.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ... import uapi
from ...backends.base import Backend, Vcpu, Vm
from ...backends.exits import (
    Exit,
    InternalErrorExit,
    IntrExit,
    IoExit,
    IrqWindowOpenExit,
    MmioExit,
)
from ...hostmem import HostMemory

log = logging.getLogger("kvmcpu.cpu.kvm")

#: The vCPU-event flags the mock takes (the others describe state it has not got).
_EVENT_FLAGS = (uapi.KVM_VCPUEVENT_VALID_NMI_PENDING | uapi.KVM_VCPUEVENT_VALID_SHADOW)
_MSR_TSC = 0x10
_IF = 0x200


@dataclasses.dataclass
class FallbackResult:
    """What one fallback did.

    Attributes:
        instructions: guest instructions the mock retired.
        ticks: the ticks the IO and MMIO accesses it made took.
        stop: the exit that ended the run early and that the CPU must handle
            (HLT, a triple fault, an internal error of the mock), or None.
    """

    instructions: int
    ticks: int
    stop: Optional[Exit] = None


def _raw(obj: ctypes.Structure) -> bytes:
    return ctypes.string_at(ctypes.addressof(obj), ctypes.sizeof(obj))


class EmulationFallback:
    """A mock VM and vCPU over a KVM VM's RAM (created on the first use).

    Args:
        regions: the ``(gpa, HostMemory, flags)`` list of the KVM VM (read on
            every use: regions added later are mapped then).
        max_instructions: the mock's instruction budget per fallback.
        backend_factory: opens the mock backend (tests may pass their own).
        vm_setup: called with the mock VM once it exists (the CPU's MSR exits).
    """

    def __init__(self, regions: Sequence[tuple[int, HostMemory, int]], *,
                 max_instructions: int = 1,
                 backend_factory: Optional[Callable[[], Backend]] = None,
                 vm_setup: Optional[Callable[[Vm], None]] = None) -> None:
        if not isinstance(max_instructions, int) or max_instructions < 1:
            raise ValueError(f"max_instructions must be a positive int, got {max_instructions!r}")
        self._regions = regions
        self.max_instructions = max_instructions
        self._factory = backend_factory
        self._vm_setup = vm_setup
        self._backend: Optional[Backend] = None
        self._vm: Optional[Vm] = None
        self._vcpu: Optional[Vcpu] = None
        self._mapped = 0
        self._msrs: List[int] = []
        self._cpuid_src: Optional[Sequence[uapi.kvm_cpuid_entry2]] = None
        self._known: Optional[frozenset[int]] = None
        self._carried: Dict[Tuple[int, ...], List[int]] = {}
        #: the KVM FPU/XSAVE image whose state the mock holds (b"": not known), and the
        #: mock's own image of it
        self._fpu_given = b""
        self._fpu_as_mock = b""
        #: the KVM sregs the mock holds (b"": not known), and the MSR values it holds
        self._sregs_given = b""
        self._msrs_held: Dict[int, int] = {}

    # ------------------------------------------------------------------ set-up
    def _mock(self) -> Vcpu:
        if self._vcpu is None:
            if self._factory is not None:
                backend = self._factory()
            else:
                from ...backends import get_backend

                backend = get_backend("mock")
            self._backend = backend
            self._vm = backend.create_vm()
            if self._vm_setup is not None:
                self._vm_setup(self._vm)
            self._vcpu = self._vm.create_vcpu(0)
            self._msrs = list(backend.get_msr_index_list())
        vm = self._vm
        assert vm is not None  # noqa: S101 - created with the vCPU
        while self._mapped < len(self._regions):
            gpa, memory, flags = self._regions[self._mapped]
            vm.set_user_memory_region(self._mapped, gpa, memory, flags)
            self._mapped += 1
        return self._vcpu

    def kvm_wrote(self, memory: HostMemory, offset: int, length: int) -> None:
        """KVM's guest code wrote ``[offset, +length)`` of ``memory`` (its dirty log): the
        mock drops what it translated from those pages (as after a host write)."""
        vm: Any = self._vm
        if vm is not None:
            vm.host_written(memory, offset, length)

    @property
    def active(self) -> bool:
        """True once the mock vCPU exists."""
        return self._vcpu is not None

    def close(self) -> None:
        """Close the mock vCPU, VM and backend. Idempotent."""
        for obj in (self._vcpu, self._vm, self._backend):
            if obj is not None:
                obj.close()
        self._vcpu = self._vm = None
        self._backend = None
        self._mapped = 0
        self._fpu_given = self._sregs_given = b""
        self._msrs_held = {}

    # ------------------------------------------------------------------ running
    def run(self, kvm: Vcpu, *, msrs: Sequence[int], cpuid: Sequence[uapi.kvm_cpuid_entry2],
            use_xsave: bool, io: Callable[[IoExit], int],
            mmio: Callable[[MmioExit], int],
            guest_debug: Optional[Tuple[int, Optional[List[int]]]] = None,
            burst: Optional[Burst] = None,
            sregs: Optional[uapi.kvm_sregs] = None) -> FallbackResult:
        """Run the instruction at the KVM vCPU's RIP (and at most ``max_instructions``
        in all) on the mock, and put the state it leaves back into ``kvm``.

        ``msrs`` are the MSRs to carry (those the mock does not list are left
        out), ``cpuid`` what the guest's CPUID says; ``io`` and ``mmio`` service
        the accesses the mock makes and return their ticks.

        ``burst``: run a burst instead (:class:`Burst`: up to its instruction
        budget and host-time deadline, while the guest stays at CPL0, interrupts
        delivered through its ``deliver``). ``sregs``: the KVM vCPU's, when the
        caller has just read them.

        Raises:
            KvmIoctlError: a state transfer failed (the KVM vCPU keeps its state).

        ``guest_debug``: the (control, debug registers) of the KVM vCPU's
        KVM_SET_GUEST_DEBUG, set on the mock for the run, so its steps and
        breakpoints end it with the DebugExit KVM would have given (the stop).
        """
        mock: Any = self._mock()  # a MockVcpu: set_budget, instructions_retired
        if cpuid is not self._cpuid_src:  # the CPU passes the same list until it changes
            mock.set_cpuid2(list(cpuid))
            self._cpuid_src = cpuid
        # -- KVM -> mock
        regs = kvm.get_regs()
        if sregs is None:
            sregs = kvm.get_sregs()
        known = self._known
        if known is None:
            known = self._known = frozenset(self._msrs)
        carried = self._carried.get(tuple(msrs))
        if carried is None:
            carried = [m for m in msrs if m in known and m != _MSR_TSC] + [_MSR_TSC]
            self._carried[tuple(msrs)] = carried
        msr_in = _get_msrs(kvm, carried)
        fpu_in: ctypes.Structure = kvm.get_xsave() if use_xsave else kvm.get_fpu()
        xcrs_in = kvm.get_xcrs() if use_xsave else None
        events = kvm.get_vcpu_events()
        events.flags &= _EVENT_FLAGS
        sregs_raw = _raw(sregs)
        if sregs_raw != self._sregs_given:
            mock.set_sregs(sregs)  # (it flushes the mock's TLB)
            self._sregs_given = sregs_raw
        else:  # the mock holds these; KVM may have changed page tables meanwhile
            mock.flush_tlb()
        mock.set_regs(regs)
        fpu_raw = _raw(fpu_in)
        if use_xsave:
            assert xcrs_in is not None  # noqa: S101 - read just above
            # XCR0 first: it says which components XSAVE/XRSTOR move on the mock.
            mock.set_xcrs(xcrs_in)
        if fpu_raw != self._fpu_given:  # else the mock holds that state already
            if use_xsave:
                mock.set_xsave(fpu_in)
                self._fpu_as_mock = _raw(mock.get_xsave())
            else:
                mock.set_fpu(fpu_in)
                self._fpu_as_mock = _raw(mock.get_fpu())
            self._fpu_given = fpu_raw
        held = self._msrs_held
        mock.set_msrs(sorted((m, v) for m, v in msr_in.items()
                             if m == _MSR_TSC or held.get(m) != v))
        mock.set_vcpu_events(events)
        # -- the run
        set_budget: Callable[[Optional[int]], None] = mock.set_budget
        start = int(mock.instructions_retired)
        ticks = 0
        stop: Optional[Exit] = None
        if guest_debug is not None:
            mock.set_guest_debug(*guest_debug)
        try:
            if burst is None:
                set_budget(self.max_instructions)
                while True:
                    ex = mock.run()
                    if isinstance(ex, IntrExit):
                        break
                    if isinstance(ex, IoExit):
                        ticks += io(ex)
                    elif isinstance(ex, MmioExit):
                        ticks += mmio(ex)
                    else:
                        stop = ex
                        break
            else:
                # What the first delivery decides on (the mock refreshes these after
                # each run): KVM's view of the state just moved in.
                mock_run = mock.kvm_run
                mock_run.if_flag = 1 if regs.rflags & _IF else 0
                mock_run.ready_for_interrupt_injection = 1 if (
                    mock_run.if_flag and not events.interrupt.shadow
                    and not events.interrupt.injected) else 0
                mock_run.request_interrupt_window = 0
                ticks, stop = burst.run(mock, msr_in.get(_MSR_TSC, 0), io, mmio)
        finally:
            set_budget(None)
            if guest_debug is not None:
                mock.set_guest_debug(0)
        done = int(mock.instructions_retired) - start
        if isinstance(stop, InternalErrorExit) and done == 0:
            self._msrs_held = msr_in  # what the mock was given and still holds
            return FallbackResult(0, ticks, stop)  # nothing ran: KVM keeps its state
        # -- mock -> KVM: what differs from what KVM gave
        after_sregs = mock.get_sregs()
        after_raw = _raw(after_sregs)
        if after_raw != sregs_raw:
            kvm.set_sregs(after_sregs)
            self._sregs_given = b""  # KVM's form of them is not known
        kvm.set_regs(mock.get_regs())
        if use_xsave:
            xcrs_out = mock.get_xcrs()
            # XSETBV: XCR0 before the XSAVE image it enables
            if xcrs_in is None or _raw(xcrs_out) != _raw(xcrs_in):
                kvm.set_xcrs(xcrs_out)
        # The image only when the run changed the FPU/SSE/XSAVE state (the mock's image
        # of it differs from the one it made of KVM's).
        fpu_out: Any = mock.get_xsave() if use_xsave else mock.get_fpu()
        if _raw(fpu_out) != self._fpu_as_mock:
            if use_xsave:
                kvm.set_xsave(fpu_out)
            else:
                kvm.set_fpu(fpu_out)
            self._fpu_given = b""  # KVM's form of it is not known
        held = self._msrs_held = _get_msrs(mock, carried)
        changed = [(m, v) for m, v in held.items() if m != _MSR_TSC and msr_in.get(m) != v]
        if changed:
            kvm.set_msrs(changed)
        out = mock.get_vcpu_events()
        out.flags &= _EVENT_FLAGS
        kvm.set_vcpu_events(out)
        # KVM refreshes these on its next exit; until then they describe the mock's state
        # (whether the CPU can take the interrupt the next entry may inject).
        kvm_run, mock_run = kvm.kvm_run, mock.kvm_run
        kvm_run.if_flag = mock_run.if_flag
        kvm_run.ready_for_interrupt_injection = mock_run.ready_for_interrupt_injection
        return FallbackResult(done, ticks, stop)

def complete_access(vcpu: Any) -> None:
    """A half entry (KVM_RUN with immediate_exit, either backend): the instruction of
    the vCPU's last exit completes (RIP past an OUT, the data of an IN, an MMIO read
    or RDMSR in its register), no further code runs."""
    run = vcpu.kvm_run
    run.immediate_exit = 1
    try:
        vcpu.run()
    finally:
        run.immediate_exit = 0


class Burst:
    """A burst of CPL0 code on the mock: up to ``budget`` instructions and until the
    host clock reaches ``deadline_ns`` (``time.monotonic_ns``), in chunks of
    ``chunk`` instructions; it ends early when the guest leaves CPL0 (KVM runs CPL3
    code natively), halts, or reaches what the mock cannot run.

    Between chunks the mock's TSC follows the host's: ``tsc_khz`` from the TSC KVM
    gave at the start (the mock's own counts one per instruction, far slower, and
    a kernel's ``udelay`` spins on it). ``deliver(mock)`` is called before each entry
    of the mock: it injects pending interrupts or requests the interrupt window, as
    the CPU does before a KVM entry; an interrupt window that opens continues the
    burst. ``inline(exit)`` completes other exits where the burst continues (the
    CPU's MSR exits: ticks), or returns None to end the burst with that exit; it
    sets ``end_after`` to end the burst after the instruction completes. An IO or MMIO
    access after which ``interrupted()`` is true ends it the same way.
    """

    def __init__(self, budget: int, deadline_ns: int, tsc_khz: int,
                 deliver: Callable[[Any], None],
                 inline: Optional[Callable[[Exit], Optional[int]]] = None,
                 chunk: int = 4000) -> None:
        self.budget = budget
        self.deadline_ns = deadline_ns
        self.tsc_khz = tsc_khz
        self.deliver = deliver
        self.inline = inline
        self.chunk = chunk
        #: asked after each IO/MMIO access: True ends the burst (the CPU's event queue
        #: has something due sooner than when the burst began)
        self.interrupted: Optional[Callable[[], bool]] = None
        self._complete = complete_access
        #: why the last burst ended: "budget", "deadline", "user", or the stop's kind
        self.ended = ""
        #: set by ``inline``: end the burst once the exit's instruction completed
        self.end_after = False
        #: CPL3 code runs in the burst too (the host's SYSCALL at CPL3 is wrong:
        #: hybrid.syscall_keeps_cpl3), instead of ending it for KVM
        self.user = False

    def run(self, mock: Any, tsc0: int, io: Callable[[IoExit], int],
            mmio: Callable[[MmioExit], int]) -> Tuple[int, Optional[Exit]]:
        """Run the burst on ``mock`` (its state set); returns (IO ticks, stop exit)."""
        now = time.monotonic_ns
        t0 = now()
        khz = self.tsc_khz
        left = self.budget
        ticks = 0
        deliver = self.deliver
        chunk = self.chunk
        n = chunk if chunk < left else left
        mock.set_budget(n)
        deliver(mock)
        while True:
            ex = mock.run()
            if isinstance(ex, IntrExit):
                left -= n
                t = now()
                if left <= 0:
                    self.ended = "budget"
                    return ticks, None
                if t >= self.deadline_ns:
                    self.ended = "deadline"
                    return ticks, None
                if mock.cpl != 0 and not self.user:
                    self.ended = "user"
                    return ticks, None
                if khz:
                    tsc = tsc0 + (t - t0) * khz // 1_000_000
                    if tsc > mock.tsc:
                        mock.set_msrs([(_MSR_TSC, tsc)])
                n = chunk if chunk < left else left
                mock.set_budget(n)
            elif isinstance(ex, (IoExit, MmioExit)):
                ticks += io(ex) if isinstance(ex, IoExit) else mmio(ex)
                if self.interrupted is not None and self.interrupted():
                    # a device wants the event loop (a stop, an event sooner than the
                    # deadline): complete the access, then end the burst
                    self._complete(mock)
                    self.ended = "event"
                    return ticks, None
            elif isinstance(ex, IrqWindowOpenExit):
                pass
            else:
                spent = self.inline(ex) if self.inline is not None else None
                if spent is None:
                    self.ended = ex.kind
                    return ticks, ex
                ticks += spent
                if self.end_after:  # complete the instruction, then back to KVM
                    self.end_after = False
                    self._complete(mock)
                    self.ended = "handed to KVM"
                    return ticks, None
            deliver(mock)


def _get_msrs(vcpu: Vcpu, indices: Sequence[int]) -> Dict[int, int]:
    """KVM_GET_MSRS of every index it knows (it stops at the first it does not)."""
    out: Dict[int, int] = {}
    wanted = list(indices)
    while wanted:
        values = vcpu.get_msrs(wanted)
        out.update(values)
        if len(values) >= len(wanted):
            break
        wanted = wanted[len(values) + 1:]
    return out


__all__ = ["Burst", "EmulationFallback", "FallbackResult", "complete_access"]
