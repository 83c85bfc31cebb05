"""Memory slots on real KVM: errors with their values, and no leaks over many cycles."""

from __future__ import annotations

import errno
import fcntl
import gc
import os

import pytest

from guests import load_guest
from kvmcpu.backends import IntrExit, IoExit, get_backend
from kvmcpu.backends.kvm import KvmBackend, KvmVm
from kvmcpu.errors import KvmIoctlError
from kvmcpu.hostmem import HostMemory

pytestmark = pytest.mark.kvm


def test_overlapping_slot_is_eexist_with_values(vm: KvmVm) -> None:
    vm.add_ram(0, 0x10000)
    with HostMemory(0x2000) as mem:
        with pytest.raises(KvmIoctlError) as info:
            vm.set_user_memory_region(1, 0x8000, mem)
        err = info.value
        assert err.errno == errno.EEXIST
        assert err.call == "KVM_SET_USER_MEMORY_REGION"
        for text in ("slot 1", "guest_phys_addr 0x8000", "memory_size 0x2000"):
            assert text in str(err)
        assert 1 not in vm.slots


@pytest.mark.parametrize("gpa,size,offset", [(0x800, 0x1000, 0), (0x0, 0x800, 0),
                                             (0x0, 0x1000, 0x800)])
def test_misaligned_slot_is_einval(vm: KvmVm, gpa: int, size: int, offset: int) -> None:
    with HostMemory(0x2000) as mem:
        with pytest.raises(KvmIoctlError) as info:
            vm.set_user_memory_region(0, gpa, mem, size=size, offset=offset)
        assert info.value.errno == errno.EINVAL
        assert f"guest_phys_addr {gpa:#x}" in str(info.value)
        assert f"memory_size {size:#x}" in str(info.value)


def test_unknown_flag_is_einval(vm: KvmVm) -> None:
    with HostMemory(0x1000) as mem:
        with pytest.raises(KvmIoctlError) as info:
            vm.set_user_memory_region(0, 0, mem, flags=1 << 20)
        assert info.value.errno == errno.EINVAL and "flags 0x100000" in str(info.value)


def test_delete_and_replace_slot(vm: KvmVm) -> None:
    ram = vm.add_ram(0, 0x10000)
    vm.set_user_memory_region(0, 0, None)
    assert 0 not in vm.slots
    vm.set_user_memory_region(0, 0x100000, ram)
    assert vm.slots[0].guest_phys_addr == 0x100000


def test_fds_are_close_on_exec(kvm: KvmBackend, vm: KvmVm) -> None:
    vcpu = vm.create_vcpu(0)
    for fd in (kvm.fd, vm.fd, vcpu.fd):
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def test_duplicate_vcpu_id_is_eexist(vm: KvmVm) -> None:
    vm.create_vcpu(0)
    with pytest.raises(KvmIoctlError) as info:
        vm.create_vcpu(0)
    assert info.value.errno == errno.EEXIST


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _maps_lines() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def _cycle() -> None:
    with get_backend("kvm") as kvm, kvm.create_vm() as vm:
        vm.add_ram(0, 0x10000)
        vcpu = vm.create_vcpu(0)
        vcpu.immediate_exit = True
        assert isinstance(vcpu.run(), IntrExit)
        vcpu.drain_coalesced_mmio()


def test_no_leaks_over_1000_cycles() -> None:
    for _ in range(10):  # warm up caches, allocator arenas, lazy imports
        _cycle()
    gc.collect()
    fds, maps = _fd_count(), _maps_lines()
    for _ in range(1000):
        _cycle()
    gc.collect()
    assert _fd_count() == fds
    # Python's allocator may add an arena or two; a leaked run page per cycle would be 1000.
    assert _maps_lines() - maps < 10


def _vcpu_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "kvm-vcpu" in line)


def test_an_exit_outlives_its_closed_vcpu_without_dangling() -> None:
    """Exits view the run page; after close() the page stays mapped for as long as
    such a view lives (reading it shows the last exit), and goes with the last one."""
    gc.collect()
    before, fds = _vcpu_mappings(), _fd_count()
    with get_backend("kvm") as kvm, kvm.create_vm() as vm:
        ram = vm.add_ram(0, 0x10000)
        ram[0x1000:0x1003] = load_guest("out_loop")
        vcpu = vm.create_vcpu(0)
        vcpu.set_real_mode(cs=0, ip=0x1000)
        regs = vcpu.get_regs()
        regs.rdx, regs.rax = 0x3F8, ord("z")
        vcpu.set_regs(regs)
        ex = vcpu.run()
        assert isinstance(ex, IoExit)
        vcpu.close()
        assert _vcpu_mappings() == before + 1  # kept for ex.data
    assert bytes(ex.data) == b"z" and ex.port == 0x3F8
    with pytest.raises(ValueError):
        vcpu.run_page[0]  # the vCPU's own view is released
    del ex
    gc.collect()
    assert _vcpu_mappings() == before
    assert _fd_count() == fds
