"""KVM_CAP_X86_USER_SPACE_MSR and KVM_X86_SET_MSR_FILTER in the backend contract: both
backends take the same filters, refuse the same bad ones with the same errno, and
hand the same RDMSR/WRMSR to user space with the same exit reason and completion
(KVM's API doc, "KVM_X86_SET_MSR_FILTER" and "KVM_EXIT_X86_RDMSR / WRMSR")."""

from __future__ import annotations

import ctypes
import errno

import pytest

from kvmcpu import uapi
from kvmcpu.backends import HltExit, IoExit
from kvmcpu.backends.base import Backend, Vm
from kvmcpu.backends.exits import MsrExit
from kvmcpu.errors import KvmIoctlError
from kvmcpu.uapi import Cap

#: Real mode at 0x1000 (nasm, bits 16):
#:   mov ecx, 0x6E0 / rdmsr / mov [0x500], eax / mov [0x504], edx
#:   mov ecx, 0x808 / mov eax, 0x12 / xor edx, edx / wrmsr
#:   mov ecx, 0x830 / rdmsr / hlt
#: and at 0x1100 (the #GP handler): mov al, 0x0d / out 0xe9, al / hlt
PROGRAM = bytes.fromhex("66b9e00600000f3266a30005668916040566b90808000066b812000000"
                        "6631d20f3066b9300800000f32f4")
GP_HANDLER = bytes.fromhex("b00de6e9f4")
REASONS = (uapi.KVM_MSR_EXIT_REASON_INVAL | uapi.KVM_MSR_EXIT_REASON_UNKNOWN
           | uapi.KVM_MSR_EXIT_REASON_FILTER)


def _needs_the_caps(backend: Backend) -> None:
    if not (backend.check_extension(Cap.X86_MSR_FILTER)
            and backend.check_extension(Cap.X86_USER_SPACE_MSR)):
        pytest.skip("this KVM has no user-space MSRs")


def _deny(vm: Vm, base: int, count: int) -> "ctypes.Array[ctypes.c_uint8]":
    flt = uapi.kvm_msr_filter()
    flt.flags = uapi.KVM_MSR_FILTER_DEFAULT_ALLOW
    bitmap = (ctypes.c_uint8 * ((count + 7) // 8))()  # all 0: deny
    rng = flt.ranges[0]
    rng.flags = uapi.KVM_MSR_FILTER_READ | uapi.KVM_MSR_FILTER_WRITE
    rng.nmsrs, rng.base, rng.bitmap = count, base, ctypes.addressof(bitmap)
    vm.set_msr_filter(flt)
    return bitmap


def test_set_msr_filter(backend: Backend) -> None:
    _needs_the_caps(backend)
    assert backend.check_extension(Cap.X86_USER_SPACE_MSR) == 1
    with backend.create_vm() as vm:
        with pytest.raises(TypeError, match="set_msr_filter"):
            vm.set_msr_filter(b"\0" * 392)  # type: ignore[arg-type]
        vm.set_msr_filter(uapi.kvm_msr_filter())  # an empty filter: allow everything
        _deny(vm, 0x6E0, 1)


def _refused(vm: Vm, flt: uapi.kvm_msr_filter) -> int:
    with pytest.raises(KvmIoctlError) as info:
        vm.set_msr_filter(flt)
    return info.value.errno


def test_bad_filters_are_refused_alike(backend: Backend) -> None:
    _needs_the_caps(backend)
    bitmap = (ctypes.c_uint8 * 8)()
    with backend.create_vm() as vm:
        flt = uapi.kvm_msr_filter()
        flt.flags = 2  # not a KVM_MSR_FILTER_DEFAULT_* flag
        assert _refused(vm, flt) == errno.EINVAL
        flt = uapi.kvm_msr_filter()
        flt.flags = uapi.KVM_MSR_FILTER_DEFAULT_DENY  # deny all with no range
        assert _refused(vm, flt) == errno.EINVAL
        flt = uapi.kvm_msr_filter()
        flt.ranges[0].nmsrs, flt.ranges[0].base = 8, 0x10
        flt.ranges[0].bitmap = ctypes.addressof(bitmap)  # flags 0
        assert _refused(vm, flt) == errno.EINVAL
        flt.ranges[0].flags = 4  # neither READ nor WRITE
        assert _refused(vm, flt) == errno.EINVAL
        with pytest.raises(KvmIoctlError) as info:
            vm.enable_cap(Cap.X86_USER_SPACE_MSR, 1 << 31)
        assert info.value.errno == errno.EINVAL


def test_msr_exits_and_their_completion(backend: Backend) -> None:
    """IA32_TSC_DEADLINE denied by the filter exits with reason FILTER; the x2APIC
    MSRs (no in-kernel APIC; never filtered) with INVAL. RDMSR takes EDX:EAX from
    ``data``, and ``error`` makes the instruction #GP."""
    _needs_the_caps(backend)
    with backend.create_vm() as vm:
        ram = vm.add_ram(0, 0x10000)
        ram[0x1000:0x1000 + len(PROGRAM)] = PROGRAM
        ram[0x1100:0x1100 + len(GP_HANDLER)] = GP_HANDLER
        ram[13 * 4:13 * 4 + 4] = (0x1100).to_bytes(2, "little") + b"\0\0"  # IVT: #GP
        vm.enable_cap(Cap.X86_USER_SPACE_MSR, REASONS)
        keep = _deny(vm, 0x6E0, 1)
        vcpu = vm.create_vcpu(0)
        vcpu.set_real_mode(cs=0, ip=0x1000)
        ex = vcpu.run()
        assert isinstance(ex, MsrExit)
        assert (ex.index, ex.is_write, ex.msr_reason) == (0x6E0, False,
                                                          uapi.KVM_MSR_EXIT_REASON_FILTER)
        ex.data, ex.error = 0x1122334455667788, 0
        ex = vcpu.run()
        assert isinstance(ex, MsrExit)
        assert (ex.index, ex.is_write, ex.data, ex.msr_reason) == (
            0x808, True, 0x12, uapi.KVM_MSR_EXIT_REASON_INVAL)
        assert bytes(ram[0x500:0x508]) == (0x1122334455667788).to_bytes(8, "little")
        ex.error = 0
        ex = vcpu.run()
        assert isinstance(ex, MsrExit)
        assert (ex.index, ex.is_write, ex.msr_reason) == (0x830, False,
                                                          uapi.KVM_MSR_EXIT_REASON_INVAL)
        ex.error = 1
        ex = vcpu.run()
        assert isinstance(ex, IoExit) and ex.port == 0xE9 and bytes(ex.data) == b"\x0d"
        assert isinstance(vcpu.run(), HltExit)
        del keep


def test_without_user_space_exits_a_denied_msr_is_a_gp(backend: Backend) -> None:
    _needs_the_caps(backend)
    with backend.create_vm() as vm:
        ram = vm.add_ram(0, 0x10000)
        ram[0x1000:0x1000 + len(PROGRAM)] = PROGRAM
        ram[0x1100:0x1100 + len(GP_HANDLER)] = GP_HANDLER
        ram[13 * 4:13 * 4 + 4] = (0x1100).to_bytes(2, "little") + b"\0\0"
        keep = _deny(vm, 0x6E0, 1)
        vcpu = vm.create_vcpu(0)
        vcpu.set_real_mode(cs=0, ip=0x1000)
        ex = vcpu.run()
        assert isinstance(ex, IoExit) and ex.port == 0xE9 and bytes(ex.data) == b"\x0d"
        del keep
