"""ELF executables: PT_LOAD segments copied to their physical addresses.

ELF64 (x86-64) images start in 64-bit long mode at ``e_entry`` with
identity-mapped paging; ELF32 (i386) images start in 32-bit flat protected
mode (the Multiboot loader uses the same parser for its ELF kernels).
Segments are loaded at ``p_paddr``, ``p_filesz`` bytes from the file and the
rest of ``p_memsz`` zero-filled; an entry point given as a virtual address
inside a segment whose ``p_vaddr`` differs from ``p_paddr`` is translated to
the physical address, as QEMU does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Dict, List, Tuple

from kvmcpu.errors import GuestError
from kvmcpu.loader.image import (
    GuestMemory,
    LoadedImage,
    Source,
    check_ranges,
    free_page_tables,
    read_source,
)
from kvmcpu.mem.range import AddrRange

__all__ = ["ELF_MAGIC", "EM_386", "EM_X86_64", "NOT_A_KERNEL", "ElfImage", "ElfSegment",
           "load_elf", "parse_elf"]

ELF_MAGIC = b"\x7fELF"
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ET_EXEC = 2
ET_DYN = 3
EM_386 = 3
EM_X86_64 = 62
PT_LOAD = 1
PT_INTERP = 3
#: The start of every refusal of a user-space program (what QEMU's -kernel refuses too).
NOT_A_KERNEL = "not a kernel (a dynamically linked program?)"
_CLASS_NAMES = {ELFCLASS32: "ELF32", ELFCLASS64: "ELF64"}
_MACHINE = {ELFCLASS32: (EM_386, "i386"), ELFCLASS64: (EM_X86_64, "x86-64")}


@dataclass
class ElfSegment:
    """One PT_LOAD program header."""

    index: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


@dataclass
class ElfImage:
    """A parsed ELF executable (nothing loaded yet)."""

    name: str
    elf_class: int
    machine: int
    entry: int
    segments: List[ElfSegment]
    data: bytes

    @property
    def bits(self) -> int:
        return 64 if self.elf_class == ELFCLASS64 else 32

    def low_high(self) -> Tuple[int, int]:
        """Lowest and one-past-highest physical address of the loaded segments."""
        return (min(s.paddr for s in self.segments),
                max(s.paddr + s.memsz for s in self.segments))

    def physical_entry(self) -> int:
        """The entry point as a physical address."""
        for seg in self.segments:
            if seg.vaddr <= self.entry < seg.vaddr + seg.memsz and seg.vaddr != seg.paddr:
                return self.entry - seg.vaddr + seg.paddr
        return self.entry


def parse_elf(data: bytes, name: str) -> ElfImage:
    """Parse and validate an x86 ELF executable.

    Raises:
        GuestError: not ELF, truncated, big-endian, an unsupported class or
            machine, not an executable, no PT_LOAD segment, a segment whose file
            bytes lie past the end of the file or whose filesz exceeds memsz, an
            entry point outside every PT_LOAD segment; or a user-space program
            rather than a kernel (:data:`NOT_A_KERNEL`): a PT_INTERP header, or
            ET_DYN linked at address 0 (no load address).
    """
    if data[:4] != ELF_MAGIC:
        raise GuestError(f"{name}: not an ELF file (bad magic at offset 0)")
    if len(data) < 16:
        raise GuestError(f"{name}: truncated ELF header ({len(data)} bytes, 16 needed for "
                         f"the identification)")
    elf_class, encoding = data[4], data[5]
    if elf_class not in _CLASS_NAMES:
        raise GuestError(f"{name}: unsupported ELF class {elf_class} at offset 4 "
                         f"(expected 1 = ELF32 or 2 = ELF64)")
    if encoding != ELFDATA2LSB:
        raise GuestError(f"{name}: unsupported ELF data encoding {encoding} at offset 5 "
                         f"(only little-endian)")
    if elf_class == ELFCLASS64:
        hdr_fmt, ph_fmt = "<HHIQQQIHHHHHH", "<IIQQQQQQ"
    else:
        hdr_fmt, ph_fmt = "<HHIIIIIHHHHHH", "<IIIIIIII"
    hdr_size = 16 + struct.calcsize(hdr_fmt)
    if len(data) < hdr_size:
        raise GuestError(f"{name}: truncated ELF header ({len(data)} bytes, "
                         f"{hdr_size} needed)")
    (e_type, e_machine, _version, e_entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize,
     e_phnum, _shentsize, _shnum, _shstrndx) = struct.unpack_from(hdr_fmt, data, 16)
    want_machine, machine_name = _MACHINE[elf_class]
    if e_machine != want_machine:
        raise GuestError(f"{name}: unsupported ELF machine {e_machine} at offset 18 for "
                         f"{_CLASS_NAMES[elf_class]} (expected {want_machine} = {machine_name})")
    if e_type not in (ET_EXEC, ET_DYN):
        raise GuestError(f"{name}: ELF type {e_type} at offset 16 is not an executable")
    ph_size = struct.calcsize(ph_fmt)
    if e_phnum == 0:
        raise GuestError(f"{name}: ELF has no program headers")
    if e_phentsize < ph_size:
        raise GuestError(f"{name}: ELF program header size {e_phentsize} at offset "
                         f"{hdr_size - 10} is smaller than {ph_size}")
    if e_phoff + e_phnum * e_phentsize > len(data):
        raise GuestError(f"{name}: truncated: program headers at offset {e_phoff:#x} "
                         f"({e_phnum} x {e_phentsize} bytes) end past the file "
                         f"({len(data):#x} bytes)")
    segments: List[ElfSegment] = []
    interp = None
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        if elf_class == ELFCLASS64:
            p_type, _pf, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _al = struct.unpack_from(
                ph_fmt, data, off)
        else:
            p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _pf, _al = struct.unpack_from(
                ph_fmt, data, off)
        if p_type == PT_INTERP:
            raw = data[p_offset : p_offset + min(p_filesz, 256)]
            interp = raw.split(b"\0", 1)[0].decode("ascii", "replace") or "?"
        if p_type != PT_LOAD or p_memsz == 0:
            continue
        if p_filesz > p_memsz:
            raise GuestError(f"{name}: segment {i} (program header at offset {off:#x}) has "
                             f"filesz {p_filesz:#x} > memsz {p_memsz:#x}")
        if p_offset + p_filesz > len(data):
            raise GuestError(f"{name}: truncated: segment {i} needs file bytes "
                             f"[{p_offset:#x}, {p_offset + p_filesz:#x}) but the file has "
                             f"{len(data):#x}")
        segments.append(ElfSegment(i, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz))
    if interp is not None:
        raise GuestError(f"{name}: {NOT_A_KERNEL}: it names a program interpreter "
                         f"(PT_INTERP {interp}); a kernel is a static ELF executable")
    if not segments:
        raise GuestError(f"{name}: ELF has no PT_LOAD segment")
    if e_type == ET_DYN and min(s.paddr for s in segments) == 0 and \
            min(s.vaddr for s in segments) == 0:
        raise GuestError(f"{name}: {NOT_A_KERNEL}: a position-independent ELF (ET_DYN) "
                         f"linked at address 0 has no load address")
    if not any(s.vaddr <= e_entry < s.vaddr + s.memsz or s.paddr <= e_entry < s.paddr + s.memsz
               for s in segments):
        raise GuestError(f"{name}: entry point {e_entry:#x} at offset 24 is outside every "
                         f"PT_LOAD segment: not a kernel image")
    ordered = sorted(segments, key=lambda s: s.paddr)
    for a, b in zip(ordered, ordered[1:]):
        if a.paddr + a.memsz > b.paddr:
            raise GuestError(f"{name}: segments {a.index} [{a.paddr:#x}, "
                             f"{a.paddr + a.memsz:#x}) and {b.index} [{b.paddr:#x}, "
                             f"{b.paddr + b.memsz:#x}) overlap")
    return ElfImage(name, elf_class, e_machine, e_entry, segments, data)


def place_elf(image: ElfImage, mem: GuestMemory) -> List[AddrRange]:
    """Check and copy every segment of ``image`` into ``mem``; returns the ranges."""
    check_ranges(mem, image.name, [
        (f"segment {s.index}", s.paddr, s.paddr + s.memsz) for s in image.segments
    ])
    ranges = []
    for seg in image.segments:
        mem.write(seg.paddr, image.data[seg.offset : seg.offset + seg.filesz])
        if seg.memsz > seg.filesz:
            mem.write(seg.paddr + seg.filesz, bytes(seg.memsz - seg.filesz))
        ranges.append(AddrRange(seg.paddr, seg.memsz))
    return ranges


def load_elf(source: Source, mem: GuestMemory) -> LoadedImage:
    """Load an ELF64 (long mode) or ELF32 (protected mode) executable.

    Raises:
        GuestError: see :func:`parse_elf`; or a segment outside RAM / in the MMIO hole.
    """
    data, name = read_source(source)
    image = parse_elf(data, name)
    ranges = place_elf(image, mem)
    entry = image.physical_entry()
    mode = "long" if image.bits == 64 else "protected"
    fmt = f"elf{image.bits}"
    low, high = image.low_high()
    return LoadedImage(
        entry=entry,
        mode=mode,
        ranges=ranges,
        description=(f"{fmt.upper()} {name}: {len(image.segments)} segment(s) in "
                     f"[{low:#x}, {high:#x}), entry {entry:#x} ({mode} mode)"),
        format=fmt,
        page_tables=free_page_tables(ranges),
        symbols=elf_symbols(data),
    )


def elf_symbols(data: bytes) -> Dict[str, int]:
    """The named symbols of an ELF image's ``SHT_SYMTAB`` (name -> value), without
    section and file symbols; empty when the image has no symbol table (stripped,
    or hand-written without sections). Malformed section headers give an empty
    table rather than an error: symbols are a debugging aid, not needed to load."""
    try:
        return _elf_symbols(data)
    except (struct.error, IndexError, UnicodeDecodeError):
        return {}


def _elf_symbols(data: bytes) -> Dict[str, int]:
    is64 = data[4] == ELFCLASS64
    if is64:
        e_shoff, = struct.unpack_from("<Q", data, 0x28)
        e_shentsize, e_shnum = struct.unpack_from("<HH", data, 0x3A)
        sh_fmt, sym_fmt = "<IIQQQQIIQQ", "<IBBHQQ"
    else:
        e_shoff, = struct.unpack_from("<I", data, 0x20)
        e_shentsize, e_shnum = struct.unpack_from("<HH", data, 0x2E)
        sh_fmt, sym_fmt = "<IIIIIIIIII", "<IIIBBH"
    if not e_shoff or not e_shnum:
        return {}
    sections = [struct.unpack_from(sh_fmt, data, e_shoff + i * e_shentsize)
                for i in range(e_shnum)]
    out: Dict[str, int] = {}
    sym_size = struct.calcsize(sym_fmt)
    for sh in sections:
        _name, sh_type, _flags, _addr, sh_offset, sh_size, sh_link = sh[:7]
        if sh_type != 2:  # SHT_SYMTAB
            continue
        strtab = sections[sh_link]
        str_off, str_size = strtab[4], strtab[5]
        strings = data[str_off: str_off + str_size]
        for off in range(sh_offset + sym_size, sh_offset + sh_size, sym_size):
            if is64:
                st_name, st_info, _other, shndx, value, _size = struct.unpack_from(
                    sym_fmt, data, off)
            else:
                st_name, value, _size, st_info, _other, shndx = struct.unpack_from(
                    sym_fmt, data, off)
            if not st_name or shndx == 0 or st_info & 0xF in (3, 4):  # SECTION, FILE
                continue
            end = strings.index(b"\0", st_name)
            out.setdefault(strings[st_name:end].decode("ascii"), value)
    return out
