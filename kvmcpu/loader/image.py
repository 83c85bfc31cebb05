"""What every loader returns, and the checks they share."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Protocol, Sequence, Tuple, Union

from kvmcpu.errors import GuestError
from kvmcpu.mem.range import AddrRange

__all__ = [
    "MODES",
    "DEFAULT_PAGE_TABLES",
    "GuestMemory",
    "LoadedImage",
    "Source",
    "check_ranges",
    "read_source",
]

#: The CPU modes a loaded image can start in.
MODES = ("real", "protected", "long")
#: Where a long-mode start's page tables and GDT go unless the image is there
#: (the ``page_tables`` default of :func:`kvmcpu.backends.modes.set_long_mode`).
DEFAULT_PAGE_TABLES = 0x9000
#: Bytes :func:`kvmcpu.backends.modes.set_long_mode` writes at ``page_tables``
#: (PML4, PDPT, one page directory per GiB mapped, GDT); 4 GiB mapped here.
PAGE_TABLE_BYTES = 0x2000 + 4 * 0x1000 + 0x100

#: An image: a file path or its bytes.
Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]


class GuestMemory(Protocol):
    """What loaders need from guest memory (a :class:`~kvmcpu.mem.PhysicalMemory`)."""

    ram_size: int

    def write(self, gpa: int, data: bytes) -> None: ...

    def e820(self) -> Sequence[Tuple[int, int, int]]: ...


@dataclass
class LoadedImage:
    """A guest image placed in memory, and how to start it.

    Attributes:
        entry: the entry point (a linear address; in real mode see :attr:`cs_ip`).
        mode: the CPU mode to start in: "real", "protected" (32-bit flat, paging
            off, as Multiboot specifies) or "long" (64-bit, identity-mapped paging).
        regs: initial general-purpose register values by lower-case name
            (``{"rax": 0x2BADB002, "rbx": 0x9500}`` for Multiboot).
        ranges: the guest-physical ranges the loader wrote.
        description: one line for logs and ``kvmcpu run``.
        format: "flat", "elf64", "elf32", "multiboot" or "bzimage".
        page_tables: a free, page-aligned address for a long-mode start's page
            tables and GDT (``set_long_mode(page_tables=...)``).
        info: loader-specific facts (Multiboot: ``mbi``, ``cmdline``, ``modules``).
        symbols: the ELF symbol table's named functions and objects (name ->
            address); empty for other formats and stripped images.
        gdt: ``(base, limit)`` of a GDT the loader wrote, to start with instead of
            the start state's own (None: the start state's).
        selectors: ``(code, data)`` selectors into :attr:`gdt` for CS and for
            DS/ES/FS/GS/SS (the Linux boot protocol's 0x10 and 0x18).
    """

    entry: int
    mode: str
    regs: Dict[str, int] = field(default_factory=dict)
    ranges: List[AddrRange] = field(default_factory=list)
    description: str = ""
    format: str = "flat"
    page_tables: int = DEFAULT_PAGE_TABLES
    info: Dict[str, object] = field(default_factory=dict)
    symbols: Dict[str, int] = field(default_factory=dict)
    gdt: Optional[Tuple[int, int]] = None
    selectors: Optional[Tuple[int, int]] = None

    @property
    def cs_ip(self) -> Tuple[int, int]:
        """The real-mode CS:IP for :attr:`entry` (CS 0 below 64 KiB, else entry >> 4)."""
        if self.entry < 0x10000:
            return 0, self.entry
        return (self.entry >> 4) & 0xFFFF, self.entry & 0xF

    @property
    def end(self) -> int:
        """One past the highest address written."""
        return max((r.end for r in self.ranges), default=0)


def read_source(source: Source) -> Tuple[bytes, str]:
    """The image bytes and a name for messages (the path, or ``<bytes>``).

    Raises:
        GuestError: the file cannot be read.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    name = os.fspath(source)
    try:
        return Path(name).read_bytes(), name
    except OSError as err:
        raise GuestError(f"{name}: cannot read image: {err.strerror or err}") from err


def _ram_ranges(mem: GuestMemory) -> List[Tuple[int, int]]:
    regions = getattr(mem, "regions", None)
    if regions is not None:  # a PhysicalMemory: what is really backed
        return sorted((int(r[0]), int(r[0]) + int(r[1].size)) for r in regions)
    return sorted((int(e[0]), int(e[0]) + int(e[1])) for e in mem.e820() if int(e[2]) == 1)


def check_ranges(mem: GuestMemory, name: str, ranges: Iterable[Tuple[str, int, int]]) -> None:
    """Check that every ``(what, start, end)`` lies in guest RAM.

    Raises:
        GuestError: naming the image, the piece and the addresses, and the MMIO
            hole when the piece falls into it.
    """
    ram = _ram_ranges(mem)
    hole_start = getattr(mem, "hole_start", None)
    hole_end = getattr(mem, "hole_end", None)
    for what, start, end in ranges:
        if end <= start:
            continue
        pos = start
        for lo, hi in ram:
            if lo <= pos < hi:
                pos = hi
                if pos >= end:
                    break
        if pos >= end:
            continue
        where = ", ".join(f"[{lo:#x}, {hi:#x})" for lo, hi in ram)
        if (isinstance(hole_start, int) and isinstance(hole_end, int)
                and start < hole_end and hole_start < end):
            raise GuestError(
                f"{name}: {what} [{start:#x}, {end:#x}) overlaps the MMIO hole "
                f"[{hole_start:#x}, {hole_end:#x}) (guest RAM is {where})"
            )
        raise GuestError(
            f"{name}: {what} [{start:#x}, {end:#x}) is outside guest RAM (RAM is {where})"
        )


def free_page_tables(ranges: Iterable[AddrRange]) -> int:
    """:data:`DEFAULT_PAGE_TABLES`, or the first page after the image when that overlaps."""
    rs = list(ranges)
    probe = AddrRange(DEFAULT_PAGE_TABLES, PAGE_TABLE_BYTES)
    if not any(r.overlaps(probe) for r in rs):
        return DEFAULT_PAGE_TABLES
    top = max(r.end for r in rs)
    return (top + 0xFFF) & ~0xFFF
