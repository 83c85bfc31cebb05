"""PCI configuration mechanism #1 (ports 0xcf8-0xcff) with an empty bus.

The address register (0xcf8) is written and read back with 32-bit accesses;
every configuration read through the data window (0xcfc-0xcff) returns all
ones, which is what software sees for "no device at this bus/device/function";
configuration writes are dropped.
"""

from __future__ import annotations

from kvmcpu.devices.base import Device, size_mask

__all__ = ["PCI_CONFIG_ADDRESS", "PCI_CONFIG_DATA", "PciHost"]

#: The CONFIG_ADDRESS register port.
PCI_CONFIG_ADDRESS = 0xCF8
#: The first port of the CONFIG_DATA window.
PCI_CONFIG_DATA = 0xCFC


class PciHost(Device):
    """The host bridge's configuration ports. Map at 0xcf8 with 8 ports."""

    _checkpoint_fields = ("address",)

    def __init__(self, name: str = "pci") -> None:
        super().__init__(name)
        #: The CONFIG_ADDRESS register.
        self.address = 0
        #: Number of configuration-space reads seen (all answered with ones).
        self.config_reads = 0

    def read(self, offset: int, size: int) -> int:
        if offset < 4:
            return (self.address >> (8 * offset)) & size_mask(size)
        self.config_reads += 1
        return size_mask(size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self.address = value & 0x8FFFFFFC  # enable, bus, device, function, dword
        # Narrower writes to 0xcf8-0xcfb (0xcf9 is the PIIX reset register) and
        # writes to the data window have nothing to act on.

    def selected(self) -> tuple[int, int, int, int] | None:
        """(bus, device, function, register) the address register selects, or None."""
        if not self.address & 0x80000000:
            return None
        a = self.address
        return (a >> 16) & 0xFF, (a >> 11) & 0x1F, (a >> 8) & 0x7, a & 0xFC
