"""Simulated time, events and the event queue (gem5 ``sim/eventq.hh``, ``sim/clocked_object.hh``).

Time is counted in ticks: integer picoseconds, :data:`TICKS_PER_SECOND` per
simulated second. An :class:`EventQueue` is a binary heap of
``(tick, priority, sequence, event)`` tuples; events at the same tick run by
:class:`Priority` and then in the order they were scheduled. Deschedule and
squash are lazy: the heap entry stays behind and is discarded when it reaches
the head, so every operation is ``O(log n)`` and allocates one tuple.

Nothing here is global except :data:`main_queue`, a convenient default that
:func:`reset` empties in place (tests call it, or make their own queue).
"""

from __future__ import annotations

import heapq
from enum import IntEnum
from typing import AbstractSet, Callable, List, Tuple

from kvmcpu.errors import SimulationError

__all__ = [
    "TICKS_PER_SECOND",
    "MAX_TICK",
    "SIM_LIMIT_CAUSE",
    "QUEUE_EMPTY_CAUSE",
    "Priority",
    "Event",
    "EventFunctionWrapper",
    "SimLoopExitEvent",
    "ExitEvent",
    "EventQueue",
    "Clocked",
    "main_queue",
    "cur_tick",
    "curTick",
    "simulate",
    "exit_sim_loop",
    "exitSimLoop",
    "reset",
    "seconds_to_ticks",
    "ticks_to_seconds",
    "frequency_to_period",
]

#: Ticks per simulated second (gem5's ``sim_clock::Frequency``): one tick is one picosecond.
TICKS_PER_SECOND = 10**12
#: The largest tick (gem5's ``MaxTick``).
MAX_TICK = 2**64 - 1
#: Cause string of the exit event that ends ``simulate(max_ticks)`` (gem5's wording).
SIM_LIMIT_CAUSE = "simulate() limit reached"
#: Cause string when the queue ran dry with no exit event scheduled.
QUEUE_EMPTY_CAUSE = "event queue empty"


def seconds_to_ticks(seconds: float) -> int:
    """Simulated seconds -> ticks (rounded to the nearest picosecond)."""
    return int(round(seconds * TICKS_PER_SECOND))


def ticks_to_seconds(ticks: int) -> float:
    """Ticks -> simulated seconds."""
    return ticks / TICKS_PER_SECOND


def frequency_to_period(hz: float) -> int:
    """A clock frequency in Hz -> its period in ticks (``1GHz`` -> 1000)."""
    if hz <= 0:
        raise ValueError(f"frequency must be positive, got {hz!r}")
    period = int(round(TICKS_PER_SECOND / hz))
    if period < 1:
        raise ValueError(f"frequency {hz!r} Hz is above the tick resolution")
    return period


class Priority(IntEnum):
    """Named event priorities (gem5 ``Event::Priority``); lower runs first within a tick."""

    Minimum = -128
    Default = 0
    CPU_Tick = 50
    Stat_Event = 90
    Sim_Exit = 100
    Maximum = 127


# Event._seq encodes the scheduling state so the hot path reads one slot:
#   -1            not scheduled
#   seq >= 0      scheduled; the live heap entry carries this sequence number
#   -2 - seq      scheduled but squashed; dropped unprocessed at its tick
_UNSCHEDULED = -1


class Event:
    """Something that happens at a tick. Subclass and override :meth:`process`.

    Args:
        priority: orders events scheduled for the same tick.
        name: shown in errors and :meth:`description`.
    """

    __slots__ = ("_when", "_priority", "_seq", "_queue", "_name")

    def __init__(self, priority: int = Priority.Default, name: str | None = None) -> None:
        self._when = 0
        self._priority = int(priority)
        self._seq = _UNSCHEDULED
        self._queue: EventQueue | None = None
        self._name = name

    def process(self) -> None:
        """Called when the event's tick arrives (override)."""
        raise NotImplementedError(f"{type(self).__name__}.process() is not implemented")

    def scheduled(self) -> bool:
        """True while the event sits in a queue (squashed events included, as gem5)."""
        return self._seq != _UNSCHEDULED

    def squashed(self) -> bool:
        """True when the event was squashed and will be dropped unprocessed."""
        return self._seq < _UNSCHEDULED

    def squash(self) -> None:
        """Keep the event scheduled but do not process it (gem5 ``Event::squash``)."""
        seq = self._seq
        if seq >= 0:
            self._seq = -2 - seq

    def when(self) -> int:
        """The tick the event is (or was last) scheduled for."""
        return self._when

    def priority(self) -> int:
        """The event's priority."""
        return self._priority

    def name(self) -> str:
        """The event's name (its class name when it was given none)."""
        return self._name if self._name is not None else type(self).__name__

    def description(self) -> str:
        """A one-line description for traces and errors."""
        return f"{self.name()} (priority {self._priority})"

    def __repr__(self) -> str:
        state = "scheduled" if self.scheduled() else "idle"
        if self.squashed():
            state = "squashed"
        return f"<{type(self).__name__} {self.name()!r} {state} when={self._when}>"


class EventFunctionWrapper(Event):
    """An event that calls ``callback()`` when processed (gem5's EventFunctionWrapper)."""

    __slots__ = ("callback",)

    def __init__(
        self,
        callback: Callable[[], object],
        name: str,
        priority: int = Priority.Default,
    ) -> None:
        super().__init__(priority, name)
        self.callback = callback

    def process(self) -> None:
        self.callback()


class _StopLoopError(Exception):
    """Raised by an exit event to leave the simulation loop at once."""

    def __init__(self, event: SimLoopExitEvent) -> None:
        super().__init__(event.cause)
        self.event = event


class SimLoopExitEvent(Event):
    """Ends :meth:`EventQueue.simulate`, which returns this event.

    ``cause`` and ``code`` are what the caller of :func:`exit_sim_loop` gave;
    ``tick`` is the tick the loop stopped at.
    """

    __slots__ = ("cause", "code", "tick")

    def __init__(self, cause: str, code: int = 0, priority: int = Priority.Sim_Exit) -> None:
        super().__init__(priority, "SimLoopExitEvent")
        self.cause = cause
        self.code = code
        self.tick = 0

    def process(self) -> None:
        queue = self._queue
        self.tick = queue.cur_tick if queue is not None else self._when
        raise _StopLoopError(self)

    def getCause(self) -> str:
        """gem5 spelling of :attr:`cause`."""
        return self.cause

    def getCode(self) -> int:
        """gem5 spelling of :attr:`code`."""
        return self.code

    def __repr__(self) -> str:
        return f"<SimLoopExitEvent cause={self.cause!r} code={self.code} tick={self.tick}>"


#: The result object :func:`simulate` returns (``cause``, ``code``, ``tick``).
ExitEvent = SimLoopExitEvent

_Entry = Tuple[int, int, int, Event]
_heappush = heapq.heappush
_heappop = heapq.heappop


class EventQueue:
    """A queue of events ordered by (tick, priority, scheduling order).

    Args:
        name: for messages only.
    """

    __slots__ = ("name", "cur_tick", "_heap", "_next_seq", "last_exit", "pending_exit",
                 "async_pending")

    def __init__(self, name: str = "MainEventQueue") -> None:
        self.name = name
        #: The current tick. Advanced only by servicing events (or :meth:`set_cur_tick`).
        self.cur_tick = 0
        self._heap: List[_Entry] = []
        self._next_seq = 0
        #: The exit event that ended the last :meth:`simulate` (None before any).
        self.last_exit: SimLoopExitEvent | None = None
        #: An exit asked for asynchronously (:meth:`request_exit`), not yet taken.
        self.pending_exit: Tuple[str, int] | None = None
        #: Set by another thread that left work for this queue's loop (gem5's
        #: ``async_event``): code that runs several events' worth of work without
        #: coming back to the queue (a CPU's back-to-back entries) returns to it.
        self.async_pending = False

    # -- scheduling ----------------------------------------------------------------
    def schedule(self, event: Event, when: int) -> None:
        """Schedule ``event`` at tick ``when``.

        Raises:
            SimulationError: the event is already scheduled, or ``when`` is in the past.
        """
        if event._seq != _UNSCHEDULED:
            raise SimulationError(
                f"event {event.name()!r} is already scheduled at tick {event._when}"
            )
        if when < self.cur_tick:
            raise SimulationError(
                f"event {event.name()!r} scheduled in the past: tick {when} < "
                f"current tick {self.cur_tick}"
            )
        seq = self._next_seq
        self._next_seq = seq + 1
        event._seq = seq
        event._when = when
        event._queue = self
        _heappush(self._heap, (when, event._priority, seq, event))

    def deschedule(self, event: Event) -> None:
        """Remove a scheduled (or squashed) event from this queue.

        Raises:
            SimulationError: the event is not scheduled on this queue.
        """
        if event._seq == _UNSCHEDULED or event._queue is not self:
            raise SimulationError(f"event {event.name()!r} is not scheduled on {self.name}")
        event._seq = _UNSCHEDULED

    def reschedule(self, event: Event, when: int, always: bool = False) -> None:
        """Move a scheduled event to ``when``; with ``always`` schedule it if it is idle.

        A squashed event is un-squashed, as in gem5.

        Raises:
            SimulationError: not scheduled (and not ``always``), or ``when`` in the past.
        """
        if event._seq == _UNSCHEDULED:
            if not always:
                raise SimulationError(f"cannot reschedule unscheduled event {event.name()!r}")
        elif event._queue is not self:
            raise SimulationError(f"event {event.name()!r} is scheduled on another queue")
        else:
            if when < self.cur_tick:
                raise SimulationError(
                    f"event {event.name()!r} rescheduled in the past: tick {when} < "
                    f"current tick {self.cur_tick}"
                )
            event._seq = _UNSCHEDULED
        self.schedule(event, when)

    def purge(self, event: Event) -> None:
        """Deschedule ``event`` (when scheduled here) and drop every heap entry of it
        at once (O(n)): an event that moves to another queue must leave no stale
        entry behind, since sequence numbers are per queue."""
        if event._seq != _UNSCHEDULED and event._queue is self:
            event._seq = _UNSCHEDULED
        heap = self._heap
        kept = [entry for entry in heap if entry[3] is not event]
        if len(kept) != len(heap):
            heap[:] = kept
            heapq.heapify(heap)

    def squash(self, event: Event) -> None:
        """Squash a scheduled event (see :meth:`Event.squash`)."""
        if event._seq == _UNSCHEDULED or event._queue is not self:
            raise SimulationError(f"event {event.name()!r} is not scheduled on {self.name}")
        event.squash()

    # -- inspection ----------------------------------------------------------------
    def _prune(self) -> None:
        # Drop stale (descheduled) and squashed entries sitting at the head.
        heap = self._heap
        while heap:
            _, _, seq, ev = heap[0]
            if ev._seq == seq:
                return
            heapq.heappop(heap)
            if ev._seq == -2 - seq:
                ev._seq = _UNSCHEDULED

    def empty(self) -> bool:
        """True when no live event is scheduled."""
        self._prune()
        return not self._heap

    def next_tick(self) -> int:
        """The tick of the next live event (:data:`MAX_TICK` when empty)."""
        self._prune()
        return self._heap[0][0] if self._heap else MAX_TICK

    def next_tick_except(self, events: AbstractSet[Event]) -> int:
        """The tick of the next live event that is not one of ``events``
        (:data:`MAX_TICK` when there is none); O(n). Several CPUs on one queue use
        it to size an entry by the devices' events, not by each other's ticks."""
        best = MAX_TICK
        for when, _, seq, ev in self._heap:
            if when < best and ev._seq == seq and ev not in events:
                best = when
        return best

    def __len__(self) -> int:
        """The number of live (scheduled, not squashed) events; O(n)."""
        return sum(1 for _, _, seq, ev in self._heap if ev._seq == seq)

    def set_cur_tick(self, tick: int) -> None:
        """Set the current tick (restoring a checkpoint); must not pass a scheduled event."""
        if tick < 0:
            raise SimulationError(f"tick must be non-negative, got {tick}")
        if tick > self.next_tick():
            raise SimulationError(
                f"cannot move time to {tick}: an event is scheduled at {self.next_tick()}"
            )
        self.cur_tick = tick

    # -- asynchronous exits ----------------------------------------------------------
    def request_exit(self, cause: str, code: int = 0) -> None:
        """Make the running (or the next) :meth:`simulate` return at its next safe point.

        gem5's ``async_event``: safe from a signal handler and from another
        thread, because it only stores ``(cause, code)`` in :attr:`pending_exit`;
        the loop checks it after every event (and a CPU after every entry it
        leaves early) and ends with an exit event of that cause at the current
        tick. A later request replaces one not yet taken.
        """
        self.pending_exit = (cause, code)

    def _take_pending_exit(self) -> SimLoopExitEvent:
        pending, self.pending_exit = self.pending_exit, None
        cause, code = pending if pending is not None else (QUEUE_EMPTY_CAUSE, 0)
        event = SimLoopExitEvent(cause, code)
        event.tick = self.cur_tick
        return event

    def advance_to(self, tick: int) -> None:
        """Move time forward to ``tick`` without servicing an event (a CPU that runs its
        own next tick at once): neither back in time nor past a scheduled event."""
        if tick < self.cur_tick or tick > self.next_tick():
            raise SimulationError(
                f"cannot advance time from {self.cur_tick} to {tick} "
                f"(next event at {self.next_tick()})"
            )
        self.cur_tick = tick

    # -- running -------------------------------------------------------------------
    def service_one(self) -> Event | None:
        """Process the next live event and return it (None when the queue is empty).

        An exit event is recorded in :attr:`last_exit` instead of stopping anything.
        """
        heap = self._heap
        while heap:
            when, _, seq, ev = heapq.heappop(heap)
            if ev._seq != seq:
                if ev._seq == -2 - seq:
                    ev._seq = _UNSCHEDULED
                continue
            self.cur_tick = when
            ev._seq = _UNSCHEDULED
            try:
                ev.process()
            except _StopLoopError as stop:
                self.last_exit = stop.event
            return ev
        return None

    def simulate(self, max_ticks: int | None = None, *,
                 async_exits: bool = True) -> SimLoopExitEvent:
        """Run events until an exit event fires and return it (gem5 ``simulate()``).

        Args:
            max_ticks: run for at most this many ticks from now (as gem5's
                ``simulate(num_cycles)``); the loop then stops with cause
                :data:`SIM_LIMIT_CAUSE` at ``cur_tick + max_ticks``.
            async_exits: end at a :meth:`request_exit` (checked before the first
                event and after each one); False leaves a request pending (a drain).

        Returns:
            The exit event; when the queue runs dry first, an exit event with
            cause :data:`QUEUE_EMPTY_CAUSE` at the current tick.
        """
        limit: SimLoopExitEvent | None = None
        if max_ticks is not None:
            if max_ticks < 0:
                raise SimulationError(f"max_ticks must be non-negative, got {max_ticks}")
        if async_exits and self.pending_exit is not None:
            self.last_exit = self._take_pending_exit()
            return self.last_exit
        if max_ticks is not None:
            limit = SimLoopExitEvent(SIM_LIMIT_CAUSE, 0)
            self.schedule(limit, self.cur_tick + max_ticks)
        heap = self._heap
        pop = _heappop
        result: SimLoopExitEvent
        # The loop is inlined (not service_one) because it is the simulator's hot path.
        try:
            while heap:
                when, _, seq, ev = pop(heap)
                if ev._seq != seq:
                    if ev._seq == -2 - seq:
                        ev._seq = -1
                    continue
                self.cur_tick = when
                ev._seq = -1
                ev.process()
                if self.pending_exit is not None and async_exits:
                    raise _StopLoopError(self._take_pending_exit())
            result = SimLoopExitEvent(QUEUE_EMPTY_CAUSE, 0)
            result.tick = self.cur_tick
        except _StopLoopError as stop:
            result = stop.event
        finally:
            if limit is not None and limit.scheduled():
                self.deschedule(limit)
        self.last_exit = result
        return result

    def reset(self) -> None:
        """Forget every event and go back to tick 0 (for tests and fresh simulations)."""
        for _, _, seq, ev in self._heap:
            if ev._seq == seq or ev._seq == -2 - seq:
                ev._seq = _UNSCHEDULED
        self._heap.clear()
        self.cur_tick = 0
        self._next_seq = 0
        self.last_exit = None
        self.pending_exit = None

    def __repr__(self) -> str:
        return f"<EventQueue {self.name!r} tick={self.cur_tick} entries={len(self._heap)}>"

    # gem5 spellings, because the CPU model is written against gem5's names.
    serviceOne = service_one
    nextTick = next_tick
    setCurTick = set_cur_tick

    def getCurTick(self) -> int:
        """gem5 spelling of :attr:`cur_tick`."""
        return self.cur_tick

    curTick = getCurTick


def exit_sim_loop(
    cause: str,
    code: int = 0,
    when: int | None = None,
    queue: EventQueue | None = None,
) -> SimLoopExitEvent:
    """Make the simulation loop return at tick ``when`` (default: now) with ``cause``/``code``.

    The exit event has the Sim_Exit priority, so every other event of that tick
    runs first. Returns the scheduled exit event.
    """
    q = main_queue if queue is None else queue
    event = SimLoopExitEvent(cause, code)
    q.schedule(event, q.cur_tick if when is None else when)
    return event


exitSimLoop = exit_sim_loop

#: The default event queue. :func:`reset` empties it in place.
main_queue = EventQueue("MainEventQueue")


def cur_tick() -> int:
    """The current tick of :data:`main_queue`."""
    return main_queue.cur_tick


curTick = cur_tick


def simulate(max_ticks: int | None = None) -> SimLoopExitEvent:
    """Run :data:`main_queue` (see :meth:`EventQueue.simulate`)."""
    return main_queue.simulate(max_ticks)


def reset() -> None:
    """Empty :data:`main_queue` and set its tick to 0."""
    main_queue.reset()


class Clocked:
    """A clock domain's view of time (gem5 ``Clocked``): edges, cycles and ticks.

    Args:
        clock_period: ticks per cycle (1000 is 1 GHz).
        queue: the event queue whose current tick defines "now".
    """

    def __init__(self, clock_period: int, queue: EventQueue | None = None) -> None:
        if not isinstance(clock_period, int) or isinstance(clock_period, bool):
            raise TypeError(f"clock_period must be an int number of ticks, got {clock_period!r}")
        if clock_period <= 0:
            raise ValueError(f"clock_period must be positive, got {clock_period}")
        self._clock_period = clock_period
        self._queue = main_queue if queue is None else queue
        self._tick = 0
        self._cycle = 0
        self.reset_clock()

    def _update(self) -> None:
        # Advance the cached (edge tick, cycle) pair to the first edge at or after now.
        now = self._queue.cur_tick
        if self._tick >= now:
            return
        period = self._clock_period
        elapsed = -((self._tick - now) // period)  # ceil((now - tick) / period)
        self._cycle += elapsed
        self._tick += elapsed * period

    def reset_clock(self) -> None:
        """Align the clock so that the current tick is an edge (gem5 ``resetClock``)."""
        now = self._queue.cur_tick
        period = self._clock_period
        self._cycle = -(-now // period)
        self._tick = self._cycle * period

    def clock_period(self) -> int:
        """Ticks per cycle."""
        return self._clock_period

    def set_clock_period(self, period: int) -> None:
        """Change the clock period; the current edge stays where it is."""
        if period <= 0:
            raise ValueError(f"clock_period must be positive, got {period}")
        self._update()
        self._clock_period = period

    def frequency(self) -> float:
        """Clock frequency in Hz."""
        return TICKS_PER_SECOND / self._clock_period

    def clock_edge(self, cycles: int = 0) -> int:
        """The tick of the clock edge ``cycles`` cycles after the next (or current) edge."""
        # _update() inlined: this is on every CPU tick's path.
        tick = self._tick
        period = self._clock_period
        now = self._queue.cur_tick
        if tick < now:
            elapsed = -((tick - now) // period)  # ceil((now - tick) / period)
            self._cycle += elapsed
            tick += elapsed * period
            self._tick = tick
        return tick + cycles * period

    def cur_cycle(self) -> int:
        """The cycle count at the next (or current) clock edge."""
        self._update()
        return self._cycle

    def next_cycle(self) -> int:
        """The tick of the next edge strictly after this cycle (``clock_edge(1)``)."""
        return self.clock_edge(1)

    def cycles_to_ticks(self, cycles: int) -> int:
        """Cycles -> ticks."""
        return cycles * self._clock_period

    def ticks_to_cycles(self, ticks: int) -> int:
        """Ticks -> cycles, rounded up (gem5 ``ticksToCycles``)."""
        return -(-ticks // self._clock_period)

    # gem5 spellings.
    clockEdge = clock_edge
    curCycle = cur_cycle
    nextCycle = next_cycle
    clockPeriod = clock_period
    cyclesToTicks = cycles_to_ticks
    ticksToCycles = ticks_to_cycles
    resetClock = reset_clock
