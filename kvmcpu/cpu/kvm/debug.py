"""PC events, instruction-count events and single steps of a KVM CPU.

gem5 lets a simulation act when a thread reaches an address (``PCEvent``) or
has committed N instructions (``scheduleInstStop``). :class:`KvmDebug` gives
the KVM CPU both, on top of ``KVM_SET_GUEST_DEBUG``; the GDB stub
(:mod:`kvmcpu.gdb`) is built on them.

**PC events** (:meth:`KvmDebug.schedule_pc_event`). The callback runs at the
instruction boundary *before* the instruction at the address, with the thread
context (synchronised from the vCPU) as its argument; it may read and change
the context (a changed context is pushed into the vCPU before the next entry),
schedule or remove events, request a single step or stop the simulation
(:func:`~kvmcpu.sim.eventq.exit_sim_loop`). Addresses are linear (virtual)
addresses, as gdb's. Several events at one address run in the order they were
scheduled.

* As many distinct addresses as data events leave debug registers free (four
  without them) use the vCPU's hardware breakpoints (DR0-DR3 through
  ``KVM_GUESTDBG_USE_HW_BP``) on every backend. Resuming from an
  address whose breakpoint just fired steps over it: one single step with the
  breakpoints armed; a backend that fires the breakpoint again instead (no
  RFLAGS.RF semantics, e.g. KVM's instruction emulator) is detected by the
  exit (DR6.Bn without DR6.BS at the same address) and from then on the
  breakpoint being stepped over is left out of that step.
* Software breakpoints (``software=True``, gdb's ``Z0``; on KVM also every
  address beyond the free debug registers): INT3 patched into guest memory
  (:mod:`.swbreak`: hidden from the System's memory API and the GDB stub, seen
  by the guest's own reads of its code), with ``KVM_GUESTDBG_USE_SW_BP``; the
  #BP leaves the guest as ``KVM_EXIT_DEBUG`` (exception 3) at the INT3, or,
  where KVM's emulator runs the code, as an emulation failure at the INT3
  (:meth:`KvmDebug.software_breakpoint_exit`). Resuming from one puts the
  original byte back for one single step and patches it in again. Patches are
  taken out while the CPU is drained (checkpoints, CPU switches) and put back
  when it resumes; re-patched after each exit where the guest overwrote them.
  Whether the backend delivers them in the thread's mode is probed first
  (:mod:`.debug_probe`); where it does not, KVM refuses with
  :class:`~kvmcpu.errors.DebugUnsupportedError`.
* More hardware addresses than free debug registers on the mock (an
  interpreter, whose single steps are exact and cheap): the vCPU single-steps
  while they are scheduled and every step compares the address, at any number
  of addresses (software ones included, without patching); each step is a KVM
  exit and is counted in ``numVMExits``.

**Instruction-count events** (:meth:`KvmDebug.schedule_inst_event`, in
:mod:`.instevents`): the callback runs when the thread has committed exactly
N more instructions, at the boundary after the Nth: the mock's instruction
budget; on KVM a perf instruction counter whose overflow ends KVM_RUN a margin
before the event, then single steps (gem5's counter, made exact); where the
host has no such counter KVM refuses with
:class:`~kvmcpu.errors.DebugUnsupportedError` naming the probe's finding
(never an approximation).

**Data events** (:meth:`KvmDebug.schedule_data_event`, gdb's watchpoints, in
:mod:`.watch`): the
callback runs after an instruction that wrote (``write``), read (``read``) or
accessed (``access``) 1, 2, 4 or 8 bytes at an address aligned to that length
(the debug registers' rule, SDM 17.2.5), at the boundary after it (a data
breakpoint is a trap). They are debug registers on every backend: DR7 R/W=01
for writes, R/W=11 for reads and accesses (x86 has no read-only condition: a
``read`` event is an R/W=11 hit that left the bytes as they were, the way gdb
tells reads from writes on x86), LEN from the length. The mock checks every
load and store it performs against the armed ranges; on KVM the processor
does, where the host delivers them (:mod:`.debug_probe` runs a probe guest in
the thread's mode first; a host that does not is refused with
:class:`~kvmcpu.errors.DebugUnsupportedError` naming what the probe saw).
Hardware PC events and data events share the four registers: data events take
theirs first, and a data event that would leave a hardware PC event without
one is refused on KVM (the mock single-steps its PC events instead).

**Single steps** (:meth:`KvmDebug.request_step`): the callback runs after the
next instruction the thread executes (an interrupt or exception taken instead
counts as that step, as on hardware). A step over HLT ends right after it, at
once, and the thread does not halt, whether interrupts are enabled, one is
pending or none can come (:meth:`KvmDebug.step_ends_at_halt`): KVM's single
step gives its debug exit in place of the halt (measured with QEMU's gdbstub on
KVM, ``guests/hltstep.asm``: the same three cases end at the next instruction
with no interrupt taken during the step); the mock's HLT exit and KVM's
(without an in-kernel LAPIC, where KVM intercepts HLT) end the step the same
way. (With KVM's in-kernel LAPIC, KVM keeps the vCPU's mp_state HALTED behind
the step's debug exit: the next entry waits for an interrupt; not changed here.)
The steps kvmcpu takes itself (over a breakpoint, the mock's PC events beyond
the debug registers) leave a HLT halting.

**Lifetime.** Events belong to the thread: they are not saved in checkpoints
(a restored system schedules its own), and they move to the new CPU on a CPU
switch (``takeOverFrom``), where the new backend's limits apply. Draining
leaves them armed. With no event and no step scheduled the exit path does no
extra work: instruction events, and a step over an INT3 (which takes it out of
guest memory for that entry only, so other CPUs still stop at it), replace
:meth:`kvmRun` on the instance only while one is pending, and PC events only
change what the vCPU reports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from ... import uapi
from ...backends.exits import DebugExit, HltExit
from ...errors import DebugUnsupportedError
from ...sim.eventq import exit_sim_loop
from ..thread import ThreadContext
from . import debug_probe
from .cpu_events import Callback, _CpuEvent, check_callback
from .instevents import InstEvent, KvmInstEvents
from .swbreak import Patches
from .watch import _DR7_LEN, DATA_KINDS, HW_BREAKPOINTS, DataEvent, KvmDataEvents

__all__ = ["KvmDebug", "PcEvent", "InstEvent", "DataEvent", "DATA_KINDS", "HW_BREAKPOINTS",
           "DR6_BS"]

if TYPE_CHECKING:
    from ...backends.base import Vcpu
    from ...sim.eventq import EventQueue
    from .vm import KvmVM

#: DR6.BS: the debug exit is a single-step trap.
DR6_BS = 0x4000
#: DR7 with the reserved bit 10 and GE/LE (bits 8, 9) set, as QEMU programs it.
_DR7_BASE = 0x700

_ENABLE = uapi.KVM_GUESTDBG_ENABLE
_HW_BP = uapi.KVM_GUESTDBG_USE_HW_BP
_SW_BP = uapi.KVM_GUESTDBG_USE_SW_BP
_STEP = uapi.KVM_GUESTDBG_SINGLESTEP

class PcEvent(_CpuEvent):
    """A scheduled PC event (see :meth:`KvmDebug.schedule_pc_event`)."""

    __slots__ = ("addr", "software")

    def __init__(self, cpu: KvmDebug, addr: int, callback: Callback, name: str,
                 software: bool = False) -> None:
        super().__init__(cpu, callback, name)
        self.addr = addr
        self.software = software

    def _unschedule(self, cpu: KvmDebug) -> None:
        cpu.remove_pc_event(self)

    def __repr__(self) -> str:
        return f"PcEvent({self.name!r} at {self.addr:#x}{'' if self.cpu else ', removed'})"


class KvmDebug(KvmDataEvents, KvmInstEvents):
    """The debugging part of :class:`~kvmcpu.cpu.kvm.base.BaseKvmCPU` (a mixin)."""

    if TYPE_CHECKING:
        vcpu: Optional[Vcpu]
        vm: KvmVM
        tc: ThreadContext
        ctr_insts: int
        kvmStateDirty: bool
        threadContextDirty: bool
        _clock_period: int

        def path(self) -> str: ...
        def getContext(self, tn: int = 0) -> ThreadContext: ...
        def clock_edge(self, cycles: int = 0) -> int: ...
        def kvmRun(self, ticks: int) -> int: ...
        def syncKvmState(self) -> None: ...
        def handleKvmExitHalt(self, ex: HltExit) -> int: ...
        @property
        def eventq(self) -> EventQueue: ...

    # Created on first use, so a CPU nobody debugs carries nothing.
    _pc_events: Optional[Dict[int, List[PcEvent]]] = None
    _step_callbacks: Optional[List[Callback]] = None
    _step_from: Optional[int] = None
    _hw_skip: Optional[int] = None
    #: A breakpoint the vCPU will skip once when it next gets there (see handleKvmExitDebug).
    _stale_skip: Optional[int] = None
    _bp_refires = False
    _debug_on = False
    _patches: Optional[Patches] = None
    _guest_debug: Optional[Tuple[int, Optional[List[int]]]] = None
    #: The INT3 (linear address) taken out for the next entry only (a step over it).
    _lift_at_entry: Optional[int] = None
    #: The INT3 the last entry ran without (a #BP there is the guest's own).
    _entry_lifted: Optional[int] = None
    #: A requested step ended in a debug exit (a late HLT exit may follow: step_ends_at_halt).
    _halt_stepped = False
    #: Stepping the guest through its own INT3 (no USE_SW_BP for that step).
    _guest_bp_pass = False
    #: Drained: the INT3 patches are out of guest memory until drain_resume.
    _patches_lifted = False
    #: gpa -> original byte of each INT3 patch; the System sets it to its
    #: PhysicalMemory's overlay so its memory API shows the original bytes.
    sw_shadow: Optional[Dict[int, int]] = None

    # ------------------------------------------------------------- capabilities
    def exact_stepping(self) -> bool:
        """True when the backend single-steps and counts instructions exactly and
        cheaply (the mock, an interpreter): any number of PC events, exact
        instruction-count events."""
        return self.vm.backend.has_run_clock()

    # ---------------------------------------------------------------- PC events
    def software_breakpoints(self) -> Tuple[bool, str]:
        """(delivered, how) for INT3 breakpoints in the thread's current mode on this
        backend (a probe, see :mod:`.debug_probe`)."""
        return debug_probe.probe(self.vm.backend, debug_probe.SOFTWARE,
                                 debug_probe.mode_of(self.getContext()))

    def schedule_pc_event(self, addr: int, callback: Callback,
                          name: Optional[str] = None, *, software: bool = False) -> PcEvent:
        """Call ``callback(tc)`` whenever the thread is about to execute the
        instruction at linear address ``addr``; returns the event (``remove()`` it).
        ``software``: an INT3 patched in instead of a debug register.

        Raises:
            TypeError, ValueError: ``addr`` is not an int in 0..2**64-1, or
                ``callback`` is not callable.
            DebugUnsupportedError: a software breakpoint (asked for, or on KVM
                an address beyond the free debug registers) where the backend
                does not deliver them, or at an address that is not mapped.
        """
        if not isinstance(addr, int) or isinstance(addr, bool):
            raise TypeError(f"addr must be an int, got {type(addr).__name__}")
        if not 0 <= addr < 1 << 64:
            raise ValueError(f"addr must be in 0..2**64-1, got {addr:#x}")
        check_callback(callback)
        events = self._pc_events
        if events is None:
            events = self._pc_events = {}
        ev = PcEvent(self, addr, callback, name or f"pc {addr:#x}", software)
        hard = {a for a, lst in events.items() if not any(e.software for e in lst)}
        if not software and addr not in events:
            hard.add(addr)
        capacity = self._pc_capacity()
        needs_sw = (software and addr not in self._sw_addrs()) or (
            not self.exact_stepping() and len(hard) > capacity and addr not in events)
        if needs_sw:
            works, seen = self.software_breakpoints()
            if not works:
                taken = HW_BREAKPOINTS - capacity
                raise DebugUnsupportedError(
                    f"{self.path()}: a PC event at {addr:#x} needs a software breakpoint"
                    + ("" if software else
                       f" (it would be the {len(hard)}th hardware address; this backend has "
                       f"{HW_BREAKPOINTS} hardware breakpoints (DR0-DR3)"
                       + (f", {taken} of them taken by data breakpoints" if taken else "")
                       + ")")
                    + f", which this backend does not deliver in "
                    f"{debug_probe.mode_of(self.getContext())} mode (probe: {seen}; "
                    f"scheduled: {', '.join(f'{a:#x}' for a in sorted(events)) or 'none'})")
            if self.vcpu is not None and self._translate(addr) is None:
                raise DebugUnsupportedError(
                    f"{self.path()}: no software breakpoint at {addr:#x}: not mapped")
        events.setdefault(addr, []).append(ev)
        self._apply_guest_debug()
        return ev

    def remove_pc_event(self, ev: PcEvent) -> None:
        """Remove a PC event (idempotent)."""
        events = self._pc_events
        if events is not None and ev.cpu is self:
            lst = events.get(ev.addr, [])
            if ev in lst:
                lst.remove(ev)
            if not lst:
                events.pop(ev.addr, None)
        ev.cpu = None
        if self._stale_skip == ev.addr and ev.addr not in (events or {}):
            self._stale_skip = None
        self._apply_guest_debug()

    def pc_events(self) -> List[PcEvent]:
        """The scheduled PC events, by address."""
        return [e for a in sorted(self._pc_events or {}) for e in (self._pc_events or {})[a]]

    def _pc_capacity(self) -> int:
        """Debug registers left for hardware PC events."""
        return HW_BREAKPOINTS - len(self._data_keys())

    def _plan(self) -> Tuple[List[int], List[int], bool]:
        """(hardware addresses, software addresses, single-step everything)."""
        events = self._pc_events or {}
        soft = {a for a, lst in events.items() if any(e.software for e in lst)}
        hard = sorted(a for a in events if a not in soft)
        cap = self._pc_capacity()
        if self.exact_stepping():
            if len(hard) > cap:
                return [], [], True
            return hard, sorted(soft), False
        return hard[:cap], sorted(soft.union(hard[cap:])), False

    def free_debug_registers(self) -> int:
        """Debug registers neither data events nor hardware PC events hold."""
        return self._pc_capacity() - len(self._plan()[0])

    def _sw_addrs(self) -> List[int]:
        return self._plan()[1]

    def _translate(self, addr: int) -> Optional[int]:
        vcpu = self.vcpu
        if vcpu is None:
            return None
        if self.threadContextDirty:
            self.syncKvmState()
        t = vcpu.translate(addr)
        return int(t.physical_address) if t.valid else None

    def _sync_patches(self, soft: List[int]) -> None:
        """Make the INT3 patches in guest memory those of ``soft`` (minus a lifted one)."""
        # The INT3 a step goes over stays in memory until that step's entry
        # (_debug_entry): other CPUs still stop at it meanwhile.
        want = [] if self._patches_lifted else list(soft)
        patches = self._patches
        if patches is None:
            if not want:
                return
            if self.sw_shadow is None:
                self.sw_shadow = {}
            patches = self._patches = Patches(self.vm.vm, self.sw_shadow)
        for lin in [a for a in patches.at if a not in want]:
            patches.remove(lin)
        for lin in want:
            if lin not in patches.at:
                gpa = self._translate(lin)
                if gpa is not None:
                    patches.insert(lin, gpa)

    def verify_patches(self) -> None:
        """After an exit: patch in again what the guest overwrote (see :mod:`.swbreak`)."""
        if self._patches:
            self._patches.verify()

    def lift_patches(self, lifted: bool) -> None:
        """Take the INT3 patches out of guest memory (drained) or put them back."""
        if self._patches_lifted != lifted:
            self._patches_lifted = lifted
            self._sync_patches(self._sw_addrs())

    # ------------------------------------------------------------ single steps
    def request_step(self, callback: Callback) -> None:
        """Call ``callback(tc)`` after the next instruction the thread executes."""
        check_callback(callback)
        if self._step_callbacks is None:
            self._step_callbacks = []
        self._step_callbacks.append(callback)
        self._apply_guest_debug()

    def step_ends_at_halt(self) -> bool:
        """A HLT exit while :meth:`request_step` steps are pending: the step ends
        right after the HLT and the thread does not halt (True: handled so; the
        caller does not suspend the thread). KVM's own single step over an
        emulated HLT gives its debug exit instead of the halt (the HLT exit is
        what it gives where it intercepts HLT without an in-kernel LAPIC): both
        end the same way, as under QEMU's gdbstub with KVM."""
        if self._step_callbacks:
            self._on_debug_exit(1, self.getContext().linear_rip(), 0xFFFF0FF0 | DR6_BS)
            return True
        if self._halt_stepped:
            # A step's debug exit took a HLT's place; some hosts (nested kvm_pvm) still
            # report that HLT, one instruction later: an HLT exit whose RIP does not
            # follow a HLT is that one, which the step already consumed.
            self._halt_stepped = False
            return not self._follows_hlt(self.getContext().linear_rip())
        return False

    def _follows_hlt(self, rip: int) -> bool:
        """Whether the byte before linear ``rip`` is a HLT (0xF4; unreadable: assume so)."""
        gpa = self._translate((rip - 1) & 0xFFFFFFFFFFFFFFFF)
        if gpa is None:
            return True
        shadow = self.sw_shadow or {}
        byte = shadow.get(gpa)
        if byte is None:
            byte = self.vm.vm.read_guest(gpa, 1)[0]
        return byte == 0xF4

    def cancel_steps(self) -> None:
        """Forget pending :meth:`request_step` callbacks."""
        self._step_callbacks = None
        self._apply_guest_debug()

    # ---------------------------------------------------------- guest debug state
    def _apply_guest_debug(self) -> None:
        """Program KVM_SET_GUEST_DEBUG for the events and steps pending now."""
        vcpu = self.vcpu
        if vcpu is None:
            return  # applied when the vCPU is created (_create_vcpu)
        single = (bool(self._step_callbacks) or self._step_from is not None
                  or self._stale_skip is not None)
        control = 0
        debugreg: List[int] = [0] * 8
        dr7 = _DR7_BASE
        keys = self._data_keys()
        self._dr_data = {}
        for i, (addr, length, rw) in enumerate(keys):
            debugreg[i] = addr
            dr7 |= 1 << (2 * i) | rw << (16 + 4 * i) | _DR7_LEN[length] << (18 + 4 * i)
            self._dr_data[i] = (addr, length, rw)
        hard, soft, step_all = self._plan()
        if step_all:
            single = True  # exact_stepping() backends only (schedule_pc_event checks)
        for i, addr in enumerate(hard, len(keys)):
            if addr == self._hw_skip:
                continue
            debugreg[i] = addr
            dr7 |= 1 << (2 * i)
        self._sync_patches(soft)
        lift = self._hw_skip if self._hw_skip in soft else None
        self._lift_at_entry = lift
        if lift is not None and "kvmRun" not in self.__dict__:
            self.__dict__["kvmRun"] = self._debug_entry
        elif lift is None and self.__dict__.get("kvmRun") == self._debug_entry:
            del self.__dict__["kvmRun"]
        if lift is None:
            self._entry_lifted = None
        if keys or hard:
            debugreg[7] = dr7
            control |= _ENABLE | _HW_BP
        if self._patches and not self._guest_bp_pass:
            control |= _ENABLE | _SW_BP
        if self._guest_bp_pass:
            single = True
        if single:
            control |= _ENABLE | _STEP
        if control or self._debug_on:
            vcpu.set_guest_debug(control, debugreg if control & _HW_BP else None)
        self._debug_on = bool(control)
        self._guest_debug = (control, debugreg if control & _HW_BP else None) if control else None

    def _debug_entry(self, ticks: int) -> int:
        """One entry; the INT3 this CPU steps over (``_lift_at_entry``) is out of
        guest memory for just that entry (installed as the instance's ``kvmRun``
        while such a step is pending; instruction events call it too)."""
        lin = self._lift_at_entry
        patches = self._patches
        gpa = patches.at.get(lin) if patches is not None and lin is not None else None
        self._entry_lifted = None
        if gpa is None or patches is None or lin is None:
            return type(self).kvmRun(self, ticks)
        self._entry_lifted = lin
        patches.remove(lin)
        try:
            return type(self).kvmRun(self, ticks)
        finally:
            if not self._patches_lifted and lin in self._sw_addrs():
                patches.insert(lin, gpa)

    def _reinstall_entry(self) -> None:
        """After another instance ``kvmRun`` went away: the lifting entry, if needed."""
        if self._lift_at_entry is not None and "kvmRun" not in self.__dict__:
            self.__dict__["kvmRun"] = self._debug_entry

    def guest_debug_args(self) -> Optional[Tuple[int, Optional[List[int]]]]:
        """The (control, debug registers) last given KVM_SET_GUEST_DEBUG (None: off)."""
        return self._guest_debug

    def _take_over_debug(self, old: KvmDebug) -> None:
        """Move the events and steps of ``old``'s thread to this CPU (a CPU switch)."""
        self._pc_events, old._pc_events = old._pc_events, None
        for lst in (self._pc_events or {}).values():
            for ev in lst:
                ev.cpu = self
        self._data_events, old._data_events = old._data_events, None
        for dev in self._data_events or ():
            dev.cpu = self
        old._dr_data = {}
        if old._patches is not None:
            old._patches.remove_all()  # drained: normally out already
            old._patches = None
        self.sw_shadow = old.sw_shadow
        self._patches_lifted = old._patches_lifted = False
        self._step_callbacks, old._step_callbacks = old._step_callbacks, None
        # A step over the breakpoint the thread stopped at goes on here; a fresh vCPU
        # has no record of that hit, so its breakpoint is left out of the step.
        self._step_from, old._step_from = old._step_from, None
        self._hw_skip, old._hw_skip = self._step_from, None
        self._stale_skip = old._stale_skip = None  # a fresh vCPU skips nothing
        old._debug_on = False
        if self._sw_addrs() and not self.software_breakpoints()[0]:
            raise DebugUnsupportedError(
                f"{self.path()}: the thread has PC events that need software breakpoints "
                f"(INT3); this backend does not deliver them "
                f"({self.software_breakpoints()[1]})")
        if self._data_events and not self.data_breakpoints()[0]:
            raise DebugUnsupportedError(
                f"{self.path()}: the thread has data events; this backend does not "
                f"deliver data breakpoints ({self.data_breakpoints()[1]})")
        self._take_over_inst_events(old)

    def handleKvmExitDebug(self, ex: DebugExit) -> int:
        """A guest-debug exit: PC events, steps over breakpoints, requested steps.

        A debug exit nobody asked for (the vCPU's guest debugging was set by
        someone else) stops the simulation loop, as before there were events.
        """
        return self._on_debug_exit(ex.exception, ex.pc, ex.dr6)

    def software_breakpoint_exit(self) -> bool:
        """An emulation failure: True (and handled as the breakpoint's exit) when the
        thread stands at one of its INT3 patches (KVM's emulator refuses INT3 outside
        real mode; the guest has not executed it)."""
        if not self._patches:
            return False
        pc = self.getContext().linear_rip()
        if pc not in self._patches.at:
            return False
        if pc == self._entry_lifted:
            return False  # our INT3 was out for that entry: the guest's own INT3
        self._on_debug_exit(3, pc, 0xFFFF0FF0)
        return True

    def _on_debug_exit(self, exception: int, pc: int, dr6: int) -> int:
        if not self._debug_on:
            # Nobody asked for it (guest debugging set by someone else): stop the
            # simulation loop, as before there were events.
            exit_sim_loop(f"debug exit at {pc:#x} (exception {exception})", 0,
                          queue=self.eventq)
            return 0
        lifted, self._entry_lifted = self._entry_lifted, None
        if exception == 3 and (pc not in (self._patches.at if self._patches else {})
                               or pc == lifted):
            # The guest's own INT3 (USE_SW_BP takes every #BP): let the guest take it,
            # one single step without USE_SW_BP (it ends in the guest's handler).
            self._guest_bp_pass = True
            self._apply_guest_debug()
            return 0
        self._guest_bp_pass = False
        self.verify_patches()
        stepped = bool(dr6 & DR6_BS)
        data_bits = dr6 & sum(1 << i for i in self._dr_data) if exception == 1 else 0
        if data_bits:
            # A data breakpoint: a trap after the instruction that made the access.
            self._fire_data_events(data_bits)
            if not stepped:
                self._apply_guest_debug()
                return 0
        events = self._pc_events or {}
        hard, soft, step_all = self._plan()
        hw_mode = bool(events) and not step_all
        start = self._step_from
        if start is not None:
            if not stepped and pc == start:
                # The breakpoint being stepped over fired again: this backend does not
                # suppress it for the instruction it resumes at. Step without it.
                self._bp_refires = True
                self._hw_skip = start
                self._apply_guest_debug()
                return 0
            self._step_from = self._hw_skip = None
            # The step over a breakpoint at a HLT ended in KVM's debug exit instead of
            # the halt: the thread halts, as the HLT would have it (below).
            over_hlt = (stepped and not self._step_callbacks and pc == start + 1
                        and self._follows_hlt(pc))
        else:
            over_hlt = False
        # Arrival at pc, before its instruction. With hardware breakpoints an
        # arrival by a single step leaves the events to the breakpoint, which
        # fires on the next entry (firing here too would run them twice) --
        # except at a breakpoint the vCPU would skip once (see _stale_skip).
        stale = self._stale_skip
        if not stepped:
            self._stale_skip = None  # the vCPU's pending skip moved to this hit
        at_stale = stepped and pc == stale
        if at_stale:
            self._stale_skip = None
        hit = pc in events and (not stepped or not hw_mode or at_stale)
        if hit:
            self._fire_pc_events(pc)
        if stepped and self._step_callbacks:
            callbacks, self._step_callbacks = self._step_callbacks, None
            self._halt_stepped = True  # see step_ends_at_halt
            self._run_callbacks(callbacks)
        events = self._pc_events or {}
        hard, soft, step_all = self._plan()
        if events and not step_all:
            cur = self.tc.linear_rip() if self.threadContextDirty else pc
            if hit and cur == pc and cur in events:
                # Resuming at the breakpoint that just fired: step over it (an INT3
                # is taken out for that step, the original byte put back).
                self._step_from = cur
                self._hw_skip = cur if self._bp_refires or cur in soft else None
            elif hit and cur != pc and pc in hard and not self._bp_refires \
                    and self.exact_stepping():
                # The callback moved the thread away from a breakpoint the mock
                # has marked to skip once on resume (its RF): that skip would eat
                # the next arrival. Single-step until the thread is back there
                # (or another breakpoint fires) and run the events on that step.
                self._stale_skip = pc
        else:
            self._stale_skip = None
        self._apply_guest_debug()
        if over_hlt and self.vcpu is not None:
            self._halt_stepped = False
            self.handleKvmExitHalt(HltExit(self.vcpu.kvm_run))
            self._halt_stepped = True  # the late HLT exit some hosts give is this one
        return 0

    def _fire_pc_events(self, pc: int) -> None:
        evs = list((self._pc_events or {}).get(pc, ()))
        self._run_callbacks([e.callback for e in evs if e.cpu is self])

    def _run_callbacks(self, callbacks: List[Callback]) -> None:
        tc = self.getContext()
        before = tc.copy()
        try:
            for cb in callbacks:
                cb(tc)
        finally:
            if tc != before:
                self.threadContextDirty = True
