"""The I/O APIC (Intel 82093AA) in user space, and the ISA interrupt router.

:class:`IoApic` sits at 0xfec00000 (IOREGSEL at offset 0, IOWIN at 0x10)
with 24 pins. Each redirection entry has a vector, a delivery mode (fixed,
lowest priority, NMI, INIT, ExtINT; SMI is refused), physical or logical
destination, polarity, edge or level trigger with the remote IRR, and a mask;
messages go to the local APICs over the :class:`~kvmcpu.devices.lapic.ApicBus`.

* Edge: a rising edge of an input latches its request; an unmasked entry
  delivers it (a masked one keeps it until it is unmasked, as QEMU's).
* Level: while the input is asserted and the remote IRR is clear, the entry
  delivers and sets the remote IRR; the local APIC's EOI of that vector
  (EOI broadcast) clears it, and an input still asserted delivers again.
* Polarity is kept and read back, and inputs are taken as active high, as
  ISA lines are: KVM (KVM_CAP_IOAPIC_POLARITY_IGNORED) and QEMU do the same.
* With KVM's local APICs (irqchip "split", KVM_CAP_SPLIT_IRQCHIP) there is no
  APIC bus: each message goes out as an MSI (``msi(address, data)``, which the
  System makes KVM_SIGNAL_MSI), and ``on_routes`` receives the 24 entries as
  MSI routes whenever they change (KVM_SET_GSI_ROUTING: KVM learns from the
  trigger bit which vectors are level triggered, and exits with
  KVM_EXIT_IOAPIC_EOI on their EOI, which comes back to :meth:`IoApic.eoi`),
  as QEMU's IOAPIC does in that mode.

:class:`IsaIrqRouter` is the PC's wiring of the ISA IRQs: each goes to the
8259 pair and to the IOAPIC, IRQ 0 (the PIT) to pin 2 as the interrupt
source override every PC firmware reports (and QEMU routes), the others to
the pin of the same number.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, List, Optional, Tuple

from kvmcpu.devices.base import Device
from kvmcpu.devices.lapic import DM_EXTINT, DM_LOWEST, DM_SMI, ApicBus
from kvmcpu.errors import GuestError

#: An MSI: (address, data).
MsiSink = Callable[[int, int], object]
#: MSI routes for KVM_SET_GSI_ROUTING: (gsi, address, data) per pin.
RoutesSink = Callable[[List[Tuple[int, int, int]]], object]

__all__ = ["IOAPIC_BASE", "IOAPIC_PINS", "IoApic", "IsaIrqRouter", "MsiSink", "RoutesSink"]

log = logging.getLogger("kvmcpu.devices.ioapic")

#: Where PC firmware puts the (first) IOAPIC.
IOAPIC_BASE = 0xFEC00000
#: Its size on the MMIO bus (the registers sit in the first 0x20 bytes).
IOAPIC_SIZE = 0x1000
IOAPIC_PINS = 24
#: Version register: version 0x11, maximum redirection entry 23.
IOAPIC_VERSION = 0x11 | ((IOAPIC_PINS - 1) << 16)

RTE_MASKED = 1 << 16
RTE_LEVEL = 1 << 15
RTE_REMOTE_IRR = 1 << 14
RTE_POLARITY_LOW = 1 << 13
RTE_DELIVERY_STATUS = 1 << 12
#: The bits a guest writes (all but delivery status and remote IRR), low dword.
_RTE_WRITABLE_LO = 0x1AFFF


class IoApic(Device):
    """The IOAPIC (see the module docstring).

    Args:
        name: device name.
        bus: the APIC bus its messages go out on (None with ``msi``).
        ioapic_id: the initial IOAPIC ID.
        msi: send each message as an MSI ``msi(address, data)`` instead (KVM's
            local APICs).
        on_routes: with ``msi``, called with the pins' MSI routes when they change.
    """

    _checkpoint_fields = ("ioregsel", "ioapic_id", "redirection", "irr", "levels")

    def __init__(self, name: str = "ioapic", *, bus: Optional[ApicBus] = None,
                 ioapic_id: int = 0, msi: Optional[MsiSink] = None,
                 on_routes: Optional[RoutesSink] = None) -> None:
        super().__init__(name)
        if (bus is None) == (msi is None):
            raise ValueError("IoApic: give either an APIC bus or an msi sink")
        self.bus = bus
        self.msi = msi
        self.on_routes = on_routes
        self._routes: Optional[List[Tuple[int, int, int]]] = None
        self.ioapic_id = ioapic_id
        self.interrupts_sent = 0
        self.reset()

    def reset(self) -> None:
        self.ioregsel = 0
        self.redirection: List[int] = [RTE_MASKED] * IOAPIC_PINS
        #: Latched edge requests, one bit per pin.
        self.irr = 0
        #: Current input levels, one bit per pin.
        self.levels = 0
        self.update_routes()

    @staticmethod
    def msi_of(entry: int) -> Tuple[int, int]:
        """The MSI (address, data) of a redirection entry (Intel SDM vol. 3, 11.11:
        destination in address bits 19:12, logical mode in bit 2; vector, delivery
        mode, level assert and trigger mode in the data)."""
        address = 0xFEE00000 | (((entry >> 56) & 0xFF) << 12) | ((entry >> 11) & 1) << 2
        data = (entry & 0xFF) | (((entry >> 8) & 7) << 8) | (1 << 14) | \
            (((entry >> 15) & 1) << 15)
        return address, data

    def update_routes(self) -> None:
        """Hand the pins' MSI routes to ``on_routes`` when they changed."""
        if self.on_routes is None:
            return
        routes = [(pin, *self.msi_of(entry)) for pin, entry in enumerate(self.redirection)]
        if routes != self._routes:
            self._routes = routes
            self.on_routes(routes)

    def unserialize(self, cp: Any) -> None:
        super().unserialize(cp)
        self.update_routes()

    def connect_eoi(self, lapic: Any) -> None:
        """Listen to ``lapic``'s EOI broadcasts (level-triggered vectors)."""
        lapic.eoi_listeners.append(self.eoi)

    # -- inputs -----------------------------------------------------------------------
    def set_irq(self, line: int, level: bool) -> None:
        """Drive input pin ``line`` (an :class:`~kvmcpu.devices.irq.InterruptController`)."""
        if not 0 <= line < IOAPIC_PINS:
            raise ValueError(f"the IOAPIC has pins 0-{IOAPIC_PINS - 1}, got {line}")
        bit = 1 << line
        was = bool(self.levels & bit)
        if level:
            self.levels |= bit
        else:
            self.levels &= ~bit
        entry = self.redirection[line]
        if entry & RTE_LEVEL:
            if level:
                self._service(line)
        elif level and not was and not entry & RTE_MASKED:
            # 82093AA: an edge on a masked pin is ignored, not held pending (so
            # does KVM's IOAPIC).
            self.irr |= bit
            self._service(line)

    def _service(self, pin: int) -> None:
        entry = self.redirection[pin]
        if entry & RTE_MASKED:
            return
        bit = 1 << pin
        if entry & RTE_LEVEL:
            if not self.levels & bit or entry & RTE_REMOTE_IRR:
                return
            self.redirection[pin] = entry | RTE_REMOTE_IRR
        else:
            if not self.irr & bit:
                return
            self.irr &= ~bit
        self._send(entry)

    def _send(self, entry: int) -> None:
        mode = (entry >> 8) & 7
        vector = entry & 0xFF
        logical = bool(entry & (1 << 11))
        dest = (entry >> 56) & 0xFF
        if mode == DM_SMI:
            raise GuestError(f"{self.name}: SMI delivery is not modelled (no SMM in kvmcpu)")
        if self.msi is not None:
            if mode == DM_EXTINT:
                return  # the 8259 reaches KVM's LINT0 through KVM_INTERRUPT instead
            self.interrupts_sent += 1
            self.msi(*self.msi_of(entry))
            return
        if self.bus is None:
            return  # (unreachable: __init__ takes a bus or an msi sink)
        targets = self.bus.match(dest, logical)
        if mode == DM_EXTINT:
            # The 8259 answers the INTA; the CPU model asks it through LINT0's path.
            for apic in targets:
                apic.receive(DM_EXTINT, 0)
            return
        self.interrupts_sent += 1
        self.bus.deliver(targets, mode, vector, True, bool(entry & RTE_LEVEL))
        if mode == DM_LOWEST and not targets:
            log.debug("%s: lowest-priority message to %#x reached no APIC", self.name, dest)

    def eoi(self, vector: int) -> None:
        """A local APIC's EOI broadcast: clear the remote IRR of entries with ``vector``."""
        for pin, entry in enumerate(self.redirection):
            if entry & RTE_LEVEL and entry & RTE_REMOTE_IRR and entry & 0xFF == vector:
                self.redirection[pin] = entry & ~RTE_REMOTE_IRR
                self._service(pin)

    # -- registers --------------------------------------------------------------------
    def read_register(self, index: int) -> int:
        if index == 0:
            return (self.ioapic_id & 0xF) << 24
        if index == 1:
            return IOAPIC_VERSION
        if index == 2:
            return (self.ioapic_id & 0xF) << 24  # arbitration ID
        if 0x10 <= index < 0x10 + 2 * IOAPIC_PINS:
            entry = self.redirection[(index - 0x10) >> 1]
            return (entry >> 32) & 0xFFFFFFFF if index & 1 else entry & 0xFFFFFFFF
        return 0

    def write_register(self, index: int, value: int) -> None:
        value &= 0xFFFFFFFF
        if index == 0:
            self.ioapic_id = (value >> 24) & 0xF
            return
        if not 0x10 <= index < 0x10 + 2 * IOAPIC_PINS:
            return  # version and arbitration are read-only
        pin = (index - 0x10) >> 1
        entry = self.redirection[pin]
        if index & 1:
            entry = (entry & 0xFFFFFFFF) | ((value & 0xFF000000) << 32)
        else:
            kept = entry & ~_RTE_WRITABLE_LO
            entry = kept | (value & _RTE_WRITABLE_LO)
            if not entry & RTE_LEVEL:
                entry &= ~RTE_REMOTE_IRR
        self.redirection[pin] = entry
        if self.on_routes is not None:
            self.update_routes()
        self._service(pin)

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return self.ioregsel
        if offset == 0x10:
            return self.read_register(self.ioregsel)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.ioregsel = value & 0xFF
        elif offset == 0x10:
            self.write_register(self.ioregsel, value)

    def __repr__(self) -> str:
        return f"<IoApic {self.name!r} id={self.ioapic_id}>"


class IsaIrqRouter:
    """An :class:`~kvmcpu.devices.irq.InterruptController` for ISA IRQs 0-15 that
    drives both the 8259 pair and the IOAPIC (IRQ 0 -> pin 2, n -> pin n)."""

    def __init__(self, pic: Optional[Any], ioapic: IoApic) -> None:
        self.pic = pic
        self.ioapic = ioapic

    def set_irq(self, line: int, level: bool) -> None:
        if self.pic is not None and line < 16:
            self.pic.set_irq(line, level)
        self.ioapic.set_irq(2 if line == 0 else line, level)

    def __repr__(self) -> str:
        return f"<IsaIrqRouter {self.pic!r} {self.ioapic!r}>"
