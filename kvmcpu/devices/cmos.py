"""The MC146818 CMOS RTC and NVRAM of a PC (ports 0x70/0x71).

Port 0x70 selects a register (bit 7 disables NMI and is remembered, not
acted on); port 0x71 reads or writes it. Registers 0x00-0x09 are the clock
(seconds, alarm seconds, minutes, alarm minutes, hours, alarm hours, day of
week, day of month, month, year), 0x0a-0x0d status registers A-D, 0x32 the
century; the rest of the 128 bytes is NVRAM. The memory-size bytes are set
as QEMU's ``pc_cmos_init`` sets them for SeaBIOS:

=========  ===============================================================
0x15/0x16  base memory in KiB (640)
0x17/0x18  extended memory above 1 MiB in KiB (at most 65535: ~64 MiB)
0x30/0x31  the same again
0x34/0x35  memory between 16 MiB and 4 GiB in 64 KiB units (at most 65535)
0x5b-0x5d  memory above 4 GiB in 64 KiB units (24 bits)
=========  ===============================================================

The clock runs in simulated time: the time at power-on comes from ``clock``
(seconds since the epoch, UTC; host time by default: pass a fixed clock for
deterministic runs), then it advances with the event queue's tick (1 s =
10**12 ticks), plus an offset the guest sets by writing the clock registers.
Values are BCD unless register B's DM bit (0x04) is set, and 24-hour unless
its 24/12 bit (0x02) is clear (12-hour hours carry PM in bit 7). Register B's
SET bit (0x80) stops the updates (and clears UIE) until it is cleared.

Interrupts (MC146818A datasheet, "Interrupts"; QEMU's ``mc146818rtc``): on
IRQ 8, through the PIC and the IOAPIC. Register C holds IRQF (0x80), PF
(0x40), AF (0x20) and UF (0x10); reading it returns them and clears them
(and lowers IRQ 8). The flags are set whatever register B enables:

* PF at every period of the rate in register A (RS3-RS0: 1 and 2 are 256 and
  128 Hz, n >= 3 is 65536 >> n Hz; 0: none), with the 32.768 kHz time base;
* UF at every update (each second boundary, none while SET);
* AF at an update whose seconds, minutes and hours match the alarm registers
  (0x01, 0x03, 0x05, in the current BCD/binary and 12/24-hour format; a value
  0xc0-0xff matches anything).

IRQF is set, and IRQ 8 raised (held until register C is read), when a flag
is set whose enable bit in register B (PIE 0x40, AIE 0x20, UIE 0x10) is on.
Register A's UIP (0x80) reads 1 during the 244 us before each update.
Events on the event queue make the enabled interrupts happen at their tick;
disabled flags are brought up to date when register C is read.
"""

from __future__ import annotations

import calendar
import time
from typing import TYPE_CHECKING, Callable

from kvmcpu.devices.base import Device
from kvmcpu.devices.irq import IrqLine
from kvmcpu.devices.pc_layout import CMOS_CENTURY
from kvmcpu.sim.eventq import TICKS_PER_SECOND, EventFunctionWrapper, EventQueue, main_queue

if TYPE_CHECKING:
    from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut

__all__ = ["CMOS_PORT", "Cmos", "RTC_IRQ", "cmos_memory_bytes"]

#: The index port; the data port is the next one.
CMOS_PORT = 0x70
#: The RTC's ISA IRQ.
RTC_IRQ = 8

REG_SECONDS = 0x00
REG_MINUTES = 0x02
REG_HOURS = 0x04
REG_WEEKDAY = 0x06
REG_DAY = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09
REG_A = 0x0A
REG_B = 0x0B
REG_C = 0x0C
REG_D = 0x0D
REG_CENTURY = CMOS_CENTURY
REG_ALARM_SECONDS = 0x01
REG_ALARM_MINUTES = 0x03
REG_ALARM_HOURS = 0x05
REG_A_UIP = 0x80
REG_B_PIE = 0x40
REG_B_AIE = 0x20
REG_B_UIE = 0x10
REG_C_IRQF = 0x80
REG_C_PF = 0x40
REG_C_AF = 0x20
REG_C_UF = 0x10
#: The update-in-progress window before each update (244 us).
UIP_TICKS = 8 * TICKS_PER_SECOND // 32768
#: Updates the lazy evaluation of register C replays at most (a day covers
#: every alarm pattern).
_MAX_REPLAY = 86400 + 1
REG_B_24H = 0x02
REG_B_DM_BINARY = 0x04
REG_B_SET = 0x80
_CLOCK_REGS = (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR,
               REG_CENTURY)
_KIB = 1024
_MIB = 1024 * 1024


def cmos_memory_bytes(below_4g: int, above_4g: int) -> dict[int, int]:
    """The CMOS memory-size registers for a RAM layout (register -> byte)."""
    base = min(below_4g // _KIB, 640)
    ext = (below_4g - _MIB) // _KIB if below_4g > _MIB else 0
    ext = min(ext, 65535)
    high16 = (below_4g - 16 * _MIB) // (64 * _KIB) if below_4g > 16 * _MIB else 0
    high16 = min(high16, 65535)
    above = above_4g // (64 * _KIB)
    return {
        0x15: base & 0xFF, 0x16: (base >> 8) & 0xFF,
        0x17: ext & 0xFF, 0x18: (ext >> 8) & 0xFF,
        0x30: ext & 0xFF, 0x31: (ext >> 8) & 0xFF,
        0x34: high16 & 0xFF, 0x35: (high16 >> 8) & 0xFF,
        0x5B: above & 0xFF, 0x5C: (above >> 8) & 0xFF, 0x5D: (above >> 16) & 0xFF,
    }


def _to_bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def _from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


class Cmos(Device):
    """CMOS RTC + NVRAM. Map at 0x70 with 2 ports.

    Args:
        name: device name.
        ram_below_4g: bytes of RAM below 4 GiB (for the memory-size registers).
        ram_above_4g: bytes of RAM above 4 GiB.
        clock: seconds since the epoch (UTC) at power-on; default ``time.time``.
        queue: the event queue whose ticks are simulated time.
        irq: IRQ 8 (None: unconnected).
        on_alarm: called at each alarm match (an S3 wake-up source).
    """

    _checkpoint_fields = ("index", "nmi_disabled", "time_offset", "nvram")
    #: Written since the RTC runs in simulated time; a checkpoint without them
    #: keeps this RTC's power-on time (its offset then counts from it).
    _time_fields = ("base", "updates_seen", "periods_seen")

    def __init__(self, name: str = "cmos", *, ram_below_4g: int = 0, ram_above_4g: int = 0,
                 clock: Callable[[], float] | None = None, queue: EventQueue | None = None,
                 irq: IrqLine | None = None,
                 on_alarm: Callable[[], object] | None = None) -> None:
        super().__init__(name)
        self.queue = main_queue if queue is None else queue
        self.irq = irq
        self.on_alarm = on_alarm
        self.clock = time.time if clock is None else clock
        #: The epoch seconds at tick 0 (from ``clock`` at creation).
        self.base = int(self.clock()) - self.queue.cur_tick // TICKS_PER_SECOND
        self.nvram = bytearray(128)
        self.index = 0
        self.nmi_disabled = 0
        self.time_offset = 0  # seconds added to the time (set by guest writes)
        self._frozen: int | None = None  # epoch seconds while register B's SET bit is on
        #: Updates (second boundaries) and periodic periods register C has seen.
        self.updates_seen = self.queue.cur_tick // TICKS_PER_SECOND
        self.periods_seen = 0
        self._update_event = EventFunctionWrapper(self._on_update, f"{name}.update")
        self._periodic_event = EventFunctionWrapper(self._on_periodic, f"{name}.periodic")
        self.nvram[REG_A] = 0x26  # 32.768 kHz time base, 1024 Hz periodic rate
        self.nvram[REG_B] = REG_B_24H  # BCD, 24-hour
        self.nvram[REG_D] = 0x80  # valid RAM and time
        self.periods_seen = self._periods_at(self.queue.cur_tick)
        self.set_memory(ram_below_4g, ram_above_4g)

    def set_memory(self, below_4g: int, above_4g: int) -> None:
        """Write the memory-size registers for this RAM layout."""
        for reg, value in cmos_memory_bytes(below_4g, above_4g).items():
            self.nvram[reg] = value

    # -- the clock ----------------------------------------------------------------------
    def now(self) -> int:
        """The RTC's time in seconds since the epoch."""
        if self._frozen is not None:
            return self._frozen
        return self.base + self.queue.cur_tick // TICKS_PER_SECOND + self.time_offset

    def _encode(self, value: int) -> int:
        return value if self.nvram[REG_B] & REG_B_DM_BINARY else _to_bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.nvram[REG_B] & REG_B_DM_BINARY else _from_bcd(value)

    def _encode_hour(self, hour: int) -> int:
        if self.nvram[REG_B] & REG_B_24H:
            return self._encode(hour)
        return self._encode(hour % 12 or 12) | (0x80 if hour >= 12 else 0)

    def _clock_reg(self, reg: int, when: int | None = None) -> int:
        tm = time.gmtime(self.now() if when is None else when)
        if reg == REG_SECONDS:
            return self._encode(tm.tm_sec)
        if reg == REG_MINUTES:
            return self._encode(tm.tm_min)
        if reg == REG_HOURS:
            return self._encode_hour(tm.tm_hour)
        if reg == REG_WEEKDAY:
            return self._encode((tm.tm_wday + 1) % 7 + 1)  # Sunday = 1
        if reg == REG_DAY:
            return self._encode(tm.tm_mday)
        if reg == REG_MONTH:
            return self._encode(tm.tm_mon)
        if reg == REG_YEAR:
            return self._encode(tm.tm_year % 100)
        return self._encode(tm.tm_year // 100)  # century

    def _set_clock_reg(self, reg: int, value: int) -> None:
        tm = time.gmtime(self.now())
        fields = [tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec]
        if reg == REG_HOURS:
            hour = self._decode(value & 0x7F)
            if not self.nvram[REG_B] & REG_B_24H:
                hour = hour % 12 + (12 if value & 0x80 else 0)
            fields[3] = hour
        elif reg == REG_WEEKDAY:
            return  # derived from the date
        else:
            v = self._decode(value)
            if reg == REG_SECONDS:
                fields[5] = v
            elif reg == REG_MINUTES:
                fields[4] = v
            elif reg == REG_DAY:
                fields[2] = v
            elif reg == REG_MONTH:
                fields[1] = v
            elif reg == REG_YEAR:
                fields[0] = fields[0] // 100 * 100 + v
            else:
                fields[0] = v * 100 + fields[0] % 100
        try:
            new = calendar.timegm((fields[0], fields[1], fields[2], fields[3], fields[4],
                                   fields[5], 0, 0, 0))
        except (ValueError, OverflowError):
            return
        if self._frozen is not None:
            self._frozen = new
        else:
            self.time_offset = new - (self.base + self.queue.cur_tick // TICKS_PER_SECOND)

    # -- interrupts ---------------------------------------------------------------------
    def _period_ticks(self) -> int:
        """Ticks per periodic interrupt (0: RS = 0, none)."""
        rs = self.nvram[REG_A] & 0x0F
        if rs == 0:
            return 0
        cycles = 1 << ((rs + 7 if rs <= 2 else rs) - 1)  # of the 32.768 kHz base
        return cycles * TICKS_PER_SECOND // 32768

    def _periods_at(self, tick: int) -> int:
        period = self._period_ticks()
        return tick // period if period else 0

    def _alarm_matches(self, when: int) -> bool:
        for alarm, reg in ((REG_ALARM_SECONDS, REG_SECONDS), (REG_ALARM_MINUTES, REG_MINUTES),
                           (REG_ALARM_HOURS, REG_HOURS)):
            want = self.nvram[alarm]
            if want & 0xC0 == 0xC0:
                continue  # don't care
            if self._clock_reg(reg, when) != want:
                return False
        return True

    def _catch_up(self) -> None:
        """Set the flags of the updates and periods up to now."""
        tick = self.queue.cur_tick
        periods = self._periods_at(tick)
        if periods > self.periods_seen:
            self.nvram[REG_C] |= REG_C_PF
        self.periods_seen = periods
        updates = tick // TICKS_PER_SECOND
        if updates > self.updates_seen:
            if self._frozen is None:
                self.nvram[REG_C] |= REG_C_UF
                first = max(self.updates_seen + 1, updates - _MAX_REPLAY)
                for n in range(first, updates + 1):
                    if self._alarm_matches(self.base + n + self.time_offset):
                        self.nvram[REG_C] |= REG_C_AF
                        if self.on_alarm is not None:
                            self.on_alarm()
                        break
            self.updates_seen = updates
        self._update_irqf()

    def _update_irqf(self) -> None:
        c = self.nvram[REG_C]
        if c & self.nvram[REG_B] & (REG_C_PF | REG_C_AF | REG_C_UF) and not c & REG_C_IRQF:
            self.nvram[REG_C] = c | REG_C_IRQF
            if self.irq is not None:
                self.irq.raise_()

    def _arm(self) -> None:
        q = self.queue
        for ev in (self._update_event, self._periodic_event):
            if ev.scheduled():
                q.deschedule(ev)
        b = self.nvram[REG_B]
        if b & (REG_B_UIE | REG_B_AIE) and self._frozen is None:
            q.schedule(self._update_event, (q.cur_tick // TICKS_PER_SECOND + 1) * TICKS_PER_SECOND)
        period = self._period_ticks()
        if b & REG_B_PIE and period:
            q.schedule(self._periodic_event, (q.cur_tick // period + 1) * period)

    def _on_update(self) -> None:
        self._catch_up()
        self._arm()

    _on_periodic = _on_update

    def timer_pending(self) -> bool:
        """True while an interrupt event is scheduled (the CPU can be woken)."""
        return self._update_event.scheduled() or self._periodic_event.scheduled()

    def _uip(self) -> int:
        if self._frozen is not None or (self.nvram[REG_A] >> 4) & 7 != 2:
            return 0
        to_update = TICKS_PER_SECOND - self.queue.cur_tick % TICKS_PER_SECOND
        return REG_A_UIP if to_update <= UIP_TICKS else 0

    # -- ports --------------------------------------------------------------------------
    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            self.index = value & 0x7F
            self.nmi_disabled = value >> 7
            return
        reg = self.index
        if reg in _CLOCK_REGS:
            self._set_clock_reg(reg, value)
            return
        if reg in (REG_C, REG_D):
            return  # read-only
        if reg not in (REG_A, REG_B):
            self.nvram[reg] = value
            return
        self._catch_up()  # the flags so far, under the old rate and mode
        if reg == REG_A:
            self.nvram[REG_A] = value & 0x7F  # UIP is read-only
            self.periods_seen = self._periods_at(self.queue.cur_tick)
        else:
            if value & REG_B_SET:
                value &= ~REG_B_UIE  # setting SET clears UIE
                if self._frozen is None:
                    self._frozen = self.now()
            elif self._frozen is not None:
                self.time_offset = self._frozen - (self.base
                                                   + self.queue.cur_tick // TICKS_PER_SECOND)
                self._frozen = None
            self.nvram[REG_B] = value
            self._update_irqf()
        self._arm()

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF  # the index register is write-only
        reg = self.index
        if reg in _CLOCK_REGS:
            return self._clock_reg(reg)
        if reg == REG_A:
            return self.nvram[REG_A] | self._uip()
        if reg == REG_C:
            self._catch_up()
            value = self.nvram[REG_C]
            self.nvram[REG_C] = 0  # reading C acknowledges the RTC interrupt
            if self.irq is not None:
                self.irq.lower()
            return value
        return self.nvram[reg]

    def reset(self) -> None:
        """A platform reset: the interrupt enables (PIE, AIE, UIE) and the flags clear
        (MC146818A RESET pin); the time, the NVRAM and the rate stay."""
        self._catch_up()
        self.nvram[REG_B] &= ~(REG_B_PIE | REG_B_AIE | REG_B_UIE)
        self.nvram[REG_C] = 0
        if self.irq is not None:
            self.irq.lower()
        self._arm()

    # -- checkpoints --------------------------------------------------------------------
    def serialize(self, cp: CheckpointOut) -> None:
        super().serialize(cp)
        for field in self._time_fields:
            cp.param_out(field, getattr(self, field))
        cp.param_out("frozen", -1 if self._frozen is None else self._frozen)

    def unserialize(self, cp: CheckpointIn) -> None:
        super().unserialize(cp)
        for field in self._time_fields:
            if cp.current.has(field):
                setattr(self, field, cp.current.get_int(field))
        frozen = cp.current.get_int("frozen")
        self._frozen = None if frozen < 0 else frozen
        if self.irq is not None:
            self.irq.set(bool(self.nvram[REG_C] & REG_C_IRQF))
        self._arm()
