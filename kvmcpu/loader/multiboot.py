"""Multiboot v1 kernels, loaded the way QEMU's ``-kernel`` loads them.

This follows QEMU's ``hw/i386/multiboot.c`` and its option ROM
(``pc-bios/optionrom/multiboot.S``):

* The header is searched in the first 8 KiB, 4-byte aligned (the last
  candidate offset is 8192 - 48): magic 0x1BADB002, flags, checksum with
  ``magic + flags + checksum == 0`` (mod 2**32).
* Flag bit 16 clear: the kernel must be an ELF32 (an x86-64 ELF is refused,
  "give a 32bit one"); its PT_LOAD segments are loaded at their physical
  addresses. Bit 16 set (the "a.out kludge"): ``header_addr``, ``load_addr``,
  ``load_end_addr`` (0: to the end of the file), ``bss_end_addr`` (0: no BSS)
  and ``entry_addr`` from the header; the file is copied from offset
  ``header_offset - (header_addr - load_addr)``.
* After the kernel, at the next page boundary, QEMU's buffer holds the module
  structures (16 bytes each: start, end, cmdline), then the command lines,
  then the boot loader name; modules follow, each at a page boundary. The
  buffer (kernel, BSS, padding, all of it) is one blob the option ROM copies to
  the kernel's load address.
* The kernel command line is ``"<kernel file name> <cmdline>"``, as QEMU
  passes it; a module's string is the one given (default: its file name).
* The e820 memory map is at 0x9000 (24-byte entries: size 20, base, length,
  type) and the 88-byte info structure at 0x9500, with flags MEMORY,
  BOOT_DEVICE (0x8000ffff), CMDLINE, MODULES, MMAP and BOOTLOADER
  ("kvmcpu"; QEMU's says "qemu"); ``mem_lower`` is 639 KiB (int 12h),
  ``mem_upper`` the KiB of RAM contiguous from 1 MiB in the e820 map.
* The order is the option ROM's: the map and the info structure are written
  first, the buffer last. A kernel whose buffer covers 0x9000-0x9558 (one
  loaded at 0x8000, say) is not refused: as on QEMU it finds its own bytes
  (zeros, the module list or command lines) where the map and the info were,
  and EBX still points at 0x9500.
* The kernel starts in 32-bit flat protected mode, paging off, at the entry
  point with EAX = 0x2BADB002 and EBX = the info structure's address.
"""

from __future__ import annotations

import logging
import os
import struct
from typing import Callable, List, Sequence, Tuple, Union

from kvmcpu.errors import GuestError
from kvmcpu.loader.elf import ELF_MAGIC, EM_X86_64, parse_elf, place_elf
from kvmcpu.loader.image import GuestMemory, LoadedImage, Source, check_ranges, read_source
from kvmcpu.mem.range import AddrRange

__all__ = [
    "MULTIBOOT_HEADER_MAGIC",
    "MULTIBOOT_BOOTLOADER_MAGIC",
    "MULTIBOOT_SEARCH",
    "MBI_ADDR",
    "MMAP_ADDR",
    "BOOTLOADER_NAME",
    "ModuleSpec",
    "find_multiboot_header",
    "load_multiboot",
]

logger = logging.getLogger("kvmcpu.loader")

MULTIBOOT_HEADER_MAGIC = 0x1BADB002
#: What the kernel finds in EAX.
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002
#: The header must start in the first this-many bytes.
MULTIBOOT_SEARCH = 8192
#: Where QEMU puts the e820 memory map.
MMAP_ADDR = 0x9000
#: Where QEMU puts the multiboot info structure.
MBI_ADDR = MMAP_ADDR + 0x500
#: Size of the info structure.
MBI_SIZE = 88
MB_MOD_SIZE = 16
#: The boot loader name in the info structure.
BOOTLOADER_NAME = "kvmcpu"
#: The boot device QEMU reports (no BIOS drive).
BOOT_DEVICE = 0x8000FFFF

HEADER_PAGE_ALIGN = 1 << 0
HEADER_MEMORY_INFO = 1 << 1
HEADER_VIDEO_MODE = 1 << 2
HEADER_AOUT_KLUDGE = 1 << 16

MBI_FLAG_MEMORY = 1 << 0
MBI_FLAG_BOOT_DEVICE = 1 << 1
MBI_FLAG_CMDLINE = 1 << 2
MBI_FLAG_MODULES = 1 << 3
MBI_FLAG_MMAP = 1 << 6
MBI_FLAG_BOOTLOADER = 1 << 9

_PAGE = 4096

#: A module: a path (its string is the path) or ``(path or bytes, string)``.
ModuleSpec = Union[Source, Tuple[Source, str]]


def _page_align(n: int) -> int:
    return (n + _PAGE - 1) & ~(_PAGE - 1)


def find_multiboot_header(data: bytes) -> Tuple[int, int] | None:
    """``(offset, flags)`` of the first valid Multiboot header, or None."""
    limit = min(len(data) - 12, MULTIBOOT_SEARCH - 48)
    for off in range(0, limit + 1, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == MULTIBOOT_HEADER_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return off, flags
    return None


class _Kernel:
    """A parsed kernel: where it goes and how to write it (nothing written yet)."""

    def __init__(self, load_addr: int, size: int, entry: int, ranges: List[AddrRange],
                 write: Callable[[], object]) -> None:
        self.load_addr, self.size, self.entry, self.ranges = load_addr, size, entry, ranges
        self.write = write


def _parse_kernel(data: bytes, name: str, mem: GuestMemory, off: int, flags: int) -> _Kernel:
    if not flags & HEADER_AOUT_KLUDGE:
        if data[:4] != ELF_MAGIC:
            raise GuestError(f"{name}: Multiboot header at offset {off:#x} has no address "
                             f"fields (flag bit 16 clear) and the image is not ELF")
        if len(data) >= 20 and struct.unpack_from("<H", data, 18)[0] == EM_X86_64:
            raise GuestError(f"{name}: cannot load an x86-64 ELF as a Multiboot kernel; "
                             f"give a 32-bit one")
        image = parse_elf(data, name)
        low, high = image.low_high()
        check_ranges(mem, name, [(f"segment {s.index}", s.paddr, s.paddr + s.memsz)
                                 for s in image.segments])
        ranges = [AddrRange(s.paddr, s.memsz) for s in image.segments if s.memsz]
        return _Kernel(low, high - low, image.physical_entry(), ranges,
                       lambda: place_elf(image, mem))
    if len(data) < off + 32:
        raise GuestError(f"{name}: truncated Multiboot header at offset {off:#x} "
                         f"(address fields need 32 bytes)")
    header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr = struct.unpack_from(
        "<IIIII", data, off + 12)
    if header_addr < load_addr:
        raise GuestError(f"{name}: invalid Multiboot load_addr {load_addr:#x} above "
                         f"header_addr {header_addr:#x}")
    if header_addr - load_addr > off:
        raise GuestError(f"{name}: invalid Multiboot load_addr {load_addr:#x}: the header at "
                         f"offset {off:#x} would start before the file")
    text_offset = off - (header_addr - load_addr)
    if load_end_addr:
        if load_end_addr < load_addr:
            raise GuestError(f"{name}: invalid Multiboot load_end_addr {load_end_addr:#x} "
                             f"below load_addr {load_addr:#x}")
        load_size = load_end_addr - load_addr
        if text_offset + load_size > len(data):
            raise GuestError(f"{name}: truncated: load_end_addr {load_end_addr:#x} needs "
                             f"file bytes up to offset {text_offset + load_size:#x} but the "
                             f"file has {len(data):#x}")
    else:
        load_size = len(data) - text_offset
    if bss_end_addr:
        if bss_end_addr < load_addr + load_size:
            raise GuestError(f"{name}: invalid Multiboot bss_end_addr {bss_end_addr:#x} below "
                             f"the end of the loaded image {load_addr + load_size:#x}")
        kernel_size = bss_end_addr - load_addr
    else:
        kernel_size = load_size
    if not load_addr <= entry_addr < load_addr + max(kernel_size, 1):
        raise GuestError(f"{name}: Multiboot entry_addr {entry_addr:#x} is outside the kernel "
                         f"[{load_addr:#x}, {load_addr + kernel_size:#x})")
    check_ranges(mem, name, [("kernel", load_addr, load_addr + kernel_size)])
    # The BSS needs no write: the whole buffer is zeroed first.
    return _Kernel(load_addr, kernel_size, entry_addr, [AddrRange(load_addr, kernel_size)],
                   lambda: mem.write(load_addr, data[text_offset : text_offset + load_size]))


def _module_list(modules: Sequence[ModuleSpec]) -> List[Tuple[bytes, str, str]]:
    # (bytes, string for the guest, name for messages)
    out = []
    for i, spec in enumerate(modules):
        if isinstance(spec, tuple):
            src, string = spec
        else:
            src, string = spec, ""
        data, name = read_source(src)
        if not string:
            string = name if not isinstance(src, (bytes, bytearray, memoryview)) else f"module{i}"
        out.append((data, string, name))
    return out


def load_multiboot(source: Source, mem: GuestMemory, *, cmdline: str = "",
                   modules: Sequence[ModuleSpec] = (), kernel_name: str | None = None
                   ) -> LoadedImage:
    """Load a Multiboot v1 kernel, its modules and boot information (QEMU's layout).

    Args:
        source: the kernel file or its bytes.
        mem: guest memory (``write``, ``ram_size``, ``e820()``).
        cmdline: the kernel command line (QEMU's ``-append``).
        modules: module files or ``(file or bytes, string)`` pairs (QEMU's ``-initrd``).
        kernel_name: the first word of the guest's command line (default: the
            file name as given, ``kernel`` for bytes).

    Raises:
        GuestError: no Multiboot header in the first 8 KiB, a truncated image,
            invalid header addresses, an x86-64 ELF, or anything that does not
            fit in guest RAM.
    """
    data, name = read_source(source)
    found = find_multiboot_header(data)
    if found is None:
        raise GuestError(f"{name}: no Multiboot header (magic {MULTIBOOT_HEADER_MAGIC:#x} with "
                         f"a valid checksum) in the first {MULTIBOOT_SEARCH} bytes")
    off, flags = found
    if flags & HEADER_VIDEO_MODE:
        logger.warning("%s: the Multiboot kernel asks for a video mode; none is set", name)
    kernel = _parse_kernel(data, name, mem, off, flags)
    load_addr, kernel_size, entry = kernel.load_addr, kernel.size, kernel.entry
    end = load_addr + kernel_size

    mods = _module_list(modules)
    if kernel_name is None:
        kernel_name = "kernel" if name == "<bytes>" else os.fspath(name)
    kcmdline = f"{kernel_name} {cmdline}"

    # QEMU's mb_buf: [kernel | pad] [module structs] [cmdlines] [loader name] | pad, then
    # each module | pad; the option ROM copies all of it to load_addr.
    buf_phys = load_addr
    off_mbinfo = _page_align(kernel_size)
    cmdline_bytes = [m[1].encode() + b"\0" for m in mods] + [kcmdline.encode() + b"\0"]
    cmdline_len = sum(len(c) for c in cmdline_bytes)
    off_cmdlines = off_mbinfo + MB_MOD_SIZE * len(mods)
    off_bootloader = off_cmdlines + cmdline_len
    loader_name = BOOTLOADER_NAME.encode() + b"\0"
    buf_size = _page_align(off_bootloader + len(loader_name))

    mod_entries = bytearray()
    cmd_blob = bytearray()
    writes: List[Tuple[str, int, bytes]] = []
    mod_info: List[Tuple[int, int, str]] = []
    for (mod_data, string, mod_name), cmd in zip(mods, cmdline_bytes):
        cmd_phys = buf_phys + off_cmdlines + len(cmd_blob)
        cmd_blob += cmd
        mod_start = buf_phys + buf_size
        buf_size = _page_align(buf_size + len(mod_data))
        mod_entries += struct.pack("<IIII", mod_start, mod_start + len(mod_data), cmd_phys, 0)
        writes.append((f"module {mod_name}", mod_start, mod_data))
        mod_info.append((mod_start, mod_start + len(mod_data), string))
    kcmd_phys = buf_phys + off_cmdlines + len(cmd_blob)
    cmd_blob += cmdline_bytes[-1]
    loader_phys = buf_phys + off_bootloader

    e820 = [(int(e[0]), int(e[1]), int(e[2])) for e in mem.e820()]
    mmap = b"".join(struct.pack("<IQQI", 20, a, n, t) for a, n, t in e820)
    if len(mmap) > MBI_ADDR - MMAP_ADDR:
        raise GuestError(f"{name}: the e820 map ({len(e820)} entries) does not fit below the "
                         f"Multiboot info at {MBI_ADDR:#x}")
    mem_lower, mem_upper = _mem_lower_upper(e820)
    mbi = bytearray(MBI_SIZE)
    struct.pack_into("<IIIIIII", mbi, 0,
                     MBI_FLAG_MEMORY | MBI_FLAG_BOOT_DEVICE | MBI_FLAG_CMDLINE
                     | MBI_FLAG_MODULES | MBI_FLAG_MMAP | MBI_FLAG_BOOTLOADER,
                     mem_lower, mem_upper, BOOT_DEVICE, kcmd_phys, len(mods),
                     buf_phys + off_mbinfo)
    struct.pack_into("<II", mbi, 44, len(mmap), MMAP_ADDR)
    struct.pack_into("<I", mbi, 64, loader_phys)

    info_blob = bytes(mod_entries) + bytes(cmd_blob) + loader_name
    check_ranges(mem, name, [("boot information", MMAP_ADDR, MBI_ADDR + MBI_SIZE),
                             ("Multiboot boot buffer (kernel, module list, command lines, "
                              "modules)", buf_phys, buf_phys + buf_size)])
    # The option ROM's order: the e820 map and the info structure first, then the
    # whole buffer over them (a kernel whose buffer covers 0x9000-0x9558 finds its
    # own bytes there, as on QEMU).
    mem.write(MMAP_ADDR, mmap)
    mem.write(MBI_ADDR, bytes(mbi))
    mem.write(buf_phys, bytes(buf_size))
    kernel.write()
    mem.write(buf_phys + off_mbinfo, info_blob)
    for _what, addr, blob in writes:
        mem.write(addr, blob)
    ranges = list(kernel.ranges) + [AddrRange(buf_phys, buf_size)]
    ranges += [AddrRange(buf_phys + off_mbinfo, len(info_blob)),
               AddrRange(MMAP_ADDR, MBI_ADDR + MBI_SIZE - MMAP_ADDR)]
    ranges += [AddrRange(a, len(b)) for _w, a, b in writes if b]
    covered = buf_phys < MBI_ADDR + MBI_SIZE and MMAP_ADDR < buf_phys + buf_size
    if covered:
        logger.warning("%s: the Multiboot buffer [%#x, %#x) covers the boot information "
                       "at [%#x, %#x): the kernel finds its own bytes there, as on QEMU",
                       name, buf_phys, buf_phys + buf_size, MMAP_ADDR, MBI_ADDR + MBI_SIZE)

    kind = "ELF32" if not flags & HEADER_AOUT_KLUDGE else "a.out kludge"
    return LoadedImage(
        entry=entry,
        mode="protected",
        regs={"rax": MULTIBOOT_BOOTLOADER_MAGIC, "rbx": MBI_ADDR},
        ranges=ranges,
        description=(f"Multiboot kernel {name} ({kind}, header at offset {off:#x}): "
                     f"[{load_addr:#x}, {end:#x}), entry {entry:#x}, {len(mods)} module(s)"),
        format="multiboot",
        page_tables=_page_align(buf_phys + buf_size),
        info={"mbi": MBI_ADDR, "mmap": MMAP_ADDR, "cmdline": kcmdline,
              "cmdline_addr": kcmd_phys, "modules": mod_info, "header_offset": off,
              "header_flags": flags, "load_addr": load_addr, "kernel_end": end,
              "buffer": (buf_phys, buf_phys + buf_size), "info_overwritten": covered},
    )


def _mem_lower_upper(e820: Sequence[Tuple[int, int, int]]) -> Tuple[int, int]:
    # mem_lower: conventional RAM (int 12h: 639 KiB with the EBDA reserved);
    # mem_upper: RAM contiguous from 1 MiB, as the option ROM computes it from e820.
    lower = 0
    for addr, size, typ in e820:
        if typ == 1 and addr == 0:
            lower = min(size, 0xA0000) // 1024
    top = 0x100000
    changed = True
    while changed:
        changed = False
        for addr, size, typ in e820:
            if typ == 1 and addr < (1 << 32) and addr <= top < addr + size:
                top = addr + size
                changed = True
    return lower, (top - 0x100000) // 1024
