"""The MC146818A RTC's interrupts and modes in simulated time, against the
datasheet: periodic rates from register A, update-ended and alarm interrupts,
register C read-to-clear, the SET bit, UIP, BCD/binary and 12/24-hour alarms."""

from __future__ import annotations

import calendar
from pathlib import Path
from typing import Tuple

from kvmcpu.devices.cmos import Cmos
from kvmcpu.devices.irq import IrqLine, NullInterruptController
from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut, write_checkpoint
from kvmcpu.sim.eventq import TICKS_PER_SECOND, EventQueue

S = TICKS_PER_SECOND
#: 2024-02-29 13:45:07 UTC
T0 = calendar.timegm((2024, 2, 29, 13, 45, 7, 0, 0, 0))


def make(start: int = T0) -> Tuple[Cmos, EventQueue, IrqLine]:
    q = EventQueue("rtc")
    irq = IrqLine(NullInterruptController(), 8)
    return Cmos(clock=lambda: start, queue=q, irq=irq), q, irq


def reg(c: Cmos, index: int, value: int | None = None) -> int:
    c.write(0, 1, index)
    if value is None:
        return c.read(1, 1)
    c.write(1, 1, value)
    return value


def run_to(q: EventQueue, tick: int) -> None:
    while not q.empty() and q.next_tick() <= tick:
        q.service_one()
    q.set_cur_tick(tick)


def test_the_clock_follows_simulated_time() -> None:
    c, q, _ = make()
    assert reg(c, 0) == 0x07
    q.set_cur_tick(53 * S)  # 13:46:00
    assert (reg(c, 0), reg(c, 2), reg(c, 4)) == (0x00, 0x46, 0x13)


def test_periodic_rates_of_register_a() -> None:
    # RS -> period (datasheet table 3, 32.768 kHz time base).
    for rs, period_ns in ((1, 3_906_250), (2, 7_812_500), (3, 122_070.3125), (6, 976_562.5),
                          (15, 500_000_000)):
        c, q, irq = make()
        reg(c, 0x0A, 0x20 | rs)
        reg(c, 0x0B, 0x42)  # PIE
        edges = irq.raised_count
        ticks = round(period_ns * 1000)
        run_to(q, 10 * ticks + ticks // 2)
        # Ten periods: the line rises at the first and stays high until C is read.
        assert irq.raised_count == edges + 1 and irq.level
        # IRQF | PF (and UF where a second passed), then cleared.
        assert reg(c, 0x0C) & 0xE0 == 0xC0 and not irq.level
        assert reg(c, 0x0C) == 0
        run_to(q, 11 * ticks + ticks // 2)
        assert irq.level and reg(c, 0x0C) & 0xE0 == 0xC0


def test_flags_are_set_without_their_enable_and_raise_nothing() -> None:
    c, q, irq = make()
    q.set_cur_tick(S + 1)  # an update and 1024 periods later
    assert reg(c, 0x0C) == 0x50  # PF | UF, no IRQF
    assert irq.raised_count == 0
    reg(c, 0x0A, 0x20)  # RS = 0: no periodic flag
    q.set_cur_tick(3 * S)
    assert reg(c, 0x0C) == 0x10


def test_update_ended_interrupt_each_second() -> None:
    c, q, irq = make()
    reg(c, 0x0A, 0x20)
    reg(c, 0x0B, 0x12)  # UIE
    run_to(q, S)
    assert irq.level and reg(c, 0x0C) == 0x90 and reg(c, 0) == 0x08
    run_to(q, 2 * S)
    assert irq.raised_count == 2 and reg(c, 0x0C) == 0x90 and reg(c, 0) == 0x09


def test_alarm_with_dont_care_and_exact_fields() -> None:
    c, q, irq = make()
    reg(c, 0x0A, 0x20)
    reg(c, 0x01, 0x10)  # alarm at ..:..:10
    reg(c, 0x03, 0xFF)
    reg(c, 0x05, 0xC0)  # don't care (0xc0-0xff)
    reg(c, 0x0B, 0x22)  # AIE
    run_to(q, 2 * S)
    assert not irq.level
    run_to(q, 3 * S)  # 13:45:10
    assert irq.level and reg(c, 0x0C) & 0xA0 == 0xA0
    reg(c, 0x03, 0x45)
    reg(c, 0x05, 0x14)  # 14:45:10: not today's next minute
    run_to(q, 63 * S)
    assert not irq.level and reg(c, 0x0C) & 0x20 == 0


def test_alarm_in_binary_12_hour_mode() -> None:
    c, q, irq = make()
    reg(c, 0x0A, 0x20)
    reg(c, 0x0B, 0x04)  # binary, 12-hour
    assert reg(c, 4) == 0x81  # 1 PM
    reg(c, 0x01, 9)
    reg(c, 0x03, 45)
    reg(c, 0x05, 0x81)
    reg(c, 0x0B, 0x24)  # AIE
    run_to(q, 2 * S)
    assert irq.level and reg(c, 0x0C) & 0x20


def test_set_stops_updates_and_clears_uie() -> None:
    c, q, irq = make()
    reg(c, 0x0B, 0x12)
    reg(c, 0x0B, 0x92)  # SET (with UIE asked: cleared)
    assert reg(c, 0x0B) == 0x82
    run_to(q, 5 * S)
    assert reg(c, 0) == 0x07 and not irq.level
    reg(c, 0x0B, 0x02)
    run_to(q, 6 * S)
    assert reg(c, 0) == 0x08  # the clock went on from where it stopped


def test_uip_in_the_244_us_before_an_update() -> None:
    c, q, _ = make()
    q.set_cur_tick(S - 245_000_000)
    assert reg(c, 0x0A) == 0x26
    q.set_cur_tick(S - 243_000_000)
    assert reg(c, 0x0A) == 0xA6
    q.set_cur_tick(S)
    assert reg(c, 0x0A) == 0x26
    reg(c, 0x0A, 0x66)  # divider held in reset: no update, no UIP
    q.set_cur_tick(2 * S - 1000)
    assert reg(c, 0x0A) == 0x66


def test_century_register() -> None:
    c, _, _ = make()
    assert reg(c, 0x32) == 0x20
    reg(c, 0x32, 0x21)
    assert reg(c, 0x32) == 0x21 and reg(c, 9) == 0x24


def test_checkpoint_in_the_middle_of_periodic_interrupts(tmp_path: Path) -> None:
    c, q, irq = make()
    reg(c, 0x0A, 0x2F)  # 2 Hz
    reg(c, 0x0B, 0x42)
    run_to(q, S // 2)
    assert irq.level
    cp = CheckpointOut()
    with cp.subsection("cmos"):
        c.serialize(cp)
    path = write_checkpoint(tmp_path / "cpt", cp)
    q2 = EventQueue("rtc2")
    q2.set_cur_tick(S // 2)
    irq2 = IrqLine(NullInterruptController(), 8)
    other = Cmos(clock=lambda: 0, queue=q2, irq=irq2)
    cin = CheckpointIn.load(path)
    with cin.subsection("cmos"):
        other.unserialize(cin)
    assert irq2.level and reg(other, 0) == 0x07  # the time came from the checkpoint
    assert reg(other, 0x0C) == 0xC0
    run_to(q2, S)
    assert irq2.level and reg(other, 0x0C) == 0xD0  # PF and the update at 1 s
