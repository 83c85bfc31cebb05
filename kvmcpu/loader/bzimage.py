"""Linux bzImage kernels: the x86 boot protocol (the kernel's ``Documentation/arch/x86/boot.rst``).

The loader skips the real-mode setup code and enters the kernel the way a
32/64-bit boot loader does (as Firecracker or QEMU's PVH path do):

* the setup header (at 0x1f1, magic ``HdrS`` at 0x202) must say protocol 2.06
  or newer and ``LOADED_HIGH`` (a bzImage): anything older is refused;
* the protected-mode kernel (after the ``setup_sects + 1`` sectors of setup)
  goes to ``pref_address`` when the kernel is relocatable and says one (2.10+),
  else to 1 MiB; ``init_size`` bytes from there must be RAM;
* the zero page (:class:`BootParams`, at :data:`ZERO_PAGE`) gets the image's
  setup header, ``type_of_loader`` 0xff (no assigned id), ``hardware_subarch``
  0 (a PC), ``cmd_line_ptr`` (the command line at :data:`CMDLINE_ADDR`, at most
  ``cmdline_size`` bytes), ``ramdisk_image``/``ramdisk_size`` (the initrd at the
  top of low RAM below ``initrd_addr_max`` and the 1 GiB the start state maps)
  and the e820 map of the guest memory;
* a GDT at :data:`BOOT_GDT` with ``__BOOT_CS`` (0x10) and ``__BOOT_DS`` (0x18),
  flat 4 GiB segments;
* with ``XLF_KERNEL_64`` (2.12+) the 64-bit entry ``startup_64`` (load address
  + 0x200) in long mode with identity-mapped paging, ``rsi`` = the zero page;
  else the 32-bit entry (the load address) in protected mode with paging off,
  ``esi`` = the zero page and ``ebp``/``edi``/``ebx`` zero; interrupts off.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Optional

from kvmcpu.errors import GuestError
from kvmcpu.loader.image import (
    GuestMemory,
    LoadedImage,
    Source,
    check_ranges,
    read_source,
)
from kvmcpu.mem.range import AddrRange

__all__ = [
    "BOOT_GDT",
    "BootE820Entry",
    "BootParams",
    "CMDLINE_ADDR",
    "HDRS_MAGIC",
    "SetupHeader",
    "ZERO_PAGE",
    "is_bzimage",
    "load_bzimage",
]

#: ``header`` at offset 0x202: "HdrS".
HDRS_MAGIC = b"HdrS"
HDRS_OFFSET = 0x202
SETUP_HEADER_OFFSET = 0x1F1
#: The oldest boot protocol accepted (cmdline_size, the 32-bit entry as specified).
MIN_VERSION = 0x0206
#: Where the loader puts what it writes below 1 MiB (Firecracker's layout).
BOOT_GDT = 0x500
ZERO_PAGE = 0x7000
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000
#: The default load address of a bzImage's protected-mode kernel.
KERNEL_ADDR = 0x100000
#: The 64-bit entry is this far past the load address.
STARTUP_64_OFFSET = 0x200
#: The start state identity-maps this much (System.set_start_state: 1 GiB).
IDENTITY_MAPPED = 1 << 30

LOADED_HIGH = 0x01
CAN_USE_HEAP = 0x80
XLF_KERNEL_64 = 0x01
TYPE_OF_LOADER = 0xFF
X86_SUBARCH_PC = 0
E820_MAX_ENTRIES_ZEROPAGE = 128

#: __BOOT_CS and __BOOT_DS of the boot protocol.
BOOT_CS = 0x10
BOOT_DS = 0x18


class SetupHeader(ctypes.LittleEndianStructure):
    """``struct setup_header`` (asm/bootparam.h)."""

    _pack_ = 1
    _fields_ = [
        ("setup_sects", ctypes.c_uint8),
        ("root_flags", ctypes.c_uint16),
        ("syssize", ctypes.c_uint32),
        ("ram_size", ctypes.c_uint16),
        ("vid_mode", ctypes.c_uint16),
        ("root_dev", ctypes.c_uint16),
        ("boot_flag", ctypes.c_uint16),
        ("jump", ctypes.c_uint16),
        ("header", ctypes.c_uint32),
        ("version", ctypes.c_uint16),
        ("realmode_swtch", ctypes.c_uint32),
        ("start_sys_seg", ctypes.c_uint16),
        ("kernel_version", ctypes.c_uint16),
        ("type_of_loader", ctypes.c_uint8),
        ("loadflags", ctypes.c_uint8),
        ("setup_move_size", ctypes.c_uint16),
        ("code32_start", ctypes.c_uint32),
        ("ramdisk_image", ctypes.c_uint32),
        ("ramdisk_size", ctypes.c_uint32),
        ("bootsect_kludge", ctypes.c_uint32),
        ("heap_end_ptr", ctypes.c_uint16),
        ("ext_loader_ver", ctypes.c_uint8),
        ("ext_loader_type", ctypes.c_uint8),
        ("cmd_line_ptr", ctypes.c_uint32),
        ("initrd_addr_max", ctypes.c_uint32),
        ("kernel_alignment", ctypes.c_uint32),
        ("relocatable_kernel", ctypes.c_uint8),
        ("min_alignment", ctypes.c_uint8),
        ("xloadflags", ctypes.c_uint16),
        ("cmdline_size", ctypes.c_uint32),
        ("hardware_subarch", ctypes.c_uint32),
        ("hardware_subarch_data", ctypes.c_uint64),
        ("payload_offset", ctypes.c_uint32),
        ("payload_length", ctypes.c_uint32),
        ("setup_data", ctypes.c_uint64),
        ("pref_address", ctypes.c_uint64),
        ("init_size", ctypes.c_uint32),
        ("handover_offset", ctypes.c_uint32),
        ("kernel_info_offset", ctypes.c_uint32),
    ]


class BootE820Entry(ctypes.LittleEndianStructure):
    """``struct boot_e820_entry``."""

    _pack_ = 1
    _fields_ = [("addr", ctypes.c_uint64), ("size", ctypes.c_uint64), ("type", ctypes.c_uint32)]


class BootParams(ctypes.LittleEndianStructure):
    """``struct boot_params``, the zero page (the fields a 32/64-bit boot loader fills;
    the others are padding of the kernel's sizes)."""

    _pack_ = 1
    _fields_ = [
        ("screen_info", ctypes.c_uint8 * 0x40),
        ("apm_bios_info", ctypes.c_uint8 * 0x14),
        ("_pad2", ctypes.c_uint8 * 4),
        ("tboot_addr", ctypes.c_uint64),
        ("ist_info", ctypes.c_uint8 * 0x10),
        ("acpi_rsdp_addr", ctypes.c_uint64),
        ("_pad3", ctypes.c_uint8 * 8),
        ("hd0_info", ctypes.c_uint8 * 16),
        ("hd1_info", ctypes.c_uint8 * 16),
        ("sys_desc_table", ctypes.c_uint8 * 16),
        ("olpc_ofw_header", ctypes.c_uint8 * 16),
        ("ext_ramdisk_image", ctypes.c_uint32),
        ("ext_ramdisk_size", ctypes.c_uint32),
        ("ext_cmd_line_ptr", ctypes.c_uint32),
        ("_pad4", ctypes.c_uint8 * 112),
        ("cc_blob_address", ctypes.c_uint32),
        ("edid_info", ctypes.c_uint8 * 0x80),
        ("efi_info", ctypes.c_uint8 * 0x20),
        ("alt_mem_k", ctypes.c_uint32),
        ("scratch", ctypes.c_uint32),
        ("e820_entries", ctypes.c_uint8),
        ("eddbuf_entries", ctypes.c_uint8),
        ("edd_mbr_sig_buf_entries", ctypes.c_uint8),
        ("kbd_status", ctypes.c_uint8),
        ("secure_boot", ctypes.c_uint8),
        ("_pad5", ctypes.c_uint8 * 2),
        ("sentinel", ctypes.c_uint8),
        ("_pad6", ctypes.c_uint8 * 1),
        ("hdr", SetupHeader),
        ("_pad7", ctypes.c_uint8 * (0x290 - 0x1F1 - 123)),
        ("edd_mbr_sig_buffer", ctypes.c_uint32 * 16),
        ("e820_table", BootE820Entry * E820_MAX_ENTRIES_ZEROPAGE),
        ("_pad8", ctypes.c_uint8 * 48),
        ("eddbuf", ctypes.c_uint8 * (0xEEC - 0xD00)),
        ("_pad9", ctypes.c_uint8 * 276),
    ]


def is_bzimage(data: bytes) -> bool:
    """True when ``data`` has the boot protocol's ``HdrS`` magic at 0x202."""
    return data[HDRS_OFFSET:HDRS_OFFSET + 4] == HDRS_MAGIC


def _gdt() -> bytes:
    """Null, null, __BOOT_CS (flat code; 64-bit when ``long``), __BOOT_DS (flat data)."""
    return struct.pack("<4Q", 0, 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF)


def _gdt32() -> bytes:
    return struct.pack("<4Q", 0, 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF)


def _ram_top(mem: GuestMemory, limit: int) -> int:
    """The end of the highest usable e820 range below ``limit``, capped at ``limit``."""
    top = 0
    for addr, size, kind in ((int(a), int(s), int(k)) for a, s, k in mem.e820()):
        if kind == 1 and addr < limit:
            top = max(top, min(addr + size, limit))
    return top


def load_bzimage(source: Source, mem: GuestMemory, *, cmdline: str = "",
                 initrd: Optional[Source] = None) -> LoadedImage:
    """Load a bzImage, its command line and initrd, and build the zero page.

    Raises:
        GuestError: not a bzImage, a protocol older than 2.06, a command line
            longer than the kernel takes, or a kernel/initrd that does not fit.
    """
    data, name = read_source(source)
    if len(data) < 0x264 or not is_bzimage(data):
        raise GuestError(f"{name}: not a Linux bzImage (no 'HdrS' setup header at 0x202)")
    hdr = SetupHeader.from_buffer_copy(data[SETUP_HEADER_OFFSET:SETUP_HEADER_OFFSET
                                            + ctypes.sizeof(SetupHeader)].ljust(123, b"\0"))
    version = int(hdr.version)
    if version < MIN_VERSION:
        raise GuestError(
            f"{name}: Linux boot protocol {version >> 8}.{version & 0xFF:02d} is older than "
            "2.06, the oldest kvmcpu loads (a kernel from before 2.6.22)")
    if not hdr.loadflags & LOADED_HIGH:
        raise GuestError(f"{name}: a zImage (loaded low): only bzImage kernels are supported")
    setup_sects = int(hdr.setup_sects) or 4
    setup_size = (setup_sects + 1) * 512
    kernel = data[setup_size:]
    if not kernel:
        raise GuestError(f"{name}: no protected-mode kernel after {setup_size} bytes of setup")
    # Where the protected-mode kernel goes.
    load_addr = KERNEL_ADDR
    pref = int(hdr.pref_address) if version >= 0x020A else 0
    if hdr.relocatable_kernel and pref:
        load_addr = pref
    init_size = int(hdr.init_size) if version >= 0x020A else 0
    need = max(len(kernel), init_size)
    # The command line.
    raw_cmdline = cmdline.encode()
    limit = int(hdr.cmdline_size)
    if len(raw_cmdline) > min(limit, CMDLINE_MAX - 1):
        raise GuestError(f"{name}: the command line is {len(raw_cmdline)} bytes; the kernel "
                         f"takes at most {limit}")
    pieces = [("kernel", load_addr, load_addr + need),
              ("zero page", ZERO_PAGE, ZERO_PAGE + 0x1000),
              ("command line", CMDLINE_ADDR, CMDLINE_ADDR + len(raw_cmdline) + 1)]
    check_ranges(mem, name, pieces)
    # The initrd: as high as it can go below initrd_addr_max and the identity map.
    initrd_addr = initrd_size = 0
    initrd_data = b""
    if initrd is not None:
        initrd_data, initrd_name = read_source(initrd)
        initrd_size = len(initrd_data)
        top = _ram_top(mem, min(int(hdr.initrd_addr_max) + 1, IDENTITY_MAPPED))
        initrd_addr = (top - initrd_size) & ~0xFFF
        if initrd_size == 0 or initrd_addr < load_addr + need:
            raise GuestError(
                f"{initrd_name}: the initrd ({initrd_size} bytes) does not fit between the "
                f"kernel's end {load_addr + need:#x} and {top:#x} (initrd_addr_max "
                f"{int(hdr.initrd_addr_max):#x}, the RAM, the 1 GiB mapped)")
    # The zero page.
    bp = BootParams()
    hdr_end = min(0x202 + data[0x201], SETUP_HEADER_OFFSET + ctypes.sizeof(SetupHeader))
    raw_hdr = data[SETUP_HEADER_OFFSET:hdr_end]
    ctypes.memmove(ctypes.addressof(bp) + SETUP_HEADER_OFFSET, raw_hdr, len(raw_hdr))
    bp.hdr.type_of_loader = TYPE_OF_LOADER
    bp.hdr.loadflags = (int(hdr.loadflags) | CAN_USE_HEAP) & 0xFF
    bp.hdr.heap_end_ptr = 0xFE00
    bp.hdr.cmd_line_ptr = CMDLINE_ADDR
    bp.hdr.ramdisk_image = initrd_addr & 0xFFFFFFFF
    bp.hdr.ramdisk_size = initrd_size & 0xFFFFFFFF
    bp.ext_ramdisk_image = initrd_addr >> 32
    bp.ext_ramdisk_size = initrd_size >> 32
    bp.hdr.hardware_subarch = X86_SUBARCH_PC
    if hdr.relocatable_kernel:
        bp.hdr.code32_start = load_addr
    e820 = [(int(a), int(s), int(k)) for a, s, k in mem.e820()][:E820_MAX_ENTRIES_ZEROPAGE]
    for i, (addr, size, kind) in enumerate(e820):
        bp.e820_table[i].addr, bp.e820_table[i].size, bp.e820_table[i].type = addr, size, kind
    bp.e820_entries = len(e820)
    long = bool(version >= 0x020C and hdr.xloadflags & XLF_KERNEL_64)
    gdt = _gdt() if long else _gdt32()
    mem.write(load_addr, kernel)
    mem.write(ZERO_PAGE, bytes(bp))
    mem.write(CMDLINE_ADDR, raw_cmdline + b"\0")
    mem.write(BOOT_GDT, gdt)
    ranges = [AddrRange(load_addr, len(kernel)), AddrRange(ZERO_PAGE, 0x1000),
              AddrRange(CMDLINE_ADDR, len(raw_cmdline) + 1), AddrRange(BOOT_GDT, len(gdt))]
    if initrd_size:
        mem.write(initrd_addr, initrd_data)
        ranges.append(AddrRange(initrd_addr, initrd_size))
    if long:
        entry, mode = load_addr + STARTUP_64_OFFSET, "long"
        regs = {"rsi": ZERO_PAGE}
    else:
        entry, mode = load_addr, "protected"
        regs = {"rsi": ZERO_PAGE, "rbp": 0, "rdi": 0, "rbx": 0}
    what = f"initrd {initrd_size} bytes at {initrd_addr:#x}" if initrd_size else "no initrd"
    return LoadedImage(
        entry=entry, mode=mode, regs=regs, ranges=ranges, format="bzimage",
        description=(f"Linux bzImage {name}: boot protocol {version >> 8}.{version & 0xFF:02d}, "
                     f"kernel {len(kernel)} bytes at {load_addr:#x}, {mode}-mode entry "
                     f"{entry:#x}, {what}"),
        page_tables=0x9000,
        gdt=(BOOT_GDT, len(gdt) - 1), selectors=(BOOT_CS, BOOT_DS),
        info={"version": version, "cmdline": cmdline, "zero_page": ZERO_PAGE,
              "initrd": (initrd_addr, initrd_size), "load_addr": load_addr},
    )
