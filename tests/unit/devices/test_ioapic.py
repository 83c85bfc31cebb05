"""The user-space IOAPIC: redirection entries, edge and level triggering, EOI, routing."""

from __future__ import annotations

from typing import Tuple

import pytest

from kvmcpu.devices import IoApic, IrqLine, IsaIrqRouter, PicPair, Pit
from kvmcpu.devices.lapic import REG_EOI, REG_SVR, ApicBus, LocalApic
from kvmcpu.errors import GuestError
from kvmcpu.sim.eventq import EventFunctionWrapper, EventQueue


def make() -> Tuple[IoApic, LocalApic, EventQueue]:
    q = EventQueue("t")
    bus = ApicBus()
    apic = LocalApic("lapic0", queue=q)
    bus.attach(apic)
    apic.write(REG_SVR, 4, 0x1FF)
    ioapic = IoApic("ioapic", bus=bus)
    ioapic.connect_eoi(apic)
    return ioapic, apic, q


def program(ioapic: IoApic, pin: int, low: int, dest: int = 0) -> None:
    ioapic.write(0, 4, 0x11 + 2 * pin)
    ioapic.write(0x10, 4, dest << 24)
    ioapic.write(0, 4, 0x10 + 2 * pin)
    ioapic.write(0x10, 4, low)


def read_entry(ioapic: IoApic, pin: int) -> int:
    ioapic.write(0, 4, 0x10 + 2 * pin)
    return ioapic.read(0x10, 4)


def test_identification_and_reset() -> None:
    ioapic, _, _ = make()
    ioapic.write(0, 4, 1)
    assert ioapic.read(0x10, 4) == 0x170011  # 24 entries, version 0x11
    ioapic.write(0, 4, 0)
    ioapic.write(0x10, 4, 0x0A000000)
    assert ioapic.read(0x10, 4) == 0x0A000000
    assert all(read_entry(ioapic, pin) == 1 << 16 for pin in range(24))  # all masked


def test_edge_delivers_on_rising_edges_and_ignores_them_while_masked() -> None:
    ioapic, apic, _ = make()
    program(ioapic, 4, 0x34)
    ioapic.set_irq(4, True)
    ioapic.set_irq(4, True)  # no new edge
    assert apic.acknowledge() == 0x34 and not apic.irr
    apic.write(REG_EOI, 4, 0)
    ioapic.set_irq(4, False)
    program(ioapic, 4, 0x10034)  # masked
    ioapic.set_irq(4, True)
    assert not apic.irr
    program(ioapic, 4, 0x34)  # 82093AA (and QEMU, KVM): a masked edge is ignored
    assert not apic.irr
    ioapic.set_irq(4, False)
    ioapic.set_irq(4, True)  # the next edge is delivered
    assert apic.irr == 1 << 0x34


def test_level_uses_remote_irr_until_the_eoi() -> None:
    ioapic, apic, _ = make()
    program(ioapic, 9, (1 << 15) | 0x39)
    ioapic.set_irq(9, True)
    assert read_entry(ioapic, 9) & (1 << 14)  # remote IRR
    assert apic.acknowledge() == 0x39
    assert apic.tmr == 1 << 0x39
    apic.write(REG_EOI, 4, 0)  # still asserted: delivered again after the EOI broadcast
    assert apic.irr == 1 << 0x39 and read_entry(ioapic, 9) & (1 << 14)
    apic.acknowledge()
    ioapic.set_irq(9, False)
    apic.write(REG_EOI, 4, 0)
    assert not apic.irr and not read_entry(ioapic, 9) & (1 << 14)


def test_destinations_polarity_bit_and_smi() -> None:
    ioapic, apic, _ = make()
    program(ioapic, 1, 0x31, dest=5)  # physical APIC 5: nobody
    ioapic.set_irq(1, True)
    assert not apic.irr
    apic.write(0xD0, 4, 0x01000000)
    program(ioapic, 2, (1 << 11) | (1 << 13) | 0x32, dest=0x01)  # logical, active low
    assert read_entry(ioapic, 2) == (1 << 11) | (1 << 13) | 0x32
    ioapic.set_irq(2, True)
    assert apic.irr == 1 << 0x32
    program(ioapic, 3, 0x200 | 0x33)
    with pytest.raises(GuestError, match="SMI"):
        ioapic.set_irq(3, True)
    with pytest.raises(ValueError, match="pins 0-23"):
        ioapic.set_irq(24, True)


def test_isa_router_sends_the_pit_to_pin_2_and_the_pic() -> None:
    ioapic, apic, q = make()
    pic = PicPair("pic")
    router = IsaIrqRouter(pic, ioapic)
    program(ioapic, 2, 0x30)
    pit = Pit("pit", irq=IrqLine(router, 0), queue=q)
    pit.write(3, 1, 0x34)  # channel 0, mode 2
    pit.write(0, 1, 1193 & 0xFF)
    pit.write(0, 1, 1193 >> 8)
    stop = EventFunctionWrapper(lambda: None, "stop")
    q.schedule(stop, 1_000_000_000)  # 1 ms: one PIT period
    while q.service_one() is not stop:
        pass
    assert apic.irr == 1 << 0x30
    assert pic.master.irr & 1  # the 8259 saw IRQ 0 too
