"""EventQueue.next_tick_except (several CPUs on one queue) and purge (an event that
moves to another queue, where sequence numbers start again)."""

from __future__ import annotations

from kvmcpu.sim.eventq import MAX_TICK, EventFunctionWrapper, EventQueue


def _ev(name: str, log: list) -> EventFunctionWrapper:  # type: ignore[type-arg]
    return EventFunctionWrapper(lambda: log.append(name), name)


def test_next_tick_except_skips_the_given_events_and_stale_entries() -> None:
    log: list = []  # type: ignore[type-arg]
    q = EventQueue()
    cpu1, device, gone = _ev("cpu1", log), _ev("device", log), _ev("gone", log)
    q.schedule(cpu1, 10)
    q.schedule(gone, 20)
    q.schedule(device, 30)
    q.deschedule(gone)
    assert q.next_tick() == 10
    assert q.next_tick_except({cpu1}) == 30  # not 20: that entry is stale
    assert q.next_tick_except({cpu1, device}) == MAX_TICK
    assert q.next_tick_except(set()) == 10


def test_purge_leaves_no_entry_another_queue_could_revive() -> None:
    log: list = []  # type: ignore[type-arg]
    a, b = EventQueue("a"), EventQueue("b")
    tick = _ev("tick", log)
    a.schedule(tick, 5)  # sequence 0 on a
    a.purge(tick)
    b.schedule(tick, 7)  # sequence 0 on b as well
    assert a.empty()
    assert a.service_one() is None and log == []  # with deschedule alone it would run here
    assert b.next_tick() == 7
    b.service_one()
    assert log == ["tick"]


def test_deschedule_alone_would_revive_it() -> None:
    """Why purge exists: the lazy heap entry left by deschedule matches the event's
    new sequence number on the other queue."""
    log: list = []  # type: ignore[type-arg]
    a, b = EventQueue("a"), EventQueue("b")
    tick = _ev("tick", log)
    a.schedule(tick, 5)
    a.deschedule(tick)
    b.schedule(tick, 7)
    assert not a.empty()
