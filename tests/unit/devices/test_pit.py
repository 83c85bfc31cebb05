"""8254 PIT: counts from simulated time, latch/read-back, and IRQ 0 events on an EventQueue."""

from __future__ import annotations

from typing import List

from kvmcpu.devices import IrqLine, PicPair, Pit
from kvmcpu.devices.irq import NullInterruptController
from kvmcpu.devices.pit import PIT_FREQ_HZ, cycles_to_ticks, ticks_to_cycles
from kvmcpu.sim.eventq import TICKS_PER_SECOND, EventFunctionWrapper, EventQueue


def advance(q: EventQueue, tick: int) -> None:
    """Run every event up to ``tick`` and stop the clock there."""
    stop = EventFunctionWrapper(lambda: None, "stop")
    q.schedule(stop, tick)
    while q.cur_tick < tick or q.next_tick() <= tick:
        if q.service_one() is None:
            break


def program(pit: Pit, channel: int, mode: int, count: int) -> None:
    pit.write(3, 1, (channel << 6) | 0x30 | (mode << 1))
    pit.write(channel, 1, count & 0xFF)
    pit.write(channel, 1, count >> 8)


def read_latched(pit: Pit, channel: int) -> int:
    pit.write(3, 1, channel << 6)  # counter latch
    lo = pit.read(channel, 1)
    return lo | (pit.read(channel, 1) << 8)


def test_time_conversions() -> None:
    assert ticks_to_cycles(TICKS_PER_SECOND) == PIT_FREQ_HZ
    assert cycles_to_ticks(1193) == 999_847_467  # just under 1 ms
    assert ticks_to_cycles(cycles_to_ticks(1193)) == 1193
    assert ticks_to_cycles(cycles_to_ticks(1193) - 1) == 1192


def test_count_readback_after_simulated_time() -> None:
    q = EventQueue()
    pit = Pit(queue=q)
    program(pit, 2, 0, 10000)  # channel 2, mode 0: counts down once
    assert read_latched(pit, 2) == 10000
    advance(q, cycles_to_ticks(1234))
    assert read_latched(pit, 2) == 10000 - 1234
    advance(q, cycles_to_ticks(10000))
    assert read_latched(pit, 2) == 0
    # Read-back command: latch status of channel 2 (OUT high after terminal count).
    pit.write(3, 1, 0xE8)  # 11 1 0 100 0: latch status only, channel 2
    assert pit.read(2, 1) == 0x80 | 0x30 | (0 << 1)


def test_mode2_rate_generator_reload_and_lsb_access() -> None:
    q = EventQueue()
    pit = Pit(queue=q)
    program(pit, 1, 2, 1000)
    advance(q, cycles_to_ticks(2500))
    assert read_latched(pit, 1) == 500
    pit.write(3, 1, 0x54)  # channel 1, LSB only, mode 2
    pit.write(1, 1, 200)
    advance(q, q.cur_tick + cycles_to_ticks(50))
    pit.write(3, 1, 0x40)  # latch
    assert pit.read(1, 1) == 150  # the latch is read in the programmed (LSB) mode


def test_mode3_square_wave_counts_by_two() -> None:
    q = EventQueue()
    pit = Pit(queue=q)
    program(pit, 0, 3, 1000)
    advance(q, cycles_to_ticks(100))
    assert read_latched(pit, 0) == 800
    assert pit.channels[0].out()
    advance(q, cycles_to_ticks(600))
    assert not pit.channels[0].out()


def test_irq0_events_at_the_right_ticks() -> None:
    q = EventQueue()
    seen: List[int] = []

    class Recorder(NullInterruptController):
        def set_irq(self, line: int, level: bool) -> None:
            if level:
                seen.append(q.cur_tick)

    pit = Pit(irq=IrqLine(Recorder(), 0), queue=q)
    q.set_cur_tick(5_000)
    program(pit, 0, 2, 1193)  # ~1 kHz
    load = 5_000
    advance(q, load + cycles_to_ticks(3 * 1193) + 10)
    assert seen == [load + cycles_to_ticks(k * 1193) for k in (1, 2, 3)]
    assert pit.channels[0].irq_count == 3
    # Reprogramming in mode 0 gives exactly one interrupt at terminal count.
    seen.clear()
    program(pit, 0, 0, 100)
    start = q.cur_tick
    advance(q, start + cycles_to_ticks(1000))
    assert seen == [start + cycles_to_ticks(100)]


def test_pit_drives_pic_irq0() -> None:
    q = EventQueue()
    pic = PicPair()
    for port, icw in ((0, 0x11), (1, 0x20), (1, 0x04), (1, 0x01)):
        pic.master.write(port, 1, icw)
    pit = Pit(irq=IrqLine(pic, 0), queue=q)
    program(pit, 0, 2, 1193)
    advance(q, cycles_to_ticks(1193))
    assert pic.has_pending() and pic.acknowledge() == 0x20
    pic.master.write(0, 1, 0x20)
    advance(q, cycles_to_ticks(2 * 1193))
    assert pic.acknowledge() == 0x20


def test_unprogrammed_channels_schedule_nothing() -> None:
    q = EventQueue()
    pit = Pit(irq=IrqLine(NullInterruptController(), 0), queue=q)
    assert q.empty()
    pit.write(3, 1, 0x34)  # control word only: no count yet
    assert q.empty()
    assert pit.read(3, 1) == 0xFF
