"""The local APIC in user space (Intel SDM vol. 3, ch. 11: xAPIC and x2APIC).

One :class:`LocalApic` per CPU, on an :class:`ApicBus` that carries IPIs and
IOAPIC messages between them. The model is the one gem5's x86 KVM CPU and
QEMU's TCG APIC use: the APIC lives outside KVM, decides which vector the
CPU takes next (:meth:`LocalApic.has_pending` / :meth:`LocalApic.acknowledge`,
called by :class:`ApicInterrupts`, the CPU model's one interrupt source), and
the CPU model injects it with KVM_INTERRUPT / KVM_NMI and the interrupt
window.

What is modelled:

* the xAPIC page (4 KiB MMIO at IA32_APIC_BASE, default 0xfee00000; the CPU
  model remaps it when the guest moves it: :meth:`LocalApic.set_base`), and
  x2APIC through MSRs 0x800-0x8ff (:meth:`LocalApic.read_msr` /
  :meth:`LocalApic.write_msr`, with IA32_TSC_DEADLINE);
* ID, version, TPR, APR, PPR, EOI (with EOI broadcast to the IOAPIC for
  level-triggered vectors), LDR, DFR (flat and cluster), SVR (software
  disable, spurious vector), IRR/ISR/TMR with priority classes, ESR;
* the ICR: fixed, lowest priority, NMI, INIT (assert; de-assert ignored),
  STARTUP, physical and logical destinations and the shorthands; SMI is
  refused with a :class:`~kvmcpu.errors.GuestError` (there is no SMM);
  delivery is instantaneous, so ICR.busy is always clear;
* the LVT: timer, thermal, perf, LINT0, LINT1, error, with masks (thermal
  and perf have no source; LINT0 in ExtINT mode passes the 8259's INTR
  through, the BSP's reset value, as in KVM and QEMU);
* the timer in one-shot, periodic and TSC-deadline modes with the divide
  configuration, in simulated time: a bus cycle is 1 ns (KVM's and QEMU's
  APIC bus), the expiry is an event on the event queue.

Unmodelled: remote read (RRD is 0), the CMCI LVT, EOI-broadcast suppression,
directed EOI, focus processor checking.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, List, Optional

from kvmcpu.devices.base import Device
from kvmcpu.errors import GuestError
from kvmcpu.sim.eventq import TICKS_PER_SECOND, EventFunctionWrapper, EventQueue

if TYPE_CHECKING:
    from kvmcpu.sim.checkpoint import CheckpointIn

__all__ = [
    "APIC_BASE_ENABLE", "APIC_BASE_X2APIC", "APIC_BUS_CYCLE_TICKS", "ApicBus", "ApicInterrupts",
    "DEFAULT_APIC_BASE", "LocalApic", "MSR_IA32_TSC_DEADLINE",
]

log = logging.getLogger("kvmcpu.devices.lapic")

#: The reset IA32_APIC_BASE address (the page the xAPIC registers are in).
DEFAULT_APIC_BASE = 0xFEE00000
#: IA32_APIC_BASE bits: BSP, x2APIC enable (EXTD), global enable.
APIC_BASE_BSP = 1 << 8
APIC_BASE_X2APIC = 1 << 10
APIC_BASE_ENABLE = 1 << 11
MSR_IA32_APIC_BASE = 0x1B
MSR_IA32_TSC_DEADLINE = 0x6E0
#: Ticks per APIC bus cycle (1 ns: the bus KVM and QEMU give their APIC timer).
APIC_BUS_CYCLE_TICKS = 1000

#: Version register: version 0x14 (integrated APIC), max LVT entry 5 (6 LVTs).
APIC_VERSION = 0x00050014

# Register offsets in the xAPIC page (x2APIC MSR = 0x800 + offset >> 4).
REG_ID, REG_VERSION, REG_TPR, REG_APR, REG_PPR, REG_EOI = 0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0
REG_RRD, REG_LDR, REG_DFR, REG_SVR = 0xC0, 0xD0, 0xE0, 0xF0
REG_ISR, REG_TMR, REG_IRR, REG_ESR = 0x100, 0x180, 0x200, 0x280
REG_ICR_LO, REG_ICR_HI = 0x300, 0x310
REG_LVT_TIMER, REG_LVT_THERMAL, REG_LVT_PERF = 0x320, 0x330, 0x340
REG_LVT_LINT0, REG_LVT_LINT1, REG_LVT_ERROR = 0x350, 0x360, 0x370
REG_TIMER_ICR, REG_TIMER_CCR, REG_TIMER_DCR = 0x380, 0x390, 0x3E0
REG_SELF_IPI = 0x3F0  # x2APIC only

LVT_REGS = (REG_LVT_TIMER, REG_LVT_THERMAL, REG_LVT_PERF, REG_LVT_LINT0, REG_LVT_LINT1,
            REG_LVT_ERROR)
LVT_MASKED = 1 << 16
#: Writable bits of each LVT (timer: vector, mask, mode; LINTs: + delivery, polarity, trigger).
_LVT_WRITABLE = {
    REG_LVT_TIMER: 0x700FF | LVT_MASKED,
    REG_LVT_THERMAL: 0x007FF | LVT_MASKED,
    REG_LVT_PERF: 0x007FF | LVT_MASKED,
    REG_LVT_LINT0: 0x0A7FF | LVT_MASKED,
    REG_LVT_LINT1: 0x0A7FF | LVT_MASKED,
    REG_LVT_ERROR: 0x000FF | LVT_MASKED,
}
TIMER_ONE_SHOT, TIMER_PERIODIC, TIMER_TSC_DEADLINE = 0, 1, 2

# Delivery modes (ICR, LVT, IOAPIC redirection entries).
DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_STARTUP, DM_EXTINT = 0, 1, 2, 4, 5, 6, 7
# ICR destination shorthands.
SH_NONE, SH_SELF, SH_ALL, SH_OTHERS = 0, 1, 2, 3
# ESR bits.
ESR_SEND_ILLEGAL_VECTOR = 1 << 5
ESR_RECV_ILLEGAL_VECTOR = 1 << 6
ESR_ILLEGAL_REGISTER = 1 << 7


def timer_divisor(dcr: int) -> int:
    """The divide configuration register's divisor (SDM fig. 11-10: bits 0, 1 and 3)."""
    value = (dcr & 3) | ((dcr >> 1) & 4)
    return 1 << ((value + 1) & 7)


def _highest(bits: int) -> int:
    """The highest set bit of a 256-bit vector set, or -1."""
    return bits.bit_length() - 1


class ApicBus:
    """The APIC bus: the local APICs by position, and message delivery between them."""

    def __init__(self) -> None:
        self.apics: List[LocalApic] = []

    def attach(self, apic: LocalApic) -> None:
        self.apics.append(apic)
        apic.bus = self

    def match(self, dest: int, logical: bool, x2apic: bool = False) -> List[LocalApic]:
        """The APICs a (physical or logical) destination names."""
        return [a for a in self.apics if a.matches(dest, logical)]

    def deliver(self, targets: List[LocalApic], mode: int, vector: int, level: bool,
                trigger_level: bool) -> None:
        """Deliver one message to ``targets`` (see :func:`deliver`)."""
        deliver(targets, mode, vector, level, trigger_level)


def deliver(targets: List[LocalApic], mode: int, vector: int, level: bool,
            trigger_level: bool) -> None:
    """Deliver one message to ``targets``; lowest priority goes to the one with the
    lowest arbitration priority (the first of equals), software-enabled ones first."""
    if not targets:
        return
    if mode == DM_LOWEST:
        enabled = [a for a in targets if a.sw_enabled] or targets
        targets = [min(enabled, key=lambda a: a.apr)]
        mode = DM_FIXED
    for apic in targets:
        apic.receive(mode, vector, level, trigger_level)


class LocalApic(Device):
    """One CPU's local APIC (see the module docstring).

    Args:
        name: device name ("lapic0").
        apic_id: the initial APIC ID (the CPU index).
        bsp: the bootstrap processor (IA32_APIC_BASE.BSP, LINT0 = ExtINT at reset).
        queue: the event queue whose ticks are simulated time (the timer).
        tsc: the guest's TSC now (TSC-deadline mode); default: simulated
            cycles at ``tsc_period`` ticks each.
        tsc_period: ticks per TSC cycle (the CPU clock period).
    """

    _checkpoint_fields = (
        "base_msr", "apic_id", "tpr", "ldr", "dfr", "svr", "irr", "isr", "tmr", "esr",
        "esr_pending", "icr_lo", "icr_hi", "lvt", "timer_icr", "timer_dcr", "timer_load_tick",
        "timer_next_tick", "tsc_deadline",
    )

    def __init__(self, name: str = "lapic0", *, apic_id: int = 0, bsp: bool = True,
                 queue: EventQueue, tsc: Optional[Callable[[], int]] = None,
                 tsc_period: int = 1000) -> None:
        super().__init__(name)
        if not 0 <= apic_id <= 0xFE:
            raise ValueError(f"apic_id must be 0-254, got {apic_id}")
        if tsc_period <= 0:
            raise ValueError(f"tsc_period must be positive, got {tsc_period}")
        self.queue = queue
        self.bsp = bsp
        #: The guest TSC's frequency (TSC-deadline mode converts TSC cycles to ticks).
        self.tsc_hz = TICKS_PER_SECOND // tsc_period
        self._tsc = tsc if tsc is not None else self._simulated_tsc
        self.bus: Optional[ApicBus] = None
        #: The CPU (anything with post_nmi/post_init/post_sipi/wakeup); see :meth:`attach_cpu`.
        self.cpu: Any = None
        #: Called with a vector when a level-triggered vector is EOIed (the IOAPIC).
        self.eoi_listeners: List[Callable[[int], None]] = []
        #: Called as ``remap(old_base, new_base)`` when the xAPIC page moves or is switched off.
        self.on_remap: Optional[Callable[[Optional[int], Optional[int]], None]] = None
        self.interrupts_accepted = 0
        self._timer_event = EventFunctionWrapper(self._timer_fired, f"{name}.timer")
        self.base_msr = 0
        self.apic_id = apic_id
        self.reset()

    # ------------------------------------------------------------------ reset
    def reset(self, *, init: bool = False) -> None:
        """Power-on reset, or (``init``) the INIT reset, which keeps the ID and the base."""
        if not init:
            bsp = APIC_BASE_BSP if self.bsp else 0
            self.base_msr = DEFAULT_APIC_BASE | APIC_BASE_ENABLE | bsp
        self.tpr = 0
        self.ldr = 0
        self.dfr = 0xFFFFFFFF
        self.svr = 0xFF
        self.irr = self.isr = self.tmr = 0
        self.esr = self.esr_pending = 0
        self.icr_lo = self.icr_hi = 0
        self.lvt = [LVT_MASKED] * len(LVT_REGS)
        if self.bsp and not init:
            self.lvt[3] = DM_EXTINT << 8  # LINT0: the 8259's INTR, as the firmware leaves it
        self.timer_icr = 0
        self.timer_dcr = 0
        self.timer_load_tick = 0
        self.timer_next_tick = -1
        self.tsc_deadline = 0
        if self._timer_event.scheduled():
            self.queue.deschedule(self._timer_event)

    def _simulated_tsc(self) -> int:
        return self.queue.cur_tick * self.tsc_hz // TICKS_PER_SECOND

    def set_tsc_source(self, read: Callable[[], int], hz: int) -> None:
        """Where the guest's TSC comes from (TSC-deadline mode): ``read()`` returns it
        now, ``hz`` is its frequency (on KVM: IA32_TSC and KVM_GET_TSC_KHZ)."""
        if hz <= 0:
            raise ValueError(f"TSC frequency must be positive, got {hz}")
        self._tsc = read
        self.tsc_hz = hz

    def attach_cpu(self, cpu: Any) -> None:
        """Deliver NMIs, INIT, SIPIs and wake-ups to ``cpu`` (the CPU model calls this)."""
        self.cpu = cpu

    # ------------------------------------------------------------------ state
    @property
    def hw_enabled(self) -> bool:
        """IA32_APIC_BASE's global enable."""
        return bool(self.base_msr & APIC_BASE_ENABLE)

    @property
    def x2apic(self) -> bool:
        return bool(self.base_msr & APIC_BASE_X2APIC) and self.hw_enabled

    @property
    def sw_enabled(self) -> bool:
        """SVR's APIC software enable."""
        return bool(self.svr & 0x100)

    @property
    def base_address(self) -> Optional[int]:
        """Where the xAPIC page is mapped (None: globally disabled or in x2APIC mode)."""
        if not self.hw_enabled or self.x2apic:
            return None
        return self.base_msr & 0xFFFFFF000

    @property
    def ppr(self) -> int:
        """Processor priority (SDM 11.8.3.1)."""
        isrv = max(_highest(self.isr), 0)
        if (self.tpr >> 4) >= (isrv >> 4):
            return self.tpr
        return isrv & 0xF0

    @property
    def apr(self) -> int:
        """Arbitration priority (SDM 11.6.2.4, lowest-priority delivery)."""
        tpr, isrv, irrv = self.tpr, max(_highest(self.isr), 0), max(_highest(self.irr), 0)
        if (tpr >> 4) >= (irrv >> 4) and (tpr >> 4) > (isrv >> 4):
            return tpr
        return max(tpr & 0xF0, isrv & 0xF0, irrv & 0xF0)

    def set_base(self, value: int) -> None:
        """IA32_APIC_BASE written (WRMSR, or seen in kvm_run.apic_base): move or switch
        the page. Clearing the global enable resets the APIC, as on hardware."""
        value &= 0xFFFFFFFFFF00 | APIC_BASE_BSP | APIC_BASE_X2APIC | APIC_BASE_ENABLE
        old = self.base_address
        was_enabled = self.hw_enabled
        self.base_msr = (value & ~APIC_BASE_BSP) | (APIC_BASE_BSP if self.bsp else 0)
        if was_enabled and not self.hw_enabled:
            base = self.base_msr
            self.reset(init=True)
            self.lvt[3] = LVT_MASKED
            self.base_msr = base
        new = self.base_address
        if old != new and self.on_remap is not None:
            self.on_remap(old, new)

    # ------------------------------------------------------------------ destinations
    def matches(self, dest: int, logical: bool) -> bool:
        """Does this APIC accept a message for ``dest`` (SDM 11.6.2)?"""
        if not self.hw_enabled:
            return False
        if self.x2apic:
            if not logical:
                return dest == 0xFFFFFFFF or dest == self.apic_id
            if dest == 0xFFFFFFFF:
                return True
            ldr = self.x2apic_ldr
            return (dest >> 16) == (ldr >> 16) and bool(dest & ldr & 0xFFFF)
        dest &= 0xFF
        if not logical:
            return dest == 0xFF or dest == self.apic_id
        if dest == 0xFF:
            return True
        ldr = self.ldr >> 24
        if (self.dfr >> 28) == 0xF:  # flat model
            return bool(ldr & dest)
        # Cluster model: high nibble the cluster (15: all clusters), low nibble a bit mask.
        cluster = dest >> 4
        return (cluster == 0xF or cluster == ldr >> 4) and bool(dest & ldr & 0xF)

    @property
    def x2apic_ldr(self) -> int:
        """The x2APIC logical ID derived from the x2APIC ID (SDM 11.12.10.2)."""
        return ((self.apic_id >> 4) << 16) | (1 << (self.apic_id & 0xF))

    # ------------------------------------------------------------------ accepting
    def receive(self, mode: int, vector: int, level: bool = True,
                trigger_level: bool = False) -> None:
        """A message from the APIC bus (an IPI, an IOAPIC entry) or a local source."""
        if mode in (DM_FIXED, DM_LOWEST):
            self.accept_fixed(vector, trigger_level)
        elif mode == DM_NMI:
            if self.cpu is not None:
                self.cpu.post_nmi()
        elif mode == DM_INIT:
            if trigger_level and not level:
                return  # INIT level de-assert: arbitration ID sync, nothing to do
            self.reset(init=True)
            if self.cpu is not None:
                self.cpu.post_init()
        elif mode == DM_STARTUP:
            if self.cpu is not None:
                self.cpu.post_sipi(vector)
        elif mode == DM_SMI:
            raise GuestError(f"{self.name}: SMI delivery is not modelled (no SMM in kvmcpu)")
        elif mode == DM_EXTINT:
            pass  # the 8259 answers the INTA: ApicInterrupts asks it (its INTR wakes the CPU)
        else:
            log.warning("%s: reserved delivery mode %d ignored", self.name, mode)

    def accept_fixed(self, vector: int, trigger_level: bool = False) -> None:
        """Set ``vector`` in the IRR (and its TMR bit for a level-triggered message)."""
        vector &= 0xFF
        if vector < 16:
            self._error(ESR_RECV_ILLEGAL_VECTOR)
            return
        bit = 1 << vector
        self.irr |= bit
        if trigger_level:
            self.tmr |= bit
        else:
            self.tmr &= ~bit
        self.interrupts_accepted += 1
        if self.cpu is not None and self.has_pending():
            self.cpu.wakeup()

    def _error(self, bits: int) -> None:
        self.esr_pending |= bits
        lvt = self.lvt[5]
        if not lvt & LVT_MASKED and (lvt & 0xFF) >= 16:
            bit = 1 << (lvt & 0xFF)
            self.irr |= bit
            self.tmr &= ~bit

    # ------------------------------------------------------------------ the CPU side
    def pending_vector(self) -> int:
        """The vector the CPU would take now, or -1 (SDM 11.8.3: above the PPR's class)."""
        if not self.hw_enabled or not self.sw_enabled:
            return -1
        irrv = _highest(self.irr)
        if irrv < 0 or (irrv >> 4) <= (self.ppr >> 4):
            return -1
        return irrv

    def has_pending(self) -> bool:
        return self.pending_vector() >= 0

    def acknowledge(self) -> int:
        """INTA: move the highest deliverable vector from IRR to ISR and return it
        (the spurious vector when nothing is deliverable any more)."""
        vector = self.pending_vector()
        if vector < 0:
            return self.svr & 0xFF
        bit = 1 << vector
        self.irr &= ~bit
        self.isr |= bit
        return vector

    def accepts_pic(self) -> bool:
        """Does the 8259's INTR reach the CPU (globally disabled, or LINT0 = unmasked ExtINT)?"""
        if not self.hw_enabled:
            return True
        lint0 = self.lvt[3]
        return not lint0 & LVT_MASKED and (lint0 >> 8) & 7 == DM_EXTINT

    def eoi(self) -> None:
        """End of interrupt: clear the highest ISR bit; a level-triggered vector's EOI
        is broadcast to the IOAPIC(s)."""
        vector = _highest(self.isr)
        if vector < 0:
            return
        bit = 1 << vector
        self.isr &= ~bit
        if self.tmr & bit:
            self.tmr &= ~bit
            for listener in self.eoi_listeners:
                listener(vector)
        if self.cpu is not None and self.has_pending():
            self.cpu.wakeup()

    def set_lint(self, pin: int, level: bool) -> None:
        """Drive LINT0/LINT1 (edge: acts on the rising edge). ExtINT needs no call:
        the 8259 is asked directly (:meth:`accepts_pic`)."""
        if not level:
            return
        lvt = self.lvt[3 + pin]
        if lvt & LVT_MASKED or not self.hw_enabled:
            return
        mode = (lvt >> 8) & 7
        if mode == DM_EXTINT:
            return
        self.receive(mode, lvt & 0xFF, True, bool(lvt & (1 << 15)))

    # ------------------------------------------------------------------ the ICR
    def send_ipi(self, lo: int, hi: int) -> None:
        """Send the IPI an ICR write describes (xAPIC: destination in ``hi`` bits 31:24)."""
        vector = lo & 0xFF
        mode = (lo >> 8) & 7
        logical = bool(lo & (1 << 11))
        level = bool(lo & (1 << 14))
        trigger_level = bool(lo & (1 << 15))
        shorthand = (lo >> 18) & 3
        if mode in (DM_FIXED, DM_LOWEST) and vector < 16:
            self._error(ESR_SEND_ILLEGAL_VECTOR)
            return
        if mode == DM_SMI:
            raise GuestError(f"{self.name}: SMI by IPI is not modelled (no SMM in kvmcpu)")
        dest = hi if self.x2apic else (hi >> 24) & 0xFF
        if shorthand == SH_SELF:
            targets = [self]
        elif self.bus is None:
            targets = [self] if shorthand == SH_ALL or self.matches(dest, logical) else []
        elif shorthand == SH_ALL:
            targets = list(self.bus.apics)
        elif shorthand == SH_OTHERS:
            targets = [a for a in self.bus.apics if a is not self]
        else:
            targets = self.bus.match(dest, logical)
        deliver(targets, mode, vector, level, trigger_level)

    # ------------------------------------------------------------------ the timer
    @property
    def timer_mode(self) -> int:
        return (self.lvt[0] >> 17) & 3

    def _timer_period(self) -> int:
        return self.timer_icr * timer_divisor(self.timer_dcr) * APIC_BUS_CYCLE_TICKS

    def _arm(self, when: int) -> None:
        self.timer_next_tick = when
        queue = self.queue
        if self._timer_event.scheduled():
            queue.deschedule(self._timer_event)
        if when >= 0:
            queue.schedule(self._timer_event, max(when, queue.cur_tick))

    def _start_count(self) -> None:
        self.timer_load_tick = self.queue.cur_tick
        self._arm(self.timer_load_tick + self._timer_period() if self.timer_icr else -1)

    def current_count(self) -> int:
        """The current-count register: counts down from the initial count, one per
        ``divisor`` bus cycles; 0 when a one-shot count expired or the timer is off."""
        if self.timer_mode == TIMER_TSC_DEADLINE or not self.timer_icr:
            return 0
        cycles = timer_divisor(self.timer_dcr) * APIC_BUS_CYCLE_TICKS
        elapsed = (self.queue.cur_tick - self.timer_load_tick) // cycles
        if self.timer_mode == TIMER_PERIODIC:
            return self.timer_icr - elapsed % self.timer_icr
        if self.timer_next_tick < 0 or elapsed >= self.timer_icr:
            return 0
        return self.timer_icr - elapsed

    def _timer_fired(self) -> None:
        lvt = self.lvt[0]
        if not lvt & LVT_MASKED:
            self.accept_fixed(lvt & 0xFF)
        mode = self.timer_mode
        if mode == TIMER_PERIODIC and self.timer_icr:
            self._arm(self.timer_next_tick + self._timer_period())
        else:
            self.timer_next_tick = -1
            if mode == TIMER_TSC_DEADLINE:
                self.tsc_deadline = 0

    def _set_tsc_deadline(self, value: int) -> None:
        if self.timer_mode != TIMER_TSC_DEADLINE:
            return  # ignored outside TSC-deadline mode (SDM 11.5.4.1)
        self.tsc_deadline = value
        if value == 0:
            self._arm(-1)
            return
        delta = max(0, value - self._tsc())
        self._arm(self.queue.cur_tick + -(-delta * TICKS_PER_SECOND // self.tsc_hz))

    # ------------------------------------------------------------------ registers
    def read_register(self, offset: int) -> int:
        """A 32-bit register by its xAPIC offset (0 for reserved ones)."""
        if offset == REG_ID:
            return self.apic_id if self.x2apic else self.apic_id << 24
        if offset == REG_VERSION:
            return APIC_VERSION
        if offset == REG_TPR:
            return self.tpr
        if offset == REG_APR:
            return self.apr
        if offset == REG_PPR:
            return self.ppr
        if offset == REG_LDR:
            return self.x2apic_ldr if self.x2apic else self.ldr
        if offset == REG_DFR:
            return self.dfr
        if offset == REG_SVR:
            return self.svr
        if REG_ISR <= offset < REG_ESR:
            index = (offset - REG_ISR) >> 4
            group = (self.isr, self.tmr, self.irr)[index >> 3]
            return (group >> (32 * (index & 7))) & 0xFFFFFFFF
        if offset == REG_ESR:
            return self.esr
        if offset == REG_ICR_LO:
            return self.icr_lo & ~(1 << 12)  # delivery status: always idle
        if offset == REG_ICR_HI:
            return self.icr_hi
        if offset in LVT_REGS:
            return self.lvt[LVT_REGS.index(offset)]
        if offset == REG_TIMER_ICR:
            return 0 if self.timer_mode == TIMER_TSC_DEADLINE else self.timer_icr
        if offset == REG_TIMER_CCR:
            return self.current_count()
        if offset == REG_TIMER_DCR:
            return self.timer_dcr
        return 0

    def write_register(self, offset: int, value: int) -> None:
        """A 32-bit register write by its xAPIC offset."""
        value &= 0xFFFFFFFF
        if offset == REG_ID:
            if not self.x2apic:
                self.apic_id = value >> 24
        elif offset == REG_TPR:
            self.tpr = value & 0xFF
            self._maybe_wake()
        elif offset == REG_EOI:
            self.eoi()
        elif offset == REG_LDR:
            self.ldr = value & 0xFF000000
        elif offset == REG_DFR:
            self.dfr = (value & 0xF0000000) | 0x0FFFFFFF
        elif offset == REG_SVR:
            self.svr = value & 0x3FF
            if not self.sw_enabled:
                self.lvt = [v | LVT_MASKED for v in self.lvt]
            self._maybe_wake()
        elif offset == REG_ESR:
            self.esr, self.esr_pending = self.esr_pending, 0
        elif offset == REG_ICR_LO:
            self.icr_lo = value & 0xCCFFF  # vector, modes, level, trigger, shorthand
            self.send_ipi(self.icr_lo, self.icr_hi)
        elif offset == REG_ICR_HI:
            self.icr_hi = value & 0xFF000000
        elif offset in LVT_REGS:
            index = LVT_REGS.index(offset)
            value &= _LVT_WRITABLE[offset]
            if not self.sw_enabled:
                value |= LVT_MASKED
            if index == 0 and (value >> 17) & 3 == 3:
                value &= ~(3 << 17)  # reserved mode: treated as one-shot
            old_mode = self.timer_mode
            self.lvt[index] = value
            if index == 0 and self.timer_mode != old_mode:
                self.timer_icr = 0  # a mode change disarms the timer (SDM 11.5.4.1)
                self.tsc_deadline = 0
                self._arm(-1)
        elif offset == REG_TIMER_ICR:
            if self.timer_mode != TIMER_TSC_DEADLINE:
                self.timer_icr = value
                self._start_count()
        elif offset == REG_TIMER_DCR:
            self.timer_dcr = value & 0xB
            if self.timer_mode != TIMER_TSC_DEADLINE and self.timer_next_tick >= 0:
                # The count started at the load tick goes on at the new rate (as QEMU).
                period = self._timer_period()
                elapsed = self.queue.cur_tick - self.timer_load_tick
                periods = elapsed // period + 1 if self.timer_mode == TIMER_PERIODIC else 1
                self._arm(self.timer_load_tick + period * periods)
        elif offset in (REG_VERSION, REG_APR, REG_PPR, REG_RRD, REG_TIMER_CCR) or \
                REG_ISR <= offset < REG_ESR:
            pass  # read-only
        else:
            self._error(ESR_ILLEGAL_REGISTER)

    def _maybe_wake(self) -> None:
        if self.cpu is not None and self.has_pending():
            self.cpu.wakeup()

    # -- xAPIC MMIO -------------------------------------------------------------------
    def _apic_of(self, requestor: Any) -> LocalApic:
        """The APIC an access to this page reaches: the requesting CPU's own one
        (every CPU sees its own APIC at the same address), else this one."""
        own = getattr(requestor, "lapic", None)
        if own is not None and own is not self and isinstance(own, LocalApic) \
                and own.bus is self.bus and own.bus is not None:
            return own
        return self

    def read(self, offset: int, size: int, requestor: Any = None) -> int:
        apic = self if requestor is None else self._apic_of(requestor)
        value = apic.read_register(offset & 0xFF0)
        return (value >> (8 * (offset & 3))) & ((1 << (8 * min(size, 4))) - 1)

    def write(self, offset: int, size: int, value: int, requestor: Any = None) -> None:
        apic = self if requestor is None else self._apic_of(requestor)
        if offset & 0xF or size != 4:
            # SDM 11.4.1: registers are written with aligned 32-bit accesses only.
            log.debug("%s: %d-byte write at %#x ignored", apic.name, size, offset)
            return
        apic.write_register(offset, value)

    # -- x2APIC MSRs and IA32_TSC_DEADLINE -------------------------------------------
    def read_msr(self, index: int) -> int:
        """RDMSR of 0x800-0x8ff (x2APIC mode), IA32_APIC_BASE or IA32_TSC_DEADLINE.

        Raises:
            GuestError: an x2APIC MSR outside x2APIC mode (a #GP on hardware).
        """
        if index == MSR_IA32_APIC_BASE:
            return self.base_msr
        if index == MSR_IA32_TSC_DEADLINE:
            return self.tsc_deadline
        if not 0x800 <= index <= 0x8FF or not self.x2apic:
            raise GuestError(f"{self.name}: RDMSR {index:#x} outside x2APIC mode")
        offset = (index - 0x800) << 4
        if offset == REG_ICR_LO:
            return (self.icr_hi << 32) | self.read_register(REG_ICR_LO)
        return self.read_register(offset)

    def write_msr(self, index: int, value: int) -> None:
        """WRMSR of 0x800-0x8ff (x2APIC mode), IA32_APIC_BASE or IA32_TSC_DEADLINE.

        Raises:
            GuestError: an x2APIC MSR outside x2APIC mode (a #GP on hardware).
        """
        if index == MSR_IA32_APIC_BASE:
            self.set_base(value)
            return
        if index == MSR_IA32_TSC_DEADLINE:
            self._set_tsc_deadline(value & 0xFFFFFFFFFFFFFFFF)
            return
        if not 0x800 <= index <= 0x8FF or not self.x2apic:
            raise GuestError(f"{self.name}: WRMSR {index:#x} outside x2APIC mode")
        offset = (index - 0x800) << 4
        if offset == REG_ICR_LO:
            self.icr_hi = (value >> 32) & 0xFFFFFFFF
            self.icr_lo = value & 0xCCFFF
            self.send_ipi(self.icr_lo, self.icr_hi)
        elif offset == REG_SELF_IPI:
            self.accept_fixed(value & 0xFF)
        elif offset in (REG_LDR, REG_DFR, REG_ID, REG_ICR_HI):
            pass  # read-only in x2APIC mode
        else:
            self.write_register(offset, value)

    # -- checkpoints ------------------------------------------------------------------
    def unserialize(self, cp: CheckpointIn) -> None:
        """Restore the registers and re-arm the timer event at its restored tick."""
        super().unserialize(cp)
        self._arm(self.timer_next_tick)

    def __repr__(self) -> str:
        return (f"<LocalApic {self.name!r} id={self.apic_id} base={self.base_msr:#x} "
                f"tpr={self.tpr:#x} irr={self.irr:#x} isr={self.isr:#x}>")


class ApicInterrupts:
    """The CPU model's interrupt source with a user-space local APIC: the APIC's
    vectors first, then the 8259's ExtINT through LINT0 (as QEMU's
    ``cpu_get_pic_interrupt``). Has the ``has_pending``/``acknowledge`` pair the
    CPU model polls, like :class:`~kvmcpu.devices.pic.PicPair`.

    Args:
        lapic: the CPU's local APIC.
        pic: the 8259 pair behind LINT0 (None: no PIC).
    """

    __slots__ = ("lapic", "pic")

    def __init__(self, lapic: LocalApic, pic: Any = None) -> None:
        self.lapic = lapic
        self.pic = pic

    def has_pending(self) -> bool:
        lapic = self.lapic
        if lapic.irr and lapic.pending_vector() >= 0:
            return True
        pic = self.pic
        # PicPair.output is its INTR level, kept up to date on every change: an
        # attribute read instead of the priority logic on each entry.
        return (pic is not None and bool(getattr(pic, "output", True)) and pic.has_pending()
                and lapic.accepts_pic())

    def acknowledge(self) -> int:
        lapic = self.lapic
        if lapic.pending_vector() >= 0:
            return lapic.acknowledge()
        if self.pic is not None and lapic.accepts_pic():
            vector: int = self.pic.acknowledge()
            return vector
        return lapic.svr & 0xFF

    def attach_cpu(self, cpu: Any) -> None:
        self.lapic.attach_cpu(cpu)

    def __repr__(self) -> str:
        return f"<ApicInterrupts {self.lapic!r}>"
