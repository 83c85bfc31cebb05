"""SMBIOS 2.8: the 31-byte "_SM_" entry point and the structure table.

Structures (each a formatted area, then its strings, then an extra NUL; DMTF
DSP0134 3.x numbering of the fields), with QEMU's handle numbering:

* type 0 (BIOS information, handle 0x0000): vendor "kvmcpu", version, the
  BIOS segment 0xe800, release date, "BIOS characteristics not supported";
* type 1 (system information, 0x0100): manufacturer, product "Standard PC
  (i440FX + PIIX)", version, a zero UUID, wake-up by power switch;
* type 4 (processor, 0x0400 + n) per CPU: a central processor, "CPU n", one
  core and thread, enabled;
* type 16 (physical memory array, 0x1000): system memory, the RAM size;
* type 17 (memory device, 0x1100): one DIMM of the whole RAM size (QEMU
  splits RAM into 16 GiB DIMMs);
* type 19 (memory array mapped address, 0x1300 + n) per RAM region (below the
  PCI hole, above 4 GiB);
* type 127 (end of table, 0x7f00).
"""

from __future__ import annotations

import struct
from typing import List, Sequence, Tuple

from kvmcpu.firmware.acpi import checksum

__all__ = ["structures", "entry_point", "build"]

SMBIOS_MAJOR, SMBIOS_MINOR = 2, 8
#: The BIOS starting segment SeaBIOS reports.
BIOS_SEGMENT = 0xE800


def _struct(kind: int, handle: int, formatted: bytes, strings: Sequence[str] = ()) -> bytes:
    head = struct.pack("<BBH", kind, 4 + len(formatted), handle) + formatted
    if not strings:
        return head + b"\0\0"
    return head + b"".join(s.encode("ascii") + b"\0" for s in strings) + b"\0"


def structures(cpus: int, ram: Sequence[Tuple[int, int]]) -> List[bytes]:
    """The structures for ``cpus`` CPUs and RAM regions ``[(address, size), ...]``."""
    total = sum(size for _addr, size in ram)
    out = [
        _struct(0, 0x0000, struct.pack("<BBHBBQBBBBBB", 1, 2, BIOS_SEGMENT, 3, 0,
                                       1 << 3, 0, 1 << 4, 0, 0, 0xFF, 0xFF),
                ["kvmcpu", "kvmcpu", "01/01/2011"]),
        _struct(1, 0x0100, struct.pack("<BBBB16sBBB", 1, 2, 3, 0, bytes(16), 6, 0, 0),
                ["kvmcpu", "Standard PC (i440FX + PIIX, 1996)", "pc"]),
    ]
    for i in range(cpus):
        # socket, type 3 (CPU), family 0xfe (see family 2), manufacturer, ID, version,
        # voltage, external clock, max/current MHz, status (populated, enabled),
        # upgrade (other), no caches, serial/asset/part, 1 core/1 enabled/1 thread,
        # characteristics (unknown), family 2 (0x01: other).
        out.append(_struct(4, 0x0400 + i, struct.pack(
            "<BBBBQBBHHHBBHHHBBBBBBHH", 1, 3, 0xFE, 2, 0, 0, 0, 0, 2000, 2000, 0x41, 0x01,
            0xFFFF, 0xFFFF, 0xFFFF, 0, 0, 0, 1, 1, 1, 0x02, 0x01), [f"CPU {i}", "kvmcpu"]))
    kib = total // 1024
    out.append(_struct(16, 0x1000, struct.pack(
        "<BBBIHHQ", 0x01, 0x03, 0x06, kib if kib < 0x80000000 else 0x80000000, 0xFFFE, 1,
        0 if kib < 0x80000000 else total)))
    mib = total >> 20
    out.append(_struct(17, 0x1100, struct.pack(
        "<HHHHHBBBBBHHBBBBBIHHHH", 0x1000, 0xFFFE, 64, 64, mib if mib < 0x7FFF else 0x7FFF,
        0x09, 0, 1, 0, 0x07, 0x02, 0, 0, 0, 0, 0, 0, mib if mib >= 0x7FFF else 0, 0, 0, 0,
        0), ["DIMM 0"]))
    for n, (addr, size) in enumerate(ram):
        start, end = addr // 1024, (addr + size) // 1024 - 1
        if end < 0xFFFFFFFF:
            fmt = struct.pack("<IIHBQQ", start, end, 0x1000, 1, 0, 0)
        else:
            fmt = struct.pack("<IIHBQQ", 0xFFFFFFFF, 0xFFFFFFFF, 0x1000, 1, addr,
                              addr + size - 1)
        out.append(_struct(19, 0x1300 + n, fmt))
    out.append(_struct(127, 0x7F00, b""))
    return out


def entry_point(table_addr: int, structs: Sequence[bytes]) -> bytes:
    """The 31-byte SMBIOS 2.x entry point for ``structs`` at ``table_addr``."""
    length = sum(len(s) for s in structs)
    out = bytearray(struct.pack("<4sBBBBHB5s5sBHIHB", b"_SM_", 0, 0x1F, SMBIOS_MAJOR,
                                SMBIOS_MINOR, max(len(s) for s in structs), 0, bytes(5),
                                b"_DMI_", 0, length, table_addr, len(structs),
                                (SMBIOS_MAJOR << 4) | SMBIOS_MINOR))
    out[0x15] = checksum(bytes(out[0x10:]))
    out[4] = checksum(bytes(out))
    return bytes(out)


def build(cpus: int, ram: Sequence[Tuple[int, int]], addr: int) -> bytes:
    """The entry point at ``addr`` (16-byte aligned) and the structures after it."""
    if addr % 16:
        raise ValueError(f"the SMBIOS entry point must be 16-byte aligned, not {addr:#x}")
    structs = structures(cpus, ram)
    return entry_point(addr + 32, structs).ljust(32, b"\0") + b"".join(structs)
