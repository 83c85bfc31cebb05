"""Guest image loaders: flat binaries, ELF64 (and ELF32), Multiboot v1 as QEMU loads it,
and Linux bzImage kernels through the x86 boot protocol (``bzimage.py``).

Every loader writes into guest memory (a :class:`~kvmcpu.mem.PhysicalMemory`,
or anything with ``write(gpa, data)``, ``ram_size`` and ``e820()``) and
returns a :class:`LoadedImage` saying where to start and in which CPU mode.
:func:`load_image` picks the loader from the image's contents.
"""

from __future__ import annotations

import logging
from typing import Sequence

from kvmcpu.errors import ConfigError, GuestError
from kvmcpu.loader.bzimage import is_bzimage, load_bzimage
from kvmcpu.loader.elf import ELF_MAGIC, ElfImage, ElfSegment, load_elf, parse_elf
from kvmcpu.loader.flat import load_flat
from kvmcpu.loader.image import MODES, GuestMemory, LoadedImage, Source, read_source
from kvmcpu.loader.multiboot import (
    MBI_ADDR,
    MMAP_ADDR,
    MULTIBOOT_BOOTLOADER_MAGIC,
    ModuleSpec,
    find_multiboot_header,
    load_multiboot,
)

__all__ = [
    "FLAT_EXTENSIONS",
    "FORMATS",
    "MBI_ADDR",
    "MMAP_ADDR",
    "MODES",
    "MULTIBOOT_BOOTLOADER_MAGIC",
    "ElfImage",
    "ElfSegment",
    "GuestMemory",
    "LoadedImage",
    "ModuleSpec",
    "detect_format",
    "find_multiboot_header",
    "load_elf",
    "load_flat",
    "load_bzimage",
    "load_image",
    "load_multiboot",
    "parse_elf",
]

logger = logging.getLogger("kvmcpu.loader")

#: The values of ``load_image(fmt=...)``.
FORMATS = ("auto", "bzimage", "multiboot", "elf", "flat")
#: Where :func:`load_image` puts a flat image by default: a boot sector's address.
FLAT_DEFAULT_ADDR = 0x7C00


#: File name extensions ``fmt="auto"`` loads as flat binaries (anything else that is
#: neither Multiboot nor ELF needs ``fmt="flat"``).
FLAT_EXTENSIONS = (".bin", ".img")


def detect_format(data: bytes, name: str = "<bytes>") -> str:
    """"bzimage" for the Linux boot protocol's ``HdrS`` magic at 0x202, else
    "multiboot" when a Multiboot header is found, else "elf" for ELF, else "flat"
    when ``name`` ends in one of :data:`FLAT_EXTENSIONS`.

    Raises:
        GuestError: none of these: the image is not recognised.
    """
    if is_bzimage(data):
        return "bzimage"
    if find_multiboot_header(data) is not None:
        return "multiboot"
    if data[:4] == ELF_MAGIC:
        return "elf"
    if name.lower().endswith(FLAT_EXTENSIONS):
        return "flat"
    raise GuestError(
        f"{name}: not a recognised kernel image (no Linux 'HdrS' setup header, no "
        f"Multiboot header in the first 8 KiB, not ELF); to run it as a flat binary say so "
        f"(--format flat, fmt='flat') or name "
        f"it *{' or *'.join(FLAT_EXTENSIONS)}"
    )


def load_image(
    source: Source,
    mem: GuestMemory,
    *,
    fmt: str = "auto",
    cmdline: str = "",
    modules: Sequence[ModuleSpec] = (),
    load_addr: int | None = None,
    entry: int | None = None,
    mode: str | None = None,
    initrd: Source | None = None,
) -> LoadedImage:
    """Load an image, choosing the loader like QEMU's ``-kernel`` would.

    ``fmt="auto"`` picks a Linux bzImage when the boot protocol's ``HdrS`` magic
    is at 0x202, then Multiboot when a valid header is in the first 8 KiB,
    then ELF (a kernel: user-space programs are refused), then flat only for a
    file named ``*.bin`` or ``*.img`` (:data:`FLAT_EXTENSIONS`); anything else
    is refused (bytes included): say ``fmt="flat"``. A flat image goes to
    ``load_addr`` (default 0x7c00) and starts at ``entry`` (default
    ``load_addr``) in ``mode`` (default real).

    Args:
        source: the image file or its bytes.
        mem: guest memory.
        fmt: "auto", "multiboot", "elf" or "flat".
        cmdline: the kernel command line (bzImage and Multiboot).
        modules: Multiboot modules (paths or ``(path or bytes, string)``).
        load_addr: flat images only.
        entry: flat images only.
        mode: flat images only ("real", "protected" or "long").
        initrd: bzImage only: the initial ramdisk (a path or bytes).

    Raises:
        ConfigError: an unknown ``fmt``, or flat-only options for another format.
        GuestError: the image is invalid or does not fit (the message names the
            file, the offset or addresses, and the problem).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"image format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    data, name = read_source(source)
    kind = detect_format(data, name) if fmt == "auto" else fmt
    if kind not in ("multiboot", "bzimage") and cmdline:
        logger.warning("%s: %s image: the command line is ignored (only Multiboot and "
                       "Linux kernels take one)", name, kind)
    if kind != "multiboot" and modules:
        logger.warning("%s: %s image: the modules are ignored (only Multiboot kernels "
                       "take them)", name, kind)
    if kind != "bzimage" and initrd is not None:
        raise ConfigError(f"{name}: an initrd applies to Linux bzImage kernels only, "
                          f"this is {kind}")
    if kind != "flat" and (load_addr is not None or entry is not None or mode is not None):
        raise ConfigError(f"{name}: load_addr, entry and mode apply to flat images only, "
                          f"this is {kind}")
    # The loaders read ``source`` again themselves, so their messages name the file.
    if kind == "bzimage":
        return load_bzimage(source, mem, cmdline=cmdline, initrd=initrd)
    if kind == "multiboot":
        return load_multiboot(source, mem, cmdline=cmdline, modules=modules)
    if kind == "elf":
        return load_elf(source, mem)
    return load_flat(source, mem, load_addr=FLAT_DEFAULT_ADDR if load_addr is None
                     else load_addr, entry=entry, mode=mode or "real")
