"""Guest physical memory laid out like a PC, and memory-size strings.

:class:`PhysicalMemory` allocates guest RAM as :class:`~kvmcpu.hostmem.HostMemory`
regions the way QEMU's ``pc`` machine does: RAM from 0 up to the start of the
PCI hole (3 GiB by default), the rest from 4 GiB up. The System registers each
region with ``Vm.set_user_memory_region``; loaders and devices read and write
guest memory through :meth:`PhysicalMemory.read`/:meth:`PhysicalMemory.write`.
"""

from __future__ import annotations

import errno
import re
from typing import Dict, Iterator, List, NamedTuple, Tuple, Union

from kvmcpu.errors import ClosedError, ConfigError, GuestError
from kvmcpu.hostmem import PAGE_SIZE, HostMemory

__all__ = [
    "E820_RAM",
    "E820_RESERVED",
    "BIOS_AREA_START",
    "BIOS_AREA_END",
    "BIOS_ROM_START",
    "E820Entry",
    "PhysicalMemory",
    "RamRegion",
    "parse_size",
]

#: e820 type of usable RAM.
E820_RAM = 1
#: e820 type of reserved memory.
E820_RESERVED = 2
#: Start of the EBDA SeaBIOS reserves below 640 KiB (base memory: 639 KiB).
BIOS_AREA_START = 0x9FC00
#: End of the EBDA (the VGA hole 0xa0000-0xeffff is not in SeaBIOS's map).
EBDA_END = 0xA0000
#: The BIOS area SeaBIOS reports reserved below 1 MiB (the firmware tables' area).
BIOS_FSEG_START = 0xF0000
#: End of the reserved area below 1 MiB.
BIOS_AREA_END = 0x100000
#: The top of the RAM below the PCI hole that SeaBIOS keeps reserved for its own
#: tables (128 KiB with QEMU's pc defaults).
SEABIOS_HIGH_TABLES = 0x20000
#: The 16 KiB QEMU on KVM reserves for KVM's identity map and TSS pages.
KVM_IDENTITY_MAP = (0xFEFFC000, 0x4000)
#: Start of the 256 KiB BIOS ROM alias below 4 GiB that QEMU reports as reserved.
BIOS_ROM_START = 0xFFFC0000

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(0x[0-9a-f]+|\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(value: Union[str, int]) -> int:
    """A memory size in bytes from ``"128M"``, ``"2GiB"``, ``"4096"`` or an int.

    Suffixes K, M, G, T (optionally followed by B or iB) are binary multiples,
    as in QEMU's ``-m``; a bare number is bytes.

    Raises:
        ConfigError: the value is not a size, or is negative.
    """
    if isinstance(value, bool):
        raise ConfigError(f"invalid memory size {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"invalid memory size {value!r}: negative")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"invalid memory size {value!r}: expected a string like '128M'")
    m = _SIZE_RE.match(value)
    if m is None or (m.group(3) and m.group(3).lower() == "ib" and not m.group(2)):
        raise ConfigError(
            f"invalid memory size {value!r}: expected a number with an optional "
            f"K/M/G/T suffix (e.g. '128M', '2GiB')"
        )
    number = int(m.group(1), 0)
    return number * _UNITS[m.group(2).upper()]


def format_size(nbytes: int) -> str:
    """``"128 MiB"``, ``"1 TiB"``, ``"1.5 GiB"``: bytes in the largest binary unit."""
    for unit, name in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if nbytes >= unit:
            return f"{nbytes / unit:.3g} {name}"
    return f"{nbytes} bytes"


def host_meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (``MemTotal``, ``MemAvailable``, ...); empty if unreadable."""
    facts: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields = rest.split()
                if fields and fields[0].isdigit():
                    facts[key] = int(fields[0]) * 1024
    except OSError:
        pass
    return facts


#: Bytes of kernel memory KVM keeps per 4 KiB page of a memory slot when it uses
#: shadow paging (the 4 KiB rmap entry; the huge-page levels add under 1 %).
KVM_SHADOW_BYTES_PER_PAGE = 8


def kvm_shadow_paging(sys_module: str = "/sys/module") -> bool:
    """True when this host's KVM uses shadow paging for every VM (``kvm.tdp_mmu=N``):
    then registering guest RAM costs :data:`KVM_SHADOW_BYTES_PER_PAGE` of zeroed
    kernel memory per 4 KiB page, allocated when the slot is created."""
    try:
        with open(f"{sys_module}/kvm/parameters/tdp_mmu", encoding="ascii") as f:
            return f.read().strip() in ("N", "n", "0")
    except OSError:
        return False


def host_memory_note() -> str:
    """What the host can give guest RAM (from /proc/meminfo), for error messages."""
    facts = host_meminfo()
    total, avail = facts.get("MemTotal"), facts.get("MemAvailable")
    if total is None:
        return "the host's memory is unknown"
    note = f"the host has {format_size(total)} of RAM"
    if avail is not None:
        note += f" ({format_size(avail)} available)"
    return note + (", and guest RAM is reserved lazily: only the pages the guest touches "
                   "take host memory, but the whole size must fit in the address space")


class RamRegion(NamedTuple):
    """One block of guest RAM: its guest-physical address and its host buffer."""

    gpa: int
    host: HostMemory

    @property
    def size(self) -> int:
        return self.host.size

    @property
    def end(self) -> int:
        return self.gpa + self.host.size


class E820Entry(NamedTuple):
    """One BIOS e820 map entry (what ``int 15h, eax=e820h`` returns)."""

    addr: int
    size: int
    type: int

    @property
    def end(self) -> int:
        return self.addr + self.size


class PhysicalMemory:
    """Guest RAM of ``size`` bytes split around the PCI hole, like a PC.

    Args:
        size: RAM size in bytes or a size string (``"128M"``); a page multiple.
        hole_start: where the PCI/MMIO hole below 4 GiB starts (RAM above it is
            moved to ``hole_end``).
        hole_end: where RAM resumes (4 GiB).
        noreserve: map with MAP_NORESERVE so untouched RAM costs nothing.

    Raises:
        ConfigError: a size or hole that is not page-aligned, or an empty RAM.
    """

    def __init__(
        self,
        size: Union[int, str],
        *,
        hole_start: int = 0xC000_0000,
        hole_end: int = 0x1_0000_0000,
        noreserve: bool = True,
    ) -> None:
        nbytes = parse_size(size)
        if nbytes <= 0 or nbytes % PAGE_SIZE:
            raise ConfigError(
                f"memory size {size!r} must be a positive multiple of {PAGE_SIZE} bytes"
            )
        if hole_start % PAGE_SIZE or hole_end % PAGE_SIZE or not 0 < hole_start <= hole_end:
            raise ConfigError(
                f"PCI hole [{hole_start:#x}, {hole_end:#x}) must be page-aligned and "
                f"start above 0"
            )
        self.hole_start = hole_start
        self.hole_end = hole_end
        low = min(nbytes, hole_start)
        high = nbytes - low
        #: guest-physical address -> the byte reads show in place of RAM's (the
        #: original bytes under a debugger's INT3 patches, kvmcpu.cpu.kvm.swbreak);
        #: a write there changes the shown byte and leaves RAM's as it is.
        self.overlay: Dict[int, int] = {}
        self.regions: List[RamRegion] = []
        try:
            self.regions.append(RamRegion(0, HostMemory(low, noreserve=noreserve)))
            if high:
                self.regions.append(RamRegion(hole_end, HostMemory(high, noreserve=noreserve)))
        except OSError as err:
            self.close()
            if err.errno != errno.ENOMEM:
                raise
            raise ConfigError(
                f"guest RAM of {format_size(nbytes)}: the host cannot map it "
                f"({err.strerror}); {host_memory_note()}"
            ) from err
        #: Total RAM in bytes.
        self.ram_size = nbytes
        #: RAM below the hole (bytes from address 0).
        self.below_hole = low
        #: RAM above the hole (bytes from :attr:`hole_end`).
        self.above_hole = high

    # -- addressing ----------------------------------------------------------------
    def is_ram(self, gpa: int, size: int = 1) -> bool:
        """True when ``[gpa, gpa + size)`` is RAM (possibly spanning regions)."""
        return all(self._split(gpa, size, strict=False))

    def _split(
        self, gpa: int, size: int, *, strict: bool = True
    ) -> Iterator[Tuple[HostMemory, int, int, int]]:
        # Yields (host, offset in host, offset in the access, length) per piece; a
        # falsy tuple marks a hole when not strict.
        self._check_open()
        done = 0
        while done < size:
            addr = gpa + done
            for region in self.regions:
                if region.gpa <= addr < region.end:
                    n = min(size - done, region.end - addr)
                    yield (region.host, addr - region.gpa, done, n)
                    done += n
                    break
            else:
                if strict:
                    raise GuestError(
                        f"guest-physical access [{gpa:#x}, {gpa + size:#x}) is outside RAM "
                        f"(no RAM at {addr:#x}; {self.describe()})"
                    )
                yield ()  # type: ignore[misc]
                return

    def _ram_byte(self, gpa: int) -> int:
        for host, off, _pos, _n in self._split(gpa, 1):
            return int(host.view[off])
        raise GuestError(f"no RAM at {gpa:#x}")  # pragma: no cover - _split raised

    def read(self, gpa: int, size: int) -> bytes:
        """Copy ``size`` bytes of guest RAM from ``gpa``.

        Raises:
            GuestError: part of the range is not RAM.
        """
        if size < 0 or gpa < 0:
            raise ValueError(f"invalid read of {size} bytes at {gpa:#x}")
        out = bytearray(size)
        for host, off, pos, n in self._split(gpa, size):
            out[pos : pos + n] = host.view[off : off + n]
        for addr, byte in self.overlay.items():
            if gpa <= addr < gpa + size:
                out[addr - gpa] = byte
        return bytes(out)

    def write(self, gpa: int, data: Union[bytes, bytearray, memoryview]) -> None:
        """Copy ``data`` into guest RAM at ``gpa`` (may span regions).

        Raises:
            GuestError: part of the range is not RAM (nothing is written then).
        """
        if gpa < 0:
            raise ValueError(f"invalid write at {gpa:#x}")
        mv = memoryview(data).cast("B")
        pieces = list(self._split(gpa, len(mv)))
        # overlaid bytes keep RAM's value; what is written there goes to the overlay
        kept = {a: self._ram_byte(a) for a in self.overlay if gpa <= a < gpa + len(mv)}
        for host, off, pos, n in pieces:
            host.view[off : off + n] = mv[pos : pos + n]
            host.notify_written(off, n)
        for addr, byte in kept.items():
            self.overlay[addr] = mv[addr - gpa]
            for host, off, _pos, _n in self._split(addr, 1):
                host.view[off] = byte
                host.notify_written(off, 1)

    def fill(self, gpa: int, size: int, byte: int = 0) -> None:
        """Set ``size`` bytes at ``gpa`` to ``byte`` (zero-filling a BSS)."""
        pieces = list(self._split(gpa, size))
        for host, off, _pos, n in pieces:
            host.view[off : off + n] = bytes([byte]) * n
            host.notify_written(off, n)

    def view(self, gpa: int, size: int) -> memoryview:
        """A writable view of ``size`` bytes at ``gpa`` (must lie in one region). Writes
        through it are not seen by a mock vCPU's code cache until ``notify_written``."""
        self._check_open()
        for region in self.regions:
            if region.gpa <= gpa and gpa + size <= region.end:
                off = gpa - region.gpa
                return region.host.view[off : off + size]
        raise GuestError(f"[{gpa:#x}, {gpa + size:#x}) is not inside one RAM region")

    def read_u32(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 4), "little")

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    # -- the firmware's view -------------------------------------------------------
    def e820(self) -> List[E820Entry]:
        """The e820 map SeaBIOS reports on QEMU's ``pc`` machine (with KVM) for this
        RAM, sorted by address, entry for entry:

        RAM 0-0x9fc00 (639 KiB); the EBDA 0x9fc00-0xa0000 and the BIOS area
        0xf0000-0x100000 reserved (0xa0000-0xeffff, VGA and option ROMs, is not
        listed); RAM from 1 MiB up to 128 KiB below the hole, and those 128 KiB
        reserved (SeaBIOS's high tables); QEMU+KVM's identity-map/TSS pages at
        0xfeffc000 and the BIOS ROM alias below 4 GiB reserved; RAM above 4 GiB.
        """
        low = self.below_hole
        entries = [E820Entry(0, min(low, BIOS_AREA_START), E820_RAM)]
        entries.append(E820Entry(BIOS_AREA_START, EBDA_END - BIOS_AREA_START, E820_RESERVED))
        entries.append(E820Entry(BIOS_FSEG_START, BIOS_AREA_END - BIOS_FSEG_START,
                                 E820_RESERVED))
        high_tables = max(BIOS_AREA_END, low - SEABIOS_HIGH_TABLES)
        if high_tables > BIOS_AREA_END:
            entries.append(E820Entry(BIOS_AREA_END, high_tables - BIOS_AREA_END, E820_RAM))
        if low > high_tables:
            entries.append(E820Entry(high_tables, low - high_tables, E820_RESERVED))
        if self.hole_end == 0x1_0000_0000:
            for start, size in (KVM_IDENTITY_MAP, (BIOS_ROM_START, 0x1_0000_0000 - BIOS_ROM_START)):
                if self.hole_start <= start:
                    entries.append(E820Entry(start, size, E820_RESERVED))
        if self.above_hole:
            entries.append(E820Entry(self.hole_end, self.above_hole, E820_RAM))
        return entries

    @property
    def mem_lower_kib(self) -> int:
        """Conventional memory in KiB (the multiboot ``mem_lower``: 639 on a PC)."""
        return min(self.below_hole, BIOS_AREA_START) // 1024

    @property
    def mem_upper_kib(self) -> int:
        """KiB of RAM from 1 MiB up to the first hole in the e820 map (the multiboot
        ``mem_upper``)."""
        top = max(BIOS_AREA_END, self.below_hole - SEABIOS_HIGH_TABLES)
        return (top - BIOS_AREA_END) // 1024

    def describe(self) -> str:
        """The RAM regions as text, e.g. ``RAM [0x0, 0x8000000)``."""
        return "RAM " + ", ".join(f"[{r.gpa:#x}, {r.end:#x})" for r in self.regions)

    # -- lifetime ------------------------------------------------------------------
    def close(self) -> None:
        """Unmap every region. Idempotent."""
        for region in self.regions:
            region.host.close()

    @property
    def closed(self) -> bool:
        return all(r.host.closed for r in self.regions)

    def _check_open(self) -> None:
        if any(r.host.closed for r in self.regions):
            raise ClosedError("PhysicalMemory is closed")

    def __enter__(self) -> PhysicalMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PhysicalMemory {self.ram_size:#x} bytes: {self.describe()}>"
