"""The guest images in ``guests/`` and what the tests expect of them.

``load_guest(name)`` reads a committed flat image (``guests/NAME.bin``). The
``setup_*`` helpers load an image into a fresh VM the way its ``.asm`` header
describes, and ``drive_io_program`` runs io_real/io_long through their nine
exits, completing the IN and the MMIO read the KVM way (writing ``exit.data``).
Everything here uses the backend contract only, so it serves both backends.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Dict, List, Tuple

from kvmcpu.backends import HltExit, IoExit, MmioExit
from kvmcpu.backends.base import Vcpu, Vm
from kvmcpu.hostmem import HostMemory

GUESTS_DIR = Path(__file__).resolve().parent.parent / "guests"

RAM_SIZE = 0x10000
REAL_ENTRY = 0x1000
LONG_BASE = 0x2000
LONG_CPL0_ENTRY = 0x2000
LONG_CPL3_ENTRY = 0x2010
IOPL3 = 3 << 12

#: The value the host gives the guest's IN from port 0x3fd.
IN_VALUE = b"\x5a"
#: The value the host gives the guest's 4-byte MMIO read from 0x20020.
MMIO_READ_VALUE = b"\x01\x02\x03\x04"

Snapshot = Tuple[str, Dict[str, Any]]


def load_guest(name: str) -> bytes:
    """The committed flat image ``guests/NAME.bin``."""
    return (GUESTS_DIR / f"{name}.bin").read_bytes()


def _io(port: int, size: int, data: bytes, is_write: bool = True, count: int = 1) -> Snapshot:
    return ("IoExit", {"port": port, "size": size, "count": count, "is_write": is_write,
                       "data": data})


def io_sequence(final: str = "hlt") -> List[Snapshot]:
    """The exits of io_real / io_long (see guests/io_real.asm), as exit snapshots.

    ``final`` is "hlt" (real mode, long mode CPL0) or "done" (long mode CPL3:
    OUT 0x3ff instead of HLT). The IN's data is the completed value.
    """
    seq = [
        _io(0x3F8, 1, b"4"),
        _io(0x402, 2, struct.pack("<H", 0x1234)),
        _io(0x404, 4, struct.pack("<I", 0xDEADBEEF)),
        _io(0x3FD, 1, IN_VALUE, is_write=False),
        _io(0x3F8, 1, IN_VALUE),
        ("MmioExit", {"phys_addr": 0x20010, "len": 4, "is_write": True,
                      "data": struct.pack("<I", 0xCAFEF00D)}),
        ("MmioExit", {"phys_addr": 0x20020, "len": 4, "is_write": False, "data": None}),
        _io(0x404, 4, MMIO_READ_VALUE),
    ]
    seq.append(("HltExit", {}) if final == "hlt" else _io(0x3FF, 1, b"\x00"))
    return seq


def snapshot(ex: Any) -> Snapshot:
    """(class name, fields()) of an exit, taken before the next run() changes its data."""
    return (type(ex).__name__, ex.fields())


def drive_io_program(vcpu: Vcpu, exits: int = 9) -> List[Snapshot]:
    """Run ``exits`` exits, completing INs with IN_VALUE and MMIO reads with
    MMIO_READ_VALUE, and return their snapshots."""
    out = []
    for _ in range(exits):
        ex = vcpu.run()
        if isinstance(ex, IoExit) and not ex.is_write:
            ex.data[:] = IN_VALUE * ex.count
        elif isinstance(ex, MmioExit) and not ex.is_write:
            ex.data[:] = MMIO_READ_VALUE[: ex.len]
        out.append(snapshot(ex))
        if isinstance(ex, HltExit):
            break
    return out


def setup_real(vm: Vm, name: str, *, vcpu_id: int = 0) -> Tuple[HostMemory, Vcpu]:
    """64 KiB of RAM at 0, ``name`` at 0x1000, a vCPU in real mode at 0:0x1000."""
    ram = vm.add_ram(0, RAM_SIZE)
    code = load_guest(name)
    ram[REAL_ENTRY : REAL_ENTRY + len(code)] = code
    vcpu = vm.create_vcpu(vcpu_id)
    vcpu.set_real_mode(cs=0, ip=REAL_ENTRY)
    return ram, vcpu


def setup_long(vm: Vm, name: str = "io_long", *, cpl: int = 0, entry: int = 0,
               vcpu_id: int = 0) -> Tuple[HostMemory, Vcpu]:
    """64 KiB of RAM at 0, ``name`` at 0x2000, a vCPU in long mode at ``entry``
    (default: io_long's entry for ``cpl``); at CPL3 RFLAGS.IOPL=3."""
    ram = vm.add_ram(0, RAM_SIZE)
    code = load_guest(name)
    ram[LONG_BASE : LONG_BASE + len(code)] = code
    vcpu = vm.create_vcpu(vcpu_id)
    if not entry:
        entry = LONG_CPL3_ENTRY if cpl == 3 else LONG_CPL0_ENTRY
    vcpu.set_long_mode(rip=entry, cpl=cpl)
    if cpl == 3:
        regs = vcpu.get_regs()
        regs.rflags |= IOPL3
        vcpu.set_regs(regs)
    return ram, vcpu
