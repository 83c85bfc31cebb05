"""The ACPI tables of the PC: RSDP, RSDT, XSDT, FADT, FACS, MADT, HPET and a DSDT.

Every table has the 36-byte ACPI System Description Table header (signature,
length, revision, checksum, OEM ID "KVMCPU", OEM table ID, OEM revision,
creator ID "KVMC", creator revision) and sums to 0 mod 256. The values come
from :mod:`kvmcpu.devices.pc_layout` (ports, IRQs) and the device modules
(the IOAPIC and local APIC addresses), so the tables describe the devices
kvmcpu's ``pc`` platform decodes. Revisions: RSDP 2 (ACPI 2.0+: the ACPI 1.0
part, the RSDT, plus the XSDT), FADT 3 (244 bytes, with the reset register
and the 64-bit X_ fields), MADT 1, HPET 1, DSDT 2 (64-bit AML integers), FACS
version 1.

Differences from QEMU's ``pc`` machine, whose tables SeaBIOS builds from
QEMU's: QEMU's RSDP is revision 0 (no XSDT) and its FADT revision 1; QEMU's
FADT has SMI_CMD 0xb2 with ACPI_ENABLE/ACPI_DISABLE (kvmcpu: SMI_CMD 0, always
in ACPI mode) and the 8042 boot flag (kvmcpu has no 8042); QEMU's MADT also
overrides IRQ 5 (a PIRQ line QEMU may program; kvmcpu's PIRQs are
``PCI_PIRQ_IRQS``); QEMU's DSDT routes ``_PRT`` through PCI link devices
(LNKA-LNKD), kvmcpu's names the GSIs the PIRQ lines are programmed with.
"""

from __future__ import annotations

import struct
from typing import Dict, List, Sequence, Tuple

from kvmcpu.devices import pc_layout as pc
from kvmcpu.devices.ioapic import IOAPIC_BASE
from kvmcpu.devices.lapic import DEFAULT_APIC_BASE
from kvmcpu.firmware import aml

__all__ = [
    "OEM_ID",
    "OEM_TABLE_ID",
    "checksum",
    "dsdt",
    "facs",
    "fadt",
    "hpet",
    "madt",
    "madt_overrides",
    "rsdp",
    "rsdt",
    "sdt_header",
    "xsdt",
]

OEM_ID = b"KVMCPU"
OEM_TABLE_ID = b"KVMCPUPC"
CREATOR_ID = b"KVMC"
OEM_REVISION = 1
CREATOR_REVISION = 1
HEADER_SIZE = 36

# Generic Address Structure address space IDs.
GAS_SYSTEM_MEMORY = 0
GAS_SYSTEM_IO = 1

# FADT flags (ACPI 6.4 table 5.10).
FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_PWR_BUTTON = 1 << 4   # no fixed power button
FADT_SLP_BUTTON = 1 << 5   # no fixed sleep button
FADT_RESET_REG_SUP = 1 << 10
#: IAPC_BOOT_ARCH: LEGACY_DEVICES (ISA devices: the PIC, PIT, RTC, COM1).
IAPC_LEGACY_DEVICES = 1 << 0

# MADT entry types (ACPI 6.4 table 5.45).
MADT_LOCAL_APIC = 0
MADT_IO_APIC = 1
MADT_INT_OVERRIDE = 2
MADT_LAPIC_NMI = 4
MADT_PCAT_COMPAT = 1
#: MPS INTI flags: active high (01) and level triggered (11 << 2).
INTI_LEVEL_HIGH = 0x0D


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` plus it sum to 0 mod 256."""
    return (-sum(data)) & 0xFF


def _fix(table: bytearray, at: int) -> bytes:
    table[at] = 0
    table[at] = checksum(bytes(table))
    return bytes(table)


def sdt_header(signature: bytes, body_len: int, revision: int) -> bytearray:
    """A table's 36-byte header, checksum 0 (:func:`_table` fills it in)."""
    if len(signature) != 4:
        raise ValueError(f"ACPI signature {signature!r} is not 4 bytes")
    return bytearray(struct.pack("<4sIBB6s8sI4sI", signature, HEADER_SIZE + body_len,
                                 revision, 0, OEM_ID, OEM_TABLE_ID, OEM_REVISION,
                                 CREATOR_ID, CREATOR_REVISION))


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    return _fix(sdt_header(signature, len(body), revision) + body, 9)


def _gas(space: int, bit_width: int, address: int, access_size: int = 0) -> bytes:
    return struct.pack("<BBBBQ", space, bit_width, 0, access_size, address)


def rsdp(rsdt_addr: int, xsdt_addr: int) -> bytes:
    """The 36-byte revision-2 RSDP: its first 20 bytes are the ACPI 1.0 RSDP."""
    out = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, OEM_ID, 2, rsdt_addr, 36,
                                xsdt_addr, 0, b"\0\0\0"))
    out[8] = checksum(bytes(out[:20]))
    out[32] = checksum(bytes(out))
    return bytes(out)


def rsdt(tables: Sequence[int]) -> bytes:
    """The RSDT: 32-bit pointers to every table but the FACS and the DSDT."""
    return _table(b"RSDT", 1, b"".join(struct.pack("<I", a) for a in tables))


def xsdt(tables: Sequence[int]) -> bytes:
    """The XSDT: the same tables as 64-bit pointers."""
    return _table(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in tables))


def facs() -> bytes:
    """The 64-byte FACS: waking vectors 0 (the OS sets them before S3), version 1."""
    return struct.pack("<4sIIIIIQB31s", b"FACS", 64, 0, 0, 0, 0, 0, 1, bytes(31))


def fadt(facs_addr: int, dsdt_addr: int) -> bytes:
    """The revision-3 FADT (244 bytes) of the PIIX4 PM function."""
    body = bytearray()
    body += struct.pack("<IIBBHIBBBB", facs_addr, dsdt_addr, 0, 0, pc.SCI_IRQ, pc.SMI_CMD,
                        0, 0, 0, 0)
    body += struct.pack("<IIIIIIII", pc.PM1A_EVT_BLK, 0, pc.PM1A_CNT_BLK, 0, 0,
                        pc.PM_TMR_BLK, pc.GPE0_BLK, 0)
    # PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN, GPE0_BLK_LEN, GPE1_BLK_LEN,
    # GPE1_BASE, CST_CNT; P_LVL2_LAT/P_LVL3_LAT above 100/1000 us: no C2/C3.
    body += struct.pack("<BBBBBBBBHHHHBBBBBHBI", 4, 2, 0, 4, pc.GPE0_LEN, 0, 0, 0,
                        0x0FFF, 0x0FFF, 0, 0, 0, 0, 0, 0, pc.CMOS_CENTURY,
                        IAPC_LEGACY_DEVICES, 0,
                        FADT_WBINVD | FADT_PROC_C1 | FADT_PWR_BUTTON | FADT_SLP_BUTTON
                        | FADT_RESET_REG_SUP)
    body += _gas(GAS_SYSTEM_IO, 8, pc.RESET_PORT, 1)
    body += struct.pack("<B3s", pc.RESET_VALUE, b"\0\0\0")
    body += struct.pack("<QQ", facs_addr, dsdt_addr)
    for addr, nbytes in ((pc.PM1A_EVT_BLK, 4), (0, 0), (pc.PM1A_CNT_BLK, 2), (0, 0),
                         (0, 0), (pc.PM_TMR_BLK, 4), (pc.GPE0_BLK, pc.GPE0_LEN), (0, 0)):
        body += _gas(GAS_SYSTEM_IO if addr else 0, nbytes * 8, addr)
    return _table(b"FACP", 3, bytes(body))


def madt_overrides() -> List[Tuple[int, int, int]]:
    """The interrupt source overrides ``(ISA IRQ, GSI, MPS INTI flags)``: IRQ 0 on
    GSI 2 (bus default polarity and trigger), and the SCI and PCI PIRQ lines
    level-triggered, active high."""
    out = [(0, 2, 0)]
    for irq in sorted({pc.SCI_IRQ, *pc.PCI_PIRQ_IRQS}):
        out.append((irq, irq, INTI_LEVEL_HIGH))
    return out


def madt(cpus: int) -> bytes:
    """The MADT: a local APIC per CPU (APIC ID = processor UID = index), the IOAPIC,
    :func:`madt_overrides` and the local APICs' NMI on LINT1."""
    body = bytearray(struct.pack("<II", DEFAULT_APIC_BASE, MADT_PCAT_COMPAT))
    for i in range(cpus):
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, i, i, 1)
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, pc.IOAPIC_ID, 0, IOAPIC_BASE, 0)
    for irq, gsi, flags in madt_overrides():
        body += struct.pack("<BBBBIH", MADT_INT_OVERRIDE, 10, 0, irq, gsi, flags)
    body += struct.pack("<BBBHB", MADT_LAPIC_NMI, 6, 0xFF, 0, 1)
    return _table(b"APIC", 1, bytes(body))


#: The HPET's event timer block ID: vendor 0x8086, legacy-replacement capable
#: (bit 15), 64-bit counter (bit 13), 3 comparators (bits 12-8 = 2), rev 1 (QEMU's).
HPET_BLOCK_ID = (0x8086 << 16) | (1 << 15) | (1 << 13) | (2 << 8) | 0x01


def hpet() -> bytes:
    """The HPET table: the timer block at ``HPET_BASE``, number 0, minimum tick 128."""
    body = struct.pack("<I", HPET_BLOCK_ID) + _gas(GAS_SYSTEM_MEMORY, 64, pc.HPET_BASE)
    body += struct.pack("<BHB", 0, 128, 0)
    return _table(b"HPET", 1, body)


def _prt() -> bytes:
    # Slot s, pin p (INTA = 0) -> PIRQ (s + p) mod 4 (the PIIX3 swizzle QEMU's
    # pci_slot_get_pirq uses) -> the ISA IRQ SeaBIOS programs it with; with
    # Source = 0 the last element is the GSI (ISA IRQs 0-15 are GSIs 0-15 but 0).
    entries = []
    for slot in range(32):
        for pin in range(4):
            gsi = pc.PCI_PIRQ_IRQS[(slot + pin) & 3]
            entries.append(aml.package([(slot << 16) | 0xFFFF, pin, 0, gsi]))
    # A Package holds 255 elements at most: 128 fit.
    return aml.name("_PRT", aml.package(entries))


def dsdt() -> bytes:
    """The DSDT (what it encodes, in ASL)::

        Name (\\_S3, Package () { SLP_TYP_S3, SLP_TYP_S3, 0, 0 })
        Name (\\_S5, Package () { SLP_TYP_S5, SLP_TYP_S5, 0, 0 })
        Name (\\PICF, 0)
        Method (\\_PIC, 1) { Store (Arg0, \\PICF) }
        Scope (\\_SB) {
            Device (PCI0) {
                Name (_HID, EisaId ("PNP0A03"))
                Name (_ADR, 0)
                Name (_UID, 0)
                Name (_CRS, ResourceTemplate () {
                    WordBusNumber (0x00-0xff)
                    IO (Decode16, 0xcf8, 0xcf8, 1, 8)
                    WordIO (0x0000-0x0cf7)
                    WordIO (0x0d00-0xffff)
                    DWordMemory (PCI_MEM_WINDOW)
                })
                Name (_PRT, Package () {     // 32 slots x INTA-D
                    Package () { 0xSSSSFFFF, pin, 0, PCI_PIRQ_IRQS[(slot + pin) % 4] }, ...
                })
            }
        }
    """
    lo, hi = pc.PCI_MEM_WINDOW
    crs = aml.resource_template(
        aml.word_bus(0x00, 0xFF),
        aml.io_port(0xCF8, 8),
        aml.word_io(0x0000, 0x0CF7),
        aml.word_io(0x0D00, 0xFFFF),
        aml.dword_memory(lo, hi),
    )
    body = b"".join([
        aml.name("\\_S3", aml.package([pc.SLP_TYP_S3, pc.SLP_TYP_S3, 0, 0])),
        aml.name("\\_S5", aml.package([pc.SLP_TYP_S5, pc.SLP_TYP_S5, 0, 0])),
        aml.name("\\PICF", 0),
        aml.method("\\_PIC", 1, aml.store(aml.ARG0, "\\PICF")),
        aml.scope("\\_SB", aml.device(
            "PCI0",
            aml.name("_HID", aml.integer(aml.eisa_id("PNP0A03"))),
            aml.name("_ADR", 0),
            aml.name("_UID", 0),
            aml.name("_CRS", crs),
            _prt(),
        )),
    ])
    return _table(b"DSDT", 2, body)


def build(cpus: int, *, hpet_present: bool, base: int = pc.ACPI_TABLES_BASE,
          end: int = pc.ACPI_TABLES_END) -> Tuple[Dict[int, bytes], int, int]:
    """Lay the tables out from ``base`` (the FACS at ``ACPI_FACS_ADDR``, each table
    16-byte aligned). Returns ``({address: bytes}, rsdt address, xsdt address)``.

    Raises:
        ValueError: the tables do not fit below ``end``.
    """
    blobs: Dict[int, bytes] = {}
    pos = base

    def put(data: bytes, align: int = 16) -> int:
        nonlocal pos
        pos = (pos + align - 1) & -align
        addr = pos
        blobs[addr] = data
        pos += len(data)
        return addr

    facs_addr = put(facs(), 64)
    if facs_addr != pc.ACPI_FACS_ADDR:
        raise ValueError(f"the FACS would be at {facs_addr:#x}, not ACPI_FACS_ADDR "
                         f"{pc.ACPI_FACS_ADDR:#x}")
    dsdt_addr = put(dsdt())
    pointed = [put(fadt(facs_addr, dsdt_addr)), put(madt(cpus))]
    if hpet_present:
        pointed.append(put(hpet()))
    rsdt_addr = put(rsdt(pointed))
    xsdt_addr = put(xsdt(pointed))
    if pos > end:
        raise ValueError(f"the ACPI tables need [{base:#x}, {pos:#x}), more than the "
                         f"[{base:#x}, {end:#x}) reserved for them")
    return blobs, rsdt_addr, xsdt_addr
