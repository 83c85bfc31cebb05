"""Event queue, simulation loop and Clocked."""

from __future__ import annotations

import random
from typing import List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmcpu.errors import SimulationError
from kvmcpu.sim import eventq
from kvmcpu.sim.eventq import (
    MAX_TICK,
    QUEUE_EMPTY_CAUSE,
    SIM_LIMIT_CAUSE,
    Clocked,
    Event,
    EventFunctionWrapper,
    EventQueue,
    Priority,
    exit_sim_loop,
    frequency_to_period,
    seconds_to_ticks,
    ticks_to_seconds,
)


class Recorder(Event):
    __slots__ = ("log", "tag")

    def __init__(self, log: List[object], tag: object, priority: int = Priority.Default) -> None:
        super().__init__(priority, f"rec{tag}")
        self.log = log
        self.tag = tag

    def process(self) -> None:
        self.log.append(self.tag)


@pytest.fixture
def q() -> EventQueue:
    return EventQueue("test")


def test_priorities_are_gem5_values() -> None:
    assert Priority.Default == 0
    assert Priority.CPU_Tick == 50
    assert Priority.Stat_Event == 90
    assert Priority.Sim_Exit == 100
    assert eventq.TICKS_PER_SECOND == 10**12


def test_order_tick_then_priority_then_fifo(q: EventQueue) -> None:
    log: List[object] = []
    q.schedule(Recorder(log, "t20"), 20)
    q.schedule(Recorder(log, "stat", Priority.Stat_Event), 10)
    q.schedule(Recorder(log, "a"), 10)
    q.schedule(Recorder(log, "cpu", Priority.CPU_Tick), 10)
    q.schedule(Recorder(log, "b"), 10)
    q.schedule(Recorder(log, "c"), 10)
    ex = q.simulate()
    assert log == ["a", "b", "c", "cpu", "stat", "t20"]
    assert ex.cause == QUEUE_EMPTY_CAUSE
    assert ex.tick == 20 and q.cur_tick == 20


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.sampled_from(list(Priority))), max_size=60))
def test_random_schedules_run_in_sorted_stable_order(items: List[tuple[int, Priority]]) -> None:
    q = EventQueue()
    log: List[object] = []
    for i, (when, prio) in enumerate(items):
        q.schedule(Recorder(log, i, prio), when)
    q.simulate()
    expected = [i for i, _ in sorted(enumerate(items), key=lambda p: (p[1][0], p[1][1], p[0]))]
    assert log == expected


def test_schedule_in_past_and_twice_raise(q: EventQueue) -> None:
    ev = EventFunctionWrapper(lambda: None, "x")
    q.schedule(ev, 5)
    with pytest.raises(SimulationError, match="already scheduled"):
        q.schedule(ev, 6)
    q.simulate()
    assert q.cur_tick == 5
    with pytest.raises(SimulationError, match="in the past"):
        q.schedule(ev, 4)
    q.schedule(ev, 5)  # now is fine
    assert ev.scheduled() and ev.when() == 5


def test_deschedule_reschedule(q: EventQueue) -> None:
    log: List[object] = []
    a, b = Recorder(log, "a"), Recorder(log, "b")
    q.schedule(a, 10)
    q.schedule(b, 20)
    q.deschedule(a)
    assert not a.scheduled()
    with pytest.raises(SimulationError):
        q.deschedule(a)
    q.reschedule(b, 5)
    assert b.when() == 5
    with pytest.raises(SimulationError):
        q.reschedule(a, 7)
    q.reschedule(a, 7, always=True)
    assert q.next_tick() == 5
    assert len(q) == 2
    q.simulate()
    assert log == ["b", "a"]
    assert q.cur_tick == 7


def test_squash_keeps_scheduled_until_its_tick(q: EventQueue) -> None:
    log: List[object] = []
    a = Recorder(log, "a")
    q.schedule(a, 10)
    q.squash(a)
    assert a.scheduled() and a.squashed()
    assert q.empty()
    assert not a.scheduled()  # pruned at the head
    q.schedule(a, 12)
    q.schedule(Recorder(log, "b"), 11)
    a.squash()
    q.reschedule(a, 15)  # reschedule un-squashes (gem5)
    assert not a.squashed()
    q.simulate()
    assert log == ["b", "a"]


def test_service_one_and_next_tick(q: EventQueue) -> None:
    log: List[object] = []
    assert q.empty() and q.next_tick() == MAX_TICK and q.service_one() is None
    a = Recorder(log, "a")
    q.schedule(a, 3)
    assert q.nextTick() == 3
    assert q.serviceOne() is a
    assert log == ["a"] and q.curTick() == 3


def test_exit_sim_loop_runs_after_same_tick_events(q: EventQueue) -> None:
    log: List[object] = []
    q.schedule(EventFunctionWrapper(lambda: exit_sim_loop("done", 7, queue=q), "ex"), 10)
    q.schedule(Recorder(log, "same-tick"), 10)
    q.schedule(Recorder(log, "later"), 11)
    ex = q.simulate()
    assert (ex.cause, ex.code, ex.tick) == ("done", 7, 10)
    assert ex.getCause() == "done" and ex.getCode() == 7
    assert log == ["same-tick"]
    ex2 = q.simulate()  # continue, as gem5
    assert log == ["same-tick", "later"] and ex2.cause == QUEUE_EMPTY_CAUSE


def test_exit_in_future(q: EventQueue) -> None:
    exit_sim_loop("future", 1, when=100, queue=q)
    q.schedule(Recorder([], 1), 50)
    ex = q.simulate()
    assert ex.tick == 100 and ex.code == 1


def test_max_ticks_limit(q: EventQueue) -> None:
    log: List[object] = []
    for t in (100, 200, 300):
        q.schedule(Recorder(log, t), t)
    ex = q.simulate(max_ticks=250)
    assert ex.cause == SIM_LIMIT_CAUSE == "simulate() limit reached"
    assert ex.tick == 250 and log == [100, 200]
    ex = q.simulate(max_ticks=1000)  # relative to now, as gem5
    assert ex.cause == SIM_LIMIT_CAUSE and log == [100, 200, 300] and ex.tick == 1250
    q.schedule(Recorder(log, "x"), 5000)
    ex = q.simulate(max_ticks=10)
    assert ex.tick == 1260
    assert q.simulate().cause == QUEUE_EMPTY_CAUSE and q.cur_tick == 5000


def test_limit_event_removed_after_other_exit(q: EventQueue) -> None:
    exit_sim_loop("early", when=5, queue=q)
    assert q.simulate(max_ticks=100).cause == "early"
    assert q.empty()


def test_exception_in_event_propagates_and_queue_survives(q: EventQueue) -> None:
    def boom() -> None:
        raise RuntimeError("boom")

    q.schedule(EventFunctionWrapper(boom, "boom"), 1)
    q.schedule(Recorder([], 1), 2)
    with pytest.raises(RuntimeError):
        q.simulate(max_ticks=10)
    assert q.cur_tick == 1 and q.next_tick() == 2


def test_main_queue_reset() -> None:
    eventq.reset()
    ev = EventFunctionWrapper(lambda: None, "x")
    eventq.main_queue.schedule(ev, 10)
    assert eventq.simulate(max_ticks=5).tick == 5
    assert eventq.cur_tick() == 5
    eventq.reset()
    assert eventq.cur_tick() == 0 and eventq.main_queue.empty() and not ev.scheduled()
    exit_sim_loop("x", 3)
    assert eventq.simulate().code == 3
    eventq.reset()


def test_event_repr_and_base_process() -> None:
    ev = Event(name="plain")
    assert "plain" in repr(ev) and ev.name() == "plain"
    with pytest.raises(NotImplementedError):
        ev.process()
    assert Event().name() == "Event"


def test_many_random_events_with_deschedules() -> None:
    rng = random.Random(7)
    q = EventQueue()
    log: List[object] = []
    evs = [Recorder(log, i) for i in range(2000)]
    when = {}
    for i, ev in enumerate(evs):
        when[i] = rng.randrange(10_000)
        q.schedule(ev, when[i])
    removed = set(rng.sample(range(2000), 500))
    for i in removed:
        q.deschedule(evs[i])
    q.simulate()
    kept = [i for i in range(2000) if i not in removed]
    assert log == sorted(kept, key=lambda i: (when[i], i))


def test_time_conversions() -> None:
    assert seconds_to_ticks(1.5) == 1_500_000_000_000
    assert ticks_to_seconds(2_000_000_000_000) == 2.0
    assert frequency_to_period(1e9) == 1000
    assert frequency_to_period(3e9) == 333
    with pytest.raises(ValueError):
        frequency_to_period(0)


def test_clocked_edges(q: EventQueue) -> None:
    c = Clocked(1000, q)
    assert c.clock_edge() == 0 and c.clockEdge(3) == 3000
    assert c.next_cycle() == 1000 and c.nextCycle() == 1000
    q.cur_tick = 1500
    assert c.clock_edge() == 2000 and c.cur_cycle() == 2
    assert c.next_cycle() == 3000
    q.cur_tick = 2000
    assert c.clock_edge() == 2000 and c.clock_edge(1) == 3000
    assert c.cycles_to_ticks(5) == 5000 and c.cyclesToTicks(1) == 1000
    assert c.ticks_to_cycles(1001) == 2 and c.ticksToCycles(1000) == 1
    assert c.frequency() == 1e9
    q.cur_tick = 987_654_321
    assert c.clock_edge() == 987_655_000 and c.cur_cycle() == 987_655
    c.set_clock_period(500)
    assert c.clock_edge(2) == 987_656_000 and c.clock_period() == 500
    with pytest.raises(ValueError):
        Clocked(0, q)
    with pytest.raises(TypeError):
        Clocked(1.5, q)  # type: ignore[arg-type]


def test_clocked_reset_clock_aligns_now(q: EventQueue) -> None:
    q.cur_tick = 1234
    c = Clocked(1000, q)
    assert c.clock_edge() == 2000  # edges are multiples of the period
    assert c.cur_cycle() == 2
    q.cur_tick = 2500
    c.reset_clock()
    assert c.cur_cycle() == 3 and c.clock_edge() == 3000


def test_advance_to_moves_time_without_passing_an_event(q: EventQueue) -> None:
    log: List[object] = []
    q.schedule(Recorder(log, "a"), 100)
    q.advance_to(40)
    assert q.cur_tick == 40
    q.advance_to(100)  # up to the next event's own tick
    assert q.cur_tick == 100 and log == []
    with pytest.raises(SimulationError, match="cannot advance time from 100 to 99"):
        q.advance_to(99)
    with pytest.raises(SimulationError, match="next event at 100"):
        q.advance_to(101)
    assert q.cur_tick == 100
