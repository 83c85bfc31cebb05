"""Multiboot as QEMU's ``-kernel`` gives it: the info a kernel finds, byte for byte.

guests/mbinfo_high.bin (loaded at 1 MiB), guests/mbinfo_low.bin (at 0x8000),
both a.out-kludge kernels, and guests/mbinfo_elf.bin (an ELF32 at 2 MiB with a
BSS in its segment) print EAX, EBX, the 88-byte info structure, the e820 map's bytes, the command
line, the modules and the boot loader name, with their addresses
(guests/lib/mbinfo.inc). Run with the same RAM (128 MiB), command line and
modules, QEMU (``-append "hello world" -initrd "mod1 arg1,mod1"``) and kvmcpu
(``cmdline=``, ``modules=[("mod1", "mod1 arg1"), "mod1"]``) print the same
bytes but for the boot loader's name ("qemu" / "kvmcpu", at the same address).

The low kernel's page-aligned buffer [0x8000, 0xc000) covers 0x9000-0x9558,
where QEMU's option ROM wrote the map and the info structure before copying
the buffer over them: on QEMU and on kvmcpu it finds zeros at EBX = 0x9500.

``RECORDED`` is what QEMU printed on this project's host (QEMU 7.2, SeaBIOS
1.16); the mock and KVM are compared with it everywhere, QEMU itself where it
is installed (and KVM usable: ``-accel kvm`` reports KVM's identity-map pages
in the e820 map, which TCG does not).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from kvmcpu.system import CAUSE_DEBUG_EXIT, System

ROOT = Path(__file__).resolve().parent.parent.parent
QEMU = shutil.which("qemu-system-x86_64")
MakeSystem = Callable[..., System]
MODULE = b"module one\n"

_MMAP = ("00000014 00000000 00000000 0009fc00 00000000 00000001 "
         "00000014 0009fc00 00000000 00000400 00000000 00000002 "
         "00000014 000f0000 00000000 00010000 00000000 00000002 "
         "00000014 00100000 00000000 07ee0000 00000000 00000001 "
         "00000014 07fe0000 00000000 00020000 00000000 00000002 "
         "00000014 feffc000 00000000 00004000 00000000 00000002 "
         "00000014 fffc0000 00000000 00040000 00000000 00000002 ")
RECORDED = {
    "mbinfo_high": (
        "entry eax=2badb002 ebx=00009500\n"
        "mbi 0000024f 0000027f 0001fb80 8000ffff 0010102f 00000002 00101000 00000000 "
        "00000000 00000000 00000000 000000a8 00009000 00000000 00000000 00000000 0010104b "
        "00000000 00000000 00000000 00000000 00000000 \n"
        "mmap addr=00009000 len=000000a8\n"
        f"mmap {_MMAP}\n"
        'cmdline addr=0010102f "mbinfo_high.bin hello world"\n'
        "mods count=00000002 addr=00101000\n"
        'mod 00102000 0010200b 00101020 "mod1 arg1"\n'
        'mod 00103000 0010300b 0010102a "mod1"\n'
        'loader addr=0010104b "qemu"\n'
        "END\n").encode(),
    "mbinfo_elf": (
        "entry eax=2badb002 ebx=00009500\n"
        "mbi 0000024f 0000027f 0001fb80 8000ffff 0020502f 00000002 00205000 00000000 "
        "00000000 00000000 00000000 000000a8 00009000 00000000 00000000 00000000 0020504a "
        "00000000 00000000 00000000 00000000 00000000 \n"
        "mmap addr=00009000 len=000000a8\n"
        f"mmap {_MMAP}\n"
        'cmdline addr=0020502f "mbinfo_elf.bin hello world"\n'
        "mods count=00000002 addr=00205000\n"
        'mod 00206000 0020600b 00205020 "mod1 arg1"\n'
        'mod 00207000 0020700b 0020502a "mod1"\n'
        'loader addr=0020504a "qemu"\n'
        "END\n").encode(),
    "mbinfo_low": (
        "entry eax=2badb002 ebx=00009500\n"
        "mbi" + " 00000000" * 22 + " \n"
        "END\n").encode(),
}


def kvmcpu_expected(name: str) -> bytes:
    return RECORDED[name].replace(b'"qemu"', b'"kvmcpu"')


def setup_dir(tmp_path: Path, name: str) -> None:
    shutil.copy(ROOT / "guests" / f"{name}.bin", tmp_path / f"{name}.bin")
    (tmp_path / "mod1").write_bytes(MODULE)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_kvmcpu_gives_qemus_multiboot_info(make_system: MakeSystem, backend_name: str,
                                           name: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    setup_dir(tmp_path, name)
    monkeypatch.chdir(tmp_path)
    system = make_system(memory="128M", backend=backend_name)
    system.load(f"{name}.bin", cmdline="hello world", modules=[("mod1", "mod1 arg1"), "mod1"])
    result = system.run(max_seconds=5, timeout=60)
    assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1)
    assert system.serial.output == kvmcpu_expected(name)


@pytest.mark.kvm
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed "
                    "(apt-get install qemu-system-x86)")
@pytest.mark.parametrize("name", sorted(RECORDED))
def test_qemu_prints_the_recorded_info(name: str, tmp_path: Path) -> None:
    assert QEMU is not None
    setup_dir(tmp_path, name)
    done = subprocess.run(
        [QEMU, "-accel", "kvm", "-machine", "pc", "-m", "128", "-kernel", f"{name}.bin",
         "-append", "hello world", "-initrd", "mod1 arg1,mod1", "-serial", "stdio",
         "-display", "none", "-monitor", "none", "-no-reboot",
         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
        capture_output=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == RECORDED[name]
