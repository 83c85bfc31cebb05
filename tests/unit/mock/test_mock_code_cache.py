"""The mock's code cache and host-side writes: the host says what it wrote (HostMemory's
write/[]=/notify_written, Vm.write_guest, PhysicalMemory), and run() drops only the code
translated from those pages, without reading every translated page on every run."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from kvmcpu.backends import HltExit, IoExit, get_backend
from kvmcpu.backends.base import Vcpu, Vm
from kvmcpu.backends.mock import tier0
from kvmcpu.hostmem import HostMemory

CODE = 0x1000
#: mov al, 0x41 ; out 0x80, al ; hlt
PROGRAM = b"\xb0\x41\xe6\x80\xf4"


@pytest.fixture
def vm() -> Iterator[Vm]:
    with get_backend("mock") as backend, backend.create_vm() as vm:
        yield vm


def _out_value(vcpu: Vcpu) -> int:
    vcpu.set_real_mode(cs=0, ip=CODE)
    ex = vcpu.run()
    assert isinstance(ex, IoExit) and ex.port == 0x80
    value = bytes(ex.data)[0]
    assert isinstance(vcpu.run(), HltExit)
    return value


def _write_item(ram: HostMemory, vm: Vm) -> None:
    ram[CODE + 1] = 0x42


def _write_slice(ram: HostMemory, vm: Vm) -> None:
    ram[CODE: CODE + 2] = b"\xb0\x42"


def _write_method(ram: HostMemory, vm: Vm) -> None:
    ram.write(CODE + 1, b"\x42")


def _write_guest(ram: HostMemory, vm: Vm) -> None:
    vm.write_guest(CODE + 1, b"\x42")


def _write_view_and_notify(ram: HostMemory, vm: Vm) -> None:
    ram.view[CODE + 1] = 0x42
    ram.notify_written(CODE + 1, 1)


@pytest.mark.parametrize("write", [_write_item, _write_slice, _write_method, _write_guest,
                                   _write_view_and_notify])
def test_code_the_host_rewrites_runs_anew(vm: Vm, write: Callable[[HostMemory, Vm], None]
                                          ) -> None:
    ram = vm.add_ram(0, 0x10000)
    ram[CODE: CODE + len(PROGRAM)] = PROGRAM
    vcpu = vm.create_vcpu(0)
    assert _out_value(vcpu) == 0x41
    assert _out_value(vcpu) == 0x41  # cached now
    write(ram, vm)
    assert _out_value(vcpu) == 0x42


def test_a_host_write_elsewhere_keeps_the_translations(vm: Vm) -> None:
    ram = vm.add_ram(0, 0x10000)
    ram[CODE: CODE + len(PROGRAM)] = PROGRAM
    vcpu = vm.create_vcpu(0)
    _out_value(vcpu)
    engine: Any = vcpu.engine  # type: ignore[attr-defined]
    blocks = dict(engine.blocks)
    assert blocks
    ram[0x8000: 0x9000] = b"\x90" * 0x1000
    vm.write_guest(0x3000, b"\xcc" * 16)
    _out_value(vcpu)
    assert all(engine.blocks.get(k) is fn for k, fn in blocks.items())


def test_run_does_not_read_translated_pages_to_find_host_writes(vm: Vm, monkeypatch: Any
                                                                ) -> None:
    vm.add_ram(0, 0x10000)
    vm.write_guest(CODE, b"\xeb\xfe")  # jmp $
    vcpu = vm.create_vcpu(0)
    vcpu.set_real_mode(cs=0, ip=CODE)
    clock = vcpu.run_clock()
    assert clock is not None
    first = tier0.PROMOTE_AFTER + 100  # the block is compiled (tier 1) in this run
    clock.set_budget(first)
    vcpu.run()
    mmu: Any = vcpu.engine.mmu  # type: ignore[attr-defined]
    reads = []
    real = mmu.phys_page
    monkeypatch.setattr(mmu, "phys_page", lambda p: reads.append(p) or real(p))
    for _ in range(3):
        clock.set_budget(100)
        vcpu.run()
    assert reads == []
    assert clock.instructions_retired == first + 300


@pytest.mark.parametrize("promote_after", [None, 1])
def test_eip_relative_address_wraps_at_32_bits_wherever_the_code_runs(
        vm: Vm, monkeypatch: pytest.MonkeyPatch, promote_after: Any) -> None:
    """`67 8b 05 disp32` (mov eax, [eip + disp]) in 64-bit mode: the effective address
    is (RIP + disp) mod 2**32 (SDM vol. 1, 3.7.5.1: a 32-bit address size truncates
    the RIP-relative sum). Run at two RIPs where the sum stays below 4 GiB (the second
    sighting makes tier 0 relocate it by RIP), then at one where it passes 4 GiB: the
    load must come from the wrapped address, not 4 GiB above it. In tier 0 and with
    blocks compiled at once."""
    if promote_after is not None:
        monkeypatch.setattr(tier0, "PROMOTE_AFTER", promote_after)
    low = vm.add_ram(0, 4 << 20)
    high_base = 0xFFE00000
    high = vm.add_ram(high_base, 2 << 20)
    disp = 0x10000
    insn = b"\x67\x8b\x05" + disp.to_bytes(4, "little") + b"\xf4"  # ...; hlt
    vcpu = vm.create_vcpu(0)
    seen = []
    for rip, marker in ((0xFFE01000, 0x11111111), (0xFFE02000, 0x22222222),
                        (0xFFFF8000, 0x33333333)):
        ea = (rip + 7 + disp) & 0xFFFFFFFF
        mem, base = (low, 0) if ea < high_base else (high, high_base)
        mem[ea - base:ea - base + 4] = marker.to_bytes(4, "little")
        high[rip - high_base:rip - high_base + len(insn)] = insn
        vcpu.set_long_mode(rip, rsp=0x200000, identity_gib=4)
        assert isinstance(vcpu.run(), HltExit)
        seen.append(vcpu.get_regs().rax & 0xFFFFFFFF)
    assert seen == [0x11111111, 0x22222222, 0x33333333]
