"""PCI configuration mechanism #1 (ports 0xcf8-0xcff) with an empty bus.

The address register (0xcf8) is written and read back with 32-bit accesses;
every configuration read through the data window (0xcfc-0xcff) returns all
ones, which is what software sees for "no device at this bus/device/function";
configuration writes are dropped. A byte written to 0xcf9 is the PIIX3 reset
control register: RST_CPU (bit 2, e.g. the FADT's reset value 0x06) calls
``on_reset``.
"""

from __future__ import annotations

from typing import Callable

from kvmcpu.devices.base import Device, size_mask

__all__ = ["PCI_CONFIG_ADDRESS", "PCI_CONFIG_DATA", "PciHost"]

#: The CONFIG_ADDRESS register port.
PCI_CONFIG_ADDRESS = 0xCF8
#: The first port of the CONFIG_DATA window.
PCI_CONFIG_DATA = 0xCFC


class PciHost(Device):
    """The host bridge's configuration ports. Map at 0xcf8 with 8 ports."""

    _checkpoint_fields = ("address", "rcr")

    def __init__(self, name: str = "pci", *,
                 on_reset: Callable[[], object] | None = None) -> None:
        super().__init__(name)
        self.on_reset = on_reset
        #: PIIX3's reset control register at 0xcf9 (bit 1 SYS_RST is kept).
        self.rcr = 0
        #: The CONFIG_ADDRESS register.
        self.address = 0
        #: Number of configuration-space reads seen (all answered with ones).
        self.config_reads = 0

    def read(self, offset: int, size: int) -> int:
        if offset == 1 and size == 1:
            return self.rcr
        if offset < 4:
            return (self.address >> (8 * offset)) & size_mask(size)
        self.config_reads += 1
        return size_mask(size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self.address = value & 0x8FFFFFFC  # enable, bus, device, function, dword
        elif offset == 1 and size == 1:
            self._reset_control(value)
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
