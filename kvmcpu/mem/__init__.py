"""Guest memory and address spaces: address ranges, the IO-port and MMIO buses,
and guest-physical RAM laid out like a PC (see docs/architecture.md, "The platform")."""

from __future__ import annotations

from kvmcpu.mem.bus import (
    UNCLAIMED_POLICIES,
    Bus,
    BusMapping,
    IoBus,
    MmioBus,
    UnclaimedAccessError,
)
from kvmcpu.mem.physmem import (
    E820_RAM,
    E820_RESERVED,
    E820Entry,
    PhysicalMemory,
    RamRegion,
    parse_size,
)
from kvmcpu.mem.range import AddrRange

__all__ = [
    "E820_RAM",
    "E820_RESERVED",
    "UNCLAIMED_POLICIES",
    "AddrRange",
    "Bus",
    "BusMapping",
    "E820Entry",
    "IoBus",
    "MmioBus",
    "PhysicalMemory",
    "RamRegion",
    "UnclaimedAccessError",
    "parse_size",
]
