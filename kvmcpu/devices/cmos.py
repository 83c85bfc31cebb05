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

The time comes from ``clock`` (seconds since the epoch, UTC; host time by
default) plus an offset the guest sets by writing the clock registers; pass
a fixed clock for deterministic runs. Values are BCD unless register B's DM
bit (0x04) is set, and 24-hour unless its 24/12 bit (0x02) is clear. Update,
alarm and periodic interrupts (IRQ 8) are not modelled: UIP always reads 0.
"""

from __future__ import annotations

import calendar
import time
from typing import TYPE_CHECKING, Callable

from kvmcpu.devices.base import Device

if TYPE_CHECKING:
    from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut

__all__ = ["CMOS_PORT", "Cmos", "cmos_memory_bytes"]

#: The index port; the data port is the next one.
CMOS_PORT = 0x70

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
REG_CENTURY = 0x32
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
        clock: seconds since the epoch (UTC) now; default ``time.time``.
    """

    _checkpoint_fields = ("index", "nmi_disabled", "time_offset", "nvram")

    def __init__(self, name: str = "cmos", *, ram_below_4g: int = 0, ram_above_4g: int = 0,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(name)
        self.clock = time.time if clock is None else clock
        self.nvram = bytearray(128)
        self.index = 0
        self.nmi_disabled = 0
        self.time_offset = 0  # seconds added to clock() (set by guest writes)
        self._frozen: int | None = None  # epoch seconds while register B's SET bit is on
        self.nvram[REG_A] = 0x26  # 32.768 kHz time base, 1024 Hz periodic rate
        self.nvram[REG_B] = REG_B_24H  # BCD, 24-hour
        self.nvram[REG_D] = 0x80  # valid RAM and time
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
        return int(self.clock()) + self.time_offset

    def _encode(self, value: int) -> int:
        return value if self.nvram[REG_B] & REG_B_DM_BINARY else _to_bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.nvram[REG_B] & REG_B_DM_BINARY else _from_bcd(value)

    def _clock_reg(self, reg: int) -> int:
        tm = time.gmtime(self.now())
        if reg == REG_SECONDS:
            return self._encode(tm.tm_sec)
        if reg == REG_MINUTES:
            return self._encode(tm.tm_min)
        if reg == REG_HOURS:
            hour = tm.tm_hour
            if self.nvram[REG_B] & REG_B_24H:
                return self._encode(hour)
            pm = 0x80 if hour >= 12 else 0
            return self._encode(hour % 12 or 12) | pm
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
            self.time_offset = new - int(self.clock())

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
        elif reg == REG_A:
            self.nvram[REG_A] = value & 0x7F  # UIP is read-only
        elif reg == REG_B:
            if value & REG_B_SET and self._frozen is None:
                self._frozen = self.now()
            elif not value & REG_B_SET and self._frozen is not None:
                self.time_offset = self._frozen - int(self.clock())
                self._frozen = None
            self.nvram[REG_B] = value
        elif reg in (REG_C, REG_D):
            pass  # read-only
        else:
            self.nvram[reg] = value

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF  # the index register is write-only
        reg = self.index
        if reg in _CLOCK_REGS:
            return self._clock_reg(reg)
        if reg == REG_C:
            value = self.nvram[REG_C]
            self.nvram[REG_C] = 0  # reading C acknowledges the RTC interrupt
            return value
        return self.nvram[reg]

    # -- checkpoints --------------------------------------------------------------------
    def serialize(self, cp: CheckpointOut) -> None:
        super().serialize(cp)
        cp.param_out("frozen", -1 if self._frozen is None else self._frozen)

    def unserialize(self, cp: CheckpointIn) -> None:
        super().unserialize(cp)
        frozen = cp.current.get_int("frozen")
        self._frozen = None if frozen < 0 else frozen
