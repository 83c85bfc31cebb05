"""The HPET against the IA-PC HPET specification 1.0a (and QEMU's register
semantics where the specification leaves them open): capabilities, the 100 MHz
main counter in simulated time, one-shot and periodic timers in 64- and 32-bit
modes, edge and level interrupts, the legacy replacement route, checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from kvmcpu.devices.hpet import Hpet, LegacyGate
from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut, write_checkpoint
from kvmcpu.sim.eventq import EventQueue

NS = 1000  # ticks


class Recorder:
    def __init__(self) -> None:
        self.calls: List[Tuple[int, bool]] = []

    def set_irq(self, line: int, level: bool) -> None:
        self.calls.append((line, level))

    def edges(self, line: int) -> int:
        return sum(1 for n, level in self.calls if n == line and level)


def make() -> Tuple[Hpet, EventQueue, Recorder, LegacyGate, Recorder]:
    q = EventQueue("hpet")
    chip, legacy_chip = Recorder(), Recorder()
    gate = LegacyGate(legacy_chip)
    return Hpet(irqchip=chip, queue=q, legacy_gate=gate), q, chip, gate, legacy_chip


def run_to(q: EventQueue, tick: int) -> None:
    while not q.empty() and q.next_tick() <= tick:
        q.service_one()
    q.set_cur_tick(tick)


def test_capabilities_and_period() -> None:
    h, _, _, _, _ = make()
    assert h.read(0, 8) == 0x00989680_8086A201
    assert h.read(4, 4) == 10_000_000  # femtoseconds: 10 ns
    assert (h.read(0, 4) >> 8) & 0x1F == 2  # three timers
    for n in range(3):
        cap = h.read(0x100 + 0x20 * n, 8)
        assert cap & 0x30 == 0x30 and cap >> 32 == 0x4  # periodic, 64-bit, GSI 2


def test_main_counter_counts_at_100_mhz_only_while_enabled() -> None:
    h, q, _, _, _ = make()
    q.set_cur_tick(1000 * NS)
    assert h.read(0xF0, 8) == 0
    h.write(0xF0, 4, 0x100)  # written while halted
    h.write(0x10, 4, 1)
    q.set_cur_tick(2000 * NS)
    assert h.read(0xF0, 8) == 0x100 + 100
    h.write(0xF0, 4, 0)  # ignored while running
    assert h.read(0xF0, 4) == 0x100 + 100
    h.write(0x10, 4, 0)
    q.set_cur_tick(9000 * NS)
    assert h.read(0xF0, 8) == 0x100 + 100


def test_one_shot_edge_on_its_route() -> None:
    h, q, chip, _, _ = make()
    h.write(0x108, 4, 500)
    h.write(0x10C, 4, 0)
    h.write(0x100, 4, (2 << 9) | 0x04)  # INT_ENB, edge, GSI 2
    h.write(0x10, 4, 1)
    run_to(q, 4999 * NS)
    assert chip.edges(2) == 0
    run_to(q, 5000 * NS)
    assert chip.calls == [(2, True), (2, False)]
    run_to(q, 10**6 * NS)
    assert chip.edges(2) == 1  # 64-bit one-shot: once


def test_periodic_with_val_set_then_period() -> None:
    h, q, chip, _, _ = make()
    assert h.read(0x108, 8) == 2**64 - 1  # the comparator's reset value
    h.write(0x108, 8, 300)  # one-shot: the comparator as written
    h.write(0x100, 4, (2 << 9) | 0x4C)  # periodic, VAL_SET, INT_ENB
    h.write(0x108, 4, 300)  # comparator and period
    h.write(0x108, 4, 100)  # VAL_SET is clear again: the period only
    assert h.read(0x108, 8) == 300 and not h.read(0x100, 4) & 0x40
    h.write(0x10, 4, 1)
    run_to(q, 3000 * NS + 1)
    assert chip.edges(2) == 1 and h.read(0x108, 8) == 400
    run_to(q, 6000 * NS + 1)
    assert chip.edges(2) == 4 and h.read(0x108, 8) == 700


def test_32bit_mode_truncates_and_wraps() -> None:
    h, q, chip, _, _ = make()
    h.write(0xF0, 4, 0xFFFFFF00)
    h.write(0xF4, 4, 0x1)
    h.write(0x120, 4, (2 << 9) | 0x104)  # 32MODE, INT_ENB, one-shot
    h.write(0x128, 8, 0x5_0000_0010)
    assert h.read(0x128, 8) == 0x10  # the comparator is 32 bits
    h.write(0x10, 4, 1)
    run_to(q, 0x110 * 10 * NS)  # the low 32 bits wrap and reach 0x10
    assert chip.edges(2) == 1
    assert h.read(0xF0, 8) == 0x2_0000_0010


def test_level_interrupt_sets_status_until_written_1() -> None:
    h, q, chip, _, _ = make()
    h.write(0x108, 4, 10)
    h.write(0x10C, 4, 0)
    h.write(0x100, 4, (2 << 9) | 0x06)  # level, INT_ENB
    h.write(0x10, 4, 1)
    run_to(q, 100 * NS)
    assert h.read(0x20, 4) == 1 and chip.calls == [(2, True)]
    h.write(0x20, 4, 0)  # writing 0 keeps it
    assert h.read(0x20, 4) == 1
    h.write(0x20, 4, 1)
    assert h.read(0x20, 4) == 0 and chip.calls == [(2, True), (2, False)]


def test_legacy_route_takes_irq0_and_irq8_and_gates_pit_and_rtc() -> None:
    h, q, chip, gate, legacy_chip = make()
    gate.set_irq(0, True)  # the PIT's line passes while the route is off
    assert legacy_chip.calls == [(0, True)]
    h.write(0x108, 4, 100)
    h.write(0x10C, 4, 0)
    h.write(0x100, 4, (2 << 9) | 0x04)
    h.write(0x128, 4, 200)
    h.write(0x12C, 4, 0)
    h.write(0x120, 4, (2 << 9) | 0x04)
    h.write(0x10, 4, 3)  # ENABLE_CNF | LEG_RT_CNF
    assert legacy_chip.calls[-1] == (0, False)  # the PIT's high line is cut off
    gate.set_irq(8, True)  # the RTC's interrupt is dropped
    assert legacy_chip.edges(8) == 0
    run_to(q, 3000 * NS)
    assert chip.edges(0) == 1 and chip.edges(8) == 1 and chip.edges(2) == 0
    h.write(0x10, 4, 1)  # route off: the gated lines come back at their levels
    assert legacy_chip.edges(8) == 1 and legacy_chip.edges(0) == 2


def test_checkpoint_in_the_middle_of_a_periodic_timer(tmp_path: Path) -> None:
    h, q, chip, _, _ = make()
    h.write(0x108, 8, 1000)
    h.write(0x100, 4, (2 << 9) | 0x4C)
    h.write(0x108, 4, 1000)
    h.write(0x10, 4, 1)
    run_to(q, 15_000 * NS)
    assert chip.edges(2) == 1
    cp = CheckpointOut()
    with cp.subsection("hpet"):
        h.serialize(cp)
    path = write_checkpoint(tmp_path / "cpt", cp)
    q2 = EventQueue("hpet2")
    q2.set_cur_tick(15_000 * NS)
    chip2 = Recorder()
    other = Hpet(irqchip=chip2, queue=q2)
    cin = CheckpointIn.load(path)
    with cin.subsection("hpet"):
        other.unserialize(cin)
    assert other.read(0xF0, 8) == 1500 and other.read(0x108, 8) == 2000
    run_to(q2, 40_000 * NS + 1)
    assert chip2.edges(2) == 3  # at 20, 30 and 40 us
