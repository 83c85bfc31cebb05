"""guests/linux/build.py: the initramfs it writes (no download: the busybox is a stand-in).

The archive is read back by an independent "newc" reader here, and by ``cpio``
where it is installed (the format the kernel's initramfs unpacker takes).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Dict, Tuple

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "guests" / "linux" / "build.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kvmcpu_linux_build", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_newc(data: bytes) -> Dict[str, Tuple[int, bytes]]:
    out: Dict[str, Tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701", pos
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        pos += 110
        name = data[pos:pos + namesize - 1].decode()
        pos += namesize
        pos += -pos % 4
        body = data[pos:pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def test_initramfs_holds_busybox_and_an_init_that_prints_the_marker() -> None:
    mod = _module()
    fake = b"\x7fELF" + bytes(range(256)) * 3
    archive = mod.build_initramfs(fake)
    assert len(archive) % 512 == 0
    files = read_newc(archive)
    assert files["bin/busybox"] == (0o100755, fake)
    assert files["bin/sh"] == (0o120777, b"busybox")
    mode, init = files["init"]
    assert mode == 0o100755 and init.startswith(b"#!/bin/busybox sh\n")
    assert f'echo "{mod.MARKER}"'.encode() in init
    lines = init.decode().splitlines()
    # every command line runs busybox or a shell builtin (no stray words)
    assert all(line.startswith(("#", "/bin/busybox ", "echo ")) for line in lines if line), lines
    assert b"seek=244" in init  # isa-debug-exit at port 0xf4 through /dev/port
    # ACPI S5 first: byte 0x20 (SLP_EN, SLP_TYP 0) at 0x605, PM1a_CNT's high byte
    s5 = init.index(b"printf '\\040' | /bin/busybox dd of=/dev/port bs=1 seek=1541 count=1")
    assert s5 < init.index(b"seek=244")


@pytest.mark.parametrize("backend", ["mock", "kvm"])
def test_the_byte_init_writes_to_0x605_powers_the_machine_off(backend: str) -> None:
    """What /init's dd does through /dev/port (one OUTB of 0x20 to 0x605) ends a run
    with cause "power off", status 0, as ACPI S5 on QEMU's PIIX4 PM block."""
    from kvmcpu.errors import BackendUnavailableError
    from kvmcpu.system import System

    code = bytes.fromhex(  # real mode; first what SeaBIOS does: the PIIX4 PM function
        # (00:01.3) gets PMBA (0x40) = 0x601 and PMIOSE (0x80 bit 0), through 0xcf8/0xcfc
        "66b8400b0080" "baf80c" "66ef" "66b801060000" "bafc0c" "66ef"
        "66b8800b0080" "baf80c" "66ef" "b001" "bafc0c" "ee"
        "ba0506" "b020" "ee" "f4")  # then /init's OUTB 0x20 to 0x605; hlt
    try:
        system = System(backend=backend)
    except BackendUnavailableError as err:
        pytest.skip(str(err))
    with system:
        system.load(code, fmt="flat")
        result = system.run(timeout=60)
        assert (result.cause, result.status) == ("power off", 0)


def test_cpio_reads_the_archive() -> None:
    cpio = shutil.which("cpio")
    if cpio is None:
        pytest.skip("cpio is not installed (Debian: cpio)")
    archive = _module().build_initramfs(b"busybox stand-in")
    files = read_newc(archive)
    listing = subprocess.run([cpio, "-it"], input=archive, capture_output=True, check=True)
    assert set(listing.stdout.decode().split()) == set(files)
