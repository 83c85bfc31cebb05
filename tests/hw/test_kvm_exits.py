"""Every exit kind on real KVM, with every field checked."""

from __future__ import annotations

import errno

import pytest

from guests import (
    IN_VALUE,
    RAM_SIZE,
    drive_io_program,
    io_sequence,
    load_guest,
    setup_long,
    setup_real,
)
from kvmcpu import uapi
from kvmcpu.backends import HltExit, IntrExit, IoExit, MmioExit
from kvmcpu.backends.exits import decode_exit
from kvmcpu.backends.kvm import KvmVm
from kvmcpu.errors import KvmIoctlError
from kvmcpu.hostmem import HostMemory

pytestmark = pytest.mark.kvm


def test_real_mode_io_program(vm: KvmVm) -> None:
    _, vcpu = setup_real(vm, "io_real")
    assert drive_io_program(vcpu) == io_sequence("hlt")


def test_real_mode_exit_fields_one_by_one(vm: KvmVm) -> None:
    _, vcpu = setup_real(vm, "io_real")
    ex = vcpu.run()
    assert isinstance(ex, IoExit)
    assert (ex.port, ex.size, ex.count, ex.is_write, bytes(ex.data)) == (0x3F8, 1, 1, True, b"4")
    assert ex.reason == uapi.ExitReason.IO
    # The data is a view into the run page at io.data_offset.
    assert 0 < ex.data_offset < vcpu.vm.vcpu_mmap_size
    assert bytes(vcpu.run_page[ex.data_offset : ex.data_offset + 1]) == b"4"
    for _ in range(2):
        vcpu.run()
    ex = vcpu.run()
    assert isinstance(ex, IoExit) and not ex.is_write and ex.port == 0x3FD and ex.size == 1
    ex.data[:] = IN_VALUE  # completes the IN on the next run
    ex = vcpu.run()
    assert isinstance(ex, IoExit) and bytes(ex.data) == IN_VALUE
    ex = vcpu.run()
    assert isinstance(ex, MmioExit)
    assert (ex.phys_addr, ex.len, ex.is_write) == (0x20010, 4, True)
    assert bytes(ex.data) == (0xCAFEF00D).to_bytes(4, "little")
    ex = vcpu.run()
    assert isinstance(ex, MmioExit) and not ex.is_write and ex.phys_addr == 0x20020
    ex.data[:] = b"\xaa\xbb\xcc\xdd"
    ex = vcpu.run()
    assert isinstance(ex, IoExit) and bytes(ex.data) == b"\xaa\xbb\xcc\xdd"
    assert isinstance(vcpu.run(), HltExit)
    assert vcpu.get_regs().rip == 0x1000 + len(load_guest("io_real")) - 2  # after HLT


def test_fast_decoder_matches_generic_decoder(vm: KvmVm) -> None:
    _, vcpu = setup_real(vm, "io_real")
    for _ in range(8):
        ex = vcpu.run()
        generic = decode_exit(vcpu.kvm_run, vcpu.run_page)
        assert type(generic) is type(ex) and generic == ex
        for slot in type(ex).__slots__:
            assert getattr(generic, slot) == getattr(ex, slot), slot
        if isinstance(ex, IoExit) and not ex.is_write:
            ex.data[:] = IN_VALUE
        if isinstance(ex, MmioExit) and not ex.is_write:
            ex.data[:] = b"\0\0\0\0"


def test_identical_exits_reuse_one_decoded_object(vm: KvmVm) -> None:
    """Repeated OUTs to one port decode to one (equal, read-only) exit object whose
    data views the run page; an exit with other fields is a different object."""
    ram, vcpu = setup_real(vm, "out_loop")
    regs = vcpu.get_regs()
    regs.rdx, regs.rax = 0x3F8, ord("a")
    vcpu.set_regs(regs)
    first = vcpu.run()
    second = vcpu.run()
    assert isinstance(first, IoExit) and second is first
    assert (first.port, first.size, first.count, first.is_write, bytes(first.data)) == (
        0x3F8, 1, 1, True, b"a")
    regs = vcpu.get_regs()
    regs.rax = ord("b")
    vcpu.set_regs(regs)
    assert vcpu.run() is first and bytes(first.data) == b"b"  # a view, as documented
    regs.rdx = 0x80
    vcpu.set_regs(regs)
    other = vcpu.run()
    assert isinstance(other, IoExit) and other is not first and other.port == 0x80
    assert other != first and vcpu.run() is other


def test_long_mode_cpl0_io_program(vm: KvmVm) -> None:
    _, vcpu = setup_long(vm, cpl=0)
    assert drive_io_program(vcpu) == io_sequence("hlt")


def test_long_mode_cpl3_io_program(vm: KvmVm) -> None:
    _, vcpu = setup_long(vm, cpl=3)
    assert drive_io_program(vcpu) == io_sequence("done")
    sregs = vcpu.get_sregs()
    assert sregs.cs.dpl == 3 and sregs.cs.selector & 3 == 3 and sregs.cs.l == 1


def test_protected_mode_out_loop(vm: KvmVm) -> None:
    ram = vm.add_ram(0, RAM_SIZE)
    ram[0x1000:0x1003] = load_guest("out_loop")
    vcpu = vm.create_vcpu(0)
    vcpu.set_protected_mode(eip=0x1000)
    regs = vcpu.get_regs()
    regs.rdx, regs.rax = 0x3F8, ord("p")
    vcpu.set_regs(regs)
    for _ in range(3):
        ex = vcpu.run()
        assert isinstance(ex, IoExit) and ex.port == 0x3F8 and bytes(ex.data) == b"p"
    sregs = vcpu.get_sregs()
    assert sregs.cr0 & 1 and not sregs.cr0 & (1 << 31) and sregs.cs.db == 1


def test_rep_outsb(vm: KvmVm) -> None:
    _, vcpu = setup_real(vm, "rep_outsb")
    data = b""
    for _ in range(10):
        ex = vcpu.run()
        if isinstance(ex, HltExit):
            break
        assert isinstance(ex, IoExit)
        assert ex.port == 0x3F8 and ex.is_write and ex.size == 1
        # KVM may batch (one exit, count 5) or not (this host: 5 exits of count 1).
        assert 1 <= ex.count <= 5 and len(ex.data) == ex.count * ex.size
        data += bytes(ex.data)
    else:
        pytest.fail("no HLT after rep outsb")
    assert data == b"hello"


def test_readonly_slot_write_is_mmio(vm: KvmVm) -> None:
    _, vcpu = setup_real(vm, "ro_write")
    rom = HostMemory(0x1000)
    try:
        rom[0x10:0x11] = b"\x42"
        vm.set_user_memory_region(1, 0x30000, rom, uapi.KVM_MEM_READONLY)
        assert vm.slots[1].readonly
        ex = vcpu.run()
        assert isinstance(ex, IoExit) and bytes(ex.data) == b"\x42"  # reads see memory
        ex = vcpu.run()
        assert isinstance(ex, MmioExit)
        assert (ex.phys_addr, ex.len, ex.is_write, bytes(ex.data)) == (0x30010, 1, True, b"\x77")
        ex = vcpu.run()
        assert isinstance(ex, IoExit) and bytes(ex.data) == b"\x42"
        assert isinstance(vcpu.run(), HltExit)
        assert rom[0x10:0x11] == b"\x42"  # the host buffer is unchanged
        vm.set_user_memory_region(1, 0x30000, None)
    finally:
        vm.close()
        rom.close()


def test_dirty_log(vm: KvmVm) -> None:
    _, vcpu = setup_real(vm, "dirty")
    logged = vm.add_ram(0x10000, 0x10000, flags=uapi.KVM_MEM_LOG_DIRTY_PAGES)
    slot = vm.slot_for(0x10000)
    assert slot is not None and slot.slot == 1
    assert vm.dirty_pages(1) == []
    ex = vcpu.run()
    assert isinstance(ex, IoExit) and bytes(ex.data) == b"!"
    assert vm.dirty_pages(1) == [1, 5, 12]
    assert vm.dirty_pages(1) == []  # reading clears
    assert len(vm.get_dirty_log(1)) == 2  # 16 pages -> 2 bytes
    assert logged[0xC000:0xC001] == b"\xac"
    with pytest.raises(KvmIoctlError) as info:
        vm.get_dirty_log(0)  # slot 0 has no KVM_MEM_LOG_DIRTY_PAGES
    assert info.value.errno == errno.ENOENT and "KVM_GET_DIRTY_LOG" in str(info.value)
    with pytest.raises(KvmIoctlError) as info:
        vm.get_dirty_log(7)  # no such slot
    assert info.value.errno == errno.ENOENT


def test_coalesced_mmio_ring(vm: KvmVm) -> None:
    if not vm.check_extension(uapi.Cap.COALESCED_MMIO):
        pytest.skip("no KVM_CAP_COALESCED_MMIO")
    _, vcpu = setup_real(vm, "coalesced")
    vm.register_coalesced_mmio(0x40000, 0x1000)
    ex = vcpu.run()  # the stores cause no exits
    assert isinstance(ex, IoExit) and bytes(ex.data) == b"c"
    entries = vcpu.drain_coalesced_mmio()
    assert [(e.phys_addr, e.data, e.pio) for e in entries] == [
        (0x40000, b"\x11", False),
        (0x40002, b"\x22\x22", False),
        (0x40004, b"\x44" * 4, False),
        (0x40008, b"\x88", False),
    ]
    assert vcpu.drain_coalesced_mmio() == []
    assert isinstance(vcpu.run(), HltExit)
    vm.unregister_coalesced_mmio(0x40000, 0x1000)


def test_immediate_exit_stays_set_as_in_kvm(vm: KvmVm) -> None:
    _, vcpu = setup_real(vm, "io_real")
    vcpu.immediate_exit = True
    before = vcpu.kvm_run.exit_reason
    for _ in range(2):
        ex = vcpu.run()
        assert isinstance(ex, IntrExit) and ex.reason == uapi.ExitReason.INTR
    assert vcpu.immediate_exit  # KVM does not clear it
    assert vcpu.kvm_run.exit_reason == before
    assert vcpu.get_regs().rip == 0x1000  # nothing ran
    vcpu.immediate_exit = False
    ex = vcpu.run()
    assert isinstance(ex, IoExit) and bytes(ex.data) == b"4"


def test_sync_regs_fields_reachable(vm: KvmVm) -> None:
    if not vm.check_extension(uapi.Cap.SYNC_REGS):
        pytest.skip("no KVM_CAP_SYNC_REGS")
    _, vcpu = setup_real(vm, "io_real")
    vcpu.kvm_run.kvm_valid_regs = uapi.KVM_SYNC_X86_REGS
    vcpu.run()
    assert vcpu.kvm_run.s.regs.regs.rip == vcpu.get_regs().rip
    vcpu.kvm_run.kvm_valid_regs = 0
