"""PhysicalMemory's PC layout, cross-region access, e820 map; parse_size."""

from __future__ import annotations

from typing import Iterator

import pytest

from kvmcpu.errors import ConfigError, GuestError
from kvmcpu.mem import E820_RAM, E820_RESERVED, E820Entry, PhysicalMemory, parse_size

GIB = 1 << 30
MIB = 1 << 20


@pytest.mark.parametrize("text,value", [
    ("128M", 128 * MIB), ("128MiB", 128 * MIB), ("128MB", 128 * MIB), ("2G", 2 * GIB),
    ("2GiB", 2 * GIB), ("1T", 1 << 40), ("64K", 64 * 1024), ("4096", 4096), (" 8 g ", 8 * GIB),
    ("0x1000", 0x1000), (12345, 12345),
])
def test_parse_size(text: object, value: int) -> None:
    assert parse_size(text) == value  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "12Q", "M", "1.5G", "-5", "ten", "5iB"])
def test_parse_size_errors_name_the_value(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_size(bad)
    assert repr(bad) in str(err.value)


@pytest.fixture
def mem8g() -> Iterator[PhysicalMemory]:
    with PhysicalMemory("8G") as m:
        yield m


def test_small_ram_is_one_region() -> None:
    with PhysicalMemory("128M") as m:
        assert m.ram_size == 128 * MIB
        assert [(r.gpa, r.size) for r in m.regions] == [(0, 128 * MIB)]
        # SeaBIOS's map on QEMU -machine pc -accel kvm -m 128 (a Multiboot guest's
        # dump, tests/system/test_multiboot_qemu.py), entry for entry.
        assert m.e820() == [
            E820Entry(0, 0x9FC00, E820_RAM),
            E820Entry(0x9FC00, 0x400, E820_RESERVED),
            E820Entry(0xF0000, 0x10000, E820_RESERVED),
            E820Entry(0x100000, 0x7EE0000, E820_RAM),
            E820Entry(0x7FE0000, 0x20000, E820_RESERVED),
            E820Entry(0xFEFFC000, 0x4000, E820_RESERVED),
            E820Entry(0xFFFC0000, 0x40000, E820_RESERVED),
        ]
        assert (m.mem_lower_kib, m.mem_upper_kib) == (639, 127 * 1024 - 128)


def test_large_ram_splits_around_the_hole(mem8g: PhysicalMemory) -> None:
    m = mem8g
    assert [(r.gpa, r.size) for r in m.regions] == [(0, 3 * GIB), (4 * GIB, 5 * GIB)]
    assert (m.below_hole, m.above_hole) == (3 * GIB, 5 * GIB)
    e820 = m.e820()
    assert e820[-1] == E820Entry(4 * GIB, 5 * GIB, E820_RAM)
    assert E820Entry(0x100000, 3 * GIB - MIB - 0x20000, E820_RAM) in e820
    assert m.is_ram(3 * GIB - 4) and not m.is_ram(3 * GIB) and m.is_ram(4 * GIB)
    assert not m.is_ram(3 * GIB - 4, 8)


def test_read_write_and_bounds(mem8g: PhysicalMemory) -> None:
    m = mem8g
    m.write(0x1000, b"hello")
    assert m.read(0x1000, 5) == b"hello"
    assert m.regions[0].host.read(0x1000, 5) == b"hello"
    m.write(4 * GIB + 8, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    assert m.read_u64(4 * GIB + 8) == 0x0807060504030201
    assert m.read_u32(4 * GIB + 8) == 0x04030201
    m.view(0x2000, 4)[:] = b"abcd"
    assert m.read(0x2000, 4) == b"abcd"
    with pytest.raises(GuestError, match="outside RAM"):
        m.write(3 * GIB - 2, b"xxxx")
    assert m.read(3 * GIB - 2, 2) == b"\0\0"  # nothing was written
    with pytest.raises(GuestError, match="0xc0000000"):
        m.read(3 * GIB, 1)
    m.fill(0x1000, 5)
    assert m.read(0x1000, 5) == bytes(5)


def test_cross_region_access_with_custom_hole() -> None:
    with PhysicalMemory(8 * MIB, hole_start=4 * MIB, hole_end=16 * MIB) as m:
        assert [(r.gpa, r.size) for r in m.regions] == [(0, 4 * MIB), (16 * MIB, 4 * MIB)]
        assert not m.is_ram(4 * MIB)
        m.write(16 * MIB - 0, b"z")
        assert m.read(16 * MIB, 1) == b"z"


def test_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="multiple of"):
        PhysicalMemory(1000)
    with pytest.raises(ConfigError, match="invalid memory size"):
        PhysicalMemory("lots")
    with pytest.raises(ConfigError, match="PCI hole"):
        PhysicalMemory("1M", hole_start=0x1001)
    m = PhysicalMemory("1M")
    m.close()
    m.close()
    assert m.closed
