"""The 8259A pair: init sequence, priorities, EOI, masking, cascade, spurious vectors."""

from __future__ import annotations

from typing import List

from kvmcpu.devices import PicPair
from kvmcpu.mem import IoBus


def make(outputs: List[bool] | None = None) -> tuple[PicPair, IoBus]:
    pic = PicPair(on_output=None if outputs is None else outputs.append)
    bus = IoBus()
    bus.add(0x20, 2, pic.master)
    bus.add(0xA0, 2, pic.slave)
    # The classic PC initialisation: edge, cascade, ICW4; vectors 0x20 / 0x28.
    for port, icw in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01),
                      (0xA0, 0x11), (0xA1, 0x28), (0xA1, 0x02), (0xA1, 0x01)):
        bus.write(port, 1, icw)
    return pic, bus


def test_init_sequence_sets_vector_base_and_clears_masks() -> None:
    pic, bus = make()
    assert pic.master.irq_base == 0x20 and pic.slave.irq_base == 0x28
    assert pic.master.init_state == 0 and pic.slave.init_state == 0
    assert bus.read(0x21, 1) == 0x00 and bus.read(0xA1, 1) == 0x00
    bus.write(0x21, 1, 0xFB)
    assert bus.read(0x21, 1) == 0xFB  # OCW1 read back


def test_edge_trigger_priority_and_eoi() -> None:
    outputs: List[bool] = []
    pic, bus = make(outputs)
    pic.set_irq(3, True)
    pic.set_irq(1, True)
    assert pic.has_pending() and outputs == [True]
    assert bus.read(0x20, 1) == 0b1010  # IRR
    assert pic.acknowledge() == 0x21  # IRQ 1 beats IRQ 3
    bus.write(0x20, 1, 0x0B)  # OCW3: read ISR
    assert bus.read(0x20, 1) == 0b0010
    assert not pic.has_pending()  # IRQ 3 waits for IRQ 1's EOI
    bus.write(0x20, 1, 0x20)  # non-specific EOI
    assert bus.read(0x20, 1) == 0  # ISR
    assert pic.has_pending()
    assert pic.acknowledge() == 0x23
    bus.write(0x20, 1, 0x63)  # specific EOI for IRQ 3
    assert pic.master.isr == 0
    # A held line does not interrupt again without a new rising edge.
    assert not pic.has_pending() and outputs[-1] is False
    pic.set_irq(1, True)
    assert not pic.has_pending()
    pic.set_irq(1, False)
    pic.set_irq(1, True)
    assert pic.acknowledge() == 0x21


def test_higher_priority_preempts_in_service() -> None:
    pic, bus = make()
    pic.set_irq(5, True)
    assert pic.acknowledge() == 0x25
    pic.set_irq(0, True)
    assert pic.has_pending()  # IRQ 0 outranks the IRQ 5 in service
    assert pic.acknowledge() == 0x20
    assert pic.master.isr == 0b100001


def test_masking() -> None:
    pic, bus = make()
    bus.write(0x21, 1, 0xFE)  # only IRQ 0
    pic.set_irq(4, True)
    assert not pic.has_pending()
    assert pic.master.irr == 0x10
    bus.write(0x21, 1, 0xEE)
    assert pic.has_pending() and pic.acknowledge() == 0x24


def test_cascade_through_irq2() -> None:
    pic, bus = make()
    pic.set_irq(12, True)
    assert pic.master.irr & 0x04
    assert pic.acknowledge() == 0x2C
    assert pic.slave.isr == 0x10 and pic.master.isr == 0x04
    bus.write(0xA0, 1, 0x20)
    bus.write(0x20, 1, 0x20)
    assert pic.slave.isr == 0 and pic.master.isr == 0
    bus.write(0xA1, 1, 0x10)  # mask IRQ 12 on the slave
    pic.set_irq(12, False)
    pic.set_irq(12, True)
    assert not pic.has_pending()


def test_spurious_vectors() -> None:
    pic, bus = make()
    assert pic.acknowledge() == 0x27  # nothing pending: spurious IRQ 7
    assert pic.master.isr == 0
    pic.set_irq(10, True)
    pic.slave.irr = 0  # the request vanished before INTA
    pic.master.irr |= 0x04
    assert pic.acknowledge() == 0x2F  # spurious IRQ 15


def test_poll_mode_and_auto_eoi() -> None:
    pic, bus = make()
    pic.set_irq(6, True)
    bus.write(0x20, 1, 0x0C)  # OCW3 poll
    assert bus.read(0x20, 1) == 0x86
    assert pic.master.isr == 0x40
    bus.write(0x20, 1, 0x20)
    # Re-initialise the master with automatic EOI.
    for port, icw in ((0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x03)):
        bus.write(port, 1, icw)
    pic.set_irq(6, False)
    pic.set_irq(6, True)
    assert pic.acknowledge() == 0x36 and pic.master.isr == 0


def test_rotation() -> None:
    pic, bus = make()
    bus.write(0x20, 1, 0xC4)  # set priority: IRQ 4 lowest -> IRQ 5 highest
    pic.set_irq(0, True)
    pic.set_irq(6, True)
    assert pic.acknowledge() == 0x26


def test_elcr_makes_a_line_level_triggered() -> None:
    """PIIX3 ELCR (0x4d0/0x4d1): a level-triggered line interrupts again after its
    EOI while it is still held, and its request goes when the line drops before
    the acknowledge; IRQ 0, 1, 2, 8 and 13 cannot be made level (the mask)."""
    from kvmcpu.devices.pic import ELCR_PORT, Elcr

    pic, bus = make()
    bus.add(ELCR_PORT, 2, Elcr(pic))
    assert bus.read(ELCR_PORT, 1) == 0 and bus.read(ELCR_PORT + 1, 1) == 0
    bus.write(ELCR_PORT, 1, 0xFF)
    bus.write(ELCR_PORT + 1, 1, 0xFF)
    assert (bus.read(ELCR_PORT, 1), bus.read(ELCR_PORT + 1, 1)) == (0xF8, 0xDE)
    assert bus.read(ELCR_PORT, 2) == 0xDEF8
    # IRQ 5, level: held across the EOI it interrupts again; dropped before the
    # acknowledge, its request goes away. (A slave line would leave the master's
    # edge-triggered cascade input latched: a spurious IRQ 15, as on hardware.)
    pic.set_irq(5, True)
    assert pic.acknowledge() == 0x25
    bus.write(0x20, 1, 0x20)
    assert pic.has_pending() and pic.acknowledge() == 0x25
    bus.write(0x20, 1, 0x20)
    pic.set_irq(5, False)  # the device deasserts: the request goes away
    assert not pic.has_pending()
    # An edge-only line (IRQ 1) keeps edge semantics whatever was written.
    pic.set_irq(1, True)
    assert pic.acknowledge() == 0x21
    bus.write(0x20, 1, 0x20)
    assert not pic.has_pending()


def test_the_pair_starts_and_resets_with_the_firmware_elcr() -> None:
    """SeaBIOS programs the ELCR for the PCI lines (10 and 11) before the kernel
    runs; kvmcpu's pair starts so and comes back so from a platform reset."""
    pic = PicPair(elcr=(1 << 10) | (1 << 11))
    assert (pic.master.elcr, pic.slave.elcr) == (0x00, 0x0C)
    pic.master.elcr = pic.slave.elcr = 0
    pic.reset()
    assert (pic.master.elcr, pic.slave.elcr) == (0x00, 0x0C)
