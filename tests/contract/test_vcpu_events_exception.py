"""KVM_GET/SET_VCPU_EVENTS carry a queued exception, and a structure without one clears
it (Documentation/virt/kvm/api.rst, KVM_SET_VCPU_EVENTS: the exception fields are
always taken; kvm_vcpu_ioctl_x86_set_vcpu_events overwrites the exception state). The
emulation fallback moves vCPU events between KVM and the mock in both directions, so a
#GP the mock queued for a refused MSR must travel, and must not stay behind."""

from __future__ import annotations

from typing import Any

from kvmcpu import uapi


def test_a_queued_exception_travels_and_is_cleared(backend: Any) -> None:
    with backend.create_vm() as vm:
        vm.add_ram(0, 0x100000)
        with vm.create_vcpu(0) as vcpu:
            vcpu.set_long_mode(0x1000, rsp=0x8000, page_tables=0x40000)
            ev = vcpu.get_vcpu_events()
            assert ev.exception.injected == 0
            ev.exception.injected = 1
            ev.exception.nr = 13
            ev.exception.has_error_code = 1
            ev.exception.error_code = 0x18
            vcpu.set_vcpu_events(ev)
            got = vcpu.get_vcpu_events()
            assert (got.exception.injected, got.exception.nr, got.exception.has_error_code,
                    got.exception.error_code) == (1, 13, 1, 0x18)
            none = uapi.kvm_vcpu_events()
            vcpu.set_vcpu_events(none)
            assert vcpu.get_vcpu_events().exception.injected == 0
