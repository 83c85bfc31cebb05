"""The Intel MultiProcessor Specification 1.4 tables: floating pointer and config table.

The floating pointer ("_MP_", 16 bytes, 16-byte aligned in the BIOS area)
points at the configuration table ("PCMP", spec revision 4), whose base
entries are, in the order the specification asks for (by type):

* a processor entry (type 0, 20 bytes) per CPU: local APIC ID = CPU index,
  version 0x14, enabled, CPU 0 the bootstrap processor;
* one bus (type 1): bus 0, "ISA   " (PCI interrupts are in the ACPI ``_PRT``;
  SeaBIOS lists a PCI bus and its devices' lines too);
* the IOAPIC (type 2): ``IOAPIC_ID``, version 0x11, at 0xfec00000;
* IO interrupt assignments (type 3), as SeaBIOS writes them: ExtINT from ISA
  IRQ 0 to IOAPIC pin 0, then every ISA IRQ but 2 to its pin (IRQ 0 to pin 2),
  the SCI and PCI PIRQ lines level-triggered active high, the others the bus
  default;
* local interrupt assignments (type 4): ExtINT on LINT0 and NMI on LINT1 of
  every local APIC (destination 0xff).
"""

from __future__ import annotations

import struct
from typing import Tuple

from kvmcpu.devices import pc_layout as pc
from kvmcpu.devices.ioapic import IOAPIC_BASE
from kvmcpu.devices.lapic import DEFAULT_APIC_BASE
from kvmcpu.firmware.acpi import INTI_LEVEL_HIGH, checksum

__all__ = ["CPU_SIGNATURE", "CPU_FEATURES", "build", "floating_pointer", "config_table"]

#: The processor entries' CPU signature (family 6) and feature flags (FPU, APIC):
#: the tables are built before any vCPU exists; a kernel reads CPUID itself.
CPU_SIGNATURE = 0x600
CPU_FEATURES = (1 << 0) | (1 << 9)

ENTRY_PROCESSOR, ENTRY_BUS, ENTRY_IOAPIC, ENTRY_IO_INT, ENTRY_LOCAL_INT = 0, 1, 2, 3, 4
INT_TYPE_INT, INT_TYPE_NMI, INT_TYPE_EXTINT = 0, 1, 3
ISA_BUS_ID = 0


def config_table(cpus: int) -> Tuple[bytes, int]:
    """The configuration table and its number of entries."""
    entries = []
    for i in range(cpus):
        flags = 0x01 | (0x02 if i == 0 else 0)
        entries.append(struct.pack("<BBBBII8s", ENTRY_PROCESSOR, i, 0x14, flags,
                                   CPU_SIGNATURE, CPU_FEATURES, bytes(8)))
    entries.append(struct.pack("<BB6s", ENTRY_BUS, ISA_BUS_ID, b"ISA   "))
    entries.append(struct.pack("<BBBBI", ENTRY_IOAPIC, pc.IOAPIC_ID, 0x11, 0x01, IOAPIC_BASE))
    entries.append(struct.pack("<BBHBBBB", ENTRY_IO_INT, INT_TYPE_EXTINT, 0, ISA_BUS_ID, 0,
                               pc.IOAPIC_ID, 0))
    level = {pc.SCI_IRQ, *pc.PCI_PIRQ_IRQS}
    for irq in range(16):
        if irq == 2:
            continue
        entries.append(struct.pack("<BBHBBBB", ENTRY_IO_INT, INT_TYPE_INT,
                                   INTI_LEVEL_HIGH if irq in level else 0, ISA_BUS_ID, irq,
                                   pc.IOAPIC_ID, 2 if irq == 0 else irq))
    for int_type, lint in ((INT_TYPE_EXTINT, 0), (INT_TYPE_NMI, 1)):
        entries.append(struct.pack("<BBHBBBB", ENTRY_LOCAL_INT, int_type, 0, ISA_BUS_ID, 0,
                                   0xFF, lint))
    body = b"".join(entries)
    table = bytearray(struct.pack("<4sHBB8s12sIHHIHBB", b"PCMP", 44 + len(body), 4, 0,
                                  b"KVMCPU  ", b"PC          ", 0, 0, len(entries),
                                  DEFAULT_APIC_BASE, 0, 0, 0)) + body
    table[7] = checksum(bytes(table))
    return bytes(table), len(entries)


def floating_pointer(table_addr: int) -> bytes:
    """The 16-byte MP floating pointer structure for a table at ``table_addr``."""
    out = bytearray(struct.pack("<4sIBBB5s", b"_MP_", table_addr, 1, 4, 0, bytes(5)))
    out[10] = checksum(bytes(out))
    return bytes(out)


def build(cpus: int, addr: int) -> bytes:
    """The floating pointer at ``addr`` (16-byte aligned) and the table right after it."""
    if addr % 16:
        raise ValueError(f"the MP floating pointer must be 16-byte aligned, not {addr:#x}")
    table, _count = config_table(cpus)
    return floating_pointer(addr + 16) + table
