"""tick() services exit after exit without the queue while its next tick would be the
queue's next event; anything scheduled meanwhile still runs at its own tick."""

from __future__ import annotations

from typing import Any, List, Tuple

from cpu_rig import Recorder

from kvmcpu.sim.eventq import EventFunctionWrapper, exit_sim_loop

PORT = 0x80


class Scheduling(Recorder):
    """Records writes; on write ``at`` schedules an event ``delay`` ticks later, and ends
    the simulation loop on write ``stop``."""

    def __init__(self, queue: Any, at: int, delay: int, stop: int) -> None:
        super().__init__(queue)
        self.at, self.delay, self.stop = at, delay, stop
        self.fired: List[Tuple[int, int]] = []  # (tick, writes seen) when the event ran
        self.event = EventFunctionWrapper(self._fire, "test.event")

    def _fire(self) -> None:
        self.fired.append((self.queue.cur_tick, len(self.log)))

    def write(self, offset: int, size: int, value: int) -> None:
        super().write(offset, size, value)
        if len(self.log) == self.at:
            self.queue.schedule(self.event, self.queue.cur_tick + self.delay)
        if len(self.log) == self.stop:
            exit_sim_loop("enough", queue=self.queue)


def test_an_event_a_device_schedules_runs_at_its_tick_between_the_exits(make_rig: Any) -> None:
    rig = make_rig("mock", "out_loop")
    rig.cpu.tc.rdx, rig.cpu.tc.rax = PORT, 0x41
    period = rig.cpu.clock_period()
    dev = Scheduling(rig.queue, at=5, delay=7 * period + 1, stop=40)
    rig.io.add(PORT, 1, dev)
    rig.start()
    assert rig.simulate(10**12).cause == "enough"
    assert len(dev.log) == 40  # the loop stopped at the write that asked for it
    ticks = [t for t, *_ in dev.log]
    assert ticks == sorted(ticks) and ticks[-1] > ticks[0]
    assert len(dev.fired) == 1
    fired_at, seen = dev.fired[0]
    assert fired_at == ticks[4] + 7 * period + 1  # exactly when it was scheduled for
    # Every write before the event happened before its tick, every one after it, after.
    assert 5 <= seen < 40
    assert all(t < fired_at for t in ticks[:seen])
    assert all(t > fired_at for t in ticks[seen:])
    assert rig.stats()["numIO"] == 40


def test_the_loop_keeps_time_as_the_queue_would(make_rig: Any) -> None:
    """out_loop on the mock: each OUT is serviced on the clock edge after the
    instructions before it ran (two per exit: OUT and JMP), whether the tick went
    through the queue or not."""
    rig = make_rig("mock", "out_loop")
    rig.cpu.tc.rdx, rig.cpu.tc.rax = PORT, 0x41
    period = rig.cpu.clock_period()
    dev = Scheduling(rig.queue, at=0, delay=0, stop=25)
    rig.io.add(PORT, 1, dev)
    rig.start()
    start = rig.queue.cur_tick
    assert rig.simulate(10**12).cause == "enough"
    ticks = [t for t, *_ in dev.log]
    assert ticks[0] == start + period  # the first OUT: one instruction
    assert [b - a for a, b in zip(ticks, ticks[1:])] == [2 * period] * 24
    assert rig.stats()["numInsts"] == 1 + 2 * 24
