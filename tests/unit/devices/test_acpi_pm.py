"""The PIIX4 PM function (PM1 registers, PM timer, GPE0, SCI), the PIIX3 reset
control register and the 8042's reset pulse, against the PIIX4 datasheet and
the ACPI specification (values computed from the 3.579545 MHz clock)."""

from __future__ import annotations

from pathlib import Path
from typing import List

from kvmcpu.devices import pc_layout
from kvmcpu.devices.acpi_pm import AcpiPm, Gpe0Block, pm_timer_count
from kvmcpu.devices.i8042 import I8042
from kvmcpu.devices.irq import IrqLine, NullInterruptController
from kvmcpu.devices.pci import PciHost
from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut, write_checkpoint
from kvmcpu.sim.eventq import TICKS_PER_SECOND, EventQueue

S = TICKS_PER_SECOND


def make() -> tuple[AcpiPm, Gpe0Block, EventQueue, NullInterruptController, List[int]]:
    q = EventQueue("t")
    chip = NullInterruptController()
    sleeps: List[int] = []
    pm = AcpiPm(sci=IrqLine(chip, pc_layout.SCI_IRQ), queue=q, on_sleep=sleeps.append)
    return pm, Gpe0Block(pm=pm), q, chip, sleeps


def run_to(q: EventQueue, tick: int) -> None:
    while not q.empty() and q.next_tick() <= tick:
        q.service_one()
    q.set_cur_tick(tick)


def test_pm_timer_counts_at_3_579545_mhz_and_wraps_at_24_bits() -> None:
    pm, _, q, _, _ = make()
    assert pm.read(8, 4) == 0
    q.set_cur_tick(S)  # one second: 3579545 counts
    assert pm.read(8, 4) == 3_579_545
    q.set_cur_tick(10 * S)  # 35795450 counts, modulo 2**24
    assert pm.read(8, 4) == 35_795_450 - 2 * (1 << 24) == 0x2231FA
    assert pm.read(8, 4) >> 24 == 0
    assert pm.read(9, 1) == 0x31
    assert pm_timer_count(279_365) == 0  # one count is 279.365 ns
    assert pm_timer_count(279_366_000) == 1000


def test_sci_en_reads_one_and_slp_typ_is_kept() -> None:
    pm, _, _, _, sleeps = make()
    assert pm.read(4, 2) & 1 == 1
    pm.write(4, 2, 7 << 10)  # SLP_TYP 7 without SLP_EN: kept, nothing happens
    assert pm.read(4, 2) == (7 << 10) | 1
    pm.write(4, 2, 0)
    assert pm.read(4, 2) == 1  # SCI_EN cannot be cleared
    assert sleeps == []


def test_slp_en_enters_s5_and_s3_and_reads_zero() -> None:
    pm, _, _, _, sleeps = make()
    pm.write(4, 2, (pc_layout.SLP_TYP_S5 << 10) | (1 << 13))
    pm.write(4, 2, (pc_layout.SLP_TYP_S3 << 10) | (1 << 13))
    pm.write(4, 2, (7 << 10) | (1 << 13))  # no such state on PIIX4: ignored
    assert sleeps == [5, 3]
    assert not pm.read(4, 2) & (1 << 13)
    pm.write(5, 1, (pc_layout.SLP_TYP_S5 << 2) | 0x20)  # the high byte alone
    assert sleeps == [5, 3, 5]


def test_timer_overflow_sets_tmr_sts_and_raises_the_sci_level() -> None:
    pm, _, q, chip, _ = make()
    flip = -(-(1 << 23) * S // pc_layout.PM_TIMER_HZ)  # bit 23 first changes here
    q.set_cur_tick(flip - 1)
    assert pm.read(0, 2) & 1 == 0
    pm.write(2, 2, 1)  # TMR_EN: an event at the overflow
    assert not chip.levels.get(9)
    run_to(q, flip)
    assert pm.read(0, 2) & 1 == 1 and chip.levels[9] is True
    pm.write(0, 2, 0xFFFE)  # writing 0 to TMR_STS keeps it
    assert pm.read(0, 2) & 1 == 1
    pm.write(0, 2, 1)  # write 1 to clear: the SCI level drops
    assert pm.read(0, 2) & 1 == 0 and chip.levels[9] is False
    run_to(q, 2 * flip)  # the next change of bit 23
    assert pm.read(0, 2) & 1 == 1 and chip.levels[9] is True


def test_status_without_enable_raises_no_sci_and_wake_sets_wak_sts() -> None:
    pm, _, _, chip, _ = make()
    pm.wake(rtc=True)
    assert pm.read(0, 2) == (1 << 15) | (1 << 10)
    assert not chip.levels.get(9)
    pm.write(2, 2, 1 << 10)  # RTC_EN
    assert chip.levels[9] is True
    pm.write(0, 2, 0xFFFF)
    assert pm.read(0, 2) == 0 and chip.levels[9] is False


def test_gpe0_status_and_enable_share_the_sci() -> None:
    pm, gpe, _, chip, _ = make()
    gpe.set_status(0x4)
    assert gpe.read(0, 2) == 4 and not chip.levels.get(9)
    gpe.write(2, 2, 0x4)
    assert gpe.read(2, 2) == 4 and chip.levels[9] is True
    gpe.write(0, 1, 0x4)
    assert gpe.read(0, 4) == 0x40000 and chip.levels[9] is False


def test_pm_checkpoint_keeps_registers_and_the_timer_event(tmp_path: Path) -> None:
    pm, gpe, q, _, _ = make()
    q.set_cur_tick(S)
    pm.write(2, 2, 1 | (1 << 10))
    pm.wake()
    gpe.write(2, 2, 0x8)
    cp = CheckpointOut()
    for dev in (pm, gpe):
        with cp.subsection(dev.name):
            dev.serialize(cp)
    path = write_checkpoint(tmp_path / "cpt", cp)
    q2 = EventQueue("t2")
    q2.set_cur_tick(S)
    chip2 = NullInterruptController()
    pm2 = AcpiPm(sci=IrqLine(chip2, 9), queue=q2)
    gpe2 = Gpe0Block(pm=pm2)
    cin = CheckpointIn.load(path)
    for dev in (pm2, gpe2):
        with cin.subsection(dev.name):
            dev.unserialize(cin)
    assert pm2.read(0, 4) == pm.read(0, 4) and gpe2.read(0, 4) == 0x80000
    assert pm2.read(8, 4) == pm.read(8, 4)
    assert pm2.timer_pending()
    run_to(q2, 3 * S)  # bit 23 changed at 2.34 s
    assert pm2.read(0, 2) & 1 and chip2.levels[9] is True


def test_piix3_reset_control_register() -> None:
    resets: List[int] = []
    pci = PciHost(on_reset=lambda: resets.append(1))
    pci.write(1, 1, 0x02)  # SYS_RST alone: kept, no reset
    assert pci.read(1, 1) == 0x02 and resets == []
    pci.write(1, 1, pc_layout.RESET_VALUE)  # RST_CPU
    assert resets == [1]
    pci.write(0, 4, 0x80000000)  # a dword write is CONFIG_ADDRESS, not RCR
    assert resets == [1] and pci.read(0, 4) == 0x80000000


def test_i8042_self_test_and_reset_pulse() -> None:
    resets: List[int] = []
    kbc = I8042(on_reset=lambda: resets.append(1))
    port64 = kbc.command_port
    assert port64.read(0, 1) & 1 == 0  # nothing in the output buffer
    port64.write(0, 1, 0xAA)
    assert port64.read(0, 1) & 0x05 == 0x05  # OBF and SYS
    assert kbc.read(0, 1) == 0x55 and port64.read(0, 1) & 1 == 0
    port64.write(0, 1, 0x60)
    kbc.write(0, 1, 0x47)
    port64.write(0, 1, 0x20)
    assert kbc.read(0, 1) == 0x47
    kbc.write(0, 1, 0xFF)  # a keyboard command: no keyboard, resend
    assert kbc.read(0, 1) == 0xFE
    port64.write(0, 1, 0xFF)  # pulse no line
    assert resets == []
    port64.write(0, 1, 0xFE)  # pulse the reset line (output port bit 0)
    assert resets == [1]
    port64.write(0, 1, 0xD1)
    kbc.write(0, 1, 0x02)  # output port with bit 0 clear
    assert resets == [1, 1]
