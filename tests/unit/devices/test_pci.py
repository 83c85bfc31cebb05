"""PCI configuration mechanism #1 and bus 0 against the PCI Local Bus
Specification 3.0 (configuration header, BAR sizing, command register, status
write-1-to-clear) and PIIX3/PIIX4 (PIRQ routing, PMBA); QEMU's pci-testdev
and pc-testdev protocols; --device parsing."""

from __future__ import annotations

from typing import List, Tuple

import pytest

from kvmcpu.devices import pc_layout
from kvmcpu.devices.acpi_pm import AcpiPm
from kvmcpu.devices.pci import PciBus, PciFunction, PciHost, i440fx, piix3, piix4_pm
from kvmcpu.devices.testdevs import PciTestDev, PcTestDev, device_spec, parse_devices
from kvmcpu.errors import ConfigError
from kvmcpu.mem import IoBus, MmioBus
from kvmcpu.sim.eventq import EventQueue


class Recorder:
    def __init__(self) -> None:
        self.calls: List[Tuple[int, bool]] = []

    def set_irq(self, line: int, level: bool) -> None:
        self.calls.append((line, level))


class Dummy:
    def __init__(self) -> None:
        self.name = "dummy"

    def read(self, offset: int, size: int) -> int:
        return 0x40 + offset

    def write(self, offset: int, size: int, value: int) -> None:
        pass


def make() -> Tuple[IoBus, MmioBus, PciBus, Recorder, AcpiPm]:
    io, mmio, chip = IoBus(), MmioBus(), Recorder()
    bus = PciBus(io, mmio, chip)
    pm = AcpiPm(queue=EventQueue("pci"))
    bus.add(i440fx(), pc_layout.HOST_BRIDGE_DEVFN)
    bus.add(piix3(), pc_layout.ISA_BRIDGE_DEVFN)
    bus.add(piix4_pm(pm, io), pc_layout.PIIX4_PM_DEVFN)
    io.add(0xCF8, 8, PciHost(bus=bus))
    return io, mmio, bus, chip, pm


def cfg(io: IoBus, dev: int, fn: int, reg: int, size: int = 4, value: int | None = None) -> int:
    io.write(0xCF8, 4, 0x80000000 | (dev << 11) | (fn << 8) | (reg & 0xFC))
    port = 0xCFC + (reg & 3)
    if value is None:
        return io.read(port, size)
    io.write(port, size, value)
    return value


def test_ids_class_header_and_absent_functions() -> None:
    io, _, _, _, _ = make()
    assert cfg(io, 0, 0, 0) == 0x12378086 and cfg(io, 0, 0, 8) >> 8 == 0x060000
    assert cfg(io, 1, 0, 0) == 0x70008086 and cfg(io, 1, 0, 0x0E, 1) == 0x80
    assert cfg(io, 1, 3, 0) == 0x71138086 and cfg(io, 1, 3, 8) == 0x06800003
    assert cfg(io, 1, 3, 0x3D, 1) == 1  # INTA
    assert cfg(io, 5, 0, 0) == 0xFFFFFFFF and cfg(io, 1, 1, 0, 2) == 0xFFFF
    assert cfg(io, 0, 0, 2, 2) == 0x1237  # a word of the dword at offset 2
    cfg(io, 0, 0, 0, 4, 0)  # vendor and device are read-only
    assert cfg(io, 0, 0, 0) == 0x12378086
    io.write(0xCF8, 4, 0x00000000)  # enable bit clear: no configuration cycle
    assert io.read(0xCFC, 4) == 0xFFFFFFFF


def test_bar_sizing_decoding_and_moving() -> None:
    io, mmio, bus, _, _ = make()
    fn = bus.add(PciFunction("dev", 0x1234, 0x5678, 0xFF0000), (3, 0))
    mem, port = Dummy(), Dummy()
    fn.add_bar(0, 0x1000, io=False, device=mem)
    fn.add_bar(1, 0x20, io=True, device=port)
    cfg(io, 3, 0, 0x10, 4, 0xFFFFFFFF)
    cfg(io, 3, 0, 0x14, 4, 0xFFFFFFFF)
    assert cfg(io, 3, 0, 0x10) == 0xFFFFF000  # memory: bit 0 clear
    assert cfg(io, 3, 0, 0x14) == 0xFFFFFFE1  # IO: bit 0 set
    assert mmio.device_at(0xFFFFF000) is None  # decoding is off
    cfg(io, 3, 0, 0x10, 4, 0xE0000000)
    cfg(io, 3, 0, 0x14, 4, 0xD000)
    assert mmio.device_at(0xE0000000) is None and io.device_at(0xD000) is None
    cfg(io, 3, 0, 4, 2, 0x3)  # IO and memory space on
    assert mmio.read(0xE0000010, 1) == 0x50 and io.read(0xD004, 1) == 0x44
    cfg(io, 3, 0, 4, 2, 0x2)  # IO off: its range disappears
    assert io.device_at(0xD000) is None and mmio.device_at(0xE0000000) is mem
    cfg(io, 3, 0, 0x10, 4, 0xE0100000)  # moved
    assert mmio.device_at(0xE0000000) is None and mmio.device_at(0xE0100FFF) is mem


def test_status_is_write_one_to_clear() -> None:
    io, _, bus, _, _ = make()
    fn = bus.functions[(0, 0)]
    fn.config[7] = 0xF9  # errors latched, DEVSEL timing
    cfg(io, 0, 0, 6, 2, 0x2000)  # clear bit 13 (received master abort)
    assert cfg(io, 0, 0, 6, 2) == 0xD900


def test_firmware_assignment_and_intx_routing() -> None:
    io, mmio, bus, chip, pm = make()
    td = bus.add(PciTestDev(), (2, 0))
    dev = bus.add(PciFunction("intx", 0x1234, 1, 0xFF0000, pin=1), (3, 0))
    dev.add_bar(0, 0x20, io=True, device=Dummy())
    bus.firmware_setup()
    assert cfg(io, 2, 0, 0x10) == 0xC0000000  # memory from the window's start
    assert cfg(io, 2, 0, 0x14) == 0xC001  # IO from 0xc000, the largest first
    assert cfg(io, 3, 0, 0x10) == 0xC101
    assert io.device_at(0xC100) is not None and mmio.device_at(0xC0000000) is not None
    assert cfg(io, 1, 0, 0x60) == 0x0B0B0A0A
    assert cfg(io, 3, 0, 0x3C, 1) == 11  # INTA of device 3 -> PIRQC -> IRQ 11
    assert PciBus.pirq_of(3, 1) == 2 and PciBus.pirq_of(1, 1) == 0
    dev.config[0x3C] = 0
    dev.set_irq(True)
    assert chip.calls == [(11, True)]  # PIRQC -> IRQ 11
    cfg(io, 3, 0, 4, 2, 0x403)  # INTx disable
    assert chip.calls[-1] == (11, False)
    cfg(io, 3, 0, 4, 2, 0x003)
    cfg(io, 1, 0, 0x62, 1, 0x85)  # PIRQC routing disabled (bit 7)
    assert chip.calls[-2:] == [(11, True), (11, False)]
    cfg(io, 1, 0, 0x62, 1, 0x05)  # -> IRQ 5
    assert chip.calls[-1] == (5, True)
    assert td.config[0x3D] == 0  # pci-testdev has no pin
    assert io.device_at(pc_layout.PM_IO_BASE) is pm
    cfg(io, 1, 3, 0x40, 4, 0xB001)  # PMBA moves the PM block
    assert io.device_at(0x600) is None and io.device_at(0xB008) is pm
    cfg(io, 1, 3, 0x80, 1, 0)  # PMIOSE off
    assert io.device_at(0xB008) is None


def test_pci_testdev_headers_doorbells_and_byte_splitting() -> None:
    td = PciTestDev()
    mem, port = td.bars[0].device, td.bars[1].device
    assert td.bars[0].size == 4096 and td.bars[1].size == 256
    assert mem.read(0, 4) == 0  # no test selected
    mem.write(0, 1, 2)
    assert mem.read(0, 4) == 0x0102 and mem.read(4, 4) == 2048 + 2 and mem.read(8, 1) == 0xFA
    name = bytes(mem.read(16 + i, 1) for i in range(24)).split(b"\0")[0]
    assert name == b"mmio-datamatch-eventfd"
    mem.write(2050, 1, 0xFA)
    mem.write(2050, 1, 0xFB)  # no match
    mem.write(2050, 2, 0x00FA)  # split: byte 0xfa at 2050 counts, 0 at 2051 not
    assert mem.read(12, 4) == 2
    port.write(0, 1, 1)  # portio wildcard (test 4)
    assert port.read(0, 1) == 4 and port.read(4, 4) == 132 and port.read(8, 1) == 0xCE
    port.write(132, 1, 0x33)
    assert port.read(12, 4) == 1 and mem.read(12, 4) == 1  # one current test for both BARs
    port.write(0, 1, 7)  # no such test: none selected
    assert port.read(0, 1) == 0


def test_pc_testdev_ports_irqs_and_iomem() -> None:
    io, mmio, chip = IoBus(), MmioBus(), Recorder()
    dev = PcTestDev(irqchip=chip)
    dev.map(io, mmio)
    io.write(0xE0, 4, 0x12345678)
    assert io.read(0xE2, 2) == 0x1234 and io.read(0xE9, 1) == 0x56
    io.write(0xEB, 1, 0xAB)
    assert io.read(0xE0, 4) == 0xAB345678
    io.write(0x2000 + 10, 1, 1)
    io.write(0x2000 + 10, 1, 0)
    assert chip.calls == [(10, True), (10, False)]
    mmio.write(0xFF000010, 8, 0x1122334455667788)
    assert mmio.read(0xFF000014, 4) == 0x11223344
    io.write(0xE4, 4, 0x1000)
    assert dev.flushes == 1


def test_device_spec_parsing() -> None:
    assert device_spec("isa-debug-exit,iobase=0xf4,iosize=0x04") == (
        "isa-debug-exit", {"iobase": 0xF4, "iosize": 4})
    assert device_spec("pci-testdev,addr=04.0") == ("pci-testdev", {"addr": 32})
    assert device_spec("driver=pc-testdev") == ("pc-testdev", {})
    with pytest.raises(ConfigError, match="unknown device 'e1000'"):
        device_spec("e1000")
    with pytest.raises(ConfigError, match="needs a value"):
        device_spec("isa-debug-exit,iobase")
    with pytest.raises(ConfigError, match="given 2 times"):
        parse_devices(["pc-testdev", "pc-testdev"])
    with pytest.raises(TypeError):
        parse_devices([42])
    assert parse_devices([("pci-testdev", {"addr": 24})]) == [("pci-testdev", {"addr": 24})]
