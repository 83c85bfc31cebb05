"""KVM_X86_SET_MSR_FILTER in the backend contract: KVM takes it, the mock has none (ENOTTY)."""

from __future__ import annotations

import errno

import pytest

from kvmcpu import uapi
from kvmcpu.backends.base import Backend
from kvmcpu.errors import KvmIoctlError
from kvmcpu.uapi import Cap


def test_set_msr_filter(backend: Backend, backend_name: str) -> None:
    with backend.create_vm() as vm:
        with pytest.raises(TypeError, match="set_msr_filter"):
            vm.set_msr_filter(b"\0" * 392)  # type: ignore[arg-type]
        flt = uapi.kvm_msr_filter()
        if backend_name == "mock":
            assert backend.check_extension(Cap.X86_MSR_FILTER) == 0
            with pytest.raises(KvmIoctlError) as info:
                vm.set_msr_filter(flt)
            assert info.value.errno == errno.ENOTTY
        else:
            if not backend.check_extension(Cap.X86_MSR_FILTER):
                pytest.skip("this KVM has no MSR filter")
            vm.set_msr_filter(flt)  # an empty filter: allow everything
