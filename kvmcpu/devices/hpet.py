"""The HPET (IA-PC HPET specification 1.0a) as QEMU's ``pc`` machine has it.

Mapped at :data:`~kvmcpu.devices.pc_layout.HPET_BASE` (1 KiB). A 64-bit main
counter at 100 MHz (a 10 ns period, QEMU's ``HPET_CLK_PERIOD``) and three
timers. Registers (64 bits; 4- and 8-byte accesses):

=======  =============================================================
0x000    GCAP_ID: REV_ID 1, NUM_TIM_CAP 2, COUNT_SIZE_CAP, LEG_RT_CAP,
         vendor 0x8086, COUNTER_CLK_PERIOD 10**7 fs (0x00989680_8086a201)
0x010    GEN_CONF: ENABLE_CNF (bit 0), LEG_RT_CNF (bit 1)
0x020    GINTR_STA: Tn_INT_STS of the level-triggered timers (write 1 clears)
0x0f0    MAIN_COUNTER (writable while halted)
0x100 +  Tn_CONF_CAP: INT_TYPE (1: level), INT_ENB (2), TYPE (3: periodic),
0x20*n   PER_INT_CAP (4), SIZE_CAP (5), VAL_SET (6), 32MODE (8), INT_ROUTE
         (9-13), INT_ROUTE_CAP (32-63: :data:`INT_ROUTE_CAP`)
0x108 +  Tn_COMPARATOR; in periodic mode a write sets the period (and the
0x20*n   comparator too when VAL_SET was set first), as QEMU's ``hpet``
=======  =============================================================

The counter is computed from simulated time (the event queue's tick), as the
PIT's counts are; each enabled timer has an event at the tick its comparator
matches (in 32-bit mode against the counter's low 32 bits). A periodic timer
then adds its period to the comparator. An interrupt pulses its line (edge)
or raises it and sets Tn_INT_STS until the guest writes 1 there (level).

Routing: with LEG_RT_CNF, timer 0 goes to ISA IRQ 0 (IOAPIC pin 2) and timer
1 to IRQ 8, and the PIT's and the RTC's own interrupts are cut off (their
lines pass through a :class:`LegacyGate`), as the specification and QEMU
say; otherwise timer n goes to GSI Tn_INT_ROUTE. The route capability is
QEMU's for ``pc`` (GSI 2 only, ``HPET_INTCAP`` 0x4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

from kvmcpu.devices.base import Device, size_mask
from kvmcpu.devices.irq import InterruptController
from kvmcpu.sim.eventq import EventFunctionWrapper, EventQueue, main_queue

if TYPE_CHECKING:
    from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut

__all__ = ["HPET_PERIOD_FS", "Hpet", "INT_ROUTE_CAP", "LegacyGate"]

#: The main counter's period in femtoseconds (10 ns).
HPET_PERIOD_FS = 10_000_000
#: Ticks (1 ps) per counter increment.
_TICKS_PER_COUNT = HPET_PERIOD_FS // 1000
NUM_TIMERS = 3
#: Tn_INT_ROUTE_CAP of every timer (QEMU's pc: GSI 2).
INT_ROUTE_CAP = 1 << 2
CAPABILITIES = ((HPET_PERIOD_FS << 32) | 0x8086A001 | ((NUM_TIMERS - 1) << 8))

ENABLE_CNF = 1 << 0
LEG_RT_CNF = 1 << 1
TN_INT_TYPE_LEVEL = 1 << 1
TN_INT_ENB = 1 << 2
TN_TYPE_PERIODIC = 1 << 3
TN_PER_INT_CAP = 1 << 4
TN_SIZE_CAP = 1 << 5
TN_VAL_SET = 1 << 6
TN_32MODE = 1 << 8
TN_ROUTE_SHIFT = 9
TN_ROUTE_MASK = 0x1F << TN_ROUTE_SHIFT
_TN_WRITABLE = (TN_INT_TYPE_LEVEL | TN_INT_ENB | TN_TYPE_PERIODIC | TN_VAL_SET | TN_32MODE
                | TN_ROUTE_MASK)
_TN_FIXED = TN_PER_INT_CAP | TN_SIZE_CAP | (INT_ROUTE_CAP << 32)
_RTC_IRQ = 8
_M64 = (1 << 64) - 1
_M32 = (1 << 32) - 1


class LegacyGate:
    """An :class:`~kvmcpu.devices.irq.InterruptController` in front of ``inner``
    that drops what the PIT and the RTC send while the HPET's legacy
    replacement route is on (and lowers their lines when it turns on)."""

    def __init__(self, inner: InterruptController) -> None:
        self.inner = inner
        self.blocked = False
        self.levels: Dict[int, bool] = {}

    def set_irq(self, line: int, level: bool) -> None:
        self.levels[line] = level
        if not self.blocked:
            self.inner.set_irq(line, level)

    def block(self, blocked: bool) -> None:
        if blocked == self.blocked:
            return
        self.blocked = blocked
        for line, level in self.levels.items():
            if level:
                self.inner.set_irq(line, not blocked)


class _Timer:
    __slots__ = ("index", "config", "cmp", "period", "event")

    def __init__(self, hpet: Hpet, index: int) -> None:
        self.index = index
        self.config = _TN_FIXED
        self.cmp = _M64
        self.period = 0
        self.event = EventFunctionWrapper(lambda: hpet._fire(self), f"{hpet.name}.t{index}")

    @property
    def mask(self) -> int:
        return _M32 if self.config & TN_32MODE else _M64


class Hpet(Device):
    """The HPET. Map at HPET_BASE with HPET_SIZE bytes.

    Args:
        name: device name.
        irqchip: where the interrupts go (GSI numbers: the ISA router, or the
            in-kernel irqchip).
        queue: the event queue whose ticks are simulated time.
        legacy_gate: the gate of the PIT's and the RTC's lines (legacy route).
    """

    def __init__(self, name: str = "hpet", *, irqchip: Optional[InterruptController] = None,
                 queue: EventQueue | None = None,
                 legacy_gate: Optional[LegacyGate] = None) -> None:
        super().__init__(name)
        self.queue = main_queue if queue is None else queue
        self.irqchip = irqchip
        self.legacy_gate = legacy_gate
        self.timers = [_Timer(self, n) for n in range(NUM_TIMERS)]
        self.config = 0
        self.isr = 0
        self.counter = 0  # the counter when it was last halted or written
        self.enable_tick = 0  # the tick the counter started counting from ``counter``
        self.levels: List[int] = [0] * NUM_TIMERS  # the level each timer drives (level mode)
        self.interrupts = [0] * NUM_TIMERS  # interrupts each timer raised

    def reset(self) -> None:
        for t in self.timers:
            if t.event.scheduled():
                self.queue.deschedule(t.event)
            self._drive(t, False)
            t.config, t.cmp, t.period = _TN_FIXED, _M64, 0
        self.config = self.isr = self.counter = 0
        if self.legacy_gate is not None:
            self.legacy_gate.block(False)

    # -- time -------------------------------------------------------------------------
    def enabled(self) -> bool:
        return bool(self.config & ENABLE_CNF)

    def main_counter(self) -> int:
        if not self.enabled():
            return self.counter
        return (self.counter + (self.queue.cur_tick - self.enable_tick) // _TICKS_PER_COUNT) & _M64

    def _tick_of(self, count_delta: int) -> int:
        """The first tick at which the counter has advanced ``count_delta`` from now."""
        now = self.queue.cur_tick
        elapsed = (now - self.enable_tick) // _TICKS_PER_COUNT
        return self.enable_tick + (elapsed + count_delta) * _TICKS_PER_COUNT

    def _arm(self, t: _Timer) -> None:
        if t.event.scheduled():
            self.queue.deschedule(t.event)
        if not self.enabled() or not t.config & TN_INT_ENB:
            return
        delta = (t.cmp - self.main_counter()) & t.mask
        if delta == 0 and t.config & TN_TYPE_PERIODIC and t.period:
            delta = t.period & t.mask
        if delta == 0:
            delta = t.mask + 1  # a full wrap away
        if delta > 1 << 40:
            return  # more than three hours away: never in practice (64-bit)
        self.queue.schedule(t.event, self._tick_of(delta))

    def _fire(self, t: _Timer) -> None:
        counter = self.main_counter()
        if t.config & TN_TYPE_PERIODIC and t.period:
            period = t.period & t.mask
            cmp = t.cmp
            while ((counter - cmp) & t.mask) < (1 << 63 if t.mask == _M64 else 1 << 31):
                cmp = (cmp + period) & t.mask  # catch up past the counter
            t.cmp = cmp
        self._interrupt(t)
        self._arm(t)

    # -- interrupts ---------------------------------------------------------------------
    def _route(self, t: _Timer) -> int:
        if self.config & LEG_RT_CNF and t.index <= 1:
            return 0 if t.index == 0 else _RTC_IRQ
        return (t.config & TN_ROUTE_MASK) >> TN_ROUTE_SHIFT

    def _drive(self, t: _Timer, level: bool) -> None:
        if self.levels[t.index] == int(level):
            return
        self.levels[t.index] = int(level)
        if self.irqchip is not None:
            self.irqchip.set_irq(self._route(t), level)

    def _interrupt(self, t: _Timer) -> None:
        if not t.config & TN_INT_ENB or not self.enabled():
            return
        self.interrupts[t.index] += 1
        if t.config & TN_INT_TYPE_LEVEL:
            self.isr |= 1 << t.index
            self._drive(t, True)
        elif self.irqchip is not None:
            route = self._route(t)
            self.irqchip.set_irq(route, True)
            self.irqchip.set_irq(route, False)

    def timer_pending(self) -> bool:
        """True while an enabled timer's event is scheduled (the CPU can be woken)."""
        return any(t.event.scheduled() for t in self.timers)

    # -- registers ------------------------------------------------------------------------
    def _register(self, reg: int) -> int:
        if reg == 0x000:
            return CAPABILITIES
        if reg == 0x010:
            return self.config
        if reg == 0x020:
            return self.isr
        if reg == 0x0F0:
            return self.main_counter()
        if 0x100 <= reg < 0x100 + 0x20 * NUM_TIMERS:
            t = self.timers[(reg - 0x100) >> 5]
            field = reg & 0x1F
            if field == 0:
                return t.config
            if field == 8:
                return t.cmp & t.mask
        return 0

    def read(self, offset: int, size: int) -> int:
        value = self._register(offset & ~7)
        return (value >> (8 * (offset & 7))) & size_mask(size)

    def write(self, offset: int, size: int, value: int) -> None:
        reg, shift = offset & ~7, 8 * (offset & 7)
        mask = size_mask(size) << shift
        data = (value << shift) & mask
        if reg == 0x010:
            self._write_config((self.config & ~mask) | data)
        elif reg == 0x020:
            cleared = data & self.isr
            self.isr &= ~cleared
            for t in self.timers:
                if cleared & (1 << t.index):
                    self._drive(t, False)
        elif reg == 0x0F0:
            if not self.enabled():  # the counter is written while halted
                self.counter = (self.counter & ~mask) | data
        elif 0x100 <= reg < 0x100 + 0x20 * NUM_TIMERS:
            t = self.timers[(reg - 0x100) >> 5]
            field = reg & 0x1F
            if field == 0:
                self._write_timer_config(t, (t.config & ~mask) | data)
            elif field == 8:
                self._write_comparator(t, mask, data)

    def _write_config(self, new: int) -> None:
        old = self.config
        new &= ENABLE_CNF | LEG_RT_CNF
        if (old ^ new) & LEG_RT_CNF:
            levels = [bool(x) for x in self.levels]
            for t in self.timers:
                self._drive(t, False)  # lower on the old route
            self.config = new
            for t, level in zip(self.timers, levels):
                self._drive(t, level)
            if self.legacy_gate is not None:
                self.legacy_gate.block(bool(new & LEG_RT_CNF))
        if (old ^ new) & ENABLE_CNF:
            if new & ENABLE_CNF:
                self.enable_tick = self.queue.cur_tick
            else:
                self.counter = self.main_counter()
        self.config = new
        for t in self.timers:
            self._arm(t)

    def _write_timer_config(self, t: _Timer, new: int) -> None:
        level_before = bool(self.levels[t.index])
        self._drive(t, False)
        t.config = (new & _TN_WRITABLE) | _TN_FIXED
        if t.config & TN_32MODE:
            t.cmp &= _M32
            t.period &= _M32
        if not t.config & TN_INT_TYPE_LEVEL:
            self.isr &= ~(1 << t.index)
        elif level_before and t.config & TN_INT_ENB:
            self._drive(t, True)
        self._arm(t)

    def _write_comparator(self, t: _Timer, mask: int, data: int) -> None:
        if t.config & TN_32MODE:
            mask &= _M32
            data &= _M32
        if not t.config & TN_TYPE_PERIODIC or t.config & TN_VAL_SET:
            t.cmp = (t.cmp & ~mask) | data
        if t.config & TN_TYPE_PERIODIC:
            t.period = ((t.period & ~mask) | data) & (t.mask >> 1)
        t.config &= ~TN_VAL_SET
        self._arm(t)

    # -- checkpoints ------------------------------------------------------------------------
    def serialize(self, cp: CheckpointOut) -> None:
        cp.param_out("config", self.config)
        cp.param_out("isr", self.isr)
        cp.param_out("counter", self.counter)
        cp.param_out("enable_tick", self.enable_tick)
        cp.param_out("levels", list(self.levels))
        for t in self.timers:
            cp.param_out(f"t{t.index}", [t.config, t.cmp, t.period])

    def unserialize(self, cp: CheckpointIn) -> None:
        sec = cp.current
        self.config = sec.get_int("config")
        self.isr = sec.get_int("isr")
        self.counter = sec.get_int("counter")
        self.enable_tick = sec.get_int("enable_tick")
        levels = sec.get_int_list("levels", NUM_TIMERS)
        for t in self.timers:
            t.config, t.cmp, t.period = sec.get_int_list(f"t{t.index}", 3)
        self.levels = [0] * NUM_TIMERS
        for t, level in zip(self.timers, levels):
            self._drive(t, bool(level))
            self._arm(t)
        if self.legacy_gate is not None:
            self.legacy_gate.block(bool(self.config & LEG_RT_CNF))

    def describe(self) -> Dict[str, Any]:
        """The values a firmware HPET table describes (base, period, timers)."""
        return {"period_fs": HPET_PERIOD_FS, "timers": NUM_TIMERS, "vendor": 0x8086,
                "legacy_replacement": True, "counter_64bit": True}
