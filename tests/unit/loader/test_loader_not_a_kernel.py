"""``fmt="auto"`` loads only what it recognises: Multiboot, ELF kernels, flat images
named *.bin/*.img; user-space programs and unknown files are refused (CLI: exit 2)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kvmcpu.errors import GuestError
from kvmcpu.loader import FLAT_EXTENSIONS, load_image
from kvmcpu.loader.elf import NOT_A_KERNEL
from kvmcpu.mem import PhysicalMemory

PT_LOAD, PT_INTERP = 1, 3
ET_EXEC, ET_DYN = 2, 3
INTERP = b"/lib64/ld-linux-x86-64.so.2\0"


def program(*, e_type: int = ET_EXEC, base: int = 0x200000, entry: int | None = None,
            interp: bool = False) -> bytes:
    """An x86-64 ELF with one PT_LOAD at ``base`` (and a PT_INTERP when asked)."""
    phnum = 2 if interp else 1
    code_off = 64 + 56 * phnum
    code = b"\x90" * 16 + (INTERP if interp else b"")
    hdr = b"\x7fELF\x02\x01\x01" + bytes(9)
    hdr += struct.pack("<HHIQQQIHHHHHH", e_type, 62, 1, base if entry is None else entry, 64,
                       0, 0, 64, 56, phnum, 64, 0, 0)
    phs = b""
    if interp:
        phs += struct.pack("<IIQQQQQQ", PT_INTERP, 4, code_off + 16, base + 16, base + 16,
                           len(INTERP), len(INTERP), 1)
    phs += struct.pack("<IIQQQQQQ", PT_LOAD, 7, code_off, base, base, len(code), len(code),
                       0x1000)
    return hdr + phs + code


@pytest.fixture
def mem() -> PhysicalMemory:
    with PhysicalMemory("16M") as m:
        yield m


def test_an_elf_with_an_interpreter_is_not_a_kernel(mem: PhysicalMemory, tmp_path: Path) -> None:
    f = tmp_path / "prog"
    f.write_bytes(program(interp=True))
    for fmt in ("auto", "elf"):
        with pytest.raises(GuestError) as info:
            load_image(f, mem, fmt=fmt)
        assert str(info.value).startswith(f"{f}: {NOT_A_KERNEL}")
        assert "PT_INTERP /lib64/ld-linux-x86-64.so.2" in str(info.value)
    assert mem.read(0x200000, 16) == bytes(16)  # nothing was written


def test_a_pie_linked_at_zero_is_not_a_kernel(mem: PhysicalMemory) -> None:
    with pytest.raises(GuestError, match=r"not a kernel \(a dynamically linked program\?\): "
                                         r"a position-independent ELF \(ET_DYN\) linked at "
                                         r"address 0 has no load address"):
        load_image(program(e_type=ET_DYN, base=0), mem)
    # An ET_DYN kernel linked at a real address loads (QEMU accepts those too).
    assert load_image(program(e_type=ET_DYN), mem).entry == 0x200000


def test_an_entry_outside_every_segment_is_refused(mem: PhysicalMemory) -> None:
    with pytest.raises(GuestError, match="entry point 0x400000 .* outside every PT_LOAD"):
        load_image(program(entry=0x400000), mem)


def test_unknown_files_are_flat_only_when_asked_or_named_so(mem: PhysicalMemory,
                                                            tmp_path: Path) -> None:
    text = tmp_path / "hostname"
    text.write_bytes(b"vm\n")
    with pytest.raises(GuestError, match=r"hostname: not a recognised kernel image .*"
                                         r"--format flat"):
        load_image(text, mem)
    with pytest.raises(GuestError, match=r"<bytes>: not a recognised kernel image"):
        load_image(b"\xfa\xf4", mem)
    assert load_image(text, mem, fmt="flat").format == "flat"
    assert load_image(b"\xfa\xf4", mem, fmt="flat").entry == 0x7C00
    for ext in FLAT_EXTENSIONS + (".BIN",):
        named = tmp_path / f"boot{ext}"
        named.write_bytes(b"\xfa\xf4")
        assert load_image(named, mem).format == "flat"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmcpu", "run", *args, "--backend", "mock",
                           "--timeout", "20"], capture_output=True, text=True, timeout=120)


def test_cli_refuses_a_user_program_with_status_2(tmp_path: Path) -> None:
    prog = tmp_path / "ls"
    prog.write_bytes(program(interp=True))
    done = _cli(str(prog))
    assert done.returncode == 2, done.stderr
    assert f"{prog}: {NOT_A_KERNEL}" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_refuses_a_real_dynamically_linked_program() -> None:
    exe = Path(sys.executable).resolve()
    if b"ld-linux" not in exe.read_bytes()[:4096]:
        pytest.skip(f"{exe} is not dynamically linked")
    done = _cli(str(exe))
    assert done.returncode == 2, done.stderr
    assert NOT_A_KERNEL in done.stderr


def test_cli_refuses_a_text_file_but_runs_it_with_format_flat(tmp_path: Path) -> None:
    text = tmp_path / "hostname"
    text.write_bytes(b"\xf4\n")  # hlt: as a flat image it halts at once
    done = _cli(str(text))
    assert done.returncode == 2 and "not a recognised kernel image" in done.stderr
    done = _cli(str(text), "--format", "flat")
    assert done.returncode == 0, done.stderr
