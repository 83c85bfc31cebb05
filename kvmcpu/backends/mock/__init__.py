"""The mock backend: a software vCPU in pure Python with KVM's semantics.

``get_backend("mock")`` gives a :class:`MockBackend` whose VMs and vCPUs speak
the same ABI as /dev/kvm: the same ``uapi`` structures, a ``kvm_run`` page of
the real size (run page, PIO data page, ring page) filled the way KVM fills
it, guest RAM in the ``HostMemory`` buffers registered with
``set_user_memory_region``, and KVM's errnos for what it refuses.

What is emulated
----------------
* Execution modes: real mode, 16/32-bit protected mode (flat or based
  segments, descriptor-table segment loads), 64-bit long mode at CPL0 and
  CPL3, compatibility mode. Paging: 32-bit (4 KiB/4 MiB), PAE and 4-level
  with 4 KiB, 2 MiB and 1 GiB pages, A/D bits, U/S, R/W with CR0.WP, NX with
  EFER.NXE, SMEP; #PF with the architectural error code and CR2.
* The integer ISA a compiler emits: moves and extensions, the ALU, INC/DEC/
  NEG/NOT, MUL/IMUL/DIV/IDIV (#DE), shifts and rotates, SHLD/SHRD, BT*, BSF/
  BSR, LZCNT/TZCNT/POPCNT, BSWAP, SETcc/CMOVcc, XCHG/XADD/CMPXCHG/CMPXCHG8B/16B,
  stack operations, PUSHA/POPA, ENTER/LEAVE, near/far/indirect branches, LOOP
  and JCXZ, string instructions with REP/REPE/REPNE, CBW..CQO, flag
  instructions, IN/OUT/INS/OUTS, HLT, NOP forms, fences, INT n/INT3/INTO/
  IRET, CPUID (from set_cpuid2), RDTSC/RDTSCP, RDMSR/WRMSR, MOV CRn/DRn,
  LGDT/LIDT/SGDT/SIDT/LLDT/LTR/SLDT/STR/SMSW/LMSW, INVLPG, CLTS, SWAPGS,
  SYSCALL/SYSRET, VMCALL/VMMCALL (KVM hypercall ABI), FXSAVE/FXRSTOR and
  LDMXCSR/STMXCSR over the stored FPU state. Flags are exact; where the manuals
  leave flags or results undefined, the vCPU follows a vendor profile, Intel or
  AMD silicon, the host's vendor by default (vendor.py, undefined.py;
  ``MockBackend(vendor=...)``, ``KVMCPU_MOCK_VENDOR``). CPUID (the supported set)
  names that vendor.
* Events: KVM_INTERRUPT (queued, injected at the next instruction boundary of
  the next run, like KVM without an irqchip: user space checks
  ready_for_interrupt_injection), KVM_NMI, STI and MOV SS shadows, the
  interrupt window exit, exceptions through the IVT/IDT with error codes,
  double fault, and triple fault -> KVM_EXIT_SHUTDOWN.
* Exits as KVM: IO (one element per exit for INS/OUTS), MMIO (unbacked and
  read-only memory), HLT, SHUTDOWN, IRQ_WINDOW_OPEN, INTR, HYPERCALL
  (KVM_HC_MAP_GPA_RANGE when enabled), DEBUG (single-step, INT3, execution
  breakpoints), INTERNAL_ERROR/EMULATION with the instruction bytes for every
  instruction the engine does not implement, X86_RDMSR/X86_WRMSR
  (KVM_CAP_X86_USER_SPACE_MSR and KVM_X86_SET_MSR_FILTER, as KVM's). Coalesced MMIO/PIO zones fill a
  per-VM ring without exits.
* Determinism: an instruction ``budget`` (run() returns IntrExit when it is
  used up), exact ``instructions_retired`` and ``cycles`` counters, and a guest
  TSC that counts cycles (one per instruction) at TSC_KHZ.

What is NOT emulated
--------------------
No in-kernel irqchip, local APIC, IOAPIC or PIT (KVM_CAP_IRQCHIP/PIT2 = 0;
create_irqchip raises ENOTTY), no SMM, no VMX/SVM, no task switches or call/
task gates, no virtual-8086 mode, no x87/MMX/SSE/AVX execution (INTERNAL_ERROR
like an instruction KVM's emulator cannot handle), no segment limit checks, no
TSS I/O permission bitmap (IN/OUT above IOPL raise #GP), no legacy-mode SYSCALL
and no SYSENTER/SYSEXIT, no BOUND/ARPL/LAR/LSL/VERR/VERW, MONITOR/MWAIT,
XSAVE family or RDRAND (INTERNAL_ERROR), no SYNC_REGS, no real timing: time is
the instruction count. ONE_REG has no registers (EINVAL, as on x86 KVM).
The coalesced ring lives in the VM (``drain_coalesced_mmio()``), not in page 2
of each vCPU's ``run_page``.

Extras over the backend contract (``MockVcpu``)
-----------------------------------------------
* ``budget`` / ``set_budget(n_instructions: Optional[int])``: instructions left
  before ``run()`` returns IntrExit (exit_reason KVM_EXIT_INTR); it then stays 0
  (every run() returns IntrExit) until re-armed; None = unlimited.
* ``instructions_retired`` and ``cycles`` (int, exact; one cycle per instruction).
* ``script_exit(reason, **fields)`` or ``script_exit(callable)``: the next run()
  returns that exit, written into kvm_run as KVM would, without running the guest.
* ``kick()``: like the KVM backend, sets immediate_exit and stops exactly one
  run (at the next instruction boundary, or at once if none is in progress); the
  IntrExit it causes clears immediate_exit again. Safe from another thread.
* ``use_decode_cache`` (bool): switch the translation cache off (for measurements).
* ``engine``: the interpreter (``engine.dump_block()`` shows the generated source).

Speed: basic blocks are cached by physical address, RIP and mode, in two tiers:
a new block runs as per-instruction functions bound without ``compile()``
(tier0.py), and is compiled into one Python function from an IR (ir.py, ir_opt.py,
ir_emit.py: registers in locals, flags stored only where the block is left) once it
has run ``tier0.PROMOTE_AFTER`` times. Both are invalidated when the guest writes to a
page holding translated code, or the host does (``HostMemory`` tells the VM what
the host wrote: ``write``, ``[]=``, ``Vm.write_guest``, ``notify_written`` after
writes through ``view``; run() drops those pages' code).
Blocks are traces: they continue across not-taken conditional branches, and a
branch back to the block's start loops inside the generated function (bounded
by the budget and by kicks). Arithmetic flags are computed lazily.
"""

from __future__ import annotations

from . import gen_alu, gen_flow, gen_system  # noqa: F401  (register the generators)
from .backend import CAPABILITIES, TSC_KHZ, MockBackend
from .vcpu import MockVcpu
from .vm import MockVm

__all__ = ["MockBackend", "MockVm", "MockVcpu", "CAPABILITIES", "TSC_KHZ"]
