"""The Intel 8259A programmable interrupt controller pair of a PC.

The master sits at ports 0x20/0x21 and the slave at 0xa0/0xa1, cascaded on
the master's IRQ 2. The model follows the datasheet as QEMU's ``i8259`` does:
ICW1-ICW4 initialisation, OCW1 (mask), OCW2 (non-specific / specific EOI,
rotation, set priority), OCW3 (IRR/ISR read select, poll, special mask), edge
triggering, automatic EOI, and spurious IRQ 7 / IRQ 15 when an acknowledge
finds nothing left to deliver. The PIIX3's edge/level control registers (ELCR,
ports 0x4d0/0x4d1, :class:`Elcr`) make a line level-triggered; the pair starts
(and comes back from a reset) with the ELCR the firmware leaves, as SeaBIOS
programs it for the PCI interrupt lines.

Without an in-kernel irqchip the CPU model polls :meth:`PicPair.has_pending`
and, when the guest can take an interrupt, injects :meth:`PicPair.acknowledge`'s
vector; ``on_output`` tells it when the INTR output changes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from kvmcpu.devices.base import Device

if TYPE_CHECKING:
    from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut

__all__ = ["ELCR_MASKS", "ELCR_PORT", "Elcr", "I8259", "PicPair", "MASTER_PORT", "SLAVE_PORT"]

logger = logging.getLogger("kvmcpu.devices.pic")

#: Base port of the master 8259A.
MASTER_PORT = 0x20
#: Base port of the slave 8259A.
SLAVE_PORT = 0xA0
#: The PIIX3 ELCR1 (master) and ELCR2 (slave) ports.
ELCR_PORT = 0x4D0
#: The ELCR bits that can be set, master and slave: IRQ 0, 1, 2, 8 and 13 are
#: always edge-triggered (PIIX3 datasheet; QEMU's elcr_mask 0xf8 / 0xde).
ELCR_MASKS = (0xF8, 0xDE)


class I8259(Device):
    """One 8259A chip (two ports: command at offset 0, data at offset 1).

    Args:
        name: device name.
        is_master: the master chip (special fully nested mode masks IRQ 2 there).
        update: called whenever the chip's interrupt output may have changed.
    """

    _checkpoint_fields = (
        "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select",
        "poll", "special_mask", "init_state", "auto_eoi", "rotate_on_auto_eoi",
        "special_fully_nested_mode", "init4", "single_mode", "elcr",
    )

    def __init__(self, name: str, *, is_master: bool, update: Callable[[], None]) -> None:
        super().__init__(name)
        self.is_master = is_master
        self._update = update
        self.elcr = 0
        self.irr = 0
        self.reset()

    def reset(self) -> None:
        """The ICW1 reset (interrupt requests of level-triggered lines survive)."""
        self.last_irr = 0
        self.irr &= self.elcr
        self.imr = 0
        self.isr = 0
        self.priority_add = 0
        self.irq_base = 0
        self.read_reg_select = 0
        self.poll = 0
        self.special_mask = 0
        self.init_state = 0
        self.auto_eoi = 0
        self.rotate_on_auto_eoi = 0
        self.special_fully_nested_mode = 0
        self.init4 = 0
        self.single_mode = 0

    # -- priority logic -------------------------------------------------------------
    def _priority(self, mask: int) -> int:
        # The priority (0 = highest) of the best request in ``mask``; 8 for none.
        if mask == 0:
            return 8
        priority = 0
        while not mask & (1 << ((priority + self.priority_add) & 7)):
            priority += 1
        return priority

    def pending_irq(self) -> int:
        """The IRQ (0-7) this chip would deliver now, or -1."""
        priority = self._priority(self.irr & ~self.imr)
        if priority == 8:
            return -1
        mask = self.isr
        if self.special_mask:
            mask &= ~self.imr
        if self.special_fully_nested_mode and self.is_master:
            mask &= ~(1 << 2)
        if priority < self._priority(mask):
            return (priority + self.priority_add) & 7
        return -1

    def set_irq(self, irq: int, level: bool) -> None:
        """Drive input ``irq`` (0-7); edge-triggered unless its ELCR bit is set."""
        mask = 1 << irq
        if self.elcr & mask:
            if level:
                self.irr |= mask
                self.last_irr |= mask
            else:
                self.irr &= ~mask
                self.last_irr &= ~mask
        elif level:
            if not self.last_irr & mask:
                self.irr |= mask
            self.last_irr |= mask
        else:
            self.last_irr &= ~mask
        self._update()

    def intack(self, irq: int) -> None:
        """Acknowledge ``irq``: IRR -> ISR (or rotate under automatic EOI)."""
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.priority_add = (irq + 1) & 7
        else:
            self.isr |= 1 << irq
        if not self.elcr & (1 << irq):
            self.irr &= ~(1 << irq)

    # -- ports ----------------------------------------------------------------------
    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset & 1 == 0:
            self._write_command(value)
        else:
            self._write_data(value)

    def _write_command(self, value: int) -> None:
        if value & 0x10:  # ICW1
            self.reset()
            self.init_state = 1
            self.init4 = value & 1
            self.single_mode = (value >> 1) & 1
            if value & 0x08:
                logger.warning("%s: level-triggered mode (ICW1 LTIM) is not supported", self.name)
            self._update()
        elif value & 0x08:  # OCW3
            if value & 0x04:
                self.poll = 1
            if value & 0x02:
                self.read_reg_select = value & 1
            if value & 0x40:
                self.special_mask = (value >> 5) & 1
        else:  # OCW2
            cmd = value >> 5
            if cmd in (0, 4):  # clear / set rotate in automatic EOI mode
                self.rotate_on_auto_eoi = cmd >> 2
            elif cmd in (1, 5):  # non-specific EOI (5: and rotate)
                priority = self._priority(self.isr)
                if priority != 8:
                    irq = (priority + self.priority_add) & 7
                    self.isr &= ~(1 << irq)
                    if cmd == 5:
                        self.priority_add = (irq + 1) & 7
                    self._update()
            elif cmd == 3:  # specific EOI
                self.isr &= ~(1 << (value & 7))
                self._update()
            elif cmd == 6:  # set priority
                self.priority_add = (value + 1) & 7
                self._update()
            elif cmd == 7:  # rotate on specific EOI
                irq = value & 7
                self.isr &= ~(1 << irq)
                self.priority_add = (irq + 1) & 7
                self._update()
            # cmd 2: no operation

    def _write_data(self, value: int) -> None:
        state = self.init_state
        if state == 0:  # OCW1
            self.imr = value
            self._update()
        elif state == 1:  # ICW2
            self.irq_base = value & 0xF8
            self.init_state = 2 if not self.single_mode else (3 if self.init4 else 0)
        elif state == 2:  # ICW3 (cascade wiring: fixed on a PC)
            self.init_state = 3 if self.init4 else 0
        else:  # ICW4
            self.special_fully_nested_mode = (value >> 4) & 1
            self.auto_eoi = (value >> 1) & 1
            self.init_state = 0

    def read(self, offset: int, size: int) -> int:
        if self.poll:
            self.poll = 0
            irq = self.pending_irq()
            if irq >= 0:
                self.intack(irq)
                self._update()
                return irq | 0x80
            return 0
        if offset & 1 == 0:
            return self.isr if self.read_reg_select else self.irr
        return self.imr

    def __repr__(self) -> str:
        return (f"<I8259 {self.name!r} base={self.irq_base:#x} irr={self.irr:#04x} "
                f"isr={self.isr:#04x} imr={self.imr:#04x}>")


class PicPair:
    """The cascaded master/slave 8259A pair: an :class:`InterruptController` for IRQ 0-15.

    Map :attr:`master` at 0x20 (2 ports) and :attr:`slave` at 0xa0 (2 ports).

    Args:
        name: prefix of the chips' names.
        on_output: called with the new level whenever the INTR output (an
            interrupt is pending for the CPU) changes.
    """

    def __init__(self, name: str = "pic", *, on_output: Callable[[bool], None] | None = None,
                 elcr: int = 0) -> None:
        self.name = name
        #: The ELCR at power-on and after a reset (bit n: ISA IRQ n level-triggered).
        self.firmware_elcr = elcr
        self.on_output = on_output
        self.output = False
        self._updating = False
        self.master = I8259(f"{name}.master", is_master=True, update=self._update)
        self.slave = I8259(f"{name}.slave", is_master=False, update=self._update)
        self._set_elcr(elcr)
        self._update()

    def _set_elcr(self, elcr: int) -> None:
        self.master.elcr = elcr & ELCR_MASKS[0]
        self.slave.elcr = (elcr >> 8) & ELCR_MASKS[1]

    def _update(self) -> None:
        # The slave's INT output drives the master's IRQ 2; the master's is INTR.
        if self._updating:
            return
        self._updating = True
        try:
            slave_irq = self.slave.pending_irq()
            self.master.set_irq(2, slave_irq >= 0)
            level = self.master.pending_irq() >= 0
        finally:
            self._updating = False
        if level != self.output:
            self.output = level
            if self.on_output is not None:
                self.on_output(level)

    # -- InterruptController --------------------------------------------------------
    def set_irq(self, line: int, level: bool) -> None:
        """Drive ISA IRQ ``line`` (0-15); 8-15 go to the slave."""
        if not 0 <= line < 16:
            raise ValueError(f"8259 pair has IRQ lines 0-15, got {line}")
        if line < 8:
            self.master.set_irq(line, level)
        else:
            self.slave.set_irq(line - 8, level)

    # -- the CPU side ---------------------------------------------------------------
    def has_pending(self) -> bool:
        """True when an unmasked interrupt waits for the CPU (the INTR line)."""
        return self.master.pending_irq() >= 0

    def acknowledge(self) -> int:
        """The INTA cycle: the vector to deliver; moves the request from IRR to ISR.

        With nothing pending the result is the spurious vector (IRQ 7 of the
        master, or IRQ 15 when the slave's request went away), as on hardware.
        """
        master, slave = self.master, self.slave
        irq = master.pending_irq()
        if irq >= 0:
            master.intack(irq)
            if irq == 2:
                irq2 = slave.pending_irq()
                if irq2 >= 0:
                    slave.intack(irq2)
                else:
                    irq2 = 7  # spurious IRQ 15
                vector = slave.irq_base + irq2
            else:
                vector = master.irq_base + irq
        else:
            vector = master.irq_base + 7  # spurious IRQ 7
        self._update()
        return vector

    def reset(self) -> None:
        self._set_elcr(self.firmware_elcr)
        self.master.irr = self.slave.irr = 0
        self.master.reset()
        self.slave.reset()
        self._update()

    # -- checkpoints ----------------------------------------------------------------
    def serialize(self, cp: CheckpointOut) -> None:
        """Both chips, as ``master.*`` and ``slave.*`` keys of the current section."""
        for chip, prefix in ((self.master, "master"), (self.slave, "slave")):
            for field in chip._checkpoint_fields:
                cp.param_out(f"{prefix}.{field}", int(getattr(chip, field)))

    def unserialize(self, cp: CheckpointIn) -> None:
        section = cp.current
        for chip, prefix in ((self.master, "master"), (self.slave, "slave")):
            for field in chip._checkpoint_fields:
                setattr(chip, field, section.get_int(f"{prefix}.{field}"))
        self.output = self.master.pending_irq() >= 0

    def __repr__(self) -> str:
        return f"<PicPair {self.master!r} {self.slave!r}>"


class Elcr(Device):
    """The PIIX3's edge/level control registers for a :class:`PicPair`: map at
    ELCR_PORT with 2 ports (offset 0: the master's IRQ 0-7, offset 1: the slave's
    IRQ 8-15; a set bit makes the line level-triggered; bits in ELCR_MASKS only).
    The state lives in the chips (checkpointed with the pair)."""

    def __init__(self, pic: PicPair, name: str = "elcr") -> None:
        super().__init__(name)
        self.pic = pic

    def read(self, offset: int, size: int) -> int:
        chips = (self.pic.master, self.pic.slave)
        value = 0
        for i in range(size):
            if offset + i < 2:
                value |= chips[offset + i].elcr << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        chips = (self.pic.master, self.pic.slave)
        for i in range(size):
            if offset + i < 2:
                chips[offset + i].elcr = (value >> (8 * i)) & ELCR_MASKS[offset + i]
        self.pic._update()

