"""Event queue throughput: kvmcpu.sim.EventQueue next to a bare ``heapq`` loop.

Both sides schedule N events at random ticks and then service all of them,
each event calling a no-op callback, in the same process and the same run.
The bare loop pushes ``(tick, priority, seq, callback)`` tuples and pops and
calls them; it is the floor any Python event queue can reach. The event
objects (and the baseline's callbacks) are created before the clock starts,
as a simulator's events are (gem5 reuses its events); the figure measured
with creation inside the timed region is reported too.

Run as a script: ``python benchmarks/bench_event_queue.py [--quick]``.
"""

from __future__ import annotations

import gc
import heapq
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

try:
    from kvmcpu.sim.eventq import Event, EventFunctionWrapper, EventQueue, Priority
except ImportError:  # run as a script from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from kvmcpu.sim.eventq import Event, EventFunctionWrapper, EventQueue, Priority

TARGET_RATIO = 2.0
TARGET_EVENTS_PER_S = 1_000_000


def _noop() -> None:
    pass


def _ticks(n: int, seed: int = 1) -> List[int]:
    rng = random.Random(seed)
    return [rng.randrange(0, 1 << 40) for _ in range(n)]


def _time_event_queue(ticks: List[int]) -> float:
    queue = EventQueue("bench")
    events = [EventFunctionWrapper(_noop, "bench") for _ in ticks]
    schedule = queue.schedule
    t0 = time.perf_counter()
    for ev, when in zip(events, ticks):
        schedule(ev, when)
    exit_event = queue.simulate()
    elapsed = time.perf_counter() - t0
    assert exit_event.cause == "event queue empty"
    assert queue.cur_tick == max(ticks)
    return elapsed


def _time_event_queue_with_creation(ticks: List[int]) -> float:
    queue = EventQueue("bench")
    schedule = queue.schedule
    t0 = time.perf_counter()
    for when in ticks:
        schedule(EventFunctionWrapper(_noop, "bench"), when)
    queue.simulate()
    return time.perf_counter() - t0


def _time_heapq(ticks: List[int]) -> float:
    callbacks: List[Callable[[], None]] = [_noop] * len(ticks)
    heap: List[Tuple[int, int, int, Callable[[], None]]] = []
    push = heapq.heappush
    pop = heapq.heappop
    prio = int(Priority.Default)
    t0 = time.perf_counter()
    seq = 0
    for cb, when in zip(callbacks, ticks):
        push(heap, (when, prio, seq, cb))
        seq += 1
    now = 0
    while heap:
        now, _, _, cb = pop(heap)
        cb()
    elapsed = time.perf_counter() - t0
    assert now == max(ticks)
    return elapsed


class _HoldEvent(Event):
    """Reschedules itself: the steady state of a simulator (the "hold model")."""

    __slots__ = ("queue", "delays", "left")

    def __init__(self, queue: EventQueue, delays: List[int], count: int) -> None:
        super().__init__(Priority.Default, "hold")
        self.queue = queue
        self.delays = delays
        self.left = count

    def process(self) -> None:
        self.left -= 1
        if self.left:
            q = self.queue
            q.schedule(self, q.cur_tick + self.delays[self.left])


def _time_hold(pending: int, per_event: int) -> Tuple[float, float]:
    """Hold model: ``pending`` events, each rescheduling itself ``per_event`` times."""
    rng = random.Random(2)
    delays = [rng.randrange(1, 1 << 20) for _ in range(per_event)]
    queue = EventQueue("hold")
    events = [_HoldEvent(queue, delays, per_event) for _ in range(pending)]
    t0 = time.perf_counter()
    for i, ev in enumerate(events):
        queue.schedule(ev, i)
    queue.simulate()
    t_queue = time.perf_counter() - t0

    heap: List[Tuple[int, int, int, List[int]]] = []
    push = heapq.heappush
    pop = heapq.heappop
    t0 = time.perf_counter()
    seq = 0
    for i in range(pending):
        push(heap, (i, 0, seq, [per_event]))
        seq += 1
    while heap:
        now, prio, _, left = pop(heap)
        left[0] -= 1
        if left[0]:
            push(heap, (now + delays[left[0]], prio, seq, left))
            seq += 1
    t_heapq = time.perf_counter() - t0
    return t_queue, t_heapq


def run(quick: bool = False) -> Dict[str, Any]:
    """Measure and return the figures (see the module docstring)."""
    n = 100_000 if quick else 1_000_000
    repeats = 2 if quick else 3
    ticks = _ticks(n)
    best_q = best_h = best_c = float("inf")
    hold_per_event = 100 if quick else n // 1000
    hold_n = 1000 * hold_per_event
    best_hold_q = best_hold_h = float("inf")
    gc_was_enabled = gc.isenabled()
    gc.disable()  # the collector's pauses would land on whichever side allocates
    try:
        for _ in range(repeats):
            best_h = min(best_h, _time_heapq(ticks))
            best_q = min(best_q, _time_event_queue(ticks))
            best_c = min(best_c, _time_event_queue_with_creation(ticks))
            hold_q, hold_h = _time_hold(1000, hold_per_event)
            best_hold_q = min(best_hold_q, hold_q)
            best_hold_h = min(best_hold_h, hold_h)
    finally:
        if gc_was_enabled:
            gc.enable()
    ratio = best_q / best_h
    figures = {
        "events": n,
        "events_per_s": n / best_q,
        "heapq_events_per_s": n / best_h,
        "time_ratio_vs_heapq": ratio,
        "events_per_s_incl_creation": n / best_c,
        "hold_1k_pending_events_per_s": hold_n / best_hold_q,
        "hold_1k_pending_heapq_events_per_s": hold_n / best_hold_h,
        "hold_1k_pending_time_ratio_vs_heapq": best_hold_q / best_hold_h,
    }
    return {
        "figures": figures,
        "ratio": ratio,
        "target": TARGET_RATIO,
        "higher_is_better": False,
    }


def main(argv: List[str]) -> int:
    result = run(quick="--quick" in argv)
    for key, value in result["figures"].items():
        if isinstance(value, float):
            print(f"{key:28s} {value:,.2f}")
        else:
            print(f"{key:28s} {value:,}")
    figures = result["figures"]
    print(f"{'target ratio':28s} <= {result['target']}: "
          f"{'met' if result['ratio'] <= TARGET_RATIO else 'missed'}")
    print(f"{'target events/s':28s} >= {TARGET_EVENTS_PER_S:,}: "
          f"{'met' if figures['events_per_s'] >= TARGET_EVENTS_PER_S else 'missed'}"
          f" (bare heapq on this host: {figures['heapq_events_per_s']:,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
