"""BaseKvmCPU: a simulated CPU whose instructions run in a KVM vCPU (gem5 ``cpu/kvm/base.hh``).

The CPU is an event-driven state machine ticked on the simulation's event
queue, with gem5's semantics:

* ``tick()`` in Running (or RunningServiceCompletion) enters the guest with
  :meth:`kvmRun` for the time left until the next event, then moves to
  RunningService unless the run timer ended the run (INTR). The exit is
  serviced on the *next* tick (:meth:`handleKvmExit`), after the time the
  guest ran has been accounted, so devices see accesses at the right tick.
* A serviced IN or MMIO read is completed by the following KVM entry. When
  draining (or when the next event is due before a full entry is possible)
  that entry is a zero-length *half entry* (``immediate_exit`` on the real
  backend) so the guest register is written before anything else happens.
* Every exit kind has an overridable ``handleKvmExit*`` method returning the
  ticks spent servicing it, and is counted in the stats with gem5's names.
  Exits nobody can handle raise :class:`~kvmcpu.errors.VcpuRunError` with
  the decoded exit and a register dump.
* The ThreadContext and the vCPU are kept coherent with gem5's dirty flags:
  ``threadContextDirty`` (the TC is newer: push before entering) and
  ``kvmStateDirty`` (the vCPU is newer: pull before reading the TC).

Architecture code (:class:`~kvmcpu.cpu.kvm.x86.X86KvmCPU`) implements
:meth:`updateKvmState`, :meth:`updateThreadContext` and the IO exit.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from time import perf_counter_ns
from typing import AbstractSet, Any, Callable, Dict, List, Optional, Tuple

from ...backends.base import Vcpu
from ...backends.exits import (
    DebugExit,
    ExceptionExit,
    Exit,
    FailEntryExit,
    HltExit,
    HypercallExit,
    InternalErrorExit,
    IntrExit,
    IoapicEoiExit,
    IoExit,
    IrqWindowOpenExit,
    MmioExit,
    MsrExit,
    ShutdownExit,
    SystemEventExit,
    UnknownExit,
)
from ...errors import SimulationError
from ...sim import stats as st
from ...sim.checkpoint import CheckpointIn, CheckpointOut
from ...sim.eventq import EventFunctionWrapper, Priority, exit_sim_loop
from ...sim.params import param
from ...sim.simobject import ClockedObject, ClockedObjectParams, DrainState, SimObject
from ..thread import ThreadContext
from .debug import KvmDebug
from .exit_handlers import FatalExitHandlers
from .exit_handlers import GuestTripleFault as GuestTripleFault  # re-exported
from .perfevent import CounterSource, HostClockCounters, choose_counters
from .state_access import KvmStateAccess
from .timer import (
    BaseKvmTimer,
    BudgetKvmTimer,
    PerfKvmTimer,
    PosixKvmTimer,
    measure_min_quantum_ns,
)
from .vm import KvmVM

log = logging.getLogger("kvmcpu.cpu.kvm")


class Status(enum.Enum):
    """The CPU's tick() state (gem5 ``BaseKvmCPU::Status``)."""

    Idle = "Idle"
    Running = "Running"
    RunningService = "RunningService"
    RunningServiceCompletion = "RunningServiceCompletion"


#: Module-level aliases of the states the exit path tests on every exit: an Enum
#: class attribute lookup costs far more than a global one (CPython 3.11).
_Idle = Status.Idle
_Running = Status.Running
_RunningService = Status.RunningService
_RunningServiceCompletion = Status.RunningServiceCompletion
_Draining = DrainState.Draining


class ThreadStatus(enum.Enum):
    """The hardware thread's state (gem5 ``ThreadContext::Status``)."""

    Active = "Active"
    Suspended = "Suspended"
    Halted = "Halted"


_ExitEntry = Tuple[str, Optional[str], Status]

#: exit class -> (handler method name, stat it increments, CPU state after the exit).
#: IO and MMIO leave the CPU in RunningServiceCompletion: the next entry completes them.
EXIT_HANDLERS: Dict[type, _ExitEntry] = {
    IoExit: ("handleKvmExitIO", "numIO", Status.RunningServiceCompletion),
    MmioExit: ("handleKvmExitMMIO", "numMMIO", Status.RunningServiceCompletion),
    HltExit: ("handleKvmExitHalt", "numHalt", Status.Running),
    IrqWindowOpenExit: ("handleKvmExitIRQWindowOpen", None, Status.Running),
    HypercallExit: ("handleKvmExitHypercall", "numHypercalls", Status.Running),
    IntrExit: ("handleKvmExitIntr", None, Status.Running),
    ShutdownExit: ("handleKvmExitShutdown", None, Status.Running),
    FailEntryExit: ("handleKvmExitFailEntry", None, Status.Running),
    InternalErrorExit: ("handleKvmExitInternalError", None, Status.Running),
    ExceptionExit: ("handleKvmExitException", None, Status.Running),
    SystemEventExit: ("handleKvmExitSystemEvent", None, Status.Running),
    DebugExit: ("handleKvmExitDebug", None, Status.Running),
    MsrExit: ("handleKvmExitMSR", None, Status.RunningServiceCompletion),
    IoapicEoiExit: ("handleKvmExitIoapicEoi", None, Status.Running),
    UnknownExit: ("handleKvmExitUnknown", None, Status.Running),
}


def _exit_entry(ex: object) -> Optional[_ExitEntry]:
    """The entry of the nearest base class (exit classes derived outside this package)."""
    for cls, entry in EXIT_HANDLERS.items():
        if isinstance(ex, cls):
            return entry
    return None


@dataclasses.dataclass
class BaseKvmCPUParams(ClockedObjectParams):
    """Parameters of a KVM CPU (gem5's BaseKvmCPU.py names)."""

    cpu_id: int = param(-1, "vCPU id (-1: the next id the VM hands out)", check=lambda v: v >= -1)
    usePerf: bool = param(True, "count cycles/instructions with perf where the host has a PMU")
    usePerfOverflow: bool = param(
        False, "use a perf counter overflow as the run timer instead of a POSIX timer"
    )
    useCoalescedMMIO: bool = param(False, "drain KVM's coalesced MMIO ring after every run")
    alwaysSyncTC: bool = param(False, "update the thread context after every KVM entry")
    hostFreq: float = param(2e9, "host CPU frequency in Hz (host cycles -> time)",
                            check=lambda v: v > 0)
    hostFactor: float = param(1.0, "simulated time per host time", check=lambda v: v > 0)
    quantum: int = param(0, "longest KVM entry in ticks (0: until the next event)",
                         check=lambda v: v >= 0)
    minQuantumNs: int = param(0, "shortest run-timer quantum on real KVM in host ns (0: measure "
                                 "the shortest one this host honours, once per process)",
                              check=lambda v: v >= 0)
    emulationFallback: bool = param(True, "run what KVM's instruction emulator refuses "
                                          "(internal error, emulation) on the mock, then re-enter")
    emulationFallbackInsts: int = param(1, "instructions the mock runs per emulation fallback",
                                        check=lambda v: v >= 1)
    emulationFallbackBurst: int = param(
        0, "where KVM emulates CPL0 code, the most instructions one entry runs on the mock "
        "instead (0: the mock runs only what KVM's emulator refuses; the CLI's "
        "--emulation-fallback burst sets hybrid.BURST_INSTRUCTIONS)",
        check=lambda v: v >= 0)


class KvmCPUStats:
    """The CPU's statistics (gem5 names and descriptions)."""

    def __init__(self, group: st.Group) -> None:
        def scalar(name: str, desc: str, unit: st.Unit = st.Count) -> st.Scalar:
            return st.Scalar(group, name, desc, unit)

        self.numCycles = scalar("numCycles", "Number of cpu cycles simulated", st.Cycle)
        self.numInsts = scalar("numInsts", "Number of instructions committed")
        self.numVMExits = scalar("numVMExits", "total number of KVM exits")
        self.numVMHalfEntries = scalar(
            "numVMHalfEntries", "number of KVM entries to finalize pending operations"
        )
        self.numExitSignal = scalar("numExitSignal", "exits due to signal delivery")
        self.numMMIO = scalar("numMMIO", "number of VM exits due to memory mapped IO")
        self.numCoalescedMMIO = scalar(
            "numCoalescedMMIO", "number of coalesced memory mapped IO requests"
        )
        self.numIO = scalar("numIO", "number of VM exits due to legacy IO")
        self.numHalt = scalar(
            "numHalt", "number of VM exits due to wait for interrupt instructions"
        )
        self.numInterrupts = scalar("numInterrupts", "number of interrupts delivered")
        self.numHypercalls = scalar("numHypercalls", "number of hypercalls")
        self.numEmulatedInstructions = scalar(
            "numEmulatedInstructions",
            "number of instructions executed by the mock after KVM's emulator failed",
        )
        self.numEmulationBursts = scalar(
            "numEmulationBursts",
            "number of KVM entries run on the mock instead (CPL0 code KVM would emulate)",
        )
        self.numEmulationRefused = scalar(
            "numEmulationRefused",
            "number of bursts that left an instruction the mock cannot run to KVM",
        )
        self.hostSecondsInKvm = scalar(
            "hostSecondsInKvm", "host seconds spent inside KVM_RUN", st.Second
        )
        self.exitsPerHostSecond = st.Formula(
            group, "exitsPerHostSecond", "KVM exits per host second spent in KVM_RUN",
            st.Count / st.Second,
        )
        self.exitsPerHostSecond.set_formula(self.numVMExits / self.hostSecondsInKvm)


class BaseKvmCPU(ClockedObject, KvmStateAccess, FatalExitHandlers, KvmDebug):
    """The architecture-independent KVM CPU.

    Args:
        name, parent: position in the SimObject tree (``system.cpu0``).
        vm: the shared :class:`KvmVM`.
        io_bus: the IO-port bus (``access(port, data, is_write, requestor=)``).
        mmio_bus: the MMIO bus the data port reaches.
        **overrides: :class:`BaseKvmCPUParams` values.
    """

    params_class = BaseKvmCPUParams
    params: BaseKvmCPUParams

    def __init__(self, name: str, parent: Optional[SimObject] = None, *, vm: KvmVM,
                 io_bus: Any = None, mmio_bus: Any = None, **overrides: Any) -> None:
        super().__init__(name, parent, **overrides)
        self.vm = vm
        self.io_bus = io_bus
        self.mmio_bus = mmio_bus
        self.status = Status.Idle
        self.thread_status = ThreadStatus.Halted
        self.tc = ThreadContext()
        self.threadContextDirty = True
        self.kvmStateDirty = False
        self.vcpu_id = self.params.cpu_id if self.params.cpu_id >= 0 else vm.alloc_vcpu_id()
        self.vcpu: Optional[Vcpu] = None
        self.run_timer: Optional[BaseKvmTimer] = None
        self.counters: Optional[CounterSource] = None
        self._host_clock: Optional[HostClockCounters] = None
        self._budget_timer = False
        self.switched_out = False
        self.ctr_insts = 0
        self.last_exit: Optional[Exit] = None
        self._pending_exit: Optional[Exit] = None
        self._last_suspend = 0
        self._use_coalesced = False
        self._drain_half_entry_done = False
        self._wake_pending = False
        self.tick_event = EventFunctionWrapper(self.tick, f"{name}.tickEvent", Priority.CPU_Tick)
        #: With several CPUs on one event queue: the events (the other CPUs' ticks,
        #: host-time housekeeping) that do not limit this CPU's entries; None: all do.
        self.peer_events: Optional[AbstractSet[Any]] = None
        self.stats = KvmCPUStats(self.stats_group)
        #: Called after the thread suspends on HLT (the System ends runs nothing can wake).
        self.on_halt: Optional[Callable[[], None]] = None
        #: Called with a HypercallExit; returns the value for the guest's rax.
        self.hypercall_handler: Optional[Callable[[HypercallExit], int]] = None

    # ------------------------------------------------------------------ lifecycle
    def startup(self) -> None:
        """Create the vCPU, find the coalesced ring, choose the run timer and counters."""
        if self.switched_out:
            return
        self._create_vcpu()

    def _create_vcpu(self) -> None:
        if self.vcpu is not None:
            return
        self.vm.cpu_startup()
        vcpu = self.vm.create_vcpu(self.vcpu_id)
        self.vcpu = vcpu
        p = self.params
        ring = bool(self.vm.kvm.capCoalescedMMIO())
        # Writes to a zone the VM registered wait in the ring until someone drains
        # it: drain whenever there are zones, whatever useCoalescedMMIO says.
        zones = bool(self.vm.coalesced_zones)
        self._use_coalesced = ring and (p.useCoalescedMMIO or zones)
        if p.useCoalescedMMIO and not ring:
            log.info("%s: coalesced MMIO not supported by the backend", self.path())
        elif zones and not p.useCoalescedMMIO:
            log.info("%s: the VM has coalesced zones: draining the ring after every run",
                     self.path())
        self.counters = choose_counters(vcpu, use_perf=p.usePerf, host_freq=p.hostFreq)
        self.run_timer = self._make_timer(vcpu)
        self._host_clock = self.counters if isinstance(self.counters, HostClockCounters) else None
        self._budget_timer = isinstance(self.run_timer, BudgetKvmTimer)
        self.stats.numCycles.desc = (
            f"Number of cpu cycles simulated (from {self.counters.describe})"
        )
        how = "measured" if self.counters.exact_instructions else "estimated"
        self.stats.numInsts.desc = (
            f"Number of instructions committed ({how}: {self.counters.describe})"
        )
        self.startup_thread()
        self._apply_guest_debug()  # PC events scheduled before the vCPU existed

    def _make_timer(self, vcpu: Vcpu) -> BaseKvmTimer:
        p = self.params
        clock = vcpu.run_clock()
        if clock is not None:
            return BudgetKvmTimer(clock, self.clock_period())
        min_quantum_ns = p.minQuantumNs or measure_min_quantum_ns(self.vm.backend)
        if p.usePerfOverflow:
            for hardware in (True, False):
                try:
                    return PerfKvmTimer(hardware=hardware, host_factor=p.hostFactor,
                                        host_freq=p.hostFreq, min_quantum_ns=min_quantum_ns)
                except OSError as err:
                    log.info("%s: perf overflow timer (hardware=%s) unavailable: %s",
                             self.path(), hardware, err)
        return PosixKvmTimer(host_factor=p.hostFactor, host_freq=p.hostFreq,
                             min_quantum_ns=min_quantum_ns)

    def startup_thread(self) -> None:
        """Thread-specific set-up: let the timer signal through KVM_RUN only."""
        vcpu = self.vcpu
        timer = self.run_timer
        if vcpu is None or timer is None:
            return
        signo = getattr(timer, "signo", None)
        if signo is not None:
            import signal

            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
            vcpu.set_signal_mask(set(blocked) - {signo})

    startupThread = startup_thread

    def rebind_run_timer(self) -> None:
        """Make the run timer again on the calling thread and let its signal through
        KVM_RUN there (a POSIX timer signals the thread that created it): a CPU whose
        vCPU runs on a thread of its own (:mod:`~kvmcpu.cpu.kvm.parallel`) calls it there."""
        vcpu = self.vcpu
        if vcpu is None or self._budget_timer:
            return
        if self.run_timer is not None:
            self.run_timer.close()
        self.run_timer = self._make_timer(vcpu)
        BaseKvmCPU.startup_thread(self)

    def close(self) -> None:
        """Release the run timer, counters and vCPU. Idempotent."""
        if self.tick_event.scheduled():
            self.deschedule(self.tick_event)
        if self.run_timer is not None:
            self.run_timer.close()
            self.run_timer = None
        if self.counters is not None:
            self.counters.close()
            self.counters = None
        self.close_inst_counter()
        self._host_clock = None
        if self.vcpu is not None:
            self.vcpu.close()
            self.vcpu = None
        self.status = Status.Idle

    # ---------------------------------------------------------------- contexts
    def getContext(self, tn: int = 0) -> ThreadContext:
        """The thread context, synchronised from the vCPU first."""
        if tn != 0:
            raise ValueError(f"KVM CPUs have one thread, got thread {tn}")
        self.syncThreadContext()
        return self.tc

    def activateContext(self, delay: int = 0) -> None:
        """Start (or restart) the thread ``delay`` cycles from now."""
        if self.switched_out:
            raise SimulationError(f"{self.path()}: activateContext on a switched-out CPU")
        if self.status is not Status.Idle or self.tick_event.scheduled():
            raise SimulationError(f"{self.path()}: activateContext while {self.status.value}")
        now = self.cur_tick()
        if self.thread_status is ThreadStatus.Suspended and now > self._last_suspend:
            self.stats.numCycles += self.ticks_to_cycles(now - self._last_suspend)
        self.thread_status = ThreadStatus.Active
        self.schedule(self.tick_event, self.clock_edge(delay))
        self.status = Status.Running

    def suspendContext(self) -> None:
        """Stop the thread until :meth:`wakeup`."""
        self.thread_status = ThreadStatus.Suspended
        self._last_suspend = self.cur_tick()
        if self.status is Status.Idle:
            return
        if self.tick_event.scheduled():
            self.deschedule(self.tick_event)
        self.status = Status.Idle

    def haltContext(self) -> None:
        """Halt the thread (equivalent to suspending, as in gem5)."""
        self.suspendContext()
        self.thread_status = ThreadStatus.Halted

    deallocateContext = haltContext

    def wakeup(self) -> None:
        """Something (an interrupt) wants the thread running again."""
        if self.vcpu is not None and self.status is not Status.Idle:
            return
        if self.thread_status is ThreadStatus.Suspended and not self.switched_out:
            if self.drain_state is DrainState.Running:
                self.activateContext()
            else:
                # Drained (or draining): the thread starts when the system resumes.
                self._wake_pending = True

    def totalInsts(self) -> int:
        """Instructions executed by this CPU (see numInsts for how they are counted)."""
        return self.ctr_insts

    def totalOps(self) -> int:
        """Same as totalInsts (KVM cannot count micro-ops)."""
        return self.ctr_insts

    def getDataPort(self) -> Any:
        """The MMIO bus the CPU's data accesses go to."""
        return self.mmio_bus

    def getInstPort(self) -> Any:
        """KVM fetches instructions from guest RAM itself; there is no instruction port."""
        return None

    def verifyMemoryMode(self) -> None:
        """KVM CPUs access memory atomically and uncached; nothing else is modelled."""
        if self.mmio_bus is None:
            log.debug("%s: no MMIO bus connected; MMIO exits follow the bus policy", self.path())

    # ------------------------------------------------------------------- tick()
    def tick(self) -> None:
        """One step of the state machine (see the module docstring).

        Two shortcuts keep the queue's order while saving its round trips:

        * after an exit was serviced at no cost, the next entry is due at this
          very tick; when no other event is due at this tick either, it would be
          the next event the queue runs, so it is made here at once;
        * when the tick that services an exit would be the next event the queue
          runs (every other event is due strictly later), time moves on to it and
          the loop goes on here instead of scheduling the tick and taking it off
          the queue again.

        Anything that schedules an event (a device, :func:`exit_sim_loop`, a
        simulation limit) is seen by the next look at the queue and ends the loop,
        and so is an exit requested asynchronously (:meth:`EventQueue.request_exit`:
        a signal or a kick ends the entry with INTR, and the CPU returns to the queue).
        """
        eq = self.eventq
        period = self._clock_period
        status = self.status
        while True:
            now = eq.cur_tick
            serviced = status is _RunningService
            if serviced:
                delay = self.handleKvmExit()
                if self.drain_state is _Draining and self.try_drain():
                    self.status = _Idle
                    return
                status = self.status
                if delay or (status is not _RunningServiceCompletion and status is not _Running):
                    break
                # clock_edge() == now, without the call when the cached edge is now.
                if self._tick != now and self.clock_edge() != now:
                    break
            elif status is not _Running and status is not _RunningServiceCompletion:
                raise SimulationError(f"{self.path()}: tick() in state {status.value}")
            next_tick = eq.next_tick()
            if serviced and next_tick <= now:
                break  # another event is due at this tick: it goes first
            # -- Running / RunningServiceCompletion: one entry of at most the time
            # to the next event (or the quantum). With several CPUs on this queue the
            # other CPUs' ticks do not shorten it (each runs its quantum in turn).
            peers = self.peer_events
            if peers is not None:
                next_tick = eq.next_tick_except(peers)
            ticks_to_execute = next_tick - now
            params = self.params
            quantum = params.quantum
            if quantum and ticks_to_execute > quantum:
                ticks_to_execute = quantum
            if self.threadContextDirty:
                self.syncKvmState()
            timer = self.run_timer
            draining = self.drain_state is _Draining
            if draining:
                half = True
                delay = self.kvmRunDrain()
            elif (status is _RunningServiceCompletion and timer is not None
                  and ticks_to_execute < timer.resolution()):
                half = True
                delay = self.kvmRun(0)
            else:
                half = False
                delay = self.kvmRun(ticks_to_execute)
            if self.status is _Idle:
                return  # suspended before entering
            self.kvmStateDirty = True
            if params.alwaysSyncTC:
                self.syncThreadContext()
            if type(self.last_exit) is IntrExit:
                status = self.status = _Running
                if (not half and delay < ticks_to_execute and timer is not None
                        and ticks_to_execute - delay < timer.resolution()):
                    # The run timer expired (within its resolution): land on the event
                    # it was armed for. Any other INTR (a kick, a stray signal, a timer
                    # that fired early) keeps the time the guest really ran.
                    delay = ticks_to_execute
            else:
                status = self.status = _RunningService
            if draining and self.try_drain():
                self.status = _Idle
                return
            # The tick that follows: the clock edge ``delay`` ticks from now, rounded up.
            when = self.clock_edge(-(-delay // period))
            if self.tick_event.scheduled():
                return  # somebody (a device waking the CPU) scheduled the tick already
            if when >= eq.next_tick() or eq.pending_exit is not None or eq.async_pending:
                # (An exit asked for asynchronously -- a signal, the host deadline --
                # or work another thread left for this queue is taken by the queue's
                # loop: go back to it.)
                eq.schedule(self.tick_event, when)
                return
            # This tick would be the next event the queue runs: run it now.
            eq.advance_to(when)
        if status is not _Idle:
            eq.schedule(self.tick_event, self.clock_edge(-(-delay // period)))

    def try_drain(self) -> bool:
        """Signal drain done when draining and at a safe point (gem5 tryDrain)."""
        if self.drain_state is not DrainState.Draining:
            return False
        if not self.archIsDrained():
            return False
        if self.status is Status.Idle or self.status is Status.Running:
            self.syncThreadContext()
            self.signal_drain_done()
            return True
        return False

    tryDrain = try_drain

    def kvmRunDrain(self) -> int:
        """Enter only to complete pending operations (a half entry)."""
        return self.kvmRun(0)

    def kvmRun(self, ticks: int) -> int:
        """Enter the guest for about ``ticks`` of simulated time; returns ticks executed.

        ``ticks == 0`` is a half entry: KVM completes a pending IN/MMIO read and
        returns at once without running guest code.
        """
        vcpu = self.vcpu
        if vcpu is None:
            raise SimulationError(f"{self.path()}: kvmRun before startup()")
        stats = self.stats
        if ticks == 0:
            stats.numVMHalfEntries.value += 1
            run = vcpu.kvm_run
            run.immediate_exit = 1
            try:
                ex = self.ioctlRun()
            finally:
                run.immediate_exit = 0
            ticks_executed = self._clock_period
        else:
            timer = self.run_timer
            if timer is not None:
                res = timer.resolution()
                if ticks < res:
                    ticks = res
                timer.arm(ticks)
            clock = self._host_clock
            if clock is not None:
                t0 = perf_counter_ns()
                ex = self.ioctlRun()
                elapsed = perf_counter_ns() - t0
                if timer is not None:
                    timer.after_run(type(ex) is IntrExit)
                stats.hostSecondsInKvm.value += elapsed * 1e-9
                # The host clock *is* the elapsed time: no second measurement.
                host_cycles = insts = clock.cycles_in(elapsed)
            else:
                counters = self.counters
                if counters is not None:
                    counters.begin()
                t0 = perf_counter_ns()
                ex = self.ioctlRun()
                elapsed = perf_counter_ns() - t0
                if timer is not None:
                    timer.after_run(type(ex) is IntrExit)
                stats.hostSecondsInKvm.value += elapsed * 1e-9
                if counters is not None:
                    host_cycles, insts = counters.end()
                else:
                    host_cycles = insts = 0
            if self._budget_timer:
                ticks_executed = host_cycles * self._clock_period
                stats.numCycles.value += host_cycles
            else:
                ticks_executed = timer.ticks_from_host_ns(elapsed) if timer is not None else 0
                stats.numCycles.value += int(host_cycles * self.params.hostFactor)
            stats.numInsts.value += insts
            self.ctr_insts += insts
        if type(ex) is IntrExit:
            stats.numExitSignal.value += 1
        stats.numVMExits.value += 1
        self.last_exit = ex
        if self._use_coalesced:
            ticks_executed += self.flushCoalescedMMIO()
        return ticks_executed

    def ioctlRun(self) -> Exit:
        """Enter KVM_RUN once (architectures override to deliver interrupts first)."""
        vcpu = self.vcpu
        assert vcpu is not None  # noqa: S101 - kvmRun checked
        return vcpu.run()

    def flushCoalescedMMIO(self) -> int:
        """Service every write waiting in the coalesced MMIO ring; returns ticks spent."""
        vcpu = self.vcpu
        if vcpu is None:
            return 0
        ticks = 0
        for ent in vcpu.drain_coalesced_mmio():
            self.stats.numCoalescedMMIO += 1
            data = memoryview(bytearray(ent.data))
            if ent.pio:
                ticks += self._io_access(ent.phys_addr, data, True)
            else:
                ticks += self.doMMIOAccess(ent.phys_addr, data, len(data), True)
        return ticks

    # ---------------------------------------------------------------- exits
    def handleKvmExit(self) -> int:
        """Service the exit of the last run; returns ticks spent (gem5 handleKvmExit).

        Dispatch is one dict lookup by exit class (:data:`EXIT_HANDLERS`: the
        handler's name, the stat it counts, the state after it); handlers are
        looked up by name on every exit, so overriding or patching one works.
        """
        ex = self.last_exit
        entry = EXIT_HANDLERS.get(type(ex))
        if entry is None:
            entry = _exit_entry(ex)
            if entry is None:
                self.status = Status.Running
                raise self._fatal(f"unexpected exit {ex!r}", ex)
        name, stat, self.status = entry
        if self._patches:
            self._patches.verify()  # INT3s the guest overwrote go back in
        if stat is not None:
            getattr(self.stats, stat).value += 1
        ticks: int = getattr(self, name)(ex)
        return ticks

    def handleKvmExitIntr(self, ex: IntrExit) -> int:
        """KVM_RUN was interrupted (run timer, kick): nothing to service."""
        return 0

    def handleKvmExitMMIO(self, ex: MmioExit) -> int:
        """An MMIO exit: one access on the data port (completed by the next entry)."""
        return self.doMMIOAccess(ex.phys_addr, ex.data, ex.len, ex.is_write)

    def handleKvmExitIO(self, ex: IoExit) -> int:
        """Legacy port IO; architectures implement it."""
        raise self._fatal(
            f"unhandled guest IO (port {ex.port:#x}, size {ex.size}, count {ex.count})", ex
        )

    def handleKvmExitHalt(self, ex: HltExit) -> int:
        """HLT: suspend the thread until an interrupt wakes it."""
        if self.step_ends_at_halt():
            return 0  # a requested single step ends here (see KvmDebug.request_step)
        self.suspendContext()
        if self.on_halt is not None:
            self.on_halt()
        return 0

    def handleKvmExitHypercall(self, ex: HypercallExit) -> int:
        """A hypercall: handled by :attr:`hypercall_handler`, else an error (as gem5)."""
        if self.hypercall_handler is None:
            raise self._fatal(f"unhandled hypercall nr={ex.nr:#x} args={ex.args}", ex)
        ex.ret = self.hypercall_handler(ex)
        return 0

    def handleKvmExitIRQWindowOpen(self, ex: IrqWindowOpenExit) -> int:
        """The guest can take interrupts; architectures deliver them here."""
        return 0

    def handleKvmExitSystemEvent(self, ex: SystemEventExit) -> int:
        """Shutdown/reset/crash requested by the guest: end the simulation."""
        names = {1: "shutdown", 2: "reset", 3: "crash"}
        kind = names.get(ex.type, f"type {ex.type}")
        self.suspendContext()
        exit_sim_loop(f"guest system event: {kind}", 0 if ex.type == 1 else 1, queue=self.eventq)
        return 0

    def handleKvmExitIoapicEoi(self, ex: IoapicEoiExit) -> int:
        """KVM_EXIT_IOAPIC_EOI (split irqchip); architectures with a user-space IOAPIC
        handle it."""
        raise self._fatal(f"unhandled IOAPIC EOI of vector {ex.vector:#x}", ex)

    def handleKvmExitMSR(self, ex: MsrExit) -> int:
        """An MSR the filter hands to user space; architectures that set one up handle it."""
        raise self._fatal(f"unhandled MSR {'write' if ex.is_write else 'read'} "
                          f"{ex.index:#x}", ex)

    def doMMIOAccess(self, paddr: int, data: memoryview, size: int, is_write: bool) -> int:
        """Send one MMIO access to the data port; returns its latency in ticks."""
        bus = self.mmio_bus
        if bus is None:
            raise self._fatal(f"MMIO {'write' if is_write else 'read'} at {paddr:#x} "
                              "with no MMIO bus connected", self.last_exit)
        return int(bus.access(paddr, data[:size], is_write, requestor=self))

    def _io_access(self, port: int, data: memoryview, is_write: bool) -> int:
        bus = self.io_bus
        if bus is None:
            raise self._fatal(f"IO {'write' if is_write else 'read'} at port {port:#x} "
                              "with no IO bus connected", self.last_exit)
        return int(bus.access(port, data, is_write, requestor=self))

    # ------------------------------------------------------------- interrupts
    def kvmInterrupt(self, vector: int) -> None:
        """Inject an external interrupt (KVM_INTERRUPT)."""
        self.stats.numInterrupts += 1
        vcpu = self.vcpu
        if vcpu is None:
            raise SimulationError(f"{self.path()}: interrupt before startup()")
        vcpu.interrupt(vector)

    def kvmNonMaskableInterrupt(self) -> None:
        """Inject an NMI (KVM_NMI)."""
        self.stats.numInterrupts += 1
        vcpu = self.vcpu
        if vcpu is None:
            raise SimulationError(f"{self.path()}: NMI before startup()")
        vcpu.nmi()

    def archIsDrained(self) -> bool:
        """Architectures say no while an event is injected but not yet taken."""
        return True

    # --------------------------------------------------------- drain/switch
    def drain(self) -> DrainState:
        """gem5 rules: Drained only at a safe point with nothing injected or pending."""
        if self.switched_out:
            return DrainState.Drained
        status = self.status
        if status is Status.Running:
            if not self.archIsDrained():
                return DrainState.Draining
            if self.tick_event.scheduled():
                self.deschedule(self.tick_event)
            self.status = Status.Idle
            self.syncThreadContext()
            self.lift_patches(True)  # no INT3 in a checkpoint or a switched-to VM
            return DrainState.Drained
        if status is Status.Idle:
            self.syncThreadContext()
            self.lift_patches(True)
            return DrainState.Drained
        return DrainState.Draining

    def drain_resume(self) -> None:
        if self.switched_out:
            return
        if self.tick_event.scheduled():
            raise SimulationError(f"{self.path()}: tick scheduled while drained")
        self.verifyMemoryMode()
        self.lift_patches(False)
        wake, self._wake_pending = self._wake_pending, False
        if self.thread_status is ThreadStatus.Active:
            self.schedule(self.tick_event, self.next_cycle())
            self.status = Status.Running
        else:
            self.status = Status.Idle
            if wake and self.thread_status is ThreadStatus.Suspended:
                self.activateContext()

    def switchOut(self) -> None:
        """Stop using this CPU (it must be drained)."""
        if self.status is not Status.Idle or self.tick_event.scheduled():
            raise SimulationError(f"{self.path()}: switchOut while {self.status.value}")
        self.syncThreadContext()
        self.switched_out = True

    def takeOverFrom(self, old: BaseKvmCPU) -> None:
        """Continue the thread ``old`` was running (both drained; ``old`` switched out)."""
        if not old.switched_out:
            raise SimulationError(f"{old.path()} must be switched out first")
        if self.status is not Status.Idle or self.tick_event.scheduled():
            raise SimulationError(f"{self.path()}: takeOverFrom while {self.status.value}")
        old.syncThreadContext()
        self.switched_out = False
        self.tc = old.tc.copy()
        self.thread_status = old.thread_status
        self._last_suspend = old._last_suspend
        self._wake_pending, old._wake_pending = old._wake_pending, False
        self.io_bus = self.io_bus if self.io_bus is not None else old.io_bus
        self.mmio_bus = self.mmio_bus if self.mmio_bus is not None else old.mmio_bus
        self._take_over_arch(old)
        self._take_over_debug(old)  # PC/instruction events and steps move with the thread
        self._create_vcpu()
        self._apply_guest_debug()
        # Push at once (not lazily) so that both states can be compared right away.
        self.kvmStateDirty = False
        self.updateKvmState()
        self.threadContextDirty = False

    def _take_over_arch(self, old: BaseKvmCPU) -> None:
        """Architecture state beyond the TC (interrupt sources)."""

    def clone_kwargs(self) -> Dict[str, Any]:
        """Constructor arguments (beyond name, parent, vm, buses and params) that a CPU
        taking this one's place needs (see :func:`~kvmcpu.cpu.kvm.switch.switch_cpu`)."""
        return {}

    # ------------------------------------------------------------ checkpoints
    def serialize(self, cp: CheckpointOut) -> None:
        """The thread (the CPU must be drained)."""
        if self.status is not Status.Idle:
            raise SimulationError(f"{self.path()}: serialize while {self.status.value}")
        self.syncThreadContext()
        self.serializeThread(cp)

    def serializeThread(self, cp: CheckpointOut) -> None:
        status = self.thread_status
        if status is ThreadStatus.Suspended and self._wake_pending:
            # Woken while draining (another CPU's IPI during its drain entry): the
            # thread is runnable and would start at drain_resume; a restore must see it
            # so, or the wake-up is lost with the drain (the interrupt stays in the IRR
            # of a CPU nothing will ever run).
            status = ThreadStatus.Active
        cp.param_out("thread_status", status.value)
        cp.param_out("ctr_insts", self.ctr_insts)
        with cp.subsection("xc.0"):
            self.tc.serialize(cp)

    def unserialize(self, cp: CheckpointIn) -> None:
        self.unserializeThread(cp)

    def unserializeThread(self, cp: CheckpointIn) -> None:
        self.thread_status = ThreadStatus(cp.param_in("thread_status", str))
        self.ctr_insts = cp.param_in("ctr_insts", int)
        with cp.subsection("xc.0"):
            self.tc = ThreadContext.from_checkpoint(cp)
        self.kvmStateDirty = False
        self.threadContextDirty = True

    def exit_kinds(self) -> List[str]:
        """The exit handlers an architecture may override (documentation aid)."""
        return [n for n in dir(self) if n.startswith("handleKvmExit")]
