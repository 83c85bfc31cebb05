"""ACPI power management of the PIIX4 PM function, as QEMU's ``pc`` machine has it.

The PM IO block sits at :data:`~kvmcpu.devices.pc_layout.PM_IO_BASE` (64
ports) and the GPE0 block at :data:`~kvmcpu.devices.pc_layout.GPE0_BLK`
(4 ports), where the FADT says. Offsets in the PM block (PIIX4 datasheet
section 7.2, ACPI 4.8.3):

=======  ====  ================================================================
offset   size  register
=======  ====  ================================================================
0x00     2     PM1_STS: TMR_STS (0), BM_STS (4), GBL_STS (5), PWRBTN_STS (8),
               RTC_STS (10), WAK_STS (15); a 1 written clears a bit
0x02     2     PM1_EN: TMR_EN (0), GBL_EN (5), PWRBTN_EN (8), RTC_EN (10)
0x04     2     PM1_CNT: SCI_EN (0, reads 1: always in ACPI mode, as there is no
               SMI handshake), BM_RLD (1), GBL_RLS (2), SLP_TYP (10-12),
               SLP_EN (13, write-only: writing 1 enters the SLP_TYP state)
0x08     4     PM_TMR: the 24-bit ACPI PM timer, 3.579545 MHz
=======  ====  ================================================================

The PM timer is computed from simulated time (the event queue's tick, 1 ps),
as the PIT's counts are, so it counts the same on both backends and has no
state of its own: ``ticks * 3579545 // 10**12`` modulo 2**24. TMR_STS is set
each time bit 23 of the counter changes (every 2**23 counts, about 2.34 s);
with TMR_EN set an event on the queue raises the SCI then.

GPE0 is two 16-bit registers, GPE0_STS then GPE0_EN (QEMU's PIIX4 GPE block).
The SCI (:data:`~kvmcpu.devices.pc_layout.SCI_IRQ`) is a level: high while
``PM1_STS & PM1_EN`` (the timer, global, power button and RTC bits) or
``GPE0_STS & GPE0_EN`` has a bit set (QEMU's ``acpi_update_sci``).

Writing SLP_EN with SLP_TYP = :data:`~kvmcpu.devices.pc_layout.SLP_TYP_S5`
calls ``on_sleep(5)`` (the System powers off), with
:data:`~kvmcpu.devices.pc_layout.SLP_TYP_S3` ``on_sleep(3)`` (suspend to
RAM); other types are ignored as QEMU's PIIX4 does. :meth:`wake` sets
WAK_STS (and RTC_STS for an RTC wake-up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from kvmcpu.devices.base import Device, size_mask
from kvmcpu.devices.irq import IrqLine
from kvmcpu.devices.pc_layout import PM_TIMER_HZ, SLP_TYP_S3, SLP_TYP_S5
from kvmcpu.sim.eventq import TICKS_PER_SECOND, EventFunctionWrapper, EventQueue, main_queue

if TYPE_CHECKING:
    from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut

__all__ = ["AcpiPm", "Gpe0Block", "PM_IO_SIZE", "pm_timer_count"]

#: Ports of the PIIX4 PM IO block.
PM_IO_SIZE = 0x40

TMR_STS = 1 << 0
BM_STS = 1 << 4
GBL_STS = 1 << 5
PWRBTN_STS = 1 << 8
RTC_STS = 1 << 10
WAK_STS = 1 << 15
#: The PM1 bits that raise the SCI when enabled (ACPI_BITMASK_PM1_COMMON_ENABLED).
_SCI_BITS = TMR_STS | GBL_STS | PWRBTN_STS | RTC_STS
_STS_BITS = _SCI_BITS | BM_STS | WAK_STS
SCI_EN = 1 << 0
SLP_EN = 1 << 13
_CNT_KEPT = 0x1C07  # SCI_EN, BM_RLD, GBL_RLS, SLP_TYP
_TMR_OVERFLOW = 1 << 23


def pm_timer_count(tick: int) -> int:
    """The 24-bit PM timer at ``tick`` (whole 3.579545 MHz periods since tick 0)."""
    return (tick * PM_TIMER_HZ // TICKS_PER_SECOND) & 0xFFFFFF


def _counts_to_tick(counts: int) -> int:
    return -(-counts * TICKS_PER_SECOND // PM_TIMER_HZ)


class AcpiPm(Device):
    """PIIX4 PM: PM1 event/control and the PM timer. Map at PM_IO_BASE with 64 ports.

    Args:
        name: device name.
        sci: the SCI line (ISA IRQ 9, level); None leaves it unconnected.
        queue: the event queue whose ticks are simulated time.
        on_sleep: called as ``on_sleep(state)`` (3 or 5) when the guest sets SLP_EN.
    """

    _checkpoint_fields = ("pm1_sts", "pm1_en", "pm1_cnt", "tmr_overflow_tick")

    def __init__(self, name: str = "acpi_pm", *, sci: IrqLine | None = None,
                 queue: EventQueue | None = None,
                 on_sleep: Callable[[int], object] | None = None) -> None:
        super().__init__(name)
        self.queue = main_queue if queue is None else queue
        self.sci = sci
        self.on_sleep = on_sleep
        self.gpe: Gpe0Block | None = None
        self._event = EventFunctionWrapper(self._overflow, f"{name}.tmr")
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = SCI_EN
        self.tmr_overflow_tick = 0
        self.reset()

    def reset(self) -> None:
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = SCI_EN
        self.tmr_overflow_tick = self._next_overflow_tick()
        self._arm()
        self.update_sci()

    # -- the timer ----------------------------------------------------------------
    def timer(self) -> int:
        """The PM timer's count now."""
        return pm_timer_count(self.queue.cur_tick)

    def _next_overflow_tick(self) -> int:
        counts = self.queue.cur_tick * PM_TIMER_HZ // TICKS_PER_SECOND
        return _counts_to_tick((counts // _TMR_OVERFLOW + 1) * _TMR_OVERFLOW)

    def _status(self) -> int:
        if self.queue.cur_tick >= self.tmr_overflow_tick:
            self.pm1_sts |= TMR_STS
            self.tmr_overflow_tick = self._next_overflow_tick()
            self._arm()
        return self.pm1_sts

    def _arm(self) -> None:
        if self._event.scheduled():
            self.queue.deschedule(self._event)
        if self.pm1_en & TMR_STS:
            self.queue.schedule(self._event, max(self.tmr_overflow_tick, self.queue.cur_tick))

    def _overflow(self) -> None:
        self._status()
        self.update_sci()

    def timer_pending(self) -> bool:
        """True while an SCI from the timer is scheduled (the CPU can be woken)."""
        return self._event.scheduled()

    # -- the SCI ------------------------------------------------------------------
    def update_sci(self) -> None:
        level = bool(self._status() & self.pm1_en & _SCI_BITS)
        gpe = self.gpe
        if gpe is not None and gpe.sts & gpe.en:
            level = True
        if self.sci is not None:
            self.sci.set(level and bool(self.pm1_cnt & SCI_EN))

    def set_status(self, bits: int) -> None:
        """Set PM1_STS bits (a power button press, an RTC wake) and update the SCI."""
        self.pm1_sts |= bits & _STS_BITS
        self.update_sci()

    def wake(self, rtc: bool = False) -> None:
        """The platform woke from a sleep state: WAK_STS (and RTC_STS) set."""
        self.set_status(WAK_STS | (RTC_STS if rtc else 0))

    # -- ports --------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if 8 <= offset < 12:
            return (self.timer() >> (8 * (offset - 8))) & size_mask(size)
        regs = self._status() | (self.pm1_en << 16) | ((self.pm1_cnt & _CNT_KEPT) << 32)
        if offset < 6:
            return (regs >> (8 * offset)) & size_mask(size)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        data = value << (8 * offset)
        mask = ((1 << (8 * size)) - 1) << (8 * offset)
        if mask & 0xFFFF:
            self._status()
            self.pm1_sts &= ~(data & mask & 0xFFFF)  # write 1 to clear
        if mask & 0xFFFF0000:
            part = (mask >> 16) & 0xFFFF
            self.pm1_en = (self.pm1_en & ~part) | ((data >> 16) & part & _SCI_BITS)
            self._arm()
        if mask & 0xFFFF00000000:
            part = (mask >> 32) & 0xFFFF
            cnt = (data >> 32) & part
            self.pm1_cnt = ((self.pm1_cnt & ~part) | (cnt & _CNT_KEPT)) | SCI_EN
            if cnt & SLP_EN:
                self._sleep((self.pm1_cnt >> 10) & 7)
        self.update_sci()

    def _sleep(self, slp_typ: int) -> None:
        state = 5 if slp_typ == SLP_TYP_S5 else 3 if slp_typ == SLP_TYP_S3 else 0
        if state and self.on_sleep is not None:
            self.on_sleep(state)

    # -- checkpoints --------------------------------------------------------------
    def unserialize(self, cp: CheckpointIn) -> None:
        super().unserialize(cp)
        self._arm()
        self.update_sci()

    def serialize(self, cp: CheckpointOut) -> None:
        self._status()
        super().serialize(cp)


class Gpe0Block(Device):
    """GPE0_STS and GPE0_EN (16 bits each). Map at GPE0_BLK with 4 ports.

    Args:
        name: device name.
        pm: the PM function whose SCI these events share.
    """

    _checkpoint_fields = ("sts", "en")

    def __init__(self, name: str = "gpe0", *, pm: AcpiPm) -> None:
        super().__init__(name)
        self.pm = pm
        pm.gpe = self
        self.sts = 0
        self.en = 0

    def reset(self) -> None:
        self.sts = self.en = 0
        self.pm.update_sci()

    def set_status(self, bits: int) -> None:
        """A general-purpose event happened (bits of GPE0_STS)."""
        self.sts |= bits & 0xFFFF
        self.pm.update_sci()

    def read(self, offset: int, size: int) -> int:
        return ((self.sts | (self.en << 16)) >> (8 * offset)) & size_mask(size)

    def write(self, offset: int, size: int, value: int) -> None:
        data = value << (8 * offset)
        mask = ((1 << (8 * size)) - 1) << (8 * offset)
        self.sts &= ~(data & mask & 0xFFFF)
        part = (mask >> 16) & 0xFFFF
        self.en = (self.en & ~part) | ((data >> 16) & part)
        self.pm.update_sci()
