"""The firmware tables a kernel finds on a PC: ACPI, the MP table, SMBIOS.

SeaBIOS leaves these in memory before it runs a ``-kernel`` on QEMU's ``pc``
machine; kvmcpu has no BIOS, so :func:`build_tables` generates them from the
machine's configuration (:class:`FirmwareConfig`: the number of CPUs, the RAM
regions, whether there is an HPET) and the System writes them into guest
memory when it loads a kernel. Where they go (in the e820-reserved BIOS area
0xf0000-0xfffff, from :mod:`kvmcpu.devices.pc_layout`):

* ``[ACPI_TABLES_BASE, ACPI_TABLES_END)`` (0xf8000): the FACS first (at
  ``ACPI_FACS_ADDR``, where the S3 resume path reads the waking vector), then
  the DSDT, FADT, MADT, HPET (when there is one), RSDT and XSDT
  (:mod:`kvmcpu.firmware.acpi`, the AML from :mod:`kvmcpu.firmware.aml`);
* ``[BIOS_TABLES_START, BIOS_TABLES_END)`` (0xf0000), 16-byte aligned where the
  specifications' searches look: the RSDP at 0xf0000, the MP floating pointer
  and configuration table (:mod:`kvmcpu.firmware.mptable`), then the SMBIOS
  entry point and structures (:mod:`kvmcpu.firmware.smbios`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Protocol, Tuple

from kvmcpu.devices import pc_layout as pc
from kvmcpu.errors import GuestError
from kvmcpu.firmware import acpi, mptable, smbios

__all__ = ["FORMATS_WITH_TABLES", "FirmwareConfig", "FirmwareTables", "TABLE_AREA",
           "build_tables", "install_tables"]

logger = logging.getLogger("kvmcpu.firmware")

#: The image formats that find the tables, as QEMU's ``-kernel`` boots (after
#: SeaBIOS) have them. A flat image gets none: it starts on the bare machine
#: with no BIOS before it (QEMU's ``-kernel`` has no flat format to compare with),
#: and it may be loaded anywhere, the BIOS area included.
FORMATS_WITH_TABLES = ("multiboot", "elf32", "elf64", "bzimage")

#: The guest-physical range the tables occupy (a loaded image must stay out of it).
TABLE_AREA = (min(pc.ACPI_TABLES_BASE, pc.BIOS_TABLES_START),
              max(pc.ACPI_TABLES_END, pc.BIOS_TABLES_END))


@dataclass(frozen=True)
class FirmwareConfig:
    """What the tables describe.

    Attributes:
        cpus: the number of CPUs (local APIC IDs 0 .. cpus - 1).
        ram: the RAM regions ``((address, size), ...)``.
        hpet: True when the platform has an HPET at ``HPET_BASE``.
    """

    cpus: int
    ram: Tuple[Tuple[int, int], ...]
    hpet: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.cpus, bool) or not isinstance(self.cpus, int):
            raise TypeError(f"cpus must be an int, not {type(self.cpus).__name__}")
        if not 1 <= self.cpus <= 255:
            raise ValueError(f"cpus must be 1-255 (APIC IDs 0-254), not {self.cpus}")
        if not self.ram or any(size <= 0 or addr < 0 for addr, size in self.ram):
            raise ValueError(f"ram must list (address, size) regions, got {self.ram!r}")


@dataclass(frozen=True)
class FirmwareTables:
    """The generated tables: ``blobs`` maps guest-physical addresses to bytes."""

    blobs: Dict[int, bytes]
    rsdp: int
    rsdt: int
    xsdt: int
    mp_floating: int
    smbios_entry: int

    def ranges(self) -> List[Tuple[int, int]]:
        """``[(start, end), ...]`` of every blob."""
        return sorted((a, a + len(b)) for a, b in self.blobs.items())


def build_tables(config: FirmwareConfig) -> FirmwareTables:
    """Every table for ``config``, laid out at the addresses above.

    Raises:
        ValueError: the tables do not fit their areas (too many CPUs).
    """
    blobs, rsdt_addr, xsdt_addr = acpi.build(config.cpus, hpet_present=config.hpet)
    rsdp_addr = pc.BIOS_TABLES_START
    pos = rsdp_addr
    rsdp = acpi.rsdp(rsdt_addr, xsdt_addr)
    blobs[rsdp_addr] = rsdp
    pos = (pos + len(rsdp) + 15) & ~15
    mp_addr = pos
    mp = mptable.build(config.cpus, mp_addr)
    blobs[mp_addr] = mp
    pos = (pos + len(mp) + 15) & ~15
    sm_addr = pos
    sm = smbios.build(config.cpus, config.ram, sm_addr)
    blobs[sm_addr] = sm
    if sm_addr + len(sm) > pc.BIOS_TABLES_END:
        raise ValueError(f"the RSDP, MP and SMBIOS tables need [{rsdp_addr:#x}, "
                         f"{sm_addr + len(sm):#x}), beyond {pc.BIOS_TABLES_END:#x}")
    return FirmwareTables(blobs=blobs, rsdp=rsdp_addr, rsdt=rsdt_addr, xsdt=xsdt_addr,
                          mp_floating=mp_addr, smbios_entry=sm_addr)


class _Memory(Protocol):
    def is_ram(self, gpa: int, size: int = 1) -> bool: ...

    def write(self, gpa: int, data: bytes) -> None: ...


def install_tables(mem: _Memory, config: FirmwareConfig, *, fmt: str,
                   ranges: Iterable[Tuple[int, int]], name: str = "the image"
                   ) -> Optional[FirmwareTables]:
    """Write the tables for ``config`` into ``mem`` for an image of format ``fmt``
    that occupies ``ranges`` (``(start, end)`` pairs). Returns the tables, or None
    when the format gets none (:data:`FORMATS_WITH_TABLES`) or the table area is
    not RAM (less than 1 MiB of it: logged).

    Raises:
        GuestError: the image overlaps the table area.
    """
    if fmt not in FORMATS_WITH_TABLES:
        return None
    lo, hi = TABLE_AREA
    for start, end in ranges:
        if start < hi and lo < end:
            raise GuestError(f"{name}: [{start:#x}, {end:#x}) overlaps the firmware tables "
                             f"(ACPI, MP, SMBIOS) at [{lo:#x}, {hi:#x}), which a "
                             f"{fmt} kernel finds there as on QEMU; load it elsewhere")
    if not mem.is_ram(lo, hi - lo):
        logger.warning("%s: no firmware tables: guest RAM does not cover [%#x, %#x)",
                       name, lo, hi)
        return None
    tables = build_tables(config)
    for addr, blob in sorted(tables.blobs.items()):
        mem.write(addr, blob)
    return tables
