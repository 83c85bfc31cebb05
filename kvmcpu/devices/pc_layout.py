"""Where the PC's firmware-visible resources are: one table both sides read.

The firmware tables (ACPI FADT/MADT/HPET/DSDT, the MP table, SMBIOS) describe
devices, and the devices implement what the tables promise. Both take their
addresses, ports and interrupt lines from here, so a table can never name a
port the device does not decode. The values are QEMU's ``pc`` machine's (as
SeaBIOS programs it) unless a comment says otherwise.
"""

from __future__ import annotations

__all__ = [
    "ACPI_FACS_ADDR",
    "ACPI_TABLES_BASE",
    "ACPI_TABLES_END",
    "BIOS_TABLES_END",
    "BIOS_TABLES_START",
    "CMOS_CENTURY",
    "GPE0_BLK",
    "GPE0_LEN",
    "HPET_BASE",
    "HPET_SIZE",
    "IOAPIC_ID",
    "ISA_BRIDGE_DEVFN",
    "HOST_BRIDGE_DEVFN",
    "PCI_IO_BAR_BASE",
    "PCI_MEM_WINDOW",
    "PCI_PIRQ_IRQS",
    "PIIX4_PM_DEVFN",
    "PM1A_CNT_BLK",
    "PM1A_EVT_BLK",
    "PM_IO_BASE",
    "PM_TMR_BLK",
    "PM_TIMER_HZ",
    "RESET_PORT",
    "RESET_VALUE",
    "SCI_IRQ",
    "SLP_TYP_S3",
    "SLP_TYP_S5",
    "SMI_CMD",
]

# -- ACPI power management (PIIX4 PM function, IO space) ---------------------
#: Base of the PIIX4 PM IO block (QEMU/SeaBIOS: PORT_ACPI_PM_BASE).
PM_IO_BASE = 0x600
#: PM1a event block: PM1_STS (2 bytes) then PM1_EN (2 bytes).
PM1A_EVT_BLK = PM_IO_BASE + 0x00
#: PM1a control block: PM1_CNT (2 bytes; SCI_EN, SLP_TYP, SLP_EN).
PM1A_CNT_BLK = PM_IO_BASE + 0x04
#: PM timer block: a 24-bit counter read as 4 bytes.
PM_TMR_BLK = PM_IO_BASE + 0x08
#: The ACPI PM timer's frequency in Hz.
PM_TIMER_HZ = 3_579_545
#: General-purpose event block 0 (QEMU's PIIX4 GPE at 0xafe0, 4 bytes).
GPE0_BLK = 0xAFE0
GPE0_LEN = 4
#: PM1_CNT.SLP_TYP values (bits 10-12) of the sleep states, as QEMU's PIIX4 PM
#: decodes them (acpi_pm1_cnt_write) and its DSDT's \\_S3 / \\_S5 packages give them.
SLP_TYP_S3 = 1
SLP_TYP_S5 = 0
#: The SCI's ISA IRQ (level, active high, as QEMU's MADT override says).
SCI_IRQ = 9
#: SMI command port. 0: this platform is always in ACPI mode (SCI_EN reads 1),
#: which the ACPI specification allows and a kernel accepts without an SMI
#: handshake (QEMU has a real SMI port at 0xb2; kvmcpu has no SMM).
SMI_CMD = 0
#: The FADT reset register: an IO write of RESET_VALUE to RESET_PORT (PIIX's 0xcf9).
RESET_PORT = 0xCF9
RESET_VALUE = 0x06
#: The CMOS register holding the century (the FADT's CENTURY field).
CMOS_CENTURY = 0x32

# -- Memory-mapped devices -----------------------------------------------------
HPET_BASE = 0xFED00000
HPET_SIZE = 0x400
#: The IOAPIC's APIC ID in the MADT and the MP table (QEMU's pc uses 0).
IOAPIC_ID = 0

# -- PCI -------------------------------------------------------------------------
#: (device, function) on bus 0, as on QEMU's pc machine.
HOST_BRIDGE_DEVFN = (0, 0)   # i440FX 8086:1237
ISA_BRIDGE_DEVFN = (1, 0)    # PIIX3 ISA 8086:7000
PIIX4_PM_DEVFN = (1, 3)      # PIIX4 PM 8086:7113
#: The ISA IRQs the PIIX3 PIRQ[A-D] routing registers (config 0x60-0x63) are
#: programmed with, as SeaBIOS does on the pc machine (level, active high).
PCI_PIRQ_IRQS = (10, 10, 11, 11)
#: Where firmware starts assigning IO BARs.
PCI_IO_BAR_BASE = 0xC000
#: The 32-bit memory window of the PCI root bridge: the PCI hole from 3 GiB up
#: to the IOAPIC/HPET/LAPIC area (QEMU's DSDT _CRS for the same hole).
PCI_MEM_WINDOW = (0xC0000000, 0xFEBFFFFF)

# -- Firmware tables in the BIOS area (e820-reserved below 1 MiB) ---------------
# The 64 KiB at 0xf0000 are the area SeaBIOS's e820 map reserves below 1 MiB
# (0xa0000-0xeffff is not in the map at all), so the tables go there.
#: The RSDP, the MP floating pointer and table, and the SMBIOS entry point and
#: structures go in [BIOS_TABLES_START, BIOS_TABLES_END) (16-byte aligned).
BIOS_TABLES_START = 0xF0000
BIOS_TABLES_END = 0xF8000
#: The ACPI tables (FACS first, then DSDT, FADT, MADT, HPET, RSDT, XSDT).
ACPI_TABLES_BASE = 0xF8000
ACPI_TABLES_END = 0x100000
#: The FACS (64-byte aligned); S3 resume reads its firmware waking vector here.
ACPI_FACS_ADDR = ACPI_TABLES_BASE
