"""Multiboot v1 loading as QEMU does it: hello.bin, the info structure, modules, errors."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from kvmcpu.errors import ConfigError, GuestError
from kvmcpu.loader import (
    MBI_ADDR,
    MMAP_ADDR,
    MULTIBOOT_BOOTLOADER_MAGIC,
    detect_format,
    find_multiboot_header,
    load_image,
    load_multiboot,
)
from kvmcpu.mem import PhysicalMemory

MB_MAGIC = 0x1BADB002


def cstring(mem: PhysicalMemory, addr: int) -> str:
    out = bytearray()
    while True:
        b = mem.read(addr + len(out), 1)
        if b == b"\0":
            return out.decode()
        out += b


def parse_mbi(mem: PhysicalMemory, addr: int) -> Dict[str, object]:
    raw = mem.read(addr, 88)
    flags, lower, upper, boot_dev, cmdline, mods_count, mods_addr = struct.unpack_from(
        "<7I", raw)
    mmap_len, mmap_addr = struct.unpack_from("<II", raw, 44)
    loader_name, = struct.unpack_from("<I", raw, 64)
    mmap: List[Tuple[int, int, int]] = []
    pos = mmap_addr
    while pos < mmap_addr + mmap_len:
        size, base, length, typ = struct.unpack("<IQQI", mem.read(pos, 24))
        assert size == 20
        mmap.append((base, length, typ))
        pos += size + 4
    mods = [struct.unpack("<IIII", mem.read(mods_addr + 16 * i, 16)) for i in range(mods_count)]
    return {"flags": flags, "mem_lower": lower, "mem_upper": upper, "boot_device": boot_dev,
            "cmdline": cstring(mem, cmdline), "mods": mods, "mods_addr": mods_addr,
            "mmap_addr": mmap_addr, "mmap": mmap, "loader": cstring(mem, loader_name)}


def test_hello_bin_layout(mem: PhysicalMemory, hello_bin: Path) -> None:
    data = hello_bin.read_bytes()
    assert find_multiboot_header(data) == (0, 0x00010000)
    img = load_image(hello_bin, mem, cmdline="console=ttyS0 n=5")
    assert (img.format, img.mode, img.entry) == ("multiboot", "protected", 0x100020)
    assert img.regs == {"rax": MULTIBOOT_BOOTLOADER_MAGIC, "rbx": MBI_ADDR}
    assert (MULTIBOOT_BOOTLOADER_MAGIC, MBI_ADDR) == (0x2BADB002, 0x9500)
    load_end, bss_end = struct.unpack_from("<II", data, 20)
    assert mem.read(0x100000, len(data)) == data
    assert mem.read(load_end, bss_end - load_end) == bytes(bss_end - load_end)
    mbi = parse_mbi(mem, img.regs["rbx"])
    assert mbi["flags"] == 0x24F  # MEMORY BOOT_DEVICE CMDLINE MODULES MMAP BOOTLOADER
    # SeaBIOS keeps the top 128 KiB below the PCI hole for itself.
    assert (mbi["mem_lower"], mbi["mem_upper"]) == (639, 127 * 1024 - 128)
    assert mbi["boot_device"] == 0x8000FFFF
    assert mbi["cmdline"] == f"{hello_bin} console=ttyS0 n=5"
    assert mbi["loader"] == "kvmcpu"
    assert mbi["mods"] == []
    assert mbi["mods_addr"] == (bss_end + 0xFFF) & ~0xFFF  # the page after the kernel
    assert mbi["mmap_addr"] == MMAP_ADDR
    assert mbi["mmap"] == [(e.addr, e.size, e.type) for e in mem.e820()]
    assert img.info["cmdline"] == mbi["cmdline"]
    assert img.page_tables % 4096 == 0 and img.page_tables > bss_end


def test_modules(mem: PhysicalMemory, tmp_path: Path, hello_bin: Path) -> None:
    f = tmp_path / "initrd.img"
    f.write_bytes(b"R" * 5000)
    img = load_multiboot(hello_bin, mem, modules=[f, (b"second module", "mod2 arg=1")])
    mbi = parse_mbi(mem, MBI_ADDR)
    (s1, e1, c1, _), (s2, e2, c2, _) = mbi["mods"]  # type: ignore[misc]
    assert s1 % 4096 == 0 and s2 % 4096 == 0 and s1 > mbi["mods_addr"]  # type: ignore[operator]
    assert (e1 - s1, e2 - s2) == (5000, 13)
    assert s2 == (e1 + 0xFFF) & ~0xFFF
    assert mem.read(s1, 5000) == b"R" * 5000 and mem.read(s2, 13) == b"second module"
    assert cstring(mem, c1) == str(f) and cstring(mem, c2) == "mod2 arg=1"
    assert mbi["cmdline"] == f"{hello_bin} "
    assert img.info["modules"] == [(s1, e1, str(f)), (s2, e2, "mod2 arg=1")]
    assert img.page_tables >= e2


def elf32_multiboot(*, machine: int = 3, elf_class: int = 1) -> bytes:
    """An ELF32 kernel whose segment holds a Multiboot header without address fields."""
    flags = 0x00000003
    mb = struct.pack("<III", MB_MAGIC, flags, (-(MB_MAGIC + flags)) & 0xFFFFFFFF)
    code = mb + b"\xf4" * 4
    if elf_class == 1:
        hdr = b"\x7fELF\x01\x01\x01\x00" + bytes(8)
        hdr += struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, 0x20000C, 52, 0, 0, 52, 32, 1,
                           40, 0, 0)
        ph = struct.pack("<IIIIIIII", 1, 84, 0x200000, 0x200000, len(code), 0x1000, 7, 0x1000)
        return hdr + ph + code
    hdr = b"\x7fELF\x02\x01\x01\x00" + bytes(8)
    hdr += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x20000C, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 7, 120, 0x200000, 0x200000, len(code), 0x1000, 0x1000)
    return hdr + ph + code


def test_elf32_multiboot_kernel(mem: PhysicalMemory) -> None:
    image = elf32_multiboot()
    assert detect_format(image) == "multiboot"
    img = load_image(image, mem, cmdline="x")
    assert (img.entry, img.mode, img.format) == (0x20000C, "protected", "multiboot")
    assert "ELF32" in img.description
    mbi = parse_mbi(mem, MBI_ADDR)
    assert mbi["mods_addr"] == 0x201000 and mbi["cmdline"] == "kernel x"
    assert mem.read(0x200000 + 12, 4) == b"\xf4" * 4


def aout(load_addr: int = 0x100000, header_addr: int | None = None, load_end: int = 0,
         bss_end: int = 0, entry: int | None = None, size: int = 64,
         checksum_ok: bool = True) -> bytes:
    flags = 0x00010000
    csum = (-(MB_MAGIC + flags)) & 0xFFFFFFFF
    if not checksum_ok:
        csum ^= 1
    hdr = struct.pack("<8I", MB_MAGIC, flags, csum,
                      load_addr if header_addr is None else header_addr, load_addr, load_end,
                      bss_end, load_addr + 32 if entry is None else entry)
    return hdr + b"\xf4" * (size - len(hdr))


def test_aout_kludge_without_end_addresses(mem: PhysicalMemory) -> None:
    img = load_multiboot(aout(size=100), mem)
    assert img.entry == 0x100020 and mem.read(0x100000 + 99, 1) == b"\xf4"
    assert img.info["kernel_end"] == 0x100000 + 100


def test_header_not_at_offset_zero(mem: PhysicalMemory) -> None:
    image = b"\x90" * 64 + aout(load_addr=0x100000, header_addr=0x100040, entry=0x100000)
    img = load_multiboot(image, mem)
    assert img.info["header_offset"] == 64 and mem.read(0x100000, 4) == b"\x90" * 4


def _ids(value: object) -> str:
    return "image" if isinstance(value, bytes) else str(value)[:40]


@pytest.mark.parametrize("image,message", [
    (b"\x90" * 9000, r"no Multiboot header \(magic 0x1badb002 with a valid checksum\) in the "
                     r"first 8192 bytes"),
    (aout(checksum_ok=False), "no Multiboot header"),
    (b"\x90" * 8192 + aout(), "no Multiboot header"),
    (aout(header_addr=0xFF000), "invalid Multiboot load_addr 0x100000 above header_addr"),
    (aout(load_end=0x100000 + 0x10000), r"truncated: load_end_addr 0x110000 needs file bytes"),
    (aout(load_end=0xFF000), "invalid Multiboot load_end_addr 0xff000 below load_addr"),
    (aout(load_end=0x100040, bss_end=0x100020), "invalid Multiboot bss_end_addr 0x100020"),
    (aout(entry=0x500000), "entry_addr 0x500000 is outside the kernel"),
    (aout(load_addr=0x7FFFF00, entry=0x7FFFF20, size=512),
     r"kernel \[0x7ffff00, 0x8000100\) is outside guest RAM"),
    (elf32_multiboot(elf_class=2), "cannot load an x86-64 ELF as a Multiboot kernel"),
    (elf32_multiboot(machine=62), "cannot load an x86-64 ELF"),
    (aout()[:24], "truncated Multiboot header at offset 0x0"),
], ids=_ids)
def test_multiboot_errors(mem: PhysicalMemory, image: bytes, message: str) -> None:
    with pytest.raises(GuestError, match=message):
        load_multiboot(image, mem)


def test_a_kernel_over_the_boot_information_loads_as_on_qemu(mem: PhysicalMemory) -> None:
    # QEMU's option ROM writes the map and the info, then copies the kernel's page-aligned
    # buffer over them: the kernel at [0x8000, 0xa000) finds its BSS (zeros) at 0x9500,
    # its buffer (module list, command line, "kvmcpu") in the page after it.
    img = load_multiboot(aout(load_addr=0x8000, entry=0x8020, load_end=0x8100, bss_end=0xA000,
                              size=0x100), mem, cmdline="x")
    assert img.regs["rbx"] == MBI_ADDR == 0x9500
    assert mem.read(0x9000, 0x558) == bytes(0x558)
    assert img.info["buffer"] == (0x8000, 0xB000) and img.info["info_overwritten"]
    assert mem.read(0xA000, 16) == b"kernel x\0kvmcpu\0"
    # A kernel ending below 0x9000: its buffer's first page is 0x9000, over the map.
    img = load_multiboot(aout(load_addr=0x8000, entry=0x8020, size=0x100), mem, cmdline="y")
    assert mem.read(0x9000, 16) == b"kernel y\0kvmcpu\0"
    assert mem.read(0x9500, 88) == bytes(88)


def test_multiboot_without_address_fields_needs_elf(mem: PhysicalMemory) -> None:
    flags = 0
    image = struct.pack("<III", MB_MAGIC, flags, (-MB_MAGIC) & 0xFFFFFFFF) + bytes(64)
    with pytest.raises(GuestError, match="flag bit 16 clear.*not ELF"):
        load_multiboot(image, mem)


def test_load_image_auto_detection(mem: PhysicalMemory, hello_bin: Path, hello64_bin: Path,
                                   tmp_path: Path) -> None:
    assert load_image(hello_bin, mem).format == "multiboot"
    assert load_image(hello64_bin, mem).format == "elf64"
    flat = tmp_path / "boot.img"
    flat.write_bytes(b"\xfa\xf4" + bytes(510))
    img = load_image(flat, mem)
    assert (img.format, img.mode, img.entry) == ("flat", "real", 0x7C00)
    img = load_image(flat, mem, load_addr=0x1000, mode="protected")
    assert (img.entry, img.mode) == (0x1000, "protected")
    with pytest.raises(GuestError, match="no Multiboot header"):
        load_image(hello64_bin, mem, fmt="multiboot")
    with pytest.raises(GuestError, match="not an ELF file"):
        load_image(hello_bin, mem, fmt="elf")
    with pytest.raises(ConfigError, match="format"):
        load_image(hello_bin, mem, fmt="uimage")
    with pytest.raises(ConfigError, match="flat images only"):
        load_image(hello64_bin, mem, load_addr=0x1000)
    with pytest.raises(GuestError, match=r"hello.bin: no Multiboot header"):
        bad = bytearray(hello_bin.read_bytes())
        bad[8] ^= 0xFF  # break the checksum
        f = tmp_path / "hello.bin"
        f.write_bytes(bytes(bad))
        load_image(f, mem, fmt="multiboot")
