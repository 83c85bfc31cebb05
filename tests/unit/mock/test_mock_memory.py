"""Memory slots, their errnos, dirty logging, read-only slots, MMIO and coalesced MMIO."""

from __future__ import annotations

import errno

import pytest
from mockasm import asm

from kvmcpu import uapi
from kvmcpu.backends import get_backend
from kvmcpu.errors import KvmIoctlError
from kvmcpu.hostmem import HostMemory


@pytest.fixture
def vm():  # type: ignore[no-untyped-def]
    b = get_backend("mock")
    v = b.create_vm()
    yield v
    v.close()
    b.close()


def _errno(fn) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(KvmIoctlError) as ei:
        fn()
    assert ei.value.call == "KVM_SET_USER_MEMORY_REGION"
    return ei.value.errno  # type: ignore[no-any-return]


def test_slot_rules(vm) -> None:  # type: ignore[no-untyped-def]
    with HostMemory(0x4000) as a, HostMemory(0x4000) as b:
        vm.set_user_memory_region(0, 0x0, a)
        assert _errno(lambda: vm.set_user_memory_region(1, 0x2000, b)) == errno.EEXIST
        assert _errno(lambda: vm.set_user_memory_region(1, 0x4100, b)) == errno.EINVAL
        assert _errno(lambda: vm.set_user_memory_region(1, 0x8000, b, size=0x1800)) == \
            errno.EINVAL
        assert _errno(lambda: vm.set_user_memory_region(1, 0x8000, b, flags=4)) == errno.EINVAL
        assert _errno(lambda: vm.set_user_memory_region(0, 0x0, a, size=0x2000)) == errno.EINVAL
        assert _errno(lambda: vm.set_user_memory_region(0, 0x0, a, flags=2)) == errno.EINVAL
        assert _errno(lambda: vm.set_user_memory_region(40000, 0x8000, b)) == errno.EINVAL
        assert _errno(lambda: vm.set_user_memory_region(7, 0x8000, None)) == errno.EINVAL
        vm.set_user_memory_region(1, 0x8000, b, offset=0x1000)
        assert vm.slots[1].memory_size == 0x3000
        vm.set_user_memory_region(0, 0x100000, a)  # moving a slot is allowed
        vm.set_user_memory_region(0, 0, None)
        vm.set_user_memory_region(1, 0, None)
        assert vm.slots == {}


def test_dirty_log(vm) -> None:  # type: ignore[no-untyped-def]
    ram = vm.add_ram(0, 0x10000)
    logged = vm.add_ram(0x10000, 0x10000, flags=uapi.KVM_MEM_LOG_DIRTY_PAGES)
    del logged
    with pytest.raises(KvmIoctlError) as ei:
        vm.get_dirty_log(0)
    assert ei.value.errno == errno.ENOENT
    code = asm("""
        mov ax, 0x1000
        mov es, ax
        mov byte [es:0x1000], 0xa1
        mov byte [es:0x5000], 0xa5
        mov byte [es:0x5001], 0xa6
        mov byte [es:0xc000], 0xac
        hlt
    """, 16, 0x1000)
    ram[0x1000:0x1000 + len(code)] = code
    vcpu = vm.create_vcpu(0)
    vcpu.set_real_mode(0, 0x1000)
    assert vcpu.run().kind == "hlt"
    assert vm.dirty_pages(1) == [1, 5, 12]
    assert vm.dirty_pages(1) == []  # cleared by reading
    assert len(vm.get_dirty_log(1)) == 8


def test_readonly_slot_and_mmio(vm) -> None:  # type: ignore[no-untyped-def]
    ram = vm.add_ram(0, 0x10000)
    rom = vm.add_ram(0x30000, 0x1000, flags=uapi.KVM_MEM_READONLY)
    rom[0x10:0x11] = b"\x42"
    code = asm("""
        mov ax, 0x3000
        mov es, ax
        mov al, [es:0x10]
        out 0x80, al
        mov byte [es:0x10], 0x77
        mov ax, 0x2000
        mov ds, ax
        mov ebx, [0x20]
        mov [0x24], ebx
        hlt
    """, 16, 0x1000)
    ram[0x1000:0x1000 + len(code)] = code
    vcpu = vm.create_vcpu(0)
    vcpu.set_real_mode(0, 0x1000)
    ex = vcpu.run()
    assert (ex.kind, ex.port, bytes(ex.data)) == ("io", 0x80, b"\x42")
    ex = vcpu.run()
    assert (ex.kind, ex.phys_addr, ex.len, ex.is_write, bytes(ex.data)) == \
        ("mmio", 0x30010, 1, True, b"\x77")
    assert rom[0x10:0x11] == b"\x42"
    ex = vcpu.run()
    assert (ex.kind, ex.phys_addr, ex.len, ex.is_write) == ("mmio", 0x20020, 4, False)
    rip = vcpu.get_regs().rip
    ex.data[:] = b"\x01\x02\x03\x04"
    ex = vcpu.run()  # the read completes with the data, then the write exits
    assert (ex.phys_addr, ex.is_write, bytes(ex.data)) == (0x20024, True, b"\x01\x02\x03\x04")
    assert vcpu.get_regs().rip > rip
    assert vcpu.get_regs().rbx == 0x04030201
    assert vcpu.run().kind == "hlt"


def test_coalesced_mmio_and_pio(vm) -> None:  # type: ignore[no-untyped-def]
    ram = vm.add_ram(0, 0x10000)
    vm.register_coalesced_mmio(0x40000, 0x1000)
    vm.register_coalesced_mmio(0x500, 4, pio=True)
    code = asm("""
        mov ax, 0x4000
        mov es, ax
        mov byte [es:0], 0x11
        mov word [es:2], 0x2222
        mov dword [es:4], 0x44444444
        mov dx, 0x500
        mov al, 0x55
        out dx, al
        out 0x80, al
        hlt
    """, 16, 0x1000)
    ram[0x1000:0x1000 + len(code)] = code
    vcpu = vm.create_vcpu(0)
    vcpu.set_real_mode(0, 0x1000)
    ex = vcpu.run()
    assert (ex.kind, ex.port) == ("io", 0x80)
    got = [(e.phys_addr, e.data, e.pio) for e in vcpu.drain_coalesced_mmio()]
    assert got == [(0x40000, b"\x11", False), (0x40002, b"\x22\x22", False),
                   (0x40004, b"\x44" * 4, False), (0x500, b"\x55", True)]
    assert vcpu.drain_coalesced_mmio() == []
    vm.unregister_coalesced_mmio(0x40000, 0x1000)
    assert vcpu.run().kind == "hlt"


def test_translate_and_unbacked_execution(vm) -> None:  # type: ignore[no-untyped-def]
    vm.add_ram(0, 0x100000)
    vcpu = vm.create_vcpu(0)
    vcpu.set_long_mode(0x5000000, page_tables=0x9000)  # RIP in unbacked memory
    t = vcpu.translate(0x12345)
    assert (t.valid, t.physical_address, t.writeable, t.usermode) == (1, 0x12345, 1, 1)
    assert vcpu.translate(0x80000000000).valid == 0
    ex = vcpu.run()
    assert ex.kind == "internal_error" and ex.suberror == uapi.KVM_INTERNAL_ERROR_EMULATION


def test_dirty_log_sees_writes_after_each_read(vm) -> None:  # type: ignore[no-untyped-def]
    ram = vm.add_ram(0, 0x10000, flags=uapi.KVM_MEM_LOG_DIRTY_PAGES)
    code = asm("""
    again:
        mov byte [0x5000], 1
        out 0x80, al
        jmp again
    """, 16, 0x1000)
    ram[0x1000:0x1000 + len(code)] = code
    vcpu = vm.create_vcpu(0)
    vcpu.set_real_mode(0, 0x1000)
    for _ in range(3):
        assert vcpu.run().kind == "io"
        assert 5 in vm.dirty_pages(0)
    vcpu.close()
