"""The Linux/x86 boot protocol: bzImage loading, the zero page and both entries.

The bzImages are written here, by an independent writer (``make_bzimage``: a
setup header at the offsets of the kernel's boot.rst around
guests/linux_payload.bin), and the zero page the loader builds is read back by
an independent parser (``parse_zero_page``: struct offsets typed in from
``asm/bootparam.h``), not through kvmcpu's own structures. The layout of those
structures is checked against the same literal offsets, and against the header
itself where a C compiler and linux-libc-dev's asm/bootparam.h are installed.
"""

from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from kvmcpu.errors import ConfigError, GuestError
from kvmcpu.loader import detect_format, load_image
from kvmcpu.loader.bzimage import BootE820Entry, BootParams, SetupHeader
from kvmcpu.mem.physmem import PhysicalMemory
from kvmcpu.system import System

ROOT = Path(__file__).resolve().parents[3]
PAYLOAD = (ROOT / "guests" / "linux_payload.bin").read_bytes()
BOOTPARAM_H = Path("/usr/include/x86_64-linux-gnu/asm/bootparam.h")
PREF = 0x1000000  # 16 MiB, what x86-64 kernels say
INITRD = b"hello from the initrd\0" + bytes(4000)

#: Offsets in struct boot_params (hdr.* included) printed by a C program compiled
#: against asm/bootparam.h (linux-libc-dev 6.1); sizeof(boot_params) 4096,
#: sizeof(setup_header) 123, sizeof(boot_e820_entry) 20.
KERNEL_OFFSETS = {
    "screen_info": 0, "acpi_rsdp_addr": 112, "ext_ramdisk_image": 192,
    "ext_ramdisk_size": 196, "ext_cmd_line_ptr": 200, "e820_entries": 488,
    "sentinel": 495, "hdr": 497, "e820_table": 720,
    "hdr.setup_sects": 497, "hdr.root_flags": 498, "hdr.syssize": 500, "hdr.vid_mode": 506,
    "hdr.boot_flag": 510, "hdr.jump": 512, "hdr.header": 514, "hdr.version": 518,
    "hdr.type_of_loader": 528, "hdr.loadflags": 529, "hdr.code32_start": 532,
    "hdr.ramdisk_image": 536, "hdr.ramdisk_size": 540, "hdr.heap_end_ptr": 548,
    "hdr.cmd_line_ptr": 552, "hdr.initrd_addr_max": 556, "hdr.kernel_alignment": 560,
    "hdr.relocatable_kernel": 564, "hdr.min_alignment": 565, "hdr.xloadflags": 566,
    "hdr.cmdline_size": 568, "hdr.hardware_subarch": 572, "hdr.payload_offset": 584,
    "hdr.payload_length": 588, "hdr.setup_data": 592, "hdr.pref_address": 600,
    "hdr.init_size": 608, "hdr.handover_offset": 612, "hdr.kernel_info_offset": 616,
}
KERNEL_SIZES = {"boot_params": 4096, "setup_header": 123, "boot_e820_entry": 20}


# ---------------------------------------------------------------------------- the writer
def make_bzimage(payload: bytes = PAYLOAD, *, version: int = 0x020F, kernel_64: bool = True,
                 relocatable: bool = True, pref_address: int = PREF, setup_sects: int = 1,
                 loadflags: int = 0x01, cmdline_size: int = 2047,
                 initrd_addr_max: int = 0x7FFFFFFF, init_size: int = 0x10000) -> bytes:
    """A bzImage: boot sector + setup sectors with the header, then ``payload``."""
    setup = bytearray((setup_sects + 1) * 512)
    struct.pack_into("<B", setup, 0x1F1, setup_sects)
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)            # boot_flag
    struct.pack_into("<BB", setup, 0x200, 0xEB, 0x66)       # jump to 0x268
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<B", setup, 0x211, loadflags)
    struct.pack_into("<I", setup, 0x214, 0x100000)          # code32_start
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, 0x200000)          # kernel_alignment
    struct.pack_into("<B", setup, 0x234, 1 if relocatable else 0)
    struct.pack_into("<H", setup, 0x236, 0x1 if kernel_64 else 0)  # xloadflags
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + payload


# ---------------------------------------------------------------------------- the parser
def parse_zero_page(zp: bytes) -> Dict[str, Any]:
    def u(fmt: str, off: int) -> int:
        value: int = struct.unpack_from("<" + fmt, zp, off)[0]
        return value

    n = u("B", 0x1E8)
    return {
        "e820": [struct.unpack_from("<QQI", zp, 0x2D0 + 20 * i) for i in range(n)],
        "type_of_loader": u("B", 0x210), "loadflags": u("B", 0x211),
        "ramdisk_image": u("I", 0x218) | u("I", 0xC0) << 32,
        "ramdisk_size": u("I", 0x21C) | u("I", 0xC4) << 32,
        "cmd_line_ptr": u("I", 0x228) | u("I", 0xC8) << 32,
        "hardware_subarch": u("I", 0x23C), "version": u("H", 0x206),
        "header": zp[0x202:0x206], "sentinel": u("B", 0x1EF),
        "initrd_addr_max": u("I", 0x22C), "pref_address": u("Q", 0x258),
    }


@pytest.fixture
def mem() -> Iterator[PhysicalMemory]:
    m = PhysicalMemory(128 << 20)
    yield m
    m.close()


def _load(mem: PhysicalMemory, image: bytes, **kw: Any) -> Tuple[Any, Dict[str, Any]]:
    loaded = load_image(image, mem, **kw)
    return loaded, parse_zero_page(mem.read(loaded.regs["rsi"], 4096))


# ---------------------------------------------------------------------------- loading
def test_format_is_detected_from_the_hdrs_magic() -> None:
    assert detect_format(make_bzimage(), "vmlinuz") == "bzimage"
    broken = bytearray(make_bzimage())
    broken[0x202:0x206] = b"HdrX"
    with pytest.raises(GuestError, match="not a recognised kernel image"):
        detect_format(bytes(broken), "vmlinuz")


def test_relocatable_64_bit_kernel(mem: PhysicalMemory) -> None:
    loaded, zp = _load(mem, make_bzimage(), cmdline="console=ttyS0 quiet", initrd=INITRD)
    assert (loaded.mode, loaded.entry, loaded.format) == ("long", PREF + 0x200, "bzimage")
    assert mem.read(PREF, len(PAYLOAD)) == PAYLOAD
    assert zp["header"] == b"HdrS" and zp["version"] == 0x020F and zp["sentinel"] == 0
    assert zp["type_of_loader"] == 0xFF and zp["hardware_subarch"] == 0
    assert mem.read(zp["cmd_line_ptr"], 20) == b"console=ttyS0 quiet\0"
    assert zp["ramdisk_size"] == len(INITRD)
    start = zp["ramdisk_image"]
    assert start % 4096 == 0 and start + len(INITRD) <= min(zp["initrd_addr_max"] + 1,
                                                             128 << 20)
    assert start >= PREF + 0x10000  # above the kernel's init_size
    assert mem.read(start, len(INITRD)) == INITRD
    assert zp["e820"] == [tuple(e) for e in mem.e820()]
    assert loaded.gdt is not None and loaded.selectors == (0x10, 0x18)
    gdt = struct.unpack("<4Q", mem.read(loaded.gdt[0], 32))
    assert gdt[2] >> 53 & 1 == 1  # __BOOT_CS is a 64-bit code segment (L)


def test_initrd_stays_below_initrd_addr_max(mem: PhysicalMemory) -> None:
    _, zp = _load(mem, make_bzimage(initrd_addr_max=0x2000000 - 1), initrd=INITRD)
    assert zp["ramdisk_image"] + len(INITRD) <= 0x2000000


def test_non_relocatable_kernel_goes_to_1_mib(mem: PhysicalMemory) -> None:
    loaded, _ = _load(mem, make_bzimage(relocatable=False))
    assert loaded.entry == 0x100000 + 0x200
    assert mem.read(0x100000, len(PAYLOAD)) == PAYLOAD


def test_32_bit_entry_without_xlf_kernel_64(mem: PhysicalMemory) -> None:
    loaded, zp = _load(mem, make_bzimage(kernel_64=False))
    assert (loaded.mode, loaded.entry) == ("protected", PREF)
    assert loaded.regs == {"rsi": 0x7000, "rbp": 0, "rdi": 0, "rbx": 0}
    assert zp["cmd_line_ptr"] != 0 and mem.read(zp["cmd_line_ptr"], 1) == b"\0"
    assert zp["ramdisk_image"] == zp["ramdisk_size"] == 0


@pytest.mark.parametrize("version", [0x0204, 0x0205])
def test_protocols_before_2_06_are_refused(mem: PhysicalMemory, version: int) -> None:
    with pytest.raises(GuestError, match=r"boot protocol 2\.0[45] is older than 2\.06"):
        load_image(make_bzimage(version=version), mem)


def test_zimage_is_refused(mem: PhysicalMemory) -> None:
    with pytest.raises(GuestError, match="zImage"):
        load_image(make_bzimage(loadflags=0), mem)


def test_command_line_longer_than_cmdline_size_is_refused(mem: PhysicalMemory) -> None:
    with pytest.raises(GuestError, match="takes at most 15"):
        load_image(make_bzimage(cmdline_size=15), mem, cmdline="x" * 16)


def test_kernel_that_does_not_fit_is_refused() -> None:
    with PhysicalMemory(16 << 20) as small:
        with pytest.raises(GuestError, match="kernel .* outside guest RAM"):
            load_image(make_bzimage(), small)


def test_initrd_is_for_linux_kernels_only(mem: PhysicalMemory) -> None:
    with pytest.raises(ConfigError, match="initrd applies to Linux bzImage"):
        load_image(PAYLOAD, mem, fmt="flat", initrd=INITRD)


# ---------------------------------------------------------------------------- layout
def _offset(name: str) -> int:
    if name.startswith("hdr."):
        off: int = BootParams.hdr.offset + getattr(SetupHeader, name[4:]).offset
        return off
    off = getattr(BootParams, name).offset
    return off


def test_structures_have_the_kernel_layout() -> None:
    assert ctypes.sizeof(BootParams) == KERNEL_SIZES["boot_params"]
    assert ctypes.sizeof(SetupHeader) == KERNEL_SIZES["setup_header"]
    assert ctypes.sizeof(BootE820Entry) == KERNEL_SIZES["boot_e820_entry"]
    assert {n: _offset(n) for n in KERNEL_OFFSETS} == KERNEL_OFFSETS


def test_structures_match_the_installed_header(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler (cc, gcc or clang)")
    if not BOOTPARAM_H.exists():
        pytest.skip(f"{BOOTPARAM_H} is missing (Debian: linux-libc-dev)")
    lines: List[str] = ["#include <stdio.h>", "#include <stddef.h>", "#include <asm/bootparam.h>",
                        "int main(void) {"]
    for name in KERNEL_OFFSETS:
        lines.append(f'printf("{name} %zu\\n", offsetof(struct boot_params, {name}));')
    for name in KERNEL_SIZES:
        lines.append(f'printf("sizeof.{name} %zu\\n", sizeof(struct {name}));')
    lines.append("return 0; }")
    src = tmp_path / "bp.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "bp"
    subprocess.run([cc, "-o", str(exe), str(src)], check=True, capture_output=True)
    out = dict(line.split() for line in subprocess.run(
        [str(exe)], check=True, capture_output=True, text=True).stdout.splitlines())
    for name in KERNEL_OFFSETS:
        assert int(out[name]) == _offset(name), name
    assert int(out["sizeof.boot_params"]) == ctypes.sizeof(BootParams)
    assert int(out["sizeof.setup_header"]) == ctypes.sizeof(SetupHeader)
    assert int(out["sizeof.boot_e820_entry"]) == ctypes.sizeof(BootE820Entry)


# ---------------------------------------------------------------------------- booting
def _expect(bits: int, e820: int, cmdline: str, initrd: bool = True) -> bytes:
    rd = f"{len(INITRD)}:hello from the initrd" if initrd else "0:"
    return (f"linux{bits}: cs=16 ds=24 loader=255 e820={e820} initrd={rd} "
            f"cmdline={cmdline}\n").encode()


@pytest.mark.parametrize("kernel_64", [True, False], ids=["64-bit", "32-bit"])
def test_synthetic_kernel_boots_on_both_backends(backend_name: str, kernel_64: bool,
                                                 tmp_path: Path) -> None:
    image = tmp_path / "bzImage"
    image.write_bytes(make_bzimage(kernel_64=kernel_64))
    with System(backend=backend_name) as system:
        system.load(str(image), cmdline="console=ttyS0 root=/dev/ram0", initrd=INITRD)
        result = system.run(timeout=60)
        e820 = len(system.physmem.e820())
        assert (result.cause, result.status) == ("isa-debug-exit", 1)
        assert system.serial.output == _expect(64 if kernel_64 else 32, e820,
                                               "console=ttyS0 root=/dev/ram0")


def test_kvmcpu_run_kernel_initrd_append(tmp_path: Path) -> None:
    image = tmp_path / "bzImage"
    image.write_bytes(make_bzimage())
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(INITRD)
    cmd = [sys.executable, "-m", "kvmcpu", "run", "--backend", "mock", "--kernel", str(image),
           "--initrd", str(initrd), "--append", "console=ttyS0 panic=-1", "--timeout", "60"]
    done = subprocess.run(cmd, capture_output=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    with PhysicalMemory(128 << 20) as m:
        e820 = len(m.e820())
    assert done.stdout == _expect(64, e820, "console=ttyS0 panic=-1")
    # QEMU's -initrd is for Linux kernels: with another image it is a usage error.
    other = subprocess.run([sys.executable, "-m", "kvmcpu", "run", "--backend", "mock",
                            "--kernel", str(ROOT / "kvmcpu" / "guests" / "hello.bin"),
                            "--initrd", str(initrd)], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
    assert other.returncode == 2 and "initrd applies to Linux bzImage" in other.stderr
    both = subprocess.run([sys.executable, "-m", "kvmcpu", "run", str(image), "--kernel",
                           str(image)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert both.returncode == 2 and "--kernel" in both.stderr
