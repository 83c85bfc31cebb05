"""Instruction-count events of a KVM CPU (gem5's ``scheduleInstStop``).

:meth:`KvmInstEvents.schedule_inst_event` calls a function when the thread has
committed exactly N more instructions, at the boundary after the Nth. Two ways
to get there:

* **The mock's budget** (a backend with an exact run clock, ``exact_stepping()``):
  every entry's instruction budget ends at the next event at most, so the
  count is exact by construction.
* **A sampling instruction counter** (KVM, gem5's ``setupInstCounter``): an
  :class:`~kvmcpu.cpu.kvm.perfevent.InstCounter` (on KVM
  :class:`~kvmcpu.cpu.kvm.perfevent.PerfInstCounter`: perf's
  PERF_COUNT_HW_INSTRUCTIONS with ``exclude_host``/``exclude_hv``, whose
  overflow signals the vCPU thread and ends KVM_RUN). Before each entry the
  counter is armed to overflow :attr:`KvmInstEvents.inst_event_margin`
  instructions *before* the next event (the overflow is delivered some
  instructions late: the counter's skid); within the margin the thread
  single-steps (``KVM_GUESTDBG_SINGLESTEP``) and each step's count is read
  from the counter again, until it reads the target: the callback then runs
  at that boundary. An entry that ran past the target (a skid larger than
  the margin) is :class:`~kvmcpu.errors.InstEventOvershootError`, never a
  late event. The count is the counter's, i.e. INST_RETIRED's rules, also
  during the steps: a step through one iteration of ``rep movs`` that does not
  finish it counts nothing (the counter retires the instruction once, a
  single step traps after every iteration, SDM 17.3.1.4), and a step that
  ends at an interrupt or exception handler without retiring an instruction
  counts nothing either. What retires outside guest mode is not counted: the
  instructions KVM's instruction emulator completes for the guest (an MMIO
  access, those it emulates on a nested host) and those the emulation
  fallback (:mod:`.fallback`) runs. Where no counter opens (a host without a
  PMU exposed to it, as this nested one), the event is refused with
  :class:`~kvmcpu.errors.DebugUnsupportedError` naming what the probe
  (:func:`~kvmcpu.cpu.kvm.perfevent.inst_counter_probe`) found.
  :meth:`KvmInstEvents.use_inst_counter` puts any counter in (the tests drive
  this path on the mock with counters of a chosen skid).

Instruction events replace :meth:`kvmRun` on the instance only while one is
pending; the callback runs from an event just before the CPU's next tick, with
the thread context after exactly N instructions.
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, List, Optional, Tuple

from ...errors import DebugUnsupportedError, InstEventOvershootError
from ...sim.eventq import EventFunctionWrapper, Priority
from .cpu_events import Callback, _CpuEvent, check_callback
from .perfevent import InstCounter, PerfInstCounter, inst_counter_probe

if TYPE_CHECKING:
    from ...sim.eventq import EventQueue
    from ..thread import ThreadContext
    from .debug import KvmDebug

__all__ = ["InstEvent", "KvmInstEvents", "INST_EVENT_MARGIN"]

#: Instructions before an event at which the counter's overflow is asked for:
#: the skid an overflow may have before the rest is single-stepped.
INST_EVENT_MARGIN = 256

_seq = itertools.count()


class InstEvent(_CpuEvent):
    """A scheduled instruction-count event (see :meth:`KvmInstEvents.schedule_inst_event`)."""

    __slots__ = ("target",)

    def __init__(self, cpu: KvmDebug, target: int, callback: Callback, name: str) -> None:
        super().__init__(cpu, callback, name)
        self.target = target

    def _unschedule(self, cpu: KvmDebug) -> None:
        cpu.remove_inst_event(self)


class KvmInstEvents:
    """The instruction-event part of :class:`~kvmcpu.cpu.kvm.debug.KvmDebug` (a mixin)."""

    if TYPE_CHECKING:
        ctr_insts: int
        _clock_period: int
        _step_callbacks: Optional[List[Callback]]

        def path(self) -> str: ...
        def exact_stepping(self) -> bool: ...
        def clock_edge(self, cycles: int = 0) -> int: ...
        def kvmRun(self, ticks: int) -> int: ...
        def request_step(self, callback: Callback) -> None: ...
        def _debug_entry(self, ticks: int) -> int: ...
        def _reinstall_entry(self) -> None: ...
        def _run_callbacks(self, callbacks: List[Callback]) -> None: ...
        @property
        def eventq(self) -> EventQueue: ...

    _inst_events: Optional[List[Tuple[int, int, InstEvent]]] = None
    _inst_fire: Optional[EventFunctionWrapper] = None
    #: The counter of the counter path (None: the budget, or not opened yet).
    _inst_counter: Optional[InstCounter] = None
    #: Instructions the counter path has counted (its events' targets are in it).
    _inst_counted = 0
    #: Instructions before an event where the counter's overflow is asked for.
    inst_event_margin: int = INST_EVENT_MARGIN

    def use_inst_counter(self, counter: Optional[InstCounter],
                         margin: Optional[int] = None) -> None:
        """Count instruction events with ``counter`` (any backend; None: the default,
        the budget on an exact backend, else perf), overflowing ``margin``
        instructions before an event (default :data:`INST_EVENT_MARGIN`).

        Raises:
            TypeError, ValueError: not an InstCounter; a margin that is not an int >= 0.
            SimulationError: instruction events are pending.
        """
        if counter is not None and not isinstance(counter, InstCounter):
            raise TypeError(f"counter must be an InstCounter, got {type(counter).__name__}")
        if margin is not None and (not isinstance(margin, int) or isinstance(margin, bool)
                                   or margin < 0):
            raise ValueError(f"margin must be an int >= 0, got {margin!r}")
        if self._inst_events:
            from ...errors import SimulationError
            raise SimulationError(f"{self.path()}: instruction events are pending")
        self.close_inst_counter()
        self._inst_counter = counter
        self._inst_explicit = counter is not None
        if margin is not None:
            self.inst_event_margin = margin

    _inst_explicit = False

    def close_inst_counter(self) -> None:
        """Release the instruction counter (the CPU closes; idempotent)."""
        if self._inst_counter is not None:
            self._inst_counter.close()
            if not self._inst_explicit:
                self._inst_counter = None

    def _counter_path(self) -> bool:
        return self._inst_explicit or not self.exact_stepping()

    def _inst_now(self) -> int:
        """The count the events' targets are in."""
        return self._inst_counted if self._counter_path() else self.ctr_insts

    def _no_inst_counter(self, finding: str) -> str:
        return (f"{self.path()}: instruction-count events on this backend need a hardware "
                "instruction counter with overflow (perf PERF_COUNT_HW_INSTRUCTIONS, "
                f"exclude_host), which this host does not give (probe: {finding}); "
                "kvmcpu refuses rather than approximate")

    def _check_inst_counter(self) -> None:
        if self._counter_path() and not self._inst_explicit:
            works, finding = inst_counter_probe()
            if not works:
                raise DebugUnsupportedError(self._no_inst_counter(finding))

    def schedule_inst_event(self, count: int, callback: Callback,
                            name: Optional[str] = None) -> InstEvent:
        """Call ``callback(tc)`` when the thread has committed exactly ``count``
        more instructions (at the boundary after the last of them).

        Raises:
            TypeError, ValueError: ``count`` is not an int >= 1, or ``callback``
                is not callable.
            DebugUnsupportedError: the backend has no exact instruction count and
                the host no instruction counter (see the module docstring).
        """
        if not isinstance(count, int) or isinstance(count, bool):
            raise TypeError(f"count must be an int, got {type(count).__name__}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        check_callback(callback)
        self._check_inst_counter()
        ev = InstEvent(self, self._inst_now() + count, callback,  # type: ignore[arg-type]
                       name or f"inst +{count}")
        self._push_inst_event(ev.target, next(_seq), ev)
        return ev

    def inst_events(self) -> List[InstEvent]:
        """The pending instruction events, soonest first."""
        return [ev for _, _, ev in sorted(self._inst_events or ())]

    def _push_inst_event(self, target: int, seq: int, ev: InstEvent) -> None:
        ev.target = target
        ev.cpu = self  # type: ignore[assignment]
        if self._inst_events is None:
            self._inst_events = []
        heapq.heappush(self._inst_events, (target, seq, ev))
        if self._inst_fire is None:
            self._inst_fire = EventFunctionWrapper(
                self._fire_inst_events, f"{self.path()}.instEvent",
                Priority.CPU_Tick - 1)
        # Only while an event is pending does every entry go through the wrapper.
        self.__dict__["kvmRun"] = self._kvm_run_inst_events

    def remove_inst_event(self, ev: InstEvent) -> None:
        """Remove an instruction-count event (idempotent)."""
        heap = self._inst_events
        if heap is not None and ev.cpu is self:
            heap[:] = [item for item in heap if item[2] is not ev]
            heapq.heapify(heap)
            if not heap:
                self._no_inst_events()
        ev.cpu = None

    def _no_inst_events(self) -> None:
        self._inst_events = None
        self.__dict__.pop("kvmRun", None)
        self._reinstall_entry()
        if self._inst_counter is not None:
            self._inst_counter.arm(None)

    def _take_over_inst_events(self, old: KvmInstEvents) -> None:
        """Move ``old``'s instruction events here (a CPU switch), rebased on this CPU's
        count."""
        if not old._inst_events:
            return
        done = old._inst_now()
        events = old._inst_events
        old._no_inst_events()
        fire = old._inst_fire
        if fire is not None and fire.scheduled():
            old.eventq.deschedule(fire)
        old.close_inst_counter()
        for target, seq, iev in events:
            self._push_inst_event(target - done + self._inst_now(), seq, iev)
        self._check_inst_counter()

    # -------------------------------------------------------------- the entries
    def _kvm_run_inst_events(self, ticks: int) -> int:
        if self._counter_path():
            return self._kvm_run_counted(ticks)
        heap = self._inst_events
        period = self._clock_period
        if ticks and heap:
            left = heap[0][0] - self.ctr_insts
            if left > 0 and ticks > left * period:
                ticks = left * period  # the budget ends exactly at the event
        done: int = self._debug_entry(ticks)
        if heap and heap[0][0] <= self.ctr_insts:
            self._schedule_inst_fire(done)
        return done

    def _kvm_run_counted(self, ticks: int) -> int:
        """One entry on the counter path: overflow the margin before the next event,
        or single-step within it; then what the counter counted."""
        heap = self._inst_events
        counter = self._inst_counter
        if counter is None:
            counter = self._inst_counter = PerfInstCounter()
        if ticks and heap:
            left = heap[0][0] - self._inst_counted
            margin = self.inst_event_margin
            if left > margin:
                counter.arm(left - margin)
            else:
                counter.arm(None)
                if left > 0 and self._inst_stepped not in (self._step_callbacks or ()):
                    self.request_step(self._inst_stepped)
        else:
            counter.arm(None)
        start = counter.read()
        done: int = self._debug_entry(ticks)
        self._inst_counted += counter.read() - start
        if heap:
            target = heap[0][0]
            if self._inst_counted > target:
                counter.arm(None)
                raise InstEventOvershootError(
                    f"{self.path()}: an instruction event for instruction {target} was "
                    f"overrun: the entry ended at {self._inst_counted} "
                    f"({self._inst_counted - target} past it), the counter's overflow "
                    f"came more than the margin of {self.inst_event_margin} instructions "
                    f"late ({counter.describe})", target=target, reached=self._inst_counted,
                    margin=self.inst_event_margin)
            if target == self._inst_counted:
                self._schedule_inst_fire(done)
        return done

    def _inst_stepped(self, tc: ThreadContext) -> None:
        """A step of the counter path ended (the counter says what it retired)."""

    def _schedule_inst_fire(self, done: int) -> None:
        fire = self._inst_fire
        if fire is not None and not fire.scheduled():
            # Just before the CPU's next tick, so the callback sees the time and the
            # state after exactly that many instructions.
            period = self._clock_period
            self.eventq.schedule(fire, self.clock_edge(-(-done // period)))

    def _fire_inst_events(self) -> None:
        heap = self._inst_events
        now = self._inst_now()
        due: List[Callback] = []
        while heap and heap[0][0] <= now:
            _, _, ev = heapq.heappop(heap)
            ev.cpu = None
            due.append(ev.callback)
        if not heap:
            self._no_inst_events()
        if due:
            self._run_callbacks(due)
