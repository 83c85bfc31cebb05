"""PCI: configuration mechanism #1 (ports 0xcf8-0xcff) and bus 0 of QEMU's ``pc``.

:class:`PciHost` is the host bridge's CONFIG_ADDRESS (0xcf8, 32-bit accesses)
and CONFIG_DATA window (0xcfc-0xcff, any width at any byte of the dword); a
byte at 0xcf9 is PIIX3's reset control register (RST_CPU, bit 2, calls
``on_reset``; e.g. the FADT's reset value 0x06). Configuration cycles go to
:class:`PciBus` (bus 0; an absent function reads all ones), whose functions
are :class:`PciFunction` objects at QEMU's device numbers
(:mod:`~kvmcpu.devices.pc_layout`):

=======  ===========  =====================================================
00.0     8086:1237    i440FX host bridge (class 0x060000)
01.0     8086:7000    PIIX3 ISA bridge (class 0x060100, multi-function);
                      PIRQ[A-D] route registers at 0x60-0x63
01.3     8086:7113    PIIX4 PM (class 0x068000); PMBA at 0x40 (the PM IO
                      block's base, bit 0 set), PMREGMISC 0x80 bit 0 (its
                      IO decode): moving it moves the PM block on the IO bus
=======  ===========  =====================================================

A function's configuration space is 256 bytes with a mask of writable bits
(PCI Local Bus Specification 3.0, 6.1 and 6.2). Its BARs (6.2.5) are
registered with a size: writing all ones and reading back gives the size's
mask with the type bits (memory: bit 0 clear; IO: bit 0 set), as firmware
sizes them. The command register's IO (bit 0) and memory (bit 1) space bits
decide whether the BARs decode: a BAR's range is on the IO or MMIO bus only
while its space is enabled and its address is non-zero, fits (below 64 KiB or
4 GiB) and overlaps no other device; it moves when the BAR is written.

At start the BARs are assigned as SeaBIOS would (:meth:`PciBus.assign_bars`):
IO BARs from :data:`~kvmcpu.devices.pc_layout.PCI_IO_BAR_BASE` up, memory BARs
in :data:`~kvmcpu.devices.pc_layout.PCI_MEM_WINDOW` from its start, largest
first, each aligned to its size; IO and memory decoding enabled; the PIRQ
registers set to :data:`~kvmcpu.devices.pc_layout.PCI_PIRQ_IRQS` and each
function's interrupt line register to the ISA IRQ its pin routes to.

INTx: pin p (1-4, INTA-INTD) of device d drives PIRQ ``(p - 1 + d - 1) & 3``
(the swizzle of QEMU's PIIX3 for bus 0); a PIRQ whose route register has bit
7 clear drives the ISA IRQ of its low 4 bits (level, the OR of every function
on it), which reaches the 8259 pair and the IOAPIC pin of that number.
Configuration spaces are checkpointed (``[system.pci]``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from kvmcpu.devices import pc_layout
from kvmcpu.devices.base import Device, size_mask
from kvmcpu.errors import ConfigError

if TYPE_CHECKING:
    from kvmcpu.devices.irq import InterruptController
    from kvmcpu.mem.bus import Bus
    from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut

log = logging.getLogger("kvmcpu.devices.pci")

__all__ = ["Bar", "PCI_CONFIG_ADDRESS", "PCI_CONFIG_DATA", "PciBus", "PciFunction", "PciHost",
           "i440fx", "piix3", "piix4_pm"]

#: The CONFIG_ADDRESS register port.
PCI_CONFIG_ADDRESS = 0xCF8
#: The first port of the CONFIG_DATA window.
PCI_CONFIG_DATA = 0xCFC

CMD_IO = 1 << 0
CMD_MEMORY = 1 << 1
CMD_MASTER = 1 << 2
CMD_SERR = 1 << 8
CMD_INTX_DISABLE = 1 << 10
_CMD_WRITABLE = CMD_IO | CMD_MEMORY | CMD_MASTER | (1 << 6) | CMD_SERR | CMD_INTX_DISABLE
#: Subsystem IDs QEMU gives every PCI function (Red Hat / QEMU).
SUBSYSTEM_VENDOR = 0x1AF4
SUBSYSTEM_ID = 0x1100


class Bar:
    """One base address register: index, size (a power of two), IO or memory,
    and the device its range dispatches to (offsets from the BAR's base)."""

    __slots__ = ("index", "size", "io", "device", "mapped_at")

    def __init__(self, index: int, size: int, io: bool, device: Any) -> None:
        if size & (size - 1) or size < (4 if io else 16):
            raise ValueError(f"BAR{index}: size {size} is not a power of two of at least "
                             f"{4 if io else 16}")
        self.index = index
        self.size = size
        self.io = io
        self.device = device
        self.mapped_at: Optional[int] = None


class PciFunction(Device):
    """A PCI function: a type 0 configuration space, BARs, an interrupt pin.

    Args:
        name: device name.
        vendor, device: the IDs.
        class_code: the 24-bit class code (base, sub-class, programming interface).
        revision: the revision ID.
        header_type: 0x00, or 0x80 for a multi-function device's function 0.
        pin: the interrupt pin (0 none, 1-4 INTA-INTD).
    """

    def __init__(self, name: str, vendor: int, device: int, class_code: int, *,
                 revision: int = 0, header_type: int = 0, pin: int = 0) -> None:
        super().__init__(name)
        self.config = bytearray(256)
        self.wmask = bytearray(256)
        self.bars: Dict[int, Bar] = {}
        self.bus: Optional[PciBus] = None
        self.devfn = (0, 0)
        self.irq_level = False
        c = self.config
        c[0:4] = (vendor | (device << 16)).to_bytes(4, "little")
        c[8] = revision
        c[9:12] = class_code.to_bytes(3, "little")
        c[0x0E] = header_type
        c[0x2C:0x30] = (SUBSYSTEM_VENDOR | (SUBSYSTEM_ID << 16)).to_bytes(4, "little")
        c[0x3D] = pin
        self.wmask[4:6] = _CMD_WRITABLE.to_bytes(2, "little")
        self.wmask[0x0C] = 0xFF  # cache line size
        self.wmask[0x0D] = 0xFF  # latency timer
        self.wmask[0x3C] = 0xFF  # interrupt line

    def add_bar(self, index: int, size: int, *, io: bool, device: Any) -> Bar:
        """Register BAR ``index`` (0-5) of ``size`` bytes dispatching to ``device``."""
        bar = Bar(index, size, io, device)
        self.bars[index] = bar
        off = 0x10 + 4 * index
        self.config[off:off + 4] = (1 if io else 0).to_bytes(4, "little")
        self.wmask[off:off + 4] = (~(size - 1) & 0xFFFFFFFF).to_bytes(4, "little")
        return bar

    # -- configuration space ------------------------------------------------------
    def dword(self, reg: int) -> int:
        return int.from_bytes(self.config[reg:reg + 4], "little")

    def config_read(self, reg: int, size: int) -> int:
        return int.from_bytes(self.config[reg:reg + size], "little")

    def config_write(self, reg: int, size: int, value: int) -> None:
        for i in range(size):
            at = reg + i
            byte = (value >> (8 * i)) & 0xFF
            wm = self.wmask[at]
            self.config[at] = (self.config[at] & ~wm) | (byte & wm)
            if at == 7:  # status bits 11-15: write 1 to clear
                self.config[7] &= ~(byte & 0xF8) & 0xFF
        if reg < 0x28 and reg + size > 4:  # the command register or a BAR
            self.update_mappings()
            if self.bus is not None:
                self.bus.update_irq(self)
        self.config_written(reg, size)

    def config_written(self, reg: int, size: int) -> None:
        """Hook for function-specific registers (override)."""

    # -- BARs -----------------------------------------------------------------------
    def bar_address(self, bar: Bar) -> Optional[int]:
        """Where ``bar`` decodes now, or None (disabled, zero, too high)."""
        value = self.dword(0x10 + 4 * bar.index)
        cmd = self.config[4]
        if bar.io:
            addr, enabled, limit = value & 0xFFFFFFFC, cmd & CMD_IO, 0x10000
        else:
            addr, enabled, limit = value & 0xFFFFFFF0, cmd & CMD_MEMORY, 1 << 32
        if not enabled or addr == 0 or addr + bar.size > limit:
            return None
        return addr

    def update_mappings(self) -> None:
        if self.bus is not None:
            for bar in self.bars.values():
                self.bus.map_bar(self, bar, self.bar_address(bar))

    # -- interrupts ---------------------------------------------------------------------
    def set_irq(self, level: bool) -> None:
        """Drive the function's INTx pin (ignored without a pin)."""
        self.irq_level = bool(level)
        if self.bus is not None:
            self.bus.update_irq(self)

    def reset(self) -> None:
        self.config[4:8] = bytes(4)
        for bar in self.bars.values():
            off = 0x10 + 4 * bar.index
            self.config[off:off + 4] = (1 if bar.io else 0).to_bytes(4, "little")
        self.update_mappings()

    def serialize(self, cp: CheckpointOut) -> None:
        cp.param_out("config", bytes(self.config))

    def unserialize(self, cp: CheckpointIn) -> None:
        self.config[:] = cp.current.get_bytes("config", 256)
        self.update_mappings()


class _Piix3(PciFunction):
    def __init__(self) -> None:
        super().__init__("piix3", 0x8086, 0x7000, 0x060100, header_type=0x80)
        self.config[0x60:0x64] = b"\x80\x80\x80\x80"  # PIRQ routing disabled
        self.wmask[0x60:0x64] = b"\x8f\x8f\x8f\x8f"

    def config_written(self, reg: int, size: int) -> None:
        if reg < 0x64 and reg + size > 0x60 and self.bus is not None:
            self.bus.update_pirqs()

    def reset(self) -> None:
        super().reset()
        self.config[0x60:0x64] = b"\x80\x80\x80\x80"
        if self.bus is not None:
            self.bus.update_pirqs()


class _Piix4Pm(PciFunction):
    def __init__(self, pm_device: Any = None, io: Optional[Bus] = None) -> None:
        super().__init__("piix4_pm", 0x8086, 0x7113, 0x068000, revision=0x03, pin=1)
        self.pm_device = pm_device
        self.io = io
        self.wmask[0x40:0x44] = (0xFFC0).to_bytes(4, "little")  # PMBA bits 15:6
        self.wmask[0x80] = 0x01  # PMREGMISC: PMIOSE
        self.config[0x40] = 0x01  # the IO space indicator
        self.pm_base: Optional[int] = None

    def config_written(self, reg: int, size: int) -> None:
        if reg < 0x44 and reg + size > 0x40 or reg <= 0x80 < reg + size:
            self.remap_pm()

    def remap_pm(self) -> None:
        base = self.dword(0x40) & 0xFFC0 if self.config[0x80] & 1 else None
        if base == self.pm_base or self.pm_device is None or self.io is None:
            self.pm_base = base
            return
        if self.pm_base is not None:
            self.io.remove(self.pm_device)
        self.pm_base = base
        if base is not None:
            self.io.add(base, 0x40, self.pm_device)

    def reset(self) -> None:
        super().reset()
        self.config[0x40:0x44] = b"\x01\x00\x00\x00"
        self.config[0x80] = 0
        self.remap_pm()

    def unserialize(self, cp: CheckpointIn) -> None:
        super().unserialize(cp)
        self.remap_pm()


def i440fx() -> PciFunction:
    """The i440FX host bridge (00.0)."""
    return PciFunction("i440fx", 0x8086, 0x1237, 0x060000, revision=0x02)


def piix3() -> PciFunction:
    """The PIIX3 ISA bridge (01.0), with its PIRQ route registers."""
    return _Piix3()


def piix4_pm(pm_device: Any = None, io: Optional[Bus] = None) -> PciFunction:
    """The PIIX4 PM function (01.3); its PMBA moves ``pm_device`` on ``io``."""
    return _Piix4Pm(pm_device, io)


class PciBus:
    """Bus 0: functions by (device, function), BAR mappings, INTx routing.

    Args:
        io, mmio: where BARs are mapped (None: BARs never decode).
        irqchip: where PIRQ levels go (ISA IRQ numbers).
    """

    def __init__(self, io: Optional[Bus] = None, mmio: Optional[Bus] = None,
                 irqchip: Optional[InterruptController] = None) -> None:
        self.io = io
        self.mmio = mmio
        self.irqchip = irqchip
        self.functions: Dict[Tuple[int, int], PciFunction] = {}
        self._pirq_irq: List[Optional[int]] = [None] * 4
        self._irq_levels: Dict[int, bool] = {}

    def add(self, fn: PciFunction, devfn: Tuple[int, int]) -> PciFunction:
        """Put ``fn`` at (device, function); ConfigError if taken or out of range."""
        dev, func = devfn
        if not (0 <= dev < 32 and 0 <= func < 8):
            raise ConfigError(f"PCI address {dev:02x}.{func} is out of range (00-1f.0-7)")
        if devfn in self.functions:
            raise ConfigError(f"PCI address {dev:02x}.{func} is taken by "
                              f"{self.functions[devfn].name}")
        fn.bus = self
        fn.devfn = devfn
        self.functions[devfn] = fn
        return fn

    def free_slot(self, start: int = 0) -> int:
        """The first device number from ``start`` with no function."""
        used = {dev for dev, _ in self.functions}
        for dev in range(start, 32):
            if dev not in used:
                return dev
        raise ConfigError("the PCI bus is full (32 devices)")

    def config_read(self, dev: int, func: int, reg: int, size: int) -> int:
        fn = self.functions.get((dev, func))
        if fn is None:
            return size_mask(size)
        return fn.config_read(reg, size)

    def config_write(self, dev: int, func: int, reg: int, size: int, value: int) -> None:
        fn = self.functions.get((dev, func))
        if fn is not None:
            fn.config_write(reg, size, value)

    # -- BARs ---------------------------------------------------------------------------
    def map_bar(self, fn: PciFunction, bar: Bar, addr: Optional[int]) -> None:
        if addr == bar.mapped_at:
            return
        bus = self.io if bar.io else self.mmio
        if bus is None:
            return
        if bar.mapped_at is not None:
            bus.remove(bar.device)
            bar.mapped_at = None
        if addr is None:
            return
        try:
            bus.add(addr, bar.size, bar.device, name=f"{fn.name}.bar{bar.index}")
        except ConfigError as err:  # overlapping another device: not decoded
            log.debug("%s BAR%d at %#x not mapped: %s", fn.name, bar.index, addr, err)
            return
        bar.mapped_at = addr

    def assign_bars(self) -> None:
        """Assign every BAR and enable decoding, as SeaBIOS does at start."""
        io_next, (mem_next, mem_end) = pc_layout.PCI_IO_BAR_BASE, pc_layout.PCI_MEM_WINDOW
        bars = [(fn, bar) for _, fn in sorted(self.functions.items()) for bar in fn.bars.values()]
        for fn, bar in sorted(bars, key=lambda fb: -fb[1].size):
            if bar.io:
                addr = -(-io_next // bar.size) * bar.size
                io_next = addr + bar.size
                fn.config[0x10 + 4 * bar.index:0x14 + 4 * bar.index] = (
                    addr | 1).to_bytes(4, "little")
            else:
                addr = -(-mem_next // bar.size) * bar.size
                if addr + bar.size - 1 > mem_end:
                    raise ConfigError(f"{fn.name}: BAR{bar.index} does not fit in the PCI "
                                      "memory window")
                mem_next = addr + bar.size
                fn.config[0x10 + 4 * bar.index:0x14 + 4 * bar.index] = addr.to_bytes(
                    4, "little")
        for fn in self.functions.values():
            fn.config[4] |= CMD_IO | CMD_MEMORY
            fn.config[5] |= CMD_SERR >> 8
            fn.update_mappings()

    def assign_irqs(self, isa_bridge: PciFunction) -> None:
        """Program the PIRQ routes and each function's interrupt line, as SeaBIOS."""
        isa_bridge.config[0x60:0x64] = bytes(pc_layout.PCI_PIRQ_IRQS)
        self.update_pirqs()
        for (dev, _), fn in self.functions.items():
            pin = fn.config[0x3D]
            if pin:
                fn.config[0x3C] = pc_layout.PCI_PIRQ_IRQS[self.pirq_of(dev, pin)]

    # -- INTx -----------------------------------------------------------------------------
    @staticmethod
    def pirq_of(dev: int, pin: int) -> int:
        """The PIRQ (0-3 for A-D) pin ``pin`` (1-4) of device ``dev`` drives."""
        return (pin - 1 + dev - 1) & 3

    def update_pirqs(self) -> None:
        bridge = self.functions.get(pc_layout.ISA_BRIDGE_DEVFN)
        if bridge is None:
            return
        for n in range(4):
            route = bridge.config[0x60 + n]
            self._pirq_irq[n] = None if route & 0x80 else route & 0x0F
        self._drive()

    def update_irq(self, fn: PciFunction) -> None:
        self._drive()

    def _drive(self) -> None:
        levels: Dict[int, bool] = {}
        for (dev, _), fn in self.functions.items():
            pin = fn.config[0x3D]
            if not pin:
                continue
            irq = self._pirq_irq[self.pirq_of(dev, pin)]
            if irq is None:
                continue
            asserted = fn.irq_level and not fn.config[5] & (CMD_INTX_DISABLE >> 8)
            levels[irq] = levels.get(irq, False) or asserted
        for irq in set(levels) | set(self._irq_levels):
            level = levels.get(irq, False)
            if self._irq_levels.get(irq, False) != level and self.irqchip is not None:
                self.irqchip.set_irq(irq, level)
        self._irq_levels = levels

    def firmware_setup(self) -> None:
        """What SeaBIOS leaves behind: BARs assigned and decoding, the PIRQ routes
        and interrupt lines, and the PIIX4 PM block at PM_IO_BASE (PMBA, PMIOSE)."""
        self.assign_bars()
        bridge = self.functions.get(pc_layout.ISA_BRIDGE_DEVFN)
        if bridge is not None:
            self.assign_irqs(bridge)
        pm = self.functions.get(pc_layout.PIIX4_PM_DEVFN)
        if isinstance(pm, _Piix4Pm):
            pm.config[0x40:0x44] = (pc_layout.PM_IO_BASE | 1).to_bytes(4, "little")
            pm.config[0x80] |= 1
            pm.remap_pm()

    def reset(self) -> None:
        """A platform reset: every function to its reset state, then the firmware's set-up."""
        for fn in self.functions.values():
            fn.reset()
        self.firmware_setup()


class PciHost(Device):
    """The host bridge's configuration ports. Map at 0xcf8 with 8 ports.

    Args:
        name: device name.
        bus: bus 0 (None: an empty bus, every configuration read all ones).
        on_reset: called when the guest sets RST_CPU in the reset control register.
    """

    _checkpoint_fields = ("address", "rcr")

    def __init__(self, name: str = "pci", *, bus: Optional[PciBus] = None,
                 on_reset: Callable[[], object] | None = None) -> None:
        super().__init__(name)
        self.bus = bus
        self.on_reset = on_reset
        #: The CONFIG_ADDRESS register.
        self.address = 0
        #: PIIX3's reset control register at 0xcf9 (bit 1 SYS_RST is kept).
        self.rcr = 0
        #: Number of configuration-space reads seen.
        self.config_reads = 0

    def read(self, offset: int, size: int) -> int:
        if offset == 1 and size == 1:
            return self.rcr
        if offset < 4:
            return (self.address >> (8 * offset)) & size_mask(size)
        self.config_reads += 1
        where = self.selected()
        if where is None or where[0] != 0 or self.bus is None:
            return size_mask(size)
        _, dev, func, reg = where
        return self.bus.config_read(dev, func, reg + offset - 4, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self.address = value & 0x8FFFFFFC  # enable, bus, device, function, dword
        elif offset == 1 and size == 1:
            self._reset_control(value)
        elif offset >= 4:
            where = self.selected()
            if where is not None and where[0] == 0 and self.bus is not None:
                _, dev, func, reg = where
                self.bus.config_write(dev, func, reg + offset - 4, size, value)
        # Other narrow writes to 0xcf8-0xcfb have nothing to act on.

    def _reset_control(self, value: int) -> None:
        """PIIX3 RCR (0xcf9): RST_CPU (bit 2) resets the platform, as QEMU's
        ``rcr_write`` (whatever SYS_RST, bit 1, says: QEMU has no soft reset)."""
        if value & 4:
            if self.on_reset is not None:
                self.on_reset()
            return
        self.rcr = value & 2

    def selected(self) -> tuple[int, int, int, int] | None:
        """(bus, device, function, register) the address register selects, or None."""
        if not self.address & 0x80000000:
            return None
        a = self.address
        return (a >> 16) & 0xFF, (a >> 11) & 0x1F, (a >> 8) & 0x7, a & 0xFC

    def reset(self) -> None:
        self.address = self.rcr = 0
        if self.bus is not None:
            self.bus.reset()

    def serialize(self, cp: CheckpointOut) -> None:
        """The address registers, then each function's configuration space (and
        device state) in a subsection named after it."""
        super().serialize(cp)
        if self.bus is not None:
            for fn in self.bus.functions.values():
                with cp.subsection(fn.name):
                    fn.serialize(cp)

    def unserialize(self, cp: CheckpointIn) -> None:
        super().unserialize(cp)
        if self.bus is None:
            return
        for fn in self.bus.functions.values():
            if cp.has_section(f"{cp.current_path}.{fn.name}"):
                with cp.subsection(fn.name):
                    fn.unserialize(cp)
        self.bus.update_pirqs()
