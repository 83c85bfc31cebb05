"""The Intel 8254 programmable interval timer (ports 0x40-0x43).

Three channels count down at :data:`PIT_FREQ_HZ` (1.193182 MHz). Counts are
not stepped: a channel remembers the tick its count was loaded and computes
the current count and its OUT pin from simulated time (the event queue's
``cur_tick``, 1 tick = 1 ps), as QEMU's ``i8254`` does. Channel 0 drives IRQ 0:
an event is scheduled on the event queue at every rising edge of OUT0 and
pulses the :class:`~kvmcpu.devices.irq.IrqLine` then.

Modes 0 (interrupt on terminal count), 2 (rate generator), 3 (square wave)
and 4 (software strobe) are modelled; modes 1 and 5 (hardware-triggered) count
as if their gate had been triggered at load. Access modes lobyte, hibyte and
lobyte/hibyte, the counter latch command and the read-back command (count and
status) are supported; BCD counting is recorded but counts are binary.

Unlike a PC after its BIOS ran, channels do not count until the guest loads
them (no 18.2 Hz tick out of reset).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List

from kvmcpu.devices.base import Device
from kvmcpu.devices.irq import IrqLine
from kvmcpu.sim.eventq import TICKS_PER_SECOND, EventFunctionWrapper, EventQueue, main_queue

if TYPE_CHECKING:
    from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut

__all__ = ["PIT_FREQ_HZ", "PIT_PORT", "Pit", "PitChannel", "cycles_to_ticks", "ticks_to_cycles"]

#: The 8254 input clock of a PC, in Hz.
PIT_FREQ_HZ = 1_193_182
#: Base port of the PIT.
PIT_PORT = 0x40

# Read/write states (QEMU's RW_STATE_*).
_LSB, _MSB, _WORD0, _WORD1 = 1, 2, 3, 4


def ticks_to_cycles(ticks: int) -> int:
    """Whole PIT input cycles in ``ticks`` picoseconds."""
    return ticks * PIT_FREQ_HZ // TICKS_PER_SECOND


def cycles_to_ticks(cycles: int) -> int:
    """The first tick at which ``cycles`` PIT cycles have elapsed (rounded up)."""
    return -(-cycles * TICKS_PER_SECOND // PIT_FREQ_HZ)


class PitChannel:
    """One counter of the 8254."""

    _fields = ("count", "load_tick", "latched_count", "count_latched", "status",
               "status_latched", "read_state", "write_state", "write_latch", "rw_mode",
               "mode", "bcd", "gate", "loaded")

    def __init__(self, pit: Pit, index: int, irq: IrqLine | None) -> None:
        self.pit = pit
        self.index = index
        self.irq = irq
        self.count = 0x10000
        self.load_tick = 0
        self.latched_count = 0
        self.count_latched = 0
        self.status = 0
        self.status_latched = 0
        self.read_state = _WORD0
        self.write_state = _WORD0
        self.write_latch = 0
        self.rw_mode = _WORD0
        self.mode = 0
        self.bcd = 0
        self.gate = 1 if index != 2 else 0
        self.loaded = 0  # a count has been written since the last control word
        self.irq_count = 0  # rising edges delivered on the IRQ line
        self._event = EventFunctionWrapper(self._timer_fired, f"{pit.name}.ch{index}.irq")

    # -- time -------------------------------------------------------------------------
    def _elapsed(self) -> int:
        return ticks_to_cycles(self.pit.queue.cur_tick - self.load_tick)

    def current_count(self) -> int:
        """The counting element now (0 stands for 0x10000 as on hardware)."""
        if not self.loaded:
            return 0
        d = self._elapsed()
        count = self.count
        mode = self.mode
        if mode in (0, 1, 4, 5):
            value = (count - d) & 0xFFFF
        elif mode == 3:
            value = count - ((2 * d) % count)
        else:
            value = count - (d % count)
        return value & 0xFFFF

    def out(self) -> bool:
        """The level of the OUT pin now."""
        if not self.loaded:
            return self.mode != 0  # mode 0 starts low after the control word
        d = self._elapsed()
        count = self.count
        mode = self.mode
        if mode == 0:
            return d >= count
        if mode == 1:
            return d < count
        if mode == 2:
            return d % count != 0 or d == 0
        if mode == 3:
            return d % count < (count + 1) >> 1
        return d != count  # modes 4 and 5: a one-cycle low strobe at terminal count

    def next_irq_cycles(self) -> int:
        """PIT cycles after the load at which the next interrupt edge comes, or -1."""
        if not self.loaded:
            return -1
        d = self._elapsed()
        count = self.count
        mode = self.mode
        if mode in (2, 3):  # a rising edge at every period boundary
            return (d // count + 1) * count
        if mode in (0, 1, 4, 5):  # once, at terminal count
            return count if d < count else -1
        return -1

    def next_irq_tick(self) -> int:
        """The tick of the next interrupt edge, or -1."""
        cycles = self.next_irq_cycles()
        if cycles < 0:
            return -1
        return self.load_tick + cycles_to_ticks(cycles)

    # -- the IRQ timer ------------------------------------------------------------------
    def _arm(self) -> None:
        queue = self.pit.queue
        if self._event.scheduled():
            queue.deschedule(self._event)
        if self.irq is None:
            return
        when = self.next_irq_tick()
        if when >= 0:
            queue.schedule(self._event, max(when, queue.cur_tick))

    def _timer_fired(self) -> None:
        self.irq_count += 1
        if self.irq is not None:
            self.irq.pulse()
        self._arm()

    def disarm(self) -> None:
        """Remove the pending IRQ event (the device is being switched off)."""
        if self._event.scheduled():
            self.pit.queue.deschedule(self._event)

    # -- register interface -------------------------------------------------------------
    def load_count(self, value: int) -> None:
        self.count = value if value else 0x10000
        self.load_tick = self.pit.queue.cur_tick
        self.loaded = 1
        self._arm()

    def latch_count(self) -> None:
        if not self.count_latched:
            self.latched_count = self.current_count()
            self.count_latched = self.rw_mode

    def latch_status(self) -> None:
        if not self.status_latched:
            null_count = 0 if self.loaded else 1
            self.status = ((int(self.out()) << 7) | (null_count << 6) | (self.rw_mode << 4)
                           | (self.mode << 1) | self.bcd)
            self.status_latched = 1

    def control(self, value: int) -> None:
        access = (value >> 4) & 3
        if access == 0:
            self.latch_count()
            return
        self.rw_mode = access
        self.read_state = access
        self.write_state = access
        mode = (value >> 1) & 7
        self.mode = mode - 4 if mode >= 6 else mode
        self.bcd = value & 1
        self.loaded = 0
        self.count_latched = 0
        self._arm()

    def write_data(self, value: int) -> None:
        state = self.write_state
        if state == _LSB:
            self.load_count(value)
        elif state == _MSB:
            self.load_count(value << 8)
        elif state == _WORD0:
            self.write_latch = value
            self.write_state = _WORD1
        else:
            self.load_count(self.write_latch | (value << 8))
            self.write_state = _WORD0

    def read_data(self) -> int:
        if self.status_latched:
            self.status_latched = 0
            return self.status
        if self.count_latched:
            latched = self.latched_count
            if self.count_latched == _LSB:
                self.count_latched = 0
                return latched & 0xFF
            if self.count_latched == _MSB:
                self.count_latched = 0
                return (latched >> 8) & 0xFF
            self.count_latched = _MSB  # word: low byte now, high byte next
            return latched & 0xFF
        count = self.current_count()
        state = self.read_state
        if state == _LSB:
            return count & 0xFF
        if state == _MSB:
            return (count >> 8) & 0xFF
        if state == _WORD0:
            self.read_state = _WORD1
            return count & 0xFF
        self.read_state = _WORD0
        return (count >> 8) & 0xFF

    def state(self) -> List[int]:
        return [int(getattr(self, f)) for f in self._fields]

    def restore(self, values: List[int]) -> None:
        for field, value in zip(self._fields, values):
            setattr(self, field, value)
        self._arm()


class Pit(Device):
    """The 8254 PIT: map at 0x40 with 4 ports (three counters and the control word).

    Args:
        name: device name.
        irq: channel 0's interrupt line (IRQ 0); None leaves it unconnected.
        queue: the event queue whose ticks are simulated time (default: the main queue).
    """

    def __init__(self, name: str = "pit", *, irq: IrqLine | None = None,
                 queue: EventQueue | None = None) -> None:
        super().__init__(name)
        self.queue = main_queue if queue is None else queue
        self.channels = [PitChannel(self, i, irq if i == 0 else None) for i in range(3)]

    def read(self, offset: int, size: int) -> int:
        if offset >= 3:
            return 0xFF  # the control word register is write-only
        return self.channels[offset].read_data()

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset < 3:
            self.channels[offset].write_data(value)
            return
        channel = value >> 6
        if channel == 3:  # read-back command
            for i, ch in enumerate(self.channels):
                if value & (2 << i):
                    if not value & 0x20:
                        ch.latch_count()
                    if not value & 0x10:
                        ch.latch_status()
            return
        self.channels[channel].control(value)

    def set_gate(self, channel: int, level: bool) -> None:
        """Drive a channel's GATE input (channel 2's comes from port 0x61)."""
        self.channels[channel].gate = int(bool(level))

    def reset(self) -> None:
        for ch in self.channels:
            ch.disarm()
        irq = self.channels[0].irq
        self.channels = [PitChannel(self, i, irq if i == 0 else None) for i in range(3)]

    def serialize(self, cp: CheckpointOut) -> None:
        """Per channel: its registers and the tick its count was loaded."""
        for ch in self.channels:
            cp.param_out(f"ch{ch.index}", ch.state())

    def unserialize(self, cp: CheckpointIn) -> None:
        """Restore the channels and re-arm channel 0's IRQ event for the restored time."""
        section = cp.current
        for ch in self.channels:
            ch.restore(section.get_int_list(f"ch{ch.index}", len(PitChannel._fields)))
