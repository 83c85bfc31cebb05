"""Flat binaries: bytes copied to a load address, started at an entry point."""

from __future__ import annotations

from kvmcpu.errors import ConfigError, GuestError
from kvmcpu.loader.image import (
    MODES,
    GuestMemory,
    LoadedImage,
    Source,
    check_ranges,
    free_page_tables,
    read_source,
)
from kvmcpu.mem.range import AddrRange

__all__ = ["load_flat"]


def load_flat(source: Source, mem: GuestMemory, *, load_addr: int, entry: int | None = None,
              mode: str = "real") -> LoadedImage:
    """Copy a flat binary to ``load_addr`` and describe how to start it.

    Args:
        source: file path or the image bytes.
        mem: guest memory.
        load_addr: guest-physical address of the first byte.
        entry: where execution starts (default ``load_addr``).
        mode: "real", "protected" or "long".

    Raises:
        ConfigError: an unknown mode or a negative address.
        GuestError: the file cannot be read, is empty, or does not fit in RAM.
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if load_addr < 0:
        raise ConfigError(f"load_addr must be non-negative, got {load_addr:#x}")
    data, name = read_source(source)
    if not data:
        raise GuestError(f"{name}: image is empty")
    start = load_addr if entry is None else entry
    end = load_addr + len(data)
    check_ranges(mem, name, [("image", load_addr, end)])
    if mode == "real" and (end > 0x110000 or start >= 0x100000):
        raise ConfigError(
            f"{name}: a real-mode image must lie below 1 MiB, got [{load_addr:#x}, {end:#x}) "
            f"with entry {start:#x}"
        )
    mem.write(load_addr, data)
    ranges = [AddrRange(load_addr, len(data))]
    return LoadedImage(
        entry=start,
        mode=mode,
        ranges=ranges,
        description=f"flat binary {name}: {len(data)} bytes at {load_addr:#x}, "
                    f"entry {start:#x} ({mode} mode)",
        format="flat",
        page_tables=free_page_tables(ranges),
    )
