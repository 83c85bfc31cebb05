"""isa-debug-exit, POST, PCI mechanism #1, fw_cfg and CMOS with real values."""

from __future__ import annotations

import calendar
import struct
from typing import List, Tuple

import pytest

from kvmcpu.devices import Cmos, DebugExit, FwCfg, PciHost, PostCard
from kvmcpu.devices.cmos import cmos_memory_bytes
from kvmcpu.errors import ConfigError
from kvmcpu.mem import IoBus

MIB = 1 << 20
GIB = 1 << 30


def test_debug_exit_status_is_qemu_s() -> None:
    calls: List[Tuple[int, str]] = []
    bus = IoBus()
    dev = DebugExit(on_exit=lambda status, cause: calls.append((status, cause)))
    bus.add(0xF4, 4, dev)
    bus.write(0xF4, 1, 0)
    bus.write(0xF4, 1, 0x10)
    bus.write(0xF4, 4, 0x31)
    assert calls == [(1, "isa-debug-exit"), (0x21, "isa-debug-exit"), (0x63, "isa-debug-exit")]
    assert dev.value == 0x31 and dev.status == 0x63
    assert bus.read(0xF4, 1) == 0


def test_post_card() -> None:
    p = PostCard()
    assert p.last is None
    p.write(0, 1, 0x1AB)
    assert (p.last, p.count, p.read(0, 1)) == (0xAB, 1, 0xFF)


def test_pci_empty_bus() -> None:
    bus = IoBus()
    pci = PciHost()
    bus.add(0xCF8, 8, pci)
    bus.write(0xCF8, 4, 0x80000000)  # bus 0, device 0, function 0, register 0
    assert bus.read(0xCF8, 4) == 0x80000000
    assert bus.read(0xCFC, 4) == 0xFFFFFFFF  # vendor/device: no device
    assert bus.read(0xCFE, 2) == 0xFFFF
    assert bus.read(0xCFF, 1) == 0xFF
    bus.write(0xCF8, 4, 0x8000_1808)  # device 3, register 8
    assert pci.selected() == (0, 3, 0, 8)
    bus.write(0xCF9, 1, 0x06)  # a byte write (PIIX reset register) leaves the address alone
    assert bus.read(0xCF8, 4) == 0x80001808
    assert bus.read(0xCF9, 1) == 0  # a byte read there is the reset control register
    bus.write(0xCFC, 4, 0x12345678)
    assert bus.read(0xCFC, 4) == 0xFFFFFFFF
    bus.write(0xCF8, 4, 0)
    assert pci.selected() is None


def _fw_read(bus: IoBus, key: int, n: int) -> bytes:
    bus.write(0x510, 2, key)
    return bytes(bus.read(0x511, 1) for _ in range(n))


def test_fw_cfg_well_known_items() -> None:
    bus = IoBus()
    bus.add(0x510, 2, FwCfg(ram_size=128 * MIB, nb_cpus=2, max_cpus=4))
    assert _fw_read(bus, 0x0000, 4) == b"QEMU"
    assert _fw_read(bus, 0x0000, 6) == b"QEMU\0\0"  # past the end: 0
    assert _fw_read(bus, 0x0001, 4) == b"\x01\0\0\0"  # traditional interface only
    assert _fw_read(bus, 0x0003, 8) == struct.pack("<Q", 128 * MIB)
    assert _fw_read(bus, 0x0005, 2) == b"\x02\0"
    assert _fw_read(bus, 0x000F, 2) == b"\x04\0"
    assert _fw_read(bus, 0x0002, 16) == bytes(16)
    assert _fw_read(bus, 0x1234, 3) == b"\0\0\0"  # unknown key
    bus.write(0x510, 2, 0)
    assert bus.read(0x511, 4) == int.from_bytes(b"QEMU", "little")  # wide read: memory order


def test_fw_cfg_file_directory_layout() -> None:
    fw = FwCfg()
    assert fw.add_file("etc/e820", b"x" * 20) == 0x20
    assert fw.add_file("opt/kvmcpu/hello", b"hi") == 0x21
    bus = IoBus()
    bus.add(0x510, 2, fw)
    count = struct.unpack(">I", _fw_read(bus, 0x19, 4))[0]
    assert count == 2
    raw = _fw_read(bus, 0x19, 4 + 2 * 64)
    size, select, reserved, name = struct.unpack_from(">IHH56s", raw, 4)
    assert (size, select, reserved) == (20, 0x20, 0)
    assert name == b"etc/e820" + bytes(48)
    size, select, _, name = struct.unpack_from(">IHH56s", raw, 4 + 64)
    assert (size, select, name.rstrip(b"\0")) == (2, 0x21, b"opt/kvmcpu/hello")
    assert _fw_read(bus, 0x21, 3) == b"hi\0"
    assert fw.files == {"etc/e820": 0x20, "opt/kvmcpu/hello": 0x21}
    with pytest.raises(ConfigError, match="already"):
        fw.add_file("etc/e820", b"")
    with pytest.raises(ConfigError, match="1-55 bytes"):
        fw.add_file("x" * 56, b"")


def _cmos(bus: IoBus, reg: int) -> int:
    bus.write(0x70, 1, reg)
    return bus.read(0x71, 1)


def test_cmos_memory_registers_128m() -> None:
    bus = IoBus()
    bus.add(0x70, 2, Cmos(ram_below_4g=128 * MIB, ram_above_4g=0, clock=lambda: 0))
    assert (_cmos(bus, 0x15), _cmos(bus, 0x16)) == (0x80, 0x02)  # 640 KiB
    assert (_cmos(bus, 0x17), _cmos(bus, 0x18)) == (0xFF, 0xFF)  # 127 MiB, capped at 65535
    assert (_cmos(bus, 0x30), _cmos(bus, 0x31)) == (0xFF, 0xFF)
    assert (_cmos(bus, 0x34), _cmos(bus, 0x35)) == (0x00, 0x07)  # 112 MiB / 64 KiB = 1792
    assert [_cmos(bus, r) for r in (0x5B, 0x5C, 0x5D)] == [0, 0, 0]


def test_cmos_memory_registers_8g_and_small() -> None:
    regs = cmos_memory_bytes(3 * GIB, 5 * GIB)
    assert (regs[0x34], regs[0x35]) == (0x00, 0xBF)  # (3 GiB - 16 MiB) / 64 KiB = 48896
    assert (regs[0x5B], regs[0x5C], regs[0x5D]) == (0x00, 0x40, 0x01)  # 5 GiB / 64 KiB = 81920
    small = cmos_memory_bytes(16 * MIB, 0)
    assert (small[0x17], small[0x18]) == (0x00, 0x3C)  # 15 MiB = 15360 KiB
    assert (small[0x34], small[0x35]) == (0, 0)


def test_cmos_clock_bcd_binary_12h_and_set() -> None:
    t = calendar.timegm((2024, 2, 29, 13, 45, 7, 0, 0, 0))  # a Thursday
    c = Cmos(clock=lambda: t)
    bus = IoBus()
    bus.add(0x70, 2, c)
    assert [_cmos(bus, r) for r in (0, 2, 4, 6, 7, 8, 9, 0x32)] == [
        0x07, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
    assert (_cmos(bus, 0x0A), _cmos(bus, 0x0B), _cmos(bus, 0x0D)) == (0x26, 0x02, 0x80)
    bus.write(0x70, 1, 0x0B)
    bus.write(0x71, 1, 0x04)  # binary, 12-hour
    assert _cmos(bus, 0) == 7 and _cmos(bus, 9) == 24
    assert _cmos(bus, 4) == 0x81  # 1 PM
    bus.write(0x70, 1, 0x0B)
    bus.write(0x71, 1, 0x02)  # BCD, 24-hour again
    bus.write(0x70, 1, 0x02)
    bus.write(0x71, 1, 0x30)  # minutes := 30
    assert _cmos(bus, 2) == 0x30 and _cmos(bus, 4) == 0x13
    assert c.time_offset == -15 * 60
    bus.write(0x70, 1, 0x8F)  # NMI disabled, register 0x0f
    assert c.nmi_disabled == 1
    bus.write(0x71, 1, 0xAA)
    assert _cmos(bus, 0x0F) == 0xAA
    assert bus.read(0x70, 1) == 0xFF
