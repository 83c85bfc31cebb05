"""System-fd queries, lifetimes and closed-object errors of the KVM backend."""

from __future__ import annotations

import gc
import struct

import pytest

from kvmcpu import uapi
from kvmcpu.backends import get_backend
from kvmcpu.backends.kvm import KvmBackend, KvmVm
from kvmcpu.errors import ClosedError
from kvmcpu.uapi import Cap

pytestmark = pytest.mark.kvm


def test_api_version_and_caps(kvm: KvmBackend, vm: KvmVm) -> None:
    assert kvm.api_version() == 12
    assert kvm.check_extension(Cap.USER_MEMORY) == 1
    assert kvm.check_extension(Cap.NR_VCPUS) >= 1
    assert kvm.check_extension(Cap.MAX_VCPUS) >= kvm.check_extension(Cap.NR_VCPUS)
    assert kvm.check_extension(0xFFFF) == 0  # unknown capability: absent, no error
    assert isinstance(vm.check_extension(Cap.IRQCHIP), int)
    assert kvm.vcpu_mmap_size() >= 4096 and kvm.vcpu_mmap_size() % 4096 == 0


def test_supported_cpuid(kvm: KvmBackend) -> None:
    entries = kvm.get_supported_cpuid()
    assert len(entries) > 5
    leaf0 = next(e for e in entries if e.function == 0)
    vendor = struct.pack("<III", leaf0.ebx, leaf0.edx, leaf0.ecx).decode()
    assert vendor in ("GenuineIntel", "AuthenticAMD", "HygonGenuine", "CentaurHauls",
                      "  Shanghai  ")
    assert any(e.function >= 0x80000000 for e in entries)
    assert isinstance(kvm.get_emulated_cpuid(), list)


def test_msr_lists(kvm: KvmBackend) -> None:
    msrs = kvm.get_msr_index_list()
    assert len(msrs) > 10 and 0x10 in msrs  # IA32_TIME_STAMP_COUNTER
    assert isinstance(kvm.get_msr_feature_index_list(), list)


def test_describe(kvm: KvmBackend) -> None:
    facts = kvm.describe()
    assert facts["backend"] == "kvm" and facts["api_version"] == 12
    assert facts["device"] == "/dev/kvm" and facts["vcpu_mmap_size"] == kvm.vcpu_mmap_size()


def test_run_page_and_ring(vm: KvmVm) -> None:
    vcpu = vm.create_vcpu(0)
    assert len(vcpu.run_page) == vm.vcpu_mmap_size
    ring = vcpu._coalesced_ring()
    if vm.check_extension(Cap.COALESCED_MMIO):
        assert ring is not None and len(ring) == 4096
    else:
        assert ring is None


def test_closed_objects_raise_closed_error() -> None:
    kvm = get_backend("kvm")
    vm = kvm.create_vm()
    vcpu = vm.create_vcpu(0)
    run = vcpu.run
    vcpu.close()
    vcpu.close()  # idempotent
    with pytest.raises(ClosedError):
        vcpu.get_regs()
    with pytest.raises(ClosedError):
        vcpu.run()
    with pytest.raises(ClosedError):
        run()  # a run bound before close does not touch the freed mapping
    kvm.close()  # closes the VM it created too
    assert vm.closed
    with pytest.raises(ClosedError):
        vm.create_vcpu(1)
    with pytest.raises(ClosedError):
        kvm.check_extension(Cap.IRQCHIP)
    with pytest.raises(ClosedError):
        kvm.create_vm()


def test_forgotten_vm_warns() -> None:
    with get_backend("kvm") as kvm:
        vm = kvm.create_vm()
        vm.create_vcpu(0)
        with pytest.warns(ResourceWarning):
            del vm
            gc.collect()


def test_sync_regs_cap_is_reported(vm: KvmVm) -> None:
    """KVM_CAP_SYNC_REGS is the mask of syncable register sets: only the x86 bits
    <linux/kvm.h> defines, the same on the VM fd as on /dev/kvm, and REGS among them
    whenever the capability is offered at all."""
    valid = vm.check_extension(Cap.SYNC_REGS)
    known = uapi.KVM_SYNC_X86_REGS | uapi.KVM_SYNC_X86_SREGS | uapi.KVM_SYNC_X86_EVENTS
    assert valid & ~known == 0, f"unknown sync_regs bits {valid:#x}"
    assert valid == vm.backend.check_extension(Cap.SYNC_REGS)
    assert valid == 0 or valid & uapi.KVM_SYNC_X86_REGS
