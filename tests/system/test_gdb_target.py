"""The stub's target layer in-process: memory is addressed virtually, through the
guest's page tables (as QEMU's stub does), on both backends."""

from __future__ import annotations

from typing import Callable

import pytest

import kvmcpu
from kvmcpu.gdb.target import SystemTarget, TargetError
from kvmcpu.system import System

ALIAS = 1 << 39  # what PML4 entry 1 maps


@pytest.mark.parametrize("backend", ["mock", pytest.param("kvm", marks=pytest.mark.kvm)])
def test_memory_is_read_and_written_through_the_page_tables(
        backend: str, make_system: Callable[..., System]) -> None:
    s = make_system("16M", backend=backend)
    s.load(kvmcpu.guests.path("debugme"))
    target = SystemTarget(s)
    cr3 = s.cpu.getContext().cr3 & ~0xFFF
    pml4_0 = s.physmem.read_u64(cr3)
    assert s.physmem.read_u64(cr3 + 8) == 0
    with pytest.raises(TargetError, match="not mapped") as err:
        target.read_memory(ALIAS + 0x100032, 4)
    assert err.value.errno == 14
    # A second mapping of the same tables at 512 GiB: virtual ALIAS + x is physical x.
    s.physmem.write(cr3 + 8, pml4_0.to_bytes(8, "little"))
    assert target.read_memory(ALIAS + 0x100032, 4) == bytes.fromhex("4889f848")
    target.write_memory(ALIAS + 0x100040, b"\x11\x22")
    assert bytes(s.physmem.read(0x100040, 2)) == b"\x11\x22"
    # An access that is not mapped in part fails as a whole (checked before writing).
    with pytest.raises(TargetError):
        target.write_memory(ALIAS - 1, b"\xaa\xbb")
    # Registers: what the loader set, then what gdb writes, seen by the run.
    assert int.from_bytes(target.read_register(16), "little") == 0x100000
    target.write_register(16, (0x100022).to_bytes(8, "little"))  # jump to finish
    s.physmem.write(0x100040, (0).to_bytes(8, "little"))
    assert s.run(timeout=60).status == 1  # counter 0: (0 << 1) | 1
