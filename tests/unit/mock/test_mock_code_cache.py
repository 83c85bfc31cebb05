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
