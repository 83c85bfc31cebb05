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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ... import uapi
from ...backends.base import Backend, Vcpu, Vm
from ...backends.exits import (
    Exit,
    InternalErrorExit,
    IntrExit,
    IoExit,
    MmioExit,
)
from ...hostmem import HostMemory

log = logging.getLogger("kvmcpu.cpu.kvm")

#: The vCPU-event flags the mock takes (the others describe state it has not got).
_EVENT_FLAGS = (uapi.KVM_VCPUEVENT_VALID_NMI_PENDING | uapi.KVM_VCPUEVENT_VALID_SHADOW)
_MSR_TSC = 0x10


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
    """

    def __init__(self, regions: Sequence[tuple[int, HostMemory, int]], *,
                 max_instructions: int = 1,
                 backend_factory: Optional[Callable[[], Backend]] = None) -> None:
        if not isinstance(max_instructions, int) or max_instructions < 1:
            raise ValueError(f"max_instructions must be a positive int, got {max_instructions!r}")
        self._regions = regions
        self.max_instructions = max_instructions
        self._factory = backend_factory
        self._backend: Optional[Backend] = None
        self._vm: Optional[Vm] = None
        self._vcpu: Optional[Vcpu] = None
        self._mapped = 0
        self._msrs: List[int] = []
        self._cpuid_src: Optional[Sequence[uapi.kvm_cpuid_entry2]] = None

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
            self._vcpu = self._vm.create_vcpu(0)
            self._msrs = list(backend.get_msr_index_list())
        vm = self._vm
        assert vm is not None  # noqa: S101 - created with the vCPU
        while self._mapped < len(self._regions):
            gpa, memory, flags = self._regions[self._mapped]
            vm.set_user_memory_region(self._mapped, gpa, memory, flags)
            self._mapped += 1
        return self._vcpu

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

    # ------------------------------------------------------------------ running
    def run(self, kvm: Vcpu, *, msrs: Sequence[int], cpuid: Sequence[uapi.kvm_cpuid_entry2],
            use_xsave: bool, io: Callable[[IoExit], int],
            mmio: Callable[[MmioExit], int],
            guest_debug: Optional[Tuple[int, Optional[List[int]]]] = None) -> FallbackResult:
        """Run the instruction at the KVM vCPU's RIP (and at most ``max_instructions``
        in all) on the mock, and put the state it leaves back into ``kvm``.

        ``msrs`` are the MSRs to carry (those the mock does not list are left
        out), ``cpuid`` what the guest's CPUID says; ``io`` and ``mmio`` service
        the accesses the mock makes and return their ticks.

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
        sregs = kvm.get_sregs()
        known = set(self._msrs)
        carried = [m for m in msrs if m in known and m != _MSR_TSC] + [_MSR_TSC]
        msr_in = _get_msrs(kvm, carried)
        fpu_in: ctypes.Structure = kvm.get_xsave() if use_xsave else kvm.get_fpu()
        events = kvm.get_vcpu_events()
        events.flags &= _EVENT_FLAGS
        mock.set_sregs(sregs)
        mock.set_regs(regs)
        if use_xsave:
            assert isinstance(fpu_in, uapi.kvm_xsave)  # noqa: S101 - read just above
            # XCR0 first: it says which components XSAVE/XRSTOR move on the mock.
            mock.set_xcrs(kvm.get_xcrs())
            mock.set_xsave(fpu_in)
        else:
            assert isinstance(fpu_in, uapi.kvm_fpu)  # noqa: S101 - read just above
            mock.set_fpu(fpu_in)
        mock.set_msrs(sorted(msr_in.items()))
        mock.set_vcpu_events(events)
        # What the mock made of it: the write-back sends only what the run changed.
        before_sregs = _raw(mock.get_sregs())
        # the FPU state in the form KVM takes back (XSAVE: with the extended components)
        before_fpu = _raw(mock.get_xsave() if use_xsave else mock.get_fpu())
        before_xcrs = _raw(mock.get_xcrs()) if use_xsave else b""
        before_msrs = _get_msrs(mock, carried)
        # -- the run
        set_budget: Callable[[Optional[int]], None] = mock.set_budget
        start = int(mock.instructions_retired)
        set_budget(self.max_instructions)
        ticks = 0
        stop: Optional[Exit] = None
        if guest_debug is not None:
            mock.set_guest_debug(*guest_debug)
        try:
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
        finally:
            set_budget(None)
            if guest_debug is not None:
                mock.set_guest_debug(0)
        done = int(mock.instructions_retired) - start
        if isinstance(stop, InternalErrorExit) and done == 0:
            return FallbackResult(0, ticks, stop)  # nothing ran: KVM keeps its state
        # -- mock -> KVM
        after_sregs = mock.get_sregs()
        if _raw(after_sregs) != before_sregs:
            kvm.set_sregs(after_sregs)
        kvm.set_regs(mock.get_regs())
        if use_xsave:
            xcrs_out = mock.get_xcrs()
            if _raw(xcrs_out) != before_xcrs:  # XSETBV: before the XSAVE image it enables
                kvm.set_xcrs(xcrs_out)
            xsave_out = mock.get_xsave()
            if _raw(xsave_out) != before_fpu:
                kvm.set_xsave(xsave_out)
        else:
            fpu_out = mock.get_fpu()
            if _raw(fpu_out) != before_fpu:
                kvm.set_fpu(fpu_out)
        changed = [(m, v) for m, v in _get_msrs(mock, carried).items()
                   if m != _MSR_TSC and before_msrs.get(m) != v]
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


__all__ = ["EmulationFallback", "FallbackResult"]
