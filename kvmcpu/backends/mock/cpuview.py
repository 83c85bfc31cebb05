"""What the mock's helper modules may use of the engine: ``HelperCpu``.

The helpers (helpers.py, transfer.py, system.py, strings.py, xsave.py,
extensions.py, interrupts.py) implement the instructions generated code does not
inline and the delivery of events. They take this narrow interface, not the
``Engine``: the architectural state, the memory at the current privilege, the mode
the state implies, and the few engine services an instruction needs. ``Engine``
satisfies it structurally (mypy checks it where the engine passes itself), and
``tests/unit/mock/test_mock_helper_interface.py`` checks that every helper's
engine parameter is typed ``HelperCpu`` and uses nothing else of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Protocol, Tuple

if TYPE_CHECKING:
    from .mmu import Mmu
    from .state import CpuState
    from .vm import MockVm


class HelperCpu(Protocol):
    """The engine as the helper modules see it."""

    #: the architectural state: registers, RFLAGS, segments, control/debug registers, MSRs
    st: "CpuState"
    #: guest memory through paging at this vCPU's privilege (reads, writes, TLB, faults)
    mmu: "Mmu"
    #: the code segment's size in bits (16/32/64), from CS and EFER.LMA (``mode_changed``)
    bits: int
    #: the current privilege level (SS.DPL; CS.DPL in real/virtual-8086 terms as the SDM)
    cpl: int
    #: the stack's size in bits (SS.B, 64 in long mode)
    stack_bits: int
    #: set to end the block after this instruction (an exit to report: IO, MMIO, HLT)
    stop: List[bool]
    #: the VM: the port and MMIO buses and guest-physical memory
    vm: "MockVm"
    #: set by an instruction that opens an interrupt shadow (STI, MOV SS, POP SS)
    shadow_set: bool
    #: KVM_SET_GUEST_DEBUG's KVM_GUESTDBG_USE_SW_BP: INT3 exits to user space
    sw_bp: bool
    #: IN/INS data user space gave for a completed access (port, size, count, data)
    io_replay: List[Tuple[int, int, int, bytes]]
    #: the CPUID entries KVM_SET_CPUID2 gave the vCPU (kvm_cpuid_entry2)
    cpuid: List[Any]

    def mode_changed(self) -> None:
        """Recompute bits/cpl/stack_bits and the mode after CR0, EFER, CS or SS changed."""

    def tlb_flush(self) -> None:
        """Invalidate every cached translation (MOV CR3, INVLPG's fallback, mode changes)."""

    def tsc(self) -> int:
        """The time-stamp counter (RDTSC, IA32_TIME_STAMP_COUNTER)."""

    def set_tsc(self, value: int) -> None:
        """Write the time-stamp counter (WRMSR IA32_TIME_STAMP_COUNTER)."""


__all__ = ["HelperCpu"]
