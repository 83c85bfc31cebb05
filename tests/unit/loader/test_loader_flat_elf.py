"""Flat and ELF loading, with each bad-image error."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

import pytest

from kvmcpu.errors import ConfigError, GuestError
from kvmcpu.loader import load_elf, load_flat, load_image, parse_elf
from kvmcpu.mem import AddrRange, PhysicalMemory


def test_flat_real_mode(mem: PhysicalMemory) -> None:
    img = load_flat(b"\xf4\xeb\xfd", mem, load_addr=0x7C00)
    assert mem.read(0x7C00, 3) == b"\xf4\xeb\xfd"
    assert (img.entry, img.mode, img.format, img.cs_ip) == (0x7C00, "real", "flat", (0, 0x7C00))
    assert img.ranges == [AddrRange(0x7C00, 3)]
    img = load_flat(b"\x90" * 16, mem, load_addr=0x10000, entry=0x10004)
    assert img.cs_ip == (0x1000, 4)


def test_flat_protected_and_long(mem: PhysicalMemory, tmp_path: Path) -> None:
    f = tmp_path / "code.bin"
    f.write_bytes(b"\x90" * 100)
    img = load_flat(f, mem, load_addr=0x200000, entry=0x200010, mode="long")
    assert (img.entry, img.mode) == (0x200010, "long")
    assert str(f) in img.description and "0x200000" in img.description
    assert img.page_tables == 0x9000
    img = load_flat(b"\x90" * 0x8000, mem, load_addr=0x8000, mode="protected")
    assert img.page_tables == 0x10000  # 0x9000 is taken by the image


def test_flat_errors(mem: PhysicalMemory, tmp_path: Path) -> None:
    with pytest.raises(GuestError, match="empty"):
        load_flat(b"", mem, load_addr=0)
    with pytest.raises(GuestError, match=r"image \[0x7fffffe, 0x8000006\) is outside guest RAM"):
        load_flat(b"x" * 8, mem, load_addr=0x7FFFFFE)
    with pytest.raises(ConfigError, match="below 1 MiB"):
        load_flat(b"x", mem, load_addr=0x100000)
    with pytest.raises(ConfigError, match="mode"):
        load_flat(b"x", mem, load_addr=0, mode="virtual86")
    missing = tmp_path / "nope.bin"
    with pytest.raises(GuestError, match="nope.bin: cannot read image"):
        load_flat(missing, mem, load_addr=0)


def test_elf64_from_hello64(mem: PhysicalMemory, hello64_bin: Path) -> None:
    data = hello64_bin.read_bytes()
    entry, = struct.unpack_from("<Q", data, 24)
    memsz, = struct.unpack_from("<Q", data, 64 + 40)
    mem.write(0x100000, b"\xcc" * (memsz + 64))  # garbage the BSS must overwrite
    img = load_elf(hello64_bin, mem)
    assert (img.entry, img.mode, img.format) == (entry, "long", "elf64")
    assert img.ranges == [AddrRange(0x100000, memsz)]
    assert mem.read(0x100000, len(data)) == data
    assert mem.read(0x100000 + len(data), memsz - len(data)) == bytes(memsz - len(data))
    assert mem.read(0x100000 + memsz, 1) == b"\xcc"
    assert img.page_tables == 0x9000 and img.regs == {}
    assert "ELF64" in img.description and str(hello64_bin) in img.description


def elf64(*, entry: int = 0x200000, paddr: int = 0x200000, vaddr: int | None = None,
          filesz: int = 16, memsz: int = 32, machine: int = 62, phnum: int = 1,
          p_type: int = 1, elf_class: int = 2, encoding: int = 1) -> bytes:
    """A minimal ELF64 executable with one program header and ``filesz`` bytes of 0x90."""
    hdr = bytes([0x7F, ord("E"), ord("L"), ord("F"), elf_class, encoding, 1, 0]) + bytes(8)
    hdr += struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, entry, 64, 0, 0, 64, 56, phnum,
                       64, 0, 0)
    ph = struct.pack("<IIQQQQQQ", p_type, 7, 120, paddr if vaddr is None else vaddr, paddr,
                     filesz, memsz, 0x1000)
    return hdr + ph * phnum + b"\x90" * filesz


def test_elf64_minimal_and_entry_translation(mem: PhysicalMemory) -> None:
    img = load_elf(elf64(), mem)
    assert img.entry == 0x200000 and mem.read(0x200000, 16) == b"\x90" * 16
    assert mem.read(0x200010, 16) == bytes(16)
    # Linked high, loaded low: the entry is translated to the physical address.
    img = load_elf(elf64(vaddr=0xFFFFFFFF80200000, entry=0xFFFFFFFF80200004), mem)
    assert img.entry == 0x200004


@pytest.fixture
def big_mem() -> Iterator[PhysicalMemory]:
    with PhysicalMemory("4G") as m:
        yield m


def _ids(value: object) -> str:
    return "image" if isinstance(value, bytes) else str(value)[:40]


@pytest.mark.parametrize("image,message", [
    (b"\x7fELF\x02\x01", "truncated ELF header"),
    (b"MZ" + bytes(100), "not an ELF file"),
    (elf64(elf_class=3), "unsupported ELF class 3 at offset 4"),
    (elf64(encoding=2), "only little-endian"),
    (elf64(machine=40), "unsupported ELF machine 40 at offset 18 for ELF64"),
    (elf64()[:100], "truncated: program headers at offset 0x40"),
    (elf64(filesz=16)[:-4], r"truncated: segment 0 needs file bytes \[0x78, 0x88\)"),
    (elf64(filesz=64, memsz=32), "filesz 0x40 > memsz 0x20"),
    (elf64(p_type=4), "no PT_LOAD segment"),
    (elf64(phnum=2), "segments 0 .* and 1 .* overlap"),
    (elf64(paddr=0x7FFFFF0, entry=0x7FFFFF0),
     r"segment 0 \[0x7fffff0, 0x8000010\) is outside guest RAM"),
], ids=_ids)
def test_elf_errors(mem: PhysicalMemory, image: bytes, message: str) -> None:
    with pytest.raises(GuestError, match=message):
        load_elf(image, mem)


def test_elf_segment_in_the_mmio_hole(big_mem: PhysicalMemory) -> None:
    with pytest.raises(GuestError, match=r"segment 0 \[0xc0000000, 0xc0000020\) overlaps the "
                                         r"MMIO hole \[0xc0000000, 0x100000000\)"):
        load_elf(elf64(paddr=0xC0000000, entry=0xC0000000), big_mem)


def test_elf_error_names_the_file(mem: PhysicalMemory, tmp_path: Path) -> None:
    f = tmp_path / "broken.elf"
    f.write_bytes(elf64(machine=3))
    with pytest.raises(GuestError, match="broken.elf: unsupported ELF machine 3"):
        load_image(f, mem)


def test_elf32_plain_starts_in_protected_mode(mem: PhysicalMemory) -> None:
    hdr = b"\x7fELF\x01\x01\x01\x00" + bytes(8)
    hdr += struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, 0x300000, 52, 0, 0, 52, 32, 1, 40, 0, 0)
    ph = struct.pack("<IIIIIIII", 1, 84, 0x300000, 0x300000, 4, 8, 7, 0x1000)
    img = load_elf(hdr + ph + b"\xf4\xf4\xf4\xf4", mem)
    assert (img.entry, img.mode, img.format) == (0x300000, "protected", "elf32")
    assert parse_elf(hdr + ph + b"1234", "x").bits == 32
